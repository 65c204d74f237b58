//! Builds images from git on this node: the control plane sends a [`BuildSpec`], the
//! agent clones the repository into a fresh workspace, decides the Dockerfile, builds
//! with the spec's builder (Docker or Podman through their API, or `buildah`), pushes,
//! streams the output (redacted, bounded) and ends with a [`BuildReport`]. A build is
//! bounded by its timeout (clone included) and can be cancelled; whatever way it ends,
//! its workspace is removed, and a failed build removes the images and containers it
//! left.

pub mod buildah;
pub mod compose;
pub mod git;
pub mod log;
pub mod redact;
pub mod workspace;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use diplo_api::build::{BuildReport, BuildSpec, BuildStatus, Builder, Buildpack};
use diplo_api::command::{CommandError, CommandErrorCode};
use diplo_api::container::LogChunk;
use diplo_api::registry::{Reference, RegistryClient, RegistryConfig};
use diplo_api::runtime::Runtime;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use self::git::FileRepos;
use self::log::{BuildLog, DEFAULT_OUTPUT_LIMIT};
use self::workspace::{MAX_CONTEXT_BYTES, Workspace};
use crate::runtime::RuntimeStream;
use crate::runtime::build_api::{EngineBuild, EngineBuilder, registry_of};

/// Environment variable restricting the builders this agent offers (comma list).
pub const BUILDERS_ENV: &str = "DIPLO_BUILDERS";

/// How this node builds.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// Where workspaces are made (`<data dir>/builds` by default).
    pub build_dir: PathBuf,
    /// Where `file://` repositories may live.
    pub file_repos: FileRepos,
    /// Docker's API socket.
    pub docker_socket: String,
    /// Podman's API socket.
    pub podman_socket: String,
    /// Bound of a build's streamed output.
    pub output_limit: usize,
    /// Bound of a build context.
    pub context_limit: u64,
}

impl BuildConfig {
    /// Workspaces under `build_dir`, no `file://` repository, the given sockets and the
    /// default bounds.
    pub fn new(build_dir: PathBuf, docker_socket: String, podman_socket: String) -> Self {
        BuildConfig {
            build_dir,
            file_repos: FileRepos::default(),
            docker_socket,
            podman_socket,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            context_limit: MAX_CONTEXT_BYTES,
        }
    }
}

/// The builds of this node: starts them, cancels them. Cheap to clone.
#[derive(Clone)]
pub struct Builds {
    inner: Arc<Inner>,
}

struct Inner {
    config: BuildConfig,
    builders: Vec<Builder>,
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
}

/// What the caller does with a build's report (send it up the session) before the
/// build's output ends.
pub type OnReport = Box<dyn FnOnce(BuildReport) -> BoxFuture<'static, ()> + Send>;

impl Builds {
    /// Builds with `builders` (those available on this node); removes the workspaces
    /// earlier runs left in the build directory. Each build gets the registry settings in
    /// force when it starts ([`Builds::start`]).
    pub fn new(config: BuildConfig, builders: Vec<Builder>) -> Self {
        let swept = workspace::sweep(&config.build_dir);
        if swept > 0 {
            tracing::info!(count = swept, build_dir = %config.build_dir.display(), "removed leftover build workspaces");
        }
        Builds { inner: Arc::new(Inner { config, builders, running: Mutex::new(HashMap::new()) }) }
    }

    /// The builders offered.
    pub fn builders(&self) -> &[Builder] {
        &self.inner.builders
    }

    /// The configuration.
    pub fn config(&self) -> &BuildConfig {
        &self.inner.config
    }

