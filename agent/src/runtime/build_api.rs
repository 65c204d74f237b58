//! Building and pushing images through a Docker-compatible API (Docker, or Podman's
//! service), for the agent's builds: the context goes up as a tar, every output line
//! comes back to the build's log, an error detail fails the build, and what a failed
//! build left (untagged images of its steps) can be removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptions, ListImagesOptions, PushImageOptions, RemoveImageOptions};
use diplo_api::container::OutputStream;
use diplo_api::runtime::Runtime;
use futures::StreamExt;
use tokio::sync::OnceCell;

use super::docker::{DockerRuntime, daemon_error_text, describe_bollard, describe_io, file_chunks, query_escape};
use super::docker_api::ImageRef;
use super::{ContainerRuntime, RegistryConfig};
use crate::build::log::BuildLog;

/// Label every image a build makes carries: the build's id.
pub const LABEL_BUILD: &str = "diplo.build";

/// How long the daemon may stay silent while it pushes.
const PUSH_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// One image to build.
#[derive(Debug, Clone)]
pub struct EngineBuild<'a> {
    /// The build's id (labels the image).
    pub build_id: &'a str,
    /// Tag of the image.
    pub image: &'a str,
    /// Dockerfile, relative to the context.
    pub dockerfile: &'a str,
    /// The context, packed (see `build::workspace::pack_context`).
    pub context_tar: &'a Path,
    /// `--build-arg`s.
    pub build_args: &'a BTreeMap<String, String>,
    /// Images the Dockerfile starts from (pulled first by Podman, which cannot be told
    /// at build time which registries speak plain HTTP).
    pub base_images: &'a [String],
}

/// A builder speaking the Docker Engine API on a unix socket.
pub struct EngineBuilder {
    runtime: Runtime,
    socket: String,
    registry: RegistryConfig,
    client: OnceCell<Docker>,
}

impl EngineBuilder {
    /// The daemon on `socket` (a path, or `unix://path`), which is `runtime` (Docker or
    /// Podman); nothing is sent yet.
    pub fn connect(socket: &str, runtime: Runtime, registry: RegistryConfig) -> Self {
        EngineBuilder { runtime, socket: socket.strip_prefix("unix://").unwrap_or(socket).to_owned(), registry, client: OnceCell::new() }
    }

