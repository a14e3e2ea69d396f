//! One module per command group.
pub mod agent;
pub mod agents;
pub mod certs;
pub mod client;
pub mod cluster;
pub mod code;
pub mod dev;
pub mod operator;
pub mod output;
pub mod placement;
pub mod pool;
pub mod registry;
pub mod schedule;
pub mod server;
pub mod task;
pub mod task_flags;
pub mod tenant;
