//! Variable-time inversion modulo p = 2^255 - 19 by Bernstein and Yang's divsteps ("Fast
//! constant-time gcd computation and modular inversion", 2019), started at δ = 1/2 and run in
//! batches of 30: each batch looks at the low 30 bits of `f` and `g` only, gives a 2×2 matrix,
//! and the matrix is applied to the full numbers with 64-bit products of 30-bit limbs (what
//! wasm32 multiplies natively).
//!
//! An Ed25519 verification pays one inversion, to encode its result. As an exponentiation that
//! is 254 squarings and 11 multiplications, a third of the field operations of a precomputed
//! verification; here it is about twenty batches of a few hundred integer operations. It is
//! variable-time: every input is public (a point computed from a key, a message and a
//! signature). Anything unexpected (zero, no convergence within the bound) gives `None`, and
//! the caller falls back to the exponentiation.

/// Limbs of 30 bits: a product of two fits in 60 bits, a sum of a few of them in an `i64`.
const BITS: u32 = 30;
const MASK: i64 = (1 << BITS) - 1;
/// Nine limbs hold 270 bits: p, and the coefficients, which stay below 25p (< 2^260).
const LIMBS: usize = 9;

/// A signed integer `Σ limb[i]·2^(30i)`: every limb but the top one in `[0, 2^30)`, the top
/// one signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signed30([i64; LIMBS]);

/// p = 2^255 - 19: eight limbs of 2^30 - 1 (the lowest less 18) and 2^15 - 1 at 2^240.
const P: Signed30 = Signed30([MASK - 18, MASK, MASK, MASK, MASK, MASK, MASK, MASK, (1 << 15) - 1]);

/// `-p^-1 mod 2^30`: what makes `t + m·p` divisible by 2^30 for `m = t·NEG_P_INV mod 2^30`.
const NEG_P_INV: i64 = {
    let p0 = MASK - 18;
    // Newton's iteration x ← x·(2 - p0·x) doubles the correct low bits; an odd p0 is its own
    // inverse mod 8, so four rounds give 48 bits.
    let mut x = p0;
    let mut round = 0;
    while round < 4 {
        x = x.wrapping_mul(2i64.wrapping_sub(p0.wrapping_mul(x))) & MASK;
        round += 1;
    }
    (MASK + 1 - x) & MASK
};

/// Divsteps needed for 255-bit inputs started at δ = 1/2 are at most 590 (Bernstein and
/// Yang's bound); 24 batches are 720. Past it the inversion gives up rather than loop.
const MAX_BATCHES: usize = 24;

impl Signed30 {
    const ZERO: Signed30 = Signed30([0; LIMBS]);

    /// The little-endian 256-bit integer of `bytes`, not reduced.
    fn from_bytes(bytes: &[u8; 32]) -> Signed30 {
        let mut limbs = [0i64; LIMBS];
        let mut bytes = bytes.iter();
        let (mut acc, mut held) = (0u64, 0u32);
        for limb in &mut limbs {
            while held < BITS {
                let Some(byte) = bytes.next() else { break };
                acc |= u64::from(*byte) << held;
                held += 8;
            }
            *limb = (acc & MASK as u64) as i64;
            acc >>= BITS;
            held = held.saturating_sub(BITS);
        }
        Signed30(limbs)
    }

    /// The low 256 bits, little-endian (the caller makes sure nothing is above them).
    fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut limbs = self.0.iter();
        let (mut acc, mut held) = (0u64, 0u32);
        for byte in &mut out {
            while held < 8 {
                let Some(limb) = limbs.next() else { break };
                acc |= ((*limb & MASK) as u64) << held;
                held += BITS;
            }
            *byte = acc as u8;
            acc >>= 8;
            held = held.saturating_sub(8);
        }
        out
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|limb| *limb == 0)
    }

    /// `Some(1)` or `Some(-1)` if the value is one of them.
    fn unit_sign(&self) -> Option<i64> {
        let (low, rest) = self.0.split_first()?;
        let (top, middle) = rest.split_last()?;
        if *low == 1 && *top == 0 && middle.iter().all(|l| *l == 0) {
            return Some(1);
        }
        // -1: all ones below the top limb, which is -1.
        if *low == MASK && *top == -1 && middle.iter().all(|l| *l == MASK) {
            return Some(-1);
        }
        None
    }

    /// `sign·self + multiple·p`, carried back into the limb form.
    fn scaled_plus_p(&self, sign: i64, multiple: i64) -> Signed30 {
        let mut out = [0i64; LIMBS];
        let mut carry = 0i64;
        for ((slot, limb), p) in out.iter_mut().zip(&self.0).zip(&P.0) {
            carry += sign * limb + multiple * p;
            *slot = carry & MASK;
            carry >>= BITS;
        }
        // The top limb keeps what is left, with its sign.
        if let Some(top) = out.last_mut() {
            *top += carry << BITS;
        }
        Signed30(out)
    }

    /// Adds `value` to the lowest limb and carries; the top limb takes what is left.
    fn add_small(&self, value: i64) -> Signed30 {
        let mut out = self.0;
        let mut carry = value;
        let last = LIMBS - 1;
        for (i, slot) in out.iter_mut().enumerate() {
            carry += *slot;
            if i == last {
                *slot = carry;
            } else {
                *slot = carry & MASK;
                carry >>= BITS;
            }
        }
        Signed30(out)
    }
}

