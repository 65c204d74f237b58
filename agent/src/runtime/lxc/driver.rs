//! [`LxcRuntime`]: the [`ContainerRuntime`] over LXC's command-line tools.
//!
//! How Diplo's container model maps onto LXC:
//!
//! * **Images** are pulled with `skopeo copy docker://REF oci:CACHE/DIR:latest` into one OCI
//!   layout per reference under the image cache (plain HTTP for insecure and loopback
//!   registries). A container is `lxc-create -t none` plus `umoci raw unpack` of the
//!   layout as its rootfs; the driver then does what LXC's `oci` template would (user,
//!   working directory, environment, `/etc/hostname`, `/etc/hosts`), confined to the
//!   rootfs, and writes every config line through one checked emitter.
//! * **Ids** are container names: LXC has nothing else.
//! * **Command**: LXC splits `lxc.init.cmd` on blanks without honouring quotes, so the argv
//!   (the image's `Entrypoint` + the spec's command or the image's `Cmd`) is kept in the
//!   state file and handed to `lxc-start -d -- ARGV` on every start; it runs as PID 1.
//! * **State**: LXC has no labels, so `diplo.json` next to the container's `config` keeps
//!   the spec (labels included), the resolved argv, the static address and the last start
//!   time. A directory without it is not Diplo's and is never touched.
//! * **Network**: veth on `lxcbr0` with a static address from 10.0.3.100-250 (no DHCP client
//!   needed in the image); ports are published by the agent's [`PortPublisher`] to
//!   `ADDRESS:CONTAINER_PORT` while the container runs.
//! * **Stop**: `lxc.signal.halt = SIGTERM`, then `lxc-stop -t GRACE` (SIGKILL after the
//!   grace period). Like any PID 1, a process without a SIGTERM handler ignores it and is
//!   killed when the grace period ends.
//! * **Exit code**: LXC does not keep it; `lxc-start -o diplo-start.log -l INFO` makes the
//!   monitor log `Child <pid> ended on error (N)` / `ended on signal ...(N)` (128 + N),
//!   which `inspect` reads back.
//! * **Logs**: with a static shell on the host (busybox-static), PID 1's stdout and stderr
//!   go to two FIFOs the agent copies into a timed record file (see `logs.rs`); without
//!   one, the console log (`lxc.console.logfile`, always configured) is read as stdout.
//!   Follow polls the file.
//! * **Events**: [`LxcRuntime::events`] follows `lxc-monitor -P LXCPATH -n '.*'` (state
//!   changes from LXC's monitor, `RUNNING` → `Start`, `STOPPED` → `Die`; its output is
//!   read in lines of at most [`MONITOR_LINE_MAX`] bytes, longer ones are dropped), and
//!   reads the lxcpath directory every second for containers created and removed (no
//!   process is spawned for that). Without `lxc-monitor`, it polls `lxc-ls --running`
//!   every second and emits `Start`/`Die` on transitions (a run shorter than the poll is
//!   noticed from its recorded start time).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStats, ContainerStatus, ExecOutput, LABEL_DEPLOYMENT, LABEL_INSTANCE, LogChunk, LogOptions,
    Protocol, RuntimeEvent, RuntimeEventKind, validate_container_name,
};
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::config::{self, BlockInputs, CgroupVersion, ImageLines, InfoOutput, LxcNetwork, ResolvedMount};
use super::image;
use crate::runtime::dir_volumes::{DirVolumes, volume_users};

mod images;
use super::logs::{self, LogFiles};
use crate::port_publisher::PortPublisher;
use crate::registry::SharedRegistry;
use crate::runtime::docker::{describe_io, describe_timeout};
use crate::runtime::{ContainerRuntime, RuntimeError, RuntimeResult, RuntimeStream, rootfs};

/// `diplo.deployment` of a container created on its own.
const DIRECT_DEPLOYMENT: &str = "direct";
/// Where LXC keeps the config files its templates include.
const LXC_TEMPLATE_CONFIG: &str = "/usr/share/lxc/config";
/// Where LXC keeps containers unless told otherwise.
pub const DEFAULT_LXC_PATH: &str = "/var/lib/lxc";
/// The driver's state file in a container's directory.
pub const STATE_FILE: &str = "diplo.json";
/// The console log (`lxc.console.logfile`) in a container's directory.
pub const CONSOLE_LOG: &str = "console.log";
/// The log of the last `lxc-start` (and its monitor) in a container's directory.
pub const START_LOG: &str = "diplo-start.log";
/// The container's copy of the shim shell, in its directory.
const SHIM_COPY: &str = "diplo-shim";
/// Directory under the LXC path holding address reservations of creates in flight.
const RESERVATIONS: &str = ".diplo-ip-reservations";
/// Directory under the LXC path holding named volumes.
const VOLUMES: &str = ".diplo-volumes";
/// Reservations older than this are left-overs of a crashed agent.
const RESERVATION_TTL: Duration = Duration::from_secs(600);
/// Interval of the event and log-follow polls.
const EVENT_POLL: Duration = Duration::from_secs(1);
const LOG_POLL: Duration = Duration::from_millis(250);
/// How long a log follower waits, after the container ended, for its last output.
const LOG_DRAIN: Duration = Duration::from_millis(600);

/// Creates run one at a time in this process: the name, port and address checks and the
/// `lxc-create` must not interleave.
static CREATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runtime error helpers.
fn failed(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Failed { runtime: Runtime::Lxc, message: message.into() }
}

fn not_found(name: &str) -> RuntimeError {
    RuntimeError::NotFound { what: "container", name: name.to_owned() }
}

/// What the driver remembers about a container (`diplo.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The spec it was created from, labels included.
    spec: ContainerSpec,
    /// What runs as PID 1.
    argv: Vec<String>,
    /// Its static address on the bridge.
    ip: Ipv4Addr,
    /// RFC 3339.
    created_at: String,
    /// RFC 3339 time of the last successful `lxc-start`.
    #[serde(default)]
    started_at: Option<String>,
    /// Output goes to `diplo-log/{stdout,stderr}` through the shim (else: console log).
    #[serde(default)]
    log_files: bool,
}

/// A CPU usage reading: cumulative nanoseconds at an instant.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    usage_ns: u64,
}

/// Drives LXC through `lxc-*` tools and `skopeo`. See the module docs for the mapping.
#[derive(Debug)]
pub struct LxcRuntime {
    lxc_path: PathBuf,
    image_cache: PathBuf,
    registry: SharedRegistry,
    publisher: Arc<PortPublisher>,
    network: LxcNetwork,
    cgroup_root: PathBuf,
    shim: Option<PathBuf>,
    cpu_samples: Mutex<HashMap<String, CpuSample>>,
    pumps: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Set once `FORWARD` lets the bridge's traffic through (containers reach each other).
    forward_rules: tokio::sync::OnceCell<()>,
}

/// Static shells the driver looks for on the host, for the output shim.
pub const SHIM_CANDIDATES: [&str; 3] = ["/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox-static/busybox"];

/// The first of [`SHIM_CANDIDATES`] that is a statically linked executable.
pub fn find_static_shell() -> Option<PathBuf> {
    SHIM_CANDIDATES.iter().map(PathBuf::from).find(|path| is_static_executable(path))
}

/// Whether `path` is an executable ELF file without a program interpreter (statically
/// linked, so it runs in any root filesystem).
pub fn is_static_executable(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::metadata(path) else { return false };
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return false;
    }
    let mut head = vec![0u8; 4096];
    let Ok(read) = std::fs::File::open(path).and_then(|mut f| f.read(&mut head)) else { return false };
    head.truncate(read);
    elf_has_no_interpreter(&head)
}

/// For the first bytes of a 64-bit little-endian ELF file: whether its program headers
/// (which must lie within `head`) lack `PT_INTERP`.
fn elf_has_no_interpreter(head: &[u8]) -> bool {
    let u16_at = |at: usize| head.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| head.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |at: usize| head.get(at..at + 8).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes);
    // Magic, ELFCLASS64, little endian.
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else { return false };
    let Ok(phoff) = usize::try_from(phoff) else { return false };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        // PT_INTERP = 3; a header beyond what we read counts as "cannot tell".
        u32_at(at).is_some_and(|kind| kind != 3)
    })
}

