//! `diplo instances …`: the compute view — deployment instances and direct containers
//! alike (`DeploymentService` instance calls; `ContainerService` for direct containers).

use std::collections::HashMap;

use anyhow::Result;
use diplo_api::pb;
use diplo_api::pb::container_service_client::ContainerServiceClient;
use diplo_api::pb::deployment_service_client::DeploymentServiceClient;
use tonic::transport::Channel;

use crate::output::{Format, runtime_name};
use crate::status_error;

/// `diplo instances` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum InstancesCommand {
    /// List instances: every deployment's, and direct containers (APP `(direct)`).
    Ls {
        /// Only this deployment's instances.
        #[arg(long)]
        app: Option<String>,
    },
    /// Create an instance: a direct container on the chosen backend and node, or scheduled.
    Create(CreateArgs),
    /// Change an instance's memory, CPU or restart policy (a deployment instance: its
    /// deployment's template, rolled out to all its instances as a new revision).
    Update {
        /// Instance id.
        id: String,
        /// Memory limit, e.g. 256m, 1g.
        #[arg(long, value_parser = crate::deployments::parse_memory_flag)]
        memory: Option<u64>,
        /// CPU limit in cores, e.g. 0.5.
        #[arg(long)]
        cpus: Option<f64>,
        /// Restart policy: no, always, on-failure, unless-stopped.
        #[arg(long)]
        restart: Option<String>,
    },
    /// Remove an instance (a deployment replaces its instance; a direct container is removed).
    Rm {
        /// Instance id.
        id: String,
    },
    /// Start an instance's container.
    Start {
        /// Instance id.
        id: String,
    },
    /// Stop an instance's container (a deployment's restart policy decides what follows).
    Stop {
        /// Instance id.
        id: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u32,
    },
    /// Restart an instance's container.
    Restart {
        /// Instance id.
        id: String,
    },
}

/// What `diplo instances create` asks for.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Instance (container) name.
    #[arg(long)]
    pub name: String,
    /// Backend: docker, containerd, lxc or podman (default: scheduled).
    #[arg(long)]
    pub backend: Option<String>,
    /// Node id or name (default: scheduled).
    #[arg(long)]
    pub node: Option<String>,
    /// Publish HOST:CONTAINER[/udp] (repeatable).
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Environment KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Memory limit, e.g. 256m, 1g.
    #[arg(long, value_parser = crate::deployments::parse_memory_flag)]
    pub memory: Option<u64>,
    /// CPU limit in cores, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Restart policy: no, always, on-failure, unless-stopped.
    #[arg(long, default_value = "no")]
    pub restart: String,
    /// Image reference.
    pub image: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// An instance as JSON (`-o json|yaml`), with its node's name.
fn instance_json(i: &pb::Instance) -> serde_json::Value {
    let container = i.container.clone().unwrap_or_default();
    serde_json::json!({
        "id": i.id,
        "direct": i.direct,
        "deployment": (!i.deployment.is_empty()).then_some(&i.deployment),
        "revision": i.revision,
        "node_id": i.node_id,
        "node": i.node_name,
        "runtime": runtime_name(i.runtime),
        "status": i.status,
        "container_id": (!container.id.is_empty()).then_some(&container.id),
        "name": (!container.name.is_empty()).then_some(&container.name),
    })
}

fn table(instances: &[pb::Instance]) -> String {
    let names: HashMap<String, String> = instances.iter().map(|i| (i.node_id.clone(), i.node_name.clone())).collect();
    let rows = instances.iter().map(|i| {
        [
            i.id.chars().take(12).collect(),
            if i.direct { "(direct)".to_owned() } else { i.deployment.clone() },
            crate::output::node_label(&names, &i.node_id),
            runtime_name(i.runtime).to_owned(),
            i.status.clone(),
            if i.direct { "-".to_owned() } else { i.revision.to_string() },
        ]
    });
    crate::output::table(["ID", "APP", "NODE", "RUNTIME", "STATUS", "REV"], rows)
}

/// Whether an instance call failed because no deployment instance has that id (it may
/// then be a direct container's id).
fn not_an_instance(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::NotFound
}

