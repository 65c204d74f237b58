//! Who is calling a gRPC method: the identity in a verified client certificate, or a
//! bearer token in the `authorization` metadata.

use diplo_api::pki::{peer_identity, PeerIdentity};
use tonic::{Request, Status};

use super::convert::status_from;
use crate::auth::Caller;
use crate::service::ControlPlane;

/// Resolves the caller of a request, or `Unauthenticated`.
pub async fn caller<T>(control_plane: &ControlPlane, request: &Request<T>) -> Result<Caller, Status> {
    if let Some(certs) = request.peer_certs()
        && let Some(leaf) = certs.first()
    {
        // The TLS layer has already verified the chain against the cluster CA.
        return match peer_identity(leaf) {
            Ok(PeerIdentity::Node { node_id }) => Ok(Caller::Node { node_id }),
            Ok(PeerIdentity::Operator { role, name }) => {
                let role = role.parse().map_err(|e: String| Status::unauthenticated(e))?;
                Ok(Caller::Operator { name, role })
            }
            Err(err) => Err(Status::unauthenticated(err.to_string())),
        };
    }
    let Some(value) = request.metadata().get("authorization") else {
        return Err(Status::unauthenticated("no client certificate and no authorization bearer token"));
    };
    let bearer = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| Status::unauthenticated("authorization metadata must be `Bearer <token>`"))?;
    control_plane.authenticate_bearer(bearer.trim()).await.map_err(status_from)
}
