//! drover-benches: criterion benchmarks (`benches/`) and the `drover-bench` load
//! generator (`src/bin/drover-bench.rs`). This library holds what they share.

use std::time::Duration;

pub mod cluster;
pub mod cpu;
pub mod fleet;
pub mod histogram;
pub mod reads;

/// Latency summary of a run.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Sorts `samples` and returns the 50th and 99th percentiles and the maximum.
pub fn percentiles(samples: &mut [Duration]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Some(Percentiles { p50: at(0.50), p99: at(0.99), max: samples[samples.len() - 1] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_1_to_100() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let p = percentiles(&mut v).expect("non-empty");
        assert_eq!(p.p50, Duration::from_millis(51));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
        assert!(percentiles(&mut []).is_none());
    }
}
