//! Registry credentials through the whole system: an admin stores the credential of a
//! registry that wants a password (REST and CLI), the agent learns it over its session
//! and pulls a private image with it; nobody reads the password back (listings, events,
//! logs, the database files); deployers and viewers cannot set credentials; bad registry
//! names are refused naming the field; after a logout a new pull fails as unauthorized.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use diplo_tests::private_registry::PrivateRegistry;
use diplo_tests::unique_name as unique;
use diplo_tests::{Binary, ControlPlane, ControlPlaneOptions, RemoveAllContainersOnDrop, http_request};
use serde_json::{Value, json};

/// Pushes the shared busybox to `registry` under a fresh tag; returns the reference.
fn private_image(registry: &mut PrivateRegistry, case: &str) -> String {
    registry.push(&unique(case)).unwrap_or_else(|e| panic!("cannot push to the private registry: {e:#}"))
}

fn api_token(control_plane: &ControlPlane, role: &str) -> String {
    let name = unique(&format!("reg-{role}"));
    control_plane.cli_ok(&["api-token", "create", "--role", role, "--name", &name]).trim().to_owned()
}

fn call(control_plane: &ControlPlane, method: &str, path: &str, token: &str, body: Option<Value>) -> diplo_tests::HttpResponse {
    http_request(method, &control_plane.rest_url(path), Some(&format!("Bearer {token}")), body).expect("REST call")
}

