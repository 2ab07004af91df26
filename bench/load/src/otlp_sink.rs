//! An OTLP/gRPC receiver that counts the spans it is sent and keeps none: the collector a traced
//! benchmark exports to, so that exporting costs the service what it would against a real one.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status, transport::Server};

use crate::Error;

#[derive(Debug, Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Receives spans on `listen` until SIGTERM or Ctrl-C, then prints how many came.
pub fn run(listen: SocketAddr) -> Result<(), Error> {
    let rt = crate::runtime()?;
    let sink = Sink::default();
    let spans = Arc::clone(&sink.spans);
    rt.block_on(async move {
        let stop = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok::<_, std::io::Error>(())
        };
        let server = Server::builder().add_service(TraceServiceServer::new(sink));
        eprintln!("pc-load: receiving OTLP/gRPC spans on {listen}");
        server.serve_with_shutdown(listen, async { let _ = stop.await; }).await
    })?;
    println!("spans received by the OTLP sink: {}", spans.load(Ordering::Relaxed));
    Ok(())
}
