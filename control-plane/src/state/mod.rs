//! The pure, deterministic state machine: tenants, codes, tasks, leases, agents.
//!
//! * [`command`] — versioned, batched commands and responses (the Raft entry data).
//! * [`machine`] — [`StateMachine`] and `apply`; [`tasks`] and [`leases`] hold the rules.
//! * [`placement`] — which ready task an agent gets next; [`retry`] — failure taxonomy and backoff.
//! * [`indexes`] — in-memory indexes derived from the tables.
//! * [`kv`], [`keys`] — the key-value interface and the table layout; [`legacy`] — older layouts still read.
//! * [`logs`] — task output appended by agents, capped per task.
//! * [`schedules`] — tasks queued on a timing, each tick once; [`timing`] — when ticks fall (cron, run_every).
//! * [`validate`] — input limits ([`image_ref`]: the registry reference grammar); [`views`] — read queries; [`invariants`] — checks.
//!
//! Nothing here reads a clock, the network or randomness; the same log applied to the
//! same tables yields byte-identical tables on every replica.

pub mod command;
pub mod error;
pub mod fleet;
pub mod groups;
pub mod image_ref;
pub mod indexes;
pub mod invariants;
pub mod keys;
pub mod kv;
pub mod leases;
pub mod legacy;
pub mod logs;
pub mod machine;
pub mod model;
pub mod modes;
pub mod placement;
pub mod presence;
pub mod registries;
pub mod retry;
pub mod schedules;
pub mod tasks;
pub mod timing;
pub mod validate;
pub mod views;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod validate_props;

pub use command::{Command, Proposal, Request, Response};
pub use error::StateError;
pub use kv::{KvError, KvRead, MemKv, Txn};
pub use machine::{ApplyCtx, StateMachine};
