//! Conformance suite for the [`ContainerRuntime`] drivers, run against the real runtimes
//! of this host (see `scripts/setup-host`: Docker, Podman and a plain-HTTP registry on
//! 127.0.0.1:5000 holding `diplo/busybox:latest`).
//!
//! Every case is a generic async function over `&dyn ContainerRuntime`; a runtime joins
//! the suite with one `#[tokio::test]` building a [`Target`] (containerd, LXC or a fake
//! later: one line each). Out-of-band checks that the trait deliberately cannot do
//! (creating a container without Diplo's labels, removing an image) go through an
//! optional [`Backdoor`], here the runtime's CLI.
//!
//! A runtime that does not answer skips its suite with a loud message, or fails it under
//! `CI=true`. Containers are named `diplo-conf-<random>-<case>` and removed at the end,
//! also when a case panics.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diplo_agent::fingerprint::ProbeConfig;
use diplo_agent::runtime::docker::DockerRuntime;
use diplo_agent::runtime::{ContainerRuntime, RegistryConfig, RuntimeError, podman};
use diplo_agent::supervisor::Supervised;
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStatus, Health, HealthCheck, HealthProbe, LABEL_DEPLOYMENT, LABEL_INSTANCE, LogChunk,
    LogOptions, Mount, OutputStream, PortMapping, Protocol, RestartPolicy, RuntimeEventKind,
};
use diplo_api::resources::VolumeSpec;
use diplo_api::runtime::Runtime;
use diplo_tests::tar_of;
use futures::StreamExt;

