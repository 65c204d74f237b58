//! Container operations through the whole system — REST → control plane → agent
//! session → the real runtime — on each of Docker, Podman, containerd and LXC: pause
//! and unpause (the reconciler leaves a paused deployment instance alone), a file copied
//! in then out as tar, hostile archives that never reach the host's filesystem, the
//! size bound, a stats stream, and a viewer refused.

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, RemoveAllContainersOnDrop, tar_of, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);
/// The most an archive copy carries either way (`diplo_api::archive::MAX_ARCHIVE_BYTES`).
const MAX_ARCHIVE_BYTES: usize = 4 * 1024 * 1024;

/// A control plane and one agent (offering `runtime` only when `only`, else every
/// runtime of the host); `None` (after a skip, or a failure under CI) when the node does
/// not offer `runtime`.
fn cluster(runtime: &str, only: bool) -> Option<(ControlPlane, diplo_tests::Agent)> {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let env: &[(&str, &str)] = if only { &[("DIPLO_RUNTIMES", runtime)] } else { &[] };
    let (agent, node) = control_plane.start_ready_agent_with_env(&unique("ops"), Some(&token), env);
    let available: Vec<String> =
        node["available"].as_array().expect("available").iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect();
    if !available.iter().any(|r| r == runtime) {
        diplo_tests::skip_or_fail(&format!("{runtime} is not available on the node: {available:?}"));
        return None;
    }
    Some((control_plane, agent))
}

/// `METHOD path` with a raw body and bearer `token`: (status, content type, body).
fn raw(control_plane: &ControlPlane, token: &str, method: &str, path: &str, body: Vec<u8>) -> (u16, String, Vec<u8>) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).no_proxy().build().expect("client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let response = client
        .request(method.clone(), control_plane.rest_url(path))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/x-tar")
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    (status, kind, response.bytes().expect("body").to_vec())
}

/// Regular files of a tar: name → content.
fn untar(archive: &[u8]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for entry in tar::Archive::new(archive).entries().expect("a tar") {
        let mut entry = entry.expect("member");
        if entry.header().entry_type().is_file() {
            let name = entry.path().expect("name").display().to_string();
            let mut content = String::new();
            entry.read_to_string(&mut content).expect("content");
            files.push((name, content));
        }
    }
    files
}

fn status_of(control_plane: &ControlPlane, id: &str) -> String {
    let listed = control_plane.rest_json("/api/v1/containers");
    let found = listed.as_array().and_then(|all| all.iter().find(|c| c["id"] == id).cloned());
    found.map(|c| c["status"].as_str().unwrap_or_default().to_owned()).unwrap_or_else(|| "gone".to_owned())
}

fn viewer_token(control_plane: &ControlPlane) -> String {
    let stdout = control_plane.cli_ok(&["api-token", "create", "--role", "viewer", "--name", &unique("ops-viewer"), "--ttl", "1h"]);
    stdout.lines().next().expect("a token").trim().to_owned()
}

