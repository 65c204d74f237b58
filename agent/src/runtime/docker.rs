//! Docker Engine, through its API socket (bollard). The probe is shared with Podman,
//! whose service speaks the same Docker-compatible API.

use std::error::Error as StdError;
use std::time::Duration;

use bollard::Docker;
use diplo_api::fingerprint::RuntimeReport;
use diplo_api::runtime::Runtime;
use tracing::debug;

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

/// A short sentence for a bollard error: the OS error for connection failures, the
/// daemon's message for HTTP errors.
fn describe_bollard(error: &bollard::errors::Error) -> String {
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
