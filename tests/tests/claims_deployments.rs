//! What the reconciler promises about deployments, checked against a real control plane
//! whose nodes are fakes speaking the agent protocol over mTLS gRPC (join, session,
//! heartbeats, command results), so that every command the control plane sends is seen
//! and timed:
//!
//! * a rolling update never has more than `max_parallel` new replicas starting at once,
//!   and the replicas of the old revision keep running until new ones replace them;
//! * after a normal exit (code 0) `no` and `on-failure` leave a container stopped,
//!   after a failure (code 1) `on-failure` starts it again (and `always` after both);
//! * a silent node turns `unhealthy` after 3 missed heartbeats and `down` after the
//!   grace, both within bounds read from the events' timestamps, and its replicas move
//!   only once it is down, never while it is only unhealthy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use diplo_api::pb;
use diplo_api::pb::agent_service_client::AgentServiceClient;
use diplo_api::pb::cluster_service_client::ClusterServiceClient;
use diplo_api::pb::event_service_client::EventServiceClient;
use diplo_tests::{ControlPlane, ControlPlaneOptions, host_arch, unique_name};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const IMAGE: &str = "127.0.0.1:5000/diplo/busybox:latest";
const POLL: Duration = Duration::from_millis(200);
/// How often a fake node sends a heartbeat (the control plane asks for one a second).
const BEAT: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------------------------
// Connections

async fn connect(control_plane: &ControlPlane, identity: Identity) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(control_plane.read_file("ca.pem")))
        .domain_name("localhost")
        .identity(identity);
    Endpoint::from_shared(format!("https://{}", control_plane.grpc_addr()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e:?}\n{}", control_plane.logs()))
}

async fn anonymous(control_plane: &ControlPlane) -> Channel {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(control_plane.read_file("ca.pem"))).domain_name("localhost");
    Endpoint::from_shared(format!("https://{}", control_plane.grpc_addr()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("TLS config")
        .connect()
        .await
        .expect("connect without a certificate")
}

fn admin_identity(control_plane: &ControlPlane) -> Identity {
    Identity::from_pem(control_plane.read_file("admin.pem"), control_plane.read_file("admin-key.pem"))
}

/// Every stored event (replayed through `EventService.Watch` as the admin).
async fn events(control_plane: &ControlPlane) -> Vec<pb::Event> {
    let channel = connect(control_plane, admin_identity(control_plane)).await;
    let request = pb::WatchRequest { kinds: Vec::new(), after_sequence: 0, replay: true };
    let mut stream = EventServiceClient::new(channel).watch(request).await.expect("Watch as admin").into_inner();
    let mut all = Vec::new();
    while let Ok(Ok(Some(event))) = tokio::time::timeout(Duration::from_millis(700), stream.message()).await {
        all.push(event);
    }
    all
}

fn event_time(event: &pb::Event) -> SystemTime {
    let at = event.at.as_ref().expect("an event has a time");
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(at.seconds).expect("after 1970"))
        + Duration::from_nanos(u64::try_from(at.nanos).expect("nanos"))
}

