//! The reconciler's decisions, without effects: from a snapshot of the cluster (nodes,
//! observed containers, commands under way, scheduler candidates) and one deployment with
//! its instances, [`plan`] says which instance records to insert, update and delete,
//! which commands to send, which events to emit and which status the deployment gets.
//! The reconciler (`service/reconciler.rs`) applies a plan: records first, then events,
//! then commands. Same input, same plan.
//!
//! The rules:
//! * An instance record is written before its container is asked for, and every container
//!   carries its instance id as a label, so a crash on either side never duplicates.
//! * An instance on a node that is down is `lost` and replaced elsewhere; the lost copy is
//!   kept while its replacement starts, and removed once the deployment runs in full when
//!   its node is reachable again (one copy kept, no gap).
//! * An unhealthy container is restarted; an exited one is started again after a back-off
//!   when the restart policy says so (`on-failure`: only a non-zero exit).
//! * A rolling update starts at most `max_parallel` new instances at a time and retires old
//!   ones only as new ones run, so the last running copy is never removed while its
//!   replacement starts.
//! * Scaling down removes the least advanced instances first (not running, newest first).

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStatus, Health, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_NODE, RestartPolicy,
};
use diplo_api::runtime::Runtime;

use crate::model::{
    DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceDesired, InstanceRecord, InstanceStatus, NodeStatus, ObservedContainer,
};
use crate::scheduler::{self, NodeCandidate, PlacementRequest};
use crate::service::PlatformLookup;

/// How long a placed instance may go unobserved before its create is sent again.
pub const CREATE_RETRY: TimeDelta = TimeDelta::seconds(20);
/// How long a failed instance waits before it is tried again.
pub const FAILED_RETRY: TimeDelta = TimeDelta::seconds(5);

/// A node as a pass sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    /// Stored/live status.
    pub status: NodeStatus,
    /// Its agent has a session open.
    pub connected: bool,
}

impl NodeState {
    /// Commands can be sent to it now.
    pub fn usable(self) -> bool {
        self.status == NodeStatus::Ready && self.connected
    }
}

/// The cluster as one reconcile pass sees it. Build it with [`Snapshot::new`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Nodes by id; a node missing here was removed (counts as down).
    nodes: HashMap<String, NodeState>,
    /// Containers Diplo runs, with their node.
    observed: Vec<(String, ObservedContainer)>,
    /// `(node id, instance id)` → index in `observed`.
    by_instance: HashMap<(String, String), usize>,
    /// Keys of commands under way.
    in_flight: HashSet<CommandKey>,
    /// Scheduler candidates, with the usage of every live instance; placements made by
    /// earlier plans of the same pass are added with [`Snapshot::account`].
    candidates: Vec<NodeCandidate>,
    /// Node id → index in `candidates`.
    candidate_index: HashMap<String, usize>,
    /// Image platforms by reference (placement's hard filter; missing: not checked).
    images: HashMap<String, PlatformLookup>,
}

impl Snapshot {
    /// A snapshot from its parts. `candidates` must already count the usage of the live
    /// instances (see [`candidates`]).
    pub fn new(
        nodes: HashMap<String, NodeState>,
        observed: Vec<(String, ObservedContainer)>,
        in_flight: HashSet<CommandKey>,
        candidates: Vec<NodeCandidate>,
        images: HashMap<String, PlatformLookup>,
    ) -> Self {
        let by_instance = observed
            .iter()
            .enumerate()
            .filter_map(|(index, (node, c))| c.info.labels.get(LABEL_INSTANCE).map(|instance| ((node.clone(), instance.clone()), index)))
            .collect();
        let candidate_index = candidates.iter().enumerate().map(|(index, c)| (c.id.clone(), index)).collect();
        Snapshot { nodes, observed, by_instance, in_flight, candidates, candidate_index, images }
    }

    /// The scheduler's view of the nodes.
    pub fn candidates(&self) -> &[NodeCandidate] {
        &self.candidates
    }

