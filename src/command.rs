//! Commands the control plane sends down an agent's session and their outcomes, as
//! domain types with their wire conversions.

use std::time::Duration;

use crate::container::{ContainerInfo, ContainerSpec, ContainerStats, ExecOutput, LogOptions};
use crate::pb;
use crate::runtime::Runtime;
use crate::wire::{WireError, container_info, container_state};

/// One lifecycle operation for an agent.
#[derive(Debug, Clone, PartialEq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one command per operator call or reconciler step, moved a few times: boxing the spec would buy nothing"
)]
pub enum CommandOp {
    /// Pull the image if needed, create and start a container.
    Create(ContainerSpec),
    /// Start a container.
    Start(String),
    /// Stop a container with a grace period.
    Stop {
        /// Container id.
        id: String,
        /// Time between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// Restart a container.
    Restart(String),
    /// Remove a container.
    Remove {
        /// Container id.
        id: String,
        /// Stop it first if running.
        force: bool,
    },
    /// Run a command inside a container.
    Exec {
        /// Container id.
        id: String,
        /// argv.
        argv: Vec<String>,
    },
    /// Read a container's logs (with `follow`, streamed over a bulk stream).
    Logs {
        /// Container id.
        id: String,
        /// Which logs.
        options: LogOptions,
    },
    /// Make an image present on the node.
    PullImage(String),
    /// Observe one container.
    Inspect(String),
    /// Sample a container's resource use.
    Stats(String),
    /// Build an image from git (output streams back; the end comes as a build report).
    Build(Box<crate::build::BuildSpec>),
    /// Cancel a running build by its id.
    CancelBuild(String),
    /// An image operation.
    Image(crate::resources::ImageOp),
    /// A network operation.
    Network(crate::resources::NetworkOp),
    /// A volume operation.
    Volume(crate::resources::VolumeOp),
    /// Freeze every process of a container.
    Pause(String),
    /// Thaw a paused container.
    Unpause(String),
    /// Read a path out of a container as a tar archive.
    CopyOut {
        /// Container id.
        id: String,
        /// Absolute path inside the container.
        path: String,
    },
    /// Extract a tar archive into a directory of a container.
    CopyIn {
        /// Container id.
        id: String,
        /// Absolute directory inside the container.
        dir: String,
        /// The tar archive.
        archive: Vec<u8>,
    },
}

impl CommandOp {
    /// The operation's name, one of a fixed set (a metric label and a span name).
    pub fn kind(&self) -> &'static str {
        match self {
            CommandOp::Create(_) => "create",
            CommandOp::Start(_) => "start",
            CommandOp::Stop { .. } => "stop",
            CommandOp::Restart(_) => "restart",
            CommandOp::Remove { .. } => "remove",
            CommandOp::Exec { .. } => "exec",
            CommandOp::Logs { .. } => "logs",
            CommandOp::PullImage(_) => "pull_image",
            CommandOp::Inspect(_) => "inspect",
            CommandOp::Stats(_) => "stats",
            CommandOp::Build(_) => "build",
            CommandOp::CancelBuild(_) => "cancel_build",
            CommandOp::Image(_) => "image",
            CommandOp::Network(_) => "network",
            CommandOp::Volume(_) => "volume",
            CommandOp::Pause(_) => "pause",
            CommandOp::Unpause(_) => "unpause",
            CommandOp::CopyOut { .. } => "copy_out",
            CommandOp::CopyIn { .. } => "copy_in",
        }
    }
}

/// A command with its correlation id and the runtime it targets.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCommand {
    /// Correlates the result and any bulk output.
    pub request_id: String,
    /// Runtime to use.
    pub runtime: Runtime,
    /// The operation.
    pub op: CommandOp,
    /// W3C trace context of the span that sent the command (the agent's span that runs it
    /// is its child); `None` when the sender's trace is not exported.
    pub traceparent: Option<String>,
}

/// The longest `traceparent` a command carries (a version-00 value is 55 characters;
/// longer ones are dropped on receipt).
pub const MAX_TRACEPARENT_LEN: usize = 128;

