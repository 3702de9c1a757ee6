//! ECDSA verification, ES256 and ES384 (RFC 7518 §3.4: the signature is `r || s`, raw, no
//! DER), on the group arithmetic of RustCrypto's `p256` and `p384`.
//!
//! Verification computes `u1·G + u2·Q` and compares its x-coordinate with `r` (SEC 1 §4.1.4).
//! Key, message and signature are public, so the variable-time operations used here (wNAF,
//! skipping zero digits, variable-time inversion) leak nothing secret.
//!
//! A P-256 key that verifies many signatures (a DPoP client's) can carry a table of multiples of
//! its point ([`P256Key::precomputed`]): `u2·Q` then costs at most 43 mixed additions and no
//! doublings instead of ~256 doublings, and `u1·G` at most 33 with the generator's wider table
//! (built once per VM).

use std::sync::OnceLock;

use p256::elliptic_curve::group::Group as _;
use p256::elliptic_curve::ops::{MulByGeneratorVartime as _, Reduce};
use p256::elliptic_curve::point::AffineCoordinates as _;
use p256::elliptic_curve::{Field as _, PrimeField as _};

use mcp_guard_p256::{Affine, Jacobian, P_BE as P256_PRIME_BE};

/// Splits a raw `r || s` signature of two `N`-byte halves.
fn halves<const N: usize>(signature: &[u8]) -> Option<([u8; N], [u8; N])> {
    if signature.len() != 2 * N {
        return None;
    }
    let (r, s) = signature.split_at(N);
    Some((r.try_into().ok()?, s.try_into().ok()?))
}

/// Window width of the generator's table: 33 rows of 128 affine points (304 KB once per VM), so
/// `u1·G` is at most 33 mixed additions (37 with 7-bit rows and half the memory).
const GENERATOR_BITS: usize = 8;
/// Window width of a key's table: 43 rows of 32 affine points (99 KB per key), so `u2·Q` is
/// at most 43 mixed additions. Measured in V8 (Node 20), one ES256 verification: 196 µs with
/// the earlier projective radix-16 key table, 142 µs with 6-bit affine rows for both points,
/// 134 µs with 7 bits for the generator, 124 µs with 7 for the key too (twice the memory).
const KEY_BITS: usize = 6;

/// `rows[i][j]` is `(j + 1)·2^(w·i)·P` for `j` below `2^(w-1)`, affine, in the wasm-friendly
/// field form of `mcp_guard_p256` (filter/p256): every addition of a multiplication is a mixed one.
struct AffineTable {
    bits: usize,
    rows: Box<[Box<[Affine]>]>,
}

impl AffineTable {
    /// `bits` is 2..=8 (the range of [`signed_digits`]). The multiples are computed with the
    /// `p256` crate; `None` if one were the identity (impossible: the group has prime order).
    fn new(point: p256::ProjectivePoint, bits: usize) -> Option<AffineTable> {
        use p256::elliptic_curve::group::Curve as _;
        let half = 1usize << (bits - 1);
        let mut base = point;
        let mut projective = Vec::with_capacity((256 / bits + 1) * half);
        for _ in 0..256 / bits + 1 {
            let mut acc = base;
            projective.push(acc);
            for _ in 1..half {
                acc += base;
                projective.push(acc);
            }
            for _ in 0..bits {
                base = base.double();
            }
        }
        // One field inversion for the whole table.
        let mut affine = vec![p256::AffinePoint::IDENTITY; projective.len()];
        p256::ProjectivePoint::batch_normalize(&projective, &mut affine);
        let converted = affine
            .iter()
            .map(|a| (!bool::from(a.is_identity())).then(|| Affine::from_be(&a.x().into(), &a.y().into())))
            .collect::<Option<Vec<Affine>>>()?;
        Some(AffineTable { bits, rows: converted.chunks(half).map(Box::from).collect() })
    }

    /// `acc + k·P`, variable time: one signed digit per row, one mixed addition for each
    /// digit that is not zero. `None` if an addition met an exceptional case.
    fn add_multiple(&self, k: &p256::Scalar, acc: &mut Jacobian) -> Option<()> {
        let be: [u8; 32] = k.to_repr().into();
        for (row, digit) in self.rows.iter().zip(signed_digits(&be, self.bits)) {
            let Some(index) = usize::from(digit.unsigned_abs()).checked_sub(1) else {
                continue;
            };
            acc.add_affine(row.get(index)?, digit < 0)?;
        }
        Some(())
    }
}

