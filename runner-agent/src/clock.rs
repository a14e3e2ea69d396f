//! The agent's monotonic clock: tokio's, so that tests with paused time simulate it.
//! Every lease deadline, send time and timer in the agent is on this clock.

use std::time::Instant;

pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
