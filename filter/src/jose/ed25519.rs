//! Ed25519 verification (RFC 8032 §5.1.7; JWS `EdDSA`/`Ed25519`, RFC 8037) on
//! `curve25519-dalek`, whose 32-bit field backend (selected on wasm32) needs no 128-bit
//! products: about three times fewer wasm instructions than 64-bit-limb code.
//!
//! The checks are those of ed25519-compact, which the filter used before: `S` canonical (below
//! the group order), `A` and `R` canonical encodings of points not of small order. The group
//! equation is checked without the cofactor, `[S]B - [k]A` encodes to exactly `R` (allowed by
//! RFC 8032 §5.1.7, and what ed25519-dalek's `verify_strict` does). Everything here is public
//! data, so the variable-time double-scalar multiplication leaks nothing secret.
//!
//! A key that verifies many signatures can carry a table of multiples of `-A`
//! ([`Ed25519Key::precomputed`], 165 KB, built with [`super::edwards`]): `[k](-A)` then costs
//! at most 43 mixed additions and `[S]B` at most 37 with the basepoint's table, instead of the
//! 253 doublings the double-scalar multiplication shares.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;

use super::edwards::{basepoint_table, NielsTable, Point};

/// Decodes a point, refusing a non-canonical `y` (at or above 2^255 - 19; the decoder would
/// otherwise reduce it, giving one point two spellings) and points of small order.
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    let mut y = *bytes;
    if let Some(top) = y.last_mut() {
        *top &= 0x7f;
    }
    // y >= p iff y is one of p..2^255-1: 0x7fff…ff with a low byte of at least 0xed.
    let (low, rest) = y.split_first()?;
    let at_least_p = *low >= 0xed && rest.iter().take(30).all(|b| *b == 0xff) && rest.last() == Some(&0x7f);
    if at_least_p {
        return None;
    }
    let point = CompressedEdwardsY(*bytes).decompress()?;
    (!point.is_small_order()).then_some(point)
}

/// Window width of a key's table: 43 rows of 32 affine points (165 KB per key), so `[k](-A)`
/// is at most 43 mixed additions.
const KEY_BITS: usize = 6;

pub(super) struct Ed25519Key {
    encoded: [u8; 32],
    /// `-A`, decoded once per key (for the plain path).
    minus_a: EdwardsPoint,
    /// Multiples of `-A` (for the precomputed path).
    table: Option<NielsTable>,
}

impl Ed25519Key {
    pub(super) fn from_bytes(encoded: &[u8; 32]) -> Option<Ed25519Key> {
        let a = decode_point(encoded)?;
        Some(Ed25519Key { encoded: *encoded, minus_a: -a, table: None })
    }

    /// The key with its table; the plain key again in the (untested, impossible) case that the
    /// point dalek accepted does not decode here.
    pub(super) fn precomputed(&self) -> Ed25519Key {
        let table = Point::decode(&self.encoded).map(|a| NielsTable::new(&a.neg(), KEY_BITS));
        Ed25519Key { encoded: self.encoded, minus_a: self.minus_a, table }
    }

    pub(super) fn is_precomputed(&self) -> bool {
        self.table.is_some()
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
            return false;
        };
        let (r, s) = signature.split_at(32);
        let (Ok(r), Ok(s)) = (<[u8; 32]>::try_from(r), <[u8; 32]>::try_from(s)) else {
            return false;
        };
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else {
            return false;
        };
        let mut hasher = hmac_sha512::Hash::new();
        hasher.update(r);
        hasher.update(self.encoded);
        hasher.update(message);
        let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize());
        // [S]B - [k]A, to be R. A small-order R is refused (as ed25519-compact did); an R that
        // is not a canonical encoding cannot equal an encoded point.
        if let (Some(table), Some(basepoint)) = (&self.table, basepoint_table()) {
            let mut expected = Point::IDENTITY;
            basepoint.add_multiple(&s.to_bytes(), &mut expected);
            table.add_multiple(&k.to_bytes(), &mut expected);
            return expected.encode() == r && !expected.is_small_order();
        }
        let expected = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &self.minus_a, &s);
        expected.compress().0 == r && !expected.is_small_order()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 8032 §7.1, TEST 1 to 3: public key, message, signature.
    const RFC8032: [(&str, &str, &str); 3] = [
        (
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            "72",
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        ),
        (
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ];

    #[test]
    fn rfc8032_vectors_verify_and_tampering_fails() {
        for (i, (pk, msg, sig)) in RFC8032.iter().enumerate() {
            let plain = Ed25519Key::from_bytes(&hex(pk).try_into().unwrap()).unwrap();
            for key in [plain.precomputed(), plain] {
            let (msg, sig) = (hex(msg), hex(sig));
            assert!(key.verify(&msg, &sig), "TEST {}", i + 1);
            let mut longer = msg.clone();
            longer.push(0);
            assert!(!key.verify(&longer, &sig), "TEST {}: other message", i + 1);
            for byte in [0, 31, 32, 63] {
                let mut bad = sig.clone();
                bad[byte] ^= 0x01;
                assert!(!key.verify(&msg, &bad), "TEST {}: bit flip in byte {byte}", i + 1);
            }
            assert!(!key.verify(&msg, &sig[..63]), "short signature");
            // Another vector's key does not verify this signature.
            let other = Ed25519Key::from_bytes(&hex(RFC8032[(i + 1) % 3].0).try_into().unwrap()).unwrap();
            assert!(!other.verify(&msg, &sig));
            }
        }
    }

    #[test]
    fn non_canonical_s_is_refused() {
        let (pk, msg, sig) = RFC8032[0];
        let key = Ed25519Key::from_bytes(&hex(pk).try_into().unwrap()).unwrap();
        let mut sig = hex(sig);
        // S + L: the same residue, not the canonical spelling.
        let l = hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
        assert!(!key.verify(&hex(msg), &sig));
    }

    #[test]
    fn small_order_and_non_canonical_keys_are_refused() {
        // The identity (y = 1), a point of order 2 (y = -1), and y = p + 1 (non-canonical 1).
        let identity = hex("0100000000000000000000000000000000000000000000000000000000000000");
        let order2 = hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        let non_canonical = hex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f");
        for bytes in [identity, order2, non_canonical] {
            assert!(Ed25519Key::from_bytes(&bytes.try_into().unwrap()).is_none());
        }
    }
}
