//! Conversions between the runtime-neutral container types and their wire forms, with
//! validation of what arrives from the wire (errors name the field).

use std::time::Duration;

use crate::container::{
    ContainerInfo, ContainerSpec, ContainerStats, ContainerStatus, Health, HealthCheck, HealthProbe, Mount, PortMapping, Protocol,
    RestartPolicy,
};
use crate::pb;
use crate::text::node_text;

/// A wire message that does not make a valid domain value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid {field}: {message}")]
pub struct WireError {
    /// Field at fault, e.g. `spec.ports[0].host_port`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> WireError {
    WireError { field: field.into(), message: message.into() }
}

fn port(field: String, value: u32) -> Result<u16, WireError> {
    u16::try_from(value).ok().filter(|p| *p != 0).ok_or_else(|| invalid(field, format!("{value} is not a port (1-65535)")))
}

impl From<&ContainerSpec> for pb::ContainerSpec {
    fn from(spec: &ContainerSpec) -> Self {
        pb::ContainerSpec {
            name: spec.name.clone(),
            image: spec.image.clone(),
            command: spec.command.clone(),
            environment: spec.env.clone().into_iter().collect(),
            ports: spec
                .ports
                .iter()
                .map(|p| pb::PortMapping {
                    host_port: u32::from(p.host_port),
                    container_port: u32::from(p.container_port),
                    protocol: match p.protocol {
                        Protocol::Tcp => "tcp".into(),
                        Protocol::Udp => "udp".into(),
                    },
                })
                .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|m| pb::Mount { source: m.source.clone(), target: m.target.clone(), read_only: m.read_only })
                .collect(),
            memory_bytes: spec.memory_bytes.unwrap_or(0),
            cpu_millis: spec.cpu_millis.unwrap_or(0),
            restart_policy: spec.restart_policy.to_string(),
            read_only: spec.read_only,
            tmpfs: spec.tmpfs.clone(),
            cap_drop: spec.cap_drop.clone(),
            no_new_privileges: spec.no_new_privileges,
            labels: spec.labels.clone().into_iter().collect(),
            healthcheck: spec.healthcheck.as_ref().map(health_to_wire),
            pids_limit: spec.pids_limit.unwrap_or(0),
            cap_add: spec.cap_add.clone(),
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            stop_signal: spec.stop_signal.clone(),
            stop_grace_seconds: spec.stop_grace,
            entrypoint: spec.entrypoint.clone(),
            memory_reservation: spec.memory_reservation.unwrap_or(0),
            network: spec.network.clone().unwrap_or_default(),
            network_aliases: spec.network_aliases.clone(),
            extra_hosts: spec.extra_hosts.clone(),
        }
    }
}

impl TryFrom<pb::ContainerSpec> for ContainerSpec {
    type Error = WireError;

