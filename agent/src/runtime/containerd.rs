//! containerd, through its gRPC API (containerd-client): the fingerprint's probe and
//! [`ContainerdRuntime`], Diplo's driver for containerd 1.6+ in namespace `diplo`.
//!
//! containerd 1.6 has no Transfer service, so images are pulled client side
//! (`image`, over the shared registry client `diplo_api::registry`); containers get an OCI spec built here (`spec`), a network
//! from the CNI plugins (`cni`) and their output in plain files (`logs`).

pub(crate) mod cni;
mod image;
mod images;
mod logs;
mod metrics;
mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_client::events::{
    ContainerCreate, ContainerDelete, ContainerUpdate, TaskDelete, TaskExit, TaskOom, TaskPaused, TaskResumed, TaskStart,
};
use containerd_client::services::v1::container::Runtime as ContainerRuntimeInfo;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest,
    ExecProcessRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest, ListTasksRequest, MetricsRequest,
    PauseTaskRequest, ResumeTaskRequest, StartRequest, SubscribeRequest, WaitRequest, containers_client::ContainersClient,
    events_client::EventsClient, tasks_client::TasksClient,
};
use containerd_client::types::Mount as PbMount;
use containerd_client::types::v1::{Process, Status as TaskStatus};
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStats, ContainerStatus, ExecOutput, LABEL_DEPLOYMENT, LABEL_INSTANCE, LogChunk, LogOptions,
    PortMapping, RuntimeEvent, RuntimeEventKind, validate_container_name,
};
use diplo_api::fingerprint::RuntimeReport;
use diplo_api::registry::{Reference, RegistryClient, RegistryError};
use diplo_api::runtime::Runtime;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::dir_volumes::{DirVolumes, volume_users};
use super::docker::{describe_error, describe_timeout};
use super::{ContainerRuntime, RuntimeError, RuntimeResult, RuntimeStream, rootfs};
use crate::registry::SharedRegistry;

/// Probes containerd on `socket` (a path, or `unix://path`): available when the
/// `Version` RPC answers within `timeout`; `version` is the one it reports. containerd
/// run by rootlesskit keeps its socket under `/run/user/`, which marks it rootless.
pub async fn probe(socket: &str, timeout: Duration) -> RuntimeReport {
    let endpoint = socket.strip_prefix("unix://").unwrap_or(socket).to_owned();
    let mut report = RuntimeReport {
        runtime: Runtime::Containerd,
        available: false,
        version: String::new(),
        endpoint: endpoint.clone(),
        error: String::new(),
        rootless: endpoint.starts_with("/run/user/"),
    };
    match tokio::time::timeout(timeout, query(&endpoint)).await {
        Ok(Ok(version)) => {
            report.available = true;
            report.version = version;
        }
        Ok(Err(error)) => report.error = format!("no answer from {endpoint}: {error}"),
        Err(_) => report.error = format!("no answer from {endpoint} within {}", describe_timeout(timeout)),
    }
    report
}

async fn query(socket: &str) -> Result<String, String> {
    if !std::path::Path::new(socket).exists() {
        return Err("no such socket".to_owned());
    }
    let channel = containerd_client::connect(socket).await.map_err(|e| describe_error(&e))?;
    let response = VersionClient::new(channel).version(()).await.map_err(|status| {
        let message = status.message().trim();
        if message.is_empty() { format!("{:?}", status.code()) } else { format!("{:?}: {message}", status.code()) }
    })?;
    Ok(response.into_inner().version)
}

/// containerd namespace of everything Diplo creates (never `moby`, Docker's).
pub const NAMESPACE: &str = "diplo";
/// The shim every container runs under.
pub const RUNTIME_NAME: &str = "io.containerd.runc.v2";
/// Snapshotter for images and containers.
pub const SNAPSHOTTER: &str = "overlayfs";
/// Label carrying the container's name (ids are random).
pub const LABEL_NAME: &str = "diplo.name";
/// Container extension holding the `ContainerSpec` (JSON) it was created from.
pub const SPEC_EXTENSION: &str = "diplo.spec";
const SPEC_EXTENSION_TYPE: &str = "diplo.io/ContainerSpec";
/// Default bridge of Diplo's container network.
pub const DEFAULT_BRIDGE: &str = "diplo0";
/// Default subnet of Diplo's container network. Not 10.88.0.0/16: Podman's default
/// network (`podman0`) uses that one on the same hosts.
pub const DEFAULT_SUBNET: &str = "10.89.0.0/16";
/// host-local's allocation store. Host-wide, not per state directory: addresses belong
/// to the bridge, which every Diplo runtime instance on the host shares.
pub const DEFAULT_IPAM_DIR: &str = "/var/lib/cni/networks";
/// The container's log file (CRI format) in its state directory.
const LOG_FILE: &str = "container.log";
/// Where the CNI plugins live on Debian.
pub const DEFAULT_CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// What Diplo remembers of a container beyond containerd's records (`state.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    started_at: Option<String>,
    finished_at: Option<String>,
    exit_code: Option<i64>,
    network: Option<NetworkState>,
}

/// The CNI attachment of a running (or not yet cleaned up) task.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NetworkState {
    result: serde_json::Value,
    ports: Vec<PortMapping>,
    ip: Option<String>,
    /// The plugin types attached (DEL runs the same chain); absent in state written by
    /// earlier versions, which attached [`cni::Network::legacy_chain`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<Vec<String>>,
}

/// containerd through its gRPC API, namespace [`NAMESPACE`]: images pulled client side,
/// containers run by the runc v2 shim, networking by the CNI plugins, state under
/// `state_dir/<id>/` (logs, `/etc` files, `state.json`).
pub struct ContainerdRuntime {
    channel: Channel,
    registry: RegistryClient,
    /// The settings `registry` is brought up to date with before each pull.
    registry_settings: SharedRegistry,
    state_dir: PathBuf,
    snapshotter: String,
    network: cni::Network,
    /// Set once the bridge's `FORWARD` rules are known to be in place.
    forward_rules: tokio::sync::OnceCell<()>,
    create_lock: tokio::sync::Mutex<()>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    cpu_samples: std::sync::Mutex<HashMap<String, (Instant, u64)>>,
    copiers: std::sync::Mutex<HashMap<String, LogCopier>>,
}

/// The task copying a container's FIFOs into its log; `done` turns true at the end.
struct LogCopier {
    handle: tokio::task::JoinHandle<()>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for ContainerdRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdRuntime").field("state_dir", &self.state_dir).field("network", &self.network).finish()
    }
}

/// `message` with the namespace header and, when given, the lease header.
pub(crate) fn request<T>(message: T, lease: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("containerd-namespace", MetadataValue::from_static(NAMESPACE));
    if let Some(lease) = lease
        && let Ok(value) = lease.parse()
    {
        request.metadata_mut().insert("containerd-lease", value);
    }
    request
}

/// A containerd error as a runtime error.
pub(crate) fn grpc_error(status: tonic::Status) -> RuntimeError {
    let message = status.message().trim().to_owned();
    let message = if message.is_empty() { format!("{:?}", status.code()) } else { message };
    match status.code() {
        Code::AlreadyExists => RuntimeError::Conflict(message),
        Code::Unavailable => RuntimeError::Unavailable { runtime: Runtime::Containerd, message },
        _ => RuntimeError::Failed { runtime: Runtime::Containerd, message },
    }
}

