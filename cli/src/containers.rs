//! `diplo containers …`: direct container operations through `ContainerService`.

use std::collections::HashMap;
use std::io::Write;

use anyhow::{Context, Result};
use diplo_api::pb;
use diplo_api::pb::container_ops_service_client::ContainerOpsServiceClient;
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
        ContainersCommand::Run { name, publish, env, runtime, node, restart, options, image, command } => {
            let runtime = match runtime {
                Some(name) => pb::RuntimeKind::from(name.parse::<diplo_api::runtime::Runtime>()?) as i32,
                None => 0,
            };
            let mut spec = pb::ContainerSpec {
                name,
                image,
                command,
                ports: publish.iter().map(|p| parse_publish(p)).collect::<Result<_>>()?,
                restart_policy: restart,
                ..Default::default()
            };
            options.apply(&mut spec, parse_pairs(&env, "--env")?)?;
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
        ContainersCommand::Pause { id } => {
            let mut ops = crate::client::limited!(ContainerOpsServiceClient::new(channel.clone()));
            let state = ops.pause_container(pb::PauseContainerRequest { id }).await.map_err(status_error)?.into_inner();
            print_state(channel, &state, format).await?;
        }
        ContainersCommand::Unpause { id } => {
            let mut ops = crate::client::limited!(ContainerOpsServiceClient::new(channel.clone()));
            let state = ops.unpause_container(pb::UnpauseContainerRequest { id }).await.map_err(status_error)?.into_inner();
            print_state(channel, &state, format).await?;
        }
        ContainersCommand::Stats { id, follow } => stats(channel, id, follow, format).await?,
        ContainersCommand::Cp { source, destination } => copy(channel, parse_copy(&source, &destination)?).await?,
    }
    Ok(())
}

async fn print_state(channel: Channel, state: &pb::ContainerState, format: Format) -> Result<()> {
    let names = crate::client::node_names(channel).await?;
    crate::output::print(format, &container_json(state, &names), || table(std::slice::from_ref(state), &names))
}

fn stats_json(sample: &pb::ContainerStatsSample, names: &HashMap<String, String>) -> serde_json::Value {
    let stats = sample.stats.unwrap_or_default();
    serde_json::json!({
        "container_id": sample.container_id,
        "node_id": sample.node_id,
        "node": names.get(&sample.node_id),
        "runtime": runtime_name(sample.runtime),
        "read_at": sample.read_at,
        "cpu_percent": stats.cpu_percent,
        "memory_bytes": stats.memory_bytes,
        "memory_limit_bytes": stats.memory_limit_bytes,
        "network_rx_bytes": stats.network_rx_bytes,
        "network_tx_bytes": stats.network_tx_bytes,
    })
}

fn stats_table(sample: &pb::ContainerStatsSample, names: &HashMap<String, String>) -> String {
    let stats = sample.stats.unwrap_or_default();
    let mib = |bytes: u64| format!("{:.1}MiB", bytes as f64 / f64::from(1u32 << 20));
    let limit = if stats.memory_limit_bytes == 0 { "-".to_owned() } else { mib(stats.memory_limit_bytes) };
    let row = [
        sample.container_id.chars().take(12).collect(),
        crate::output::node_label(names, &sample.node_id),
        format!("{:.2}%", stats.cpu_percent),
        mib(stats.memory_bytes),
        limit,
        stats.network_rx_bytes.to_string(),
        stats.network_tx_bytes.to_string(),
        sample.read_at.clone(),
    ];
    crate::output::table(["CONTAINER", "NODE", "CPU", "MEMORY", "LIMIT", "NET RX", "NET TX", "READ AT"], [row])
}

