//! Images, networks and volumes of one runtime on one node:
//! `/api/v1/images*`, `/api/v1/networks*`, `/api/v1/volumes*` (any runtime, `?runtime=`)
//! and the same routes under `/api/v1/docker/*` with the runtime fixed to Docker.
//! `?node=` names the node (id or name); without it the only ready node is used, and
//! several ready nodes answer 400 naming `node`. Image references go in one path segment
//! with their `/` percent-encoded (`127.0.0.1:5000%2Fdiplo%2Fbusybox:latest`). Lists
//! return at most 1,000 items (`truncated` says when there were more). A runtime without
//! such objects answers 501 naming itself.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use diplo_api::resources::{ImageInfo, NETWORK_DRIVER, NetworkInfo, NetworkSpec, PruneReport, VolumeInfo, VolumeSpec};
use diplo_api::runtime::Runtime;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiError;
use super::containers::parse_body;
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::service::{ControlPlane, Listed, NodeTarget};

type Api = State<Arc<ControlPlane>>;

/// Which node and runtime.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NodeQuery {
    /// Node id or name; omitted: the only ready node.
    node: Option<String>,
    /// `docker`, `podman`, `containerd` or `lxc`; omitted: the node's preferred runtime.
    runtime: Option<String>,
}

impl NodeQuery {
    fn target(&self) -> Result<NodeTarget<'_>, ApiError> {
        let runtime = match self.runtime.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            Some(name) => Some(name.parse::<Runtime>().map_err(|e| ApiError(ServiceError::invalid("runtime", e.to_string())))?),
            None => None,
        };
        Ok(NodeTarget { node: self.node.as_deref(), runtime })
    }

    /// The same query with the runtime fixed to Docker (the `/api/v1/docker/*` routes).
    fn docker(self) -> NodeQuery {
        NodeQuery { runtime: Some(Runtime::Docker.to_string()), ..self }
    }
}

/// `?force=` of an image removal.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Remove it even when several tags or a stopped container hold it.
    #[serde(default)]
    force: bool,
}

/// `?all=` of an image prune.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AllQuery {
    /// Every image no container uses, not only untagged ones.
    #[serde(default)]
    all: bool,
}

/// An image in a runtime's local store.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageJson {
    /// The runtime's id.
    pub id: String,
    /// Tags (`repo:tag`).
    pub tags: Vec<String>,
    /// Repository digests (`repo@sha256:…`).
    pub digests: Vec<String>,
    /// Size on disk (0 when the runtime does not say).
    pub size_bytes: u64,
    /// RFC 3339, empty when unknown.
    pub created: String,
}

impl From<ImageInfo> for ImageJson {
    fn from(image: ImageInfo) -> Self {
        ImageJson { id: image.id, tags: image.tags, digests: image.digests, size_bytes: image.size_bytes, created: image.created }
    }
}

/// The images of a node's runtime.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImageListJson {
    /// Node id.
    pub node_id: String,
    /// Runtime listed.
    pub runtime: String,
    /// At most 1,000.
    pub images: Vec<ImageJson>,
    /// More exist than listed.
    pub truncated: bool,
}

/// A network of a runtime.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkJson {
    /// The runtime's id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Driver.
    pub driver: String,
    /// Subnets (CIDR).
    pub subnets: Vec<String>,
    /// No route out.
    pub internal: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Attached containers (inspect only).
    pub containers: Vec<String>,
    /// Created through Diplo: only those may be removed.
    pub managed: bool,
}

impl From<NetworkInfo> for NetworkJson {
    fn from(network: NetworkInfo) -> Self {
        let managed = network.managed();
        NetworkJson {
            id: network.id,
            name: network.name,
            driver: network.driver,
            subnets: network.subnets,
            internal: network.internal,
            labels: network.labels,
            containers: network.containers,
            managed,
        }
    }
}

/// The networks of a node's runtime.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkListJson {
    /// Node id.
    pub node_id: String,
    /// Runtime listed.
    pub runtime: String,
    /// At most 1,000.
    pub networks: Vec<NetworkJson>,
    /// More exist than listed.
    pub truncated: bool,
}

