//! Conversions between domain types and wire types, and service errors to gRPC status.

use chrono::{DateTime, Utc};
use diplo_api::pb;

use crate::error::ServiceError;
use crate::model::{ApiTokenRecord, JoinTokenRecord, NodeRecord, NodeStatus, SessionMessage};
use crate::service::ClusterStatus;

/// Maps a service error to the gRPC status with the same meaning (the code is
/// [`ServiceError::grpc_code`], which REST's problem documents name too).
pub fn status_from(err: ServiceError) -> tonic::Status {
    tonic::Status::new(err.grpc_code(), err.to_string())
}

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

pub fn node_status(status: NodeStatus) -> pb::NodeStatus {
    match status {
        NodeStatus::Ready => pb::NodeStatus::Ready,
        NodeStatus::Unhealthy => pb::NodeStatus::Unhealthy,
        NodeStatus::Down => pb::NodeStatus::Down,
    }
}

pub fn node(record: &NodeRecord) -> pb::Node {
    let fingerprint = pb::NodeFingerprint::from(&record.fingerprint);
    pb::Node {
        id: record.id.clone(),
        name: record.name.clone(),
        status: node_status(record.status) as i32,
        fingerprint: Some(fingerprint),
        cordoned: record.cordoned,
        joined_at: Some(timestamp(record.joined_at)),
        last_seen_at: Some(timestamp(record.last_seen_at)),
        address: record.address.clone(),
        labels: record.labels.clone().into_iter().collect(),
    }
}

pub fn cluster_status(status: &ClusterStatus) -> pb::ClusterStatus {
    pb::ClusterStatus {
        nodes_total: u32::try_from(status.nodes.len()).unwrap_or(u32::MAX),
        nodes_ready: status.count(NodeStatus::Ready),
        nodes_unhealthy: status.count(NodeStatus::Unhealthy),
        nodes_down: status.count(NodeStatus::Down),
        instances_total: status.instances_total,
        instances_running: status.instances_running,
        available_runtimes: status.available_runtimes.iter().map(|r| pb::RuntimeKind::from(*r) as i32).collect(),
        timestamp: Some(timestamp(Utc::now())),
    }
}

pub fn join_token(record: &JoinTokenRecord) -> pb::JoinTokenInfo {
    pb::JoinTokenInfo {
        id: record.id.clone(),
        created_at: Some(timestamp(record.created_at)),
        expires_at: Some(timestamp(record.expires_at)),
        single_use: record.single_use,
        uses: record.uses,
        revoked: record.revoked,
        labels: record.labels.clone().into_iter().collect(),
    }
}

/// An API token as listed: never its secret nor the secret's hash.
pub fn api_token(record: &ApiTokenRecord) -> pb::ApiTokenInfo {
    pb::ApiTokenInfo {
        id: record.id.clone(),
        name: record.name.clone(),
        role: record.role.to_string(),
        created_at: Some(timestamp(record.created_at)),
        expires_at: record.expires_at.map(timestamp),
        revoked: record.revoked,
    }
}

pub fn session_message(message: SessionMessage) -> pb::ControlMessage {
    let body = match message {
        SessionMessage::Welcome { node_id, heartbeat_interval } => pb::control_message::Body::Welcome(pb::Welcome {
            node_id,
            heartbeat_interval_ms: u32::try_from(heartbeat_interval.as_millis()).unwrap_or(u32::MAX),
        }),
        SessionMessage::Command(command) => pb::control_message::Body::Command(command.as_ref().into()),
        SessionMessage::Registry(config) => pb::control_message::Body::Registry(config.to_settings()),
    };
    pb::ControlMessage { body: Some(body) }
}
