//! `AgentService`: join, certificate renewal and the session stream.

use std::pin::Pin;
use std::sync::Arc;

use diplo_api::pb::{self, agent_message::Body};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::auth::caller;
use super::convert::{session_message, status_from, timestamp};
use crate::error::ServiceError;
use crate::model::SessionMessage;
use crate::service::{ControlPlane, JoinInput};
use diplo_api::build::BuildReport;
use diplo_api::command::{CommandOutcome, command_outcome};
use diplo_api::container::{LogChunk, OutputStream};
use diplo_api::fingerprint::Fingerprint;
use diplo_api::wire::{ContainerReport, ReportedContainer, container_report};

/// An agent's session message, decoded and checked: what the session handler passes to
/// the service. The one conversion of agent input on this path (the fuzz targets call
/// [`session_event`] too).
#[derive(Debug)]
pub enum SessionEvent {
    /// The session's first message: what the node offers and every container it has.
    Hello {
        /// The node's fingerprint.
        fingerprint: Fingerprint,
        /// Its containers (a full report).
        containers: Vec<ReportedContainer>,
    },
    /// A heartbeat and the container report it carries (full or delta).
    Heartbeat {
        /// The agent's heartbeat counter.
        sequence: u64,
        /// Its container report.
        report: ContainerReport,
        /// The named volumes of the runtimes it lists (checked and bounded).
        volumes: diplo_api::fingerprint::VolumeReport,
    },
    /// The outcome of a command the control plane sent.
    Result {
        /// The command's request id, as the agent sent it (looked up, never trusted).
        request_id: String,
        /// What the command did.
        outcome: CommandOutcome,
    },
    /// A build's end, bounded and checked.
    BuildReport(BuildReport),
}

/// Checks an agent's session message: the container reports through
/// [`container_report`], results through [`command_outcome`], build reports through
/// their checked conversion. `Ok(None)`: a message without a body (ignored). Errors name
/// the field at fault; a session refuses the message (and ends) with them.
pub fn session_event(message: pb::AgentMessage) -> Result<Option<SessionEvent>, ServiceError> {
    let invalid = |err: diplo_api::wire::WireError| ServiceError::InvalidRequest(err.to_string());
    Ok(Some(match message.body {
        None => return Ok(None),
        Some(Body::Hello(hello)) => {
            let fingerprint = hello.fingerprint.ok_or_else(|| ServiceError::invalid("hello.fingerprint", "missing"))?;
            let report = container_report("hello", hello.containers, Vec::new(), true).map_err(invalid)?;
            SessionEvent::Hello { fingerprint: fingerprint.into(), containers: report.upserted }
        }
        Some(Body::Heartbeat(beat)) => SessionEvent::Heartbeat {
            sequence: beat.sequence,
            volumes: diplo_api::fingerprint::volumes_from_wire(&beat.volumes),
            report: container_report("heartbeat", beat.containers, beat.removed, beat.full).map_err(invalid)?,
        },
        Some(Body::Result(result)) => SessionEvent::Result { request_id: result.request_id.clone(), outcome: command_outcome(result) },
        Some(Body::BuildReport(report)) => SessionEvent::BuildReport(
            BuildReport::try_from(report)
                .map_err(|err| ServiceError::InvalidRequest(format!("invalid build_report.{}: {}", err.field, err.message)))?,
        ),
    }))
}

/// An output chunk as it is forwarded to the reader; `None` for the end-of-output mark.
pub fn log_chunk(chunk: pb::OutputChunk) -> Option<LogChunk> {
    if chunk.eof {
        return None;
    }
    let stream = if chunk.stream == "stderr" { OutputStream::Stderr } else { OutputStream::Stdout };
    Some(LogChunk { stream, data: chunk.data })
}

/// The gRPC face of the agent-facing half of [`ControlPlane`].
pub struct AgentApi {
    control_plane: Arc<ControlPlane>,
}

