//! Runtime-neutral container types shared by the agent's drivers and the control plane.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Label carrying the deployment (or `direct` for single containers) a container belongs to.
pub const LABEL_DEPLOYMENT: &str = "diplo.deployment";
/// Label carrying the instance id of a container.
pub const LABEL_INSTANCE: &str = "diplo.instance";
/// Label carrying the node id that created the container.
pub const LABEL_NODE: &str = "diplo.node";
/// Prefix of the labels Diplo sets itself; requests may not set them.
pub const RESERVED_LABEL_PREFIX: &str = "diplo.";

/// Whether a label key belongs to Diplo (`diplo.*`, any case): such labels decide which
/// deployment, instance and node a container belongs to, so only Diplo sets them.
pub fn is_reserved_label(key: &str) -> bool {
    key.get(..RESERVED_LABEL_PREFIX.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(RESERVED_LABEL_PREFIX))
}

/// When a container is restarted after it exits (and, when it has a health check, after
/// it turns unhealthy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// Always, also after a daemon or agent restart.
    Always,
    /// When it exits non-zero (`on-failure`), at most N times in a row (`on-failure:N`).
    OnFailure(Option<u32>),
    /// Always, unless it was stopped by hand.
    UnlessStopped,
}

impl RestartPolicy {
    /// `on-failure` without a limit.
    pub const ON_FAILURE: RestartPolicy = RestartPolicy::OnFailure(None);

    /// Whether the policy is `on-failure`, with or without a limit.
    pub fn is_on_failure(self) -> bool {
        matches!(self, RestartPolicy::OnFailure(_))
    }

    /// The most restarts in a row `on-failure:N` allows; `None` for no limit.
    pub fn max_retries(self) -> Option<u32> {
        match self {
            RestartPolicy::OnFailure(max) => max,
            _ => None,
        }
    }
}

impl FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure(None)),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            other => match other.strip_prefix("on-failure:") {
                Some(count) => match count.parse::<u32>() {
                    Ok(0) => Ok(RestartPolicy::OnFailure(None)),
                    Ok(max) => Ok(RestartPolicy::OnFailure(Some(max))),
                    Err(_) => Err(format!("{other:?}: the on-failure retry count must be a number (on-failure:3)")),
                },
                None => Err(format!("unknown restart policy {other:?}: expected no, always, on-failure[:N] or unless-stopped")),
            },
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::OnFailure(None) => f.write_str("on-failure"),
            RestartPolicy::OnFailure(Some(max)) => write!(f, "on-failure:{max}"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
        }
    }
}

impl TryFrom<String> for RestartPolicy {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<RestartPolicy> for String {
    fn from(policy: RestartPolicy) -> Self {
        policy.to_string()
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A host port on the node forwarded to a port in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the node.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// A named volume or host path mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Volume name, or an absolute host path for a bind mount.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl Mount {
    /// A bind mount (absolute host path) rather than a named volume.
    pub fn is_bind(&self) -> bool {
        self.source.starts_with('/')
    }
}

pub use crate::health::{HealthCheck, HealthProbe};

/// Everything needed to create a container, on any runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name, unique on the node.
    pub name: String,
    /// OCI image reference.
    pub image: String,
    /// argv; empty runs the image's default command.
    pub command: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Volumes and bind mounts.
    pub mounts: Vec<Mount>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_millis: Option<u32>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Read-only root filesystem.
    pub read_only: bool,
    /// Paths mounted as tmpfs.
    pub tmpfs: Vec<String>,
    /// Capabilities to drop (`ALL` for all).
    pub cap_drop: Vec<String>,
    /// Forbid privilege escalation.
    pub no_new_privileges: bool,
    /// Labels; Diplo's own (`diplo.*`) are added by the agent.
    pub labels: BTreeMap<String, String>,
    /// Health check.
    pub healthcheck: Option<HealthCheck>,
    /// Most processes (tasks) the container may run; `None` leaves the runtime's default.
    #[serde(default)]
    pub pids_limit: Option<u32>,
    /// Capabilities to add to the runtime's default set (`NET_ADMIN` or `CAP_NET_ADMIN`).
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// User the process runs as: `uid[:gid]` or `name[:group]`; empty keeps the image's.
    #[serde(default)]
    pub user: String,
    /// Absolute working directory of the process; empty keeps the image's.
    #[serde(default)]
    pub working_dir: String,
    /// Signal that asks the process to stop (`SIGTERM`, `INT`, ...); empty means `SIGTERM`.
    #[serde(default)]
    pub stop_signal: String,
    /// Seconds between the stop signal and SIGKILL; `None` leaves the driver's default.
    #[serde(default)]
    pub stop_grace: Option<u32>,
    /// argv prefix replacing the image's entrypoint; empty keeps the image's.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Memory the container is guaranteed (soft limit), bytes.
    #[serde(default)]
    pub memory_reservation: Option<u64>,
    /// A network the container joins instead of the runtime's default one, created on the
    /// node (labelled as Diplo's) when missing: how a stack's services share one network.
    #[serde(default)]
    pub network: Option<String>,
    /// Names other containers on [`ContainerSpec::network`] reach this one by (a stack's
    /// service name); only with a network.
    #[serde(default)]
    pub network_aliases: Vec<String>,
    /// Extra `/etc/hosts` entries, `name:ip` as `docker run --add-host` spells them: how a
    /// stack's services reach each other by name on runtimes without network objects.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Created, never started.
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// Restarting.
    Restarting,
    /// Exited (see the exit code).
    Exited,
    /// Anything the runtime reports that has no equivalent.
    Unknown,
}

/// Health as reported by the container's health check (run by the daemon or probed by the
/// agent's supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet.
    Starting,
    /// Last checks passed.
    Healthy,
    /// Retries exhausted.
    Unhealthy,
}

