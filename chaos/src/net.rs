//! The network of a proxied cluster: one [`Link`] per directed link, named by who dials
//! (`s<id>` for a server, `a:<agent id>` for an agent, `client`) and which server it
//! reaches. Servers and agents are configured with `[dial]` overrides that send every
//! connection to a peer through its link; test clients dial [`Net::client_addr`].
//!
//! Partitions are sets of link faults: a server "isolated from followers" is every
//! server↔server link touching it blackholed, while links from agents and clients stay
//! up. Most faults apply to both byte directions of a link (what the dialer sends and what
//! it gets back), and "one-way" then means the links dialled by one side only; a
//! [`Fault::OneWay`] holds one half of each connection instead (an agent's requests, or
//! the answers it gets), which is what one-way loss between an agent and a server is,
//! since only the agent ever dials.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::proxy::{Fault, Link};

pub const CLIENT: &str = "client";

/// Who dials a link.
pub fn server(id: u64) -> String {
    format!("s{id}")
}

pub fn agent(id: &str) -> String {
    format!("a:{id}")
}

#[derive(Default)]
pub struct Net {
    links: Mutex<BTreeMap<(String, u64), Arc<Link>>>,
    seed: u64,
}

impl Net {
    pub fn new(seed: u64) -> Self {
        Net { links: Mutex::new(BTreeMap::new()), seed }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, u64), Arc<Link>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link from `from` to server `to` at `target`, made on first use.
    pub fn link(&self, from: &str, to: u64, target: &str) -> std::io::Result<Arc<Link>> {
        let mut links = self.lock();
        if let Some(l) = links.get(&(from.to_string(), to)) {
            return Ok(l.clone());
        }
        let seed = self.seed ^ (links.len() as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let l = Arc::new(Link::start(&format!("{from}->s{to}"), target, seed)?);
        links.insert((from.to_string(), to), l.clone());
        Ok(l)
    }

    /// Where a test client reaches server `to` (its link must exist).
    pub fn client_addr(&self, to: u64) -> Option<String> {
        self.lock().get(&(CLIENT.to_string(), to)).map(|l| l.addr())
    }

    /// Sets `fault` on every link for which `select(from, to)` holds; returns how many.
    pub fn set_where(&self, fault: Fault, select: impl Fn(&str, u64) -> bool) -> usize {
        let links = self.lock();
        let mut n = 0;
        for ((from, to), l) in links.iter() {
            if select(from, *to) {
                l.set(fault);
                n += 1;
            }
        }
        n
    }

    /// Every link back to `Pass`.
    pub fn heal(&self) {
        self.set_where(Fault::Pass, |_, _| true);
    }

    /// Server `id` cut from the other servers, both ways; agents and clients still reach it.
    pub fn isolate_server(&self, id: u64, fault: Fault) -> usize {
        let me = server(id);
        self.set_where(fault, |from, to| (from == me && to != id) || (to == id && from.starts_with('s')))
    }

    /// Every link into server `id`: from the other servers, the agents and the clients.
    pub fn into_server(&self, id: u64, fault: Fault) -> usize {
        self.set_where(fault, |_, to| to == id)
    }

    /// The server↔server links between each pair of `pairs`, both ways.
    pub fn cut_pairs(&self, pairs: &[(u64, u64)], fault: Fault) -> usize {
        self.set_where(fault, |from, to| {
            pairs.iter().any(|&(a, b)| (from == server(a) && to == b) || (from == server(b) && to == a))
        })
    }

    /// Agent `agent_id`'s link to server `id`.
    pub fn agent_to(&self, agent_id: &str, id: u64, fault: Fault) -> usize {
        let me = agent(agent_id);
        self.set_where(fault, |from, to| from == me && to == id)
    }

    /// Every agent's links to server `id`.
    pub fn cut_agents_from(&self, id: u64, fault: Fault) -> usize {
        self.set_where(fault, |from, to| to == id && from.starts_with("a:"))
    }

    /// Every link of agent `agent_id`.
    pub fn cut_agent(&self, agent_id: &str, fault: Fault) -> usize {
        let me = agent(agent_id);
        self.set_where(fault, |from, _| from == me)
    }

    /// Every link in the fleet (servers, agents and clients).
    pub fn all(&self, fault: Fault) -> usize {
        self.set_where(fault, |_, _| true)
    }

    /// Every link.
    pub fn all_links(&self) -> Vec<Arc<Link>> {
        self.lock().values().cloned().collect()
    }

    /// Links currently not passing traffic, as `from->to: fault`.
    pub fn faulted(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, l)| l.fault() != Fault::Pass)
            .map(|((from, to), l)| format!("{from}->s{to}: {:?}", l.fault()))
            .collect()
    }

    pub async fn shutdown(&self) {
        let links: Vec<Arc<Link>> = self.lock().values().cloned().collect();
        for l in links {
            l.shutdown().await;
        }
    }
}
