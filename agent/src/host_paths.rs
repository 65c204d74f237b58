//! Which host paths containers on this node may bind-mount: only paths under a directory
//! the agent was started with (`--allow-host-path DIR`, repeatable, or
//! `DIPLO_ALLOW_HOST_PATHS=DIR,DIR`), none by default. The control plane already keeps
//! bind mounts to admins; this allowlist is the node's own limit, which holds even when
//! the control plane or an admin credential is compromised.
//!
//! A path is checked as the host will see it: it must be absolute without `..`, and its
//! symbolic links are resolved before the prefix match (component by component, so that
//! `/srv/data2` is not inside `/srv/data`), so a link inside an allowed directory cannot
//! lead out of it.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// The agent flag that extends the allowlist (named in refusals).
pub const ALLOW_HOST_PATH_FLAG: &str = "--allow-host-path";
/// The environment variable holding the allowlist, comma-separated.
pub const ALLOW_HOST_PATHS_ENV: &str = "DIPLO_ALLOW_HOST_PATHS";

/// The directories whose contents containers may bind-mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPathPolicy {
    allowed: Vec<PathBuf>,
}

impl HostPathPolicy {
    /// A policy allowing everything under `allowed`; each directory must be an absolute
    /// path without `..` (the error names the flag and the entry). Empty entries are
    /// ignored, so an empty `DIPLO_ALLOW_HOST_PATHS` allows nothing.
    pub fn new(allowed: impl IntoIterator<Item = PathBuf>) -> Result<Self, String> {
        let allowed = allowed
            .into_iter()
            .filter(|path| !path.as_os_str().is_empty())
            .map(|path| normalise(&path).map_err(|why| format!("invalid {ALLOW_HOST_PATH_FLAG} {}: {why}", path.display())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HostPathPolicy { allowed })
    }

    /// The allowed directories, as given (normalised).
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }

    /// Whether a container may bind-mount the host path `source`; the refusal names the
    /// path, what it resolves to, the allowlist and how to extend it.
    pub fn check(&self, source: &str) -> Result<(), String> {
        let refuse = |why: String| {
            let allowed = if self.allowed.is_empty() {
                "none".to_owned()
            } else {
                self.allowed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            };
            format!(
                "host path {source} may not be mounted on this node: {why}; allowed host paths: {allowed} \
                 (start the agent with {ALLOW_HOST_PATH_FLAG} DIR or {ALLOW_HOST_PATHS_ENV}=DIR,... to allow one)"
            )
        };
        let path = normalise(Path::new(source)).map_err(refuse)?;
        let real = resolve(&path).map_err(refuse)?;
        let inside = self.allowed.iter().any(|dir| {
            let dir = resolve(dir).unwrap_or_else(|_| dir.clone());
            real.starts_with(&dir)
        });
        match (inside, real == path) {
            (true, _) => Ok(()),
            (false, true) => Err(refuse("it is outside the allowed host paths".to_owned())),
            (false, false) => Err(refuse(format!("it resolves to {}, outside the allowed host paths", real.display()))),
        }
    }
}

/// `path` without `.` components and repeated separators; refused when it is relative or
/// contains `..` (whose meaning depends on the links along the way).
pub fn normalise(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err("it is not an absolute path".to_owned());
    }
    let mut normal = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => normal.push(part),
            Component::ParentDir => return Err("it contains `..`".to_owned()),
            Component::Prefix(_) => return Err("it is not a host path".to_owned()),
        }
    }
    Ok(normal)
}

