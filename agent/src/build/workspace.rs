//! A build's workspace: a fresh private directory under the build directory, removed
//! when the build ends however it ends; the files inside it resolved without
//! following symbolic links; the build context packed as a tar that keeps symbolic
//! links as links.

use std::path::{Component, Path, PathBuf};

/// Names of workspace directories (so that a sweep removes only those).
const PREFIX: &str = "build-";

/// Largest build context sent to a builder.
pub const MAX_CONTEXT_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// A build's directory; removed when dropped.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    /// Creates `<build_dir>/build-<id>-<random>` (mode 0700) with `home/` inside.
    pub fn create(build_dir: &Path, build_id: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(build_dir)?;
        let suffix: u32 = rand::random();
        let root = build_dir.join(format!("{PREFIX}{build_id}-{suffix:08x}"));
        std::fs::DirBuilder::new().mode(0o700).create(&root)?;
        let workspace = Workspace { root };
        std::fs::DirBuilder::new().mode(0o700).create(workspace.home())?;
        Ok(workspace)
    }

    /// The workspace directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the repository is cloned (the build context).
    pub fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }

    /// `HOME` of the processes the build runs.
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(error) = remove_tree(&self.root) {
            tracing::warn!(workspace = %self.root.display(), %error, "cannot remove a build workspace");
        }
    }
}

/// Removes `path` and everything below it, making read-only directories writable
/// first (a build may leave some); a missing path is fine.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            use std::os::unix::fs::PermissionsExt;
            let mut stack = vec![path.to_path_buf()];
            while let Some(dir) = stack.pop() {
                if let Ok(meta) = std::fs::symlink_metadata(&dir)
                    && meta.is_dir()
                {
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                    if let Ok(entries) = std::fs::read_dir(&dir) {
                        stack.extend(entries.flatten().map(|entry| entry.path()));
                    }
                }
            }
            std::fs::remove_dir_all(path)
        }
    }
}

/// Removes what earlier runs left in `build_dir` (workspaces of builds cut short by a
/// crash or a restart); returns how many.
pub fn sweep(build_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(build_dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(PREFIX) {
            match remove_tree(&entry.path()) {
                Ok(()) => removed += 1,
                Err(error) => tracing::warn!(workspace = %entry.path().display(), %error, "cannot remove a leftover build workspace"),
            }
        }
    }
    removed
}

/// `relative` inside `root`, every component checked without following it: a
/// symbolic link anywhere on the way is refused (it could point out of the
/// workspace), and so are `..` and absolute paths. `what` names the field in errors.
pub fn resolve_inside(root: &Path, relative: &str, what: &str) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => continue,
            _ => return Err(format!("{what} {relative:?} must be a relative path inside the repository")),
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("{what} {relative:?} is (or goes through) a symbolic link, which a build does not follow"));
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("{what} {relative:?} does not exist in the repository"));
            }
            Err(error) => return Err(format!("{what} {relative:?}: {error}")),
        }
    }
    Ok(path)
}

/// A regular file at `relative` inside `root` (see [`resolve_inside`]).
pub fn resolve_file(root: &Path, relative: &str, what: &str) -> Result<PathBuf, String> {
    let path = resolve_inside(root, relative, what)?;
    let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{what} {relative:?}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} {relative:?} is not a regular file"));
    }
    Ok(path)
}

/// Total size of the regular files under `dir` (symbolic links not followed), failing
/// once it passes `limit`.
pub fn context_size(dir: &Path, limit: u64) -> Result<u64, String> {
    let mut total: u64 = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = std::fs::read_dir(&current).map_err(|e| format!("reading {}: {e}", current.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", current.display()))?;
            let meta = std::fs::symlink_metadata(entry.path()).map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
                if total > limit {
                    return Err(format!("the build context is larger than {} MiB", limit / (1024 * 1024)));
                }
            }
        }
    }
    Ok(total)
}

