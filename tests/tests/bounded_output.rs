//! Bounded output, on each runtime (each has its own log code): a container that wrote
//! 50 MiB of logs is read again and again by a viewer (default tail, the maximum tail,
//! a followed read) and runs an exec printing 50 MiB; the node's session stays up (no
//! reconnect), the agent's memory stays bounded, a tail above the maximum is refused
//! naming `tail`, and the exec's output is cut at 4 MiB with a note.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use diplo_tests::unique_name as unique;
use diplo_tests::{Agent, ControlPlane, ControlPlaneOptions, RemoveAllContainersOnDrop, http_request, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(500);
/// What the container writes before its marker.
const LOG_BYTES: u64 = 50 * 1024 * 1024;
/// The most the agent's memory may grow over all the reads.
const MAX_GROWTH_KIB: u64 = 100 * 1024;
const DONE: &str = "diplo-log-done";

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// How many sessions the control plane opened so far (it logs each).
fn sessions_opened(control_plane: &ControlPlane) -> usize {
    control_plane.stderr().matches("session opened").count()
}

/// `GET path` with a bearer token, with a time limit of its own.
fn get(control_plane: &ControlPlane, path: &str, token: &str) -> (u16, String) {
    let response = http_request("GET", &control_plane.rest_url(path), Some(&format!("Bearer {token}")), None)
        .unwrap_or_else(|e| panic!("{e}\n{}", control_plane.logs()));
    (response.status, response.body)
}

/// Follows a container's logs over a raw HTTP/1.1 connection until `marker` shows;
/// returns how many bytes came before it (then hangs up, as a reader that leaves).
fn follow_until(control_plane: &ControlPlane, path: &str, token: &str, marker: &str) -> usize {
    let mut stream = std::net::TcpStream::connect(control_plane.rest_addr()).expect("connect to REST");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = stream.read(&mut buffer).unwrap_or_else(|e| panic!("reading the followed logs: {e}; so far {} bytes", received.len()));
        assert!(
            count > 0,
            "the followed logs ended before {marker:?}: {}",
            String::from_utf8_lossy(&received[received.len().saturating_sub(500)..])
        );
        received.extend_from_slice(&buffer[..count]);
        if let Some(at) = received.windows(marker.len()).position(|w| w == marker.as_bytes()) {
            return at;
        }
        assert!(Instant::now() < deadline, "no {marker:?} after {} bytes", received.len());
    }
}

