//! Carries out commands from the control plane on this node's runtimes, and observes
//! the containers Diplo runs here (for heartbeats and re-adoption after a restart).

use std::collections::BTreeMap;
use std::sync::Arc;

use diplo_api::command::{AgentCommand, CommandError, CommandErrorCode, CommandOp, CommandOutcome, CommandOutput};
use diplo_api::container::{ContainerInfo, ExecOutput, LABEL_NODE, LogChunk, LogOptions};
use diplo_api::runtime::Runtime;
use futures::StreamExt;
use futures::future::BoxFuture;
use tracing::Instrument;

use crate::host_paths::HostPathPolicy;
use crate::runtime::output::TailCollector;
use crate::runtime::{ContainerRuntime, RuntimeError, RuntimeStream};

/// The runtimes this node can drive, by kind.
#[derive(Clone, Default)]
pub struct Executor {
    node_id: String,
    runtimes: BTreeMap<Runtime, Arc<dyn ContainerRuntime>>,
    host_paths: HostPathPolicy,
    registry: crate::registry::SharedRegistry,
    builds: Option<crate::build::Builds>,
    /// Set by every command that may have changed the node's named volumes; the session
    /// takes it to report them again.
    volumes_changed: Arc<std::sync::atomic::AtomicBool>,
}

impl Executor {
    /// An executor for `node_id` over the given drivers, allowing no host bind mount.
    pub fn new(node_id: String, runtimes: Vec<Arc<dyn ContainerRuntime>>) -> Self {
        Executor {
            node_id,
            runtimes: runtimes.into_iter().map(|r| (r.runtime(), r)).collect(),
            host_paths: HostPathPolicy::default(),
            registry: Default::default(),
            builds: None,
            volumes_changed: Arc::default(),
        }
    }

    /// The same executor, letting containers bind-mount the host paths `policy` allows.
    pub fn with_host_paths(mut self, policy: HostPathPolicy) -> Self {
        self.host_paths = policy;
        self
    }

    /// The same executor, its drivers reading registry settings from `registry` (the
    /// session updates it with what the control plane sends).
    pub fn with_registry(mut self, registry: crate::registry::SharedRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// The registry settings in force, shared with the drivers and updated by the
    /// session; [`SharedRegistry::current`](crate::registry::SharedRegistry::current)
    /// gives the live [`RegistryConfig`](crate::runtime::RegistryConfig) (for builds).
    pub fn registry(&self) -> &crate::registry::SharedRegistry {
        &self.registry
    }

    /// The same executor, running the builds it is sent with `builds`.
    pub fn with_builds(mut self, builds: crate::build::Builds) -> Self {
        self.builds = Some(builds);
        self
    }

    /// This node's builds, when it runs any.
    pub fn builds(&self) -> Option<&crate::build::Builds> {
        self.builds.as_ref()
    }

    /// Refuses a container whose bind mounts reach outside the host path allowlist,
    /// before any runtime sees it.
    fn check_host_paths(&self, op: &CommandOp) -> Result<(), CommandError> {
        let CommandOp::Create(spec) = op else { return Ok(()) };
        for mount in spec.mounts.iter().filter(|mount| mount.is_bind()) {
            if let Err(message) = self.host_paths.check(&mount.source) {
                tracing::warn!(container = %spec.name, source = %mount.source, target = %mount.target, "host bind mount refused");
                return Err(CommandError { code: CommandErrorCode::PermissionDenied, message });
            }
        }
        Ok(())
    }

    /// The runtimes available.
    pub fn runtimes(&self) -> Vec<Runtime> {
        self.runtimes.keys().copied().collect()
    }

    fn driver(&self, runtime: Runtime) -> Result<&Arc<dyn ContainerRuntime>, CommandError> {
        self.runtimes.get(&runtime).ok_or_else(|| CommandError {
            code: CommandErrorCode::FailedPrecondition,
            message: format!("{runtime} is not available on this node"),
        })
    }

    /// Runs one command (except followed logs: see [`Executor::follow_logs`]).
    pub fn execute(&self, command: AgentCommand) -> BoxFuture<'static, CommandOutcome> {
        if let Err(refused) = self.check_host_paths(&command.op) {
            return Box::pin(async move { Err(refused) });
        }
        let driver = self.driver(command.runtime).cloned();
        let node_id = self.node_id.clone();
        let changed = changes_volumes(&command.op).then(|| self.volumes_changed.clone());
        Box::pin(async move {
            let outcome = run_op(driver?, command.op, node_id).await.map_err(command_error);
            if let Some(changed) = changed {
                changed.store(true, std::sync::atomic::Ordering::Release);
            }
            outcome
        })
    }

