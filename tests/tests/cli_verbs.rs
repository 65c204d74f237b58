//! Every verb of the README's CLI sections runs here, through the real `diplo` binary,
//! against a control plane with a real agent on Docker, and each is checked by what it
//! changed (Docker itself, the deployment's state, the node's state):
//! `deploy`, `apps ls | show | scale | rollback | rm`, `containers run | logs -f | stop |
//! start | restart | exec | rm`, `nodes show | cordon | uncordon`, `events -f`; then the
//! node-resource and container-operation verbs: `images pull | ls | inspect`, `volumes` and
//! `networks create | ls | inspect | rm`, `containers pause | unpause | stats | cp`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diplo_tests::{Binary, ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, docker_containers_of, unique_name, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);
const NODE: &str = "cli-node";

/// A `diplo … -f` process whose stdout lines are collected as they come; killed when
/// dropped.
struct Following {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Following {
    fn start(control_plane: &ControlPlane, args: &[&str]) -> Following {
        let mut command = Command::new(diplo_tests::binary(Binary::Cli));
        command.env_remove("DIPLO_CONFIG").arg("--config").arg(control_plane.file("cli.toml")).args(args);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = command.spawn().expect("run diplo");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
            }
        });
        Following { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits until a printed line contains `needle`.
    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        wait_until(&format!("a line with {needle:?}"), timeout, POLL, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited with {status}; printed {:?}", self.lines()));
            }
            let lines = self.lines();
            if lines.iter().any(|l| l.contains(needle)) { Ok(()) } else { Err(format!("{lines:?}")) }
        });
    }

    fn still_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_out(control_plane: &ControlPlane, args: &[&str]) -> Value {
    let out = control_plane.cli_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("`diplo {}` printed no JSON ({e}): {out}", args.join(" ")))
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("run docker");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `VERSION` in the environment of every container of a deployment.
fn versions(deployment: &str) -> Vec<String> {
    let mut all: Vec<String> = docker_containers_of(deployment)
        .iter()
        .map(|id| {
            docker(&["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", id])
                .lines()
                .find_map(|l| l.strip_prefix("VERSION=").map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    all.sort();
    all
}

/// Force-removes a direct container by Docker id when dropped.
struct RemoveContainerOnDrop(Arc<Mutex<Option<String>>>);

impl Drop for RemoveContainerOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
    }
}

#[test]
fn every_readme_cli_verb_runs_against_a_real_agent() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let (_agent, node) = control_plane.start_ready_agent_with_env(NODE, Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let node_id = node["id"].as_str().expect("node id").to_owned();
    let mut events = Following::start(&control_plane, &["events", "-f"]);

    // ---- nodes show | cordon | uncordon ----
    let shown = json_out(&control_plane, &["nodes", "show", NODE]);
    assert_eq!(shown["id"], node_id.as_str(), "{shown:#}");
    assert_eq!(shown["status"], "ready", "{shown:#}");
    assert_eq!(shown["cordoned"], false, "{shown:#}");
    let cordoned = json_out(&control_plane, &["nodes", "cordon", NODE]);
    assert_eq!(cordoned["cordoned"], true, "{cordoned:#}");
    assert_eq!(json_out(&control_plane, &["nodes", "show", &node_id])["cordoned"], true);
    // A cordoned node takes no new deployment.
    let name = unique_name("cli-app");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let refused = control_plane.cli(&["deploy", &name, "--image", IMAGE, "-d", "sleep", "1000"]);
    assert!(!refused.status.success(), "deploy on a cordoned node: {}", String::from_utf8_lossy(&refused.stdout));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(NODE), "{}", String::from_utf8_lossy(&refused.stderr));
    let uncordoned = json_out(&control_plane, &["nodes", "uncordon", NODE]);
    assert_eq!(uncordoned["cordoned"], false, "{uncordoned:#}");

    // ---- deploy: shows progress until every replica runs ----
    let script = "while true; do echo tick-$VERSION; sleep 1; done";
    let deployed = control_plane.cli_ok(&["deploy", &name, "--image", IMAGE, "-r", "1", "-e", "VERSION=1", "/bin/sh", "-c", script]);
    assert!(deployed.contains(&format!("deployment {name} created")), "{deployed}");
    assert!(deployed.contains(&format!("{name}: running")), "deploy returns once it runs: {deployed}");
    assert_eq!(docker_containers_of(&name).len(), 1);
    assert_eq!(versions(&name), ["1"]);

    // ---- apps ls | show ----
    let listed = json_out(&control_plane, &["apps", "ls", "-o", "json"]);
    let entry = listed.as_array().and_then(|l| l.iter().find(|d| d["name"] == name.as_str())).unwrap_or_else(|| panic!("{listed:#}"));
    assert_eq!(entry["status"], "running", "{entry:#}");
    assert_eq!(entry["replicas"], 1, "{entry:#}");
    let table = control_plane.cli_ok(&["apps", "ls", "-o", "table"]);
    assert!(table.lines().any(|l| l.starts_with(&name) && l.contains("running") && l.contains("1/1")), "{table}");
    let shown = json_out(&control_plane, &["apps", "show", &name]);
    assert_eq!(shown["revision"], 1, "{shown:#}");
    assert_eq!(shown["instances"][0]["node_id"], node_id.as_str(), "{shown:#}");
    assert_eq!(shown["instances"][0]["container_id"].as_str().map(|id| id.len() >= 12), Some(true), "{shown:#}");

    // ---- apps scale ----
    let scaled = control_plane.cli_ok(&["apps", "scale", &name, "2"]);
    assert!(scaled.contains("scaled to 2"), "{scaled}");
    wait_until("2 containers", Duration::from_secs(90), POLL, || {
        let shown = json_out(&control_plane, &["apps", "show", &name]);
        let running = shown["instances"].as_array().map_or(0, |l| l.iter().filter(|i| i["status"] == "running").count());
        let containers = docker_containers_of(&name);
        if running == 2 && containers.len() == 2 { Ok(()) } else { Err(format!("{containers:?} {shown}")) }
    });

    // ---- apps rollback: none at revision 1, then back to the spec of 1 after an update ----
    let early = control_plane.cli(&["apps", "rollback", &name]);
    assert!(!early.status.success(), "nothing to roll back to");
    assert!(String::from_utf8_lossy(&early.stderr).contains("no previous revision"), "{}", String::from_utf8_lossy(&early.stderr));
    let update =
        json!({"name": name, "image": IMAGE, "replicas": 2, "command": ["/bin/sh", "-c", script], "environment": {"VERSION": "2"}});
    let updated = control_plane.rest("PUT", &format!("/api/v1/deployments/{name}"), Some(update));
    assert_eq!(updated.status, 200, "{}", updated.body);
    wait_until("revision 2 everywhere", Duration::from_secs(120), POLL, || {
        let v = versions(&name);
        if v == ["2", "2"] { Ok(()) } else { Err(format!("{v:?}")) }
    });
    let rolled = control_plane.cli_ok(&["apps", "rollback", &name]);
    assert!(rolled.contains("now revision 3"), "{rolled}");
    wait_until("the spec of revision 1 back everywhere", Duration::from_secs(120), POLL, || {
        let v = versions(&name);
        let shown = json_out(&control_plane, &["apps", "show", &name]);
        if v == ["1", "1"] && shown["status"] == "running" { Ok(()) } else { Err(format!("{v:?} {shown}")) }
    });

    // ---- apps rm ----
    let removed = control_plane.cli_ok(&["apps", "rm", &name]);
    assert!(removed.contains("is being deleted"), "{removed}");
    wait_until("the deployment and its containers gone", Duration::from_secs(60), POLL, || {
        let show = control_plane.cli(&["apps", "show", &name]);
        let containers = docker_containers_of(&name);
        if !show.status.success() && containers.is_empty() { Ok(()) } else { Err(format!("{containers:?}")) }
    });

    // ---- containers run | logs -f | stop | start | restart | exec | rm ----
    let direct = unique_name("cli-ctr");
    let docker_id = Arc::new(Mutex::new(None));
    let _remove = RemoveContainerOnDrop(docker_id.clone());
    let id = control_plane
        .cli_ok(&[
            "containers",
            "run",
            "--name",
            &direct,
            IMAGE,
            "/bin/sh",
            "-c",
            "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.3; done",
        ])
        .trim()
        .to_owned();
    assert!(!id.is_empty(), "run prints the container's id");
    *docker_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.clone());
    assert_eq!(docker(&["inspect", "--format", "{{.State.Running}}", &id]), "true");
    let running = |expected: &str| {
        wait_until(&format!("{direct} running={expected}"), Duration::from_secs(30), POLL, || {
            let state = docker(&["inspect", "--format", "{{.State.Running}}", &id]);
            if state == expected { Ok(()) } else { Err(state) }
        });
    };

    // logs -f prints lines as the container writes them, and keeps going.
    let mut logs = Following::start(&control_plane, &["containers", "logs", "-f", &direct]);
    logs.wait_for("line-", Duration::from_secs(30));
    let seen = logs.lines().len();
    wait_until("more lines while following", Duration::from_secs(15), POLL, || {
        let now = logs.lines().len();
        if now >= seen + 3 { Ok(()) } else { Err(format!("{now} lines")) }
    });
    assert!(logs.still_running(), "logs -f keeps following");
    drop(logs);

    let started_at = docker(&["inspect", "--format", "{{.State.StartedAt}}", &id]);
    assert_eq!(control_plane.cli_ok(&["containers", "stop", "-t", "1", &direct]).trim(), direct);
    running("false");
    assert_eq!(control_plane.cli_ok(&["containers", "start", &direct]).trim(), direct);
    running("true");
    let restarted_from = docker(&["inspect", "--format", "{{.State.StartedAt}}", &id]);
    assert_ne!(restarted_from, started_at, "start ran it again");
    control_plane.cli_ok(&["containers", "restart", &direct]);
    running("true");
    assert_ne!(docker(&["inspect", "--format", "{{.State.StartedAt}}", &id]), restarted_from, "restart ran it again");
    let exec = control_plane.cli(&["containers", "exec", &direct, "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(exec.status.code(), Some(3), "exec exits with the command's code");
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "hi");
    let listed = json_out(&control_plane, &["containers", "ls", "--node", NODE, "-o", "json"]);
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|c| c["id"] == id.as_str() && c["status"] == "running")), "{listed:#}");
    // rm refuses a running container without -f, removes it with -f.
    let refused = control_plane.cli(&["containers", "rm", &direct]);
    assert!(!refused.status.success(), "rm of a running container without -f");
    assert_eq!(docker(&["inspect", "--format", "{{.State.Running}}", &id]), "true");
    control_plane.cli_ok(&["containers", "rm", "-f", &direct]);
    wait_until(&format!("{direct} removed"), Duration::from_secs(30), POLL, || {
        let output = Command::new("docker").args(["inspect", &id]).output().expect("docker inspect");
        if output.status.success() { Err("still there".into()) } else { Ok(()) }
    });

    // ---- events -f: printed what happened since it started, and still follows ----
    events.wait_for("deployment.created", Duration::from_secs(15));
    events.wait_for("deployment.deleted", Duration::from_secs(15));
    events.wait_for("node.cordoned", Duration::from_secs(15));
    assert!(events.still_running(), "events -f keeps following");
}

