//! Durable placement throughput: the scheduler's decisions committed to the store.
//!
//! `DIPLO_TEST_DATABASE_URL=postgres://diplo:diplo@127.0.0.1:5432/diplo_test \
//!  cargo bench -p diplo-control-plane --bench placements`
//!
//! On SQLite (a temporary file) and, when `DIPLO_TEST_DATABASE_URL` is set, on a fresh
//! PostgreSQL database created on that server and dropped afterwards, it prints one line
//! per case:
//!
//! * `store`: `insert_instances`, `update_instances`, `list_instances` and
//!   `delete_instances` with batches of 1 to 5,000 rows (rows/s and time per batch);
//! * `placements`: 5,000 simulated nodes with mixed fingerprints, 1,000 deployments of
//!   100 replicas each placed as the reconciler does it, one deployment per pass: place
//!   with `scheduler::place`, account the usage on the candidates, commit the instances
//!   with `insert_instances`, record one `instance.placed` event per instance with
//!   `append_events`. It prints placements/s including the commits, and how the time
//!   splits between the scheduler, the instances and the events;
//! * `reconciler`: the same 100,000 replicas (other deployments) through the reconciler's
//!   own decision and write path: `planner::plan` for each deployment on a snapshot of the
//!   5,000 nodes (the plan accounted on the snapshot before the next), then what applying a
//!   plan writes, through the control plane's in-memory store (`CachedStore`): the instance
//!   records, the plan's events in one batch, the deployment's status. Commands are not sent
//!   (no nodes behind the candidates): placements/s including every commit;
//! * `events`: the same events appended one transaction each (`append_event`);
//! * `account`: what finding each chosen node by a linear search over the candidates
//!   would add per placement.
//!
//! `cargo test --benches` runs it once in a small configuration (no `--bench` argument).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use diplo_api::container::{ContainerSpec, PortMapping, Protocol};
use diplo_api::runtime::Runtime;
use diplo_control_plane::model::{
    Constraints, DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceRecord, InstanceStatus, NewEvent, Strategy,
};
use diplo_control_plane::scheduler::{NodeCandidate, Placement, PlacementRequest, place};
use diplo_control_plane::store::{self, Store};

#[path = "support/cluster.rs"]
mod support;
use support::cluster;

const MIB: u64 = 1 << 20;

/// Sizes of one run.
struct Scale {
    nodes: usize,
    deployments: usize,
    replicas: u32,
    batch_sizes: &'static [usize],
    /// Rows each store case writes at least (in as many batches as that takes).
    rows_per_case: usize,
}

const FULL: Scale =
    Scale { nodes: 5_000, deployments: 1_000, replicas: 100, batch_sizes: &[1, 10, 100, 1_000, 5_000], rows_per_case: 5_000 };
const SMOKE: Scale = Scale { nodes: 200, deployments: 10, replicas: 10, batch_sizes: &[1, 100], rows_per_case: 100 };

fn main() {
    let scale = if std::env::args().any(|arg| arg == "--bench") { FULL } else { SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
        run_backend(&sqlite, &scale).await;

        match diplo_tests::postgres::TestDatabase::create().await {
            Some(database) => {
                let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run_backend(&database.url, &scale))).await;
                database.drop_best_effort().await;
                if let Err(panic) = outcome {
                    std::panic::resume_unwind(panic);
                }
            }
            None => println!("postgres: skipped (DIPLO_TEST_DATABASE_URL is not set)"),
        }
    });
}

async fn run_backend(url: &str, scale: &Scale) {
    let store = store::open(url).await.expect("open the store");
    store_cases(&*store, scale).await;
    placements(store, scale).await;
}

// ---- the store alone ----

fn deployment(id: &str, spec: DeploymentSpec) -> DeploymentRecord {
    let now = Utc::now();
    DeploymentRecord {
        id: id.to_owned(),
        revision: 1,
        spec,
        status: DeploymentStatus::Deploying,
        message: String::new(),
        idempotency_key: None,
        created_at: now,
        updated_at: now,
    }
}

fn instance(deployment_id: &str, node_id: &str, runtime: Runtime) -> InstanceRecord {
    InstanceRecord::placed(uuid::Uuid::new_v4().to_string(), deployment_id, 1, node_id, runtime, Utc::now())
}

fn rate(rows: usize, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64()
}

