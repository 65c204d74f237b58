//! Translation between Diplo's domain types and the Docker Engine API's models (bollard),
//! shared by the Docker and Podman drivers. Pure functions, apart from reading the
//! headers of an image archive.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};

use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, EventMessage, HealthConfig, HostConfig, Mount as ApiMount, MountType, PortBinding,
    RestartPolicy as ApiRestart, RestartPolicyNameEnum,
};
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStats, ContainerStatus, Health, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_NODE, PortMapping,
    Protocol, RestartPolicy, RuntimeEvent, RuntimeEventKind,
};
use serde::Deserialize;

use super::RuntimeError;

/// `diplo.deployment` of a container created on its own, outside any deployment.
pub(crate) const DIRECT_DEPLOYMENT: &str = "direct";

/// The labels a container gets: the spec's, plus Diplo's own where the spec lacks them
/// (`diplo.instance` = the container name, `diplo.deployment` = `direct`, `diplo.node`
/// = `node` when known).
pub(crate) fn labels_for(spec: &ContainerSpec, node: Option<&str>) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.entry(LABEL_INSTANCE.to_owned()).or_insert_with(|| spec.name.clone());
    labels.entry(LABEL_DEPLOYMENT.to_owned()).or_insert_with(|| DIRECT_DEPLOYMENT.to_owned());
    if let Some(node) = node {
        labels.entry(LABEL_NODE.to_owned()).or_insert_with(|| node.to_owned());
    }
    if let Some(seconds) = spec.stop_grace {
        labels.insert(LABEL_STOP_GRACE.to_owned(), seconds.to_string());
    }
    labels
}

/// Whether a container with these labels is one of Diplo's (carries `diplo.instance`).
pub(crate) fn is_diplo<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> bool {
    labels.into_iter().any(|(key, _)| key == LABEL_INSTANCE)
}

fn invalid(field: &'static str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidArgument { field, message: message.into() }
}

/// Checks an image reference enough to keep it out of URLs and error-prone daemon
/// parsing: not empty, no whitespace or control characters, no URL scheme.
pub(crate) fn check_image_reference(reference: &str) -> Result<(), RuntimeError> {
    if reference.is_empty() {
        return Err(invalid("image", "the image reference is empty"));
    }
    if reference.contains("://") {
        return Err(invalid("image", format!("{reference:?} is a URL, not an image reference")));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@' | '+');
    if !reference.chars().all(ok) || reference.starts_with(['/', ':', '@']) {
        return Err(invalid("image", format!("{reference:?} is not a valid image reference")));
    }
    Ok(())
}

/// An image reference split the way `POST /images/create` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRef {
    /// Registry host and repository path (`127.0.0.1:5000/diplo/busybox`, `busybox`).
    pub repository: String,
    /// Tag, or `sha256:…` digest; `latest` when the reference names neither.
    pub tag: String,
    /// Whether `tag` is a digest.
    pub digest: bool,
}

impl ImageRef {
    /// Splits `repo[:tag][@digest]`; a digest wins over a tag.
    pub fn parse(reference: &str) -> Self {
        if let Some((name, digest)) = reference.split_once('@') {
            let repository = strip_tag(name).0.to_owned();
            return ImageRef { repository, tag: digest.to_owned(), digest: true };
        }
        let (repository, tag) = strip_tag(reference);
        ImageRef { repository: repository.to_owned(), tag: tag.unwrap_or("latest").to_owned(), digest: false }
    }

    /// The registry host (`host[:port]`) the repository lives on; `docker.io` when the
    /// first path component is not a host (no `.`, no `:`, not `localhost`).
    pub fn registry(&self) -> &str {
        match self.repository.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
            _ => "docker.io",
        }
    }

    /// The fully qualified reference (`docker.io/library/busybox:latest`), as Podman's
    /// own API wants it (it would otherwise resolve short names through its config).
    pub fn qualified(&self) -> String {
        let repository = match self.repository.split_once('/') {
            Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => self.repository.clone(),
            Some(_) => format!("docker.io/{}", self.repository),
            None => format!("docker.io/library/{}", self.repository),
        };
        let separator = if self.digest { '@' } else { ':' };
        format!("{repository}{separator}{}", self.tag)
    }
}

/// `repo:tag` → (`repo`, `Some(tag)`); a `:` before the last `/` is a registry port.
fn strip_tag(reference: &str) -> (&str, Option<&str>) {
    let last_slash = reference.rfind('/').map_or(0, |at| at + 1);
    match reference[last_slash..].rfind(':') {
        Some(at) => (&reference[..last_slash + at], Some(&reference[last_slash + at + 1..])),
        None => (reference, None),
    }
}

/// `8080/tcp`.
fn port_key(port: u16, protocol: Protocol) -> String {
    match protocol {
        Protocol::Tcp => format!("{port}/tcp"),
        Protocol::Udp => format!("{port}/udp"),
    }
}

