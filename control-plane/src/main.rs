//! `diplo-control-plane`: `serve` for production, `dev` for a one-host install with an
//! in-process agent and embedded SQLite.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use diplo_control_plane::config::{Config, RestTls};
use diplo_control_plane::server::{Mode, run};

/// jemalloc, configured (see `.cargo/config.toml`) to hand freed memory back to the system
/// within a second: with 10,000 nodes connected, the control plane's resident memory stays
/// near what its sessions use (≈ 457 MiB) instead of what the join storm once needed
/// (≈ 547 MiB with the system allocator).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "diplo-control-plane", version, about = "Diplo control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(Options),
    /// Run the control plane with a local agent and embedded SQLite (data in ./.diplo).
    Dev(DevOptions),
}

#[derive(clap::Args)]
struct DevOptions {
    #[command(flatten)]
    options: Options,
    /// A host directory whose contents the local agent's containers may bind-mount
    /// (repeatable; none by default), as `diplo-agent --allow-host-path`.
    #[arg(long = "allow-host-path", value_name = "DIR", env = "DIPLO_ALLOW_HOST_PATHS", value_delimiter = ',')]
    allow_host_path: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct Options {
    /// Data directory (CA, credentials, SQLite database).
    #[arg(long, env = "DIPLO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// REST listen address (default: 127.0.0.1:8080 over plain HTTP, 0.0.0.0:8080 with
    /// --rest-tls-cert/--rest-tls-key).
    #[arg(long, env = "DIPLO_REST_ADDR")]
    rest_addr: Option<SocketAddr>,
    /// gRPC (TLS) listen address.
    #[arg(long, env = "DIPLO_GRPC_ADDR", default_value = "0.0.0.0:7443")]
    grpc_addr: SocketAddr,
    /// State store: postgres://… or sqlite://PATH (default: SQLite in the data directory).
    #[arg(long, env = "DIPLO_DATABASE_URL")]
    database_url: Option<String>,
    /// Heartbeat interval agents must keep (e.g. 5s).
    #[arg(long, env = "DIPLO_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Silence after which a node is down and its workloads move (e.g. 30s).
    #[arg(long, env = "DIPLO_DOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    down_grace: Duration,
    /// Extra DNS names or IPs for the server certificate (comma-separated).
    #[arg(long, env = "DIPLO_TLS_SANS", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Lifetime of node certificates (e.g. 24h).
    #[arg(long, env = "DIPLO_NODE_CERT_LIFETIME", default_value = "24h", value_parser = humantime::parse_duration)]
    node_cert_lifetime: Duration,
    /// Join attempts allowed per source IP and minute.
    #[arg(long, env = "DIPLO_JOIN_RATE_LIMIT", default_value_t = 10)]
    join_rate_limit: u32,
    /// PEM certificate chain for serving REST over HTTPS (with --rest-tls-key).
    #[arg(long, env = "DIPLO_REST_TLS_CERT")]
    rest_tls_cert: Option<PathBuf>,
    /// PEM private key for serving REST over HTTPS (with --rest-tls-cert).
    #[arg(long, env = "DIPLO_REST_TLS_KEY")]
    rest_tls_key: Option<PathBuf>,
    /// Most gRPC connections open at once; the ones beyond are closed at once.
    #[arg(long, env = "DIPLO_MAX_CONNECTIONS", default_value_t = diplo_control_plane::config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Events older than this are deleted (e.g. 30d; 0: kept whatever their age).
    #[arg(long, env = "DIPLO_EVENTS_MAX_AGE", default_value = "30d", value_parser = humantime::parse_duration)]
    events_max_age: Duration,
    /// At most this many events are kept, the newest (0: no limit).
    #[arg(long, env = "DIPLO_EVENTS_MAX_COUNT", default_value_t = 100_000)]
    events_max_count: u64,
    /// Time a build may take, clone included (e.g. 30m).
    #[arg(long, env = "DIPLO_BUILD_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    build_timeout: Duration,
    /// Base image for a language's builds, LANG=IMAGE (repeatable, or comma-separated in
    /// DIPLO_BASE_IMAGES: "static=IMG,python=IMG").
    #[arg(long = "base-image", value_name = "LANG=IMAGE", env = "DIPLO_BASE_IMAGES", value_delimiter = ',')]
    base_image: Vec<String>,
    /// The cluster registry (HOST:PORT) builds push to; agents learn it over their session.
    #[arg(long = "registry", value_name = "HOST:PORT", env = "DIPLO_REGISTRY")]
    registry: Option<String>,
    /// A registry (HOST:PORT) reached over plain HTTP (repeatable; loopback ones always
    /// are); agents learn the list over their session.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", env = "DIPLO_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registry: Vec<String>,
    /// Idle time after which a dashboard login expires (e.g. 12h).
    #[arg(long, env = "DIPLO_DASHBOARD_SESSION_IDLE", default_value = "12h", value_parser = humantime::parse_duration)]
    dashboard_session_idle: Duration,
}

impl Options {
    fn into_config(self, default_dir: &str) -> anyhow::Result<Config> {
        if self.heartbeat_interval.is_zero() {
            anyhow::bail!("invalid --heartbeat-interval: must be greater than zero");
        }
        let mut config = Config::new(self.data_dir.unwrap_or_else(|| PathBuf::from(default_dir)));
        config.grpc_addr = self.grpc_addr;
        config.database_url = self.database_url.filter(|url| !url.is_empty());
        config.heartbeat_interval = self.heartbeat_interval;
        config.down_grace = self.down_grace;
        config.tls_sans = self.tls_san;
        config.node_cert_lifetime = self.node_cert_lifetime;
        if self.join_rate_limit == 0 {
            anyhow::bail!("invalid --join-rate-limit: must be at least 1 attempt per minute");
        }
        config.join_rate_limit = self.join_rate_limit;
        let non_empty = |path: Option<PathBuf>| path.filter(|p| !p.as_os_str().is_empty());
        config.rest_tls = match (non_empty(self.rest_tls_cert), non_empty(self.rest_tls_key)) {
            (Some(cert), Some(key)) => Some(RestTls { cert, key }),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!(
                "--rest-tls-cert (DIPLO_REST_TLS_CERT) is set but --rest-tls-key (DIPLO_REST_TLS_KEY) is missing: HTTPS needs both"
            ),
            (None, Some(_)) => anyhow::bail!(
                "--rest-tls-key (DIPLO_REST_TLS_KEY) is set but --rest-tls-cert (DIPLO_REST_TLS_CERT) is missing: HTTPS needs both"
            ),
        };
        config.rest_addr = self.rest_addr.unwrap_or_else(|| Config::default_rest_addr(config.rest_tls.is_some()));
        if self.max_connections == 0 {
            anyhow::bail!("invalid --max-connections: must be at least 1");
        }
        config.max_connections = self.max_connections;
        config.events_max_age = Some(self.events_max_age).filter(|age| !age.is_zero());
        config.events_max_count = Some(self.events_max_count).filter(|count| *count > 0);
        if self.build_timeout.is_zero() || self.build_timeout > diplo_api::build::MAX_BUILD_TIMEOUT {
            anyhow::bail!(
                "invalid --build-timeout: must be between 1s and {}",
                humantime::format_duration(diplo_api::build::MAX_BUILD_TIMEOUT)
            );
        }
        config.build_timeout = self.build_timeout;
        config.base_images = diplo_api::build::template::parse_base_images(&self.base_image.join(","))
            .map_err(|e| anyhow::anyhow!("invalid --base-image (DIPLO_BASE_IMAGES): {e}"))?;
        config.registry = self.registry.filter(|r| !r.is_empty());
        config.insecure_registries = self.insecure_registry.into_iter().filter(|r| !r.is_empty()).collect();
        if self.dashboard_session_idle.is_zero() {
            anyhow::bail!("invalid --dashboard-session-idle: must be greater than zero");
        }
        config.dashboard_session_idle = self.dashboard_session_idle;
        for (flag, name) in
            config.registry.iter().map(|r| ("--registry", r)).chain(config.insecure_registries.iter().map(|r| ("--insecure-registry", r)))
        {
            if let Err(err) = diplo_api::registry::validate_registry_name("registry", name) {
                anyhow::bail!("invalid {flag} {name:?}: {}", err.message);
            }
        }
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    diplo_api::install_crypto_provider();
    let telemetry = diplo_api::telemetry::init("diplo-control-plane", "info,sqlx=warn,h2=warn")?;
    let result = serve(Cli::parse()).await;
    // Spans of the last requests (and of a failed start) are exported before exiting.
    telemetry.shutdown().await;
    result
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(options) => run(options.into_config("/var/lib/diplo/control-plane")?, Mode::Serve).await,
        Command::Dev(dev) => {
            let host_paths = diplo_agent::host_paths::HostPathPolicy::new(dev.allow_host_path).map_err(anyhow::Error::msg)?;
            run(dev.options.into_config(".diplo")?, Mode::Dev { host_paths }).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_takes_the_local_agents_host_path_allowlist() {
        let cli = Cli::try_parse_from(["diplo-control-plane", "dev", "--allow-host-path", "/srv/a", "--allow-host-path", "/srv/b"])
            .expect("dev with two allowed host paths");
        let Command::Dev(dev) = cli.command else { panic!("dev expected") };
        assert_eq!(dev.allow_host_path, vec![PathBuf::from("/srv/a"), PathBuf::from("/srv/b")]);
        let Command::Dev(dev) = Cli::try_parse_from(["diplo-control-plane", "dev"]).expect("dev").command else { panic!("dev expected") };
        assert!(dev.allow_host_path.is_empty(), "nothing is allowed by default");
        let err = Cli::try_parse_from(["diplo-control-plane", "serve", "--allow-host-path", "/srv/a"]).err().expect("serve runs no agent");
        assert!(err.to_string().contains("--allow-host-path"), "{err}");
    }

    fn config(args: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["diplo-control-plane", "serve", "--data-dir", "/tmp/diplo-test"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(options) | Command::Dev(DevOptions { options, .. }) => options.into_config("/tmp/diplo-test"),
        }
    }

    #[test]
    fn rest_listens_on_loopback_unless_told_or_served_over_tls() {
        // The environment must not decide for the test.
        assert!(std::env::var_os("DIPLO_REST_ADDR").is_none(), "DIPLO_REST_ADDR is set");
        assert_eq!(config(&[]).expect("config").rest_addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(config(&["--rest-addr", "0.0.0.0:9000"]).expect("config").rest_addr, "0.0.0.0:9000".parse().expect("addr"));
        let tls = config(&["--rest-tls-cert", "c.pem", "--rest-tls-key", "k.pem"]).expect("config");
        assert_eq!(tls.rest_addr, "0.0.0.0:8080".parse().expect("addr"));
    }

    #[test]
    fn registry_flags() {
        let defaults = config(&[]).expect("config");
        assert_eq!((defaults.registry, defaults.insecure_registries.len()), (None, 0));
        let set = config(&["--registry", "10.0.0.5:5000", "--insecure-registry", "10.0.0.5:5000", "--insecure-registry", "lan:5000"])
            .expect("config");
        assert_eq!(set.registry.as_deref(), Some("10.0.0.5:5000"));
        assert_eq!(set.insecure_registries, vec!["10.0.0.5:5000".to_owned(), "lan:5000".to_owned()]);
        let err = config(&["--registry", "http://r:5000"]).expect_err("scheme refused").to_string();
        assert!(err.contains("--registry"), "{err}");
        let err = config(&["--insecure-registry", "r/x"]).expect_err("path refused").to_string();
        assert!(err.contains("--insecure-registry"), "{err}");
    }

    #[test]
    fn connection_cap_and_event_retention_flags() {
        let defaults = config(&[]).expect("config");
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.events_max_age, Some(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!(defaults.events_max_count, Some(100_000));
        let set = config(&["--max-connections", "8", "--events-max-age", "0", "--events-max-count", "0"]).expect("config");
        assert_eq!((set.max_connections, set.events_max_age, set.events_max_count), (8, None, None));
        let err = config(&["--max-connections", "0"]).expect_err("refused").to_string();
        assert!(err.contains("--max-connections"), "{err}");
    }

    #[test]
    fn build_flags() {
        let defaults = config(&[]).expect("config");
        assert_eq!(defaults.build_timeout, Duration::from_secs(30 * 60));
        assert!(defaults.base_images.is_empty());
        let set =
            config(&["--build-timeout", "10m", "--base-image", "static=nginx:alpine", "--base-image", "go=golang:1.23"]).expect("config");
        assert_eq!(set.build_timeout, Duration::from_secs(600));
        assert_eq!(set.base_images.len(), 2);
        assert_eq!(set.base_images.get("go").map(String::as_str), Some("golang:1.23"));
        for bad in [&["--build-timeout", "0s"][..], &["--build-timeout", "7h"], &["--base-image", "nginx"], &["--base-image", "cobol=img"]]
        {
            let err = config(bad).expect_err("refused").to_string();
            assert!(err.contains(bad[0]), "{err}");
        }
    }
}
