//! Joining and the long-lived session: the agent dials out (it listens on nothing),
//! sends its fingerprint, then heartbeats; it reconnects with backoff and jitter, and
//! renews its certificate at two thirds of its lifetime.

use std::path::Path;
use std::time::Duration;

use diplo_api::pb::{self, agent_service_client::AgentServiceClient};
use diplo_api::token::JoinToken;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use diplo_api::command::{AgentCommand, CommandOp, CommandOutcome, CommandOutput, command_result};
use diplo_api::container::OutputStream;
use diplo_api::wire::{container_state, removed_container};
use tokio_stream::StreamExt;
use tracing::Instrument;

use crate::executor::Executor;
use crate::fingerprint::FingerprintSource;
use crate::identity::Identity;
use crate::observer::{COALESCE, Delta, Observation, RESYNC_INTERVAL, Tracker, watch_runtime};
use crate::tls::{TlsError, connect_mtls, connect_pinned};

/// Why the agent stopped for good (retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The token could not be parsed.
    #[error("invalid --token: {0}")]
    Token(#[from] diplo_api::token::TokenError),
    /// No identity on disk and no token to get one.
    #[error("no node identity in {0} and no --token given: a join token is needed the first time")]
    NoToken(String),
    /// TLS set-up or CA pinning failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The control plane refused the join or the session for good.
    #[error("the control plane refused this node: {0}")]
    Refused(String),
    /// Reading or writing the identity files.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Generating the key or CSR.
    #[error(transparent)]
    Pki(#[from] diplo_api::pki::PkiError),
    /// The node certificate expired (the agent was offline longer than it lives) and no
    /// token was given to re-join with.
    #[error(
        "the certificate of node {node} expired at {expired_at} (this agent was offline longer than a node certificate lives). \
         To re-join as the same node, keeping its containers: create a join token on the control plane with \
         `diplo join-token create`, then start this agent again with the same data directory and \
         `diplo-agent --token '<token>' ...`"
    )]
    CertificateExpired {
        /// Node name.
        node: String,
        /// When the certificate expired (RFC 3339).
        expired_at: String,
    },
}

/// When `cert_pem` expired, if it has by `now` (an unreadable certificate counts as
/// valid: the TLS layer reports what is wrong with it).
pub fn certificate_expired(cert_pem: &str, now: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
    diplo_api::pki::not_after_pem(cert_pem).ok().filter(|not_after| *not_after <= now)
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// What to do at start with the identity in the data directory (if any) and the token
/// given (if any).
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// Use the saved identity.
    Saved,
    /// Join as a new node.
    Join,
    /// Join again as the same node: its certificate expired.
    Rejoin,
    /// Stop: the certificate expired at this time and no token was given.
    Expired(time::OffsetDateTime),
}

fn start_action(saved_cert: Option<&str>, token_given: bool, now: time::OffsetDateTime) -> Start {
    match saved_cert.map(|cert| certificate_expired(cert, now)) {
        None => Start::Join,
        Some(None) => Start::Saved,
        Some(Some(_)) if token_given => Start::Rejoin,
        Some(Some(expired_at)) => Start::Expired(expired_at),
    }
}

