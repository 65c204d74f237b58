//! A userspace port publisher for runtimes that cannot publish ports themselves (LXC).
//!
//! [`PortPublisher::publish`] binds `0.0.0.0:HOST_PORT` in the agent and forwards what
//! arrives to a target address (normally the container's address on its bridge):
//!
//! * TCP: every accepted connection is connected to the target and bytes are copied
//!   both ways (`tokio::io::copy_bidirectional`) until either side closes.
//! * UDP: every client address gets its own socket connected to the target; replies are
//!   sent back to that client from the published port. A client idle for
//!   [`UDP_IDLE_TIMEOUT`] is forgotten.
//!
//! A [`PublishedPort`] stops listening and closes every forwarded connection when it is
//! dropped or [`unpublished`](PublishedPort::unpublish). The publisher also keeps a registry
//! of published ports by owner (a container id) so that removing a container can
//! [`unpublish_owner`](PortPublisher::unpublish_owner) everything it had.
//!
//! Binding a port that is taken fails with [`io::ErrorKind::AddrInUse`]; callers turn that
//! into a conflict naming the port.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use diplo_api::container::Protocol;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

/// How long connecting to the target of a TCP forward may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a UDP client may stay silent (both ways) before its session is dropped.
pub const UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One host port forwarded to a target. Dropping it stops the forward (asynchronously:
/// the listener closes when its task is next polled); [`unpublish`](Self::unpublish)
/// waits until it is closed.
#[derive(Debug)]
pub struct PublishedPort {
    host_port: u16,
    protocol: Protocol,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl PublishedPort {
    /// The port on the host.
    pub fn host_port(&self) -> u16 {
        self.host_port
    }

    /// TCP or UDP.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Where traffic goes.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Stops listening, closes every forwarded connection and waits until the listening
    /// socket is closed.
    pub async fn unpublish(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The task is cancelled; its sockets are dropped before the handle resolves.
            let _ = task.await;
        }
    }
}

impl Drop for PublishedPort {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Publishes host ports in userspace and remembers them by owner.
#[derive(Debug, Default)]
pub struct PortPublisher {
    owners: Mutex<BTreeMap<String, Vec<PublishedPort>>>,
}

impl PortPublisher {
    /// A publisher with nothing published.
    pub fn new() -> Self {
        PortPublisher::default()
    }

    /// Binds `0.0.0.0:host_port` for `protocol` and forwards it to `target`. Must be
    /// called inside a tokio runtime, on which the forwarding tasks run.
    ///
    /// Errors: [`io::ErrorKind::AddrInUse`] when the port is taken, and whatever else
    /// binding fails with.
    pub fn publish(&self, host_port: u16, protocol: Protocol, target: SocketAddr) -> io::Result<PublishedPort> {
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let bind = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, host_port));
        let task = match protocol {
            Protocol::Tcp => {
                let listener = std::net::TcpListener::bind(bind)?;
                listener.set_nonblocking(true)?;
                let listener = {
                    let _entered = handle.enter();
                    TcpListener::from_std(listener)?
                };
                handle.spawn(forward_tcp(listener, target))
            }
            Protocol::Udp => {
                let socket = std::net::UdpSocket::bind(bind)?;
                socket.set_nonblocking(true)?;
                let socket = {
                    let _entered = handle.enter();
                    UdpSocket::from_std(socket)?
                };
                handle.spawn(forward_udp(Arc::new(socket), target))
            }
        };
        debug!(host_port, ?protocol, %target, "published port");
        Ok(PublishedPort { host_port, protocol, target, task: Some(task) })
    }

    /// [`publish`](Self::publish)es and files the forward under `owner`.
    pub fn publish_for(&self, owner: &str, host_port: u16, protocol: Protocol, target: SocketAddr) -> io::Result<()> {
        let port = self.publish(host_port, protocol, target)?;
        self.lock().entry(owner.to_owned()).or_default().push(port);
        Ok(())
    }

    /// Stops every forward filed under `owner` and waits until they are closed. Returns
    /// how many there were.
    pub async fn unpublish_owner(&self, owner: &str) -> usize {
        let ports = self.lock().remove(owner).unwrap_or_default();
        let count = ports.len();
        for port in ports {
            port.unpublish().await;
        }
        count
    }

    /// The forwards filed under `owner`: `(host_port, protocol, target)`.
    pub fn published(&self, owner: &str) -> Vec<(u16, Protocol, SocketAddr)> {
        self.lock().get(owner).map(|ports| ports.iter().map(|p| (p.host_port, p.protocol, p.target)).collect()).unwrap_or_default()
    }

    /// The owner of the forward on `host_port`/`protocol`, if this publisher has one.
    pub fn owner_of(&self, host_port: u16, protocol: Protocol) -> Option<String> {
        self.lock()
            .iter()
            .find(|(_, ports)| ports.iter().any(|p| p.host_port == host_port && p.protocol == protocol))
            .map(|(owner, _)| owner.clone())
    }

    /// Owners with at least one forward.
    pub fn owners(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<PublishedPort>>> {
        // A panic while holding the lock leaves a consistent map; keep using it.
        self.owners.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Accepts connections and forwards each to `target`. Connection tasks live in a
/// `JoinSet`, so cancelling this task closes all of them.
async fn forward_tcp(listener: TcpListener, target: SocketAddr) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    connections.spawn(async move {
                        if let Err(error) = forward_connection(client, target).await {
                            debug!(%peer, %target, %error, "forwarded connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward_connection(mut client: TcpStream, target: SocketAddr) -> io::Result<()> {
    let mut upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {target} timed out")))??;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Relays datagrams between clients of `socket` and `target`, one connected upstream
/// socket per client address.
async fn forward_udp(socket: Arc<UdpSocket>, target: SocketAddr) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut relays: JoinSet<SocketAddr> = JoinSet::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let (len, peer) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        debug!(%error, "udp receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let upstream = match sessions.get(&peer) {
                    Some(upstream) => Arc::clone(upstream),
                    None => match udp_session(target).await {
                        Ok(upstream) => {
                            let upstream = Arc::new(upstream);
                            sessions.insert(peer, Arc::clone(&upstream));
                            relays.spawn(relay_replies(Arc::clone(&socket), Arc::clone(&upstream), peer));
                            upstream
                        }
                        Err(error) => {
                            debug!(%peer, %target, %error, "cannot open udp session");
                            continue;
                        }
                    },
                };
                if let Err(error) = upstream.send(&buffer[..len]).await {
                    debug!(%peer, %target, %error, "udp forward failed");
                }
            }
            Some(ended) = relays.join_next(), if !relays.is_empty() => {
                if let Ok(peer) = ended {
                    sessions.remove(&peer);
                }
            }
        }
    }
}

async fn udp_session(target: SocketAddr) -> io::Result<UdpSocket> {
    let upstream = UdpSocket::bind(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))).await?;
    upstream.connect(target).await?;
    Ok(upstream)
}

/// Sends what `upstream` receives back to `peer` until the session is idle; returns the
/// peer so its session can be forgotten.
async fn relay_replies(socket: Arc<UdpSocket>, upstream: Arc<UdpSocket>, peer: SocketAddr) -> SocketAddr {
    let mut buffer = vec![0u8; 65_536];
    loop {
        match tokio::time::timeout(UDP_IDLE_TIMEOUT, upstream.recv(&mut buffer)).await {
            Err(_) => return peer,
            Ok(Err(error)) => {
                // ICMP port unreachable shows up as ECONNREFUSED on a connected socket.
                debug!(%peer, %error, "udp upstream receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(Ok(len)) => {
                if let Err(error) = socket.send_to(&buffer[..len], peer).await {
                    debug!(%peer, %error, "udp reply failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TCP echo server on loopback; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("0.0.0.0:0").expect("bind").local_addr().expect("addr").port()
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.expect("write");
        let mut buffer = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buffer)).await.expect("echo in time").expect("read");
        buffer
    }

    #[tokio::test]
    async fn tcp_is_forwarded_and_unpublish_closes_everything() {
        let target = echo_server().await;
        let publisher = PortPublisher::new();
        let port = free_port();
        publisher.publish_for("c1", port, Protocol::Tcp, target).expect("publish");
        assert_eq!(publisher.published("c1"), vec![(port, Protocol::Tcp, target)]);
        assert_eq!(publisher.owner_of(port, Protocol::Tcp).as_deref(), Some("c1"));

        let mut client = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        assert_eq!(round_trip(&mut client, b"hello").await, b"hello");
        let mut second = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        assert_eq!(round_trip(&mut second, b"again").await, b"again");

        assert_eq!(publisher.unpublish_owner("c1").await, 1);
        assert!(publisher.published("c1").is_empty());
        assert!(publisher.owners().is_empty());
        // The open connection is closed: a read sees EOF (or a reset).
        let mut buffer = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer)).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // Nothing listens any more.
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        // And the port can be bound again.
        drop(std::net::TcpListener::bind(("0.0.0.0", port)).expect("port is free again"));
    }

    #[tokio::test]
    async fn taken_port_is_addr_in_use() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let publisher = PortPublisher::new();
        let error = publisher.publish(port, Protocol::Tcp, "127.0.0.1:9".parse().expect("addr")).expect_err("taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);

        // Loopback-only listeners are in the way too.
        let loopback = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = loopback.local_addr().expect("addr").port();
        let error = publisher.publish(port, Protocol::Tcp, "127.0.0.1:9".parse().expect("addr")).expect_err("taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_listening() {
        let target = echo_server().await;
        let publisher = PortPublisher::new();
        let port = free_port();
        let published = publisher.publish(port, Protocol::Tcp, target).expect("publish");
        assert_eq!((published.host_port(), published.protocol(), published.target()), (port, Protocol::Tcp, target));
        let mut client = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        assert_eq!(round_trip(&mut client, b"x").await, b"x");
        drop(published);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "still listening after drop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn unreachable_target_closes_the_client() {
        // A port nothing listens on.
        let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let publisher = PortPublisher::new();
        let port = free_port();
        publisher.publish_for("c2", port, Protocol::Tcp, dead).expect("publish");
        let mut client = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let mut buffer = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer)).await.expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        publisher.unpublish_owner("c2").await;
    }

    #[tokio::test]
    async fn udp_is_forwarded() {
        let echo = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let target = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while let Ok((len, peer)) = echo.recv_from(&mut buffer).await {
                let _ = echo.send_to(&buffer[..len], peer).await;
            }
        });
        let port = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind").local_addr().expect("addr").port();
        let publisher = PortPublisher::new();
        publisher.publish_for("c3", port, Protocol::Udp, target).expect("publish");
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client.connect(("127.0.0.1", port)).await.expect("connect");
        client.send(b"ping").await.expect("send");
        let mut buffer = [0u8; 16];
        let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buffer)).await.expect("reply in time").expect("recv");
        assert_eq!(&buffer[..len], b"ping");
        assert_eq!(publisher.unpublish_owner("c3").await, 1);
        drop(std::net::UdpSocket::bind(("0.0.0.0", port)).expect("udp port is free again"));
    }
}
