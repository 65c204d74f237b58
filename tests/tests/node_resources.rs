//! Images, networks and volumes on a node, end to end with the real binaries and Docker:
//! through REST (the runtime-neutral routes and `/api/v1/docker/*`) and through gRPC
//! (`NodeResourceService`). Pull from the local registry, list, inspect, create a
//! volume and a network, attach a container, see what is in use refused, remove, prune;
//! a viewer cannot write, a deployer cannot remove images, an unknown node is 404, a
//! runtime without networks is 501 naming itself, and once two nodes are ready a call
//! without `?node=` is 400 naming `node`.
//!
//! Every name carries a random suffix; whatever the test created is removed through the
//! Docker CLI at the end, also when it fails.

use std::process::Command;

use diplo_api::pb;
use diplo_api::pb::node_resource_service_client::NodeResourceServiceClient;
use diplo_tests::fake_node::{admin_identity, connect};
use diplo_tests::{ControlPlane, ControlPlaneOptions, unique_name};
use serde_json::{Value, json};
use tonic::Code;

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const IMAGE_PATH: &str = "127.0.0.1:5000%2Fdiplo%2Fbusybox:latest";

/// Docker objects to remove at the end, whatever happens.
#[derive(Default)]
struct Leftovers {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            let _ = Command::new("docker").args(args).output();
        };
        for c in &self.containers {
            docker(&["rm", "-f", c]);
        }
        for n in &self.networks {
            docker(&["network", "rm", n]);
        }
        for v in &self.volumes {
            docker(&["volume", "rm", "-f", v]);
        }
        for i in &self.images {
            docker(&["rmi", i]);
        }
    }
}

fn call(control_plane: &ControlPlane, token: &str, method: &str, path: &str, body: Option<Value>) -> diplo_tests::HttpResponse {
    diplo_tests::http_request(method, &control_plane.rest_url(path), Some(&format!("Bearer {token}")), body)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn expect(response: &diplo_tests::HttpResponse, status: u16, what: &str) -> Value {
    assert_eq!(response.status, status, "{what}: {}", response.body);
    if response.body.is_empty() { Value::Null } else { response.json() }
}

fn api_token(control_plane: &ControlPlane, role: &str) -> String {
    let stdout = control_plane.cli_ok(&["api-token", "create", "--role", role, "--name", &unique_name(role), "--ttl", "1h"]);
    stdout.trim().to_owned()
}

fn random_subnet() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let r = nanos ^ std::process::id().rotate_left(16);
    format!("10.{}.{}.0/24", 200 + (r % 40), (r >> 8) % 256)
}

