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
}