/// One sample, or one line (JSON), document (YAML) or row (table) per sample while following.
async fn stats(channel: Channel, id: String, follow: bool, format: Format) -> Result<()> {
    let names = crate::client::node_names(channel.clone()).await?;
    let mut ops = crate::client::limited!(ContainerOpsServiceClient::new(channel));
    let mut stream = ops.container_stats(pb::ContainerStatsRequest { id, follow }).await.map_err(status_error)?.into_inner();
    let mut first = true;
    while let Some(sample) = stream.message().await.map_err(status_error)? {
        let value = stats_json(&sample, &names);
        match (follow, format) {
            (false, _) => crate::output::print(format, &value, || stats_table(&sample, &names))?,
            (true, Format::Json) => println!("{value}"),
            (true, Format::Yaml) => println!("---\n{}", crate::output::render(format, &value, String::new)?),
            (true, Format::Table) => {
                let rendered = stats_table(&sample, &names);
                let shown = if first { rendered.as_str() } else { rendered.split_once('\n').map_or("", |(_, row)| row) };
                println!("{shown}");
            }
        }
        std::io::stdout().flush().context("writing stats")?;
        first = false;
        if !follow {
            break;
        }
    }
    Ok(())
}

/// What `containers cp` copies, and which way.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// `ID:PATH LOCAL_DIR`: a path inside the container extracted into a local directory.
    Out { id: String, path: String, local_dir: std::path::PathBuf },
    /// `LOCAL_PATH ID:DIR`: a local file or directory extracted into a container's directory.
    In { local: std::path::PathBuf, id: String, dir: String },
}

/// `ID:/PATH` as (id, path): an id or name without `/`, then an absolute path.
fn container_side(text: &str) -> Option<(String, String)> {
    let (id, path) = text.split_once(':')?;
    (!id.is_empty() && !id.contains('/') && path.starts_with('/')).then(|| (id.to_owned(), path.to_owned()))
}

/// Reads the two arguments of `containers cp`: exactly one names a container (`ID:/PATH`).
pub(crate) fn parse_copy(source: &str, destination: &str) -> Result<Transfer> {
    match (container_side(source), container_side(destination)) {
        (Some((id, path)), None) => Ok(Transfer::Out { id, path, local_dir: destination.into() }),
        (None, Some((id, dir))) => Ok(Transfer::In { local: source.into(), id, dir }),
        (Some(_), Some(_)) => anyhow::bail!("cannot copy between two containers: one side must be a local path"),
        (None, None) => anyhow::bail!("one side must name a container as ID:/ABSOLUTE/PATH (got {source:?} and {destination:?})"),
    }
}

/// A tar of one local file or directory, named by its last component (links kept as links).
pub(crate) fn archive_of(local: &std::path::Path) -> Result<Vec<u8>> {
    let metadata = std::fs::symlink_metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    let name = local
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(ToOwned::to_owned))
        .with_context(|| format!("{} has no name to copy under", local.display()))?;
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    if metadata.is_dir() { builder.append_dir_all(&name, local) } else { builder.append_path_with_name(local, &name) }
        .with_context(|| format!("cannot archive {}", local.display()))?;
    let archive = builder.into_inner().context("finishing the archive")?;
    diplo_api::archive::check_archive_size(archive.len()).map_err(anyhow::Error::msg)?;
    Ok(archive)
}

/// Extracts an archive received from a container into `dir`, after refusing any member
/// that is absolute or climbs out with `..`. Returns the number of members.
pub(crate) fn extract_into(archive: &[u8], dir: &std::path::Path) -> Result<usize> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a local directory", dir.display());
    }
    let members = diplo_api::archive::check_archive(archive).map_err(|e| anyhow::anyhow!("refusing the archive received: {e}"))?;
    tar::Archive::new(archive).unpack(dir).with_context(|| format!("cannot extract into {}", dir.display()))?;
    Ok(members)
}

async fn copy(channel: Channel, copy: Transfer) -> Result<()> {
    let mut ops = crate::client::limited!(ContainerOpsServiceClient::new(channel));
    match copy {
        Transfer::Out { id, path, local_dir } => {
            if !local_dir.is_dir() {
                anyhow::bail!("{} is not a local directory", local_dir.display());
            }
            let request = pb::CopyFromContainerRequest { id: id.clone(), path: path.clone() };
            let archive = ops.copy_from_container(request).await.map_err(status_error)?.into_inner().archive;
            let members = extract_into(&archive, &local_dir)?;
            println!("copied {id}:{path} into {} ({members} members)", local_dir.display());
        }
        Transfer::In { local, id, dir } => {
            let archive = archive_of(&local)?;
            let request = pb::CopyToContainerRequest { id: id.clone(), dir: dir.clone(), archive };
            let members = ops.copy_to_container(request).await.map_err(status_error)?.into_inner().members;
            println!("copied {} into {id}:{dir} ({members} members)", local.display());
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
            health_cell(&c.health),
            runtime_name(c.runtime).to_owned(),
            crate::output::node_label(names, &c.node_id),
            ports.join(","),
            c.image.clone(),
        ]
    });
    crate::output::table(["ID", "NAME", "STATUS", "HEALTH", "RUNTIME", "NODE", "PORTS", "IMAGE"], rows)
}

