//! The flags that describe one task to run, shared by `task queue` and `schedule create`:
//! its payload, priority, timeout, retry settings and placement. Unset overrides take the
//! code's.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use drover_proto::v1 as pv;

use super::output::retry_on_arg;
use super::placement::PlacementArgs;

#[derive(Args, Clone, Debug)]
pub struct TaskFlags {
    /// The payload, JSON text.
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// Read the payload from a file (`-`: standard input). Must be JSON unless --raw.
    #[arg(long)]
    pub payload_file: Option<PathBuf>,
    /// Send the payload as bytes, without checking that it is JSON.
    #[arg(long)]
    pub raw: bool,
    /// 0 (default) to 2 (most urgent).
    #[arg(long, default_value_t = 0)]
    pub priority: u32,
    /// Overrides the code's timeout.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Overrides the code's retries (max_retries).
    #[arg(long)]
    pub retries: Option<u32>,
    /// Overrides the code's wait before the first retry, for example 2s (doubles per retry).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_delay: Option<Duration>,
    /// Overrides the code's cap on the retry wait, for example 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_backoff_max: Option<Duration>,
    /// Overrides which failures are retried: exit_code, oom, timeout, image_pull,
    /// runner_lost, infrastructure, cancelled (comma-separated or repeated).
    #[arg(long)]
    pub retry_on: Vec<String>,
    #[command(flatten)]
    pub placement: PlacementArgs,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

impl TaskFlags {
    /// The task of `code` these flags describe, ready `delay` from when it is queued; reads
    /// the payload (a file or standard input) and checks the flags.
    pub fn new_task(self, code: String, delay: Option<Duration>) -> anyhow::Result<pv::NewTask> {
        Ok(pv::NewTask {
            payload: super::task::read_payload(self.payload, self.payload_file, self.raw)?,
            retry_on: retry_on_arg(&self.retry_on)?,
            code,
            priority: self.priority,
            delay_ms: delay.map(ms).unwrap_or(0),
            timeout_ms: self.timeout.map(ms).unwrap_or(0),
            retries: self.retries,
            retry_delay_ms: self.retry_delay.map(ms),
            retry_backoff_max_ms: self.retry_backoff_max.map(ms),
            placement: self.placement.to_proto(),
        })
    }
}
