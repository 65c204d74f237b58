//! Sending commands down an agent's session and waiting for their results; routing the
//! bulk output (followed logs) an agent streams back, tagged with the command's id.
//!
//! Every command ends: sending it and waiting for its result together take at most
//! [`COMMAND_TIMEOUT`]; a waiter that goes away (a client that disconnects) takes its
//! entry with it; and when a node's session closes, every command sent on it fails at
//! once as `Unavailable` and every output stream of that node ends with a note.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diplo_api::command::{AgentCommand, CommandErrorCode, CommandOp, CommandOutcome, CommandOutput};
use diplo_api::container::{LogChunk, OutputStream};
use diplo_api::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::SessionMessage;

/// How long a command may take on the agent (pulls included), sending it included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a command went: its node and the session it was sent on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    node_id: String,
    session: u64,
}

/// Entries by request id, each with where its command went.
type Routed<T> = Arc<Mutex<HashMap<String, (Route, T)>>>;

/// Commands awaiting their result, and output streams awaiting their chunks, by
/// request id.
#[derive(Default, Clone)]
pub struct PendingCommands {
    results: Routed<oneshot::Sender<CommandOutcome>>,
    outputs: Routed<mpsc::Sender<LogChunk>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A command's place among the pending results: removed when dropped, whichever way
/// its waiter ends (answered, timed out, cancelled).
#[must_use = "the pending result is forgotten when this is dropped"]
pub struct PendingResult {
    pending: PendingCommands,
    request_id: String,
}

impl Drop for PendingResult {
    fn drop(&mut self) {
        lock(&self.pending.results).remove(&self.request_id);
    }
}

/// An output stream's place among the pending outputs until it is handed to its
/// reader: removed when dropped unless [`PendingOutput::keep`] was called.
#[must_use = "the pending output is forgotten when this is dropped"]
pub struct PendingOutput {
    pending: PendingCommands,
    request_id: String,
    keep: bool,
}

impl PendingOutput {
    /// Leaves the entry for the agent's stream (which ends it).
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for PendingOutput {
    fn drop(&mut self) {
        if !self.keep {
            lock(&self.pending.outputs).remove(&self.request_id);
        }
    }
}

impl PendingCommands {
    /// Registers a command sent on `session` of `node_id`; its result arrives on the receiver.
    fn expect_result(&self, request_id: &str, node_id: &str, session: u64) -> (PendingResult, oneshot::Receiver<CommandOutcome>) {
        let (tx, rx) = oneshot::channel();
        let route = Route { node_id: node_id.to_owned(), session };
        lock(&self.results).insert(request_id.to_owned(), (route, tx));
        (PendingResult { pending: self.clone(), request_id: request_id.to_owned() }, rx)
    }

    /// Registers an output stream for a command to `node_id` (its session is set by
    /// [`PendingCommands::expect_result`] of the same command).
    fn expect_output(&self, request_id: &str, node_id: &str, session: u64) -> (PendingOutput, mpsc::Receiver<LogChunk>) {
        let (tx, rx) = mpsc::channel(64);
        let route = Route { node_id: node_id.to_owned(), session };
        lock(&self.outputs).insert(request_id.to_owned(), (route, tx));
        (PendingOutput { pending: self.clone(), request_id: request_id.to_owned(), keep: false }, rx)
    }

    /// The node a pending result is expected from.
    fn result_node(&self, request_id: &str) -> Option<String> {
        lock(&self.results).get(request_id).map(|(route, _)| route.node_id.clone())
    }

    /// Hands a result to its waiter; `false` when nobody waits for it any more.
    fn deliver(&self, request_id: &str, outcome: CommandOutcome) -> bool {
        match lock(&self.results).remove(request_id) {
            Some((_, tx)) => tx.send(outcome).is_ok(),
            None => false,
        }
    }

    /// The node an output stream is expected from, and its sink.
    fn output(&self, request_id: &str) -> Option<(String, mpsc::Sender<LogChunk>)> {
        lock(&self.outputs).get(request_id).map(|(route, tx)| (route.node_id.clone(), tx.clone()))
    }

    /// How many commands await their result, and how many output streams are open.
    pub(super) fn counts(&self) -> (usize, usize) {
        (lock(&self.results).len(), lock(&self.outputs).len())
    }

    /// Forgets an output stream.
    fn close_output(&self, request_id: &str) {
        lock(&self.outputs).remove(request_id);
    }