/// Thirty divsteps on the low bits of `f` (odd) and `g`, as the matrix `[u, v, q, r]` scaled
/// by 2^30: after them `f = (u·f + v·g) / 2^30` and `g = (q·f + r·g) / 2^30`, exactly.
/// `delta2` is 2δ (δ stays a half-integer, so 2δ is an odd integer).
///
/// One divstep: if δ > 0 and g is odd, (δ, f, g) ← (1 - δ, g, (g - f)/2); else if g is odd,
/// (1 + δ, f, (g + f)/2); else (1 + δ, f, g/2). Runs of even `g` are taken at once.
fn divsteps_30(delta2: &mut i64, f_low: i64, g_low: i64) -> [i64; 4] {
    let (mut u, mut v, mut q, mut r) = (1i64, 0i64, 0i64, 1i64);
    // Only the low bits decide, and only the low 30 - (steps taken) of them stay right:
    // wrapping arithmetic above them is harmless.
    let (mut f, mut g) = (f_low as u64, g_low as u64);
    let mut left = BITS;
    loop {
        let zeros = g.trailing_zeros().min(left);
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        *delta2 += 2 * i64::from(zeros);
        left -= zeros;
        if left == 0 {
            return [u, v, q, r];
        }
        // g is odd.
        if *delta2 > 0 {
            *delta2 = 2 - *delta2;
            (f, g) = (g, g.wrapping_sub(f));
            (u, v, q, r) = (q, r, q - u, r - v);
        } else {
            *delta2 += 2;
            g = g.wrapping_add(f);
            q += u;
            r += v;
        }
        // g is even now: the halving of this step.
        g >>= 1;
        u <<= 1;
        v <<= 1;
        left -= 1;
    }
}

/// `(u·f + v·g) / 2^30` and `(q·f + r·g) / 2^30`, exact by construction.
fn apply_to_fg(f: &Signed30, g: &Signed30, [u, v, q, r]: [i64; 4]) -> (Signed30, Signed30) {
    let (mut new_f, mut new_g) = (Signed30::ZERO, Signed30::ZERO);
    let (f0, g0) = (f.0[0], g.0[0]);
    let mut cf = (u * f0 + v * g0) >> BITS;
    let mut cg = (q * f0 + r * g0) >> BITS;
    let sources = f.0.iter().zip(&g.0).skip(1);
    for ((fi, gi), (nf, ng)) in sources.zip(new_f.0.iter_mut().zip(new_g.0.iter_mut())) {
        cf += u * fi + v * gi;
        cg += q * fi + r * gi;
        *nf = cf & MASK;
        *ng = cg & MASK;
        cf >>= BITS;
        cg >>= BITS;
    }
    new_f.0[LIMBS - 1] = cf;
    new_g.0[LIMBS - 1] = cg;
    (new_f, new_g)
}

