//! Container runtimes: their names and the per-platform preference rules: Raspberry Pi and other ARM boards LXC → Docker → containerd → Podman; x86_64 Linux Docker → containerd → Podman → LXC; macOS Docker → containerd; anything else the first available.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pb::RuntimeKind;

/// A container runtime Diplo drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Docker Engine, through its API socket.
    Docker,
    /// containerd, through its gRPC API (namespace `diplo`).
    Containerd,
    /// LXC, running OCI images through the `oci` template.
    Lxc,
    /// Podman, through its Docker-compatible API socket.
    Podman,
}

impl Runtime {
    /// Every runtime, in declaration order.
    pub const ALL: [Runtime; 4] = [Runtime::Docker, Runtime::Containerd, Runtime::Lxc, Runtime::Podman];

    /// The name users type and see: `docker`, `containerd`, `lxc`, `podman`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Lxc => "lxc",
            Runtime::Podman => "podman",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown runtime name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown runtime {0:?}: expected docker, containerd, lxc or podman")]
pub struct UnknownRuntime(pub String);

impl FromStr for Runtime {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Runtime::ALL.into_iter().find(|runtime| runtime.name().eq_ignore_ascii_case(s.trim())).ok_or_else(|| UnknownRuntime(s.to_owned()))
    }
}

impl From<Runtime> for RuntimeKind {
    fn from(runtime: Runtime) -> Self {
        match runtime {
            Runtime::Docker => RuntimeKind::Docker,
            Runtime::Containerd => RuntimeKind::Containerd,
            Runtime::Lxc => RuntimeKind::Lxc,
            Runtime::Podman => RuntimeKind::Podman,
        }
    }
}

impl RuntimeKind {
    /// The short name (`docker`, ...), `unspecified` for the zero value.
    pub fn short_name(self) -> &'static str {
        self.runtime().map_or("unspecified", Runtime::name)
    }

    /// The domain runtime, `None` for `RUNTIME_KIND_UNSPECIFIED`.
    pub fn runtime(self) -> Option<Runtime> {
        match self {
            RuntimeKind::Unspecified => None,
            RuntimeKind::Docker => Some(Runtime::Docker),
            RuntimeKind::Containerd => Some(Runtime::Containerd),
            RuntimeKind::Lxc => Some(Runtime::Lxc),
            RuntimeKind::Podman => Some(Runtime::Podman),
        }
    }
}

/// The platform facts that decide runtime preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformClass {
    /// A Raspberry Pi (the device tree says so).
    RaspberryPi,
    /// Any other ARM or ARM64 machine.
    Arm,
    /// x86_64 Linux.
    X86Linux,
    /// macOS.
    MacOs,
    /// Anything else: the first available runtime wins.
    Other,
}

impl PlatformClass {
    /// Classifies a platform from its os (`linux`, `darwin`), arch (Go/OCI spelling or
    /// `uname -m`) and whether it is a Raspberry Pi.
    pub fn of(os: &str, arch: &str, raspberry_pi: bool) -> Self {
        let arm = matches!(arch, "arm" | "arm64" | "aarch64" | "armv7l" | "armv6l" | "armhf");
        match (os, arch) {
            _ if raspberry_pi => PlatformClass::RaspberryPi,
            ("darwin" | "macos", _) => PlatformClass::MacOs,
            _ if arm => PlatformClass::Arm,
            ("linux", "amd64" | "x86_64") => PlatformClass::X86Linux,
            _ => PlatformClass::Other,
        }
    }

    /// Runtimes in order of preference on this platform. `Other` has no
    /// order of its own: callers take the first available.
    pub fn preference(self) -> &'static [Runtime] {
        use Runtime::*;
        match self {
            PlatformClass::RaspberryPi | PlatformClass::Arm => &[Lxc, Docker, Containerd, Podman],
            PlatformClass::X86Linux => &[Docker, Containerd, Podman, Lxc],
            PlatformClass::MacOs => &[Docker, Containerd],
            PlatformClass::Other => &[],
        }
    }

    /// The preferred runtime among `available`: the first in preference order, or for
    /// platforms without an order the first available.
    pub fn preferred(self, available: &[Runtime]) -> Option<Runtime> {
        match self {
            PlatformClass::Other => available.first().copied(),
            class => class.preference().iter().copied().find(|runtime| available.contains(runtime)),
        }
    }
}

