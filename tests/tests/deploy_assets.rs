//! The deployment assets under `deploy/`, checked with the tools that consume them:
//! the systemd units with `systemd-analyze verify` (and the binaries' `Type=notify`
//! readiness with a notify socket of the test's own), the cloud-init user-data with
//! `cloud-init schema`, `deploy/install.sh` in a lab host of its own (network and mount
//! namespaces), and the `.deb` packages built with cargo-deb and installed into an
//! isolated root. Each check is shown to fail on a broken input.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::{Agent, Binary, ControlPlane, ControlPlaneOptions, binary, find_node, http_get, output_with_timeout, skip_or_fail};

/// The repository's root.
fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `deploy/<relative>`.
fn deploy_file(relative: &str) -> PathBuf {
    repository_root().join("deploy").join(relative)
}

/// Whether `program` runs here (`program --version` or the given probe succeeds); when it
/// does not, skips (fails under CI) naming what installs it.
fn have_tool(program: &str, probe: &[&str], installed_by: &str) -> bool {
    let found = Command::new(program).args(probe).output().is_ok_and(|output| output.status.success());
    if !found {
        skip_or_fail(&format!("`{program}` is not available here; {installed_by} installs it"));
    }
    found
}

/// Runs `command` (time limit `timeout`) and returns (success, stdout + stderr).
fn run(command: Command, timeout: Duration) -> (bool, String) {
    let output = output_with_timeout(command, timeout);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

// ---------------------------------------------------------------------------------
// systemd units

const UNITS: [&str; 2] = ["diplo-control-plane.service", "diplo-agent.service"];

/// A root directory for `systemd-analyze verify --root`: the host's own unit library
/// (targets the units depend on), the units under test in `/etc/systemd/system` and the
/// binaries under test at the paths their `ExecStart=` names (hard links, or copies).
fn unit_root(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::Builder::new().prefix("diplo-units-").tempdir().expect("temporary directory");
    let library = Path::new("/usr/lib/systemd/system");
    let units_dir = root.path().join("etc/systemd/system");
    let bin = root.path().join("usr/bin");
    for dir in [&units_dir, &bin, &root.path().join("usr/lib/systemd")] {
        std::fs::create_dir_all(dir).expect("unit root directories");
    }
    let mut copy = Command::new("cp");
    copy.arg("-a").arg(library).arg(root.path().join("usr/lib/systemd/"));
    let (ok, text) = run(copy, Duration::from_secs(30));
    assert!(ok, "copying {} failed: {text}", library.display());
    for bin_kind in [Binary::ControlPlane, Binary::Agent, Binary::Cli] {
        let built = binary(bin_kind);
        let at = bin.join(built.file_name().expect("binary file name"));
        if std::fs::hard_link(&built, &at).is_err() {
            std::fs::copy(&built, &at).expect("copying a binary into the unit root");
        }
    }
    for (name, text) in units {
        std::fs::write(units_dir.join(name), text).expect("writing a unit");
    }
    root
}

/// `systemd-analyze verify --root ROOT` of `names`: `Ok` only when it exits 0 and says
/// nothing at all (a directive it ignores is a warning, and a warning is a failure here).
fn verify_units(root: &Path, names: &[&str]) -> Result<(), String> {
    let mut command = Command::new("systemd-analyze");
    command.arg("verify").arg(format!("--root={}", root.display()));
    command.args(names.iter().map(|name| format!("/etc/systemd/system/{name}")));
    // No pager, no colour, no attempt to reach a running manager.
    command.env("SYSTEMD_PAGER", "").env("SYSTEMD_COLORS", "0").env_remove("DBUS_SESSION_BUS_ADDRESS");
    let (ok, text) = run(command, Duration::from_secs(60));
    match (ok, text.trim()) {
        (true, "") => Ok(()),
        (_, said) => Err(format!("systemd-analyze verify {names:?} (exit ok: {ok}): {said}")),
    }
}

fn unit_text(name: &str) -> String {
    let path = deploy_file(&format!("systemd/{name}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The values of `key` in a unit's text, in order (`KEY=VALUE` lines; comments skipped).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

#[test]
fn units_pass_systemd_analyze_verify_and_a_broken_unit_does_not() {
    if !have_tool("systemd-analyze", &["--version"], "scripts/setup-assets (Debian's systemd package)") {
        return;
    }
    let units: Vec<(&str, String)> = UNITS.iter().map(|name| (*name, unit_text(name))).collect();
    let root = unit_root(&units);
    verify_units(root.path(), &UNITS).unwrap_or_else(|e| panic!("the units do not verify: {e}"));

    // The check can fail: a misspelt directive, a value systemd cannot parse, a missing binary.
    let agent = unit_text("diplo-agent.service");
    let broken = [
        ("misspelt.service", agent.replace("Delegate=yes", "Delegat=yes")),
        ("bad-type.service", agent.replace("Type=notify", "Type=notifyy")),
        ("no-binary.service", agent.replace("/usr/bin/diplo-agent", "/usr/bin/diplo-agent-missing")),
    ];
    for (name, text) in &broken {
        assert_ne!(text, &agent, "{name}: the replacement did not apply");
        std::fs::write(root.path().join("etc/systemd/system").join(name), text).expect("writing a broken unit");
        let err = verify_units(root.path(), &[name]).expect_err(&format!("{name} was accepted"));
        eprintln!("{name} refused as expected: {err}");
    }
}

#[test]
fn units_say_how_each_service_runs() {
    let control_plane = unit_text("diplo-control-plane.service");
    let agent = unit_text("diplo-agent.service");
    // (unit text, key, the value it must have)
    let expected: [(&str, &str, &str); 22] = [
        (&control_plane, "Type", "notify"),
        (&control_plane, "NotifyAccess", "main"),
        (&control_plane, "Restart", "on-failure"),
        (&control_plane, "User", "diplo"),
        (&control_plane, "StateDirectory", "diplo/control-plane"),
        (&control_plane, "StateDirectoryMode", "0700"),
        (&control_plane, "NoNewPrivileges", "yes"),
        (&control_plane, "CapabilityBoundingSet", ""),
        (&control_plane, "ProtectSystem", "strict"),
        (&control_plane, "ProtectHome", "yes"),
        (&control_plane, "PrivateTmp", "yes"),
        (&control_plane, "PrivateDevices", "yes"),
        (&control_plane, "RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        (&control_plane, "StartLimitBurst", "5"),
        (&control_plane, "ExecStart", "/usr/bin/diplo-control-plane serve --data-dir /var/lib/diplo/control-plane"),
        (&agent, "Type", "notify"),
        (&agent, "NotifyAccess", "main"),
        (&agent, "Restart", "always"),
        (&agent, "Delegate", "yes"),
        (&agent, "KillMode", "process"),
        (&agent, "StateDirectoryMode", "0700"),
        (&agent, "ExecStart", "/usr/bin/diplo-agent --data-dir /var/lib/diplo/agent"),
    ];
    for (text, key, value) in expected {
        let unit = if std::ptr::eq(text, control_plane.as_str()) { "diplo-control-plane" } else { "diplo-agent" };
        assert_eq!(unit_values(text, key), vec![value.to_owned()], "{unit}.service: {key}");
    }
    assert_eq!(unit_values(&control_plane, "SystemCallFilter")[0], "@system-service", "the control plane's system call filter");
    assert!(unit_values(&agent, "User").is_empty(), "the agent runs as root: it drives the runtimes");
    assert!(
        unit_values(&agent, "SystemCallFilter").is_empty() && unit_values(&agent, "CapabilityBoundingSet").is_empty(),
        "LXC containers and build steps inherit the agent's seccomp filter and capability bound: it must carry none"
    );
}

// ---------------------------------------------------------------------------------
// Type=notify readiness

/// A unix datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new().prefix("diplo-notify-").tempdir().expect("temporary directory");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        NotifySocket { socket, path, _dir: dir }
    }

    fn env(&self) -> (String, String) {
        ("NOTIFY_SOCKET".to_owned(), self.path.display().to_string())
    }

    /// The next message (its `KEY=VALUE` lines), or `None` after `timeout`.
    fn next(&self, timeout: Duration) -> Option<Vec<String>> {
        self.socket.set_read_timeout(Some(timeout)).expect("read timeout");
        let mut buffer = vec![0u8; 4096];
        let received = self.socket.recv(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..received]).lines().map(str::to_owned).collect())
    }

    /// Waits for a message holding `line`; panics after `timeout`, quoting what came.
    fn expect(&self, line: &str, timeout: Duration, logs: impl Fn() -> String) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(message) if message.iter().any(|l| l == line) => return message,
                Some(message) => seen.push(message),
                None => break,
            }
        }
        panic!("no {line} on the notify socket within {timeout:?} (received {seen:?})\n{}", logs());
    }
}

