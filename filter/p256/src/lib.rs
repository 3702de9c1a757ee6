//! P-256 arithmetic for mcp-guard's precomputed ECDSA path (`filter/src/jose/ec.rs`), in a form that suits
//! wasm32: field elements of nine 29-bit limbs, multiplied with 64-bit products that never
//! overflow (a column of nine products stays below 2^61.2, and the reduction adds less than
//! 2^54 to it), reduced in Montgomery form with R = 2^261. p ≡ -1 mod 2^96, so each reduction
//! step's multiplier is just the low 29 bits and adding it times
//! p = 2^256 - 2^224 + 2^192 + 2^96 - 1 is four shifted additions. The `p256` crate's saturated
//! 32-bit limbs spend most of their instructions on carries, which wasm has no flags for.
//! Nine limbs of 29 bits need 81 products per multiplication where ten of 26 needed 100.
//! Measured in V8 (Node 20): 57–73 ns per multiplication with ten 26-bit limbs (about twice
//! that when built at opt-level "s", hence a crate of its own); one ES256 verification with
//! the same tables 56 µs on that arithmetic, 130 µs on the crate's.
//!
//! Only what verification with precomputed tables needs: affine table points (made by the
//! `p256` crate and converted), a Jacobian accumulator with the mixed addition, and the final
//! comparison of the x-coordinate with `r`, done without an inversion. The addition formulas
//! are incomplete: when one would double or meet its own negation the caller is told
//! ([`Jacobian::add_affine`] returns `None`) and verifies the plain way instead, so the result
//! never depends on an exceptional case. All data here is public (key, message, signature).
#![forbid(unsafe_code)]

/// Bits per limb, and limbs: 9 × 29 = 261 bits.
const BITS: u32 = 29;
const MASK: i64 = (1 << BITS) - 1;
const LIMBS: usize = 9;

/// A field element in Montgomery form (`x·2^261 mod p`, not necessarily below p): value below
/// 2^257, limbs 0..=7 in `0..2^29`, limb 8 the rest (below 2^25). 72 bytes in a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fe([u32; LIMBS]);

/// p, 2p (the other spellings of zero below 2^257) and R² mod p, as normalized limbs.
struct Constants {
    p: Fe,
    p2: Fe,
    /// 4p in limbs (not normalized: each limb of p times 4), added before a subtraction.
    p4: [i64; LIMBS],
    /// 2^522 mod p (plain, not Montgomery): multiplying by it enters Montgomery form.
    r2: Fe,
    /// 1, in Montgomery form.
    one: Fe,
}

/// The field prime, big-endian.
pub const P_BE: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
];

fn constants() -> &'static Constants {
    static CONSTANTS: std::sync::OnceLock<Constants> = std::sync::OnceLock::new();
    CONSTANTS.get_or_init(|| {
        let p = Fe::plain_from_be(&P_BE);
        let p2 = Fe::normalize(p.0.map(|limb| 2 * i64::from(limb)));
        let p4 = p.0.map(|limb| 4 * i64::from(limb));
        // 2^522 mod p by doubling 1 (add keeps the value below 2^257 and congruent); then
        // 1 in Montgomery form is 2^522 · 1 / 2^261.
        let mut r2 = Fe::plain_from_be(&one_be());
        for _ in 0..522 {
            r2 = r2.add(&r2);
        }
        let one = Fe::plain_from_be(&one_be()).mul(&r2);
        Constants { p, p2, p4, r2, one }
    })
}

impl Fe {
    pub const ZERO: Fe = Fe([0; LIMBS]);

    /// Carries signed limbs into the normalized form. The value must be non-negative and below
    /// 2^263: bits from 256 up are folded back with 2^256 ≡ 2^224 - 2^192 - 2^96 + 1.
    #[allow(clippy::indexing_slicing)] // fixed arrays, constant indices: all in range
    fn normalize(mut t: [i64; LIMBS]) -> Fe {
        Fe::carry(&mut t);
        // Limb 8 holds bits 232 and up: keep 24 of them (to bit 255), fold the rest.
        let high = t[8] >> 24;
        t[8] &= (1 << 24) - 1;
        t[0] += high;
        t[3] -= high << 9; // 2^96 = limb 3, bit 9
        t[6] -= high << 18; // 2^192 = limb 6, bit 18
        t[7] += high << 21; // 2^224 = limb 7, bit 21
        Fe::carry(&mut t);
        Fe(t.map(|limb| limb as u32))
    }

