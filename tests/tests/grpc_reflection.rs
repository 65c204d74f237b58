//! The gRPC endpoint as grpcurl and operators meet it: reflection (v1 and v1alpha) and
//! health over mutual TLS with the admin credentials; client certificates from another
//! CA are refused; without a certificate, a bearer token is required — for reflection
//! too; health alone is open.

use std::time::Duration;

use diplo_api::pb::ListNodesRequest;
use diplo_api::pb::cluster_service_client::ClusterServiceClient;
use diplo_tests::{ControlPlane, ControlPlaneOptions};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const EXPECTED_SERVICES: [&str; 3] = ["diplo.v1.AgentService", "diplo.v1.ClusterService", "grpc.health.v1.Health"];

/// A TLS channel to the control plane, verifying it against its CA, presenting
/// `identity` when given. `domain`: the name checked against the server certificate
/// (default: the host of the address, 127.0.0.1).
async fn connect(control_plane: &ControlPlane, identity: Option<Identity>, domain: Option<&str>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(control_plane.read_file("ca.pem")));
    if let Some(domain) = domain {
        tls = tls.domain_name(domain);
    }
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(format!("https://{}", control_plane.grpc_addr()))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn admin_identity(control_plane: &ControlPlane) -> Identity {
    Identity::from_pem(control_plane.read_file("admin.pem"), control_plane.read_file("admin-key.pem"))
}

async fn admin_channel(control_plane: &ControlPlane) -> Channel {
    connect(control_plane, Some(admin_identity(control_plane)), Some("localhost"))
        .await
        .unwrap_or_else(|e| panic!("mTLS connection with the admin certificate: {e}\n{}", control_plane.logs()))
}

async fn list_services_v1(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut client = ServerReflectionClient::new(channel);
    let mut responses =
        client.server_reflection_info(tokio_stream::iter([request])).await.expect("grpc.reflection.v1 ServerReflectionInfo").into_inner();
    let response = responses.message().await.expect("a v1 reflection response").expect("a v1 reflection response, not end of stream");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("v1 ListServices answered {other:?}"),
    }
}

async fn list_services_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut client = ServerReflectionClient::new(channel);
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("grpc.reflection.v1alpha ServerReflectionInfo")
        .into_inner();
    let response =
        responses.message().await.expect("a v1alpha reflection response").expect("a v1alpha reflection response, not end of stream");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("v1alpha ListServices answered {other:?}"),
    }
}

/// The file descriptors reflection v1 returns for a symbol (what `grpcurl describe` uses).
async fn file_containing_symbol_v1(channel: Channel, symbol: &str) -> Vec<Vec<u8>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request =
        ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())) };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("ServerReflectionInfo")
        .into_inner();
    match responses.message().await.expect("a response").expect("a response, not end of stream").message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto,
        other => panic!("FileContainingSymbol({symbol}) answered {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_and_health_over_mtls() {
    diplo_api::install_crypto_provider();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let channel = admin_channel(&control_plane).await;

    let v1 = list_services_v1(channel.clone()).await;
    let v1alpha = list_services_v1alpha(channel.clone()).await;
    eprintln!("[test] reflection v1: {v1:?}\n[test] reflection v1alpha: {v1alpha:?}");
    for service in EXPECTED_SERVICES {
        assert!(v1.iter().any(|s| s == service), "reflection v1 lacks {service}: {v1:?}");
        assert!(v1alpha.iter().any(|s| s == service), "reflection v1alpha lacks {service}: {v1alpha:?}");
    }
    // Each reflection version lists itself (the other is served too: both answered).
    assert!(v1.iter().any(|s| s == "grpc.reflection.v1.ServerReflection"), "{v1:?}");
    assert!(v1alpha.iter().any(|s| s == "grpc.reflection.v1alpha.ServerReflection"), "{v1alpha:?}");
    let files = file_containing_symbol_v1(channel.clone(), "diplo.v1.ClusterService").await;
    assert!(!files.is_empty(), "reflection knows the file declaring diplo.v1.ClusterService");

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "diplo.v1.ClusterService", "diplo.v1.AgentService"] {
        let response = health
            .check(HealthCheckRequest { service: service.to_owned() })
            .await
            .unwrap_or_else(|status| panic!("health check of {service:?}: {status:?}"))
            .into_inner();
        assert_eq!(response.status, ServingStatus::Serving as i32, "health of {service:?}: {response:?}");
    }

    // The server certificate is valid for 127.0.0.1 too (the host of the address).
    let by_ip =
        connect(&control_plane, Some(admin_identity(&control_plane)), None).await.unwrap_or_else(|e| panic!("mTLS by IP address: {e}"));
    let nodes = ClusterServiceClient::new(by_ip).list_nodes(ListNodesRequest {}).await.expect("ListNodes as admin").into_inner();
    assert!(nodes.nodes.is_empty(), "a fresh cluster has no nodes: {nodes:?}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    diplo_api::install_crypto_provider();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let rogue_ca = diplo_api::pki::CertificateAuthority::generate("rogue").expect("rogue CA");
    let rogue = rogue_ca.issue_operator("admin", "admin", Duration::from_secs(3600)).expect("rogue operator certificate");

    // Control: the same path with the real admin certificate works.
    let channel = admin_channel(&control_plane).await;
    ClusterServiceClient::new(channel).list_nodes(ListNodesRequest {}).await.expect("ListNodes with the real admin certificate");

    let identity = Identity::from_pem(&rogue.cert_pem, &rogue.key_pem);
    match connect(&control_plane, Some(identity), Some("localhost")).await {
        Err(e) => eprintln!("[test] rogue certificate refused at connect: {e}"),
        // TLS 1.3: the client may finish its side of the handshake before the server
        // checks the certificate; the server's alert (or just the closed connection)
        // then fails the first call.
        Ok(channel) => match ClusterServiceClient::new(channel).list_nodes(ListNodesRequest {}).await {
            Ok(response) => panic!("a certificate from another CA was accepted: {:?}", response.into_inner()),
            Err(status) => {
                eprintln!("[test] rogue certificate refused at the first call: {status:?}");
                // A transport failure, not an answer of the service (which would mean
                // the handshake accepted the certificate).
                assert!(
                    matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled),
                    "the TLS layer should refuse the certificate: {status:?}"
                );
            }
        },
    }
}

