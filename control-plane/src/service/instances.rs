//! One instance of a deployment by id (LibGo's `/api/v1/compute/instances/{id}`): its
//! container started, stopped or restarted on its node, its resource usage sampled there,
//! or the instance removed.
//!
//! These act on the instance's container; desired state stays what the deployment says:
//! * **stop** stops the container now; what follows is the deployment's restart policy,
//!   exactly as if the container had exited by itself: `always`, `unless-stopped` and
//!   `on-failure` (a stopped process exits non-zero) start it again after a few seconds,
//!   `no` leaves it stopped. To take replicas away, scale the deployment down.
//! * **delete** removes the instance and its container; the deployment keeps its replica
//!   count, so the reconciler replaces it with a new instance (a new id, on whichever node
//!   the scheduler picks): Nomad's `alloc stop`. Only a deployment scaled down meanwhile
//!   does not get the replacement.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diplo_api::command::CommandOp;
use diplo_api::container::{ContainerInfo, ContainerStats, LABEL_INSTANCE};
use diplo_api::runtime::Runtime;

use super::ControlPlane;
use super::containers::DEFAULT_STOP_GRACE;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{InstanceDesired, InstanceRecord, InstanceStatus, ObservedContainer, Role};

/// An instance with its deployment's name and its container as last observed.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// The instance.
    pub instance: InstanceRecord,
    /// Its deployment's name.
    pub deployment: String,
    /// Its container, when its node reports one.
    pub container: Option<ContainerInfo>,
}

/// A resource usage sample of an instance's container.
#[derive(Debug, Clone)]
pub struct InstanceUsage {
    /// The instance.
    pub instance_id: String,
    /// The node that runs it.
    pub node_id: String,
    /// The runtime that runs it.
    pub runtime: Runtime,
    /// The sample.
    pub stats: ContainerStats,
}

/// An instance's container, where it runs.
struct Located {
    view: InstanceView,
    node_id: String,
    container: ObservedContainer,
}

impl ControlPlane {
    /// One instance.
    pub async fn get_instance(&self, caller: &Caller, id: &str) -> ServiceResult<InstanceView> {
        caller.require_operator(Role::Viewer)?;
        self.find_instance(id).await
    }

    /// Starts an instance's stopped container.
    pub async fn start_instance(&self, caller: &Caller, id: &str) -> ServiceResult<InstanceView> {
        self.instance_lifecycle(caller, id, "started", CommandOp::Start).await
    }

    /// Stops an instance's container (SIGTERM, SIGKILL after `grace`). The deployment's
    /// restart policy then applies, as after any exit (see the module docs), once the
    /// reconciler's back-off for failed instances (a few seconds) has passed.
    pub async fn stop_instance(&self, caller: &Caller, id: &str, grace: Option<Duration>) -> ServiceResult<InstanceView> {
        let grace = grace.unwrap_or(DEFAULT_STOP_GRACE);
        self.instance_lifecycle(caller, id, "stopped", move |id| CommandOp::Stop { id, grace }).await
    }

    /// Restarts an instance's container in place (same instance, same node).
    pub async fn restart_instance(&self, caller: &Caller, id: &str) -> ServiceResult<InstanceView> {
        self.instance_lifecycle(caller, id, "restarted", CommandOp::Restart).await
    }

    /// Removes an instance: recorded first (desired `remove`), then its container is
    /// removed on its node. The deployment's replica count is unchanged, so the reconciler
    /// places a new instance in its stead.
    pub async fn delete_instance(self: &Arc<Self>, caller: &Caller, id: &str) -> ServiceResult<InstanceView> {
        caller.require_operator(Role::Deployer)?;
        let mut view = self.find_instance(id).await?;
        if view.instance.desired != InstanceDesired::Remove {
            view.instance.desired = InstanceDesired::Remove;
            view.instance.message = format!("removed by {}; the deployment replaces it", caller.actor());
            view.instance.updated_at = Utc::now();
            self.store.update_instances(std::slice::from_ref(&view.instance)).await?;
            let message = format!("instance {} of {} removed; the deployment replaces it", view.instance.id, view.deployment);
            self.emit("instance.deleted", &caller.actor(), &view.instance.id, message).await;
        }
        if let Some(node_id) = view.instance.node_id.as_deref()
            && self.nodes.live_status(node_id).is_some_and(|live| live.connected)
            && let Some((_, container)) = self.observed_container(node_id, &view.instance.id)
        {
            self.dispatch_remove(&view.instance, node_id, container.info.id);
        }
        self.nudge_reconciler();
        Ok(view)
    }

