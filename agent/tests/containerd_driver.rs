//! The containerd driver against this host's containerd (see `scripts/setup-host`:
//! containerd 1.6 on /run/containerd/containerd.sock, a plain-HTTP registry on
//! 127.0.0.1:5000 holding `diplo/busybox:latest`, the CNI plugins in /usr/lib/cni).
//!
//! Without containerd the tests skip loudly; with `CI=true` they fail instead. Every
//! container is named `diplo-ctrd-<random>-<case>` and removed at the end, also when a
//! test panics. Checks from outside go through `ctr -n diplo`, `iptables` and the files
//! the driver and the CNI plugins keep.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use diplo_agent::runtime::containerd::{ContainerdRuntime, NAMESPACE};
use diplo_agent::runtime::{ContainerRuntime, RegistryConfig, RuntimeError};
use diplo_api::container::{ContainerSpec, ContainerStatus, LogOptions, Mount, OutputStream, PortMapping, Protocol};
use futures::StreamExt;

const SOCKET: &str = "/run/containerd/containerd.sock";
const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

/// A runtime with a fresh state directory, or `None` (loudly) when containerd is not
/// there outside CI.
struct Harness {
    runtime: ContainerdRuntime,
    state_dir: PathBuf,
    prefix: String,
    names: std::sync::Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
}

async fn harness() -> Option<Harness> {
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    match ContainerdRuntime::connect(SOCKET, RegistryConfig::default(), state_dir.clone()).await {
        Ok(runtime) => Some(Harness {
            runtime,
            state_dir,
            prefix: format!("diplo-ctrd-{:08x}", rand::random::<u32>()),
            names: std::sync::Mutex::new(Vec::new()),
            _dir: dir,
        }),
        Err(error) => {
            diplo_tests::skip_or_fail(&format!("containerd is unavailable, the containerd driver test is not run: {error}"));
            None
        }
    }
}

impl Harness {
    fn rt(&self) -> &dyn ContainerRuntime {
        &self.runtime
    }

    fn spec(&self, case: &str, script: &str) -> ContainerSpec {
        let name = format!("{}-{case}", self.prefix);
        self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(name.clone());
        ContainerSpec {
            name,
            image: IMAGE.to_owned(),
            command: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
            ..Default::default()
        }
    }

    async fn wait_status(&self, id: &str, status: ContainerStatus) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = self.rt().inspect(id).await.expect("inspect");
            if info.status == status {
                return;
            }
            assert!(Instant::now() < deadline, "{id} not {status:?} within 10 s: {info:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Harness {
    /// Removes whatever the test created, through a runtime of its own on a thread of
    /// its own (the test's executor may be gone after a panic).
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let state_dir = self.state_dir.clone();
        let _ = std::thread::spawn(move || {
            let Ok(executor) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            executor.block_on(async {
                let Ok(runtime) = ContainerdRuntime::connect(SOCKET, RegistryConfig::default(), state_dir).await else { return };
                for name in names {
                    match runtime.remove(&name, true).await {
                        Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                        Err(error) => eprintln!("cleanup: cannot remove {name}: {error}"),
                    }
                }
            });
        })
        .join();
    }
}

fn free_port() -> u16 {
    TcpListener::bind(("0.0.0.0", 0)).expect("bind").local_addr().expect("addr").port()
}

