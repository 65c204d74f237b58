//! Optional TLS for the REST gateway (`--rest-tls-cert` / `--rest-tls-key`): a
//! listener whose connections are TLS streams, handed to `axum::serve`. Handshakes run
//! in their own tasks with a time limit, so a slow or silent client holds up nobody.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the REST certificate or key cannot be used; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum RestTlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("invalid REST TLS {what} {path}: {reason}")]
    File {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not belong to the certificate).
    #[error("cannot use REST TLS certificate {cert} with key {key}: {reason}")]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls' message.
        reason: String,
    },
}

/// Loads a PEM certificate chain (leaf first) and its PEM private key into a rustls
/// server configuration for HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, RestTlsError> {
    let file_error = |what, path: &Path, reason: String| RestTlsError::File { what, path: path.display().to_string(), reason };
    let cert_text = std::fs::read(cert).map_err(|e| file_error("certificate", cert, e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error("certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error("certificate", cert, "no PEM certificate in it".into()));
    }
    let key_text = std::fs::read(key).map_err(|e| file_error("key", key, e.to_string()))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| file_error("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_error = |reason: String| RestTlsError::Pair { cert: cert.display().to_string(), key: key.display().to_string(), reason };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| pair_error(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener yielding TLS connections whose handshake succeeded. Accepting runs in a
/// background task, stopped when the listener is dropped.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config`.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, accepted) = mpsc::channel(64);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(connection) => connection,
                    Err(err) => {
                        // Out of file descriptors and the like: wait, as axum does.
                        tracing::warn!(error = %err, "REST accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "REST TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "REST TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { accepted, local_addr, acceptor_task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(connection) => connection,
            // The accepting task only ends when aborted, i.e. when we are dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = diplo_api::pki::CertificateAuthority::generate("t").expect("CA");
        let server = ca.issue_server(&["localhost".into()], Duration::from_secs(3600)).expect("server cert");
        let other = ca.issue_server(&["localhost".into()], Duration::from_secs(3600)).expect("server cert");
        let cert = write(dir.path(), "cert.pem", &server.cert_pem);
        let key = write(dir.path(), "key.pem", &server.key_pem);
        let other_key = write(dir.path(), "other-key.pem", &other.key_pem);
        let garbage = write(dir.path(), "garbage.pem", "not a PEM file\n");
        let missing = dir.path().join("missing.pem");

        assert!(server_config(&cert, &key).is_ok());
        let message = |cert: &Path, key: &Path| server_config(cert, key).expect_err("refused").to_string();
        for (cert, key, named) in
            [(&missing, &key, &missing), (&garbage, &key, &garbage), (&cert, &missing, &missing), (&cert, &garbage, &garbage)]
        {
            let text = message(cert, key);
            assert!(text.contains(&named.display().to_string()), "{text}");
        }
        let mismatch = message(&cert, &other_key);
        assert!(mismatch.contains("other-key.pem") && mismatch.contains("cert.pem"), "{mismatch}");
    }
}
