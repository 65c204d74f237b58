//! Containers through the whole system — REST and CLI → control plane → agent session →
//! the real runtime — on each of Docker, Podman, containerd and LXC; bad input; and an
//! agent killed with SIGKILL re-adopting its containers without restarting them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, RemoveAllContainersOnDrop, free_port, http_get, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);

/// A shell command serving `text` over HTTP on port 8080 and logging a marker first.
fn httpd(text: &str) -> Vec<String> {
    let script = format!("mkdir -p /www && echo {text} > /www/index.html && echo started-{text} && exec httpd -f -p 8080 -h /www");
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// Starts a control plane and one agent; returns them with the node's available runtimes.
fn cluster() -> (ControlPlane, diplo_tests::Agent, Vec<String>) {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (agent, node) = control_plane.start_ready_agent("node-c", Some(&token));
    let available = node["available"].as_array().expect("available").iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect();
    (control_plane, agent, available)
}

/// Whether this runtime is to be tested: always in CI (where missing is a failure),
/// elsewhere only when the node offers it.
fn wanted(runtime: &str, available: &[String]) -> bool {
    if available.iter().any(|r| r == runtime) {
        return true;
    }
    diplo_tests::skip_or_fail(&format!("{runtime} is not available on the node: {available:?}"));
    false
}

fn get_text(port: u16) -> Result<String, String> {
    let response = http_get(&format!("http://127.0.0.1:{port}/"), None)?;
    if response.status == 200 { Ok(response.body) } else { Err(format!("HTTP {}: {}", response.status, response.body)) }
}

fn containers(control_plane: &ControlPlane) -> Vec<Value> {
    let response = control_plane.rest("GET", "/api/v1/containers", None);
    assert_eq!(response.status, 200, "{}", response.body);
    response.json().as_array().cloned().unwrap_or_default()
}

fn lifecycle_on(runtime: &str) {
    let (control_plane, _agent, available) = cluster();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    if !wanted(runtime, &available) {
        return;
    }
    let port = free_port();
    let name = unique(&format!("web-{runtime}"));
    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({
            "image": IMAGE,
            "name": name,
            "ports": { port.to_string(): "8080" },
            "environment": { "GREETING": "hi" },
            "restart_policy": "no",
            "command": httpd(runtime),
            "runtime_type": runtime,
        })),
    );
    assert_eq!(created.status, 201, "create on {runtime}: {}", created.body);
    let container = created.json();
    assert_eq!(container["runtime"], runtime, "{container}");
    assert_eq!(container["name"], name.as_str());
    assert_eq!(container["status"], "running", "{container}");
    let id = container["id"].as_str().expect("id").to_owned();

    // The published port answers on the host.
    let body = wait_until(&format!("{runtime} httpd on :{port}"), Duration::from_secs(30), POLL, || get_text(port));
    assert_eq!(body.trim(), runtime);

    // Listed, by REST and by the CLI.
    assert!(containers(&control_plane).iter().any(|c| c["id"] == id.as_str()));
    let listed = control_plane.cli_ok(&["containers", "ls", "-o", "json"]);
    assert!(listed.contains(&id), "{listed}");

    // Logs hold its output.
    let logs = wait_until("logs", Duration::from_secs(15), POLL, || {
        let logs = control_plane.cli_ok(&["containers", "logs", &name]);
        if logs.contains(&format!("started-{runtime}")) { Ok(logs) } else { Err(logs) }
    });
    assert!(logs.contains(&format!("started-{runtime}")));
    let rest_logs = control_plane.rest("GET", &format!("/api/v1/containers/{id}/logs"), None);
    assert!(rest_logs.body.contains(&format!("started-{runtime}")), "{}", rest_logs.body);

    // Followed logs stream what the container writes after the request started.
    let (url_host, path) = (control_plane.rest_addr(), format!("/api/v1/containers/{id}/logs?follow=true"));
    let mut follower = std::net::TcpStream::connect(url_host).expect("connect to REST");
    follower.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(
        follower,
        "GET {path} HTTP/1.1\r\nHost: {url_host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        control_plane.admin_token()
    )
    .expect("send");
    std::thread::sleep(Duration::from_millis(500));
    let marker = format!("followed-{runtime}");
    let wrote = control_plane.rest(
        "POST",
        &format!("/api/v1/containers/{id}/exec"),
        Some(json!({ "argv": ["sh", "-c", format!("echo {marker} > /proc/1/fd/1")] })),
    );
    assert_eq!(wrote.status, 200, "{}", wrote.body);
    let mut streamed = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&streamed).contains(&marker) {
        match follower.read(&mut buffer) {
            Ok(0) => panic!("the followed log ended early: {}", String::from_utf8_lossy(&streamed)),
            Ok(n) => streamed.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("no {marker} in the followed log ({e}): {}", String::from_utf8_lossy(&streamed)),
        }
    }
    drop(follower);

    // Exec returns stdout, stderr and the exit code (the CLI exits with it).
    let exec = control_plane.rest(
        "POST",
        &format!("/api/v1/containers/{id}/exec"),
        Some(json!({ "argv": ["sh", "-c", "echo out; echo err >&2; echo $GREETING; exit 3"] })),
    );
    assert_eq!(exec.status, 200, "{}", exec.body);
    let exec = exec.json();
    assert_eq!(exec["exit_code"], 3, "{exec}");
    assert_eq!(exec["stdout"], "out\nhi\n", "{exec}");
    assert_eq!(exec["stderr"], "err\n", "{exec}");
    let cli_exec = control_plane.cli(&["containers", "exec", &name, "sh", "-c", "exit 5"]);
    assert_eq!(cli_exec.status.code(), Some(5));

    // Stop, start again (serves again), restart.
    let stopped = control_plane.rest("POST", &format!("/api/v1/containers/{id}/stop?grace=2"), None);
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert_ne!(stopped.json()["status"], "running", "{}", stopped.body);
    assert!(get_text(port).is_err(), "still serving after stop");
    let started = control_plane.rest("POST", &format!("/api/v1/containers/{id}/start"), None);
    assert_eq!(started.status, 200, "{}", started.body);
    wait_until(&format!("{runtime} httpd after start"), Duration::from_secs(30), POLL, || get_text(port));
    let restarted = control_plane.cli(&["containers", "restart", &name]);
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    wait_until(&format!("{runtime} httpd after restart"), Duration::from_secs(30), POLL, || get_text(port));

    // Removing a running container needs force; then nothing is left.
    let refused = control_plane.rest("DELETE", &format!("/api/v1/containers/{id}"), None);
    assert!(refused.status >= 400, "removing a running container without force: {}", refused.body);
    let removed = control_plane.rest("DELETE", &format!("/api/v1/containers/{id}?force=true"), None);
    assert_eq!(removed.status, 204, "{}", removed.body);
    assert!(!containers(&control_plane).iter().any(|c| c["id"] == id.as_str()));
    wait_until("the port to close", Duration::from_secs(10), POLL, || match get_text(port) {
        Ok(body) => Err(format!("still answering: {body}")),
        Err(_) => Ok(()),
    });
}

