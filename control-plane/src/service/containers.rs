//! Direct container operations on a chosen node (the mikrocloud-style API): every
//! operation is routed to the agent of the node that runs the container.

use std::collections::HashMap;
use std::time::Duration;

use diplo_api::command::CommandOp;
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ExecOutput, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_NODE, LogChunk, LogOptions, RESERVED_LABEL_PREFIX,
    is_reserved_label, validate_container_name,
};
use diplo_api::fingerprint::RuntimeReport;
use diplo_api::runtime::Runtime;
use tokio::sync::mpsc;

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{Constraints, NodeStatus, ObservedContainer, Role, Strategy};
use crate::planner::DIRECT;
use crate::scheduler::{self, NodeCandidate, PlacementRequest};

/// Default grace period between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// A container with where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    /// Node id.
    pub node_id: String,
    /// Node name.
    pub node_name: String,
    /// Runtime running it.
    pub runtime: Runtime,
    /// Observed state.
    pub info: ContainerInfo,
}

/// A request to run one container.
#[derive(Debug, Clone, Default)]
pub struct CreateContainer {
    /// What to run.
    pub spec: ContainerSpec,
    /// Forced runtime; `None`: the node's preferred one.
    pub runtime: Option<Runtime>,
    /// Node id or name; `None`: chosen among ready nodes.
    pub node: Option<String>,
}

/// Either the logs so far, or a live stream of them.
pub enum Logs {
    /// The last lines so far (bounded in lines and bytes).
    Complete(ExecOutput),
    /// Output as it comes, until the container stops or the receiver is dropped.
    Follow(mpsc::Receiver<LogChunk>),
}

/// One runtime's status across the cluster (`/api/{runtime}/status`).
#[derive(Debug, Clone)]
pub struct RuntimeStatus {
    /// Which runtime.
    pub runtime: Runtime,
    /// Available on at least one ready node.
    pub available: bool,
    /// Version on the first ready node that has it.
    pub version: String,
    /// Per ready node: its report for this runtime.
    pub nodes: Vec<(String, RuntimeReport)>,
}

/// Picks the node and runtime for a new container with the scheduler, as for a
/// deployment's replica: ready, not cordoned nodes (only `node`, an id, when given) that
/// offer the forced runtime (or a usable one for their platform), have room for its CPU
/// and memory, its host ports free and, when the image's platforms are known, its
/// platform. Direct containers spread: a node's direct containers count against it. With
/// no candidate, the error lists each node's reason.
pub fn place_container(
    candidates: &[NodeCandidate],
    spec: &ContainerSpec,
    node: Option<String>,
    runtime: Option<Runtime>,
    platforms: Option<Vec<(String, String)>>,
) -> Result<(String, Runtime), Vec<String>> {
    let request = PlacementRequest {
        deployment_id: DIRECT.to_owned(),
        count: 1,
        image: spec.image.clone(),
        image_platforms: platforms,
        runtime,
        constraints: Constraints { node, ..Default::default() },
        cpu_millis: u64::from(spec.cpu_millis.unwrap_or(0)),
        memory_bytes: spec.memory_bytes.unwrap_or(0),
        ports: spec.ports.iter().map(|p| (p.host_port, p.protocol)).collect(),
        strategy: Strategy::Spread,
        volumes: crate::planner::named_volumes(spec),
    };
    match scheduler::place(candidates, &request) {
        Ok(placed) => placed.into_iter().next().map(|p| (p.node_id, p.runtime)).ok_or_else(|| vec!["no node fits".to_owned()]),
        Err(no_fit) => Err(no_fit.reasons),
    }
}

impl ControlPlane {
    /// A number that moves whenever what [`ControlPlane::list_containers`] answers may
    /// change (a node's containers, a node joining or leaving); callers may keep what
    /// they derived from a list per version. The same access as the list itself.
    pub fn containers_version(&self, caller: &Caller) -> ServiceResult<u64> {
        caller.require_operator(Role::Viewer)?;
        Ok(self.nodes.containers_version())
    }

