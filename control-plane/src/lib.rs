//! drover-control-plane: the replicated control plane.
//!
//! Data flows one way: `api` (gRPC services) → `raft` (openraft, proposals, forwarding)
//! → `state::apply` (pure state machine) → `storage` (sled). Leader-only loops in `leader`
//! propose expiries, promotions and purges.
//!
//! * [`state`] — pure, deterministic state machine.
//! * [`storage`] — sled: Raft log, vote, state machine tables, snapshots.
//! * [`raft`] — openraft types, tonic transport, proposals and follower forwarding.

pub mod raft;
pub mod state;
pub mod storage;
