//! Docker Engine, through its API socket (bollard). The driver and the probe are shared
//! with Podman, whose service speaks the same Docker-compatible API.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ImportImageOptions, LogsOptions, RemoveContainerOptions, RemoveImageOptions,
    RestartContainerOptions, StartContainerOptions, StatsOptions, StopContainerOptions, TagImageOptions,
};
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStats, ExecOutput, LABEL_INSTANCE, LogChunk, LogOptions, OutputStream, PortMapping, Protocol,
    RuntimeEvent, validate_container_name,
};
use diplo_api::fingerprint::RuntimeReport;
use diplo_api::runtime::Runtime;
use futures::{StreamExt, TryStreamExt};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tracing::{debug, warn};

use super::docker_api::{self, ArchiveKind, ImageRef, Inspected, Listed};
use super::{ContainerRuntime, RuntimeError, RuntimeResult, RuntimeStream};
use crate::registry::SharedRegistry;
use base64::Engine as _;
use bollard::auth::DockerCredentials;
use diplo_api::resources::{ImageInfo, NetworkInfo, NetworkSpec, PruneReport, VolumeInfo, VolumeSpec};

mod resources;

/// Probes the Docker daemon on `socket` (a path, or `unix://path`): available when the
/// daemon answers `/version` within `timeout`; `version` is the server's version string.
pub async fn probe(socket: &str, timeout: Duration) -> RuntimeReport {
    probe_docker_api(Runtime::Docker, socket, timeout).await
}

/// Probes any daemon speaking the Docker Engine API on a unix socket and reports it as
/// `runtime`. The API version is negotiated down to what the daemon offers (Docker 20.10
/// and Podman 4.3 speak 1.41; bollard 0.21 defaults to 1.53). `rootless` comes from the
/// daemon's `/info` security options, best effort.
pub(crate) async fn probe_docker_api(runtime: Runtime, socket: &str, timeout: Duration) -> RuntimeReport {
    let endpoint = socket.strip_prefix("unix://").unwrap_or(socket).to_owned();
    let mut report = RuntimeReport {
        runtime,
        available: false,
        version: String::new(),
        endpoint: endpoint.clone(),
        error: String::new(),
        rootless: false,
    };
    match tokio::time::timeout(timeout, query(&endpoint, timeout)).await {
        Ok(Ok((version, rootless))) => {
            report.available = true;
            report.version = version;
            report.rootless = rootless;
        }
        Ok(Err(error)) => report.error = format!("no answer from {endpoint}: {error}"),
        Err(_) => report.error = format!("no answer from {endpoint} within {}", describe_timeout(timeout)),
    }
    report
}

/// Connects, negotiates, asks `/version` and (best effort) `/info`.
async fn query(socket: &str, timeout: Duration) -> Result<(String, bool), String> {
    let seconds = timeout.as_secs().max(1);
    let docker = Docker::connect_with_unix(socket, seconds, bollard::API_DEFAULT_VERSION).map_err(|e| describe_bollard(&e))?;
    let docker = docker.negotiate_version().await.map_err(|e| describe_bollard(&e))?;
    let version = docker.version().await.map_err(|e| describe_bollard(&e))?;
    let rootless = match docker.info().await {
        Ok(info) => info.security_options.unwrap_or_default().iter().any(|option| option.contains("name=rootless")),
        Err(error) => {
            debug!(socket, error = %describe_bollard(&error), "cannot read /info; assuming not rootless");
            false
        }
    };
    let version = version.version.filter(|v| !v.is_empty()).or(version.api_version).unwrap_or_default();
    Ok((version, rootless))
}

/// How long a request may wait for the daemon's answer. Streams (logs, events, pulls)
/// are not limited once they have started; a stop may take its grace period on top.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a Podman pull may go without a byte from the service.
const PULL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an exec's exit code may take to appear after its output ended.
const EXEC_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A container runtime speaking the Docker Engine API on a unix socket: Docker itself,
/// or Podman's Docker-compatible service (see [`super::podman::connect`]).
///
/// Containers it creates carry Diplo's labels (`diplo.instance`, defaulting to the
/// container name; `diplo.deployment`, defaulting to `direct`; `diplo.node` when set
/// with [`DockerRuntime::with_node`]). Every other operation first checks that its
/// container carries `diplo.instance` and answers [`RuntimeError::NotFound`] for any
/// other container, so Diplo never touches containers it did not create.
#[derive(Debug)]
pub struct DockerRuntime {
    runtime: Runtime,
    socket: String,
    registry: SharedRegistry,
    node: Option<String>,
    client: OnceCell<Docker>,
}

impl DockerRuntime {
    /// A runtime for the daemon on `socket` (a path, or `unix://path`), reported as
    /// `runtime` ([`Runtime::Docker`] or [`Runtime::Podman`]). Nothing is sent yet: the
    /// first operation connects and negotiates the API version down to the daemon's
    /// (Docker 20.10 and Podman 4.3 speak 1.41, bollard defaults to a newer one); while
    /// the daemon cannot be reached, operations fail with [`RuntimeError::Unavailable`]
    /// and the next one tries again.
    ///
    /// Images from registries that `registry` calls insecure (loopback always) are
    /// pulled over plain HTTP by Podman; Docker decides that itself (loopback is allowed
    /// by default, other registries need `insecure-registries` in its `daemon.json`).
    /// Both send the credential `registry` holds for the image's registry at pull time.
    pub fn connect(socket: &str, registry: impl Into<SharedRegistry>, runtime: Runtime) -> DockerRuntime {
        DockerRuntime {
            runtime,
            socket: socket.strip_prefix("unix://").unwrap_or(socket).to_owned(),
            registry: registry.into(),
            node: None,
            client: OnceCell::new(),
        }
    }