fn duration_nanos(field: &'static str, duration: std::time::Duration) -> Result<i64, RuntimeError> {
    i64::try_from(duration.as_nanos()).map_err(|_| invalid(field, format!("{duration:?} is too long")))
}

/// The create request for `spec`, with `labels` (see [`labels_for`]), publishing ports
/// on `host_ip` (`Some("0.0.0.0")`: every IPv4 address; `None`: the daemon's default,
/// every address). Checks what the daemon would reject with a less helpful message,
/// naming the field at fault.
pub(crate) fn create_body(
    spec: &ContainerSpec,
    labels: HashMap<String, String>,
    host_ip: Option<&str>,
) -> Result<ContainerCreateBody, RuntimeError> {
    check_image_reference(&spec.image)?;

    let mut env = Vec::with_capacity(spec.env.len());
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(invalid("env", format!("{key:?} is not a valid environment variable name")));
        }
        env.push(format!("{key}={value}"));
    }

    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    let mut taken = HashSet::new();
    for port in &spec.ports {
        if port.host_port == 0 || port.container_port == 0 {
            return Err(invalid("ports", format!("port 0 in {}:{}", port.host_port, port.container_port)));
        }
        if !taken.insert((port.host_port, port.protocol)) {
            return Err(invalid("ports", format!("host port {} is published twice", port_key(port.host_port, port.protocol))));
        }
        let key = port_key(port.container_port, port.protocol);
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        let binding = PortBinding { host_ip: host_ip.map(str::to_owned), host_port: Some(port.host_port.to_string()) };
        bindings.entry(key).or_insert_with(|| Some(Vec::new())).get_or_insert_with(Vec::new).push(binding);
    }

    let mut binds = Vec::new();
    let mut mounts = Vec::new();
    for mount in &spec.mounts {
        if !mount.target.starts_with('/') {
            return Err(invalid("mounts", format!("target {:?} is not an absolute path", mount.target)));
        }
        if mount.is_bind() {
            if mount.source.contains(':') || mount.target.contains(':') {
                return Err(invalid("mounts", format!("{:?} → {:?}: paths must not contain ':'", mount.source, mount.target)));
            }
            let mode = if mount.read_only { "ro" } else { "rw" };
            binds.push(format!("{}:{}:{mode}", mount.source, mount.target));
        } else {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
            if mount.source.is_empty() || !mount.source.chars().all(ok) || !mount.source.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                return Err(invalid("mounts", format!("{:?} is neither an absolute path nor a volume name", mount.source)));
            }
            mounts.push(ApiMount {
                target: Some(mount.target.clone()),
                source: Some(mount.source.clone()),
                typ: Some(MountType::VOLUME),
                read_only: Some(mount.read_only),
                ..Default::default()
            });
        }
    }

    spec.check_options().map_err(|refusal| invalid(refusal.field, refusal.message))?;
    let memory = match spec.memory_bytes {
        None => None,
        Some(0) => return Err(invalid("memory_bytes", "a memory limit of 0 bytes")),
        Some(bytes) => Some(i64::try_from(bytes).map_err(|_| invalid("memory_bytes", format!("{bytes} is too large")))?),
    };
    let nano_cpus = match spec.cpu_millis {
        None => None,
        Some(0) => return Err(invalid("cpu_millis", "a CPU limit of 0 millicores")),
        Some(millis) => Some(i64::from(millis) * 1_000_000),
    };

    let mut tmpfs = HashMap::new();
    for entry in &spec.tmpfs {
        let (path, _) = diplo_api::options::split_tmpfs(entry);
        tmpfs.insert(path.to_owned(), diplo_api::options::tmpfs_options(entry).join(","));
    }
    let to_i64 = |field: &'static str, bytes: u64| i64::try_from(bytes).map_err(|_| invalid(field, format!("{bytes} is too large")));
    let memory_reservation = spec.memory_reservation.map(|bytes| to_i64("memory_reservation", bytes)).transpose()?;
    let stop_signal = if spec.stop_signal.is_empty() {
        None
    } else {
        Some(diplo_api::options::stop_signal(spec).map_err(|message| invalid("stop_signal", message))?.0.to_owned())
    };

    // The daemon runs command checks itself (its state reports their health); HTTP and
    // TCP checks are probed from the node by the agent's supervisor.
    let healthcheck = match &spec.healthcheck {
        None => None,
        Some(check) => {
            check.validate().map_err(|e| invalid(e.field, e.message))?;
            match check.probe.test() {
                None => None,
                Some(test) => Some(HealthConfig {
                    test: Some(test),
                    interval: Some(duration_nanos("healthcheck.interval", check.interval)?),
                    timeout: Some(duration_nanos("healthcheck.timeout", check.timeout)?),
                    retries: Some(i64::from(check.retries)),
                    start_period: (!check.start_period.is_zero())
                        .then(|| duration_nanos("healthcheck.start_period", check.start_period))
                        .transpose()?,
                    ..Default::default()
                }),
            }
        }
    };

    let restart = match spec.restart_policy {
        RestartPolicy::No => RestartPolicyNameEnum::NO,
        RestartPolicy::Always => RestartPolicyNameEnum::ALWAYS,
        RestartPolicy::OnFailure(_) => RestartPolicyNameEnum::ON_FAILURE,
        RestartPolicy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
    };

    if !spec.network_aliases.is_empty() && spec.network.is_none() {
        return Err(invalid("network_aliases", "aliases need a network"));
    }
    let mut extra_hosts = Vec::with_capacity(spec.extra_hosts.len());
    for entry in &spec.extra_hosts {
        let (name, ip) = diplo_api::options::parse_extra_host(entry).map_err(|message| invalid("extra_hosts", message))?;
        extra_hosts.push(format!("{name}:{ip}"));
    }
    let networking_config = spec.network.as_ref().map(|network| bollard::models::NetworkingConfig {
        endpoints_config: Some(HashMap::from([(
            network.clone(),
            bollard::models::EndpointSettings {
                aliases: (!spec.network_aliases.is_empty()).then(|| spec.network_aliases.clone()),
                ..Default::default()
            },
        )])),
    });
    let host_config = HostConfig {
        network_mode: spec.network.clone(),
        extra_hosts: (!extra_hosts.is_empty()).then_some(extra_hosts),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        binds: (!binds.is_empty()).then_some(binds),
        mounts: (!mounts.is_empty()).then_some(mounts),
        memory,
        nano_cpus,
        restart_policy: Some(ApiRestart { name: Some(restart), maximum_retry_count: spec.restart_policy.max_retries().map(i64::from) }),
        readonly_rootfs: Some(spec.read_only),
        tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
        cap_drop: (!spec.cap_drop.is_empty()).then(|| spec.cap_drop.clone()),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        pids_limit: spec.pids_limit.map(i64::from),
        memory_reservation,
        security_opt: spec.no_new_privileges.then(|| vec!["no-new-privileges".to_owned()]),
        ..Default::default()
    };

    Ok(ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
        env: (!env.is_empty()).then_some(env),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(labels),
        healthcheck,
        host_config: Some(host_config),
        entrypoint: (!spec.entrypoint.is_empty()).then(|| spec.entrypoint.clone()),
        user: (!spec.user.is_empty()).then(|| spec.user.clone()),
        working_dir: (!spec.working_dir.is_empty()).then(|| spec.working_dir.clone()),
        stop_signal,
        stop_timeout: spec.stop_grace.map(i64::from),
        networking_config,
        ..Default::default()
    })
}

