//! Tenant modes and IP pools: which agents may run a tenant's tasks beyond what its
//! placement asks for.
//!
//! * **shared** (the default): plain agents only (no IP pool, no VPC), on the shared fleet
//!   or a cluster the tenant may place on.
//! * **ip_whitelist**: only agents registered with the tenant's pool. Such an agent runs
//!   its tasks on a network whose outbound connections leave from its egress address, one
//!   of the pool's, so the tenant's own firewalls can admit the pool's addresses and
//!   nothing else. Never on a plain agent: the task would leave from an address the
//!   firewall refuses.
//! * **vpc**: only agents registered with the tenant's VPC (runners inside the tenant's
//!   own network, attaching task containers to it), and plain agents too when the tenant
//!   allows `fallback`.
//!
//! From the agent's side ([`StateMachine::serves`]): an agent with a pool runs only the
//! tasks of the tenant whose pool it is, an agent with a VPC only those of the tenant
//! whose VPC it is, and a plain agent the tasks of tenants in shared mode and of VPC
//! tenants that allow fallback. A dedicated cluster's owner rule applies on top.
//!
//! Invariants: a pool is used by at most one tenant, and a VPC name by at most one
//! tenant (a firewall that admits a pool's addresses admits that tenant alone); every
//! mode's pool exists; every registration's pool exists and holds its egress address; an
//! agent is registered with a pool or a VPC, not both; a pool a tenant or a registration
//! names cannot be deleted. A tenant whose mode changes keeps its queued tasks: they
//! wait for agents of the new mode.
//!
//! Rows: `o/` pool name → [`IpPool`]; `q/` tenant → [`TenantMode`] (absent: shared).
//! Kept in rows of their own so the tenant record's encoding is unchanged.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::command::Response;
use super::error::StateError;
use super::keys;
use super::kv::{KvError, Txn};
use super::machine::{ApplyCtx, StateMachine};
use super::model::AgentAttrs;
use super::validate;

type Applied = Result<Result<Response, StateError>, KvError>;

/// Most pools, and most addresses in one pool.
pub const MAX_POOLS: usize = 1_000;
pub const MAX_POOL_ADDRESSES: usize = 256;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub enum TenantMode {
    #[default]
    Shared,
    IpWhitelist {
        pool: String,
    },
    Vpc {
        vpc: String,
        /// Whether plain (shared-fleet) agents may run the tenant's tasks too.
        fallback: bool,
    },
}

impl TenantMode {
    pub fn name(&self) -> &'static str {
        match self {
            TenantMode::Shared => "shared",
            TenantMode::IpWhitelist { .. } => "ip_whitelist",
            TenantMode::Vpc { .. } => "vpc",
        }
    }

    /// Whether an agent with these (registered) attributes may run this mode's tasks.
    pub fn admits(&self, agent: &AgentAttrs) -> bool {
        let plain = agent.ip_pool.is_empty() && agent.vpc.is_empty();
        match self {
            TenantMode::Shared => plain,
            TenantMode::IpWhitelist { pool } => agent.ip_pool == *pool,
            TenantMode::Vpc { vpc, fallback } => agent.vpc == *vpc || (*fallback && plain),
        }
    }

    /// The constraint an agent must meet, for "why is it waiting" answers.
    pub fn constraint(&self) -> String {
        match self {
            TenantMode::Shared => "a shared-fleet agent (no IP pool, no VPC)".into(),
            TenantMode::IpWhitelist { pool } => format!("ip_pool={pool}"),
            TenantMode::Vpc { vpc, fallback: false } => format!("vpc={vpc}"),
            TenantMode::Vpc { vpc, fallback: true } => format!("vpc={vpc} or a shared-fleet agent"),
        }
    }
}

/// A set of egress addresses; agents registered with the pool each send their tasks'
/// traffic from one of them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IpPool {
    pub name: String,
    /// IPv4 addresses, sorted, no duplicates.
    pub addresses: Vec<String>,
    pub created_ms: u64,
}

/// Which tenants' tasks one agent may run (see the module doc).
#[derive(Clone, Copy, Debug)]
pub struct Serves<'a> {
    /// Only this tenant's: the owner of the agent's dedicated cluster, or the tenant of
    /// its pool or VPC. `Some(None)`: nobody's (a pool or VPC no tenant uses, or one whose
    /// tenant does not own the agent's dedicated cluster).
    only: Option<Option<&'a str>>,
    /// Set for plain agents: tenants whose mode is not shared (the others are).
    modes: Option<&'a BTreeMap<String, TenantMode>>,
    agent_plain: bool,
}

