//! The REST gateway's contract, against a real `diplo-control-plane dev` (its in-process
//! agent is the local node): `/api/openapi.json` is an OpenAPI 3.1 document that lists
//! every route the router serves; `/api/docs` names no external URL and its script is
//! served by the control plane; errors are `application/problem+json` (unknown route 404,
//! wrong method 405 with `Allow`, malformed JSON and bad list parameters 400 naming the
//! field, a body that is not JSON 415); and Schemathesis, run against the document with
//! the admin token, finds no server error and no answer that breaks the document.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use diplo_tests::{
    ControlPlane, ControlPlaneOptions, RemoveAllContainersOnDrop, output_with_timeout, rest_router_routes, skip_or_fail, wait_until,
};
use serde_json::Value;

/// The pinned Schemathesis that `scripts/setup-schemathesis` installs.
const SCHEMATHESIS: &str = "/var/cache/diplo-tools/schemathesis/bin/schemathesis";

fn dev_control_plane() -> ControlPlane {
    let control_plane = ControlPlane::start(ControlPlaneOptions { dev: true, ..Default::default() });
    wait_until("the local node to be ready", Duration::from_secs(60), Duration::from_millis(250), || {
        let nodes = control_plane.try_nodes()?;
        match nodes.as_slice() {
            [node] if node["status"] == "ready" && node["os"] != "" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    control_plane
}

/// A raw request: `(status, headers, body)`.
fn call(
    control_plane: &ControlPlane,
    method: &str,
    path: &str,
    token: bool,
    content_type: Option<&str>,
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let url = control_plane.rest_url(path);
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let token = token.then(|| control_plane.admin_token());
    let (content_type, body) = (content_type.map(str::to_owned), body.map(str::to_owned));
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).no_proxy().build().expect("client");
        let mut request = client.request(method, &url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().unwrap_or_else(|e| panic!("{url}: {e}"));
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        (status, headers, response.text().unwrap_or_default())
    })
    .join()
    .expect("request thread")
}

/// Asserts a problem document with `status` (and `field`, when given); returns it.
fn assert_problem(what: &str, answer: &(u16, reqwest::header::HeaderMap, String), status: u16, field: Option<&str>) -> Value {
    let (got, headers, body) = answer;
    assert_eq!(*got, status, "{what}: {body}");
    let content_type = headers.get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(content_type, "application/problem+json", "{what}: {body}");
    let problem: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    assert!(problem["type"].as_str().is_some_and(|t| t.starts_with("https://diplo.dev/problems/")), "{what}: {problem}");
    assert_eq!(problem["status"], status, "{what}: {problem}");
    assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()), "{what}: {problem}");
    assert!(problem["detail"].as_str().is_some_and(|t| !t.is_empty()), "{what}: {problem}");
    assert!(
        problem["code"].as_str().is_some_and(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_uppercase() || c == '_')),
        "{what}: {problem}"
    );
    if let Some(field) = field {
        assert_eq!(problem["field"], field, "{what}: {problem}");
    }
    problem
}

/// `(METHOD, path)` of every operation in the document.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            found.insert((method.to_uppercase(), path.clone()));
        }
    }
    found
}

