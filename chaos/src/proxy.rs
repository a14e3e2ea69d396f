//! The TCP fault proxy: one listener per directed link (server→server, agent→server,
//! client→server) forwarding to the link's target, with a fault that can be changed at
//! any time.
//!
//! It works on bytes, below TLS, so certificates are checked end to end exactly as
//! without it; processes reach their peers through it with `[dial]` overrides.
//!
//! Faults ([`Fault`]):
//! * `Pass` — forward as is.
//! * `Blackhole` — hold every byte in both directions and keep the sockets open (new
//!   connections are accepted and held too), the way a silent network path looks to TCP
//!   until its timeouts fire. Held bytes flow again when the fault changes.
//! * `Delay { base, jitter }` — each chunk is delivered `base + U(0, jitter)` after it was
//!   read, in order.
//! * `Reset` — every open connection is aborted with a TCP reset, and new ones are reset
//!   right after accept.
//! * `PauseAccept` — stop accepting: new connections wait in the listen backlog; open
//!   ones keep flowing.
//! * `OneWay { held }` — hold the bytes of one direction only ([`Direction`]), the other
//!   keeps flowing: what one-way packet loss looks like to the applications at either
//!   end. A link is a TCP stream its dialer opened, so a direction is a half of that
//!   stream: `Forward` is what the dialer sends, `Back` what it gets back. TCP itself
//!   is not cut (each hop acknowledges its segments), so neither end's connection times
//!   out below the application; a TLS handshake over a held half does not complete.
//!
//! Invariants: bytes of one direction are delivered in order and never duplicated; a
//! connection closed by one side is closed (FIN) on the other; nothing is forwarded to
//! any address but the link's target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a link does to its traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    Pass,
    Blackhole,
    Delay {
        #[serde(with = "millis")]
        base: Duration,
        #[serde(with = "millis")]
        jitter: Duration,
    },
    Reset,
    PauseAccept,
    OneWay {
        held: Direction,
    },
}

/// A half of a link's TCP stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Bytes the dialer sends to the target (requests, for an agent or a client).
    Forward,
    /// Bytes the target sends back to the dialer (answers).
    Back,
}

impl Fault {
    /// Whether bytes travelling in `dir` are held under this fault.
    pub fn holds(self, dir: Direction) -> bool {
        match self {
            Fault::Blackhole => true,
            Fault::OneWay { held } => held == dir,
            _ => false,
        }
    }
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms: u64 = serde::Deserialize::deserialize(d)?;
        Ok(Duration::from_millis(ms))
    }
}

/// Counters of one link.
#[derive(Default, Debug)]
pub struct LinkStats {
    pub accepted: AtomicU64,
    pub reset: AtomicU64,
    pub bytes: AtomicU64,
}

/// One directed link: a loopback listener forwarding to `target`.
pub struct Link {
    pub name: String,
    pub listen: SocketAddr,
    pub target: String,
    fault: watch::Sender<Fault>,
    pub stats: Arc<LinkStats>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

const CHUNK: usize = 16 * 1024;
/// Chunks buffered per direction before reading stops (back pressure).
const IN_FLIGHT: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl Link {
    /// Binds a loopback port and starts forwarding to `target`. `seed` drives the
    /// jitter of delays. Must be called within a tokio runtime.
    pub fn start(name: &str, target: &str, seed: u64) -> std::io::Result<Link> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let listen = listener.local_addr()?;
        let (fault, rx) = watch::channel(Fault::Pass);
        let link = Link {
            name: name.to_string(),
            listen,
            target: target.to_string(),
            fault,
            stats: Arc::new(LinkStats::default()),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let acceptor = Acceptor {
            listener,
            target: link.target.clone(),
            fault: rx,
            stats: link.stats.clone(),
            cancel: link.cancel.clone(),
            tasks: link.tasks.clone(),
            seed,
        };
        link.tasks.spawn(acceptor.run());
        Ok(link)
    }

    pub fn addr(&self) -> String {
        self.listen.to_string()
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Stops accepting, closes every connection and waits for the link's tasks.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Acceptor {
    listener: TcpListener,
    target: String,
    fault: watch::Receiver<Fault>,
    stats: Arc<LinkStats>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    seed: u64,
}

impl Acceptor {
    async fn run(mut self) {
        let mut conn_no = 0u64;
        loop {
            // Paused: leave new connections in the backlog until the fault changes.
            while *self.fault.borrow() == Fault::PauseAccept {
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    r = self.fault.changed() => if r.is_err() { return },
                }
            }
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.fault.changed() => continue,
                a = self.listener.accept() => a,
            };
            let Ok((client, _)) = accepted else { continue };
            self.stats.accepted.fetch_add(1, Ordering::Relaxed);
            if *self.fault.borrow() == Fault::Reset {
                self.stats.reset.fetch_add(1, Ordering::Relaxed);
                abort(&client);
                continue;
            }
            conn_no += 1;
            let conn = Conn {
                target: self.target.clone(),
                fault: self.fault.clone(),
                stats: self.stats.clone(),
                cancel: self.cancel.child_token(),
                seed: self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(conn_no),
            };
            self.tasks.spawn(conn.run(client));
        }
    }
}