#[tokio::test]
async fn without_client_certificate_a_bearer_token_is_required() {
    diplo_api::install_crypto_provider();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let channel = connect(&control_plane, None, Some("localhost"))
        .await
        .unwrap_or_else(|e| panic!("TLS without a client certificate: {e}\n{}", control_plane.logs()));
    let mut client = ClusterServiceClient::new(channel);

    let status = client.list_nodes(ListNodesRequest {}).await.expect_err("ListNodes without any credential must fail");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let mut garbage = tonic::Request::new(ListNodesRequest {});
    garbage.metadata_mut().insert("authorization", "Bearer garbage".parse().expect("metadata"));
    let status = client.list_nodes(garbage).await.expect_err("ListNodes with a garbage bearer must fail");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let mut request = tonic::Request::new(ListNodesRequest {});
    let bearer = format!("Bearer {}", control_plane.admin_token());
    request.metadata_mut().insert("authorization", bearer.parse().expect("metadata"));
    let nodes = client.list_nodes(request).await.expect("ListNodes with the admin bearer token").into_inner();
    assert!(nodes.nodes.is_empty(), "{nodes:?}");
}

/// `authorization: Bearer <token>` on every call.
fn with_bearer(token: &str) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    let value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {token}").parse().expect("metadata");
    move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", value.clone());
        Ok(request)
    }
}

#[tokio::test]
async fn reflection_needs_a_credential_and_health_does_not() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as V1alphaRequest;

    diplo_api::install_crypto_provider();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let channel =
        connect(&control_plane, None, Some("localhost")).await.unwrap_or_else(|e| panic!("TLS without a client certificate: {e}"));
    let v1_request = || tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Request::ListServices(String::new())),
    };
    let v1alpha_request = || tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1alphaRequest::ListServices(String::new())),
    };

    // No credential, or a bearer token that was never issued: refused, both versions.
    let unknown = format!("dpl_abcdefgh.{}", "x".repeat(32));
    for (case, bearer) in [("no credential", None), ("an unknown bearer token", Some(unknown.as_str()))] {
        let v1 = match bearer {
            None => V1::new(channel.clone()).server_reflection_info(tokio_stream::iter([v1_request()])).await,
            Some(token) => {
                V1::with_interceptor(channel.clone(), with_bearer(token)).server_reflection_info(tokio_stream::iter([v1_request()])).await
            }
        };
        let status = v1.expect_err(&format!("reflection v1 with {case} must be refused"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "v1, {case}: {status:?}");
        let v1alpha = match bearer {
            None => V1alpha::new(channel.clone()).server_reflection_info(tokio_stream::iter([v1alpha_request()])).await,
            Some(token) => {
                V1alpha::with_interceptor(channel.clone(), with_bearer(token))
                    .server_reflection_info(tokio_stream::iter([v1alpha_request()]))
                    .await
            }
        };
        let status = v1alpha.expect_err(&format!("reflection v1alpha with {case} must be refused"));
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "v1alpha, {case}: {status:?}");
    }

    // A bearer token is enough (grpcurl -H 'authorization: Bearer …').
    let admin = control_plane.admin_token();
    let mut responses = V1::with_interceptor(channel.clone(), with_bearer(&admin))
        .server_reflection_info(tokio_stream::iter([v1_request()]))
        .await
        .expect("reflection v1 with the admin bearer token")
        .into_inner();
    match responses.message().await.expect("a response").and_then(|r| r.message_response) {
        Some(V1Response::ListServicesResponse(list)) => {
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(names.iter().any(|n| n == "diplo.v1.ClusterService"), "{names:?}");
        }
        other => panic!("ListServices answered {other:?}"),
    }
    V1alpha::with_interceptor(channel.clone(), with_bearer(&admin))
        .server_reflection_info(tokio_stream::iter([v1alpha_request()]))
        .await
        .expect("reflection v1alpha with the admin bearer token");

    // Health stays open.
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health without credentials")
        .into_inner();
    assert_eq!(response.status, ServingStatus::Serving as i32);
}