/// A volume of a runtime.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeJson {
    /// Name.
    pub name: String,
    /// Driver.
    pub driver: String,
    /// Where it lives on the host.
    pub mountpoint: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339, empty when unknown.
    pub created: String,
    /// Created through Diplo: only those may be removed or pruned.
    pub managed: bool,
    /// Names of the containers mounting it (inspect; a volume in use is not removed).
    #[serde(default)]
    pub containers: Vec<String>,
}

impl From<VolumeInfo> for VolumeJson {
    fn from(volume: VolumeInfo) -> Self {
        let managed = volume.managed();
        VolumeJson {
            name: volume.name,
            driver: volume.driver,
            mountpoint: volume.mountpoint,
            labels: volume.labels,
            created: volume.created,
            managed,
            containers: volume.containers,
        }
    }
}

/// The volumes of a node's runtime.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeListJson {
    /// Node id.
    pub node_id: String,
    /// Runtime listed.
    pub runtime: String,
    /// At most 1,000.
    pub volumes: Vec<VolumeJson>,
    /// More exist than listed.
    pub truncated: bool,
}

/// What a prune removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PruneJson {
    /// Ids or names removed.
    pub removed: Vec<String>,
    /// Space freed as the runtime reports it (0 when it does not).
    pub reclaimed_bytes: u64,
}

impl From<PruneReport> for PruneJson {
    fn from(report: PruneReport) -> Self {
        PruneJson { removed: report.removed, reclaimed_bytes: report.reclaimed_bytes }
    }
}

/// `POST …/images/pull` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    /// Image reference, e.g. `127.0.0.1:5000/diplo/busybox:latest`.
    pub image: String,
}

/// `POST …/networks` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkBody {
    /// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`.
    pub name: String,
    /// `bridge` (the default and only driver).
    #[serde(default)]
    pub driver: Option<String>,
    /// IPv4 or IPv6 CIDR; omitted: chosen by the runtime.
    #[serde(default)]
    pub subnet: Option<String>,
    /// No route out of the network.
    #[serde(default)]
    pub internal: bool,
    /// Labels (no `diplo.*`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST …/networks/{name}/connect|disconnect` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachBody {
    /// One of Diplo's containers on that node and runtime (id or name).
    pub container: String,
}

/// `POST …/volumes` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeBody {
    /// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`.
    pub name: String,
    /// Labels (no `diplo.*`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn image_list(listed: Listed<ImageInfo>) -> ImageListJson {
    ImageListJson {
        node_id: listed.node_id,
        runtime: listed.runtime.to_string(),
        images: listed.items.into_iter().map(Into::into).collect(),
        truncated: listed.truncated,
    }
}

// ---------------------------------------------------------------------------------
// Runtime-neutral routes

/// Lists the images of a node's runtime.
#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(NodeQuery),
    responses((status = 200, body = ImageListJson), (status = 400, description = "bad node or runtime"),
        (status = 404, description = "no such node"), (status = 501, description = "the runtime has no images")))]
pub async fn list_images(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
) -> Result<Json<ImageListJson>, ApiError> {
    Ok(Json(image_list(cp.list_images(&caller, q.target()?).await?)))
}

/// Pulls an image onto a node (when missing) and describes it.
#[utoipa::path(post, path = "/api/v1/images/pull", tag = "images", params(NodeQuery), request_body = PullBody,
    responses((status = 200, body = ImageJson), (status = 400, description = "bad reference"), (status = 403, description = "viewer"),
        (status = 404, description = "no such node or image")))]
pub async fn pull_image(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    body: Bytes,
) -> Result<Json<ImageJson>, ApiError> {
    let body: PullBody = parse_body(&body)?;
    Ok(Json(cp.pull_image(&caller, q.target()?, &body.image).await?.into()))
}

/// Describes one image (reference with `/` percent-encoded, or id).
#[utoipa::path(get, path = "/api/v1/images/{reference}", tag = "images",
    params(("reference" = String, Path, description = "image reference (`/` as %2F) or id"), NodeQuery),
    responses((status = 200, body = ImageJson), (status = 404, description = "no such node or image")))]
pub async fn inspect_image(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Path(reference): Path<String>,
) -> Result<Json<ImageJson>, ApiError> {
    Ok(Json(cp.inspect_image(&caller, q.target()?, &reference).await?.into()))
}

/// Removes an image (admins); one a container uses is refused (409) unless `force`.
#[utoipa::path(delete, path = "/api/v1/images/{reference}", tag = "images",
    params(("reference" = String, Path, description = "image reference (`/` as %2F) or id"), NodeQuery, ForceQuery),
    responses((status = 204, description = "removed"), (status = 403, description = "not an admin"),
        (status = 404, description = "no such node or image"), (status = 409, description = "in use")))]
