//! Simulated regions for the WAN scenario: servers, agents and clients are spread over
//! three regions, and every link between two regions is delayed (each way), so a round
//! trip between regions costs twice the one-way delay.
//!
//! Server `i` is in region `(i - 1) % 3`, the k-th agent in region `k % 3`, clients in
//! region 0.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::net::{self, Net};
use crate::proxy::Fault;

pub const REGIONS: u64 = 3;

pub struct Regions {
    servers: BTreeMap<u64, u64>,
    agents: BTreeMap<String, u64>,
}

impl Regions {
    pub fn new(servers: Vec<u64>, agents: Vec<String>) -> Self {
        Regions {
            servers: servers.into_iter().map(|id| (id, (id.saturating_sub(1)) % REGIONS)).collect(),
            agents: agents.into_iter().enumerate().map(|(k, id)| (net::agent(&id), k as u64 % REGIONS)).collect(),
        }
    }

    /// The region of whoever dials a link (`s<id>`, `a:<agent>`, `client`).
    fn of(&self, from: &str) -> Option<u64> {
        if from == net::CLIENT {
            return Some(0);
        }
        if let Some(id) = from.strip_prefix('s').and_then(|n| n.parse::<u64>().ok()) {
            return self.servers.get(&id).copied();
        }
        self.agents.get(from).copied()
    }

    /// Delays every link between regions by `one_way` (± `jitter`); returns how many.
    pub fn apply(&self, net: &Net, one_way: Duration, jitter: Duration) -> usize {
        net.set_where(Fault::Delay { base: one_way, jitter }, |from, to| {
            self.of(from).zip(self.servers.get(&to)).is_some_and(|(a, b)| a != *b)
        })
    }

    pub fn describe(&self) -> String {
        (0..REGIONS)
            .map(|r| {
                let s: Vec<String> =
                    self.servers.iter().filter(|(_, g)| **g == r).map(|(id, _)| format!("s{id}")).collect();
                let a: Vec<&str> = self.agents.iter().filter(|(_, g)| **g == r).map(|(id, _)| id.as_str()).collect();
                format!("region {r}: {} {}", s.join(" "), a.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
