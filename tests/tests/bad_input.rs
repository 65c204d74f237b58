//! Wrong input fails fast, clearly and safely: join tokens that do not fit, an
//! unreachable database, REST calls without valid credentials, a single-use token
//! used twice, revoked and expired join tokens.

use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions, find_node, wait_until};

/// How long an agent may take to give up on a token that cannot work.
const AGENT_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// The same token with a different (valid, 64 hex digits) CA hash.
fn with_other_ca_hash(token: &str) -> String {
    let parts: Vec<&str> = token.split("::").collect();
    assert_eq!(parts.len(), 3, "DIPLO1::<hash>::<credential> expected, got {token}");
    assert_eq!(parts[1].len(), 64, "{token}");
    let other: String = parts[1]
        .chars()
        .map(|c| {
            let digit = c.to_digit(16).unwrap_or_else(|| panic!("not hex: {token}"));
            char::from_digit((digit + 1) % 16, 16).expect("hex digit")
        })
        .collect();
    assert_ne!(other, parts[1]);
    format!("{}::{other}::{}", parts[0], parts[2])
}

#[test]
fn token_pinning_another_ca_is_refused_and_adds_no_node() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let token = with_other_ca_hash(&control_plane.join_token(&[]));
    let mut agent = control_plane.start_agent("wrong-ca", Some(&token));
    let started = Instant::now();
    let status = agent
        .wait_exit(AGENT_EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("the agent still runs {AGENT_EXIT_TIMEOUT:?} after starting with a wrong-CA token:\n{}", agent.logs()));
    eprintln!("[test] agent exited with {status} after {:.1?}", started.elapsed());
    assert!(!status.success(), "the agent must fail:\n{}", agent.logs());
    let stderr = agent.stderr();
    assert!(stderr.contains("CA does not match"), "stderr should say the CA does not match:\n{stderr}");
    assert!(!agent.data_dir().join("node.json").exists(), "no identity may be saved");
    assert_eq!(control_plane.nodes(), Vec::<serde_json::Value>::new(), "no node was added");
}

#[test]
fn malformed_tokens_are_refused() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let real = control_plane.join_token(&[]);
    let credential = real.rsplit("::").next().expect("credential").to_owned();
    let cases = [
        "not-a-token".to_owned(),
        format!("DIPLO1::1234abcd::{credential}"),
        format!("DIPLO9::{}::{credential}", "a".repeat(64)),
        format!("DIPLO1::{}::{credential}", "g".repeat(64)),
    ];
    for (i, token) in cases.iter().enumerate() {
        let mut agent = control_plane.start_agent(&format!("malformed-{i}"), Some(token));
        let status =
            agent.wait_exit(AGENT_EXIT_TIMEOUT).unwrap_or_else(|| panic!("the agent still runs with token {token:?}:\n{}", agent.logs()));
        assert!(!status.success(), "token {token:?} must be refused:\n{}", agent.logs());
        let stderr = agent.stderr();
        assert!(stderr.contains("invalid --token: malformed token"), "token {token:?}: stderr should name the problem:\n{stderr}");
    }
    assert_eq!(control_plane.nodes(), Vec::<serde_json::Value>::new(), "no node was added");
}

#[test]
fn unreachable_database_fails_fast_naming_it_without_the_password() {
    const PASSWORD: &str = "Sup3rS3cretPw";
    let options = ControlPlaneOptions { database_url: Some(format!("postgres://diplo:{PASSWORD}@127.0.0.1:1/nope")), ..Default::default() };
    let started = Instant::now();
    let mut control_plane = ControlPlane::spawn(options);
    let status = control_plane.process().wait_exit(Duration::from_secs(10));
    let elapsed = started.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running 10 s after start with an unreachable database:\n{}", control_plane.logs()));
    eprintln!("[test] control plane exited with {status} after {elapsed:.1?}");
    assert!(!status.success(), "it must fail:\n{}", control_plane.logs());
    let output = format!("{}\n{}", control_plane.stdout(), control_plane.stderr());
    assert!(output.contains("127.0.0.1:1"), "the error should name the database:\n{output}");
    assert!(!output.contains(PASSWORD), "the password leaked:\n{output}");
    assert!(!output.contains("Diplo control plane is up."), "it must not claim to be up:\n{output}");
}

