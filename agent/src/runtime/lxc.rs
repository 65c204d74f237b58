//! LXC, driven through its command-line tools (`lxc-create`, `lxc-start`, ...).
//!
//! LXC has no daemon to ask, so "available" means: `lxc-create` and `lxc-start` are on
//! `PATH`, `lxc-create --version` runs, and the network link the default container
//! config attaches to (normally the `lxcbr0` bridge of `lxc-net`) exists, because
//! `lxc-start` fails without it.
//!
//! [`LxcRuntime`] is the driver: see `lxc/driver.rs` for how Diplo's container model maps
//! onto LXC (static addresses on the bridge, ports published by the agent, a state file
//! next to each container's config).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diplo_api::fingerprint::RuntimeReport;
use diplo_api::runtime::Runtime;
use tracing::debug;

use super::docker::{describe_io, describe_timeout};

mod config;
mod driver;
mod image;
mod logs;

pub use config::{CgroupVersion, LxcNetwork};
pub use driver::{
    CONSOLE_LOG, DEFAULT_LXC_PATH, LxcRuntime, SHIM_CANDIDATES, START_LOG, STATE_FILE, find_static_shell, is_static_executable,
};

/// LXC's default container config, which names the bridge containers attach to.
pub const DEFAULT_CONFIG: &str = "/etc/lxc/default.conf";
/// The bridge `lxc-net` creates, assumed when the default config cannot be read.
pub const DEFAULT_BRIDGE: &str = "lxcbr0";

/// Probes LXC on this host: the tools on `PATH`, `lxc-create --version` (bounded by
/// `timeout`; its output is the version) and the default config's bridge under
/// `/sys/class/net`. `error` names whatever is missing.
pub async fn probe(timeout: Duration) -> RuntimeReport {
    probe_at(std::env::var_os("PATH"), Path::new(DEFAULT_CONFIG), Path::new("/sys/class/net"), timeout).await
}

async fn probe_at(path_var: Option<OsString>, default_config: &Path, sys_class_net: &Path, timeout: Duration) -> RuntimeReport {
    let create = find_on_path("lxc-create", path_var.as_deref());
    let start = find_on_path("lxc-start", path_var.as_deref());
    let mut report = RuntimeReport {
        runtime: Runtime::Lxc,
        available: false,
        version: String::new(),
        endpoint: create.as_ref().map_or_else(|| "lxc-create".to_owned(), |p| p.display().to_string()),
        error: String::new(),
        rootless: effective_uid().is_some_and(|uid| uid != 0),
    };
    let mut problems = Vec::new();
    match (&create, &start) {
        (None, None) => problems.push("lxc-create and lxc-start not found on PATH".to_owned()),
        (None, Some(_)) => problems.push("lxc-create not found on PATH".to_owned()),
        (Some(_), None) => problems.push("lxc-start not found on PATH".to_owned()),
        (Some(_), Some(_)) => {}
    }
    if let Some(create) = &create {
        match lxc_version(create, timeout).await {
            Ok(version) => report.version = version,
            Err(error) => problems.push(error),
        }
    }
    let link = match std::fs::read_to_string(default_config) {
        Ok(text) => required_link(&text),
        Err(error) => {
            debug!(%error, "cannot read {}; assuming bridge {DEFAULT_BRIDGE}", default_config.display());
            Some(DEFAULT_BRIDGE.to_owned())
        }
    };
    if let Some(link) = link {
        let device = sys_class_net.join(&link);
        if !device.exists() {
            problems.push(format!("network link {link} is missing ({} does not exist; start lxc-net)", device.display()));
        }
    }
    if problems.is_empty() {
        report.available = true;
    } else {
        report.error = problems.join("; ");
    }
    report
}

/// Runs `lxc-create --version`, its trimmed output or why it failed.
async fn lxc_version(binary: &Path, timeout: Duration) -> Result<String, String> {
    let run = tokio::process::Command::new(binary).arg("--version").stdin(std::process::Stdio::null()).kill_on_drop(true).output();
    let shown = binary.display();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!("{shown} --version did not finish within {}", describe_timeout(timeout))),
        Ok(Err(error)) => Err(format!("cannot run {shown}: {}", describe_io(&error))),
        Ok(Ok(output)) if !output.status.success() => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let detail = stderr.trim().lines().next().unwrap_or_default().to_owned();
            Err(format!("{shown} --version failed ({}){}", output.status, if detail.is_empty() { detail } else { format!(": {detail}") }))
        }
        Ok(Ok(output)) => {
            let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if version.is_empty() { Err(format!("{shown} --version printed nothing")) } else { Ok(version) }
        }
    }
}