/// `a - b` in seconds, negative when `a` is earlier.
fn seconds_between(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

// ---------------------------------------------------------------------------------
// Fake nodes

/// What a fake node saw, in order, with the time it saw it.
#[derive(Debug, Clone)]
enum Seen {
    /// A create began (its answer comes [`FakeBehaviour::create_delay`] later).
    CreateBegun {
        deployment: String,
        version: String,
    },
    /// A create was answered: the container runs (or exited, see `EXIT_CODE`).
    Created {
        deployment: String,
        version: String,
    },
    Started {
        deployment: String,
    },
    Removed {
        deployment: String,
        version: String,
    },
}

/// One container a fake node holds.
#[derive(Debug, Clone)]
struct FakeContainer {
    state: pb::ContainerState,
    version: String,
    /// Listed in hello and heartbeats (a container made by a create that is still
    /// under way is not, until the next session).
    reported: bool,
}

/// What every fake node of a test shares: their containers and a log of what they saw.
#[derive(Default)]
struct Cluster {
    containers: BTreeMap<String, (String, FakeContainer)>,
    log: Vec<(Instant, String, Seen)>,
    creates_in_flight: usize,
    max_creates_in_flight: usize,
    /// Fewest containers running at once since [`Cluster::arm`] (per deployment).
    min_running: Option<usize>,
    max_existing: usize,
    armed: bool,
    /// While set, creates make their container but are never answered (nor reported
    /// before the next session): the nodes are in the middle of them.
    hold_creates: bool,
}

impl Cluster {
    fn running(&self) -> usize {
        self.containers.values().filter(|(_, c)| c.state.status == "running").count()
    }

    /// Starts tracking the extremes from the current state.
    fn arm(&mut self) {
        self.armed = true;
        self.min_running = Some(self.running());
        self.max_existing = self.containers.len();
        self.max_creates_in_flight = 0;
    }

    fn observe(&mut self) {
        if self.armed {
            let running = self.running();
            self.min_running = Some(self.min_running.map_or(running, |m| m.min(running)));
            self.max_existing = self.max_existing.max(self.containers.len());
            self.max_creates_in_flight = self.max_creates_in_flight.max(self.creates_in_flight);
        }
    }
}

#[derive(Clone, Copy)]
struct FakeBehaviour {
    /// How long a create takes before it is answered.
    create_delay: Duration,
}

impl FakeBehaviour {
    const QUICK: FakeBehaviour = FakeBehaviour { create_delay: Duration::ZERO };
}

/// A node that joined with a real join token and keeps a session open (opening a new
/// one whenever it ends, as an agent does), answering the control plane's commands as
/// an agent would.
struct FakeNode {
    id: String,
    name: String,
    task: tokio::task::JoinHandle<()>,
}

/// Where a fake node connects, and as whom.
#[derive(Clone)]
struct Link {
    url: String,
    ca_pem: String,
    identity: Identity,
}

impl Link {
    async fn channel(&self) -> Result<Channel, String> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost")
            .identity(self.identity.clone());
        Endpoint::from_shared(self.url.clone())
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }
}

impl FakeNode {
    async fn start(control_plane: &ControlPlane, name: &str, cluster: Arc<Mutex<Cluster>>, behaviour: FakeBehaviour) -> FakeNode {
        let admin = ClusterServiceClient::new(connect(control_plane, admin_identity(control_plane)).await);
        let token = admin.clone().create_join_token(pb::CreateJoinTokenRequest::default()).await.expect("join token").into_inner().token;
        let (key_pem, csr_pem) = diplo_api::pki::generate_csr(name).expect("CSR");
        let request =
            pb::JoinRequest { token, node_name: name.to_owned(), csr_pem, node_id: String::new(), certificate_pem: String::new() };
        let joined = AgentServiceClient::new(anonymous(control_plane).await).join(request).await.expect("join").into_inner();
        let link = Link {
            url: format!("https://{}", control_plane.grpc_addr()),
            ca_pem: control_plane.read_file("ca.pem"),
            identity: Identity::from_pem(&joined.certificate_pem, &key_pem),
        };
        let node_id = joined.node_id.clone();
        let label = name.to_owned();
        let task = tokio::spawn(async move {
            loop {
                if let Err(e) = session(&link, &cluster, &node_id, &label, behaviour).await {
                    eprintln!("[fake {label}] session: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        FakeNode { id: joined.node_id, name: name.to_owned(), task }
    }

    /// Stops answering and heartbeating at once, as a node that loses power would.
    fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fingerprint(name: &str) -> pb::NodeFingerprint {
    pb::NodeFingerprint {
        hostname: name.to_owned(),
        os: "linux".into(),
        arch: host_arch().into(),
        cpus: 8,
        memory_bytes: 16 << 30,
        runtimes: vec![pb::RuntimeStatus { kind: pb::RuntimeKind::Docker as i32, available: true, ..Default::default() }],
        preferred_runtime: pb::RuntimeKind::Docker as i32,
        agent_version: "fake".into(),
        ..Default::default()
    }
}

/// The containers of `node_id` that it reports.
fn reported(cluster: &Mutex<Cluster>, node_id: &str) -> Vec<pb::ContainerState> {
    let cluster = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    cluster.containers.values().filter(|(n, c)| n == node_id && c.reported).map(|(_, c)| c.state.clone()).collect()
}

/// One session: hello with every container the node has, then heartbeats and command
/// answers (each command carried out on its own task, so that they overlap) until the
/// stream ends.
async fn session(link: &Link, cluster: &Arc<Mutex<Cluster>>, node_id: &str, label: &str, behaviour: FakeBehaviour) -> Result<(), String> {
    let channel = link.channel().await?;
    // A new session reports everything, as an agent's hello lists what its runtimes hold.
    for (n, c) in cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).containers.values_mut() {
        if n.as_str() == node_id {
            c.reported = true;
        }
    }
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello { fingerprint: Some(fingerprint(label)), containers: reported(cluster, node_id) };
    tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) }).await.map_err(|e| e.to_string())?;
    let mut downstream = AgentServiceClient::new(channel).session(ReceiverStream::new(rx)).await.map_err(|e| e.to_string())?.into_inner();
    match downstream.message().await.map_err(|e| e.to_string())? {
        Some(pb::ControlMessage { body: Some(pb::control_message::Body::Welcome(_)) }) => {}
        other => return Err(format!("a welcome expected first, got {other:?}")),
    }
    let mut beat = tokio::time::interval(BEAT);
    let mut sequence = 0u64;
    loop {
        tokio::select! {
            _ = beat.tick() => {
                sequence += 1;
                let beat = pb::Heartbeat { sequence, containers: reported(cluster, node_id), full: true, ..Default::default() };
                tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Heartbeat(beat)) }).await.map_err(|e| e.to_string())?;
            }
            message = downstream.message() => {
                let command = match message {
                    Ok(Some(pb::ControlMessage { body: Some(pb::control_message::Body::Command(command)) })) => command,
                    Ok(Some(_)) => continue,
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                };
                let (tx, cluster, node_id, label) = (tx.clone(), cluster.clone(), node_id.to_owned(), label.to_owned());
                tokio::spawn(async move {
                    if let Some(reply) = answer(&cluster, &node_id, &label, command, behaviour).await {
                        let _ = tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Result(reply)) }).await;
                    }
                });
            }
        }
    }
}

