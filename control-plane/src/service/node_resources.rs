//! Images, networks and volumes of one runtime on one node. Each call resolves the node
//! ([`ControlPlane::resolve_node`]: the named one, else the only ready one), picks the
//! runtime (given, else the node's preferred one), checks every name before anything is
//! sent, and runs one command on that node's agent. A runtime without such objects
//! answers [`ServiceError::Unsupported`] naming itself.
//!
//! The caller's role is checked first, then the request, then the node. Roles: viewers read; deployers pull images, create networks and volumes, connect and
//! disconnect containers, and remove the networks and volumes Diplo created; admins
//! alone remove images (any image of the node's store, shared with whatever else runs
//! there) and prune. Every write is recorded as an event.

use diplo_api::command::{CommandOp, CommandOutput};
use diplo_api::resources::{
    ImageInfo, ImageOp, NetworkInfo, NetworkOp, NetworkSpec, PruneReport, VolumeInfo, VolumeOp, VolumeSpec, is_image_id,
    validate_resource_name,
};
use diplo_api::runtime::Runtime;

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::Role;

/// Where a node-level operation runs: a node (id or name; `None`: the only ready node)
/// and a runtime (`None`: that node's preferred one).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeTarget<'a> {
    /// Node id or name.
    pub node: Option<&'a str>,
    /// Runtime.
    pub runtime: Option<Runtime>,
}

/// A list, cut at [`diplo_api::resources::MAX_LISTED`] items when `truncated`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    /// Node id.
    pub node_id: String,
    /// Runtime asked.
    pub runtime: Runtime,
    /// The items.
    pub items: Vec<T>,
    /// More exist than listed.
    pub truncated: bool,
}

/// Checks an image reference (`registry/repo:tag`, `repo@sha256:…`) or an image id.
pub fn check_image(image: &str) -> ServiceResult<()> {
    if is_image_id(image) {
        return Ok(());
    }
    diplo_api::registry::Reference::parse(image).map(drop).map_err(|message| ServiceError::invalid("image", message))
}

/// Checks a network or volume name.
pub fn check_name(field: &'static str, name: &str) -> ServiceResult<()> {
    validate_resource_name(name).map_err(|message| ServiceError::invalid(field, message))
}

fn one<T>(mut items: Vec<T>, what: &str) -> ServiceResult<T> {
    items.pop().ok_or_else(|| ServiceError::Internal(format!("the agent answered no {what}")))
}

impl ControlPlane {
    /// Resolves the node and runtime after checking the caller's role, then sends `op`.
    async fn node_resource_command(
        &self,
        caller: &Caller,
        least: Role,
        target: NodeTarget<'_>,
        op: CommandOp,
    ) -> ServiceResult<(String, Runtime, CommandOutput)> {
        caller.require_operator(least)?;
        let node = self.resolve_node(caller, target.node).await?;
        let runtime = match target.runtime {
            Some(runtime) => runtime,
            None => node
                .fingerprint
                .preferred_runtime()
                .ok_or_else(|| ServiceError::FailedPrecondition(format!("node {} has no available runtime", node.name)))?,
        };
        let output = self.send_command(&node.id, runtime, op).await?;
        Ok((node.id, runtime, output))
    }

    async fn audit(&self, caller: &Caller, kind: &str, subject: &str, node_id: &str, runtime: Runtime, what: String) {
        tracing::info!(node_id, %runtime, subject, kind, "node resource changed");
        self.emit(kind, &caller.actor(), subject, format!("{what} on node {node_id} with {runtime}")).await;
    }

    /// The images of the node's runtime.
    pub async fn list_images(&self, caller: &Caller, target: NodeTarget<'_>) -> ServiceResult<Listed<ImageInfo>> {
        let (node_id, runtime, output) = self.node_resource_command(caller, Role::Viewer, target, CommandOp::Image(ImageOp::List)).await?;
        Ok(Listed { node_id, runtime, items: output.resources.images, truncated: output.resources.truncated })
    }

    /// One image by reference or id.
    pub async fn inspect_image(&self, caller: &Caller, target: NodeTarget<'_>, image: &str) -> ServiceResult<ImageInfo> {
        caller.require_operator(Role::Viewer)?;
        check_image(image)?;
        let op = CommandOp::Image(ImageOp::Inspect(image.to_owned()));
        let (_, _, output) = self.node_resource_command(caller, Role::Viewer, target, op).await?;
        one(output.resources.images, "image")
    }

