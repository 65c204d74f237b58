//! The gRPC port against clients that hold connections: one that opens TCP and sends
//! nothing is closed once the TLS handshake time (10 s) is over, and connections beyond
//! `--max-connections` (here through `DIPLO_MAX_CONNECTIONS`) are closed at once, while
//! the CLI still gets through once slots are free again.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use diplo_tests::{ControlPlane, ControlPlaneOptions};

const CAP: usize = 4;

/// Waits until the server closes `stream` (EOF or reset); the time it took, or `None`
/// if it is still open after `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Some(start.elapsed()),
        Ok(n) => panic!("the server sent {n} bytes to a client that sent nothing"),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(_) => Some(start.elapsed()),
    }
}

#[test]
fn silent_and_excess_grpc_connections_are_closed() {
    let options =
        ControlPlaneOptions { env: vec![("DIPLO_MAX_CONNECTIONS".to_owned(), CAP.to_string())], ..ControlPlaneOptions::default() };
    let control_plane = ControlPlane::start(options);
    let addr = control_plane.grpc_addr();

    // CAP silent clients take every slot...
    let opened = Instant::now();
    let mut silent: Vec<TcpStream> = (0..CAP).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    // ...so the next connection is closed at once.
    let mut excess = TcpStream::connect(addr).expect("connect");
    assert!(
        closed_within(&mut excess, Duration::from_secs(3)).is_some(),
        "a connection beyond the cap of {CAP} stayed open\n{}",
        control_plane.logs()
    );

    // The silent ones are closed once the handshake time is over, not kept forever.
    for stream in &mut silent {
        let left = Duration::from_secs(20).saturating_sub(opened.elapsed());
        assert!(closed_within(stream, left).is_some(), "a client that sent nothing was still connected after 20 s");
    }
    let waited = opened.elapsed();
    assert!(waited >= Duration::from_secs(8), "silent clients closed after {waited:?}, before the handshake time");

    // Slots are free again: a new connection stays open, and the CLI gets through.
    let mut again = TcpStream::connect(addr).expect("connect");
    assert!(closed_within(&mut again, Duration::from_secs(1)).is_none(), "a connection within the cap was closed at once");
    drop(again);
    let status = control_plane.cli_ok(&["status"]);
    assert!(!status.is_empty(), "diplo status said nothing");
}
