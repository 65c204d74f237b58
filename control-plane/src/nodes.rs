//! Live node tracking: heartbeats update memory only (nothing in a hot path touches the database); a monitor
//! turns silence into `unhealthy` (3 missed heartbeats) and `down` (past the grace
//! period) and hands the changes to the caller to persist in one batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::model::{NodeStatus, NodeStatusChange, ObservedContainer};

/// Heartbeats a node may miss before it is unhealthy.
pub const MISSED_HEARTBEATS_UNHEALTHY: u32 = 3;

/// The status a node has after `silence` without a heartbeat.
pub fn status_after(silence: Duration, heartbeat_interval: Duration, down_grace: Duration) -> NodeStatus {
    if silence >= down_grace {
        NodeStatus::Down
    } else if silence >= heartbeat_interval * MISSED_HEARTBEATS_UNHEALTHY {
        NodeStatus::Unhealthy
    } else {
        NodeStatus::Ready
    }
}

/// Messages the control plane pushes down a node's session.
pub type Downstream<T> = mpsc::Sender<T>;

struct LiveNode<T> {
    last_seen: Instant,
    last_seen_wall: DateTime<Utc>,
    status: NodeStatus,
    persisted: NodeStatus,
    session: Option<(u64, Downstream<T>)>,
    containers: Vec<ObservedContainer>,
    /// Named volumes per runtime as the node reported them since this process started
    /// (`None`: not yet; the stored fingerprint's list stands).
    volumes: Option<diplo_api::fingerprint::VolumeReport>,
    /// Joined but no session yet: never counted ready before its first hello.
    awaiting_session: bool,
}

/// What the registry knows about one node right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveStatus {
    /// Current status.
    pub status: NodeStatus,
    /// Last heartbeat (wall clock).
    pub last_seen_at: DateTime<Utc>,
    /// A session stream is open.
    pub connected: bool,
}

/// In-memory state of every known node, generic over the downstream message type so
/// that wire types stay in the gRPC adapter.
pub struct NodeRegistry<T> {
    heartbeat_interval: Duration,
    down_grace: Duration,
    nodes: Mutex<HashMap<String, LiveNode<T>>>,
    next_session: std::sync::atomic::AtomicU64,
    /// Bumped, under the `nodes` lock, whenever any node's container list changes.
    containers_version: AtomicU64,
    /// Every container, sorted, as of a version: shared by readers until the next change.
    snapshot: crate::memo::Memo<Vec<(String, ObservedContainer)>>,
}

/// Every observed container with its node id, ordered by node then name; shared, not copied.
pub type SharedContainers = Arc<Vec<(String, ObservedContainer)>>;

