//! `diplo`: the operator CLI. Talks gRPC (mTLS) to the control plane named by its
//! context file.

mod builds;
mod client;
mod containers;
mod contexts;
mod deployments;
mod exit;
mod instances;
mod output;
mod registry;
mod resources;
mod stacks;
mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use diplo_api::context::ContextFile;
use diplo_api::pb;
use diplo_api::pb::cluster_service_client::ClusterServiceClient;

#[derive(Parser)]
#[command(name = "diplo", version, about = "Operate a Diplo cluster", after_help = exit::HELP)]
struct Cli {
    /// CLI config file (default: ~/.config/diplo/config.toml, then ./.diplo/cli.toml).
    #[arg(long, global = true, env = "DIPLO_CONFIG")]
    config: Option<PathBuf>,
    /// Context of the config file to use (default: its current one).
    #[arg(long, global = true, env = "DIPLO_CONTEXT")]
    context: Option<String>,
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(short, long, global = true, value_enum, env = "DIPLO_OUTPUT")]
    output: Option<Format>,
    #[command(subcommand)]
    command: Command,
}

pub(crate) use output::Format;

#[derive(Subcommand)]
enum Command {
    /// Cluster status: nodes by health, instances, and the runtimes available.
    Status,
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
    /// Images of a runtime on a node.
    Images {
        #[command(subcommand)]
        command: resources::ImagesCommand,
    },
    /// Networks of a runtime on a node.
    Networks {
        #[command(subcommand)]
        command: resources::NetworksCommand,
    },
    /// Volumes of a runtime on a node.
    Volumes {
        #[command(subcommand)]
        command: resources::VolumesCommand,
    },
    /// Instances: deployment replicas and direct containers (the compute view).
    Instances {
        #[command(subcommand)]
        command: instances::InstancesCommand,
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
    /// Credentials for image registries (login/logout: admin only).
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
    /// Compose files deployed as stacks: deploy -f FILE NAME, ls, ps NAME, rm NAME.
    Stack {
        #[command(subcommand)]
        command: stacks::StackCommand,
    },
    /// A backend (runtime) across the cluster: nodes, versions, capabilities, instances.
    Backends {
        #[command(subcommand)]
        command: BackendsCommand,
    },
    /// Named control planes in the config file: list, switch, add.
    Context {
        #[command(subcommand)]
        command: contexts::ContextCommand,
    },
    /// Print a shell completion script: `diplo completion bash > /etc/bash_completion.d/diplo`.
    Completion {
        /// bash, zsh or fish.
        shell: Shell,
    },
}

#[derive(Subcommand)]
enum BackendsCommand {
    /// Show one backend: docker, containerd, lxc or podman.
    Info {
        #[arg(value_parser = |s: &str| s.parse::<diplo_api::runtime::Runtime>().map_err(|e| e.to_string()))]
        backend: diplo_api::runtime::Runtime,
    },
}

/// Shells `diplo completion` writes scripts for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
enum NodesCommand {
    /// List nodes.
    Ls,
    /// Show one node.
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
    Ls,
    /// Show one deployment with its instances.
    Show { name: String },
    /// Change the number of replicas.
    Scale { name: String, replicas: u32 },
    /// Change a deployment (image, replicas, env, resources, restart policy, ports,
    /// command): a new revision, rolled out.
    Update(deployments::UpdateArgs),
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
        /// Restart policy: no, always, on-failure[:N], unless-stopped.
        #[arg(long, default_value = "no")]
        restart: String,
        /// Limits, hardening, stop and health options.
        #[command(flatten)]
        options: Box<workload::WorkloadFlags>,
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
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Unpause { id: String },
    /// Resource use of a container: one sample, or one a second with --follow.
    Stats {
        id: String,
        /// Keep sampling until interrupted or the container is gone.
        #[arg(short, long)]
        follow: bool,
    },
    /// Copy files: `cp ID:PATH LOCAL_DIR` out of a container, `cp LOCAL_PATH ID:DIR` into it
    /// (at most 4 MiB as tar).
    Cp {
        /// ID:PATH inside a container, or a local path.
        source: String,
        /// A local directory, or ID:DIR inside a container.
        destination: String,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; usage errors exit 2.
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { std::process::ExitCode::from(exit::USAGE) } else { std::process::ExitCode::SUCCESS };
        }
    };
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("diplo: error: {err:#}");
            std::process::ExitCode::from(exit::exit_code(&err))
        }
    }
}