fn report(backend: &str, operation: &str, batch: usize, batches: usize, elapsed: Duration) {
    let rows = batch * batches;
    println!(
        "store {backend:<8} {operation:<17} batch={batch:<5} batches={batches:<5} rows={rows:<6} {:>9.1} ms/batch {:>10.0} rows/s",
        elapsed.as_secs_f64() * 1_000.0 / batches as f64,
        rate(rows, elapsed),
    );
}

async fn store_cases(store: &dyn Store, scale: &Scale) {
    let backend = store.backend();
    for &batch in scale.batch_sizes {
        let batches = scale.rows_per_case.div_ceil(batch).max(3);
        let id = format!("store-{batch}");
        store.create_deployment(&deployment(&id, spec(&id, 0))).await.expect("create deployment");
        let mut rows: Vec<Vec<InstanceRecord>> =
            (0..batches).map(|_| (0..batch).map(|n| instance(&id, &format!("node-{n}"), Runtime::Docker)).collect()).collect();

        let start = Instant::now();
        for chunk in &rows {
            store.insert_instances(chunk).await.expect("insert");
        }
        report(backend, "insert_instances", batch, batches, start.elapsed());

        for chunk in &mut rows {
            for i in chunk.iter_mut() {
                i.status = InstanceStatus::Running;
                i.container_id = Some(format!("c-{}", i.id));
                i.updated_at = Utc::now();
            }
        }
        let start = Instant::now();
        for chunk in &rows {
            store.update_instances(chunk).await.expect("update");
        }
        report(backend, "update_instances", batch, batches, start.elapsed());

        let start = Instant::now();
        let listed = store.list_instances(Some(&id)).await.expect("list");
        let elapsed = start.elapsed();
        assert_eq!(listed.len(), batch * batches);
        report(backend, "list_instances", batch * batches, 1, elapsed);

        let start = Instant::now();
        for chunk in &rows {
            let ids: Vec<String> = chunk.iter().map(|i| i.id.clone()).collect();
            store.delete_instances(&ids).await.expect("delete");
        }
        report(backend, "delete_instances", batch, batches, start.elapsed());
        assert!(store.list_instances(Some(&id)).await.expect("list").is_empty());
        store.delete_deployment(&id).await.expect("delete deployment");
    }
}

// ---- placements, committed ----

/// Deployment `n` of the run: four shapes in turn (multi-arch binpack; spread on edge
/// nodes with a host port; a forced runtime; an ARM-only image), each asking for little
/// so that 100,000 replicas fit.
fn spec(name: &str, n: usize) -> DeploymentSpec {
    let mut spec = DeploymentSpec {
        name: name.to_owned(),
        replicas: 0,
        max_parallel: 1,
        container: ContainerSpec {
            image: format!("registry.example/app-{}:1.0", n % 20),
            cpu_millis: Some(20),
            memory_bytes: Some(16 * MIB),
            ..ContainerSpec::default()
        },
        ..DeploymentSpec::default()
    };
    match n % 4 {
        1 => {
            spec.strategy = Strategy::Spread;
            spec.constraints = Constraints { labels: [("role".to_owned(), "edge".to_owned())].into(), ..Constraints::default() };
            spec.container.ports =
                vec![PortMapping { host_port: 20_000 + (n % 10_000) as u16, container_port: 80, protocol: Protocol::Tcp }];
        }
        2 => spec.runtime = Some(Runtime::Docker),
        _ => {}
    }
    spec
}

fn platforms(n: usize) -> Option<Vec<(String, String)>> {
    let linux = |arch: &str| ("linux".to_owned(), arch.to_owned());
    match n % 4 {
        3 => Some(vec![linux("arm64"), linux("arm")]),
        _ => Some(vec![linux("amd64"), linux("arm64")]),
    }
}

fn request(id: &str, spec: &DeploymentSpec, count: u32, image_platforms: Option<Vec<(String, String)>>) -> PlacementRequest {
    PlacementRequest {
        deployment_id: id.to_owned(),
        count,
        image: spec.container.image.clone(),
        image_platforms,
        runtime: spec.runtime,
        constraints: spec.constraints.clone(),
        cpu_millis: u64::from(spec.container.cpu_millis.unwrap_or(0)),
        memory_bytes: spec.container.memory_bytes.unwrap_or(0),
        ports: spec.container.ports.iter().map(|p| (p.host_port, p.protocol)).collect(),
        strategy: spec.strategy,
        volumes: Vec::new(),
    }
}

