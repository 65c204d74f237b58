//! Named volumes as plain directories, for runtimes without volume objects of their own
//! (containerd, LXC). Under one root directory:
//!
//! * `<root>/<name>/` is the volume's data (its mountpoint, bind-mounted into containers);
//! * `<root>/.meta/<name>.json` its metadata (labels, creation time), written atomically
//!   (a private temporary file renamed over it), readable by root only.
//!
//! Names follow [`validate_resource_name`] (Docker's rule), so a name is never a path
//! (no `/`, never `.` or `..`, never the `.meta` directory). A volume directory that is a
//! symbolic link is refused, never followed. A volume is managed (removable and prunable
//! through Diplo) when its metadata carries [`LABEL_MANAGED`]: volumes created through
//! Diplo, or created by Diplo when a container mounted a volume that did not exist. A
//! directory without metadata (made by hand) is listed but never removed.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use diplo_api::resources::{LABEL_MANAGED, PruneReport, VolumeInfo, VolumeSpec, validate_resource_name};
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};

use super::{RuntimeError, RuntimeResult, not_managed};

/// The directory holding the metadata files, beside the volume directories.
const META_DIR: &str = ".meta";

/// The driver name directory volumes report.
pub const DRIVER: &str = "local";

/// What is stored beside a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// Its labels, [`LABEL_MANAGED`] included when Diplo created it.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// RFC 3339 creation time.
    #[serde(default)]
    created: String,
}

/// The directory volumes of one runtime on this host.
#[derive(Debug, Clone)]
pub struct DirVolumes {
    root: PathBuf,
    runtime: Runtime,
}

