//! The client half of node-to-node Raft traffic: openraft's `RaftNetwork` over tonic
//! (`drover.raft.v1`). Channels connect lazily and reconnect on their own; every call is
//! bounded by openraft's hard TTL.
//!
//! How a failure is reported decides what openraft does next, so it is chosen with care:
//! `Unreachable` makes its replication stream to that peer back off, anything else is
//! retried at once. Every error status is `Unreachable` (a refused or broken connection,
//! and also errors that would come back at once on every retry: a refused certificate,
//! an unknown codec), with a backoff of 50 ms growing to [`MAX_BACKOFF`] instead of
//! openraft's flat 500 ms. A call that ran out of its time (a busy follower still
//! writing) is a `Network` error and is retried at once: reported as `Unreachable`, it
//! paused replication to both followers for half a second whenever both answered late
//! at once, and no write committed meanwhile (write stalls of 0.5–1.2 s under the
//! enqueue benchmark).
//!
//! AppendEntries is also bounded in bytes: a message over [`APPEND_TARGET_BYTES`] with
//! more than one entry is refused locally with `PayloadTooLarge` and a hint of how many
//! entries fit, and openraft resends fewer. A count limit alone let one message reach
//! hundreds of MiB on both sides; and openraft allows each call only the heartbeat
//! interval, so a message must be small enough to cross, be written and be acknowledged
//! within it (see [`super::batcher::MAX_ENTRY_BYTES`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use drover_proto::raft::raft_client::RaftClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::codec;
use super::types::{Node, NodeId, TypeConfig};

/// Largest Raft message either side accepts (a batch of large queue entries).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// AppendEntries messages larger than this are split (unless they hold a single entry).
pub const APPEND_TARGET_BYTES: usize = 1024 * 1024;

/// Longest pause before retrying a peer whose calls fail with an error status.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The pauses before each retry of an unreachable peer: 50 ms doubling to [`MAX_BACKOFF`].
fn backoff_steps() -> impl Iterator<Item = Duration> {
    (0u32..).map(|i| Duration::from_millis(50u64.saturating_mul(1 << i.min(16))).min(MAX_BACKOFF))
}

/// A call that got no answer, as openraft must see it (see the module docs).
fn call_failed<E: std::error::Error>(cause: CallFailure) -> RpcErr<E> {
    match cause {
        CallFailure::Status(s) => RPCError::Unreachable(Unreachable::new(&s)),
        CallFailure::TimedOut(e) => RPCError::Network(NetworkError::new(&e)),
    }
}

enum CallFailure {
    Status(tonic::Status),
    TimedOut(tokio::time::error::Elapsed),
}

/// How this node dials its peers: plaintext (development) or mutual TLS with its own
/// server certificate.
pub type PeerTls = Option<ClientTlsConfig>;

/// How this node reaches its peers: TLS settings and the `[dial]` overrides.
#[derive(Clone, Default)]
pub struct Dialer {
    pub tls: PeerTls,
    pub overrides: std::sync::Arc<std::collections::BTreeMap<String, String>>,
}

/// For an AppendEntries of `entries` entries encoded in `bytes`: None when it may be
/// sent, or how many entries to send instead (at least one, fewer than now).
fn entries_that_fit(entries: usize, bytes: usize) -> Option<usize> {
    (entries > 1 && bytes > APPEND_TARGET_BYTES)
        .then(|| (entries.saturating_mul(APPEND_TARGET_BYTES) / bytes).clamp(1, entries - 1))
}

/// A lazily connecting channel to the peer advertised at `addr` (through its dial
/// override, if any).
pub fn channel(addr: &str, dialer: &Dialer) -> Result<Channel, tonic::transport::Error> {
    let target = drover_identity::dial::resolve(&dialer.overrides, addr);
    let scheme = if dialer.tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{}", target.connect))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10));
    if let Some(tls) = &dialer.tls {
        let tls = match target.server_name {
            Some(name) => tls.clone().domain_name(name),
            None => tls.clone(),
        };
        ep = ep.tls_config(tls)?;
    }
    Ok(ep.connect_lazy())
}