    async fn docker(&self) -> Result<&Docker, String> {
        self.client
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_unix(&self.socket, 3600, bollard::API_DEFAULT_VERSION)
                    .map_err(|e| format!("{} is unavailable: {}", self.runtime, describe_bollard(&e)))?;
                docker.negotiate_version().await.map_err(|e| format!("{} is unavailable: {}", self.runtime, describe_bollard(&e)))
            })
            .await
    }

    /// Credentials by registry, as the build API wants them (for base images).
    fn all_credentials(&self) -> HashMap<String, DockerCredentials> {
        self.registry.credentials.iter().map(|(registry, c)| (registry.clone(), credentials(registry, c))).collect()
    }

    /// Builds the image; returns its id. Image ids of the steps are added to `steps`
    /// as they appear (for [`EngineBuilder::remove_leftovers`]).
    pub async fn build(&self, request: &EngineBuild<'_>, log: &BuildLog, steps: &Mutex<Vec<String>>) -> Result<String, String> {
        let docker = self.docker().await?;
        if self.runtime == Runtime::Podman {
            let podman = DockerRuntime::connect(&self.socket, self.registry.clone(), Runtime::Podman);
            for image in request.base_images {
                log.note(&format!("pulling {image}")).await;
                podman.ensure_image(image).await.map_err(|e| format!("pulling the base image {image}: {e}"))?;
                // Working containers name the image they start from: a cut-short build's
                // are told from others' by it (see `remove_working_containers`).
                if let Ok(inspected) = docker.inspect_image(image).await
                    && let Some(id) = inspected.id
                    && let Ok(mut steps) = steps.lock()
                {
                    steps.push(id.trim_start_matches("sha256:").to_owned());
                }
            }
        }
        let labels: HashMap<String, String> = [(LABEL_BUILD.to_owned(), request.build_id.to_owned())].into();
        let options = BuildImageOptions {
            dockerfile: request.dockerfile.to_owned(),
            t: Some(request.image.to_owned()),
            rm: true,
            forcerm: true,
            buildargs: Some(request.build_args.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            labels: Some(labels),
            ..Default::default()
        };
        let chunks = file_chunks(request.context_tar).await.map_err(|e| format!("reading the build context: {}", describe_io(&e)))?;
        let credentials = self.all_credentials();
        let mut progress = docker.build_image(options, Some(credentials), Some(bollard::body_try_stream(chunks)));
        let mut image_id: Option<String> = None;
        while let Some(item) = progress.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => return Err(log.redact(error.trim())),
                Err(error) => return Err(log.redact(&describe_bollard(&error))),
            };
            if let Some(detail) = info.error_detail.and_then(|d| d.message).filter(|m| !m.is_empty()) {
                return Err(log.redact(detail.trim()));
            }
            if let Some(id) = info.aux.as_ref().and_then(|aux| aux.id.as_ref()) {
                image_id = Some(id.clone());
            }
            for text in [info.stream, info.status].into_iter().flatten() {
                for line in text.lines() {
                    if let Some(id) = step_image_id(line)
                        && let Ok(mut steps) = steps.lock()
                    {
                        steps.push(id.to_owned());
                    }
                }
                if !text.trim().is_empty() {
                    log.write(OutputStream::Stdout, text.trim_end()).await;
                }
            }
        }
        match image_id {
            Some(id) => Ok(id),
            // Podman's compatible API names the image in the stream only.
            None => {
                let inspected =
                    docker.inspect_image(request.image).await.map_err(|e| format!("the image was not built: {}", describe_bollard(&e)))?;
                inspected.id.ok_or_else(|| "the image was not built".to_owned())
            }
        }
    }

    /// Pushes `image` with the credentials of its registry; returns the manifest digest
    /// when the daemon tells it.
    pub async fn push(&self, image: &str, log: &BuildLog) -> Result<Option<String>, String> {
        let reference = ImageRef::parse(image);
        let registry = reference.registry().to_owned();
        let credential = self.registry.credential(&registry).map(|c| credentials(&registry, c));
        match self.runtime {
            Runtime::Podman => self.push_libpod(&reference, credential, log).await,
            _ => {
                let docker = self.docker().await?;
                let options = PushImageOptions { tag: Some(reference.tag.clone()), ..Default::default() };
                let mut progress = docker.push_image(&reference.repository, Some(options), credential);
                let mut digest = None;
                while let Some(item) = progress.next().await {
                    let info = match item {
                        Ok(info) => info,
                        Err(bollard::errors::Error::DockerStreamError { error }) => {
                            return Err(log.redact(&format!("push: {}", error.trim())));
                        }
                        Err(error) => return Err(log.redact(&format!("push: {}", describe_bollard(&error)))),
                    };
                    if let Some(detail) = info.error_detail.and_then(|d| d.message).filter(|m| !m.is_empty()) {
                        return Err(log.redact(&format!("push: {}", detail.trim())));
                    }
                    if let Some(status) = info.status {
                        digest = digest.or_else(|| pushed_digest(&status));
                        // Per-layer progress lines ("Pushing", "Waiting") carry an id; the rest is news.
                        if info.progress_detail.is_none_or(|p| p.total.is_none()) {
                            log.write(OutputStream::Stdout, &status).await;
                        }
                    }
                }
                Ok(digest)
            }
        }
    }

    /// Pushes through Podman's own endpoint, which takes `tlsVerify` (its Docker-compatible
    /// one does not: plain-HTTP registries would need a `registries.conf` entry).
    async fn push_libpod(
        &self,
        reference: &ImageRef,
        credential: Option<DockerCredentials>,
        log: &BuildLog,
    ) -> Result<Option<String>, String> {
        let tls_verify = !self.registry.is_insecure(reference.registry());
        let name = reference.qualified();
        let path = format!(
            "/v4.0.0/libpod/images/{}/push?destination={}&tlsVerify={tls_verify}",
            query_escape(&name),
            query_escape(&format!("docker://{name}"))
        );
        let mut headers = Vec::new();
        if let Some(credential) = credential {
            headers.push(("X-Registry-Auth".to_owned(), registry_auth_header(&credential)));
        }
        let (status, body) = unix_request(&self.socket, "POST", &path, &headers, PUSH_IDLE_TIMEOUT)
            .await
            .map_err(|e| format!("podman is unavailable: {}", describe_io(&e)))?;
        if !(200..300).contains(&status) {
            return Err(log.redact(&format!("push: {}", daemon_error_text(&body))));
        }
        let mut digest = None;
        for line in String::from_utf8_lossy(&body).lines() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                log.write(OutputStream::Stdout, line).await;
                continue;
            };
            if let Some(error) = value.get("error").and_then(serde_json::Value::as_str).filter(|e| !e.is_empty()) {
                return Err(log.redact(&format!("push: {error}")));
            }
            for key in ["manifestdigest", "manifestDigest", "ManifestDigest"] {
                if let Some(found) = value.get(key).and_then(serde_json::Value::as_str).filter(|d| d.starts_with("sha256:")) {
                    digest = Some(found.to_owned());
                }
            }
            if let Some(text) = value.get("stream").and_then(serde_json::Value::as_str) {
                log.write(OutputStream::Stdout, text.trim_end()).await;
            }
        }
        Ok(digest)
    }

    /// Removes what a build that failed (or was cut short) left: the untagged images of
    /// its steps, and `image` (its tag) when given. Images still in use or tagged are
    /// left alone; nothing here fails the caller.
    pub async fn remove_leftovers(&self, steps: &[String], image: Option<&str>) {
        let Ok(docker) = self.docker().await else { return };
        if let Some(image) = image
            && docker.inspect_image(image).await.is_ok()
        {
            let options = RemoveImageOptions { force: false, noprune: false, ..Default::default() };
            if let Err(error) = docker.remove_image(image, Some(options), None).await {
                tracing::debug!(image, error = %describe_bollard(&error), "cannot remove a failed build's image");
            }
        }
        let filters: HashMap<String, Vec<String>> = [("dangling".to_owned(), vec!["true".to_owned()])].into();
        let options = ListImagesOptions { all: false, filters: Some(filters), ..Default::default() };
        let dangling = match docker.list_images(Some(options)).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(runtime = %self.runtime, error = %describe_bollard(&error), "cannot list images to clean a failed build");
                return;
            }
        };
        for summary in dangling.iter().rev() {
            let id = summary.id.trim_start_matches("sha256:");
            if steps.iter().any(|step| !step.is_empty() && id.starts_with(step.trim_start_matches("sha256:"))) {
                let options = RemoveImageOptions { force: false, noprune: false, ..Default::default() };
                if let Err(error) = docker.remove_image(&summary.id, Some(options), None).await {
                    tracing::debug!(image = %summary.id, error = %describe_bollard(&error), "cannot remove a failed build's image");
                }
            }
        }
    }
}

