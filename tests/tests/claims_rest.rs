//! What the REST gateway and the control plane's modes promise, with the real binaries:
//! `diplo-control-plane dev` runs one ready node for this host (its in-process agent)
//! that runs containers; REST errors are RFC 9457 problem documents `{"type", "title",
//! "status", "detail", "code", "field"?}` whatever the route and status (400, 401, 404,
//! 409), a taken container or deployment name is a
//! 409; `/api/v1/events` streams a deployment's lifecycle as server-sent events with
//! `id`, `event` and `data` fields; `--tls-san` names end up in the server certificate.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diplo_tests::{
    ControlPlane, ControlPlaneOptions, HttpResponse, RemoveAllContainersOnDrop, docker_containers_of, host_arch, unique_name, wait_until,
};
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);
const ALL_RUNTIMES: [&str; 4] = ["containerd", "docker", "lxc", "podman"];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn sleeper(name: &str) -> Value {
    json!({"image": IMAGE, "name": name, "command": ["sleep", "300"], "runtime_type": "docker", "restart_policy": "no"})
}

/// Asserts the error shape: a problem document (`type`, `title`, `status`, `detail`,
/// `code`, and `field` for an invalid argument) with `status` and the gRPC status name
/// `code`, and nothing else at the top level.
fn assert_error(what: &str, response: &HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.body);
    let body: Value =
        serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{what}: the error is not JSON ({e}): {}", response.body));
    let object = body.as_object().unwrap_or_else(|| panic!("{what}: not an object: {body}"));
    let keys: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let mut expected = BTreeSet::from(["type", "title", "status", "detail", "code"]);
    if object.contains_key("field") {
        expected.insert("field");
    }
    assert_eq!(keys, expected, "{what}: {body}");
    assert_eq!(body["status"], status, "{what}: {body}");
    assert_eq!(body["code"], code, "{what}: {body}");
    assert!(body["type"].as_str().is_some_and(|t| t.starts_with("https://diplo.dev/problems/")), "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(!detail.trim().is_empty(), "{what}: an empty detail: {body}");
}

fn dev_control_plane() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions { dev: true, ..Default::default() })
}

/// The one node of a dev control plane, once ready and reporting its host.
fn dev_node(control_plane: &ControlPlane) -> Value {
    wait_until("the local agent to be ready", Duration::from_secs(60), POLL, || {
        let nodes = control_plane.try_nodes()?;
        match nodes.as_slice() {
            [node] if node["status"] == "ready" && node["os"] != "" => Ok(node.clone()),
            other => Err(format!("{other:?}")),
        }
    })
}

fn docker_available(node: &Value) -> bool {
    if node["available"].as_array().is_some_and(|a| a.iter().any(|r| r == "docker")) {
        return true;
    }
    assert!(!in_ci(), "CI=true but docker is not available on the local node: {node:#}");
    eprintln!("[test] SKIPPED: docker is not available here (not CI)");
    false
}

