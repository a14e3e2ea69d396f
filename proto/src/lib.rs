//! drover-proto: every wire contract of Drover, generated from `proto/` at build time.
//!
//! * [`v1`] — the tenant API (codes, tasks).
//! * [`agent`] — runner agents: leasing, heartbeats, completion.
//! * [`admin`] — operators: membership, status, tenants, read-only views of tenant objects.
//! * [`raft`] — node-to-node Raft traffic and follower forwarding.
//!
//! The generated modules sit at their package paths (`drover::admin::v1`, …) so that
//! cross-package references (admin returning `drover.v1.Task`) resolve; the short names
//! above re-export them.

#[allow(clippy::all, missing_docs)]
pub mod drover {
    pub mod v1 {
        tonic::include_proto!("drover.v1");
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("drover.agent.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("drover.admin.v1");
        }
    }
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("drover.raft.v1");
        }
    }
}

pub use drover::admin::v1 as admin;
pub use drover::agent::v1 as agent;
pub use drover::raft::v1 as raft;
pub use drover::v1;

/// Environment variables the agent sets in every task container. A code's `env` may not
/// name them (nor anything starting `DROVER_`): the control plane refuses such a code.
pub const TASK_ENV: [&str; 5] = ["TASK_ID", "TASK_ATTEMPT", "LEASE_EPOCH", "PAYLOAD_FILE", "CONFIG_FILE"];

/// Codec version carried in every `raft.v1.RaftMessage`: postcard over serde.
pub const RAFT_CODEC_POSTCARD: u32 = 1;
