//! TLS on the service's one port, for gRPC (ALPN `h2`) and HTTP/1.1 (`http/1.1`) alike.

use std::{io, path::Path, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::error::Error;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What completes TLS handshakes for the certificate chain and private key in these PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, Error> {
    let bad = |flag: &'static str, path: &Path, e: rustls::pki_types::pem::Error| {
        Error::config(flag, format!("cannot read {} as PEM", path.display()), Some(e.into()))
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("--tls-cert", cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("--tls-cert", cert, e))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad("--tls-key", key, e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal_with("cannot set up TLS", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            Error::internal_with(
                format!("{} and {} are not a usable certificate and key", cert.display(), key.display()),
                e,
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Completes the TLS handshake of an accepted connection, or gives up after
/// [`HANDSHAKE_TIMEOUT`].
pub async fn handshake<S>(acceptor: TlsAcceptor, stream: S) -> io::Result<TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake did not finish in time"))?
}
