//! The simulated fleet: node names and fingerprints, deterministic by node index, from
//! a small cycle of host profiles (Raspberry Pis, KVM guests, bare-metal servers).

use std::collections::BTreeMap;

use diplo_agent::runtime::fake;
use diplo_api::fingerprint::{Fingerprint, RuntimeReport};
use diplo_api::runtime::Runtime;

/// One kind of simulated host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Short name, for the start-up summary.
    pub name: &'static str,
    /// Architecture in Go/OCI spelling.
    pub arch: &'static str,
    /// Distribution.
    pub os_release: &'static str,
    /// Kernel release.
    pub kernel: &'static str,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in GiB.
    pub memory_gib: u64,
    /// Raspberry Pi model, empty elsewhere.
    pub raspberry_pi_model: &'static str,
    /// `kvm`, `bare-metal`, ...
    pub virtualization: &'static str,
    /// The runtimes this host "has" (answered by the simulated runtime).
    pub runtimes: &'static [Runtime],
}

/// The cycle of profiles: node `i` (from 1) has profile `(i - 1) % len`.
pub const PROFILES: [Profile; 5] = [
    Profile {
        name: "raspberry-pi-4",
        arch: "arm64",
        os_release: "Debian GNU/Linux 12 (bookworm)",
        kernel: "6.6.51+rpt-rpi-v8",
        cpus: 4,
        memory_gib: 8,
        raspberry_pi_model: "Raspberry Pi 4 Model B Rev 1.5",
        virtualization: "bare-metal",
        runtimes: &[Runtime::Containerd, Runtime::Docker],
    },
    Profile {
        name: "raspberry-pi-5",
        arch: "arm64",
        os_release: "Debian GNU/Linux 12 (bookworm)",
        kernel: "6.6.51+rpt-rpi-2712",
        cpus: 4,
        memory_gib: 8,
        raspberry_pi_model: "Raspberry Pi 5 Model B Rev 1.0",
        virtualization: "bare-metal",
        runtimes: &[Runtime::Containerd, Runtime::Docker],
    },
    Profile {
        name: "raspberry-pi-armv7",
        arch: "arm",
        os_release: "Raspbian GNU/Linux 12 (bookworm)",
        kernel: "6.6.51+rpt-rpi-v7",
        cpus: 4,
        memory_gib: 1,
        raspberry_pi_model: "Raspberry Pi 3 Model B Plus Rev 1.3",
        virtualization: "bare-metal",
        runtimes: &[Runtime::Lxc],
    },
    Profile {
        name: "kvm-guest",
        arch: "amd64",
        os_release: "Ubuntu 24.04.1 LTS",
        kernel: "6.8.0-45-generic",
        cpus: 2,
        memory_gib: 4,
        raspberry_pi_model: "",
        virtualization: "kvm",
        runtimes: &[Runtime::Docker, Runtime::Podman],
    },
    Profile {
        name: "bare-metal",
        arch: "amd64",
        os_release: "Debian GNU/Linux 12 (bookworm)",
        kernel: "6.1.0-26-amd64",
        cpus: 16,
        memory_gib: 64,
        raspberry_pi_model: "",
        virtualization: "bare-metal",
        runtimes: &[Runtime::Docker, Runtime::Containerd, Runtime::Lxc, Runtime::Podman],
    },
];

/// The profile of node `index` (from 1).
pub fn profile(index: u32) -> &'static Profile {
    &PROFILES[(index.saturating_sub(1) as usize) % PROFILES.len()]
}

/// The name of node `index` (from 1): `hollow-00001`, ...
pub fn node_name(index: u32) -> String {
    format!("hollow-{index:05}")
}

