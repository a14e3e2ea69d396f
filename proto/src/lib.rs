//! drover-proto: every wire contract of Drover, generated from `proto/` at build time.
//!
//! * [`v1`] — the tenant API (codes, tasks).
//! * [`agent`] — runner agents: leasing, heartbeats, completion.
//! * [`admin`] — operators: membership, status, tenants.
//! * [`raft`] — node-to-node Raft traffic and follower forwarding.

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("drover.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod agent {
    tonic::include_proto!("drover.agent.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod admin {
    tonic::include_proto!("drover.admin.v1");
}

#[allow(clippy::all, missing_docs)]
pub mod raft {
    tonic::include_proto!("drover.raft.v1");
}

/// Codec version carried in every `raft.v1.RaftMessage`: postcard over serde.
pub const RAFT_CODEC_POSTCARD: u32 = 1;