/// The generator's table, built on first use (a few milliseconds in wasm32), then shared.
fn generator_table() -> Option<&'static AffineTable> {
    static TABLE: OnceLock<Option<AffineTable>> = OnceLock::new();
    TABLE.get_or_init(|| AffineTable::new(p256::ProjectivePoint::GENERATOR, GENERATOR_BITS)).as_ref()
}

/// Signed digits of `width` bits (2..=8) of a big-endian 256-bit integer, least significant
/// first, each in `-2^(width-1)..=2^(width-1)`, with `sum(d[i]·2^(width·i))` equal to it.
pub(super) fn signed_digits(be: &[u8; 32], width: usize) -> Vec<i16> {
    let mut le = *be;
    le.reverse();
    let byte = |i: usize| u32::from(le.get(i).copied().unwrap_or(0));
    let count = 256 / width + 1;
    let (full, half, mask) = (1i16 << width, 1i16 << (width - 1), (1u32 << width) - 1);
    let mut carry = 0i16;
    (0..count)
        .map(|w| {
            // A window of at most 8 bits starts in one byte and ends in it or the next.
            let bit = w * width;
            let raw = ((byte(bit / 8) | byte(bit / 8 + 1) << 8) >> (bit % 8)) & mask;
            let value = raw as i16 + carry;
            carry = i16::from(value > half);
            value - carry * full
        })
        .collect()
}

pub(super) struct P256Key {
    point: p256::ProjectivePoint,
    table: Option<AffineTable>,
}

impl P256Key {
    /// The point `(x, y)` if it is on the curve (the identity has no affine coordinates).
    pub(super) fn from_coordinates(x: &[u8; 32], y: &[u8; 32]) -> Option<P256Key> {
        // Coordinates in the field and on the curve (never the identity, which has none).
        let point = p256::AffinePoint::from_coordinates(&(*x).into(), &(*y).into());
        Some(P256Key { point: Option::<p256::AffinePoint>::from(point)?.into(), table: None })
    }

    pub(super) fn precomputed(&self) -> P256Key {
        P256Key { point: self.point, table: AffineTable::new(self.point, KEY_BITS) }
    }

    pub(super) fn is_precomputed(&self) -> bool {
        self.table.is_some()
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verify_digest(&super::sha256(message), signature)
    }

    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8]) -> bool {
        use p256::{FieldBytes, ProjectivePoint, Scalar, U256};
        let Some((r, s)) = halves::<32>(signature) else {
            return false;
        };
        // r and s must be in 1..n.
        let (Some(r), Some(s)) = (
            Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(r))),
            Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(s))),
        ) else {
            return false;
        };
        if bool::from(r.is_zero()) || bool::from(s.is_zero()) {
            return false;
        }
        let z = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(digest));
        let Some(w) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let (u1, u2) = (z * w, r * w);
        // With tables: the x-coordinate of u1·G + u2·Q must be r, or r + n when that is
        // still below p (the x-coordinate is reduced mod n).
        if let (Some(table), Some(generator)) = (&self.table, generator_table()) {
            let mut sum = Jacobian::IDENTITY;
            if generator.add_multiple(&u1, &mut sum).and_then(|()| table.add_multiple(&u2, &mut sum)).is_some() {
                let r_int = U256::from_be_slice(&r.to_repr());
                let order = <p256::NistP256 as p256::elliptic_curve::Curve>::ORDER;
                let p_minus_n = U256::from_be_slice(&P256_PRIME_BE).wrapping_sub(&order);
                let wrapped = r_int < p_minus_n && sum.has_x(&r_int.wrapping_add(&order).to_be_bytes().into());
                return sum.has_x(&r.to_repr().into()) || wrapped;
            }
            // An exceptional addition (a doubling): the plain computation below decides.
        }
        let point = ProjectivePoint::mul_by_generator_and_mul_add_vartime(&u1, &u2, &self.point).to_affine();
        if bool::from(point.is_identity()) {
            return false;
        }
        <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(&point.x())) == r
    }
}

pub(super) struct P384Key {
    point: p384::ProjectivePoint,
}

