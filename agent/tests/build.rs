//! Builds on this host's real builders (see `scripts/setup-host`: Docker, Podman,
//! buildah, git and a plain-HTTP registry on 127.0.0.1:5000 holding
//! `diplo/busybox:latest`). Test repositories are made with `git init` in a temporary
//! directory and cloned as `file://` URLs, the agent's allowlist set to that directory.
//!
//! A builder that is missing skips its cases with a loud message, or fails them under
//! `CI=true`. Images get unique names and are removed at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use diplo_agent::build::git::FileRepos;
use diplo_agent::build::{BuildConfig, Builds};
use diplo_agent::fingerprint::ProbeConfig;
use diplo_agent::runtime::build_api::step_image_id;
use diplo_api::build::{BuildReport, BuildSpec, BuildStatus, Builder, Buildpack};
use diplo_api::command::CommandErrorCode;
use diplo_api::registry::{Reference, RegistryClient, RegistryConfig, RegistryCredential};
use futures::StreamExt;

const BASE: &str = "127.0.0.1:5000/diplo/busybox:latest";

// ------------------------------------------------------------------ harness

/// Whether `builder` works here; under CI a missing builder fails the test.
async fn available(builder: Builder) -> bool {
    let probe = ProbeConfig::from_env();
    let ok = match builder {
        Builder::Docker => diplo_agent::runtime::docker::probe(&probe.docker_socket, Duration::from_secs(10)).await.available,
        Builder::Podman => diplo_agent::runtime::podman::probe(&probe.podman_socket, Duration::from_secs(10)).await.available,
        Builder::Buildah => diplo_agent::build::buildah::available().await,
    };
    let git = Command::new("git").arg("--version").output().is_ok_and(|o| o.status.success());
    if ok && git {
        return true;
    }
    diplo_tests::skip_or_fail(&format!("{builder} (or git) is not available on this host: run scripts/setup-host"));
    false
}

fn suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A git repository with `files` (path, contents) and `links` (path, target), one
/// commit on branch `main`, under a fresh temporary root.
struct Repo {
    root: tempfile::TempDir,
    url: String,
}

impl Repo {
    fn new(files: &[(&str, &str)], links: &[(&str, &str)]) -> Repo {
        let root = tempfile::tempdir().expect("temporary directory");
        let dir = root.path().join("repo");
        std::fs::create_dir(&dir).expect("repository directory");
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("directories");
            std::fs::write(path, text).expect("file");
        }
        for (path, target) in links {
            std::os::unix::fs::symlink(target, dir.join(path)).expect("symbolic link");
        }
        let git = |args: &[&str]| {
            let out = Command::new("git").current_dir(&dir).args(args).output().expect("git runs");
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        git(&["init", "--quiet", "-b", "main"]);
        git(&["add", "-A"]);
        git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "test"]);
        let url = format!("file://{}", dir.display());
        Repo { root, url }
    }
}

/// A build service over this host's builders, its workspaces under a fresh directory,
/// `file://` repositories allowed under `repos`.
struct Harness {
    builds: Builds,
    build_dir: tempfile::TempDir,
}

impl Harness {
    fn new(repos: &Path, output_limit: Option<usize>) -> Harness {
        let probe = ProbeConfig::from_env();
        let build_dir = tempfile::tempdir().expect("build directory");
        let mut config = BuildConfig::new(build_dir.path().to_path_buf(), probe.docker_socket, probe.podman_socket);
        config.file_repos = FileRepos::new([repos.to_path_buf()]).expect("allowlist");
        if let Some(limit) = output_limit {
            config.output_limit = limit;
        }
        Harness { builds: Builds::new(config, Builder::ALL.to_vec()), build_dir }
    }

    /// Runs `spec` to its end: the report and the whole output.
    async fn run(&self, spec: BuildSpec, registry: RegistryConfig) -> (BuildReport, String) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stream = self
            .builds
            .start(
                spec,
                registry,
                Box::new(move |report| {
                    Box::pin(async move {
                        let _ = tx.send(report);
                    })
                }),
            )
            .expect("build accepted");
        let log = collect(stream).await;
        let report = rx.await.expect("a report before the output ends");
        (report, log)
    }

    /// Whether any workspace is left in the build directory.
    fn workspaces(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.build_dir.path()).map(|e| e.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    }
}

