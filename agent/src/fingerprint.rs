//! Probes this host for the facts an agent reports when it joins: OS, architecture,
//! kernel, CPUs, memory, Raspberry Pi model, virtualization and which container
//! runtimes answer.
//!
//! Probing never fails: a fact that cannot be read is left empty (or 0) and a
//! `tracing::debug!` line says why. The parsing of what the host offers lives in small
//! pure functions so that it can be tested on sample text.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use diplo_api::build::Builder;
use diplo_api::fingerprint::{Fingerprint, RuntimeReport};
use diplo_api::runtime::Runtime;
use tracing::debug;

use crate::build::{BUILDERS_ENV, parse_builders};
use crate::runtime::{containerd, docker, lxc, podman};

/// Docker's API socket when `DOCKER_HOST` does not name another.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// containerd's gRPC socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Podman's Docker-compatible API socket (rootful `podman system service`).
pub const DEFAULT_PODMAN_SOCKET: &str = "/run/podman/podman.sock";
/// How long each runtime probe may take. A socket nobody listens on fails at once; the
/// limit only matters for a daemon that accepts and is slow to answer, as Podman's API is
/// on a loaded host (seen taking more than 3 s): such a runtime is alive and must count.
/// The probes run concurrently, so this bounds the whole probe.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// containerd's socket when not [`DEFAULT_CONTAINERD_SOCKET`], spelt as `ctr` reads it: a
/// path or `unix://path`.
pub const CONTAINERD_ADDRESS_ENV: &str = "CONTAINERD_ADDRESS";

/// Comma-separated runtimes this agent may use (e.g. `docker,lxc`); unset: all.
pub const RUNTIMES_ENV: &str = "DIPLO_RUNTIMES";

/// Where and how to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Docker's API socket path.
    pub docker_socket: String,
    /// containerd's gRPC socket path.
    pub containerd_socket: String,
    /// Podman's Docker-compatible API socket path.
    pub podman_socket: String,
    /// Report this architecture instead of the detected one (normalised to Go/OCI
    /// spelling): the agent's `--arch`, for hosts whose detection is wrong.
    pub arch_override: Option<String>,
    /// Report this OS instead of the detected one: the agent's `--os`.
    pub os_override: Option<String>,
    /// Node labels, reported as given.
    pub labels: BTreeMap<String, String>,
    /// Time limit of each runtime probe.
    pub timeout: Duration,
    /// Only these runtimes may be used on this node (`None`: all). Others are reported
    /// unavailable, saying so.
    pub allowed: Option<Vec<Runtime>>,
    /// Only these builders may be offered (`None`: all found), from `DIPLO_BUILDERS`.
    pub builders: Option<Vec<Builder>>,
    /// Where builds make their workspaces (reported as is).
    pub build_dir: String,
}

impl Default for ProbeConfig {
    /// The standard socket paths, no overrides, no labels, [`DEFAULT_PROBE_TIMEOUT`]. Reads no
    /// environment; see [`ProbeConfig::from_env`].
    fn default() -> Self {
        ProbeConfig {
            docker_socket: DEFAULT_DOCKER_SOCKET.to_owned(),
            containerd_socket: DEFAULT_CONTAINERD_SOCKET.to_owned(),
            podman_socket: DEFAULT_PODMAN_SOCKET.to_owned(),
            arch_override: None,
            os_override: None,
            labels: BTreeMap::new(),
            timeout: DEFAULT_PROBE_TIMEOUT,
            allowed: None,
            builders: None,
            build_dir: String::new(),
        }
    }
}

