//! A minimal OCI distribution (registry v2) client over reqwest: manifests and blobs,
//! anonymous bearer tokens, plain HTTP for loopback and configured insecure registries;
//! and the platforms an image is built for, read from its manifest.
//!
//! Behind the `registry` cargo feature (the CLI does not link reqwest). The containerd
//! driver pulls client side with it (containerd 1.6 has no Transfer service); the control
//! plane reads image platforms with it, a hard filter for placement.

mod reference;

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use reference::{DOCKER_HUB, Reference};

/// Manifest media types Diplo understands, for the `Accept` header.
pub const MANIFEST_TYPES: &[&str] = &[MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST];
/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker image manifest, schema 2.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What went wrong talking to a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry does not have this repository or manifest: the image reference.
    #[error("image {0} not found")]
    NotFound(String),
    /// The registry refused access to the image (401 or 403): no credentials for it,
    /// wrong ones, or (on registries that answer so for anything unknown) no such
    /// image. The image reference; never the credentials.
    #[error("image {0}: unauthorized: the registry refused access (no credentials for it, or wrong ones)")]
    Unauthorized(String),
    /// The registry (or its token service) could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// Anything else: an unexpected answer, an invalid document.
    #[error("{0}")]
    Failed(String),
}

/// Result alias for registry calls.
pub type RegistryResult<T> = Result<T, RegistryError>;

/// Where images come from and where builds push them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registries (`host:port`) reached over plain HTTP. Loopback registries always are.
    pub insecure: Vec<String>,
    /// The cluster registry (`host:port`) builds push to, when there is one.
    pub cluster: Option<String>,
    /// Credentials by registry (`host:port`).
    pub credentials: BTreeMap<String, RegistryCredential>,
}

impl std::fmt::Debug for RegistryConfig {
    /// Names the registries that have credentials, never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("insecure", &self.insecure)
            .field("cluster", &self.cluster)
            .field("credentials_for", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredential {
    /// The user name only: a password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredential").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl RegistryConfig {
    /// Whether `registry` (`host:port`) is reached over plain HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
        host == "localhost" || host.starts_with("127.") || host == "[::1]" || self.insecure.iter().any(|r| r == registry)
    }

    /// The credentials for `registry` (`host:port`), if any were given.
    pub fn credential(&self, registry: &str) -> Option<&RegistryCredential> {
        self.credentials.get(registry)
    }

    /// The settings as sent to agents over their session.
    pub fn to_settings(&self) -> crate::pb::RegistrySettings {
        crate::pb::RegistrySettings {
            cluster_registry: self.cluster.clone().unwrap_or_default(),
            insecure: self.insecure.clone(),
            credentials: self
                .credentials
                .iter()
                .map(|(registry, credential)| crate::pb::RegistryCredential {
                    registry: registry.clone(),
                    username: credential.username.clone(),
                    password: credential.password.clone(),
                })
                .collect(),
        }
    }

    /// The settings an agent received: registry names that fail
    /// [`validate_registry_name`] and credentials without a user name or password are
    /// refused, naming the field (never its value beyond the registry name).
    pub fn from_settings(settings: crate::pb::RegistrySettings) -> Result<Self, RegistryNameError> {
        let cluster = match settings.cluster_registry.as_str() {
            "" => None,
            name => Some(validate_registry_name("registry.cluster_registry", name)?.to_owned()),
        };
        let mut insecure = Vec::with_capacity(settings.insecure.len());
        for name in &settings.insecure {
            insecure.push(validate_registry_name("registry.insecure", name)?.to_owned());
        }
        let mut credentials = BTreeMap::new();
        for credential in settings.credentials {
            validate_registry_name("registry.credentials.registry", &credential.registry)?;
            if credential.username.is_empty() || credential.username.len() > MAX_USERNAME_BYTES {
                return Err(RegistryNameError::new("registry.credentials.username", "must be 1 to 256 bytes"));
            }
            if credential.password.is_empty() || credential.password.len() > MAX_PASSWORD_BYTES {
                return Err(RegistryNameError::new("registry.credentials.password", "must be 1 to 4096 bytes"));
            }
            credentials.insert(credential.registry, RegistryCredential { username: credential.username, password: credential.password });
        }
        Ok(RegistryConfig { insecure, cluster, credentials })
    }
}

/// The longest registry user name accepted.
pub const MAX_USERNAME_BYTES: usize = 256;
/// The longest registry password (or token) accepted.
pub const MAX_PASSWORD_BYTES: usize = 4096;
/// The longest registry name (`host[:port]`) accepted.
pub const MAX_REGISTRY_NAME_BYTES: usize = 255;

/// A field that does not hold a valid registry setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct RegistryNameError {
    /// The field at fault (`registry`, `registry.insecure`, ...).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl RegistryNameError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        RegistryNameError { field, message: message.into() }
    }
}

/// Checks that `name` is a registry `host[:port]`: a DNS name or IPv4 address (or an
/// IPv6 address in brackets), an optional port 1-65535, no scheme, no path, no user
/// part, at most [`MAX_REGISTRY_NAME_BYTES`]. Returns it unchanged; `field` names the
/// culprit in the error.
pub fn validate_registry_name<'a>(field: &'static str, name: &'a str) -> Result<&'a str, RegistryNameError> {
    let bad = |message: &str| Err(RegistryNameError::new(field, message));
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > MAX_REGISTRY_NAME_BYTES {
        return bad("longer than 255 bytes");
    }
    if name.contains("://") {
        return bad("must be host[:port], without a scheme");
    }
    if name.contains('/') {
        return bad("must be host[:port], without a path");
    }
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else { return bad("an IPv6 address must be closed by ']'") };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("not a valid IPv6 address");
        }
        match after {
            "" => (None, None),
            port => match port.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return bad("must be host[:port]"),
            },
        }
    } else {
        match name.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(name), None),
        }
    };
    if let Some(port) = port
        && !(port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return bad("the port must be a number from 1 to 65535");
    }
    if let Some(host) = host {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return bad("must be host[:port] with a DNS name or IP address as host");
        }
    }
    Ok(name)
}