/// The parts of `GET /containers/{id}/json` Diplo reads. Read leniently (strings, not
/// bollard's enums, every field optional): Podman answers states such as `stopped` and
/// `configured` that Docker's API schema does not have.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct Inspected {
    /// Full id.
    pub id: String,
    /// `/name`.
    pub name: String,
    /// Image id (Docker) or name.
    pub image: Option<String>,
    /// Creation-time configuration.
    pub config: Option<InspectedConfig>,
    /// Run state.
    pub state: Option<InspectedState>,
    /// Host configuration (published ports).
    pub host_config: Option<InspectedHostConfig>,
    /// Networks the container is on.
    pub network_settings: Option<InspectedNetworkSettings>,
    /// Restarts the daemon made by the restart policy.
    pub restart_count: Option<i64>,
}

/// `Config` of an inspected container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectedConfig {
    /// The image reference it was created from.
    pub image: Option<String>,
    /// Its labels.
    pub labels: Option<HashMap<String, String>>,
}

/// Label carrying a container's `stop_grace` in seconds (Podman reports a default
/// `StopTimeout` for every container, so the daemon's field cannot tell it apart).
pub(crate) const LABEL_STOP_GRACE: &str = "diplo.stop-grace";

impl Inspected {
    /// The grace period a stop of this container allows: the `stop_grace` it was created
    /// with, else `grace`.
    pub(crate) fn stop_grace(&self, grace: std::time::Duration) -> std::time::Duration {
        self.labels()
            .and_then(|labels| labels.get(LABEL_STOP_GRACE))
            .and_then(|seconds| seconds.parse::<u64>().ok())
            .map_or(grace, std::time::Duration::from_secs)
    }
}

