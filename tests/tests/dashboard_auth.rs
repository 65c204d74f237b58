//! The dashboard's sessions against a real control plane, without a browser: login with
//! an API token sets an `HttpOnly; SameSite=Strict` cookie holding a random id (never the
//! token); the REST API takes the cookie in place of a bearer token with the token's role;
//! writes with the cookie need the session's CSRF token (a forged cross-site write, with
//! the cookie and without the header, is refused 403); logout, revocation and idle expiry
//! end a session; the page and its files carry a strict Content Security Policy.

use std::time::Duration;

use diplo_tests::{ControlPlane, ControlPlaneOptions};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

/// One answer: status, headers, body.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
    }
}

/// `METHOD url` with extra headers and an optional JSON body.
fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Value>) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let url = url.to_owned();
    let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).no_proxy().build().expect("client");
        let mut request = client.request(method.clone(), &url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().unwrap_or_default();
        Answer { status, headers, body }
    })
    .join()
    .expect("the HTTP thread panicked")
}

/// A new API token of `role`, created over REST by the admin.
fn api_token(control_plane: &ControlPlane, role: &str, name: &str) -> (String, String) {
    let answer = control_plane.rest("POST", "/api/v1/api-tokens", Some(json!({"name": name, "role": role, "ttl": "1h"})));
    assert_eq!(answer.status, 201, "{}", answer.body);
    let created = answer.json();
    assert_eq!(created["role"], role);
    (created["token"].as_str().expect("token").to_owned(), created["id"].as_str().expect("id").to_owned())
}

/// A logged-in dashboard session: the `Cookie` header value and the CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

fn login(control_plane: &ControlPlane, token: &str) -> (Session, Answer) {
    let answer = call("POST", &control_plane.rest_url("/ui/login"), &[], Some(json!({ "token": token })));
    assert_eq!(answer.status, 200, "login: {}", answer.body);
    let set_cookie = answer.header("set-cookie");
    let pair = set_cookie.split(';').next().expect("a cookie").trim().to_owned();
    let csrf = answer.json()["csrf_token"].as_str().expect("a CSRF token").to_owned();
    (Session { cookie: pair, csrf }, answer)
}

impl Session {
    fn get(&self, control_plane: &ControlPlane, path: &str) -> Answer {
        call("GET", &control_plane.rest_url(path), &[("cookie", &self.cookie)], None)
    }

    /// A write with the cookie and `csrf` as `X-CSRF-Token` (none when `None`).
    fn write(&self, control_plane: &ControlPlane, method: &str, path: &str, csrf: Option<&str>, body: Option<Value>) -> Answer {
        let mut headers = vec![("cookie", self.cookie.as_str())];
        if let Some(csrf) = csrf {
            headers.push(("x-csrf-token", csrf));
        }
        call(method, &control_plane.rest_url(path), &headers, body)
    }
}