/// `diplo registry login REGISTRY -u USER --password-stdin` with `password` on stdin.
fn cli_login(control_plane: &ControlPlane, registry: &str, username: &str, password: &str) -> std::process::Output {
    let mut child = Command::new(diplo_tests::binary(Binary::Cli))
        .arg("--config")
        .arg(control_plane.file("cli.toml"))
        .args(["registry", "login", registry, "-u", username, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run diplo");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("write the password");
    child.wait_with_output().expect("diplo ran")
}

/// Fails when a file under `dir` contains `secret`.
fn assert_nowhere_in_files(dir: &std::path::Path, secret: &str) {
    let mut paths = vec![dir.to_owned()];
    let mut scanned = 0;
    while let Some(path) = paths.pop() {
        if path.is_dir() {
            paths.extend(std::fs::read_dir(&path).expect("data directory").flatten().map(|entry| entry.path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            scanned += 1;
            let found = bytes.windows(secret.len()).any(|window| window == secret.as_bytes());
            assert!(!found, "{} holds the secret in clear", path.display());
        }
    }
    assert!(scanned > 0, "no file under {}", dir.display());
}

#[test]
fn a_private_image_runs_with_the_credential_an_admin_stored_and_the_password_never_shows() {
    let mut registry = match PrivateRegistry::start() {
        Ok(registry) => registry,
        Err(err) => return diplo_tests::skip_or_fail(&format!("no private registry: {err:#}")),
    };
    let first = private_image(&mut registry, "e2e");
    let password = registry.password.clone();

    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (agent, node) = control_plane.start_ready_agent("node-reg", Some(&token));
    // Declared after the agent: dropped (and run) while the agent still runs.
    let _cleanup = RemoveAllContainersOnDrop(&control_plane);
    let available: Vec<String> =
        node["available"].as_array().expect("available").iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect();
    let runtime = if available.iter().any(|r| r == "docker") { "docker" } else { available.first().map_or("docker", String::as_str) };
    let admin = control_plane.admin_token();
    let deployer = api_token(&control_plane, "deployer");
    let viewer = api_token(&control_plane, "viewer");
    let login = json!({"registry": registry.addr, "username": registry.username, "password": password});

    // Only admins store credentials; deployers may list them, viewers may not.
    for (role, token) in [("deployer", &deployer), ("viewer", &viewer)] {
        let refused = call(&control_plane, "POST", "/api/v1/registries", token, Some(login.clone()));
        assert_eq!(refused.status, 403, "{role} login: {}", refused.body);
        let refused = call(&control_plane, "DELETE", &format!("/api/v1/registries/{}", registry.addr), token, None);
        assert_eq!(refused.status, 403, "{role} logout: {}", refused.body);
    }
    assert_eq!(call(&control_plane, "GET", "/api/v1/registries", &viewer, None).status, 403);
    assert_eq!(call(&control_plane, "GET", "/api/v1/registries", &deployer, None).status, 200);

    // Bad input names the field.
    for bad in ["https://r.example", "r.example/path", "", "r.example:99999", "a b"] {
        let body = json!({"registry": bad, "username": "u", "password": "p"});
        let refused = call(&control_plane, "POST", "/api/v1/registries", &admin, Some(body));
        assert_eq!(refused.status, 400, "{bad:?}: {}", refused.body);
        assert!(refused.body.contains("registry"), "{bad:?}: {}", refused.body);
    }
    for (field, body) in [
        ("username", json!({"registry": registry.addr, "username": "", "password": "p"})),
        ("password", json!({"registry": registry.addr, "username": "u", "password": ""})),
        ("password", json!({"registry": registry.addr, "username": "u", "password": 12345})),
    ] {
        let refused = call(&control_plane, "POST", "/api/v1/registries", &admin, Some(body));
        assert_eq!(refused.status, 400, "{field}: {}", refused.body);
        assert!(refused.body.contains(field), "{field}: {}", refused.body);
        assert!(!refused.body.contains("12345"), "the value is echoed: {}", refused.body);
    }

    // An admin logs in over REST (201), again (200: replaced), and with the CLI.
    let stored = call(&control_plane, "POST", "/api/v1/registries", &admin, Some(login.clone()));
    assert_eq!(stored.status, 201, "{}", stored.body);
    let replaced = call(&control_plane, "POST", "/api/v1/registries", &admin, Some(login.clone()));
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let cli = cli_login(&control_plane, &registry.addr, &registry.username, &password);
    assert!(cli.status.success(), "diplo registry login: {}", String::from_utf8_lossy(&cli.stderr));

    // Listed without the password, over REST and the CLI.
    let listed = call(&control_plane, "GET", "/api/v1/registries", &admin, None);
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(!listed.body.contains(&password), "{}", listed.body);
    let entries = listed.json();
    let entry = entries.as_array().and_then(|list| list.iter().find(|e| e["registry"] == registry.addr.as_str())).expect("listed");
    assert_eq!(entry["username"], registry.username.as_str());
    assert!(entry.get("password").is_none(), "{entry}");
    let table = control_plane.cli_ok(&["registry", "ls", "-o", "table"]);
    assert!(table.contains(&registry.addr) && !table.contains(&password), "{table}");

    // A container from the private image runs on the agent that was connected when the
    // credential was stored: it learnt it over its session.
    let node_id = node["id"].as_str().expect("node id").to_owned();
    let run = |image: &str, node: &str| {
        let body = json!({"image": image, "name": unique("private"), "runtime_type": runtime, "node": node,
                          "command": ["sleep", "3600"], "restart_policy": "no"});
        call(&control_plane, "POST", "/api/v1/containers", &admin, Some(body))
    };
    let created = run(&first, &node_id);
    assert_eq!(created.status, 201, "create from {first} on {runtime}: {}", created.body);
    assert_eq!(created.json()["status"], "running", "{}", created.body);

    // An agent that connects later gets the credential right after its welcome.
    let later = private_image(&mut registry, "welcome");
    let (late_agent, late_node) = control_plane.start_ready_agent("node-reg-late", Some(&token));
    let _cleanup_late = RemoveAllContainersOnDrop(&control_plane);
    let late_id = late_node["id"].as_str().expect("node id").to_owned();
    let created_late = run(&later, &late_id);
    assert_eq!(created_late.status, 201, "create from {later} on the late agent: {}", created_late.body);
    assert_eq!(created_late.json()["node_id"], late_id.as_str(), "{}", created_late.body);

    // The database holds the credential sealed with the data directory's key file: no
    // file of the control plane holds the password in clear.
    assert_nowhere_in_files(control_plane.data_dir(), &password);
    assert!(control_plane.file("registry-credentials.key").exists());

    // After a logout, a pull of an image not cached anywhere fails as unauthorized.
    let second = private_image(&mut registry, "after-logout");
    let logout = call(&control_plane, "DELETE", &format!("/api/v1/registries/{}", registry.addr), &admin, None);
    assert_eq!(logout.status, 204, "{}", logout.body);
    let again = call(&control_plane, "DELETE", &format!("/api/v1/registries/{}", registry.addr), &admin, None);
    assert_eq!(again.status, 404, "{}", again.body);
    let refused = call(
        &control_plane,
        "POST",
        "/api/v1/containers",
        &admin,
        Some(
            json!({"image": second, "name": unique("private"), "runtime_type": runtime, "command": ["sleep", "3600"], "restart_policy": "no"}),
        ),
    );
    assert!(!(200..300).contains(&refused.status), "created without a credential: {}", refused.body);
    assert!(refused.body.to_ascii_lowercase().contains("unauthorized"), "{}", refused.body);
    assert!(refused.body.contains("private/bb"), "names the image: {}", refused.body);

    // The password is in no event, no log line, no answer.
    let events = control_plane.cli_ok(&["events", "-o", "table"]);
    assert!(events.contains("registry.login") && events.contains("registry.logout"), "{events}");
    assert!(!events.contains(&password), "{events}");
    assert!(!control_plane.logs().contains(&password), "the control plane logged the password");
    assert!(!agent.logs().contains(&password), "the agent logged the password");
    assert!(!late_agent.logs().contains(&password), "the late agent logged the password");
    assert!(!refused.body.contains(&password) && !created.body.contains(&password));
}
