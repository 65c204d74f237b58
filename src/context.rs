//! The CLI's connection context (`cli.toml`): where the control plane is and which
//! credentials to present. The control plane writes one for its admin on first start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One control plane and the files holding the credentials to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliContext {
    /// gRPC endpoint, `https://HOST:PORT`.
    pub server: String,
    /// REST gateway, `http://HOST:PORT`.
    pub rest: String,
    /// PEM CA certificate that signs the server's certificate.
    pub ca: PathBuf,
    /// PEM operator certificate.
    pub cert: PathBuf,
    /// PEM operator key.
    pub key: PathBuf,
    /// File holding a REST bearer token.
    pub token_file: PathBuf,
}

/// Errors reading a context file.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The file could not be read.
    #[error("cannot read CLI config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The file is not a valid context.
    #[error("invalid CLI config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// TOML error.
        source: toml::de::Error,
    },
}

impl CliContext {
    /// Reads a context file.
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContextError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ContextError::Parse { path: path.to_owned(), source })
    }

    /// The context as TOML text, with a header comment.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!("# Diplo CLI context, written by diplo-control-plane.\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_file_and_names_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = CliContext {
            server: "https://127.0.0.1:7443".into(),
            rest: "http://127.0.0.1:8080".into(),
            ca: "/d/ca.pem".into(),
            cert: "/d/admin.pem".into(),
            key: "/d/admin-key.pem".into(),
            token_file: "/d/admin.token".into(),
        };
        let path = dir.path().join("cli.toml");
        std::fs::write(&path, ctx.to_toml()).expect("write");
        assert_eq!(CliContext::load(&path).expect("load"), ctx);
        std::fs::write(&path, "server = 1").expect("write");
        assert!(CliContext::load(&path).unwrap_err().to_string().contains("cli.toml"));
    }
}
