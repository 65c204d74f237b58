//! What the control plane does with bytes from an agent or from a REST client, for the
//! fuzz targets in `fuzz_targets/`: decode, then the control plane's own functions (the
//! session handler's [`session_event`], the output stream's [`log_chunk`], the join's
//! [`check_join_request`], the REST handlers' body parsing in `http::fuzz`), never a copy
//! of them; then what must hold of whatever they accepted (and, where the result is
//! stored or sent on, that it survives that). None of them may panic, whatever the input.

use std::sync::OnceLock;
use std::time::Duration;

use diplo_api::fingerprint::Fingerprint;
use diplo_api::pb::{self, agent_message::Body};
use diplo_api::pki::CertificateAuthority;
use diplo_api::token::{ApiToken, JoinToken};
use diplo_api::wire::{ReportedContainer, container_info, container_state};
use diplo_control_plane::grpc::{SessionEvent, log_chunk, session_event};
use diplo_control_plane::http::fuzz as rest;
use diplo_control_plane::model::DeploymentSpec;
use diplo_control_plane::service::{check_join_request, foreign_claim};
use prost::Message;

/// The node id certificates are issued for.
const NODE_ID: &str = "0b7f6c1e-fuzz-4e5a-9d1c-000000000001";

/// A CA generated once per process, standing for the cluster's.
fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("fuzz").expect("a CA can be generated"))
}

/// `AgentService.Session` messages (hello, heartbeats, command results, build reports)
/// through the session handler's own decode and check ([`session_event`]), then the
/// node authorizer's rule on the containers a report claims ([`foreign_claim`]), and
/// what must hold of whatever was accepted.
pub fn agent_message(data: &[u8]) {
    let Ok(message) = pb::AgentMessage::decode(data) else { return };
    let full_heartbeat = matches!(&message.body, Some(Body::Heartbeat(beat)) if beat.full);
    let Ok(Some(event)) = session_event(message) else { return };
    match event {
        SessionEvent::Hello { fingerprint, containers } => {
            node_fingerprint(fingerprint);
            report(&containers);
        }
        SessionEvent::Heartbeat { report: checked, .. } => {
            assert!(!full_heartbeat || checked.removed.is_empty(), "a full report removes nothing");
            assert_eq!(checked.full, full_heartbeat);
            report(&checked.upserted);
        }
        SessionEvent::Result { request_id, outcome } => {
            let _ = format!("{request_id:?} {outcome:?}");
        }
        SessionEvent::BuildReport(report) => build_report(report),
    }
}

/// A build's end as the session accepted it: it ends the build, and it stays the same
/// through the wire again (the control plane stores it and may pass it on).
fn build_report(report: diplo_api::build::BuildReport) {
    assert!(report.status.is_final(), "a report that does not end a build was accepted");
    let again = diplo_api::build::BuildReport::try_from(pb::BuildReport::from(&report)).expect("an accepted report converts again");
    assert_eq!(again, report, "a checked report changed through the wire");
}

/// A hello's fingerprint becomes the node's, is stored as JSON (`nodes.fingerprint`) and
/// read back, drives placement, and is sent to operators.
fn node_fingerprint(fingerprint: Fingerprint) {
    let _ = (fingerprint.available_runtimes(), fingerprint.platform(), fingerprint.preferred_runtime());
    let json = serde_json::to_string(&fingerprint).expect("a fingerprint serializes to JSON");
    let stored: Fingerprint = serde_json::from_str(&json).expect("a stored fingerprint reads back");
    assert_eq!(stored, fingerprint, "the fingerprint changed through the store");
    let _ = pb::NodeFingerprint::from(&fingerprint).encode_to_vec();
}

