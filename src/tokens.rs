//! API tokens as secrets: how one is made and how it is stored. syncpool keeps only a
//! SHA-256 of each token. A token is 256 random bits, so unlike a password it needs no
//! slow, salted hash: no one can guess their way back from the hash.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every token starts so, which lets secret scanners and people recognise one.
pub const PREFIX: &str = "spt_";

/// A new random token.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", hex(&bytes))
}

/// What is stored of `token`: its SHA-256, in hex.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_random_and_their_hash_is_not_the_token() {
        let (a, b) = (super::generate(), super::generate());
        assert_ne!(a, b);
        assert!(a.starts_with(super::PREFIX) && a.len() == 68, "{a}");
        assert_eq!(super::hash(&a), super::hash(&a));
        assert_ne!(super::hash(&a), super::hash(&b));
        assert!(!super::hash(&a).contains(&a[4..]));
    }
}
