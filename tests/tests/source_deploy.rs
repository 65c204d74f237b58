//! From a git repository to a running app, end to end with a real control plane, real
//! agents, Docker's build API and the local registry: the seed's `unified/deploy` body
//! builds and runs a Go and a Python app (detected, templated, pushed, pulled), a new
//! commit rolls out as a new revision, a Dockerfile repository and a static site build
//! and run, an image built on a Docker node runs on containerd-only and LXC-only nodes,
//! and bad sources fail the build and the deployment leaving nothing behind.
//!
//! The repositories are made here with `git` and served as `file://` (the agents allow
//! the test's directory); the base images stand in for golang/python/alpine and come from
//! `scripts/base-images` (no image can be downloaded here).

use std::process::Command;
use std::time::Duration;

use diplo_tests::git_repos::{GitRepos as Repos, commit, file_url as url, git};
use diplo_tests::{Agent, ControlPlane, ControlPlaneOptions, DeleteDeploymentOnDrop, unique_name, wait_until};
use serde_json::{Value, json};

const REGISTRY: &str = "127.0.0.1:5000";
const BUSYBOX: &str = "127.0.0.1:5000/diplo/busybox:latest";
const GO_BASE: &str = "127.0.0.1:5000/diplo/base/go:1.19-bookworm";
const PYTHON_BASE: &str = "127.0.0.1:5000/diplo/base/python:3.11-venv";
const POLL: Duration = Duration::from_millis(250);
/// Builds compile Go on a loaded 2-core machine: minutes, not seconds.
const BUILD_WAIT: Duration = Duration::from_secs(420);

/// `DIPLO_BASE_IMAGES` pointing every stage the tests use at the local stand-ins.
fn base_images() -> String {
    format!("go={GO_BASE},go-runtime={BUSYBOX},python={PYTHON_BASE},static={BUSYBOX},generic={BUSYBOX}")
}

fn go_app(greeting: &str) -> Vec<(&'static str, String)> {
    vec![
        ("go.mod", "module example.com/hello\n\ngo 1.19\n".to_owned()),
        (
            "main.go",
            format!(
                "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n)\n\nfunc main() {{\n\thttp.HandleFunc(\"/\", func(w http.ResponseWriter, r *http.Request) {{\n\t\tfmt.Fprint(w, \"{greeting}\")\n\t}})\n\thttp.ListenAndServe(\":8080\", nil)\n}}\n"
            ),
        ),
    ]
}

const PYTHON_APP: &str = "from http.server import BaseHTTPRequestHandler, HTTPServer\n\n\
class Hello(BaseHTTPRequestHandler):\n    def do_GET(self):\n        body = b'hello from python'\n        \
self.send_response(200)\n        self.send_header('Content-Length', str(len(body)))\n        self.end_headers()\n        \
self.wfile.write(body)\n\nHTTPServer(('0.0.0.0', 8000), Hello).serve_forever()\n";

fn refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(name, content)| (*name, content.as_str())).collect()
}

/// A control plane pushing builds to the local registry, with the base images above.
fn control_plane(extra: &[(&str, &str)]) -> ControlPlane {
    let mut env = vec![("DIPLO_REGISTRY".to_owned(), REGISTRY.to_owned()), ("DIPLO_BASE_IMAGES".to_owned(), base_images())];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    ControlPlane::start(ControlPlaneOptions { env, ..ControlPlaneOptions::fast(Duration::from_secs(10)) })
}

/// An agent limited to `runtimes` and `builders`, allowed to clone from `repos`.
fn agent(control_plane: &ControlPlane, name: &str, runtimes: &str, builders: &str, repos: &Repos) -> Agent {
    let token = control_plane.join_token(&[]);
    let root = repos.root().display().to_string();
    control_plane
        .start_ready_agent_with_env(
            name,
            Some(&token),
            &[("DIPLO_RUNTIMES", runtimes), ("DIPLO_BUILDERS", builders), ("DIPLO_BUILD_FILE_REPOS", root.as_str())],
        )
        .0
}

fn deployment(control_plane: &ControlPlane, name: &str) -> Value {
    control_plane.rest_json(&format!("/api/v1/deployments/{name}"))
}

/// Polls the deployment until `done` says so, recording every status seen on the way.
fn follow(control_plane: &ControlPlane, name: &str, done: impl Fn(&Value) -> bool) -> (Value, Vec<String>) {
    let mut seen: Vec<String> = Vec::new();
    let last = wait_until(&format!("deployment {name}"), BUILD_WAIT, POLL, || {
        let current = deployment(control_plane, name);
        let status = current["status"].as_str().unwrap_or_default().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if done(&current) { Ok(current) } else { Err(format!("{current:#}")) }
    });
    (last, seen)
}

