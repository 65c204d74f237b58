use super::*;
use proptest::prelude::*;

const CROODY: &str = include_str!("../tests/fixtures/croody-compose.yml");

fn ok(source: &str) -> StackSpec {
    parse(source, None).unwrap_or_else(|err| panic!("{err}\n{source}"))
}

fn service(source: &str, name: &str) -> ServiceSpec {
    ok(source).services.remove(name).expect("service")
}

#[test]
fn each_key_maps_to_the_model() {
    let web = service(
        r#"
services:
  web:
    image: busybox:1
    command: httpd -f -p "80" -h '/srv/x y'
    container_name: web_one
    environment:
      A: 1
      B: "two"
      C: true
    ports: ["8080:80", "53/udp", {target: 443, published: "8443", protocol: tcp}]
    volumes:
      - data:/data:ro
      - /srv/logs:/logs
      - {type: volume, source: data, target: /more}
    tmpfs: /run
    read_only: true
    healthcheck:
      test: ["CMD-SHELL", "wget -qO- http://localhost/ || exit 1"]
      interval: 1m30s
      timeout: 1500ms
      retries: 4
    deploy:
      replicas: 1
      resources:
        limits: {cpus: "1.5", memory: 1g}
    restart: on-failure
    networks:
      back:
        aliases: [www]
volumes:
  data:
networks:
  back:
"#,
        "web",
    );
    let c = &web.container;
    assert_eq!(c.image, "busybox:1");
    assert_eq!(c.command, ["httpd", "-f", "-p", "80", "-h", "/srv/x y"]);
    assert_eq!(web.container_name.as_deref(), Some("web_one"));
    assert_eq!(web.aliases, ["www", "web_one"]);
    assert_eq!(web.networks, ["back"]);
    assert_eq!(c.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(c.env.get("B").map(String::as_str), Some("two"));
    assert_eq!(c.env.get("C").map(String::as_str), Some("true"));
    assert_eq!(
        c.ports,
        [
            PortMapping { host_port: 8080, container_port: 80, protocol: Protocol::Tcp },
            PortMapping { host_port: 0, container_port: 53, protocol: Protocol::Udp },
            PortMapping { host_port: 8443, container_port: 443, protocol: Protocol::Tcp },
        ]
    );
    assert_eq!(
        c.mounts,
        [
            Mount { source: "data".into(), target: "/data".into(), read_only: true },
            Mount { source: "/srv/logs".into(), target: "/logs".into(), read_only: false },
            Mount { source: "data".into(), target: "/more".into(), read_only: false },
        ]
    );
    assert_eq!(c.tmpfs, ["/run"]);
    assert!(c.read_only);
    let health = c.healthcheck.as_ref().expect("health");
    assert_eq!(health.probe, HealthProbe::Shell { command: "wget -qO- http://localhost/ || exit 1".into() });
    assert_eq!(health.interval, Duration::from_secs(90));
    assert_eq!(health.timeout, Duration::from_millis(1500));
    assert_eq!(health.retries, 4);
    assert_eq!(c.memory_bytes, Some(1 << 30));
    assert_eq!(c.cpu_millis, Some(1500));
    assert_eq!(c.restart_policy, RestartPolicy::OnFailure(None));
    assert_eq!(web.replicas, 1);
}

#[test]
fn short_forms_defaults_and_lists() {
    let stack = ok(r#"
services:
  db:
    image: postgres
    healthcheck:
      test: pg_isready -U $$USER
  api:
    image: api
    environment: ["X=1", "Y=a=b", "EMPTY="]
    mem_limit: 256m
    cpus: 0.25
    depends_on: [db]
  web:
    image: web
    depends_on:
      api: {condition: service_started}
      db: {condition: service_healthy}
"#);
    let db = &stack.services["db"];
    assert_eq!(db.replicas, 1, "one replica by default");
    assert_eq!(db.networks, ["default"]);
    let health = db.container.healthcheck.as_ref().expect("health");
    assert_eq!(health.probe, HealthProbe::Shell { command: "pg_isready -U $USER".into() }, "$$ is a literal $");
    assert_eq!(
        (health.interval, health.timeout, health.retries),
        (DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_TIMEOUT, DEFAULT_HEALTH_RETRIES)
    );
    let api = &stack.services["api"].container;
    assert_eq!(api.env.get("Y").map(String::as_str), Some("a=b"));
    assert_eq!(api.env.get("EMPTY").map(String::as_str), Some(""));
    assert_eq!((api.memory_bytes, api.cpu_millis), (Some(256 << 20), Some(250)));
    assert_eq!(stack.services["api"].depends_on, BTreeMap::from([("db".to_owned(), DependsCondition::ServiceStarted)]));
    assert_eq!(stack.services["web"].depends_on["db"], DependsCondition::ServiceHealthy);
    assert_eq!(start_order(&stack), ["db", "api", "web"]);
    let numbers = service("services:\n  s:\n    image: b\n    command: [sleep, 10, true]\n", "s");
    assert_eq!(numbers.container.command, ["sleep", "10", "true"], "scalars in lists are read as text");
}

#[test]
fn json_documents_parse_like_yaml() {
    let json = r#"{"services": {"web": {"image": "busybox", "ports": ["80:80"], "deploy": {"replicas": 2}}}}"#;
    let web = service(json, "web");
    assert_eq!(web.replicas, 2);
    assert_eq!(web.container.ports[0].host_port, 80);
    let err = parse(r#"{"services": {"web": {"image": "busybox", "replicas": 2}}}"#, None).expect_err("unknown key");
    assert_eq!(err.line, Some(1));
    assert!(err.key.ends_with("replicas"), "{err}");
}

#[test]
fn env_files_are_read_through_the_reader_and_refused_without_one() {
    let source = "services:\n  web:\n    image: busybox\n    env_file: [.env, extra.env]\n    environment:\n      B: from-env\n";
    let read = |path: &str| match path {
        ".env" => Ok("# comment\nA=1\nB=from-file\n\n".to_owned()),
        "extra.env" => Ok("C=3=3\n".to_owned()),
        other => Err(format!("no file {other}")),
    };
    let spec = parse(source, Some(&read)).expect("parses");
    let env = &spec.services["web"].container.env;
    assert_eq!(env.get("A").map(String::as_str), Some("1"));
    assert_eq!(env.get("B").map(String::as_str), Some("from-env"), "environment wins over env_file");
    assert_eq!(env.get("C").map(String::as_str), Some("3=3"));
    let refused = parse(source, None).expect_err("no reader");
    assert_eq!((refused.line, refused.key.as_str()), (Some(4), "services.web.env_file"));
    let missing = parse("services:\n  web:\n    image: b\n    env_file: nope.env\n", Some(&read)).expect_err("missing file");
    assert!(missing.message.contains("no file nope.env"), "{missing}");
    let bad = |path: &str| if path == "x" { Ok("NOEQUALS\n".to_owned()) } else { Err(String::new()) };
    let malformed = parse("services:\n  web:\n    image: b\n    env_file: x\n", Some(&bad)).expect_err("bad line");
    assert!(malformed.message.contains("x line 1: expected KEY=VALUE"), "{malformed}");
}

#[test]
fn bad_files_name_the_line_and_the_key() {
    // (file, line, key, words in the message)
    let cases: &[(&str, usize, &str, &str)] = &[
        ("services:\n  web:\n    image: b\n    privileged: true\n", 4, "services.web.privileged", "unknown field"),
        ("services:\n  web:\n    image: b\nconfigs: {}\n", 4, "configs", "unknown field"),
        ("services:\n  web:\n    image: b\n    deploy:\n      mode: global\n", 5, "services.web.deploy.mode", "unknown field"),
        ("services:\n  web:\n    build: ../web\n", 3, "services.web.build", "inside the repository"),
        ("services:\n  web:\n    build:\n      context: https://x/y.git\n", 4, "services.web.build.context", "remote context"),
        ("services:\n  web:\n    build:\n      context: .\n      target: dev\n", 5, "services.web.build.target", "not supported"),
        ("services:\n  web:\n    build:\n      dockerfile: /etc/passwd\n", 4, "services.web.build.dockerfile", "relative path"),
        ("services:\n  web:\n    build:\n      args: [NOEQUALS]\n", 4, "services.web.build.args", "KEY=VALUE"),
        ("services:\n  web:\n    build: ./x\n    image: ${TAG}\n", 4, "services.web.image", ""),
        ("services:\n  web:\n    command: [x]\n", 2, "services.web", "image (or build) is required"),
        ("services:\n  web:\n    image: b\n    mem_reservation: lots\n", 4, "services.web.mem_reservation", "not a size"),
        (
            "services:\n  web:\n    image: b\n    deploy:\n      resources:\n        reservations: {cpus: 1}\n",
            6,
            "services.web.deploy.resources.reservations.cpus",
            "CPU reservations are not supported",
        ),
        (
            "services:\n  web:\n    image: b\n    healthcheck:\n      test: [CMD, x]\n      start_period: later\n",
            6,
            "services.web.healthcheck.start_period",
            "not a duration",
        ),
        (
            "services:\n  web:\n    image: b\n    healthcheck:\n      test: [CMD, x]\n      retries: 1000\n",
            6,
            "services.web.healthcheck.retries",
            "",
        ),
        (
            "services:\n  web:\n    image: b\n    healthcheck:\n      test: [CMD, x]\n      interval: soon\n",
            6,
            "services.web.healthcheck.interval",
            "not a duration",
        ),
        ("services:\n  web:\n    image: b\n    healthcheck:\n      test: [BOGUS]\n", 5, "services.web.healthcheck.test", "CMD-SHELL"),
        ("services:\n  web:\n    image: b\n    healthcheck:\n      interval: 5s\n", 4, "services.web.healthcheck.test", "needs a test"),
        ("services:\n  web:\n    image: b\n    ports: [\"1.2.3.4:80:80\"]\n", 4, "services.web.ports", "host addresses"),
        ("services:\n  web:\n    image: b\n    ports: [\"8000-8002:80\"]\n", 4, "services.web.ports", "ranges"),
        ("services:\n  web:\n    image: b\n    ports: [\"80/sctp\"]\n", 4, "services.web.ports", "tcp or udp"),
        ("services:\n  web:\n    image: b\n    volumes: [\"./src:/app\"]\n", 4, "services.web.volumes", "relative bind"),
        ("services:\n  web:\n    image: b\n    volumes: [\"data:/app\"]\n", 4, "services.web.volumes", "not declared"),
        ("services:\n  web:\n    image: b\n    volumes: [\"/data\"]\n", 4, "services.web.volumes", "anonymous"),
        ("services:\n  web:\n    image: b\n    volumes: [\"/a:rel\"]\n", 4, "services.web.volumes", "absolute path"),
        ("services:\n  web:\n    image: b\n    tmpfs: [\"/run:size=1m\"]\n", 4, "services.web.tmpfs", "absolute path"),
        ("services:\n  web:\n    image: b\n    tmpfs: {a: b}\n", 4, "services.web.tmpfs", "a string or a list of strings"),
        ("services:\n  web:\n    image: b\n    command: [sleep, [1]]\n", 4, "services.web.command[1]", "expected a string"),
        ("services:\n  web:\n    image: b\n    mem_limit: lots\n", 4, "services.web.mem_limit", "not a size"),
        ("services:\n  web:\n    image: b\n    cpus: -1\n", 4, "services.web.cpus", "CPU count"),
        ("services:\n  web:\n    image: b\n    restart: sometimes\n", 4, "services.web.restart", "unknown restart policy"),
        ("services:\n  web:\n    image: b\n    environment:\n      SECRET: ${SECRET}\n", 4, "services.web.environment", "interpolation"),
        ("services:\n  web:\n    image: b\n    environment: [FROM_HOST]\n", 4, "services.web.environment", "no value"),
        ("services:\n  web:\n    image: b\n    networks: [back]\n", 4, "services.web.networks", "not declared"),
        ("services:\n  web:\n    image: b\n    depends_on: [db]\n", 4, "services.web.depends_on.db", "no service"),
        (
            "services:\n  db:\n    image: b\n  web:\n    image: b\n    depends_on:\n      db: {condition: service_healthy}\n",
            7,
            "services.web.depends_on.db",
            "needs a healthcheck",
        ),
        (
            "services:\n  db:\n    image: b\n  web:\n    image: b\n    depends_on:\n      db: {condition: service_completed_successfully}\n",
            7,
            "services.web.depends_on.db.condition",
            "not supported",
        ),
        ("services:\n  web:\n    image: b\n    depends_on: [web]\n", 4, "services.web.depends_on", "cycle: web -> web"),
        (
            "services:\n  a:\n    image: b\n    depends_on: [b]\n  b:\n    image: b\n    depends_on: [a]\n",
            4,
            "services.a.depends_on",
            "cycle: a -> b -> a",
        ),
        ("services:\n  -web:\n    image: b\n", 2, "services.-web", "service name"),
        (
            "services:\n  web:\n    image: b\n    container_name: x\n    deploy: {replicas: 2}\n",
            4,
            "services.web.container_name",
            "1 replica",
        ),
        (
            "services:\n  web:\n    image: b\n    mem_limit: 1g\n    deploy:\n      resources:\n        limits: {memory: 2g}\n",
            4,
            "services.web.mem_limit",
            "differs",
        ),
        ("services:\n  web:\n    image: b\nvolumes:\n  data:\n    driver: nfs\n", 6, "volumes.data.driver", "only local"),
        ("services:\n  web:\n    image: b\nnetworks:\n  n:\n    driver: overlay\n", 6, "networks.n.driver", "only bridge"),
        ("services: {}\n", 1, "services", "at least one service"),
        ("services:\n  web:\n    image: b\n  web:\n    image: c\n", 4, "services.web", "duplicate"),
        ("services:\n  web:\n    image: b\n    image: c\n", 4, "services.web.image", "duplicate"),
        ("services:\n  web:\n    image: [b\n", 4, "", "did not find expected"),
    ];
    for (source, line, key, words) in cases {
        let err = parse(source, None).expect_err(source);
        assert_eq!(err.line, Some(*line), "{source}\n{err}");
        assert_eq!(err.key, *key, "{source}\n{err}");
        assert!(err.message.contains(words), "{source}\n{err}");
        assert!(err.to_string().starts_with(&format!("line {line}: ")), "{err}");
    }
}

#[test]
fn size_bounds_are_enforced() {
    let huge = format!("services:\n  web:\n    image: b\n# {}\n", "x".repeat(MAX_COMPOSE_BYTES));
    assert!(parse(&huge, None).expect_err("too big").message.contains("bytes"));
    let many: String = (0..=MAX_SERVICES).map(|i| format!("  s{i}:\n    image: b\n")).collect();
    let err = parse(&format!("services:\n{many}"), None).expect_err("too many");
    assert!(err.message.contains("65 services"), "{err}");
    let long = format!("services:\n  {}:\n    image: b\n", "s".repeat(MAX_SERVICE_NAME + 1));
    assert!(parse(&long, None).expect_err("long name").message.contains("at most 40"));
}

#[test]
fn words_split_like_a_shell() {
    let cases: &[(&str, &[&str])] = &[
        ("a b  c", &["a", "b", "c"]),
        ("sh -c 'echo a b'", &["sh", "-c", "echo a b"]),
        (r#"x "a \"q\" b" c\ d"#, &["x", "a \"q\" b", "c d"]),
        ("''", &[""]),
        ("", &[]),
    ];
    for (text, words) in cases {
        assert_eq!(split_words(text).expect(text), *words, "{text}");
    }
    for bad in ["'open", "\"open", "end\\"] {
        assert!(split_words(bad).is_err(), "{bad}");
    }
}

#[test]
fn entrypoint_reservations_start_period_and_retry_limits_map_to_the_model() {
    let file = "services:\n  web:\n    image: b\n    entrypoint: [/bin/sh, -c]\n    command: [\"exec httpd\"]\n    mem_reservation: 64m\n    restart: on-failure:3\n    healthcheck:\n      test: [CMD, true]\n      interval: 1m30s\n      start_period: 500ms\n  db:\n    image: b\n    deploy:\n      resources:\n        reservations: {memory: 32m}\n";
    let stack = ok(file);
    let web = &stack.services["web"].container;
    assert_eq!(web.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(web.command, ["exec httpd"]);
    assert_eq!(web.memory_reservation, Some(64 << 20));
    assert_eq!(web.restart_policy, RestartPolicy::OnFailure(Some(3)));
    let health = web.healthcheck.as_ref().expect("a health check");
    assert_eq!((health.interval, health.start_period), (Duration::from_secs(90), Duration::from_millis(500)));
    assert_eq!(health.probe, HealthProbe::Exec { argv: vec!["true".into()] });
    assert_eq!(stack.services["db"].container.memory_reservation, Some(32 << 20));
}

#[test]
fn the_croody_file_parses_in_dependency_order() {
    let stack = ok(CROODY);
    assert_eq!(stack.services.len(), 6);
    assert_eq!(stack.volumes.len(), 3);
    let gateway = &stack.services["gateway"];
    assert!(gateway.container.read_only);
    assert_eq!(gateway.container.tmpfs, ["/var/cache/nginx", "/var/run"]);
    assert_eq!((gateway.container.memory_bytes, gateway.container.cpu_millis), (Some(256 << 20), Some(500)));
    assert_eq!(gateway.container.restart_policy, RestartPolicy::UnlessStopped);
    assert_eq!(gateway.aliases, ["gateway_new"]);
    assert_eq!(stack.services["croody"].depends_on["db"], DependsCondition::ServiceHealthy);
    let order = start_order(&stack);
    let position = |name: &str| order.iter().position(|n| n == name).expect(name);
    assert!(position("db") < position("croody") && position("croody") < position("gateway"), "{order:?}");
    assert!(position("telemetry-gateway") < position("robot-sim"), "{order:?}");
    // Re-serialised, it reads back the same.
    assert_eq!(ok(&stack.to_yaml()), stack);
}

#[test]
fn locate_finds_block_and_json_keys() {
    let yaml = "services:\n  web:\n    image: web\n  api:\n    image: ports\n    ports: []\n";
    assert_eq!(locate(yaml, &["services", "api", "ports"]), Some(6));
    assert_eq!(locate(yaml, &["services", "web"]), Some(2));
    assert_eq!(locate(yaml, &["services", "db"]), Some(1), "the deepest key found");
    assert_eq!(locate(yaml, &["volumes"]), None);
    let json = "{\n \"services\": {\"web\": {\"image\": \"web\",\n \"ports\": []}}}";
    assert_eq!(locate(json, &["services", "web", "ports"]), Some(3));
}

fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 $'\"\\\\=:/._-]{0,12}"
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,8}"
}

fn service_strategy(volumes: Vec<String>) -> impl Strategy<Value = ServiceSpec> {
    let mounts = proptest::collection::vec((proptest::sample::select(volumes), "/[a-z]{1,6}", any::<bool>()), 0..3)
        .prop_map(|m| m.into_iter().map(|(source, target, read_only)| Mount { source, target, read_only }).collect::<Vec<_>>());
    let ports = proptest::collection::vec((any::<u16>(), 1..=u16::MAX, any::<bool>()), 0..3).prop_map(|p| {
        p.into_iter()
            .map(|(host, container, udp)| PortMapping {
                host_port: host,
                container_port: container,
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            })
            .collect::<Vec<_>>()
    });
    let health =
        proptest::option::of((proptest::collection::vec("[a-z]{1,6}", 1..3), 1_000u64..100_000, 1_000u64..100_000, 1u32..10, 0u64..60_000))
            .prop_map(|h| {
                h.map(|(argv, interval, timeout, retries, start)| HealthCheck {
                    probe: HealthProbe::Exec { argv },
                    interval: Duration::from_millis(interval),
                    timeout: Duration::from_millis(timeout),
                    retries,
                    start_period: Duration::from_millis(start),
                })
            });
    (
        (name(), proptest::collection::vec(word(), 0..4), proptest::collection::btree_map("[A-Z_]{1,6}", word(), 0..4)),
        (ports, mounts, proptest::collection::vec("/[a-z]{1,6}", 0..2), any::<bool>()),
        (proptest::option::of(1u64..(1 << 40)), proptest::option::of(1u32..64_000), 0u32..5, 0usize..5),
        (health, proptest::option::of(name()), proptest::collection::vec(name(), 0..2)),
    )
        .prop_map(
            |(
                (image, command, env),
                (ports, mounts, tmpfs, read_only),
                (memory, cpus, replicas, restart),
                (healthcheck, cname, aliases),
            )| {
                let restart_policy = [
                    RestartPolicy::No,
                    RestartPolicy::Always,
                    RestartPolicy::OnFailure(None),
                    RestartPolicy::UnlessStopped,
                    RestartPolicy::OnFailure(Some(3)),
                ][restart];
                let replicas = if cname.is_some() { replicas.min(1) } else { replicas };
                let mut aliases: Vec<String> = aliases.into_iter().fold(Vec::new(), |mut all, a| {
                    if !all.contains(&a) && Some(&a) != cname.as_ref() {
                        all.push(a);
                    }
                    all
                });
                if let Some(c) = &cname
                    && !aliases.contains(c)
                {
                    aliases.push(c.clone());
                }
                ServiceSpec {
                    replicas,
                    container: ContainerSpec {
                        image,
                        command,
                        env,
                        ports,
                        mounts,
                        memory_bytes: memory,
                        cpu_millis: cpus,
                        restart_policy,
                        read_only,
                        tmpfs,
                        healthcheck,
                        ..ContainerSpec::default()
                    },
                    depends_on: BTreeMap::new(),
                    networks: vec!["default".to_owned()],
                    aliases,
                    container_name: cname,
                    build: None,
                }
            },
        )
}

fn stack_strategy() -> impl Strategy<Value = StackSpec> {
    proptest::collection::btree_set(name(), 1..4)
        .prop_flat_map(|volumes| {
            let vols: Vec<String> = volumes.iter().cloned().collect();
            (Just(volumes), proptest::collection::btree_map(name(), service_strategy(vols), 1..4), any::<u64>())
        })
        .prop_map(|(volumes, mut services, seed)| {
            // Dependencies only on services earlier in name order: never a cycle.
            let names: Vec<String> = services.keys().cloned().collect();
            for (index, name) in names.iter().enumerate() {
                for (earlier, dependency) in names[..index].iter().enumerate() {
                    if seed >> ((index * 4 + earlier) % 64) & 1 == 1 {
                        let healthy = services[dependency].container.healthcheck.is_some() && seed >> ((index + earlier) % 64) & 2 == 2;
                        let condition = if healthy { DependsCondition::ServiceHealthy } else { DependsCondition::ServiceStarted };
                        if let Some(service) = services.get_mut(name) {
                            service.depends_on.insert(dependency.clone(), condition);
                        }
                    }
                }
            }
            // Some services are built (with or without an image naming the result).
            for (index, (name, service)) in services.iter_mut().enumerate() {
                if seed >> (index + 40) & 1 == 1 {
                    let dockerfile = (seed >> (index + 50) & 1 == 1).then(|| "Dockerfile.$dev".to_owned());
                    let args = BTreeMap::from([("V".to_owned(), format!("{index}$"))]);
                    service.build = Some(ServiceBuild { context: format!("./{name}"), dockerfile, args });
                    if seed >> (index + 56) & 1 == 1 {
                        service.container.image.clear();
                    }
                }
            }
            StackSpec { services, volumes, networks: BTreeSet::new(), repository: None }
        })
}

proptest! {
    #[test]
    fn a_parsed_spec_reserialised_parses_to_the_same_spec(stack in stack_strategy()) {
        let yaml = stack.to_yaml();
        let back = parse(&yaml, None).map_err(|err| TestCaseError::fail(format!("{err}\n{yaml}")))?;
        prop_assert_eq!(&back, &stack, "{}", yaml);
        let json = serde_json::to_string(&stack.to_compose()).map_err(|err| TestCaseError::fail(err.to_string()))?;
        prop_assert_eq!(parse(&json, None).map_err(|err| TestCaseError::fail(format!("{err}\n{json}")))?, stack);
    }
}

#[test]
fn build_sections_are_read_in_both_forms() {
    let stack = ok(
        "services:\n  api:\n    build: ./api\n  web:\n    image: reg/web:1\n    build:\n      context: web\n      dockerfile: Dockerfile.prod\n      args: [\"V=1\", \"PRICE=$$5\"]\n  db:\n    image: b\n",
    );
    let api = &stack.services["api"];
    assert_eq!(api.build, Some(ServiceBuild { context: "./api".into(), dockerfile: None, args: BTreeMap::new() }));
    assert_eq!(api.container.image, "", "no image: the control plane names the built one");
    let web = &stack.services["web"];
    let args = BTreeMap::from([("PRICE".to_owned(), "$5".to_owned()), ("V".to_owned(), "1".to_owned())]);
    assert_eq!(web.build, Some(ServiceBuild { context: "web".into(), dockerfile: Some("Dockerfile.prod".into()), args }));
    assert_eq!(web.container.image, "reg/web:1", "the image names the built result");
    assert_eq!(stack.services["db"].build, None);
    assert_eq!(ok(&stack.to_yaml()), stack, "round trip");
}