/// Runs one `instances` subcommand.
pub async fn run(channel: Channel, command: InstancesCommand, format: Format) -> Result<()> {
    let mut deployments = crate::client::limited!(DeploymentServiceClient::new(channel.clone()));
    let mut containers = crate::client::limited!(ContainerServiceClient::new(channel));
    let instance_ref = |id: &str| pb::InstanceRef { id: id.to_owned() };
    let container_ref = |id: &str| pb::ContainerRef { id: id.to_owned() };
    match command {
        InstancesCommand::Ls { app } => {
            let request = pb::ListInstancesRequest { deployment: app.unwrap_or_default() };
            let instances = deployments.list_instances(request).await.map_err(status_error)?.into_inner().instances;
            crate::output::print(format, &serde_json::Value::Array(instances.iter().map(instance_json).collect()), || table(&instances))?;
        }
        InstancesCommand::Create(args) => {
            let runtime = match &args.backend {
                Some(name) => pb::RuntimeKind::from(name.parse::<diplo_api::runtime::Runtime>()?) as i32,
                None => 0,
            };
            let spec = pb::ContainerSpec {
                name: args.name,
                image: args.image,
                command: args.command,
                environment: crate::containers::parse_pairs(&args.env, "--env")?,
                ports: args.publish.iter().map(|p| crate::containers::parse_publish(p)).collect::<Result<_>>()?,
                restart_policy: args.restart,
                memory_bytes: args.memory.unwrap_or(0),
                cpu_millis: args.cpus.map(crate::deployments::cpu_millis).transpose()?.unwrap_or(0),
                ..Default::default()
            };
            let request = pb::CreateContainerRequest { spec: Some(spec), runtime, node: args.node.unwrap_or_default(), start: true };
            let state = containers.create_container(request).await.map_err(status_error)?.into_inner();
            println!("{}", state.id);
        }
        InstancesCommand::Update { id, memory, cpus, restart } => {
            let request = pb::UpdateInstanceRequest {
                id: id.clone(),
                memory_bytes: memory,
                cpu_millis: cpus.map(crate::deployments::cpu_millis).transpose()?,
                restart_policy: restart.unwrap_or_default(),
            };
            let d = deployments.update_instance(request).await.map_err(status_error)?.into_inner();
            let name = d.spec.map(|s| s.name).unwrap_or_default();
            println!("instance {id}: deployment {name} updated to revision {} (rolled out to all its instances)", d.revision);
        }
        InstancesCommand::Rm { id } => match deployments.delete_instance(instance_ref(&id)).await {
            Ok(_) => println!("instance {id} removed; its deployment replaces it"),
            Err(status) if not_an_instance(&status) => {
                containers.remove_container(pb::RemoveContainerRequest { id: id.clone(), force: true }).await.map_err(status_error)?;
                println!("instance {id} (a direct container) removed");
            }
            Err(status) => return Err(status_error(status)),
        },
        InstancesCommand::Start { id } => match deployments.start_instance(instance_ref(&id)).await {
            Ok(_) => println!("{id}"),
            Err(status) if not_an_instance(&status) => {
                containers.start_container(container_ref(&id)).await.map_err(status_error)?;
                println!("{id}");
            }
            Err(status) => return Err(status_error(status)),
        },
        InstancesCommand::Stop { id, time } => {
            match deployments.stop_instance(pb::StopInstanceRequest { id: id.clone(), grace_seconds: time }).await {
                Ok(_) => println!("{id}"),
                Err(status) if not_an_instance(&status) => {
                    containers
                        .stop_container(pb::StopContainerRequest { id: id.clone(), grace_seconds: time })
                        .await
                        .map_err(status_error)?;
                    println!("{id}");
                }
                Err(status) => return Err(status_error(status)),
            }
        }
        InstancesCommand::Restart { id } => match deployments.restart_instance(instance_ref(&id)).await {
            Ok(_) => println!("{id}"),
            Err(status) if not_an_instance(&status) => {
                containers.restart_container(container_ref(&id)).await.map_err(status_error)?;
                println!("{id}");
            }
            Err(status) => return Err(status_error(status)),
        },
    }
    Ok(())
}