/// Error categories an agent reports, mirroring gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandErrorCode {
    /// NOT_FOUND.
    NotFound,
    /// ALREADY_EXISTS (a conflict: name taken, port in use).
    AlreadyExists,
    /// INVALID_ARGUMENT.
    InvalidArgument,
    /// UNIMPLEMENTED (the runtime cannot do this).
    Unimplemented,
    /// UNAVAILABLE.
    Unavailable,
    /// FAILED_PRECONDITION.
    FailedPrecondition,
    /// PERMISSION_DENIED (the agent's own policy refuses it, e.g. a host path outside its
    /// allowlist).
    PermissionDenied,
    /// INTERNAL.
    Internal,
}

impl CommandErrorCode {
    fn as_str(self) -> &'static str {
        match self {
            CommandErrorCode::NotFound => "NOT_FOUND",
            CommandErrorCode::AlreadyExists => "ALREADY_EXISTS",
            CommandErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            CommandErrorCode::Unimplemented => "UNIMPLEMENTED",
            CommandErrorCode::Unavailable => "UNAVAILABLE",
            CommandErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            CommandErrorCode::PermissionDenied => "PERMISSION_DENIED",
            CommandErrorCode::Internal => "INTERNAL",
        }
    }

    fn parse(code: &str) -> Self {
        match code {
            "NOT_FOUND" => CommandErrorCode::NotFound,
            "ALREADY_EXISTS" => CommandErrorCode::AlreadyExists,
            "INVALID_ARGUMENT" => CommandErrorCode::InvalidArgument,
            "UNIMPLEMENTED" => CommandErrorCode::Unimplemented,
            "UNAVAILABLE" => CommandErrorCode::Unavailable,
            "FAILED_PRECONDITION" => CommandErrorCode::FailedPrecondition,
            "PERMISSION_DENIED" => CommandErrorCode::PermissionDenied,
            _ => CommandErrorCode::Internal,
        }
    }
}

/// A failed command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// Category.
    pub code: CommandErrorCode,
    /// The agent's message (names the image, port or field).
    pub message: String,
}

/// What a successful command returned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommandOutput {
    /// The container after the operation, when there is one.
    pub container: Option<ContainerInfo>,
    /// Exec output, or logs without follow (exit code 0).
    pub exec: Option<ExecOutput>,
    /// Resource sample.
    pub stats: Option<ContainerStats>,
    /// Images, networks and volumes listed, inspected, created or pruned.
    pub resources: crate::resources::ResourceOutput,
    /// A tar archive read out of a container.
    pub archive: Option<Vec<u8>>,
}

/// The outcome of a command, as the control plane sees it.
pub type CommandOutcome = Result<CommandOutput, CommandError>;

