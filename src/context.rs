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

/// The CLI's config file: several named contexts and the current one. A file holding
/// one bare context (what the control plane writes as `cli.toml`) reads as a single
/// context named [`DEFAULT_CONTEXT`], current.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextFile {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: std::collections::BTreeMap<String, CliContext>,
}

/// The name a single-context file's context goes by.
pub const DEFAULT_CONTEXT: &str = "default";

/// Errors choosing or changing contexts.
#[derive(Debug, thiserror::Error)]
pub enum ContextFileError {
    /// Reading or parsing the file failed.
    #[error(transparent)]
    File(#[from] ContextError),
    /// No context by that name.
    #[error("no context named {name:?} in {path} (it has: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The file.
        path: PathBuf,
        /// The names it has, comma separated.
        known: String,
    },
    /// The file names no current context and has several.
    #[error("{path} has several contexts and none is current: run `diplo context use NAME` or pass --context NAME")]
    NoCurrent {
        /// The file.
        path: PathBuf,
    },
    /// A context name that cannot be used.
    #[error("invalid context name {0:?}: use letters, digits, '-', '_' or '.'")]
    InvalidName(String),
    /// Writing the file failed.
    #[error("cannot write CLI config {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

impl ContextFile {
    /// Reads a config file of either shape (named contexts, or one bare context).
    pub fn load(path: &Path) -> Result<Self, ContextError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContextError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|source| ContextError::Parse { path: path.to_owned(), source })
    }

    /// Parses either shape.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        let value: toml::Table = toml::from_str(text)?;
        if value.contains_key("contexts") || value.contains_key("current") {
            return toml::from_str(text);
        }
        let single: CliContext = toml::from_str(text)?;
        Ok(ContextFile { current: Some(DEFAULT_CONTEXT.to_owned()), contexts: [(DEFAULT_CONTEXT.to_owned(), single)].into() })
    }

    /// The context named `name`, else the current one, else the only one.
    pub fn select(&self, name: Option<&str>, path: &Path) -> Result<(String, CliContext), ContextFileError> {
        let name = match name.or(self.current.as_deref()) {
            Some(name) => name.to_owned(),
            None if self.contexts.len() == 1 => self.contexts.keys().next().cloned().unwrap_or_default(),
            None => return Err(ContextFileError::NoCurrent { path: path.to_owned() }),
        };
        match self.contexts.get(&name) {
            Some(context) => Ok((name, context.clone())),
            None => Err(ContextFileError::Unknown { name, path: path.to_owned(), known: self.names() }),
        }
    }

    /// The context names, comma separated (`none` when empty).
    pub fn names(&self) -> String {
        if self.contexts.is_empty() { "none".to_owned() } else { self.contexts.keys().cloned().collect::<Vec<_>>().join(", ") }
    }

    /// Adds or replaces a context; the first one added becomes current.
    pub fn add(&mut self, name: &str, context: CliContext) -> Result<(), ContextFileError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(ContextFileError::InvalidName(name.to_owned()));
        }
        self.contexts.insert(name.to_owned(), context);
        if self.current.is_none() {
            self.current = Some(name.to_owned());
        }
        Ok(())
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str, path: &Path) -> Result<(), ContextFileError> {
        if !self.contexts.contains_key(name) {
            return Err(ContextFileError::Unknown { name: name.to_owned(), path: path.to_owned(), known: self.names() });
        }
        self.current = Some(name.to_owned());
        Ok(())
    }

    /// Writes the file (mode 0600 on Unix: it points at private keys), in the
    /// named-contexts shape.
    pub fn save(&self, path: &Path) -> Result<(), ContextFileError> {
        let write = |source: std::io::Error| ContextFileError::Write { path: path.to_owned(), source };
        let body = toml::to_string(self).map_err(|e| write(std::io::Error::other(e)))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write)?;
        }
        let text = format!("# Diplo CLI contexts (`diplo context ls|use|add`).\n{body}");
        let temporary = path.with_extension("toml.tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temporary).map_err(write)?;
            file.write_all(text.as_bytes()).map_err(write)?;
        }
        std::fs::rename(&temporary, path).map_err(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(server: &str) -> CliContext {
        CliContext {
            server: server.into(),
            rest: "http://127.0.0.1:8080".into(),
            ca: "/d/ca.pem".into(),
            cert: "/d/admin.pem".into(),
            key: "/d/admin-key.pem".into(),
            token_file: "/d/admin.token".into(),
        }
    }

    #[test]
    fn a_single_context_file_reads_as_the_default_context_and_contexts_switch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, context("https://a:7443").to_toml()).expect("write");
        let mut file = ContextFile::load(&path).expect("old shape reads");
        assert_eq!(file.select(None, &path).expect("current"), (DEFAULT_CONTEXT.to_owned(), context("https://a:7443")));
        file.add("lab", context("https://b:7443")).expect("add");
        assert_eq!(file.current.as_deref(), Some(DEFAULT_CONTEXT), "adding does not switch");
        file.use_context("lab", &path).expect("use");
        file.save(&path).expect("save");
        let file = ContextFile::load(&path).expect("new shape reads");
        assert_eq!(file.select(None, &path).expect("current").1.server, "https://b:7443");
        assert_eq!(file.select(Some("default"), &path).expect("named").1.server, "https://a:7443");
        let unknown = file.select(Some("prod"), &path).expect_err("unknown").to_string();
        assert!(unknown.contains("prod") && unknown.contains("default, lab"), "{unknown}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
        }
        let mut fresh = ContextFile::default();
        assert!(matches!(fresh.add("bad name", context("x")), Err(ContextFileError::InvalidName(_))));
        fresh.add("one", context("https://c:7443")).expect("add");
        assert_eq!(fresh.current.as_deref(), Some("one"), "the first context added is current");
        let two = ContextFile { current: None, contexts: [("a".into(), context("x")), ("b".into(), context("y"))].into() };
        assert!(matches!(two.select(None, &path), Err(ContextFileError::NoCurrent { .. })));
    }

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