    /// Opens a followed log stream for a `Logs` command with `follow`.
    pub fn follow_logs(
        &self,
        runtime: Runtime,
        id: String,
        options: LogOptions,
    ) -> BoxFuture<'static, Result<RuntimeStream<LogChunk>, CommandError>> {
        let driver = self.driver(runtime).cloned();
        Box::pin(async move { driver?.logs(&id, options.bounded()).await.map_err(command_error) })
    }

    /// The node's id (its containers carry it as [`LABEL_NODE`]).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Every driver, by runtime.
    pub fn drivers(&self) -> Vec<(Runtime, Arc<dyn ContainerRuntime>)> {
        self.runtimes.iter().map(|(runtime, driver)| (*runtime, Arc::clone(driver))).collect()
    }

    /// Whether a command may have changed the node's named volumes since the last call.
    pub fn take_volumes_changed(&self) -> bool {
        self.volumes_changed.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// The names of the named volumes of every runtime, bounded
    /// ([`diplo_api::fingerprint::bounded_volume_names`]). A runtime that fails to list
    /// is left out (and logged): the control plane keeps its last report.
    pub async fn volume_report(&self) -> diplo_api::fingerprint::VolumeReport {
        let lists = futures::future::join_all(self.runtimes.iter().map(|(runtime, driver)| async move {
            match driver.list_volumes().await {
                Ok(volumes) => Some((*runtime, diplo_api::fingerprint::bounded_volume_names(volumes.iter().map(|v| v.name.as_str())))),
                Err(err) => {
                    tracing::warn!(%runtime, error = %err, "cannot list volumes");
                    None
                }
            }
        }))
        .await;
        lists.into_iter().flatten().collect()
    }

    /// Every container this node created (Diplo's labels with this node's id), on every
    /// runtime; containers of other agents sharing a runtime are not ours. A runtime that
    /// fails to list is skipped (and logged) so that one broken daemon hides nothing else.
    pub async fn observe(&self) -> Vec<(Runtime, ContainerInfo)> {
        let node_id = self.node_id.as_str();
        let lists = futures::future::join_all(self.runtimes.iter().map(|(runtime, driver)| async move {
            match list_owned(driver.as_ref(), node_id).await {
                Ok(list) => list.into_iter().map(|info| (*runtime, info)).collect(),
                Err(err) => {
                    tracing::warn!(%runtime, error = %err, "cannot list containers");
                    Vec::new()
                }
            }
        }))
        .await;
        lists.into_iter().flatten().collect()
    }
}

/// Whether `op` may create or remove named volumes (a container mounting a volume that
/// does not exist yet creates it).
fn changes_volumes(op: &CommandOp) -> bool {
    use diplo_api::resources::VolumeOp;
    match op {
        CommandOp::Create(spec) => spec.mounts.iter().any(|mount| !mount.is_bind()),
        CommandOp::Volume(op) => matches!(op, VolumeOp::Create(_) | VolumeOp::Remove(_) | VolumeOp::Prune),
        _ => false,
    }
}

/// Whether `info` is a container of node `node_id` (its [`LABEL_NODE`] label says so).
pub fn owned_by(info: &ContainerInfo, node_id: &str) -> bool {
    info.labels.get(LABEL_NODE).is_some_and(|owner| owner == node_id)
}

/// The containers of node `node_id` on one runtime.
pub async fn list_owned(driver: &dyn ContainerRuntime, node_id: &str) -> Result<Vec<ContainerInfo>, RuntimeError> {
    Ok(driver.list().await?.into_iter().filter(|info| owned_by(info, node_id)).collect())
}