fn send_sigterm(pid: u32) {
    let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("running kill");
    assert!(status.success(), "kill -TERM {pid} failed");
}

#[test]
fn control_plane_notifies_ready_once_it_listens_and_stopping_on_sigterm() {
    let notify = NotifySocket::bind();
    let mut control_plane = ControlPlane::spawn(ControlPlaneOptions { env: vec![notify.env()], ..Default::default() });
    let ready = notify.expect("READY=1", Duration::from_secs(60), || control_plane.logs());
    // Both listeners accept connections the moment READY=1 is sent: no retry here.
    let healthz = http_get(&control_plane.rest_url("/healthz"), None).expect("REST answers once READY=1 is sent");
    assert_eq!((healthz.status, healthz.body.trim()), (200, "ok"));
    std::net::TcpStream::connect_timeout(&control_plane.grpc_addr(), Duration::from_secs(5)).expect("gRPC accepts once READY=1 is sent");
    let status = ready.iter().find_map(|line| line.strip_prefix("STATUS=")).expect("a STATUS= line with READY=1");
    assert!(
        status.contains(&control_plane.grpc_addr().to_string()) && status.contains(&control_plane.rest_addr().to_string()),
        "the status names both addresses: {status}"
    );

    send_sigterm(control_plane.process().pid());
    notify.expect("STOPPING=1", Duration::from_secs(20), || control_plane.logs());
    let exit = control_plane.process().wait_exit(Duration::from_secs(20)).expect("it exits after SIGTERM");
    assert!(exit.success(), "a clean stop: {exit}\n{}", control_plane.logs());
}

