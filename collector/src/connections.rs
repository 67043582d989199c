//! Bounds on what connections may hold: how many each listener serves at
//! once (`--max-connections`; beyond, new ones wait in the kernel's accept
//! queue, as Prometheus's `--web.max-connections` does), and how long a
//! peer may leave an answer unread (`--stalled-write-timeout`): a client
//! that stops reading a large answer, or a live tail, would otherwise hold
//! the answer's memory and its connection forever.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::telemetry::SelfMetrics;

/// How many connections one listener serves, and how long a write may
/// stall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub stalled_write_timeout: Duration,
}

/// A listener that serves at most `max_connections` at once; each
/// connection it yields gives its slot back when it closes.
pub struct Bounded<L> {
    inner: L,
    slots: Arc<Semaphore>,
    stalled_write_timeout: Duration,
    open: IntGauge,
    stalls: IntCounter,
}

impl<L: axum::serve::Listener> Bounded<L> {
    /// Bounds `inner`, reporting under `listener` (`otlp_grpc`, `otlp_http`,
    /// `http`) in `strand_connections` and
    /// `strand_connection_write_stalls_total`.
    pub fn new(
        inner: L,
        limits: ConnectionLimits,
        listener: &str,
        metrics: &SelfMetrics,
    ) -> Bounded<L> {
        Bounded {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            stalled_write_timeout: limits.stalled_write_timeout,
            open: metrics.connections.with_label_values(&[listener]),
            stalls: metrics
                .connection_write_stalls
                .with_label_values(&[listener]),
        }
    }

    /// The connections as the stream of IO tonic's server takes.
    pub fn into_incoming(
        self,
    ) -> impl futures_util::Stream<Item = io::Result<Connection<L::Io>>> + Send + 'static
    where
        L: Send + 'static,
    {
        futures_util::stream::unfold(self, |mut listener| async move {
            let (connection, _) = axum::serve::Listener::accept(&mut listener).await;
            Some((Ok(connection), listener))
        })
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Bounded<L> {
    type Io = Connection<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // A slot first: without one, connections wait in the accept queue.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (io, addr) = self.inner.accept().await;
        self.open.inc();
        let connection = Connection {
            io,
            _slot: slot,
            stalled_write_timeout: self.stalled_write_timeout,
            stalled_since: None,
            open: self.open.clone(),
            stalls: self.stalls.clone(),
        };
        (connection, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A served connection: holds its listener's slot, and fails a write the
/// peer has not taken for `stalled_write_timeout`, which closes it.
pub struct Connection<Io> {
    io: Io,
    _slot: OwnedSemaphorePermit,
    stalled_write_timeout: Duration,
    /// Runs while a write waits for the peer to read.
    stalled_since: Option<Pin<Box<Sleep>>>,
    open: IntGauge,
    stalls: IntCounter,
}

impl<Io> Drop for Connection<Io> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<Io> Connection<Io> {
    /// What a write that returned `poll` means once the stall timer has had
    /// its say: `Pending` for too long becomes an error.
    fn bound_stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let timeout = self.stalled_write_timeout;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.stalls.inc();
                tracing::debug!(
                    ?timeout,
                    "ConnectionWriteStalled: closing a connection whose peer stopped reading"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the peer read nothing for {timeout:?}"),
                )))
            }
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Connection<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Connection<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.bound_stall(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.bound_stall(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.bound_stall(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<Io: tonic::transport::server::Connected> tonic::transport::server::Connected
    for Connection<Io>
{
    type ConnectInfo = Io::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn bounded(
        max_connections: usize,
        stall: Duration,
    ) -> (
        Bounded<tokio::net::TcpListener>,
        SelfMetrics,
        std::net::SocketAddr,
    ) {
        let metrics = SelfMetrics::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits {
            max_connections,
            stalled_write_timeout: stall,
        };
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        (
            Bounded::new(listener, limits, "http", &metrics),
            metrics,
            addr,
        )
    }

    #[tokio::test]
    async fn a_listener_serves_its_slots_and_takes_the_next_when_one_closes() {
        use axum::serve::Listener as _;
        let (mut listener, metrics, addr) = bounded(2, Duration::from_secs(60));
        let _clients: Vec<_> =
            futures_util::future::join_all((0..3).map(|_| tokio::net::TcpStream::connect(addr)))
                .await;
        let (first, _) = listener.accept().await;
        let (_second, _) = listener.accept().await;
        assert_eq!(metrics.connections.with_label_values(&["http"]).get(), 2);
        // The third waits for a slot...
        let third = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(third.is_err(), "a third connection was served");
        // ...which a closed connection gives back.
        drop(first);
        let (_third, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the freed slot is taken");
        assert_eq!(metrics.connections.with_label_values(&["http"]).get(), 2);
    }

    #[tokio::test]
    async fn a_write_the_peer_does_not_read_fails_after_the_timeout() {
        use axum::serve::Listener as _;
        let (mut listener, metrics, addr) = bounded(4, Duration::from_millis(300));
        let mut reader = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut connection, _) = listener.accept().await;
        // Far more than the socket buffers hold: the writes stall.
        let chunk = vec![b'x'; 1 << 20];
        let error = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Err(error) = connection.write_all(&chunk).await {
                    return error;
                }
            }
        })
        .await
        .expect("the stalled write fails");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            metrics
                .connection_write_stalls
                .with_label_values(&["http"])
                .get(),
            1
        );
        // A peer that reads is never timed out: it gets what was written.
        drop(connection);
        let mut received = Vec::new();
        let _ = reader.read_to_end(&mut received).await;
        assert!(!received.is_empty());
    }
}