impl LxcRuntime {
    /// A driver for containers under `lxc_path` (normally [`DEFAULT_LXC_PATH`]) keeping
    /// pulled images under `image_cache`, publishing ports with `publisher`. Pulls use
    /// the settings `registry` holds at the time of each pull.
    pub fn new(lxc_path: PathBuf, image_cache: PathBuf, registry: impl Into<SharedRegistry>, publisher: Arc<PortPublisher>) -> Self {
        LxcRuntime {
            lxc_path,
            image_cache,
            registry: registry.into(),
            publisher,
            network: LxcNetwork::default(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            shim: find_static_shell(),
            cpu_samples: Mutex::new(HashMap::new()),
            pumps: Mutex::new(HashMap::new()),
            forward_rules: tokio::sync::OnceCell::new(),
        }
    }

    /// One-time (per driver) check that the filter table's `FORWARD` chain lets the
    /// bridge's traffic through, as the containerd driver does for its own bridge: a
    /// stack's services on one node reach each other across the bridge.
    async fn ensure_forward_rules(&self) -> RuntimeResult<()> {
        let network = &self.network;
        let mask = u32::MAX.checked_shl(32 - u32::from(network.prefix.min(32))).unwrap_or(0);
        let subnet = format!("{}/{}", std::net::Ipv4Addr::from(u32::from(network.gateway) & mask), network.prefix);
        self.forward_rules
            .get_or_try_init(|| async {
                crate::runtime::containerd::cni::ensure_bridge_forward_rules(&network.bridge, &subnet).await.map_err(failed)
            })
            .await
            .map(drop)
    }

    /// Uses `shell` (a statically linked `sh`, or `None` for the console log only) as the
    /// output shim of containers created from now on. By default the first static
    /// busybox of [`SHIM_CANDIDATES`].
    #[must_use]
    pub fn with_shim(mut self, shell: Option<PathBuf>) -> Self {
        self.shim = shell;
        self
    }

    /// The OCI layout directory `reference` is (or would be) cached in.
    pub fn image_layout(&self, reference: &str) -> PathBuf {
        self.image_cache.join(image::cache_dir_name(reference))
    }

    /// Uses another bridge network and static range than `lxc-net`'s defaults.
    #[must_use]
    pub fn with_network(mut self, network: LxcNetwork) -> Self {
        self.network = network;
        self
    }

    /// The LXC path containers live under.
    pub fn lxc_path(&self) -> &Path {
        &self.lxc_path
    }

    /// The port publisher.
    pub fn publisher(&self) -> &Arc<PortPublisher> {
        &self.publisher
    }

    /// Takes over the running Diplo containers after an agent restart: publishes their
    /// ports again (the publisher starts empty) and resumes timing their output. With
    /// `node_id`, only containers labelled `diplo.node` = `node_id` are taken over (other
    /// agents may share this LXC path). Returns how many containers it covered.
    pub async fn resume_running(&self, node_id: Option<&str>) -> RuntimeResult<usize> {
        let mut count = 0;
        for name in owned_names(&self.lxc_path) {
            let Ok(state) = self.load(&name) else { continue };
            if node_id.is_some_and(|own| state.spec.labels.get(diplo_api::container::LABEL_NODE).map(String::as_str) != Some(own)) {
                continue;
            }
            let Ok(info) = self.info(&name).await else { continue };
            // A frozen container keeps its ports: it runs again once thawed.
            if !matches!(info.state.as_str(), "RUNNING" | "FROZEN" | "FREEZING") {
                continue;
            }
            self.publish_ports(&state).await?;
            if let Some(slot) = self.start_pump(&state) {
                slot.store(info.pid.unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
            }
            count += 1;
        }
        Ok(count)
    }

    fn log_files(&self, state: &State) -> LogFiles {
        let dir = self.dir(&state.spec.name);
        if state.log_files { LogFiles::records(&dir) } else { LogFiles::console(&dir.join(CONSOLE_LOG)) }
    }

    /// Starts copying a container's output FIFOs into its record file (replacing an
    /// earlier pump); returns the slot to put init's pid into once known.
    fn start_pump(&self, state: &State) -> Option<logs::PidSlot> {
        let LogFiles::Records { fifos, records } = self.log_files(state) else { return None };
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let slot: logs::PidSlot = Arc::default();
        let name = state.spec.name.clone();
        let pid = Arc::clone(&slot);
        let task = handle.spawn(async move {
            if let Err(error) = logs::pump(fifos, records, pid).await {
                warn!(name, error = %describe_io(&error), "cannot copy the container's output");
            }
        });
        let mut pumps = self.pumps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pumps.retain(|_, task| !task.is_finished());
        if let Some(old) = pumps.insert(state.spec.name.clone(), task) {
            old.abort();
        }
        Some(slot)
    }

    /// When the pump of a container that is no longer running is still draining, waits
    /// (briefly) until it is done, so that logs read now hold the last output.
    async fn await_pump_if_ended(&self, name: &str) {
        let active = |pumps: &HashMap<String, tokio::task::JoinHandle<()>>| pumps.get(name).is_some_and(|t| !t.is_finished());
        if !active(&self.pumps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            return;
        }
        if self.info(name).await.is_ok_and(|i| i.state == "RUNNING") {
            return;
        }
        let deadline = Instant::now() + LOG_DRAIN;
        while Instant::now() < deadline && active(&self.pumps.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop_pump(&self, name: &str) {
        let mut pumps = self.pumps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(task) = pumps.remove(name) {
            task.abort();
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.lxc_path.join(name)
    }

    /// `-n NAME -P LXC_PATH` followed by `rest`.
    /// Runs `argv` attached inside the running container `id` with `stdin` as its input,
    /// its stdout read up to `limit` (see [`run_piped`](crate::runtime::output::run_piped)).
    async fn attach_piped(
        &self,
        id: &str,
        argv: &[String],
        stdin: Option<Vec<u8>>,
        limit: usize,
    ) -> RuntimeResult<crate::runtime::output::PipedOutput> {
        let state = self.load(id)?;
        let name = &state.spec.name;
        if self.info(name).await?.state != "RUNNING" {
            return Err(RuntimeError::Conflict(format!("container {name} is not running")));
        }
        let mut args = self.args(name, &["--clear-env", "--"]);
        args.extend(argv.iter().map(OsString::from));
        let mut command = tokio::process::Command::new("lxc-attach");
        command.args(&args);
        match crate::runtime::output::run_piped(command, stdin, limit).await {
            Ok(output) => Ok(output),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(RuntimeError::Unavailable { runtime: Runtime::Lxc, message: "lxc-attach not found on PATH".to_owned() })
            }
            Err(error) => Err(failed(format!("cannot run lxc-attach: {}", describe_io(&error)))),
        }
    }

    fn args(&self, name: &str, rest: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["-n".into(), name.into(), "-P".into(), self.lxc_path.clone().into_os_string()];
        args.extend(rest.iter().map(OsString::from));
        args
    }

    /// The state of a Diplo container; `NotFound` for anything else.
    fn load(&self, id: &str) -> RuntimeResult<State> {
        if validate_container_name(id).is_err() {
            return Err(not_found(id));
        }
        load_state(&self.dir(id)).ok_or_else(|| not_found(id))
    }

    fn save(&self, state: &State) -> RuntimeResult<()> {
        let dir = self.dir(&state.spec.name);
        let text =
            serde_json::to_string_pretty(state).map_err(|e| failed(format!("cannot encode the state of {}: {e}", state.spec.name)))?;
        // The spec holds the environment (secrets): written 0600 through a fresh temporary name.
        diplo_api::files::write_private(&dir.join(STATE_FILE), &text)
            .map_err(|e| failed(format!("cannot write {}: {}", dir.join(STATE_FILE).display(), describe_io(&e))))
    }

    async fn info(&self, name: &str) -> RuntimeResult<InfoOutput> {
        info_at(&self.lxc_path, name).await
    }

    /// Makes `reference` present in the cache; returns its layout directory.
    async fn pull(&self, reference: &str) -> RuntimeResult<PathBuf> {
        let layout = self.image_cache.join(image::cache_dir_name(reference));
        if image::layout_present(&layout) {
            return Ok(layout);
        }
        let settings = self.registry.current();
        let registry = image::registry_of(reference).unwrap_or(diplo_api::registry::DOCKER_HUB);
        let source = image::skopeo_source(reference);
        let mut args: Vec<&str> = vec!["copy", "--quiet"];
        if settings.is_insecure(registry) {
            args.push("--src-tls-verify=false");
        }
        // The credential goes to skopeo in a 0600 file removed after the copy, never on argv.
        let authfile = match settings.credential(registry) {
            Some(credential) => Some(image::AuthFile::write(&self.image_cache, registry, credential)?),
            None => None,
        };
        let authfile_arg = authfile.as_ref().map(|file| format!("--src-authfile={}", file.path().display()));
        if let Some(arg) = &authfile_arg {
            args.push(arg);
        }
        args.push(&source);
        let filled = self.fill_layout(&layout, &[args], reference, false).await;
        drop(authfile);
        filled?;
        Ok(layout)
    }

    /// Runs the first `skopeo` argv (with `oci:TMP:latest` appended) that succeeds, then
    /// moves the temporary layout to `layout`. What is there already is kept (a pull
    /// that lost a race) or, with `replace` (an import), swapped out.
    async fn fill_layout(&self, layout: &Path, attempts: &[Vec<&str>], reference: &str, replace: bool) -> RuntimeResult<()> {
        std::fs::create_dir_all(&self.image_cache)
            .map_err(|e| failed(format!("cannot create the image cache {}: {}", self.image_cache.display(), describe_io(&e))))?;
        let tmp = self.image_cache.join(format!(".tmp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        let destination = format!("oci:{}:{}", tmp.display(), image::CACHE_TAG);
        let mut messages = Vec::new();
        let mut not_found_seen = false;
        for attempt in attempts {
            let mut args: Vec<OsString> = attempt.iter().map(OsString::from).collect();
            args.push(destination.clone().into());
            let output = run_tool("skopeo", &args, Some(Duration::from_secs(1800))).await;
            let output = match output {
                Ok(output) => output,
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&tmp);
                    return Err(error);
                }
            };
            if output.status.success() {
                messages.clear();
                break;
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = image::skopeo_message(&stderr);
            if crate::runtime::docker_api::means_unauthorized(&stderr) {
                let _ = std::fs::remove_dir_all(&tmp);
                let message =
                    if message.to_ascii_lowercase().contains("unauthorized") { message } else { format!("unauthorized: {message}") };
                return Err(failed(format!("cannot get image {reference}: {message}")));
            }
            not_found_seen |= image::is_not_found(&stderr);
            messages.push(message);
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if !messages.is_empty() {
            let _ = std::fs::remove_dir_all(&tmp);
            if not_found_seen {
                return Err(RuntimeError::NotFound { what: "image", name: reference.to_owned() });
            }
            return Err(failed(format!("cannot get image {reference}: {}", messages.join("; "))));
        }
        // Which reference the layout holds, for the image list (best effort: a layout without it is listed untagged).
        let _ = std::fs::write(tmp.join(images::REFERENCE_FILE), image::normalize_reference(reference));
        self.install_layout(&tmp, layout, replace)
    }

    /// Moves the complete layout `tmp` to `layout` (see [`Self::fill_layout`]).
    fn install_layout(&self, tmp: &Path, layout: &Path, replace: bool) -> RuntimeResult<()> {
        let mut old = None;
        if image::layout_present(layout) {
            if !replace {
                let _ = std::fs::remove_dir_all(tmp);
                return Ok(());
            }
            // Swap, then delete: there is no moment without a layout.
            let aside = self.image_cache.join(format!(".old-{}-{:08x}", std::process::id(), rand::random::<u32>()));
            if std::fs::rename(layout, &aside).is_ok() {
                old = Some(aside);
            }
        }
        let moved = std::fs::rename(tmp, layout);
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(old);
        }
        if let Err(error) = moved {
            let _ = std::fs::remove_dir_all(tmp);
            // Someone else filled it meanwhile.
            if !image::layout_present(layout) {
                return Err(failed(format!("cannot move the image into {}: {}", layout.display(), describe_io(&error))));
            }
        }
        Ok(())
    }

    /// Caches a root filesystem tarball (plain or gzip) as a one-layer image in `layout`.
    async fn import_rootfs(&self, archive: &Path, layout: &Path) -> RuntimeResult<()> {
        let tmp = self.image_cache.join(format!(".tmp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        let result = async {
            std::fs::create_dir_all(&tmp).map_err(|e| failed(format!("cannot create {}: {}", tmp.display(), describe_io(&e))))?;
            let mut tarball = archive.to_path_buf();
            if image::is_gzip(archive) {
                tarball = tmp.join(".rootfs.tar");
                let output = std::fs::File::create(&tarball)
                    .map_err(|e| failed(format!("cannot create {}: {}", tarball.display(), describe_io(&e))))?;
                let mut command = tokio::process::Command::new("gzip");
                command
                    .arg("-dc")
                    .arg("--")
                    .arg(archive)
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(output))
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let done = finish("gzip", command, Some(Duration::from_secs(1800))).await?;
                if !done.status.success() {
                    return Err(RuntimeError::InvalidArgument {
                        field: "archive",
                        message: format!(
                            "{} is not a readable gzip archive: {}",
                            archive.display(),
                            String::from_utf8_lossy(&done.stderr).trim()
                        ),
                    });
                }
            }
            let (archive_owned, tmp_owned, tarball_owned) = (archive.to_path_buf(), tmp.clone(), tarball.clone());
            tokio::task::spawn_blocking(move || {
                check_tar(&tarball_owned).map_err(|message| RuntimeError::InvalidArgument {
                    field: "archive",
                    message: format!("{} is neither an image archive nor a root filesystem tarball: {message}", archive_owned.display()),
                })?;
                image::write_rootfs_layout(&tmp_owned, &tarball_owned)
                    .map_err(|e| failed(format!("cannot write an image layout to {}: {}", tmp_owned.display(), describe_io(&e))))
            })
            .await
            .map_err(|e| failed(format!("import task failed: {e}")))??;
            if tarball != archive {
                let _ = std::fs::remove_file(&tarball);
            }
            self.install_layout(&tmp, layout, true)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Host ports of `spec` must not be published, reserved by another Diplo container, or
    /// bound by anything on the host.
    fn check_ports(&self, spec: &ContainerSpec) -> RuntimeResult<()> {
        if spec.ports.is_empty() {
            return Ok(());
        }
        let mut reserved: HashMap<(u16, Protocol), String> = HashMap::new();
        for name in owned_names(&self.lxc_path) {
            if name == spec.name {
                continue;
            }
            if let Some(state) = load_state(&self.dir(&name)) {
                for port in &state.spec.ports {
                    reserved.insert((port.host_port, port.protocol), name.clone());
                }
            }
        }
        for port in &spec.ports {
            let shown = format!("{}/{}", port.host_port, config::protocol_name(port.protocol));
            if let Some(owner) =
                self.publisher.owner_of(port.host_port, port.protocol).or_else(|| reserved.get(&(port.host_port, port.protocol)).cloned())
            {
                return Err(RuntimeError::Conflict(format!("host port {shown} is already in use (published for container {owner})")));
            }
            let bound = match port.protocol {
                Protocol::Tcp => std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port.host_port)).map(drop),
                Protocol::Udp => std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port.host_port)).map(drop),
            };
            match bound {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                    return Err(RuntimeError::Conflict(format!("host port {shown} is already in use")));
                }
                Err(error) => {
                    return Err(RuntimeError::InvalidArgument {
                        field: "ports",
                        message: format!("cannot bind host port {shown}: {}", describe_io(&error)),
                    });
                }
            }
        }
        Ok(())
    }

    /// The named volumes: directories under `<lxcpath>/.diplo-volumes`.
    fn volumes(&self) -> DirVolumes {
        DirVolumes::new(self.lxc_path.join(VOLUMES), Runtime::Lxc)
    }

    /// Which of Diplo's containers (created, stopped or running) mount each named volume.
    fn volume_users(&self) -> BTreeMap<String, Vec<String>> {
        let states: Vec<State> = owned_names(&self.lxc_path).iter().filter_map(|name| load_state(&self.lxc_path.join(name))).collect();
        volume_users(states.iter().map(|state| &state.spec))
    }

    /// Bind sources (must exist) and volume directories (created) of `spec`.
    fn resolve_mounts(&self, spec: &ContainerSpec) -> RuntimeResult<Vec<ResolvedMount>> {
        let mut mounts = Vec::new();
        for mount in &spec.mounts {
            let target =
                config::relative_target(&mount.target).map_err(|message| RuntimeError::InvalidArgument { field: "mounts", message })?;
            let (source, is_file) = if mount.is_bind() {
                let source = PathBuf::from(&mount.source);
                let metadata = std::fs::metadata(&source).map_err(|e| RuntimeError::InvalidArgument {
                    field: "mounts",
                    message: format!("bind source {}: {}", source.display(), describe_io(&e)),
                })?;
                (source, !metadata.is_dir())
            } else {
                (self.volumes().ensure(&mount.source)?, false)
            };
            mounts.push(ResolvedMount { requested: mount.target.clone(), source, target, read_only: mount.read_only, is_file });
        }
        Ok(mounts)
    }

    /// Picks a free static address and reserves it (a file under the LXC path) until
    /// the guard drops; by then the container's config carries it.
    fn reserve_ip(&self) -> RuntimeResult<(Ipv4Addr, Reservation)> {
        let mut used = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&self.lxc_path) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path().join("config")) {
                    used.extend(config::config_ipv4_addresses(&text));
                }
            }
        }
        let reservations = self.lxc_path.join(RESERVATIONS);
        std::fs::create_dir_all(&reservations)
            .map_err(|e| failed(format!("cannot create {}: {}", reservations.display(), describe_io(&e))))?;
        if let Ok(entries) = std::fs::read_dir(&reservations) {
            for entry in entries.flatten() {
                let fresh = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() < RESERVATION_TTL);
                match entry.file_name().to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) {
                    Some(ip) if fresh => {
                        used.insert(ip);
                    }
                    Some(_) => {
                        let _ = std::fs::remove_file(entry.path());
                    }
                    None => {}
                }
            }
        }
        let cursor = reservations.join(".last");
        let last = std::fs::read_to_string(&cursor).ok().and_then(|t| t.trim().parse().ok());
        loop {
            let ip = self
                .network
                .pick(&used, last)
                .ok_or_else(|| RuntimeError::Conflict(format!("no free address left in {}-{}", self.network.first, self.network.last)))?;
            let path = reservations.join(ip.to_string());
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => {
                    let _ = std::fs::write(&cursor, ip.to_string());
                    return Ok((ip, Reservation(path)));
                }
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    used.insert(ip);
                }
                Err(error) => return Err(failed(format!("cannot reserve {ip}: {}", describe_io(&error)))),
            }
        }
    }

    /// Unpacks the image `layout` into the container's rootfs with `umoci raw unpack`
    /// (`--rootless` when the agent is not root, as LXC's `oci` template does).
    async fn unpack(&self, layout: &Path, rootfs: &Path, reference: &str) -> RuntimeResult<()> {
        let image = format!("{}:{}", layout.display(), image::CACHE_TAG);
        let mut args: Vec<OsString> = vec!["--log=error".into(), "raw".into(), "unpack".into()];
        if rootless() {
            args.push("--rootless".into());
        }
        args.extend([OsString::from("--image"), image.into(), rootfs.into()]);
        let output = run_tool("umoci", &args, Some(Duration::from_secs(1800))).await?;
        if !output.status.success() {
            return Err(failed(format!("cannot unpack image {reference}: {}", config::tool_error(&output.stderr))));
        }
        // umoci applies the mode of the layers' `./` entry to the root (often 0700, the
        // mode of the directory an image was made from); Docker, Podman and containerd
        // give a container's root 0755 whatever the image says, and so does this driver,
        // or an image whose user is not root could not reach its own files.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| failed(format!("cannot set the mode of {}: {}", rootfs.display(), describe_io(&e))))?;
        Ok(())
    }

    /// Everything after `lxc-create -t none`: the rootfs unpacked from the image, the
    /// image's user resolved in it, `/etc/hostname` and `/etc/hosts`, mount points, the
    /// config block, resolv.conf, the state file. What LXC's `oci` template would do, but
    /// confined to the rootfs (see [`rootfs`]) and with every config value checked.
    async fn configure(
        &self,
        spec: &ContainerSpec,
        layout: &Path,
        argv: Vec<String>,
        ip: Ipv4Addr,
        mounts: &[ResolvedMount],
    ) -> RuntimeResult<()> {
        let dir = self.dir(&spec.name);
        let rootfs = dir.join("rootfs");
        let invalid = |field: &'static str| move |message: String| RuntimeError::InvalidArgument { field, message };
        let config_path = dir.join("config");
        let mut config = std::fs::read_to_string(&config_path)
            .map_err(|e| failed(format!("cannot read {}: {}", config_path.display(), describe_io(&e))))?;
        self.unpack(layout, &rootfs, &spec.image).await?;
        let settings = image::run_settings(layout).map_err(|e| failed(format!("image {}: {e}", spec.image)))?;
        // The spec's user and working directory win over the image's.
        let user_field = if spec.user.is_empty() { "image" } else { "user" };
        let user = {
            let wanted = if spec.user.is_empty() { settings.user.clone() } else { spec.user.clone() };
            let (rootfs, name, user) = (rootfs.clone(), spec.name.clone(), wanted);
            let extra =
                diplo_api::options::extra_hosts_lines(&spec.extra_hosts).map_err(|refusal| invalid(refusal.field)(refusal.message))?;
            tokio::task::spawn_blocking(move || -> Result<rootfs::User, String> {
                let resolved = rootfs::image_user(std::slice::from_ref(&rootfs), &user).map_err(|e| format!("user {user:?}: {e}"))?;
                rootfs::write_file(&rootfs, "/etc/hostname", format!("{name}\n").as_bytes())?;
                rootfs::write_file(&rootfs, "/etc/hosts", image::hosts_file(&name, &extra).as_bytes())?;
                Ok(resolved)
            })
            .await
            .map_err(|e| failed(format!("rootfs task failed: {e}")))?
            .map_err(|message| RuntimeError::InvalidArgument { field: user_field, message: format!("image {}: {message}", spec.image) })?
        };
        let mut mounts = mounts.to_vec();
        let state = State { spec: spec.clone(), argv, ip, created_at: now_rfc3339(), started_at: None, log_files: self.shim.is_some() };
        if let Some(shim) = &self.shim {
            let files = self.log_files(&state);
            let owner = Some((user.uid, user.gid)).filter(|o| *o != (0, 0));
            files.prepare(owner).await.map_err(|e| failed(format!("cannot create the log files of {}: {}", spec.name, describe_io(&e))))?;
            // A copy of its own: a container able to remount the bind writable changes
            // nothing on the host.
            let copy = dir.join(SHIM_COPY);
            std::fs::copy(shim, &copy).map_err(|e| failed(format!("cannot copy the shim {}: {}", shim.display(), describe_io(&e))))?;
            let relative = |path: &str| path.trim_start_matches('/').to_owned();
            mounts.push(ResolvedMount {
                requested: logs::CONTAINER_SHIM.to_owned(),
                source: copy,
                target: relative(logs::CONTAINER_SHIM),
                read_only: true,
                is_file: true,
            });
            mounts.push(ResolvedMount {
                requested: logs::CONTAINER_LOG_DIR.to_owned(),
                source: dir.join(logs::LOG_DIR),
                target: relative(logs::CONTAINER_LOG_DIR),
                read_only: false,
                is_file: false,
            });
        }
        // Mount points are created now (confined to the rootfs, symlinks resolved inside
        // it) because LXC cannot create them in a read-only rootfs.
        let mut resolved_mounts = Vec::new();
        for mount in &mounts {
            let target = prepare_target(&rootfs, &mount.target, mount.is_file).map_err(invalid("mounts"))?;
            resolved_mounts.push(ResolvedMount { target, ..mount.clone() });
        }
        let mut tmpfs = Vec::new();
        for entry in &spec.tmpfs {
            let relative = config::relative_target(diplo_api::options::split_tmpfs(entry).0).map_err(invalid("tmpfs"))?;
            tmpfs.push((entry.clone(), prepare_target(&rootfs, &relative, false).map_err(invalid("tmpfs"))?));
        }
        let console_log = dir.join(CONSOLE_LOG);
        let included: &[&str] =
            if rootless() { &["common.conf", "userns.conf", "oci.common.conf"] } else { &["common.conf", "oci.common.conf"] };
        let includes: Vec<PathBuf> =
            included.iter().map(|name| Path::new(LXC_TEMPLATE_CONFIG).join(name)).filter(|path| path.is_file()).collect();
        let cwd = if spec.working_dir.is_empty() {
            rootfs::working_dir(&settings.working_dir)
                .map_err(|message| RuntimeError::InvalidArgument { field: "image", message: format!("image {}: {message}", spec.image) })?
        } else {
            // Created when missing (inside the rootfs), as the other runtimes do.
            let relative = config::relative_target(&spec.working_dir).map_err(invalid("working_dir"))?;
            prepare_target(&rootfs, &relative, false).map_err(invalid("working_dir"))?;
            rootfs::working_dir(&spec.working_dir).map_err(invalid("working_dir"))?
        };
        let image_lines = ImageLines { rootfs: &rootfs, includes: &includes, env: &settings.env, uid: user.uid, gid: user.gid, cwd: &cwd };
        let inputs = BlockInputs {
            cgroup: CgroupVersion::detect(&self.cgroup_root),
            network: &self.network,
            ip,
            console_log: &console_log,
            mounts: &resolved_mounts,
            tmpfs: &tmpfs,
            image: &image_lines,
        };
        let block = config::config_block(spec, &inputs)?;
        config.push_str(&block);
        std::fs::write(&config_path, config).map_err(|e| failed(format!("cannot write {}: {}", config_path.display(), describe_io(&e))))?;
        write_resolv_conf(&rootfs, self.network.gateway);
        self.save(&state)
    }

    /// What `lxc-start` runs: the argv itself, or through the output shim with its
    /// program resolved in the rootfs (the shim's busybox would otherwise prefer its own
    /// applet of the same name).
    fn launch_argv(&self, state: &State) -> RuntimeResult<Vec<String>> {
        if !state.log_files {
            return Ok(state.argv.clone());
        }
        let dir = self.dir(&state.spec.name);
        let config = std::fs::read_to_string(dir.join("config")).unwrap_or_default();
        let program = state.argv.first().map_or("/bin/sh", String::as_str);
        let path_var = config::config_path_variable(&config);
        let resolved = resolve_executable(&dir.join("rootfs"), program, &path_var).ok_or_else(|| {
            failed(format!("cannot start {}: executable file {program:?} not found in the image (PATH {path_var})", state.spec.name))
        })?;
        let mut argv = vec![logs::CONTAINER_SHIM.to_owned(), "-c".to_owned(), logs::shim_script(), "diplo-init".to_owned(), resolved];
        argv.extend(state.argv.iter().skip(1).cloned());
        Ok(argv)
    }

    /// Stops (kill), destroys and deletes whatever is left of container `name`.
    async fn destroy_quietly(&self, name: &str) {
        let _ = run_tool("lxc-stop", &self.args(name, &["-k"]), Some(Duration::from_secs(60))).await;
        match run_tool("lxc-destroy", &self.args(name, &["-f"]), Some(Duration::from_secs(120))).await {
            Ok(output) if !output.status.success() => debug!(name, error = %config::tool_error(&output.stderr), "lxc-destroy failed"),
            Err(error) => debug!(name, %error, "lxc-destroy failed"),
            Ok(_) => {}
        }
        let dir = self.dir(name);
        if dir.exists()
            && let Err(error) = std::fs::remove_dir_all(&dir)
        {
            warn!(name, error = %describe_io(&error), "cannot delete {}", dir.display());
        }
    }

    /// Drops the host's neighbour (ARP) entry for `ip` on the bridge: it may still hold
    /// the MAC address of an earlier container with this address, and the host would
    /// send to it until the entry expires. Best effort (`ip neigh flush`).
    async fn forget_neighbour(&self, ip: Ipv4Addr) {
        let args: Vec<OsString> =
            ["neigh", "flush", "to", &ip.to_string(), "dev", &self.network.bridge].iter().map(OsString::from).collect();
        match run_tool("ip", &args, Some(Duration::from_secs(10))).await {
            Ok(output) if !output.status.success() => {
                debug!(%ip, error = %String::from_utf8_lossy(&output.stderr).trim(), "ip neigh flush failed")
            }
            Err(error) => debug!(%ip, %error, "cannot run ip neigh flush"),
            Ok(_) => {}
        }
    }

    /// (Re)publishes the ports of a running container.
    async fn publish_ports(&self, state: &State) -> RuntimeResult<()> {
        let name = &state.spec.name;
        self.publisher.unpublish_owner(name).await;
        for port in &state.spec.ports {
            let target = SocketAddr::new(IpAddr::V4(state.ip), port.container_port);
            if let Err(error) = self.publisher.publish_for(name, port.host_port, port.protocol, target) {
                self.publisher.unpublish_owner(name).await;
                let shown = format!("{}/{}", port.host_port, config::protocol_name(port.protocol));
                return Err(if error.kind() == io::ErrorKind::AddrInUse {
                    RuntimeError::Conflict(format!("host port {shown} is already in use"))
                } else {
                    failed(format!("cannot publish host port {shown}: {}", describe_io(&error)))
                });
            }
        }
        Ok(())
    }

    /// `lxc-stop`: SIGTERM (lxc.signal.halt), SIGKILL after `grace`; `-k` for no grace.
    async fn stop_container(&self, name: &str, grace: Duration) -> RuntimeResult<()> {
        let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let seconds_text = seconds.to_string();
        let rest: Vec<&str> = if seconds == 0 { vec!["-k"] } else { vec!["-t", &seconds_text] };
        let output = run_tool("lxc-stop", &self.args(name, &rest), Some(Duration::from_secs(seconds + 60))).await?;
        // Exit status 2: it was not running, which is what we want.
        if output.status.success() || output.status.code() == Some(2) {
            return Ok(());
        }
        if self.info(name).await.is_ok_and(|i| i.state == "STOPPED") {
            return Ok(());
        }
        Err(failed(format!("lxc-stop {name}: {}", config::tool_error(&output.stderr))))
    }

    fn container_info(&self, state: &State, info: &InfoOutput) -> ContainerInfo {
        let running = info.state == "RUNNING";
        let status = match info.state.as_str() {
            "RUNNING" => ContainerStatus::Running,
            "STOPPED" if state.started_at.is_some() => ContainerStatus::Exited,
            "STOPPED" => ContainerStatus::Created,
            "FROZEN" | "FREEZING" => ContainerStatus::Paused,
            _ => ContainerStatus::Unknown,
        };
        let exit_code = if status == ContainerStatus::Exited {
            std::fs::read_to_string(self.dir(&state.spec.name).join(START_LOG))
                .ok()
                .and_then(|log| config::parse_exit_code(&log))
                .unwrap_or(0)
        } else {
            0
        };
        ContainerInfo {
            id: state.spec.name.clone(),
            name: state.spec.name.clone(),
            image: state.spec.image.clone(),
            status,
            exit_code,
            pid: if running { info.pid } else { None },
            ip_address: if running { info.ip.clone().or_else(|| Some(state.ip.to_string())) } else { None },
            ports: state.spec.ports.clone(),
            started_at: state.started_at.clone(),
            health: None,
            labels: state.spec.labels.clone(),
            // LXC restarts nothing by itself: the control plane starts stopped containers.
            restart_count: 0,
        }
    }

    /// Cumulative CPU nanoseconds, memory in use and memory limit of a running container's
    /// cgroup, found through `/proc/PID/cgroup`.
    fn cgroup_usage(&self, pid: u32) -> (Option<u64>, u64, u64) {
        let Ok(membership) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return (None, 0, 0) };
        let read = |path: PathBuf| std::fs::read_to_string(path).ok().map(|t| t.trim().to_owned());
        let number = |path: PathBuf| read(path).and_then(|t| t.parse::<u64>().ok());
        let stat_field = |path: PathBuf, key: &str| {
            read(path).and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse::<u64>().ok()))
            })
        };
        let mut v1: HashMap<String, PathBuf> = HashMap::new();
        let mut unified: Option<PathBuf> = None;
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let relative = path.trim_start_matches('/');
            if controllers.is_empty() {
                unified = Some(PathBuf::from(relative));
            } else {
                for controller in controllers.split(',') {
                    v1.insert(controller.to_owned(), self.cgroup_root.join(controllers).join(relative));
                }
            }
        }
        if let Some(memory) = v1.get("memory") {
            let usage = number(memory.join("memory.usage_in_bytes")).unwrap_or(0);
            let inactive = stat_field(memory.join("memory.stat"), "total_inactive_file").unwrap_or(0);
            let limit = number(memory.join("memory.limit_in_bytes")).filter(|l| *l < (1 << 60)).unwrap_or(0);
            let cpu = v1.get("cpuacct").and_then(|dir| number(dir.join("cpuacct.usage")));
            return (cpu, usage.saturating_sub(inactive), limit);
        }
        let Some(relative) = unified else { return (None, 0, 0) };
        let dir = self.cgroup_root.join(relative);
        let usage = number(dir.join("memory.current")).unwrap_or(0);
        let inactive = stat_field(dir.join("memory.stat"), "inactive_file").unwrap_or(0);
        let limit = read(dir.join("memory.max")).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        let cpu = stat_field(dir.join("cpu.stat"), "usage_usec").map(|us| us * 1000);
        (cpu, usage.saturating_sub(inactive), limit)
    }

    fn remember_cpu(&self, name: &str, sample: Option<CpuSample>) -> Option<CpuSample> {
        let mut samples = self.cpu_samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match sample {
            Some(sample) => samples.insert(name.to_owned(), sample),
            None => samples.remove(name),
        }
    }
}

