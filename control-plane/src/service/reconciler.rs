//! The reconciler: each pass takes a snapshot of desired state (deployments and their
//! instances) and observed state (containers reported by agents), asks the pure planner
//! (`crate::planner`) what to do for each deployment, and applies the plan: instance
//! records first, then events, then commands through a [`CommandSink`]. Every instance
//! record is written before its container is asked for, and every container carries its
//! instance id, so that after a crash of either side the next pass converges without
//! duplicates.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use diplo_api::command::{CommandOp, CommandOutput};
use diplo_api::runtime::Runtime;
use tracing::Instrument;

use super::ControlPlane;
use super::images::PlatformLookup;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceRecord, InstanceStatus, NewEvent, ObservedContainer};
use crate::planner::{self, CommandKey, InstanceOp, NodeState, Plan, PlannedCommand, Snapshot, Target};
use crate::scheduler;

/// How often the reconciler runs without being nudged.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(2);

/// Where the reconciler's commands go: the nodes' sessions in production, a recording
/// fake in tests.
#[async_trait]
pub trait CommandSink: Send + Sync {
    /// Sends `op` to `node_id`'s `runtime` and waits for its outcome.
    async fn send(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<CommandOutput>;
}

#[async_trait]
impl CommandSink for ControlPlane {
    async fn send(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<CommandOutput> {
        self.send_command(node_id, runtime, op).await
    }
}

impl From<InstanceOp> for CommandOp {
    fn from(op: InstanceOp) -> Self {
        match op {
            InstanceOp::Create(spec) => CommandOp::Create(*spec),
            InstanceOp::Start(id) => CommandOp::Start(id),
            InstanceOp::Restart(id) => CommandOp::Restart(id),
            InstanceOp::Remove(id) => CommandOp::Remove { id, force: true },
        }
    }
}

/// Commands sent and not answered yet, by [`CommandKey`], so a pass never sends twice. A marker lives as long as the
/// [`InFlightGuard`] that [`InFlight::begin`] returns, so it is released on every exit
/// path: answered, failed, or the waiting future dropped (a client that disconnects, a
/// task that is cancelled).
#[derive(Default)]
pub struct InFlight(Arc<Mutex<HashSet<CommandKey>>>);

/// The marker of one command under way; dropping it ends the command's turn.
#[must_use = "the in-flight marker is released when this is dropped"]
pub struct InFlightGuard {
    set: Arc<Mutex<HashSet<CommandKey>>>,
    key: CommandKey,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.key);
    }
}

impl InFlight {
    /// Marks `key` as having a command under way; `None` when it already has one.
    pub(super) fn begin(&self, key: &CommandKey) -> Option<InFlightGuard> {
        let inserted = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.clone());
        inserted.then(|| InFlightGuard { set: Arc::clone(&self.0), key: key.clone() })
    }

    #[cfg(test)]
    fn contains(&self, instance: &str) -> bool {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&CommandKey::Instance(instance.to_owned()))
    }

    /// The keys under way now.
    fn keys(&self) -> HashSet<CommandKey> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// How many replicas of a spec could be placed now, and why the rest could not.
#[derive(Debug, Clone)]
pub struct Fit {
    /// Replicas that found a node.
    pub placed: u32,
    /// Runtime of the first placement.
    pub runtime: Option<Runtime>,
    /// One reason per rejected node.
    pub reasons: Vec<String>,
}

/// Desired and observed state as one pass reads it.
struct World {
    snapshot: Snapshot,
    deployments: Vec<DeploymentRecord>,
    /// Instances by deployment id.
    instances: HashMap<String, Vec<InstanceRecord>>,
}

impl ControlPlane {
    /// Reads observed state and the instances of `deployments`; `images`: the platforms of
    /// the deployments' images (empty: not looked up).
    async fn world(&self, deployments: Vec<DeploymentRecord>, images: HashMap<String, PlatformLookup>) -> ServiceResult<World> {
        let mut nodes = self.store.list_nodes().await?;
        for node in &mut nodes {
            self.apply_live_status(node);
        }
        let states: HashMap<String, NodeState> = nodes
            .iter()
            .map(|n| (n.id.clone(), NodeState { status: n.status, connected: self.nodes.live_status(&n.id).is_some_and(|l| l.connected) }))
            .collect();
        let observed = self.nodes.containers();
        let instances = self.store.list_instances(None).await?;
        let specs: HashMap<String, DeploymentSpec> = deployments.iter().map(|d| (d.id.clone(), d.spec.clone())).collect();
        let candidates = planner::candidates(nodes.iter().map(|n| (n, states[&n.id])), &instances, &specs, &observed);
        let mut by_deployment: HashMap<String, Vec<InstanceRecord>> = HashMap::new();
        for instance in instances {
            by_deployment.entry(instance.deployment_id.clone()).or_default().push(instance);
        }
        Ok(World {
            snapshot: Snapshot::new(states, observed, self.in_flight.keys(), candidates, images),
            deployments,
            instances: by_deployment,
        })
    }

