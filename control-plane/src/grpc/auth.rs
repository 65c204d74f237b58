//! Who is calling a gRPC method: the identity in a verified client certificate, or a
//! bearer token in the `authorization` metadata. Resolution is synchronous (bearer
//! tokens come from the in-memory cache, node membership from the node registry), so
//! the same check also runs in [`RequireCredential`], the interceptor in front of
//! services that have no method-level checks (reflection).

use std::sync::Arc;

use diplo_api::pki::{PeerIdentity, peer_identity};
use tonic::metadata::MetadataMap;
use tonic::transport::CertificateDer;
use tonic::{Request, Status};

use super::convert::status_from;
use crate::auth::Caller;
use crate::service::ControlPlane;

/// Resolves the caller of a request, or `Unauthenticated` (`PermissionDenied` for the
/// certificate of a node removed from the cluster).
pub async fn caller<T>(control_plane: &ControlPlane, request: &Request<T>) -> Result<Caller, Status> {
    resolve(control_plane, request.peer_certs().as_deref().map(Vec::as_slice), request.metadata())
}

/// The caller from the verified client chain (leaf first), if any, else from the
/// bearer token in `metadata`.
fn resolve(control_plane: &ControlPlane, peer_certs: Option<&[CertificateDer<'static>]>, metadata: &MetadataMap) -> Result<Caller, Status> {
    if let Some(leaf) = peer_certs.and_then(<[_]>::first) {
        // The TLS layer has already verified the chain against the cluster CA.
        return match peer_identity(leaf) {
            Ok(PeerIdentity::Node { node_id }) if control_plane.is_member(&node_id) => Ok(Caller::Node { node_id }),
            Ok(PeerIdentity::Node { node_id }) => {
                Err(Status::permission_denied(format!("node {node_id} is not a member of this cluster (it was removed)")))
            }
            Ok(PeerIdentity::Operator { role, name }) => {
                let role = role.parse().map_err(|e: String| Status::unauthenticated(e))?;
                Ok(Caller::Operator { name, role })
            }
            Err(err) => Err(Status::unauthenticated(err.to_string())),
        };
    }
    let Some(value) = metadata.get("authorization") else {
        return Err(Status::unauthenticated("no client certificate and no authorization bearer token"));
    };
    let bearer = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| Status::unauthenticated("authorization metadata must be `Bearer <token>`"))?;
    control_plane.authenticate_bearer(bearer.trim()).map_err(status_from)
}

/// Interceptor that lets a call through only with a credential: a verified client
/// certificate (of a current node or an operator) or a valid bearer token; anything
/// else is answered `Unauthenticated`. Any role will do: it guards services that are
/// read-only but not public (reflection).
#[derive(Clone)]
pub struct RequireCredential {
    control_plane: Arc<ControlPlane>,
}

impl RequireCredential {
    /// An interceptor resolving callers with `control_plane`.
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        RequireCredential { control_plane }
    }
}

impl tonic::service::Interceptor for RequireCredential {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let caller = resolve(&self.control_plane, request.peer_certs().as_deref().map(Vec::as_slice), request.metadata())?;
        tracing::debug!(actor = %caller.actor(), "credential accepted");
        Ok(request)
    }
}
