//! Container runtimes on this host behind one trait, [`ContainerRuntime`], over domain
//! types only. Only `runtime/*` links runtime client libraries (bollard,
//! containerd-client); every container Diplo creates carries Diplo's labels, and
//! `list` returns only those.

pub mod build_api;
pub mod containerd;
pub mod dir_volumes;
pub mod docker;
mod docker_api;
pub mod fake;
pub mod lxc;
pub mod output;
pub mod podman;
pub mod rootfs;

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use diplo_api::container::{ContainerInfo, ContainerSpec, ContainerStats, ExecOutput, LogChunk, LogOptions, RuntimeEvent};
use diplo_api::resources::{ImageInfo, NetworkInfo, NetworkSpec, PruneReport, VolumeInfo, VolumeSpec};
use diplo_api::runtime::Runtime;
use futures::Stream;

/// What a runtime operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image or container does not exist.
    #[error("{what} {name:?} not found")]
    NotFound {
        /// `image` or `container`.
        what: &'static str,
        /// The reference or id.
        name: String,
    },
    /// Something is in the way (name taken, host port in use).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request is invalid; `field` names the culprit.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// Spec field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// This runtime cannot do this operation.
    #[error("{runtime} does not support {operation}")]
    Unsupported {
        /// The runtime.
        runtime: Runtime,
        /// The operation.
        operation: &'static str,
    },
    /// The runtime's daemon or tools cannot be reached.
    #[error("{runtime} is unavailable: {message}")]
    Unavailable {
        /// The runtime.
        runtime: Runtime,
        /// Why.
        message: String,
    },
    /// The runtime reported an error.
    #[error("{runtime}: {message}")]
    Failed {
        /// The runtime.
        runtime: Runtime,
        /// Its message.
        message: String,
    },
}

/// Result alias for runtime operations.
pub type RuntimeResult<T> = Result<T, RuntimeError>;

/// A stream of items from a runtime (logs, events).
pub type RuntimeStream<T> = Pin<Box<dyn Stream<Item = RuntimeResult<T>> + Send>>;

/// Where images come from (which registries speak plain HTTP); shared with the
/// control plane, which reads image platforms from the same registries.
pub use diplo_api::registry::RegistryConfig;

