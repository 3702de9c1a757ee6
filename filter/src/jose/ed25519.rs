//! Ed25519 verification (RFC 8032 §5.1.7; JWS `EdDSA`/`Ed25519`, RFC 8037), on the
//! Edwards25519 arithmetic of `mcp_guard_ed25519` (filter/ed25519: fiat-crypto's 32-bit field,
//! built at opt-level 3, checked against `curve25519-dalek` in the tests) and `crypto-bigint`
//! for the one reduction modulo the group order.
//!
//! The checks are those of ed25519-compact, which the filter used before: `S` canonical (below
//! the group order), `A` and `R` canonical encodings of points not of small order. The group
//! equation is checked without the cofactor, `[S]B - [k]A` encodes to exactly `R` (allowed by
//! RFC 8032 §5.1.7, and what ed25519-dalek's `verify_strict` does). Everything here is public
//! data, so the variable-time arithmetic leaks nothing secret.
//!
//! `[S]B` always uses the basepoint's table (33 mixed additions at most, built once per VM). A
//! key that verifies many signatures can carry a table of multiples of `-A`
//! ([`Ed25519Key::precomputed`], 165 KB): `[k](-A)` then costs at most 43 mixed additions
//! instead of about 250 doublings and 64 additions. The one inversion that encodes the result
//! is done by divsteps.

use crypto_bigint::{NonZero, U256, U512};

use mcp_guard_ed25519::{basepoint_table, NielsTable, Point};

/// The group order l = 2^252 + 27742317777372353535851937790883648493 (RFC 8032 §5.1).
const ORDER: NonZero<U256> =
    NonZero::<U256>::new_unwrap(U256::from_be_hex("1000000000000000000000000000000014def9dea2f79cd65812631a5cf5d3ed"));

/// Decodes a point, refusing a non-canonical `y` (at or above 2^255 - 19; the decoder would
/// otherwise reduce it, giving one point two spellings) and points of small order.
fn decode_point(bytes: &[u8; 32]) -> Option<Point> {
    let mut y = *bytes;
    if let Some(top) = y.last_mut() {
        *top &= 0x7f;
    }
    // y >= p iff y is one of p..2^255-1: 0x7fff…ff with a low byte of at least 0xed.
    let (low, rest) = y.split_first()?;
    let at_least_p = *low >= 0xed && rest.iter().take(30).all(|b| *b == 0xff) && rest.last() == Some(&0x7f);
    if at_least_p || SMALL_ORDER_ENCODINGS.contains(bytes) {
        return None;
    }
    // RFC 8032 §5.1.3, which also refuses x = 0 with the sign bit set.
    Point::decode(bytes)
}

/// `S` as a big-endian integer if it is canonical (below the group order), else `None`.
fn canonical_scalar(le: &[u8; 32]) -> Option<[u8; 32]> {
    let mut be = *le;
    be.reverse();
    let order = ORDER.as_ref().to_be_bytes();
    // Big-endian arrays of one length compare as the numbers they spell.
    (be.as_slice() < order.as_ref()).then_some(be)
}

/// `k = SHA-512(R || A || M) mod l`, big-endian.
fn challenge(r: &[u8; 32], a: &[u8; 32], message: &[u8]) -> Option<[u8; 32]> {
    let mut hasher = hmac_sha512::Hash::new();
    hasher.update(r);
    hasher.update(a);
    hasher.update(message);
    let wide = U512::from_le_slice(&hasher.finalize());
    <[u8; 32]>::try_from(wide.rem_vartime(&ORDER).to_be_bytes().as_ref()).ok()
}

/// The canonical encodings of the eight points of small order (the identity, the point of
/// order 2, two of order 4 and four of order 8); checked against `curve25519-dalek`'s
/// `EIGHT_TORSION` in the tests. A canonical encoding in this list is a point of small order,
/// and one outside it is not.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = {
    // y of an order-8 point, and p - y: each with x even and x odd (the top bit).
    let y8: [u8; 32] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20,
        0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
    ];
    let minus_y8: [u8; 32] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98, 0xf0, 0xd5, 0xdf,
        0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53, 0xfc, 0x05,
    ];
    let mut one = [0u8; 32];
    one[0] = 1;
    // p - 1 = -1: 0xec, then 0xff, then 0x7f on top.
    let mut minus_one = [0xffu8; 32];
    minus_one[0] = 0xec;
    minus_one[31] = 0x7f;
    [one, minus_one, [0; 32], with_sign([0; 32]), y8, with_sign(y8), minus_y8, with_sign(minus_y8)]
};

/// `y` with the top bit set: the encoding of the point with odd x.
const fn with_sign(y: [u8; 32]) -> [u8; 32] {
    let mut out = y;
    out[31] |= 0x80;
    out
}

