//! The one conformance suite for [`Store`], run against both backends.
//!
//! Every case in `cases` is a generic async function over `Arc<dyn Store>`; the
//! `conformance!` macro turns each into one test per backend:
//!
//! * `sqlite::<case>` on a fresh file in a temporary directory;
//! * `cached::<case>` on the in-memory view of nodes, deployments and instances
//!   (`CachedStore`) written through to a fresh SQLite file;
//! * `postgres::<case>` on a fresh database `diplo_conf_<random>` created through
//!   `DIPLO_TEST_DATABASE_URL` (e.g. `postgres://diplo:diplo@127.0.0.1:5432/diplo_test`)
//!   and dropped afterwards. Without that variable the PostgreSQL tests are skipped
//!   loudly, or fail when `CI=true`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use diplo_control_plane::store::{self, Store};

type Case = fn(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
/// A case that opens the store itself (several times, as several control planes would).
type UrlCase = fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs a case on a fresh SQLite file.
async fn with_sqlite(case: Case) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("state").join("diplo.db").display());
    let store = store::open(&url).await.expect("open sqlite store");
    assert_eq!(store.backend(), "sqlite");
    case(store).await;
}

/// Runs a case on the in-memory view written through to a fresh SQLite file: it must
/// answer exactly as the database does.
async fn with_cached(case: Case) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("state").join("diplo.db").display());
    let store = store::CachedStore::load(store::open(&url).await.expect("open sqlite store")).await.expect("load");
    case(store).await;
}

/// Runs a case on a fresh PostgreSQL database, or skips (fails on CI) without one.
async fn with_postgres(case: Case) {
    let Some(db) = diplo_tests::postgres::TestDatabase::create().await else {
        return;
    };
    let store = store::open(&db.url).await.expect("open postgres store");
    assert_eq!(store.backend(), "postgres");
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(case(store))).await;
    db.drop_best_effort().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs a URL case on the URL of a fresh SQLite file.
async fn with_sqlite_url(case: UrlCase) {
    let dir = tempfile::tempdir().expect("temp dir");
    case(format!("sqlite://{}", dir.path().join("state").join("diplo.db").display())).await;
}

/// Runs a URL case on the URL of a fresh PostgreSQL database, or skips (fails on CI).
async fn with_postgres_url(case: UrlCase) {
    let Some(db) = diplo_tests::postgres::TestDatabase::create().await else {
        return;
    };
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(case(db.url.clone()))).await;
    db.drop_best_effort().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?; by_url: $($url_case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::with_sqlite(|s| Box::pin(super::cases::$case(s))).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $url_case() {
                    super::with_sqlite_url(|url| Box::pin(super::cases::$url_case(url))).await;
                }
            )*
        }
        mod cached {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::with_cached(|s| Box::pin(super::cases::$case(s))).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::with_postgres(|s| Box::pin(super::cases::$case(s))).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $url_case() {
                    super::with_postgres_url(|url| Box::pin(super::cases::$url_case(url))).await;
                }
            )*
        }
    };
}

conformance!(
    nodes_insert_get_list,
    nodes_duplicate_id_or_name,
    nodes_record_session,
    nodes_apply_status_changes,
    nodes_cordon,
    nodes_delete,
    join_tokens_crud,
    join_tokens_expired_and_revoked,
    join_tokens_single_use,
    join_tokens_single_use_race,
    join_tokens_multi_use,
    api_tokens_crud,
    events_sequence_and_paging,
    events_concurrent_appends,
    events_retention,
    events_append_batch,
    deployments_create_get_list,
    deployments_duplicates,
    deployments_save_and_revisions,
    deployments_save_conflicts,
    deployments_status_is_compare_and_set,
    deployments_store_every_status,
    deployments_delete_cascades,
    instances_insert_list,
    instances_insert_is_atomic,
    instances_update,
    instances_delete,
    instances_large_batches,
    builds_insert_get_list,
    builds_update_is_compare_and_set,
    builds_logs,
    registry_credentials_set_list_delete,
    generation_moves_with_every_write,
    stacks_save_get_list_delete;
    by_url:
    writer_acquire_refuse_release,
    writer_freed_when_its_holder_dies,
);

mod cases {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use chrono::{DateTime, Duration, TimeZone, Utc};
    use diplo_api::container::{ContainerSpec, HealthCheck, Mount, PortMapping, Protocol, RestartPolicy};
    use diplo_api::fingerprint::Fingerprint;
    use diplo_api::runtime::Runtime;
    use diplo_control_plane::model::{
        ApiTokenRecord, Constraints, DeploymentRecord, DeploymentSpec, DeploymentStatus, InstanceDesired, InstanceRecord, InstanceStatus,
        JoinTokenRecord, NewEvent, NodeRecord, NodeStatus, NodeStatusChange, Role, Strategy,
    };
    use diplo_control_plane::store::{self, Store, StoreError, WriterIdentity};