async fn collect(mut stream: diplo_agent::runtime::RuntimeStream<diplo_api::container::LogChunk>) -> String {
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").data));
    }
    text
}

fn spec(id: &str, url: &str, builder: Builder, image: &str) -> BuildSpec {
    BuildSpec {
        build_id: id.into(),
        git_repo: url.into(),
        git_branch: Some("main".into()),
        builder,
        image: image.into(),
        push: true,
        buildpack: Buildpack::Dockerfile { path: String::new(), build_args: BTreeMap::new() },
        language: None,
        base_images: BTreeMap::new(),
        timeout: Duration::from_secs(300),
    }
}

/// Removes local images when dropped (Docker, Podman and buildah share nothing: each
/// CLI is asked).
struct Images(Vec<(Builder, String)>);

impl Drop for Images {
    fn drop(&mut self) {
        for (builder, image) in &self.0 {
            let program = match builder {
                Builder::Docker => "docker",
                Builder::Podman => "podman",
                Builder::Buildah => "buildah",
            };
            let _ = Command::new(program).args(["rmi", image]).output();
        }
    }
}

/// The manifest digest the local registry has for `image`.
async fn registry_digest(image: &str) -> Option<String> {
    let reference = Reference::parse(image).expect("reference");
    let client = RegistryClient::new(RegistryConfig::default(), "diplo-test").expect("client");
    client.manifest_digest(&reference, reference.tag.as_deref().unwrap_or("latest")).await.expect("registry answers")
}

fn image_exists(builder: Builder, id: &str) -> bool {
    let (program, args): (&str, Vec<&str>) = match builder {
        Builder::Docker => ("docker", vec!["image", "inspect", id]),
        Builder::Podman => ("podman", vec!["image", "inspect", id]),
        Builder::Buildah => ("buildah", vec!["inspect", "--type", "image", id]),
    };
    Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
}