/// Window width of a key's table: 43 rows of 32 affine points (165 KB per key), so `[k](-A)`
/// is at most 43 mixed additions.
const KEY_BITS: usize = 6;
/// Window width for `[k](-A)` without a table: 4-bit digits, so at most 64 additions after
/// 8 multiples made on the spot.
const ONCE_BITS: usize = 4;

pub(super) struct Ed25519Key {
    encoded: [u8; 32],
    /// `-A`, decoded once per key.
    minus_a: Point,
    /// Multiples of `-A` (for the precomputed path).
    table: Option<NielsTable>,
}

impl Ed25519Key {
    pub(super) fn from_bytes(encoded: &[u8; 32]) -> Option<Ed25519Key> {
        let a = decode_point(encoded)?;
        Some(Ed25519Key { encoded: *encoded, minus_a: a.neg(), table: None })
    }

    /// The key with its table.
    pub(super) fn precomputed(&self) -> Ed25519Key {
        let table = NielsTable::new(&self.minus_a, KEY_BITS);
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
        // encode() spells a point canonically, so an R that is not a canonical encoding never
        // matches, and one of the canonical spellings of the small-order points is refused
        // here (as ed25519-compact did) rather than tested on the result.
        if SMALL_ORDER_ENCODINGS.contains(&r) {
            return false;
        }
        let (Some(s), Some(k), Some(basepoint)) =
            (canonical_scalar(&s), challenge(&r, &self.encoded, message), basepoint_table())
        else {
            return false;
        };
        // [S]B + [k](-A), to be R.
        let mut expected = Point::IDENTITY;
        basepoint.add_digits(&super::ec::signed_digits(&s, basepoint.bits()), &mut expected);
        let k_digits = |bits| super::ec::signed_digits(&k, bits);
        match &self.table {
            Some(table) => table.add_digits(&k_digits(table.bits()), &mut expected),
            None => {
                if self.minus_a.add_multiple_once(&k_digits(ONCE_BITS), ONCE_BITS, &mut expected).is_none() {
                    return false;
                }
            }
        }
        expected.encode() == r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::edwards::EdwardsPoint;
    use curve25519_dalek::scalar::Scalar;

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

    fn ours(p: &EdwardsPoint) -> Point {
        Point::decode(&p.compress().0).unwrap()
    }

    /// The signed digits of `k` of width `bits`, as verification makes them.
    fn digits(k: &Scalar, bits: usize) -> Vec<i16> {
        let mut be = k.to_bytes();
        be.reverse();
        crate::jose::ec::signed_digits(&be, bits)
    }

    /// Scalars whose digits reach every extreme: products, 0, 1, -1 (l - 1), ±2^(w-1).
    fn scalars(bits: usize) -> Vec<Scalar> {
        let mut k = Scalar::from(3u64);
        let half = Scalar::from(1u64 << (bits - 1));
        (0..6)
            .map(|_| {
                k = k * k + Scalar::from(0xdead_beef_u64);
                k
            })
            .chain([Scalar::ZERO, Scalar::ONE, -Scalar::ONE, half, -half])
            .collect()
    }

    #[test]
    fn tables_of_every_width_match_dalek_multiplication() {
        let p = ED25519_BASEPOINT_POINT * Scalar::from(0x1234_5678_u64);
        for bits in NielsTable::WIDTHS {
            let table = NielsTable::new(&ours(&p), bits).unwrap();
            for k in scalars(bits) {
                let mut acc = Point::IDENTITY;
                table.add_digits(&digits(&k, bits), &mut acc);
                assert_eq!(acc.encode(), (p * k).compress().0, "{bits} bits");
                // Onto an accumulator that already holds a point.
                let mut acc = ours(&p);
                table.add_digits(&digits(&k, bits), &mut acc);
                assert_eq!(acc.encode(), (p + p * k).compress().0, "{bits} bits, added");
            }
        }
        let mut acc = Point::IDENTITY;
        let s = Scalar::from(0x0bad_cafe_u64) * Scalar::from(0x7777_u64);
        basepoint_table().unwrap().add_digits(&digits(&s, 8), &mut acc);
        assert_eq!(acc.encode(), EdwardsPoint::mul_base(&s).compress().0);
    }

    #[test]
    fn multiplication_without_a_table_matches_dalek_for_every_width() {
        let p = ED25519_BASEPOINT_POINT * Scalar::from(0x0fed_cba9_u64);
        for bits in NielsTable::WIDTHS {
            for k in scalars(bits) {
                let mut acc = Point::IDENTITY;
                ours(&p).add_multiple_once(&digits(&k, bits), bits, &mut acc).unwrap();
                assert_eq!(acc.encode(), (p * k).compress().0, "{bits} bits");
                let mut acc = ours(&ED25519_BASEPOINT_POINT);
                ours(&p).add_multiple_once(&digits(&k, bits), bits, &mut acc).unwrap();
                assert_eq!(acc.encode(), (ED25519_BASEPOINT_POINT + p * k).compress().0, "{bits} bits, added");
            }
        }
        let mut acc = Point::IDENTITY;
        assert!(ours(&p).add_multiple_once(&[1], 9, &mut acc).is_none());
    }

    #[test]
    fn scalars_are_read_and_reduced_as_dalek_does() {
        for i in 0u32..300 {
            let wide: [u8; 64] = hmac_sha512::Hash::hash(i.to_le_bytes());
            let r: [u8; 32] = wide[..32].try_into().unwrap();
            let a: [u8; 32] = wide[32..].try_into().unwrap();
            let message = i.to_be_bytes();
            // k = H(R || A || M) mod l.
            let mut hasher = hmac_sha512::Hash::new();
            hasher.update(r);
            hasher.update(a);
            hasher.update(message);
            let mut theirs = Scalar::from_bytes_mod_order_wide(&hasher.finalize()).to_bytes();
            theirs.reverse();
            assert_eq!(challenge(&r, &a, &message), Some(theirs));
            // S canonical exactly when dalek says so; its value unchanged.
            for mut s in [r, a] {
                s[31] &= if i % 2 == 0 { 0x1f } else { 0xff };
                let canonical = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)).map(|s| {
                    let mut be = s.to_bytes();
                    be.reverse();
                    be
                });
                assert_eq!(canonical_scalar(&s), canonical, "{s:?}");
            }
        }
        // l - 1 is the largest canonical scalar, l the smallest that is not.
        let mut l_minus_1 = (-Scalar::ONE).to_bytes();
        assert!(canonical_scalar(&l_minus_1).is_some());
        l_minus_1[0] += 1;
        assert!(canonical_scalar(&l_minus_1).is_none());
    }

    #[test]
    fn a_table_width_outside_the_digits_range_is_refused() {
        let b = ours(&ED25519_BASEPOINT_POINT);
        assert!(NielsTable::new(&b, 1).is_none());
        assert!(NielsTable::new(&b, 9).is_none());
        assert_eq!(NielsTable::new(&b, 8).unwrap().bits(), 8);
    }

    #[test]
    fn the_small_order_encodings_are_the_eight_torsion_points() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let mut theirs: Vec<[u8; 32]> = EIGHT_TORSION.iter().map(|p| p.compress().0).collect();
        let mut ours = SMALL_ORDER_ENCODINGS.to_vec();
        theirs.sort();
        ours.sort();
        assert_eq!(ours, theirs);
    }

    /// A key with a small-order component (accepted: it is not itself of small order) can make
    /// a signature whose R is a small-order point and whose equation holds without the
    /// cofactor: A = aB + T, S = k·a, then [S]B - [k]A = -[k]T. Both paths refuse it.
    #[test]
    fn a_small_order_r_is_refused_even_when_the_equation_holds() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        let a = Scalar::from(0x1234_5678_9abc_u64);
        let public = ED25519_BASEPOINT_POINT * a + EIGHT_TORSION[1];
        let encoded = public.compress().0;
        let plain = Ed25519Key::from_bytes(&encoded).expect("a mixed-order key is accepted");
        let mut found = 0;
        for n in 0u32..64 {
            let message = n.to_le_bytes();
            for r in SMALL_ORDER_ENCODINGS {
                let mut hasher = hmac_sha512::Hash::new();
                hasher.update(r);
                hasher.update(encoded);
                hasher.update(message);
                let k = Scalar::from_bytes_mod_order_wide(&hasher.finalize());
                let s = k * a;
                // Only an R the equation gives: -[k]T.
                let equation = EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &-public, &s);
                if equation.compress().0 != r {
                    continue;
                }
                found += 1;
                let mut signature = r.to_vec();
                signature.extend_from_slice(&s.to_bytes());
                assert!(!plain.verify(&message, &signature), "plain path, R = {r:?}");
                assert!(!plain.precomputed().verify(&message, &signature), "precomputed path, R = {r:?}");
            }
        }
        assert!(found > 0, "no message gave a small-order R within 64 tries");
    }

    #[test]
    fn every_small_order_point_is_refused_as_a_key() {
        use curve25519_dalek::constants::EIGHT_TORSION;
        for torsion in EIGHT_TORSION {
            let encoded = torsion.compress().0;
            assert!(Ed25519Key::from_bytes(&encoded).is_none(), "{encoded:?}");
            // The same point plus the basepoint is of mixed order: accepted, as before.
            let mixed = (torsion + ED25519_BASEPOINT_POINT).compress().0;
            assert!(Ed25519Key::from_bytes(&mixed).is_some(), "{mixed:?}");
        }
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
