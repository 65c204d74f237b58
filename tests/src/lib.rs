//! Harness for cluster-level tests: the real `diplo-control-plane`, `diplo-agent` and
//! `diplo` binaries run as separate processes.
//!
//! * [`ControlPlane::start`] runs `diplo-control-plane serve` in a fresh temporary
//!   directory on free loopback ports and waits until it answers.
//! * [`Agent::start`] (or [`ControlPlane::start_agent`]) runs `diplo-agent` against it.
//! * [`ControlPlane::cli`] runs `diplo --config <data>/cli.toml …`;
//!   [`ControlPlane::rest_get`] calls the REST gateway.
//! * [`wait_until`] polls a condition against a deadline and fails with the last
//!   observation.
//!
//! * Hermetic: every control plane and agent runs with `HTTP_PROXY`, `HTTPS_PROXY` and
//!   `ALL_PROXY` pointing at an [`EgressRecorder`] on 127.0.0.1 and `NO_PROXY` naming
//!   only loopback. The recorder refuses every request and notes its target host; when
//!   a [`ControlPlane`] is dropped (test not already failing) and anything was noted,
//!   the test fails naming the hosts. A test that means to reach out reads and clears
//!   the record with [`ControlPlane::take_egress_hosts`].
//! * [`skip_or_fail`] is the one way to skip for a missing runtime or tool: a loud skip
//!   on a developer's machine, a failure when `CI` is set to any non-empty value.
//!
//! Every test gets its own directories and ports, so tests run in parallel. Child
//! processes are killed (SIGKILL) when their handle is dropped; when the test is
//! panicking, the tails of their logs are printed and the temporary directory is kept.
//!
//! The binaries are taken from the target directory this test executable was built
//! into. `cargo nextest run -p diplo-tests` does not build other packages' binaries, so
//! the harness runs `cargo build --workspace --bins` first: once per nextest run (the
//! outcome is shared through a stamp file named after `NEXTEST_RUN_ID`), or once per
//! test process under `cargo test`. It is a no-op when the binaries are fresh, and
//! cargo's own lock serialises concurrent builds. Set `DIPLO_TESTS_NO_BUILD=1` to skip
//! it and use binaries built beforehand.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long a control plane may take to come up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of one CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of one REST request.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of each log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

// ---------------------------------------------------------------------------------
// Binaries

/// The binaries under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// `diplo-control-plane`.
    ControlPlane,
    /// `diplo-agent`.
    Agent,
    /// `diplo`, the operator CLI.
    Cli,
    /// `diplo-hollow`, simulated nodes.
    Hollow,
}

impl Binary {
    fn file_name(self) -> &'static str {
        match self {
            Binary::ControlPlane => "diplo-control-plane",
            Binary::Agent => "diplo-agent",
            Binary::Cli => "diplo",
            Binary::Hollow => "diplo-hollow",
        }
    }
}