fn running_at_revision(revision: u64) -> impl Fn(&Value) -> bool {
    move |d: &Value| {
        d["status"] == "running"
            && d["revision"] == revision
            && d["instances"].as_array().is_some_and(|list| list.iter().any(|i| i["status"] == "running" && i["revision"] == revision))
    }
}

fn build(control_plane: &ControlPlane, id: &str) -> Value {
    control_plane.rest_json(&format!("/api/v1/images/build/{id}"))
}

fn build_log(control_plane: &ControlPlane, id: &str) -> String {
    control_plane.rest_get(&format!("/api/v1/images/build/{id}/logs"), Some(&format!("Bearer {}", control_plane.admin_token()))).body
}

/// The address of a Docker container on its bridge network.
fn docker_ip(container_id: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container_id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// What the deployment's running instance of `revision` answers at `/` on `port`.
fn answer(deployment: &Value, revision: u64, port: u16) -> String {
    let instance = deployment["instances"]
        .as_array()
        .and_then(|list| list.iter().find(|i| i["status"] == "running" && i["revision"] == revision))
        .unwrap_or_else(|| panic!("no running instance of revision {revision}: {deployment:#}"));
    let container = instance["container_id"].as_str().expect("container id");
    let url = format!("http://{}:{port}/", docker_ip(container));
    wait_until(&format!("{url} answers"), Duration::from_secs(30), POLL, || {
        diplo_tests::http_get(&url, None).and_then(|r| if r.status == 200 { Ok(r.body) } else { Err(format!("status {}", r.status)) })
    })
}

fn unified_deploy(control_plane: &ControlPlane, body: Value) -> Value {
    let response = control_plane.rest("POST", "/api/unified/deploy", Some(body));
    assert!(response.status == 201 || response.status == 202, "deploy answered {}: {}", response.status, response.body);
    response.json()
}

#[test]
fn the_seed_body_deploys_a_go_and_a_python_app_and_a_new_commit_rolls_out() {
    let repos = Repos::new("diplo-repos-");
    let control_plane = control_plane(&[]);
    let _builder = agent(&control_plane, "builder", "docker", "docker", &repos);

    // Go, with the language given as in the seed's body.
    let go_repo = repos.create("go-app", &refs(&go_app("hello from go")));
    let go_name = unique_name("my-go-app");
    let _go_cleanup = DeleteDeploymentOnDrop(&control_plane, go_name.clone());
    let created = unified_deploy(&control_plane, json!({"name": go_name, "repo_url": url(&go_repo), "language": "go"}));
    assert_eq!(created["status"], "building", "{created:#}");
    assert_eq!(created["language"], "go");
    assert_eq!(created["repo_url"], url(&go_repo));
    let build_id = created["build_id"].as_str().expect("build id").to_owned();
    let (running, seen) = follow(&control_plane, &go_name, running_at_revision(1));
    assert_eq!(seen.first().map(String::as_str), Some("building"), "statuses seen: {seen:?}");
    assert_eq!(answer(&running, 1, 8080), "hello from go");
    let go_build = build(&control_plane, &build_id);
    assert_eq!(go_build["status"], "succeeded", "{go_build:#}");
    assert_eq!(go_build["language"], "go");
    let image = go_build["image"].as_str().expect("image");
    assert!(image.starts_with(&format!("{REGISTRY}/")) && image.contains("@sha256:"), "pushed with its digest: {image}");
    assert_eq!(running["image"], image, "the revision runs the pushed digest");
    assert_eq!(running["source"]["commit"], git(&go_repo, &["rev-parse", "HEAD"]));
    assert_eq!(running["source"]["git_branch"], Value::Null, "the default branch was built");
    let log = build_log(&control_plane, &build_id);
    assert!(log.contains("-trimpath"), "the log shows the Go build step: {log}");

    // A new commit deploys as revision 2, rolled out in place of revision 1.
    let second = commit(&go_repo, &refs(&go_app("hello again from go")), "second");
    let again = unified_deploy(&control_plane, json!({"name": go_name, "repo_url": url(&go_repo), "language": "go", "git_branch": "main"}));
    assert_eq!(again["status"], "building");
    assert_eq!(again["git_branch"], "main", "the source asked for now is built: {again:#}");
    let scaled = control_plane.rest("POST", &format!("/api/v1/deployments/{go_name}/scale"), Some(json!({"replicas": 3})));
    assert_eq!(scaled.status, 409, "a change waits for the build: {}", scaled.body);
    assert!(scaled.body.contains("building"), "{}", scaled.body);
    let (updated, _) = follow(&control_plane, &go_name, |d| {
        running_at_revision(2)(d) && d["instances"].as_array().is_some_and(|l| l.iter().all(|i| i["revision"] == 2))
    });
    assert_eq!(updated["source"]["commit"], second);
    assert_eq!(updated["source"]["git_branch"], "main");
    assert_eq!(answer(&updated, 2, 8080), "hello again from go");

    // Python, detected from requirements.txt.
    let py_repo = repos.create("py-app", &[("requirements.txt", "# standard library only\n"), ("app.py", PYTHON_APP)]);
    let py_name = unique_name("my-python-app");
    let _py_cleanup = DeleteDeploymentOnDrop(&control_plane, py_name.clone());
    let created = unified_deploy(&control_plane, json!({"name": py_name, "repo_url": url(&py_repo)}));
    let build_id = created["build_id"].as_str().expect("build id").to_owned();
    let (running, _) = follow(&control_plane, &py_name, running_at_revision(1));
    assert_eq!(answer(&running, 1, 8000), "hello from python");
    let py_build = build(&control_plane, &build_id);
    assert_eq!((py_build["language"].as_str(), py_build["detected_from"].as_str()), (Some("python"), Some("requirements.txt")));
}

#[test]
fn a_dockerfile_repository_and_a_static_site_build_and_run() {
    let repos = Repos::new("diplo-repos-");
    let control_plane = control_plane(&[]);
    let _builder = agent(&control_plane, "builder", "docker", "docker", &repos);

    // The repository's own Dockerfile wins over detection.
    let dockerfile =
        format!("FROM {BUSYBOX}\nCOPY greeting /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n");
    let repo = repos.create("with-dockerfile", &[("Dockerfile", dockerfile.as_str()), ("greeting", "hello from a Dockerfile\n")]);
    let name = unique_name("dockerfile-app");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    let created = unified_deploy(&control_plane, json!({"name": name, "repo_url": url(&repo)}));
    let (running, _) = follow(&control_plane, &name, running_at_revision(1));
    assert_eq!(answer(&running, 1, 8080), "hello from a Dockerfile\n");
    let built = build(&control_plane, created["build_id"].as_str().expect("build id"));
    assert_eq!((built["language"].as_str(), built["detected_from"].as_str()), (Some("dockerfile"), Some("Dockerfile")));

    // A static site (an index.html, nothing else) is served by the small web server image.
    let site = repos.create("site", &[("index.html", "<h1>hello from a static site</h1>\n")]);
    let name = unique_name("static-site");
    let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
    unified_deploy(&control_plane, json!({"name": name, "repo_url": url(&site)}));
    let (running, _) = follow(&control_plane, &name, running_at_revision(1));
    assert_eq!(answer(&running, 1, 8080), "<h1>hello from a static site</h1>\n");
}

#[test]
fn an_image_built_on_a_docker_node_runs_on_containerd_only_and_lxc_only_nodes() {
    let repos = Repos::new("diplo-repos-");
    let control_plane = control_plane(&[]);
    let _builder = agent(&control_plane, "builder", "docker", "docker", &repos);
    let _containerd = agent(&control_plane, "ctrd-only", "containerd", "", &repos);
    let _lxc = agent(&control_plane, "lxc-only", "lxc", "", &repos);
    let repo = repos.create("go-app", &refs(&go_app("hello from anywhere")));
    let mut names = Vec::new();
    for runtime in ["containerd", "lxc"] {
        let name = unique_name(&format!("go-on-{runtime}"));
        names.push(name.clone());
        let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
        let port = diplo_tests::free_port();
        let body = json!({
            "name": name, "repo_url": url(&repo), "language": "go", "runtime_type": runtime,
            "ports": {port.to_string(): "8080"},
        });
        let created = unified_deploy(&control_plane, body);
        let (running, _) = follow(&control_plane, &name, running_at_revision(1));
        let instance = &running["instances"][0];
        assert_eq!(instance["runtime"], runtime, "{running:#}");
        let built = build(&control_plane, created["build_id"].as_str().expect("build id"));
        assert_eq!(built["builder"], "docker", "built on the Docker node: {built:#}");
        assert_ne!(built["node_id"], instance["node"], "built on one node, run on another");
        let url = format!("http://127.0.0.1:{port}/");
        let body = wait_until(&format!("{url} answers"), Duration::from_secs(60), POLL, || {
            diplo_tests::http_get(&url, None).and_then(|r| if r.status == 200 { Ok(r.body) } else { Err(format!("status {}", r.status)) })
        });
        assert_eq!(body, "hello from anywhere", "{runtime}");
    }
    // Deleting each deployment (the guards above) removed its container on both runtimes:
    // an LXC container left behind would keep its published port reserved for good.
    let lxc = Command::new("lxc-ls").arg("-1").output().expect("lxc-ls");
    let left: Vec<String> = String::from_utf8_lossy(&lxc.stdout)
        .split_whitespace()
        .filter(|c| names.iter().any(|n| c.starts_with(n.as_str())))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "LXC containers left after their deployments were deleted: {left:?}");
}