    /// One pass of carries: limbs 0..=7 into `0..2^29` (arithmetic shifts floor negative
    /// limbs), limb 8 takes the rest.
    #[allow(clippy::indexing_slicing)] // i + 1 <= 8
    fn carry(t: &mut [i64; LIMBS]) {
        for i in 0..LIMBS - 1 {
            let c = t[i] >> BITS;
            t[i] -= c << BITS;
            t[i + 1] += c;
        }
    }

    /// The integer of 32 big-endian bytes, as limbs (not Montgomery form).
    fn plain_from_be(bytes: &[u8; 32]) -> Fe {
        let mut t = [0i64; LIMBS];
        for (i, byte) in bytes.iter().rev().enumerate() {
            let bit = i * 8;
            if let Some(limb) = t.get_mut(bit / BITS as usize) {
                *limb += i64::from(*byte) << (bit % BITS as usize);
            }
        }
        Fe::normalize(t)
    }

    /// The field element of a big-endian integer below 2^256, in Montgomery form.
    pub fn from_be(bytes: &[u8; 32]) -> Fe {
        Fe::plain_from_be(bytes).mul(&constants().r2)
    }

    pub fn add(&self, other: &Fe) -> Fe {
        let mut t = [0i64; LIMBS];
        for ((slot, a), b) in t.iter_mut().zip(self.0).zip(other.0) {
            *slot = i64::from(a) + i64::from(b);
        }
        Fe::normalize(t)
    }

    /// `self - other + 4p`: never negative, as other is below 2^257 < 4p.
    pub fn sub(&self, other: &Fe) -> Fe {
        let mut t = constants().p4;
        for ((slot, a), b) in t.iter_mut().zip(self.0).zip(other.0) {
            *slot += i64::from(a) - i64::from(b);
        }
        Fe::normalize(t)
    }

    /// `self · k` for a small k (at most 64).
    pub fn times(&self, k: i64) -> Fe {
        Fe::normalize(self.0.map(|a| i64::from(a) * k))
    }

    /// Montgomery multiplication: `self · other / 2^261 mod p`, below 2^257.
    ///
    /// Bounds: limbs below 2^29 (the top one below 2^25), so a product is below 2^58 and a
    /// column of nine below 2^61.2; each reduction step adds at most 2^53 (`m << 24`) and a carry
    /// below 2^33 to a column, nine steps at most 2^54 — all far below 2^63. The result,
    /// `(a·b + M·p) / 2^261` with `a, b < 2^257` and `M < 2^261`, is below 2^253 + p < 2^257.
    #[allow(clippy::indexing_slicing)] // fixed arrays, loop bounds constant: i + j <= 16, i + 8 <= 16
    pub fn mul(&self, other: &Fe) -> Fe {
        let (a, b) = (self.0.map(i64::from), other.0.map(i64::from));
        let mut t = [0i64; 2 * LIMBS];
        for (i, ai) in a.iter().enumerate() {
            for (j, bj) in b.iter().enumerate() {
                t[i + j] += ai * bj;
            }
        }
        // Nine steps: m = t mod 2^29 (-p^-1 ≡ 1 mod 2^29), then t += m·p and the low limb,
        // now a multiple of 2^29, carries up.
        for i in 0..LIMBS {
            let m = t[i] & MASK;
            t[i] -= m;
            t[i + 3] += m << 9; // 2^96 = limb 3, bit 9
            t[i + 6] += m << 18; // 2^192 = limb 6, bit 18
            t[i + 7] -= m << 21; // 2^224 = limb 7, bit 21
            t[i + 8] += m << 24; // 2^256 = limb 8, bit 24
            t[i + 1] += t[i] >> BITS;
        }
        let mut high = [0i64; LIMBS];
        high.copy_from_slice(&t[LIMBS..]);
        Fe::normalize(high)
    }

    pub fn square(&self) -> Fe {
        self.mul(self)
    }

    /// Zero mod p: with values below 2^257, exactly 0, p or 2p (normalized limbs are unique).
    pub fn is_zero(&self) -> bool {
        let c = constants();
        *self == Fe::ZERO || *self == c.p || *self == c.p2
    }

    pub fn equals(&self, other: &Fe) -> bool {
        self.sub(other).is_zero()
    }
}

/// An affine table point.
#[derive(Clone, Copy, Debug)]
pub struct Affine {
    x: Fe,
    y: Fe,
}

impl Affine {
    /// From big-endian affine coordinates of a point on the curve (the caller's `p256` point).
    pub fn from_be(x: &[u8; 32], y: &[u8; 32]) -> Affine {
        Affine { x: Fe::from_be(x), y: Fe::from_be(y) }
    }
}

/// A point in Jacobian coordinates (x = X/Z², y = Y/Z³), or the identity.
#[derive(Clone, Copy, Debug)]
pub struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
    identity: bool,
}

