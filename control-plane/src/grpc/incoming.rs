//! The gRPC server's accepted connections: capped in number, with TCP keepalive. A
//! connection holds its slot from `accept` until it is closed, TLS handshake included,
//! so clients that connect and send nothing cannot take more than the cap (and each
//! of them is dropped after [`HANDSHAKE_TIMEOUT`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle time before the first TCP keepalive probe, then the interval between probes
/// (a peer that answers none of [`KEEPALIVE_RETRIES`] is dropped by the kernel).
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// A TCP connection holding one of the server's connection slots until dropped.
pub struct LimitedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connections accepted on `listener`, at most `max` open at once: a connection
/// beyond is closed as soon as it is accepted. Accept errors (out of file descriptors
/// and the like) are logged and waited out, never passed on.
pub fn limited(listener: TcpListener, max: usize) -> impl Stream<Item = io::Result<LimitedStream>> + Send + 'static {
    let slots = Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)));
    let keepalive =
        socket2::TcpKeepalive::new().with_time(KEEPALIVE_TIME).with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_RETRIES);
    futures::stream::unfold((listener, slots, keepalive, 0u64), move |(listener, slots, keepalive, mut refused)| async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::warn!(error = %err, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused += 1;
                // Once per run of refusals, so that a flood does not flood the log too.
                if refused == 1 {
                    tracing::warn!(%peer, max, "gRPC connection limit reached; closing new connections until some end");
                }
                drop(tcp);
                continue;
            };
            if refused > 0 {
                tracing::warn!(refused, "gRPC connections accepted again after the limit closed some");
                refused = 0;
            }
            if let Err(err) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
                tracing::debug!(%peer, error = %err, "cannot set TCP keepalive");
            }
            let _ = tcp.set_nodelay(true);
            return Some((Ok(LimitedStream { inner: tcp, _slot: slot }), (listener, slots, keepalive, refused)));
        }
    })
}