#[test]
fn rest_requires_a_valid_bearer_token() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let health = control_plane.rest_get("/healthz", None);
    assert_eq!((health.status, health.body.trim()), (200, "ok"), "/healthz needs no credentials");

    let unknown = format!("Bearer dpl_abcdefgh.{}", "x".repeat(32));
    let bad: [(&str, Option<&str>); 5] = [
        ("no header", None),
        ("garbage bearer", Some("Bearer garbage")),
        ("unknown well-formed token", Some(&unknown)),
        ("empty bearer", Some("Bearer ")),
        ("basic auth", Some("Basic YWRtaW46YWRtaW4=")),
    ];
    for path in ["/api/status", "/api/v1/compute/cluster/status"] {
        for (case, authorization) in bad {
            let response = control_plane.rest_get(path, authorization);
            assert_eq!(response.status, 401, "{path} with {case}: {}", response.body);
            assert!(response.json().is_object(), "{path} with {case}: a JSON error body expected, got {}", response.body);
        }
        let ok = control_plane.rest_get(path, Some(&format!("Bearer {}", control_plane.admin_token())));
        assert_eq!(ok.status, 200, "{path} with the admin token: {}", ok.body);
    }
}

#[test]
fn single_use_token_cannot_be_used_twice() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let token = control_plane.join_token(&["--single-use"]);
    let mut first = control_plane.start_agent("first", Some(&token));
    wait_until("the first agent to join", Duration::from_secs(40), Duration::from_millis(250), || {
        if let Some(status) = first.process().try_exit() {
            panic!("the first agent exited with {status}:\n{}", first.logs());
        }
        let nodes = control_plane.try_nodes()?;
        match find_node(&nodes, "first") {
            Some(node) if node["status"] == "ready" => Ok(()),
            other => Err(format!("first: {other:?}")),
        }
    });

    let mut second = control_plane.start_agent("second", Some(&token));
    let status = second
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the second agent still runs with a used single-use token:\n{}", second.logs()));
    assert!(!status.success(), "the second join must fail:\n{}", second.logs());
    let stderr = second.stderr();
    assert!(stderr.contains("already been used"), "stderr should say the token was used:\n{stderr}");
    assert!(!second.data_dir().join("node.json").exists(), "no identity may be saved");

    let nodes = control_plane.nodes();
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["first"], "only the first node joined");
}

#[test]
fn revoked_and_expired_join_tokens_are_refused_with_the_reason() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let revoked = control_plane.join_token(&[]);
    let id =
        revoked.rsplit("::").next().and_then(|credential| credential.split('.').next()).expect("DIPLO1::<hash>::<id>.<secret>").to_owned();
    let out = control_plane.cli_ok(&["join-token", "revoke", &id]);
    assert!(out.contains("revoked"), "{out}");
    let expired = control_plane.join_token(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));

    for (name, token, reason) in [("with-revoked", &revoked, "was revoked"), ("with-expired", &expired, "expired at")] {
        let mut agent = control_plane.start_agent(name, Some(token));
        let status = agent
            .wait_exit(AGENT_EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("the agent still runs with a token that {reason}:\n{}", agent.logs()));
        assert!(!status.success(), "{name} must be refused:\n{}", agent.logs());
        let stderr = agent.stderr();
        assert!(stderr.contains(reason), "{name}: stderr should say the token {reason}:\n{stderr}");
        assert!(!agent.data_dir().join("node.json").exists(), "no identity may be saved");
    }
    assert_eq!(control_plane.nodes(), Vec::<serde_json::Value>::new(), "no node was added");
}