fn container_ops_on(runtime: &str) {
    let started = Instant::now();
    let phase = |what: &str| println!("{runtime}: {what} at {:.1?}", started.elapsed());
    let Some((control_plane, _agent)) = cluster(runtime, false) else { return };
    phase("cluster up");
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let admin = control_plane.admin_token();
    let name = unique(&format!("ops-{runtime}"));
    let command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"];
    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({"image": IMAGE, "name": name, "restart_policy": "no", "command": command, "runtime_type": runtime})),
    );
    assert_eq!(created.status, 201, "create on {runtime}: {}", created.body);
    let id = created.json()["id"].as_str().expect("id").to_owned();

    // Pause: the container reads paused, through the control plane's view too, and stays
    // so across reconcile passes; unpause brings it back.
    let paused = control_plane.rest("POST", &format!("/api/v1/containers/{id}/pause"), None);
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["status"], "paused", "{}", paused.body);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(status_of(&control_plane, &id), "paused");
    let again = control_plane.rest("POST", &format!("/api/v1/docker/containers/{id}/pause"), None);
    assert_eq!((again.status, again.json()["status"].as_str()), (200, Some("paused")), "{}", again.body);
    let unpaused = control_plane.rest("POST", &format!("/api/v1/containers/{id}/unpause"), None);
    assert_eq!((unpaused.status, unpaused.json()["status"].as_str()), (200, Some("running")), "{}", unpaused.body);

    phase("A file copied in, then out");
    // A file copied in, then out (REST under both prefixes), is the same.
    let archive = tar_of(&[("in/", ""), ("in/hello.txt", &format!("hello {runtime}\n"))]);
    let (status, _, body) = raw(&control_plane, &admin, "PUT", &format!("/api/v1/containers/{id}/archive?path=/tmp"), archive);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let copied: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(copied, json!({"path": "/tmp", "members": 2}));
    let (status, kind, body) =
        raw(&control_plane, &admin, "GET", &format!("/api/v1/docker/containers/{id}/archive?path=/tmp/in/hello.txt"), vec![]);
    assert_eq!((status, kind.as_str()), (200, "application/x-tar"), "{}", String::from_utf8_lossy(&body));
    assert_eq!(untar(&body), vec![("hello.txt".to_owned(), format!("hello {runtime}\n"))]);

    phase("Hostile archives");
    // Hostile archives: members climbing out or absolute are refused before any runtime
    // sees them; a symbolic link to a host directory resolves inside the container.
    // None of them writes into the host directory they aim at.
    let host_dir = tempfile::tempdir().expect("host directory");
    let host = host_dir.path().display().to_string();
    let climbing = format!("../../../../../../../..{host}/climbed");
    let absolute = format!("{host}/absolute");
    for members in [vec![(climbing.as_str(), "x\n")], vec![(absolute.as_str(), "x\n")]] {
        let (status, _, body) = raw(&control_plane, &admin, "PUT", &format!("/api/v1/containers/{id}/archive?path=/tmp"), tar_of(&members));
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{members:?}: {body}");
        assert!(body.contains("archive"), "the error names the archive: {body}");
    }
    let link = format!("-> {host}");
    let hostile = tar_of(&[("escape", link.as_str()), ("escape/owned", "pwned\n")]);
    let (status, _, body) = raw(&control_plane, &admin, "PUT", &format!("/api/v1/containers/{id}/archive?path=/tmp"), hostile);
    // Where the link leads nowhere inside the container, the runtime cannot extract the
    // file: the archive is at fault (Docker, Podman and busybox's tar all refuse it).
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 400, "a symlink then a file through it: {body}");
    assert!(body.contains("archive"), "{body}");
    assert!(std::fs::read_dir(host_dir.path()).expect("host dir").next().is_none(), "a copy-in wrote into the host's {host}");

    phase("Too large");
    // Too large: refused with 413 naming the bound; a path that is not absolute: 400.
    let big = vec![0u8; MAX_ARCHIVE_BYTES + 1];
    let (status, _, body) = raw(&control_plane, &admin, "PUT", &format!("/api/v1/containers/{id}/archive?path=/tmp"), big);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains(&MAX_ARCHIVE_BYTES.to_string()), "{body}");
    let (status, _, body) = raw(&control_plane, &admin, "GET", &format!("/api/v1/containers/{id}/archive?path=etc"), vec![]);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("path"));

    phase("Stats");
    // Stats: one sample, then a stream of at least two a second apart.
    let sample = control_plane.rest("GET", &format!("/api/v1/containers/{id}/stats"), None);
    assert_eq!(sample.status, 200, "{}", sample.body);
    let sample = sample.json();
    assert_eq!((sample["container_id"].as_str(), sample["runtime"].as_str()), (Some(id.as_str()), Some(runtime)), "{sample}");
    assert!(sample["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{sample}");
    let client = reqwest::blocking::Client::builder().no_proxy().build().expect("client");
    let response = client
        .get(control_plane.rest_url(&format!("/api/v1/containers/{id}/stats?stream=true")))
        .header("Authorization", format!("Bearer {admin}"))
        .send()
        .expect("stats stream");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/x-ndjson"));
    let streamed = Instant::now();
    let mut lines = BufReader::new(response).lines();
    let mut read_at = Vec::new();
    for _ in 0..2 {
        let line = lines.next().expect("a sample line").expect("read");
        let sample: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(sample["container_id"].as_str(), Some(id.as_str()), "{sample}");
        read_at.push(sample["read_at"].as_str().expect("read_at").to_owned());
    }
    assert!(read_at[0] < read_at[1], "{read_at:?}");
    assert!(streamed.elapsed() >= Duration::from_millis(800), "samples come about a second apart: {:?}", streamed.elapsed());
    drop(lines);

    // The same over gRPC: ContainerOpsService.ContainerStats with `follow` streams samples.
    diplo_api::install_crypto_provider();
    let executor = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let grpc_samples = executor.block_on(async {
        use diplo_tests::fake_node::{admin_identity, connect};
        let channel = connect(&control_plane, Some(admin_identity(&control_plane))).await;
        let mut client = diplo_api::pb::container_ops_service_client::ContainerOpsServiceClient::new(channel);
        let request = diplo_api::pb::ContainerStatsRequest { id: id.clone(), follow: true };
        let mut stream = client.container_stats(request).await.expect("ContainerStats").into_inner();
        let mut samples = Vec::new();
        while samples.len() < 2 {
            samples.push(stream.message().await.expect("a sample").expect("the stream goes on"));
        }
        samples
    });
    assert!(grpc_samples.iter().all(|s| s.container_id == id && s.stats.is_some()), "{grpc_samples:?}");
    assert!(grpc_samples[0].read_at < grpc_samples[1].read_at, "{grpc_samples:?}");
    drop(executor);

    phase("A viewer reads stats");
    // A viewer reads stats but may not pause, unpause or copy.
    let viewer = viewer_token(&control_plane);
    let (status, _, _) = raw(&control_plane, &viewer, "GET", &format!("/api/v1/containers/{id}/stats"), vec![]);
    assert_eq!(status, 200);
    for (method, path) in [
        ("POST", format!("/api/v1/containers/{id}/pause")),
        ("POST", format!("/api/v1/containers/{id}/unpause")),
        ("GET", format!("/api/v1/containers/{id}/archive?path=/etc/hosts")),
        ("PUT", format!("/api/v1/containers/{id}/archive?path=/tmp")),
    ] {
        let (status, _, body) = raw(&control_plane, &viewer, method, &path, tar_of(&[("v.txt", "v\n")]));
        assert_eq!(status, 403, "{method} {path}: {}", String::from_utf8_lossy(&body));
    }

    phase("Once the container is gone");
    // Once the container is gone, a stream ends by itself.
    let response = client
        .get(control_plane.rest_url(&format!("/api/v1/containers/{id}/stats?stream=true")))
        .header("Authorization", format!("Bearer {admin}"))
        .send()
        .expect("stats stream");
    let removed = control_plane.rest("DELETE", &format!("/api/v1/containers/{id}?force=true"), None);
    assert_eq!(removed.status, 204, "{}", removed.body);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let count = BufReader::new(response).lines().map_while(Result::ok).count();
        let _ = tx.send(count);
    });
    let count = rx.recv_timeout(Duration::from_secs(15)).expect("the stream ends once the container is gone");
    assert!(count >= 1, "{count} samples");
    phase("done");
}