fn http_get(addr: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn ctr(args: &[&str]) -> String {
    let output = Command::new("ctr").arg("-n").arg(NAMESPACE).args(args).output().expect("run ctr");
    assert!(output.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// iptables NAT rules naming `port` as a whole number.
fn nat_rules_with_port(port: u16) -> Vec<String> {
    let output = Command::new("iptables").args(["-w", "-t", "nat", "-S"]).output().expect("run iptables");
    assert!(output.status.success(), "iptables -t nat -S failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    let port = port.to_string();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.split(|c: char| !c.is_ascii_digit()).any(|number| number == port))
        .map(str::to_owned)
        .collect()
}

/// Asserts that containerd, the CNI plugins and the driver keep nothing of `id`.
fn assert_nothing_left(h: &Harness, id: &str, port: Option<u16>) {
    assert!(!ctr(&["containers", "ls", "-q"]).lines().any(|l| l.trim() == id), "containerd still has container {id}");
    assert!(!ctr(&["tasks", "ls"]).contains(id), "containerd still has a task for {id}");
    assert!(!ctr(&["snapshots", "ls"]).lines().any(|l| l.split_whitespace().next() == Some(id)), "snapshot {id} is left");
    assert!(!ContainerdRuntime::netns_path(id).exists(), "network namespace of {id} is left");
    assert!(!h.state_dir.join(id).exists(), "state directory of {id} is left");
    let ipam = h.runtime.ipam_dir();
    for entry in std::fs::read_dir(&ipam).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        assert!(!text.contains(id), "host-local still allocates {} to {id}", entry.file_name().to_string_lossy());
    }
    if let Some(port) = port {
        let rules = nat_rules_with_port(port);
        assert!(rules.is_empty(), "iptables rules for port {port} are left: {rules:?}");
    }
}

async fn collect_logs(h: &Harness, id: &str, options: LogOptions) -> (String, String) {
    let mut stream = h.rt().logs(id, options).await.expect("logs");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("log chunk");
            match chunk.stream {
                OutputStream::Stdout => out.extend(chunk.data),
                OutputStream::Stderr => err.extend(chunk.data),
            }
        }
    })
    .await
    .expect("the log stream ends");
    (String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_an_http_server_and_cleans_up() {
    let Some(h) = harness().await else { return };
    h.rt().ensure_image(IMAGE).await.expect("pull the test image");
    assert!(ctr(&["images", "ls", "-q"]).lines().any(|l| l.trim() == IMAGE), "the image record is missing");
    // Pulled and unpacked: a second call is a no-op.
    h.rt().ensure_image(IMAGE).await.expect("ensure again");

    let port = free_port();
    let mut spec = h.spec(
        "http",
        "echo starting; echo warming >&2; mkdir -p /www && echo hello-diplo > /www/index.html && exec httpd -f -p 8080 -h /www",
    );
    spec.ports = vec![PortMapping { host_port: port, container_port: 8080, protocol: Protocol::Tcp }];
    spec.memory_bytes = Some(64 << 20);
    spec.env.insert("GREETING".into(), "hi".into());
    let id = h.rt().create(&spec).await.expect("create");
    assert_eq!(h.rt().inspect(&id).await.expect("inspect").status, ContainerStatus::Created);
    h.rt().start(&id).await.expect("start");

    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let attempt = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || http_get(&addr)
        })
        .await
        .expect("join");
        match attempt {
            Ok((200, body)) => break body,
            other => {
                assert!(Instant::now() < deadline, "no HTTP answer on {addr}: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(body.trim(), "hello-diplo");

    let info = h.rt().inspect(&spec.name).await.expect("inspect by name");
    assert_eq!((info.id.as_str(), info.status, info.image.as_str()), (id.as_str(), ContainerStatus::Running, IMAGE));
    assert!(info.ip_address.as_deref().is_some_and(|ip| ip.starts_with("10.")), "{info:?}");
    assert!(info.pid.is_some() && info.started_at.is_some(), "{info:?}");
    assert_eq!(info.ports, spec.ports);
    assert!(h.rt().list().await.expect("list").iter().any(|c| c.id == id));

    let (out, err) = collect_logs(&h, &id, LogOptions::default()).await;
    assert!(out.contains("starting\n"), "stdout {out:?}");
    assert!(err.contains("warming\n"), "stderr {err:?}");

    let argv: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 3"].map(str::to_owned).to_vec();
    let output = h.rt().exec(&id, &argv).await.expect("exec");
    assert_eq!((output.exit_code, output.stdout.as_slice(), output.stderr.as_slice()), (3, &b"out\n"[..], &b"err\n"[..]));
    let output = h
        .rt()
        .exec(
            &id,
            &[
                "sh".into(),
                "-c".into(),
                "echo $GREETING; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max".into(),
            ],
        )
        .await
        .expect("exec env");
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("hi\n{}\n", 64 << 20));

    let stats = h.rt().stats(&id).await.expect("stats");
    assert!(stats.memory_bytes > 0 && stats.memory_limit_bytes == 64 << 20, "{stats:?}");
    assert!(stats.network_rx_bytes > 0, "{stats:?}");

    // httpd as PID 1 ignores SIGTERM: stop waits the grace period, then kills.
    let at = Instant::now();
    h.rt().stop(&id, Duration::from_secs(2)).await.expect("stop");
    let took = at.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "stop took {took:?}");
    let info = h.rt().inspect(&id).await.expect("inspect stopped");
    assert_eq!((info.status, info.exit_code, info.ip_address.as_deref()), (ContainerStatus::Exited, 137, None));
    assert!(nat_rules_with_port(port).is_empty(), "stop left port forwarding behind");

    // Restart: same container, new task, served again.
    h.rt().restart(&id, Duration::from_secs(1)).await.expect("restart");
    h.wait_status(&id, ContainerStatus::Running).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&addr).map(|(s, _)| s).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "no HTTP answer after restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert!(matches!(h.rt().remove(&id, false).await, Err(RuntimeError::Conflict(_))), "removed a running container without force");
    h.rt().remove(&id, true).await.expect("remove");
    assert!(matches!(h.rt().inspect(&id).await, Err(RuntimeError::NotFound { what: "container", .. })));
    assert_nothing_left(&h, &id, Some(port));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_security_resources_and_mounts() {
    let Some(h) = harness().await else { return };
    let host_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(host_dir.path().join("hello.txt"), "from-host\n").expect("write");
    let volume = format!("{}-vol", h.prefix);
    let mut spec = h.spec("secure", "sleep 60");
    spec.read_only = true;
    spec.tmpfs = vec!["/tmp".into()];
    spec.cap_drop = vec!["ALL".into()];
    spec.no_new_privileges = true;
    spec.cpu_millis = Some(500);
    spec.mounts = vec![
        Mount { source: host_dir.path().display().to_string(), target: "/host".into(), read_only: true },
        Mount { source: volume.clone(), target: "/data".into(), read_only: false },
    ];
    let id = h.rt().create(&spec).await.expect("create");
    h.rt().start(&id).await.expect("start");
    let exec = |script: &str| {
        let argv = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let (rt, id) = (h.rt(), id.clone());
        async move { rt.exec(&id, &argv).await.expect("exec") }
    };
    let out = exec("touch /root-is-writable 2>/dev/null && echo yes || echo no; touch /tmp/x && echo tmp-ok").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "no\ntmp-ok\n");
    let out = exec("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n");
    let out = exec("cat /host/hello.txt; echo x > /host/new 2>/dev/null || echo host-ro; echo kept > /data/file; hostname").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("from-host\nhost-ro\n{}\n", spec.name));
    assert_eq!(std::fs::read_to_string(h.state_dir.join("volumes").join(&volume).join("file")).expect("volume file"), "kept\n");
    let out = exec("cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "50000\n");
    h.rt().remove(&id, true).await.expect("remove");
    assert_nothing_left(&h, &id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_honours_the_grace_period_and_events_follow() {
    let Some(h) = harness().await else { return };
    let mut events = h.rt().events().await.expect("events");
    let id = h.rt().create(&h.spec("grace", "trap 'echo got-term' TERM; while true; do sleep 0.1; done")).await.expect("create");
    h.rt().start(&id).await.expect("start");
    h.wait_status(&id, ContainerStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = Instant::now();
    h.rt().stop(&id, Duration::from_secs(2)).await.expect("stop");
    let took = at.elapsed();
    assert!(took >= Duration::from_secs(2), "SIGKILL came before the grace period: {took:?}");
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    let (out, _) = collect_logs(&h, &id, LogOptions { timestamps: true, ..Default::default() }).await;
    assert!(out.lines().any(|l| l.starts_with("20") && l.ends_with(" got-term")), "the trap's output with a timestamp: {out:?}");

    let mut kinds = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = events.next().await {
            let event = event.expect("event");
            // Other changes (created, task deleted) come as `Changed`: the lifecycle is what counts here.
            if event.container_id == id && event.kind != diplo_api::container::RuntimeEventKind::Changed {
                kinds.push(event.kind);
                if kinds.len() == 2 {
                    return;
                }
            }
        }
    })
    .await
    .expect("start and die events");
    use diplo_api::container::RuntimeEventKind::{Die, Start};
    assert_eq!(kinds, [Start, Die]);
    h.rt().remove(&id, false).await.expect("remove a stopped container");
    assert_nothing_left(&h, &id, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_nothing_behind() {
    let Some(h) = harness().await else { return };
    // Unknown image.
    let missing = format!("127.0.0.1:5000/diplo/no-such-image-{}:latest", h.prefix);
    match h.rt().ensure_image(&missing).await {
        Err(RuntimeError::NotFound { what: "image", name }) => assert_eq!(name, missing),
        other => panic!("expected NotFound image, got {other:?}"),
    }
    let spec = ContainerSpec { image: missing.clone(), ..h.spec("noimage", "true") };
    assert!(matches!(h.rt().create(&spec).await, Err(RuntimeError::NotFound { what: "image", .. })));
    assert!(matches!(h.rt().inspect(&spec.name).await, Err(RuntimeError::NotFound { what: "container", .. })));

    // Bad names.
    for bad in ["", "bad name", "-dash", "x/y", &"a".repeat(64)] {
        let spec = ContainerSpec { name: bad.to_owned(), ..h.spec("unused", "true") };
        match h.rt().create(&spec).await {
            Err(RuntimeError::InvalidArgument { field: "name", .. }) => {}
            other => panic!("expected InvalidArgument name for {bad:?}, got {other:?}"),
        }
    }

    // A host port in use, at create and at start.
    let listener = TcpListener::bind(("0.0.0.0", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut spec = h.spec("busy", "sleep 60");
    spec.ports = vec![PortMapping { host_port: port, container_port: 80, protocol: Protocol::Tcp }];
    match h.rt().create(&spec).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains(&port.to_string()), "{message}"),
        other => panic!("expected a port conflict, got {other:?}"),
    }
    assert!(matches!(h.rt().inspect(&spec.name).await, Err(RuntimeError::NotFound { .. })));
    drop(listener);
    let id = h.rt().create(&spec).await.expect("create once the port is free");
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("take the port again");
    match h.rt().start(&id).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains(&port.to_string()), "{message}"),
        other => panic!("expected a port conflict at start, got {other:?}"),
    }
    drop(listener);
    assert_eq!(h.rt().inspect(&id).await.expect("inspect").status, ContainerStatus::Created);
    assert!(!ContainerdRuntime::netns_path(&id).exists(), "a failed start left its network namespace");
    assert!(nat_rules_with_port(port).is_empty());

    // Names are unique.
    match h.rt().create(&spec).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains(&spec.name), "{message}"),
        other => panic!("expected a name conflict, got {other:?}"),
    }
    h.rt().remove(&id, false).await.expect("remove a created container");
    assert_nothing_left(&h, &id, Some(port));
    assert!(matches!(h.rt().remove(&id, true).await, Err(RuntimeError::NotFound { what: "container", .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_an_oci_archive_and_a_root_filesystem() {
    let Some(h) = harness().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let skopeo = Command::new("skopeo").arg("--version").output().is_ok_and(|o| o.status.success());
    if skopeo {
        let archive = dir.path().join("busybox-oci.tar");
        let status = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", &format!("docker://{IMAGE}")])
            .arg(format!("oci-archive:{}:latest", archive.display()))
            .status()
            .expect("skopeo");
        assert!(status.success(), "skopeo copy");
        let reference = format!("diplo-test/imported-{}:v1", h.prefix);
        h.rt().import_image(&archive, &reference).await.expect("import the OCI archive");
        assert!(ctr(&["images", "ls", "-q"]).contains(&format!("docker.io/{reference}")));
        let spec = ContainerSpec { image: reference.clone(), ..h.spec("oci", "echo from-oci") };
        let id = h.rt().create(&spec).await.expect("create from the imported image");
        h.rt().start(&id).await.expect("start");
        h.wait_status(&id, ContainerStatus::Exited).await;
        assert_eq!(collect_logs(&h, &id, LogOptions::default()).await.0, "from-oci\n");
        h.rt().remove(&id, false).await.expect("remove");
        let _ = Command::new("ctr").args(["-n", NAMESPACE, "images", "rm", &format!("docker.io/{reference}")]).output();
    } else {
        diplo_tests::skip_or_fail("skopeo is missing: the OCI archive import is not tested");
    }
    // A bare root filesystem (like `docker import`).
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    if Path::new("/bin/busybox").exists() {
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        let archive = dir.path().join("rootfs.tar.gz");
        let status = Command::new("tar").arg("-C").arg(&root).arg("-czf").arg(&archive).arg(".").status().expect("tar");
        assert!(status.success());
        let reference = format!("diplo-test/rootfs-{}:v1", h.prefix);
        h.rt().import_image(&archive, &reference).await.expect("import the root filesystem");
        let spec = ContainerSpec {
            image: reference.clone(),
            command: ["/bin/busybox", "echo", "rootfs-ok"].map(str::to_owned).to_vec(),
            ..h.spec("rootfs", "")
        };
        let id = h.rt().create(&spec).await.expect("create from the root filesystem");
        h.rt().start(&id).await.expect("start");
        h.wait_status(&id, ContainerStatus::Exited).await;
        assert_eq!(collect_logs(&h, &id, LogOptions::default()).await.0, "rootfs-ok\n");
        h.rt().remove(&id, false).await.expect("remove");
        let _ = Command::new("ctr").args(["-n", NAMESPACE, "images", "rm", &format!("docker.io/{reference}")]).output();
    } else {
        diplo_tests::skip_or_fail("no /bin/busybox on this host: the root filesystem import is not tested");
    }
    assert!(matches!(
        h.rt().import_image(&dir.path().join("missing.tar"), "diplo-test/missing:v1").await,
        Err(RuntimeError::InvalidArgument { field: "archive", .. })
    ));
}

mod hostile_image;

use hostile_image::HostFile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_user_files_are_read_inside_the_image_only() {
    let Some(h) = harness().await else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(root) = hostile_image::busybox_root(dir.path()) else { return };
    let host_passwd = HostFile::new("host-passwd");
    let user = format!("hostonly{:04x}", rand::random::<u16>());
    std::fs::write(&host_passwd.0, format!("{user}:x:4242:4242::/:/bin/sh\n")).expect("write");

    /// Puts the hostile file into the image's /etc.
    type Plant<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Plant<'_>, String, &str)> = vec![
        // Only the host's file knows this user: an absolute link resolves inside the image.
        (
            "host-passwd",
            Box::new(|etc: &Path| std::os::unix::fs::symlink(host_passwd.path(), etc.join("passwd")).expect("symlink")),
            user.clone(),
            user.as_str(),
        ),
        // Endless: /dev/zero of the image (absent), never the host's.
        (
            "zero-passwd",
            Box::new(|etc: &Path| std::os::unix::fs::symlink("/dev/zero", etc.join("passwd")).expect("symlink")),
            "someone".to_owned(),
            "someone",
        ),
        // Blocks any reader: refused without opening it for long.
        ("fifo-group", Box::new(|etc: &Path| hostile_image::mkfifo(&etc.join("group"))), "1000:staff".to_owned(), "/etc/group"),
    ];
    for (case, plant, image_user, named) in cases {
        let case_root = dir.path().join(case);
        assert!(Command::new("cp").arg("-a").arg(&root).arg(&case_root).status().expect("cp").success());
        plant(&case_root.join("etc"));
        let archive = dir.path().join(format!("{case}.tar"));
        hostile_image::oci_archive(&case_root, serde_json::json!({ "User": image_user, "Cmd": ["/bin/sh", "-c", "sleep 30"] }), &archive);
        let reference = format!("diplo-test/hostile-{}-{case}:v1", h.prefix);
        h.rt().import_image(&archive, &reference).await.unwrap_or_else(|e| panic!("import {case}: {e}"));
        let spec = ContainerSpec { image: reference.clone(), command: Vec::new(), ..h.spec(case, "") };
        // On a thread and runtime of its own: a driver that blocked a thread on the
        // image's files could not stop a timeout of this one from firing.
        let (tx, rx) = std::sync::mpsc::channel();
        let (create_spec, state_dir) = (spec.clone(), h.state_dir.clone());
        std::thread::spawn(move || {
            let executor = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let outcome = executor.block_on(async {
                let runtime = ContainerdRuntime::connect(SOCKET, RegistryConfig::default(), state_dir).await?;
                runtime.create(&create_spec).await
            });
            let _ = tx.send(outcome);
        });
        let outcome = rx.recv_timeout(Duration::from_secs(60));
        let _ = Command::new("ctr").args(["-n", NAMESPACE, "images", "rm", &format!("docker.io/{reference}")]).output();
        match outcome {
            Err(_) => panic!("{case}: create hung on the image's files"),
            Ok(Err(RuntimeError::InvalidArgument { field: "image", message })) => {
                assert!(message.contains(named), "{case}: {named:?} not named in {message:?}");
            }
            Ok(other) => panic!("{case}: expected InvalidArgument image, got {other:?}"),
        }
        assert!(matches!(h.rt().inspect(&spec.name).await, Err(RuntimeError::NotFound { .. })), "{case}: container left behind");
    }

    // A working directory under /proc (a runtime's leaked descriptor leads to the host).
    let archive = dir.path().join("proc-cwd.tar");
    hostile_image::oci_archive(
        &root,
        serde_json::json!({ "WorkingDir": "/proc/self/fd/7", "Cmd": ["/bin/sh", "-c", "sleep 30"] }),
        &archive,
    );
    let reference = format!("diplo-test/hostile-{}-proc-cwd:v1", h.prefix);
    h.rt().import_image(&archive, &reference).await.expect("import");
    let spec = ContainerSpec { image: reference.clone(), command: Vec::new(), ..h.spec("proc-cwd", "") };
    let outcome = h.rt().create(&spec).await;
    let _ = Command::new("ctr").args(["-n", NAMESPACE, "images", "rm", &format!("docker.io/{reference}")]).output();
    match outcome {
        Err(RuntimeError::InvalidArgument { field: "image", message }) => assert!(message.contains("/proc/self/fd/7"), "{message}"),
        other => panic!("expected InvalidArgument image for a WorkingDir under /proc, got {other:?}"),
    }
}