    /// Labels the containers it creates `diplo.node = node` (unless their spec has one).
    pub fn with_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The daemon's socket path.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The negotiated client, connecting on first use.
    async fn docker(&self) -> RuntimeResult<&Docker> {
        self.client
            .get_or_try_init(|| async {
                let docker = Docker::connect_with_unix(&self.socket, REQUEST_TIMEOUT.as_secs(), bollard::API_DEFAULT_VERSION)
                    .map_err(|e| self.unavailable(&e))?;
                let docker = docker.negotiate_version().await.map_err(|e| self.unavailable(&e))?;
                debug!(runtime = %self.runtime, socket = %self.socket, api = ?docker.client_version(), "connected");
                Ok(docker)
            })
            .await
    }

    fn unavailable(&self, error: &bollard::errors::Error) -> RuntimeError {
        RuntimeError::Unavailable { runtime: self.runtime, message: format!("{}: {}", self.socket, describe_bollard(error)) }
    }

    /// Maps a bollard error about `what` (`image`, `container`) called `name`.
    fn error(&self, error: &bollard::errors::Error, what: &'static str, name: &str) -> RuntimeError {
        map_error(self.runtime, &self.socket, error, what, name)
    }

    /// `GET path` (under the negotiated API version) as JSON, read leniently where
    /// bollard's models are too strict for Podman. 404 → not found `what` `name`; 400 → an
    /// invalid `what`.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        docker: &Docker,
        path: &str,
        what: &'static str,
        name: &str,
    ) -> RuntimeResult<T> {
        let path = format!("/v{}{path}", docker.client_version());
        let (status, body) = unix_request(&self.socket, "GET", &path, REQUEST_TIMEOUT).await.map_err(|error| {
            RuntimeError::Unavailable { runtime: self.runtime, message: format!("{}: {}", self.socket, describe_io(&error)) }
        })?;
        match status {
            200..=299 => serde_json::from_slice(&body).map_err(|error| RuntimeError::Failed {
                runtime: self.runtime,
                message: format!("unexpected answer to GET {path}: {error}"),
            }),
            404 => Err(RuntimeError::NotFound { what, name: name.to_owned() }),
            // A parameter the daemon refused (an image reference it cannot parse, say).
            400 => Err(RuntimeError::InvalidArgument { field: what, message: format!("{name}: {}", daemon_error_text(&body)) }),
            _ => Err(RuntimeError::Failed { runtime: self.runtime, message: daemon_error_text(&body) }),
        }
    }

    /// Inspects a container by id or name (any container).
    async fn inspect_any(&self, docker: &Docker, id: &str) -> RuntimeResult<Inspected> {
        // Ids are hex, names follow validate_container_name: nothing else may reach the URL.
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
        if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) || !id.chars().all(ok) {
            return Err(RuntimeError::NotFound { what: "container", name: id.to_owned() });
        }
        self.get_json(docker, &format!("/containers/{id}/json"), "container", id).await
    }

    /// Inspects `id` and checks that it is one of Diplo's containers.
    async fn owned(&self, docker: &Docker, id: &str) -> RuntimeResult<Inspected> {
        let found = self.inspect_any(docker, id).await?;
        if found.is_diplo() { Ok(found) } else { Err(RuntimeError::NotFound { what: "container", name: id.to_owned() }) }
    }

    /// Removes what a failed create may have left under `name`, if it is ours.
    async fn remove_leftover(&self, docker: &Docker, name: &str, instance: &str) {
        let Ok(found) = self.inspect_any(docker, name).await else { return };
        if found.labels().and_then(|labels| labels.get(LABEL_INSTANCE)).map(String::as_str) != Some(instance) {
            return;
        }
        let options = RemoveContainerOptions { force: true, v: true, link: false };
        if let Err(error) = docker.remove_container(&found.id, Some(options)).await {
            warn!(runtime = %self.runtime, container = name, error = %describe_bollard(&error), "cannot remove a half-created container");
        }
    }

    /// Pulls through `POST /images/create` (Docker).
    async fn pull_compat(&self, docker: &Docker, image: &ImageRef, reference: &str) -> RuntimeResult<()> {
        let options = CreateImageOptions { from_image: Some(image.repository.clone()), tag: Some(image.tag.clone()), ..Default::default() };
        let credentials = self.registry.current().credential(image.registry()).map(|credential| DockerCredentials {
            username: Some(credential.username.clone()),
            password: Some(credential.password.clone()),
            serveraddress: Some(image.registry().to_owned()),
            ..Default::default()
        });
        let mut progress = docker.create_image(Some(options), None, credentials);
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => debug!(image = reference, status = info.status.as_deref().unwrap_or_default(), "pull"),
                Err(error) => return Err(self.pull_error(&error, reference)),
            }
        }
        Ok(())
    }

    fn pull_error(&self, error: &bollard::errors::Error, reference: &str) -> RuntimeError {
        use bollard::errors::Error as E;
        let message = match error {
            E::DockerResponseServerError { status_code: 404, .. } => {
                return RuntimeError::NotFound { what: "image", name: reference.to_owned() };
            }
            E::DockerResponseServerError { status_code: 400, message } => {
                return RuntimeError::InvalidArgument { field: "image", message: message.trim().to_owned() };
            }
            E::DockerResponseServerError { message, .. } => message.trim(),
            E::DockerStreamError { error } => error.trim(),
            other => return self.error(other, "image", reference),
        };
        pull_failure(self.runtime, reference, message)
    }

    /// Pulls through Podman's own `POST /libpod/images/pull`, which (unlike its
    /// Docker-compatible endpoint) takes `tlsVerify`: plain-HTTP registries then work
    /// without an `insecure = true` entry in `registries.conf`. bollard has no call for
    /// it, so this is one HTTP/1.0 request on the socket.
    async fn pull_libpod(&self, image: &ImageRef, reference: &str) -> RuntimeResult<()> {
        let registry = self.registry.current();
        let tls_verify = !registry.is_insecure(image.registry());
        let path = format!("/v4.0.0/libpod/images/pull?reference={}&tlsVerify={tls_verify}", query_escape(&image.qualified()));
        // The credential travels in a header over the local socket, never in the URL.
        let auth = registry.credential(image.registry()).map(|credential| {
            let json = serde_json::json!({
                "username": credential.username,
                "password": credential.password,
                "serveraddress": image.registry(),
            });
            format!("X-Registry-Auth: {}\r\n", base64::engine::general_purpose::URL_SAFE.encode(json.to_string()))
        });
        let answer = unix_request_with(&self.socket, "POST", &path, auth.as_deref().unwrap_or(""), PULL_IDLE_TIMEOUT).await;
        let (status, body) = answer.map_err(|error| RuntimeError::Unavailable {
            runtime: self.runtime,
            message: format!("{}: {}", self.socket, describe_io(&error)),
        })?;
        if !(200..300).contains(&status) {
            let message = daemon_error_text(&body);
            if status == 404 {
                return Err(RuntimeError::NotFound { what: "image", name: reference.to_owned() });
            }
            return Err(pull_failure(self.runtime, reference, &message));
        }
        for line in String::from_utf8_lossy(&body).lines() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if let Some(error) = value.get("error").and_then(serde_json::Value::as_str).filter(|e| !e.is_empty()) {
                return Err(pull_failure(self.runtime, reference, error));
            }
            if let Some(line) = value.get("stream").and_then(serde_json::Value::as_str) {
                debug!(image = reference, "pull: {}", line.trim());
            }
        }
        Ok(())
    }

    /// Collects an import's or load's progress; returns its text lines.
    async fn drain_build_info(
        &self,
        mut progress: impl futures::Stream<Item = Result<bollard::models::BuildInfo, bollard::errors::Error>> + Unpin,
        reference: &str,
    ) -> RuntimeResult<String> {
        let mut text = String::new();
        while let Some(item) = progress.next().await {
            let info = item.map_err(|error| self.import_error(&error, reference))?;
            for line in [info.stream, info.status].into_iter().flatten() {
                text.push_str(&line);
                if !line.ends_with('\n') {
                    text.push('\n');
                }
            }
        }
        Ok(text)
    }

    fn import_error(&self, error: &bollard::errors::Error, reference: &str) -> RuntimeError {
        use bollard::errors::Error as E;
        match error {
            E::DockerResponseServerError { status_code: 400..=499, message } => {
                RuntimeError::InvalidArgument { field: "archive", message: message.trim().to_owned() }
            }
            E::DockerResponseServerError { message, .. } | E::DockerStreamError { error: message } => {
                RuntimeError::Failed { runtime: self.runtime, message: format!("importing {reference}: {}", message.trim()) }
            }
            other => self.error(other, "image", reference),
        }
    }
}