    /// A resource usage sample of an instance's container, taken on its node.
    pub async fn instance_usage(&self, caller: &Caller, id: &str) -> ServiceResult<InstanceUsage> {
        caller.require_operator(Role::Viewer)?;
        let located = self.locate_instance(id).await?;
        let output =
            self.send_command(&located.node_id, located.container.runtime, CommandOp::Stats(located.container.info.id.clone())).await?;
        let stats = output.stats.ok_or_else(|| ServiceError::Internal("the agent sent no resource sample".into()))?;
        Ok(InstanceUsage { instance_id: located.view.instance.id, node_id: located.node_id, runtime: located.container.runtime, stats })
    }

    /// Runs `op` on an instance's container, as the reconciler's only command for that
    /// instance meanwhile. A stop is recorded as an exit (status `failed`, now), so that
    /// the reconciler's back-off counts from it.
    async fn instance_lifecycle(
        &self,
        caller: &Caller,
        id: &str,
        verb: &str,
        op: impl FnOnce(String) -> CommandOp,
    ) -> ServiceResult<InstanceView> {
        caller.require_operator(Role::Deployer)?;
        let Located { mut view, node_id, container } = self.locate_instance(id).await?;
        // Held until this call ends, however it ends (a caller that goes away included).
        let Some(in_flight) = self.in_flight.begin(&crate::planner::CommandKey::Instance(view.instance.id.clone())) else {
            return Err(ServiceError::FailedPrecondition(format!("instance {id} has a command under way; try again")));
        };
        let result = async {
            let runtime = container.runtime;
            let output = self.send_command(&node_id, runtime, op(container.info.id.clone())).await?;
            let info = output.container.unwrap_or(container.info);
            self.nodes.upsert_container(&node_id, ObservedContainer { runtime, info: info.clone() });
            if verb == "stopped" {
                view.instance.status = InstanceStatus::Failed;
                view.instance.message = format!("stopped by {}; the deployment's restart policy decides what follows", caller.actor());
                view.instance.updated_at = Utc::now();
                self.store.update_instances(std::slice::from_ref(&view.instance)).await?;
            }
            view.container = Some(info);
            Ok::<_, ServiceError>(())
        }
        .await;
        drop(in_flight);
        result?;
        let name = view.container.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let message = format!("instance {} of {} {verb} (container {name})", view.instance.id, view.deployment);
        self.emit(&format!("instance.{verb}"), &caller.actor(), &view.instance.id, message).await;
        self.nudge_reconciler();
        Ok(view)
    }

    /// An instance by id, with its deployment's name and observed container.
    async fn find_instance(&self, id: &str) -> ServiceResult<InstanceView> {
        if id.trim().is_empty() {
            return Err(ServiceError::invalid("id", "an instance id is required"));
        }
        let not_found = || ServiceError::NotFound(format!("instance {id:?} not found"));
        let instance = self.store.list_instances(None).await?.into_iter().find(|i| i.id == id).ok_or_else(not_found)?;
        let deployment = self.store.get_deployment(&instance.deployment_id).await?.map(|d| d.spec.name).unwrap_or_default();
        let container = instance.node_id.as_deref().and_then(|node| self.observed_container(node, &instance.id)).map(|(_, c)| c.info);
        Ok(InstanceView { instance, deployment, container })
    }

    /// An instance whose container can be acted on now: not being removed, on a
    /// connected node that reports its container.
    async fn locate_instance(&self, id: &str) -> ServiceResult<Located> {
        let view = self.find_instance(id).await?;
        let instance = &view.instance;
        if instance.desired == InstanceDesired::Remove {
            return Err(ServiceError::FailedPrecondition(format!("instance {id} is being removed")));
        }
        let Some(node_id) = instance.node_id.clone() else {
            return Err(ServiceError::FailedPrecondition(format!("instance {id} is not placed on a node yet")));
        };
        if !self.nodes.live_status(&node_id).is_some_and(|live| live.connected) {
            return Err(ServiceError::Unavailable(format!("node {node_id} of instance {id} is not connected")));
        }
        let Some((_, container)) = self.observed_container(&node_id, id) else {
            return Err(ServiceError::FailedPrecondition(format!(
                "instance {id} has no container on node {node_id} yet (it is {})",
                format!("{:?}", instance.status).to_lowercase()
            )));
        };
        Ok(Located { view, node_id, container })
    }

    /// The container labelled with instance `instance_id`, as node `node_id` reports it.
    fn observed_container(&self, node_id: &str, instance_id: &str) -> Option<(String, ObservedContainer)> {
        self.nodes
            .containers()
            .into_iter()
            .find(|(node, c)| node == node_id && c.info.labels.get(LABEL_INSTANCE).is_some_and(|i| i == instance_id))
    }
}