pub async fn remove_image(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Query(force): Query<ForceQuery>,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    cp.remove_image(&caller, q.target()?, &reference, force.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the images no container uses (admins): untagged ones, or every one with `all`.
#[utoipa::path(post, path = "/api/v1/images/prune", tag = "images", params(NodeQuery, AllQuery),
    responses((status = 200, body = PruneJson), (status = 403, description = "not an admin")))]
pub async fn prune_images(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Query(all): Query<AllQuery>,
) -> Result<Json<PruneJson>, ApiError> {
    Ok(Json(cp.prune_images(&caller, q.target()?, all.all).await?.into()))
}

/// Creates a network (driver `bridge`) labelled as Diplo's.
#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", params(NodeQuery), request_body = CreateNetworkBody,
    responses((status = 201, body = NetworkJson), (status = 400, description = "bad field"), (status = 403, description = "viewer"),
        (status = 409, description = "name taken"), (status = 501, description = "the runtime has no networks")))]
pub async fn create_network(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<NetworkJson>), ApiError> {
    let body: CreateNetworkBody = parse_body(&body)?;
    let spec = NetworkSpec {
        name: body.name,
        driver: body.driver.unwrap_or_else(|| NETWORK_DRIVER.to_owned()),
        subnet: body.subnet,
        internal: body.internal,
        labels: body.labels,
    };
    Ok((StatusCode::CREATED, Json(cp.create_network(&caller, q.target()?, spec).await?.into())))
}

/// Lists the networks of a node's runtime.
#[utoipa::path(get, path = "/api/v1/networks", tag = "networks", params(NodeQuery),
    responses((status = 200, body = NetworkListJson), (status = 501, description = "the runtime has no networks")))]
pub async fn list_networks(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
) -> Result<Json<NetworkListJson>, ApiError> {
    let listed = cp.list_networks(&caller, q.target()?).await?;
    Ok(Json(NetworkListJson {
        node_id: listed.node_id,
        runtime: listed.runtime.to_string(),
        networks: listed.items.into_iter().map(Into::into).collect(),
        truncated: listed.truncated,
    }))
}

/// Describes one network with its containers.
#[utoipa::path(get, path = "/api/v1/networks/{name}", tag = "networks", params(("name" = String, Path, description = "network name or id"), NodeQuery),
    responses((status = 200, body = NetworkJson), (status = 404, description = "no such node or network")))]
pub async fn inspect_network(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Path(name): Path<String>,
) -> Result<Json<NetworkJson>, ApiError> {
    Ok(Json(cp.inspect_network(&caller, q.target()?, &name).await?.into()))
}

/// Removes a network Diplo created; one in use or not Diplo's is refused (409).
#[utoipa::path(delete, path = "/api/v1/networks/{name}", tag = "networks", params(("name" = String, Path, description = "network name or id"), NodeQuery),
    responses((status = 204, description = "removed"), (status = 404, description = "no such node or network"),
        (status = 409, description = "in use, or not created by Diplo")))]
pub async fn remove_network(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    cp.remove_network(&caller, q.target()?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn attach(
    cp: Arc<ControlPlane>,
    caller: Caller,
    q: NodeQuery,
    name: String,
    body: Bytes,
    connect: bool,
) -> Result<Json<NetworkJson>, ApiError> {
    let body: AttachBody = parse_body(&body)?;
    Ok(Json(cp.attach_network(&caller, q.target()?, &name, &body.container, connect).await?.into()))
}

/// Attaches one of Diplo's containers to a network.
#[utoipa::path(post, path = "/api/v1/networks/{name}/connect", tag = "networks",
    params(("name" = String, Path, description = "network name or id"), NodeQuery), request_body = AttachBody,
    responses((status = 200, body = NetworkJson), (status = 404, description = "no such node, network or Diplo container")))]
pub async fn connect_network(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<NetworkJson>, ApiError> {
    attach(cp, caller, q, name, body, true).await
}

/// Detaches one of Diplo's containers from a network.
#[utoipa::path(post, path = "/api/v1/networks/{name}/disconnect", tag = "networks",
    params(("name" = String, Path, description = "network name or id"), NodeQuery), request_body = AttachBody,
    responses((status = 200, body = NetworkJson), (status = 404, description = "no such node, network or Diplo container")))]