    /// Containers Diplo runs, optionally on one node.
    pub async fn list_containers(&self, caller: &Caller, node: Option<&str>) -> ServiceResult<Vec<ContainerView>> {
        self.containers_version(caller)?;
        let names = self.node_names().await?;
        let node_id = match node.filter(|n| !n.is_empty()) {
            Some(node) => Some(self.find_node(node).await?.id),
            None => None,
        };
        Ok(self
            .nodes
            .shared_containers()
            .iter()
            .filter(|(id, _)| node_id.as_ref().is_none_or(|wanted| wanted == id))
            .map(|(node_id, c)| view(&names, node_id.clone(), c.clone()))
            .collect())
    }

    /// Pulls the image if needed, creates and starts a container on the chosen node.
    pub async fn create_container(&self, caller: &Caller, request: CreateContainer) -> ServiceResult<ContainerView> {
        caller.require_operator(Role::Deployer)?;
        let mut spec = request.spec;
        check_create_container(caller, &spec)?;
        if self.nodes.shared_containers().iter().any(|(_, c)| c.info.name == spec.name) {
            return Err(ServiceError::AlreadyExists(format!("a container named {:?} already exists", spec.name)));
        }
        let node = match request.node.as_deref() {
            Some(node) => Some(self.find_node(node).await?.id),
            None => None,
        };
        let platforms = self.image_platforms.lookup(&spec.image).await.platforms();
        let candidates = self.placement_candidates().await?;
        let (node_id, runtime) = place_container(&candidates, &spec, node, request.runtime, platforms)
            .map_err(|reasons| ServiceError::FailedPrecondition(format!("no node can run this container: {}", reasons.join("; "))))?;
        check_runtime_supports(runtime, &spec)?;
        spec.labels.insert(LABEL_INSTANCE.into(), uuid::Uuid::new_v4().to_string());
        spec.labels.insert(LABEL_DEPLOYMENT.into(), DIRECT.into());
        spec.labels.insert(LABEL_NODE.into(), node_id.clone());
        let name = spec.name.clone();
        let output = self.send_command(&node_id, runtime, CommandOp::Create(spec)).await?;
        let info = output.container.ok_or_else(|| ServiceError::Internal("the agent reported no container".into()))?;
        self.nodes.upsert_container(&node_id, ObservedContainer { runtime, info: info.clone() });
        tracing::info!(node_id = %node_id, %runtime, container = %name, id = %info.id, "container created");
        self.emit("container.created", &caller.actor(), &info.id, format!("container {name} created on node {node_id} with {runtime}"))
            .await;
        let names = self.node_names().await?;
        Ok(view(&names, node_id, ObservedContainer { runtime, info }))
    }

    /// Starts a container.
    pub async fn start_container(&self, caller: &Caller, id: &str) -> ServiceResult<ContainerView> {
        self.lifecycle(caller, id, "started", CommandOp::Start).await
    }

    /// Stops a container (SIGTERM, SIGKILL after `grace`).
    pub async fn stop_container(&self, caller: &Caller, id: &str, grace: Option<Duration>) -> ServiceResult<ContainerView> {
        let grace = grace.unwrap_or(DEFAULT_STOP_GRACE);
        self.lifecycle(caller, id, "stopped", move |id| CommandOp::Stop { id, grace }).await
    }

    /// Restarts a container.
    pub async fn restart_container(&self, caller: &Caller, id: &str) -> ServiceResult<ContainerView> {
        self.lifecycle(caller, id, "restarted", CommandOp::Restart).await
    }

    /// Removes a container; `force` stops it first.
    pub async fn remove_container(&self, caller: &Caller, id: &str, force: bool) -> ServiceResult<()> {
        caller.require_operator(Role::Deployer)?;
        let found = self.find_container(id)?;
        self.send_command(&found.node_id, found.runtime, CommandOp::Remove { id: found.info.id.clone(), force }).await?;
        self.nodes.forget_container(&found.node_id, &found.info.id);
        self.emit("container.removed", &caller.actor(), &found.info.id, format!("container {} removed", found.info.name)).await;
        Ok(())
    }