impl Drop for LxcRuntime {
    /// Stops copying output: the containers keep running and their output waits in the
    /// FIFOs for the next driver's [`LxcRuntime::resume_running`].
    fn drop(&mut self) {
        let pumps = std::mem::take(&mut *self.pumps.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for task in pumps.into_values() {
            task.abort();
        }
    }
}

/// A reserved address; the reservation file goes when this drops.
struct Reservation(PathBuf);

impl Drop for Reservation {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load_state(dir: &Path) -> Option<State> {
    let text = std::fs::read(dir.join(STATE_FILE)).ok()?;
    match serde_json::from_slice(&text) {
        Ok(state) => Some(state),
        Err(error) => {
            warn!(dir = %dir.display(), %error, "unreadable {STATE_FILE}; ignoring the container");
            None
        }
    }
}

/// Names of the containers under `lxc_path` that carry Diplo's state file.
fn owned_names(lxc_path: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(lxc_path) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|entry| entry.path().join(STATE_FILE).is_file())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .filter(|name| validate_container_name(name).is_ok())
        .collect();
    names.sort();
    names
}

async fn info_at(lxc_path: &Path, name: &str) -> RuntimeResult<InfoOutput> {
    let args: Vec<OsString> =
        vec!["-n".into(), name.into(), "-P".into(), lxc_path.as_os_str().to_owned(), "-s".into(), "-p".into(), "-i".into()];
    let output = run_tool("lxc-info", &args, Some(Duration::from_secs(30))).await?;
    if !output.status.success() {
        if !lxc_path.join(name).join("config").exists() {
            return Err(not_found(name));
        }
        return Err(failed(format!("lxc-info {name}: {}", config::tool_error(&output.stderr))));
    }
    Ok(config::parse_info(&String::from_utf8_lossy(&output.stdout)))
}

/// Runs an LXC tool or skopeo with stdin closed, collecting its output.
async fn run_tool(program: &str, args: &[OsString], timeout: Option<Duration>) -> RuntimeResult<Output> {
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    finish(program, command, timeout).await
}

async fn finish(program: &str, mut command: tokio::process::Command, timeout: Option<Duration>) -> RuntimeResult<Output> {
    let run = command.output();
    let result = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| failed(format!("{program} did not finish within {}", describe_timeout(timeout))))?,
        None => run.await,
    };
    match result {
        Ok(output) => Ok(output),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(RuntimeError::Unavailable { runtime: Runtime::Lxc, message: format!("{program} not found on PATH") })
        }
        Err(error) => Err(failed(format!("cannot run {program}: {}", describe_io(&error)))),
    }
}