fn ok(request_id: String, container: Option<pb::ContainerState>) -> pb::CommandResult {
    pb::CommandResult { request_id, ok: true, container, ..Default::default() }
}

/// Carries out one command on the shared fake containers. A create answers after
/// `create_delay` (creates may overlap: they run on their own while the node goes on);
/// its container exits at once with `EXIT_CODE` when its environment sets one.
async fn answer(
    cluster: &Arc<Mutex<Cluster>>,
    node_id: &str,
    node: &str,
    command: pb::Command,
    behaviour: FakeBehaviour,
) -> Option<pb::CommandResult> {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    use pb::command::Op;
    let request_id = command.request_id.clone();
    let now = Instant::now();
    match command.op {
        Some(Op::Create(spec)) => {
            let deployment = spec.labels.get("diplo.deployment").cloned().unwrap_or_default();
            let version = spec.environment.get("VERSION").cloned().unwrap_or_default();
            {
                let mut c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                c.creates_in_flight += 1;
                c.log.push((now, node.to_owned(), Seen::CreateBegun { deployment: deployment.clone(), version: version.clone() }));
                c.observe();
            }
            tokio::time::sleep(behaviour.create_delay).await;
            let id = format!("fake-{node}-{serial}");
            let exit_code = spec.environment.get("EXIT_CODE").map(|c| c.parse::<i32>().expect("EXIT_CODE"));
            let state = pb::ContainerState {
                id: id.clone(),
                name: spec.name.clone(),
                node_id: node_id.to_owned(),
                runtime: pb::RuntimeKind::Docker as i32,
                image: spec.image.clone(),
                status: if exit_code.is_some() { "exited".into() } else { "running".into() },
                exit_code: exit_code.unwrap_or(0),
                labels: spec.labels.clone(),
                ..Default::default()
            };
            let mut c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = c.hold_creates;
            c.containers.insert(
                id.clone(),
                (node_id.to_owned(), FakeContainer { state: state.clone(), version: version.clone(), reported: !held }),
            );
            if held {
                return None;
            }
            c.creates_in_flight -= 1;
            c.log.push((Instant::now(), node.to_owned(), Seen::Created { deployment, version }));
            c.observe();
            Some(ok(request_id, Some(state)))
        }
        Some(Op::Start(id) | Op::Restart(id)) => {
            let mut c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some((_, container)) = c.containers.get_mut(&id) else {
                return Some(pb::CommandResult { request_id, error_code: "NOT_FOUND".into(), error_message: id, ..Default::default() });
            };
            container.state.status = "running".into();
            let state = container.state.clone();
            let deployment = state.labels.get("diplo.deployment").cloned().unwrap_or_default();
            c.log.push((now, node.to_owned(), Seen::Started { deployment }));
            c.observe();
            Some(ok(request_id, Some(state)))
        }
        Some(Op::Stop(stop)) => {
            let mut c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, container)) = c.containers.get_mut(&stop.id) {
                container.state.status = "exited".into();
            }
            c.observe();
            Some(ok(request_id, None))
        }
        Some(Op::Remove(remove)) => {
            let mut c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match c.containers.remove(&remove.id) {
                Some((_, container)) => {
                    let deployment = container.state.labels.get("diplo.deployment").cloned().unwrap_or_default();
                    c.log.push((now, node.to_owned(), Seen::Removed { deployment, version: container.version }));
                    c.observe();
                    Some(ok(request_id, None))
                }
                None => {
                    Some(pb::CommandResult { request_id, error_code: "NOT_FOUND".into(), error_message: remove.id, ..Default::default() })
                }
            }
        }
        _ => Some(ok(request_id, None)),
    }
}