/// Path of a binary under test (built first if needed, see the crate docs). Panics
/// with a hint when it is missing.
pub fn binary(bin: Binary) -> PathBuf {
    let path = binaries_dir().join(bin.file_name());
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` (the tests use the binaries in {})",
        path.display(),
        binaries_dir().display()
    );
    path
}

/// `<target>/<profile>`, the directory holding this test executable's `deps/`.
fn binaries_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("cannot find the test executable's path");
        let parent = exe.parent().expect("the test executable has a parent directory");
        let profile_dir = if parent.file_name().is_some_and(|n| n == "deps") {
            parent.parent().expect("deps/ has a parent directory").to_owned()
        } else {
            parent.to_owned()
        };
        if std::env::var_os("DIPLO_TESTS_NO_BUILD").is_none_or(|v| v.is_empty() || v == "0") {
            build_binaries(&profile_dir);
        }
        profile_dir
    })
}

/// Runs `cargo build --workspace --bins` for the profile (and target triple) whose
/// output directory is `profile_dir`, unless a test process of the same nextest run
/// (`NEXTEST_RUN_ID`) already did: its outcome is recorded in a stamp file, so that
/// later tests of a run neither rebuild nor see binaries change under them, and a
/// failed build fails them at once.
fn build_binaries(profile_dir: &Path) {
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_owned();
    let mut target_dir = profile_dir.parent().expect("the profile directory has a parent").to_owned();
    let mut triple = None;
    // `<target>/<triple>/<profile>` when built with `--target`.
    if !target_dir.join("CACHEDIR.TAG").exists()
        && let Some(up) = target_dir.parent()
        && up.join("CACHEDIR.TAG").exists()
    {
        triple = target_dir.file_name().map(|t| t.to_owned());
        target_dir = up.to_owned();
    }
    let stamp = std::env::var("NEXTEST_RUN_ID")
        .ok()
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(|id| target_dir.join("tmp").join(format!("diplo-tests-build-{profile}-{id}")));
    if let Some(outcome) = stamp.as_deref().and_then(|path| std::fs::read_to_string(path).ok()) {
        assert!(outcome.trim() == "ok", "{}", outcome.trim());
        return;
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
    let mut command = Command::new(&cargo);
    command.args(["build", "--workspace", "--bins", "--manifest-path"]).arg(&manifest);
    command.env("CARGO_TARGET_DIR", &target_dir);
    remove_cargo_test_env(&mut command);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    if let Some(triple) = triple {
        command.arg("--target").arg(triple);
    }
    let started = Instant::now();
    eprintln!("[harness] building the binaries: {command:?}");
    let outcome = match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!(
            "`cargo build --workspace --bins` failed ({status}); fix the build, or build the binaries yourself \
             (`cargo build --workspace`) and set DIPLO_TESTS_NO_BUILD=1"
        )),
        Err(e) => {
            Err(format!("cannot run {cargo:?} to build the binaries ({e}); run `cargo build --workspace` and set DIPLO_TESTS_NO_BUILD=1"))
        }
    };
    if let Some(stamp) = &stamp {
        let _ = std::fs::create_dir_all(stamp.parent().unwrap_or(&target_dir));
        let text = match &outcome {
            Ok(()) => "ok".to_owned(),
            Err(e) => format!("an earlier test of this run could not build the binaries: {e}"),
        };
        // Written whole under a temporary name, then renamed: readers never see half.
        let partial = stamp.with_extension(format!("{}.partial", std::process::id()));
        if std::fs::write(&partial, text).is_ok() {
            let _ = std::fs::rename(&partial, stamp);
        }
        remove_old_stamps(stamp);
    }
    if let Err(e) = outcome {
        panic!("{e}");
    }
    eprintln!("[harness] binaries ready in {:.1?}", started.elapsed());
}

/// Removes from `command` the variables cargo sets for a test process. Some build
/// scripts (ring's) rerun when one changes, so a `cargo build` inheriting them and a
/// plain `cargo build` in a shell would rebuild each other's dependencies.
pub fn remove_cargo_test_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && (name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&name))
        {
            command.env_remove(name);
        }
    }
}

/// The cargo target directory holding the binaries under test (built first if needed),
/// for tests that run cargo themselves and must find the build already made.
pub fn target_dir() -> PathBuf {
    let profile_dir = binaries_dir();
    profile_dir.parent().unwrap_or(profile_dir).to_owned()
}

/// Removes stamps of earlier runs (older than an hour) next to `current`.
fn remove_old_stamps(current: &Path) {
    let Some(dir) = current.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        let ours = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("diplo-tests-build-"));
        if ours && old && path != current {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A command for a binary under test, without any `DIPLO_*` variable from the test's
/// environment (but `DIPLO_LOG`) so that a developer's settings cannot leak in.
fn command_for(bin: Binary) -> Command {
    let mut command = Command::new(binary(bin));
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && name.starts_with("DIPLO_")
            && name != "DIPLO_LOG"
        {
            command.env_remove(name);
        }
    }
    command.stdin(Stdio::null());
    command
}

// ---------------------------------------------------------------------------------
// Skips

/// Whether this is a CI run: `CI` set to any non-empty value. Under CI nothing may be
/// skipped (see [`skip_or_fail`]).
pub fn in_ci() -> bool {
    is_ci(std::env::var_os("CI").as_deref())
}

/// Whether a value of `CI` (`None`: unset) makes a CI run: any non-empty value does,
/// `false` and `0` included, so that no spelling lets a skip through.
pub fn is_ci(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|value| !value.is_empty())
}

/// The one way a test skips part or all of itself because something it needs (a
/// runtime, a tool, a service) is missing here: under CI ([`in_ci`]) it panics with
/// `reason`; elsewhere it prints `reason` loudly and returns, and the caller skips.
pub fn skip_or_fail(reason: &str) {
    assert!(!in_ci(), "CI is set, so nothing may be skipped, but: {reason}");
    eprintln!("\n{0}\n!!! SKIPPED: {reason}\n!!! (set CI=1 to make this a failure)\n{0}\n", "!".repeat(78));
}

// ---------------------------------------------------------------------------------
// Egress recorder

/// An HTTP proxy on 127.0.0.1 that refuses every request (`403`) and records the host
/// it was asked to reach (`CONNECT host:port`, an absolute URI or the `Host` header).
/// Processes under test get it as their proxy, so any connection they try to make off
/// this machine is refused and named. Stops accepting when dropped.
pub struct EgressRecorder {
    addr: SocketAddr,
    hosts: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl EgressRecorder {
    /// Starts the recorder on a free loopback port.
    pub fn start() -> EgressRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the egress recorder to 127.0.0.1:0");
        let addr = listener.local_addr().expect("the egress recorder's address");
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (hosts_, stop_) = (hosts.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let hosts = hosts_.clone();
                std::thread::spawn(move || refuse(stream, &hosts));
            }
        });
        EgressRecorder { addr, hosts, stop }
    }

    /// `http://127.0.0.1:<port>`, the value for the `*_PROXY` variables.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The variables that send a process's outbound HTTP(S) here, loopback excepted
    /// (upper and lower case: Rust's reqwest reads the former, Go and curl both).
    pub fn proxy_env(&self) -> Vec<(String, String)> {
        let url = self.url();
        let mut env = Vec::new();
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
            env.push((name.to_owned(), url.clone()));
            env.push((name.to_ascii_lowercase(), url.clone()));
        }
        for name in ["NO_PROXY", "no_proxy"] {
            env.push((name.to_owned(), "127.0.0.1,localhost,::1".to_owned()));
        }
        env
    }

    /// The hosts asked for so far, in order, and forgets them.
    pub fn take_hosts(&self) -> Vec<String> {
        std::mem::take(&mut *self.hosts.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for EgressRecorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Reads a proxy request's head, records its target host (or what could be read of the
/// request, when it names none), then answers `403`: recorded before the client can see
/// the refusal.
fn refuse(mut stream: TcpStream, hosts: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    hosts.lock().unwrap_or_else(PoisonError::into_inner).push(proxy_target(&String::from_utf8_lossy(&head)));
    let _ = stream.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// The host a proxy request head asks for: `CONNECT host:port`, `GET http://host/…`, or
/// the `Host` header; the first line itself when none of those is there.
pub fn proxy_target(head: &str) -> String {
    let first = head.lines().next().unwrap_or("").trim();
    let mut words = first.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let authority = if method.eq_ignore_ascii_case("CONNECT") {
        Some(target)
    } else if let Some((_, rest)) = target.split_once("://") {
        Some(rest.split(['/', '?']).next().unwrap_or(rest))
    } else {
        head.lines()
            .find_map(|line| line.split_once(':').filter(|(name, _)| name.trim().eq_ignore_ascii_case("host")).map(|(_, v)| v.trim()))
    };
    match authority.filter(|a| !a.is_empty()) {
        Some(authority) => strip_port(authority).to_owned(),
        None => format!("(unparsed request: {first:?})"),
    }
}

/// `host:443` → `host`, `[::1]:80` → `::1`; a bare host is kept.
fn strip_port(authority: &str) -> &str {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.contains(':') => host,
        _ => authority,
    }
}

// ---------------------------------------------------------------------------------
// Small helpers

/// A free TCP port on 127.0.0.1 (bound to port 0, read, released). Another process may
/// take it in between; [`ControlPlane::start`] retries with new ports when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("cannot bind 127.0.0.1:0").port()
}

/// Calls `check` every `poll` until it returns `Ok`, and returns that value. Panics
/// after `timeout`, naming `what` and quoting the last `Err` observation.
pub fn wait_until<T>(what: &str, timeout: Duration, poll: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match check() {
            Ok(value) => return value,
            Err(observation) => observation,
        };
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            panic!("timed out after {elapsed:.1?} ({attempts} checks) waiting for {what}; last observation: {last}");
        }
        std::thread::sleep(poll.min(timeout - elapsed));
    }
}

