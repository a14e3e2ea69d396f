//! Who may call what: one table, enforced by one interceptor on every service before any
//! handler runs.
//!
//! The interceptor establishes the caller's identity and hands it to handlers as a
//! [`Caller`] extension:
//! * with TLS, the single SPIFFE URI SAN of the verified client certificate
//!   (`drover_identity::certs::identity_from_der`), whose role must be the one the
//!   service admits ([`ROLE_TABLE`]), else `PermissionDenied`;
//! * in development mode (plaintext, loopback only), the `x-drover-tenant` /
//!   `x-drover-agent` metadata entry for the tenant and agent services.
//!
//! A tenant with a source-CIDR allowlist is refused (`PermissionDenied`, counted in
//! `drover_api_denied_total{reason="source_cidr"}`) when the peer address is outside it.

use std::net::IpAddr;
use std::sync::Arc;

use drover_identity::certs::identity_from_der;
use drover_identity::{Role, SpiffeId};
use tonic::{Request, Status};

use crate::storage::sm_store::SmShared;
use crate::tls::PeerInfo;

/// The gRPC services and the one role each admits.
pub const ROLE_TABLE: &[(&str, Role)] = &[
    ("drover.v1.Tenant", Role::Tenant),
    ("drover.agent.v1.Agent", Role::Agent),
    ("drover.admin.v1.Admin", Role::Operator),
    ("drover.raft.v1.Raft", Role::Server),
];

pub const TENANT_METADATA: &str = "x-drover-tenant";
pub const AGENT_METADATA: &str = "x-drover-agent";

/// The verified identity of the caller, inserted into the request's extensions.
#[derive(Clone, Debug)]
pub struct Caller(pub SpiffeId);

#[derive(Clone)]
pub struct Authz {
    service: &'static str,
    role: Role,
    tls: bool,
    sm: Arc<SmShared>,
    denied: prometheus::IntCounterVec,
}

impl Authz {
    /// The interceptor for `service` (a name from [`ROLE_TABLE`]).
    pub fn new(service: &'static str, tls: bool, sm: Arc<SmShared>, denied: prometheus::IntCounterVec) -> Self {
        let role = ROLE_TABLE.iter().find(|(s, _)| *s == service).map(|(_, r)| *r).unwrap_or(Role::Operator);
        Authz { service, role, tls, sm, denied }
    }

    fn deny(&self, reason: &str, status: Status) -> Status {
        self.denied.with_label_values(&[reason]).inc();
        status
    }

    fn identity(&self, req: &Request<()>) -> Result<Option<SpiffeId>, Status> {
        if self.tls {
            let leaf = req
                .extensions()
                .get::<PeerInfo>()
                .and_then(|p| p.certs.as_ref())
                .and_then(|c| c.first().cloned())
                .ok_or_else(|| self.deny("no_certificate", Status::unauthenticated("no client certificate")))?;
            let id = identity_from_der(leaf.as_ref())
                .map_err(|e| self.deny("bad_certificate", Status::unauthenticated(e.to_string())))?;
            if id.role != self.role {
                return Err(self.deny(
                    "role",
                    Status::permission_denied(format!(
                        "{id} may not call {} (it admits {} identities)",
                        self.service,
                        self.role.as_str()
                    )),
                ));
            }
            return Ok(Some(id));
        }
        let key = match self.role {
            Role::Tenant => TENANT_METADATA,
            Role::Agent => AGENT_METADATA,
            Role::Server | Role::Operator => return Ok(None),
        };
        let Some(v) = req.metadata().get(key) else {
            return Err(Status::unauthenticated(format!("no {} identity ({key}) on the call", self.role.as_str())));
        };
        let v = v.to_str().map_err(|_| Status::unauthenticated(format!("{key} is not ASCII")))?;
        SpiffeId::new(self.role, v).map(Some).map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// Refuses a tenant calling from outside its source allowlist.
    fn check_source(&self, tenant: &str, peer: Option<IpAddr>) -> Result<(), Status> {
        match source_refusal(&self.sm, tenant, peer).map_err(Status::internal)? {
            None => Ok(()),
            Some(why) => Err(self.deny("source_cidr", Status::permission_denied(why))),
        }
    }
}

/// Why `tenant` may not call from `peer`, or `None` when it may: it has no source
/// allowlist, or the address is inside one of its networks. Shared by the gRPC
/// interceptor and the HTTP listener, so both refuse with the same words.
pub fn source_refusal(sm: &SmShared, tenant: &str, peer: Option<IpAddr>) -> Result<Option<String>, String> {
    let inside = {
        let sm = sm.machine().map_err(|e| e.to_string())?;
        let allowed = sm.tenants().get(tenant).map(|t| t.allowed_cidrs.as_slice()).unwrap_or_default();
        allowed.is_empty()
            || peer.is_some_and(|ip| {
                allowed.iter().filter_map(|c| c.parse::<ipnet::IpNet>().ok()).any(|net| net.contains(&ip))
            })
    };
    let from = || peer.map(|p| p.to_string()).unwrap_or_else(|| "an unknown address".into());
    Ok((!inside).then(|| format!("tenant {tenant} may not call from {} (outside its allowed_cidrs)", from())))
}

impl tonic::service::Interceptor for Authz {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let Some(id) = self.identity(&req)? else { return Ok(req) };
        if id.role == Role::Tenant {
            let remote = req.extensions().get::<PeerInfo>().and_then(|p| p.remote).or_else(|| req.remote_addr());
            self.check_source(&id.id, remote.map(|a| a.ip()))?;
        }
        req.extensions_mut().insert(Caller(id));
        Ok(req)
    }
}
