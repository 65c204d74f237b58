//! TLS towards the control plane. Joining pins the cluster CA by the hash carried in
//! the join token (k3s style): the server must present a chain containing a CA with
//! that sha256, and its certificate must verify against that CA. Once joined, the
//! session uses the saved CA and the node certificate (mutual TLS).

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, Endpoint};

/// Errors while setting up TLS or connecting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The server's CA is not the one the join token pins.
    #[error("the control plane's CA does not match the join token: the token pins sha256 {expected}, the server presented {presented}")]
    CaMismatch {
        /// Hash from the token.
        expected: String,
        /// Hashes of the certificates the server presented.
        presented: String,
    },
    /// A PEM file could not be parsed.
    #[error("invalid {what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Parser message.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The server address is not `HOST:PORT`.
    #[error("invalid --server {0:?}: expected HOST:PORT")]
    Address(String),
    /// Connecting failed.
    #[error("cannot connect to {server}: {reason}")]
    Connect {
        /// The server.
        server: String,
        /// Transport message, with its causes.
        reason: String,
    },
}

/// Verifies the server against the CA whose hash the join token carries.
#[derive(Debug)]
struct PinnedCaVerifier {
    expected: String,
    provider: Arc<CryptoProvider>,
    mismatch: Arc<Mutex<Option<String>>>,
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|cert| sha256_hex(cert) == self.expected) else {
            let presented: Vec<String> = std::iter::once(end_entity).chain(intermediates).map(|c| sha256_hex(c)).collect();
            if let Ok(mut slot) = self.mismatch.lock() {
                *slot = Some(presented.join(", "));
            }
            return Err(rustls::Error::General("the server's CA does not match the join token".into()));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn with_h2(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Connects for joining, pinning the CA by `ca_hash`. A CA mismatch is reported as
/// [`TlsError::CaMismatch`].
pub async fn connect_pinned(server: &str, ca_hash: &str) -> Result<Channel, TlsError> {
    let mismatch = Arc::new(Mutex::new(None));
    let verifier = PinnedCaVerifier { expected: ca_hash.to_owned(), provider: provider(), mismatch: mismatch.clone() };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let result = connect(server, with_h2(config)).await;
    if let Some(presented) = mismatch.lock().ok().and_then(|slot| slot.clone()) {
        return Err(TlsError::CaMismatch { expected: ca_hash.to_owned(), presented });
    }
    result
}

/// Connects with mutual TLS: the server must chain to `ca_pem`; the node presents
/// `cert_pem` / `key_pem`.
pub async fn connect_mtls(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Channel, TlsError> {
    let pem_err = |what| move |e: rustls::pki_types::pem::Error| TlsError::Pem { what, reason: e.to_string() };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(pem_err("CA certificate"))?)?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(pem_err("node certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err("node key"))?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    connect(server, with_h2(config)).await
}

/// Splits `HOST:PORT` (IPv6 in brackets) and returns the host.
fn host_of(server: &str) -> Result<String, TlsError> {
    let (host, port) = server.rsplit_once(':').ok_or_else(|| TlsError::Address(server.to_owned()))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(TlsError::Address(server.to_owned()));
    }
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_owned())
}

async fn connect(server: &str, config: Arc<ClientConfig>) -> Result<Channel, TlsError> {
    let host = host_of(server)?;
    let server_name = ServerName::try_from(host.clone()).map_err(|_| TlsError::Address(server.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let target = server.to_owned();
    let endpoint = Endpoint::from_shared(format!("http://{server}"))
        .map_err(|_| TlsError::Address(server.to_owned()))?
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true);
    endpoint
        .connect_with_connector(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            let server_name = server_name.clone();
            let target = target.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| TlsError::Connect { server: server.to_owned(), reason: error_chain(&e) })
}

/// An error with all its causes, `a: b: c`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_are_checked() {
        assert_eq!(host_of("10.0.0.1:7443").expect("ok"), "10.0.0.1");
        assert_eq!(host_of("[::1]:7443").expect("ok"), "::1");
        assert_eq!(host_of("cp.local:7443").expect("ok"), "cp.local");
        for bad in ["cp.local", ":7443", "cp:notaport"] {
            assert!(matches!(host_of(bad), Err(TlsError::Address(_))), "{bad}");
        }
    }
}