/// What node `index` reports: its profile's host facts, the four runtimes (the
/// profile's available, answered by the simulated runtime, whose version says so; the
/// others unavailable), and an agent version marked `hollow`.
pub fn fingerprint(index: u32) -> Fingerprint {
    let profile = profile(index);
    let runtimes = Runtime::ALL
        .iter()
        .map(|&runtime| {
            let available = profile.runtimes.contains(&runtime);
            RuntimeReport {
                runtime,
                available,
                version: if available { fake::version() } else { String::new() },
                endpoint: fake::ENDPOINT.to_owned(),
                error: if available { String::new() } else { format!("{runtime} is not on this simulated {} node", profile.name) },
                rootless: false,
            }
        })
        .collect();
    Fingerprint {
        hostname: node_name(index),
        os: "linux".to_owned(),
        os_release: profile.os_release.to_owned(),
        arch: profile.arch.to_owned(),
        kernel: profile.kernel.to_owned(),
        cpus: profile.cpus,
        memory_bytes: profile.memory_gib << 30,
        raspberry_pi_model: profile.raspberry_pi_model.to_owned(),
        virtualization: profile.virtualization.to_owned(),
        runtimes,
        agent_version: format!("{}-hollow", env!("CARGO_PKG_VERSION")),
        labels: BTreeMap::from([("hollow".to_owned(), profile.name.to_owned())]),
        // Simulated nodes build nothing: no builder is offered.
        builders: Vec::new(),
        build_dir: String::new(),
        volumes: Default::default(),
    }
}

/// One line per profile used by nodes `1..=count`: how many nodes, os/arch, runtimes.
pub fn summary(count: u32) -> Vec<String> {
    PROFILES
        .iter()
        .enumerate()
        .filter_map(|(position, profile)| {
            let position = position as u32;
            let nodes = if count > position { (count - position - 1) / PROFILES.len() as u32 + 1 } else { 0 };
            (nodes > 0).then(|| {
                let runtimes: Vec<&str> = profile.runtimes.iter().map(|r| r.name()).collect();
                format!(
                    "{nodes} x {}: linux/{} {}, runtimes {}",
                    profile.name,
                    profile.arch,
                    if profile.raspberry_pi_model.is_empty() { profile.virtualization } else { profile.raspberry_pi_model },
                    runtimes.join(",")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use diplo_api::runtime::PlatformClass;

    use super::*;

    #[test]
    fn the_mix_is_deterministic_by_index_and_covers_every_runtime_and_arch() {
        assert_eq!(node_name(1), "hollow-00001");
        assert_eq!(node_name(10_000), "hollow-10000");
        assert_eq!(fingerprint(7), fingerprint(7));
        let pi = fingerprint(1);
        assert_eq!((pi.arch.as_str(), pi.available_runtimes()), ("arm64", vec![Runtime::Docker, Runtime::Containerd]));
        assert!(pi.raspberry_pi_model.starts_with("Raspberry Pi 4"));
        assert_eq!(fingerprint(2).raspberry_pi_model, "Raspberry Pi 5 Model B Rev 1.0");
        let armv7 = fingerprint(3);
        assert_eq!((armv7.arch.as_str(), armv7.available_runtimes()), ("arm", vec![Runtime::Lxc]));
        let kvm = fingerprint(4);
        assert_eq!((kvm.virtualization.as_str(), kvm.available_runtimes()), ("kvm", vec![Runtime::Docker, Runtime::Podman]));
        let metal = fingerprint(5);
        assert_eq!((metal.arch.as_str(), metal.available_runtimes().len()), ("amd64", 4));
        assert_eq!(fingerprint(6), Fingerprint { hostname: "hollow-00006".into(), ..fingerprint(1) }, "the cycle repeats");
        // Every runtime is reported, available or not, and the simulated ones say so.
        for index in 1..=5 {
            let fp = fingerprint(index);
            assert_eq!(fp.runtimes.len(), 4);
            assert!(fp.runtimes.iter().filter(|r| r.available).all(|r| r.version.starts_with("hollow")));
            assert!(fp.agent_version.ends_with("-hollow"));
        }
        // The Pis are Pis to placement (their runtime preference).
        assert_eq!(pi.platform(), PlatformClass::of("linux", "arm64", true));
    }

    #[test]
    fn the_summary_counts_each_profile() {
        assert_eq!(summary(0), Vec::<String>::new());
        assert_eq!(summary(1).len(), 1);
        let lines = summary(12);
        let counts: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap_or("")).collect();
        assert_eq!(counts, ["3", "3", "2", "2", "2"], "{lines:?}");
        assert!(lines[4].contains("bare-metal") && lines[4].contains("docker,containerd,lxc,podman"), "{lines:?}");
        assert!(lines[2].contains("linux/arm ") && lines[2].contains("lxc"), "{lines:?}");
    }
}
