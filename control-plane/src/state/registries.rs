//! Per-tenant registry logins: the username and the sealed password (see
//! `crate::sealing`) a tenant's tasks pull its private images with. The state machine
//! never sees a password in the clear: it stores and replicates what the API edge sealed,
//! and hands it back only to the leader building a grant.
//!
//! Invariants: at most [`MAX_LOGINS_PER_TENANT`] registries per tenant; every login
//! belongs to an existing tenant.
//!
//! Rows: `y/` tenant `\0` registry → [`RegistryLogin`].

use serde::{Deserialize, Serialize};

use super::command::Response;
use super::error::StateError;
use super::keys;
use super::kv::{KvError, Txn};
use super::machine::{ApplyCtx, StateMachine};
use super::validate;

type Applied = Result<Result<Response, StateError>, KvError>;

pub const MAX_LOGINS_PER_TENANT: usize = 16;
/// A sealed password: nonce, at most 1 KiB of password, tag.
pub const MAX_SEALED_BYTES: usize = 12 + 1024 + 16;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RegistryLogin {
    pub tenant: String,
    /// `host[:port]`, as image references name it (`docker.io` for Docker Hub).
    pub registry: String,
    pub username: String,
    #[serde(with = "serde_bytes")]
    pub sealed_password: Vec<u8>,
    pub updated_ms: u64,
}

impl StateMachine {
    /// The tenant's login for `registry`, if any.
    pub fn registry_login(&self, tenant: &str, registry: &str) -> Option<&RegistryLogin> {
        self.registry_logins.get(&(tenant.to_string(), registry.to_string()))
    }

    /// The tenant's logins, by registry.
    pub fn registry_logins(&self, tenant: &str) -> impl Iterator<Item = &RegistryLogin> {
        self.registry_logins
            .range((tenant.to_string(), String::new())..)
            .take_while(move |((t, _), _)| t == tenant)
            .map(|(_, l)| l)
    }

    /// Saves (`login` Some: username and sealed password) or removes a tenant's login.
    pub(super) fn set_registry_login(
        &mut self,
        txn: &mut Txn<'_>,
        ctx: ApplyCtx,
        tenant: &str,
        registry: &str,
        login: Option<&(String, Vec<u8>)>,
    ) -> Applied {
        if !self.tenants.contains_key(tenant) {
            return Ok(Err(StateError::UnknownTenant(tenant.to_string())));
        }
        if !super::image_ref::is_registry(registry) {
            return Ok(Err(StateError::invalid("registry", format!("{registry:?} is not a registry host[:port]"))));
        }
        let key = (tenant.to_string(), registry.to_string());
        let Some((username, sealed)) = login else {
            if self.registry_logins.remove(&key).is_some() {
                txn.delete(keys::registry_login(tenant, registry));
            }
            return Ok(Ok(Response::RegistryLogin { registry: registry.to_string(), saved: false }));
        };
        if let Err(e) = validate::bounded("username", username, validate::MAX_NAME_BYTES) {
            return Ok(Err(e));
        }
        if username.is_empty() {
            return Ok(Err(StateError::invalid("username", "must not be empty")));
        }
        if sealed.is_empty() || sealed.len() > MAX_SEALED_BYTES {
            return Ok(Err(StateError::invalid("password", "must be 1 to 1024 bytes")));
        }
        if !self.registry_logins.contains_key(&key) && self.registry_logins(tenant).count() >= MAX_LOGINS_PER_TENANT {
            return Ok(Err(StateError::invalid(
                "registry",
                format!("the limit of {MAX_LOGINS_PER_TENANT} registry logins per tenant is reached"),
            )));
        }
        let l = RegistryLogin {
            tenant: tenant.to_string(),
            registry: registry.to_string(),
            username: username.clone(),
            sealed_password: sealed.clone(),
            updated_ms: ctx.now_ms,
        };
        txn.put(keys::registry_login(tenant, registry), keys::encode(&l));
        self.registry_logins.insert(key, l);
        Ok(Ok(Response::RegistryLogin { registry: registry.to_string(), saved: true }))
    }
}