/// Whether the agent runs as another user than root.
fn rootless() -> bool {
    super::effective_uid().is_some_and(|uid| uid != 0)
}

fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => i64::from(code),
        (None, Some(signal)) => 128 + i64::from(signal),
        (None, None) => -1,
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `relative` (a path inside the container) resolved inside `rootfs` the way the
/// container will see it (see [`rootfs::resolve`]).
fn resolve_in_rootfs(rootfs: &Path, relative: &str) -> Result<Vec<OsString>, String> {
    rootfs::resolve(&[rootfs.to_path_buf()], relative)
}

/// Resolves `relative` inside `rootfs` (see [`resolve_in_rootfs`]), creates the directory
/// (or, for `is_file`, an empty file) if missing, and returns the resolved path relative
/// to the rootfs: LXC cannot create mount points in a read-only rootfs.
fn prepare_target(rootfs: &Path, relative: &str, is_file: bool) -> Result<String, String> {
    let resolved = resolve_in_rootfs(rootfs, relative)?;
    if resolved.is_empty() {
        return Err(format!("/{relative} resolves to the root"));
    }
    let full = resolved.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c));
    let created = if is_file {
        let parent = full.parent().unwrap_or(rootfs);
        std::fs::create_dir_all(parent).and_then(|()| {
            if full.exists() { Ok(()) } else { std::fs::OpenOptions::new().write(true).create_new(true).open(&full).map(drop) }
        })
    } else {
        std::fs::create_dir_all(&full)
    };
    created.map_err(|e| format!("cannot create /{relative} in the rootfs: {}", describe_io(&e)))?;
    let parts: Vec<String> = resolved.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    Ok(parts.join("/"))
}