fn bounded_logs_on(runtime: &str) {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let mut agent: Agent = control_plane.start_agent_with_env("big-logs", Some(&token), &[("DIPLO_RUNTIMES", runtime)]);
    // Declared after the agent: dropped (removing the containers) while it still runs.
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let node = wait_until("the node to be ready", Duration::from_secs(60), POLL, || {
        let nodes = control_plane.try_nodes()?;
        match diplo_tests::find_node(&nodes, "big-logs") {
            Some(node) if node["status"] == "ready" && node["os"] != "" => Ok(node.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    let available: Vec<&str> = node["available"].as_array().expect("available").iter().filter_map(Value::as_str).collect();
    if !available.contains(&runtime) {
        diplo_tests::skip_or_fail(&format!("{runtime} is not available on the node: {available:?}"));
        return;
    }

    // 50 MiB of output, then a marker, then quiet.
    let script = format!(
        "yes diplo-bounded-output-line-0123456789abcdefghijklmnopqrstuvwxyz | head -c {LOG_BYTES}; echo; echo {DONE}; exec sleep 3600"
    );
    let name = unique(&format!("big-{runtime}"));
    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({"image": IMAGE, "name": name, "runtime_type": runtime, "command": ["/bin/sh", "-c", script]})),
    );
    assert_eq!(created.status, 201, "create on {runtime}: {}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let admin = control_plane.admin_token();
    let logs = format!("/api/v1/containers/{id}/logs");
    wait_until("the container to write its 50 MiB", Duration::from_secs(300), Duration::from_secs(1), || {
        let (status, body) = get(&control_plane, &format!("{logs}?tail=1"), &admin);
        if status == 200 && body.contains(DONE) { Ok(()) } else { Err(format!("HTTP {status}: {}", &body[..body.len().min(300)])) }
    });

    let viewer = control_plane.cli_ok(&["api-token", "create", "--role", "viewer", "--name", "log-reader"]).trim().to_owned();
    let pid = agent.process().pid();
    let sessions = sessions_opened(&control_plane);
    assert!(sessions >= 1, "{}", control_plane.logs());
    let rss_before = memory_kib(pid, "VmRSS");

    for round in 0..3 {
        // No tail: the last 1,000 lines, not the whole log.
        let (status, body) = get(&control_plane, &logs, &viewer);
        assert_eq!(status, 200, "round {round}: {}", &body[..body.len().min(500)]);
        assert!(body.ends_with(&format!("{DONE}\n")), "round {round}: ends with {:?}", &body[body.len().saturating_sub(200)..]);
        assert_eq!(body.lines().count(), 1000, "round {round}: the default tail");

        // The maximum tail.
        let (status, body) = get(&control_plane, &format!("{logs}?tail=10000"), &viewer);
        assert_eq!(status, 200, "round {round}: {}", &body[..body.len().min(500)]);
        assert_eq!(body.lines().count(), 10_000, "round {round}: the maximum tail");
        assert!(body.ends_with(&format!("{DONE}\n")));

        // Beyond it: refused, naming the field.
        let (status, body) = get(&control_plane, &format!("{logs}?tail=10001"), &viewer);
        assert_eq!(status, 400, "round {round}: {body}");
        assert!(body.contains("tail") && body.contains("10000"), "{body}");

        // Followed: the default tail first, not 50 MiB.
        let before_marker = follow_until(&control_plane, &format!("{logs}?follow=true"), &viewer, DONE);
        assert!(before_marker < 1024 * 1024, "round {round}: {before_marker} bytes came before the marker");

        // An exec printing 50 MiB: cut at 4 MiB, with a note.
        let exec = control_plane.rest(
            "POST",
            &format!("/api/v1/containers/{id}/exec"),
            Some(json!({"argv": ["/bin/sh", "-c", format!("yes 0123456789abcdef | head -c {LOG_BYTES}")]})),
        );
        assert_eq!(exec.status, 200, "round {round}: {}", &exec.body[..exec.body.len().min(500)]);
        let exec = exec.json();
        let stdout = exec["stdout"].as_str().expect("stdout");
        assert!(stdout.ends_with("[output truncated after 4 MiB]\n"), "ends with {:?}", &stdout[stdout.len().saturating_sub(100)..]);
        assert!(stdout.len() <= 4 * 1024 * 1024 + 64, "{} bytes", stdout.len());
        assert_eq!(exec["exit_code"], 0, "{}", exec["stderr"]);
    }

    // Over gRPC (the CLI) too: the default tail, and the maximum enforced naming `tail`.
    let shown = control_plane.cli_ok(&["containers", "logs", &name]);
    assert_eq!(shown.lines().count(), 1000, "the CLI's default tail");
    let refused = control_plane.cli(&["containers", "logs", "--tail", "10001", &name]);
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && message.contains("invalid tail"), "{message}");

    let peak = memory_kib(pid, "VmHWM");
    eprintln!("[test] {runtime}: the agent's VmRSS was {rss_before} KiB before the reads, its VmHWM {peak} KiB after");
    assert!(
        peak.saturating_sub(rss_before) < MAX_GROWTH_KIB,
        "the agent's memory grew from {rss_before} KiB (VmRSS) to a peak of {peak} KiB (VmHWM)\n{}",
        agent.logs()
    );
    assert_eq!(sessions_opened(&control_plane), sessions, "the node's session was reopened\n{}\n{}", control_plane.logs(), agent.logs());
    assert!(!agent.stderr().contains("session lost"), "the agent lost its session\n{}", agent.logs());
    assert!(agent.process().try_exit().is_none(), "the agent exited\n{}", agent.logs());
}

#[test]
fn fifty_mib_of_logs_on_docker_stay_bounded() {
    bounded_logs_on("docker");
}

#[test]
fn fifty_mib_of_logs_on_podman_stay_bounded() {
    bounded_logs_on("podman");
}

#[test]
fn fifty_mib_of_logs_on_containerd_stay_bounded() {
    bounded_logs_on("containerd");
}

#[test]
fn fifty_mib_of_logs_on_lxc_stay_bounded() {
    bounded_logs_on("lxc");
}
