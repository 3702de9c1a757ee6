//! RSA signature verification: RSASSA-PKCS1-v1_5 (RS256/384/512) and RSASSA-PSS with MGF1 and
//! a salt as long as the hash (PS256/384/512), RFC 7518 §3.3 and §3.5, RFC 8017 §8.
//!
//! Keys are limited to what the filter accepted before (jwt-simple's policy): a modulus of 2048
//! to 4096 bits and the exponent 65537, so `s^e mod n` is 16 squarings and one multiplication
//! (crypto-bigint's Montgomery arithmetic). Only public data is handled; comparisons need not be
//! constant-time. Access tokens are verified once and cached, so speed matters little here.

use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
use crypto_bigint::{BoxedUint, Odd};

use super::Alg;

const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 4096;

pub(super) struct RsaKey {
    /// Big-endian, no leading zero byte.
    modulus: Vec<u8>,
    bits: usize,
    precision: u32,
    params: BoxedMontyParams,
}

impl RsaKey {
    /// A key with exponent 65537 and modulus `n` (big-endian; one zero byte before a high bit
    /// set, as some encoders write it, is dropped).
    pub(super) fn from_modulus(n: &[u8]) -> Result<RsaKey, &'static str> {
        let n = match n {
            [0, top, rest @ ..] if top & 0x80 != 0 => n.get(1..).unwrap_or(rest),
            _ => n,
        };
        let top = *n.first().ok_or("empty modulus")?;
        if top == 0 {
            return Err("modulus has leading zero bytes");
        }
        let bits = n.len() * 8 - top.leading_zeros() as usize;
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err("RSA modulus must be 2048 to 4096 bits");
        }
        let precision = u32::try_from(n.len() * 8).map_err(|_| "modulus too long")?.div_ceil(64) * 64;
        let value = BoxedUint::from_be_slice(n, precision).map_err(|_| "modulus does not decode")?;
        let odd = Option::<Odd<BoxedUint>>::from(Odd::new(value)).ok_or("modulus is even")?;
        Ok(RsaKey { modulus: n.to_vec(), bits, precision, params: BoxedMontyParams::new_vartime(odd) })
    }

    pub(super) fn modulus(&self) -> &[u8] {
        &self.modulus
    }

    /// `signature^65537 mod n`, as `k` bytes (the modulus length); `None` if the signature is
    /// not `k` bytes or not below `n` (RFC 8017 §5.2.2).
    fn open(&self, signature: &[u8]) -> Option<Vec<u8>> {
        let k = self.modulus.len();
        if signature.len() != k {
            return None;
        }
        let s = BoxedUint::from_be_slice(signature, self.precision).ok()?;
        if s >= *self.params.modulus().as_ref() {
            return None;
        }
        let base = BoxedMontyForm::new(s, &self.params);
        let mut acc = base.clone();
        for _ in 0..16 {
            acc = acc.square();
        }
        let opened = (acc * &base).retrieve().to_be_bytes();
        let skip = opened.len().checked_sub(k)?;
        // The value is below n, so the bytes above the modulus length are zero.
        Some(opened.get(skip..)?.to_vec())
    }

    pub(super) fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        let Some(em) = self.open(signature) else {
            return false;
        };
        match alg {
            Alg::Rs256 => em == pkcs1_v15(Hash::Sha256, message, em.len()),
            Alg::Rs384 => em == pkcs1_v15(Hash::Sha384, message, em.len()),
            Alg::Rs512 => em == pkcs1_v15(Hash::Sha512, message, em.len()),
            Alg::Ps256 => pss_ok(Hash::Sha256, message, &em, self.bits),
            Alg::Ps384 => pss_ok(Hash::Sha384, message, &em, self.bits),
            Alg::Ps512 => pss_ok(Hash::Sha512, message, &em, self.bits),
            Alg::Es256 | Alg::Es384 | Alg::Ed25519 => false,
        }
    }
}

#[derive(Clone, Copy)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        match self {
            Hash::Sha256 => {
                let mut h = hmac_sha256::Hash::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            Hash::Sha384 => {
                let mut h = hmac_sha512::sha384::Hash::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
            Hash::Sha512 => {
                let mut h = hmac_sha512::Hash::new();
                parts.iter().for_each(|p| h.update(p));
                h.finalize().to_vec()
            }
        }
    }

    /// The DER `DigestInfo` prefix before the hash (RFC 8017 §9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20],
            Hash::Sha384 => &[0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30],
            Hash::Sha512 => &[0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40],
        }
    }
}