#[test]
fn container_lifecycle_on_docker() {
    lifecycle_on("docker");
}

#[test]
fn container_lifecycle_on_podman() {
    lifecycle_on("podman");
}

#[test]
fn container_lifecycle_on_containerd() {
    lifecycle_on("containerd");
}

#[test]
fn container_lifecycle_on_lxc() {
    lifecycle_on("lxc");
}

#[test]
fn bad_container_requests_get_clear_errors_and_leave_nothing_behind() {
    let (control_plane, _agent, available) = cluster();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let runtime =
        if available.iter().any(|r| r == "docker") { "docker" } else { available.first().map(String::as_str).unwrap_or("docker") };
    let create = |body: Value| control_plane.rest("POST", "/api/v1/containers", Some(body));

    let unknown = create(json!({"image": "127.0.0.1:5000/diplo/no-such-image:latest", "name": unique("ghost"), "runtime_type": runtime}));
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("no-such-image"), "names the image: {}", unknown.body);

    let bad_name = create(json!({"image": IMAGE, "name": "bad name!"}));
    assert_eq!(bad_name.status, 400, "{}", bad_name.body);
    assert!(bad_name.body.contains("name"), "{}", bad_name.body);

    let bad_port = create(json!({"image": IMAGE, "name": "p", "ports": {"99999": "80"}}));
    assert_eq!(bad_port.status, 400, "{}", bad_port.body);
    assert!(bad_port.body.contains("ports"), "{}", bad_port.body);

    let unknown_field = create(json!({"image": IMAGE, "name": "f", "colour": "blue"}));
    assert_eq!(unknown_field.status, 400, "{}", unknown_field.body);
    assert!(unknown_field.body.contains("colour"), "{}", unknown_field.body);

    let bad_runtime = create(json!({"image": IMAGE, "name": "r", "runtime_type": "rkt"}));
    assert_eq!(bad_runtime.status, 400, "{}", bad_runtime.body);
    assert!(bad_runtime.body.contains("runtime_type"), "{}", bad_runtime.body);

    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a port");
    let port = taken.local_addr().expect("addr").port();
    let busy = create(json!({
        "image": IMAGE, "name": unique("busy"), "ports": {port.to_string(): "8080"},
        "command": httpd("busy"), "runtime_type": runtime,
    }));
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert!(busy.body.contains(&port.to_string()), "names the port: {}", busy.body);

    let missing = control_plane.rest("POST", "/api/v1/containers/does-not-exist/start", None);
    assert_eq!(missing.status, 404, "{}", missing.body);

    // Nothing half-created: the agent reports no container (give it a heartbeat).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(containers(&control_plane), Vec::<Value>::new());
}

