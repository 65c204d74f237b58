//! A minimal OCI distribution (registry v2) client over reqwest: manifests and blobs,
//! anonymous bearer tokens, plain HTTP for loopback and configured insecure registries.
//! containerd 1.6 has no Transfer service, so Diplo pulls client side with this.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use sha2::{Digest, Sha256};

use super::reference::Reference;
use super::{failed, not_found_image};
use crate::runtime::{RegistryConfig, RuntimeResult};

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

/// A manifest as fetched.
pub struct FetchedManifest {
    /// Its media type (from the response, else from the document).
    pub media_type: String,
    /// `sha256:...` of the bytes.
    pub digest: String,
    /// The document.
    pub bytes: Vec<u8>,
}

/// Talks to registries.
pub struct RegistryClient {
    http: reqwest::Client,
    config: RegistryConfig,
    /// Bearer tokens by `registry/repository`.
    tokens: Mutex<HashMap<String, String>>,
}

impl RegistryClient {
    /// A client; `config` says which registries speak plain HTTP.
    pub fn new(config: RegistryConfig) -> RuntimeResult<Self> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("diplo-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| failed(format!("cannot build the registry client: {e}")))?;
        Ok(RegistryClient { http, config, tokens: Mutex::new(HashMap::new()) })
    }

    fn repository_url(&self, reference: &Reference) -> String {
        let scheme = if self.config.is_insecure(&reference.registry) { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", reference.api_host(), reference.repository)
    }

    /// Fetches the manifest `tag_or_digest` of `reference`'s repository. A missing
    /// repository or manifest is `NotFound { what: "image" }`.
    pub async fn manifest(&self, reference: &Reference, tag_or_digest: &str) -> RuntimeResult<FetchedManifest> {
        let url = format!("{}/manifests/{tag_or_digest}", self.repository_url(reference));
        let response = self.get(reference, &url, &MANIFEST_TYPES.join(", ")).await?;
        let status = response.status();
        if matches!(status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(not_found_image(&reference.to_string()));
        }
        if !status.is_success() {
            return Err(failed(format!("registry answered {status} for {url}: {}", body_text(response).await)));
        }
        let header_type =
            response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let bytes = response.bytes().await.map_err(|e| failed(format!("reading {url}: {e}")))?.to_vec();
        let digest = sha256_digest(&bytes);
        if tag_or_digest.starts_with("sha256:") && tag_or_digest != digest {
            return Err(failed(format!("manifest {tag_or_digest} from {url} has digest {digest}")));
        }
        let media_type = match header_type {
            Some(t) if MANIFEST_TYPES.contains(&t.as_str()) => t,
            _ => media_type_of_document(&bytes).unwrap_or_default(),
        };
        Ok(FetchedManifest { media_type, digest, bytes })
    }

    /// Starts downloading blob `digest`; the caller reads the body.
    pub async fn blob(&self, reference: &Reference, digest: &str) -> RuntimeResult<reqwest::Response> {
        let url = format!("{}/blobs/{digest}", self.repository_url(reference));
        let response = self.get(reference, &url, "*/*").await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(failed(format!("blob {digest} of {reference} is missing from its registry")));
        }
        if !status.is_success() {
            return Err(failed(format!("registry answered {status} for {url}: {}", body_text(response).await)));
        }
        Ok(response)
    }

    /// GET with the cached token; on 401 with a bearer challenge, fetches an anonymous
    /// token and retries once.
    async fn get(&self, reference: &Reference, url: &str, accept: &str) -> RuntimeResult<reqwest::Response> {
        let key = format!("{}/{}", reference.registry, reference.repository);
        let token = self.tokens.lock().ok().and_then(|tokens| tokens.get(&key).cloned());
        let response = self.send(url, accept, token.as_deref()).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            return Ok(response);
        };
        let Some(token) = self.fetch_token(&challenge, reference).await? else {
            return Ok(response);
        };
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key, token.clone());
        }
        self.send(url, accept, Some(&token)).await
    }

    async fn send(&self, url: &str, accept: &str, token: Option<&str>) -> RuntimeResult<reqwest::Response> {
        let mut request = self.http.get(url).header(ACCEPT, accept);
        if let Some(token) = token
            && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            request = request.header(AUTHORIZATION, value);
        }
        request.send().await.map_err(|e| failed(format!("cannot reach registry at {url}: {}", describe(&e))))
    }

    /// Anonymous token for a `Bearer realm=...,service=...,scope=...` challenge; `None`
    /// for other schemes (Basic needs credentials Diplo does not have).
    async fn fetch_token(&self, challenge: &str, reference: &Reference) -> RuntimeResult<Option<String>> {
        let Some(params) = challenge.strip_prefix("Bearer ").or_else(|| challenge.strip_prefix("bearer ")) else {
            return Ok(None);
        };
        let params = parse_challenge(params);
        let Some(realm) = params.get("realm") else { return Ok(None) };
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", reference.repository));
        let mut query = vec![("scope", scope)];
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        let response = self
            .http
            .get(realm)
            .query(&query)
            .send()
            .await
            .map_err(|e| failed(format!("cannot reach token service {realm}: {}", describe(&e))))?;
        if !response.status().is_success() {
            return Ok(None);
        }
        let body: serde_json::Value = response.json().await.map_err(|e| failed(format!("token from {realm}: {e}")))?;
        Ok(body.get("token").or_else(|| body.get("access_token")).and_then(|t| t.as_str()).map(str::to_owned))
    }
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

async fn body_text(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let text = text.trim();
    if text.chars().count() > 300 { format!("{}...", text.chars().take(300).collect::<String>()) } else { text.to_owned() }
}

fn describe(error: &reqwest::Error) -> String {
    crate::runtime::docker::describe_error(error)
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
}