pub(crate) fn failed(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed { runtime: Runtime::Containerd, message: message.into() }
}

pub(crate) fn not_found_image(name: &str) -> RuntimeError {
    RuntimeError::NotFound { what: "image", name: name.to_owned() }
}

/// Registry errors as the driver reports them: a missing image is `NotFound`, the rest
/// fails with the registry's message.
impl From<RegistryError> for RuntimeError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::NotFound(image) => not_found_image(&image),
            unauthorized @ RegistryError::Unauthorized(_) => failed(unauthorized.to_string()),
            RegistryError::Unreachable(message) | RegistryError::Failed(message) => failed(message),
        }
    }
}

fn not_found_container(name: &str) -> RuntimeError {
    RuntimeError::NotFound { what: "container", name: name.to_owned() }
}

/// `bytes` random bytes, hex.
pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::fill(&mut buffer[..]);
    hex::encode(buffer)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn is_identifier(id: &str) -> bool {
    !id.is_empty() && id.len() <= 76 && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Directories of a snapshot's mounts, top first (overlay's upper and lower dirs, or a bind's source).
fn rootfs_dirs(mounts: &[PbMount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for mount in mounts {
        match mount.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&mount.source)),
            "overlay" => {
                for option in &mount.options {
                    if let Some(upper) = option.strip_prefix("upperdir=") {
                        dirs.insert(0, PathBuf::from(upper));
                    } else if let Some(lower) = option.strip_prefix("lowerdir=") {
                        dirs.extend(lower.split(':').map(PathBuf::from));
                    }
                }
            }
            _ => {}
        }
    }
    dirs
}

/// How an exec ended: its program exited with a code, or the runtime could not start it.
enum ExecStart {
    Exited(i64),
    Refused(ExecOutput),
}

impl ContainerdRuntime {
    /// Connects to containerd on `socket` (a path or `unix://path`) and checks that it
    /// answers. `state_dir` holds per-container state, logs and CNI allocations.
    /// Pulls use the settings `registry` holds at the time of each pull.
    pub async fn connect(socket: &str, registry: impl Into<SharedRegistry>, state_dir: PathBuf) -> RuntimeResult<Self> {
        let shared: SharedRegistry = registry.into();
        let path = socket.strip_prefix("unix://").unwrap_or(socket).to_owned();
        let unavailable = |message: String| RuntimeError::Unavailable { runtime: Runtime::Containerd, message };
        if !Path::new(&path).exists() {
            return Err(unavailable(format!("no socket at {path}")));
        }
        let channel = tokio::time::timeout(Duration::from_secs(10), containerd_client::connect(&path))
            .await
            .map_err(|_| unavailable(format!("no answer from {path} within 10s")))?
            .map_err(|e| unavailable(format!("cannot connect to {path}: {}", describe_error(&e))))?;
        tokio::time::timeout(Duration::from_secs(10), VersionClient::new(channel.clone()).version(()))
            .await
            .map_err(|_| unavailable(format!("no answer from {path} within 10s")))?
            .map_err(|status| unavailable(format!("{path}: {}", status.message())))?;
        std::fs::create_dir_all(&state_dir).map_err(|e| failed(format!("cannot create state directory {}: {e}", state_dir.display())))?;
        let network = cni::Network {
            name: NAMESPACE.to_owned(),
            bridge: DEFAULT_BRIDGE.to_owned(),
            subnet: DEFAULT_SUBNET.to_owned(),
            plugin_dir: PathBuf::from(DEFAULT_CNI_PLUGIN_DIR),
            ipam_dir: PathBuf::from(DEFAULT_IPAM_DIR),
        };
        ContainerdRuntime {
            channel,
            registry: RegistryClient::new(shared.current(), concat!("diplo-agent/", env!("CARGO_PKG_VERSION")))?,
            registry_settings: shared,
            state_dir,
            snapshotter: SNAPSHOTTER.to_owned(),
            network,
            forward_rules: tokio::sync::OnceCell::new(),
            create_lock: tokio::sync::Mutex::new(()),
            locks: std::sync::Mutex::new(HashMap::new()),
            cpu_samples: std::sync::Mutex::new(HashMap::new()),
            copiers: std::sync::Mutex::new(HashMap::new()),
        }
        .reattached()
        .await?
        .with_forward_rules()
        .await
    }

    /// Installs the bridge's `FORWARD` rules now rather than on the first start; a failure
    /// is only logged here (the first start tries again and reports it).
    async fn with_forward_rules(self) -> RuntimeResult<Self> {
        if let Err(error) = self.ensure_forward_rules().await {
            tracing::warn!(%error, "cannot install the FORWARD rules of the container bridge yet");
        }
        Ok(self)
    }

    /// One-time (per driver and bridge) check that `FORWARD` lets the bridge's traffic
    /// through; replaces the per-container CNI `firewall` plugin.
    async fn ensure_forward_rules(&self) -> RuntimeResult<()> {
        self.forward_rules.get_or_try_init(|| async { self.network.ensure_forward_rules().await.map_err(failed) }).await.map(drop)
    }

    /// Resumes copying the output of containers started by an earlier agent.
    async fn reattached(self) -> RuntimeResult<Self> {
        let tasks = TasksClient::new(self.channel.clone())
            .list(request(ListTasksRequest { filter: String::new() }, None))
            .await
            .map_err(grpc_error)?
            .into_inner()
            .tasks;
        for task in tasks {
            let id = if task.container_id.is_empty() { task.id.clone() } else { task.container_id.clone() };
            let dir = self.container_dir(&id);
            if task.status != TaskStatus::Running as i32 || !is_identifier(&id) || !dir.join("state.json").exists() {
                continue;
            }
            match logs::open_fifos(&dir.join("stdout.fifo"), &dir.join("stderr.fifo")) {
                Ok((out, err)) => self.spawn_log_copier(&id, out, err),
                Err(error) => tracing::warn!(id, %error, "cannot reattach to the output of a running container"),
            }
        }
        Ok(self)
    }

    /// Uses bridge `bridge` with subnet `subnet` (CIDR) instead of the defaults.
    pub fn with_network(mut self, bridge: &str, subnet: &str) -> Self {
        self.network.bridge = bridge.to_owned();
        self.network.subnet = subnet.to_owned();
        // Rules for the new bridge are installed on the first start.
        self.forward_rules = tokio::sync::OnceCell::new();
        self
    }

    /// Keeps host-local's IP allocations in `dir` instead of [`DEFAULT_IPAM_DIR`].
    pub fn with_ipam_dir(mut self, dir: PathBuf) -> Self {
        self.network.ipam_dir = dir;
        self
    }

    /// Uses the CNI plugins in `dir` instead of [`DEFAULT_CNI_PLUGIN_DIR`].
    pub fn with_cni_plugin_dir(mut self, dir: PathBuf) -> Self {
        self.network.plugin_dir = dir;
        self
    }

    /// Where host-local keeps its IP allocations (one file per address, naming its container).
    pub fn ipam_dir(&self) -> PathBuf {
        self.network.ipam_dir.join(&self.network.name)
    }

