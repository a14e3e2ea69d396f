//! The fleet as the operator declares it: clusters (shared, or dedicated to one tenant) and
//! agent registrations (what an agent may serve). Placement trusts these, never what an
//! agent says of itself in a `Lease` call.
//!
//! * A tenant may place work (a task, a code's default, a schedule's task) on the shared
//!   fleet (no cluster), on a shared cluster, or on a cluster it owns: [`StateMachine::may_place`],
//!   checked when a code is registered, a schedule created and a task queued. Another
//!   tenant's cluster and a cluster that does not exist get the same answer, so names do
//!   not leak.
//! * A registered agent serves exactly its registration's cluster, region, VPC, IP pool
//!   and egress address; an unregistered one serves the shared fleet only (no cluster,
//!   VPC, pool or egress address; it may declare a region and labels). A lease request
//!   whose attributes break this is granted nothing ([`allowed`]); the API edge refuses it
//!   before it is proposed.
//! * An agent of a dedicated cluster is given only its owner's tasks, whatever the tasks'
//!   placement says ([`StateMachine::serves_only`]), so a cluster deleted and made again
//!   for another tenant never inherits the first owner's waiting work. IP pools and VPCs
//!   narrow it further ([`super::modes`]).
//!
//! Invariants: every registration's cluster exists (a cluster with registered agents
//! cannot be deleted); a cluster's owner never changes (delete it and create it again).
//!
//! * Resource ceilings: per cluster, and for the shared fleet, the most memory, CPU and
//!   pids one task may ask for. A code whose limits are over the ceiling of where it would
//!   run is refused when registered, and a task placed where its code's limits are over
//!   the ceiling is refused when queued ([`StateMachine::check_ceilings`]). Lowering a
//!   ceiling does not touch codes already registered.
//!
//! Rows: `n/` cluster name → [`Cluster`]; `e/` agent id → [`AgentRegistration`];
//! `m/shared_ceilings` → the shared fleet's [`Ceilings`] (absent: [`DEFAULT_CEILINGS`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::command::Response;
use super::error::StateError;
use super::keys;
use super::kv::{KvError, Txn};
use super::machine::{ApplyCtx, StateMachine};
use super::model::{AgentAttrs, CodeLimits, Placement};
use super::validate;

/// Most clusters and most registered agents the state holds.
pub const MAX_CLUSTERS: usize = 1_000;
pub const MAX_REGISTERED_AGENTS: usize = 100_000;

type Applied = Result<Result<Response, StateError>, KvError>;

/// The most one task may ask for; 0 in a field: no ceiling on it (beyond validation's
/// absolute bounds).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ceilings {
    pub max_memory_bytes: u64,
    pub max_cpu_millis: u32,
    pub max_pids: u32,
}

/// The shared fleet's and a new cluster's ceilings until the operator sets others:
/// 64 GiB, 64 CPUs, 32,768 pids.
pub const DEFAULT_CEILINGS: Ceilings =
    Ceilings { max_memory_bytes: 64 << 30, max_cpu_millis: 64_000, max_pids: 32_768 };

impl Default for Ceilings {
    fn default() -> Self {
        DEFAULT_CEILINGS
    }
}

pub const META_SHARED_CEILINGS: &[u8] = b"m/shared_ceilings";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    /// The tenant it is dedicated to; None for a shared cluster any tenant may place on.
    pub owner: Option<String>,
    /// Slots the owner is promised; `drover cluster list` compares it with the slots of
    /// the cluster's connected agents.
    pub guaranteed_slots: u32,
    pub ceilings: Ceilings,
    pub created_ms: u64,
}

/// What an agent may serve. Its labels, when any are registered, replace what the agent
/// declares; with none registered, the agent's own labels are used.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AgentRegistration {
    pub id: String,
    pub cluster: String,
    pub region: String,
    pub vpc: String,
    pub ip_pool: String,
    pub egress_ip: String,
    pub labels: BTreeMap<String, String>,
    pub registered_ms: u64,
}

