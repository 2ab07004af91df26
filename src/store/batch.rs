//! Batches of the same statement from concurrent callers: one round trip (and, for writes, one
//! commit) for all the callers waiting at that moment, each answered when it is done.
//!
//! Nothing waits for a batch to fill. A caller that finds a free slot runs at once, in a batch of
//! one; callers that arrive while every slot is busy queue, and the next free slot takes all of
//! them. Under light load every call is its own batch, with no added latency; under heavy load a
//! round trip serves many calls. On SQLite, each statement is a hand-off to the connection's
//! thread and each commit an fsync, so this is where most of a call's time went.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use sea_orm::DbErr;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::Error;

/// A call waiting in a batch: its input and where its answer goes.
struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, Error>>,
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
}

impl<I, O> fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher").field("queued", &(self.queue.max_capacity() - self.queue.capacity())).finish()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the batcher's task. The queue holds as many calls as may be in flight (callers
    /// beyond it wait to enter): admission bounds how many requests run, so this never fills
    /// in practice.
    pub fn spawn(max_batch: usize, slots: usize, run: RunBatch<I, O>) -> Self {
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
                    match run(inputs).await {
                        Ok(outputs) => {
                            for (reply, output) in replies.into_iter().zip(outputs) {
                                let _ = reply.send(output);
                            }
                        }
                        Err(err) => {
                            for reply in replies {
                                let _ = reply.send(Err(err.clone().into()));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Runs `input` in the next batch and returns its answer.
    pub async fn call(&self, input: I) -> Result<O, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { input, reply }).await.map_err(|_| Error::internal("the batch queue has stopped"))?;
        answer.await.map_err(|_| Error::internal("a batch ended without answering"))?
    }
}
