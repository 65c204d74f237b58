//! An agent killed with SIGKILL and started again re-adopts its containers without
//! restarting them, on each of the four runtimes — checked from outside Diplo: the
//! runtimes' own tools (`docker inspect`, `podman inspect`, `ctr task ls`, `lxc-info`)
//! give each container's main process, and that process (its PID and its start time in
//! `/proc/<pid>/stat`, which a new process with a reused PID would not share) is the
//! same before the kill, while the agent is dead, and after the new agent took over.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use diplo_tests::{ControlPlane, ControlPlaneOptions, unique_name, wait_until};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(250);
const RUNTIMES: [&str; 4] = ["docker", "podman", "containerd", "lxc"];

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(output.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The main process of a container as its runtime's own tool reports it.
fn runtime_pid(runtime: &str, id: &str) -> u32 {
    let text = match runtime {
        "docker" => run("docker", &["inspect", "--format", "{{.State.Pid}}", id]),
        "podman" => run("podman", &["inspect", "--format", "{{.State.Pid}}", id]),
        // TASK  PID  STATUS
        "containerd" => run("ctr", &["--namespace", "diplo", "task", "ls"])
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(id)).then(|| fields.next().unwrap_or_default().to_owned())
            })
            .unwrap_or_else(|| panic!("ctr lists no task {id}")),
        "lxc" => run("lxc-info", &["-P", "/var/lib/lxc", "-n", id, "-p", "-H"]),
        other => panic!("unknown runtime {other}"),
    };
    text.trim().parse().unwrap_or_else(|e| panic!("{runtime} gives {id:?} the PID {text:?}: {e}"))
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn process_start(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("no process {pid}: {e}"));
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')').expect("(comm)") + 2..];
    after_name.split_whitespace().nth(19).and_then(|f| f.parse().ok()).unwrap_or_else(|| panic!("bad stat: {stat}"))
}

/// What the runtime itself says about a container's run, beyond the process.
fn runtime_started_at(runtime: &str, id: &str) -> Option<String> {
    match runtime {
        "docker" | "podman" => Some(run(runtime, &["inspect", "--format", "{{.State.StartedAt}}", id])),
        _ => None,
    }
}

#[derive(Debug, PartialEq)]
struct Seen {
    pid: u32,
    start: u64,
    started_at: Option<String>,
}

fn seen(runtime: &str, id: &str) -> Seen {
    let pid = runtime_pid(runtime, id);
    assert!(pid > 0, "{runtime} {id} has no process");
    Seen { pid, start: process_start(pid), started_at: runtime_started_at(runtime, id) }
}

/// Force-removes the containers (by Diplo id, through REST) when dropped.
struct RemoveOnDrop<'a>(&'a ControlPlane, Vec<String>);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        for id in &self.1 {
            let _ = self.0.rest("DELETE", &format!("/api/v1/containers/{id}?force=true"), None);
        }
    }
}

#[test]
fn a_killed_agent_readopts_its_containers_on_all_four_runtimes_as_the_runtimes_see_it() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(Duration::from_secs(30)));
    let token = control_plane.join_token(&[]);
    let node = unique_name("adopt");
    let (mut agent, info) = control_plane.start_ready_agent(&node, Some(&token));
    let available: Vec<String> =
        info["available"].as_array().expect("available").iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    let runtimes: Vec<&str> = RUNTIMES
        .into_iter()
        .filter(|r| {
            let here = available.iter().any(|a| a == r);
            assert!(here || !in_ci(), "CI=true but {r} is not available on the node: {available:?}");
            if !here {
                eprintln!("[test] SKIPPED for {r}: not available here (not CI)");
            }
            here
        })
        .collect();
    assert!(!runtimes.is_empty(), "no runtime available: {available:?}");

    let mut cleanup = RemoveOnDrop(&control_plane, Vec::new());
    let mut ids = BTreeMap::new();
    for runtime in &runtimes {
        let created = control_plane.rest(
            "POST",
            "/api/v1/containers",
            Some(json!({"image": IMAGE, "name": unique_name(&format!("adopt-{runtime}")), "runtime_type": runtime,
                        "command": ["/bin/sh", "-c", "while true; do sleep 1; done"]})),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.json()["id"].as_str().expect("id").to_owned();
        cleanup.1.push(id.clone());
        ids.insert(*runtime, id);
    }
    let before: BTreeMap<&str, Seen> = ids.iter().map(|(r, id)| (*r, seen(r, id))).collect();
    eprintln!("[test] before the kill: {before:?}");

    agent.kill();
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some(), "the agent is dead");
    for (runtime, id) in &ids {
        assert_eq!(seen(runtime, id), before[runtime], "{runtime}: the container outlives its agent");
    }

    agent = control_plane.start_agent(&node, None);
    // The new agent has taken over once the control plane reaches a container through it.
    let probe = ids.values().next().expect("a container").clone();
    wait_until("a session with the restarted agent", Duration::from_secs(60), POLL, || {
        if let Some(status) = agent.process().try_exit() {
            panic!("the restarted agent exited with {status}:\n{}", agent.logs());
        }
        let exec = control_plane.rest("POST", &format!("/api/v1/containers/{probe}/exec"), Some(json!({"argv": ["true"]})));
        if exec.status == 200 { Ok(()) } else { Err(exec.body) }
    });
    // A few heartbeats of the new agent: anything it restarted would show by now.
    std::thread::sleep(Duration::from_secs(3));
    let listed = control_plane.rest("GET", "/api/v1/containers", None);
    assert_eq!(listed.status, 200, "{}", listed.body);
    let listed: Vec<Value> = listed.json().as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), ids.len(), "none lost, none duplicated: {listed:#?}");
    for (runtime, id) in &ids {
        let now = seen(runtime, id);
        assert_eq!(now, before[runtime], "{runtime}: the same process runs, not restarted");
        let reported = listed.iter().find(|c| c["id"] == id.as_str()).unwrap_or_else(|| panic!("{id} not listed: {listed:#?}"));
        assert_eq!(reported["status"], "running", "{reported}");
        assert_eq!(reported["pid"], now.pid, "{runtime}: the agent reports the process the runtime runs: {reported}");
    }
}
