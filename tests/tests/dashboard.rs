//! The web dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, `scripts/setup-dashboard`) against a control plane with its local agent.
//! An admin logs in, sees the local node with its runtimes, deploys an image from the
//! form, watches it reach running without the page reloading, reads its logs and deletes
//! it; a viewer sees no write controls and a forged write with its cookie is refused by
//! the API. Every page is saved as a screenshot at desktop (1280×800) and phone (390×844)
//! widths under `<target>/dashboard-screenshots/`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::{
    ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, Process, RemoveAllContainersOnDrop, free_port, skip_or_fail, target_dir,
    unique_name, wait_until,
};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const DESKTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (390, 844);
const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

/// chromedriver and the Chromium it starts. Dropping it kills chromedriver, then every
/// process started with this browser's own profile directory (a failing test leaves no
/// browser behind).
struct Browser {
    driver: Process,
    profile: tempfile::TempDir,
    port: u16,
}

impl Browser {
    /// Starts chromedriver; `None` (after [`skip_or_fail`]) when it is not installed.
    fn start() -> Option<Browser> {
        let installed = ["chromedriver", "chromium"]
            .iter()
            .all(|tool| Command::new(tool).arg("--version").output().is_ok_and(|output| output.status.success()));
        if !installed {
            skip_or_fail("chromium and chromedriver are not installed (scripts/setup-dashboard)");
            return None;
        }
        let profile = tempfile::Builder::new().prefix("diplo-dashboard-browser-").tempdir().expect("a profile directory");
        let port = free_port();
        let mut command = Command::new("chromedriver");
        command.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
        let driver = Process::spawn("chromedriver", command, &profile.path().join("chromedriver"));
        let browser = Browser { driver, profile, port };
        wait_until("chromedriver to listen", Duration::from_secs(20), Duration::from_millis(100), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).map(drop).map_err(|e| e.to_string())
        });
        Some(browser)
    }

    /// A new headless browser session at desktop size.
    async fn session(&self) -> Client {
        let data_dir = self.profile.path().join(format!("profile-{}", unique_name("s")));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    // Chromium's sandbox cannot start as root (tests run as root in CI): the
                    // pages it loads here are the dashboard's own.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--no-proxy-server",
                    format!("--user-data-dir={}", data_dir.display()),
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else { unreachable!("an object") };
        let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities);
        builder
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", self.driver.logs()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.driver.kill();
        // Chromium outlives a killed chromedriver: end the processes of this profile only.
        let marker = self.profile.path().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else { return };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
            }
        }
    }
}