impl Jacobian {
    pub const IDENTITY: Jacobian = Jacobian { x: Fe::ZERO, y: Fe::ZERO, z: Fe::ZERO, identity: true };

    /// `self + q` (or `self - q`): 8 multiplications and 3 squarings (add-1998-cmo-2 with
    /// Z2 = 1). `None` when the formula does not apply (`self` is `±q`): the caller
    /// then computes the whole verification the plain way.
    pub fn add_affine(&mut self, q: &Affine, negate: bool) -> Option<()> {
        let y2 = if negate { Fe::ZERO.sub(&q.y) } else { q.y };
        if self.identity {
            *self = Jacobian { x: q.x, y: y2, z: constants().one, identity: false };
            return Some(());
        }
        let z1z1 = self.z.square();
        let u2 = q.x.mul(&z1z1);
        let s2 = y2.mul(&self.z.mul(&z1z1));
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y);
        if h.is_zero() {
            if r.is_zero() {
                return None; // self = q: a doubling
            }
            *self = Jacobian::IDENTITY; // self = -q
            return Some(());
        }
        let hh = h.square();
        let hhh = h.mul(&hh);
        let v = self.x.mul(&hh);
        let x3 = r.square().sub(&hhh).sub(&v.times(2));
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&hhh));
        let z3 = self.z.mul(&h);
        *self = Jacobian { x: x3, y: y3, z: z3, identity: false };
        Some(())
    }

    /// Whether the affine x-coordinate, as an integer, is `x` (big-endian, below p):
    /// `X = x·Z²`, with no inversion.
    pub fn has_x(&self, x: &[u8; 32]) -> bool {
        !self.identity && self.x.equals(&Fe::from_be(x).mul(&self.z.square()))
    }
}