impl AgentApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        AgentApi { control_plane }
    }
}

fn remote<T>(request: &Request<T>) -> String {
    request.remote_addr().map(|addr| addr.to_string()).unwrap_or_default()
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

/// The downstream half of a session: messages for the agent until the session is
/// closed, then the status it ended with: the refusal the inbound side sent on `end`,
/// `PermissionDenied` when the node was removed, or OK (a newer session replaced it).
fn control_stream(
    downstream: mpsc::Receiver<SessionMessage>,
    end: oneshot::Receiver<Status>,
    control_plane: Arc<ControlPlane>,
    node_id: String,
) -> ControlStream {
    struct State {
        downstream: mpsc::Receiver<SessionMessage>,
        end: Option<oneshot::Receiver<Status>>,
        control_plane: Arc<ControlPlane>,
        node_id: String,
    }
    let state = State { downstream, end: Some(end), control_plane, node_id };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        let ended = match state.end.as_mut() {
            Some(end) => tokio::select! {
                biased;
                status = end => {
                    state.end = None;
                    match status {
                        Ok(status) => return Some((Err(status), None)),
                        // The inbound side ended without a refusal: go on until closed.
                        Err(_) => state.downstream.recv().await,
                    }
                }
                message = state.downstream.recv() => message,
            },
            None => state.downstream.recv().await,
        };
        match ended {
            Some(message) => Some((Ok(session_message(message)), Some(state))),
            None => {
                if let Some(status) = state.end.as_mut().and_then(|end| end.try_recv().ok()) {
                    Some((Err(status), None))
                } else if !state.control_plane.is_member(&state.node_id) {
                    let message = format!("node {} was removed from the cluster", state.node_id);
                    Some((Err(Status::permission_denied(message)), None))
                } else {
                    None
                }
            }
        }
    }))
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let address = remote(&request);
        let req = request.into_inner();
        let input = JoinInput {
            token: req.token,
            node_name: req.node_name,
            csr_pem: req.csr_pem,
            address,
            rejoin_node_id: req.node_id,
            rejoin_certificate_pem: req.certificate_pem,
        };
        let out = self.control_plane.join(input).await.map_err(|err| {
            tracing::warn!(error = %err, "join refused");
            status_from(err)
        })?;
        Ok(Response::new(pb::JoinResponse {
            node_id: out.node_id,
            certificate_pem: out.certificate_pem,
            ca_pem: out.ca_pem,
            expires_at: Some(timestamp(out.expires_at)),
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::RenewCertificateResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let out = self.control_plane.renew_node_certificate(&caller, &request.into_inner().csr_pem).await.map_err(status_from)?;
        Ok(Response::new(pb::RenewCertificateResponse {
            certificate_pem: out.certificate_pem,
            expires_at: Some(timestamp(out.expires_at)),
        }))
    }

    type SessionStream = ControlStream;

    async fn session(&self, request: Request<Streaming<pb::AgentMessage>>) -> Result<Response<ControlStream>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let address = remote(&request);
        let mut inbound = request.into_inner();
        let first = match inbound.message().await? {
            Some(message @ pb::AgentMessage { body: Some(Body::Hello(_)) }) => message,
            Some(_) => return Err(Status::invalid_argument("invalid session: the first message must be hello")),
            None => return Err(Status::invalid_argument("invalid session: closed before hello")),
        };
        let Some(SessionEvent::Hello { fingerprint, containers }) = session_event(first).map_err(status_from)? else {
            return Err(Status::internal("a hello message was not read as a hello"));
        };
        let (node_id, session, downstream) =
            self.control_plane.open_session(&caller, fingerprint, containers, &address).await.map_err(status_from)?;

        let control_plane = self.control_plane.clone();
        let (end_tx, end_rx) = oneshot::channel();
        let outbound = control_stream(downstream, end_rx, control_plane.clone(), node_id.clone());
        tokio::spawn(async move {
            // Why the session ends, when it is refused.
            let mut refused = None;
            loop {
                let message = match inbound.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(node_id = %node_id, error = %status, "session stream error");
                        break;
                    }
                };
                let bytes = prost::Message::encoded_len(&message);
                let what = match &message.body {
                    Some(Body::Heartbeat(_)) => "heartbeat",
                    Some(Body::Result(_)) => "command result",
                    Some(Body::BuildReport(_)) => "build report",
                    // A hello after the first, or no body at all: not read.
                    Some(Body::Hello(_)) | None => {
                        tracing::warn!(node_id = %node_id, "unexpected session message ignored");
                        continue;
                    }
                };
                let applied = match session_event(message) {
                    Err(err) => Err(err),
                    Ok(None | Some(SessionEvent::Hello { .. })) => continue,
                    Ok(Some(SessionEvent::Heartbeat { sequence, report, volumes })) => {
                        control_plane.node_volumes(&node_id, volumes, false);
                        tracing::debug!(
                            node_id = %node_id,
                            sequence,
                            full = report.full,
                            containers = report.upserted.len(),
                            removed = report.removed.len(),
                            bytes,
                            "heartbeat received"
                        );
                        control_plane.heartbeat(&caller, &node_id, report).await
                    }
                    Ok(Some(SessionEvent::Result { request_id, outcome })) => {
                        tracing::debug!(node_id = %node_id, request_id = %diplo_api::text::node_text(&request_id), ok = outcome.is_ok(), "command result");
                        control_plane.command_result(&caller, &request_id, outcome).await
                    }
                    Ok(Some(SessionEvent::BuildReport(report))) => control_plane.build_report(&caller, report).await,
                };
                if let Err(err) = applied {
                    tracing::warn!(node_id = %node_id, error = %err, "{what} refused; ending session");
                    refused = Some(status_from(err));
                    break;
                }
            }
            if let Some(status) = refused {
                // Sent before the session closes, so that the stream ends with it.
                let _ = end_tx.send(status);
            }
            control_plane.close_session(&node_id, session);
        });
        Ok(Response::new(outbound))
    }

    async fn stream_output(&self, request: Request<Streaming<pb::OutputChunk>>) -> Result<Response<pb::StreamOutputResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        caller.require_any_node().map_err(status_from)?;
        let mut chunks = request.into_inner();
        // The first chunk names the command; the stream is forgotten however it ends.
        let Some(first) = chunks.message().await? else { return Ok(Response::new(pb::StreamOutputResponse {})) };
        let request_id = first.request_id.clone();
        let Some(sink) = self.control_plane.output_sink(&caller, &request_id).await.map_err(status_from)? else {
            return Err(Status::cancelled("nobody is reading this output any more"));
        };
        let _forget = CloseOutput { control_plane: &self.control_plane, request_id: &request_id };
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(chunk) => chunk,
                None => {
                    let received = tokio::select! {
                        received = chunks.message() => received,
                        () = sink.closed() => return Err(Status::cancelled("the reader went away")),
                    };
                    match received {
                        Ok(Some(chunk)) => chunk,
                        // Ended without its end-of-output mark: the reader is told.
                        Ok(None) => {
                            let _ = sink.try_send(crate::service::stream_end_note("the agent's output stream ended early"));
                            break;
                        }
                        Err(status) => {
                            let _ = sink.try_send(crate::service::stream_end_note(&format!(
                                "the agent's output stream failed: {}",
                                status.message()
                            )));
                            return Err(status);
                        }
                    }
                }
            };
            let Some(chunk) = log_chunk(chunk) else { break };
            if sink.send(chunk).await.is_err() {
                return Err(Status::cancelled("the reader went away"));
            }
        }
        Ok(Response::new(pb::StreamOutputResponse {}))
    }
}