/// Closes `s` with a TCP reset instead of a FIN.
fn abort(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

struct Conn {
    target: String,
    fault: watch::Receiver<Fault>,
    stats: Arc<LinkStats>,
    cancel: CancellationToken,
    seed: u64,
}

impl Conn {
    async fn run(self, mut client: TcpStream) {
        let upstream = tokio::select! {
            _ = self.cancel.cancelled() => None,
            r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.target)) => r.ok().and_then(Result::ok),
        };
        let Some(mut upstream) = upstream else {
            abort(&client);
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let reset = {
            let (cr, cw) = client.split();
            let (ur, uw) = upstream.split();
            let up =
                pump(cr, uw, Direction::Forward, self.fault.clone(), StdRng::seed_from_u64(self.seed), &self.stats);
            let down =
                pump(ur, cw, Direction::Back, self.fault.clone(), StdRng::seed_from_u64(!self.seed), &self.stats);
            let mut fault = self.fault.clone();
            let reset_ordered = async move {
                loop {
                    if *fault.borrow_and_update() == Fault::Reset {
                        return;
                    }
                    if fault.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => true,
                _ = reset_ordered => true,
                _ = async { tokio::join!(up, down) } => false,
            }
        };
        if reset {
            self.stats.reset.fetch_add(1, Ordering::Relaxed);
            abort(&client);
            abort(&upstream);
        }
    }
}

/// How long to hold a chunk read now under `fault`.
fn delay_for(fault: Fault, rng: &mut StdRng) -> Duration {
    match fault {
        Fault::Delay { base, jitter } if !jitter.is_zero() => {
            base + Duration::from_micros(rng.random_range(0..=u64::try_from(jitter.as_micros()).unwrap_or(u64::MAX)))
        }
        Fault::Delay { base, .. } => base,
        _ => Duration::ZERO,
    }
}

/// Copies `from` to `to` (the `dir` half of the stream) under the link's fault, until EOF
/// or an error on either side; then closes `to` for writing.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    dir: Direction,
    fault: watch::Receiver<Fault>,
    mut rng: StdRng,
    stats: &LinkStats,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read_fault = fault.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        let mut last = Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = (Instant::now() + delay_for(*read_fault.borrow(), &mut rng)).max(last);
            last = at;
            if tx.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let writer = async move {
        let mut fault = fault;
        while let Some((at, chunk)) = rx.recv().await {
            // Held (blackholed, or this half of a one-way fault): until the fault changes.
            while fault.borrow_and_update().holds(dir) {
                if fault.changed().await.is_err() {
                    return;
                }
            }
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let h = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, h)
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(within, s.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn passes_holds_delays_and_resets() {
        let (echo, _h) = echo_server().await;
        let link = Link::start("t", &echo.to_string(), 7).expect("link");
        let mut s = TcpStream::connect(link.listen).await.expect("connect");
        assert_eq!(roundtrip(&mut s, b"hello", Duration::from_secs(5)).await.as_deref(), Some(&b"hello"[..]));

        // Blackhole: nothing comes back, the socket stays open; healing releases the bytes.
        link.set(Fault::Blackhole);
        assert_eq!(roundtrip(&mut s, b"held", Duration::from_millis(300)).await, None);
        link.set(Fault::Pass);
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await.expect("released").expect("read");
        assert_eq!(&buf, b"held");

        // Delay: a round trip crosses the link twice.
        link.set(Fault::Delay { base: Duration::from_millis(150), jitter: Duration::from_millis(20) });
        let t0 = std::time::Instant::now();
        assert!(roundtrip(&mut s, b"slow", Duration::from_secs(5)).await.is_some());
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");

        // Reset: the open connection is aborted, and new ones too.
        link.set(Fault::Reset);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("reset seen");
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
        let mut s2 = TcpStream::connect(link.listen).await.expect("connect");
        let r = tokio::time::timeout(Duration::from_secs(5), s2.read(&mut buf)).await.expect("reset seen");
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");

        // Pause accepts: a new connection gets no service until resumed.
        link.set(Fault::PauseAccept);
        let mut s3 = TcpStream::connect(link.listen).await.expect("connect (backlog)");
        assert_eq!(roundtrip(&mut s3, b"wait", Duration::from_millis(300)).await, None);
        link.set(Fault::Pass);
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s3.read_exact(&mut buf)).await.expect("served").expect("read");
        assert_eq!(&buf, b"wait");
        link.shutdown().await;
    }

    /// Reads exactly `n` bytes within `within`; None if they did not all come.
    async fn read_n(s: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(within, s.read_exact(&mut buf)).await.ok()?.ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn one_way_holds_one_half_of_the_stream_only() {
        let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let link = Link::start("t", &target.local_addr().expect("addr").to_string(), 7).expect("link");
        let mut dialer = TcpStream::connect(link.listen).await.expect("connect");
        let (mut far, _) = tokio::time::timeout(Duration::from_secs(5), target.accept())
            .await
            .expect("the proxy dials the target")
            .expect("accept");
        let (wait, short) = (Duration::from_secs(5), Duration::from_millis(300));

        // Forward held: what the dialer sends waits, what comes back flows.
        link.set(Fault::OneWay { held: Direction::Forward });
        dialer.write_all(b"req").await.expect("write");
        far.write_all(b"ans").await.expect("write");
        assert_eq!(read_n(&mut dialer, 3, wait).await.as_deref(), Some(&b"ans"[..]));
        assert_eq!(read_n(&mut far, 3, short).await, None);
        // Back held: the held request is released, new requests flow, answers wait.
        link.set(Fault::OneWay { held: Direction::Back });
        dialer.write_all(b"two").await.expect("write");
        far.write_all(b"bak").await.expect("write");
        let got = read_n(&mut far, 6, wait).await.expect("the held request and the next one");
        assert_eq!(&got, b"reqtwo");
        assert_eq!(read_n(&mut dialer, 3, short).await, None);
        link.set(Fault::Pass);
        assert_eq!(read_n(&mut dialer, 3, wait).await.as_deref(), Some(&b"bak"[..]));
        link.shutdown().await;
    }
}
