//! Podman, through its Docker-compatible API socket (`podman system service`). The
//! driver is [`DockerRuntime`], reporting [`Runtime::Podman`]; it pulls through Podman's
//! own endpoint so that plain-HTTP registries need no `registries.conf` entry.

use std::time::Duration;

use diplo_api::fingerprint::RuntimeReport;
use diplo_api::runtime::Runtime;

use super::docker::{DockerRuntime, probe_docker_api};

/// The Podman service on `socket` (a path, or `unix://path`) as a container runtime;
/// see [`DockerRuntime::connect`] (nothing is sent before the first operation).
pub fn connect(socket: &str, registry: impl Into<crate::registry::SharedRegistry>) -> DockerRuntime {
    DockerRuntime::connect(socket, registry, Runtime::Podman)
}

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

    #[tokio::test]
    async fn missing_socket_makes_the_driver_unavailable() {
        use crate::runtime::{ContainerRuntime, RegistryConfig, RuntimeError};
        let podman = connect("unix:///nonexistent/podman.sock", RegistryConfig::default());
        assert_eq!(podman.runtime(), Runtime::Podman);
        assert_eq!(podman.socket(), "/nonexistent/podman.sock");
        match podman.version().await {
            Err(RuntimeError::Unavailable { runtime: Runtime::Podman, message }) => {
                assert_eq!(message, "/nonexistent/podman.sock: no such socket");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
