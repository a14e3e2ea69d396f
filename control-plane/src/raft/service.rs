//! The server half of `drover.raft.v1`: hands peers' Raft messages to openraft, accepts
//! proposals forwarded by followers, and answers read-index requests.

use std::sync::Arc;

use drover_proto::raft::raft_server::Raft as RaftRpc;
use drover_proto::raft::{RaftMessage, ReadIndexRequest, ReadIndexResponse};
use tonic::{Request, Response, Status};

use super::codec;
use super::node::{ProposeError, RaftNode};
use crate::state::Command;

pub struct RaftService {
    pub node: Arc<RaftNode>,
    /// Time from an AppendEntries arriving to its answer (the entries written and synced),
    /// for answered calls only; the leader gives each call only its heartbeat interval.
    pub append_seconds: prometheus::Histogram,
    /// AppendEntries the leader gave up on (its handler dropped) before they were answered.
    pub append_abandoned: prometheus::IntCounter,
}

/// Counts a call as abandoned when dropped before [`UnlessAnswered::answered`].
struct UnlessAnswered<'a>(Option<&'a prometheus::IntCounter>);

impl UnlessAnswered<'_> {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for UnlessAnswered<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.inc();
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let started = std::time::Instant::now();
        let pending = UnlessAnswered(Some(&self.append_abandoned));
        let rpc = codec::decode(req.get_ref())?;
        let res = self.node.raft.append_entries(rpc).await;
        let reply = codec::encode(&res)?;
        pending.answered();
        self.append_seconds.observe(started.elapsed().as_secs_f64());
        Ok(Response::new(reply))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = codec::decode(req.get_ref())?;
        let res = self.node.raft.vote(rpc).await;
        Ok(Response::new(codec::encode(&res)?))
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = codec::decode(req.get_ref())?;
        let res = self.node.raft.install_snapshot(rpc).await;
        Ok(Response::new(codec::encode(&res)?))
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let cmd: Command = codec::decode(req.get_ref())?;
        let res: Result<crate::state::Response, ProposeError> = self.node.accept_forwarded(cmd).await;
        Ok(Response::new(codec::encode(&res)?))
    }

    async fn read_index(&self, _req: Request<ReadIndexRequest>) -> Result<Response<ReadIndexResponse>, Status> {
        match self.node.read_index().await {
            Ok(index) => Ok(Response::new(ReadIndexResponse { index })),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