    /// The pinned network namespace of container `id` (exists while it is started).
    pub fn netns_path(id: &str) -> PathBuf {
        cni::Network::netns_path(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    fn read_state(&self, id: &str) -> State {
        std::fs::read(self.container_dir(id).join("state.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write_state(&self, id: &str, state: &State) -> RuntimeResult<()> {
        let dir = self.container_dir(id);
        let text = serde_json::to_string_pretty(state).map_err(|e| failed(e.to_string()))?;
        // The spec holds the environment (secrets): written 0600 through a fresh temporary name.
        diplo_api::files::write_private(&dir.join("state.json"), &text).map_err(|e| failed(format!("cannot write state of {id}: {e}")))
    }

    fn spawn_log_copier(&self, id: &str, stdout: tokio::net::unix::pipe::Receiver, stderr: tokio::net::unix::pipe::Receiver) {
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let path = self.container_dir(id).join(LOG_FILE);
        let handle = tokio::spawn(async move {
            logs::copy(stdout, stderr, path).await;
            let _ = done_tx.send(true);
        });
        if let Ok(mut copiers) = self.copiers.lock()
            && let Some(previous) = copiers.insert(id.to_owned(), LogCopier { handle, done })
        {
            previous.handle.abort();
        }
    }

    /// Waits up to `limit` for the log copier of `id` to reach the end of the output.
    async fn wait_log_copier(&self, id: &str, limit: Duration) {
        let done = self.copiers.lock().ok().and_then(|copiers| copiers.get(id).map(|c| c.done.clone()));
        if let Some(mut done) = done {
            let _ = tokio::time::timeout(limit, done.wait_for(|d| *d)).await;
        }
    }

    fn stop_log_copier(&self, id: &str) {
        if let Ok(mut copiers) = self.copiers.lock()
            && let Some(copier) = copiers.remove(id)
        {
            copier.handle.abort();
        }
    }

    /// Runs `argv` in the running container `id` (an exec process), its stdin read from
    /// `stdin` (none: empty), and returns its exit code, stdout and stderr, each read up
    /// to `limit` bytes. Output goes through files in the agent's state directory, never
    /// through a path of the container.
    async fn exec_raw(&self, id: &str, argv: &[String], stdin: Option<&[u8]>, limit: usize) -> RuntimeResult<(i64, Vec<u8>, Vec<u8>)> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidArgument { field: "argv", message: "exec needs a command".to_owned() });
        }
        let container = self.container(id).await?;
        let id = container.id.as_str();
        let running = self.task(id).await?.is_some_and(|p| p.status == TaskStatus::Running as i32);
        if !running {
            return Err(RuntimeError::Conflict(format!("container {} is not running", Self::stored_spec(&container).name)));
        }
        let runtime_spec: serde_json::Value =
            container.spec.as_ref().and_then(|any| serde_json::from_slice(&any.value).ok()).unwrap_or_default();
        let process = spec::exec_process(&runtime_spec, argv);
        let exec_id = format!("exec-{}", random_hex(8));
        let dir = self.container_dir(id).join("exec");
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        let (stdout, stderr) = (dir.join(format!("{exec_id}.out")), dir.join(format!("{exec_id}.err")));
        let input = dir.join(format!("{exec_id}.in"));
        let result = async {
            for path in [&stdout, &stderr] {
                std::fs::File::create(path).map_err(|e| failed(format!("cannot create {}: {e}", path.display())))?;
            }
            // The shim copies a regular file to the process's stdin and closes it at its end.
            if let Some(data) = stdin {
                std::fs::write(&input, data).map_err(|e| failed(format!("cannot write {}: {e}", input.display())))?;
            }
            let mut tasks = TasksClient::new(self.channel.clone());
            let exec = ExecProcessRequest {
                container_id: id.to_owned(),
                stdin: if stdin.is_some() { input.display().to_string() } else { String::new() },
                stdout: stdout.display().to_string(),
                stderr: stderr.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: spec::PROCESS_TYPE_URL.to_owned(),
                    value: serde_json::to_vec(&process).map_err(|e| failed(e.to_string()))?,
                }),
                exec_id: exec_id.clone(),
            };
            tasks.exec(request(exec, None)).await.map_err(grpc_error)?;
            let outcome = async {
                let started = tasks.start(request(StartRequest { container_id: id.to_owned(), exec_id: exec_id.clone() }, None)).await;
                match started {
                    Ok(_) => {}
                    // The program could not be started: an exit code, as on every runtime.
                    Err(status) if crate::runtime::output::is_start_failure(status.message()) => {
                        return Ok(ExecStart::Refused(crate::runtime::output::start_failure(status.message())));
                    }
                    Err(status) => return Err(grpc_error(status)),
                }
                let waited = tasks
                    .wait(request(WaitRequest { container_id: id.to_owned(), exec_id: exec_id.clone() }, None))
                    .await
                    .map_err(grpc_error)?;
                Ok::<ExecStart, RuntimeError>(ExecStart::Exited(i64::from(waited.into_inner().exit_status)))
            }
            .await;
            // Deleting the process waits for the shim to finish copying its output.
            let _ =
                tasks.delete_process(request(DeleteProcessRequest { container_id: id.to_owned(), exec_id: exec_id.clone() }, None)).await;
            let exit_code = match outcome? {
                ExecStart::Exited(code) => code,
                ExecStart::Refused(output) => return Ok((output.exit_code, output.stdout, output.stderr)),
            };
            // Each file is read only as far as `limit`.
            let read = |path: &PathBuf| {
                crate::runtime::output::read_span(path, 0, limit)
                    .map(|(data, _)| data)
                    .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))
            };
            Ok((exit_code, read(&stdout)?, read(&stderr)?))
        }
        .await;
        for path in [&stdout, &stderr, &input] {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let mutex = match self.locks.lock() {
            Ok(mut locks) => locks.entry(id.to_owned()).or_default().clone(),
            Err(poisoned) => poisoned.into_inner().entry(id.to_owned()).or_default().clone(),
        };
        mutex.lock_owned().await
    }

    /// A Diplo container by id or name.
    async fn container(&self, id_or_name: &str) -> RuntimeResult<Container> {
        let mut containers = ContainersClient::new(self.channel.clone());
        if is_identifier(id_or_name) {
            match containers.get(request(GetContainerRequest { id: id_or_name.to_owned() }, None)).await {
                Ok(response) => {
                    if let Some(container) = response.into_inner().container
                        && container.labels.contains_key(LABEL_INSTANCE)
                    {
                        return Ok(container);
                    }
                }
                Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {}
                Err(status) => return Err(grpc_error(status)),
            }
        }
        self.find_by_name(id_or_name).await?.ok_or_else(|| not_found_container(id_or_name))
    }

    async fn find_by_name(&self, name: &str) -> RuntimeResult<Option<Container>> {
        if validate_container_name(name).is_err() {
            return Ok(None);
        }
        let filter = format!("labels.\"{LABEL_NAME}\"==\"{name}\",labels.\"{LABEL_INSTANCE}\"");
        let response = ContainersClient::new(self.channel.clone())
            .list(request(ListContainersRequest { filters: vec![filter] }, None))
            .await
            .map_err(grpc_error)?;
        Ok(response.into_inner().containers.into_iter().next())
    }

    /// The named volumes of this agent: directories under `state_dir/volumes`.
    fn volumes(&self) -> DirVolumes {
        DirVolumes::new(self.state_dir.join("volumes"), Runtime::Containerd)
    }

    /// Which containers of the namespace mount each named volume (every container
    /// counts, created or running: removing a volume under a stopped one would lose
    /// its data at its next start).
    async fn volume_users(&self) -> RuntimeResult<std::collections::BTreeMap<String, Vec<String>>> {
        let filter = format!("labels.\"{LABEL_INSTANCE}\"");
        let containers = ContainersClient::new(self.channel.clone())
            .list(request(ListContainersRequest { filters: vec![filter] }, None))
            .await
            .map_err(grpc_error)?
            .into_inner()
            .containers;
        let specs: Vec<ContainerSpec> = containers.iter().map(Self::stored_spec).collect();
        Ok(volume_users(&specs))
    }

    /// The `ContainerSpec` stored with a container.
    fn stored_spec(container: &Container) -> ContainerSpec {
        container.extensions.get(SPEC_EXTENSION).and_then(|any| serde_json::from_slice(&any.value).ok()).unwrap_or_else(|| ContainerSpec {
            name: container.labels.get(LABEL_NAME).cloned().unwrap_or_default(),
            image: container.image.clone(),
            ..Default::default()
        })
    }

    async fn task(&self, id: &str) -> RuntimeResult<Option<Process>> {
        match TasksClient::new(self.channel.clone())
            .get(request(GetRequest { container_id: id.to_owned(), exec_id: String::new() }, None))
            .await
        {
            Ok(response) => Ok(response.into_inner().process),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(grpc_error(status)),
        }
    }

    async fn kill(&self, id: &str, signal: u32, all: bool) -> RuntimeResult<()> {
        let kill = KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal, all };
        match TasksClient::new(self.channel.clone()).kill(request(kill, None)).await {
            Ok(_) => Ok(()),
            // Already exited.
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(status) => Err(grpc_error(status)),
        }
    }

    /// Waits for the task's exit up to `limit`; `true` when it exited.
    async fn wait_exit(&self, id: &str, limit: Duration) -> RuntimeResult<bool> {
        let wait = WaitRequest { container_id: id.to_owned(), exec_id: String::new() };
        let mut tasks = TasksClient::new(self.channel.clone());
        match tokio::time::timeout(limit, tasks.wait(request(wait, None))).await {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(status)) if status.code() == Code::NotFound => Ok(true),
            Ok(Err(status)) => Err(grpc_error(status)),
        }
    }

    /// SIGTERM, `grace`, SIGKILL: returns once the task's process is gone.
    /// Sends the container's stop signal (`stop_signal`, SIGTERM by default), then
    /// SIGKILL when it has not exited within its `stop_grace` (or `grace` without one).
    async fn terminate(&self, id: &str, spec: &ContainerSpec, grace: Duration) -> RuntimeResult<()> {
        let (_, signal) =
            diplo_api::options::stop_signal(spec).map_err(|message| RuntimeError::InvalidArgument { field: "stop_signal", message })?;
        let grace = spec.stop_grace.map_or(grace, |seconds| Duration::from_secs(u64::from(seconds)));
        self.kill(id, u32::try_from(signal).unwrap_or(SIGTERM), false).await?;
        if self.wait_exit(id, grace).await? {
            return Ok(());
        }
        self.kill(id, SIGKILL, true).await?;
        if self.wait_exit(id, Duration::from_secs(30)).await? {
            Ok(())
        } else {
            Err(failed(format!("container {id} did not die within 30s of SIGKILL")))
        }
    }

    /// Deletes an exited (or never started) task, records its exit and detaches the network.
    async fn cleanup_task(&self, id: &str, spec: &ContainerSpec) -> RuntimeResult<()> {
        let delete = DeleteTaskRequest { container_id: id.to_owned() };
        match TasksClient::new(self.channel.clone()).delete(request(delete, None)).await {
            Ok(response) => {
                let response = response.into_inner();
                let mut state = self.read_state(id);
                if state.started_at.is_some() {
                    state.exit_code = Some(i64::from(response.exit_status));
                    state.finished_at = response
                        .exited_at
                        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                        .or_else(|| Some(now_rfc3339()));
                    self.write_state(id, &state)?;
                }
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(grpc_error(status)),
        }
        self.wait_log_copier(id, Duration::from_secs(2)).await;
        self.stop_log_copier(id);
        self.teardown_network(id, spec).await
    }

    /// CNI DEL and namespace removal; a no-op when nothing is attached.
    async fn teardown_network(&self, id: &str, spec: &ContainerSpec) -> RuntimeResult<()> {
        let mut state = self.read_state(id);
        let netns = cni::Network::netns_path(id);
        if state.network.is_none() && !netns.exists() {
            return Ok(());
        }
        let (ports, cached, chain) = match &state.network {
            Some(network) => {
                (network.ports.clone(), Some(network.result.clone()), network.chain.clone().unwrap_or_else(cni::Network::legacy_chain))
            }
            None => (spec.ports.clone(), None, cni::Network::chain(&spec.ports)),
        };
        let deleted = self.network.del(id, &netns, &chain, &ports, cached.as_ref()).await;
        let removed = cni::Network::delete_netns(id).await;
        deleted.map_err(failed)?;
        removed.map_err(failed)?;
        if state.network.take().is_some() && self.container_dir(id).exists() {
            self.write_state(id, &state)?;
        }
        Ok(())
    }

    /// Writes the container's `/etc/hosts` (with the spec's extra hosts entries),
    /// `/etc/resolv.conf` and `/etc/hostname`.
    fn write_etc_files(&self, id: &str, spec: &ContainerSpec, ip: Option<&str>) -> RuntimeResult<()> {
        let name = &spec.name;
        let extra = diplo_api::options::extra_hosts_lines(&spec.extra_hosts)
            .map_err(|refusal| RuntimeError::InvalidArgument { field: refusal.field, message: refusal.message })?;
        let dir = self.container_dir(id);
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let write = |file: &str, text: String| {
            // Rewritten in place: the bind mount follows the inode.
            std::fs::write(dir.join(file), text).map_err(|e| failed(format!("cannot write {file} of {id}: {e}")))
        };
        write("hosts", spec::hosts_file(name, ip, &extra))?;
        write("resolv.conf", spec::resolv_conf(&host_resolv))?;
        write("hostname", format!("{name}\n"))
    }

    async fn create_leased(
        &self,
        lease: &image::Lease,
        id: &str,
        spec: &ContainerSpec,
        reference: &Reference,
        local: &image::LocalImage,
    ) -> RuntimeResult<()> {
        let dir = self.container_dir(id);
        let netns = cni::Network::netns_path(id);
        let volumes = self.volumes().root().to_owned();
        let (hosts, resolv, hostname) = (dir.join("hosts"), dir.join("resolv.conf"), dir.join("hostname"));
        let paths = spec::HostPaths { netns: &netns, hosts: &hosts, resolv_conf: &resolv, hostname: &hostname, volumes: &volumes };
        // Validate before touching anything.
        spec::runtime_spec(id, spec, &local.config, &spec::User::default(), &paths)?;
        for mount in spec.mounts.iter().filter(|m| !m.is_bind()) {
            self.volumes().ensure(&mount.source)?;
        }
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: id.to_owned(),
            parent: local.chain_id.clone(),
            labels: HashMap::new(),
        };
        let mounts = SnapshotsClient::new(self.channel.clone())
            .prepare(request(prepare, Some(&lease.0)))
            .await
            .map_err(grpc_error)?
            .into_inner()
            .mounts;
        // The spec's user wins over the image's.
        let image_user = Some(spec.user.clone())
            .filter(|user| !user.is_empty())
            .or_else(|| local.config.config.as_ref().and_then(|c| c.user.clone()))
            .unwrap_or_default();
        let user = if image_user.is_empty() {
            spec::User::default()
        } else {
            // The image's /etc/passwd and /etc/group, resolved inside the snapshot's layers.
            let layers = rootfs_dirs(&mounts);
            let user = image_user.clone();
            tokio::task::spawn_blocking(move || rootfs::image_user(&layers, &user))
                .await
                .map_err(|e| failed(format!("user resolution task failed: {e}")))?
                .map_err(|message| RuntimeError::InvalidArgument {
                    field: if spec.user.is_empty() { "image" } else { "user" },
                    message: format!("image {reference} user {image_user:?}: {message}"),
                })?
        };
        let runtime_spec = spec::runtime_spec(id, spec, &local.config, &user, &paths)?;
        let mut labels: HashMap<String, String> = spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.insert(LABEL_NAME.to_owned(), spec.name.clone());
        labels.entry(LABEL_INSTANCE.to_owned()).or_insert_with(|| spec.name.clone());
        labels.entry(LABEL_DEPLOYMENT.to_owned()).or_insert_with(|| "direct".to_owned());
        if let Some((key, _)) = labels.iter().find(|(k, v)| k.len() + v.len() > 4096 || k.is_empty()) {
            return Err(RuntimeError::InvalidArgument { field: "labels", message: format!("label {key:?} is empty or too long") });
        }
        let spec_json = serde_json::to_vec(spec).map_err(|e| failed(e.to_string()))?;
        let container = Container {
            id: id.to_owned(),
            labels,
            image: reference.to_string(),
            runtime: Some(ContainerRuntimeInfo { name: RUNTIME_NAME.to_owned(), options: None }),
            spec: Some(prost_types::Any {
                type_url: spec::SPEC_TYPE_URL.to_owned(),
                value: serde_json::to_vec(&runtime_spec).map_err(|e| failed(e.to_string()))?,
            }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: id.to_owned(),
            extensions: HashMap::from([(
                SPEC_EXTENSION.to_owned(),
                prost_types::Any { type_url: SPEC_EXTENSION_TYPE.to_owned(), value: spec_json },
            )]),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(request(CreateContainerRequest { container: Some(container) }, Some(&lease.0)))
            .await
            .map_err(grpc_error)?;
        Ok(())
    }

    async fn remove_snapshot(&self, key: &str) -> RuntimeResult<()> {
        let remove = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.to_owned() };
        match SnapshotsClient::new(self.channel.clone()).remove(request(remove, None)).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(grpc_error(status)),
        }
    }

    async fn start_locked(&self, container: &Container) -> RuntimeResult<()> {
        let id = container.id.as_str();
        let spec = Self::stored_spec(container);
        if let Some(process) = self.task(id).await? {
            match TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown) {
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => return Ok(()),
                _ => self.cleanup_task(id, &spec).await?,
            }
        }
        self.ensure_forward_rules().await?;
        self.teardown_network(id, &spec).await?;
        cni::check_ports_free(&spec.ports).await.map_err(RuntimeError::Conflict)?;
        let dir = self.container_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        if !dir.join("hosts").exists() {
            // The task bind-mounts them; rewritten with the address before it starts.
            self.write_etc_files(id, &spec, None)?;
        }
        let netns = cni::Network::create_netns(id).await.map_err(failed)?;
        let chain = cni::Network::chain(&spec.ports);
        // runc only needs the pinned namespace to exist: attach the network while the task
        // is created, and start the process once both are done.
        let (attached, created) = tokio::join!(self.network.add(id, &netns, &chain, &spec.ports), self.create_task(id));
        let delete_task = || async {
            let _ = TasksClient::new(self.channel.clone()).delete(request(DeleteTaskRequest { container_id: id.to_owned() }, None)).await;
        };
        let result = match attached {
            Ok(result) => result,
            Err(error) => {
                if created.is_ok() {
                    delete_task().await;
                }
                let _ = cni::Network::delete_netns(id).await;
                return Err(failed(error));
            }
        };
        let ip = cni::ip_of(&result);
        let mut state = self.read_state(id);
        let previous_run = (state.started_at.clone(), state.finished_at.clone(), state.exit_code);
        state.network = Some(NetworkState { result, ports: spec.ports.clone(), ip: ip.clone(), chain: Some(chain) });
        // The run is recorded before the task starts: the runtime's start event can make the
        // agent inspect the container before this call returns, and it must see the run.
        state.started_at = Some(now_rfc3339());
        state.finished_at = None;
        state.exit_code = None;
        let started = async {
            self.write_state(id, &state)?;
            let (out_reader, err_reader) = created?;
            self.write_etc_files(id, &spec, ip.as_deref())?;
            self.spawn_log_copier(id, out_reader, err_reader);
            TasksClient::new(self.channel.clone())
                .start(request(StartRequest { container_id: id.to_owned(), exec_id: String::new() }, None))
                .await
                .map_err(grpc_error)?;
            Ok(())
        }
        .await;
        if let Err(error) = started {
            delete_task().await;
            if let Err(cleanup) = self.teardown_network(id, &spec).await {
                tracing::warn!(id, error = %cleanup, "network cleanup after a failed start failed");
            }
            // No run happened: the container keeps the record of its previous one.
            let mut state = self.read_state(id);
            (state.started_at, state.finished_at, state.exit_code) = previous_run;
            if let Err(restore) = self.write_state(id, &state) {
                tracing::warn!(id, error = %restore, "could not restore the state after a failed start");
            }
            return Err(error);
        }
        Ok(())
    }

    /// Creates the output FIFOs and the task (not started); returns the FIFOs' readers.
    async fn create_task(&self, id: &str) -> RuntimeResult<(tokio::net::unix::pipe::Receiver, tokio::net::unix::pipe::Receiver)> {
        let dir = self.container_dir(id);
        let (stdout, stderr) = (dir.join("stdout.fifo"), dir.join("stderr.fifo"));
        for path in [&stdout, &stderr] {
            let _ = std::fs::remove_file(path);
            let output = tokio::process::Command::new("mkfifo")
                .arg("-m")
                .arg("600")
                .arg(path)
                .output()
                .await
                .map_err(|e| failed(format!("cannot run mkfifo: {e}")))?;
            if !output.status.success() {
                return Err(failed(format!("mkfifo {}: {}", path.display(), String::from_utf8_lossy(&output.stderr).trim())));
            }
        }
        // Readers first: the shim's open for writing waits for one.
        let (out_reader, err_reader) =
            logs::open_fifos(&stdout, &stderr).map_err(|e| failed(format!("cannot open the output FIFOs of {id}: {e}")))?;
        let mounts = SnapshotsClient::new(self.channel.clone())
            .mounts(request(MountsRequest { snapshotter: self.snapshotter.clone(), key: id.to_owned() }, None))
            .await
            .map_err(grpc_error)?
            .into_inner()
            .mounts;
        let create = CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts,
            stdin: String::new(),
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            terminal: false,
            ..Default::default()
        };
        TasksClient::new(self.channel.clone()).create(request(create, None)).await.map_err(grpc_error)?;
        Ok((out_reader, err_reader))
    }

    fn info(&self, container: &Container, task: Option<&Process>) -> ContainerInfo {
        let spec = Self::stored_spec(container);
        let state = self.read_state(&container.id);
        let (status, exit_code, pid) = match task {
            Some(process) => match TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown) {
                TaskStatus::Running => (ContainerStatus::Running, 0, Some(process.pid)),
                TaskStatus::Paused | TaskStatus::Pausing => (ContainerStatus::Paused, 0, Some(process.pid)),
                TaskStatus::Created => (ContainerStatus::Created, 0, Some(process.pid)),
                TaskStatus::Stopped => (ContainerStatus::Exited, i64::from(process.exit_status), None),
                TaskStatus::Unknown => (ContainerStatus::Unknown, 0, None),
            },
            None if state.started_at.is_some() => (ContainerStatus::Exited, state.exit_code.unwrap_or(0), None),
            None => (ContainerStatus::Created, 0, None),
        };
        let attached = matches!(status, ContainerStatus::Running | ContainerStatus::Paused);
        ContainerInfo {
            id: container.id.clone(),
            name: container.labels.get(LABEL_NAME).cloned().unwrap_or_else(|| spec.name.clone()),
            image: if spec.image.is_empty() { container.image.clone() } else { spec.image.clone() },
            status,
            exit_code,
            pid: pid.filter(|p| *p != 0),
            ip_address: if attached { state.network.and_then(|n| n.ip) } else { None },
            ports: spec.ports.clone(),
            started_at: state.started_at,
            health: None,
            labels: container.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            // containerd restarts nothing by itself: the control plane starts exited tasks.
            restart_count: 0,
        }
    }

    async fn metrics_sample(&self, id: &str) -> RuntimeResult<metrics::Sample> {
        let response = TasksClient::new(self.channel.clone())
            .metrics(request(MetricsRequest { filters: vec![format!("id=={id}")] }, None))
            .await
            .map_err(grpc_error)?;
        let metric = response.into_inner().metrics.into_iter().find(|m| m.id == id);
        match metric.and_then(|m| m.data) {
            Some(data) => metrics::decode(&data).map_err(failed),
            None => Err(failed(format!("containerd reported no metrics for {id}"))),
        }
    }
}