/// A container as observed on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Runtime's id for the container.
    pub id: String,
    /// Name.
    pub name: String,
    /// Image reference it was created from.
    pub image: String,
    /// Lifecycle state.
    pub status: ContainerStatus,
    /// Exit code of the last run (0 while running).
    pub exit_code: i64,
    /// Main process id on the host while running.
    pub pid: Option<u32>,
    /// Address on the runtime's network.
    pub ip_address: Option<String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Start time of the current or last run (RFC 3339).
    pub started_at: Option<String>,
    /// Health check state, if it has a check.
    pub health: Option<Health>,
    /// All labels.
    pub labels: BTreeMap<String, String>,
    /// How many times it was restarted by its restart policy: the daemon's own count
    /// (Docker and Podman keep it across daemon restarts) plus the restarts the agent's
    /// supervisor made (after an exit on containerd and LXC, after turning unhealthy on
    /// every runtime; kept across agent restarts).
    pub restart_count: u32,
}

impl ContainerInfo {
    /// A container as first seen: its id, name, image and status, with no process, address,
    /// published ports, health or labels yet (set them with struct update syntax).
    pub fn new(id: impl Into<String>, name: impl Into<String>, image: impl Into<String>, status: ContainerStatus) -> Self {
        ContainerInfo {
            id: id.into(),
            name: name.into(),
            image: image.into(),
            status,
            exit_code: 0,
            pid: None,
            ip_address: None,
            ports: Vec::new(),
            started_at: None,
            health: None,
            labels: BTreeMap::new(),
            restart_count: 0,
        }
    }
}

/// What an exec returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code of the command.
    pub exit_code: i64,
    /// Bytes written to stdout.
    pub stdout: Vec<u8>,
    /// Bytes written to stderr.
    pub stderr: Vec<u8>,
}

/// Which logs to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new output.
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u32>,
    /// Prefix lines with timestamps.
    pub timestamps: bool,
}

/// Lines a log read goes back when it names no `tail` (or 0).
pub const DEFAULT_LOG_TAIL: u32 = 1_000;
/// The most lines a log read may go back.
pub const MAX_LOG_TAIL: u32 = 10_000;
/// The most bytes of output (stdout and stderr together) an exec or a log read that
/// does not follow returns; the rest is left out and [`output_truncated_note`] says so.
pub const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// The line that replaces output left out beyond [`MAX_OUTPUT_BYTES`] (at the end).
pub fn output_truncated_note() -> String {
    format!("\n[output truncated after {} MiB]\n", MAX_OUTPUT_BYTES / (1024 * 1024))
}

/// The line that opens a log read whose older lines were left out to stay within
/// [`MAX_OUTPUT_BYTES`] (the newest are kept).
pub fn log_truncated_note() -> String {
    format!("[earlier lines left out: only the last {} MiB of the log are returned]\n", MAX_OUTPUT_BYTES / (1024 * 1024))
}

impl LogOptions {
    /// How many lines to go back: `tail`, or [`DEFAULT_LOG_TAIL`] when it is unset or
    /// 0. A `tail` above [`MAX_LOG_TAIL`] is refused with a message for the `tail` field.
    pub fn tail_lines(&self) -> Result<u32, String> {
        match self.tail {
            None | Some(0) => Ok(DEFAULT_LOG_TAIL),
            Some(lines) if lines > MAX_LOG_TAIL => Err(format!("{lines} lines is more than the maximum of {MAX_LOG_TAIL}")),
            Some(lines) => Ok(lines),
        }
    }

    /// These options with `tail` always set: as [`LogOptions::tail_lines`] gives it,
    /// capped at [`MAX_LOG_TAIL`] instead of refused (for readers that must not fail).
    pub fn bounded(self) -> LogOptions {
        LogOptions { tail: Some(self.tail_lines().unwrap_or(MAX_LOG_TAIL)), ..self }
    }
}

/// Which stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// stdout or stderr.
    pub stream: OutputStream,
    /// The bytes.
    pub data: Vec<u8>,
}

