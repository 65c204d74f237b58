//! `diplo deploy`, `diplo apps …` and `diplo events` through `DeploymentService` and
//! `EventService`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use diplo_api::pb;
use diplo_api::pb::deployment_service_client::DeploymentServiceClient;
use diplo_api::pb::event_service_client::EventServiceClient;
use tonic::transport::Channel;

use crate::output::{Format, runtime_name};
use crate::status_error;

/// What `diplo deploy` asks for (its flags and arguments).
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Deployment name.
    pub name: String,
    /// Image reference.
    #[arg(long, required_unless_present = "repo", conflicts_with = "repo")]
    pub image: Option<String>,
    /// Build from this git repository instead (its build log is shown, then the rollout).
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch to build (default: the repository's default branch).
    #[arg(long, requires = "repo")]
    pub branch: Option<String>,
    /// Language of the repository (default: detected).
    #[arg(long, requires = "repo")]
    pub language: Option<String>,
    /// Number of replicas.
    #[arg(short, long, default_value_t = 1)]
    pub replicas: u32,
    /// Publish HOST:CONTAINER[/udp] (repeatable).
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Environment KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Runtime: docker, containerd, lxc or podman (default: each node's preferred).
    #[arg(long)]
    pub runtime: Option<String>,
    /// Only this node (id or name).
    #[arg(long)]
    pub node: Option<String>,
    /// binpack (default) or spread.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Restart policy: no, always, on-failure[:N], unless-stopped.
    #[arg(long, default_value = "always")]
    pub restart: String,
    /// Limits, hardening, stop and health options.
    #[command(flatten)]
    pub options: Box<crate::workload::WorkloadFlags>,
    /// Same key twice creates one deployment.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Return at once instead of showing progress.
    #[arg(short, long)]
    pub detach: bool,
    /// Give up showing progress after this long (e.g. 2m).
    #[arg(long, default_value = "3m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Command and arguments.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// Deploys, then shows progress until every replica runs (exit 0) or the timeout passes
/// with the deployment still not running (exit 1, with its message).
pub async fn deploy(channel: Channel, args: DeployArgs) -> Result<()> {
    let mut client = crate::client::limited!(DeploymentServiceClient::new(channel.clone()));
    let runtime = match &args.runtime {
        Some(name) => pb::RuntimeKind::from(name.parse::<diplo_api::runtime::Runtime>()?) as i32,
        None => 0,
    };
    let mut container = pb::ContainerSpec {
        image: args.image.clone().unwrap_or_default(),
        command: args.command,
        ports: args.publish.iter().map(|p| crate::containers::parse_publish(p)).collect::<Result<_>>()?,
        restart_policy: args.restart,
        ..Default::default()
    };
    args.options.apply(&mut container, crate::containers::parse_pairs(&args.env, "--env")?)?;
    let spec = pb::DeploymentSpec {
        name: args.name.clone(),
        image: args.image.unwrap_or_default(),
        repo_url: args.repo.unwrap_or_default(),
        git_branch: args.branch.unwrap_or_default(),
        language: args.language.unwrap_or_default(),
        replicas: args.replicas,
        runtime,
        constraints: Some(pb::Constraints { node: args.node.unwrap_or_default(), ..Default::default() }),
        container: Some(container),
        strategy: args.strategy.unwrap_or_default(),
        max_parallel: 1,
        ..Default::default()
    };
    let request = pb::DeployRequest { spec: Some(spec), idempotency_key: args.idempotency_key.unwrap_or_default() };
    // Progress is read again whenever the cluster reports an event (watched from before
    // the deploy, so none is missed), and at least every second.
    let mut events = if args.detach {
        None
    } else {
        let mut watcher = crate::client::limited!(EventServiceClient::new(channel.clone()));
        watcher.watch(pb::WatchRequest::default()).await.ok().map(tonic::Response::into_inner)
    };
    let deployment = client.deploy(request).await.map_err(status_error)?.into_inner();
    let build_id = deployment.spec.as_ref().map(|s| s.build_id.clone()).unwrap_or_default();
    if deployment.status == "building" {
        println!("deployment {} (id {}) is building {build_id}", args.name, deployment.id);
    } else {
        println!("deployment {} created (id {}, revision {})", args.name, deployment.id, deployment.revision);
    }
    if args.detach {
        return Ok(());
    }
    if deployment.status == "building" && !build_id.is_empty() {
        follow_build_log(channel.clone(), &build_id).await?;
    }
    let started = Instant::now();
    let mut last = String::new();
    let mut progress = crate::output::Progress::on_stderr();
    loop {
        let current = client.get_deployment(pb::DeploymentRef { name: args.name.clone() }).await.map_err(status_error)?.into_inner();
        if current.status == "failed" {
            progress.finish();
            bail!("{} failed: {}", args.name, current.message);
        }
        let counts = current.instances.iter().fold(HashMap::<&str, usize>::new(), |mut counts, i| {
            *counts.entry(i.status.as_str()).or_default() += 1;
            counts
        });
        let mut summary: Vec<String> = counts.iter().map(|(status, n)| format!("{n} {status}")).collect();
        summary.sort();
        let line = format!("{}: {} [{}] {}", args.name, current.status, summary.join(", "), current.message);
        if current.status == "running" {
            progress.finish();
            println!("{line}");
            let names = crate::client::node_names(channel.clone()).await.unwrap_or_default();
            for instance in &current.instances {
                let node = crate::output::node_label(&names, &instance.node_id);
                println!("  {}  node {node}  {}  {}", instance.id, runtime_name(instance.runtime), instance.status);
            }
            return Ok(());
        }
        if line != last {
            progress.update(&format!("{line} ({}s)", started.elapsed().as_secs()));
            last = line;
        }
        if started.elapsed() > args.timeout {
            progress.finish();
            bail!("{} is still {} after {:?}: {}", args.name, current.status, args.timeout, current.message);
        }
        next_event(&mut events, Duration::from_secs(1)).await;
    }
}

/// Prints a build's output as it comes until the build ends.
async fn follow_build_log(channel: Channel, build_id: &str) -> Result<()> {
    use std::io::Write;
    let mut builds = crate::client::limited!(pb::build_service_client::BuildServiceClient::new(channel));
    let mut lines =
        builds.build_logs(pb::BuildLogsRequest { id: build_id.to_owned(), follow: true }).await.map_err(status_error)?.into_inner();
    let mut stdout = std::io::stdout();
    while let Some(line) = lines.message().await.map_err(status_error)? {
        stdout.write_all(&line.data).context("writing the build log")?;
    }
    stdout.flush().context("writing the build log")?;
    let build = builds.get_build(pb::BuildRef { id: build_id.to_owned() }).await.map_err(status_error)?.into_inner();
    println!("build {build_id}: {} {}", build.status, build.image);
    Ok(())
}

/// Waits for the next cluster event, at most `wait`; without a stream (or once it ended),
/// just waits.
async fn next_event(events: &mut Option<tonic::Streaming<pb::Event>>, wait: Duration) {
    let Some(stream) = events else {
        tokio::time::sleep(wait).await;
        return;
    };
    match tokio::time::timeout(wait, stream.message()).await {
        Ok(Ok(Some(_))) | Err(_) => {}
        Ok(Ok(None) | Err(_)) => *events = None,
    }
}

/// `diplo apps …`.
pub async fn apps(channel: Channel, command: crate::AppsCommand, format: Format) -> Result<()> {
    let mut client = crate::client::limited!(DeploymentServiceClient::new(channel.clone()));
    match command {
        crate::AppsCommand::Ls => {
            let list = client.list_deployments(pb::ListDeploymentsRequest {}).await.map_err(status_error)?.into_inner().deployments;
            let names = crate::client::node_names(channel).await?;
            let value = serde_json::Value::Array(list.iter().map(|d| deployment_json(d, &names)).collect());
            crate::output::print(format, &value, || {
                let rows = list.iter().map(|d| {
                    let spec = d.spec.clone().unwrap_or_default();
                    let running: Vec<&pb::Instance> = d.instances.iter().filter(|i| i.status == "running").collect();
                    let mut nodes: Vec<String> = running.iter().map(|i| crate::output::node_label(&names, &i.node_id)).collect();
                    nodes.sort();
                    nodes.dedup();
                    [
                        spec.name,
                        d.status.clone(),
                        format!("{}/{}", running.len(), spec.replicas),
                        d.revision.to_string(),
                        spec.image,
                        if nodes.is_empty() { "-".to_owned() } else { nodes.join(",") },
                        d.message.clone(),
                    ]
                });
                crate::output::table(["NAME", "STATUS", "RUNNING", "REV", "IMAGE", "NODES", "MESSAGE"], rows)
            })?;
        }
        crate::AppsCommand::Show { name } => {
            let d = client.get_deployment(pb::DeploymentRef { name }).await.map_err(status_error)?.into_inner();
            let names = crate::client::node_names(channel).await?;
            crate::output::print_document(format, &deployment_json(&d, &names))?;
        }
        crate::AppsCommand::Scale { name, replicas } => {
            let d = client.scale(pb::ScaleRequest { name: name.clone(), replicas }).await.map_err(status_error)?.into_inner();
            println!("{name} scaled to {replicas} (revision {})", d.revision);
        }
        crate::AppsCommand::Update(args) => {
            let current = client.get_deployment(pb::DeploymentRef { name: args.name.clone() }).await.map_err(status_error)?.into_inner();
            let request = update_request(current, &args)?;
            let d = client.update(request).await.map_err(status_error)?.into_inner();
            println!("{} updated (now revision {}, {})", args.name, d.revision, d.status);
        }
        crate::AppsCommand::Rollback { name } => {
            let d = client.rollback(pb::DeploymentRef { name: name.clone() }).await.map_err(status_error)?.into_inner();
            println!("{name} rolled back (now revision {})", d.revision);
        }
        crate::AppsCommand::Rm { name } => {
            client.delete_deployment(pb::DeploymentRef { name: name.clone() }).await.map_err(status_error)?;
            println!("{name} is being deleted");
        }
    }
    Ok(())
}

/// What `diplo apps update` changes; what is not given stays as it is.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// Deployment name.
    pub name: String,
    /// New image reference.
    #[arg(long)]
    pub image: Option<String>,
    /// New number of replicas.
    #[arg(short, long)]
    pub replicas: Option<u32>,
    /// Set an environment variable KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Remove an environment variable (repeatable).
    #[arg(long = "unset-env")]
    pub unset_env: Vec<String>,
    /// Memory limit, e.g. 256m, 1g.
    #[arg(long, value_parser = parse_memory_flag)]
    pub memory: Option<u64>,
    /// CPU limit in cores, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Restart policy: no, always, on-failure, unless-stopped.
    #[arg(long)]
    pub restart: Option<String>,
    /// Replace the published ports: HOST:CONTAINER[/udp] (repeatable).
    #[arg(short, long = "publish")]
    pub publish: Vec<String>,
    /// Instances replaced at once during the rollout.
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// New command and arguments.
    #[arg(trailing_var_arg = true)]
    pub command: Vec<String>,
}

/// `--memory 256m` for clap.
pub fn parse_memory_flag(text: &str) -> std::result::Result<u64, String> {
    diplo_api::container::parse_memory(text)
}

/// CPU cores as millicores; errors name the flag.
pub fn cpu_millis(cpus: f64) -> Result<u32> {
    if !(0.001..=1024.0).contains(&cpus) {
        bail!("invalid --cpus {cpus}: between 0.001 and 1024");
    }
    Ok((cpus * 1000.0).round() as u32)
}

/// The `Update` request for `current` changed by `args`.
pub fn update_request(current: pb::Deployment, args: &UpdateArgs) -> Result<pb::UpdateRequest> {
    let mut spec = current.spec.unwrap_or_default();
    let mut container = spec.container.take().unwrap_or_default();
    if let Some(image) = &args.image {
        spec.image = image.clone();
        container.image = image.clone();
    }
    if let Some(replicas) = args.replicas {
        spec.replicas = replicas;
    }
    for key in &args.unset_env {
        container.environment.remove(key);
    }
    container.environment.extend(crate::containers::parse_pairs(&args.env, "--env")?);
    if let Some(memory) = args.memory {
        container.memory_bytes = memory;
    }
    if let Some(cpus) = args.cpus {
        container.cpu_millis = cpu_millis(cpus)?;
    }
    if let Some(restart) = &args.restart {
        container.restart_policy = restart.clone();
    }
    if !args.publish.is_empty() {
        container.ports = args.publish.iter().map(|p| crate::containers::parse_publish(p)).collect::<Result<_>>()?;
    }
    if !args.command.is_empty() {
        container.command = args.command.clone();
    }
    if let Some(max_parallel) = args.max_parallel {
        spec.max_parallel = max_parallel;
    }
    let max_parallel = spec.max_parallel;
    spec.container = Some(container);
    Ok(pb::UpdateRequest { spec: Some(spec), max_parallel })
}

fn deployment_json(d: &pb::Deployment, names: &HashMap<String, String>) -> serde_json::Value {
    let spec = d.spec.clone().unwrap_or_default();
    let instances: Vec<serde_json::Value> = d
        .instances
        .iter()
        .map(|i| {
            serde_json::json!({
                "id": i.id, "node_id": i.node_id, "node": names.get(&i.node_id), "runtime": runtime_name(i.runtime),
                "status": i.status, "revision": i.revision, "container_id": i.container.as_ref().map(|c| c.id.clone()),
            })
        })
        .collect();
    serde_json::json!({
        "id": d.id,
        "name": spec.name,
        "image": spec.image,
        "replicas": spec.replicas,
        "runtime_type": (spec.runtime != 0).then(|| runtime_name(spec.runtime)),
        "revision": d.revision,
        "status": d.status,
        "message": d.message,
        "instances": instances,
    })
}

/// `diplo events [-f]`: stored events, then (with `follow`) new ones as they happen.
pub async fn events(channel: Channel, follow: bool, format: Format) -> Result<()> {
    let mut client = crate::client::limited!(EventServiceClient::new(channel));
    let mut stream =
        client.watch(pb::WatchRequest { kinds: Vec::new(), after_sequence: 0, replay: true }).await.map_err(status_error)?.into_inner();
    loop {
        let next = if follow {
            stream.message().await.map_err(status_error)?
        } else {
            // Without -f: print what is stored, stop once nothing more arrives.
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Ok(message) => message.map_err(status_error)?,
                Err(_) => None,
            }
        };
        let Some(event) = next else { return Ok(()) };
        let at = event.at.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0)).map_or_else(String::new, |t| t.to_rfc3339());
        // One line per event: JSON lines, or YAML documents, or columns.
        let value = serde_json::json!({
            "sequence": event.sequence, "at": at, "kind": event.kind, "actor": event.actor, "subject": event.subject, "message": event.message,
        });
        match format {
            Format::Json => println!("{value}"),
            Format::Yaml => println!("---\n{}", crate::output::render(format, &value, String::new)?),
            Format::Table => println!("{at}  {:<22}  {:<28}  {}", event.kind, event.actor, event.message),
        }
        use std::io::Write as _;
        std::io::stdout().flush().context("writing events")?;
    }
}

/// Parses `--timeout` style durations for clap.
pub fn parse_timeout(text: &str) -> Result<Duration> {
    humantime::parse_duration(text).with_context(|| format!("invalid duration {text:?}"))
}
