//! One module per command group.
pub mod agent;
pub mod certs;
pub mod client;
pub mod operator;
pub mod server;
pub mod tenant;
