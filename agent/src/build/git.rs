//! Cloning a repository with the `git` binary: one shallow branch, no hooks, no
//! submodules, no prompt, no system or global configuration, only the transports a
//! build may use (`file://` only under the directories this agent allows).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::redact::redact_url_credentials;

/// Why a repository may not be cloned here, or why cloning failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    /// A `file://` repository outside the allowed directories (or none allowed).
    #[error("{0}")]
    NotAllowed(String),
    /// git failed; its message, credentials removed.
    #[error("{0}")]
    Failed(String),
}

/// The directories `file://` repositories may live under (canonical paths); none by
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRepos {
    roots: Vec<PathBuf>,
}

impl FileRepos {
    /// Allows `file://` repositories under `roots` (each resolved to its canonical path;
    /// a root that does not exist is an error naming it).
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Result<Self, String> {
        let mut canonical = Vec::new();
        for root in roots {
            let resolved = root.canonicalize().map_err(|e| format!("--build-file-repos {}: {e}", root.display()))?;
            canonical.push(resolved);
        }
        Ok(FileRepos { roots: canonical })
    }

    /// Whether any `file://` repository may be cloned.
    pub fn any(&self) -> bool {
        !self.roots.is_empty()
    }

    /// The allowed roots.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Checks a `file://` URL: its path, resolved (symbolic links followed), must lie
    /// under an allowed root. Other schemes pass.
    pub fn check(&self, url: &str) -> Result<(), GitError> {
        let Some(path) = url.strip_prefix("file://") else { return Ok(()) };
        if self.roots.is_empty() {
            return Err(GitError::NotAllowed("file:// repositories are not allowed on this node".into()));
        }
        let resolved = Path::new(path)
            .canonicalize()
            .map_err(|e| GitError::NotAllowed(format!("file:// repository {path}: {}", crate::runtime::docker::describe_io(&e))))?;
        if self.roots.iter().any(|root| resolved.starts_with(root)) {
            Ok(())
        } else {
            Err(GitError::NotAllowed(format!("file:// repository {path} is outside the directories this node allows (--build-file-repos)")))
        }
    }
}

/// The `git clone` argument vector (without the program name).
pub fn clone_args(url: &str, branch: Option<&str>, dest: &Path, allow_file: bool) -> Vec<String> {
    let mut args: Vec<String> = vec![];
    let mut config = |value: &str| {
        args.push("-c".into());
        args.push(value.into());
    };
    config("core.hooksPath=/dev/null");
    config("protocol.allow=never");
    for protocol in ["https", "http", "git", "ssh"] {
        config(&format!("protocol.{protocol}.allow=always"));
    }
    if allow_file {
        config("protocol.file.allow=always");
    }
    args.extend(["clone", "--depth", "1", "--single-branch"].map(String::from));
    if let Some(branch) = branch {
        args.push("--branch".into());
        args.push(branch.into());
    }
    args.extend(["--no-recurse-submodules", "--quiet", "--"].map(String::from));
    args.push(url.into());
    args.push(dest.display().to_string());
    args
}

