//! `ClusterService`: status, nodes, join tokens and API tokens for operators.

use std::sync::Arc;
use std::time::Duration;

use diplo_api::pb;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{api_token, cluster_status, join_token, node, status_from, timestamp};
use crate::service::{ControlPlane, NewApiToken};

/// The gRPC face of the operator half of [`ControlPlane`] for cluster and nodes.
pub struct ClusterApi {
    control_plane: Arc<ControlPlane>,
}

impl ClusterApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        ClusterApi { control_plane }
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for ClusterApi {
    async fn get_status(&self, request: Request<pb::GetStatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let status = self.control_plane.cluster_status(&caller).await.map_err(status_from)?;
        Ok(Response::new(cluster_status(&status)))
    }

    async fn get_backend(&self, request: Request<pb::GetBackendRequest>) -> Result<Response<pb::Backend>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let kind = request.into_inner().runtime;
        let Some(runtime) = pb::RuntimeKind::try_from(kind).ok().and_then(pb::RuntimeKind::runtime) else {
            return Err(Status::invalid_argument(format!("invalid runtime: {kind} is not a runtime")));
        };
        let info = self.control_plane.backend_info(&caller, runtime).await.map_err(status_from)?;
        Ok(Response::new(pb::Backend {
            runtime: pb::RuntimeKind::from(info.runtime) as i32,
            available: info.available,
            capabilities: info.capabilities.iter().map(|c| c.name().to_owned()).collect(),
            nodes: info
                .nodes
                .into_iter()
                .map(|n| pb::BackendNode {
                    node_id: n.node_id,
                    node_name: n.node_name,
                    status: super::convert::node_status(n.status) as i32,
                    available: n.available,
                    version: n.version,
                    error: n.error,
                    instances_total: n.instances.total,
                    instances_running: n.instances.running,
                })
                .collect(),
            instances_total: info.instances.total,
            instances_running: info.instances.running,
        }))
    }

    async fn list_nodes(&self, request: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let nodes = self.control_plane.list_nodes(&caller).await.map_err(status_from)?;
        Ok(Response::new(pb::ListNodesResponse { nodes: nodes.iter().map(node).collect() }))
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::Node>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let record = self.control_plane.get_node(&caller, &request.into_inner().node).await.map_err(status_from)?;
        Ok(Response::new(node(&record)))
    }

    async fn cordon_node(&self, request: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let record = self.control_plane.set_cordoned(&caller, &request.into_inner().node, true).await.map_err(status_from)?;
        Ok(Response::new(node(&record)))
    }

    async fn uncordon_node(&self, request: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let record = self.control_plane.set_cordoned(&caller, &request.into_inner().node, false).await.map_err(status_from)?;
        Ok(Response::new(node(&record)))
    }

    async fn drain_node(&self, request: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let record = self.control_plane.drain_node(&caller, &request.into_inner().node).await.map_err(status_from)?;
        Ok(Response::new(node(&record)))
    }

    async fn remove_node(&self, request: Request<pb::NodeRef>) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        self.control_plane.remove_node(&caller, &request.into_inner().node).await.map_err(status_from)?;
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds));
        let created = self
            .control_plane
            .create_join_token(&caller, ttl, req.single_use, req.labels.into_iter().collect())
            .await
            .map_err(status_from)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: created.token,
            id: created.record.id.clone(),
            expires_at: Some(timestamp(created.record.expires_at)),
        }))
    }

    async fn list_join_tokens(&self, request: Request<pb::ListJoinTokensRequest>) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let tokens = self.control_plane.list_join_tokens(&caller).await.map_err(status_from)?;
        Ok(Response::new(pb::ListJoinTokensResponse { tokens: tokens.iter().map(join_token).collect() }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        self.control_plane.revoke_join_token(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(pb::RevokeJoinTokenResponse {}))
    }

    async fn create_api_token(&self, request: Request<pb::CreateApiTokenRequest>) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds));
        let created =
            self.control_plane.create_api_token(&caller, NewApiToken { name: req.name, role: req.role, ttl }).await.map_err(status_from)?;
        Ok(Response::new(pb::CreateApiTokenResponse {
            token: created.token,
            id: created.record.id.clone(),
            expires_at: created.record.expires_at.map(timestamp),
        }))
    }

    async fn list_api_tokens(&self, request: Request<pb::ListApiTokensRequest>) -> Result<Response<pb::ListApiTokensResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let tokens = self.control_plane.list_api_tokens(&caller).await.map_err(status_from)?;
        Ok(Response::new(pb::ListApiTokensResponse { tokens: tokens.iter().map(api_token).collect() }))
    }

    async fn revoke_api_token(&self, request: Request<pb::RevokeApiTokenRequest>) -> Result<Response<pb::RevokeApiTokenResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        self.control_plane.revoke_api_token(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(pb::RevokeApiTokenResponse {}))
    }
}