/// Joins with `token` unless `data_dir` already holds an identity; returns it. A saved
/// identity whose certificate expired re-joins with `token` as the same node (same id
/// and key), or, without a token, stops with [`AgentError::CertificateExpired`].
pub async fn ensure_identity(server: &str, token: Option<&str>, node_name: &str, data_dir: &Path) -> Result<Identity, AgentError> {
    let saved = if Identity::exists(data_dir) { Some(Identity::load(data_dir)?) } else { None };
    let rejoin = match start_action(saved.as_ref().map(|i| i.cert_pem.as_str()), token.is_some(), time::OffsetDateTime::now_utc()) {
        Start::Saved => {
            let identity = saved.ok_or_else(|| AgentError::NoToken(data_dir.display().to_string()))?;
            tracing::info!(node_id = %identity.node_id, node = %identity.node_name, "using saved node identity");
            return Ok(identity);
        }
        Start::Expired(expired_at) => {
            let node = saved.map_or_else(|| node_name.to_owned(), |i| i.node_name);
            return Err(AgentError::CertificateExpired { node, expired_at: rfc3339(expired_at) });
        }
        Start::Rejoin => saved,
        Start::Join => None,
    };
    let token: JoinToken = token.ok_or_else(|| AgentError::NoToken(data_dir.display().to_string()))?.parse()?;
    // A re-joining node keeps its name and key.
    let node_name = rejoin.as_ref().map_or(node_name, |identity| identity.node_name.as_str());
    let rejoin_node_id = rejoin.as_ref().map_or("", |identity| identity.node_id.as_str());
    let rejoin_certificate = rejoin.as_ref().map_or("", |identity| identity.cert_pem.as_str());
    let (key_pem, csr_pem) = match &rejoin {
        Some(identity) => {
            tracing::warn!(node_id = %identity.node_id, node = %identity.node_name, "node certificate expired; re-joining as the same node with the given token");
            (identity.key_pem.clone(), diplo_api::pki::csr_for_key(&identity.node_name, &identity.key_pem)?)
        }
        None => diplo_api::pki::generate_csr(node_name)?,
    };
    let mut backoff = Backoff::default();
    let response = loop {
        match join_once(server, &token, node_name, &csr_pem, (rejoin_node_id, rejoin_certificate)).await {
            Ok(response) => break response,
            Err(JoinAttempt::Fatal(err)) => return Err(err),
            Err(JoinAttempt::Retry(reason)) => {
                // A rate-limited attempt says when the next one is allowed.
                let wait = backoff.next_delay().max(retry_hint(&reason).unwrap_or_default());
                tracing::warn!(server, error = %reason, retry_in = ?wait, "cannot join yet");
                tokio::time::sleep(wait).await;
            }
        }
    };
    let presented = diplo_api::pki::fingerprint_pem(&response.ca_pem)?;
    if presented != token.ca_hash {
        return Err(TlsError::CaMismatch { expected: token.ca_hash.clone(), presented }.into());
    }
    let identity = Identity {
        node_id: response.node_id,
        node_name: node_name.to_owned(),
        key_pem,
        cert_pem: response.certificate_pem,
        ca_pem: response.ca_pem,
    };
    identity.save(data_dir)?;
    tracing::info!(node_id = %identity.node_id, node = %node_name, "joined the cluster");
    Ok(identity)
}

enum JoinAttempt {
    Fatal(AgentError),
    Retry(String),
}

async fn join_once(
    server: &str,
    token: &JoinToken,
    node_name: &str,
    csr_pem: &str,
    (rejoin_node_id, rejoin_certificate): (&str, &str),
) -> Result<pb::JoinResponse, JoinAttempt> {
    let channel = match connect_pinned(server, &token.ca_hash).await {
        Ok(channel) => channel,
        Err(err @ (TlsError::CaMismatch { .. } | TlsError::Address(_))) => return Err(JoinAttempt::Fatal(err.into())),
        Err(err) => return Err(JoinAttempt::Retry(err.to_string())),
    };
    let request = pb::JoinRequest {
        token: token.to_string(),
        node_name: node_name.to_owned(),
        csr_pem: csr_pem.to_owned(),
        node_id: rejoin_node_id.to_owned(),
        certificate_pem: rejoin_certificate.to_owned(),
    };
    match agent_client(channel).join(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if retryable(&status) => Err(JoinAttempt::Retry(status.message().to_owned())),
        Err(status) => Err(JoinAttempt::Fatal(AgentError::Refused(status.message().to_owned()))),
    }
}

/// The agent service's client, with the message size limit set explicitly on both
/// directions ([`pb::MAX_MESSAGE_BYTES`], as the control plane's server has).
fn agent_client(channel: tonic::transport::Channel) -> AgentServiceClient<tonic::transport::Channel> {
    AgentServiceClient::new(channel).max_decoding_message_size(pb::MAX_MESSAGE_BYTES).max_encoding_message_size(pb::MAX_MESSAGE_BYTES)
}

fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
            | tonic::Code::ResourceExhausted
    )
}

