//! Observing this node's containers from the runtimes' event streams: each runtime's
//! stream tells which container changed, the agent inspects it and queues the change
//! (an upsert or a removal); the session sends only the changes since its last report,
//! coalesced over [`COALESCE`], and the full list at its hello and every
//! [`RESYNC_INTERVAL`], so that nothing an event stream missed stays wrong for long.
//! A runtime whose stream fails or ends is listed in full and subscribed to again with
//! backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diplo_api::container::{ContainerInfo, RuntimeEvent, RuntimeEventKind};
use diplo_api::runtime::Runtime;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::executor::{list_owned, owned_by};
use crate::runtime::{ContainerRuntime, RuntimeError};
use crate::session::Backoff;

/// How often the agent sends its full list of containers, whatever the events said.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);

/// How long changes are gathered before they are sent together: a burst of events (a
/// deployment starting ten containers) makes one heartbeat, and one change reaches the
/// control plane within this much.
pub const COALESCE: Duration = Duration::from_millis(100);

/// A stream that lasted this long before failing counts as healthy: its resubscription
/// starts again from the shortest backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(60);

/// A container as the bookkeeping keys it: its runtime and the runtime's id for it.
pub type ContainerKey = (Runtime, String);

/// What the agent learnt about its containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A container's current state (inspected after an event).
    Upsert(Runtime, ContainerInfo),
    /// A container that is gone from its runtime (or is no longer this node's).
    Gone(Runtime, String),
    /// Every container of one runtime (its full list, after its event stream failed).
    Listed(Runtime, Vec<ContainerInfo>),
}

/// The changes to report: containers whose state is new or changed, and those gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// New or changed states, by runtime then id.
    pub upserted: Vec<(Runtime, ContainerInfo)>,
    /// Containers gone, by runtime then id.
    pub removed: Vec<ContainerKey>,
}

impl Delta {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// The changes to send after `observations` (oldest first), given what was last
/// reported: a state equal to the reported one is no change, a removal of something
/// never reported is none either, and a later observation of a container overrides an
/// earlier one. A [`Observation::Listed`] removes every container of its runtime it
/// does not hold.
pub fn delta(reported: &BTreeMap<ContainerKey, ContainerInfo>, observations: &[Observation]) -> Delta {
    // The latest word on each container touched: its state, or `None` for gone.
    let mut touched: BTreeMap<ContainerKey, Option<ContainerInfo>> = BTreeMap::new();
    for observation in observations {
        match observation {
            Observation::Upsert(runtime, info) => {
                touched.insert((*runtime, info.id.clone()), Some(info.clone()));
            }
            Observation::Gone(runtime, id) => {
                touched.insert((*runtime, id.clone()), None);
            }
            Observation::Listed(runtime, list) => {
                let known: Vec<ContainerKey> =
                    reported.keys().chain(touched.keys()).filter(|(r, _)| r == runtime).cloned().collect::<Vec<_>>();
                for key in known {
                    touched.insert(key, None);
                }
                for info in list {
                    touched.insert((*runtime, info.id.clone()), Some(info.clone()));
                }
            }
        }
    }
    let mut changes = Delta::default();
    for (key, state) in touched {
        match (state, reported.get(&key)) {
            (Some(info), Some(before)) if info == *before => {}
            (Some(info), _) => changes.upserted.push((key.0, info)),
            (None, Some(_)) => changes.removed.push(key),
            (None, None) => {}
        }
    }
    changes
}

/// What was last reported and what was observed since: the session's bookkeeping.
#[derive(Debug, Default)]
pub struct Tracker {
    reported: BTreeMap<ContainerKey, ContainerInfo>,
    pending: Vec<Observation>,
}

impl Tracker {
    /// Queues an observation.
    pub fn observe(&mut self, observation: Observation) {
        self.pending.push(observation);
    }

    /// Whether observations wait to be turned into a report.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The changes since the last report, which count as reported from now on.
    pub fn take_delta(&mut self) -> Delta {
        let changes = delta(&self.reported, &self.pending);
        self.pending.clear();
        for (runtime, info) in &changes.upserted {
            self.reported.insert((*runtime, info.id.clone()), info.clone());
        }
        for key in &changes.removed {
            self.reported.remove(key);
        }
        changes
    }

    /// Records a full list as reported: it supersedes every observation queued before.
    pub fn full(&mut self, containers: &[(Runtime, ContainerInfo)]) {
        self.pending.clear();
        self.reported = containers.iter().map(|(runtime, info)| ((*runtime, info.id.clone()), info.clone())).collect();
    }

