//! LibGo's compute API against a real agent on Docker: an instance created on a chosen
//! backend and node and one scheduled, both listed as (direct) instances and counted in
//! `cluster/status`; a deployment instance's memory updated through PUT and seen in force
//! by `docker inspect`; a backend's info; `/api/status` applications; capability refusals.

use std::time::Duration;

use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, RemoveAllContainersOnDrop, unique_name, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);

/// Docker's memory limit of a container, in bytes.
fn docker_memory(id: &str) -> Option<u64> {
    let output =
        std::process::Command::new("docker").args(["inspect", "--format", "{{.HostConfig.Memory}}", id]).output().expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn counts(control_plane: &ControlPlane) -> (u64, u64) {
    let status = control_plane.rest_json("/api/v1/compute/cluster/status");
    (status["instances"]["total"].as_u64().unwrap_or(u64::MAX), status["instances"]["running"].as_u64().unwrap_or(u64::MAX))
}

#[test]
fn instances_are_created_listed_counted_updated_and_backends_described() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let node_name = unique_name("compute");
    let (_agent, node) = control_plane.start_ready_agent_with_env(&node_name, Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let node_id = node["id"].as_str().expect("node id").to_owned();
    let _containers = RemoveAllContainersOnDrop(&control_plane);
    assert_eq!(counts(&control_plane), (0, 0), "nothing runs yet");

    // ---- POST /api/v1/compute/instances: on a chosen backend and node, and scheduled ----
    let chosen = unique_name("ci-chosen");
    let created = control_plane.rest(
        "POST",
        "/api/v1/compute/instances",
        Some(json!({"name": chosen, "image": IMAGE, "backend": "docker", "node": node_name, "command": ["sleep", "1000"],
                    "resources": {"memory": "48m"}, "restart_policy": "unless-stopped"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let chosen_instance = created.json();
    assert_eq!(chosen_instance["direct"], true, "{chosen_instance}");
    assert_eq!(chosen_instance["runtime"], "docker", "{chosen_instance}");
    assert_eq!(chosen_instance["node"], node_id.as_str(), "{chosen_instance}");
    assert_eq!(chosen_instance["node_name"], node_name.as_str(), "{chosen_instance}");
    assert_eq!(chosen_instance["status"], "running", "{chosen_instance}");
    let chosen_id = chosen_instance["id"].as_str().expect("id").to_owned();
    assert_eq!(docker_memory(&chosen_id), Some(48 << 20), "the memory limit is in force");
    let scheduled = unique_name("ci-sched");
    let created = control_plane.rest(
        "POST",
        "/api/v1/compute/instances",
        Some(json!({"name": scheduled, "image": IMAGE, "command": ["sleep", "1000"]})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["node"], node_id.as_str(), "the scheduler placed it on the only node");

    // Bad bodies name the field; an unknown backend or node is refused.
    for (body, status, needle) in [
        (json!({"name": unique_name("x"), "image": IMAGE, "backend": "kvm"}), 400, "backend"),
        (json!({"name": unique_name("x"), "image": IMAGE, "resources": {"memory": "lots"}}), 400, "resources.memory"),
        (json!({"name": unique_name("x"), "image": IMAGE, "node": "no-such-node"}), 404, "no-such-node"),
        (json!({"name": chosen, "image": IMAGE}), 409, &chosen),
    ] {
        let refused = control_plane.rest("POST", "/api/v1/compute/instances", Some(body.clone()));
        assert_eq!(refused.status, status, "{body}: {}", refused.body);
        assert!(refused.body.contains(needle), "{body}: {}", refused.body);
    }

    // ---- listed as direct instances, counted in cluster/status ----
    let listed = control_plane.rest_json("/api/v1/compute/instances");
    let direct: Vec<&Value> = listed.as_array().expect("a list").iter().filter(|i| i["direct"] == true).collect();
    let names: Vec<&str> = direct.iter().filter_map(|i| i["name"].as_str()).collect();
    assert!(names.contains(&chosen.as_str()) && names.contains(&scheduled.as_str()), "{listed}");
    assert_eq!(counts(&control_plane), (2, 2), "two direct containers, both running");
    let shown = control_plane.rest_json(&format!("/api/v1/compute/instances/{chosen_id}"));
    assert_eq!((shown["direct"].as_bool(), shown["name"].as_str()), (Some(true), Some(chosen.as_str())), "{shown}");

    // ---- a direct container's lifecycle through the instance routes (by name here) ----
    for (action, status) in [("stop", "exited"), ("start", "running"), ("restart", "running")] {
        let answer = control_plane.rest("PUT", &format!("/api/v1/compute/instances/{chosen}/{action}"), None);
        assert_eq!(answer.status, 200, "{action}: {}", answer.body);
        let answer = answer.json();
        let seen = (answer["direct"].as_bool(), answer["id"].as_str(), answer["status"].as_str());
        assert_eq!(seen, (Some(true), Some(chosen_id.as_str()), Some(status)), "{action}: {answer}");
    }

    // ---- a deployment: its instance counted too, its application in /api/status ----
    let app = unique_name("ci-app");
    let _deployment = DeleteDeploymentOnDrop(&control_plane, app.clone());
    let deployed = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": app, "image": IMAGE, "replicas": 1, "command": ["sleep", "1000"], "resources": {"memory": "64m"}})),
    );
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let instance = wait_until("the deployment's instance to run", Duration::from_secs(90), POLL, || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{app}"));
        let running: Vec<Value> =
            d["instances"].as_array().cloned().unwrap_or_default().into_iter().filter(|i| i["status"] == "running").collect();
        if d["status"] == "running" && running.len() == 1 { Ok(running[0].clone()) } else { Err(d.to_string()) }
    });
    let instance_id = instance["id"].as_str().expect("instance id").to_owned();
    assert_eq!(counts(&control_plane), (3, 3), "two direct containers and one deployment instance");
    let status = control_plane.rest_json("/api/status");
    let application = status["applications"].as_array().and_then(|a| a.iter().find(|x| x["name"] == app.as_str())).cloned();
    let application = application.unwrap_or_else(|| panic!("{app} not in applications: {status}"));
    assert_eq!((application["image"].as_str(), application["replicas"].as_u64()), (Some(IMAGE), Some(1)), "{application}");
    assert_eq!(application["status"], "running", "{application}");

    // ---- PUT /api/v1/compute/instances/{id}: new memory, in force after the rollout ----
    let path = format!("/api/v1/compute/instances/{instance_id}");
    let updated = control_plane.rest("PUT", &path, Some(json!({"resources": {"memory": "96m"}, "restart_policy": "always"})));
    assert_eq!(updated.status, 202, "{}", updated.body);
    let updated = updated.json();
    assert_eq!((updated["deployment"].as_str(), updated["revision"].as_u64()), (Some(app.as_str()), Some(2)), "{updated}");
    let instance_id = wait_until("the new memory limit in force", Duration::from_secs(120), POLL, || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{app}"));
        let running: Vec<Value> = d["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i["status"] == "running" && i["revision"] == 2 && i["desired"] == "run")
            .collect();
        let memory = running.first().and_then(|i| i["container_id"].as_str()).and_then(docker_memory);
        match running.first().and_then(|i| i["id"].as_str()) {
            Some(id) if d["status"] == "running" && running.len() == 1 && memory == Some(96 << 20) => Ok(id.to_owned()),
            _ => Err(format!("{memory:?} {d}")),
        }
    });
    // The updated instance was replaced by one of the new revision: the old id is gone.
    let gone = control_plane.rest("PUT", &path, Some(json!({"restart_policy": "always"})));
    assert_eq!(gone.status, 404, "{}", gone.body);
    for (id, body, status, needle) in [
        (chosen_id.as_str(), json!({"resources": {"memory": "96m"}}), 409, "direct container"),
        (instance_id.as_str(), json!({}), 400, "nothing to update"),
        (instance_id.as_str(), json!({"restart_policy": "sometimes"}), 400, "restart_policy"),
        (instance_id.as_str(), json!({"memory": "96m"}), 400, "memory"),
        ("no-such-instance", json!({"restart_policy": "always"}), 404, "no-such-instance"),
    ] {
        let refused = control_plane.rest("PUT", &format!("/api/v1/compute/instances/{id}"), Some(body.clone()));
        assert_eq!(refused.status, status, "{id} {body}: {}", refused.body);
        assert!(refused.body.contains(needle), "{id} {body}: {}", refused.body);
    }

    // ---- GET /api/v1/compute/backends/{backend}/info ----
    let docker = control_plane.rest_json("/api/v1/compute/backends/docker/info");
    assert_eq!(docker["backend"], "docker", "{docker}");
    assert_eq!(docker["available"], true, "{docker}");
    let nodes = docker["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 1, "{docker}");
    assert_eq!(nodes[0]["node"], node_name.as_str(), "{docker}");
    assert!(nodes[0]["version"].as_str().is_some_and(|v| !v.is_empty()), "{docker}");
    assert_eq!(docker["instances"]["total"], 3, "{docker}");
    let capabilities: Vec<&str> = docker["capabilities"].as_array().expect("capabilities").iter().filter_map(Value::as_str).collect();
    assert!(capabilities.contains(&"healthcheck") && capabilities.contains(&"resource_limits"), "{docker}");
    // `/api/docker/status` reports the same table.
    let runtime_status = control_plane.rest_json("/api/docker/status");
    assert_eq!(runtime_status["capabilities"], docker["capabilities"], "{runtime_status}");
    let unknown = control_plane.rest("GET", "/api/v1/compute/backends/kvm/info", None);
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("kvm"), "{}", unknown.body);

    // ---- a health check out of bounds is refused naming its field ----
    let refused = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": unique_name("ci-hc"), "image": IMAGE, "runtime_type": "docker", "command": ["sleep", "1000"],
                    "healthcheck": {"test": ["true"], "interval": 5, "timeout": 1, "retries": 1000}})),
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("healthcheck.retries"), "{}", refused.body);

    // ---- DELETE of a direct container through the instance route: gone at once (200) ----
    let path = format!("/api/v1/compute/instances/{scheduled}");
    let deleted = control_plane.rest("DELETE", &path, None);
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!((deleted.json()["direct"].as_bool(), deleted.json()["name"].as_str()), (Some(true), Some(scheduled.as_str())));
    for method in ["GET", "DELETE"] {
        let gone = control_plane.rest(method, &path, None);
        assert_eq!(gone.status, 404, "{method} after the removal: {}", gone.body);
    }
    assert!(!control_plane.rest_json("/api/v1/containers").to_string().contains(scheduled.as_str()), "the container is no longer listed");
}