    fn usable(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.usable())
    }

    fn down(&self, node: &str) -> bool {
        self.nodes.get(node).is_none_or(|n| n.status == NodeStatus::Down)
    }

    /// The container of an instance, as observed on its node.
    fn container_of(&self, instance: &InstanceRecord) -> Option<&ContainerInfo> {
        let node = instance.node_id.as_ref()?;
        let index = self.by_instance.get(&(node.clone(), instance.id.clone()))?;
        Some(&self.observed[*index].1.info)
    }

    /// Whether an instance's container is seen running and healthy.
    fn runs(&self, instance: &InstanceRecord) -> bool {
        self.container_of(instance).is_some_and(|c| c.status == ContainerStatus::Running && c.health != Some(Health::Unhealthy))
    }

    /// Adds the instances a plan places to the candidates, so that later plans of the same
    /// pass see them.
    pub fn account(&mut self, plan: &Plan, spec: &DeploymentSpec) {
        for instance in &plan.insert {
            let Some(node) = instance.node_id.as_deref() else { continue };
            if let Some(&index) = self.candidate_index.get(node) {
                add_instance(&mut self.candidates[index], &instance.deployment_id, spec);
                if let Some(runtime) = instance.runtime {
                    self.candidates[index].volumes.entry(runtime).or_default().extend(named_volumes(&spec.container));
                }
            }
        }
    }
}

/// Scheduler candidates for `nodes`, with the usage of every instance that runs or should
/// (`desired` run, not lost) and the ports and images of the containers observed.
pub fn candidates<'a>(
    nodes: impl IntoIterator<Item = (&'a crate::model::NodeRecord, NodeState)>,
    instances: &[InstanceRecord],
    specs: &HashMap<String, DeploymentSpec>,
    observed: &[(String, ObservedContainer)],
) -> Vec<NodeCandidate> {
    let mut list: Vec<NodeCandidate> = nodes
        .into_iter()
        .map(|(node, state)| {
            let fp = &node.fingerprint;
            NodeCandidate {
                id: node.id.clone(),
                name: node.name.clone(),
                os: fp.os.clone(),
                arch: fp.arch.clone(),
                raspberry_pi: !fp.raspberry_pi_model.is_empty(),
                ready: state.usable(),
                cordoned: node.cordoned,
                labels: node.labels.clone(),
                reported_labels: fp.labels.clone(),
                runtimes: fp.available_runtimes(),
                cpu_millis: u64::from(fp.cpus) * 1000,
                memory_bytes: fp.memory_bytes,
                volumes: fp.volumes.iter().map(|(runtime, names)| (*runtime, names.iter().cloned().collect())).collect(),
                ..Default::default()
            }
        })
        .collect();
    let index: HashMap<String, usize> = list.iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
    for instance in instances.iter().filter(|i| i.desired == InstanceDesired::Run && i.status != InstanceStatus::Lost) {
        let Some(&slot) = instance.node_id.as_ref().and_then(|n| index.get(n)) else { continue };
        match specs.get(&instance.deployment_id) {
            Some(spec) => {
                add_instance(&mut list[slot], &instance.deployment_id, spec);
                // Its volumes live there (or will once it starts) whatever the node reported last.
                if let Some(runtime) = instance.runtime {
                    list[slot].volumes.entry(runtime).or_default().extend(named_volumes(&spec.container));
                }
            }
            None => bump(&mut list[slot], &instance.deployment_id),
        }
    }
    for (node, container) in observed {
        let Some(&slot) = index.get(node) else { continue };
        let candidate = &mut list[slot];
        candidate.images.insert(container.info.image.clone());
        candidate.used_ports.extend(container.info.ports.iter().map(|p| (p.host_port, p.protocol)));
        // Direct containers have no instance record: they count as their own group, so
        // that direct placements spread.
        if container.info.labels.get(LABEL_DEPLOYMENT).is_none_or(|d| d == DIRECT) {
            bump(candidate, DIRECT);
        }
    }
    list
}

/// The deployment label of containers created directly, outside any deployment.
pub const DIRECT: &str = "direct";

fn bump(candidate: &mut NodeCandidate, group: &str) {
    let count = candidate.instances.entry(group.to_owned()).or_insert(0);
    *count = count.saturating_add(1);
}

/// Adds what one instance of `spec` uses to `candidate`, saturating: sizes come from
/// operators and capacities from nodes, and neither may overflow the sums.
fn add_instance(candidate: &mut NodeCandidate, deployment_id: &str, spec: &DeploymentSpec) {
    bump(candidate, deployment_id);
    candidate.used_cpu_millis = candidate.used_cpu_millis.saturating_add(u64::from(spec.container.cpu_millis.unwrap_or(0)));
    candidate.used_memory_bytes = candidate.used_memory_bytes.saturating_add(spec.container.memory_bytes.unwrap_or(0));
    candidate.used_ports.extend(spec.container.ports.iter().map(|p| (p.host_port, p.protocol)));
}

