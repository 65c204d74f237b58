//! A simulated runtime for hollow nodes (`diplo-hollow`): it acts out every command at
//! once in memory and runs nothing. It answers as one of the four runtime kinds (the
//! kind the node's fingerprint says it has), keeps what it was asked to create (spec,
//! labels, ports), reports honest states, and fails like the real drivers (unknown
//! container: not found; name taken or host port in use: conflict). Everything it
//! reports says it is simulated: its version is `hollow …`, an exec says nothing ran, a
//! log says what was simulated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use diplo_api::container::{
    ContainerInfo, ContainerSpec, ContainerStats, ContainerStatus, ExecOutput, LogChunk, LogOptions, OutputStream, RuntimeEvent,
    RuntimeEventKind, validate_container_name,
};
use diplo_api::runtime::Runtime;
use futures::StreamExt;
use tokio::sync::broadcast;

use super::docker_api::{check_image_reference, is_diplo, labels_for};
use super::{ContainerRuntime, RuntimeError, RuntimeResult, RuntimeStream};

/// What the simulated runtime reports as its version.
pub fn version() -> String {
    format!("hollow {} (simulated, runs nothing)", env!("CARGO_PKG_VERSION"))
}

/// The endpoint a simulated runtime reports in a fingerprint.
pub const ENDPOINT: &str = "hollow:in-memory";

/// Events buffered for slow readers of [`ContainerRuntime::events`].
const EVENT_BUFFER: usize = 64;

/// An in-memory runtime answering as `runtime`.
pub struct FakeRuntime {
    runtime: Runtime,
    state: Mutex<State>,
    events: broadcast::Sender<RuntimeEvent>,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, Container>,
    images: BTreeSet<String>,
}

struct Container {
    info: ContainerInfo,
    /// What the simulation did to it, one line each: its log.
    log: Vec<String>,
}

