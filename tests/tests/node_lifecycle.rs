//! A node's life as an operator sees it, with the real binaries as separate processes:
//! the agent joins and reports this machine, is SIGKILLed and turns `unhealthy` then
//! `down`, and comes back — without a token — as the same node.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions, find_node, host_arch, wait_until};
use serde_json::Value;

const ALL_RUNTIMES: [&str; 4] = ["docker", "containerd", "lxc", "podman"];
const NODE: &str = "node-a";
const DOWN_GRACE: Duration = Duration::from_secs(6);
const POLL: Duration = Duration::from_millis(100);

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of strings, got {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("expected a string, got {v}")).to_owned())
        .collect()
}

/// The node's status as `diplo nodes ls -o json` shows it.
fn node_status(control_plane: &ControlPlane) -> Result<(String, Value), String> {
    let nodes = control_plane.try_nodes()?;
    let node = find_node(&nodes, NODE).ok_or_else(|| format!("{NODE} is not listed; nodes: {nodes:?}"))?;
    let status = node["status"].as_str().ok_or_else(|| format!("node without a status: {node}"))?;
    Ok((status.to_owned(), node.clone()))
}

/// The preferred runtime among those available, for a non-Pi Linux host.
fn expected_preferred(arch: &str, available: &BTreeSet<String>) -> Option<String> {
    let order: &[&str] = match arch {
        "amd64" => &["docker", "containerd", "podman", "lxc"],
        "arm64" | "arm" => &["lxc", "docker", "containerd", "podman"],
        _ => return None,
    };
    order.iter().find(|r| available.contains(**r)).map(|r| (*r).to_owned())
}

