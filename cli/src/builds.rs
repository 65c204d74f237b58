//! `diplo builds …`: images built from git through `BuildService`.

use std::io::Write;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use diplo_api::pb;
use diplo_api::pb::build_service_client::BuildServiceClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::output::Format;
use crate::status_error;

/// What `diplo builds start` asks for.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Repository URL (https://, http://, git://, ssh:// or file://).
    #[arg(long)]
    pub repo: String,
    /// Branch or tag (default: the repository's default branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// nixpacks, static, dockerfile or docker-compose (default: detect; dockerfile with --dockerfile).
    #[arg(long)]
    pub buildpack: Option<String>,
    /// Image NAME[:TAG]; without a registry part it goes to the cluster registry.
    #[arg(long)]
    pub image: Option<String>,
    /// Language overriding detection (go, node, python, ...).
    #[arg(long)]
    pub language: Option<String>,
    /// Dockerfile inside the repository.
    #[arg(long)]
    pub dockerfile: Option<String>,
    /// Build argument KEY=VALUE (repeatable).
    #[arg(long = "build-arg")]
    pub build_arg: Vec<String>,
    /// Build on this platform, e.g. linux/arm64 (default: any builder).
    #[arg(long)]
    pub platform: Option<String>,
    /// Build id (default: generated).
    #[arg(long)]
    pub id: Option<String>,
    /// Print the build's output until it ends; exit 1 unless it succeeded.
    #[arg(short, long)]
    pub follow: bool,
}

