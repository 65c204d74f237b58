//! The admin's credentials in the data directory, created on first start (all 0600):
//! `admin.pem` / `admin-key.pem` (operator certificate for gRPC), `admin.token` (REST
//! bearer token) and `cli.toml` (a CLI context pointing at this control plane).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diplo_api::context::CliContext;
use diplo_api::token::{ApiToken, hash_secret};

use crate::model::Role;
use crate::pki::{PkiSetupError, write_private};
use crate::service::ControlPlane;

const ADMIN_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Errors while preparing the admin credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Reading or writing a file, or issuing the certificate.
    #[error(transparent)]
    Files(#[from] PkiSetupError),
    /// Issuing the certificate.
    #[error(transparent)]
    Pki(#[from] diplo_api::pki::PkiError),
    /// Recording the token.
    #[error(transparent)]
    Service(#[from] crate::error::ServiceError),
    /// Reading the stored token.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Where the admin credentials were written.
#[derive(Debug, Clone)]
pub struct AdminFiles {
    /// The CLI context file.
    pub cli_config: PathBuf,
    /// The REST bearer token file.
    pub token: PathBuf,
}

/// Makes sure the admin certificate, token and CLI context exist and are valid for
/// this cluster; reuses what is already there. `rest_url` is the REST gateway's
/// (`http://…` or `https://…`).
pub async fn ensure_admin(
    control_plane: &ControlPlane,
    data_dir: &Path,
    grpc: SocketAddr,
    rest_url: &str,
) -> Result<AdminFiles, CredentialsError> {
    let ca = &control_plane.pki().ca;
    let cert_path = data_dir.join("admin.pem");
    let key_path = data_dir.join("admin-key.pem");
    // A CA created at this start invalidates any admin certificate left from before.
    if control_plane.pki().created || !cert_path.exists() || !key_path.exists() {
        let admin = ca.issue_operator("admin", Role::Admin.as_str(), ADMIN_CERT_LIFETIME)?;
        write_private(&key_path, &admin.key_pem)?;
        write_private(&cert_path, &admin.cert_pem)?;
    }

    let token_path = data_dir.join("admin.token");
    if !stored_token_matches(control_plane, &token_path).await? {
        let created = control_plane.issue_api_token("system", "admin", Role::Admin, None).await?;
        write_private(&token_path, &format!("{}\n", created.token))?;
    }

    let cli_config = data_dir.join("cli.toml");
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let context = CliContext {
        server: format!("https://{grpc}"),
        rest: rest_url.to_owned(),
        ca: absolute(&data_dir.join("ca.pem")),
        cert: absolute(&cert_path),
        key: absolute(&key_path),
        token_file: absolute(&token_path),
    };
    write_private(&cli_config, &context.to_toml())?;
    Ok(AdminFiles { cli_config: absolute(&cli_config), token: absolute(&token_path) })
}

async fn stored_token_matches(control_plane: &ControlPlane, path: &Path) -> Result<bool, CredentialsError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(false) };
    let Ok(token) = text.trim().parse::<ApiToken>() else { return Ok(false) };
    let record = control_plane.store().get_api_token(&token.id).await?;
    Ok(record.is_some_and(|r| r.secret_hash == hash_secret(&token.secret) && !r.revoked))
}
