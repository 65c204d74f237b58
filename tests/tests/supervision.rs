//! Health checks and restart policies through the whole system — gRPC create → control
//! plane → agent session → the agent's supervisor on containerd and LXC, which have no
//! health checks or restart policies of their own — with health shown by REST and by
//! `diplo containers ls`.

use std::time::Duration;

use diplo_api::pb;
use diplo_api::pb::container_service_client::ContainerServiceClient;
use diplo_tests::fake_node::{admin_identity, connect};
use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, RemoveAllContainersOnDrop, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);

/// Creates and starts a container on `runtime` whose health check passes while
/// `/tmp/ok` exists (the container creates it at start), restarted by policy `always`.
async fn create_checked(control_plane: &ControlPlane, runtime: pb::RuntimeKind, name: &str) -> String {
    let mut client = ContainerServiceClient::new(connect(control_plane, Some(admin_identity(control_plane))).await);
    let spec = pb::ContainerSpec {
        name: name.to_owned(),
        image: IMAGE.to_owned(),
        command: ["/bin/sh", "-c", "touch /tmp/ok; trap 'exit 0' TERM; while true; do sleep 0.1; done"].map(str::to_owned).to_vec(),
        restart_policy: "always".into(),
        healthcheck: Some(pb::HealthCheck {
            test: vec!["CMD-SHELL".into(), "test -f /tmp/ok".into()],
            interval_seconds: 1,
            timeout_seconds: 2,
            retries: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let request = pb::CreateContainerRequest { spec: Some(spec), runtime: runtime as i32, start: true, ..Default::default() };
    let created = client.create_container(request).await.unwrap_or_else(|status| panic!("create on {runtime:?}: {status:?}"));
    created.into_inner().id
}

fn container(control_plane: &ControlPlane, name: &str) -> Result<Value, String> {
    let listed = control_plane.rest_json("/api/v1/containers?limit=1000");
    listed.as_array().and_then(|all| all.iter().find(|c| c["name"] == name).cloned()).ok_or_else(|| format!("{name} not listed: {listed}"))
}

#[test]
fn health_shows_and_an_unhealthy_container_is_restarted_on_containerd_and_lxc() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (_agent, node) = control_plane.start_ready_agent("node-sup", Some(&token));
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let available: Vec<&str> = node["available"].as_array().expect("available").iter().filter_map(Value::as_str).collect();
    let mut runtimes = Vec::new();
    for (runtime, kind) in [("containerd", pb::RuntimeKind::Containerd), ("lxc", pb::RuntimeKind::Lxc)] {
        if available.contains(&runtime) {
            runtimes.push((runtime, kind, unique(&format!("sup-{runtime}"))));
        } else {
            diplo_tests::skip_or_fail(&format!("{runtime} is not available on the node: {available:?}"));
        }
    }
    let executor = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    for (_, kind, name) in &runtimes {
        executor.block_on(create_checked(&control_plane, *kind, name));
    }

    // Health reaches the control plane: REST and the CLI's HEALTH column show it.
    for (runtime, _, name) in &runtimes {
        wait_until(&format!("{name} healthy on {runtime}"), Duration::from_secs(60), POLL, || {
            let shown = container(&control_plane, name)?;
            if shown["health"] == "healthy" && shown["runtime"] == *runtime { Ok(()) } else { Err(shown.to_string()) }
        });
    }
    let listed = control_plane.cli_ok(&["containers", "ls", "-o", "table"]);
    let header: Vec<&str> = listed.lines().next().unwrap_or_default().split_whitespace().collect();
    let health_column = header.iter().position(|h| *h == "HEALTH").unwrap_or_else(|| panic!("no HEALTH column:\n{listed}"));
    for (runtime, _, name) in &runtimes {
        let row: Vec<&str> = listed
            .lines()
            .find(|line| line.split_whitespace().nth(1) == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not listed:\n{listed}"))
            .split_whitespace()
            .collect();
        assert_eq!((row[health_column], row[health_column + 1]), ("healthy", *runtime), "{listed}");
    }

    // The check starts failing: the container turns unhealthy and its policy restarts it;
    // the new run creates its file again and is healthy again.
    for (_, _, name) in &runtimes {
        let removed = control_plane.rest("POST", &format!("/api/v1/containers/{name}/exec"), Some(json!({"argv": ["rm", "/tmp/ok"]})));
        assert_eq!(removed.status, 200, "{}", removed.body);
        assert_eq!(removed.json()["exit_code"], 0, "{}", removed.body);
    }
    for (runtime, _, name) in &runtimes {
        let shown = wait_until(&format!("{name} restarted by its policy on {runtime}"), Duration::from_secs(60), POLL, || {
            let shown = container(&control_plane, name)?;
            let restarted = shown["restart_count"].as_u64().is_some_and(|count| count >= 1);
            if restarted && shown["status"] == "running" && shown["health"] == "healthy" { Ok(shown) } else { Err(shown.to_string()) }
        });
        assert_eq!(shown["restart_count"], 1, "restarted once: {shown}");
    }
}
