//! Optional TLS for the REST gateway (`--rest-tls-cert` / `--rest-tls-key`, here through
//! `DIPLO_REST_TLS_CERT` / `DIPLO_REST_TLS_KEY`): with both, REST answers HTTPS with that
//! certificate (verified against its CA) and refuses plain HTTP, and `cli.toml` points at
//! `https://…`; with one only, or with unusable files, the control plane does not start
//! and says which flag or file is at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use diplo_api::pki::CertificateAuthority;
use diplo_tests::{ControlPlane, ControlPlaneOptions, wait_until};

/// A CA of its own (not the cluster's) with a server certificate for the loopback.
struct RestCertificate {
    _dir: tempfile::TempDir,
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn rest_certificate() -> RestCertificate {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = CertificateAuthority::generate("rest-tls-test").expect("CA");
    let server = ca.issue_server(&["127.0.0.1".into(), "localhost".into()], Duration::from_secs(3600)).expect("server certificate");
    let cert = dir.path().join("rest.pem");
    let key = dir.path().join("rest-key.pem");
    std::fs::write(&cert, &server.cert_pem).expect("write the certificate");
    std::fs::write(&key, &server.key_pem).expect("write the key");
    RestCertificate { ca_pem: ca.cert_pem().to_owned(), cert, key, _dir: dir }
}

fn env(pairs: &[(&str, &Path)]) -> ControlPlaneOptions {
    ControlPlaneOptions {
        env: pairs.iter().map(|(k, v)| ((*k).to_owned(), v.display().to_string())).collect(),
        ..ControlPlaneOptions::default()
    }
}

/// `GET url`, trusting only `ca_pem` when given (else the public roots); returns the
/// status and body, or the error's full chain.
fn get(url: &str, ca_pem: Option<&str>, bearer: Option<&str>) -> Result<(u16, String), String> {
    let url = url.to_owned();
    let ca_pem = ca_pem.map(str::to_owned);
    let bearer = bearer.map(str::to_owned);
    // reqwest's blocking client gets a thread of its own.
    std::thread::spawn(move || {
        let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).no_proxy();
        if let Some(pem) = ca_pem {
            let ca = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(ca);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        let mut request = client.get(&url);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })?;
        let status = response.status().as_u16();
        Ok((status, response.text().map_err(|e| e.to_string())?))
    })
    .join()
    .expect("the HTTP thread panicked")
}

#[test]
fn rest_is_served_over_https_with_the_given_certificate_and_plain_http_is_refused() {
    let rest = rest_certificate();
    let mut control_plane = ControlPlane::spawn(env(&[("DIPLO_REST_TLS_CERT", &rest.cert), ("DIPLO_REST_TLS_KEY", &rest.key)]));
    let rest_addr = control_plane.rest_addr();
    let https = |path: &str| format!("https://{rest_addr}{path}");
    // The harness's readiness check speaks plain HTTP: wait for HTTPS here.
    wait_until("REST over HTTPS", Duration::from_secs(60), Duration::from_millis(200), || {
        if let Some(status) = control_plane.process().try_exit() {
            panic!("the control plane exited with {status}:\n{}", control_plane.logs());
        }
        if !control_plane.file("cli.toml").is_file() {
            return Err("no cli.toml yet".into());
        }
        match get(&https("/healthz"), Some(&rest.ca_pem), None)? {
            (200, body) if body.trim() == "ok" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // The banner and the CLI context give the https URL.
    let url = https("");
    assert!(control_plane.stdout().contains(&format!("REST: {url}")), "{}", control_plane.logs());
    let context = control_plane.read_file("cli.toml");
    assert!(context.contains(&format!("rest = \"{url}\"")), "cli.toml: {context}");

    // Authenticated routes work over HTTPS, and still need a token.
    let token = control_plane.admin_token();
    let (status, body) = get(&https("/api/status"), Some(&rest.ca_pem), Some(&token)).expect("GET /api/status");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"system\""), "{body}");
    let (status, body) = get(&https("/api/status"), Some(&rest.ca_pem), None).expect("GET without a token");
    assert_eq!(status, 401, "{body}");

    // A client that does not trust that CA refuses the certificate.
    let untrusted = get(&https("/healthz"), None, None);
    assert!(untrusted.is_err(), "a certificate from an unknown CA was accepted: {untrusted:?}");
    let untrusted = untrusted.unwrap_err();
    assert!(untrusted.to_lowercase().contains("certificate"), "{untrusted}");

    // Plain HTTP gets no answer from the gateway.
    let plain = get(&format!("http://{rest_addr}/healthz"), None, None);
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");

    // gRPC and the CLI are unaffected.
    control_plane.cli_ok(&["status"]);
    // The gateway still serves after those refused handshakes.
    let (status, _) = get(&https("/healthz"), Some(&rest.ca_pem), None).expect("GET /healthz");
    assert_eq!(status, 200);
}

/// Spawns a control plane that must refuse to start; returns its stderr.
fn refused(options: ControlPlaneOptions) -> String {
    let mut control_plane = ControlPlane::spawn(options);
    let status = control_plane
        .process()
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the control plane started anyway:\n{}", control_plane.logs()));
    assert!(!status.success(), "it exited with {status}:\n{}", control_plane.logs());
    control_plane.stderr()
}

#[test]
fn half_configured_or_unusable_rest_tls_is_refused_naming_the_flag_or_the_file() {
    let rest = rest_certificate();
    let stderr = refused(env(&[("DIPLO_REST_TLS_CERT", &rest.cert)]));
    assert!(stderr.contains("--rest-tls-key") && stderr.contains("missing"), "{stderr}");
    let stderr = refused(env(&[("DIPLO_REST_TLS_KEY", &rest.key)]));
    assert!(stderr.contains("--rest-tls-cert") && stderr.contains("missing"), "{stderr}");

    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("no-such-cert.pem");
    let stderr = refused(env(&[("DIPLO_REST_TLS_CERT", &missing), ("DIPLO_REST_TLS_KEY", &rest.key)]));
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    let garbage = dir.path().join("garbage-key.pem");
    std::fs::write(&garbage, "not a key\n").expect("write");
    let stderr = refused(env(&[("DIPLO_REST_TLS_CERT", &rest.cert), ("DIPLO_REST_TLS_KEY", &garbage)]));
    assert!(stderr.contains(&garbage.display().to_string()) && stderr.contains("key"), "{stderr}");
    // A key that is not the certificate's: both files are named.
    let other = rest_certificate();
    let stderr = refused(env(&[("DIPLO_REST_TLS_CERT", &rest.cert), ("DIPLO_REST_TLS_KEY", &other.key)]));
    assert!(stderr.contains(&rest.cert.display().to_string()) && stderr.contains(&other.key.display().to_string()), "{stderr}");
}