#[test]
fn container_ops_on_docker() {
    container_ops_on("docker");
}

#[test]
fn container_ops_on_podman() {
    container_ops_on("podman");
}

#[test]
fn container_ops_on_containerd() {
    container_ops_on("containerd");
}

#[test]
fn container_ops_on_lxc() {
    container_ops_on("lxc");
}

/// A paused instance of a deployment stays paused: the reconciler neither restarts nor
/// replaces it across several passes, and runs it again once unpaused.
#[test]
fn the_reconciler_leaves_a_paused_deployment_instance_alone() {
    let Some((control_plane, _agent)) = cluster("docker", true) else { return };
    let name = unique("paused");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"];
    let body = json!({"name": name, "image": IMAGE, "replicas": 1, "command": command, "restart_policy": "always"});
    let created = control_plane.rest("POST", "/api/v1/deployments", Some(body));
    assert!(created.status == 201 || created.status == 200, "{}", created.body);
    let container_id = wait_until("one running instance", Duration::from_secs(60), POLL, || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
        let instances = d["instances"].as_array().cloned().unwrap_or_default();
        match instances.as_slice() {
            [one] if one["status"] == "running" && one["container_id"].is_string() => {
                Ok(one["container_id"].as_str().unwrap_or("").to_owned())
            }
            _ => Err(d.to_string()),
        }
    });
    let paused = control_plane.rest("POST", &format!("/api/v1/containers/{container_id}/pause"), None);
    assert_eq!((paused.status, paused.json()["status"].as_str()), (200, Some("paused")), "{}", paused.body);
    // Several reconcile passes (one every 2 s).
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(status_of(&control_plane, &container_id), "paused", "the paused instance was touched");
    let d = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
    let instances = d["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(instances.len(), 1, "no replacement: {d}");
    assert_eq!(instances[0]["container_id"].as_str(), Some(container_id.as_str()), "{d}");
    let unpaused = control_plane.rest("POST", &format!("/api/v1/containers/{container_id}/unpause"), None);
    assert_eq!((unpaused.status, unpaused.json()["status"].as_str()), (200, Some("running")), "{}", unpaused.body);
}
