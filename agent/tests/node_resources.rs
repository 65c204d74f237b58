//! Images, networks and volumes through the drivers, against the real runtimes of this
//! host (`scripts/setup-host`: Docker, Podman, containerd, LXC and the registry on
//! 127.0.0.1:5000). Docker and Podman do everything; containerd and LXC (its image
//! cache) manage their images and directory volumes (the volume flow itself is in the
//! runtime conformance suite) and answer `Unsupported` naming themselves for networks. Commands go through the same functions
//! the executor runs (`diplo_agent::resources`), so the name checks and list caps are
//! those of a real command.
//!
//! Every network, volume, container and tag is named `diplo-res-<random>-…` and removed
//! at the end through the runtime's CLI, also when a case panics. A runtime that does
//! not answer skips loudly, or fails under `CI=true`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use diplo_agent::fingerprint::ProbeConfig;
use diplo_agent::port_publisher::PortPublisher;
use diplo_agent::resources::{image_op, network_op, volume_op};
use diplo_agent::runtime::containerd::{ContainerdRuntime, NAMESPACE};
use diplo_agent::runtime::docker::DockerRuntime;
use diplo_agent::runtime::lxc::LxcRuntime;
use diplo_agent::runtime::{ContainerRuntime, RegistryConfig, RuntimeError, podman};
use diplo_api::container::{ContainerSpec, Mount};
use diplo_api::resources::{ImageOp, NetworkOp, NetworkSpec, VolumeOp, VolumeSpec};
use diplo_api::runtime::Runtime;

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

/// What a test created, removed through the CLI `program` when dropped.
struct Leftovers {
    program: &'static str,
    containers: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
    images: Mutex<Vec<String>>,
}

impl Leftovers {
    fn new(program: &'static str) -> Self {
        Leftovers { program, containers: Mutex::default(), networks: Mutex::default(), volumes: Mutex::default(), images: Mutex::default() }
    }

    fn push(list: &Mutex<Vec<String>>, name: &str) {
        list.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(name.to_owned());
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(self.program).args(args).output().map_err(|e| format!("{} {args:?}: {e}", self.program))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!("{} {args:?}: {}", self.program, String::from_utf8_lossy(&output.stderr).trim()))
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let take = |list: &Mutex<Vec<String>>| std::mem::take(&mut *list.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for container in take(&self.containers) {
            let _ = self.cli(&["rm", "-f", &container]);
        }
        for network in take(&self.networks) {
            let _ = self.cli(&["network", "rm", &network]);
        }
        for volume in take(&self.volumes) {
            let _ = self.cli(&["volume", "rm", "-f", &volume]);
        }
        for image in take(&self.images) {
            let _ = self.cli(&["rmi", &image]);
        }
    }
}

fn prefix() -> String {
    format!("diplo-res-{:08x}", rand::random::<u32>())
}

/// A subnet unlikely to collide with another test's (10.200.0.0/16 to 10.239.255.0/24).
fn random_subnet() -> String {
    let r = rand::random::<u32>();
    format!("10.{}.{}.0/24", 200 + (r % 40), (r >> 8) % 256)
}

async fn available(runtime: &dyn ContainerRuntime) -> bool {
    match runtime.version().await {
        Ok(_) => true,
        Err(error) => {
            diplo_tests::skip_or_fail(&format!("{} is unavailable, its node resource test is not run: {error}", runtime.runtime()));
            false
        }
    }
}

fn assert_unsupported<T: std::fmt::Debug>(result: Result<T, RuntimeError>, runtime: Runtime, what: &str) {
    match result {
        Err(error @ RuntimeError::Unsupported { runtime: named, .. }) if named == runtime => {
            assert!(error.to_string().starts_with(&format!("{runtime} does not support")), "{what}: {error}");
        }
        other => panic!("{what} on {runtime}: expected Unsupported naming {runtime}, got {other:?}"),
    }
}

