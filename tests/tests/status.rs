//! `GET /api/status` reports what the cluster has: `system.runtime` is derived from the
//! runtimes its ready nodes offer, and `applications` lists the deployments.

use std::time::Duration;

use diplo_tests::{ControlPlane, ControlPlaneOptions, unique_name, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

fn system_runtime(control_plane: &ControlPlane) -> Value {
    control_plane.rest_json("/api/status")["system"]["runtime"].clone()
}

#[test]
fn status_derives_the_runtime_kind_and_lists_the_deployments() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    assert_eq!(system_runtime(&control_plane), "none", "no node, no runtime");
    let token = control_plane.join_token(&[]);
    let (_docker, node) =
        control_plane.start_ready_agent_with_env(&unique_name("only-docker"), Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    if node["available"] != json!(["docker"]) {
        diplo_tests::skip_or_fail(&format!("docker is not available on the node: {node}"));
        return;
    }
    assert_eq!(system_runtime(&control_plane), "docker", "one runtime: its name");
    assert_eq!(control_plane.rest_json("/api/status")["applications"], json!([]));

    let name = unique_name("status-app");
    let created = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": name, "image": IMAGE, "replicas": 0, "runtime_type": "docker"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let status = control_plane.rest_json("/api/status");
    let applications = status["applications"].as_array().expect("applications is an array");
    assert_eq!(applications.len(), 1, "{status:#}");
    assert_eq!(applications[0]["name"], name.as_str(), "{status:#}");
    assert_eq!(applications[0]["replicas"], 0, "{status:#}");
    assert_eq!(applications[0]["runtime"], "docker", "{status:#}");
    assert!(applications[0]["status"].as_str().is_some_and(|s| !s.is_empty()), "{status:#}");

    let (_lxc, node) = control_plane.start_ready_agent_with_env(&unique_name("only-lxc"), Some(&token), &[("DIPLO_RUNTIMES", "lxc")]);
    if node["available"] != json!(["lxc"]) {
        diplo_tests::skip_or_fail(&format!("lxc is not available on the node: {node}"));
        return;
    }
    wait_until("system.runtime to become hybrid", Duration::from_secs(30), Duration::from_millis(250), || {
        let kind = system_runtime(&control_plane);
        if kind == "hybrid" { Ok(()) } else { Err(kind.to_string()) }
    });
    let deleted = control_plane.rest("DELETE", &format!("/api/v1/deployments/{name}"), None);
    assert!(deleted.status < 300, "{}", deleted.body);
}