/// A gRPC status as a CLI error: its message names what went wrong, its code sets the
/// exit code ([`exit::exit_code`]).
pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(exit::StatusError(status))
}

async fn run(cli: Cli) -> Result<()> {
    use std::io::IsTerminal;
    let format = Format::resolve(cli.output, std::io::stdout().is_terminal());
    // Commands that need no control plane.
    let command = match cli.command {
        Command::Completion { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "diplo", &mut std::io::stdout());
            return Ok(());
        }
        Command::Context { command } => return contexts::run(&client::config_path_for_writing(cli.config)?, command, format),
        command => command,
    };
    let path = client::context_path(cli.config)?;
    let (_, context) = ContextFile::load(&path)?.select(cli.context.as_deref(), &path)?;
    let channel = client::connect(&context).await?;
    let mut cluster = client::limited!(ClusterServiceClient::new(channel.clone()));
    match command {
        Command::Status => {
            let status = cluster.get_status(pb::GetStatusRequest {}).await.map_err(status_error)?.into_inner();
            let runtimes: Vec<&str> = status.available_runtimes.iter().map(|k| output::runtime_name(*k)).collect();
            let value = serde_json::json!({
                "server": context.server,
                "nodes": {"total": status.nodes_total, "ready": status.nodes_ready, "unhealthy": status.nodes_unhealthy, "down": status.nodes_down},
                "instances": {"total": status.instances_total, "running": status.instances_running},
                "available_runtimes": runtimes,
            });
            output::print(format, &value, || {
                [
                    format!("Control plane: {}", context.server),
                    format!(
                        "Nodes: {} total, {} ready, {} unhealthy, {} down",
                        status.nodes_total, status.nodes_ready, status.nodes_unhealthy, status.nodes_down
                    ),
                    format!("Instances: {} total, {} running", status.instances_total, status.instances_running),
                    format!("Runtimes available: {}", if runtimes.is_empty() { "none".into() } else { runtimes.join(", ") }),
                ]
                .join("\n")
            })?;
        }
        Command::Nodes { command } => nodes(&mut cluster, command, format).await?,
        Command::JoinToken { command } => join_token(&mut cluster, command, format).await?,
        Command::ApiToken { command } => api_token(&mut cluster, command, format).await?,
        Command::Containers { command } => containers::run(channel, command, format).await?,
        Command::Instances { command } => instances::run(channel, command, format).await?,
        Command::Images { command } => resources::images(channel, command, format).await?,
        Command::Networks { command } => resources::networks(channel, command, format).await?,
        Command::Volumes { command } => resources::volumes(channel, command, format).await?,
        Command::Deploy(args) => deployments::deploy(channel, args).await?,
        Command::Apps { command } => deployments::apps(channel, command, format).await?,
        Command::Events { follow } => deployments::events(channel, follow, format).await?,
        Command::Builds { command } => builds::run(channel, command, format).await?,
        Command::Registry { command } => {
            registry::run(client::limited!(diplo_api::pb::registry_service_client::RegistryServiceClient::new(channel)), command, format)
                .await?
        }
        Command::Stack { command } => {
            stacks::run(client::limited!(diplo_api::pb::stack_service_client::StackServiceClient::new(channel)), command, format).await?
        }
        Command::Backends { command: BackendsCommand::Info { backend } } => {
            let runtime = pb::RuntimeKind::from(backend) as i32;
            let info = cluster.get_backend(pb::GetBackendRequest { runtime }).await.map_err(status_error)?.into_inner();
            output::print(format, &output::backend_json(&info), || output::backend_table(&info))?;
        }
        Command::Completion { .. } | Command::Context { .. } => {}
    }
    Ok(())
}

type Cluster = ClusterServiceClient<tonic::transport::Channel>;

async fn nodes(cluster: &mut Cluster, command: NodesCommand, format: Format) -> Result<()> {
    let node_ref = |node: String| pb::NodeRef { node };
    let show = |node: pb::Node| output::print_document(format, &output::node_json(&node));
    match command {
        NodesCommand::Ls => {
            let nodes = cluster.list_nodes(pb::ListNodesRequest {}).await.map_err(status_error)?.into_inner().nodes;
            let list: Vec<_> = nodes.iter().map(output::node_json).collect();
            output::print(format, &serde_json::Value::Array(list), || output::nodes_table(&nodes))?;
        }
        NodesCommand::Show { node } => {
            show(cluster.get_node(pb::GetNodeRequest { node }).await.map_err(status_error)?.into_inner())?;
        }
        NodesCommand::Cordon { node } => show(cluster.cordon_node(node_ref(node)).await.map_err(status_error)?.into_inner())?,
        NodesCommand::Uncordon { node } => show(cluster.uncordon_node(node_ref(node)).await.map_err(status_error)?.into_inner())?,
        NodesCommand::Drain { node } => show(cluster.drain_node(node_ref(node)).await.map_err(status_error)?.into_inner())?,
        NodesCommand::Rm { node } => {
            cluster.remove_node(node_ref(node.clone())).await.map_err(status_error)?;
            println!("node {node} removed");
        }
    }
    Ok(())
}

