//! drover-runner-agent: the runner agent. It dials the control plane, leases tasks when it
//! has free slots, runs each in a fresh Docker container under cgroup limits, ships the
//! container's output, heartbeats its leases and reports completion with the lease epoch.
//! It never listens on a network port for control; operators reach it through a unix
//! socket.
//!
//! * [`config`] — the agent's TOML configuration; [`clock`] — the agent's clock.
//! * [`uplink`] — the one outbound gRPC connection, following leader hints.
//! * [`lease_book`] — pure: held leases, deadlines, renewals, stop reasons, slots.
//! * [`reconcile`] — pure: labelled containers + confirmed leases → adopt / remove.
//! * [`agent`] — the shared state around the book, and the agent's life (run, drain).
//! * [`session`] — the lease long-poll, heartbeats, hand-backs, the deadline timer and
//!   the engine watch.
//! * [`runner`] — one task: container, output, and its end as the book decides.
//! * [`serve`] — process wiring and signals.
//! * [`executor`] — one task in one Docker container (bollard), and the image cache.
//! * [`shipper`] — batched, ordered, fenced log shipping.
//! * [`watchdog`] — the out-of-process lease-deadline enforcer.
//! * [`socket`] — the local control socket, serving the [`status`] view; [`metrics`] —
//!   Prometheus metrics.

pub mod agent;
pub mod clock;
pub mod config;
pub mod executor;
pub mod lease_book;
pub mod metrics;
pub mod reconcile;
pub mod runner;
pub mod serve;
pub mod session;
pub mod shipper;
pub mod socket;
pub mod status;
pub mod uplink;
pub mod watchdog;
