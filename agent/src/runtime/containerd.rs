//! containerd, through its gRPC API (containerd-client).

use std::time::Duration;

use containerd_client::services::v1::version_client::VersionClient;
use diplo_api::fingerprint::RuntimeReport;
use diplo_api::runtime::Runtime;

use super::docker::{describe_error, describe_timeout};

/// Probes containerd on `socket` (a path, or `unix://path`): available when the
/// `Version` RPC answers within `timeout`; `version` is the one it reports. containerd
/// run by rootlesskit keeps its socket under `/run/user/`, which marks it rootless.
pub async fn probe(socket: &str, timeout: Duration) -> RuntimeReport {
    let endpoint = socket.strip_prefix("unix://").unwrap_or(socket).to_owned();
    let mut report = RuntimeReport {
        runtime: Runtime::Containerd,
        available: false,
        version: String::new(),
        endpoint: endpoint.clone(),
        error: String::new(),
        rootless: endpoint.starts_with("/run/user/"),
    };
    match tokio::time::timeout(timeout, query(&endpoint)).await {
        Ok(Ok(version)) => {
            report.available = true;
            report.version = version;
        }
        Ok(Err(error)) => report.error = format!("no answer from {endpoint}: {error}"),
        Err(_) => report.error = format!("no answer from {endpoint} within {}", describe_timeout(timeout)),
    }
    report
}

async fn query(socket: &str) -> Result<String, String> {
    if !std::path::Path::new(socket).exists() {
        return Err("no such socket".to_owned());
    }
    let channel = containerd_client::connect(socket).await.map_err(|e| describe_error(&e))?;
    let response = VersionClient::new(channel).version(()).await.map_err(|status| {
        let message = status.message().trim();
        if message.is_empty() { format!("{:?}", status.code()) } else { format!("{:?}: {message}", status.code()) }
    })?;
    Ok(response.into_inner().version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_unavailable_at_once() {
        let report = probe("/nonexistent/containerd.sock", Duration::from_secs(2)).await;
        assert!(!report.available);
        assert_eq!(report.error, "no answer from /nonexistent/containerd.sock: no such socket");
    }

    #[tokio::test]
    async fn dead_socket_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let report = probe(&path.display().to_string(), Duration::from_secs(2)).await;
        assert!(!report.available);
        assert_eq!(report.error, format!("no answer from {}: connection refused", path.display()));
    }

    #[tokio::test]
    async fn silent_daemon_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silent.sock");
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let report = probe(&path.display().to_string(), Duration::from_millis(300)).await;
        assert!(!report.available);
        assert_eq!(report.error, format!("no answer from {} within 300ms", path.display()));
    }
}
