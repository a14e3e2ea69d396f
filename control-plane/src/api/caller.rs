//! Who is calling. Until mutual TLS lands (identities from certificate SANs), the server
//! runs in development mode only, bound to loopback, and takes the caller's tenant or
//! agent id from the `x-drover-tenant` / `x-drover-agent` metadata entries. This is the
//! one place that decides a caller's identity, so the certificate-based version replaces
//! it without touching handlers.

use tonic::Request;

use super::error::ApiError;
use crate::state::validate;

pub const TENANT_METADATA: &str = "x-drover-tenant";
pub const AGENT_METADATA: &str = "x-drover-agent";

fn id_from<T>(req: &Request<T>, key: &str, role: &str) -> Result<String, ApiError> {
    let v =
        req.metadata().get(key).ok_or_else(|| ApiError::Unauthenticated(format!("no {role} identity on the call")))?;
    let id = v.to_str().map_err(|_| ApiError::Unauthenticated(format!("{role} identity is not ASCII")))?;
    validate::name(role, id).map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
    Ok(id.to_string())
}

pub fn tenant<T>(req: &Request<T>) -> Result<String, ApiError> {
    id_from(req, TENANT_METADATA, "tenant")
}

pub fn agent<T>(req: &Request<T>) -> Result<String, ApiError> {
    id_from(req, AGENT_METADATA, "agent")
}
