//! The reconciler: turns the difference between desired state (deployments and their
//! instances, in the store) and observed state (containers reported by agents) into
//! agent commands. Every instance record is written before its container is asked
//! for, and every container carries its instance id, so that after a crash of either
//! side the next pass converges without duplicates.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use diplo_api::command::{CommandOp, CommandOutput};
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStatus, Health, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_NODE, RestartPolicy,
};

use super::ControlPlane;
use super::images::PlatformLookup;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{
    DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceDesired, InstanceRecord, InstanceStatus, NodeRecord, NodeStatus,
    ObservedContainer,
};
use crate::scheduler::{self, NodeCandidate, PlacementRequest};

/// How often the reconciler runs without being nudged.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(2);
/// How long a placed instance may go unobserved before its create is sent again.
const CREATE_RETRY: chrono::TimeDelta = chrono::TimeDelta::seconds(20);
/// How long a failed instance waits before it is tried again.
const FAILED_RETRY: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// Commands sent and not answered yet, by instance id (so a pass never sends twice).
/// A marker lives as long as the [`InFlightGuard`] that [`InFlight::begin`] returns, so
/// it is released on every exit path: answered, failed, or the waiting future dropped
/// (a client that disconnects, a task that is cancelled).
#[derive(Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// The marker of one command under way; dropping it ends the command's turn.
#[must_use = "the in-flight marker is released when this is dropped"]
pub struct InFlightGuard {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

impl InFlight {
    /// Marks `key` as having a command under way; `None` when it already has one.
    pub(super) fn begin(&self, key: &str) -> Option<InFlightGuard> {
        let inserted = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.to_owned());
        inserted.then(|| InFlightGuard { set: Arc::clone(&self.0), key: key.to_owned() })
    }

    fn contains(&self, key: &str) -> bool {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(key)
    }
}

/// How many replicas of a spec could be placed now, and why the rest could not.
#[derive(Debug, Clone)]
pub struct Fit {
    /// Replicas that found a node.
    pub placed: u32,
    /// Runtime of the first placement.
    pub runtime: Option<diplo_api::runtime::Runtime>,
    /// One reason per rejected node.
    pub reasons: Vec<String>,
}

/// The cluster as one reconcile pass sees it.
struct World {
    nodes: Vec<NodeRecord>,
    /// Node id → connected to a session.
    connected: HashMap<String, bool>,
    observed: Vec<(String, ObservedContainer)>,
    instances: Vec<InstanceRecord>,
    deployments: Vec<DeploymentRecord>,
}

impl World {
    fn node(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn node_usable(&self, id: &str) -> bool {
        self.node(id).is_some_and(|n| n.status == NodeStatus::Ready) && self.connected.get(id).copied().unwrap_or(false)
    }

    fn node_down(&self, id: &str) -> bool {
        self.node(id).is_none_or(|n| n.status == NodeStatus::Down)
    }

    /// The container of an instance, as observed on its node.
    fn container_of(&self, instance: &InstanceRecord) -> Option<&ContainerInfo> {
        let node = instance.node_id.as_deref()?;
        self.observed
            .iter()
            .find(|(n, c)| n == node && c.info.labels.get(LABEL_INSTANCE).is_some_and(|i| *i == instance.id))
            .map(|(_, c)| &c.info)
    }

    /// Scheduler candidates with the usage of every instance that is not gone.
    fn candidates(&self, specs: &HashMap<String, DeploymentSpec>) -> Vec<NodeCandidate> {
        self.nodes
            .iter()
            .map(|node| {
                let fp = &node.fingerprint;
                let mut candidate = NodeCandidate {
                    id: node.id.clone(),
                    name: node.name.clone(),
                    os: fp.os.clone(),
                    arch: fp.arch.clone(),
                    raspberry_pi: !fp.raspberry_pi_model.is_empty(),
                    ready: node.status == NodeStatus::Ready && self.connected.get(&node.id).copied().unwrap_or(false),
                    cordoned: node.cordoned,
                    labels: node.labels.clone(),
                    reported_labels: fp.labels.clone(),
                    runtimes: fp.available_runtimes(),
                    cpu_millis: u64::from(fp.cpus) * 1000,
                    memory_bytes: fp.memory_bytes,
                    used_cpu_millis: 0,
                    used_memory_bytes: 0,
                    used_ports: Default::default(),
                    images: Default::default(),
                    instances: Default::default(),
                };
                for instance in self.instances.iter().filter(|i| {
                    i.node_id.as_deref() == Some(node.id.as_str()) && i.desired == InstanceDesired::Run && i.status != InstanceStatus::Lost
                }) {
                    let count = candidate.instances.entry(instance.deployment_id.clone()).or_insert(0);
                    *count = count.saturating_add(1);
                    if let Some(spec) = specs.get(&instance.deployment_id) {
                        add_usage(&mut candidate, spec);
                    }
                }
                for (_, container) in self.observed.iter().filter(|(n, _)| *n == node.id) {
                    candidate.images.insert(container.info.image.clone());
                    candidate.used_ports.extend(container.info.ports.iter().map(|p| (p.host_port, p.protocol)));
                }
                candidate
            })
            .collect()
    }
}

/// What the scheduler is asked for `count` new replicas of `spec`; `platforms`: the
/// image's, from its registry (`None`: unknown, not filtered).
fn request_for(deployment_id: &str, spec: &DeploymentSpec, count: u32, platforms: Option<Vec<(String, String)>>) -> PlacementRequest {
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
    }
}

