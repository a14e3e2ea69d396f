//! IP pools and tenant modes at the API edge: `drover.admin.v1` create/list/delete pool
//! and set a tenant's mode, and the tenant's own `ListPoolIps`. The rules live in
//! `state::modes`; this converts and reads.

use drover_proto::admin as pa;
use drover_proto::v1 as pv;

use super::ApiCtx;
use super::error::ApiError;
use crate::state::command::Command;
use crate::state::machine::StateMachine;
use crate::state::modes::{IpPool, TenantMode};
use crate::state::{Response as SmResponse, validate};

pub fn mode_out(m: &TenantMode) -> pa::TenantMode {
    match m {
        TenantMode::Shared => pa::TenantMode::default(),
        TenantMode::IpWhitelist { pool } => {
            pa::TenantMode { kind: pa::TenantModeKind::IpWhitelist.into(), pool: pool.clone(), ..Default::default() }
        }
        TenantMode::Vpc { vpc, fallback } => pa::TenantMode {
            kind: pa::TenantModeKind::Vpc.into(),
            vpc: vpc.clone(),
            fallback: *fallback,
            ..Default::default()
        },
    }
}

/// The request's mode; fields that do not belong to its kind must be empty.
fn mode_in(m: pa::TenantMode) -> Result<TenantMode, ApiError> {
    let kind = pa::TenantModeKind::try_from(m.kind)
        .map_err(|_| ApiError::invalid("mode.kind", format!("{} is not a tenant mode", m.kind)))?;
    let stray = |field: &str, set: bool| {
        if set { Err(ApiError::invalid(field, "does not apply to this mode")) } else { Ok(()) }
    };
    match kind {
        pa::TenantModeKind::Shared => {
            stray("mode.pool", !m.pool.is_empty())?;
            stray("mode.vpc", !m.vpc.is_empty() || m.fallback)?;
            Ok(TenantMode::Shared)
        }
        pa::TenantModeKind::IpWhitelist => {
            stray("mode.vpc", !m.vpc.is_empty() || m.fallback)?;
            validate::name("mode.pool", &m.pool).map_err(ApiError::from)?;
            Ok(TenantMode::IpWhitelist { pool: m.pool })
        }
        pa::TenantModeKind::Vpc => {
            stray("mode.pool", !m.pool.is_empty())?;
            validate::name("mode.vpc", &m.vpc).map_err(ApiError::from)?;
            Ok(TenantMode::Vpc { vpc: m.vpc, fallback: m.fallback })
        }
    }
}

/// Each address of `p` with the registered agents sending from it and whether one of
/// them is connected now.
fn addresses(sm: &StateMachine, p: &IpPool) -> Vec<pa::PoolAddress> {
    p.addresses
        .iter()
        .map(|a| {
            let agents: Vec<String> = sm
                .registrations()
                .values()
                .filter(|r| r.ip_pool == p.name && r.egress_ip == *a)
                .map(|r| r.id.clone())
                .collect();
            let live = agents.iter().any(|id| sm.agents().contains_key(id) && !sm.agents_gone().contains_key(id));
            pa::PoolAddress { address: a.clone(), agents, live }
        })
        .collect()
}

fn pool_out(sm: &StateMachine, p: &IpPool) -> pa::PoolInfo {
    pa::PoolInfo {
        name: p.name.clone(),
        addresses: addresses(sm, p),
        tenant: sm.pool_tenant(&p.name).unwrap_or_default().to_string(),
        created_ms: p.created_ms,
    }
}

pub async fn create_pool(ctx: &ApiCtx, r: pa::CreatePoolRequest) -> Result<pa::PoolInfo, ApiError> {
    validate::name("name", &r.name).map_err(ApiError::from)?;
    crate::state::modes::pool_addresses("addresses", &r.addresses).map_err(ApiError::from)?;
    match ctx.propose(Command::CreatePool { name: r.name, addresses: r.addresses }).await? {
        SmResponse::Pool(p) => {
            let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
            Ok(pool_out(&sm, &p))
        }
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn list_pools(ctx: &ApiCtx) -> Result<pa::ListPoolsResponse, ApiError> {
    ctx.read_barrier().await?;
    let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
    Ok(pa::ListPoolsResponse { pools: sm.pools().values().map(|p| pool_out(&sm, p)).collect() })
}

pub async fn delete_pool(ctx: &ApiCtx, name: String) -> Result<pa::DeletePoolResponse, ApiError> {
    match ctx.propose(Command::DeletePool { name }).await? {
        SmResponse::PoolDeleted => Ok(pa::DeletePoolResponse {}),
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn set_tenant_mode(ctx: &ApiCtx, r: pa::SetTenantModeRequest) -> Result<pa::TenantMode, ApiError> {
    validate::name("tenant", &r.tenant).map_err(ApiError::from)?;
    let mode = mode_in(r.mode.unwrap_or_default())?;
    match ctx.propose(Command::SetTenantMode { tenant: r.tenant, mode }).await? {
        SmResponse::TenantMode(m) => Ok(mode_out(&m)),
        other => Err(ApiError::unexpected(other)),
    }
}

/// The caller's pool addresses; only for a tenant in ip_whitelist mode.
pub async fn list_pool_ips(ctx: &ApiCtx, tenant: &str) -> Result<pv::ListPoolIpsResponse, ApiError> {
    ctx.read_barrier().await?;
    let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
    let TenantMode::IpWhitelist { pool } = sm.tenant_mode(tenant) else {
        return Err(ApiError::FailedPrecondition(format!(
            "tenant {tenant:?} is in {} mode; only an ip_whitelist tenant has pool addresses",
            sm.tenant_mode(tenant).name()
        )));
    };
    let p = sm.pools().get(pool).ok_or_else(|| ApiError::Internal(format!("pool {pool:?} of the mode is missing")))?;
    let addresses = addresses(&sm, p).into_iter().map(|a| pv::PoolIp { address: a.address, live: a.live }).collect();
    Ok(pv::ListPoolIpsResponse { pool: pool.clone(), addresses })
}
