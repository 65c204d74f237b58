//! Every branch of the planner as a table of situations, and the invariants as properties.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use diplo_api::container::{ContainerInfo, ContainerStatus, Health, LABEL_DEPLOYMENT, LABEL_INSTANCE, RestartPolicy};
use diplo_api::runtime::Runtime;
use proptest::prelude::*;

use super::*;
use crate::model::{DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceDesired, InstanceRecord, InstanceStatus, NodeStatus};
use crate::scheduler::NodeCandidate;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("time")
}

fn deployment(replicas: u32, revision: u32) -> DeploymentRecord {
    DeploymentRecord {
        id: "d1".into(),
        revision,
        spec: DeploymentSpec {
            name: "web".into(),
            replicas,
            runtime: None,
            constraints: Default::default(),
            strategy: Default::default(),
            max_parallel: 1,
            container: diplo_api::container::ContainerSpec {
                image: "busybox".into(),
                restart_policy: RestartPolicy::Always,
                ..Default::default()
            },
            source: None,
        },
        status: DeploymentStatus::Deploying,
        message: String::new(),
        idempotency_key: None,
        created_at: t0(),
        updated_at: t0(),
    }
}

fn instance(id: &str, node: &str, revision: u32, status: InstanceStatus, age_s: i64) -> InstanceRecord {
    InstanceRecord { status, ..InstanceRecord::placed(id.into(), "d1", revision, node, Runtime::Docker, t0() - TimeDelta::seconds(age_s)) }
}

fn container(instance: &str, status: ContainerStatus, exit_code: i64, health: Option<Health>) -> ObservedContainer {
    let labels = BTreeMap::from([(LABEL_INSTANCE.to_owned(), instance.to_owned()), (LABEL_DEPLOYMENT.to_owned(), "web".to_owned())]);
    ObservedContainer {
        runtime: Runtime::Docker,
        info: ContainerInfo {
            exit_code,
            health,
            labels,
            ..ContainerInfo::new(format!("c-{instance}"), format!("web-{instance}"), "", status)
        },
    }
}

fn running(instance: &str) -> ObservedContainer {
    container(instance, ContainerStatus::Running, 0, None)
}

/// Nodes `(id, status, connected)`, all offering Docker with room for anything.
fn snapshot(nodes: &[(&str, NodeStatus, bool)], observed: Vec<(&str, ObservedContainer)>, in_flight: &[&str]) -> Snapshot {
    let states =
        nodes.iter().map(|(id, status, connected)| ((*id).to_owned(), NodeState { status: *status, connected: *connected })).collect();
    let candidates = nodes
        .iter()
        .map(|(id, status, connected)| NodeCandidate {
            id: (*id).into(),
            name: (*id).into(),
            os: "linux".into(),
            arch: "amd64".into(),
            ready: *status == NodeStatus::Ready && *connected,
            runtimes: vec![Runtime::Docker],
            ..Default::default()
        })
        .collect();
    Snapshot::new(
        states,
        observed.into_iter().map(|(n, c)| (n.to_owned(), c)).collect(),
        in_flight.iter().map(|k| CommandKey::Instance((*k).to_owned())).collect(),
        candidates,
        HashMap::new(),
    )
}

fn ids() -> impl FnMut() -> String {
    let mut next = 0;
    move || {
        next += 1;
        format!("new{next}")
    }
}

fn run_plan(snapshot: &Snapshot, deployment: &DeploymentRecord, instances: &[InstanceRecord]) -> Plan {
    plan(snapshot, deployment, instances, t0(), &mut ids())
}

/// `(instance, op name)` of every command.
fn commands(plan: &Plan) -> Vec<(String, &'static str)> {
    plan.commands
        .iter()
        .map(|c| {
            let op = match c.op {
                InstanceOp::Create(_) => "create",
                InstanceOp::Start(_) => "start",
                InstanceOp::Restart(_) => "restart",
                InstanceOp::Remove(_) => "remove",
            };
            let id = match &c.target {
                Target::Instance { instance_id, .. } | Target::Orphan { instance_id } => instance_id.clone(),
            };
            (id, op)
        })
        .collect()
}