/// The HEALTH cell: `starting`, `healthy` or `unhealthy`, `-` without a health check.
fn health_cell(health: &str) -> String {
    if health.is_empty() { "-".to_owned() } else { health.to_owned() }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_table_shows_health_on_every_runtime() {
        let state = |runtime: pb::RuntimeKind, health: &str| pb::ContainerState {
            id: format!("{}-id", runtime.short_name()),
            name: "web".into(),
            status: "running".into(),
            runtime: runtime as i32,
            health: health.into(),
            ..Default::default()
        };
        let rows = [
            state(pb::RuntimeKind::Docker, "healthy"),
            state(pb::RuntimeKind::Podman, ""),
            state(pb::RuntimeKind::Containerd, "unhealthy"),
            state(pb::RuntimeKind::Lxc, "starting"),
        ];
        let rendered = table(&rows, &HashMap::new());
        let lines: Vec<&str> = rendered.lines().collect();
        assert!(lines[0].split_whitespace().eq(["ID", "NAME", "STATUS", "HEALTH", "RUNTIME", "NODE", "PORTS", "IMAGE"]), "{rendered}");
        for (line, (health, runtime)) in
            lines[1..].iter().zip([("healthy", "docker"), ("-", "podman"), ("unhealthy", "containerd"), ("starting", "lxc")])
        {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(&cells[3..5], [health, runtime], "{rendered}");
        }
    }

    #[test]
    fn copy_arguments_name_exactly_one_container() {
        assert_eq!(
            parse_copy("web:/etc/hosts", "out").expect("out"),
            Transfer::Out { id: "web".into(), path: "/etc/hosts".into(), local_dir: "out".into() }
        );
        assert_eq!(
            parse_copy("./dir/a:b", "0123abcd:/tmp").expect("in"),
            Transfer::In { local: "./dir/a:b".into(), id: "0123abcd".into(), dir: "/tmp".into() }
        );
        for (source, destination, says) in [
            ("a:/x", "b:/y", "two containers"),
            ("here", "there", "ID:/ABSOLUTE/PATH"),
            ("web:etc", "out", "ID:/ABSOLUTE/PATH"),
            (":/etc", "out", "ID:/ABSOLUTE/PATH"),
        ] {
            let message = parse_copy(source, destination).expect_err(source).to_string();
            assert!(message.contains(says), "{source} {destination}: {message}");
        }
    }

    /// A tar with one member named `name`, written raw into the header.
    fn raw_tar(name: &str) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(4);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"evil"[..]).expect("append");
        builder.into_inner().expect("tar")
    }

    #[test]
    fn archives_round_trip_locally_and_hostile_members_are_refused() {
        let source = tempfile::tempdir().expect("tempdir");
        let dir = source.path().join("tree");
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub/file.txt"), b"hello").expect("write");
        let archive = archive_of(&dir).expect("archive");
        let target = tempfile::tempdir().expect("tempdir");
        assert!(extract_into(&archive, target.path()).expect("extract") >= 2);
        assert_eq!(std::fs::read(target.path().join("tree/sub/file.txt")).expect("read"), b"hello");

        for (name, says) in [("../escape", "`..`"), ("/tmp/absolute", "absolute")] {
            let message = extract_into(&raw_tar(name), target.path()).expect_err(name).to_string();
            assert!(message.contains(says), "{name}: {message}");
        }
        assert!(!source.path().join("escape").exists() && !target.path().parent().expect("parent").join("escape").exists());
        assert!(extract_into(&archive, &target.path().join("missing")).is_err(), "a missing local directory is refused");
    }
}
