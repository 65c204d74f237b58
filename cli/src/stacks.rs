//! `diplo stack …`: compose files as stacks through `StackService`. `deploy` reads the
//! file (and its `env_file`s, relative to the file) here, checks it with the same parser
//! the control plane uses, and sends it, with the git repository (`--git`) its `build:`
//! sections are built from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use diplo_api::pb;
use diplo_api::pb::stack_service_client::StackServiceClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::output::Format;
use crate::status_error;

/// `diplo stack` subcommands.
#[derive(Subcommand)]
pub enum StackCommand {
    /// Deploy a compose file as the stack NAME, or update it (only changed services).
    Deploy {
        /// The compose file (YAML or JSON).
        #[arg(short = 'f', long = "file", value_name = "FILE", default_value = "compose.yml")]
        file: PathBuf,
        /// The git repository the services with `build:` are built from (by the cluster's
        /// builders, from the pushed commit: push first).
        #[arg(long = "git", value_name = "URL")]
        git: Option<String>,
        /// The branch or tag built (default: the repository's default branch).
        #[arg(long, requires = "git")]
        branch: Option<String>,
        /// The compose file's path in the repository (default: FILE as given when it is
        /// relative, else its file name).
        #[arg(long = "compose-path", value_name = "PATH", requires = "git")]
        compose_path: Option<String>,
        /// The stack's name: its services run as the deployments NAME-SERVICE.
        name: String,
    },
    /// The stacks with how many of their services run.
    Ls,
    /// The services of a stack with their status.
    Ps {
        /// Stack name.
        name: String,
    },
    /// Delete a stack and its services' deployments.
    Rm {
        /// Stack name.
        name: String,
    },
}

/// The document sent for `file`: as written when it has no `env_file` (so the control
/// plane's errors name the file's own lines), else re-serialised with the variables read.
pub fn compose_to_send(file: &Path) -> Result<String> {
    let source = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let read_any = std::cell::Cell::new(false);
    let read = |path: &str| -> Result<String, String> {
        read_any.set(true);
        std::fs::read_to_string(dir.join(path)).map_err(|e| format!("cannot read {}: {e}", dir.join(path).display()))
    };
    let spec = diplo_api::compose::parse(&source, Some(&read)).map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?;
    Ok(if read_any.get() { spec.to_yaml() } else { source })
}

/// The compose file's path in the repository when not given: `file` as written when it is
/// relative (run from the repository's root), else its file name.
pub fn compose_path_in_repository(file: &Path) -> String {
    if file.is_relative() {
        file.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect::<PathBuf>().to_string_lossy().into_owned()
    } else {
        file.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

fn stack_json(stack: &pb::Stack) -> Value {
    json!({
        "name": stack.name,
        "services": stack.services.iter().map(|s| json!({
            "name": s.name, "deployment": s.deployment, "status": s.status, "image": s.image,
            "replicas": s.replicas, "running": s.running, "healthy": s.healthy, "revision": s.revision,
            "depends_on": s.depends_on, "build_id": s.build_id,
        })).collect::<Vec<_>>(),
    })
}

fn services_table(stack: &pb::Stack) -> String {
    let mut lines =
        vec![format!("{:<24} {:<32} {:<10} {:>8} {:>8} {:<30}", "SERVICE", "DEPLOYMENT", "STATUS", "RUNNING", "HEALTHY", "DEPENDS ON")];
    for s in &stack.services {
        let mut depends: Vec<String> = s.depends_on.iter().map(|(k, v)| format!("{k} ({v})")).collect();
        depends.sort();
        lines.push(format!(
            "{:<24} {:<32} {:<10} {:>8} {:>8} {:<30}",
            s.name,
            s.deployment,
            s.status,
            format!("{}/{}", s.running, s.replicas),
            format!("{}/{}", s.healthy, s.replicas),
            depends.join(", ")
        ));
    }
    lines.join("\n")
}

/// Runs one `stack` subcommand.
pub async fn run(mut client: StackServiceClient<Channel>, command: StackCommand, format: Format) -> Result<()> {
    match command {
        StackCommand::Deploy { file, git, branch, compose_path, name } => {
            let compose = compose_to_send(&file)?;
            let compose_file = match (&git, compose_path) {
                (None, _) => String::new(),
                (Some(_), Some(path)) => path,
                (Some(_), None) => compose_path_in_repository(&file),
            };
            let request = pb::DeployStackRequest {
                name: name.clone(),
                compose,
                repo_url: git.unwrap_or_default(),
                branch: branch.unwrap_or_default(),
                compose_file,
            };
            let answer = client.deploy(request).await.map_err(status_error)?.into_inner();
            let stack = answer.stack.unwrap_or_default();
            eprintln!("{} stack {name} ({} services)", if answer.created { "Created" } else { "Updated" }, stack.services.len());
            crate::output::print(format, &stack_json(&stack), || services_table(&stack))?;
        }
        StackCommand::Ls => {
            let stacks = client.list(pb::ListStacksRequest {}).await.map_err(status_error)?.into_inner().stacks;
            let list: Vec<Value> = stacks.iter().map(stack_json).collect();
            crate::output::print(format, &Value::Array(list), || {
                let mut lines = vec![format!("{:<32} {:>9} {:>8}", "NAME", "SERVICES", "RUNNING")];
                for stack in &stacks {
                    let running = stack.services.iter().filter(|s| s.status == "running").count();
                    lines.push(format!("{:<32} {:>9} {:>8}", stack.name, stack.services.len(), running));
                }
                lines.join("\n")
            })?;
        }
        StackCommand::Ps { name } => {
            let stack = client.get(pb::GetStackRequest { name }).await.map_err(status_error)?.into_inner();
            crate::output::print(format, &stack_json(&stack), || services_table(&stack))?;
        }
        StackCommand::Rm { name } => {
            client.delete(pb::DeleteStackRequest { name: name.clone() }).await.map_err(status_error)?;
            println!("Deleting stack {name}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compose_path_in_the_repository_is_the_file_as_given_or_its_name() {
        for (file, want) in
            [("compose.yml", "compose.yml"), ("./deploy/compose.yml", "deploy/compose.yml"), ("/home/me/app/c.yml", "c.yml")]
        {
            assert_eq!(compose_path_in_repository(Path::new(file)), want, "{file}");
        }
    }

    #[test]
    fn env_files_are_read_next_to_the_compose_file_and_inlined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("compose.yml");
        std::fs::write(&file, "services:\n  web:\n    image: busybox\n    env_file: app.env\n").expect("write");
        std::fs::write(dir.path().join("app.env"), "TOKEN=from-file\n").expect("write");
        let sent = compose_to_send(&file).expect("reads");
        let spec = diplo_api::compose::parse(&sent, None).expect("the server reads it without files");
        assert_eq!(spec.services["web"].container.env.get("TOKEN").map(String::as_str), Some("from-file"));

        let plain = dir.path().join("plain.yml");
        let source = "services:\n  web:\n    image: busybox # as written\n";
        std::fs::write(&plain, source).expect("write");
        assert_eq!(compose_to_send(&plain).expect("reads"), source, "without env_file, sent as written");

        std::fs::write(&file, "services:\n  web:\n    image: busybox\n    env_file: missing.env\n").expect("write");
        let err = compose_to_send(&file).expect_err("missing env file").to_string();
        assert!(err.contains("line 4") && err.contains("missing.env"), "{err}");
    }
}
