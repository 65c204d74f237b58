//! Stacks end to end on Docker and containerd: a two-service compose file (an httpd `web`
//! with a health check, and a `client` that waits for `web` to be healthy and fetches
//! `http://web:8080/`) starts in dependency order and resolves the service name (a shared
//! network on Docker, `/etc/hosts` entries on containerd); a bad file is refused with 400
//! naming its line and key, and nothing of it is created. The Croody compose file (six
//! services, health-gated dependencies, limits, a read-only gateway) runs on all four
//! runtimes.

use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::unique_name as unique;
use diplo_tests::{ControlPlane, ControlPlaneOptions, HttpResponse, docker_containers_of, http_request, wait_until};
use serde_json::Value;

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);

/// `POST /api/v1/stacks?name=NAME` with a YAML body.
fn post_yaml(control_plane: &ControlPlane, name: &str, yaml: &str) -> HttpResponse {
    post_yaml_query(control_plane, &format!("name={name}"), yaml)
}

/// `POST /api/v1/stacks?QUERY` with a YAML body.
fn post_yaml_query(control_plane: &ControlPlane, query: &str, yaml: &str) -> HttpResponse {
    let url = control_plane.rest_url(&format!("/api/v1/stacks?{query}"));
    let authorization = format!("Bearer {}", control_plane.admin_token());
    let body = yaml.to_owned();
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).no_proxy().build().expect("client");
        let response = client
            .post(&url)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(body)
            .send()
            .expect("POST /api/v1/stacks");
        let status = response.status().as_u16();
        HttpResponse { status, body: response.text().unwrap_or_default() }
    })
    .join()
    .expect("the HTTP thread panicked")
}

fn service<'a>(stack: &'a Value, name: &str) -> &'a Value {
    stack["services"].as_array().and_then(|services| services.iter().find(|s| s["name"] == name)).unwrap_or(&Value::Null)
}

/// Deletes the stack (REST) when dropped, waits for its deployments to go, then
/// force-removes what is left on Docker (containers, the stack's network). Never panics.
struct DeleteStackOnDrop<'a>(&'a ControlPlane, String, Vec<String>);

impl Drop for DeleteStackOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.0.try_admin_token() {
            let authorization = format!("Bearer {token}");
            let _ = http_request("DELETE", &self.0.rest_url(&format!("/api/v1/stacks/{}", self.1)), Some(&authorization), None);
            let deadline = Instant::now() + Duration::from_secs(30);
            for deployment in &self.2 {
                let url = self.0.rest_url(&format!("/api/v1/deployments/{deployment}"));
                while Instant::now() < deadline
                    && !http_request("GET", &url, Some(&authorization), None).is_ok_and(|response| response.status == 404)
                {
                    std::thread::sleep(POLL);
                }
            }
        }
        for deployment in &self.2 {
            for id in diplo_tests::try_docker_containers_of(deployment).unwrap_or_default() {
                let _ = Command::new("docker").args(["rm", "-f", &id]).output();
            }
        }
        // By id: a name may have been taken twice.
        let filter = format!("name=^diplo-{}$", self.1);
        if let Ok(listed) = Command::new("docker").args(["network", "ls", "-q", "--filter", &filter]).output() {
            for id in String::from_utf8_lossy(&listed.stdout).lines() {
                let _ = Command::new("docker").args(["network", "rm", id]).output();
            }
        }
    }
}

#[test]
fn a_stack_starts_in_dependency_order_and_its_services_reach_each_other_by_name() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(6)));
    let token = control_plane.join_token(&[]);
    let (_agent, _) = control_plane.start_ready_agent_with_env(&unique("stack-node"), Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let stack = unique("st");
    let (web, client) = (format!("{stack}-web"), format!("{stack}-client"));
    let _cleanup = DeleteStackOnDrop(&control_plane, stack.clone(), vec![web.clone(), client.clone()]);

    // web serves only after a few seconds; client fetches it by its service name.
    let compose = format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "sleep 4; mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 1s
      retries: 60
  client:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "wget -q -O - http://web:8080/ && exec sleep 3600"]
    depends_on:
      web:
        condition: service_healthy