/// What the scheduler is asked for `count` new replicas of `spec`; `platforms`: the
/// image's, from its registry (`None`: unknown, not filtered).
pub fn request_for(deployment_id: &str, spec: &DeploymentSpec, count: u32, platforms: Option<Vec<(String, String)>>) -> PlacementRequest {
    PlacementRequest {
        deployment_id: deployment_id.to_owned(),
        count,
        image: spec.container.image.clone(),
        image_platforms: platforms,
        runtime: spec.runtime,
        constraints: spec.constraints.clone(),
        cpu_millis: u64::from(spec.container.cpu_millis.unwrap_or(0)),
        memory_bytes: spec.container.memory_bytes.unwrap_or(0),
        ports: spec.container.ports.iter().map(|p| (p.host_port, p.protocol)).collect(),
        strategy: spec.strategy,
        volumes: named_volumes(&spec.container),
    }
}

/// The named volumes (not host paths) `spec` mounts, each once, sorted.
pub fn named_volumes(spec: &ContainerSpec) -> Vec<String> {
    let names: BTreeSet<&str> = spec.mounts.iter().filter(|m| !m.is_bind()).map(|m| m.source.as_str()).collect();
    names.into_iter().map(str::to_owned).collect()
}

/// The container an instance runs: the deployment's template as its runtime runs it
/// ([`Runtime::placed_spec`]), named after the instance and labelled with its ids.
pub fn instance_container(deployment: &DeploymentRecord, instance: &InstanceRecord) -> ContainerSpec {
    let mut spec = deployment.spec.container.clone();
    if let Some(runtime) = instance.runtime {
        spec = runtime.placed_spec(spec);
    }
    spec.name = format!("{}-{}", deployment.spec.name, instance.id.chars().take(8).collect::<String>());
    spec.labels.insert(LABEL_DEPLOYMENT.into(), deployment.spec.name.clone());
    spec.labels.insert(LABEL_INSTANCE.into(), instance.id.clone());
    if let Some(node) = &instance.node_id {
        spec.labels.insert(LABEL_NODE.into(), node.clone());
    }
    spec
}

/// What a command is for, which decides what its outcome changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An instance: a create/start/restart outcome is recorded on it; after a remove its
    /// record is deleted.
    Instance {
        /// Its deployment.
        deployment_id: String,
        /// The instance.
        instance_id: String,
    },
    /// A container whose instance no longer exists (a surplus copy).
    Orphan {
        /// The instance id its label names.
        instance_id: String,
    },
}

/// One command to send.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedCommand {
    /// What it is for.
    pub target: Target,
    /// Node that runs it.
    pub node_id: String,
    /// Runtime on that node.
    pub runtime: Runtime,
    /// The operation.
    pub op: InstanceOp,
}

/// What one command at a time is allowed for: an instance, or a surplus copy (a container
/// whose instance no longer exists, by the instance id its label names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandKey {
    /// An instance (reconciler commands and operators' instance operations alike).
    Instance(String),
    /// The removal of a surplus copy.
    SurplusCopy(String),
}

impl PlannedCommand {
    /// The in-flight key: one command at a time per key.
    pub fn key(&self) -> CommandKey {
        match &self.target {
            Target::Instance { instance_id, .. } => CommandKey::Instance(instance_id.clone()),
            Target::Orphan { instance_id } => CommandKey::SurplusCopy(instance_id.clone()),
        }
    }
}

/// The operations the reconciler sends.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceOp {
    /// Create and start a container.
    Create(Box<ContainerSpec>),
    /// Start a container (by id).
    Start(String),
    /// Restart a container (by id).
    Restart(String),
    /// Remove a container (by id), forcibly.
    Remove(String),
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Kind, e.g. `instance.lost`.
    pub kind: String,
    /// Subject id.
    pub subject: String,
    /// Human text.
    pub message: String,
}