/// A control plane with fast heartbeats (1 s) and the given grace, and fake nodes.
async fn cluster_of(names: &[&str], down_grace: Duration, behaviour: FakeBehaviour) -> (ControlPlane, Vec<FakeNode>, Arc<Mutex<Cluster>>) {
    let control_plane = tokio::task::block_in_place(|| ControlPlane::start(ControlPlaneOptions::fast(down_grace)));
    let shared = Arc::new(Mutex::new(Cluster::default()));
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(FakeNode::start(&control_plane, name, shared.clone(), behaviour).await);
    }
    // Ready once the monitor saw their heartbeats.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let channel = connect(&control_plane, admin_identity(&control_plane)).await;
        let listed = ClusterServiceClient::new(channel).list_nodes(pb::ListNodesRequest::default()).await.expect("ListNodes").into_inner();
        let ready = listed.nodes.iter().filter(|n| n.status == pb::NodeStatus::Ready as i32).count();
        if ready == names.len() {
            break;
        }
        assert!(Instant::now() < deadline, "fake nodes not ready: {listed:?}");
        tokio::time::sleep(POLL).await;
    }
    (control_plane, nodes, shared)
}

async fn rest(control_plane: &ControlPlane, method: &'static str, path: String, body: Option<Value>) -> diplo_tests::HttpResponse {
    tokio::task::block_in_place(|| control_plane.rest(method, &path, body))
}

