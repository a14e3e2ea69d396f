//! What the agent shows an operator on its control socket: the status view (slots,
//! leases with their phase and time left, images) and the [`ControlTarget`] the socket
//! serves, so the socket reads a view and never reaches into the agent.

use serde::Serialize;

use crate::lease_book::{Phase, StopReason};

/// What the control socket serves: a status view, a drain switch and the metrics text.
pub trait ControlTarget: Send + Sync + 'static {
    fn status(&self) -> StatusView;
    /// Starts draining; returns how many tasks are still held.
    fn drain(&self) -> usize;
    fn metrics_text(&self) -> String;
}

/// A running task as the status page shows it.
#[derive(Serialize, Debug, Clone)]
pub struct RunningView {
    pub task_id: u64,
    pub lease_epoch: u64,
    pub attempt: u32,
    pub tenant: String,
    pub code: String,
    pub image: String,
    pub container_id: Option<String>,
    pub phase: Phase,
    pub running_for_ms: u64,
    /// How long the lease has left before it must be renewed.
    pub lease_left_ms: u64,
    pub stopping: Option<StopReason>,
}

#[derive(Serialize, Debug, Clone)]
pub struct StatusView {
    pub agent_id: String,
    pub slots: u32,
    pub busy: usize,
    pub draining: bool,
    pub lease_ttl_ms: u64,
    /// The container engine failed and leasing waits for it to answer again.
    pub engine_down: bool,
    pub running: Vec<RunningView>,
    pub images: Vec<crate::executor::image_cache::CachedImage>,
}
