//! Telemetry of real processes: the OTLP spans of a deploy reach a receiver inside the
//! test from the control plane and the agent under one trace id, the runtime call on the
//! node a descendant of the REST request; an incoming `traceparent` is continued; and
//! `/metrics` holds the documented series, with bounded labels, after a deploy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, RemoveAllContainersOnDrop, wait_until};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use serde_json::json;

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);

/// One received span, flattened.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().expect("spans");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| resource.attributes.iter())
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                received.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    /// Serves on a free loopback port on `runtime`; returns the endpoint URL.
    fn serve(&self, runtime: &tokio::runtime::Runtime) -> String {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("receiver address");
        let service = TraceServiceServer::new(self.clone());
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(err) = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await {
                eprintln!("[test] OTLP receiver failed: {err}");
            }
        });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.0.lock().expect("spans").clone()
    }
}

/// The spans from `span` up to its root (within what was received), `span` first.
fn ancestry(spans: &[Received], span: &Received) -> Vec<Received> {
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = vec![span.clone()];
    let mut current = span;
    while let Some(parent) = by_id.get(current.parent_span_id.as_str()) {
        if chain.len() > 64 {
            break;
        }
        chain.push((*parent).clone());
        current = parent;
    }
    chain
}

/// Waits for a `runtime.create` span from the agent whose ancestry reaches the
/// control plane's span named `rest_span`; returns that chain.
fn chain_to_rest(receiver: &Receiver, rest_span: &str, image: &str) -> Vec<Received> {
    wait_until(&format!("the agent's runtime.create span under {rest_span}"), Duration::from_secs(60), POLL, || {
        let spans = receiver.spans();
        spans
            .iter()
            .filter(|s| s.service == "diplo-agent" && s.name == "runtime.create")
            .map(|s| ancestry(&spans, s))
            .find(|chain| chain.last().is_some_and(|root| root.service == "diplo-control-plane" && root.name == rest_span))
            .ok_or_else(|| {
                let names: Vec<String> = spans.iter().map(|s| format!("{}:{}", s.service, s.name)).collect();
                format!("{} spans for {image}: {names:?}", spans.len())
            })
    })
}

fn telemetry_env(endpoint: &str) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint.to_owned()),
        // Batches leave every 200 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "200".to_owned()),
    ]
}

#[test]
fn a_deploy_is_one_trace_from_the_rest_call_to_the_runtime_call_on_the_node() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let receiver = Receiver::default();
    let endpoint = receiver.serve(&runtime);
    let env = telemetry_env(&endpoint);
    let control_plane = ControlPlane::start(ControlPlaneOptions { env: env.clone(), ..ControlPlaneOptions::fast(Duration::from_secs(30)) });
    let token = control_plane.join_token(&[]);
    let agent_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_agent, _node) = control_plane.start_ready_agent_with_env("node-otel", Some(&token), &agent_env);
    let _containers = RemoveAllContainersOnDrop(&control_plane);

    // A direct container: the REST handler sends the create itself.
    let name = unique("otel-direct");
    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({"image": IMAGE, "name": name, "runtime_type": "docker", "command": ["sleep", "300"], "restart_policy": "no"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let chain = chain_to_rest(&receiver, "POST /api/v1/containers", &name);
    let trace_ids: std::collections::BTreeSet<&str> = chain.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), 1, "one trace id along the chain: {chain:#?}");
    let services: std::collections::BTreeSet<&str> = chain.iter().map(|s| s.service.as_str()).collect();
    assert!(services.contains("diplo-agent") && services.contains("diplo-control-plane"), "{chain:#?}");
    assert!(chain.iter().any(|s| s.service == "diplo-agent" && s.name == "command.create"), "{chain:#?}");
    assert!(chain.iter().any(|s| s.service == "diplo-control-plane" && s.name == "command.create"), "{chain:#?}");

    // A deployment: the reconciler's rollout continues the REST call's trace.
    let deployment = unique("otel-deploy");
    let _deployment = DeleteDeploymentOnDrop(&control_plane, deployment.clone());
    let deployed = control_plane.rest(
        "POST",
        "/api/v1/deployments",
        Some(json!({"name": deployment, "image": IMAGE, "replicas": 1, "runtime_type": "docker", "command": ["sleep", "300"]})),
    );
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let chain = chain_to_rest(&receiver, "POST /api/v1/deployments", &deployment);
    let trace_ids: std::collections::BTreeSet<&str> = chain.iter().map(|s| s.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), 1, "{chain:#?}");
    assert!(chain.iter().any(|s| s.service == "diplo-control-plane" && s.name == "rollout"), "{chain:#?}");

    // A caller's traceparent is continued by the REST span.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let url = control_plane.rest_url("/api/status");
    let authorization = format!("Bearer {}", control_plane.admin_token());
    let traceparent = format!("00-{caller_trace}-{caller_span}-01");
    let status = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .get(url)
            .header("authorization", authorization)
            .header("traceparent", traceparent)
            .send()
            .map(|response| response.status().as_u16())
    })
    .join()
    .expect("request thread")
    .expect("GET /api/status");
    assert_eq!(status, 200);
    // And by the gRPC span of a call whose metadata carries one.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    runtime.block_on(async {
        use diplo_tests::fake_node::{admin_identity, connect};
        let channel = connect(&control_plane, Some(admin_identity(&control_plane))).await;
        let mut client = diplo_api::pb::cluster_service_client::ClusterServiceClient::new(channel);
        let mut request = tonic::Request::new(diplo_api::pb::GetStatusRequest::default());
        let traceparent = format!("00-{grpc_trace}-{caller_span}-01").parse().expect("metadata value");
        request.metadata_mut().insert("traceparent", traceparent);
        client.get_status(request).await.expect("GetStatus");
    });
    for (name, trace) in [("GET /api/status", caller_trace), ("diplo.v1.ClusterService/GetStatus", grpc_trace)] {
        wait_until(&format!("the {name} span in the caller's trace"), Duration::from_secs(30), POLL, || {
            let spans = receiver.spans();
            spans
                .iter()
                .find(|s| s.name == name && s.trace_id == trace && s.parent_span_id == caller_span)
                .map(|_| ())
                .ok_or_else(|| format!("{} spans, no {name} in trace {trace}", spans.len()))
        });
    }
}

