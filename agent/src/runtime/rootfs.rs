//! A container's root filesystem seen from the host, confined to it.
//!
//! Image content is hostile input: a symlink in an image (`/etc/passwd -> /etc/shadow`,
//! `/etc/hosts -> /`, `/data -> ../../..`) must mean what it means inside the container,
//! never a path of the host. Every path the drivers resolve, read or write inside a root
//! filesystem goes through this module: components are looked up one by one with
//! `lstat`, symlinks are resolved against the container's root (absolute ones restart
//! there, `..` stops there), files are opened with `O_NOFOLLOW | O_NONBLOCK`, only
//! regular files are read or written, and reads are capped.
//!
//! A root filesystem is one directory (LXC) or the directories of an overlay, top layer
//! first (containerd's snapshots), where the topmost layer holding an entry decides what
//! it is and an overlay whiteout (a 0/0 character device) hides what lies below.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// The most the drivers read of an image file (`/etc/passwd`, `/etc/group`).
pub const MAX_IMAGE_FILE: u64 = 1 << 20;

/// How many symlinks one resolution may follow (Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// What the topmost layer holding an entry says it is.
#[derive(Debug)]
enum Entry {
    Missing,
    Dir,
    Symlink(PathBuf),
    /// A regular file, device, FIFO or socket, in this layer.
    Other(PathBuf, std::fs::Metadata),
}

/// `layer/prefix...` when every component of `prefix` is a real directory (no symlink)
/// in `layer`; `None` when the layer holds nothing there.
fn real_dir(layer: &Path, prefix: &[OsString]) -> io::Result<Option<PathBuf>> {
    let mut dir = layer.to_path_buf();
    for part in prefix {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(metadata) if metadata.file_type().is_dir() => {}
            Ok(_) => return Ok(None),
            Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(None),
            Err(error) => return Err(error),
        }
    }
    Ok(Some(dir))
}

/// An overlay whiteout: a character device with device number 0/0.
fn is_whiteout(metadata: &std::fs::Metadata) -> bool {
    metadata.file_type().is_char_device() && metadata.rdev() == 0
}

/// Looks `name` up in the directory `prefix` of the union of `layers`.
fn lookup(layers: &[PathBuf], prefix: &[OsString], name: &OsStr) -> io::Result<Entry> {
    for layer in layers {
        let Some(dir) = real_dir(layer, prefix)? else { continue };
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if layers.len() > 1 && is_whiteout(&metadata) => return Ok(Entry::Missing),
            Ok(metadata) if metadata.file_type().is_symlink() => return Ok(Entry::Symlink(std::fs::read_link(&path)?)),
            Ok(metadata) if metadata.file_type().is_dir() => return Ok(Entry::Dir),
            Ok(metadata) => return Ok(Entry::Other(path, metadata)),
            Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Entry::Missing)
}

fn component_name(component: Component<'_>) -> Option<OsString> {
    match component {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some(OsStr::new("..").to_owned()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    }
}

/// `path` (a path inside the container, with or without its leading `/`) resolved the
/// way the container will see it: symlinks are followed but never leave the root, `..`
/// stops at the root. Components that do not exist yet are kept as they are. The result
/// is the list of components below the root, none of them a symlink.
pub fn resolve(layers: &[PathBuf], path: &str) -> Result<Vec<OsString>, String> {
    let shown = format!("/{}", path.trim_start_matches('/'));
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = Path::new(path).components().filter_map(component_name).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        match lookup(layers, &resolved, &part).map_err(|e| format!("{shown}: {e}"))? {
            Entry::Symlink(link) => {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(format!("{shown}: too many levels of symbolic links"));
                }
                if link.is_absolute() {
                    resolved.clear();
                }
                let mut next: VecDeque<OsString> = link.components().filter_map(component_name).collect();
                next.extend(pending);
                pending = next;
            }
            Entry::Other(..) if !pending.is_empty() => {
                let mut at = resolved.clone();
                at.push(part);
                return Err(format!("{shown}: {} is not a directory", show(&at)));
            }
            Entry::Missing | Entry::Dir | Entry::Other(..) => resolved.push(part),
        }
    }
    Ok(resolved)
}

