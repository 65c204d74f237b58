//! Start-up and wiring: data directory, store, PKI, admin credentials, the gRPC and
//! REST listeners, the node monitor and, in dev mode, an in-process local agent.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::auth::Caller;
use crate::config::Config;
use crate::model::Role;
use crate::pki::ClusterPki;
use crate::service::ControlPlane;
use crate::store::{StoreError, WriterIdentity};

/// How the control plane runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Control plane only.
    Serve,
    /// Control plane plus an in-process agent for this host (data in `<data>/agent`).
    Dev {
        /// Host paths the local agent lets containers bind-mount (as the agent's
        /// `--allow-host-path`; none by default).
        host_paths: diplo_agent::host_paths::HostPathPolicy,
    },
}

/// Runs the control plane until SIGINT/SIGTERM or until a listener fails.
pub async fn run(config: Config, mode: Mode) -> Result<()> {
    create_private_dir(&config.data_dir)?;
    let rest_tls = match &config.rest_tls {
        Some(files) => Some(crate::http::tls::server_config(&files.cert, &files.key)?),
        None => None,
    };
    let db_url = config.effective_database_url();
    // The writer lock comes first: a second control plane on this database stops here,
    // before it migrates, writes or listens.
    let me = WriterIdentity::this_process();
    let (store, mut lease) = crate::store::open_writer(&db_url, &me).await.map_err(|err| match err {
        err @ StoreError::WriterTaken { .. } => anyhow::Error::new(err),
        err => anyhow::Error::new(err).context("opening the state store"),
    })?;
    // Nodes, deployments and instances are served from memory from here on; every write
    // still reaches the database first (this process is its only writer).
    let store: Arc<dyn crate::store::Store> = crate::store::CachedStore::load(store).await.context("loading the state store")?;
    tracing::info!(backend = store.backend(), database = %crate::store::mask_password(&db_url), writer = %me, "state store ready, this control plane is its writer");
    let pki = ClusterPki::load_or_create(&config.data_dir, &config.tls_sans).context("preparing the cluster PKI")?;

    let grpc_listener =
        TcpListener::bind(config.grpc_addr).await.with_context(|| format!("cannot listen for gRPC on {}", config.grpc_addr))?;
    let rest_listener =
        TcpListener::bind(config.rest_addr).await.with_context(|| format!("cannot listen for REST on {}", config.rest_addr))?;
    let grpc_addr = Config::local_dial_addr(grpc_listener.local_addr()?);
    let rest_addr = Config::local_dial_addr(rest_listener.local_addr()?);

    let control_plane = ControlPlane::new(config.clone(), store, pki).await?;
    let rest_url = format!("{}://{rest_addr}", if rest_tls.is_some() { "https" } else { "http" });
    let admin = crate::credentials::ensure_admin(&control_plane, &config.data_dir, grpc_addr, &rest_url)
        .await
        .context("writing the admin credentials")?;
    println!("Diplo control plane is up.");
    println!("  gRPC (TLS): {grpc_addr}   REST: {rest_url}");
    println!("  CA fingerprint: {}", control_plane.pki().ca.fingerprint());
    println!("  Admin credentials in {} (ca.pem, admin.pem, admin-key.pem, admin.token)", config.data_dir.display());
    println!("  CLI: diplo --config {} nodes ls", admin.cli_config.display());

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let monitor = tokio::spawn(control_plane.clone().run_node_monitor());
    let reconciler = tokio::spawn(control_plane.clone().run_reconciler());
    let retention = tokio::spawn(control_plane.clone().run_event_retention());
    let mut grpc = tokio::spawn(crate::grpc::serve(control_plane.clone(), grpc_listener, shutdown(shutdown_rx.clone())));
    let mut rest = tokio::spawn(crate::http::serve(control_plane.clone(), rest_listener, rest_tls, shutdown(shutdown_rx.clone())));

    let agent = match mode {
        Mode::Serve => None,
        Mode::Dev { host_paths } => Some(start_local_agent(&control_plane, &config.data_dir.join("agent"), grpc_addr, host_paths).await?),
    };
    notify_service_manager(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("gRPC on {grpc_addr}, REST on {rest_url}")),
    ]);

    let outcome = tokio::select! {
        _ = shutdown_signal() => Ok(()),
        result = &mut grpc => result.context("gRPC task").and_then(|r| r.context("gRPC server")),
        result = &mut rest => result.context("REST task").and_then(|r| r.context("REST server")),
        // Another control plane became the writer while the database was unreachable:
        // this one stops at once (its store already refuses to serve).
        lost = lease.lost() => Err(anyhow::Error::new(lost)),
    };
    tracing::info!("shutting down");
    notify_service_manager(&[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    monitor.abort();
    reconciler.abort();
    retention.abort();
    if let Some(agent) = agent {
        agent.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = (&mut grpc).await;
        let _ = (&mut rest).await;
    })
    .await;
    lease.release().await;
    outcome
}

/// Starts this host's agent in-process, joining with a fresh single-use token unless it
/// already has an identity from an earlier run whose certificate is still valid (an
/// expired one re-joins as the same node with the token).
async fn start_local_agent(
    control_plane: &Arc<ControlPlane>,
    agent_dir: &Path,
    grpc_addr: std::net::SocketAddr,
    host_paths: diplo_agent::host_paths::HostPathPolicy,
) -> Result<tokio::task::JoinHandle<()>> {
    let usable = diplo_agent::identity::Identity::load(agent_dir)
        .ok()
        .is_some_and(|identity| diplo_agent::session::certificate_expired(&identity.cert_pem, time::OffsetDateTime::now_utc()).is_none());
    let token = if diplo_agent::identity::Identity::exists(agent_dir) && usable {
        None
    } else {
        let system = Caller::Operator { name: "dev-mode".into(), role: Role::Admin };
        let created = control_plane.create_join_token(&system, Some(Duration::from_secs(600)), true, Default::default()).await?;
        Some(created.token)
    };
    let name = sanitize_node_name(&crate::pki::hostname());
    let mut agent_config = diplo_agent::AgentConfig::new(grpc_addr.to_string(), token, name, agent_dir.to_owned());
    agent_config.host_paths = host_paths;
    Ok(tokio::spawn(async move {
        if let Err(err) = diplo_agent::run(agent_config).await {
            tracing::error!(error = format!("{err:#}"), "local agent stopped");
        }
    }))
}

/// Tells the service manager (systemd, `Type=notify`) how the control plane is doing:
/// `READY=1` once its gRPC and REST listeners accept connections, `STOPPING=1` when it
/// shuts down. A no-op without `NOTIFY_SOCKET`.
fn notify_service_manager(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// A host name made into a valid node name.
fn sanitize_node_name(hostname: &str) -> String {
    let name: String =
        hostname.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if name.is_empty() { "local".to_owned() } else { name.chars().take(63).collect() }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_become_valid_node_names() {
        assert_eq!(sanitize_node_name("My_Host"), "my-host");
        assert_eq!(sanitize_node_name("--"), "local");
        assert!(crate::service::validate_node_name(&sanitize_node_name(&"x".repeat(100))).is_ok());
    }
}