#[test]
fn login_sets_a_strict_cookie_with_a_random_id_and_the_api_takes_it_with_the_tokens_role() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let (viewer_token, _) = api_token(&control_plane, "viewer", "dash-viewer");

    let (session, answer) = login(&control_plane, &viewer_token);
    let set_cookie = answer.header("set-cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{attribute} missing: {set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: no Secure attribute: {set_cookie}");
    let (_, secret) = viewer_token.split_once('.').expect("dpl_<id>.<secret>");
    assert!(!set_cookie.contains(secret) && !answer.body.contains(secret), "the token leaks: {set_cookie} {}", answer.body);
    let session_id = session.cookie.strip_prefix("diplo_session=").expect("the session cookie");
    assert!(session_id.len() >= 40, "a random id: {session_id}");
    let info = answer.json();
    assert_eq!((info["name"].as_str(), info["role"].as_str()), (Some("dash-viewer"), Some("viewer")));
    assert_eq!((info["can_deploy"].as_bool(), info["can_admin"].as_bool()), (Some(false), Some(false)));

    // The cookie reads like the viewer's bearer token.
    let me = session.get(&control_plane, "/ui/session");
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["csrf_token"].as_str(), Some(session.csrf.as_str()));
    assert_eq!(session.get(&control_plane, "/api/v1/nodes").status, 200);
    // ... and writes like a viewer: refused even with the right CSRF token.
    let refused = session.write(&control_plane, "DELETE", "/api/v1/deployments/dash-nope", Some(&session.csrf), None);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("role viewer"), "{}", refused.body);

    // A second login of the same token is a different session.
    let (other, _) = login(&control_plane, &viewer_token);
    assert!(other.cookie != session.cookie && other.csrf != session.csrf);

    // Bad logins: an unknown token (401), no token (400), a form post (415), no cookie (401).
    let unknown = call("POST", &control_plane.rest_url("/ui/login"), &[], Some(json!({"token": "dpl_nope.nope"})));
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    assert!(unknown.header("set-cookie").is_empty());
    let empty = call("POST", &control_plane.rest_url("/ui/login"), &[], Some(json!({"token": " "})));
    assert_eq!((empty.status, empty.json()["field"].as_str()), (400, Some("token")), "{}", empty.body);
    let form = call("POST", &control_plane.rest_url("/ui/login"), &[("content-type", "application/x-www-form-urlencoded")], None);
    assert!(form.status == 415 || form.status == 400, "{} {}", form.status, form.body);
    assert_eq!(call("GET", &control_plane.rest_url("/ui/session"), &[], None).status, 401);
    let forged = call("GET", &control_plane.rest_url("/api/v1/nodes"), &[("cookie", "diplo_session=forged")], None);
    assert_eq!(forged.status, 401, "{}", forged.body);
}

#[test]
fn writes_with_the_cookie_need_the_sessions_csrf_token_and_roles_still_hold() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let (admin, _) = login(&control_plane, &control_plane.admin_token());
    let body = || Some(json!({"name": "dash-made", "role": "viewer", "ttl": "1h"}));

    // A forged cross-site write: the browser sends the cookie, the page cannot know the token.
    let forged = admin.write(&control_plane, "POST", "/api/v1/api-tokens", None, body());
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("X-CSRF-Token"), "{}", forged.body);
    let wrong = admin.write(&control_plane, "POST", "/api/v1/api-tokens", Some("not-the-token"), body());
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let (deployer_session, _) = login(&control_plane, &api_token(&control_plane, "deployer", "dash-deployer").0);
    let crossed = admin.write(&control_plane, "POST", "/api/v1/api-tokens", Some(&deployer_session.csrf), body());
    assert_eq!(crossed.status, 403, "another session's CSRF token: {}", crossed.body);
    let listed = control_plane.rest_json("/api/v1/api-tokens");
    assert!(!listed.to_string().contains("dash-made"), "a refused write happened: {listed}");

    // With its own token the admin's write goes through.
    let made = admin.write(&control_plane, "POST", "/api/v1/api-tokens", Some(&admin.csrf), body());
    assert_eq!(made.status, 201, "{}", made.body);

    // A deployer's session deploys and deletes (let through: 404 for a missing one) but
    // may not administer.
    let delete = deployer_session.write(&control_plane, "DELETE", "/api/v1/deployments/dash-nope", Some(&deployer_session.csrf), None);
    assert_eq!(delete.status, 404, "{}", delete.body);
    let cordon = deployer_session.write(&control_plane, "POST", "/api/v1/nodes/dash-nope/cordon", Some(&deployer_session.csrf), None);
    assert_eq!(cordon.status, 403, "{}", cordon.body);
    let info = deployer_session.get(&control_plane, "/ui/session").json();
    assert_eq!((info["can_deploy"].as_bool(), info["can_admin"].as_bool()), (Some(true), Some(false)));

    // A bearer token needs no CSRF token and wins over a cookie.
    let bearer = call(
        "GET",
        &control_plane.rest_url("/ui/session"),
        &[("authorization", &format!("Bearer {}", control_plane.admin_token())), ("cookie", &deployer_session.cookie)],
        None,
    );
    assert_eq!(bearer.status, 200);
    assert_eq!(bearer.json()["role"], "admin");
    assert!(bearer.json().get("csrf_token").is_none(), "{}", bearer.body);
}