/// Components below the root as a container path (`/etc/passwd`).
pub fn show(components: &[OsString]) -> String {
    let parts: Vec<String> = components.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    format!("/{}", parts.join("/"))
}

/// `O_NOFOLLOW | O_NONBLOCK`: never through a symlink, never blocked by a FIFO.
fn safe_flags() -> i32 {
    libc::O_NOFOLLOW | libc::O_NONBLOCK
}

/// The contents of the file at `path` inside the container (see [`resolve`]), `None`
/// when there is none. Refuses anything but a regular file of at most `limit` bytes,
/// naming the path. Blocking: call it from a blocking thread.
pub fn read_file(layers: &[PathBuf], path: &str, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let resolved = resolve(layers, path)?;
    let Some((name, parent)) = resolved.split_last() else {
        return Err(format!("{path} is the root directory, not a file"));
    };
    let shown = show(&resolved);
    let (file_path, metadata) = match lookup(layers, parent, name).map_err(|e| format!("{shown}: {e}"))? {
        Entry::Missing => return Ok(None),
        Entry::Other(file_path, metadata) => (file_path, metadata),
        Entry::Dir => return Err(format!("{shown} in the image is a directory, not a regular file")),
        Entry::Symlink(_) => return Err(format!("{shown} in the image changed while it was read")),
    };
    if !metadata.file_type().is_file() {
        return Err(format!("{shown} in the image is not a regular file ({})", describe_type(&metadata)));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(safe_flags())
        .open(&file_path)
        .map_err(|e| format!("cannot open {shown} of the image: {e}"))?;
    let opened = file.metadata().map_err(|e| format!("cannot read {shown} of the image: {e}"))?;
    if !opened.file_type().is_file() || opened.dev() != metadata.dev() || opened.ino() != metadata.ino() {
        return Err(format!("{shown} in the image changed while it was read"));
    }
    if opened.len() > limit {
        return Err(format!("{shown} in the image is larger than {limit} bytes"));
    }
    let mut contents = Vec::new();
    file.take(limit + 1).read_to_end(&mut contents).map_err(|e| format!("cannot read {shown} of the image: {e}"))?;
    if contents.len() as u64 > limit {
        return Err(format!("{shown} in the image is larger than {limit} bytes"));
    }
    Ok(Some(contents))
}

/// Writes `contents` to the file at `path` inside the single-directory root filesystem
/// `root` (see [`resolve`]), creating missing directories and the file. An existing
/// entry must be a regular file; it is replaced in place.
pub fn write_file(root: &Path, path: &str, contents: &[u8]) -> Result<(), String> {
    let layers = [root.to_path_buf()];
    let resolved = resolve(&layers, path)?;
    let Some((name, parent)) = resolved.split_last() else {
        return Err(format!("{path} is the root directory, not a file"));
    };
    let shown = show(&resolved);
    let dir = parent.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {} in the root filesystem: {e}", show(parent)))?;
    // The parent was created, or resolved to real directories: check again after creating.
    if real_dir(root, parent).map_err(|e| format!("{shown}: {e}"))?.is_none() {
        return Err(format!("{} in the root filesystem is not a directory", show(parent)));
    }
    let file_path = dir.join(name);
    if let Ok(metadata) = std::fs::symlink_metadata(&file_path)
        && !metadata.file_type().is_file()
    {
        return Err(format!("{shown} in the image is not a regular file ({})", describe_type(&metadata)));
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(safe_flags())
        .open(&file_path)
        .map_err(|e| format!("cannot open {shown} in the root filesystem: {e}"))?;
    if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
        return Err(format!("{shown} in the image is not a regular file"));
    }
    file.set_len(0).and_then(|()| file.write_all(contents)).map_err(|e| format!("cannot write {shown} in the root filesystem: {e}"))
}

fn describe_type(metadata: &std::fs::Metadata) -> &'static str {
    let kind = metadata.file_type();
    if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_symlink() {
        "a symlink"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "a regular file"
    }
}