/// Runs `op` on `driver` inside a `runtime.<kind>` span naming the runtime (and the image
/// of a create).
async fn run_op(driver: Arc<dyn ContainerRuntime>, op: CommandOp, node_id: String) -> Result<CommandOutput, RuntimeError> {
    let span = tracing::info_span!(
        "runtime",
        otel.name = %format!("runtime.{}", op.kind()),
        runtime = %driver.runtime(),
        image = tracing::field::Empty,
    );
    if let CommandOp::Create(spec) = &op {
        span.record("image", spec.image.as_str());
    }
    run_driver(driver, op, node_id).instrument(span).await
}

async fn run_driver(driver: Arc<dyn ContainerRuntime>, op: CommandOp, node_id: String) -> Result<CommandOutput, RuntimeError> {
    let driver = driver.as_ref();
    let output = match &op {
        CommandOp::Create(spec) => {
            let mut spec = spec.clone();
            spec.labels.insert(LABEL_NODE.into(), node_id);
            container(create_and_start(driver, &spec).await?)
        }
        CommandOp::Start(id) => {
            driver.start(id).await?;
            container(driver.inspect(id).await?)
        }
        CommandOp::Stop { id, grace } => {
            driver.stop(id, *grace).await?;
            container(driver.inspect(id).await?)
        }
        CommandOp::Restart(id) => {
            driver.restart(id, crate::DEFAULT_GRACE).await?;
            container(driver.inspect(id).await?)
        }
        CommandOp::Remove { id, force } => {
            driver.remove(id, *force).await?;
            CommandOutput::default()
        }
        CommandOp::Exec { id, argv } => CommandOutput { exec: Some(driver.exec(id, argv).await?), ..Default::default() },
        CommandOp::Logs { id, options } => {
            CommandOutput { exec: Some(collect_logs(driver.logs(id, options.bounded()).await?).await?), ..Default::default() }
        }
        CommandOp::PullImage(image) => {
            driver.ensure_image(image).await?;
            CommandOutput::default()
        }
        CommandOp::Inspect(id) => container(driver.inspect(id).await?),
        CommandOp::Stats(id) => CommandOutput { stats: Some(driver.stats(id).await?), ..Default::default() },
        CommandOp::Image(op) => resources(crate::resources::image_op(driver, op).await?),
        CommandOp::Network(op) => resources(crate::resources::network_op(driver, op).await?),
        CommandOp::Volume(op) => resources(crate::resources::volume_op(driver, op).await?),
        CommandOp::Pause(id) => {
            driver.pause(id).await?;
            container(driver.inspect(id).await?)
        }
        CommandOp::Unpause(id) => {
            driver.unpause(id).await?;
            container(driver.inspect(id).await?)
        }
        CommandOp::CopyOut { id, path } => CommandOutput { archive: Some(driver.copy_from(id, path).await?), ..Default::default() },
        CommandOp::CopyIn { id, dir, archive } => {
            driver.copy_to(id, dir, archive.clone()).await?;
            CommandOutput::default()
        }
        CommandOp::Build(_) | CommandOp::CancelBuild(_) => {
            return Err(RuntimeError::Unsupported {
                runtime: driver.runtime(),
                operation: "builds (run by the agent's build service, not a runtime)",
            });
        }
    };
    Ok(output)
}

fn resources(output: diplo_api::resources::ResourceOutput) -> CommandOutput {
    CommandOutput { resources: output, ..Default::default() }
}

fn container(info: ContainerInfo) -> CommandOutput {
    CommandOutput { container: Some(info), ..Default::default() }
}

/// Pulls, creates and starts; a container that fails to start is removed again so that
/// nothing half-created stays behind.
async fn create_and_start(
    driver: &dyn ContainerRuntime,
    spec: &diplo_api::container::ContainerSpec,
) -> Result<ContainerInfo, RuntimeError> {
    driver.ensure_image(&spec.image).await?;
    let id = driver.create(spec).await?;
    if let Err(err) = driver.start(&id).await {
        if let Err(cleanup) = driver.remove(&id, true).await {
            tracing::warn!(container = %id, error = %cleanup, "could not remove a container that failed to start");
        }
        return Err(err);
    }
    driver.inspect(&id).await
}