pub async fn disconnect_network(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<NetworkJson>, ApiError> {
    attach(cp, caller, q, name, body, false).await
}

/// Creates a volume labelled as Diplo's.
#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", params(NodeQuery), request_body = CreateVolumeBody,
    responses((status = 201, body = VolumeJson), (status = 400, description = "bad field"), (status = 409, description = "name taken"),
        (status = 501, description = "the runtime has no volumes")))]
pub async fn create_volume(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    body: Bytes,
) -> Result<(StatusCode, Json<VolumeJson>), ApiError> {
    let body: CreateVolumeBody = parse_body(&body)?;
    let spec = VolumeSpec { name: body.name, labels: body.labels };
    Ok((StatusCode::CREATED, Json(cp.create_volume(&caller, q.target()?, spec).await?.into())))
}

/// Lists the volumes of a node's runtime.
#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", params(NodeQuery),
    responses((status = 200, body = VolumeListJson), (status = 501, description = "the runtime has no volumes")))]
pub async fn list_volumes(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
) -> Result<Json<VolumeListJson>, ApiError> {
    let listed = cp.list_volumes(&caller, q.target()?).await?;
    Ok(Json(VolumeListJson {
        node_id: listed.node_id,
        runtime: listed.runtime.to_string(),
        volumes: listed.items.into_iter().map(Into::into).collect(),
        truncated: listed.truncated,
    }))
}

/// Describes one volume.
#[utoipa::path(get, path = "/api/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path, description = "volume name"), NodeQuery),
    responses((status = 200, body = VolumeJson), (status = 404, description = "no such node or volume")))]
pub async fn inspect_volume(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Path(name): Path<String>,
) -> Result<Json<VolumeJson>, ApiError> {
    Ok(Json(cp.inspect_volume(&caller, q.target()?, &name).await?.into()))
}

/// Removes a volume Diplo created; one in use or not Diplo's is refused (409).
#[utoipa::path(delete, path = "/api/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path, description = "volume name"), NodeQuery),
    responses((status = 204, description = "removed"), (status = 404, description = "no such node or volume"),
        (status = 409, description = "in use, or not created by Diplo")))]
pub async fn remove_volume(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    cp.remove_volume(&caller, q.target()?, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes the volumes Diplo created that no container uses (admins).
#[utoipa::path(post, path = "/api/v1/volumes/prune", tag = "volumes", params(NodeQuery),
    responses((status = 200, body = PruneJson), (status = 403, description = "not an admin")))]
pub async fn prune_volumes(
    State(cp): Api,
    Extension(caller): Extension<Caller>,
    Query(q): Query<NodeQuery>,
) -> Result<Json<PruneJson>, ApiError> {
    Ok(Json(cp.prune_volumes(&caller, q.target()?).await?.into()))
}

// ---------------------------------------------------------------------------------
// `/api/v1/docker/*`: the same handlers with the runtime fixed to Docker

