//! Batches of the same statement from concurrent callers: one round trip (and, for writes, one
//! commit) for all the callers waiting at that moment, each answered when it is done.
//!
//! Nothing waits for a batch to fill. A caller that finds a free slot runs at once, in a batch of
//! one; callers that arrive while every slot is busy queue, and the next free slot takes all of
//! them. Under light load every call is its own batch, with no added latency; under heavy load a
//! round trip serves many calls. On SQLite, each statement is a hand-off to the connection's
//! thread and each commit an fsync, so this is where most of a call's time went.
//!
//! Each call's span says how large its batch was and how long the call waited for it to start.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Instant};

use sea_orm::DbErr;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{Instrument, Span, field::Empty};

use crate::{error::Error, telemetry::span};

/// A call waiting in a batch: its input and where its answer goes.
struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<(Result<O, Error>, Ran)>,
}

/// How the batch that answered a call ran: how many calls it served, and when it started.
#[derive(Debug, Clone, Copy)]
struct Ran {
    size: usize,
    started: Instant,
}

/// A statement as its span names it, by OpenTelemetry's conventions for database clients:
/// `SELECT personal_clients` on `sqlite`.
#[derive(Debug, Clone, Copy)]
pub struct Statement {
    /// `sqlite` or `postgresql`.
    pub system: &'static str,
    pub operation: &'static str,
    pub collection: &'static str,
}

impl Statement {
    /// The span of one call's run of the statement, a child of the call's.
    pub fn span(&self) -> Span {
        span!(
            "db",
            otel.name = %format_args!("{} {}", self.operation, self.collection),
            otel.kind = "client",
            db.system = self.system,
            db.operation.name = self.operation,
            db.collection.name = self.collection,
            db.operation.batch.size = Empty,
            personal_clients.batch.wait_ms = Empty,
        )
    }
}

/// A batch's answers, one per input.
pub type Answers<O> = Vec<Result<Option<O>, Error>>;

type BatchFuture<O> = Pin<Box<dyn Future<Output = Result<Vec<Result<O, Error>>, DbErr>> + Send>>;

/// Runs a batch: one answer per input, in the inputs' order; a database error fails the whole
/// batch, and every caller in it gets it.
pub type RunBatch<I, O> = Arc<dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync>;

/// Queues calls and runs them in batches of up to `max_batch`, with at most `slots` batches
/// running at once.
pub struct Batcher<I, O> {
    queue: mpsc::Sender<Job<I, O>>,
    statement: Statement,
}

impl<I, O> fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("statement", &self.statement)
            .field("queued", &(self.queue.max_capacity() - self.queue.capacity()))
            .finish()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batcher's task. The queue holds as many calls as may be in flight (callers
    /// beyond it wait to enter): admission bounds how many requests run, so this never fills
    /// in practice.
    pub fn spawn(max_batch: usize, slots: usize, statement: Statement, run: RunBatch<I, O>) -> Self {
        let (queue, mut receiver) = mpsc::channel::<Job<I, O>>(4096);
        let slots = Arc::new(Semaphore::new(slots.max(1)));
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                // Waiting for a slot before taking more lets the queue grow into a batch.
                let Ok(slot) = slots.clone().acquire_owned().await else { return };
                let mut jobs = vec![first];
                while jobs.len() < max_batch {
                    match receiver.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (inputs, replies): (Vec<I>, Vec<_>) =
                        jobs.into_iter().map(|job| (job.input, job.reply)).unzip();
                    let ran = Ran { size: inputs.len(), started: Instant::now() };
                    match run(inputs).await {
                        Ok(outputs) => {
                            for (reply, output) in replies.into_iter().zip(outputs) {
                                let _ = reply.send((output, ran));
                            }
                        }
                        Err(err) => {
                            for reply in replies {
                                let _ = reply.send((Err(err.clone().into()), ran));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        Self { queue, statement }
    }

    /// Runs `input` in the next batch and returns its answer.
    pub async fn call(&self, input: I) -> Result<O, Error> {
        let span = self.statement.span();
        let queued = Instant::now();
        let (reply, answer) = oneshot::channel();
        let (answer, ran) = async {
            self.queue.send(Job { input, reply }).await.map_err(|_| Error::internal("the batch queue has stopped"))?;
            answer.await.map_err(|_| Error::internal("a batch ended without answering"))
        }
        .instrument(span.clone())
        .await?;
        // A batch is two or more, by the conventions: a call served alone has no batch size.
        if ran.size >= 2 {
            span.record("db.operation.batch.size", i64::try_from(ran.size).unwrap_or(i64::MAX));
        }
        span.record(
            "personal_clients.batch.wait_ms",
            ran.started.saturating_duration_since(queued).as_secs_f64() * 1e3,
        );
        answer
    }
}