impl AgentRegistration {
    /// The attributes placement matches for this agent, given what it declared.
    pub fn attrs(&self, declared: &AgentAttrs) -> AgentAttrs {
        AgentAttrs {
            cluster: self.cluster.clone(),
            region: self.region.clone(),
            vpc: self.vpc.clone(),
            ip_pool: self.ip_pool.clone(),
            egress_ip: self.egress_ip.clone(),
            labels: if self.labels.is_empty() { declared.labels.clone() } else { self.labels.clone() },
        }
    }
}

/// Whether an agent registered as `reg` (None: unregistered) may lease with `attrs`; the
/// error names the first attribute that breaks the rule.
pub fn allowed(reg: Option<&AgentRegistration>, attrs: &AgentAttrs) -> Result<(), String> {
    let fields = [
        ("cluster", &attrs.cluster),
        ("region", &attrs.region),
        ("vpc", &attrs.vpc),
        ("ip_pool", &attrs.ip_pool),
        ("egress_ip", &attrs.egress_ip),
    ];
    match reg {
        Some(r) => {
            let want = [&r.cluster, &r.region, &r.vpc, &r.ip_pool, &r.egress_ip];
            for ((field, got), want) in fields.iter().zip(want) {
                if *got != want {
                    return Err(format!("{field} {got:?} differs from its registration ({want:?})"));
                }
            }
            if !r.labels.is_empty() && attrs.labels != r.labels {
                return Err("labels differ from its registration".into());
            }
            Ok(())
        }
        None => {
            for (field, got) in fields.iter().filter(|(f, _)| *f != "region") {
                if !got.is_empty() {
                    return Err(format!(
                        "{field} {got:?} needs a registration; unregistered agents serve the shared fleet"
                    ));
                }
            }
            Ok(())
        }
    }
}

impl StateMachine {
    pub fn clusters(&self) -> &BTreeMap<String, Cluster> {
        &self.clusters
    }

    pub fn registrations(&self) -> &BTreeMap<String, AgentRegistration> {
        &self.registrations
    }

    /// Whether `tenant` may place work on `p.cluster`.
    pub fn may_place(&self, tenant: &str, p: &Placement) -> Result<(), StateError> {
        if p.cluster.is_empty() {
            return Ok(());
        }
        match self.clusters.get(&p.cluster) {
            Some(c) if c.owner.as_deref().is_none_or(|o| o == tenant) => Ok(()),
            _ => Err(StateError::ClusterNotAllowed { cluster: p.cluster.clone() }),
        }
    }

    /// The ceilings of `cluster` ("": the shared fleet).
    pub fn ceilings(&self, cluster: &str) -> Ceilings {
        match self.clusters.get(cluster) {
            Some(c) => c.ceilings,
            None => self.shared_ceilings,
        }
    }

    /// Refuses `limits` over the ceilings of `cluster`, naming the field and the ceiling.
    pub fn check_ceilings(&self, cluster: &str, limits: &CodeLimits) -> Result<(), StateError> {
        let c = self.ceilings(cluster);
        let place = if cluster.is_empty() { "the shared fleet".to_string() } else { format!("cluster {cluster:?}") };
        let over = |field: &str, got: u64, max: u64| {
            if max > 0 && got > max {
                return Err(StateError::invalid(field, format!("{got} is over {place}'s ceiling of {max}")));
            }
            Ok(())
        };
        over("limits.memory_bytes", limits.memory_bytes, c.max_memory_bytes)?;
        over("limits.cpu_millis", limits.cpu_millis.into(), c.max_cpu_millis.into())?;
        over("limits.pids", limits.pids.into(), c.max_pids.into())
    }

    pub(super) fn set_ceilings(&mut self, txn: &mut Txn<'_>, cluster: &str, ceilings: Ceilings) -> Applied {
        if let Err(e) = validate::ceilings(&ceilings) {
            return Ok(Err(e));
        }
        if cluster.is_empty() {
            txn.put(META_SHARED_CEILINGS.to_vec(), keys::encode(&ceilings));
            self.shared_ceilings = ceilings;
            return Ok(Ok(Response::Ceilings(ceilings)));
        }
        let Some(c) = self.clusters.get_mut(cluster) else {
            return Ok(Err(StateError::ClusterNotFound(cluster.to_string())));
        };
        c.ceilings = ceilings;
        txn.put(keys::cluster(cluster), keys::encode(&*c));
        Ok(Ok(Response::Ceilings(ceilings)))
    }