/// Adds one placed instance to its node, as the reconciler does between passes.
fn account(nodes: &mut [NodeCandidate], by_id: &HashMap<String, usize>, placement: &Placement, request: &PlacementRequest) {
    let node = &mut nodes[by_id[&placement.node_id]];
    *node.instances.entry(request.deployment_id.clone()).or_insert(0) += 1;
    node.used_cpu_millis = node.used_cpu_millis.saturating_add(request.cpu_millis);
    node.used_memory_bytes = node.used_memory_bytes.saturating_add(request.memory_bytes);
    node.used_ports.extend(request.ports.iter().copied());
}

/// One `instance.placed` event per created instance, as the reconciler words it.
fn placed_events(spec: &DeploymentSpec, created: &[InstanceRecord]) -> Vec<NewEvent> {
    created
        .iter()
        .map(|i| NewEvent {
            at: i.created_at,
            kind: "instance.placed".to_owned(),
            actor: "system".to_owned(),
            subject: i.id.clone(),
            message: format!("{} placed on node {}", spec.name, i.node_id.as_deref().unwrap_or_default()),
        })
        .collect()
}

/// The same events appended one transaction each (`append_event`), for comparison.
async fn events_one_at_a_time(store: &dyn Store, scale: &Scale) {
    let backend = store.backend();
    let count = (scale.replicas as usize * 20).min(2_000);
    let created: Vec<InstanceRecord> = (0..count).map(|n| instance("dep-00000", &format!("node-{n}"), Runtime::Docker)).collect();
    let events = placed_events(&spec("app-00000", 0), &created);
    let start = Instant::now();
    for event in &events {
        store.append_event(event).await.expect("append");
    }
    let one_by_one = start.elapsed();
    println!(
        "events {backend:<8} append_event one at a time: {count} in {:.2}s, {:.0} events/s",
        one_by_one.as_secs_f64(),
        rate(count, one_by_one)
    );
}

