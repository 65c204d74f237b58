//! Failure drills against real binaries, each printing one `DRILL <name>: <figures>` line
//! (the figures BENCHMARKS.md records) and asserting its targets:
//!
//! * `postgres_outage`: the control plane's own PostgreSQL (a private instance, never the
//!   shared one) stopped for 30 s: every write answers 503 with `Retry-After` within 1 s,
//!   reads answer 200, a write succeeds again within 5 s of PostgreSQL's return, and the
//!   database holds exactly the writes answered 2xx (checked after a restart, from the
//!   database itself).
//! * `control_plane_kill_mid_rollout`: kill -9 of the control plane while an update
//!   replaces replicas on a real agent; after the restart the deployment converges on the
//!   new revision with exactly the desired containers in the runtime.
//! * `agent_restart_loop`: an agent killed and started again every few seconds for a
//!   minute while its containers exit and are restarted by their policy: no orphan or
//!   duplicate container, and the restart counts the API reports never go backwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::unique_name as unique;
use diplo_tests::{
    ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, RemoveDockerContainersOnDrop, docker_containers_of, free_port,
    output_with_timeout, skip_or_fail, wait_until,
};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);
/// Where Debian's PostgreSQL 15 server binaries live.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn httpd() -> Vec<&'static str> {
    vec!["/bin/sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
}

// ---------------------------------------------------------------------------------
// REST with timing and headers

/// One REST answer with how long it took and its `Retry-After` header.
#[derive(Debug)]
struct Timed {
    status: u16,
    body: String,
    retry_after: Option<String>,
    took: Duration,
}

/// `METHOD path` as the admin, timed; a transport failure (or no answer within 10 s)
/// is reported as status 0.
fn timed(control_plane: &ControlPlane, method: &str, path: &str, body: Option<Value>) -> Timed {
    let url = control_plane.rest_url(path);
    let authorization = format!("Bearer {}", control_plane.admin_token());
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).no_proxy().build().expect("client");
        let mut request = client.request(method, &url).header("Authorization", authorization);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let started = Instant::now();
        match request.send() {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let body = response.text().unwrap_or_default();
                Timed { status, body, retry_after, took: started.elapsed() }
            }
            Err(error) => Timed { status: 0, body: error.to_string(), retry_after: None, took: started.elapsed() },
        }
    })
    .join()
    .expect("the HTTP thread panicked")
}

/// Kills the control plane (SIGKILL, by the pid it holds) when the test fails, before
/// the container guards declared ahead of it remove what it made: a live control plane
/// would create those containers again in between. Update the pid after a restart.
struct StopControlPlaneOnFailure(std::cell::Cell<u32>);

impl StopControlPlaneOnFailure {
    fn new(control_plane: &mut ControlPlane) -> Self {
        StopControlPlaneOnFailure(std::cell::Cell::new(control_plane.process().pid()))
    }

    fn update(&self, control_plane: &mut ControlPlane) {
        self.0.set(control_plane.process().pid());
    }
}

impl Drop for StopControlPlaneOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args(["-KILL", &self.0.get().to_string()]).status();
        }
    }
}

fn deployment(control_plane: &ControlPlane, name: &str) -> Value {
    control_plane.rest_json(&format!("/api/v1/deployments/{name}"))
}

