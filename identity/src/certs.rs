//! Certificates for Drover's roles: a CA, and leaf certificates whose single URI SAN is
//! the holder's [`SpiffeId`]. Issued with `rcgen` (ECDSA P-256), read back with
//! `x509-parser`. Private keys are written with mode 0600.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{IdentityError, Role, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub id: SpiffeId,
    /// DNS names and IP addresses the holder serves under (servers).
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Validity starts at `not_before` (default: one hour ago, for clock skew).
    pub not_before: Option<OffsetDateTime>,
    pub days: u32,
    /// The URI SANs to write instead of the single identity URI. Only for testing that
    /// malformed certificates (no URI, several URIs) are refused.
    pub uri_sans_override: Option<Vec<String>>,
}

impl LeafSpec {
    pub fn new(id: SpiffeId, days: u32) -> Self {
        Self { id, dns: Vec::new(), ips: Vec::new(), not_before: None, days, uri_sans_override: None }
    }
}

fn validity(p: &mut CertificateParams, not_before: Option<OffsetDateTime>, days: u32) {
    let start = not_before.unwrap_or_else(|| OffsetDateTime::now_utc() - Duration::hours(1));
    p.not_before = start;
    p.not_after = start + Duration::days(i64::from(days));
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str, days: u32) -> Result<Pem, CertError> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    validity(&mut p, None, days);
    let cert = p.self_signed(&key)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Issues a leaf certificate for `spec` signed by the CA.
pub fn issue(ca: &Pem, spec: &LeafSpec) -> Result<Pem, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(spec.dns.clone())?;
    let uris = spec.uri_sans_override.clone().unwrap_or_else(|| vec![spec.id.to_string()]);
    for uri in uris {
        p.subject_alt_names.push(SanType::URI(uri.try_into()?));
    }
    for ip in &spec.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.id.to_string());
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Servers also dial each other (Raft), so they are clients too.
    p.extended_key_usages = match spec.id.role {
        Role::Server => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut p, spec.not_before, spec.days);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Pem { cert: cert.pem(), key: key.serialize_pem() })
}

/// The identity a peer's leaf certificate (DER) carries: it must not be a CA and must
/// hold exactly one URI SAN, a valid Drover SPIFFE id.
pub fn identity_from_der(der: &[u8]) -> Result<SpiffeId, IdentityError> {
    let bad = |why: &str| IdentityError::Malformed(why.to_string());
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad("unparseable certificate"))?;
    if cert.is_ca() {
        return Err(bad("a CA certificate is not a caller identity"));
    }
    let san = cert.subject_alternative_name().map_err(|_| bad("malformed subjectAltName"))?;
    let uris: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|g| if let GeneralName::URI(u) = g { Some(*u) } else { None })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [one] => one.parse(),
        [] => Err(bad("certificate has no URI SAN")),
        _ => Err(bad("certificate has more than one URI SAN")),
    }
}

/// The identity in the first certificate of a PEM file (a process reading its own
/// certificate to learn who it is).
pub fn identity_from_pem(pem: &[u8]) -> Result<SpiffeId, IdentityError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| IdentityError::Malformed("no PEM certificate found".to_string()))?;
    identity_from_der(&p.contents)
}

/// When the first certificate of a PEM file stops being valid, in unix seconds (a
/// process reporting its own certificate's expiry, `drover_tls_cert_expiry_seconds`).
pub fn not_after_from_pem(pem: &[u8]) -> Result<i64, IdentityError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|_| IdentityError::Malformed("no PEM certificate found".to_string()))?;
    let (_, cert) = X509Certificate::from_der(&p.contents)
        .map_err(|_| IdentityError::Malformed("unparseable certificate".into()))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Writes a file; private keys (`private = true`) are created with mode 0600.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io { path: path.display().to_string(), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        let p = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem").1;
        p.contents
    }

    #[test]
    fn issued_leaf_carries_its_identity() {
        let ca = new_ca("drover test CA", 30).expect("ca");
        let id = SpiffeId::new(Role::Tenant, "acme").expect("id");
        let leaf = issue(&ca, &LeafSpec::new(id.clone(), 7)).expect("leaf");
        assert_eq!(identity_from_der(&der(&leaf.cert)).expect("identity"), id);
        let e = identity_from_der(&der(&ca.cert)).expect_err("CA is not an identity");
        assert!(e.to_string().contains("CA"), "{e}");
    }

    #[test]
    fn expiry_is_read_back_from_the_pem() {
        let ca = new_ca("drover test CA", 30).expect("ca");
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time");
        let id = SpiffeId::new(Role::Agent, "a1").expect("id");
        let leaf = issue(&ca, &LeafSpec { not_before: Some(start), ..LeafSpec::new(id, 7) }).expect("leaf");
        assert_eq!(not_after_from_pem(leaf.cert.as_bytes()).expect("expiry"), 1_700_000_000 + 7 * 86_400);
        assert!(not_after_from_pem(b"not a certificate").is_err());
    }

    #[test]
    fn none_or_two_uri_sans_are_refused() {
        let ca = new_ca("drover test CA", 30).expect("ca");
        let ca_key = KeyPair::from_pem(&ca.key).expect("key");
        let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).expect("issuer");
        let leaf = |uris: &[&str]| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
            for u in uris {
                p.subject_alt_names.push(SanType::URI((*u).try_into().expect("uri")));
            }
            p.signed_by(&key, &issuer).expect("sign").der().to_vec()
        };
        let e = identity_from_der(&leaf(&[])).expect_err("no URI SAN");
        assert!(e.to_string().contains("no URI SAN"), "{e}");
        let two = leaf(&["spiffe://drover/tenant/a", "spiffe://drover/operator/b"]);
        let e = identity_from_der(&two).expect_err("two URI SANs");
        assert!(e.to_string().contains("more than one"), "{e}");
        let ok = leaf(&["spiffe://drover/agent/x"]);
        assert_eq!(identity_from_der(&ok).expect("one").to_string(), "spiffe://drover/agent/x");
    }

    #[test]
    fn private_keys_are_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("drover-cert-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("k.pem");
        write_file(&path, "secret", true).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
