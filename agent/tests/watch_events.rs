//! The agent's event path against each real runtime (Docker, Podman, containerd, LXC):
//! [`watch_runtime`] follows the driver's event stream, inspects the container an event
//! names and queues what it found. A container started, then killed outside Diplo with
//! the runtime's own tool (`docker kill`, `podman kill`, `ctr task kill`, `lxc-stop -k`),
//! then removed, must come out as `running`, `exited` and gone, each within a few
//! seconds.
//!
//! A runtime that does not answer skips its test with a loud message, or fails it under
//! `CI=true`. Containers are named `diplo-watch-<random>-<runtime>` and removed at the
//! end, also when the test panics.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diplo_agent::fingerprint::ProbeConfig;
use diplo_agent::observer::{Observation, watch_runtime};
use diplo_agent::port_publisher::PortPublisher;
use diplo_agent::runtime::containerd::{ContainerdRuntime, NAMESPACE};
use diplo_agent::runtime::docker::DockerRuntime;
use diplo_agent::runtime::lxc::{self, LxcRuntime};
use diplo_agent::runtime::{ContainerRuntime, RegistryConfig, RuntimeError, podman};
use diplo_api::container::{ContainerSpec, ContainerStatus, LABEL_NODE};
use diplo_api::runtime::Runtime;
use tokio::sync::mpsc;

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const LXC_PATH: &str = "/var/lib/lxc";
/// How long each change may take to come out of the event path.
const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_events_follow_a_kill_and_a_removal_outside_diplo() {
    let socket = ProbeConfig::from_env().docker_socket;
    let driver = Arc::new(DockerRuntime::connect(&socket, RegistryConfig::default(), Runtime::Docker));
    lifecycle(driver, |id: &str| run("docker", &["kill", id]), Some("docker")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_events_follow_a_kill_and_a_removal_outside_diplo() {
    let socket = ProbeConfig::from_env().podman_socket;
    let driver = Arc::new(podman::connect(&socket, RegistryConfig::default()));
    lifecycle(driver, |id: &str| run("podman", &["kill", id]), Some("podman")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_events_follow_a_kill_outside_diplo_and_a_removal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let driver =
        match ContainerdRuntime::connect("/run/containerd/containerd.sock", RegistryConfig::default(), dir.path().join("state")).await {
            Ok(driver) => Arc::new(driver),
            Err(error) => return diplo_tests::skip_or_fail(&format!("containerd is unavailable, its event test is not run: {error}")),
        };
    lifecycle(driver, |id: &str| run("ctr", &["--namespace", NAMESPACE, "task", "kill", "--signal", "SIGKILL", id]), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lxc_events_follow_a_kill_outside_diplo_and_a_removal() {
    let report = lxc::probe(Duration::from_secs(10)).await;
    if !report.available {
        return diplo_tests::skip_or_fail(&format!("LXC is unavailable, its event test is not run: {}", report.error));
    }
    let cache = tempfile::tempdir().expect("tempdir");
    let driver = Arc::new(LxcRuntime::new(
        PathBuf::from(LXC_PATH),
        cache.path().to_path_buf(),
        RegistryConfig::default(),
        Arc::new(PortPublisher::new()),
    ));
    lifecycle(driver, |name: &str| run("lxc-stop", &["-P", LXC_PATH, "-n", name, "-k"]), None).await;
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(output.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Removes the container through its driver when dropped, even after a panic (on a
/// thread of its own: the test's executor may be gone); never panics.
struct RemoveOnDrop(Arc<dyn ContainerRuntime>, String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let (driver, name) = (Arc::clone(&self.0), self.1.clone());
        let cleaner = std::thread::spawn(move || {
            let Ok(executor) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            executor.block_on(async {
                match driver.remove(&name, true).await {
                    Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
                    Err(error) => eprintln!("cleanup: cannot remove {name}: {error}"),
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// Waits up to [`WITHIN`] for an observation that `wanted` accepts; panics naming what
/// came instead.
async fn expect(rx: &mut mpsc::Receiver<Observation>, what: &str, wanted: impl Fn(&Observation) -> bool) -> Duration {
    let started = Instant::now();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WITHIN, async {
        while let Some(observation) = rx.recv().await {
            if wanted(&observation) {
                return true;
            }
            seen.push(observation);
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no observation of {what} within {WITHIN:?}; saw {seen:?}");
    started.elapsed()
}

/// Starts a container of node `node_id` under [`watch_runtime`], kills it with `kill`
/// (outside Diplo), removes it (with `<remove_with> rm`, else through the driver), and
/// checks that each step is observed.
async fn lifecycle(driver: Arc<dyn ContainerRuntime>, kill: impl Fn(&str), remove_with: Option<&str>) {
    let runtime = driver.runtime();
    if let Err(error) = driver.version().await {
        return diplo_tests::skip_or_fail(&format!("{runtime} is unavailable, its event test is not run: {error}"));
    }
    driver.ensure_image(IMAGE).await.unwrap_or_else(|e| panic!("{runtime}: pull {IMAGE}: {e}"));
    let node_id = format!("node-{:08x}", rand::random::<u32>());
    let name = format!("diplo-watch-{:08x}-{runtime}", rand::random::<u32>());
    let (tx, mut rx) = mpsc::channel(256);
    let watcher = tokio::spawn(watch_runtime(Arc::clone(&driver), node_id.clone(), tx));
    // Give the subscription a moment to be in place at the runtime.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let spec = ContainerSpec {
        name: name.clone(),
        image: IMAGE.to_owned(),
        command: vec!["/bin/sh".to_owned(), "-c".to_owned(), "while true; do sleep 1; done".to_owned()],
        labels: [(LABEL_NODE.to_owned(), node_id.clone())].into(),
        ..Default::default()
    };
    let _cleanup = RemoveOnDrop(Arc::clone(&driver), name.clone());
    let id = driver.create(&spec).await.unwrap_or_else(|e| panic!("{runtime}: create: {e}"));
    driver.start(&id).await.unwrap_or_else(|e| panic!("{runtime}: start: {e}"));
    let is = |status: ContainerStatus| {
        let id = id.clone();
        move |o: &Observation| matches!(o, Observation::Upsert(r, info) if *r == runtime && info.id == id && info.status == status)
    };
    let took = expect(&mut rx, "the start", is(ContainerStatus::Running)).await;
    println!("{runtime}: started, observed after {took:?}");

    kill(&id);
    let took = expect(&mut rx, "the kill outside Diplo", is(ContainerStatus::Exited)).await;
    println!("{runtime}: killed outside Diplo, observed after {took:?}");

    match remove_with {
        Some(program) => run(program, &["rm", &id]),
        None => driver.remove(&id, false).await.unwrap_or_else(|e| panic!("{runtime}: remove: {e}")),
    }
    let gone = |o: &Observation| matches!(o, Observation::Gone(r, gone) if *r == runtime && *gone == id);
    let took = expect(&mut rx, "the removal", gone).await;
    println!("{runtime}: removed, observed after {took:?}");
    assert!(!watcher.is_finished(), "the watcher stopped");
    watcher.abort();
}