/// One container runtime on this host. Implementations add Diplo's labels at create,
/// list only containers carrying them, and never touch any other container.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Which runtime this is.
    fn runtime(&self) -> Runtime;
    /// The runtime's version.
    async fn version(&self) -> RuntimeResult<String>;
    /// Makes `image` present locally, pulling it when missing.
    async fn ensure_image(&self, image: &str) -> RuntimeResult<()>;
    /// Imports an OCI/Docker archive and tags it `reference`.
    async fn import_image(&self, archive: &Path, reference: &str) -> RuntimeResult<()>;
    /// Creates (not starts) a container; returns its id.
    async fn create(&self, spec: &ContainerSpec) -> RuntimeResult<String>;
    /// Starts a created or stopped container.
    async fn start(&self, id: &str) -> RuntimeResult<()>;
    /// Stops a container: SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> RuntimeResult<()>;
    /// Stops then starts.
    async fn restart(&self, id: &str, grace: Duration) -> RuntimeResult<()>;
    /// Removes a container; `force` stops it first. Leaves nothing behind.
    async fn remove(&self, id: &str, force: bool) -> RuntimeResult<()>;
    /// Containers carrying Diplo's labels.
    async fn list(&self) -> RuntimeResult<Vec<ContainerInfo>>;
    /// One container (by id or name).
    async fn inspect(&self, id: &str) -> RuntimeResult<ContainerInfo>;
    /// Its output.
    async fn logs(&self, id: &str, options: LogOptions) -> RuntimeResult<RuntimeStream<LogChunk>>;
    /// Runs argv inside the container and collects its output.
    async fn exec(&self, id: &str, argv: &[String]) -> RuntimeResult<ExecOutput>;
    /// A resource usage sample.
    async fn stats(&self, id: &str) -> RuntimeResult<ContainerStats>;
    /// Follows what happens to Diplo's containers from now on: start, die, oom, health
    /// changes, other changes of state (created, paused, resumed, renamed: `Changed`) and
    /// removal (`Removed`), each naming the container by the id [`ContainerRuntime::list`]
    /// and [`ContainerRuntime::inspect`] give it. The contract:
    ///
    /// * nothing is missed while the stream is open (Docker and Podman replay from the
    ///   moment of the call; containerd's subscription and LXC's monitor are in place a
    ///   moment after it returns, and a change within that moment waits for the caller's
    ///   next full list). Events may repeat, and may name containers of other nodes
    ///   sharing the runtime: the caller inspects the container and keeps its own;
    /// * an event says *that* a container changed, not its whole state: inspect it (a
    ///   `NotFound` then means it is gone);
    /// * the stream ends, or yields an error and ends, when the runtime's source fails
    ///   (daemon restarted, monitor exited): the caller lists in full and subscribes
    ///   again.
    ///
    /// Docker and Podman follow their events API, containerd its event service (tasks and
    /// containers in Diplo's namespace), LXC `lxc-monitor` and its lxcpath directory.
    async fn events(&self) -> RuntimeResult<RuntimeStream<RuntimeEvent>>;

    // Images, networks and volumes. A runtime without such objects keeps the default,
    // which answers `Unsupported` naming the runtime and the operation.

    /// Every image in the runtime's local store.
    async fn list_images(&self) -> RuntimeResult<Vec<ImageInfo>> {
        Err(unsupported(self.runtime(), "listing images"))
    }
    /// One image by reference or id.
    async fn inspect_image(&self, _image: &str) -> RuntimeResult<ImageInfo> {
        Err(unsupported(self.runtime(), "inspecting images"))
    }
    /// Removes an image; the runtime refuses one a container uses (`Conflict`) unless
    /// `force` (and still refuses one a running container uses).
    async fn remove_image(&self, _image: &str, _force: bool) -> RuntimeResult<()> {
        Err(unsupported(self.runtime(), "removing images"))
    }
    /// Removes images no container uses: every one with `all`, else untagged ones only.
    async fn prune_images(&self, _all: bool) -> RuntimeResult<PruneReport> {
        Err(unsupported(self.runtime(), "pruning images"))
    }
    /// Creates a network labelled [`diplo_api::resources::LABEL_MANAGED`].
    async fn create_network(&self, _spec: &NetworkSpec) -> RuntimeResult<NetworkInfo> {
        Err(unsupported(self.runtime(), "networks"))
    }
    /// Every network.
    async fn list_networks(&self) -> RuntimeResult<Vec<NetworkInfo>> {
        Err(unsupported(self.runtime(), "networks"))
    }
    /// One network by name or id, with its attached containers.
    async fn inspect_network(&self, _network: &str) -> RuntimeResult<NetworkInfo> {
        Err(unsupported(self.runtime(), "networks"))
    }
    /// Removes a network Diplo created (`Conflict` for any other, or one in use).
    async fn remove_network(&self, _network: &str) -> RuntimeResult<()> {
        Err(unsupported(self.runtime(), "networks"))
    }
    /// Attaches one of Diplo's containers (`NotFound` for any other container).
    async fn connect_network(&self, _network: &str, _container: &str) -> RuntimeResult<()> {
        Err(unsupported(self.runtime(), "networks"))
    }
    /// Detaches one of Diplo's containers.
    async fn disconnect_network(&self, _network: &str, _container: &str) -> RuntimeResult<()> {
        Err(unsupported(self.runtime(), "networks"))
    }
    /// Creates a volume labelled [`diplo_api::resources::LABEL_MANAGED`].
    async fn create_volume(&self, _spec: &VolumeSpec) -> RuntimeResult<VolumeInfo> {
        Err(unsupported(self.runtime(), "volumes"))
    }
    /// Every volume.
    async fn list_volumes(&self) -> RuntimeResult<Vec<VolumeInfo>> {
        Err(unsupported(self.runtime(), "volumes"))
    }
    /// One volume by name.
    async fn inspect_volume(&self, _volume: &str) -> RuntimeResult<VolumeInfo> {
        Err(unsupported(self.runtime(), "volumes"))
    }
    /// Removes a volume Diplo created (`Conflict` for any other, or one in use).
    async fn remove_volume(&self, _volume: &str) -> RuntimeResult<()> {
        Err(unsupported(self.runtime(), "volumes"))
    }
    /// Removes the volumes Diplo created that no container uses.
    async fn prune_volumes(&self) -> RuntimeResult<PruneReport> {
        Err(unsupported(self.runtime(), "volumes"))
    }

    /// Freezes every process of a running container; it then reads as
    /// [`ContainerStatus::Paused`](diplo_api::container::ContainerStatus::Paused) until
    /// [`ContainerRuntime::unpause`]. Pausing a paused container does nothing.
    async fn pause(&self, id: &str) -> RuntimeResult<()> {
        let _ = id;
        Err(RuntimeError::Unsupported { runtime: self.runtime(), operation: "pause" })
    }
    /// Thaws a paused container. Unpausing a running container does nothing.
    async fn unpause(&self, id: &str) -> RuntimeResult<()> {
        let _ = id;
        Err(RuntimeError::Unsupported { runtime: self.runtime(), operation: "unpause" })
    }
    /// A tar archive of `path` (absolute, checked by
    /// [`check_container_path`](diplo_api::archive::check_container_path)) inside a
    /// running container, its one top-level member named after the path's last
    /// component. Read by the runtime inside the container, never from the host; larger
    /// than [`MAX_ARCHIVE_BYTES`](diplo_api::archive::MAX_ARCHIVE_BYTES): `InvalidArgument`.
    async fn copy_from(&self, id: &str, path: &str) -> RuntimeResult<Vec<u8>> {
        let _ = (id, path);
        Err(RuntimeError::Unsupported { runtime: self.runtime(), operation: "copying files out of a container" })
    }
    /// Extracts `archive` (checked by [`check_archive`](diplo_api::archive::check_archive))
    /// into directory `dir` (absolute, existing) of a running container, by the runtime
    /// inside the container, never on the host.
    async fn copy_to(&self, id: &str, dir: &str, archive: Vec<u8>) -> RuntimeResult<()> {
        let _ = (id, dir, archive);
        Err(RuntimeError::Unsupported { runtime: self.runtime(), operation: "copying files into a container" })
    }
}

