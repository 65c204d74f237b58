//! `diplo-hollow`: N simulated nodes in one process, for scale tests. Each node is a real
//! agent session exactly as `diplo-agent` opens it (its own key, a join with the token
//! and a CSR, its own node certificate, its own mTLS stream with Hello, heartbeats and
//! command results); only its host is simulated: a fixed fingerprint from a mix of
//! profiles, and an in-memory runtime that runs nothing
//! (`diplo_agent::runtime::fake`). Identities live under `DIR/<node name>/`, so a
//! restarted process comes back as the same nodes without joining again.

mod mix;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use diplo_agent::executor::Executor;
use diplo_agent::fingerprint::FingerprintSource;
use diplo_agent::runtime::ContainerRuntime;
use diplo_agent::runtime::fake::FakeRuntime;
use diplo_agent::session;
use tokio::sync::Semaphore;

#[derive(Parser)]
#[command(name = "diplo-hollow", version, about = "Simulated Diplo nodes (real sessions, in-memory runtime) for scale tests")]
struct Cli {
    /// Control plane gRPC address, HOST:PORT.
    #[arg(long, env = "DIPLO_SERVER")]
    server: String,
    /// Join token (multi-use): needed for nodes that have no identity in DIR yet.
    #[arg(long, env = "DIPLO_TOKEN")]
    token: Option<String>,
    /// How many nodes to simulate: `hollow-00001` ... (1 to 99999).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99_999))]
    count: u32,
    /// Where the node identities are kept, one directory per node.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Joins (key generation, CSR, join call) under way at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    join_concurrency: u32,
}

/// File descriptors needed beyond one socket per node (logs, the runtime, joins).
const SPARE_FILES: u64 = 256;

/// Raises the soft open-file limit to the hard one; returns (soft before, soft after,
/// hard).
fn raise_open_file_limit() -> (Option<u64>, Option<u64>, Option<u64>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = rustix::process::Rlimit { current: before.maximum, maximum: before.maximum };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %err, "cannot raise the open file limit");
        }
    }
    let after = getrlimit(Resource::Nofile);
    (before.current, after.current, after.maximum)
}

/// Whether `limit` open files (`None`: unlimited) are enough for `count` sessions.
fn enough_files(limit: Option<u64>, count: u32) -> bool {
    limit.is_none_or(|limit| limit >= u64::from(count) + SPARE_FILES)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    diplo_api::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("DIPLO_LOG").unwrap_or_else(|_| "warn,diplo_hollow=info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();

    let (before, after, hard) = raise_open_file_limit();
    if enough_files(after, cli.count) {
        tracing::info!(before = ?before, now = ?after, "open file limit");
    } else {
        tracing::warn!(
            soft = ?after, hard = ?hard, nodes = cli.count,
            "the open file limit is too low for one socket per node: raise the hard limit (ulimit -Hn) or sessions will fail"
        );
    }
    for line in mix::summary(cli.count) {
        tracing::info!("mix: {line}");
    }
    if let Err(err) = std::fs::create_dir_all(&cli.data_dir) {
        eprintln!("diplo-hollow: error: cannot create --data-dir {}: {err}", cli.data_dir.display());
        return std::process::ExitCode::FAILURE;
    }

    let fleet = Arc::new(Fleet::default());
    let joins = Arc::new(Semaphore::new(cli.join_concurrency as usize));
    let mut nodes = tokio::task::JoinSet::new();
    for index in 1..=cli.count {
        let (server, token, dir) = (cli.server.clone(), cli.token.clone(), cli.data_dir.join(mix::node_name(index)));
        let (fleet, joins) = (fleet.clone(), joins.clone());
        nodes.spawn(async move { run_node(index, &server, token.as_deref(), &dir, &joins, &fleet).await });
    }
    let progress = tokio::spawn(report_progress(fleet.clone(), cli.count as usize));

    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(err) => {
            eprintln!("diplo-hollow: error: cannot handle SIGTERM: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = tokio::select! {
        _ = tokio::signal::ctrl_c() => std::process::ExitCode::SUCCESS,
        _ = terminate.recv() => std::process::ExitCode::SUCCESS,
        () = async { while nodes.join_next().await.is_some() {} } => {
            eprintln!("diplo-hollow: error: every node stopped for good ({} failed)", fleet.failed.load(Ordering::Relaxed));
            std::process::ExitCode::FAILURE
        }
    };
    progress.abort();
    code
}

/// Counts over the fleet, for progress lines.
#[derive(Default)]
struct Fleet {
    /// Nodes with an identity (joined now or earlier).
    identified: AtomicUsize,
    /// Nodes stopped for good.
    failed: AtomicUsize,
}

/// One node: its identity (a join under the shared concurrency limit, unless saved),
/// then its sessions forever. Returns only when the node is refused for good.
async fn run_node(index: u32, server: &str, token: Option<&str>, dir: &Path, joins: &Semaphore, fleet: &Fleet) {
    let name = mix::node_name(index);
    let identity = {
        let _permit = joins.acquire().await;
        session::ensure_identity(server, token, &name, dir).await
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(err) => {
            fleet.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(node = %name, error = %err, "cannot join");
            return;
        }
    };
    fleet.identified.fetch_add(1, Ordering::Relaxed);
    let fingerprint = mix::fingerprint(index);
    let drivers: Vec<Arc<dyn ContainerRuntime>> = fingerprint
        .available_runtimes()
        .into_iter()
        .map(|runtime| Arc::new(FakeRuntime::new(runtime)) as Arc<dyn ContainerRuntime>)
        .collect();
    let executor = Executor::new(identity.node_id.clone(), drivers);
    let node_id = identity.node_id.clone();
    let err = session::run_sessions(server, identity, dir, &FingerprintSource::Fixed(fingerprint), &executor).await;
    fleet.failed.fetch_add(1, Ordering::Relaxed);
    tracing::error!(node = %name, node_id = %node_id, error = %err, "node stopped for good");
}

/// Logs how many nodes have an identity, every 5 s while it changes.
async fn report_progress(fleet: Arc<Fleet>, count: usize) {
    let mut last = (usize::MAX, usize::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let now = (fleet.identified.load(Ordering::Relaxed), fleet.failed.load(Ordering::Relaxed));
        if now != last {
            tracing::info!(identified = now.0, failed = now.1, nodes = count, "progress");
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_must_cover_one_socket_per_node() {
        assert!(enough_files(None, 10_000));
        assert!(enough_files(Some(1_048_576), 10_000));
        assert!(!enough_files(Some(1024), 10_000));
        assert!(enough_files(Some(1024), 40));
    }

    #[test]
    fn count_is_bounded_and_named() {
        assert!(Cli::try_parse_from(["diplo-hollow", "--server", "cp:7443", "--count", "0", "--data-dir", "/tmp/x"]).is_err());
        let cli = Cli::try_parse_from(["diplo-hollow", "--server", "cp:7443", "--count", "40", "--data-dir", "/tmp/x"]).expect("parse");
        assert_eq!((cli.count, cli.join_concurrency, cli.token), (40, 32, None));
    }
}