impl<'a> Serves<'a> {
    /// Whether the agent may run `tenant`'s tasks.
    pub fn tenant(&self, tenant: &str) -> bool {
        if let Some(only) = self.only
            && only != Some(tenant)
        {
            return false;
        }
        match self.modes.and_then(|m| m.get(tenant)) {
            None => true,
            Some(mode) => {
                self.agent_plain && matches!(mode, TenantMode::Shared | TenantMode::Vpc { fallback: true, .. })
            }
        }
    }
}

/// A pool's addresses: IPv4, at most [`MAX_POOL_ADDRESSES`], returned sorted without
/// duplicates.
pub fn pool_addresses(field: &str, addrs: &[String]) -> Result<Vec<String>, StateError> {
    if addrs.is_empty() {
        return Err(StateError::invalid(field, "a pool needs at least one address"));
    }
    if addrs.len() > MAX_POOL_ADDRESSES {
        return Err(StateError::invalid(
            field,
            format!("{} addresses is over the limit of {MAX_POOL_ADDRESSES}", addrs.len()),
        ));
    }
    let mut out = Vec::with_capacity(addrs.len());
    for a in addrs {
        let ip: Ipv4Addr =
            a.parse().map_err(|_| StateError::invalid(field, format!("{a:?} is not an IPv4 address")))?;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(StateError::invalid(field, format!("{a} cannot be an egress address")));
        }
        out.push(ip.to_string());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

impl StateMachine {
    pub fn pools(&self) -> &BTreeMap<String, IpPool> {
        &self.pools
    }

    /// Tenants whose mode is not shared.
    pub fn tenant_modes(&self) -> &BTreeMap<String, TenantMode> {
        &self.tenant_modes
    }

    pub fn tenant_mode(&self, tenant: &str) -> &TenantMode {
        static SHARED: TenantMode = TenantMode::Shared;
        self.tenant_modes.get(tenant).unwrap_or(&SHARED)
    }

    /// The tenant whose mode uses `pool`, if any.
    pub fn pool_tenant(&self, pool: &str) -> Option<&str> {
        self.tenant_modes.iter().find_map(|(t, m)| match m {
            TenantMode::IpWhitelist { pool: p } if p == pool => Some(t.as_str()),
            _ => None,
        })
    }

    /// The tenant whose mode uses VPC `vpc`, if any.
    pub fn vpc_tenant(&self, vpc: &str) -> Option<&str> {
        self.tenant_modes.iter().find_map(|(t, m)| match m {
            TenantMode::Vpc { vpc: v, .. } if v == vpc => Some(t.as_str()),
            _ => None,
        })
    }

    /// Which tenants an agent with these (registered) attributes may run tasks for.
    pub fn serves<'a>(&'a self, agent: &AgentAttrs) -> Serves<'a> {
        let owner = self.serves_only(&agent.cluster);
        let bound = if !agent.ip_pool.is_empty() {
            Some(self.pool_tenant(&agent.ip_pool))
        } else if !agent.vpc.is_empty() {
            Some(self.vpc_tenant(&agent.vpc))
        } else {
            None
        };
        let only = match (owner, bound) {
            (None, None) => None,
            (Some(o), None) => Some(Some(o)),
            (None, Some(b)) => Some(b),
            (Some(o), Some(b)) => Some(b.filter(|b| *b == o)),
        };
        let plain = bound.is_none();
        Serves { only, modes: plain.then_some(&self.tenant_modes), agent_plain: plain }
    }

    pub(super) fn create_pool(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        name: &str,
        addresses: &[String],
    ) -> Applied {
        if let Err(e) = validate::name("name", name) {
            return Ok(Err(e));
        }
        let addresses = match pool_addresses("addresses", addresses) {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        let created_ms = match self.pools.get(name) {
            Some(p) => {
                // Taking an address away from a registered agent would strand it.
                if let Some(r) =
                    self.registrations.values().find(|r| r.ip_pool == name && !addresses.contains(&r.egress_ip))
                {
                    return Ok(Err(StateError::invalid(
                        "addresses",
                        format!("agent {:?} is registered with egress address {} of this pool", r.id, r.egress_ip),
                    )));
                }
                p.created_ms
            }
            None if self.pools.len() >= MAX_POOLS => {
                return Ok(Err(StateError::invalid("name", format!("the limit of {MAX_POOLS} pools is reached"))));
            }
            None => ctx.now_ms,
        };
        let p = IpPool { name: name.to_string(), addresses, created_ms };
        txn.put(keys::pool(name), keys::encode(&p));
        self.pools.insert(name.to_string(), p.clone());
        Ok(Ok(Response::Pool(Box::new(p))))
    }

    pub(super) fn delete_pool(&mut self, txn: &mut Txn<'_>, name: &str) -> Applied {
        if !self.pools.contains_key(name) {
            return Ok(Err(StateError::PoolNotFound(name.to_string())));
        }
        if let Some(t) = self.pool_tenant(name) {
            return Ok(Err(StateError::invalid(
                "name",
                format!("tenant {t:?} is in ip_whitelist mode with pool {name:?}; change its mode first"),
            )));
        }
        let agents = self.registrations.values().filter(|r| r.ip_pool == name).count();
        if agents > 0 {
            return Ok(Err(StateError::invalid(
                "name",
                format!("pool {name:?} has {agents} registered agents; deregister them first"),
            )));
        }
        self.pools.remove(name);
        txn.delete(keys::pool(name));
        Ok(Ok(Response::PoolDeleted))
    }

    pub(super) fn set_tenant_mode(&mut self, txn: &mut Txn<'_>, tenant: &str, mode: &TenantMode) -> Applied {
        if !self.tenants.contains_key(tenant) {
            return Ok(Err(StateError::UnknownTenant(tenant.to_string())));
        }
        match mode {
            TenantMode::Shared => {}
            TenantMode::IpWhitelist { pool } => {
                if !self.pools.contains_key(pool) {
                    return Ok(Err(StateError::PoolNotFound(pool.clone())));
                }
                if let Some(t) = self.pool_tenant(pool).filter(|t| *t != tenant) {
                    return Ok(Err(StateError::invalid("pool", format!("pool {pool:?} is tenant {t:?}'s"))));
                }
            }
            TenantMode::Vpc { vpc, .. } => {
                if let Err(e) = validate::name("vpc", vpc) {
                    return Ok(Err(e));
                }
                if let Some(t) = self.vpc_tenant(vpc).filter(|t| *t != tenant) {
                    return Ok(Err(StateError::invalid("vpc", format!("VPC {vpc:?} is tenant {t:?}'s"))));
                }
            }
        }
        if *mode == TenantMode::Shared {
            self.tenant_modes.remove(tenant);
            txn.delete(keys::tenant_mode(tenant));
        } else {
            self.tenant_modes.insert(tenant.to_string(), mode.clone());
            txn.put(keys::tenant_mode(tenant), keys::encode(mode));
        }
        Ok(Ok(Response::TenantMode(mode.clone())))
    }

    /// The pool and VPC rules of a registration (see the module doc).
    pub(super) fn check_registration_modes(&self, pool: &str, egress_ip: &str, vpc: &str) -> Result<(), StateError> {
        if !pool.is_empty() && !vpc.is_empty() {
            return Err(StateError::invalid("ip_pool", "an agent serves an IP pool or a VPC, not both"));
        }
        if pool.is_empty() {
            if !egress_ip.is_empty() {
                return Err(StateError::invalid("egress_ip", "is only for an agent registered with an IP pool"));
            }
        } else {
            let Some(p) = self.pools.get(pool) else {
                return Err(StateError::PoolNotFound(pool.to_string()));
            };
            if !p.addresses.iter().any(|a| a == egress_ip) {
                return Err(StateError::invalid(
                    "egress_ip",
                    format!("{egress_ip:?} is not one of pool {pool:?}'s addresses ({})", p.addresses.join(", ")),
                ));
            }
        }
        if !vpc.is_empty() && self.vpc_tenant(vpc).is_none() {
            return Err(StateError::invalid(
                "vpc",
                format!("no tenant is in vpc mode with VPC {vpc:?}; set the tenant's mode first"),
            ));
        }
        Ok(())
    }
}