/// The newest [`MAX_OUTPUT_BYTES`](diplo_api::container::MAX_OUTPUT_BYTES) of a log
/// read that does not follow (older output is dropped as it is read, with a note).
async fn collect_logs(mut stream: RuntimeStream<LogChunk>) -> Result<ExecOutput, RuntimeError> {
    let mut output = TailCollector::default();
    while let Some(chunk) = stream.next().await {
        output.push(chunk?);
    }
    Ok(output.finish())
}

/// Maps a driver error to the code the control plane turns into a gRPC/HTTP status.
pub fn command_error(err: RuntimeError) -> CommandError {
    let code = match &err {
        RuntimeError::NotFound { .. } => CommandErrorCode::NotFound,
        RuntimeError::Conflict(_) => CommandErrorCode::AlreadyExists,
        RuntimeError::InvalidArgument { .. } => CommandErrorCode::InvalidArgument,
        RuntimeError::Unsupported { .. } => CommandErrorCode::Unimplemented,
        RuntimeError::Unavailable { .. } => CommandErrorCode::Unavailable,
        RuntimeError::Failed { .. } => CommandErrorCode::Internal,
    };
    CommandError { code, message: err.to_string() }
}

#[cfg(test)]
mod tests {
    use diplo_api::container::{ContainerSpec, Mount};

    use super::*;

    #[test]
    fn commands_that_may_change_volumes_are_the_ones_reported_again() {
        use diplo_api::resources::{VolumeOp, VolumeSpec};
        let mount = |source: &str| Mount { source: source.into(), target: "/data".into(), read_only: false };
        let with = |mounts| CommandOp::Create(ContainerSpec { mounts, ..ContainerSpec::default() });
        let cases = [
            (with(vec![mount("data")]), true),
            (with(vec![mount("/srv/data")]), false),
            (with(Vec::new()), false),
            (CommandOp::Volume(VolumeOp::Create(VolumeSpec { name: "v".into(), ..VolumeSpec::default() })), true),
            (CommandOp::Volume(VolumeOp::Remove("v".into())), true),
            (CommandOp::Volume(VolumeOp::Prune), true),
            (CommandOp::Volume(VolumeOp::List), false),
            (CommandOp::Volume(VolumeOp::Inspect("v".into())), false),
            (CommandOp::Start("web".into()), false),
        ];
        for (op, expected) in cases {
            assert_eq!(changes_volumes(&op), expected, "{op:?}");
        }
    }

    fn create(mounts: Vec<Mount>) -> AgentCommand {
        let spec = ContainerSpec { name: "web".into(), image: "busybox".into(), mounts, ..ContainerSpec::default() };
        AgentCommand { request_id: "r1".into(), runtime: Runtime::Docker, op: CommandOp::Create(spec), traceparent: None }
    }

    #[tokio::test]
    async fn host_bind_mounts_outside_the_allowlist_are_refused_before_any_runtime() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let allowed = dir.path().canonicalize().expect("canonical path");
        let mount = |source: &str| Mount { source: source.into(), target: "/data".into(), read_only: false };
        let executor = Executor::default().with_host_paths(HostPathPolicy::new([allowed.clone()]).expect("policy"));

        for source in ["/", "/var/run/docker.sock", "/etc/../etc"] {
            let err = executor.execute(create(vec![mount("data"), mount(source)])).await.expect_err(source);
            assert_eq!(err.code, CommandErrorCode::PermissionDenied, "{source}: {err:?}");
            assert!(err.message.contains(source) && err.message.contains("--allow-host-path"), "{}", err.message);
        }
        // Allowed paths and named volumes get as far as the runtime (none here).
        let inside = allowed.join("sub").display().to_string();
        for mounts in [vec![mount(&inside)], vec![mount("data")], vec![]] {
            let err = executor.execute(create(mounts.clone())).await.expect_err("no runtime");
            assert_eq!(err.code, CommandErrorCode::FailedPrecondition, "{mounts:?}: {err:?}");
        }
        // Nothing is allowed by default.
        let err = Executor::default().execute(create(vec![mount(&inside)])).await.expect_err("default");
        assert_eq!(err.code, CommandErrorCode::PermissionDenied, "{err:?}");
    }
}
