//! drover-control-plane: the replicated control plane.
//!
//! Data flows one way: [`api`] (gRPC services) → [`raft`] (openraft, proposals,
//! forwarding) → [`state`]`::apply` (pure state machine) → [`storage`] (sled). Leader-only
//! loops in [`leader`] propose lease expiries, promotions and purges.
//!
//! * [`state`] — the pure, deterministic state machine.
//! * [`storage`] — Raft log segments, vote and snapshot files (through the `fs` layer), sled tables.
//! * [`raft`] — openraft types, tonic transport, proposals and follower forwarding.
//! * [`api`] — tenant, agent and admin gRPC services; one error → status mapping.
//! * [`leader`] — leader-only loops and the soft lease tracker.
//! * [`tls`] — mutual-TLS material for the listener and for dialling peers.
//! * [`accept`] — the TLS accept loop every listener shares (handshakes off the loop,
//!   bounded in time and number; refused certificates counted).
//! * [`webhook`] — `POST /v1/webhooks/<tenant>/<code>` on its own HTTPS listener (no
//!   client certificate; the webhook's secret), queueing through the `QueueTasks` path.
//! * [`config`], [`metrics`], [`http`], [`server`] — validated config, Prometheus
//!   registry, side HTTP listener, wiring and shutdown.
//! * [`test_breaks`] — deliberate defects (debug builds only) that prove the chaos
//!   checker can fail.

pub mod accept;
pub mod api;
pub mod config;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod raft;
pub mod sealing;
pub mod server;
pub mod state;
// openraft's storage and network traits return its own error types by value (over 200
// bytes); boxing them is not ours to choose.
#[allow(clippy::result_large_err)]
pub mod storage;
pub mod test_breaks;
pub mod tls;
pub mod webhook;