impl ProbeConfig {
    /// The defaults adjusted by the environment: `DOCKER_HOST=unix:///path` names the
    /// Docker socket (other schemes are ignored: only local sockets are probed),
    /// `CONTAINERD_ADDRESS=/path` (or `unix:///path`) names containerd's socket,
    /// `DIPLO_RUNTIMES` limits the runtimes. Empty variables count as unset.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`ProbeConfig::from_env`] over any variable lookup.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut config = ProbeConfig::default();
        if let Some(host) = var("DOCKER_HOST") {
            match docker_socket_from_host(&host) {
                Some(socket) => config.docker_socket = socket,
                None => debug!(docker_host = %host, "DOCKER_HOST is not a unix socket; probing {DEFAULT_DOCKER_SOCKET}"),
            }
        }
        if let Some(address) = var(CONTAINERD_ADDRESS_ENV) {
            match containerd_socket_from_address(&address) {
                Some(socket) => config.containerd_socket = socket,
                None => {
                    tracing::warn!(containerd_address = %address, "{CONTAINERD_ADDRESS_ENV} is not a unix socket path; probing {DEFAULT_CONTAINERD_SOCKET}")
                }
            }
        }
        if let Some(list) = var(RUNTIMES_ENV) {
            let parsed: Vec<Runtime> = list
                .split(',')
                .filter(|name| !name.trim().is_empty())
                .filter_map(|name| match name.parse() {
                    Ok(runtime) => Some(runtime),
                    Err(err) => {
                        tracing::warn!(error = %err, "ignoring an unknown runtime in {RUNTIMES_ENV}");
                        None
                    }
                })
                .collect();
            config.allowed = Some(parsed);
        }
        if let Some(list) = var(BUILDERS_ENV) {
            config.builders = Some(parse_builders(&list));
        }
        config
    }
}

/// Where a session's fingerprint comes from: probing this host (what `diplo-agent`
/// does, at every session start), or a fixed one given by the caller (simulated nodes,
/// which have no host of their own to probe).
#[derive(Debug, Clone)]
pub enum FingerprintSource {
    /// Probe this host with this configuration.
    Probe(ProbeConfig),
    /// Report this fingerprint as it is.
    Fixed(Fingerprint),
}

impl FingerprintSource {
    /// The fingerprint to report now.
    pub async fn fingerprint(&self) -> Fingerprint {
        match self {
            FingerprintSource::Probe(config) => probe(config).await,
            FingerprintSource::Fixed(fingerprint) => fingerprint.clone(),
        }
    }
}

/// Probes this host. Never fails; unreadable facts are left empty or 0. The four runtime
/// probes run concurrently with each other and with the reading of host facts, each
/// bounded by `config.timeout`.
pub async fn probe(config: &ProbeConfig) -> Fingerprint {
    let host = tokio::task::spawn_blocking(HostFacts::read);
    let (docker, containerd, lxc, podman, buildah) = tokio::join!(
        docker::probe(&config.docker_socket, config.timeout),
        containerd::probe(&config.containerd_socket, config.timeout),
        lxc::probe(config.timeout),
        podman::probe(&config.podman_socket, config.timeout),
        crate::build::buildah::available(),
    );
    let host = host.await.unwrap_or_else(|error| {
        debug!(%error, "reading host facts failed; reporting none");
        HostFacts::default()
    });
    let mut runtimes: Vec<RuntimeReport> = vec![docker, containerd, lxc, podman];
    if let Some(allowed) = &config.allowed {
        for report in runtimes.iter_mut().filter(|r| !allowed.contains(&r.runtime)) {
            report.available = false;
            report.error = format!("disabled on this agent ({RUNTIMES_ENV})");
        }
    }
    let builders = builders_of(&runtimes, buildah, config.builders.as_deref());
    for report in &runtimes {
        debug!(runtime = %report.runtime, available = report.available, version = %report.version,
            endpoint = %report.endpoint, error = %report.error, "runtime probed");
    }
    Fingerprint {
        hostname: host.hostname,
        os: config.os_override.clone().unwrap_or_else(|| std::env::consts::OS.to_owned()),
        os_release: host.os_release,
        arch: config.arch_override.clone().unwrap_or(host.arch),
        kernel: host.kernel,
        cpus: host.cpus,
        memory_bytes: host.memory_bytes,
        raspberry_pi_model: host.raspberry_pi_model,
        virtualization: host.virtualization,
        runtimes,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        labels: config.labels.clone(),
        builders,
        build_dir: config.build_dir.clone(),
        // The session fills them in from the drivers.
        volumes: Default::default(),
    }
}

