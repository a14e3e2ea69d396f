//! The nemesis's hands: how each [`FaultKind`] is injected into a running fleet, and how
//! everything is healed.
//!
//! [`Nemesis::inject`] carries out one fault, notes in its [`Damage`] what heal must undo,
//! and returns what it did as an [`Injected`] (kind, target, description, the servers it
//! cut off from their quorum), which the run records in the history. A single-fault
//! scenario fixes the target (the leader, a follower, the next server in turn); `mixed`
//! draws it with the run's seeded generator, and draws the fault itself from the menu
//! ([`crate::scenario::Deck`]).
//!
//! Invariants: at most one fault is in force at a time, and [`Nemesis::heal`] undoes all
//! of it (links pass, paused processes continue, stopped servers restart, a wiped server
//! is added back). No fault takes a majority of servers down or leaves more than one
//! server without a majority to talk to; a server left without one is named in
//! `cut_off`, which the lease-authority check watches.

use std::time::{Duration, Instant};

use drover_proto::admin as pa;
use rand::seq::SliceRandom;
use rand::{Rng, rngs::StdRng};

use crate::net::{self, Net};
use crate::proxy::{Direction, Fault};
use crate::scenario::{Deck, FaultKind, Scenario};
use crate::{AgentProc, Cluster, engine};

/// What heal must undo.
#[derive(Default)]
struct Damage {
    killed: Vec<u64>,
    paused: Vec<u64>,
    paused_agents: Vec<usize>,
    net: bool,
    engine: bool,
    /// Removed from the membership and wiped, waiting to be added back.
    wiped: Vec<u64>,
}

/// A fault as injected.
#[derive(Clone, Debug)]
pub struct Injected {
    pub kind: FaultKind,
    /// Whom it hit: `s2`, `s1-s2`, `a:<agent>->s1`, `links`, `engine`.
    pub target: String,
    pub action: String,
    /// Servers that cannot reach a quorum until the heal.
    pub cut_off: Vec<u64>,
    /// The leader was killed (the run measures how soon writes are accepted again).
    pub leader_killed: bool,
}

impl Injected {
    fn new(kind: FaultKind, target: String, action: String) -> Self {
        Injected { kind, target, action, cut_off: Vec::new(), leader_killed: false }
    }
}

pub struct Nemesis<'a> {
    scenario: Scenario,
    pub cluster: &'a mut Cluster,
    agents: &'a [AgentProc],
    net: &'a Net,
    damage: Damage,
    /// The next server a rolling restart stops.
    rolling: usize,
    deck: Deck,
}

fn pick<T: Copy>(items: &[T], rng: &mut StdRng) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())])
}

impl<'a> Nemesis<'a> {
    pub fn new(scenario: Scenario, cluster: &'a mut Cluster, agents: &'a [AgentProc], net: &'a Net) -> Self {
        Nemesis { scenario, cluster, agents, net, damage: Damage::default(), rolling: 0, deck: Deck::default() }
    }

    /// This cycle's kind of fault: the scenario's own, or (mixed) the next one dealt.
    pub fn next_kind(&mut self, rng: &mut StdRng) -> FaultKind {
        match self.scenario.fault() {
            Some(kind) => kind,
            None => self.deck.draw(rng),
        }
    }

