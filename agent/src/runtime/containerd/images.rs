//! The images of Diplo's namespace, as the Images service records them: list, inspect,
//! remove, prune. An image here is a name pointing at a manifest; removing it deletes
//! that record, and containerd's garbage collector frees the blobs and snapshots nothing
//! else holds. containerd has no untagged images, so a prune removes every image no
//! container of the namespace uses (with or without `all`).

use std::collections::HashSet;

use containerd_client::services::v1::{
    DeleteImageRequest, GetImageRequest, Image, ListContainersRequest, ListImagesRequest, containers_client::ContainersClient,
    images_client::ImagesClient,
};
use diplo_api::registry::Reference;
use diplo_api::resources::{ImageInfo, PruneReport};
use tonic::Code;

use super::{ContainerdRuntime, grpc_error, not_found_image, request};
use crate::runtime::{RuntimeError, RuntimeResult};

fn image_info(image: Image) -> ImageInfo {
    let digest = image.target.as_ref().map(|t| t.digest.clone()).unwrap_or_default();
    let repository = image.name.rsplit_once('@').map_or_else(
        || {
            // Strip a tag (after the last `/`), keep a registry port.
            match image.name.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => repo.to_owned(),
                _ => image.name.clone(),
            }
        },
        |(repo, _)| repo.to_owned(),
    );
    let created = image
        .created_at
        .and_then(|at| chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap_or(0)))
        .map(|at| at.to_rfc3339())
        .unwrap_or_default();
    ImageInfo {
        id: if digest.is_empty() { image.name.clone() } else { digest.clone() },
        digests: if digest.is_empty() { Vec::new() } else { vec![format!("{repository}@{digest}")] },
        tags: vec![image.name],
        size_bytes: 0,
        created,
    }
}

impl ContainerdRuntime {
    /// The recorded names an operator's `image` may mean: as given, then normalised
    /// (`busybox` → `docker.io/library/busybox:latest`).
    fn candidate_names(image: &str) -> RuntimeResult<Vec<String>> {
        crate::runtime::docker_api::check_image_reference(image)?;
        let mut names = vec![image.to_owned()];
        if let Ok(reference) = Reference::parse(image) {
            let normalised = reference.to_string();
            if normalised != image {
                names.push(normalised);
            }
        }
        Ok(names)
    }

    async fn recorded_image(&self, image: &str) -> RuntimeResult<Image> {
        let mut images = ImagesClient::new(self.channel.clone());
        for name in Self::candidate_names(image)? {
            match images.get(request(GetImageRequest { name }, None)).await {
                Ok(response) => {
                    if let Some(found) = response.into_inner().image {
                        return Ok(found);
                    }
                }
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => return Err(grpc_error(status)),
            }
        }
        // An id (the manifest digest) names the images pointing at it.
        let all = self.recorded_images().await?;
        all.into_iter()
            .find(|i| i.target.as_ref().is_some_and(|t| t.digest == image || t.digest.strip_prefix("sha256:") == Some(image)))
            .ok_or_else(|| not_found_image(image))
    }

    async fn recorded_images(&self) -> RuntimeResult<Vec<Image>> {
        let response = ImagesClient::new(self.channel.clone())
            .list(request(ListImagesRequest { filters: Vec::new() }, None))
            .await
            .map_err(grpc_error)?;
        Ok(response.into_inner().images)
    }

    /// The image names the containers of the namespace were created from.
    async fn images_in_use(&self) -> RuntimeResult<HashSet<String>> {
        let response = ContainersClient::new(self.channel.clone())
            .list(request(ListContainersRequest { filters: Vec::new() }, None))
            .await
            .map_err(grpc_error)?;
        Ok(response.into_inner().containers.into_iter().map(|c| c.image).collect())
    }

    pub(super) async fn images(&self) -> RuntimeResult<Vec<ImageInfo>> {
        let mut images: Vec<ImageInfo> = self.recorded_images().await?.into_iter().map(image_info).collect();
        images.sort_by(|a, b| a.tags.cmp(&b.tags));
        Ok(images)
    }

    pub(super) async fn image(&self, image: &str) -> RuntimeResult<ImageInfo> {
        Ok(image_info(self.recorded_image(image).await?))
    }

    pub(super) async fn delete_image(&self, image: &str, force: bool) -> RuntimeResult<()> {
        let found = self.recorded_image(image).await?;
        if !force && self.images_in_use().await?.contains(&found.name) {
            return Err(RuntimeError::Conflict(format!("image {} is used by a container; remove the container first", found.name)));
        }
        self.forget_image(&found.name).await
    }

    async fn forget_image(&self, name: &str) -> RuntimeResult<()> {
        match ImagesClient::new(self.channel.clone())
            .delete(request(DeleteImageRequest { name: name.to_owned(), sync: false, target: None }, None))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Err(not_found_image(name)),
            Err(status) => Err(grpc_error(status)),
        }
    }

    pub(super) async fn prune_unused_images(&self) -> RuntimeResult<PruneReport> {
        let used = self.images_in_use().await?;
        let mut report = PruneReport::default();
        for image in self.recorded_images().await? {
            if used.contains(&image.name) {
                continue;
            }
            match self.forget_image(&image.name).await {
                Ok(()) => report.removed.push(image.name),
                // Removed meanwhile by someone else.
                Err(RuntimeError::NotFound { .. }) => {}
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
    fn recorded_images_read_as_summaries() {
        let image = Image {
            name: "127.0.0.1:5000/diplo/busybox:latest".into(),
            target: Some(containerd_client::types::Descriptor { digest: "sha256:ab".into(), ..Default::default() }),
            created_at: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            ..Default::default()
        };
        let info = image_info(image);
        assert_eq!(info.id, "sha256:ab");
        assert_eq!(info.tags, ["127.0.0.1:5000/diplo/busybox:latest"]);
        assert_eq!(info.digests, ["127.0.0.1:5000/diplo/busybox@sha256:ab"]);
        assert_eq!(info.created, "1970-01-01T00:00:00+00:00");
        assert_eq!(ContainerdRuntime::candidate_names("busybox").expect("names"), ["busybox", "docker.io/library/busybox:latest"]);
        assert!(ContainerdRuntime::candidate_names("http://x").is_err());
    }
}