/// Runs `diplo --config CONFIG ARGS` with no DIPLO_* variable of the test's environment.
fn diplo_with(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(diplo_tests::binary(Binary::Cli));
    for name in ["DIPLO_CONFIG", "DIPLO_CONTEXT", "DIPLO_OUTPUT"] {
        command.env_remove(name);
    }
    command.arg("--config").arg(config).args(args).stdin(Stdio::null());
    diplo_tests::output_with_timeout(command, Duration::from_secs(30))
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn outputs_contexts_completion_exit_codes_and_instance_verbs() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let node_name = unique_name("cli-out");
    let (agent, node) = control_plane.start_ready_agent_with_env(&node_name, Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let node_id = node["id"].as_str().expect("node id").to_owned();
    let _containers = diplo_tests::RemoveAllContainersOnDrop(&control_plane);
    let cli_toml = control_plane.file("cli.toml");

    // ---- -o json | yaml carry the same data; JSON when stdout is not a terminal ----
    let as_json: Value = serde_json::from_str(&control_plane.cli_ok(&["nodes", "ls", "-o", "json"])).expect("JSON");
    let as_yaml: Value = serde_norway::from_str(&control_plane.cli_ok(&["nodes", "ls", "-o", "yaml"])).expect("YAML");
    let piped: Value = serde_json::from_str(&control_plane.cli_ok(&["nodes", "ls"])).expect("JSON when piped");
    let key = |v: &Value| -> Vec<(String, String, String)> {
        v.as_array().expect("a list").iter().map(|n| (n["id"].to_string(), n["name"].to_string(), n["status"].to_string())).collect()
    };
    assert_eq!(key(&as_json), key(&as_yaml));
    assert_eq!(key(&as_json), key(&piped));
    let status: Value = serde_norway::from_str(&control_plane.cli_ok(&["status", "-o", "yaml"])).expect("status YAML");
    assert_eq!(status["nodes"]["ready"], 1, "{status}");
    let table = control_plane.cli_ok(&["nodes", "ls", "-o", "table"]);
    assert!(table.starts_with("NAME") && table.contains(&node_name), "{table}");

    // ---- backends info: the runtime across the cluster ----
    let backend: Value = serde_json::from_str(&control_plane.cli_ok(&["backends", "info", "docker", "-o", "json"])).expect("JSON");
    assert_eq!(backend["nodes"][0]["node"], node_name.as_str(), "{backend}");
    assert!(backend["capabilities"].as_array().is_some_and(|c| c.contains(&json!("healthcheck"))), "{backend}");
    assert_eq!(control_plane.cli(&["backends", "info", "kvm"]).status.code(), Some(2), "an unknown backend is a usage error");

    // ---- completion for three shells ----
    for (shell, marker) in [("bash", "complete"), ("zsh", "#compdef diplo"), ("fish", "complete -c diplo")] {
        let script = control_plane.cli_ok(&["completion", shell]);
        assert!(script.contains(marker) && script.contains("instances") && script.contains("context"), "{shell}: {script}");
    }
    let help = control_plane.cli_ok(&["--help"]);
    assert!(help.contains("Exit codes:") && help.contains("3  not found"), "{help}");

    // ---- instances: create on a backend and node, ls with node names, stop/start/restart, update refused, rm ----
    let name = unique_name("cli-inst");
    let id = control_plane
        .cli_ok(&[
            "instances",
            "create",
            "--name",
            &name,
            "--backend",
            "docker",
            "--node",
            &node_name,
            "--memory",
            "32m",
            IMAGE,
            "sleep",
            "1000",
        ])
        .trim()
        .to_owned();
    let listed: Value = serde_json::from_str(&control_plane.cli_ok(&["instances", "ls", "-o", "json"])).expect("JSON");
    let mine = listed.as_array().and_then(|l| l.iter().find(|i| i["id"] == id.as_str())).cloned().unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        (mine["direct"].as_bool(), mine["node"].as_str(), mine["node_id"].as_str()),
        (Some(true), Some(node_name.as_str()), Some(node_id.as_str()))
    );
    let table = control_plane.cli_ok(&["instances", "ls", "-o", "table"]);
    assert!(table.lines().any(|l| l.starts_with(&id[..12]) && l.contains("(direct)") && l.contains(&node_name)), "{table}");
    let containers = control_plane.cli_ok(&["containers", "ls", "-o", "table"]);
    assert!(containers.lines().any(|l| l.contains(&name) && l.contains(&node_name)), "node names in tables: {containers}");
    assert_eq!(docker(&["inspect", "--format", "{{.HostConfig.Memory}}", &id]), (32u64 << 20).to_string());
    control_plane.cli_ok(&["instances", "stop", "-t", "1", &id]);
    assert_eq!(docker(&["inspect", "--format", "{{.State.Running}}", &id]), "false");
    control_plane.cli_ok(&["instances", "start", &id]);
    control_plane.cli_ok(&["instances", "restart", &id]);
    assert_eq!(docker(&["inspect", "--format", "{{.State.Running}}", &id]), "true");
    let refused = control_plane.cli(&["instances", "update", &id, "--memory", "64m"]);
    assert_eq!(refused.status.code(), Some(7), "a direct container's settings are fixed: {refused:?}");

    // ---- exit codes: not found 3, invalid 5, conflict 7, usage 2 ----
    for (args, code) in [
        (vec!["apps", "show", "no-such-app"], 3),
        (vec!["containers", "run", "--name", "bad name!", IMAGE], 5),
        (vec!["containers", "run", "--name", name.as_str(), IMAGE], 7),
        (vec!["nodes", "frobnicate"], 2),
    ] {
        let output = control_plane.cli(&args);
        assert_eq!(output.status.code(), Some(code), "diplo {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    control_plane.cli_ok(&["instances", "rm", &id]);
    wait_until("the instance gone", Duration::from_secs(30), POLL, || {
        let listed = control_plane.cli_ok(&["instances", "ls", "-o", "json"]);
        if listed.contains(&id) { Err(listed) } else { Ok(()) }
    });

    // ---- contexts: add from a cli.toml and from parts, ls, use; unreachable exits 6, denied 4 ----
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    let ok = |args: &[&str]| {
        let output = diplo_with(&config, args);
        assert!(output.status.success(), "diplo {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        stdout_of(&output)
    };
    ok(&["context", "add", "lab", "--from", &cli_toml.display().to_string()]);
    let data = |file: &str| control_plane.file(file).display().to_string();
    let away = format!("https://127.0.0.1:{}", diplo_tests::free_port());
    ok(&[
        "context",
        "add",
        "away",
        "--server",
        &away,
        "--ca",
        &data("ca.pem"),
        "--cert",
        &data("admin.pem"),
        "--key",
        &data("admin-key.pem"),
    ]);
    let agent_file = |file: &str| agent.data_dir().join(file).display().to_string();
    let server = format!("https://{}", control_plane.grpc_addr());
    ok(&[
        "context",
        "add",
        "as-node",
        "--server",
        &server,
        "--ca",
        &agent_file("ca.pem"),
        "--cert",
        &agent_file("node.pem"),
        "--key",
        &agent_file("node-key.pem"),
    ]);
    let contexts: Value = serde_json::from_str(&ok(&["context", "ls", "-o", "json"])).expect("JSON");
    let current: Vec<&str> =
        contexts.as_array().expect("list").iter().filter(|c| c["current"] == true).filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(current, ["lab"], "the first context added is current: {contexts}");
    assert_eq!(contexts.as_array().map(Vec::len), Some(3), "{contexts}");
    let yaml: Value = serde_norway::from_str(&ok(&["context", "ls", "-o", "yaml"])).expect("YAML");
    assert_eq!(yaml, contexts, "the same data in YAML");
    let status: Value = serde_json::from_str(&ok(&["status"])).expect("status through the current context");
    assert_eq!(status["nodes"]["ready"], 1, "{status}");
    ok(&["context", "use", "away"]);
    let unreachable = diplo_with(&config, &["status"]);
    assert_eq!(unreachable.status.code(), Some(6), "unreachable: {}", String::from_utf8_lossy(&unreachable.stderr));
    let named = diplo_with(&config, &["--context", "lab", "status", "-o", "json"]);
    assert!(named.status.success(), "--context picks another: {}", String::from_utf8_lossy(&named.stderr));
    let denied = diplo_with(&config, &["--context", "as-node", "nodes", "ls"]);
    assert_eq!(denied.status.code(), Some(4), "a node certificate is denied: {}", String::from_utf8_lossy(&denied.stderr));
    let unknown = diplo_with(&config, &["context", "use", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("away, lab"), "{}", String::from_utf8_lossy(&unknown.stderr));
    // The control plane's single-context cli.toml still reads as it is.
    assert!(std::fs::read_to_string(&cli_toml).expect("cli.toml").contains("server ="));
}

/// Docker objects a test made, removed when dropped whatever happened.
#[derive(Default)]
struct DockerLeftovers {
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Drop for DockerLeftovers {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = Command::new("docker").args(args).output();
        };
        self.containers.iter().for_each(|c| run(&["rm", "-f", c]));
        self.networks.iter().for_each(|n| run(&["network", "rm", n]));
        self.volumes.iter().for_each(|v| run(&["volume", "rm", "-f", v]));
    }
}

fn docker_ok(args: &[&str]) -> bool {
    Command::new("docker").args(args).output().is_ok_and(|o| o.status.success())
}

/// A /24 in 10.160–199.x.0 unlikely to collide with another test's network.
fn random_subnet() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let r = nanos ^ std::process::id().rotate_left(16);
    format!("10.{}.{}.0/24", 160 + (r % 40), (r >> 8) % 256)
}

#[test]
fn image_volume_network_and_container_ops_verbs_run_against_a_real_agent() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let node = unique_name("cli-res");
    let (_agent, _) = control_plane.start_ready_agent_with_env(&node, Some(&token), &[("DIPLO_RUNTIMES", "docker")]);
    let mut left = DockerLeftovers::default();
    let on = ["--node", node.as_str(), "--runtime", "docker"];
    let with_target = |args: &[&str]| -> Vec<String> { args.iter().chain(&on).map(|a| (*a).to_owned()).collect() };
    let ok_of = |args: Vec<String>| -> String { control_plane.cli_ok(&args.iter().map(String::as_str).collect::<Vec<_>>()) };
    let json_of = |args: Vec<String>| -> Value {
        let out = ok_of(args.clone());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("`diplo {}` printed no JSON ({e}): {out}", args.join(" ")))
    };

    // ---- images pull | ls | inspect ----
    let pulled = json_of(with_target(&["images", "pull", IMAGE, "-o", "json"]));
    assert!(pulled["tags"].as_array().is_some_and(|t| t.contains(&json!(IMAGE))), "{pulled:#}");
    let image_id = pulled["id"].as_str().expect("image id").to_owned();
    let listed = json_of(with_target(&["images", "ls", "-o", "json"]));
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|i| i["id"] == image_id.as_str())), "{listed:#}");
    let table = ok_of(with_target(&["images", "ls", "-o", "table"]));
    assert!(table.starts_with("ID") && table.contains(IMAGE), "{table}");
    let inspected = json_of(with_target(&["images", "inspect", IMAGE, "-o", "json"]));
    assert_eq!(inspected["id"], image_id.as_str(), "{inspected:#}");
    let yaml = control_plane.cli_ok(&["images", "inspect", IMAGE, "--node", &node, "-o", "yaml"]);
    let yaml: Value = serde_norway::from_str(&yaml).expect("YAML");
    assert_eq!(yaml["id"], image_id.as_str(), "{yaml:#}");
    let missing = control_plane.cli(&["images", "inspect", "127.0.0.1:5000/diplo/no-such-image:none", "--node", &node]);
    assert_eq!(missing.status.code(), Some(3), "an unknown image is not found: {}", String::from_utf8_lossy(&missing.stderr));

    // ---- volumes create | ls | inspect | rm ----
    let volume = unique_name("cli-vol");
    left.volumes.push(volume.clone());
    let created = json_of(with_target(&["volumes", "create", &volume, "--label", "team=cli", "-o", "json"]));
    assert_eq!((created["name"].as_str(), created["managed"].as_bool()), (Some(volume.as_str()), Some(true)), "{created:#}");
    assert_eq!(created["labels"]["team"], "cli", "{created:#}");
    assert!(docker_ok(&["volume", "inspect", &volume]), "the volume exists in Docker");
    let listed = json_of(with_target(&["volumes", "ls", "-o", "json"]));
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|v| v["name"] == volume.as_str())), "{listed:#}");
    assert_eq!(json_of(with_target(&["volumes", "inspect", &volume, "-o", "json"]))["name"], volume.as_str());
    assert_eq!(ok_of(with_target(&["volumes", "rm", &volume])).trim(), volume);
    assert!(!docker_ok(&["volume", "inspect", &volume]), "the volume is gone from Docker");

    // ---- networks create | ls | inspect | rm ----
    let network = unique_name("cli-net");
    let subnet = random_subnet();
    left.networks.push(network.clone());
    let created = json_of(with_target(&["networks", "create", &network, "--subnet", &subnet, "--label", "team=cli", "-o", "json"]));
    assert_eq!((created["subnets"][0].as_str(), created["managed"].as_bool()), (Some(subnet.as_str()), Some(true)), "{created:#}");
    assert!(docker_ok(&["network", "inspect", &network]), "the network exists in Docker");
    let listed = json_of(with_target(&["networks", "ls", "-o", "json"]));
    assert!(listed.as_array().is_some_and(|l| l.iter().any(|n| n["name"] == network.as_str())), "{listed:#}");
    assert_eq!(json_of(with_target(&["networks", "inspect", &network, "-o", "json"]))["name"], network.as_str());
    let bad = control_plane.cli(&["networks", "create", &unique_name("cli-bad"), "--subnet", "10.0.0.0/99", "--node", &node]);
    assert_eq!(bad.status.code(), Some(5), "a bad subnet is invalid: {}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("subnet"), "{}", String::from_utf8_lossy(&bad.stderr));
    assert_eq!(ok_of(with_target(&["networks", "rm", &network])).trim(), network);
    assert!(!docker_ok(&["network", "inspect", &network]), "the network is gone from Docker");

    // ---- containers pause | unpause ----
    let name = unique_name("cli-ops");
    left.containers.push(name.clone());
    let id = control_plane.cli_ok(&["containers", "run", "--name", &name, "--node", &node, IMAGE, "sleep", "1000"]).trim().to_owned();
    left.containers.push(id.clone());
    let paused = json_out(&control_plane, &["containers", "pause", &name, "-o", "json"]);
    assert_eq!((paused["status"].as_str(), paused["node"].as_str()), (Some("paused"), Some(node.as_str())), "{paused:#}");
    assert_eq!(docker(&["inspect", "--format", "{{.State.Paused}}", &id]), "true");
    wait_until("containers ls shows it paused", Duration::from_secs(30), POLL, || {
        let listed = json_out(&control_plane, &["containers", "ls", "-o", "json"]);
        let status = listed.as_array().and_then(|l| l.iter().find(|c| c["id"] == id.as_str())).map(|c| c["status"].clone());
        if status == Some(json!("paused")) { Ok(()) } else { Err(format!("{status:?}")) }
    });
    let table = control_plane.cli_ok(&["containers", "unpause", &name, "-o", "table"]);
    assert!(table.lines().any(|l| l.contains(&name) && l.contains("running") && l.contains(&node)), "{table}");
    assert_eq!(docker(&["inspect", "--format", "{{.State.Paused}}", &id]), "false");

    // ---- containers stats: one sample ----
    let sample = json_out(&control_plane, &["containers", "stats", &name, "-o", "json"]);
    assert_eq!((sample["container_id"].as_str(), sample["node"].as_str()), (Some(id.as_str()), Some(node.as_str())), "{sample:#}");
    assert!(sample["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{sample:#}");

    // ---- containers cp: a directory in, one file back out, the same bytes ----
    let local = tempfile::tempdir().expect("tempdir");
    let payload = format!("payload {} {}\n", unique_name("bytes"), "x".repeat(5000));
    let source = local.path().join("cli-cp");
    std::fs::create_dir(&source).expect("mkdir");
    std::fs::write(source.join("payload.txt"), &payload).expect("write");
    let copied_in = control_plane.cli_ok(&["containers", "cp", &source.display().to_string(), &format!("{name}:/tmp")]);
    assert!(copied_in.contains("members"), "{copied_in}");
    let exec = control_plane.cli(&["containers", "exec", &name, "cat", "/tmp/cli-cp/payload.txt"]);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), payload, "the file inside the container");
    let out = tempfile::tempdir().expect("tempdir");
    control_plane.cli_ok(&["containers", "cp", &format!("{name}:/tmp/cli-cp/payload.txt"), &out.path().display().to_string()]);
    assert_eq!(std::fs::read_to_string(out.path().join("payload.txt")).expect("copied out"), payload);
    let nowhere =
        control_plane.cli(&["containers", "cp", &format!("{name}:/tmp/cli-cp"), &out.path().join("missing").display().to_string()]);
    assert!(!nowhere.status.success(), "a missing local directory is refused");

    control_plane.cli_ok(&["containers", "rm", "-f", &name]);
}
