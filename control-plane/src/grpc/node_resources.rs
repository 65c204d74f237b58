//! `NodeResourceService`: images, networks and volumes of one runtime on one node.

use std::sync::Arc;

use diplo_api::pb;
use diplo_api::resources::{NETWORK_DRIVER, NetworkSpec, VolumeSpec};
use diplo_api::runtime::Runtime;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::status_from;
use crate::service::{ControlPlane, NodeTarget};

/// The gRPC face of the node resource half of [`ControlPlane`].
pub struct NodeResourceApi {
    control_plane: Arc<ControlPlane>,
}

impl NodeResourceApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        NodeResourceApi { control_plane }
    }
}

/// The runtime a request names (`None`: unspecified).
fn runtime_of(value: i32) -> Result<Option<Runtime>, Status> {
    pb::RuntimeKind::try_from(value)
        .map(pb::RuntimeKind::runtime)
        .map_err(|_| Status::invalid_argument(format!("invalid runtime: unknown value {value}")))
}

fn target(node: &str, runtime: i32) -> Result<NodeTarget<'_>, Status> {
    Ok(NodeTarget { node: (!node.is_empty()).then_some(node), runtime: runtime_of(runtime)? })
}

#[tonic::async_trait]
impl pb::node_resource_service_server::NodeResourceService for NodeResourceApi {
    async fn list_images(&self, request: Request<pb::ListImagesRequest>) -> Result<Response<pb::ListImagesResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let listed = self.control_plane.list_images(&caller, target(&req.node, req.runtime)?).await.map_err(status_from)?;
        Ok(Response::new(pb::ListImagesResponse { images: listed.items.iter().map(Into::into).collect(), truncated: listed.truncated }))
    }

    async fn pull_image(&self, request: Request<pb::ImageRequest>) -> Result<Response<pb::ImageSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let image = self.control_plane.pull_image(&caller, target(&req.node, req.runtime)?, &req.image).await.map_err(status_from)?;
        Ok(Response::new((&image).into()))
    }

    async fn inspect_image(&self, request: Request<pb::ImageRequest>) -> Result<Response<pb::ImageSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let image = self.control_plane.inspect_image(&caller, target(&req.node, req.runtime)?, &req.image).await.map_err(status_from)?;
        Ok(Response::new((&image).into()))
    }

    async fn remove_image(&self, request: Request<pb::RemoveImageRequest>) -> Result<Response<pb::RemoveResourceResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        self.control_plane.remove_image(&caller, target(&req.node, req.runtime)?, &req.image, req.force).await.map_err(status_from)?;
        Ok(Response::new(pb::RemoveResourceResponse {}))
    }

    async fn prune_images(&self, request: Request<pb::PruneImagesRequest>) -> Result<Response<pb::PruneReport>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let report = self.control_plane.prune_images(&caller, target(&req.node, req.runtime)?, req.all).await.map_err(status_from)?;
        Ok(Response::new((&report).into()))
    }

    async fn create_network(&self, request: Request<pb::CreateNetworkRequest>) -> Result<Response<pb::NetworkSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let spec = NetworkSpec {
            name: req.name,
            driver: if req.driver.is_empty() { NETWORK_DRIVER.to_owned() } else { req.driver },
            subnet: (!req.subnet.is_empty()).then_some(req.subnet),
            internal: req.internal,
            labels: req.labels.into_iter().collect(),
        };
        let network = self.control_plane.create_network(&caller, target(&req.node, req.runtime)?, spec).await.map_err(status_from)?;
        Ok(Response::new((&network).into()))
    }

    async fn list_networks(&self, request: Request<pb::ListNetworksRequest>) -> Result<Response<pb::ListNetworksResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let listed = self.control_plane.list_networks(&caller, target(&req.node, req.runtime)?).await.map_err(status_from)?;
        Ok(Response::new(pb::ListNetworksResponse { networks: listed.items.iter().map(Into::into).collect(), truncated: listed.truncated }))
    }

    async fn inspect_network(&self, request: Request<pb::NetworkRequest>) -> Result<Response<pb::NetworkSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let network = self.control_plane.inspect_network(&caller, target(&req.node, req.runtime)?, &req.name).await.map_err(status_from)?;
        Ok(Response::new((&network).into()))
    }

    async fn remove_network(&self, request: Request<pb::NetworkRequest>) -> Result<Response<pb::RemoveResourceResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        self.control_plane.remove_network(&caller, target(&req.node, req.runtime)?, &req.name).await.map_err(status_from)?;
        Ok(Response::new(pb::RemoveResourceResponse {}))
    }

    async fn connect_network(&self, request: Request<pb::NetworkAttachmentRequest>) -> Result<Response<pb::NetworkSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let network = self
            .control_plane
            .attach_network(&caller, target(&req.node, req.runtime)?, &req.network, &req.container, true)
            .await
            .map_err(status_from)?;
        Ok(Response::new((&network).into()))
    }

    async fn disconnect_network(&self, request: Request<pb::NetworkAttachmentRequest>) -> Result<Response<pb::NetworkSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let network = self
            .control_plane
            .attach_network(&caller, target(&req.node, req.runtime)?, &req.network, &req.container, false)
            .await
            .map_err(status_from)?;
        Ok(Response::new((&network).into()))
    }

    async fn create_volume(&self, request: Request<pb::CreateVolumeRequest>) -> Result<Response<pb::VolumeSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let spec = VolumeSpec { name: req.name, labels: req.labels.into_iter().collect() };
        let volume = self.control_plane.create_volume(&caller, target(&req.node, req.runtime)?, spec).await.map_err(status_from)?;
        Ok(Response::new((&volume).into()))
    }

    async fn list_volumes(&self, request: Request<pb::ListVolumesRequest>) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let listed = self.control_plane.list_volumes(&caller, target(&req.node, req.runtime)?).await.map_err(status_from)?;
        Ok(Response::new(pb::ListVolumesResponse { volumes: listed.items.iter().map(Into::into).collect(), truncated: listed.truncated }))
    }

    async fn inspect_volume(&self, request: Request<pb::VolumeRequest>) -> Result<Response<pb::VolumeSummary>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let volume = self.control_plane.inspect_volume(&caller, target(&req.node, req.runtime)?, &req.name).await.map_err(status_from)?;
        Ok(Response::new((&volume).into()))
    }

    async fn remove_volume(&self, request: Request<pb::VolumeRequest>) -> Result<Response<pb::RemoveResourceResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        self.control_plane.remove_volume(&caller, target(&req.node, req.runtime)?, &req.name).await.map_err(status_from)?;
        Ok(Response::new(pb::RemoveResourceResponse {}))
    }

    async fn prune_volumes(&self, request: Request<pb::PruneVolumesRequest>) -> Result<Response<pb::PruneReport>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let report = self.control_plane.prune_volumes(&caller, target(&req.node, req.runtime)?).await.map_err(status_from)?;
        Ok(Response::new((&report).into()))
    }
}