/// Maps a bollard error about `what` called `name`: 404 → not found, 409 → conflict,
/// no connection → unavailable, anything else → failed with the daemon's message.
fn map_error(runtime: Runtime, socket: &str, error: &bollard::errors::Error, what: &'static str, name: &str) -> RuntimeError {
    use bollard::errors::Error as E;
    match error {
        E::DockerResponseServerError { status_code: 404, .. } => RuntimeError::NotFound { what, name: name.to_owned() },
        E::DockerResponseServerError { status_code: 409, message } => RuntimeError::Conflict(message.trim().to_owned()),
        // The daemon refused a parameter (an image reference it cannot parse, say): the
        // caller's `what` is at fault.
        E::DockerResponseServerError { status_code: 400, message } => {
            RuntimeError::InvalidArgument { field: what, message: format!("{name}: {}", message.trim()) }
        }
        E::DockerResponseServerError { message, .. } => RuntimeError::Failed { runtime, message: message.trim().to_owned() },
        E::SocketNotFoundError(_) | E::HyperLegacyError { .. } | E::IOError { .. } | E::RequestTimeoutError => {
            RuntimeError::Unavailable { runtime, message: format!("{socket}: {}", describe_bollard(error)) }
        }
        other => RuntimeError::Failed { runtime, message: describe_bollard(other) },
    }
}

/// The daemon's message in a bollard error, if it has one.
fn daemon_message(error: &bollard::errors::Error) -> Option<&str> {
    use bollard::errors::Error as E;
    match error {
        E::DockerResponseServerError { message, .. } => Some(message.trim()),
        E::DockerStreamError { error } => Some(error.trim()),
        _ => None,
    }
}

/// A pull that the daemon refused with `message`.
fn pull_failure(runtime: Runtime, reference: &str, message: &str) -> RuntimeError {
    if docker_api::means_unauthorized(message) {
        let message =
            if message.to_ascii_lowercase().contains("unauthorized") { message.to_owned() } else { format!("unauthorized: {message}") };
        RuntimeError::Failed { runtime, message: format!("pulling {reference}: {message}") }
    } else if message.contains("invalid reference format") {
        RuntimeError::InvalidArgument { field: "image", message: format!("{reference}: {message}") }
    } else if docker_api::means_missing_image(message) {
        RuntimeError::NotFound { what: "image", name: reference.to_owned() }
    } else if docker_api::means_unresolvable_registry(message) {
        // The registry's host name does not resolve here: the reference names nothing
        // this node can reach (a caller's mistake, or a node without that network).
        RuntimeError::NotFound { what: "image", name: format!("{reference} ({message})") }
    } else {
        RuntimeError::Failed { runtime, message: format!("pulling {reference}: {message}") }
    }
}

/// A start that failed on a host port.
fn port_conflict(message: &str) -> RuntimeError {
    RuntimeError::Conflict(format!("host port already in use: {message}"))
}

