//! Traces: the spans of a call, in the caller's trace, and their export over OTLP ([`export`]);
//! log lines joined to them ([`logs`]).
//!
//! Spans are `tracing` spans on the target [`SPAN_TARGET`], made with [`span!`]. The log output
//! never shows them; the OpenTelemetry layer, installed only when traces are exported, is the only
//! one that takes them. Without it every span is disabled at its call site, which costs a load of
//! an atomic.
//!
//! A call records why it was refused with [`refused`], in the words the metrics and the audit
//! events use; the edge puts that on the call's span when the call ends ([`Refusal`]).

pub mod export;
pub mod logs;

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use opentelemetry::{propagation::Extractor, trace::TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

/// The target of every span the service makes.
pub const SPAN_TARGET: &str = "personal_clients_spans";

/// A span of the service: `span!("bearer check", cache.hit = tracing::field::Empty)`.
macro_rules! span {
    ($name:expr $(, $($fields:tt)*)?) => {
        tracing::info_span!(target: $crate::telemetry::SPAN_TARGET, $name $(, $($fields)*)?)
    };
}
pub(crate) use span;

/// Whether spans are exported: set once, when the exporter starts.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The trace context a request carries in `headers` (W3C `traceparent` and `tracestate`, or
/// B3 in one header or several), as the parent of the span serving it; an empty context
/// without one, or when no spans are exported.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    if !exporting() {
        return opentelemetry::Context::new();
    }
    context_of(&opentelemetry_http::HeaderExtractor(headers))
}

/// The trace context in `carrier`, by the propagators [`export`] set.
fn context_of(carrier: &dyn Extractor) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&Trimmed(carrier)))
}

/// The longest `tracestate` kept: W3C asks a tracer to pass on at least 512 characters. A longer
/// one (up to 16 KiB is well-formed) is left out, so that the queue of spans waiting for export
/// holds no more than that of what callers send.
const MAX_TRACE_STATE: usize = 512;

/// A request's headers as the propagators read them, without a `tracestate` longer than
/// [`MAX_TRACE_STATE`].
struct Trimmed<'a>(&'a dyn Extractor);

impl Extractor for Trimmed<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).filter(|value| !key.eq_ignore_ascii_case("tracestate") || value.len() <= MAX_TRACE_STATE)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

/// Makes the trace context in `carrier` the parent of the current span, if it holds one: the
/// request an ext_authz Check is asked about, whose trace the decision belongs to. Called before
/// the span has a child or a log line (after that its trace is fixed; the call keeps the parent
/// it had).
pub fn adopt_parent(carrier: &dyn Extractor) {
    if !exporting() {
        return;
    }
    let parent = context_of(carrier);
    if parent.span().span_context().is_valid()
        && let Err(err) = tracing::Span::current().set_parent(parent)
    {
        // The span began before the request was read: it keeps the parent it had.
        tracing::debug!(error = %err, "the checked request's trace context came too late for the call's span");
    }
}

/// The trace and span ids of the innermost span around the current one that is in an exported
/// trace, in hex: a log line's, inside a call. Read through the process's global subscriber.
pub fn current_ids() -> Option<(String, String)> {
    if !exporting() {
        return None;
    }
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let current = dispatch.current_span();
        let span = registry.span(current.id()?)?;
        // A library's span, or one of this service's that the log shows, has no trace of its own.
        span.scope().find_map(|span| {
            let context = tracing_opentelemetry::get_otel_context(&span.id(), dispatch)?;
            let ids = context.span().span_context().clone();
            ids.is_valid().then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
        })
    })
}

tokio::task_local! {
    static REFUSAL: Arc<OnceLock<&'static str>>;
}

/// Why a call was refused, as it says in [`refused`]: the first reason given wins.
#[derive(Debug, Clone, Default)]
pub struct Refusal(Arc<OnceLock<&'static str>>);

impl Refusal {
    /// Runs `call` with this slot for its refusal.
    pub fn scope<F: Future>(&self, call: F) -> impl Future<Output = F::Output> + use<F> {
        REFUSAL.scope(Arc::clone(&self.0), call)
    }

    /// The reason the call gave, if it was refused.
    pub fn reason(&self) -> Option<&'static str> {
        self.0.get().copied()
    }
}

/// Records that the call being served was refused, and why (`bad_signature`, `invalid_token`):
/// its span says so. Outside a call, or without traces, nothing.
pub fn refused(reason: &'static str) {
    let _ = REFUSAL.try_with(|slot| slot.set(reason));
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    #[test]
    fn a_trace_state_past_512_characters_is_left_out_and_the_parent_kept() {
        let read = |state: String| {
            let headers = HashMap::from([
                ("traceparent".to_owned(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned()),
                ("tracestate".to_owned(), state),
            ]);
            let context = TraceContextPropagator::new().extract(&Trimmed(&headers));
            let span = context.span().span_context().clone();
            assert!(span.is_valid());
            span.trace_state().header()
        };
        let short = "vendor=".to_owned() + &"a".repeat(200);
        assert_eq!(read(short.clone()), short);
        let members: Vec<String> = (0..30).map(|i| format!("v{i}={}", "b".repeat(250))).collect();
        assert_eq!(read(members.join(",")), "", "7.6 KB of well-formed trace state");
    }
}
