//! The LXC driver against the real LXC of this host: `lxc-*` tools, the `lxcbr0` bridge
//! of `lxc-net`, skopeo, and the plain-HTTP registry on 127.0.0.1:5000 holding
//! `diplo/busybox:latest` (see `scripts/setup-host`).
//!
//! Without LXC (or the registry) every test skips with a loud message; under `CI=true`
//! that is a failure instead. Containers are named `diplo-lxc-<random>-<case>`; a guard
//! kills and destroys them at the end of each test, also when it panics.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diplo_agent::port_publisher::PortPublisher;
use diplo_agent::runtime::lxc::{self, LxcRuntime};
use diplo_agent::runtime::{ContainerRuntime, RegistryConfig, RuntimeError};
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStatus, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_NODE, LogOptions, Mount, OutputStream,
    PortMapping, Protocol, RuntimeEventKind,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const LXC_PATH: &str = "/var/lib/lxc";

/// Exits 0 on SIGTERM.
const POLITE: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
/// Ignores SIGTERM.
const STUBBORN: &str = "trap 'echo ignoring TERM' TERM; while true; do sleep 0.1; done";

fn skip(why: &str) -> Option<Env> {
    diplo_tests::skip_or_fail(&format!("the LXC driver test is not run: {why}"));
    None
}

/// Everything a test needs, or `None` (after a loud message) when LXC is not usable.
async fn env() -> Option<Env> {
    let report = lxc::probe(Duration::from_secs(10)).await;
    if !report.available {
        return skip(&format!("LXC is unavailable: {}", report.error));
    }
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:5000".parse().expect("addr"), Duration::from_secs(2)).is_err() {
        return skip("no registry on 127.0.0.1:5000 (run scripts/setup-host)");
    }
    let cache = tempfile::tempdir().expect("tempdir");
    let publisher = Arc::new(PortPublisher::new());
    let runtime = LxcRuntime::new(PathBuf::from(LXC_PATH), cache.path().to_path_buf(), RegistryConfig::default(), Arc::clone(&publisher));
    let prefix = format!("diplo-lxc-{:08x}", rand::random::<u32>());
    Some(Env { runtime: Arc::new(runtime), publisher, prefix, guard: Guard::default(), _cache: cache })
}

struct Env {
    runtime: Arc<LxcRuntime>,
    publisher: Arc<PortPublisher>,
    prefix: String,
    guard: Guard,
    _cache: tempfile::TempDir,
}

impl Env {
    fn rt(&self) -> &dyn ContainerRuntime {
        self.runtime.as_ref()
    }

    fn name(&self, case: &str) -> String {
        let name = format!("{}-{case}", self.prefix);
        self.guard.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(name.clone());
        name
    }

