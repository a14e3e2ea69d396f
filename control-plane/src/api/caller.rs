//! Who is calling: the identity the `authz` interceptor established (from the client
//! certificate with TLS, from metadata in development mode). Never a request field.

use tonic::Request;

use super::authz::Caller;
use super::error::ApiError;

fn id_of<T>(req: &Request<T>, role: &str) -> Result<String, ApiError> {
    match req.extensions().get::<Caller>() {
        // The interceptor admitted only this service's role.
        Some(Caller(id)) => Ok(id.id.clone()),
        None => Err(ApiError::Unauthenticated(format!("no {role} identity on the call"))),
    }
}

pub fn tenant<T>(req: &Request<T>) -> Result<String, ApiError> {
    id_of(req, "tenant")
}

pub fn agent<T>(req: &Request<T>) -> Result<String, ApiError> {
    id_of(req, "agent")
}