/// EMSA-PKCS1-v1_5 encoding of `message` in `len` bytes (RFC 8017 §9.2): the one valid
/// encoding, compared whole with the opened signature.
fn pkcs1_v15(hash: Hash, message: &[u8], len: usize) -> Vec<u8> {
    let prefix = hash.digest_info_prefix();
    let digest = hash.digest(&[message]);
    let padding = len.saturating_sub(3 + prefix.len() + digest.len());
    let mut em = Vec::with_capacity(len);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(2 + padding, 0xff);
    em.push(0x00);
    em.extend_from_slice(prefix);
    em.extend_from_slice(&digest);
    em
}

/// MGF1 (RFC 8017 §B.2.1): `len` bytes from `seed`.
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut counter = 0u32;
    while out.len() < len {
        out.extend_from_slice(&hash.digest(&[seed, &counter.to_be_bytes()]));
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with MGF1 of the same hash and a salt of the hash's
/// length (RFC 7518 §3.5). `em` is the opened signature, `k` bytes; `mod_bits` the modulus size.
fn pss_ok(hash: Hash, message: &[u8], em: &[u8], mod_bits: usize) -> bool {
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    // When the modulus is a whole number of bytes plus one bit, EM is one byte shorter than k
    // and the opened value starts with a zero byte.
    let (extra, em) = em.split_at(em.len() - em_len);
    if extra.iter().any(|b| *b != 0) {
        return false;
    }
    let m_hash = hash.digest(&[message]);
    let h_len = m_hash.len();
    let s_len = h_len;
    if em_len < h_len + s_len + 2 || em.last() != Some(&0xbc) {
        return false;
    }
    let (masked_db, rest) = em.split_at(em_len - h_len - 1);
    let Some(h) = rest.get(..h_len) else {
        return false;
    };
    // The bits above em_bits in the first byte must be zero.
    let unused_bits = 8 * em_len - em_bits;
    let top_mask = 0xffu8.checked_shr(unused_bits as u32).unwrap_or(0);
    if masked_db.first().is_some_and(|b| b & !top_mask != 0) {
        return false;
    }
    let mut db: Vec<u8> = masked_db.iter().zip(mgf1(hash, h, masked_db.len())).map(|(a, b)| a ^ b).collect();
    if let Some(first) = db.first_mut() {
        *first &= top_mask;
    }
    // DB = PS (zeros) || 0x01 || salt.
    let ps_len = em_len - h_len - s_len - 2;
    let (ps, rest) = db.split_at(ps_len);
    let Some((&one, salt)) = rest.split_first() else {
        return false;
    };
    if ps.iter().any(|b| *b != 0) || one != 0x01 || salt.len() != s_len {
        return false;
    }
    hash.digest(&[&[0u8; 8], &m_hash, salt]) == h
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::jose::b64url_decode;

    /// RFC 7520 §3.4 (the "bilbo.baggins@hobbiton.example" RSA key) and the signatures of
    /// §4.1 (RS256) and §4.2 (PS384, randomised salt) over the same signing input.
    const RFC7520_N: &str = "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4rHVTeT-O-XV2jRojdNhxJWTDvNd7nqQ0VEiZQHz_AJmSCpMaJMRBSFKrKb2wqVwGU_NsYOYL-QtiWN2lbzcEe6XC0dApr5ydQLrHqkHHig3RBordaZ6Aj-oBHqFEHYpPe7Tpe-OfVfHd1E6cS6M1FZcD1NNLYD5lFHpPI9bTwJlsde3uhGqC0ZCuEHg8lhzwOHrtIQbS0FVbb9k3-tVTU4fg_3L_vniUFAKwuCLqKnS2BYwdq_mzSnbLY7h_qixoR7jig3__kRhuaxwUkRz5iaiQkqgc5gHdrNP5zw";
    const RFC7520_PAYLOAD: &str = "SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IHlvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBkb24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcmUgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4";
    const RFC7520_RS256_HEADER: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9";
    const RFC7520_RS256_SIG: &str = "MRjdkly7_-oTPTS3AXP41iQIGKa80A0ZmTuV5MEaHoxnW2e5CZ5NlKtainoFmKZopdHM1O2U4mwzJdQx996ivp83xuglII7PNDi84wnB-BDkoBwA78185hX-Es4JIwmDLJK3lfWRa-XtL0RnltuYv746iYTh_qHRD68BNt1uSNCrUCTJDt5aAE6x8wW1Kt9eRo4QPocSadnHXFxnt8Is9UzpERV0ePPQdLuW3IS_de3xyIrDaLGdjluPxUAhb6L2aXic1U12podGU0KLUQSE_oI-ZnmKJ3F4uOZDnd6QZWJushZ41Axf_fcIe8u9ipH84ogoree7vjbU5y18kDquDg";
    const RFC7520_PS384_HEADER: &str = "eyJhbGciOiJQUzM4NCIsImtpZCI6ImJpbGJvLmJhZ2dpbnNAaG9iYml0b24uZXhhbXBsZSJ9";
    const RFC7520_PS384_SIG: &str = "cu22eBqkYDKgIlTpzDXGvaFfz6WGoz7fUDcfT0kkOy42miAh2qyBzk1xEsnk2IpN6-tPid6VrklHkqsGqDqHCdP6O8TTB5dDDItllVo6_1OLPpcbUrhiUSMxbbXUvdvWXzg-UD8biiReQFlfz28zGWVsdiNAUf8ZnyPEgVFn442ZdNqiVJRmBqrYRXe8P_ijQ7p8Vdz0TTrxUeT3lm8d9shnr2lfJT8ImUjvAA2Xez2Mlp8cBE5awDzT0qI0n6uiP1aCN_2_jLAeQTlqRHtfa64QQSUmFAAjVKPbByi7xho0uTOcbH510a6GYmJUAfmWjwZ6oD4ifKo8DYM-X72Eaw";

    fn key() -> RsaKey {
        RsaKey::from_modulus(&b64url_decode(RFC7520_N).unwrap()).unwrap()
    }

    #[test]
    fn rfc7520_rs256_and_ps384_verify() {
        let key = key();
        let rs_input = format!("{RFC7520_RS256_HEADER}.{RFC7520_PAYLOAD}");
        let rs_sig = b64url_decode(RFC7520_RS256_SIG).unwrap();
        assert!(key.verify(Alg::Rs256, rs_input.as_bytes(), &rs_sig));
        let ps_input = format!("{RFC7520_PS384_HEADER}.{RFC7520_PAYLOAD}");
        let ps_sig = b64url_decode(RFC7520_PS384_SIG).unwrap();
        assert!(key.verify(Alg::Ps384, ps_input.as_bytes(), &ps_sig));
        // Each under another algorithm, over the other input, or with one bit flipped: refused.
        for alg in [Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512, Alg::Es256] {
            assert!(!key.verify(alg, rs_input.as_bytes(), &rs_sig), "{alg:?}");
        }
        for alg in [Alg::Rs256, Alg::Rs384, Alg::Ps256, Alg::Ps512] {
            assert!(!key.verify(alg, ps_input.as_bytes(), &ps_sig), "{alg:?}");
        }
        assert!(!key.verify(Alg::Rs256, ps_input.as_bytes(), &rs_sig));
        for byte in [0, 100, 255] {
            let mut bad = rs_sig.clone();
            bad[byte] ^= 0x10;
            assert!(!key.verify(Alg::Rs256, rs_input.as_bytes(), &bad), "RS256 byte {byte}");
            let mut bad = ps_sig.clone();
            bad[byte] ^= 0x10;
            assert!(!key.verify(Alg::Ps384, ps_input.as_bytes(), &bad), "PS384 byte {byte}");
        }
        assert!(!key.verify(Alg::Rs256, rs_input.as_bytes(), &rs_sig[1..]), "short");
        // The modulus itself is not a signature (not below n).
        assert!(!key.verify(Alg::Rs256, rs_input.as_bytes(), key.modulus()));
    }

    #[test]
    fn key_size_and_shape_limits() {
        let mut n = vec![0xc5u8; 256];
        n[255] |= 1;
        assert!(RsaKey::from_modulus(&n).is_ok(), "2048 bits");
        let mut with_sign_byte = vec![0u8];
        with_sign_byte.extend_from_slice(&n);
        assert_eq!(RsaKey::from_modulus(&with_sign_byte).unwrap().modulus(), &n[..]);
        assert!(RsaKey::from_modulus(&n[1..]).is_err(), "2040 bits");
        assert!(RsaKey::from_modulus(&[0x01; 513]).is_err(), "4097 bits");
        assert!(RsaKey::from_modulus(&[0xff; 512]).is_ok(), "4096 bits");
        let mut even = n.clone();
        even[255] &= 0xfe;
        assert!(RsaKey::from_modulus(&even).is_err(), "even");
        assert!(RsaKey::from_modulus(&[0, 0, 1]).is_err());
        assert!(RsaKey::from_modulus(&[]).is_err());
    }
}