    /// Runs argv inside a container; its output comes back up to
    /// [`MAX_OUTPUT_BYTES`](diplo_api::container::MAX_OUTPUT_BYTES), then with a note.
    pub async fn exec_in_container(&self, caller: &Caller, id: &str, argv: Vec<String>) -> ServiceResult<ExecOutput> {
        caller.require_operator(Role::Deployer)?;
        if argv.is_empty() || argv[0].is_empty() {
            return Err(ServiceError::invalid("argv", "a command to run is required"));
        }
        let found = self.find_container(id)?;
        let output = self.send_command(&found.node_id, found.runtime, CommandOp::Exec { id: found.info.id.clone(), argv }).await?;
        self.emit("container.exec", &caller.actor(), &found.info.id, format!("exec in container {}", found.info.name)).await;
        Ok(output.exec.unwrap_or_default())
    }

    /// A container's logs: the last `tail` lines
    /// ([`DEFAULT_LOG_TAIL`](diplo_api::container::DEFAULT_LOG_TAIL) when unset, at most
    /// [`MAX_LOG_TAIL`](diplo_api::container::MAX_LOG_TAIL); more is refused), whole (at most
    /// [`MAX_OUTPUT_BYTES`](diplo_api::container::MAX_OUTPUT_BYTES), the newest) or followed.
    pub async fn container_logs(&self, caller: &Caller, id: &str, options: LogOptions) -> ServiceResult<Logs> {
        caller.require_operator(Role::Viewer)?;
        let tail = options.tail_lines().map_err(|message| ServiceError::invalid("tail", message))?;
        let options = LogOptions { tail: Some(tail), ..options };
        let found = self.find_container(id)?;
        let op = CommandOp::Logs { id: found.info.id.clone(), options };
        if options.follow {
            Ok(Logs::Follow(self.open_output(&found.node_id, found.runtime, op).await?))
        } else {
            Ok(Logs::Complete(self.send_command(&found.node_id, found.runtime, op).await?.exec.unwrap_or_default()))
        }
    }

    /// One runtime's availability across ready nodes.
    pub async fn runtime_status(&self, caller: &Caller, runtime: Runtime) -> ServiceResult<RuntimeStatus> {
        let nodes = self.list_nodes(caller).await?;
        let reports: Vec<(String, RuntimeReport)> = nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Ready)
            .filter_map(|n| n.fingerprint.runtimes.iter().find(|r| r.runtime == runtime).map(|r| (n.name.clone(), r.clone())))
            .collect();
        let available = reports.iter().find(|(_, r)| r.available);
        Ok(RuntimeStatus {
            runtime,
            available: available.is_some(),
            version: available.map(|(_, r)| r.version.clone()).unwrap_or_default(),
            nodes: reports,
        })
    }

    pub(super) async fn lifecycle(
        &self,
        caller: &Caller,
        id: &str,
        verb: &str,
        op: impl FnOnce(String) -> CommandOp,
    ) -> ServiceResult<ContainerView> {
        caller.require_operator(Role::Deployer)?;
        let found = self.find_container(id)?;
        let output = self.send_command(&found.node_id, found.runtime, op(found.info.id.clone())).await?;
        let info = output.container.unwrap_or_else(|| found.info.clone());
        self.nodes.upsert_container(&found.node_id, ObservedContainer { runtime: found.runtime, info: info.clone() });
        self.emit(&format!("container.{verb}"), &caller.actor(), &info.id, format!("container {} {verb}", info.name)).await;
        Ok(ContainerView { info, ..found })
    }

    /// A container by id, unique id prefix (≥ 4 characters) or name.
    pub(super) fn find_container(&self, id: &str) -> ServiceResult<ContainerView> {
        if id.trim().is_empty() {
            return Err(ServiceError::invalid("id", "a container id or name is required"));
        }
        let all = self.nodes.containers();
        let exact: Vec<_> = all.iter().filter(|(_, c)| c.info.id == id || c.info.name == id).collect();
        let matches =
            if exact.is_empty() && id.len() >= 4 { all.iter().filter(|(_, c)| c.info.id.starts_with(id)).collect() } else { exact };
        match matches.as_slice() {
            [(node_id, c)] => {
                Ok(ContainerView { node_id: node_id.clone(), node_name: String::new(), runtime: c.runtime, info: c.info.clone() })
            }
            [] => Err(ServiceError::NotFound(format!("container {id:?} not found"))),
            _ => Err(ServiceError::invalid("id", format!("{id:?} matches several containers; use the full id"))),
        }
    }

    async fn node_names(&self) -> ServiceResult<HashMap<String, String>> {
        Ok(self.store.list_nodes().await?.into_iter().map(|n| (n.id, n.name)).collect())
    }
}

