//! Images, client side: pull from a registry (or read an OCI/Docker archive), write the
//! blobs with the Content service, record the image with the Images service and unpack
//! its layers with the Diff service onto a Snapshots chain named by chain ids.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AbortRequest, ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest, ReadContentRequest, UpdateImageRequest,
    UpdateRequest, WriteAction, WriteContentRequest, content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
};
use containerd_client::types::{Descriptor as PbDescriptor, Mount as PbMount};
use diplo_api::registry::{
    Descriptor, Index, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST, Manifest, Reference, is_index, is_manifest, media_type_of_document,
    sha256_digest,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::Code;

use super::{ContainerdRuntime, failed, grpc_error, not_found_image, random_hex, request};
use crate::runtime::{RuntimeError, RuntimeResult};

/// Size of one Content.Write message.
const CHUNK: usize = 1 << 20;

/// The parts of an image's config file Diplo uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    /// Run defaults.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// Layer diff ids.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `config` of an image config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// `uid[:gid]` or a name.
    #[serde(default)]
    pub user: Option<String>,
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default command.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// `rootfs` of an image config file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    /// Uncompressed layer digests, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// A local, unpacked image.
#[derive(Debug, Clone)]
pub struct LocalImage {
    /// Its config file.
    pub config: ImageConfig,
    /// Chain id of its top layer: the snapshot containers are prepared from.
    pub chain_id: String,
}

/// Where blob bytes come from.
enum BlobSource {
    Http(reqwest::Response),
    File(tokio::fs::File),
    Memory(Option<Vec<u8>>),
}

impl BlobSource {
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self {
            BlobSource::Http(response) => {
                let mut buffer = Vec::new();
                while buffer.len() < CHUNK {
                    match response.chunk().await.map_err(|e| format!("download: {e}"))? {
                        Some(bytes) => buffer.extend_from_slice(&bytes),
                        None => break,
                    }
                }
                Ok(if buffer.is_empty() { None } else { Some(buffer) })
            }
            BlobSource::File(file) => {
                let mut buffer = vec![0; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file.read(&mut buffer[filled..]).await.map_err(|e| format!("read: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buffer.truncate(filled);
                Ok(if buffer.is_empty() { None } else { Some(buffer) })
            }
            BlobSource::Memory(data) => Ok(data.take().filter(|d| !d.is_empty())),
        }
    }
}

/// chain id of layer n: its diff id for the first, else `sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{parent} {diff_id}").as_bytes()))),
        };
        out.push(next);
    }
    out
}

/// This host's architecture in OCI spelling.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The index entry for linux on this host's architecture (any variant).
fn pick_platform(index: &Index) -> Option<&Descriptor> {
    let arch = host_architecture();
    let is_manifest =
        |d: &&Descriptor| d.media_type.is_empty() || d.media_type == MEDIA_OCI_MANIFEST || d.media_type == MEDIA_DOCKER_MANIFEST;
    let matching = |d: &&Descriptor| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch);
    index.manifests.iter().filter(is_manifest).find(matching).or_else(|| {
        // Single-platform indexes (e.g. from an OCI layout) may not say their platform.
        if index.manifests.len() == 1 && index.manifests[0].platform.is_none() { index.manifests.first() } else { None }
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> RuntimeResult<T> {
    serde_json::from_slice(bytes).map_err(|e| failed(format!("invalid {what}: {e}")))
}

fn to_pb(descriptor: &Descriptor) -> PbDescriptor {
    PbDescriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: descriptor.size,
        annotations: descriptor.annotations.clone().map(|a| a.into_iter().collect()).unwrap_or_default(),
    }
}

/// GC labels that make a manifest keep its config and layers.
fn manifest_gc_labels(manifest: &Manifest) -> HashMap<String, String> {
    let mut labels = HashMap::from([("containerd.io/gc.ref.content.config".to_owned(), manifest.config.digest.clone())]);
    for (i, layer) in manifest.layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), layer.digest.clone());
    }
    labels
}

/// A lease keeps what a pull writes, and what an operation found already there and
/// builds on, from the garbage collector until something else references it (the image
/// record, the container); it expires by itself should the agent die mid-way.
pub(super) struct Lease(pub String);

