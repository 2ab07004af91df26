//! Spans out over OTLP, gRPC or HTTP/protobuf, configured the standard way: the flags first,
//! then the `OTEL_*` variables, then OpenTelemetry's defaults. Off unless a collector is named.
//!
//! Ended spans wait in a queue of `--trace-queue-size` spans for the SDK's batch processor,
//! whose thread hands each batch to the exporter on the runtime. A call never waits for either:
//! a span that finds the queue full is dropped, and so is a batch the collector did not take,
//! and both are counted ([`dropped`]) for `/metrics`.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    Context, KeyValue,
    propagation::TextMapCompositePropagator,
    trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig, tonic_types::transport::ClientTlsConfig};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
        Span, SpanData, SpanExporter, SpanProcessor,
    },
};

use opentelemetry_propagator_b3::B3Encoding;

use super::EXPORTING;

/// The OTLP transports served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC, by default to port 4317.
    Grpc,
    /// OTLP over HTTP with protobuf bodies, by default to port 4318 (`/v1/traces`).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

/// What the flags say; the `OTEL_*` variables fill in what they leave out.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The collector's base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` gives it.
    pub endpoint: Option<String>,
    pub protocol: Option<OtlpProtocol>,
    /// The share of new traces sampled; a call in a trace follows its parent's choice.
    pub sample_ratio: Option<f64>,
    pub queue_size: Option<usize>,
}

/// The settings in effect.
#[derive(Debug)]
struct Resolved {
    /// The URL spans go to; `None` leaves it to the exporter, which reads the OTLP variables.
    endpoint: Option<String>,
    protocol: OtlpProtocol,
    /// Whether the collector is reached over TLS, verified against the system's roots.
    tls: bool,
    sampler: Sampler,
    queue_size: usize,
}

/// The queue's size without a flag or `OTEL_BSP_MAX_QUEUE_SIZE`: OpenTelemetry's default.
const DEFAULT_QUEUE_SIZE: usize = 2048;

/// The largest queue: the batch processor reserves a place for each span at start, some 400
/// bytes a place.
pub const MAX_QUEUE_SIZE: usize = 65_536;

/// How long the last spans may take to leave when the server stops.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

const SAMPLERS: &str =
    "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio";

impl Settings {
    /// The settings in effect, with `env` for the variables; `None` when spans are not exported.
    fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Resolved>, String> {
        let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let named = self.endpoint.is_some()
            || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            _ if self.endpoint.is_some() => {}
            None if !named => return Ok(None),
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!("OTEL_TRACES_EXPORTER: {other:?} is not served; use otlp or none"));
            }
        }
        let protocol = match self.protocol {
            Some(protocol) => protocol,
            None => {
                let named = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
                    .into_iter()
                    .find_map(|name| var(name).map(|value| (name, value)));
                match named {
                    None => OtlpProtocol::HttpProtobuf,
                    Some((_, value)) if value == "grpc" => OtlpProtocol::Grpc,
                    Some((_, value)) if value == "http/protobuf" => OtlpProtocol::HttpProtobuf,
                    Some((name, value)) => {
                        return Err(format!("{name}: {value:?} is not served; use grpc or http/protobuf"));
                    }
                }
            }
        };
        // A base URL, as the variable is: HTTP adds the signal's path (gRPC names no path).
        let endpoint = self.endpoint.as_deref().map(|base| match protocol {
            OtlpProtocol::Grpc => base.to_owned(),
            OtlpProtocol::HttpProtobuf if base.trim_end_matches('/').ends_with("/v1/traces") => base.to_owned(),
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
        });
        let tls = self
            .endpoint
            .clone()
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .is_some_and(|url| url.to_ascii_lowercase().starts_with("https:"));
        let sampler = match self.sample_ratio {
            Some(ratio) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))),
            None => sampler_from(var("OTEL_TRACES_SAMPLER").as_deref(), var("OTEL_TRACES_SAMPLER_ARG").as_deref())?,
        };
        let queue_size = match (self.queue_size, var("OTEL_BSP_MAX_QUEUE_SIZE")) {
            (Some(size), _) => size,
            (None, Some(value)) => {
                value.parse::<usize>().ok().filter(|size| (1..=MAX_QUEUE_SIZE).contains(size)).ok_or_else(|| {
                    format!("OTEL_BSP_MAX_QUEUE_SIZE: {value:?} is not a number of spans from 1 to {MAX_QUEUE_SIZE}")
                })?
            }
            (None, None) => DEFAULT_QUEUE_SIZE,
        };
        Ok(Some(Resolved { endpoint, protocol, tls, sampler, queue_size }))
    }
}