async fn join_token(cluster: &mut Cluster, command: JoinTokenCommand, format: Format) -> Result<()> {
    match command {
        JoinTokenCommand::Create { ttl, single_use, labels } => {
            let labels = parse_labels(&labels)?;
            let request = pb::CreateJoinTokenRequest { ttl_seconds: ttl.map_or(0, |t| t.as_secs().max(1)), single_use, labels };
            let created = cluster.create_join_token(request).await.map_err(status_error)?.into_inner();
            println!("{}", created.token);
        }
        JoinTokenCommand::Ls => {
            let tokens = cluster.list_join_tokens(pb::ListJoinTokensRequest {}).await.map_err(status_error)?.into_inner().tokens;
            let rows: Vec<[String; 5]> = tokens
                .iter()
                .map(|token| {
                    let expires = token.expires_at.map(|t| t.seconds).and_then(|s| chrono::DateTime::from_timestamp(s, 0));
                    let state = token_state(token.revoked, expires.is_some_and(|at| at <= chrono::Utc::now()));
                    let expires = expires.map_or("-".into(), |at| at.to_rfc3339());
                    [token.id.clone(), expires, token.single_use.to_string(), token.uses.to_string(), state.to_owned()]
                })
                .collect();
            let list: Vec<serde_json::Value> = tokens
                .iter()
                .zip(&rows)
                .map(|(t, row)| {
                    serde_json::json!({"id": t.id, "expires_at": row[1], "single_use": t.single_use, "uses": t.uses, "state": row[4], "labels": t.labels})
                })
                .collect();
            output::print(format, &serde_json::Value::Array(list), || {
                output::table(["ID", "EXPIRES", "SINGLE-USE", "USES", "STATE"], rows)
            })?;
        }
        JoinTokenCommand::Revoke { id } => {
            cluster.revoke_join_token(pb::RevokeJoinTokenRequest { id: id.clone() }).await.map_err(status_error)?;
            println!("join token {id} revoked");
        }
    }
    Ok(())
}

async fn api_token(cluster: &mut Cluster, command: ApiTokenCommand, format: Format) -> Result<()> {
    let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0));
    match command {
        ApiTokenCommand::Create { role, ttl, name } => {
            let request = pb::CreateApiTokenRequest { name, role, ttl_seconds: ttl.map_or(0, |t| t.as_secs().max(1)) };
            let created = cluster.create_api_token(request).await.map_err(status_error)?.into_inner();
            println!("{}", created.token);
        }
        ApiTokenCommand::Ls => {
            let tokens = cluster.list_api_tokens(pb::ListApiTokensRequest {}).await.map_err(status_error)?.into_inner().tokens;
            let rows: Vec<[String; 6]> = tokens
                .iter()
                .map(|token| {
                    let expires = time(token.expires_at);
                    let state = token_state(token.revoked, expires.is_some_and(|at| at <= chrono::Utc::now()));
                    let created = time(token.created_at).map_or("-".into(), |at| at.to_rfc3339());
                    let expires = expires.map_or("never".into(), |at| at.to_rfc3339());
                    [token.id.clone(), token.name.clone(), token.role.clone(), created, expires, state.to_owned()]
                })
                .collect();
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    serde_json::json!({"id": row[0], "name": row[1], "role": row[2], "created_at": row[3], "expires_at": row[4], "state": row[5]})
                })
                .collect();
            output::print(format, &serde_json::Value::Array(list), || {
                output::table(["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "STATE"], rows)
            })?;
        }
        ApiTokenCommand::Revoke { id } => {
            cluster.revoke_api_token(pb::RevokeApiTokenRequest { id: id.clone() }).await.map_err(status_error)?;
            println!("API token {id} revoked");
        }
    }
    Ok(())
}

/// A token's state: revoked first, then expired, else active.
fn token_state(revoked: bool, expired: bool) -> &'static str {
    if revoked {
        "revoked"
    } else if expired {
        "expired"
    } else {
        "active"
    }
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