/// The environment git runs with: nothing of the agent's but `PATH`; `HOME` is the
/// workspace; no prompt, no system or global configuration, ssh never asks.
pub fn git_env(home: &Path) -> Vec<(String, String)> {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    [
        ("PATH", path.as_str()),
        ("HOME", &home.display().to_string()),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_ASKPASS", "/bin/false"),
        ("SSH_ASKPASS", "/bin/false"),
        ("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        ("LC_ALL", "C"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn git(args: &[String], home: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("git");
    command
        .args(args)
        .env_clear()
        .envs(git_env(home))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Clones `url` (branch `branch`, else the default) into `dest` and returns the commit
/// checked out. git's messages come back with credentials removed.
pub async fn clone(url: &str, branch: Option<&str>, dest: &Path, home: &Path, files: &FileRepos) -> Result<String, GitError> {
    files.check(url)?;
    let allow_file = url.starts_with("file://");
    let output = git(&clone_args(url, branch, dest, allow_file), home)
        .output()
        .await
        .map_err(|e| GitError::Failed(format!("cannot run git: {}", crate::runtime::docker::describe_io(&e))))?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stderr);
        let message = message.trim();
        let message = if message.is_empty() { format!("git clone failed ({})", output.status) } else { message.to_owned() };
        return Err(GitError::Failed(redact_url_credentials(&message)));
    }
    let args: Vec<String> = ["-C", &dest.display().to_string(), "rev-parse", "HEAD"].map(String::from).to_vec();
    let output = git(&args, home).output().await.map_err(|e| GitError::Failed(format!("cannot run git: {e}")))?;
    if !output.status.success() {
        return Err(GitError::Failed(format!("git rev-parse HEAD: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_argv_is_fixed_and_ends_with_url_and_destination() {
        let args = clone_args("https://h/r.git", Some("main"), Path::new("/ws/repo"), false);
        let text = args.join(" ");
        assert_eq!(
            text,
            "-c core.hooksPath=/dev/null -c protocol.allow=never -c protocol.https.allow=always -c protocol.http.allow=always \
             -c protocol.git.allow=always -c protocol.ssh.allow=always clone --depth 1 --single-branch --branch main \
             --no-recurse-submodules --quiet -- https://h/r.git /ws/repo"
        );
        let args = clone_args("file:///srv/r", None, Path::new("/ws/repo"), true);
        assert!(args.contains(&"protocol.file.allow=always".to_owned()));
        assert!(!args.contains(&"--branch".to_owned()));
        // The URL always follows "--": it can never be read as an option.
        let dashdash = args.iter().position(|a| a == "--").expect("--");
        assert_eq!(&args[dashdash + 1..], ["file:///srv/r", "/ws/repo"]);
    }

    #[test]
    fn the_environment_is_cleared_to_a_fixed_set() {
        let env = git_env(Path::new("/ws"));
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(names.contains(&"PATH") && names.contains(&"HOME"));
        assert!(env.contains(&("GIT_TERMINAL_PROMPT".into(), "0".into())));
        assert!(env.contains(&("GIT_CONFIG_GLOBAL".into(), "/dev/null".into())));
        assert!(env.contains(&("HOME".into(), "/ws".into())));
        assert!(!names.contains(&"SSH_AUTH_SOCK") && !names.contains(&"GIT_DIR"));
    }

    #[test]
    fn file_repositories_need_an_allowed_root() {
        let root = tempfile::tempdir().expect("temporary directory");
        let other = tempfile::tempdir().expect("temporary directory");
        std::fs::create_dir(root.path().join("app")).expect("repository directory");
        std::fs::create_dir(other.path().join("app")).expect("repository directory");
        std::os::unix::fs::symlink(other.path().join("app"), root.path().join("escape")).expect("symlink");
        let url = |dir: &Path, name: &str| format!("file://{}", dir.join(name).display());

        let none = FileRepos::default();
        assert_eq!(none.check(&url(root.path(), "app")).unwrap_err().to_string(), "file:// repositories are not allowed on this node");
        assert_eq!(none.check("https://host/app.git"), Ok(()));

        let files = FileRepos::new([root.path().to_path_buf()]).expect("allowlist");
        assert_eq!(files.check(&url(root.path(), "app")), Ok(()));
        for refused in [url(other.path(), "app"), url(root.path(), "escape")] {
            let err = files.check(&refused).unwrap_err().to_string();
            assert!(err.contains("outside the directories"), "{refused}: {err}");
        }
        assert!(files.check(&url(root.path(), "missing")).is_err());
        assert!(FileRepos::new([PathBuf::from("/nonexistent/diplo-roots")]).unwrap_err().contains("/nonexistent/diplo-roots"));
    }
}