fn cmd(id: &str, op: &'static str) -> (String, &'static str) {
    (id.to_owned(), op)
}

fn updated<'a>(plan: &'a Plan, id: &str) -> &'a InstanceRecord {
    plan.update.iter().find(|i| i.id == id).unwrap_or_else(|| panic!("{id} not updated in {plan:#?}"))
}

const READY: NodeStatus = NodeStatus::Ready;
const DOWN: NodeStatus = NodeStatus::Down;

#[test]
fn a_deployment_whose_image_is_not_built_yet_plans_nothing() {
    let world = snapshot(&[("n1", READY, true)], vec![], &[]);
    for status in [DeploymentStatus::Building, DeploymentStatus::Failed] {
        let mut waiting = deployment(2, 0);
        waiting.spec.container.image = String::new();
        waiting.status = status;
        let plan = run_plan(&world, &waiting, &[]);
        assert!(plan.insert.is_empty() && plan.commands.is_empty() && plan.status.is_none(), "{status:?}: {plan:#?}");
    }
}

#[test]
fn while_a_new_image_builds_the_running_revision_is_kept_and_the_status_stays_building() {
    let world = snapshot(&[("n1", READY, true), ("n2", READY, true)], vec![("n1", running("a"))], &[]);
    let mut rebuilding = deployment(2, 1);
    rebuilding.status = DeploymentStatus::Building;
    rebuilding.message = "building b-2".into();
    let plan = run_plan(&world, &rebuilding, &[instance("a", "n1", 1, InstanceStatus::Running, 60)]);
    assert_eq!(plan.insert.len(), 1, "the missing replica is still placed: {plan:#?}");
    assert!(plan.delete.is_empty());
    assert_eq!(plan.status, None, "the build's end decides the status");
}

#[test]
fn a_new_deployment_places_and_creates_every_replica() {
    let world = snapshot(&[("n1", READY, true), ("n2", READY, true)], vec![], &[]);
    let plan = run_plan(&world, &deployment(2, 1), &[]);
    assert_eq!(plan.insert.len(), 2);
    let nodes: HashSet<_> = plan.insert.iter().map(|i| i.node_id.clone().expect("placed")).collect();
    assert_eq!(nodes.len(), 2, "spread over both nodes (anti-affinity)");
    assert_eq!(commands(&plan), [cmd("new1", "create"), cmd("new2", "create")]);
    assert!(plan.insert.iter().all(|i| i.status == InstanceStatus::Starting && i.revision == 1));
    let InstanceOp::Create(spec) = &plan.commands[0].op else { panic!("create") };
    assert_eq!(spec.labels.get(LABEL_INSTANCE).map(String::as_str), Some("new1"), "the container carries its instance id");
    assert_eq!(plan.status, Some((DeploymentStatus::Deploying, "0/2 running".into())));
    assert_eq!(plan.events.iter().filter(|e| e.kind == "instance.placed").count(), 2);
}

#[test]
fn an_instance_on_a_down_node_is_lost_and_replaced_elsewhere() {
    let world = snapshot(&[("n1", DOWN, false), ("n2", READY, true)], vec![], &[]);
    let lost = instance("i1", "n1", 1, InstanceStatus::Running, 60);
    let plan = run_plan(&world, &deployment(1, 1), &[lost]);
    assert_eq!(updated(&plan, "i1").status, InstanceStatus::Lost);
    assert_eq!(plan.insert.len(), 1);
    assert_eq!(plan.insert[0].node_id.as_deref(), Some("n2"));
    assert_eq!(commands(&plan), [cmd("new1", "create")]);
    assert!(plan.events.iter().any(|e| e.kind == "instance.lost" && e.subject == "i1"));
}