impl From<&AgentCommand> for pb::Command {
    fn from(command: &AgentCommand) -> Self {
        use pb::command::Op;
        let op = match &command.op {
            CommandOp::Create(spec) => Op::Create(spec.into()),
            CommandOp::Start(id) => Op::Start(id.clone()),
            CommandOp::Stop { id, grace } => {
                Op::Stop(pb::StopContainer { id: id.clone(), grace_seconds: u32::try_from(grace.as_secs()).unwrap_or(u32::MAX) })
            }
            CommandOp::Restart(id) => Op::Restart(id.clone()),
            CommandOp::Remove { id, force } => Op::Remove(pb::RemoveContainer { id: id.clone(), force: *force }),
            CommandOp::Exec { id, argv } => Op::Exec(pb::ExecInContainer { id: id.clone(), argv: argv.clone() }),
            CommandOp::Logs { id, options } => Op::Logs(pb::FetchLogs {
                id: id.clone(),
                follow: options.follow,
                tail: options.tail.unwrap_or(0),
                timestamps: options.timestamps,
            }),
            CommandOp::PullImage(image) => Op::PullImage(image.clone()),
            CommandOp::Inspect(id) => Op::Inspect(id.clone()),
            CommandOp::Stats(id) => Op::Stats(id.clone()),
            CommandOp::Build(spec) => Op::Build(spec.as_ref().into()),
            CommandOp::CancelBuild(id) => Op::CancelBuild(id.clone()),
            CommandOp::Image(op) => Op::Image(op.into()),
            CommandOp::Network(op) => Op::Network(op.into()),
            CommandOp::Volume(op) => Op::Volume(op.into()),
            CommandOp::Pause(id) => Op::Pause(id.clone()),
            CommandOp::Unpause(id) => Op::Unpause(id.clone()),
            CommandOp::CopyOut { id, path } => Op::CopyOut(pb::CopyOut { id: id.clone(), path: path.clone() }),
            CommandOp::CopyIn { id, dir, archive } => Op::CopyIn(pb::CopyIn { id: id.clone(), dir: dir.clone(), archive: archive.clone() }),
        };
        pb::Command {
            request_id: command.request_id.clone(),
            runtime: pb::RuntimeKind::from(command.runtime) as i32,
            op: Some(op),
            traceparent: command.traceparent.clone().unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Command> for AgentCommand {
    type Error = WireError;

    fn try_from(command: pb::Command) -> Result<Self, WireError> {
        use pb::command::Op;
        let invalid = |field: &str, message: &str| WireError { field: field.into(), message: message.into() };
        let runtime = pb::RuntimeKind::try_from(command.runtime)
            .ok()
            .and_then(pb::RuntimeKind::runtime)
            .ok_or_else(|| invalid("runtime", "a runtime is required"))?;
        let op = match command.op.ok_or_else(|| invalid("op", "an operation is required"))? {
            Op::Create(spec) => CommandOp::Create(spec.try_into()?),
            Op::Start(id) => CommandOp::Start(id),
            Op::Stop(stop) => CommandOp::Stop { id: stop.id, grace: Duration::from_secs(u64::from(stop.grace_seconds)) },
            Op::Restart(id) => CommandOp::Restart(id),
            Op::Remove(remove) => CommandOp::Remove { id: remove.id, force: remove.force },
            Op::Exec(exec) => CommandOp::Exec { id: exec.id, argv: exec.argv },
            Op::Logs(logs) => CommandOp::Logs {
                id: logs.id,
                options: LogOptions { follow: logs.follow, tail: (logs.tail > 0).then_some(logs.tail), timestamps: logs.timestamps },
            },
            Op::PullImage(image) => CommandOp::PullImage(image),
            Op::Inspect(id) => CommandOp::Inspect(id),
            Op::Stats(id) => CommandOp::Stats(id),
            Op::Build(build) => CommandOp::Build(Box::new(build.try_into()?)),
            Op::CancelBuild(id) => CommandOp::CancelBuild(id),
            Op::Image(op) => CommandOp::Image(op.try_into()?),
            Op::Network(op) => CommandOp::Network(op.try_into()?),
            Op::Volume(op) => CommandOp::Volume(op.try_into()?),
            Op::Pause(id) => CommandOp::Pause(id),
            Op::Unpause(id) => CommandOp::Unpause(id),
            Op::CopyOut(copy) => CommandOp::CopyOut { id: copy.id, path: copy.path },
            Op::CopyIn(copy) => CommandOp::CopyIn { id: copy.id, dir: copy.dir, archive: copy.archive },
        };
        let traceparent = Some(command.traceparent).filter(|t| !t.is_empty() && t.len() <= MAX_TRACEPARENT_LEN);
        Ok(AgentCommand { request_id: command.request_id, runtime, op, traceparent })
    }
}

/// The wire result of a command run on `node_id` with `runtime`.
pub fn command_result(request_id: &str, node_id: &str, runtime: Runtime, outcome: &CommandOutcome) -> pb::CommandResult {
    match outcome {
        Ok(output) => {
            let exec = output.exec.clone().unwrap_or_default();
            pb::CommandResult {
                request_id: request_id.to_owned(),
                ok: true,
                error_code: String::new(),
                error_message: String::new(),
                container: output.container.as_ref().map(|c| container_state(c, node_id, runtime)),
                exit_code: i32::try_from(exec.exit_code).unwrap_or(i32::MAX),
                stdout: exec.stdout,
                stderr: exec.stderr,
                stats: output.stats.as_ref().map(Into::into),
                images: output.resources.images.iter().map(Into::into).collect(),
                networks: output.resources.networks.iter().map(Into::into).collect(),
                volumes: output.resources.volumes.iter().map(Into::into).collect(),
                prune: output.resources.prune.as_ref().map(Into::into),
                truncated: output.resources.truncated,
                archive: output.archive.clone().unwrap_or_default(),
            }
        }
        Err(err) => pb::CommandResult {
            request_id: request_id.to_owned(),
            ok: false,
            error_code: err.code.as_str().to_owned(),
            error_message: err.message.clone(),
            ..Default::default()
        },
    }
}

/// The domain outcome of a wire result.
pub fn command_outcome(result: pb::CommandResult) -> CommandOutcome {
    if !result.ok {
        let message = crate::text::bounded(&result.error_message, crate::text::NODE_MESSAGE_MAX);
        return Err(CommandError { code: CommandErrorCode::parse(&result.error_code), message });
    }
    Ok(CommandOutput {
        container: result.container.map(|c| container_info(c).0),
        exec: Some(ExecOutput { exit_code: i64::from(result.exit_code), stdout: result.stdout, stderr: result.stderr }),
        stats: result.stats.map(Into::into),
        resources: crate::resources::ResourceOutput {
            images: result.images.into_iter().take(crate::resources::MAX_LISTED).map(Into::into).collect(),
            networks: result.networks.into_iter().take(crate::resources::MAX_LISTED).map(Into::into).collect(),
            volumes: result.volumes.into_iter().take(crate::resources::MAX_LISTED).map(Into::into).collect(),
            prune: result.prune.map(Into::into),
            truncated: result.truncated,
        },
        archive: (!result.archive.is_empty()).then_some(result.archive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let ops = [
            CommandOp::Create(ContainerSpec { name: "a".into(), image: "img".into(), ..Default::default() }),
            CommandOp::Stop { id: "c".into(), grace: Duration::from_secs(3) },
            CommandOp::Remove { id: "c".into(), force: true },
            CommandOp::Exec { id: "c".into(), argv: vec!["ls".into()] },
            CommandOp::Logs { id: "c".into(), options: LogOptions { follow: true, tail: Some(5), timestamps: false } },
            CommandOp::Inspect("c".into()),
            CommandOp::Pause("c".into()),
            CommandOp::Unpause("c".into()),
            CommandOp::CopyOut { id: "c".into(), path: "/etc/hosts".into() },
            CommandOp::CopyIn { id: "c".into(), dir: "/tmp".into(), archive: vec![1, 2, 3] },
        ];
        for op in ops {
            let command = AgentCommand { request_id: "r1".into(), runtime: Runtime::Podman, op, traceparent: None };
            assert_eq!(AgentCommand::try_from(pb::Command::from(&command)), Ok(command));
        }
        let traced = AgentCommand {
            request_id: "r2".into(),
            runtime: Runtime::Docker,
            op: CommandOp::Start("c".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        assert_eq!(AgentCommand::try_from(pb::Command::from(&traced)), Ok(traced.clone()));
        let mut oversized = pb::Command::from(&traced);
        oversized.traceparent = "0".repeat(MAX_TRACEPARENT_LEN + 1);
        assert_eq!(AgentCommand::try_from(oversized).expect("still a command").traceparent, None, "an oversized traceparent is dropped");
        let missing = pb::Command { request_id: "r".into(), runtime: 0, op: None, traceparent: String::new() };
        assert_eq!(AgentCommand::try_from(missing).unwrap_err().field, "runtime");
    }

    #[test]
    fn outcomes_round_trip_with_their_error_code() {
        let err = CommandError { code: CommandErrorCode::AlreadyExists, message: "host port 8080 is in use".into() };
        let wire = command_result("r", "n", Runtime::Docker, &Err(err.clone()));
        assert_eq!(command_outcome(wire), Err(err));
        let err = CommandError { code: CommandErrorCode::PermissionDenied, message: "host path / is not allowed".into() };
        assert_eq!(command_outcome(command_result("r", "n", Runtime::Docker, &Err(err.clone()))), Err(err));
        let ok = CommandOutput { exec: Some(ExecOutput { exit_code: 3, stdout: b"out".to_vec(), stderr: vec![] }), ..Default::default() };
        let back = command_outcome(command_result("r", "n", Runtime::Docker, &Ok(ok))).expect("ok");
        assert_eq!(back.exec.expect("exec").exit_code, 3);
        let ok = CommandOutput { archive: Some(b"tar bytes".to_vec()), ..Default::default() };
        let back = command_outcome(command_result("r", "n", Runtime::Lxc, &Ok(ok))).expect("ok");
        assert_eq!(back.archive.as_deref(), Some(&b"tar bytes"[..]));
    }
}