/// The sampler `OTEL_TRACES_SAMPLER` and its argument name: by default each call follows its
/// parent, and a call without one is sampled.
fn sampler_from(name: Option<&str>, argument: Option<&str>) -> Result<Sampler, String> {
    let ratio = || match argument {
        None => Ok(1.0),
        Some(value) => value
            .parse::<f64>()
            .ok()
            .filter(|ratio| (0.0..=1.0).contains(ratio))
            .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG: {value:?} is not a ratio from 0 to 1")),
    };
    let parent_based = |root| Sampler::ParentBased(Box::new(root));
    Ok(match name.unwrap_or("parentbased_always_on") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => parent_based(Sampler::AlwaysOn),
        "parentbased_always_off" => parent_based(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent_based(Sampler::TraceIdRatioBased(ratio()?)),
        other => return Err(format!("OTEL_TRACES_SAMPLER: {other:?} is not one of {SAMPLERS}")),
    })
}

/// The configured sampler, but for B3 parents that leave the choice open: a deferred one (sent
/// without a sampling state) is decided as a new trace is, and a debug one is sampled, as B3
/// says (W3C's `traceparent` always says sampled or not).
#[derive(Debug, Clone)]
struct B3Aware {
    configured: Sampler,
    /// What decides a new trace.
    root: Box<dyn ShouldSample>,
}

impl B3Aware {
    fn new(configured: Sampler) -> Self {
        let root = match &configured {
            Sampler::ParentBased(root) => root.clone(),
            other => Box::new(other.clone()),
        };
        Self { configured, root }
    }
}

/// B3's flags for a parent with no sampling state (deferred) and one sampled for debugging, as
/// the B3 propagator keeps them.
const B3_DEFERRED: u8 = 0x02;
const B3_DEBUG: u8 = 0x04;

impl ShouldSample for B3Aware {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let open = parent_context.filter(|cx| cx.has_active_span()).and_then(|cx| {
            let parent = cx.span().span_context().clone();
            let flags = parent.trace_flags().to_u8();
            (parent.is_remote() && !parent.is_sampled()).then_some(flags)
        });
        match open {
            Some(flags) if flags & B3_DEBUG != 0 => {
                Sampler::AlwaysOn.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
            }
            Some(flags) if flags & B3_DEFERRED != 0 => {
                self.root.should_sample(None, trace_id, name, span_kind, attributes, links)
            }
            _ => self.configured.should_sample(parent_context, trace_id, name, span_kind, attributes, links),
        }
    }
}

/// Spans dropped because the queue was full, and in batches the collector did not take.
static DROPPED_QUEUE_FULL: AtomicU64 = AtomicU64::new(0);
static DROPPED_EXPORT_FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans dropped so far: for a full queue, and for an export that failed.
pub fn dropped() -> (u64, u64) {
    (DROPPED_QUEUE_FULL.load(Ordering::Relaxed), DROPPED_EXPORT_FAILED.load(Ordering::Relaxed))
}

/// The export of spans, running: stop it with [`Exporter::shutdown`] to send the last ones.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
    /// Where spans go and how, for the log.
    pub destination: String,
}