/// The wait a refusal asks for ("…; retry in N s"), if it names one.
fn retry_hint(message: &str) -> Option<Duration> {
    let (_, rest) = message.rsplit_once("retry in ")?;
    let seconds: u64 = rest.trim().strip_suffix('s')?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// Exponential backoff from 0.5 s to 30 s with ±20 % jitter, so that many agents
/// reconnecting after a control-plane restart do not arrive in lockstep.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = Duration::from_millis(500).saturating_mul(1u32 << self.attempt.min(6)).min(Duration::from_secs(30));
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Keeps a session open forever, reconnecting as needed; every session starts with a
/// Hello carrying the fingerprint `fingerprint` gives at that moment. Returns only when the control
/// plane refuses the node for good (removed, or its certificate is no longer valid).
pub async fn run_sessions(
    server: &str,
    mut identity: Identity,
    data_dir: &Path,
    fingerprint: &FingerprintSource,
    executor: &Executor,
) -> AgentError {
    let mut backoff = Backoff::default();
    loop {
        match session_once(server, &mut identity, data_dir, fingerprint, executor, &mut backoff).await {
            SessionEnd::Fatal(err) => return err,
            SessionEnd::Retry(reason) => {
                let wait = backoff.next_delay();
                tracing::warn!(server, error = %reason, retry_in = ?wait, "session lost; reconnecting");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

enum SessionEnd {
    Fatal(AgentError),
    Retry(String),
}

async fn session_once(
    server: &str,
    identity: &mut Identity,
    data_dir: &Path,
    fingerprint_source: &FingerprintSource,
    executor: &Executor,
    backoff: &mut Backoff,
) -> SessionEnd {
    // An expired certificate cannot get through TLS: retrying would never end.
    if let Some(expired_at) = certificate_expired(&identity.cert_pem, time::OffsetDateTime::now_utc()) {
        return SessionEnd::Fatal(AgentError::CertificateExpired { node: identity.node_name.clone(), expired_at: rfc3339(expired_at) });
    }
    let channel = match connect_mtls(server, &identity.ca_pem, &identity.cert_pem, &identity.key_pem).await {
        Ok(channel) => channel,
        Err(err @ TlsError::Pem { .. }) => return SessionEnd::Fatal(err.into()),
        Err(err) => return SessionEnd::Retry(err.to_string()),
    };
    let mut client = agent_client(channel);
    let mut fingerprint = fingerprint_source.fingerprint().await;
    fingerprint.volumes = executor.volume_report().await;
    let _ = executor.take_volumes_changed();
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(16);
    // Events are followed from before the first full list, so that nothing between the
    // two is missed; the watchers end with the session (the set aborts them when dropped).
    let (observed_tx, mut observed_rx) = mpsc::channel::<Observation>(1024);
    let mut watchers = tokio::task::JoinSet::new();
    for (_, driver) in executor.drivers() {
        watchers.spawn(watch_runtime(driver, identity.node_id.clone(), observed_tx.clone()));
    }
    drop(observed_tx);
    let mut tracker = Tracker::default();
    let listed = executor.observe().await;
    tracker.full(&listed);
    let hello = pb::Hello { fingerprint: Some((&fingerprint).into()), containers: wire_states(&listed, &identity.node_id) };
    // Fresh channel with room for 16: the hello always fits.
    let _ = tx.try_send(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) });
    let mut downstream = match client.session(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return end_for(status),
    };
    let interval = match downstream.message().await {
        Ok(Some(pb::ControlMessage { body: Some(pb::control_message::Body::Welcome(welcome)) })) => {
            Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)))
        }
        Ok(_) => return SessionEnd::Retry("session opened without a welcome".into()),
        Err(status) => return end_for(status),
    };
    backoff.reset();
    let runtimes: Vec<&str> = fingerprint.available_runtimes().iter().map(|r| r.name()).collect();
    tracing::info!(node_id = %identity.node_id, heartbeat = ?interval, runtimes = ?runtimes, "session open");

    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC_INTERVAL, RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the changes queued so far are sent (a short while after the first of them).
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut sequence = 0u64;
    let mut renew_at = renewal_time(&identity.cert_pem);
    // A renewal runs beside the loop, so that heartbeats go on while it is under way.
    let mut renewal: Option<tokio::task::JoinHandle<Result<String, String>>> = None;
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                flush_at = None;
                sequence += 1;
                let mut beat = delta_heartbeat(sequence, tracker.take_delta(), &identity.node_id);
                if executor.take_volumes_changed() {
                    beat.volumes = diplo_api::fingerprint::volumes_to_wire(&executor.volume_report().await);
                }
                if !send_heartbeat(&tx, beat).await {
                    return SessionEnd::Retry("session stream closed".into());
                }
            }
            _ = resync.tick() => {
                // What is already queued is older than the list: it goes first, the list supersedes it.
                while let Ok(observation) = observed_rx.try_recv() {
                    tracker.observe(observation);
                }
                let listed = executor.observe().await;
                tracker.full(&listed);
                flush_at = None;
                sequence += 1;
                let _ = executor.take_volumes_changed();
                let volumes = diplo_api::fingerprint::volumes_to_wire(&executor.volume_report().await);
                let beat = pb::Heartbeat { sequence, containers: wire_states(&listed, &identity.node_id), full: true, volumes, ..Default::default() };
                if !send_heartbeat(&tx, beat).await {
                    return SessionEnd::Retry("session stream closed".into());
                }
            }
            Some(observation) = observed_rx.recv() => {
                tracker.observe(observation);
                flush_at.get_or_insert_with(|| tokio::time::Instant::now() + COALESCE);
            }
            () = sleep_until_some(flush_at) => {
                flush_at = None;
                let changes = tracker.take_delta();
                if !changes.is_empty() {
                    sequence += 1;
                    if !send_heartbeat(&tx, delta_heartbeat(sequence, changes, &identity.node_id)).await {
                        return SessionEnd::Retry("session stream closed".into());
                    }
                }
            }
            _ = tokio::time::sleep_until(renew_at), if renewal.is_none() => {
                renewal = Some(tokio::spawn(request_certificate(client.clone(), identity.node_name.clone(), identity.key_pem.clone())));
            }
            Some(outcome) = futures::future::OptionFuture::from(renewal.as_mut()) => {
                renewal = None;
                let saved = match outcome {
                    Ok(Ok(cert_pem)) => identity.save_certificate(data_dir, cert_pem).map_err(|e| e.to_string()),
                    Ok(Err(reason)) => Err(reason),
                    Err(err) => Err(format!("renewal task failed: {err}")),
                };
                match saved {
                    Ok(()) => {
                        tracing::info!(node_id = %identity.node_id, "node certificate renewed");
                        renew_at = renewal_time(&identity.cert_pem).max(tokio::time::Instant::now() + MIN_RENEWAL_INTERVAL);
                    }
                    Err(reason) => {
                        tracing::warn!(error = %reason, "certificate renewal failed; retrying in 30 s");
                        renew_at = tokio::time::Instant::now() + Duration::from_secs(30);
                    }
                }
            }
            message = downstream.message() => match message {
                Ok(Some(pb::ControlMessage { body: Some(pb::control_message::Body::Command(command)) })) => {
                    spawn_command(command, executor.clone(), client.clone(), tx.clone(), identity.node_id.clone());
                }
                Ok(Some(pb::ControlMessage { body: Some(pb::control_message::Body::Registry(settings)) })) => {
                    apply_registry_settings(executor.registry(), settings);
                }
                Ok(Some(message)) => tracing::debug!(?message, "control message ignored"),
                Ok(None) => return SessionEnd::Retry("the control plane closed the session".into()),
                Err(status) => return end_for(status),
            },
        }
    }
}

