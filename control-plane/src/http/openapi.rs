//! The OpenAPI 3.1 document of the REST gateway, generated from the handlers' typed
//! bodies (`GET /api/openapi.json`), and the page that renders it (`GET /api/docs`, with
//! the vendored Redoc bundle served from the binary: nothing is fetched elsewhere).

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use utoipa::OpenApi as _;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, ResponseBuilder};

use super::error::PROBLEM_JSON;

/// Paths served without a token.
pub const PUBLIC_PATHS: [&str; 8] =
    ["/healthz", "/api/openapi.json", "/api/docs", "/api/docs/redoc.standalone.js", "/", "/ui/assets/{file}", "/ui/login", "/ui/logout"];

/// Paths that answer exactly as another documented path (the same handler).
const ALIASES: [(&str, &str); 2] = [("/api/unified/deploy", "/api/v1/deployments"), ("/api/deploy", "/api/v1/deployments")];

/// Paths served by the same handlers as another documented path, every method alike: the
/// container operations under mikrocloud's Docker-specific prefix.
const MIRRORS: [(&str, &str); 4] = [
    ("/api/v1/docker/containers/{id}/pause", "/api/v1/containers/{id}/pause"),
    ("/api/v1/docker/containers/{id}/unpause", "/api/v1/containers/{id}/unpause"),
    ("/api/v1/docker/containers/{id}/stats", "/api/v1/containers/{id}/stats"),
    ("/api/v1/docker/containers/{id}/archive", "/api/v1/containers/{id}/archive"),
];

/// The security scheme every non-public operation requires.
const BEARER: &str = "bearer";

/// The error answers any authenticated call may get, besides those it documents itself.
const COMMON_ERRORS: [(u16, &str); 10] = [
    (400, "Invalid request: a parameter or the body (`field` names it)"),
    (401, "No valid bearer token"),
    (403, "The token's role may not do this"),
    (404, "No such resource"),
    (409, "Conflicts with the current state"),
    (415, "The body is not application/json"),
    (429, "Too many requests"),
    (500, "Internal error"),
    (501, "The runtime cannot do this"),
    (503, "A node or the database is away for now (see Retry-After)"),
];

/// The public routes of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, openapi_json, docs, redoc_js))]
struct PublicDoc;

/// The document: every module's routes, the bearer scheme on every route but the public
/// ones, and the problem answers on every authenticated operation.
pub fn document() -> OpenApi {
    let mut doc = PublicDoc::openapi();
    doc.info.title = "Diplo".to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some(
        "Diplo's REST gateway. Every route but /healthz, /api/openapi.json, /api/docs and the dashboard's page, assets, login and \
         logout needs `Authorization: Bearer <token>` or the dashboard's session cookie (whose writes also need `X-CSRF-Token`). \
         Errors are RFC 9457 problem documents (application/problem+json). Lists take ?limit= and ?cursor= and name the next \
         page's cursor in X-Next-Cursor."
            .to_owned(),
    );
    doc.info.license = None;
    doc.info.contact = None;
    for module in [
        super::status::Doc::openapi(),
        super::containers::Doc::openapi(),
        super::deployments::Doc::openapi(),
        super::builds::Doc::openapi(),
        super::registries::Doc::openapi(),
        super::stacks::Doc::openapi(),
        super::metrics::Doc::openapi(),
        super::node_resources::Doc::openapi(),
        super::container_ops::Doc::openapi(),
        super::compute::Doc::openapi(),
        super::admin::Doc::openapi(),
        super::dashboard::Doc::openapi(),
    ] {
        doc.merge(module);
    }
    finish(doc)
}

