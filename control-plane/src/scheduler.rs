//! The scheduler: which nodes run a deployment's new replicas.
//!
//! [`place`] is a pure function: no I/O, no clock, no randomness,
//! and its answer depends only on its arguments. It takes its own input types, filled by the
//! caller from the store's view of the cluster, never wire types.
//!
//! # How a replica is placed
//!
//! 1. **Filter.** A node is eligible when it is ready and not cordoned, matches the
//!    constraints (node id or name, os, arch, and every label among those an admin gave
//!    the node: what a node reports about itself never counts), offers a runtime (the
//!    forced one, or any runtime its platform accepts), runs an os/arch the image is built for
//!    (when the image's platforms are known), has the CPU and memory free (a capacity of 0
//!    means unknown and is not checked) and has every requested host port free.
//!    **Named volumes are sticky**: a volume is data on one node, so when a requested volume
//!    exists on some node (ready or not), only the nodes holding every such volume are
//!    eligible, under a runtime that holds them (a forced runtime that does not is refused).
//!    A volume whose node is down makes the placement wait (the reason says so) rather
//!    than start elsewhere on an empty volume. A volume no node has yet is created where
//!    the first replica lands, and every further replica of the call follows it to that
//!    node (like Compose on one host). Replicas already running with the volumes hold new
//!    ones to their node in the same way, even when another node has a volume of the same
//!    name: placing replicas one at a time gives what placing them together gives.
//! 2. **Score** (integers only, higher is better), a weighted sum whose terms are bounded so
//!    that anti-affinity outweighs everything else, and runtime preference everything below it;
//!    image locality, fit and load are traded against each other:
//!    * anti-affinity: [`ANTI_AFFINITY`] per instance of the same deployment already on the
//!      node (including replicas placed earlier in the same call), so replicas spread over
//!      distinct nodes whenever enough nodes fit;
//!    * runtime preference: [`RUNTIME_RANK`] per step the chosen runtime sits below the top
//!      of the node platform's preference order (0 for every node when the runtime is forced);
//!    * image locality: [`IMAGE_LOCAL`] when the node already holds the image;
//!    * fit: utilization after placement in basis points (mean of CPU and memory, 0..=10 000):
//!      binpack adds it (fill busy nodes first), spread adds its complement (emptiest first);
//!    * load: how many deployments run on the node (capped at 1 000), added by binpack and
//!      subtracted by spread, which mostly breaks ties when requests ask for no resources.
//! 3. **Tie-break** by node name, then id: the lexicographically smaller wins. Node ids are
//!    unique, so the result does not depend on the order of `nodes`.
//!
//! Replicas are placed one at a time; after each, the chosen node's usage, ports and instance
//! count are updated. Only that node's score changes, so after one O(nodes) pass each further
//! replica costs O(log nodes) (a binary heap).
//!
//! The pass is memory-bound (each node's strings, sets and maps live on the heap), so it
//! touches as little as it can. A node's platform (its class, whether the constraints and the
//! image accept it, its preferred runtime for each set of available runtimes) is worked out
//! once per distinct (os, arch, Pi) in the call. The image and instance look-ups, which walk
//! B-trees of strings, are deferred: every node first gets an upper bound (image present if it
//! holds any, no instances), and only nodes whose bound beats the best exact score are looked
//! up, which gives the same result as scoring every node exactly. Placing one replica keeps
//! only the best node so far. Rejection reasons are only rendered when a placement fails.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};
use std::fmt;

use diplo_api::container::Protocol;
use diplo_api::runtime::{PlatformClass, Runtime};

use crate::model::{Constraints, Strategy};

/// Score penalty per instance of the same deployment already on a node.
pub const ANTI_AFFINITY: i64 = 1_000_000;
/// Score penalty per step below the platform's most preferred runtime.
pub const RUNTIME_RANK: i64 = 100_000;
/// Score bonus when the node already holds the image.
pub const IMAGE_LOCAL: i64 = 2_000;
/// Utilization of a full node, in basis points.
const FULL: u64 = 10_000;
/// Instance counts above this no longer change the load term.
const LOAD_CAP: u64 = 1_000;

/// A node as the scheduler sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCandidate {
    /// Stable node id.
    pub id: String,
    /// Node name (unique in practice; ties are broken by id).
    pub name: String,
    /// OS family (`linux`, `darwin`).
    pub os: String,
    /// Architecture, Go/OCI spelling (`amd64`, `arm64`, `arm`); `uname -m` spellings work too.
    pub arch: String,
    /// Whether the node is a Raspberry Pi.
    pub raspberry_pi: bool,
    /// Heartbeats arrive on time.
    pub ready: bool,
    /// Operators asked that nothing new lands here.
    pub cordoned: bool,
    /// Labels an admin gave the node (its join token's): the only labels a
    /// `labels` constraint matches. A node's own report must not attract workloads (and
    /// their environment) meant for nodes an admin vouched for.
    pub labels: BTreeMap<String, String>,
    /// Labels the node reports about itself: never matched, only named in refusals so that
    /// an operator sees why a node that claims a label does not get the workload.
    pub reported_labels: BTreeMap<String, String>,
    /// Runtimes probed as available on the node.
    pub runtimes: Vec<Runtime>,
    /// CPU capacity in millicores (CPUs × 1000); 0 means unknown, not checked.
    pub cpu_millis: u64,
    /// Memory capacity in bytes; 0 means unknown, not checked.
    pub memory_bytes: u64,
    /// CPU already reserved by instances on the node, in millicores.
    pub used_cpu_millis: u64,
    /// Memory already reserved by instances on the node, in bytes.
    pub used_memory_bytes: u64,
    /// Host ports already bound on the node. (A hash set: `Protocol` is not `Ord`. Only
    /// membership is used, so its iteration order cannot leak into results.)
    pub used_ports: HashSet<(u16, Protocol)>,
    /// Image references present on the node (for locality).
    pub images: BTreeSet<String>,
    /// Running instances per deployment id.
    pub instances: BTreeMap<String, u32>,
    /// Named volumes on the node, per runtime (reported by the node, plus those of the
    /// instances placed there).
    pub volumes: BTreeMap<Runtime, BTreeSet<String>>,
}

/// What to place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlacementRequest {
    /// The deployment the replicas belong to (for anti-affinity).
    pub deployment_id: String,
    /// Replicas to place now.
    pub count: u32,
    /// Image reference (for locality).
    pub image: String,
    /// The `(os, arch)` pairs the image is built for; `None`: unknown, not filtered.
    pub image_platforms: Option<Vec<(String, String)>>,
    /// Forced runtime; `None`: each node's preferred one.
    pub runtime: Option<Runtime>,
    /// Where replicas may run.
    pub constraints: Constraints,
    /// CPU reserved per replica, in millicores.
    pub cpu_millis: u64,
    /// Memory reserved per replica, in bytes.
    pub memory_bytes: u64,
    /// Host ports each replica binds (port 0 binds an ephemeral port and is not reserved).
    pub ports: Vec<(u16, Protocol)>,
    /// Binpack or spread.
    pub strategy: Strategy,
    /// Named volumes each replica mounts (sticky: see the module docs).
    pub volumes: Vec<String>,
}

/// One replica's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The node that runs it.
    pub node_id: String,
    /// The runtime it runs under.
    pub runtime: Runtime,
}