    /// The only tenant an agent in `cluster` serves, if the cluster is dedicated.
    pub fn serves_only(&self, cluster: &str) -> Option<&str> {
        self.clusters.get(cluster).and_then(|c| c.owner.as_deref())
    }

    pub(super) fn create_cluster(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        name: &str,
        owner: Option<&str>,
        guaranteed_slots: u32,
    ) -> Applied {
        if let Err(e) = validate::name("name", name) {
            return Ok(Err(e));
        }
        if let Some(o) = owner
            && !self.tenants.contains_key(o)
        {
            return Ok(Err(StateError::UnknownTenant(o.to_string())));
        }
        let (created_ms, ceilings) = match self.clusters.get(name) {
            Some(c) if c.owner.as_deref() != owner => {
                return Ok(Err(StateError::invalid(
                    "owner",
                    format!("cluster {name:?} exists with owner {:?}; delete it and create it again", c.owner),
                )));
            }
            Some(c) => (c.created_ms, c.ceilings),
            None if self.clusters.len() >= MAX_CLUSTERS => {
                return Ok(Err(StateError::invalid(
                    "name",
                    format!("the limit of {MAX_CLUSTERS} clusters is reached"),
                )));
            }
            None => (ctx.now_ms, DEFAULT_CEILINGS),
        };
        let owner = owner.map(String::from);
        let c = Cluster { name: name.to_string(), owner, guaranteed_slots, ceilings, created_ms };
        txn.put(keys::cluster(name), keys::encode(&c));
        self.clusters.insert(name.to_string(), c.clone());
        Ok(Ok(Response::Cluster(Box::new(c))))
    }

    pub(super) fn delete_cluster(&mut self, txn: &mut Txn<'_>, name: &str) -> Applied {
        if !self.clusters.contains_key(name) {
            return Ok(Err(StateError::ClusterNotFound(name.to_string())));
        }
        let agents = self.registrations.values().filter(|r| r.cluster == name).count();
        if agents > 0 {
            return Ok(Err(StateError::invalid(
                "name",
                format!("cluster {name:?} has {agents} registered agents; deregister them first"),
            )));
        }
        self.clusters.remove(name);
        txn.delete(keys::cluster(name));
        Ok(Ok(Response::ClusterDeleted))
    }

    pub(super) fn register_agent(&mut self, txn: &mut Txn<'_>, ctx: ApplyCtx, reg: &AgentRegistration) -> Applied {
        let attrs = AgentAttrs {
            cluster: reg.cluster.clone(),
            region: reg.region.clone(),
            vpc: reg.vpc.clone(),
            ip_pool: reg.ip_pool.clone(),
            egress_ip: reg.egress_ip.clone(),
            labels: reg.labels.clone(),
        };
        if let Err(e) = validate::name("id", &reg.id).and_then(|_| validate::agent_attrs("registration", &attrs)) {
            return Ok(Err(e));
        }
        if !reg.cluster.is_empty() && !self.clusters.contains_key(&reg.cluster) {
            return Ok(Err(StateError::ClusterNotFound(reg.cluster.clone())));
        }
        if let Err(e) = self.check_registration_modes(&reg.ip_pool, &reg.egress_ip, &reg.vpc) {
            return Ok(Err(e));
        }
        if !self.registrations.contains_key(&reg.id) && self.registrations.len() >= MAX_REGISTERED_AGENTS {
            return Ok(Err(StateError::invalid(
                "id",
                format!("the limit of {MAX_REGISTERED_AGENTS} registered agents is reached"),
            )));
        }
        let r = AgentRegistration { registered_ms: ctx.now_ms, ..reg.clone() };
        txn.put(keys::registration(&r.id), keys::encode(&r));
        self.registrations.insert(r.id.clone(), r.clone());
        Ok(Ok(Response::Registration(Box::new(r))))
    }

    pub(super) fn deregister_agent(&mut self, txn: &mut Txn<'_>, id: &str) -> Applied {
        if self.registrations.remove(id).is_none() {
            return Ok(Err(StateError::AgentNotRegistered(id.to_string())));
        }
        txn.delete(keys::registration(id));
        Ok(Ok(Response::Deregistered))
    }
}
