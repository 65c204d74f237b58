//! `StackService`: compose files as stacks (thin over [`ControlPlane`]).

use std::sync::Arc;

use diplo_api::pb;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{status_from, timestamp};
use crate::service::{ControlPlane, StackView};

/// The gRPC face of the stacks.
pub struct StackApi {
    control_plane: Arc<ControlPlane>,
}

impl StackApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        StackApi { control_plane }
    }
}

/// A stack on the wire (the compose source only when the view carries it).
pub fn stack_to_pb(view: StackView) -> pb::Stack {
    let services = view
        .services
        .into_iter()
        .map(|service| {
            let spec = view.stack.spec.services.get(&service.name);
            pb::StackServiceStatus {
                status: service.status(),
                revision: service.revision(),
                image: service.image(spec),
                build_id: service.build.as_ref().map(|b| b.id.clone()).unwrap_or_default(),
                replicas: spec.map_or(0, |s| s.replicas),
                running: service.progress.running,
                healthy: service.progress.healthy,
                depends_on: service.depends_on.iter().map(|(k, v)| (k.clone(), v.as_str().to_owned())).collect(),
                deployment: service.deployment_name,
                name: service.name,
            }
        })
        .collect();
    pb::Stack {
        name: view.stack.name,
        services,
        compose: view.stack.source,
        created_at: Some(timestamp(view.stack.created_at)),
        updated_at: Some(timestamp(view.stack.updated_at)),
    }
}

#[tonic::async_trait]
impl pb::stack_service_server::StackService for StackApi {
    async fn deploy(&self, request: Request<pb::DeployStackRequest>) -> Result<Response<pb::DeployStackResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let repository = crate::service::requested_repository(&req.repo_url, &req.branch, &req.compose_file).map_err(status_from)?;
        let (created, view) = self.control_plane.deploy_stack(&caller, &req.name, &req.compose, repository).await.map_err(status_from)?;
        Ok(Response::new(pb::DeployStackResponse { created, stack: Some(stack_to_pb(view)) }))
    }

    async fn list(&self, request: Request<pb::ListStacksRequest>) -> Result<Response<pb::ListStacksResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let stacks = self.control_plane.list_stacks(&caller).await.map_err(status_from)?;
        Ok(Response::new(pb::ListStacksResponse {
            stacks: stacks
                .into_iter()
                .map(|mut view| {
                    view.stack.source.clear();
                    stack_to_pb(view)
                })
                .collect(),
        }))
    }

    async fn get(&self, request: Request<pb::GetStackRequest>) -> Result<Response<pb::Stack>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let view = self.control_plane.get_stack(&caller, &request.into_inner().name).await.map_err(status_from)?;
        Ok(Response::new(stack_to_pb(view)))
    }

    async fn delete(&self, request: Request<pb::DeleteStackRequest>) -> Result<Response<pb::DeleteStackResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        self.control_plane.delete_stack(&caller, &request.into_inner().name).await.map_err(status_from)?;
        Ok(Response::new(pb::DeleteStackResponse {}))
    }
}
