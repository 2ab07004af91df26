//! Prometheus metrics, served in the Prometheus text format (0.0.4) at `GET /metrics`: calls of
//! gRPC methods (over gRPC, or as JSON over HTTP) by method, status code and protocol, with
//! latency histograms, as the edge records them; token exchange outcomes by reason; forward
//! authorization outcomes and credentials revoked for leaked secrets; the
//! database pools; the open connections and the memory budget, as the edge keeps them; the
//! spans the exporter dropped; the process (memory, CPU, file descriptors, start time); and the
//! version and commit running.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tonic::Code;

use crate::{
    protocol::Protocol,
    store::{PoolStats, Store},
    telemetry,
};

/// Every metric the service keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    exchanges: IntCounterVec,
    forward_auth: IntCounterVec,
    leaked_revocations: IntCounter,
    pool_connections: IntGaugeVec,
    connections: IntGauge,
    memory_budget: IntGauge,
    memory_held: IntGaugeVec,
    spans_dropped: IntCounterVec,
    /// The exporter's drop counts as the counter last took them, for a full queue and for a
    /// failed export.
    spans_dropped_seen: [AtomicU64; 2],
    store: Store,
}

/// The version running.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit it was built from (`unknown` when the build could not tell).
pub const COMMIT: &str = env!("PC_COMMIT");

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const NAMESPACE: &str = "personal_clients";

impl Metrics {
    pub fn new(store: Store) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("grpc_requests_total", "Calls of gRPC methods by method, status code and protocol")
                .namespace(NAMESPACE),
            &["method", "code", "protocol"],
        )?;
        // 0.25 ms to about 4 s.
        let latency = HistogramVec::new(
            HistogramOpts::new("grpc_request_duration_seconds", "Latency of gRPC method calls by method and protocol")
                .namespace(NAMESPACE)
                .buckets(prometheus::exponential_buckets(0.000_25, 2.0, 15)?),
            &["method", "protocol"],
        )?;
        let exchanges = IntCounterVec::new(
            Opts::new("token_exchanges_total", "Token exchanges by outcome: issued, or the reason for refusing")
                .namespace(NAMESPACE),
            &["outcome"],
        )?;
        let forward_auth = IntCounterVec::new(
            Opts::new(
                "forward_auth_checks_total",
                "Forward authorization checks over HTTP by outcome: allowed, denied, unavailable, error",
            )
            .namespace(NAMESPACE),
            &["outcome"],
        )?;
        let leaked_revocations = IntCounter::with_opts(
            Opts::new("leaked_secret_revocations_total", "Credentials revoked because their secret was reported")
                .namespace(NAMESPACE),
        )?;
        let pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections by pool and state").namespace(NAMESPACE),
            &["pool", "state"],
        )?;
        let connections =
            IntGauge::with_opts(Opts::new("connections_open", "Connections open now").namespace(NAMESPACE))?;
        let memory_budget = IntGauge::with_opts(
            Opts::new("memory_budget_bytes", "The memory budget (--memory-budget)").namespace(NAMESPACE),
        )?;
        let memory_held = IntGaugeVec::new(
            Opts::new(
                "memory_held_bytes",
                "Memory held against the budget by what it holds: connections, headers, bodies, answers",
            )
            .namespace(NAMESPACE),
            &["kind"],
        )?;
        let spans_dropped = IntCounterVec::new(
            Opts::new(
                "trace_spans_dropped_total",
                "Spans not exported, by reason: queue_full (the export queue was full), export_failed (the collector did not take them)",
            )
            .namespace(NAMESPACE),
            &["reason"],
        )?;
        for reason in ["queue_full", "export_failed"] {
            spans_dropped.with_label_values(&[reason]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "The version and commit running: always 1").namespace(NAMESPACE),
            &["version", "commit"],
        )?;
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        registry.register(Box::new(build_info))?;
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds,
        // process_max_fds, process_start_time_seconds, ..., read from /proc at each scrape.
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(exchanges.clone()))?;
        registry.register(Box::new(forward_auth.clone()))?;
        registry.register(Box::new(leaked_revocations.clone()))?;
        registry.register(Box::new(pool_connections.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(memory_budget.clone()))?;
        registry.register(Box::new(memory_held.clone()))?;
        registry.register(Box::new(spans_dropped.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            exchanges,
            forward_auth,
            leaked_revocations,
            pool_connections,
            connections,
            memory_budget,
            memory_held,
            spans_dropped,
            spans_dropped_seen: Default::default(),
            store,
        })
    }

    /// The gauge of open connections, for whoever opens and closes them.
    pub fn connections_open(&self) -> IntGauge {
        self.connections.clone()
    }

    /// Shows a memory budget of `limit` bytes, and gives the gauges of what it holds by `kinds`.
    pub fn memory_budget(&self, limit: usize, kinds: [&str; 4]) -> [IntGauge; 4] {
        self.memory_budget.set(i64::try_from(limit).unwrap_or(i64::MAX));
        kinds.map(|kind| self.memory_held.with_label_values(&[kind]))
    }

    /// Counts one token exchange: `issued`, or why it was refused.
    pub fn token_exchange(&self, outcome: &str) {
        self.exchanges.with_label_values(&[outcome]).inc();
    }

    /// Counts one forward authorization check: `allowed`, `denied`, `unavailable` or `error`.
    pub fn forward_auth(&self, outcome: &'static str) {
        self.forward_auth.with_label_values(&[outcome]).inc();
    }

    /// Counts credentials revoked because their secrets were reported.
    pub fn leaked_secrets_revoked(&self, count: u64) {
        self.leaked_revocations.inc_by(count);
    }

    /// Counts one call of a gRPC method, over gRPC or as JSON over HTTP, and its latency.
    pub fn rpc(&self, method: &str, protocol: Protocol, code: Code, seconds: f64) {
        let protocol = match protocol {
            Protocol::Grpc => "grpc",
            Protocol::Json | Protocol::Http => "http",
        };
        self.requests.with_label_values(&[method, &code_name(code), protocol]).inc();
        self.latency.with_label_values(&[method, protocol]).observe(seconds);
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]), pool gauges read now.
    pub fn render(&self) -> String {
        for (pool, stats) in self.store.pool_stats() {
            let PoolStats { size, idle } = stats;
            self.pool_connections.with_label_values(&[pool, "idle"]).set(i64::from(idle));
            self.pool_connections.with_label_values(&[pool, "in_use"]).set(i64::from(size.saturating_sub(idle)));
        }
        let (queue_full, export_failed) = telemetry::export::dropped();
        for ((reason, total), seen) in
            [("queue_full", queue_full), ("export_failed", export_failed)].into_iter().zip(&self.spans_dropped_seen)
        {
            // Each drop counted once, whichever of two renders at once reads the newer total.
            let before = seen.fetch_max(total, Ordering::Relaxed);
            self.spans_dropped.with_label_values(&[reason]).inc_by(total.saturating_sub(before));
        }
        let mut text = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut text) {
            tracing::error!(error = %err, "cannot encode the metrics");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

/// The canonical name of a gRPC status code, as other gRPC services label it: `OK`,
/// `NOT_FOUND`, `DEADLINE_EXCEEDED`.
pub fn code_name(code: Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_canonical_names() {
        assert_eq!(code_name(Code::Ok), "OK");
        assert_eq!(code_name(Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Unauthenticated), "UNAUTHENTICATED");
    }
}