/// The builders of a node: Docker and Podman where those runtimes are available (after
/// `DIPLO_RUNTIMES`), buildah where `buildah --version` answered; only those `allowed`
/// lists when it is given (`DIPLO_BUILDERS`).
pub fn builders_of(runtimes: &[RuntimeReport], buildah: bool, allowed: Option<&[Builder]>) -> Vec<Builder> {
    let available = |runtime: Runtime| runtimes.iter().any(|r| r.runtime == runtime && r.available);
    Builder::ALL
        .into_iter()
        .filter(|builder| match builder {
            Builder::Docker => available(Runtime::Docker),
            Builder::Podman => available(Runtime::Podman),
            Builder::Buildah => buildah,
        })
        .filter(|builder| allowed.is_none_or(|allowed| allowed.contains(builder)))
        .collect()
}

/// Facts read from the host's files (blocking reads of procfs/sysfs).
#[derive(Debug, Default)]
struct HostFacts {
    hostname: String,
    os_release: String,
    arch: String,
    kernel: String,
    cpus: u32,
    memory_bytes: u64,
    raspberry_pi_model: String,
    virtualization: String,
}

impl HostFacts {
    fn read() -> Self {
        let cpuinfo = read_text("/proc/cpuinfo");
        let os_release = read_text("/etc/os-release")
            .or_else(|| read_text("/usr/lib/os-release"))
            .and_then(|text| {
                let pretty = parse_os_release(&text);
                if pretty.is_none() {
                    debug!("os-release has no PRETTY_NAME");
                }
                pretty
            })
            .unwrap_or_default();
        // The kernel's machine name (what `uname -m` prints), else the build target's.
        let machine = read_text("/proc/sys/kernel/arch")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        let cpus = match std::thread::available_parallelism() {
            Ok(n) => u32::try_from(n.get()).unwrap_or(u32::MAX),
            Err(error) => {
                debug!(%error, "available_parallelism failed; counting /proc/cpuinfo");
                cpuinfo.as_deref().map(count_cpuinfo_processors).unwrap_or(0)
            }
        };
        let memory_bytes = read_text("/proc/meminfo")
            .and_then(|text| {
                let total = parse_meminfo_total(&text);
                if total.is_none() {
                    debug!("/proc/meminfo has no readable MemTotal");
                }
                total
            })
            .unwrap_or(0);
        let raspberry_pi_model = match std::fs::read("/proc/device-tree/model") {
            Ok(bytes) => raspberry_pi_model(&bytes).unwrap_or_default(),
            Err(error) => {
                debug!(%error, "no /proc/device-tree/model: not a Raspberry Pi");
                String::new()
            }
        };
        let virt = VirtEvidence {
            dockerenv: Path::new("/.dockerenv").exists(),
            containerenv: Path::new("/run/.containerenv").exists(),
            pid1_environ: read_bytes("/proc/1/environ").map(|b| String::from_utf8_lossy(&b).into_owned()),
            pid1_cgroup: read_text("/proc/1/cgroup"),
            sys_vendor: read_text("/sys/class/dmi/id/sys_vendor"),
            product_name: read_text("/sys/class/dmi/id/product_name"),
            cpu_hypervisor_flag: cpuinfo.as_deref().is_some_and(cpuinfo_has_hypervisor_flag),
        };
        HostFacts {
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            os_release,
            arch: go_arch(&machine),
            kernel: read_trimmed("/proc/sys/kernel/osrelease"),
            cpus,
            memory_bytes,
            raspberry_pi_model,
            virtualization: virtualization(&virt).to_owned(),
        }
    }
}

fn read_bytes(path: &str) -> Option<Vec<u8>> {
    std::fs::read(path).map_err(|error| debug!(%error, "cannot read {path}")).ok()
}

