//! Local git repositories for the build tests: made with `git` in a temporary directory
//! (which the test's agents are allowed to clone from) and served as `file://` URLs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary directory of git repositories, removed when dropped.
pub struct GitRepos {
    dir: tempfile::TempDir,
}

impl GitRepos {
    /// A new, empty directory named after `prefix`.
    pub fn new(prefix: &str) -> GitRepos {
        GitRepos { dir: tempfile::Builder::new().prefix(prefix).tempdir().expect("temporary directory") }
    }

    /// The directory (what an agent's `DIPLO_BUILD_FILE_REPOS` allows).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A repository `name` on branch `main` whose first commit holds `files`; its path.
    pub fn create(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).expect("repository directory");
        git(&path, &["init", "-q", "-b", "main"]);
        commit(&path, files, "first");
        path
    }
}

/// Runs `git ARGS` in `dir` (as a test user); its trimmed stdout. Panics when git fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=diplo-test", "-c", "user.email=test@diplo.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Writes `files` (paths relative to `repo`) and commits everything; the commit's hash.
pub fn commit(repo: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (name, content) in files {
        let path = repo.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("directories");
        std::fs::write(&path, content).expect("file written");
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// The `file://` URL of a repository.
pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}
