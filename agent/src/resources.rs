//! Image, network and volume commands on one driver: names are checked again here
//! (whatever sent them), lists are capped at [`MAX_LISTED`] with `truncated` set.

use diplo_api::resources::{ImageOp, NetworkOp, ResourceOutput, VolumeOp, cap, validate_resource_name};

use crate::runtime::{ContainerRuntime, RuntimeError, RuntimeResult};

#[cfg(doc)]
use diplo_api::resources::MAX_LISTED;

fn checked(field: &'static str, name: &str) -> RuntimeResult<()> {
    validate_resource_name(name).map_err(|message| RuntimeError::InvalidArgument { field, message })
}

fn checked_container(container: &str) -> RuntimeResult<()> {
    diplo_api::container::validate_container_name(container)
        .map_err(|message| RuntimeError::InvalidArgument { field: "container", message })
}

/// Runs an image operation.
pub async fn image_op(driver: &dyn ContainerRuntime, op: &ImageOp) -> RuntimeResult<ResourceOutput> {
    Ok(match op {
        ImageOp::List => {
            let mut images = driver.list_images().await?;
            let truncated = cap(&mut images);
            ResourceOutput { images, truncated, ..Default::default() }
        }
        ImageOp::Inspect(image) => ResourceOutput { images: vec![driver.inspect_image(image).await?], ..Default::default() },
        ImageOp::Remove { image, force } => {
            driver.remove_image(image, *force).await?;
            ResourceOutput::default()
        }
        ImageOp::Prune { all } => ResourceOutput { prune: Some(driver.prune_images(*all).await?), ..Default::default() },
    })
}

/// Runs a network operation; connect and disconnect answer the network afterwards.
pub async fn network_op(driver: &dyn ContainerRuntime, op: &NetworkOp) -> RuntimeResult<ResourceOutput> {
    let one = |network| ResourceOutput { networks: vec![network], ..Default::default() };
    Ok(match op {
        NetworkOp::Create(spec) => {
            spec.validate().map_err(|(field, message)| RuntimeError::InvalidArgument { field, message })?;
            one(driver.create_network(spec).await?)
        }
        NetworkOp::List => {
            let mut networks = driver.list_networks().await?;
            let truncated = cap(&mut networks);
            ResourceOutput { networks, truncated, ..Default::default() }
        }
        NetworkOp::Inspect(network) => {
            checked("network", network)?;
            one(driver.inspect_network(network).await?)
        }
        NetworkOp::Remove(network) => {
            checked("network", network)?;
            driver.remove_network(network).await?;
            ResourceOutput::default()
        }
        NetworkOp::Connect { network, container } | NetworkOp::Disconnect { network, container } => {
            checked("network", network)?;
            checked_container(container)?;
            if matches!(op, NetworkOp::Connect { .. }) {
                driver.connect_network(network, container).await?;
            } else {
                driver.disconnect_network(network, container).await?;
            }
            one(driver.inspect_network(network).await?)
        }
    })
}

/// Runs a volume operation.
pub async fn volume_op(driver: &dyn ContainerRuntime, op: &VolumeOp) -> RuntimeResult<ResourceOutput> {
    let one = |volume| ResourceOutput { volumes: vec![volume], ..Default::default() };
    Ok(match op {
        VolumeOp::Create(spec) => {
            spec.validate().map_err(|(field, message)| RuntimeError::InvalidArgument { field, message })?;
            one(driver.create_volume(spec).await?)
        }
        VolumeOp::List => {
            let mut volumes = driver.list_volumes().await?;
            let truncated = cap(&mut volumes);
            ResourceOutput { volumes, truncated, ..Default::default() }
        }
        VolumeOp::Inspect(volume) => {
            checked("volume", volume)?;
            one(driver.inspect_volume(volume).await?)
        }
        VolumeOp::Remove(volume) => {
            checked("volume", volume)?;
            driver.remove_volume(volume).await?;
            ResourceOutput::default()
        }
        VolumeOp::Prune => ResourceOutput { prune: Some(driver.prune_volumes().await?), ..Default::default() },
    })
}