/// An OCI descriptor as found in manifests and indexes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:...`.
    pub digest: String,
    /// Bytes.
    pub size: i64,
    /// For index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The platform of an index entry, or of an image config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    #[serde(default)]
    pub architecture: String,
    /// `linux`.
    #[serde(default)]
    pub os: String,
    /// `v8`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest: its config and layers.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The image config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, Deserialize)]
pub struct Index {
    /// One entry per platform (and attestations).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// A manifest as fetched.
pub struct FetchedManifest {
    /// Its media type (from the response, else from the document).
    pub media_type: String,
    /// `sha256:...` of the bytes.
    pub digest: String,
    /// The document.
    pub bytes: Vec<u8>,
}

/// Where a manifest's platforms are: listed by an index, or in the config blob of a
/// single-platform manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestPlatforms {
    /// An index: its entries' platforms (attestations and duplicates left out).
    Listed(Vec<Platform>),
    /// A single manifest: the platform is in this config blob.
    InConfig(Descriptor),
}

/// The platforms an image is built for, with the digest of the manifest they were read
/// from (to tell later whether the tag moved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlatforms {
    /// `sha256:...` of the top-level manifest (index or single manifest).
    pub digest: String,
    /// Sorted, without duplicates.
    pub platforms: Vec<Platform>,
}

/// Whether `media_type` is an index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// Whether `media_type` is a single image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == MEDIA_OCI_MANIFEST || media_type == MEDIA_DOCKER_MANIFEST
}

/// Where the platforms of the manifest `bytes` (of type `media_type`, else guessed from
/// the document) are.
pub fn manifest_platforms(media_type: &str, bytes: &[u8]) -> RegistryResult<ManifestPlatforms> {
    let guessed;
    let media_type = if media_type.is_empty() {
        guessed = media_type_of_document(bytes).unwrap_or_default();
        guessed.as_str()
    } else {
        media_type
    };
    if is_index(media_type) {
        let index: Index = parse_json(bytes, "image index")?;
        let is_image = |d: &&Descriptor| d.media_type.is_empty() || is_manifest(&d.media_type) || is_index(&d.media_type);
        let mut platforms: Vec<Platform> = index
            .manifests
            .iter()
            .filter(is_image)
            .filter_map(|d| d.platform.clone())
            // BuildKit attestations are listed as `unknown/unknown`.
            .filter(|p| !p.os.is_empty() && !p.architecture.is_empty() && p.os != "unknown" && p.architecture != "unknown")
            .collect();
        platforms.sort();
        platforms.dedup();
        if platforms.is_empty() {
            return Err(RegistryError::Failed("the image index lists no platform".to_owned()));
        }
        return Ok(ManifestPlatforms::Listed(platforms));
    }
    if is_manifest(media_type) {
        let manifest: Manifest = parse_json(bytes, "image manifest")?;
        return Ok(ManifestPlatforms::InConfig(manifest.config));
    }
    Err(RegistryError::Failed(format!("unsupported manifest type {media_type:?}")))
}

/// The platform an image config file (`{"os", "architecture", "variant"?, ...}`) names.
pub fn config_platform(bytes: &[u8]) -> RegistryResult<Platform> {
    let platform: Platform = parse_json(bytes, "image config")?;
    if platform.os.is_empty() || platform.architecture.is_empty() {
        return Err(RegistryError::Failed("the image config names no os/architecture".to_owned()));
    }
    Ok(platform)
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> RegistryResult<T> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Failed(format!("invalid {what}: {e}")))
}

/// The largest manifest, token answer or image config read from a registry.
pub const MAX_DOCUMENT_BYTES: usize = 4 * 1024 * 1024;

/// How long a manifest, token or image config request may take in all (connecting,
/// waiting, reading the body), unless [`RegistryClient::with_request_timeout`] says.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a blob download may go without receiving anything (its total time depends
/// on its size, so it has no total limit).
pub const BLOB_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Redirects followed per request, at most.
const MAX_REDIRECTS: usize = 5;

/// Talks to registries.
///
/// What a registry (or anyone on its path) sends cannot steer the client elsewhere:
/// manifest and token requests follow redirects only on the same scheme, host and port,
/// blob downloads also to another host over HTTPS (registries send blobs from their
/// CDN) but never from HTTPS to plain HTTP; a token realm is used only over HTTPS or on
/// the registry's own host and port; documents are read up to [`MAX_DOCUMENT_BYTES`]
/// within [`REQUEST_TIMEOUT`]; and error messages give the status, never the body.
pub struct RegistryClient {
    http: reqwest::Client,
    blobs: reqwest::Client,
    /// Replaced whole by [`RegistryClient::set_config`]; each request reads it once.
    config: std::sync::RwLock<std::sync::Arc<RegistryConfig>>,
    request_timeout: Duration,
    /// How requests are authorised, by `registry/repository`.
    tokens: Mutex<HashMap<String, Auth>>,
}

/// Whether two URLs have the same scheme, host and port.
fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme() && a.host_str() == b.host_str() && a.port_or_known_default() == b.port_or_known_default()
}