/// The answer of a runtime that cannot do `operation`.
pub fn unsupported(runtime: Runtime, operation: &'static str) -> RuntimeError {
    RuntimeError::Unsupported { runtime, operation }
}

/// The refusal to remove a network or volume Diplo did not create.
pub(crate) fn not_managed(what: &str, name: &str) -> RuntimeError {
    RuntimeError::Conflict(format!(
        "{what} {name:?} was not created by Diplo (no {} label); Diplo removes only the {what}s it created",
        diplo_api::resources::LABEL_MANAGED
    ))
}

/// The argv that writes a tar of `path` (checked) to stdout, run inside a container.
pub(crate) fn tar_out_argv(path: &str) -> Vec<String> {
    let (parent, name) = diplo_api::archive::split_container_path(path);
    ["tar", "-cf", "-", "-C", &parent, "--", &name].map(str::to_owned).to_vec()
}

/// The argv that extracts a tar read from stdin into `dir` (checked), run inside a
/// container.
pub(crate) fn tar_in_argv(dir: &str) -> Vec<String> {
    ["tar", "-xf", "-", "-C", dir].map(str::to_owned).to_vec()
}

/// Checks a path to copy from or to (`field`), as the trait's methods require.
pub(crate) fn check_copy_path(field: &'static str, path: &str) -> RuntimeResult<()> {
    diplo_api::archive::check_container_path(path).map_err(|message| RuntimeError::InvalidArgument { field, message })
}

/// The error for an archive read out of a container that outgrew the bound.
pub(crate) fn archive_too_large(path: &str) -> RuntimeError {
    RuntimeError::InvalidArgument {
        field: "path",
        message: format!(
            "{path} archives to more than {} bytes ({} MiB), the most a copy carries",
            diplo_api::archive::MAX_ARCHIVE_BYTES,
            diplo_api::archive::MAX_ARCHIVE_BYTES >> 20
        ),
    }
}

/// The error for an archive the runtime could not extract inside the container (a
/// member through a link that leads nowhere, a read-only directory): its message.
pub(crate) fn archive_refused(message: &str) -> RuntimeError {
    RuntimeError::InvalidArgument {
        field: "archive",
        message: format!("the archive could not be extracted in the container: {}", diplo_api::text::bounded(message, 1024)),
    }
}

/// The error for a `tar -x` run inside a container that failed on directory `dir`: not
/// found when the directory does not exist, else the archive could not be extracted.
pub(crate) fn tar_in_failed(runtime: Runtime, dir: &str, exit_code: i64, stderr: &[u8]) -> RuntimeError {
    match tar_failed(runtime, dir, exit_code, stderr) {
        RuntimeError::Failed { message, .. } => archive_refused(&message),
        other => other,
    }
}

/// The error for a `tar` run inside a container that failed on `what` (the path):
/// not found when tar says the path does not exist.
pub(crate) fn tar_failed(runtime: Runtime, what: &str, exit_code: i64, stderr: &[u8]) -> RuntimeError {
    let text = String::from_utf8_lossy(stderr);
    let text = diplo_api::text::bounded(text.trim(), 1024);
    if text.contains("No such file") || text.contains("Cannot stat") {
        return RuntimeError::NotFound { what: "path", name: what.to_owned() };
    }
    RuntimeError::Failed { runtime, message: format!("tar inside the container failed ({what}, exit {exit_code}): {text}") }
}