pub fn raft_client(ch: Channel) -> RaftClient<Channel> {
    RaftClient::new(ch)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

#[derive(Clone)]
pub struct NetworkFactory {
    pub dialer: Dialer,
    /// Counts AppendEntries split for size.
    pub splits: prometheus::IntCounter,
    /// One channel per peer address, shared by every client openraft makes for it.
    /// openraft makes a new client for each leadership check (every linearizable read)
    /// and gives it one heartbeat interval; a fresh TCP and TLS handshake per read did
    /// not fit in that on a loaded machine, and reads failed "not enough for a quorum".
    /// A channel reconnects by itself after its connection breaks.
    pub channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NetworkFactory {
    pub fn new(dialer: Dialer, splits: prometheus::IntCounter) -> Self {
        NetworkFactory { dialer, splits, channels: Arc::default() }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            dialer: self.dialer.clone(),
            client: None,
            splits: self.splits.clone(),
            channels: self.channels.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    dialer: Dialer,
    client: Option<RaftClient<Channel>>,
    splits: prometheus::IntCounter,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl PeerClient {
    fn client<E: std::error::Error>(&mut self) -> Result<RaftClient<Channel>, RpcErr<E>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ch = {
            let mut channels = self.channels.lock();
            match channels.get(&self.addr) {
                Some(ch) => ch.clone(),
                None => {
                    let ch =
                        channel(&self.addr, &self.dialer).map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
                    channels.insert(self.addr.clone(), ch.clone());
                    ch
                }
            }
        };
        let c = raft_client(ch);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// `entries`: how many log entries `req` carries (0 for other messages).
    async fn call<Req, Resp, E, F, Fut>(
        &mut self,
        req: &Req,
        entries: usize,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, drover_proto::raft::RaftMessage) -> Fut,
        Fut: Future<Output = Result<tonic::Response<drover_proto::raft::RaftMessage>, tonic::Status>>,
    {
        let client = self.client()?;
        let msg = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if let Some(fit) = entries_that_fit(entries, msg.body.len()) {
            self.splits.inc();
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit as u64)));
        }
        let reply = match tokio::time::timeout(option.hard_ttl(), f(client, msg)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(call_failed(CallFailure::Status(status))),
            Err(elapsed) => return Err(call_failed(CallFailure::TimedOut(elapsed))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            codec::decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let entries = rpc.entries.len();
        self.call(&rpc, entries, &option, |mut c, m| async move { c.append_entries(m).await }).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(&rpc, 0, &option, |mut c, m| async move { c.install_snapshot(m).await }).await
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(&rpc, 0, &option, |mut c, m| async move { c.vote(m).await }).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(backoff_steps())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_late_answer_is_retried_at_once_and_an_error_status_backs_off() {
        let elapsed = tokio::time::timeout(Duration::ZERO, std::future::pending::<()>()).await.expect_err("times out");
        let late = call_failed::<openraft::error::Infallible>(CallFailure::TimedOut(elapsed));
        assert!(matches!(late, RPCError::Network(_)), "a slow answer is retried at once, not backed off: {late:?}");
        for status in [
            tonic::Status::unavailable("connection refused"),
            tonic::Status::unknown("connection reset"),
            tonic::Status::permission_denied("not a node certificate"),
        ] {
            let e = call_failed::<openraft::error::Infallible>(CallFailure::Status(status));
            assert!(matches!(e, RPCError::Unreachable(_)), "an error status backs off: {e:?}");
        }
    }

    #[test]
    fn backoff_grows_from_50_ms_to_half_a_second() {
        let steps: Vec<u64> = backoff_steps().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(steps, vec![50, 100, 200, 400, 500, 500, 500]);
    }

    #[test]
    fn large_appends_are_split_by_bytes() {
        const M: usize = 1024 * 1024;
        const T: usize = APPEND_TARGET_BYTES;
        assert_eq!(entries_that_fit(1, 100 * M), None, "one entry is sent whatever its size");
        assert_eq!(entries_that_fit(8, T), None);
        assert_eq!(entries_that_fit(8, 8 * T), Some(1));
        assert_eq!(entries_that_fit(8, 2 * T), Some(4));
        assert_eq!(entries_that_fit(8, T + 1), Some(7), "always fewer than before");
        assert_eq!(entries_that_fit(2, 200 * M), Some(1));
    }
}
