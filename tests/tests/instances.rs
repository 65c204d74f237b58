//! Instances by id (LibGo's `/api/v1/compute/instances/{id}`) with a real agent and
//! Docker: usage sampled on the node, restart in place, stop (the deployment's restart
//! policy `always` starts it again), delete (the deployment replaces the instance with a
//! new one), unknown ids.

use std::time::Duration;

use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, docker_containers_of, unique_name, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);

/// Whether Docker says the container runs.
fn docker_running(id: &str) -> bool {
    let output =
        std::process::Command::new("docker").args(["inspect", "--format", "{{.State.Running}}", id]).output().expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim() == "true"
}

/// The deployment's one running instance (of desired `run`), once there is exactly one.
fn the_running_instance(control_plane: &ControlPlane, name: &str, what: &str) -> Value {
    wait_until(what, Duration::from_secs(90), POLL, || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
        let instances = d["instances"].as_array().cloned().unwrap_or_default();
        let running: Vec<&Value> = instances.iter().filter(|i| i["status"] == "running" && i["desired"] == "run").collect();
        if d["status"] == "running" && instances.len() == 1 && running.len() == 1 { Ok(running[0].clone()) } else { Err(d.to_string()) }
    })
}

#[test]
fn an_instance_is_sampled_restarted_stopped_and_replaced() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(6)));
    let token = control_plane.join_token(&[]);
    let (_agent, node) = control_plane.start_ready_agent_with_env("i1", Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let node_id = node["id"].as_str().expect("node id").to_owned();
    let name = unique_name("inst");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let httpd = ["/bin/sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"];
    let created = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": name, "image": IMAGE, "replicas": 1, "command": httpd, "restart_policy": "always"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let instance = the_running_instance(&control_plane, &name, "the instance to run");
    let id = instance["id"].as_str().expect("instance id").to_owned();
    let path = |suffix: &str| format!("/api/v1/compute/instances/{id}{suffix}");

    // One instance: its deployment, node, runtime and container.
    let shown = control_plane.rest_json(&path(""));
    assert_eq!(shown["deployment"], name.as_str(), "{shown}");
    assert_eq!(shown["node"], node_id.as_str(), "{shown}");
    assert_eq!(shown["runtime"], "docker", "{shown}");
    assert_eq!(shown["container"]["status"], "running", "{shown}");
    let container_id = shown["container"]["id"].as_str().expect("container id").to_owned();

    // Usage, sampled on the node.
    let usage = control_plane.rest_json(&path("/usage"));
    assert!(usage["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{usage}");
    for key in ["cpu_percent", "memory_limit_bytes", "network_rx_bytes", "network_tx_bytes"] {
        assert!(usage[key].is_number(), "{key}: {usage}");
    }
    assert_eq!(usage["instance_id"], id.as_str());

    // Restart in place: same instance, same container, a new start time.
    let restarted = control_plane.rest("PUT", &path("/restart"), None);
    assert_eq!(restarted.status, 200, "{}", restarted.body);
    let restarted = restarted.json();
    assert_eq!(restarted["container"]["status"], "running", "{restarted}");
    assert_eq!(restarted["container"]["id"], container_id.as_str());
    assert_ne!(restarted["container"]["started_at"], shown["container"]["started_at"], "{restarted}");

    // Stop: the container stops (the instance is not running); after the reconciler's
    // back-off, the restart policy (always) starts the same container again.
    let stopped = control_plane.rest("PUT", &path("/stop?grace=1"), None);
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    let stopped = stopped.json();
    assert_eq!(stopped["container"]["status"], "exited", "{stopped}");
    assert_eq!(stopped["status"], "failed", "{stopped}");
    assert!(!docker_running(&container_id), "Docker still runs {container_id}");
    assert_ne!(control_plane.rest_json(&path(""))["status"], "running");
    wait_until("the reconciler to start it again", Duration::from_secs(60), POLL, || {
        let shown = control_plane.rest_json(&path(""));
        let started_again = shown["container"]["started_at"] != restarted["container"]["started_at"];
        if shown["status"] == "running" && shown["container"]["status"] == "running" && started_again && docker_running(&container_id) {
            Ok(())
        } else {
            Err(shown.to_string())
        }
    });
    assert_eq!(docker_containers_of(&name), vec![container_id.clone()], "started again, not recreated");

    // Delete: the instance goes; the deployment (still 1 replica) gets a new one.
    let deleted = control_plane.rest("DELETE", &path(""), None);
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    assert_eq!(deleted.json()["desired"], "remove", "{}", deleted.body);
    let replacement = wait_until("a replacement instance", Duration::from_secs(90), POLL, || {
        let gone = control_plane.rest("GET", &path(""), None).status == 404;
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
        let instances = d["instances"].as_array().cloned().unwrap_or_default();
        let containers = docker_containers_of(&name);
        match instances.as_slice() {
            [only] if gone && only["id"] != id.as_str() && only["status"] == "running" && containers.len() == 1 => Ok(only.clone()),
            _ => Err(format!("gone: {gone}, containers: {containers:?}, {d}")),
        }
    });
    assert!(!docker_containers_of(&name).contains(&container_id), "the old container was removed");
    let new_id = replacement["id"].as_str().expect("id");
    assert_eq!(control_plane.rest_json(&format!("/api/v1/compute/instances/{new_id}"))["status"], "running");

    // Unknown ids: 404 everywhere.
    for (method, suffix) in [("GET", ""), ("DELETE", ""), ("PUT", "/start"), ("PUT", "/stop"), ("PUT", "/restart"), ("GET", "/usage")] {
        let response = control_plane.rest(method, &format!("/api/v1/compute/instances/no-such-instance{suffix}"), None);
        assert_eq!(response.status, 404, "{method} {suffix}: {}", response.body);
        assert!(response.body.contains("no-such-instance"), "{}", response.body);
    }
}
