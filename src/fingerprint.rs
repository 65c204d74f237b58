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
    /// Named volumes per runtime ([`volumes_from_wire`] bounds and checks them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: VolumeReport,
}

/// The most volume names a node reports per runtime; more are dropped.
pub const MAX_REPORTED_VOLUMES: usize = 1_024;

/// Named volumes per runtime, each list sorted and without duplicates.
pub type VolumeReport = BTreeMap<Runtime, Vec<String>>;

/// A runtime's volume names as reported: valid names only
/// ([`crate::resources::validate_resource_name`]), sorted, each once, at most
/// [`MAX_REPORTED_VOLUMES`].
pub fn bounded_volume_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let valid: std::collections::BTreeSet<&str> =
        names.into_iter().filter(|name| crate::resources::validate_resource_name(name).is_ok()).collect();
    valid.into_iter().take(MAX_REPORTED_VOLUMES).map(str::to_owned).collect()
}

/// The wire form of a volume report.
pub fn volumes_to_wire(volumes: &VolumeReport) -> Vec<pb::RuntimeVolumes> {
    volumes
        .iter()
        .map(|(runtime, names)| pb::RuntimeVolumes { runtime: pb::RuntimeKind::from(*runtime) as i32, names: names.clone() })
        .collect()
}

/// A volume report from the wire: unknown runtimes dropped, names bounded and checked
/// ([`bounded_volume_names`]); a runtime listed twice keeps its last list.
pub fn volumes_from_wire(volumes: &[pb::RuntimeVolumes]) -> VolumeReport {
    volumes
        .iter()
        .filter_map(|entry| {
            let runtime = pb::RuntimeKind::try_from(entry.runtime).ok()?.runtime()?;
            Some((runtime, bounded_volume_names(entry.names.iter().map(String::as_str))))
        })
        .collect()
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
            volumes: volumes_to_wire(&fp.volumes),
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
            volumes: volumes_from_wire(&fp.volumes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_reports_are_bounded_and_checked() {
        let many: Vec<String> = (0..MAX_REPORTED_VOLUMES + 10).map(|i| format!("v{i:05}")).collect();
        let wire = vec![
            pb::RuntimeVolumes {
                runtime: pb::RuntimeKind::Lxc as i32,
                names: vec!["b".into(), "../etc".into(), "a".into(), "b".into(), String::new(), "x".repeat(200)],
            },
            pb::RuntimeVolumes { runtime: pb::RuntimeKind::Docker as i32, names: many },
            pb::RuntimeVolumes { runtime: pb::RuntimeKind::Unspecified as i32, names: vec!["lost".into()] },
            pb::RuntimeVolumes { runtime: 99, names: vec!["lost".into()] },
        ];
        let report = volumes_from_wire(&wire);
        assert_eq!(report.keys().copied().collect::<Vec<_>>(), [Runtime::Docker, Runtime::Lxc]);
        assert_eq!(report[&Runtime::Lxc], ["a", "b"]);
        assert_eq!(report[&Runtime::Docker].len(), MAX_REPORTED_VOLUMES);
        assert_eq!(volumes_from_wire(&volumes_to_wire(&report)), report, "a report round-trips");
        let fp = Fingerprint { volumes: report.clone(), ..Fingerprint::default() };
        assert_eq!(Fingerprint::from(pb::NodeFingerprint::from(&fp)).volumes, report);
    }

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