/// Dangling Docker images (by id) whose history runs one of `steps`: what this test's
/// builds could have left (other tests' multi-stage builds leave their earlier stages
/// untagged on purpose: they are the build cache).
fn dangling_images_of(steps: &[&str]) -> std::collections::BTreeSet<String> {
    let output = Command::new("docker").args(["images", "-q", "--filter", "dangling=true"]).output().expect("docker images");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|id| {
            let history = Command::new("docker").args(["history", "--no-trunc", "--format", "{{.CreatedBy}}", id]).output();
            history.is_ok_and(|h| {
                let text = String::from_utf8_lossy(&h.stdout);
                steps.iter().any(|step| text.contains(step))
            })
        })
        .map(str::to_owned)
        .collect()
}

/// Entries left in an agent's build directory.
fn workspaces(agent: &Agent) -> Vec<String> {
    std::fs::read_dir(agent.data_dir().join("builds"))
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn bad_sources_fail_the_build_and_the_deployment_and_leave_nothing_behind() {
    let repos = Repos::new("diplo-repos-");
    let control_plane = control_plane(&[("DIPLO_BUILD_TIMEOUT", "20s")]);
    let builder = agent(&control_plane, "builder", "docker", "docker", &repos);
    let app = repos.create("app", &refs(&go_app("hello")));
    let nothing = repos.create("nothing-to-build", &[("notes.txt", "no code here\n")]);
    let failing = repos.create("failing", &[("Dockerfile", &format!("FROM {BUSYBOX}\nRUN echo about to fail && false\n"))]);
    let slow = repos.create("slow", &[("Dockerfile", &format!("FROM {BUSYBOX}\nRUN sleep 120\n"))]);
    let steps = ["echo about to fail", "sleep 120"];
    let dangling_before = dangling_images_of(&steps);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"repo_url": "https://127.0.0.1:9/nobody/nothing.git"}), "127.0.0.1"),
        (json!({"repo_url": url(&app), "git_branch": "no-such-branch"}), "no-such-branch"),
        (json!({"repo_url": url(&nothing)}), "no detectable language"),
        (json!({"repo_url": url(&failing)}), "about to fail"),
        (json!({"repo_url": url(&slow)}), "timeout"),
    ];
    let mut build_ids = Vec::new();
    for (mut body, cause) in cases {
        let name = unique_name("bad-source");
        let _cleanup = DeleteDeploymentOnDrop(&control_plane, name.clone());
        body["name"] = json!(name);
        let created = unified_deploy(&control_plane, body.clone());
        let build_id = created["build_id"].as_str().expect("build id").to_owned();
        build_ids.push(build_id.clone());
        let (failed, seen) = follow(&control_plane, &name, |d| d["status"] == "failed");
        assert!(!seen.iter().any(|s| s == "running" || s == "deploying"), "{body}: {seen:?}");
        let message = failed["message"].as_str().unwrap_or_default().to_lowercase();
        assert!(message.contains(&cause.to_lowercase()), "{body}: the deployment says why ({cause}): {message}");
        assert!(failed["instances"].as_array().is_some_and(Vec::is_empty), "nothing runs: {failed:#}");
        let build = build(&control_plane, &build_id);
        assert_eq!(build["status"], "failed", "{build:#}");
        let log = build_log(&control_plane, &build_id).to_lowercase();
        assert!(
            log.contains(&cause.to_lowercase())
                || build["message"].as_str().is_some_and(|m| m.to_lowercase().contains(&cause.to_lowercase())),
            "{body}: cause in the build: {log}"
        );
        let left = wait_until("the workspace is removed", Duration::from_secs(10), POLL, || {
            let left = workspaces(&builder);
            if left.is_empty() { Ok(left) } else { Err(format!("{left:?}")) }
        });
        assert!(left.is_empty());
    }
    let left: Vec<_> = dangling_images_of(&steps).difference(&dangling_before).cloned().collect();
    assert!(left.is_empty(), "no dangling image left by the failed builds: {left:?}");
    // Only this test's builds: other tests build on the same Docker at the same time.
    for build_id in &build_ids {
        wait_until(&format!("no build container left by build {build_id}"), Duration::from_secs(15), POLL, || {
            let containers = Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label=diplo.build={build_id}")])
                .output()
                .expect("docker ps");
            if containers.stdout.is_empty() { Ok(()) } else { Err(String::from_utf8_lossy(&containers.stdout).into_owned()) }
        });
    }
}
