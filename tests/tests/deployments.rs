//! Deployments end to end with real agents and runtimes: replicas spread over nodes, a
//! node killed with SIGKILL has its replica rescheduled and, back again, its surplus copy
//! removed; a control plane killed mid-deploy converges with no duplicate; runtime
//! choice follows each node's platform; idempotent and duplicate deploys; an image's
//! platforms filter placement, and an image its registry lacks is refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use diplo_tests::unique_name as unique;
use diplo_tests::{
    Agent, ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, RemoveDockerContainersOnDrop, docker_containers_of, wait_until,
};
use serde_json::{Value, json};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(300);
const DOWN_GRACE: Duration = Duration::from_secs(6);

fn httpd() -> Vec<&'static str> {
    vec!["/bin/sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
}

fn deployment(control_plane: &ControlPlane, name: &str) -> Value {
    control_plane.rest_json(&format!("/api/v1/deployments/{name}"))
}

/// Node ids of the deployment's running instances.
fn running_nodes(deployment: &Value) -> Vec<String> {
    deployment["instances"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|i| i["status"] == "running" && i["desired"] == "run")
                .filter_map(|i| i["node"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A control plane with agents `names`, each limited to Docker (same runtime everywhere
/// keeps the assertions about containers simple).
fn cluster(names: &[&str]) -> (ControlPlane, Vec<Agent>) {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(DOWN_GRACE));
    let token = control_plane.join_token(&[]);
    let agents =
        names.iter().map(|name| control_plane.start_ready_agent_with_env(name, Some(&token), &[("DIPLO_RUNTIMES", "docker")]).0).collect();
    (control_plane, agents)
}

#[test]
fn replicas_spread_and_move_when_a_node_dies_then_the_surplus_copy_goes() {
    let (control_plane, mut agents) = cluster(&["n1", "n2", "n3"]);
    let name = unique("web");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let body = json!({"name": name, "image": IMAGE, "replicas": 3, "command": httpd(), "restart_policy": "always"});
    let key = format!("key-{name}");
    let authorization = format!("Bearer {}", control_plane.admin_token());
    let post = |body: &Value, key: &str| {
        let client = reqwest::blocking::Client::new();
        let response = client
            .post(control_plane.rest_url("/api/unified/deploy"))
            .header("Authorization", &authorization)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .expect("POST deploy");
        (response.status().as_u16(), response.json::<Value>().expect("JSON"))
    };

    let (status, created) = post(&body, &key);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "deploying");
    assert_eq!(created["runtime_type"], "docker", "{created}");
    // The same request again creates nothing new.
    let (status, again) = post(&body, &key);
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["id"], created["id"]);
    // The same name under another key is a conflict.
    let (status, conflict) = post(&body, "another-key");
    assert_eq!(status, 409, "{conflict}");
    let listed = control_plane.rest_json("/api/v1/deployments");
    assert_eq!(listed.as_array().map(|l| l.iter().filter(|d| d["name"] == name.as_str()).count()), Some(1));

    // Three replicas on three different nodes.
    let spread = wait_until("3 replicas on 3 nodes", Duration::from_secs(90), POLL, || {
        let d = deployment(&control_plane, &name);
        let nodes: BTreeSet<String> = running_nodes(&d).into_iter().collect();
        if d["status"] == "running" && nodes.len() == 3 { Ok(nodes) } else { Err(d.to_string()) }
    });
    assert_eq!(docker_containers_of(&name).len(), 3);

    // Kill n1's agent: once n1 is down, its replica runs elsewhere within 30 s.
    let n1 = control_plane.nodes().into_iter().find(|n| n["name"] == "n1").expect("n1");
    let n1_id = n1["id"].as_str().expect("id").to_owned();
    assert!(spread.contains(&n1_id));
    agents[0].kill();
    wait_until("n1 to be down", Duration::from_secs(30), POLL, || {
        let node = control_plane.nodes().into_iter().find(|n| n["name"] == "n1").expect("n1");
        if node["status"] == "down" { Ok(()) } else { Err(node["status"].to_string()) }
    });
    let down_at = Instant::now();
    wait_until("the lost replica to run elsewhere", Duration::from_secs(30), POLL, || {
        let d = deployment(&control_plane, &name);
        let nodes = running_nodes(&d);
        if nodes.len() == 3 && !nodes.contains(&n1_id) { Ok(()) } else { Err(d.to_string()) }
    });
    eprintln!("[test] rescheduled {:.1?} after n1 was declared down", down_at.elapsed());

    // n1 comes back: its old copy is removed, one copy kept: three containers in all.
    agents[0] = control_plane.start_agent_with_env("n1", None, &[("DIPLO_RUNTIMES", "docker")]);
    wait_until("the surplus copy to be removed", Duration::from_secs(60), POLL, || {
        let containers = docker_containers_of(&name);
        let d = deployment(&control_plane, &name);
        if containers.len() == 3 && running_nodes(&d).len() == 3 { Ok(()) } else { Err(format!("{containers:?} {d}")) }
    });

    // Scale down, then delete: containers go too.
    let scaled = control_plane.rest("POST", &format!("/api/v1/deployments/{name}/scale"), Some(json!({"replicas": 1})));
    assert_eq!(scaled.status, 200, "{}", scaled.body);
    wait_until("one replica left", Duration::from_secs(60), POLL, || {
        let containers = docker_containers_of(&name);
        if containers.len() == 1 { Ok(()) } else { Err(format!("{containers:?}")) }
    });
    let deleted = control_plane.rest("DELETE", &format!("/api/v1/deployments/{name}"), None);
    assert_eq!(deleted.status, 202, "{}", deleted.body);
    wait_until("everything removed", Duration::from_secs(60), POLL, || {
        let gone = control_plane.rest("GET", &format!("/api/v1/deployments/{name}"), None).status == 404;
        if gone && docker_containers_of(&name).is_empty() { Ok(()) } else { Err(format!("{:?}", docker_containers_of(&name))) }
    });
}

/// Sends `signal` (`STOP`, `CONT`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Resumes frozen agents when dropped (a failing test must not leave them stopped).
struct ContinueOnDrop(Vec<u32>);

impl Drop for ContinueOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn a_control_plane_killed_mid_deploy_converges_without_duplicates() {
    let (mut control_plane, mut agents) = cluster(&["m1", "m2"]);
    let name = unique("crash");
    // Until the control plane is back and the guard below can hold it.
    let _leftovers = RemoveDockerContainersOnDrop(name.clone());
    // The crash must fall between "instances recorded" and "containers created": the
    // agents are frozen (SIGSTOP), so the create commands the control plane sends stay
    // unanswered, whatever the machine's speed. Frozen agents miss heartbeats, so the
    // deploy follows at once, well within the 3 s before they would turn unhealthy.
    let pids: Vec<u32> = agents.iter_mut().map(|a| a.process().pid()).collect();
    let _resume = ContinueOnDrop(pids.clone());
    for pid in &pids {
        signal(*pid, "STOP");
    }
    let created = control_plane.rest("POST", "/api/deploy", Some(json!({"name": name, "image": IMAGE, "replicas": 3, "command": httpd()})));
    assert_eq!(created.status, 201, "{}", created.body);
    // Inside the window: the store holds the three instance records, no container exists.
    wait_until("the instance records", Duration::from_secs(10), Duration::from_millis(50), || {
        let d = deployment(&control_plane, &name);
        let recorded = d["instances"].as_array().map_or(0, Vec::len);
        if recorded == 3 { Ok(()) } else { Err(d.to_string()) }
    });
    let d = deployment(&control_plane, &name);
    assert!(d["instances"].as_array().is_some_and(|l| l.iter().all(|i| i["status"] != "running")), "nothing runs yet: {d}");
    assert_eq!(docker_containers_of(&name), Vec::<String>::new(), "no container exists yet");
    control_plane.process().kill();
    for pid in &pids {
        signal(*pid, "CONT");
    }
    control_plane.crash_and_restart();
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    wait_until("the deployment to converge", Duration::from_secs(120), POLL, || {
        let d = deployment(&control_plane, &name);
        let containers = docker_containers_of(&name);
        if d["status"] == "running" && running_nodes(&d).len() == 3 && containers.len() == 3 {
            Ok(())
        } else {
            Err(format!("{containers:?} {d}"))
        }
    });
    // And it stays at exactly three.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(docker_containers_of(&name).len(), 3, "no duplicate appeared");
    assert_eq!(running_nodes(&deployment(&control_plane, &name)).len(), 3);
}

#[test]
fn runtime_choice_follows_each_nodes_platform_and_a_forced_runtime_needs_a_node() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(DOWN_GRACE));
    let token = control_plane.join_token(&[]);
    let limited = [("DIPLO_RUNTIMES", "docker,lxc")];
    let (_pi, pi) = control_plane.start_ready_agent_with_env("pi", Some(&token), &[limited[0], ("DIPLO_ARCH", "arm64")]);
    let (_x86, x86) = control_plane.start_ready_agent_with_env("x86", Some(&token), &limited);
    assert_eq!(pi["arch"], "arm64");
    assert_eq!(pi["preferred"], "lxc", "{pi}");
    assert_eq!(x86["preferred"], "docker", "{x86}");

    for (node, expected) in [("pi", "lxc"), ("x86", "docker")] {
        let name = unique(&format!("on-{node}"));
        // Image platforms are a hard filter: the arm64 node needs an image built for arm64.
        let image = if node == "pi" { multi_platform_image() } else { IMAGE.to_owned() };
        // Removes the deployment (LXC or Docker) when an assertion below fails.
        let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
        let created = control_plane.rest(
            "POST",
            "/api/unified/deploy",
            Some(json!({"name": name, "image": image, "replicas": 1, "command": httpd(), "constraints": {"node": node}})),
        );
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.json()["runtime_type"], expected, "{}", created.body);
        let running = wait_until(&format!("{name} running"), Duration::from_secs(90), POLL, || {
            let d = deployment(&control_plane, &name);
            if d["status"] == "running" { Ok(d) } else { Err(d.to_string()) }
        });
        assert_eq!(running["instances"][0]["runtime"], expected, "{running}");
        let deleted = control_plane.rest("DELETE", &format!("/api/v1/deployments/{name}"), None);
        assert_eq!(deleted.status, 202);
        wait_until(&format!("{name} deleted"), Duration::from_secs(60), POLL, || {
            let status = control_plane.rest("GET", &format!("/api/v1/deployments/{name}"), None).status;
            if status == 404 { Ok(()) } else { Err(status.to_string()) }
        });
    }

    let refused = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": unique("nowhere"), "image": IMAGE, "runtime_type": "containerd"})),
    );
    assert!(refused.status == 409 || refused.status == 400, "{}", refused.body);
    for expected in ["pi", "x86", "containerd"] {
        assert!(refused.body.contains(expected), "the reasons name {expected}: {}", refused.body);
    }
    let listed = control_plane.rest_json("/api/v1/deployments");
    assert_eq!(listed, json!([]), "nothing was committed");

    let bad = control_plane.rest("POST", "/api/unified/deploy", Some(json!({"name": "x", "image": IMAGE, "replicas": -1})));
    assert_eq!(bad.status, 400, "{}", bad.body);
    let both = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": "x", "image": IMAGE, "repo_url": "file:///srv/repos/app.git"})),
    );
    assert_eq!(both.status, 400, "{}", both.body);
    assert!(both.body.contains("repo_url"), "{}", both.body);
    let hostile = control_plane.rest("POST", "/api/unified/deploy", Some(json!({"name": "x", "repo_url": "--upload-pack=touch /tmp/x"})));
    assert_eq!(hostile.status, 400, "{}", hostile.body);
    assert!(hostile.body.contains("repo_url"), "{}", hostile.body);
    let neither = control_plane.rest("POST", "/api/unified/deploy", Some(json!({"name": "x"})));
    assert_eq!(neither.status, 400, "{}", neither.body);
    assert_eq!(control_plane.rest_json("/api/v1/deployments"), json!([]), "nothing was committed");
}

