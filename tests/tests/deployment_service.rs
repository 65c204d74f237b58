//! `DeploymentService` over gRPC (mTLS, the admin certificate) with real deployments on
//! a real agent running Docker: Deploy, GetDeployment, ListDeployments, Scale, Update,
//! Rollback, ListInstances and DeleteDeployment, each checked against what Docker runs.

use std::time::{Duration, Instant};

use diplo_api::pb;
use diplo_api::pb::deployment_service_client::DeploymentServiceClient;
use diplo_tests::{ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, docker_containers_of, unique_name};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);

async fn client(control_plane: &ControlPlane) -> DeploymentServiceClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(control_plane.read_file("ca.pem")))
        .domain_name("localhost")
        .identity(Identity::from_pem(control_plane.read_file("admin.pem"), control_plane.read_file("admin-key.pem")));
    let channel = Endpoint::from_shared(format!("https://{}", control_plane.grpc_addr()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS")
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .expect("connect as admin");
    DeploymentServiceClient::new(channel)
}

/// `VERSION` in the environment of every container of a deployment, sorted.
fn versions(deployment: &str) -> Vec<String> {
    let mut all: Vec<String> = docker_containers_of(deployment)
        .iter()
        .map(|id| {
            let output = std::process::Command::new("docker")
                .args(["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", id])
                .output()
                .expect("docker inspect");
            String::from_utf8_lossy(&output.stdout).lines().find_map(|l| l.strip_prefix("VERSION=").map(str::to_owned)).unwrap_or_default()
        })
        .collect();
    all.sort();
    all
}

fn spec(name: &str, replicas: u32, version: &str) -> pb::DeploymentSpec {
    let container = pb::ContainerSpec {
        image: IMAGE.into(),
        command: vec!["sleep".into(), "1000".into()],
        environment: [("VERSION".to_owned(), version.to_owned())].into_iter().collect(),
        restart_policy: "always".into(),
        ..Default::default()
    };
    pb::DeploymentSpec {
        name: name.into(),
        image: IMAGE.into(),
        replicas,
        container: Some(container),
        max_parallel: 1,
        ..Default::default()
    }
}

/// Polls `GetDeployment` until `check` holds (and Docker agrees, per `docker_check`).
async fn converge(
    client: &mut DeploymentServiceClient<Channel>,
    name: &str,
    what: &str,
    check: impl Fn(&pb::Deployment) -> bool,
    docker_check: impl Fn(&[String]) -> bool,
) -> pb::Deployment {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = client.get_deployment(pb::DeploymentRef { name: name.into() }).await.expect("GetDeployment").into_inner();
        let v = versions(name);
        if check(&d) && docker_check(&v) {
            return d;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: docker {v:?}, {d:#?}");
        tokio::time::sleep(POLL).await;
    }
}

fn running(d: &pb::Deployment) -> usize {
    d.instances.iter().filter(|i| i.status == "running").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_service_runs_real_deployments_over_grpc() {
    let control_plane = tokio::task::block_in_place(|| ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30))));
    let token = tokio::task::block_in_place(|| control_plane.join_token(&[]));
    let (_agent, node) = tokio::task::block_in_place(|| {
        control_plane.start_ready_agent_with_env("grpc-node", Some(&token), &[("DIPLO_RUNTIMES", "docker")])
    });
    let node_id = node["id"].as_str().expect("id").to_owned();
    let name = unique_name("grpc-app");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let mut client = client(&control_plane).await;

    // Deploy (twice with one idempotency key: one deployment).
    let request = pb::DeployRequest { spec: Some(spec(&name, 1, "1")), idempotency_key: format!("key-{name}") };
    let created = client.deploy(request.clone()).await.expect("Deploy").into_inner();
    assert_eq!(created.revision, 1);
    let again = client.deploy(request).await.expect("Deploy again").into_inner();
    assert_eq!(again.id, created.id, "the same key deploys once");
    let d = converge(&mut client, &name, "revision 1 running", |d| d.status == "running" && running(d) == 1, |v| v == ["1"]).await;
    assert_eq!(d.instances[0].node_id, node_id);
    assert_eq!(d.instances[0].runtime, pb::RuntimeKind::Docker as i32);
    let container = d.instances[0].container.as_ref().expect("the instance's container");
    assert_eq!(docker_containers_of(&name), vec![container.id.clone()], "the container Docker runs is the one reported");

    // ListDeployments.
    let listed = client.list_deployments(pb::ListDeploymentsRequest {}).await.expect("ListDeployments").into_inner().deployments;
    let entry = listed.iter().find(|d| d.spec.as_ref().is_some_and(|s| s.name == name)).expect("listed");
    assert_eq!(entry.id, created.id);

    // Scale up: same revision, two containers.
    let scaled = client.scale(pb::ScaleRequest { name: name.clone(), replicas: 2 }).await.expect("Scale").into_inner();
    assert_eq!(scaled.revision, 1);
    converge(&mut client, &name, "2 replicas", |d| d.status == "running" && running(d) == 2, |v| v == ["1", "1"]).await;

    // ListInstances: the two, for this deployment and in the full list.
    let instances =
        client.list_instances(pb::ListInstancesRequest { deployment: name.clone() }).await.expect("ListInstances").into_inner().instances;
    assert_eq!(instances.len(), 2, "{instances:#?}");
    assert!(instances.iter().all(|i| i.status == "running" && i.revision == 1 && i.node_id == node_id), "{instances:#?}");
    let all = client.list_instances(pb::ListInstancesRequest::default()).await.expect("ListInstances (all)").into_inner().instances;
    for instance in &instances {
        assert!(all.iter().any(|i| i.id == instance.id), "{all:#?}");
    }

    // Update: a new revision rolled out.
    let updated = client.update(pb::UpdateRequest { spec: Some(spec(&name, 2, "2")), max_parallel: 1 }).await.expect("Update").into_inner();
    assert_eq!(updated.revision, 2);
    converge(&mut client, &name, "revision 2", |d| d.revision == 2 && d.status == "running" && running(d) == 2, |v| v == ["2", "2"]).await;

    // Rollback: revision 3 with the spec of revision 1.
    let rolled = client.rollback(pb::DeploymentRef { name: name.clone() }).await.expect("Rollback").into_inner();
    assert_eq!(rolled.revision, 3);
    converge(&mut client, &name, "the rollback", |d| d.revision == 3 && d.status == "running" && running(d) == 2, |v| v == ["1", "1"])
        .await;

    // DeleteDeployment: containers and the deployment go.
    client.delete_deployment(pb::DeploymentRef { name: name.clone() }).await.expect("DeleteDeployment");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = client.get_deployment(pb::DeploymentRef { name: name.clone() }).await;
        let containers = docker_containers_of(&name);
        if matches!(&got, Err(status) if status.code() == Code::NotFound) && containers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still there: {containers:?} {got:?}");
        tokio::time::sleep(POLL).await;
    }
    let instances = client.list_instances(pb::ListInstancesRequest { deployment: name.clone() }).await.map(|r| r.into_inner().instances);
    assert!(instances.as_ref().map_or(true, |l| l.is_empty()), "{instances:?}");
}