/// Takes the registry settings the control plane sent: every later pull uses them. Bad
/// settings are logged (without secrets) and the previous ones kept.
fn apply_registry_settings(registry: &crate::registry::SharedRegistry, settings: pb::RegistrySettings) {
    match diplo_api::registry::RegistryConfig::from_settings(settings) {
        Ok(config) => {
            tracing::info!(registry = ?config, "registry settings received");
            registry.apply(config);
        }
        Err(err) => tracing::warn!(error = %err, "registry settings refused"),
    }
}

/// Wire states of containers of node `node_id`.
fn wire_states(
    containers: &[(diplo_api::runtime::Runtime, diplo_api::container::ContainerInfo)],
    node_id: &str,
) -> Vec<pb::ContainerState> {
    containers.iter().map(|(runtime, info)| container_state(info, node_id, *runtime)).collect()
}

/// A heartbeat carrying `changes` (none: an idle heartbeat, with no container at all).
fn delta_heartbeat(sequence: u64, changes: Delta, node_id: &str) -> pb::Heartbeat {
    pb::Heartbeat {
        sequence,
        containers: wire_states(&changes.upserted, node_id),
        removed: changes.removed.iter().map(|(runtime, id)| removed_container(*runtime, id)).collect(),
        full: false,
        runtimes: Vec::new(),
        volumes: Vec::new(),
    }
}