fn view(names: &HashMap<String, String>, node_id: String, container: ObservedContainer) -> ContainerView {
    ContainerView { node_name: names.get(&node_id).cloned().unwrap_or_default(), node_id, runtime: container.runtime, info: container.info }
}

/// The checks of a new container that need no I/O, as `create_container` makes them for
/// `caller`: its name, image and ports ([`check_container_spec`]), then [`check_workload`].
pub fn check_create_container(caller: &Caller, spec: &ContainerSpec) -> ServiceResult<()> {
    check_container_spec(spec)?;
    check_workload(caller, spec)
}

/// The checks every workload (a container, or a deployment's container template) goes
/// through, from REST and gRPC alike: no label in Diplo's reserved `diplo.*` namespace
/// (those labels tie a container to its deployment, instance and node), and host bind
/// mounts for admins only (a host path can hand the whole node to the container; named
/// volumes are open to deployers). Agents further hold bind mounts to their own allowlist.
pub fn check_workload(caller: &Caller, spec: &ContainerSpec) -> ServiceResult<()> {
    if let Some(key) = spec.labels.keys().find(|key| is_reserved_label(key)) {
        return Err(ServiceError::invalid(
            "labels",
            format!("{key:?} is reserved: labels starting with {RESERVED_LABEL_PREFIX:?} are set by Diplo only"),
        ));
    }
    if let Some(mount) = spec.mounts.iter().find(|mount| mount.is_bind())
        && !caller.has_role(Role::Admin)
    {
        return Err(ServiceError::PermissionDenied(format!(
            "mounting the host path {} (at {}) needs the admin role: a host bind mount can expose the whole node; use a named volume instead",
            mount.source, mount.target
        )));
    }
    Ok(())
}

/// Refuses a spec asking `runtime` for a setting its driver cannot honour (the runtime
/// capability table), naming the field and the runtime.
pub fn check_runtime_supports(runtime: Runtime, spec: &ContainerSpec) -> ServiceResult<()> {
    runtime.check_spec(spec).map_err(|refusal| ServiceError::invalid(refusal.field, refusal.to_string()))
}

/// The checks of a container to run that need no state: its name, then the template checks.
pub fn check_container_spec(spec: &ContainerSpec) -> ServiceResult<()> {
    validate_container_name(&spec.name).map_err(|message| ServiceError::invalid("name", message))?;
    check_container_template(spec)
}