/// Packs `dir` into the tar file `out`: symbolic links are stored as links (never
/// followed, so nothing outside the workspace gets in), at most `limit` bytes of file
/// contents.
pub fn pack_context(dir: &Path, out: &Path, limit: u64) -> Result<u64, String> {
    let size = context_size(dir, limit)?;
    let file = std::fs::File::create(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", dir).map_err(|e| format!("packing the build context: {e}"))?;
    builder.into_inner().and_then(|mut w| std::io::Write::flush(&mut w)).map_err(|e| format!("packing the build context: {e}"))?;
    Ok(size)
}

/// The images a Dockerfile starts from (`FROM image [AS name]`), in order, without
/// `scratch`, earlier stages and references with variables (which only the builder can
/// expand).
pub fn base_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut words = words.skip_while(|w| w.starts_with("--"));
        let Some(image) = words.next() else { continue };
        if words.next().is_some_and(|w| w.eq_ignore_ascii_case("AS"))
            && let Some(stage) = words.next()
        {
            stages.push(stage.to_ascii_lowercase());
        }
        let known_stage = stages.iter().any(|s| s.eq_ignore_ascii_case(image) && !image.contains(['/', ':']));
        if image.eq_ignore_ascii_case("scratch") || image.contains('$') || known_stage || images.iter().any(|i| i == image) {
            continue;
        }
        images.push(image.to_owned());
    }
    images
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_resolved_without_following_links() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path();
        std::fs::create_dir(root.join("docker")).expect("dir");
        std::fs::write(root.join("docker/Dockerfile"), "FROM x").expect("file");
        std::fs::write(root.join("Dockerfile"), "FROM x").expect("file");
        std::os::unix::fs::symlink("/etc/passwd", root.join("evil")).expect("link");
        std::os::unix::fs::symlink(root.join("docker"), root.join("linkdir")).expect("link");

        assert_eq!(resolve_file(root, "Dockerfile", "dockerfile"), Ok(root.join("Dockerfile")));
        assert_eq!(resolve_file(root, "./docker/Dockerfile", "dockerfile"), Ok(root.join("docker/Dockerfile")));
        for (path, expected) in [
            ("evil", "symbolic link"),
            ("linkdir/Dockerfile", "symbolic link"),
            ("../x", "relative path"),
            ("/etc/passwd", "relative path"),
            ("missing", "does not exist"),
            ("docker", "not a regular file"),
        ] {
            let err = resolve_file(root, path, "dockerfile").unwrap_err();
            assert!(err.contains(expected), "{path}: {err}");
        }
    }

    #[test]
    fn the_context_tar_keeps_links_as_links_and_is_bounded() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).expect("dir");
        std::fs::write(ctx.join("app.txt"), "hello").expect("file");
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("passwd")).expect("link");
        let out = dir.path().join("ctx.tar");
        assert_eq!(pack_context(&ctx, &out, 1024), Ok(5));
        let mut archive = tar::Archive::new(std::fs::File::open(&out).expect("tar"));
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let path = entry.path().expect("path").display().to_string();
            if path.ends_with("passwd") {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
                assert_eq!(entry.size(), 0, "the link's target was not copied in");
            }
            seen.push(path);
        }
        assert!(seen.iter().any(|p| p.ends_with("app.txt")), "{seen:?}");
        let err = pack_context(&ctx, &out, 4).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn workspaces_are_removed_on_drop_and_swept() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ws = Workspace::create(dir.path(), "b1").expect("workspace");
        let root = ws.root().to_path_buf();
        std::fs::create_dir_all(ws.repo().join("ro")).expect("dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(ws.repo().join("ro"), std::fs::Permissions::from_mode(0o500)).expect("chmod");
        assert!(root.is_dir());
        drop(ws);
        assert!(!root.exists());
        let leftover = Workspace::create(dir.path(), "b2").expect("workspace");
        let kept = dir.path().join("not-a-workspace");
        std::fs::create_dir(&kept).expect("dir");
        std::mem::forget(leftover);
        assert_eq!(sweep(dir.path()), 1);
        assert!(kept.is_dir(), "only workspaces are swept");
    }

    #[test]
    fn base_images_skip_stages_scratch_and_variables() {
        let dockerfile = "ARG V=1\nFROM --platform=$BUILDPLATFORM golang:1.22 AS build\nRUN go build\nfrom build as test\n\
                          FROM 127.0.0.1:5000/diplo/busybox:latest\nCOPY --from=build /app /app\nFROM scratch\nFROM img:$V\n";
        assert_eq!(base_images(dockerfile), ["golang:1.22", "127.0.0.1:5000/diplo/busybox:latest"]);
    }
}
