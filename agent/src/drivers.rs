//! Starting a driver for every runtime the fingerprint found available.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use diplo_api::fingerprint::Fingerprint;
use diplo_api::runtime::Runtime;

use crate::fingerprint::ProbeConfig;
use crate::port_publisher::PortPublisher;
use crate::registry::SharedRegistry;
use crate::runtime::ContainerRuntime;
use crate::runtime::containerd::ContainerdRuntime;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::lxc::{DEFAULT_LXC_PATH, LxcRuntime};
use crate::supervisor::Supervised;

/// Connects a driver for each available runtime of node `node_id`, each supervised (see
/// [`crate::supervisor`]). A runtime whose driver cannot start is
/// left out and logged; the others still work. Every driver reads `registry` at pull
/// time, so settings the control plane sends later apply to the next pull.
pub async fn connect_available(
    fingerprint: &Fingerprint,
    probe: &ProbeConfig,
    registry: &SharedRegistry,
    data_dir: &Path,
    node_id: &str,
) -> Vec<Arc<dyn ContainerRuntime>> {
    let mut drivers: Vec<Arc<dyn ContainerRuntime>> = Vec::new();
    for runtime in fingerprint.available_runtimes() {
        let driver: Result<Arc<dyn ContainerRuntime>, String> = match runtime {
            Runtime::Docker => Ok(Arc::new(DockerRuntime::connect(&probe.docker_socket, registry.clone(), Runtime::Docker))),
            Runtime::Podman => Ok(Arc::new(crate::runtime::podman::connect(&probe.podman_socket, registry.clone()))),
            Runtime::Containerd => ContainerdRuntime::connect(&probe.containerd_socket, registry.clone(), data_dir.join("containerd"))
                .await
                .map(|driver| Arc::new(driver) as Arc<dyn ContainerRuntime>)
                .map_err(|e| e.to_string()),
            Runtime::Lxc => lxc_driver(registry, data_dir, node_id).await,
        };
        match driver {
            // Health checks and restart policies are supervised by the agent where the runtime does not.
            Ok(driver) => {
                let records = data_dir.join("supervisor").join(runtime.name());
                drivers.push(Arc::new(Supervised::new(driver, Some(records))));
            }
            Err(err) => tracing::warn!(%runtime, error = %err, "runtime available but its driver could not start"),
        }
    }
    drivers
}

/// The LXC driver, which first takes over containers still running from before an
/// agent restart (their ports are published by this process, so they need publishing
/// again).
async fn lxc_driver(registry: &SharedRegistry, data_dir: &Path, node_id: &str) -> Result<Arc<dyn ContainerRuntime>, String> {
    let driver =
        LxcRuntime::new(PathBuf::from(DEFAULT_LXC_PATH), data_dir.join("lxc-images"), registry.clone(), Arc::new(PortPublisher::new()));
    match driver.resume_running(Some(node_id)).await {
        Ok(0) => {}
        Ok(count) => tracing::info!(count, "re-adopted running LXC containers"),
        Err(err) => tracing::warn!(error = %err, "could not re-adopt every running LXC container"),
    }
    Ok(Arc::new(driver))
}