/// `(u·d + v·e) / 2^30` and `(q·d + r·e) / 2^30` modulo p: a multiple of p below 2^30·p is
/// added first to make each sum divisible by 2^30. Each batch grows the bound on |d| and |e|
/// by p at most (a row's |u| + |v| is at most 2^30).
fn apply_to_de(d: &Signed30, e: &Signed30, [u, v, q, r]: [i64; 4]) -> (Signed30, Signed30) {
    let (d0, e0) = (d.0[0], e.0[0]);
    let md = (u * d0 + v * e0).wrapping_mul(NEG_P_INV) & MASK;
    let me = (q * d0 + r * e0).wrapping_mul(NEG_P_INV) & MASK;
    let (mut new_d, mut new_e) = (Signed30::ZERO, Signed30::ZERO);
    let p0 = P.0[0];
    let mut cd = (u * d0 + v * e0 + md * p0) >> BITS;
    let mut ce = (q * d0 + r * e0 + me * p0) >> BITS;
    let sources = d.0.iter().zip(&e.0).zip(&P.0).skip(1);
    for (((di, ei), pi), (nd, ne)) in sources.zip(new_d.0.iter_mut().zip(new_e.0.iter_mut())) {
        cd += u * di + v * ei + md * pi;
        ce += q * di + r * ei + me * pi;
        *nd = cd & MASK;
        *ne = ce & MASK;
        cd >>= BITS;
        ce >>= BITS;
    }
    new_d.0[LIMBS - 1] = cd;
    new_e.0[LIMBS - 1] = ce;
    (new_d, new_e)
}

/// `value mod p` for `0 <= value < 2^270`, canonical.
fn reduce(value: Signed30) -> [u8; 32] {
    let mut w = value;
    // 2^255 ≡ 19: fold what is above bit 255 down. The first fold leaves less than
    // 2^255 + 19·2^15, the second less than 2^255.
    for _ in 0..2 {
        let top = w.0[LIMBS - 1];
        w.0[LIMBS - 1] = top & ((1 << 15) - 1);
        w = w.add_small(19 * (top >> 15));
    }
    // w is p or more exactly when w + 19 reaches 2^255.
    let plus_19 = w.add_small(19);
    if plus_19.0[LIMBS - 1] >> 15 != 0 {
        w = plus_19;
        w.0[LIMBS - 1] &= (1 << 15) - 1;
    }
    w.to_bytes()
}

