//! CPU accounting for the load generators: how much CPU each process of a run used per
//! unit of work, and how busy the whole machine was. On a machine where the servers and
//! the load generator share a few cores, throughput alone says little; CPU per task says
//! what each role costs and so what the same build would reach with cores of its own.

use std::time::Duration;

/// Jiffies the whole machine spent busy and in total, from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    /// The machine's counters now (zero where `/proc/stat` cannot be read).
    pub fn now() -> Self {
        std::fs::read_to_string("/proc/stat").ok().and_then(|s| parse_proc_stat(&s)).unwrap_or_default()
    }

    /// The fraction of the machine's CPU time between `self` and `later` that was busy.
    pub fn busy_since(&self, later: &MachineCpu) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 {
            return 0.0;
        }
        later.busy.saturating_sub(self.busy) as f64 / total as f64
    }
}

/// Parses the aggregate `cpu` line: user nice system idle iowait irq softirq steal …;
/// idle and iowait are not busy. Guest time is already counted in user.
fn parse_proc_stat(s: &str) -> Option<MachineCpu> {
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some(MachineCpu { busy: total - idle, total })
}

/// This process's own CPU time so far.
pub fn own_cpu_time() -> Duration {
    drover_chaos::cluster::process_cpu_time(std::process::id()).unwrap_or_default()
}

/// CPU time per 1,000 units of work, in milliseconds.
pub fn ms_per_1000(cpu: Duration, units: u64) -> f64 {
    if units == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() * 1000.0 * 1000.0 / units as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_fraction_counts_everything_but_idle_and_iowait() {
        let a = parse_proc_stat("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5\n").expect("parses");
        let b = parse_proc_stat("cpu  250 0 100 850 100 0 0 0 0 0\n").expect("parses");
        // 200 busy jiffies (150 user + 50 system) of 300.
        assert!((a.busy_since(&b) - 2.0 / 3.0).abs() < 1e-9);
        assert!(parse_proc_stat("intr 1 2 3\n").is_none());
        assert_eq!(MachineCpu::default().busy_since(&MachineCpu::default()), 0.0);
    }

    #[test]
    fn cpu_per_thousand() {
        assert_eq!(ms_per_1000(Duration::from_millis(500), 5_000), 100.0);
        assert_eq!(ms_per_1000(Duration::from_secs(1), 0), 0.0);
    }
}