#[test]
fn dev_mode_runs_exactly_one_ready_node_for_this_host_that_runs_containers() {
    let control_plane = dev_control_plane();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let node = dev_node(&control_plane);
    // Still one node a moment later: the in-process agent joined once.
    std::thread::sleep(Duration::from_secs(2));
    let nodes = control_plane.nodes();
    assert_eq!(nodes.len(), 1, "exactly one node: {nodes:#?}");
    assert_eq!(nodes[0]["id"], node["id"], "{nodes:#?}");
    assert_eq!(nodes[0]["status"], "ready", "{nodes:#?}");

    // This host: its name, OS, architecture and runtimes.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname").trim().to_ascii_lowercase();
    assert_eq!(node["name"].as_str().map(str::to_ascii_lowercase), Some(hostname.clone()), "named after this host: {node:#}");
    assert_eq!(node["os"], "linux", "{node:#}");
    assert_eq!(node["arch"], host_arch(), "{node:#}");
    let reports = node["runtimes"].as_array().unwrap_or_else(|| panic!("no runtime reports: {node:#}"));
    let reported: BTreeSet<&str> = reports.iter().filter_map(|r| r["runtime"].as_str()).collect();
    assert_eq!(reported, BTreeSet::from(ALL_RUNTIMES), "one report per runtime: {node:#}");
    let available: BTreeSet<&str> = node["available"].as_array().expect("available").iter().filter_map(Value::as_str).collect();
    let available_in_reports: BTreeSet<&str> =
        reports.iter().filter(|r| r["available"] == true).filter_map(|r| r["runtime"].as_str()).collect();
    assert_eq!(available, available_in_reports, "{node:#}");
    // What this host runs, as its own tools see it.
    let docker_here = std::process::Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output();
    let docker_here = docker_here.is_ok_and(|o| o.status.success());
    assert_eq!(available.contains("docker"), docker_here, "docker on this host: {docker_here}; the node says {available:?}");
    // A runtime it does not offer says why.
    for report in reports.iter().filter(|r| r["available"] != true) {
        assert!(report["error"].as_str().is_some_and(|e| !e.is_empty()), "an unavailable runtime without a reason: {report:#}");
    }
    if !docker_available(&node) {
        return;
    }

    // It runs a container, on this host's Docker.
    let name = unique_name("dev-run");
    let created = control_plane.rest("POST", "/api/v1/containers", Some(sleeper(&name)));
    assert_eq!(created.status, 201, "{}", created.body);
    let container = created.json();
    assert_eq!(container["status"], "running", "{container:#}");
    assert_eq!(container["node_id"], node["id"], "on the local node: {container:#}");
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Running}}", &name])
        .output()
        .expect("run docker inspect");
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "true", "docker runs {name}: {}", String::from_utf8_lossy(&inspect.stderr));

    // A taken name is a conflict, in the error shape.
    let again = control_plane.rest("POST", "/api/v1/containers", Some(sleeper(&name)));
    assert_error("a second container with a taken name", &again, 409, "ALREADY_EXISTS");
    assert!(again.body.contains(&name), "names the container: {}", again.body);
}

/// One server-sent event.
#[derive(Debug, Default, Clone)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads `/api/v1/events` on a thread of its own and sends each event as it comes.
fn watch_events(control_plane: &ControlPlane) -> mpsc::Receiver<Result<SseEvent, String>> {
    let (sender, receiver) = mpsc::channel();
    let url = control_plane.rest_url("/api/v1/events");
    let authorization = format!("Bearer {}", control_plane.admin_token());
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300)).no_proxy().build().expect("HTTP client");
        let response = match client.get(&url).header("Authorization", authorization).send() {
            Ok(response) => response,
            Err(e) => {
                let _ = sender.send(Err(format!("GET {url}: {e}")));
                return;
            }
        };
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        if response.status() != 200 || !content_type.starts_with("text/event-stream") {
            let _ = sender.send(Err(format!("GET {url}: HTTP {} ({content_type})", response.status())));
            return;
        }
        let mut current = SseEvent::default();
        for line in BufReader::new(response).lines() {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    let _ = sender.send(Err(format!("reading the stream: {e}")));
                    return;
                }
            };
            if line.is_empty() {
                let event = std::mem::take(&mut current);
                if (event.id.is_some() || event.event.is_some() || !event.data.is_empty()) && sender.send(Ok(event)).is_err() {
                    return;
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // a keep-alive comment
            }
            let (field, value) = line.split_once(':').map_or((line.as_str(), ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "id" => current.id = Some(value.to_owned()),
                "event" => current.event = Some(value.to_owned()),
                "data" => {
                    if !current.data.is_empty() {
                        current.data.push('\n');
                    }
                    current.data.push_str(value);
                }
                other => {
                    let _ = sender.send(Err(format!("unexpected field {other:?} in {line:?}")));
                    return;
                }
            }
        }
    });
    receiver
}

