//! Small file helpers shared by the binaries.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a file readable by its owner only (0600), replacing it atomically through a
/// temporary file in the same directory. The temporary file has a random name and is
/// created exclusively without following symbolic links (`O_CREAT|O_EXCL|O_NOFOLLOW`),
/// so neither a concurrent writer nor a link planted in the directory can redirect the
/// write; it is removed if anything fails.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} names no file", path.display())))?
        .to_string_lossy();
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        match create_private(&tmp) {
            Ok(file) => break (tmp, file),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
            Err(err) => return Err(err),
        }
    };
    let written = file.write_all(contents.as_bytes()).and_then(|()| file.sync_all()).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `path` as a new 0600 file: fails if anything (a file, a symbolic link,
/// dangling or not) is already there.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_owner_only_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret.pem");
        write_private(&path, "one").expect("write");
        write_private(&path, "two").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_symlink_planted_at_a_temporary_path_does_not_redirect_the_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("victim");
        let path = dir.path().join("secret.pem");
        // An attacker who can write into the directory plants links at every name a
        // temporary file of `secret.pem` could get, as far as they can guess it.
        for name in ["secret.tmp", "secret.pem.tmp", ".secret.pem.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).expect("symlink");
        }
        write_private(&path, "secret").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read victim"), "untouched");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "secret");
        assert!(!std::fs::symlink_metadata(&path).expect("meta").file_type().is_symlink());
    }

    #[test]
    fn a_temporary_file_is_never_opened_through_a_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("victim");
        for target in [victim.clone(), dir.path().join("dangling")] {
            let link = dir.path().join("planted.tmp");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).expect("symlink");
            assert!(create_private(&link).is_err(), "opened through a link to {}", target.display());
            assert!(!dir.path().join("dangling").exists(), "created the target of a dangling link");
        }
        assert_eq!(std::fs::read_to_string(&victim).expect("read victim"), "untouched");
    }

    #[test]
    fn concurrent_writers_of_one_file_do_not_share_a_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || write_private(&path, &format!("{i}").repeat(100_000)))
            })
            .collect();
        for writer in writers {
            writer.join().expect("thread").expect("write");
        }
        // Whoever won, the file is one writer's content, whole.
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 100_000);
        assert!(text.chars().all(|c| c == text.chars().next().unwrap_or('x')), "mixed contents");
    }
}