/// An operation or container setting a runtime driver may or may not honour. The table
/// [`Runtime::capabilities`] is the one source for what each driver supports: the control
/// plane reports it (`/api/{runtime}/status`, backend info) and refuses a workload that
/// asks a runtime for something it lacks ([`Runtime::check_spec`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Pull images.
    Pull,
    /// Create containers.
    Create,
    /// Start containers.
    Start,
    /// Stop containers.
    Stop,
    /// Restart containers.
    Restart,
    /// Remove containers.
    Remove,
    /// Read containers' logs.
    Logs,
    /// Run commands in containers.
    Exec,
    /// Sample containers' resource usage.
    Stats,
    /// Report container events as they happen.
    Events,
    /// Limit a container's memory and CPU.
    ResourceLimits,
    /// Publish container ports on the host.
    PortPublishing,
    /// Honour a container's health check (`healthcheck`: command, HTTP or TCP): every
    /// runtime, the daemon running command checks on Docker and the agent's
    /// supervisor probing the rest.
    Healthcheck,
    /// The daemon restarts exited containers itself by their restart policy and counts the
    /// restarts; elsewhere the agent's supervisor does (restart policies hold on every
    /// runtime either way).
    RuntimeRestartPolicy,
    /// Freeze and thaw a container's processes.
    Pause,
    /// Copy files into and out of a container as tar archives.
    CopyFiles,
    /// List, inspect, remove and prune the node's images.
    Images,
    /// Create, remove, connect and disconnect networks.
    Networks,
    /// Create, list, inspect, remove and prune named volumes (containerd and LXC: plain
    /// directories of the agent, with their labels beside them).
    Volumes,
}

