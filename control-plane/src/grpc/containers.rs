//! `ContainerService`: direct container operations for operators.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use diplo_api::container::{LogOptions, OutputStream};
use diplo_api::pb;
use diplo_api::wire::container_state;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::status_from;
use crate::service::{ContainerView, ControlPlane, CreateContainer, Logs};

/// The gRPC face of the container half of [`ControlPlane`].
pub struct ContainerApi {
    control_plane: Arc<ControlPlane>,
}

impl ContainerApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        ContainerApi { control_plane }
    }
}

fn state(view: &ContainerView) -> pb::ContainerState {
    container_state(&view.info, &view.node_id, view.runtime)
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;

#[tonic::async_trait]
impl pb::container_service_server::ContainerService for ContainerApi {
    async fn list_containers(&self, request: Request<pb::ListContainersRequest>) -> Result<Response<pb::ListContainersResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let node = request.into_inner().node;
        let views = self.control_plane.list_containers(&caller, Some(&node)).await.map_err(status_from)?;
        Ok(Response::new(pb::ListContainersResponse { containers: views.iter().map(state).collect() }))
    }

    async fn create_container(&self, request: Request<pb::CreateContainerRequest>) -> Result<Response<pb::ContainerState>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let spec = req.spec.ok_or_else(|| Status::invalid_argument("invalid spec: missing"))?;
        let spec = spec.try_into().map_err(|e: diplo_api::wire::WireError| Status::invalid_argument(e.to_string()))?;
        let runtime = match pb::RuntimeKind::try_from(req.runtime) {
            Ok(kind) => kind.runtime(),
            Err(_) => return Err(Status::invalid_argument(format!("invalid runtime: unknown value {}", req.runtime))),
        };
        let node = (!req.node.is_empty()).then_some(req.node);
        let view = self.control_plane.create_container(&caller, CreateContainer { spec, runtime, node }).await.map_err(status_from)?;
        Ok(Response::new(state(&view)))
    }

    async fn start_container(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerState>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let view = self.control_plane.start_container(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(state(&view)))
    }

    async fn stop_container(&self, request: Request<pb::StopContainerRequest>) -> Result<Response<pb::ContainerState>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let grace = (req.grace_seconds > 0).then(|| Duration::from_secs(u64::from(req.grace_seconds)));
        let view = self.control_plane.stop_container(&caller, &req.id, grace).await.map_err(status_from)?;
        Ok(Response::new(state(&view)))
    }

    async fn restart_container(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerState>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let view = self.control_plane.restart_container(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(state(&view)))
    }

    async fn remove_container(
        &self,
        request: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        self.control_plane.remove_container(&caller, &req.id, req.force).await.map_err(status_from)?;
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    type ContainerLogsStream = LogStream;

    async fn container_logs(&self, request: Request<pb::ContainerLogsRequest>) -> Result<Response<LogStream>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let options = LogOptions { follow: req.follow, tail: (req.tail > 0).then_some(req.tail), timestamps: req.timestamps };
        let logs = self.control_plane.container_logs(&caller, &req.id, options).await.map_err(status_from)?;
        let stream: LogStream = match logs {
            Logs::Complete(output) => {
                let lines = [("stdout", output.stdout), ("stderr", output.stderr)]
                    .into_iter()
                    .filter(|(_, data)| !data.is_empty())
                    .map(|(stream, data)| Ok(pb::LogLine { stream: stream.into(), data }));
                Box::pin(tokio_stream::iter(lines.collect::<Vec<_>>()))
            }
            Logs::Follow(rx) => Box::pin(tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |chunk| {
                let stream = match chunk.stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                Ok(pb::LogLine { stream: stream.into(), data: chunk.data })
            })),
        };
        Ok(Response::new(stream))
    }

    async fn exec(&self, request: Request<pb::ExecRequest>) -> Result<Response<pb::ExecResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let output = self.control_plane.exec_in_container(&caller, &req.id, req.argv).await.map_err(status_from)?;
        Ok(Response::new(pb::ExecResponse {
            exit_code: i32::try_from(output.exit_code).unwrap_or(i32::MAX),
            stdout: output.stdout,
            stderr: output.stderr,
        }))
    }
}
