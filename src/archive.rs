//! Copying files into and out of containers as tar archives: the rules every door
//! (REST, gRPC, the agent) applies before a runtime sees a path or an archive.
//!
//! The archive travels in one command and one result over the agent's session, so it is
//! bounded by [`MAX_ARCHIVE_BYTES`] both ways (well under the session's message limit).
//! Archives given to copy in may hold files, directories and links, each named by a
//! relative path without `..`: an absolute member or one that climbs out is refused
//! before anything is sent. Symbolic links are allowed whatever they point at: they are
//! resolved by the runtime inside the container (Docker and Podman extract through their
//! archive API, containerd and LXC run `tar` inside the container), never on the host.

use std::path::{Component, Path};

/// The largest archive copied into or out of a container (4 MiB), either way.
pub const MAX_ARCHIVE_BYTES: usize = 4 * 1024 * 1024;

/// The longest path inside a container a copy may name, in bytes.
pub const MAX_CONTAINER_PATH_BYTES: usize = 4096;

/// Checks a path inside a container: absolute, without NUL, `.` or `..` components, at
/// most [`MAX_CONTAINER_PATH_BYTES`] long. The message says what is wrong.
pub fn check_container_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a path inside the container is required".to_owned());
    }
    if path.len() > MAX_CONTAINER_PATH_BYTES {
        return Err(format!("the path is {} bytes long; at most {MAX_CONTAINER_PATH_BYTES} are allowed", path.len()));
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".to_owned());
    }
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not absolute (it must start with /)"));
    }
    if path.split('/').any(|part| part == ".." || part == ".") {
        return Err(format!("{path:?} has a `.` or `..` component"));
    }
    Ok(())
}

/// `path` (checked by [`check_container_path`]) as the directory to archive from and the
/// name to archive: `/etc/hosts` → (`/etc`, `hosts`), `/` → (`/`, `.`). Trailing slashes
/// are ignored.
pub fn split_container_path(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        None => ("/".to_owned(), ".".to_owned()),
        Some((_, "")) => ("/".to_owned(), ".".to_owned()),
        Some(("", name)) => ("/".to_owned(), name.to_owned()),
        Some((parent, name)) => (parent.to_owned(), name.to_owned()),
    }
}

/// Refuses an archive above [`MAX_ARCHIVE_BYTES`], with a message naming both sizes.
pub fn check_archive_size(len: usize) -> Result<(), String> {
    if len > MAX_ARCHIVE_BYTES {
        return Err(format!("the archive is {len} bytes; at most {MAX_ARCHIVE_BYTES} bytes ({} MiB) are allowed", MAX_ARCHIVE_BYTES >> 20));
    }
    Ok(())
}

/// Checks an archive to copy into a container: within [`MAX_ARCHIVE_BYTES`], a tar
/// (ustar, GNU or PAX headers) whose every member and hard link target is a relative
/// path without `..`. Returns the number of members.
pub fn check_archive(archive: &[u8]) -> Result<usize, String> {
    check_archive_size(archive.len())?;
    if archive.is_empty() {
        return Err("the archive is empty (a tar is expected)".to_owned());
    }
    let mut reader = tar::Archive::new(archive);
    let entries = reader.entries().map_err(|e| format!("not a tar archive: {e}"))?;
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        let path = entry.path().map_err(|e| format!("member {count}: unreadable name: {e}"))?;
        check_member(&path).map_err(|message| format!("member {:?}: {message}", path.display()))?;
        if entry.header().entry_type().is_hard_link()
            && let Some(target) = entry.link_name().map_err(|e| format!("member {:?}: unreadable link: {e}", path.display()))?
        {
            check_member(&target).map_err(|message| format!("hard link {:?} → {:?}: {message}", path.display(), target.display()))?;
        }
        count += 1;
    }
    if count == 0 {
        return Err("the archive holds no member (a tar is expected)".to_owned());
    }
    Ok(count)
}

fn check_member(path: &Path) -> Result<(), String> {
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return Err("absolute member paths are not allowed".to_owned()),
            Component::ParentDir => return Err("`..` in member paths is not allowed".to_owned()),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with one regular file per name (names written raw into the header, as a
    /// hostile client would).
    pub(crate) fn tar_of(members: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, link) in members {
            let mut header = tar::Header::new_gnu();
            let data: &[u8] = if *kind == tar::EntryType::Regular { b"data" } else { b"" };
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            if !link.is_empty() {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append(&header, data).expect("append");
        }
        builder.into_inner().expect("tar")
    }

    #[test]
    fn container_paths_are_absolute_short_and_plain() {
        for good in ["/", "/etc/hosts", "/tmp/dir/", "/a b/c"] {
            assert_eq!(check_container_path(good), Ok(()), "{good}");
        }
        let long = format!("/{}", "a".repeat(MAX_CONTAINER_PATH_BYTES));
        for (bad, says) in [
            ("", "required"),
            ("etc/hosts", "not absolute"),
            ("/etc/../root", ".."),
            ("/etc/./x", "`.`"),
            ("/etc/\0x", "NUL"),
            (long.as_str(), "4096"),
        ] {
            let message = check_container_path(bad).expect_err(bad);
            assert!(message.contains(says), "{bad:?}: {message}");
        }
    }

    #[test]
    fn paths_split_into_directory_and_name() {
        for (path, parent, name) in
            [("/", "/", "."), ("/etc", "/", "etc"), ("/etc/hosts", "/etc", "hosts"), ("/tmp/dir/", "/tmp", "dir"), ("//x", "/", "x")]
        {
            assert_eq!(split_container_path(path), (parent.to_owned(), name.to_owned()), "{path}");
        }
    }

    #[test]
    fn archives_with_relative_members_pass_and_hostile_ones_are_refused() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let good =
            tar_of(&[("dir/", Directory, ""), ("dir/file", Regular, ""), ("link", Symlink, "/etc/passwd"), ("hard", Link, "dir/file")]);
        assert_eq!(check_archive(&good), Ok(4));
        for (members, says) in [
            (vec![("../../x", Regular, "")], "`..`"),
            (vec![("a/../../x", Regular, "")], "`..`"),
            (vec![("/etc/x", Regular, "")], "absolute"),
            (vec![("ok", Regular, ""), ("hard", Link, "/etc/shadow")], "hard link"),
            (vec![("hard", Link, "../outside")], "`..`"),
        ] {
            let message = check_archive(&tar_of(&members)).expect_err(&format!("{members:?}"));
            assert!(message.contains(says), "{members:?}: {message}");
        }
        assert!(check_archive(b"").expect_err("empty").contains("empty"));
        assert!(check_archive(&[0u8; 1024]).expect_err("no member").contains("no member"));
        assert!(check_archive(&[b'x'; 2048]).expect_err("garbage").contains("not a tar"));
        let message = check_archive(&vec![0u8; MAX_ARCHIVE_BYTES + 1]).expect_err("oversize");
        assert!(message.contains(&(MAX_ARCHIVE_BYTES + 1).to_string()), "{message}");
    }
}
