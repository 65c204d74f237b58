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

use diplo_tests::{
    Agent, Binary, ControlPlane, ControlPlaneOptions, binary, find_node, http_get, output_with_timeout, skip_or_fail, wait_until,
};

/// `deploy/<relative>`.
fn deploy_file(relative: &str) -> PathBuf {
    diplo_tests::repository_root().join("deploy").join(relative)
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

/// A control plane whose gRPC port listens on `addr` (the root side of a lab host's link),
/// with `addr` in its server certificate; returns it with that port.
fn control_plane_for(addr: &str) -> (ControlPlane, u16) {
    let grpc_port = diplo_tests::free_port();
    let control_plane = ControlPlane::start(ControlPlaneOptions {
        env: vec![("DIPLO_GRPC_ADDR".to_owned(), format!("{addr}:{grpc_port}")), ("DIPLO_TLS_SANS".to_owned(), addr.to_owned())],
        ..Default::default()
    });
    (control_plane, grpc_port)
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

// ---------------------------------------------------------------------------------
// install.sh

#[test]
fn install_sh_carries_the_agent_unit_of_deploy_systemd() {
    let script = std::fs::read_to_string(deploy_file("install.sh")).expect("deploy/install.sh");
    let start = script.find("<<'UNIT'\n").expect("install.sh has the unit as a here-document") + "<<'UNIT'\n".len();
    let end = start + script[start..].find("\nUNIT\n").expect("the here-document's end");
    let embedded = &script[start..=end];
    let unit = unit_text("diplo-agent.service").replace("ExecStart=/usr/bin/diplo-agent", "ExecStart=/usr/local/bin/diplo-agent");
    assert_eq!(embedded, unit, "install.sh's unit must be deploy/systemd/diplo-agent.service with the binary in /usr/local/bin");
    let mode = std::fs::metadata(deploy_file("install.sh")).expect("install.sh").permissions().mode();
    assert!(mode & 0o111 != 0, "install.sh is executable");
}

#[test]
fn install_sh_cut_short_in_transit_runs_nothing() {
    let script = std::fs::read(deploy_file("install.sh")).expect("deploy/install.sh");
    let run_piped = |bytes: &[u8]| {
        let dir = tempfile::Builder::new().prefix("diplo-install-cut-").tempdir().expect("temporary directory");
        let path = dir.path().join("install.sh");
        std::fs::write(&path, bytes).expect("script");
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!("sh -s -- --help < {}", path.display()));
        run(command, Duration::from_secs(30))
    };
    let (ok, text) = run_piped(&script);
    assert!(ok && text.contains("usage: install.sh"), "the whole script answers --help: {text}");
    // Cut anywhere before its last line, sh refuses it whole: not even --help runs.
    for cut in [script.len() / 4, script.len() / 2, script.len() * 3 / 4, script.len() - 3] {
        let (ok, text) = run_piped(&script[..cut]);
        assert!(!ok && !text.contains("usage: install.sh"), "cut at byte {cut}, something ran: {text}");
    }
}

/// A lab host: a network namespace of its own on a private /24 (10.250.N.0/24, never the
/// SO1 192.168.100.0/24), joined to the root namespace by a veth pair: the root side is
/// 10.250.N.1, the lab host 10.250.N.2. Everything running inside is killed and the
/// namespace and link removed when dropped.
struct LabHost {
    netns: String,
    veth: String,
    subnet: u8,
}

impl LabHost {
    fn create() -> LabHost {
        let suffix =
            diplo_tests::unique_name("x").trim_start_matches("x-").chars().filter(char::is_ascii_alphanumeric).take(6).collect::<String>();
        let addresses = Command::new("ip").args(["-4", "-o", "addr"]).output().expect("ip addr");
        let taken = String::from_utf8_lossy(&addresses.stdout).into_owned();
        let subnet = (100u8..=250)
            .cycle()
            .skip(usize::from(suffix.bytes().fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b)) % 150))
            .take(151)
            .find(|n| !taken.contains(&format!("10.250.{n}.")))
            .expect("a free 10.250.N.0/24");
        let lab = LabHost { netns: format!("diplo-install-{suffix}"), veth: format!("dinst{suffix}"), subnet };
        let peer = format!("{}p", lab.veth);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), lab.netns.clone()],
            vec!["link".into(), "add".into(), lab.veth.clone(), "type".into(), "veth".into(), "peer".into(), "name".into(), peer.clone()],
            vec!["link".into(), "set".into(), peer.clone(), "netns".into(), lab.netns.clone()],
            vec!["addr".into(), "add".into(), format!("{}/24", lab.root_addr()), "dev".into(), lab.veth.clone()],
            vec!["link".into(), "set".into(), lab.veth.clone(), "up".into()],
            vec!["-n".into(), lab.netns.clone(), "addr".into(), "add".into(), format!("10.250.{subnet}.2/24"), "dev".into(), peer.clone()],
            vec!["-n".into(), lab.netns.clone(), "link".into(), "set".into(), peer, "up".into()],
            vec!["-n".into(), lab.netns.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        for step in steps {
            let mut command = Command::new("ip");
            command.args(&step);
            let (ok, text) = run(command, Duration::from_secs(20));
            assert!(ok, "ip {} failed: {text}", step.join(" "));
        }
        lab
    }

    /// The root namespace's address on the lab host's link.
    fn root_addr(&self) -> String {
        format!("10.250.{}.1", self.subnet)
    }

    /// The pid of the `diplo-agent` running on the lab host, if one does.
    fn agent_pid(&self) -> Option<u32> {
        let output = Command::new("ip").args(["netns", "pids", &self.netns]).output().ok()?;
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse::<u32>().ok())
            .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "diplo-agent"))
    }

    /// `sh -c script` on the lab host, in a mount namespace of its own whose `tmpfs`
    /// covers every path install.sh writes (the machine's own files stay untouched).
    fn sh(&self, script: &str) -> (bool, String) {
        self.sh_after(&format!("for d in {TMPFS_PATHS}; do mount -t tmpfs -o mode=0755 tmpfs \"$d\"; done"), script)
    }

    /// `sh -c script` on the lab host, in a mount namespace of its own whose /usr, /etc and
    /// /var are overlays over the machine's, their changes in a tmpfs at `scratch` (for
    /// dpkg, which needs its database and writes all three).
    fn sh_overlays(&self, scratch: &Path, script: &str) -> (bool, String) {
        let overlays = format!(
            "s={scratch}\nmount -t tmpfs tmpfs \"$s\"\n\
             for d in usr etc var; do mkdir -p \"$s/$d-up\" \"$s/$d-work\"; \
             mount -t overlay overlay -o \"lowerdir=/$d,upperdir=$s/$d-up,workdir=$s/$d-work\" \"/$d\"; done",
            scratch = scratch.display()
        );
        self.sh_after(&overlays, script)
    }

    fn sh_after(&self, mounts: &str, script: &str) -> (bool, String) {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, "unshare", "--mount", "--propagation", "private", "sh", "-c"]);
        command.arg(format!("set -e\n{mounts}\nset +e\n{script}"));
        command.env_remove("DIPLO_SERVER").env_remove("DIPLO_TOKEN").env_remove("DIPLO_NODE_NAME");
        run(command, Duration::from_secs(240))
    }
}

