//! Hostile images built by the tests: a busybox root filesystem (the host's static
//! `/bin/busybox`) with symlinks, FIFOs and config fields chosen to reach outside the
//! container, packed as an OCI archive (`oci-archive`) or a bare root filesystem tarball.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// A unique path under `/tmp` for a marker or victim file of the host (removed on drop).
pub struct HostFile(pub PathBuf);

impl HostFile {
    /// `/tmp/diplo-<what>-<random>`, not created.
    pub fn new(what: &str) -> Self {
        HostFile(PathBuf::from(format!("/tmp/diplo-{what}-{:08x}", rand::random::<u32>())))
    }

    /// The path as a string.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `dir/root` holding `/bin/busybox`, empty `/etc`, `/tmp` and `/dev`; `None` without a
/// static busybox on the host.
pub fn busybox_root(dir: &Path) -> Option<PathBuf> {
    if !Path::new("/bin/busybox").is_file() {
        diplo_tests::skip_or_fail("no /bin/busybox on this host: the hostile image test needs it");
        return None;
    }
    let root = dir.join("root");
    for sub in ["bin", "etc", "tmp", "dev"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).expect("symlink sh");
    Some(root)
}

/// `root` as an uncompressed tar archive at `out`.
pub fn tar(root: &Path, out: &Path) {
    let status = Command::new("tar").arg("-C").arg(root).arg("-cf").arg(out).arg(".").status().expect("tar");
    assert!(status.success(), "tar {}", root.display());
}

fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI archive at `out` of one layer (`root`) with `config` as the image config's
/// `config` object (`User`, `WorkingDir`, `Env`, `Cmd`, ...).
pub fn oci_archive(root: &Path, config: serde_json::Value, out: &Path) {
    let layout = out.with_extension("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |data: &[u8]| -> (String, usize) {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(blobs.join(&hex), data).expect("write blob");
        (format!("sha256:{hex}"), data.len())
    };
    let layer_path = out.with_extension("layer.tar");
    tar(root, &layer_path);
    let (layer, layer_size) = put(&std::fs::read(&layer_path).expect("read layer"));
    let image_config = serde_json::json!({
        "architecture": architecture(),
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [layer] },
    });
    let (config_digest, config_size) = put(image_config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size }],
    });
    let (manifest_digest, manifest_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": "latest" },
        }],
    });
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    std::fs::write(layout.join("index.json"), index.to_string()).expect("write");
    tar(&layout, out);
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().expect("mkfifo").success(), "mkfifo {}", path.display());
}