/// Sends a heartbeat up the session; `false` when the session is closed.
async fn send_heartbeat(tx: &mpsc::Sender<pb::AgentMessage>, beat: pb::Heartbeat) -> bool {
    tracing::debug!(
        sequence = beat.sequence,
        full = beat.full,
        containers = beat.containers.len(),
        removed = beat.removed.len(),
        bytes = prost::Message::encoded_len(&beat),
        "heartbeat"
    );
    tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Heartbeat(beat)) }).await.is_ok()
}

/// Waits until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs a command in the background and sends its result up the session; a followed
/// log is acknowledged first, then streamed over a separate `StreamOutput` call.
fn spawn_command(
    command: pb::Command,
    executor: Executor,
    client: AgentServiceClient<tonic::transport::Channel>,
    session: mpsc::Sender<pb::AgentMessage>,
    node_id: String,
) {
    tokio::spawn(async move {
        let request_id = command.request_id.clone();
        let runtime_kind = command.runtime;
        let command = match AgentCommand::try_from(command) {
            Ok(command) => command,
            Err(err) => {
                let result = pb::CommandResult {
                    request_id,
                    ok: false,
                    error_code: "INVALID_ARGUMENT".into(),
                    error_message: err.to_string(),
                    ..Default::default()
                };
                let _ = session.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Result(result)) }).await;
                tracing::warn!(runtime = runtime_kind, error = %err, "invalid command refused");
                return;
            }
        };
        let span = tracing::info_span!("command", otel.name = %format!("command.{}", command.op.kind()), request_id = %command.request_id, runtime = %command.runtime, op = command.op.kind());
        if let Some(traceparent) = &command.traceparent {
            diplo_api::telemetry::continue_trace(&span, traceparent);
        }
        run_command(command, executor, client, session, node_id).instrument(span).await;
    });
}

/// Runs one valid command (inside its `command` span) and answers it.
async fn run_command(
    command: AgentCommand,
    executor: Executor,
    client: AgentServiceClient<tonic::transport::Channel>,
    session: mpsc::Sender<pb::AgentMessage>,
    node_id: String,
) {
    tracing::info!("command");
    if matches!(command.op, CommandOp::Build(_) | CommandOp::CancelBuild(_)) {
        build_command(command, &executor, client, session, node_id).await;
        return;
    }
    if let CommandOp::Logs { id, options } = &command.op
        && options.follow
    {
        let stream = executor.follow_logs(command.runtime, id.clone(), *options).await;
        let ack: CommandOutcome = stream.as_ref().map(|_| CommandOutput::default()).map_err(Clone::clone);
        let result = command_result(&command.request_id, &node_id, command.runtime, &ack);
        let _ = session.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Result(result)) }).await;
        if let Ok(stream) = stream {
            forward_output(client, command.request_id.clone(), stream).await;
        }
        return;
    }
    let outcome = executor.execute(command.clone()).await;
    if let Err(err) = &outcome {
        tracing::warn!(request_id = %command.request_id, error = %err.message, "command failed");
    }
    let result = command_result(&command.request_id, &node_id, command.runtime, &outcome);
    let _ = session.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Result(result)) }).await;
}

