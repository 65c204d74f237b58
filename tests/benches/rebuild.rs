//! Rebuild after a one-line source change: a Diplo build from git (clone, detection,
//! template, Docker build, push to the registry) the first time and again after one line
//! of the app changed, against `docker build` + `docker push` of the same repository with
//! the same Dockerfile, side by side.
//!
//! ```sh
//! scripts/setup-host                        # Docker, the registry, the base images
//! cargo bench -p diplo-tests --bench rebuild            # N=3 rounds
//! DIPLO_BENCH_SAMPLES=5 cargo bench -p diplo-tests --bench rebuild
//! ```
//!
//! Each round uses a new Go repository (a new module path, so no layer of an earlier
//! round applies; the base images are already on the node): first build, then a commit
//! changing the greeting, then the rebuild. The template copies `go.mod` and downloads
//! modules before copying the source, so the rebuild reuses those layers and only
//! compiles again; the Diplo log's `Using cache` lines are counted to show it. Printed:
//! the median of each of the four timings and the rebuild/first-build ratios.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions, unique_name, wait_until};
use serde_json::json;

const REGISTRY: &str = "127.0.0.1:5000";
const BASE_IMAGES: &str = "go=127.0.0.1:5000/diplo/base/go:1.19-bookworm,go-runtime=127.0.0.1:5000/diplo/busybox:latest";

fn main() {
    let rounds: usize = std::env::var("DIPLO_BENCH_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let repos = tempfile::Builder::new().prefix("diplo-bench-repos-").tempdir().expect("temporary directory");
    let env = vec![("DIPLO_REGISTRY".to_owned(), REGISTRY.to_owned()), ("DIPLO_BASE_IMAGES".to_owned(), BASE_IMAGES.to_owned())];
    let control_plane = ControlPlane::start(ControlPlaneOptions { env, ..Default::default() });
    let token = control_plane.join_token(&[]);
    let root = repos.path().display().to_string();
    let _agent = control_plane.start_ready_agent_with_env(
        "builder",
        Some(&token),
        &[("DIPLO_RUNTIMES", "docker"), ("DIPLO_BUILDERS", "docker"), ("DIPLO_BUILD_FILE_REPOS", root.as_str())],
    );

    let (mut diplo_first, mut diplo_again, mut docker_first, mut docker_again) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut cached_steps = Vec::new();
    for round in 0..rounds {
        let name = unique_name("rebuild");
        let repo = repos.path().join(&name);
        write_app(&repo, &name, "first");
        git(&repo, &["init", "-q", "-b", "main"]);
        commit(&repo, "first");
        let (took, _) = diplo_build(&control_plane, &repo, &name);
        diplo_first.push(took);
        write_app(&repo, &name, "second");
        commit(&repo, "one line changed");
        let (took, log) = diplo_build(&control_plane, &repo, &name);
        diplo_again.push(took);
        cached_steps.push(log.matches("Using cache").count());

        // The same repository and Dockerfile built by hand, under another module path.
        let by_hand = repos.path().join(format!("{name}-docker"));
        write_app(&by_hand, &format!("{name}-docker"), "first");
        let dockerfile = rendered_dockerfile(&by_hand);
        std::fs::write(by_hand.join("Dockerfile"), dockerfile).expect("Dockerfile");
        let tag = format!("{REGISTRY}/{name}-docker:bench");
        docker_first.push(docker_build(&by_hand, &tag));
        write_app(&by_hand, &format!("{name}-docker"), "second");
        docker_again.push(docker_build(&by_hand, &tag));
        eprintln!("round {}: diplo {:.1?} then {:.1?}", round + 1, diplo_first[round], diplo_again[round]);
    }
    let (df, da, kf, ka) = (median(&mut diplo_first), median(&mut diplo_again), median(&mut docker_first), median(&mut docker_again));
    println!(
        "rebuild after a one-line change, N={rounds}: diplo build first {df:.1?}, rebuild {da:.1?} ({:.0} % of the first, {} cached steps); \
         docker build+push first {kf:.1?}, rebuild {ka:.1?} ({:.0} %)",
        da.as_secs_f64() / df.as_secs_f64() * 100.0,
        cached_steps.iter().min().copied().unwrap_or(0),
        ka.as_secs_f64() / kf.as_secs_f64() * 100.0,
    );
}

fn write_app(dir: &Path, module: &str, greeting: &str) {
    std::fs::create_dir_all(dir).expect("repository directory");
    std::fs::write(dir.join("go.mod"), format!("module example.com/{module}\n\ngo 1.19\n")).expect("go.mod");
    let main = format!(
        "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n)\n\nfunc main() {{\n\thttp.HandleFunc(\"/\", func(w http.ResponseWriter, r *http.Request) {{\n\t\tfmt.Fprint(w, \"{greeting}\")\n\t}})\n\thttp.ListenAndServe(\":8080\", nil)\n}}\n"
    );
    std::fs::write(dir.join("main.go"), main).expect("main.go");
}

/// The Dockerfile Diplo renders for `dir`, with the bench's base images.
fn rendered_dockerfile(dir: &Path) -> String {
    use diplo_api::build::detect::{DirRepo, detect};
    use diplo_api::build::template::{BaseImages, TemplateOptions, parse_base_images, render};
    let detection = detect(&DirRepo::new(dir), None).expect("a Go repository");
    let base_images = BaseImages::with_overrides(&parse_base_images(BASE_IMAGES).expect("base images")).expect("base images");
    let options = TemplateOptions { base_images, ..TemplateOptions::default() };
    render(&detection, &options).expect("template").dockerfile
}

fn git(dir: &Path, args: &[&str]) {
    let output = Command::new("git")
        .args(["-c", "user.name=bench", "-c", "user.email=bench@diplo.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn commit(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
}

/// Starts a build of `repo` over REST and waits until it succeeds; its time and log.
fn diplo_build(control_plane: &ControlPlane, repo: &Path, name: &str) -> (Duration, String) {
    let started = Instant::now();
    let body = json!({"git_repo": format!("file://{}", repo.display()), "image_tag": format!("{name}:bench")});
    let response = control_plane.rest("POST", "/api/v1/images/build", Some(body));
    assert_eq!(response.status, 202, "{}", response.body);
    let id = response.json()["id"].as_str().expect("build id").to_owned();
    let build = wait_until("the build to end", Duration::from_secs(600), Duration::from_millis(100), || {
        let build = control_plane.rest_json(&format!("/api/v1/images/build/{id}"));
        match build["status"].as_str() {
            Some("succeeded") => Ok(build),
            Some("failed" | "cancelled") => panic!("build {id} ended {build:#}"),
            _ => Err(build.to_string()),
        }
    });
    let took = started.elapsed();
    assert!(build["image"].as_str().is_some_and(|i| i.contains("@sha256:")), "{build:#}");
    let log =
        control_plane.rest_get(&format!("/api/v1/images/build/{id}/logs"), Some(&format!("Bearer {}", control_plane.admin_token()))).body;
    (took, log)
}

/// `docker build` + `docker push` of `dir`, timed.
fn docker_build(dir: &Path, tag: &str) -> Duration {
    let started = Instant::now();
    for args in [vec!["build", "-q", "-t", tag, "."], vec!["push", "-q", tag]] {
        let output = Command::new("docker").env("DOCKER_BUILDKIT", "0").args(&args).current_dir(dir).output().expect("docker runs");
        assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    started.elapsed()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}