    /// How many containers the last report left the control plane with.
    pub fn len(&self) -> usize {
        self.reported.len()
    }

    /// Whether the last report left no container.
    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }
}

/// What an event says about a container of node `node_id`, after inspecting it: its
/// state, or gone when the runtime no longer has it; `None` when it is not this node's
/// or cannot be inspected now (the next full list settles it).
pub async fn observe_event(driver: &dyn ContainerRuntime, node_id: &str, event: &RuntimeEvent) -> Option<Observation> {
    let runtime = driver.runtime();
    if event.kind == RuntimeEventKind::Removed {
        return Some(Observation::Gone(runtime, event.container_id.clone()));
    }
    match driver.inspect(&event.container_id).await {
        Ok(info) if owned_by(&info, node_id) => Some(Observation::Upsert(runtime, info)),
        Ok(_) => None,
        Err(RuntimeError::NotFound { .. }) => Some(Observation::Gone(runtime, event.container_id.clone())),
        Err(err) => {
            tracing::debug!(%runtime, container = %event.container_id, error = %err, "cannot inspect a container after its event");
            None
        }
    }
}

/// Lists one runtime in full and queues it; `false` when the receiver is gone.
async fn send_list(driver: &dyn ContainerRuntime, node_id: &str, tx: &mpsc::Sender<Observation>) -> bool {
    let runtime = driver.runtime();
    match list_owned(driver, node_id).await {
        Ok(list) => tx.send(Observation::Listed(runtime, list)).await.is_ok(),
        Err(err) => {
            tracing::warn!(%runtime, error = %err, "cannot list containers");
            !tx.is_closed()
        }
    }
}