/// The container an instance runs: the deployment's template, named after the instance
/// and labelled with its ids.
pub fn instance_container(deployment: &DeploymentRecord, instance: &InstanceRecord) -> ContainerSpec {
    let mut spec = deployment.spec.container.clone();
    spec.name = format!("{}-{}", deployment.spec.name, instance.id.chars().take(8).collect::<String>());
    spec.labels.insert(LABEL_DEPLOYMENT.into(), deployment.spec.name.clone());
    spec.labels.insert(LABEL_INSTANCE.into(), instance.id.clone());
    if let Some(node) = &instance.node_id {
        spec.labels.insert(LABEL_NODE.into(), node.clone());
    }
    spec
}

impl ControlPlane {
    async fn world(&self) -> ServiceResult<World> {
        let mut nodes = self.store.list_nodes().await?;
        for node in &mut nodes {
            self.apply_live_status(node);
        }
        let connected = nodes.iter().map(|n| (n.id.clone(), self.nodes.live_status(&n.id).is_some_and(|l| l.connected))).collect();
        Ok(World {
            nodes,
            connected,
            observed: self.nodes.containers(),
            instances: self.store.list_instances(None).await?,
            deployments: self.store.list_deployments().await?,
        })
    }

    /// How many replicas of `spec` fit on the cluster now, on nodes whose os/arch is one
    /// of `platforms` (the image's; `None`: not checked).
    pub(crate) async fn placement_preview(&self, spec: &DeploymentSpec, platforms: Option<Vec<(String, String)>>) -> ServiceResult<Fit> {
        let world = self.world().await?;
        let specs: HashMap<String, DeploymentSpec> = world.deployments.iter().map(|d| (d.id.clone(), d.spec.clone())).collect();
        let candidates = world.candidates(&specs);
        let request = request_for("preview", spec, spec.replicas.max(1), platforms);
        Ok(match scheduler::place(&candidates, &request) {
            Ok(placed) => Fit {
                placed: u32::try_from(placed.len()).unwrap_or(u32::MAX),
                runtime: placed.first().map(|p| p.runtime),
                reasons: Vec::new(),
            },
            Err(no_fit) => Fit {
                placed: u32::try_from(no_fit.placed.len()).unwrap_or(u32::MAX),
                runtime: no_fit.placed.first().map(|p| p.runtime),
                reasons: no_fit.reasons,
            },
        })
    }

    /// Runs [`ControlPlane::reconcile_once`] whenever nudged, and at least every
    /// [`RECONCILE_PERIOD`].
    pub async fn run_reconciler(self: Arc<Self>) {
        loop {
            if let Err(err) = self.reconcile_once().await {
                tracing::error!(error = %err, "reconcile pass failed");
            }
            let _ = tokio::time::timeout(RECONCILE_PERIOD, self.reconcile.notified()).await;
        }
    }

