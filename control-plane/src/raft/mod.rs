//! Raft glue: the openraft type configuration ([`types`]).
pub mod types;