/// `State` of an inspected container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectedState {
    /// `created`, `running`, `exited`, … (Podman: also `configured`, `stopped`).
    pub status: Option<String>,
    /// Exit code of the last run.
    pub exit_code: Option<i64>,
    /// Main process id, 0 when not running.
    pub pid: Option<i64>,
    /// RFC 3339; the zero time when never started.
    pub started_at: Option<String>,
    /// Health check state.
    pub health: Option<InspectedHealth>,
}

/// `State.Health` of an inspected container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectedHealth {
    /// `starting`, `healthy`, `unhealthy`, `none`.
    pub status: Option<String>,
}

/// `HostConfig` of an inspected container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectedHostConfig {
    /// `8080/tcp` → host bindings.
    pub port_bindings: Option<HashMap<String, Option<Vec<InspectedBinding>>>>,
}

/// One host binding of a published port.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectedBinding {
    /// Host address (empty: all).
    pub host_ip: Option<String>,
    /// Host port, as a string.
    pub host_port: Option<String>,
}

/// `NetworkSettings` of an inspected container.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct InspectedNetworkSettings {
    /// Address on the default network (older API versions).
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
    /// Network name → endpoint.
    #[serde(rename = "Networks")]
    pub networks: Option<HashMap<String, InspectedEndpoint>>,
}

/// A container's endpoint on one network.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct InspectedEndpoint {
    /// Its IPv4 address.
    #[serde(rename = "IPAddress")]
    pub ip_address: Option<String>,
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct Listed {
    /// Full id.
    pub id: String,
    /// Its labels.
    pub labels: Option<HashMap<String, String>>,
}

impl Inspected {
    /// Its labels (none when the daemon sends `null`).
    pub fn labels(&self) -> Option<&HashMap<String, String>> {
        self.config.as_ref().and_then(|config| config.labels.as_ref())
    }

    /// Whether it is one of Diplo's containers.
    pub fn is_diplo(&self) -> bool {
        self.labels().is_some_and(is_diplo)
    }
}

/// A container as the domain sees it, from `GET /containers/{id}/json`.
pub(crate) fn container_info(inspected: Inspected) -> ContainerInfo {
    let state = inspected.state.unwrap_or_default();
    let config = inspected.config.unwrap_or_default();
    let status = match state.status.as_deref().unwrap_or_default() {
        "created" | "configured" => ContainerStatus::Created,
        "running" => ContainerStatus::Running,
        "paused" => ContainerStatus::Paused,
        "restarting" => ContainerStatus::Restarting,
        "exited" | "stopped" | "dead" => ContainerStatus::Exited,
        _ => ContainerStatus::Unknown,
    };
    let running = status == ContainerStatus::Running;
    let health = state.health.and_then(|health| match health.status.as_deref()? {
        "starting" => Some(Health::Starting),
        "healthy" => Some(Health::Healthy),
        "unhealthy" => Some(Health::Unhealthy),
        _ => None,
    });
    let ip_address = inspected.network_settings.and_then(|settings| {
        let networks: BTreeMap<String, InspectedEndpoint> = settings.networks.unwrap_or_default().into_iter().collect();
        networks.into_values().filter_map(|endpoint| endpoint.ip_address).chain(settings.ip_address).find(|ip| !ip.is_empty())
    });
    let ports = inspected.host_config.and_then(|host| host.port_bindings).map(ports_from_bindings).unwrap_or_default();
    ContainerInfo {
        id: inspected.id,
        name: inspected.name.trim_start_matches('/').to_owned(),
        image: config.image.or(inspected.image).unwrap_or_default(),
        status,
        exit_code: if running { 0 } else { state.exit_code.unwrap_or_default() },
        pid: state.pid.filter(|pid| *pid > 0).and_then(|pid| u32::try_from(pid).ok()),
        ip_address,
        ports,
        started_at: state.started_at.filter(|at| !at.is_empty() && !at.starts_with("0001-")),
        health,
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        restart_count: inspected.restart_count.and_then(|count| u32::try_from(count).ok()).unwrap_or(0),
    }
}

/// Published ports from a port map (`8080/tcp` → bindings), sorted, without duplicates
/// (a port bound on IPv4 and IPv6 appears once).
fn ports_from_bindings(bindings: HashMap<String, Option<Vec<InspectedBinding>>>) -> Vec<PortMapping> {
    let mut ports = BTreeSet::new();
    for (key, bindings) in bindings {
        let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let udp = match protocol {
            "tcp" => false,
            "udp" => true,
            _ => continue,
        };
        let Ok(container_port) = port.parse::<u16>() else { continue };
        for binding in bindings.unwrap_or_default() {
            if let Some(Ok(host_port)) = binding.host_port.as_deref().map(str::parse::<u16>) {
                ports.insert((host_port, container_port, udp));
            }
        }
    }
    ports
        .into_iter()
        .map(|(host_port, container_port, udp)| PortMapping {
            host_port,
            container_port,
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
        })
        .collect()
}

