//! Builds of images from git: validating a request, choosing a builder node, sending it
//! the build, keeping its output (bounded) for readers and followers, and recording how
//! it ended.
//!
//! A build is `queued` when accepted, `running` once its node took it, and ends
//! `succeeded`, `failed` or `cancelled`. Every change of status is a compare-and-set on
//! the stored status, so a final status is never overwritten: a report that comes after
//! a cancel, or a cancel after the report, changes nothing. A build ends failed when its
//! node's session closes before it reported, when the node has not reported within the
//! build timeout plus a grace period (`Config::build_report_grace`, a minute by
//! default), and (at start-up) when a previous control plane left it unfinished.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diplo_api::build::{BuildReport, BuildSpec, BuildStatus, Builder, Buildpack};
use diplo_api::command::CommandOp;
use diplo_api::runtime::Runtime;
use prost::bytes::Bytes;
use tokio::sync::{Notify, broadcast, watch};

use super::ControlPlane;
use crate::auth::Caller;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{BuildRecord, NodeStatus, Role};
use crate::scheduler::{BuilderCandidate, pick_builder};

/// The most output kept per build, in memory and in the store: the last bytes.
pub const BUILD_LOG_MAX: usize = 4 << 20;
/// Most builds a list returns.
pub const BUILD_LIST_MAX: u32 = 500;
/// How long the end of a build waits for the last of its output before storing it.
const OUTPUT_SETTLE: Duration = Duration::from_secs(3);
/// Chunks a follower may fall behind by before it is told it missed some.
const FOLLOW_BUFFER: usize = 256;

/// A request to build an image from git.
#[derive(Debug, Clone, Default)]
pub struct StartBuild {
    /// Client-chosen id; generated when `None`.
    pub id: Option<String>,
    /// Repository URL.
    pub git_repo: String,
    /// Branch or tag; `None`: the default branch.
    pub git_branch: Option<String>,
    /// How to build.
    pub buildpack: Buildpack,
    /// Image `name[:tag]`, with or without a registry part; `None`: named after the repository.
    pub image_tag: Option<String>,
    /// Language overriding detection.
    pub language: Option<String>,
    /// Platform to build on (`linux/arm64`); `None`: any builder.
    pub platform: Option<String>,
    /// Node (id or name) to build on when it can; `None`: the best builder.
    pub prefer_node: Option<String>,
    /// Deployment this build feeds.
    pub deployment_id: Option<String>,
}

/// A build's output so far, bounded to its last [`BUILD_LOG_MAX`] bytes.
#[derive(Debug, Default)]
struct LogBuffer {
    data: VecDeque<u8>,
    dropped: u64,
}

impl LogBuffer {
    fn push(&mut self, chunk: &[u8]) {
        self.data.extend(chunk);
        let excess = self.data.len().saturating_sub(BUILD_LOG_MAX);
        if excess > 0 {
            self.data.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The output kept, after a note of how much earlier output was dropped.
    fn contents(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 100);
        if self.dropped > 0 {
            out.extend_from_slice(
                format!("[{} bytes of earlier output dropped: a build keeps its last {} MiB]\n", self.dropped, BUILD_LOG_MAX >> 20)
                    .as_bytes(),
            );
        }
        out.extend(self.data.iter());
        out
    }
}

/// What the control plane holds about an unfinished build.
struct Live {
    /// The node and session it was sent on, once sent.
    sent_on: Mutex<Option<(String, u64)>>,
    log: Mutex<LogBuffer>,
    chunks: broadcast::Sender<Bytes>,
    /// Set when the node's output stream ended.
    output_done: watch::Sender<bool>,
    /// Set when the build ended (its record is final in the store).
    ended: watch::Sender<bool>,
    /// Why the build must fail now (its node disconnected), for its supervisor.
    abort: Mutex<Option<String>>,
    abort_notify: Notify,
}

impl Live {
    fn new() -> Arc<Self> {
        Arc::new(Live {
            sent_on: Mutex::new(None),
            log: Mutex::new(LogBuffer::default()),
            chunks: broadcast::channel(FOLLOW_BUFFER).0,
            output_done: watch::channel(false).0,
            ended: watch::channel(false).0,
            abort: Mutex::new(None),
            abort_notify: Notify::new(),
        })
    }