fn image_tags(builder: Builder, id: &str) -> String {
    let program = match builder {
        Builder::Docker => "docker",
        _ => "podman",
    };
    let out = Command::new(program).args(["image", "inspect", "--format", "{{.RepoTags}}", id]).output().expect("inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Step images named in a build's output that still exist untagged.
fn untagged_step_images(builder: Builder, log: &str) -> Vec<String> {
    log.lines()
        .filter_map(step_image_id)
        .filter(|id| image_exists(builder, id))
        .filter(|id| matches!(image_tags(builder, id).as_str(), "[]" | "" | "[<none>:<none>]"))
        .map(str::to_owned)
        .collect()
}

/// The response to `GET /` at `address` (`host:port`).
fn http_get(address: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if response.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    Ok(response)
}

/// Whether no process whose command line holds `marker` is left within 15 s.
async fn step_stops(marker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = Command::new("pgrep").args(["-f", marker]).output().is_ok_and(|o| o.status.success());
        if !found {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------ happy paths

const DOCKERFILE: &str =
    "FROM 127.0.0.1:5000/diplo/busybox:latest\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt > /copy.txt\nCMD [\"cat\", \"/copy.txt\"]\n";

async fn builds_and_pushes(builder: Builder) {
    if !available(builder).await {
        return;
    }
    let repo = Repo::new(&[("Dockerfile", DOCKERFILE), ("hello.txt", "hello from git\n")], &[]);
    let harness = Harness::new(repo.root.path(), None);
    let image = format!("127.0.0.1:5000/diplo-test/build-{builder}-{}:v1", suffix());
    let _images = Images(vec![(builder, image.clone())]);
    let id = format!("b-{builder}-{}", suffix());
    let (report, log) = harness.run(spec(&id, &repo.url, builder, &image), RegistryConfig::default()).await;

    assert_eq!(report.status, BuildStatus::Succeeded, "{report:?}\n{log}");
    assert_eq!(report.build_id, id);
    assert_eq!(report.commit.len(), 40, "{report:?}");
    let digest = registry_digest(&image).await.expect("pushed");
    assert_eq!(report.digest, digest, "the reported digest is the registry's");
    assert_eq!(report.image, format!("{image}@{digest}"));
    assert!(log.contains("cloning file://") && log.contains(&report.commit), "{log}");
    assert!(harness.workspaces().is_empty(), "workspace left: {:?}", harness.workspaces());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_builds_and_pushes() {
    builds_and_pushes(Builder::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_builds_and_pushes() {
    builds_and_pushes(Builder::Podman).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildah_builds_and_pushes() {
    builds_and_pushes(Builder::Buildah).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_built_by_docker_runs_on_containerd() {
    use diplo_agent::runtime::ContainerRuntime;
    use diplo_agent::runtime::containerd::ContainerdRuntime;
    if !available(Builder::Docker).await {
        return;
    }
    let repo = Repo::new(&[("Dockerfile", DOCKERFILE), ("hello.txt", "hello from git\n")], &[]);
    let harness = Harness::new(repo.root.path(), None);
    let image = format!("127.0.0.1:5000/diplo-test/cross-{}:v1", suffix());
    let _images = Images(vec![(Builder::Docker, image.clone())]);
    let (report, log) = harness.run(spec(&format!("x-{}", suffix()), &repo.url, Builder::Docker, &image), RegistryConfig::default()).await;
    assert_eq!(report.status, BuildStatus::Succeeded, "{report:?}\n{log}");

    let state = tempfile::tempdir().expect("containerd state");
    let containerd =
        match ContainerdRuntime::connect("/run/containerd/containerd.sock", RegistryConfig::default(), state.path().join("s")).await {
            Ok(runtime) => runtime,
            Err(error) => return diplo_tests::skip_or_fail(&format!("containerd is unavailable: {error}")),
        };
    // Pulled by the digest the report gives, as a deployment would.
    containerd.ensure_image(&report.image).await.expect("containerd pulls the pushed image");
    let name = format!("diplo-build-cross-{}", suffix());
    let container = diplo_api::container::ContainerSpec { name: name.clone(), image: report.image.clone(), ..Default::default() };
    let id = containerd.create(&container).await.expect("create");
    containerd.start(&id).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut output = String::new();
    while Instant::now() < deadline {
        let mut logs = containerd.logs(&id, diplo_api::container::LogOptions::default()).await.expect("logs");
        output.clear();
        while let Some(Ok(chunk)) = logs.next().await {
            output.push_str(&String::from_utf8_lossy(&chunk.data));
        }
        if output.contains("hello from git") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = containerd.remove(&id, true).await;
    assert!(output.contains("hello from git"), "the image's CMD ran on containerd: {output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_services_with_a_build_section_are_built_and_pushed() {
    if !available(Builder::Docker).await {
        return;
    }
    let compose = "services:\n  web:\n    build: ./web\n  api:\n    build:\n      context: api\n      dockerfile: Dockerfile.api\n      \
                   args:\n        GREETING: hi-from-args\n  db:\n    image: postgres:16\n";
    let repo = Repo::new(
        &[
            ("docker-compose.yml", compose),
            ("web/Dockerfile", &format!("FROM {BASE}\nRUN echo web > /service\n")),
            ("api/Dockerfile.api", &format!("FROM {BASE}\nARG GREETING\nRUN echo \"api says $GREETING\"\n")),
        ],
        &[],
    );
    let harness = Harness::new(repo.root.path(), None);
    let image = format!("127.0.0.1:5000/diplo-test/shop-{}:v2", suffix());
    let service = |name: &str| image.replace(":v2", &format!("-{name}:v2"));
    let _images = Images(vec![(Builder::Docker, service("web")), (Builder::Docker, service("api"))]);
    let mut build = spec(&format!("k-{}", suffix()), &repo.url, Builder::Docker, &image);
    build.buildpack = Buildpack::Compose { compose_file: String::new(), service: String::new() };
    let (report, log) = harness.run(build, RegistryConfig::default()).await;
    assert_eq!(report.status, BuildStatus::Succeeded, "{report:?}\n{log}");
    assert_eq!(report.language, "docker-compose");
    assert!(log.contains("api says hi-from-args"), "build args reach the service: {log}");
    assert_eq!(report.service_images.keys().collect::<Vec<_>>(), ["api", "web"], "db has no build section");
    for name in ["api", "web"] {
        let digest = registry_digest(&service(name)).await.expect("pushed");
        assert_eq!(report.service_images[name], format!("{}@{digest}", service(name)));
    }
}

// ------------------------------------------------------------------ failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_build_and_leaves_nothing() {
    for builder in [Builder::Docker, Builder::Podman, Builder::Buildah] {
        if !available(builder).await {
            continue;
        }
        let dockerfile = format!("FROM {BASE}\nRUN echo step-one-{} > /one\nRUN echo about to fail && false\n", suffix());
        let repo = Repo::new(&[("Dockerfile", &dockerfile)], &[]);
        let harness = Harness::new(repo.root.path(), None);
        let image = format!("127.0.0.1:5000/diplo-test/fail-{}:v1", suffix());
        let _images = Images(vec![(builder, image.clone())]);
        let (report, log) = harness.run(spec(&format!("f-{}", suffix()), &repo.url, builder, &image), RegistryConfig::default()).await;
        assert_eq!(report.status, BuildStatus::Failed, "{builder}: {report:?}\n{log}");
        assert!(report.error.contains("returned a non-zero code") || report.error.contains("exit status 1"), "{builder}: {}", report.error);
        assert!(log.contains("about to fail"), "{builder}: {log}");
        assert!(!report.commit.is_empty(), "the commit is known");
        assert!(!image_exists(builder, &image), "{builder}: the failed image is not tagged");
        let steps: Vec<&str> = log.lines().filter_map(step_image_id).collect();
        assert!(!steps.is_empty(), "{builder}: the output names step images: {log}");
        assert_eq!(untagged_step_images(builder, &log), Vec::<String>::new(), "{builder}: dangling images left");
        assert!(harness.workspaces().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_failures_are_reported_with_gits_message() {
    if !available(Builder::Docker).await {
        return;
    }
    let repo = Repo::new(&[("Dockerfile", DOCKERFILE)], &[]);
    let harness = Harness::new(repo.root.path(), None);
    let mut unknown_branch = spec(&format!("g-{}", suffix()), &repo.url, Builder::Docker, "127.0.0.1:5000/diplo-test/x:1");
    unknown_branch.git_branch = Some("no-such-branch".into());
    let (report, _) = harness.run(unknown_branch, RegistryConfig::default()).await;
    assert_eq!(report.status, BuildStatus::Failed);
    assert!(report.error.contains("no-such-branch") && report.error.contains("not found"), "{}", report.error);

    let unreachable =
        spec(&format!("g-{}", suffix()), "https://user:hunter22@127.0.0.1:9/x.git", Builder::Docker, "127.0.0.1:5000/diplo-test/x:1");
    let (report, log) = harness.run(unreachable, RegistryConfig::default()).await;
    assert_eq!(report.status, BuildStatus::Failed);
    assert!(report.error.contains("127.0.0.1") && report.error.contains("***@"), "{}", report.error);
    assert!(!report.error.contains("hunter22") && !log.contains("hunter22"), "credentials redacted: {}\n{log}", report.error);
    assert!(harness.workspaces().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_repositories_outside_the_allowlist_are_refused_at_once() {
    let repo = Repo::new(&[("Dockerfile", DOCKERFILE)], &[]);
    let elsewhere = tempfile::tempdir().expect("another root");
    let harness = Harness::new(elsewhere.path(), None);
    let refused = harness.builds.start(
        spec("outside", &repo.url, Builder::Docker, "127.0.0.1:5000/diplo-test/x:1"),
        RegistryConfig::default(),
        Box::new(|_| Box::pin(async {})),
    );
    let err = refused.err().expect("refused");
    assert_eq!(err.code, CommandErrorCode::PermissionDenied);
    assert!(err.message.contains("outside the directories"), "{}", err.message);

    let probe = ProbeConfig::from_env();
    let none = Builds::new(BuildConfig::new(elsewhere.path().join("b"), probe.docker_socket, probe.podman_socket), vec![Builder::Docker]);
    let err = none
        .start(spec("none", &repo.url, Builder::Docker, "x:1"), RegistryConfig::default(), Box::new(|_| Box::pin(async {})))
        .err()
        .expect("refused");
    assert_eq!((err.code, err.message.as_str()), (CommandErrorCode::PermissionDenied, "file:// repositories are not allowed on this node"));
    let err = none
        .start(spec("nob", "https://h/x.git", Builder::Buildah, "x:1"), RegistryConfig::default(), Box::new(|_| Box::pin(async {})))
        .err()
        .expect("refused");
    assert_eq!(err.code, CommandErrorCode::FailedPrecondition, "{}", err.message);
    assert!(matches!(none.cancel("nothing"), Err(e) if e.code == CommandErrorCode::NotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_the_workspace_are_never_followed() {
    if !available(Builder::Docker).await {
        return;
    }
    // The Dockerfile itself is a link to a host file.
    let repo = Repo::new(&[("app.txt", "x")], &[("Dockerfile", "/etc/passwd")]);
    let harness = Harness::new(repo.root.path(), None);
    let (report, _) = harness
        .run(spec(&format!("l-{}", suffix()), &repo.url, Builder::Docker, "127.0.0.1:5000/diplo-test/x:1"), RegistryConfig::default())
        .await;
    assert_eq!(report.status, BuildStatus::Failed);
    assert!(report.error.contains("symbolic link"), "{}", report.error);

    // A link in the context to a secret outside the workspace goes in as a link.
    let secret_dir = tempfile::tempdir().expect("secret dir");
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "TOPSECRET-CONTENT\n").expect("secret");
    let dockerfile = format!("FROM {BASE}\nCOPY . /app\nRUN test -L /app/leak && test ! -e /app/leak && echo link-kept-as-link\n");
    let repo = Repo::new(&[("Dockerfile", &dockerfile)], &[("leak", secret.to_str().expect("path"))]);
    let harness = Harness::new(repo.root.path(), None);
    let image = format!("127.0.0.1:5000/diplo-test/link-{}:v1", suffix());
    let _images = Images(vec![(Builder::Docker, image.clone())]);
    let mut no_push = spec(&format!("l-{}", suffix()), &repo.url, Builder::Docker, &image);
    no_push.push = false;
    let (report, log) = harness.run(no_push, RegistryConfig::default()).await;
    assert_eq!(report.status, BuildStatus::Succeeded, "{report:?}\n{log}");
    assert!(log.contains("link-kept-as-link") && !log.contains("TOPSECRET-CONTENT"), "{log}");
    assert_eq!(report.image, image, "not pushed: the tag");
    assert!(report.digest.starts_with("sha256:"), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_cancellations_stop_the_build_and_clean_up() {
    for builder in [Builder::Docker, Builder::Podman, Builder::Buildah] {
        if !available(builder).await {
            continue;
        }
        let marker = format!("sleeping-{}", suffix());
        // Podman's working containers name their image: a base of this test's own
        // tells its leftovers from those of builds running beside it.
        let base = match builder {
            Builder::Podman => podman_base(&marker),
            _ => BASE.to_owned(),
        };
        let _base = Images(if builder == Builder::Podman { vec![(builder, base.clone())] } else { vec![] });
        let dockerfile = format!("FROM {base}\nRUN echo {marker} && sleep 30\n");
        let repo = Repo::new(&[("Dockerfile", &dockerfile)], &[]);
        let harness = Harness::new(repo.root.path(), None);
        let image = format!("127.0.0.1:5000/diplo-test/slow-{}:v1", suffix());
        let _images = Images(vec![(builder, image.clone())]);

        let mut slow = spec(&format!("t-{}", suffix()), &repo.url, builder, &image);
        slow.timeout = Duration::from_secs(8);
        let started = Instant::now();
        let (report, log) = harness.run(slow, RegistryConfig::default()).await;
        assert_eq!(report.status, BuildStatus::Failed, "{builder}: {report:?}\n{log}");
        assert_eq!(report.error, "build exceeded its timeout of 8 s", "{builder}");
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{builder}: stopped at the timeout, not after the sleep: {:?}",
            started.elapsed()
        );
        assert!(harness.workspaces().is_empty(), "{builder}");
        assert!(!image_exists(builder, &image), "{builder}");
        assert!(step_stops(&marker).await, "{builder}: the step's process was stopped");

        // Cancelled once the slow step runs.
        let id = format!("c-{}", suffix());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut stream = harness
            .builds
            .start(
                spec(&id, &repo.url, builder, &image),
                RegistryConfig::default(),
                Box::new(move |r| {
                    Box::pin(async move {
                        let _ = tx.send(r);
                    })
                }),
            )
            .expect("accepted");
        let again =
            harness.builds.start(spec(&id, &repo.url, builder, &image), RegistryConfig::default(), Box::new(|_| Box::pin(async {})));
        assert_eq!(again.err().map(|e| e.code), Some(CommandErrorCode::AlreadyExists), "one build per id");
        let mut log = String::new();
        let started = Instant::now();
        while let Some(chunk) = stream.next().await {
            log.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").data));
            // The echo's own output (not the step's command line) says the step runs.
            if log.lines().any(|l| l.trim_start().starts_with("sleeping-")) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "{builder}: the slow step never started: {log}");
        }
        harness.builds.cancel(&id).expect("cancelled");
        log.push_str(&collect(stream).await);
        let report = rx.await.expect("report");
        assert_eq!(report.status, BuildStatus::Cancelled, "{builder}: {report:?}\n{log}");
        assert!(started.elapsed() < Duration::from_secs(25), "{builder}");
        assert!(harness.workspaces().is_empty(), "{builder}");
        assert!(matches!(harness.builds.cancel(&id), Err(e) if e.code == CommandErrorCode::NotFound), "{builder}: gone once ended");
        assert!(step_stops(&marker).await, "{builder}: the step's process was stopped");
        if builder == Builder::Podman {
            assert_eq!(podman_working_containers(&base), Vec::<String>::new(), "no working container is left");
        }
    }
}

/// A local Podman image of its own (`localhost/diplo-test/base-…`), made from the
/// registry's BusyBox.
fn podman_base(marker: &str) -> String {
    let name = format!("localhost/diplo-test/base-{marker}");
    let dir = tempfile::tempdir().expect("context");
    std::fs::write(dir.path().join("Containerfile"), format!("FROM {BASE}\nRUN echo {marker} > /marker\n")).expect("Containerfile");
    let out =
        Command::new("podman").args(["build", "--tls-verify=false", "-q", "-t", &name]).arg(dir.path()).output().expect("podman build");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    name
}

/// Podman's (buildah) working containers made from `image`.
fn podman_working_containers(image: &str) -> Vec<String> {
    let out = Command::new("podman").args(["ps", "-a", "--external", "--format", "{{.ID}} {{.Image}}"]).output().expect("podman ps");
    String::from_utf8_lossy(&out.stdout).lines().filter(|line| line.contains(image)).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_is_bounded_and_secrets_never_reach_it() {
    if !available(Builder::Docker).await {
        return;
    }
    let password = format!("pw-{}-{}", suffix(), suffix());
    let dockerfile = format!("FROM {BASE}\nRUN echo leaking {password} now\nRUN seq 1 3000\nRUN echo after-the-flood\n");
    let repo = Repo::new(&[("Dockerfile", &dockerfile)], &[]);
    let harness = Harness::new(repo.root.path(), Some(4096));
    let image = format!("127.0.0.1:5000/diplo-test/loud-{}:v1", suffix());
    let _images = Images(vec![(Builder::Docker, image.clone())]);
    let mut registry = RegistryConfig::default();
    registry.credentials.insert("127.0.0.1:5000".into(), RegistryCredential { username: "diplo".into(), password: password.clone() });
    let (report, log) = harness.run(spec(&format!("o-{}", suffix()), &repo.url, Builder::Docker, &image), registry).await;
    assert_eq!(report.status, BuildStatus::Succeeded, "{report:?}\n{log}");
    assert!(!log.contains(&password), "the password never reaches the log: {log}");
    assert!(log.contains("leaking *** now"), "{log}");
    assert!(log.len() < 4096 + 200, "bounded: {} bytes", log.len());
    assert!(log.contains("[build output truncated at 4096 bytes; the build goes on]"), "{log}");
    assert!(!log.contains("after-the-flood"), "nothing after the bound");
    assert!(report.digest.starts_with("sha256:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_site_builds_on_the_busybox_web_server() {
    if !available(Builder::Docker).await {
        return;
    }
    let repo = Repo::new(&[("index.html", "<h1>static</h1>\n")], &[]);
    let harness = Harness::new(repo.root.path(), None);
    let image = format!("127.0.0.1:5000/diplo-test/static-{}:v1", suffix());
    let _images = Images(vec![(Builder::Docker, image.clone())]);
    let mut site = spec(&format!("s-{}", suffix()), &repo.url, Builder::Docker, &image);
    site.buildpack = Buildpack::Static { build_command: String::new(), output_dir: String::new() };
    site.base_images = [("static".to_owned(), BASE.to_owned())].into();
    site.push = false;
    let (report, log) = harness.run(site, RegistryConfig::default()).await;
    assert_eq!(report.status, BuildStatus::Succeeded, "{report:?}\n{log}");
    assert_eq!(report.language, "static", "{report:?}");
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{json .Config.Cmd}} {{json .Config.Labels}}", &image])
        .output()
        .expect("inspect");
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(config.contains("httpd"), "{config}");
    assert!(config.contains(&format!("\"diplo.build\":\"{}\"", report.build_id)), "{config}");
    // It serves the site.
    let name = format!("diplo-build-static-{}", suffix());
    let run = Command::new("docker").args(["run", "-d", "--rm", "--name", &name, "-p", "127.0.0.1::8080", &image]).output().expect("run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let port = Command::new("docker").args(["port", &name, "8080/tcp"]).output().expect("port");
    let address = String::from_utf8_lossy(&port.stdout).lines().next().unwrap_or_default().trim().to_owned();
    let mut page = String::new();
    for _ in 0..50 {
        if let Ok(body) = http_get(&address) {
            page = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    assert!(page.contains("<h1>static</h1>"), "httpd serves index.html at {address}: {page:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nixpacks_without_the_binary_uses_templates_with_the_start_command_and_variables() {
    if !available(Builder::Docker).await {
        return;
    }
    let repo = Repo::new(&[("run.sh", "echo unused\n")], &[]);
    let harness = Harness::new(repo.root.path(), None);
    let image = format!("127.0.0.1:5000/diplo-test/nix-{}:v1", suffix());
    let _images = Images(vec![(Builder::Docker, image.clone())]);
    let mut build = spec(&format!("n-{}", suffix()), &repo.url, Builder::Docker, &image);
    build.buildpack = Buildpack::Nixpacks {
        start_command: "echo started with $GREETING".into(),
        variables: [("GREETING".to_owned(), "hello-vars".to_owned())].into(),
    };
    build.language = Some("generic".into());
    build.base_images = [("generic".to_owned(), BASE.to_owned())].into();
    build.push = false;
    let (report, log) = harness.run(build, RegistryConfig::default()).await;
    assert_eq!(report.status, BuildStatus::Succeeded, "{report:?}\n{log}");
    assert_eq!((report.language.as_str(), report.detected_from.as_str()), ("generic", "language"));
    let out = Command::new("docker").args(["run", "--rm", &image]).output().expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "started with hello-vars", "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fingerprint_offers_this_hosts_builders_and_build_dir() {
    let mut config = ProbeConfig::from_env();
    config.build_dir = "/srv/diplo/builds".into();
    config.allowed = None;
    config.builders = None;
    let fingerprint = diplo_agent::fingerprint::probe(&config).await;
    assert_eq!(fingerprint.build_dir, "/srv/diplo/builds");
    for builder in Builder::ALL {
        if available(builder).await {
            assert!(fingerprint.builders.contains(&builder), "{builder} works here and is offered: {:?}", fingerprint.builders);
        }
    }
    // Restricting the runtimes takes their builders away; DIPLO_BUILDERS restricts the rest.
    config.allowed = Some(vec![diplo_api::runtime::Runtime::Containerd]);
    config.builders = Some(vec![Builder::Docker, Builder::Buildah]);
    let restricted = diplo_agent::fingerprint::probe(&config).await;
    assert!(restricted.builders.iter().all(|b| *b == Builder::Buildah), "{:?}", restricted.builders);
}
