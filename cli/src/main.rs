//! `diplo`: the operator CLI. Talks gRPC (mTLS) to the control plane named by its
//! context file.

mod builds;
mod client;
mod containers;
mod deployments;
mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use diplo_api::context::CliContext;
use diplo_api::pb;
use diplo_api::pb::cluster_service_client::ClusterServiceClient;
use diplo_api::pb::container_service_client::ContainerServiceClient;

#[derive(Parser)]
#[command(name = "diplo", version, about = "Operate a Diplo cluster")]
struct Cli {
    /// CLI context file (default: ~/.config/diplo/config.toml, then ./.diplo/cli.toml).
    #[arg(long, global = true, env = "DIPLO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster status: nodes by health and the runtimes available.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Nodes of the cluster.
    Nodes {
        #[command(subcommand)]
        command: NodesCommand,
    },
    /// Containers on the cluster's nodes.
    Containers {
        #[command(subcommand)]
        command: ContainersCommand,
    },
    /// Deploy an image as a set of replicas the control plane keeps running.
    Deploy(deployments::DeployArgs),
    /// Deployments.
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
    },
    /// Images built from git repositories.
    Builds {
        #[command(subcommand)]
        command: builds::BuildsCommand,
    },
    /// Cluster events (deployments, instances, nodes, audit).
    Events {
        /// Keep printing new events.
        #[arg(short, long)]
        follow: bool,
    },
    /// Join tokens for new agents.
    JoinToken {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// API bearer tokens for operators and automation (admin only).
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
}

#[derive(Subcommand)]
enum NodesCommand {
    /// List nodes.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show one node (JSON).
    Show { node: String },
    /// Stop new work from landing on a node.
    Cordon { node: String },
    /// Let new work land on a node again.
    Uncordon { node: String },
    /// Cordon a node and move its work away.
    Drain { node: String },
    /// Remove a node and revoke its certificate.
    Rm { node: String },
}

#[derive(Subcommand)]
pub(crate) enum AppsCommand {
    /// List deployments.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Show one deployment with its instances (JSON).
    Show { name: String },
    /// Change the number of replicas.
    Scale { name: String, replicas: u32 },
    /// Go back to the previous revision.
    Rollback { name: String },
    /// Delete a deployment and its containers.
    Rm { name: String },
}