/// Not every replica could be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoFit {
    /// The replicas that were placed, in order.
    pub placed: Vec<Placement>,
    /// Why each node refused the next replica (`"n2: host port 8080/tcp in use"`), one per
    /// node, sorted by node name then id.
    pub reasons: Vec<String>,
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no node fits (placed {} replica(s) first)", self.placed.len())?;
        if !self.reasons.is_empty() {
            write!(f, ": {}", self.reasons.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for NoFit {}

/// Places `request.count` replicas on `nodes`. Returns one [`Placement`] per replica, in
/// placement order, or [`NoFit`] with the replicas that did fit and why every node refused
/// the next one. Deterministic, and independent of the order of `nodes` (given unique ids).
pub fn place(nodes: &[NodeCandidate], request: &PlacementRequest) -> Result<Vec<Placement>, NoFit> {
    if request.count == 0 {
        return Ok(Vec::new());
    }
    let ctx = Context::new(request, nodes);
    let mut memo = PlatformMemo::default();
    if request.count == 1 {
        return place_one(nodes, &ctx, &mut memo);
    }
    let mut entries: Vec<Entry<'_>> = Vec::with_capacity(nodes.len());
    entries.extend(nodes.iter().filter_map(|node| ctx.admit(&mut memo, node).ok()));

    let count = request.count as usize;
    let mut placed = Vec::with_capacity(count.min(entries.len().max(1)).min(1024));
    let mut heap: BinaryHeap<Key<'_>> =
        entries.iter().enumerate().filter(|(_, entry)| ctx.refusal(entry).is_none()).map(|(slot, entry)| entry.key(slot, &ctx)).collect();
    // Keys are exact or (not yet looked up) upper bounds. A popped bound is looked up and
    // goes back exact; a popped exact key beats every other node's bound, so it is the
    // best. Only the chosen node's score changes, so every other key stays valid.
    while placed.len() < count {
        let Some(key) = heap.pop() else { break };
        let entry = &mut entries[key.slot];
        // Replicas sharing a new volume follow the first one: other nodes drop out.
        if ctx.follows_volume(entry) {
            continue;
        }
        if !entry.looked_up {
            entry.look_up(&ctx);
            heap.push(entry.key(key.slot, &ctx));
            continue;
        }
        placed.push(ctx.commit(entry));
        if ctx.refusal(entry).is_none() {
            heap.push(entry.key(key.slot, &ctx));
        }
    }

    if placed.len() == count {
        return Ok(placed);
    }
    Err(NoFit { placed, reasons: ctx.reasons(nodes, &entries) })
}

/// One replica: a single pass keeping the best node so far, no entries stored and no heap.
/// A node is only looked up when its upper bound beats the best exact key so far.
fn place_one(nodes: &[NodeCandidate], ctx: &Context<'_>, memo: &mut PlatformMemo) -> Result<Vec<Placement>, NoFit> {
    let mut best: Option<(Key<'_>, Entry<'_>)> = None;
    for (slot, node) in nodes.iter().enumerate() {
        let Ok(mut entry) = ctx.admit(memo, node) else { continue };
        if ctx.refusal(&entry).is_some() {
            continue;
        }
        if let Some((best, _)) = &best {
            let bound = entry.score(ctx);
            if bound < best.score || (bound == best.score && entry.key_with(bound, slot) <= *best) {
                continue;
            }
        }
        entry.look_up(ctx);
        let key = entry.key(slot, ctx);
        if best.as_ref().is_none_or(|(best, _)| key > *best) {
            best = Some((key, entry));
        }
    }
    match best {
        Some((_, mut entry)) => Ok(vec![ctx.commit(&mut entry)]),
        None => Err(NoFit { placed: Vec::new(), reasons: ctx.reasons(nodes, &[]) }),
    }
}

/// The request, digested once per call.
struct Context<'r> {
    request: &'r PlacementRequest,
    /// Normalized os constraint.
    os: Option<&'r str>,
    /// Normalized arch constraint.
    arch: Option<&'r str>,
    /// Normalized image platforms; `None`: not filtered.
    platforms: Option<Vec<(&'r str, &'r str)>>,
    /// Reserved host ports (non-zero), without duplicates.
    ports: Vec<(u16, Protocol)>,
    /// A host port the request lists twice: it can never fit.
    duplicate_port: Option<(u16, Protocol)>,
    /// The requested volumes that exist on some node, each with the names of the nodes
    /// holding it and whether each is ready: only those nodes are eligible.
    homes: Vec<(&'r str, Vec<(String, bool)>)>,
    /// Once a replica of a request with volumes landed: its node's id and name, where every
    /// further replica of the call goes.
    stuck: std::cell::RefCell<Option<(String, String)>>,
}

/// An eligible node and its usage as replicas land on it during this call.
struct Entry<'a> {
    node: &'a NodeCandidate,
    runtime: Runtime,
    /// The runtime rank penalty: what does not change during the call.
    base: i64,
    used_cpu: u64,
    used_memory: u64,
    /// Replicas placed here in this call.
    placed: u32,
    /// Whether `local` and `existing` were looked up (in the node's image set and instance
    /// map, the costly part of scoring). Until then [`Entry::score`] is an upper bound.
    looked_up: bool,
    /// The node holds the image.
    local: bool,
    /// Instances of this deployment on the node before the call.
    existing: u64,
}

/// Why a node refuses a replica. Rendered into text only when placement fails.
enum Refusal<'a> {
    NotReady,
    Cordoned,
    NotTheNode(&'a str),
    Os(&'a str),
    Arch(&'a str),
    Label {
        key: &'a str,
        want: &'a str,
    },
    RuntimeMissing(Runtime),
    NoRuntime,
    ImagePlatform,
    DuplicatePort(u16, Protocol),
    PortInUse(u16, Protocol),
    PortTakenNow(u16, Protocol),
    Cpu {
        free: u64,
    },
    Memory {
        free: u64,
    },
    /// The node lacks this existing volume (under any runtime it may use).
    VolumeElsewhere(&'a str),
    /// The forced runtime does not hold this volume on the node.
    VolumeRuntime(&'a str, Runtime),
    /// An earlier replica of the call created the volumes on another node.
    FollowsVolume,
}

impl<'r> Context<'r> {
    fn new(request: &'r PlacementRequest, nodes: &[NodeCandidate]) -> Self {
        let constraints = &request.constraints;
        let non_empty = |value: &'r Option<String>| value.as_deref().filter(|value| !value.is_empty());
        let platforms = request
            .image_platforms
            .as_ref()
            .filter(|platforms| !platforms.is_empty())
            .map(|platforms| platforms.iter().map(|(os, arch)| (normalize_os(os), normalize_arch(arch))).collect());
        let mut ports: Vec<(u16, Protocol)> = Vec::with_capacity(request.ports.len());
        let mut duplicate_port = None;
        for &port in request.ports.iter().filter(|(number, _)| *number != 0) {
            if ports.contains(&port) {
                duplicate_port.get_or_insert(port);
            } else {
                ports.push(port);
            }
        }
        let mut homes: Vec<(&'r str, Vec<(String, bool)>)> = Vec::new();
        for volume in &request.volumes {
            if homes.iter().any(|(seen, _)| *seen == volume.as_str()) {
                continue;
            }
            let mut holders: Vec<(String, bool)> = nodes
                .iter()
                .filter(|node| node.volumes.values().any(|names| names.contains(volume.as_str())))
                .map(|node| (if node.name.is_empty() { node.id.clone() } else { node.name.clone() }, node.ready))
                .collect();
            if !holders.is_empty() {
                holders.sort();
                homes.push((volume.as_str(), holders));
            }
        }
        // Replicas already running with the volumes hold the others to their node (the node
        // with the most of them, then the smallest id): a volume's data is on one node, even
        // when another node has a volume of the same name.
        let stuck = if request.volumes.is_empty() {
            None
        } else {
            nodes
                .iter()
                .filter(|node| node.instances.get(&request.deployment_id).is_some_and(|count| *count > 0))
                .filter(|node| homes.iter().all(|(volume, _)| node.volumes.values().any(|names| names.contains(*volume))))
                .max_by(|a, b| a.instances[&request.deployment_id].cmp(&b.instances[&request.deployment_id]).then_with(|| b.id.cmp(&a.id)))
                .map(|node| (node.id.clone(), node.name.clone()))
        };
        Context {
            request,
            os: non_empty(&constraints.os).map(normalize_os),
            arch: non_empty(&constraints.arch).map(normalize_arch),
            platforms,
            ports,
            duplicate_port,
            homes,
            stuck: std::cell::RefCell::new(stuck),
        }
    }

    /// Whether `node` holds every existing requested volume under `runtime`.
    fn holds_volumes(&self, node: &NodeCandidate, runtime: Runtime) -> bool {
        self.homes.iter().all(|(volume, _)| node.volumes.get(&runtime).is_some_and(|names| names.contains(*volume)))
    }

    /// The first existing requested volume the node lacks under every runtime.
    fn missing_volume(&self, node: &NodeCandidate) -> Option<&'r str> {
        self.homes.iter().map(|(volume, _)| *volume).find(|volume| !node.volumes.values().any(|names| names.contains(*volume)))
    }

    /// Whether an earlier replica of this call took the request's volumes to another node.
    fn follows_volume(&self, entry: &Entry<'_>) -> bool {
        self.stuck.borrow().as_ref().is_some_and(|(id, _)| *id != entry.node.id)
    }

    /// The runtime to use on `node` for the request's volumes, when `chosen` does not
    /// hold them: the first of the platform's order (then the node's) that does.
    fn volume_runtime(&self, node: &NodeCandidate, class: PlatformClass, chosen: (Runtime, i64)) -> Result<(Runtime, i64), Refusal<'r>> {
        if self.homes.is_empty() || self.holds_volumes(node, chosen.0) {
            return Ok(chosen);
        }
        if let Some(volume) = self.missing_volume(node) {
            return Err(Refusal::VolumeElsewhere(volume));
        }
        if let Some(forced) = self.request.runtime {
            let volume =
                self.homes.iter().map(|(volume, _)| *volume).find(|volume| !node.volumes.get(&forced).is_some_and(|n| n.contains(*volume)));
            return Err(Refusal::VolumeRuntime(volume.unwrap_or_default(), forced));
        }
        let preference = class.preference();
        preference
            .iter()
            .chain(node.runtimes.iter())
            .copied()
            .find(|&runtime| node.runtimes.contains(&runtime) && self.holds_volumes(node, runtime))
            .map(|runtime| (runtime, preference.iter().position(|&r| r == runtime).unwrap_or(0) as i64))
            .ok_or_else(|| Refusal::VolumeElsewhere(self.homes[0].0))
    }

    fn constraints(&self) -> &'r Constraints {
        &self.request.constraints
    }

    /// What a node's os, arch and Raspberry Pi flag imply for this request.
    fn platform(&self, node: &NodeCandidate) -> Platform {
        let os = normalize_os(&node.os);
        let arch = normalize_arch(&node.arch);
        let class = PlatformClass::of(&node.os, &node.arch, node.raspberry_pi);
        // The preferred runtime and its rank for every set of available runtimes.
        let choice = std::array::from_fn(|available| {
            let mut runtimes = [Runtime::Docker; Runtime::ALL.len()];
            let mut count = 0;
            for runtime in Runtime::ALL.into_iter().filter(|&runtime| available & 1 << runtime as usize != 0) {
                runtimes[count] = runtime;
                count += 1;
            }
            let runtime = class.preferred(&runtimes[..count])?;
            let rank = class.preference().iter().position(|&r| r == runtime).unwrap_or(0);
            Some((runtime, rank as u8))
        });
        Platform {
            class,
            choice,
            os_ok: self.os.is_none_or(|want| want == os),
            arch_ok: self.arch.is_none_or(|want| want == arch),
            image_ok: self.platforms.as_ref().is_none_or(|platforms| platforms.contains(&(os, arch))),
        }
    }

    /// The checks that do not change during the call; on success, the node's entry.
    fn admit<'a>(&self, memo: &mut PlatformMemo, node: &'a NodeCandidate) -> Result<Entry<'a>, Refusal<'r>> {
        if !node.ready {
            return Err(Refusal::NotReady);
        }
        if node.cordoned {
            return Err(Refusal::Cordoned);
        }
        let constraints = self.constraints();
        if let Some(want) = constraints.node.as_deref().filter(|want| !want.is_empty())
            && want != node.id
            && want != node.name
        {
            return Err(Refusal::NotTheNode(want));
        }
        let platform = memo.get(node, || self.platform(node));
        if let (Some(want), false) = (self.os, platform.os_ok) {
            return Err(Refusal::Os(want));
        }
        if let (Some(want), false) = (self.arch, platform.arch_ok) {
            return Err(Refusal::Arch(want));
        }
        for (key, want) in &constraints.labels {
            if node.labels.get(key) != Some(want) {
                return Err(Refusal::Label { key, want });
            }
        }
        let (runtime, rank) = match self.request.runtime {
            Some(forced) if node.runtimes.contains(&forced) => (forced, 0),
            Some(forced) => return Err(Refusal::RuntimeMissing(forced)),
            // "Anything else": the first available, in the node's order.
            None if platform.class == PlatformClass::Other => match node.runtimes.first() {
                Some(&runtime) => (runtime, 0),
                None => return Err(Refusal::NoRuntime),
            },
            None => {
                let available = node.runtimes.iter().fold(0usize, |set, &runtime| set | 1 << runtime as usize);
                match platform.choice[available] {
                    Some((runtime, rank)) => (runtime, i64::from(rank)),
                    None => return Err(Refusal::NoRuntime),
                }
            }
        };
        let (runtime, rank) = self.volume_runtime(node, platform.class, (runtime, rank))?;
        if !platform.image_ok {
            return Err(Refusal::ImagePlatform);
        }
        if let Some((number, protocol)) = self.duplicate_port {
            return Err(Refusal::DuplicatePort(number, protocol));
        }
        if !self.ports.is_empty() && self.port_in_use(node) {
            // Report the first requested port in use, whatever the set's iteration order.
            if let Some(&(number, protocol)) = self.ports.iter().find(|port| node.used_ports.contains(port)) {
                return Err(Refusal::PortInUse(number, protocol));
            }
        }
        Ok(Entry {
            node,
            runtime,
            base: -RUNTIME_RANK * rank,
            used_cpu: node.used_cpu_millis,
            used_memory: node.used_memory_bytes,
            placed: 0,
            // Nothing to look up in empty sets: the bound is exact.
            looked_up: node.images.is_empty() && node.instances.is_empty(),
            local: false,
            existing: 0,
        })
    }

    /// Whether any requested host port is bound on the node. Nodes bind few ports, and
    /// scanning a small set beats hashing every requested port (SipHash is not cheap).
    fn port_in_use(&self, node: &NodeCandidate) -> bool {
        let used = &node.used_ports;
        if used.len() <= 8 { used.iter().any(|port| self.ports.contains(port)) } else { self.ports.iter().any(|port| used.contains(port)) }
    }

    /// The checks that change as replicas land: resources and ports taken in this call.
    fn refusal(&self, entry: &Entry<'_>) -> Option<Refusal<'r>> {
        let node = entry.node;
        let request = self.request;
        if self.follows_volume(entry) {
            return Some(Refusal::FollowsVolume);
        }
        if node.cpu_millis != 0 && node.cpu_millis.saturating_sub(entry.used_cpu) < request.cpu_millis {
            return Some(Refusal::Cpu { free: node.cpu_millis.saturating_sub(entry.used_cpu) });
        }
        if node.memory_bytes != 0 && node.memory_bytes.saturating_sub(entry.used_memory) < request.memory_bytes {
            return Some(Refusal::Memory { free: node.memory_bytes.saturating_sub(entry.used_memory) });
        }
        if entry.placed > 0
            && let Some(&(number, protocol)) = self.ports.first()
        {
            return Some(Refusal::PortTakenNow(number, protocol));
        }
        None
    }

    /// Whether the node may hold the image, without looking: an upper bound for locality.
    fn may_be_local(&self, node: &NodeCandidate) -> bool {
        !self.request.image.is_empty() && !node.images.is_empty()
    }

    /// Places one replica on `entry`, which fits and was looked up.
    fn commit(&self, entry: &mut Entry<'_>) -> Placement {
        debug_assert!(entry.looked_up);
        entry.used_cpu = entry.used_cpu.saturating_add(self.request.cpu_millis);
        entry.used_memory = entry.used_memory.saturating_add(self.request.memory_bytes);
        entry.placed += 1;
        if !self.request.volumes.is_empty() {
            self.stuck.borrow_mut().get_or_insert_with(|| (entry.node.id.clone(), entry.node.name.clone()));
        }
        Placement { node_id: entry.node.id.clone(), runtime: entry.runtime }
    }

    /// One line per node explaining why it takes no further replica, sorted by name then id.
    fn reasons(&self, nodes: &[NodeCandidate], entries: &[Entry<'_>]) -> Vec<String> {
        if nodes.is_empty() {
            return vec!["no nodes in the cluster".to_owned()];
        }
        // Entries were built from `nodes` in order, so one cursor pairs them up.
        let mut memo = PlatformMemo::default();
        let mut next = 0;
        let mut lines: Vec<(&str, &str, String)> = Vec::new();
        for node in nodes {
            let refusal = match entries.get(next) {
                Some(entry) if std::ptr::eq(entry.node, node) => {
                    next += 1;
                    self.refusal(entry)
                }
                // Not among `entries`: refused outright, or eligible with nothing placed.
                _ => match self.admit(&mut memo, node) {
                    Err(refusal) => Some(refusal),
                    Ok(fresh) => self.refusal(&fresh),
                },
            };
            if let Some(refusal) = refusal {
                let name = if node.name.is_empty() { &node.id } else { &node.name };
                lines.push((&node.name, &node.id, format!("{name}: {}", self.explain(node, &refusal))));
            }
        }
        lines.sort();
        lines.into_iter().map(|(_, _, line)| line).collect()
    }

    fn explain(&self, node: &NodeCandidate, refusal: &Refusal<'_>) -> String {
        let request = self.request;
        match *refusal {
            Refusal::NotReady => match self.homes.iter().find(|(volume, _)| node.volumes.values().any(|names| names.contains(*volume))) {
                Some((volume, _)) => format!("not ready; volume {volume:?} lives on this node, so the placement waits for it"),
                None => "not ready".to_owned(),
            },
            Refusal::Cordoned => "cordoned".to_owned(),
            Refusal::NotTheNode(want) => format!("not node {want:?} (constraint)"),
            Refusal::Os(want) => format!("os is {}, constraint wants {want}", node.os),
            Refusal::Arch(want) => format!("arch is {}, constraint wants {want}", node.arch),
            Refusal::Label { key, want } => match (node.labels.get(key), node.reported_labels.get(key)) {
                (Some(have), _) => format!("label {key}={have}, constraint wants {key}={want}"),
                (None, Some(reported)) => {
                    format!("missing label {key}={want} (the node reports {key}={reported} itself; only labels an admin set count)")
                }
                (None, None) => format!("missing label {key}={want}"),
            },
            Refusal::RuntimeMissing(runtime) => {
                format!("runtime {runtime} not available (has {})", runtime_list(&node.runtimes))
            }
            Refusal::NoRuntime => {
                format!("no usable runtime for {}/{} (has {})", node.os, node.arch, runtime_list(&node.runtimes))
            }
            Refusal::ImagePlatform => {
                let platforms = request.image_platforms.as_deref().unwrap_or_default();
                let list: Vec<String> = platforms.iter().map(|(os, arch)| format!("{os}/{arch}")).collect();
                format!("image is {} only, node is {}/{}", list.join(", "), node.os, node.arch)
            }
            Refusal::DuplicatePort(number, protocol) => {
                format!("request binds host port {number}/{} twice", protocol_name(protocol))
            }
            Refusal::PortInUse(number, protocol) => {
                format!("host port {number}/{} in use", protocol_name(protocol))
            }
            Refusal::PortTakenNow(number, protocol) => {
                format!("host port {number}/{} in use (by a replica placed now)", protocol_name(protocol))
            }
            Refusal::Cpu { free } => {
                format!("not enough cpu: need {}m, {free}m free", request.cpu_millis)
            }
            Refusal::Memory { free } => {
                format!("not enough memory: need {}, {} free", bytes(request.memory_bytes), bytes(free))
            }
            Refusal::VolumeElsewhere(volume) => {
                let holders =
                    self.homes.iter().find(|(name, _)| *name == volume).map(|(_, holders)| holders.as_slice()).unwrap_or_default();
                let list: Vec<String> =
                    holders.iter().map(|(name, ready)| if *ready { name.clone() } else { format!("{name} (not ready)") }).collect();
                format!("the data of volume {volume:?} lives on node {}", list.join(", "))
            }
            Refusal::VolumeRuntime(volume, runtime) => {
                let on: Vec<&str> =
                    node.volumes.iter().filter(|(_, names)| names.contains(volume)).map(|(runtime, _)| runtime.name()).collect();
                format!("volume {volume:?} lives here under {}, not {runtime}", on.join(", "))
            }
            Refusal::FollowsVolume => {
                let stuck = self.stuck.borrow();
                let name = stuck.as_ref().map_or("", |(id, name)| if name.is_empty() { id } else { name });
                format!("replicas sharing named volumes stay together on node {name}")
            }
        }
    }
}

impl<'a> Entry<'a> {
    /// Looks the image and this deployment's instances up on the node.
    fn look_up(&mut self, ctx: &Context<'_>) {
        if self.looked_up {
            return;
        }
        let request = ctx.request;
        self.local = ctx.may_be_local(self.node) && self.node.images.contains(request.image.as_str());
        self.existing = self.node.instances.get(request.deployment_id.as_str()).map_or(0, |&n| u64::from(n));
        self.looked_up = true;
    }

    /// The node's score for the next replica; an upper bound of it until [`Entry::look_up`]
    /// (the image counted as present if the node holds any image, no instances counted).
    fn score(&self, ctx: &Context<'_>) -> i64 {
        let request = ctx.request;
        let (local, existing) = if self.looked_up { (self.local, self.existing) } else { (ctx.may_be_local(self.node), 0) };
        // Deployments on the node, counting this one once replicas land here. Before a
        // look-up nothing has landed (`commit` needs one), so this is exact either way.
        let load = self.node.instances.len() as u64 + u64::from(self.placed > 0 && existing == 0);
        let cpu = utilization(self.used_cpu.saturating_add(request.cpu_millis), self.node.cpu_millis);
        let memory = utilization(self.used_memory.saturating_add(request.memory_bytes), self.node.memory_bytes);
        let used = match (cpu, memory) {
            (Some(cpu), Some(memory)) => (cpu + memory) / 2,
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => FULL / 2,
        };
        let load = load.min(LOAD_CAP) as i64;
        let fit = match request.strategy {
            Strategy::Binpack => used as i64 + load,
            Strategy::Spread => (FULL - used) as i64 - load,
        };
        let instances = existing + u64::from(self.placed);
        let local = if local { IMAGE_LOCAL } else { 0 };
        self.base + local + fit - ANTI_AFFINITY.saturating_mul(instances.min(1 << 40) as i64)
    }

    fn key(&self, slot: usize, ctx: &Context<'_>) -> Key<'a> {
        self.key_with(self.score(ctx), slot)
    }

    fn key_with(&self, score: i64, slot: usize) -> Key<'a> {
        Key { score, name: &self.node.name, id: &self.node.id, slot }
    }
}

/// What a node's platform implies for the request at hand.
#[derive(Clone, Copy)]
struct Platform {
    class: PlatformClass,
    /// The preferred runtime and its rank in the platform's order, indexed by the set of
    /// available runtimes (bit `runtime as usize`). Unused for [`PlatformClass::Other`], whose
    /// choice depends on the order runtimes are listed in.
    choice: [Option<(Runtime, u8)>; 1 << Runtime::ALL.len()],
    /// The os constraint (if any) accepts it.
    os_ok: bool,
    /// The arch constraint (if any) accepts it.
    arch_ok: bool,
    /// The image (if its platforms are known) is built for it.
    image_ok: bool,
}

/// Remembers [`Platform`]s for the call. Clusters run a handful of distinct platforms, so
/// after the first node of each, a node's platform costs two integer compares (os and arch
/// packed into integers) instead of a dozen string matches and normalizations.
#[derive(Default)]
struct PlatformMemo {
    seen: Vec<(u128, u128, bool, Platform)>,
}

impl PlatformMemo {
    /// Distinct platforms remembered; more are computed each time (still correct, slower).
    const CAPACITY: usize = 16;

    fn get(&mut self, node: &NodeCandidate, compute: impl FnOnce() -> Platform) -> Platform {
        let (Some(os), Some(arch)) = (pack(&node.os), pack(&node.arch)) else { return compute() };
        let key = (os, arch, node.raspberry_pi);
        if let Some(&(_, _, _, platform)) = self.seen.iter().find(|seen| (seen.0, seen.1, seen.2) == key) {
            return platform;
        }
        let platform = compute();
        if self.seen.len() < Self::CAPACITY {
            self.seen.push((os, arch, node.raspberry_pi, platform));
        }
        platform
    }
}

/// A string of at most 15 bytes as an integer (its length, then its bytes), so that equal
/// strings and only they give equal integers; `None` for longer strings.
fn pack(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() > 15 {
        return None;
    }
    Some(bytes.iter().fold(bytes.len() as u128, |packed, &byte| (packed << 8) | u128::from(byte)))
}

/// A node's rank for the next replica: the greatest key wins.
#[derive(PartialEq, Eq)]
struct Key<'a> {
    score: i64,
    name: &'a str,
    id: &'a str,
    slot: usize,
}

impl Ord for Key<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .cmp(&other.score)
            // Smaller name, then smaller id, wins ties.
            .then_with(|| other.name.cmp(self.name))
            .then_with(|| other.id.cmp(self.id))
            .then_with(|| other.slot.cmp(&self.slot))
    }
}

impl PartialOrd for Key<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `used / capacity` in basis points (capped at full); `None` when the capacity is unknown.
fn utilization(used: u64, capacity: u64) -> Option<u64> {
    if capacity == 0 {
        return None;
    }
    let ratio = match used.checked_mul(FULL) {
        Some(scaled) => scaled / capacity,
        None => used / (capacity / FULL).max(1),
    };
    Some(ratio.min(FULL))
}

/// OS spellings that mean the same thing.
fn normalize_os(os: &str) -> &str {
    match os {
        "macos" | "osx" => "darwin",
        other => other,
    }
}

/// `uname -m` spellings to Go/OCI ones.
fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" | "x64" => "amd64",
        "aarch64" | "arm64v8" => "arm64",
        "armv7l" | "armv6l" | "armhf" | "armel" | "armv7" | "armv6" => "arm",
        "i386" | "i686" => "386",
        other => other,
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn runtime_list(runtimes: &[Runtime]) -> String {
    if runtimes.is_empty() {
        return "none".to_owned();
    }
    runtimes.iter().map(|runtime| runtime.name()).collect::<Vec<_>>().join(", ")
}

/// Bytes in binary units with one decimal (`1.5GiB`, `512MiB`, `100B`).
fn bytes(value: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if value >= size {
            let tenths = (u128::from(value) * 10 / u128::from(size)) as u64;
            return if tenths.is_multiple_of(10) {
                format!("{}{unit}", tenths / 10)
            } else {
                format!("{}.{}{unit}", tenths / 10, tenths % 10)
            };
        }
    }
    format!("{value}B")
}

