//! Images, networks and volumes on Docker and Podman (its Docker-compatible API). Reads
//! go through [`DockerRuntime::get_json`] into lenient structs (Podman's answers do not
//! always fit bollard's models); writes go through bollard.
//!
//! Networks and volumes created here carry [`LABEL_MANAGED`]; only those are removed or
//! pruned, and the daemon itself refuses to remove one a container uses (`Conflict`).
//! Connecting and disconnecting take Diplo's containers only.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{Ipam, IpamConfig, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, VolumeCreateRequest};
use bollard::query_parameters::{PruneImagesOptions, RemoveImageOptions, RemoveVolumeOptions};
use diplo_api::resources::{
    ImageInfo, LABEL_MANAGED, NetworkInfo, NetworkSpec, PruneReport, VolumeInfo, VolumeSpec, validate_resource_name,
};
use serde::Deserialize;

use super::{DockerRuntime, docker_api, query_escape};
use crate::runtime::{RuntimeError, RuntimeResult, not_managed};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedImage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    repo_digests: Option<Vec<String>>,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    created: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedNetwork {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    internal: bool,
    #[serde(default, rename = "IPAM")]
    ipam: Option<ListedIpam>,
    #[serde(default)]
    labels: Option<HashMap<String, String>>,
    #[serde(default)]
    containers: Option<HashMap<String, ListedEndpoint>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedIpam {
    #[serde(default)]
    config: Option<Vec<ListedIpamConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedIpamConfig {
    #[serde(default)]
    subnet: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedEndpoint {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedVolumes {
    #[serde(default)]
    volumes: Option<Vec<ListedVolume>>,
}

/// A container of `/containers/json`, for its names only.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VolumeUser {
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedVolume {
    #[serde(default)]
    name: String,
    #[serde(default)]
    driver: String,
    #[serde(default)]
    mountpoint: String,
    #[serde(default)]
    labels: Option<HashMap<String, String>>,
    #[serde(default)]
    created_at: String,
}

/// A creation time as the daemons give it: Unix seconds (lists) or RFC 3339 (inspect).
fn created(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => {
            n.as_i64().and_then(|secs| chrono::DateTime::from_timestamp(secs, 0)).map(|at| at.to_rfc3339()).unwrap_or_default()
        }
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

fn image_info(image: ListedImage) -> ImageInfo {
    // Podman reports `<none>:<none>` for untagged images, as Docker once did.
    let real = |v: &String| !v.starts_with("<none>");
    ImageInfo {
        id: image.id,
        tags: image.repo_tags.unwrap_or_default().into_iter().filter(real).collect(),
        digests: image.repo_digests.unwrap_or_default().into_iter().filter(real).collect(),
        size_bytes: u64::try_from(image.size).unwrap_or(0),
        created: created(&image.created),
    }
}

fn sorted(labels: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    labels.unwrap_or_default().into_iter().collect()
}

fn network_info(network: ListedNetwork) -> NetworkInfo {
    let subnets = network.ipam.and_then(|ipam| ipam.config).unwrap_or_default().into_iter().filter_map(|c| c.subnet).collect();
    let mut containers: Vec<String> = network.containers.unwrap_or_default().into_values().map(|e| e.name).collect();
    containers.sort();
    NetworkInfo {
        id: network.id,
        name: network.name,
        driver: network.driver,
        subnets,
        internal: network.internal,
        labels: sorted(network.labels),
        containers,
    }
}

fn volume_info(volume: ListedVolume) -> VolumeInfo {
    VolumeInfo {
        name: volume.name,
        driver: volume.driver,
        mountpoint: volume.mountpoint,
        labels: sorted(volume.labels),
        created: volume.created_at,
        containers: Vec::new(),
    }
}

/// A network or volume name (or a network id) fit for a URL path.
fn checked_name(field: &'static str, name: &str) -> RuntimeResult<()> {
    validate_resource_name(name).map_err(|message| RuntimeError::InvalidArgument { field, message })
}

/// Label of the networks Diplo creates because a container spec asks to join them (a
/// stack's network): removed again with the last container on them.
pub(super) const LABEL_SPEC_NETWORK: &str = "diplo.spec-network";

/// Held while a network a container spec needs is made and the container joins it, and
/// while unused ones are removed: Docker creates a second network of the same name when
/// two creations race (the replicas of a stack's services are created at once), and a
/// network must not go between its check and a container joining it.
pub(super) fn network_lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

fn managed_labels(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
    labels
}

impl DockerRuntime {
    /// Maps a bollard error about a network or volume: 403 and 409 (in use, name taken)
    /// are conflicts.
    fn resource_error(&self, error: &bollard::errors::Error, what: &'static str, name: &str) -> RuntimeError {
        match error {
            bollard::errors::Error::DockerResponseServerError { status_code: 403 | 409, message } => {
                RuntimeError::Conflict(format!("{what} {name:?}: {}", message.trim()))
            }
            other => self.error(other, what, name),
        }
    }

    pub(super) async fn images(&self) -> RuntimeResult<Vec<ImageInfo>> {
        let docker = self.docker().await?;
        let listed: Vec<ListedImage> = self.get_json(docker, "/images/json", "image", "*").await?;
        let mut images: Vec<ImageInfo> = listed.into_iter().map(image_info).collect();
        images.sort_by(|a, b| a.tags.first().cmp(&b.tags.first()).then_with(|| a.id.cmp(&b.id)));
        Ok(images)
    }

    pub(super) async fn image(&self, image: &str) -> RuntimeResult<ImageInfo> {
        docker_api::check_image_reference(image)?;
        let docker = self.docker().await?;
        let found: ListedImage = self.get_json(docker, &format!("/images/{image}/json"), "image", image).await?;
        Ok(image_info(found))
    }

    pub(super) async fn delete_image(&self, image: &str, force: bool) -> RuntimeResult<()> {
        docker_api::check_image_reference(image)?;
        let docker = self.docker().await?;
        let options = RemoveImageOptions { force, noprune: false, ..Default::default() };
        docker.remove_image(image, Some(options), None).await.map(drop).map_err(|e| self.error(&e, "image", image))
    }

    pub(super) async fn prune_unused_images(&self, all: bool) -> RuntimeResult<PruneReport> {
        let docker = self.docker().await?;
        let filters = HashMap::from([("dangling".to_owned(), vec![(!all).to_string()])]);
        let patient = docker.clone().with_timeout(super::REQUEST_TIMEOUT * 2);
        let answer =
            patient.prune_images(Some(PruneImagesOptions { filters: Some(filters) })).await.map_err(|e| self.error(&e, "image", "*"))?;
        let removed = answer.images_deleted.unwrap_or_default().into_iter().filter_map(|item| item.deleted.or(item.untagged)).collect();
        Ok(PruneReport { removed, reclaimed_bytes: u64::try_from(answer.space_reclaimed.unwrap_or(0)).unwrap_or(0) })
    }

    pub(super) async fn new_network(&self, spec: &NetworkSpec) -> RuntimeResult<NetworkInfo> {
        self.create_network(spec, &[]).await
    }

    /// Creates a checked network with Diplo's labels (`diplo.managed`, and `own_labels`,
    /// which a request's labels may not set).
    async fn create_network(&self, spec: &NetworkSpec, own_labels: &[(&str, &str)]) -> RuntimeResult<NetworkInfo> {
        spec.validate().map_err(|(field, message)| RuntimeError::InvalidArgument { field, message })?;
        let docker = self.docker().await?;
        // Docker accepts a second network of the same name; Diplo does not.
        match self.network(&spec.name).await {
            Ok(_) => return Err(RuntimeError::Conflict(format!("network {:?} exists already", spec.name))),
            Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        let ipam = spec.subnet.as_ref().map(|subnet| Ipam {
            config: Some(vec![IpamConfig { subnet: Some(subnet.clone()), ..Default::default() }]),
            ..Default::default()
        });
        let request = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some(spec.driver.clone()),
            internal: Some(spec.internal),
            ipam,
            labels: Some(
                managed_labels(&spec.labels)
                    .into_iter()
                    .chain(own_labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                    .collect(),
            ),
            ..Default::default()
        };
        docker.create_network(request).await.map_err(|e| self.resource_error(&e, "network", &spec.name))?;
        self.network(&spec.name).await
    }

    /// Creates the bridge network `name` (labelled as Diplo's, and as made for container
    /// specs) unless it exists: the network a container spec asks to join. The caller
    /// holds [`network_lock`] until the container joining it exists.
    pub(super) async fn ensure_network(&self, name: &str) -> RuntimeResult<()> {
        match self.network(name).await {
            Ok(_) => return Ok(()),
            Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        let spec = NetworkSpec { name: name.to_owned(), driver: diplo_api::resources::NETWORK_DRIVER.to_owned(), ..NetworkSpec::default() };
        match self.create_network(&spec, &[(LABEL_SPEC_NETWORK, "true")]).await {
            Ok(_) | Err(RuntimeError::Conflict(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Removes the networks of `names` that Diplo made for container specs and that no
    /// container uses any more (a stack's network once its last service is gone). Holds
    /// [`network_lock`], so that no container is joining one meanwhile.
    pub(super) async fn remove_unused_spec_networks(&self, names: &[String]) {
        let _no_creation = network_lock().lock().await;
        let Ok(docker) = self.docker().await else { return };
        for name in names {
            let Ok(found) = self.network(name).await else { continue };
            if !found.managed() || !found.labels.contains_key(LABEL_SPEC_NETWORK) {
                continue;
            }
            // Created and stopped containers count too (the network's own list has only
            // running ones): they would not start again without it.
            let filters = format!(r#"{{"network":[{}]}}"#, serde_json::Value::String(found.id.clone()));
            let path = format!("/containers/json?all=1&filters={}", query_escape(&filters));
            match self.get_json::<Vec<serde_json::Value>>(docker, &path, "container", "*").await {
                Ok(attached) if attached.is_empty() => {}
                _ => continue,
            }
            match self.delete_network(name).await {
                Ok(()) => tracing::info!(runtime = %self.runtime, network = %name, "removed a network no container uses any more"),
                Err(error) => tracing::warn!(runtime = %self.runtime, network = %name, %error, "cannot remove an unused network"),
            }
        }
    }

    pub(super) async fn networks(&self) -> RuntimeResult<Vec<NetworkInfo>> {
        let docker = self.docker().await?;
        let listed: Vec<ListedNetwork> = self.get_json(docker, "/networks", "network", "*").await?;
        let mut networks: Vec<NetworkInfo> = listed.into_iter().map(network_info).collect();
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(networks)
    }

    pub(super) async fn network(&self, network: &str) -> RuntimeResult<NetworkInfo> {
        checked_name("network", network)?;
        let docker = self.docker().await?;
        let found: ListedNetwork = self.get_json(docker, &format!("/networks/{}", query_escape(network)), "network", network).await?;
        Ok(network_info(found))
    }

    pub(super) async fn delete_network(&self, network: &str) -> RuntimeResult<()> {
        let found = self.network(network).await?;
        if !found.managed() {
            return Err(not_managed("network", network));
        }
        // Podman's Docker-compatible API removes a network with containers attached (it
        // disconnects them); Docker refuses. Diplo refuses on both.
        if !found.containers.is_empty() {
            return Err(RuntimeError::Conflict(format!(
                "network {network:?} is in use by {}; disconnect them first",
                found.containers.join(", ")
            )));
        }
        let docker = self.docker().await?;
        docker.remove_network(&found.id).await.map_err(|e| self.resource_error(&e, "network", network))
    }

    pub(super) async fn attach(&self, network: &str, container: &str, connect: bool) -> RuntimeResult<()> {
        let found = self.network(network).await?;
        let docker = self.docker().await?;
        let owned = self.owned(docker, container).await?;
        let result = if connect {
            docker.connect_network(&found.id, NetworkConnectRequest { container: owned.id.clone(), ..Default::default() }).await
        } else {
            docker.disconnect_network(&found.id, NetworkDisconnectRequest { container: owned.id.clone(), force: Some(false) }).await
        };
        result.map_err(|e| self.resource_error(&e, "network", network))
    }

    pub(super) async fn new_volume(&self, spec: &VolumeSpec) -> RuntimeResult<VolumeInfo> {
        spec.validate().map_err(|(field, message)| RuntimeError::InvalidArgument { field, message })?;
        let docker = self.docker().await?;
        // Creating a volume that exists answers the existing one; Diplo calls that a conflict.
        match self.volume(&spec.name).await {
            Ok(_) => return Err(RuntimeError::Conflict(format!("volume {:?} exists already", spec.name))),
            Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        let request = VolumeCreateRequest {
            name: Some(spec.name.clone()),
            driver: Some("local".to_owned()),
            labels: Some(managed_labels(&spec.labels)),
            ..Default::default()
        };
        docker.create_volume(request).await.map_err(|e| self.resource_error(&e, "volume", &spec.name))?;
        self.volume(&spec.name).await
    }

    pub(super) async fn volumes(&self) -> RuntimeResult<Vec<VolumeInfo>> {
        let docker = self.docker().await?;
        let listed: ListedVolumes = self.get_json(docker, "/volumes", "volume", "*").await?;
        let mut volumes: Vec<VolumeInfo> = listed.volumes.unwrap_or_default().into_iter().map(volume_info).collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    pub(super) async fn volume(&self, volume: &str) -> RuntimeResult<VolumeInfo> {
        checked_name("volume", volume)?;
        let docker = self.docker().await?;
        let found: ListedVolume = self.get_json(docker, &format!("/volumes/{}", query_escape(volume)), "volume", volume).await?;
        let mut info = volume_info(found);
        // The containers mounting it, Diplo's or not (names without the leading `/`).
        let filters = serde_json::json!({ "volume": [volume] }).to_string();
        let path = format!("/containers/json?all=1&filters={}", query_escape(&filters));
        let users: Vec<VolumeUser> = self.get_json(docker, &path, "volume", volume).await?;
        info.containers =
            users.into_iter().filter_map(|u| u.names.into_iter().next()).map(|n| n.trim_start_matches('/').to_owned()).collect();
        info.containers.sort();
        Ok(info)
    }

    pub(super) async fn delete_volume(&self, volume: &str) -> RuntimeResult<()> {
        let found = self.volume(volume).await?;
        if !found.managed() {
            return Err(not_managed("volume", volume));
        }
        let docker = self.docker().await?;
        let options = RemoveVolumeOptions { force: false };
        docker.remove_volume(&found.name, Some(options)).await.map_err(|e| self.resource_error(&e, "volume", volume))
    }

    /// Removes Diplo's volumes one by one; the ones a container uses stay (the daemon
    /// refuses them).
    pub(super) async fn prune_managed_volumes(&self) -> RuntimeResult<PruneReport> {
        let mut report = PruneReport::default();
        for volume in self.volumes().await?.into_iter().filter(VolumeInfo::managed) {
            match self.delete_volume(&volume.name).await {
                Ok(()) => report.removed.push(volume.name),
                Err(RuntimeError::Conflict(_) | RuntimeError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_answers_are_read_leniently() {
        let list: Vec<ListedImage> = serde_json::from_str(
            r#"[{"Id":"sha256:ab","RepoTags":["busybox:latest"],"RepoDigests":null,"Size":4096,"Created":0},
                {"Id":"sha256:cd","RepoTags":["<none>:<none>"],"Created":"2024-01-02T03:04:05Z"}]"#,
        )
        .expect("images");
        let images: Vec<ImageInfo> = list.into_iter().map(image_info).collect();
        assert_eq!(images[0].tags, ["busybox:latest"]);
        assert_eq!(images[0].size_bytes, 4096);
        assert_eq!(images[0].created, "1970-01-01T00:00:00+00:00");
        assert!(images[1].tags.is_empty());
        assert_eq!(images[1].created, "2024-01-02T03:04:05Z");

        let network: ListedNetwork = serde_json::from_str(
            r#"{"Name":"n","Id":"1","Driver":"bridge","Internal":true,"IPAM":{"Config":[{"Subnet":"10.1.0.0/24"}]},
                "Labels":{"diplo.managed":"true"},"Containers":{"x":{"Name":"web"}}}"#,
        )
        .expect("network");
        let network = network_info(network);
        assert_eq!((network.subnets.as_slice(), network.internal, network.managed()), (&["10.1.0.0/24".to_owned()][..], true, true));
        assert_eq!(network.containers, ["web"]);
        let podman: ListedNetwork =
            serde_json::from_str(r#"{"Name":"podman","Id":"2","Driver":"bridge","Labels":null,"IPAM":{}}"#).expect("podman");
        assert!(!network_info(podman).managed());

        let volumes: ListedVolumes = serde_json::from_str(r#"{"Volumes":null,"Warnings":null}"#).expect("volumes");
        assert!(volumes.volumes.is_none());
    }

    #[test]
    fn names_are_checked_before_any_url() {
        for bad in ["../containers/x", "a/b", "", "x?all=1"] {
            assert!(matches!(checked_name("volume", bad), Err(RuntimeError::InvalidArgument { field: "volume", .. })), "{bad}");
        }
    }
}