/// Where the container finds `program`: itself when it holds a `/` (if it exists, for
/// absolute paths), else the first executable file `DIR/program` for DIR in `path_var`.
fn resolve_executable(rootfs: &Path, program: &str, path_var: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |inside: &str| {
        let Ok(resolved) = resolve_in_rootfs(rootfs, inside.trim_start_matches('/')) else { return false };
        let full = resolved.iter().fold(rootfs.to_path_buf(), |p, c| p.join(c));
        std::fs::symlink_metadata(full).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return (!program.starts_with('/') || executable(program)).then(|| program.to_owned());
    }
    path_var
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .find(|candidate| executable(candidate))
}

/// Gives the container a resolver (the bridge's dnsmasq) when the image has none; never
/// follows a symlink out of the rootfs.
fn write_resolv_conf(rootfs: &Path, gateway: Ipv4Addr) {
    let etc = rootfs.join("etc");
    if !std::fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let path = etc.join("resolv.conf");
    if std::fs::symlink_metadata(&path).is_ok() {
        return;
    }
    // create_new refuses to follow a (dangling) symlink.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut file| io::Write::write_all(&mut file, format!("nameserver {gateway}\n").as_bytes()));
    if let Err(error) = written {
        debug!(error = %describe_io(&error), "cannot write {}", path.display());
    }
}

/// Checks that `path` starts with a tar header (`ustar` magic or a valid checksum).
fn check_tar(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut header = [0u8; 512];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header)).map_err(|e| describe_io(&e))?;
    if &header[257..262] == b"ustar" {
        return Ok(());
    }
    let stored = std::str::from_utf8(&header[148..156])
        .ok()
        .map(|t| t.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|t| u32::from_str_radix(t, 8).ok());
    let mut copy = header;
    copy[148..156].copy_from_slice(b"        ");
    let sum: u32 = copy.iter().map(|b| u32::from(*b)).sum();
    if stored == Some(sum) && header.iter().any(|b| *b != 0) { Ok(()) } else { Err("no tar header".to_owned()) }
}

/// Diplo containers with whether each runs and when it last started.
async fn snapshot(lxc_path: &Path) -> RuntimeResult<BTreeMap<String, (bool, Option<String>)>> {
    let args: Vec<OsString> = vec!["-P".into(), lxc_path.as_os_str().to_owned(), "--running".into(), "-1".into()];
    let output = run_tool("lxc-ls", &args, Some(Duration::from_secs(30))).await?;
    if !output.status.success() {
        return Err(failed(format!("lxc-ls: {}", config::tool_error(&output.stderr))));
    }
    let running: BTreeSet<String> = String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect();
    Ok(owned_names(lxc_path)
        .into_iter()
        .map(|name| {
            let started = load_state(&lxc_path.join(&name)).and_then(|s| s.started_at);
            let is_running = running.contains(&name);
            (name, (is_running, started))
        })
        .collect())
}

/// The longest line of `lxc-monitor` output read; a longer one (from a hostile name,
/// say) is dropped whole.
pub const MONITOR_LINE_MAX: usize = 4096;

/// The event an `lxc-monitor` line stands for: `'NAME' changed state to [STATE]` with a
/// valid container name; `None` for every other line and state.
fn monitor_event(line: &str) -> Option<(String, RuntimeEventKind)> {
    let (name, rest) = line.trim_end().strip_prefix('\'')?.split_once('\'')?;
    validate_container_name(name).ok()?;
    let state = rest.strip_prefix(" changed state to [")?.strip_suffix(']')?;
    let kind = match state {
        "RUNNING" => RuntimeEventKind::Start,
        "STOPPED" => RuntimeEventKind::Die,
        "FROZEN" | "THAWED" => RuntimeEventKind::Changed,
        _ => return None,
    };
    Some((name.to_owned(), kind))
}

