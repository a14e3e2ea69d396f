//! Scenarios: which faults the nemesis injects, and what makes a run of them valid.
//!
//! A nemesis schedule alternates quiet, fault and heal, with every duration drawn from a
//! seeded generator, so a seed replays the same schedule. Safety scenarios never take a
//! majority of servers down: at most one server is killed, paused or cut off at a time.
//!
//! Each scenario injects one [`FaultKind`], except `mixed`, which deals each cycle's fault
//! from [`MENU`] shuffled with the run's generator ([`Deck`]). How a fault is injected
//! and healed is [`crate::nemesis`]'s business; what it is and how long it is held is
//! this module's.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, rngs::StdRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// kill -9 the leader, restart it on the same data dir.
    LeaderKill,
    /// SIGSTOP a follower, then SIGCONT.
    FollowerPause,
    /// The leader's links to and from the other servers blackholed; agents and clients
    /// still reach it (it must stop granting leases within the TTL).
    LeaderIsolated,
    /// Every agent's links to the leader blackholed (leases expire, tasks re-leased).
    AgentsCut,
    /// SIGSTOP an agent with running tasks past its lease TTL (its watchdog stops the
    /// containers; after SIGCONT it must not report into the re-leased tasks).
    AgentPause,
    /// SIGTERM and restart every server in turn.
    RollingRestart,
    /// Delay with jitter on every link, and resets of random links.
    DelayResetStorm,
    /// Only the connections the leader dials to its followers blackholed: its
    /// replication and heartbeats stop, while the followers still reach it.
    LeaderOneWay,
    /// Remove a follower from the membership, wipe its data, start it empty, add it back
    /// as a learner and promote it once it has caught up.
    MemberReplace,
    /// Stop the Docker engine under running agents (SIGTERM dockerd), start it again.
    /// Runs only where the harness may restart the engine (`DROVER_CHAOS_OWN_ENGINE=1`).
    EngineRestart,
    /// Three regions 100 ms apart (servers, agents and clients spread over them), with
    /// the leader killed as in `leader-kill`.
    Wan,
    /// Each cycle one fault dealt from [`MENU`]: kill -9, SIGTERM or SIGSTOP of any
    /// server, paused accepts into one server, a bridge or ring partition, one half of
    /// one agent's link to the leader held, the leader isolated from its followers.
    Mixed,
}

pub const ALL: [Scenario; 12] = [
    Scenario::LeaderKill,
    Scenario::FollowerPause,
    Scenario::LeaderIsolated,
    Scenario::AgentsCut,
    Scenario::AgentPause,
    Scenario::RollingRestart,
    Scenario::DelayResetStorm,
    Scenario::LeaderOneWay,
    Scenario::MemberReplace,
    Scenario::EngineRestart,
    Scenario::Wan,
    Scenario::Mixed,
];

/// A kind of fault, as the history names it (`fault` of a nemesis event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 a server; restarted on its data dir at heal.
    Kill,
    /// SIGTERM a server (its graceful stop path); restarted at heal.
    Term,
    /// SIGSTOP a server; SIGCONT at heal.
    Stop,
    /// Every link into one server stops accepting: new connections wait in the backlog,
    /// open ones flow.
    PauseAccept,
    /// Server↔server links cut so that every server still reaches a majority, but not
    /// the same one: a bridge with 3 servers, a ring with more.
    Partition,
    /// One half of one agent's link to the leader held: its requests, or the answers.
    AgentOneWay,
    /// Every server↔server link touching the leader blackholed.
    LeaderIsolated,
    /// The links the leader dials to its followers blackholed.
    LeaderOneWay,
    /// Every agent's links to the leader blackholed.
    AgentsCut,
    /// SIGSTOP an agent running tasks.
    AgentStop,
    /// A follower removed, wiped, added back and promoted.
    MemberReplace,
    /// The Docker engine stopped under the agents.
    EngineStop,
    /// Delay with jitter on every link, resets of random links.
    DelayReset,
}

/// The mixed scenario's menu. None of them takes a majority of servers down.
pub const MENU: [FaultKind; 7] = [
    FaultKind::Kill,
    FaultKind::Term,
    FaultKind::Stop,
    FaultKind::PauseAccept,
    FaultKind::Partition,
    FaultKind::AgentOneWay,
    FaultKind::LeaderIsolated,
];