    /// Ends everything sent on `session` of `node_id`: each waiting command fails at
    /// once (`Unavailable`), each output stream gets a last note and ends. Returns how
    /// many commands and streams were ended.
    fn session_closed(&self, node_id: &str, session: u64) -> usize {
        let on_session = |route: &Route| route.node_id == node_id && route.session == session;
        let failed: Vec<_> = {
            let mut results = lock(&self.results);
            let ids: Vec<String> = results.iter().filter(|(_, (route, _))| on_session(route)).map(|(id, _)| id.clone()).collect();
            ids.into_iter().filter_map(|id| results.remove(&id)).collect()
        };
        let ended: Vec<_> = {
            let mut outputs = lock(&self.outputs);
            let ids: Vec<String> = outputs.iter().filter(|(_, (route, _))| on_session(route)).map(|(id, _)| id.clone()).collect();
            ids.into_iter().filter_map(|id| outputs.remove(&id)).collect()
        };
        let count = failed.len() + ended.len();
        for (_, tx) in failed {
            let _ = tx.send(Err(diplo_api::command::CommandError {
                code: CommandErrorCode::Unavailable,
                message: format!("node {node_id} disconnected before answering"),
            }));
        }
        for (_, tx) in ended {
            // Best effort: a reader that is behind simply sees the stream end.
            let _ = tx.try_send(stream_end_note(&format!("node {node_id} disconnected")));
        }
        count
    }
}

/// The last chunk of an output stream that ends for another reason than its source
/// ending: says why, on stderr.
pub fn stream_end_note(reason: &str) -> LogChunk {
    LogChunk { stream: OutputStream::Stderr, data: format!("\n[output ended: {reason}]\n").into_bytes() }
}

/// A command's outcome as a metric label: `ok` or the error's class.
fn outcome_label<T>(result: &ServiceResult<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ServiceError::NotFound(_)) => "not_found",
        Err(ServiceError::AlreadyExists(_)) => "already_exists",
        Err(ServiceError::InvalidRequest(_) | ServiceError::InvalidArgument { .. }) => "invalid_argument",
        Err(ServiceError::Unsupported(_)) => "unimplemented",
        Err(ServiceError::Unavailable(_)) => "unavailable",
        Err(ServiceError::FailedPrecondition(_)) => "failed_precondition",
        Err(ServiceError::PermissionDenied(_)) => "permission_denied",
        Err(_) => "internal",
    }
}

/// Sends `message` down a session, giving up at `deadline` (a session whose agent does
/// not read fills its channel, and a send would otherwise wait forever).
async fn send_within(
    downstream: &mpsc::Sender<SessionMessage>,
    message: SessionMessage,
    deadline: Instant,
    node_id: &str,
) -> ServiceResult<()> {
    match tokio::time::timeout_at(deadline, downstream.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(ServiceError::Unavailable(format!("node {node_id} is not connected"))),
        Err(_) => Err(ServiceError::Unavailable(format!(
            "node {node_id} did not take the command within {COMMAND_TIMEOUT:?}: its session is not being read"
        ))),
    }
}

