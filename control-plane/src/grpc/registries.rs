//! `RegistryService`: registry credentials (thin over [`ControlPlane`]).

use std::sync::Arc;

use diplo_api::pb;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert::{status_from, timestamp};
use crate::service::{ControlPlane, RegistryLoginRequest};

/// The gRPC face of the registry credentials.
pub struct RegistryApi {
    control_plane: Arc<ControlPlane>,
}

impl RegistryApi {
    pub fn new(control_plane: Arc<ControlPlane>) -> Self {
        RegistryApi { control_plane }
    }
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for RegistryApi {
    async fn login(&self, request: Request<pb::RegistryLoginRequest>) -> Result<Response<pb::RegistryLoginResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let req = request.into_inner();
        let login = RegistryLoginRequest { registry: req.registry, username: req.username, password: req.password };
        let created = self.control_plane.registry_login(&caller, login).await.map_err(status_from)?;
        Ok(Response::new(pb::RegistryLoginResponse { created }))
    }

    async fn logout(&self, request: Request<pb::RegistryLogoutRequest>) -> Result<Response<pb::RegistryLogoutResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        self.control_plane.registry_logout(&caller, &request.into_inner().registry).await.map_err(status_from)?;
        Ok(Response::new(pb::RegistryLogoutResponse {}))
    }

    async fn list(&self, request: Request<pb::ListRegistryLoginsRequest>) -> Result<Response<pb::ListRegistryLoginsResponse>, Status> {
        let caller = caller(&self.control_plane, &request).await?;
        let logins = self.control_plane.list_registry_logins(&caller).await.map_err(status_from)?;
        Ok(Response::new(pb::ListRegistryLoginsResponse {
            logins: logins
                .into_iter()
                .map(|login| pb::RegistryLogin {
                    registry: login.registry,
                    username: login.username,
                    updated_at: Some(timestamp(login.updated_at)),
                })
                .collect(),
        }))
    }
}
