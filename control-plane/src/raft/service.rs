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
    /// Time from an AppendEntries arriving to its answer (the entries written and synced);
    /// the leader gives each call only its heartbeat interval.
    pub append_seconds: prometheus::Histogram,
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let timer = self.append_seconds.start_timer();
        let rpc = codec::decode(req.get_ref())?;
        let res = self.node.raft.append_entries(rpc).await;
        let reply = codec::encode(&res)?;
        drop(timer);
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
