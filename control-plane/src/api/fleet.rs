//! The operator's fleet calls of `drover.admin.v1`: agents (listing, registration) and
//! clusters. Requests are validated here; every rule that decides what an agent may serve
//! lives in `state::fleet`, applied through the log.

use std::collections::{BTreeMap, BTreeSet};

use drover_proto::admin as pa;

use super::ApiCtx;
use super::error::ApiError;
use crate::state::command::Command;
use crate::state::fleet::{AgentRegistration, Ceilings, Cluster};
use crate::state::{Response as SmResponse, validate};

fn registration_out(r: &AgentRegistration) -> pa::AgentRegistration {
    pa::AgentRegistration {
        id: r.id.clone(),
        cluster: r.cluster.clone(),
        region: r.region.clone(),
        vpc: r.vpc.clone(),
        ip_pool: r.ip_pool.clone(),
        egress_ip: r.egress_ip.clone(),
        labels: r.labels.clone().into_iter().collect(),
        registered_ms: r.registered_ms,
    }
}

fn cluster_out(c: &Cluster, registered_agents: u32, connected_slots: u32) -> pa::ClusterInfo {
    pa::ClusterInfo {
        name: c.name.clone(),
        owner: c.owner.clone().unwrap_or_default(),
        guaranteed_slots: c.guaranteed_slots,
        created_ms: c.created_ms,
        registered_agents,
        connected_slots,
        ceilings: Some(ceilings_out(c.ceilings)),
    }
}

fn ceilings_out(c: Ceilings) -> pa::Ceilings {
    pa::Ceilings { max_memory_bytes: c.max_memory_bytes, max_cpu_millis: c.max_cpu_millis, max_pids: c.max_pids }
}

pub async fn set_ceilings(ctx: &ApiCtx, r: pa::SetCeilingsRequest) -> Result<pa::Ceilings, ApiError> {
    let c = r.ceilings.ok_or_else(|| ApiError::invalid("ceilings", "is required"))?;
    let ceilings =
        Ceilings { max_memory_bytes: c.max_memory_bytes, max_cpu_millis: c.max_cpu_millis, max_pids: c.max_pids };
    validate::ceilings(&ceilings).map_err(ApiError::from)?;
    match ctx.propose(Command::SetCeilings { cluster: r.cluster, ceilings }).await? {
        SmResponse::Ceilings(c) => Ok(ceilings_out(c)),
        other => Err(ApiError::unexpected(other)),
    }
}

/// Every agent seen or registered: what it last leased with, whether it is connected,
/// its registration, and the tasks it runs now.
pub async fn list_agents(ctx: &ApiCtx) -> Result<pa::ListAgentsResponse, ApiError> {
    ctx.read_barrier().await?;
    let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
    let mut running: BTreeMap<&str, u32> = BTreeMap::new();
    for r in sm.indexes().running.values() {
        *running.entry(r.agent_id.as_str()).or_default() += 1;
    }
    let ids: BTreeSet<&String> = sm.agents().keys().chain(sm.registrations().keys()).collect();
    let agents = ids
        .into_iter()
        .map(|id| {
            let reg = sm.registrations().get(id);
            let mut out = pa::AgentInfo {
                id: id.clone(),
                running_tasks: running.get(id.as_str()).copied().unwrap_or(0),
                connected: sm.agents().contains_key(id) && !sm.agents_gone().contains_key(id),
                gone_since_ms: sm.agents_gone().get(id).copied().unwrap_or(0),
                registration: reg.map(registration_out),
                ..Default::default()
            };
            if let Some(a) = sm.agents().get(id) {
                out.region = a.attrs.region.clone();
                out.cluster = a.attrs.cluster.clone();
                out.vpc = a.attrs.vpc.clone();
                out.ip_pool = a.attrs.ip_pool.clone();
                out.egress_ip = a.attrs.egress_ip.clone();
                out.labels = a.attrs.labels.clone().into_iter().collect();
                out.slots = a.slots;
                out.first_seen_ms = a.first_seen_ms;
                out.updated_ms = a.updated_ms;
            }
            out
        })
        .collect();
    Ok(pa::ListAgentsResponse { agents })
}

pub async fn register_agent(ctx: &ApiCtx, r: pa::RegisterAgentRequest) -> Result<pa::AgentRegistration, ApiError> {
    let r = r.registration.ok_or_else(|| ApiError::invalid("registration", "is required"))?;
    validate::name("registration.id", &r.id).map_err(ApiError::from)?;
    let registration = AgentRegistration {
        id: r.id,
        cluster: r.cluster,
        region: r.region,
        vpc: r.vpc,
        ip_pool: r.ip_pool,
        egress_ip: r.egress_ip,
        labels: r.labels.into_iter().collect(),
        registered_ms: 0,
    };
    match ctx.propose(Command::RegisterAgent { registration }).await? {
        SmResponse::Registration(r) => Ok(registration_out(&r)),
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn deregister_agent(ctx: &ApiCtx, id: String) -> Result<pa::DeregisterAgentResponse, ApiError> {
    match ctx.propose(Command::DeregisterAgent { id }).await? {
        SmResponse::Deregistered => Ok(pa::DeregisterAgentResponse {}),
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn create_cluster(ctx: &ApiCtx, r: pa::CreateClusterRequest) -> Result<pa::ClusterInfo, ApiError> {
    validate::name("name", &r.name).map_err(ApiError::from)?;
    let owner = Some(r.owner).filter(|o| !o.is_empty());
    let cmd = Command::CreateCluster { name: r.name, owner, guaranteed_slots: r.guaranteed_slots };
    match ctx.propose(cmd).await? {
        SmResponse::Cluster(c) => Ok(cluster_out(&c, 0, 0)),
        other => Err(ApiError::unexpected(other)),
    }
}

/// Every cluster with its registered agents and the slots of those connected now.
pub async fn list_clusters(ctx: &ApiCtx) -> Result<pa::ListClustersResponse, ApiError> {
    ctx.read_barrier().await?;
    let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
    let clusters = sm
        .clusters()
        .values()
        .map(|c| {
            let regs = sm.registrations().values().filter(|r| r.cluster == c.name);
            let registered = regs.clone().count() as u32;
            let slots = regs
                .filter(|r| !sm.agents_gone().contains_key(&r.id))
                .filter_map(|r| sm.agents().get(&r.id))
                .map(|a| a.slots)
                .sum();
            cluster_out(c, registered, slots)
        })
        .collect();
    Ok(pa::ListClustersResponse { clusters, shared_ceilings: Some(ceilings_out(sm.ceilings(""))) })
}

pub async fn delete_cluster(ctx: &ApiCtx, name: String) -> Result<pa::DeleteClusterResponse, ApiError> {
    match ctx.propose(Command::DeleteCluster { name }).await? {
        SmResponse::ClusterDeleted => Ok(pa::DeleteClusterResponse {}),
        other => Err(ApiError::unexpected(other)),
    }
}