/// The local registry setup-host runs.
const REGISTRY: &str = "127.0.0.1:5000";
/// The test image every case runs.
const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
/// A second tag of the same image, removed locally before the pull case so that
/// `ensure_image` really pulls (the suite adds it to the registry if missing).
const PULL_IMAGE: &str = "127.0.0.1:5000/diplo/busybox:conformance";
/// The longest a runtime's whole suite may take.
const SUITE_BUDGET: Duration = Duration::from_secs(90);
/// The longest a runtime's supervision suite (health checks, restart policies) may take.
const SUPERVISION_BUDGET: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------ runtimes under test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_conforms() {
    let socket = ProbeConfig::from_env().docker_socket;
    let runtime = DockerRuntime::connect(&socket, RegistryConfig::default(), Runtime::Docker);
    run_suite(Target::new(runtime).with_backdoor(Cli::new("docker"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_conforms() {
    let socket = ProbeConfig::from_env().podman_socket;
    let runtime = podman::connect(&socket, RegistryConfig::default());
    run_suite(Target::new(runtime).with_backdoor(Cli::new("podman"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_supervises() {
    let socket = ProbeConfig::from_env().docker_socket;
    run_supervision(Target::new(DockerRuntime::connect(&socket, RegistryConfig::default(), Runtime::Docker))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_supervises() {
    let socket = ProbeConfig::from_env().podman_socket;
    run_supervision(Target::new(podman::connect(&socket, RegistryConfig::default()))).await;
}

// ------------------------------------------------------------------ harness

/// What the suite needs that the trait does not offer, for checks from outside.
trait Backdoor: Send + Sync {
    /// Whether the tool works at all (else the checks needing it are skipped).
    fn available(&self) -> bool;
    /// Creates and starts a container without Diplo's labels; returns its id.
    fn create_foreign(&self, name: &str, image: &str) -> Result<String, String>;
    /// Whether a container (any) exists, and its state (`running`, `exited`, ...).
    fn container_state(&self, id: &str) -> Option<String>;
    /// Force-removes a container (any).
    fn remove_container(&self, id: &str);
    /// Whether an image reference exists locally.
    fn image_exists(&self, reference: &str) -> bool;
    /// Removes a local image reference (an untag when others remain).
    fn remove_image(&self, reference: &str);
    /// Writes `reference` as an image archive (`docker save`) to `path`.
    fn save_image(&self, reference: &str, path: &Path) -> Result<(), String>;
}

/// A Docker-compatible CLI (`docker`, `podman`).
struct Cli {
    program: &'static str,
}

impl Cli {
    fn new(program: &'static str) -> Self {
        Cli { program }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(self.program).args(args).output().map_err(|e| format!("{} {args:?}: {e}", self.program))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!("{} {args:?}: {}", self.program, String::from_utf8_lossy(&output.stderr).trim()))
        }
    }
}

impl Backdoor for Cli {
    fn available(&self) -> bool {
        self.run(&["version"]).is_ok()
    }

    fn create_foreign(&self, name: &str, image: &str) -> Result<String, String> {
        self.run(&["run", "-d", "--name", name, image, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"])
    }

    fn container_state(&self, id: &str) -> Option<String> {
        self.run(&["inspect", "--type", "container", "--format", "{{.State.Status}}", id]).ok()
    }

    fn remove_container(&self, id: &str) {
        let _ = self.run(&["rm", "-f", "-v", id]);
    }

    fn image_exists(&self, reference: &str) -> bool {
        self.run(&["image", "inspect", reference]).is_ok()
    }

    fn remove_image(&self, reference: &str) {
        let _ = self.run(&["rmi", reference]);
    }

    fn save_image(&self, reference: &str, path: &Path) -> Result<(), String> {
        let path = path.to_string_lossy();
        self.run(&["save", "-o", &path, reference]).map(drop)
    }
}

/// One runtime under test.
struct Target {
    runtime: Arc<dyn ContainerRuntime>,
    backdoor: Option<Arc<dyn Backdoor>>,
}

impl Target {
    /// `runtime` as the agent drives it: behind its supervisor (health checks, restart
    /// policies), keeping its records in memory.
    fn new(runtime: impl ContainerRuntime + 'static) -> Self {
        Target { runtime: Arc::new(Supervised::new(Arc::new(runtime), None)), backdoor: None }
    }

    fn with_backdoor(mut self, backdoor: impl Backdoor + 'static) -> Self {
        self.backdoor = Some(Arc::new(backdoor));
        self
    }
}

/// What a case gets: the runtime, the backdoor if it works, unique names, cleanup.
struct Ctx {
    runtime: Arc<dyn ContainerRuntime>,
    backdoor: Option<Arc<dyn Backdoor>>,
    prefix: String,
    cleanup: Cleanup,
}

impl Ctx {
    fn rt(&self) -> &dyn ContainerRuntime {
        self.runtime.as_ref()
    }

    /// A unique container name for this run, removed at the end whatever happens.
    fn name(&self, case: &str) -> String {
        let name = format!("{}-{case}", self.prefix);
        self.cleanup.lock().containers.push(name.clone());
        name
    }

    /// A spec for a container of this run running `script` in `sh -c`.
    fn spec(&self, case: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            name: self.name(case),
            image: IMAGE.to_owned(),
            command: vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()],
            ..Default::default()
        }
    }

    /// Creates and starts `spec`; returns the id.
    async fn run(&self, spec: &ContainerSpec) -> String {
        let id = self.rt().create(spec).await.unwrap_or_else(|e| panic!("create {}: {e}", spec.name));
        self.rt().start(&id).await.unwrap_or_else(|e| panic!("start {}: {e}", spec.name));
        id
    }

    /// Polls inspect until `done` holds (at most `within`); returns the last state.
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
}

#[derive(Default)]
struct Leftovers {
    containers: Vec<String>,
    volumes: Vec<String>,
    foreign: Vec<String>,
    images: Vec<String>,
}

/// Removes everything a run created when dropped, even after a panic: the containers
/// through the runtime itself (on a thread of its own, the test's executor may be gone),
/// foreign containers and images through the backdoor.
struct Cleanup {
    runtime: Arc<dyn ContainerRuntime>,
    backdoor: Option<Arc<dyn Backdoor>>,
    leftovers: Mutex<Leftovers>,
}

impl Cleanup {
    fn lock(&self) -> std::sync::MutexGuard<'_, Leftovers> {
        self.leftovers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let leftovers = std::mem::take(&mut *self.lock());
        let runtime = self.runtime.clone();
        let (containers, volumes) = (leftovers.containers, leftovers.volumes);
        let cleaner = std::thread::spawn(move || {
            let Ok(executor) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            executor.block_on(async {
                for name in containers {
                    match runtime.remove(&name, true).await {
                        Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                        Err(error) => eprintln!("cleanup: cannot remove {name}: {error}"),
                    }
                }
                for name in volumes {
                    match runtime.remove_volume(&name).await {
                        Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                        Err(error) => eprintln!("cleanup: cannot remove volume {name}: {error}"),
                    }
                }
            });
        });
        let _ = cleaner.join();
        if let Some(backdoor) = &self.backdoor {
            for id in leftovers.foreign {
                backdoor.remove_container(&id);
            }
            for image in leftovers.images {
                backdoor.remove_image(&image);
            }
        }
    }
}

/// The context of a suite over `target`, or `None` (after a loud message, or a failure
/// under `CI=true`) when its runtime does not answer.
async fn context(target: Target, suite: &str) -> Option<Ctx> {
    let kind = target.runtime.runtime();
    match target.runtime.version().await {
        Ok(version) => println!("{kind} {version}: running the runtime {suite} suite"),
        Err(error) => {
            diplo_tests::skip_or_fail(&format!("{kind} is unavailable, its {suite} suite is not run: {error}"));
            return None;
        }
    }
    let backdoor = target.backdoor.filter(|b| b.available());
    if backdoor.is_none() && target_needs_backdoor(suite) {
        diplo_tests::skip_or_fail(&format!("{kind}: no working CLI, the out-of-band checks are not run"));
    }
    let prefix = format!("diplo-conf-{:08x}", rand::random::<u32>());
    Some(Ctx {
        runtime: target.runtime.clone(),
        backdoor: backdoor.clone(),
        prefix,
        cleanup: Cleanup { runtime: target.runtime, backdoor, leftovers: Mutex::default() },
    })
}

/// Whether a suite has out-of-band checks (the supervision suite has none).
fn target_needs_backdoor(suite: &str) -> bool {
    suite == "conformance"
}

/// Runs the supervision cases against `target` (health checks and restart policies, the
/// same on every runtime), within [`SUPERVISION_BUDGET`]; the cases run side by side.
async fn run_supervision(target: Target) {
    let kind = target.runtime.runtime();
    let Some(ctx) = context(target, "supervision").await else { return };
    let started = Instant::now();
    tokio::join!(
        timed(kind, "an_unhealthy_container_is_restarted_by_its_policy", an_unhealthy_container_is_restarted_by_its_policy(&ctx)),
        timed(kind, "on_failure_gives_up_after_its_retries", on_failure_gives_up_after_its_retries(&ctx)),
        timed(kind, "policy_no_and_stopped_by_hand_stay_down", policy_no_and_stopped_by_hand_stay_down(&ctx)),
        timed(kind, "http_and_tcp_checks_probe_the_container", http_and_tcp_checks_probe_the_container(&ctx)),
    );
    let elapsed = started.elapsed();
    drop(ctx);
    println!("{kind}: supervision suite passed in {elapsed:.2?}");
    assert!(elapsed < SUPERVISION_BUDGET, "the {kind} supervision suite took {elapsed:?} (budget {SUPERVISION_BUDGET:?})");
}

async fn timed(kind: Runtime, name: &str, case: impl std::future::Future<Output = ()>) {
    let at = Instant::now();
    case.await;
    println!("  {kind} {name:<50} ok ({:.2?})", at.elapsed());
}

/// Runs every case against `target`, in order, within [`SUITE_BUDGET`].
async fn run_suite(target: Target) {
    let kind = target.runtime.runtime();
    let Some(ctx) = context(target, "conformance").await else { return };
    let started = Instant::now();
    macro_rules! case {
        ($case:ident) => {{
            let at = Instant::now();
            $case(&ctx).await;
            println!("  {kind} {:<40} ok ({:.2?})", stringify!($case), at.elapsed());
        }};
    }
    case!(pulls_from_the_local_registry);
    case!(unknown_image_is_not_found);
    case!(serves_http_on_a_published_port);
    case!(logs_hold_the_output);
    case!(exec_returns_output_and_exit_code);
    case!(stop_honours_the_grace_period);
    case!(events_report_start_and_die);
    case!(remove_leaves_nothing);
    case!(list_returns_only_labelled_containers);
    case!(host_port_in_use_is_a_conflict);
    case!(taken_name_is_a_conflict);
    case!(invalid_name_is_rejected);
    case!(imports_archives);
    case!(pause_freezes_and_unpause_thaws);
    case!(copies_files_in_and_out_as_tar);
    case!(limits_are_in_force_inside);
    case!(hardening_is_in_force_inside);
    case!(user_workdir_and_entrypoint_replace_the_images);
    case!(stop_signal_and_grace_come_from_the_spec);
    case!(named_volumes_keep_data_between_containers);
    let elapsed = started.elapsed();
    drop(ctx);
    println!("{kind}: conformance suite passed in {elapsed:.2?}");
    assert!(elapsed < SUITE_BUDGET, "the {kind} suite took {elapsed:?} (budget {SUITE_BUDGET:?})");
}

// ------------------------------------------------------------------ helpers

/// A host port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind(("0.0.0.0", 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Status, headers (lower-cased names) and body of an HTTP response.
type HttpResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.0 exchange with `addr`.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad response: {}", String::from_utf8_lossy(&response)));
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok((status, headers, response[end + 4..].to_vec()))
}

/// Makes sure the registry has [`PULL_IMAGE`]: copies `latest`'s manifest to the
/// `conformance` tag (same blobs, nothing else to upload).
fn ensure_pull_tag_in_registry() {
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
    let tag = PULL_IMAGE.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("conformance");
    let head = http(REGISTRY, "GET", &format!("/v2/diplo/busybox/manifests/{tag}"), &[("Accept", accept)], b"").expect("registry answers");
    if head.0 == 200 {
        return;
    }
    let (status, headers, manifest) =
        http(REGISTRY, "GET", "/v2/diplo/busybox/manifests/latest", &[("Accept", accept)], b"").expect("registry answers");
    assert_eq!(status, 200, "the registry has no diplo/busybox:latest (run scripts/setup-host)");
    let media_type = headers.iter().find(|(n, _)| n == "content-type").map(|(_, v)| v.clone()).expect("content type");
    let (status, _, body) =
        http(REGISTRY, "PUT", &format!("/v2/diplo/busybox/manifests/{tag}"), &[("Content-Type", &media_type)], &manifest)
            .expect("registry answers");
    assert_eq!(status, 201, "tagging diplo/busybox:{tag} in the registry: {}", String::from_utf8_lossy(&body));
}

/// Collects a finite log stream into (stdout, stderr).
async fn collect_logs(ctx: &Ctx, id: &str, options: LogOptions) -> (String, String) {
    let mut stream = ctx.rt().logs(id, options).await.unwrap_or_else(|e| panic!("logs {id}: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let collected = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            let LogChunk { stream, data } = chunk.unwrap_or_else(|e| panic!("log stream of {id}: {e}"));
            match stream {
                OutputStream::Stdout => out.extend(data),
                OutputStream::Stderr => err.extend(data),
            }
        }
    })
    .await;
    assert!(collected.is_ok(), "the logs of {id} did not end (follow = false)");
    (String::from_utf8_lossy(&out).into_owned(), String::from_utf8_lossy(&err).into_owned())
}

fn assert_not_found(result: Result<impl std::fmt::Debug, RuntimeError>, what: &str, name: &str) {
    match result {
        Err(RuntimeError::NotFound { what: w, name: n }) => {
            assert_eq!(w, what, "NotFound names the wrong kind of thing");
            assert!(n.contains(name), "NotFound names {n:?}, expected {name:?}");
        }
        other => panic!("expected NotFound {{ {what}, {name} }}, got {other:?}"),
    }
}

/// A container script that runs until SIGTERM and exits 0 on it.
const POLITE: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";
/// A container script that ignores SIGTERM.
const STUBBORN: &str = "trap 'echo ignoring TERM' TERM; while true; do sleep 0.1; done";

// ------------------------------------------------------------------ supervision cases

/// A check every second, failing at once, with `probe`.
fn check(probe: HealthProbe) -> HealthCheck {
    HealthCheck { probe, interval: Duration::from_secs(1), timeout: Duration::from_secs(2), retries: 1, start_period: Duration::ZERO }
}

/// A health check that passes, then fails once its file is removed through exec, turns
/// the container unhealthy; its policy restarts it (the restart count grows) and its
/// health comes back.
async fn an_unhealthy_container_is_restarted_by_its_policy(ctx: &Ctx) {
    let spec = ContainerSpec {
        restart_policy: RestartPolicy::Always,
        healthcheck: Some(check(HealthProbe::Shell { command: "test -f /tmp/ok".into() })),
        ..ctx.spec("unhealthy", &format!("touch /tmp/ok; {POLITE}"))
    };
    let id = ctx.run(&spec).await;
    let info = ctx.rt().inspect(&id).await.expect("inspect");
    assert!(matches!(info.health, Some(Health::Starting | Health::Healthy)), "a checked container reports its health: {info:?}");
    ctx.wait_for(&id, Duration::from_secs(20), "healthy", |c| c.health == Some(Health::Healthy)).await;
    let removed = ctx.rt().exec(&id, &["rm".to_owned(), "/tmp/ok".to_owned()]).await.expect("exec rm");
    assert_eq!(removed.exit_code, 0, "{removed:?}");
    let info =
        ctx.wait_for(&id, Duration::from_secs(30), "restarted", |c| c.restart_count >= 1 && c.status == ContainerStatus::Running).await;
    assert_eq!(info.restart_count, 1, "{info:?}");
    // The new run creates its file again: healthy again, without another restart.
    let info = ctx.wait_for(&id, Duration::from_secs(20), "healthy again", |c| c.health == Some(Health::Healthy)).await;
    assert_eq!(info.restart_count, 1, "{info:?}");
    ctx.rt().remove(&id, true).await.expect("remove");
}

/// `on-failure:2` restarts a failing command twice, then leaves it exited.
async fn on_failure_gives_up_after_its_retries(ctx: &Ctx) {
    let spec = ContainerSpec { restart_policy: RestartPolicy::OnFailure(Some(2)), ..ctx.spec("onfailure", "sleep 0.2; exit 3") };
    let id = ctx.run(&spec).await;
    let info = ctx.wait_for(&id, Duration::from_secs(30), "restarted twice", |c| c.restart_count >= 2).await;
    assert_eq!(info.restart_count, 2, "{info:?}");
    // The next restart would come within 4 s of back-off: none comes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let info = ctx.rt().inspect(&id).await.expect("inspect");
    assert_eq!((info.status, info.exit_code, info.restart_count), (ContainerStatus::Exited, 3, 2), "{info:?}");
    ctx.rt().remove(&id, true).await.expect("remove");
}

/// Policy `no` restarts neither an exit nor an unhealthy container; a container stopped
/// by hand stays stopped whatever its policy.
async fn policy_no_and_stopped_by_hand_stay_down(ctx: &Ctx) {
    let exits = ctx.run(&ctx.spec("no-exit", "sleep 0.2; exit 3")).await;
    let sick = ContainerSpec { healthcheck: Some(check(HealthProbe::Exec { argv: vec!["false".into()] })), ..ctx.spec("no-sick", POLITE) };
    let sick = ctx.run(&sick).await;
    let stopped = ctx.run(&ContainerSpec { restart_policy: RestartPolicy::Always, ..ctx.spec("by-hand", POLITE) }).await;
    ctx.wait_for(&stopped, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctx.rt().stop(&stopped, Duration::from_secs(5)).await.expect("stop by hand");
    ctx.wait_for(&exits, Duration::from_secs(10), "exited", |c| c.status == ContainerStatus::Exited).await;
    ctx.wait_for(&sick, Duration::from_secs(20), "unhealthy", |c| c.health == Some(Health::Unhealthy)).await;
    // Past the first back-off, nothing was restarted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (id, status) in [(&exits, ContainerStatus::Exited), (&sick, ContainerStatus::Running), (&stopped, ContainerStatus::Exited)] {
        let info = ctx.rt().inspect(id).await.expect("inspect");
        assert_eq!((info.status, info.restart_count), (status, 0), "{info:?}");
    }
    assert_eq!(ctx.rt().inspect(&sick).await.expect("inspect").health, Some(Health::Unhealthy));
    for id in [&exits, &sick, &stopped] {
        ctx.rt().remove(id, true).await.expect("remove");
    }
}

/// HTTP and TCP checks reach a busybox `httpd` in the container: a page that answers is
/// healthy; a missing page (404) and a closed port are unhealthy.
async fn http_and_tcp_checks_probe_the_container(ctx: &Ctx) {
    let serve = "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www";
    let cases = [
        ("http-ok", HealthProbe::Http { port: 8080, path: "/index.html".into() }, Health::Healthy),
        ("tcp-ok", HealthProbe::Tcp { port: 8080 }, Health::Healthy),
        ("http-404", HealthProbe::Http { port: 8080, path: "/missing".into() }, Health::Unhealthy),
        ("tcp-closed", HealthProbe::Tcp { port: 8081 }, Health::Unhealthy),
    ];
    let mut ids = Vec::new();
    for (case, probe, _) in &cases {
        let spec = ContainerSpec { healthcheck: Some(check(probe.clone())), ..ctx.spec(case, serve) };
        ids.push(ctx.run(&spec).await);
    }
    for ((case, _, expected), id) in cases.iter().zip(&ids) {
        let info = ctx.wait_for(id, Duration::from_secs(20), &format!("{case}: {expected:?}"), |c| c.health == Some(*expected)).await;
        assert_eq!((info.status, info.restart_count), (ContainerStatus::Running, 0), "{case}: {info:?}");
    }
    for id in &ids {
        ctx.rt().remove(id, true).await.expect("remove");
    }
}

// ------------------------------------------------------------------ cases

/// A container script that counts tenths of seconds into /tmp/count until SIGTERM.
/// (written aside then renamed, so that a reader never sees it empty).
const COUNTER: &str =
    "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.1; done";

async fn read_counter(ctx: &Ctx, id: &str) -> u64 {
    let output = ctx.rt().exec(id, &["cat".to_owned(), "/tmp/count".to_owned()]).await.expect("exec cat /tmp/count");
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or_else(|_| panic!("counter: {output:?}"))
}

async fn pause_freezes_and_unpause_thaws(ctx: &Ctx) {
    let id = ctx.run(&ctx.spec("pause", COUNTER)).await;
    ctx.wait_for(&id, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = read_counter(ctx, &id).await;
    let mut events = ctx.rt().events().await.expect("events");
    // Give the subscription a moment to be in place at the daemon.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ctx.rt().pause(&id).await.expect("pause");
    // Whoever follows the events learns of the pause (and inspects to see it).
    let full_id = ctx.rt().inspect(&id).await.expect("inspect").id;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Ok(Some(Ok(event))) if event.container_id == full_id || event.container_id == id => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no event for the pause of {id}: {other:?}"),
        }
    }
    drop(events);
    ctx.rt().pause(&id).await.expect("pausing a paused container does nothing");
    let info = ctx.rt().inspect(&id).await.expect("inspect paused");
    assert_eq!(info.status, ContainerStatus::Paused, "{info:?}");
    assert!(ctx.rt().list().await.expect("list").iter().any(|c| c.id == info.id && c.status == ContainerStatus::Paused));
    // Frozen for 1.5 s: the counter (10 a second when running) hardly moves.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ctx.rt().inspect(&id).await.expect("inspect").status, ContainerStatus::Paused);
    ctx.rt().unpause(&id).await.expect("unpause");
    ctx.rt().unpause(&id).await.expect("unpausing a running container does nothing");
    let after = read_counter(ctx, &id).await;
    assert!(after.saturating_sub(before) < 8, "the container kept running while paused: counter {before} → {after}");
    let info = ctx.wait_for(&id, Duration::from_secs(5), "running", |c| c.status == ContainerStatus::Running).await;
    assert!(info.pid.is_some(), "{info:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = read_counter(ctx, &id).await;
    assert!(later > after, "the container does not run after unpause: counter {after} → {later}");
    let ghost = format!("{}-ghost", ctx.prefix);
    assert_not_found(ctx.rt().pause(&ghost).await, "container", &ghost);
    ctx.rt().remove(&id, true).await.expect("remove");
}

/// The members of a tar: name → content (regular files only).
fn untar(archive: &[u8]) -> std::collections::BTreeMap<String, String> {
    let mut files = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(archive).entries().expect("a tar") {
        let mut entry = entry.expect("member");
        let name = entry.path().expect("name").display().to_string();
        let mut content = String::new();
        if entry.header().entry_type().is_file() {
            entry.read_to_string(&mut content).expect("content");
        }
        files.insert(name, content);
    }
    files
}

async fn copies_files_in_and_out_as_tar(ctx: &Ctx) {
    let id = ctx.run(&ctx.spec("copy", POLITE)).await;
    ctx.wait_for(&id, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;

    let archive = tar_of(&[("d/", ""), ("d/hello.txt", "hello from the host\n"), ("d/sub/", ""), ("d/sub/deep.txt", "deep\n")]);
    ctx.rt().copy_to(&id, "/tmp", archive).await.expect("copy in");
    let output = ctx.rt().exec(&id, &["cat".to_owned(), "/tmp/d/hello.txt".to_owned()]).await.expect("exec cat");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello from the host\n");
    let files = untar(&ctx.rt().copy_from(&id, "/tmp/d").await.expect("copy out a directory"));
    assert_eq!(files.get("d/hello.txt").map(String::as_str), Some("hello from the host\n"), "{files:?}");
    assert_eq!(files.get("d/sub/deep.txt").map(String::as_str), Some("deep\n"), "{files:?}");
    let files = untar(&ctx.rt().copy_from(&id, "/tmp/d/hello.txt").await.expect("copy out a file"));
    assert_eq!(files.into_iter().collect::<Vec<_>>(), vec![("hello.txt".to_owned(), "hello from the host\n".to_owned())]);

    // A symbolic link to a host directory, then a file through it: resolved inside the
    // container, so the host directory stays empty whatever the runtime answers.
    let host_dir = tempfile::tempdir().expect("host directory");
    let host = host_dir.path().display().to_string();
    let hostile = tar_of(&[("escape", &format!("-> {host}")), ("escape/owned", "pwned\n")]);
    let answer = ctx.rt().copy_to(&id, "/tmp", hostile).await;
    assert!(
        std::fs::read_dir(host_dir.path()).expect("read host dir").next().is_none(),
        "a copy into the container wrote into the host directory {host} (answer {answer:?})"
    );
    // The link leads nowhere inside the container: the runtime cannot extract the file.
    assert!(matches!(answer, Err(RuntimeError::InvalidArgument { field: "archive", .. })), "{answer:?}");
    // Members that climb out or are absolute are refused before any runtime sees them.
    for members in [[("../../escaped", "x\n")], [("/tmp/absolute", "x\n")]] {
        match ctx.rt().copy_to(&id, "/tmp", tar_of(&members)).await {
            Err(RuntimeError::InvalidArgument { field: "archive", .. }) => {}
            other => panic!("{members:?}: {other:?}"),
        }
    }
    for bad in ["tmp", "/tmp/../etc", "/tmp/\0"] {
        assert!(matches!(ctx.rt().copy_from(&id, bad).await, Err(RuntimeError::InvalidArgument { field: "path", .. })), "{bad:?}");
        assert!(matches!(ctx.rt().copy_to(&id, bad, vec![]).await, Err(RuntimeError::InvalidArgument { field: "dir", .. })), "{bad:?}");
    }
    match ctx.rt().copy_from(&id, "/no/such/path").await {
        Err(RuntimeError::NotFound { .. }) => {}
        other => panic!("a missing path: {other:?}"),
    }
    // More than the bound is refused, naming it.
    let dd = ["dd", "if=/dev/zero", "of=/tmp/big", "bs=1048576", "count=5"].map(str::to_owned).to_vec();
    assert_eq!(ctx.rt().exec(&id, &dd).await.expect("dd").exit_code, 0);
    match ctx.rt().copy_from(&id, "/tmp/big").await {
        Err(RuntimeError::InvalidArgument { field: "path", message }) => assert!(message.contains("4194304"), "{message}"),
        other => panic!("an archive above the bound: {:?}", other.map(|a| a.len())),
    }
    let ghost = format!("{}-ghost", ctx.prefix);
    assert_not_found(ctx.rt().copy_from(&ghost, "/etc/hosts").await, "container", &ghost);
    ctx.rt().remove(&id, true).await.expect("remove");
}

async fn pulls_from_the_local_registry(ctx: &Ctx) {
    ensure_pull_tag_in_registry();
    if let Some(backdoor) = &ctx.backdoor {
        backdoor.remove_image(PULL_IMAGE);
        assert!(!backdoor.image_exists(PULL_IMAGE), "{PULL_IMAGE} is still there before the pull");
    }
    ctx.rt().ensure_image(PULL_IMAGE).await.unwrap_or_else(|e| panic!("pull {PULL_IMAGE}: {e}"));
    if let Some(backdoor) = &ctx.backdoor {
        assert!(backdoor.image_exists(PULL_IMAGE), "{PULL_IMAGE} is not there after the pull");
    }
    // Present now: a no-op.
    ctx.rt().ensure_image(PULL_IMAGE).await.unwrap_or_else(|e| panic!("second ensure {PULL_IMAGE}: {e}"));
    ctx.rt().ensure_image(IMAGE).await.unwrap_or_else(|e| panic!("pull {IMAGE}: {e}"));
}

async fn unknown_image_is_not_found(ctx: &Ctx) {
    let missing = format!("{REGISTRY}/diplo/no-such-image-{}:latest", ctx.prefix);
    assert_not_found(ctx.rt().ensure_image(&missing).await, "image", &missing);
    // Creating from an image that is not there is refused the same way, leaving nothing.
    let spec = ContainerSpec { image: missing.clone(), ..ctx.spec("noimage", "true") };
    assert_not_found(ctx.rt().create(&spec).await, "image", &missing);
    assert_not_found(ctx.rt().inspect(&spec.name).await, "container", &spec.name);
}

async fn serves_http_on_a_published_port(ctx: &Ctx) {
    let port = free_port();
    let mut spec = ctx.spec("http", "mkdir -p /www && echo hello-diplo > /www/index.html && exec httpd -f -p 8080 -h /www");
    spec.ports = vec![PortMapping { host_port: port, container_port: 8080, protocol: Protocol::Tcp }];
    spec.labels.insert("conformance".to_owned(), "yes".to_owned());
    let id = ctx.run(&spec).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = format!("127.0.0.1:{port}");
    let body = loop {
        match tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || http(&addr, "GET", "/", &[], b"")
        })
        .await
        .expect("join")
        {
            Ok((200, _, body)) => break String::from_utf8_lossy(&body).into_owned(),
            other => {
                assert!(Instant::now() < deadline, "no HTTP answer on {addr} within 10 s: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(body.contains("hello-diplo"), "unexpected body {body:?}");

    let info = ctx.rt().inspect(&id).await.expect("inspect");
    assert_eq!(info.id, id);
    assert_eq!(info.name, spec.name);
    assert_eq!(info.image, IMAGE);
    assert_eq!(info.status, ContainerStatus::Running);
    assert_eq!(info.exit_code, 0);
    assert!(info.pid.is_some_and(|pid| pid > 1), "pid {:?}", info.pid);
    assert!(info.started_at.as_deref().is_some_and(|at| at.len() >= 20), "started_at {:?}", info.started_at);
    assert!(info.ip_address.is_some(), "no IP address: {info:?}");
    assert_eq!(info.ports, spec.ports);
    assert_eq!(info.health, None);
    assert_eq!(info.labels.get(LABEL_INSTANCE), Some(&spec.name), "labels {:?}", info.labels);
    assert_eq!(info.labels.get(LABEL_DEPLOYMENT).map(String::as_str), Some("direct"));
    assert_eq!(info.labels.get("conformance").map(String::as_str), Some("yes"));
    // Inspect by name as well as by id.
    assert_eq!(ctx.rt().inspect(&spec.name).await.expect("inspect by name").id, id);

    let listed = ctx.rt().list().await.expect("list");
    assert!(listed.iter().any(|c| c.id == id && c.status == ContainerStatus::Running), "not listed: {listed:?}");

    let stats = ctx.rt().stats(&id).await.expect("stats");
    assert!(stats.memory_bytes > 0, "stats {stats:?}");
    assert!(stats.network_rx_bytes > 0, "the HTTP request should count as received bytes: {stats:?}");
    assert!(stats.cpu_percent >= 0.0 && stats.cpu_percent.is_finite(), "stats {stats:?}");

    ctx.rt().remove(&id, true).await.expect("remove");
}

async fn logs_hold_the_output(ctx: &Ctx) {
    // stdout and stderr are copied separately: their relative order in the log is not
    // guaranteed, so stderr goes first, well ahead.
    let spec = ctx.spec("logs", "echo marker-err >&2; sleep 0.3; echo first-line; echo marker-out; echo last-line");
    let id = ctx.run(&spec).await;
    let info = ctx.wait_for(&id, Duration::from_secs(10), "exited", |c| c.status == ContainerStatus::Exited).await;
    assert_eq!(info.exit_code, 0);

    let (out, err) = collect_logs(ctx, &id, LogOptions::default()).await;
    assert_eq!(out, "first-line\nmarker-out\nlast-line\n");
    assert_eq!(err, "marker-err\n");

    let (out, err) = collect_logs(ctx, &id, LogOptions { tail: Some(1), ..Default::default() }).await;
    assert_eq!((out.as_str(), err.as_str()), ("last-line\n", ""), "tail = 1");

    let (out, _) = collect_logs(ctx, &id, LogOptions { timestamps: true, ..Default::default() }).await;
    let first = out.lines().next().unwrap_or_default();
    // `2026-11-23T15:31:45.123456789Z first-line`
    assert!(first.starts_with("20") && first.ends_with(" first-line"), "timestamped line {first:?}");

    // Following a running container delivers new output as it comes.
    let spec = ctx.spec("follow", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done");
    let id = ctx.run(&spec).await;
    let mut stream = ctx.rt().logs(&id, LogOptions { follow: true, ..Default::default() }).await.expect("follow logs");
    let mut seen = String::new();
    let followed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").data));
            if seen.contains("tick-3\n") {
                return;
            }
        }
    })
    .await;
    assert!(followed.is_ok(), "followed logs stopped at {seen:?}");
    drop(stream);
    ctx.rt().remove(&id, true).await.expect("remove follow");
}

async fn exec_returns_output_and_exit_code(ctx: &Ctx) {
    let spec = ctx.spec("exec", POLITE);
    let id = ctx.run(&spec).await;
    let argv: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 3"].map(str::to_owned).to_vec();
    let output = ctx.rt().exec(&id, &argv).await.expect("exec");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    assert_eq!(output.exit_code, 3);

    let output = ctx.rt().exec(&id, &["cat".to_owned(), "/etc/passwd".to_owned()]).await.expect("exec cat");
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("root:"), "{output:?}");
    assert_eq!(output.exit_code, 0);

    // A program that is not there: exit code 127 with the reason on stderr, as a shell
    // reports it, on every runtime (not an error of the call).
    let missing = ctx.rt().exec(&id, &["no-such-program".to_owned()]).await.expect("exec of a missing program");
    assert_eq!(missing.exit_code, 127, "{missing:?}");
    let reason = String::from_utf8_lossy(&missing.stderr);
    assert!(reason.contains("no-such-program"), "the reason names the program: {missing:?}");
    assert!(missing.stdout.is_empty(), "{missing:?}");

    assert!(matches!(ctx.rt().exec(&id, &[]).await, Err(RuntimeError::InvalidArgument { field: "argv", .. })));
    let ghost = format!("{}-ghost", ctx.prefix);
    assert_not_found(ctx.rt().exec(&ghost, &argv).await, "container", &ghost);
    ctx.rt().remove(&id, true).await.expect("remove");
}

async fn stop_honours_the_grace_period(ctx: &Ctx) {
    let polite = ctx.run(&ctx.spec("polite", POLITE)).await;
    let stubborn = ctx.run(&ctx.spec("stubborn", STUBBORN)).await;
    for id in [&polite, &stubborn] {
        ctx.wait_for(id, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;
    }
    // Let the shells install their traps.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let at = Instant::now();
    ctx.rt().stop(&polite, Duration::from_secs(10)).await.expect("stop polite");
    let polite_took = at.elapsed();
    assert!(polite_took < Duration::from_secs(3), "a container exiting on SIGTERM took {polite_took:?} to stop");
    let info = ctx.rt().inspect(&polite).await.expect("inspect polite");
    assert_eq!((info.status, info.exit_code), (ContainerStatus::Exited, 0), "{info:?}");

    let at = Instant::now();
    ctx.rt().stop(&stubborn, Duration::from_secs(2)).await.expect("stop stubborn");
    let stubborn_took = at.elapsed();
    assert!(stubborn_took >= Duration::from_secs(2), "SIGKILL came before the 2 s grace period: {stubborn_took:?}");
    assert!(stubborn_took < Duration::from_secs(8), "stop with a 2 s grace period took {stubborn_took:?}");
    let info = ctx.rt().inspect(&stubborn).await.expect("inspect stubborn");
    assert_eq!(info.status, ContainerStatus::Exited, "{info:?}");
    assert_eq!(info.exit_code, 137, "killed by SIGKILL: {info:?}");

    // Stopping a stopped container is fine; restart brings it back.
    ctx.rt().stop(&polite, Duration::from_secs(1)).await.expect("stop again");
    ctx.rt().restart(&polite, Duration::from_secs(1)).await.expect("restart");
    let info = ctx.wait_for(&polite, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;
    assert!(info.pid.is_some());
    for id in [&polite, &stubborn] {
        ctx.rt().remove(id, true).await.expect("remove");
    }
}

async fn events_report_start_and_die(ctx: &Ctx) {
    let mut events = ctx.rt().events().await.expect("events");
    let spec = ctx.spec("events", "sleep 0.3; exit 4");
    let id = ctx.rt().create(&spec).await.expect("create");
    // Give the subscription a moment to be in place at the daemon.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ctx.rt().start(&id).await.expect("start");
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
    assert!(got.is_ok(), "no die event for {id} within 10 s; saw {seen:?}");
    assert_eq!(seen, vec![RuntimeEventKind::Start, RuntimeEventKind::Die]);
    let info = ctx.rt().inspect(&id).await.expect("inspect");
    assert_eq!((info.status, info.exit_code), (ContainerStatus::Exited, 4));
    ctx.rt().remove(&id, false).await.expect("remove an exited container without force");
}

/// Named volumes on every runtime: created with labels, written by one container and
/// read by another, refused while in use, pruned when unused, removed at last.
async fn named_volumes_keep_data_between_containers(ctx: &Ctx) {
    let (kept, spare) = (format!("{}-vol", ctx.prefix), format!("{}-spare", ctx.prefix));
    ctx.cleanup.lock().volumes.extend([kept.clone(), spare.clone()]);
    let spec = VolumeSpec { name: kept.clone(), labels: BTreeMap::from([("team".to_owned(), "conf".to_owned())]) };
    let created = ctx.rt().create_volume(&spec).await.expect("create volume");
    assert_eq!((created.name.as_str(), created.driver.as_str(), created.managed()), (kept.as_str(), "local", true), "{created:?}");
    assert_eq!(created.labels.get("team").map(String::as_str), Some("conf"));
    assert!(!created.mountpoint.is_empty(), "{created:?}");
    assert!(matches!(ctx.rt().create_volume(&spec).await, Err(RuntimeError::Conflict(_))), "a second volume of the same name");
    ctx.rt().create_volume(&VolumeSpec { name: spare.clone(), ..Default::default() }).await.expect("create spare");
    let listed = ctx.rt().list_volumes().await.expect("list volumes");
    assert!(listed.iter().any(|v| v.name == kept) && listed.iter().any(|v| v.name == spare), "{listed:?}");

    let mount = |read_only| Mount { source: kept.clone(), target: "/data".to_owned(), read_only };
    let mut writer = ctx.spec("vol-writer", "echo kept > /data/file");
    writer.mounts = vec![mount(false)];
    let writer_id = ctx.run(&writer).await;
    let done = ctx.wait_for(&writer_id, Duration::from_secs(20), "exited", |c| c.status == ContainerStatus::Exited).await;
    assert_eq!(done.exit_code, 0, "the writer failed: {done:?}");
    let mut reader = ctx.spec("vol-reader", POLITE);
    reader.mounts = vec![mount(true)];
    let reader_id = ctx.run(&reader).await;
    let read = ctx.rt().exec(&reader_id, &["cat".to_owned(), "/data/file".to_owned()]).await.expect("exec cat");
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\n", "{read:?}");

    let inspected = ctx.rt().inspect_volume(&kept).await.expect("inspect volume");
    assert!(inspected.containers.contains(&reader.name), "{inspected:?}");
    match ctx.rt().remove_volume(&kept).await {
        Err(RuntimeError::Conflict(_)) => {}
        other => panic!("removing a volume in use: {other:?}"),
    }
    let report = ctx.rt().prune_volumes().await.expect("prune volumes");
    assert!(report.removed.contains(&spare) && !report.removed.contains(&kept), "{report:?}");
    assert_not_found(ctx.rt().inspect_volume(&spare).await, "volume", &spare);

    ctx.rt().remove(&reader_id, true).await.expect("remove reader");
    ctx.rt().remove(&writer_id, true).await.expect("remove writer");
    ctx.rt().remove_volume(&kept).await.expect("remove the unused volume");
    assert_not_found(ctx.rt().inspect_volume(&kept).await, "volume", &kept);
    assert!(matches!(ctx.rt().inspect_volume("../etc").await, Err(RuntimeError::InvalidArgument { .. })));
}

async fn remove_leaves_nothing(ctx: &Ctx) {
    let spec = ctx.spec("remove", POLITE);
    let id = ctx.run(&spec).await;
    // Not forced: a running container stays.
    assert!(ctx.rt().remove(&id, false).await.is_err(), "removed a running container without force");
    ctx.rt().remove(&id, true).await.expect("remove");
    assert_not_found(ctx.rt().inspect(&id).await, "container", &id);
    assert_not_found(ctx.rt().inspect(&spec.name).await, "container", &spec.name);
    let listed = ctx.rt().list().await.expect("list");
    assert!(!listed.iter().any(|c| c.id == id || c.name == spec.name), "still listed: {listed:?}");
    if let Some(backdoor) = &ctx.backdoor {
        assert_eq!(backdoor.container_state(&id), None, "the runtime still has it");
    }
    assert_not_found(ctx.rt().remove(&id, true).await, "container", &id);
    assert_not_found(ctx.rt().start(&id).await, "container", &id);
    assert_not_found(ctx.rt().stop(&id, Duration::from_secs(1)).await, "container", &id);
    assert_not_found(ctx.rt().logs(&id, LogOptions::default()).await.map(drop), "container", &id);
    assert_not_found(ctx.rt().stats(&id).await, "container", &id);
}

async fn list_returns_only_labelled_containers(ctx: &Ctx) {
    let Some(backdoor) = &ctx.backdoor else {
        eprintln!("  (skipped: needs a CLI to create a container without Diplo's labels)");
        return;
    };
    let foreign_name = format!("{}-foreign", ctx.prefix);
    let foreign = backdoor.create_foreign(&foreign_name, IMAGE).expect("create a foreign container");
    ctx.cleanup.lock().foreign.push(foreign.clone());
    let ours = ctx.rt().create(&ctx.spec("labelled", POLITE)).await.expect("create");

    let listed = ctx.rt().list().await.expect("list");
    assert!(listed.iter().any(|c| c.id == ours), "our container is not listed");
    assert!(!listed.iter().any(|c| c.id == foreign || c.name == foreign_name), "a foreign container is listed: {listed:?}");
    assert!(listed.iter().all(|c| c.labels.contains_key(LABEL_INSTANCE)), "{listed:?}");

    // Invisible and untouchable by id or name.
    for handle in [&foreign, &foreign_name] {
        assert_not_found(ctx.rt().inspect(handle).await, "container", handle);
        assert_not_found(ctx.rt().stop(handle, Duration::ZERO).await, "container", handle);
        assert_not_found(ctx.rt().remove(handle, true).await, "container", handle);
    }
    assert_eq!(backdoor.container_state(&foreign).as_deref(), Some("running"), "the foreign container was touched");
    backdoor.remove_container(&foreign);
    ctx.rt().remove(&ours, true).await.expect("remove");
}

async fn host_port_in_use_is_a_conflict(ctx: &Ctx) {
    let listener = TcpListener::bind(("0.0.0.0", 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut spec = ctx.spec("busyport", POLITE);
    spec.ports = vec![PortMapping { host_port: port, container_port: 8080, protocol: Protocol::Tcp }];
    // A runtime may find out only at start; either way it says conflict and leaves nothing.
    let outcome = match ctx.rt().create(&spec).await {
        Ok(id) => ctx.rt().start(&id).await.map(|()| id),
        Err(error) => Err(error),
    };
    match outcome {
        Err(RuntimeError::Conflict(message)) => {
            assert!(message.contains(&port.to_string()), "conflict does not name port {port}: {message}")
        }
        other => panic!("expected a conflict on host port {port}, got {other:?}"),
    }
    drop(listener);
    assert_not_found(ctx.rt().inspect(&spec.name).await, "container", &spec.name);
    let listed = ctx.rt().list().await.expect("list");
    assert!(!listed.iter().any(|c| c.name == spec.name), "left behind: {listed:?}");
    if let Some(backdoor) = &ctx.backdoor {
        assert_eq!(backdoor.container_state(&spec.name), None, "the runtime still has {}", spec.name);
    }
}

async fn taken_name_is_a_conflict(ctx: &Ctx) {
    let spec = ctx.spec("twice", POLITE);
    let id = ctx.rt().create(&spec).await.expect("create");
    match ctx.rt().create(&spec).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains(&spec.name), "conflict does not name {}: {message}", spec.name),
        other => panic!("expected a name conflict, got {other:?}"),
    }
    // The first one is intact.
    assert_eq!(ctx.rt().inspect(&spec.name).await.expect("inspect").id, id);
    ctx.rt().remove(&id, true).await.expect("remove");
}

async fn invalid_name_is_rejected(ctx: &Ctx) {
    for bad in ["bad name!", "", "-leading-dash", "x/y"] {
        let spec = ContainerSpec { name: bad.to_owned(), ..ctx.spec("unused", "true") };
        match ctx.rt().create(&spec).await {
            Err(RuntimeError::InvalidArgument { field, .. }) => assert_eq!(field, "name", "{bad:?}"),
            other => panic!("expected InvalidArgument {{ name }} for {bad:?}, got {other:?}"),
        }
    }
}

async fn imports_archives(ctx: &Ctx) {
    let dir = tempfile::tempdir().expect("tempdir");
    // A root filesystem: the host's static busybox, nothing else.
    if Path::new("/bin/busybox").exists() && Command::new("tar").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        let archive = dir.path().join("rootfs.tar");
        let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&archive).arg(".").status().expect("tar");
        assert!(status.success());
        let reference = format!("diplo-conf/rootfs-{}:v1", ctx.prefix.trim_start_matches("diplo-conf-"));
        ctx.cleanup.lock().images.push(reference.clone());
        ctx.rt().import_image(&archive, &reference).await.unwrap_or_else(|e| panic!("import {reference}: {e}"));
        let spec = ContainerSpec {
            image: reference.clone(),
            command: ["/bin/busybox", "echo", "imported-ok"].map(str::to_owned).to_vec(),
            ..ctx.spec("imported", "")
        };
        let id = ctx.run(&spec).await;
        ctx.wait_for(&id, Duration::from_secs(10), "exited", |c| c.status == ContainerStatus::Exited).await;
        let (out, _) = collect_logs(ctx, &id, LogOptions::default()).await;
        assert_eq!(out, "imported-ok\n");
        ctx.rt().remove(&id, true).await.expect("remove");
    } else {
        diplo_tests::skip_or_fail("the root filesystem import needs /bin/busybox and tar");
    }
    // An image archive (`docker save`).
    if let Some(backdoor) = &ctx.backdoor {
        let archive = dir.path().join("image.tar");
        backdoor.save_image(IMAGE, &archive).expect("save the test image");
        let reference = format!("diplo-conf/loaded-{}:v1", ctx.prefix.trim_start_matches("diplo-conf-"));
        ctx.cleanup.lock().images.push(reference.clone());
        ctx.rt().import_image(&archive, &reference).await.unwrap_or_else(|e| panic!("import {reference}: {e}"));
        assert!(backdoor.image_exists(&reference), "{reference} is not there after the import");
    }
    let missing = dir.path().join("missing.tar");
    assert!(matches!(
        ctx.rt().import_image(&missing, "diplo-conf/missing:v1").await,
        Err(RuntimeError::InvalidArgument { field: "archive", .. })
    ));
}

// ------------------------------------------------------------------ LXC

/// The suite for the LXC driver (`/var/lib/lxc`, images cached in a temporary directory),
/// with the `lxc-*` tools and skopeo as its backdoor.
mod lxc_conformance {
    use std::path::PathBuf;

    use diplo_agent::port_publisher::PortPublisher;
    use diplo_agent::runtime::lxc::{DEFAULT_LXC_PATH, LxcRuntime};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lxc_conforms() {
        let cache = tempfile::tempdir().expect("tempdir");
        let make = || {
            LxcRuntime::new(
                PathBuf::from(DEFAULT_LXC_PATH),
                cache.path().to_path_buf(),
                RegistryConfig::default(),
                Arc::new(PortPublisher::new()),
            )
        };
        let backdoor = LxcTools { images: make(), scratch: tempfile::tempdir().expect("tempdir") };
        run_suite(Target::new(make()).with_backdoor(backdoor)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lxc_supervises() {
        let cache = tempfile::tempdir().expect("tempdir");
        let runtime = LxcRuntime::new(
            PathBuf::from(DEFAULT_LXC_PATH),
            cache.path().to_path_buf(),
            RegistryConfig::default(),
            Arc::new(PortPublisher::new()),
        );
        run_supervision(Target::new(runtime)).await;
    }

    /// `lxc-*` and skopeo; images are the driver's cached OCI layouts.
    struct LxcTools {
        /// Only asked where a reference's layout lives.
        images: LxcRuntime,
        scratch: tempfile::TempDir,
    }

    fn run(program: &str, args: &[&str]) -> Result<String, String> {
        let output = Command::new(program).args(args).output().map_err(|e| format!("{program} {args:?}: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!("{program} {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim()))
        }
    }

    impl Backdoor for LxcTools {
        fn available(&self) -> bool {
            run("lxc-ls", &["--version"]).is_ok() && run("skopeo", &["--version"]).is_ok()
        }

        fn create_foreign(&self, name: &str, image: &str) -> Result<String, String> {
            let layout = self.scratch.path().join("foreign");
            if !layout.join("index.json").exists() {
                let destination = format!("oci:{}:latest", layout.display());
                run("skopeo", &["copy", "--quiet", "--src-tls-verify=false", &format!("docker://{image}"), &destination])?;
            }
            let url = format!("oci:{}:latest", layout.display());
            run("lxc-create", &["-n", name, "-P", DEFAULT_LXC_PATH, "-t", "oci", "--", "--url", &url])?;
            run(
                "lxc-start",
                &["-n", name, "-P", DEFAULT_LXC_PATH, "-d", "--", "/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"],
            )?;
            Ok(name.to_owned())
        }

        fn container_state(&self, id: &str) -> Option<String> {
            if !Path::new(DEFAULT_LXC_PATH).join(id).join("config").exists() {
                return None;
            }
            let state = run("lxc-info", &["-n", id, "-P", DEFAULT_LXC_PATH, "-s", "-H"]).ok()?;
            Some(if state == "STOPPED" { "exited".to_owned() } else { state.to_ascii_lowercase() })
        }

        fn remove_container(&self, id: &str) {
            if Path::new(DEFAULT_LXC_PATH).join(id).join("config").exists() {
                let _ = run("lxc-stop", &["-n", id, "-P", DEFAULT_LXC_PATH, "-k"]);
                let _ = run("lxc-destroy", &["-n", id, "-P", DEFAULT_LXC_PATH, "-f"]);
            }
        }

        fn image_exists(&self, reference: &str) -> bool {
            self.images.image_layout(reference).join("index.json").is_file()
        }

        fn remove_image(&self, reference: &str) {
            let _ = std::fs::remove_dir_all(self.images.image_layout(reference));
        }

        fn save_image(&self, reference: &str, path: &Path) -> Result<(), String> {
            let layout = self.images.image_layout(reference);
            if !layout.join("index.json").is_file() {
                return Err(format!("{reference} is not cached"));
            }
            let source = format!("oci:{}:latest", layout.display());
            run("skopeo", &["copy", "--quiet", &source, &format!("docker-archive:{}", path.display())]).map(drop)
        }
    }
}

// ------------------------------------------------------------------ containerd

/// containerd joins the suite: Diplo's namespace `diplo`, out-of-band checks through
/// `ctr -n diplo`, which names images fully (`docker.io/library/x:latest`).
mod containerd_suite {
    use super::*;
    use diplo_agent::runtime::containerd::{ContainerdRuntime, NAMESPACE};

    const SOCKET: &str = "/run/containerd/containerd.sock";

    struct Ctr;

    impl Ctr {
        fn run(&self, args: &[&str]) -> Result<String, String> {
            let output = Command::new("ctr").arg("-n").arg(NAMESPACE).args(args).output().map_err(|e| format!("ctr {args:?}: {e}"))?;
            if output.status.success() {
                Ok(String::from_utf8_lossy(&output.stdout).into_owned())
            } else {
                Err(format!("ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr).trim()))
            }
        }
    }

    /// `name[:tag]` the way containerd records it.
    fn full(reference: &str) -> String {
        let (first, _) = reference.split_once('/').unwrap_or(("", reference));
        let mut full = if first.contains(['.', ':']) || first == "localhost" {
            reference.to_owned()
        } else if reference.contains('/') {
            format!("docker.io/{reference}")
        } else {
            format!("docker.io/library/{reference}")
        };
        let last = full.rsplit('/').next().unwrap_or_default();
        if !last.contains(':') && !last.contains('@') {
            full.push_str(":latest");
        }
        full
    }

    impl Backdoor for Ctr {
        fn available(&self) -> bool {
            self.run(&["version"]).is_ok()
        }

        fn create_foreign(&self, name: &str, image: &str) -> Result<String, String> {
            self.run(&["run", "-d", &full(image), name, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"])
                .map(|_| name.to_owned())
        }

        fn container_state(&self, id: &str) -> Option<String> {
            let containers = self.run(&["containers", "ls", "-q"]).ok()?;
            if !containers.lines().any(|line| line.trim() == id) {
                return None;
            }
            let tasks = self.run(&["tasks", "ls"]).ok()?;
            let status = tasks.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.first() == Some(&id)).then(|| fields.get(2).map(|s| s.to_ascii_lowercase())).flatten()
            });
            Some(status.unwrap_or_else(|| "created".to_owned()))
        }

        fn remove_container(&self, id: &str) {
            let _ = self.run(&["tasks", "rm", "-f", id]);
            let _ = self.run(&["containers", "rm", id]);
        }

        fn image_exists(&self, reference: &str) -> bool {
            let full = full(reference);
            self.run(&["images", "ls", "-q"]).is_ok_and(|out| out.lines().any(|line| line.trim() == full))
        }

        fn remove_image(&self, reference: &str) {
            let _ = self.run(&["images", "rm", &full(reference)]);
        }

        fn save_image(&self, reference: &str, path: &Path) -> Result<(), String> {
            self.run(&["images", "export", &path.to_string_lossy(), &full(reference)]).map(drop)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn containerd_conforms() {
        let state = tempfile::tempdir().expect("state directory");
        match ContainerdRuntime::connect(SOCKET, RegistryConfig::default(), state.path().join("containerd")).await {
            Ok(runtime) => run_suite(Target::new(runtime).with_backdoor(Ctr)).await,
            Err(error) => diplo_tests::skip_or_fail(&format!("containerd is unavailable, its conformance suite is not run: {error}")),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn containerd_supervises() {
        let state = tempfile::tempdir().expect("state directory");
        match ContainerdRuntime::connect(SOCKET, RegistryConfig::default(), state.path().join("containerd")).await {
            Ok(runtime) => run_supervision(Target::new(runtime)).await,
            Err(error) => diplo_tests::skip_or_fail(&format!("containerd is unavailable, its supervision suite is not run: {error}")),
        }
    }
}

// ------------------------------------------------------------------ workload options

/// Runs `spec` to its exit and returns its stdout (asserting exit code 0).
async fn output_of(ctx: &Ctx, spec: &ContainerSpec) -> String {
    let id = ctx.run(spec).await;
    let info = ctx.wait_for(&id, Duration::from_secs(20), "exited", |c| c.status == ContainerStatus::Exited).await;
    let (out, err) = collect_logs(ctx, &id, LogOptions::default()).await;
    assert_eq!(info.exit_code, 0, "{}: stdout {out:?} stderr {err:?}", spec.name);
    ctx.rt().remove(&id, true).await.expect("remove");
    out
}

/// The memory limit and reservation, CPU quota and pids limit, read from the container's
/// own cgroup (v2 file names, or the v1 controllers' on a v1 host); `cgroupfs-hidden` when
/// the container has no cgroup filesystem mounted.
const CGROUP_LIMITS: &str = "if [ -f /sys/fs/cgroup/memory.max ]; then \
      cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory.low /sys/fs/cgroup/cpu.max /sys/fs/cgroup/pids.max; \
    elif [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then \
      cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.soft_limit_in_bytes; \
      echo \"$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)\"; \
      cat /sys/fs/cgroup/pids/pids.max; \
    else echo cgroupfs-hidden; fi";

/// [`CGROUP_LIMITS`] read on the host for the process `pid`: the cgroups the kernel put
/// it in (`/proc/PID/cgroup`), under the host's `/sys/fs/cgroup`.
fn host_cgroup_limits(pid: u32) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
    let path_of = |controller: &str| {
        cgroups
            .lines()
            .filter_map(|line| line.split_once(':').and_then(|(_, rest)| rest.split_once(':')))
            .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
            .map(|(_, path)| path.to_owned())
    };
    let read = |file: String| std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}")).trim().to_owned();
    let v1 = |controller: &str, file: &str| {
        let path = path_of(controller).unwrap_or_else(|| panic!("no {controller} cgroup in {cgroups}"));
        read(format!("/sys/fs/cgroup/{controller}{path}/{file}"))
    };
    if Path::new("/sys/fs/cgroup/memory").is_dir() {
        format!(
            "{}\n{}\n{} {}\n{}\n",
            v1("memory", "memory.limit_in_bytes"),
            v1("memory", "memory.soft_limit_in_bytes"),
            v1("cpu", "cpu.cfs_quota_us"),
            v1("cpu", "cpu.cfs_period_us"),
            v1("pids", "pids.max")
        )
    } else {
        let path = cgroups.lines().find_map(|line| line.strip_prefix("0::")).expect("a cgroup v2 path").to_owned();
        let file = |name: &str| read(format!("/sys/fs/cgroup{path}/{name}"));
        format!("{}\n{}\n{}\n{}\n", file("memory.max"), file("memory.low"), file("cpu.max"), file("pids.max"))
    }
}

async fn limits_are_in_force_inside(ctx: &Ctx) {
    let spec = ContainerSpec {
        memory_bytes: Some(64 << 20),
        memory_reservation: Some(32 << 20),
        cpu_millis: Some(500),
        pids_limit: Some(64),
        ..ctx.spec("limits", "sleep 60")
    };
    let id = ctx.run(&spec).await;
    let info = ctx.wait_for(&id, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;
    let argv = ["/bin/sh", "-c", CGROUP_LIMITS].map(str::to_owned);
    let output = ctx.rt().exec(&id, &argv).await.expect("exec");
    let mut inside = String::from_utf8_lossy(&output.stdout).into_owned();
    if inside == "cgroupfs-hidden\n" {
        // LXC mounts no cgroup filesystem into the container on a cgroup v1 host; the
        // kernel's record of the container's cgroups is read on the host instead.
        assert_eq!(ctx.rt().runtime(), Runtime::Lxc, "only LXC hides the cgroup filesystem");
        inside = host_cgroup_limits(info.pid.expect("a running container has a pid"));
    }
    let expected = format!("{}\n{}\n50000 100000\n64\n", 64u64 << 20, 32u64 << 20);
    assert_eq!(inside, expected, "cgroup limits of the container (stderr {:?})", String::from_utf8_lossy(&output.stderr));
    ctx.rt().remove(&id, true).await.expect("remove");
}

async fn hardening_is_in_force_inside(ctx: &Ctx) {
    let script = "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; \
        if touch /x 2>/dev/null; then echo root-writable; else echo root-read-only; fi; \
        touch /scratch/y && echo tmpfs-writable; grep ' /scratch ' /proc/mounts";
    let spec = ContainerSpec {
        read_only: true,
        tmpfs: vec!["/scratch:size=1m".to_owned()],
        cap_drop: vec!["ALL".to_owned()],
        cap_add: vec!["NET_BIND_SERVICE".to_owned()],
        no_new_privileges: true,
        ..ctx.spec("hardening", script)
    };
    let out = output_of(ctx, &spec).await;
    let lines: Vec<&str> = out.lines().collect();
    let field = |name: &str| lines.iter().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned();
    // Only CAP_NET_BIND_SERVICE (bit 10).
    assert_eq!(field("CapEff:"), "0000000000000400", "{out}");
    assert_eq!(field("NoNewPrivs:"), "1", "{out}");
    assert!(lines.contains(&"root-read-only"), "the root filesystem is writable: {out}");
    assert!(lines.contains(&"tmpfs-writable"), "{out}");
    let mount = lines.iter().find(|l| l.contains(" /scratch ")).unwrap_or_else(|| panic!("no /scratch mount: {out}"));
    assert!(mount.starts_with("tmpfs /scratch tmpfs ") && mount.contains("size=1024k"), "{mount}");
}

async fn user_workdir_and_entrypoint_replace_the_images(ctx: &Ctx) {
    let spec = ContainerSpec {
        entrypoint: vec!["/bin/sh".to_owned(), "-c".to_owned()],
        command: vec!["echo \"$0\"; id -u; id -g; pwd".to_owned()],
        user: "1234:2345".to_owned(),
        working_dir: "/home".to_owned(),
        ..ctx.spec("identity", "unused")
    };
    let out = output_of(ctx, &spec).await;
    assert_eq!(out, "/bin/sh\n1234\n2345\n/home\n", "entrypoint, user and working directory");
}

async fn stop_signal_and_grace_come_from_the_spec(ctx: &Ctx) {
    // Exits on SIGUSR1 only: a SIGTERM would be ignored until the 10 s grace ran out.
    let usr1 = ContainerSpec {
        stop_signal: "USR1".to_owned(),
        ..ctx.spec("stopsignal", "trap 'exit 0' USR1; trap '' TERM; while true; do sleep 0.1; done")
    };
    // Ignores SIGTERM; its own 1 s grace wins over the 30 s the stop asks.
    let short = ContainerSpec { stop_grace: Some(1), ..ctx.spec("stopgrace", STUBBORN) };
    let usr1_id = ctx.run(&usr1).await;
    let short_id = ctx.run(&short).await;
    for id in [&usr1_id, &short_id] {
        ctx.wait_for(id, Duration::from_secs(10), "running", |c| c.status == ContainerStatus::Running).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let at = Instant::now();
    ctx.rt().stop(&usr1_id, Duration::from_secs(10)).await.expect("stop usr1");
    let took = at.elapsed();
    let info = ctx.rt().inspect(&usr1_id).await.expect("inspect usr1");
    assert!(took < Duration::from_secs(5), "the stop signal was not SIGUSR1: stop took {took:?} ({info:?})");
    assert_eq!((info.status, info.exit_code), (ContainerStatus::Exited, 0), "{info:?}");

    let at = Instant::now();
    ctx.rt().stop(&short_id, Duration::from_secs(30)).await.expect("stop short");
    let took = at.elapsed();
    let info = ctx.rt().inspect(&short_id).await.expect("inspect short");
    assert!(took >= Duration::from_secs(1), "SIGKILL came before the 1 s grace: {took:?}");
    assert!(took < Duration::from_secs(8), "the spec's 1 s grace was not used: stop took {took:?}");
    assert_eq!((info.status, info.exit_code), (ContainerStatus::Exited, 137), "{info:?}");
    for id in [&usr1_id, &short_id] {
        ctx.rt().remove(id, true).await.expect("remove");
    }
}