/// Fails with a conflict naming the port when a host port of `ports` is already bound
/// on this host, by any process or running container (Docker's proxy and Podman's
/// conmon hold published ports open). Best effort, and only meaningful when the agent
/// shares the daemon's network namespace; the daemon's own error at start is mapped to
/// a conflict as well.
fn check_host_ports(ports: &[PortMapping]) -> RuntimeResult<()> {
    for port in ports {
        let bound = match port.protocol {
            Protocol::Tcp => std::net::TcpListener::bind(("0.0.0.0", port.host_port)).map(drop),
            Protocol::Udp => std::net::UdpSocket::bind(("0.0.0.0", port.host_port)).map(drop),
        };
        if let Err(error) = bound
            && error.kind() == std::io::ErrorKind::AddrInUse
        {
            let protocol = match port.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            return Err(RuntimeError::Conflict(format!("host port {}/{protocol} is already in use", port.host_port)));
        }
    }
    Ok(())
}

/// `grace` as the whole seconds of a stop's `t`, rounded up.
fn grace_seconds(grace: Duration) -> i32 {
    let seconds = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// Percent-encodes a query value (image references need it only for `+`).
pub(super) fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'/' | b':' | b'@') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Sends `METHOD path` with HTTP/1.0 on the unix socket and returns the status and
/// body, reading until the server closes; fails when it stays silent for `idle`.
async fn unix_request(socket: &str, method: &str, path: &str, idle: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    unix_request_with(socket, method, path, "", idle).await
}

/// [`unix_request`] with `headers` (complete `Name: value\r\n` lines) added.
pub(super) async fn unix_request_with(
    socket: &str,
    method: &str,
    path: &str,
    headers: &str,
    idle: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {}", describe_timeout(idle)));
    let mut stream = tokio::time::timeout(idle, tokio::net::UnixStream::connect(socket)).await.map_err(|_| timed_out())??;
    let request = format!("{method} {path} HTTP/1.0\r\nHost: d\r\n{headers}Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::time::timeout(idle, stream.read(&mut buffer)).await.map_err(|_| timed_out())??;
        if read == 0 {
            break;
        }
        response.extend_from_slice(&buffer[..read]);
    }
    parse_http_response(&response)
}

/// The `message` of a daemon's JSON error body, else the body itself.
pub(super) fn daemon_error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| value.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| text.trim().to_owned())
}

