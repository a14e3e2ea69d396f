//! Registry logins at the API edge: the tenant's `RegistryLogin`/`RegistryLogout`/
//! `ListRegistryLogins`, and the credentials put into a grant. Passwords are sealed here
//! before they are proposed and opened here when a grant needs one (`crate::sealing`);
//! they are never logged, and never returned to the tenant.

use drover_proto::agent as pa;
use drover_proto::v1 as pv;

use super::ApiCtx;
use super::error::ApiError;
use crate::state::command::Command;
use crate::state::machine::StateMachine;
use crate::state::{Response as SmResponse, image_ref};

/// Longest password accepted.
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn key(ctx: &ApiCtx) -> Result<&crate::sealing::RegistryKey, ApiError> {
    ctx.registry_key.as_deref().ok_or_else(|| {
        ApiError::FailedPrecondition(
            "the servers hold no registry key (registry_key_file), so registry logins cannot be stored".into(),
        )
    })
}

fn check_registry(registry: &str) -> Result<(), ApiError> {
    if image_ref::is_registry(registry) {
        Ok(())
    } else {
        Err(ApiError::invalid("registry", format!("{registry:?} is not a registry host[:port]")))
    }
}

pub async fn login(
    ctx: &ApiCtx,
    tenant: String,
    r: pv::RegistryLoginRequest,
) -> Result<pv::RegistryLoginResponse, ApiError> {
    check_registry(&r.registry)?;
    if r.username.is_empty() {
        return Err(ApiError::invalid("username", "must not be empty"));
    }
    if r.password.is_empty() || r.password.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::invalid("password", format!("must be 1 to {MAX_PASSWORD_BYTES} bytes")));
    }
    let sealed = key(ctx)?.seal(&tenant, &r.registry, &r.password).map_err(|e| ApiError::Internal(e.to_string()))?;
    let cmd = Command::SetRegistryLogin { tenant, registry: r.registry, login: Some((r.username, sealed)) };
    answer(ctx.propose(cmd).await?)
}

pub async fn logout(ctx: &ApiCtx, tenant: String, registry: String) -> Result<pv::RegistryLoginResponse, ApiError> {
    check_registry(&registry)?;
    answer(ctx.propose(Command::SetRegistryLogin { tenant, registry, login: None }).await?)
}

fn answer(r: SmResponse) -> Result<pv::RegistryLoginResponse, ApiError> {
    match r {
        SmResponse::RegistryLogin { registry, saved } => Ok(pv::RegistryLoginResponse { registry, saved }),
        other => Err(ApiError::unexpected(other)),
    }
}

pub async fn list(ctx: &ApiCtx, tenant: &str) -> Result<pv::ListRegistryLoginsResponse, ApiError> {
    ctx.read_barrier().await?;
    let sm = ctx.node.sm.machine().map_err(ApiError::from)?;
    let logins = sm
        .registry_logins(tenant)
        .map(|l| pv::RegistryLoginInfo {
            registry: l.registry.clone(),
            username: l.username.clone(),
            updated_ms: l.updated_ms,
        })
        .collect();
    Ok(pv::ListRegistryLoginsResponse { logins })
}

/// The tenant's credentials for `image`'s registry, opened, if it has a login there.
pub fn auth_for(ctx: &ApiCtx, sm: &StateMachine, tenant: &str, image: &str) -> Option<pa::RegistryAuth> {
    let registry = image_ref::registry(image);
    let login = sm.registry_login(tenant, registry)?;
    let Some(key) = ctx.registry_key.as_deref() else {
        tracing::warn!(tenant, registry, "a registry login is stored but this server holds no registry key");
        return None;
    };
    match key.open(tenant, registry, &login.sealed_password) {
        Ok(password) => {
            Some(pa::RegistryAuth { server: registry.to_string(), username: login.username.clone(), password })
        }
        Err(e) => {
            tracing::warn!(tenant, registry, error = %e, "cannot open a registry login; the pull goes without it");
            None
        }
    }
}