/// Whether a redirect from `from` to `to` may be followed: same origin, or for blobs
/// (`cross_host`) any HTTPS URL reached without leaving HTTPS.
fn redirect_allowed(from: &reqwest::Url, to: &reqwest::Url, cross_host: bool) -> bool {
    same_origin(from, to) || (cross_host && to.scheme() == "https" && from.scheme() == "https")
}

fn redirect_policy(cross_host: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let allowed = attempt.previous().last().is_some_and(|from| redirect_allowed(from, attempt.url(), cross_host));
        if allowed {
            attempt.follow()
        } else {
            let to = attempt.url();
            let target = format!("{}://{}", to.scheme(), to.host_str().unwrap_or("?"));
            attempt.error(format!("refused to follow a redirect to {target}: another host or scheme than the registry's"))
        }
    })
}

impl RegistryClient {
    /// A client that says it is `user_agent`; `config` says which registries speak plain
    /// HTTP.
    pub fn new(config: RegistryConfig, user_agent: &str) -> RegistryResult<Self> {
        let build = |cross_host: bool| {
            reqwest::Client::builder()
                .use_rustls_tls()
                .connect_timeout(Duration::from_secs(15))
                .read_timeout(BLOB_STALL_TIMEOUT)
                .redirect(redirect_policy(cross_host))
                .user_agent(user_agent)
                .build()
                .map_err(|e| RegistryError::Failed(format!("cannot build the registry client: {e}")))
        };
        Ok(RegistryClient {
            http: build(false)?,
            blobs: build(true)?,
            config: std::sync::RwLock::new(std::sync::Arc::new(config)),
            request_timeout: REQUEST_TIMEOUT,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The same client with another total time limit for manifest, token and image
    /// config requests.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The settings in use now.
    pub fn config(&self) -> std::sync::Arc<RegistryConfig> {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Uses `config` from the next request on (new credentials, insecure registries);
    /// tokens obtained so far are dropped when it differs.
    pub fn set_config(&self, config: RegistryConfig) {
        let mut current = self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if **current != config {
            *current = std::sync::Arc::new(config);
            drop(current);
            if let Ok(mut tokens) = self.tokens.lock() {
                tokens.clear();
            }
        }
    }

    fn repository_url(&self, reference: &Reference) -> String {
        let scheme = if self.config().is_insecure(&reference.registry) { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", reference.api_host(), reference.repository)
    }

    /// Fetches the manifest `tag_or_digest` of `reference`'s repository. A missing
    /// repository or manifest is [`RegistryError::NotFound`].
    pub async fn manifest(&self, reference: &Reference, tag_or_digest: &str) -> RegistryResult<FetchedManifest> {
        let url = format!("{}/manifests/{tag_or_digest}", self.repository_url(reference));
        let response = self.request(Fetch::Document, reqwest::Method::GET, reference, &url, &MANIFEST_TYPES.join(", ")).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound(reference.to_string()));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(RegistryError::Unauthorized(reference.to_string()));
        }
        if !status.is_success() {
            return Err(unexpected_status(status, &url));
        }
        let header_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let bytes = read_bounded(response, &url).await?;
        let digest = sha256_digest(&bytes);
        if tag_or_digest.starts_with("sha256:") && tag_or_digest != digest {
            return Err(RegistryError::Failed(format!("manifest {tag_or_digest} from {url} has digest {digest}")));
        }
        let media_type = match header_type {
            Some(t) if MANIFEST_TYPES.contains(&t.as_str()) => t,
            _ => media_type_of_document(&bytes).unwrap_or_default(),
        };
        Ok(FetchedManifest { media_type, digest, bytes })
    }

    /// The digest of manifest `tag_or_digest`, from a `HEAD` request (which, unlike a
    /// `GET`, Docker Hub does not count against its pull limit); `None` when the
    /// registry does not say.
    pub async fn manifest_digest(&self, reference: &Reference, tag_or_digest: &str) -> RegistryResult<Option<String>> {
        let url = format!("{}/manifests/{tag_or_digest}", self.repository_url(reference));
        let response = self.request(Fetch::Document, reqwest::Method::HEAD, reference, &url, &MANIFEST_TYPES.join(", ")).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound(reference.to_string()));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(RegistryError::Unauthorized(reference.to_string()));
        }
        if !status.is_success() {
            return Err(RegistryError::Failed(format!("registry answered {status} for HEAD {url}")));
        }
        Ok(response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .filter(|d| d.starts_with("sha256:"))
            .map(str::to_owned))
    }

    /// Starts downloading blob `digest`; the caller reads the body.
    pub async fn blob(&self, reference: &Reference, digest: &str) -> RegistryResult<reqwest::Response> {
        self.blob_response(Fetch::Blob, reference, digest).await
    }

    /// Downloads blob `digest` whole, if it is no larger than [`MAX_DOCUMENT_BYTES`]
    /// (an image config), within the request time limit.
    pub async fn small_blob(&self, reference: &Reference, digest: &str) -> RegistryResult<Vec<u8>> {
        let url = format!("{}/blobs/{digest}", self.repository_url(reference));
        let response = self.blob_response(Fetch::SmallBlob, reference, digest).await?;
        read_bounded(response, &url).await
    }

    async fn blob_response(&self, fetch: Fetch, reference: &Reference, digest: &str) -> RegistryResult<reqwest::Response> {
        let url = format!("{}/blobs/{digest}", self.repository_url(reference));
        let response = self.request(fetch, reqwest::Method::GET, reference, &url, "*/*").await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(RegistryError::Failed(format!("blob {digest} of {reference} is missing from its registry")));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(RegistryError::Unauthorized(reference.to_string()));
        }
        if !status.is_success() {
            return Err(unexpected_status(status, &url));
        }
        Ok(response)
    }

