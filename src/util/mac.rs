//! HMAC-SHA256 (RFC 2104), for requests one member of a cluster signs for another with a key
//! both hold (the recovery calls between survivors, keyed by the cluster's dqlite key).

use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

/// HMAC-SHA256 of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// How far a proof's time may be from the checker's clock.
pub const PROOF_WINDOW_SECS: i64 = 120;

fn proof_message(at: i64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let body_digest = crate::util::hex::sha256_hex(body);
    format!("cluster-agent request proof\n{at}\n{method}\n{path}\n{body_digest}").into_bytes()
}

/// The proof that whoever holds `key` sent `method path` with `body` at `at` (unix seconds):
/// `<at>:<hex HMAC-SHA256>`.
pub fn request_proof(key: &[u8], at: i64, method: &str, path: &str, body: &[u8]) -> String {
    let mac = hmac_sha256(key, &proof_message(at, method, path, body));
    format!("{at}:{}", crate::util::hex::hex(&mac))
}

/// Does `proof` (from [`request_proof`]) hold for this request under `key`, made within
/// [`PROOF_WINDOW_SECS`] of `now`? Compared in constant time.
pub fn check_proof(
    key: &[u8],
    proof: &str,
    now: i64,
    method: &str,
    path: &str,
    body: &[u8],
) -> bool {
    let Some((at, _)) = proof.split_once(':') else {
        return false;
    };
    let Ok(at) = at.parse::<i64>() else {
        return false;
    };
    if (now - at).abs() > PROOF_WINDOW_SECS {
        return false;
    }
    let expected = request_proof(key, at, method, path, body);
    crate::util::secret::secret_eq(&expected, proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::hex::hex;

    #[test]
    fn a_proof_holds_only_for_its_key_request_and_time() {
        let proof = request_proof(b"key", 1000, "POST", "/x", b"body");
        assert!(check_proof(b"key", &proof, 1050, "POST", "/x", b"body"));
        assert!(!check_proof(b"other", &proof, 1050, "POST", "/x", b"body"));
        assert!(!check_proof(b"key", &proof, 1050, "POST", "/y", b"body"));
        assert!(!check_proof(b"key", &proof, 1050, "POST", "/x", b"bodY"));
        assert!(!check_proof(
            b"key",
            &proof,
            1000 + PROOF_WINDOW_SECS + 1,
            "POST",
            "/x",
            b"body"
        ));
        for garbage in ["", ":", "x:y", "1000", "1000:"] {
            assert!(!check_proof(b"key", garbage, 1000, "POST", "/x", b"body"));
        }
    }

    #[test]
    fn rfc_4231_vectors() {
        // Test case 2: a short key.
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
