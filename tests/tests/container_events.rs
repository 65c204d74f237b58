//! Containers changed outside Diplo reach the control plane through the agent's event
//! path, not its heartbeat: with the default 5 s heartbeat interval, a container killed
//! with `docker kill` shows `exited` through the API within 2 s and one removed with
//! `docker rm` leaves the list within 2 s. Idle heartbeats carry no container: the
//! control plane logs every heartbeat it receives (at debug level: its sequence, whether
//! it is a full list, how many containers and removals it carries, and its encoded size),
//! and the test reads those lines.

use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions, unique_name, wait_until};
use serde_json::json;

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// One heartbeat as the control plane logged it.
#[derive(Debug, Clone, PartialEq)]
struct Beat {
    sequence: u64,
    full: bool,
    containers: usize,
    removed: usize,
    bytes: usize,
}

/// A `key=value` field of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

/// `text` without its ANSI colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every heartbeat of node `node_id` logged so far, in order.
fn heartbeats(control_plane: &ControlPlane, node_id: &str) -> Vec<Beat> {
    plain(&control_plane.stderr())
        .lines()
        .filter(|line| line.contains("heartbeat received") && line.contains(node_id))
        .map(|line| {
            let number = |key: &str| field(line, key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {key} in {line:?}"));
            Beat {
                sequence: number("sequence") as u64,
                full: field(line, "full") == Some("true"),
                containers: number("containers"),
                removed: number("removed"),
                bytes: number("bytes"),
            }
        })
        .collect()
}

/// The container `id` as `GET /api/v1/containers` shows it, if listed.
fn listed(control_plane: &ControlPlane, id: &str) -> Option<serde_json::Value> {
    let list = control_plane.rest_json("/api/v1/containers");
    list.as_array().expect("a list").iter().find(|c| c["id"] == id).cloned()
}

/// Removes the container with Docker's own tool when dropped (never panics).
struct DockerRmOnDrop(String);

impl Drop for DockerRmOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

fn docker(args: &[&str]) {
    let output = Command::new("docker").args(args).output().unwrap_or_else(|e| panic!("cannot run docker: {e}"));
    assert!(output.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_container_killed_outside_diplo_shows_exited_within_2_s_and_idle_heartbeats_carry_no_container() {
    // The default heartbeat interval (5 s): only the event path can be this quick.
    let options = ControlPlaneOptions {
        env: vec![("DIPLO_LOG".into(), "info,sqlx=warn,h2=warn,diplo_control_plane::grpc::agent=debug".into())],
        ..Default::default()
    };
    let control_plane = ControlPlane::start(options);
    let token = control_plane.join_token(&[]);
    let node = unique_name("events");
    let (_agent, info) = control_plane.start_ready_agent(&node, Some(&token));
    let node_id = info["id"].as_str().expect("node id").to_owned();
    let available = info["available"].as_array().expect("available runtimes");
    if !available.iter().any(|r| r == "docker") {
        assert!(!in_ci(), "CI=true but Docker is not available on the node: {available:?}");
        eprintln!("[test] SKIPPED: Docker is not available here (not CI)");
        return;
    }

    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({"image": IMAGE, "name": unique_name("killed-outside"), "runtime_type": "docker",
                    "command": ["/bin/sh", "-c", "while true; do sleep 1; done"]})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let _cleanup = DockerRmOnDrop(id.clone());
    assert_eq!(listed(&control_plane, &id).expect("listed")["status"], "running");

    // Idle: over two heartbeat intervals, the heartbeats carry no container.
    std::thread::sleep(Duration::from_secs(1));
    let seen_before = heartbeats(&control_plane, &node_id).len();
    std::thread::sleep(Duration::from_secs(11));
    let idle: Vec<Beat> = heartbeats(&control_plane, &node_id).split_off(seen_before);
    let periodic: Vec<&Beat> = idle.iter().filter(|beat| !beat.full).collect();
    assert!(periodic.len() >= 2, "at least two heartbeats in 11 s: {idle:?}");
    for beat in &periodic {
        assert_eq!((beat.containers, beat.removed), (0, 0), "an idle heartbeat carries containers: {idle:?}");
        assert!(beat.bytes <= 8, "an idle heartbeat of {} bytes: {idle:?}", beat.bytes);
    }
    assert!(idle.iter().filter(|beat| beat.full).count() <= 1, "full lists come at most every 60 s: {idle:?}");

    // Killed outside Diplo: exited through the API within 2 s.
    let seen_before = heartbeats(&control_plane, &node_id).len();
    docker(&["kill", &id]);
    let killed = Instant::now();
    let container =
        wait_until("the kill to show", Duration::from_secs(10), Duration::from_millis(50), || match listed(&control_plane, &id) {
            Some(container) if container["status"] == "exited" => Ok(container),
            other => Err(format!("{other:?}")),
        });
    let took = killed.elapsed();
    eprintln!("[test] the kill showed after {took:?}");
    assert!(took < Duration::from_secs(2), "the kill showed after {took:?}");
    assert_eq!(container["exit_code"], 137, "{container}");
    let after_kill = heartbeats(&control_plane, &node_id).split_off(seen_before);
    assert!(
        after_kill.iter().any(|beat| !beat.full && beat.containers == 1 && beat.removed == 0),
        "the change came as a delta of one container: {after_kill:?}"
    );

    // Removed outside Diplo: gone from the list within 2 s.
    let seen_before = heartbeats(&control_plane, &node_id).len();
    docker(&["rm", &id]);
    let removed = Instant::now();
    wait_until("the removal to show", Duration::from_secs(10), Duration::from_millis(50), || match listed(&control_plane, &id) {
        None => Ok(()),
        Some(container) => Err(format!("{container}")),
    });
    let took = removed.elapsed();
    eprintln!("[test] the removal showed after {took:?}");
    assert!(took < Duration::from_secs(2), "the removal showed after {took:?}");
    let after_rm = heartbeats(&control_plane, &node_id).split_off(seen_before);
    assert!(after_rm.iter().any(|beat| !beat.full && beat.removed == 1), "the removal came as a delta: {after_rm:?}");
}