"#
    );
    let answer = post_yaml(&control_plane, &stack, &compose);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let deployed = answer.json();
    assert_eq!(service(&deployed, "client")["status"], "waiting", "client waits for web: {deployed}");

    // While web is not healthy, client has no deployment.
    let healthy_at = wait_until("web to report healthy", Duration::from_secs(90), POLL, || {
        let stack = control_plane.rest_json(&format!("/api/v1/stacks/{stack}"));
        let (web_state, client_state) = (service(&stack, "web"), service(&stack, "client"));
        if web_state["healthy"].as_u64() == Some(1) {
            return Ok(Instant::now());
        }
        assert_eq!(client_state["status"], "waiting", "client started before web was healthy: {stack}");
        assert_eq!(control_plane.rest("GET", &format!("/api/v1/deployments/{client}"), None).status, 404, "{stack}");
        Err(format!("{stack}"))
    });
    let stack_view = wait_until("client to run", Duration::from_secs(60), POLL, || {
        let view = control_plane.rest_json(&format!("/api/v1/stacks/{stack}"));
        if service(&view, "client")["running"].as_u64() == Some(1) { Ok(view) } else { Err(format!("{view}")) }
    });
    assert!(healthy_at.elapsed() < Duration::from_secs(60), "{stack_view}");
    assert_eq!(service(&stack_view, "client")["deployment"], client.as_str());

    // The client fetched web's page through the name `web`.
    let containers = docker_containers_of(&client);
    assert_eq!(containers.len(), 1, "{containers:?}");
    let logs = wait_until("the client's fetch", Duration::from_secs(30), POLL, || {
        let output = Command::new("docker").args(["logs", &containers[0]]).output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
        if text.contains("hello-from-web") { Ok(text) } else { Err(text) }
    });
    assert!(logs.contains("hello-from-web"), "{logs}");
    let network =
        Command::new("docker").args(["inspect", "-f", "{{json .NetworkSettings.Networks}}", &containers[0]]).output().expect("docker");
    let networks = String::from_utf8_lossy(&network.stdout);
    assert!(networks.contains(&format!("diplo-{stack}")), "on the stack's network: {networks}");
    let same_name =
        Command::new("docker").args(["network", "ls", "-q", "--filter", &format!("name=^diplo-{stack}$")]).output().expect("docker");
    assert_eq!(String::from_utf8_lossy(&same_name.stdout).lines().count(), 1, "one network per stack");
}

#[test]
fn a_bad_compose_file_is_refused_naming_line_and_key_and_nothing_is_created() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(6)));
    let stack = unique("bad");
    let cases: [(&str, &str, &str); 3] = [
        // The first service is fine; the second asks for what Diplo does not do.
        ("services:\n  a:\n    image: busybox\n  b:\n    image: busybox\n    privileged: true\n", "line 6", "services.b.privileged"),
        ("services:\n  a:\n    image: busybox\n    depends_on: [b]\n  b:\n    image: busybox\n    depends_on: [a]\n", "line 4", "cycle"),
        ("services:\n  a:\n    image: busybox\n    volumes: [\"./src:/app\"]\n", "line 4", "services.a.volumes"),
    ];
    for (yaml, line, key) in cases {
        let answer = post_yaml(&control_plane, &stack, yaml);
        assert_eq!(answer.status, 400, "{yaml}\n{}", answer.body);
        let problem = answer.json();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(line) && detail.contains(key), "{yaml}\n{problem}");
        assert_eq!(problem["field"], "compose", "{problem}");
    }
    assert_eq!(control_plane.rest("GET", &format!("/api/v1/stacks/{stack}"), None).status, 404);
    assert_eq!(control_plane.rest_json("/api/v1/stacks"), serde_json::json!([]));
    for service in ["a", "b"] {
        assert_eq!(control_plane.rest("GET", &format!("/api/v1/deployments/{stack}-{service}"), None).status, 404, "{service}");
    }
    assert_eq!(control_plane.rest_json("/api/v1/deployments"), serde_json::json!([]), "no deployment was created");
}