/// A usage sample from one `GET /containers/{id}/stats?stream=false` answer: CPU in
/// percent of one core over the interval between `precpu_stats` and `cpu_stats`,
/// memory without the reclaimable page cache (as `docker stats` shows it).
pub(crate) fn container_stats(response: &ContainerStatsResponse) -> ContainerStats {
    let total = |stats: &Option<bollard::models::ContainerCpuStats>| {
        let stats = stats.as_ref();
        let usage = stats.and_then(|s| s.cpu_usage.as_ref()).and_then(|u| u.total_usage).unwrap_or(0);
        (usage, stats.and_then(|s| s.system_cpu_usage).unwrap_or(0))
    };
    let (cpu, system) = total(&response.cpu_stats);
    let (precpu, presystem) = total(&response.precpu_stats);
    let cpus = response
        .cpu_stats
        .as_ref()
        .and_then(|s| s.online_cpus.filter(|n| *n > 0).or_else(|| s.cpu_usage.as_ref()?.percpu_usage.as_ref().map(|p| p.len() as u32)))
        .filter(|n| *n > 0)
        .unwrap_or(1);
    let cpu_delta = cpu.saturating_sub(precpu);
    let system_delta = system.saturating_sub(presystem);
    let cpu_percent = if precpu > 0 && system_delta > 0 { cpu_delta as f64 / system_delta as f64 * f64::from(cpus) * 100.0 } else { 0.0 };

    let memory = response.memory_stats.clone().unwrap_or_default();
    let usage = memory.usage.unwrap_or(0);
    let stats = memory.stats.unwrap_or_default();
    // cgroup v2 reports inactive_file, v1 total_inactive_file; docker stats subtracts it.
    let cache = stats.get("inactive_file").or_else(|| stats.get("total_inactive_file")).copied().unwrap_or(0);
    let limit = memory.limit.unwrap_or(0);
    // Without a limit the kernel reports an enormous number (or the host's memory).
    let limit = if limit >= i64::MAX as u64 / 2 { 0 } else { limit };

    let (rx, tx) =
        response.networks.iter().flat_map(HashMap::values).fold((0u64, 0u64), |(rx, tx), net| {
            (rx.saturating_add(net.rx_bytes.unwrap_or(0)), tx.saturating_add(net.tx_bytes.unwrap_or(0)))
        });
    ContainerStats {
        cpu_percent,
        memory_bytes: usage.saturating_sub(cache),
        memory_limit_bytes: limit,
        network_rx_bytes: rx,
        network_tx_bytes: tx,
    }
}