    /// Injects a fault of `kind`; None when there was nothing to do it to (no agent
    /// running a task to pause, too few servers to partition).
    pub async fn inject(&mut self, kind: FaultKind, leader: u64, rng: &mut StdRng) -> anyhow::Result<Option<Injected>> {
        let mixed = self.scenario == Scenario::Mixed;
        let servers = self.cluster.running_ids();
        let followers: Vec<u64> = servers.iter().copied().filter(|id| *id != leader).collect();
        let role = |id: u64| if id == leader { "leader" } else { "follower" };
        let (net, d) = (self.net, &mut self.damage);
        let injected = match kind {
            FaultKind::Kill => {
                let Some(id) = (if mixed { pick(&servers, rng) } else { Some(leader) }) else { return Ok(None) };
                self.cluster.kill(id)?;
                d.killed.push(id);
                let wan = if self.scenario == Scenario::Wan { " (regions 100 ms apart)" } else { "" };
                Injected {
                    leader_killed: id == leader,
                    ..Injected::new(kind, net::server(id), format!("kill -9 {} {id}{wan}", role(id)))
                }
            }
            FaultKind::Term => {
                let id = if mixed {
                    let Some(id) = pick(&servers, rng) else { return Ok(None) };
                    id
                } else {
                    let ids = self.cluster.ids();
                    self.rolling += 1;
                    ids[(self.rolling - 1) % ids.len()]
                };
                let cluster = &mut *self.cluster;
                tokio::task::block_in_place(|| cluster.stop(id))?;
                d.killed.push(id);
                Injected::new(kind, net::server(id), format!("SIGTERM {} {id}", role(id)))
            }
            FaultKind::Stop => {
                let Some(id) = pick(if mixed { &servers } else { &followers }, rng) else { return Ok(None) };
                self.cluster.pause(id)?;
                d.paused.push(id);
                Injected::new(kind, net::server(id), format!("SIGSTOP {} {id}", role(id)))
            }
            FaultKind::PauseAccept => {
                let Some(id) = pick(&servers, rng) else { return Ok(None) };
                let n = net.into_server(id, Fault::PauseAccept);
                d.net = true;
                let action =
                    format!("pause accepts into {} {id} ({n} links: new connections wait, open ones flow)", role(id));
                Injected::new(kind, net::server(id), action)
            }
            FaultKind::Partition => {
                let Some(p) = partition(&servers, rng) else { return Ok(None) };
                let n = net.cut_pairs(&p.cut, Fault::Blackhole);
                d.net = true;
                Injected::new(kind, p.target, format!("{} ({n} links blackholed)", p.about))
            }
            FaultKind::AgentOneWay => {
                let Some(i) = pick(&(0..self.agents.len()).collect::<Vec<_>>(), rng) else { return Ok(None) };
                let held = if rng.random_bool(0.5) { Direction::Forward } else { Direction::Back };
                let agent = &self.agents[i].id;
                let n = net.agent_to(agent, leader, Fault::OneWay { held });
                if n == 0 {
                    return Ok(None);
                }
                d.net = true;
                let what = match held {
                    Direction::Forward => "its requests held, answers flow",
                    Direction::Back => "answers held, its requests flow",
                };
                let target = format!("{}->s{leader}", net::agent(agent));
                Injected::new(kind, target, format!("agent {agent} to leader {leader}: {what}"))
            }
            FaultKind::LeaderIsolated => {
                let n = net.isolate_server(leader, Fault::Blackhole);
                d.net = true;
                let action = format!("blackhole leader {leader} from its followers ({n} links)");
                Injected { cut_off: vec![leader], ..Injected::new(kind, net::server(leader), action) }
            }
            FaultKind::LeaderOneWay => {
                let me = net::server(leader);
                let n = net.set_where(Fault::Blackhole, |from, to| from == me && to != leader);
                d.net = true;
                let action = format!("blackhole the links leader {leader} dials to its followers ({n} links)");
                Injected { cut_off: vec![leader], ..Injected::new(kind, me, action) }
            }
            FaultKind::AgentsCut => {
                let n = net.cut_agents_from(leader, Fault::Blackhole);
                d.net = true;
                let action = format!("blackhole every agent's link to leader {leader} ({n} links)");
                Injected::new(kind, net::server(leader), action)
            }
            FaultKind::AgentStop => {
                let busy: Vec<usize> = (0..self.agents.len())
                    .filter(|i| self.agents[*i].running_containers().map(|c| !c.is_empty()).unwrap_or(false))
                    .collect();
                let Some(&i) = busy.get(rng.random_range(0..busy.len().max(1))) else { return Ok(None) };
                self.agents[i].pause()?;
                d.paused_agents.push(i);
                let agent = &self.agents[i].id;
                Injected::new(kind, net::agent(agent), format!("SIGSTOP agent {agent} (running tasks)"))
            }
            FaultKind::MemberReplace => {
                let Some(f) = pick(&followers, rng) else { return Ok(None) };
                d.wiped.push(f);
                remove_and_wipe(self.cluster, f).await?;
                let action = format!("remove follower {f} from the membership, wipe its data, start it empty");
                Injected::new(kind, net::server(f), action)
            }
            FaultKind::EngineStop => {
                let took = tokio::task::block_in_place(engine::stop)?;
                d.engine = true;
                let action =
                    format!("stop the Docker engine (SIGTERM dockerd; it exited after {} ms)", took.as_millis());
                Injected::new(kind, "engine".into(), action)
            }
            FaultKind::DelayReset => {
                let n = net.all(Fault::Delay { base: Duration::from_millis(20), jitter: Duration::from_millis(40) });
                let links = net.all_links();
                let mut reset = Vec::new();
                for _ in 0..3 {
                    let l = &links[rng.random_range(0..links.len())];
                    l.set(Fault::Reset);
                    reset.push(l.name.clone());
                }
                d.net = true;
                Injected::new(kind, "links".into(), format!("delay 20±40 ms on {n} links; reset {}", reset.join(", ")))
            }
        };
        Ok(Some(injected))
    }

    /// Undoes every fault: links pass, paused processes continue, stopped servers restart,
    /// a wiped server is added back. Returns what it did.
    pub async fn heal(&mut self) -> anyhow::Result<String> {
        let d = &mut self.damage;
        let mut did = Vec::new();
        if std::mem::take(&mut d.net) {
            self.net.heal();
            did.push("links pass".to_string());
        }
        for id in std::mem::take(&mut d.paused) {
            self.cluster.resume(id)?;
            did.push(format!("SIGCONT server {id}"));
        }
        for i in std::mem::take(&mut d.paused_agents) {
            self.agents[i].resume()?;
            did.push(format!("SIGCONT agent {}", self.agents[i].id));
        }
        for id in std::mem::take(&mut d.killed) {
            self.cluster.restart(id)?;
            did.push(format!("restart server {id}"));
        }
        for id in std::mem::take(&mut d.wiped) {
            let took = rejoin(self.cluster, id).await?;
            did.push(format!("server {id} added back and promoted after {} ms", took.as_millis()));
        }
        if std::mem::take(&mut d.engine) {
            let took = tokio::task::block_in_place(engine::start)?;
            did.push(format!("Docker engine up after {} ms", took.as_millis()));
        }
        Ok(if did.is_empty() { "nothing".into() } else { did.join(", ") })
    }
}