#[test]
fn the_cli_deploys_a_stack_reads_env_files_and_a_second_deploy_changes_only_what_changed() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(6)));
    let token = control_plane.join_token(&[]);
    let (_agent, _) = control_plane.start_ready_agent_with_env(&unique("stack-cli"), Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let stack = unique("cli");
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| format!("{stack}-{s}")).collect();
    let _cleanup = DeleteStackOnDrop(&control_plane, stack.clone(), names.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compose.yml");
    let file_arg = file.to_string_lossy().into_owned();
    std::fs::write(dir.path().join("b.env"), "GREETING=from-env-file\n").expect("write");
    let version = |b_value: &str, with_c: bool| {
        let c = if with_c { format!("  c:\n    image: {IMAGE}\n    command: [sleep, \"3600\"]\n") } else { String::new() };
        format!(
            "services:\n  a:\n    image: {IMAGE}\n    command: [sleep, \"3600\"]\n  b:\n    image: {IMAGE}\n    command: [sleep, \"3600\"]\n    env_file: b.env\n    environment:\n      VALUE: {b_value}\n{c}"
        )
    };

    std::fs::write(&file, version("one", true)).expect("write");
    let deployed: Value =
        serde_json::from_str(&control_plane.cli_ok(&["-o", "json", "stack", "deploy", "-f", &file_arg, &stack])).expect("JSON");
    assert_eq!(deployed["services"].as_array().map(Vec::len), Some(3), "{deployed}");
    wait_until("every service to run", Duration::from_secs(60), POLL, || {
        let view: Value = serde_json::from_str(&control_plane.cli_ok(&["-o", "json", "stack", "ps", &stack])).map_err(|e| e.to_string())?;
        let all = ["a", "b", "c"].iter().all(|s| service(&view, s)["running"].as_u64() == Some(1));
        if all { Ok(()) } else { Err(format!("{view}")) }
    });

    let b = docker_containers_of(&format!("{stack}-b"));
    let env = Command::new("docker").args(["inspect", "-f", "{{json .Config.Env}}", &b[0]]).output().expect("docker inspect");
    let env = String::from_utf8_lossy(&env.stdout);
    assert!(env.contains("GREETING=from-env-file") && env.contains("VALUE=one"), "the env_file was read next to the compose file: {env}");

    // b changes, a does not, c is gone.
    std::fs::write(&file, version("two", false)).expect("write");
    control_plane.cli_ok(&["stack", "deploy", "-f", &file_arg, &stack]);
    let revision = |service: &str| control_plane.rest_json(&format!("/api/v1/deployments/{stack}-{service}"))["revision"].as_u64();
    assert_eq!(revision("a"), Some(1), "an unchanged service keeps its revision");
    assert_eq!(revision("b"), Some(2), "a changed service gets a new revision");
    wait_until("c to be removed", Duration::from_secs(60), POLL, || {
        let status = control_plane.rest("GET", &format!("/api/v1/deployments/{stack}-c"), None).status;
        if status == 404 { Ok(()) } else { Err(status.to_string()) }
    });
    let listed: Value = serde_json::from_str(&control_plane.cli_ok(&["-o", "json", "stack", "ls"])).expect("JSON");
    assert_eq!(listed[0]["name"], stack.as_str(), "{listed}");
    assert_eq!(listed[0]["services"].as_array().map(Vec::len), Some(2), "{listed}");

    control_plane.cli_ok(&["stack", "rm", &stack]);
    for name in &names {
        wait_until(&format!("{name} to be removed"), Duration::from_secs(60), POLL, || {
            let status = control_plane.rest("GET", &format!("/api/v1/deployments/{name}"), None).status;
            if status == 404 { Ok(()) } else { Err(status.to_string()) }
        });
    }
    assert!(!control_plane.cli(&["stack", "ps", &stack]).status.success(), "the stack is gone");
}

/// The ids of the containers of `deployment` as the control plane lists them.
fn containers_of(control_plane: &ControlPlane, deployment: &str) -> Vec<String> {
    let listed = control_plane.rest_json("/api/v1/containers");
    let prefix = format!("{deployment}-");
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|name| name.starts_with(&prefix)))
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect()
}

/// Runs `argv` in container `id` through REST: (exit code, stdout + stderr).
fn exec(control_plane: &ControlPlane, id: &str, argv: &[&str]) -> (i64, String) {
    let answer = control_plane.rest("POST", &format!("/api/v1/containers/{id}/exec"), Some(serde_json::json!({ "argv": argv })));
    assert_eq!(answer.status, 200, "{argv:?}: {}", answer.body);
    let output = answer.json();
    let text = format!("{}{}", output["stdout"].as_str().unwrap_or_default(), output["stderr"].as_str().unwrap_or_default());
    (output["exit_code"].as_i64().unwrap_or(-1), text)
}

#[test]
fn a_stack_runs_on_containerd_in_order_by_name_with_its_limits_in_force() {
    stack_with_limits_on("containerd");
}

#[test]
fn a_stack_runs_on_lxc_in_order_by_name_with_its_limits_in_force() {
    stack_with_limits_on("lxc");
}

