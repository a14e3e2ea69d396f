//! Registry passwords sealed at rest: ChaCha20-Poly1305 under a 256-bit key every server
//! holds (`registry_key_file`, 64 hex digits), a fresh random nonce per seal. A password
//! is sealed at the API edge before it is proposed, so the Raft log, the state tables and
//! snapshots hold only the sealed form; it is opened only to build the grant of a task
//! that needs it, on the leader answering that agent's lease call. The tenant and
//! registry are bound in as associated data, so a sealed value copied to another
//! tenant's row does not open.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("registry_key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("no randomness for a nonce")]
    Random,
    #[error("a sealed registry password does not open with this server's key (a different registry_key_file?)")]
    Open,
}

pub struct RegistryKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for RegistryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryKey(..)")
    }
}

fn aad(tenant: &str, registry: &str) -> Vec<u8> {
    [tenant.as_bytes(), &[0], registry.as_bytes()].concat()
}

impl RegistryKey {
    /// Reads the key file: 64 hex digits (surrounding whitespace ignored).
    pub fn from_file(path: &std::path::Path) -> Result<Self, SealError> {
        let bad = |reason: String| SealError::Key { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let bytes = hex::decode(text.trim()).map_err(|e| bad(format!("not hex: {e}")))?;
        Self::from_bytes(&bytes).map_err(|_| bad(format!("{} bytes; want 32 (64 hex digits)", bytes.len())))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| SealError::Key { path: String::new(), reason: "want 32 bytes".into() })?;
        Ok(RegistryKey { key: LessSafeKey::new(key) })
    }

    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, tenant: &str, registry: &str, secret: &str) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(tenant, registry)), &mut data)
            .map_err(|_| SealError::Random)?;
        Ok([&nonce[..], &data].concat())
    }

    pub fn open(&self, tenant: &str, registry: &str, sealed: &[u8]) -> Result<String, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut data = body.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(aad(tenant, registry)), &mut data).map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_passwords_open_only_for_their_tenant_and_registry_and_key() {
        let k = RegistryKey::from_bytes(&[7; 32]).expect("key");
        let sealed = k.seal("acme", "reg.example:5000", "hunter2").expect("seal");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "the password is not in the sealed bytes");
        assert_ne!(sealed, k.seal("acme", "reg.example:5000", "hunter2").expect("seal"), "a fresh nonce each time");
        assert_eq!(k.open("acme", "reg.example:5000", &sealed).expect("open"), "hunter2");
        assert!(k.open("globex", "reg.example:5000", &sealed).is_err(), "another tenant's row");
        assert!(k.open("acme", "other.example", &sealed).is_err(), "another registry");
        let other = RegistryKey::from_bytes(&[8; 32]).expect("key");
        assert!(other.open("acme", "reg.example:5000", &sealed).is_err(), "another key");
        assert!(RegistryKey::from_bytes(&[1; 16]).is_err());
    }
}