    /// A fixed time at millisecond precision (what the stores keep).
    fn t0() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_750_000_000_123).single().expect("valid time")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn fingerprint(hostname: &str, cpus: u32) -> Fingerprint {
        Fingerprint {
            hostname: hostname.to_owned(),
            os: "linux".to_owned(),
            os_release: "Debian GNU/Linux 12 (bookworm)".to_owned(),
            arch: "arm64".to_owned(),
            kernel: "6.1.0".to_owned(),
            cpus,
            memory_bytes: 8 << 30,
            raspberry_pi_model: "Raspberry Pi 5 Model B Rev 1.0".to_owned(),
            virtualization: "bare-metal".to_owned(),
            runtimes: Vec::new(),
            agent_version: "0.1.0".to_owned(),
            labels: labels(&[("zone", "attic")]),
            builders: vec![diplo_api::build::Builder::Buildah],
            build_dir: "/var/lib/diplo/agent/builds".to_owned(),
            // Kept with the node, so that sticky placement survives a restart.
            volumes: [(diplo_api::runtime::Runtime::Lxc, vec!["data".to_owned()])].into(),
        }
    }

    fn node(id: &str, name: &str) -> NodeRecord {
        NodeRecord {
            id: id.to_owned(),
            name: name.to_owned(),
            status: NodeStatus::Ready,
            fingerprint: fingerprint(name, 4),
            cordoned: false,
            labels: labels(&[("tier", "edge"), ("zone", "attic")]),
            joined_at: t0(),
            last_seen_at: t0() + Duration::seconds(5),
            address: "192.0.2.10:40000".to_owned(),
        }
    }

    fn join_token(id: &str, created: DateTime<Utc>, single_use: bool) -> JoinTokenRecord {
        JoinTokenRecord {
            id: id.to_owned(),
            secret_hash: format!("{id}-hash"),
            created_at: created,
            expires_at: created + Duration::hours(1),
            single_use,
            uses: 0,
            revoked: false,
            labels: labels(&[("pool", "pis")]),
        }
    }

    fn api_token(id: &str, created: DateTime<Utc>, role: Role) -> ApiTokenRecord {
        ApiTokenRecord {
            id: id.to_owned(),
            secret_hash: format!("{id}-hash"),
            name: format!("token {id}"),
            role,
            created_at: created,
            expires_at: None,
            revoked: false,
        }
    }

    fn event(n: u32) -> NewEvent {
        NewEvent {
            at: t0() + Duration::milliseconds(i64::from(n)),
            kind: "node.ready".to_owned(),
            actor: "system".to_owned(),
            subject: format!("node-{n}"),
            message: format!("event number {n}"),
        }
    }

    /// A plain spec: `replicas` instances of `image`.
    fn spec(name: &str, image: &str, replicas: u32) -> DeploymentSpec {
        DeploymentSpec {
            name: name.to_owned(),
            replicas,
            max_parallel: 1,
            container: ContainerSpec { image: image.to_owned(), ..ContainerSpec::default() },
            ..DeploymentSpec::default()
        }
    }

    /// A spec with every field set, to check the JSON round trip.
    fn full_spec(name: &str) -> DeploymentSpec {
        DeploymentSpec {
            name: name.to_owned(),
            replicas: 5,
            runtime: Some(Runtime::Containerd),
            constraints: Constraints {
                node: Some("alpha".to_owned()),
                labels: labels(&[("zone", "attic")]),
                os: Some("linux".to_owned()),
                arch: Some("arm64".to_owned()),
            },
            strategy: Strategy::Spread,
            max_parallel: 2,
            container: ContainerSpec {
                name: String::new(),
                image: "registry.example/app:1.2.3".to_owned(),
                command: vec!["serve".to_owned(), "--port=8080".to_owned()],
                env: labels(&[("MODE", "prod"), ("QUOTE", "a \"b\" 'c' ünïcode")]),
                ports: vec![PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Udp }],
                mounts: vec![Mount { source: "/srv/data".to_owned(), target: "/data".to_owned(), read_only: true }],
                memory_bytes: Some(256 << 20),
                cpu_millis: Some(500),
                restart_policy: RestartPolicy::UnlessStopped,
                read_only: true,
                tmpfs: vec!["/tmp".to_owned()],
                cap_drop: vec!["ALL".to_owned()],
                no_new_privileges: true,
                labels: labels(&[("team", "web")]),
                healthcheck: Some(HealthCheck {
                    probe: diplo_api::container::HealthProbe::Exec {
                        argv: vec!["curl".to_owned(), "-f".to_owned(), "localhost".to_owned()],
                    },
                    interval: std::time::Duration::from_secs(30),
                    timeout: std::time::Duration::from_millis(2500),
                    retries: 3,
                    start_period: std::time::Duration::from_secs(5),
                }),
                pids_limit: Some(128),
                cap_add: vec!["NET_BIND_SERVICE".to_owned()],
                user: "1000:1000".to_owned(),
                working_dir: "/srv/app".to_owned(),
                stop_signal: "SIGINT".to_owned(),
                stop_grace: Some(20),
                entrypoint: vec!["/bin/sh".to_owned(), "-c".to_owned()],
                memory_reservation: Some(128 << 20),
                network: Some("diplo-shop".to_owned()),
                network_aliases: vec!["web".to_owned()],
                extra_hosts: vec!["db:10.89.0.7".to_owned()],
            },
            source: Some(diplo_control_plane::model::SourceSpec {
                repo_url: "https://git.example/app.git".to_owned(),
                branch: Some("main".to_owned()),
                language: Some("go".to_owned()),
                commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                build_id: "b-1".to_owned(),
                pending: Some(Box::new(DeploymentSpec { name: name.to_owned(), replicas: 1, ..Default::default() })),
            }),
        }
    }

    /// A new deployment at revision 1, created at `t0()`.
    fn deployment(id: &str, name: &str, key: Option<&str>) -> DeploymentRecord {
        DeploymentRecord {
            id: id.to_owned(),
            revision: 1,
            spec: spec(name, "nginx:1.27", 2),
            status: DeploymentStatus::Deploying,
            message: String::new(),
            idempotency_key: key.map(str::to_owned),
            created_at: t0(),
            updated_at: t0(),
        }
    }

    /// A pending, unplaced instance at revision 1, created `offset_ms` after `t0()`.
    fn instance(id: &str, deployment_id: &str, offset_ms: i64) -> InstanceRecord {
        let at = t0() + Duration::milliseconds(offset_ms);
        InstanceRecord {
            id: id.to_owned(),
            deployment_id: deployment_id.to_owned(),
            revision: 1,
            node_id: None,
            runtime: None,
            container_id: None,
            desired: InstanceDesired::Run,
            status: InstanceStatus::Pending,
            message: String::new(),
            created_at: at,
            updated_at: at,
        }
    }

    async fn get_deployment(store: &dyn Store, key: &str) -> DeploymentRecord {
        store.get_deployment(key).await.expect("get_deployment").unwrap_or_else(|| panic!("no deployment {key}"))
    }

    async fn instance_ids(store: &dyn Store, deployment_id: Option<&str>) -> Vec<String> {
        store.list_instances(deployment_id).await.expect("list_instances").into_iter().map(|i| i.id).collect()
    }

    async fn get_node(store: &dyn Store, key: &str) -> NodeRecord {
        store.get_node(key).await.expect("get_node").unwrap_or_else(|| panic!("no node {key}"))
    }

    // ---- nodes ----

    pub async fn nodes_insert_get_list(store: Arc<dyn Store>) {
        assert!(store.list_nodes().await.expect("list").is_empty());
        assert_eq!(store.get_node("nope").await.expect("get"), None);

        let b = node("n-2", "bravo");
        let a = node("n-1", "alpha");
        let mut c = node("n-3", "charlie");
        c.status = NodeStatus::Down;
        c.cordoned = true;
        c.labels = BTreeMap::new();
        c.fingerprint = Fingerprint::default();
        for n in [&b, &c, &a] {
            store.insert_node(n).await.expect("insert");
        }

        // Round trip by id and by name, every field intact.
        assert_eq!(get_node(&*store, "n-2").await, b);
        assert_eq!(get_node(&*store, "bravo").await, b);
        assert_eq!(get_node(&*store, "charlie").await, c);

        // Ordered by name, whatever the insertion order.
        let names: Vec<String> = store.list_nodes().await.expect("list").into_iter().map(|n| n.name).collect();
        assert_eq!(names, ["alpha", "bravo", "charlie"]);

        // An id wins over another node's equal name.
        let tricky = node("n-4", "n-1");
        store.insert_node(&tricky).await.expect("insert tricky");
        assert_eq!(get_node(&*store, "n-1").await.name, "alpha");
        assert_eq!(get_node(&*store, "n-4").await.name, "n-1");
    }

    pub async fn nodes_duplicate_id_or_name(store: Arc<dyn Store>) {
        store.insert_node(&node("n-1", "alpha")).await.expect("insert");

        match store.insert_node(&node("n-2", "alpha")).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "node");
                assert_eq!(key, "alpha");
            }
            other => panic!("duplicate name: expected AlreadyExists, got {other:?}"),
        }
        match store.insert_node(&node("n-1", "bravo")).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "node");
                assert_eq!(key, "n-1");
            }
            other => panic!("duplicate id: expected AlreadyExists, got {other:?}"),
        }
        // Nothing half-written.
        assert_eq!(store.list_nodes().await.expect("list").len(), 1);
        assert_eq!(store.get_node("bravo").await.expect("get"), None);
    }

    pub async fn nodes_record_session(store: Arc<dyn Store>) {
        let mut n = node("n-1", "alpha");
        n.status = NodeStatus::Down;
        n.cordoned = true;
        store.insert_node(&n).await.expect("insert");

        let fp = fingerprint("alpha-rebuilt", 8);
        let seen = t0() + Duration::minutes(10);
        store.record_session("n-1", &fp, "198.51.100.7:51234", seen).await.expect("session");

        let got = get_node(&*store, "n-1").await;
        assert_eq!(got.fingerprint, fp);
        assert_eq!(got.address, "198.51.100.7:51234");
        assert_eq!(got.status, NodeStatus::Ready);
        assert_eq!(got.last_seen_at, seen);
        // Untouched by a session.
        assert!(got.cordoned);
        assert_eq!(got.joined_at, n.joined_at);
        assert_eq!(got.labels, n.labels);
        assert_eq!(got.name, "alpha");

        match store.record_session("ghost", &fp, "x", seen).await {
            Err(StoreError::NotFound { what: "node", key }) => assert_eq!(key, "ghost"),
            other => panic!("unknown node: expected NotFound, got {other:?}"),
        }
    }

    pub async fn nodes_apply_status_changes(store: Arc<dyn Store>) {
        for (id, name) in [("n-1", "alpha"), ("n-2", "bravo"), ("n-3", "charlie")] {
            store.insert_node(&node(id, name)).await.expect("insert");
        }
        store.apply_status_changes(&[]).await.expect("empty batch");

        let later = t0() + Duration::minutes(3);
        let changes = [
            NodeStatusChange { node_id: "n-1".into(), status: NodeStatus::Unhealthy, last_seen_at: later },
            NodeStatusChange { node_id: "ghost".into(), status: NodeStatus::Down, last_seen_at: later },
            NodeStatusChange { node_id: "n-3".into(), status: NodeStatus::Down, last_seen_at: later + Duration::seconds(1) },
        ];
        store.apply_status_changes(&changes).await.expect("batch with an unknown id");

        let a = get_node(&*store, "n-1").await;
        assert_eq!((a.status, a.last_seen_at), (NodeStatus::Unhealthy, later));
        let b = get_node(&*store, "n-2").await;
        assert_eq!(b, node("n-2", "bravo"), "node outside the batch untouched");
        let c = get_node(&*store, "n-3").await;
        assert_eq!((c.status, c.last_seen_at), (NodeStatus::Down, later + Duration::seconds(1)));
        assert_eq!(store.get_node("ghost").await.expect("get"), None, "unknown id not created");

        // Back to ready.
        let back = [NodeStatusChange { node_id: "n-3".into(), status: NodeStatus::Ready, last_seen_at: later }];
        store.apply_status_changes(&back).await.expect("batch");
        assert_eq!(get_node(&*store, "n-3").await.status, NodeStatus::Ready);
    }

    pub async fn nodes_cordon(store: Arc<dyn Store>) {
        store.insert_node(&node("n-1", "alpha")).await.expect("insert");
        store.set_cordoned("n-1", true).await.expect("cordon");
        assert!(get_node(&*store, "n-1").await.cordoned);
        store.set_cordoned("n-1", true).await.expect("cordon twice");
        assert!(get_node(&*store, "n-1").await.cordoned);
        store.set_cordoned("n-1", false).await.expect("uncordon");
        assert!(!get_node(&*store, "n-1").await.cordoned);

        match store.set_cordoned("ghost", true).await {
            Err(StoreError::NotFound { what: "node", key }) => assert_eq!(key, "ghost"),
            other => panic!("unknown node: expected NotFound, got {other:?}"),
        }
        // By name is not by id.
        assert!(matches!(store.set_cordoned("alpha", true).await, Err(StoreError::NotFound { .. })));
    }

    pub async fn nodes_delete(store: Arc<dyn Store>) {
        store.insert_node(&node("n-1", "alpha")).await.expect("insert");
        store.insert_node(&node("n-2", "bravo")).await.expect("insert");
        assert!(store.delete_node("n-1").await.expect("delete"));
        assert!(!store.delete_node("n-1").await.expect("delete again"));
        assert!(!store.delete_node("ghost").await.expect("delete unknown"));
        assert_eq!(store.get_node("n-1").await.expect("get"), None);
        assert_eq!(store.get_node("alpha").await.expect("get"), None);
        assert_eq!(store.list_nodes().await.expect("list").len(), 1);
        // The name is free again.
        store.insert_node(&node("n-9", "alpha")).await.expect("reuse name");
        assert_eq!(get_node(&*store, "alpha").await.id, "n-9");
    }

    // ---- join tokens ----

    pub async fn join_tokens_crud(store: Arc<dyn Store>) {
        assert!(store.list_join_tokens().await.expect("list").is_empty());
        assert_eq!(store.get_join_token("nope").await.expect("get"), None);

        let old = join_token("jt-old", t0(), true);
        let mut new = join_token("jt-new", t0() + Duration::minutes(1), false);
        new.labels = BTreeMap::new();
        new.uses = 7;
        store.insert_join_token(&old).await.expect("insert");
        store.insert_join_token(&new).await.expect("insert");

        assert_eq!(store.get_join_token("jt-old").await.expect("get"), Some(old.clone()));
        assert_eq!(store.get_join_token("jt-new").await.expect("get"), Some(new.clone()));

        // Newest first.
        let ids: Vec<String> = store.list_join_tokens().await.expect("list").into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["jt-new", "jt-old"]);

        match store.insert_join_token(&join_token("jt-old", t0(), false)).await {
            Err(StoreError::AlreadyExists { key, .. }) => assert_eq!(key, "jt-old"),
            other => panic!("duplicate join token: expected AlreadyExists, got {other:?}"),
        }

        assert!(store.revoke_join_token("jt-old").await.expect("revoke"));
        assert!(store.revoke_join_token("jt-old").await.expect("revoke twice"));
        assert!(!store.revoke_join_token("ghost").await.expect("revoke unknown"));
        let revoked = store.get_join_token("jt-old").await.expect("get").expect("present");
        assert!(revoked.revoked);
        assert_eq!(revoked, JoinTokenRecord { revoked: true, ..old });
    }

    pub async fn join_tokens_expired_and_revoked(store: Arc<dyn Store>) {
        let token = join_token("jt", t0(), false);
        store.insert_join_token(&token).await.expect("insert");

        assert!(!store.use_join_token("ghost", t0()).await.expect("use unknown"));

        // Usable until just before expiry, refused at and after it.
        let just_before = token.expires_at - Duration::milliseconds(1);
        assert!(store.use_join_token("jt", just_before).await.expect("use"));
        assert!(!store.use_join_token("jt", token.expires_at).await.expect("use at expiry"));
        assert!(!store.use_join_token("jt", token.expires_at + Duration::days(1)).await.expect("use after expiry"));
        assert_eq!(store.get_join_token("jt").await.expect("get").expect("present").uses, 1);

        // Revoked: refused even within its lifetime.
        assert!(store.revoke_join_token("jt").await.expect("revoke"));
        assert!(!store.use_join_token("jt", t0()).await.expect("use revoked"));
        assert_eq!(store.get_join_token("jt").await.expect("get").expect("present").uses, 1);
    }

    pub async fn join_tokens_single_use(store: Arc<dyn Store>) {
        store.insert_join_token(&join_token("jt", t0(), true)).await.expect("insert");
        assert!(store.use_join_token("jt", t0()).await.expect("first use"));
        assert!(!store.use_join_token("jt", t0()).await.expect("second use"));
        assert!(!store.use_join_token("jt", t0()).await.expect("third use"));
        let got = store.get_join_token("jt").await.expect("get").expect("present");
        assert_eq!(got.uses, 1);
        assert!(!got.revoked);
    }

    pub async fn join_tokens_single_use_race(store: Arc<dyn Store>) {
        // Several rounds, each with its own token and two (then more) racing joins.
        for round in 0..10 {
            let id = format!("jt-{round}");
            store.insert_join_token(&join_token(&id, t0(), true)).await.expect("insert");
            let racers = if round < 5 { 2 } else { 6 };
            let barrier = Arc::new(tokio::sync::Barrier::new(racers));
            let tasks: Vec<_> = (0..racers)
                .map(|_| {
                    let (store, id, barrier) = (store.clone(), id.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        store.use_join_token(&id, t0()).await.expect("use")
                    })
                })
                .collect();
            let mut winners = 0;
            for task in tasks {
                if task.await.expect("task") {
                    winners += 1;
                }
            }
            assert_eq!(winners, 1, "round {round}: exactly one racer wins a single-use token");
            assert_eq!(store.get_join_token(&id).await.expect("get").expect("present").uses, 1);
        }
    }

    pub async fn join_tokens_multi_use(store: Arc<dyn Store>) {
        store.insert_join_token(&join_token("jt", t0(), false)).await.expect("insert");
        for _ in 0..5 {
            assert!(store.use_join_token("jt", t0()).await.expect("use"));
        }
        // Concurrent uses are all counted.
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.use_join_token("jt", t0()).await.expect("use") })
            })
            .collect();
        for task in tasks {
            assert!(task.await.expect("task"));
        }
        assert_eq!(store.get_join_token("jt").await.expect("get").expect("present").uses, 13);
    }

    // ---- registry credentials ----

    pub async fn registry_credentials_set_list_delete(store: Arc<dyn Store>) {
        use diplo_control_plane::model::RegistryCredentialRecord;
        assert!(store.list_registry_credentials().await.expect("list").is_empty());
        let credential = |registry: &str, password: &str, at: DateTime<Utc>| RegistryCredentialRecord {
            registry: registry.to_owned(),
            username: "alice".to_owned(),
            password: password.to_owned(),
            updated_at: at,
        };
        assert!(store.set_registry_credential(&credential("r.example:5000", "one", t0())).await.expect("set"), "new");
        assert!(store.set_registry_credential(&credential("a.example", "two", t0())).await.expect("set"), "new");
        let replaced = credential("r.example:5000", "three", t0() + Duration::seconds(5));
        assert!(!store.set_registry_credential(&replaced).await.expect("set"), "replaced, not new");
        let listed = store.list_registry_credentials().await.expect("list");
        assert_eq!(listed, vec![credential("a.example", "two", t0()), replaced], "by registry, the newest value");
        assert!(store.delete_registry_credential("a.example").await.expect("delete"));
        assert!(!store.delete_registry_credential("a.example").await.expect("delete again"));
        assert_eq!(store.list_registry_credentials().await.expect("list").len(), 1);
    }

    // ---- stacks ----

    pub async fn stacks_save_get_list_delete(store: Arc<dyn Store>) {
        use diplo_control_plane::model::StackRecord;
        assert!(store.list_stacks().await.expect("list").is_empty());
        assert_eq!(store.get_stack("shop").await.expect("get"), None);
        let source = "services:\n  web:\n    image: busybox\n    healthcheck:\n      test: [CMD, true]\n      interval: 2s\n";
        let spec = diplo_api::compose::parse(source, None).expect("parses");
        let stack = |name: &str, source: &str, at: DateTime<Utc>| StackRecord {
            name: name.to_owned(),
            source: source.to_owned(),
            spec: spec.clone(),
            created_at: at,
            updated_at: at,
        };
        assert!(store.save_stack(&stack("shop", source, t0())).await.expect("save"), "new");
        assert!(store.save_stack(&stack("blog", source, t0())).await.expect("save"), "new");
        assert_eq!(store.get_stack("shop").await.expect("get"), Some(stack("shop", source, t0())), "the spec reads back as written");
        let mut updated = stack("shop", "services: {}", t0() + Duration::seconds(5));
        assert!(!store.save_stack(&updated).await.expect("save again"), "replaced, not new");
        updated.created_at = t0();
        let listed = store.list_stacks().await.expect("list");
        assert_eq!(listed, vec![stack("blog", source, t0()), updated], "by name; the creation time kept, the rest replaced");
        assert!(store.delete_stack("blog").await.expect("delete"));
        assert!(!store.delete_stack("blog").await.expect("delete again"));
        assert_eq!(store.list_stacks().await.expect("list").len(), 1);
    }

    // ---- API tokens ----

    pub async fn api_tokens_crud(store: Arc<dyn Store>) {
        assert!(store.list_api_tokens().await.expect("list").is_empty());
        assert_eq!(store.get_api_token("nope").await.expect("get"), None);

        let admin = api_token("at-1", t0(), Role::Admin);
        let mut deployer = api_token("at-2", t0() + Duration::seconds(1), Role::Deployer);
        deployer.expires_at = Some(t0() + Duration::days(30));
        let viewer = api_token("at-3", t0() + Duration::seconds(2), Role::Viewer);
        for t in [&deployer, &admin, &viewer] {
            store.insert_api_token(t).await.expect("insert");
        }

        assert_eq!(store.get_api_token("at-1").await.expect("get"), Some(admin.clone()));
        assert_eq!(store.get_api_token("at-2").await.expect("get"), Some(deployer.clone()));
        assert_eq!(store.get_api_token("at-3").await.expect("get"), Some(viewer.clone()));

        let ids: Vec<String> = store.list_api_tokens().await.expect("list").into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["at-3", "at-2", "at-1"], "newest first");

        match store.insert_api_token(&api_token("at-1", t0(), Role::Viewer)).await {
            Err(StoreError::AlreadyExists { key, .. }) => assert_eq!(key, "at-1"),
            other => panic!("duplicate API token: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(store.get_api_token("at-1").await.expect("get"), Some(admin.clone()));

        assert!(store.revoke_api_token("at-2").await.expect("revoke"));
        assert!(store.revoke_api_token("at-2").await.expect("revoke twice"));
        assert!(!store.revoke_api_token("ghost").await.expect("revoke unknown"));
        assert_eq!(store.get_api_token("at-2").await.expect("get"), Some(ApiTokenRecord { revoked: true, ..deployer }));
        assert!(!store.get_api_token("at-1").await.expect("get").expect("present").revoked);
    }

    // ---- events ----

    pub async fn events_append_batch(store: Arc<dyn Store>) {
        assert!(store.append_events(&[]).await.expect("empty batch").is_empty());
        let first = store.append_event(&event(0)).await.expect("append");

        // Numbers in the order given, above every earlier one; the events stored as given.
        let batch: Vec<NewEvent> = (1..=3).map(event).collect();
        let numbers = store.append_events(&batch).await.expect("append batch");
        assert_eq!(numbers.len(), 3);
        assert!(numbers[0] > first && numbers.windows(2).all(|w| w[0] < w[1]), "{first} then {numbers:?}");
        let listed = store.list_events(first, 10).await.expect("list");
        assert_eq!(listed.iter().map(|e| e.sequence).collect::<Vec<_>>(), numbers);
        assert_eq!(listed.into_iter().map(|e| e.event).collect::<Vec<_>>(), batch);

        // A batch larger than any one statement takes, interleaved with single appends.
        let large: Vec<NewEvent> = (10..1_310).map(event).collect();
        let nine = event(9);
        let (numbers, single) = tokio::join!(store.append_events(&large), store.append_event(&nine));
        let (numbers, single) = (numbers.expect("large batch"), single.expect("single"));
        assert_eq!(numbers.len(), large.len());
        assert!(numbers.windows(2).all(|w| w[0] < w[1]));
        assert!(!numbers.contains(&single));
        let listed = store.list_events(first, 2_000).await.expect("list");
        assert_eq!(listed.len(), 3 + 1 + large.len());
        let of_batch: Vec<_> = listed.iter().filter(|e| numbers.contains(&e.sequence)).collect();
        assert_eq!(of_batch.iter().map(|e| &e.event).cloned().collect::<Vec<_>>(), large, "stored in the order given");
    }

    pub async fn events_sequence_and_paging(store: Arc<dyn Store>) {
        assert!(store.list_events(0, 100).await.expect("list").is_empty());

        let mut sequences = Vec::new();
        for n in 0..10 {
            sequences.push(store.append_event(&event(n)).await.expect("append"));
        }
        assert!(sequences.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {sequences:?}");
        assert!(sequences[0] > 0);

        let all = store.list_events(0, 100).await.expect("list");
        assert_eq!(all.len(), 10);
        for (n, record) in all.iter().enumerate() {
            assert_eq!(record.sequence, sequences[n]);
            assert_eq!(record.event, event(n as u32));
        }

        // Paging: after + limit, oldest first, no gaps and no repeats.
        let mut after = 0;
        let mut paged = Vec::new();
        loop {
            let page = store.list_events(after, 3).await.expect("page");
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = last.sequence;
            paged.extend(page.into_iter().map(|e| e.sequence));
        }
        assert_eq!(paged, sequences);

        let tail = store.list_events(sequences[6], 100).await.expect("tail");
        assert_eq!(tail.iter().map(|e| e.sequence).collect::<Vec<_>>(), sequences[7..]);
        assert!(store.list_events(sequences[9], 100).await.expect("past end").is_empty());
        assert!(store.list_events(u64::MAX, 100).await.expect("huge after").is_empty());
        assert!(store.list_events(0, 0).await.expect("zero limit").is_empty());
        assert_eq!(store.list_events(0, 1).await.expect("one")[0].sequence, sequences[0]);

        // Later appends continue above everything listed.
        let next = store.append_event(&event(99)).await.expect("append");
        assert!(next > sequences[9]);
    }

    pub async fn events_concurrent_appends(store: Arc<dyn Store>) {
        let tasks: Vec<_> = (0..20)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { store.append_event(&event(n)).await.expect("append") })
            })
            .collect();
        let mut sequences = Vec::new();
        for task in tasks {
            sequences.push(task.await.expect("task"));
        }
        sequences.sort_unstable();
        sequences.dedup();
        assert_eq!(sequences.len(), 20, "distinct sequence numbers");
        let listed: Vec<u64> = store.list_events(0, 100).await.expect("list").into_iter().map(|e| e.sequence).collect();
        assert_eq!(listed, sequences);
    }

    pub async fn events_retention(store: Arc<dyn Store>) {
        let mut sequences = Vec::new();
        for n in 0..10 {
            // event(n) is n ms after t0.
            sequences.push(store.append_event(&event(n * 1000)).await.expect("append"));
        }
        let listed = |store: Arc<dyn Store>| async move {
            store.list_events(0, 100).await.expect("list").into_iter().map(|e| e.sequence).collect::<Vec<_>>()
        };
        // Nothing to do: nothing removed.
        assert_eq!(store.prune_events(None, None).await.expect("prune"), 0);
        assert_eq!(store.prune_events(Some(t0()), Some(100)).await.expect("prune"), 0);
        assert_eq!(listed(store.clone()).await, sequences);

        // By age: events before the cut-off go, the one at it stays.
        let cut = t0() + Duration::milliseconds(3000);
        assert_eq!(store.prune_events(Some(cut), None).await.expect("prune by age"), 3);
        assert_eq!(listed(store.clone()).await, sequences[3..]);

        // By count: the newest stay.
        assert_eq!(store.prune_events(None, Some(4)).await.expect("prune by count"), 3);
        assert_eq!(listed(store.clone()).await, sequences[6..]);
        assert_eq!(store.prune_events(None, Some(4)).await.expect("again"), 0);

        // Both at once, and keeping none at all.
        assert_eq!(store.prune_events(Some(t0() + Duration::milliseconds(7000)), Some(3)).await.expect("both"), 1);
        assert_eq!(listed(store.clone()).await, sequences[7..]);
        assert_eq!(store.prune_events(None, Some(0)).await.expect("keep none"), 3);
        assert!(listed(store.clone()).await.is_empty());

        // Sequence numbers go on increasing after pruning.
        let next = store.append_event(&event(1)).await.expect("append");
        assert!(next > sequences[9], "{next} after {}", sequences[9]);
    }

    // ---- deployments ----

    pub async fn deployments_create_get_list(store: Arc<dyn Store>) {
        assert!(store.list_deployments().await.expect("list").is_empty());
        assert_eq!(store.get_deployment("nope").await.expect("get"), None);
        assert_eq!(store.find_deployment_by_key("nope").await.expect("find"), None);

        let web = deployment("d-2", "web", None);
        let mut api = deployment("d-1", "api", Some("key-1"));
        api.status = DeploymentStatus::Running;
        api.message = "all 2 instances running".to_owned();
        api.updated_at = t0() + Duration::seconds(9);
        let mut worker = deployment("d-3", "worker", Some("key-3"));
        worker.spec = full_spec("worker");
        worker.status = DeploymentStatus::Degraded;
        for d in [&web, &worker, &api] {
            store.create_deployment(d).await.expect("create");
        }

        // Round trip by id and by name, every field intact.
        assert_eq!(get_deployment(&*store, "d-2").await, web);
        assert_eq!(get_deployment(&*store, "web").await, web);
        assert_eq!(get_deployment(&*store, "api").await, api);
        assert_eq!(get_deployment(&*store, "d-3").await, worker);

        // Ordered by name, whatever the insertion order.
        let names: Vec<String> = store.list_deployments().await.expect("list").into_iter().map(|d| d.spec.name).collect();
        assert_eq!(names, ["api", "web", "worker"]);
        assert_eq!(store.list_deployments().await.expect("list")[2], worker, "listed records are complete");

        // By idempotency key.
        assert_eq!(store.find_deployment_by_key("key-1").await.expect("find"), Some(api.clone()));
        assert_eq!(store.find_deployment_by_key("key-3").await.expect("find"), Some(worker.clone()));
        assert_eq!(store.find_deployment_by_key("d-1").await.expect("find"), None);

        // Creating writes revision 1 with its spec, and only that.
        assert_eq!(store.get_revision("d-3", 1).await.expect("revision"), Some(worker.spec.clone()));
        assert_eq!(store.get_revision("d-2", 1).await.expect("revision"), Some(web.spec.clone()));
        assert_eq!(store.get_revision("d-3", 2).await.expect("revision"), None);
        assert_eq!(store.get_revision("d-3", 0).await.expect("revision"), None);
        assert_eq!(store.get_revision("ghost", 1).await.expect("revision"), None);
        assert_eq!(store.get_revision("worker", 1).await.expect("revision"), None, "revisions are by id, not by name");

        // An id wins over another deployment's equal name.
        let tricky = deployment("d-4", "d-1", None);
        store.create_deployment(&tricky).await.expect("create tricky");
        assert_eq!(get_deployment(&*store, "d-1").await.spec.name, "api");
        assert_eq!(get_deployment(&*store, "d-4").await.spec.name, "d-1");
    }

    pub async fn deployments_duplicates(store: Arc<dyn Store>) {
        let first = deployment("d-1", "web", Some("key-1"));
        store.create_deployment(&first).await.expect("create");

        match store.create_deployment(&deployment("d-2", "web", None)).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "deployment");
                assert_eq!(key, "web");
            }
            other => panic!("duplicate name: expected AlreadyExists, got {other:?}"),
        }
        match store.create_deployment(&deployment("d-1", "api", None)).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "deployment");
                assert_eq!(key, "d-1");
            }
            other => panic!("duplicate id: expected AlreadyExists, got {other:?}"),
        }
        let mut retry = deployment("d-3", "api", Some("key-1"));
        retry.spec = spec("api", "httpd:2", 1);
        match store.create_deployment(&retry).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "idempotency key");
                assert_eq!(key, "key-1");
            }
            other => panic!("duplicate idempotency key: expected AlreadyExists, got {other:?}"),
        }

        // The key still finds the first deployment, and nothing was half-written.
        assert_eq!(store.find_deployment_by_key("key-1").await.expect("find"), Some(first.clone()));
        assert_eq!(store.get_deployment("api").await.expect("get"), None);
        assert_eq!(store.get_deployment("d-2").await.expect("get"), None);
        assert_eq!(store.get_deployment("d-3").await.expect("get"), None);
        assert_eq!(store.get_revision("d-2", 1).await.expect("revision"), None);
        assert_eq!(store.get_revision("d-3", 1).await.expect("revision"), None);
        assert_eq!(
            store.get_revision("d-1", 1).await.expect("revision"),
            Some(first.spec.clone()),
            "the first deployment's revision is untouched"
        );
        assert_eq!(get_deployment(&*store, "d-1").await, first);
        assert_eq!(store.list_deployments().await.expect("list").len(), 1);

        // Deployments without a key never conflict with each other.
        store.create_deployment(&deployment("d-4", "db", None)).await.expect("no key");
        store.create_deployment(&deployment("d-5", "cache", None)).await.expect("no key either");
        assert_eq!(store.list_deployments().await.expect("list").len(), 3);
    }

    pub async fn deployments_save_and_revisions(store: Arc<dyn Store>) {
        let created = deployment("d-1", "web", Some("key-1"));
        store.create_deployment(&created).await.expect("create");
        store.create_deployment(&deployment("d-2", "api", None)).await.expect("create other");

        // A new revision: recorded next to the first.
        let mut v2 = created.clone();
        v2.revision = 2;
        v2.spec = full_spec("web");
        v2.status = DeploymentStatus::Running;
        v2.message = "rolled out".to_owned();
        v2.updated_at = t0() + Duration::minutes(1);
        store.save_deployment(&v2).await.expect("save revision 2");
        assert_eq!(get_deployment(&*store, "d-1").await, v2);
        assert_eq!(get_deployment(&*store, "web").await, v2);
        assert_eq!(store.get_revision("d-1", 1).await.expect("revision"), Some(created.spec.clone()), "revision 1 kept");
        assert_eq!(store.get_revision("d-1", 2).await.expect("revision"), Some(v2.spec.clone()));

        // Same revision again: the deployment is updated, the recorded revision is not
        // duplicated nor rewritten.
        let mut again = v2.clone();
        again.status = DeploymentStatus::Degraded;
        again.message = "1 of 5 instances failing".to_owned();
        again.spec.replicas = 7;
        again.updated_at = t0() + Duration::minutes(2);
        store.save_deployment(&again).await.expect("save same revision");
        store.save_deployment(&again).await.expect("save same revision twice");
        assert_eq!(get_deployment(&*store, "d-1").await, again);
        assert_eq!(store.get_revision("d-1", 2).await.expect("revision"), Some(v2.spec.clone()), "a recorded revision is never rewritten");
        assert_eq!(store.get_revision("d-1", 3).await.expect("revision"), None);

        // Revision 3, renaming: the name follows the spec.
        let mut v3 = again.clone();
        v3.revision = 3;
        v3.spec = spec("frontend", "nginx:1.28", 3);
        v3.status = DeploymentStatus::Deploying;
        v3.updated_at = t0() + Duration::minutes(3);
        store.save_deployment(&v3).await.expect("save revision 3");
        assert_eq!(get_deployment(&*store, "frontend").await, v3);
        assert_eq!(store.get_deployment("web").await.expect("get"), None);
        for (revision, expected) in [(1, &created.spec), (2, &v2.spec), (3, &v3.spec)] {
            assert_eq!(store.get_revision("d-1", revision).await.expect("revision").as_ref(), Some(expected), "revision {revision}");
        }

        // The creating request's key and the creation time stay.
        let mut v4 = v3.clone();
        v4.revision = 4;
        v4.idempotency_key = None;
        v4.created_at = t0() + Duration::days(1);
        v4.updated_at = t0() + Duration::minutes(4);
        store.save_deployment(&v4).await.expect("save revision 4");
        let got = get_deployment(&*store, "d-1").await;
        assert_eq!(got.idempotency_key.as_deref(), Some("key-1"));
        assert_eq!(got.created_at, created.created_at);
        assert_eq!((got.revision, got.updated_at), (4, v4.updated_at));
        assert_eq!(store.find_deployment_by_key("key-1").await.expect("find"), Some(got));

        // The other deployment is untouched.
        assert_eq!(get_deployment(&*store, "d-2").await, deployment("d-2", "api", None));
        assert_eq!(store.get_revision("d-2", 2).await.expect("revision"), None);
    }

    pub async fn deployments_save_conflicts(store: Arc<dyn Store>) {
        store.create_deployment(&deployment("d-1", "web", None)).await.expect("create");
        store.create_deployment(&deployment("d-2", "api", None)).await.expect("create");

        let mut ghost = deployment("ghost", "ghost", None);
        ghost.revision = 2;
        match store.save_deployment(&ghost).await {
            Err(StoreError::NotFound { what, key }) => {
                assert_eq!(what, "deployment");
                assert_eq!(key, "ghost");
            }
            other => panic!("unknown deployment: expected NotFound, got {other:?}"),
        }
        assert_eq!(store.get_deployment("ghost").await.expect("get"), None);
        assert_eq!(store.get_revision("ghost", 2).await.expect("revision"), None);
        // By name is not by id.
        let mut by_name = deployment("web", "web", None);
        by_name.revision = 2;
        assert!(matches!(store.save_deployment(&by_name).await, Err(StoreError::NotFound { .. })));
        assert_eq!(store.get_revision("d-1", 2).await.expect("revision"), None);

        // Renaming onto another deployment's name, in a new revision: nothing changes.
        let mut clash = deployment("d-2", "web", None);
        clash.revision = 2;
        match store.save_deployment(&clash).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "deployment");
                assert_eq!(key, "web");
            }
            other => panic!("name clash: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(get_deployment(&*store, "d-2").await, deployment("d-2", "api", None));
        assert_eq!(get_deployment(&*store, "web").await.id, "d-1");
        assert_eq!(store.get_revision("d-2", 2).await.expect("revision"), None);
    }

    /// Every status a deployment can have is stored and read back, the statuses of a
    /// deployment built from source (revision 0 while building) included.
    pub async fn deployments_store_every_status(store: Arc<dyn Store>) {
        let mut record = deployment("d-1", "web", None);
        record.revision = 0;
        record.spec.container.image = String::new();
        record.status = DeploymentStatus::Building;
        store.create_deployment(&record).await.expect("create while building");
        assert_eq!(get_deployment(&*store, "d-1").await, record);
        for status in [
            DeploymentStatus::Failed,
            DeploymentStatus::Building,
            DeploymentStatus::Deploying,
            DeploymentStatus::Running,
            DeploymentStatus::Degraded,
            DeploymentStatus::Deleting,
        ] {
            record.status = status;
            store.save_deployment(&record).await.expect("save");
            assert_eq!(get_deployment(&*store, "d-1").await.status, status);
        }
    }

    /// A status computed from a read is written only while the row is as read: a scale
    /// or a deletion saved in between wins.
    pub async fn deployments_status_is_compare_and_set(store: Arc<dyn Store>) {
        let read = deployment("d-1", "web", None);
        store.create_deployment(&read).await.expect("create");
        let later = t0() + Duration::seconds(5);

        // Unchanged since the read: written.
        assert!(store.set_deployment_status(&read, DeploymentStatus::Running, "", later).await.expect("set"));
        let running = get_deployment(&*store, "d-1").await;
        assert_eq!((running.status, running.updated_at), (DeploymentStatus::Running, later));
        assert_eq!(running.spec, read.spec, "the spec is untouched");
        // The same read again: the row moved on, nothing is written.
        assert!(!store.set_deployment_status(&read, DeploymentStatus::Degraded, "x", later).await.expect("set"));
        assert_eq!(get_deployment(&*store, "d-1").await, running);

        // Marked for deletion after the read: the deletion stays.
        let mut deleting = running.clone();
        deleting.status = DeploymentStatus::Deleting;
        deleting.updated_at = later + Duration::seconds(1);
        store.save_deployment(&deleting).await.expect("mark deleting");
        assert!(!store.set_deployment_status(&running, DeploymentStatus::Deploying, "1/2 running", later).await.expect("set"));
        assert_eq!(get_deployment(&*store, "d-1").await, deleting, "a deletion is never undone");

        // Scaled (same revision, same status) after the read: the scale stays.
        let other = deployment("d-2", "api", None);
        store.create_deployment(&other).await.expect("create");
        let mut scaled = other.clone();
        scaled.spec.replicas = 5;
        scaled.updated_at = later;
        store.save_deployment(&scaled).await.expect("scale");
        assert!(!store.set_deployment_status(&other, DeploymentStatus::Running, "", later).await.expect("set"));
        assert_eq!(get_deployment(&*store, "d-2").await, scaled);
        // Unknown deployment: nothing written.
        assert!(!store.set_deployment_status(&deployment("d-9", "ghost", None), DeploymentStatus::Running, "", later).await.expect("set"));
    }

    pub async fn deployments_delete_cascades(store: Arc<dyn Store>) {
        let web = deployment("d-1", "web", Some("key-1"));
        let api = deployment("d-2", "api", None);
        store.create_deployment(&web).await.expect("create");
        store.create_deployment(&api).await.expect("create");
        let mut v2 = web.clone();
        v2.revision = 2;
        v2.spec.replicas = 3;
        store.save_deployment(&v2).await.expect("save");
        store
            .insert_instances(&[instance("i-1", "d-1", 0), instance("i-2", "d-2", 1), instance("i-3", "d-1", 2)])
            .await
            .expect("insert instances");

        assert!(store.delete_deployment("d-1").await.expect("delete"));
        assert_eq!(store.get_deployment("d-1").await.expect("get"), None);
        assert_eq!(store.get_deployment("web").await.expect("get"), None);
        assert_eq!(store.find_deployment_by_key("key-1").await.expect("find"), None);
        assert_eq!(store.get_revision("d-1", 1).await.expect("revision"), None);
        assert_eq!(store.get_revision("d-1", 2).await.expect("revision"), None);
        assert!(instance_ids(&*store, Some("d-1")).await.is_empty());
        assert_eq!(instance_ids(&*store, None).await, ["i-2"]);

        // The other deployment keeps everything.
        assert_eq!(get_deployment(&*store, "d-2").await, api);
        assert_eq!(store.get_revision("d-2", 1).await.expect("revision"), Some(api.spec.clone()));

        assert!(!store.delete_deployment("d-1").await.expect("delete again"));
        assert!(!store.delete_deployment("ghost").await.expect("delete unknown"));
        assert!(!store.delete_deployment("api").await.expect("by name"), "by name is not by id");
        assert_eq!(store.list_deployments().await.expect("list"), vec![api]);

        // Id, name and key are free again, with no history left over.
        let reborn = deployment("d-1", "web", Some("key-1"));
        store.create_deployment(&reborn).await.expect("recreate");
        assert_eq!(get_deployment(&*store, "web").await, reborn);
        assert_eq!(store.get_revision("d-1", 2).await.expect("revision"), None);
        assert!(instance_ids(&*store, Some("d-1")).await.is_empty());
    }

    // ---- instances ----

    pub async fn instances_insert_list(store: Arc<dyn Store>) {
        for (id, name) in [("d-1", "web"), ("d-2", "api")] {
            store.create_deployment(&deployment(id, name, None)).await.expect("create");
        }
        assert!(instance_ids(&*store, None).await.is_empty());
        store.insert_instances(&[]).await.expect("empty batch");

        // Every status, desired state and runtime, and both empty and set options.
        let statuses =
            [InstanceStatus::Pending, InstanceStatus::Starting, InstanceStatus::Running, InstanceStatus::Failed, InstanceStatus::Lost];
        let mut placed: Vec<InstanceRecord> = Vec::new();
        for (n, status) in statuses.into_iter().enumerate() {
            let mut i = instance(&format!("i-p{n}"), "d-1", 100 - n as i64 * 10);
            i.revision = 2;
            i.node_id = Some(format!("n-{n}"));
            i.runtime = Some(Runtime::ALL[n % Runtime::ALL.len()]);
            i.container_id = Some(format!("c0ffee{n}"));
            i.desired = if n % 2 == 0 { InstanceDesired::Run } else { InstanceDesired::Remove };
            i.status = status;
            i.message = format!("note {n}: \"quoted\" ünïcode");
            i.updated_at = i.created_at + Duration::seconds(n as i64);
            placed.push(i);
        }
        // Same creation time: ordered by id.
        let tie_b = instance("i-tb", "d-1", 50);
        let tie_a = instance("i-ta", "d-1", 50);
        let other = instance("i-o1", "d-2", 0);
        let other_late = instance("i-o2", "d-2", 1_000);

        let mut batch = placed.clone();
        batch.extend([tie_b.clone(), other_late.clone(), tie_a.clone(), other.clone()]);
        store.insert_instances(&batch).await.expect("insert batch");

        // Every field intact, ordered by creation time then id.
        let d1 = store.list_instances(Some("d-1")).await.expect("list d-1");
        let mut expected: Vec<InstanceRecord> = placed.clone();
        expected.extend([tie_a.clone(), tie_b.clone()]);
        expected.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        assert_eq!(d1, expected);
        assert_eq!(d1.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["i-ta", "i-tb", "i-p4", "i-p3", "i-p2", "i-p1", "i-p0"]);
        assert_eq!(store.list_instances(Some("d-2")).await.expect("list d-2"), vec![other.clone(), other_late.clone()]);

        // All deployments: one ordering across them.
        assert_eq!(instance_ids(&*store, None).await, ["i-o1", "i-ta", "i-tb", "i-p4", "i-p3", "i-p2", "i-p1", "i-p0", "i-o2"]);
        assert!(instance_ids(&*store, Some("ghost")).await.is_empty());
        assert!(instance_ids(&*store, Some("web")).await.is_empty(), "by deployment id, not name");
    }

    pub async fn instances_insert_is_atomic(store: Arc<dyn Store>) {
        store.create_deployment(&deployment("d-1", "web", None)).await.expect("create");
        let first = instance("i-1", "d-1", 0);
        store.insert_instances(std::slice::from_ref(&first)).await.expect("insert");

        // A taken id in the middle of a batch: nothing of the batch is inserted.
        let mut taken = instance("i-1", "d-1", 5);
        taken.status = InstanceStatus::Running;
        match store.insert_instances(&[instance("i-2", "d-1", 1), taken, instance("i-3", "d-1", 2)]).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "instance");
                assert_eq!(key, "i-1");
            }
            other => panic!("duplicate instance id: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(store.list_instances(None).await.expect("list"), vec![first.clone()]);

        // The same id twice within one batch.
        match store.insert_instances(&[instance("i-4", "d-1", 1), instance("i-4", "d-1", 2)]).await {
            Err(StoreError::AlreadyExists { what, key }) => {
                assert_eq!(what, "instance");
                assert_eq!(key, "i-4");
            }
            other => panic!("id repeated in a batch: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(instance_ids(&*store, None).await, ["i-1"]);

        // An unknown deployment: NotFound, nothing inserted.
        match store.insert_instances(&[instance("i-5", "d-1", 1), instance("i-6", "ghost", 2)]).await {
            Err(StoreError::NotFound { what, key }) => {
                assert_eq!(what, "deployment");
                assert_eq!(key, "ghost");
            }
            other => panic!("unknown deployment: expected NotFound, got {other:?}"),
        }
        assert_eq!(instance_ids(&*store, None).await, ["i-1"]);

        // The store still works after the failed batches.
        store.insert_instances(&[instance("i-2", "d-1", 1), instance("i-3", "d-1", 2)]).await.expect("insert after failures");
        assert_eq!(instance_ids(&*store, Some("d-1")).await, ["i-1", "i-2", "i-3"]);
    }

    /// A store that tells its generation moves it with every write of nodes,
    /// deployments and instances, and never with a read; one that cannot tell never
    /// starts telling.
    pub async fn generation_moves_with_every_write(store: Arc<dyn Store>) {
        let tells = store.generation().is_some();
        let mut last = store.generation();
        let mut step = |store: &dyn Store, what: &str, writes: bool| {
            let now = store.generation();
            assert_eq!(now.is_some(), tells, "{what}: a store tells its generation always or never");
            if tells {
                assert_eq!(now != last, writes, "{what}: generation {last:?} -> {now:?}");
            }
            last = now;
        };
        store.insert_node(&node("n-1", "pi-1")).await.expect("insert node");
        step(&*store, "insert a node", true);
        store.list_nodes().await.expect("list nodes");
        store.get_node("pi-1").await.expect("get node");
        step(&*store, "read nodes", false);
        store.set_cordoned("n-1", true).await.expect("cordon");
        step(&*store, "cordon", true);
        store.create_deployment(&deployment("d-1", "web", None)).await.expect("create");
        step(&*store, "create a deployment", true);
        store.insert_instances(&[instance("i-1", "d-1", 0)]).await.expect("insert instances");
        step(&*store, "insert an instance", true);
        store.list_deployments().await.expect("list deployments");
        store.list_instances(None).await.expect("list instances");
        step(&*store, "read deployments and instances", false);
        let mut running = instance("i-1", "d-1", 0);
        running.status = InstanceStatus::Running;
        store.update_instances(&[running]).await.expect("update instances");
        step(&*store, "update an instance", true);
        store.delete_instances(&["i-1".to_owned()]).await.expect("delete instances");
        step(&*store, "delete an instance", true);
        assert!(store.delete_deployment("d-1").await.expect("delete"));
        step(&*store, "delete a deployment", true);
        assert!(store.delete_node("n-1").await.expect("delete node"));
        step(&*store, "delete a node", true);
    }

    pub async fn instances_update(store: Arc<dyn Store>) {
        store.create_deployment(&deployment("d-1", "web", None)).await.expect("create");
        let mut originals = Vec::new();
        for n in 1..=3 {
            let mut i = instance(&format!("i-{n}"), "d-1", n);
            i.node_id = Some("n-1".to_owned());
            i.runtime = Some(Runtime::Docker);
            originals.push(i);
        }
        store.insert_instances(&originals).await.expect("insert");
        store.update_instances(&[]).await.expect("empty batch");

        let later = t0() + Duration::minutes(5);
        let mut started = originals[0].clone();
        started.revision = 2;
        started.node_id = Some("n-2".to_owned());
        started.runtime = Some(Runtime::Podman);
        started.container_id = Some("abc123".to_owned());
        started.status = InstanceStatus::Running;
        started.message = "started".to_owned();
        started.updated_at = later;
        let mut removed = originals[2].clone();
        removed.node_id = None;
        removed.runtime = None;
        removed.container_id = None;
        removed.desired = InstanceDesired::Remove;
        removed.status = InstanceStatus::Lost;
        removed.message = "node n-1 down".to_owned();
        removed.updated_at = later + Duration::seconds(1);
        let ghost = instance("ghost", "d-1", 9);
        store.update_instances(&[started.clone(), ghost, removed.clone()]).await.expect("batch with an unknown id");

        assert_eq!(
            store.list_instances(Some("d-1")).await.expect("list"),
            vec![started.clone(), originals[1].clone(), removed.clone()],
            "updated, untouched, updated"
        );
        assert_eq!(instance_ids(&*store, None).await, ["i-1", "i-2", "i-3"], "unknown id not created");

        // And back: options set again, repeated updates are idempotent.
        let mut restarted = removed.clone();
        restarted.node_id = Some("n-3".to_owned());
        restarted.runtime = Some(Runtime::Lxc);
        restarted.container_id = Some("def456".to_owned());
        restarted.desired = InstanceDesired::Run;
        restarted.status = InstanceStatus::Starting;
        for _ in 0..2 {
            store.update_instances(std::slice::from_ref(&restarted)).await.expect("update");
        }
        assert_eq!(store.list_instances(Some("d-1")).await.expect("list")[2], restarted);
    }

    pub async fn instances_delete(store: Arc<dyn Store>) {
        for (id, name) in [("d-1", "web"), ("d-2", "api")] {
            store.create_deployment(&deployment(id, name, None)).await.expect("create");
        }
        store
            .insert_instances(&[instance("i-1", "d-1", 0), instance("i-2", "d-1", 1), instance("i-3", "d-2", 2), instance("i-4", "d-1", 3)])
            .await
            .expect("insert");
        store.delete_instances(&[]).await.expect("empty batch");
        assert_eq!(instance_ids(&*store, None).await.len(), 4);

        store.delete_instances(&["i-1".to_owned(), "ghost".to_owned(), "i-3".to_owned()]).await.expect("delete with an unknown id");
        assert_eq!(instance_ids(&*store, None).await, ["i-2", "i-4"]);
        assert!(instance_ids(&*store, Some("d-2")).await.is_empty());
        store.delete_instances(&["i-1".to_owned()]).await.expect("delete again");

        // Deployments are untouched, and the ids are free again.
        assert_eq!(store.list_deployments().await.expect("list").len(), 2);
        store.insert_instances(&[instance("i-1", "d-2", 9)]).await.expect("reuse id");
        assert_eq!(instance_ids(&*store, Some("d-2")).await, ["i-1"]);
        assert_eq!(instance_ids(&*store, None).await, ["i-2", "i-4", "i-1"]);
    }

    pub async fn instances_large_batches(store: Arc<dyn Store>) {
        // Batches far above any statement's bind-parameter limit, every field set on half
        // of them, and all of one batch back in one list.
        store.create_deployment(&deployment("d-1", "web", None)).await.expect("create");
        let batch: Vec<InstanceRecord> = (0..5_000_i64)
            .map(|n| {
                let mut i = instance(&format!("i-{n:05}"), "d-1", n);
                if n % 2 == 0 {
                    i.node_id = Some(format!("n-{}", n % 97));
                    i.runtime = Some(Runtime::ALL[n as usize % Runtime::ALL.len()]);
                    i.container_id = Some(format!("c-{n}"));
                    i.status = InstanceStatus::Running;
                    i.message = format!("placed {n}");
                }
                i
            })
            .collect();
        store.insert_instances(&batch).await.expect("insert 5,000");
        assert_eq!(store.list_instances(Some("d-1")).await.expect("list"), batch);

        let mut updated = batch.clone();
        for i in updated.iter_mut().step_by(3) {
            i.status = InstanceStatus::Lost;
            i.desired = InstanceDesired::Remove;
            i.node_id = None;
            i.message = "node down".to_owned();
            i.updated_at += Duration::seconds(1);
        }
        store.update_instances(&updated).await.expect("update 5,000");
        assert_eq!(store.list_instances(None).await.expect("list"), updated);

        // A taken id at the end of a large batch: nothing of it is inserted.
        let mut again: Vec<InstanceRecord> = (5_000..9_999_i64).map(|n| instance(&format!("i-{n:05}"), "d-1", n)).collect();
        again.push(instance("i-00042", "d-1", 0));
        match store.insert_instances(&again).await {
            Err(StoreError::AlreadyExists { what: "instance", key }) => assert_eq!(key, "i-00042"),
            other => panic!("taken id in a large batch: expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(store.list_instances(None).await.expect("list").len(), 5_000);

        let ids: Vec<String> = updated.iter().filter(|i| i.desired == InstanceDesired::Remove).map(|i| i.id.clone()).collect();
        store.delete_instances(&ids).await.expect("delete");
        let left = store.list_instances(None).await.expect("list");
        assert_eq!(left.len(), 5_000 - ids.len());
        assert!(left.iter().all(|i| i.desired == InstanceDesired::Run));
    }

    // ---- the writer lock ----

    fn writer(name: &str, pid: u32) -> WriterIdentity {
        WriterIdentity { host: format!("host-{name}"), pid, started_at: t0(), version: format!("0.0.{pid}") }
    }

    /// Opens as writer `me`; panics unless refused with `WriterTaken` naming `holder`.
    async fn expect_refused(url: &str, me: &WriterIdentity, holder: &WriterIdentity) {
        match store::open_writer(url, me).await {
            Err(err @ StoreError::WriterTaken { .. }) => {
                let message = err.to_string();
                assert!(matches!(&err, StoreError::WriterTaken { holder: Some(h) } if h == holder), "{err:?}");
                let named = format!("another control plane (pid {} on host {}, since ", holder.pid, holder.host);
                assert!(message.starts_with(&named), "{message}");
                assert!(
                    message.ends_with("is the writer for this database; stop it first or point this one at another database"),
                    "{message}"
                );
            }
            Err(other) => panic!("second writer: expected WriterTaken, got {other}"),
            Ok(_) => panic!("a second writer was let in while {holder} holds the lock"),
        }
    }

    // ---- builds ----

    fn build(id: &str, created_ms: i64) -> diplo_control_plane::model::BuildRecord {
        diplo_control_plane::model::BuildRecord {
            id: id.into(),
            status: diplo_api::build::BuildStatus::Queued,
            git_repo: "https://git.example/app.git".into(),
            git_branch: Some("main".into()),
            commit: String::new(),
            language: String::new(),
            detected_from: String::new(),
            buildpack_type: "dockerfile".into(),
            builder: None,
            node_id: None,
            platform: Some("linux/arm64".into()),
            image: format!("127.0.0.1:5000/app:{id}"),
            digest: String::new(),
            pushed: true,
            service_images: BTreeMap::new(),
            message: String::new(),
            created_at: Utc.timestamp_millis_opt(created_ms).single().expect("time"),
            started_at: None,
            finished_at: None,
            deployment_id: (id == "b-2").then(|| "dep-1".to_owned()),
            requested_by: "operator:admin".into(),
        }
    }

    pub async fn builds_insert_get_list(store: Arc<dyn Store>) {
        for (id, at) in [("b-1", 1_000), ("b-2", 3_000), ("b-3", 2_000)] {
            store.insert_build(&build(id, at)).await.expect("insert");
        }
        assert_eq!(store.get_build("b-2").await.expect("get"), Some(build("b-2", 3_000)));
        assert_eq!(store.get_build("nope").await.expect("get"), None);
        let ids = |builds: Vec<diplo_control_plane::model::BuildRecord>| builds.into_iter().map(|b| b.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list_builds(10).await.expect("list")), ["b-2", "b-3", "b-1"], "newest first");
        assert_eq!(ids(store.list_builds(2).await.expect("list")), ["b-2", "b-3"], "the newest `limit`");
        match store.insert_build(&build("b-1", 5_000)).await {
            Err(StoreError::AlreadyExists { what: "build", key }) => assert_eq!(key, "b-1"),
            other => panic!("duplicate build id: {other:?}"),
        }
    }

    pub async fn builds_update_is_compare_and_set(store: Arc<dyn Store>) {
        use diplo_api::build::{BuildStatus, Builder};
        let queued = build("b-1", 1_000);
        store.insert_build(&queued).await.expect("insert");
        let mut running = queued.clone();
        running.status = BuildStatus::Running;
        running.node_id = Some("node-a".into());
        running.builder = Some(Builder::Podman);
        running.started_at = Some(Utc.timestamp_millis_opt(1_500).single().expect("time"));
        assert!(store.update_build(&running, BuildStatus::Queued).await.expect("update"));
        assert_eq!(store.get_build("b-1").await.expect("get"), Some(running.clone()));
        // Cancelled while running.
        let mut cancelled = running.clone();
        cancelled.status = BuildStatus::Cancelled;
        cancelled.message = "cancelled by operator:admin".into();
        assert!(store.update_build(&cancelled, BuildStatus::Running).await.expect("cancel"));
        // A late report computed from the running record: not written.
        let mut succeeded = running.clone();
        succeeded.status = BuildStatus::Succeeded;
        succeeded.digest = "sha256:abc".into();
        assert!(!store.update_build(&succeeded, BuildStatus::Running).await.expect("late report"));
        assert!(!store.update_build(&succeeded, BuildStatus::Queued).await.expect("stale"));
        assert_eq!(store.get_build("b-1").await.expect("get"), Some(cancelled), "the final status stays");
        let mut ghost = build("ghost", 1_000);
        ghost.status = BuildStatus::Failed;
        assert!(!store.update_build(&ghost, BuildStatus::Queued).await.expect("unknown id"));
    }

    pub async fn builds_logs(store: Arc<dyn Store>) {
        store.insert_build(&build("b-1", 1_000)).await.expect("insert");
        assert_eq!(store.get_build_log("b-1").await.expect("log"), Some(Vec::new()), "empty until stored");
        let log: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        assert!(store.save_build_log("b-1", &log).await.expect("save"));
        assert_eq!(store.get_build_log("b-1").await.expect("log"), Some(log));
        assert!(!store.save_build_log("nope", b"x").await.expect("save"));
        assert_eq!(store.get_build_log("nope").await.expect("log"), None);
        // Storing the log leaves the record as it was.
        assert_eq!(store.get_build("b-1").await.expect("get"), Some(build("b-1", 1_000)));
    }

    pub async fn writer_acquire_refuse_release(url: String) {
        let (a, b, c) = (writer("a", 1111), writer("b", 2222), writer("c", 3333));
        let (store_a, lease_a) = store::open_writer(&url, &a).await.expect("first writer");
        assert!(lease_a.is_held());
        store_a.insert_node(&node("n-1", "alpha")).await.expect("the writer writes");

        // Refused, told who holds it, and again (a refusal leaves nothing behind).
        expect_refused(&url, &b, &a).await;
        expect_refused(&url, &c, &a).await;
        store_a.insert_node(&node("n-2", "beta")).await.expect("the writer still writes");

        // Released: the next one gets it and sees the data.
        lease_a.release().await;
        let (store_b, lease_b) = store::open_writer(&url, &b).await.expect("writer after a release");
        assert_eq!(store_b.list_nodes().await.expect("list").len(), 2);
        expect_refused(&url, &a, &b).await;
        lease_b.release().await;
        let (_store_c, lease_c) = store::open_writer(&url, &c).await.expect("third writer");
        expect_refused(&url, &a, &c).await;
        lease_c.release().await;
    }

    pub async fn writer_freed_when_its_holder_dies(url: String) {
        let (a, b, c) = (writer("a", 1111), writer("b", 2222), writer("c", 3333));
        let (store_a, lease_a) = store::open_writer(&url, &a).await.expect("first writer");
        store_a.insert_node(&node("n-1", "alpha")).await.expect("the writer writes");
        // Gone without releasing (as with SIGKILL): its record stays, its lock does not.
        drop(lease_a);
        drop(store_a);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (store_b, lease_b) = loop {
            match store::open_writer(&url, &b).await {
                Ok(opened) => break opened,
                Err(StoreError::WriterTaken { holder }) if std::time::Instant::now() < deadline => {
                    assert_eq!(holder.as_ref(), Some(&a), "only the dead writer can hold it");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(err) => panic!("the lock of a dead writer was not freed: {err}"),
            }
        };
        assert_eq!(store_b.list_nodes().await.expect("list").len(), 1);
        // The stale record was overwritten.
        expect_refused(&url, &c, &b).await;
        lease_b.release().await;
    }
}

// ---- backend-specific tests ----

/// Data survives closing and reopening the file; migrations run again harmlessly.
#[tokio::test]
async fn sqlite_reopen_keeps_data() {
    use chrono::{TimeZone, Utc};
    use diplo_control_plane::model::{NewEvent, NodeRecord, NodeStatus};
    use diplo_control_plane::store::SqliteStore;

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("a").join("b").join("diplo.db").display());
    let at = Utc.timestamp_millis_opt(1_750_000_000_000).single().expect("time");
    let node = NodeRecord {
        id: "n-1".into(),
        name: "alpha".into(),
        status: NodeStatus::Unhealthy,
        fingerprint: Default::default(),
        cordoned: true,
        labels: [("k".to_owned(), "v".to_owned())].into(),
        joined_at: at,
        last_seen_at: at,
        address: "192.0.2.1:1".into(),
    };
    let event = NewEvent { at, kind: "node.joined".into(), actor: "system".into(), subject: "n-1".into(), message: "joined".into() };

    let first = SqliteStore::open(&url).await.expect("first open");
    first.insert_node(&node).await.expect("insert");
    let seq = first.append_event(&event).await.expect("append");
    first.close().await;
    drop(first);
    assert!(dir.path().join("a/b/diplo.db").is_file(), "file and parent dirs created");

    for round in 0..2 {
        let again = SqliteStore::open(&url).await.expect("reopen");
        assert_eq!(again.get_node("n-1").await.expect("get"), Some(node.clone()), "round {round}");
        let events = again.list_events(0, 10).await.expect("events");
        assert_eq!(events.len(), 1 + round);
        assert_eq!(events[0].sequence, seq);
        // The sequence continues after a reopen.
        assert!(again.append_event(&event).await.expect("append") > seq);
        again.close().await;
    }

    // Through the generic entry point too.
    let generic = store::open(&url).await.expect("store::open");
    assert_eq!(generic.list_nodes().await.expect("list"), vec![node]);
}

/// A URL whose directory cannot be created fails with `Connect`.
#[tokio::test]
async fn sqlite_unusable_path_fails_with_connect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").expect("write");
    let url = format!("sqlite://{}/diplo.db", file.display());
    match store::open(&url).await {
        Err(store::StoreError::Connect { url: named, .. }) => assert!(named.contains("plain-file")),
        Err(other) => panic!("expected Connect, got {other}"),
        Ok(_) => panic!("opened a database under a regular file"),
    }
}

/// An unreachable PostgreSQL fails fast, naming the server but not the password.
#[tokio::test]
async fn postgres_unreachable_fails_fast() {
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), store::open("postgres://diplo:s3cr3t-pw@127.0.0.1:1/nope"))
        .await
        .expect("store::open gave up within 10 s");
    let err = match result {
        Err(err) => err,
        Ok(_) => panic!("connected to 127.0.0.1:1"),
    };
    let message = err.to_string();
    assert!(matches!(err, store::StoreError::Connect { .. }), "{message}");
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("s3cr3t-pw"), "{message}");
    eprintln!("unreachable PostgreSQL after {:?}: {message}", started.elapsed());
}

