//! A leader cut off from its quorum stops granting and renewing leases within the lease
//! TTL: no lease-authority probe answered by a server more than the TTL (plus slack)
//! after the nemesis cut it off from a quorum, until the heal.

use super::{Finding, Inputs};
use crate::history::{Kind, Op};

/// Measurement slack: probe and nemesis timestamps are taken by different tasks.
const SLACK_MS: u64 = 500;

pub fn check(i: &Inputs) -> Finding {
    let mut f = Finding::new("no lease authority without a quorum");
    // (node, cut off at, healed at)
    let mut cuts: Vec<(u64, u64, u64)> = Vec::new();
    let mut open: Vec<(u64, u64)> = Vec::new();
    for e in &i.events {
        if let Op::Nemesis { cut_off, .. } = &e.op {
            for (node, since) in open.drain(..) {
                cuts.push((node, since, e.t_ms));
            }
            open.extend(cut_off.iter().map(|n| (*n, e.t_ms)));
        }
    }
    cuts.extend(open.into_iter().map(|(n, s)| (n, s, u64::MAX)));
    for e in i.events.iter().filter(|e| e.kind == Kind::Ok) {
        if let Op::Authority { node, granted: Some(true) } = &e.op
            && let Some((_, since, _)) = cuts
                .iter()
                .find(|(n, since, until)| n == node && e.t_ms > since + i.lease_ttl_ms + SLACK_MS && e.t_ms < *until)
        {
            f.violation(|| {
                format!(
                    "server {node} answered as lease authority at {} ms, {} ms after it was cut off from its quorum",
                    e.t_ms,
                    e.t_ms - since
                )
            });
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::ev;

    #[test]
    fn answers_past_the_ttl_while_cut_off_are_violations() {
        let cut = |t, cut_off| {
            ev(t, "nemesis", Kind::Info, Op::Nemesis { action: "x".into(), cut_off, fault: None, target: None })
        };
        let probe = |t, node| ev(t, "probe", Kind::Ok, Op::Authority { node, granted: Some(true) });
        let mut i = Inputs { lease_ttl_ms: 3_000, ..Default::default() };
        i.events = vec![
            cut(1_000, vec![1]),
            probe(2_000, 1),
            probe(4_000, 1),
            probe(6_000, 2),
            cut(7_000, vec![]),
            probe(8_000, 1),
        ];
        assert_eq!(check(&i).violations, 0);
        i.events.insert(4, probe(5_000, 1));
        assert_eq!(check(&i).violations, 1);
    }
}
