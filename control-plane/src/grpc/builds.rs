//! `BuildService`: builds of images from git for operators.

use std::pin::Pin;
use std::sync::Arc;

use chrono::Utc;
use diplo_api::pb;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{status_from, timestamp};
use crate::model::BuildRecord;
use crate::service::{ControlPlane, StartBuild};

/// The gRPC face of the build half of [`ControlPlane`].
pub struct BuildApi {
    control_plane: Arc<ControlPlane>,
}

impl BuildApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        BuildApi { control_plane }
    }
}

/// A build on the wire.
pub fn build_message(build: BuildRecord) -> pb::Build {
    pb::Build {
        duration_seconds: build.duration_seconds(Utc::now()),
        id: build.id,
        status: build.status.as_str().into(),
        language: build.language,
        image: build.image,
        node_id: build.node_id.unwrap_or_default(),
        message: build.message,
        created_at: Some(timestamp(build.created_at)),
        finished_at: build.finished_at.map(timestamp),
        git_repo: build.git_repo,
        git_branch: build.git_branch.unwrap_or_default(),
        commit: build.commit,
        detected_from: build.detected_from,
        buildpack_type: build.buildpack_type,
        builder: build.builder.map(|b| b.as_str().to_owned()).unwrap_or_default(),
        started_at: build.started_at.map(timestamp),
        deployment_id: build.deployment_id.unwrap_or_default(),
        digest: build.digest,
        pushed: build.pushed,
        platform: build.platform.unwrap_or_default(),
        service_images: build.service_images.into_iter().collect(),
    }
}

/// The service's request from the wire's; an unknown `buildpack_type` is
/// `InvalidArgument` naming it.
fn start_request(req: pb::BuildRequest) -> Result<StartBuild, Status> {
    let non_empty = |text: String| (!text.is_empty()).then_some(text);
    let buildpack = diplo_api::build::buildpack(
        &req.buildpack_type,
        (req.dockerfile_path, req.build_args.into_iter().collect()),
        (req.build_command, req.output_dir),
        (req.start_command, req.variables.into_iter().collect()),
        (req.compose_file, req.compose_service),
    )
    .map_err(|e| Status::invalid_argument(format!("invalid buildpack_type: {e}")))?;
    Ok(StartBuild {
        id: non_empty(req.id),
        git_repo: req.git_repo,
        git_branch: non_empty(req.git_branch),
        buildpack,
        image_tag: non_empty(req.image_tag),
        language: non_empty(req.language),
        platform: non_empty(req.platform),
        prefer_node: None,
        deployment_id: None,
    })
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::BuildLogLine, Status>> + Send>>;

#[tonic::async_trait]
impl pb::build_service_server::BuildService for BuildApi {
    async fn start_build(&self, request: Request<pb::BuildRequest>) -> Result<Response<pb::Build>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let start = start_request(request.into_inner())?;
        let build = self.control_plane.start_build(&caller, start).await.map_err(status_from)?;
        Ok(Response::new(build_message(build)))
    }

    async fn get_build(&self, request: Request<pb::BuildRef>) -> Result<Response<pb::Build>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let build = self.control_plane.get_build(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(build_message(build)))
    }

    async fn list_builds(&self, request: Request<pb::ListBuildsRequest>) -> Result<Response<pb::ListBuildsResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let builds = self.control_plane.list_builds(&caller).await.map_err(status_from)?;
        Ok(Response::new(pb::ListBuildsResponse { builds: builds.into_iter().map(build_message).collect() }))
    }

    async fn cancel_build(&self, request: Request<pb::BuildRef>) -> Result<Response<pb::Build>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let build = self.control_plane.cancel_build(&caller, &request.into_inner().id).await.map_err(status_from)?;
        Ok(Response::new(build_message(build)))
    }

    type BuildLogsStream = LogStream;

    async fn build_logs(&self, request: Request<pb::BuildLogsRequest>) -> Result<Response<LogStream>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let stream = self.control_plane.build_logs(&caller, &req.id, req.follow).await.map_err(status_from)?;
        Ok(Response::new(Box::pin(futures::StreamExt::map(stream, |data| Ok(pb::BuildLogLine { data: data.to_vec() })))))
    }
}
