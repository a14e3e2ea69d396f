//! Raft glue around openraft 0.9:
//!
//! * [`types`] — the type configuration (entry data = `state::Request`).
//! * [`codec`] — postcard framing inside `raft.v1.RaftMessage`.
//! * [`network`] — the tonic client side (`RaftNetwork`).
//! * [`service`] — the tonic server side, forwarding and read-index.
//! * [`node`] — proposals, follower forwarding, linearizable read barriers.
//! * [`batcher`] — many clients' commands in one entry.
//! * [`read_rounds`] — one read-index round shared by every read waiting.

pub mod batcher;
pub mod codec;
// openraft's RaftNetwork trait returns its RPCError by value (see `storage`).
#[allow(clippy::result_large_err)]
pub mod network;
pub mod node;
pub mod read_rounds;
pub mod service;
pub mod types;
