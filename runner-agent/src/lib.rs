//! drover-runner-agent: the runner agent (leases tasks and runs them in containers).
//!
//! Not built yet: this crate exists so the workspace layout is in place. The agent's
//! wire contract is already fixed in `proto/drover/agent/v1/agent.proto`, and the control
//! plane serves it (`Lease` long-poll, `Heartbeat`, `Complete` with lease epochs).