#[test]
fn a_lost_copy_is_kept_until_its_replacement_runs() {
    let mut lost = instance("i1", "n1", 1, InstanceStatus::Lost, 60);
    lost.message = "node n1 is down; replaced elsewhere".into();
    let replacement = instance("i2", "n2", 1, InstanceStatus::Starting, 1);
    // n1 is back and still runs the lost copy; the replacement is not running yet.
    let world = snapshot(&[("n1", READY, true), ("n2", READY, true)], vec![("n1", running("i1"))], &[]);
    let plan = run_plan(&world, &deployment(1, 1), &[lost.clone(), replacement.clone()]);
    assert!(commands(&plan).is_empty(), "{plan:#?}");
    assert!(plan.delete.is_empty());
    // Once the replacement runs, the lost copy goes.
    let world = snapshot(&[("n1", READY, true), ("n2", READY, true)], vec![("n1", running("i1")), ("n2", running("i2"))], &[]);
    let plan = run_plan(&world, &deployment(1, 1), &[lost.clone(), replacement]);
    assert_eq!(commands(&plan), [cmd("i1", "remove")]);
    // A lost copy whose container is gone is simply forgotten.
    let world = snapshot(&[("n1", READY, true), ("n2", READY, true)], vec![("n2", running("i2"))], &[]);
    let plan = run_plan(&world, &deployment(1, 1), &[lost, instance("i2", "n2", 1, InstanceStatus::Running, 1)]);
    assert_eq!(plan.delete, ["i1"]);
}

#[test]
fn an_unhealthy_container_is_left_to_its_nodes_supervisor() {
    let world = snapshot(&[("n1", READY, true)], vec![("n1", container("i1", ContainerStatus::Running, 0, Some(Health::Unhealthy)))], &[]);
    let plan = run_plan(&world, &deployment(1, 1), &[instance("i1", "n1", 1, InstanceStatus::Running, 60)]);
    assert!(commands(&plan).is_empty(), "the node restarts it by its policy, not the control plane as well");
    let failed = updated(&plan, "i1");
    assert_eq!(failed.status, InstanceStatus::Failed);
    assert!(failed.message.contains("health check failing") && failed.message.contains("always"), "{}", failed.message);
    assert!(plan.insert.is_empty(), "a failing instance is restarted in place, not replaced");
}

#[test]
fn an_exit_is_restarted_by_policy_after_the_back_off() {
    // (policy, exit code, restarts so far, seconds since the last change, started again?)
    let cases = [
        (RestartPolicy::Always, 0, 0, 60, true),
        (RestartPolicy::Always, 1, 9, 60, true),
        (RestartPolicy::Always, 1, 0, 2, false),
        (RestartPolicy::ON_FAILURE, 1, 0, 60, true),
        (RestartPolicy::ON_FAILURE, 0, 0, 60, false),
        (RestartPolicy::OnFailure(Some(2)), 1, 1, 60, true),
        (RestartPolicy::OnFailure(Some(2)), 1, 2, 60, false),
        (RestartPolicy::No, 1, 0, 60, false),
    ];
    for (policy, exit_code, restart_count, age, restarted) in cases {
        let mut d = deployment(1, 1);
        d.spec.container.restart_policy = policy;
        let mut exited = container("i1", ContainerStatus::Exited, exit_code, None);
        exited.info.restart_count = restart_count;
        let world = snapshot(&[("n1", READY, true)], vec![("n1", exited)], &[]);
        let plan = run_plan(&world, &d, &[instance("i1", "n1", 1, InstanceStatus::Failed, age)]);
        let expected = if restarted { vec![cmd("i1", "start")] } else { vec![] };
        assert_eq!(commands(&plan), expected, "{policy:?} exit {exit_code} after {restart_count} restarts, {age} s");
    }
}