impl ControlPlane {
    /// Sends a command to a node and waits for its result, [`COMMAND_TIMEOUT`] at most.
    ///
    /// Runs in a `command.<kind>` span whose trace context travels with the command (the
    /// agent's work is its child), and counts the command by kind and outcome.
    pub(crate) async fn send_command(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<CommandOutput> {
        let kind = op.kind();
        let span = tracing::info_span!("command", otel.name = %format!("command.{kind}"), node_id, %runtime, op = kind);
        let result = self.send_command_traced(node_id, runtime, op).instrument(span).await;
        self.metrics.command(kind, outcome_label(&result));
        result
    }

    async fn send_command_traced(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<CommandOutput> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let request_id = uuid::Uuid::new_v4().to_string();
        let (_pending, rx) = self.dispatch(node_id, runtime, op, &request_id, deadline).await?;
        let outcome = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => return Err(ServiceError::Unavailable(format!("node {node_id} went away before answering"))),
            Err(_) => return Err(ServiceError::Unavailable(format!("node {node_id} did not answer within {COMMAND_TIMEOUT:?}"))),
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
    /// that output once the agent has accepted the command. The stream ends when the
    /// agent's output ends, the agent's stream fails, or the node's session closes (the
    /// last two with a note saying so).
    pub(crate) async fn open_output(&self, node_id: &str, runtime: Runtime, op: CommandOp) -> ServiceResult<mpsc::Receiver<LogChunk>> {
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let request_id = uuid::Uuid::new_v4().to_string();
        let kind = op.kind();
        let (session, downstream) = self.session_of(node_id)?;
        let (output, rx) = self.pending.expect_output(&request_id, node_id, session);
        let (_pending, result) = self.pending.expect_result(&request_id, node_id, session);
        let traceparent = diplo_api::telemetry::current_traceparent();
        let command = AgentCommand { request_id: request_id.clone(), runtime, op, traceparent };
        tracing::debug!(node_id, request_id = %request_id, %runtime, "sending command with output");
        send_within(&downstream, SessionMessage::Command(Box::new(command)), deadline, node_id).await?;
        let accepted = match tokio::time::timeout_at(deadline, result).await {
            Ok(Ok(Ok(_))) => {
                output.keep();
                Ok(rx)
            }
            Ok(Ok(Err(err))) if err.code == CommandErrorCode::Unavailable => Err(ServiceError::Unavailable(err.message)),
            Ok(Ok(Err(err))) => Err(ServiceError::FailedPrecondition(err.message)),
            _ => Err(ServiceError::Unavailable(format!("node {node_id} did not accept the command"))),
        };
        self.metrics.command(kind, outcome_label(&accepted));
        accepted
    }

    /// The open session of a node: its number and downstream channel.
    fn session_of(&self, node_id: &str) -> ServiceResult<(u64, mpsc::Sender<SessionMessage>)> {
        self.nodes.session(node_id).ok_or_else(|| ServiceError::Unavailable(format!("node {node_id} is not connected")))
    }

    async fn dispatch(
        &self,
        node_id: &str,
        runtime: Runtime,
        op: CommandOp,
        request_id: &str,
        deadline: Instant,
    ) -> ServiceResult<(PendingResult, oneshot::Receiver<CommandOutcome>)> {
        let (session, downstream) = self.session_of(node_id)?;
        let (pending, rx) = self.pending.expect_result(request_id, node_id, session);
        let traceparent = diplo_api::telemetry::current_traceparent();
        let command = AgentCommand { request_id: request_id.to_owned(), runtime, op, traceparent };
        tracing::debug!(node_id, request_id, %runtime, "sending command");
        send_within(&downstream, SessionMessage::Command(Box::new(command)), deadline, node_id).await?;
        Ok((pending, rx))
    }

    /// Delivers a command result from the caller's own node. A result for another
    /// node's command is refused and audited (`security.refused`).
    pub async fn command_result(&self, caller: &Caller, request_id: &str, outcome: CommandOutcome) -> ServiceResult<()> {
        caller.require_any_node()?;
        match self.pending.result_node(request_id) {
            None => {
                tracing::debug!(request_id, "result for no pending command (timed out?)");
                Ok(())
            }
            Some(node_id) if caller.require_node(&node_id).is_err() => {
                Err(self.refuse(caller, format!("sent the result of command {request_id}, which was sent to node {node_id}")).await)
            }
            Some(_) => {
                if !self.pending.deliver(request_id, outcome) {
                    tracing::debug!(request_id, "result for a command nobody waits for any more");
                }
                Ok(())
            }
        }
    }

    /// The sink for a command's bulk output, for the caller's own node; `None` when
    /// nobody waits for it any more. Output of another node's command is refused and
    /// audited (`security.refused`).
    pub async fn output_sink(&self, caller: &Caller, request_id: &str) -> ServiceResult<Option<mpsc::Sender<LogChunk>>> {
        caller.require_any_node()?;
        match self.pending.output(request_id) {
            None => Ok(None),
            Some((node_id, _)) if caller.require_node(&node_id).is_err() => {
                Err(self.refuse(caller, format!("streamed output for command {request_id}, which was sent to node {node_id}")).await)
            }
            Some((_, tx)) => Ok(Some(tx)),
        }
    }

    /// Forgets an output stream that ended.
    pub fn close_output(&self, request_id: &str) {
        self.pending.close_output(request_id);
    }

    /// Ends the commands and output streams sent on a session that closed.
    pub(super) fn end_session_commands(&self, node_id: &str, session: u64) {
        let ended = self.pending.session_closed(node_id, session);
        self.builds.session_closed(node_id, session);
        if ended > 0 {
            tracing::info!(node_id, session, ended, "commands of a closed session failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::command::CommandError;

    #[tokio::test]
    async fn a_waiter_that_goes_away_takes_its_entry_with_it() {
        let pending = PendingCommands::default();
        let (guard, rx) = pending.expect_result("r1", "n1", 1);
        assert_eq!(pending.result_node("r1").as_deref(), Some("n1"));
        // A cancelled waiter: the future holding the guard is dropped before the answer.
        let waiter = async move {
            let _guard = guard;
            rx.await
        };
        assert!(tokio::time::timeout(Duration::from_millis(20), waiter).await.is_err());
        assert_eq!(pending.result_node("r1"), None);
        assert!(!pending.deliver("r1", Ok(CommandOutput::default())));

        let (output, _rx) = pending.expect_output("r2", "n1", 1);
        drop(output);
        assert!(pending.output("r2").is_none());
        let (output, _rx) = pending.expect_output("r3", "n1", 1);
        output.keep();
        assert!(pending.output("r3").is_some());
    }

    #[tokio::test]
    async fn a_closed_session_fails_its_commands_at_once_and_ends_its_streams() {
        let pending = PendingCommands::default();
        let (_a, on_old) = pending.expect_result("a", "n1", 1);
        let (_b, on_new) = pending.expect_result("b", "n1", 2);
        let (_c, other_node) = pending.expect_result("c", "n2", 1);
        let (output, mut stream) = pending.expect_output("d", "n1", 1);
        output.keep();

        assert_eq!(pending.session_closed("n1", 1), 2);
        let failed = tokio::time::timeout(Duration::from_secs(1), on_old).await.expect("woken at once").expect("an outcome");
        assert_eq!(failed.expect_err("failed").code, CommandErrorCode::Unavailable);
        let note = stream.recv().await.expect("a last note");
        assert!(String::from_utf8_lossy(&note.data).contains("node n1 disconnected"), "{note:?}");
        assert!(stream.recv().await.is_none(), "the stream ends");

        // Commands on the newer session and on other nodes are untouched.
        assert!(pending.deliver("b", Err(CommandError { code: CommandErrorCode::NotFound, message: "x".into() })));
        assert!(on_new.await.expect("answered").is_err());
        assert!(pending.deliver("c", Ok(CommandOutput::default())));
        assert!(other_node.await.expect("answered").is_ok());
    }

    fn exec_output(stdout: &str) -> CommandOutput {
        CommandOutput {
            exec: Some(diplo_api::container::ExecOutput { exit_code: 0, stdout: stdout.into(), stderr: Vec::new() }),
            ..Default::default()
        }
    }

    /// A node answering, or streaming output for, a command sent to another node is
    /// refused and audited as `security.refused`, and the command still waits for its
    /// own node, whose answer and output reach the caller.
    #[tokio::test]
    async fn results_and_output_for_another_nodes_command_are_refused_and_the_genuine_answer_still_arrives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let control_plane = super::super::tests::control_plane(dir.path()).await;
        let (genuine, intruder) = (Caller::Node { node_id: "node-a".into() }, Caller::Node { node_id: "node-b".into() });
        let (_waiting, answer) = control_plane.pending.expect_result("req-result", "node-a", 1);
        let (output, mut stream) = control_plane.pending.expect_output("req-output", "node-a", 1);
        output.keep();

        let refused = control_plane.command_result(&intruder, "req-result", Ok(exec_output("forged"))).await;
        assert!(matches!(refused, Err(ServiceError::PermissionDenied(ref m)) if m.contains("req-result")), "{refused:?}");
        let refused = control_plane.output_sink(&intruder, "req-output").await;
        assert!(
            matches!(refused, Err(ServiceError::PermissionDenied(ref m)) if m.contains("req-output")),
            "{:?}",
            refused.map(|s| s.is_some())
        );

        let events = control_plane.store().list_events(0, 100).await.expect("events");
        let refusals: Vec<_> = events.iter().filter(|e| e.event.kind == "security.refused").collect();
        assert_eq!(refusals.len(), 2, "both attempts audited: {events:?}");
        for (refusal, request_id) in refusals.iter().zip(["req-result", "req-output"]) {
            assert_eq!(refusal.event.actor, "node:node-b", "{refusal:?}");
            assert_eq!(refusal.event.subject, "node-b", "{refusal:?}");
            assert!(refusal.event.message.contains(request_id) && refusal.event.message.contains("node-a"), "{refusal:?}");
        }

        // The genuine node's answer and output still reach the waiting caller.
        control_plane.command_result(&genuine, "req-result", Ok(exec_output("genuine"))).await.expect("the node's own result");
        let outcome = tokio::time::timeout(Duration::from_secs(5), answer).await.expect("answered").expect("an outcome");
        let exec = outcome.expect("success").exec.expect("exec output");
        assert_eq!(exec.stdout, b"genuine", "the genuine node's answer, not the forged one");
        let sink = control_plane.output_sink(&genuine, "req-output").await.expect("the node's own output").expect("a waiting caller");
        sink.send(LogChunk { stream: OutputStream::Stdout, data: b"genuine output".to_vec() }).await.expect("send");
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.recv()).await.expect("streamed").expect("a chunk");
        assert_eq!(chunk.data, b"genuine output");
    }

    #[tokio::test]
    async fn sending_to_a_session_nobody_reads_gives_up_at_the_deadline() {
        let (tx, rx) = mpsc::channel(1);
        let welcome = || SessionMessage::Welcome { node_id: "n1".into(), heartbeat_interval: Duration::from_secs(1) };
        tx.try_send(welcome()).expect("room for one");
        let started = std::time::Instant::now();
        let sent = send_within(&tx, welcome(), Instant::now() + Duration::from_millis(100), "n1").await;
        assert!(matches!(sent, Err(ServiceError::Unavailable(ref m)) if m.contains("n1")), "{sent:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(rx);
        let closed = send_within(&tx, welcome(), Instant::now() + Duration::from_secs(5), "n1").await;
        assert!(matches!(closed, Err(ServiceError::Unavailable(ref m)) if m.contains("not connected")), "{closed:?}");
    }
}