#[test]
fn the_document_is_openapi_3_1_lists_every_route_and_the_docs_page_is_self_contained() {
    let control_plane = dev_control_plane();
    // No token needed for the document and the page.
    let (status, headers, body) = call(&control_plane, "GET", "/api/openapi.json", false, None, None);
    assert_eq!(status, 200, "{body}");
    assert!(headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json")));
    let document: Value = serde_json::from_str(&body).expect("the document is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], "Diplo");
    let served = rest_router_routes();
    let listed = documented(&document);
    let missing: Vec<_> = served.difference(&listed).collect();
    assert!(missing.is_empty(), "routes the router serves that the document does not list: {missing:?}");
    let extra: Vec<_> = listed.difference(&served).collect();
    assert!(extra.is_empty(), "operations in the document that the router does not serve: {extra:?}");
    // Every $ref points at a schema the document has.
    let schemas = document["components"]["schemas"].as_object().expect("schemas");
    for reference in body.split("\"$ref\":\"").skip(1).map(|rest| rest.split('"').next().unwrap_or_default()) {
        let name = reference.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {reference}"));
        assert!(schemas.contains_key(name), "dangling $ref {reference}");
    }

    let (status, headers, page) = call(&control_plane, "GET", "/api/docs", false, None, None);
    assert_eq!(status, 200, "{page}");
    assert!(headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html")));
    for external in ["http://", "https://", "//cdn", "unpkg", "jsdelivr", "googleapis"] {
        assert!(!page.contains(external), "the docs page names {external}: {page}");
    }
    let scripts: Vec<&str> = page.split("<script src=\"").skip(1).map(|rest| rest.split('"').next().unwrap_or_default()).collect();
    assert!(!scripts.is_empty(), "no script in the page: {page}");
    for script in scripts {
        assert!(script.starts_with('/'), "a script from elsewhere: {script}");
        let (status, _, js) = call(&control_plane, "GET", script, false, None, None);
        assert_eq!(status, 200, "{script}");
        assert!(js.len() > 100_000 && js.contains("Redoc"), "{script} is not the Redoc bundle ({} bytes)", js.len());
    }
}

#[test]
fn errors_are_problem_documents_end_to_end() {
    let control_plane = dev_control_plane();
    let cp = &control_plane;
    assert_problem("an unknown route", &call(cp, "GET", "/api/v1/nothing-here", true, None, None), 404, None);
    let wrong_method = call(cp, "DELETE", "/api/status", true, None, None);
    assert_problem("a wrong method", &wrong_method, 405, None);
    let allow = wrong_method.1.get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(allow.contains("GET"), "405 without Allow: {allow:?}");
    assert_problem("no token", &call(cp, "GET", "/api/v1/containers", false, None, None), 401, None);
    let json = Some("application/json");
    assert_problem("malformed JSON", &call(cp, "POST", "/api/v1/deployments", true, json, Some("{\"name\": ")), 400, Some("body"));
    let wrong_type = r#"{"name": "x", "image": "busybox", "replicas": "three"}"#;
    let problem =
        assert_problem("a field of the wrong type", &call(cp, "POST", "/api/v1/deployments", true, json, Some(wrong_type)), 400, None);
    assert!(problem["detail"].as_str().unwrap_or_default().contains("replicas"), "{problem}");
    let text = Some("text/plain");
    assert_problem("a body that is not JSON", &call(cp, "POST", "/api/v1/deployments", true, text, Some("{}")), 415, None);
    assert_problem("a body without a type", &call(cp, "POST", "/api/v1/containers", true, None, Some("{}")), 415, None);
    for (path, field) in [
        ("/api/v1/containers?limit=0", "limit"),
        ("/api/v1/nodes?limit=1001", "limit"),
        ("/api/v1/deployments?cursor=%25%25", "cursor"),
        ("/api/v1/containers?runtime=foo", "runtime"),
        ("/api/v1/compute/instances?status=sleeping", "status"),
        ("/api/v1/images/builds?status=sleeping", "status"),
    ] {
        assert_problem(path, &call(cp, "GET", path, true, None, None), 400, Some(field));
    }
    // An image whose registry host does not resolve (`.invalid` never does) names nothing
    // the node can pull: a client error (404), not a server error. The control plane's
    // look-up of the image's platforms goes to the harness's refusing proxy, which names
    // that host: the only one this test reaches for, on purpose.
    let container = diplo_tests::unique_name("openapi-unresolvable");
    let body = format!(r#"{{"image": "registry.invalid/diplo/none:1", "name": "{container}", "runtime_type": "docker"}}"#);
    let problem = assert_problem("an image from nowhere", &call(cp, "POST", "/api/v1/containers", true, json, Some(&body)), 404, None);
    assert!(problem["detail"].as_str().unwrap_or_default().contains("registry.invalid"), "{problem}");
    let reached = cp.take_egress_hosts();
    assert!(reached.iter().all(|host| host == "registry.invalid"), "{reached:?}");
    let (status, headers, body) = call(cp, "GET", "/api/v1/nodes?limit=1&status=ready", true, None, None);
    assert_eq!(status, 200, "{body}");
    let nodes: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    assert!(headers.get("x-next-cursor").is_none(), "one node, one page: {headers:?}");
}

/// What the Schemathesis run leaves out, besides the event stream: image and volume prune
/// and image pull, plain and Docker-prefixed, and tar copies in and out.
const EXCLUDED_PATHS: &str = "^/api/v1/((docker/)?(images|volumes)/(prune|pull)|(docker/)?containers/\\{id\\}/archive)$";
/// The operations left out: the event stream (1), prune and pull (images prune and pull,
/// volumes prune; plain and Docker-prefixed: 6), archives (GET and PUT, two paths: 4).
const EXCLUDED_OPERATIONS: u32 = 11;

/// `(selected, total)` from the tool's "Operations: N selected / M total" line.
fn selected_operations(stdout: &str) -> Option<(u32, u32)> {
    let line = stdout.lines().find(|l| l.trim_start().starts_with("Operations:"))?;
    let numbers: Vec<u32> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    match numbers[..] {
        [selected, total] => Some((selected, total)),
        _ => None,
    }
}

#[test]
fn the_operation_count_is_read_from_the_tools_summary() {
    assert_eq!(selected_operations("  Base URL: x\n    Operations:       77 selected / 88 total\n"), Some((77, 88)));
    assert_eq!(selected_operations("no summary"), None);
}

#[test]
fn the_exclusions_match_exactly_the_dangerous_and_ungeneratable_paths() {
    let excluded = regex::Regex::new(EXCLUDED_PATHS).expect("a valid expression");
    for path in [
        "/api/v1/images/prune",
        "/api/v1/images/pull",
        "/api/v1/volumes/prune",
        "/api/v1/docker/images/prune",
        "/api/v1/docker/images/pull",
        "/api/v1/docker/volumes/prune",
        "/api/v1/containers/{id}/archive",
        "/api/v1/docker/containers/{id}/archive",
    ] {
        assert!(excluded.is_match(path), "{path} must be left out");
    }
    for path in
        ["/api/v1/images", "/api/v1/volumes", "/api/v1/images/{reference}", "/api/v1/containers/{id}/stats", "/api/v1/networks/prune"]
    {
        assert!(!excluded.is_match(path), "{path} must be tested");
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let binary = std::env::var_os("DIPLO_SCHEMATHESIS").map_or_else(|| PathBuf::from(SCHEMATHESIS), PathBuf::from);
    if !binary.is_file() {
        skip_or_fail(&format!("{} is missing: run scripts/setup-schemathesis", binary.display()));
        return;
    }
    let control_plane = dev_control_plane();
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let report = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(&binary);
    command
        .arg("run")
        .arg(control_plane.rest_url("/api/openapi.json"))
        .args(["--checks", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"])
        .args(["--header", &format!("Authorization: Bearer {}", control_plane.admin_token())])
        // The event stream never ends on its own: nothing to check in one answer.
        .args(["--exclude-path", "/api/v1/events"])
        // ONE regular expression: the tool keeps only the last `--exclude-path-regex` given.
        // Pruning removes every unused image and volume of the host's shared daemons (other
        // tests' and the fixture's own images), and a pull of a generated reference makes the
        // node's daemon look for registries off this machine: both stay out of the run. Tar
        // bodies (copies into containers) are not something the tool can generate.
        .args(["--exclude-path-regex", EXCLUDED_PATHS])
        // One worker: Debian's Python 3.11 can fail parsing lambdas in concurrent threads
        // ("AST constructor recursion depth mismatch"), a fault of the tool, not of the API.
        .args(["--max-examples", "40", "--seed", "11", "--workers", "1", "--request-timeout", "20", "--no-shrink"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--report", "ndjson", "--report-dir"])
        .arg(report.path())
        // Its cache (`.schemathesis/`) goes to the scratch directory, not into the tree.
        .current_dir(report.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_PROXY", "*");
    let output = output_with_timeout(command, Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The exclusions took: exactly the excluded operations are left out.
    let (selected, total) = selected_operations(&stdout).unwrap_or_else(|| panic!("no operation count in:\n{stdout}\n{stderr}"));
    assert_eq!(total - selected, EXCLUDED_OPERATIONS, "operations left out of {total}:\n{stdout}");
    assert!(
        output.status.success(),
        "schemathesis failed ({}):\n{stdout}\n{stderr}\n--- control plane:\n{}",
        output.status,
        tail(&control_plane.logs())
    );
    // Generated image references name arbitrary registries; the harness's proxy refused
    // the control plane's look-ups of them (nothing left this machine over HTTP).
    let reached = control_plane.take_egress_hosts();
    if !reached.is_empty() {
        eprintln!("[openapi] generated image references named these hosts (refused by the proxy): {reached:?}");
    }
    let cases = generated_cases(&stdout);
    assert!(cases >= 1000, "only {cases} generated cases:\n{stdout}");
}

/// The number of test cases Schemathesis reports having generated: its summary says
/// `Test cases:` and, on the next line, `N generated, ...`.
fn generated_cases(stdout: &str) -> u64 {
    let mut lines = stdout.lines().map(str::trim).skip_while(|line| !line.starts_with("Test cases:"));
    let header = lines.next().unwrap_or_default();
    let inline = header.strip_prefix("Test cases:").map(str::trim).filter(|rest| !rest.is_empty());
    let line = inline.or_else(|| lines.find(|line| !line.is_empty())).unwrap_or_default();
    line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn the_case_count_is_read_from_the_summary() {
    assert_eq!(generated_cases("API Operations:\n\nTest cases:\n  3445 generated, 3445 passed\n\nSeed: 11\n"), 3445);
    assert_eq!(generated_cases("Test cases: 12 generated, 12 passed\n"), 12);
    assert_eq!(generated_cases("no summary\n"), 0);
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(8000);
    let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    &text[start..]
}
