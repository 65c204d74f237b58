//! The LXC driver's image cache: one OCI layout directory per image reference, filled by
//! `skopeo copy`, unpacked into a container's rootfs by `umoci raw unpack`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::runtime::{RuntimeError, RuntimeResult};

/// The tag every cached layout stores its one image under.
pub(super) const CACHE_TAG: &str = "latest";

/// `busybox` → `busybox:latest`; references with a tag or digest are kept.
pub(super) fn normalize_reference(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') { reference.to_owned() } else { format!("{reference}:latest") }
}

/// The registry part (`127.0.0.1:5000`) of a reference, `None` for Docker Hub short names.
pub(super) fn registry_of(reference: &str) -> Option<&str> {
    let (first, _) = reference.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

/// The `docker://` source skopeo is given for `reference`. skopeo refuses a reference
/// with both a tag and a digest (`repo:tag@sha256:…`, how built images are deployed), so
/// the digest alone names the image then: it is what the tag pointed to when recorded.
pub(super) fn skopeo_source(reference: &str) -> String {
    match reference.split_once('@') {
        Some((name, digest)) => {
            let last_slash = name.rfind('/').map_or(0, |i| i + 1);
            let name = match name[last_slash..].rfind(':') {
                Some(colon) => &name[..last_slash + colon],
                None => name,
            };
            format!("docker://{name}@{digest}")
        }
        None => format!("docker://{reference}"),
    }
}

/// The cache directory name of a reference: readable and unique
/// (`127.0.0.1_5000_diplo_busybox_latest-3f2a…`).
pub(super) fn cache_dir_name(reference: &str) -> String {
    let normalized = normalize_reference(reference);
    let readable: String =
        normalized.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') { c } else { '_' }).take(80).collect();
    let digest = hex::encode(Sha256::digest(normalized.as_bytes()));
    format!("{readable}-{}", &digest[..16])
}

/// A containers-auth.json (`{"auths": {registry: {"auth": base64(user:password)}}}`)
/// for skopeo's `--src-authfile`: written 0600 under a fresh name, removed when dropped.
pub(super) struct AuthFile {
    path: PathBuf,
}

impl AuthFile {
    /// Writes the file for `credential` of `registry` in `dir`.
    pub(super) fn write(dir: &Path, registry: &str, credential: &diplo_api::registry::RegistryCredential) -> RuntimeResult<Self> {
        let failed = |message: String| RuntimeError::Failed { runtime: diplo_api::runtime::Runtime::Lxc, message };
        use base64::Engine as _;
        std::fs::create_dir_all(dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(format!(".auth-{}-{:016x}.json", std::process::id(), rand::random::<u64>()));
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", credential.username, credential.password));
        let text = serde_json::json!({ "auths": { registry: { "auth": auth } } }).to_string();
        diplo_api::files::write_private(&path, &text)
            .map_err(|e| failed(format!("cannot write the registry credential file {}: {e}", path.display())))?;
        Ok(AuthFile { path })
    }

    /// Where it is.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AuthFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether skopeo's error text means the image does not exist (as opposed to the
/// registry being unreachable or refusing us).
pub(super) fn is_not_found(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    [
        "manifest unknown",
        "name unknown",
        "repository name not known",
        "not found",
        "status code 404",
        "404 (not found)",
        "does not exist",
        "no such image",
        "requested access to the resource is denied",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

/// The `msg="..."` of skopeo's `level=fatal` line, or its last line.
pub(super) fn skopeo_message(stderr: &str) -> String {
    let line = stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    if let Some(at) = line.find("msg=\"") {
        let rest = &line[at + 5..];
        let end = rest.rfind('"').unwrap_or(rest.len());
        return rest[..end].replace("\\\"", "\"");
    }
    line.to_owned()
}

/// Whether `layout` holds a complete OCI layout (written last by skopeo: `index.json`).
pub(super) fn layout_present(layout: &Path) -> bool {
    layout.join("index.json").is_file() && layout.join("oci-layout").is_file()
}

/// The command actually run, by `docker run`'s rules
/// ([`diplo_api::options::process_argv`]): the spec's entrypoint and command over the
/// image's `Entrypoint` and `Cmd`; `/bin/sh` when that is empty (what LXC's oci
/// template falls back to).
pub(super) fn resolve_command(layout: &Path, spec: &diplo_api::container::ContainerSpec) -> Result<Vec<String>, String> {
    let config = image_config(layout)?;
    let strings = |key: &str| -> Vec<String> {
        config
            .get("config")
            .and_then(|c| c.get(key))
            .and_then(serde_json::Value::as_array)
            .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let mut argv = diplo_api::options::process_argv(spec, &strings("Entrypoint"), &strings("Cmd"));
    if argv.is_empty() {
        argv.push("/bin/sh".to_owned());
    }
    Ok(argv)
}

/// What an image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RunSettings {
    /// `Env` (`NAME=value` entries).
    pub env: Vec<String>,
    /// `User` (`uid`, `name`, `uid:gid`, ...; empty for root).
    pub user: String,
    /// `WorkingDir` (empty when unset).
    pub working_dir: String,
}

/// The [`RunSettings`] of the image in `layout`.
pub(super) fn run_settings(layout: &Path) -> Result<RunSettings, String> {
    let config = image_config(layout)?;
    let text = |key: &str| config.get("config").and_then(|c| c.get(key)).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let env = config
        .get("config")
        .and_then(|c| c.get("Env"))
        .and_then(serde_json::Value::as_array)
        .map(|items| items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    Ok(RunSettings { env, user: text("User"), working_dir: text("WorkingDir") })
}

/// The container's `/etc/hosts`: loopback names, its own name, then `extra` (the spec's
/// extra hosts entries as `/etc/hosts` lines).
pub(super) fn hosts_file(name: &str, extra: &str) -> String {
    format!(
        "127.0.0.1   localhost\n127.0.1.1   {name}\n::1     localhost ip6-localhost ip6-loopback\nfe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n{extra}"
    )
}

fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    let (algorithm, hex) = digest.split_once(':').ok_or_else(|| format!("bad digest {digest:?}"))?;
    if !algorithm.chars().all(|c| c.is_ascii_alphanumeric()) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("bad digest {digest:?}"));
    }
    Ok(layout.join("blobs").join(algorithm).join(hex))
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The image config JSON of the (first, or `latest`-tagged) manifest in `layout`.
fn image_config(layout: &Path) -> Result<serde_json::Value, String> {
    let index = read_json(&layout.join("index.json"))?;
    let manifests = index.get("manifests").and_then(serde_json::Value::as_array).ok_or("index.json lists no manifests")?;
    let tagged = manifests
        .iter()
        .find(|m| m.pointer("/annotations/org.opencontainers.image.ref.name").and_then(serde_json::Value::as_str) == Some(CACHE_TAG));
    let entry = tagged.or_else(|| manifests.first()).ok_or("index.json lists no manifests")?;
    let digest = entry.get("digest").and_then(serde_json::Value::as_str).ok_or("manifest entry without digest")?;
    let mut manifest = read_json(&blob_path(layout, digest)?)?;
    // A multi-platform index: take the linux/amd64 (or first) manifest.
    if let Some(list) = manifest.get("manifests").and_then(serde_json::Value::as_array) {
        let pick = list
            .iter()
            .find(|m| {
                m.pointer("/platform/os").and_then(serde_json::Value::as_str) == Some("linux")
                    && m.pointer("/platform/architecture").and_then(serde_json::Value::as_str) == Some(host_architecture())
            })
            .or_else(|| list.first())
            .ok_or("image index lists no manifests")?;
        let digest = pick.get("digest").and_then(serde_json::Value::as_str).ok_or("manifest entry without digest")?;
        manifest = read_json(&blob_path(layout, digest)?)?;
    }
    let config_digest = manifest.pointer("/config/digest").and_then(serde_json::Value::as_str).ok_or("manifest without config")?;
    read_json(&blob_path(layout, config_digest)?)
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes an OCI layout (tag [`CACHE_TAG`]) into the empty or missing directory `layout`
/// for a root filesystem tarball (uncompressed; what `docker import` takes): its one
/// layer, plus a layer holding an empty `/etc` (for `/etc/hostname` and `/etc/hosts`).
pub(super) fn write_rootfs_layout(layout: &Path, rootfs_tar: &Path) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let blobs = layout.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |data: &[u8]| -> std::io::Result<(String, u64)> {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data)?;
        Ok((format!("sha256:{hex}"), data.len() as u64))
    };
    // The tarball, hashed while copied.
    let (layer_digest, layer_size) = {
        let mut source = std::fs::File::open(rootfs_tar)?;
        let partial = blobs.join(".layer.partial");
        let mut target = std::fs::File::create(&partial)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let read = source.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            target.write_all(&buffer[..read])?;
            size += read as u64;
        }
        target.sync_all()?;
        let hex = hex::encode(hasher.finalize());
        std::fs::rename(&partial, blobs.join(&hex))?;
        (format!("sha256:{hex}"), size)
    };
    let (etc_digest, etc_size) = put(&directory_tar("etc"))?;
    let architecture = host_architecture();
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest, etc_digest] },
        "history": [{ "created_by": "diplo import (root filesystem)" }, { "created_by": "diplo import: /etc" }],
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes())?;
    let layer = |digest: &str, size: u64| serde_json::json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [layer(&layer_digest, layer_size), layer(&etc_digest, etc_size)],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": CACHE_TAG },
        }],
    });
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    std::fs::write(layout.join("index.json"), index.to_string())
}