/// Status and body of a complete HTTP/1.x response (chunked or not).
pub(super) fn parse_http_response(response: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad HTTP response: {why}"));
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| invalid("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| invalid("no status"))?;
    let chunked = lines.any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = &response[end + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| invalid("truncated chunk"))?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim().to_owned();
        let size = usize::from_str_radix(&size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest.get(..size).ok_or_else(|| invalid("truncated chunk"))?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// The file at `path` as a stream of byte chunks.
pub(super) async fn file_chunks(
    path: &Path,
) -> std::io::Result<impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static> {
    let file = tokio::fs::File::open(path).await?;
    Ok(futures::stream::try_unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 256 * 1024];
        let read = file.read(&mut buffer).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.truncate(read);
        Ok(Some((Bytes::from(buffer), file)))
    }))
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn runtime(&self) -> Runtime {
        self.runtime
    }

    async fn version(&self) -> RuntimeResult<String> {
        let docker = self.docker().await?;
        let version = docker.version().await.map_err(|e| self.error(&e, "daemon", &self.socket))?;
        Ok(version.version.filter(|v| !v.is_empty()).or(version.api_version).unwrap_or_default())
    }

    async fn ensure_image(&self, image: &str) -> RuntimeResult<()> {
        docker_api::check_image_reference(image)?;
        let docker = self.docker().await?;
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(error) => return Err(self.error(&error, "image", image)),
        }
        let parsed = ImageRef::parse(image);
        debug!(runtime = %self.runtime, image, "pulling");
        if self.runtime == Runtime::Podman {
            self.pull_libpod(&parsed, image).await
        } else {
            self.pull_compat(docker, &parsed, image).await
        }
    }

    async fn import_image(&self, archive: &Path, reference: &str) -> RuntimeResult<()> {
        docker_api::check_image_reference(reference)?;
        let target = ImageRef::parse(reference);
        if target.digest {
            return Err(RuntimeError::InvalidArgument {
                field: "image",
                message: format!("cannot tag an image with a digest ({reference})"),
            });
        }
        let bad_archive = |error: std::io::Error| RuntimeError::InvalidArgument {
            field: "archive",
            message: format!("{}: {}", archive.display(), describe_io(&error)),
        };
        let path = archive.to_owned();
        let kind = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path).and_then(|file| docker_api::archive_kind(std::io::BufReader::new(file)))
        })
        .await
        .map_err(|error| RuntimeError::Failed { runtime: self.runtime, message: format!("reading the archive: {error}") })?
        .map_err(bad_archive)?;
        let docker = self.docker().await?;
        let chunks = file_chunks(archive).await.map_err(bad_archive)?;
        match kind {
            ArchiveKind::Image => {
                let options = ImportImageOptions { quiet: false, platform: None };
                let progress = docker.import_image_stream(options, chunks, None);
                let text = self.drain_build_info(Box::pin(progress), reference).await?;
                let loaded = docker_api::loaded_images(&text);
                let Some(source) = loaded.first() else {
                    return Err(RuntimeError::Failed {
                        runtime: self.runtime,
                        message: format!("importing {reference}: the daemon loaded no image ({})", text.trim()),
                    });
                };
                let options = TagImageOptions { repo: Some(target.repository.clone()), tag: Some(target.tag.clone()) };
                docker.tag_image(source, Some(options)).await.map_err(|e| self.error(&e, "image", source))?;
            }
            ArchiveKind::RootFs => {
                // Podman's import ignores `tag` (and would move `repo:latest`): import
                // under a throwaway name, tag that, then drop the throwaway name.
                let scratch = format!("diplo-import/{:016x}", rand::random::<u64>());
                let options = CreateImageOptions { from_src: Some("-".to_owned()), repo: Some(scratch.clone()), ..Default::default() };
                let mut progress = docker.create_image(Some(options), Some(bollard::body_try_stream(chunks)), None);
                while let Some(item) = progress.next().await {
                    item.map_err(|error| match &error {
                        bollard::errors::Error::DockerResponseServerError { status_code: 400..=499, message } => {
                            RuntimeError::InvalidArgument { field: "archive", message: message.trim().to_owned() }
                        }
                        bollard::errors::Error::DockerResponseServerError { message, .. }
                        | bollard::errors::Error::DockerStreamError { error: message } => {
                            RuntimeError::Failed { runtime: self.runtime, message: format!("importing {reference}: {}", message.trim()) }
                        }
                        other => self.error(other, "image", reference),
                    })?;
                }
                let scratch = format!("{scratch}:latest");
                let options = TagImageOptions { repo: Some(target.repository.clone()), tag: Some(target.tag.clone()) };
                let tagged = docker.tag_image(&scratch, Some(options)).await.map_err(|e| self.error(&e, "image", &scratch));
                // Untags only: the image keeps the name it was just given.
                let untag = RemoveImageOptions { force: false, noprune: true, platforms: None };
                if let Err(error) = docker.remove_image(&scratch, Some(untag), None).await {
                    warn!(runtime = %self.runtime, image = %scratch, error = %describe_bollard(&error), "cannot drop the import's scratch name");
                }
                tagged?;
            }
        }
        docker.inspect_image(reference).await.map_err(|error| RuntimeError::Failed {
            runtime: self.runtime,
            message: format!("importing {reference}: the image is not there afterwards ({})", describe_bollard(&error)),
        })?;
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> RuntimeResult<String> {
        validate_container_name(&spec.name).map_err(|message| RuntimeError::InvalidArgument { field: "name", message })?;
        let labels = docker_api::labels_for(spec, self.node.as_deref());
        let instance = labels.get(LABEL_INSTANCE).cloned().unwrap_or_default();
        // Docker binds published ports on 0.0.0.0 as asked. Podman 4 (netavark) turns an
        // explicit 0.0.0.0 into a `-d 0.0.0.0/32` DNAT match that no packet has, so the
        // port would accept connections and never answer: leave the address to it
        // (every address, which includes 0.0.0.0).
        let host_ip = (self.runtime != Runtime::Podman).then_some("0.0.0.0");
        let mut body = docker_api::create_body(spec, labels, host_ip)?;
        if self.runtime == Runtime::Podman {
            // Podman runs health checks from systemd timers, which a host without systemd
            // (or a Podman service outside it) never fires: the agent's supervisor probes
            // them instead (see `crate::supervisor::Division`).
            body.healthcheck = None;
        }
        check_host_ports(&spec.ports)?;
        let _network_kept = match &spec.network {
            Some(network) => {
                let guard = resources::network_lock().lock().await;
                self.ensure_network(network).await?;
                Some(guard)
            }
            None => None,
        };
        let docker = self.docker().await?;
        let options = CreateContainerOptions { name: Some(spec.name.clone()), platform: String::new() };
        let created = match docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(error) => {
                let message = daemon_message(&error).unwrap_or_default();
                let mapped = match &error {
                    _ if docker_api::means_port_in_use(message) => port_conflict(message),
                    bollard::errors::Error::DockerResponseServerError { status_code: 409, .. } => {
                        RuntimeError::Conflict(format!("container name {:?} is already in use", spec.name))
                    }
                    _ if docker_api::means_name_in_use(message) => {
                        RuntimeError::Conflict(format!("container name {:?} is already in use", spec.name))
                    }
                    bollard::errors::Error::DockerResponseServerError { status_code: 404, .. } => {
                        RuntimeError::NotFound { what: "image", name: spec.image.clone() }
                    }
                    _ if docker_api::means_missing_image(message) && message.contains(spec.image.as_str()) => {
                        RuntimeError::NotFound { what: "image", name: spec.image.clone() }
                    }
                    bollard::errors::Error::DockerResponseServerError { status_code: 400, message } => {
                        RuntimeError::InvalidArgument { field: "spec", message: message.trim().to_owned() }
                    }
                    other => self.error(other, "container", &spec.name),
                };
                // A request that failed on the way (timeout, dropped connection, daemon
                // error after the fact) may still have created it.
                if matches!(mapped, RuntimeError::Unavailable { .. } | RuntimeError::Failed { .. }) {
                    self.remove_leftover(docker, &spec.name, &instance).await;
                }
                return Err(mapped);
            }
        };
        for warning in &created.warnings {
            warn!(runtime = %self.runtime, container = %spec.name, "create: {warning}");
        }
        // Without its labels the container would be invisible to Diplo and leak.
        let verified = match self.inspect_any(docker, &created.id).await {
            Ok(found) if found.is_diplo() => Ok(()),
            Ok(_) => Err(RuntimeError::Failed { runtime: self.runtime, message: "the daemon dropped the container's labels".to_owned() }),
            Err(error) => Err(error),
        };
        if let Err(error) = verified {
            let options = RemoveContainerOptions { force: true, v: true, link: false };
            if let Err(cleanup) = docker.remove_container(&created.id, Some(options)).await {
                warn!(runtime = %self.runtime, container = %spec.name, error = %describe_bollard(&cleanup), "cannot remove a half-created container");
            }
            return Err(error);
        }
        Ok(created.id)
    }

    async fn start(&self, id: &str) -> RuntimeResult<()> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        let target = found.id.as_str();
        docker.start_container(target, None::<StartContainerOptions>).await.map_err(|error| match daemon_message(&error) {
            Some(message) if docker_api::means_port_in_use(message) => port_conflict(message),
            _ => self.error(&error, "container", id),
        })
    }

    async fn stop(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        let target = found.id.as_str();
        let grace = found.stop_grace(grace);
        let options = StopContainerOptions { t: Some(grace_seconds(grace)), signal: None };
        let patient = docker.clone().with_timeout(REQUEST_TIMEOUT + grace);
        patient.stop_container(target, Some(options)).await.map_err(|e| self.error(&e, "container", id))
    }

    async fn restart(&self, id: &str, grace: Duration) -> RuntimeResult<()> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        let target = found.id.as_str();
        let grace = found.stop_grace(grace);
        let options = RestartContainerOptions { t: Some(grace_seconds(grace)), signal: None };
        let patient = docker.clone().with_timeout(REQUEST_TIMEOUT + grace);
        patient.restart_container(target, Some(options)).await.map_err(|error| match daemon_message(&error) {
            Some(message) if docker_api::means_port_in_use(message) => port_conflict(message),
            _ => self.error(&error, "container", id),
        })
    }

    async fn remove(&self, id: &str, force: bool) -> RuntimeResult<()> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        let target = found.id.as_str();
        // `v` removes the container's anonymous volumes too; named volumes stay.
        let options = RemoveContainerOptions { force, v: true, link: false };
        let patient = docker.clone().with_timeout(REQUEST_TIMEOUT * 2);
        patient.remove_container(target, Some(options)).await.map_err(|e| self.error(&e, "container", id))?;
        let networks: Vec<String> = found
            .network_settings
            .as_ref()
            .and_then(|settings| settings.networks.as_ref())
            .into_iter()
            .flatten()
            .map(|(name, _)| name.clone())
            .collect();
        self.remove_unused_spec_networks(&networks).await;
        Ok(())
    }

    async fn list(&self) -> RuntimeResult<Vec<ContainerInfo>> {
        let docker = self.docker().await?;
        let filters = format!(r#"{{"label":["{LABEL_INSTANCE}"]}}"#);
        let path = format!("/containers/json?all=1&filters={}", query_escape(&filters));
        let listed: Vec<Listed> = self.get_json(docker, &path, "container", "*").await?;
        let ids: Vec<String> =
            listed.into_iter().filter(|entry| entry.labels.as_ref().is_some_and(docker_api::is_diplo)).map(|entry| entry.id).collect();
        let inspected = futures::future::join_all(ids.iter().map(|id| self.inspect_any(docker, id))).await;
        let mut containers = Vec::with_capacity(ids.len());
        for result in inspected {
            match result {
                Ok(found) if found.is_diplo() => containers.push(docker_api::container_info(found)),
                Ok(_) => {}
                // Removed between the list and the inspect.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    async fn inspect(&self, id: &str) -> RuntimeResult<ContainerInfo> {
        let docker = self.docker().await?;
        Ok(docker_api::container_info(self.owned(docker, id).await?))
    }

    async fn logs(&self, id: &str, options: LogOptions) -> RuntimeResult<RuntimeStream<LogChunk>> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        let target = found.id;
        let options = LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            since: 0,
            until: 0,
            timestamps: options.timestamps,
            tail: options.bounded().tail.unwrap_or(diplo_api::container::DEFAULT_LOG_TAIL).to_string(),
        };
        let (runtime, socket, name) = (self.runtime, self.socket.clone(), id.to_owned());
        let stream = docker.logs(&target, Some(options)).filter_map(move |item| {
            let chunk = match item {
                Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                    Some(Ok(LogChunk { stream: OutputStream::Stdout, data: message.to_vec() }))
                }
                Ok(LogOutput::StdErr { message }) => Some(Ok(LogChunk { stream: OutputStream::Stderr, data: message.to_vec() })),
                Ok(LogOutput::StdIn { .. }) => None,
                Err(error) => Some(Err(map_error(runtime, &socket, &error, "container", &name))),
            };
            futures::future::ready(chunk)
        });
        Ok(Box::pin(stream))
    }

    async fn exec(&self, id: &str, argv: &[String]) -> RuntimeResult<ExecOutput> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidArgument { field: "argv", message: "the command is empty".to_owned() });
        }
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        let target = found.id.as_str();
        let config = CreateExecOptions::<String> {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(argv.to_vec()),
            ..Default::default()
        };
        let exec = docker.create_exec(target, config).await.map_err(|e| self.error(&e, "container", id))?;
        // Output beyond the budget is read and dropped, so that the command can finish.
        let mut output = super::output::OutputCollector::default();
        let started = docker
            .start_exec(&exec.id, Some(StartExecOptions { detach: false, tty: false, output_capacity: None }))
            .await
            .map_err(|e| self.error(&e, "container", id))?;
        let StartExecResults::Attached { output: mut stream, input } = started else {
            return Err(RuntimeError::Failed { runtime: self.runtime, message: "the exec did not attach".to_owned() });
        };
        drop(input);
        while let Some(item) = stream.next().await {
            match item.map_err(|e| self.error(&e, "container", id))? {
                LogOutput::StdOut { message } | LogOutput::Console { message } => output.push(OutputStream::Stdout, &message),
                LogOutput::StdErr { message } => output.push(OutputStream::Stderr, &message),
                LogOutput::StdIn { .. } => {}
            }
        }
        // The exit code can lag the end of the output a little.
        let deadline = Instant::now() + EXEC_EXIT_TIMEOUT;
        loop {
            let inspected = docker.inspect_exec(&exec.id).await.map_err(|e| self.error(&e, "container", id))?;
            if inspected.running != Some(true)
                && let Some(code) = inspected.exit_code
            {
                return Ok(super::output::normalise_start_failure(output.finish(code)));
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Failed {
                    runtime: self.runtime,
                    message: format!("the exec's exit code did not appear within {}", describe_timeout(EXEC_EXIT_TIMEOUT)),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn stats(&self, id: &str) -> RuntimeResult<ContainerStats> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        let target = found.id.as_str();
        // stream=false with one-shot=false: the daemon samples twice, filling precpu_stats.
        let mut samples = docker.stats(target, Some(StatsOptions { stream: false, one_shot: false }));
        match samples.next().await {
            Some(Ok(sample)) => Ok(docker_api::container_stats(&sample)),
            Some(Err(error)) => Err(self.error(&error, "container", id)),
            None => Err(RuntimeError::Failed { runtime: self.runtime, message: format!("no stats for {id}") }),
        }
    }

    async fn events(&self) -> RuntimeResult<RuntimeStream<RuntimeEvent>> {
        let docker = self.docker().await?;
        let mut filters = HashMap::from([("type".to_owned(), vec!["container".to_owned()])]);
        // Podman 4.3 matches `event` against its own names (`died`, not `die`) and
        // `label` only as key=value, so it gets the type filter alone; the rest is
        // filtered here for both.
        if self.runtime != Runtime::Podman {
            filters.insert(
                "event".to_owned(),
                ["create", "start", "die", "oom", "health_status", "pause", "unpause", "rename", "destroy"].map(str::to_owned).to_vec(),
            );
            filters.insert("label".to_owned(), vec![LABEL_INSTANCE.to_owned()]);
        }
        // The request goes out at the stream's first poll; `since` = now makes the
        // daemon replay what happened in between, so nothing after this call is missed.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let since = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
        let options = EventsOptions { since: Some(since), until: None, filters: Some(filters) };
        let (runtime, socket) = (self.runtime, self.socket.clone());
        let stream = docker
            .events(Some(options))
            .map_err(move |error| map_error(runtime, &socket, &error, "events", ""))
            .try_filter_map(|message| futures::future::ready(Ok(docker_api::runtime_event(&message))));
        Ok(Box::pin(stream))
    }
    async fn list_images(&self) -> RuntimeResult<Vec<ImageInfo>> {
        self.images().await
    }

    async fn inspect_image(&self, image: &str) -> RuntimeResult<ImageInfo> {
        self.image(image).await
    }

    async fn remove_image(&self, image: &str, force: bool) -> RuntimeResult<()> {
        self.delete_image(image, force).await
    }

    async fn prune_images(&self, all: bool) -> RuntimeResult<PruneReport> {
        self.prune_unused_images(all).await
    }

    async fn create_network(&self, spec: &NetworkSpec) -> RuntimeResult<NetworkInfo> {
        self.new_network(spec).await
    }

    async fn list_networks(&self) -> RuntimeResult<Vec<NetworkInfo>> {
        self.networks().await
    }

    async fn inspect_network(&self, network: &str) -> RuntimeResult<NetworkInfo> {
        self.network(network).await
    }

    async fn remove_network(&self, network: &str) -> RuntimeResult<()> {
        self.delete_network(network).await
    }

    async fn connect_network(&self, network: &str, container: &str) -> RuntimeResult<()> {
        self.attach(network, container, true).await
    }

    async fn disconnect_network(&self, network: &str, container: &str) -> RuntimeResult<()> {
        self.attach(network, container, false).await
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> RuntimeResult<VolumeInfo> {
        self.new_volume(spec).await
    }

    async fn list_volumes(&self) -> RuntimeResult<Vec<VolumeInfo>> {
        self.volumes().await
    }

    async fn inspect_volume(&self, volume: &str) -> RuntimeResult<VolumeInfo> {
        self.volume(volume).await
    }

    async fn remove_volume(&self, volume: &str) -> RuntimeResult<()> {
        self.delete_volume(volume).await
    }

    async fn prune_volumes(&self) -> RuntimeResult<PruneReport> {
        self.prune_managed_volumes().await
    }

    async fn pause(&self, id: &str) -> RuntimeResult<()> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        if found.state.as_ref().and_then(|s| s.status.as_deref()) == Some("paused") {
            return Ok(());
        }
        docker.pause_container(&found.id).await.map_err(|e| self.error(&e, "container", id))
    }

    async fn unpause(&self, id: &str) -> RuntimeResult<()> {
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        if found.state.as_ref().and_then(|s| s.status.as_deref()) != Some("paused") {
            return Ok(());
        }
        docker.unpause_container(&found.id).await.map_err(|e| self.error(&e, "container", id))
    }

    async fn copy_from(&self, id: &str, path: &str) -> RuntimeResult<Vec<u8>> {
        super::check_copy_path("path", path)?;
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        // The daemon reads the path inside the container's root filesystem.
        let options = bollard::query_parameters::DownloadFromContainerOptions { path: path.to_owned() };
        let mut stream = docker.download_from_container(&found.id, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error(&e, "path", path))?;
            if archive.len() + chunk.len() > diplo_api::archive::MAX_ARCHIVE_BYTES {
                return Err(super::archive_too_large(path));
            }
            archive.extend_from_slice(&chunk);
        }
        Ok(archive)
    }

    async fn copy_to(&self, id: &str, dir: &str, archive: Vec<u8>) -> RuntimeResult<()> {
        super::check_copy_path("dir", dir)?;
        diplo_api::archive::check_archive(&archive).map_err(|message| RuntimeError::InvalidArgument { field: "archive", message })?;
        let docker = self.docker().await?;
        let found = self.owned(docker, id).await?;
        // The daemon extracts inside the container's root filesystem, refusing members
        // that would land outside it.
        let options = bollard::query_parameters::UploadToContainerOptions { path: dir.to_owned(), ..Default::default() };
        let patient = docker.clone().with_timeout(REQUEST_TIMEOUT * 2);
        patient.upload_to_container(&found.id, Some(options), bollard::body_full(Bytes::from(archive))).await.map_err(|error| {
            match &error {
                // The daemon could not extract a member (a path through a link that leads
                // nowhere inside the container, say): the archive is at fault.
                bollard::errors::Error::DockerResponseServerError { status_code: 500, message } => super::archive_refused(message.trim()),
                _ => self.error(&error, "path", dir),
            }
        })
    }
}

