//! Agent presence in replicated state: which known agents the leader has stopped hearing
//! from. It is what "no connected agent matches its placement" is judged against, on every
//! replica alike (a follower answering `GetTask` has no connections of its own to go by).
//!
//! Presence changes only on a transition, never per heartbeat: the leader's tracker
//! (`crate::leader::presence`) proposes [`Command::AgentPresence`] naming the agents that
//! went quiet past the grace and the ones heard from again. An agent gone is a row of its
//! own (`d/`, agent id → [`AgentGone`]) beside its `a/` record, so the record's encoding is
//! unchanged and an agent with no `d/` row is connected: agents known before presence
//! existed count as connected until a leader has had a grace period to hear from them.
//!
//! Invariants: every gone row names a known agent; a `Lease` from an agent clears its
//! gone row in the same apply (a grant proves the agent was there); the command carries its
//! proposer's term and is refused from a deposed leader, like the other timer commands.
//!
//! [`Command::AgentPresence`]: super::command::Command::AgentPresence

use serde::{Deserialize, Serialize};

use super::command::Response;
use super::error::StateError;
use super::keys;
use super::kv::{KvError, Txn};
use super::machine::{ApplyCtx, StateMachine};
use super::model::{AgentAttrs, AgentRecord};
use super::validate;

/// Most agents one presence command may name, in each list.
pub const MAX_PRESENCE_CHANGES: usize = 10_000;

/// An agent the leader has not heard from within the presence grace, since `since_ms`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AgentGone {
    pub id: String,
    pub since_ms: u64,
}

/// An agent the leader heard from, as it described itself in its last lease call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SeenAgent {
    pub id: String,
    pub attrs: AgentAttrs,
    pub slots: u32,
}

impl StateMachine {
    /// Marks `gone` agents disconnected (known agents not already marked; others are
    /// skipped), and records every `seen` agent and clears its mark. Refused whole when a
    /// list is over [`MAX_PRESENCE_CHANGES`] or an agent's attributes are invalid.
    pub(super) fn agent_presence(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        gone: &[String],
        seen: &[SeenAgent],
    ) -> Result<Result<Response, StateError>, KvError> {
        for (field, len) in [("gone", gone.len()), ("seen", seen.len())] {
            if len > MAX_PRESENCE_CHANGES {
                return Ok(Err(StateError::invalid(
                    field,
                    format!("{len} agents is over the limit of {MAX_PRESENCE_CHANGES}"),
                )));
            }
        }
        for (i, a) in seen.iter().enumerate() {
            if let Err(e) = validate::agent_attrs(&format!("seen[{i}].attrs"), &a.attrs) {
                return Ok(Err(e));
            }
        }
        let mut marked = 0u32;
        for id in gone {
            if !self.agents.contains_key(id) || self.agents_gone.contains_key(id) {
                continue;
            }
            let row = AgentGone { id: id.clone(), since_ms: ctx.now_ms };
            txn.put(keys::agent_gone(id), keys::encode(&row));
            self.agents_gone.insert(id.clone(), ctx.now_ms);
            marked += 1;
        }
        for a in seen {
            self.record_agent(txn, ctx, &a.id, &a.attrs, a.slots);
        }
        Ok(Ok(Response::Presence { gone: marked, seen: seen.len() as u32 }))
    }

    /// Records that agent `id` was heard from with these attributes: its record is written
    /// when new or changed, and its gone mark cleared.
    pub(super) fn record_agent(&mut self, txn: &mut Txn<'_>, ctx: ApplyCtx, id: &str, attrs: &AgentAttrs, slots: u32) {
        if self.agents_gone.remove(id).is_some() {
            txn.delete(keys::agent_gone(id));
        }
        let first_seen_ms = match self.agents.get(id) {
            Some(a) if a.attrs == *attrs && a.slots == slots => return,
            Some(a) => a.first_seen_ms,
            None => ctx.now_ms,
        };
        let rec =
            AgentRecord { id: id.to_string(), attrs: attrs.clone(), slots, first_seen_ms, updated_ms: ctx.now_ms };
        txn.put(keys::agent(id), keys::encode(&rec));
        self.agents.insert(rec.id.clone(), rec);
    }

    /// Known agents the leader last heard from within the grace (every agent without a
    /// gone mark).
    pub fn connected_agents(&self) -> impl Iterator<Item = &AgentRecord> {
        self.agents.values().filter(|a| !self.agents_gone.contains_key(&a.id))
    }

    /// Agents marked gone, with the time they were.
    pub fn agents_gone(&self) -> &std::collections::BTreeMap<String, u64> {
        &self.agents_gone
    }
}
