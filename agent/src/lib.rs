//! Diplo's node agent: fingerprints its host, joins the cluster over mTLS and keeps one
//! session open to the control plane. See `ARCHITECTURE.md` for the map.

pub mod build;
pub mod drivers;
pub mod executor;
pub mod fingerprint;
pub mod host_paths;
pub mod identity;
pub mod observer;
pub mod port_publisher;
pub mod registry;
pub mod resources;
pub mod runtime;
pub mod session;
pub mod supervisor;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

/// Grace period for restarts ordered without one.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);

use fingerprint::ProbeConfig;

/// Everything the agent needs to start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control plane gRPC address, `HOST:PORT`.
    pub server: String,
    /// Join token; needed only until the node has an identity.
    pub token: Option<String>,
    /// Node name asked for at join.
    pub name: String,
    /// Where the identity lives.
    pub data_dir: PathBuf,
    /// How the host is probed.
    pub probe: ProbeConfig,
    /// The agent's own registry settings (registries reached over plain HTTP; loopback
    /// ones always are), merged with what the control plane sends over the session.
    pub registry: runtime::RegistryConfig,
    /// Host paths containers may bind-mount (none by default).
    pub host_paths: host_paths::HostPathPolicy,
    /// Where builds make their workspaces (`None`: `<data dir>/builds`).
    pub build_dir: Option<PathBuf>,
    /// Where `file://` repositories may be built from (none by default).
    pub build_file_repos: build::git::FileRepos,
}

impl AgentConfig {
    /// A configuration with probing settings from the environment.
    pub fn new(server: String, token: Option<String>, name: String, data_dir: PathBuf) -> Self {
        AgentConfig {
            server,
            token,
            name,
            data_dir,
            probe: ProbeConfig::from_env(),
            registry: runtime::RegistryConfig::default(),
            host_paths: host_paths::HostPathPolicy::default(),
            build_dir: None,
            build_file_repos: build::git::FileRepos::default(),
        }
    }

    /// Where builds make their workspaces.
    pub fn build_dir(&self) -> PathBuf {
        self.build_dir.clone().unwrap_or_else(|| self.data_dir.join("builds"))
    }
}

/// Joins if needed, then keeps the session open. Returns only on a fatal error
/// (bad token, CA mismatch, node removed).
pub async fn run(config: AgentConfig) -> Result<(), session::AgentError> {
    let identity = session::ensure_identity(&config.server, config.token.as_deref(), &config.name, &config.data_dir).await?;
    let mut probe = config.probe.clone();
    probe.build_dir = config.build_dir().display().to_string();
    let fingerprint = fingerprint::probe(&probe).await;
    let shared_registry = registry::SharedRegistry::new(config.registry.clone());
    let drivers = drivers::connect_available(&fingerprint, &probe, &shared_registry, &config.data_dir, &identity.node_id).await;
    let mut build_config = build::BuildConfig::new(config.build_dir(), probe.docker_socket.clone(), probe.podman_socket.clone());
    build_config.file_repos = config.build_file_repos.clone();
    let builds = build::Builds::new(build_config, fingerprint.builders.clone());
    let executor = executor::Executor::new(identity.node_id.clone(), drivers)
        .with_host_paths(config.host_paths.clone())
        .with_registry(shared_registry)
        .with_builds(builds);
    tracing::info!(runtimes = ?executor.runtimes(), builders = ?fingerprint.builders, build_dir = %config.build_dir().display(),
        file_repos = ?config.build_file_repos.roots(), allowed_host_paths = ?config.host_paths.allowed(), "runtime drivers ready");
    let source = fingerprint::FingerprintSource::Probe(probe);
    notify_started(&identity.node_id, &config.server);
    Err(session::run_sessions(&config.server, identity, &config.data_dir, &source, &executor).await)
}

/// Tells the service manager (systemd, `Type=notify`) that the agent has started: it holds
/// its node identity (joined now, or saved from before) and its runtime drivers, and from
/// here on connects its session and keeps reconnecting it. A control plane that is away
/// does not hold the start up (nor fail it): the agent's containers keep running and the
/// session comes back when the control plane does. A no-op without `NOTIFY_SOCKET`.
fn notify_started(node_id: &str, server: &str) {
    let status = format!("node {node_id}: connecting to {server}");
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]) {
        tracing::warn!(error = %err, "cannot notify the service manager (NOTIFY_SOCKET) that the agent started");
    }
}