/// What install.sh writes, each covered by a tmpfs on the lab host.
const TMPFS_PATHS: &str = "/usr/local/bin /etc/default /etc/systemd/system /var/lib /var/log";

impl Drop for LabHost {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip").args(["netns", "pids", &self.netns]).output() {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).stderr(std::process::Stdio::null()).status();
    }
}

/// `python3 -m http.server` serving `dir` on `addr:port` (killed when dropped).
fn serve_files(dir: &Path, addr: &str, log_dir: &Path) -> (diplo_tests::Process, u16) {
    let port = diplo_tests::free_port();
    let mut command = Command::new("python3");
    command.args(["-m", "http.server", "--bind", addr, "--directory"]).arg(dir).arg(port.to_string());
    let process = diplo_tests::Process::spawn("http server", command, &log_dir.join("http"));
    let url = format!("http://{addr}:{port}/install.sh");
    wait_until("the file server", Duration::from_secs(20), Duration::from_millis(100), || {
        http_get(&url, None)
            .map_err(|e| e.to_string())
            .and_then(|r| if r.status == 200 { Ok(()) } else { Err(format!("HTTP {}", r.status)) })
    });
    (process, port)
}

fn sha256_hex(path: &Path) -> String {
    let mut command = Command::new("sha256sum");
    command.arg(path);
    let (ok, text) = run(command, Duration::from_secs(60));
    assert!(ok, "sha256sum: {text}");
    text.split_whitespace().next().expect("a checksum").to_owned()
}