/// Where screenshots go: `<target>/dashboard-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(target_dir).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Saves the page at desktop and phone widths as `<name>-desktop.png` / `<name>-phone.png`,
/// then goes back to desktop width.
async fn screenshots(client: &Client, name: &str) {
    let dir = screenshot_dir();
    for (label, (width, height)) in [("phone", PHONE), ("desktop", DESKTOP)] {
        client.set_window_size(width, height).await.expect("window size");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = dir.join(format!("{name}-{label}.png"));
        std::fs::write(&path, &png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Polls `check` (a script returning a value, or null while not there yet) until it
/// returns something that is not null or false.
async fn wait_for(client: &Client, what: &str, timeout: Duration, script: &str) -> Value {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        match client.execute(script, vec![]).await {
            Ok(value) if !value.is_null() && value != Value::Bool(false) => return value,
            Ok(value) => last = value,
            Err(e) => last = Value::String(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let page = client.execute("return document.body.innerText", vec![]).await.unwrap_or_default();
    panic!("timed out after {timeout:?} waiting for {what} (last: {last})\npage:\n{page}");
}

/// Logs in through the login form with `token`; waits for the cluster view.
async fn log_in(client: &Client, control_plane: &ControlPlane, token: &str) {
    client.goto(&control_plane.rest_url("/")).await.expect("the dashboard");
    wait_for(client, "the login form", Duration::from_secs(20), "return !document.getElementById('login').hidden || null").await;
    screenshots(client, "login").await;
    client.find(Locator::Id("login-token")).await.expect("token field").send_keys(token).await.expect("typing");
    client.find(Locator::Css("#login-form button[type=submit]")).await.expect("log in button").click().await.expect("click");
    wait_for(client, "the cluster view", Duration::from_secs(20), "return document.querySelector('header.top').hidden ? null : true").await;
}

/// Goes to a view by its fragment (`#/deployments`) as a click on a link would.
async fn open(client: &Client, fragment: &str) {
    client.execute("location.hash = arguments[0]", vec![json!(fragment)]).await.expect("navigation");
}

/// The marker set on `window` after login: still there means the page never reloaded.
async fn assert_not_reloaded(client: &Client, marker: &str) {
    let now = client.execute("return window.diploTestMarker || null", vec![]).await.expect("script");
    assert_eq!(now, json!(marker), "the page reloaded (the window marker is gone)");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_deploys_from_the_form_watches_it_run_without_reloading_reads_its_logs_and_deletes_it() {
    let Some(browser) = Browser::start() else { return };
    let control_plane = dev_control_plane();
    let _containers = RemoveAllContainersOnDrop(&control_plane);
    let name = unique_name("dash");
    let _deployment = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let node = control_plane.rest_json("/api/v1/nodes").as_array().and_then(|nodes| nodes.first().cloned()).expect("the local node");

    let client = browser.session().await;
    log_in(&client, &control_plane, &control_plane.admin_token()).await;
    let marker = unique_name("page");
    client.execute("window.diploTestMarker = arguments[0]", vec![json!(marker)]).await.expect("marker");

    // The local node's card: its name, platform, status, and runtimes with the preferred one marked.
    let card = wait_for(
        &client,
        "the local node's card",
        Duration::from_secs(20),
        "const card = document.querySelector('article.node'); if (!card) return null; \
         return { name: card.dataset.node, text: card.innerText, ready: card.dataset.status === 'ready', \
                  runtimes: [...card.querySelectorAll('.runtime.up')].map(r => r.dataset.runtime), \
                  preferred: [...card.querySelectorAll('.runtime.preferred')].map(r => r.dataset.runtime), \
                  admin: card.querySelectorAll('.actions button').length };",
    )
    .await;
    assert_eq!(card["name"], node["name"], "{card}");
    assert_eq!(card["ready"], true, "{card}");
    let available: Vec<Value> = node["available"].as_array().cloned().unwrap_or_default();
    assert!(!available.is_empty(), "the local node offers no runtime: {node}");
    assert_eq!(card["runtimes"].as_array().cloned().unwrap_or_default().len(), available.len(), "{card} vs {node}");
    for runtime in &available {
        assert!(card["runtimes"].as_array().is_some_and(|r| r.contains(runtime)), "{runtime} missing: {card}");
    }
    assert_eq!(card["preferred"], json!([node["preferred"].clone()]), "{card}");
    let text = card["text"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("{}/{}", node["os"].as_str().unwrap_or("?"), node["arch"].as_str().unwrap_or("?"))), "{text}");
    assert!(text.contains("Last heartbeat"), "{text}");
    assert_eq!(card["admin"], 3, "an admin sees cordon, drain and remove: {card}");
    screenshots(&client, "cluster").await;

    // Deploy from the form.
    open(&client, "#/deploy").await;
    wait_for(&client, "the deploy form", Duration::from_secs(10), "return document.getElementById('deploy-form')").await;
    screenshots(&client, "deploy").await;
    let fill = |id: &'static str, value: String| {
        let client = client.clone();
        async move {
            let field = client.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("#{id}: {e}"));
            field.clear().await.expect("clear");
            field.send_keys(&value).await.expect("typing");
        }
    };
    fill("deploy-name", name.clone()).await;
    fill("deploy-source", IMAGE.to_owned()).await;
    fill("deploy-replicas", "1".to_owned()).await;
    fill("deploy-command", "sh -c 'echo dashboard-says-$GREETING; sleep 3600'".to_owned()).await;
    fill("deploy-env", "GREETING=hello".to_owned()).await;
    client.find(Locator::Id("deploy-submit")).await.expect("deploy button").click().await.expect("click");

    // The detail view follows it to running, live.
    wait_for(
        &client,
        "the deployment to run",
        Duration::from_secs(180),
        "const s = document.getElementById('deployment-status'); return s && s.textContent === 'running' ? true : null",
    )
    .await;
    assert_not_reloaded(&client, &marker).await;
    let fragment = client.execute("return location.hash", vec![]).await.expect("hash");
    assert_eq!(fragment, json!(format!("#/deployment/{name}")));
    let deployed = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
    assert_eq!(deployed["status"], "running", "{deployed}");

    // Its logs.
    wait_for(&client, "a logs button", Duration::from_secs(60), "return document.querySelector('.logs-button')").await;
    client.find(Locator::Css(".logs-button")).await.expect("logs button").click().await.expect("click");
    wait_for(
        &client,
        "the container's output in the logs",
        Duration::from_secs(60),
        "return document.getElementById('logs').textContent.includes('dashboard-says-hello') || null",
    )
    .await;
    wait_for(
        &client,
        "its events",
        Duration::from_secs(30),
        "return document.querySelectorAll('#deployment-events li').length > 0 || null",
    )
    .await;
    screenshots(&client, "deployment").await;

    // The list shows it with its replicas and instance.
    open(&client, "#/deployments").await;
    let row = wait_for(
        &client,
        "the deployment's row",
        Duration::from_secs(20),
        &format!("const r = document.querySelector('tr[data-deployment=\"{name}\"]'); return r ? r.innerText : null"),
    )
    .await;
    let row = row.as_str().unwrap_or_default().to_owned();
    assert!(row.contains("1/1") && row.contains("running") && row.contains(node["name"].as_str().unwrap_or("?")), "{row}");
    screenshots(&client, "deployments").await;

    // The other pages render (stacks: its list, or the empty state).
    for (fragment, ready, name) in [
        ("#/builds", "return document.querySelector('table.list, .empty') || null", "builds"),
        ("#/stacks", "return document.querySelector('#stacks .empty, #stacks li') || null", "stacks"),
        ("#/tokens", "return document.querySelector('tr[data-token]') || null", "tokens"),
    ] {
        open(&client, fragment).await;
        wait_for(&client, fragment, Duration::from_secs(20), ready).await;
        screenshots(&client, name).await;
    }

    // Delete it from its page (the confirmation answered yes).
    open(&client, &format!("#/deployment/{name}")).await;
    wait_for(&client, "the delete button", Duration::from_secs(20), "return document.getElementById('delete-deployment')").await;
    client.execute("window.confirm = () => true", vec![]).await.expect("confirm");
    client.find(Locator::Id("delete-deployment")).await.expect("delete button").click().await.expect("click");
    wait_until("the deployment to be gone", Duration::from_secs(120), Duration::from_millis(500), || {
        let answer =
            control_plane.rest_get(&format!("/api/v1/deployments/{name}"), Some(&format!("Bearer {}", control_plane.admin_token())));
        if answer.status == 404 { Ok(()) } else { Err(answer.body) }
    });
    wait_for(
        &client,
        "the row to go",
        Duration::from_secs(60),
        &format!("return location.hash === '#/deployments' && !document.querySelector('tr[data-deployment=\"{name}\"]') || null"),
    )
    .await;
    assert_not_reloaded(&client, &marker).await;
    client.close().await.expect("closing the browser session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_sees_no_write_controls_and_a_forged_write_with_its_cookie_is_refused() {
    let Some(browser) = Browser::start() else { return };
    let control_plane = dev_control_plane();
    let name = unique_name("dash-view");
    let _deployment = DeleteDeploymentOnDrop(&control_plane, name.clone());
    // A deployment with no replica: its page has a delete button for deployers.
    let made = control_plane.rest("POST", "/api/v1/deployments", Some(json!({"name": name, "image": IMAGE, "replicas": 0})));
    assert!(made.status == 201, "{}", made.body);
    let created = control_plane.rest("POST", "/api/v1/api-tokens", Some(json!({"name": "dash-viewer", "role": "viewer", "ttl": "1h"})));
    assert_eq!(created.status, 201, "{}", created.body);
    let viewer_token = created.json()["token"].as_str().expect("token").to_owned();

    let client = browser.session().await;
    log_in(&client, &control_plane, &viewer_token).await;
    wait_for(&client, "the node card", Duration::from_secs(20), "return document.querySelector('article.node')").await;
    let controls = client
        .execute(
            "return { nav: [...document.querySelectorAll('nav li')].filter(li => !li.hidden).map(li => li.innerText), \
                      buttons: [...document.querySelectorAll('#view button')].map(b => b.innerText), \
                      cookie: document.cookie }",
            vec![],
        )
        .await
        .expect("script");
    let nav = controls["nav"].as_array().cloned().unwrap_or_default();
    assert!(nav.contains(&json!("Cluster")) && !nav.contains(&json!("Deploy")) && !nav.contains(&json!("API tokens")), "{controls}");
    assert_eq!(controls["buttons"], json!([]), "a viewer sees no node action: {controls}");
    assert!(!controls["cookie"].as_str().unwrap_or_default().contains("diplo_session"), "the cookie is HttpOnly: {controls}");
    screenshots(&client, "cluster-viewer").await;

    open(&client, &format!("#/deployment/{name}")).await;
    wait_for(&client, "the deployment's page", Duration::from_secs(20), "return document.getElementById('deployment-status')").await;
    assert!(client.find(Locator::Id("delete-deployment")).await.is_err(), "a viewer sees a delete button");
    open(&client, "#/deploy").await;
    wait_for(&client, "the deploy view", Duration::from_secs(10), "return document.querySelector('#view .empty')").await;
    assert!(client.find(Locator::Id("deploy-form")).await.is_err(), "a viewer sees the deploy form");

    // The API refuses the viewer's writes: from the page without the CSRF token (as a
    // forged request would be), from the page with it (the role), and from elsewhere with
    // the stolen cookie and no token.
    let statuses = client
        .execute_async(
            "const done = arguments[arguments.length - 1]; const name = arguments[0]; \
             (async () => { \
               const session = await (await fetch('/ui/session')).json(); \
               const url = '/api/v1/deployments/' + name; \
               const forged = await fetch(url, { method: 'DELETE' }); \
               const role = await fetch(url, { method: 'DELETE', headers: { 'X-CSRF-Token': session.csrf_token } }); \
               return { forged: forged.status, role: role.status, forgedBody: await forged.text(), roleBody: await role.text() }; \
             })().then(done, (e) => done({ error: String(e) }));",
            vec![json!(name)],
        )
        .await
        .expect("script");
    assert_eq!(statuses["forged"], 403, "{statuses}");
    assert!(statuses["forgedBody"].as_str().unwrap_or_default().contains("X-CSRF-Token"), "{statuses}");
    assert_eq!(statuses["role"], 403, "{statuses}");
    assert!(statuses["roleBody"].as_str().unwrap_or_default().contains("role viewer"), "{statuses}");
    let cookie = client.get_named_cookie("diplo_session").await.expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let stolen = format!("diplo_session={}", cookie.value());
    let forged = std::thread::spawn({
        let url = control_plane.rest_url(&format!("/api/v1/deployments/{name}"));
        move || {
            let client = reqwest::blocking::Client::builder().no_proxy().build().expect("client");
            client.delete(url).header("cookie", stolen).send().map(|r| r.status().as_u16()).map_err(|e| e.to_string())
        }
    })
    .join()
    .expect("thread");
    assert_eq!(forged, Ok(403));
    let still = control_plane.rest_json(&format!("/api/v1/deployments/{name}"));
    assert_eq!(still["name"], json!(name), "{still}");
    client.close().await.expect("closing the browser session");
}