#[test]
fn a_missing_container_is_created_again_after_a_pause() {
    // (status, seconds since the last change, created again?)
    let cases = [
        (InstanceStatus::Starting, 5, false),
        (InstanceStatus::Starting, 30, true),
        (InstanceStatus::Running, 10, true),
        (InstanceStatus::Failed, 2, false),
        (InstanceStatus::Failed, 10, true),
    ];
    for (status, age, created) in cases {
        let world = snapshot(&[("n1", READY, true)], vec![], &[]);
        let plan = run_plan(&world, &deployment(1, 1), &[instance("i1", "n1", 1, status, age)]);
        let expected = if created { vec![cmd("i1", "create")] } else { vec![] };
        assert_eq!(commands(&plan), expected, "{status:?} after {age} s");
        assert!(plan.insert.is_empty(), "the same instance, not a new one");
    }
}

#[test]
fn an_instance_with_a_command_under_way_gets_no_other() {
    let world = snapshot(&[("n1", READY, true)], vec![("n1", container("i1", ContainerStatus::Exited, 1, None))], &["i1"]);
    let plan = run_plan(&world, &deployment(1, 1), &[instance("i1", "n1", 1, InstanceStatus::Failed, 60)]);
    assert!(commands(&plan).is_empty());
    let world = snapshot(&[("n1", READY, true)], vec![], &["i1"]);
    let plan = run_plan(&world, &deployment(1, 1), &[instance("i1", "n1", 1, InstanceStatus::Starting, 60)]);
    assert!(commands(&plan).is_empty());
}

#[test]
fn a_rolling_update_starts_at_most_max_parallel_and_retires_old_copies_as_new_ones_run() {
    let mut d = deployment(4, 2);
    d.spec.max_parallel = 2;
    let old: Vec<InstanceRecord> = (1..=4).map(|n| instance(&format!("o{n}"), "n1", 1, InstanceStatus::Running, 100 + n)).collect();
    let observed: Vec<_> = (1..=4).map(|n| ("n1", running(&format!("o{n}")))).collect();
    let world = snapshot(&[("n1", READY, true)], observed.clone(), &[]);
    let plan = run_plan(&world, &d, &old);
    assert_eq!(commands(&plan), [cmd("new1", "create"), cmd("new2", "create")], "two at a time");
    assert!(plan.update.iter().all(|i| i.desired == InstanceDesired::Run), "no old copy retired before a new one runs");

    // Two new copies run: two old ones retire (the oldest first), two more new ones start.
    let mut instances = old.clone();
    instances.push(instance("n1a", "n1", 2, InstanceStatus::Running, 5));
    instances.push(instance("n1b", "n1", 2, InstanceStatus::Running, 5));
    let mut observed = observed;
    observed.extend([("n1", running("n1a")), ("n1", running("n1b"))]);
    let world = snapshot(&[("n1", READY, true)], observed, &[]);
    let plan = run_plan(&world, &d, &instances);
    let retired: Vec<&str> = plan.update.iter().filter(|i| i.desired == InstanceDesired::Remove).map(|i| i.id.as_str()).collect();
    assert_eq!(retired, ["o3", "o4"], "the two oldest");
    assert_eq!(commands(&plan), [cmd("new1", "create"), cmd("new2", "create"), cmd("o3", "remove"), cmd("o4", "remove")]);
}