// ------------------------------------------------------------------ Docker and Podman

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_manages_images_networks_and_volumes() {
    let socket = ProbeConfig::from_env().docker_socket;
    let runtime = DockerRuntime::connect(&socket, RegistryConfig::default(), Runtime::Docker);
    if available(&runtime).await {
        full_suite(&runtime, "docker").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_manages_images_networks_and_volumes() {
    let socket = ProbeConfig::from_env().podman_socket;
    let runtime = podman::connect(&socket, RegistryConfig::default());
    if available(&runtime).await {
        full_suite(&runtime, "podman").await;
    }
}

async fn full_suite(rt: &dyn ContainerRuntime, program: &'static str) {
    let left = Leftovers::new(program);
    let prefix = prefix();
    images(rt, &left, &prefix).await;
    networks(rt, &left, &prefix).await;
    volumes(rt, &left, &prefix).await;
}

async fn images(rt: &dyn ContainerRuntime, left: &Leftovers, prefix: &str) {
    rt.ensure_image(IMAGE).await.expect("pull");
    let listed = image_op(rt, &ImageOp::List).await.expect("list images");
    let entry = listed.images.iter().find(|i| i.tags.iter().any(|t| t == IMAGE)).unwrap_or_else(|| panic!("{IMAGE} not listed"));
    assert!(listed.images.len() <= diplo_api::resources::MAX_LISTED);
    let inspected = image_op(rt, &ImageOp::Inspect(IMAGE.into())).await.expect("inspect").images;
    assert_eq!(inspected.len(), 1);
    assert_eq!(inspected[0].id, entry.id, "inspect and list agree on the id");
    assert!(inspected[0].size_bytes > 0 && !inspected[0].created.is_empty(), "{:?}", inspected[0]);

    // A tag of our own: removed through the driver, gone afterwards.
    let tag = format!("127.0.0.1:5000/diplo/busybox:{prefix}");
    Leftovers::push(&left.images, &tag);
    left.cli(&["tag", IMAGE, &tag]).expect("tag");
    assert_eq!(image_op(rt, &ImageOp::Inspect(tag.clone())).await.expect("inspect tag").images[0].id, entry.id);
    image_op(rt, &ImageOp::Remove { image: tag.clone(), force: false }).await.expect("remove tag");
    assert!(matches!(rt.inspect_image(&tag).await, Err(RuntimeError::NotFound { what: "image", .. })), "{tag} still there");
    assert!(matches!(rt.remove_image(&tag, false).await, Err(RuntimeError::NotFound { .. })), "removing twice");
    assert!(left.cli(&["image", "inspect", IMAGE]).is_ok(), "removing a tag kept the image's other tags");
    for bad in ["http://x/y", "a b", ""] {
        assert!(matches!(rt.inspect_image(bad).await, Err(RuntimeError::InvalidArgument { field: "image", .. })), "{bad:?}");
    }
    // Dangling images only: nothing any container or tag uses goes.
    let report = image_op(rt, &ImageOp::Prune { all: false }).await.expect("prune").prune.expect("report");
    assert!(!report.removed.iter().any(|r| r == &entry.id), "prune removed the tagged image: {report:?}");
    assert!(left.cli(&["image", "inspect", IMAGE]).is_ok());
}

/// Creates and starts a Diplo container of this test (with `mounts`); returns its name.
async fn diplo_container(rt: &dyn ContainerRuntime, left: &Leftovers, name: String, mounts: Vec<Mount>) -> String {
    Leftovers::push(&left.containers, &name);
    let spec = ContainerSpec {
        name: name.clone(),
        image: IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), "trap 'exit 0' TERM; while true; do sleep 0.2; done".into()],
        mounts,
        ..Default::default()
    };
    let id = rt.create(&spec).await.unwrap_or_else(|e| panic!("create {name}: {e}"));
    rt.start(&id).await.unwrap_or_else(|e| panic!("start {name}: {e}"));
    name
}