/// A partition of the servers in which each still reaches a majority (itself included),
/// but not all the same majority.
#[derive(Debug, PartialEq)]
pub struct Partition {
    /// Server pairs whose links are cut, both ways.
    pub cut: Vec<(u64, u64)>,
    pub target: String,
    pub about: String,
}

/// With 3 servers, a bridge: one pair cut from each other, both still reaching the third.
/// With more, a ring in a shuffled order where each server keeps only the `k` nearest on
/// either side, `k` the least that still gives it a majority (its two neighbours, with 4
/// or 5 servers). None with fewer than 3.
pub fn partition(servers: &[u64], rng: &mut StdRng) -> Option<Partition> {
    let n = servers.len();
    if n < 3 {
        return None;
    }
    let mut ring = servers.to_vec();
    ring.shuffle(rng);
    if n == 3 {
        let (a, b, c) = (ring[0], ring[1], ring[2]);
        return Some(Partition {
            cut: vec![(a, b)],
            target: format!("s{a}-s{b}"),
            about: format!("bridge: servers {a} and {b} cut from each other, both still reach {c}"),
        });
    }
    let k = (n / 2).div_ceil(2);
    let mut cut = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            if (j - i).min(n - (j - i)) > k {
                cut.push((ring[i], ring[j]));
            }
        }
    }
    let order: Vec<String> = ring.iter().map(|id| format!("s{id}")).collect();
    Some(Partition {
        cut,
        target: format!("ring {}", order.join("-")),
        about: format!("ring {}: each server reaches only its {k} nearest on either side", order.join("-")),
    })
}

/// Retries a membership call on the current leader until it succeeds (30 s at most).
async fn on_leader<T, F, Fut>(cluster: &Cluster, what: &str, f: F) -> anyhow::Result<T>
where
    F: Fn(crate::clients::Admin) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        // Any node that says it leads (a wiped node knows no leader, so the cluster-wide
        // agreement of `wait_leader` is not to be had until it is back).
        let mut leader = None;
        for id in cluster.running_ids() {
            if cluster.status(id).await.is_ok_and(|s| s.state == "Leader") {
                leader = Some(id);
                break;
            }
        }
        let err = match leader {
            Some(leader) => match f(cluster.admin(leader)?).await {
                Ok(v) => return Ok(v),
                Err(s) => format!("{:?}: {}", s.code(), s.message()),
            },
            None => "no node says it leads".to_string(),
        };
        if Instant::now() >= until {
            anyhow::bail!("{what}: {err}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes follower `id` from the membership, then wipes it (see [`Cluster::wipe`]).
async fn remove_and_wipe(cluster: &mut Cluster, id: u64) -> anyhow::Result<()> {
    on_leader(cluster, "removing the node", |mut a| async move {
        a.remove_node(pa::RemoveNodeRequest { node_id: id }).await
    })
    .await?;
    cluster.wipe(id)
}

/// Adds wiped node `id` back as a learner and promotes it once it has caught up.
async fn rejoin(cluster: &Cluster, id: u64) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let addr = cluster.addr(id).to_string();
    on_leader(cluster, "adding the node back", |mut a| {
        let addr = addr.clone();
        async move { a.add_learner(pa::AddLearnerRequest { node_id: id, addr }).await }
    })
    .await?;
    on_leader(cluster, "promoting the node", |mut a| async move {
        a.promote(pa::PromoteRequest { node_ids: vec![id] }).await
    })
    .await?;
    Ok(t0.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_partition_leaves_every_server_a_majority_but_not_all_servers() {
        for n in 3..=7u64 {
            let servers: Vec<u64> = (1..=n).collect();
            for seed in 0..20 {
                let p = partition(&servers, &mut StdRng::seed_from_u64(seed)).expect("a partition");
                assert!(!p.cut.is_empty(), "n={n}: nothing cut");
                for s in &servers {
                    let lost = p.cut.iter().filter(|(a, b)| a == s || b == s).count() as u64;
                    assert!(2 * (n - lost) > n, "n={n} seed={seed}: server {s} reaches {} of {n}", n - lost);
                }
                if n == 3 {
                    assert_eq!(p.cut.len(), 1, "a bridge cuts one pair");
                }
                if n == 5 {
                    // A ring: each server keeps exactly its two neighbours.
                    assert_eq!(p.cut.len(), 5);
                    assert!(servers.iter().all(|s| p.cut.iter().filter(|(a, b)| a == s || b == s).count() == 2));
                }
            }
        }
        assert_eq!(partition(&[1, 2], &mut StdRng::seed_from_u64(1)), None);
    }
}