#[test]
fn scaling_down_removes_the_least_advanced_newest_first() {
    // Two running, two not: scaling to 2 removes the two that do not run.
    let two = [instance("run", "n1", 1, InstanceStatus::Running, 100), instance("new-run", "n1", 1, InstanceStatus::Running, 10)];
    let starting = [instance("s-old", "n1", 1, InstanceStatus::Starting, 9), instance("s-new", "n1", 1, InstanceStatus::Starting, 8)];
    let world = snapshot(&[("n1", READY, true)], vec![("n1", running("run")), ("n1", running("new-run"))], &["s-old", "s-new"]);
    let all: Vec<InstanceRecord> = two.iter().chain(&starting).cloned().collect();
    let plan = run_plan(&world, &deployment(3, 1), &all);
    let removed: Vec<&str> = plan.update.iter().filter(|i| i.desired == InstanceDesired::Remove).map(|i| i.id.as_str()).collect();
    assert_eq!(removed, ["s-new"], "of the two starting, the newest goes");

    let instances = [
        instance("run-old", "n1", 1, InstanceStatus::Running, 100),
        instance("run-new", "n1", 1, InstanceStatus::Running, 10),
        instance("starting", "n1", 1, InstanceStatus::Starting, 50),
        instance("failed", "n1", 1, InstanceStatus::Failed, 40),
    ];
    let observed = vec![
        ("n1", running("run-old")),
        ("n1", running("run-new")),
        ("n1", container("failed", ContainerStatus::Exited, 1, None)),
        ("n1", container("starting", ContainerStatus::Created, 0, None)),
    ];
    let world = snapshot(&[("n1", READY, true)], observed, &["failed", "starting"]);
    let plan = run_plan(&world, &deployment(1, 1), &instances);
    let mut removed: Vec<&str> = plan.update.iter().filter(|i| i.desired == InstanceDesired::Remove).map(|i| i.id.as_str()).collect();
    removed.sort_unstable();
    assert_eq!(removed, ["failed", "run-new", "starting"], "the running copy kept is the oldest");
    assert_eq!(commands(&plan), [cmd("run-new", "remove")], "the others have commands under way");
}

#[test]
fn an_instance_marked_for_removal_is_deleted_once_its_container_is_gone() {
    let mut marked = instance("i1", "n1", 1, InstanceStatus::Running, 10);
    marked.desired = InstanceDesired::Remove;
    let world = snapshot(&[("n1", READY, true)], vec![("n1", running("i1"))], &[]);
    assert_eq!(commands(&run_plan(&world, &deployment(0, 1), std::slice::from_ref(&marked))), [cmd("i1", "remove")]);
    let world = snapshot(&[("n1", READY, true)], vec![], &[]);
    assert_eq!(run_plan(&world, &deployment(0, 1), std::slice::from_ref(&marked)).delete, ["i1"]);
    // Its node unreachable but not down: wait (the container may still run).
    let world = snapshot(&[("n1", NodeStatus::Unhealthy, true)], vec![], &[]);
    assert!(run_plan(&world, &deployment(0, 1), &[marked]).delete.is_empty());
}

#[test]
fn deletion_removes_containers_then_records_then_the_deployment() {
    let mut d = deployment(2, 1);
    d.status = DeploymentStatus::Deleting;
    let instances = [instance("i1", "n1", 1, InstanceStatus::Running, 10), instance("i2", "n2", 1, InstanceStatus::Running, 10)];
    let world = snapshot(&[("n1", READY, true), ("n2", DOWN, false)], vec![("n1", running("i1")), ("n2", running("i2"))], &[]);
    let plan = run_plan(&world, &d, &instances);
    assert_eq!(commands(&plan), [cmd("i1", "remove")]);
    assert_eq!(plan.delete, ["i2"], "a down node's instance is forgotten");
    assert!(!plan.delete_deployment);
    let world = snapshot(&[("n1", READY, true), ("n2", DOWN, false)], vec![], &[]);
    let plan = run_plan(&world, &d, &instances);
    assert_eq!(plan.delete, ["i1", "i2"]);
    assert!(plan.delete_deployment);
    assert!(plan.events.iter().any(|e| e.kind == "deployment.deleted"));
}