#[test]
fn node_joins_turns_unhealthy_then_down_and_rejoins_with_its_identity() {
    let test_started = Instant::now();
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(DOWN_GRACE));
    assert!(control_plane.stdout().contains("Diplo control plane is up."), "no start-up banner on stdout:\n{}", control_plane.logs());
    for file in ["ca.pem", "ca-key.pem", "admin.pem", "admin-key.pem", "admin.token", "cli.toml"] {
        assert!(control_plane.file(file).is_file(), "{file} missing from the data directory");
    }

    // ---- join ----
    let token = control_plane.join_token(&["--ttl", "10m"]);
    let mut agent = control_plane.start_agent(NODE, Some(&token));
    let joined_at = Instant::now();
    let node = wait_until(&format!("{NODE} to be ready"), Duration::from_secs(40), Duration::from_millis(250), || {
        if let Some(status) = agent.process().try_exit() {
            panic!("the agent exited with {status} before its node was ready:\n{}", agent.logs());
        }
        match node_status(&control_plane)? {
            // Joining alone lists the node as ready with an empty fingerprint; wait
            // for its session to report the machine.
            (status, node) if status == "ready" && node["os"] != "" => Ok(node),
            (status, node) => Err(format!("{NODE} is {status}: {node}")),
        }
    });
    eprintln!("[test] {NODE} ready {:.1?} after the agent started", joined_at.elapsed());
    let node_id = node["id"].as_str().expect("node id").to_owned();
    assert!(!node_id.is_empty());
    assert_eq!(control_plane.nodes().len(), 1, "exactly one node");

    // ---- what it reports about this machine ----
    assert_eq!(node["os"], "linux", "{node:#}");
    assert_eq!(node["arch"], host_arch(), "{node:#}");
    let available = strings(&node["available"]);
    let reports = node["runtimes"].as_array().expect("runtimes array");
    assert_eq!(reports.len(), 4, "one report per runtime: {node:#}");
    let reported: BTreeSet<String> = reports.iter().map(|r| r["runtime"].as_str().expect("runtime name").to_owned()).collect();
    assert_eq!(reported, ALL_RUNTIMES.iter().map(|r| (*r).to_owned()).collect(), "{node:#}");
    let available_in_reports: BTreeSet<String> =
        reports.iter().filter(|r| r["available"] == true).map(|r| r["runtime"].as_str().expect("runtime name").to_owned()).collect();
    assert_eq!(available, available_in_reports, "`available` agrees with the reports: {node:#}");
    for report in reports {
        eprintln!(
            "[test] runtime {:<10} available={:<5} version={} endpoint={} error={}",
            report["runtime"].as_str().unwrap_or("?"),
            report["available"],
            report["version"],
            report["endpoint"],
            report["error"]
        );
    }
    for runtime in ALL_RUNTIMES {
        if !available.contains(runtime) {
            diplo_tests::skip_or_fail(&format!("{runtime} is not available, the fingerprint of it is not checked: {node:#}"));
        }
    }
    let preferred = node["preferred"].as_str().map(str::to_owned);
    if let Some(expected) = expected_preferred(host_arch(), &available) {
        assert_eq!(preferred.as_deref(), Some(expected.as_str()), "platform preference on {}: {node:#}", host_arch());
    } else if available.is_empty() {
        assert_eq!(preferred, None, "no runtime, no preference: {node:#}");
    }

    // ---- the REST view agrees ----
    let status = control_plane.rest_json("/api/status");
    assert_eq!(status["system"]["os"], "linux", "{status:#}");
    assert_eq!(status["system"]["architecture"], host_arch(), "{status:#}");
    let kind = match available.len() {
        0 => "none",
        1 => available.first().map_or("none", String::as_str),
        _ => "hybrid",
    };
    assert_eq!(status["system"]["runtime"], kind, "derived from the available runtimes: {status:#}");
    assert!(status["timestamp"].is_string(), "{status:#}");
    assert_eq!(status["applications"], serde_json::json!([]), "no deployment yet: {status:#}");
    assert_eq!(strings(&status["runtime"]["available"]), available, "union over the one ready node: {status:#}");
    let rest_nodes = status["nodes"].as_array().expect("nodes array");
    assert_eq!(rest_nodes.len(), 1, "{status:#}");
    assert_eq!(rest_nodes[0]["name"], NODE);
    assert_eq!(rest_nodes[0]["id"], node_id.as_str());
    assert_eq!(rest_nodes[0]["status"], "ready");
    assert_eq!(rest_nodes[0]["os"], "linux");
    assert_eq!(rest_nodes[0]["arch"], host_arch());
    assert_eq!(strings(&rest_nodes[0]["available"]), available);
    assert_eq!(rest_nodes[0]["preferred"].as_str(), preferred.as_deref());

    let cluster = control_plane.rest_json("/api/v1/compute/cluster/status");
    assert_eq!(
        cluster,
        serde_json::json!({"nodes": {"total": 1, "ready": 1, "unhealthy": 0, "down": 0}, "instances": {"total": 0, "running": 0}})
    );
    let cli_status: Value = serde_json::from_str(&control_plane.cli_ok(&["status", "-o", "json"])).expect("status JSON");
    assert_eq!(cli_status["nodes"]["ready"], 1, "{cli_status:#}");
    assert_eq!(cli_status["nodes"]["total"], 1, "{cli_status:#}");
    assert_eq!(strings(&cli_status["available_runtimes"]), available, "{cli_status:#}");
    assert!(control_plane.cli_ok(&["status", "-o", "table"]).contains("1 ready"), "table output of `diplo status`");

    // ---- SIGKILL: ready → unhealthy → down ----
    agent.kill();
    let killed_at = Instant::now();
    let mut seen: Vec<(String, Duration)> = Vec::new();
    wait_until(&format!("{NODE} to be down after SIGKILL"), Duration::from_secs(30), POLL, || {
        let (status, _) = node_status(&control_plane)?;
        if seen.last().is_none_or(|(last, _)| *last != status) {
            seen.push((status.clone(), killed_at.elapsed()));
        }
        if status == "down" { Ok(()) } else { Err(format!("{NODE} is {status}; seen so far: {seen:?}")) }
    });
    eprintln!("[test] statuses after SIGKILL: {seen:?}");
    let names: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    let unhealthy = seen.iter().find(|(s, _)| s == "unhealthy").map(|(_, at)| *at);
    let down = seen.iter().find(|(s, _)| s == "down").map(|(_, at)| *at).expect("down was seen");
    let unhealthy = unhealthy.unwrap_or_else(|| panic!("{NODE} went down without being seen unhealthy first: {names:?}"));
    let pos = |name: &str| names.iter().position(|s| *s == name);
    assert!(pos("unhealthy") < pos("down"), "unhealthy before down: {names:?}");
    assert!(names.iter().all(|s| ["ready", "unhealthy", "down"].contains(s)), "{names:?}");
    // The last heartbeat was at most one interval (1 s) before the kill: unhealthy
    // after 3 missed heartbeats (≥ 2 s after the kill), down after the grace (≥ 5 s).
    assert!(unhealthy >= Duration::from_millis(1500), "unhealthy too early ({unhealthy:?}): {seen:?}");
    assert!(down >= DOWN_GRACE - Duration::from_millis(1500), "down too early ({down:?}): {seen:?}");

    let cluster = control_plane.rest_json("/api/v1/compute/cluster/status");
    assert_eq!(cluster["nodes"], serde_json::json!({"total": 1, "ready": 0, "unhealthy": 0, "down": 1}), "{cluster:#}");
    let status = control_plane.rest_json("/api/status");
    assert_eq!(status["runtime"]["available"], serde_json::json!([]), "no ready node, no runtime: {status:#}");
    assert_eq!(status["nodes"][0]["status"], "down", "{status:#}");

    // ---- restart with the same data directory and no token ----
    let mut agent = control_plane.start_agent(NODE, None);
    let restarted_at = Instant::now();
    let node = wait_until(&format!("{NODE} to be ready again"), Duration::from_secs(40), Duration::from_millis(250), || {
        if let Some(status) = agent.process().try_exit() {
            panic!("the restarted agent exited with {status}:\n{}", agent.logs());
        }
        match node_status(&control_plane)? {
            // Joining alone lists the node as ready with an empty fingerprint; wait
            // for its session to report the machine.
            (status, node) if status == "ready" && node["os"] != "" => Ok(node),
            (status, node) => Err(format!("{NODE} is {status}: {node}")),
        }
    });
    eprintln!("[test] {NODE} ready again {:.1?} after the restart", restarted_at.elapsed());
    assert_eq!(node["id"], node_id.as_str(), "the node kept its identity: {node:#}");
    assert_eq!(control_plane.nodes().len(), 1, "still one node");
    let cluster = control_plane.rest_json("/api/v1/compute/cluster/status");
    assert_eq!(cluster["nodes"], serde_json::json!({"total": 1, "ready": 1, "unhealthy": 0, "down": 0}), "{cluster:#}");
    assert_eq!(strings(&control_plane.rest_json("/api/status")["runtime"]["available"]), available);

    agent.kill();
    eprintln!("[test] node lifecycle took {:.1?}", test_started.elapsed());
}