/// A mixed run is valid only if at least this many distinct kinds of fault happened per
/// this much of its duration (and at least [`MIN_MIXED_KINDS`], at most all of [`MENU`]).
/// A cycle (quiet 1.5–3.5 s, hold, heal, a leader agreed on) takes 6–10 s, and the deck
/// deals distinct kinds until the menu is used up, so this leaves room for slow cycles.
pub const MIXED_SECONDS_PER_KIND: u64 = 12;
pub const MIN_MIXED_KINDS: usize = 2;

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill-9",
            FaultKind::Term => "sigterm",
            FaultKind::Stop => "sigstop",
            FaultKind::PauseAccept => "pause-accept",
            FaultKind::Partition => "partition",
            FaultKind::AgentOneWay => "agent-one-way",
            FaultKind::LeaderIsolated => "leader-isolated",
            FaultKind::LeaderOneWay => "leader-one-way",
            FaultKind::AgentsCut => "agents-cut",
            FaultKind::AgentStop => "agent-sigstop",
            FaultKind::MemberReplace => "member-replace",
            FaultKind::EngineStop => "engine-stop",
            FaultKind::DelayReset => "delay-reset",
        }
    }

    /// How long the fault is held.
    pub fn hold(self, ttl: Duration, rng: &mut StdRng) -> Duration {
        let mut ms = |lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match self {
            // Past the election timeout (1 s), so the others elect a new leader; a killed
            // leader back sooner resumes its term (openraft restores a committed vote).
            FaultKind::Kill => ms(1_200, 2_500),
            FaultKind::EngineStop => ms(1_000, 3_000),
            FaultKind::MemberReplace => ms(500, 1_500),
            FaultKind::Stop => ms(2_000, 5_000),
            // Past the TTL, so leases granted or renewed across the fault must have run
            // out (or been renewed some other way) before it heals.
            FaultKind::LeaderIsolated
            | FaultKind::LeaderOneWay
            | FaultKind::AgentsCut
            | FaultKind::AgentStop
            | FaultKind::AgentOneWay
            | FaultKind::PauseAccept
            | FaultKind::Partition => ms(ttl_ms * 3 / 2, ttl_ms * 5 / 2),
            // Past the election timeout, so a stopped leader is replaced (a leader back
            // within it resumes its term: openraft restores a committed vote).
            FaultKind::Term => ms(1_500, 3_000),
            FaultKind::DelayReset => ms(3_000, 6_000),
        }
    }
}

/// The mixed scenario's dealer: [`MENU`] shuffled with the run's generator, one kind a
/// cycle, shuffled again once every kind has been dealt, so a short run sees distinct
/// kinds and a seed replays the same sequence.
#[derive(Default)]
pub struct Deck {
    left: Vec<FaultKind>,
}

impl Deck {
    pub fn draw(&mut self, rng: &mut StdRng) -> FaultKind {
        if self.left.is_empty() {
            self.left = MENU.to_vec();
            self.left.shuffle(rng);
        }
        self.left.pop().unwrap_or(FaultKind::Kill)
    }
}

