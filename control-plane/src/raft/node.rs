//! [`RaftNode`]: what the API layer talks to. It proposes commands (stamping the leader's
//! time, forwarding to the leader from a follower), and provides linearizable read
//! barriers (read-index, also on followers).
//!
//! The leader's own timer commands go through [`RaftNode::propose_as_leader`] instead:
//! never forwarded, and only while this node leads the term they were computed in.
//!
//! Failure is fast and explicit: with no known leader, no recent quorum, or no commit
//! within `propose_timeout`, a proposal fails with a [`ProposeError`] and is never
//! acknowledged. A timed-out proposal may still commit later, which is why queue calls
//! carry idempotency keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_proto::raft::ReadIndexRequest;
use drover_proto::raft::raft_client::RaftClient;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{RaftMetrics, ServerState};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use super::codec;
use super::network::{Dialer, channel, raft_client};
use super::read_rounds::ReadRounds;
use super::types::{Node, NodeId, Raft};
use crate::state::{Command, Proposal, Request, Response};
use crate::storage::sm_store::SmShared;

/// Maximum leader hops one proposal follows (a leader change mid-forward).
const MAX_HOPS: usize = 3;
/// Pause before asking the quorum again when a leadership check went unanswered.
const READ_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum ProposeError {
    #[error("no leader is known (an election may be under way or a quorum is lost)")]
    NoLeader,
    /// A leader-only proposal ([`RaftNode::propose_as_leader`]) on a node that is not, or
    /// no longer, the leader of the term it names.
    #[error("this node is not the leader of term {term} (its current term is {current_term})")]
    NotLeader { term: u64, current_term: u64 },
    #[error("the leader has not heard from a quorum for {0} ms")]
    NoQuorum(u64),
    #[error("not committed within {0} ms; the outcome is unknown (retry with the same idempotency key)")]
    Timeout(u64),
    #[error("forwarding to the leader (node {leader} at {addr}): {reason}")]
    Forward { leader: NodeId, addr: String, reason: String },
    #[error("this node is shutting down")]
    ShuttingDown,
    #[error("raft: {0}")]
    Raft(String),
    /// The command alone encodes to more than one Raft entry may hold: refused before it
    /// reaches the log (storage would fail on it, and every leader after with it).
    #[error("the command encodes to {bytes} bytes, over the limit of {limit} bytes per Raft entry")]
    TooLarge { bytes: usize, limit: usize },
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub struct RaftNode {
    pub id: NodeId,
    pub raft: Raft,
    pub sm: Arc<SmShared>,
    pub propose_timeout: Duration,
    /// A leader that has not heard from a quorum for this long refuses proposals.
    pub quorum_timeout: Duration,
    dialer: Dialer,
    peers: Mutex<HashMap<String, RaftClient<Channel>>>,
    /// Leadership confirmations shared by the reads waiting on this node as leader.
    leader_reads: ReadRounds,
    /// Read-index requests to the leader shared by the reads waiting on this follower.
    follower_reads: ReadRounds,
}

impl RaftNode {
    pub fn new(
        id: NodeId,
        raft: Raft,
        sm: Arc<SmShared>,
        dialer: Dialer,
        propose_timeout: Duration,
        quorum_timeout: Duration,
    ) -> Self {
        Self {
            id,
            raft,
            sm,
            dialer,
            propose_timeout,
            quorum_timeout,
            peers: Mutex::new(HashMap::new()),
            leader_reads: ReadRounds::default(),
            follower_reads: ReadRounds::default(),
        }
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, Node> {
        self.raft.metrics().borrow().clone()
    }

    /// Read-index rounds run so far: as leader (leadership confirmations), as follower
    /// (requests to the leader).
    pub fn read_index_rounds(&self) -> (u64, u64) {
        (self.leader_reads.rounds(), self.follower_reads.rounds())
    }

    pub fn is_leader(&self) -> bool {
        self.leader_term().is_some()
    }

    /// This node's current term while it is the leader; `None` otherwise.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader && m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    /// The current term as this node knows it.
    pub fn current_term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The current leader's id and address, as this node knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    fn peer(&self, addr: &str) -> Result<RaftClient<Channel>, ProposeError> {
        let mut peers = self.peers.lock().map_err(|_| ProposeError::Raft("peer cache poisoned".into()))?;
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let ch = channel(addr, &self.dialer).map_err(|e| ProposeError::Raft(e.to_string()))?;
        let c = raft_client(ch);
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Proposes a command and waits for it to be committed and applied.
    pub async fn propose(&self, cmd: Command) -> Result<Response, ProposeError> {
        let mut hint: Option<(NodeId, String)> = None;
        for _ in 0..MAX_HOPS {
            let leader = match hint.take().or_else(|| self.leader()) {
                Some(l) => l,
                None => self.wait_for_leader().await?,
            };
            if leader.0 == self.id {
                match self.propose_local(cmd.clone()).await {
                    Err(LocalError::NotLeader(Some(l))) => hint = Some(l),
                    Err(LocalError::NotLeader(None)) => {}
                    Err(LocalError::Other(e)) => return Err(e),
                    Ok(r) => return Ok(r),
                }
            } else {
                return self.forward(leader, &cmd).await;
            }
        }
        Err(ProposeError::NoLeader)
    }

    /// Proposes `cmd` on this node only, and only while it is the leader of `term`: never
    /// forwarded. The leader loops use it for timer commands computed from this leader's
    /// own view (its lease tracker above all), which must not be committed by another
    /// leader. Leadership can still change between this check and the append; the entry
    /// then carries a later term and `apply` refuses a timer command naming an older one.
    pub async fn propose_as_leader(&self, term: u64, cmd: Command) -> Result<Response, ProposeError> {
        let not_leader = || ProposeError::NotLeader { term, current_term: self.current_term() };
        if self.leader_term() != Some(term) {
            return Err(not_leader());
        }
        match self.propose_local(cmd).await {
            Ok(r) => Ok(r),
            Err(LocalError::NotLeader(_)) => Err(not_leader()),
            Err(LocalError::Other(e)) => Err(e),
        }
    }

    async fn wait_for_leader(&self) -> Result<(NodeId, String), ProposeError> {
        let mut rx = self.raft.metrics();
        let wait = tokio::time::timeout(self.quorum_timeout, async {
            loop {
                if let Some(l) = self.leader() {
                    return Some(l);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        });
        match wait.await {
            Ok(Some(l)) => Ok(l),
            Ok(None) => Err(ProposeError::ShuttingDown),
            Err(_) => Err(ProposeError::NoLeader),
        }
    }

    async fn propose_local(&self, cmd: Command) -> Result<Response, LocalError> {
        // Borrow, not clone: this runs for every proposal.
        let since_quorum_ms = self.raft.metrics().borrow().millis_since_quorum_ack;
        if let Some(ms) = since_quorum_ms
            && ms > self.quorum_timeout.as_millis() as u64
        {
            return Err(LocalError::Other(ProposeError::NoQuorum(ms)));
        }
        // Every path to the log passes here (batched, direct, forwarded, leader loops).
        let bytes = super::batcher::encoded_bytes(&cmd);
        if bytes > super::batcher::MAX_ENTRY_BYTES {
            return Err(LocalError::Other(ProposeError::TooLarge { bytes, limit: super::batcher::MAX_ENTRY_BYTES }));
        }
        let req = Request::V1(Proposal { stamp_ms: now_ms(), cmd });
        let timeout_ms = self.propose_timeout.as_millis() as u64;
        match tokio::time::timeout(self.propose_timeout, self.raft.client_write(req)).await {
            Err(_) => Err(LocalError::Other(ProposeError::Timeout(timeout_ms))),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(LocalError::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr))))
            }
            Ok(Err(e)) => Err(LocalError::Other(ProposeError::Raft(e.to_string()))),
        }
    }

    async fn forward(&self, (leader, addr): (NodeId, String), cmd: &Command) -> Result<Response, ProposeError> {
        let fwd = |reason: String| ProposeError::Forward { leader, addr: addr.clone(), reason };
        let mut client = self.peer(&addr)?;
        let msg = codec::encode(cmd).map_err(|e| fwd(e.to_string()))?;
        // The leader bounds its own commit wait; allow for that plus the hop.
        let budget = self.propose_timeout + Duration::from_secs(1);
        let reply = match tokio::time::timeout(budget, client.forward(msg)).await {
            Err(_) => return Err(ProposeError::Timeout(budget.as_millis() as u64)),
            Ok(Err(status)) => return Err(fwd(status.message().to_string())),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Response, ProposeError> = codec::decode(&reply).map_err(|e| fwd(e.to_string()))?;
        result
    }

    /// Handles a proposal forwarded by a follower: only the leader accepts it (one hop).
    pub async fn accept_forwarded(&self, cmd: Command) -> Result<Response, ProposeError> {
        match self.propose_local(cmd).await {
            Ok(r) => Ok(r),
            Err(LocalError::NotLeader(_)) => Err(ProposeError::NoLeader),
            Err(LocalError::Other(e)) => Err(e),
        }
    }

    /// Waits until a read on this node reflects every write committed before the call
    /// (read-index): the leader confirms its leadership with a quorum; a follower asks the
    /// leader for the read index and waits to have applied it.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let timeout_ms = self.propose_timeout.as_millis() as u64;
        if self.is_leader() {
            return self.read_index().await.map(|_| ());
        }
        let (leader, addr) = match self.leader() {
            Some(l) => l,
            None => self.wait_for_leader().await?,
        };
        if leader == self.id {
            return Box::pin(self.read_barrier()).await;
        }
        // One request to the leader for every read waiting here (see `read_rounds`).
        let index = self
            .follower_reads
            .read_index(|| async {
                let mut client = self.peer(&addr)?;
                match tokio::time::timeout(self.propose_timeout, client.read_index(ReadIndexRequest {})).await {
                    Err(_) => Err(ProposeError::Timeout(timeout_ms)),
                    Ok(Err(status)) => {
                        Err(ProposeError::Forward { leader, addr: addr.clone(), reason: status.message().to_string() })
                    }
                    Ok(Ok(r)) => Ok(r.into_inner().index),
                }
            })
            .await?;
        if self.raft.metrics().borrow().last_applied.is_some_and(|l| l.index >= index) {
            return Ok(());
        }
        self.raft
            .wait(Some(self.propose_timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|_| ProposeError::Timeout(timeout_ms))
    }

    /// The leader's read index: confirms leadership with a quorum and returns the index a
    /// reader must have applied. Concurrent callers share confirmation rounds
    /// (`read_rounds`); a follower's read-index request is one such caller.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        self.leader_reads.read_index(|| self.confirm_leadership()).await
    }

    /// One leadership confirmation: openraft's `ensure_linearizable` (a heartbeat round
    /// answered by a quorum, then the wait for this node to apply the read index).
    async fn confirm_leadership(&self) -> Result<u64, ProposeError> {
        let timeout_ms = self.propose_timeout.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        // A quorum that does not answer one round within a heartbeat interval (followers
        // busy writing a large entry, a loaded machine) is asked again until the deadline;
        // a lost leadership ends the wait at once.
        loop {
            match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(ProposeError::Timeout(timeout_ms)),
                Ok(Ok(log_id)) => return Ok(log_id.map(|l| l.index).unwrap_or(0)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) if self.is_leader() => {
                    let retry_at = tokio::time::Instant::now() + READ_RETRY;
                    if retry_at >= deadline {
                        return Err(ProposeError::Timeout(timeout_ms));
                    }
                    tokio::time::sleep_until(retry_at).await;
                }
                Ok(Err(e)) => return Err(ProposeError::Raft(e.to_string())),
            }
        }
    }
}

enum LocalError {
    NotLeader(Option<(NodeId, String)>),
    Other(ProposeError),
}