    /// The platforms `reference` is built for: its index's entries, or its single
    /// manifest's config (`os`/`architecture`).
    pub async fn platforms(&self, reference: &Reference) -> RegistryResult<ImagePlatforms> {
        let fetched = self.manifest(reference, reference.manifest_reference()).await?;
        let platforms = match manifest_platforms(&fetched.media_type, &fetched.bytes)? {
            ManifestPlatforms::Listed(platforms) => platforms,
            ManifestPlatforms::InConfig(config) => {
                let bytes = self.small_blob(reference, &config.digest).await?;
                vec![config_platform(&bytes)?]
            }
        };
        Ok(ImagePlatforms { digest: fetched.digest, platforms })
    }

    /// A request with the cached authorization for the repository; on 401 with a
    /// challenge, authenticates and retries once: for `Bearer`, a token from the realm
    /// (with HTTP basic auth when there is a credential for the reference's registry,
    /// anonymous otherwise); for `Basic`, the credential itself. A credential is only
    /// ever sent for its own registry (`host:port` of the reference), to that registry's
    /// URLs and to the token realm it names (HTTPS, or its own origin); reqwest drops
    /// the `Authorization` header on a redirect to another host.
    async fn request(
        &self,
        fetch: Fetch,
        method: reqwest::Method,
        reference: &Reference,
        url: &str,
        accept: &str,
    ) -> RegistryResult<reqwest::Response> {
        let key = format!("{}/{}", reference.registry, reference.repository);
        let config = self.config();
        let credential = config.credential(&reference.registry);
        let cached = self.tokens.lock().ok().and_then(|tokens| tokens.get(&key).cloned());
        let cached = cached.filter(|auth| !matches!(auth, Auth::Basic) || credential.is_some());
        let response = self.send(fetch, method.clone(), url, accept, cached.as_ref(), credential).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            return Ok(response);
        };
        let auth = if is_scheme(&challenge, "basic") {
            if credential.is_none() {
                return Ok(response);
            }
            Auth::Basic
        } else {
            match self.fetch_token(&challenge, reference, url, credential).await? {
                Some(token) => Auth::Bearer(token),
                None => return Ok(response),
            }
        };
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key, auth.clone());
        }
        self.send(fetch, method, url, accept, Some(&auth), credential).await
    }

    async fn send(
        &self,
        fetch: Fetch,
        method: reqwest::Method,
        url: &str,
        accept: &str,
        auth: Option<&Auth>,
        credential: Option<&RegistryCredential>,
    ) -> RegistryResult<reqwest::Response> {
        let mut request = match fetch {
            Fetch::Document | Fetch::SmallBlob => {
                let client = if fetch == Fetch::SmallBlob { &self.blobs } else { &self.http };
                client.request(method, url).timeout(self.request_timeout)
            }
            Fetch::Blob => self.blobs.request(method, url),
        }
        .header(ACCEPT, accept);
        match (auth, credential) {
            (Some(Auth::Bearer(token)), _) => {
                if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    request = request.header(AUTHORIZATION, value);
                }
            }
            (Some(Auth::Basic), Some(credential)) => {
                request = request.basic_auth(&credential.username, Some(&credential.password));
            }
            _ => {}
        }
        request.send().await.map_err(|e| RegistryError::Unreachable(format!("cannot reach registry at {url}: {}", describe(&e))))
    }

    /// A token for a `Bearer realm=...,service=...,scope=...` challenge from the
    /// registry at `challenged` (a URL), asked with HTTP basic auth when `credential`
    /// is given, anonymously otherwise; `None` for other schemes. A realm that is
    /// neither HTTPS nor on the registry's own host and port is refused.
    async fn fetch_token(
        &self,
        challenge: &str,
        reference: &Reference,
        challenged: &str,
        credential: Option<&RegistryCredential>,
    ) -> RegistryResult<Option<String>> {
        if !is_scheme(challenge, "bearer") {
            return Ok(None);
        }
        let params = parse_challenge(&challenge[challenge.find(' ').map_or(challenge.len(), |at| at + 1)..]);
        let Some(realm) = params.get("realm") else { return Ok(None) };
        realm_allowed(realm, challenged)?;
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", reference.repository));
        let mut query = vec![("scope", scope)];
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        let mut request = self.http.get(realm).query(&query).timeout(self.request_timeout);
        if let Some(credential) = credential {
            request = request.basic_auth(&credential.username, Some(&credential.password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Unreachable(format!("cannot reach token service {realm}: {}", describe(&e))))?;
        if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(RegistryError::Unauthorized(reference.to_string()));
        }
        if !response.status().is_success() {
            return Ok(None);
        }
        let bytes = read_bounded(response, realm).await?;
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| RegistryError::Failed(format!("the token service {realm} answered no JSON")))?;
        Ok(body.get("token").or_else(|| body.get("access_token")).and_then(|t| t.as_str()).map(str::to_owned))
    }
}

/// How a repository's requests are authorised once challenged.
#[derive(Clone)]
enum Auth {
    /// A bearer token from the realm.
    Bearer(String),
    /// HTTP basic auth with the registry's credential.
    Basic,
}

