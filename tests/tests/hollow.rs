//! `diplo-hollow` end to end: 40 simulated nodes in one process join with one
//! multi-use token and are ready with their mixed fingerprints (as the ClusterService
//! shows them through `diplo nodes ls`); a deployment pinned to containerd runs on the
//! simulated runtime of matching nodes only; the process killed and started again on the
//! same data directory comes back as the same 40 nodes, with no new join.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, Process, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const COUNT: usize = 40;
const POLL: Duration = Duration::from_millis(300);

/// Waits until `COUNT` nodes are ready; returns them by name.
fn all_ready(control_plane: &ControlPlane, hollow: &mut Process) -> BTreeMap<String, Value> {
    wait_until(&format!("{COUNT} hollow nodes ready"), Duration::from_secs(40), POLL, || {
        if let Some(status) = hollow.try_exit() {
            panic!("diplo-hollow exited with {status}:\n{}", hollow.logs());
        }
        let nodes = control_plane.try_nodes()?;
        let ready: BTreeMap<String, Value> = nodes
            .iter()
            .filter(|n| n["status"] == "ready" && n["os"] == "linux")
            .map(|n| (n["name"].as_str().unwrap_or_default().to_owned(), n.clone()))
            .collect();
        if ready.len() == COUNT && nodes.len() == COUNT {
            Ok(ready)
        } else {
            Err(format!("{} ready of {} nodes", ready.len(), nodes.len()))
        }
    })
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|list| list.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

#[test]
fn forty_hollow_nodes_join_run_a_pinned_deployment_and_come_back_as_the_same_nodes() {
    let started = Instant::now();
    let mut options = ControlPlaneOptions::fast(Duration::from_secs(10));
    // Forty joins from one address within seconds.
    options.env.push(("DIPLO_JOIN_RATE_LIMIT".into(), "1000".into()));
    let control_plane = ControlPlane::start(options);
    let token = control_plane.join_token(&[]);
    let data_dir = control_plane.agent_data_dir("hollow");
    let mut hollow = control_plane.start_hollow(COUNT as u32, Some(&token), &data_dir);

    let nodes = all_ready(&control_plane, &mut hollow);
    let names: Vec<&String> = nodes.keys().collect();
    assert_eq!(names.first().map(|n| n.as_str()), Some("hollow-00001"));
    assert_eq!(names.last().map(|n| n.as_str()), Some("hollow-00040"));
    // The mix, deterministic by index.
    let pi = &nodes["hollow-00001"];
    assert_eq!((pi["arch"].as_str(), strings(&pi["available"])), (Some("arm64"), vec!["docker".to_owned(), "containerd".to_owned()]));
    assert!(pi["raspberry_pi_model"].as_str().is_some_and(|m| m.starts_with("Raspberry Pi 4")), "{pi}");
    let armv7 = &nodes["hollow-00003"];
    assert_eq!((armv7["arch"].as_str(), strings(&armv7["available"])), (Some("arm"), vec!["lxc".to_owned()]));
    let kvm = &nodes["hollow-00004"];
    assert_eq!((kvm["virtualization"].as_str(), kvm["arch"].as_str()), (Some("kvm"), Some("amd64")));
    assert_eq!(strings(&kvm["available"]), ["docker", "podman"]);
    assert_eq!(strings(&nodes["hollow-00005"]["available"]).len(), 4, "bare metal has all four");
    let archs: BTreeSet<&str> = nodes.values().filter_map(|n| n["arch"].as_str()).collect();
    assert_eq!(archs, BTreeSet::from(["amd64", "arm", "arm64"]));
    // Each runtime says it is simulated.
    for node in nodes.values() {
        for report in node["runtimes"].as_array().expect("runtimes").iter().filter(|r| r["available"] == true) {
            assert!(report["version"].as_str().is_some_and(|v| v.starts_with("hollow")), "{node}");
        }
    }
    // Forty distinct nodes, forty identities on disk.
    let ids: BTreeSet<String> = nodes.values().filter_map(|n| n["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(ids.len(), COUNT);
    eprintln!("[test] {COUNT} hollow nodes ready after {:.1?}", started.elapsed());

    // 30 replicas pinned to containerd: an amd64-only image, so only amd64 nodes with
    // containerd (the bare-metal ones) fit; the Pis have containerd but not the arch.
    let name = unique("hollow-web");
    let cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let created = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": name, "image": IMAGE, "replicas": 30, "runtime_type": "containerd", "command": ["sleep", "3600"]})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let matching: BTreeSet<&str> = nodes
        .values()
        .filter(|n| n["arch"] == "amd64" && strings(&n["available"]).iter().any(|r| r == "containerd"))
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(matching.len(), COUNT / 5, "the bare-metal fifth of the mix");
    let deployment = wait_until("30 replicas running", Duration::from_secs(40), POLL, || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
        let running = d["instances"].as_array().map_or(0, |list| list.iter().filter(|i| i["status"] == "running").count());
        if d["status"] == "running" && running == 30 { Ok(d) } else { Err(format!("{running} running: {}", d["status"])) }
    });
    let instances = deployment["instances"].as_array().expect("instances");
    let used: BTreeSet<&str> = instances.iter().filter_map(|i| i["node"].as_str()).collect();
    assert!(used.is_subset(&matching), "instances only on amd64 nodes with containerd: {used:?} vs {matching:?}");
    assert!(used.len() > 1, "spread over several nodes: {used:?}");
    assert!(instances.iter().all(|i| i["runtime"] == "containerd"), "{deployment}");
    // The container is the simulated runtime's: an exec says nothing ran.
    let container = instances[0]["container_id"].as_str().expect("container id");
    let exec = control_plane.rest("POST", &format!("/api/v1/containers/{container}/exec"), Some(json!({"argv": ["hostname"]})));
    assert_eq!(exec.status, 200, "{}", exec.body);
    assert!(exec.json()["stdout"].as_str().is_some_and(|out| out.contains("simulated")), "{}", exec.body);
    drop(cleanup);

    // Killed and started again without a token: the same 40 nodes, no new one.
    hollow.kill();
    wait_until("the killed nodes to fall silent", Duration::from_secs(20), POLL, || {
        let nodes = control_plane.try_nodes()?;
        let ready = nodes.iter().filter(|n| n["status"] == "ready").count();
        if ready == 0 { Ok(()) } else { Err(format!("{ready} still ready")) }
    });
    let mut hollow = control_plane.start_hollow(COUNT as u32, None, &data_dir);
    let again = all_ready(&control_plane, &mut hollow);
    let ids_again: BTreeSet<String> = again.values().filter_map(|n| n["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(ids_again, ids, "the same node ids");
    for (name, node) in &again {
        assert_eq!(node["joined_at"], nodes[name]["joined_at"], "{name} did not join again");
    }
    eprintln!("[test] done after {:.1?}", started.elapsed());
}
