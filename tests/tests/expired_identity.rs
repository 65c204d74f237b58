//! An agent offline longer than its certificate lives: without a token it stops at once
//! and says how to re-join (not a reconnect loop that can never succeed); started again
//! with a fresh join token it re-joins as the same node (same id, so the containers
//! labelled with it stay its own), and the node is ready again.

use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions, find_node, wait_until};

const NODE: &str = "expiring";
/// `DIPLO_NODE_CERT_LIFETIME` for this test.
const LIFETIME: Duration = Duration::from_secs(6);

#[test]
fn an_agent_with_an_expired_certificate_stops_with_a_hint_or_rejoins_as_the_same_node() {
    let options = ControlPlaneOptions {
        env: vec![("DIPLO_NODE_CERT_LIFETIME".into(), "6s".into())],
        ..ControlPlaneOptions::fast(Duration::from_secs(2))
    };
    let control_plane = ControlPlane::start(options);
    let env = [("DIPLO_RUNTIMES", "docker")];
    let token = control_plane.join_token(&["--ttl", "10m"]);
    let (mut agent, node) = control_plane.start_ready_agent_with_env(NODE, Some(&token), &env);
    let node_id = node["id"].as_str().expect("node id").to_owned();
    agent.kill();
    let stopped = Instant::now();

    // Offline past the lifetime of its certificate (and of any it could have renewed).
    let cert = std::fs::read_to_string(agent.data_dir().join("node.pem")).expect("node.pem");
    let not_after = diplo_api::pki::not_after_pem(&cert).expect("not_after");
    let until_expired = (not_after - time::OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
    std::thread::sleep(until_expired.max(LIFETIME.saturating_sub(stopped.elapsed())) + Duration::from_secs(2));

    // Without a token: it stops, saying how to re-join.
    let mut stuck = control_plane.start_agent_with_env(NODE, None, &env);
    let exit = stuck.wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|status| !status.success()), "the agent kept running with an expired certificate:\n{}", stuck.logs());
    let stderr = stuck.stderr();
    assert!(stderr.contains("expired") && stderr.contains("diplo join-token create") && stderr.contains("--token"), "{stderr}");

    // With a fresh token: the same node comes back.
    let token = control_plane.join_token(&["--ttl", "10m"]);
    let (_agent, node) = control_plane.start_ready_agent_with_env(NODE, Some(&token), &env);
    assert_eq!(node["id"].as_str(), Some(node_id.as_str()), "re-joined under another id");
    let nodes = control_plane.nodes();
    assert_eq!(nodes.iter().filter(|n| n["name"] == NODE).count(), 1, "{nodes:?}");
    let cert = std::fs::read_to_string(control_plane.agent_data_dir(NODE).join("node.pem")).expect("node.pem");
    assert!(diplo_api::pki::not_after_pem(&cert).expect("not_after") > time::OffsetDateTime::now_utc(), "no fresh certificate");
    // It stays connected (its new certificate is renewed as usual).
    wait_until("the re-joined node to stay ready", Duration::from_secs(10), Duration::from_millis(500), || {
        match find_node(&control_plane.try_nodes()?, NODE) {
            Some(node) if node["status"] == "ready" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}
