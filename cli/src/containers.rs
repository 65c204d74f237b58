//! `diplo containers …`: direct container operations through `ContainerService`.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, Result};
use diplo_api::pb;
use diplo_api::pb::container_service_client::ContainerServiceClient;
use tonic::transport::Channel;

use crate::output::Format;
use crate::output::runtime_name;
use crate::{ContainersCommand, status_error};

/// Runs one `containers` subcommand.
pub async fn run(channel: Channel, command: ContainersCommand, format: Format) -> Result<()> {
    let mut client = crate::client::limited!(ContainerServiceClient::new(channel.clone()));
    match command {
        ContainersCommand::Ls { node } => {
            let request = pb::ListContainersRequest { node: node.unwrap_or_default() };
            let containers = client.list_containers(request).await.map_err(status_error)?.into_inner().containers;
            let names = crate::client::node_names(channel).await?;
            let list = containers.iter().map(|c| container_json(c, &names)).collect();
            crate::output::print(format, &serde_json::Value::Array(list), || table(&containers, &names))?;
        }
        ContainersCommand::Run { name, publish, env, runtime, node, restart, image, command } => {
            let runtime = match runtime {
                Some(name) => pb::RuntimeKind::from(name.parse::<diplo_api::runtime::Runtime>()?) as i32,
                None => 0,
            };
            let spec = pb::ContainerSpec {
                name,
                image,
                command,
                environment: parse_pairs(&env, "--env")?,
                ports: publish.iter().map(|p| parse_publish(p)).collect::<Result<_>>()?,
                restart_policy: restart,
                ..Default::default()
            };
            let request = pb::CreateContainerRequest { spec: Some(spec), runtime, node: node.unwrap_or_default(), start: true };
            let state = client.create_container(request).await.map_err(status_error)?.into_inner();
            println!("{}", state.id);
        }
        ContainersCommand::Start { id } => {
            client.start_container(pb::ContainerRef { id: id.clone() }).await.map_err(status_error)?;
            println!("{id}");
        }
        ContainersCommand::Stop { id, time } => {
            client.stop_container(pb::StopContainerRequest { id: id.clone(), grace_seconds: time }).await.map_err(status_error)?;
            println!("{id}");
        }
        ContainersCommand::Restart { id } => {
            client.restart_container(pb::ContainerRef { id: id.clone() }).await.map_err(status_error)?;
            println!("{id}");
        }
        ContainersCommand::Rm { id, force } => {
            client.remove_container(pb::RemoveContainerRequest { id: id.clone(), force }).await.map_err(status_error)?;
            println!("{id}");
        }
        ContainersCommand::Logs { id, follow, tail } => {
            let request = pb::ContainerLogsRequest { id, follow, tail: tail.unwrap_or(0), timestamps: false };
            let mut stream = client.container_logs(request).await.map_err(status_error)?.into_inner();
            while let Some(line) = stream.message().await.map_err(status_error)? {
                if line.stream == "stderr" {
                    std::io::stderr().write_all(&line.data)?;
                } else {
                    let mut stdout = std::io::stdout();
                    stdout.write_all(&line.data)?;
                    stdout.flush()?;
                }
            }
        }
        ContainersCommand::Exec { id, argv } => {
            let output = client.exec(pb::ExecRequest { id, argv }).await.map_err(status_error)?.into_inner();
            std::io::stdout().write_all(&output.stdout)?;
            std::io::stderr().write_all(&output.stderr)?;
            if output.exit_code != 0 {
                std::process::exit(output.exit_code.clamp(1, 255));
            }
        }
    }
    Ok(())
}

fn container_json(c: &pb::ContainerState, names: &HashMap<String, String>) -> serde_json::Value {
    let ports: HashMap<String, String> = c.ports.iter().map(|p| (p.host_port.to_string(), p.container_port.to_string())).collect();
    serde_json::json!({
        "id": c.id,
        "name": c.name,
        "image": c.image,
        "status": c.status,
        "node_id": c.node_id,
        "node": names.get(&c.node_id),
        "runtime": runtime_name(c.runtime),
        "ports": ports,
        "ip_address": c.ip_address,
        "pid": c.pid,
        "exit_code": c.exit_code,
        "started_at": c.started_at,
        "health": c.health,
        "labels": c.labels,
        "restart_count": c.restart_count,
    })
}

fn table(containers: &[pb::ContainerState], names: &HashMap<String, String>) -> String {
    let rows = containers.iter().map(|c| {
        let ports: Vec<String> = c.ports.iter().map(|p| format!("{}->{}", p.host_port, p.container_port)).collect();
        [
            c.id.chars().take(12).collect(),
            c.name.clone(),
            c.status.clone(),
            runtime_name(c.runtime).to_owned(),
            crate::output::node_label(names, &c.node_id),
            ports.join(","),
            c.image.clone(),
        ]
    });
    crate::output::table(["ID", "NAME", "STATUS", "RUNTIME", "NODE", "PORTS", "IMAGE"], rows)
}

pub(crate) fn parse_pairs(pairs: &[String], flag: &str) -> Result<HashMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (k, v) = pair.split_once('=').with_context(|| format!("invalid {flag} {pair:?}: expected KEY=VALUE"))?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

pub(crate) fn parse_publish(text: &str) -> Result<pb::PortMapping> {
    let (ports, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let (host, container) = ports.split_once(':').with_context(|| format!("invalid --publish {text:?}: expected HOST:CONTAINER"))?;
    let port = |p: &str| p.parse::<u16>().with_context(|| format!("invalid --publish {text:?}: {p:?} is not a port"));
    Ok(pb::PortMapping { host_port: u32::from(port(host)?), container_port: u32::from(port(container)?), protocol: protocol.to_owned() })
}