fn one_be() -> [u8; 32] {
    let mut one = [0u8; 32];
    if let Some(last) = one.last_mut() {
        *last = 1;
    }
    one
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use crypto_bigint::{NonZero, U256};
    use p256::elliptic_curve::point::AffineCoordinates as _;
    use p256::elliptic_curve::sec1::ToSec1Point as _;
    use p256::{ProjectivePoint, Scalar};

    use super::*;

    fn p() -> NonZero<U256> {
        NonZero::new(U256::from_be_slice(&P_BE)).unwrap()
    }

    /// The plain integer a field element stands for, reduced: multiply by 1 leaves Montgomery
    /// form, then subtract p while it is at least p.
    fn value(fe: &Fe) -> U256 {
        let plain = fe.mul(&Fe::plain_from_be(&one_be()));
        let mut acc = U256::ZERO;
        for limb in plain.0.iter().rev() {
            acc = acc.shl_vartime(BITS).wrapping_add(&U256::from_u32(*limb));
        }
        acc.add_mod(&U256::ZERO, &p())
    }

    fn be(v: &U256) -> [u8; 32] {
        v.to_be_bytes().into()
    }

    /// Values at the edges (0, 1, p - 1, 2^256 - 1 mod p, all-ones limbs) and a spread of others.
    fn samples() -> Vec<U256> {
        let p = *p();
        let mut out = vec![U256::ZERO, U256::ONE, p.wrapping_sub(&U256::ONE), U256::MAX.add_mod(&U256::ZERO, &NonZero::new(p).unwrap())];
        let mut x = U256::from_u64(0x1234_5678_9abc_def1);
        for _ in 0..40 {
            x = x.mul_mod(&x, &NonZero::new(p).unwrap()).add_mod(&U256::from_u64(0xfeed), &NonZero::new(p).unwrap());
            out.push(x);
        }
        out
    }

    #[test]
    fn field_operations_agree_with_big_integers_mod_p() {
        let p = p();
        let all = samples();
        for a in &all {
            let fa = Fe::from_be(&be(a));
            assert_eq!(value(&fa), *a, "round trip");
            for b in all.iter().step_by(3) {
                let fb = Fe::from_be(&be(b));
                assert_eq!(value(&fa.mul(&fb)), a.mul_mod(b, &p), "mul");
                assert_eq!(value(&fa.add(&fb)), a.add_mod(b, &p), "add");
                assert_eq!(value(&fa.sub(&fb)), a.sub_mod(b, &p), "sub");
                assert_eq!(fa.equals(&fb), a == b);
            }
            assert_eq!(value(&fa.times(8)), a.mul_mod(&U256::from_u8(8), &p));
            assert_eq!(value(&fa.square()), a.mul_mod(a, &p));
        }
        // Chains keep the bounds: results fed back in many times over.
        let (mut acc, mut expect) = (Fe::from_be(&be(&all[5])), all[5]);
        for b in &all {
            let fb = Fe::from_be(&be(b));
            acc = acc.add(&fb).sub(&fb.times(3)).mul(&acc.add(&acc));
            let t = expect.add_mod(b, &p).sub_mod(&b.mul_mod(&U256::from_u8(3), &p), &p);
            expect = t.mul_mod(&expect.add_mod(&expect, &p), &p);
            assert_eq!(value(&acc), expect);
        }
        assert!(Fe::from_be(&P_BE).is_zero(), "p is zero");
    }

    /// The integer a field element's limbs spell, not reduced (below 2^257 by construction).
    fn limbs_value(fe: &Fe) -> crypto_bigint::U512 {
        let mut acc = crypto_bigint::U512::ZERO;
        for limb in fe.0.iter().rev() {
            acc = acc.shl_vartime(BITS).wrapping_add(&crypto_bigint::U512::from_u32(*limb));
        }
        acc
    }

    /// Multiplication at the edges of its bounds: every limb at its largest (the value
    /// 2^257 - 1), single limbs at their largest, and limbs drawn at random below their bounds.
    /// Each product satisfies `out · 2^261 ≡ a · b (mod p)` and stays a normalized value below
    /// 2^257, checked on 512-bit integers.
    #[test]
    fn multiplication_holds_at_the_bounds_of_its_limbs() {
        use crypto_bigint::U512;
        let p512 = NonZero::new(U512::from_be_slice(&[[0u8; 32], P_BE].concat())).unwrap();
        let r = U512::ONE.shl_vartime(261).rem_vartime(&p512);
        let top_bound = (1u32 << 25) - 1;
        let mut samples = vec![Fe([MASK as u32, MASK as u32, MASK as u32, MASK as u32, MASK as u32, MASK as u32, MASK as u32, MASK as u32, top_bound])];
        for i in 0..LIMBS {
            let mut limbs = [0u32; LIMBS];
            limbs[i] = if i == LIMBS - 1 { top_bound } else { MASK as u32 };
            samples.push(Fe(limbs));
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..60 {
            let mut limbs = [0u32; LIMBS];
            for (i, limb) in limbs.iter_mut().enumerate() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let bound = if i == LIMBS - 1 { top_bound } else { MASK as u32 };
                // Half the limbs at their largest, the rest random.
                *limb = if seed & 1 == 0 { bound } else { (seed >> 8) as u32 & bound };
            }
            samples.push(Fe(limbs));
        }
        let two_257 = U512::ONE.shl_vartime(257);
        for a in &samples {
            for b in &samples {
                let out = a.mul(b);
                let value = limbs_value(&out);
                assert!(value < two_257, "{a:?} · {b:?}: {out:?} not below 2^257");
                assert!(out.0.iter().take(LIMBS - 1).all(|l| i64::from(*l) <= MASK), "{out:?} not normalized");
                let lhs = value.mul_mod(&r, &p512);
                let rhs = limbs_value(a).rem_vartime(&p512).mul_mod(&limbs_value(b).rem_vartime(&p512), &p512);
                assert_eq!(lhs, rhs, "{a:?} · {b:?}");
            }
        }
    }

    fn affine(point: &ProjectivePoint) -> Affine {
        let sec1 = point.to_affine().to_sec1_point(false);
        Affine::from_be(&sec1.x().unwrap().as_slice().try_into().unwrap(), &sec1.y().unwrap().as_slice().try_into().unwrap())
    }

    fn x_of(point: &ProjectivePoint) -> [u8; 32] {
        point.to_affine().x().into()
    }

    #[test]
    fn additions_agree_with_the_p256_crate_and_stop_at_exceptions() {
        let g = ProjectivePoint::GENERATOR;
        let mut expect = ProjectivePoint::IDENTITY;
        let mut acc = Jacobian::IDENTITY;
        let mut k = Scalar::from(7u64);
        for i in 0..30 {
            let q = g * k;
            let negate = i % 3 == 0;
            acc.add_affine(&affine(&q), negate).unwrap();
            expect += if negate { -q } else { q };
            assert!(acc.has_x(&x_of(&expect)), "step {i}");
            let mut other = x_of(&expect);
            other[31] ^= 1;
            assert!(!acc.has_x(&other));
            k = k * k + Scalar::from(11u64);
        }
        // P + P asks for the plain path; P - P is the identity, which has no x.
        let p = affine(&(g * Scalar::from(5u64)));
        let mut twice = Jacobian::IDENTITY;
        twice.add_affine(&p, false).unwrap();
        let mut copy = twice;
        assert!(copy.add_affine(&p, false).is_none());
        twice.add_affine(&p, true).unwrap();
        assert!(twice.identity && !twice.has_x(&[0; 32]));
    }
}