async fn networks(rt: &dyn ContainerRuntime, left: &Leftovers, prefix: &str) {
    let name = format!("{prefix}-net");
    Leftovers::push(&left.networks, &name);
    let subnet = random_subnet();
    let spec = NetworkSpec {
        name: name.clone(),
        driver: "bridge".into(),
        subnet: Some(subnet.clone()),
        internal: true,
        labels: BTreeMap::from([("team".into(), "res".into())]),
    };
    let created = network_op(rt, &NetworkOp::Create(spec.clone())).await.expect("create network").networks;
    assert_eq!(created[0].name, name);
    assert!(created[0].managed(), "{:?}", created[0]);
    assert_eq!(created[0].subnets, std::slice::from_ref(&subnet));
    assert!(created[0].internal);
    assert_eq!(created[0].labels.get("team").map(String::as_str), Some("res"));
    assert!(matches!(rt.create_network(&spec).await, Err(RuntimeError::Conflict(_))), "a second network of the same name");
    let listed = network_op(rt, &NetworkOp::List).await.expect("list networks").networks;
    assert!(listed.iter().any(|n| n.name == name && n.managed()), "{name} not listed");

    // Connect one of Diplo's containers; the network in use cannot go.
    let container = diplo_container(rt, left, format!("{prefix}-net-c"), Vec::new()).await;
    let connect = NetworkOp::Connect { network: name.clone(), container: container.clone() };
    let attached = network_op(rt, &connect).await.expect("connect").networks;
    assert!(attached[0].containers.contains(&container), "{:?}", attached[0]);
    match rt.remove_network(&name).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains(&name), "{message}"),
        other => panic!("removing a network in use: {other:?}"),
    }
    let detached =
        network_op(rt, &NetworkOp::Disconnect { network: name.clone(), container: container.clone() }).await.expect("disconnect");
    assert!(!detached.networks[0].containers.contains(&container), "{:?}", detached.networks[0]);

    // Containers that are not Diplo's are not touched.
    let foreign = format!("{prefix}-foreign");
    Leftovers::push(&left.containers, &foreign);
    left.cli(&["run", "-d", "--name", &foreign, IMAGE, "sleep", "60"]).expect("foreign container");
    assert!(matches!(rt.connect_network(&name, &foreign).await, Err(RuntimeError::NotFound { what: "container", .. })));

    network_op(rt, &NetworkOp::Remove(name.clone())).await.expect("remove network");
    assert!(matches!(rt.inspect_network(&name).await, Err(RuntimeError::NotFound { what: "network", .. })));

    // A network Diplo did not create is not removed.
    let other = format!("{prefix}-other");
    Leftovers::push(&left.networks, &other);
    left.cli(&["network", "create", &other]).expect("foreign network");
    match rt.remove_network(&other).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains("not created by Diplo"), "{message}"),
        other => panic!("removing a foreign network: {other:?}"),
    }
    assert!(!rt.inspect_network(&other).await.expect("still there").managed());
    for (op, field) in [
        (NetworkOp::Inspect("../x".into()), "network"),
        (NetworkOp::Remove("a b".into()), "network"),
        (NetworkOp::Connect { network: name.clone(), container: "x/y".into() }, "container"),
    ] {
        match network_op(rt, &op).await {
            Err(RuntimeError::InvalidArgument { field: named, .. }) => assert_eq!(named, field, "{op:?}"),
            other => panic!("{op:?}: {other:?}"),
        }
    }
    let bad_subnet = NetworkSpec { subnet: Some("10.0.0.0/40".into()), name: format!("{prefix}-bad"), ..spec };
    assert!(matches!(network_op(rt, &NetworkOp::Create(bad_subnet)).await, Err(RuntimeError::InvalidArgument { field: "subnet", .. })));
}