/// The checks every container spec passes, a direct container's or a deployment's
/// template alike: an image reference, no host port published twice (per protocol),
/// absolute mount targets, and valid limits and hardening options
/// ([`ContainerSpec::check_options`]).
pub fn check_container_template(spec: &ContainerSpec) -> ServiceResult<()> {
    if spec.image.trim().is_empty() {
        return Err(ServiceError::invalid("image", "an image reference is required"));
    }
    spec.check_options().map_err(|refusal| ServiceError::invalid(refusal.field, refusal.message))?;
    let mut seen = std::collections::HashSet::new();
    if let Some(port) = spec.ports.iter().find(|port| !seen.insert((port.host_port, port.protocol))) {
        return Err(ServiceError::invalid("ports", format!("host port {} is published twice", port.host_port)));
    }
    if let Some(mount) = spec.mounts.iter().find(|mount| !mount.target.starts_with('/')) {
        return Err(ServiceError::invalid("volumes", format!("{:?} must be an absolute path", mount.target)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeRecord;
    use chrono::Utc;
    use diplo_api::container::Mount;
    use diplo_api::fingerprint::Fingerprint;

    #[test]
    fn workloads_keep_out_of_diplo_labels_and_host_paths_need_an_admin() {
        let operator = |role| Caller::Operator { name: "o".into(), role };
        let (admin, deployer, viewer) = (operator(Role::Admin), operator(Role::Deployer), operator(Role::Viewer));
        let node = Caller::Node { node_id: "n1".into() };
        let mount = |source: &str| Mount { source: source.into(), target: "/data".into(), read_only: false };
        let spec = |labels: &[(&str, &str)], mounts: Vec<Mount>| ContainerSpec {
            name: "web".into(),
            image: "busybox".into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            mounts,
            ..ContainerSpec::default()
        };
        enum Want {
            Ok,
            Labels,
            Denied,
        }
        let cases: Vec<(&Caller, ContainerSpec, Want)> = vec![
            (&deployer, spec(&[("team", "a")], vec![mount("data")]), Want::Ok),
            (&viewer, spec(&[], vec![mount("data")]), Want::Ok),
            (&admin, spec(&[], vec![mount("/"), mount("data")]), Want::Ok),
            (&deployer, spec(&[], vec![mount("data"), mount("/")]), Want::Denied),
            (&deployer, spec(&[], vec![mount("/var/run/docker.sock")]), Want::Denied),
            (&viewer, spec(&[], vec![mount("/srv")]), Want::Denied),
            (&node, spec(&[], vec![mount("/srv")]), Want::Denied),
            (&admin, spec(&[(LABEL_INSTANCE, "i1")], vec![]), Want::Labels),
            (&deployer, spec(&[("team", "a"), (LABEL_DEPLOYMENT, "other")], vec![]), Want::Labels),
            (&deployer, spec(&[("Diplo.Node", "n2")], vec![]), Want::Labels),
            // A reserved label is a bad request whoever asks, before any role question.
            (&deployer, spec(&[(LABEL_NODE, "n2")], vec![mount("/")]), Want::Labels),
        ];
        for (caller, spec, want) in cases {
            let got = check_workload(caller, &spec);
            let what = format!("{caller:?} {:?} {:?}: {got:?}", spec.labels, spec.mounts);
            match want {
                Want::Ok => assert!(got.is_ok(), "{what}"),
                Want::Labels => assert!(matches!(got, Err(ServiceError::InvalidArgument { field: "labels", .. })), "{what}"),
                Want::Denied => match got {
                    Err(ServiceError::PermissionDenied(message)) => {
                        let path = &spec.mounts.iter().find(|m| m.is_bind()).expect("a bind mount").source;
                        assert!(message.contains(path.as_str()) && message.contains("admin"), "{what}");
                    }
                    _ => panic!("{what}"),
                },
            }
        }
    }

    #[test]
    fn a_node_level_operation_without_a_node_takes_the_only_ready_node_or_asks_for_one() {
        use crate::service::pick_only_ready_node;
        let ready = |name: &str| node(name, "x86_64", &[Runtime::Docker], NodeStatus::Ready);
        let down = |name: &str| node(name, "x86_64", &[Runtime::Docker], NodeStatus::Down);
        for (nodes, expected) in [
            (vec![ready("a")], Ok("a")),
            (vec![down("a"), ready("b")], Ok("b")),
            (vec![], Err("no node is ready")),
            (vec![down("a")], Err("no node is ready")),
            (vec![ready("a"), ready("b")], Err("2 nodes are ready (a, b)")),
        ] {
            let what = format!("{:?}", nodes.iter().map(|n| (&n.name, n.status)).collect::<Vec<_>>());
            match (pick_only_ready_node(nodes), expected) {
                (Ok(node), Ok(name)) => assert_eq!(node.name, name, "{what}"),
                (Err(ServiceError::InvalidArgument { field, message }), Err(text)) => {
                    assert_eq!(field, "node", "{what}");
                    assert!(message.contains(text) && message.contains("?node="), "{what}: {message}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn node(name: &str, arch: &str, runtimes: &[Runtime], status: NodeStatus) -> NodeRecord {
        NodeRecord {
            id: format!("id-{name}"),
            name: name.into(),
            status,
            fingerprint: Fingerprint {
                os: "linux".into(),
                arch: arch.into(),
                runtimes: runtimes
                    .iter()
                    .map(|r| RuntimeReport {
                        runtime: *r,
                        available: true,
                        version: "1".into(),
                        endpoint: String::new(),
                        error: String::new(),
                        rootless: false,
                    })
                    .collect(),
                ..Fingerprint::default()
            },
            cordoned: false,
            labels: Default::default(),
            joined_at: Utc::now(),
            last_seen_at: Utc::now(),
            address: String::new(),
        }
    }

    /// Candidates for `nodes`, with `direct` direct containers on the first one.
    fn candidates(nodes: &[NodeRecord], direct: usize) -> Vec<NodeCandidate> {
        let observed: Vec<(String, ObservedContainer)> = (0..direct)
            .map(|n| {
                let labels = [(LABEL_DEPLOYMENT.to_owned(), DIRECT.to_owned()), (LABEL_INSTANCE.to_owned(), format!("x{n}"))].into();
                (
                    nodes[0].id.clone(),
                    ObservedContainer {
                        runtime: Runtime::Docker,
                        info: ContainerInfo { labels, ..ContainerInfo::new("", "", "", diplo_api::container::ContainerStatus::Running) },
                    },
                )
            })
            .collect();
        let states = nodes.iter().map(|n| (n, crate::planner::NodeState { status: n.status, connected: true }));
        crate::planner::candidates(states, &[], &HashMap::new(), &observed)
    }

    #[test]
    fn placement_prefers_the_platform_runtime_and_the_emptiest_node() {
        let nodes = vec![
            node("pi", "arm64", &[Runtime::Docker, Runtime::Lxc], NodeStatus::Ready),
            node("x86", "amd64", &[Runtime::Lxc, Runtime::Docker], NodeStatus::Ready),
        ];
        let spec = ContainerSpec::default();
        let busy = candidates(&nodes, 3);
        assert_eq!(place_container(&busy, &spec, None, None, None), Ok(("id-x86".into(), Runtime::Docker)));
        assert_eq!(place_container(&candidates(&nodes, 0), &spec, Some("id-pi".into()), None, None), Ok(("id-pi".into(), Runtime::Lxc)));
        assert_eq!(place_container(&busy, &spec, None, Some(Runtime::Lxc), None), Ok(("id-x86".into(), Runtime::Lxc)));
        // The image's platforms, capacity and host ports count as for deployments.
        let arm_only = Some(vec![("linux".to_owned(), "arm64".to_owned())]);
        assert_eq!(place_container(&busy, &spec, None, None, arm_only), Ok(("id-pi".into(), Runtime::Lxc)));
        let mut full = candidates(&nodes, 0);
        full[1].used_ports.insert((8080, diplo_api::container::Protocol::Tcp));
        full[0].memory_bytes = 1 << 20;
        let big = ContainerSpec {
            memory_bytes: Some(1 << 30),
            ports: vec![diplo_api::container::PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: diplo_api::container::Protocol::Tcp,
            }],
            ..Default::default()
        };
        let reasons = place_container(&full, &big, None, None, None).expect_err("nothing fits");
        assert!(reasons[0].starts_with("pi: not enough memory") && reasons[1].starts_with("x86: host port 8080/tcp in use"), "{reasons:?}");
    }

    #[test]
    fn no_candidate_gives_each_nodes_reason() {
        let mut cordoned = node("c", "amd64", &[Runtime::Docker], NodeStatus::Ready);
        cordoned.cordoned = true;
        let nodes = vec![node("a", "amd64", &[Runtime::Docker], NodeStatus::Down), cordoned];
        let spec = ContainerSpec::default();
        let reasons = place_container(&candidates(&nodes, 0), &spec, None, None, None).unwrap_err();
        assert_eq!(reasons, vec!["a: not ready".to_owned(), "c: cordoned".to_owned()]);
        let nodes = vec![node("a", "amd64", &[Runtime::Docker], NodeStatus::Ready)];
        let reasons = place_container(&candidates(&nodes, 0), &spec, None, Some(Runtime::Containerd), None).unwrap_err();
        assert!(reasons.iter().all(|r| r.contains("runtime containerd not available")), "{reasons:?}");
    }
}