/// Accepted containers: the node authorizer's rule (a node that claims none of them
/// for another node passes it, whichever node it is), and the wire form they are shown
/// in again, which converts back to what was read.
fn report(containers: &[ReportedContainer]) {
    if let Some(other) = foreign_claim(NODE_ID, containers) {
        assert_ne!(other, NODE_ID);
        assert!(!other.is_empty());
    }
    for container in containers {
        let claimed: Vec<&str> = container.claimed_nodes().filter(|id| !id.is_empty()).collect();
        if let Some(first) = claimed.first() {
            assert_eq!(foreign_claim(first, std::slice::from_ref(container)), claimed.iter().copied().find(|id| id != first));
        }
        let (info, node_id, runtime) = (&container.info, &container.node_id, container.runtime);
        let (again, again_node, again_runtime) = container_info(container_state(info, node_id, runtime));
        assert_eq!((&again, &again_node, again_runtime), (info, node_id, Some(runtime)));
    }
}

/// `AgentService.Join`: the token, the node name, and (for a valid name) the CSR signed
/// by the cluster CA.
pub fn join_request(data: &[u8]) {
    let Ok(request) = pb::JoinRequest::decode(data) else { return };
    // The join's own checks that need no store, then what it does with an accepted token
    // (it looks up the hash of its secret) and name (the CSR is signed for it).
    let Ok(token) = check_join_request(&request.token, &request.node_name) else { return };
    let printed = token.to_string();
    let reparsed: JoinToken = printed.parse().expect("a printed join token parses");
    assert_eq!(reparsed.to_string(), printed);
    let _ = diplo_api::token::hash_secret(&token.secret);
    sign(&request.csr_pem, &request.node_name);
}

/// `AgentService.RenewCertificate`: the CSR, signed for an existing node.
pub fn renew_certificate(data: &[u8]) {
    let Ok(request) = pb::RenewCertificateRequest::decode(data) else { return };
    sign(&request.csr_pem, "node-1");
}

/// Signs a CSR as the control plane does; a certificate it issues must be readable by
/// the agent (validity) and carry the node's identity.
fn sign(csr_pem: &str, node_name: &str) {
    let Ok((cert_pem, expires)) = ca().sign_node_csr(csr_pem, NODE_ID, node_name, Duration::from_secs(24 * 3600)) else {
        return;
    };
    let not_after = diplo_api::pki::not_after_pem(&cert_pem).expect("an issued certificate has a validity");
    assert_eq!(not_after.unix_timestamp(), expires.unix_timestamp());
    diplo_api::pki::not_before_pem(&cert_pem).expect("an issued certificate has a validity");
    diplo_api::pki::fingerprint_pem(&cert_pem).expect("an issued certificate is PEM");
}

/// `AgentService.StreamOutput` chunks, as forwarded to the reader.
pub fn output_chunk(data: &[u8]) {
    let Ok(chunk) = pb::OutputChunk::decode(data) else { return };
    let (eof, length) = (chunk.eof, chunk.data.len());
    match log_chunk(chunk) {
        Some(forwarded) => assert!(!eof && forwarded.data.len() == length, "a chunk is forwarded whole"),
        None => assert!(eof, "only the end-of-output mark is not forwarded"),
    }
}

/// `POST /api/v1/containers`, and (the same bytes) as a bearer token.
pub fn rest_create_container(data: &[u8]) {
    let _ = rest::create_container(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.trim().parse::<ApiToken>();
    }
}

/// `POST /api/unified/deploy` and `PUT /api/v1/deployments/web`; an accepted spec is
/// stored as JSON (`deployments.spec`) and read back.
pub fn rest_deploy(data: &[u8]) {
    if let Ok(spec) = rest::deploy(data) {
        let json = serde_json::to_string(&spec).expect("a deployment spec serializes to JSON");
        let stored: DeploymentSpec = serde_json::from_str(&json).expect("a stored deployment spec reads back");
        assert_eq!(stored, spec, "the deployment spec changed through the store");
    }
    let _ = rest::update_deployment("web", data);
}

/// `POST /api/v1/deployments/{name}/scale` and `POST /api/v1/containers/{id}/exec`.
pub fn rest_scale_exec(data: &[u8]) {
    let _ = rest::scale(data);
    let _ = rest::exec(data);
}
