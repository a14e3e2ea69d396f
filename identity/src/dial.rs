//! Dial overrides: where to connect for a peer's advertised address.
//!
//! Servers and agents take an optional `[dial]` table mapping an advertised `HOST:PORT`
//! to the `HOST:PORT` actually dialled (a TCP proxy, a tunnel, the chaos suite's fault
//! proxy). The peer's identity is still checked against the advertised host: when an
//! address is overridden, the TLS server name stays the advertised host, so routing
//! traffic elsewhere never weakens verification.

use std::collections::BTreeMap;

/// Where to connect for `addr`, and the TLS server name to verify when that differs from
/// the host being dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget<'a> {
    pub connect: &'a str,
    /// `Some(host of addr)` when `connect` is an override.
    pub server_name: Option<&'a str>,
}

/// Resolves `addr` through `overrides`.
pub fn resolve<'a>(overrides: &'a BTreeMap<String, String>, addr: &'a str) -> DialTarget<'a> {
    match overrides.get(addr) {
        Some(via) if via != addr => DialTarget { connect: via, server_name: Some(host(addr)) },
        _ => DialTarget { connect: addr, server_name: None },
    }
}

/// The host part of `HOST:PORT` (brackets of an IPv6 literal removed).
pub fn host(addr: &str) -> &str {
    let h = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overridden_addresses_keep_the_advertised_host_as_server_name() {
        let map: BTreeMap<String, String> =
            [("10.0.0.2:7400".to_string(), "127.0.0.1:9000".to_string())].into_iter().collect();
        assert_eq!(
            resolve(&map, "10.0.0.2:7400"),
            DialTarget { connect: "127.0.0.1:9000", server_name: Some("10.0.0.2") }
        );
        assert_eq!(resolve(&map, "10.0.0.3:7400"), DialTarget { connect: "10.0.0.3:7400", server_name: None });
        assert_eq!(host("[::1]:7400"), "::1");
        assert_eq!(host("node-1.example:7400"), "node-1.example");
    }
}
