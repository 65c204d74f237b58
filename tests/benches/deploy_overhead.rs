//! Deploy overhead: `diplo deploy` of one replica until it runs, against `docker run -d` of
//! the same image on the same node, side by side.
//!
//! ```sh
//! scripts/setup-host                      # Docker and the local registry's busybox
//! cargo bench -p diplo-tests --bench deploy_overhead            # N=20 each
//! DIPLO_BENCH_SAMPLES=40 cargo bench -p diplo-tests --bench deploy_overhead
//! ```
//!
//! A `diplo-control-plane dev` (release build, SQLite, its own agent for this host) runs
//! for the whole bench. Each sample times one whole CLI process, as a user would:
//! `diplo deploy NAME --image IMG --runtime docker -- sleep 3600` (it returns once the
//! deployment is `running`, i.e. the container runs and the control plane has recorded
//! it), and `docker run -d IMG sleep 3600` (it returns once the container started). The
//! two alternate, so that load drifts hit both; the deployment is deleted (and its
//! container gone) and the Docker container removed between samples, untimed.
//! Printed: median and p90 (nearest rank) of each side and the overhead of the medians.

use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions, docker_containers_of, unique_name, wait_until};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

fn main() {
    let samples: usize = std::env::var("DIPLO_BENCH_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let pulled = Command::new("docker").args(["pull", "-q", IMAGE]).output().expect("run docker");
    assert!(pulled.status.success(), "docker pull {IMAGE}: {} (run scripts/setup-host)", String::from_utf8_lossy(&pulled.stderr));

    let control_plane = ControlPlane::start(ControlPlaneOptions { dev: true, ..Default::default() });
    wait_until("the local node to be ready", Duration::from_secs(60), Duration::from_millis(200), || {
        let nodes = control_plane.try_nodes()?;
        nodes.iter().any(|n| n["status"] == "ready").then_some(()).ok_or_else(|| format!("{nodes:?}"))
    });
    // One deployment first: the image's platforms get cached, connections warm.
    let warm = unique_name("warm");
    deploy(&control_plane, &warm);
    delete(&control_plane, &warm);

    let (mut diplo, mut docker) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        let name = unique_name("bench");
        diplo.push(deploy(&control_plane, &name));
        delete(&control_plane, &name);

        let name = unique_name("bench-docker");
        let started = Instant::now();
        let run = Command::new("docker").args(["run", "-d", "--name", &name, IMAGE, "sleep", "3600"]).output().expect("docker run");
        docker.push(started.elapsed());
        assert!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    }
    let (diplo_median, diplo_p90) = summary(&mut diplo);
    let (docker_median, docker_p90) = summary(&mut docker);
    let overhead = (diplo_median.as_secs_f64() / docker_median.as_secs_f64() - 1.0) * 100.0;
    println!(
        "deploy overhead, N={samples}: diplo deploy median {diplo_median:.1?} p90 {diplo_p90:.1?}; docker run -d median {docker_median:.1?} p90 {docker_p90:.1?}; overhead {overhead:+.1} % (median)"
    );
}

/// Times `diplo deploy` of one replica until it runs.
fn deploy(control_plane: &ControlPlane, name: &str) -> Duration {
    let started = Instant::now();
    let output = control_plane.cli(&["deploy", name, "--image", IMAGE, "--runtime", "docker", "--", "sleep", "3600"]);
    let elapsed = started.elapsed();
    assert!(output.status.success(), "diplo deploy: {}", String::from_utf8_lossy(&output.stderr));
    elapsed
}

/// Deletes a deployment and waits until its container is gone.
fn delete(control_plane: &ControlPlane, name: &str) {
    control_plane.cli_ok(&["apps", "rm", name]);
    wait_until("the deployment's container to go", Duration::from_secs(30), Duration::from_millis(50), || {
        docker_containers_of(name).is_empty().then_some(()).ok_or_else(|| "still there".to_owned())
    });
}

/// Median and p90 (nearest rank).
fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let rank = |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    (rank(0.5), rank(0.9))
}
