//! The web dashboard: its page at `/` and its assets under `/ui/assets/` (hand-written
//! HTML, CSS and ES modules embedded in the binary, served with a strict Content Security
//! Policy: nothing inline, nothing from elsewhere), and its sessions: `POST /ui/login`
//! turns an API token into an `HttpOnly; SameSite=Strict` cookie holding a random session
//! id, `GET /ui/session` tells the page who it is and the CSRF token its writes carry,
//! `POST /ui/logout` ends the session. The REST API accepts the cookie in place of a
//! bearer token (see [`session_caller`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiError;
use super::error::Problem;
use crate::auth::Caller;
use crate::error::ServiceError;
use crate::model::Role;
use crate::service::{ControlPlane, DashboardSession, constant_time_eq};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "diplo_session";

/// The header a session's writes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The Content Security Policy of the dashboard's page and assets: scripts, styles,
/// images and connections from this origin only, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The dashboard's files: name, media type, content.
pub const ASSETS: [(&str, &str, &str); 5] = [
    ("app.css", "text/css; charset=utf-8", include_str!("../../assets/dashboard/app.css")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../assets/dashboard/api.js")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../assets/dashboard/app.js")),
    ("views.js", "text/javascript; charset=utf-8", include_str!("../../assets/dashboard/views.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../../assets/dashboard/favicon.svg")),
];

/// The dashboard's page.
pub const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");

/// The headers every dashboard file is served with.
fn page_headers(content_type: &'static str, cache: &'static str) -> [(header::HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
    ]
}

/// The dashboard (HTML; its views are routed by the URL's fragment, `#/nodes`).
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The dashboard's page", body = String, content_type = "text/html")))]
pub async fn index() -> Response {
    (page_headers("text/html; charset=utf-8", "no-store"), INDEX_HTML).into_response()
}

/// One of the dashboard's files (scripts, style sheet, icon).
#[utoipa::path(get, path = "/ui/assets/{file}", tag = "dashboard", params(("file" = String, Path, description = "File name, e.g. app.js")),
    responses((status = 200, description = "The file",
            content((String = "text/javascript"), (String = "text/css"), (String = "image/svg+xml"))),
        (status = 404, description = "No such file", body = Problem, content_type = "application/problem+json")))]
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, content)) => (page_headers(content_type, "no-cache"), *content).into_response(),
        None => ApiError::from(ServiceError::NotFound(format!("no dashboard file {file:?}"))).into_response(),
    }
}

/// `POST /ui/login` body.
#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    /// An API token (`dpl_<id>.<secret>`), as `diplo api-token create` printed it.
    token: String,
}

/// Who a dashboard session acts as.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    /// The API token's name.
    name: String,
    /// `admin`, `deployer` or `viewer`.
    role: String,
    /// Whether the role may deploy (write controls for deployments are shown).
    can_deploy: bool,
    /// Whether the role may administer nodes and tokens.
    can_admin: bool,
    /// The token to send as `X-CSRF-Token` with every write of this session (absent
    /// when the call used a bearer token: bearer calls need none).
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
}

impl SessionInfo {
    fn new(caller: &Caller, csrf_token: Option<String>) -> Self {
        let (name, role) = match caller {
            Caller::Operator { name, role } => (name.clone(), role.to_string()),
            Caller::Node { node_id } => (node_id.clone(), "node".to_owned()),
        };
        SessionInfo { name, role, can_deploy: caller.has_role(Role::Deployer), can_admin: caller.has_role(Role::Admin), csrf_token }
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// The `Set-Cookie` value for a session id (`None`: the cookie is deleted).
pub fn session_cookie(session_id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match session_id {
        Some(id) => format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{secure}"),
        None => format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    }
}

/// Whether a request changes state: anything but GET, HEAD and OPTIONS.
fn writes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request carries `session`'s CSRF token.
fn csrf_matches(headers: &HeaderMap, session: &DashboardSession) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|token| constant_time_eq(token.trim().as_bytes(), session.csrf_token.as_bytes()))
}

/// The caller of a request without a bearer token, from its session cookie: `None`
/// without a cookie; refused when the session is not live, or when the request writes
/// without the session's CSRF token in `X-CSRF-Token` (a cross-site page can make the
/// browser send the cookie, never read the token).
pub fn session_caller(control_plane: &ControlPlane, request: &Request) -> Option<Result<DashboardSession, ServiceError>> {
    let session_id = cookie(request.headers(), SESSION_COOKIE).filter(|id| !id.is_empty())?;
    Some(control_plane.dashboard_session(session_id).and_then(|session| {
        if writes(request.method()) && !csrf_matches(request.headers(), &session) {
            Err(ServiceError::PermissionDenied("a write with a dashboard session needs its CSRF token in the X-CSRF-Token header".into()))
        } else {
            Ok(session)
        }
    }))
}

