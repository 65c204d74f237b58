//! Node identity claims with the real binaries: a renewed node certificate is the one the
//! agent uses from then on (it restarts on it, without a token, once the first one has
//! expired), it verifies against the cluster CA, names the node and keeps the node's
//! key; and the join token's CA pin refuses a server that shows the genuine CA
//! certificate with a leaf signed by another key, before anything is sent to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use diplo_api::pki::{CertificateAuthority, csr_for_key, not_after_pem};
use diplo_tests::{Agent, ControlPlane, ControlPlaneOptions, find_node, wait_until};
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;

const POLL: Duration = Duration::from_millis(250);

/// `DIPLO_NODE_CERT_LIFETIME` for the renewal test: renewed 40 s after the join, the
/// first certificate expires 20 s later.
const LIFETIME: &str = "60s";

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

#[test]
fn a_renewed_certificate_is_the_one_the_agent_restarts_on_and_keeps_the_nodes_key() {
    const NODE: &str = "renewing";
    let options = ControlPlaneOptions {
        env: vec![("DIPLO_NODE_CERT_LIFETIME".into(), LIFETIME.into()), ("DIPLO_LOG".into(), "info,sqlx=warn,h2=warn".into())],
        ..ControlPlaneOptions::fast(Duration::from_secs(3))
    };
    let control_plane = ControlPlane::start(options);
    let ca =
        CertificateAuthority::from_pem(&control_plane.read_file("ca.pem"), &control_plane.read_file("ca-key.pem")).expect("the cluster CA");
    let env = [("DIPLO_RUNTIMES", "docker")];
    let token = control_plane.join_token(&["--ttl", "10m"]);
    let (mut agent, node) = control_plane.start_ready_agent_with_env(NODE, Some(&token), &env);
    let node_id = node["id"].as_str().expect("node id").to_owned();
    let (cert_path, key_path) = (agent.data_dir().join("node.pem"), agent.data_dir().join("node-key.pem"));
    let first = read(&cert_path);
    let key = read(&key_path);
    let first_expiry = not_after_pem(&first).expect("not_after");

    // Renewed two thirds into its lifetime, while the session goes on.
    let renewed = wait_until("the node certificate to be renewed", Duration::from_secs(120), POLL, || {
        if let Some(status) = agent.process().try_exit() {
            panic!("the agent exited with {status}:\n{}", agent.logs());
        }
        let current = read(&cert_path);
        if current != first { Ok(current) } else { Err("still the first certificate".to_owned()) }
    });
    assert!(not_after_pem(&renewed).expect("not_after") > first_expiry, "the renewed certificate expires later");
    assert_eq!(read(&key_path), key, "renewal keeps the node's key file");
    // It verifies against the cluster CA, names this node (`spiffe://diplo/node/<id>`)
    // and is for the node's key — as was the first one: the same public key.
    let csr = csr_for_key(NODE, &key).expect("a CSR for the node's key");
    assert!(
        ca.proves_node_key(&renewed, &node_id, &csr),
        "the renewed certificate is the CA's, for {node_id} and the node's key:\n{renewed}"
    );
    assert!(ca.proves_node_key(&first, &node_id, &csr), "the first certificate is for the same key");
    let other_ca = CertificateAuthority::generate("other").expect("CA");
    assert!(!other_ca.proves_node_key(&renewed, &node_id, &csr), "the check does tell CAs apart");
    let (_, stranger) = diplo_api::pki::generate_csr(NODE).expect("CSR");
    assert!(!ca.proves_node_key(&renewed, &node_id, &stranger), "the check does tell keys apart");

    // Stopped until the first certificate has expired: only the renewed one can work.
    agent.kill();
    let until_expired = (first_expiry - time::OffsetDateTime::now_utc()).try_into().unwrap_or(Duration::ZERO);
    eprintln!("[test] renewed; waiting {until_expired:.1?} for the first certificate to expire");
    std::thread::sleep(until_expired + Duration::from_secs(2));
    assert!(not_after_pem(&renewed).expect("not_after") > time::OffsetDateTime::now_utc() + time::Duration::seconds(10));
    let status = find_node(&control_plane.nodes(), NODE).map(|n| n["status"].clone());
    assert!(status.as_ref().is_some_and(|s| s != "ready"), "the stopped node is not ready: {status:?}");

    // Restarted without a token: it comes back on the renewed certificate, as itself.
    let restarted = Instant::now();
    let mut agent = Agent::start_with_env(&control_plane.grpc_addr().to_string(), NODE, None, agent.data_dir(), &env);
    wait_until("the restarted node to be ready", Duration::from_secs(60), POLL, || {
        if let Some(status) = agent.process().try_exit() {
            panic!("the restarted agent exited with {status}:\n{}\n{}", agent.logs(), control_plane.logs());
        }
        match find_node(&control_plane.try_nodes()?, NODE) {
            Some(node) if node["status"] == "ready" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eprintln!("[test] ready again {:.1?} after the restart", restarted.elapsed());
    let nodes = control_plane.nodes();
    assert_eq!(nodes.len(), 1, "{nodes:#?}");
    assert_eq!(nodes[0]["id"], node_id.as_str(), "the same node");
    // No new join: the session opened on the renewed certificate as it was.
    assert_eq!(read(&cert_path), renewed, "the agent did not need another certificate to come back");
    let events = control_plane.cli_ok(&["events", "-o", "table"]);
    assert_eq!(count(&events, "node.joined"), 1, "joined once:\n{events}");
    assert_eq!(count(&events, "node.rejoined"), 0, "never re-joined:\n{events}");
    assert_eq!(count(&events, "node.certificate_renewed"), 1, "{events}");
    assert_eq!(count(&control_plane.stderr(), "session opened"), 2, "one session per agent start:\n{}", control_plane.logs());
}

// ---------------------------------------------------------------------------------
// A server showing the genuine CA with a leaf it did not sign

/// What the impostor server saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    application_bytes: AtomicUsize,
}

/// A TLS server on 127.0.0.1 presenting `chain` (leaf first) and counting what it gets.
async fn impostor(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> (u16, Arc<Seen>) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counters.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, counters) = (acceptor.clone(), counters.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                counters.handshakes.fetch_add(1, Ordering::SeqCst);
                let mut buffer = [0u8; 4096];
                while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buffer)).await {
                    if n == 0 {
                        break;
                    }
                    counters.application_bytes.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    (port, seen)
}

/// Join tokens and their use counts, as `diplo join-token ls` shows them.
fn token_uses(control_plane: &ControlPlane) -> Vec<u64> {
    let listed = control_plane.cli_ok(&["join-token", "ls", "-o", "table"]);
    listed
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            columns.get(3).and_then(|uses| uses.parse().ok()).unwrap_or_else(|| panic!("no use count in {line:?}:\n{listed}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_pin_refuses_the_genuine_ca_with_a_leaf_signed_by_another_key_before_sending_anything() {
    diplo_api::install_crypto_provider();
    let control_plane = tokio::task::spawn_blocking(|| ControlPlane::start(ControlPlaneOptions::default())).await.expect("start");
    let token = control_plane.join_token(&["--ttl", "10m"]);
    let ca_pem = control_plane.read_file("ca.pem");

    // A leaf for this address naming the cluster CA as its issuer, signed by another key,
    // served with the genuine CA certificate as the rest of the chain.
    let impostor_key = rcgen::KeyPair::generate().expect("key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, impostor_key).expect("the CA's name and extensions");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&leaf_key, &issuer).expect("leaf");
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA DER");
    let chain = vec![leaf.der().clone(), ca_der];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let (port, seen) = impostor(chain, key).await;

    // The agent, given a genuine token, is pointed at the impostor.
    let data_dir = control_plane.agent_data_dir("pinned");
    let server = format!("127.0.0.1:{port}");
    let mut agent = Agent::start(&server, "pinned", Some(&token), &data_dir);
    let started = Instant::now();
    while seen.connections.load(Ordering::SeqCst) < 2 && started.elapsed() < Duration::from_secs(30) {
        if agent.process().try_exit().is_some() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    // Give an agent that wrongly accepted the chain time to send its Join.
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.kill();
    let logs = agent.logs();
    assert!(seen.connections.load(Ordering::SeqCst) >= 1, "the agent never reached the impostor:\n{logs}");
    assert_eq!(seen.handshakes.load(Ordering::SeqCst), 0, "a TLS session was established with the impostor:\n{logs}");
    assert_eq!(seen.application_bytes.load(Ordering::SeqCst), 0, "the agent sent application data to the impostor:\n{logs}");
    assert!(!data_dir.join("node.json").exists() && !data_dir.join("node.pem").exists(), "no identity may be saved");
    let stderr = agent.stderr();
    assert!(stderr.contains("certificate") || stderr.contains("signature"), "the agent says why it refused:\n{stderr}");

    // The token was never used: the real control plane saw nothing either.
    let uses = token_uses(&control_plane);
    assert!(!uses.is_empty() && uses.iter().all(|&n| n == 0), "join tokens' uses: {uses:?}");
    assert!(control_plane.nodes().is_empty(), "no node joined");
}