/// Whether the `WWW-Authenticate` value `challenge` uses `scheme` (lower case).
fn is_scheme(challenge: &str, scheme: &str) -> bool {
    challenge.split_whitespace().next().is_some_and(|first| first.eq_ignore_ascii_case(scheme))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The media type a manifest document declares, or guesses from its shape.
pub fn media_type_of_document(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if let Some(t) = value.get("mediaType").and_then(|t| t.as_str()) {
        return Some(t.to_owned());
    }
    if value.get("manifests").is_some() {
        Some(MEDIA_OCI_INDEX.to_owned())
    } else if value.get("layers").is_some() {
        Some(MEDIA_OCI_MANIFEST.to_owned())
    } else {
        None
    }
}

fn parse_challenge(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        rest = after.trim_start_matches(',').trim();
    }
    out
}

/// Which client and time limit a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// A manifest or token: same-origin redirects, total time limit.
    Document,
    /// An image config: redirects as for blobs, total time limit.
    SmallBlob,
    /// A layer, streamed by the caller: redirects to HTTPS hosts, stall limit only.
    Blob,
}

/// A token realm may be used over HTTPS, or on the registry's own scheme, host and
/// port (a plain-HTTP registry serving its own tokens).
fn realm_allowed(realm: &str, challenged: &str) -> RegistryResult<()> {
    let refused = || RegistryError::Failed("refused the registry's token realm: neither HTTPS nor the registry's own host".to_owned());
    let realm = reqwest::Url::parse(realm).map_err(|_| refused())?;
    if realm.scheme() == "https" {
        return Ok(());
    }
    match reqwest::Url::parse(challenged) {
        Ok(registry) if same_origin(&realm, &registry) => Ok(()),
        _ => Err(refused()),
    }
}

/// The error for an unexpected answer: its status and the URL asked, never the body
/// (which the registry, or whatever answered in its place, chose).
fn unexpected_status(status: StatusCode, url: &str) -> RegistryError {
    RegistryError::Failed(format!("registry answered {status} for {url}"))
}