/// `VERSION` of every container of a deployment, as Docker reports their environment.
fn versions(deployment: &str) -> Vec<String> {
    docker_containers_of(deployment)
        .iter()
        .map(|id| {
            let output = std::process::Command::new("docker")
                .args(["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", id])
                .output()
                .expect("docker inspect");
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .find_map(|line| line.strip_prefix("VERSION=").map(str::to_owned))
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn rolling_update_rollback_and_drain() {
    let (control_plane, _agents) = cluster(&["r1", "r2"]);
    let name = unique("roll");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let spec =
        |version: &str| json!({"name": name, "image": IMAGE, "replicas": 2, "command": httpd(), "environment": {"VERSION": version}});
    let created = control_plane.rest("POST", "/api/unified/deploy", Some(spec("1")));
    assert_eq!(created.status, 201, "{}", created.body);
    let converged = |what: &str, revision: u64, version: &str| {
        wait_until(what, Duration::from_secs(120), POLL, || {
            let d = deployment(&control_plane, &name);
            let current =
                d["instances"].as_array().map_or(0, |l| l.iter().filter(|i| i["revision"] == revision && i["status"] == "running").count());
            let versions = versions(&name);
            if d["status"] == "running" && d["revision"] == revision && current == 2 && versions == [version, version] {
                Ok(())
            } else {
                Err(format!("{versions:?} {d}"))
            }
        })
    };
    converged("revision 1", 1, "1");

    let updated = control_plane.rest("PUT", &format!("/api/v1/deployments/{name}"), Some(spec("2")));
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.json()["revision"], 2);
    converged("the rolling update to revision 2", 2, "2");

    let rolled_back = control_plane.rest("POST", &format!("/api/v1/deployments/{name}/rollback"), None);
    assert_eq!(rolled_back.status, 200, "{}", rolled_back.body);
    assert_eq!(rolled_back.json()["revision"], 3);
    converged("the rollback (revision 3 = spec of 1)", 3, "1");

    // Draining r1 moves its replica to r2; nothing lands on r1 any more.
    let r1 = control_plane.nodes().into_iter().find(|n| n["name"] == "r1").expect("r1");
    let r1_id = r1["id"].as_str().expect("id").to_owned();
    control_plane.cli_ok(&["nodes", "drain", "r1"]);
    wait_until("r1 to be drained", Duration::from_secs(90), POLL, || {
        let d = deployment(&control_plane, &name);
        let nodes = running_nodes(&d);
        let containers = docker_containers_of(&name);
        if nodes.len() == 2 && !nodes.contains(&r1_id) && containers.len() == 2 { Ok(()) } else { Err(format!("{containers:?} {d}")) }
    });
    let r1 = control_plane.nodes().into_iter().find(|n| n["name"] == "r1").expect("r1");
    assert_eq!(r1["cordoned"], true);
}

/// `127.0.0.1:5000/diplo/busybox:multiarch`: a manifest list naming linux/amd64 and
/// linux/arm64, both pointing at the (amd64) manifest of [`IMAGE`], pushed to the local
/// registry if it is not there. It lets a node whose fingerprint says arm64 (on an amd64
/// host) pass the image platform filter and still run the image.
fn multi_platform_image() -> String {
    const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    let url = |tag: &str| format!("http://127.0.0.1:5000/v2/diplo/busybox/manifests/{tag}");
    let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("client");
    let single = client.get(url("latest")).header("Accept", MANIFEST).send().expect("GET the test image's manifest");
    assert!(single.status().is_success(), "the local registry lacks {IMAGE}: {}", single.status());
    let bytes = single.bytes().expect("manifest bytes");
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    let entry = |arch: &str| json!({"mediaType": MANIFEST, "digest": digest, "size": bytes.len(), "platform": {"architecture": arch, "os": "linux"}});
    let list = json!({"schemaVersion": 2, "mediaType": LIST, "manifests": [entry("amd64"), entry("arm64")]});
    let pushed = client.put(url("multiarch")).header("Content-Type", LIST).body(list.to_string()).send().expect("PUT the manifest list");
    assert!(pushed.status().is_success(), "pushing the manifest list: {} {:?}", pushed.status(), pushed.text());
    "127.0.0.1:5000/diplo/busybox:multiarch".to_owned()
}

/// SHA-256 of `bytes` in hex, with `sha256sum` (the test crate links no hash crate).
fn sha256_hex(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child.stdin.take().expect("stdin").write_all(bytes).expect("write to sha256sum");
    let output = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().expect("a digest").to_owned()
}

#[test]
fn image_platforms_filter_placement_and_unknown_images_are_refused() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::fast(DOWN_GRACE));
    let token = control_plane.join_token(&[]);
    let docker = ("DIPLO_RUNTIMES", "docker");
    let (_arm, arm) = control_plane.start_ready_agent_with_env("arm", Some(&token), &[docker, ("DIPLO_ARCH", "arm64")]);
    let (_x86, x86) = control_plane.start_ready_agent_with_env("x86", Some(&token), &[docker]);
    assert_eq!(arm["arch"], "arm64", "{arm}");
    assert_eq!(x86["arch"], "amd64", "this test needs an amd64 host: {x86}");
    let x86_id = x86["id"].as_str().expect("id").to_owned();

    // IMAGE is one linux/amd64 manifest: both replicas go to x86 (spreading would put one
    // on each node), none to the arm64 node, although its Docker could run it.
    let name = unique("amd64-only");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let created =
        control_plane.rest("POST", "/api/unified/deploy", Some(json!({"name": name, "image": IMAGE, "replicas": 2, "command": httpd()})));
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["runtime_type"], "docker", "{}", created.body);
    let running = wait_until("2 replicas on x86", Duration::from_secs(90), POLL, || {
        let d = deployment(&control_plane, &name);
        let nodes = running_nodes(&d);
        if d["status"] == "running" && nodes.len() == 2 { Ok(d) } else { Err(d.to_string()) }
    });
    assert_eq!(running_nodes(&running), vec![x86_id.clone(), x86_id.clone()], "{running}");
    assert_eq!(running["message"], "", "{running}");

    // Constrained to the arm64 node: refused with the reason, nothing committed.
    let pinned = unique("amd64-on-arm");
    let refused = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": pinned, "image": IMAGE, "command": httpd(), "constraints": {"node": "arm"}})),
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("arm: image is linux/amd64 only, node is linux/arm64"), "{}", refused.body);
    assert_eq!(control_plane.rest("GET", &format!("/api/v1/deployments/{pinned}"), None).status, 404);

    // An image its registry does not have: 404 naming it, nothing committed.
    let ghost = unique("ghost");
    let unknown = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": ghost, "image": "127.0.0.1:5000/diplo/no-such-image:latest"})),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("127.0.0.1:5000/diplo/no-such-image:latest"), "{}", unknown.body);
    assert_eq!(control_plane.rest("GET", &format!("/api/v1/deployments/{ghost}"), None).status, 404);

    // A registry that cannot be reached does not block placement; the message says why.
    let unreachable = unique("unreachable");
    let _cleanup_unreachable = DeleteDeploymentOnDrop(&control_plane, unreachable.clone());
    let accepted = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": unreachable, "image": "127.0.0.1:1/diplo/busybox:latest", "restart_policy": "no"})),
    );
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    wait_until("the message to say why platforms are not checked", Duration::from_secs(30), POLL, || {
        let d = deployment(&control_plane, &unreachable);
        let message = d["message"].as_str().unwrap_or_default();
        if message.contains("not checked") && message.contains("127.0.0.1:1") { Ok(()) } else { Err(d.to_string()) }
    });
}

/// A cleanup guard runs while a failed assertion unwinds the test, with the control plane
/// already gone: it still removes the test's Docker containers, and it does not panic (a
/// panic while unwinding aborts the whole test process, skipping every later guard).
#[test]
fn cleanup_guard_removes_containers_when_the_test_fails_and_the_control_plane_is_gone() {
    let name = unique("guarded");
    let mut control_plane = ControlPlane::spawn(ControlPlaneOptions::default());
    control_plane.process().kill();
    let label = format!("diplo.deployment={name}");
    let output = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &name, "--label", &label, IMAGE, "sleep", "300"])
        .output()
        .expect("run docker");
    assert!(output.status.success(), "docker run: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(docker_containers_of(&name).len(), 1);

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
        panic!("an assertion failed midway");
    }));
    let payload = outcome.expect_err("the test body panicked");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"an assertion failed midway"), "the guard panicked in turn");
    let left = docker_containers_of(&name);
    for id in &left {
        let _ = std::process::Command::new("docker").args(["rm", "-f", id]).output();
    }
    assert!(left.is_empty(), "the guard left {left:?} behind");
}