/// A build command: a build is acknowledged at once (or refused), its output streamed
/// like a followed log, and its report sent up the session before that output ends; a
/// cancellation is answered at once.
async fn build_command(
    command: AgentCommand,
    executor: &Executor,
    client: AgentServiceClient<tonic::transport::Channel>,
    session: mpsc::Sender<pb::AgentMessage>,
    node_id: String,
) {
    use diplo_api::command::{CommandError, CommandErrorCode};
    let builds = executor
        .builds()
        .cloned()
        .ok_or_else(|| CommandError { code: CommandErrorCode::FailedPrecondition, message: "this node runs no builds".into() });
    // The report never overtakes the acknowledgement, however fast the build fails.
    let (acked, ack_sent) = tokio::sync::oneshot::channel::<()>();
    let (outcome, output) = match (command.op, builds) {
        (_, Err(refused)) => (Err(refused), None),
        (CommandOp::Build(spec), Ok(builds)) => {
            let reports = session.clone();
            let on_report: crate::build::OnReport = Box::new(move |report| {
                Box::pin(async move {
                    let _ = ack_sent.await;
                    let message = pb::AgentMessage { body: Some(pb::agent_message::Body::BuildReport(pb::BuildReport::from(&report))) };
                    if reports.send(message).await.is_err() {
                        tracing::warn!(build = %report.build_id, "session closed before the build report could be sent");
                    }
                })
            });
            match builds.start(*spec, executor.registry().current(), on_report) {
                Ok(stream) => (Ok(CommandOutput::default()), Some(stream)),
                Err(refused) => (Err(refused), None),
            }
        }
        (CommandOp::CancelBuild(id), Ok(builds)) => (builds.cancel(&id).map(|()| CommandOutput::default()), None),
        (_, Ok(_)) => return,
    };
    if let Err(err) = &outcome {
        tracing::warn!(request_id = %command.request_id, error = %err.message, "build command refused");
    }
    let result = command_result(&command.request_id, &node_id, command.runtime, &outcome);
    let _ = session.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Result(result)) }).await;
    let _ = acked.send(());
    if let Some(stream) = output {
        forward_output(client, command.request_id.clone(), stream).await;
    }
}

/// Streams a command's output to the control plane until either side stops. The
/// stream always ends with an explicit end-of-output chunk, after a note on stderr
/// when the runtime's stream failed; when the control plane stops reading (its reader
/// went away), the runtime's stream is dropped at once, even while it is idle.
fn forward_output(
    mut client: AgentServiceClient<tonic::transport::Channel>,
    request_id: String,
    stream: crate::runtime::RuntimeStream<diplo_api::container::LogChunk>,
) -> futures::future::BoxFuture<'static, ()> {
    let (tx, rx) = mpsc::channel::<pb::OutputChunk>(16);
    tokio::spawn(async move {
        let mut stream = stream;
        let chunk =
            |stream: &str, data: Vec<u8>, eof: bool| pb::OutputChunk { request_id: request_id.clone(), stream: stream.into(), data, eof };
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = tx.closed() => return,
            };
            let message = match next {
                Some(Ok(item)) => {
                    let stream_name = match item.stream {
                        OutputStream::Stdout => "stdout",
                        OutputStream::Stderr => "stderr",
                    };
                    chunk(stream_name, item.data, false)
                }
                Some(Err(err)) => {
                    tracing::warn!(request_id = %request_id, error = %err, "output stream failed");
                    let note = format!("\n[output ended: {err}]\n").into_bytes();
                    if tx.send(chunk("stderr", note, false)).await.is_err() {
                        return;
                    }
                    break;
                }
                None => break,
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
        let _ = tx.send(chunk("stdout", Vec::new(), true)).await;
    });
    Box::pin(async move {
        if let Err(status) = client.stream_output(ReceiverStream::new(rx)).await {
            tracing::debug!(error = %status, "output stream ended");
        }
    })
}

/// When to renew a certificate: at two thirds of its lifetime (now if unreadable).
fn renewal_time(cert_pem: &str) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let Ok(not_after) = diplo_api::pki::not_after_pem(cert_pem) else { return now };
    let Ok(not_before) = diplo_api::pki::not_before_pem(cert_pem) else { return now };
    let remaining = (renewal_at(not_before, not_after) - time::OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
    now + remaining
}

/// Two thirds into a certificate's lifetime. The lifetime counts from its issuance,
/// not from `not_before`, which the control plane backdates by
/// [`diplo_api::pki::CLOCK_SKEW_ALLOWANCE`]: counted from `not_before`, a 2-minute
/// certificate (valid 7 minutes) would be due for renewal before it was issued.
fn renewal_at(not_before: time::OffsetDateTime, not_after: time::OffsetDateTime) -> time::OffsetDateTime {
    let backdate = time::Duration::try_from(diplo_api::pki::CLOCK_SKEW_ALLOWANCE).unwrap_or(time::Duration::ZERO);
    // A certificate valid for less than the allowance was not backdated (not by us).
    let issued = if not_before + backdate < not_after { not_before + backdate } else { not_before };
    issued + (not_after - issued) * 2 / 3
}