/// Adds what every document needs after the modules are merged: aliases, the bearer
/// scheme, the problem answers.
pub fn finish(mut doc: OpenApi) -> OpenApi {
    for (alias, original) in ALIASES {
        if let Some(item) = doc.paths.paths.get(original).cloned() {
            let mut item = item;
            // Only the deploy operation is served at the alias.
            item.get = None;
            for op in operations(&mut item) {
                op.operation_id = op.operation_id.as_ref().map(|id| format!("{id}_{}", alias.trim_start_matches('/').replace('/', "_")));
            }
            doc.paths.paths.insert(alias.to_owned(), item);
        }
    }
    for (mirror, original) in MIRRORS {
        if let Some(mut item) = doc.paths.paths.get(original).cloned() {
            for op in operations(&mut item) {
                op.operation_id = op.operation_id.as_ref().map(|id| format!("{id}_docker"));
            }
            doc.paths.paths.insert(mirror.to_owned(), item);
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(BEARER, SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    for (path, item) in doc.paths.paths.iter_mut() {
        if PUBLIC_PATHS.contains(&path.as_str()) {
            continue;
        }
        for op in operations(item) {
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            for (status, description) in COMMON_ERRORS {
                op.responses.responses.entry(status.to_string()).or_insert_with(|| problem_response(description));
            }
            // An error a handler documents by its description alone is a problem document too.
            for (status, response) in op.responses.responses.iter_mut() {
                if let RefOr::T(response) = response
                    && status.starts_with(['4', '5'])
                    && response.content.is_empty()
                {
                    response.content.insert(PROBLEM_JSON.to_owned(), Content::new(Some(Ref::from_schema_name("Problem"))));
                }
            }
        }
    }
    doc
}

fn problem_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, Content::new(Some(Ref::from_schema_name("Problem"))))
        .build()
        .into()
}

/// Every operation of a path item.
pub fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.options, &mut item.head, &mut item.patch, &mut item.trace]
        .into_iter()
        .filter_map(Option::as_mut)
}

/// Liveness: `ok` once the control plane serves.
#[utoipa::path(get, path = "/healthz", tag = "status", responses((status = 200, description = "Serving", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// This document (no token needed: it describes the API, it holds no data).
#[utoipa::path(get, path = "/api/openapi.json", tag = "docs", responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)))]
pub async fn openapi_json() -> Response {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = JSON.get_or_init(|| document().to_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json.clone()).into_response()
}

/// The vendored Redoc bundle (see `assets/redoc/README.md`).
const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

/// The API reference page: this document rendered by the vendored Redoc.
pub const DOCS_PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Diplo API</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<div id="redoc"></div>
<script src="/api/docs/redoc.standalone.js"></script>
<script>Redoc.init("/api/openapi.json", { hideDownloadButton: false }, document.getElementById("redoc"));</script>
</body>
</html>
"#;

/// The API reference page.
#[utoipa::path(get, path = "/api/docs", tag = "docs", responses((status = 200, description = "The API reference (HTML)", body = String, content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(DOCS_PAGE)
}

/// The Redoc bundle the page loads.
#[utoipa::path(get, path = "/api/docs/redoc.standalone.js", tag = "docs",
    responses((status = 200, description = "The vendored Redoc bundle", body = String, content_type = "text/javascript")))]
pub async fn redoc_js() -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8")),
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400")),
    ];
    (headers, REDOC_JS).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_titled_diplo_with_the_crate_version() {
        let json: serde_json::Value = serde_json::from_str(&document().to_json().expect("json")).expect("parse");
        assert_eq!(json["openapi"], "3.1.0");
        assert_eq!(json["info"]["title"], "Diplo");
        assert_eq!(json["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(json["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (path, item) in json["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                let public = PUBLIC_PATHS.contains(&path.as_str());
                assert_eq!(op.get("security").is_none(), public, "{method} {path}: {op}");
                if !public {
                    let bad = &op["responses"]["400"]["content"]["application/problem+json"]["schema"]["$ref"];
                    assert_eq!(bad, "#/components/schemas/Problem", "{method} {path}");
                }
            }
        }
    }

    #[test]
    fn the_docs_page_names_no_external_url() {
        assert!(!DOCS_PAGE.contains("http://") && !DOCS_PAGE.contains("https://") && !DOCS_PAGE.contains("//cdn"), "{DOCS_PAGE}");
        assert!(DOCS_PAGE.contains("/api/docs/redoc.standalone.js") && DOCS_PAGE.contains("/api/openapi.json"));
        assert!(REDOC_JS.len() > 100_000, "the vendored bundle is missing");
    }
}