/// The body of `response`, refused beyond [`MAX_DOCUMENT_BYTES`] (as announced or as read).
async fn read_bounded(mut response: reqwest::Response, url: &str) -> RegistryResult<Vec<u8>> {
    let too_large = || RegistryError::Failed(format!("the answer for {url} is larger than {MAX_DOCUMENT_BYTES} bytes"));
    if response.content_length().is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| RegistryError::Unreachable(format!("reading {url}: {}", describe(&e))))? {
        if bytes.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A short sentence for a transport error: the OS error for connection failures
/// (`connection refused`), else the error with its innermost cause.
fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut innermost: &(dyn StdError + 'static) = error;
    let mut io: Option<&std::io::Error> = None;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<std::io::Error>() {
            io = Some(found);
        }
        innermost = e;
        current = e.source();
    }
    if let Some(io) = io {
        let text = io.to_string();
        let text = text.find(" (os error").map_or(text.as_str(), |at| &text[..at]);
        let mut chars = text.chars();
        return match chars.next() {
            Some(first) => first.to_lowercase().chain(chars).collect(),
            None => format!("{:?}", io.kind()),
        };
    }
    let outer = error.to_string();
    let inner = innermost.to_string();
    if std::ptr::addr_eq(innermost, error) || outer.contains(&inner) { outer } else { format!("{outer}: {inner}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse() {
        let p =
            parse_challenge(r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#);
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let p = parse_challenge("realm=http://x/token, service=x");
        assert_eq!(p["realm"], "http://x/token");
        assert_eq!(p["service"], "x");
    }

    #[test]
    fn documents_tell_their_type() {
        assert_eq!(media_type_of_document(br#"{"manifests":[]}"#).as_deref(), Some(MEDIA_OCI_INDEX));
        assert_eq!(media_type_of_document(br#"{"mediaType":"x","layers":[]}"#).as_deref(), Some("x"));
        assert_eq!(sha256_digest(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        let config = RegistryConfig { insecure: vec!["registry.lan:5000".to_owned()], ..Default::default() };
        for insecure in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000", "registry.lan:5000"] {
            assert!(config.is_insecure(insecure), "{insecure}");
        }
        for secure in ["docker.io", "registry.lan:5001", "ghcr.io"] {
            assert!(!config.is_insecure(secure), "{secure}");
        }
    }

    fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
        Platform { os: os.to_owned(), architecture: architecture.to_owned(), variant: variant.map(str::to_owned) }
    }

    #[test]
    fn an_index_lists_its_platforms() {
        // A BuildKit multi-platform index with an attestation entry and a duplicate arch.
        let index = br#"{
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:a", "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:b", "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:c", "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:d", "size": 1,
                 "platform": {"architecture": "unknown", "os": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
            ]
        }"#;
        let expected = vec![platform("linux", "amd64", None), platform("linux", "arm64", Some("v8"))];
        assert_eq!(manifest_platforms(MEDIA_OCI_INDEX, index), Ok(ManifestPlatforms::Listed(expected.clone())));
        // Without a media type (header or field), the shape tells.
        let bare = String::from_utf8_lossy(index).replace(r#""mediaType": "application/vnd.oci.image.index.v1+json","#, "");
        assert_eq!(manifest_platforms("", bare.as_bytes()), Ok(ManifestPlatforms::Listed(expected)));
        // A Docker manifest list says the same.
        let list = br#"{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": "sha256:e", "size": 1,
                           "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}}]}"#;
        assert_eq!(manifest_platforms(MEDIA_DOCKER_LIST, list), Ok(ManifestPlatforms::Listed(vec![platform("linux", "arm", Some("v7"))])));
        // An index that names no platform tells nothing.
        assert!(manifest_platforms(MEDIA_OCI_INDEX, br#"{"manifests": []}"#).is_err());
    }

    #[test]
    fn a_single_manifest_has_its_platform_in_its_config() {
        // The local test registry's busybox: a Docker schema 2 manifest.
        let manifest = br#"{
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 936,
                       "digest": "sha256:7fe57be400581843a15268822eae44a9ed52e8fb6191860768e97b22c3265f94"},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1069425,
                        "digest": "sha256:af632fc703b9104e1198e53443b93c3eb4f0028f1646234f868c247ce62be4bb"}]
        }"#;
        let Ok(ManifestPlatforms::InConfig(config)) = manifest_platforms(MEDIA_DOCKER_MANIFEST, manifest) else {
            panic!("a single manifest points at its config");
        };
        assert_eq!(config.digest, "sha256:7fe57be400581843a15268822eae44a9ed52e8fb6191860768e97b22c3265f94");
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(config_platform(config), Ok(platform("linux", "amd64", None)));
        let config = br#"{"architecture":"arm64","variant":"v8","os":"linux"}"#;
        assert_eq!(config_platform(config), Ok(platform("linux", "arm64", Some("v8"))));
        assert!(config_platform(br#"{"config":{}}"#).is_err());
        assert!(manifest_platforms("application/vnd.example", b"{}").is_err());
    }

    /// A canned HTTP/1.1 server on 127.0.0.1: `answer(path)` gives status line, extra
    /// headers and body for each request; every request's path is recorded.
    struct Server {
        addr: std::net::SocketAddr,
        hits: std::sync::Arc<Mutex<Vec<String>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn server(answer: impl Fn(&str) -> Option<(String, Vec<u8>)> + Send + Sync + 'static) -> Server {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = std::sync::Arc::new(Mutex::new(Vec::new()));
        let answer = std::sync::Arc::new(answer);
        let recorded = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (answer, recorded) = (answer.clone(), recorded.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    recorded.lock().expect("hits").push(path.clone());
                    // `None`: hold the connection open and say nothing.
                    let Some((head, body)) = answer(&path) else {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    };
                    let mut response = format!("{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
                    response.extend_from_slice(&body);
                    let _ = tcp.write_all(&response).await;
                });
            }
        });
        Server { addr, hits, task }
    }

    fn reference(addr: std::net::SocketAddr) -> Reference {
        Reference::parse(&format!("{addr}/diplo/test:latest")).expect("reference")
    }

    fn client() -> RegistryClient {
        RegistryClient::new(RegistryConfig::default(), "diplo-test").expect("client")
    }

    const INDEX: &str = r#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"architecture":"arm64","os":"linux"}}]}"#;

    fn ok_index() -> Option<(String, Vec<u8>)> {
        Some((format!("HTTP/1.1 200 OK\r\ncontent-type: {MEDIA_OCI_INDEX}"), INDEX.as_bytes().to_vec()))
    }

    #[tokio::test]
    async fn a_redirect_to_another_host_is_not_followed() {
        let elsewhere = server(|_| ok_index()).await;
        let target = format!("http://{}/v2/diplo/test/manifests/latest", elsewhere.addr);
        let registry = server(move |_| Some((format!("HTTP/1.1 302 Found\r\nlocation: {target}"), Vec::new()))).await;
        let err = client().platforms(&reference(registry.addr)).await.expect_err("refused");
        assert!(err.to_string().contains("redirect"), "{err}");
        assert!(elsewhere.hits.lock().expect("hits").is_empty(), "the other host was contacted");
        // A redirect on the registry's own host is followed.
        let own = server(|path| {
            if path.ends_with("/latest") {
                Some(("HTTP/1.1 307 Temporary Redirect\r\nlocation: /v2/diplo/test/manifests/moved".to_owned(), Vec::new()))
            } else {
                ok_index()
            }
        })
        .await;
        let platforms = client().platforms(&reference(own.addr)).await.expect("same-host redirect followed");
        assert_eq!(platforms.platforms, vec![platform("linux", "arm64", None)]);
    }

    #[test]
    fn blobs_may_come_from_another_https_host_only() {
        let url = |u: &str| reqwest::Url::parse(u).expect("url");
        assert!(redirect_allowed(&url("https://r.io/v2/x"), &url("https://r.io/blob"), false));
        assert!(!redirect_allowed(&url("https://r.io/v2/x"), &url("https://cdn.io/blob"), false));
        assert!(!redirect_allowed(&url("https://r.io/v2/x"), &url("https://r.io:8443/blob"), false));
        assert!(!redirect_allowed(&url("https://r.io/v2/x"), &url("http://r.io/blob"), false));
        assert!(redirect_allowed(&url("https://r.io/v2/x"), &url("https://cdn.io/blob"), true));
        assert!(!redirect_allowed(&url("https://r.io/v2/x"), &url("http://cdn.io/blob"), true));
        assert!(!redirect_allowed(&url("http://127.0.0.1:5000/v2/x"), &url("https://169.254.169.254/"), true));
    }

    #[tokio::test]
    async fn a_token_realm_over_plain_http_on_another_host_is_refused() {
        let tokens = server(|_| Some(("HTTP/1.1 200 OK\r\ncontent-type: application/json".to_owned(), br#"{"token":"t"}"#.to_vec()))).await;
        let realm = format!("http://{}/token", tokens.addr);
        let registry = server(move |_| {
            Some((format!("HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"{realm}\",service=\"r\""), Vec::new()))
        })
        .await;
        let err = client().platforms(&reference(registry.addr)).await.expect_err("refused");
        assert!(err.to_string().contains("token realm"), "{err}");
        assert!(tokens.hits.lock().expect("hits").is_empty(), "the token service was contacted");

        // The registry's own host may serve tokens over plain HTTP.
        let own = server(|path| {
            if path.starts_with("/token") {
                Some(("HTTP/1.1 200 OK\r\ncontent-type: application/json".to_owned(), br#"{"token":"t"}"#.to_vec()))
            } else {
                None
            }
        })
        .await;
        let realm = format!("http://{}/token", own.addr);
        let registry =
            server(move |_| Some((format!("HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"{realm}\""), Vec::new()))).await;
        // Not the same origin as the registry (another port): refused as well.
        assert!(client().platforms(&reference(registry.addr)).await.is_err());
        assert!(realm_allowed(&format!("http://{}/token", registry.addr), &format!("http://{}/v2/x/manifests/y", registry.addr)).is_ok());
        assert!(realm_allowed("https://auth.example/token", "http://127.0.0.1:5000/v2/x").is_ok());
        assert!(realm_allowed("http://auth.example/token", "https://auth.example/v2/x").is_err());
        assert!(realm_allowed("file:///etc/passwd", "http://127.0.0.1:5000/v2/x").is_err());
    }

    #[tokio::test]
    async fn error_messages_do_not_echo_the_body() {
        let registry = server(|_| Some(("HTTP/1.1 500 Internal Server Error".to_owned(), b"SECRET-INTERNAL-PAGE <html>".to_vec()))).await;
        let err = client().platforms(&reference(registry.addr)).await.expect_err("failed");
        let text = err.to_string();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("500"), "{text}");
    }

    #[tokio::test]
    async fn oversized_documents_and_silent_registries_are_cut_off() {
        let big =
            server(|_| Some((format!("HTTP/1.1 200 OK\r\ncontent-type: {MEDIA_OCI_INDEX}"), vec![b' '; MAX_DOCUMENT_BYTES + 1]))).await;
        let err = client().platforms(&reference(big.addr)).await.expect_err("too large");
        assert!(err.to_string().contains("larger than"), "{err}");

        let silent = server(|_| None).await;
        let started = std::time::Instant::now();
        let client = client().with_request_timeout(Duration::from_millis(500));
        assert!(client.platforms(&reference(silent.addr)).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
    }
    fn credentials_for(registry: &str, password: &str) -> RegistryConfig {
        let mut config = RegistryConfig::default();
        config.credentials.insert(registry.to_owned(), RegistryCredential { username: "alice".to_owned(), password: password.to_owned() });
        config
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let mut config = credentials_for("r.example:5000", "hunter2-SECRET");
        config.cluster = Some("r.example:5000".to_owned());
        let text = format!("{config:?} {:?}", config.credentials["r.example:5000"]);
        assert!(!text.contains("hunter2-SECRET"), "{text}");
        assert!(text.contains("r.example:5000") && text.contains("alice"), "{text}");
    }

    #[test]
    fn settings_convert_both_ways_and_bad_ones_name_the_field() {
        let mut config = credentials_for("r.example:5000", "pw");
        config.cluster = Some("r.example:5000".to_owned());
        config.insecure = vec!["lan:5000".to_owned()];
        let settings = config.to_settings();
        assert_eq!(settings.cluster_registry, "r.example:5000");
        assert_eq!(settings.credentials.len(), 1);
        assert_eq!(RegistryConfig::from_settings(settings.clone()), Ok(config));
        assert_eq!(RegistryConfig::from_settings(crate::pb::RegistrySettings::default()), Ok(RegistryConfig::default()));

        let mut bad = settings.clone();
        bad.credentials[0].registry = "https://r.example".to_owned();
        assert_eq!(RegistryConfig::from_settings(bad).map_err(|e| e.field), Err("registry.credentials.registry"));
        let mut bad = settings.clone();
        bad.credentials[0].password = String::new();
        let err = RegistryConfig::from_settings(bad).expect_err("empty password");
        assert_eq!(err.field, "registry.credentials.password");
        let mut bad = settings.clone();
        bad.credentials[0].username = String::new();
        assert_eq!(RegistryConfig::from_settings(bad).map_err(|e| e.field), Err("registry.credentials.username"));
        let mut bad = settings.clone();
        bad.insecure = vec!["a b".to_owned()];
        assert_eq!(RegistryConfig::from_settings(bad).map_err(|e| e.field), Err("registry.insecure"));
        let mut bad = settings;
        bad.cluster_registry = "r/x".to_owned();
        assert_eq!(RegistryConfig::from_settings(bad).map_err(|e| e.field), Err("registry.cluster_registry"));
    }

    #[test]
    fn registry_names_are_host_and_port_only() {
        for good in ["127.0.0.1:5000", "localhost", "registry.example.com", "r-1.lan:443", "[::1]:5000", "[fe80::1]", "ghcr.io"] {
            assert_eq!(validate_registry_name("registry", good), Ok(good), "{good}");
        }
        let long = format!("{}.com", "a.".repeat(130));
        for bad in [
            "",
            "https://r.example",
            "r.example/path",
            "r.example:0",
            "r.example:65536",
            "r.example:port",
            "user@r.example",
            "-r.example",
            "r..example",
            "r.example:",
            "[::1",
            "[nope]:5000",
            "a b",
            long.as_str(),
        ] {
            let err = validate_registry_name("registry", bad).expect_err(bad);
            assert_eq!(err.field, "registry", "{bad}");
        }
    }

    /// The `Authorization` header of each request, by path.
    type Seen = std::sync::Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// A registry on 127.0.0.1 that wants `Authorization: expected` on `/v2/` paths and
    /// challenges with `challenge`; `/token` answers a token only to basic auth
    /// `alice:pw`. Records every request's path and `Authorization` header.
    async fn auth_server(challenge: impl Fn(std::net::SocketAddr) -> String + Send + Sync + 'static, expected: String) -> (Server, Seen) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let challenge = std::sync::Arc::new(challenge(addr));
        let expected = std::sync::Arc::new(expected);
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (recorded, challenge, expected) = (recorded.clone(), challenge.clone(), expected.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let authorization = head
                        .lines()
                        .find_map(|line| line.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("authorization")))
                        .map(|(_, v)| v.trim().to_owned());
                    recorded.lock().expect("seen").push((path.clone(), authorization.clone()));
                    let basic = format!("Basic {}", base64_encode(b"alice:pw"));
                    let (head, body) = if path.starts_with("/token") {
                        if authorization.as_deref() == Some(basic.as_str()) {
                            ("HTTP/1.1 200 OK\r\ncontent-type: application/json".to_owned(), br#"{"token":"T0KEN"}"#.to_vec())
                        } else {
                            ("HTTP/1.1 401 Unauthorized".to_owned(), Vec::new())
                        }
                    } else if authorization.as_deref() == Some(expected.as_str()) {
                        (format!("HTTP/1.1 200 OK\r\ncontent-type: {MEDIA_OCI_INDEX}"), INDEX.as_bytes().to_vec())
                    } else {
                        (format!("HTTP/1.1 401 Unauthorized\r\nwww-authenticate: {challenge}"), Vec::new())
                    };
                    let mut response = format!("{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()).into_bytes();
                    response.extend_from_slice(&body);
                    let _ = tcp.write_all(&response).await;
                });
            }
        });
        (Server { addr, hits: std::sync::Arc::new(Mutex::new(Vec::new())), task }, seen)
    }

    fn base64_encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn basic_challenges_are_answered_with_the_registry_credential() {
        let expected = format!("Basic {}", base64_encode(b"alice:pw"));
        let (registry, seen) = auth_server(|_| "Basic realm=\"test\"".to_owned(), expected).await;
        let with = RegistryClient::new(credentials_for(&registry.addr.to_string(), "pw"), "diplo-test").expect("client");
        let platforms = with.platforms(&reference(registry.addr)).await.expect("authorised");
        assert_eq!(platforms.platforms, vec![platform("linux", "arm64", None)]);

        let err = client().platforms(&reference(registry.addr)).await.expect_err("no credential");
        assert!(matches!(&err, RegistryError::Unauthorized(image) if image.contains("diplo/test")), "{err:?}");
        assert!(err.to_string().contains("unauthorized"), "{err}");
        let wrong = RegistryClient::new(credentials_for(&registry.addr.to_string(), "nope"), "diplo-test").expect("client");
        let err = wrong.platforms(&reference(registry.addr)).await.expect_err("wrong credential");
        assert!(!err.to_string().contains("nope"), "{err}");
        assert!(seen.lock().expect("seen").iter().any(|(_, auth)| auth.is_none()), "the first request goes without credentials");
    }

    #[tokio::test]
    async fn bearer_challenges_get_a_token_with_the_credential() {
        let (registry, seen) = auth_server(
            |addr| format!("Bearer realm=\"http://{addr}/token\",service=\"test\",scope=\"repository:diplo/test:pull\""),
            "Bearer T0KEN".to_owned(),
        )
        .await;
        let with = RegistryClient::new(credentials_for(&registry.addr.to_string(), "pw"), "diplo-test").expect("client");
        with.platforms(&reference(registry.addr)).await.expect("authorised");
        // The token is kept: a second look-up asks no token again.
        with.platforms(&reference(registry.addr)).await.expect("authorised");
        let tokens = seen.lock().expect("seen").iter().filter(|(path, _)| path.starts_with("/token")).count();
        assert_eq!(tokens, 1);
        // Anonymous: the token service refuses, and the error says so.
        let err = client().platforms(&reference(registry.addr)).await.expect_err("anonymous");
        assert!(err.to_string().contains("unauthorized"), "{err}");
        // Credentials that change are used from the next request on.
        let later = client();
        later.set_config(credentials_for(&registry.addr.to_string(), "pw"));
        later.platforms(&reference(registry.addr)).await.expect("authorised after set_config");
    }

    #[tokio::test]
    async fn a_credential_is_never_sent_to_another_registry() {
        let (other, seen) = auth_server(|_| "Basic realm=\"other\"".to_owned(), "never".to_owned()).await;
        // A credential for some registry, and one for another port of the same host.
        let mut config = credentials_for("r.example:5000", "pw");
        config.credentials.insert(
            format!("127.0.0.1:{}", other.addr.port() ^ 1),
            RegistryCredential { username: "bob".to_owned(), password: "pw2".to_owned() },
        );
        let client = RegistryClient::new(config, "diplo-test").expect("client");
        assert!(client.platforms(&reference(other.addr)).await.is_err());
        let requests = seen.lock().expect("seen").clone();
        assert!(!requests.is_empty());
        assert!(requests.iter().all(|(_, auth)| auth.is_none()), "{requests:?}");

        // A bearer realm on another host over plain HTTP gets nothing either.
        let (tokens, token_hits) = auth_server(|_| "Basic realm=\"x\"".to_owned(), "never".to_owned()).await;
        let realm = format!("http://{}/token", tokens.addr);
        let registry =
            server(move |_| Some((format!("HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"{realm}\""), Vec::new()))).await;
        let client = RegistryClient::new(credentials_for(&registry.addr.to_string(), "pw"), "diplo-test").expect("client");
        assert!(client.platforms(&reference(registry.addr)).await.is_err());
        assert!(token_hits.lock().expect("seen").is_empty(), "the foreign realm was contacted");
    }
}
