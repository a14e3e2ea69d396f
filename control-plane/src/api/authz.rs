//! Who may call what: one table, enforced by one interceptor on every service before any
//! handler runs.
//!
//! With TLS the caller is the single SPIFFE URI SAN of its verified client certificate
//! (`drover_identity::certs::identity_from_der`), and its role must be the one the
//! service admits. The identity is handed to handlers as a [`Caller`] extension. In
//! development mode (plaintext on loopback) no certificate exists and the interceptor
//! admits everything; handlers then read metadata (see `caller`).

use drover_identity::certs::identity_from_der;
use drover_identity::{Role, SpiffeId};
use tonic::{Request, Status};

/// The gRPC services and the one role each admits.
pub const ROLE_TABLE: &[(&str, Role)] = &[
    ("drover.v1.Tenant", Role::Tenant),
    ("drover.agent.v1.Agent", Role::Agent),
    ("drover.admin.v1.Admin", Role::Operator),
    ("drover.raft.v1.Raft", Role::Server),
];

/// The verified identity of the caller, inserted into the request's extensions.
#[derive(Clone, Debug)]
pub struct Caller(pub SpiffeId);

#[derive(Clone)]
pub struct Authz {
    service: &'static str,
    role: Role,
    tls: bool,
}

impl Authz {
    /// The interceptor for `service` (a name from [`ROLE_TABLE`]).
    pub fn for_service(service: &'static str, tls: bool) -> Self {
        let role = ROLE_TABLE.iter().find(|(s, _)| *s == service).map(|(_, r)| *r).unwrap_or(Role::Operator);
        Authz { service, role, tls }
    }
}

impl tonic::service::Interceptor for Authz {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if !self.tls {
            return Ok(req);
        }
        let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let id = identity_from_der(leaf.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
        if id.role != self.role {
            return Err(Status::permission_denied(format!(
                "{id} may not call {} (it admits {} identities)",
                self.service,
                self.role.as_str()
            )));
        }
        req.extensions_mut().insert(Caller(id));
        Ok(req)
    }
}