fn read_text(path: &str) -> Option<String> {
    read_bytes(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn read_trimmed(path: &str) -> String {
    read_text(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The socket path in a `DOCKER_HOST` value, `None` unless it is `unix://…`.
pub fn docker_socket_from_host(docker_host: &str) -> Option<String> {
    docker_host.trim().strip_prefix("unix://").filter(|path| !path.is_empty()).map(str::to_owned)
}

/// The socket path in a `CONTAINERD_ADDRESS` value: an absolute path, or `unix://` and an
/// absolute path; `None` for anything else (containerd serves its API on unix sockets only).
pub fn containerd_socket_from_address(address: &str) -> Option<String> {
    let path = address.trim();
    let path = path.strip_prefix("unix://").unwrap_or(path);
    path.starts_with('/').then(|| path.to_owned())
}

/// `PRETTY_NAME` from os-release text, unquoted; `None` when absent or empty.
pub fn parse_os_release(text: &str) -> Option<String> {
    let value = text.lines().find_map(|line| line.trim().strip_prefix("PRETTY_NAME="))?.trim();
    let unquoted = ['"', '\''].iter().find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q))).unwrap_or(value);
    // os-release allows shell escapes inside double quotes: \" \\ \$ \`
    let mut out = String::with_capacity(unquoted.len());
    let mut chars = unquoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    Some(out).filter(|s| !s.is_empty())
}

/// `MemTotal` from `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let rest = text.lines().find_map(|line| line.strip_prefix("MemTotal:"))?;
    let mut fields = rest.split_whitespace();
    let amount: u64 = fields.next()?.parse().ok()?;
    let multiplier = match fields.next().map(str::to_ascii_lowercase).as_deref() {
        None | Some("b") => 1,
        Some("kb") => 1024,
        Some("mb") => 1024 * 1024,
        Some("gb") => 1024 * 1024 * 1024,
        Some(_) => return None,
    };
    amount.checked_mul(multiplier)
}

/// Number of `processor` entries in `/proc/cpuinfo` text.
pub fn count_cpuinfo_processors(text: &str) -> u32 {
    let count = text.lines().filter(|line| line.split(':').next().is_some_and(|key| key.trim() == "processor")).count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Whether `/proc/cpuinfo` text lists the `hypervisor` CPU flag (x86 guests).
pub fn cpuinfo_has_hypervisor_flag(text: &str) -> bool {
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|flag| flag == "hypervisor"))
}

/// An architecture name (`uname -m` or Rust's spelling) in Go/OCI spelling: `x86_64` →
/// `amd64`, `aarch64` → `arm64`, `armv7l`/`armv6l` → `arm`, `i686` → `386`. Names
/// already in Go spelling and unknown names come back unchanged (lower-cased).
pub fn go_arch(machine: &str) -> String {
    let machine = machine.trim().to_ascii_lowercase();
    let go = match machine.as_str() {
        "x86_64" | "amd64" | "x64" => "amd64",
        "aarch64" | "arm64" | "aarch64_be" => "arm64",
        "arm" | "armhf" | "armel" | "armv5l" | "armv5tel" | "armv6l" | "armv7l" | "armv7" | "armv8l" => "arm",
        "i386" | "i486" | "i586" | "i686" | "x86" | "386" => "386",
        "loongarch64" => "loong64",
        "powerpc64le" => "ppc64le",
        _ => return machine,
    };
    go.to_owned()
}

/// The Raspberry Pi model from `/proc/device-tree/model` bytes (NUL-terminated), `None`
/// unless it names a Raspberry Pi.
pub fn raspberry_pi_model(device_tree_model: &[u8]) -> Option<String> {
    let model = String::from_utf8_lossy(device_tree_model);
    let model = model.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    model.contains("Raspberry Pi").then(|| model.to_owned())
}