#[test]
fn status_says_running_degraded_or_deploying_with_the_reasons() {
    let world = snapshot(&[("n1", READY, true)], vec![("n1", running("i1"))], &[]);
    let plan = run_plan(&world, &deployment(1, 1), &[instance("i1", "n1", 1, InstanceStatus::Starting, 1)]);
    assert_eq!(plan.status, Some((DeploymentStatus::Running, String::new())));
    assert_eq!(updated(&plan, "i1").status, InstanceStatus::Running);

    let mut d = deployment(1, 1);
    d.spec.constraints.arch = Some("riscv64".into());
    let plan = run_plan(&world, &d, &[]);
    let Some((DeploymentStatus::Degraded, message)) = &plan.status else { panic!("{plan:#?}") };
    assert!(message.contains("cannot place every replica") && message.contains("n1"), "{message}");

    // Unchanged status: nothing to write.
    let mut d = deployment(1, 1);
    d.status = DeploymentStatus::Running;
    let mut converged = instance("i1", "n1", 1, InstanceStatus::Running, 1);
    converged.container_id = Some("c-i1".into());
    let plan = run_plan(&world, &d, &[converged]);
    assert_eq!(plan.status, None);
    assert_eq!(plan, Plan::default(), "a converged deployment plans nothing");
}

#[test]
fn surplus_copies_of_forgotten_instances_are_removed_but_direct_containers_never() {
    let mut direct = running("x1");
    direct.info.labels.insert(LABEL_DEPLOYMENT.into(), DIRECT.into());
    let world = snapshot(
        &[("n1", READY, true), ("n2", DOWN, false)],
        vec![("n1", running("gone")), ("n1", running("known")), ("n1", direct), ("n2", running("gone2"))],
        &[],
    );
    let commands = plan_orphans(&world, &HashSet::from(["known"]));
    assert_eq!(commands.len(), 1, "{commands:#?}");
    assert_eq!(commands[0].target, Target::Orphan { instance_id: "gone".into() });
    assert_eq!(commands[0].op, InstanceOp::Remove("c-gone".into()));
}

#[test]
fn accounting_a_plan_makes_its_nodes_busier_for_the_next_deployment() {
    let mut world = snapshot(&[("n1", READY, true), ("n2", READY, true)], vec![], &[]);
    let mut d = deployment(1, 1);
    d.spec.container.ports =
        vec![diplo_api::container::PortMapping { host_port: 8080, container_port: 80, protocol: diplo_api::container::Protocol::Tcp }];
    let first = run_plan(&world, &d, &[]);
    world.account(&first, &d.spec);
    let mut other = d.clone();
    other.id = "d2".into();
    let second = run_plan(&world, &other, &[]);
    assert_ne!(first.insert[0].node_id, second.insert[0].node_id, "the host port is taken on the first node");
}

// ---- properties ----

fn spec(cpu_millis: Option<u32>, memory_bytes: Option<u64>) -> DeploymentSpec {
    DeploymentSpec {
        name: "web".into(),
        replicas: 1,
        runtime: None,
        constraints: Default::default(),
        strategy: Default::default(),
        max_parallel: 1,
        container: diplo_api::container::ContainerSpec { cpu_millis, memory_bytes, ..Default::default() },
        source: None,
    }
}

fn candidate(cpus: u32, memory_bytes: u64) -> NodeCandidate {
    NodeCandidate {
        id: "n".into(),
        name: "n".into(),
        os: "linux".into(),
        arch: "amd64".into(),
        raspberry_pi: false,
        ready: true,
        cordoned: false,
        labels: Default::default(),
        reported_labels: Default::default(),
        runtimes: Vec::new(),
        cpu_millis: u64::from(cpus) * 1000,
        memory_bytes,
        used_cpu_millis: 0,
        used_memory_bytes: 0,
        used_ports: Default::default(),
        images: Default::default(),
        instances: Default::default(),
        volumes: Default::default(),
    }
}