async fn volumes(rt: &dyn ContainerRuntime, left: &Leftovers, prefix: &str) {
    let (used, unused) = (format!("{prefix}-used"), format!("{prefix}-unused"));
    for name in [&used, &unused] {
        Leftovers::push(&left.volumes, name);
        let spec = VolumeSpec { name: name.clone(), labels: BTreeMap::from([("team".into(), "res".into())]) };
        let created = volume_op(rt, &VolumeOp::Create(spec.clone())).await.expect("create volume").volumes;
        assert_eq!((created[0].name.as_str(), created[0].managed()), (name.as_str(), true));
        assert!(!created[0].mountpoint.is_empty());
        assert!(matches!(rt.create_volume(&spec).await, Err(RuntimeError::Conflict(_))), "a second volume of the same name");
    }
    let listed = volume_op(rt, &VolumeOp::List).await.expect("list volumes").volumes;
    assert!(listed.iter().any(|v| v.name == used && v.managed()), "{used} not listed");
    assert_eq!(rt.inspect_volume(&used).await.expect("inspect").labels.get("team").map(String::as_str), Some("res"));

    // A volume a container uses is refused, and outlives a prune.
    let mount = Mount { source: used.clone(), target: "/data".into(), read_only: false };
    let container = diplo_container(rt, left, format!("{prefix}-vol-c"), vec![mount]).await;
    assert!(matches!(rt.remove_volume(&used).await, Err(RuntimeError::Conflict(_))), "removing a volume in use");
    // A volume Diplo did not create is neither removed nor pruned.
    let foreign = format!("{prefix}-foreign-vol");
    Leftovers::push(&left.volumes, &foreign);
    left.cli(&["volume", "create", &foreign]).expect("foreign volume");
    match rt.remove_volume(&foreign).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains("not created by Diplo"), "{message}"),
        other => panic!("removing a foreign volume: {other:?}"),
    }
    let report = volume_op(rt, &VolumeOp::Prune).await.expect("prune").prune.expect("report");
    assert!(report.removed.contains(&unused), "{report:?}");
    assert!(!report.removed.contains(&used) && !report.removed.contains(&foreign), "{report:?}");
    assert!(rt.inspect_volume(&used).await.is_ok() && rt.inspect_volume(&foreign).await.is_ok());
    assert!(matches!(rt.inspect_volume(&unused).await, Err(RuntimeError::NotFound { what: "volume", .. })));

    rt.remove(&container, true).await.expect("remove container");
    volume_op(rt, &VolumeOp::Remove(used.clone())).await.expect("remove volume");
    assert!(matches!(rt.inspect_volume(&used).await, Err(RuntimeError::NotFound { .. })));
    assert!(matches!(volume_op(rt, &VolumeOp::Inspect("a/b".into())).await, Err(RuntimeError::InvalidArgument { field: "volume", .. })));
}

// ------------------------------------------------------------------ containerd and LXC

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_manages_its_images_and_volumes_and_refuses_networks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = match ContainerdRuntime::connect("/run/containerd/containerd.sock", RegistryConfig::default(), dir.path().into()).await {
        Ok(runtime) => runtime,
        Err(error) => return diplo_tests::skip_or_fail(&format!("containerd is unavailable: {error}")),
    };
    let rt: &dyn ContainerRuntime = &runtime;
    rt.ensure_image(IMAGE).await.expect("pull");
    let listed = image_op(rt, &ImageOp::List).await.expect("list").images;
    let entry = listed.iter().find(|i| i.tags.iter().any(|t| t == IMAGE)).unwrap_or_else(|| panic!("{IMAGE} not in {listed:?}"));
    assert!(entry.id.starts_with("sha256:"), "{entry:?}");
    assert_eq!(rt.inspect_image(IMAGE).await.expect("inspect").id, entry.id);
    assert_eq!(rt.inspect_image(&entry.id).await.expect("inspect by id").id, entry.id);

    // A name of our own pointing at the same manifest: removed, the original stays.
    let tag = format!("127.0.0.1:5000/diplo/busybox:{}", prefix());
    let ctr = |args: &[&str]| Command::new("ctr").args(["-n", NAMESPACE]).args(args).output().expect("ctr");
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            let _ = Command::new("ctr").args(["-n", NAMESPACE, "images", "rm", &self.0]).output();
        }
    }
    let _untag = Untag(tag.clone());
    assert!(ctr(&["images", "tag", IMAGE, &tag]).status.success(), "ctr images tag");
    assert_eq!(rt.inspect_image(&tag).await.expect("inspect tag").id, entry.id);
    image_op(rt, &ImageOp::Remove { image: tag.clone(), force: false }).await.expect("remove");
    assert!(matches!(rt.inspect_image(&tag).await, Err(RuntimeError::NotFound { what: "image", .. })));
    assert!(rt.inspect_image(IMAGE).await.is_ok(), "the other name stays");

    let spec = NetworkSpec { name: "n".into(), driver: "bridge".into(), ..Default::default() };
    assert_unsupported(network_op(rt, &NetworkOp::Create(spec)).await, Runtime::Containerd, "create network");
    assert_unsupported(network_op(rt, &NetworkOp::List).await, Runtime::Containerd, "list networks");
    hand_made_volume_stays(rt, &dir.path().join("volumes")).await;
}