impl DirVolumes {
    /// Volumes under `root` (created on first use), errors naming `runtime`.
    pub fn new(root: PathBuf, runtime: Runtime) -> Self {
        DirVolumes { root, runtime }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn failed(&self, message: String) -> RuntimeError {
        RuntimeError::Failed { runtime: self.runtime, message }
    }

    fn not_found(name: &str) -> RuntimeError {
        RuntimeError::NotFound { what: "volume", name: name.to_owned() }
    }

    /// The data directory of volume `name` (the name checked; nothing touched).
    pub fn path(&self, name: &str) -> RuntimeResult<PathBuf> {
        validate_resource_name(name).map_err(|message| RuntimeError::InvalidArgument { field: "volume", message })?;
        Ok(self.root.join(name))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.root.join(META_DIR).join(format!("{name}.json"))
    }

    /// Whether `name`'s directory exists: a real directory, never a symbolic link.
    fn exists(&self, name: &str) -> RuntimeResult<bool> {
        let path = self.path(name)?;
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_dir() => Ok(true),
            Ok(_) => {
                Err(RuntimeError::Conflict(format!("volume {name:?}: {} is not a directory (a link is never followed)", path.display())))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(self.failed(format!("volume {name:?}: {error}"))),
        }
    }

    fn read_meta(&self, name: &str) -> Option<Meta> {
        let path = self.meta_path(name);
        // A link in place of the metadata is not read.
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            return None;
        }
        let text = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(meta) => Some(meta),
            Err(error) => {
                tracing::warn!(volume = name, path = %path.display(), %error, "unreadable volume metadata; the volume counts as not Diplo's");
                None
            }
        }
    }

    fn write_meta(&self, name: &str, meta: &Meta) -> RuntimeResult<()> {
        let dir = self.root.join(META_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| self.failed(format!("cannot create {}: {e}", dir.display())))?;
        let text = serde_json::to_vec_pretty(meta).map_err(|e| self.failed(e.to_string()))?;
        let temporary = dir.join(format!(".{name}.{:08x}.tmp", rand::random::<u32>()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&temporary, self.meta_path(name))
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            self.failed(format!("cannot write the metadata of volume {name:?}: {e}"))
        })
    }

    fn make_dir(&self, name: &str) -> RuntimeResult<PathBuf> {
        let path = self.path(name)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&path)
            .map_err(|e| self.failed(format!("cannot create volume directory {}: {e}", path.display())))?;
        Ok(path)
    }

    fn info(&self, name: &str, users: &BTreeMap<String, Vec<String>>) -> VolumeInfo {
        let meta = self.read_meta(name).unwrap_or_default();
        VolumeInfo {
            name: name.to_owned(),
            driver: DRIVER.to_owned(),
            mountpoint: self.root.join(name).display().to_string(),
            labels: meta.labels,
            created: meta.created,
            containers: users.get(name).cloned().unwrap_or_default(),
        }
    }

    fn managed_meta(labels: &BTreeMap<String, String>) -> Meta {
        let mut labels = labels.clone();
        labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
        Meta { labels, created: chrono::Utc::now().to_rfc3339() }
    }

    /// Creates a volume labelled [`LABEL_MANAGED`] (`Conflict` when it exists).
    pub fn create(&self, spec: &VolumeSpec) -> RuntimeResult<VolumeInfo> {
        spec.validate().map_err(|(field, message)| RuntimeError::InvalidArgument { field, message })?;
        if self.exists(&spec.name)? {
            return Err(RuntimeError::Conflict(format!("volume {:?} exists already", spec.name)));
        }
        self.write_meta(&spec.name, &Self::managed_meta(&spec.labels))?;
        self.make_dir(&spec.name)?;
        Ok(self.info(&spec.name, &BTreeMap::new()))
    }

    /// The directory of volume `name` for a container to mount, created (labelled
    /// [`LABEL_MANAGED`]) when it does not exist yet.
    pub fn ensure(&self, name: &str) -> RuntimeResult<PathBuf> {
        if !self.exists(name)? {
            if self.read_meta(name).is_none() {
                self.write_meta(name, &Self::managed_meta(&BTreeMap::new()))?;
            }
            self.make_dir(name)?;
        }
        self.path(name)
    }

    /// Every volume, by name; `users` maps volume names to the containers mounting them.
    pub fn list(&self, users: &BTreeMap<String, Vec<String>>) -> RuntimeResult<Vec<VolumeInfo>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.failed(format!("cannot read {}: {error}", self.root.display()))),
        };
        let mut volumes: Vec<VolumeInfo> = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
            .filter(|name| validate_resource_name(name).is_ok())
            .map(|name| self.info(&name, users))
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// The names of every volume (no metadata read).
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
            .filter(|name| validate_resource_name(name).is_ok())
            .collect();
        names.sort();
        names
    }

    /// One volume.
    pub fn inspect(&self, name: &str, users: &BTreeMap<String, Vec<String>>) -> RuntimeResult<VolumeInfo> {
        if !self.exists(name)? {
            return Err(Self::not_found(name));
        }
        Ok(self.info(name, users))
    }

    /// Removes a volume Diplo created that no container mounts (`Conflict` otherwise).
    pub fn remove(&self, name: &str, users: &BTreeMap<String, Vec<String>>) -> RuntimeResult<()> {
        let volume = self.inspect(name, users)?;
        if !volume.managed() {
            return Err(not_managed("volume", name));
        }
        if !volume.containers.is_empty() {
            return Err(RuntimeError::Conflict(format!("volume {name:?} is in use by {}", volume.containers.join(", "))));
        }
        let path = self.path(name)?;
        // `remove_dir_all` removes links inside the volume, never what they point at.
        std::fs::remove_dir_all(&path).map_err(|e| self.failed(format!("cannot remove volume directory {}: {e}", path.display())))?;
        match std::fs::remove_file(self.meta_path(name)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(self.failed(format!("cannot remove the metadata of volume {name:?}: {error}")))
            }
            _ => Ok(()),
        }
    }

    /// Removes the volumes Diplo created that no container mounts.
    pub fn prune(&self, users: &BTreeMap<String, Vec<String>>) -> RuntimeResult<PruneReport> {
        let mut report = PruneReport::default();
        for volume in self.list(users)?.into_iter().filter(|v| v.managed() && v.containers.is_empty()) {
            match self.remove(&volume.name, users) {
                Ok(()) => report.removed.push(volume.name),
                Err(RuntimeError::Conflict(_) | RuntimeError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(report)
    }
}

/// Maps each named volume `specs` mount to the names of the containers mounting it.
pub fn volume_users<'a>(specs: impl IntoIterator<Item = &'a diplo_api::container::ContainerSpec>) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for spec in specs {
        for mount in spec.mounts.iter().filter(|m| !m.is_bind()) {
            let names = users.entry(mount.source.clone()).or_default();
            if !names.contains(&spec.name) {
                names.push(spec.name.clone());
            }
        }
    }
    for names in users.values_mut() {
        names.sort();
    }
    users
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::container::{ContainerSpec, Mount};

    fn store() -> (tempfile::TempDir, DirVolumes) {
        let dir = tempfile::tempdir().expect("tempdir");
        let volumes = DirVolumes::new(dir.path().join("volumes"), Runtime::Containerd);
        (dir, volumes)
    }

    fn spec(name: &str) -> VolumeSpec {
        VolumeSpec { name: name.into(), labels: BTreeMap::from([("team".into(), "a".into())]) }
    }

    #[test]
    fn create_list_inspect_remove_round_trip_with_private_metadata() {
        let (_dir, volumes) = store();
        let none = BTreeMap::new();
        assert!(volumes.list(&none).expect("empty").is_empty());
        let created = volumes.create(&spec("data")).expect("create");
        assert_eq!((created.driver.as_str(), created.managed()), ("local", true));
        assert_eq!(created.labels.get("team").map(String::as_str), Some("a"));
        assert!(Path::new(&created.mountpoint).is_dir() && !created.created.is_empty());
        assert!(matches!(volumes.create(&spec("data")), Err(RuntimeError::Conflict(_))));
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(volumes.root().join(".meta/data.json")).expect("metadata file");
        assert_eq!(meta.permissions().mode() & 0o077, 0, "metadata is private");
        assert_eq!(volumes.list(&none).expect("list").iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["data"]);
        assert_eq!(volumes.names(), ["data"]);
        assert_eq!(volumes.inspect("data", &none).expect("inspect"), created);
        volumes.remove("data", &none).expect("remove");
        assert!(matches!(volumes.inspect("data", &none), Err(RuntimeError::NotFound { what: "volume", .. })));
        assert!(!volumes.root().join(".meta/data.json").exists());
    }

    #[test]
    fn names_are_never_paths() {
        let (_dir, volumes) = store();
        for bad in ["../x", "a/b", "..", ".", ".meta", "", "/etc", "x y"] {
            assert!(matches!(volumes.path(bad), Err(RuntimeError::InvalidArgument { field: "volume", .. })), "{bad:?}");
            assert!(matches!(volumes.ensure(bad), Err(RuntimeError::InvalidArgument { .. })), "{bad:?}");
            assert!(matches!(volumes.create(&spec(bad)), Err(RuntimeError::InvalidArgument { field: "name", .. })), "{bad:?}");
        }
    }

    #[test]
    fn a_linked_volume_directory_is_never_followed() {
        let (dir, volumes) = store();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).expect("outside");
        std::fs::write(outside.join("precious"), "x").expect("file");
        std::fs::create_dir_all(volumes.root()).expect("root");
        std::os::unix::fs::symlink(&outside, volumes.root().join("evil")).expect("link");
        let none = BTreeMap::new();
        assert!(matches!(volumes.ensure("evil"), Err(RuntimeError::Conflict(_))));
        assert!(matches!(volumes.remove("evil", &none), Err(RuntimeError::Conflict(_))));
        assert!(matches!(volumes.create(&spec("evil")), Err(RuntimeError::Conflict(_))));
        assert!(volumes.list(&none).expect("list").is_empty(), "a link is not a volume");
        volumes.prune(&none).expect("prune");
        assert!(outside.join("precious").is_file(), "nothing outside the root was touched");
    }

    #[test]
    fn in_use_and_hand_made_volumes_stay() {
        let (_dir, volumes) = store();
        volumes.create(&spec("used")).expect("used");
        volumes.create(&spec("unused")).expect("unused");
        volumes.ensure("implicit").expect("implicit");
        std::fs::create_dir(volumes.root().join("handmade")).expect("handmade");
        let mount = |source: &str| Mount { source: source.into(), target: "/data".into(), read_only: false };
        let web = ContainerSpec { name: "web".into(), mounts: vec![mount("used"), mount("/srv")], ..Default::default() };
        let users = volume_users([&web]);
        assert_eq!(users.keys().collect::<Vec<_>>(), ["used"]);
        assert_eq!(volumes.inspect("used", &users).expect("inspect").containers, ["web"]);
        match volumes.remove("used", &users) {
            Err(RuntimeError::Conflict(message)) => assert!(message.contains("in use by web"), "{message}"),
            other => panic!("{other:?}"),
        }
        match volumes.remove("handmade", &users) {
            Err(RuntimeError::Conflict(message)) => assert!(message.contains("not created by Diplo"), "{message}"),
            other => panic!("{other:?}"),
        }
        let report = volumes.prune(&users).expect("prune");
        assert_eq!(report.removed, ["implicit", "unused"]);
        assert_eq!(volumes.names(), ["handmade", "used"]);
    }

    #[test]
    fn ensure_keeps_existing_data() {
        let (_dir, volumes) = store();
        let path = volumes.ensure("keep").expect("ensure");
        std::fs::write(path.join("file"), "data").expect("write");
        assert_eq!(volumes.ensure("keep").expect("again"), path);
        assert_eq!(std::fs::read_to_string(path.join("file")).expect("read"), "data");
        assert!(volumes.inspect("keep", &BTreeMap::new()).expect("inspect").managed());
    }
}
