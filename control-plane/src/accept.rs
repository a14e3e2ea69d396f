//! The TLS accept loop every listener shares (gRPC, the HTTPS side listener, webhooks).
//!
//! The loop only accepts TCP: every handshake runs in its own task, bounded in time
//! ([`AcceptLimits::handshake_timeout`]) and in number ([`AcceptLimits::max_handshakes`]),
//! so a peer that connects and says nothing (or sends half a ClientHello and stalls)
//! delays nobody else. At the handshake bound the *oldest* pending handshake is dropped
//! to make room: a new client always gets its turn, and a flood of stalled connections
//! only evicts itself. Open connections (handshaking or established) are bounded by
//! [`AcceptLimits::max_connections`]; beyond it a new TCP connection is closed at once.
//!
//! Handshakes refused for the client's certificate are counted in
//! `drover_api_denied_total` (`no_certificate`, `expired_certificate`, `unknown_ca`,
//! `bad_certificate`); connections dropped for other reasons in
//! `drover_connections_refused_total{listener, reason}` (`handshake_timeout`, `evicted`,
//! `connection_limit`, `tls_error`).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounterVec;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct AcceptLimits {
    /// How long one TLS handshake may take before the connection is dropped.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once; at the bound the oldest is dropped.
    pub max_handshakes: usize,
    /// Open connections (handshaking or established); beyond it new ones are closed.
    pub max_connections: usize,
}

/// The gRPC listener: agents and peers over long-lived HTTP/2 connections, some across a
/// WAN (a TLS 1.3 handshake is one round trip; 5 s leaves room for a slow link).
pub const GRPC_LIMITS: AcceptLimits =
    AcceptLimits { handshake_timeout: Duration::from_secs(5), max_handshakes: 256, max_connections: 8192 };

/// The HTTPS side listener: probes and scrapers, short requests.
pub const HTTP_LIMITS: AcceptLimits =
    AcceptLimits { handshake_timeout: Duration::from_secs(3), max_handshakes: 64, max_connections: 512 };

/// The webhook listener: callers on the open internet without client certificates, one
/// request per connection.
pub const WEBHOOK_LIMITS: AcceptLimits =
    AcceptLimits { handshake_timeout: Duration::from_secs(3), max_handshakes: 64, max_connections: 256 };

/// What the interceptor learns about a TLS connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// An accepted, handshaken TLS connection; it holds its slot of
/// [`AcceptLimits::max_connections`] until dropped.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    pub info: PeerInfo,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The counters the loop reports to.
#[derive(Clone)]
pub struct AcceptMetrics {
    /// `drover_api_denied_total{reason}`.
    pub denied: IntCounterVec,
    /// `drover_connections_refused_total{listener, reason}`.
    pub refused: IntCounterVec,
}

/// Why a handshake failed, as a `drover_api_denied_total` reason when it was the
/// client's certificate, else `None`.
pub fn denial_reason(e: &io::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "expired_certificate",
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => "unknown_ca",
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        _ => return None,
    })
}

/// Handshakes in progress, oldest first (keys increase), so the oldest can be dropped.
type Pending = Arc<Mutex<BTreeMap<u64, tokio::task::AbortHandle>>>;

/// Accepts on `listener` until `shutdown`, handshaking each connection in its own task
/// with the acceptor `acceptor()` returns at accept time (so a certificate reload applies
/// to new connections). Handshaken connections arrive on the returned channel.
pub fn spawn(
    name: &'static str,
    listener: TcpListener,
    acceptor: impl Fn() -> TlsAcceptor + Send + 'static,
    limits: AcceptLimits,
    metrics: AcceptMetrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> mpsc::Receiver<PeerStream> {
    // Small: a connection waits here only while the server is between accepts.
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let pending: Pending = Arc::default();
    let handshakes = tracker.clone();
    let refused = move |reason: &str| metrics.refused.with_label_values(&[name, reason]).inc();
    let denied = metrics.denied.clone();
    tracker.spawn(async move {
        let mut next_id = 0u64;
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly rather
                        // than spin; established connections keep being served.
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused("connection_limit");
                tracing::debug!(listener = name, %remote, limit = limits.max_connections, "connection limit reached");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor();
            let (tx, denied, refused) = (tx.clone(), denied.clone(), refused.clone());
            let id = next_id;
            next_id += 1;
            let mut table = pending.lock().unwrap_or_else(|p| p.into_inner());
            while table.len() >= limits.max_handshakes {
                let Some((_, oldest)) = table.pop_first() else { break };
                oldest.abort();
                refused("evicted");
            }
            let mine = pending.clone();
            let task = handshakes.spawn(async move {
                let outcome = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
                mine.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                match outcome {
                    Ok(Ok(inner)) => {
                        let certs = inner.get_ref().1.peer_certificates().map(|c| Arc::new(c.to_vec()));
                        let stream = PeerStream { inner, info: PeerInfo { remote: Some(remote), certs }, _slot: slot };
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(e)) => match denial_reason(&e) {
                        Some(reason) => {
                            denied.with_label_values(&[reason]).inc();
                            tracing::debug!(listener = name, %remote, reason, error = %e, "client certificate refused");
                        }
                        None => {
                            refused("tls_error");
                            tracing::debug!(listener = name, %remote, error = %e, "TLS handshake failed");
                        }
                    },
                    Err(_) => {
                        refused("handshake_timeout");
                        tracing::debug!(listener = name, %remote, "TLS handshake timed out");
                    }
                }
            });
            // The task removes itself under this lock, so it cannot run ahead of the insert.
            table.insert(id, task.abort_handle());
        }
        for (_, h) in std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner())) {
            h.abort();
        }
    });
    rx
}
