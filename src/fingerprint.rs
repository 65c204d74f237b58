//! What an agent reports about its host, as a domain type shared by agent and control
//! plane, with its conversions to and from the wire type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pb;
use crate::runtime::{PlatformClass, Runtime};

/// One runtime's probe result on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeReport {
    /// Which runtime.
    pub runtime: Runtime,
    /// The runtime answered its probe.
    pub available: bool,
    /// Version the runtime reported, empty when unavailable.
    pub version: String,
    /// Socket or binary probed.
    pub endpoint: String,
    /// Why it is unavailable, empty when available.
    pub error: String,
    /// Runs without root.
    pub rootless: bool,
}

/// A node's probed facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Host name.
    pub hostname: String,
    /// OS family (`linux`).
    pub os: String,
    /// Distribution, from `/etc/os-release` `PRETTY_NAME`.
    pub os_release: String,
    /// Architecture in Go/OCI spelling (`amd64`, `arm64`, `arm`).
    pub arch: String,
    /// Kernel release.
    pub kernel: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub memory_bytes: u64,
    /// Raspberry Pi model from the device tree, empty elsewhere.
    pub raspberry_pi_model: String,
    /// `kvm`, `qemu`, `container`, `bare-metal`, ...
    pub virtualization: String,
    /// Every runtime probed, available or not.
    pub runtimes: Vec<RuntimeReport>,
    /// Agent version.
    pub agent_version: String,
    /// Labels the node reports about itself: informational only, placement constraints
    /// match the labels an admin gave the node (its join token's), never these.
    pub labels: BTreeMap<String, String>,
    /// Image builders usable on the host, in preference order.
    #[serde(default)]
    pub builders: Vec<crate::build::Builder>,
    /// Directory under which builds clone their workspaces (empty: the node builds nothing).
    #[serde(default)]
    pub build_dir: String,
}

impl Fingerprint {
    /// Runtimes that answered their probe.
    pub fn available_runtimes(&self) -> Vec<Runtime> {
        self.runtimes.iter().filter(|r| r.available).map(|r| r.runtime).collect()
    }

    /// The platform class that decides runtime preference.
    pub fn platform(&self) -> PlatformClass {
        PlatformClass::of(&self.os, &self.arch, !self.raspberry_pi_model.is_empty())
    }

    /// The preferred runtime among the available ones (the platform's preference order).
    pub fn preferred_runtime(&self) -> Option<Runtime> {
        self.platform().preferred(&self.available_runtimes())
    }
}

impl From<&RuntimeReport> for pb::RuntimeStatus {
    fn from(report: &RuntimeReport) -> Self {
        pb::RuntimeStatus {
            kind: pb::RuntimeKind::from(report.runtime) as i32,
            available: report.available,
            version: report.version.clone(),
            endpoint: report.endpoint.clone(),
            error: report.error.clone(),
            capabilities: Vec::new(),
            rootless: report.rootless,
        }
    }
}

impl From<&Fingerprint> for pb::NodeFingerprint {
    fn from(fp: &Fingerprint) -> Self {
        pb::NodeFingerprint {
            hostname: fp.hostname.clone(),
            os: fp.os.clone(),
            os_release: fp.os_release.clone(),
            arch: fp.arch.clone(),
            kernel: fp.kernel.clone(),
            cpus: fp.cpus,
            memory_bytes: fp.memory_bytes,
            raspberry_pi_model: fp.raspberry_pi_model.clone(),
            virtualization: fp.virtualization.clone(),
            runtimes: fp.runtimes.iter().map(Into::into).collect(),
            preferred_runtime: fp.preferred_runtime().map_or(pb::RuntimeKind::Unspecified, Into::into) as i32,
            agent_version: fp.agent_version.clone(),
            labels: fp.labels.clone().into_iter().collect(),
            builders: fp.builders.iter().map(|b| b.as_str().to_owned()).collect(),
            build_dir: fp.build_dir.clone(),
        }
    }
}

impl From<pb::NodeFingerprint> for Fingerprint {
    /// Runtimes with an unknown or unspecified kind are dropped; the preferred runtime
    /// is recomputed from the rules rather than trusted from the wire; every text is
    /// bounded ([`crate::text::node_text`]; runtime errors to a message's length).
    fn from(fp: pb::NodeFingerprint) -> Self {
        use crate::text::{NODE_MESSAGE_MAX, bounded, node_text};
        let runtimes = fp
            .runtimes
            .into_iter()
            .filter_map(|r| {
                let runtime = pb::RuntimeKind::try_from(r.kind).ok()?.runtime()?;
                Some(RuntimeReport {
                    runtime,
                    available: r.available,
                    version: node_text(&r.version),
                    endpoint: node_text(&r.endpoint),
                    error: bounded(&r.error, NODE_MESSAGE_MAX),
                    rootless: r.rootless,
                })
            })
            .collect();
        Fingerprint {
            hostname: node_text(&fp.hostname),
            os: node_text(&fp.os),
            os_release: node_text(&fp.os_release),
            arch: node_text(&fp.arch),
            kernel: node_text(&fp.kernel),
            cpus: fp.cpus,
            memory_bytes: fp.memory_bytes,
            raspberry_pi_model: node_text(&fp.raspberry_pi_model),
            virtualization: node_text(&fp.virtualization),
            runtimes,
            agent_version: node_text(&fp.agent_version),
            labels: fp.labels.iter().map(|(k, v)| (node_text(k), node_text(v))).collect(),
            // Unknown builder names are dropped, duplicates kept once.
            builders: crate::build::Builder::ALL.into_iter().filter(|b| fp.builders.iter().any(|name| name == b.as_str())).collect(),
            build_dir: node_text(&fp.build_dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(runtime: Runtime, available: bool) -> RuntimeReport {
        RuntimeReport {
            runtime,
            available,
            version: if available { "1.0".into() } else { String::new() },
            endpoint: "/run/x.sock".into(),
            error: if available { String::new() } else { "no socket".into() },
            rootless: false,
        }
    }

    #[test]
    fn survives_the_wire_and_computes_preference() {
        let fp = Fingerprint {
            hostname: "pi".into(),
            os: "linux".into(),
            arch: "arm64".into(),
            cpus: 4,
            memory_bytes: 8 << 30,
            raspberry_pi_model: "Raspberry Pi 4 Model B Rev 1.4".into(),
            runtimes: vec![report(Runtime::Docker, true), report(Runtime::Lxc, true), report(Runtime::Podman, false)],
            labels: BTreeMap::from([("zone".into(), "garage".into())]),
            builders: vec![crate::build::Builder::Docker, crate::build::Builder::Buildah],
            ..Fingerprint::default()
        };
        let wire = pb::NodeFingerprint::from(&fp);
        assert_eq!(wire.preferred_runtime, pb::RuntimeKind::Lxc as i32);
        assert_eq!(Fingerprint::from(wire), fp);
        assert_eq!(fp.available_runtimes(), vec![Runtime::Docker, Runtime::Lxc]);
    }

    #[test]
    fn unknown_runtime_kinds_from_the_wire_are_dropped() {
        let mut wire = pb::NodeFingerprint::from(&Fingerprint { runtimes: vec![report(Runtime::Docker, true)], ..Default::default() });
        wire.runtimes.push(pb::RuntimeStatus { kind: 99, available: true, ..Default::default() });
        wire.runtimes.push(pb::RuntimeStatus { kind: 0, available: true, ..Default::default() });
        assert_eq!(Fingerprint::from(wire).runtimes.len(), 1);
    }
}
