//! `DeploymentService` and `EventService`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use diplo_api::container::RestartPolicy;
use diplo_api::pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{status_from, timestamp};
use crate::model::{Constraints, DeploymentRecord, DeploymentSpec, InstanceRecord, InstanceStatus, SourceSpec, Strategy};
use crate::service::{
    AnyInstance, ControlPlane, DeployInput, DeploymentView, DirectInstance, InstanceAction, InstanceUpdate, InstanceView, WatchItem,
};

/// The gRPC face of deployments and events.
pub struct DeploymentApi {
    control_plane: Arc<ControlPlane>,
}

impl DeploymentApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        DeploymentApi { control_plane }
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid {field}: {message}"))
}

/// The domain spec of a wire spec; errors name the field.
pub fn spec_from_pb(spec: Option<pb::DeploymentSpec>) -> Result<DeploymentSpec, Status> {
    let spec = spec.ok_or_else(|| invalid("spec", "missing"))?;
    let mut container = spec.container.unwrap_or_default();
    if container.image.is_empty() {
        container.image = spec.image.clone();
    }
    // A repository is built first: the image comes from the build.
    let source = (!spec.repo_url.is_empty()).then(|| SourceSpec {
        repo_url: spec.repo_url.clone(),
        branch: (!spec.git_branch.is_empty()).then(|| spec.git_branch.clone()),
        language: (!spec.language.is_empty()).then(|| spec.language.clone()),
        ..Default::default()
    });
    if source.is_some() && !container.image.is_empty() {
        return Err(invalid("repo_url", "give either an image or a repo_url, not both"));
    }
    let container = if source.is_some() {
        container.image = BUILD_PENDING.into();
        let mut template = diplo_api::container::ContainerSpec::try_from(container).map_err(|e| invalid(&e.field, &e.message))?;
        template.image.clear();
        template
    } else {
        diplo_api::container::ContainerSpec::try_from(container).map_err(|e| invalid(&e.field, &e.message))?
    };
    let runtime = match pb::RuntimeKind::try_from(spec.runtime) {
        Ok(kind) => kind.runtime(),
        Err(_) => return Err(invalid("runtime", format!("unknown value {}", spec.runtime))),
    };
    let strategy = match spec.strategy.as_str() {
        "" | "binpack" => Strategy::Binpack,
        "spread" => Strategy::Spread,
        other => return Err(invalid("strategy", format!("{other:?}: expected binpack or spread"))),
    };
    let constraints = spec.constraints.map_or_else(Constraints::default, |c| Constraints {
        node: (!c.node.is_empty()).then_some(c.node),
        labels: c.labels.into_iter().collect(),
        os: (!c.os.is_empty()).then_some(c.os),
        arch: (!c.arch.is_empty()).then_some(c.arch),
    });
    Ok(DeploymentSpec {
        name: spec.name,
        replicas: spec.replicas,
        runtime,
        constraints,
        strategy,
        max_parallel: spec.max_parallel.max(1),
        container,
        source,
    })
}

/// Stands in for the image of a deployment built from source while its template is
/// checked (the build makes the real one).
const BUILD_PENDING: &str = "build-pending";

fn spec_to_pb(spec: &DeploymentSpec) -> pb::DeploymentSpec {
    pb::DeploymentSpec {
        name: spec.name.clone(),
        image: spec.container.image.clone(),
        repo_url: spec.source.as_ref().map(|s| s.repo_url.clone()).unwrap_or_default(),
        language: spec.source.as_ref().and_then(|s| s.language.clone()).unwrap_or_default(),
        git_branch: spec.source.as_ref().and_then(|s| s.branch.clone()).unwrap_or_default(),
        commit: spec.source.as_ref().map(|s| s.commit.clone()).unwrap_or_default(),
        build_id: spec.source.as_ref().map(|s| s.build_id.clone()).unwrap_or_default(),
        replicas: spec.replicas,
        runtime: spec.runtime.map_or(pb::RuntimeKind::Unspecified, Into::into) as i32,
        constraints: Some(pb::Constraints {
            node: spec.constraints.node.clone().unwrap_or_default(),
            labels: spec.constraints.labels.clone().into_iter().collect(),
            os: spec.constraints.os.clone().unwrap_or_default(),
            arch: spec.constraints.arch.clone().unwrap_or_default(),
        }),
        container: Some((&spec.container).into()),
        strategy: match spec.strategy {
            Strategy::Binpack => "binpack".into(),
            Strategy::Spread => "spread".into(),
        },
        max_parallel: spec.max_parallel,
    }
}

fn instance_to_pb(instance: &InstanceRecord, deployment: &str) -> pb::Instance {
    let status = match instance.status {
        InstanceStatus::Pending => "pending",
        InstanceStatus::Starting => "starting",
        InstanceStatus::Running => "running",
        InstanceStatus::Failed => "failed",
        InstanceStatus::Lost => "lost",
    };
    pb::Instance {
        id: instance.id.clone(),
        deployment: deployment.to_owned(),
        revision: instance.revision,
        node_id: instance.node_id.clone().unwrap_or_default(),
        runtime: instance.runtime.map_or(pb::RuntimeKind::Unspecified, Into::into) as i32,
        status: status.into(),
        container: instance.container_id.as_ref().map(|id| pb::ContainerState { id: id.clone(), ..Default::default() }),
        direct: false,
        node_name: String::new(),
    }
}