/// A control plane and one agent offering only `runtime` (its name starts with `label`),
/// with the node's record; `None` (after a skip, or a failure under `CI=true`) when the
/// runtime is not available.
fn one_node_with(runtime: &str, label: &str) -> Option<(ControlPlane, diplo_tests::Agent, Value)> {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(6)));
    let token = control_plane.join_token(&[]);
    let (agent, node) =
        control_plane.start_ready_agent_with_env(&unique(&format!("{label}-{runtime}")), Some(&token), &[("DIPLO_RUNTIMES", runtime)]);
    let available: Vec<&str> = node["available"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !available.contains(&runtime) {
        diplo_tests::skip_or_fail(&format!("{runtime} is not available on the node: {available:?}"));
        return None;
    }
    Some((control_plane, agent, node))
}

/// The two-service stack on `runtime` (a runtime without network objects): dependency
/// order, names through `/etc/hosts`, one node, limits and read-only root in force.
fn stack_with_limits_on(runtime: &str) {
    let Some((control_plane, _agent, node)) = one_node_with(runtime, "stack") else { return };
    let stack = unique("sc");
    let (web, client) = (format!("{stack}-web"), format!("{stack}-client"));
    let _cleanup = DeleteStackOnDrop(&control_plane, stack.clone(), vec![web.clone(), client.clone()]);

    // web: read-only root (its page on a tmpfs), 64 MiB of memory; client fetches it by name.
    let compose = format!(
        r#"services:
  web:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "sleep 3; echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    read_only: true
    tmpfs: [/www]
    mem_limit: 64m
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 1s
      retries: 60
  client:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "until wget -q -O - http://web:8080/; do sleep 1; done; exec sleep 3600"]
    depends_on:
      web:
        condition: service_healthy
"#
    );
    let answer = post_yaml(&control_plane, &stack, &compose);
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(service(&answer.json(), "client")["status"], "waiting", "{}", answer.body);

    wait_until("web to report healthy", Duration::from_secs(120), POLL, || {
        let view = control_plane.rest_json(&format!("/api/v1/stacks/{stack}"));
        if service(&view, "web")["healthy"].as_u64() == Some(1) {
            return Ok(());
        }
        assert_eq!(control_plane.rest("GET", &format!("/api/v1/deployments/{client}"), None).status, 404, "client before web: {view}");
        Err(format!("{view}"))
    });
    let view = wait_until("client to run", Duration::from_secs(60), POLL, || {
        let view = control_plane.rest_json(&format!("/api/v1/stacks/{stack}"));
        if service(&view, "client")["running"].as_u64() == Some(1) { Ok(view) } else { Err(format!("{view}")) }
    });

    // Both on the one node, the client's deployment held there.
    let deployment = control_plane.rest_json(&format!("/api/v1/deployments/{client}"));
    assert_eq!(deployment["constraints"]["node"].as_str(), node["id"].as_str(), "{deployment}");

    // The client fetched web's page through the name `web` (its /etc/hosts entry).
    let clients = containers_of(&control_plane, &client);
    assert_eq!(clients.len(), 1, "{view}");
    let logs = wait_until("the client's fetch", Duration::from_secs(30), POLL, || {
        let answer = control_plane.rest("GET", &format!("/api/v1/containers/{}/logs", clients[0]), None);
        if answer.body.contains("hello-from-web") {
            return Ok(answer.body);
        }
        let (_, seen) = exec(&control_plane, &clients[0], &["sh", "-c", "cat /etc/hosts; wget -q -O - http://web:8080/"]);
        Err(format!("logs {:?}; in the client: {seen}", answer.body))
    });
    assert!(logs.contains("hello-from-web"), "{logs}");
    let (_, hosts) = exec(&control_plane, &clients[0], &["cat", "/etc/hosts"]);
    assert!(hosts.lines().any(|line| line.ends_with("\tweb")), "{hosts}");

    // web's limits hold inside its container.
    let webs = containers_of(&control_plane, &web);
    assert_eq!(webs.len(), 1, "{view}");
    let (code, memory) = exec(
        &control_plane,
        &webs[0],
        &["sh", "-c", "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"],
    );
    let memory = if runtime == "lxc" && code != 0 {
        // LXC mounts no cgroup filesystem in the container: read its cgroup on the host.
        let listed = control_plane.rest_json("/api/v1/containers");
        let pid = listed.as_array().into_iter().flatten().find(|c| c["id"] == webs[0].as_str()).and_then(|c| c["pid"].as_u64());
        host_cgroup_file(pid.expect("web's pid") as u32, "memory", "memory.limit_in_bytes", "memory.max")
    } else {
        assert_eq!(code, 0, "{memory}");
        memory
    };
    assert_eq!(memory.trim(), "67108864", "the memory limit: {memory}");
    let (code, touched) = exec(&control_plane, &webs[0], &["touch", "/written"]);
    assert_ne!(code, 0, "the root is read-only: {touched}");
    assert!(touched.to_lowercase().contains("read-only"), "{touched}");

    // The same file again changes nothing (the addresses and the node are the rollout's).
    let again = post_yaml(&control_plane, &stack, &compose);
    assert_eq!(again.status, 200, "{}", again.body);
    let revision = |deployment: &str| control_plane.rest_json(&format!("/api/v1/deployments/{deployment}"))["revision"].as_u64();
    assert_eq!((revision(&web), revision(&client)), (Some(1), Some(1)), "an unchanged file is no change");

    // web replaced at a new address: the client follows with a new revision naming it.
    let web_run = || {
        let listed = control_plane.rest_json("/api/v1/containers");
        let prefix = format!("{web}-");
        listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"].as_str().is_some_and(|name| name.starts_with(&prefix)) && c["status"] == "running")
            .find_map(|c| Some((c["id"].as_str()?.to_owned(), c["started_at"].as_str()?.to_owned(), c["ip_address"].as_str()?.to_owned())))
    };
    let (_, old_start, old_address) = web_run().expect("web runs with an address");
    let removed = control_plane.rest("DELETE", &format!("/api/v1/containers/{}?force=true", webs[0]), None);
    assert!(removed.status == 204 || removed.status == 200, "{}", removed.body);
    let (_, _, new_address) = wait_until("web to run again", Duration::from_secs(90), POLL, || match web_run() {
        Some(run) if run.1 != old_start => Ok(run),
        other => Err(format!("{other:?}")),
    });
    if new_address != old_address {
        wait_until("the client to name web's new address", Duration::from_secs(90), POLL, || {
            let mut hosts = Vec::new();
            for id in containers_of(&control_plane, &client) {
                let answer = control_plane.rest(
                    "POST",
                    &format!("/api/v1/containers/{id}/exec"),
                    Some(serde_json::json!({ "argv": ["cat", "/etc/hosts"] })),
                );
                if answer.status == 200 {
                    hosts.push(answer.json()["stdout"].as_str().unwrap_or_default().to_owned());
                }
            }
            let follows = revision(&client) == Some(2) && hosts.iter().any(|h| h.contains(&format!("{new_address}\tweb")));
            if follows { Ok(()) } else { Err(format!("revision {:?}, hosts {hosts:?}", revision(&client))) }
        });
    }
}