/// A tar archive holding one empty directory `name/` (root, 0755).
fn directory_tar(name: &str) -> Vec<u8> {
    let mut header = [0u8; 512];
    let mut field = |offset: usize, value: &[u8]| header[offset..offset + value.len()].copy_from_slice(value);
    field(0, format!("{name}/").as_bytes());
    field(100, b"0000755\0");
    field(108, b"0000000\0");
    field(116, b"0000000\0");
    field(124, b"00000000000\0");
    field(136, b"00000000000\0");
    field(156, b"5");
    field(257, b"ustar\0");
    field(263, b"00");
    field(265, b"root");
    field(297, b"root");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut archive = header.to_vec();
    archive.extend_from_slice(&[0u8; 1024]);
    archive
}

/// Whether `path` starts like a gzip stream.
pub(super) fn is_gzip(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 2];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == [0x1f, 0x8b]
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::container::ContainerSpec;

    #[test]
    fn skopeo_gets_the_digest_alone_when_a_reference_has_both() {
        let cases = [
            ("127.0.0.1:5000/app:b1@sha256:abc", "docker://127.0.0.1:5000/app@sha256:abc"),
            ("127.0.0.1:5000/app@sha256:abc", "docker://127.0.0.1:5000/app@sha256:abc"),
            ("127.0.0.1:5000/team/app:v1", "docker://127.0.0.1:5000/team/app:v1"),
            ("busybox", "docker://busybox"),
        ];
        for (reference, source) in cases {
            assert_eq!(skopeo_source(reference), source, "{reference}");
        }
    }

    #[test]
    fn references_are_normalised() {
        assert_eq!(normalize_reference("busybox"), "busybox:latest");
        assert_eq!(normalize_reference("127.0.0.1:5000/diplo/busybox"), "127.0.0.1:5000/diplo/busybox:latest");
        assert_eq!(normalize_reference("127.0.0.1:5000/diplo/busybox:1.36"), "127.0.0.1:5000/diplo/busybox:1.36");
        assert_eq!(normalize_reference("x/y@sha256:ab"), "x/y@sha256:ab");
        assert_eq!(registry_of("127.0.0.1:5000/diplo/busybox:latest"), Some("127.0.0.1:5000"));
        assert_eq!(registry_of("localhost/x"), Some("localhost"));
        assert_eq!(registry_of("library/busybox"), None);
        assert_eq!(registry_of("busybox"), None);
        let a = cache_dir_name("127.0.0.1:5000/diplo/busybox");
        assert_eq!(a, cache_dir_name("127.0.0.1:5000/diplo/busybox:latest"));
        assert!(a.starts_with("127.0.0.1_5000_diplo_busybox_latest-"), "{a}");
        assert_ne!(a, cache_dir_name("127.0.0.1:5000/diplo_busybox:latest"));
    }

    #[test]
    fn skopeo_errors_are_classified() {
        let unknown = r#"time="2026-11-23T15:17:55Z" level=fatal msg="initializing source docker://127.0.0.1:5000/diplo/nope:latest: reading manifest latest in 127.0.0.1:5000/diplo/nope: manifest unknown: manifest unknown""#;
        assert!(is_not_found(unknown));
        assert_eq!(
            skopeo_message(unknown),
            "initializing source docker://127.0.0.1:5000/diplo/nope:latest: reading manifest latest in 127.0.0.1:5000/diplo/nope: manifest unknown: manifest unknown"
        );
        let refused = r#"time="x" level=fatal msg="initializing source docker://127.0.0.1:5999/a:b: pinging container registry 127.0.0.1:5999: Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused""#;
        assert!(!is_not_found(refused));
        assert!(skopeo_message(refused).contains("Get \"http://127.0.0.1:5999/v2/\""));
    }

    #[test]
    fn directory_tar_is_a_valid_ustar_header() {
        let tar = directory_tar("etc");
        assert_eq!(tar.len(), 1536);
        assert_eq!(&tar[..4], b"etc/");
        assert_eq!(tar[156], b'5');
        let stored = u32::from_str_radix(std::str::from_utf8(&tar[148..154]).expect("octal"), 8).expect("octal");
        let mut copy = tar[..512].to_vec();
        copy[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, copy.iter().map(|b| u32::from(*b)).sum::<u32>());
    }

    #[test]
    fn rootfs_tarballs_become_layouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = dir.path().join("rootfs.tar");
        std::fs::write(&tar, directory_tar("bin")).expect("write");
        let layout = dir.path().join("layout");
        write_rootfs_layout(&layout, &tar).expect("layout");
        assert!(layout_present(&layout));
        assert_eq!(resolve_command(&layout, &ContainerSpec::default()).expect("argv"), ["/bin/sh"]);
        let config = image_config(&layout).expect("config");
        assert_eq!(config.pointer("/rootfs/diff_ids").and_then(serde_json::Value::as_array).map(Vec::len), Some(2));
    }

    #[test]
    fn default_command_from_a_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = dir.path();
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        let config = r#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["--port","80"]}}"#;
        let config_hex = hex::encode(Sha256::digest(config));
        std::fs::write(blobs.join(&config_hex), config).expect("write");
        let manifest = format!(r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{config_hex}"}},"layers":[]}}"#);
        let manifest_hex = hex::encode(Sha256::digest(&manifest));
        std::fs::write(blobs.join(&manifest_hex), &manifest).expect("write");
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{manifest_hex}","annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#
        );
        std::fs::write(layout.join("index.json"), index).expect("write");
        std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        assert!(layout_present(layout));
        let with = |entrypoint: &[&str], command: &[&str]| ContainerSpec {
            entrypoint: entrypoint.iter().map(|s| (*s).to_owned()).collect(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            ..ContainerSpec::default()
        };
        assert_eq!(resolve_command(layout, &with(&[], &[])).expect("argv"), ["/bin/app", "--port", "80"]);
        assert_eq!(resolve_command(layout, &with(&[], &["-v"])).expect("argv"), ["/bin/app", "-v"]);
        assert_eq!(resolve_command(layout, &with(&["/bin/sh", "-c"], &["echo"])).expect("argv"), ["/bin/sh", "-c", "echo"]);
        assert_eq!(run_settings(layout).expect("settings"), RunSettings::default());
    }
}