#[test]
fn images_networks_and_volumes_through_rest_and_grpc() {
    diplo_api::install_crypto_provider();
    if Command::new("docker").arg("version").output().map_or(true, |o| !o.status.success()) {
        return diplo_tests::skip_or_fail("Docker is unavailable: the node resource test needs it");
    }
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let admin = control_plane.admin_token();
    let viewer = api_token(&control_plane, "viewer");
    let deployer = api_token(&control_plane, "deployer");
    let node_a = unique_name("res-a");
    let token = control_plane.join_token(&["--ttl", "10m"]);
    let (_agent_a, node) = control_plane.start_ready_agent(&node_a, Some(&token));
    let node_id = node["id"].as_str().expect("node id").to_owned();
    let mut left = Leftovers::default();
    let q = format!("node={node_a}&runtime=docker");
    let rest = |token: &str, method: &str, path: &str, body: Option<Value>| call(&control_plane, token, method, path, body);

    // ---- images ----
    let pulled = expect(&rest(&deployer, "POST", &format!("/api/v1/images/pull?{q}"), Some(json!({"image": IMAGE}))), 200, "pull");
    assert!(pulled["tags"].as_array().expect("tags").iter().any(|t| t == IMAGE), "{pulled}");
    let listed = expect(&rest(&viewer, "GET", &format!("/api/v1/images?{q}"), None), 200, "list images");
    assert_eq!(
        (listed["node_id"].as_str(), listed["runtime"].as_str(), listed["truncated"].as_bool()),
        (Some(node_id.as_str()), Some("docker"), Some(false))
    );
    assert!(listed["images"].as_array().expect("images").iter().any(|i| i["id"] == pulled["id"]), "{listed}");
    let inspected = expect(&rest(&viewer, "GET", &format!("/api/v1/docker/images/{IMAGE_PATH}?node={node_a}"), None), 200, "inspect image");
    assert_eq!(inspected["id"], pulled["id"]);
    let missing = rest(&viewer, "GET", &format!("/api/v1/images/127.0.0.1:5000%2Fdiplo%2Fnothing:{}?{q}", unique_name("x")), None);
    expect(&missing, 404, "inspect a missing image");
    expect(&rest(&viewer, "GET", &format!("/api/v1/images/http:%2F%2Fx?{q}"), None), 400, "inspect a URL");

    // Removing a tag of our own is for admins.
    let tag = format!("127.0.0.1:5000/diplo/busybox:{}", unique_name("res"));
    left.images.push(tag.clone());
    assert!(Command::new("docker").args(["tag", IMAGE, &tag]).status().expect("docker tag").success());
    let tag_path = tag.replace('/', "%2F");
    expect(&rest(&deployer, "DELETE", &format!("/api/v1/images/{tag_path}?{q}"), None), 403, "a deployer removing an image");
    expect(&rest(&admin, "DELETE", &format!("/api/v1/images/{tag_path}?{q}"), None), 204, "remove a tag");
    expect(&rest(&viewer, "GET", &format!("/api/v1/images/{tag_path}?{q}"), None), 404, "a removed tag");
    let pruned = expect(&rest(&admin, "POST", &format!("/api/v1/images/prune?{q}"), None), 200, "prune dangling images");
    assert!(!pruned["removed"].as_array().expect("removed").iter().any(|r| r == &pulled["id"]), "{pruned}");

    // ---- volumes and networks ----
    let (volume, spare, network) = (unique_name("res-vol"), unique_name("res-spare"), unique_name("res-net"));
    left.volumes.extend([volume.clone(), spare.clone()]);
    left.networks.push(network.clone());
    expect(&rest(&viewer, "POST", &format!("/api/v1/volumes?{q}"), Some(json!({"name": volume}))), 403, "a viewer creating a volume");
    let bad = expect(&rest(&deployer, "POST", &format!("/api/v1/volumes?{q}"), Some(json!({"name": "a/b"}))), 400, "a bad volume name");
    assert!(bad.to_string().contains("name"), "{bad}");
    let created = expect(
        &rest(&deployer, "POST", &format!("/api/v1/volumes?{q}"), Some(json!({"name": volume, "labels": {"team": "res"}}))),
        201,
        "create volume",
    );
    assert_eq!((created["name"].as_str(), created["managed"].as_bool()), (Some(volume.as_str()), Some(true)));
    expect(
        &rest(&deployer, "POST", &format!("/api/v1/docker/volumes?node={node_a}"), Some(json!({"name": spare}))),
        201,
        "create a spare volume",
    );
    expect(&rest(&deployer, "POST", &format!("/api/v1/volumes?{q}"), Some(json!({"name": volume}))), 409, "the same volume twice");
    let volumes = expect(&rest(&viewer, "GET", &format!("/api/v1/volumes?{q}"), None), 200, "list volumes");
    assert!(volumes["volumes"].as_array().expect("volumes").iter().any(|v| v["name"] == volume.as_str()), "{volumes}");
    expect(&rest(&viewer, "GET", &format!("/api/v1/volumes/{volume}?{q}"), None), 200, "inspect volume");

    let subnet = random_subnet();
    let body = json!({"name": network, "subnet": subnet, "labels": {"team": "res"}});
    let created = expect(&rest(&deployer, "POST", &format!("/api/v1/docker/networks?node={node_a}"), Some(body)), 201, "create network");
    assert_eq!((created["subnets"][0].as_str(), created["managed"].as_bool()), (Some(subnet.as_str()), Some(true)), "{created}");
    let bad = expect(
        &rest(&deployer, "POST", &format!("/api/v1/networks?{q}"), Some(json!({"name": unique_name("res-bad"), "subnet": "10.0.0.0/99"}))),
        400,
        "a bad subnet",
    );
    assert!(bad.to_string().contains("subnet"), "{bad}");

    // A container of Diplo's on the network.
    let container = unique_name("res-c");
    left.containers.push(container.clone());
    let body = json!({"image": IMAGE, "name": container, "command": ["sleep", "300"], "runtime_type": "docker", "node": node_a});
    let made = expect(&rest(&deployer, "POST", "/api/v1/containers", Some(body)), 201, "create container");
    let container_id = made["id"].as_str().expect("id").to_owned();
    let attach = json!({"container": container});
    let joined = expect(&rest(&deployer, "POST", &format!("/api/v1/networks/{network}/connect?{q}"), Some(attach.clone())), 200, "connect");
    assert!(joined["containers"].as_array().expect("containers").iter().any(|c| c == container.as_str()), "{joined}");
    expect(&rest(&deployer, "DELETE", &format!("/api/v1/networks/{network}?{q}"), None), 409, "remove a network in use");
    let shown = expect(&rest(&viewer, "GET", &format!("/api/v1/networks/{network}?{q}"), None), 200, "inspect network");
    assert!(shown["containers"].as_array().expect("containers").iter().any(|c| c == container.as_str()), "{shown}");
    expect(&rest(&deployer, "POST", &format!("/api/v1/networks/{network}/disconnect?{q}"), Some(attach)), 200, "disconnect");
    let networks = expect(&rest(&viewer, "GET", &format!("/api/v1/networks?{q}"), None), 200, "list networks");
    assert!(networks["networks"].as_array().expect("networks").iter().any(|n| n["name"] == network.as_str()), "{networks}");
    expect(&rest(&deployer, "DELETE", &format!("/api/v1/networks/{network}?{q}"), None), 204, "remove network");
    expect(&rest(&viewer, "GET", &format!("/api/v1/networks/{network}?{q}"), None), 404, "a removed network");
    expect(&rest(&deployer, "DELETE", &format!("/api/v1/containers/{container_id}?force=true"), None), 204, "remove container");

    // Prune takes the spare volume (admins only), the volume removed by name goes too.
    expect(&rest(&deployer, "POST", &format!("/api/v1/volumes/prune?{q}"), None), 403, "a deployer pruning volumes");
    expect(&rest(&deployer, "DELETE", &format!("/api/v1/volumes/{volume}?{q}"), None), 204, "remove volume");
    let pruned = expect(&rest(&admin, "POST", &format!("/api/v1/volumes/prune?{q}"), None), 200, "prune volumes");
    assert!(pruned["removed"].as_array().expect("removed").iter().any(|v| v == spare.as_str()), "{pruned}");
    expect(&rest(&viewer, "GET", &format!("/api/v1/volumes/{spare}?{q}"), None), 404, "a pruned volume");

    // Runtimes without networks answer 501 naming themselves; unknown nodes and runtimes.
    let refused = expect(&rest(&viewer, "GET", &format!("/api/v1/networks?node={node_a}&runtime=lxc"), None), 501, "LXC networks");
    assert!(refused.to_string().contains("lxc"), "{refused}");
    expect(&rest(&viewer, "GET", "/api/v1/images?node=no-such-node", None), 404, "an unknown node");
    let bad = expect(&rest(&viewer, "GET", &format!("/api/v1/volumes?node={node_a}&runtime=kvm"), None), 400, "an unknown runtime");
    assert!(bad.to_string().contains("runtime"), "{bad}");
    // One ready node: `?node=` may be left out.
    expect(&rest(&viewer, "GET", "/api/v1/docker/volumes", None), 200, "the only node");

    // ---- gRPC ----
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let grpc_volume = unique_name("res-grpc");
    left.volumes.push(grpc_volume.clone());
    tokio.block_on(async {
        let mut client = NodeResourceServiceClient::new(connect(&control_plane, Some(admin_identity(&control_plane))).await);
        let docker = pb::RuntimeKind::Docker as i32;
        let image = client
            .inspect_image(pb::ImageRequest { node: node_a.clone(), runtime: docker, image: IMAGE.into() })
            .await
            .expect("InspectImage")
            .into_inner();
        assert_eq!(Some(image.id.as_str()), pulled["id"].as_str());
        let created = client
            .create_volume(pb::CreateVolumeRequest {
                node: node_a.clone(),
                runtime: docker,
                name: grpc_volume.clone(),
                labels: Default::default(),
            })
            .await
            .expect("CreateVolume")
            .into_inner();
        assert!(created.managed);
        let listed =
            client.list_volumes(pb::ListVolumesRequest { node: node_a.clone(), runtime: docker }).await.expect("ListVolumes").into_inner();
        assert!(listed.volumes.iter().any(|v| v.name == grpc_volume));
        client
            .remove_volume(pb::VolumeRequest { node: node_a.clone(), runtime: docker, name: grpc_volume.clone() })
            .await
            .expect("RemoveVolume");
        let status = client
            .list_networks(pb::ListNetworksRequest { node: node_a.clone(), runtime: pb::RuntimeKind::Lxc as i32 })
            .await
            .expect_err("LXC networks");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert!(status.message().contains("lxc"), "{status:?}");
        let status =
            client.list_images(pb::ListImagesRequest { node: "no-such-node".into(), runtime: docker }).await.expect_err("unknown node");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        let status = client
            .create_network(pb::CreateNetworkRequest { node: node_a.clone(), runtime: docker, name: "a/b".into(), ..Default::default() })
            .await
            .expect_err("bad name");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("name"), "{status:?}");
    });

    // ---- two nodes: the node must be named ----
    let node_b = unique_name("res-b");
    let token = control_plane.join_token(&["--ttl", "10m"]);
    let (_agent_b, _) = control_plane.start_ready_agent(&node_b, Some(&token));
    let ambiguous = expect(&rest(&viewer, "GET", "/api/v1/volumes?runtime=docker", None), 400, "two nodes, no ?node=");
    assert!(ambiguous.to_string().contains("node"), "{ambiguous}");
    expect(&rest(&viewer, "GET", &format!("/api/v1/volumes?node={node_b}&runtime=docker"), None), 200, "naming the second node");
    tokio.block_on(async {
        let mut client = NodeResourceServiceClient::new(connect(&control_plane, Some(admin_identity(&control_plane))).await);
        let status = client
            .list_volumes(pb::ListVolumesRequest { node: String::new(), runtime: pb::RuntimeKind::Docker as i32 })
            .await
            .expect_err("two nodes, no node");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    });
}