#[test]
fn logout_revocation_and_idle_expiry_end_a_session() {
    let options =
        ControlPlaneOptions { env: vec![("DIPLO_DASHBOARD_SESSION_IDLE".to_owned(), "3s".to_owned())], ..ControlPlaneOptions::default() };
    let control_plane = ControlPlane::start(options);
    let (token, token_id) = api_token(&control_plane, "viewer", "dash-ending");

    // Logout needs the CSRF token (a cross-site page cannot log a user out), then ends it.
    let (session, _) = login(&control_plane, &token);
    let forged = session.write(&control_plane, "POST", "/ui/logout", None, None);
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(session.get(&control_plane, "/ui/session").status, 200);
    let out = session.write(&control_plane, "POST", "/ui/logout", Some(&session.csrf), None);
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(out.header("set-cookie").contains("Max-Age=0"), "{}", out.header("set-cookie"));
    assert_eq!(session.get(&control_plane, "/ui/session").status, 401);
    assert_eq!(session.get(&control_plane, "/api/v1/nodes").status, 401);

    // Used within the idle time it lives on; idle longer, it expires.
    let (session, _) = login(&control_plane, &token);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(session.get(&control_plane, "/api/v1/nodes").status, 200, "used every 1.5 s, the session lives");
    }
    std::thread::sleep(Duration::from_millis(3500));
    let expired = session.get(&control_plane, "/api/v1/nodes");
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert!(expired.body.contains("expired"), "{}", expired.body);

    // Revoking the token ends its sessions at once.
    let (session, _) = login(&control_plane, &token);
    assert_eq!(control_plane.rest("DELETE", &format!("/api/v1/api-tokens/{token_id}"), None).status, 204);
    let revoked = session.get(&control_plane, "/api/v1/nodes");
    assert_eq!(revoked.status, 401, "{}", revoked.body);
    assert!(revoked.body.contains("revoked"), "{}", revoked.body);
    let again = call("POST", &control_plane.rest_url("/ui/login"), &[], Some(json!({ "token": token })));
    assert_eq!(again.status, 401, "a revoked token cannot log in: {}", again.body);
}

#[test]
fn the_page_and_its_files_are_served_from_the_binary_under_a_strict_content_security_policy() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let page = call("GET", &control_plane.rest_url("/"), &[], None);
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"), "{}", page.header("content-type"));
    let csp = page.header("content-security-policy");
    assert!(csp.starts_with("default-src 'self'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let assets: Vec<&str> = page.body.split(['"', '\'']).filter(|part| part.starts_with("/ui/assets/")).collect();
    assert!(assets.len() >= 3, "the page names its files: {}", page.body);
    for asset in assets {
        let answer = call("GET", &control_plane.rest_url(asset), &[], None);
        assert_eq!(answer.status, 200, "{asset}");
        assert!(!answer.header("content-security-policy").is_empty(), "{asset}");
        for external in ["https://", "//cdn", "googleapis", "@import"] {
            assert!(!answer.body.contains(external), "{asset} names {external}");
        }
    }
    // app.js imports modules the server also serves.
    let app = call("GET", &control_plane.rest_url("/ui/assets/app.js"), &[], None);
    assert!(app.header("content-type").starts_with("text/javascript"));
    for import in app.body.split("from \"./").skip(1).map(|rest| rest.split('"').next().unwrap_or_default()) {
        assert_eq!(call("GET", &control_plane.rest_url(&format!("/ui/assets/{import}")), &[], None).status, 200, "{import}");
    }
    let missing = call("GET", &control_plane.rest_url("/ui/assets/nope.js"), &[], None);
    assert_eq!(missing.status, 404);
    assert!(missing.header("content-type").starts_with("application/problem+json"));
}
