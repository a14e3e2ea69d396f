//! drover-identity: the SPIFFE-style identities of Drover's roles.
//!
//! Every caller is `spiffe://drover/<role>/<id>` with role one of `tenant`, `agent`,
//! `server`, `operator`. Certificates carry this as their single URI SAN (issued and
//! verified by the mutual-TLS layer); this crate owns the format and its parsing, so
//! there is exactly one definition of who may be named what.

pub mod certs;
pub mod dial;

use std::fmt;
use std::str::FromStr;

pub const TRUST_DOMAIN: &str = "drover";
const SCHEME_PREFIX: &str = "spiffe://drover/";
pub const MAX_ID_BYTES: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Tenant,
    Agent,
    Server,
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Tenant, Role::Agent, Role::Server, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Tenant => "tenant",
            Role::Agent => "agent",
            Role::Server => "server",
            Role::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    pub role: Role,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity {0:?} is not of the form spiffe://drover/<role>/<id>")]
    Malformed(String),
    #[error("unknown role {0:?} (expected tenant, agent, server or operator)")]
    UnknownRole(String),
    #[error("invalid id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
}

/// Checks an id: 1..=128 bytes of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
pub fn validate_id(id: &str) -> Result<(), IdentityError> {
    let bad = |reason| Err(IdentityError::InvalidId { id: id.to_string(), reason });
    if id.is_empty() {
        return bad("must not be empty");
    }
    if id.len() > MAX_ID_BYTES {
        return bad("longer than 128 bytes");
    }
    if id.starts_with(['.', '-']) {
        return bad("must not start with '.' or '-'");
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("only A-Z a-z 0-9 . _ - are allowed");
    }
    Ok(())
}

impl SpiffeId {
    pub fn new(role: Role, id: &str) -> Result<Self, IdentityError> {
        validate_id(id)?;
        Ok(Self { role, id: id.to_string() })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}/{}", self.role.as_str(), self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix(SCHEME_PREFIX).ok_or_else(|| IdentityError::Malformed(s.to_string()))?;
        let (role, id) = rest.split_once('/').ok_or_else(|| IdentityError::Malformed(s.to_string()))?;
        SpiffeId::new(role.parse()?, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for role in Role::ALL {
            let id = SpiffeId::new(role, "acme-1").expect("valid");
            let text = id.to_string();
            assert_eq!(text, format!("spiffe://drover/{}/acme-1", role.as_str()));
            assert_eq!(text.parse::<SpiffeId>().expect("parses"), id);
        }
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "spiffe://other/tenant/a",
            "spiffe://drover/tenant",
            "spiffe://drover/admin/a",
            "spiffe://drover/tenant/",
            "spiffe://drover/tenant/a/b",
            "https://drover/tenant/a",
            "spiffe://drover/tenant/-a",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} parsed");
        }
    }
}