/// What finding each placed node by a linear search over the candidates (instead of an
/// index) would cost.
fn account_by_linear_search(nodes: &[NodeCandidate], chosen: &[String]) {
    let start = Instant::now();
    let mut found = 0usize;
    for id in chosen {
        found += usize::from(std::hint::black_box(nodes).iter().any(|n| &n.id == id));
    }
    let elapsed = start.elapsed();
    assert_eq!(found, chosen.len());
    println!(
        "account  linear search over {} candidates for {} placements: {:.2}s ({:.1} µs per placement)",
        nodes.len(),
        chosen.len(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / chosen.len() as f64
    );
}

async fn placements(store: Arc<dyn Store>, scale: &Scale) {
    let backend = store.backend();
    let mut nodes = cluster(scale.nodes, 42);
    let by_id: HashMap<String, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
    let mut deployments = Vec::with_capacity(scale.deployments);
    for n in 0..scale.deployments {
        let id = format!("dep-{n:05}");
        let mut spec = spec(&format!("app-{n:05}"), n);
        spec.replicas = scale.replicas;
        store.create_deployment(&deployment(&id, spec.clone())).await.expect("create deployment");
        deployments.push((id, spec, platforms(n)));
    }

    let (mut placing, mut committing, mut recording) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut placed = 0usize;
    let mut chosen: Vec<String> = Vec::with_capacity(scale.deployments * scale.replicas as usize);
    let start = Instant::now();
    for (id, spec, image_platforms) in &deployments {
        let t = Instant::now();
        let request = request(id, spec, spec.replicas, image_platforms.clone());
        let decisions = place(&nodes, &request).unwrap_or_else(|no_fit| panic!("{id} does not fit: {:?}", no_fit.reasons));
        let mut created = Vec::with_capacity(decisions.len());
        for decision in &decisions {
            account(&mut nodes, &by_id, decision, &request);
            created.push(instance(id, &decision.node_id, decision.runtime));
        }
        placing += t.elapsed();
        let t = Instant::now();
        store.insert_instances(&created).await.expect("commit placements");
        committing += t.elapsed();
        // The reconciler records one `instance.placed` event per instance: here as one batch.
        let t = Instant::now();
        store.append_events(&placed_events(spec, &created)).await.expect("record events");
        recording += t.elapsed();
        placed += created.len();
        chosen.extend(decisions.into_iter().map(|d| d.node_id));
    }
    let total = start.elapsed();
    assert_eq!(placed, scale.deployments * scale.replicas as usize);
    println!(
        "placements {backend:<8} nodes={} deployments={} replicas={} placed={placed} total={:.2}s place={:.2}s commit={:.2}s \
         events={:.2}s {:.0} placements/s with their events ({:.0}/s without; scheduler alone {:.0}/s, \
         instances alone {:.0}/s, events batched {:.0}/s)",
        scale.nodes,
        scale.deployments,
        scale.replicas,
        total.as_secs_f64(),
        placing.as_secs_f64(),
        committing.as_secs_f64(),
        recording.as_secs_f64(),
        rate(placed, total),
        rate(placed, placing + committing),
        rate(placed, placing),
        rate(placed, committing),
        rate(placed, recording),
    );
    events_one_at_a_time(&*store, scale).await;
    account_by_linear_search(&nodes, &chosen);
    let listed = store.list_instances(None).await.expect("list");
    assert_eq!(listed.len(), placed, "every placement is durable");
    planned_placements(store, scale, placed).await;
}

/// The reconciler's path: plan each deployment, account the plan, write what applying it
/// writes (through the in-memory store, as the control plane runs).
async fn planned_placements(store: Arc<dyn Store>, scale: &Scale, before: usize) {
    use diplo_control_plane::model::NodeStatus;
    use diplo_control_plane::planner::{self, NodeState, Snapshot};
    use diplo_control_plane::service::PlatformLookup;

    let backend = store.backend();
    let store: Arc<dyn Store> = store::CachedStore::load(store).await.expect("load the in-memory store");
    let nodes = cluster(scale.nodes, 42);
    let states = nodes
        .iter()
        .map(|n| (n.id.clone(), NodeState { status: if n.ready { NodeStatus::Ready } else { NodeStatus::Unhealthy }, connected: true }))
        .collect();
    let mut images = HashMap::new();
    let mut deployments = Vec::with_capacity(scale.deployments);
    for n in 0..scale.deployments {
        let mut spec = spec(&format!("planned-{n:05}"), n);
        spec.replicas = scale.replicas;
        if let Some(platforms) = platforms(n) {
            images.insert(spec.container.image.clone(), PlatformLookup::Known(platforms));
        }
        let record = deployment(&format!("planned-{n:05}"), spec);
        store.create_deployment(&record).await.expect("create deployment");
        deployments.push(record);
    }
    let mut snapshot = Snapshot::new(states, Vec::new(), Default::default(), nodes, images);
    let mut sequence = 0u64;
    let mut new_id = || {
        sequence += 1;
        format!("planned-instance-{sequence:07}")
    };
    let (mut planning, mut writing) = (Duration::ZERO, Duration::ZERO);
    let mut placed = 0usize;
    let start = Instant::now();
    for deployment in &deployments {
        let t = Instant::now();
        let plan = planner::plan(&snapshot, deployment, &[], Utc::now(), &mut new_id);
        snapshot.account(&plan, &deployment.spec);
        planning += t.elapsed();
        assert_eq!(plan.insert.len(), scale.replicas as usize, "{}: {:?}", deployment.id, plan.reasons);
        let t = Instant::now();
        store.insert_instances(&plan.insert).await.expect("commit placements");
        let at = Utc::now();
        let events: Vec<NewEvent> = plan
            .events
            .into_iter()
            .map(|e| NewEvent { at, kind: e.kind, actor: "system".into(), subject: e.subject, message: e.message })
            .collect();
        store.append_events(&events).await.expect("record events");
        if let Some((status, message)) = &plan.status {
            store.set_deployment_status(deployment, *status, message, at).await.expect("status");
        }
        writing += t.elapsed();
        placed += plan.insert.len();
    }
    let total = start.elapsed();
    println!(
        "reconciler {backend:<8} nodes={} deployments={} replicas={} placed={placed} total={:.2}s plan={:.2}s writes={:.2}s \
         {:.0} placements/s including every commit (planner alone {:.0}/s)",
        scale.nodes,
        scale.deployments,
        scale.replicas,
        total.as_secs_f64(),
        planning.as_secs_f64(),
        writing.as_secs_f64(),
        rate(placed, total),
        rate(placed, planning),
    );
    assert_eq!(store.list_instances(None).await.expect("list").len(), before + placed, "every placement is durable");
}
