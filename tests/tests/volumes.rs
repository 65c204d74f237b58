//! Named volumes end to end with two real agents on containerd (each agent keeps its
//! volumes in its own state directory, so the two nodes really hold different volumes):
//! volume operations through the CLI and REST on a containerd node, and sticky
//! placement — a deployment mounting a volume that lives on node B lands on B although A
//! is emptier, and a second replica follows it there.

use std::time::Duration;

use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);

/// Node ids of the deployment's running instances.
fn running_nodes(deployment: &Value) -> Vec<String> {
    deployment["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|i| i["status"] == "running" && i["desired"] == "run")
                .filter_map(|i| i["node"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_deployment_follows_its_named_volume_to_the_node_holding_it_on_containerd() {
    if !std::path::Path::new("/run/containerd/containerd.sock").exists() {
        return diplo_tests::skip_or_fail("containerd is unavailable: the volume placement test needs it");
    }
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let env = [("DIPLO_RUNTIMES", "containerd")];
    let (name_a, name_b) = (unique("vol-a"), unique("vol-b"));
    let (_agent_a, node_a) = control_plane.start_ready_agent_with_env(&name_a, Some(&token), &env);
    let (_agent_b, node_b) = control_plane.start_ready_agent_with_env(&name_b, Some(&token), &env);
    let (id_a, id_b) = (node_a["id"].as_str().expect("id").to_owned(), node_b["id"].as_str().expect("id").to_owned());

    // B is busier than A: a plain deployment would go to A first.
    let filler = unique("filler");
    let _filler = DeleteDeploymentOnDrop(&control_plane, filler.clone());
    let body = json!({"name": filler, "image": IMAGE, "replicas": 1, "command": ["sleep", "3600"], "constraints": {"node": name_b}});
    let created = control_plane.rest("POST", "/api/v1/deployments", Some(body));
    assert!(created.status < 300, "{}", created.body);
    wait_until("the filler to run on B", Duration::from_secs(60), POLL, || {
        let deployment = control_plane.rest_json(&format!("/api/v1/deployments/{filler}"));
        if running_nodes(&deployment) == [id_b.clone()] { Ok(()) } else { Err(deployment.to_string()) }
    });

    // Volume operations on a containerd node through the CLI: create, ls, inspect.
    let volume = unique("data");
    let on = ["--node", name_b.as_str(), "--runtime", "containerd", "-o", "json"];
    let cli_json = |args: &[&str]| -> Value {
        let all: Vec<&str> = args.iter().chain(&on).copied().collect();
        serde_json::from_str(&control_plane.cli_ok(&all)).expect("JSON")
    };
    let made = cli_json(&["volumes", "create", &volume, "--label", "team=e2e"]);
    assert_eq!(
        (made["name"].as_str(), made["managed"].as_bool(), made["driver"].as_str()),
        (Some(volume.as_str()), Some(true), Some("local"))
    );
    assert!(made["mountpoint"].as_str().is_some_and(|m| m.contains(&volume)), "{made:#}");
    let listed = cli_json(&["volumes", "ls"]);
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|v| v["name"] == volume.as_str())), "{listed:#}");
    // A holds no such volume.
    let on_a = control_plane.rest("GET", &format!("/api/v1/volumes/{volume}?node={name_a}&runtime=containerd"), None);
    assert_eq!(on_a.status, 404, "{}", on_a.body);

    // Two replicas mounting the volume: both on B, where its data lives, none on the emptier A.
    let app = unique("app");
    let _app = DeleteDeploymentOnDrop(&control_plane, app.clone());
    let script = "echo written-on-$(hostname) >> /data/log; exec sleep 3600";
    let body = json!({
        "name": app, "image": IMAGE, "replicas": 2, "runtime_type": "containerd",
        "command": ["/bin/sh", "-c", script], "volumes": [format!("{volume}:/data")],
    });
    let created = control_plane.rest("POST", "/api/v1/deployments", Some(body));
    assert!(created.status < 300, "{}", created.body);
    wait_until("both replicas to run on B", Duration::from_secs(90), POLL, || {
        let deployment = control_plane.rest_json(&format!("/api/v1/deployments/{app}"));
        let nodes = running_nodes(&deployment);
        assert!(!nodes.contains(&id_a), "a replica went to A, away from its volume: {deployment}");
        if nodes.len() == 2 { Ok(()) } else { Err(deployment.to_string()) }
    });

    // The volume is in use: inspect names its containers and removing it is refused (409).
    let inspected = control_plane.rest_json(&format!("/api/v1/volumes/{volume}?node={name_b}&runtime=containerd"));
    assert_eq!(inspected["containers"].as_array().map(Vec::len), Some(2), "{inspected:#}");
    let refused = control_plane.rest("DELETE", &format!("/api/v1/volumes/{volume}?node={name_b}&runtime=containerd"), None);
    assert_eq!(refused.status, 409, "{}", refused.body);

    // A deployment of the volume constrained to A is refused, the reason naming B.
    let stray = unique("stray");
    let _stray = DeleteDeploymentOnDrop(&control_plane, stray.clone());
    let refused = control_plane.rest(
        "POST",
        "/api/v1/deployments",
        Some(json!({"name": stray, "image": IMAGE, "runtime_type": "containerd", "constraints": {"node": name_a},
                    "command": ["sleep", "5"], "volumes": [format!("{volume}:/data")]})),
    );
    assert!(refused.status == 409 || refused.status == 400, "{}", refused.body);
    assert!(refused.body.contains(&volume) && refused.body.contains(&name_b), "the reason names the volume and its node: {}", refused.body);

    // Once unused, the volume goes through REST.
    let deleted = control_plane.rest("DELETE", &format!("/api/v1/deployments/{app}"), None);
    assert!(deleted.status < 300, "{}", deleted.body);
    wait_until("the volume to be free and removed", Duration::from_secs(60), POLL, || {
        let removed = control_plane.rest("DELETE", &format!("/api/v1/volumes/{volume}?node={name_b}&runtime=containerd"), None);
        if removed.status == 204 { Ok(()) } else { Err(removed.body) }
    });
}