#[tokio::test]
async fn unsupported_url() {
    for url in ["mysql://x", "mysql://root:hunter2@db/x", "", "/var/lib/diplo/state.db"] {
        match store::open(url).await {
            Err(store::StoreError::UnsupportedUrl(shown)) => {
                assert!(!shown.contains("hunter2"), "{shown}");
            }
            Err(other) => panic!("{url:?}: expected UnsupportedUrl, got {other}"),
            Ok(_) => panic!("{url:?}: opened"),
        }
    }
}

// ---- the PostgreSQL writer lock across connection failures ----

/// A writer whose lock connection is killed (as by a PostgreSQL restart) takes the lock
/// again and writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_takes_the_lock_again_after_its_connection_breaks() {
    with_postgres_url(|url| {
        Box::pin(async move {
            use diplo_control_plane::store::{StoreError, WriterIdentity};
            let at = chrono::DateTime::from_timestamp_millis(1_750_000_000_000).expect("t");
            let me = WriterIdentity { host: "host-a".into(), pid: 1111, started_at: at, version: "x".into() };
            let (store_a, lease) = store::open_writer(&url, &me).await.expect("writer");
            let mut admin = admin_connection(&url).await;
            let before = lease_sessions(&mut admin).await;
            assert_eq!(before.len(), 1, "one lease session");
            assert_eq!(terminate_lease_sessions(&mut admin).await, 1);

            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                let now = lease_sessions(&mut admin).await;
                if now.len() == 1 && now != before && lease.is_held() && store_a.list_nodes().await.is_ok() {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the writer did not take its lock again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            // It holds the lock again, under its own name.
            let other = WriterIdentity { host: "host-b".into(), pid: 2222, ..me.clone() };
            match store::open_writer(&url, &other).await {
                Err(StoreError::WriterTaken { holder }) => assert_eq!(holder.as_ref(), Some(&me)),
                Err(err) => panic!("{err}"),
                Ok(_) => panic!("a second writer got in after the first took its lock again"),
            }
            assert!(!store_a.delete_node("n-x").await.expect("writes again"));
            lease.release().await;
        })
    })
    .await;
}

