//! Secrets: generation and comparison. Nothing here logs.

use rand::Rng;
use subtle::ConstantTimeEq;

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// A random string over `[a-zA-Z0-9]` from the OS CSPRNG (MicroK8s's alphabet has a typo that
/// drops `w`; ours does not).
pub fn random_alnum(len: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| ALNUM[rng.gen_range(0..ALNUM.len())] as char)
        .collect()
}

/// 32 lower-case hex characters, like MicroK8s's `secrets.token_hex(16)`.
pub fn random_hex_token() -> String {
    let bytes: [u8; 16] = rand::Rng::gen(&mut rand::rngs::OsRng);
    super::hex::hex(&bytes)
}

/// Constant-time equality of two secrets (length is not hidden).
pub fn secret_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_have_the_right_shape() {
        let t = random_alnum(64);
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_alnum(64), t);
        let h = random_hex_token();
        assert_eq!(h.len(), 32);
        assert!(h
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn comparison() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
    }
}