impl ContainerdRuntime {
    pub(super) async fn create_lease(&self) -> RuntimeResult<Lease> {
        use containerd_client::services::v1::{CreateRequest, leases_client::LeasesClient};
        let id = format!("diplo-{}", random_hex(8));
        let expire = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire)]);
        LeasesClient::new(self.channel.clone())
            .create(request(CreateRequest { id: id.clone(), labels }, None))
            .await
            .map_err(grpc_error)?;
        Ok(Lease(id))
    }

    /// Adds existing content (`content`, a digest) or a snapshot (`snapshots/<snapshotter>`,
    /// a key) to `lease`, before it is checked for: the GC may be removing it right now
    /// (say the image record was just deleted) and must not once it is found.
    async fn lease_resource(&self, lease: &Lease, kind: &str, id: &str) -> RuntimeResult<()> {
        use containerd_client::services::v1::{AddResourceRequest, Resource, leases_client::LeasesClient};
        let add = AddResourceRequest { id: lease.0.clone(), resource: Some(Resource { id: id.to_owned(), r#type: kind.to_owned() }) };
        LeasesClient::new(self.channel.clone()).add_resource(request(add, None)).await.map_err(grpc_error)?;
        Ok(())
    }

    async fn lease_blob(&self, lease: &Lease, digest: &str) -> RuntimeResult<()> {
        self.lease_resource(lease, "content", digest).await
    }

    pub(super) async fn lease_snapshot(&self, lease: &Lease, key: &str) -> RuntimeResult<()> {
        self.lease_resource(lease, &format!("snapshots/{}", self.snapshotter), key).await
    }

    pub(super) async fn delete_lease(&self, lease: Lease) {
        use containerd_client::services::v1::{DeleteRequest, leases_client::LeasesClient};
        if let Err(status) =
            LeasesClient::new(self.channel.clone()).delete(request(DeleteRequest { id: lease.0.clone(), sync: false }, None)).await
        {
            tracing::debug!(lease = lease.0, error = %status.message(), "cannot delete lease; it will expire");
        }
    }

    /// Makes `reference` present and unpacked, local if it is, else pulled; its top
    /// snapshot is held by `lease`.
    pub(super) async fn ensure_local_image(&self, lease: &Lease, reference: &Reference) -> RuntimeResult<LocalImage> {
        if let Some(image) = self.local_image(lease, &reference.to_string()).await? {
            return Ok(image);
        }
        self.pull_leased(lease, reference).await?;
        self.local_image(lease, &reference.to_string()).await?.ok_or_else(|| not_found_image(&reference.to_string()))
    }

    /// The image named `name` if it is recorded and its blobs are here; unpacks it when
    /// its snapshots are missing. `None` when it must be pulled.
    async fn local_image(&self, lease: &Lease, name: &str) -> RuntimeResult<Option<LocalImage>> {
        let image = match ImagesClient::new(self.channel.clone()).get(request(GetImageRequest { name: name.to_owned() }, None)).await {
            Ok(response) => response.into_inner().image,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(grpc_error(status)),
        };
        let Some(target) = image.and_then(|i| i.target) else { return Ok(None) };
        let Some(bytes) = self.read_blob_if_present(&target.digest).await? else { return Ok(None) };
        let mut media_type =
            if target.media_type.is_empty() { media_type_of_document(&bytes).unwrap_or_default() } else { target.media_type };
        let mut bytes = bytes;
        if is_index(&media_type) {
            let index: Index = parse_json(&bytes, "image index")?;
            let Some(chosen) = pick_platform(&index) else { return Ok(None) };
            let Some(manifest) = self.read_blob_if_present(&chosen.digest).await? else { return Ok(None) };
            media_type = MEDIA_OCI_MANIFEST.to_owned();
            bytes = manifest;
        }
        if !is_manifest(&media_type) && media_type_of_document(&bytes).is_none_or(|t| !is_manifest(&t)) {
            return Err(failed(format!("image {name} has an unsupported manifest type {media_type:?}")));
        }
        let manifest: Manifest = parse_json(&bytes, "image manifest")?;
        let Some(config_bytes) = self.read_blob_if_present(&manifest.config.digest).await? else { return Ok(None) };
        let config: ImageConfig = parse_json(&config_bytes, "image config")?;
        let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
        let chains = chain_ids(&diff_ids);
        let Some(top) = chains.last().cloned() else {
            return Err(failed(format!("image {name} has no layers")));
        };
        self.lease_snapshot(lease, &top).await?;
        if !self.snapshot_exists(&top).await? {
            for layer in &manifest.layers {
                self.lease_blob(lease, &layer.digest).await?;
                if !self.blob_exists(&layer.digest).await? {
                    return Ok(None);
                }
            }
            self.lease_blob(lease, &manifest.config.digest).await?;
            self.unpack(lease, &manifest, &config).await?;
        }
        Ok(Some(LocalImage { config, chain_id: top }))
    }

    /// Pulls `reference` from its registry into the content store, records and unpacks it.
    async fn pull_leased(&self, lease: &Lease, reference: &Reference) -> RuntimeResult<()> {
        self.registry.set_config(self.registry_settings.current());
        let mut fetched = self.registry.manifest(reference, reference.manifest_reference()).await?;
        if is_index(&fetched.media_type) {
            let index: Index = parse_json(&fetched.bytes, "image index")?;
            let chosen =
                pick_platform(&index).ok_or_else(|| failed(format!("{reference} has no image for linux/{}", host_architecture())))?;
            fetched = self.registry.manifest(reference, &chosen.digest.clone()).await?;
        }
        if !is_manifest(&fetched.media_type) {
            return Err(failed(format!("{reference}: unsupported manifest type {:?}", fetched.media_type)));
        }
        let manifest: Manifest = parse_json(&fetched.bytes, "image manifest")?;
        self.lease_blob(lease, &manifest.config.digest).await?;
        let config_bytes = match self.read_blob_if_present(&manifest.config.digest).await? {
            Some(bytes) => bytes,
            None => {
                // A config is a small document: read within the registry client's size and time limits.
                let bytes = self.registry.small_blob(reference, &manifest.config.digest).await?;
                self.write_blob(lease, &manifest.config, BlobSource::Memory(Some(bytes.clone())), HashMap::new()).await?;
                bytes
            }
        };
        let config: ImageConfig = parse_json(&config_bytes, "image config")?;
        for layer in &manifest.layers {
            self.lease_blob(lease, &layer.digest).await?;
            if !self.blob_exists(&layer.digest).await? {
                let response = self.registry.blob(reference, &layer.digest).await?;
                self.write_blob(lease, layer, BlobSource::Http(response), HashMap::new()).await?;
            }
        }
        let manifest_descriptor = Descriptor {
            media_type: fetched.media_type.clone(),
            digest: fetched.digest.clone(),
            size: fetched.bytes.len() as i64,
            platform: None,
            annotations: None,
        };
        self.write_blob(lease, &manifest_descriptor, BlobSource::Memory(Some(fetched.bytes)), manifest_gc_labels(&manifest)).await?;
        self.unpack(lease, &manifest, &config).await?;
        self.record_image(lease, &reference.to_string(), &manifest_descriptor).await
    }

    /// Imports `archive` as `reference`: an OCI layout or `docker save` archive (tar,
    /// optionally compressed), or else a bare root filesystem tarball (like `docker
    /// import`), which becomes a one-layer image without a default command.
    pub(super) async fn import_archive(&self, archive: &Path, reference: &Reference) -> RuntimeResult<()> {
        if !archive.is_file() {
            return Err(RuntimeError::InvalidArgument { field: "archive", message: format!("{} is not a file", archive.display()) });
        }
        let listing = run_tar(&[std::ffi::OsStr::new("-tf"), archive.as_os_str()], archive).await?;
        let top_level = |name: &str| listing.lines().any(|l| l.trim_start_matches("./") == name);
        let dir = self.state_dir.join("tmp").join(format!("import-{}", random_hex(8)));
        tokio::fs::create_dir_all(&dir).await.map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        let result = async {
            if top_level("index.json") || top_level("manifest.json") {
                run_tar(
                    &[
                        std::ffi::OsStr::new("-xf"),
                        archive.as_os_str(),
                        std::ffi::OsStr::new("-C"),
                        dir.as_os_str(),
                        std::ffi::OsStr::new("--no-same-owner"),
                    ],
                    archive,
                )
                .await?;
            } else {
                rootfs_image(archive, &dir).await?;
            }
            let lease = self.create_lease().await?;
            let result = self.import_dir(&lease, &dir, reference).await;
            self.delete_lease(lease).await;
            result
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    async fn import_dir(&self, lease: &Lease, dir: &Path, reference: &Reference) -> RuntimeResult<()> {
        let (manifest_descriptor, manifest_bytes, blob_paths) = if dir.join("index.json").is_file() {
            oci_layout_manifest(dir, reference)?
        } else if dir.join("manifest.json").is_file() {
            docker_archive_manifest(dir, reference).await?
        } else {
            return Err(RuntimeError::InvalidArgument {
                field: "archive",
                message: "neither an OCI layout (index.json) nor a docker save archive (manifest.json)".to_owned(),
            });
        };
        let manifest: Manifest = parse_json(&manifest_bytes, "image manifest")?;
        let config_path = blob_paths(&manifest.config.digest)?;
        let config_bytes =
            std::fs::read(&config_path).map_err(|e| failed(format!("archive lacks config {}: {e}", manifest.config.digest)))?;
        let config: ImageConfig = parse_json(&config_bytes, "image config")?;
        for descriptor in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.lease_blob(lease, &descriptor.digest).await?;
            if self.blob_exists(&descriptor.digest).await? {
                continue;
            }
            let path = blob_paths(&descriptor.digest)?;
            let file = tokio::fs::File::open(&path).await.map_err(|e| failed(format!("archive lacks blob {}: {e}", descriptor.digest)))?;
            self.write_blob(lease, descriptor, BlobSource::File(file), HashMap::new()).await?;
        }
        self.write_blob(lease, &manifest_descriptor, BlobSource::Memory(Some(manifest_bytes)), manifest_gc_labels(&manifest)).await?;
        self.unpack(lease, &manifest, &config).await?;
        self.record_image(lease, &reference.to_string(), &manifest_descriptor).await
    }

    /// Creates or updates the image record `name` → `target`.
    async fn record_image(&self, lease: &Lease, name: &str, target: &Descriptor) -> RuntimeResult<()> {
        let now = prost_types::Timestamp::from(std::time::SystemTime::now());
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(to_pb(target)),
            created_at: Some(now),
            updated_at: Some(now),
        };
        let mut images = ImagesClient::new(self.channel.clone());
        match images.create(request(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }, Some(&lease.0))).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                images
                    .update(request(UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None }, Some(&lease.0)))
                    .await
                    .map_err(grpc_error)?;
                Ok(())
            }
            Err(status) => Err(grpc_error(status)),
        }
    }

    /// Applies the layers of `manifest` onto snapshots named by chain id, skipping those
    /// already there, and labels the config so the GC keeps the unpacked snapshots.
    async fn unpack(&self, lease: &Lease, manifest: &Manifest, config: &ImageConfig) -> RuntimeResult<String> {
        let diff_ids = config.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
        if diff_ids.len() != manifest.layers.len() {
            return Err(failed(format!("image config lists {} diff ids for {} layers", diff_ids.len(), manifest.layers.len())));
        }
        let chains = chain_ids(&diff_ids);
        let mut snapshots = SnapshotsClient::new(self.channel.clone());
        let mut parent = String::new();
        for ((layer, diff_id), chain) in manifest.layers.iter().zip(&diff_ids).zip(&chains) {
            self.lease_snapshot(lease, chain).await?;
            if self.snapshot_exists(chain).await? {
                parent = chain.clone();
                continue;
            }
            let key = format!("extract-{}-{chain}", random_hex(6));
            let prepare = PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.clone(),
                parent: parent.clone(),
                labels: HashMap::new(),
            };
            let mounts = snapshots.prepare(request(prepare, Some(&lease.0))).await.map_err(grpc_error)?.into_inner().mounts;
            let applied = self.apply_layer(lease, layer, mounts).await;
            let outcome = match applied {
                Ok(digest) if &digest == diff_id => {
                    let commit = CommitSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        name: chain.clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    };
                    match snapshots.commit(request(commit, Some(&lease.0))).await {
                        Ok(_) => Ok(()),
                        Err(status) if status.code() == Code::AlreadyExists => Err(None),
                        Err(status) => Err(Some(grpc_error(status))),
                    }
                }
                Ok(digest) => Err(Some(failed(format!("layer {} unpacked to {digest}, expected {diff_id}", layer.digest)))),
                Err(error) => Err(Some(error)),
            };
            if let Err(error) = outcome {
                let remove = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key };
                let _ = snapshots.remove(request(remove, Some(&lease.0))).await;
                if let Some(error) = error {
                    return Err(error);
                }
            }
            parent = chain.clone();
        }
        let top = chains.last().cloned().ok_or_else(|| failed("image has no layers"))?;
        let label = format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter);
        let info = containerd_client::services::v1::Info {
            digest: manifest.config.digest.clone(),
            labels: HashMap::from([(label.clone(), top.clone())]),
            ..Default::default()
        };
        let update =
            UpdateRequest { info: Some(info), update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{label}")] }) };
        ContentClient::new(self.channel.clone()).update(request(update, Some(&lease.0))).await.map_err(grpc_error)?;
        Ok(top)
    }

    async fn apply_layer(&self, lease: &Lease, layer: &Descriptor, mounts: Vec<PbMount>) -> RuntimeResult<String> {
        let apply = ApplyRequest { diff: Some(to_pb(layer)), mounts, payloads: HashMap::new(), sync_fs: false };
        let response = DiffClient::new(self.channel.clone()).apply(request(apply, Some(&lease.0))).await.map_err(grpc_error)?;
        Ok(response.into_inner().applied.map(|d| d.digest).unwrap_or_default())
    }

    pub(super) async fn snapshot_exists(&self, key: &str) -> RuntimeResult<bool> {
        let stat = StatSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.to_owned() };
        match SnapshotsClient::new(self.channel.clone()).stat(request(stat, None)).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(grpc_error(status)),
        }
    }

    async fn blob_exists(&self, digest: &str) -> RuntimeResult<bool> {
        match ContentClient::new(self.channel.clone()).info(request(InfoRequest { digest: digest.to_owned() }, None)).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(grpc_error(status)),
        }
    }

    async fn read_blob_if_present(&self, digest: &str) -> RuntimeResult<Option<Vec<u8>>> {
        let read = ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 };
        let mut stream = match ContentClient::new(self.channel.clone()).read(request(read, None)).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(grpc_error(status)),
        };
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    out.extend_from_slice(&chunk.data);
                    if out.len() > diplo_api::registry::MAX_DOCUMENT_BYTES {
                        return Err(failed(format!("blob {digest} is larger than {} bytes", diplo_api::registry::MAX_DOCUMENT_BYTES)));
                    }
                }
                Ok(None) => break,
                Err(status) if status.code() == Code::NotFound => return Ok(None),
                Err(status) => return Err(grpc_error(status)),
            }
        }
        Ok(Some(out))
    }

    /// Streams `source` into the content store as `descriptor` (verified by containerd
    /// against its digest and size) with `labels`. Content already there is fine.
    async fn write_blob(
        &self,
        lease: &Lease,
        descriptor: &Descriptor,
        mut source: BlobSource,
        labels: HashMap<String, String>,
    ) -> RuntimeResult<()> {
        let reference = format!("diplo-{}-{}", random_hex(6), descriptor.digest);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let mut client = ContentClient::new(self.channel.clone());
        let call = async {
            let mut responses = client.write(request(tokio_stream::wrappers::ReceiverStream::new(rx), Some(&lease.0))).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        };
        let total = descriptor.size;
        let expected = descriptor.digest.clone();
        let send = async {
            let base = WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: expected.clone(),
                offset: 0,
                data: Vec::new(),
                labels: HashMap::new(),
            };
            let mut offset = 0i64;
            loop {
                match source.next_chunk().await {
                    Ok(Some(data)) => {
                        let len = data.len() as i64;
                        let message = WriteContentRequest { offset, data, ..base.clone() };
                        if tx.send(message).await.is_err() {
                            return Ok(());
                        }
                        offset += len;
                    }
                    Ok(None) => break,
                    Err(error) => return Err(error),
                }
            }
            let commit = WriteContentRequest { action: WriteAction::Commit as i32, offset, labels, ..base };
            let _ = tx.send(commit).await;
            drop(tx);
            Ok::<(), String>(())
        };
        let (sent, called) = tokio::join!(send, call);
        match (sent, called) {
            (_, Err(status)) if status.code() == Code::AlreadyExists => Ok(()),
            (Err(error), _) => {
                self.abort_write(&reference).await;
                Err(failed(format!("writing {}: {error}", descriptor.digest)))
            }
            (Ok(()), Err(status)) => {
                self.abort_write(&reference).await;
                Err(failed(format!("writing {}: {}", descriptor.digest, status.message())))
            }
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    async fn abort_write(&self, reference: &str) {
        let _ = ContentClient::new(self.channel.clone()).abort(request(AbortRequest { r#ref: reference.to_owned() }, None)).await;
    }
}

type BlobPaths = Box<dyn Fn(&str) -> RuntimeResult<PathBuf> + Send + Sync>;

/// The regular file `name` (a path the archive's own index or manifest gives) of the
/// archive extracted in `dir`: symlinks are resolved inside `dir`, never on the host, and
/// anything but a regular file (a FIFO, a device) is refused.
fn archive_member(dir: &Path, name: &str) -> RuntimeResult<PathBuf> {
    let invalid = |message: String| RuntimeError::InvalidArgument { field: "archive", message };
    let resolved = crate::runtime::rootfs::resolve(&[dir.to_path_buf()], name).map_err(|e| invalid(format!("member {name:?}: {e}")))?;
    let path = resolved.iter().fold(dir.to_path_buf(), |p, c| p.join(c));
    match std::fs::symlink_metadata(&path) {
        Ok(metadata) if metadata.file_type().is_file() => Ok(path),
        Ok(_) => Err(invalid(format!("member {name:?} is not a regular file"))),
        Err(error) => Err(invalid(format!("archive lacks {name:?}: {error}"))),
    }
}

/// `blobs/<algorithm>/<hex>` of an OCI layout for `digest`, refusing anything but
/// `algorithm:hex`.
fn blob_member(dir: &Path, digest: &str) -> RuntimeResult<PathBuf> {
    let well_formed = digest.split_once(':').filter(|(algorithm, hex)| {
        !algorithm.is_empty()
            && algorithm.chars().all(|c| c.is_ascii_alphanumeric())
            && !hex.is_empty()
            && hex.chars().all(|c| c.is_ascii_hexdigit())
    });
    let Some((algorithm, hex)) = well_formed else {
        return Err(RuntimeError::InvalidArgument { field: "archive", message: format!("{digest:?} is not a digest") });
    };
    archive_member(dir, &format!("blobs/{algorithm}/{hex}"))
}

/// From an OCI layout: the manifest for `reference` (by `org.opencontainers.image.ref.name`
/// or `io.containerd.image.name`, else the only one), resolving an index to this platform.
fn oci_layout_manifest(dir: &Path, reference: &Reference) -> RuntimeResult<(Descriptor, Vec<u8>, BlobPaths)> {
    let read = |digest: &str| std::fs::read(blob_member(dir, digest)?).map_err(|e| failed(format!("archive lacks blob {digest}: {e}")));
    let index_bytes = std::fs::read(archive_member(dir, "index.json")?).map_err(|e| failed(format!("cannot read index.json: {e}")))?;
    let index: Index = parse_json(&index_bytes, "index.json")?;
    let wanted_tag = reference.tag.clone().unwrap_or_default();
    let full = reference.to_string();
    let named = |d: &&Descriptor| {
        d.annotations.as_ref().is_some_and(|a| {
            a.get("io.containerd.image.name").is_some_and(|n| *n == full)
                || a.get("org.opencontainers.image.ref.name").is_some_and(|n| *n == wanted_tag || *n == full)
        })
    };
    let mut chosen = match index.manifests.iter().find(named) {
        Some(d) => d.clone(),
        None if index.manifests.len() == 1 => index.manifests[0].clone(),
        None => {
            return Err(RuntimeError::InvalidArgument {
                field: "reference",
                message: format!("the archive holds {} images and none is named {full}", index.manifests.len()),
            });
        }
    };
    let mut bytes = read(&chosen.digest)?;
    let mut media_type =
        if chosen.media_type.is_empty() { media_type_of_document(&bytes).unwrap_or_default() } else { chosen.media_type.clone() };
    if is_index(&media_type) {
        let nested: Index = parse_json(&bytes, "image index")?;
        let platform =
            pick_platform(&nested).ok_or_else(|| failed(format!("the archive has no image for linux/{}", host_architecture())))?;
        chosen = platform.clone();
        bytes = read(&chosen.digest)?;
        media_type =
            if chosen.media_type.is_empty() { media_type_of_document(&bytes).unwrap_or_default() } else { chosen.media_type.clone() };
    }
    if !is_manifest(&media_type) {
        return Err(failed(format!("unsupported manifest type {media_type:?} in the archive")));
    }
    let descriptor = Descriptor { media_type, digest: sha256_digest(&bytes), size: bytes.len() as i64, platform: None, annotations: None };
    let root = dir.to_path_buf();
    let paths: BlobPaths = Box::new(move |digest: &str| blob_member(&root, digest));
    Ok((descriptor, bytes, paths))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// From a `docker save` archive: builds a Docker schema 2 manifest over its config and
/// layer files (digests computed here; gzip layers are recognised by their magic).
async fn docker_archive_manifest(dir: &Path, reference: &Reference) -> RuntimeResult<(Descriptor, Vec<u8>, BlobPaths)> {
    let text = std::fs::read(archive_member(dir, "manifest.json")?).map_err(|e| failed(format!("cannot read manifest.json: {e}")))?;
    let entries: Vec<DockerArchiveEntry> = parse_json(&text, "manifest.json")?;
    let full = reference.to_string();
    let matches =
        |e: &&DockerArchiveEntry| e.repo_tags.iter().flatten().any(|tag| Reference::parse(tag).is_ok_and(|r| r.to_string() == full));
    let entry = match entries.iter().find(matches) {
        Some(entry) => entry,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(RuntimeError::InvalidArgument {
                field: "reference",
                message: format!("the archive holds {} images and none is tagged {full}", entries.len()),
            });
        }
    };
    let mut paths: HashMap<String, PathBuf> = HashMap::new();
    let config_path = archive_member(dir, &entry.config)?;
    let config_digest = file_digest(&config_path).await?;
    let config_size = file_size(&config_path)?;
    paths.insert(config_digest.clone(), config_path);
    let mut layers = Vec::new();
    for layer in &entry.layers {
        let path = archive_member(dir, layer)?;
        let digest = file_digest(&path).await?;
        let mut magic = [0u8; 2];
        let gzip = std::fs::File::open(&path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| magic == [0x1f, 0x8b]);
        let media_type =
            if gzip { "application/vnd.docker.image.rootfs.diff.tar.gzip" } else { "application/vnd.docker.image.rootfs.diff.tar" };
        layers.push(serde_json::json!({"mediaType": media_type, "size": file_size(&path)?, "digest": digest}));
        paths.insert(digest, path);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config_size, "digest": config_digest},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| failed(e.to_string()))?;
    let descriptor = Descriptor {
        media_type: MEDIA_DOCKER_MANIFEST.to_owned(),
        digest: sha256_digest(&bytes),
        size: bytes.len() as i64,
        platform: None,
        annotations: None,
    };
    let lookup: BlobPaths = Box::new(move |digest: &str| {
        paths
            .get(digest)
            .cloned()
            .ok_or_else(|| RuntimeError::InvalidArgument { field: "archive", message: format!("no file for {digest}") })
    });
    Ok((descriptor, bytes, lookup))
}

async fn run_tar(args: &[&std::ffi::OsStr], archive: &Path) -> RuntimeResult<String> {
    let output = tokio::process::Command::new("tar").args(args).output().await.map_err(|e| failed(format!("cannot run tar: {e}")))?;
    if !output.status.success() {
        return Err(RuntimeError::InvalidArgument {
            field: "archive",
            message: format!("{} is not a readable tar archive: {}", archive.display(), String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Lays out a root filesystem tarball in `dir` as a `docker save` archive of one layer:
/// the uncompressed tar (decompressed with gzip, xz, zstd or bzip2 when needed) and a
/// config naming its diff id.
async fn rootfs_image(archive: &Path, dir: &Path) -> RuntimeResult<()> {
    let mut magic = [0u8; 6];
    let read = std::fs::File::open(archive).and_then(|mut f| std::io::Read::read(&mut f, &mut magic));
    let n = read.map_err(|e| failed(format!("cannot read {}: {e}", archive.display())))?;
    let magic = &magic[..n];
    let layer = dir.join("layer.tar");
    let decompressor = if magic.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if magic.starts_with(b"BZh") {
        Some("bzip2")
    } else {
        None
    };
    match decompressor {
        None => {
            tokio::fs::copy(archive, &layer).await.map_err(|e| failed(format!("cannot copy {}: {e}", archive.display())))?;
        }
        Some(tool) => {
            let out = std::fs::File::create(&layer).map_err(|e| failed(format!("cannot create {}: {e}", layer.display())))?;
            let status = tokio::process::Command::new(tool)
                .arg("-dc")
                .arg("--")
                .arg(archive)
                .stdout(out)
                .status()
                .await
                .map_err(|e| failed(format!("cannot run {tool}: {e}")))?;
            if !status.success() {
                return Err(RuntimeError::InvalidArgument {
                    field: "archive",
                    message: format!("{tool} cannot decompress {}", archive.display()),
                });
            }
        }
    }
    let diff_id = file_digest(&layer).await?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let config = serde_json::json!({
        "architecture": host_architecture(),
        "os": "linux",
        "created": now,
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": now, "created_by": "diplo import"}],
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| failed(e.to_string()))?;
    std::fs::write(dir.join("config.json"), config_bytes).map_err(|e| failed(format!("cannot write the image config: {e}")))?;
    let manifest = serde_json::json!([{"Config": "config.json", "RepoTags": [], "Layers": ["layer.tar"]}]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).map_err(|e| failed(format!("cannot write manifest.json: {e}")))
}

fn file_size(path: &Path) -> RuntimeResult<i64> {
    Ok(std::fs::metadata(path).map_err(|e| failed(format!("{}: {e}", path.display())))?.len() as i64)
}

async fn file_digest(path: &Path) -> RuntimeResult<String> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| failed(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buffer).await.map_err(|e| failed(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::registry::Platform;

    #[test]
    fn archive_members_stay_in_the_archive() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("x");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host").expect("write");
        std::fs::create_dir_all(root.join("blobs/sha256")).expect("mkdir");
        std::fs::write(root.join("blobs/sha256/ab12"), "blob").expect("write");
        std::fs::write(root.join("manifest.json"), "[]").expect("write");
        symlink(&secret, root.join("abs")).expect("symlink");
        symlink("../secret", root.join("up")).expect("symlink");
        symlink("blobs/sha256/ab12", root.join("dup")).expect("symlink");
        symlink("/dev/zero", root.join("zero")).expect("symlink");
        assert!(std::process::Command::new("mkfifo").arg(root.join("fifo")).status().expect("mkfifo").success());
        assert_eq!(blob_member(&root, "sha256:ab12").expect("blob"), root.join("blobs/sha256/ab12"));
        assert_eq!(archive_member(&root, "dup").expect("relative link inside"), root.join("blobs/sha256/ab12"));
        for name in ["abs", "up", "../secret", "/etc/passwd", "zero", "fifo", "blobs", "missing"] {
            assert!(matches!(archive_member(&root, name), Err(RuntimeError::InvalidArgument { field: "archive", .. })), "{name}");
        }
        for digest in ["sha256:../../secret", "sha256:", "ab12", "../x:ab", "sha256:ab/12"] {
            assert!(matches!(blob_member(&root, digest), Err(RuntimeError::InvalidArgument { field: "archive", .. })), "{digest}");
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_spec() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}").as_bytes())));
        assert_eq!(chains[1], expected);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn platforms_are_picked_for_this_host() {
        let entry = |arch: &str, digest: &str| Descriptor {
            media_type: MEDIA_OCI_MANIFEST.to_owned(),
            digest: digest.to_owned(),
            size: 1,
            platform: Some(Platform { architecture: arch.to_owned(), os: "linux".to_owned(), variant: None }),
            annotations: None,
        };
        let index = Index { manifests: vec![entry("s390x-none", "x"), entry(host_architecture(), "mine")] };
        assert_eq!(pick_platform(&index).map(|d| d.digest.as_str()), Some("mine"));
        let index = Index { manifests: vec![entry("s390x-none", "x")] };
        assert!(pick_platform(&index).is_none());
    }
}