    fn spec(&self, case: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            name: self.name(case),
            image: IMAGE.to_owned(),
            command: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
            ..ContainerSpec::default()
        }
    }

    async fn run(&self, spec: &ContainerSpec) -> String {
        let id = self.rt().create(spec).await.unwrap_or_else(|e| panic!("create {}: {e}", spec.name));
        self.rt().start(&id).await.unwrap_or_else(|e| panic!("start {}: {e}", spec.name));
        id
    }

    async fn wait_for(&self, id: &str, within: Duration, what: &str, done: impl Fn(&ContainerInfo) -> bool) -> ContainerInfo {
        let deadline = Instant::now() + within;
        loop {
            let info = self.rt().inspect(id).await.unwrap_or_else(|e| panic!("inspect {id}: {e}"));
            if done(&info) {
                return info;
            }
            assert!(Instant::now() < deadline, "{id} not {what} within {within:?}: {info:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn exec(&self, id: &str, script: &str) -> (i64, String, String) {
        let argv = ["sh", "-c", script].map(str::to_owned);
        let output = self.rt().exec(id, &argv).await.unwrap_or_else(|e| panic!("exec {script:?} in {id}: {e}"));
        (output.exit_code, String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
    }

    async fn logs(&self, id: &str, options: LogOptions) -> (String, String) {
        let mut stream = self.rt().logs(id, options).await.unwrap_or_else(|e| panic!("logs {id}: {e}"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let done = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.expect("log chunk");
                match chunk.stream {
                    OutputStream::Stdout => out.extend(chunk.data),
                    OutputStream::Stderr => err.extend(chunk.data),
                }
            }
        })
        .await;
        assert!(done.is_ok(), "logs of {id} did not end");
        (String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
    }
}

/// Kills and destroys the test's containers with the LXC tools when dropped.
#[derive(Default)]
struct Guard(Mutex<Vec<String>>);

impl Drop for Guard {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for name in names {
            let dir = Path::new(LXC_PATH).join(&name);
            if !dir.exists() {
                continue;
            }
            eprintln!("cleanup: destroying left-over container {name}");
            let _ = Command::new("lxc-stop").args(["-n", &name, "-P", LXC_PATH, "-k"]).output();
            let _ = Command::new("lxc-destroy").args(["-n", &name, "-P", LXC_PATH, "-f"]).output();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0").expect("bind").local_addr().expect("addr").port()
}

async fn http_get(port: u16) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

async fn info_started(env: &Env, id: &str) -> String {
    env.rt().inspect(id).await.expect("inspect").started_at.expect("started_at")
}

/// Asserts that RFC 3339 time `later` is no earlier than `earlier` (less a second of
/// rounding) and at most `within` after it. Compares instants, not calendar dates: a
/// test running across midnight passes.
fn assert_close_after(later: &str, earlier: &str, within: Duration) {
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap_or_else(|e| panic!("{t:?} is not RFC 3339: {e}"));
    let gap = parse(later) - parse(earlier);
    let within = chrono::Duration::from_std(within).expect("a small duration");
    assert!(gap >= -chrono::Duration::seconds(1) && gap <= within, "{later} is not within {within} after {earlier} (gap {gap})");
}

#[test]
fn time_comparisons_survive_midnight() {
    // A container started just before midnight logs its first line just after it: the
    // calendar dates differ, the instants are 300 ms apart.
    assert_ne!("2026-12-02T00:00:00.200000000Z"[..10], "2026-12-01T23:59:59.900Z"[..10]);
    assert_close_after("2026-12-02T00:00:00.200000000Z", "2026-12-01T23:59:59.900Z", Duration::from_secs(30));
    assert_close_after("2026-12-01T10:00:00Z", "2026-12-01T10:00:00.500Z", Duration::from_secs(30));
    for (later, earlier) in [("2026-12-01T10:01:00Z", "2026-12-01T10:00:00Z"), ("2026-12-01T09:59:58Z", "2026-12-01T10:00:00Z")] {
        assert!(std::panic::catch_unwind(|| assert_close_after(later, earlier, Duration::from_secs(30))).is_err(), "{later} vs {earlier}");
    }
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, RuntimeError>, what: &str) {
    match result {
        Err(RuntimeError::NotFound { what: w, .. }) => assert_eq!(w, what),
        other => panic!("expected NotFound {what}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http_on_a_published_port_then_leaves_nothing() {
    let Some(env) = env().await else { return };
    let version = env.rt().version().await.expect("version");
    assert!(version.starts_with(|c: char| c.is_ascii_digit()), "{version}");
    env.rt().ensure_image(IMAGE).await.expect("pull");
    assert!(env.runtime.image_layout(IMAGE).join("index.json").is_file());

    let port = free_port();
    let mut spec = env.spec(
        "httpd",
        "echo serving-now; echo on-stderr >&2; mkdir -p /www && echo hello-diplo > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    spec.ports = vec![PortMapping { host_port: port, container_port: 8080, protocol: Protocol::Tcp }];
    spec.labels = BTreeMap::from([("team".to_owned(), "infra".to_owned())]);
    let id = env.run(&spec).await;
    assert_eq!(id, spec.name);

    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        match http_get(port).await {
            Ok(response) if response.contains("hello-diplo") => break response,
            other => {
                assert!(Instant::now() < deadline, "no answer on port {port}: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");

    let info = env.rt().inspect(&id).await.expect("inspect");
    assert_eq!(info.status, ContainerStatus::Running);
    assert_eq!(info.image, IMAGE);
    assert!(info.pid.is_some_and(|p| p > 1), "{info:?}");
    let ip = info.ip_address.clone().expect("an address");
    assert!(ip.starts_with("10.0.3."), "{ip}");
    assert_eq!(info.ports, spec.ports);
    assert_eq!(info.labels.get("team").map(String::as_str), Some("infra"));
    assert_eq!(info.labels.get(LABEL_INSTANCE), Some(&spec.name));
    assert_eq!(info.labels.get(LABEL_DEPLOYMENT).map(String::as_str), Some("direct"));
    assert!(info.started_at.is_some());
    assert!(env.rt().list().await.expect("list").iter().any(|c| c.id == id));

    let (out, err) = env.logs(&id, LogOptions::default()).await;
    assert_eq!(out, "serving-now\n");
    assert_eq!(err, "on-stderr\n");

    let (code, out, err) = env.exec(&id, "echo out; echo err >&2; exit 3").await;
    assert_eq!((code, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    // PID 1 is the image's httpd, not the shim's busybox applet.
    let (code, out, _) = env.exec(&id, "readlink /proc/1/exe; cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert_eq!(code, 0);
    assert!(out.starts_with("/bin/busybox\n") && out.contains("httpd -f -p 8080"), "{out}");

    let stats = env.rt().stats(&id).await.expect("stats");
    assert!(stats.memory_bytes > 0, "{stats:?}");
    assert!(stats.network_rx_bytes > 0, "{stats:?}");
    assert!(stats.cpu_percent.is_finite() && stats.cpu_percent >= 0.0, "{stats:?}");

    // Not without force while running.
    assert!(matches!(env.rt().remove(&id, false).await, Err(RuntimeError::Conflict(_))));
    env.rt().remove(&id, true).await.expect("remove");
    assert!(!Path::new(LXC_PATH).join(&spec.name).exists(), "the container directory is still there");
    assert!(env.publisher.published(&id).is_empty());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "port {port} still open");
    assert_not_found(env.rt().inspect(&id).await, "container");
    assert_not_found(env.rt().remove(&id, true).await, "container");
    assert!(!env.rt().list().await.expect("list").iter().any(|c| c.id == id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_honours_the_grace_period() {
    let Some(env) = env().await else { return };
    let polite = env.run(&env.spec("polite", POLITE)).await;
    let stubborn = env.run(&env.spec("stubborn", STUBBORN)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let at = Instant::now();
    env.rt().stop(&polite, Duration::from_secs(10)).await.expect("stop polite");
    let took = at.elapsed();
    assert!(took < Duration::from_secs(3), "a cooperative container took {took:?}");
    let info = env.rt().inspect(&polite).await.expect("inspect");
    assert_eq!((info.status, info.exit_code), (ContainerStatus::Exited, 0), "{info:?}");

    let at = Instant::now();
    env.rt().stop(&stubborn, Duration::from_secs(2)).await.expect("stop stubborn");
    let took = at.elapsed();
    assert!(took >= Duration::from_secs(2), "killed before the grace period: {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let info = env.rt().inspect(&stubborn).await.expect("inspect");
    assert_eq!((info.status, info.exit_code), (ContainerStatus::Exited, 137), "{info:?}");
    let (out, _) = env.logs(&stubborn, LogOptions::default()).await;
    assert!(out.contains("ignoring TERM"), "{out:?}");

    // Stopping again is fine; restart runs it again.
    env.rt().stop(&polite, Duration::from_secs(1)).await.expect("stop again");
    env.rt().restart(&polite, Duration::from_secs(1)).await.expect("restart");
    let info = env.wait_for(&polite, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;
    assert_eq!(info.exit_code, 0);
    for id in [&polite, &stubborn] {
        env.rt().remove(id, true).await.expect("remove");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_runs_report_exit_codes_events_and_logs() {
    let Some(env) = env().await else { return };
    let mut events = env.rt().events().await.expect("events");
    // stderr well ahead: the two streams are copied separately.
    let spec = env.spec("short", "echo marker-err >&2; sleep 0.3; echo first-line; echo last-line; sleep 0.3; exit 4");
    let id = env.rt().create(&spec).await.expect("create");
    assert_eq!(env.rt().inspect(&id).await.expect("inspect").status, ContainerStatus::Created);
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.rt().start(&id).await.expect("start");
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            // Other changes (created, paused) come as `Changed`: the lifecycle is what counts here.
            if event.container_id == id && event.kind != RuntimeEventKind::Changed {
                seen.push(event.kind);
                if event.kind == RuntimeEventKind::Die {
                    return;
                }
            }
        }
    })
    .await;
    assert!(got.is_ok(), "no die event; saw {seen:?}");
    assert_eq!(seen, [RuntimeEventKind::Start, RuntimeEventKind::Die]);
    let info = env.rt().inspect(&id).await.expect("inspect");
    assert_eq!((info.status, info.exit_code, info.pid), (ContainerStatus::Exited, 4, None));

    let (out, err) = env.logs(&id, LogOptions::default()).await;
    assert_eq!((out.as_str(), err.as_str()), ("first-line\nlast-line\n", "marker-err\n"));
    let (out, err) = env.logs(&id, LogOptions { tail: Some(1), ..LogOptions::default() }).await;
    assert_eq!((out.as_str(), err.as_str()), ("last-line\n", ""), "tail 1");
    let (out, err) = env.logs(&id, LogOptions { tail: Some(3), ..LogOptions::default() }).await;
    assert_eq!((out.as_str(), err.as_str()), ("first-line\nlast-line\n", "marker-err\n"), "tail 3");
    let (out, _) = env.logs(&id, LogOptions { timestamps: true, ..LogOptions::default() }).await;
    let stamped: Vec<&str> = out.lines().collect();
    assert_eq!(stamped.len(), 2, "{out:?}");
    assert!(stamped[0].starts_with("20") && stamped[0].ends_with("Z first-line"), "{out:?}");
    let started = info_started(&env, &id).await;
    let logged = stamped[0].strip_suffix(" first-line").expect("a timestamp before the line");
    assert_close_after(logged, &started, Duration::from_secs(30));

    // Exec needs a running container.
    assert!(matches!(env.rt().exec(&id, &["true".to_owned()]).await, Err(RuntimeError::Conflict(_))));
    env.rt().remove(&id, false).await.expect("remove an exited container without force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_new_output() {
    let Some(env) = env().await else { return };
    let id = env.run(&env.spec("follow", "i=0; while [ $i -lt 8 ]; do echo tick-$i; i=$((i+1)); sleep 0.2; done")).await;
    let mut stream = env.rt().logs(&id, LogOptions { follow: true, ..LogOptions::default() }).await.expect("follow");
    let mut seen = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").data));
        }
    })
    .await;
    assert!(ended.is_ok(), "follow did not end with the container: {seen:?}");
    let expected: String = (0..8).map(|i| format!("tick-{i}\n")).collect();
    assert_eq!(seen, expected);
    env.rt().remove(&id, true).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_image_is_not_found() {
    let Some(env) = env().await else { return };
    let missing = format!("127.0.0.1:5000/diplo/no-such-image-{}:latest", env.prefix);
    match env.rt().ensure_image(&missing).await {
        Err(RuntimeError::NotFound { what: "image", name }) => assert_eq!(name, missing),
        other => panic!("expected NotFound image, got {other:?}"),
    }
    let spec = ContainerSpec { image: missing, ..env.spec("noimage", "true") };
    assert_not_found(env.rt().create(&spec).await, "image");
    assert!(!Path::new(LXC_PATH).join(&spec.name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_in_use_is_a_conflict_and_leaves_nothing() {
    let Some(env) = env().await else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut spec = env.spec("busyport", POLITE);
    spec.ports = vec![PortMapping { host_port: port, container_port: 80, protocol: Protocol::Tcp }];
    match env.rt().create(&spec).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains(&port.to_string()), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(!Path::new(LXC_PATH).join(&spec.name).exists(), "left behind");
    assert_not_found(env.rt().inspect(&spec.name).await, "container");

    // A port another Diplo container was created with is taken too, even before it runs.
    drop(listener);
    let port = free_port();
    let mut first = env.spec("firstport", POLITE);
    first.ports = vec![PortMapping { host_port: port, container_port: 80, protocol: Protocol::Tcp }];
    let first_id = env.rt().create(&first).await.expect("create");
    let mut second = env.spec("secondport", POLITE);
    second.ports = first.ports.clone();
    assert!(matches!(env.rt().create(&second).await, Err(RuntimeError::Conflict(m)) if m.contains(&port.to_string())));
    assert!(!Path::new(LXC_PATH).join(&second.name).exists());
    // And a taken name is a conflict that leaves the first one alone.
    match env.rt().create(&first).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains(&first.name), "{message}"),
        other => panic!("expected a name conflict, got {other:?}"),
    }
    assert_eq!(env.rt().inspect(&first_id).await.expect("inspect").status, ContainerStatus::Created);
    env.rt().remove(&first_id, false).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_invalid() {
    let Some(env) = env().await else { return };
    for bad in ["bad name!", "", "-x", "a/b", "../etc"] {
        let spec = ContainerSpec { name: bad.to_owned(), ..env.spec("unused", "true") };
        match env.rt().create(&spec).await {
            Err(RuntimeError::InvalidArgument { field: "name", .. }) => {}
            other => panic!("expected InvalidArgument name for {bad:?}, got {other:?}"),
        }
    }
    assert_not_found(env.rt().inspect("../etc").await, "container");
    assert!(matches!(env.rt().exec(&format!("{}-ghost", env.prefix), &[]).await, Err(RuntimeError::InvalidArgument { field: "argv", .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_limits_and_mounts_apply() {
    let Some(env) = env().await else { return };
    let host = tempfile::tempdir().expect("tempdir");
    std::fs::write(host.path().join("f"), "from-the-host\n").expect("write");
    let mut spec = env.spec("hardened", POLITE);
    spec.read_only = true;
    spec.tmpfs = vec!["/scratch".to_owned()];
    spec.env = BTreeMap::from([("GREETING".to_owned(), "hello world".to_owned())]);
    spec.cap_drop = vec!["ALL".to_owned()];
    spec.no_new_privileges = true;
    spec.memory_bytes = Some(64 << 20);
    spec.cpu_millis = Some(500);
    spec.mounts = vec![Mount { source: host.path().display().to_string(), target: "/data".to_owned(), read_only: true }];
    let id = env.run(&spec).await;

    let (code, out, err) = env
        .exec(&id, "echo \"$GREETING\"; touch /x 2>/dev/null && echo rootfs-writable; touch /scratch/y && echo tmpfs-ok; cat /data/f; touch /data/g 2>/dev/null && echo bind-writable; grep -E '^(CapEff|NoNewPrivs)' /proc/1/status")
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "hello world\ntmpfs-ok\nfrom-the-host\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n");
    let stats = env.rt().stats(&id).await.expect("stats");
    assert_eq!(stats.memory_limit_bytes, 64 << 20, "{stats:?}");
    env.rt().remove(&id, true).await.expect("remove");
    assert!(host.path().join("f").exists(), "the bind source survives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_a_root_filesystem_tarball() {
    let Some(env) = env().await else { return };
    if !Path::new("/bin/busybox").exists() {
        diplo_tests::skip_or_fail("importing a root filesystem tarball needs /bin/busybox");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy");
    let archive = dir.path().join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&archive).arg(".").status().expect("tar").success());
    let reference = format!("diplo-lxc/rootfs-{}:v1", env.prefix);
    env.rt().import_image(&archive, &reference).await.expect("import");
    let spec = ContainerSpec {
        image: reference,
        command: ["/bin/busybox", "echo", "imported-ok"].map(str::to_owned).to_vec(),
        ..env.spec("imported", "")
    };
    let id = env.run(&spec).await;
    let info = env.wait_for(&id, Duration::from_secs(10), "exited", |c| c.status == ContainerStatus::Exited).await;
    assert_eq!(info.exit_code, 0);
    assert_eq!(env.logs(&id, LogOptions::default()).await.0, "imported-ok\n");
    env.rt().remove(&id, false).await.expect("remove");
    match env.rt().import_image(&dir.path().join("missing.tar"), "x/y:z").await {
        Err(RuntimeError::InvalidArgument { field: "archive", .. }) => {}
        other => panic!("expected InvalidArgument archive, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_resumes_running_containers() {
    let Some(env) = env().await else { return };
    // This test's agent and a neighbour agent sharing the LXC path (as other tests of this
    // run do): the new driver must take over exactly this node's containers.
    let own_node = format!("{}-node", env.prefix);
    let port = free_port();
    let mut spec = env.spec(
        "resume",
        "mkdir -p /www && echo resumed > /www/index.html && httpd -p 8080 -h /www && i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.1; done",
    );
    spec.ports = vec![PortMapping { host_port: port, container_port: 8080, protocol: Protocol::Tcp }];
    spec.labels = BTreeMap::from([(LABEL_NODE.to_owned(), own_node.clone())]);
    let id = env.run(&spec).await;
    let neighbour_port = free_port();
    let mut neighbour = env.spec("neighbour", "mkdir -p /www && echo neighbour > /www/index.html && exec httpd -f -p 8080 -h /www");
    neighbour.ports = vec![PortMapping { host_port: neighbour_port, container_port: 8080, protocol: Protocol::Tcp }];
    neighbour.labels = BTreeMap::from([(LABEL_NODE.to_owned(), format!("{}-other-node", env.prefix))]);
    let neighbour_id = env.run(&neighbour).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = env.logs(&id, LogOptions::default()).await;
    assert!(before.contains("tick-1\n"), "{before:?}");

    // The agent goes away: its publisher and output pumps with it.
    let Env { runtime, publisher, prefix, guard, _cache: cache } = env;
    drop(runtime);
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in [port, neighbour_port] {
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", p)).await.is_err(), "port {p} still published");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let publisher = Arc::new(PortPublisher::new());
    let runtime = LxcRuntime::new(PathBuf::from(LXC_PATH), cache.path().to_path_buf(), RegistryConfig::default(), Arc::clone(&publisher));
    let env = Env { runtime: Arc::new(runtime), publisher, prefix, guard, _cache: cache };
    let resumed = env.runtime.resume_running(Some(&own_node)).await.expect("resume");
    assert_eq!(resumed, 1, "the driver of {own_node} took over {resumed} containers, only its own 1 expected");
    assert_eq!(env.rt().inspect(&id).await.expect("inspect").status, ContainerStatus::Running);
    // The neighbour's container keeps running, but its port is not this driver's to publish.
    assert_eq!(env.rt().inspect(&neighbour_id).await.expect("inspect").status, ContainerStatus::Running);
    assert!(env.publisher.published(&neighbour_id).is_empty(), "the neighbour's port was taken over");
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", neighbour_port)).await.is_err(), "port {neighbour_port} published");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(port).await {
            Ok(response) if response.contains("resumed") => break,
            other => {
                assert!(Instant::now() < deadline, "no answer on port {port} after resume: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (after, _) = env.logs(&id, LogOptions::default()).await;
    assert!(after.starts_with(&before), "output was lost or reordered");
    // Nothing written while no agent read was lost: the ticks are consecutive.
    let ticks: Vec<u64> = after.lines().filter_map(|l| l.strip_prefix("tick-")?.parse().ok()).collect();
    assert!(ticks.len() > 10, "{after:?}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    env.rt().remove(&id, true).await.expect("remove");
    env.rt().remove(&neighbour_id, true).await.expect("remove the neighbour");
}

mod hostile_image;

use hostile_image::HostFile;

/// Imports `root` as a unique image: a bare root filesystem tarball, or with `config` an
/// OCI archive whose image config is `config`.
async fn import_hostile(env: &Env, dir: &Path, root: &Path, config: Option<serde_json::Value>) -> String {
    let tag = format!("{:08x}", rand::random::<u32>());
    let reference = format!("diplo-lxc/hostile-{}-{tag}:v1", env.prefix);
    let archive = dir.join(format!("image-{tag}.tar"));
    match config {
        Some(config) => hostile_image::oci_archive(root, config, &archive),
        None => hostile_image::tar(root, &archive),
    }
    env.rt().import_image(&archive, &reference).await.unwrap_or_else(|e| panic!("import {reference}: {e}"));
    reference
}

/// Expects `create` to be refused with InvalidArgument `field`, naming `named`, leaving
/// nothing behind and having run nothing on the host. A container created anyway is
/// started (as a deployment would), to show what the image did.
async fn assert_refused(env: &Env, spec: &ContainerSpec, field: &str, named: &str, marker: &HostFile) {
    let outcome = tokio::time::timeout(Duration::from_secs(120), env.rt().create(spec)).await.expect("create did not finish in 120 s");
    if let Ok(id) = &outcome {
        let config = std::fs::read_to_string(Path::new(LXC_PATH).join(id).join("config")).unwrap_or_default();
        let _ = env.rt().start(id).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!marker.0.exists(), "the image ran a command on the host ({} exists); config:\n{config}", marker.path());
        assert!(!config.lines().any(|l| l.trim_start().starts_with("lxc.hook")), "the image added a config line:\n{config}");
    }
    match outcome {
        Err(RuntimeError::InvalidArgument { field: f, message }) => {
            assert_eq!(f, field, "{message}");
            assert!(message.contains(named), "{named:?} not named in {message:?}");
        }
        other => panic!("expected InvalidArgument {field} for {}, got {other:?}", spec.name),
    }
    assert!(!marker.0.exists(), "{} exists", marker.path());
    assert!(!Path::new(LXC_PATH).join(&spec.name).exists(), "{} left behind", spec.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_symlinks_cannot_add_config_lines() {
    let Some(env) = env().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(root) = hostile_image::busybox_root(dir.path()) else { return };
    let marker = HostFile::new("pwned");
    // Resolved in the rootfs, the mount target becomes `x` + a line of its own; `;:`
    // ends the hook's command before the words LXC appends to it.
    let payload = format!("x\nlxc.hook.pre-start = /bin/touch {} ;:", marker.path());
    std::os::unix::fs::symlink(&payload, root.join("data")).expect("symlink");
    std::os::unix::fs::symlink(&payload, root.join("bound")).expect("symlink");
    let reference = import_hostile(&env, dir.path(), &root, None).await;
    let host = tempfile::tempdir().expect("tempdir");

    let base = |case: &str| ContainerSpec { image: reference.clone(), ..env.spec(case, POLITE) };
    let spec = ContainerSpec { tmpfs: vec!["/data".to_owned()], ..base("tmpfs-inject") };
    assert_refused(&env, &spec, "tmpfs", "/data", &marker).await;
    let bind = Mount { source: host.path().display().to_string(), target: "/bound".to_owned(), read_only: true };
    let spec = ContainerSpec { mounts: vec![bind], ..base("bind-inject") };
    assert_refused(&env, &spec, "mounts", "/bound", &marker).await;
    // Without the hostile targets the image runs.
    let id = env.run(&ContainerSpec { tmpfs: vec!["/scratch".to_owned()], ..base("plain") }).await;
    let (code, out, _) = env.exec(&id, "touch /scratch/x && echo ok").await;
    assert_eq!((code, out.as_str()), (0, "ok\n"));
    env.rt().remove(&id, true).await.expect("remove");
    assert!(!marker.0.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_content_never_reaches_the_host() {
    let Some(env) = env().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(root) = hostile_image::busybox_root(dir.path()) else { return };
    let marker = HostFile::new("pwned-cwd");

    // /etc/hosts and /etc/hostname pointing at files of the host: written inside the rootfs.
    let (hosts_victim, hostname_victim) = (HostFile::new("victim-hosts"), HostFile::new("victim-hostname"));
    for victim in [&hosts_victim, &hostname_victim] {
        std::fs::write(&victim.0, "untouched\n").expect("write victim");
    }
    std::os::unix::fs::symlink(hosts_victim.path(), root.join("etc/hosts")).expect("symlink");
    std::os::unix::fs::symlink(hostname_victim.path(), root.join("etc/hostname")).expect("symlink");
    let reference = import_hostile(&env, dir.path(), &root, None).await;
    let spec = ContainerSpec { image: reference, ..env.spec("etc-links", POLITE) };
    let id = env.run(&spec).await;
    for victim in [&hosts_victim, &hostname_victim] {
        assert_eq!(std::fs::read_to_string(&victim.0).expect("read victim"), "untouched\n", "{} was written", victim.path());
    }
    let (code, out, _) = env.exec(&id, "cat /etc/hosts /etc/hostname").await;
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.1") && out.contains(&spec.name), "{out}");
    env.rt().remove(&id, true).await.expect("remove");
    std::fs::remove_file(root.join("etc/hosts")).expect("rm");
    std::fs::remove_file(root.join("etc/hostname")).expect("rm");

    // A user only the host's file knows, through an image /etc/passwd pointing at it.
    let host_passwd = HostFile::new("host-passwd");
    let user = format!("hostonly{:04x}", rand::random::<u16>());
    std::fs::write(&host_passwd.0, format!("{user}:x:4242:4242::/:/bin/sh\n")).expect("write");
    std::os::unix::fs::symlink(host_passwd.path(), root.join("etc/passwd")).expect("symlink");
    let config = serde_json::json!({ "User": user, "Cmd": ["/bin/sh", "-c", POLITE] });
    let reference = import_hostile(&env, dir.path(), &root, Some(config)).await;
    let spec = ContainerSpec { image: reference, command: Vec::new(), ..env.spec("host-user", "") };
    assert_refused(&env, &spec, "image", &user, &marker).await;
    std::fs::remove_file(root.join("etc/passwd")).expect("rm");

    // A FIFO as /etc/passwd: refused at once, nothing hangs.
    hostile_image::mkfifo(&root.join("etc/passwd"));
    let config = serde_json::json!({ "User": "someone", "Cmd": ["/bin/sh", "-c", POLITE] });
    let reference = import_hostile(&env, dir.path(), &root, Some(config)).await;
    let spec = ContainerSpec { image: reference, command: Vec::new(), ..env.spec("fifo-passwd", "") };
    assert_refused(&env, &spec, "image", "/etc/passwd", &marker).await;
    std::fs::remove_file(root.join("etc/passwd")).expect("rm");

    // A WorkingDir holding a config line.
    let cwd = format!("/\nlxc.hook.pre-start = /bin/touch {} ;:", marker.path());
    let config = serde_json::json!({ "WorkingDir": cwd, "Cmd": ["/bin/sh", "-c", POLITE] });
    let reference = import_hostile(&env, dir.path(), &root, Some(config)).await;
    let spec = ContainerSpec { image: reference, command: Vec::new(), ..env.spec("cwd-inject", "") };
    assert_refused(&env, &spec, "image", "WorkingDir", &marker).await;

    // A working directory under /proc (a runtime's leaked descriptor leads to the host).
    let config = serde_json::json!({ "WorkingDir": "/proc/self/fd/7", "Cmd": ["/bin/sh", "-c", POLITE] });
    let reference = import_hostile(&env, dir.path(), &root, Some(config)).await;
    let spec = ContainerSpec { image: reference, command: Vec::new(), ..env.spec("proc-cwd", "") };
    assert_refused(&env, &spec, "image", "/proc/self/fd/7", &marker).await;

    // An Env entry without a value would hand PID 1 a variable of the host.
    let config = serde_json::json!({ "Env": ["HOME"], "Cmd": ["/bin/sh", "-c", POLITE] });
    let reference = import_hostile(&env, dir.path(), &root, Some(config)).await;
    let spec = ContainerSpec { image: reference, command: Vec::new(), ..env.spec("env-inherit", "") };
    assert_refused(&env, &spec, "image", "HOME", &marker).await;
}