    /// The scheduler's view of the nodes now (usage of every live instance included).
    pub(super) async fn placement_candidates(&self) -> ServiceResult<Vec<crate::scheduler::NodeCandidate>> {
        let deployments = self.store.list_deployments().await?;
        Ok(self.world(deployments, HashMap::new()).await?.snapshot.candidates().to_vec())
    }

    /// How many replicas of `spec` fit on the cluster now, on nodes whose os/arch is one
    /// of `platforms` (the image's; `None`: not checked).
    pub(crate) async fn placement_preview(&self, spec: &DeploymentSpec, platforms: Option<Vec<(String, String)>>) -> ServiceResult<Fit> {
        let candidates = self.placement_candidates().await?;
        let request = planner::request_for("preview", spec, spec.replicas.max(1), platforms);
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
    /// [`RECONCILE_PERIOD`]. While the database is away a pass changes nothing (records
    /// are written before any command is sent, and those writes fail): that is said once
    /// when it starts and once when passes succeed again, not on every pass.
    pub async fn run_reconciler(self: Arc<Self>) {
        let mut outage = super::DatabaseOutage::new("reconcile pass skipped", "reconciling again", "reconcile pass failed");
        loop {
            outage.observe(self.reconcile_once().await);
            let _ = tokio::time::timeout(RECONCILE_PERIOD, self.reconcile.notified()).await;
        }
    }

    /// One pass over every deployment, commands going down the nodes' sessions.
    pub async fn reconcile_once(self: &Arc<Self>) -> ServiceResult<()> {
        let sink: Arc<dyn CommandSink> = self.clone();
        self.reconcile_with(&sink).await
    }

    /// One pass over every deployment, commands going to `sink`.
    pub(crate) async fn reconcile_with(self: &Arc<Self>, sink: &Arc<dyn CommandSink>) -> ServiceResult<()> {
        let started = tokio::time::Instant::now();
        let result = self.reconcile_pass(sink).await;
        self.metrics.reconcile_pass(started.elapsed());
        result
    }

    async fn reconcile_pass(self: &Arc<Self>, sink: &Arc<dyn CommandSink>) -> ServiceResult<()> {
        // Stack services whose dependencies came up since the last pass get their deployment.
        self.advance_stacks().await?;
        let deployments = self.store.list_deployments().await?;
        let images = self.image_platforms_of(&deployments).await;
        let World { mut snapshot, deployments, instances } = self.world(deployments, images).await?;
        let now = Utc::now();
        let mut new_id = || uuid::Uuid::new_v4().to_string();
        for deployment in &deployments {
            let mine = instances.get(&deployment.id).map_or(&[][..], Vec::as_slice);
            let plan = planner::plan(&snapshot, deployment, mine, now, &mut new_id);
            snapshot.account(&plan, &deployment.spec);
            self.apply(deployment, plan, sink).await?;
        }
        let known: HashSet<&str> = instances.values().flatten().map(|i| i.id.as_str()).collect();
        for command in planner::plan_orphans(&snapshot, &known) {
            self.send_planned(sink, command);
        }
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

    /// Carries out one deployment's plan: instance records first (inserted, updated,
    /// deleted), then the deployment's record (its deletion, or its status with a
    /// compare-and-set, so a scale, update or deletion saved meanwhile wins), then events,
    /// then commands.
    pub(crate) async fn apply(
        self: &Arc<Self>,
        deployment: &DeploymentRecord,
        plan: Plan,
        sink: &Arc<dyn CommandSink>,
    ) -> ServiceResult<()> {
        if !plan.insert.is_empty() {
            self.store.insert_instances(&plan.insert).await?;
        }
        if !plan.update.is_empty() {
            self.store.update_instances(&plan.update).await?;
        }
        if !plan.delete.is_empty() {
            self.store.delete_instances(&plan.delete).await?;
        }
        if plan.delete_deployment {
            self.store.delete_deployment(&deployment.id).await?;
            self.rollout_status(&deployment.id, None);
        }
        let mut status_event = None;
        if let Some((status, message)) = &plan.status {
            let written = self.store.set_deployment_status(deployment, *status, message, Utc::now()).await?;
            if written {
                self.rollout_status(&deployment.id, Some(*status));
            }
            if written && *status != deployment.status {
                status_event =
                    Some((format!("deployment.{}", status.as_str()), format!("{} is {}", deployment.spec.name, status.as_str())));
            }
        }
        let now = Utc::now();
        let event = |kind: String, subject: String, message: String| NewEvent { at: now, kind, actor: "system".into(), subject, message };
        let mut events: Vec<NewEvent> = plan.events.into_iter().map(|e| event(e.kind, e.subject, e.message)).collect();
        if let Some((kind, message)) = status_event {
            events.push(event(kind, deployment.id.clone(), message));
        }
        self.emit_all(events).await;
        // The commands continue the trace of the request that started the rollout.
        let span = if plan.commands.is_empty() { tracing::Span::none() } else { self.rollout_span(&deployment.id, &deployment.spec.name) };
        let _entered = span.enter();
        for command in plan.commands {
            self.send_planned(sink, command);
        }
        Ok(())
    }

    /// Sends one planned command in the background unless its key already has one under
    /// way, then records its outcome: a create/start/restart on the instance, a removal by
    /// deleting the instance record (or, for a surplus copy, forgetting the container).
    fn send_planned(self: &Arc<Self>, sink: &Arc<dyn CommandSink>, command: PlannedCommand) {
        let Some(in_flight) = self.in_flight.begin(&command.key()) else { return };
        let (this, sink) = (self.clone(), sink.clone());
        tokio::spawn(
            async move {
                let PlannedCommand { target, node_id, runtime, op } = command;
                let removed = match &op {
                    InstanceOp::Remove(id) => Some(id.clone()),
                    _ => None,
                };
                let outcome = sink.send(&node_id, runtime, op.into()).await;
                match (target, removed) {
                    (Target::Instance { deployment_id, instance_id }, None) => {
                        this.finish(&deployment_id, &instance_id, &node_id, runtime, outcome).await;
                    }
                    (Target::Instance { instance_id, .. }, Some(container_id)) => match outcome {
                        Ok(_) | Err(ServiceError::NotFound(_)) => {
                            this.nodes.forget_container(&node_id, &container_id);
                            if let Err(err) = this.store.delete_instances(std::slice::from_ref(&instance_id)).await {
                                tracing::error!(instance = %instance_id, error = %err, "could not delete a removed instance");
                            }
                        }
                        Err(err) => tracing::warn!(instance = %instance_id, error = %err, "remove failed; will retry"),
                    },
                    (Target::Orphan { .. }, container) => {
                        let container = container.unwrap_or_default();
                        match outcome {
                            Ok(_) | Err(ServiceError::NotFound(_)) => {
                                tracing::info!(node_id = %node_id, container = %container, "surplus copy removed");
                                this.nodes.forget_container(&node_id, &container);
                            }
                            Err(err) => {
                                tracing::warn!(node_id = %node_id, container = %container, error = %err, "could not remove a surplus copy")
                            }
                        }
                    }
                }
                drop(in_flight);
                this.nudge_reconciler();
            }
            .in_current_span(),
        );
    }

    /// Removes an instance's container on its node, then the instance record.
    pub(super) fn dispatch_remove(self: &Arc<Self>, instance: &InstanceRecord, node_id: &str, container_id: String) {
        let Some(runtime) = instance.runtime else { return };
        let target = Target::Instance { deployment_id: instance.deployment_id.clone(), instance_id: instance.id.clone() };
        let sink: Arc<dyn CommandSink> = self.clone();
        self.send_planned(&sink, PlannedCommand { target, node_id: node_id.to_owned(), runtime, op: InstanceOp::Remove(container_id) });
    }

    /// Records the outcome of a create/start/restart on the instance.
    async fn finish(&self, deployment_id: &str, instance_id: &str, node_id: &str, runtime: Runtime, outcome: ServiceResult<CommandOutput>) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::{PlannedEvent, Target};
    use crate::store::Store;
    use diplo_api::container::LABEL_INSTANCE;

    /// A sink that records each command with whether its instance record was already
    /// stored when the command left, and answers with a container.
    struct Recording {
        store: Arc<dyn Store>,
        seen: Mutex<Vec<(String, bool)>>,
    }

    #[async_trait]
    impl CommandSink for Recording {
        async fn send(&self, node_id: &str, _runtime: Runtime, op: CommandOp) -> ServiceResult<CommandOutput> {
            let CommandOp::Create(spec) = op else { return Err(ServiceError::Unsupported("only creates here".into())) };
            let instance = spec.labels.get(LABEL_INSTANCE).cloned().unwrap_or_default();
            let stored = self.store.list_instances(None).await?.iter().any(|i| i.id == instance);
            self.seen.lock().expect("lock").push((format!("{node_id}/{instance}"), stored));
            let info = diplo_api::container::ContainerInfo {
                labels: spec.labels.clone(),
                ..diplo_api::container::ContainerInfo::new(
                    format!("container-of-{instance}"),
                    "",
                    "",
                    diplo_api::container::ContainerStatus::Running,
                )
            };
            Ok(CommandOutput { container: Some(info), ..Default::default() })
        }
    }

    #[tokio::test]
    async fn apply_writes_records_then_events_then_sends_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let control_plane = super::super::tests::control_plane(dir.path()).await;
        let now = Utc::now();
        let deployment = DeploymentRecord {
            id: "d1".into(),
            revision: 1,
            spec: DeploymentSpec { name: "web".into(), replicas: 1, max_parallel: 1, ..Default::default() },
            status: DeploymentStatus::Deploying,
            message: String::new(),
            idempotency_key: None,
            created_at: now,
            updated_at: now,
        };
        control_plane.store.create_deployment(&deployment).await.expect("deployment");
        let instance = InstanceRecord::placed("i1".into(), "d1", 1, "n1", Runtime::Docker, now);
        let plan = Plan {
            insert: vec![instance.clone()],
            commands: vec![PlannedCommand {
                target: Target::Instance { deployment_id: "d1".into(), instance_id: "i1".into() },
                node_id: "n1".into(),
                runtime: Runtime::Docker,
                op: InstanceOp::Create(Box::new(crate::planner::instance_container(&deployment, &instance))),
            }],
            status: Some((DeploymentStatus::Degraded, "cannot place every replica: n2: cordoned".into())),
            events: vec![PlannedEvent { kind: "instance.placed".into(), subject: "i1".into(), message: "web placed on node n1".into() }],
            ..Default::default()
        };
        let recording = Arc::new(Recording { store: control_plane.store.clone(), seen: Mutex::new(Vec::new()) });
        let sink: Arc<dyn CommandSink> = recording.clone();
        control_plane.apply(&deployment, plan, &sink).await.expect("apply");

        // The outcome is recorded on the instance once the command answers.
        let mut recorded = None;
        for _ in 0..100 {
            let stored = control_plane.store.list_instances(Some("d1")).await.expect("list");
            if let Some(i) = stored.into_iter().find(|i| i.container_id.is_some()) {
                recorded = Some(i);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*recording.seen.lock().expect("lock"), [("n1/i1".to_owned(), true)], "the record was durable before its create left");
        assert_eq!(recorded.expect("outcome recorded").container_id.as_deref(), Some("container-of-i1"));
        assert!(!control_plane.in_flight.contains("i1"), "its turn ended");
        let stored = control_plane.store.get_deployment("d1").await.expect("get").expect("exists");
        assert_eq!(stored.status, DeploymentStatus::Degraded);
        let kinds: Vec<String> = control_plane.store.list_events(0, 100).await.expect("events").into_iter().map(|e| e.event.kind).collect();
        assert_eq!(kinds, ["instance.placed", "deployment.degraded"]);

        // A status computed from a stale read (the deployment changed meanwhile) is not written.
        let stale = Plan { status: Some((DeploymentStatus::Running, String::new())), ..Default::default() };
        control_plane.apply(&deployment, stale, &sink).await.expect("apply");
        let stored = control_plane.store.get_deployment("d1").await.expect("get").expect("exists");
        assert_eq!(stored.status, DeploymentStatus::Degraded, "the newer status wins");
    }

    #[test]
    fn a_marker_lasts_as_long_as_its_guard() {
        let in_flight = InFlight::default();
        let guard = in_flight.begin(&CommandKey::Instance("i1".into())).expect("free");
        assert!(in_flight.begin(&CommandKey::Instance("i1".into())).is_none(), "one command at a time");
        assert!(in_flight.contains("i1"));
        let other = in_flight.begin(&CommandKey::Instance("i2".into())).expect("another key is free");
        drop(guard);
        assert!(!in_flight.contains("i1"));
        assert!(in_flight.begin(&CommandKey::Instance("i1".into())).is_some(), "free again");
        assert!(in_flight.contains("i2"));
        drop(other);
        assert!(!in_flight.contains("i2"));
    }

    #[tokio::test]
    async fn a_cancelled_command_releases_its_marker() {
        let in_flight = InFlight::default();
        // A waiter whose future is dropped (a client that disconnected mid-call).
        let guard = in_flight.begin(&CommandKey::Instance("i1".into())).expect("free");
        let waiting = async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        };
        assert!(tokio::time::timeout(Duration::from_millis(20), waiting).await.is_err());
        assert!(!in_flight.contains("i1"), "released when the future was dropped");

        // A task that is aborted.
        let guard = in_flight.begin(&CommandKey::Instance("i2".into())).expect("free");
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert!(!in_flight.contains("i2"), "released when the task was aborted");

        // A task that panics.
        let guard = in_flight.begin(&CommandKey::Instance("i3".into())).expect("free");
        let task = tokio::spawn(async move {
            let _guard = guard;
            panic!("command handler failed");
        });
        assert!(task.await.expect_err("panicked").is_panic());
        assert!(!in_flight.contains("i3"), "released on a panic");
    }
}
