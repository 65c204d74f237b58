//! Probes this real host. With `CI=true` every runtime must be available; elsewhere the
//! test only prints which are.

use std::time::{Duration, Instant};

use diplo_agent::fingerprint::{ProbeConfig, probe};
use diplo_agent::runtime::{containerd, docker, podman};
use diplo_api::runtime::Runtime;

fn uname_m_in_go_spelling() -> String {
    let output = std::process::Command::new("uname").arg("-m").output().expect("run uname -m");
    let machine = String::from_utf8(output.stdout).expect("utf-8").trim().to_owned();
    match machine.as_str() {
        "x86_64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        "armv7l" | "armv6l" => "arm".to_owned(),
        "i686" | "i386" => "386".to_owned(),
        _ => machine,
    }
}

#[tokio::test]
async fn probes_this_host() {
    let mut config = ProbeConfig::from_env();
    config.arch_override = None;
    config.os_override = None;
    config.labels.insert("zone".into(), "test".into());
    let started = Instant::now();
    let fp = probe(&config).await;
    let elapsed = started.elapsed();

    assert_eq!(fp.arch, uname_m_in_go_spelling());
    assert_eq!(fp.os, std::env::consts::OS);
    assert!(fp.cpus >= 1, "cpus = {}", fp.cpus);
    assert!(fp.memory_bytes > 0, "memory_bytes = 0");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("read hostname");
    assert_eq!(fp.hostname, hostname.trim());
    assert!(!fp.kernel.is_empty());
    assert!(!fp.virtualization.is_empty());
    assert_eq!(fp.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(fp.labels.get("zone").map(String::as_str), Some("test"));
    assert!(elapsed < config.timeout + Duration::from_secs(1), "probe took {elapsed:?}");

    println!(
        "host: {} {} {} kernel {} cpus {} memory {} MiB virtualization {} pi {:?} ({elapsed:?})",
        fp.hostname,
        fp.os_release,
        fp.arch,
        fp.kernel,
        fp.cpus,
        fp.memory_bytes >> 20,
        fp.virtualization,
        fp.raspberry_pi_model
    );
    for runtime in Runtime::ALL {
        let report = fp.runtimes.iter().find(|r| r.runtime == runtime).unwrap_or_else(|| panic!("no report for {runtime}"));
        println!(
            "{runtime}: available={} version={:?} endpoint={} rootless={} error={:?}",
            report.available, report.version, report.endpoint, report.rootless, report.error
        );
        if report.available {
            assert!(!report.version.is_empty(), "{runtime} is available but reported no version");
            assert!(report.error.is_empty(), "{runtime} is available but reported {:?}", report.error);
        } else {
            assert!(!report.error.is_empty(), "{runtime} is unavailable without saying why");
        }
        if !report.available {
            diplo_tests::skip_or_fail(&format!("{runtime} is not available on this host: {}", report.error));
        }
    }
    println!("preferred runtime: {:?}", fp.preferred_runtime());
}

#[tokio::test]
async fn nonexistent_sockets_fail_fast_and_say_where() {
    let timeout = Duration::from_secs(2);
    let path = "/nonexistent/diplo-probe-test.sock";
    let started = Instant::now();
    let (d, c, p) = tokio::join!(docker::probe(path, timeout), containerd::probe(path, timeout), podman::probe(path, timeout));
    assert!(started.elapsed() < timeout + Duration::from_secs(1), "took {:?}", started.elapsed());
    for (runtime, report) in [(Runtime::Docker, d), (Runtime::Containerd, c), (Runtime::Podman, p)] {
        assert_eq!(report.runtime, runtime);
        assert!(!report.available, "{runtime} on {path} claims to be available");
        assert!(report.error.contains(path), "{runtime}: error {:?} does not name {path}", report.error);
        assert!(report.version.is_empty());
    }
}

#[tokio::test]
async fn overrides_replace_arch_and_os() {
    let config = ProbeConfig {
        arch_override: Some("arm64".into()),
        os_override: Some("darwin".into()),
        docker_socket: "/nonexistent/docker.sock".into(),
        containerd_socket: "/nonexistent/containerd.sock".into(),
        podman_socket: "/nonexistent/podman.sock".into(),
        timeout: Duration::from_millis(500),
        ..ProbeConfig::default()
    };
    let fp = probe(&config).await;
    assert_eq!((fp.arch.as_str(), fp.os.as_str()), ("arm64", "darwin"));
    for runtime in [Runtime::Docker, Runtime::Containerd, Runtime::Podman] {
        assert!(fp.runtimes.iter().any(|r| r.runtime == runtime && !r.available));
    }
}