/// A directory volume Diplo did not create (no metadata) is listed, but neither removed
/// nor pruned; names that are paths are refused naming the field.
async fn hand_made_volume_stays(rt: &dyn ContainerRuntime, root: &std::path::Path) {
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let name = format!("{}-handmade", prefix());
    let _guard = RemoveDir(root.join(&name));
    std::fs::create_dir_all(root.join(&name)).expect("hand-made volume");
    std::fs::write(root.join(&name).join("precious"), "x").expect("file");
    let listed = volume_op(rt, &VolumeOp::List).await.expect("list volumes").volumes;
    let found = listed.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name} not in {listed:?}"));
    assert!(!found.managed() && found.driver == "local", "{found:?}");
    match volume_op(rt, &VolumeOp::Remove(name.clone())).await {
        Err(RuntimeError::Conflict(message)) => assert!(message.contains("not created by Diplo"), "{message}"),
        other => panic!("removing a hand-made volume: {other:?}"),
    }
    let report = volume_op(rt, &VolumeOp::Prune).await.expect("prune").prune.expect("report");
    assert!(!report.removed.contains(&name), "{report:?}");
    assert!(root.join(&name).join("precious").is_file());
    for bad in ["../etc", "a/b", ".."] {
        assert!(
            matches!(volume_op(rt, &VolumeOp::Inspect(bad.into())).await, Err(RuntimeError::InvalidArgument { field: "volume", .. })),
            "{bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lxc_manages_its_image_cache_and_volumes_and_refuses_networks() {
    let report = diplo_agent::runtime::lxc::probe(std::time::Duration::from_secs(10)).await;
    if !report.available {
        return diplo_tests::skip_or_fail(&format!("LXC is unavailable: {}", report.error));
    }
    let cache = tempfile::tempdir().expect("tempdir");
    let runtime =
        LxcRuntime::new(PathBuf::from("/var/lib/lxc"), cache.path().into(), RegistryConfig::default(), Arc::new(PortPublisher::new()));
    let rt: &dyn ContainerRuntime = &runtime;
    assert!(image_op(rt, &ImageOp::List).await.expect("empty cache").images.is_empty());
    rt.ensure_image(IMAGE).await.expect("pull into the cache");
    let listed = image_op(rt, &ImageOp::List).await.expect("list").images;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].tags, [IMAGE], "{listed:?}");
    assert!(listed[0].size_bytes > 0 && !listed[0].created.is_empty(), "{listed:?}");
    assert_eq!(rt.inspect_image(IMAGE).await.expect("inspect").id, listed[0].id);
    assert_eq!(rt.inspect_image(&listed[0].id).await.expect("inspect by id").id, listed[0].id);
    assert!(matches!(rt.inspect_image("127.0.0.1:5000/diplo/nothing:x").await, Err(RuntimeError::NotFound { what: "image", .. })));
    assert!(matches!(rt.inspect_image("../etc").await, Err(RuntimeError::InvalidArgument { .. } | RuntimeError::NotFound { .. })));
    image_op(rt, &ImageOp::Remove { image: IMAGE.into(), force: false }).await.expect("remove");
    assert!(matches!(rt.inspect_image(IMAGE).await, Err(RuntimeError::NotFound { .. })));

    // A leftover of an interrupted pull goes only once old; `all` takes every cached image.
    rt.ensure_image(IMAGE).await.expect("pull again");
    let fresh = cache.path().join(".tmp-1-00000000");
    std::fs::create_dir(&fresh).expect("leftover");
    let report = image_op(rt, &ImageOp::Prune { all: false }).await.expect("prune").prune.expect("report");
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(fresh.is_dir() && rt.inspect_image(IMAGE).await.is_ok());
    let report = image_op(rt, &ImageOp::Prune { all: true }).await.expect("prune all").prune.expect("report");
    assert_eq!(report.removed, [listed[0].id.clone()], "{report:?}");
    assert!(report.reclaimed_bytes > 0);
    assert!(image_op(rt, &ImageOp::List).await.expect("list").images.is_empty());

    assert_unsupported(network_op(rt, &NetworkOp::List).await, Runtime::Lxc, "list networks");
    assert_unsupported(network_op(rt, &NetworkOp::Remove("n".into())).await, Runtime::Lxc, "remove network");
    hand_made_volume_stays(rt, &PathBuf::from("/var/lib/lxc/.diplo-volumes")).await;
}