    /// Makes an image present on the node (pulled when missing) and describes it.
    pub async fn pull_image(&self, caller: &Caller, target: NodeTarget<'_>, image: &str) -> ServiceResult<ImageInfo> {
        caller.require_operator(Role::Deployer)?;
        check_image(image)?;
        let op = CommandOp::PullImage(image.to_owned());
        let (node_id, runtime, _) = self.node_resource_command(caller, Role::Deployer, target, op).await?;
        self.audit(caller, "image.pulled", image, &node_id, runtime, format!("image {image} pulled")).await;
        let op = CommandOp::Image(ImageOp::Inspect(image.to_owned()));
        let target = NodeTarget { node: Some(&node_id), runtime: Some(runtime) };
        let (_, _, output) = self.node_resource_command(caller, Role::Deployer, target, op).await?;
        one(output.resources.images, "image")
    }

    /// Removes an image from the node's store (admins: the store is the node's, not
    /// only Diplo's). The runtime refuses an image a container uses (409) unless `force`.
    pub async fn remove_image(&self, caller: &Caller, target: NodeTarget<'_>, image: &str, force: bool) -> ServiceResult<()> {
        caller.require_operator(Role::Admin)?;
        check_image(image)?;
        let op = CommandOp::Image(ImageOp::Remove { image: image.to_owned(), force });
        let (node_id, runtime, _) = self.node_resource_command(caller, Role::Admin, target, op).await?;
        let forced = if force { " (forced)" } else { "" };
        self.audit(caller, "image.removed", image, &node_id, runtime, format!("image {image} removed{forced}")).await;
        Ok(())
    }

    /// Removes the images no container uses: every one with `all`, else untagged ones.
    pub async fn prune_images(&self, caller: &Caller, target: NodeTarget<'_>, all: bool) -> ServiceResult<PruneReport> {
        let (node_id, runtime, output) =
            self.node_resource_command(caller, Role::Admin, target, CommandOp::Image(ImageOp::Prune { all })).await?;
        let report = output.resources.prune.unwrap_or_default();
        let what = format!("{} images pruned, {} bytes freed", report.removed.len(), report.reclaimed_bytes);
        self.audit(caller, "images.pruned", &node_id, &node_id, runtime, what).await;
        Ok(report)
    }

    /// Creates a network (driver `bridge`), labelled as Diplo's.
    pub async fn create_network(&self, caller: &Caller, target: NodeTarget<'_>, spec: NetworkSpec) -> ServiceResult<NetworkInfo> {
        caller.require_operator(Role::Deployer)?;
        spec.validate().map_err(|(field, message)| ServiceError::invalid(field, message))?;
        let name = spec.name.clone();
        let op = CommandOp::Network(NetworkOp::Create(spec));
        let (node_id, runtime, output) = self.node_resource_command(caller, Role::Deployer, target, op).await?;
        self.audit(caller, "network.created", &name, &node_id, runtime, format!("network {name} created")).await;
        one(output.resources.networks, "network")
    }

    /// The networks of the node's runtime.
    pub async fn list_networks(&self, caller: &Caller, target: NodeTarget<'_>) -> ServiceResult<Listed<NetworkInfo>> {
        let op = CommandOp::Network(NetworkOp::List);
        let (node_id, runtime, output) = self.node_resource_command(caller, Role::Viewer, target, op).await?;
        Ok(Listed { node_id, runtime, items: output.resources.networks, truncated: output.resources.truncated })
    }

    /// One network with its containers.
    pub async fn inspect_network(&self, caller: &Caller, target: NodeTarget<'_>, name: &str) -> ServiceResult<NetworkInfo> {
        caller.require_operator(Role::Viewer)?;
        check_name("network", name)?;
        let op = CommandOp::Network(NetworkOp::Inspect(name.to_owned()));
        let (_, _, output) = self.node_resource_command(caller, Role::Viewer, target, op).await?;
        one(output.resources.networks, "network")
    }

    /// Removes a network Diplo created; one in use or not Diplo's is refused (409).
    pub async fn remove_network(&self, caller: &Caller, target: NodeTarget<'_>, name: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Deployer)?;
        check_name("network", name)?;
        let op = CommandOp::Network(NetworkOp::Remove(name.to_owned()));
        let (node_id, runtime, _) = self.node_resource_command(caller, Role::Deployer, target, op).await?;
        self.audit(caller, "network.removed", name, &node_id, runtime, format!("network {name} removed")).await;
        Ok(())
    }