    /// Starts `spec` with the registry settings `registry`, or refuses it at once: the
    /// builder is not available here, the build id is already running, or the repository
    /// is a `file://` one this node does not allow. The build runs on its own task; its
    /// output comes on the returned stream, which ends after `on_report` has run.
    pub fn start(&self, spec: BuildSpec, registry: RegistryConfig, on_report: OnReport) -> Result<RuntimeStream<LogChunk>, CommandError> {
        let refuse = |code, message: String| Err(CommandError { code, message });
        if !self.inner.builders.contains(&spec.builder) {
            return refuse(CommandErrorCode::FailedPrecondition, format!("the {} builder is not available on this node", spec.builder));
        }
        if let Err(err) = self.inner.config.file_repos.check(&spec.git_repo) {
            return refuse(CommandErrorCode::PermissionDenied, err.to_string());
        }
        let (cancel_tx, cancel_rx) = watch::channel(false);
        {
            let Ok(mut running) = self.inner.running.lock() else {
                return refuse(CommandErrorCode::Internal, "build registry poisoned".into());
            };
            if running.contains_key(&spec.build_id) {
                return refuse(CommandErrorCode::AlreadyExists, format!("build {} is already running on this node", spec.build_id));
            }
            running.insert(spec.build_id.clone(), cancel_tx);
        }
        let (tx, rx) = mpsc::channel::<LogChunk>(64);
        let secrets: Vec<String> = registry.credentials.values().map(|c| c.password.clone()).collect();
        let log = BuildLog::new(tx, secrets, self.inner.config.output_limit);
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let build_id = spec.build_id.clone();
            tracing::info!(build = %build_id, builder = %spec.builder, image = %spec.image, "build started");
            let report = run(&inner.config, &spec, &registry, &log, cancel_rx).await;
            tracing::info!(build = %build_id, status = %report.status, error = %report.error, "build ended");
            if let Ok(mut running) = inner.running.lock() {
                running.remove(&build_id);
            }
            on_report(report).await;
            drop(log);
        });
        Ok(Box::pin(ReceiverStream::new(rx).map(Ok)))
    }

    /// Cancels a running build (it ends as `cancelled`, cleaned up like a failure).
    pub fn cancel(&self, build_id: &str) -> Result<(), CommandError> {
        let running =
            self.inner.running.lock().map_err(|_| CommandError { code: CommandErrorCode::Internal, message: "poisoned".into() })?;
        match running.get(build_id) {
            Some(cancel) => {
                let _ = cancel.send(true);
                Ok(())
            }
            None => {
                Err(CommandError { code: CommandErrorCode::NotFound, message: format!("build {build_id} is not running on this node") })
            }
        }
    }
}

/// The builders named in a comma list (`DIPLO_BUILDERS`); unknown names are logged
/// and skipped.
pub fn parse_builders(list: &str) -> Vec<Builder> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .filter_map(|name| match name.parse() {
            Ok(builder) => Some(builder),
            Err(err) => {
                tracing::warn!(error = %err, "ignoring an unknown builder in {BUILDERS_ENV}");
                None
            }
        })
        .collect()
}

/// Builds of this agent under way in the container storage Podman and buildah share.
static SHARED_STORAGE_BUILDS: AtomicUsize = AtomicUsize::new(0);

/// Counts a Podman or buildah build in [`SHARED_STORAGE_BUILDS`] while it lives.
struct SharedStorageBuild;

impl SharedStorageBuild {
    fn start() -> Self {
        SHARED_STORAGE_BUILDS.fetch_add(1, Ordering::SeqCst);
        SharedStorageBuild
    }
}