#[test]
fn install_sh_installs_and_joins_an_agent_on_a_lab_host_and_refuses_bad_input() {
    let tools_here = ["ip", "unshare", "curl", "python3", "sha256sum"].iter().all(|tool| {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
        if !found {
            skip_or_fail(&format!("`{tool}` is not installed; scripts/setup-host installs it"));
        }
        found
    });
    if !tools_here {
        return;
    }
    let lab = LabHost::create();
    let root_addr = lab.root_addr();
    let (control_plane, grpc_port) = control_plane_for(&root_addr);
    let files = tempfile::Builder::new().prefix("diplo-install-files-").tempdir().expect("temporary directory");
    std::fs::copy(deploy_file("install.sh"), files.path().join("install.sh")).expect("install.sh");
    let agent = files.path().join("diplo-agent");
    if std::fs::hard_link(binary(Binary::Agent), &agent).is_err() {
        std::fs::copy(binary(Binary::Agent), &agent).expect("the agent binary");
    }
    let checksum = sha256_hex(&agent);
    let (_server, http_port) = serve_files(files.path(), &root_addr, files.path());
    let base = format!("http://{root_addr}:{http_port}");
    let server = format!("{root_addr}:{grpc_port}");
    let token = control_plane.join_token(&["--single-use"]);
    let name = diplo_tests::unique_name("installed");
    let host_defaults_before = Path::new("/etc/default/diplo-agent").exists();
    let host_binary_before = Path::new("/usr/local/bin/diplo-agent").exists();

    // Refused before anything is installed: each line's output must name the fault, and
    // the lab host must have no agent or settings after it.
    let ok_args = format!("--server {server} --token '{token}' --name {name}");
    let refusals = [
        (format!("{ok_args} --agent-url {base}/diplo-agent --sha256 {}", "0".repeat(64)), "SHA-256"),
        (format!("--server '{server} x' --token '{token}' --agent-url {base}/diplo-agent"), "--server"),
        (format!("--server {server} --token '{token}\"' --agent-url {base}/diplo-agent"), "--token"),
        (
            format!(
                "--server {server} --token '{token}
DIPLO_X=1' --agent-url {base}/diplo-agent"
            ),
            "--token",
        ),
        (format!("--server {server} --name 'a b' --token '{token}' --agent-url {base}/diplo-agent"), "--name"),
        (format!("--server {server} --agent-url {base}/diplo-agent"), "--token is required"),
        (ok_args.clone(), "--agent-url"),
        (format!("{ok_args} --agent-url {base}/no-such-file"), "cannot download"),
        // Not an agent for this host (here: a shell script that refuses --version).
        (format!("{ok_args} --agent-url {base}/install.sh"), "does not run on this host"),
    ];
    for (args, names) in &refusals {
        let (ok, text) = lab.sh(&format!(
            "curl -sfL {base}/install.sh | sh -s -- {args}; rc=$?\n\
             test -e /usr/local/bin/diplo-agent && echo LEFT-BINARY; test -e /etc/default/diplo-agent && echo LEFT-DEFAULTS; exit $rc"
        ));
        assert!(!ok, "install.sh accepted {args:?}: {text}");
        assert!(text.contains(names), "the refusal of {args:?} names {names:?}: {text}");
        assert!(!text.contains("LEFT-"), "a refused install left files behind ({args:?}): {text}");
    }
    // An unsupported OS or architecture is refused with a clear message.
    let fake_os = files.path().join("os-release");
    std::fs::write(&fake_os, "ID=fedora\nPRETTY_NAME=\"Fedora Linux 40\"\n").expect("fake os-release");
    let (ok, text) = lab.sh(&format!(
        "mount --bind {} /etc/os-release && curl -sfL {base}/install.sh | sh -s -- {ok_args} --agent-url {base}/diplo-agent",
        fake_os.display()
    ));
    assert!(!ok && text.contains("unsupported operating system: Fedora Linux 40"), "{text}");
    let fake_bin = files.path().join("fake-bin");
    std::fs::create_dir_all(&fake_bin).expect("fake bin");
    std::fs::write(fake_bin.join("uname"), "#!/bin/sh\necho mips64\n").expect("fake uname");
    std::fs::set_permissions(fake_bin.join("uname"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ok, text) = lab
        .sh(&format!("curl -sfL {base}/install.sh | PATH={}:$PATH sh -s -- {ok_args} --agent-url {base}/diplo-agent", fake_bin.display()));
    assert!(!ok && text.contains("unsupported architecture: mips64"), "{text}");

    // The one-liner: downloaded, checked, installed, configured, started, joined.
    let (ok, text) = lab.sh(&format!(
        "curl -sfL {base}/install.sh | sh -s -- {ok_args} --agent-url {base}/diplo-agent --sha256 {checksum} || exit 1\n\
         stat -c 'MODE %a %U %n' /etc/default/diplo-agent /usr/local/bin/diplo-agent /var/lib/diplo/agent\n\
         sed 's/^/DEFAULTS /' /etc/default/diplo-agent"
    ));
    assert!(ok, "install.sh failed on the lab host: {text}");
    for expected in [
        "checksum ok".to_owned(),
        "systemd is not running here".to_owned(),
        format!("diplo-agent joined as {name}"),
        "MODE 600 root /etc/default/diplo-agent".to_owned(),
        "MODE 755 root /usr/local/bin/diplo-agent".to_owned(),
        "MODE 700 root /var/lib/diplo/agent".to_owned(),
        format!("DEFAULTS DIPLO_SERVER={server}"),
        format!("DEFAULTS DIPLO_NODE_NAME={name}"),
        format!("DEFAULTS DIPLO_TOKEN={token}"),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    let said = text.split("MODE ").next().unwrap_or_default();
    let secret = token.rsplit('.').next().expect("the token's secret");
    assert!(!said.contains(secret), "install.sh never prints the token's secret: {said}");
    let node = wait_until(&format!("{name} to be ready"), Duration::from_secs(90), Duration::from_millis(500), || {
        let nodes = control_plane.try_nodes()?;
        match find_node(&nodes, &name) {
            Some(node) if node["status"] == "ready" => Ok(node.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(node["status"], "ready");
    assert_eq!(Path::new("/etc/default/diplo-agent").exists(), host_defaults_before, "the machine's /etc/default is untouched");
    assert_eq!(Path::new("/usr/local/bin/diplo-agent").exists(), host_binary_before, "the machine's /usr/local/bin is untouched");

    // Run again without a token (an upgrade), on the same lab host (the agent's own mount
    // namespace): the agent it started is replaced, and the node keeps its identity.
    let agent_pid = lab.agent_pid().expect("the installed agent runs on the lab host");
    let mut rerun = Command::new("nsenter");
    rerun.args(["-t", &agent_pid.to_string(), "-m", "-n", "sh", "-c"]).arg(format!(
        "curl -sfL {base}/install.sh | sh -s -- --server {server} --name {name} --agent-url {base}/diplo-agent --sha256 {checksum}\n\
         rc=$?; sed 's/^/DEFAULTS /' /etc/default/diplo-agent; exit $rc"
    ));
    let (ok, text) = run(rerun, Duration::from_secs(240));
    assert!(ok, "the second install failed: {text}");
    assert!(text.contains(&format!("stopping the agent started before (pid {agent_pid})")), "{text}");
    assert!(!text.contains("DEFAULTS DIPLO_TOKEN="), "no token, none written: {text}");
    let new_pid = lab.agent_pid().expect("the new agent runs");
    assert_ne!(new_pid, agent_pid, "the agent was replaced");
    wait_until(&format!("{name} to be ready again"), Duration::from_secs(90), Duration::from_millis(500), || {
        let nodes = control_plane.try_nodes()?;
        let same: Vec<_> = nodes.iter().filter(|n| n["name"] == name.as_str()).collect();
        match same.as_slice() {
            [again] if again["id"] == node["id"] && again["status"] == "ready" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Where systemd runs, the unit is installed and `systemctl enable --now` started (a
    // stand-in systemctl records the calls; the unit it was given verifies).
    let fake_systemd = files.path().join("fake-systemd");
    std::fs::create_dir_all(&fake_systemd).expect("fake systemd");
    std::fs::write(
        fake_systemd.join("systemctl"),
        "#!/bin/sh\necho \"systemctl $*\" >>/run/systemd/calls\n[ \"$1\" = is-active ] && exit 3\nexit 0\n",
    )
    .expect("fake systemctl");
    std::fs::set_permissions(fake_systemd.join("systemctl"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ok, text) = lab.sh(&format!(
        "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system || exit 1\n\
         curl -sfL {base}/install.sh | PATH={fake}:$PATH sh -s -- {ok_args}-sd --agent-url {base}/diplo-agent --sha256 {checksum} || exit 1\n\
         sed 's/^/CALL /' /run/systemd/calls\n\
         stat -c 'MODE %a %U %n' /etc/systemd/system/diplo-agent.service\n\
         SYSTEMD_PAGER= systemd-analyze verify /etc/systemd/system/diplo-agent.service 2>&1 | sed 's/^/VERIFY /'\n\
         echo DONE",
        fake = fake_systemd.display()
    ));
    assert!(ok && text.contains("DONE"), "install.sh with systemd failed: {text}");
    for expected in [
        "CALL systemctl daemon-reload",
        "CALL systemctl enable --now diplo-agent.service",
        "MODE 644 root /etc/systemd/system/diplo-agent.service",
        "diplo-agent is running under systemd",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("systemd is not running here") && !text.contains("VERIFY "), "{text}");
}

// ---------------------------------------------------------------------------------
// cloud-init

const SO1_HOSTS: [(&str, &str); 3] = [("vm1", "192.168.100.10"), ("vm2", "192.168.100.11"), ("vm3", "192.168.100.12")];

/// `cloud-init schema --config-file FILE`: `Ok` when cloud-init calls it valid.
fn cloud_config_schema(file: &Path) -> Result<String, String> {
    let mut command = Command::new("cloud-init");
    command.arg("schema").arg("--config-file").arg(file);
    let (ok, text) = run(command, Duration::from_secs(60));
    if ok && text.contains("Valid cloud-config") { Ok(text) } else { Err(text) }
}

/// A network-config rendered by cloud-init for Debian (ifupdown): the rendered files'
/// text, or cloud-init's complaint.
fn render_network_config(file: &Path) -> Result<String, String> {
    let out = tempfile::Builder::new().prefix("diplo-netcfg-").tempdir().expect("temporary directory");
    let mut command = Command::new("cloud-init");
    command.args(["devel", "net-convert", "--kind", "yaml", "--distro", "debian", "--output-kind", "eni", "--network-data"]);
    command.arg(file).arg("--directory").arg(out.path());
    let (ok, text) = run(command, Duration::from_secs(60));
    if !ok {
        return Err(text);
    }
    let mut command = Command::new("sh");
    command.arg("-c").arg("find . -type f -exec cat {} +").current_dir(out.path());
    let (_, rendered) = run(command, Duration::from_secs(10));
    Ok(rendered)
}

#[test]
fn cloud_init_user_data_and_network_config_validate_and_broken_ones_do_not() {
    if !have_tool("cloud-init", &["--version"], "scripts/setup-assets (Debian's cloud-init package)") {
        return;
    }
    for (vm, address) in SO1_HOSTS {
        let user_data = deploy_file(&format!("cloud-init/{vm}.user-data"));
        cloud_config_schema(&user_data).unwrap_or_else(|e| panic!("{} is not valid cloud-config: {e}", user_data.display()));
        let text = std::fs::read_to_string(&user_data).expect("user-data");
        assert!(text.starts_with("#cloud-config\n"), "{vm}: cloud-init reads user-data as cloud-config only with the header");
        for needed in [&format!("hostname: {vm}"), "install.sh | sh -s -- --server @DIPLO_SERVER@ --token '@DIPLO_TOKEN@'", "--sha256"] {
            assert!(text.contains(needed), "{vm}.user-data lacks {needed:?}");
        }
        let runtime = if vm == "vm3" { "docker.io" } else { "containerd" };
        assert!(text.contains(&format!("  - {runtime}\n")), "{vm} installs {runtime}");

        let network = deploy_file(&format!("cloud-init/{vm}.network-config"));
        let rendered = render_network_config(&network).unwrap_or_else(|e| panic!("{} does not render: {e}", network.display()));
        assert!(rendered.contains(&format!("address {address}/24")), "{vm} gets {address}: {rendered}");
        assert!(rendered.contains("route add default gw 192.168.100.1"), "{vm}'s route: {rendered}");
    }

    // A broken file is refused: a list given as a string, a command that is a number, YAML
    // that does not parse.
    let dir = tempfile::Builder::new().prefix("diplo-cloud-init-").tempdir().expect("temporary directory");
    let vm1 = std::fs::read_to_string(deploy_file("cloud-init/vm1.user-data")).expect("vm1.user-data");
    let broken = [
        ("packages-string", vm1.replacen("packages:\n  - containerd\n", "packages: containerd\n  - containerd\n", 1)),
        ("runcmd-number", format!("{vm1}\nruncmd: 5\n").replacen("runcmd:\n", "bootcmd: 5\nruncmd:\n", 1)),
        ("bad-yaml", vm1.replacen("hostname: vm1", "hostname: [vm1", 1)),
    ];
    for (name, text) in broken {
        assert_ne!(text, vm1, "{name}: the change did not apply");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("broken user-data");
        let err = cloud_config_schema(&path).expect_err(&format!("{name} was accepted"));
        eprintln!("{name} refused as expected: {}", err.trim());
    }
    let network = std::fs::read_to_string(deploy_file("cloud-init/vm1.network-config")).expect("vm1.network-config");
    let path = dir.path().join("bad-network");
    std::fs::write(&path, network.replace("192.168.100.10/24", "192.168.100.300/24")).expect("broken network-config");
    render_network_config(&path).expect_err("an impossible address was accepted");
}

// ---------------------------------------------------------------------------------
// .deb packages

const PACKAGES: [&str; 3] = ["diplo-control-plane", "diplo-agent", "diplo"];

/// Builds the three packages with `cargo deb --no-build` from the binaries under test:
/// cargo-deb takes a release build's binaries from `<target>/release/`, so a target
/// directory of our own holds links to them there. Returns the .deb files by package.
fn build_packages(out: &Path, packages: &[&str]) -> Vec<(String, PathBuf)> {
    let target = out.join("target");
    std::fs::create_dir_all(target.join("release")).expect("target/release");
    for bin_kind in [Binary::ControlPlane, Binary::Agent, Binary::Cli] {
        let built = binary(bin_kind);
        let at = target.join("release").join(built.file_name().expect("binary name"));
        if std::fs::hard_link(&built, &at).is_err() {
            std::fs::copy(&built, &at).expect("copying a binary");
        }
    }
    packages
        .iter()
        .map(|package| {
            let mut command = Command::new("cargo");
            command
                .args(["deb", "--no-build", "--fast", "--package", package, "--manifest-path"])
                .arg(diplo_tests::repository_root().join("Cargo.toml"))
                .arg("--output")
                .arg(out)
                .env("CARGO_TARGET_DIR", &target);
            diplo_tests::remove_cargo_test_env(&mut command);
            let (ok, text) = run(command, Duration::from_secs(300));
            assert!(ok, "cargo deb -p {package} failed: {text}");
            let deb = text.lines().map(str::trim).find(|line| line.ends_with(".deb")).map(PathBuf::from).expect("the .deb's path");
            (package.to_string(), deb)
        })
        .collect()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let mut command = Command::new("dpkg-deb");
    command.args(args).arg(deb);
    let (ok, text) = run(command, Duration::from_secs(60));
    assert!(ok, "dpkg-deb {args:?} {} failed: {text}", deb.display());
    text
}

#[test]
fn deb_packages_build_and_install_into_an_isolated_root() {
    if !have_tool("cargo-deb", &["--version"], "scripts/setup-assets (cargo install cargo-deb)")
        || !have_tool("dpkg-deb", &["--version"], "Debian's dpkg")
    {
        return;
    }
    let out = tempfile::Builder::new().prefix("diplo-debs-").tempdir().expect("temporary directory");
    let debs = build_packages(out.path(), &PACKAGES);
    let deb = |name: &str| debs.iter().find(|(package, _)| package == name).map(|(_, deb)| deb.clone()).expect("built");

    // Contents: binaries, units, the settings files as conffiles (the agent's 0600).
    let expected: [(&str, &[&str]); 3] = [
        (
            "diplo-control-plane",
            &[
                "-rwxr-xr-x 0/0 ./usr/bin/diplo-control-plane",
                "-rw-r--r-- 0/0 ./usr/lib/systemd/system/diplo-control-plane.service",
                "-rw-r--r-- 0/0 ./etc/default/diplo-control-plane",
            ],
        ),
        (
            "diplo-agent",
            &[
                "-rwxr-xr-x 0/0 ./usr/bin/diplo-agent",
                "-rw-r--r-- 0/0 ./usr/lib/systemd/system/diplo-agent.service",
                "-rw------- 0/0 ./etc/default/diplo-agent",
            ],
        ),
        ("diplo", &["-rwxr-xr-x 0/0 ./usr/bin/diplo"]),
    ];
    for (package, entries) in expected {
        let listing = dpkg_deb(&["-c"], &deb(package));
        // "mode owner size date time path": keep mode, owner and path.
        let files: Vec<String> = listing
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|fields| fields.len() >= 6)
            .map(|fields| format!("{} {} {}", fields[0], fields[1], fields[5]))
            .collect();
        for entry in entries {
            assert!(files.iter().any(|file| file == entry), "{package}: no {entry:?} in {files:#?}");
        }
        let info = dpkg_deb(&["-I"], &deb(package));
        assert!(info.contains(&format!("Package: {package}\n")) && info.contains("Depends: libc6"), "{package}: {info}");
    }
    let control = tempfile::Builder::new().prefix("diplo-deb-control-").tempdir().expect("temporary directory");
    let mut extract = Command::new("dpkg-deb");
    extract.arg("-e").arg(deb("diplo-control-plane")).arg(control.path());
    assert!(run(extract, Duration::from_secs(30)).0, "dpkg-deb -e");
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/default/diplo-control-plane");
    let postinst = std::fs::read_to_string(control.path().join("postinst")).expect("postinst");
    assert!(postinst.contains("useradd --system") && postinst.contains("deb-systemd-helper enable diplo-control-plane.service"));

    // Installed for real, by dpkg, in a mount namespace whose /usr, /etc and /var are
    // overlays over the machine's (their changes land in a tmpfs): postinst creates the
    // user, the binaries run, the units verify at their installed paths.
    let host_user = Command::new("getent").args(["passwd", "diplo"]).output().expect("getent").status.success();
    let scratch = tempfile::Builder::new().prefix("diplo-deb-root-").tempdir().expect("temporary directory");
    let debs_list: Vec<String> = debs.iter().map(|(_, deb)| deb.display().to_string()).collect();
    let script = format!(
        "set -e\n\
         s={scratch}\n\
         mount -t tmpfs tmpfs \"$s\"\n\
         for d in usr etc var; do mkdir -p \"$s/$d-up\" \"$s/$d-work\"; \
           mount -t overlay overlay -o \"lowerdir=/$d,upperdir=$s/$d-up,workdir=$s/$d-work\" \"/$d\"; done\n\
         DEBIAN_FRONTEND=noninteractive dpkg -i {debs}\n\
         echo \"USER $(getent passwd diplo)\"\n\
         stat -c 'MODE %a %U %n' /etc/default/diplo-agent /etc/default/diplo-control-plane\n\
         dpkg-query -W -f='STATUS ${{Package}} ${{Status}}\\n' diplo diplo-agent diplo-control-plane\n\
         echo \"VERSION $(runuser -u diplo -- /usr/bin/diplo-control-plane --version)\"\n\
         echo \"VERSION $(/usr/bin/diplo-agent --version)\"\n\
         echo \"VERSION $(/usr/bin/diplo --version)\"\n\
         test -L /etc/systemd/system/multi-user.target.wants/diplo-control-plane.service && echo ENABLED control-plane\n\
         test -e /etc/systemd/system/multi-user.target.wants/diplo-agent.service && echo ENABLED agent\n\
         SYSTEMD_PAGER= systemd-analyze verify /usr/lib/systemd/system/diplo-control-plane.service \
           /usr/lib/systemd/system/diplo-agent.service 2>&1 | sed 's/^/VERIFY /'\n\
         echo DONE",
        scratch = scratch.path().display(),
        debs = debs_list.join(" "),
    );
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let (ok, text) = run(command, Duration::from_secs(180));
    assert!(ok && text.contains("DONE"), "installing the packages failed: {text}");
    let user = text.lines().find_map(|line| line.strip_prefix("USER ")).unwrap_or_default();
    let fields: Vec<&str> = user.split(':').collect();
    assert!(
        fields.len() == 7 && fields[0] == "diplo" && fields[6] == "/usr/sbin/nologin",
        "postinst creates the system user diplo: {text}"
    );
    assert!(fields[2].parse::<u32>().is_ok_and(|uid| uid > 0 && uid < 1000), "diplo is a system user: {user}");
    for expected in [
        "MODE 600 root /etc/default/diplo-agent",
        "MODE 644 root /etc/default/diplo-control-plane",
        "STATUS diplo install ok installed",
        "STATUS diplo-agent install ok installed",
        "STATUS diplo-control-plane install ok installed",
        &format!("VERSION diplo-control-plane {}", env!("CARGO_PKG_VERSION")),
        &format!("VERSION diplo-agent {}", env!("CARGO_PKG_VERSION")),
        &format!("VERSION diplo {}", env!("CARGO_PKG_VERSION")),
        "ENABLED control-plane",
    ] {
        assert!(text.lines().any(|line| line == expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("ENABLED agent"), "the agent's unit waits for its settings: not enabled by the package");
    assert!(!text.contains("VERIFY "), "the installed units do not verify: {text}");
    // The machine itself is untouched.
    assert_eq!(Command::new("getent").args(["passwd", "diplo"]).output().expect("getent").status.success(), host_user);
}

#[test]
fn install_sh_installs_the_agent_package_on_a_lab_host() {
    if !have_tool("cargo-deb", &["--version"], "scripts/setup-assets (cargo install cargo-deb)") {
        return;
    }
    let files = tempfile::Builder::new().prefix("diplo-install-deb-").tempdir().expect("temporary directory");
    let debs = build_packages(files.path(), &["diplo-agent"]);
    let deb = debs[0].1.clone();
    let checksum = sha256_hex(&deb);
    let lab = LabHost::create();
    let root_addr = lab.root_addr();
    let (control_plane, grpc_port) = control_plane_for(&root_addr);
    let token = control_plane.join_token(&["--single-use"]);
    let name = diplo_tests::unique_name("packaged");
    let scratch = tempfile::Builder::new().prefix("diplo-install-deb-root-").tempdir().expect("temporary directory");
    let (ok, text) = lab.sh_overlays(
        scratch.path(),
        &format!(
            "sh {script} --server {root_addr}:{grpc_port} --token '{token}' --name {name} --agent-file {deb} --sha256 {checksum} || exit 1\n\
             dpkg-query -W -f='STATUS ${{Package}} ${{Status}}\\n' diplo-agent\n\
             stat -c 'MODE %a %U %n' /etc/default/diplo-agent /usr/bin/diplo-agent\n\
             test -e \"$s/usr-up/local/bin/diplo-agent\" && echo LOCAL-BINARY\n\
             sed 's/^/DEFAULTS /' /etc/default/diplo-agent\n\
             echo DONE",
            script = deploy_file("install.sh").display(),
            deb = deb.display(),
        ),
    );
    assert!(ok && text.contains("DONE"), "install.sh with the .deb failed: {text}");
    for expected in [
        "installing the diplo-agent package",
        "STATUS diplo-agent install ok installed",
        "MODE 600 root /etc/default/diplo-agent",
        "MODE 755 root /usr/bin/diplo-agent",
        &format!("DEFAULTS DIPLO_SERVER={root_addr}:{grpc_port}"),
        &format!("diplo-agent joined as {name}"),
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains("LOCAL-BINARY"), "a package installs /usr/bin/diplo-agent only: {text}");
    wait_until(&format!("{name} to be ready"), Duration::from_secs(90), Duration::from_millis(500), || {
        let nodes = control_plane.try_nodes()?;
        match find_node(&nodes, &name) {
            Some(node) if node["status"] == "ready" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}