/// Everything one pass decides for one deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// New instance records (placed), inserted before their creates are sent.
    pub insert: Vec<InstanceRecord>,
    /// Changed instance records.
    pub update: Vec<InstanceRecord>,
    /// Instance records to delete (their containers are gone).
    pub delete: Vec<String>,
    /// Commands to send once the records are written.
    pub commands: Vec<PlannedCommand>,
    /// The deployment's new status and message, when they change.
    pub status: Option<(DeploymentStatus, String)>,
    /// The deployment is being deleted and nothing of it is left: delete its record.
    pub delete_deployment: bool,
    /// Events to record after the writes.
    pub events: Vec<PlannedEvent>,
    /// Why some replicas could not be placed (one reason per node).
    pub reasons: Vec<String>,
}

impl Plan {
    fn command(&mut self, snapshot: &Snapshot, instance: &InstanceRecord, node_id: &str, op: InstanceOp) {
        let Some(runtime) = instance.runtime else { return };
        let key = CommandKey::Instance(instance.id.clone());
        if snapshot.in_flight.contains(&key) || self.commands.iter().any(|c| c.key() == key) {
            return;
        }
        let target = Target::Instance { deployment_id: instance.deployment_id.clone(), instance_id: instance.id.clone() };
        self.commands.push(PlannedCommand { target, node_id: node_id.to_owned(), runtime, op });
    }

    fn event(&mut self, kind: &str, subject: &str, message: String) {
        self.events.push(PlannedEvent { kind: kind.to_owned(), subject: subject.to_owned(), message });
    }
}