/// When another process takes the lock while the writer's lock connection is down, the
/// first one learns it lost the lock (naming the new holder) and its store serves no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_that_lost_its_lock_stops() {
    with_postgres_url(|url| {
        Box::pin(async move {
            use diplo_control_plane::store::{StoreError, WRITER_LOCK_KEY, WriterIdentity};
            let at = chrono::DateTime::from_timestamp_millis(1_750_000_000_000).expect("t");
            let me = WriterIdentity { host: "host-a".into(), pid: 1111, started_at: at, version: "x".into() };
            let (store_a, mut lease) = store::open_writer(&url, &me).await.expect("writer");
            store_a.list_nodes().await.expect("serves");

            // Another session queues for the lock, then the writer's session is killed: the
            // queued one gets it (a try-lock never jumps the queue).
            let mut other = admin_connection(&url).await;
            let taker = tokio::spawn(async move {
                sqlx::query("SELECT pg_advisory_lock($1)").bind(WRITER_LOCK_KEY).execute(&mut other).await.expect("lock");
                sqlx::query(
                    "INSERT INTO writer_lease (id, host, pid, started_at, version) VALUES (1, 'host-b', 2222, 1750000000000, 'y') \
                     ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, \
                     started_at = excluded.started_at, version = excluded.version",
                )
                .execute(&mut other)
                .await
                .expect("record");
                other
            });
            let mut admin = admin_connection(&url).await;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let waiting: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)")
                        .fetch_one(&mut admin)
                        .await
                        .expect("pg_locks");
                if waiting {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the other session never queued");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            assert_eq!(terminate_lease_sessions(&mut admin).await, 1);
            let _other = tokio::time::timeout(std::time::Duration::from_secs(10), taker).await.expect("lock taken").expect("task");

            let lost = tokio::time::timeout(std::time::Duration::from_secs(15), lease.lost()).await.expect("the loss is noticed");
            match &lost {
                StoreError::WriterTaken { holder: Some(holder) } => assert_eq!((holder.host.as_str(), holder.pid), ("host-b", 2222)),
                other => panic!("expected WriterTaken naming the new holder, got {other:?}"),
            }
            assert!(lost.to_string().contains("pid 2222 on host host-b"), "{lost}");
            assert!(!lease.is_held());
            // Nothing more is written through the old writer's store.
            let refused = store_a.delete_node("n-1").await;
            assert!(refused.is_err(), "the store of a writer that lost its lock still wrote: {refused:?}");
        })
    })
    .await;
}

/// The backend pids of the sessions holding writer locks on this database.
async fn lease_sessions(admin: &mut sqlx::PgConnection) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() ORDER BY pid")
        .bind(diplo_control_plane::store::LEASE_APPLICATION_NAME)
        .fetch_all(admin)
        .await
        .expect("pg_stat_activity")
}

async fn admin_connection(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.expect("connect")
}

/// Kills the sessions holding writer locks on this database (waiting until they are
/// gone); returns how many.
async fn terminate_lease_sessions(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(diplo_control_plane::store::LEASE_APPLICATION_NAME)
    .fetch_one(admin)
    .await
    .expect("terminate")
}
