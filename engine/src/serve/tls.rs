//! TLS on every endpoint (`--tls-cert`, `--tls-key`, PEM), with the rustls already in the tree.
//!
//! A token sent in clear text over a network is a token given away, so a non-loopback bind
//! needs TLS as well as a token (unless `--insecure`). The Postgres wire negotiates TLS itself
//! (SSLRequest, what `sslmode=require` sends) with the acceptor from [`acceptor`]; Flight SQL
//! (gRPC needs ALPN `h2`) and HTTP take connections whose handshake finished in
//! [`accept_tls`], off the accept loop, so one slow client never holds up the others.

use crate::error::{Result, TallyError};
use datafusion_postgres::pgwire::tokio::tokio_rustls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain and private key a server presents.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Which protocols a TLS endpoint offers by ALPN.
#[derive(Debug, Clone, Copy)]
pub enum Alpn {
    /// gRPC (Flight SQL): HTTP/2 only.
    Grpc,
    /// HTTP: HTTP/2 or HTTP/1.1.
    Http,
    /// The Postgres wire: no ALPN.
    None,
}

fn bad(files: &TlsFiles, message: String) -> TallyError {
    TallyError::InvalidArgument {
        what: "--tls-cert/--tls-key".into(),
        message: format!(
            "{} / {}: {message}",
            files.cert.display(),
            files.key.display()
        ),
    }
}

/// A TLS acceptor for `files`, checked now: a bad certificate or key fails the start.
pub fn acceptor(files: &TlsFiles, alpn: Alpn) -> Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(files, format!("cannot read the certificate: {e}")))?;
    if certs.is_empty() {
        return Err(bad(files, "no certificate in the PEM file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad(files, format!("cannot read the private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(files, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(files, format!("certificate and key do not match: {e}")))?;
    config.alpn_protocols = match alpn {
        Alpn::Grpc => vec![b"h2".to_vec()],
        Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Alpn::None => Vec::new(),
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener` and hands over those whose handshake succeeded; each
/// handshake runs in its own task, under [`HANDSHAKE_TIMEOUT`]. Ends when the receiver is
/// dropped.
pub fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (socket, peer) = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // No Nagle: a prepared statement is several small calls in a row.
            let _ = socket.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

/// The HTTP endpoint's listener over [`accept_tls`].
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves TLS on `listener`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self {
            rx: accept_tls(listener, acceptor),
            local,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