/// The last `lines` lines of a text file (empty when unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = read_lossy(path);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The repository's root (the workspace this crate belongs to).
pub fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// `(METHOD, path)` of every `.route(…)` in the REST router's source
/// (control-plane/src/http/mod.rs), for tests that check a list of routes against what
/// the control plane serves.
pub fn rest_router_routes() -> std::collections::BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../control-plane/src/http/mod.rs");
    let source = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let mut found = std::collections::BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(start) = rest.find(".route(") {
        rest = &rest[start + ".route(".len()..];
        // The call's arguments: up to the matching parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a closing parenthesis");
        let arguments = &rest[..end];
        let template = arguments.split('"').nth(1).expect("a path literal");
        for method in ["get", "post", "put", "delete", "patch"] {
            let call = format!("{method}(");
            let mut from = 0;
            while let Some(at) = arguments[from..].find(&call) {
                let at = from + at;
                let before = arguments[..at].chars().next_back();
                if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                    found.insert((method.to_uppercase(), template.to_owned()));
                }
                from = at + call.len();
            }
        }
    }
    assert!(found.len() > 10, "parsing the router found only {found:?}");
    found
}

/// Runs `command` with its output captured; kills it after `timeout`.
pub fn output_with_timeout(mut command: Command, timeout: Duration) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let description = format!("{command:?}");
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{description} did not finish within {timeout:?}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for {description}: {e}"),
        }
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// A REST response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The body parsed as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("response (HTTP {}) is not JSON ({e}): {}", self.status, self.body))
    }
}

/// `GET url`, with `authorization` as the raw `Authorization` header when given. Runs
/// on its own thread, so it may be called from sync and async tests alike.
pub fn http_get(url: &str, authorization: Option<&str>) -> Result<HttpResponse, String> {
    http_request("GET", url, authorization, None)
}

/// `METHOD url` with an optional JSON body; see [`http_get`].
pub fn http_request(method: &str, url: &str, authorization: Option<&str>, body: Option<serde_json::Value>) -> Result<HttpResponse, String> {
    let url = url.to_owned();
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let authorization = authorization.map(str::to_owned);
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(HTTP_TIMEOUT).no_proxy().build().map_err(|e| e.to_string())?;
        let mut request = client.request(method.clone(), &url);
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().map_err(|e| format!("{method} {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response.text().map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        Ok(HttpResponse { status, body })
    })
    .join()
    .map_err(|_| "the HTTP thread panicked".to_owned())?
}

// ---------------------------------------------------------------------------------
// Processes

/// A child process whose stdout and stderr go to files; killed when dropped.
pub struct Process {
    label: String,
    child: Child,
    exit: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    /// Spawns `command` with its output appended to `<log_base>.stdout` / `.stderr`.
    pub fn spawn(label: &str, mut command: Command, log_base: &Path) -> Process {
        let stdout = PathBuf::from(format!("{}.stdout", log_base.display()));
        let stderr = PathBuf::from(format!("{}.stderr", log_base.display()));
        let open = |path: &Path| {
            OpenOptions::new().create(true).append(true).open(path).unwrap_or_else(|e| panic!("cannot open log {}: {e}", path.display()))
        };
        command.stdout(open(&stdout)).stderr(open(&stderr));
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {label} ({command:?}): {e}"));
        Process { label: label.to_owned(), child, exit: None, stdout, stderr }
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited (does not block).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().unwrap_or_else(|e| panic!("waiting for {}: {e}", self.label));
        }
        self.exit
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The tails of both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "----- {label} stdout ({stdout}) -----\n{}\n----- {label} stderr ({stderr}) -----\n{}\n----- end of {label} -----",
            tail(&self.stdout, LOG_TAIL_LINES),
            tail(&self.stderr, LOG_TAIL_LINES),
            label = self.label,
            stdout = self.stdout.display(),
            stderr = self.stderr.display(),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------------
// Control plane

/// Settings for [`ControlPlane::start`]; `None` keeps the binary's default.
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// `DIPLO_HEARTBEAT_INTERVAL`.
    pub heartbeat_interval: Option<Duration>,
    /// `DIPLO_DOWN_GRACE`.
    pub down_grace: Option<Duration>,
    /// `DIPLO_DATABASE_URL` (default: SQLite in the data directory).
    pub database_url: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Run `diplo-control-plane dev` (with its in-process agent for this host) instead
    /// of `serve`.
    pub dev: bool,
    /// The address the gRPC port listens on instead of 127.0.0.1 (say, a VM network's
    /// gateway, so that agents in VMs reach it); it is also put into `DIPLO_TLS_SANS`
    /// (an explicit `DIPLO_TLS_SANS` in `env` wins).
    pub grpc_listen_ip: Option<std::net::IpAddr>,
}

impl ControlPlaneOptions {
    /// Fast failure detection: 1 s heartbeats, down after `down_grace`.
    pub fn fast(down_grace: Duration) -> Self {
        ControlPlaneOptions { heartbeat_interval: Some(Duration::from_secs(1)), down_grace: Some(down_grace), ..Default::default() }
    }
}

/// A `diplo-control-plane serve` process with its own temporary directory.
pub struct ControlPlane {
    process: Process,
    grpc_addr: SocketAddr,
    rest_addr: SocketAddr,
    data_dir: PathBuf,
    dir: Option<tempfile::TempDir>,
    options: ControlPlaneOptions,
    egress: EgressRecorder,
}