#[test]
fn agent_notifies_ready_once_joined_and_again_when_its_control_plane_is_away() {
    let mut control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let token = control_plane.join_token(&["--single-use"]);
    let name = diplo_tests::unique_name("notify-agent");
    let notify = NotifySocket::bind();
    let (key, socket) = notify.env();
    let mut agent = control_plane.start_agent_with_env(&name, Some(&token), &[(key.as_str(), socket.as_str())]);
    let ready = notify.expect("READY=1", Duration::from_secs(90), || agent.logs());
    // READY=1 comes after the join: the control plane knows the node by then.
    let nodes = control_plane.nodes();
    let node = find_node(&nodes, &name).unwrap_or_else(|| panic!("{name} is not a node when READY=1 is sent: {nodes:?}"));
    let node_id = node["id"].as_str().expect("node id").to_owned();
    assert!(
        ready.iter().any(|line| line.starts_with("STATUS=") && line.contains(&node_id)),
        "the status names the node {node_id}: {ready:?}"
    );

    // Restarted with its saved identity while the control plane is away, it is started
    // all the same (and keeps reconnecting): a control plane outage never fails the unit.
    agent.kill();
    control_plane.process().kill();
    let data_dir = agent.data_dir().to_owned();
    let mut again =
        Agent::start_with_env(&control_plane.grpc_addr().to_string(), &name, None, &data_dir, &[(key.as_str(), socket.as_str())]);
    notify.expect("READY=1", Duration::from_secs(90), || again.logs());
    assert!(again.process().try_exit().is_none(), "the agent keeps running without its control plane:\n{}", again.logs());
}

#[allow(dead_code)]
fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