/// What the host offers as evidence of virtualization; `None` means unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtEvidence {
    /// `/.dockerenv` exists.
    pub dockerenv: bool,
    /// `/run/.containerenv` exists (Podman).
    pub containerenv: bool,
    /// `/proc/1/environ`, NUL-separated.
    pub pid1_environ: Option<String>,
    /// `/proc/1/cgroup`.
    pub pid1_cgroup: Option<String>,
    /// `/sys/class/dmi/id/sys_vendor`.
    pub sys_vendor: Option<String>,
    /// `/sys/class/dmi/id/product_name`.
    pub product_name: Option<String>,
    /// `/proc/cpuinfo` lists the `hypervisor` flag.
    pub cpu_hypervisor_flag: bool,
}

/// Classifies virtualization: `container` first (marker files, `container=` in PID 1's
/// environment, a container manager in PID 1's cgroup path), then a hypervisor named by
/// DMI (`kvm`, `qemu`, `vmware`, `virtualbox`, `hyper-v`, `xen`), then `vm` for an
/// unnamed hypervisor announced by the CPU flag, else `bare-metal`.
pub fn virtualization(evidence: &VirtEvidence) -> &'static str {
    let environ_says_container =
        evidence.pid1_environ.as_deref().is_some_and(|env| env.split('\0').any(|entry| entry.starts_with("container=")));
    let cgroup_says_container = evidence.pid1_cgroup.as_deref().is_some_and(cgroup_hints_container);
    if evidence.dockerenv || evidence.containerenv || environ_says_container || cgroup_says_container {
        return "container";
    }
    let vendor = evidence.sys_vendor.as_deref().unwrap_or_default();
    let product = evidence.product_name.as_deref().unwrap_or_default();
    if let Some(hypervisor) = dmi_hypervisor(vendor, product) {
        return hypervisor;
    }
    if evidence.cpu_hypervisor_flag { "vm" } else { "bare-metal" }
}

/// Whether `/proc/1/cgroup` text places PID 1 under a container manager.
fn cgroup_hints_container(cgroup: &str) -> bool {
    const HINTS: [&str; 8] = ["docker", "lxc", "kubepods", "libpod", "containerd", "podman", "garden", "machine.slice"];
    cgroup.lines().filter_map(|line| line.splitn(3, ':').nth(2)).any(|path| HINTS.iter().any(|hint| path.contains(hint)))
}

