//! Who is calling. With TLS, the identity the `authz` interceptor verified from the client
//! certificate (never a request field). In development mode (plaintext, loopback only)
//! there is no certificate, and the tenant or agent id comes from the `x-drover-tenant` /
//! `x-drover-agent` metadata entries.

use tonic::Request;

use super::authz::Caller;
use super::error::ApiError;
use crate::state::validate;

pub const TENANT_METADATA: &str = "x-drover-tenant";
pub const AGENT_METADATA: &str = "x-drover-agent";

fn id_from<T>(req: &Request<T>, key: &str, role: &str) -> Result<String, ApiError> {
    if let Some(Caller(id)) = req.extensions().get::<Caller>() {
        // The interceptor admitted only this service's role.
        return Ok(id.id.clone());
    }
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