proptest! {
    /// Usage adds up without overflowing, whatever nodes report and specs ask for
    /// (u64::MAX included): it saturates, and placement still runs.
    #[test]
    fn usage_saturates_instead_of_overflowing(
        cpus in prop_oneof![Just(u32::MAX), any::<u32>()],
        memory in prop_oneof![Just(u64::MAX), any::<u64>()],
        requests in proptest::collection::vec((prop_oneof![Just(u32::MAX), any::<u32>()], prop_oneof![Just(u64::MAX), any::<u64>()]), 1..20),
    ) {
        let mut node = candidate(cpus, memory);
        let (mut cpu_sum, mut memory_sum) = (0u128, 0u128);
        for (cpu, mem) in &requests {
            add_instance(&mut node, "d", &spec(Some(*cpu), Some(*mem)));
            cpu_sum += u128::from(*cpu);
            memory_sum += u128::from(*mem);
        }
        prop_assert_eq!(u128::from(node.used_cpu_millis), cpu_sum.min(u128::from(u64::MAX)));
        prop_assert_eq!(u128::from(node.used_memory_bytes), memory_sum.min(u128::from(u64::MAX)));
        let request = request_for("d", &spec(Some(u32::MAX), Some(u64::MAX)), 3, None);
        let _ = crate::scheduler::place(&[node], &request);
    }
}

/// One instance of a generated case: (node, at the current revision, status, desired
/// remove, its container's state and health if observed, age in seconds).
type CaseInstance = (usize, bool, InstanceStatus, bool, Option<(ContainerStatus, bool)>, i64);

#[derive(Debug, Clone)]
struct Case {
    nodes: Vec<(NodeStatus, bool)>,
    /// (node, revision is current, status, desired remove, container state, age)
    instances: Vec<CaseInstance>,
    replicas: u32,
    max_parallel: u32,
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![3 => Just(NodeStatus::Ready), 1 => Just(NodeStatus::Unhealthy), 1 => Just(NodeStatus::Down)]
}

fn instance_status() -> impl Strategy<Value = InstanceStatus> {
    prop_oneof![
        Just(InstanceStatus::Starting),
        Just(InstanceStatus::Running),
        Just(InstanceStatus::Failed),
        Just(InstanceStatus::Lost),
        Just(InstanceStatus::Pending)
    ]
}

fn container_status() -> impl Strategy<Value = ContainerStatus> {
    prop_oneof![3 => Just(ContainerStatus::Running), 1 => Just(ContainerStatus::Exited), 1 => Just(ContainerStatus::Created)]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..5, 0u32..6, 1u32..4).prop_flat_map(|(nodes, replicas, max_parallel)| {
        (
            proptest::collection::vec((node_status(), prop::bool::weighted(0.8)), nodes),
            proptest::collection::vec(
                (
                    0..nodes,
                    any::<bool>(),
                    instance_status(),
                    prop::bool::weighted(0.15),
                    prop::option::weighted(0.8, (container_status(), prop::bool::weighted(0.8))),
                    0i64..60,
                ),
                0..10,
            ),
        )
            .prop_map(move |(nodes, instances)| Case { nodes, instances, replicas, max_parallel })
    })
}

impl Case {
    fn build(&self) -> (Snapshot, DeploymentRecord, Vec<InstanceRecord>) {
        let node_ids: Vec<String> = (0..self.nodes.len()).map(|n| format!("n{n}")).collect();
        let nodes: Vec<(&str, NodeStatus, bool)> =
            self.nodes.iter().enumerate().map(|(n, (status, connected))| (node_ids[n].as_str(), *status, *connected)).collect();
        let mut d = deployment(self.replicas, 2);
        d.spec.max_parallel = self.max_parallel;
        let mut instances = Vec::new();
        let mut observed = Vec::new();
        for (n, (node, current, status, remove, container_state, age)) in self.instances.iter().enumerate() {
            let id = format!("i{n}");
            let mut record = instance(&id, &node_ids[*node], if *current { 2 } else { 1 }, *status, *age);
            if *remove {
                record.desired = InstanceDesired::Remove;
            }
            instances.push(record);
            if let Some((state, healthy)) = container_state {
                let health = (!healthy).then_some(Health::Unhealthy);
                observed.push((node_ids[*node].as_str(), container(&id, *state, 1, health)));
            }
        }
        (snapshot(&nodes, observed, &[]), d, instances)
    }
}

