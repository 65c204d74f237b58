//! Sending commands down an agent's session and waiting for their results; routing the
//! bulk output (followed logs) an agent streams back, tagged with the command's id.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use diplo_api::command::{AgentCommand, CommandErrorCode, CommandOp, CommandOutcome, CommandOutput};
use diplo_api::container::LogChunk;
use diplo_api::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::SessionMessage;

/// How long a command may take on the agent (pulls included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Commands awaiting their result, and output streams awaiting their chunks.
#[derive(Default)]
pub struct PendingCommands {
    results: Mutex<HashMap<String, (String, oneshot::Sender<CommandOutcome>)>>,
    outputs: Mutex<HashMap<String, (String, mpsc::Sender<LogChunk>)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ControlPlane {
    /// Sends a command to a node and waits for its result.
    pub(crate) async fn send_command(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<CommandOutput> {
        let (request_id, rx) = self.dispatch(node_id, runtime, op).await?;
        let outcome = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => return Err(ServiceError::Unavailable(format!("node {node_id} went away before answering"))),
            Err(_) => {
                lock(&self.pending.results).remove(&request_id);
                return Err(ServiceError::Unavailable(format!("node {node_id} did not answer within {COMMAND_TIMEOUT:?}")));
            }
        };
        outcome.map_err(|err| match err.code {
            CommandErrorCode::NotFound => ServiceError::NotFound(err.message),
            CommandErrorCode::AlreadyExists => ServiceError::AlreadyExists(err.message),
            CommandErrorCode::InvalidArgument => ServiceError::InvalidRequest(err.message),
            CommandErrorCode::Unimplemented => ServiceError::Unsupported(err.message),
            CommandErrorCode::Unavailable => ServiceError::Unavailable(err.message),
            CommandErrorCode::FailedPrecondition => ServiceError::FailedPrecondition(err.message),
            CommandErrorCode::PermissionDenied => ServiceError::PermissionDenied(err.message),
            CommandErrorCode::Internal => ServiceError::Internal(err.message),
        })
    }

    /// Sends a command whose output the agent will stream back; returns the receiver of
    /// that output once the agent has accepted the command.
    pub(crate) async fn open_output(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<mpsc::Receiver<LogChunk>> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = mpsc::channel(64);
        lock(&self.pending.outputs).insert(request_id.clone(), (node_id.to_owned(), tx));
        let sent = self.dispatch_with_id(node_id, runtime, op, request_id.clone()).await;
        let accepted = match sent {
            Ok(result) => tokio::time::timeout(COMMAND_TIMEOUT, result).await,
            Err(err) => {
                lock(&self.pending.outputs).remove(&request_id);
                return Err(err);
            }
        };
        match accepted {
            Ok(Ok(Ok(_))) => Ok(rx),
            Ok(Ok(Err(err))) => {
                lock(&self.pending.outputs).remove(&request_id);
                Err(ServiceError::FailedPrecondition(err.message))
            }
            _ => {
                lock(&self.pending.outputs).remove(&request_id);
                Err(ServiceError::Unavailable(format!("node {node_id} did not accept the command")))
            }
        }
    }

    async fn dispatch(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<(String, oneshot::Receiver<CommandOutcome>)> {
        let request_id = uuid::Uuid::new_v4().to_string();
        let rx = self.dispatch_with_id(node_id, runtime, op, request_id.clone()).await?;
        Ok((request_id, rx))
    }

    async fn dispatch_with_id(
        &self,
        node_id: &str,
        runtime: Runtime,
        op: CommandOp,
        request_id: String,
    ) -> ServiceResult<oneshot::Receiver<CommandOutcome>> {
        let downstream = self
            .nodes
            .downstream(node_id)
            .ok_or_else(|| ServiceError::Unavailable(format!("node {node_id} is not connected")))?;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending.results).insert(request_id.clone(), (node_id.to_owned(), tx));
        let command = AgentCommand { request_id: request_id.clone(), runtime, op };
        tracing::debug!(node_id, request_id = %request_id, %runtime, "sending command");
        if downstream.send(SessionMessage::Command(command)).await.is_err() {
            lock(&self.pending.results).remove(&request_id);
            return Err(ServiceError::Unavailable(format!("node {node_id} is not connected")));
        }
        Ok(rx)
    }

    /// Delivers a command result from the caller's own node. A result for another
    /// node's command is refused and audited (`security.refused`).
    pub async fn command_result(&self, caller: &Caller, request_id: &str, outcome: CommandOutcome) -> ServiceResult<()> {
        caller.require_any_node()?;
        let foreign = {
            let mut results = lock(&self.pending.results);
            match results.get(request_id) {
                None => {
                    tracing::debug!(request_id, "result for no pending command (timed out?)");
                    return Ok(());
                }
                Some((node_id, _)) if caller.require_node(node_id).is_err() => node_id.clone(),
                Some(_) => {
                    if let Some((_, tx)) = results.remove(request_id) {
                        let _ = tx.send(outcome);
                    }
                    return Ok(());
                }
            }
        };
        Err(self.refuse(caller, format!("sent the result of command {request_id}, which was sent to node {foreign}")).await)
    }

    /// The sink for a command's bulk output, for the caller's own node; `None` when
    /// nobody waits for it any more. Output of another node's command is refused and
    /// audited (`security.refused`).
    pub async fn output_sink(&self, caller: &Caller, request_id: &str) -> ServiceResult<Option<mpsc::Sender<LogChunk>>> {
        caller.require_any_node()?;
        let foreign = {
            let outputs = lock(&self.pending.outputs);
            match outputs.get(request_id) {
                None => return Ok(None),
                Some((node_id, _)) if caller.require_node(node_id).is_err() => node_id.clone(),
                Some((_, tx)) => return Ok(Some(tx.clone())),
            }
        };
        Err(self.refuse(caller, format!("streamed output for command {request_id}, which was sent to node {foreign}")).await)
    }

    /// Forgets an output stream that ended.
    pub fn close_output(&self, request_id: &str) {
        lock(&self.pending.outputs).remove(request_id);
    }
}