impl<T> NodeRegistry<T> {
    /// An empty registry with the cluster's timing settings.
    pub fn new(heartbeat_interval: Duration, down_grace: Duration) -> Self {
        NodeRegistry {
            heartbeat_interval,
            down_grace,
            nodes: Mutex::new(HashMap::new()),
            next_session: std::sync::atomic::AtomicU64::new(1),
            containers_version: AtomicU64::new(0),
            snapshot: crate::memo::Memo::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveNode<T>>> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that a container list changed; called with the `nodes` lock held.
    fn containers_changed(&self) {
        self.containers_version.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts tracking a node as last seen now with a known persisted status. Nodes
    /// loaded at start-up get a full grace period to reconnect.
    pub fn track(&self, node_id: &str, persisted: NodeStatus) {
        self.insert(node_id, persisted, false);
    }

    /// [`NodeRegistry::track`] for a stored node: its grace period starts now, but its
    /// last heartbeat stays the stored `last_seen_at` (what re-joining after an expired
    /// certificate is judged by).
    pub fn track_stored(&self, node_id: &str, persisted: NodeStatus, last_seen_at: DateTime<Utc>) {
        self.insert(node_id, persisted, false);
        if let Some(node) = self.lock().get_mut(node_id) {
            node.last_seen_wall = last_seen_at;
        }
    }

    /// Starts tracking a node that has just joined: `unhealthy` until its session opens
    /// (then `ready`), `down` if it stays silent past the grace period.
    pub fn track_joined(&self, node_id: &str) {
        self.insert(node_id, NodeStatus::Unhealthy, true);
    }

    fn insert(&self, node_id: &str, status: NodeStatus, awaiting_session: bool) {
        let node = LiveNode {
            last_seen: Instant::now(),
            last_seen_wall: Utc::now(),
            status,
            persisted: status,
            session: None,
            containers: Vec::new(),
            volumes: None,
            awaiting_session,
        };
        let mut nodes = self.lock();
        nodes.insert(node_id.to_owned(), node);
        self.containers_changed();
    }

    /// Records an opened session (which also counts as a heartbeat and is persisted by
    /// the caller as `ready`). Returns the session's number; a previous session of the
    /// same node is dropped, which closes its stream.
    /// `None` for a node that is not tracked (removed meanwhile): it gets no session.
    pub fn connect(&self, node_id: &str, downstream: Downstream<T>) -> Option<u64> {
        let session = self.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nodes = self.lock();
        let node = nodes.get_mut(node_id)?;
        node.awaiting_session = false;
        node.last_seen = Instant::now();
        node.last_seen_wall = Utc::now();
        node.status = NodeStatus::Ready;
        node.persisted = NodeStatus::Ready;
        node.session = Some((session, downstream));
        Some(session)
    }

    /// Records a heartbeat. Returns `false` for an unknown node (e.g. removed).
    pub fn heartbeat(&self, node_id: &str) -> bool {
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(node_id) else { return false };
        node.last_seen = Instant::now();
        node.last_seen_wall = Utc::now();
        if !node.awaiting_session {
            node.status = NodeStatus::Ready;
        }
        true
    }

    /// Forgets a session when its stream ends, unless a newer one replaced it.
    pub fn disconnect(&self, node_id: &str, session: u64) {
        if let Some(node) = self.lock().get_mut(node_id)
            && node.session.as_ref().is_some_and(|(id, _)| *id == session)
        {
            node.session = None;
        }
    }

    /// Stops tracking a node; its session stream, if any, is closed.
    pub fn remove(&self, node_id: &str) -> bool {
        let mut nodes = self.lock();
        let removed = nodes.remove(node_id).is_some();
        if removed {
            self.containers_changed();
        }
        removed
    }

    /// Whether the node is tracked (it exists and was not removed).
    pub fn contains(&self, node_id: &str) -> bool {
        self.lock().contains_key(node_id)
    }

    /// The node's live status, `None` when unknown.
    pub fn live_status(&self, node_id: &str) -> Option<LiveStatus> {
        self.lock().get(node_id).map(|node| LiveStatus {
            status: node.status,
            last_seen_at: node.last_seen_wall,
            connected: node.session.is_some(),
        })
    }

    /// The node's open session: its number and downstream channel.
    pub fn session(&self, node_id: &str) -> Option<(u64, Downstream<T>)> {
        self.lock().get(node_id).and_then(|node| node.session.as_ref().map(|(session, tx)| (*session, tx.clone())))
    }

    /// The downstream of every open session.
    pub fn sessions(&self) -> Vec<Downstream<T>> {
        self.lock().values().filter_map(|node| node.session.as_ref().map(|(_, tx)| tx.clone())).collect()
    }

    /// Applies what a node reported about its containers: with `full`, `upserted` replaces
    /// the whole view; otherwise each entry of `upserted` replaces the one of the same
    /// runtime and id (or is added), and each of `removed` is forgotten. Only this node's
    /// view changes. Returns whether anything changed (`false` for an unknown node).
    pub fn apply_report(
        &self,
        node_id: &str,
        full: bool,
        upserted: Vec<ObservedContainer>,
        removed: &[(diplo_api::runtime::Runtime, String)],
    ) -> bool {
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(node_id) else { return false };
        let before = node.containers.clone();
        if full {
            node.containers = upserted;
        } else {
            for container in upserted {
                match node.containers.iter_mut().find(|c| c.runtime == container.runtime && c.info.id == container.info.id) {
                    Some(entry) => *entry = container,
                    None => node.containers.push(container),
                }
            }
            node.containers.retain(|c| !removed.iter().any(|(runtime, id)| c.runtime == *runtime && c.info.id == *id));
        }
        let changed = node.containers != before;
        if changed {
            self.containers_changed();
        }
        changed
    }

    /// Records a node's named volumes: with `full` the report replaces everything known,
    /// otherwise only the runtimes it lists. Returns whether anything changed.
    pub fn set_volumes(&self, node_id: &str, report: diplo_api::fingerprint::VolumeReport, full: bool) -> bool {
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(node_id) else { return false };
        let before = node.volumes.clone();
        let known = node.volumes.get_or_insert_with(Default::default);
        if full {
            *known = report;
        } else {
            known.extend(report);
        }
        node.volumes != before
    }

    /// Changes the known volume names of one runtime of a node after a volume command
    /// succeeded (the node's next report confirms them); the list stays sorted, bounded
    /// and without duplicates.
    pub fn edit_volumes(&self, node_id: &str, runtime: diplo_api::runtime::Runtime, edit: impl FnOnce(&mut Vec<String>)) {
        let mut nodes = self.lock();
        let Some(node) = nodes.get_mut(node_id) else { return };
        let names = node.volumes.get_or_insert_with(Default::default).entry(runtime).or_default();
        edit(names);
        *names = diplo_api::fingerprint::bounded_volume_names(names.iter().map(String::as_str));
    }

    /// A node's named volumes per runtime as last reported, `None` before its first report.
    pub fn volumes(&self, node_id: &str) -> Option<diplo_api::fingerprint::VolumeReport> {
        self.lock().get(node_id).and_then(|node| node.volumes.clone())
    }

    /// Records one container's latest state (after a command), replacing the old entry.
    pub fn upsert_container(&self, node_id: &str, container: ObservedContainer) {
        let mut nodes = self.lock();
        if let Some(node) = nodes.get_mut(node_id) {
            node.containers.retain(|c| c.info.id != container.info.id);
            node.containers.push(container);
            self.containers_changed();
        }
    }

    /// Forgets a removed container.
    pub fn forget_container(&self, node_id: &str, container_id: &str) {
        let mut nodes = self.lock();
        if let Some(node) = nodes.get_mut(node_id) {
            let before = node.containers.len();
            node.containers.retain(|c| c.info.id != container_id);
            if node.containers.len() != before {
                self.containers_changed();
            }
        }
    }

    /// Every observed container with its node id, ordered by node then name (a copy).
    pub fn containers(&self) -> Vec<(String, ObservedContainer)> {
        self.shared_containers().as_ref().clone()
    }

    /// A number that changes whenever any node's container list changes: what was read
    /// from [`NodeRegistry::shared_containers`] after seeing version `v` is at least as
    /// new as `v`.
    pub fn containers_version(&self) -> u64 {
        self.containers_version.load(Ordering::Acquire)
    }

    /// Every observed container with its node id, ordered by node then name; built once
    /// per change and shared by every reader until the next one.
    pub fn shared_containers(&self) -> SharedContainers {
        // The version is read with the lock held: nothing changes between it and the copy.
        let nodes = self.lock();
        self.snapshot.get_or_build(self.containers_version(), || {
            let mut all: Vec<(String, ObservedContainer)> =
                nodes.iter().flat_map(|(id, node)| node.containers.iter().map(move |c| (id.clone(), c.clone()))).collect();
            all.sort_by(|a, b| (&a.0, &a.1.info.name).cmp(&(&b.0, &b.1.info.name)));
            all
        })
    }

    /// Records that `changes` were written to the store: [`NodeRegistry::tick`] reports
    /// them no more.
    pub fn mark_persisted(&self, changes: &[NodeStatusChange]) {
        let mut nodes = self.lock();
        for change in changes {
            if let Some(node) = nodes.get_mut(&change.node_id) {
                node.persisted = change.status;
            }
        }
    }

    /// Re-evaluates every node at `now` and returns the statuses that differ from the
    /// persisted ones: a change is reported again at every tick until
    /// [`NodeRegistry::mark_persisted`] records it written (a failed write is retried).
    pub fn tick(&self, now: Instant) -> Vec<NodeStatusChange> {
        let mut changes = Vec::new();
        for (id, node) in self.lock().iter_mut() {
            let mut status = status_after(now.saturating_duration_since(node.last_seen), self.heartbeat_interval, self.down_grace);
            if node.awaiting_session && status == NodeStatus::Ready {
                status = NodeStatus::Unhealthy;
            }
            node.status = status;
            if node.status != node.persisted {
                changes.push(NodeStatusChange { node_id: id.clone(), status: node.status, last_seen_at: node.last_seen_wall });
            }
        }
        changes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        changes
    }

    /// Every tracked node's status and whether it has a session open (for metrics).
    pub fn census(&self) -> Vec<(NodeStatus, bool)> {
        self.lock().values().map(|node| (node.status, node.session.is_some())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(5);
    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn silence_turns_ready_into_unhealthy_then_down() {
        assert_eq!(status_after(Duration::from_secs(0), HB, GRACE), NodeStatus::Ready);
        assert_eq!(status_after(Duration::from_secs(14), HB, GRACE), NodeStatus::Ready);
        assert_eq!(status_after(Duration::from_secs(15), HB, GRACE), NodeStatus::Unhealthy);
        assert_eq!(status_after(Duration::from_secs(29), HB, GRACE), NodeStatus::Unhealthy);
        assert_eq!(status_after(Duration::from_secs(30), HB, GRACE), NodeStatus::Down);
        // A grace shorter than three heartbeats goes straight to down.
        assert_eq!(status_after(Duration::from_secs(10), HB, Duration::from_secs(8)), NodeStatus::Down);
    }

    #[test]
    fn tick_reports_each_change_once_and_a_heartbeat_revives() {
        let registry: NodeRegistry<()> = NodeRegistry::new(HB, GRACE);
        registry.track("n1", NodeStatus::Ready);
        let start = Instant::now();
        assert!(registry.tick(start).is_empty());
        let changes = registry.tick(start + Duration::from_secs(16));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].status, NodeStatus::Unhealthy);
        registry.mark_persisted(&changes);
        assert!(registry.tick(start + Duration::from_secs(17)).is_empty(), "reported once");
        let down = registry.tick(start + Duration::from_secs(31));
        assert_eq!(down[0].status, NodeStatus::Down);
        registry.mark_persisted(&down);
        assert!(registry.heartbeat("n1"));
        let revived = registry.tick(Instant::now());
        assert_eq!(revived[0].status, NodeStatus::Ready);
        assert!(!registry.heartbeat("unknown"));
    }

    #[test]
    fn a_change_whose_write_failed_is_reported_again_until_persisted() {
        let registry: NodeRegistry<()> = NodeRegistry::new(HB, GRACE);
        registry.track("n1", NodeStatus::Ready);
        let start = Instant::now();
        let changes = registry.tick(start + Duration::from_secs(16));
        assert_eq!(changes.len(), 1);
        // The write of that batch failed: nothing marked persisted, the next tick retries.
        let again = registry.tick(start + Duration::from_secs(17));
        assert_eq!(again, changes, "a change not persisted is reported again");
        // The status moved on meanwhile: the newest one is reported.
        let newer = registry.tick(start + Duration::from_secs(31));
        assert_eq!(newer[0].status, NodeStatus::Down);
        registry.mark_persisted(&newer);
        assert!(registry.tick(start + Duration::from_secs(32)).is_empty(), "persisted: reported no more");
    }

    #[test]
    fn a_stored_node_keeps_its_last_heartbeat_but_gets_a_full_grace_period() {
        let registry: NodeRegistry<()> = NodeRegistry::new(HB, GRACE);
        let long_ago = Utc::now() - chrono::Duration::days(3);
        registry.track_stored("n1", NodeStatus::Ready, long_ago);
        assert_eq!(registry.live_status("n1").expect("known").last_seen_at, long_ago);
        assert!(registry.tick(Instant::now()).is_empty(), "not down at once after a restart");
    }

    #[test]
    fn a_joined_node_is_not_ready_before_its_session() {
        let registry: NodeRegistry<()> = NodeRegistry::new(HB, GRACE);
        registry.track_joined("n1");
        let start = Instant::now();
        assert!(registry.tick(start).is_empty(), "stays unhealthy, no change");
        assert_eq!(registry.live_status("n1").expect("known").status, NodeStatus::Unhealthy);
        assert_eq!(registry.tick(start + GRACE)[0].status, NodeStatus::Down);
        let (tx, _rx) = mpsc::channel(1);
        registry.connect("n1", tx);
        assert_eq!(registry.live_status("n1").expect("known").status, NodeStatus::Ready);
    }

    fn observed(runtime: diplo_api::runtime::Runtime, id: &str, status: diplo_api::container::ContainerStatus) -> ObservedContainer {
        ObservedContainer { runtime, info: diplo_api::container::ContainerInfo::new(id, id, "img", status) }
    }

    #[test]
    fn volume_reports_replace_per_runtime_and_commands_edit_them() {
        use diplo_api::runtime::Runtime::{Containerd, Docker};
        let registry: NodeRegistry<()> = NodeRegistry::new(Duration::from_secs(1), Duration::from_secs(30));
        registry.track("n1", NodeStatus::Ready);
        assert_eq!(registry.volumes("n1"), None, "nothing reported yet");
        let hello = [(Docker, vec!["a".to_owned()]), (Containerd, vec!["c".to_owned()])].into();
        assert!(registry.set_volumes("n1", hello, true));
        assert!(!registry.set_volumes("n1", [(Docker, vec!["a".to_owned()])].into(), false), "the same list changes nothing");
        assert!(registry.set_volumes("n1", [(Docker, vec!["b".to_owned()])].into(), false));
        let known = registry.volumes("n1").expect("reported");
        assert_eq!((known[&Docker].as_slice(), known[&Containerd].as_slice()), (&["b".to_owned()][..], &["c".to_owned()][..]));
        registry.edit_volumes("n1", Containerd, |names| names.extend(["d".to_owned(), "../x".to_owned(), "c".to_owned()]));
        assert_eq!(registry.volumes("n1").expect("known")[&Containerd], ["c", "d"], "checked, sorted, once");
        assert!(registry.set_volumes("n1", Default::default(), true), "a full report replaces all");
        assert_eq!(registry.volumes("n1"), Some(Default::default()));
        assert!(!registry.set_volumes("unknown", Default::default(), true));
    }

    #[test]
    fn reports_upsert_and_forget_by_runtime_and_id_and_a_full_list_replaces() {
        use diplo_api::container::ContainerStatus::{Exited, Running};
        use diplo_api::runtime::Runtime::{Docker, Lxc};
        let registry: NodeRegistry<()> = NodeRegistry::new(HB, GRACE);
        registry.track("n1", NodeStatus::Ready);
        registry.track("n2", NodeStatus::Ready);
        let view = |node: &str| {
            let mut all: Vec<(String, String, String)> = registry
                .containers()
                .into_iter()
                .filter(|(n, _)| n == node)
                .map(|(_, c)| (c.runtime.to_string(), c.info.id, format!("{:?}", c.info.status)))
                .collect();
            all.sort();
            all
        };
        let row = |runtime: &str, id: &str, status: &str| (runtime.to_owned(), id.to_owned(), status.to_owned());
        assert!(registry.apply_report("n1", true, vec![observed(Docker, "a", Running), observed(Lxc, "a", Running)], &[]));
        assert!(registry.apply_report("n2", true, vec![observed(Docker, "b", Running)], &[]));
        assert!(!registry.apply_report("n1", false, vec![observed(Docker, "a", Running)], &[]), "the same state changes nothing");
        assert!(!registry.apply_report("n1", false, Vec::new(), &[]), "an idle heartbeat changes nothing");
        assert!(registry.apply_report("n1", false, vec![observed(Docker, "a", Exited), observed(Docker, "c", Running)], &[]));
        assert_eq!(view("n1"), [row("docker", "a", "Exited"), row("docker", "c", "Running"), row("lxc", "a", "Running")]);
        // A removal names a runtime and an id: the LXC container of the same id stays.
        assert!(registry.apply_report("n1", false, Vec::new(), &[(Docker, "a".into())]));
        assert_eq!(view("n1"), [row("docker", "c", "Running"), row("lxc", "a", "Running")]);
        // A node removes only from its own view.
        assert!(!registry.apply_report("n1", false, Vec::new(), &[(Docker, "b".into())]));
        assert_eq!(view("n2"), [row("docker", "b", "Running")]);
        // A full list replaces, an empty one clears.
        assert!(registry.apply_report("n1", true, vec![observed(Lxc, "z", Exited)], &[]));
        assert_eq!(view("n1"), [row("lxc", "z", "Exited")]);
        assert!(!registry.apply_report("n1", true, vec![observed(Lxc, "z", Exited)], &[]));
        assert!(registry.apply_report("n1", true, Vec::new(), &[]));
        assert!(view("n1").is_empty());
        assert!(!registry.apply_report("unknown", true, vec![observed(Docker, "x", Running)], &[]));
    }

    #[test]
    fn the_container_version_moves_with_every_change_and_only_then() {
        use diplo_api::container::ContainerStatus::{Exited, Running};
        use diplo_api::runtime::Runtime::Docker;
        let registry: NodeRegistry<()> = NodeRegistry::new(HB, GRACE);
        registry.track("n1", NodeStatus::Ready);
        // Each step: what it does, and whether the list may have changed.
        type Step = Box<dyn Fn(&NodeRegistry<()>)>;
        let report = |status| {
            move |r: &NodeRegistry<()>| {
                r.apply_report("n1", true, vec![observed(Docker, "a", status)], &[]);
            }
        };
        let steps: Vec<(&str, Step, bool)> = vec![
            ("a report with a new container", Box::new(report(Running)), true),
            ("the same report", Box::new(report(Running)), false),
            ("an idle heartbeat", Box::new(|r| assert!(r.heartbeat("n1"))), false),
            ("a status change", Box::new(report(Exited)), true),
            ("an upsert after a command", Box::new(|r| r.upsert_container("n1", observed(Docker, "b", Running))), true),
            ("forgetting an unknown container", Box::new(|r| r.forget_container("n1", "zzz")), false),
            ("forgetting a known one", Box::new(|r| r.forget_container("n1", "b")), true),
            ("a node joining", Box::new(|r| r.track_joined("n2")), true),
            ("removing an unknown node", Box::new(|r| assert!(!r.remove("n9"))), false),
            ("removing a node", Box::new(|r| assert!(r.remove("n1"))), true),
        ];
        for (what, step, changes) in steps {
            let (version, before) = (registry.containers_version(), registry.shared_containers());
            step(&registry);
            let after = registry.shared_containers();
            assert_eq!(registry.containers_version() != version, changes, "{what}: version");
            // Unchanged: readers share one copy; changed: they get a new one.
            assert_eq!(!Arc::ptr_eq(&before, &after), changes, "{what}: shared list");
            assert_eq!(*after, registry.containers(), "{what}: the shared list is the list");
        }
    }

    #[tokio::test]
    async fn removal_closes_the_session_and_stale_disconnects_are_ignored() {
        let registry: NodeRegistry<u8> = NodeRegistry::new(HB, GRACE);
        registry.track("n1", NodeStatus::Ready);
        let (tx1, mut rx1) = mpsc::channel(1);
        let first = registry.connect("n1", tx1).expect("tracked");
        let (tx2, mut rx2) = mpsc::channel(1);
        registry.connect("n1", tx2);
        assert_eq!(rx1.recv().await, None, "replaced session is closed");
        registry.disconnect("n1", first);
        assert!(registry.live_status("n1").expect("known").connected);
        assert!(registry.remove("n1"));
        assert_eq!(rx2.recv().await, None, "removed node's session is closed");
        assert!(!registry.contains("n1"));
        let (tx3, _rx3) = mpsc::channel(1);
        assert_eq!(registry.connect("n1", tx3), None, "a removed node gets no session");
    }
}