/// `diplo builds …`.
#[derive(Debug, clap::Subcommand)]
pub enum BuildsCommand {
    /// Start a build.
    Start(StartArgs),
    /// List builds, newest first.
    Ls,
    /// Show one build (JSON).
    Show { id: String },
    /// Print a build's output.
    Logs {
        id: String,
        /// Keep printing until the build ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a queued or running build.
    Cancel { id: String },
}

fn time(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

/// A build as JSON (`diplo builds show`, `ls -o json`).
pub fn build_json(build: &pb::Build) -> Value {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    json!({
        "id": build.id,
        "status": build.status,
        "git_repo": build.git_repo,
        "git_branch": text(&build.git_branch),
        "commit": build.commit,
        "language": build.language,
        "detected_from": build.detected_from,
        "buildpack_type": build.buildpack_type,
        "builder": text(&build.builder),
        "node_id": text(&build.node_id),
        "platform": text(&build.platform),
        "image": build.image,
        "digest": text(&build.digest),
        "pushed": build.pushed,
        "service_images": build.service_images,
        "message": build.message,
        "created_at": time(build.created_at.as_ref()),
        "started_at": time(build.started_at.as_ref()),
        "finished_at": time(build.finished_at.as_ref()),
        "duration_seconds": build.duration_seconds,
        "deployment_id": text(&build.deployment_id),
    })
}

fn table(builds: &[pb::Build]) -> String {
    let mut out = format!("{:<16}  {:<10}  {:<8}  {:<10}  {:>8}  IMAGE", "ID", "STATUS", "BUILDER", "NODE", "SECONDS");
    for build in builds {
        let node: String = build.node_id.chars().take(8).collect();
        out.push_str(&format!(
            "\n{:<16}  {:<10}  {:<8}  {:<10}  {:>8.1}  {}",
            build.id,
            build.status,
            if build.builder.is_empty() { "-" } else { &build.builder },
            if node.is_empty() { "-".to_owned() } else { node },
            build.duration_seconds,
            build.image
        ));
    }
    out
}

/// The request `diplo builds start` sends.
pub fn start_request(args: StartArgs) -> Result<pb::BuildRequest> {
    let buildpack = match (args.buildpack, &args.dockerfile) {
        (Some(kind), _) => kind,
        (None, Some(_)) => "dockerfile".to_owned(),
        (None, None) => String::new(),
    };
    if !args.build_arg.is_empty() && buildpack != "dockerfile" {
        bail!("--build-arg needs the dockerfile buildpack (--buildpack dockerfile or --dockerfile PATH)");
    }
    Ok(pb::BuildRequest {
        id: args.id.unwrap_or_default(),
        git_repo: args.repo,
        git_branch: args.branch.unwrap_or_default(),
        buildpack_type: buildpack,
        image_tag: args.image.unwrap_or_default(),
        language: args.language.unwrap_or_default(),
        build_args: crate::containers::parse_pairs(&args.build_arg, "--build-arg")?,
        dockerfile_path: args.dockerfile.unwrap_or_default(),
        platform: args.platform.unwrap_or_default(),
        ..Default::default()
    })
}

async fn print_logs(client: &mut BuildServiceClient<Channel>, id: String, follow: bool) -> Result<()> {
    let mut stream = client.build_logs(pb::BuildLogsRequest { id, follow }).await.map_err(status_error)?.into_inner();
    let mut stdout = std::io::stdout();
    while let Some(line) = stream.message().await.map_err(status_error)? {
        stdout.write_all(&line.data)?;
        stdout.flush()?;
    }
    Ok(())
}

/// Runs a `diplo builds` command.
pub async fn run(channel: Channel, command: BuildsCommand, format: Format) -> Result<()> {
    let mut client = crate::client::limited!(BuildServiceClient::new(channel));
    let show = |build: &pb::Build| crate::output::print_document(format, &build_json(build));
    match command {
        BuildsCommand::Start(args) => {
            let follow = args.follow;
            let build = client.start_build(start_request(args)?).await.map_err(status_error)?.into_inner();
            if build.status == "failed" {
                bail!("build {} failed: {}", build.id, build.message);
            }
            println!("build {} {} on node {} with {} → {}", build.id, build.status, build.node_id, build.builder, build.image);
            if follow {
                print_logs(&mut client, build.id.clone(), true).await?;
                let done = client.get_build(pb::BuildRef { id: build.id.clone() }).await.map_err(status_error)?.into_inner();
                if done.status != "succeeded" {
                    bail!("build {} {}: {}", done.id, done.status, done.message);
                }
                println!("build {} succeeded: {}", done.id, done.image);
            }
        }
        BuildsCommand::Ls => {
            let builds = client.list_builds(pb::ListBuildsRequest {}).await.map_err(status_error)?.into_inner().builds;
            crate::output::print(format, &Value::Array(builds.iter().map(build_json).collect()), || table(&builds))?;
        }
        BuildsCommand::Show { id } => show(&client.get_build(pb::BuildRef { id }).await.map_err(status_error)?.into_inner())?,
        BuildsCommand::Logs { id, follow } => print_logs(&mut client, id, follow).await?,
        BuildsCommand::Cancel { id } => {
            let build = client.cancel_build(pb::BuildRef { id }).await.map_err(status_error)?.into_inner();
            println!("build {} {}", build.id, build.status);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> StartArgs {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: StartArgs,
        }
        let mut argv = vec!["diplo", "--repo", "https://git.example/app.git"];
        argv.extend_from_slice(extra);
        <Wrapper as clap::Parser>::try_parse_from(argv).expect("valid flags").args
    }

    #[test]
    fn start_flags_become_the_request() {
        let request =
            start_request(args(&["--dockerfile", "docker/Dockerfile", "--build-arg", "V=1", "--image", "app:v1"])).expect("valid");
        assert_eq!((request.buildpack_type.as_str(), request.dockerfile_path.as_str()), ("dockerfile", "docker/Dockerfile"));
        assert_eq!(request.build_args.get("V").map(String::as_str), Some("1"));
        assert_eq!(request.image_tag, "app:v1");
        let request = start_request(args(&["--buildpack", "static", "--branch", "main", "--platform", "linux/arm64"])).expect("valid");
        assert_eq!(
            (request.buildpack_type.as_str(), request.git_branch.as_str(), request.platform.as_str()),
            ("static", "main", "linux/arm64")
        );
        assert_eq!(start_request(args(&[])).expect("valid").buildpack_type, "", "detection by default");
        let err = start_request(args(&["--build-arg", "V=1"])).expect_err("no dockerfile buildpack").to_string();
        assert!(err.contains("--build-arg"), "{err}");
        let err = start_request(args(&["--dockerfile", "D", "--build-arg", "V"])).expect_err("not KEY=VALUE").to_string();
        assert!(err.contains("--build-arg"), "{err}");
    }
}