fn deployment_to_pb(deployment: &DeploymentRecord, instances: &[InstanceRecord]) -> pb::Deployment {
    pb::Deployment {
        id: deployment.id.clone(),
        spec: Some(spec_to_pb(&deployment.spec)),
        revision: deployment.revision,
        status: deployment.status.as_str().into(),
        message: deployment.message.clone(),
        created_at: Some(timestamp(deployment.created_at)),
        updated_at: Some(timestamp(deployment.updated_at)),
        instances: instances.iter().map(|i| instance_to_pb(i, &deployment.spec.name)).collect(),
    }
}

fn view_to_pb(view: &DeploymentView) -> pb::Deployment {
    deployment_to_pb(&view.deployment, &view.instances)
}

#[tonic::async_trait]
impl pb::deployment_service_server::DeploymentService for DeploymentApi {
    async fn deploy(&self, request: Request<pb::DeployRequest>) -> Result<Response<pb::Deployment>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let spec = spec_from_pb(req.spec)?;
        let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
        let deployed = self.control_plane.deploy(&caller, DeployInput { spec, idempotency_key: key }).await.map_err(status_from)?;
        Ok(Response::new(deployment_to_pb(&deployed.deployment, &[])))
    }

    async fn get_deployment(&self, request: Request<pb::DeploymentRef>) -> Result<Response<pb::Deployment>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let view = self.control_plane.get_deployment(&caller, &request.into_inner().name).await.map_err(status_from)?;
        Ok(Response::new(view_to_pb(&view)))
    }

    async fn list_deployments(
        &self,
        request: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let views = self.control_plane.list_deployments(&caller).await.map_err(status_from)?;
        Ok(Response::new(pb::ListDeploymentsResponse { deployments: views.iter().map(view_to_pb).collect() }))
    }

    async fn scale(&self, request: Request<pb::ScaleRequest>) -> Result<Response<pb::Deployment>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let deployment = self.control_plane.scale(&caller, &req.name, req.replicas).await.map_err(status_from)?;
        Ok(Response::new(deployment_to_pb(&deployment, &[])))
    }

    async fn update(&self, request: Request<pb::UpdateRequest>) -> Result<Response<pb::Deployment>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let mut spec = spec_from_pb(req.spec)?;
        if req.max_parallel > 0 {
            spec.max_parallel = req.max_parallel;
        }
        let deployment = self.control_plane.update_deployment(&caller, spec).await.map_err(status_from)?;
        Ok(Response::new(deployment_to_pb(&deployment, &[])))
    }

    async fn rollback(&self, request: Request<pb::DeploymentRef>) -> Result<Response<pb::Deployment>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let deployment = self.control_plane.rollback(&caller, &request.into_inner().name).await.map_err(status_from)?;
        Ok(Response::new(deployment_to_pb(&deployment, &[])))
    }

    async fn delete_deployment(&self, request: Request<pb::DeploymentRef>) -> Result<Response<pb::DeleteDeploymentResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        self.control_plane.delete_deployment(&caller, &request.into_inner().name).await.map_err(status_from)?;
        Ok(Response::new(pb::DeleteDeploymentResponse {}))
    }

    async fn list_instances(&self, request: Request<pb::ListInstancesRequest>) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let name = request.into_inner().deployment;
        let cp = &self.control_plane;
        let instances = cp.list_instances(&caller, Some(&name)).await.map_err(status_from)?;
        let deployments: HashMap<String, String> = cp
            .list_deployments(&caller)
            .await
            .map_err(status_from)?
            .into_iter()
            .map(|v| (v.deployment.id, v.deployment.spec.name))
            .collect();
        let nodes: HashMap<String, String> =
            cp.list_nodes(&caller).await.map_err(status_from)?.into_iter().map(|n| (n.id, n.name)).collect();
        let mut listed: Vec<pb::Instance> = instances
            .iter()
            .map(|i| {
                let mut instance = instance_to_pb(i, deployments.get(&i.deployment_id).map_or(name.as_str(), String::as_str));
                instance.node_name = nodes.get(&instance.node_id).cloned().unwrap_or_default();
                instance
            })
            .collect();
        if name.is_empty() {
            listed.extend(cp.direct_instances(&caller).await.map_err(status_from)?.into_iter().map(direct_to_pb));
        }
        Ok(Response::new(pb::ListInstancesResponse { instances: listed }))
    }

    async fn start_instance(&self, request: Request<pb::InstanceRef>) -> Result<Response<pb::Instance>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let instance =
            self.control_plane.act_on_instance(&caller, &request.into_inner().id, InstanceAction::Start).await.map_err(status_from)?;
        Ok(Response::new(any_instance_to_pb(instance)))
    }

    async fn stop_instance(&self, request: Request<pb::StopInstanceRequest>) -> Result<Response<pb::Instance>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let grace = (req.grace_seconds > 0).then(|| std::time::Duration::from_secs(u64::from(req.grace_seconds)));
        let instance = self.control_plane.act_on_instance(&caller, &req.id, InstanceAction::Stop(grace)).await.map_err(status_from)?;
        Ok(Response::new(any_instance_to_pb(instance)))
    }

    async fn restart_instance(&self, request: Request<pb::InstanceRef>) -> Result<Response<pb::Instance>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let instance =
            self.control_plane.act_on_instance(&caller, &request.into_inner().id, InstanceAction::Restart).await.map_err(status_from)?;
        Ok(Response::new(any_instance_to_pb(instance)))
    }

    async fn delete_instance(&self, request: Request<pb::InstanceRef>) -> Result<Response<pb::Instance>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let instance =
            self.control_plane.act_on_instance(&caller, &request.into_inner().id, InstanceAction::Delete).await.map_err(status_from)?;
        Ok(Response::new(any_instance_to_pb(instance)))
    }

    async fn update_instance(&self, request: Request<pb::UpdateInstanceRequest>) -> Result<Response<pb::Deployment>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let restart_policy = (!req.restart_policy.is_empty())
            .then(|| req.restart_policy.parse::<RestartPolicy>().map_err(|e| invalid("restart_policy", e)))
            .transpose()?;
        let update = InstanceUpdate { memory_bytes: req.memory_bytes, cpu_millis: req.cpu_millis, restart_policy };
        let deployment = self.control_plane.update_instance(&caller, &req.id, update).await.map_err(status_from)?;
        Ok(Response::new(deployment_to_pb(&deployment, &[])))
    }
}

