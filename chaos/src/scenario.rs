//! Scenarios: which faults the nemesis injects, and what makes a run of them valid.
//!
//! A nemesis schedule alternates quiet, fault and heal, with every duration drawn from a
//! seeded generator, so a seed replays the same schedule. Safety scenarios never take a
//! majority of servers down: at most one server is killed, paused or cut off at a time.

use std::time::Duration;

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
}

pub const ALL: [Scenario; 11] = [
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
];

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

    /// How long the fault is held.
    pub fn hold(self, ttl: Duration, rng: &mut StdRng) -> Duration {
        let mut ms = |lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        match self {
            // Past the election timeout (1 s), so the others elect a new leader; a killed
            // leader back sooner resumes its term (openraft restores a committed vote).
            Scenario::LeaderKill => ms(1_200, 2_500),
            // The WAN cluster's election timeout is 1.5–3 s.
            Scenario::Wan => ms(3_500, 5_000),
            Scenario::EngineRestart => ms(1_000, 3_000),
            Scenario::MemberReplace => ms(500, 1_500),
            Scenario::FollowerPause => ms(2_000, 5_000),
            // Past the TTL, so leases the isolated leader granted must have run out.
            Scenario::LeaderIsolated | Scenario::LeaderOneWay | Scenario::AgentsCut | Scenario::AgentPause => {
                ms(ttl_ms * 3 / 2, ttl_ms * 5 / 2)
            }
            // Past the election timeout, so a stopped leader is replaced (a leader back
            // within it resumes its term: openraft restores a committed vote).
            Scenario::RollingRestart => ms(1_500, 3_000),
            Scenario::DelayResetStorm => ms(3_000, 6_000),
        }
    }

    /// Quiet time between faults.
    pub fn quiet(self, rng: &mut StdRng) -> Duration {
        Duration::from_millis(rng.random_range(1_500..=3_500))
    }
}