impl FakeRuntime {
    /// An empty simulated runtime answering as `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        FakeRuntime { runtime, state: Mutex::new(State::default()), events: broadcast::channel(EVENT_BUFFER).0 }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, container_id: &str, kind: RuntimeEventKind) {
        // Nobody listening is fine.
        let _ = self.events.send(RuntimeEvent { container_id: container_id.to_owned(), kind });
    }

    /// Runs `change` on the container named by `id` (its id or its name).
    fn with_container<T>(&self, id: &str, change: impl FnOnce(&mut Container) -> RuntimeResult<T>) -> RuntimeResult<T> {
        let mut state = self.state();
        let key = find(&state, id)?;
        let container = state.containers.get_mut(&key).ok_or_else(|| not_found(id))?;
        change(container)
    }

    /// Marks a container running, unless a running container already publishes one of
    /// its host ports.
    fn run(&self, id: &str, restart: bool) -> RuntimeResult<String> {
        let mut state = self.state();
        let key = find(&state, id)?;
        let wanted = state.containers.get(&key).map(|c| c.info.ports.clone()).unwrap_or_default();
        for other in state.containers.values().filter(|c| c.info.id != key && c.info.status == ContainerStatus::Running) {
            if let Some(port) =
                wanted.iter().find(|p| other.info.ports.iter().any(|o| o.host_port == p.host_port && o.protocol == p.protocol))
            {
                let protocol = match port.protocol {
                    diplo_api::container::Protocol::Tcp => "tcp",
                    diplo_api::container::Protocol::Udp => "udp",
                };
                return Err(RuntimeError::Conflict(format!("host port {}/{protocol} is already in use", port.host_port)));
            }
        }
        let container = state.containers.get_mut(&key).ok_or_else(|| not_found(id))?;
        let now = now();
        if restart && container.info.status == ContainerStatus::Running {
            container.log.push(format!("{now} [hollow] stopped (simulated)"));
        }
        container.info.status = ContainerStatus::Running;
        container.info.exit_code = 0;
        container.info.started_at = Some(now.clone());
        container.log.push(format!("{now} [hollow] started (simulated: no process runs)"));
        Ok(key)
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn not_found(id: &str) -> RuntimeError {
    RuntimeError::NotFound { what: "container", name: id.to_owned() }
}

/// The id of the container called `id` (by id, a unique id prefix of at least 12
/// characters, or name).
fn find(state: &State, id: &str) -> RuntimeResult<String> {
    if state.containers.contains_key(id) {
        return Ok(id.to_owned());
    }
    if let Some(found) = state.containers.values().find(|c| c.info.name == id) {
        return Ok(found.info.id.clone());
    }
    if id.len() >= 12 {
        let mut matching = state.containers.keys().filter(|key| key.starts_with(id));
        if let (Some(key), None) = (matching.next(), matching.next()) {
            return Ok(key.clone());
        }
    }
    Err(not_found(id))
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    fn runtime(&self) -> Runtime {
        self.runtime
    }

    async fn version(&self) -> RuntimeResult<String> {
        Ok(version())
    }

    async fn ensure_image(&self, image: &str) -> RuntimeResult<()> {
        check_image_reference(image)?;
        self.state().images.insert(image.to_owned());
        Ok(())
    }

    async fn import_image(&self, archive: &Path, reference: &str) -> RuntimeResult<()> {
        check_image_reference(reference)?;
        tokio::fs::metadata(archive)
            .await
            .map_err(|e| RuntimeError::InvalidArgument { field: "archive", message: format!("{}: {e}", archive.display()) })?;
        self.state().images.insert(reference.to_owned());
        Ok(())
    }

    async fn create(&self, spec: &ContainerSpec) -> RuntimeResult<String> {
        validate_container_name(&spec.name).map_err(|message| RuntimeError::InvalidArgument { field: "name", message })?;
        check_image_reference(&spec.image)?;
        let mut state = self.state();
        if !state.images.contains(&spec.image) {
            return Err(RuntimeError::NotFound { what: "image", name: spec.image.clone() });
        }
        if state.containers.values().any(|c| c.info.name == spec.name) {
            return Err(RuntimeError::Conflict(format!("container name {:?} is already in use", spec.name)));
        }
        let id = hex::encode(rand::random::<[u8; 32]>());
        let info = ContainerInfo {
            ports: spec.ports.clone(),
            labels: labels_for(spec, None).into_iter().collect(),
            ..ContainerInfo::new(id.clone(), spec.name.clone(), spec.image.clone(), ContainerStatus::Created)
        };
        let log =
            vec![format!("{} [hollow] created {} from {} on simulated {} (nothing runs)", now(), spec.name, spec.image, self.runtime)];
        state.containers.insert(id.clone(), Container { info, log });
        Ok(id)
    }

    async fn start(&self, id: &str) -> RuntimeResult<()> {
        let key = self.run(id, false)?;
        self.emit(&key, RuntimeEventKind::Start);
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> RuntimeResult<()> {
        let stopped = self.with_container(id, |container| {
            if container.info.status != ContainerStatus::Running {
                return Ok(None);
            }
            container.info.status = ContainerStatus::Exited;
            container.info.exit_code = 0;
            container.log.push(format!("{} [hollow] stopped (simulated: exited 0 on SIGTERM)", now()));
            Ok(Some(container.info.id.clone()))
        })?;
        if let Some(key) = stopped {
            self.emit(&key, RuntimeEventKind::Die);
        }
        Ok(())
    }

    async fn restart(&self, id: &str, _grace: Duration) -> RuntimeResult<()> {
        let key = self.run(id, true)?;
        self.emit(&key, RuntimeEventKind::Start);
        Ok(())
    }

    async fn remove(&self, id: &str, force: bool) -> RuntimeResult<()> {
        let mut state = self.state();
        let key = find(&state, id)?;
        let running = state.containers.get(&key).is_some_and(|c| c.info.status == ContainerStatus::Running);
        if running && !force {
            return Err(RuntimeError::Conflict(format!("container {id} is running: stop it first or force the removal")));
        }
        state.containers.remove(&key);
        drop(state);
        if running {
            self.emit(&key, RuntimeEventKind::Die);
        }
        Ok(())
    }

    async fn list(&self) -> RuntimeResult<Vec<ContainerInfo>> {
        let mut containers: Vec<ContainerInfo> =
            self.state().containers.values().filter(|c| is_diplo(&c.info.labels)).map(|c| c.info.clone()).collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    async fn inspect(&self, id: &str) -> RuntimeResult<ContainerInfo> {
        self.with_container(id, |container| Ok(container.info.clone()))
    }

    async fn logs(&self, id: &str, options: LogOptions) -> RuntimeResult<RuntimeStream<LogChunk>> {
        let options = options.bounded();
        let (lines, running) =
            self.with_container(id, |container| Ok((container.log.clone(), container.info.status == ContainerStatus::Running)))?;
        let tail = options.tail.unwrap_or(diplo_api::container::DEFAULT_LOG_TAIL) as usize;
        let skip = lines.len().saturating_sub(tail);
        let chunks: Vec<RuntimeResult<LogChunk>> = lines
            .into_iter()
            .skip(skip)
            .map(|line| {
                // Every line already starts with its time: the timestamps option is met.
                Ok(LogChunk { stream: OutputStream::Stdout, data: format!("{line}\n").into_bytes() })
            })
            .collect();
        let past = futures::stream::iter(chunks);
        if options.follow && running {
            // A simulated process writes nothing more: the stream stays open while it
            // "runs", until the reader goes away.
            Ok(Box::pin(past.chain(futures::stream::pending())))
        } else {
            Ok(Box::pin(past))
        }
    }

    async fn exec(&self, id: &str, argv: &[String]) -> RuntimeResult<ExecOutput> {
        if argv.is_empty() {
            return Err(RuntimeError::InvalidArgument { field: "argv", message: "the command is empty".to_owned() });
        }
        let name = self.with_container(id, |container| {
            if container.info.status != ContainerStatus::Running {
                return Err(RuntimeError::Conflict(format!("container {id} is not running")));
            }
            Ok(container.info.name.clone())
        })?;
        let stdout = format!("hollow: simulated exec of {argv:?} in {name} on {}; nothing ran\n", self.runtime);
        Ok(ExecOutput { exit_code: 0, stdout: stdout.into_bytes(), stderr: Vec::new() })
    }

    async fn stats(&self, id: &str) -> RuntimeResult<ContainerStats> {
        // Nothing runs, so nothing is used.
        self.with_container(id, |_| Ok(ContainerStats::default()))
    }

    async fn pause(&self, id: &str) -> RuntimeResult<()> {
        let paused = self.with_container(id, |container| match container.info.status {
            ContainerStatus::Running => {
                container.info.status = ContainerStatus::Paused;
                container.log.push(format!("{} [hollow] paused (simulated)", now()));
                Ok(Some(container.info.id.clone()))
            }
            ContainerStatus::Paused => Ok(None),
            _ => Err(RuntimeError::Conflict(format!("container {} is not running", container.info.name))),
        })?;
        if let Some(key) = paused {
            self.emit(&key, RuntimeEventKind::Changed);
        }
        Ok(())
    }

    async fn unpause(&self, id: &str) -> RuntimeResult<()> {
        let resumed = self.with_container(id, |container| {
            if container.info.status != ContainerStatus::Paused {
                return Ok(None);
            }
            container.info.status = ContainerStatus::Running;
            container.log.push(format!("{} [hollow] unpaused (simulated)", now()));
            Ok(Some(container.info.id.clone()))
        })?;
        if let Some(key) = resumed {
            self.emit(&key, RuntimeEventKind::Changed);
        }
        Ok(())
    }

    async fn events(&self) -> RuntimeResult<RuntimeStream<RuntimeEvent>> {
        let stream = tokio_stream::wrappers::BroadcastStream::new(self.events.subscribe()).filter_map(|event| {
            // A reader that fell behind misses the events it could not keep up with.
            futures::future::ready(event.ok().map(Ok))
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use diplo_api::container::{LABEL_DEPLOYMENT, LABEL_INSTANCE, PortMapping, Protocol};

    use super::*;

    const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";

    fn spec(name: &str, host_port: Option<u16>) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: IMAGE.into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            ports: host_port.map(|host_port| PortMapping { host_port, container_port: 80, protocol: Protocol::Tcp }).into_iter().collect(),
            ..ContainerSpec::default()
        }
    }

    async fn created(runtime: &FakeRuntime, name: &str, host_port: Option<u16>) -> String {
        runtime.ensure_image(IMAGE).await.expect("image");
        runtime.create(&spec(name, host_port)).await.expect("create")
    }

    async fn read_all(stream: RuntimeStream<LogChunk>) -> String {
        let chunks: Vec<_> = stream.collect().await;
        chunks.into_iter().map(|c| String::from_utf8(c.expect("chunk").data).expect("utf-8")).collect()
    }

    #[tokio::test]
    async fn answers_as_the_kind_it_was_given_and_says_it_is_simulated() {
        for kind in [Runtime::Docker, Runtime::Podman, Runtime::Containerd, Runtime::Lxc] {
            let runtime = FakeRuntime::new(kind);
            assert_eq!(runtime.runtime(), kind);
            let version = runtime.version().await.expect("version");
            assert!(version.starts_with("hollow") && version.contains("simulated"), "{version}");
        }
    }

    #[tokio::test]
    async fn lifecycle_states_are_honest_and_spec_labels_ports_are_kept() {
        let runtime = FakeRuntime::new(Runtime::Containerd);
        let id = created(&runtime, "web-1", Some(8080)).await;
        let info = runtime.inspect(&id).await.expect("inspect");
        assert_eq!((info.status, info.name.as_str(), info.image.as_str()), (ContainerStatus::Created, "web-1", IMAGE));
        assert_eq!(info.ports, spec("web-1", Some(8080)).ports);
        assert_eq!(info.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(info.labels.get(LABEL_INSTANCE).map(String::as_str), Some("web-1"), "Diplo's labels are added");
        assert!(info.labels.contains_key(LABEL_DEPLOYMENT));
        assert_eq!(info.started_at, None);
        assert_eq!(runtime.inspect("web-1").await.expect("by name").id, id, "found by name too");

        runtime.start(&id).await.expect("start");
        let running = runtime.inspect(&id).await.expect("inspect");
        assert_eq!(running.status, ContainerStatus::Running);
        assert!(running.started_at.is_some());
        runtime.stop(&id, Duration::from_secs(1)).await.expect("stop");
        assert_eq!(runtime.inspect(&id).await.expect("inspect").status, ContainerStatus::Exited);
        runtime.stop(&id, Duration::from_secs(1)).await.expect("stopping a stopped container is fine");
        runtime.restart(&id, Duration::from_secs(1)).await.expect("restart");
        assert_eq!(runtime.inspect(&id).await.expect("inspect").status, ContainerStatus::Running);
        assert_eq!(runtime.list().await.expect("list").len(), 1);

        let refused = runtime.remove(&id, false).await.expect_err("running");
        assert!(matches!(refused, RuntimeError::Conflict(_)), "{refused:?}");
        runtime.remove(&id, true).await.expect("forced removal");
        assert!(runtime.list().await.expect("list").is_empty());
        assert!(matches!(runtime.inspect(&id).await, Err(RuntimeError::NotFound { what: "container", .. })));
    }

    #[tokio::test]
    async fn errors_match_the_real_drivers() {
        let runtime = FakeRuntime::new(Runtime::Docker);
        for result in [
            runtime.start("nope").await,
            runtime.stop("nope", Duration::ZERO).await,
            runtime.restart("nope", Duration::ZERO).await,
            runtime.remove("nope", true).await,
        ] {
            assert!(matches!(result, Err(RuntimeError::NotFound { what: "container", .. })), "{result:?}");
        }
        assert!(matches!(runtime.exec("nope", &["true".into()]).await, Err(RuntimeError::NotFound { .. })));
        assert!(matches!(runtime.stats("nope").await, Err(RuntimeError::NotFound { .. })));
        assert!(runtime.logs("nope", LogOptions::default()).await.is_err());
        // An image never pulled is not there.
        let missing = runtime.create(&spec("web", None)).await.expect_err("no image");
        assert!(matches!(missing, RuntimeError::NotFound { what: "image", .. }), "{missing:?}");
        created(&runtime, "web", Some(8080)).await;
        let duplicate = runtime.create(&spec("web", None)).await.expect_err("name taken");
        assert!(matches!(&duplicate, RuntimeError::Conflict(m) if m.contains("web")), "{duplicate:?}");
        let bad = runtime.create(&spec("-bad name", None)).await.expect_err("bad name");
        assert!(matches!(bad, RuntimeError::InvalidArgument { field: "name", .. }), "{bad:?}");
        assert!(matches!(runtime.ensure_image("").await, Err(RuntimeError::InvalidArgument { field: "image", .. })));
        // A host port in use by a running container.
        runtime.start("web").await.expect("start");
        let other = created(&runtime, "web-2", Some(8080)).await;
        let taken = runtime.start(&other).await.expect_err("port taken");
        assert!(matches!(&taken, RuntimeError::Conflict(m) if m.contains("8080/tcp")), "{taken:?}");
        assert_eq!(runtime.inspect(&other).await.expect("inspect").status, ContainerStatus::Created);
        // Exec needs a running container and a command.
        assert!(matches!(runtime.exec(&other, &["true".into()]).await, Err(RuntimeError::Conflict(_))));
        assert!(matches!(runtime.exec("web", &[]).await, Err(RuntimeError::InvalidArgument { field: "argv", .. })));
    }

    #[tokio::test]
    async fn exec_logs_and_stats_say_what_was_simulated() {
        let runtime = FakeRuntime::new(Runtime::Lxc);
        let id = created(&runtime, "app", None).await;
        runtime.start(&id).await.expect("start");
        let exec = runtime.exec(&id, &["cat".into(), "/etc/hostname".into()]).await.expect("exec");
        let stdout = String::from_utf8(exec.stdout).expect("utf-8");
        assert_eq!(exec.exit_code, 0);
        assert!(stdout.contains("simulated") && stdout.contains("cat") && stdout.contains("nothing ran"), "{stdout}");
        assert_eq!(runtime.stats(&id).await.expect("stats"), ContainerStats::default(), "nothing runs, nothing is used");

        runtime.stop(&id, Duration::ZERO).await.expect("stop");
        let all = read_all(runtime.logs(&id, LogOptions::default()).await.expect("logs")).await;
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), 3, "{all}");
        assert!(lines[0].contains("created app") && lines[1].contains("started") && lines[2].contains("stopped"), "{all}");
        let tail = read_all(runtime.logs(&id, LogOptions { tail: Some(1), ..LogOptions::default() }).await.expect("logs")).await;
        assert_eq!(tail.lines().count(), 1);
        assert!(tail.contains("stopped"), "{tail}");
        // A followed read of a stopped container ends; of a running one it stays open.
        let followed = LogOptions { follow: true, ..LogOptions::default() };
        assert_eq!(read_all(runtime.logs(&id, followed).await.expect("logs")).await, all);
        runtime.start(&id).await.expect("start");
        let mut open = runtime.logs(&id, followed).await.expect("logs");
        for _ in 0..4 {
            assert!(open.next().await.is_some());
        }
        assert!(tokio::time::timeout(Duration::from_millis(50), open.next()).await.is_err(), "still open while running");
    }

    #[tokio::test]
    async fn start_and_stop_are_announced_as_events() {
        let runtime = FakeRuntime::new(Runtime::Podman);
        let mut events = runtime.events().await.expect("events");
        let id = created(&runtime, "ev", None).await;
        runtime.start(&id).await.expect("start");
        runtime.stop(&id, Duration::ZERO).await.expect("stop");
        for kind in [RuntimeEventKind::Start, RuntimeEventKind::Die] {
            let event = events.next().await.expect("an event").expect("ok");
            assert_eq!(event, RuntimeEvent { container_id: id.clone(), kind });
        }
    }
}