#[async_trait]
impl ContainerRuntime for ContainerdRuntime {
    fn runtime(&self) -> Runtime {
        Runtime::Containerd
    }

    async fn version(&self) -> RuntimeResult<String> {
        let response = VersionClient::new(self.channel.clone()).version(()).await.map_err(grpc_error)?;
        Ok(response.into_inner().version)
    }

    async fn ensure_image(&self, image: &str) -> RuntimeResult<()> {
        let reference = Reference::parse(image).map_err(|message| RuntimeError::InvalidArgument { field: "image", message })?;
        let lease = self.create_lease().await?;
        let result = self.ensure_local_image(&lease, &reference).await;
        self.delete_lease(lease).await;
        result.map(drop)
    }

    async fn import_image(&self, archive: &Path, reference: &str) -> RuntimeResult<()> {
        let reference = Reference::parse(reference).map_err(|message| RuntimeError::InvalidArgument { field: "reference", message })?;
        self.import_archive(archive, &reference).await
    }

    async fn create(&self, spec: &ContainerSpec) -> RuntimeResult<String> {
        validate_container_name(&spec.name).map_err(|message| RuntimeError::InvalidArgument { field: "name", message })?;
        let reference = Reference::parse(&spec.image).map_err(|message| RuntimeError::InvalidArgument { field: "image", message })?;
        if let Some(port) = spec.ports.iter().find(|p| p.host_port == 0 || p.container_port == 0) {
            return Err(RuntimeError::InvalidArgument {
                field: "ports",
                message: format!("port 0 in {}:{}", port.host_port, port.container_port),
            });
        }
        let _create = self.create_lock.lock().await;
        if self.find_by_name(&spec.name).await?.is_some() {
            return Err(RuntimeError::Conflict(format!("container name {:?} is already in use", spec.name)));
        }
        cni::check_ports_free(&spec.ports).await.map_err(RuntimeError::Conflict)?;
        // One lease from the image to the container record: nothing in between is collected.
        let lease = self.create_lease().await?;
        let local = match self.ensure_local_image(&lease, &reference).await {
            Ok(local) => local,
            Err(error) => {
                self.delete_lease(lease).await;
                return Err(error);
            }
        };
        let id = random_hex(32);
        let dir = self.container_dir(&id);
        let result = async {
            std::fs::create_dir_all(&dir).map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
            self.write_etc_files(&id, spec, None)?;
            self.write_state(&id, &State::default())?;
            self.create_leased(&lease, &id, spec, &reference, &local).await
        }
        .await;
        self.delete_lease(lease).await;
        if let Err(error) = result {
            let _ = self.remove_snapshot(&id).await;
            let _ = std::fs::remove_dir_all(&dir);
            return Err(error);
        }
        Ok(id)
    }