impl Drop for SharedStorageBuild {
    fn drop(&mut self) {
        SHARED_STORAGE_BUILDS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a build leaves behind that a failure must remove.
#[derive(Default)]
struct Leftovers {
    /// Image ids of the build's steps.
    steps: Mutex<Vec<String>>,
    /// Images tagged so far.
    tagged: Mutex<Vec<String>>,
    /// The buildah process running, if any.
    buildah_pid: Mutex<Option<u32>>,
    /// Podman's working containers before the build.
    podman_before: Mutex<Option<std::collections::HashSet<String>>>,
    /// The commit, once cloned.
    commit: Mutex<String>,
}

/// How a build ended early.
enum Cut {
    Failed(String),
    Timeout,
    Cancelled,
}

async fn run(
    config: &BuildConfig,
    spec: &BuildSpec,
    registry: &RegistryConfig,
    log: &BuildLog,
    mut cancel: watch::Receiver<bool>,
) -> BuildReport {
    let workspace = match Workspace::create(&config.build_dir, &spec.build_id) {
        Ok(workspace) => workspace,
        Err(err) => {
            return BuildReport::failed(&spec.build_id, format!("cannot create a workspace in {}: {err}", config.build_dir.display()));
        }
    };
    let leftovers = Leftovers::default();
    let work = execute(config, spec, registry, &workspace, log, &leftovers);
    let outcome = tokio::select! {
        ended = tokio::time::timeout(spec.timeout, work) => match ended {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(message)) => Err(Cut::Failed(message)),
            Err(_) => Err(Cut::Timeout),
        },
        _ = cancel.wait_for(|cancelled| *cancelled) => Err(Cut::Cancelled),
    };
    let report = match outcome {
        Ok(report) => report,
        Err(cut) => {
            let cut_short = !matches!(cut, Cut::Failed(_));
            let (status, error) = match cut {
                Cut::Failed(message) => (BuildStatus::Failed, message),
                Cut::Timeout => (BuildStatus::Failed, format!("build exceeded its timeout of {} s", spec.timeout.as_secs())),
                Cut::Cancelled => (BuildStatus::Cancelled, "build cancelled".to_owned()),
            };
            log.note(&format!("build {status}: {error}")).await;
            remove_leftovers(config, spec, registry, &leftovers, cut_short).await;
            let mut report = BuildReport::failed(&spec.build_id, log.redact(&error));
            report.status = status;
            report.commit = leftovers.commit.lock().map(|c| c.clone()).unwrap_or_default();
            report
        }
    };
    let root = workspace.root().to_path_buf();
    if tokio::task::spawn_blocking(move || drop(workspace)).await.is_err() {
        tracing::warn!(workspace = %root.display(), "removing the workspace panicked");
    }
    report
}

/// Removes what a failed build left; `cut_short`: it was stopped (timeout,
/// cancellation) rather than failing on its own, which Podman does not clean up after.
async fn remove_leftovers(config: &BuildConfig, spec: &BuildSpec, registry: &RegistryConfig, leftovers: &Leftovers, cut_short: bool) {
    let steps = leftovers.steps.lock().map(|s| s.clone()).unwrap_or_default();
    let tagged = leftovers.tagged.lock().map(|s| s.clone()).unwrap_or_default();
    match spec.builder {
        Builder::Docker | Builder::Podman => {
            let engine = engine(config, spec.builder, registry);
            let before = leftovers.podman_before.lock().ok().and_then(|mut b| b.take());
            if let Some(before) = before.filter(|_| cut_short) {
                // Podman leaves the working containers of a build whose request was
                // dropped: those made since it started from its base or step images,
                // when no other build of this agent uses the same storage meanwhile.
                if SHARED_STORAGE_BUILDS.load(Ordering::SeqCst) == 0 {
                    engine.remove_working_containers(&before, &steps).await;
                } else {
                    tracing::warn!(build = %spec.build_id, "another Podman or buildah build is running: this build's working containers are left in Podman's storage");
                }
            }
            engine.remove_leftovers(&steps, None).await;
            for image in &tagged {
                engine.remove_leftovers(&[], Some(image)).await;
            }
            engine.remove_leftovers(&steps, None).await;
        }
        Builder::Buildah => {
            let running = leftovers.buildah_pid.lock().ok().and_then(|mut pid| pid.take());
            if let Some(pid) = running {
                buildah::terminate(pid).await;
            }
            for image in &tagged {
                buildah::remove_leftovers(&[], Some(image)).await;
            }
            buildah::remove_leftovers(&steps, None).await;
        }
    }
}

fn engine(config: &BuildConfig, builder: Builder, registry: &RegistryConfig) -> EngineBuilder {
    match builder {
        Builder::Podman => EngineBuilder::connect(&config.podman_socket, Runtime::Podman, registry.clone()),
        _ => EngineBuilder::connect(&config.docker_socket, Runtime::Docker, registry.clone()),
    }
}

/// One image a build makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Compose service it is for.
    pub service: Option<String>,
    /// Its tag.
    pub image: String,
    /// Build context, relative to the repository (`""`: the root).
    pub context: String,
    /// Dockerfile, relative to the context.
    pub dockerfile: String,
    /// Build arguments.
    pub build_args: BTreeMap<String, String>,
}