    /// Attaches (`connect`) or detaches one of Diplo's containers; answers the network.
    pub async fn attach_network(
        &self,
        caller: &Caller,
        target: NodeTarget<'_>,
        network: &str,
        container: &str,
        connect: bool,
    ) -> ServiceResult<NetworkInfo> {
        caller.require_operator(Role::Deployer)?;
        check_name("network", network)?;
        diplo_api::container::validate_container_name(container).map_err(|message| ServiceError::invalid("container", message))?;
        let (network_owned, container_owned) = (network.to_owned(), container.to_owned());
        let op = if connect {
            NetworkOp::Connect { network: network_owned, container: container_owned }
        } else {
            NetworkOp::Disconnect { network: network_owned, container: container_owned }
        };
        let (node_id, runtime, output) = self.node_resource_command(caller, Role::Deployer, target, CommandOp::Network(op)).await?;
        let (kind, verb) = if connect { ("network.connected", "connected to") } else { ("network.disconnected", "disconnected from") };
        self.audit(caller, kind, network, &node_id, runtime, format!("container {container} {verb} network {network}")).await;
        one(output.resources.networks, "network")
    }

    /// Creates a volume, labelled as Diplo's.
    pub async fn create_volume(&self, caller: &Caller, target: NodeTarget<'_>, spec: VolumeSpec) -> ServiceResult<VolumeInfo> {
        caller.require_operator(Role::Deployer)?;
        spec.validate().map_err(|(field, message)| ServiceError::invalid(field, message))?;
        let name = spec.name.clone();
        let (node_id, runtime, output) =
            self.node_resource_command(caller, Role::Deployer, target, CommandOp::Volume(VolumeOp::Create(spec))).await?;
        self.audit(caller, "volume.created", &name, &node_id, runtime, format!("volume {name} created")).await;
        // Placement is sticky from now on, not only from the node's next report.
        self.nodes.edit_volumes(&node_id, runtime, |names| names.push(name.clone()));
        one(output.resources.volumes, "volume")
    }

    /// The volumes of the node's runtime.
    pub async fn list_volumes(&self, caller: &Caller, target: NodeTarget<'_>) -> ServiceResult<Listed<VolumeInfo>> {
        let op = CommandOp::Volume(VolumeOp::List);
        let (node_id, runtime, output) = self.node_resource_command(caller, Role::Viewer, target, op).await?;
        Ok(Listed { node_id, runtime, items: output.resources.volumes, truncated: output.resources.truncated })
    }

    /// One volume.
    pub async fn inspect_volume(&self, caller: &Caller, target: NodeTarget<'_>, name: &str) -> ServiceResult<VolumeInfo> {
        caller.require_operator(Role::Viewer)?;
        check_name("volume", name)?;
        let op = CommandOp::Volume(VolumeOp::Inspect(name.to_owned()));
        let (_, _, output) = self.node_resource_command(caller, Role::Viewer, target, op).await?;
        one(output.resources.volumes, "volume")
    }

    /// Removes a volume Diplo created; one in use or not Diplo's is refused (409).
    pub async fn remove_volume(&self, caller: &Caller, target: NodeTarget<'_>, name: &str) -> ServiceResult<()> {
        caller.require_operator(Role::Deployer)?;
        check_name("volume", name)?;
        let op = CommandOp::Volume(VolumeOp::Remove(name.to_owned()));
        let (node_id, runtime, _) = self.node_resource_command(caller, Role::Deployer, target, op).await?;
        self.audit(caller, "volume.removed", name, &node_id, runtime, format!("volume {name} removed")).await;
        self.nodes.edit_volumes(&node_id, runtime, |names| names.retain(|known| known != name));
        Ok(())
    }

    /// Removes the volumes Diplo created that no container uses.
    pub async fn prune_volumes(&self, caller: &Caller, target: NodeTarget<'_>) -> ServiceResult<PruneReport> {
        let (node_id, runtime, output) =
            self.node_resource_command(caller, Role::Admin, target, CommandOp::Volume(VolumeOp::Prune)).await?;
        let report = output.resources.prune.unwrap_or_default();
        self.nodes.edit_volumes(&node_id, runtime, |names| names.retain(|known| !report.removed.contains(known)));
        self.audit(caller, "volumes.pruned", &node_id, &node_id, runtime, format!("{} volumes pruned", report.removed.len())).await;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_anything_is_sent() {
        for good in ["127.0.0.1:5000/diplo/busybox:latest", "busybox", &format!("sha256:{}", "0".repeat(64)), "0123456789ab"] {
            assert!(check_image(good).is_ok(), "{good}");
        }
        for bad in ["", "http://x/y", "a b", "UPPER/case", "x:", "../x"] {
            match check_image(bad) {
                Err(ServiceError::InvalidArgument { field: "image", .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(check_name("volume", "data-1").is_ok());
        for bad in ["", "a/b", "-x", "x y"] {
            match check_name("volume", bad) {
                Err(ServiceError::InvalidArgument { field: "volume", .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