/// Follows one runtime's events for node `node_id` until `tx`'s receiver goes away,
/// queueing what each event says. When the stream cannot be opened, fails or ends, the
/// runtime is listed in full and subscribed to again after a backoff (0.5 s growing to
/// 30 s); once subscribed again it is listed once more, which covers the gap.
pub async fn watch_runtime(driver: Arc<dyn ContainerRuntime>, node_id: String, tx: mpsc::Sender<Observation>) {
    let runtime = driver.runtime();
    let mut backoff = Backoff::default();
    let mut resubscribed = false;
    loop {
        match driver.events().await {
            Ok(mut stream) => {
                let opened = Instant::now();
                if resubscribed {
                    tracing::info!(%runtime, "container events followed again");
                    if !send_list(driver.as_ref(), &node_id, &tx).await {
                        return;
                    }
                }
                let reason = loop {
                    let next = tokio::select! {
                        () = tx.closed() => return,
                        next = stream.next() => next,
                    };
                    match next {
                        Some(Ok(event)) => {
                            if let Some(observation) = observe_event(driver.as_ref(), &node_id, &event).await
                                && tx.send(observation).await.is_err()
                            {
                                return;
                            }
                        }
                        Some(Err(err)) => break err.to_string(),
                        None => break "the stream ended".to_owned(),
                    }
                };
                if opened.elapsed() >= HEALTHY_STREAM {
                    backoff.reset();
                }
                tracing::warn!(%runtime, error = %reason, "container event stream lost; listing in full and subscribing again");
            }
            Err(err) => tracing::warn!(%runtime, error = %err, "cannot follow container events; listing in full and retrying"),
        }
        if !send_list(driver.as_ref(), &node_id, &tx).await {
            return;
        }
        let wait = backoff.next_delay();
        tracing::info!(%runtime, retry_in = ?wait, "subscribing to container events again");
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        resubscribed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diplo_api::container::ContainerStatus;

    fn info(id: &str, status: ContainerStatus) -> ContainerInfo {
        ContainerInfo {
            exit_code: if status == ContainerStatus::Exited { 137 } else { 0 },
            ..ContainerInfo::new(id, format!("n-{id}"), "img", status)
        }
    }

    fn view(entries: &[(Runtime, &str, ContainerStatus)]) -> BTreeMap<ContainerKey, ContainerInfo> {
        entries.iter().map(|(runtime, id, status)| ((*runtime, (*id).to_owned()), info(id, *status))).collect()
    }

    /// A delta in short: `docker/a=Exited` for upserts, `-docker/a` for removals.
    fn short(changes: &Delta) -> Vec<String> {
        let upserts = changes.upserted.iter().map(|(runtime, info)| format!("{runtime}/{}={:?}", info.id, info.status));
        upserts.chain(changes.removed.iter().map(|(runtime, id)| format!("-{runtime}/{id}"))).collect()
    }

    #[test]
    fn observations_become_the_changes_since_the_last_report() {
        use ContainerStatus::{Created, Exited, Running};
        use Observation::{Gone, Listed, Upsert};
        use Runtime::{Docker, Lxc};
        let running = view(&[(Docker, "a", Running), (Docker, "b", Running), (Lxc, "a", Running)]);
        type Case = (&'static str, BTreeMap<ContainerKey, ContainerInfo>, Vec<Observation>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            ("nothing observed", running.clone(), vec![], vec![]),
            ("same state again", running.clone(), vec![Upsert(Docker, info("a", Running))], vec![]),
            ("killed outside Diplo", running.clone(), vec![Upsert(Docker, info("a", Exited))], vec!["docker/a=Exited"]),
            (
                "created then started",
                view(&[]),
                vec![Upsert(Docker, info("c", Created)), Upsert(Docker, info("c", Running))],
                vec!["docker/c=Running"],
            ),
            ("removed", running.clone(), vec![Gone(Docker, "a".into())], vec!["-docker/a"]),
            ("the same id on another runtime stays", running.clone(), vec![Gone(Lxc, "a".into())], vec!["-lxc/a"]),
            ("removal of something never reported", running.clone(), vec![Gone(Docker, "zz".into())], vec![]),
            ("created and removed in between", running.clone(), vec![Upsert(Docker, info("c", Running)), Gone(Docker, "c".into())], vec![]),
            ("exited then removed", running.clone(), vec![Upsert(Docker, info("a", Exited)), Gone(Docker, "a".into())], vec!["-docker/a"]),
            (
                "removed then recreated with the same id",
                running.clone(),
                vec![Gone(Docker, "a".into()), Upsert(Docker, info("a", Created))],
                vec!["docker/a=Created"],
            ),
            (
                "a full list of one runtime",
                running.clone(),
                vec![Listed(Docker, vec![info("b", Running), info("d", Exited)])],
                vec!["docker/d=Exited", "-docker/a"],
            ),
            (
                "a list drops what was upserted before it",
                running.clone(),
                vec![Upsert(Docker, info("e", Running)), Listed(Docker, vec![])],
                vec!["-docker/a", "-docker/b"],
            ),
            (
                "an event after a list wins",
                running.clone(),
                vec![Listed(Lxc, vec![info("a", Running)]), Upsert(Lxc, info("a", Exited))],
                vec!["lxc/a=Exited"],
            ),
        ];
        for (name, reported, observations, expected) in cases {
            assert_eq!(short(&delta(&reported, &observations)), expected, "{name}");
        }
    }

    /// A runtime whose first event stream yields one event then fails, and whose later
    /// streams yield a removal then stay open.
    struct Flaky {
        containers: std::sync::Mutex<Vec<ContainerInfo>>,
        subscriptions: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ContainerRuntime for Flaky {
        fn runtime(&self) -> Runtime {
            Runtime::Docker
        }
        async fn version(&self) -> crate::runtime::RuntimeResult<String> {
            Ok("fake".into())
        }
        async fn ensure_image(&self, _: &str) -> crate::runtime::RuntimeResult<()> {
            Ok(())
        }
        async fn import_image(&self, _: &std::path::Path, _: &str) -> crate::runtime::RuntimeResult<()> {
            Ok(())
        }
        async fn create(&self, _: &diplo_api::container::ContainerSpec) -> crate::runtime::RuntimeResult<String> {
            Err(RuntimeError::Unsupported { runtime: Runtime::Docker, operation: "create" })
        }
        async fn start(&self, _: &str) -> crate::runtime::RuntimeResult<()> {
            Ok(())
        }
        async fn stop(&self, _: &str, _: Duration) -> crate::runtime::RuntimeResult<()> {
            Ok(())
        }
        async fn restart(&self, _: &str, _: Duration) -> crate::runtime::RuntimeResult<()> {
            Ok(())
        }
        async fn remove(&self, _: &str, _: bool) -> crate::runtime::RuntimeResult<()> {
            Ok(())
        }
        async fn list(&self) -> crate::runtime::RuntimeResult<Vec<ContainerInfo>> {
            Ok(self.containers.lock().expect("lock").clone())
        }
        async fn inspect(&self, id: &str) -> crate::runtime::RuntimeResult<ContainerInfo> {
            let found = self.containers.lock().expect("lock").iter().find(|c| c.id == id).cloned();
            found.ok_or_else(|| RuntimeError::NotFound { what: "container", name: id.into() })
        }
        async fn logs(
            &self,
            _: &str,
            _: diplo_api::container::LogOptions,
        ) -> crate::runtime::RuntimeResult<crate::runtime::RuntimeStream<diplo_api::container::LogChunk>> {
            Err(RuntimeError::Unsupported { runtime: Runtime::Docker, operation: "logs" })
        }
        async fn exec(&self, _: &str, _: &[String]) -> crate::runtime::RuntimeResult<diplo_api::container::ExecOutput> {
            Err(RuntimeError::Unsupported { runtime: Runtime::Docker, operation: "exec" })
        }
        async fn stats(&self, _: &str) -> crate::runtime::RuntimeResult<diplo_api::container::ContainerStats> {
            Err(RuntimeError::Unsupported { runtime: Runtime::Docker, operation: "stats" })
        }
        async fn events(&self) -> crate::runtime::RuntimeResult<crate::runtime::RuntimeStream<RuntimeEvent>> {
            let event = |id: &str, kind| Ok(RuntimeEvent { container_id: id.into(), kind });
            if self.subscriptions.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                let failure = Err(RuntimeError::Unavailable { runtime: Runtime::Docker, message: "daemon restarted".into() });
                Ok(Box::pin(futures::stream::iter([event("a", RuntimeEventKind::Die), failure])))
            } else {
                Ok(Box::pin(futures::stream::iter([event("a", RuntimeEventKind::Removed)]).chain(futures::stream::pending())))
            }
        }
    }

    #[tokio::test]
    async fn a_failed_event_stream_falls_back_to_a_full_list_and_is_followed_again() {
        let mut mine = info("a", ContainerStatus::Exited);
        mine.labels.insert(diplo_api::container::LABEL_NODE.into(), "n1".into());
        let mut foreign = info("b", ContainerStatus::Running);
        foreign.labels.insert(diplo_api::container::LABEL_NODE.into(), "n2".into());
        let driver = Arc::new(Flaky { containers: std::sync::Mutex::new(vec![mine.clone(), foreign]), subscriptions: Default::default() });
        let (tx, mut rx) = mpsc::channel(16);
        let watcher = tokio::spawn(watch_runtime(driver.clone(), "n1".into(), tx));
        let mut seen = Vec::new();
        for _ in 0..4 {
            let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("an observation within 5 s");
            seen.push(next.expect("the watcher goes on"));
        }
        let listed = Observation::Listed(Runtime::Docker, vec![mine.clone()]);
        assert_eq!(
            seen,
            [
                Observation::Upsert(Runtime::Docker, mine),
                // The stream failed: a full list (this node's containers only) ...
                listed.clone(),
                // ... and, subscribed again after the backoff, one more for the gap.
                listed,
                Observation::Gone(Runtime::Docker, "a".into()),
            ]
        );
        assert_eq!(driver.subscriptions.load(std::sync::atomic::Ordering::SeqCst), 2);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), watcher).await.expect("the watcher ends with its receiver").expect("no panic");
    }

    #[test]
    fn the_tracker_reports_each_change_once_and_a_full_list_resets_it() {
        let mut tracker = Tracker::default();
        tracker.full(&[(Runtime::Docker, info("a", ContainerStatus::Running))]);
        assert!(tracker.take_delta().is_empty(), "nothing happened");
        tracker.observe(Observation::Upsert(Runtime::Docker, info("a", ContainerStatus::Exited)));
        assert!(tracker.has_pending());
        assert_eq!(short(&tracker.take_delta()), ["docker/a=Exited"]);
        assert!(!tracker.has_pending());
        tracker.observe(Observation::Upsert(Runtime::Docker, info("a", ContainerStatus::Exited)));
        assert!(tracker.take_delta().is_empty(), "reported already");
        tracker.observe(Observation::Gone(Runtime::Docker, "a".into()));
        assert_eq!(short(&tracker.take_delta()), ["-docker/a"]);
        assert!(tracker.is_empty());
        // A full list supersedes what was queued before it.
        tracker.observe(Observation::Upsert(Runtime::Docker, info("b", ContainerStatus::Running)));
        tracker.full(&[(Runtime::Lxc, info("c", ContainerStatus::Running))]);
        assert!(tracker.take_delta().is_empty());
        assert_eq!(tracker.len(), 1);
    }
}