impl EngineBuilder {
    /// Podman: ids of the working containers its builds keep in storage (`external`
    /// containers, state `storage`). A build cut short (its request dropped) leaves its
    /// working containers there.
    pub async fn working_containers(&self) -> Result<HashSet<String>, String> {
        Ok(self.working_containers_from(&[]).await?.into_iter().collect())
    }

    /// The working containers started from one of `images` (ids or id prefixes; empty:
    /// all).
    async fn working_containers_from(&self, images: &[String]) -> Result<Vec<String>, String> {
        let (status, body) =
            unix_request(&self.socket, "GET", "/v4.0.0/libpod/containers/json?all=true&external=true", &[], Duration::from_secs(60))
                .await
                .map_err(|e| describe_io(&e))?;
        if !(200..300).contains(&status) {
            return Err(daemon_error_text(&body));
        }
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let from_images = |c: &serde_json::Value| {
            let image = c.get("ImageID").and_then(serde_json::Value::as_str).unwrap_or_default().trim_start_matches("sha256:");
            images.is_empty()
                || (!image.is_empty() && images.iter().any(|i| !i.is_empty() && image.starts_with(i.trim_start_matches("sha256:"))))
        };
        Ok(listed
            .iter()
            .filter(|c| c.get("State").and_then(serde_json::Value::as_str) == Some("storage"))
            .filter(|c| from_images(c))
            .filter_map(|c| c.get("Id").and_then(serde_json::Value::as_str).map(str::to_owned))
            .collect())
    }