/// The hypervisor named by DMI `sys_vendor` / `product_name`, if any.
pub fn dmi_hypervisor(sys_vendor: &str, product_name: &str) -> Option<&'static str> {
    let vendor = sys_vendor.trim();
    let product = product_name.trim();
    let either = |needle: &str| vendor.contains(needle) || product.contains(needle);
    if either("KVM") {
        Some("kvm")
    } else if either("QEMU") {
        Some("qemu")
    } else if either("VMware") || either("VMW") {
        Some("vmware")
    } else if either("VirtualBox") || vendor.contains("innotek") {
        Some("virtualbox")
    } else if either("Hyper-V") || (vendor.contains("Microsoft") && product.contains("Virtual Machine")) {
        Some("hyper-v")
    } else if either("Xen") {
        Some("xen")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_pretty_name() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n";
        assert_eq!(parse_os_release(debian).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(parse_os_release("NAME=Alpine\nPRETTY_NAME='Alpine Linux v3.19'\n").as_deref(), Some("Alpine Linux v3.19"));
        assert_eq!(parse_os_release("PRETTY_NAME=Plain\n").as_deref(), Some("Plain"));
        assert_eq!(parse_os_release("PRETTY_NAME=\"Say \\\"hi\\\"\"").as_deref(), Some("Say \"hi\""));
        assert_eq!(parse_os_release("NAME=\"Debian\"\n"), None);
        assert_eq!(parse_os_release("PRETTY_NAME=\"\"\n"), None);
    }

    #[test]
    fn meminfo_total() {
        let text = "MemTotal:       16318412 kB\nMemFree:         1234 kB\nMemAvailable:   9 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(16_318_412 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: 7\n"), Some(7));
    }

    #[test]
    fn cpuinfo_processors_and_hypervisor_flag() {
        let text = "processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n\nprocessor\t: 1\nflags\t\t: fpu vme hypervisor\n";
        assert_eq!(count_cpuinfo_processors(text), 2);
        assert!(cpuinfo_has_hypervisor_flag(text));
        assert!(!cpuinfo_has_hypervisor_flag("processor\t: 0\nflags\t\t: fpu vme hypervisorx\n"));
        // ARM cpuinfo: "Features", no flags line, "model name" must not count.
        let arm = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 3 (v7l)\nFeatures\t: half thumb\n";
        assert_eq!(count_cpuinfo_processors(arm), 1);
        assert!(!cpuinfo_has_hypervisor_flag(arm));
    }

    #[test]
    fn arch_in_go_spelling() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("armv7l"), "arm");
        assert_eq!(go_arch("armv6l"), "arm");
        assert_eq!(go_arch("i686"), "386");
        assert_eq!(go_arch("arm64"), "arm64");
        assert_eq!(go_arch(" AMD64\n"), "amd64");
        assert_eq!(go_arch("riscv64"), "riscv64");
        assert_eq!(go_arch("s390x"), "s390x");
    }

    #[test]
    fn raspberry_pi_model_from_device_tree() {
        assert_eq!(raspberry_pi_model(b"Raspberry Pi 4 Model B Rev 1.4\0").as_deref(), Some("Raspberry Pi 4 Model B Rev 1.4"));
        assert_eq!(raspberry_pi_model(b"Pine64 RockPro64 v2.1\0"), None);
        assert_eq!(raspberry_pi_model(b"\0"), None);
    }

    #[test]
    fn dmi_names_hypervisors() {
        assert_eq!(dmi_hypervisor("QEMU", "Standard PC (i440FX + PIIX, 1996)"), Some("qemu"));
        assert_eq!(dmi_hypervisor("Red Hat", "KVM"), Some("kvm"));
        assert_eq!(dmi_hypervisor("VMware, Inc.", "VMware Virtual Platform"), Some("vmware"));
        assert_eq!(dmi_hypervisor("innotek GmbH", "VirtualBox"), Some("virtualbox"));
        assert_eq!(dmi_hypervisor("Microsoft Corporation", "Virtual Machine"), Some("hyper-v"));
        assert_eq!(dmi_hypervisor("Xen", "HVM domU"), Some("xen"));
        assert_eq!(dmi_hypervisor("Dell Inc.", "PowerEdge R640"), None);
        assert_eq!(dmi_hypervisor("Microsoft Corporation", "Surface Laptop 5"), None);
        assert_eq!(dmi_hypervisor("", ""), None);
    }

    #[test]
    fn virtualization_prefers_container_evidence() {
        let bare = VirtEvidence { pid1_cgroup: Some("0::/\n".into()), ..Default::default() };
        assert_eq!(virtualization(&bare), "bare-metal");
        assert_eq!(virtualization(&VirtEvidence { cpu_hypervisor_flag: true, ..bare.clone() }), "vm");
        let kvm = VirtEvidence {
            sys_vendor: Some("QEMU\n".into()),
            product_name: Some("KVM Virtual Machine\n".into()),
            cpu_hypervisor_flag: true,
            ..bare.clone()
        };
        assert_eq!(virtualization(&kvm), "kvm");
        assert_eq!(virtualization(&VirtEvidence { dockerenv: true, ..kvm.clone() }), "container");
        assert_eq!(virtualization(&VirtEvidence { containerenv: true, ..bare.clone() }), "container");
        let environ = "PATH=/usr/bin\0container=lxc\0HOME=/\0".to_owned();
        assert_eq!(virtualization(&VirtEvidence { pid1_environ: Some(environ), ..bare.clone() }), "container");
        let cgroup = "12:pids:/docker/3f2a\n0::/system.slice/docker-3f2a.scope\n".to_owned();
        assert_eq!(virtualization(&VirtEvidence { pid1_cgroup: Some(cgroup), ..bare.clone() }), "container");
        let host_cgroup = "9:name=systemd:/\n1:cpu:/\n0::/init.scope\n".to_owned();
        assert_eq!(virtualization(&VirtEvidence { pid1_cgroup: Some(host_cgroup), ..bare }), "bare-metal");
    }

    #[test]
    fn config_from_environment() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(ProbeConfig::from_lookup(vars(&[])), ProbeConfig::default());
        let config = ProbeConfig::from_lookup(vars(&[
            ("DOCKER_HOST", "unix:///run/user/1000/docker.sock"),
            ("DIPLO_FINGERPRINT_ARCH", "arm64"),
            ("DIPLO_FINGERPRINT_OS", "darwin"),
        ]));
        assert_eq!(config.docker_socket, "/run/user/1000/docker.sock");
        assert_eq!((config.arch_override, config.os_override), (None, None), "no environment variable fakes the platform");
        assert_eq!(config.timeout, DEFAULT_PROBE_TIMEOUT);
        let config = ProbeConfig::from_lookup(vars(&[("DOCKER_HOST", "tcp://10.0.0.1:2375")]));
        assert_eq!(config.docker_socket, DEFAULT_DOCKER_SOCKET);
        for (address, socket) in [
            ("/run/diplo-so1/vm1/containerd.sock", "/run/diplo-so1/vm1/containerd.sock"),
            ("unix:///run/diplo-so1/vm2/containerd.sock", "/run/diplo-so1/vm2/containerd.sock"),
            (" /run/c.sock ", "/run/c.sock"),
            ("", DEFAULT_CONTAINERD_SOCKET),
            ("tcp://10.0.0.1:1234", DEFAULT_CONTAINERD_SOCKET),
            ("relative/containerd.sock", DEFAULT_CONTAINERD_SOCKET),
            ("unix://", DEFAULT_CONTAINERD_SOCKET),
        ] {
            let lookup = |name: &str| (name == CONTAINERD_ADDRESS_ENV).then(|| address.to_owned());
            let config = ProbeConfig::from_lookup(lookup);
            assert_eq!(config.containerd_socket, socket, "CONTAINERD_ADDRESS={address:?}");
            assert_eq!(config.docker_socket, DEFAULT_DOCKER_SOCKET, "CONTAINERD_ADDRESS={address:?} leaves Docker's socket alone");
        }
    }

    #[test]
    fn builders_follow_runtimes_buildah_and_the_allowlist() {
        let report = |runtime, available| RuntimeReport {
            runtime,
            available,
            version: String::new(),
            endpoint: String::new(),
            error: String::new(),
            rootless: false,
        };
        let runtimes = vec![report(Runtime::Docker, true), report(Runtime::Podman, false), report(Runtime::Containerd, true)];
        assert_eq!(builders_of(&runtimes, true, None), vec![Builder::Docker, Builder::Buildah]);
        assert_eq!(builders_of(&runtimes, false, None), vec![Builder::Docker]);
        assert_eq!(builders_of(&runtimes, true, Some(&[Builder::Buildah, Builder::Podman])), vec![Builder::Buildah]);
        let vars = |name: &str| (name == "DIPLO_BUILDERS").then(|| "buildah, bogus".to_owned());
        assert_eq!(ProbeConfig::from_lookup(vars).builders, Some(vec![Builder::Buildah]));
    }

    #[test]
    fn docker_host_parsing() {
        assert_eq!(docker_socket_from_host("unix:///var/run/docker.sock").as_deref(), Some("/var/run/docker.sock"));
        assert_eq!(docker_socket_from_host("unix://"), None);
        assert_eq!(docker_socket_from_host("tcp://localhost:2375"), None);
        assert_eq!(docker_socket_from_host("ssh://me@host"), None);
    }
}