    fn try_from(spec: pb::ContainerSpec) -> Result<Self, WireError> {
        if spec.image.trim().is_empty() {
            return Err(invalid("image", "an image reference is required"));
        }
        let ports = spec
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let protocol = match p.protocol.as_str() {
                    "" | "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    other => return Err(invalid(format!("ports[{i}].protocol"), format!("{other:?}: expected tcp or udp"))),
                };
                Ok(PortMapping {
                    host_port: port(format!("ports[{i}].host_port"), p.host_port)?,
                    container_port: port(format!("ports[{i}].container_port"), p.container_port)?,
                    protocol,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = spec
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !m.target.starts_with('/') {
                    return Err(invalid(format!("mounts[{i}].target"), format!("{:?} must be an absolute path", m.target)));
                }
                if m.source.is_empty() {
                    return Err(invalid(format!("mounts[{i}].source"), "a volume name or absolute host path is required"));
                }
                Ok(Mount { source: m.source.clone(), target: m.target.clone(), read_only: m.read_only })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let restart_policy: RestartPolicy = spec.restart_policy.parse().map_err(|e: String| invalid("restart_policy", e))?;
        let healthcheck = spec.healthcheck.map(health_from_wire).transpose()?.flatten();
        Ok(ContainerSpec {
            name: spec.name,
            image: spec.image,
            command: spec.command,
            env: spec.environment.into_iter().collect(),
            ports,
            mounts,
            memory_bytes: (spec.memory_bytes > 0).then_some(spec.memory_bytes),
            cpu_millis: (spec.cpu_millis > 0).then_some(spec.cpu_millis),
            restart_policy,
            read_only: spec.read_only,
            tmpfs: spec.tmpfs,
            cap_drop: spec.cap_drop,
            no_new_privileges: spec.no_new_privileges,
            labels: spec.labels.into_iter().collect(),
            healthcheck,
            pids_limit: (spec.pids_limit > 0).then_some(spec.pids_limit),
            cap_add: spec.cap_add,
            user: spec.user,
            working_dir: spec.working_dir,
            stop_signal: spec.stop_signal,
            stop_grace: spec.stop_grace_seconds,
            entrypoint: spec.entrypoint,
            memory_reservation: (spec.memory_reservation > 0).then_some(spec.memory_reservation),
            network: Some(spec.network).filter(|n| !n.is_empty()),
            network_aliases: spec.network_aliases,
            extra_hosts: spec.extra_hosts,
        })
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn health_to_wire(check: &HealthCheck) -> pb::HealthCheck {
    let (port, path) = match &check.probe {
        HealthProbe::Http { port, path } => (u32::from(*port), path.clone()),
        HealthProbe::Tcp { port } => (u32::from(*port), String::new()),
        HealthProbe::Exec { .. } | HealthProbe::Shell { .. } => (0, String::new()),
    };
    pb::HealthCheck {
        test: check.probe.test().unwrap_or_default(),
        interval_seconds: u32::try_from(check.interval.as_secs()).unwrap_or(u32::MAX),
        timeout_seconds: u32::try_from(check.timeout.as_secs()).unwrap_or(u32::MAX),
        retries: check.retries,
        kind: check.probe.kind().to_owned(),
        port,
        path,
        start_period_ms: millis(check.start_period),
        interval_ms: millis(check.interval),
        timeout_ms: millis(check.timeout),
    }
}

/// A wire health check as the domain's, checked against the bounds; `None` for a command
/// check with an empty test or `["NONE"]` (no check).
fn health_from_wire(h: pb::HealthCheck) -> Result<Option<HealthCheck>, WireError> {
    let probe = match h.kind.as_str() {
        "" | "cmd" if h.test.is_empty() => return Ok(None),
        "" | "cmd" => match HealthProbe::from_test(&h.test).map_err(|e| invalid("healthcheck.test", e))? {
            Some(probe) => probe,
            None => return Ok(None),
        },
        "http" => HealthProbe::Http {
            port: port("healthcheck.port".into(), h.port)?,
            path: if h.path.is_empty() { "/".to_owned() } else { h.path },
        },
        "tcp" => HealthProbe::Tcp { port: port("healthcheck.port".into(), h.port)? },
        other => return Err(invalid("healthcheck.kind", format!("{other:?}: expected cmd, http or tcp"))),
    };
    let period = |ms: u64, seconds: u32| if ms > 0 { Duration::from_millis(ms) } else { Duration::from_secs(u64::from(seconds.max(1))) };
    let check = HealthCheck {
        probe,
        interval: period(h.interval_ms, h.interval_seconds),
        timeout: period(h.timeout_ms, h.timeout_seconds),
        retries: h.retries.max(1),
        start_period: Duration::from_millis(h.start_period_ms),
    };
    check.validate().map_err(|e| invalid(e.field, e.message))?;
    Ok(Some(check))
}

fn status_name(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Paused => "paused",
        ContainerStatus::Restarting => "restarting",
        ContainerStatus::Exited => "exited",
        ContainerStatus::Unknown => "unknown",
    }
}

fn status_from_name(name: &str) -> ContainerStatus {
    match name {
        "created" => ContainerStatus::Created,
        "running" => ContainerStatus::Running,
        "paused" => ContainerStatus::Paused,
        "restarting" => ContainerStatus::Restarting,
        "exited" => ContainerStatus::Exited,
        _ => ContainerStatus::Unknown,
    }
}

/// The wire form of an observed container on `node_id`, run by `runtime`.
pub fn container_state(info: &ContainerInfo, node_id: &str, runtime: crate::runtime::Runtime) -> pb::ContainerState {
    pb::ContainerState {
        id: info.id.clone(),
        name: info.name.clone(),
        node_id: node_id.to_owned(),
        runtime: pb::RuntimeKind::from(runtime) as i32,
        image: info.image.clone(),
        status: status_name(info.status).to_owned(),
        exit_code: i32::try_from(info.exit_code).unwrap_or(i32::MAX),
        ip_address: info.ip_address.clone().unwrap_or_default(),
        ports: pb::ContainerSpec::from(&ContainerSpec { ports: info.ports.clone(), ..ContainerSpec::default() }).ports,
        started_at: info.started_at.clone().unwrap_or_default(),
        health: match info.health {
            Some(Health::Starting) => "starting".into(),
            Some(Health::Healthy) => "healthy".into(),
            Some(Health::Unhealthy) => "unhealthy".into(),
            None => String::new(),
        },
        labels: info.labels.clone().into_iter().collect(),
        pid: info.pid.unwrap_or(0),
        restart_count: info.restart_count,
    }
}

/// The domain form of an observed container, with the node id and runtime it came with.
/// Ports that are out of range are dropped (an agent never reports them); texts are
/// bounded with [`node_text`].
pub fn container_info(state: pb::ContainerState) -> (ContainerInfo, String, Option<crate::runtime::Runtime>) {
    let runtime = pb::RuntimeKind::try_from(state.runtime).ok().and_then(pb::RuntimeKind::runtime);
    let ports = state
        .ports
        .iter()
        .filter_map(|p| {
            Some(PortMapping {
                host_port: u16::try_from(p.host_port).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: if p.protocol == "udp" { Protocol::Udp } else { Protocol::Tcp },
            })
        })
        .collect();
    let info = ContainerInfo {
        id: node_text(&state.id),
        name: node_text(&state.name),
        image: node_text(&state.image),
        status: status_from_name(&state.status),
        exit_code: i64::from(state.exit_code),
        pid: (state.pid != 0).then_some(state.pid),
        ip_address: (!state.ip_address.is_empty()).then(|| node_text(&state.ip_address)),
        ports,
        started_at: (!state.started_at.is_empty()).then(|| node_text(&state.started_at)),
        health: match state.health.as_str() {
            "starting" => Some(Health::Starting),
            "healthy" => Some(Health::Healthy),
            "unhealthy" => Some(Health::Unhealthy),
            _ => None,
        },
        labels: state.labels.iter().map(|(k, v)| (node_text(k), node_text(v))).collect(),
        restart_count: state.restart_count,
    };
    (info, node_text(&state.node_id), runtime)
}

/// Most containers one report (a hello or heartbeat) may carry, states and removals
/// together.
pub const MAX_REPORTED_CONTAINERS: usize = 10_000;

/// Longest container id (bytes) a report may carry; runtimes' ids are 64 hex digits.
pub const MAX_REPORTED_ID_BYTES: usize = 256;

/// Most labels one reported container may carry.
pub const MAX_REPORTED_LABELS: usize = 256;

/// Most published ports one reported container may carry.
pub const MAX_REPORTED_PORTS: usize = 1024;

/// One container a node reports, with the node id it gave (for the node authorizer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedContainer {
    /// The runtime running it.
    pub runtime: crate::runtime::Runtime,
    /// Its state, texts bounded with [`node_text`].
    pub info: ContainerInfo,
    /// The node id the report gave for it (empty: none).
    pub node_id: String,
}

impl ReportedContainer {
    /// The node ids the report gives for this container: its `node_id` and its
    /// `diplo.node` label (what the node authorizer checks).
    pub fn claimed_nodes(&self) -> impl Iterator<Item = &str> {
        [Some(self.node_id.as_str()), self.info.labels.get(crate::container::LABEL_NODE).map(String::as_str)].into_iter().flatten()
    }
}

/// What a node reports about its containers in one hello or heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerReport {
    /// `upserted` is every container of the node, replacing the last view.
    pub full: bool,
    /// Containers whose state is new or changed (all of them with `full`).
    pub upserted: Vec<ReportedContainer>,
    /// Containers gone from their runtime, by runtime and id (empty with `full`).
    pub removed: Vec<(crate::runtime::Runtime, String)>,
}

impl ContainerReport {
    /// Whether the report says nothing about containers (an idle heartbeat).
    pub fn is_empty(&self) -> bool {
        !self.full && self.upserted.is_empty() && self.removed.is_empty()
    }
}

fn reported_id(field: String, id: &str) -> Result<(), WireError> {
    if id.is_empty() {
        return Err(invalid(field, "a container id is required"));
    }
    if id.len() > MAX_REPORTED_ID_BYTES {
        return Err(invalid(field, format!("{} bytes; at most {MAX_REPORTED_ID_BYTES}", id.len())));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(())
}

fn reported_runtime(field: String, value: i32) -> Result<crate::runtime::Runtime, WireError> {
    pb::RuntimeKind::try_from(value)
        .ok()
        .and_then(pb::RuntimeKind::runtime)
        .ok_or_else(|| invalid(field, format!("{value} is not a runtime")))
}

/// The validated domain form of a node's report: `containers` and `removed` as a hello
/// (`message` = `hello`, always `full`) or heartbeat carries them. Refused, naming the
/// field, when it holds more than [`MAX_REPORTED_CONTAINERS`] entries, a container id
/// that is empty, longer than [`MAX_REPORTED_ID_BYTES`] or has control characters, an
/// unknown runtime, more than [`MAX_REPORTED_LABELS`] labels or [`MAX_REPORTED_PORTS`]
/// ports on one container, or removals in a full report. Other texts are bounded with
/// [`node_text`] as in [`container_info`].
pub fn container_report(
    message: &str,
    containers: Vec<pb::ContainerState>,
    removed: Vec<pb::RemovedContainer>,
    full: bool,
) -> Result<ContainerReport, WireError> {
    let entries = containers.len().saturating_add(removed.len());
    if entries > MAX_REPORTED_CONTAINERS {
        return Err(invalid(format!("{message}.containers"), format!("{entries} entries; at most {MAX_REPORTED_CONTAINERS}")));
    }
    if full && !removed.is_empty() {
        return Err(invalid(format!("{message}.removed"), "a full report lists what exists, it removes nothing"));
    }
    let upserted = containers
        .into_iter()
        .enumerate()
        .map(|(i, state)| {
            let field = |name: &str| format!("{message}.containers[{i}].{name}");
            reported_id(field("id"), &state.id)?;
            let runtime = reported_runtime(field("runtime"), state.runtime)?;
            if state.labels.len() > MAX_REPORTED_LABELS {
                return Err(invalid(field("labels"), format!("{} labels; at most {MAX_REPORTED_LABELS}", state.labels.len())));
            }
            if state.ports.len() > MAX_REPORTED_PORTS {
                return Err(invalid(field("ports"), format!("{} ports; at most {MAX_REPORTED_PORTS}", state.ports.len())));
            }
            let (info, node_id, _) = container_info(state);
            Ok(ReportedContainer { runtime, info, node_id })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let removed = removed
        .into_iter()
        .enumerate()
        .map(|(i, gone)| {
            reported_id(format!("{message}.removed[{i}].id"), &gone.id)?;
            Ok((reported_runtime(format!("{message}.removed[{i}].runtime"), gone.runtime)?, gone.id))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ContainerReport { full, upserted, removed })
}

/// The wire form of a removal.
pub fn removed_container(runtime: crate::runtime::Runtime, id: &str) -> pb::RemovedContainer {
    pb::RemovedContainer { id: id.to_owned(), runtime: pb::RuntimeKind::from(runtime) as i32 }
}

impl From<&ContainerStats> for pb::ContainerStats {
    fn from(stats: &ContainerStats) -> Self {
        pb::ContainerStats {
            cpu_percent: stats.cpu_percent,
            memory_bytes: stats.memory_bytes,
            memory_limit_bytes: stats.memory_limit_bytes,
            network_rx_bytes: stats.network_rx_bytes,
            network_tx_bytes: stats.network_tx_bytes,
        }
    }
}

impl From<pb::ContainerStats> for ContainerStats {
    fn from(stats: pb::ContainerStats) -> Self {
        ContainerStats {
            cpu_percent: stats.cpu_percent,
            memory_bytes: stats.memory_bytes,
            memory_limit_bytes: stats.memory_limit_bytes,
            network_rx_bytes: stats.network_rx_bytes,
            network_tx_bytes: stats.network_tx_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Runtime;

    #[test]
    fn texts_a_node_reports_are_bounded() {
        let huge = format!("{}\n\u{1b}[2J", "x".repeat(100_000));
        let state = pb::ContainerState {
            id: huge.clone(),
            name: huge.clone(),
            image: huge.clone(),
            node_id: huge.clone(),
            labels: [(huge.clone(), huge.clone())].into_iter().collect(),
            ..Default::default()
        };
        let (info, node_id, _) = container_info(state);
        for text in [&info.id, &info.name, &info.image, &node_id].into_iter().chain(info.labels.iter().flat_map(|(k, v)| [k, v])) {
            assert!(text.chars().count() <= crate::text::NODE_TEXT_MAX + 1, "{} chars", text.chars().count());
            assert!(!text.contains('\n') && !text.contains('\u{1b}'));
        }
        let fingerprint: crate::fingerprint::Fingerprint =
            pb::NodeFingerprint { hostname: huge.clone(), kernel: huge.clone(), ..Default::default() }.into();
        assert!(fingerprint.hostname.chars().count() <= crate::text::NODE_TEXT_MAX + 1);
        assert!(fingerprint.kernel.chars().count() <= crate::text::NODE_TEXT_MAX + 1);
        let refused = crate::command::command_outcome(pb::CommandResult { ok: false, error_message: huge, ..Default::default() });
        let message = refused.expect_err("an error").message;
        assert!(message.chars().count() <= crate::text::NODE_MESSAGE_MAX + 1);
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "web".into(),
            image: "127.0.0.1:5000/diplo/busybox:latest".into(),
            command: vec!["httpd".into(), "-f".into()],
            env: [("A".to_owned(), "1".to_owned())].into(),
            ports: vec![PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp }],
            mounts: vec![Mount { source: "data".into(), target: "/data".into(), read_only: false }],
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            restart_policy: RestartPolicy::UnlessStopped,
            read_only: true,
            tmpfs: vec!["/tmp".into()],
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            labels: [("team".to_owned(), "a".to_owned())].into(),
            healthcheck: Some(HealthCheck {
                probe: HealthProbe::Exec { argv: vec!["true".into()] },
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                retries: 3,
                start_period: Duration::ZERO,
            }),
            pids_limit: Some(64),
            cap_add: vec!["NET_BIND_SERVICE".into()],
            user: "1000:1000".into(),
            working_dir: "/srv".into(),
            stop_signal: "SIGINT".into(),
            stop_grace: Some(0),
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            memory_reservation: Some(32 << 20),
            network: Some("diplo-shop".into()),
            network_aliases: vec!["web".into(), "www".into()],
            extra_hosts: vec!["db:10.89.0.7".into(), "cache:fd00::3".into()],
        }
    }

    #[test]
    fn specs_round_trip() {
        let spec = spec();
        assert_eq!(ContainerSpec::try_from(pb::ContainerSpec::from(&spec)), Ok(spec.clone()));
        let base = spec.healthcheck.clone().expect("a check");
        for probe in [
            HealthProbe::Shell { command: "test -f /tmp/ok".into() },
            HealthProbe::Http { port: 8080, path: "/healthz".into() },
            HealthProbe::Tcp { port: 5432 },
        ] {
            let check = HealthCheck { probe, interval: Duration::from_millis(1500), start_period: Duration::from_secs(10), ..base.clone() };
            let spec = ContainerSpec { healthcheck: Some(check), restart_policy: RestartPolicy::OnFailure(Some(2)), ..spec.clone() };
            assert_eq!(ContainerSpec::try_from(pb::ContainerSpec::from(&spec)), Ok(spec));
        }
    }

    #[test]
    fn wire_health_checks_take_compose_forms_and_name_bad_fields() {
        let with = |check: pb::HealthCheck| {
            ContainerSpec::try_from(pb::ContainerSpec { healthcheck: Some(check), ..pb::ContainerSpec::from(&spec()) })
        };
        let cmd = |test: &[&str]| pb::HealthCheck {
            test: test.iter().map(|s| (*s).to_owned()).collect(),
            interval_seconds: 5,
            ..Default::default()
        };
        assert_eq!(with(cmd(&["NONE"])).map(|s| s.healthcheck), Ok(None));
        assert_eq!(with(pb::HealthCheck::default()).map(|s| s.healthcheck), Ok(None));
        let shell = with(cmd(&["CMD-SHELL", "exit 0"])).expect("shell").healthcheck.expect("a check");
        assert_eq!(shell.probe, HealthProbe::Shell { command: "exit 0".into() });
        assert_eq!((shell.interval, shell.timeout, shell.retries), (Duration::from_secs(5), Duration::from_secs(1), 1));
        let http = with(pb::HealthCheck { kind: "http".into(), port: 80, ..cmd(&[]) }).expect("http").healthcheck.expect("a check");
        assert_eq!(http.probe, HealthProbe::Http { port: 80, path: "/".into() });
        let field = |check| with(check).expect_err("refused").field;
        assert_eq!(field(pb::HealthCheck { kind: "tcp".into(), ..cmd(&[]) }), "healthcheck.port");
        assert_eq!(field(pb::HealthCheck { kind: "http".into(), port: 80, path: "x".into(), ..cmd(&[]) }), "healthcheck.path");
        assert_eq!(field(pb::HealthCheck { kind: "grpc".into(), ..cmd(&[]) }), "healthcheck.kind");
        assert_eq!(field(cmd(&["CMD-SHELL"])), "healthcheck.test");
        assert_eq!(field(pb::HealthCheck { interval_ms: 200, ..cmd(&["true"]) }), "healthcheck.interval");
        assert_eq!(field(pb::HealthCheck { timeout_seconds: 7200, ..cmd(&["true"]) }), "healthcheck.timeout");
        assert_eq!(field(pb::HealthCheck { retries: 1000, ..cmd(&["true"]) }), "healthcheck.retries");
        assert_eq!(field(pb::HealthCheck { start_period_ms: 4_000_000, ..cmd(&["true"]) }), "healthcheck.start_period");
    }

    #[test]
    fn bad_wire_specs_name_the_field() {
        let mut wire = pb::ContainerSpec::from(&spec());
        wire.ports[0].host_port = 70000;
        assert_eq!(ContainerSpec::try_from(wire).unwrap_err().field, "ports[0].host_port");
        let mut wire = pb::ContainerSpec::from(&spec());
        wire.restart_policy = "sometimes".into();
        assert_eq!(ContainerSpec::try_from(wire).unwrap_err().field, "restart_policy");
        let mut wire = pb::ContainerSpec::from(&spec());
        wire.mounts[0].target = "data".into();
        assert_eq!(ContainerSpec::try_from(wire).unwrap_err().field, "mounts[0].target");
        let mut wire = pb::ContainerSpec::from(&spec());
        wire.image = " ".into();
        assert_eq!(ContainerSpec::try_from(wire).unwrap_err().field, "image");
    }

    fn state(id: &str, runtime: Runtime) -> pb::ContainerState {
        let info = ContainerInfo {
            exit_code: 137,
            labels: [(crate::container::LABEL_NODE.to_owned(), "n1".to_owned())].into(),
            ..ContainerInfo::new(id, "web", "img", ContainerStatus::Exited)
        };
        container_state(&info, "n1", runtime)
    }

    #[test]
    fn a_delta_round_trips_and_names_the_nodes_it_claims() {
        let report =
            container_report("heartbeat", vec![state("abc", Runtime::Docker)], vec![removed_container(Runtime::Lxc, "gone")], false)
                .expect("valid");
        assert!(!report.full && !report.is_empty());
        assert_eq!(report.upserted[0].runtime, Runtime::Docker);
        assert_eq!(report.upserted[0].info.status, ContainerStatus::Exited);
        assert_eq!(report.upserted[0].claimed_nodes().collect::<Vec<_>>(), ["n1", "n1"]);
        assert_eq!(report.removed, [(Runtime::Lxc, "gone".to_owned())]);
        assert!(container_report("heartbeat", Vec::new(), Vec::new(), false).expect("idle").is_empty());
        assert!(!container_report("heartbeat", Vec::new(), Vec::new(), true).expect("empty full list").is_empty());
    }

    #[test]
    fn hostile_reports_are_refused_naming_the_field() {
        let many = |n: usize| (0..n).map(|i| state(&format!("c{i}"), Runtime::Docker)).collect::<Vec<_>>();
        let gone = |id: &str, runtime: i32| pb::RemovedContainer { id: id.into(), runtime };
        let docker = pb::RuntimeKind::Docker as i32;
        let mut unknown_runtime = state("abc", Runtime::Docker);
        unknown_runtime.runtime = 0;
        let mut labels = state("abc", Runtime::Docker);
        labels.labels = (0..=MAX_REPORTED_LABELS).map(|i| (format!("k{i}"), String::new())).collect();
        let mut ports = state("abc", Runtime::Docker);
        ports.ports = vec![pb::PortMapping { host_port: 80, container_port: 80, protocol: "tcp".into() }; MAX_REPORTED_PORTS + 1];
        let cases: Vec<(Vec<pb::ContainerState>, Vec<pb::RemovedContainer>, bool, &str)> = vec![
            (many(MAX_REPORTED_CONTAINERS + 1), Vec::new(), false, "heartbeat.containers"),
            (many(MAX_REPORTED_CONTAINERS), vec![gone("x", docker)], false, "heartbeat.containers"),
            (vec![state("", Runtime::Docker)], Vec::new(), false, "heartbeat.containers[0].id"),
            (vec![state(&"x".repeat(MAX_REPORTED_ID_BYTES + 1), Runtime::Docker)], Vec::new(), false, "heartbeat.containers[0].id"),
            (vec![state("a\nb", Runtime::Docker)], Vec::new(), false, "heartbeat.containers[0].id"),
            (vec![unknown_runtime], Vec::new(), false, "heartbeat.containers[0].runtime"),
            (vec![labels], Vec::new(), false, "heartbeat.containers[0].labels"),
            (vec![ports], Vec::new(), false, "heartbeat.containers[0].ports"),
            (Vec::new(), vec![gone("ok", docker), gone("", docker)], false, "heartbeat.removed[1].id"),
            (Vec::new(), vec![gone(&"y".repeat(100_000), docker)], false, "heartbeat.removed[0].id"),
            (Vec::new(), vec![gone("x", 0)], false, "heartbeat.removed[0].runtime"),
            (Vec::new(), vec![gone("x", 99)], false, "heartbeat.removed[0].runtime"),
            (Vec::new(), vec![gone("x", docker)], true, "heartbeat.removed"),
        ];
        for (containers, removed, full, field) in cases {
            let err = container_report("heartbeat", containers, removed, full).expect_err(field);
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().len() < 300, "the error quotes the input: {err}");
        }
        // At the bound: accepted.
        assert_eq!(
            container_report("heartbeat", many(MAX_REPORTED_CONTAINERS), Vec::new(), true).expect("at the bound").upserted.len(),
            MAX_REPORTED_CONTAINERS
        );
    }

    #[test]
    fn observed_containers_round_trip() {
        let info = ContainerInfo {
            id: "abc".into(),
            name: "web".into(),
            image: "img".into(),
            status: ContainerStatus::Running,
            exit_code: 0,
            pid: Some(42),
            ip_address: Some("10.0.3.5".into()),
            ports: vec![PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Udp }],
            started_at: Some("2026-01-01T00:00:00Z".into()),
            health: Some(Health::Healthy),
            labels: [("diplo.instance".to_owned(), "i1".to_owned())].into(),
            restart_count: 7,
        };
        let (back, node, runtime) = container_info(container_state(&info, "n1", Runtime::Lxc));
        assert_eq!((back, node.as_str(), runtime), (info, "n1", Some(Runtime::Lxc)));
    }
}