/// A node as the choice of a builder sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuilderCandidate {
    /// Stable node id.
    pub id: String,
    /// Node name (a preferred node may be named by id or name).
    pub name: String,
    /// OS family (`linux`).
    pub os: String,
    /// Architecture, Go/OCI spelling (`uname -m` spellings work too).
    pub arch: String,
    /// Heartbeats arrive on time.
    pub ready: bool,
    /// Operators asked that nothing new lands here.
    pub cordoned: bool,
    /// Image builders the node offers.
    pub builders: Vec<diplo_api::build::Builder>,
}

/// Chooses the node and builder for a build: among ready, uncordoned nodes that offer
/// a builder and run `platform` (`(os, arch)`, when given), `prefer_node` (id or name)
/// wins when it is one of them; then the best builder (Docker, then Podman, then
/// Buildah), then the fewest builds running (`running`, by node id), then the lowest
/// id. Pure: the answer depends only on the arguments, not on their order. The error
/// says why no node fits.
pub fn pick_builder(
    nodes: &[BuilderCandidate],
    platform: Option<(&str, &str)>,
    prefer_node: Option<&str>,
    running: &BTreeMap<String, u32>,
) -> Result<(String, diplo_api::build::Builder), String> {
    use diplo_api::build::Builder;
    let best_builder = |node: &BuilderCandidate| Builder::ALL.into_iter().find(|b| node.builders.contains(b));
    let on_platform = |node: &BuilderCandidate| {
        platform.is_none_or(|(os, arch)| normalize_os(&node.os) == normalize_os(os) && normalize_arch(&node.arch) == normalize_arch(arch))
    };
    let usable = |node: &&BuilderCandidate| node.ready && !node.cordoned;
    let best = nodes
        .iter()
        .filter(usable)
        .filter(|node| on_platform(node))
        .filter_map(|node| best_builder(node).map(|builder| (node, builder)))
        .min_by(|(a, builder_a), (b, builder_b)| {
            let preferred = |node: &BuilderCandidate| !prefer_node.is_some_and(|p| p == node.id || p == node.name);
            let load = |node: &BuilderCandidate| running.get(&node.id).copied().unwrap_or(0);
            (preferred(a), builder_a, load(a), &a.id).cmp(&(preferred(b), builder_b, load(b), &b.id))
        });
    if let Some((node, builder)) = best {
        return Ok((node.id.clone(), builder));
    }
    let with_builder: Vec<&BuilderCandidate> = nodes.iter().filter(|node| !node.builders.is_empty()).collect();
    if with_builder.is_empty() {
        return Err(format!(
            "no node has an image builder (docker, podman or buildah) among {} node(s): install one on a node or build elsewhere",
            nodes.len()
        ));
    }
    let usable_builders: Vec<&BuilderCandidate> = with_builder.iter().copied().filter(usable).collect();
    if usable_builders.is_empty() {
        let down = with_builder.iter().filter(|node| !node.ready).count();
        let cordoned = with_builder.iter().filter(|node| node.ready && node.cordoned).count();
        return Err(format!(
            "no ready node with an image builder: of {} node(s) with one, {down} not ready and {cordoned} cordoned",
            with_builder.len()
        ));
    }
    let (os, arch) = platform.unwrap_or_default();
    let offered: BTreeSet<String> =
        usable_builders.iter().map(|node| format!("{}/{}", normalize_os(&node.os), normalize_arch(&node.arch))).collect();
    Err(format!(
        "no ready node with an image builder runs {os}/{arch} (builders run on {})",
        offered.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Strategy;
    use Runtime::*;
    use proptest::prelude::*;
    use proptest::strategy::Strategy as _;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn node(name: &str, arch: &str, runtimes: &[Runtime]) -> NodeCandidate {
        NodeCandidate {
            id: format!("id-{name}"),
            name: name.to_owned(),
            os: "linux".to_owned(),
            arch: arch.to_owned(),
            ready: true,
            runtimes: runtimes.to_vec(),
            cpu_millis: 4_000,
            memory_bytes: 8 * GIB,
            ..NodeCandidate::default()
        }
    }

    fn request(count: u32) -> PlacementRequest {
        PlacementRequest { deployment_id: "dep".to_owned(), count, image: "nginx:1.27".to_owned(), ..PlacementRequest::default() }
    }

    fn on(placements: &[Placement]) -> Vec<&str> {
        placements.iter().map(|placement| placement.node_id.as_str()).collect()
    }

    fn with_volume(mut node: NodeCandidate, runtime: Runtime, volume: &str) -> NodeCandidate {
        node.volumes.entry(runtime).or_default().insert(volume.to_owned());
        node
    }

    /// `count` replicas mounting `volumes`, spread (the emptiest node first).
    fn wanting(count: u32, volumes: &[&str]) -> PlacementRequest {
        PlacementRequest { volumes: volumes.iter().map(|v| (*v).to_owned()).collect(), strategy: Strategy::Spread, ..request(count) }
    }

    #[test]
    fn a_named_volume_pins_placement_to_its_node_and_runtime() {
        // b is fuller than a, and holds the volume under lxc only: the replica goes to b, on lxc.
        let a = node("a", "amd64", &[Docker, Lxc]);
        let b = NodeCandidate { used_cpu_millis: 3_000, ..with_volume(node("b", "amd64", &[Docker, Lxc]), Lxc, "data") };
        let nodes = [a.clone(), b.clone()];
        let placed = place(&nodes, &wanting(1, &["data"])).expect("placed");
        assert_eq!(placed, [Placement { node_id: "id-b".into(), runtime: Lxc }]);
        // Without the volume, the emptier a wins on its preferred runtime.
        assert_eq!(place(&nodes, &wanting(1, &[])).expect("placed"), [Placement { node_id: "id-a".into(), runtime: Docker }]);
        // A forced runtime that does not hold the volume is refused, naming both.
        let refused = place(&nodes, &PlacementRequest { runtime: Some(Docker), ..wanting(1, &["data"]) }).expect_err("refused");
        assert_eq!(
            refused.reasons,
            ["a: the data of volume \"data\" lives on node b", "b: volume \"data\" lives here under lxc, not docker"],
        );
        // Replicas all follow the volume, even with anti-affinity.
        let placed = place(&nodes, &wanting(3, &["data"])).expect("placed");
        assert_eq!(on(&placed), ["id-b", "id-b", "id-b"]);
    }

    #[test]
    fn a_new_volume_is_created_where_the_first_replica_lands_and_the_others_follow() {
        let nodes = [node("a", "amd64", &[Docker]), node("b", "amd64", &[Docker]), node("c", "amd64", &[Docker])];
        let placed = place(&nodes, &wanting(3, &["fresh"])).expect("placed");
        assert_eq!(on(&placed), ["id-a", "id-a", "id-a"], "all replicas with the volume on one node");
        // When the first node has no room for the others, they wait rather than split.
        let tight: Vec<NodeCandidate> = nodes.iter().map(|n| NodeCandidate { cpu_millis: 1_000, ..n.clone() }).collect();
        let no_fit = place(&tight, &PlacementRequest { cpu_millis: 600, ..wanting(2, &["fresh"]) }).expect_err("no room");
        assert_eq!(on(&no_fit.placed), ["id-a"]);
        assert_eq!(no_fit.reasons.len(), 3);
        assert!(no_fit.reasons[1].contains("stay together on node a"), "{:?}", no_fit.reasons);
    }

    #[test]
    fn replicas_already_running_with_a_volume_hold_the_others_to_their_node() {
        // Both nodes have a volume named "data" (two different data sets); the deployment
        // runs on b: a new replica joins it there even though a is emptier.
        let a = with_volume(node("a", "amd64", &[Podman]), Podman, "data");
        let mut b = NodeCandidate { used_cpu_millis: 3_000, ..with_volume(node("b", "amd64", &[Podman]), Podman, "data") };
        b.instances.insert("dep".to_owned(), 1);
        let placed = place(&[a.clone(), b.clone()], &wanting(1, &["data"])).expect("placed");
        assert_eq!(on(&placed), ["id-b"]);
        // No room left there: it waits, saying where its replicas are, rather than split.
        let full = NodeCandidate { used_cpu_millis: 4_000, ..b.clone() };
        let no_fit = place(&[a.clone(), full], &PlacementRequest { cpu_millis: 500, ..wanting(1, &["data"]) }).expect_err("no room");
        assert!(no_fit.reasons.iter().any(|r| r.contains("stay together on node b")), "{:?}", no_fit.reasons);
        // Without running replicas, the emptier holder wins.
        assert_eq!(on(&place(&[a, NodeCandidate { instances: BTreeMap::new(), ..b }], &wanting(1, &["data"])).expect("placed")), ["id-a"]);
    }

    #[test]
    fn a_volume_on_a_down_node_makes_the_placement_wait_and_says_why() {
        let down = NodeCandidate { ready: false, ..with_volume(node("b", "amd64", &[Docker]), Docker, "data") };
        let nodes = [node("a", "amd64", &[Docker]), down];
        let no_fit = place(&nodes, &wanting(1, &["data"])).expect_err("waits");
        assert_eq!(
            no_fit.reasons,
            [
                "a: the data of volume \"data\" lives on node b (not ready)",
                "b: not ready; volume \"data\" lives on this node, so the placement waits for it"
            ],
        );
        // Two volumes living on different nodes can never be mounted together.
        let split = [with_volume(node("a", "amd64", &[Docker]), Docker, "one"), with_volume(node("b", "amd64", &[Docker]), Docker, "two")];
        let no_fit = place(&split, &wanting(1, &["one", "two"])).expect_err("split");
        assert_eq!(no_fit.reasons, ["a: the data of volume \"two\" lives on node b", "b: the data of volume \"one\" lives on node a"]);
    }

    #[test]
    fn each_node_gets_its_platforms_preferred_runtime() {
        let arm = node("arm", "arm64", &[Docker, Lxc, Containerd]);
        let x86 = node("x86", "amd64", &[Lxc, Podman, Docker]);
        let pi = NodeCandidate { raspberry_pi: true, ..node("pi", "arm", &[Podman, Lxc]) };
        let mac = NodeCandidate { os: "darwin".to_owned(), ..node("mac", "arm64", &[Lxc, Containerd]) };
        let uname = node("uname", "aarch64", &[Docker, Lxc]);
        for (candidate, want) in [(arm, Lxc), (x86, Docker), (pi, Lxc), (mac, Containerd), (uname, Lxc)] {
            let placed = place(std::slice::from_ref(&candidate), &request(1)).unwrap();
            assert_eq!(placed, vec![Placement { node_id: candidate.id.clone(), runtime: want }], "{}", candidate.name);
        }
        // Several nodes at once: each replica runs under its own node's preference.
        let nodes = [node("a", "arm64", &[Docker, Lxc]), node("b", "amd64", &[Lxc, Docker])];
        let mut placed = place(&nodes, &request(2)).unwrap();
        placed.sort_by(|x, y| x.node_id.cmp(&y.node_id));
        assert_eq!(placed[0], Placement { node_id: "id-a".to_owned(), runtime: Lxc });
        assert_eq!(placed[1], Placement { node_id: "id-b".to_owned(), runtime: Docker });
    }

    #[test]
    fn nodes_with_the_platforms_first_choice_win_over_lesser_runtimes() {
        // Binpack prefers the busier node, but it only offers Podman (x86 rank 2).
        let busy = NodeCandidate { used_cpu_millis: 3_000, ..node("busy", "amd64", &[Podman]) };
        let idle = node("idle", "amd64", &[Docker]);
        let placed = place(&[busy, idle], &request(1)).unwrap();
        assert_eq!(placed, vec![Placement { node_id: "id-idle".to_owned(), runtime: Docker }]);
        // Even one step down (Docker on ARM), a full node holding the image loses to an empty one.
        let mut full = NodeCandidate {
            used_cpu_millis: 3_900,
            used_memory_bytes: 8 * GIB - 1,
            instances: BTreeMap::from([("other".to_owned(), 9)]),
            ..node("full", "arm64", &[Docker])
        };
        full.images.insert("nginx:1.27".to_owned());
        let empty = node("empty", "arm64", &[Lxc]);
        let placed = place(&[full, empty], &PlacementRequest { cpu_millis: 100, ..request(1) }).unwrap();
        assert_eq!(placed, vec![Placement { node_id: "id-empty".to_owned(), runtime: Lxc }]);
    }

    #[test]
    fn a_forced_runtime_limits_nodes_and_says_so_when_none_offers_it() {
        let nodes = [node("a", "amd64", &[Docker]), node("b", "arm64", &[Lxc, Podman])];
        let forced = PlacementRequest { runtime: Some(Podman), ..request(1) };
        let placed = place(&nodes, &forced).unwrap();
        assert_eq!(placed, vec![Placement { node_id: "id-b".to_owned(), runtime: Podman }]);

        let forced = PlacementRequest { runtime: Some(Containerd), ..request(1) };
        let no_fit = place(&nodes, &forced).unwrap_err();
        assert!(no_fit.placed.is_empty());
        assert_eq!(
            no_fit.reasons,
            vec!["a: runtime containerd not available (has docker)", "b: runtime containerd not available (has lxc, podman)",]
        );
        assert!(no_fit.to_string().contains("runtime containerd not available"), "{no_fit}");
    }

    #[test]
    fn nodes_without_a_usable_runtime_are_skipped() {
        let nodes = [node("none", "amd64", &[]), NodeCandidate { os: "darwin".to_owned(), ..node("mac", "arm64", &[Lxc]) }];
        let no_fit = place(&nodes, &request(1)).unwrap_err();
        assert_eq!(
            no_fit.reasons,
            vec!["mac: no usable runtime for darwin/arm64 (has lxc)", "none: no usable runtime for linux/amd64 (has none)"]
        );
    }

    #[test]
    fn constraints_select_nodes() {
        let mut eu = node("eu-1", "amd64", &[Docker]);
        eu.labels.insert("zone".to_owned(), "eu".to_owned());
        eu.labels.insert("disk".to_owned(), "ssd".to_owned());
        let mut us = node("us-1", "amd64", &[Docker]);
        us.labels.insert("zone".to_owned(), "us".to_owned());
        let pi = NodeCandidate { raspberry_pi: true, ..node("pi", "arm64", &[Lxc]) };
        let nodes = [eu, us, pi];
        let with = |constraints: Constraints| PlacementRequest { constraints, ..request(1) };
        let run = |constraints: Constraints| on(&place(&nodes, &with(constraints)).unwrap()).join(",");

        assert_eq!(run(Constraints { node: Some("us-1".to_owned()), ..Constraints::default() }), "id-us-1");
        assert_eq!(run(Constraints { node: Some("id-pi".to_owned()), ..Constraints::default() }), "id-pi");
        assert_eq!(run(Constraints { arch: Some("arm64".to_owned()), ..Constraints::default() }), "id-pi");
        assert_eq!(run(Constraints { arch: Some("aarch64".to_owned()), ..Constraints::default() }), "id-pi");
        let labels = BTreeMap::from([("zone".to_owned(), "eu".to_owned()), ("disk".to_owned(), "ssd".to_owned())]);
        assert_eq!(run(Constraints { labels, ..Constraints::default() }), "id-eu-1");

        let labels = BTreeMap::from([("zone".to_owned(), "eu".to_owned())]);
        let no_fit = place(&nodes, &with(Constraints { labels, os: Some("linux".to_owned()), arch: Some("arm64".to_owned()), node: None }))
            .unwrap_err();
        assert_eq!(
            no_fit.reasons,
            vec!["eu-1: arch is amd64, constraint wants arm64", "pi: missing label zone=eu", "us-1: arch is amd64, constraint wants arm64",]
        );
        let no_fit = place(&nodes, &with(Constraints { os: Some("darwin".to_owned()), ..Constraints::default() })).unwrap_err();
        assert_eq!(no_fit.reasons[0], "eu-1: os is linux, constraint wants darwin");
        let no_fit = place(&nodes, &with(Constraints { node: Some("nope".to_owned()), ..Constraints::default() })).unwrap_err();
        assert_eq!(no_fit.reasons[1], "pi: not node \"nope\" (constraint)");
        let labels = BTreeMap::from([("zone".to_owned(), "eu".to_owned())]);
        let only_us = [nodes[1].clone()];
        let no_fit = place(&only_us, &with(Constraints { labels, ..Constraints::default() })).unwrap_err();
        assert_eq!(no_fit.reasons, vec!["us-1: label zone=us, constraint wants zone=eu"]);
    }

    #[test]
    fn label_constraints_match_admin_set_labels_only() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        type Pairs = &'static [(&'static str, &'static str)];
        // (admin-set labels, labels the node reports, constraint, Ok: placed / Err: the reason)
        let cases: [(Pairs, Pairs, Pairs, Result<(), &str>); 7] = [
            (&[("zone", "secure")], &[], &[("zone", "secure")], Ok(())),
            (&[("zone", "secure")], &[("zone", "public")], &[("zone", "secure")], Ok(())),
            (&[], &[], &[], Ok(())),
            (
                &[],
                &[("zone", "secure")],
                &[("zone", "secure")],
                Err("n: missing label zone=secure (the node reports zone=secure itself; only labels an admin set count)"),
            ),
            (
                &[("zone", "public")],
                &[("zone", "secure")],
                &[("zone", "secure")],
                Err("n: label zone=public, constraint wants zone=secure"),
            ),
            (
                &[("zone", "secure")],
                &[("disk", "ssd")],
                &[("zone", "secure"), ("disk", "ssd")],
                Err("n: missing label disk=ssd (the node reports disk=ssd itself; only labels an admin set count)"),
            ),
            (
                &[],
                &[("os", "linux")],
                &[("os", "linux")],
                Err("n: missing label os=linux (the node reports os=linux itself; only labels an admin set count)"),
            ),
        ];
        for (admin, reported, wanted, expected) in cases {
            let candidate = NodeCandidate { labels: labels(admin), reported_labels: labels(reported), ..node("n", "amd64", &[Docker]) };
            let constraints = Constraints { labels: labels(wanted), ..Constraints::default() };
            let got = place(&[candidate], &PlacementRequest { constraints, ..request(1) });
            match expected {
                Ok(()) => assert_eq!(on(&got.expect("placed")), vec!["id-n"], "{admin:?} {reported:?} {wanted:?}"),
                Err(reason) => assert_eq!(got.expect_err("refused").reasons, vec![reason], "{admin:?} {reported:?} {wanted:?}"),
            }
        }
        // The fingerprint's facts stay matchable by their own keys.
        let arm = NodeCandidate { reported_labels: labels(&[("zone", "secure")]), ..node("arm", "arm64", &[Docker]) };
        let constraints = Constraints { os: Some("linux".to_owned()), arch: Some("arm64".to_owned()), ..Constraints::default() };
        assert_eq!(on(&place(&[arm], &PlacementRequest { constraints, ..request(1) }).unwrap()), vec!["id-arm"]);
    }

    #[test]
    fn image_platforms_filter_nodes_when_known() {
        let nodes = [node("arm", "arm64", &[Lxc]), node("x86", "x86_64", &[Docker])];
        let amd64_only = PlacementRequest {
            image_platforms: Some(vec![("linux".to_owned(), "amd64".to_owned())]),
            ports: vec![(80, Protocol::Tcp)],
            ..request(2)
        };
        let no_fit = place(&nodes, &amd64_only).unwrap_err();
        assert_eq!(on(&no_fit.placed), vec!["id-x86"]);
        assert_eq!(no_fit.reasons[0], "arm: image is linux/amd64 only, node is linux/arm64");
        // Unknown platforms filter nothing.
        assert_eq!(place(&nodes, &request(2)).unwrap().len(), 2);
    }

    #[test]
    fn host_ports_are_never_taken_twice() {
        let mut busy = node("busy", "amd64", &[Docker]);
        busy.used_ports.insert((8080, Protocol::Tcp));
        let nodes = [busy, node("free-1", "amd64", &[Docker]), node("free-2", "amd64", &[Docker])];
        let web = PlacementRequest { ports: vec![(8080, Protocol::Tcp)], ..request(3) };
        let no_fit = place(&nodes, &web).unwrap_err();
        let mut placed = on(&no_fit.placed);
        placed.sort_unstable();
        assert_eq!(placed, vec!["id-free-1", "id-free-2"]);
        assert_eq!(
            no_fit.reasons,
            vec![
                "busy: host port 8080/tcp in use",
                "free-1: host port 8080/tcp in use (by a replica placed now)",
                "free-2: host port 8080/tcp in use (by a replica placed now)",
            ]
        );
        // The same number over UDP is another port; port 0 reserves nothing.
        let udp = PlacementRequest { ports: vec![(8080, Protocol::Udp), (0, Protocol::Tcp)], ..request(3) };
        assert_eq!(place(&nodes, &udp).unwrap().len(), 3);
        let twice = PlacementRequest { ports: vec![(53, Protocol::Udp), (53, Protocol::Udp)], ..request(1) };
        let no_fit = place(&nodes[1..2], &twice).unwrap_err();
        assert_eq!(no_fit.reasons, vec!["free-1: request binds host port 53/udp twice"]);
    }

    #[test]
    fn resources_are_never_overcommitted() {
        let small = NodeCandidate { used_cpu_millis: 500, ..node("small", "amd64", &[Docker]) };
        let sized = PlacementRequest { cpu_millis: 1_000, memory_bytes: 512 * MIB, ..request(5) };
        let no_fit = place(std::slice::from_ref(&small), &sized).unwrap_err();
        assert_eq!(no_fit.placed.len(), 3);
        assert_eq!(no_fit.reasons, vec!["small: not enough cpu: need 1000m, 500m free"]);

        let memory = PlacementRequest { memory_bytes: 3 * GIB, ..request(3) };
        let no_fit = place(std::slice::from_ref(&small), &memory).unwrap_err();
        assert_eq!(no_fit.placed.len(), 2);
        assert_eq!(no_fit.reasons, vec!["small: not enough memory: need 3GiB, 2GiB free"]);

        // A capacity of 0 is unknown: not checked.
        let unknown = NodeCandidate { cpu_millis: 0, memory_bytes: 0, ..small };
        assert_eq!(place(&[unknown], &PlacementRequest { count: 50, ..sized }).unwrap().len(), 50);
    }

    #[test]
    fn not_ready_and_cordoned_nodes_take_nothing() {
        let nodes = [
            NodeCandidate { ready: false, ..node("down", "amd64", &[Docker]) },
            NodeCandidate { cordoned: true, ..node("drained", "amd64", &[Docker]) },
        ];
        let no_fit = place(&nodes, &request(1)).unwrap_err();
        assert_eq!(no_fit.reasons, vec!["down: not ready", "drained: cordoned"]);
        let no_fit = place(&[], &request(1)).unwrap_err();
        assert_eq!(no_fit.reasons, vec!["no nodes in the cluster"]);
        assert_eq!(place(&[], &request(0)), Ok(Vec::new()));
    }

    #[test]
    fn binpack_fills_busy_nodes_and_spread_prefers_empty_ones() {
        let busy = NodeCandidate { used_cpu_millis: 3_000, used_memory_bytes: 4 * GIB, ..node("busy", "amd64", &[Docker]) };
        let idle = node("idle", "amd64", &[Docker]);
        let nodes = [idle, busy];
        let sized = PlacementRequest { cpu_millis: 500, memory_bytes: 256 * MIB, ..request(1) };
        assert_eq!(on(&place(&nodes, &sized).unwrap()), vec!["id-busy"]);
        let spread = PlacementRequest { strategy: Strategy::Spread, ..sized };
        assert_eq!(on(&place(&nodes, &spread).unwrap()), vec!["id-idle"]);
    }

    #[test]
    fn replicas_avoid_nodes_already_running_the_deployment() {
        let mut busy = NodeCandidate { used_cpu_millis: 3_000, ..node("busy", "amd64", &[Docker]) };
        busy.instances.insert("dep".to_owned(), 1);
        busy.instances.insert("other".to_owned(), 4);
        let nodes = [busy, node("idle", "amd64", &[Docker]), node("idle-2", "amd64", &[Docker])];
        // Binpack would pick the busy node, but it already runs one: the idle ones come first,
        // then the replicas go round again.
        assert_eq!(on(&place(&nodes, &request(4)).unwrap()), vec!["id-idle", "id-idle-2", "id-busy", "id-idle"]);
    }

    #[test]
    fn image_locality_and_names_break_ties() {
        let nodes = [node("c", "amd64", &[Docker]), node("b", "amd64", &[Docker]), node("a", "amd64", &[Docker])];
        assert_eq!(on(&place(&nodes, &request(3)).unwrap()), vec!["id-a", "id-b", "id-c"]);
        let mut cached = nodes.clone();
        cached[0].images.insert("nginx:1.27".to_owned());
        assert_eq!(on(&place(&cached, &request(1)).unwrap()), vec!["id-c"]);
        // Equal names fall back to ids.
        let twins = [
            NodeCandidate { id: "z".to_owned(), ..node("same", "amd64", &[Docker]) },
            NodeCandidate { id: "y".to_owned(), ..node("same", "amd64", &[Docker]) },
        ];
        assert_eq!(on(&place(&twins, &request(1)).unwrap()), vec!["y"]);
    }

    #[test]
    fn platforms_beyond_the_memo_and_long_names_are_still_checked() {
        // More distinct platforms than the memo holds, and os/arch names too long to pack.
        let mut nodes: Vec<NodeCandidate> =
            (0..40).map(|index| node(&format!("n{index:02}"), &format!("arch{index}"), &[Docker])).collect();
        nodes.push(NodeCandidate { os: "a-very-long-os-name".to_owned(), ..node("long", "amd64", &[Docker]) });
        nodes.push(node("x86", "x86_64", &[Docker]));
        nodes.push(NodeCandidate { raspberry_pi: true, ..node("pi", "x86_64", &[Docker, Lxc]) });
        let pick = |os: &str, arch: &str| PlacementRequest { image_platforms: Some(vec![(os.to_owned(), arch.to_owned())]), ..request(1) };
        assert_eq!(on(&place(&nodes, &pick("linux", "arch33")).unwrap()), vec!["id-n33"]);
        assert_eq!(on(&place(&nodes, &pick("a-very-long-os-name", "amd64")).unwrap()), vec!["id-long"]);
        // The Pi (same os/arch strings as x86, another class) gets LXC, x86 Docker.
        let amd64 = PlacementRequest { count: 2, ports: vec![(80, Protocol::Tcp)], ..pick("linux", "amd64") };
        assert_eq!(
            place(&nodes, &amd64).unwrap(),
            vec![Placement { node_id: "id-pi".to_owned(), runtime: Lxc }, Placement { node_id: "id-x86".to_owned(), runtime: Docker },]
        );
        assert_eq!(pack("linux"), pack("linux"));
        assert_ne!(pack("arm"), pack("arm\0"));
        assert_eq!(pack("0123456789abcdef"), None);
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(100), "100B");
        assert_eq!(bytes(512 * MIB), "512MiB");
        assert_eq!(bytes(GIB + GIB / 2), "1.5GiB");
        assert_eq!(bytes(u64::MAX), "16777215.9TiB");
    }

    // ---- properties ----

    const PORTS: [(u16, Protocol); 4] = [(80, Protocol::Tcp), (80, Protocol::Udp), (8080, Protocol::Tcp), (53, Protocol::Udp)];

    fn subset<T: Copy + std::fmt::Debug>(items: &'static [T]) -> impl proptest::strategy::Strategy<Value = Vec<T>> {
        proptest::collection::vec(any::<bool>(), items.len())
            .prop_map(move |mask| items.iter().zip(mask).filter(|(_, on)| *on).map(|(item, _)| *item).collect())
    }

    fn capacity(max: u64) -> impl proptest::strategy::Strategy<Value = u64> {
        prop_oneof![1 => Just(0u64), 4 => 0..=max]
    }

    prop_compose! {
        fn arb_node()(
            name in 0..6u8,
            arch in prop::sample::select(vec!["amd64", "x86_64", "arm64", "arm"]),
            raspberry_pi in prop::bool::weighted(0.2),
            ready in prop::bool::weighted(0.9),
            cordoned in prop::bool::weighted(0.1),
            zone in prop::option::of(prop::sample::select(vec!["a", "b"])),
            runtimes in subset(&Runtime::ALL),
            cpu_millis in capacity(8_000),
            memory_bytes in capacity(16 * GIB),
            used_cpu_millis in 0..6_000u64,
            used_memory_bytes in 0..12 * GIB,
            used_ports in subset(&PORTS),
            has_image in any::<bool>(),
            mine in 0..3u32,
            others in 0..5u32,
            volumes in prop::option::weighted(0.3, (prop::sample::select(Runtime::ALL.to_vec()), prop::sample::select(vec!["data", "logs"]))),
        ) -> NodeCandidate {
            NodeCandidate {
                id: String::new(),
                name: format!("n{name}"),
                os: "linux".to_owned(),
                arch: arch.to_owned(),
                raspberry_pi,
                ready,
                cordoned,
                labels: zone.map(|zone| ("zone".to_owned(), zone.to_owned())).into_iter().collect(),
                reported_labels: BTreeMap::new(),
                runtimes,
                cpu_millis,
                memory_bytes,
                used_cpu_millis,
                used_memory_bytes,
                used_ports: used_ports.into_iter().collect(),
                images: if has_image { BTreeSet::from(["img".to_owned()]) } else { BTreeSet::new() },
                instances: [("dep".to_owned(), mine), ("other".to_owned(), others)]
                    .into_iter()
                    .filter(|(_, count)| *count > 0)
                    .collect(),
                volumes: volumes.into_iter().map(|(runtime, name)| (runtime, BTreeSet::from([name.to_owned()]))).collect(),
            }
        }
    }

    /// Nodes with unique ids (names may repeat, to exercise the id tie-break).
    fn arb_nodes(max: usize) -> impl proptest::strategy::Strategy<Value = Vec<NodeCandidate>> {
        proptest::collection::vec(arb_node(), 0..max).prop_map(|mut nodes| {
            for (index, node) in nodes.iter_mut().enumerate() {
                node.id = format!("id-{:02}", (index * 7) % 97);
            }
            nodes
        })
    }

    prop_compose! {
        fn arb_request()(
            count in 1..12u32,
            runtime in prop::option::weighted(0.25, prop::sample::select(Runtime::ALL.to_vec())),
            zone in prop::option::weighted(0.2, prop::sample::select(vec!["a", "b"])),
            arch in prop::option::weighted(0.1, prop::sample::select(vec!["amd64", "arm64"])),
            platforms in prop::option::weighted(0.3, subset(&[("linux", "amd64"), ("linux", "arm64"), ("linux", "arm")])),
            cpu_millis in prop_oneof![Just(0u64), 0..3_000u64],
            memory_bytes in prop_oneof![Just(0u64), 0..4 * GIB],
            ports in prop_oneof![2 => Just(Vec::new()), 1 => subset(&PORTS)],
            spread in any::<bool>(),
            volumes in prop_oneof![2 => Just(Vec::new()), 1 => subset(&["data", "logs", "fresh"])],
        ) -> PlacementRequest {
            PlacementRequest {
                deployment_id: "dep".to_owned(),
                count,
                image: "img".to_owned(),
                image_platforms: platforms
                    .map(|list| list.into_iter().map(|(os, arch)| (os.to_owned(), arch.to_owned())).collect()),
                runtime,
                constraints: Constraints {
                    labels: zone.map(|zone| ("zone".to_owned(), zone.to_owned())).into_iter().collect(),
                    arch: arch.map(str::to_owned),
                    ..Constraints::default()
                },
                cpu_millis,
                memory_bytes,
                ports,
                strategy: if spread { Strategy::Spread } else { Strategy::Binpack },
                volumes: volumes.into_iter().map(str::to_owned).collect(),
            }
        }
    }

    fn outcome(result: &Result<Vec<Placement>, NoFit>) -> &[Placement] {
        match result {
            Ok(placed) => placed,
            Err(no_fit) => &no_fit.placed,
        }
    }

    fn per_node(placed: &[Placement]) -> BTreeMap<&str, u64> {
        let mut counts = BTreeMap::new();
        for placement in placed {
            *counts.entry(placement.node_id.as_str()).or_insert(0) += 1;
        }
        counts
    }

    proptest! {
        #[test]
        fn a_placement_with_a_volume_that_exists_on_some_node_is_always_on_one_of_those_nodes(
            nodes in arb_nodes(12),
            request in arb_request(),
        ) {
            let result = place(&nodes, &request);
            let placed = outcome(&result);
            for volume in &request.volumes {
                let homes: Vec<&NodeCandidate> =
                    nodes.iter().filter(|node| node.volumes.values().any(|names| names.contains(volume))).collect();
                for placement in placed {
                    if homes.is_empty() {
                        continue;
                    }
                    let node = homes.iter().find(|node| node.id == placement.node_id);
                    prop_assert!(node.is_some(), "{volume} exists elsewhere, yet a replica went to {}", placement.node_id);
                    let node = node.unwrap();
                    prop_assert!(node.volumes.get(&placement.runtime).is_some_and(|names| names.contains(volume)));
                }
            }
            if !request.volumes.is_empty() {
                prop_assert!(per_node(placed).len() <= 1, "replicas sharing volumes split: {:?}", placed);
            }
            if let Err(no_fit) = &result {
                prop_assert_eq!(no_fit.reasons.len(), nodes.len().max(1));
            }
        }

        #[test]
        fn placements_respect_capacity_ports_and_eligibility(nodes in arb_nodes(12), request in arb_request()) {
            let result = place(&nodes, &request);
            let placed = outcome(&result);
            match &result {
                Ok(placed) => prop_assert_eq!(placed.len(), request.count as usize),
                Err(no_fit) => {
                    prop_assert!(no_fit.placed.len() < request.count as usize);
                    prop_assert_eq!(no_fit.reasons.len(), nodes.len().max(1));
                }
            }
            let reserved: Vec<_> = request.ports.iter().filter(|(number, _)| *number != 0).collect();
            for (id, &count) in &per_node(placed) {
                let node = nodes.iter().find(|node| node.id == *id).unwrap();
                prop_assert!(node.ready && !node.cordoned);
                if request.cpu_millis > 0 && node.cpu_millis > 0 {
                    prop_assert!(node.used_cpu_millis + count * request.cpu_millis <= node.cpu_millis);
                }
                if request.memory_bytes > 0 && node.memory_bytes > 0 {
                    prop_assert!(node.used_memory_bytes + count * request.memory_bytes <= node.memory_bytes);
                }
                if !reserved.is_empty() {
                    prop_assert_eq!(count, 1, "one host port bound twice on {}", id);
                    prop_assert!(reserved.iter().all(|port| !node.used_ports.contains(port)));
                }
            }
            for placement in placed {
                let node = nodes.iter().find(|node| node.id == placement.node_id).unwrap();
                prop_assert!(node.runtimes.contains(&placement.runtime));
                if let Some(forced) = request.runtime {
                    prop_assert_eq!(placement.runtime, forced);
                }
            }
        }

        #[test]
        fn deferred_look_ups_pick_what_scoring_every_node_exactly_picks(
            nodes in arb_nodes(16),
            request in arb_request(),
        ) {
            let request = PlacementRequest { count: 1, ..request };
            let ctx = Context::new(&request, &nodes);
            let mut memo = PlatformMemo::default();
            let exact = nodes
                .iter()
                .filter_map(|node| ctx.admit(&mut memo, node).ok())
                .enumerate()
                .filter(|(_, entry)| ctx.refusal(entry).is_none())
                .map(|(slot, mut entry)| {
                    let bound = entry.key(slot, &ctx).score;
                    entry.look_up(&ctx);
                    let key = entry.key(slot, &ctx);
                    assert!(key.score <= bound, "the bound {bound} is below the exact score {}", key.score);
                    (key, entry.node.id.clone())
                })
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, id)| id);
            let placed = place(&nodes, &request).ok().map(|placed| placed[0].node_id.clone());
            prop_assert_eq!(placed, exact);
        }

        #[test]
        fn placement_is_deterministic_and_ignores_node_order(
            (nodes, shuffled) in arb_nodes(12).prop_flat_map(|nodes| (Just(nodes.clone()), Just(nodes).prop_shuffle())),
            request in arb_request(),
        ) {
            let first = place(&nodes, &request);
            prop_assert_eq!(&first, &place(&nodes, &request));
            prop_assert_eq!(&first, &place(&shuffled, &request));
        }

        #[test]
        fn placing_many_equals_placing_one_at_a_time(nodes in arb_nodes(10), request in arb_request()) {
            let batch = place(&nodes, &request);
            let mut nodes = nodes;
            let mut one_by_one = Vec::new();
            for _ in 0..request.count {
                let Ok(placed) = place(&nodes, &PlacementRequest { count: 1, ..request.clone() }) else { break };
                let node = nodes.iter_mut().find(|node| node.id == placed[0].node_id).unwrap();
                node.used_cpu_millis += request.cpu_millis;
                node.used_memory_bytes += request.memory_bytes;
                node.used_ports.extend(request.ports.iter().filter(|(number, _)| *number != 0));
                *node.instances.entry(request.deployment_id.clone()).or_insert(0) += 1;
                // The replica's volumes now live there.
                node.volumes.entry(placed[0].runtime).or_default().extend(request.volumes.iter().cloned());
                one_by_one.extend(placed);
            }
            prop_assert_eq!(outcome(&batch), one_by_one.as_slice());
        }

        #[test]
        fn replicas_spread_over_distinct_nodes_when_enough_fit(
            nodes in arb_nodes(12).prop_map(|nodes| nodes.into_iter().map(|node| NodeCandidate {
                ready: true,
                cordoned: false,
                runtimes: vec![Docker, Lxc],
                cpu_millis: 0,
                memory_bytes: 0,
                instances: node.instances.into_iter().filter(|(deployment, _)| deployment != "dep").collect(),
                ..node
            }).collect::<Vec<_>>()),
            count in 1..12u32,
            spread in any::<bool>(),
            cpu_millis in 0..1_000u64,
            prior in proptest::collection::vec(0..3u32, 12),
        ) {
            let request = PlacementRequest {
                count,
                cpu_millis,
                strategy: if spread { Strategy::Spread } else { Strategy::Binpack },
                ..request(count)
            };
            // No instances yet: every replica on its own node while nodes remain.
            if count as usize <= nodes.len() {
                let placed = place(&nodes, &request).unwrap();
                let counts = per_node(&placed);
                prop_assert_eq!(counts.len(), count as usize, "{:?}", placed);
            }
            // With instances already running: placement levels counts up (water-filling).
            let mut running = nodes.clone();
            for (node, prior) in running.iter_mut().zip(&prior) {
                if *prior > 0 {
                    node.instances.insert("dep".to_owned(), *prior);
                }
            }
            if !running.is_empty() {
                let placed = place(&running, &request).unwrap();
                let added = per_node(&placed);
                let total = |node: &NodeCandidate| {
                    u64::from(node.instances.get("dep").copied().unwrap_or(0)) + added.get(node.id.as_str()).copied().unwrap_or(0)
                };
                let least = running.iter().map(total).min().unwrap();
                for node in running.iter().filter(|node| added.contains_key(node.id.as_str())) {
                    prop_assert!(total(node) - 1 <= least, "{} has {} while another has {}", node.id, total(node), least);
                }
            }
        }
    }
}