#[derive(Subcommand)]
pub(crate) enum ContainersCommand {
    /// List containers.
    Ls {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Pull, create and start a container.
    Run {
        /// Container name.
        #[arg(long)]
        name: String,
        /// Publish HOST:CONTAINER[/udp] (repeatable).
        #[arg(short, long = "publish")]
        publish: Vec<String>,
        /// Environment KEY=VALUE (repeatable).
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Runtime: docker, containerd, lxc or podman (default: the node's preferred).
        #[arg(long)]
        runtime: Option<String>,
        /// Node id or name (default: chosen by the control plane).
        #[arg(long)]
        node: Option<String>,
        /// Restart policy: no, always, on-failure, unless-stopped.
        #[arg(long, default_value = "no")]
        restart: String,
        /// Image reference.
        image: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Start a container.
    Start { id: String },
    /// Stop a container.
    Stop {
        id: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u32,
    },
    /// Restart a container.
    Restart { id: String },
    /// Remove a container.
    Rm {
        id: String,
        /// Stop it first if running.
        #[arg(short, long)]
        force: bool,
    },
    /// Print a container's logs.
    Logs {
        id: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u32>,
    },
    /// Run a command in a container; exits with its exit code.
    Exec {
        id: String,
        /// Command and arguments.
        #[arg(trailing_var_arg = true, required = true)]
        argv: Vec<String>,
    },
}

#[derive(Subcommand)]
enum JoinTokenCommand {
    /// Create a token; prints only the token.
    Create {
        /// Lifetime, e.g. 30m, 24h (default 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Refuse the token after its first use.
        #[arg(long)]
        single_use: bool,
        /// Labels for nodes joining with it: k=v,k2=v2.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Create a token; prints only the token (shown once).
    Create {
        /// What it may do: admin, deployer or viewer.
        #[arg(long, value_parser = ["admin", "deployer", "viewer"])]
        role: String,
        /// Lifetime, e.g. 30m, 90d (default: never expires).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Who or what it is for (shown in events); default token-<id>.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    diplo_api::install_crypto_provider();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("diplo: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A gRPC status as a CLI error (its message names what went wrong).
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

async fn run(cli: Cli) -> Result<()> {
    let context = CliContext::load(&client::context_path(cli.config)?)?;
    let channel = client::connect(&context).await?;
    let mut cluster = client::limited!(ClusterServiceClient::new(channel.clone()));
    match cli.command {
        Command::Status { output } => {
            let status = cluster.get_status(pb::GetStatusRequest {}).await.map_err(status_error)?.into_inner();
            let runtimes: Vec<&str> = status.available_runtimes.iter().map(|k| output::runtime_name(*k)).collect();
            match output {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "nodes": {"total": status.nodes_total, "ready": status.nodes_ready, "unhealthy": status.nodes_unhealthy, "down": status.nodes_down},
                        "instances": {"total": status.instances_total, "running": status.instances_running},
                        "available_runtimes": runtimes,
                    })
                ),
                Format::Table => {
                    println!("Control plane: {}", context.server);
                    println!(
                        "Nodes: {} total, {} ready, {} unhealthy, {} down",
                        status.nodes_total, status.nodes_ready, status.nodes_unhealthy, status.nodes_down
                    );
                    println!("Instances: {} total, {} running", status.instances_total, status.instances_running);
                    println!("Runtimes available: {}", if runtimes.is_empty() { "none".into() } else { runtimes.join(", ") });
                }
            }
        }
        Command::Nodes { command } => nodes(&mut cluster, command).await?,
        Command::JoinToken { command } => join_token(&mut cluster, command).await?,
        Command::ApiToken { command } => api_token(&mut cluster, command).await?,
        Command::Containers { command } => containers::run(client::limited!(ContainerServiceClient::new(channel)), command).await?,
        Command::Deploy(args) => deployments::deploy(channel, args).await?,
        Command::Apps { command } => deployments::apps(channel, command).await?,
        Command::Events { follow } => deployments::events(channel, follow).await?,
        Command::Builds { command } => builds::run(channel, command).await?,
    }
    Ok(())
}

type Cluster = ClusterServiceClient<tonic::transport::Channel>;

async fn nodes(cluster: &mut Cluster, command: NodesCommand) -> Result<()> {
    let node_ref = |node: String| pb::NodeRef { node };
    let show = |node: pb::Node| println!("{}", serde_json::to_string_pretty(&output::node_json(&node)).unwrap_or_default());
    match command {
        NodesCommand::Ls { output: format } => {
            let nodes = cluster.list_nodes(pb::ListNodesRequest {}).await.map_err(status_error)?.into_inner().nodes;
            match format {
                Format::Json => {
                    let list: Vec<_> = nodes.iter().map(output::node_json).collect();
                    println!("{}", serde_json::Value::Array(list));
                }
                Format::Table => println!("{}", output::nodes_table(&nodes)),
            }
        }
        NodesCommand::Show { node } => {
            show(cluster.get_node(pb::GetNodeRequest { node }).await.map_err(status_error)?.into_inner());
        }
        NodesCommand::Cordon { node } => show(cluster.cordon_node(node_ref(node)).await.map_err(status_error)?.into_inner()),
        NodesCommand::Uncordon { node } => show(cluster.uncordon_node(node_ref(node)).await.map_err(status_error)?.into_inner()),
        NodesCommand::Drain { node } => show(cluster.drain_node(node_ref(node)).await.map_err(status_error)?.into_inner()),
        NodesCommand::Rm { node } => {
            cluster.remove_node(node_ref(node.clone())).await.map_err(status_error)?;
            println!("node {node} removed");
        }
    }
    Ok(())
}

async fn join_token(cluster: &mut Cluster, command: JoinTokenCommand) -> Result<()> {
    match command {
        JoinTokenCommand::Create { ttl, single_use, labels } => {
            let labels = parse_labels(&labels)?;
            let request = pb::CreateJoinTokenRequest { ttl_seconds: ttl.map_or(0, |t| t.as_secs().max(1)), single_use, labels };
            let created = cluster.create_join_token(request).await.map_err(status_error)?.into_inner();
            println!("{}", created.token);
        }
        JoinTokenCommand::Ls => {
            let tokens = cluster.list_join_tokens(pb::ListJoinTokensRequest {}).await.map_err(status_error)?.into_inner().tokens;
            println!("{:<10}  {:<25}  {:<10}  {:>4}  STATE", "ID", "EXPIRES", "SINGLE-USE", "USES");
            for token in tokens {
                let expires = token.expires_at.map(|t| t.seconds).and_then(|s| chrono::DateTime::from_timestamp(s, 0));
                let expired = expires.is_some_and(|at| at <= chrono::Utc::now());
                let state = if token.revoked {
                    "revoked"
                } else if expired {
                    "expired"
                } else {
                    "active"
                };
                let expires = expires.map_or("-".into(), |at| at.to_rfc3339());
                println!("{:<10}  {:<25}  {:<10}  {:>4}  {state}", token.id, expires, token.single_use, token.uses);
            }
        }
        JoinTokenCommand::Revoke { id } => {
            cluster.revoke_join_token(pb::RevokeJoinTokenRequest { id: id.clone() }).await.map_err(status_error)?;
            println!("join token {id} revoked");
        }
    }
    Ok(())
}

async fn api_token(cluster: &mut Cluster, command: ApiTokenCommand) -> Result<()> {
    let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0));
    match command {
        ApiTokenCommand::Create { role, ttl, name } => {
            let request = pb::CreateApiTokenRequest { name, role, ttl_seconds: ttl.map_or(0, |t| t.as_secs().max(1)) };
            let created = cluster.create_api_token(request).await.map_err(status_error)?.into_inner();
            println!("{}", created.token);
        }
        ApiTokenCommand::Ls => {
            let tokens = cluster.list_api_tokens(pb::ListApiTokensRequest {}).await.map_err(status_error)?.into_inner().tokens;
            println!("{:<10}  {:<20}  {:<8}  {:<25}  {:<25}  STATE", "ID", "NAME", "ROLE", "CREATED", "EXPIRES");
            for token in tokens {
                let expires = time(token.expires_at);
                let expired = expires.is_some_and(|at| at <= chrono::Utc::now());
                let state = if token.revoked {
                    "revoked"
                } else if expired {
                    "expired"
                } else {
                    "active"
                };
                let created = time(token.created_at).map_or("-".into(), |at| at.to_rfc3339());
                let expires = expires.map_or("never".into(), |at| at.to_rfc3339());
                println!("{:<10}  {:<20}  {:<8}  {created:<25}  {expires:<25}  {state}", token.id, token.name, token.role);
            }
        }
        ApiTokenCommand::Revoke { id } => {
            cluster.revoke_api_token(pb::RevokeApiTokenRequest { id: id.clone() }).await.map_err(status_error)?;
            println!("API token {id} revoked");
        }
    }
    Ok(())
}

fn parse_labels(labels: &[String]) -> Result<HashMap<String, String>> {
    labels
        .iter()
        .filter(|l| !l.is_empty())
        .map(|label| {
            let (k, v) = label.split_once('=').with_context(|| format!("invalid --labels entry {label:?}: expected key=value"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}
