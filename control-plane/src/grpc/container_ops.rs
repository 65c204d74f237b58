//! `ContainerOpsService`: pause/unpause, resource samples, tar copies for operators.

use std::pin::Pin;
use std::sync::Arc;

use diplo_api::pb;
use diplo_api::wire::container_state;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::status_from;
use crate::service::{ContainerSample, ControlPlane};

/// The gRPC face of the container operations of [`ControlPlane`].
pub struct ContainerOpsApi {
    control_plane: Arc<ControlPlane>,
}

impl ContainerOpsApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        ContainerOpsApi { control_plane }
    }
}

fn sample(sample: ContainerSample) -> pb::ContainerStatsSample {
    pb::ContainerStatsSample {
        container_id: sample.container_id,
        node_id: sample.node_id,
        runtime: pb::RuntimeKind::from(sample.runtime) as i32,
        read_at: sample.read_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        stats: Some((&sample.stats).into()),
    }
}

type StatsStream = Pin<Box<dyn Stream<Item = Result<pb::ContainerStatsSample, Status>> + Send>>;

#[tonic::async_trait]
impl pb::container_ops_service_server::ContainerOpsService for ContainerOpsApi {
    async fn pause_container(&self, request: Request<pb::PauseContainerRequest>) -> Result<Response<pb::ContainerState>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let view = self.control_plane.pause_container(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(container_state(&view.info, &view.node_id, view.runtime)))
    }

    async fn unpause_container(&self, request: Request<pb::UnpauseContainerRequest>) -> Result<Response<pb::ContainerState>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let view = self.control_plane.unpause_container(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(container_state(&view.info, &view.node_id, view.runtime)))
    }

    type ContainerStatsStream = StatsStream;

    async fn container_stats(&self, request: Request<pb::ContainerStatsRequest>) -> Result<Response<StatsStream>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        if !req.follow {
            let one = self.control_plane.container_stats(&caller, &req.id).await.map_err(status_from)?;
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(sample(one))))));
        }
        let rx = self.control_plane.follow_container_stats(&caller, &req.id).await.map_err(status_from)?;
        let stream =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |item| item.map(sample).map_err(status_from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn copy_from_container(
        &self,
        request: Request<pb::CopyFromContainerRequest>,
    ) -> Result<Response<pb::CopyFromContainerResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let archive = self.control_plane.copy_from_container(&caller, &req.id, &req.path).await.map_err(status_from)?;
        Ok(Response::new(pb::CopyFromContainerResponse { archive }))
    }

    async fn copy_to_container(
        &self,
        request: Request<pb::CopyToContainerRequest>,
    ) -> Result<Response<pb::CopyToContainerResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let members = self.control_plane.copy_to_container(&caller, &req.id, &req.dir, req.archive).await.map_err(status_from)?;
        Ok(Response::new(pb::CopyToContainerResponse { members: u32::try_from(members).unwrap_or(u32::MAX) }))
    }
}
