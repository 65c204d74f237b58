//! Podman, through its Docker-compatible API socket (`podman system service`).

use std::time::Duration;

use diplo_api::fingerprint::RuntimeReport;
use diplo_api::runtime::Runtime;

use super::docker::probe_docker_api;

/// Probes the Podman service on `socket` (a path, or `unix://path`) through the
/// Docker-compatible API: available when it answers `/version` within `timeout`;
/// `version` is Podman's version string.
pub async fn probe(socket: &str, timeout: Duration) -> RuntimeReport {
    probe_docker_api(Runtime::Podman, socket, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_reported_as_podman() {
        let report = probe("/nonexistent/podman.sock", Duration::from_secs(2)).await;
        assert_eq!(report.runtime, Runtime::Podman);
        assert!(!report.available);
        assert_eq!(report.error, "no answer from /nonexistent/podman.sock: no such socket");
    }
}
