//! The node's identity in its data directory: `node-key.pem` (0600, never leaves the
//! node), `node.pem` (certificate from the control plane), `ca.pem` (the pinned
//! cluster CA) and `node.json` (node id and name). Kept across restarts.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the identity files.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// `node.json` is not valid.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Parser error.
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeFile {
    node_id: String,
    node_name: String,
}

/// What the node needs to open its session.
#[derive(Clone)]
pub struct Identity {
    /// Node id assigned by the control plane.
    pub node_id: String,
    /// Node name.
    pub node_name: String,
    /// PEM private key.
    pub key_pem: String,
    /// PEM node certificate.
    pub cert_pem: String,
    /// PEM cluster CA.
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("node_id", &self.node_id).field("node_name", &self.node_name).finish_non_exhaustive()
    }
}

const KEY: &str = "node-key.pem";
const CERT: &str = "node.pem";
const CA: &str = "ca.pem";
const NODE: &str = "node.json";

impl Identity {
    /// Whether `dir` holds a complete identity.
    pub fn exists(dir: &Path) -> bool {
        [KEY, CERT, CA, NODE].iter().all(|file| dir.join(file).is_file())
    }

    /// Reads the identity from `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read_to_string(&path).map_err(|source| IdentityError::Io { path, source })
        };
        let node_path = dir.join(NODE);
        let node: NodeFile = serde_json::from_str(&read(NODE)?).map_err(|source| IdentityError::Json { path: node_path, source })?;
        Ok(Identity { node_id: node.node_id, node_name: node.node_name, key_pem: read(KEY)?, cert_pem: read(CERT)?, ca_pem: read(CA)? })
    }

    /// Writes the identity to `dir` (created 0700), every file 0600. `node.json` is
    /// written last, so a crash mid-way leaves no identity that looks complete.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| IdentityError::Io { path: dir.to_owned(), source })?;
        write_private(&dir.join(KEY), &self.key_pem)?;
        write_private(&dir.join(CERT), &self.cert_pem)?;
        write_private(&dir.join(CA), &self.ca_pem)?;
        let node = NodeFile { node_id: self.node_id.clone(), node_name: self.node_name.clone() };
        let json = serde_json::to_string_pretty(&node).map_err(|source| IdentityError::Json { path: dir.join(NODE), source })?;
        write_private(&dir.join(NODE), &json)
    }

    /// Replaces the certificate (after renewal).
    pub fn save_certificate(&mut self, dir: &Path, cert_pem: String) -> Result<(), IdentityError> {
        write_private(&dir.join(CERT), &cert_pem)?;
        self.cert_pem = cert_pem;
        Ok(())
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), IdentityError> {
    diplo_api::files::write_private(path, contents).map_err(|source| IdentityError::Io { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saves_privately_and_loads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent");
        assert!(!Identity::exists(&path));
        let identity =
            Identity { node_id: "id".into(), node_name: "pi".into(), key_pem: "key".into(), cert_pem: "cert".into(), ca_pem: "ca".into() };
        identity.save(&path).expect("save");
        assert!(Identity::exists(&path));
        let loaded = Identity::load(&path).expect("load");
        assert_eq!((loaded.node_id.as_str(), loaded.key_pem.as_str()), ("id", "key"));
        let mode = std::fs::metadata(path.join(KEY)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{loaded:?}").contains("key\""));
    }
}