/// The file of a cgroup setting of process `pid`, read on the host: `controller/v1_file`
/// under its v1 hierarchy, or `v2_file` under its unified one.
fn host_cgroup_file(pid: u32, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
    let entries: Vec<(&str, &str)> =
        cgroups.lines().filter_map(|line| line.split_once(':').and_then(|(_, rest)| rest.split_once(':'))).collect();
    let file = match entries.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == controller)) {
        Some((_, path)) => format!("/sys/fs/cgroup/{controller}{path}/{v1_file}"),
        None => format!("/sys/fs/cgroup{}/{v2_file}", entries.iter().find(|(c, _)| c.is_empty()).map_or("", |(_, p)| p)),
    };
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"))
}

// ------------------------------------------------------------------ the Croody file

#[test]
fn the_croody_file_runs_as_a_stack_on_docker() {
    croody_on("docker");
}

#[test]
fn the_croody_file_runs_as_a_stack_on_containerd() {
    croody_on("containerd");
}

#[test]
fn the_croody_file_runs_as_a_stack_on_podman() {
    croody_on("podman");
}

#[test]
fn the_croody_file_runs_as_a_stack_on_lxc() {
    croody_on("lxc");
}

/// The Croody compose file of tests/fixtures (local images, test secrets) with its fixed
/// host ports moved to free ones, and the host port now in front of the gateway's port 80.
fn croody_compose() -> (String, u16) {
    let path = diplo_tests::repository_root().join("tests/fixtures/croody-compose.yml");
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut gateway_port = 0;
    for (fixed, container_port) in [("\"8080:80\"", "80"), ("\"8443:443\"", "443"), ("\"9090:9090\"", "9090")] {
        assert!(text.contains(fixed), "the fixture publishes {fixed}");
        let port = diplo_tests::free_port();
        if container_port == "80" {
            gateway_port = port;
        }
        text = text.replace(fixed, &format!("\"{port}:{container_port}\""));
    }
    (text, gateway_port)
}