impl Exporter {
    /// Starts exporting as `settings` and the environment say, on the current runtime; `None`
    /// when no collector is named. Sets the propagators that read a caller's trace context.
    pub fn start(settings: &Settings) -> Result<Option<(SdkTracer, Self)>, String> {
        let Some(resolved) = settings.resolve(&|name| std::env::var(name).ok())? else {
            return Ok(None);
        };
        let destination = format!(
            "{} over {}",
            resolved.endpoint.as_deref().unwrap_or("the collector of OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT"),
            match resolved.protocol {
                OtlpProtocol::Grpc => "OTLP/gRPC",
                OtlpProtocol::HttpProtobuf => "OTLP/HTTP",
            }
        );
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| format!("traces need the runtime: {e}"))?;
        // HTTPS to a collector, as the service's other clients do it; a second install changes nothing.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // gRPC over TLS trusts the system's roots (with SSL_CERT_FILE and SSL_CERT_DIR), as HTTP does.
        let grpc = || {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if resolved.tls { builder.with_tls_config(ClientTlsConfig::new().with_native_roots()) } else { builder }
        };
        let exporter = match (resolved.protocol, resolved.endpoint.clone()) {
            (OtlpProtocol::Grpc, Some(endpoint)) => grpc().with_endpoint(endpoint).build(),
            (OtlpProtocol::Grpc, None) => grpc().build(),
            (OtlpProtocol::HttpProtobuf, Some(endpoint)) => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .build(),
            (OtlpProtocol::HttpProtobuf, None) => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build(),
        }
        .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter =
            OnRuntime { inner: Arc::new(exporter), runtime, queued: Arc::clone(&queued), last_logged: Arc::default() };
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().with_max_queue_size(resolved.queue_size).build())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueBound { inner: batches, queued, capacity: resolved.queue_size })
            .with_sampler(B3Aware::new(resolved.sampler))
            .with_resource(resource())
            .build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
        // B3 first, so that a request with both is read by its W3C context.
        opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_propagator_b3::Propagator::with_encoding(B3Encoding::SingleAndMultiHeader)),
            Box::new(TraceContextPropagator::new()),
        ]));
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Some((tracer, Self { provider, destination })))
    }

    /// Sends the spans still queued, for at most a few seconds, and stops.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %err, "the last spans were not all exported");
        }
    }
}

/// The service as the collector sees it: `service.name` from `OTEL_SERVICE_NAME` or
/// `OTEL_RESOURCE_ATTRIBUTES`, else `personal-clients`; its version; and whatever else those
/// attributes say.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut ours = Vec::new();
    if !named {
        ours.push(KeyValue::new("service.name", env!("CARGO_PKG_NAME")));
    }
    if detected.get(&opentelemetry::Key::from_static_str("service.version")).is_none() {
        ours.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    }
    // Only what the environment left out: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win.
    Resource::builder().with_attributes(ours).build()
}

/// The batch processor behind a queue bound it never reaches: a span that would take the queue
/// past its size is dropped here, and counted, before the processor (which counts drops only for
/// its own log) sees it. `queued` is what the processor holds that the exporter has not taken.
#[derive(Debug)]
struct QueueBound {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for QueueBound {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, run on the service's runtime (the batch processor's own thread has none,
/// which tonic and the async HTTP client need); counts the spans of a batch that failed.
#[derive(Debug)]
struct OnRuntime<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
    queued: Arc<AtomicUsize>,
    /// When a failed export was last logged: one line a minute at most, while the collector is
    /// away or refuses.
    last_logged: Arc<Mutex<Option<Instant>>>,
}

/// How often a failed export is logged, at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let size = batch.len();
        self.queued.fetch_sub(size, Ordering::AcqRel);
        let inner = Arc::clone(&self.inner);
        let export = self.runtime.spawn(async move { inner.export(batch).await });
        let last_logged = Arc::clone(&self.last_logged);
        async move {
            let result = export.await.unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
            if let Err(err) = &result {
                DROPPED_EXPORT_FAILED.fetch_add(size as u64, Ordering::Relaxed);
                let mut last = last_logged.lock().unwrap_or_else(PoisonError::into_inner);
                if last.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        error = %err,
                        spans = size,
                        "the collector did not take a batch of spans: dropped, and counted in personal_clients_trace_spans_dropped_total"
                    );
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Before the first export, the only holder.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(settings: &Settings, vars: &[(&str, &str)]) -> Result<Option<Resolved>, String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        settings.resolve(&|name| vars.get(name).cloned())
    }

