//! Every driver pulls from a registry that wants a password with the credential its
//! shared registry settings hold at pull time, and fails clearly (naming the image,
//! saying unauthorized, never showing the password) without it.
//!
//! Each test starts its own `docker-registry` with htpasswd authentication on a free
//! loopback port (`diplo_tests::private_registry`), pushes the shared busybox under a
//! fresh tag and removes the pulled image again. Under `CI`, a runtime or tool that is
//! missing is a failure.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use diplo_agent::fingerprint::ProbeConfig;
use diplo_agent::port_publisher::PortPublisher;
use diplo_agent::registry::SharedRegistry;
use diplo_agent::runtime::containerd::{ContainerdRuntime, NAMESPACE};
use diplo_agent::runtime::docker::DockerRuntime;
use diplo_agent::runtime::lxc::{DEFAULT_LXC_PATH, LxcRuntime};
use diplo_agent::runtime::{ContainerRuntime, RegistryConfig, podman};
use diplo_api::registry::RegistryCredential;
use diplo_api::runtime::Runtime;
use diplo_tests::private_registry::PrivateRegistry;

/// A private registry with a fresh tag pushed to it: `(registry, reference)`; `None`
/// (a loud skip, a failure under CI) when it cannot be set up.
fn private_image(case: &str) -> Option<(PrivateRegistry, String)> {
    let mut registry = match PrivateRegistry::start() {
        Ok(registry) => registry,
        Err(err) => {
            diplo_tests::skip_or_fail(&format!("no private registry: {err:#}"));
            return None;
        }
    };
    let tag = format!("{case}-{:08x}", rand::random::<u32>());
    match registry.push(&tag) {
        Ok(reference) => Some((registry, reference)),
        Err(err) => {
            diplo_tests::skip_or_fail(&format!("cannot push to the private registry: {err:#}"));
            None
        }
    }
}

/// The settings with `registry`'s credential.
fn with_credential(registry: &PrivateRegistry) -> RegistryConfig {
    let mut config = RegistryConfig::default();
    config
        .credentials
        .insert(registry.addr.clone(), RegistryCredential { username: registry.username.clone(), password: registry.password.clone() });
    config
}

/// Without a credential the pull fails naming the image and saying unauthorized; once
/// the shared settings hold the credential, the same driver pulls.
async fn pulls_only_with_the_credential(
    runtime: &dyn ContainerRuntime,
    shared: &SharedRegistry,
    registry: &PrivateRegistry,
    reference: &str,
) {
    let kind = runtime.runtime();
    let err = runtime.ensure_image(reference).await.expect_err("a pull without credentials must fail");
    let text = err.to_string();
    assert!(text.contains(reference), "{kind}: the error does not name {reference}: {text}");
    assert!(text.to_ascii_lowercase().contains("unauthorized"), "{kind}: the error does not say unauthorized: {text}");

    // Wrong password: refused as well, and the password is not repeated.
    let mut wrong = with_credential(registry);
    if let Some(credential) = wrong.credentials.get_mut(&registry.addr) {
        credential.password = format!("{}-wrong", registry.password);
    }
    shared.apply(wrong);
    let err = runtime.ensure_image(reference).await.expect_err("a pull with a wrong password must fail");
    let text = err.to_string();
    assert!(text.to_ascii_lowercase().contains("unauthorized"), "{kind}: {text}");
    assert!(!text.contains(&registry.password), "{kind}: the error shows the password: {text}");

    shared.apply(with_credential(registry));
    runtime.ensure_image(reference).await.unwrap_or_else(|e| panic!("{kind}: pull {reference} with the credential: {e}"));
    assert!(!format!("{shared:?}").contains(&registry.password));
}

/// Removes `reference` with `program` (`docker`, `podman`, `ctr -n diplo`).
fn remove_image(program: &[&str], reference: &str) {
    let (program, args) = program.split_first().expect("program");
    let _ = Command::new(program).args(args).args(["rmi", reference]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

async fn available(runtime: &dyn ContainerRuntime) -> bool {
    match runtime.version().await {
        Ok(_) => true,
        Err(err) => {
            diplo_tests::skip_or_fail(&format!("{} is unavailable: {err}", runtime.runtime()));
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_a_private_image_with_its_credential() {
    let shared = SharedRegistry::default();
    let runtime = DockerRuntime::connect(&ProbeConfig::from_env().docker_socket, shared.clone(), Runtime::Docker);
    if !available(&runtime).await {
        return;
    }
    let Some((registry, reference)) = private_image("docker") else { return };
    pulls_only_with_the_credential(&runtime, &shared, &registry, &reference).await;
    remove_image(&["docker"], &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_a_private_image_with_its_credential() {
    let shared = SharedRegistry::default();
    let runtime = podman::connect(&ProbeConfig::from_env().podman_socket, shared.clone());
    if !available(&runtime).await {
        return;
    }
    let Some((registry, reference)) = private_image("podman") else { return };
    pulls_only_with_the_credential(&runtime, &shared, &registry, &reference).await;
    remove_image(&["podman"], &reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_a_private_image_with_its_credential() {
    let state = tempfile::tempdir().expect("state directory");
    let shared = SharedRegistry::default();
    let runtime = match ContainerdRuntime::connect("/run/containerd/containerd.sock", shared.clone(), state.path().join("containerd")).await
    {
        Ok(runtime) => runtime,
        Err(err) => return diplo_tests::skip_or_fail(&format!("containerd is unavailable: {err}")),
    };
    let Some((registry, reference)) = private_image("containerd") else { return };
    pulls_only_with_the_credential(&runtime, &shared, &registry, &reference).await;
    let _ = Command::new("ctr").args(["-n", NAMESPACE, "images", "rm", &reference]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lxc_pulls_a_private_image_with_its_credential() {
    let cache = tempfile::tempdir().expect("image cache");
    let shared = SharedRegistry::default();
    let runtime =
        LxcRuntime::new(PathBuf::from(DEFAULT_LXC_PATH), cache.path().to_path_buf(), shared.clone(), Arc::new(PortPublisher::new()));
    if !available(&runtime).await {
        return;
    }
    let Some((registry, reference)) = private_image("lxc") else { return };
    pulls_only_with_the_credential(&runtime, &shared, &registry, &reference).await;
    // The credential file skopeo read is gone.
    let left: Vec<String> = std::fs::read_dir(cache.path())
        .expect("cache")
        .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.starts_with(".auth-"))
        .collect();
    assert!(left.is_empty(), "credential files left behind: {left:?}");
}