/// A cgroup setting of the container `id`: read inside the container (cgroup v1 path,
/// then v2), or on the host through its main process when the runtime mounts no cgroup
/// filesystem inside (LXC).
fn cgroup_setting(control_plane: &ControlPlane, id: &str, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let script = format!("cat /sys/fs/cgroup/{controller}/{v1_file} 2>/dev/null || cat /sys/fs/cgroup/{v2_file}");
    let (code, inside) = exec(control_plane, id, &["sh", "-c", &script]);
    if code == 0 {
        return inside.trim().to_owned();
    }
    let listed = control_plane.rest_json("/api/v1/containers?limit=1000");
    let pid = listed.as_array().into_iter().flatten().find(|c| c["id"] == id).and_then(|c| c["pid"].as_u64());
    let pid = pid.unwrap_or_else(|| panic!("no pid for {id}, and inside: {inside}")) as u32;
    host_cgroup_file(pid, controller, v1_file, v2_file).trim().to_owned()
}

/// The Croody stack on `runtime`: its six services start in dependency order (db healthy
/// before croody is created, croody healthy before the gateway), the gateway reaches
/// croody by name, the limits, the read-only root with its tmpfs, the environment and the
/// named volume are in force inside the containers, and the gateway answers on its
/// published port.
fn croody_on(runtime: &str) {
    let Some((control_plane, _agent, _)) = one_node_with(runtime, "croody") else { return };
    let stack = unique("croody");
    let services = ["gateway", "croody", "db", "telemetry-gateway", "ids-ml", "robot-sim"];
    let deployment = |service: &str| format!("{stack}-{service}");
    let _cleanup = DeleteStackOnDrop(&control_plane, stack.clone(), services.iter().map(|s| deployment(s)).collect());
    let (compose, gateway_port) = croody_compose();

    let answer = post_yaml(&control_plane, &stack, &compose);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let deployed = answer.json();
    for waiting in ["croody", "gateway"] {
        assert_eq!(service(&deployed, waiting)["status"], "waiting", "{waiting} waits: {deployed}");
    }

    // Every look at the stack: a service exists only once what it needs is healthy.
    let mut created_order: Vec<String> = Vec::new();
    let view = wait_until("every Croody service to run", Duration::from_secs(240), POLL, || {
        let view = control_plane.rest_json(&format!("/api/v1/stacks/{stack}"));
        for (service_name, needs) in [("croody", "db"), ("gateway", "croody")] {
            if service(&view, service_name)["status"] != "waiting" {
                assert!(service(&view, needs)["healthy"].as_u64() >= Some(1), "{service_name} exists before {needs} is healthy: {view}");
            }
        }
        for name in services {
            if service(&view, name)["status"] != "waiting" && !created_order.iter().any(|seen| seen == name) {
                created_order.push(name.to_owned());
            }
        }
        let all = services.iter().all(|name| service(&view, name)["running"].as_u64() == Some(1));
        if all { Ok(view) } else { Err(format!("{view}")) }
    });
    let position = |name: &str| created_order.iter().position(|seen| seen == name).unwrap_or(usize::MAX);
    assert!(position("db") < position("croody") && position("croody") < position("gateway"), "created in {created_order:?}");
    assert!(service(&view, "croody")["healthy"].as_u64() == Some(1), "{view}");

    let one = |service_name: &str| {
        let ids = containers_of(&control_plane, &deployment(service_name));
        assert_eq!(ids.len(), 1, "{service_name}: {ids:?} {view}");
        ids[0].clone()
    };
    let (gateway, croody, db) = (one("gateway"), one("croody"), one("db"));

    // The gateway calls croody by its service name; robot-sim names telemetry-gateway.
    let page = wait_until("the gateway to fetch croody's page", Duration::from_secs(30), POLL, || {
        let (code, text) = exec(
            &control_plane,
            &gateway,
            &["sh", "-c", "wget -q -O - http://croody:8000/ || { cat /etc/hosts; nslookup croody; exit 1; }"],
        );
        if code == 0 { Ok(text) } else { Err(text) }
    });
    assert_eq!(page.trim(), "ok", "croody's page through its name");
    let robot = one("robot-sim");
    // Nothing listens there (the service sleeps): the name resolves and the port refuses.
    let (_, resolved) = exec(&control_plane, &robot, &["sh", "-c", "wget -O /dev/null http://telemetry-gateway:9000/ 2>&1"]);
    assert!(
        resolved.contains("Connection refused") && !resolved.contains("bad address"),
        "robot-sim resolves telemetry-gateway: {resolved}"
    );

    // The gateway's limits: 256 MiB, half a CPU, a read-only root with writable tmpfs.
    let memory = cgroup_setting(&control_plane, &gateway, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(memory, (256u64 << 20).to_string(), "the gateway's memory limit");
    let cpu = cgroup_setting(&control_plane, &gateway, "cpu", "cpu.cfs_quota_us", "cpu.max");
    let quota: Vec<f64> = cpu.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let cpus = match quota.as_slice() {
        [quota, period] => quota / period,
        [quota] => {
            quota / cgroup_setting(&control_plane, &gateway, "cpu", "cpu.cfs_period_us", "cpu.max").parse::<f64>().unwrap_or(f64::NAN)
        }
        _ => f64::NAN,
    };
    assert!((cpus - 0.5).abs() < 1e-9, "the gateway's CPU quota: {cpu} → {cpus}");
    let (code, touched) = exec(&control_plane, &gateway, &["touch", "/written"]);
    assert_ne!(code, 0, "the gateway's root is read-only: {touched}");
    assert!(touched.to_lowercase().contains("read-only"), "{touched}");
    for tmpfs in ["/var/cache/nginx", "/var/run"] {
        let (code, text) = exec(&control_plane, &gateway, &["touch", &format!("{tmpfs}/written")]);
        assert_eq!(code, 0, "{tmpfs} is a writable tmpfs: {text}");
    }
    let memory = cgroup_setting(&control_plane, &croody, "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(memory, (512u64 << 20).to_string(), "croody's memory limit");

    // Environment and named volumes.
    let (_, secret) = exec(&control_plane, &croody, &["sh", "-c", "echo \"$SECRET_KEY\""]);
    assert_eq!(secret.trim(), "test-secret-key");
    let (_, user) = exec(&control_plane, &db, &["sh", "-c", "echo \"$POSTGRES_USER\""]);
    assert_eq!(user.trim(), "croody");
    let (code, text) = exec(&control_plane, &croody, &["sh", "-c", "echo kept > /data/probe && cat /data/probe"]);
    assert_eq!((code, text.trim()), (0, "kept"), "croody_data is mounted writable at /data");

    // The gateway's HTTP server answers on the published port (an empty directory: 404).
    let url = format!("http://127.0.0.1:{gateway_port}/");
    let status =
        wait_until("the gateway's published port", Duration::from_secs(30), POLL, || match http_request("GET", &url, None, None) {
            Ok(response) => Ok(response.status),
            Err(error) => Err(error),
        });
    assert!(status == 404 || status == 200 || status == 403, "the gateway's httpd answered {status}");

    // Deleting the stack removes its containers and, on runtimes with networks, the
    // stack's network with the last of them.
    let deleted = control_plane.rest("DELETE", &format!("/api/v1/stacks/{stack}"), None);
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    if runtime == "docker" || runtime == "podman" {
        let filter = format!("name=^diplo-{stack}$");
        wait_until("the stack's network to be removed", Duration::from_secs(90), POLL, || {
            let listed = Command::new(runtime).args(["network", "ls", "-q", "--filter", &filter]).output().map_err(|e| e.to_string())?;
            let ids = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
            if ids.is_empty() { Ok(()) } else { Err(ids) }
        });
    }
}

// ------------------------------------------------------------------ built services

/// A service with `build:` is built from the stack's git repository (Docker's builder,
/// pushed to the local registry) before it starts; its dependent waits for it; a new
/// commit deployed again rolls the built service (only) to a new revision; without a
/// repository the file is refused naming the line and the key.
#[test]
fn a_stacks_built_service_is_built_from_git_and_a_new_commit_rolls_it() {
    let repos = diplo_tests::git_repos::GitRepos::new("diplo-stack-repos-");
    let registry = ("DIPLO_REGISTRY".to_owned(), "127.0.0.1:5000".to_owned());
    let control_plane =
        ControlPlane::start(ControlPlaneOptions { env: vec![registry], ..ControlPlaneOptions::fast(Duration::from_secs(6)) });
    let token = control_plane.join_token(&[]);
    let root = repos.root().display().to_string();
    let env = [("DIPLO_RUNTIMES", "docker"), ("DIPLO_BUILDERS", "docker"), ("DIPLO_BUILD_FILE_REPOS", root.as_str())];
    let (_agent, node) = control_plane.start_ready_agent_with_env(&unique("stack-build"), Some(&token), &env);
    let stack = unique("sb");
    let (api, client) = (format!("{stack}-api"), format!("{stack}-client"));
    let _cleanup = DeleteStackOnDrop(&control_plane, stack.clone(), vec![api.clone(), client.clone()]);

    let compose = format!(
        r#"services:
  api:
    build:
      context: ./api
      args:
        SUFFIX: "!"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 1s
      retries: 60
  client:
    image: {IMAGE}
    command: ["/bin/sh", "-c", "until wget -q -O - http://api:8080/; do sleep 1; done; exec sleep 3600"]
    depends_on:
      api:
        condition: service_healthy
"#
    );
    let dockerfile = format!(
        "FROM {IMAGE}\nARG SUFFIX\nCOPY page.txt /page.txt\nRUN mkdir /www && echo \"$(cat /page.txt)$SUFFIX\" > /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    );
    let repo =
        repos.create("shop", &[("deploy/compose.yml", &compose), ("deploy/api/Dockerfile", &dockerfile), ("deploy/api/page.txt", "first")]);
    let url = diplo_tests::git_repos::file_url(&repo);

    // Without the repository: refused, naming the line and the key, nothing created.
    let refused = post_yaml(&control_plane, &stack, &compose);
    assert_eq!(refused.status, 400, "{}", refused.body);
    let detail = refused.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains("line 3: services.api.build: ") && detail.contains("repo_url"), "{detail}");
    assert_eq!(control_plane.rest("GET", &format!("/api/v1/stacks/{stack}"), None).status, 404);

    let query = format!("name={stack}&repo_url={url}&compose_file=deploy/compose.yml");
    let answer = post_yaml_query(&control_plane, &query, &compose);
    assert_eq!(answer.status, 201, "{}", answer.body);
    let deployed = answer.json();
    let first_build = service(&deployed, "api")["build_id"].as_str().expect("the api's build").to_owned();
    assert!(["building", "waiting"].contains(&service(&deployed, "api")["status"].as_str().unwrap_or_default()), "{deployed}");
    assert_eq!(service(&deployed, "client")["status"], "waiting", "{deployed}");

    let fetched = |id: &str| exec(&control_plane, id, &["wget", "-q", "-O", "-", "http://api:8080/"]).1;
    let view = wait_until("the built api and its client to run", Duration::from_secs(300), POLL, || {
        let view = control_plane.rest_json(&format!("/api/v1/stacks/{stack}"));
        if service(&view, "client")["status"] != "waiting" {
            assert_eq!(service(&view, "api")["healthy"].as_u64(), Some(1), "client before the built api was healthy: {view}");
        }
        if service(&view, "client")["running"].as_u64() == Some(1) { Ok(view) } else { Err(format!("{view}")) }
    });
    let build = control_plane.rest_json(&format!("/api/v1/images/build/{first_build}"));
    assert_eq!(build["status"], "succeeded", "{build}");
    let image = service(&view, "api")["image"].as_str().unwrap_or_default().to_owned();
    assert!(image.starts_with(&format!("127.0.0.1:5000/{api}:{first_build}@sha256:")), "pushed and pinned: {image} {view}");
    let record = control_plane.rest_json(&format!("/api/v1/deployments/{api}"));
    assert_eq!(record["constraints"]["arch"], node["arch"], "held to its builder's platform: {record}");
    let clients = containers_of(&control_plane, &client);
    assert_eq!(clients.len(), 1, "{view}");
    assert_eq!(fetched(&clients[0]).trim(), "first!", "the client reaches the built api by name");

    // A new commit, deployed again with the same file: the api is built again and rolls to
    // revision 2; the client is unchanged.
    diplo_tests::git_repos::commit(&repo, &[("deploy/api/page.txt", "second")], "second page");
    let again = post_yaml_query(&control_plane, &query, &compose);
    assert_eq!(again.status, 200, "{}", again.body);
    let second_build = service(&again.json(), "api")["build_id"].as_str().expect("a new build").to_owned();
    assert_ne!(second_build, first_build);
    let revision = |deployment: &str| control_plane.rest_json(&format!("/api/v1/deployments/{deployment}"))["revision"].as_u64();
    wait_until("the api's new build to run", Duration::from_secs(300), POLL, || {
        let page = fetched(&clients[0]);
        if revision(&api) == Some(2) && page.trim() == "second!" {
            Ok(())
        } else {
            Err(format!("revision {:?}, page {page:?}", revision(&api)))
        }
    });
    assert_eq!(revision(&client), Some(1), "the client did not change");
}