/// What a build makes, and what the language detection said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The images.
    pub targets: Vec<Target>,
    /// Language built for.
    pub language: String,
    /// Where the language came from.
    pub detected_from: String,
}

/// Name of the Dockerfile a template is rendered into, at the repository root.
pub const RENDERED_DOCKERFILE: &str = ".diplo.Dockerfile";

/// Decides what to build from the cloned repository `repo`: the repository's own
/// Dockerfile (or compose file), else the language detected (or given) and its
/// template, rendered into [`RENDERED_DOCKERFILE`].
pub fn plan(spec: &BuildSpec, repo: &Path) -> Result<Plan, String> {
    use diplo_api::build::detect::{DirRepo, Language, RepoFiles, detect, spec_language};
    use diplo_api::build::template::{TemplateOptions, render};
    let single = |dockerfile: &str, build_args: BTreeMap<String, String>| Target {
        service: None,
        image: spec.image.clone(),
        context: String::new(),
        dockerfile: dockerfile.to_owned(),
        build_args,
    };
    let files = DirRepo::new(repo);
    let compose = |path: &str, only: &str, detected_from: String| -> Result<Plan, String> {
        let path = if path.is_empty() { "docker-compose.yml" } else { path };
        workspace::resolve_file(repo, path, "compose_config.compose_file")?;
        let text = files.read(path).ok_or_else(|| format!("compose_config.compose_file {path:?} cannot be read (larger than 1 MiB?)"))?;
        let targets = compose::targets(&text, path, &spec.image, only)?;
        Ok(Plan { targets, language: Language::Compose.as_str().into(), detected_from })
    };
    match &spec.buildpack {
        Buildpack::Dockerfile { path, build_args } => {
            let path = if path.is_empty() { "Dockerfile" } else { path.as_str() };
            workspace::resolve_file(repo, path, "dockerfile_config.dockerfile_path")?;
            Ok(Plan {
                targets: vec![single(path, build_args.clone())],
                language: Language::Dockerfile.as_str().into(),
                detected_from: path.to_owned(),
            })
        }
        Buildpack::Compose { compose_file, service } => compose(compose_file, service, "compose_config".into()),
        Buildpack::Detect | Buildpack::Static { .. } | Buildpack::Nixpacks { .. } => {
            // A Dockerfile in the repository wins over detection; one that is a link is
            // refused, not skipped.
            if matches!(spec.buildpack, Buildpack::Detect) && std::fs::symlink_metadata(repo.join("Dockerfile")).is_ok() {
                workspace::resolve_file(repo, "Dockerfile", "Dockerfile")?;
                return Ok(Plan {
                    targets: vec![single("Dockerfile", BTreeMap::new())],
                    language: spec.language.clone().unwrap_or_else(|| Language::Dockerfile.as_str().into()),
                    detected_from: "Dockerfile".into(),
                });
            }
            let detection = detect(&files, spec_language(spec)?)?;
            match detection.language {
                Language::Dockerfile => Ok(Plan {
                    targets: vec![single("Dockerfile", BTreeMap::new())],
                    language: detection.language.as_str().into(),
                    detected_from: detection.detected_from,
                }),
                Language::Compose => compose(&detection.detected_from, "", detection.detected_from.clone()),
                _ => {
                    let rendered = render(&detection, &TemplateOptions::for_spec(spec)?)?;
                    write_new_file(&repo.join(RENDERED_DOCKERFILE), &rendered.dockerfile)?;
                    Ok(Plan {
                        targets: vec![single(RENDERED_DOCKERFILE, BTreeMap::new())],
                        language: detection.language.as_str().into(),
                        detected_from: detection.detected_from,
                    })
                }
            }
        }
    }
}