/// The domain event for a daemon event about one of Diplo's containers (its attributes
/// carry `diplo.instance`), if Diplo follows its kind. Health changes arrive as `health_status: healthy` (Docker) or as
/// `health_status` with the state in an attribute (Podman).
pub(crate) fn runtime_event(message: &EventMessage) -> Option<RuntimeEvent> {
    let actor = message.actor.as_ref()?;
    // Container events carry the container's labels among their attributes.
    let attributes = actor.attributes.as_ref().filter(|attributes| attributes.contains_key(LABEL_INSTANCE))?;
    if message.typ.is_some_and(|typ| typ.as_ref() != "container") {
        return None;
    }
    let action = message.action.as_deref()?;
    let (verb, detail) = match action.split_once(':') {
        Some((verb, detail)) => (verb.trim(), Some(detail.trim())),
        None => (action.trim(), None),
    };
    let kind = match verb {
        "start" => RuntimeEventKind::Start,
        "die" => RuntimeEventKind::Die,
        "oom" => RuntimeEventKind::Oom,
        // Docker says `destroy`, Podman `remove`.
        "destroy" | "remove" => RuntimeEventKind::Removed,
        "create" | "pause" | "unpause" | "rename" => RuntimeEventKind::Changed,
        "health_status" => {
            let state = detail.or_else(|| attributes.get("health_status").map(String::as_str))?;
            match state {
                "healthy" => RuntimeEventKind::Healthy,
                "unhealthy" => RuntimeEventKind::Unhealthy,
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(RuntimeEvent { container_id: actor.id.clone()?, kind })
}

/// What kind of tar archive an import got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    /// `docker save` / OCI image layout: has `manifest.json` or `index.json` at its root
    /// (or is compressed, which only `docker load` accepts here).
    Image,
    /// A root filesystem, for `docker import`.
    RootFs,
}

/// Reads the tar headers of `reader` (skipping over the contents) to tell an image
/// archive from a root filesystem. Compressed archives (gzip, bzip2, xz, zstd) count as
/// image archives.
pub(crate) fn archive_kind(mut reader: impl Read + Seek) -> std::io::Result<ArchiveKind> {
    let not_tar = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a tar archive ({why})"));
    let mut header = [0u8; 512];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    let compressed = header.starts_with(&[0x1f, 0x8b])
        || header.starts_with(b"BZh")
        || header.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || header.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if compressed {
        return Ok(ArchiveKind::Image);
    }
    if filled < header.len() {
        return Err(not_tar(format!("only {filled} bytes")));
    }
    if header.iter().all(|b| *b == 0) {
        return Err(not_tar("it is empty".to_owned()));
    }
    loop {
        if header.iter().all(|b| *b == 0) {
            return Ok(ArchiveKind::RootFs);
        }
        let field = |range: std::ops::Range<usize>| {
            let bytes = &header[range];
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        let mut name = field(0..100);
        if &header[257..262] == b"ustar" {
            let prefix = field(345..500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let name = name.trim_start_matches("./");
        if matches!(name, "manifest.json" | "index.json" | "oci-layout") {
            return Ok(ArchiveKind::Image);
        }
        let size_field = field(124..136);
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == ' ' || c == '\0'), 8)
            .map_err(|_| not_tar(format!("entry size {size_field:?}")))?;
        let skip = i64::try_from(size.div_ceil(512) * 512).map_err(|_| not_tar(format!("entry size {size}")))?;
        reader.seek(SeekFrom::Current(skip))?;
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            // Some writers end without the two zero blocks.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(ArchiveKind::RootFs),
            Err(error) => return Err(error),
        }
    }
}

/// The image names a `docker load` answer reports (`Loaded image: NAME`, `Loaded image
/// ID: sha256:…`), in order.
pub(crate) fn loaded_images(stream_text: &str) -> Vec<String> {
    stream_text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            line.strip_prefix("Loaded image ID:")
                .or_else(|| line.strip_prefix("Loaded image:"))
                .or_else(|| line.strip_prefix("Loaded image(s):"))
                .map(|rest| rest.trim().to_owned())
        })
        .flat_map(|names| names.split(',').map(|name| name.trim().to_owned()).collect::<Vec<_>>())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether a daemon's pull error means the registry refused the credentials (or
/// wanted some).
pub(crate) fn means_unauthorized(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["unauthorized", "no basic auth credentials", "authentication required", "401 unauthorized"]
        .iter()
        .any(|needle| message.contains(needle))
}

/// Whether a daemon's pull error means the registry's host name does not resolve.
pub(crate) fn means_unresolvable_registry(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("no such host") || message.contains("name or service not known") || message.contains("name does not resolve")
}

/// Whether a daemon's pull error means the image (or repository, or tag) does not exist.
pub(crate) fn means_missing_image(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "manifest unknown",
        "name unknown",
        "not found",
        "no such image",
        "repository does not exist",
        "pull access denied",
        "requested access to the resource is denied",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// Whether a daemon's error means a host port is taken.
pub(crate) fn means_port_in_use(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("address already in use") || message.contains("port is already allocated")
}

/// Whether a daemon's error means a container name is taken.
pub(crate) fn means_name_in_use(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("already in use") && message.contains("name")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use diplo_api::container::{HealthCheck, Mount};

    use super::*;

    #[test]
    fn references_split_and_qualify() {
        let r = ImageRef::parse("127.0.0.1:5000/diplo/busybox:latest");
        assert_eq!((r.repository.as_str(), r.tag.as_str(), r.registry()), ("127.0.0.1:5000/diplo/busybox", "latest", "127.0.0.1:5000"));
        assert_eq!(r.qualified(), "127.0.0.1:5000/diplo/busybox:latest");
        let r = ImageRef::parse("127.0.0.1:5000/diplo/busybox");
        assert_eq!((r.repository.as_str(), r.tag.as_str()), ("127.0.0.1:5000/diplo/busybox", "latest"));
        let r = ImageRef::parse("busybox");
        assert_eq!((r.registry(), r.qualified().as_str()), ("docker.io", "docker.io/library/busybox:latest"));
        let r = ImageRef::parse("me/app:1.2");
        assert_eq!(r.qualified(), "docker.io/me/app:1.2");
        let r = ImageRef::parse("localhost/app:v1@sha256:abc");
        assert_eq!((r.repository.as_str(), r.tag.as_str(), r.digest), ("localhost/app", "sha256:abc", true));
        assert_eq!(r.qualified(), "localhost/app@sha256:abc");
        assert!(check_image_reference("a b").is_err());
        assert!(check_image_reference("").is_err());
        assert!(check_image_reference("http://x/y").is_err());
        assert!(check_image_reference("127.0.0.1:5000/diplo/busybox:latest").is_ok());
    }

    #[test]
    fn spec_maps_to_host_config() {
        let spec = ContainerSpec {
            name: "web".into(),
            image: "busybox".into(),
            command: vec!["httpd".into(), "-f".into()],
            env: [("A".to_owned(), "1".to_owned())].into(),
            ports: vec![PortMapping { host_port: 18080, container_port: 8080, protocol: Protocol::Tcp }],
            mounts: vec![
                Mount { source: "/srv/data".into(), target: "/data".into(), read_only: true },
                Mount { source: "cache".into(), target: "/cache".into(), read_only: false },
            ],
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            restart_policy: RestartPolicy::OnFailure(Some(4)),
            read_only: true,
            tmpfs: vec!["/tmp".into()],
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            labels: BTreeMap::new(),
            healthcheck: Some(HealthCheck {
                probe: diplo_api::container::HealthProbe::Exec { argv: vec!["true".into()] },
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                retries: 3,
                start_period: Duration::ZERO,
            }),
            network: Some("diplo-shop".into()),
            network_aliases: vec!["web".into()],
            extra_hosts: vec!["db:10.89.0.7".into(), "cache:[fd00::3]".into()],
            ..ContainerSpec::default()
        };
        let labels = labels_for(&spec, Some("node-1"));
        assert_eq!(labels.get(LABEL_INSTANCE).map(String::as_str), Some("web"));
        assert_eq!(labels.get(LABEL_DEPLOYMENT).map(String::as_str), Some("direct"));
        assert_eq!(labels.get(LABEL_NODE).map(String::as_str), Some("node-1"));
        let body = create_body(&spec, labels, Some("0.0.0.0")).expect("body");
        let host = body.host_config.expect("host config");
        let bindings = host.port_bindings.expect("bindings");
        let binding = &bindings["8080/tcp"].as_ref().expect("some")[0];
        assert_eq!(binding.host_ip.as_deref(), Some("0.0.0.0"));
        assert_eq!(binding.host_port.as_deref(), Some("18080"));
        assert_eq!(body.exposed_ports, Some(vec!["8080/tcp".to_owned()]));
        assert_eq!(host.binds, Some(vec!["/srv/data:/data:ro".to_owned()]));
        assert_eq!(host.mounts.expect("mounts")[0].typ, Some(MountType::VOLUME));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.restart_policy.and_then(|p| p.name), Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.extra_hosts, Some(vec!["db:10.89.0.7".to_owned(), "cache:fd00::3".to_owned()]), "--add-host spelling");
        assert!(host.tmpfs.expect("tmpfs").contains_key("/tmp"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        let health = body.healthcheck.expect("health");
        assert_eq!(health.test, Some(vec!["CMD".to_owned(), "true".to_owned()]));
        assert_eq!(health.interval, Some(2_000_000_000));
        assert_eq!(body.env, Some(vec!["A=1".to_owned()]));
        assert_eq!(body.cmd, Some(vec!["httpd".to_owned(), "-f".to_owned()]));
        assert_eq!(host.network_mode.as_deref(), Some("diplo-shop"));
        let endpoints = body.networking_config.and_then(|n| n.endpoints_config).expect("endpoints");
        assert_eq!(endpoints["diplo-shop"].aliases, Some(vec!["web".to_owned()]), "reachable by its alias on that network");
    }

    #[test]
    fn bad_specs_name_their_field() {
        let field = |spec: ContainerSpec| match create_body(&spec, HashMap::new(), None) {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        let base = ContainerSpec { name: "x".into(), image: "busybox".into(), ..Default::default() };
        assert_eq!(field(ContainerSpec { image: String::new(), ..base.clone() }), "image");
        let port = PortMapping { host_port: 80, container_port: 80, protocol: Protocol::Tcp };
        assert_eq!(field(ContainerSpec { ports: vec![port, port], ..base.clone() }), "ports");
        let mount = Mount { source: "x y".into(), target: "/x".into(), read_only: false };
        assert_eq!(field(ContainerSpec { mounts: vec![mount], ..base.clone() }), "mounts");
        assert_eq!(field(ContainerSpec { memory_bytes: Some(u64::MAX), ..base.clone() }), "memory_bytes");
        assert_eq!(field(ContainerSpec { env: [("A=B".to_owned(), String::new())].into(), ..base }), "env");
    }

    #[test]
    fn podman_states_are_read() {
        let json = r#"{"Id":"abc","Name":"/web","Image":"sha256:1","Config":{"Image":"busybox","Labels":null},
            "State":{"Status":"stopped","ExitCode":137,"Pid":0,"StartedAt":"2026-01-01T00:00:00Z","Health":{"Status":"healthy"}},
            "HostConfig":{"PortBindings":{"8080/tcp":[{"HostIp":"","HostPort":"18080"}],"53/udp":[{"HostIp":"0.0.0.0","HostPort":"5353"},{"HostIp":"::","HostPort":"5353"}]}},
            "NetworkSettings":{"IPAddress":"","Networks":{"podman":{"IPAddress":"10.88.0.2"}}}}"#;
        let info = container_info(serde_json::from_str(json).expect("parse"));
        assert_eq!(info.name, "web");
        assert_eq!(info.image, "busybox");
        assert_eq!((info.status, info.exit_code, info.pid), (ContainerStatus::Exited, 137, None));
        assert_eq!(info.health, Some(Health::Healthy));
        assert_eq!(info.ip_address.as_deref(), Some("10.88.0.2"));
        assert_eq!(
            info.ports,
            vec![
                PortMapping { host_port: 5353, container_port: 53, protocol: Protocol::Udp },
                PortMapping { host_port: 18080, container_port: 8080, protocol: Protocol::Tcp },
            ]
        );
        assert!(info.labels.is_empty());
        let created: Inspected =
            serde_json::from_str(r#"{"State":{"Status":"configured","StartedAt":"0001-01-01T00:00:00Z"}}"#).expect("parse");
        let info = container_info(created);
        assert_eq!((info.status, info.started_at), (ContainerStatus::Created, None));
        assert_eq!(info.restart_count, 0, "no count reported: none");
    }

    #[test]
    fn the_daemons_restart_count_is_read_and_nonsense_is_zero() {
        for (json, expected) in [
            (r#"{"RestartCount":4,"State":{"Status":"running"}}"#, 4),
            (r#"{"RestartCount":0}"#, 0),
            (r#"{"RestartCount":-1}"#, 0),
            (r#"{"RestartCount":null}"#, 0),
            (r#"{"RestartCount":99999999999}"#, 0),
        ] {
            let info = container_info(serde_json::from_str(json).expect("parse"));
            assert_eq!(info.restart_count, expected, "{json}");
        }
    }

    #[test]
    fn events_map_to_kinds() {
        let event = |action: &str, attributes: &[(&str, &str)]| EventMessage {
            action: Some(action.to_owned()),
            actor: Some(bollard::models::EventActor {
                id: Some("abc".into()),
                attributes: Some(attributes.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            }),
            ..Default::default()
        };
        let ours = [(LABEL_INSTANCE, "i")];
        let kind = |e: EventMessage| runtime_event(&e).map(|e| e.kind);
        assert_eq!(kind(event("start", &ours)), Some(RuntimeEventKind::Start));
        assert_eq!(kind(event("die", &ours)), Some(RuntimeEventKind::Die));
        assert_eq!(kind(event("oom", &ours)), Some(RuntimeEventKind::Oom));
        assert_eq!(kind(event("health_status: healthy", &ours)), Some(RuntimeEventKind::Healthy));
        assert_eq!(
            kind(event("health_status", &[(LABEL_INSTANCE, "i"), ("health_status", "unhealthy")])),
            Some(RuntimeEventKind::Unhealthy)
        );
        assert_eq!(kind(event("create", &ours)), Some(RuntimeEventKind::Changed));
        assert_eq!(kind(event("destroy", &ours)), Some(RuntimeEventKind::Removed));
        assert_eq!(kind(event("remove", &ours)), Some(RuntimeEventKind::Removed));
        assert_eq!(kind(event("exec_start: sh", &ours)), None);
        assert_eq!(kind(event("start", &[("name", "foreign")])), None);
        assert_eq!(kind(event("start", &[])), None);
    }

    #[test]
    fn load_answers_name_the_images() {
        assert_eq!(loaded_images("Loaded image: a/b:c\n"), vec!["a/b:c"]);
        assert_eq!(loaded_images("Loaded image ID: sha256:12\n"), vec!["sha256:12"]);
        assert_eq!(loaded_images("Loaded image(s): x:1,y:2\n"), vec!["x:1", "y:2"]);
    }

    fn tar_with(names: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for name in names {
            let mut header = [0u8; 512];
            header[..name.len()].copy_from_slice(name.as_bytes());
            header[124..135].copy_from_slice(b"00000000005");
            header[257..262].copy_from_slice(b"ustar");
            out.extend_from_slice(&header);
            let mut data = [0u8; 512];
            data[..5].copy_from_slice(b"hello");
            out.extend_from_slice(&data);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn archives_are_told_apart() {
        let kind = |bytes: Vec<u8>| archive_kind(std::io::Cursor::new(bytes)).expect("kind");
        assert_eq!(kind(tar_with(&["./bin/busybox", "./etc/passwd"])), ArchiveKind::RootFs);
        assert_eq!(kind(tar_with(&["abc/layer.tar", "manifest.json"])), ArchiveKind::Image);
        assert_eq!(kind(tar_with(&["oci-layout", "index.json"])), ArchiveKind::Image);
        assert_eq!(kind(vec![0x1f, 0x8b, 8, 0, 0, 0]), ArchiveKind::Image);
        assert!(archive_kind(std::io::Cursor::new(b"not a tar".to_vec())).is_err());
    }
}
