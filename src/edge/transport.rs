//! HTTP/1.1 and HTTP/2 (TLS or cleartext) on the one port, served connection by connection with
//! hyper, so that every limit a peer meets is one of ours: the size of an HTTP/1.1 head and of
//! HTTP/2 header blocks, the flow-control windows, keep-alive pings; and so that a connection
//! [`super::connections`] closes is dropped at once, with everything it held.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpConnectInfo;

use super::{connections::Connections, tls};

type Request = http::Request<hyper::body::Incoming>;
type Answer = http::Response<tonic::body::Body>;

/// How connections speak HTTP.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// The largest HTTP/1.1 head and HTTP/2 header block, in bytes.
    pub max_header_bytes: u32,
    pub max_concurrent_streams: u32,
    /// How often an HTTP/2 peer is pinged, and how long its answer may take.
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
    /// HTTP/2 flow-control windows: how much a peer may send before the server has read it.
    pub stream_window: u32,
    pub connection_window: u32,
    /// The time an HTTP/1.1 head has to arrive.
    pub head_timeout: Duration,
}

/// The smallest read buffer hyper takes for HTTP/1.1.
const MIN_HTTP1_BUFFER: usize = 8 * 1024;

/// Streams a peer may reset before their answer is ready, and streams the server may reset for
/// a peer's mistakes, before the connection is closed.
const RESET_STREAMS: usize = 100;

impl HttpSettings {
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let head = usize::try_from(self.max_header_bytes).unwrap_or(usize::MAX).max(MIN_HTTP1_BUFFER);
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.head_timeout).max_buf_size(head);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_bytes)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive_timeout)
            .max_pending_accept_reset_streams(RESET_STREAMS)
            .max_local_error_reset_streams(RESET_STREAMS);
        builder
    }
}

/// Serves `service` on every connection `connections` accepts from `listener` until `shutdown`,
/// then lets the connections finish what they have begun for at most `grace`.
pub async fn serve<S>(
    listener: TcpListener,
    connections: Arc<Connections>,
    tls: Option<TlsAcceptor>,
    http: HttpSettings,
    service: S,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    S: tower::Service<Request, Response = Answer, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let builder = Arc::new(http.builder());
    let tasks = TaskTracker::new();
    let (stop, stopping) = watch::channel(false);
    let watcher = tokio::spawn(Arc::clone(&connections).watch());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let tracked = tokio::select! {
            tracked = connections.accept(&listener) => tracked,
            () = &mut shutdown => break,
        };
        let (peer, local) = (tracked.peer(), tracked.local_addr());
        let closing = tracked.closing();
        let service = tower::ServiceExt::map_request(service.clone(), move |mut request: Request| {
            request.extensions_mut().insert(TcpConnectInfo { local_addr: local, remote_addr: Some(peer) });
            request
        });
        let (builder, stopping, tls) = (Arc::clone(&builder), stopping.clone(), tls.clone());
        tasks.spawn(async move {
            let serving = async {
                match tls {
                    Some(acceptor) => match tls::handshake(acceptor, tracked).await {
                        Ok(stream) => one(&builder, stream, service, stopping, peer).await,
                        Err(error) => tracing::debug!(%peer, %error, "connection dropped before it was served"),
                    },
                    None => one(&builder, tracked, service, stopping, peer).await,
                }
            };
            // Closed by the server: dropping the connection frees all it holds.
            tokio::select! {
                () = serving => {}
                () = closing => {}
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight calls");
    let _ = stop.send(true);
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(?grace, "in-flight calls still running after the grace period; stopping");
    }
    watcher.abort();
}

/// Serves one connection until it ends, or finishes what it has begun once told to stop.
async fn one<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    mut stopping: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request, Response = Answer, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}