/// Writes `text` to a file that must not exist yet (never through a link the
/// repository planted).
fn write_new_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| format!("writing {}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Whether a program is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The nixpacks buildpack with the `nixpacks` binary: it writes its Dockerfile into
/// the repository (`.nixpacks/Dockerfile`), which the spec's builder then builds.
async fn nixpacks_plan(
    spec: &BuildSpec,
    repo: &Path,
    home: &Path,
    start_command: &str,
    variables: &BTreeMap<String, String>,
) -> Result<Plan, String> {
    let mut args: Vec<String> =
        vec!["build".into(), repo.display().to_string(), "--out".into(), repo.display().to_string(), "--name".into(), spec.image.clone()];
    if !start_command.is_empty() {
        args.push("--start-cmd".into());
        args.push(start_command.to_owned());
    }
    for (name, value) in variables {
        args.push("--env".into());
        args.push(format!("{name}={value}"));
    }
    let output = tokio::process::Command::new("nixpacks")
        .args(&args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run nixpacks: {e}"))?;
    if !output.status.success() {
        return Err(format!("nixpacks failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    workspace::resolve_file(repo, ".nixpacks/Dockerfile", "nixpacks output")?;
    Ok(Plan {
        targets: vec![Target {
            service: None,
            image: spec.image.clone(),
            context: String::new(),
            dockerfile: ".nixpacks/Dockerfile".into(),
            build_args: BTreeMap::new(),
        }],
        language: "nixpacks".into(),
        detected_from: "nixpacks".into(),
    })
}

async fn execute(
    config: &BuildConfig,
    spec: &BuildSpec,
    registry: &RegistryConfig,
    workspace: &Workspace,
    log: &BuildLog,
    leftovers: &Leftovers,
) -> Result<BuildReport, String> {
    let branch = spec.git_branch.as_deref().map(|b| format!(" (branch {b})")).unwrap_or_default();
    log.note(&format!("cloning {}{branch}", spec.git_repo)).await;
    let repo = workspace.repo();
    let commit = git::clone(&spec.git_repo, spec.git_branch.as_deref(), &repo, &workspace.home(), &config.file_repos)
        .await
        .map_err(|e| format!("cloning {}: {e}", redact::redact_url_credentials(&spec.git_repo)))?;
    log.note(&format!("commit {commit}")).await;
    if let Ok(mut slot) = leftovers.commit.lock() {
        *slot = commit.clone();
    }
    let plan = match &spec.buildpack {
        Buildpack::Nixpacks { start_command, variables } if on_path("nixpacks") => {
            nixpacks_plan(spec, &repo, &workspace.home(), start_command, variables).await?
        }
        _ => plan(spec, &repo)?,
    };
    log.note(&format!("building as {} (from {})", if plan.language.is_empty() { "given" } else { &plan.language }, plan.detected_from))
        .await;
    let mut report = BuildReport::failed(&spec.build_id, "");
    report.status = BuildStatus::Succeeded;
    report.commit = commit;
    report.language = plan.language.clone();
    report.detected_from = plan.detected_from.clone();
    for (index, target) in plan.targets.iter().enumerate() {
        let (image, digest) = build_target(config, spec, registry, workspace, log, leftovers, target, index).await?;
        match &target.service {
            Some(service) => {
                report.service_images.insert(service.clone(), image);
            }
            None => {
                report.image = image;
                report.digest = digest;
            }
        }
    }
    Ok(report)
}

/// Builds (and pushes) one target; returns the image (`repo:tag@digest` once pushed)
/// and its digest.
#[allow(clippy::too_many_arguments)]
async fn build_target(
    config: &BuildConfig,
    spec: &BuildSpec,
    registry: &RegistryConfig,
    workspace: &Workspace,
    log: &BuildLog,
    leftovers: &Leftovers,
    target: &Target,
    index: usize,
) -> Result<(String, String), String> {
    let repo = workspace.repo();
    let context =
        if target.context.is_empty() { repo.clone() } else { workspace::resolve_inside(&repo, &target.context, "build context")? };
    let dockerfile = workspace::resolve_file(&context, &target.dockerfile, "dockerfile")?;
    let text = std::fs::read_to_string(&dockerfile).map_err(|e| format!("reading {}: {e}", target.dockerfile))?;
    let base_images = workspace::base_images(&text);
    log.note(&format!("building {} with {}", target.image, spec.builder)).await;
    if let Ok(mut tagged) = leftovers.tagged.lock() {
        tagged.push(target.image.clone());
    }
    let (local_digest, pushed) = match spec.builder {
        Builder::Docker | Builder::Podman => {
            let tar = workspace.root().join(format!("context-{index}.tar"));
            let (ctx, out, limit) = (context.clone(), tar.clone(), config.context_limit);
            tokio::task::spawn_blocking(move || workspace::pack_context(&ctx, &out, limit))
                .await
                .map_err(|e| format!("packing the build context: {e}"))??;
            let engine = engine(config, spec.builder, registry);
            let _running = (spec.builder == Builder::Podman).then(SharedStorageBuild::start);
            if spec.builder == Builder::Podman {
                let before = engine.working_containers().await.ok();
                if let Ok(mut slot) = leftovers.podman_before.lock() {
                    *slot = before;
                }
            }
            let request = EngineBuild {
                build_id: &spec.build_id,
                image: &target.image,
                dockerfile: &target.dockerfile,
                context_tar: &tar,
                build_args: &target.build_args,
                base_images: &base_images,
            };
            let id = engine.build(&request, log, &leftovers.steps).await?;
            let _ = std::fs::remove_file(&tar);
            let pushed = if spec.push { Some(engine.push(&target.image, log).await?) } else { None };
            (id, pushed)
        }
        Builder::Buildah => {
            let _running = SharedStorageBuild::start();
            let authfile =
                buildah::write_auth_file(workspace.root(), registry).map_err(|e| format!("writing the registry auth file: {e}"))?;
            let home = workspace.home();
            for image in &base_images {
                let insecure = registry.is_insecure(&registry_of(image));
                buildah::run(
                    &buildah::pull_args(image, insecure, authfile.as_deref()),
                    &home,
                    log,
                    &leftovers.steps,
                    &leftovers.buildah_pid,
                )
                .await
                .map_err(|e| format!("pulling the base image {image}: {e}"))?;
            }
            let args = buildah::bud_args(&spec.build_id, &target.image, &dockerfile, &context, &target.build_args, authfile.as_deref());
            buildah::run(&args, &home, log, &leftovers.steps, &leftovers.buildah_pid).await?;
            let pushed = if spec.push {
                let digestfile = workspace.root().join(format!("digest-{index}"));
                let insecure = registry.is_insecure(&registry_of(&target.image));
                buildah::run(
                    &buildah::push_args(&target.image, &digestfile, insecure, authfile.as_deref()),
                    &home,
                    log,
                    &leftovers.steps,
                    &leftovers.buildah_pid,
                )
                .await?;
                let digest = std::fs::read_to_string(&digestfile).map(|d| d.trim().to_owned()).ok().filter(|d| d.starts_with("sha256:"));
                Some(digest)
            } else {
                None
            };
            (String::new(), pushed)
        }
    };
    match pushed {
        None => Ok((target.image.clone(), local_digest)),
        Some(digest) => {
            let digest = match digest {
                Some(digest) => digest,
                None => registry_digest(registry, &target.image).await?,
            };
            log.note(&format!("pushed {} ({digest})", target.image)).await;
            Ok((format!("{}@{digest}", target.image), digest))
        }
    }
}

/// The manifest digest the registry now has under `image`'s tag.
async fn registry_digest(registry: &RegistryConfig, image: &str) -> Result<String, String> {
    let reference = Reference::parse(image).map_err(|e| format!("{image}: {e}"))?;
    let client = RegistryClient::new(registry.clone(), concat!("diplo-agent/", env!("CARGO_PKG_VERSION"))).map_err(|e| e.to_string())?;
    let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
    client
        .manifest_digest(&reference, &tag)
        .await
        .map_err(|e| format!("reading the pushed manifest of {image}: {e}"))?
        .ok_or_else(|| format!("the registry has no manifest for {image} after the push"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_lists_are_parsed() {
        assert_eq!(parse_builders("buildah, docker,nope,"), vec![Builder::Buildah, Builder::Docker]);
        assert_eq!(parse_builders(" "), vec![]);
    }
}
