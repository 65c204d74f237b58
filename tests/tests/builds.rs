//! Builds from git through the real control plane, with fake builder nodes played by the
//! test over real sessions: the lifecycle queued → running → succeeded over REST and
//! gRPC, logs with and without follow, cancel, a builder node disconnecting, a report
//! from another node, bad requests naming their field, roles, no builder at all, the
//! choice of node by platform and builder, and builds left unfinished by a crash.

use std::time::{Duration, Instant};

use diplo_api::pb;
use diplo_api::pb::build_service_client::BuildServiceClient;
use diplo_api::pb::cluster_service_client::ClusterServiceClient;
use diplo_api::pb::event_service_client::EventServiceClient;
use diplo_tests::fake_node::{FakeNode, FakeSession, admin_identity, builder_fingerprint, connect};
use diplo_tests::{ControlPlane, ControlPlaneOptions, HttpResponse, http_request, unique_name};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(30);

/// `METHOD path` on the REST gateway with `token`, off the async runtime (so that fake
/// nodes keep answering meanwhile).
async fn rest(control_plane: &ControlPlane, token: &str, method: &'static str, path: &str, body: Option<Value>) -> HttpResponse {
    let (url, authorization) = (control_plane.rest_url(path), format!("Bearer {token}"));
    tokio::task::spawn_blocking(move || http_request(method, &url, Some(&authorization), body))
        .await
        .expect("REST thread")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An API token of `role`, made by the admin.
async fn api_token(control_plane: &ControlPlane, role: &str) -> String {
    let admin = connect(control_plane, Some(admin_identity(control_plane))).await;
    let request = pb::CreateApiTokenRequest { name: unique_name(role), role: role.into(), ttl_seconds: 3600 };
    ClusterServiceClient::new(admin).create_api_token(request).await.expect("CreateApiToken").into_inner().token
}

async fn admin_builds(control_plane: &ControlPlane) -> BuildServiceClient<Channel> {
    BuildServiceClient::new(connect(control_plane, Some(admin_identity(control_plane))).await)
}

/// A control plane and a fake node (docker builder, amd64) whose session is open and ready.
async fn cluster_with_builder(name: &str, fingerprint: pb::NodeFingerprint) -> (ControlPlane, FakeNode, FakeSession) {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let node = FakeNode::join(&control_plane, &unique_name(name)).await;
    let session = node.open_session(&control_plane, fingerprint).await;
    wait_ready(&control_plane, &node.name).await;
    (control_plane, node, session)
}

/// Waits until the node shows ready.
async fn wait_ready(control_plane: &ControlPlane, name: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let response = rest(control_plane, &control_plane.admin_token(), "GET", &format!("/api/v1/nodes/{name}"), None).await;
        if response.status == 200 && response.json()["status"] == "ready" {
            return;
        }
        assert!(Instant::now() < deadline, "node {name} not ready: {}", response.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The build, as the admin reads it over REST.
async fn get_build(control_plane: &ControlPlane, id: &str) -> Value {
    let response = rest(control_plane, &control_plane.admin_token(), "GET", &format!("/api/v1/images/build/{id}"), None).await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

/// Polls the build until `done` holds for it.
async fn wait_build(control_plane: &ControlPlane, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let build = get_build(control_plane, id).await;
        if done(&build) {
            return build;
        }
        assert!(Instant::now() < deadline, "build {id} never {what}: {build:#}\n{}", control_plane.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a build over REST as `token` while `session` takes its `Build` command and
/// accepts it; returns the REST answer and the command.
async fn start_accepted(
    control_plane: &ControlPlane,
    session: &mut FakeSession,
    body: Value,
) -> (HttpResponse, pb::Command, pb::BuildImage) {
    let (url, authorization) = (control_plane.rest_url("/api/v1/images/build"), format!("Bearer {}", control_plane.admin_token()));
    let post = tokio::task::spawn_blocking(move || http_request("POST", &url, Some(&authorization), Some(body)));
    let command = session.next_command(LIMIT).await;
    let Some(pb::command::Op::Build(build)) = command.op.clone() else { panic!("a Build command expected, got {command:?}") };
    session.answer(&command.request_id, None).await;
    let response = post.await.expect("REST thread").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status, 202, "{}\n{}", response.body, control_plane.logs());
    (response, command, build)
}

fn succeeded(build_id: &str, image: &str) -> pb::BuildReport {
    pb::BuildReport {
        build_id: build_id.into(),
        status: "succeeded".into(),
        image: format!("{image}@sha256:{}", "ab".repeat(32)),
        digest: format!("sha256:{}", "ab".repeat(32)),
        language: "go".into(),
        detected_from: "go.mod".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        ..Default::default()
    }
}

/// Every stored event as `(kind, message)`, replayed through `EventService.Watch`.
async fn event_kinds(control_plane: &ControlPlane) -> Vec<(String, String)> {
    let channel = connect(control_plane, Some(admin_identity(control_plane))).await;
    let request = pb::WatchRequest { kinds: Vec::new(), after_sequence: 0, replay: true };
    let mut stream = EventServiceClient::new(channel).watch(request).await.expect("Watch as admin").into_inner();
    let mut all = Vec::new();
    while let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_millis(700), stream.message()).await {
        all.push((event.kind, event.message));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_goes_from_queued_to_succeeded_over_rest_and_grpc() {
    let (control_plane, node, mut session) = cluster_with_builder("builder", builder_fingerprint("amd64", &["podman", "docker"])).await;
    let body = json!({
        "id": "lifecycle-1",
        "git_repo": "https://git.example/team/app.git",
        "git_branch": "main",
        "buildpack_type": "dockerfile",
        "image_tag": "team/app:v1",
        "dockerfile_config": {"dockerfile_path": "docker/Dockerfile", "build_args": {"VERSION": "1"}},
        "nixpacks_config": {"start_command": "", "variables": {}},
    });
    let (response, command, build) = start_accepted(&control_plane, &mut session, body).await;
    let started = response.json();
    assert_eq!(started["id"], "lifecycle-1");
    assert_eq!(started["status"], "running", "{started:#}");
    assert_eq!(started["node_id"], node.id.as_str());
    assert_eq!(started["builder"], "docker", "docker is preferred over podman");
    assert_eq!(started["buildpack_type"], "dockerfile");
    assert_eq!(started["pushed"], false, "no cluster registry: the image stays on its node");
    assert_eq!(started["image"], "team/app:v1");
    for field in
        ["created_at", "started_at", "duration_seconds", "message", "git_repo", "git_branch", "commit", "language", "detected_from"]
    {
        assert!(started.get(field).is_some(), "{field} missing: {started:#}");
    }
    // What the node was asked to build.
    assert_eq!(command.runtime, pb::RuntimeKind::Docker as i32);
    assert_eq!((build.build_id.as_str(), build.builder.as_str(), build.image.as_str()), ("lifecycle-1", "docker", "team/app:v1"));
    assert!(!build.push);
    assert_eq!((build.dockerfile_path.as_str(), build.git_branch.as_str()), ("docker/Dockerfile", "main"));
    assert_eq!(build.build_args.get("VERSION").map(String::as_str), Some("1"));
    assert_eq!(build.timeout_seconds, 1800, "the default build timeout");

    session.stream_output(&command.request_id, &[b"Step 1/2 : FROM golang\n", b"Step 2/2 : RUN go build\n"]).await;
    session.report(succeeded("lifecycle-1", "team/app:v1")).await;
    let done = wait_build(&control_plane, "lifecycle-1", "succeeded", |b| b["status"] == "succeeded").await;
    assert_eq!(done["digest"], format!("sha256:{}", "ab".repeat(32)));
    assert!(done["image"].as_str().unwrap_or_default().starts_with("team/app:v1@sha256:"), "{done:#}");
    assert_eq!((done["language"].as_str(), done["detected_from"].as_str()), (Some("go"), Some("go.mod")));
    assert_eq!(done["commit"], "0123456789abcdef0123456789abcdef01234567");
    assert!(done["finished_at"].is_string() && done["duration_seconds"].as_f64().is_some_and(|d| d >= 0.0), "{done:#}");

    // The stored log.
    let logs = rest(&control_plane, &control_plane.admin_token(), "GET", "/api/v1/images/build/lifecycle-1/logs", None).await;
    assert_eq!(logs.status, 200);
    assert_eq!(logs.body, "Step 1/2 : FROM golang\nStep 2/2 : RUN go build\n");

    // The same over gRPC.
    let mut grpc = admin_builds(&control_plane).await;
    let got = grpc.get_build(pb::BuildRef { id: "lifecycle-1".into() }).await.expect("GetBuild").into_inner();
    assert_eq!((got.status.as_str(), got.builder.as_str(), got.node_id.as_str()), ("succeeded", "docker", node.id.as_str()));
    assert_eq!(got.digest, format!("sha256:{}", "ab".repeat(32)));
    assert!(got.finished_at.is_some() && got.started_at.is_some());
    let mut stream =
        grpc.build_logs(pb::BuildLogsRequest { id: "lifecycle-1".into(), follow: false }).await.expect("BuildLogs").into_inner();
    let mut text = Vec::new();
    while let Some(line) = stream.message().await.expect("log line") {
        text.extend(line.data);
    }
    assert_eq!(String::from_utf8_lossy(&text), "Step 1/2 : FROM golang\nStep 2/2 : RUN go build\n");

    // A second build over gRPC; the list is newest first.
    let request = pb::BuildRequest {
        id: "lifecycle-2".into(),
        git_repo: "https://git.example/team/app.git".into(),
        buildpack_type: "static".into(),
        output_dir: "public".into(),
        ..Default::default()
    };
    let mut start_client = grpc.clone();
    let start = tokio::spawn(async move { start_client.start_build(request).await });
    let command = session.next_command(LIMIT).await;
    let Some(pb::command::Op::Build(second)) = command.op.clone() else { panic!("Build expected: {command:?}") };
    assert_eq!((second.buildpack_type.as_str(), second.output_dir.as_str()), ("static", "public"));
    assert_eq!(second.image, "app:lifecycle-2", "named after the repository, tagged with the build id");
    session.answer(&command.request_id, None).await;
    let started = start.await.expect("task").expect("StartBuild").into_inner();
    assert_eq!(started.status, "running");
    let listed = grpc.list_builds(pb::ListBuildsRequest {}).await.expect("ListBuilds").into_inner().builds;
    assert_eq!(listed.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), ["lifecycle-2", "lifecycle-1"]);
    let rest_list = rest(&control_plane, &control_plane.admin_token(), "GET", "/api/v1/images/builds", None).await.json();
    assert_eq!(
        rest_list.as_array().map(|l| l.iter().map(|b| b["id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!("lifecycle-2"), json!("lifecycle-1")])
    );
    // A taken id.
    let again = rest(
        &control_plane,
        &control_plane.admin_token(),
        "POST",
        "/api/v1/images/build",
        Some(json!({"id": "lifecycle-1", "git_repo": "https://git.example/a.git"})),
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);

    let kinds = event_kinds(&control_plane).await;
    assert!(kinds.iter().any(|(k, m)| k == "build.started" && m.contains("lifecycle-1")), "{kinds:?}");
    assert!(kinds.iter().any(|(k, m)| k == "build.succeeded" && m.contains("lifecycle-1")), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_stream_until_the_build_ends() {
    let (control_plane, _node, mut session) = cluster_with_builder("follow", builder_fingerprint("amd64", &["docker"])).await;
    let body = json!({"id": "follow-1", "git_repo": "https://git.example/app.git"});
    let (_, command, _) = start_accepted(&control_plane, &mut session, body).await;
    let output = session.open_output(&command.request_id);
    output.send(b"cloning\n".to_vec()).await.expect("output");
    // Without follow: what came so far, at once.
    let deadline = Instant::now() + LIMIT;
    loop {
        let so_far = rest(&control_plane, &control_plane.admin_token(), "GET", "/api/v1/images/build/follow-1/logs", None).await;
        if so_far.body == "cloning\n" {
            break;
        }
        assert!(Instant::now() < deadline, "log so far: {:?}", so_far.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Followed over REST and gRPC: the rest, until the end.
    let (url, authorization) =
        (control_plane.rest_url("/api/v1/images/build/follow-1/logs?follow=true"), format!("Bearer {}", control_plane.admin_token()));
    let followed = tokio::task::spawn_blocking(move || http_request("GET", &url, Some(&authorization), None));
    let mut grpc = admin_builds(&control_plane).await;
    let mut stream = grpc.build_logs(pb::BuildLogsRequest { id: "follow-1".into(), follow: true }).await.expect("BuildLogs").into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!followed.is_finished(), "a followed log ends only when the build ends");
    output.send(b"building\n".to_vec()).await.expect("output");
    output.send(b"done\n".to_vec()).await.expect("output");
    drop(output);
    session.report(succeeded("follow-1", "app:follow-1")).await;
    let followed = tokio::time::timeout(LIMIT, followed).await.expect("the followed log ends").expect("thread").expect("GET");
    assert_eq!(followed.status, 200);
    assert_eq!(followed.body, "cloning\nbuilding\ndone\n");
    let mut text = Vec::new();
    while let Some(line) = tokio::time::timeout(LIMIT, stream.message()).await.expect("the gRPC follow ends").expect("line") {
        text.extend(line.data);
    }
    assert_eq!(String::from_utf8_lossy(&text), "cloning\nbuilding\ndone\n");
    assert_eq!(get_build(&control_plane, "follow-1").await["status"], "succeeded");
    // Following an ended build serves its stored log and ends at once.
    let started = Instant::now();
    let ended = rest(&control_plane, &control_plane.admin_token(), "GET", "/api/v1/images/build/follow-1/logs?follow=true", None).await;
    assert_eq!((ended.status, ended.body.as_str()), (200, "cloning\nbuilding\ndone\n"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let missing = rest(&control_plane, &control_plane.admin_token(), "GET", "/api/v1/images/build/nope/logs", None).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_tells_the_node_and_a_late_report_changes_nothing() {
    let (control_plane, _node, mut session) = cluster_with_builder("cancel", builder_fingerprint("amd64", &["docker"])).await;
    let (_, _, _) =
        start_accepted(&control_plane, &mut session, json!({"id": "cancel-1", "git_repo": "https://git.example/app.git"})).await;
    let (url, authorization) = (control_plane.rest_url("/api/v1/images/build/cancel-1"), format!("Bearer {}", control_plane.admin_token()));
    let cancel = tokio::task::spawn_blocking(move || http_request("DELETE", &url, Some(&authorization), None));
    let command = session.next_command(LIMIT).await;
    assert_eq!(command.op, Some(pb::command::Op::CancelBuild("cancel-1".into())));
    session.answer(&command.request_id, None).await;
    let cancelled = cancel.await.expect("thread").expect("DELETE");
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["status"], "cancelled");
    assert!(cancelled.json()["message"].as_str().unwrap_or_default().contains("cancelled by"), "{}", cancelled.body);
    // The node's own report afterwards does not undo it.
    session.report(succeeded("cancel-1", "app:cancel-1")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let build = get_build(&control_plane, "cancel-1").await;
    assert_eq!(build["status"], "cancelled", "{build:#}");
    assert!(build.get("digest").is_none_or(Value::is_null), "{build:#}");
    // Cancelling an ended build returns it as it is.
    let again = rest(&control_plane, &control_plane.admin_token(), "DELETE", "/api/v1/images/build/cancel-1", None).await;
    assert_eq!((again.status, again.json()["status"].clone()), (200, json!("cancelled")));
    assert!(session.try_next_command(Duration::from_millis(500)).await.is_none(), "no second CancelBuild");
    let missing = rest(&control_plane, &control_plane.admin_token(), "DELETE", "/api/v1/images/build/nope", None).await;
    assert_eq!(missing.status, 404);
    assert!(event_kinds(&control_plane).await.iter().any(|(k, m)| k == "build.cancelled" && m.contains("cancel-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_node_that_disconnects_fails_its_build() {
    let (control_plane, node, mut session) = cluster_with_builder("gone", builder_fingerprint("amd64", &["docker"])).await;
    start_accepted(&control_plane, &mut session, json!({"id": "gone-1", "git_repo": "https://git.example/app.git"})).await;
    session.close();
    let build = wait_build(&control_plane, "gone-1", "failed", |b| b["status"] == "failed").await;
    assert_eq!(build["message"], format!("node {} disconnected during the build", node.id), "{build:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_another_node_is_refused_and_changes_nothing() {
    let (control_plane, node, mut session) = cluster_with_builder("genuine", builder_fingerprint("amd64", &["docker"])).await;
    let intruder = FakeNode::join(&control_plane, &unique_name("intruder")).await;
    let mut intruding = intruder.open_session(&control_plane, builder_fingerprint("amd64", &[])).await;
    let (_, command, _) =
        start_accepted(&control_plane, &mut session, json!({"id": "forged-1", "git_repo": "https://git.example/app.git"})).await;
    assert_eq!(get_build(&control_plane, "forged-1").await["node_id"], node.id.as_str());
    intruding.report(succeeded("forged-1", "evil/app:1")).await;
    let ended = intruding.ended(LIMIT).await;
    assert_eq!(ended.as_ref().map_err(tonic::Status::code), Err(Code::PermissionDenied), "{ended:?}");
    let build = get_build(&control_plane, "forged-1").await;
    assert_eq!(build["status"], "running", "{build:#}");
    assert_eq!(build["image"], "app:forged-1");
    let kinds = event_kinds(&control_plane).await;
    assert!(
        kinds.iter().any(|(k, m)| k == "security.refused" && m.contains("forged-1") && m.contains(&node.id)),
        "the refusal is audited: {kinds:?}"
    );
    // The genuine node's report still counts.
    session.stream_output(&command.request_id, &[b"ok\n"]).await;
    session.report(succeeded("forged-1", "app:forged-1")).await;
    let build = wait_build(&control_plane, "forged-1", "succeeded", |b| b["status"] == "succeeded").await;
    assert!(build["image"].as_str().unwrap_or_default().starts_with("app:forged-1@"), "{build:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let admin = control_plane.admin_token();
    let repo = "https://git.example/app.git";
    let cases = [
        (json!({"git_repo": repo, "buildpack_type": "heroku"}), "buildpack_type"),
        (json!({"git_repo": "--upload-pack=touch /tmp/x"}), "git_repo"),
        (json!({"git_repo": "ext::sh -c touch% /tmp/pwned"}), "git_repo"),
        (json!({"git_repo": repo, "git_branch": "a..b"}), "git_branch"),
        (
            json!({"git_repo": repo, "buildpack_type": "dockerfile", "dockerfile_config": {"dockerfile_path": "../../etc/passwd"}}),
            "dockerfile_config.dockerfile_path",
        ),
        (
            json!({"git_repo": repo, "buildpack_type": "dockerfile", "dockerfile_config": {"build_args": {"A B": "1"}}}),
            "dockerfile_config.build_args",
        ),
        (json!({"git_repo": repo, "buildpack_type": "static", "static_config": {"build_command": "a\nb"}}), "static_config.build_command"),
        (json!({"git_repo": repo, "surprise": true}), "surprise"),
        (json!({"git_repo": repo, "dockerfile_config": {"dockerfile": "x"}}), "dockerfile"),
        (json!({"git_repo": repo, "image_tag": "Bad Image"}), "image_tag"),
        (json!({"git_repo": repo, "id": "../x"}), "id"),
        (json!({"git_repo": repo, "platform": "linux"}), "platform"),
        (json!({"git_repo": repo, "language": "c++"}), "language"),
        (json!({"git_branch": "main"}), "git_repo"),
    ];
    for (body, field) in cases {
        let response = rest(&control_plane, &admin, "POST", "/api/v1/images/build", Some(body.clone())).await;
        assert_eq!(response.status, 400, "{body}: {}", response.body);
        let message = response.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(field), "{body}: the message {message:?} does not name {field}");
    }
    let mut grpc = admin_builds(&control_plane).await;
    for (request, field) in [
        (pb::BuildRequest { git_repo: "--upload-pack=x".into(), ..Default::default() }, "git_repo"),
        (pb::BuildRequest { git_repo: repo.into(), buildpack_type: "heroku".into(), ..Default::default() }, "buildpack_type"),
        (pb::BuildRequest { git_repo: repo.into(), git_branch: "a..b".into(), ..Default::default() }, "git_branch"),
        (
            pb::BuildRequest {
                git_repo: repo.into(),
                buildpack_type: "dockerfile".into(),
                dockerfile_path: "../../etc/passwd".into(),
                ..Default::default()
            },
            "dockerfile_path",
        ),
    ] {
        let status = grpc.start_build(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    let listed = grpc.list_builds(pb::ListBuildsRequest {}).await.expect("ListBuilds").into_inner().builds;
    assert!(listed.is_empty(), "a refused request records nothing: {listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_builds_and_logs_but_cannot_start_or_cancel_them() {
    let (control_plane, _node, mut session) = cluster_with_builder("roles", builder_fingerprint("amd64", &["docker"])).await;
    let viewer = api_token(&control_plane, "viewer").await;
    let deployer = api_token(&control_plane, "deployer").await;
    let body = json!({"id": "roles-1", "git_repo": "https://git.example/app.git"});
    let refused = rest(&control_plane, &viewer, "POST", "/api/v1/images/build", Some(body.clone())).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    // A deployer may start one.
    let (url, authorization) = (control_plane.rest_url("/api/v1/images/build"), format!("Bearer {deployer}"));
    let post = tokio::task::spawn_blocking(move || http_request("POST", &url, Some(&authorization), Some(body)));
    let command = session.next_command(LIMIT).await;
    session.answer(&command.request_id, None).await;
    assert_eq!(post.await.expect("thread").expect("POST").status, 202);
    session.stream_output(&command.request_id, &[b"hello\n"]).await;
    for path in ["/api/v1/images/build/roles-1", "/api/v1/images/builds", "/api/v1/images/build/roles-1/logs"] {
        let read = rest(&control_plane, &viewer, "GET", path, None).await;
        assert_eq!(read.status, 200, "{path}: {}", read.body);
    }
    let refused = rest(&control_plane, &viewer, "DELETE", "/api/v1/images/build/roles-1", None).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(get_build(&control_plane, "roles-1").await["status"], "running");
    // Over gRPC too; a node certificate may do nothing here.
    let viewer_channel = connect(&control_plane, None).await;
    let mut as_viewer = BuildServiceClient::with_interceptor(viewer_channel, move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", format!("Bearer {viewer}").parse().expect("metadata"));
        Ok(request)
    });
    let status = as_viewer.start_build(pb::BuildRequest { git_repo: "https://git.example/app.git".into(), ..Default::default() }).await;
    assert_eq!(status.expect_err("refused").code(), Code::PermissionDenied);
    let status = as_viewer.cancel_build(pb::BuildRef { id: "roles-1".into() }).await;
    assert_eq!(status.expect_err("refused").code(), Code::PermissionDenied);
    assert_eq!(as_viewer.get_build(pb::BuildRef { id: "roles-1".into() }).await.expect("GetBuild").into_inner().status, "running");
    let node = FakeNode::join(&control_plane, &unique_name("reader")).await;
    let mut as_node = BuildServiceClient::new(connect(&control_plane, Some(node.identity())).await);
    let status = as_node.get_build(pb::BuildRef { id: "roles-1".into() }).await;
    assert_eq!(status.expect_err("refused").code(), Code::PermissionDenied);
    // The deployer cancels it.
    let (url, authorization) = (control_plane.rest_url("/api/v1/images/build/roles-1"), format!("Bearer {deployer}"));
    let cancel = tokio::task::spawn_blocking(move || http_request("DELETE", &url, Some(&authorization), None));
    let command = session.next_command(LIMIT).await;
    session.answer(&command.request_id, None).await;
    assert_eq!(cancel.await.expect("thread").expect("DELETE").json()["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_builder_the_build_fails_saying_why() {
    let (control_plane, _node, _session) = cluster_with_builder("plain", builder_fingerprint("amd64", &[])).await;
    let response = rest(
        &control_plane,
        &control_plane.admin_token(),
        "POST",
        "/api/v1/images/build",
        Some(json!({"id": "none-1", "git_repo": "https://git.example/app.git"})),
    )
    .await;
    assert_eq!(response.status, 202, "{}", response.body);
    let build = response.json();
    assert_eq!(build["status"], "failed", "{build:#}");
    assert!(build["message"].as_str().unwrap_or_default().contains("no node has an image builder"), "{build:#}");
    assert!(build["finished_at"].is_string());
    let logs = rest(&control_plane, &control_plane.admin_token(), "GET", "/api/v1/images/build/none-1/logs", None).await;
    assert!(logs.body.contains("no node has an image builder"), "{}", logs.body);
    assert!(event_kinds(&control_plane).await.iter().any(|(k, m)| k == "build.failed" && m.contains("none-1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_is_chosen_by_platform_then_builder_preference() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let mut sessions = Vec::new();
    let mut ids = std::collections::BTreeMap::new();
    for (name, arch, builders) in
        [("podman-amd", "amd64", &["podman"][..]), ("docker-amd", "amd64", &["docker", "buildah"]), ("buildah-arm", "arm64", &["buildah"])]
    {
        let node = FakeNode::join(&control_plane, &unique_name(name)).await;
        let session = node.open_session(&control_plane, builder_fingerprint(arch, builders)).await;
        wait_ready(&control_plane, &node.name).await;
        ids.insert(name, node.id.clone());
        sessions.push((name, node, session));
    }
    // Any platform: Docker wins.
    let (_, docker_session) = sessions.iter_mut().map(|(n, _, s)| (*n, s)).find(|(n, _)| *n == "docker-amd").expect("node");
    let (response, command, build) =
        start_accepted(&control_plane, docker_session, json!({"id": "pick-1", "git_repo": "https://git.example/app.git"})).await;
    assert_eq!(response.json()["node_id"], ids["docker-amd"].as_str());
    assert_eq!((build.builder.as_str(), command.runtime), ("docker", pb::RuntimeKind::Docker as i32));
    // linux/arm64: the only arm64 builder, with buildah on the node's preferred runtime.
    let (_, arm_session) = sessions.iter_mut().map(|(n, _, s)| (*n, s)).find(|(n, _)| *n == "buildah-arm").expect("node");
    let (response, command, build) = start_accepted(
        &control_plane,
        arm_session,
        json!({"id": "pick-2", "git_repo": "https://git.example/app.git", "platform": "linux/arm64"}),
    )
    .await;
    let started = response.json();
    assert_eq!((started["node_id"].as_str(), started["platform"].as_str()), (Some(ids["buildah-arm"].as_str()), Some("linux/arm64")));
    assert_eq!((build.builder.as_str(), command.runtime), ("buildah", pb::RuntimeKind::Docker as i32));
    // No builder for the platform: the build fails naming it.
    let response = rest(
        &control_plane,
        &control_plane.admin_token(),
        "POST",
        "/api/v1/images/build",
        Some(json!({"id": "pick-3", "git_repo": "https://git.example/app.git", "platform": "linux/riscv64"})),
    )
    .await;
    let build = response.json();
    assert_eq!(build["status"], "failed", "{build:#}");
    assert!(build["message"].as_str().unwrap_or_default().contains("runs linux/riscv64"), "{build:#}");
    // Cordoned, the Docker node is passed over.
    let admin = connect(&control_plane, Some(admin_identity(&control_plane))).await;
    ClusterServiceClient::new(admin).cordon_node(pb::NodeRef { node: ids["docker-amd"].clone() }).await.expect("cordon");
    let (_, podman_session) = sessions.iter_mut().map(|(n, _, s)| (*n, s)).find(|(n, _)| *n == "podman-amd").expect("node");
    let (response, command, build) = start_accepted(
        &control_plane,
        podman_session,
        json!({"id": "pick-4", "git_repo": "https://git.example/app.git", "platform": "linux/amd64"}),
    )
    .await;
    assert_eq!(response.json()["node_id"], ids["podman-amd"].as_str());
    assert_eq!((build.builder.as_str(), command.runtime), ("podman", pb::RuntimeKind::Podman as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_left_running_by_a_crash_fail_at_restart() {
    let (mut control_plane, _node, mut session) = cluster_with_builder("crash", builder_fingerprint("amd64", &["docker"])).await;
    start_accepted(&control_plane, &mut session, json!({"id": "crash-1", "git_repo": "https://git.example/app.git"})).await;
    drop(session);
    tokio::task::block_in_place(|| control_plane.crash_and_restart());
    let build = get_build(&control_plane, "crash-1").await;
    assert_eq!(build["status"], "failed", "{build:#}");
    assert_eq!(build["message"], "interrupted: the control plane restarted");
    assert!(build["finished_at"].is_string());
}

/// Runs `diplo --config <cli.toml> args…` off the async runtime.
fn cli(control_plane: &ControlPlane, args: &[&str]) -> tokio::task::JoinHandle<std::process::Output> {
    let mut command = std::process::Command::new(diplo_tests::binary(diplo_tests::Binary::Cli));
    command.env_remove("DIPLO_CONFIG").arg("--config").arg(control_plane.file("cli.toml")).args(args);
    tokio::task::spawn_blocking(move || diplo_tests::output_with_timeout(command, diplo_tests::CLI_TIMEOUT))
}

fn text(output: &std::process::Output) -> (bool, String, String) {
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_lists_shows_follows_and_cancels_builds() {
    let (control_plane, node, mut session) = cluster_with_builder("cli", builder_fingerprint("amd64", &["docker"])).await;
    let start = cli(
        &control_plane,
        &[
            "builds",
            "start",
            "--repo",
            "https://git.example/app.git",
            "--id",
            "cli-1",
            "--dockerfile",
            "Dockerfile.prod",
            "--build-arg",
            "V=1",
            "--image",
            "app:v1",
        ],
    );
    let command = session.next_command(LIMIT).await;
    let Some(pb::command::Op::Build(build)) = command.op.clone() else { panic!("Build expected: {command:?}") };
    assert_eq!(
        (build.buildpack_type.as_str(), build.dockerfile_path.as_str(), build.image.as_str()),
        ("dockerfile", "Dockerfile.prod", "app:v1")
    );
    assert_eq!(build.build_args.get("V").map(String::as_str), Some("1"));
    session.answer(&command.request_id, None).await;
    let (ok, stdout, stderr) = text(&start.await.expect("thread"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("build cli-1 running on node {} with docker", node.id)), "{stdout}");

    let output = session.open_output(&command.request_id);
    output.send(b"hello\n".to_vec()).await.expect("output");
    let deadline = Instant::now() + LIMIT;
    loop {
        let (ok, stdout, stderr) = text(&cli(&control_plane, &["builds", "logs", "cli-1"]).await.expect("thread"));
        assert!(ok, "{stderr}");
        if stdout == "hello\n" {
            break;
        }
        assert!(Instant::now() < deadline, "logs: {stdout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let follow = cli(&control_plane, &["builds", "logs", "-f", "cli-1"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!follow.is_finished(), "logs -f ends with the build");
    output.send(b"world\n".to_vec()).await.expect("output");
    drop(output);
    session.report(succeeded("cli-1", "app:v1")).await;
    let (ok, stdout, stderr) = text(&follow.await.expect("thread"));
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "hello\nworld\n");

    let (ok, stdout, stderr) = text(&cli(&control_plane, &["builds", "ls", "-o", "table"]).await.expect("thread"));
    assert!(ok && stdout.lines().any(|l| l.starts_with("cli-1") && l.contains("succeeded") && l.contains("docker")), "{stdout}{stderr}");
    let (_, stdout, _) = text(&cli(&control_plane, &["builds", "ls", "-o", "json"]).await.expect("thread"));
    let listed: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(listed[0]["id"], "cli-1");
    let (_, stdout, _) = text(&cli(&control_plane, &["builds", "show", "cli-1"]).await.expect("thread"));
    let shown: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(
        (shown["status"].as_str(), shown["digest"].as_str()),
        (Some("succeeded"), Some(format!("sha256:{}", "ab".repeat(32)).as_str()))
    );

    // Cancel.
    let start = cli(&control_plane, &["builds", "start", "--repo", "https://git.example/app.git", "--id", "cli-2"]);
    let command = session.next_command(LIMIT).await;
    session.answer(&command.request_id, None).await;
    assert!(start.await.expect("thread").status.success());
    let cancel = cli(&control_plane, &["builds", "cancel", "cli-2"]);
    let command = session.next_command(LIMIT).await;
    assert_eq!(command.op, Some(pb::command::Op::CancelBuild("cli-2".into())));
    session.answer(&command.request_id, None).await;
    let (ok, stdout, stderr) = text(&cancel.await.expect("thread"));
    assert!(ok && stdout.trim() == "build cli-2 cancelled", "{stdout}{stderr}");

    // Refusals: flags, and a build no node can take.
    let (ok, _, stderr) = text(
        &cli(&control_plane, &["builds", "start", "--repo", "https://git.example/app.git", "--build-arg", "V=1"]).await.expect("thread"),
    );
    assert!(!ok && stderr.contains("--build-arg"), "{stderr}");
    let (ok, _, stderr) = text(&cli(&control_plane, &["builds", "start", "--repo=--upload-pack=x"]).await.expect("thread"));
    assert!(!ok && stderr.contains("git_repo"), "{stderr}");
    let (ok, _, stderr) = text(
        &cli(&control_plane, &["builds", "start", "--repo", "https://git.example/app.git", "--platform", "linux/s390x"])
            .await
            .expect("thread"),
    );
    assert!(!ok && stderr.contains("runs linux/s390x"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_languages_and_images_and_runtime_info_the_build_directory() {
    let options = ControlPlaneOptions {
        env: vec![("DIPLO_BASE_IMAGES".into(), "static=127.0.0.1:5000/diplo/busybox:latest".into())],
        ..Default::default()
    };
    let control_plane = ControlPlane::start(options);
    let node = FakeNode::join(&control_plane, &unique_name("dirs")).await;
    let _session = node.open_session(&control_plane, builder_fingerprint("amd64", &["docker"])).await;
    wait_ready(&control_plane, &node.name).await;
    let status = control_plane.rest_json("/api/status");
    let languages: Vec<&str> =
        status["runtime"]["supported_languages"].as_array().expect("languages").iter().filter_map(Value::as_str).collect();
    for language in ["go", "node", "python"] {
        assert!(languages.contains(&language), "{languages:?}");
    }
    let images: Vec<&str> = status["runtime"]["supported_images"].as_array().expect("images").iter().filter_map(Value::as_str).collect();
    assert!(images.contains(&"127.0.0.1:5000/diplo/busybox:latest"), "the configured base image: {images:?}");
    assert!(images.len() > 3, "{images:?}");
    let info = control_plane.rest_json("/api/v1/runtime/info");
    assert_eq!(info["build_dir"], "/var/lib/diplo/builds", "{info:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_repository_url_reach_the_builder_node_only() {
    let (control_plane, _node, mut session) = cluster_with_builder("secret", builder_fingerprint("amd64", &["docker"])).await;
    let repo = "https://deploy:s3cr3t-t0ken@git.example/app.git";
    let (response, _, build) = start_accepted(&control_plane, &mut session, json!({"id": "secret-1", "git_repo": repo})).await;
    assert_eq!(build.git_repo, repo, "the node gets the URL it clones");
    assert_eq!(response.json()["git_repo"], "https://deploy:***@git.example/app.git");
    let viewer = api_token(&control_plane, "viewer").await;
    for path in ["/api/v1/images/build/secret-1", "/api/v1/images/builds"] {
        let read = rest(&control_plane, &viewer, "GET", path, None).await;
        assert!(!read.body.contains("s3cr3t"), "{path}: {}", read.body);
    }
    let events = event_kinds(&control_plane).await;
    assert!(events.iter().any(|(k, _)| k == "build.started"), "{events:?}");
    assert!(events.iter().all(|(_, m)| !m.contains("s3cr3t")), "{events:?}");
}