/// Logs in with an API token (verified as a bearer token is): sets the session cookie
/// (`HttpOnly; SameSite=Strict`, `Secure` over HTTPS) and answers who the session is.
#[utoipa::path(post, path = "/ui/login", tag = "dashboard", request_body = LoginRequest,
    responses((status = 200, description = "Logged in; the session cookie is set", body = SessionInfo,
        headers(("set-cookie" = String, description = "diplo_session=<random id>; HttpOnly; SameSite=Strict; Path=/"))),
        (status = 400, description = "No token in the body", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The token is unknown, revoked or expired", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not answered in time", body = Problem, content_type = "application/problem+json")))]
pub async fn login(State(control_plane): State<Arc<ControlPlane>>, body: Bytes) -> Result<Response, ApiError> {
    // The token is a secret: a parse error never quotes the body.
    let request: LoginRequest =
        serde_json::from_slice(&body).map_err(|_| ServiceError::invalid("token", "expected a JSON object with the string field token"))?;
    let login = control_plane.dashboard_login(&request.token)?;
    let cookie = session_cookie(Some(&login.session_id), control_plane.rest_over_tls());
    let info = SessionInfo::new(&login.session.caller, Some(login.session.csrf_token));
    let headers = [(header::SET_COOKIE, cookie), (header::CACHE_CONTROL, "no-store".to_owned())];
    Ok((headers, Json(info)).into_response())
}

/// Ends the dashboard session of the cookie and deletes the cookie. A live session is
/// ended only with its CSRF token in `X-CSRF-Token` (403 otherwise).
#[utoipa::path(post, path = "/ui/logout", tag = "dashboard",
    responses((status = 204, description = "Logged out; the cookie is deleted"),
        (status = 403, description = "A live session without its CSRF token", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "A body that is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Not answered in time", body = Problem, content_type = "application/problem+json")))]
pub async fn logout(State(control_plane): State<Arc<ControlPlane>>, request: Request) -> Result<Response, ApiError> {
    if let Some(session_id) = cookie(request.headers(), SESSION_COOKIE).filter(|id| !id.is_empty())
        && let Ok(session) = control_plane.dashboard_session(session_id)
    {
        if !csrf_matches(request.headers(), &session) {
            return Err(ServiceError::PermissionDenied("logging out needs the session's CSRF token in X-CSRF-Token".into()).into());
        }
        control_plane.dashboard_logout(session_id);
        tracing::info!(actor = %session.caller.actor(), "dashboard logout");
    }
    let cookie = session_cookie(None, control_plane.rest_over_tls());
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

/// Who the caller is (session cookie or bearer token), what its role may do, and the
/// CSRF token of its session.
#[utoipa::path(get, path = "/ui/session", tag = "dashboard",
    responses((status = 200, description = "The caller", body = SessionInfo)))]
pub async fn session(
    axum::Extension(caller): axum::Extension<Caller>,
    session: Option<axum::Extension<DashboardSession>>,
) -> Result<Response, ApiError> {
    let csrf = session.map(|axum::Extension(session)| session.csrf_token);
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(SessionInfo::new(&caller, csrf))).into_response())
}

/// The dashboard routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(index, asset, login, logout, session), components(schemas(LoginRequest, SessionInfo, Problem)))]
pub(super) struct Doc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others_and_set_strictly() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; diplo_session=abc ; b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let mut split = HeaderMap::new();
        split.append(header::COOKIE, HeaderValue::from_static("a=1"));
        split.append(header::COOKIE, HeaderValue::from_static("diplo_session=xyz"));
        assert_eq!(cookie(&split, SESSION_COOKIE), Some("xyz"));

        assert_eq!(session_cookie(Some("id"), false), "diplo_session=id; HttpOnly; SameSite=Strict; Path=/");
        assert_eq!(session_cookie(Some("id"), true), "diplo_session=id; HttpOnly; SameSite=Strict; Path=/; Secure");
        assert!(session_cookie(None, false).contains("Max-Age=0"));
    }

    #[test]
    fn the_page_and_its_assets_load_nothing_from_elsewhere_and_run_no_inline_script() {
        for (name, _, content) in ASSETS.iter().map(|(n, t, c)| (*n, *t, *c)).chain([("index.html", "", INDEX_HTML)]) {
            // An SVG names its XML namespace by URL; nothing is fetched from it.
            let content = content.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            for external in ["http://", "https://", "//cdn", "@import", "url(http"] {
                assert!(!content.contains(external), "{name} names {external}");
            }
        }
        // Every <script> has a src of its own origin and no body; no inline handlers or styles.
        for script in INDEX_HTML.split("<script").skip(1) {
            let (tag, rest) = script.split_once('>').expect("a closed tag");
            assert!(tag.contains("src=\"/ui/assets/"), "an inline or foreign script: <script{tag}>");
            assert!(rest.starts_with("</script>"), "a script with a body");
        }
        for attribute in [" onclick=", " onload=", " style=", "javascript:"] {
            assert!(!INDEX_HTML.contains(attribute), "index.html uses {attribute}");
        }
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'self'") && !CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn only_safe_methods_go_without_a_csrf_token() {
        assert!(!writes(&Method::GET) && !writes(&Method::HEAD) && !writes(&Method::OPTIONS));
        assert!(writes(&Method::POST) && writes(&Method::PUT) && writes(&Method::PATCH) && writes(&Method::DELETE));
    }
}