impl Capability {
    /// The name reports use (`resource_limits`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Capability::Pull => "pull",
            Capability::Create => "create",
            Capability::Start => "start",
            Capability::Stop => "stop",
            Capability::Restart => "restart",
            Capability::Remove => "remove",
            Capability::Logs => "logs",
            Capability::Exec => "exec",
            Capability::Stats => "stats",
            Capability::Events => "events",
            Capability::ResourceLimits => "resource_limits",
            Capability::PortPublishing => "port_publishing",
            Capability::Healthcheck => "healthcheck",
            Capability::RuntimeRestartPolicy => "runtime_restart_policy",
            Capability::Pause => "pause",
            Capability::CopyFiles => "copy_files",
            Capability::Images => "images",
            Capability::Networks => "networks",
            Capability::Volumes => "volumes",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What every driver implements (health checks through the agent's supervisor where the
/// runtime runs none; named volumes as directories of the agent where the runtime keeps none).
const COMMON_CAPABILITIES: [Capability; 17] = [
    Capability::Pull,
    Capability::Create,
    Capability::Start,
    Capability::Stop,
    Capability::Restart,
    Capability::Remove,
    Capability::Logs,
    Capability::Exec,
    Capability::Stats,
    Capability::Events,
    Capability::ResourceLimits,
    Capability::PortPublishing,
    Capability::Healthcheck,
    Capability::Pause,
    Capability::CopyFiles,
    Capability::Images,
    Capability::Volumes,
];

/// A container setting a runtime cannot honour: `field` of the spec, and the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{runtime} does not support {field} ({capability}); runtimes that do: {supported}")]
pub struct Unsupported {
    /// The spec's field at fault.
    pub field: &'static str,
    /// The runtime asked.
    pub runtime: Runtime,
    /// The capability it lacks.
    pub capability: Capability,
    /// The runtimes that have it, comma separated.
    pub supported: String,
}

impl Runtime {
    /// What this runtime's driver supports, in a stable order.
    pub fn capabilities(self) -> Vec<Capability> {
        let mut capabilities = COMMON_CAPABILITIES.to_vec();
        match self {
            // Docker and Podman restart exited containers in the daemon, and keep network
            // objects.
            Runtime::Docker | Runtime::Podman => {
                capabilities.extend([Capability::RuntimeRestartPolicy, Capability::Networks]);
            }
            // containerd and LXC have no daemon-side restart policies (the agent supervises
            // them), and no network objects here.
            Runtime::Containerd | Runtime::Lxc => {}
        }
        capabilities
    }

    /// Whether this runtime's driver supports `capability`.
    pub fn supports(self, capability: Capability) -> bool {
        self.capabilities().contains(&capability)
    }

    /// The container a deployment's template runs as once placed on this runtime. A
    /// runtime without network objects ([`Capability::Networks`]) runs it on its default
    /// network instead of the template's `network` (and without its aliases): a stack's
    /// services reach each other there through their `extra_hosts` entries, which every
    /// runtime writes into the container's `/etc/hosts`. Asked directly (a container, or a
    /// deployment forcing such a runtime), a `network` is refused ([`Runtime::check_spec`]).
    pub fn placed_spec(self, mut spec: crate::container::ContainerSpec) -> crate::container::ContainerSpec {
        if !self.supports(Capability::Networks) {
            spec.network = None;
            spec.network_aliases.clear();
        }
        spec
    }

    /// Refuses a container spec asking this runtime for a setting it cannot honour, naming
    /// the field and the runtime (never silently ignored).
    pub fn check_spec(self, spec: &crate::container::ContainerSpec) -> Result<(), Unsupported> {
        let needs = [
            (spec.healthcheck.is_some(), "healthcheck", Capability::Healthcheck),
            (spec.network.is_some(), "network", Capability::Networks),
        ];
        match needs.into_iter().find(|&(asked, _, capability)| asked && !self.supports(capability)) {
            None => Ok(()),
            Some((_, field, capability)) => Err(Unsupported {
                field,
                runtime: self,
                capability,
                supported: Runtime::ALL.into_iter().filter(|r| r.supports(capability)).map(Runtime::name).collect::<Vec<_>>().join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Runtime::*;

    #[test]
    fn names_round_trip_through_strings_and_the_wire_enum() {
        for runtime in Runtime::ALL {
            assert_eq!(runtime.name().parse::<Runtime>(), Ok(runtime));
            assert_eq!(RuntimeKind::from(runtime).runtime(), Some(runtime));
        }
        assert_eq!(" Docker ".parse::<Runtime>(), Ok(Docker));
        assert!("rkt".parse::<Runtime>().unwrap_err().to_string().contains("rkt"));
        assert_eq!(RuntimeKind::Unspecified.runtime(), None);
    }

    #[test]
    fn preference_follows_the_platform_rules() {
        let all = [Podman, Lxc, Containerd, Docker];
        assert_eq!(PlatformClass::of("linux", "arm64", true).preferred(&all), Some(Lxc));
        assert_eq!(PlatformClass::of("linux", "aarch64", false).preferred(&all), Some(Lxc));
        assert_eq!(PlatformClass::of("linux", "arm64", false).preferred(&[Podman, Docker]), Some(Docker));
        assert_eq!(PlatformClass::of("linux", "amd64", false).preferred(&all), Some(Docker));
        assert_eq!(PlatformClass::of("linux", "x86_64", false).preferred(&[Lxc, Podman]), Some(Podman));
        assert_eq!(PlatformClass::of("darwin", "arm64", false).preferred(&all), Some(Docker));
        assert_eq!(PlatformClass::of("darwin", "arm64", false).preferred(&[Lxc]), None);
        assert_eq!(PlatformClass::of("freebsd", "riscv64", false).preferred(&[Podman, Lxc]), Some(Podman));
        assert_eq!(PlatformClass::of("linux", "amd64", false).preferred(&[]), None);
    }

    #[test]
    fn capabilities_say_what_each_driver_supports_and_drive_refusals() {
        use crate::container::{ContainerSpec, HealthCheck, HealthProbe, RestartPolicy};
        let cases = [(Docker, true), (Podman, true), (Containerd, false), (Lxc, false)];
        let command = HealthCheck::command(vec!["true".into()]);
        let checks = [
            command.clone(),
            HealthCheck { probe: HealthProbe::Http { port: 80, path: "/".into() }, ..command.clone() },
            HealthCheck { probe: HealthProbe::Tcp { port: 5432 }, ..command },
        ];
        for (runtime, daemon_side) in cases {
            let capabilities = runtime.capabilities();
            for common in COMMON_CAPABILITIES {
                assert!(capabilities.contains(&common), "{runtime} lacks {common}");
            }
            assert!(runtime.supports(Capability::Healthcheck), "{runtime}: health checks hold on every runtime");
            assert_eq!(runtime.supports(Capability::RuntimeRestartPolicy), daemon_side, "{runtime}");
            assert_eq!(runtime.supports(Capability::Networks), daemon_side, "{runtime}");
            assert!(runtime.supports(Capability::Volumes), "{runtime}: named volumes work on every runtime");
            assert_eq!(runtime.check_spec(&ContainerSpec::default()), Ok(()), "{runtime}");
            for check in &checks {
                for policy in [RestartPolicy::No, RestartPolicy::Always, RestartPolicy::OnFailure(Some(2)), RestartPolicy::UnlessStopped] {
                    let spec = ContainerSpec { healthcheck: Some(check.clone()), restart_policy: policy, ..ContainerSpec::default() };
                    assert_eq!(runtime.check_spec(&spec), Ok(()), "{runtime} refused {policy} with {check:?}");
                }
            }
        }
        let refusal = Unsupported { field: "x", runtime: Lxc, capability: Capability::Networks, supported: "docker, podman".into() };
        assert_eq!(refusal.to_string(), "lxc does not support x (networks); runtimes that do: docker, podman");
        for runtime in [Containerd, Lxc] {
            let networked = ContainerSpec { network: Some("diplo-shop".into()), ..ContainerSpec::default() };
            let refusal = runtime.check_spec(&networked).expect_err("no network objects");
            assert_eq!(refusal.field, "network", "{runtime}");
        }
        for runtime in [Docker, Podman] {
            assert_eq!(runtime.check_spec(&ContainerSpec { network: Some("n".into()), ..ContainerSpec::default() }), Ok(()), "{runtime}");
        }
        let stacked = ContainerSpec {
            network: Some("diplo-shop".into()),
            network_aliases: vec!["web".into()],
            extra_hosts: vec!["db:10.89.0.7".into()],
            ..ContainerSpec::default()
        };
        for (runtime, keeps_network) in cases {
            let placed = runtime.placed_spec(stacked.clone());
            assert_eq!(placed.network.is_some(), keeps_network, "{runtime}");
            assert_eq!(placed.network_aliases.is_empty(), !keeps_network, "{runtime}");
            assert_eq!(placed.extra_hosts, stacked.extra_hosts, "{runtime}: hosts entries hold everywhere");
            assert_eq!(runtime.check_spec(&placed), Ok(()), "{runtime}: what is placed passes the capability table");
        }
        assert_eq!(serde_json::to_value(Capability::ResourceLimits).ok(), Some(serde_json::json!("resource_limits")));
    }
}