/// Instances of a deployment that run and are meant to.
fn running(deployment: &Value) -> Vec<&Value> {
    deployment["instances"]
        .as_array()
        .map(|list| list.iter().filter(|i| i["status"] == "running" && i["desired"] == "run").collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// A PostgreSQL server of the test's own

/// A PostgreSQL server in a temporary directory, on a free port, run as the `postgres`
/// user: the drill stops and starts it at will without touching the shared server.
/// Stopped (immediately) and removed when dropped.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates and starts one with a superuser `diplo` and a database `diplo`; `None`
    /// (after [`skip_or_fail`]) when PostgreSQL's binaries are missing or the test does
    /// not run as root.
    fn start() -> Option<PrivatePostgres> {
        if !Path::new(PG_BIN).join("initdb").is_file() {
            skip_or_fail(&format!("{PG_BIN}/initdb is missing (Debian's postgresql-15): the PostgreSQL drills are not run"));
            return None;
        }
        let root = Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        if !root {
            skip_or_fail("the PostgreSQL drills run their own server as the postgres user: they need root");
            return None;
        }
        let dir = std::env::temp_dir().join(unique("diplo-drill-pg"));
        std::fs::create_dir_all(&dir).expect("create the PostgreSQL directory");
        let server = PrivatePostgres { dir, port: free_port() };
        run_checked(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&server.dir));
        run_checked(
            server.as_postgres("initdb").args(["-A", "trust", "-U", "diplo", "--no-sync", "-E", "UTF8", "-D"]).arg(server.data_dir()),
        );
        server.pg_ctl_start();
        run_checked(server.as_postgres("createdb").args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-U", "diplo", "diplo"]));
        Some(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `runuser -u postgres -- <PG_BIN>/<tool>`.
    fn as_postgres(&self, tool: &str) -> Command {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(Path::new(PG_BIN).join(tool));
        command
    }

    fn url(&self) -> String {
        format!("postgres://diplo@127.0.0.1:{}/diplo", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    fn pg_ctl_start(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        run_checked(
            self.as_postgres("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .args(["-o", &options, "-w", "-t", "30", "start"]),
        );
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    fn pg_ctl_stop(&self) {
        run_checked(self.as_postgres("pg_ctl").arg("-D").arg(self.data_dir()).args(["-m", "immediate", "-w", "-t", "30", "stop"]));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.as_postgres("pg_ctl").arg("-D").arg(self.data_dir()).args(["-m", "immediate", "-w", "-t", "10", "stop"]).output();
        if std::thread::panicking() {
            eprintln!("[drill] PostgreSQL log:\n{}", std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_checked(command: &mut Command) {
    let description = format!("{command:?}");
    let mut owned = Command::new(command.get_program());
    owned.args(command.get_args());
    let output = output_with_timeout(owned, Duration::from_secs(60));
    assert!(
        output.status.success(),
        "{description} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------
// PostgreSQL stopped for 30 s

/// The longest a write may take to be refused while the database is away.
const REFUSAL_LIMIT: Duration = Duration::from_secs(1);
/// How long PostgreSQL stays away.
const OUTAGE: Duration = Duration::from_secs(30);
/// How soon after PostgreSQL's return a write must succeed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(5);

#[test]
fn postgres_outage() {
    let Some(postgres) = PrivatePostgres::start() else { return };
    // Nodes go down only after 60 s: the witness below stays away for part of the outage.
    let options = ControlPlaneOptions { database_url: Some(postgres.url()), ..ControlPlaneOptions::fast(Duration::from_secs(60)) };
    let mut control_plane = ControlPlane::start(options);
    let token = control_plane.join_token(&[]);
    let docker = [("DIPLO_RUNTIMES", "docker")];
    let node = unique("pg");
    let (_agent, _) = control_plane.start_ready_agent_with_env(&node, Some(&token), &docker);
    // The witness's agent is killed during the outage and started again before its end:
    // its node's status must change in reads all the same, and its session open once
    // the database is back.
    let witness = unique("pgw");
    let (mut witness_agent, _) = control_plane.start_ready_agent_with_env(&witness, Some(&token), &docker);
    let mut witness_killed_at: Option<Instant> = None;
    let mut witness_restarted = false;
    let mut witness_unhealthy_seen = false;

    // Before the outage: `kept` runs one replica, `doomed` is there to be deleted.
    let kept = unique("kept");
    let doomed = unique("doomed");
    let after = unique("after");
    let _kept_containers = RemoveDockerContainersOnDrop(kept.clone());
    let _doomed_containers = RemoveDockerContainersOnDrop(doomed.clone());
    let _after_containers = RemoveDockerContainersOnDrop(after.clone());
    let stop_on_failure = StopControlPlaneOnFailure::new(&mut control_plane);
    for name in [&kept, &doomed] {
        let created = control_plane.rest(
            "POST",
            "/api/v1/deployments",
            Some(json!({"name": name, "image": IMAGE, "command": httpd(), "constraints": {"node": node}})),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        wait_until(&format!("{name} running"), Duration::from_secs(90), POLL, || {
            let d = deployment(&control_plane, name);
            if d["status"] == "running" && running(&d).len() == 1 { Ok(()) } else { Err(d.to_string()) }
        });
    }
    let before: Vec<Value> = ["/api/v1/deployments", "/api/v1/compute/instances"].iter().map(|p| control_plane.rest_json(p)).collect();

    // The outage: every write is refused quickly with 503 and Retry-After, every read of
    // nodes, deployments, instances and status still answers.
    postgres.pg_ctl_stop();
    let stopped_at = Instant::now();
    let mut refused: Vec<String> = Vec::new();
    let mut slowest_write = Duration::ZERO;
    let mut slowest_read = Duration::ZERO;
    let mut writes = 0u32;
    let mut reads = 0u32;
    let mut round = 0u32;
    while stopped_at.elapsed() < OUTAGE {
        round += 1;
        if round == 3 {
            witness_agent.kill();
            witness_killed_at = Some(Instant::now());
        }
        if !witness_restarted && stopped_at.elapsed() > OUTAGE - Duration::from_secs(10) {
            witness_agent = control_plane.start_agent_with_env(&witness, None, &docker);
            witness_restarted = true;
        }
        if round == 2 {
            // Work for the reconciler (after a first round of writes right at the stop):
            // `kept` loses its container. Its instance must be recorded before a
            // container is asked for, and that write fails: no container comes back until
            // the database does.
            for id in docker_containers_of(&kept) {
                run_checked(Command::new("docker").args(["rm", "-f", &id]));
            }
        }
        let refused_name = unique("refused");
        let attempts = [
            ("POST", "/api/v1/deployments".to_owned(), Some(json!({"name": refused_name, "image": IMAGE, "command": httpd()}))),
            ("POST", format!("/api/v1/deployments/{kept}/scale"), Some(json!({"replicas": 3}))),
            ("PUT", format!("/api/v1/deployments/{kept}"), Some(json!({"name": kept, "image": IMAGE, "command": httpd(), "replicas": 2}))),
            ("DELETE", format!("/api/v1/deployments/{doomed}"), None),
        ];
        refused.push(refused_name);
        for (method, path, body) in attempts {
            let answer = timed(&control_plane, method, &path, body);
            writes += 1;
            slowest_write = slowest_write.max(answer.took);
            assert_eq!(answer.status, 503, "{method} {path} during the outage (round {round}): {answer:?}");
            assert!(answer.took <= REFUSAL_LIMIT, "{method} {path} took {:?} to be refused: {answer:?}", answer.took);
            let retry_after: u64 = answer
                .retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{method} {path}: no numeric Retry-After: {answer:?}"));
            assert!((1..=30).contains(&retry_after), "Retry-After {retry_after}");
            assert!(answer.body.contains("database"), "the error says the database is away: {}", answer.body);
        }
        for path in
            ["/api/v1/nodes", "/api/v1/deployments", &format!("/api/v1/deployments/{kept}"), "/api/v1/compute/instances", "/api/status"]
        {
            let answer = timed(&control_plane, "GET", path, None);
            reads += 1;
            slowest_read = slowest_read.max(answer.took);
            assert_eq!(answer.status, 200, "GET {path} during the outage: {answer:?}");
            assert!(answer.took <= REFUSAL_LIMIT, "GET {path} took {:?}", answer.took);
            if path == "/api/v1/nodes" {
                // Heartbeats keep the node ready: its state lives in memory.
                let nodes: Value = serde_json::from_str(&answer.body).expect("nodes JSON");
                let status_of =
                    |name: &str| nodes.as_array().and_then(|l| l.iter().find(|n| n["name"] == name)).map(|n| n["status"].clone());
                assert_eq!(status_of(&node), Some(json!("ready")), "the node during the outage: {nodes}");
                // The witness's silence shows, although its new status cannot be written.
                if witness_killed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(5)) {
                    let status = status_of(&witness);
                    assert_ne!(status, Some(json!("ready")), "the silent witness during the outage: {nodes}");
                    witness_unhealthy_seen |= status == Some(json!("unhealthy"));
                }
            }
        }
        // A read of what only the database holds (the event log's replay) is refused as
        // quickly, and says when to retry.
        let events = timed(&control_plane, "GET", "/api/v1/events?after=0", None);
        slowest_write = slowest_write.max(events.took);
        assert_eq!(events.status, 503, "GET /api/v1/events?after=0 during the outage: {events:?}");
        assert!(events.retry_after.is_some(), "{events:?}");
        assert!(events.took <= REFUSAL_LIMIT, "GET /api/v1/events?after=0 took {:?}", events.took);
        // gRPC writes answer UNAVAILABLE (the CLI names the code).
        if round % 5 == 1 {
            let started = Instant::now();
            let output = control_plane.cli(&["join-token", "create"]);
            let took = started.elapsed();
            slowest_write = slowest_write.max(took);
            writes += 1;
            let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
            assert!(!output.status.success(), "join-token create succeeded during the outage");
            assert!(stderr.contains("unavailable"), "join-token create during the outage: {stderr}");
            assert!(took <= Duration::from_secs(2), "join-token create took {took:?} (a CLI process included)");
        }
        if round >= 2 {
            assert_eq!(docker_containers_of(&kept), Vec::<String>::new(), "a container of {kept} was created while the database was away");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing of the refused writes reached memory either.
    let during: Vec<Value> = ["/api/v1/deployments", "/api/v1/compute/instances"].iter().map(|p| control_plane.rest_json(p)).collect();
    assert_eq!(deployment_names(&during[0]), deployment_names(&before[0]), "the refused writes changed nothing");
    assert_eq!(instance_ids(&during[1]), instance_ids(&before[1]), "the reconciler changed no instance while the database was away");

    // PostgreSQL back: a write succeeds within 5 s.
    postgres.pg_ctl_start();
    let back_at = Instant::now();
    let recovered = wait_until("a write to succeed after PostgreSQL's return", RECOVERY_LIMIT * 3, Duration::from_millis(100), || {
        let body = json!({"name": after, "image": IMAGE, "command": httpd(), "constraints": {"node": node}});
        let answer = timed(&control_plane, "POST", "/api/v1/deployments", Some(body));
        if answer.status == 201 { Ok(back_at.elapsed()) } else { Err(format!("{answer:?}")) }
    });
    assert!(recovered <= RECOVERY_LIMIT, "the first write succeeded {recovered:?} after PostgreSQL's return");
    assert!(witness_unhealthy_seen, "the witness was never shown unhealthy during the outage");
    let witness_back = wait_until("the witness's session after PostgreSQL's return", Duration::from_secs(60), POLL, || {
        let nodes = control_plane.rest_json("/api/v1/nodes");
        let ready = nodes.as_array().and_then(|l| l.iter().find(|n| n["name"] == witness.as_str())).is_some_and(|n| n["status"] == "ready");
        if ready { Ok(back_at.elapsed()) } else { Err(nodes.to_string()) }
    });

    // The reconciler waited for the database, saying so once, not on every pass, and
    // goes on once it is back.
    wait_until("the reconciler to go on", Duration::from_secs(20), POLL, || {
        let log = control_plane.stderr();
        if log.contains("reconciling again") { Ok(()) } else { Err("not yet".to_owned()) }
    });
    let log = control_plane.stderr();
    assert_eq!(log.matches("reconcile pass skipped").count(), 1, "{}", control_plane.logs());
    assert_eq!(log.matches("reconcile pass failed").count(), 0, "{}", control_plane.logs());

    // Nothing lost, nothing half-applied, read back from the database after a restart.
    control_plane.crash_and_restart();
    stop_on_failure.update(&mut control_plane);
    let _cleanup: Vec<DeleteDeploymentOnDrop> =
        [&kept, &doomed, &after].iter().map(|name| DeleteDeploymentOnDrop(&control_plane, (*name).clone())).collect();
    let names = deployment_names(&control_plane.rest_json("/api/v1/deployments"));
    let expected: BTreeSet<String> = [&kept, &doomed, &after].iter().map(|n| (*n).clone()).collect();
    assert_eq!(names, expected, "exactly the writes answered 2xx are in the database");
    let kept_now = deployment(&control_plane, &kept);
    assert_eq!(kept_now["replicas"], 1, "{kept_now}");
    assert_eq!(
        kept_now["revision"],
        before[0].as_array().and_then(|l| l.iter().find(|d| d["name"] == kept.as_str())).expect("kept")["revision"]
    );
    for name in [&kept, &doomed, &after] {
        wait_until(&format!("{name} running one replica"), Duration::from_secs(90), POLL, || {
            let d = deployment(&control_plane, name);
            let containers = docker_containers_of(name);
            let recorded = d["instances"].as_array().map_or(0, Vec::len);
            if d["status"] == "running" && running(&d).len() == 1 && recorded == 1 && containers.len() == 1 {
                Ok(())
            } else {
                Err(format!("{containers:?} {d}"))
            }
        });
    }
    for name in &refused {
        assert_eq!(docker_containers_of(name), Vec::<String>::new(), "no container of the refused deployment {name}");
    }
    println!(
        "DRILL postgres_outage: {writes} writes refused (503 + Retry-After) over {:.0?}, slowest refusal {slowest_write:.0?}, \
         {reads} reads answered, slowest read {slowest_read:.0?}, first write {recovered:.1?} after PostgreSQL's return, \
         an agent restarted during the outage back {witness_back:.1?} after it",
        OUTAGE
    );
}

fn deployment_names(list: &Value) -> BTreeSet<String> {
    list.as_array().map(|l| l.iter().filter_map(|d| d["name"].as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn instance_ids(list: &Value) -> BTreeMap<String, (Value, Value)> {
    list.as_array()
        .map(|l| l.iter().filter_map(|i| Some((i["id"].as_str()?.to_owned(), (i["desired"].clone(), i["revision"].clone())))).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// kill -9 of the control plane during a rollout

/// The Docker containers of a deployment by Diplo's labels: (instance label, the
/// drill's `drill.rev` label, state).
fn labelled_containers(deployment: &str) -> Vec<(String, String, String)> {
    let output = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=diplo.deployment={deployment}"),
            "--format",
            "{{.Label \"diplo.instance\"}} {{.Label \"drill.rev\"}} {{.State}}",
        ])
        .output()
        .expect("run docker ps");
    assert!(output.status.success(), "docker ps: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next().unwrap_or_default().to_owned(), parts.next().unwrap_or_default().to_owned()))
        })
        .collect()
}

const ROLLOUT_REPLICAS: usize = 4;

#[test]
fn control_plane_kill_mid_rollout() {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let Some(database) = runtime.block_on(diplo_tests::postgres::TestDatabase::create()) else { return };
    let options = ControlPlaneOptions { database_url: Some(database.url.clone()), ..ControlPlaneOptions::fast(Duration::from_secs(10)) };
    let mut control_plane = ControlPlane::start(options);
    let token = control_plane.join_token(&[]);
    let _agents: Vec<_> = (1..=2)
        .map(|i| control_plane.start_ready_agent_with_env(&unique(&format!("roll{i}")), Some(&token), &[("DIPLO_RUNTIMES", "docker")]).0)
        .collect();
    let name = unique("roll");
    let _leftovers = RemoveDockerContainersOnDrop(name.clone());
    let stop_on_failure = StopControlPlaneOnFailure::new(&mut control_plane);
    let spec = |rev: &str| {
        json!({
            "name": name, "image": IMAGE, "command": httpd(), "replicas": ROLLOUT_REPLICAS, "max_parallel": 1,
            "strategy": "spread", "labels": {"drill.rev": rev},
        })
    };
    let created = control_plane.rest("POST", "/api/v1/deployments", Some(spec("1")));
    assert_eq!(created.status, 201, "{}", created.body);
    wait_until("revision 1 running", Duration::from_secs(120), POLL, || {
        let d = deployment(&control_plane, &name);
        if d["status"] == "running" && running(&d).len() == ROLLOUT_REPLICAS { Ok(()) } else { Err(d.to_string()) }
    });

    // Update, and kill the control plane once the rollout is under way: a replica of
    // revision 1 already replaced, the next one of revision 2 placed, others of revision
    // 1 still meant to run.
    let updated = control_plane.rest("PUT", &format!("/api/v1/deployments/{name}"), Some(spec("2")));
    assert_eq!(updated.status, 200, "{}", updated.body);
    let midway = wait_until("the rollout to be midway", Duration::from_secs(60), Duration::from_millis(50), || {
        let d = deployment(&control_plane, &name);
        let instances = d["instances"].as_array().cloned().unwrap_or_default();
        let new = instances.iter().filter(|i| i["revision"] == 2).count();
        let old = instances.iter().filter(|i| i["revision"] == 1 && i["desired"] == "run").count();
        if new >= 2 && old >= 1 { Ok(format!("{new} new, {old} old")) } else { Err(d.to_string()) }
    });
    control_plane.process().kill();
    let killed_at = Instant::now();
    control_plane.crash_and_restart();
    stop_on_failure.update(&mut control_plane);
    let restarted = killed_at.elapsed();
    let cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());

    // Converged: revision 2 everywhere, exactly the desired containers, each owned by a
    // running instance of revision 2.
    let check = || -> Result<(), String> {
        let d = deployment(&control_plane, &name);
        let containers = labelled_containers(&name);
        let owners: BTreeSet<String> =
            running(&d).iter().filter(|i| i["revision"] == 2).filter_map(|i| i["id"].as_str().map(str::to_owned)).collect();
        let recorded = d["instances"].as_array().map_or(0, Vec::len);
        let labelled: BTreeSet<String> = containers.iter().map(|(instance, _, _)| instance.clone()).collect();
        // Never two containers for one instance, nor more of the new revision than wanted.
        assert_eq!(labelled.len(), containers.len(), "two containers for one instance after the restart: {containers:?}");
        let new_revision = containers.iter().filter(|(_, rev, _)| rev == "2").count();
        assert!(new_revision <= ROLLOUT_REPLICAS, "more containers of revision 2 than replicas: {containers:?}");
        let converged = d["status"] == "running"
            && d["revision"] == 2
            && recorded == ROLLOUT_REPLICAS
            && owners.len() == ROLLOUT_REPLICAS
            && containers.len() == ROLLOUT_REPLICAS
            && labelled == owners
            && containers.iter().all(|(_, rev, state)| rev == "2" && state == "running");
        if converged { Ok(()) } else { Err(format!("containers {containers:?}, deployment {d}")) }
    };
    wait_until("the rollout to converge after the restart", Duration::from_secs(120), POLL, &check);
    let converged = killed_at.elapsed();
    // And it stays so: no late duplicate.
    std::thread::sleep(Duration::from_secs(5));
    check().unwrap_or_else(|e| panic!("after 5 s more: {e}"));
    drop(cleanup);
    drop(control_plane);
    runtime.block_on(database.drop_best_effort());
    println!(
        "DRILL control_plane_kill_mid_rollout: killed with {midway} of {ROLLOUT_REPLICAS} replicas, back up in {restarted:.1?}, \
         converged on revision 2 with exactly {ROLLOUT_REPLICAS} containers {converged:.1?} after the kill"
    );
}

// ---------------------------------------------------------------------------------
// An agent restarted in a loop while its containers restart

/// How long the agent is restarted in a loop.
const LOOP: Duration = Duration::from_secs(60);
const LOOP_REPLICAS: usize = 2;

/// What the drill has seen of one container through the API.
#[derive(Debug, Default)]
struct Seen {
    instance: String,
    restart_count: u64,
    /// When the API first showed its current count.
    counted_at: Option<Instant>,
    /// The longest the API showed one count (no restart seen meanwhile).
    largest_gap: Duration,
}

/// Containers of `deployment` as `GET /api/v1/containers` lists them: (container id,
/// instance label, restart count). `None` when the API does not answer 200.
fn api_containers(control_plane: &ControlPlane, deployment: &str) -> Option<Vec<(String, String, u64)>> {
    let answer = timed(control_plane, "GET", "/api/v1/containers", None);
    if answer.status != 200 {
        return None;
    }
    let list: Value = serde_json::from_str(&answer.body).ok()?;
    Some(
        list.as_array()?
            .iter()
            .filter(|c| c["labels"]["diplo.deployment"] == deployment)
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_owned(),
                    c["labels"]["diplo.instance"].as_str().unwrap_or_default().to_owned(),
                    c["restart_count"].as_u64().unwrap_or_else(|| panic!("no restart_count in {c}")),
                )
            })
            .collect(),
    )
}

#[test]
fn agent_restart_loop() {
    let test_started = Instant::now();
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let node = unique("loop");
    let env = [("DIPLO_RUNTIMES", "docker")];
    let (mut agent, _) = control_plane.start_ready_agent_with_env(&node, Some(&token), &env);
    let name = unique("flappy");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    // Each container runs 3 s, exits 1 and is started again by Docker's restart policy.
    let created = control_plane.rest(
        "POST",
        "/api/v1/deployments",
        Some(json!({"name": name, "image": IMAGE, "replicas": LOOP_REPLICAS, "restart_policy": "always",
                    "command": ["/bin/sh", "-c", "sleep 3; exit 1"]})),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    wait_until("both containers to have restarted once", Duration::from_secs(90), POLL, || {
        let listed = api_containers(&control_plane, &name).unwrap_or_default();
        if listed.len() == LOOP_REPLICAS && listed.iter().all(|(_, _, count)| *count >= 1) { Ok(()) } else { Err(format!("{listed:?}")) }
    });

    eprintln!("[drill] containers restarting {:.1?} into the test", test_started.elapsed());
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut most_in_runtime = 0usize;
    let mut observe = |control_plane: &ControlPlane| {
        let now = Instant::now();
        if let Some(listed) = api_containers(control_plane, &name) {
            for (id, instance, count) in listed {
                let entry = seen.entry(id.clone()).or_insert_with(|| Seen { instance: instance.clone(), ..Seen::default() });
                assert!(
                    count >= entry.restart_count,
                    "the restart count of container {id} went back from {} to {count}\n{}",
                    entry.restart_count,
                    control_plane.logs()
                );
                assert_eq!(entry.instance, instance, "container {id} changed owner");
                if count > entry.restart_count || entry.counted_at.is_none() {
                    entry.restart_count = count;
                    entry.counted_at = Some(now);
                }
                let unchanged = entry.counted_at.map_or(Duration::ZERO, |at| now - at);
                entry.largest_gap = entry.largest_gap.max(unchanged);
            }
        }
        let in_runtime = docker_containers_of(&name).len();
        most_in_runtime = most_in_runtime.max(in_runtime);
        assert!(in_runtime <= LOOP_REPLICAS, "{in_runtime} containers of {name} in Docker, {LOOP_REPLICAS} wanted");
    };

    // Each round: kill -9, down for 0.5 to 1.25 s, start again, wait for its session
    // to open (the agent's log says so), let it run a second, again.
    let sessions = |agent: &diplo_tests::Agent| agent.stderr().matches("session open").count();
    let started = Instant::now();
    let mut restarts_of_agent = 0u32;
    let mut slowest_reconnect = Duration::ZERO;
    while started.elapsed() < LOOP {
        let opened = sessions(&agent);
        agent.kill();
        restarts_of_agent += 1;
        let down_for = Duration::from_millis(500 + u64::from(restarts_of_agent % 4) * 250);
        let until = Instant::now() + down_for;
        while Instant::now() < until {
            observe(&control_plane);
            std::thread::sleep(Duration::from_millis(100));
        }
        let restarted_at = Instant::now();
        agent = control_plane.start_agent_with_env(&node, None, &env);
        while sessions(&agent) == opened {
            assert!(agent.process().try_exit().is_none(), "the agent exited:\n{}", agent.logs());
            assert!(restarted_at.elapsed() < Duration::from_secs(30), "the agent opened no session within 30 s:\n{}", agent.logs());
            observe(&control_plane);
            std::thread::sleep(Duration::from_millis(100));
        }
        slowest_reconnect = slowest_reconnect.max(restarted_at.elapsed());
        let up_until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < up_until {
            observe(&control_plane);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Settled: exactly the replicas, each owned by a live instance, nothing orphaned, and
    // the counts still where they were or higher.
    let settled = wait_until("the deployment to settle after the loop", Duration::from_secs(60), POLL, || {
        observe(&control_plane);
        let d = deployment(&control_plane, &name);
        let owners: BTreeSet<String> = d["instances"]
            .as_array()
            .map(|l| l.iter().filter(|i| i["desired"] == "run").filter_map(|i| i["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let listed = api_containers(&control_plane, &name).unwrap_or_default();
        let labelled: BTreeSet<String> = listed.iter().map(|(_, instance, _)| instance.clone()).collect();
        let in_runtime = docker_containers_of(&name);
        if owners.len() == LOOP_REPLICAS && listed.len() == LOOP_REPLICAS && labelled == owners && in_runtime.len() == LOOP_REPLICAS {
            Ok(listed)
        } else {
            Err(format!("owners {owners:?}, API containers {listed:?}, Docker {in_runtime:?}"))
        }
    });
    eprintln!("[drill] settled {:.1?} into the test", test_started.elapsed());
    let ids: BTreeSet<&String> = settled.iter().map(|(id, _, _)| id).collect();
    let restarts: u64 = seen.iter().filter(|(id, _)| ids.contains(id)).map(|(_, s)| s.restart_count).sum();
    let largest_gap = seen.values().map(|s| s.largest_gap).max().unwrap_or_default();
    let replaced = seen.len() - ids.len();
    assert_eq!(replaced, 0, "containers were replaced while the agent restarted: {seen:?}");
    assert!(restarts >= 2 * LOOP_REPLICAS as u64, "the containers kept restarting during the loop: {seen:?}");
    println!(
        "DRILL agent_restart_loop: agent killed and restarted {restarts_of_agent} times in {LOOP:.0?}, {restarts} container restarts seen, \
         slowest reconnect {slowest_reconnect:.1?}, restart counts never went back, at most {most_in_runtime} containers in Docker for {LOOP_REPLICAS} replicas, \
         no orphan, largest gap between two restarts seen of one container {largest_gap:.1?}"
    );
}
