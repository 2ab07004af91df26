//! Log lines joined to traces: in JSON, a line written inside a call that is traced (an audit
//! event too) carries the `trace_id` and `span_id` of the span it was written in, so an operator
//! goes from the line to the trace.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// A JSON event format, with the trace's ids added to each line written inside a traced span:
/// those of the innermost span around the line that is in an exported trace, read through the
/// process's global subscriber, which the binary installs.
#[derive(Debug)]
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some((trace_id, span_id)) = super::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // One JSON object and a newline: the ids go in before the object closes.
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(writer, r#"{object},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#),
            None => writer.write_str(&line),
        }
    }
}