    fn sampler(resolved: &Resolved) -> String {
        format!("{:?}", resolved.sampler)
    }

    #[test]
    fn nothing_is_exported_until_a_collector_is_named() {
        assert!(resolve(&Settings::default(), &[]).unwrap().is_none());
        assert!(resolve(&Settings::default(), &[("OTEL_TRACES_EXPORTER", "none")]).unwrap().is_none());
        let named = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let resolved = resolve(&Settings::default(), &[named]).unwrap().unwrap();
        assert_eq!(resolved.endpoint, None, "the exporter reads the variable itself");
        assert_eq!(resolved.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(resolved.queue_size, DEFAULT_QUEUE_SIZE);
        assert_eq!(sampler(&resolved), "ParentBased(AlwaysOn)");
        assert!(resolve(&Settings::default(), &[named, ("OTEL_SDK_DISABLED", "true")]).unwrap().is_none());
    }

    #[test]
    fn flags_come_before_the_variables() {
        let settings = Settings {
            endpoint: Some("http://collector:4318/".into()),
            protocol: None,
            sample_ratio: Some(0.25),
            queue_size: Some(64),
        };
        let vars = [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_BSP_MAX_QUEUE_SIZE", "10")];
        let resolved = resolve(&settings, &vars).unwrap().unwrap();
        assert_eq!(resolved.protocol, OtlpProtocol::Grpc);
        assert_eq!(resolved.endpoint.as_deref(), Some("http://collector:4318/"));
        assert_eq!(resolved.queue_size, 64);
        assert_eq!(sampler(&resolved), "ParentBased(TraceIdRatioBased(0.25))");
        let http = Settings { protocol: Some(OtlpProtocol::HttpProtobuf), ..settings };
        let resolved = resolve(&http, &vars).unwrap().unwrap();
        assert_eq!(resolved.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
    }

    #[test]
    fn variables_the_service_cannot_follow_are_named() {
        let on = ("OTEL_TRACES_EXPORTER", "otlp");
        let err =
            resolve(&Settings::default(), &[on, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")]).unwrap_err();
        assert_eq!(err, r#"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json" is not served; use grpc or http/protobuf"#);
        let ratio = ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio");
        let err = resolve(&Settings::default(), &[on, ratio, ("OTEL_TRACES_SAMPLER_ARG", "2")]).unwrap_err();
        assert!(err.starts_with(r#"OTEL_TRACES_SAMPLER_ARG: "2""#), "{err}");
        let err = resolve(&Settings::default(), &[on, ("OTEL_TRACES_SAMPLER", "xray")]).unwrap_err();
        assert!(err.contains("parentbased_always_on"), "{err}");
        let err = resolve(&Settings::default(), &[("OTEL_TRACES_EXPORTER", "zipkin")]).unwrap_err();
        assert!(err.starts_with("OTEL_TRACES_EXPORTER"), "{err}");
        let err = resolve(&Settings::default(), &[on, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).unwrap_err();
        assert!(err.starts_with("OTEL_BSP_MAX_QUEUE_SIZE"), "{err}");
        let resolved =
            resolve(&Settings::default(), &[on, ratio, ("OTEL_TRACES_SAMPLER_ARG", "0.5")]).unwrap().unwrap();
        assert_eq!(sampler(&resolved), "ParentBased(TraceIdRatioBased(0.5))");
    }
}