/// The host path a normalised absolute `path` designates once every symbolic link is
/// followed: its deepest existing ancestor resolved by the system, with the components
/// that do not exist yet appended. A link that cannot be resolved (dangling, or in a
/// directory that cannot be read) is an error, never assumed harmless.
fn resolve(path: &Path) -> Result<PathBuf, String> {
    let mut existing = path.to_path_buf();
    let mut missing = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(real) => return Ok(missing.iter().rev().fold(real, |path: PathBuf, part| path.join(part))),
            Err(err) => match existing.symlink_metadata() {
                Err(absent) if absent.kind() == ErrorKind::NotFound => {}
                _ => return Err(format!("cannot resolve {}: {err}", existing.display())),
            },
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => return Err(format!("cannot resolve {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_or_refused() {
        let cases = [
            ("/srv/data", Ok("/srv/data")),
            ("/srv//data/./x/", Ok("/srv/data/x")),
            ("/", Ok("/")),
            ("srv/data", Err("not an absolute path")),
            ("", Err("not an absolute path")),
            ("/srv/data/../../etc", Err("`..`")),
            ("/srv/..", Err("`..`")),
        ];
        for (input, expected) in cases {
            match (normalise(Path::new(input)), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, PathBuf::from(want), "{input}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        assert!(HostPathPolicy::new([PathBuf::from("relative")]).unwrap_err().contains(ALLOW_HOST_PATH_FLAG));
        assert!(HostPathPolicy::new([PathBuf::from("/a/../b")]).unwrap_err().contains("`..`"));
        assert_eq!(HostPathPolicy::new([PathBuf::new()]).unwrap(), HostPathPolicy::default());
    }

    #[test]
    fn only_paths_inside_the_allowlist_pass_with_links_resolved_first() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().canonicalize().expect("canonical temporary directory");
        let allowed = root.join("allowed");
        std::fs::create_dir_all(allowed.join("sub")).expect("allowed/sub");
        std::fs::create_dir_all(root.join("allowed-not")).expect("sibling");
        std::fs::create_dir_all(root.join("elsewhere")).expect("elsewhere");
        std::fs::write(allowed.join("sub/file"), "x").expect("a file");
        std::os::unix::fs::symlink("/", allowed.join("escape")).expect("link to /");
        std::os::unix::fs::symlink("../elsewhere", allowed.join("relative-escape")).expect("relative link out");
        std::os::unix::fs::symlink("sub", allowed.join("inner")).expect("link inside");
        std::os::unix::fs::symlink("/nonexistent-diplo-target/x", allowed.join("dangling")).expect("dangling link");
        std::os::unix::fs::symlink(&allowed, root.join("alias")).expect("alias of the allowed dir");
        let policy = HostPathPolicy::new([allowed.clone()]).expect("policy");
        let text = |path: PathBuf| path.display().to_string();

        let cases: Vec<(String, Result<(), &str>)> = vec![
            (text(allowed.clone()), Ok(())),
            (text(allowed.join("sub/file")), Ok(())),
            (text(allowed.join("not-yet/deeper")), Ok(())),
            (text(allowed.join("inner/file")), Ok(())),
            (text(root.join("alias/sub")), Ok(())),
            (format!("{}//sub/./file", allowed.display()), Ok(())),
            ("/".to_owned(), Err("outside the allowed host paths")),
            ("/var/run/docker.sock".to_owned(), Err("outside the allowed host paths")),
            (text(root.join("allowed-not")), Err("outside the allowed host paths")),
            (text(allowed.join("escape")), Err("resolves to /,")),
            (text(allowed.join("escape/etc")), Err("resolves to /etc,")),
            (text(allowed.join("relative-escape")), Err("outside the allowed host paths")),
            (text(allowed.join("dangling")), Err("cannot resolve")),
            (text(allowed.join("dangling/deeper")), Err("cannot resolve")),
            (format!("{}/../elsewhere", allowed.display()), Err("contains `..`")),
        ];
        for (source, expected) in cases {
            let got = policy.check(&source);
            match expected {
                Ok(()) => assert_eq!(got, Ok(()), "{source}"),
                Err(why) => {
                    let message = got.expect_err(&source);
                    assert!(message.contains(why), "{source}: {message}");
                    assert!(message.contains(&source) && message.contains(ALLOW_HOST_PATH_FLAG), "{message}");
                    assert!(message.contains(&allowed.display().to_string()), "the allowlist is named: {message}");
                }
            }
        }

        let none = HostPathPolicy::default();
        let message = none.check(&text(allowed.join("sub"))).expect_err("nothing is allowed by default");
        assert!(message.contains("allowed host paths: none") && message.contains(ALLOW_HOST_PATHS_ENV), "{message}");
    }
}
