//! Webhook secrets: 32 random bytes made at the API edge (never inside `apply`), shown
//! to the tenant once as 64 hex characters, and kept by the servers only as the SHA-256
//! of that text. A presented token is checked by hashing it and comparing the hashes in
//! constant time, so neither the comparison's timing nor the stored hash gives the
//! secret away.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Random bytes in a secret.
pub const SECRET_BYTES: usize = 32;

/// A freshly made secret; [`Secret::reveal`] is what the tenant is shown, once.
pub struct Secret {
    text: String,
}

impl Secret {
    /// 32 bytes from the thread-local CSPRNG (ChaCha, seeded from the operating system).
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Secret { text: hex::encode(bytes) }
    }

    pub fn reveal(&self) -> &str {
        &self.text
    }

    pub fn sha256(&self) -> [u8; 32] {
        hash(&self.text)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The SHA-256 of a token as presented.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `token` is the secret whose hash is `stored`, in time independent of where
/// the hashes differ.
pub fn matches(token: &str, stored: &[u8; 32]) -> bool {
    let presented = hash(token);
    let diff = presented.iter().zip(stored).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    // Keep the comparison from being turned into an early-exit loop.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_64_hex_characters_and_matches_only_its_own_hash() {
        let s = Secret::generate();
        assert_eq!(s.reveal().len(), 2 * SECRET_BYTES);
        assert!(s.reveal().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(matches(s.reveal(), &s.sha256()));
        assert!(!matches("", &s.sha256()));
        assert!(!matches(&s.reveal()[1..], &s.sha256()));
        assert!(!matches(&s.reveal().to_uppercase(), &s.sha256()) || s.reveal() == s.reveal().to_uppercase());
        assert_ne!(s.reveal(), Secret::generate().reveal(), "two secrets are different");
        assert_eq!(format!("{s:?}"), "Secret(..)", "Debug never prints the secret");
    }

    #[test]
    fn the_hash_is_sha256_of_the_text() {
        // SHA-256("abc") from FIPS 180-2.
        assert_eq!(hex::encode(hash("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