/// The plan for one deployment. `instances` are the deployment's; `new_id` names new
/// instances (a UUID in production, a counter in tests).
pub fn plan(
    snapshot: &Snapshot,
    deployment: &DeploymentRecord,
    instances: &[InstanceRecord],
    now: DateTime<Utc>,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    if deployment.status == DeploymentStatus::Deleting {
        return plan_deletion(snapshot, deployment, instances);
    }
    // Built from source and not built yet (or its first build failed): nothing to run.
    if deployment.spec.container.image.is_empty() {
        return Plan::default();
    }
    let mut plan = Plan::default();
    let mut instances = instances.to_vec();
    let mut lost_here: Vec<InstanceRecord> = Vec::new();
    let mut changed: Vec<InstanceRecord> = Vec::new();

    // 1. Match instances with what their nodes report.
    for instance in &mut instances {
        let before = instance.clone();
        let Some(node_id) = instance.node_id.clone() else { continue };
        if instance.desired == InstanceDesired::Remove {
            match snapshot.container_of(instance) {
                Some(container) if snapshot.usable(&node_id) => {
                    plan.command(snapshot, instance, &node_id, InstanceOp::Remove(container.id.clone()));
                }
                Some(_) => {}
                None if snapshot.usable(&node_id) || snapshot.down(&node_id) => plan.delete.push(instance.id.clone()),
                None => {}
            }
            continue;
        }
        if snapshot.down(&node_id) {
            if instance.status != InstanceStatus::Lost {
                instance.status = InstanceStatus::Lost;
                instance.message = format!("node {node_id} is down; replaced elsewhere");
                plan.event("instance.lost", &instance.id, instance.message.clone());
            }
        } else if instance.status == InstanceStatus::Lost {
            // Its node is back (or was drained): this copy goes once replacements run.
            if snapshot.usable(&node_id) {
                lost_here.push(instance.clone());
            }
        } else if let Some(container) = snapshot.container_of(instance) {
            instance.container_id = Some(container.id.clone());
            let healthy = container.health != Some(Health::Unhealthy);
            match container.status {
                ContainerStatus::Running if healthy => {
                    if instance.status != InstanceStatus::Running {
                        instance.status = InstanceStatus::Running;
                        instance.message = String::new();
                        plan.event("instance.running", &instance.id, format!("{} runs on node {node_id}", container.name));
                    }
                }
                // Its node's agent restarts an unhealthy container by its restart policy (on
                // every runtime): a restart from here too would make two.
                ContainerStatus::Running => {
                    instance.status = InstanceStatus::Failed;
                    instance.message = format!(
                        "health check failing; its node restarts it by its restart policy ({})",
                        deployment.spec.container.restart_policy
                    );
                }
                ContainerStatus::Created | ContainerStatus::Exited | ContainerStatus::Unknown => {
                    instance.status = InstanceStatus::Failed;
                    instance.message = format!("container exited with code {}", container.exit_code);
                    let policy = deployment.spec.container.restart_policy;
                    // `on-failure:N` gives up after N restarts (the node counts them).
                    let exhausted = policy.max_retries().is_some_and(|max| container.restart_count >= max);
                    let restart = policy != RestartPolicy::No && !(policy.is_on_failure() && container.exit_code == 0) && !exhausted;
                    if restart && snapshot.usable(&node_id) && now - before.updated_at > FAILED_RETRY {
                        plan.command(snapshot, instance, &node_id, InstanceOp::Start(container.id.clone()));
                    }
                }
                ContainerStatus::Paused | ContainerStatus::Restarting => {}
            }
        } else if snapshot.usable(&node_id) && !snapshot.in_flight.contains(&CommandKey::Instance(instance.id.clone())) {
            // Placed but not (or no longer) observed: (re)create after a pause.
            let waited = now - instance.updated_at;
            let due = match instance.status {
                InstanceStatus::Starting => waited > CREATE_RETRY,
                InstanceStatus::Running | InstanceStatus::Failed => waited > FAILED_RETRY,
                InstanceStatus::Pending | InstanceStatus::Lost => false,
            };
            if due && instance.revision == deployment.revision {
                instance.status = InstanceStatus::Starting;
                instance.message = "container missing; creating it again".into();
                instance.updated_at = now;
                plan.command(snapshot, instance, &node_id, InstanceOp::Create(Box::new(instance_container(deployment, instance))));
            }
        }
        if *instance != before {
            instance.updated_at = now;
            changed.push(instance.clone());
        }
    }

    // 2. Counts at the current revision, and what older revisions still run.
    let active = |i: &&InstanceRecord| i.desired == InstanceDesired::Run && i.status != InstanceStatus::Lost;
    let current: Vec<InstanceRecord> = instances.iter().filter(active).filter(|i| i.revision == deployment.revision).cloned().collect();
    let old: Vec<InstanceRecord> = instances.iter().filter(active).filter(|i| i.revision != deployment.revision).cloned().collect();
    // Running means seen running: a record still saying `running` for a container its node
    // no longer reports (a node between sessions) does not count.
    let running_current = current.iter().filter(|i| i.status == InstanceStatus::Running && snapshot.runs(i)).count();
    let replicas = deployment.spec.replicas as usize;

    // 3. Too few: place and create new instances (at most max_parallel starting at once
    //    while older revisions are being replaced).
    let mut want = replicas.saturating_sub(current.len());
    if !old.is_empty() {
        let starting = current.len() - running_current;
        want = want.min((deployment.spec.max_parallel.max(1) as usize).saturating_sub(starting));
    }
    if want > 0 {
        let platforms = snapshot.images.get(&deployment.spec.container.image).and_then(PlatformLookup::platforms);
        let request = request_for(&deployment.id, &deployment.spec, u32::try_from(want).unwrap_or(u32::MAX), platforms);
        let placements = match scheduler::place(&snapshot.candidates, &request) {
            Ok(placements) => placements,
            Err(no_fit) => {
                plan.reasons = no_fit.reasons;
                no_fit.placed
            }
        };
        for placement in placements {
            let instance =
                InstanceRecord::placed(new_id(), &deployment.id, deployment.revision, &placement.node_id, placement.runtime, now);
            plan.event("instance.placed", &instance.id, format!("{} placed on node {}", deployment.spec.name, placement.node_id));
            plan.command(snapshot, &instance, &placement.node_id, InstanceOp::Create(Box::new(instance_container(deployment, &instance))));
            plan.insert.push(instance);
        }
    }

    // 4. Too many at this revision: remove the least advanced (a container seen running
    //    counts most, then the recorded status), newest first.
    let mut to_remove: Vec<String> = Vec::new();
    if current.len() > replicas {
        let mut extra: Vec<&InstanceRecord> = current.iter().collect();
        extra.sort_by_key(|i| (snapshot.runs(i), i.status == InstanceStatus::Running, std::cmp::Reverse(i.created_at), i.id.clone()));
        to_remove.extend(extra.iter().take(current.len() - replicas).map(|i| i.id.clone()));
    }
    // 5. Rolling update: retire old instances as new ones run, those not seen running and
    //    the oldest first.
    let old_allowed = replicas.saturating_sub(running_current);
    if old.len() > old_allowed {
        let mut retire: Vec<&InstanceRecord> = old.iter().collect();
        retire.sort_by_key(|i| (snapshot.runs(i), i.status == InstanceStatus::Running, i.created_at, i.id.clone()));
        to_remove.extend(retire.iter().take(old.len() - old_allowed).map(|i| i.id.clone()));
    }
    for instance in instances.iter_mut().filter(|i| to_remove.contains(&i.id)) {
        instance.desired = InstanceDesired::Remove;
        instance.updated_at = now;
        changed.retain(|c| c.id != instance.id);
        changed.push(instance.clone());
        if let (Some(node), Some(container)) = (instance.node_id.as_deref(), snapshot.container_of(instance))
            && snapshot.usable(node)
        {
            plan.command(snapshot, instance, node, InstanceOp::Remove(container.id.clone()));
        }
    }
    plan.update = changed;

    // Lost copies on reachable nodes (a node that came back, a drained node) go once the
    // deployment runs in full elsewhere: one copy kept, no gap.
    if running_current >= replicas {
        for instance in &lost_here {
            let node = instance.node_id.as_deref().unwrap_or_default();
            match snapshot.container_of(instance) {
                Some(container) => plan.command(snapshot, instance, node, InstanceOp::Remove(container.id.clone())),
                None => plan.delete.push(instance.id.clone()),
            }
        }
    }

    // 6. Status.
    let (status, mut message) = if running_current >= replicas && old.is_empty() && current.len() == replicas {
        (DeploymentStatus::Running, String::new())
    } else if !plan.reasons.is_empty() {
        (DeploymentStatus::Degraded, format!("cannot place every replica: {}", plan.reasons.join("; ")))
    } else {
        (DeploymentStatus::Deploying, format!("{running_current}/{replicas} running"))
    };
    // Why placement did not check the image's platforms, when it could not.
    let image = &deployment.spec.container.image;
    if let Some(note) = snapshot.images.get(image).and_then(|p| p.note(image)) {
        message = if message.is_empty() { note } else { format!("{message}; {note}") };
    }
    // While a new image is being built the deployment says so; the build's end sets the
    // status again.
    if deployment.status != DeploymentStatus::Building && (status != deployment.status || message != deployment.message) {
        plan.status = Some((status, message));
    }
    plan
}

