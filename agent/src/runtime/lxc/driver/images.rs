//! The LXC driver's image cache as images: one OCI layout per reference. A container's
//! root filesystem is unpacked from its layout at create time and owes nothing to it
//! afterwards, so removing a cached image never affects a container; it is pulled again
//! by the next create that needs it. The reference each layout was pulled as is kept in
//! the layout ([`REFERENCE_FILE`]); layouts from before have no tag and are named by their
//! directory. A prune removes what interrupted pulls left behind (older than
//! [`LEFTOVER_AGE`]) and, with `all`, every cached image.

use std::path::Path;
use std::time::{Duration, SystemTime};

use diplo_api::resources::{ImageInfo, PruneReport};

use super::{LxcRuntime, failed, image};
use crate::runtime::docker::describe_io;
use crate::runtime::{RuntimeError, RuntimeResult};

/// The file in a cached layout holding the reference it was pulled as.
pub(in crate::runtime::lxc) const REFERENCE_FILE: &str = "diplo-reference";

/// How old a temporary directory of an interrupted pull must be before a prune takes it
/// (a younger one may be a pull under way).
pub const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// Bytes of the regular files under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => disk_usage(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn layout_info(layout: &Path) -> ImageInfo {
    let id = layout.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tags = std::fs::read_to_string(layout.join(REFERENCE_FILE)).map(|r| vec![r.trim().to_owned()]).unwrap_or_default();
    let created = std::fs::metadata(layout.join("index.json"))
        .and_then(|m| m.modified())
        .map(|at| chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339())
        .unwrap_or_default();
    ImageInfo { id, tags, digests: Vec::new(), size_bytes: disk_usage(layout), created }
}

impl LxcRuntime {
    /// The cached layout `image` (a reference, or a cache directory name) names.
    fn cached_layout(&self, image: &str) -> RuntimeResult<std::path::PathBuf> {
        crate::runtime::docker_api::check_image_reference(image)?;
        let by_reference = self.image_layout(image);
        if image::layout_present(&by_reference) {
            return Ok(by_reference);
        }
        let by_id = self.image_cache.join(image);
        if !image.starts_with('.') && !image.contains('/') && image::layout_present(&by_id) {
            return Ok(by_id);
        }
        Err(RuntimeError::NotFound { what: "image", name: image.to_owned() })
    }

    /// Moves `dir` aside, then deletes it: no half-deleted layout is ever seen as present.
    fn discard(&self, dir: &Path) -> RuntimeResult<()> {
        let aside = self.image_cache.join(format!(".old-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::rename(dir, &aside).map_err(|e| failed(format!("cannot remove {}: {}", dir.display(), describe_io(&e))))?;
        std::fs::remove_dir_all(&aside).map_err(|e| failed(format!("cannot remove {}: {}", aside.display(), describe_io(&e))))
    }

    pub(super) fn cached_images(&self) -> RuntimeResult<Vec<ImageInfo>> {
        let entries = match std::fs::read_dir(&self.image_cache) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(failed(format!("cannot read {}: {}", self.image_cache.display(), describe_io(&error)))),
        };
        let mut images: Vec<ImageInfo> = entries
            .flatten()
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.') && image::layout_present(&entry.path()))
            .map(|entry| layout_info(&entry.path()))
            .collect();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(images)
    }

    pub(super) fn cached_image(&self, image: &str) -> RuntimeResult<ImageInfo> {
        Ok(layout_info(&self.cached_layout(image)?))
    }

    pub(super) fn uncache_image(&self, image: &str) -> RuntimeResult<()> {
        let layout = self.cached_layout(image)?;
        self.discard(&layout)
    }

    pub(super) fn prune_cache(&self, all: bool) -> RuntimeResult<PruneReport> {
        let mut report = PruneReport::default();
        let Ok(entries) = std::fs::read_dir(&self.image_cache) else { return Ok(report) };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let leftover = name.starts_with(".tmp-") || name.starts_with(".old-");
            let old =
                entry.metadata().and_then(|m| m.modified()).is_ok_and(|at| now.duration_since(at).unwrap_or_default() >= LEFTOVER_AGE);
            let take = if leftover { old } else { all && entry.file_type().is_ok_and(|t| t.is_dir()) };
            if !take {
                continue;
            }
            let size = disk_usage(&path);
            let removed = if leftover { std::fs::remove_dir_all(&path).map_err(|e| failed(describe_io(&e))) } else { self.discard(&path) };
            match removed {
                Ok(()) => {
                    report.removed.push(name);
                    report.reclaimed_bytes += size;
                }
                Err(error) => tracing::warn!(dir = %path.display(), %error, "cannot prune a cached image"),
            }
        }
        Ok(report)
    }
}