    async fn start(&self, id: &str) -> RuntimeResult<()> {
        let container = self.container(id).await?;
        let _lock = self.lock(&container.id).await;
        self.start_locked(&container).await
    }

    async fn stop(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        let container = self.container(id).await?;
        let id = container.id.as_str();
        let _lock = self.lock(id).await;
        let spec = Self::stored_spec(&container);
        if let Some(process) = self.task(id).await? {
            let status = TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown);
            if matches!(status, TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) {
                self.terminate(id, &spec, grace).await?;
            }
        }
        self.cleanup_task(id, &spec).await
    }

    async fn restart(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        let container = self.container(id).await?;
        self.stop(&container.id, grace).await?;
        self.start(&container.id).await
    }

    async fn remove(&self, id: &str, force: bool) -> RuntimeResult<()> {
        let container = self.container(id).await?;
        let id = container.id.as_str();
        let _lock = self.lock(id).await;
        let spec = Self::stored_spec(&container);
        if let Some(process) = self.task(id).await? {
            let status = TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown);
            if matches!(status, TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing) {
                if !force {
                    return Err(RuntimeError::Conflict(format!("container {} is running: stop it first or force", spec.name)));
                }
                self.kill(id, SIGKILL, true).await?;
                self.wait_exit(id, Duration::from_secs(30)).await?;
            }
        }
        self.cleanup_task(id, &spec).await?;
        match ContainersClient::new(self.channel.clone()).delete(request(DeleteContainerRequest { id: id.to_owned() }, None)).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(grpc_error(status)),
        }
        self.remove_snapshot(id).await?;
        let dir = self.container_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| failed(format!("cannot remove {}: {e}", dir.display())))?;
        }
        self.stop_log_copier(id);
        if let Ok(mut samples) = self.cpu_samples.lock() {
            samples.remove(id);
        }
        if let Ok(mut locks) = self.locks.lock() {
            locks.remove(id);
        }
        Ok(())
    }

    async fn list(&self) -> RuntimeResult<Vec<ContainerInfo>> {
        let filter = format!("labels.\"{LABEL_INSTANCE}\"");
        let containers = ContainersClient::new(self.channel.clone())
            .list(request(ListContainersRequest { filters: vec![filter] }, None))
            .await
            .map_err(grpc_error)?
            .into_inner()
            .containers;
        let tasks = TasksClient::new(self.channel.clone())
            .list(request(ListTasksRequest { filter: String::new() }, None))
            .await
            .map_err(grpc_error)?
            .into_inner()
            .tasks;
        let by_id: HashMap<&str, &Process> =
            tasks.iter().map(|t| (if t.container_id.is_empty() { t.id.as_str() } else { t.container_id.as_str() }, t)).collect();
        let mut infos: Vec<ContainerInfo> = containers.iter().map(|c| self.info(c, by_id.get(c.id.as_str()).copied())).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(infos)
    }

    async fn inspect(&self, id: &str) -> RuntimeResult<ContainerInfo> {
        let container = self.container(id).await?;
        let task = self.task(&container.id).await?;
        Ok(self.info(&container, task.as_ref()))
    }

    async fn logs(&self, id: &str, options: LogOptions) -> RuntimeResult<RuntimeStream<LogChunk>> {
        let container = self.container(id).await?;
        let running = |task: Option<&Process>| {
            task.is_some_and(|p| {
                matches!(
                    TaskStatus::try_from(p.status),
                    Ok(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing | TaskStatus::Created)
                )
            })
        };
        if !running(self.task(&container.id).await?.as_ref()) {
            // The process is gone: let the copier write its last lines first.
            self.wait_log_copier(&container.id, Duration::from_secs(2)).await;
        }
        let path = self.container_dir(&container.id).join(LOG_FILE);
        let lines = options.bounded().tail.unwrap_or(diplo_api::container::DEFAULT_LOG_TAIL);
        let (records, mut offset) = logs::tail(&path, lines).await.map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<RuntimeResult<LogChunk>>(64);
        let channel = self.channel.clone();
        let container_id = container.id.clone();
        let copier_done = self.copiers.lock().ok().and_then(|copiers| copiers.get(&container.id).map(|c| c.done.clone()));
        tokio::spawn(async move {
            for record in records {
                if tx.send(Ok(record.into_chunk(options.timestamps))).await.is_err() {
                    return;
                }
            }
            if !options.follow {
                return;
            }
            let mut tasks = TasksClient::new(channel);
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let task = tasks.get(request(GetRequest { container_id: container_id.clone(), exec_id: String::new() }, None)).await;
                let alive = task.ok().and_then(|r| r.into_inner().process).is_some_and(|p| running(Some(&p)))
                    || copier_done.as_ref().is_some_and(|done| !*done.borrow());
                let more = match logs::read_from(&path, offset).await {
                    Ok((data, end)) => {
                        offset = end;
                        let more = data.len() == logs::READ_STEP;
                        pending.extend_from_slice(&data);
                        let (records, used) = logs::parse_records(&pending);
                        pending.drain(..used);
                        for record in records {
                            if tx.send(Ok(record.into_chunk(options.timestamps))).await.is_err() {
                                return;
                            }
                        }
                        more
                    }
                    Err(e) => {
                        let _ = tx.send(Err(failed(format!("cannot read {}: {e}", path.display())))).await;
                        return;
                    }
                };
                if more {
                    continue;
                }
                if !alive || tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn exec(&self, id: &str, argv: &[String]) -> RuntimeResult<ExecOutput> {
        let (exit_code, stdout, stderr) = self.exec_raw(id, argv, None, diplo_api::container::MAX_OUTPUT_BYTES + 1).await?;
        let mut collected = crate::runtime::output::OutputCollector::default();
        collected.push(diplo_api::container::OutputStream::Stdout, &stdout);
        collected.push(diplo_api::container::OutputStream::Stderr, &stderr);
        Ok(collected.finish(exit_code))
    }

    async fn stats(&self, id: &str) -> RuntimeResult<ContainerStats> {
        let container = self.container(id).await?;
        let id = container.id.as_str();
        let Some(process) = self.task(id).await?.filter(|p| p.status == TaskStatus::Running as i32) else {
            return Ok(ContainerStats::default());
        };
        let now = Instant::now();
        let sample = self.metrics_sample(id).await?;
        let previous = self.cpu_samples.lock().ok().and_then(|samples| samples.get(id).copied());
        let (then, before, now, sample) = match previous.filter(|(at, _)| now.duration_since(*at) < Duration::from_secs(60)) {
            Some((at, cpu)) => (at, cpu, now, sample),
            None => {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let later = Instant::now();
                let second = self.metrics_sample(id).await?;
                (now, sample.cpu_nanos, later, second)
            }
        };
        if let Ok(mut samples) = self.cpu_samples.lock() {
            samples.insert(id.to_owned(), (now, sample.cpu_nanos));
        }
        let wall = now.duration_since(then).as_nanos() as f64;
        let cpu_percent = if wall > 0.0 { sample.cpu_nanos.saturating_sub(before) as f64 / wall * 100.0 } else { 0.0 };
        let (network_rx_bytes, network_tx_bytes) =
            std::fs::read_to_string(format!("/proc/{}/net/dev", process.pid)).map(|text| metrics::network_bytes(&text)).unwrap_or_default();
        Ok(ContainerStats {
            cpu_percent,
            memory_bytes: sample.memory_bytes,
            memory_limit_bytes: sample.memory_limit_bytes,
            network_rx_bytes,
            network_tx_bytes,
        })
    }

    async fn list_images(&self) -> RuntimeResult<Vec<diplo_api::resources::ImageInfo>> {
        self.images().await
    }

    async fn inspect_image(&self, image: &str) -> RuntimeResult<diplo_api::resources::ImageInfo> {
        self.image(image).await
    }

    async fn remove_image(&self, image: &str, force: bool) -> RuntimeResult<()> {
        self.delete_image(image, force).await
    }

    async fn prune_images(&self, _all: bool) -> RuntimeResult<diplo_api::resources::PruneReport> {
        self.prune_unused_images().await
    }

    async fn create_volume(&self, spec: &diplo_api::resources::VolumeSpec) -> RuntimeResult<diplo_api::resources::VolumeInfo> {
        self.volumes().create(spec)
    }

    async fn list_volumes(&self) -> RuntimeResult<Vec<diplo_api::resources::VolumeInfo>> {
        self.volumes().list(&self.volume_users().await?)
    }

    async fn inspect_volume(&self, volume: &str) -> RuntimeResult<diplo_api::resources::VolumeInfo> {
        self.volumes().inspect(volume, &self.volume_users().await?)
    }

    async fn remove_volume(&self, volume: &str) -> RuntimeResult<()> {
        let users = self.volume_users().await?;
        self.volumes().remove(volume, &users)
    }

    async fn prune_volumes(&self) -> RuntimeResult<diplo_api::resources::PruneReport> {
        let users = self.volume_users().await?;
        self.volumes().prune(&users)
    }

    async fn pause(&self, id: &str) -> RuntimeResult<()> {
        let container = self.container(id).await?;
        let id = container.id.as_str();
        let _guard = self.lock(id).await;
        match self.task(id).await?.and_then(|p| TaskStatus::try_from(p.status).ok()) {
            Some(TaskStatus::Paused | TaskStatus::Pausing) => Ok(()),
            Some(TaskStatus::Running) => TasksClient::new(self.channel.clone())
                .pause(request(PauseTaskRequest { container_id: id.to_owned() }, None))
                .await
                .map(drop)
                .map_err(grpc_error),
            _ => Err(RuntimeError::Conflict(format!("container {} is not running", Self::stored_spec(&container).name))),
        }
    }

    async fn unpause(&self, id: &str) -> RuntimeResult<()> {
        let container = self.container(id).await?;
        let id = container.id.as_str();
        let _guard = self.lock(id).await;
        match self.task(id).await?.and_then(|p| TaskStatus::try_from(p.status).ok()) {
            Some(TaskStatus::Paused | TaskStatus::Pausing) => TasksClient::new(self.channel.clone())
                .resume(request(ResumeTaskRequest { container_id: id.to_owned() }, None))
                .await
                .map(drop)
                .map_err(grpc_error),
            _ => Ok(()),
        }
    }

    async fn copy_from(&self, id: &str, path: &str) -> RuntimeResult<Vec<u8>> {
        super::check_copy_path("path", path)?;
        // tar runs inside the container: the path is resolved in its root, never the host's.
        let limit = diplo_api::archive::MAX_ARCHIVE_BYTES;
        let (exit_code, archive, stderr) = self.exec_raw(id, &super::tar_out_argv(path), None, limit + 1).await?;
        if exit_code != 0 {
            return Err(super::tar_failed(Runtime::Containerd, path, exit_code, &stderr));
        }
        if archive.len() > limit {
            return Err(super::archive_too_large(path));
        }
        Ok(archive)
    }

    async fn copy_to(&self, id: &str, dir: &str, archive: Vec<u8>) -> RuntimeResult<()> {
        super::check_copy_path("dir", dir)?;
        diplo_api::archive::check_archive(&archive).map_err(|message| RuntimeError::InvalidArgument { field: "archive", message })?;
        // tar runs inside the container: whatever the archive holds lands in its root.
        let (exit_code, _, stderr) =
            self.exec_raw(id, &super::tar_in_argv(dir), Some(&archive), diplo_api::container::MAX_OUTPUT_BYTES).await?;
        if exit_code != 0 {
            return Err(super::tar_in_failed(Runtime::Containerd, dir, exit_code, &stderr));
        }
        Ok(())
    }

    async fn events(&self) -> RuntimeResult<RuntimeStream<RuntimeEvent>> {
        // Fail now if containerd is away; the subscription itself answers only with its
        // first event (containerd sends no headers before), so it runs in a task of its own.
        VersionClient::new(self.channel.clone()).version(()).await.map_err(grpc_error)?;
        let filters = EVENT_TOPICS.iter().map(|topic| format!("namespace=={NAMESPACE},topic==\"{topic}\"")).collect();
        let (tx, rx) = tokio::sync::mpsc::channel::<RuntimeResult<RuntimeEvent>>(256);
        let mut client = EventsClient::new(self.channel.clone());
        tokio::spawn(async move {
            let subscribed = tokio::select! {
                _ = tx.closed() => return,
                subscribed = client.subscribe(request(SubscribeRequest { filters }, None)) => subscribed,
            };
            let mut stream = match subscribed {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = tx.send(Err(grpc_error(status))).await;
                    return;
                }
            };
            loop {
                let item = tokio::select! {
                    _ = tx.closed() => return,
                    item = stream.message() => item,
                };
                let event = match item {
                    Ok(Some(envelope)) => match runtime_event(envelope) {
                        Some(event) => Ok(event),
                        None => continue,
                    },
                    Ok(None) => return,
                    Err(status) => Err(grpc_error(status)),
                };
                let last = event.is_err();
                if tx.send(event).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// The containerd topics Diplo follows: its tasks' lifecycle (pauses included) and its
/// containers' creation, update and deletion.
const EVENT_TOPICS: [&str; 9] = [
    "/tasks/start",
    "/tasks/exit",
    "/tasks/oom",
    "/tasks/delete",
    "/tasks/paused",
    "/tasks/resumed",
    "/containers/create",
    "/containers/update",
    "/containers/delete",
];

/// A containerd event as a Diplo event, if it is one Diplo follows.
fn runtime_event(envelope: containerd_client::types::Envelope) -> Option<RuntimeEvent> {
    if envelope.namespace != NAMESPACE {
        return None;
    }
    let data = envelope.event?.value;
    let (container_id, kind) = match envelope.topic.as_str() {
        "/tasks/start" => (TaskStart::decode(data.as_slice()).ok()?.container_id, RuntimeEventKind::Start),
        "/tasks/exit" => {
            let exit = TaskExit::decode(data.as_slice()).ok()?;
            // Exec processes exit too; only the container's own process counts.
            if !exit.id.is_empty() && exit.id != exit.container_id {
                return None;
            }
            (exit.container_id, RuntimeEventKind::Die)
        }
        "/tasks/oom" => (TaskOom::decode(data.as_slice()).ok()?.container_id, RuntimeEventKind::Oom),
        "/tasks/delete" => {
            let deleted = TaskDelete::decode(data.as_slice()).ok()?;
            if !deleted.id.is_empty() && deleted.id != deleted.container_id {
                return None;
            }
            (deleted.container_id, RuntimeEventKind::Changed)
        }
        "/tasks/paused" => (TaskPaused::decode(data.as_slice()).ok()?.container_id, RuntimeEventKind::Changed),
        "/tasks/resumed" => (TaskResumed::decode(data.as_slice()).ok()?.container_id, RuntimeEventKind::Changed),
        "/containers/create" => (ContainerCreate::decode(data.as_slice()).ok()?.id, RuntimeEventKind::Changed),
        "/containers/update" => (ContainerUpdate::decode(data.as_slice()).ok()?.id, RuntimeEventKind::Changed),
        "/containers/delete" => (ContainerDelete::decode(data.as_slice()).ok()?.id, RuntimeEventKind::Removed),
        _ => return None,
    };
    Some(RuntimeEvent { container_id, kind })
}

const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_unavailable_at_once() {
        let report = probe("/nonexistent/containerd.sock", Duration::from_secs(2)).await;
        assert!(!report.available);
        assert_eq!(report.error, "no answer from /nonexistent/containerd.sock: no such socket");
    }

    #[tokio::test]
    async fn dead_socket_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let report = probe(&path.display().to_string(), Duration::from_secs(2)).await;
        assert!(!report.available);
        assert_eq!(report.error, format!("no answer from {}: connection refused", path.display()));
    }

    #[tokio::test]
    async fn silent_daemon_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silent.sock");
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let report = probe(&path.display().to_string(), Duration::from_millis(300)).await;
        assert!(!report.available);
        assert_eq!(report.error, format!("no answer from {} within 300ms", path.display()));
    }

    #[test]
    fn rootfs_dirs_read_overlay_and_bind_mounts() {
        let overlay = PbMount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["index=off".into(), "workdir=/w".into(), "upperdir=/u".into(), "lowerdir=/l1:/l2".into()],
        };
        let dirs: Vec<String> = rootfs_dirs(&[overlay]).iter().map(|p| p.display().to_string()).collect();
        assert_eq!(dirs, ["/u", "/l1", "/l2"]);
        let bind = PbMount { r#type: "bind".into(), source: "/fs".into(), target: String::new(), options: vec!["ro".into()] };
        assert_eq!(rootfs_dirs(&[bind]), [PathBuf::from("/fs")]);
        assert!(is_identifier("0123abcd") && !is_identifier("a b") && !is_identifier(""));
    }
}