/// Forgets an output stream when its handler ends, whichever way.
struct CloseOutput<'a> {
    control_plane: &'a ControlPlane,
    request_id: &'a str,
}

impl Drop for CloseOutput<'_> {
    fn drop(&mut self) {
        self.control_plane.close_output(self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: Body) -> pb::AgentMessage {
        pb::AgentMessage { body: Some(body) }
    }

    fn container(id: &str, runtime: pb::RuntimeKind) -> pb::ContainerState {
        pb::ContainerState { id: id.into(), runtime: runtime as i32, ..Default::default() }
    }

    /// The error message a refused session message is answered with.
    fn refusal(message: pb::AgentMessage) -> String {
        match session_event(message) {
            Err(err) => status_from(err).message().to_owned(),
            Ok(event) => panic!("accepted: {event:?}"),
        }
    }

    #[test]
    fn session_messages_are_checked_once_and_refusals_name_the_field() {
        let hello =
            pb::Hello { fingerprint: Some(pb::NodeFingerprint::default()), containers: vec![container("c1", pb::RuntimeKind::Docker)] };
        match session_event(message(Body::Hello(hello.clone()))) {
            Ok(Some(SessionEvent::Hello { containers, .. })) => assert_eq!(containers[0].info.id, "c1"),
            other => panic!("{other:?}"),
        }
        let beat = pb::Heartbeat {
            sequence: 7,
            full: false,
            containers: vec![container("c1", pb::RuntimeKind::Docker)],
            removed: vec![pb::RemovedContainer { id: "c2".into(), runtime: pb::RuntimeKind::Podman as i32 }],
            ..Default::default()
        };
        match session_event(message(Body::Heartbeat(beat.clone()))) {
            Ok(Some(SessionEvent::Heartbeat { sequence: 7, report, .. })) => {
                assert_eq!((report.upserted.len(), report.removed.len(), report.full), (1, 1, false));
            }
            other => panic!("{other:?}"),
        }
        let result = pb::CommandResult { request_id: "r1".into(), ok: true, ..Default::default() };
        assert!(matches!(
            session_event(message(Body::Result(result))),
            Ok(Some(SessionEvent::Result { request_id, outcome: Ok(_) })) if request_id == "r1"
        ));
        assert!(matches!(session_event(pb::AgentMessage { body: None }), Ok(None)));

        let cases: Vec<(pb::AgentMessage, &str)> = vec![
            (message(Body::Hello(pb::Hello { fingerprint: None, ..hello.clone() })), "invalid hello.fingerprint: missing"),
            (
                message(Body::Hello(pb::Hello { containers: vec![container("", pb::RuntimeKind::Docker)], ..hello })),
                "hello.containers[0].id",
            ),
            (message(Body::Heartbeat(pb::Heartbeat { full: true, ..beat.clone() })), "heartbeat.removed"),
            (
                message(Body::Heartbeat(pb::Heartbeat { containers: vec![container("c3", pb::RuntimeKind::Unspecified)], ..beat })),
                "heartbeat.containers[0].runtime",
            ),
            (
                message(Body::BuildReport(pb::BuildReport { build_id: "b1".into(), status: "running".into(), ..Default::default() })),
                "invalid build_report.status",
            ),
        ];
        for (message, field) in cases {
            let refused = refusal(message);
            assert!(refused.contains(field), "{refused:?} does not name {field}");
        }
    }

    #[test]
    fn output_chunks_are_forwarded_whole_until_the_end_mark() {
        let chunk = |stream: &str, eof: bool| pb::OutputChunk { request_id: "r".into(), stream: stream.into(), data: b"x".to_vec(), eof };
        let forwarded = log_chunk(chunk("stderr", false)).expect("forwarded");
        assert_eq!((forwarded.stream, forwarded.data.as_slice()), (OutputStream::Stderr, &b"x"[..]));
        assert_eq!(log_chunk(chunk("anything", false)).map(|c| c.stream), Some(OutputStream::Stdout));
        assert!(log_chunk(chunk("stdout", true)).is_none());
    }
}