#[test]
fn rest_errors_share_one_json_shape_and_the_event_stream_tells_a_deployments_lifecycle() {
    let control_plane = dev_control_plane();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let node = dev_node(&control_plane);

    // 401 on several routes, without a token or with a wrong one.
    for (method, path) in
        [("GET", "/api/v1/nodes"), ("GET", "/api/v1/deployments"), ("POST", "/api/v1/containers"), ("GET", "/api/v1/events")]
    {
        let url = control_plane.rest_url(path);
        let none = diplo_tests::http_request(method, &url, None, None).expect("REST");
        assert_error(&format!("{method} {path} without a token"), &none, 401, "UNAUTHENTICATED");
        let wrong =
            diplo_tests::http_request(method, &url, Some("Bearer dpl_abcdefgh.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"), None).expect("REST");
        assert_error(&format!("{method} {path} with an unknown token"), &wrong, 401, "UNAUTHENTICATED");
    }
    // 404 on several routes.
    for (method, path) in [
        ("GET", "/api/v1/nodes/no-such-node"),
        ("GET", "/api/v1/deployments/no-such-deployment"),
        ("DELETE", "/api/v1/containers/no-such-container"),
        ("POST", "/api/v1/containers/no-such-container/start"),
        ("GET", "/api/v1/compute/instances/no-such-instance"),
    ] {
        assert_error(&format!("{method} {path}"), &control_plane.rest(method, path, None), 404, "NOT_FOUND");
    }
    // 400 on several routes, naming the field.
    let bad_runtime =
        control_plane.rest("POST", "/api/v1/containers", Some(json!({"image": IMAGE, "name": "x", "runtime_type": "vmware"})));
    assert_error("a container on an unknown runtime", &bad_runtime, 400, "INVALID_ARGUMENT");
    assert!(bad_runtime.body.contains("runtime_type"), "{}", bad_runtime.body);
    let unknown_field = control_plane.rest("POST", "/api/v1/deployments", Some(json!({"name": "x", "image": IMAGE, "replicaz": 2})));
    assert_error("a deployment with an unknown field", &unknown_field, 400, "INVALID_ARGUMENT");
    assert!(unknown_field.body.contains("replicaz"), "{}", unknown_field.body);
    let bad_scale = control_plane.rest("POST", "/api/v1/deployments/x/scale", Some(json!({"replicas": -1})));
    assert_error("a negative scale", &bad_scale, 400, "INVALID_ARGUMENT");
    assert!(bad_scale.body.contains("replicas"), "{}", bad_scale.body);
    if !docker_available(&node) {
        return;
    }

    // The event stream, watched from before the deployment exists.
    let events = watch_events(&control_plane);
    let name = unique_name("sse");
    let _deployment = diplo_tests::DeleteDeploymentOnDrop(&control_plane, name.clone());
    let body = json!({"name": name, "image": IMAGE, "replicas": 1, "command": ["sleep", "300"], "runtime_type": "docker"});
    let created = control_plane.rest("POST", "/api/v1/deployments", Some(body.clone()));
    assert_eq!(created.status, 201, "{}", created.body);
    let deployment_id = created.json()["id"].as_str().expect("deployment id").to_owned();
    // 409 on a taken deployment name (no idempotency key).
    let taken = control_plane.rest("POST", "/api/v1/deployments", Some(body));
    assert_error("a second deployment with a taken name", &taken, 409, "ALREADY_EXISTS");
    assert!(taken.body.contains(&name), "names the deployment: {}", taken.body);

    wait_until("the replica to run", Duration::from_secs(90), POLL, || {
        let d = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
        if d["status"] == "running" { Ok(()) } else { Err(d.to_string()) }
    });
    let scaled = control_plane.rest("POST", &format!("/api/v1/deployments/{name}/scale"), Some(json!({"replicas": 2})));
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    let deleted = control_plane.rest("DELETE", &format!("/api/v1/deployments/{name}"), None);
    assert!(deleted.status == 200 || deleted.status == 202 || deleted.status == 204, "{}", deleted.body);

    // Read until the deployment is gone; every event is well formed.
    let mut lifecycle: Vec<String> = Vec::new();
    let mut last_id: Option<u64> = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while lifecycle.last().map(String::as_str) != Some("deployment.deleted") {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match events.recv_timeout(left) {
            Ok(Ok(event)) => event,
            Ok(Err(reason)) => panic!("the event stream failed: {reason}\n{}", control_plane.logs()),
            Err(_) => panic!("no deployment.deleted within 90 s; lifecycle so far: {lifecycle:?}\n{}", control_plane.logs()),
        };
        let data: Value = serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {event:?}"));
        let kind = event.event.clone().unwrap_or_else(|| panic!("an event without `event:`: {event:?}"));
        assert_ne!(kind, "lagged", "the watcher fell behind: {event:?}");
        let id: u64 = event.id.as_deref().and_then(|id| id.parse().ok()).unwrap_or_else(|| panic!("no numeric `id:`: {event:?}"));
        assert_eq!(data["sequence"], id, "`id:` is the event's sequence: {event:?}");
        assert_eq!(data["kind"], kind.as_str(), "`event:` is the event's kind: {event:?}");
        for field in ["at", "actor", "subject", "message"] {
            assert!(data[field].as_str().is_some_and(|v| !v.is_empty()), "{field} is set: {event:?}");
        }
        if let Some(previous) = last_id {
            assert!(id > previous, "ids increase: {previous} then {id}");
        }
        last_id = Some(id);
        if kind.starts_with("deployment.") && data["subject"] == deployment_id.as_str() {
            lifecycle.push(kind);
        }
    }
    // What was asked of it, in order, with its status changes (running, deploying...)
    // in between; once being deleted, only its deletion.
    let asked: Vec<&str> = lifecycle
        .iter()
        .map(String::as_str)
        .filter(|k| ["created", "scaled", "deleting", "deleted"].iter().any(|a| k.ends_with(a)))
        .collect();
    assert_eq!(
        asked,
        ["deployment.created", "deployment.scaled", "deployment.deleting", "deployment.deleted"],
        "the deployment's lifecycle as streamed: {lifecycle:?}"
    );
    let deleting = lifecycle.iter().position(|k| k == "deployment.deleting").expect("deleting");
    assert_eq!(lifecycle.len(), deleting + 2, "nothing between deleting and deleted: {lifecycle:?}");
    assert!(lifecycle.contains(&"deployment.running".to_owned()), "its replica ran: {lifecycle:?}");
    wait_until("the deployment's containers to go", Duration::from_secs(30), POLL, || {
        let left = docker_containers_of(&name);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    });
}