    /// One pass over every deployment.
    pub async fn reconcile_once(self: &Arc<Self>) -> ServiceResult<()> {
        let world = self.world().await?;
        let specs: HashMap<String, DeploymentSpec> = world.deployments.iter().map(|d| (d.id.clone(), d.spec.clone())).collect();
        let mut candidates = world.candidates(&specs);
        let platforms = self.image_platforms_of(&world.deployments).await;
        for deployment in &world.deployments {
            let instances: Vec<InstanceRecord> = world.instances.iter().filter(|i| i.deployment_id == deployment.id).cloned().collect();
            if deployment.status == DeploymentStatus::Deleting {
                self.reconcile_deletion(&world, deployment, instances).await?;
            } else {
                let lookup = platforms.get(&deployment.spec.container.image);
                self.reconcile_deployment(&world, &mut candidates, deployment, instances, lookup).await?;
            }
        }
        self.remove_orphans(&world);
        Ok(())
    }

    /// The platforms of every live deployment's image (cached; the registry is only
    /// waited for the first time an image is met, all images at once).
    async fn image_platforms_of(self: &Arc<Self>, deployments: &[DeploymentRecord]) -> HashMap<String, PlatformLookup> {
        let mut images: Vec<&str> =
            deployments.iter().filter(|d| d.status != DeploymentStatus::Deleting).map(|d| d.spec.container.image.as_str()).collect();
        images.sort_unstable();
        images.dedup();
        let lookups = futures::future::join_all(images.iter().map(|image| self.image_platforms.lookup(image))).await;
        images.into_iter().map(str::to_owned).zip(lookups).collect()
    }