/// A short sentence for a bollard error: the OS error for connection failures, the
/// daemon's message for HTTP errors.
pub(super) fn describe_bollard(error: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match error {
        E::SocketNotFoundError(_) => "no such socket".to_owned(),
        E::DockerResponseServerError { status_code, message } => format!("HTTP {status_code}: {}", message.trim()),
        E::RequestTimeoutError => "request timed out".to_owned(),
        other => describe_error(other),
    }
}

/// A short human description of an error: the innermost I/O error if there is one
/// (`connection refused`, `permission denied`), else the outermost message followed by
/// its innermost cause.
pub(crate) fn describe_error(error: &(dyn StdError + 'static)) -> String {
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
        return describe_io(io);
    }
    let outer = error.to_string();
    let inner = innermost.to_string();
    if std::ptr::addr_eq(innermost, error) || outer.contains(&inner) { outer } else { format!("{outer}: {inner}") }
}

/// `Connection refused (os error 111)` → `connection refused`.
pub(crate) fn describe_io(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => text.as_str(),
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", error.kind()),
    }
}

/// `3s`, `300ms`.
pub(crate) fn describe_timeout(timeout: Duration) -> String {
    if timeout.subsec_millis() == 0 && timeout.as_secs() > 0 {
        format!("{}s", timeout.as_secs())
    } else {
        format!("{}ms", timeout.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_short_sentences() {
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(describe_io(&refused), "connection refused");
        let wrapped = std::io::Error::other(refused);
        assert_eq!(describe_error(&wrapped), "connection refused");
        assert_eq!(describe_timeout(Duration::from_secs(3)), "3s");
        assert_eq!(describe_timeout(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn raw_responses_parse() {
        let plain = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n{\"a\":1}\n";
        assert_eq!(parse_http_response(plain).expect("plain"), (200, b"{\"a\":1}\n".to_vec()));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nfound\r\n0\r\n\r\n";
        assert_eq!(parse_http_response(chunked).expect("chunked"), (404, b"not found".to_vec()));
        assert!(parse_http_response(b"garbage").is_err());
        assert_eq!(daemon_error_text(br#"{"message":"no such image"}"#), "no such image");
        assert_eq!(daemon_error_text(b" plain text "), "plain text");
    }

    #[test]
    fn small_conversions() {
        assert_eq!(grace_seconds(Duration::ZERO), 0);
        assert_eq!(grace_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(grace_seconds(Duration::from_secs(10)), 10);
        assert_eq!(query_escape("127.0.0.1:5000/a/b:c+d"), "127.0.0.1:5000/a/b:c%2Bd");
        assert_eq!(query_escape(r#"{"label":["x"]}"#), "%7B%22label%22:%5B%22x%22%5D%7D");
    }

    #[test]
    fn busy_host_ports_are_conflicts() {
        let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mapping = PortMapping { host_port: port, container_port: 80, protocol: Protocol::Tcp };
        match check_host_ports(&[mapping]) {
            Err(RuntimeError::Conflict(message)) => assert_eq!(message, format!("host port {port}/tcp is already in use")),
            other => panic!("expected a conflict, got {other:?}"),
        }
        drop(listener);
        assert!(check_host_ports(&[mapping]).is_ok());
    }

    #[tokio::test]
    async fn missing_socket_is_unavailable_at_once() {
        let report = probe("/nonexistent/docker.sock", Duration::from_secs(2)).await;
        assert!(!report.available);
        assert_eq!(report.error, "no answer from /nonexistent/docker.sock: no such socket");
        assert_eq!(report.endpoint, "/nonexistent/docker.sock");
    }

    #[tokio::test]
    async fn dead_socket_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let socket = format!("unix://{}", path.display());
        let report = probe(&socket, Duration::from_secs(2)).await;
        assert!(!report.available);
        assert_eq!(report.error, format!("no answer from {}: connection refused", path.display()));
    }

    #[tokio::test]
    async fn silent_daemon_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silent.sock");
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let started = std::time::Instant::now();
        let report = probe(&path.display().to_string(), Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!report.available);
        assert_eq!(report.error, format!("no answer from {} within 300ms", path.display()));
    }
}

#[cfg(test)]
mod pull_failure_tests {
    use super::*;

    /// A pull is classified by what the daemon says: a missing image and a registry host
    /// that does not resolve are NotFound (the caller's reference names nothing this node
    /// can reach); anything else (a refused connection included) Failed.
    #[test]
    fn pull_failures_are_classified_by_the_daemons_message() {
        let dns = r#"Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: no such host"#;
        let refused = r#"Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused"#;
        let cases = [
            ("manifest unknown: manifest unknown", "not found"),
            (dns, "not found"),
            (refused, "failed"),
            ("unauthorized: authentication required", "failed"),
            ("something odd", "failed"),
            ("invalid reference format", "invalid"),
        ];
        for (message, kind) in cases {
            let got = match pull_failure(Runtime::Docker, "x:1", message) {
                RuntimeError::NotFound { .. } => "not found",
                RuntimeError::Failed { .. } => "failed",
                RuntimeError::InvalidArgument { field: "image", .. } => "invalid",
                other => panic!("{message}: {other:?}"),
            };
            assert_eq!(got, kind, "{message}");
        }
        // The reason stays in the message.
        assert!(pull_failure(Runtime::Docker, "x:1", dns).to_string().contains("no such host"));
    }
}