fn humantime(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

impl ControlPlane {
    /// Starts a control plane and waits (up to [`STARTUP_TIMEOUT`]) until `cli.toml`
    /// exists and `GET /healthz` answers. Retries with other ports if one was taken.
    pub fn start(options: ControlPlaneOptions) -> ControlPlane {
        let dir = tempfile::Builder::new().prefix("diplo-test-").tempdir().expect("cannot create a temporary directory");
        let mut attempt = 0;
        let mut dir = Some(dir);
        loop {
            attempt += 1;
            let mut control_plane = Self::spawn_in(dir.take().expect("temporary directory"), &options);
            match control_plane.wait_ready(STARTUP_TIMEOUT) {
                Ok(()) => return control_plane,
                Err(reason) if attempt < 3 && control_plane.process.stderr().contains("cannot listen") => {
                    eprintln!("[harness] control plane could not bind its ports ({reason}); retrying with others");
                    control_plane.process.kill();
                    dir = control_plane.dir.take();
                }
                Err(reason) => panic!("the control plane did not come up: {reason}\n{}", control_plane.process.logs()),
            }
        }
    }

    /// Spawns a control plane without waiting for it (to watch it fail, for example).
    pub fn spawn(options: ControlPlaneOptions) -> ControlPlane {
        let dir = tempfile::Builder::new().prefix("diplo-test-").tempdir().expect("cannot create a temporary directory");
        Self::spawn_in(dir, &options)
    }

    fn spawn_in(dir: tempfile::TempDir, options: &ControlPlaneOptions) -> ControlPlane {
        let grpc_ip = options.grpc_listen_ip.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let grpc_addr = SocketAddr::new(grpc_ip, free_port());
        let mut rest_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        while rest_addr.port() == grpc_addr.port() {
            rest_addr.set_port(free_port());
        }
        let egress = EgressRecorder::start();
        let process = Self::spawn_process(dir.path(), grpc_addr, rest_addr, options, &egress);
        ControlPlane { process, grpc_addr, rest_addr, data_dir: dir.path().join("data"), dir: Some(dir), options: options.clone(), egress }
    }

    /// Kills the control plane with SIGKILL (a crash) and starts it again on the same
    /// data directory and addresses; waits until it is ready.
    pub fn crash_and_restart(&mut self) {
        self.process.kill();
        let dir = self.dir.as_ref().expect("temporary directory").path().to_owned();
        self.process = Self::spawn_process(&dir, self.grpc_addr, self.rest_addr, &self.options, &self.egress);
        if let Err(reason) = self.wait_ready(STARTUP_TIMEOUT) {
            panic!("the control plane did not come back: {reason}\n{}", self.process.logs());
        }
    }

    fn spawn_process(
        dir: &Path,
        grpc_addr: SocketAddr,
        rest_addr: SocketAddr,
        options: &ControlPlaneOptions,
        egress: &EgressRecorder,
    ) -> Process {
        let data_dir = dir.join("data");
        let mut command = command_for(Binary::ControlPlane);
        command.envs(egress.proxy_env());
        command
            .arg(if options.dev { "dev" } else { "serve" })
            .env("DIPLO_DATA_DIR", &data_dir)
            .env("DIPLO_GRPC_ADDR", grpc_addr.to_string())
            .env("DIPLO_REST_ADDR", rest_addr.to_string());
        if let Some(interval) = options.heartbeat_interval {
            command.env("DIPLO_HEARTBEAT_INTERVAL", humantime(interval));
        }
        if let Some(grace) = options.down_grace {
            command.env("DIPLO_DOWN_GRACE", humantime(grace));
        }
        if let Some(url) = &options.database_url {
            command.env("DIPLO_DATABASE_URL", url);
        }
        if let Some(ip) = options.grpc_listen_ip {
            command.env("DIPLO_TLS_SANS", ip.to_string());
        }
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        Process::spawn("control plane", command, &dir.join("control-plane"))
    }

    /// Waits until `cli.toml` exists and `GET /healthz` answers `ok`; `Err` if the
    /// process exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let url = self.rest_url("/healthz");
        loop {
            if let Some(status) = self.process.try_exit() {
                return Err(format!("it exited with {status} while starting"));
            }
            let last = if !self.file("cli.toml").is_file() {
                "no cli.toml yet".to_owned()
            } else {
                match http_get(&url, None) {
                    Ok(response) if response.status == 200 && response.body.trim() == "ok" => {
                        return Ok(());
                    }
                    Ok(response) => format!("/healthz answered HTTP {}: {}", response.status, response.body),
                    Err(e) => e,
                }
            };
            if Instant::now() >= deadline {
                return Err(format!("not ready after {timeout:?}; last observation: {last}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process (to kill it, wait for it or read its logs).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.process.stdout()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The tails of its logs, for failure messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// gRPC (TLS) address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// REST address.
    pub fn rest_addr(&self) -> SocketAddr {
        self.rest_addr
    }

    /// Its data directory (`DIPLO_DATA_DIR`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A file in its data directory (`ca.pem`, `admin.pem`, `admin.token`, …).
    pub fn file(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }

    /// The contents of a file in its data directory (panics when unreadable).
    pub fn read_file(&self, name: &str) -> String {
        let path = self.file(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    /// The admin's REST bearer token (`admin.token`, trimmed).
    pub fn admin_token(&self) -> String {
        self.read_file("admin.token").trim().to_owned()
    }

    /// [`ControlPlane::admin_token`], or `None` when `admin.token` cannot be read: for
    /// cleanup code, which must never panic.
    pub fn try_admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.file("admin.token")).ok().map(|token| token.trim().to_owned())
    }

    /// `http://<rest addr><path>`.
    pub fn rest_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.rest_addr)
    }

    /// `GET <path>` on the REST gateway with a raw `Authorization` header, if given.
    pub fn rest_get(&self, path: &str, authorization: Option<&str>) -> HttpResponse {
        http_get(&self.rest_url(path), authorization).unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// `GET <path>` as the admin; panics unless it answers 200 with JSON.
    pub fn rest_json(&self, path: &str) -> serde_json::Value {
        let response = self.rest_get(path, Some(&format!("Bearer {}", self.admin_token())));
        assert_eq!(response.status, 200, "GET {path}: {}", response.body);
        response.json()
    }

    /// `METHOD <path>` as the admin with an optional JSON body.
    pub fn rest(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> HttpResponse {
        let authorization = format!("Bearer {}", self.admin_token());
        http_request(method, &self.rest_url(path), Some(&authorization), body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts an agent and waits until its node is ready and has reported its host.
    /// Returns the agent and the node as `diplo nodes ls -o json` shows it.
    pub fn start_ready_agent(&self, name: &str, token: Option<&str>) -> (Agent, serde_json::Value) {
        self.start_ready_agent_with_env(name, token, &[])
    }

    /// [`ControlPlane::start_ready_agent`] with extra environment variables.
    pub fn start_ready_agent_with_env(&self, name: &str, token: Option<&str>, env: &[(&str, &str)]) -> (Agent, serde_json::Value) {
        let mut agent = self.start_agent_with_env(name, token, env);
        let node = wait_until(&format!("{name} to be ready"), Duration::from_secs(60), Duration::from_millis(250), || {
            if let Some(status) = agent.process().try_exit() {
                panic!("the agent exited with {status}:\n{}", agent.logs());
            }
            let nodes = self.try_nodes()?;
            match find_node(&nodes, name) {
                Some(node) if node["status"] == "ready" && node["os"] != "" => Ok(node.clone()),
                other => Err(format!("{name}: {other:?}")),
            }
        });
        (agent, node)
    }

    /// Runs `diplo --config <data>/cli.toml <args>` (time limit [`CLI_TIMEOUT`]).
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = command_for(Binary::Cli);
        command.arg("--config").arg(self.file("cli.toml")).args(args);
        output_with_timeout(command, CLI_TIMEOUT)
    }

    /// [`ControlPlane::cli`], asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "`diplo {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A fresh join token (`diplo join-token create <extra>`).
    pub fn join_token(&self, extra: &[&str]) -> String {
        let mut args = vec!["join-token", "create"];
        args.extend_from_slice(extra);
        let token = self.cli_ok(&args).trim().to_owned();
        assert!(token.starts_with("DIPLO1::"), "unexpected join token output: {token:?}");
        token
    }

    /// The nodes as `diplo nodes ls -o json` shows them; `Err` with the reason when
    /// the CLI fails (for use inside [`wait_until`]).
    pub fn try_nodes(&self) -> Result<Vec<serde_json::Value>, String> {
        let output = self.cli(&["nodes", "ls", "-o", "json"]);
        if !output.status.success() {
            return Err(format!("`diplo nodes ls` failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr)));
        }
        match serde_json::from_slice(&output.stdout) {
            Ok(serde_json::Value::Array(nodes)) => Ok(nodes),
            Ok(other) => Err(format!("`diplo nodes ls -o json` printed a non-array: {other}")),
            Err(e) => Err(format!("`diplo nodes ls -o json` printed invalid JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))),
        }
    }

    /// The nodes as `diplo nodes ls -o json` shows them (panics when the CLI fails).
    pub fn nodes(&self) -> Vec<serde_json::Value> {
        self.try_nodes().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Where [`ControlPlane::start_agent`] keeps the agent called `name`.
    pub fn agent_data_dir(&self, name: &str) -> PathBuf {
        self.dir.as_ref().expect("temporary directory").path().join("agents").join(name)
    }

    /// Starts an agent called `name` with its data in [`ControlPlane::agent_data_dir`].
    pub fn start_agent(&self, name: &str, token: Option<&str>) -> Agent {
        self.start_agent_with_env(name, token, &[])
    }

    /// [`ControlPlane::start_agent`] with extra environment variables.
    pub fn start_agent_with_env(&self, name: &str, token: Option<&str>, env: &[(&str, &str)]) -> Agent {
        let proxy = self.egress.proxy_env();
        let mut all: Vec<(&str, &str)> = proxy.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(env);
        Agent::start_with_env(&self.grpc_addr.to_string(), name, token, &self.agent_data_dir(name), &all)
    }

    /// Starts `diplo-hollow --count <count> --data-dir <data_dir> [--token <token>]`
    /// against this control plane: `count` simulated nodes (`hollow-00001`, ...) in one
    /// process, logging to `<data_dir>.stdout` / `.stderr` (appended, so a restarted
    /// process keeps the earlier logs).
    pub fn start_hollow(&self, count: u32, token: Option<&str>, data_dir: &Path) -> Process {
        if let Some(parent) = data_dir.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        let mut command = command_for(Binary::Hollow);
        command.envs(self.egress.proxy_env());
        command.arg("--server").arg(self.grpc_addr.to_string()).arg("--count").arg(count.to_string()).arg("--data-dir").arg(data_dir);
        if let Some(token) = token {
            command.arg("--token").arg(token);
        }
        Process::spawn("diplo-hollow", command, data_dir)
    }

    /// The hosts off this machine that the control plane or its agents tried to reach
    /// so far (see [`EgressRecorder`]), and forgets them: a test that reaches out on
    /// purpose asserts on them here instead of failing when the control plane drops.
    pub fn take_egress_hosts(&self) -> Vec<String> {
        self.egress.take_hosts()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("[harness] test failed; keeping {}", dir.keep().display());
        }
        if !std::thread::panicking() {
            let hosts = self.egress.take_hosts();
            assert!(
                hosts.is_empty(),
                "the control plane or an agent of this test tried to reach hosts off this machine: {hosts:?}; \
                 tests must be hermetic (use the local registry, 127.0.0.1:5000/diplo/busybox:latest)"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Agent

/// A `diplo-agent` process.
pub struct Agent {
    process: Process,
    name: String,
    data_dir: PathBuf,
}

impl Agent {
    /// Starts `diplo-agent --server <server> --name <name> --data-dir <data_dir>
    /// [--token <token>]`, logging to `<data_dir>.stdout` / `.stderr` (appended, so a
    /// restarted agent keeps the earlier logs).
    pub fn start(server: &str, name: &str, token: Option<&str>, data_dir: &Path) -> Agent {
        Self::start_with_env(server, name, token, data_dir, &[])
    }

    /// [`Agent::start`] with extra environment variables (e.g. fingerprint overrides).
    pub fn start_with_env(server: &str, name: &str, token: Option<&str>, data_dir: &Path, env: &[(&str, &str)]) -> Agent {
        if let Some(parent) = data_dir.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        let mut command = command_for(Binary::Agent);
        command.arg("--server").arg(server).arg("--name").arg(name).arg("--data-dir").arg(data_dir);
        if let Some(token) = token {
            command.arg("--token").arg(token);
        }
        command.envs(env.iter().copied());
        let process = Process::spawn(&format!("agent {name}"), command, data_dir);
        Agent { process, name: name.to_owned(), data_dir: data_dir.to_owned() }
    }

    /// Its node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process (to kill it, wait for it or read its logs).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Kills it with SIGKILL, as a crash or power loss would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The tails of its logs, for failure messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// A name no other test of this run (nor a recent run) uses:
/// `prefix-<pid>-<sequence><nanos>`, all hexadecimal. The process id tells apart the test
/// processes running at once, the sequence the calls within one process (tests sharing a
/// process under `cargo test`), the clock a recent run whose process had the same id.
pub fn unique_name(prefix: &str) -> String {
    static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{:x}-{sequence:x}{:04x}", std::process::id(), nanos % 0xffff)
}

/// The Docker containers (ids) of a deployment, running or not, found by Diplo's label.
pub fn docker_containers_of(deployment: &str) -> Vec<String> {
    try_docker_containers_of(deployment).unwrap_or_else(|e| panic!("{e}"))
}

/// [`docker_containers_of`], with `Err` instead of a panic when `docker ps` cannot run
/// or fails: for cleanup code.
pub fn try_docker_containers_of(deployment: &str) -> Result<Vec<String>, String> {
    let output = Command::new("docker")
        .args(["ps", "-a", "-q", "--no-trunc", "--filter", &format!("label=diplo.deployment={deployment}")])
        .output()
        .map_err(|e| format!("cannot run docker ps: {e}"))?;
    if !output.status.success() {
        return Err(format!("docker ps failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect())
}

/// Force-removes every container the control plane knows when dropped, so that a failing
/// test leaves nothing running behind (declare it after the control plane). Never panics.
pub struct RemoveAllContainersOnDrop<'a>(pub &'a ControlPlane);

impl Drop for RemoveAllContainersOnDrop<'_> {
    fn drop(&mut self) {
        let Some(token) = self.0.try_admin_token() else { return };
        let authorization = format!("Bearer {token}");
        // The largest page: the list is paged.
        let Ok(listed) = http_request("GET", &self.0.rest_url("/api/v1/containers?limit=1000"), Some(&authorization), None) else {
            return;
        };
        let Ok(serde_json::Value::Array(listed)) = serde_json::from_str::<serde_json::Value>(&listed.body) else { return };
        for container in listed {
            if let Some(id) = container["id"].as_str() {
                let url = self.0.rest_url(&format!("/api/v1/containers/{id}?force=true"));
                let _ = http_request("DELETE", &url, Some(&authorization), None);
            }
        }
    }
}

/// Deletes a deployment (REST) when dropped and waits up to 30 s for it to be gone — the
/// control plane forgets a deleted deployment only once its nodes report none of its
/// containers, on every runtime — and for its Docker containers to go; Docker containers
/// still there then are force-removed, also when the control plane is gone. Never panics
/// (a panic while the test unwinds would abort the whole test process). Declare it after
/// the control plane and the agents, so that it runs while they still do.
pub struct DeleteDeploymentOnDrop<'a>(pub &'a ControlPlane, pub String);

impl Drop for DeleteDeploymentOnDrop<'_> {
    fn drop(&mut self) {
        let url = self.0.rest_url(&format!("/api/v1/deployments/{}", self.1));
        let Some(authorization) = self.0.try_admin_token().map(|token| format!("Bearer {token}")) else {
            remove_docker_containers_of(&self.1);
            return;
        };
        let deleted = http_request("DELETE", &url, Some(&authorization), None).is_ok_and(|response| (200..300).contains(&response.status));
        if deleted {
            let deadline = Instant::now() + Duration::from_secs(30);
            let gone = || http_request("GET", &url, Some(&authorization), None).is_ok_and(|response| response.status == 404);
            while !gone() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(300));
            }
            while try_docker_containers_of(&self.1).is_ok_and(|ids| !ids.is_empty()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        remove_docker_containers_of(&self.1);
    }
}

/// Force-removes the Docker containers of a deployment (by Diplo's label) when dropped,
/// without asking any control plane: for the stretch of a test where a
/// [`DeleteDeploymentOnDrop`] cannot hold the control plane yet (while it is restarted).
/// Never panics.
pub struct RemoveDockerContainersOnDrop(pub String);

impl Drop for RemoveDockerContainersOnDrop {
    fn drop(&mut self) {
        remove_docker_containers_of(&self.0);
    }
}

/// `docker rm -f` of every container of `deployment`; failures are reported, not raised.
fn remove_docker_containers_of(deployment: &str) {
    match try_docker_containers_of(deployment) {
        Ok(ids) => {
            for id in ids {
                let _ = Command::new("docker").args(["rm", "-f", &id]).output();
            }
        }
        Err(error) => eprintln!("[harness] cleanup of deployment {deployment}: {error}"),
    }
}

/// This host's architecture in Go/OCI spelling, as agents report it.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// The node called `name` in a node list, if any.
pub fn find_node<'a>(nodes: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    nodes.iter().find(|node| node["name"] == name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_names_never_repeat_within_a_process() {
        let names: Vec<String> = (0..20_000).map(|_| super::unique_name("web")).collect();
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "repeated names among {} calls", names.len());
        assert!(names.iter().all(|n| n.starts_with(&format!("web-{:x}-", std::process::id()))), "{:?}", &names[..3]);
    }
}

pub mod git_repos;
pub mod private_registry;

// ---------------------------------------------------------------------------------
// PostgreSQL

/// Fresh PostgreSQL databases per test, on the server `DIPLO_TEST_DATABASE_URL` names.
pub mod postgres {
    use sqlx::{AssertSqlSafe, Connection, PgConnection};

    /// The variable naming the test server (e.g.
    /// `postgres://diplo:diplo@127.0.0.1:5432/diplo_test`).
    pub const ENV: &str = "DIPLO_TEST_DATABASE_URL";

    /// A database `diplo_conf_<random>` of its own, dropped by [`TestDatabase::drop_best_effort`].
    pub struct TestDatabase {
        base_url: String,
        name: String,
        /// The URL of the fresh database.
        pub url: String,
    }

    impl TestDatabase {
        /// Creates `diplo_conf_<random>`; `None` (after a loud notice) when no server is
        /// configured outside CI. On CI (`CI=true`) a missing server is a failure.
        pub async fn create() -> Option<TestDatabase> {
            let base_url = match std::env::var(ENV) {
                Ok(url) if !url.trim().is_empty() => url,
                _ => {
                    super::skip_or_fail(&format!(
                        "{ENV} is not set (e.g. postgres://diplo:diplo@127.0.0.1:5432/diplo_test): PostgreSQL tests are not run"
                    ));
                    return None;
                }
            };
            let name = format!("diplo_conf_{}", uuid::Uuid::new_v4().simple());
            let mut admin = PgConnection::connect(&base_url).await.unwrap_or_else(|e| panic!("cannot connect to {ENV}: {e}"));
            sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
            let _ = admin.close().await;
            let url = with_database(&base_url, &name);
            Some(TestDatabase { base_url, name, url })
        }

        /// Drops the database, ignoring failures.
        pub async fn drop_best_effort(self) {
            if let Ok(mut admin) = PgConnection::connect(&self.base_url).await {
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await {
                    eprintln!("could not drop test database {}: {e}", self.name);
                }
                let _ = admin.close().await;
            }
        }
    }

    /// The URL with its database path replaced, query string kept.
    fn with_database(url: &str, database: &str) -> String {
        let (main, query) = match url.split_once('?') {
            Some((main, query)) => (main, Some(query)),
            None => (url, None),
        };
        let authority_start = main.find("://").map_or(0, |i| i + 3);
        let base = match main[authority_start..].find('/') {
            Some(slash) => &main[..authority_start + slash],
            None => main,
        };
        match query {
            Some(query) => format!("{base}/{database}?{query}"),
            None => format!("{base}/{database}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Fake nodes

/// Nodes played by the test itself over real gRPC: they join with a join token, open a
/// session with the fingerprint the test chooses, keep it alive with heartbeats, and
/// answer the commands they receive as the test says (results, streamed output, build
/// reports).
pub mod fake_node {
    use std::time::Duration;

    use diplo_api::pb;
    use diplo_api::pb::agent_service_client::AgentServiceClient;
    use diplo_api::pb::cluster_service_client::ClusterServiceClient;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Status;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

    use super::ControlPlane;

    /// A TLS channel to the control plane's gRPC port presenting `identity` when given.
    pub async fn connect(control_plane: &ControlPlane, identity: Option<Identity>) -> Channel {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(control_plane.read_file("ca.pem"))).domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Endpoint::from_shared(format!("https://{}", control_plane.grpc_addr()))
            .expect("endpoint")
            .tls_config(tls)
            .expect("TLS config")
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect: {e:?}\n{}", control_plane.logs()))
    }

    /// The admin's certificate and key, as the control plane wrote them.
    pub fn admin_identity(control_plane: &ControlPlane) -> Identity {
        Identity::from_pem(control_plane.read_file("admin.pem"), control_plane.read_file("admin-key.pem"))
    }

    /// A fingerprint of a Linux node on `arch` with Docker available and `builders`.
    pub fn builder_fingerprint(arch: &str, builders: &[&str]) -> pb::NodeFingerprint {
        pb::NodeFingerprint {
            hostname: "fake".into(),
            os: "linux".into(),
            arch: arch.into(),
            cpus: 2,
            memory_bytes: 2 << 30,
            runtimes: vec![pb::RuntimeStatus {
                kind: pb::RuntimeKind::Docker as i32,
                available: true,
                version: "27.0".into(),
                endpoint: "/var/run/docker.sock".into(),
                ..Default::default()
            }],
            builders: builders.iter().map(|b| (*b).to_owned()).collect(),
            build_dir: if builders.is_empty() { String::new() } else { "/var/lib/diplo/builds".into() },
            ..Default::default()
        }
    }

    /// A node joined through the `Join` RPC (its key stays here).
    pub struct FakeNode {
        /// Node id the control plane gave it.
        pub id: String,
        /// Its name.
        pub name: String,
        cert_pem: String,
        key_pem: String,
    }

    impl FakeNode {
        /// Joins as `name` with a fresh join token made by the admin.
        pub async fn join(control_plane: &ControlPlane, name: &str) -> FakeNode {
            let admin = connect(control_plane, Some(admin_identity(control_plane))).await;
            let token = ClusterServiceClient::new(admin)
                .create_join_token(pb::CreateJoinTokenRequest::default())
                .await
                .expect("CreateJoinToken as admin")
                .into_inner()
                .token;
            let (key_pem, csr_pem) = diplo_api::pki::generate_csr(name).expect("CSR");
            let request = pb::JoinRequest { token, node_name: name.to_owned(), csr_pem, ..Default::default() };
            let response = AgentServiceClient::new(connect(control_plane, None).await)
                .join(request)
                .await
                .unwrap_or_else(|s| panic!("join {name}: {s:?}\n{}", control_plane.logs()))
                .into_inner();
            FakeNode { id: response.node_id, name: name.to_owned(), cert_pem: response.certificate_pem, key_pem }
        }

        /// Its node certificate and key.
        pub fn identity(&self) -> Identity {
            Identity::from_pem(&self.cert_pem, &self.key_pem)
        }

        /// Opens a session with `fingerprint`; heartbeats every 500 ms keep it ready.
        pub async fn open_session(&self, control_plane: &ControlPlane, fingerprint: pb::NodeFingerprint) -> FakeSession {
            let channel = connect(control_plane, Some(self.identity())).await;
            let (upstream, rx) = mpsc::channel(16);
            let hello = pb::Hello { fingerprint: Some(fingerprint), containers: Vec::new() };
            upstream.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) }).await.expect("queue hello");
            let mut downstream = AgentServiceClient::new(channel.clone())
                .session(ReceiverStream::new(rx))
                .await
                .unwrap_or_else(|s| panic!("session of {}: {s:?}\n{}", self.name, control_plane.logs()))
                .into_inner();
            let (commands_tx, commands) = mpsc::channel(64);
            let (end_tx, end) = tokio::sync::oneshot::channel();
            let reader = tokio::spawn(async move {
                let ended = loop {
                    match downstream.message().await {
                        Ok(Some(pb::ControlMessage { body: Some(pb::control_message::Body::Command(command)) })) => {
                            let _ = commands_tx.send(command).await;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break Ok(()),
                        Err(status) => break Err(status),
                    }
                };
                let _ = end_tx.send(ended);
            });
            let beats = upstream.clone();
            let heartbeats = tokio::spawn(async move {
                for sequence in 1.. {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let beat = pb::Heartbeat { sequence, full: true, ..Default::default() };
                    if beats.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Heartbeat(beat)) }).await.is_err() {
                        break;
                    }
                }
            });
            FakeSession { channel, upstream: Some(upstream), commands, end: Some(end), tasks: vec![reader, heartbeats] }
        }
    }

    /// An open session of a [`FakeNode`]. Dropping it closes the session.
    pub struct FakeSession {
        channel: Channel,
        upstream: Option<mpsc::Sender<pb::AgentMessage>>,
        commands: mpsc::Receiver<pb::Command>,
        end: Option<tokio::sync::oneshot::Receiver<Result<(), Status>>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for FakeSession {
        fn drop(&mut self) {
            for task in &self.tasks {
                task.abort();
            }
        }
    }

    impl FakeSession {
        /// The next command the control plane sends, within `limit`.
        pub async fn next_command(&mut self, limit: Duration) -> pb::Command {
            tokio::time::timeout(limit, self.commands.recv())
                .await
                .unwrap_or_else(|_| panic!("no command within {limit:?}"))
                .expect("the session ended before a command came")
        }

        /// Whether a command comes within `limit` (and which).
        pub async fn try_next_command(&mut self, limit: Duration) -> Option<pb::Command> {
            tokio::time::timeout(limit, self.commands.recv()).await.ok().flatten()
        }

        /// Sends a message on the session.
        pub async fn send(&self, body: pb::agent_message::Body) {
            let upstream = self.upstream.as_ref().expect("session open");
            upstream.send(pb::AgentMessage { body: Some(body) }).await.expect("session open");
        }

        /// Answers a command: success, or failure with `error_code` and message.
        pub async fn answer(&self, request_id: &str, error: Option<(&str, &str)>) {
            let result = pb::CommandResult {
                request_id: request_id.to_owned(),
                ok: error.is_none(),
                error_code: error.map(|(code, _)| code.to_owned()).unwrap_or_default(),
                error_message: error.map(|(_, message)| message.to_owned()).unwrap_or_default(),
                ..Default::default()
            };
            self.send(pb::agent_message::Body::Result(result)).await;
        }

        /// Streams `chunks` of stdout for a command, then its end, over `StreamOutput`.
        pub async fn stream_output(&self, request_id: &str, chunks: &[&[u8]]) {
            let mut messages: Vec<pb::OutputChunk> = chunks
                .iter()
                .map(|data| pb::OutputChunk { request_id: request_id.to_owned(), stream: "stdout".into(), data: data.to_vec(), eof: false })
                .collect();
            messages.push(pb::OutputChunk { request_id: request_id.to_owned(), eof: true, ..Default::default() });
            AgentServiceClient::new(self.channel.clone()).stream_output(tokio_stream::iter(messages)).await.expect("StreamOutput");
        }

        /// Streams output for a command over `StreamOutput` as the returned sender is fed,
        /// until it is dropped (which sends the end).
        pub fn open_output(&self, request_id: &str) -> mpsc::Sender<Vec<u8>> {
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
            let (chunks_tx, chunks_rx) = mpsc::channel(16);
            let request_id = request_id.to_owned();
            tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    let chunk = pb::OutputChunk { request_id: request_id.clone(), stream: "stdout".into(), data, eof: false };
                    if chunks_tx.send(chunk).await.is_err() {
                        return;
                    }
                }
                let _ = chunks_tx.send(pb::OutputChunk { request_id, eof: true, ..Default::default() }).await;
            });
            let channel = self.channel.clone();
            tokio::spawn(async move {
                let _ = AgentServiceClient::new(channel).stream_output(ReceiverStream::new(chunks_rx)).await;
            });
            tx
        }

        /// Sends a build report.
        pub async fn report(&self, report: pb::BuildReport) {
            self.send(pb::agent_message::Body::BuildReport(report)).await;
        }

        /// Closes the session from the node's side.
        pub fn close(&mut self) {
            self.upstream = None;
            for task in &self.tasks {
                task.abort();
            }
        }

        /// How the session ended within `limit` (`Err(status)` when refused); panics when
        /// it is still open.
        pub async fn ended(&mut self, limit: Duration) -> Result<(), Status> {
            let end = self.end.take().expect("ended asked once");
            match tokio::time::timeout(limit, end).await {
                Ok(Ok(ended)) => ended,
                Ok(Err(_)) => Ok(()),
                Err(_) => panic!("the session is still open {limit:?} later"),
            }
        }
    }
}

/// A tar of `members` (name, content; a name ending in `/` is a directory, content
/// `-> target` a symbolic link), names written raw as a hostile client would.
pub fn tar_of(members: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in members {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        let data: &[u8] = if let Some(target) = content.strip_prefix("-> ") {
            header.set_entry_type(tar::EntryType::Symlink);
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
            b""
        } else if name.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            b""
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            content.as_bytes()
        };
        header.set_mode(if name.ends_with('/') { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).expect("append");
    }
    builder.into_inner().expect("tar")
}