/// Lines of a reader, each at most `max` bytes: a longer line is skipped whole. Safe to
/// cancel between reads (a partial line waits in the buffer).
struct BoundedLines<R> {
    reader: R,
    line: Vec<u8>,
    overlong: bool,
    max: usize,
}

impl<R: tokio::io::AsyncBufRead + Unpin> BoundedLines<R> {
    fn new(reader: R, max: usize) -> Self {
        BoundedLines { reader, line: Vec::new(), overlong: false, max }
    }

    /// The next line (without its newline), `Some(None)` for a line that was too long,
    /// `None` at the end.
    async fn next_line(&mut self) -> io::Result<Option<Option<String>>> {
        use tokio::io::AsyncBufReadExt;
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(None);
            }
            let (chunk, complete) = match available.iter().position(|b| *b == b'\n') {
                Some(at) => (&available[..at], true),
                None => (available, false),
            };
            if !self.overlong {
                if self.line.len() + chunk.len() > self.max {
                    self.overlong = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            let used = chunk.len() + usize::from(complete);
            self.reader.consume(used);
            if complete {
                let line = (!std::mem::take(&mut self.overlong)).then(|| String::from_utf8_lossy(&self.line).into_owned());
                self.line.clear();
                return Ok(Some(line));
            }
        }
    }
}

/// Follows `lxc-monitor` for the containers under `lxc_path` (a child process, killed
/// when this ends) and the lxcpath directory for containers created and removed, until
/// the receiver goes away; an error ends it when the monitor fails or exits.
async fn follow_monitor(
    lxc_path: PathBuf,
    publisher: Arc<PortPublisher>,
    mut child: tokio::process::Child,
    tx: mpsc::Sender<RuntimeResult<RuntimeEvent>>,
) {
    let Some(stdout) = child.stdout.take() else {
        let _ = tx.send(Err(failed("lxc-monitor: no output"))).await;
        return;
    };
    let mut lines = BoundedLines::new(tokio::io::BufReader::new(stdout), MONITOR_LINE_MAX);
    let mut names: BTreeSet<String> = owned_names(&lxc_path).into_iter().collect();
    let mut tick = tokio::time::interval(EVENT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut events = Vec::new();
        tokio::select! {
            () = tx.closed() => return,
            _ = tick.tick() => {
                let now: BTreeSet<String> = owned_names(&lxc_path).into_iter().collect();
                events.extend(now.difference(&names).map(|name| (name.clone(), RuntimeEventKind::Changed)));
                events.extend(names.difference(&now).map(|name| (name.clone(), RuntimeEventKind::Removed)));
                names = now;
            }
            line = lines.next_line() => match line {
                Ok(Some(Some(line))) => {
                    if let Some((name, kind)) = monitor_event(&line)
                        && lxc_path.join(&name).join(STATE_FILE).is_file()
                    {
                        events.push((name, kind));
                    }
                }
                Ok(Some(None)) => debug!(max = MONITOR_LINE_MAX, "an overlong lxc-monitor line was dropped"),
                Ok(None) => {
                    let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| describe_io(&e));
                    let _ = tx.send(Err(failed(format!("lxc-monitor exited ({status})")))).await;
                    return;
                }
                Err(error) => {
                    let _ = tx.send(Err(failed(format!("reading lxc-monitor: {}", describe_io(&error))))).await;
                    return;
                }
            },
        }
        for (name, kind) in events {
            if matches!(kind, RuntimeEventKind::Die | RuntimeEventKind::Removed) {
                publisher.unpublish_owner(&name).await;
            }
            if tx.send(Ok(RuntimeEvent { container_id: name, kind })).await.is_err() {
                return;
            }
        }
    }
}

/// The event poll: compares snapshots every second until the receiver goes away.
async fn watch_events(lxc_path: PathBuf, publisher: Arc<PortPublisher>, tx: mpsc::Sender<RuntimeResult<RuntimeEvent>>) {
    let mut previous = match snapshot(&lxc_path).await {
        Ok(snapshot) => snapshot,
        Err(error) => {
            let _ = tx.send(Err(error)).await;
            return;
        }
    };
    loop {
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(EVENT_POLL) => {}
        }
        let current = match snapshot(&lxc_path).await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                debug!(%error, "lxc event poll failed");
                continue;
            }
        };
        let mut events = Vec::new();
        for (name, (running, started)) in &current {
            if !previous.contains_key(name) && !*running && started.is_none() {
                events.push((name.clone(), RuntimeEventKind::Changed));
            }
            let (was_running, was_started) = previous.get(name).cloned().unwrap_or((false, None));
            let restarted = started.is_some() && *started != was_started;
            if *running && (!was_running || restarted) {
                if was_running {
                    events.push((name.clone(), RuntimeEventKind::Die));
                }
                events.push((name.clone(), RuntimeEventKind::Start));
            } else if !*running && was_running {
                events.push((name.clone(), RuntimeEventKind::Die));
            } else if !*running && restarted {
                // Started and ended between two polls.
                events.push((name.clone(), RuntimeEventKind::Start));
                events.push((name.clone(), RuntimeEventKind::Die));
            }
        }
        for (name, (was_running, _)) in &previous {
            if !current.contains_key(name) {
                if *was_running {
                    events.push((name.clone(), RuntimeEventKind::Die));
                }
                events.push((name.clone(), RuntimeEventKind::Removed));
            }
        }
        for (name, kind) in events {
            if kind == RuntimeEventKind::Die && !current.get(&name).is_some_and(|(running, _)| *running) {
                publisher.unpublish_owner(&name).await;
            }
            if tx.send(Ok(RuntimeEvent { container_id: name, kind })).await.is_err() {
                return;
            }
        }
        previous = current;
    }
}

#[async_trait]
impl ContainerRuntime for LxcRuntime {
    fn runtime(&self) -> Runtime {
        Runtime::Lxc
    }

    async fn version(&self) -> RuntimeResult<String> {
        let output = run_tool("lxc-create", &[OsString::from("--version")], Some(Duration::from_secs(30))).await?;
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || version.is_empty() {
            return Err(RuntimeError::Unavailable {
                runtime: Runtime::Lxc,
                message: format!("lxc-create --version failed: {}", config::tool_error(&output.stderr)),
            });
        }
        Ok(version)
    }

    async fn ensure_image(&self, image: &str) -> RuntimeResult<()> {
        config::check_reference(image)?;
        self.pull(image).await.map(drop)
    }

