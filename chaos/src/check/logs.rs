//! No panic in any process's log (servers and agents).

use super::{Finding, Inputs};

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("no panic in any log");
    for (name, text) in &i.logs {
        for line in text.lines().filter(|l| l.contains("panicked at")) {
            f.violation(|| format!("{name}: {}", line.trim()));
        }
    }
    f
}