    /// Podman: removes the working containers that are not in `before` and started
    /// from one of `images` (the build's base and step images).
    pub async fn remove_working_containers(&self, before: &HashSet<String>, images: &[String]) {
        if images.is_empty() {
            return;
        }
        let Ok(now) = self.working_containers_from(images).await else { return };
        for id in now.iter().filter(|id| !before.contains(*id)) {
            let path = format!("/v4.0.0/libpod/containers/{}?force=true", query_escape(id));
            match unix_request(&self.socket, "DELETE", &path, &[], Duration::from_secs(60)).await {
                Ok((200..=299, _)) => tracing::debug!(container = %id, "removed a cut-short build's working container"),
                Ok((_, body)) => {
                    tracing::warn!(container = %id, error = %daemon_error_text(&body), "cannot remove a build's working container")
                }
                Err(error) => tracing::warn!(container = %id, error = %describe_io(&error), "cannot remove a build's working container"),
            }
        }
    }
}

fn credentials(registry: &str, credential: &diplo_api::registry::RegistryCredential) -> DockerCredentials {
    DockerCredentials {
        username: Some(credential.username.clone()),
        password: Some(credential.password.clone()),
        serveraddress: Some(registry.to_owned()),
        ..Default::default()
    }
}

/// `X-Registry-Auth`: the credentials as base64url JSON.
fn registry_auth_header(credential: &DockerCredentials) -> String {
    let json = serde_json::json!({
        "username": credential.username,
        "password": credential.password,
        "serveraddress": credential.serveraddress,
    });
    base64url(json.to_string().as_bytes())
}

/// Base64 with the URL-safe alphabet and padding, as the Docker API reads auth headers.
pub(crate) fn base64url(bytes: &[u8]) -> String {
    base64_with(bytes, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    base64_with(bytes, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
}

fn base64_with(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The registry (`host:port`) an image reference names (`docker.io` for short names).
pub fn registry_of(image: &str) -> String {
    ImageRef::parse(image).registry().to_owned()
}

/// The image id of a build step's result in a builder's output (` ---> 1a2b3c4d5e6f`
/// from Docker, `--> 1a2b3c4d5e6` from Podman and buildah).
pub fn step_image_id(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix("--->").or_else(|| line.trim().strip_prefix("-->"))?.trim();
    let rest = rest.strip_prefix("sha256:").unwrap_or(rest);
    (rest.len() >= 10 && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(rest)
}

/// The manifest digest in a push status line (`latest: digest: sha256:… size: 528`).
pub fn pushed_digest(status: &str) -> Option<String> {
    let at = status.find("digest: sha256:")?;
    let hex: String = status[at + "digest: sha256:".len()..].chars().take_while(char::is_ascii_hexdigit).collect();
    (hex.len() == 64).then(|| format!("sha256:{hex}"))
}

/// `METHOD path` with HTTP/1.0 and `headers` on the unix socket; status and body, read
/// until the server closes (the Docker driver's raw request, headers as pairs).
async fn unix_request(
    socket: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    idle: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let lines: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    super::docker::unix_request_with(socket, method, path, &lines, idle).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ids_and_digests_are_read_from_output() {
        assert_eq!(step_image_id(" ---> 1a2b3c4d5e6f"), Some("1a2b3c4d5e6f"));
        assert_eq!(step_image_id("--> 0123456789ab"), Some("0123456789ab"));
        assert_eq!(step_image_id("--> ae07c151456"), Some("ae07c151456"), "Podman's short ids have 11 digits");
        assert_eq!(step_image_id(" ---> Running in 1a2b3c4d5e6f"), None);
        assert_eq!(step_image_id(" ---> Using cache"), None);
        assert_eq!(step_image_id("STEP 1/3: FROM x"), None);
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(pushed_digest(&format!("latest: digest: {digest} size: 528")), Some(digest));
        assert_eq!(pushed_digest("Pushed"), None);
    }

    #[test]
    fn base64_matches_the_reference_encoding() {
        for (input, std, url) in
            [("", "", ""), ("f", "Zg==", "Zg=="), ("fo", "Zm8=", "Zm8="), ("foo", "Zm9v", "Zm9v"), ("u:p?>>", "dTpwPz4+", "dTpwPz4-")]
        {
            assert_eq!(base64(input.as_bytes()), std, "{input}");
            assert_eq!(base64url(input.as_bytes()), url, "{input}");
        }
    }
}