impl P384Key {
    pub(super) fn from_coordinates(x: &[u8; 48], y: &[u8; 48]) -> Option<P384Key> {
        let point = p384::AffinePoint::from_coordinates(&(*x).into(), &(*y).into());
        Some(P384Key { point: Option::<p384::AffinePoint>::from(point)?.into() })
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use p384::{FieldBytes, ProjectivePoint, Scalar, U384};
        let Some((r, s)) = halves::<48>(signature) else {
            return false;
        };
        let (Some(r), Some(s)) = (
            Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(r))),
            Option::<Scalar>::from(Scalar::from_repr(FieldBytes::from(s))),
        ) else {
            return false;
        };
        if bool::from(r.is_zero()) || bool::from(s.is_zero()) {
            return false;
        }
        let digest = hmac_sha512::sha384::Hash::hash(message);
        let z = <Scalar as Reduce<U384>>::reduce(&U384::from_be_slice(&digest));
        let Some(w) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let point = ProjectivePoint::mul_by_generator_and_mul_add_vartime(&(z * w), &(r * w), &self.point).to_affine();
        if bool::from(point.is_identity()) {
            return false;
        }
        <Scalar as Reduce<U384>>::reduce(&U384::from_be_slice(&point.x())) == r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn hex<const N: usize>(text: &str) -> [u8; N] {
        let clean: String = text.split_whitespace().collect();
        let bytes: Vec<u8> = (0..clean.len()).step_by(2).map(|i| u8::from_str_radix(&clean[i..i + 2], 16).unwrap()).collect();
        bytes.try_into().unwrap()
    }

    /// RFC 6979 A.2.5: the P-256 key and its deterministic ECDSA signatures with SHA-256 of
    /// "sample" and "test".
    fn rfc6979_key() -> P256Key {
        P256Key::from_coordinates(
            &hex("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"),
            &hex("7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"),
        )
        .unwrap()
    }

    const RFC6979_SAMPLE: &str = "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
                                  F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8";
    const RFC6979_TEST: &str = "F1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367
                                019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083";

    #[test]
    fn rfc6979_p256_vectors_verify_with_and_without_table() {
        let plain = rfc6979_key();
        let tabled = plain.precomputed();
        for key in [&plain, &tabled] {
            let sample: [u8; 64] = hex(RFC6979_SAMPLE);
            let test: [u8; 64] = hex(RFC6979_TEST);
            assert!(key.verify(b"sample", &sample));
            assert!(key.verify(b"test", &test));
            // Crossed messages, a flipped bit in r or s, s replaced by n - s... all fail.
            assert!(!key.verify(b"test", &sample));
            assert!(!key.verify(b"sample", &test));
            for byte in [0, 31, 32, 63] {
                let mut bad = sample;
                bad[byte] ^= 1;
                assert!(!key.verify(b"sample", &bad), "bit flip in byte {byte}");
            }
            assert!(!key.verify(b"sample", &sample[..63]), "short");
            assert!(!key.verify(b"sample", &[0u8; 64]), "r = s = 0");
            let mut n_as_s = sample;
            n_as_s[32..].copy_from_slice(&hex::<32>("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551"));
            assert!(!key.verify(b"sample", &n_as_s), "s = n is out of range");
        }
    }

    #[test]
    fn points_off_the_curve_are_refused() {
        let x = hex::<32>("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6");
        let mut y = hex::<32>("7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299");
        y[31] ^= 1;
        assert!(P256Key::from_coordinates(&x, &y).is_none());
        assert!(P256Key::from_coordinates(&[0; 32], &[0; 32]).is_none());
        assert!(P384Key::from_coordinates(&[0; 48], &[0; 48]).is_none());
    }

    #[test]
    fn affine_tables_of_every_width_match_the_generic_multiplication() {
        use p256::elliptic_curve::point::AffineCoordinates as _;
        use p256::{ProjectivePoint, Scalar};
        let x_of = |p: ProjectivePoint| -> [u8; 32] { p.to_affine().x().into() };
        let q = ProjectivePoint::GENERATOR * Scalar::from(0x1234_5678_9abc_def0u64);
        for bits in 2..=8 {
            let table = AffineTable::new(q, bits).unwrap();
            let mul = |k: &Scalar| {
                let mut sum = Jacobian::IDENTITY;
                table.add_multiple(k, &mut sum).map(|()| sum)
            };
            // Small, large, n - 1 (all digits at their extremes), and digits at ±2^(w-1).
            let mut k = Scalar::from(3u64);
            let half = Scalar::from(1u64 << (bits - 1));
            for k in (0..8)
                .map(|_| {
                    k = k * k + Scalar::from(0xdead_beefu64);
                    k
                })
                .chain([-Scalar::ONE, half, Scalar::from(5u64)])
            {
                assert!(mul(&k).unwrap().has_x(&x_of(q * k)), "{bits} bits");
                assert!(!mul(&k).unwrap().has_x(&x_of(q * (k + Scalar::ONE))), "{bits} bits");
            }
            // Zero leaves the identity, which has no x-coordinate.
            assert!(!mul(&Scalar::ZERO).unwrap().has_x(&[0; 32]));
        }
        let generator = generator_table().unwrap();
        let mut sum = Jacobian::IDENTITY;
        generator.add_multiple(&Scalar::from(0x0bad_cafeu64), &mut sum).unwrap();
        assert!(sum.has_x(&x_of(ProjectivePoint::GENERATOR * Scalar::from(0x0bad_cafeu64))));
    }

    /// u1·G + u2·Q meeting a table point on the way (a doubling) falls back to the plain
    /// computation. Key Q = G (secret 1); a signature built so that u1 = 1 and u2 = k - 1
    /// with k ≡ 2 mod 64: the sum is G after the generator's rows, and the key's first row
    /// adds G again.
    #[test]
    fn an_exceptional_addition_falls_back_to_the_plain_path() {
        use p256::elliptic_curve::point::AffineCoordinates as _;
        use p256::{ProjectivePoint, Scalar, U256};
        let g = ProjectivePoint::GENERATOR.to_affine();
        let key = P256Key::from_coordinates(&g.x().into(), &g.y().into()).unwrap().precomputed();
        let k = Scalar::from(2u64 + 64 * 0x1234_5678);
        let r = <Scalar as Reduce<U256>>::reduce(&U256::from_be_slice(&(ProjectivePoint::GENERATOR * k).to_affine().x()));
        // s = k^-1 (z + r·1) = z when z = r / (k - 1).
        let z = r * (k - Scalar::ONE).invert().unwrap();
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&r.to_repr());
        signature[32..].copy_from_slice(&z.to_repr());
        let digest: [u8; 32] = z.to_repr().into();
        // The fast path alone stops at the doubling...
        let mut sum = Jacobian::IDENTITY;
        generator_table().unwrap().add_multiple(&Scalar::ONE, &mut sum).unwrap();
        assert!(key.table.as_ref().unwrap().add_multiple(&(k - Scalar::ONE), &mut sum).is_none());
        // ...and the signature still verifies, through the plain computation; a wrong digest does not.
        assert!(key.verify_digest(&digest, &signature));
        let mut other = digest;
        other[31] ^= 1;
        assert!(!key.verify_digest(&other, &signature));
    }

    #[test]
    fn signed_digits_sum_back_for_every_width() {
        for width in 2..=8 {
            let hashed = (0u8..4).map(|i| hmac_sha256::Hash::hash(&[i, width as u8]));
            for be in [[0xffu8; 32], [0x20; 32], [0x55; 32], [0; 32]].into_iter().chain(hashed) {
                let digits = signed_digits(&be, width);
                let half = 1i64 << (width - 1);
                assert!(digits.iter().all(|d| (-half..=half).contains(&i64::from(*d))), "width {width}");
                let mut expect = be;
                expect.reverse();
                let mut sum = vec![0i64; 40];
                for (i, d) in digits.iter().enumerate() {
                    let shift = i * width;
                    sum[shift / 8] += i64::from(*d) << (shift % 8);
                }
                let mut carry = 0i64;
                let bytes: Vec<u8> = sum
                    .iter()
                    .map(|v| {
                        let t = v + carry;
                        carry = t.div_euclid(256);
                        t.rem_euclid(256) as u8
                    })
                    .collect();
                assert_eq!(&bytes[..32], &expect, "width {width}");
                assert!(bytes[32..].iter().all(|b| *b == 0));
            }
        }
    }
}
