//! One module per command group.
pub mod certs;
pub mod client;
pub mod operator;
pub mod server;
pub mod tenant;