    fn append(&self, data: &[u8]) {
        let mut log = lock(&self.log);
        log.push(data);
        // Sent under the lock, so a follower's snapshot and its stream never overlap.
        let _ = self.chunks.send(Bytes::copy_from_slice(data));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The unfinished builds of this control plane, by id.
#[derive(Default)]
pub(crate) struct LiveBuilds {
    builds: Mutex<HashMap<String, Arc<Live>>>,
}

impl LiveBuilds {
    fn get(&self, id: &str) -> Option<Arc<Live>> {
        lock(&self.builds).get(id).cloned()
    }

    /// Builds running per node.
    fn running(&self) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for live in lock(&self.builds).values() {
            if let Some((node, _)) = lock(&live.sent_on).as_ref() {
                *counts.entry(node.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Tells the supervisors of the builds sent on `session` of `node_id` that it closed.
    pub(crate) fn session_closed(&self, node_id: &str, session: u64) {
        for live in lock(&self.builds).values() {
            let on_it = lock(&live.sent_on).as_ref().is_some_and(|(node, s)| node == node_id && *s == session);
            if on_it {
                lock(&live.abort).get_or_insert_with(|| format!("node {node_id} disconnected during the build"));
                live.abort_notify.notify_one();
            }
        }
    }
}

/// A build's output as a reader gets it: what is stored or kept so far, then (when
/// followed) the rest until the build ends.
pub type BuildLogStream = std::pin::Pin<Box<dyn futures::Stream<Item = Bytes> + Send>>;

/// Splits `platform` (`os/arch[/variant]`) into os and arch.
pub fn parse_platform(platform: &str) -> ServiceResult<(String, String)> {
    let parts: Vec<&str> = platform.split('/').collect();
    let word = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match parts.as_slice() {
        [os, arch] | [os, arch, _] if parts.iter().all(|p| word(p)) => Ok((os.to_ascii_lowercase(), arch.to_ascii_lowercase())),
        _ => Err(ServiceError::invalid("platform", format!("{platform:?} is not a platform (os/arch, e.g. linux/arm64)"))),
    }
}

/// The image a build tags and whether it is pushed: `image_tag` (`name[:tag]`; the
/// repository's last path segment when `None`) with the tag defaulting to the build id.
/// A name with a registry part (`host.domain/…`, `host:port/…`, `localhost/…`) is pushed
/// there; one without goes to the cluster registry when there is one, else stays on its
/// builder node.
pub fn resolve_image(image_tag: Option<&str>, git_repo: &str, build_id: &str, cluster: Option<&str>) -> ServiceResult<(String, bool)> {
    let invalid = |message: String| ServiceError::invalid("image_tag", message);
    let given = image_tag.map(str::trim).filter(|t| !t.is_empty());
    let reference = match given {
        Some(tag) => tag.to_owned(),
        None => {
            let last = git_repo.trim_end_matches('/').rsplit(['/', ':']).next().unwrap_or_default();
            let name: String = last
                .trim_end_matches(".git")
                .to_ascii_lowercase()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
                .collect();
            let name = name.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned();
            if name.is_empty() { "app".to_owned() } else { name }
        }
    };
    if reference.contains('@') {
        return Err(invalid(format!("{reference:?}: give a name and tag, not a digest")));
    }
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_owned(), tag.to_owned()),
        _ => (reference.clone(), build_id.to_owned()),
    };
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !tag_ok {
        return Err(invalid(format!("{reference:?}: tag {tag:?} is not a valid tag")));
    }
    let mut components = name.split('/');
    let first = components.next().unwrap_or_default();
    let has_registry = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let path = if has_registry { &name[first.len() + 1..] } else { name.as_str() };
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    if name.len() > 255 || !path.split('/').all(component_ok) {
        return Err(invalid(format!("{reference:?}: {name:?} is not an image name (lower-case letters, digits, '.', '_', '-', '/')")));
    }
    Ok(match (has_registry, cluster) {
        (true, _) => (format!("{name}:{tag}"), true),
        (false, Some(registry)) => (format!("{}/{name}:{tag}", registry.trim_end_matches('/')), true),
        (false, None) => (format!("{name}:{tag}"), false),
    })
}

/// The runtime a build command goes to on its node: the builder's own engine, or the
/// node's preferred runtime for buildah.
fn build_runtime(builder: Builder, preferred: Option<Runtime>) -> Runtime {
    match builder {
        Builder::Docker => Runtime::Docker,
        Builder::Podman => Runtime::Podman,
        Builder::Buildah => preferred.unwrap_or(Runtime::Containerd),
    }
}

/// A generated build id.
fn new_build_id() -> String {
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    format!("b-{}", &uuid[..12])
}

/// A timestamp at the store's precision.
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

impl ControlPlane {
    /// Starts a build: checks every field (the error names it), records it `queued`,
    /// chooses a builder node ([`pick_builder`]), sends it the build and records it
    /// `running`. Deployer or admin. A build no node can take is recorded `failed` with
    /// the reason and returned as such; a taken id is `AlreadyExists`.
    pub async fn start_build(self: &Arc<Self>, caller: &Caller, request: StartBuild) -> ServiceResult<BuildRecord> {
        caller.require_operator(Role::Deployer)?;
        let id = request.id.clone().filter(|id| !id.is_empty()).unwrap_or_else(new_build_id);
        let (image, push) =
            resolve_image(request.image_tag.as_deref(), &request.git_repo, &id, self.config.registry.as_deref().filter(|r| !r.is_empty()))?;
        let platform = request.platform.as_deref().filter(|p| !p.is_empty()).map(parse_platform).transpose()?;
        let mut spec = BuildSpec {
            build_id: id.clone(),
            git_repo: request.git_repo.clone(),
            git_branch: request.git_branch.clone().filter(|b| !b.is_empty()),
            builder: Builder::Docker,
            image: image.clone(),
            push,
            buildpack: request.buildpack.clone(),
            language: request.language.clone().filter(|l| !l.is_empty()),
            base_images: self.config.base_images.clone(),
            timeout: self.config.build_timeout,
        };
        spec.validate().map_err(|(field, message)| ServiceError::InvalidRequest(format!("invalid {field}: {message}")))?;
        if let Some(deployment) = &request.deployment_id
            && (deployment.is_empty() || deployment.len() > 128)
        {
            return Err(ServiceError::invalid("deployment_id", "1 to 128 characters"));
        }
        let mut record = BuildRecord {
            id: id.clone(),
            status: BuildStatus::Queued,
            git_repo: crate::store::mask_password(&spec.git_repo),
            git_branch: spec.git_branch.clone(),
            commit: String::new(),
            language: spec.language.clone().unwrap_or_default(),
            detected_from: if spec.language.is_some() { "language".into() } else { String::new() },
            buildpack_type: spec.buildpack.kind().into(),
            builder: None,
            node_id: None,
            platform: platform.as_ref().map(|(os, arch)| format!("{os}/{arch}")),
            image,
            digest: String::new(),
            pushed: push,
            service_images: BTreeMap::new(),
            message: "waiting for a builder".into(),
            created_at: now_ms(),
            started_at: None,
            finished_at: None,
            deployment_id: request.deployment_id.clone(),
            requested_by: caller.actor(),
        };
        let live = Live::new();
        {
            let mut builds = lock(&self.builds.builds);
            if builds.contains_key(&id) {
                return Err(ServiceError::AlreadyExists(format!("build {id:?} already exists")));
            }
            builds.insert(id.clone(), live.clone());
        }
        if let Err(err) = self.store.insert_build(&record).await {
            lock(&self.builds.builds).remove(&id);
            return Err(err.into());
        }
        tracing::info!(build_id = %id, repo = %record.git_repo, actor = %caller.actor(), "build queued");

        // Choose the node and record it before sending: its report may come at once.
        let (node_id, builder, runtime) = match self.choose_builder(platform.as_ref(), request.prefer_node.as_deref()).await {
            Ok(chosen) => chosen,
            Err(reason) => return self.fail_unsent(&record, &live, reason).await,
        };
        spec.builder = builder;
        record.node_id = Some(node_id.clone());
        record.builder = Some(builder);
        record.message = format!("sending to node {node_id} ({builder})");
        if !self.store.update_build(&record, BuildStatus::Queued).await? {
            return self.current_build(&id).await;
        }
        let session = self.nodes.session(&node_id).map(|(session, _)| session);
        let output = match session {
            Some(session) => {
                *lock(&live.sent_on) = Some((node_id.clone(), session));
                self.open_output(&node_id, runtime, CommandOp::Build(Box::new(spec))).await
            }
            None => Err(ServiceError::Unavailable(format!("node {node_id} is not connected"))),
        };
        let output = match output {
            Ok(output) => output,
            Err(err) => {
                return self.fail_unsent(&record, &live, format!("node {node_id} did not take the build: {err}")).await;
            }
        };
        let mut running = record.clone();
        running.status = BuildStatus::Running;
        running.started_at = Some(now_ms());
        running.message = format!("building on node {node_id} with {builder}");
        let started = self.store.update_build(&running, BuildStatus::Queued).await?;
        self.spawn_supervisor(id.clone(), live.clone(), output);
        if !started {
            // Reported or cancelled already.
            return self.current_build(&id).await;
        }
        self.emit(
            "build.started",
            &caller.actor(),
            &format!("build:{id}"),
            format!("build {id} of {} started on node {node_id} with {builder}", running.git_repo),
        )
        .await;
        Ok(running)
    }

    /// The node, builder and runtime for a build, or why there is none.
    async fn choose_builder(
        &self,
        platform: Option<&(String, String)>,
        prefer: Option<&str>,
    ) -> Result<(String, Builder, Runtime), String> {
        let nodes = self.store.list_nodes().await.map_err(|e| format!("cannot list nodes: {e}"))?;
        let mut candidates = Vec::with_capacity(nodes.len());
        for mut node in nodes {
            self.apply_live_status(&mut node);
            let connected = self.nodes.session(&node.id).is_some();
            candidates.push(BuilderCandidate {
                id: node.id.clone(),
                name: node.name.clone(),
                os: node.fingerprint.os.clone(),
                arch: node.fingerprint.arch.clone(),
                ready: node.status == NodeStatus::Ready && connected,
                cordoned: node.cordoned,
                builders: node.fingerprint.builders.clone(),
            });
        }
        let platform = platform.map(|(os, arch)| (os.as_str(), arch.as_str()));
        let (node_id, builder) = pick_builder(&candidates, platform, prefer, &self.builds.running())?;
        let preferred = self.store.get_node(&node_id).await.ok().flatten().and_then(|n| n.fingerprint.preferred_runtime());
        Ok((node_id, builder, build_runtime(builder, preferred)))
    }

    /// Records a build that could not be sent as failed, with `reason`, and returns it.
    async fn fail_unsent(&self, record: &BuildRecord, live: &Arc<Live>, reason: String) -> ServiceResult<BuildRecord> {
        live.output_done.send_replace(true);
        tracing::warn!(build_id = %record.id, reason = %reason, "build not started");
        live.append(format!("{reason}\n").as_bytes());
        self.finish_build(&record.id, "system", |build| {
            build.status = BuildStatus::Failed;
            build.message = reason.clone();
        })
        .await?;
        self.current_build(&record.id).await
    }

    /// The stored build, or `NotFound`.
    async fn current_build(&self, id: &str) -> ServiceResult<BuildRecord> {
        self.store.get_build(id).await?.ok_or_else(|| ServiceError::NotFound(format!("build {id:?} not found")))
    }

    /// Reads a build's output into its log and watches for its end: the node's report
    /// or a cancel (which finish it elsewhere), its node disconnecting, or the report
    /// not coming within the timeout plus `Config::build_report_grace`.
    fn spawn_supervisor(
        self: &Arc<Self>,
        id: String,
        live: Arc<Live>,
        mut output: tokio::sync::mpsc::Receiver<diplo_api::container::LogChunk>,
    ) {
        let reader = live.clone();
        tokio::spawn(async move {
            while let Some(chunk) = output.recv().await {
                reader.append(&chunk.data);
            }
            reader.output_done.send_replace(true);
        });
        let control_plane = self.clone();
        let grace = self.config.build_report_grace;
        let deadline = tokio::time::Instant::now() + self.config.build_timeout + grace;
        tokio::spawn(async move {
            let mut ended = live.ended.subscribe();
            let reason = tokio::select! {
                _ = ended.wait_for(|ended| *ended) => return,
                () = live.abort_notify.notified() => lock(&live.abort).clone().unwrap_or_else(|| "the build was aborted".into()),
                () = tokio::time::sleep_until(deadline) => format!(
                    "its node did not report within the build timeout ({}) plus {}",
                    humantime::format_duration(control_plane.config.build_timeout),
                    humantime::format_duration(grace)
                ),
            };
            tracing::warn!(build_id = %id, reason = %reason, "build failed");
            let result = control_plane
                .finish_build(&id, "system", |build| {
                    build.status = BuildStatus::Failed;
                    build.message = reason.clone();
                })
                .await;
            if let Err(err) = result {
                tracing::error!(build_id = %id, error = %err, "cannot record the end of a build");
            }
        });
    }

    /// Ends a build: applies `end` (which sets a final status) to the stored record as
    /// a compare-and-set on its status, stores its log, wakes its followers and waiters,
    /// and emits `build.<status>`. `false` when the build had ended already (nothing
    /// is changed then).
    async fn finish_build(&self, id: &str, actor: &str, end: impl Fn(&mut BuildRecord)) -> ServiceResult<bool> {
        let mut written = None;
        for _ in 0..5 {
            let Some(current) = self.store.get_build(id).await? else { break };
            if current.status.is_final() {
                break;
            }
            let mut build = current.clone();
            end(&mut build);
            build.finished_at = Some(now_ms());
            if self.store.update_build(&build, current.status).await? {
                written = Some(build);
                break;
            }
        }
        let live = self.builds.get(id);
        if let Some(live) = &live {
            // The node's last output may still be on its way.
            let mut done = live.output_done.subscribe();
            let _ = tokio::time::timeout(OUTPUT_SETTLE, done.wait_for(|done| *done)).await;
        }
        let Some(build) = written else {
            return Ok(false);
        };
        if let Some(live) = live {
            let log = lock(&live.log).contents();
            if let Err(err) = self.store.save_build_log(id, &log).await {
                tracing::error!(build_id = %id, error = %err, "cannot store a build's log");
            }
            lock(&self.builds.builds).remove(id);
            live.ended.send_replace(true);
        }
        let status = build.status;
        let what = match status {
            BuildStatus::Succeeded => format!("succeeded: {}", build.image),
            _ => format!("{status}: {}", build.message),
        };
        tracing::info!(build_id = %id, %status, image = %build.image, message = %build.message, "build ended");
        self.emit(&format!("build.{status}"), actor, &format!("build:{id}"), format!("build {id} {what}")).await;
        Ok(true)
    }

    /// The end of a build as its node reports it. Only the node the build was sent to
    /// may report it: another node's report is refused and audited like a foreign
    /// command result, and changes nothing. A report for a build that ended already
    /// (cancelled, failed on a timeout) is ignored.
    pub async fn build_report(&self, caller: &Caller, report: BuildReport) -> ServiceResult<()> {
        caller.require_any_node()?;
        let Some(build) = self.store.get_build(&report.build_id).await? else {
            tracing::info!(build_id = %report.build_id, actor = %caller.actor(), "report for an unknown build; ignored");
            return Ok(());
        };
        let sent_to = build.node_id.clone().unwrap_or_default();
        if sent_to.is_empty() || caller.require_node(&sent_to).is_err() {
            return Err(self
                .refuse(
                    caller,
                    format!(
                        "reported build {}, which was sent to node {}",
                        report.build_id,
                        if sent_to.is_empty() { "none" } else { &sent_to }
                    ),
                )
                .await);
        }
        if build.status.is_final() {
            tracing::info!(build_id = %build.id, status = %build.status, reported = %report.status, "report for a build that has ended; ignored");
            return Ok(());
        }
        let actor = caller.actor();
        self.finish_build(&report.build_id, &actor, |build| {
            build.status = report.status;
            build.message = match report.status {
                BuildStatus::Succeeded => "built".into(),
                BuildStatus::Cancelled => "cancelled on its node".into(),
                _ => report.error.clone(),
            };
            if !report.image.is_empty() {
                build.image = report.image.clone();
            }
            build.digest = report.digest.clone();
            if !report.language.is_empty() {
                build.language = report.language.clone();
            }
            if !report.detected_from.is_empty() {
                build.detected_from = report.detected_from.clone();
            }
            build.commit = report.commit.clone();
            build.service_images = report.service_images.clone();
        })
        .await?;
        Ok(())
    }

    /// One build. Viewer or higher.
    pub async fn get_build(&self, caller: &Caller, id: &str) -> ServiceResult<BuildRecord> {
        caller.require_operator(Role::Viewer)?;
        self.current_build(id).await
    }

    /// The newest builds (at most [`BUILD_LIST_MAX`]), newest first. Viewer or higher.
    pub async fn list_builds(&self, caller: &Caller) -> ServiceResult<Vec<BuildRecord>> {
        caller.require_operator(Role::Viewer)?;
        Ok(self.store.list_builds(BUILD_LIST_MAX).await?)
    }

    /// Cancels a build: a queued one ends `cancelled` at once; a running one is told to
    /// stop on its node (`CancelBuild`) and ends `cancelled`. A build that has ended is
    /// returned as it is. Deployer or admin.
    pub async fn cancel_build(&self, caller: &Caller, id: &str) -> ServiceResult<BuildRecord> {
        caller.require_operator(Role::Deployer)?;
        let build = self.current_build(id).await?;
        if build.status.is_final() {
            return Ok(build);
        }
        if build.status == BuildStatus::Running
            && let Some(node_id) = &build.node_id
        {
            let preferred = self.store.get_node(node_id).await?.and_then(|node| node.fingerprint.preferred_runtime());
            let runtime = build_runtime(build.builder.unwrap_or(Builder::Docker), preferred);
            // The build ends cancelled whether or not its node still answers.
            if let Err(err) = self.send_command(node_id, runtime, CommandOp::CancelBuild(id.to_owned())).await {
                tracing::warn!(build_id = %id, node_id = %node_id, error = %err, "cancel not delivered to the build's node");
            }
        }
        let actor = caller.actor();
        self.finish_build(id, &actor, |build| {
            build.status = BuildStatus::Cancelled;
            build.message = format!("cancelled by {actor}");
        })
        .await?;
        self.current_build(id).await
    }

    /// A build's output: the stored log of an ended build, or what its node sent so
    /// far; with `follow`, then the rest until the build ends. Viewer or higher.
    pub async fn build_logs(&self, caller: &Caller, id: &str, follow: bool) -> ServiceResult<BuildLogStream> {
        caller.require_operator(Role::Viewer)?;
        if let Some(live) = self.builds.get(id) {
            let (snapshot, chunks) = {
                let log = lock(&live.log);
                (log.contents(), live.chunks.subscribe())
            };
            let first = futures::stream::iter((!snapshot.is_empty()).then(|| Bytes::from(snapshot)));
            if !follow {
                return Ok(Box::pin(first));
            }
            return Ok(Box::pin(futures::StreamExt::chain(first, follow_stream(chunks, live.ended.subscribe()))));
        }
        let log = self.store.get_build_log(id).await?.ok_or_else(|| ServiceError::NotFound(format!("build {id:?} not found")))?;
        Ok(Box::pin(futures::stream::iter((!log.is_empty()).then(|| Bytes::from(log)))))
    }

    /// Waits until a build has ended and returns it.
    pub async fn wait_build(&self, id: &str) -> ServiceResult<BuildRecord> {
        loop {
            if let Some(live) = self.builds.get(id) {
                let mut ended = live.ended.subscribe();
                let _ = ended.wait_for(|ended| *ended).await;
            }
            let build = self.current_build(id).await?;
            if build.status.is_final() {
                return Ok(build);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Marks the builds a previous control plane left queued or running as failed
    /// ("interrupted: the control plane restarted"). Run at start-up, before any build
    /// starts; returns how many.
    pub async fn fail_interrupted_builds(&self) -> ServiceResult<usize> {
        let mut failed = 0;
        for build in self.store.list_builds(u32::MAX).await? {
            if build.status.is_final() || self.builds.get(&build.id).is_some() {
                continue;
            }
            let mut ended = build.clone();
            ended.status = BuildStatus::Failed;
            ended.message = "interrupted: the control plane restarted".into();
            ended.finished_at = Some(now_ms());
            if self.store.update_build(&ended, build.status).await? {
                failed += 1;
                self.emit(
                    "build.failed",
                    "system",
                    &format!("build:{}", build.id),
                    format!("build {} failed: {}", build.id, ended.message),
                )
                .await;
            }
        }
        if failed > 0 {
            tracing::warn!(failed, "builds left unfinished by a previous control plane marked failed");
        }
        Ok(failed)
    }
}

/// Live chunks until the build ends; a follower that falls behind is told what it missed.
fn follow_stream(chunks: broadcast::Receiver<Bytes>, ended: watch::Receiver<bool>) -> impl futures::Stream<Item = Bytes> + Send {
    futures::stream::unfold(Some((chunks, ended)), |state| async move {
        let (mut chunks, mut ended) = state?;
        let received = tokio::select! {
            biased;
            received = chunks.recv() => Some(received),
            _ = ended.wait_for(|ended| *ended) => None,
        };
        match received {
            Some(Ok(chunk)) => Some((chunk, Some((chunks, ended)))),
            Some(Err(broadcast::error::RecvError::Lagged(missed))) => {
                let note = Bytes::from(format!("\n[{missed} chunk(s) of output skipped: this reader fell behind]\n"));
                Some((note, Some((chunks, ended))))
            }
            Some(Err(broadcast::error::RecvError::Closed)) => None,
            // Ended: whatever was sent before the end, then stop.
            None => chunks.try_recv().ok().map(|chunk| (chunk, Some((chunks, ended)))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_go_to_the_cluster_registry_unless_named_elsewhere() {
        let cluster = Some("10.0.0.1:5000");
        /// Image tag, cluster registry, expected image and push (or a part of the error).
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Result<(&'a str, bool), &'a str>);
        let cases: Vec<Case<'_>> = vec![
            (Some("app:v1"), cluster, Ok(("10.0.0.1:5000/app:v1", true))),
            (Some("team/app"), cluster, Ok(("10.0.0.1:5000/team/app:b-1", true))),
            (None, cluster, Ok(("10.0.0.1:5000/my_app:b-1", true))),
            (Some("ghcr.io/me/app:1.0"), cluster, Ok(("ghcr.io/me/app:1.0", true))),
            (Some("localhost:5000/app"), None, Ok(("localhost:5000/app:b-1", true))),
            (Some("app:v1"), None, Ok(("app:v1", false))),
            (None, None, Ok(("my_app:b-1", false))),
            (Some("App:v1"), cluster, Err("not an image name")),
            (Some("app:-x"), cluster, Err("not a valid tag")),
            (Some("app@sha256:abc"), cluster, Err("not a digest")),
            (Some("app:v1 --rm"), cluster, Err("image_tag")),
        ];
        for (tag, cluster, expected) in cases {
            let got = resolve_image(tag, "https://git.example/me/My_App.git", "b-1", cluster);
            match (&got, expected) {
                (Ok((image, push)), Ok((want, want_push))) => assert_eq!((image.as_str(), *push), (want, want_push), "{tag:?}"),
                (Err(err), Err(want)) => {
                    assert!(err.to_string().contains(want), "{tag:?}: {err}");
                    assert!(err.to_string().starts_with("invalid image_tag"), "{err}");
                }
                _ => panic!("{tag:?}: got {got:?}"),
            }
        }
    }

    #[test]
    fn platforms_parse_or_name_the_field() {
        assert_eq!(parse_platform("linux/arm64").expect("valid"), ("linux".to_owned(), "arm64".to_owned()));
        assert_eq!(parse_platform("linux/arm/v7").expect("valid").1, "arm");
        for bad in ["linux", "linux/", "/arm64", "linux/arm64/v8/x", "linux/arm 64"] {
            assert!(parse_platform(bad).expect_err(bad).to_string().starts_with("invalid platform"), "{bad}");
        }
    }

    #[test]
    fn the_log_keeps_its_last_bytes_and_says_how_many_it_dropped() {
        let mut log = LogBuffer::default();
        log.push(&vec![b'a'; BUILD_LOG_MAX]);
        log.push(b"tail");
        let contents = log.contents();
        let text = String::from_utf8_lossy(&contents[..120]);
        assert!(text.starts_with("[4 bytes of earlier output dropped"), "{text}");
        assert!(contents.ends_with(b"aaatail"));
        assert_eq!(log.data.len(), BUILD_LOG_MAX);
    }

    /// A control plane with one connected, ready node offering `builders`, whose
    /// commands are accepted at once (and reported to `commands`).
    async fn with_builder(
        dir: &std::path::Path,
        config: impl FnOnce(&mut crate::config::Config),
    ) -> (Arc<ControlPlane>, String, tokio::sync::mpsc::Receiver<diplo_api::command::AgentCommand>) {
        use crate::model::{NodeRecord, SessionMessage};
        let mut settings = crate::config::Config::new(dir.to_owned());
        config(&mut settings);
        let control_plane = super::super::tests::control_plane_with(settings).await;
        let fingerprint = diplo_api::fingerprint::Fingerprint {
            os: "linux".into(),
            arch: "amd64".into(),
            builders: vec![Builder::Docker],
            ..Default::default()
        };
        let node = NodeRecord {
            id: "node-a".into(),
            name: "a".into(),
            status: NodeStatus::Ready,
            fingerprint,
            cordoned: false,
            labels: BTreeMap::new(),
            joined_at: Utc::now(),
            last_seen_at: Utc::now(),
            address: String::new(),
        };
        control_plane.store.insert_node(&node).await.expect("node");
        control_plane.nodes.track("node-a", NodeStatus::Ready);
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        control_plane.nodes.connect("node-a", tx).expect("tracked");
        let (seen_tx, seen) = tokio::sync::mpsc::channel(8);
        let answering = control_plane.clone();
        tokio::spawn(async move {
            let caller = Caller::Node { node_id: "node-a".into() };
            while let Some(message) = rx.recv().await {
                if let SessionMessage::Command(command) = message {
                    let outcome = Ok(diplo_api::command::CommandOutput::default());
                    answering.command_result(&caller, &command.request_id, outcome).await.expect("own result");
                    let _ = seen_tx.send(*command).await;
                }
            }
        });
        (control_plane, "node-a".into(), seen)
    }

    fn admin() -> Caller {
        Caller::Operator { name: "admin".into(), role: Role::Admin }
    }

    #[tokio::test]
    async fn a_build_whose_node_never_reports_fails_after_its_timeout_and_grace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (control_plane, _, mut commands) = with_builder(dir.path(), |config| {
            config.build_timeout = Duration::from_secs(1);
            config.build_report_grace = Duration::from_millis(200);
        })
        .await;
        let request = StartBuild { id: Some("silent".into()), git_repo: "https://git.example/app.git".into(), ..Default::default() };
        let started = control_plane.start_build(&admin(), request).await.expect("start");
        assert_eq!(started.status, BuildStatus::Running);
        let command = commands.recv().await.expect("the Build command");
        assert!(matches!(&command.op, CommandOp::Build(spec) if spec.timeout == Duration::from_secs(1)), "{command:?}");
        let ended = tokio::time::timeout(Duration::from_secs(20), control_plane.wait_build("silent")).await.expect("ends").expect("build");
        assert_eq!(ended.status, BuildStatus::Failed);
        assert!(ended.message.contains("did not report within the build timeout (1s) plus 200ms"), "{}", ended.message);
    }

    #[tokio::test]
    async fn a_build_for_a_deployment_is_waited_for_until_its_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (control_plane, node_id, mut commands) =
            with_builder(dir.path(), |config| config.registry = Some("10.0.0.1:5000".into())).await;
        let request = StartBuild {
            git_repo: "https://git.example/app.git".into(),
            deployment_id: Some("dep-1".into()),
            prefer_node: Some(node_id.clone()),
            ..Default::default()
        };
        let started = control_plane.start_build(&admin(), request).await.expect("start");
        assert_eq!((started.deployment_id.as_deref(), started.pushed), (Some("dep-1"), true));
        assert_eq!(started.image, format!("10.0.0.1:5000/app:{}", started.id));
        let command = commands.recv().await.expect("the Build command");
        assert!(matches!(&command.op, CommandOp::Build(spec) if spec.push && spec.image == started.image), "{command:?}");
        let waiting = {
            let control_plane = control_plane.clone();
            let id = started.id.clone();
            tokio::spawn(async move { control_plane.wait_build(&id).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "still running");
        let report = BuildReport {
            image: format!("{}@sha256:{}", started.image, "c".repeat(64)),
            digest: format!("sha256:{}", "c".repeat(64)),
            status: BuildStatus::Succeeded,
            ..BuildReport::failed(started.id.clone(), "")
        };
        // Another node's report is refused; the build's own node's is taken.
        let other = Caller::Node { node_id: "node-b".into() };
        assert!(matches!(control_plane.build_report(&other, report.clone()).await, Err(ServiceError::PermissionDenied(_))));
        control_plane.build_report(&Caller::Node { node_id }, report).await.expect("own report");
        let ended = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("ends").expect("task").expect("build");
        assert_eq!((ended.status, ended.digest.as_str()), (BuildStatus::Succeeded, format!("sha256:{}", "c".repeat(64)).as_str()));
        assert_eq!(ended.deployment_id.as_deref(), Some("dep-1"));
    }

    #[test]
    fn buildah_builds_go_to_the_nodes_preferred_runtime() {
        assert_eq!(build_runtime(Builder::Docker, Some(Runtime::Containerd)), Runtime::Docker);
        assert_eq!(build_runtime(Builder::Podman, None), Runtime::Podman);
        assert_eq!(build_runtime(Builder::Buildah, Some(Runtime::Lxc)), Runtime::Lxc);
    }
}
