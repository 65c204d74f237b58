//! `diplo images | networks | volumes …`: a runtime's objects on one node, through
//! `NodeResourceService`. Every verb takes `--node` (default: the only ready node) and
//! `--runtime` (default: the node's preferred runtime).

use anyhow::Result;
use diplo_api::pb;
use diplo_api::pb::node_resource_service_client::NodeResourceServiceClient;
use diplo_api::runtime::Runtime;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::output::{self, Format};
use crate::status_error;

/// Where a node-level operation runs.
#[derive(clap::Args, Clone, Debug)]
pub struct Target {
    /// Node id or name (default: the only ready node).
    #[arg(long)]
    node: Option<String>,
    /// Runtime: docker, containerd, lxc or podman (default: the node's preferred).
    #[arg(long, value_parser = parse_runtime)]
    runtime: Option<Runtime>,
}

fn parse_runtime(text: &str) -> Result<Runtime, String> {
    text.parse::<Runtime>().map_err(|e| e.to_string())
}

impl Target {
    fn node(&self) -> String {
        self.node.clone().unwrap_or_default()
    }

    fn runtime(&self) -> i32 {
        self.runtime.map_or(0, |r| pb::RuntimeKind::from(r) as i32)
    }
}

#[derive(clap::Subcommand)]
pub enum ImagesCommand {
    /// List the images of a node's runtime.
    Ls(Target),
    /// Pull an image onto a node.
    Pull {
        image: String,
        #[command(flatten)]
        target: Target,
    },
    /// Show one image.
    Inspect {
        image: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove an image.
    Rm {
        image: String,
        /// Remove it even when tagged several times or used by a stopped container.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove unused images (dangling ones only, unless --all).
    Prune {
        /// Every image no container uses.
        #[arg(short, long)]
        all: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
pub enum NetworksCommand {
    /// Create a bridge network.
    Create {
        name: String,
        /// IPv4 or IPv6 CIDR (default: chosen by the runtime).
        #[arg(long)]
        subnet: Option<String>,
        /// No route outside the network.
        #[arg(long)]
        internal: bool,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List networks.
    Ls(Target),
    /// Show one network with its containers.
    Inspect {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a network created through Diplo.
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Attach a container to a network.
    Connect {
        network: String,
        container: String,
        #[command(flatten)]
        target: Target,
    },
    /// Detach a container from a network.
    Disconnect {
        network: String,
        container: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
pub enum VolumesCommand {
    /// Create a volume.
    Create {
        name: String,
        /// Label KEY=VALUE (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List volumes.
    Ls(Target),
    /// Show one volume.
    Inspect {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a volume created through Diplo.
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove unused volumes created through Diplo.
    Prune(Target),
}

type Client = NodeResourceServiceClient<Channel>;

fn client(channel: Channel) -> Client {
    crate::client::limited!(NodeResourceServiceClient::new(channel))
}

/// Prints a list, with a note on stderr when the runtime holds more than was listed.
fn print_list(format: Format, list: Vec<Value>, truncated: bool, table: impl FnOnce() -> String) -> Result<()> {
    output::print(format, &Value::Array(list), table)?;
    if truncated {
        eprintln!("diplo: only the first 1000 are listed");
    }
    Ok(())
}

fn prune_json(report: &pb::PruneReport) -> Value {
    json!({"removed": report.removed, "reclaimed_bytes": report.reclaimed_bytes})
}

fn print_prune(format: Format, report: &pb::PruneReport) -> Result<()> {
    output::print(format, &prune_json(report), || {
        let mut lines: Vec<String> = report.removed.iter().map(|r| format!("removed {r}")).collect();
        lines.push(format!("reclaimed {} bytes", report.reclaimed_bytes));
        lines.join("\n")
    })
}

/// An image as JSON.
pub fn image_json(image: &pb::ImageSummary) -> Value {
    json!({"id": image.id, "tags": image.tags, "digests": image.digests, "size_bytes": image.size_bytes,
           "created": (!image.created.is_empty()).then_some(&image.created)})
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

fn images_table(images: &[pb::ImageSummary]) -> String {
    let rows = images.iter().map(|i| {
        [
            short_id(&i.id),
            if i.tags.is_empty() { "<none>".to_owned() } else { i.tags.join(",") },
            format!("{:.1}MiB", i.size_bytes as f64 / f64::from(1u32 << 20)),
            or_dash(&i.created),
        ]
    });
    output::table(["ID", "TAGS", "SIZE", "CREATED"], rows)
}

/// A network as JSON.
pub fn network_json(network: &pb::NetworkSummary) -> Value {
    json!({"id": network.id, "name": network.name, "driver": network.driver, "subnets": network.subnets,
           "internal": network.internal, "labels": network.labels, "containers": network.containers, "managed": network.managed})
}

fn networks_table(networks: &[pb::NetworkSummary]) -> String {
    let rows = networks.iter().map(|n| {
        [short_id(&n.id), n.name.clone(), or_dash(&n.driver), or_dash(&n.subnets.join(",")), n.internal.to_string(), n.managed.to_string()]
    });
    output::table(["ID", "NAME", "DRIVER", "SUBNETS", "INTERNAL", "MANAGED"], rows)
}

/// A volume as JSON.
pub fn volume_json(volume: &pb::VolumeSummary) -> Value {
    json!({"name": volume.name, "driver": volume.driver, "mountpoint": volume.mountpoint, "labels": volume.labels,
           "created": (!volume.created.is_empty()).then_some(&volume.created), "managed": volume.managed,
           "containers": volume.containers})
}

fn volumes_table(volumes: &[pb::VolumeSummary]) -> String {
    let rows = volumes.iter().map(|v| [v.name.clone(), or_dash(&v.driver), or_dash(&v.mountpoint), v.managed.to_string()]);
    output::table(["NAME", "DRIVER", "MOUNTPOINT", "MANAGED"], rows)
}

/// Runs one `images` subcommand.
pub async fn images(channel: Channel, command: ImagesCommand, format: Format) -> Result<()> {
    let mut client = client(channel);
    let show = |image: pb::ImageSummary| output::print(format, &image_json(&image), || images_table(std::slice::from_ref(&image)));
    match command {
        ImagesCommand::Ls(target) => {
            let request = pb::ListImagesRequest { node: target.node(), runtime: target.runtime() };
            let listed = client.list_images(request).await.map_err(status_error)?.into_inner();
            let list = listed.images.iter().map(image_json).collect();
            print_list(format, list, listed.truncated, || images_table(&listed.images))?;
        }
        ImagesCommand::Pull { image, target } => {
            let mut progress = output::Progress::on_stderr();
            progress.update(&format!("pulling {image}…"));
            let request = pb::ImageRequest { node: target.node(), runtime: target.runtime(), image };
            let pulled = client.pull_image(request).await.map_err(status_error);
            progress.finish();
            show(pulled?.into_inner())?;
        }
        ImagesCommand::Inspect { image, target } => {
            let request = pb::ImageRequest { node: target.node(), runtime: target.runtime(), image };
            show(client.inspect_image(request).await.map_err(status_error)?.into_inner())?;
        }
        ImagesCommand::Rm { image, force, target } => {
            let request = pb::RemoveImageRequest { node: target.node(), runtime: target.runtime(), image: image.clone(), force };
            client.remove_image(request).await.map_err(status_error)?;
            println!("{image}");
        }
        ImagesCommand::Prune { all, target } => {
            let request = pb::PruneImagesRequest { node: target.node(), runtime: target.runtime(), all };
            print_prune(format, &client.prune_images(request).await.map_err(status_error)?.into_inner())?;
        }
    }
    Ok(())
}

/// Runs one `networks` subcommand.
pub async fn networks(channel: Channel, command: NetworksCommand, format: Format) -> Result<()> {
    let mut client = client(channel);
    let show = |network: pb::NetworkSummary| output::print_document(format, &network_json(&network));
    match command {
        NetworksCommand::Create { name, subnet, internal, labels, target } => {
            let labels = crate::containers::parse_pairs(&labels, "--label")?;
            let request = pb::CreateNetworkRequest {
                node: target.node(),
                runtime: target.runtime(),
                name,
                driver: String::new(),
                subnet: subnet.unwrap_or_default(),
                internal,
                labels,
            };
            show(client.create_network(request).await.map_err(status_error)?.into_inner())?;
        }
        NetworksCommand::Ls(target) => {
            let request = pb::ListNetworksRequest { node: target.node(), runtime: target.runtime() };
            let listed = client.list_networks(request).await.map_err(status_error)?.into_inner();
            let list = listed.networks.iter().map(network_json).collect();
            print_list(format, list, listed.truncated, || networks_table(&listed.networks))?;
        }
        NetworksCommand::Inspect { name, target } => {
            let request = pb::NetworkRequest { node: target.node(), runtime: target.runtime(), name };
            show(client.inspect_network(request).await.map_err(status_error)?.into_inner())?;
        }
        NetworksCommand::Rm { name, target } => {
            let request = pb::NetworkRequest { node: target.node(), runtime: target.runtime(), name: name.clone() };
            client.remove_network(request).await.map_err(status_error)?;
            println!("{name}");
        }
        NetworksCommand::Connect { network, container, target } => {
            let request = pb::NetworkAttachmentRequest { node: target.node(), runtime: target.runtime(), network, container };
            show(client.connect_network(request).await.map_err(status_error)?.into_inner())?;
        }
        NetworksCommand::Disconnect { network, container, target } => {
            let request = pb::NetworkAttachmentRequest { node: target.node(), runtime: target.runtime(), network, container };
            show(client.disconnect_network(request).await.map_err(status_error)?.into_inner())?;
        }
    }
    Ok(())
}

/// Runs one `volumes` subcommand.
pub async fn volumes(channel: Channel, command: VolumesCommand, format: Format) -> Result<()> {
    let mut client = client(channel);
    let show = |volume: pb::VolumeSummary| output::print_document(format, &volume_json(&volume));
    match command {
        VolumesCommand::Create { name, labels, target } => {
            let labels = crate::containers::parse_pairs(&labels, "--label")?;
            let request = pb::CreateVolumeRequest { node: target.node(), runtime: target.runtime(), name, labels };
            show(client.create_volume(request).await.map_err(status_error)?.into_inner())?;
        }
        VolumesCommand::Ls(target) => {
            let request = pb::ListVolumesRequest { node: target.node(), runtime: target.runtime() };
            let listed = client.list_volumes(request).await.map_err(status_error)?.into_inner();
            let list = listed.volumes.iter().map(volume_json).collect();
            print_list(format, list, listed.truncated, || volumes_table(&listed.volumes))?;
        }
        VolumesCommand::Inspect { name, target } => {
            let request = pb::VolumeRequest { node: target.node(), runtime: target.runtime(), name };
            show(client.inspect_volume(request).await.map_err(status_error)?.into_inner())?;
        }
        VolumesCommand::Rm { name, target } => {
            let request = pb::VolumeRequest { node: target.node(), runtime: target.runtime(), name: name.clone() };
            client.remove_volume(request).await.map_err(status_error)?;
            println!("{name}");
        }
        VolumesCommand::Prune(target) => {
            let request = pb::PruneVolumesRequest { node: target.node(), runtime: target.runtime() };
            print_prune(format, &client.prune_volumes(request).await.map_err(status_error)?.into_inner())?;
        }
    }
    Ok(())
}