/// Defines a `/api/v1/docker/*` handler calling `$neutral` with `?runtime=docker`.
macro_rules! docker_route {
    ($(#[$meta:meta])* $name:ident => $neutral:ident($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        $(#[$meta])*
        pub async fn $name(state: Api, caller: Extension<Caller>, Query(q): Query<NodeQuery>, $($arg: $ty),*) -> $ret {
            $neutral(state, caller, Query(q.docker()), $($arg),*).await
        }
    };
}

docker_route!(
    /// Lists Docker's images on a node.
    #[utoipa::path(get, path = "/api/v1/docker/images", tag = "docker", params(NodeQuery), responses((status = 200, body = ImageListJson)))]
    docker_list_images => list_images() -> Result<Json<ImageListJson>, ApiError>
);
docker_route!(
    /// Pulls an image with Docker on a node.
    #[utoipa::path(post, path = "/api/v1/docker/images/pull", tag = "docker", params(NodeQuery), request_body = PullBody,
        responses((status = 200, body = ImageJson)))]
    docker_pull_image => pull_image(body: Bytes) -> Result<Json<ImageJson>, ApiError>
);
docker_route!(
    /// Describes one of Docker's images.
    #[utoipa::path(get, path = "/api/v1/docker/images/{reference}", tag = "docker",
        params(("reference" = String, Path, description = "image reference (`/` as %2F) or id"), NodeQuery), responses((status = 200, body = ImageJson)))]
    docker_inspect_image => inspect_image(reference: Path<String>) -> Result<Json<ImageJson>, ApiError>
);
docker_route!(
    /// Removes one of Docker's images (admins).
    #[utoipa::path(delete, path = "/api/v1/docker/images/{reference}", tag = "docker",
        params(("reference" = String, Path, description = "image reference (`/` as %2F) or id"), NodeQuery, ForceQuery),
        responses((status = 204, description = "removed")))]
    docker_remove_image => remove_image(force: Query<ForceQuery>, reference: Path<String>) -> Result<StatusCode, ApiError>
);
docker_route!(
    /// Prunes Docker's unused images (admins).
    #[utoipa::path(post, path = "/api/v1/docker/images/prune", tag = "docker", params(NodeQuery, AllQuery), responses((status = 200, body = PruneJson)))]
    docker_prune_images => prune_images(all: Query<AllQuery>) -> Result<Json<PruneJson>, ApiError>
);
docker_route!(
    /// Creates a Docker network.
    #[utoipa::path(post, path = "/api/v1/docker/networks", tag = "docker", params(NodeQuery), request_body = CreateNetworkBody,
        responses((status = 201, body = NetworkJson)))]
    docker_create_network => create_network(body: Bytes) -> Result<(StatusCode, Json<NetworkJson>), ApiError>
);
docker_route!(
    /// Lists Docker's networks.
    #[utoipa::path(get, path = "/api/v1/docker/networks", tag = "docker", params(NodeQuery), responses((status = 200, body = NetworkListJson)))]
    docker_list_networks => list_networks() -> Result<Json<NetworkListJson>, ApiError>
);
docker_route!(
    /// Describes a Docker network.
    #[utoipa::path(get, path = "/api/v1/docker/networks/{name}", tag = "docker",
        params(("name" = String, Path, description = "network name or id"), NodeQuery), responses((status = 200, body = NetworkJson)))]
    docker_inspect_network => inspect_network(name: Path<String>) -> Result<Json<NetworkJson>, ApiError>
);
docker_route!(
    /// Removes a Docker network Diplo created.
    #[utoipa::path(delete, path = "/api/v1/docker/networks/{name}", tag = "docker",
        params(("name" = String, Path, description = "network name or id"), NodeQuery), responses((status = 204, description = "removed")))]
    docker_remove_network => remove_network(name: Path<String>) -> Result<StatusCode, ApiError>
);
docker_route!(
    /// Attaches one of Diplo's Docker containers to a network.
    #[utoipa::path(post, path = "/api/v1/docker/networks/{name}/connect", tag = "docker",
        params(("name" = String, Path, description = "network name or id"), NodeQuery), request_body = AttachBody,
        responses((status = 200, body = NetworkJson)))]
    docker_connect_network => connect_network(name: Path<String>, body: Bytes) -> Result<Json<NetworkJson>, ApiError>
);
docker_route!(
    /// Detaches one of Diplo's Docker containers from a network.
    #[utoipa::path(post, path = "/api/v1/docker/networks/{name}/disconnect", tag = "docker",
        params(("name" = String, Path, description = "network name or id"), NodeQuery), request_body = AttachBody,
        responses((status = 200, body = NetworkJson)))]
    docker_disconnect_network => disconnect_network(name: Path<String>, body: Bytes) -> Result<Json<NetworkJson>, ApiError>
);
docker_route!(
    /// Creates a Docker volume.
    #[utoipa::path(post, path = "/api/v1/docker/volumes", tag = "docker", params(NodeQuery), request_body = CreateVolumeBody,
        responses((status = 201, body = VolumeJson)))]
    docker_create_volume => create_volume(body: Bytes) -> Result<(StatusCode, Json<VolumeJson>), ApiError>
);
docker_route!(
    /// Lists Docker's volumes.
    #[utoipa::path(get, path = "/api/v1/docker/volumes", tag = "docker", params(NodeQuery), responses((status = 200, body = VolumeListJson)))]
    docker_list_volumes => list_volumes() -> Result<Json<VolumeListJson>, ApiError>
);
docker_route!(
    /// Describes a Docker volume.
    #[utoipa::path(get, path = "/api/v1/docker/volumes/{name}", tag = "docker",
        params(("name" = String, Path, description = "volume name"), NodeQuery), responses((status = 200, body = VolumeJson)))]
    docker_inspect_volume => inspect_volume(name: Path<String>) -> Result<Json<VolumeJson>, ApiError>
);
docker_route!(
    /// Removes a Docker volume Diplo created.
    #[utoipa::path(delete, path = "/api/v1/docker/volumes/{name}", tag = "docker",
        params(("name" = String, Path, description = "volume name"), NodeQuery), responses((status = 204, description = "removed")))]
    docker_remove_volume => remove_volume(name: Path<String>) -> Result<StatusCode, ApiError>
);
docker_route!(
    /// Prunes the Docker volumes Diplo created that no container uses (admins).
    #[utoipa::path(post, path = "/api/v1/docker/volumes/prune", tag = "docker", params(NodeQuery), responses((status = 200, body = PruneJson)))]
    docker_prune_volumes => prune_volumes() -> Result<Json<PruneJson>, ApiError>
);

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_images,
        pull_image,
        inspect_image,
        remove_image,
        prune_images,
        create_network,
        list_networks,
        inspect_network,
        remove_network,
        connect_network,
        disconnect_network,
        create_volume,
        list_volumes,
        inspect_volume,
        remove_volume,
        prune_volumes,
        docker_list_images,
        docker_pull_image,
        docker_inspect_image,
        docker_remove_image,
        docker_prune_images,
        docker_create_network,
        docker_list_networks,
        docker_inspect_network,
        docker_remove_network,
        docker_connect_network,
        docker_disconnect_network,
        docker_create_volume,
        docker_list_volumes,
        docker_inspect_volume,
        docker_remove_volume,
        docker_prune_volumes,
    ),
    components(schemas(
        ImageJson,
        ImageListJson,
        NetworkJson,
        NetworkListJson,
        VolumeJson,
        VolumeListJson,
        PruneJson,
        PullBody,
        CreateNetworkBody,
        AttachBody,
        CreateVolumeBody,
    ))
)]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_name_the_runtime_at_fault() {
        let q = NodeQuery { node: Some("n1".into()), runtime: Some("Podman".into()) };
        let target = q.target().expect("podman");
        assert_eq!((target.node, target.runtime), (Some("n1"), Some(Runtime::Podman)));
        assert_eq!(NodeQuery::default().target().expect("none").runtime, None);
        assert_eq!(NodeQuery { runtime: Some(String::new()), ..Default::default() }.target().expect("empty").runtime, None);
        match (NodeQuery { runtime: Some("kvm".into()), ..Default::default() }).target() {
            Err(ApiError(ServiceError::InvalidArgument { field: "runtime", .. })) => {}
            other => panic!("{other:?}"),
        }
        let docker = NodeQuery { runtime: Some("lxc".into()), node: None }.docker();
        assert_eq!(docker.target().expect("docker").runtime, Some(Runtime::Docker));
    }

    #[test]
    fn bodies_name_their_field() {
        let parse = |text: &str| parse_body::<CreateNetworkBody>(&Bytes::from(text.to_owned()));
        assert!(parse(r#"{"name":"n","subnet":"10.0.0.0/24","internal":true,"labels":{"a":"b"}}"#).is_ok());
        for (bad, needle) in [(r#"{"name":"n","mode":"x"}"#, "mode"), (r#"{"name":1}"#, "name"), (r#"{}"#, "name"), ("{", "EOF")] {
            let err = parse(bad).expect_err(bad);
            assert!(err.0.to_string().contains(needle), "{bad}: {}", err.0);
        }
        assert!(parse_body::<AttachBody>(&Bytes::from_static(br#"{"container":"web"}"#)).is_ok());
        assert!(parse_body::<CreateVolumeBody>(&Bytes::from_static(br#"{"name":"v","driver":"nfs"}"#)).is_err());
    }

    #[test]
    fn the_document_lists_every_route() {
        use utoipa::OpenApi;
        let doc = Doc::openapi();
        assert_eq!(doc.paths.paths.len(), 22, "{:?}", doc.paths.paths.keys().collect::<Vec<_>>());
        assert!(doc.paths.paths.contains_key("/api/v1/images/{reference}"));
        assert!(doc.paths.paths.contains_key("/api/v1/docker/volumes/prune"));
    }
}
