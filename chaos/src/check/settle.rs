//! After every fault is healed: all acknowledged work ends within the deadline, every
//! member reports the same applied index and state digest, and new writes are accepted.

use serde::Serialize;

use super::{Finding, Inputs};

/// What the harness measured after healing (errors say what did not happen).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Settled {
    /// Tasks not finished when the deadline passed.
    pub unfinished: Vec<u64>,
    /// Applied index all members agree on, or why they do not.
    pub converged: Option<Result<u64, String>>,
    /// Milliseconds from heal to the first accepted write, or why none was accepted.
    pub write_after_heal: Option<Result<u64, String>>,
    /// Milliseconds from heal to identical replicas.
    pub converge_ms: Option<u64>,
}

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("after heal: work ends, members converge, writes accepted");
    let s = &i.settle;
    for t in &s.unfinished {
        f.violation(|| format!("task {t} did not finish within the settle deadline"));
    }
    match &s.converged {
        Some(Ok(_)) => {}
        Some(Err(e)) => f.violation(|| format!("members did not converge: {e}")),
        None => f.violation(|| "convergence was not checked".to_string()),
    }
    match &s.write_after_heal {
        Some(Ok(_)) => {}
        Some(Err(e)) => f.violation(|| format!("no write accepted after heal: {e}")),
        None => f.violation(|| "writes after heal were not checked".to_string()),
    }
    f
}
