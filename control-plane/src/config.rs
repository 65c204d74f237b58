//! Control-plane settings, from flags or `DIPLO_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default of [`Config::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Everything the control plane needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the CA, credentials and the SQLite database live.
    pub data_dir: PathBuf,
    /// REST gateway address (see [`Config::default_rest_addr`]).
    pub rest_addr: SocketAddr,
    /// gRPC (TLS) address.
    pub grpc_addr: SocketAddr,
    /// `postgres://…` or `sqlite://…`; `None`: SQLite in the data directory.
    pub database_url: Option<String>,
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// Silence after which a node is declared down.
    pub down_grace: Duration,
    /// Extra DNS names or IPs for the server certificate (besides localhost, the
    /// host name and the loopback addresses).
    pub tls_sans: Vec<String>,
    /// Lifetime of node certificates.
    pub node_cert_lifetime: Duration,
    /// Join attempts allowed per source IP and minute (a burst of as many, then one
    /// every `60 / n` seconds).
    pub join_rate_limit: u32,
    /// Certificate and key for serving REST over HTTPS; `None`: plain HTTP.
    pub rest_tls: Option<RestTls>,
    /// Most gRPC connections open at once (TLS handshakes under way included); the
    /// connections beyond are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Events older than this are deleted (`None`: kept whatever their age).
    pub events_max_age: Option<Duration>,
    /// At most this many events are kept, the newest (`None`: no count limit).
    pub events_max_count: Option<u64>,
    /// Time a build may take, clone included.
    pub build_timeout: Duration,
    /// How long after its timeout a build's node may still report before the build
    /// fails.
    pub build_report_grace: Duration,
    /// Base images by language key (`static`, `python`, ...), overriding the builders'
    /// defaults.
    pub base_images: std::collections::BTreeMap<String, String>,
    // ---- registries ----
    /// The cluster registry (`host:port`) builds push to (images built without a
    /// registry part in their name); `None`: such images stay on the node that built them.
    pub registry: Option<String>,
    /// Registries (`host:port`) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Idle time after which a dashboard session expires.
    pub dashboard_session_idle: Duration,
}

/// PEM files for the REST gateway's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestTls {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

impl Config {
    /// Defaults for a data directory: REST on loopback port 8080, gRPC on 7443, 5 s
    /// heartbeats, down after 30 s, 24 h node certificates, 10 join attempts per minute
    /// and IP, 1024 gRPC connections, events kept 30 days and at most 100 000.
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            rest_addr: Self::default_rest_addr(false),
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 7443)),
            database_url: None,
            heartbeat_interval: Duration::from_secs(5),
            down_grace: Duration::from_secs(30),
            tls_sans: Vec::new(),
            node_cert_lifetime: Duration::from_secs(24 * 3600),
            join_rate_limit: 10,
            rest_tls: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            events_max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            events_max_count: Some(100_000),
            registry: None,
            build_timeout: diplo_api::build::DEFAULT_BUILD_TIMEOUT,
            build_report_grace: Duration::from_secs(60),
            base_images: std::collections::BTreeMap::new(),
            insecure_registries: Vec::new(),
            dashboard_session_idle: crate::service::DEFAULT_SESSION_IDLE,
        }
    }

    /// Where REST listens unless told: plain HTTP carries bearer tokens in clear, so
    /// without TLS only this host can reach it (`127.0.0.1:8080`); with TLS, every
    /// interface (`0.0.0.0:8080`).
    pub fn default_rest_addr(tls: bool) -> SocketAddr {
        if tls { SocketAddr::from(([0, 0, 0, 0], 8080)) } else { SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }

    /// The database URL in effect: the configured one or the embedded SQLite file.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("diplo.db").display()),
        }
    }

    /// An address clients on this host can dial to reach `addr` (unspecified → loopback).
    pub fn local_dial_addr(addr: SocketAddr) -> SocketAddr {
        if addr.ip().is_unspecified() { SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()) } else { addr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_rest_listens_on_loopback_by_default() {
        let config = Config::new(PathBuf::from("/tmp/x"));
        assert!(config.rest_addr.ip().is_loopback(), "{}", config.rest_addr);
        assert_eq!(config.rest_addr.port(), 8080);
        assert!(Config::default_rest_addr(false).ip().is_loopback());
        assert!(Config::default_rest_addr(true).ip().is_unspecified());
    }
}