    async fn reconcile_deployment(
        self: &Arc<Self>,
        world: &World,
        candidates: &mut [NodeCandidate],
        deployment: &DeploymentRecord,
        mut instances: Vec<InstanceRecord>,
        platforms: Option<&PlatformLookup>,
    ) -> ServiceResult<()> {
        let now = Utc::now();
        let mut changed: Vec<InstanceRecord> = Vec::new();
        let mut dropped: Vec<String> = Vec::new();
        let mut lost_here: Vec<InstanceRecord> = Vec::new();

        // 1. Match instances with what their nodes report.
        for instance in &mut instances {
            let before = instance.clone();
            let Some(node_id) = instance.node_id.clone() else { continue };
            if instance.desired == InstanceDesired::Remove {
                match world.container_of(instance) {
                    Some(container) if world.node_usable(&node_id) => {
                        self.dispatch_remove(instance, &node_id, container.id.clone());
                    }
                    Some(_) => {}
                    None if world.node_usable(&node_id) || world.node_down(&node_id) => dropped.push(instance.id.clone()),
                    None => {}
                }
                continue;
            }
            if world.node_down(&node_id) {
                if instance.status != InstanceStatus::Lost {
                    instance.status = InstanceStatus::Lost;
                    instance.message = format!("node {node_id} is down; replaced elsewhere");
                    self.emit("instance.lost", "system", &instance.id, instance.message.clone()).await;
                }
            } else if instance.status == InstanceStatus::Lost {
                // Its node is back (or was drained): this copy goes once replacements run.
                if world.node_usable(&node_id) {
                    lost_here.push(instance.clone());
                }
            } else if let Some(container) = world.container_of(instance) {
                instance.container_id = Some(container.id.clone());
                let healthy = container.health != Some(Health::Unhealthy);
                match container.status {
                    ContainerStatus::Running if healthy => {
                        if instance.status != InstanceStatus::Running {
                            instance.status = InstanceStatus::Running;
                            instance.message = String::new();
                            self.emit("instance.running", "system", &instance.id, format!("{} runs on node {node_id}", container.name))
                                .await;
                        }
                    }
                    ContainerStatus::Running => {
                        instance.status = InstanceStatus::Failed;
                        instance.message = "health check failing; restarting".into();
                        if world.node_usable(&node_id) {
                            self.dispatch_lifecycle(instance, &node_id, CommandOp::Restart(container.id.clone()));
                        }
                    }
                    ContainerStatus::Created | ContainerStatus::Exited | ContainerStatus::Unknown => {
                        instance.status = InstanceStatus::Failed;
                        instance.message = format!("container exited with code {}", container.exit_code);
                        let restart = deployment.spec.container.restart_policy != RestartPolicy::No
                            && !(deployment.spec.container.restart_policy == RestartPolicy::OnFailure && container.exit_code == 0);
                        if restart && world.node_usable(&node_id) && now - instance.updated_at > FAILED_RETRY {
                            self.dispatch_lifecycle(instance, &node_id, CommandOp::Start(container.id.clone()));
                        }
                    }
                    ContainerStatus::Paused | ContainerStatus::Restarting => {}
                }
            } else if world.node_usable(&node_id) && !self.in_flight.contains(&instance.id) {
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
                    self.dispatch_create(deployment, instance);
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
        let running_current = current.iter().filter(|i| i.status == InstanceStatus::Running).count();
        let replicas = deployment.spec.replicas as usize;
        let mut reasons = Vec::new();

        // 3. Too few: place and create new instances (at most max_parallel starting at
        //    once while older revisions are being replaced).
        let mut want = replicas.saturating_sub(current.len());
        if !old.is_empty() {
            let starting = current.len() - running_current;
            want = want.min((deployment.spec.max_parallel.max(1) as usize).saturating_sub(starting));
        }
        let mut created = Vec::new();
        if want > 0 {
            let request = request_for(
                &deployment.id,
                &deployment.spec,
                u32::try_from(want).unwrap_or(u32::MAX),
                platforms.and_then(PlatformLookup::platforms),
            );
            let placements = match scheduler::place(candidates, &request) {
                Ok(placements) => placements,
                Err(no_fit) => {
                    reasons = no_fit.reasons;
                    no_fit.placed
                }
            };
            for placement in placements {
                account(candidates, &placement.node_id, &deployment.id, &deployment.spec);
                created.push(InstanceRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    deployment_id: deployment.id.clone(),
                    revision: deployment.revision,
                    node_id: Some(placement.node_id),
                    runtime: Some(placement.runtime),
                    container_id: None,
                    desired: InstanceDesired::Run,
                    status: InstanceStatus::Starting,
                    message: String::new(),
                    created_at: now,
                    updated_at: now,
                });
            }
        }

        // 4. Too many at this revision: remove the least advanced, newest first.
        let mut to_remove: Vec<String> = Vec::new();
        if current.len() > replicas {
            let mut extra: Vec<&InstanceRecord> = current.iter().collect();
            extra.sort_by_key(|i| (i.status == InstanceStatus::Running, std::cmp::Reverse(i.created_at)));
            to_remove.extend(extra.iter().take(current.len() - replicas).map(|i| i.id.clone()));
        }
        // 5. Rolling update: retire old instances as new ones run.
        let old_allowed = replicas.saturating_sub(running_current);
        if old.len() > old_allowed {
            let mut retire: Vec<&InstanceRecord> = old.iter().collect();
            retire.sort_by_key(|i| (i.status == InstanceStatus::Running, i.created_at));
            to_remove.extend(retire.iter().take(old.len() - old_allowed).map(|i| i.id.clone()));
        }
        for instance in instances.iter_mut().filter(|i| to_remove.contains(&i.id)) {
            instance.desired = InstanceDesired::Remove;
            instance.updated_at = now;
            changed.retain(|c| c.id != instance.id);
            changed.push(instance.clone());
        }

        // Durable before acted on: records first, then commands.
        if !created.is_empty() {
            self.store.insert_instances(&created).await?;
            for instance in &created {
                let node = instance.node_id.as_deref().unwrap_or_default();
                self.emit("instance.placed", "system", &instance.id, format!("{} placed on node {node}", deployment.spec.name)).await;
                self.dispatch_create(deployment, instance);
            }
        }
        if !changed.is_empty() {
            self.store.update_instances(&changed).await?;
        }
        if !dropped.is_empty() {
            self.store.delete_instances(&dropped).await?;
        }
        for instance in instances.iter().filter(|i| to_remove.contains(&i.id)) {
            if let (Some(node), Some(container)) = (instance.node_id.as_deref(), world.container_of(instance))
                && world.node_usable(node)
            {
                self.dispatch_remove(instance, node, container.id.clone());
            }
        }

        // Lost copies on reachable nodes (a node that came back, a drained node) go once
        // the deployment runs in full elsewhere: one copy kept, no gap.
        if running_current >= replicas {
            for instance in &lost_here {
                let node = instance.node_id.as_deref().unwrap_or_default();
                match world.container_of(instance) {
                    Some(container) => self.dispatch_remove(instance, node, container.id.clone()),
                    None => dropped.push(instance.id.clone()),
                }
            }
            if !dropped.is_empty() {
                self.store.delete_instances(&dropped).await?;
            }
        }

        // 6. Status.
        let (status, mut message) = if running_current >= replicas && old.is_empty() && current.len() == replicas {
            (DeploymentStatus::Running, String::new())
        } else if !reasons.is_empty() {
            (DeploymentStatus::Degraded, format!("cannot place every replica: {}", reasons.join("; ")))
        } else {
            (DeploymentStatus::Deploying, format!("{running_current}/{replicas} running"))
        };
        // Why placement did not check the image's platforms, when it could not.
        if let Some(note) = platforms.and_then(|p| p.note(&deployment.spec.container.image)) {
            message = if message.is_empty() { note } else { format!("{message}; {note}") };
        }
        if status != deployment.status || message != deployment.message {
            // Written only if the deployment is still as read at the start of this pass:
            // a concurrent scale, update or deletion is never overwritten.
            let written = self.store.set_deployment_status(deployment, status, &message, now).await?;
            if written && status != deployment.status {
                self.emit(
                    &format!("deployment.{}", status.as_str()),
                    "system",
                    &deployment.id,
                    format!("{} is {}", deployment.spec.name, status.as_str()),
                )
                .await;
            }
        }
        Ok(())
    }

    async fn reconcile_deletion(
        self: &Arc<Self>,
        world: &World,
        deployment: &DeploymentRecord,
        instances: Vec<InstanceRecord>,
    ) -> ServiceResult<()> {
        let mut gone = Vec::new();
        for instance in &instances {
            let node = instance.node_id.as_deref().unwrap_or_default();
            match world.container_of(instance) {
                Some(container) if world.node_usable(node) => self.dispatch_remove(instance, node, container.id.clone()),
                Some(_) if !world.node_down(node) => {}
                _ => gone.push(instance.id.clone()),
            }
        }
        if !gone.is_empty() {
            self.store.delete_instances(&gone).await?;
        }
        if gone.len() == instances.len() {
            self.store.delete_deployment(&deployment.id).await?;
            self.emit("deployment.deleted", "system", &deployment.id, format!("{} deleted", deployment.spec.name)).await;
        }
        Ok(())
    }

    /// Containers of deployments whose instance no longer exists (a node that comes back
    /// after its instances were replaced): removed, one copy kept.
    fn remove_orphans(self: &Arc<Self>, world: &World) {
        let known: HashSet<&str> = world.instances.iter().map(|i| i.id.as_str()).collect();
        for (node_id, container) in &world.observed {
            let labels = &container.info.labels;
            let Some(instance) = labels.get(LABEL_INSTANCE) else { continue };
            let direct = labels.get(LABEL_DEPLOYMENT).is_none_or(|d| d == "direct");
            if direct || known.contains(instance.as_str()) || !world.node_usable(node_id) {
                continue;
            }
            let this = self.clone();
            let (node_id, runtime, id) = (node_id.clone(), container.runtime, container.info.id.clone());
            let Some(in_flight) = self.in_flight.begin(&format!("orphan:{instance}")) else { continue };
            tokio::spawn(async move {
                let _in_flight = in_flight;
                tracing::info!(node_id = %node_id, container = %id, "removing a surplus copy");
                if let Err(err) = this.send_command(&node_id, runtime, CommandOp::Remove { id: id.clone(), force: true }).await {
                    tracing::warn!(node_id = %node_id, container = %id, error = %err, "could not remove a surplus copy");
                }
                this.nodes.forget_container(&node_id, &id);
            });
        }
    }

    fn dispatch_create(self: &Arc<Self>, deployment: &DeploymentRecord, instance: &InstanceRecord) {
        let (Some(node_id), Some(runtime)) = (instance.node_id.clone(), instance.runtime) else { return };
        let Some(in_flight) = self.in_flight.begin(&instance.id) else { return };
        let spec = instance_container(deployment, instance);
        let this = self.clone();
        let (instance_id, deployment_id) = (instance.id.clone(), instance.deployment_id.clone());
        tokio::spawn(async move {
            let outcome = this.send_command(&node_id, runtime, CommandOp::Create(spec)).await;
            this.finish(&deployment_id, &instance_id, &node_id, runtime, outcome, in_flight).await;
        });
    }

    fn dispatch_lifecycle(self: &Arc<Self>, instance: &InstanceRecord, node_id: &str, op: CommandOp) {
        let Some(runtime) = instance.runtime else { return };
        let Some(in_flight) = self.in_flight.begin(&instance.id) else { return };
        let this = self.clone();
        let (instance_id, node_id, deployment_id) = (instance.id.clone(), node_id.to_owned(), instance.deployment_id.clone());
        tokio::spawn(async move {
            let outcome = this.send_command(&node_id, runtime, op).await;
            this.finish(&deployment_id, &instance_id, &node_id, runtime, outcome, in_flight).await;
        });
    }

    /// Removes an instance's container on its node, then the instance record.
    pub(super) fn dispatch_remove(self: &Arc<Self>, instance: &InstanceRecord, node_id: &str, container_id: String) {
        let Some(runtime) = instance.runtime else { return };
        let Some(in_flight) = self.in_flight.begin(&instance.id) else { return };
        let this = self.clone();
        let (instance_id, node_id) = (instance.id.clone(), node_id.to_owned());
        tokio::spawn(async move {
            let result = this.send_command(&node_id, runtime, CommandOp::Remove { id: container_id.clone(), force: true }).await;
            match result {
                Ok(_) | Err(ServiceError::NotFound(_)) => {
                    this.nodes.forget_container(&node_id, &container_id);
                    if let Err(err) = this.store.delete_instances(std::slice::from_ref(&instance_id)).await {
                        tracing::error!(instance = %instance_id, error = %err, "could not delete a removed instance");
                    }
                }
                Err(err) => tracing::warn!(instance = %instance_id, error = %err, "remove failed; will retry"),
            }
            drop(in_flight);
            this.nudge_reconciler();
        });
    }

    /// Records the outcome of a create/start/restart on the instance, then ends its turn.
    async fn finish(
        &self,
        deployment_id: &str,
        instance_id: &str,
        node_id: &str,
        runtime: diplo_api::runtime::Runtime,
        outcome: ServiceResult<CommandOutput>,
        in_flight: InFlightGuard,
    ) {
        let update = async {
            let Some(mut instance) = self.store.list_instances(Some(deployment_id)).await?.into_iter().find(|i| i.id == instance_id) else {
                return Ok::<(), ServiceError>(());
            };
            match outcome {
                Ok(output) => {
                    if let Some(container) = output.container {
                        instance.container_id = Some(container.id.clone());
                        self.nodes.upsert_container(node_id, ObservedContainer { runtime, info: container });
                    }
                    instance.message = String::new();
                }
                // Created by an earlier attempt whose answer was lost: observation adopts it.
                Err(ServiceError::AlreadyExists(_)) => {}
                Err(err) => {
                    tracing::warn!(instance = %instance_id, node_id, error = %err, "instance command failed");
                    instance.status = InstanceStatus::Failed;
                    instance.message = err.to_string();
                }
            }
            instance.updated_at = Utc::now();
            self.store.update_instances(&[instance]).await?;
            Ok(())
        };
        if let Err(err) = update.await {
            tracing::error!(instance = %instance_id, error = %err, "could not record a command outcome");
        }
        drop(in_flight);
        self.nudge_reconciler();
    }
}

/// Accounts a new placement on its candidate, so later deployments in the same pass see it.
fn account(candidates: &mut [NodeCandidate], node_id: &str, deployment_id: &str, spec: &DeploymentSpec) {
    if let Some(candidate) = candidates.iter_mut().find(|c| c.id == node_id) {
        let count = candidate.instances.entry(deployment_id.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        add_usage(candidate, spec);
    }
}

/// Adds what one instance of `spec` uses to `candidate`, saturating: sizes come from
/// operators and capacities from nodes, and neither may overflow the sums.
fn add_usage(candidate: &mut NodeCandidate, spec: &DeploymentSpec) {
    candidate.used_cpu_millis = candidate.used_cpu_millis.saturating_add(u64::from(spec.container.cpu_millis.unwrap_or(0)));
    candidate.used_memory_bytes = candidate.used_memory_bytes.saturating_add(spec.container.memory_bytes.unwrap_or(0));
    candidate.used_ports.extend(spec.container.ports.iter().map(|p| (p.host_port, p.protocol)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(cpu_millis: Option<u32>, memory_bytes: Option<u64>) -> DeploymentSpec {
        DeploymentSpec {
            name: "web".into(),
            replicas: 1,
            runtime: None,
            constraints: Default::default(),
            strategy: Default::default(),
            max_parallel: 1,
            container: diplo_api::container::ContainerSpec { cpu_millis, memory_bytes, ..Default::default() },
        }
    }

    fn candidate(cpus: u32, memory_bytes: u64) -> NodeCandidate {
        NodeCandidate {
            id: "n".into(),
            name: "n".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            raspberry_pi: false,
            ready: true,
            cordoned: false,
            labels: Default::default(),
            reported_labels: Default::default(),
            runtimes: Vec::new(),
            cpu_millis: u64::from(cpus) * 1000,
            memory_bytes,
            used_cpu_millis: 0,
            used_memory_bytes: 0,
            used_ports: Default::default(),
            images: Default::default(),
            instances: Default::default(),
        }
    }

    proptest! {
        /// Usage adds up without overflowing, whatever nodes report and specs ask for
        /// (u64::MAX included): it saturates, and placement still runs.
        #[test]
        fn usage_saturates_instead_of_overflowing(
            cpus in prop_oneof![Just(u32::MAX), any::<u32>()],
            memory in prop_oneof![Just(u64::MAX), any::<u64>()],
            requests in proptest::collection::vec((prop_oneof![Just(u32::MAX), any::<u32>()], prop_oneof![Just(u64::MAX), any::<u64>()]), 1..20),
        ) {
            let mut node = candidate(cpus, memory);
            let (mut cpu_sum, mut memory_sum) = (0u128, 0u128);
            for (cpu, mem) in &requests {
                add_usage(&mut node, &spec(Some(*cpu), Some(*mem)));
                cpu_sum += u128::from(*cpu);
                memory_sum += u128::from(*mem);
            }
            prop_assert_eq!(u128::from(node.used_cpu_millis), cpu_sum.min(u128::from(u64::MAX)));
            prop_assert_eq!(u128::from(node.used_memory_bytes), memory_sum.min(u128::from(u64::MAX)));
            let request = request_for("d", &spec(Some(u32::MAX), Some(u64::MAX)), 3, None);
            let _ = crate::scheduler::place(&[node], &request);
        }
    }

    #[test]
    fn a_marker_lasts_as_long_as_its_guard() {
        let in_flight = InFlight::default();
        let guard = in_flight.begin("i1").expect("free");
        assert!(in_flight.begin("i1").is_none(), "one command at a time");
        assert!(in_flight.contains("i1"));
        let other = in_flight.begin("i2").expect("another key is free");
        drop(guard);
        assert!(!in_flight.contains("i1"));
        assert!(in_flight.begin("i1").is_some(), "free again");
        assert!(in_flight.contains("i2"));
        drop(other);
        assert!(!in_flight.contains("i2"));
    }

    #[tokio::test]
    async fn a_cancelled_command_releases_its_marker() {
        let in_flight = InFlight::default();
        // A waiter whose future is dropped (a client that disconnected mid-call).
        let guard = in_flight.begin("i1").expect("free");
        let waiting = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        };
        assert!(tokio::time::timeout(Duration::from_millis(20), waiting).await.is_err());
        assert!(!in_flight.contains("i1"), "released when the future was dropped");

        // A task that is aborted.
        let guard = in_flight.begin("i2").expect("free");
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert!(!in_flight.contains("i2"), "released when the task was aborted");

        // A task that panics.
        let guard = in_flight.begin("i3").expect("free");
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("command handler failed");
        });
        assert!(task.await.expect_err("panicked").is_panic());
        assert!(!in_flight.contains("i3"), "released on a panic");
    }
}