/// The value of the first series line starting with `prefix` (labels included).
fn value_of(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(prefix)).and_then(|line| line.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn metrics_after_a_deploy_hold_the_documented_series_with_bounded_labels() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (_agent, node) = control_plane.start_ready_agent("node-metrics", Some(&token));
    let deployment = unique("metrics-deploy");
    let _deployment = DeleteDeploymentOnDrop(&control_plane, deployment.clone());

    let anonymous = control_plane.rest_get("/metrics", None);
    assert_eq!(anonymous.status, 401, "/metrics needs a token: {}", anonymous.body);

    let deployed = control_plane.rest(
        "POST",
        "/api/v1/deployments",
        Some(json!({"name": deployment, "image": IMAGE, "replicas": 1, "runtime_type": "docker", "command": ["sleep", "300"]})),
    );
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    let deployment_id = deployed.json()["id"].as_str().unwrap_or_default().to_owned();
    wait_until("the deployment to run", Duration::from_secs(90), POLL, || {
        let got = control_plane.rest("GET", &format!("/api/v1/deployments/{deployment}"), None);
        if got.json()["status"] == "running" { Ok(()) } else { Err(got.body) }
    });
    let text = wait_until("the deploy-to-running histogram", Duration::from_secs(30), POLL, || {
        let response = control_plane.rest("GET", "/metrics", None);
        if response.status != 200 {
            return Err(format!("HTTP {}: {}", response.status, response.body));
        }
        match value_of(&response.body, "diplo_deploy_to_running_seconds_count") {
            Some(count) if count >= 1.0 => Ok(response.body),
            _ => Err(response.body),
        }
    });

    assert_eq!(value_of(&text, r#"diplo_nodes{state="ready"}"#), Some(1.0), "{text}");
    assert_eq!(value_of(&text, "diplo_agent_sessions"), Some(1.0), "{text}");
    assert!(value_of(&text, "diplo_heartbeats_received_total").is_some_and(|n| n >= 1.0), "{text}");
    assert!(value_of(&text, "diplo_reconcile_pass_duration_seconds_count").is_some_and(|n| n >= 1.0), "{text}");
    assert!(value_of(&text, r#"diplo_commands_sent_total{kind="create",outcome="ok"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert!(value_of(&text, "diplo_pending_commands").is_some(), "{text}");
    assert!(value_of(&text, "diplo_output_streams").is_some(), "{text}");
    assert!(
        value_of(&text, r#"diplo_rest_request_duration_seconds_count{route="/api/v1/deployments",method="POST",status="201"}"#)
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        text.contains(r#"diplo_rest_request_duration_seconds_count{route="/api/v1/deployments/{name}",method="GET",status="200"}"#),
        "the route template, not the path: {text}"
    );
    assert!(text.contains(r#"diplo_grpc_request_duration_seconds_count{service="diplo.v1.AgentService",method="Session""#), "{text}");
    let node_id = node["id"].as_str().unwrap_or_default();
    for raw in [deployment.as_str(), deployment_id.as_str(), node_id] {
        assert!(!raw.is_empty() && !text.contains(raw), "{raw} appears in a label:\n{text}");
    }
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        assert!(line.starts_with("diplo_"), "{line}");
    }
}

/// Force-removes a Docker container by name when dropped; never panics.
struct DockerRmOnDrop(String);

impl Drop for DockerRmOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn terminate(process: &mut diplo_tests::Process, what: &str) {
    let status = std::process::Command::new("kill").arg("-TERM").arg(process.pid().to_string()).status().expect("running kill");
    assert!(status.success(), "kill -TERM {what}");
    let exit = process.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| panic!("{what} did not stop on SIGTERM:\n{}", process.logs()));
    assert!(exit.success(), "{what} exited with {exit} on SIGTERM:\n{}", process.logs());
}

#[test]
fn spans_still_batched_are_exported_when_the_daemons_stop() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let receiver = Receiver::default();
    let endpoint = receiver.serve(&runtime);
    // Batches would leave only after 10 minutes: what arrives is what the exit flushed.
    let env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "600000".to_owned()),
        ("OTEL_SERVICE_NAME".to_owned(), "diplo-flush-test".to_owned()),
    ];
    let mut control_plane =
        ControlPlane::start(ControlPlaneOptions { env: env.clone(), ..ControlPlaneOptions::fast(Duration::from_secs(30)) });
    let token = control_plane.join_token(&[]);
    let agent_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (mut agent, _node) = control_plane.start_ready_agent_with_env("node-flush", Some(&token), &agent_env);
    let name = unique("otel-flush");
    let _container = DockerRmOnDrop(name.clone());
    let created = control_plane.rest(
        "POST",
        "/api/v1/containers",
        Some(json!({"image": IMAGE, "name": name, "runtime_type": "docker", "command": ["sleep", "300"], "restart_policy": "no"})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    let removed = control_plane.rest("DELETE", &format!("/api/v1/containers/{id}?force=true"), None);
    assert!((200..300).contains(&removed.status), "{}", removed.body);
    assert!(receiver.spans().is_empty(), "nothing leaves before the batch delay: {:?}", receiver.spans());

    terminate(agent.process(), "the agent");
    terminate(control_plane.process(), "the control plane");
    let spans = receiver.spans();
    let names: Vec<(&str, &str)> = spans.iter().map(|s| (s.service.as_str(), s.name.as_str())).collect();
    assert!(names.contains(&("diplo-flush-test", "runtime.create")), "OTEL_SERVICE_NAME names the agent's spans: {names:?}");
    assert!(names.contains(&("diplo-flush-test", "POST /api/v1/containers")), "the control plane's spans: {names:?}");
}

#[test]
fn json_logs_on_request_and_an_unknown_format_stops_the_daemons_naming_the_variable() {
    let control_plane = ControlPlane::start(ControlPlaneOptions {
        env: vec![("DIPLO_LOG_FORMAT".to_owned(), "json".to_owned())],
        ..ControlPlaneOptions::fast(Duration::from_secs(30))
    });
    let listening = wait_until("the control plane's JSON log lines", Duration::from_secs(30), POLL, || {
        let stderr = control_plane.stderr();
        let lines: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).map_err(|e| format!("{line:?} is not JSON: {e}")))
            .collect::<Result<_, _>>()?;
        parsed
            .into_iter()
            .find(|line| line["fields"]["message"] == "REST listening")
            .ok_or_else(|| format!("no REST listening line yet: {stderr}"))
    });
    assert_eq!(listening["level"], "INFO", "{listening}");
    assert!(listening["fields"]["addr"].is_string(), "structured fields stay fields: {listening}");

    for (binary, args) in
        [(diplo_tests::Binary::ControlPlane, vec!["serve"]), (diplo_tests::Binary::Agent, vec!["--server", "127.0.0.1:1"])]
    {
        let mut command = std::process::Command::new(diplo_tests::binary(binary));
        command.args(&args).env("DIPLO_LOG_FORMAT", "yaml").env("DIPLO_DATA_DIR", "/nonexistent/diplo-log-format-test");
        let output = diplo_tests::output_with_timeout(command, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{binary:?} started with DIPLO_LOG_FORMAT=yaml: {stderr}");
        assert!(stderr.contains("DIPLO_LOG_FORMAT") && stderr.contains("yaml"), "{binary:?}: {stderr}");
    }
}