/// The inverse of the little-endian integer `x` (any value below 2^256) modulo p, canonical;
/// `None` for a multiple of p, or if the divsteps did not finish within their bound.
pub(super) fn invert(x: &[u8; 32]) -> Option<[u8; 32]> {
    // Invariants: f ≡ d·x and g ≡ e·x (mod p); f stays odd; gcd(f, g) = gcd(p, x).
    let (mut f, mut g) = (P, Signed30::from_bytes(x));
    let (mut d, mut e) = (Signed30::ZERO, Signed30([1, 0, 0, 0, 0, 0, 0, 0, 0]));
    let mut delta2 = 1i64;
    for _ in 0..MAX_BATCHES {
        if g.is_zero() {
            // f = ±gcd(p, x): ±1 unless x is a multiple of p. Then x^-1 = ±d; the bound on
            // |d| is 25p, so adding 32p makes it positive before the reduction.
            let sign = f.unit_sign()?;
            return Some(reduce(d.scaled_plus_p(sign, 32)));
        }
        let matrix = divsteps_30(&mut delta2, f.0[0], g.0[0]);
        (f, g) = apply_to_fg(&f, &g, matrix);
        (d, e) = apply_to_de(&d, &e, matrix);
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use curve25519_dalek::scalar::Scalar;
    use fiat_crypto::curve25519_32 as fiat;

    use super::*;

    /// `a·b mod p`, canonical, on fiat-crypto (an independent implementation of the field).
    fn mul_mod_p(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let load = |bytes: &[u8; 32]| {
            // fiat takes 255 bits; fold the top bit in as 19.
            let mut low = *bytes;
            let high = low[31] >> 7;
            low[31] &= 0x7f;
            let mut tight = fiat::fiat_25519_tight_field_element([0; 10]);
            fiat::fiat_25519_from_bytes(&mut tight, &low);
            let mut nineteen = [0u8; 32];
            nineteen[0] = 19 * high;
            let mut extra = fiat::fiat_25519_tight_field_element([0; 10]);
            fiat::fiat_25519_from_bytes(&mut extra, &nineteen);
            let mut loose = fiat::fiat_25519_loose_field_element([0; 10]);
            fiat::fiat_25519_add(&mut loose, &tight, &extra);
            loose
        };
        let mut out = fiat::fiat_25519_tight_field_element([0; 10]);
        fiat::fiat_25519_carry_mul(&mut out, &load(a), &load(b));
        let mut bytes = [0u8; 32];
        fiat::fiat_25519_to_bytes(&mut bytes, &out);
        bytes
    }

    fn p_bytes() -> [u8; 32] {
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        p
    }

    fn one() -> [u8; 32] {
        let mut one = [0u8; 32];
        one[0] = 1;
        one
    }

    fn is_canonical(bytes: &[u8; 32]) -> bool {
        // Below p: compare as big-endian numbers.
        let (mut a, mut b) = (*bytes, p_bytes());
        a.reverse();
        b.reverse();
        a < b
    }

    #[test]
    fn the_constants_are_p_and_its_negated_inverse() {
        assert_eq!(P.to_bytes(), p_bytes());
        assert_eq!(Signed30::from_bytes(&p_bytes()), P);
        assert_eq!(((MASK - 18) * NEG_P_INV) & MASK, MASK, "p·(-p^-1) ≡ -1 mod 2^30");
    }

    #[test]
    fn limbs_round_trip() {
        let mut x = [0u8; 32];
        for (i, b) in x.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        assert_eq!(Signed30::from_bytes(&x).to_bytes(), x);
        assert_eq!(Signed30::from_bytes(&[0xff; 32]).to_bytes(), [0xff; 32]);
    }

    #[test]
    fn inverses_times_their_inputs_are_one() {
        // Deterministic spread of inputs: hashes, so every limb is busy.
        let mut inputs: Vec<[u8; 32]> = (0u32..2000)
            .map(|i| {
                let h = hmac_sha256::Hash::hash(&i.to_le_bytes());
                let mut x = h;
                // Half below 2^255 (what the field hands in), half anywhere below 2^256.
                if i % 2 == 0 {
                    x[31] &= 0x7f;
                }
                x
            })
            .collect();
        let mut small = |v: u64| {
            let mut x = [0u8; 32];
            x[..8].copy_from_slice(&v.to_le_bytes());
            inputs.push(x);
        };
        for v in [1, 2, 3, 19, 121_665, 121_666, u64::MAX] {
            small(v);
        }
        // p - 1, p + 1 (≡ 1), 2^255 - 1 (≡ 18), 2^256 - 1 (≡ 37).
        let mut p_minus_1 = p_bytes();
        p_minus_1[0] -= 1;
        let mut p_plus_1 = p_bytes();
        p_plus_1[0] += 1;
        let mut top = [0xffu8; 32];
        top[31] = 0x7f;
        inputs.extend([p_minus_1, p_plus_1, top, [0xff; 32]]);
        for x in &inputs {
            let inverse = invert(x).unwrap_or_else(|| panic!("no inverse of {x:?}"));
            assert!(is_canonical(&inverse), "{x:?}");
            assert_eq!(mul_mod_p(x, &inverse), one(), "{x:?}");
        }
        assert_eq!(invert(&p_minus_1), Some(p_minus_1), "-1 is its own inverse");
        assert_eq!(invert(&p_plus_1), Some(one()));
    }

    #[test]
    fn multiples_of_p_have_no_inverse() {
        assert_eq!(invert(&[0; 32]), None);
        assert_eq!(invert(&p_bytes()), None);
        // 2p = 2^256 - 38.
        let mut two_p = [0xffu8; 32];
        two_p[0] = 0xda;
        assert_eq!(invert(&two_p), None);
    }

    #[test]
    fn agrees_with_dalek_on_the_scalar_side_of_the_field() {
        // Another independent check: inverting a value twice gives it back.
        for i in 1u64..200 {
            let x = (Scalar::from(i) * Scalar::from(0x9e37_79b9_7f4a_7c15_u64)).to_bytes();
            let inverse = invert(&x).unwrap();
            assert_eq!(invert(&inverse), Some(x));
        }
    }

    #[test]
    fn the_batches_stay_within_the_bound() {
        // The worst of many inputs takes well under MAX_BATCHES (the bound is 20 batches).
        let mut worst = 0;
        for i in 0u32..3000 {
            let x = hmac_sha256::Hash::hash(&i.to_be_bytes());
            let (mut f, mut g) = (P, Signed30::from_bytes(&x));
            let (mut d, mut e) = (Signed30::ZERO, Signed30([1, 0, 0, 0, 0, 0, 0, 0, 0]));
            let mut delta2 = 1;
            let mut batches = 0;
            while !g.is_zero() {
                let m = divsteps_30(&mut delta2, f.0[0], g.0[0]);
                (f, g) = apply_to_fg(&f, &g, m);
                (d, e) = apply_to_de(&d, &e, m);
                batches += 1;
            }
            worst = worst.max(batches);
        }
        assert!(worst <= 20, "{worst} batches");
    }
}