/// A resource usage sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU use in percent of one core over the sample.
    pub cpu_percent: f64,
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes (0 = none).
    pub memory_limit_bytes: u64,
    /// Bytes received on all interfaces.
    pub network_rx_bytes: u64,
    /// Bytes sent on all interfaces.
    pub network_tx_bytes: u64,
}

/// Something that happened to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    /// Container id.
    pub container_id: String,
    /// What happened.
    pub kind: RuntimeEventKind,
}

/// Kinds of container events Diplo follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeEventKind {
    /// Started.
    Start,
    /// Its main process exited.
    Die,
    /// Killed for running out of memory.
    Oom,
    /// Health turned healthy.
    Healthy,
    /// Health turned unhealthy.
    Unhealthy,
    /// Some other change of its state (created, paused, resumed, renamed): inspect it.
    Changed,
    /// Removed: the runtime no longer has it.
    Removed,
}

/// A memory size as users write it: `256m`, `1g`, `512k` (powers of 1024, an optional
/// trailing `b`, any case) or a plain number of bytes.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size like 256m or 1g");
    let text = text.trim().to_ascii_lowercase();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

/// Checks a container name: 1 to 63 characters of letters, digits, `_`, `.` and `-`,
/// starting with a letter or digit (what every runtime accepts).
pub fn validate_container_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if name.is_empty() || name.len() > 63 || !name.chars().all(ok) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{name:?} must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_sizes_parse_with_units_and_name_bad_ones() {
        let cases =
            [("256m", Some(256 << 20)), ("1G", Some(1 << 30)), ("512kb", Some(512 << 10)), ("1000", Some(1000)), (" 2g ", Some(2 << 30))];
        for (text, expected) in cases {
            assert_eq!(parse_memory(text).ok(), expected, "{text}");
        }
        for bad in ["", "lots", "12t", "m", "-1m", "99999999999999999999g"] {
            assert!(parse_memory(bad).expect_err(bad).contains("is not a size"), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn restart_policies_parse_and_print() {
        for policy in [
            RestartPolicy::No,
            RestartPolicy::Always,
            RestartPolicy::ON_FAILURE,
            RestartPolicy::OnFailure(Some(2)),
            RestartPolicy::UnlessStopped,
        ] {
            assert_eq!(policy.to_string().parse::<RestartPolicy>(), Ok(policy));
            assert_eq!(serde_json::from_value::<RestartPolicy>(serde_json::to_value(policy).expect("encodes")).ok(), Some(policy));
        }
        assert_eq!("on-failure:3".parse::<RestartPolicy>(), Ok(RestartPolicy::OnFailure(Some(3))));
        assert_eq!(RestartPolicy::OnFailure(Some(3)).to_string(), "on-failure:3");
        assert_eq!("on-failure:0".parse::<RestartPolicy>(), Ok(RestartPolicy::ON_FAILURE));
        assert_eq!(serde_json::to_value(RestartPolicy::UnlessStopped).ok(), Some(serde_json::json!("unless-stopped")));
        for bad in ["sometimes", "on-failure:", "on-failure:x", "on-failure:-1", "always:2"] {
            assert!(bad.parse::<RestartPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn diplo_labels_are_reserved_in_any_case() {
        for reserved in [LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_NODE, "diplo.anything", "DIPLO.node", "Diplo.x", "diplo."] {
            assert!(is_reserved_label(reserved), "{reserved}");
        }
        for free in ["team", "diplo", "diplonode", "x.diplo.node", "", "é"] {
            assert!(!is_reserved_label(free), "{free}");
        }
    }

    #[test]
    fn log_tails_default_and_are_capped() {
        let with = |tail| LogOptions { tail, ..LogOptions::default() };
        for (tail, lines) in
            [(None, Ok(DEFAULT_LOG_TAIL)), (Some(0), Ok(DEFAULT_LOG_TAIL)), (Some(5), Ok(5)), (Some(MAX_LOG_TAIL), Ok(MAX_LOG_TAIL))]
        {
            assert_eq!(with(tail).tail_lines(), lines, "{tail:?}");
        }
        let refused = with(Some(MAX_LOG_TAIL + 1)).tail_lines().expect_err("above the maximum");
        assert!(refused.contains("10000"), "{refused}");
        assert_eq!(with(Some(MAX_LOG_TAIL + 1)).bounded().tail, Some(MAX_LOG_TAIL));
        assert_eq!(with(None).bounded().tail, Some(DEFAULT_LOG_TAIL));
        assert_eq!(output_truncated_note(), "\n[output truncated after 4 MiB]\n");
        assert!(log_truncated_note().contains("last 4 MiB"));
    }

    #[test]
    fn container_names_are_checked() {
        assert!(validate_container_name("web-1.a_b").is_ok());
        for bad in ["", "-x", "a b", "x/y", &"a".repeat(64)] {
            assert!(validate_container_name(bad).is_err(), "{bad}");
        }
    }
}