/// The first executable file called `name` in the directories of `path_var`.
fn find_on_path(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// The host interface LXC's default config attaches the first network to (`lxc.net.0.link`,
/// or the pre-3.0 `lxc.network.link`), `None` when the config needs none (no network, or
/// type `empty`/`none`).
pub fn required_link(default_config: &str) -> Option<String> {
    let mut kind = None;
    let mut link = None;
    for line in default_config.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        match key.trim() {
            "lxc.net.0.type" | "lxc.network.type" => kind = Some(value.to_owned()),
            "lxc.net.0.link" | "lxc.network.link" => link = Some(value.to_owned()),
            _ => {}
        }
    }
    match kind.as_deref() {
        None | Some("empty" | "none") => None,
        Some(_) => link.filter(|l| !l.is_empty()),
    }
}

/// This process's effective uid, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_effective_uid(&status)
}

/// The effective uid (second field of the `Uid:` line) of `/proc/<pid>/status` text.
fn parse_effective_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|line| line.strip_prefix("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn link_from_default_config() {
        let debian = "lxc.net.0.type = veth\nlxc.net.0.link = lxcbr0\nlxc.net.0.flags = up\n\nlxc.apparmor.profile = generated\n";
        assert_eq!(required_link(debian).as_deref(), Some("lxcbr0"));
        assert_eq!(required_link("lxc.net.0.type = empty\n"), None);
        assert_eq!(required_link("lxc.apparmor.profile = generated\n"), None);
        assert_eq!(required_link("lxc.network.type=veth\nlxc.network.link=br0\n").as_deref(), Some("br0"));
        assert_eq!(required_link("# lxc.net.0.link = nope\nlxc.net.0.type = veth\nlxc.net.0.link = virbr0\n").as_deref(), Some("virbr0"));
    }

    #[test]
    fn effective_uid_from_status() {
        assert_eq!(parse_effective_uid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\n"), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }

    fn script(dir: &Path, name: &str, body: &str) {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[tokio::test]
    async fn fake_tools_and_bridge_are_available() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, net) = (dir.path().join("bin"), dir.path().join("net"));
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::create_dir_all(net.join("lxcbr0")).expect("mkdir");
        script(&bin, "lxc-create", "echo ' 9.9.9 '");
        script(&bin, "lxc-start", "exit 0");
        let report = probe_at(Some(bin.clone().into_os_string()), &dir.path().join("absent.conf"), &net, Duration::from_secs(5)).await;
        assert!(report.available, "{}", report.error);
        assert_eq!(report.version, "9.9.9");
        assert_eq!(report.endpoint, bin.join("lxc-create").display().to_string());
    }

    #[tokio::test]
    async fn missing_pieces_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (bin, net) = (dir.path().join("bin"), dir.path().join("net"));
        std::fs::create_dir_all(&bin).expect("mkdir");
        std::fs::create_dir_all(&net).expect("mkdir");
        let conf = dir.path().join("default.conf");
        std::fs::write(&conf, "lxc.net.0.type = veth\nlxc.net.0.link = br7\n").expect("write conf");

        let report = probe_at(Some(bin.clone().into_os_string()), &conf, &net, Duration::from_secs(5)).await;
        assert!(!report.available);
        assert!(report.error.contains("lxc-create and lxc-start not found on PATH"), "{}", report.error);
        assert!(report.error.contains("network link br7 is missing"), "{}", report.error);

        script(&bin, "lxc-create", "echo broken >&2; exit 3");
        script(&bin, "lxc-start", "exit 0");
        std::fs::create_dir_all(net.join("br7")).expect("mkdir");
        let report = probe_at(Some(bin.clone().into_os_string()), &conf, &net, Duration::from_secs(5)).await;
        assert!(!report.available);
        assert!(report.error.contains("lxc-create --version failed"), "{}", report.error);
        assert!(report.error.ends_with(": broken"), "{}", report.error);

        script(&bin, "lxc-create", "sleep 5");
        let report = probe_at(Some(bin.into_os_string()), &conf, &net, Duration::from_millis(300)).await;
        assert!(!report.available);
        assert!(report.error.contains("did not finish within 300ms"), "{}", report.error);
    }
}