/// An instance with its container as last observed.
fn instance_view_to_pb(view: &InstanceView) -> pb::Instance {
    let mut instance = instance_to_pb(&view.instance, &view.deployment);
    if let Some(container) = &view.container {
        let node = view.instance.node_id.as_deref().unwrap_or_default();
        let runtime = view.instance.runtime.unwrap_or(diplo_api::runtime::Runtime::Docker);
        instance.container = Some(diplo_api::wire::container_state(container, node, runtime));
    }
    instance
}

/// An instance of a deployment, or a direct container, as an instance.
fn any_instance_to_pb(instance: AnyInstance) -> pb::Instance {
    match instance {
        AnyInstance::Deployment(view) => instance_view_to_pb(&view),
        AnyInstance::Direct(direct) => direct_to_pb(direct),
    }
}

/// A direct container as an instance.
fn direct_to_pb(direct: DirectInstance) -> pb::Instance {
    let state = diplo_api::wire::container_state(&direct.container.info, &direct.node_id, direct.container.runtime);
    pb::Instance {
        id: direct.container.info.id.clone(),
        deployment: String::new(),
        revision: 0,
        node_id: direct.node_id,
        runtime: pb::RuntimeKind::from(direct.container.runtime) as i32,
        status: state.status.clone(),
        container: Some(state),
        direct: true,
        node_name: direct.node_name,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::event_service_server::EventService for DeploymentApi {
    type WatchStream = EventStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<EventStream>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let after = req.replay.then_some(req.after_sequence);
        let items = self.control_plane.watch_events(&caller, after).await.map_err(status_from)?;
        let kinds = req.kinds;
        let to_pb = move |item: WatchItem| -> Option<Result<pb::Event, Status>> {
            if let WatchItem::Event(record) = &item
                && !kinds.is_empty()
                && !kinds.iter().any(|k| record.event.kind.starts_with(k.as_str()))
            {
                return None;
            }
            Some(Ok(event_to_pb(item)))
        };
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::filter_map(items, to_pb))))
    }
}

/// Kind of the marker a watcher that fell behind receives (whatever kinds it asked for).
pub const LAGGED_KIND: &str = "watch.lagged";

/// An event on the wire; a lag becomes a [`LAGGED_KIND`] marker (sequence 0) whose
/// `missed` attribute says how many events were dropped.
fn event_to_pb(item: WatchItem) -> pb::Event {
    match item {
        WatchItem::Event(record) => pb::Event {
            sequence: record.sequence,
            at: Some(timestamp(record.event.at)),
            kind: record.event.kind,
            actor: record.event.actor,
            subject: record.event.subject,
            message: record.event.message,
            attributes: Default::default(),
        },
        WatchItem::Lagged { missed } => pb::Event {
            sequence: 0,
            at: Some(timestamp(chrono::Utc::now())),
            kind: LAGGED_KIND.to_owned(),
            actor: "system".to_owned(),
            subject: String::new(),
            message: format!("this watcher fell behind and missed {missed} event(s); watch again with replay from the last sequence seen"),
            attributes: [("missed".to_owned(), missed.to_string())].into_iter().collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lag_is_a_marker_event_on_the_wire() {
        let marker = event_to_pb(WatchItem::Lagged { missed: 42 });
        assert_eq!((marker.kind.as_str(), marker.sequence), (LAGGED_KIND, 0));
        assert_eq!(marker.attributes.get("missed").map(String::as_str), Some("42"));
        assert!(marker.message.contains("missed 42"), "{}", marker.message);
    }
}