async fn deployment(control_plane: &ControlPlane, name: &str) -> Value {
    let response = rest(control_plane, "GET", format!("/api/v1/deployments/{name}"), None).await;
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

/// Waits until `check` holds for the deployment, or panics with the last one seen.
async fn wait_deployment(control_plane: &ControlPlane, name: &str, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let d = deployment(control_plane, name).await;
        if check(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {d:#}");
        tokio::time::sleep(POLL).await;
    }
}

fn running_instances(d: &Value) -> usize {
    d["instances"].as_array().map_or(0, |l| l.iter().filter(|i| i["status"] == "running" && i["desired"] == "run").count())
}

// ---------------------------------------------------------------------------------
// Rolling updates

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_replaces_at_most_max_parallel_at_a_time_and_keeps_the_rest_running() {
    const REPLICAS: usize = 4;
    const MAX_PARALLEL: usize = 2;
    // Creates take a while, so that a pass that started too many would be seen.
    let behaviour = FakeBehaviour { create_delay: Duration::from_millis(1500) };
    let (control_plane, _nodes, cluster) = cluster_of(&["roll-a", "roll-b"], Duration::from_secs(30), behaviour).await;
    let name = unique_name("roll");
    let spec = |version: &str| {
        json!({"name": name, "image": IMAGE, "replicas": REPLICAS, "max_parallel": MAX_PARALLEL,
               "command": ["sleep", "1000"], "environment": {"VERSION": version}})
    };
    let created = rest(&control_plane, "POST", "/api/unified/deploy".into(), Some(spec("1"))).await;
    assert_eq!(created.status, 201, "{}", created.body);
    wait_deployment(&control_plane, &name, "revision 1 running", Duration::from_secs(60), |d| {
        d["status"] == "running" && running_instances(d) == REPLICAS
    })
    .await;
    {
        let mut c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(c.running(), REPLICAS, "{:?}", c.containers);
        c.arm();
    }

    let updated = rest(&control_plane, "PUT", format!("/api/v1/deployments/{name}"), Some(spec("2"))).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    wait_deployment(&control_plane, &name, "revision 2 running", Duration::from_secs(90), |d| {
        d["status"] == "running" && d["revision"] == 2 && running_instances(d) == REPLICAS
    })
    .await;
    // Let the last removals land.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let versions: Vec<String> =
            cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).containers.values().map(|(_, c)| c.version.clone()).collect();
        if versions.len() == REPLICAS && versions.iter().all(|v| v == "2") {
            break;
        }
        assert!(Instant::now() < deadline, "old containers left: {versions:?}");
        tokio::time::sleep(POLL).await;
    }

    let c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let timeline: Vec<String> = c.log.iter().map(|(_, node, seen)| format!("{node}: {seen:?}")).collect();
    let new_creates = c.log.iter().filter(|(_, _, s)| matches!(s, Seen::CreateBegun { version, .. } if version == "2")).count();
    let removed_old = c
        .log
        .iter()
        .filter(|(_, _, s)| matches!(s, Seen::Removed { deployment, version } if version == "1" && *deployment == name))
        .count();
    assert_eq!(new_creates, REPLICAS, "one create per replica of revision 2: {timeline:#?}");
    assert_eq!(removed_old, REPLICAS, "every replica of revision 1 removed: {timeline:#?}");
    assert!(
        c.max_creates_in_flight <= MAX_PARALLEL,
        "{} replicas were being created at once, max_parallel is {MAX_PARALLEL}: {timeline:#?}",
        c.max_creates_in_flight
    );
    assert_eq!(c.max_creates_in_flight, MAX_PARALLEL, "the update uses its parallelism: {timeline:#?}");
    assert!(
        c.max_existing <= REPLICAS + MAX_PARALLEL,
        "{} containers at once: more than replicas + max_parallel: {timeline:#?}",
        c.max_existing
    );
    let min_running = c.min_running.expect("armed");
    assert!(min_running >= REPLICAS, "only {min_running} containers ran at one point of the update: {timeline:#?}");
    // Old replicas were retired only as new ones came up: each removal of a revision-1
    // container follows at least as many revision-2 containers created as removed so far.
    let (mut up, mut retired) = (0usize, 0usize);
    for (_, _, seen) in &c.log {
        match seen {
            Seen::Created { version, .. } if version == "2" => up += 1,
            Seen::Removed { version, .. } if version == "1" => {
                retired += 1;
                assert!(retired <= up, "a revision-1 replica was removed before its replacement ran: {timeline:#?}");
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------
// Restart policies

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_policies_after_a_normal_exit_and_after_a_failure() {
    let behaviour = FakeBehaviour::QUICK;
    let (control_plane, _nodes, cluster) = cluster_of(&["exit-node"], Duration::from_secs(30), behaviour).await;
    // (policy, exit code, restarted?)
    let cases = [("no", 0, false), ("on-failure", 0, false), ("on-failure", 1, true), ("always", 0, true), ("no", 1, false)];
    let mut names = Vec::new();
    for (policy, code, _) in cases {
        let name = unique_name(&format!("exit-{policy}-{code}"));
        let body = json!({"name": name, "image": IMAGE, "replicas": 1, "command": ["true"],
                          "restart_policy": policy, "environment": {"EXIT_CODE": code.to_string()}});
        let created = rest(&control_plane, "POST", "/api/unified/deploy".into(), Some(body)).await;
        assert_eq!(created.status, 201, "{}", created.body);
        names.push(name);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Every container is created and exits; the reconciler sees each exit (the instance
    // fails with the code) and, for those that restart, starts it again after a pause.
    for (name, (policy, code, _)) in names.iter().zip(cases) {
        let expected = format!("container exited with code {code}");
        wait_deployment(&control_plane, name, &format!("{policy}/{code} to have exited"), Duration::from_secs(30), |d| {
            d["instances"].as_array().is_some_and(|l| l.len() == 1 && l[0]["message"] == expected.as_str())
        })
        .await;
    }
    let started = |c: &Cluster, name: &str| {
        c.log.iter().filter(|(_, _, s)| matches!(s, Seen::Started { deployment, .. } if deployment == name)).count()
    };
    // Those that restart do so within 20 s; the same time passes for the others.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = {
            let c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            names.iter().zip(cases).filter(|(_, (_, _, restart))| *restart).all(|(name, _)| started(&c, name) > 0)
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "no restart: {:#?}", cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).log);
        tokio::time::sleep(POLL).await;
    }
    // Two more reconcile periods and the pause before a restart, for any late start.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (name, (policy, code, restart)) in names.iter().zip(cases) {
        let starts = started(&c, name);
        if restart {
            assert!(starts > 0, "restart_policy {policy}, exit code {code}: restarted: {:#?}", c.log);
        } else {
            assert_eq!(starts, 0, "restart_policy {policy}, exit code {code}: left stopped: {:#?}", c.log);
        }
        let creates = c.log.iter().filter(|(_, _, s)| matches!(s, Seen::Created { deployment, .. } if deployment == name)).count();
        assert_eq!(creates, 1, "{policy}/{code}: one container, never replaced by a new one: {:#?}", c.log);
    }
}

// ---------------------------------------------------------------------------------
// Node health: unhealthy, down, and when replicas move

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_node_is_unhealthy_then_down_within_bounds_and_its_replicas_move_only_once_down() {
    const HEARTBEAT: f64 = 1.0; // ControlPlaneOptions::fast
    const GRACE: Duration = Duration::from_secs(8);
    // Slack above the bounds: the monitor checks every half interval, then writes the
    // change and the event; the machine may be loaded.
    const SLACK: f64 = 2.0;
    let behaviour = FakeBehaviour::QUICK;
    let (control_plane, nodes, cluster) = cluster_of(&["hb-a", "hb-b"], GRACE, behaviour).await;
    let name = unique_name("move");
    let body = json!({"name": name, "image": IMAGE, "replicas": 2, "command": ["sleep", "1000"]});
    let created = rest(&control_plane, "POST", "/api/unified/deploy".into(), Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    wait_deployment(&control_plane, &name, "2 replicas on 2 nodes", Duration::from_secs(60), |d| {
        let on: std::collections::BTreeSet<&str> = d["instances"]
            .as_array()
            .map(|l| l.iter().filter(|i| i["status"] == "running").filter_map(|i| i["node"].as_str()).collect())
            .unwrap_or_default();
        d["status"] == "running" && on.len() == 2
    })
    .await;
    let (victim, survivor) = (&nodes[0], &nodes[1]);

    let killed_at = SystemTime::now();
    let killed = Instant::now();
    victim.kill();
    // The session of the killed node stays unnoticed until heartbeats are missed; watch
    // for a move on the survivor until the node is down, and a while after.
    let creates_on_survivor = |c: &Cluster| -> Vec<Instant> {
        c.log
            .iter()
            .filter(|(at, node, s)| *at > killed && *node == survivor.name && matches!(s, Seen::CreateBegun { .. }))
            .map(|(at, _, _)| *at)
            .collect()
    };
    let deadline = Instant::now() + GRACE + Duration::from_secs(30);
    let (unhealthy, down) = loop {
        let all = events(&control_plane).await;
        let find = |kind: &str| all.iter().find(|e| e.kind == kind && e.subject == victim.id && event_time(e) > killed_at).cloned();
        if let (Some(unhealthy), Some(down)) = (find("node.unhealthy"), find("node.down")) {
            break (unhealthy, down);
        }
        assert!(Instant::now() < deadline, "no node.unhealthy and node.down for {}: {all:#?}", victim.id);
        tokio::time::sleep(POLL).await;
    };
    let unhealthy_after = seconds_between(event_time(&unhealthy), killed_at);
    let down_after = seconds_between(event_time(&down), killed_at);
    eprintln!("[test] unhealthy {unhealthy_after:.2}s and down {down_after:.2}s after the kill");
    // The last heartbeat left at most one beat period before the kill.
    let beat = BEAT.as_secs_f64();
    assert!(
        unhealthy_after >= 3.0 * HEARTBEAT - beat - 0.1,
        "unhealthy {unhealthy_after:.2}s after the kill, before 3 heartbeats were missed"
    );
    assert!(unhealthy_after <= 3.0 * HEARTBEAT + SLACK, "unhealthy only {unhealthy_after:.2}s after the kill (3 heartbeats: 3 s)");
    let grace = GRACE.as_secs_f64();
    assert!(down_after >= grace - beat - 0.1, "down {down_after:.2}s after the kill, before the grace ({grace} s)");
    assert!(down_after <= grace + SLACK, "down only {down_after:.2}s after the kill (grace {grace} s)");

    // The replica moves, and only after the node was declared down.
    let moved = loop {
        let creates = creates_on_survivor(&cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        if let Some(first) = creates.first() {
            break *first;
        }
        assert!(
            Instant::now() < deadline,
            "the lost replica never moved: {:#?}",
            cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).log
        );
        tokio::time::sleep(POLL).await;
    };
    let moved_after = moved.duration_since(killed).as_secs_f64();
    eprintln!("[test] replica moved {moved_after:.2}s after the kill");
    assert!(
        moved_after >= down_after - 0.5,
        "the replica moved {moved_after:.2}s after the kill, while the node was only unhealthy (down at {down_after:.2}s)"
    );
    assert!(moved_after >= grace - beat - 0.1, "the replica moved {moved_after:.2}s after the kill, before the grace ({grace} s)");
    wait_deployment(&control_plane, &name, "2 replicas running again", Duration::from_secs(30), |d| {
        d["status"] == "running" && running_instances(d) == 2
    })
    .await;
}

// ---------------------------------------------------------------------------------
// A control plane crash inside the window: instances recorded, creates in flight

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_with_instances_recorded_and_creates_in_flight_converges_without_duplicates() {
    const REPLICAS: usize = 3;
    let (mut control_plane, _nodes, cluster) = cluster_of(&["crash-a", "crash-b"], Duration::from_secs(30), FakeBehaviour::QUICK).await;
    // The nodes make every container they are asked for but answer no create: the
    // control plane cannot leave the window before it is killed.
    cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).hold_creates = true;
    let name = unique_name("crash");
    let body = json!({"name": name, "image": IMAGE, "replicas": REPLICAS, "command": ["sleep", "1000"]});
    let created = rest(&control_plane, "POST", "/api/unified/deploy".into(), Some(body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let creates_of =
        |c: &Cluster| c.log.iter().filter(|(_, _, s)| matches!(s, Seen::CreateBegun { deployment, .. } if *deployment == name)).count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while creates_of(&cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) < REPLICAS {
        assert!(
            Instant::now() < deadline,
            "the creates never reached the nodes: {:#?}",
            cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).log
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recorded = deployment(&control_plane, &name).await;
    let instance_ids = |d: &Value| -> std::collections::BTreeSet<String> {
        d["instances"].as_array().map(|l| l.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let before = instance_ids(&recorded);
    assert_eq!(before.len(), REPLICAS, "every instance is recorded before its create is sent: {recorded:#}");
    {
        let c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(c.creates_in_flight, REPLICAS, "every create is in flight at the crash: {:#?}", c.log);
        assert_eq!(c.containers.len(), REPLICAS, "{:#?}", c.containers);
    }

    tokio::task::block_in_place(|| control_plane.crash_and_restart());
    cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner).hold_creates = false;

    // The nodes open new sessions listing the containers those creates made: they are
    // adopted, not made again.
    let converged = wait_deployment(&control_plane, &name, "the deployment to converge", Duration::from_secs(60), |d| {
        d["status"] == "running" && running_instances(d) == REPLICAS
    })
    .await;
    assert_eq!(instance_ids(&converged), before, "the recorded instances are the ones that run: {converged:#}");
    // Past the time after which an unobserved create is sent again, still three.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after = deployment(&control_plane, &name).await;
    assert_eq!(instance_ids(&after), before, "{after:#}");
    assert_eq!(running_instances(&after), REPLICAS, "{after:#}");
    let c = cluster.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(creates_of(&c), REPLICAS, "no create was sent again: {:#?}", c.log);
    assert_eq!(c.containers.len(), REPLICAS, "no duplicate container: {:#?}", c.containers);
}