proptest! {
    #[test]
    fn the_same_input_gives_the_same_plan(case in case()) {
        let (world, d, instances) = case.build();
        prop_assert_eq!(run_plan(&world, &d, &instances), run_plan(&world, &d, &instances));
    }

    /// A pass never adds instances beyond `replicas + max_parallel` live ones, and during
    /// a rolling update never starts more than `max_parallel` at once.
    #[test]
    fn a_pass_never_starts_more_than_replicas_plus_max_parallel(case in case()) {
        let (world, d, instances) = case.build();
        let plan = run_plan(&world, &d, &instances);
        let mut after: HashMap<&str, &InstanceRecord> = instances.iter().map(|i| (i.id.as_str(), i)).collect();
        for record in plan.update.iter().chain(&plan.insert) {
            after.insert(record.id.as_str(), record);
        }
        let live = after.values().filter(|i| i.desired == InstanceDesired::Run && i.status != InstanceStatus::Lost).count();
        let bound = (d.spec.replicas + d.spec.max_parallel) as usize;
        prop_assert!(plan.insert.is_empty() || live <= bound, "{} live after inserting {}: {:#?}", live, plan.insert.len(), plan);
        // Old copies still live (not lost, their node not down) bound what starts.
        let old_live = instances.iter().any(|i| {
            i.revision != d.revision
                && i.desired == InstanceDesired::Run
                && i.status != InstanceStatus::Lost
                && !world.down(i.node_id.as_deref().unwrap_or_default())
        });
        if old_live {
            prop_assert!(plan.insert.len() <= d.spec.max_parallel as usize);
        }
    }

    /// When some copy runs (healthy, on a node that is not down), a pass with replicas to
    /// keep never removes every running copy: the last one stays while replacements start.
    #[test]
    fn the_last_running_copy_is_never_removed(case in case()) {
        let (world, d, instances) = case.build();
        let runs = |i: &InstanceRecord| {
            i.desired == InstanceDesired::Run
                && i.status != InstanceStatus::Lost
                && !world.down(i.node_id.as_deref().unwrap_or_default())
                && world.container_of(i).is_some_and(|c| c.status == ContainerStatus::Running && c.health != Some(Health::Unhealthy))
        };
        let running: Vec<&InstanceRecord> = instances.iter().filter(|i| runs(i)).collect();
        if running.is_empty() || d.spec.replicas == 0 {
            return Ok(()); // nothing runs, or nothing is to be kept
        }
        let plan = run_plan(&world, &d, &instances);
        let removed: HashSet<String> = plan
            .update
            .iter()
            .filter(|i| i.desired == InstanceDesired::Remove)
            .map(|i| i.id.clone())
            .chain(plan.commands.iter().filter(|c| matches!(c.op, InstanceOp::Remove(_))).filter_map(|c| match c.key() {
                CommandKey::Instance(id) => Some(id),
                CommandKey::SurplusCopy(_) => None,
            }))
            .chain(plan.delete.iter().cloned())
            .collect();
        prop_assert!(running.iter().any(|i| !removed.contains(&i.id)), "every running copy removed: {:#?}", plan);
    }

    /// Every command targets a node that can take it, and at most one per instance.
    #[test]
    fn commands_go_to_usable_nodes_one_per_instance(case in case()) {
        let (world, d, instances) = case.build();
        let plan = run_plan(&world, &d, &instances);
        let mut keys = HashSet::new();
        for command in &plan.commands {
            prop_assert!(world.usable(&command.node_id), "{:?}", command);
            prop_assert!(keys.insert(command.key()), "two commands for {:?}", command.key());
        }
        // New records are placed on usable nodes too.
        for record in &plan.insert {
            prop_assert!(world.usable(record.node_id.as_deref().unwrap_or_default()));
        }
    }
}