/// A deployment being deleted: its containers are removed where their node answers,
/// records whose container is gone (or whose node is down) are deleted, and the deployment
/// itself once nothing is left.
fn plan_deletion(snapshot: &Snapshot, deployment: &DeploymentRecord, instances: &[InstanceRecord]) -> Plan {
    let mut plan = Plan::default();
    for instance in instances {
        let node = instance.node_id.as_deref().unwrap_or_default();
        match snapshot.container_of(instance) {
            Some(container) if snapshot.usable(node) => plan.command(snapshot, instance, node, InstanceOp::Remove(container.id.clone())),
            Some(_) if !snapshot.down(node) => {}
            _ => plan.delete.push(instance.id.clone()),
        }
    }
    if plan.delete.len() == instances.len() {
        plan.delete_deployment = true;
        plan.event("deployment.deleted", &deployment.id, format!("{} deleted", deployment.spec.name));
    }
    plan
}

/// Containers of deployments whose instance no longer exists (a node that comes back
/// after its instances were replaced): removed where their node answers, one copy kept.
/// Direct containers are never touched.
pub fn plan_orphans(snapshot: &Snapshot, known_instances: &HashSet<&str>) -> Vec<PlannedCommand> {
    let mut commands = Vec::new();
    for (node_id, container) in &snapshot.observed {
        let labels = &container.info.labels;
        let Some(instance) = labels.get(LABEL_INSTANCE) else { continue };
        let direct = labels.get(LABEL_DEPLOYMENT).is_none_or(|d| d == DIRECT);
        if direct || known_instances.contains(instance.as_str()) || !snapshot.usable(node_id) {
            continue;
        }
        let key = CommandKey::SurplusCopy(instance.clone());
        if snapshot.in_flight.contains(&key) || commands.iter().any(|c: &PlannedCommand| c.key() == key) {
            continue;
        }
        commands.push(PlannedCommand {
            target: Target::Orphan { instance_id: instance.clone() },
            node_id: node_id.clone(),
            runtime: container.runtime,
            op: InstanceOp::Remove(container.info.id.clone()),
        });
    }
    commands
}

#[cfg(test)]
mod tests;