    async fn import_image(&self, archive: &Path, reference: &str) -> RuntimeResult<()> {
        if !archive.is_file() {
            return Err(RuntimeError::InvalidArgument { field: "archive", message: format!("{} is not a file", archive.display()) });
        }
        config::check_reference(reference)?;
        let layout = self.image_layout(reference);
        let docker = format!("docker-archive:{}", archive.display());
        let oci = format!("oci-archive:{}", archive.display());
        let attempts = vec![vec!["copy", "--quiet", docker.as_str()], vec!["copy", "--quiet", oci.as_str()]];
        match self.fill_layout(&layout, &attempts, reference, true).await {
            // Not an image archive: a root filesystem tarball, as `docker import` takes.
            Err(RuntimeError::NotFound { .. } | RuntimeError::Failed { .. }) => self.import_rootfs(archive, &layout).await,
            other => other,
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> RuntimeResult<String> {
        config::validate(spec)?;
        let mut spec = spec.clone();
        spec.labels.entry(LABEL_INSTANCE.to_owned()).or_insert_with(|| spec.name.clone());
        spec.labels.entry(LABEL_DEPLOYMENT.to_owned()).or_insert_with(|| DIRECT_DEPLOYMENT.to_owned());
        let spec = &spec;
        let name = spec.name.as_str();
        let layout = self.pull(&spec.image).await?;
        let argv = image::resolve_command(&layout, spec).map_err(|e| failed(format!("image {}: {e}", spec.image)))?;

        let _serial = CREATE_LOCK.lock().await;
        let dir = self.dir(name);
        if std::fs::symlink_metadata(&dir).is_ok() {
            return Err(RuntimeError::Conflict(format!("container name {name:?} is already in use")));
        }
        self.check_ports(spec)?;
        let mounts = self.resolve_mounts(spec)?;
        let (ip, reservation) = self.reserve_ip()?;
        // No template: LXC's `oci` template runs as root over image content (it follows
        // the image's symlinks on the host and writes image strings into the config raw);
        // `configure` does its work confined to the rootfs.
        let args = self.args(name, &["-t", "none"]);
        let output = run_tool("lxc-create", &args, Some(Duration::from_secs(600))).await;
        let output = match output {
            Ok(output) => output,
            Err(error) => {
                if dir.exists() {
                    self.destroy_quietly(name).await;
                }
                return Err(error);
            }
        };
        if !output.status.success() {
            let message = config::tool_error(&output.stderr);
            if message.contains("already exists") {
                return Err(RuntimeError::Conflict(format!("container name {name:?} is already in use")));
            }
            if dir.exists() {
                self.destroy_quietly(name).await;
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            let detail = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
            return Err(failed(format!(
                "lxc-create {name} from {}: {message}{}",
                spec.image,
                if detail.is_empty() { String::new() } else { format!(" ({})", detail.trim()) }
            )));
        }
        let configured = self.configure(spec, &layout, argv, ip, &mounts).await;
        drop(reservation);
        if let Err(error) = configured {
            self.destroy_quietly(name).await;
            return Err(error);
        }
        debug!(name, %ip, "created lxc container");
        Ok(name.to_owned())
    }

    async fn start(&self, id: &str) -> RuntimeResult<()> {
        let mut state = self.load(id)?;
        let name = state.spec.name.clone();
        let info = self.info(&name).await?;
        if info.state == "RUNNING" {
            if self.publisher.published(&name).len() != state.spec.ports.len() {
                self.publish_ports(&state).await?;
            }
            return Ok(());
        }
        // Fail before starting when a host port was taken since create.
        for port in &state.spec.ports {
            if let Some(owner) = self.publisher.owner_of(port.host_port, port.protocol).filter(|o| *o != name) {
                return Err(RuntimeError::Conflict(format!(
                    "host port {}/{} is already in use (published for container {owner})",
                    port.host_port,
                    config::protocol_name(port.protocol)
                )));
            }
        }
        self.publisher.unpublish_owner(&name).await;
        let log_path = self.dir(&name).join(START_LOG);
        let log =
            std::fs::File::create(&log_path).map_err(|e| failed(format!("cannot create {}: {}", log_path.display(), describe_io(&e))))?;
        let launch = self.launch_argv(&state)?;
        self.ensure_forward_rules().await?;
        self.forget_neighbour(state.ip).await;
        // Read the output from the first byte on.
        let pid_slot = self.start_pump(&state);
        let mut args = self.args(&name, &["-d", "-l", "INFO", "-o"]);
        args.push(log_path.clone().into_os_string());
        args.push("--".into());
        args.extend(launch.iter().map(OsString::from));
        // The run is recorded before the container starts: its start event can make the
        // agent inspect it before this call returns, and it must see the run.
        let previous_run = state.started_at.replace(now_rfc3339());
        self.save(&state)?;
        // The daemonised monitor may keep inherited descriptors: give it the log file
        // rather than pipes nobody would close.
        let mut command = tokio::process::Command::new("lxc-start");
        command.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log)).kill_on_drop(true);
        let failure = match finish("lxc-start", command, Some(Duration::from_secs(120))).await {
            Ok(output) if output.status.success() => None,
            Ok(output) => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let message = config::start_error(&log).unwrap_or_else(|| format!("lxc-start exited with {}", output.status));
                Some(failed(format!("cannot start {name} ({}): {message}", config::show_argv(&state.argv))))
            }
            Err(error) => Some(error),
        };
        if let Some(error) = failure {
            self.stop_pump(&name);
            // No run happened: the container keeps the record of its previous one.
            state.started_at = previous_run;
            if let Err(restore) = self.save(&state) {
                tracing::warn!(container = %name, error = %restore, "could not restore the state after a failed start");
            }
            return Err(error);
        }
        self.remember_cpu(&name, None);
        let pid = self.info(&name).await.ok().and_then(|i| i.pid);
        if let Some(slot) = pid_slot {
            // No pid: it has already ended; the pump drains what it wrote and stops.
            slot.store(pid.unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(error) = self.publish_ports(&state).await {
            let _ = self.stop_container(&name, Duration::ZERO).await;
            return Err(error);
        }
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        let state = self.load(id)?;
        let name = &state.spec.name;
        let info = self.info(name).await?;
        if info.state != "STOPPED" {
            // The container's own grace period, when its spec sets one.
            let grace = state.spec.stop_grace.map_or(grace, |seconds| Duration::from_secs(u64::from(seconds)));
            self.stop_container(name, grace).await?;
        }
        self.publisher.unpublish_owner(name).await;
        Ok(())
    }

    async fn restart(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        self.stop(id, grace).await?;
        self.start(id).await
    }

    async fn remove(&self, id: &str, force: bool) -> RuntimeResult<()> {
        let state = self.load(id)?;
        let name = state.spec.name.clone();
        let info = self.info(&name).await?;
        if info.state != "STOPPED" {
            if !force {
                return Err(RuntimeError::Conflict(format!("container {name} is running; stop it first or force the removal")));
            }
            self.stop_container(&name, Duration::ZERO).await?;
        }
        let output = run_tool("lxc-destroy", &self.args(&name, &["-f"]), Some(Duration::from_secs(300))).await?;
        self.publisher.unpublish_owner(&name).await;
        self.remember_cpu(&name, None);
        self.stop_pump(&name);
        let dir = self.dir(&name);
        if !output.status.success() && dir.join("config").exists() {
            return Err(failed(format!("lxc-destroy {name}: {}", config::tool_error(&output.stderr))));
        }
        if std::fs::symlink_metadata(&dir).is_ok() {
            std::fs::remove_dir_all(&dir).map_err(|e| failed(format!("cannot delete {}: {}", dir.display(), describe_io(&e))))?;
        }
        Ok(())
    }

    async fn list(&self) -> RuntimeResult<Vec<ContainerInfo>> {
        let mut containers = Vec::new();
        for name in owned_names(&self.lxc_path) {
            let Some(state) = load_state(&self.dir(&name)) else { continue };
            if !state.spec.labels.contains_key(LABEL_INSTANCE) {
                continue;
            }
            match self.info(&name).await {
                Ok(info) => containers.push(self.container_info(&state, &info)),
                // Removed while we were listing.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(containers)
    }

    async fn inspect(&self, id: &str) -> RuntimeResult<ContainerInfo> {
        let state = self.load(id)?;
        let info = self.info(&state.spec.name).await?;
        let container = self.container_info(&state, &info);
        if !matches!(container.status, ContainerStatus::Running | ContainerStatus::Paused)
            && !self.publisher.published(&container.name).is_empty()
        {
            // It ended by itself: its forwards lead nowhere.
            self.publisher.unpublish_owner(&container.name).await;
        }
        Ok(container)
    }

    async fn logs(&self, id: &str, options: LogOptions) -> RuntimeResult<RuntimeStream<LogChunk>> {
        let state = self.load(id)?;
        self.await_pump_if_ended(&state.spec.name).await;
        let files = self.log_files(&state);
        let lines = options.bounded().tail.unwrap_or(diplo_api::container::DEFAULT_LOG_TAIL);
        let (lines, offset) = files.tail(lines, options.follow);
        let first = logs::chunks(lines, options.timestamps);
        if !options.follow {
            return Ok(Box::pin(futures::stream::iter(first.into_iter().map(Ok))));
        }
        let info = self.info(&state.spec.name).await?;
        let pid = if info.state == "RUNNING" { info.pid } else { None };
        let timestamps = options.timestamps;
        let (tx, rx) = mpsc::channel::<RuntimeResult<LogChunk>>(16);
        tokio::spawn(async move {
            for chunk in first {
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            let mut offset = offset;
            let mut ended = false;
            loop {
                let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if !alive {
                    // Give the pump time to drain what the container wrote last.
                    tokio::time::sleep(LOG_DRAIN).await;
                    ended = true;
                }
                // What is there, a bounded step at a time.
                loop {
                    let (lines, next, full) = files.lines_since(offset, !ended);
                    offset = next;
                    for chunk in logs::chunks(lines, timestamps) {
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                if ended {
                    return;
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(LOG_POLL) => {}
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn exec(&self, id: &str, argv: &[String]) -> RuntimeResult<ExecOutput> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidArgument { field: "argv", message: "exec needs a command".to_owned() });
        }
        let state = self.load(id)?;
        let name = &state.spec.name;
        let info = self.info(name).await?;
        if info.state != "RUNNING" {
            return Err(RuntimeError::Conflict(format!("container {name} is not running")));
        }
        let mut args = self.args(name, &["--clear-env", "--"]);
        args.extend(argv.iter().map(OsString::from));
        let mut command = tokio::process::Command::new("lxc-attach");
        command.args(&args);
        match crate::runtime::output::collect_process(command).await {
            Ok((status, output)) => Ok(output.finish(exit_code(status))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(RuntimeError::Unavailable { runtime: Runtime::Lxc, message: "lxc-attach not found on PATH".to_owned() })
            }
            Err(error) => Err(failed(format!("cannot run lxc-attach: {}", describe_io(&error)))),
        }
    }

    async fn stats(&self, id: &str) -> RuntimeResult<ContainerStats> {
        let state = self.load(id)?;
        let name = &state.spec.name;
        let info = self.info(name).await?;
        let (Some(pid), "RUNNING") = (info.pid, info.state.as_str()) else {
            self.remember_cpu(name, None);
            return Ok(ContainerStats { memory_limit_bytes: state.spec.memory_bytes.unwrap_or(0), ..ContainerStats::default() });
        };
        let (cpu, memory_bytes, limit) = self.cgroup_usage(pid);
        let mut cpu_percent = 0.0;
        if let Some(usage_ns) = cpu {
            let now = CpuSample { at: Instant::now(), usage_ns };
            let previous = match self.remember_cpu(name, Some(now)) {
                Some(previous) if now.at.duration_since(previous.at) < Duration::from_secs(60) && previous.usage_ns <= usage_ns => {
                    Some(previous)
                }
                _ => None,
            };
            // Without a recent reading, take two a short while apart.
            let (before, after) = match previous {
                Some(previous) => (previous, now),
                None => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let (cpu, _, _) = self.cgroup_usage(pid);
                    let later = CpuSample { at: Instant::now(), usage_ns: cpu.unwrap_or(usage_ns) };
                    self.remember_cpu(name, Some(later));
                    (now, later)
                }
            };
            let wall = after.at.duration_since(before.at).as_nanos() as f64;
            if wall > 0.0 {
                cpu_percent = after.usage_ns.saturating_sub(before.usage_ns) as f64 / wall * 100.0;
            }
        }
        let (network_rx_bytes, network_tx_bytes) = network_bytes(pid);
        Ok(ContainerStats {
            cpu_percent,
            memory_bytes,
            memory_limit_bytes: if limit > 0 { limit } else { state.spec.memory_bytes.unwrap_or(0) },
            network_rx_bytes,
            network_tx_bytes,
        })
    }

    async fn list_images(&self) -> RuntimeResult<Vec<diplo_api::resources::ImageInfo>> {
        self.cached_images()
    }

    async fn inspect_image(&self, image: &str) -> RuntimeResult<diplo_api::resources::ImageInfo> {
        self.cached_image(image)
    }

    async fn remove_image(&self, image: &str, _force: bool) -> RuntimeResult<()> {
        self.uncache_image(image)
    }

    async fn prune_images(&self, all: bool) -> RuntimeResult<diplo_api::resources::PruneReport> {
        self.prune_cache(all)
    }

    async fn create_volume(&self, spec: &diplo_api::resources::VolumeSpec) -> RuntimeResult<diplo_api::resources::VolumeInfo> {
        self.volumes().create(spec)
    }

    async fn list_volumes(&self) -> RuntimeResult<Vec<diplo_api::resources::VolumeInfo>> {
        self.volumes().list(&self.volume_users())
    }

    async fn inspect_volume(&self, volume: &str) -> RuntimeResult<diplo_api::resources::VolumeInfo> {
        self.volumes().inspect(volume, &self.volume_users())
    }

    async fn remove_volume(&self, volume: &str) -> RuntimeResult<()> {
        self.volumes().remove(volume, &self.volume_users())
    }

    async fn prune_volumes(&self) -> RuntimeResult<diplo_api::resources::PruneReport> {
        self.volumes().prune(&self.volume_users())
    }

    async fn pause(&self, id: &str) -> RuntimeResult<()> {
        let state = self.load(id)?;
        let name = &state.spec.name;
        match self.info(name).await?.state.as_str() {
            "FROZEN" => return Ok(()),
            "RUNNING" | "FREEZING" => {}
            _ => return Err(RuntimeError::Conflict(format!("container {name} is not running"))),
        }
        let output = run_tool("lxc-freeze", &self.args(name, &[]), Some(Duration::from_secs(30))).await?;
        if !output.status.success() {
            return Err(failed(format!("lxc-freeze {name}: {}", config::tool_error(&output.stderr))));
        }
        Ok(())
    }

    async fn unpause(&self, id: &str) -> RuntimeResult<()> {
        let state = self.load(id)?;
        let name = &state.spec.name;
        if !matches!(self.info(name).await?.state.as_str(), "FROZEN" | "FREEZING" | "THAWED") {
            return Ok(());
        }
        let output = run_tool("lxc-unfreeze", &self.args(name, &[]), Some(Duration::from_secs(30))).await?;
        if !output.status.success() {
            return Err(failed(format!("lxc-unfreeze {name}: {}", config::tool_error(&output.stderr))));
        }
        Ok(())
    }

    async fn copy_from(&self, id: &str, path: &str) -> RuntimeResult<Vec<u8>> {
        crate::runtime::check_copy_path("path", path)?;
        let limit = diplo_api::archive::MAX_ARCHIVE_BYTES;
        // tar runs attached inside the container: the path is resolved in its root.
        let output = self.attach_piped(id, &crate::runtime::tar_out_argv(path), None, limit).await?;
        if output.overflow {
            return Err(crate::runtime::archive_too_large(path));
        }
        let code = exit_code(output.status);
        if code != 0 {
            return Err(crate::runtime::tar_failed(Runtime::Lxc, path, code, &output.stderr));
        }
        Ok(output.stdout)
    }

    async fn copy_to(&self, id: &str, dir: &str, archive: Vec<u8>) -> RuntimeResult<()> {
        crate::runtime::check_copy_path("dir", dir)?;
        diplo_api::archive::check_archive(&archive).map_err(|message| RuntimeError::InvalidArgument { field: "archive", message })?;
        // tar runs attached inside the container: whatever the archive holds lands in its root.
        let output =
            self.attach_piped(id, &crate::runtime::tar_in_argv(dir), Some(archive), diplo_api::container::MAX_OUTPUT_BYTES).await?;
        let code = exit_code(output.status);
        if code != 0 {
            return Err(crate::runtime::tar_in_failed(Runtime::Lxc, dir, code, &output.stderr));
        }
        Ok(())
    }

    async fn events(&self) -> RuntimeResult<RuntimeStream<RuntimeEvent>> {
        let (tx, rx) = mpsc::channel(64);
        let monitor = tokio::process::Command::new("lxc-monitor")
            .arg("-P")
            .arg(&self.lxc_path)
            .args(["-n", ".*"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        match monitor {
            Ok(child) => {
                tokio::spawn(follow_monitor(self.lxc_path.clone(), Arc::clone(&self.publisher), child, tx));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                debug!("no lxc-monitor: polling lxc-ls for events");
                tokio::spawn(watch_events(self.lxc_path.clone(), Arc::clone(&self.publisher), tx));
            }
            Err(error) => return Err(failed(format!("lxc-monitor: {}", describe_io(&error)))),
        }
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Received and sent bytes over the container's interfaces but `lo`, from
/// `/proc/PID/net/dev` (which shows the network namespace of PID).
fn network_bytes(pid: u32) -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) else { return (0, 0) };
    let mut totals = (0, 0);
    for line in text.lines().skip(2) {
        let Some((interface, counters)) = line.split_once(':') else { continue };
        if interface.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if fields.len() >= 9 {
            totals.0 += fields[0];
            totals.1 += fields[8];
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_become_events() {
        let cases = [
            ("'web-1' changed state to [RUNNING]\n", Some(("web-1", RuntimeEventKind::Start))),
            ("'web-1' changed state to [STOPPED]", Some(("web-1", RuntimeEventKind::Die))),
            ("'web-1' changed state to [FROZEN]", Some(("web-1", RuntimeEventKind::Changed))),
            ("'web-1' changed state to [STARTING]", None),
            ("'web-1' exited with status [0]", None),
            ("'../etc' changed state to [RUNNING]", None),
            ("'a b' changed state to [RUNNING]", None),
            ("web-1 changed state to [RUNNING]", None),
            ("'web-1' changed state to [RUNNING", None),
            ("", None),
        ];
        for (line, expected) in cases {
            assert_eq!(monitor_event(line), expected.map(|(name, kind)| (name.to_owned(), kind)), "{line:?}");
        }
    }

    #[tokio::test]
    async fn monitor_output_is_read_in_bounded_lines() {
        let long = "x".repeat(100);
        let input = format!("short\n{long}\nnext\n{long}\ntail");
        // A reader that hands out 7 bytes at a time: lines span several reads.
        let reader = tokio::io::BufReader::with_capacity(7, input.as_bytes());
        let mut lines = BoundedLines::new(reader, 16);
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read") {
            seen.push(line);
        }
        assert_eq!(seen, [Some("short".to_owned()), None, Some("next".to_owned()), None]);
    }

    #[test]
    fn targets_are_confined_to_the_rootfs() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(rootfs.join("usr/share")).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        // An absolute link resolves inside the rootfs, not on the host.
        symlink(&outside, rootfs.join("escape")).expect("symlink");
        assert_eq!(
            prepare_target(&rootfs, "escape/data", false).as_deref(),
            Ok(outside.strip_prefix("/").expect("abs").join("data").to_str().expect("utf8"))
        );
        assert!(rootfs.join(outside.strip_prefix("/").expect("abs")).join("data").is_dir());
        assert!(!outside.join("data").exists());
        // Relative links and .. stay inside too.
        symlink("../../..", rootfs.join("usr/share/up")).expect("symlink");
        assert_eq!(prepare_target(&rootfs, "usr/share/up/srv", false).as_deref(), Ok("srv"));
        assert!(rootfs.join("srv").is_dir());
        assert_eq!(prepare_target(&rootfs, "etc/app.conf", true).as_deref(), Ok("etc/app.conf"));
        assert!(rootfs.join("etc/app.conf").is_file());
        std::fs::write(rootfs.join("file"), "x").expect("write");
        assert!(prepare_target(&rootfs, "file/sub", false).is_err());
        symlink("/", rootfs.join("root-link")).expect("symlink");
        assert!(prepare_target(&rootfs, "root-link", false).is_err());
    }

    #[test]
    fn executables_are_found_in_the_rootfs() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
        std::fs::create_dir_all(rootfs.join("usr/bin")).expect("mkdir");
        std::fs::write(rootfs.join("bin/busybox"), "x").expect("write");
        std::fs::set_permissions(rootfs.join("bin/busybox"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink("/bin/busybox", rootfs.join("bin/httpd")).expect("symlink");
        std::fs::write(rootfs.join("usr/bin/data"), "x").expect("write");
        let path = "/usr/local/bin:/usr/bin:/bin";
        assert_eq!(resolve_executable(&rootfs, "httpd", path).as_deref(), Some("/bin/httpd"));
        assert_eq!(resolve_executable(&rootfs, "/bin/busybox", path).as_deref(), Some("/bin/busybox"));
        assert_eq!(resolve_executable(&rootfs, "/bin/nope", path), None);
        assert_eq!(resolve_executable(&rootfs, "data", path), None, "not executable");
        assert_eq!(resolve_executable(&rootfs, "ls", path), None);
        assert_eq!(resolve_executable(&rootfs, "./run", path).as_deref(), Some("./run"));
    }

    #[test]
    fn static_executables_are_recognised() {
        let mut elf = vec![0u8; 256];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        elf[120..124].copy_from_slice(&6u32.to_le_bytes());
        assert!(elf_has_no_interpreter(&elf));
        elf[120..124].copy_from_slice(&3u32.to_le_bytes());
        assert!(!elf_has_no_interpreter(&elf));
        assert!(!elf_has_no_interpreter(b"#!/bin/sh\n"));
        if Path::new("/bin/busybox").exists() {
            println!("/bin/busybox static: {}", is_static_executable(Path::new("/bin/busybox")));
        }
        assert!(!is_static_executable(Path::new("/nonexistent")));
    }

    #[test]
    fn resolv_conf_never_follows_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
        let victim = dir.path().join("victim");
        std::os::unix::fs::symlink(&victim, rootfs.join("etc/resolv.conf")).expect("symlink");
        write_resolv_conf(&rootfs, Ipv4Addr::new(10, 0, 3, 1));
        assert!(!victim.exists());
        std::fs::remove_file(rootfs.join("etc/resolv.conf")).expect("rm");
        write_resolv_conf(&rootfs, Ipv4Addr::new(10, 0, 3, 1));
        assert_eq!(std::fs::read_to_string(rootfs.join("etc/resolv.conf")).expect("read"), "nameserver 10.0.3.1\n");
    }

    #[test]
    fn state_round_trips() {
        let state = State {
            spec: ContainerSpec { name: "c".into(), image: "i".into(), ..ContainerSpec::default() },
            argv: vec!["/bin/sh".into()],
            ip: Ipv4Addr::new(10, 0, 3, 100),
            created_at: now_rfc3339(),
            started_at: None,
            log_files: true,
        };
        let text = serde_json::to_string(&state).expect("encode");
        let back: State = serde_json::from_str(&text).expect("decode");
        assert_eq!(back.spec, state.spec);
        assert_eq!(back.ip, state.ip);
    }
}
