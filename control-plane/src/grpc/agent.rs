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
use diplo_api::command::command_outcome;
use diplo_api::container::{LogChunk, OutputStream};
use diplo_api::wire::container_report;

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
        let hello = match inbound.message().await? {
            Some(pb::AgentMessage { body: Some(Body::Hello(hello)) }) => hello,
            Some(_) => return Err(Status::invalid_argument("invalid session: the first message must be hello")),
            None => return Err(Status::invalid_argument("invalid session: closed before hello")),
        };
        let fingerprint = hello.fingerprint.ok_or_else(|| Status::invalid_argument("invalid hello.fingerprint: missing"))?;
        let report =
            container_report("hello", hello.containers, Vec::new(), true).map_err(|err| Status::invalid_argument(err.to_string()))?;
        let containers = report.upserted;
        let (node_id, session, downstream) =
            self.control_plane.open_session(&caller, fingerprint.into(), containers, &address).await.map_err(status_from)?;

        let control_plane = self.control_plane.clone();
        let (end_tx, end_rx) = oneshot::channel();
        let outbound = control_stream(downstream, end_rx, control_plane.clone(), node_id.clone());
        tokio::spawn(async move {
            // Why the session ends, when it is refused.
            let mut refused = None;
            loop {
                match inbound.message().await {
                    Ok(Some(pb::AgentMessage { body: Some(Body::Heartbeat(beat)) })) => {
                        tracing::debug!(
                            node_id = %node_id,
                            sequence = beat.sequence,
                            full = beat.full,
                            containers = beat.containers.len(),
                            removed = beat.removed.len(),
                            bytes = prost::Message::encoded_len(&beat),
                            "heartbeat received"
                        );
                        let checked = match container_report("heartbeat", beat.containers, beat.removed, beat.full) {
                            Ok(report) => control_plane.heartbeat(&caller, &node_id, report).await,
                            Err(err) => Err(ServiceError::InvalidRequest(err.to_string())),
                        };
                        if let Err(err) = checked {
                            tracing::warn!(node_id = %node_id, error = %err, "heartbeat refused; ending session");
                            refused = Some(status_from(err));
                            break;
                        }
                    }
                    Ok(Some(pb::AgentMessage { body: Some(Body::Result(result)) })) => {
                        let request_id = result.request_id.clone();
                        tracing::debug!(node_id = %node_id, request_id = %diplo_api::text::node_text(&request_id), ok = result.ok, "command result");
                        if let Err(err) = control_plane.command_result(&caller, &request_id, command_outcome(result)).await {
                            tracing::warn!(node_id = %node_id, error = %err, "command result refused; ending session");
                            refused = Some(status_from(err));
                            break;
                        }
                    }
                    Ok(Some(pb::AgentMessage { body: Some(Body::BuildReport(report)) })) => {
                        let checked = match diplo_api::build::BuildReport::try_from(report) {
                            Ok(report) => control_plane.build_report(&caller, report).await,
                            Err(err) => Err(ServiceError::InvalidRequest(format!("invalid build_report.{}: {}", err.field, err.message))),
                        };
                        if let Err(err) = checked {
                            tracing::warn!(node_id = %node_id, error = %err, "build report refused; ending session");
                            refused = Some(status_from(err));
                            break;
                        }
                    }
                    Ok(Some(_)) => tracing::warn!(node_id = %node_id, "unexpected session message ignored"),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::info!(node_id = %node_id, error = %status, "session stream error");
                        break;
                    }
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
            if chunk.eof {
                break;
            }
            let stream = if chunk.stream == "stderr" { OutputStream::Stderr } else { OutputStream::Stdout };
            if sink.send(LogChunk { stream, data: chunk.data }).await.is_err() {
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
