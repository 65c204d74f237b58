//! gRPC adapter: TLS server, reflection (v1 and v1alpha), health, and thin service
//! implementations that turn wire types into domain calls on [`ControlPlane`].

mod agent;
mod auth;
mod builds;
mod cluster;
mod container_ops;
mod containers;
pub(crate) mod convert;
mod deployments;
mod incoming;
mod node_resources;
mod observe;
mod registries;
mod stacks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use diplo_api::pb::agent_service_server::AgentServiceServer;
use diplo_api::pb::build_service_server::BuildServiceServer;
use diplo_api::pb::cluster_service_server::ClusterServiceServer;
use diplo_api::pb::container_ops_service_server::ContainerOpsServiceServer;
use diplo_api::pb::container_service_server::ContainerServiceServer;
use diplo_api::pb::deployment_service_server::DeploymentServiceServer;
use diplo_api::pb::event_service_server::EventServiceServer;
use diplo_api::pb::node_resource_service_server::NodeResourceServiceServer;
use diplo_api::pb::registry_service_server::RegistryServiceServer;
use diplo_api::pb::stack_service_server::StackServiceServer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::service::ControlPlane;

pub use agent::{SessionEvent, log_chunk, session_event};
pub use convert::status_from;

/// Errors while starting the gRPC server.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServeError {
    /// TLS, bind or serve failure.
    #[error("gRPC server on {addr}: {source}")]
    Transport {
        /// Listen address.
        addr: SocketAddr,
        /// Transport error.
        source: tonic::transport::Error,
    },
    /// Reflection service could not be built from the descriptor sets.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A Diplo service with its message size limit set explicitly in both directions
/// ([`diplo_api::pb::MAX_MESSAGE_BYTES`], as every Diplo client has).
macro_rules! limited {
    ($server:expr) => {
        $server.max_decoding_message_size(diplo_api::pb::MAX_MESSAGE_BYTES).max_encoding_message_size(diplo_api::pb::MAX_MESSAGE_BYTES)
    };
}

/// Serves gRPC over TLS on `listener` until `shutdown` resolves. Client certificates
/// are optional at the handshake (so that `Join` works without one) but, when
/// presented, must chain to the cluster CA; each RPC then checks who is calling.
/// Reflection needs a credential too (any role); only `AgentService.Join` and
/// `grpc.health.v1` are open.
///
/// At most [`crate::config::Config::max_connections`] connections are open at once
/// (the ones beyond are closed as soon as they are accepted), a TLS handshake must be
/// over within [`incoming::HANDSHAKE_TIMEOUT`], and TCP keepalive finds dead peers.
pub async fn serve(
    control_plane: Arc<ControlPlane>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcServeError> {
    let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let pki = control_plane.pki();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&pki.server_chain_pem, &pki.server_key_pem))
        .client_ca_root(Certificate::from_pem(pki.ca.cert_pem()))
        .client_auth_optional(true)
        .timeout(incoming::HANDSHAKE_TIMEOUT);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AgentServiceServer<agent::AgentApi>>().await;
    health_reporter.set_serving::<ClusterServiceServer<cluster::ClusterApi>>().await;
    health_reporter.set_serving::<ContainerServiceServer<containers::ContainerApi>>().await;
    health_reporter.set_serving::<DeploymentServiceServer<deployments::DeploymentApi>>().await;
    health_reporter.set_serving::<EventServiceServer<deployments::DeploymentApi>>().await;
    health_reporter.set_serving::<BuildServiceServer<builds::BuildApi>>().await;
    health_reporter.set_serving::<NodeResourceServiceServer<node_resources::NodeResourceApi>>().await;
    health_reporter.set_serving::<ContainerOpsServiceServer<container_ops::ContainerOpsApi>>().await;

    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(diplo_api::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let require_credential = auth::RequireCredential::new(control_plane.clone());
    let reflection_v1 =
        InterceptedService::new(reflection(tonic_reflection::server::Builder::configure()).build_v1()?, require_credential.clone());
    let reflection_v1alpha =
        InterceptedService::new(reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?, require_credential);

    let max_connections = control_plane.config().max_connections;
    let incoming = incoming::limited(listener, max_connections);
    tracing::info!(%addr, max_connections, "gRPC (TLS) listening");
    Server::builder()
        .tls_config(tls)
        .map_err(|source| GrpcServeError::Transport { addr, source })?
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(observe::ObserveLayer::new(control_plane.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(limited!(AgentServiceServer::new(agent::AgentApi::new(control_plane.clone()))))
        .add_service(limited!(ClusterServiceServer::new(cluster::ClusterApi::new(control_plane.clone()))))
        .add_service(limited!(ContainerServiceServer::new(containers::ContainerApi::new(control_plane.clone()))))
        .add_service(limited!(DeploymentServiceServer::new(deployments::DeploymentApi::new(control_plane.clone()))))
        .add_service(limited!(BuildServiceServer::new(builds::BuildApi::new(control_plane.clone()))))
        .add_service(limited!(RegistryServiceServer::new(registries::RegistryApi::new(control_plane.clone()))))
        .add_service(limited!(StackServiceServer::new(stacks::StackApi::new(control_plane.clone()))))
        .add_service(limited!(NodeResourceServiceServer::new(node_resources::NodeResourceApi::new(control_plane.clone()))))
        .add_service(limited!(ContainerOpsServiceServer::new(container_ops::ContainerOpsApi::new(control_plane.clone()))))
        .add_service(limited!(EventServiceServer::new(deployments::DeploymentApi::new(control_plane))))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|source| GrpcServeError::Transport { addr, source })
}
