//! The harness keeps every test on this machine: control planes and agents get a proxy
//! that refuses and records every request for a host off the machine, and a control
//! plane dropped with anything recorded fails its test. These tests prove that a leak
//! is caught and named, and that loopback is not caught.

use std::time::Duration;

use diplo_tests::{ControlPlane, ControlPlaneOptions, EgressRecorder, proxy_target, unique_name, wait_until};
use serde_json::json;

const POLL: Duration = Duration::from_millis(200);

#[test]
fn proxy_targets_are_read_from_connect_absolute_uris_and_host_headers() {
    let cases = [
        ("CONNECT registry-1.docker.io:443 HTTP/1.1\r\nHost: registry-1.docker.io:443\r\n\r\n", "registry-1.docker.io"),
        ("GET http://registry.invalid.example/v2/ HTTP/1.1\r\nHost: registry.invalid.example\r\n\r\n", "registry.invalid.example"),
        ("GET http://user@example.org:8080/x?y HTTP/1.1\r\n\r\n", "example.org"),
        ("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n", "2001:db8::1"),
        ("GET /v2/ HTTP/1.1\r\nhost: ghcr.io\r\n\r\n", "ghcr.io"),
    ];
    for (head, host) in cases {
        assert_eq!(proxy_target(head), host, "{head:?}");
    }
    assert!(proxy_target("garbage").starts_with("(unparsed request"), "{}", proxy_target("garbage"));
}

#[test]
fn the_recorder_refuses_and_records_what_a_proxied_client_asks_for() {
    let recorder = EgressRecorder::start();
    let proxy = reqwest::Proxy::all(recorder.url()).expect("proxy url");
    let client = reqwest::blocking::Client::builder().proxy(proxy).timeout(Duration::from_secs(10)).build().expect("client");
    let response = client.get("http://registry.invalid.example/v2/").send().expect("the recorder answers");
    assert_eq!(response.status(), 403);
    let https = client.get("https://registry-1.docker.io/v2/").send();
    assert!(https.is_err(), "a refused CONNECT is an error: {https:?}");
    assert_eq!(recorder.take_hosts(), vec!["registry.invalid.example".to_owned(), "registry-1.docker.io".to_owned()]);
    assert_eq!(recorder.take_hosts(), Vec::<String>::new(), "taking clears the record");
}

/// Deploying an image of a registry off this machine makes the control plane look the
/// image up there; the guard records that host (and the control plane, dropped with the
/// record read, does not fail). Loopback (the agent's gRPC, the local registry) is not
/// recorded.
#[test]
fn a_control_plane_reaching_off_the_machine_is_caught_and_named() {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default());
    let token = control_plane.join_token(&[]);
    let (mut agent, _) = control_plane.start_ready_agent(&unique_name("egress"), Some(&token));
    // The agent runs with the proxy too.
    let environ = std::fs::read(format!("/proc/{}/environ", agent.process().pid())).expect("read the agent's environment");
    let environ = String::from_utf8_lossy(&environ);
    for name in
        ["HTTPS_PROXY=http://127.0.0.1:", "HTTP_PROXY=http://127.0.0.1:", "ALL_PROXY=http://127.0.0.1:", "NO_PROXY=127.0.0.1,localhost,::1"]
    {
        assert!(environ.split('\0').any(|v| v.starts_with(name)), "the agent's environment lacks {name}");
    }
    // A local image: nothing leaves the machine.
    let local = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": unique_name("local"), "image": "127.0.0.1:5000/diplo/busybox:latest", "replicas": 0})),
    );
    assert!(local.status < 500, "{}", local.body);
    assert_eq!(control_plane.take_egress_hosts(), Vec::<String>::new());

    let name = unique_name("leak");
    let response = control_plane.rest(
        "POST",
        "/api/unified/deploy",
        Some(json!({"name": name, "image": "registry.invalid.example/x:1", "replicas": 0})),
    );
    assert!(response.status < 500, "{}", response.body);
    let mut seen = Vec::new();
    wait_until("the guard to record registry.invalid.example", Duration::from_secs(30), POLL, || {
        seen.extend(control_plane.take_egress_hosts());
        if seen.iter().any(|h| h == "registry.invalid.example") { Ok(()) } else { Err(format!("recorded: {seen:?}")) }
    });
    assert!(seen.iter().all(|h| h == "registry.invalid.example"), "only the foreign registry is recorded: {seen:?}");
}

/// The Drop check itself: a control plane dropped with a recorded host fails the test.
#[test]
fn dropping_a_control_plane_with_a_recorded_host_fails_the_test() {
    let outcome = std::thread::spawn(|| {
        let control_plane = ControlPlane::start(ControlPlaneOptions::default());
        let response = control_plane.rest(
            "POST",
            "/api/unified/deploy",
            Some(json!({"name": unique_name("leak"), "image": "docker.io/library/busybox:1", "replicas": 0})),
        );
        assert!(response.status < 500, "{}", response.body);
        // Dropped here without reading the record.
    })
    .join();
    let panic = outcome.expect_err("the drop check must fail the test");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("registry-1.docker.io"), "the failure names the host: {message}");
}

#[test]
fn ci_is_any_non_empty_value_of_ci() {
    use std::ffi::OsStr;
    for (value, ci) in
        [(None, false), (Some(""), false), (Some("true"), true), (Some("1"), true), (Some("yes"), true), (Some("false"), true)]
    {
        assert_eq!(diplo_tests::is_ci(value.map(OsStr::new)), ci, "CI={value:?}");
    }
}
