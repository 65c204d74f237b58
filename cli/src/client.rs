//! Finding the CLI context and opening an mTLS gRPC channel with it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use diplo_api::context::CliContext;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The context file to use: `--config`, then `DIPLO_CONFIG` (both handled by clap),
/// then `~/.config/diplo/config.toml`, then a dev install's `./.diplo/cli.toml`.
pub fn context_path(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".config/diplo/config.toml"));
    }
    candidates.push(PathBuf::from(".diplo/cli.toml"));
    candidates.iter().find(|path| path.is_file()).cloned().with_context(|| {
        format!(
            "no CLI config found (looked at {}); pass --config FILE or set DIPLO_CONFIG \
             (the control plane writes cli.toml into its data directory)",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The config file `diplo context` changes: the one in use (see [`context_path`]), or
/// `~/.config/diplo/config.toml` when there is none yet.
pub fn config_path_for_writing(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Ok(path) = context_path(explicit.clone()) {
        return Ok(path);
    }
    let home = std::env::var_os("HOME").context("HOME is not set: pass --config FILE")?;
    Ok(PathBuf::from(home).join(".config/diplo/config.toml"))
}

/// A Diplo service client with its message size limit set explicitly in both
/// directions ([`diplo_api::pb::MAX_MESSAGE_BYTES`], as the control plane's server has).
macro_rules! limited {
    ($client:expr) => {
        $client.max_decoding_message_size(diplo_api::pb::MAX_MESSAGE_BYTES).max_encoding_message_size(diplo_api::pb::MAX_MESSAGE_BYTES)
    };
}
pub(crate) use limited;

/// Opens a gRPC channel to the context's control plane with its operator certificate.
pub async fn connect(context: &CliContext) -> Result<Channel> {
    let read = |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&context.ca)?))
        .identity(Identity::from_pem(read(&context.cert)?, read(&context.key)?))
        .domain_name(host_of(&context.server)?);
    Channel::from_shared(context.server.clone())
        .with_context(|| format!("invalid server address {:?} in the CLI config", context.server))?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {}", context.server))
}

fn host_of(server: &str) -> Result<String> {
    let uri: tonic::codegen::http::Uri = server.parse().with_context(|| format!("invalid server address {server:?}"))?;
    let host = uri.host().with_context(|| format!("no host in server address {server:?}"))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_owned())
}

/// Node names by node id, for tables that show where things run.
pub async fn node_names(channel: Channel) -> Result<std::collections::HashMap<String, String>> {
    let mut cluster = limited!(diplo_api::pb::cluster_service_client::ClusterServiceClient::new(channel));
    let nodes = cluster.list_nodes(diplo_api::pb::ListNodesRequest {}).await.map_err(crate::status_error)?.into_inner().nodes;
    Ok(nodes.into_iter().map(|n| (n.id, n.name)).collect())
}