/// Whether a TLS client that trusts the cluster CA and expects `server_name` completes
/// the handshake with the control plane's gRPC port.
async fn handshake_as(control_plane: &ControlPlane, server_name: &str) -> Result<(), String> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(control_plane.read_file("ca.pem"))).domain_name(server_name);
    Endpoint::from_shared(format!("https://{}", control_plane.grpc_addr()))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_san_names_and_addresses_are_in_the_server_certificate() {
    diplo_api::install_crypto_provider();
    let name = "diplo-san.example.test";
    let address = "10.11.12.13";
    let options = ControlPlaneOptions { env: vec![("DIPLO_TLS_SANS".into(), format!("{name},{address}"))], ..Default::default() };
    let with_sans = tokio::task::spawn_blocking(move || ControlPlane::start(options)).await.expect("start");
    let without = tokio::task::spawn_blocking(|| ControlPlane::start(ControlPlaneOptions::default())).await.expect("start");

    for server_name in [name, address, "localhost", "127.0.0.1"] {
        handshake_as(&with_sans, server_name)
            .await
            .unwrap_or_else(|e| panic!("a client expecting {server_name} is refused: {e}\n{}", with_sans.logs()));
    }
    // Verification is by name: a name the certificate does not carry is refused...
    let other = handshake_as(&with_sans, "not-a-san.example.test").await;
    assert!(other.is_err(), "a name not in the certificate was accepted");
    // ...and without the flag, the extra name and address are not in it.
    for server_name in [name, address] {
        let refused = handshake_as(&without, server_name).await;
        assert!(refused.is_err(), "{server_name} is in the certificate of a control plane started without --tls-san");
    }
    handshake_as(&without, "localhost").await.unwrap_or_else(|e| panic!("localhost is always in the certificate: {e}"));
}