#[cfg(test)]
mod builder_tests {
    use std::collections::BTreeMap;

    use super::{BuilderCandidate, normalize_arch, pick_builder};
    use diplo_api::build::Builder::{self, *};
    use proptest::prelude::*;

    fn node(id: &str, arch: &str, builders: &[Builder]) -> BuilderCandidate {
        BuilderCandidate {
            id: id.into(),
            name: format!("name-{id}"),
            os: "linux".into(),
            arch: arch.into(),
            ready: true,
            cordoned: false,
            builders: builders.to_vec(),
        }
    }

    #[test]
    fn builders_are_chosen_by_preference_platform_and_load() {
        let none = BTreeMap::new();
        let arm = Some(("linux", "arm64"));
        let busy = |id: &str, n: u32| BTreeMap::from([(id.to_owned(), n)]);
        /// Name, nodes, platform, preferred node, running builds, expected node and builder
        /// (or a part of the error).
        type Case<'a> = (
            &'a str,
            Vec<BuilderCandidate>,
            Option<(&'a str, &'a str)>,
            Option<&'a str>,
            BTreeMap<String, u32>,
            Result<(&'a str, Builder), &'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "docker beats podman beats buildah",
                vec![node("a", "amd64", &[Buildah]), node("b", "amd64", &[Podman]), node("c", "amd64", &[Docker])],
                None,
                None,
                none.clone(),
                Ok(("c", Docker)),
            ),
            (
                "a node's best builder counts",
                vec![node("a", "amd64", &[Buildah, Podman]), node("b", "amd64", &[Buildah])],
                None,
                None,
                none.clone(),
                Ok(("a", Podman)),
            ),
            (
                "the preferred node wins over a better builder",
                vec![node("a", "amd64", &[Docker]), node("b", "amd64", &[Buildah])],
                None,
                Some("b"),
                none.clone(),
                Ok(("b", Buildah)),
            ),
            (
                "preferred by name",
                vec![node("a", "amd64", &[Docker]), node("b", "amd64", &[Docker])],
                None,
                Some("name-b"),
                none.clone(),
                Ok(("b", Docker)),
            ),
            (
                "a preferred node that cannot build is passed over",
                vec![node("a", "amd64", &[Docker]), node("b", "amd64", &[])],
                None,
                Some("b"),
                none.clone(),
                Ok(("a", Docker)),
            ),
            (
                "fewer running builds",
                vec![node("a", "amd64", &[Docker]), node("b", "amd64", &[Docker])],
                None,
                None,
                busy("a", 2),
                Ok(("b", Docker)),
            ),
            (
                "lowest id breaks ties",
                vec![node("b", "amd64", &[Docker]), node("a", "amd64", &[Docker])],
                None,
                None,
                none.clone(),
                Ok(("a", Docker)),
            ),
            (
                "platform filters, uname spellings too",
                vec![node("a", "amd64", &[Docker]), node("b", "aarch64", &[Buildah])],
                arm,
                None,
                none.clone(),
                Ok(("b", Buildah)),
            ),
            (
                "no builder at all",
                vec![node("a", "amd64", &[]), node("b", "arm64", &[])],
                None,
                None,
                none.clone(),
                Err("no node has an image builder"),
            ),
            (
                "none for the platform",
                vec![node("a", "amd64", &[Docker]), node("b", "arm64", &[])],
                arm,
                None,
                none.clone(),
                Err("no ready node with an image builder runs linux/arm64 (builders run on linux/amd64)"),
            ),
            (
                "builders only on down or cordoned nodes",
                vec![
                    BuilderCandidate { ready: false, ..node("a", "amd64", &[Docker]) },
                    BuilderCandidate { cordoned: true, ..node("b", "amd64", &[Docker]) },
                ],
                None,
                None,
                none.clone(),
                Err("of 2 node(s) with one, 1 not ready and 1 cordoned"),
            ),
            ("no node", vec![], None, None, none.clone(), Err("no node has an image builder")),
        ];
        for (name, nodes, platform, prefer, running, expected) in cases {
            let got = pick_builder(&nodes, platform, prefer, &running);
            match (&got, expected) {
                (Ok((id, builder)), Ok((want_id, want_builder))) => assert_eq!((id.as_str(), *builder), (want_id, want_builder), "{name}"),
                (Err(message), Err(want)) => assert!(message.contains(want), "{name}: {message}"),
                _ => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    fn any_node() -> impl proptest::strategy::Strategy<Value = BuilderCandidate> {
        (
            0..20u8,
            prop::sample::select(vec!["amd64", "arm64", "x86_64"]),
            any::<bool>(),
            any::<bool>(),
            prop::sample::subsequence(Builder::ALL.to_vec(), 0..=3),
        )
            .prop_map(|(id, arch, ready, cordoned, builders)| BuilderCandidate {
                ready,
                cordoned,
                ..node(&format!("n{id}"), arch, &builders)
            })
    }

    proptest! {
        #[test]
        fn never_picks_a_node_that_cannot_build_and_the_order_does_not_matter(
            nodes in proptest::collection::vec(any_node(), 0..12),
            platform in prop::option::of(prop::sample::select(vec![("linux", "amd64"), ("linux", "arm64")])),
            prefer in prop::option::of(0..20u8),
            loads in proptest::collection::btree_map(0..20u8, 0..4u32, 0..8),
        ) {
            // Ids are unique among nodes.
            let mut nodes = nodes;
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            nodes.dedup_by(|a, b| a.id == b.id);
            let prefer = prefer.map(|p| format!("n{p}"));
            let running: BTreeMap<String, u32> = loads.into_iter().map(|(id, n)| (format!("n{id}"), n)).collect();
            let picked = pick_builder(&nodes, platform, prefer.as_deref(), &running);
            let mut reversed = nodes.clone();
            reversed.reverse();
            prop_assert_eq!(&picked, &pick_builder(&reversed, platform, prefer.as_deref(), &running));
            if let Ok((id, builder)) = &picked {
                let chosen = nodes.iter().find(|n| &n.id == id).expect("a given node");
                prop_assert!(chosen.ready && !chosen.cordoned, "{chosen:?}");
                prop_assert!(chosen.builders.contains(builder), "{chosen:?} {builder}");
                if let Some((_, arch)) = platform {
                    prop_assert_eq!(normalize_arch(&chosen.arch), arch);
                }
            } else {
                let fits = nodes.iter().any(|n| {
                    n.ready && !n.cordoned && !n.builders.is_empty() && platform.is_none_or(|(_, arch)| normalize_arch(&n.arch) == arch)
                });
                prop_assert!(!fits, "a node fits but none was picked: {picked:?}");
            }
        }
    }
}