/// PID 1's working directory from an image's `WorkingDir`: `/` when unset or relative;
/// refused when it holds a control character, a `..` component or lies under `/proc`
/// (where a runtime's leaked descriptors, `/proc/self/fd/N`, lead to the host).
pub fn working_dir(image_value: &str) -> Result<String, String> {
    if !image_value.starts_with('/') {
        return Ok("/".to_owned());
    }
    if image_value.chars().any(char::is_control) {
        return Err(format!("WorkingDir {image_value:?} holds a control character"));
    }
    let parts: Vec<Component<'_>> = Path::new(image_value).components().collect();
    if parts.contains(&Component::ParentDir) {
        return Err(format!("WorkingDir {image_value:?} holds .."));
    }
    if parts.iter().find(|c| matches!(c, Component::Normal(_))) == Some(&Component::Normal(OsStr::new("proc"))) {
        return Err(format!("WorkingDir {image_value:?} lies under /proc"));
    }
    Ok(image_value.to_owned())
}

/// The process identity of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// Resolves an image's `User` (`uid`, `uid:gid`, `name`, `name:group`) against the root
/// filesystem's `/etc/passwd` and `/etc/group`, read with [`read_file`] (so never a file
/// of the host, at most [`MAX_IMAGE_FILE`] bytes each). Only read when `user` needs them.
/// Blocking: call it from a blocking thread.
pub fn image_user(layers: &[PathBuf], user: &str) -> Result<User, String> {
    if user.trim().is_empty() {
        return Ok(User::default());
    }
    let text = |path: &str| -> Result<Option<String>, String> {
        Ok(read_file(layers, path, MAX_IMAGE_FILE)?.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    };
    let passwd = text("/etc/passwd")?;
    let group = text("/etc/group")?;
    resolve_user(user, passwd.as_deref(), group.as_deref())
}

/// Resolves an image's `User` (`uid`, `uid:gid`, `name`, `name:group`) against the
/// image's `/etc/passwd` and `/etc/group` when given.
pub fn resolve_user(user: &str, passwd: Option<&str>, group: Option<&str>) -> Result<User, String> {
    let user = user.trim();
    if user.is_empty() {
        return Ok(User::default());
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd_entries: Vec<Vec<&str>> =
        passwd.unwrap_or_default().lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 4).collect();
    let group_entries: Vec<Vec<&str>> =
        group.unwrap_or_default().lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 3).collect();
    let (uid, name, passwd_gid) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let entry = passwd_entries.iter().find(|f| f[2].parse::<u32>() == Ok(uid));
            (uid, entry.map(|f| f[0].to_owned()), entry.and_then(|f| f[3].parse::<u32>().ok()))
        }
        Err(_) => {
            let entry = passwd_entries.iter().find(|f| f[0] == user_part).ok_or_else(|| {
                if user_part == "root" { String::new() } else { format!("no user {user_part:?} in the image's /etc/passwd") }
            });
            match entry {
                Ok(f) => (
                    f[2].parse::<u32>().map_err(|_| format!("bad uid for {user_part}"))?,
                    Some(user_part.to_owned()),
                    f[3].parse::<u32>().ok(),
                ),
                Err(e) if e.is_empty() => (0, Some("root".to_owned()), Some(0)),
                Err(e) => return Err(e),
            }
        }
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| format!("no group {g:?} in the image's /etc/group"))?,
        },
        None => passwd_gid.unwrap_or(0),
    };
    let mut additional_gids = Vec::new();
    if let Some(name) = &name {
        for f in &group_entries {
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(g) = f[2].parse::<u32>()
                && g != gid
                && !additional_gids.contains(&g)
            {
                additional_gids.push(g);
            }
        }
    }
    Ok(User { uid, gid, additional_gids })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layers(dirs: &[&Path]) -> Vec<PathBuf> {
        dirs.iter().map(|d| d.to_path_buf()).collect()
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::create_dir_all(root.join("usr/share")).expect("mkdir");
        symlink("/etc/shadow", root.join("etc/absolute")).expect("symlink");
        symlink("../../../../../../etc", root.join("usr/share/up")).expect("symlink");
        symlink("loop", root.join("loop")).expect("symlink");
        std::fs::write(root.join("file"), "x").expect("write");
        let root = layers(&[&root]);
        let names = |v: Vec<OsString>| show(&v);
        assert_eq!(resolve(&root, "/etc/absolute").map(names).as_deref(), Ok("/etc/shadow"));
        assert_eq!(resolve(&root, "usr/share/up/passwd").map(names).as_deref(), Ok("/etc/passwd"));
        assert_eq!(resolve(&root, "/a/../../b").map(names).as_deref(), Ok("/b"));
        assert!(resolve(&root, "/loop").expect_err("loop").contains("too many levels"));
        assert!(resolve(&root, "/file/x").expect_err("not a dir").contains("/file is not a directory"));
        // A symlink whose target holds a newline resolves to a path holding it.
        symlink("x\nlxc.hook.pre-start = /bin/true", root[0].join("data")).expect("symlink");
        assert_eq!(resolve(&root, "/data").map(names).as_deref(), Ok("/x\nlxc.hook.pre-start = /bin/true"));
    }

    #[test]
    fn reads_never_leave_the_root_nor_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let host = dir.path().join("host-secret");
        std::fs::write(&host, "secret:x:0:0::/:/bin/sh\n").expect("write");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("write");
        // Absolute link to a host file: resolved inside the root, where it is missing.
        symlink(&host, root.join("etc/passwd")).expect("symlink");
        symlink("/dev/zero", root.join("etc/zero")).expect("symlink");
        let fifo = root.join("etc/fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        std::fs::write(root.join("etc/big"), vec![b'x'; 2048]).expect("write");
        let root = layers(&[&root]);
        assert_eq!(read_file(&root, "/etc/passwd", MAX_IMAGE_FILE), Ok(None));
        assert_eq!(read_file(&root, "/etc/group", MAX_IMAGE_FILE), Ok(Some(b"root:x:0:\n".to_vec())));
        assert_eq!(read_file(&root, "/etc/zero", MAX_IMAGE_FILE), Ok(None), "/dev/zero of the root does not exist");
        let error = read_file(&root, "/etc/fifo", MAX_IMAGE_FILE).expect_err("fifo");
        assert!(error.contains("/etc/fifo") && error.contains("FIFO"), "{error}");
        let error = read_file(&root, "/etc/big", 1024).expect_err("too big");
        assert!(error.contains("larger than 1024 bytes"), "{error}");
        assert!(read_file(&root, "/etc", MAX_IMAGE_FILE).expect_err("dir").contains("directory"));
        // The user only resolves from the host's file: not found here.
        let error = image_user(&root, "secret").expect_err("host user");
        assert!(error.contains("no user \"secret\""), "{error}");
        // A device node in the image is refused too.
        std::fs::create_dir_all(root[0].join("dev")).expect("mkdir");
        if std::process::Command::new("mknod").arg(root[0].join("dev/zero")).args(["c", "1", "5"]).status().is_ok_and(|s| s.success()) {
            let error = read_file(&root, "/etc/zero", MAX_IMAGE_FILE).expect_err("device");
            assert!(error.contains("character device"), "{error}");
        }
    }

    #[test]
    fn layers_are_looked_up_top_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (upper, lower) = (dir.path().join("upper"), dir.path().join("lower"));
        std::fs::create_dir_all(upper.join("etc")).expect("mkdir");
        std::fs::create_dir_all(lower.join("etc")).expect("mkdir");
        std::fs::create_dir_all(lower.join("real")).expect("mkdir");
        std::fs::write(lower.join("etc/passwd"), "lower\n").expect("write");
        std::fs::write(lower.join("real/group"), "from-link\n").expect("write");
        // The upper layer's symlink points into the lower layer's directory.
        symlink("/real/group", upper.join("etc/group")).expect("symlink");
        let both = layers(&[&upper, &lower]);
        assert_eq!(read_file(&both, "/etc/passwd", MAX_IMAGE_FILE), Ok(Some(b"lower\n".to_vec())));
        assert_eq!(read_file(&both, "/etc/group", MAX_IMAGE_FILE), Ok(Some(b"from-link\n".to_vec())));
        std::fs::write(upper.join("etc/passwd"), "upper\n").expect("write");
        assert_eq!(read_file(&both, "/etc/passwd", MAX_IMAGE_FILE), Ok(Some(b"upper\n".to_vec())));
        // A lower layer whose /etc is a symlink to the host is never followed.
        let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
        std::fs::create_dir_all(&top).expect("mkdir");
        std::fs::create_dir_all(&bottom).expect("mkdir");
        symlink(dir.path().join("lower/etc"), bottom.join("etc")).expect("symlink");
        std::fs::create_dir_all(top.join("etc")).expect("mkdir");
        assert_eq!(read_file(&layers(&[&top, &bottom]), "/etc/passwd", MAX_IMAGE_FILE), Ok(None));
    }

    #[test]
    fn writes_stay_in_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "host file\n").expect("write");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        symlink(&victim, root.join("etc/hosts")).expect("symlink");
        symlink(dir.path(), root.join("etc/up")).expect("symlink");
        write_file(&root, "/etc/hosts", b"127.0.0.1 localhost\n").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "host file\n");
        let inside = root.join(victim.strip_prefix("/").expect("absolute"));
        assert_eq!(std::fs::read_to_string(inside).expect("read"), "127.0.0.1 localhost\n");
        write_file(&root, "/etc/up/victim", b"x").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "host file\n");
        write_file(&root, "/etc/hostname", b"one\n").expect("write");
        write_file(&root, "/etc/hostname", b"t\n").expect("write");
        assert_eq!(std::fs::read_to_string(root.join("etc/hostname")).expect("read"), "t\n");
        let fifo = root.join("etc/fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
        assert!(write_file(&root, "/etc/fifo", b"x").expect_err("fifo").contains("FIFO"));
    }

    #[test]
    fn working_directories_are_checked() {
        assert_eq!(working_dir("").as_deref(), Ok("/"));
        assert_eq!(working_dir("app").as_deref(), Ok("/"));
        assert_eq!(working_dir("/srv/my app").as_deref(), Ok("/srv/my app"));
        assert_eq!(working_dir("/processes").as_deref(), Ok("/processes"));
        for bad in ["/proc/self/fd/7", "//proc/1/cwd", "/./proc", "/srv/../proc/self/cwd", "/\nlxc.hook.pre-start = /bin/true", "/a\rb"] {
            assert!(working_dir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn users_resolve() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n";
        let group = "root:x:0:\nwww:x:33:\nextra:x:50:www,other\n";
        assert_eq!(resolve_user("", None, None).unwrap(), User::default());
        assert_eq!(resolve_user("1000:1000", None, None).unwrap(), User { uid: 1000, gid: 1000, additional_gids: vec![] });
        assert_eq!(resolve_user("www", Some(passwd), Some(group)).unwrap(), User { uid: 33, gid: 33, additional_gids: vec![50] });
        assert_eq!(resolve_user("33:extra", Some(passwd), Some(group)).unwrap().gid, 50);
        assert_eq!(resolve_user("root", None, None).unwrap(), User::default());
        assert!(resolve_user("nobody", Some(passwd), Some(group)).is_err());
    }
}