impl Scenario {
    /// In `suite ci` (every scenario but the slow WAN one, which `suite long` runs).
    pub fn in_ci(self) -> bool {
        self != Scenario::Wan
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderKill => "leader-kill",
            Scenario::FollowerPause => "follower-pause",
            Scenario::LeaderIsolated => "leader-isolated",
            Scenario::AgentsCut => "agents-cut",
            Scenario::AgentPause => "agent-pause",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::DelayResetStorm => "delay-reset-storm",
            Scenario::LeaderOneWay => "leader-one-way",
            Scenario::MemberReplace => "member-replace",
            Scenario::EngineRestart => "engine-restart",
            Scenario::Wan => "wan",
            Scenario::Mixed => "mixed",
        }
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn about(self) -> &'static str {
        match self {
            Scenario::LeaderKill => "kill -9 the leader, restart it on its data dir",
            Scenario::FollowerPause => "SIGSTOP a follower, then SIGCONT",
            Scenario::LeaderIsolated => {
                "blackhole the leader's links to its followers; agents and clients still reach it"
            }
            Scenario::AgentsCut => "blackhole every agent's links to the leader",
            Scenario::AgentPause => "SIGSTOP an agent that runs tasks for twice the lease TTL",
            Scenario::RollingRestart => "SIGTERM and restart every server in turn",
            Scenario::DelayResetStorm => "delay with jitter on every link, and reset random links",
            Scenario::LeaderOneWay => "blackhole only the links the leader dials to its followers",
            Scenario::MemberReplace => "remove a follower, wipe its data, add it back empty and promote it",
            Scenario::EngineRestart => {
                "stop the Docker engine under running agents, start it again (needs DROVER_CHAOS_OWN_ENGINE=1)"
            }
            Scenario::Wan => "three regions 100 ms apart; kill -9 the leader",
            Scenario::Mixed => {
                "each cycle one of: kill -9, SIGTERM or SIGSTOP any server; pause accepts into one; \
                 bridge/ring partition; one half of an agent's link to the leader held; leader isolated"
            }
        }
    }

    /// A valid run must see the leader change.
    pub fn needs_leader_change(self) -> bool {
        matches!(
            self,
            Scenario::LeaderKill
                | Scenario::Wan
                | Scenario::LeaderIsolated
                | Scenario::LeaderOneWay
                | Scenario::RollingRestart
        )
    }

    /// The one fault the scenario injects; None for `mixed`, which deals from [`MENU`].
    pub fn fault(self) -> Option<FaultKind> {
        Some(match self {
            Scenario::LeaderKill | Scenario::Wan => FaultKind::Kill,
            Scenario::FollowerPause => FaultKind::Stop,
            Scenario::LeaderIsolated => FaultKind::LeaderIsolated,
            Scenario::AgentsCut => FaultKind::AgentsCut,
            Scenario::AgentPause => FaultKind::AgentStop,
            Scenario::RollingRestart => FaultKind::Term,
            Scenario::DelayResetStorm => FaultKind::DelayReset,
            Scenario::LeaderOneWay => FaultKind::LeaderOneWay,
            Scenario::MemberReplace => FaultKind::MemberReplace,
            Scenario::EngineRestart => FaultKind::EngineStop,
            Scenario::Mixed => return None,
        })
    }

    /// How long a fault of `kind` is held in this scenario.
    pub fn hold(self, kind: FaultKind, ttl: Duration, rng: &mut StdRng) -> Duration {
        match self {
            // The WAN cluster's election timeout is 1.5–3 s.
            Scenario::Wan => Duration::from_millis(rng.random_range(3_500..=5_000)),
            _ => kind.hold(ttl, rng),
        }
    }

    /// How many distinct kinds of fault a valid run of `duration` must have injected.
    pub fn min_kinds(self, duration: Duration) -> usize {
        match self {
            Scenario::Mixed => usize::try_from(duration.as_secs() / MIXED_SECONDS_PER_KIND)
                .unwrap_or(usize::MAX)
                .clamp(MIN_MIXED_KINDS, MENU.len()),
            _ => 1,
        }
    }

    /// Quiet time between faults.
    pub fn quiet(self, rng: &mut StdRng) -> Duration {
        Duration::from_millis(rng.random_range(1_500..=3_500))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_deck_deals_every_kind_once_before_any_again() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut deck = Deck::default();
        for _ in 0..3 {
            let mut dealt: Vec<FaultKind> = (0..MENU.len()).map(|_| deck.draw(&mut rng)).collect();
            dealt.sort();
            let mut menu = MENU.to_vec();
            menu.sort();
            assert_eq!(dealt, menu);
        }
    }

    #[test]
    fn mixed_runs_need_more_kinds_the_longer_they_are() {
        assert_eq!(Scenario::Mixed.min_kinds(Duration::from_secs(12)), MIN_MIXED_KINDS);
        assert_eq!(Scenario::Mixed.min_kinds(Duration::from_secs(30)), 2);
        assert_eq!(Scenario::Mixed.min_kinds(Duration::from_secs(60)), 5);
        assert_eq!(Scenario::Mixed.min_kinds(Duration::from_secs(600)), MENU.len());
        assert_eq!(Scenario::LeaderKill.min_kinds(Duration::from_secs(600)), 1);
        assert!(ALL.iter().all(|s| s.fault().is_some() || *s == Scenario::Mixed));
    }
}
