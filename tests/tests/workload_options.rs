//! Limits and hardening options through the whole system — REST and CLI → control plane →
//! agent → the real runtime — checked inside the containers on runtimes other than
//! Docker; bad options refused with 400 (REST) or a failing CLI, naming the option, with
//! nothing created.

use std::time::{Duration, Instant};

use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, RemoveAllContainersOnDrop, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);

/// What the main process reports about itself before idling (it exits 0 on SIGUSR1 only).
const FACTS: &str = "echo \"uid=$(id -u) gid=$(id -g) cwd=$(pwd) greeting=$GREETING\"; \
    grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; \
    if touch /x 2>/dev/null; then echo root=rw; else echo root=ro; fi; \
    touch /scratch/y 2>/dev/null && echo scratch=rw; \
    echo \"memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null)\"; \
    echo \"pids=$(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null)\"; \
    echo facts-done; trap 'exit 0' USR1; trap '' TERM; while true; do sleep 0.1; done";

/// Starts a control plane and one agent; returns them with the node's available runtimes.
fn cluster() -> (ControlPlane, diplo_tests::Agent, Vec<String>) {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (agent, node) = control_plane.start_ready_agent("node-o", Some(&token));
    let available = node["available"].as_array().expect("available").iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect();
    (control_plane, agent, available)
}

fn require(runtime: &str, available: &[String]) -> bool {
    if available.iter().any(|r| r == runtime) {
        return true;
    }
    diplo_tests::skip_or_fail(&format!("{runtime} is not available on the node: {available:?}"));
    false
}

/// The container's log once its main process reported its facts.
fn facts(control_plane: &ControlPlane, id: &str) -> String {
    wait_until("the container's facts", Duration::from_secs(30), POLL, || {
        let logs = control_plane.rest("GET", &format!("/api/v1/containers/{id}/logs"), None);
        if logs.body.contains("facts-done") { Ok(logs.body) } else { Err(logs.body) }
    })
}

/// The container `id` as `GET /api/v1/containers` lists it.
fn container(control_plane: &ControlPlane, id: &str) -> Value {
    let response = control_plane.rest("GET", "/api/v1/containers", None);
    assert_eq!(response.status, 200, "{}", response.body);
    let list = response.json();
    list.as_array().and_then(|all| all.iter().find(|c| c["id"] == id).cloned()).unwrap_or_else(|| panic!("{id} is not listed: {list}"))
}

#[test]
fn rest_options_are_in_force_inside_a_containerd_container() {
    let (control_plane, _agent, available) = cluster();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    if !require("containerd", &available) {
        return;
    }
    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({
            "image": IMAGE,
            "name": unique("opts-ctrd"),
            "runtime_type": "containerd",
            "environment": {"GREETING": "hi"},
            "resources": {"memory": "64m", "memory_reservation": "32m", "cpus": 0.5, "pids_limit": 64},
            "read_only": true,
            "tmpfs": ["/scratch:size=1m"],
            "cap_drop": ["ALL"],
            "cap_add": ["NET_BIND_SERVICE"],
            "no_new_privileges": true,
            "working_dir": "/home",
            "entrypoint": ["/bin/sh", "-c"],
            "command": [FACTS],
            "stop_signal": "SIGUSR1",
        })),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let out = facts(&control_plane, &id);
    for expected in [
        "uid=0 gid=0 cwd=/home greeting=hi",
        "CapEff:\t0000000000000400",
        "NoNewPrivs:\t1",
        "root=ro",
        "scratch=rw",
        &format!("memory={}", 64u64 << 20),
        "pids=64",
    ] {
        assert!(out.contains(expected), "{expected:?} missing from the container's report:\n{out}");
    }
    // The stop signal is SIGUSR1: the process exits 0 at once (SIGTERM would be ignored
    // until the 20 s grace ran out).
    let at = Instant::now();
    let stopped = control_plane.rest("POST", &format!("/api/v1/containers/{id}/stop?grace=20"), None);
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert!(at.elapsed() < Duration::from_secs(10), "stop took {:?}", at.elapsed());
    assert_eq!(container(&control_plane, &id)["exit_code"], 0, "exited by its SIGUSR1 trap");
}

#[test]
fn cli_flags_are_in_force_inside_an_lxc_container() {
    let (control_plane, _agent, available) = cluster();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    if !require("lxc", &available) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("app.env");
    std::fs::write(&env_file, "# settings\nGREETING=from-file\nOTHER=1\n").expect("write the env file");
    let env_file = env_file.to_string_lossy().into_owned();
    let name = unique("opts-lxc");
    let id = control_plane
        .cli_ok(&[
            "containers",
            "run",
            "--name",
            &name,
            "--runtime",
            "lxc",
            "--env-file",
            &env_file,
            "--user",
            "1234:2345",
            "-w",
            "/home",
            "--read-only",
            "--tmpfs",
            "/scratch:size=1m,mode=1777",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--memory",
            "64m",
            "--pids-limit",
            "64",
            "--stop-timeout",
            "1",
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            "--",
            "-c",
            &FACTS.replace("trap 'exit 0' USR1; ", ""),
        ])
        .trim()
        .to_owned();
    let out = facts(&control_plane, &id);
    for expected in
        ["uid=1234 gid=2345 cwd=/home greeting=from-file", "CapEff:\t0000000000000000", "NoNewPrivs:\t1", "root=ro", "scratch=rw"]
    {
        assert!(out.contains(expected), "{expected:?} missing from the container's report:\n{out}");
    }
    // It ignores SIGTERM: its own 1 s stop timeout, not the 30 s asked, bounds the stop.
    let at = Instant::now();
    control_plane.cli_ok(&["containers", "stop", &name, "-t", "30"]);
    let took = at.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "stop took {took:?}");
    assert_eq!(container(&control_plane, &id)["exit_code"], 137, "killed after its 1 s stop timeout");
}

#[test]
fn bad_options_are_refused_naming_the_option_and_nothing_is_created() {
    let (control_plane, _agent, available) = cluster();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let runtime = available.first().cloned().unwrap_or_else(|| "docker".to_owned());
    let cases = [
        (json!({"cap_add": ["SYS_EVERYTHING"]}), "cap_add"),
        (json!({"stop_signal": "SIGNOPE"}), "stop_signal"),
        (json!({"user": "root\nlxc.init.uid = 0"}), "user"),
        (json!({"working_dir": "relative/dir"}), "working_dir"),
        (json!({"tmpfs": ["/run:size=lots"]}), "tmpfs"),
        (json!({"resources": {"pids_limit": 0}}), "pids_limit"),
        (json!({"resources": {"memory": "64m", "memory_reservation": "128m"}}), "memory_reservation"),
    ];
    for (options, field) in cases {
        let mut body = json!({"image": IMAGE, "name": unique("bad-opts"), "runtime_type": runtime});
        for (key, value) in options.as_object().expect("object") {
            body[key] = value.clone();
        }
        let refused = control_plane.rest("POST", "/api/v1/containers", Some(body.clone()));
        assert_eq!(refused.status, 400, "{body}: {}", refused.body);
        assert!(refused.body.contains(field), "{body}: the answer names {field}: {}", refused.body);
    }
    // The CLI (over gRPC) is refused the same way.
    let refused = control_plane.cli(&["containers", "run", "--name", &unique("bad-cli"), "--cap-add", "SYS_EVERYTHING", IMAGE]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cap_add"), "{stderr}");
    let listed = control_plane.rest("GET", "/api/v1/containers", None);
    assert_eq!(listed.json(), json!([]), "nothing was created");
}