#[test]
fn a_killed_agent_readopts_its_containers_without_restarting_them() {
    let (control_plane, mut agent, available) = cluster();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    // One container per runtime (all four), so that re-adoption is shown on each.
    let runtimes: Vec<&str> = ["docker", "containerd", "lxc", "podman"].into_iter().filter(|r| wanted(r, &available)).collect();
    let mut ports = BTreeMap::new();
    for runtime in &runtimes {
        let port = free_port();
        let created = control_plane.rest(
            "POST",
            "/api/v1/containers",
            Some(json!({
                "image": IMAGE, "name": unique(&format!("keep-{runtime}")), "ports": {port.to_string(): "8080"},
                "command": httpd(runtime), "runtime_type": runtime,
            })),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        ports.insert(created.json()["id"].as_str().expect("id").to_owned(), port);
    }
    let before: BTreeMap<String, Value> =
        containers(&control_plane).into_iter().map(|c| (c["id"].as_str().unwrap_or("").to_owned(), c)).collect();
    assert_eq!(before.len(), runtimes.len(), "{before:?}");
    for port in ports.values() {
        wait_until("httpd before the kill", Duration::from_secs(30), POLL, || get_text(*port));
    }

    agent.process().kill();
    agent = control_plane.start_agent("node-c", None);
    // The new agent has a session once a command reaches it; its next heartbeat then
    // replaces what the control plane knew with what it observes now.
    let probe_id = before.keys().next().expect("a container").clone();
    wait_until("a session with the restarted agent", Duration::from_secs(60), POLL, || {
        if let Some(status) = agent.process().try_exit() {
            panic!("the restarted agent exited with {status}:\n{}", agent.logs());
        }
        let exec = control_plane.rest("POST", &format!("/api/v1/containers/{probe_id}/exec"), Some(json!({"argv": ["true"]})));
        if exec.status == 200 { Ok(()) } else { Err(exec.body) }
    });
    std::thread::sleep(Duration::from_secs(3));
    let after = containers(&control_plane);
    assert_eq!(after.len(), before.len(), "none lost, none duplicated: {after:?}");
    for container in &after {
        let id = container["id"].as_str().expect("id");
        let old = before.get(id).unwrap_or_else(|| panic!("a new container appeared: {container}"));
        assert_eq!(container["pid"], old["pid"], "same process, not restarted: {container} vs {old}");
        assert_eq!(container["started_at"], old["started_at"], "not restarted: {container} vs {old}");
        assert_eq!(container["status"], "running");
        let port = ports[id];
        let body = wait_until("httpd after re-adoption", Duration::from_secs(30), POLL, || get_text(port));
        assert!(!body.is_empty());
    }
    for id in before.keys() {
        let removed = control_plane.rest("DELETE", &format!("/api/v1/containers/{id}?force=true"), None);
        assert_eq!(removed.status, 204, "{}", removed.body);
    }
}