/// The shortest wait between two renewals, so that a certificate that is due again at
/// once (a lifetime shorter than the control plane's clock skew) cannot cause a loop.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(10);

/// How long a renewal may take before it is given up (and retried later).
const RENEWAL_TIMEOUT: Duration = Duration::from_secs(20);

/// A new certificate for the node's key (the key stays the same: only a new CSR for it
/// is sent), over the session's connection.
async fn request_certificate(
    mut client: AgentServiceClient<tonic::transport::Channel>,
    node_name: String,
    key_pem: String,
) -> Result<String, String> {
    let csr_pem = diplo_api::pki::csr_for_key(&node_name, &key_pem).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(RENEWAL_TIMEOUT, client.renew_certificate(pb::RenewCertificateRequest { csr_pem }))
        .await
        .map_err(|_| format!("no answer within {RENEWAL_TIMEOUT:?}"))?
        .map_err(|status| status.message().to_owned())?;
    Ok(response.into_inner().certificate_pem)
}

fn end_for(status: tonic::Status) -> SessionEnd {
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => SessionEnd::Fatal(AgentError::Refused(format!(
            "{} (if this node was removed, delete its data directory and join again with a new token)",
            status.message()
        ))),
        _ => SessionEnd::Retry(format!("{}: {}", status.code(), status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build command through the session's command path: refused at once when the
    /// node cannot run it, else acknowledged, then its report sent up the session.
    #[tokio::test]
    async fn build_commands_are_acknowledged_then_reported_on_the_session() {
        use diplo_api::build::{BuildSpec, BuildStatus, Builder, Buildpack};
        use diplo_api::runtime::Runtime;
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = crate::build::BuildConfig::new(dir.path().join("builds"), "/nonexistent/d.sock".into(), "/nonexistent/p.sock".into());
        let builds = crate::build::Builds::new(config, vec![Builder::Docker]);
        let executor = Executor::default().with_builds(builds);
        // Output goes nowhere: the build goes on and still reports.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let client = agent_client(channel);
        let spec = |id: &str, repo: &str, builder| BuildSpec {
            build_id: id.into(),
            git_repo: repo.into(),
            git_branch: None,
            builder,
            image: "127.0.0.1:5000/x:1".into(),
            push: false,
            buildpack: Buildpack::Detect,
            language: None,
            base_images: Default::default(),
            timeout: Duration::from_secs(60),
        };
        let command = |request_id: &str, op| {
            pb::Command::from(&AgentCommand { request_id: request_id.into(), runtime: Runtime::Docker, op, traceparent: None })
        };
        let (tx, mut rx) = mpsc::channel(16);
        let result = |message: Option<pb::AgentMessage>| match message.and_then(|m| m.body) {
            Some(pb::agent_message::Body::Result(result)) => result,
            other => panic!("expected a command result, got {other:?}"),
        };

        for (op, code) in [
            (CommandOp::Build(Box::new(spec("b1", "https://h/x.git", Builder::Buildah))), "FAILED_PRECONDITION"),
            (CommandOp::Build(Box::new(spec("b2", "file:///srv/x", Builder::Docker))), "PERMISSION_DENIED"),
            (CommandOp::CancelBuild("nothing".into()), "NOT_FOUND"),
        ] {
            spawn_command(command("r-refused", op), executor.clone(), client.clone(), tx.clone(), "n1".into());
            let refused = result(rx.recv().await);
            assert_eq!((refused.ok, refused.error_code.as_str()), (false, code), "{refused:?}");
        }

        spawn_command(
            command("r-build", CommandOp::Build(Box::new(spec("b3", "https://127.0.0.1:9/x.git", Builder::Docker)))),
            executor.clone(),
            client.clone(),
            tx.clone(),
            "n1".into(),
        );
        let ack = result(rx.recv().await);
        assert!(ack.ok && ack.request_id == "r-build", "{ack:?}");
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("a report in time").and_then(|m| m.body) {
            Some(pb::agent_message::Body::BuildReport(report)) => {
                assert_eq!((report.build_id.as_str(), report.status.as_str()), ("b3", BuildStatus::Failed.as_str()));
                assert!(report.error.contains("127.0.0.1"), "git's message: {}", report.error);
            }
            other => panic!("expected the build report, got {other:?}"),
        }
        let no_builds = Executor::default();
        spawn_command(command("r-none", CommandOp::CancelBuild("b3".into())), no_builds, client, tx, "n1".into());
        assert_eq!(result(rx.recv().await).error_code, "FAILED_PRECONDITION");
    }

    #[test]
    fn an_expired_certificate_stops_the_agent_or_rejoins_with_a_token() {
        let ca = diplo_api::pki::CertificateAuthority::generate("t").expect("CA");
        let (_key, csr) = diplo_api::pki::generate_csr("pi").expect("CSR");
        let (cert, _) = ca.sign_node_csr(&csr, "id-1", "pi", Duration::from_secs(3600)).expect("certificate");
        let now = time::OffsetDateTime::now_utc();
        let later = now + time::Duration::hours(2);
        assert_eq!(certificate_expired(&cert, now), None);
        let expired_at = certificate_expired(&cert, later).expect("expired two hours on");
        assert!(expired_at > now && expired_at <= later);
        assert_eq!(start_action(None, true, now), Start::Join);
        assert_eq!(start_action(None, false, now), Start::Join);
        assert_eq!(start_action(Some(&cert), false, now), Start::Saved);
        assert_eq!(start_action(Some(&cert), true, now), Start::Saved, "a valid identity ignores the token");
        assert_eq!(start_action(Some(&cert), true, later), Start::Rejoin);
        assert_eq!(start_action(Some(&cert), false, later), Start::Expired(expired_at));
        let message = AgentError::CertificateExpired { node: "pi".into(), expired_at: rfc3339(expired_at) }.to_string();
        for hint in ["diplo join-token create", "diplo-agent --token", "same node"] {
            assert!(message.contains(hint), "{message}");
        }
    }

    #[test]
    fn rate_limited_joins_are_retried_after_the_hinted_wait() {
        let status = tonic::Status::resource_exhausted("too many join attempts from 10.0.0.1; retry in 6 s");
        assert!(retryable(&status));
        assert_eq!(retry_hint(status.message()), Some(Duration::from_secs(6)));
        assert_eq!(retry_hint("join token abc was revoked"), None);
        assert!(!retryable(&tonic::Status::unauthenticated("join token abc was revoked")));
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime_counted_from_issuance() {
        let issued = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("timestamp");
        let backdate = time::Duration::try_from(diplo_api::pki::CLOCK_SKEW_ALLOWANCE).expect("allowance");
        // As the control plane issues them: not_before backdated, not_after = issued + lifetime.
        for (lifetime, expected) in
            [(time::Duration::minutes(2), time::Duration::seconds(80)), (time::Duration::hours(24), time::Duration::hours(16))]
        {
            assert_eq!(renewal_at(issued - backdate, issued + lifetime), issued + expected, "{lifetime}");
        }
        // Not backdated (shorter than the allowance): counted from not_before.
        assert_eq!(renewal_at(issued, issued + time::Duration::minutes(3)), issued + time::Duration::minutes(2));
    }

    #[test]
    fn a_freshly_issued_short_certificate_is_not_due_at_once() {
        let ca = diplo_api::pki::CertificateAuthority::generate("test").expect("CA");
        let (_key, csr) = diplo_api::pki::generate_csr("n1").expect("CSR");
        let (cert, _) = ca.sign_node_csr(&csr, "id-1", "n1", Duration::from_secs(120)).expect("signed");
        let wait = renewal_time(&cert).saturating_duration_since(tokio::time::Instant::now());
        assert!(wait > Duration::from_secs(70) && wait <= Duration::from_secs(80), "{wait:?}");
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_a_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600), "{first:?}");
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(36));
        }
        assert!(backoff.next_delay() >= Duration::from_secs(24));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(600));
    }
}
