//! Commands always end, with a real agent and Docker:
//! * a client that disconnects in the middle of `PUT …/instances/{id}/restart` does not
//!   take the instance out of reconciliation: stopped behind Diplo's back afterwards,
//!   it is started again;
//! * a node whose session closes while a command waits for it fails that command at
//!   once (503 within seconds), not at the command timeout, and a reader following
//!   that node's logs sees its stream end with a note saying why.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, unique_name, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);

fn docker(args: &[&str]) -> String {
    let output = std::process::Command::new("docker").args(args).output().expect("run docker");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes a Docker container by name when dropped.
struct RemoveContainerOnDrop(String);

impl Drop for RemoveContainerOnDrop {
    fn drop(&mut self) {
        // Not `docker()`, which panics when docker cannot run: never panic in a guard.
        let _ = std::process::Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// `METHOD url` as the admin with a client-side time limit: `Err` when it runs out (the
/// client then hangs up).
fn request_with_limit(
    control_plane: &ControlPlane,
    method: &str,
    path: &str,
    body: Option<Value>,
    limit: Duration,
) -> Result<(u16, String), String> {
    let url = control_plane.rest_url(path);
    let token = control_plane.admin_token();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(limit).no_proxy().build().map_err(|e| e.to_string())?;
        let mut request = client.request(method, &url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().map_err(|e| e.to_string())?))
    })
    .join()
    .expect("the HTTP thread")
}

#[test]
fn a_client_that_disconnects_mid_restart_leaves_the_instance_reconciled() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (_agent, _node) = control_plane.start_ready_agent_with_env("cmd-1", Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let name = unique_name("cmdend");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    // PID 1 ignores SIGTERM: a restart waits for the stop grace period (10 s), then kills.
    let stubborn = ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 1; done"];
    let created = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": name, "image": IMAGE, "replicas": 1, "command": stubborn, "restart_policy": "always"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let instance = wait_until("the instance to run", Duration::from_secs(90), POLL, || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
        match d["instances"].as_array().map(Vec::as_slice) {
            Some([only]) if only["status"] == "running" && d["status"] == "running" => Ok(only.clone()),
            _ => Err(d.to_string()),
        }
    });
    let id = instance["id"].as_str().expect("instance id").to_owned();
    let shown = control_plane.rest_json(&format!("/api/v1/compute/instances/{id}"));
    let container = shown["container"]["id"].as_str().expect("container id").to_owned();
    let started_at = shown["container"]["started_at"].clone();

    // The client gives up (and hangs up) after 2 s, in the middle of the restart.
    let started = Instant::now();
    let hung_up =
        request_with_limit(&control_plane, "PUT", &format!("/api/v1/compute/instances/{id}/restart"), None, Duration::from_secs(2));
    assert!(hung_up.is_err(), "the restart was expected to outlast the client: {hung_up:?}");
    assert!(started.elapsed() < Duration::from_secs(8));

    // The restart itself completes on the node.
    wait_until("the restart to complete on the node", Duration::from_secs(60), POLL, || {
        let state = docker(&["inspect", "--format", "{{.State.Running}} {{.State.StartedAt}}", &container]);
        let shown = control_plane.rest_json(&format!("/api/v1/compute/instances/{id}"));
        if state.starts_with("true") && shown["container"]["started_at"] != started_at && shown["status"] == "running" {
            Ok(())
        } else {
            Err(format!("docker: {state}; {shown}"))
        }
    });

    // Stopped behind Diplo's back: the reconciler still looks after the instance and
    // starts it again (restart policy `always`).
    docker(&["stop", "-t", "1", &container]);
    assert_eq!(docker(&["inspect", "--format", "{{.State.Running}}", &container]), "false");
    wait_until("the reconciler to start the instance again", Duration::from_secs(60), POLL, || {
        let running = docker(&["inspect", "--format", "{{.State.Running}}", &container]);
        let shown = control_plane.rest_json(&format!("/api/v1/compute/instances/{id}"));
        if running == "true" && shown["status"] == "running" { Ok(()) } else { Err(format!("docker running: {running}; {shown}")) }
    });
    // And an operator may act on it again at once.
    let stopped = control_plane.rest("PUT", &format!("/api/v1/compute/instances/{id}/stop?grace=1"), None);
    assert_eq!(stopped.status, 200, "{}", stopped.body);
}

#[test]
fn a_session_that_closes_fails_its_pending_command_at_once() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (mut agent, _node) = control_plane.start_ready_agent_with_env("cmd-2", Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let name = unique_name("pending");
    let _cleanup = RemoveContainerOnDrop(name.clone());
    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({"image": IMAGE, "name": name, "runtime_type": "docker", "command": ["sleep", "3600"]})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();

    // A reader following the container's (quiet) logs.
    let mut follower = std::net::TcpStream::connect(control_plane.rest_addr()).expect("connect to REST");
    follower.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    write!(
        follower,
        "GET /api/v1/containers/{id}/logs?follow=true HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        control_plane.admin_token()
    )
    .expect("send the follow request");
    let mut head = [0u8; 12];
    follower.read_exact(&mut head).expect("the follow answer starts");
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));

    // An exec that takes a minute; the agent dies while it runs.
    let exec = {
        let url = format!("/api/v1/containers/{id}/exec");
        let control_plane = &control_plane;
        std::thread::scope(|scope| {
            let waiting = scope.spawn(move || {
                let sent = Instant::now();
                let outcome =
                    request_with_limit(control_plane, "POST", &url, Some(json!({"argv": ["sleep", "60"]})), Duration::from_secs(150));
                (outcome, Instant::now(), sent)
            });
            std::thread::sleep(Duration::from_secs(3));
            let killed = Instant::now();
            agent.kill();
            let (outcome, answered, sent) = waiting.join().expect("the exec thread");
            assert!(answered > killed, "the exec ended before the agent was killed ({:?} after it was sent): {outcome:?}", answered - sent);
            (outcome, answered - killed)
        })
    };
    let (outcome, after_kill) = exec;
    let (status, body) = outcome.unwrap_or_else(|e| panic!("no answer ({e}) after {after_kill:?}\n{}", control_plane.logs()));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("disconnected"), "{body}");
    assert!(after_kill < Duration::from_secs(10), "the exec failed {after_kill:?} after the agent died");

    // The followed logs ended too, saying why (the session closing or the agent's
    // output stream failing, whichever the control plane noticed first).
    let mut rest = Vec::new();
    let read = follower.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(read.is_ok(), "the followed logs did not end: {read:?} after {rest:?}");
    assert!(rest.contains("[output ended: "), "{rest}");
}
