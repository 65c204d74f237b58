//! The control plane's certificates on disk: the cluster CA (created on first start,
//! key 0600) and a fresh server certificate at every start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diplo_api::pki::{CertificateAuthority, PkiError};

/// Errors while loading or creating the PKI files.
#[derive(Debug, thiserror::Error)]
pub enum PkiSetupError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The CA plus the server identity the gRPC listener presents.
pub struct ClusterPki {
    /// The cluster CA.
    pub ca: CertificateAuthority,
    /// PEM chain presented by the server: its leaf, then the CA (so agents can pin it).
    pub server_chain_pem: String,
    /// PEM key of the server certificate.
    pub server_key_pem: String,
    /// The CA was created at this start (so credentials issued before are void).
    pub created: bool,
}

const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

impl ClusterPki {
    /// Loads `ca.pem`/`ca-key.pem` from `data_dir`, creating them on first start, and
    /// issues a server certificate for localhost, the loopback addresses, this host's
    /// name and `extra_sans`.
    pub fn load_or_create(data_dir: &Path, extra_sans: &[String]) -> Result<Self, PkiSetupError> {
        let cert_path = data_dir.join("ca.pem");
        let key_path = data_dir.join("ca-key.pem");
        let created = !(cert_path.exists() && key_path.exists());
        let ca = if !created {
            CertificateAuthority::from_pem(&read(&cert_path)?, &read(&key_path)?)?
        } else {
            let ca = CertificateAuthority::generate(&hostname())?;
            write_private(&key_path, ca.key_pem())?;
            write_private(&cert_path, ca.cert_pem())?;
            tracing::info!(path = %cert_path.display(), fingerprint = %ca.fingerprint(), "created cluster CA");
            ca
        };
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), hostname()];
        names.extend(extra_sans.iter().cloned());
        names.sort();
        names.dedup();
        let server = ca.issue_server(&names, SERVER_CERT_LIFETIME)?;
        Ok(ClusterPki { server_chain_pem: format!("{}{}", server.cert_pem, ca.cert_pem()), server_key_pem: server.key_pem, ca, created })
    }
}

/// This host's name, or `localhost` when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Reads a UTF-8 file, naming it in the error.
pub fn read(path: &Path) -> Result<String, PkiSetupError> {
    std::fs::read_to_string(path).map_err(|source| PkiSetupError::Io { path: path.to_owned(), source })
}

/// Writes a file readable by its owner only (0600), replacing it atomically.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiSetupError> {
    diplo_api::files::write_private(path, contents).map_err(|source| PkiSetupError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ca_is_created_once_with_a_private_key_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ClusterPki::load_or_create(dir.path(), &["10.0.0.1".into()]).expect("create");
        let mode = std::fs::metadata(dir.path().join("ca-key.pem")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = ClusterPki::load_or_create(dir.path(), &[]).expect("reload");
        assert!(first.created && !second.created);
        assert_eq!(first.ca.fingerprint(), second.ca.fingerprint());
        assert!(second.server_chain_pem.ends_with(second.ca.cert_pem()));
    }
}
