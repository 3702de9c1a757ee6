//! JOSE building blocks shared by access tokens and DPoP proofs: strict base64url, the compact
//! JWS split, the algorithms we accept, public keys read from JWKs, RFC 7638 thumbprints, and
//! signature verification over `header.payload`.
//!
//! The signature schemes sit in the submodules: [`ec`] (ES256, ES384: RustCrypto `p256`/`p384`),
//! [`ed25519`] (EdDSA: the `mcp_guard_ed25519` crate, filter/ed25519, on fiat-crypto's formally
//! verified field, checked against `curve25519-dalek` in the tests; scalars with `crypto-bigint`),
//! [`rsa`] (RS*/PS*: `crypto-bigint`). Verification handles public data only (key, message,
//! signature), so variable-time arithmetic there leaks nothing secret.
//!
//! A key that verifies many signatures (a DPoP client's key: one proof per request) can be
//! [`KeyMaterial::precomputed`]: tables of multiples of its point turn the variable-base half of
//! each verification into a fixed-base one (see [`crate::dpop`] for the cache that keeps them).
//! That path has arithmetic of its own, shaped for wasm32: P-256 in the `mcp_guard_p256` crate
//! (filter/p256), Ed25519 in `mcp_guard_ed25519`; both crates are built at opt-level 3.
#![forbid(unsafe_code)]

mod ec;
mod ed25519;
pub mod members;
mod rsa;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};

/// Longest compact JWS we look at. Access tokens and proofs are a few KB; anything larger is an
/// attack on the parser, not a credential.
pub const MAX_JWS_LEN: usize = 16 * 1024;

/// Decodes unpadded base64url (RFC 7515 §2), refusing padding, the standard alphabet and
/// non-canonical trailing bits, so one credential has exactly one spelling.
pub fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

pub fn b64url_encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    hmac_sha256::Hash::hash(bytes)
}

/// A compact JWS split into its parts; nothing in it is trusted yet.
#[derive(Debug, Clone)]
pub struct CompactJws<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    pub header: Map<String, Value>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A compact JWS split, its payload and signature decoded, its header left as sent (decode it
/// with [`DecodedJws::header`], read it with [`members::Members`]); nothing in it is trusted yet.
#[derive(Debug, Clone)]
pub struct DecodedJws<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The header's base64url text.
    pub header_b64: &'a str,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

impl<'a> DecodedJws<'a> {
    pub fn split(jws: &'a str) -> Result<Self, JwsError> {
        if jws.len() > MAX_JWS_LEN {
            return Err(JwsError::TooLong);
        }
        let mut parts = jws.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::NotThreeParts);
        };
        let signing_input = jws.get(..h.len() + 1 + p.len()).ok_or(JwsError::NotThreeParts)?;
        let payload = b64url_decode(p).ok_or(JwsError::BadBase64)?;
        let signature = b64url_decode(s).ok_or(JwsError::BadBase64)?;
        if signature.is_empty() {
            return Err(JwsError::EmptySignature);
        }
        Ok(DecodedJws { signing_input, header_b64: h, payload, signature })
    }

    pub fn header(&self) -> Result<Vec<u8>, JwsError> {
        b64url_decode(self.header_b64).ok_or(JwsError::BadBase64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsError {
    TooLong,
    NotThreeParts,
    BadBase64,
    HeaderNotJsonObject,
    EmptySignature,
    /// The header or the claims name a member twice (see [`members`]).
    DuplicateMember,
    /// The header or the claims have more than [`members::MAX_MEMBERS`] members.
    TooManyMembers,
}

impl<'a> CompactJws<'a> {
    pub fn split(jws: &'a str) -> Result<Self, JwsError> {
        let decoded = DecodedJws::split(jws)?;
        let header = decoded.header()?;
        let DecodedJws { signing_input, payload, signature, .. } = decoded;
        let header = match serde_json::from_slice::<Value>(&header) {
            Ok(Value::Object(map)) => map,
            _ => return Err(JwsError::HeaderNotJsonObject),
        };
        Ok(CompactJws { signing_input, header, payload, signature })
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }
}

/// The asymmetric JWS algorithms we verify. `none` and the HMAC family have no variant, so
/// they cannot be chosen (alg confusion: a public key must never be used as an HMAC secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    Es256,
    Es384,
    /// Ed25519, spelled `EdDSA` (RFC 8037) or `Ed25519` (RFC 9864).
    Ed25519,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
}

impl Alg {
    /// Reads a JWS `alg` value; `None` for anything we do not verify.
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" | "Ed25519" => Alg::Ed25519,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            _ => return None,
        })
    }

    /// The name used when we advertise the algorithm (`algs=` in a challenge, metadata).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Ed25519 => "EdDSA",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
        }
    }
}

/// Why a JWK could not become a verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwkError {
    /// `kty`/`crv` we do not verify with (e.g. `oct`, `secp256k1`), or an `alg` we do not know.
    Unsupported(String),
    /// The JWK carries private key material (`d`, `p`, …).
    PrivateMaterial,
    /// Bad coordinates, a point off the curve or of small order, an RSA key outside 2048–4096
    /// bits or with an exponent other than 65537, an `alg`, `use` or `key_ops` that does not
    /// fit a public signature key, material members of another key type.
    Invalid(String),
}

fn invalid(why: &str) -> JwkError {
    JwkError::Invalid(why.to_string())
}

/// Private members of every key type (RFC 7518 §6, RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Every key-material member of the registered key types; a JWK may carry only its own.
const MATERIAL_MEMBERS: [&str; 13] = ["crv", "x", "y", "d", "n", "e", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The key types we verify with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kty {
    P256,
    P384,
    Ed25519,
    Rsa,
}

impl Kty {
    fn public_members(self) -> &'static [&'static str] {
        match self {
            Kty::P256 | Kty::P384 => &["crv", "x", "y"],
            Kty::Ed25519 => &["crv", "x"],
            Kty::Rsa => &["n", "e"],
        }
    }

    /// Whether a key of this type can verify `alg` at all (curve and family).
    fn fits(self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (Kty::P256, Alg::Es256)
                | (Kty::P384, Alg::Es384)
                | (Kty::Ed25519, Alg::Ed25519)
                | (Kty::Rsa, Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512)
        )
    }
}

/// A JWK whose members were checked: a public signature key of a type we verify with, its
/// material members present (not yet decoded), its own `alg` if it names one.
#[derive(Debug, Clone)]
pub struct CheckedJwk<'a> {
    kty: Kty,
    /// `x` (EC, OKP) or `n` (RSA).
    first: &'a str,
    /// `y` (EC), `e` (RSA), empty for OKP.
    second: &'a str,
    pinned_alg: Option<Alg>,
}

impl<'a> CheckedJwk<'a> {
    /// Checks a JWK object's members (as jwt-simple's importer did, and RFC 7517 §4 asks):
    /// no private material, a supported `kty`/`crv`, only this type's material members, `use`
    /// `sig` and `key_ops` `["verify"]` when present, and an `alg`, when present, that fits.
    pub fn read(jwk: &'a Map<String, Value>) -> Result<CheckedJwk<'a>, JwkError> {
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(JwkError::PrivateMaterial);
        }
        let kty_name = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
        let crv = jwk.get("crv").and_then(Value::as_str);
        let kty = match (kty_name, crv) {
            ("EC", Some("P-256")) => Kty::P256,
            ("EC", Some("P-384")) => Kty::P384,
            ("OKP", Some("Ed25519")) => Kty::Ed25519,
            ("RSA", _) => Kty::Rsa,
            _ => return Err(JwkError::Unsupported(format!("kty {kty_name:?} crv {:?}", crv.unwrap_or("")))),
        };
        let pinned_alg = match jwk.get("alg") {
            None => None,
            Some(Value::String(name)) => {
                Some(Alg::parse(name).ok_or_else(|| JwkError::Unsupported(format!("alg {name}")))?)
            }
            Some(_) => return Err(invalid("alg is not a string")),
        };
        let own = kty.public_members();
        if let Some(foreign) = MATERIAL_MEMBERS.iter().find(|m| jwk.contains_key(**m) && !own.contains(m)) {
            return Err(JwkError::Invalid(format!("member {foreign:?} does not belong to this key type")));
        }
        match jwk.get("use") {
            None => {}
            Some(Value::String(u)) if u == "sig" => {}
            Some(_) => return Err(invalid("use is not \"sig\"")),
        }
        match jwk.get("key_ops") {
            None => {}
            Some(Value::Array(ops)) if ops.len() <= 1 && ops.iter().all(|op| op == "verify") => {}
            Some(_) => return Err(invalid("key_ops allows more than \"verify\"")),
        }
        if let Some(alg) = pinned_alg {
            if !kty.fits(alg) {
                return Err(JwkError::Invalid(format!("alg {} does not fit the key", alg.name())));
            }
        }
        let member = |name: &str| match jwk.get(name) {
            Some(Value::String(s)) => Ok(s.as_str()),
            _ => Err(JwkError::Invalid(format!("{name} is missing or not a string"))),
        };
        let (first, second) = match kty {
            Kty::P256 | Kty::P384 => (member("x")?, member("y")?),
            Kty::Ed25519 => (member("x")?, ""),
            Kty::Rsa => (member("n")?, member("e")?),
        };
        Ok(CheckedJwk { kty, first, second, pinned_alg })
    }

    /// The JWK's own `alg`, when it names one.
    pub fn pinned_alg(&self) -> Option<Alg> {
        self.pinned_alg
    }

    /// Whether a JWS with header `alg` may be verified with this key (see [`PublicKey::allows`]).
    pub fn allows(&self, alg: Alg) -> bool {
        self.kty.fits(alg) && self.pinned_alg.is_none_or(|pinned| pinned == alg)
    }

    /// Identifies the key material: the same for every JWK of the same public key, whatever
    /// its other members (`kid`, `alg`, member order), different for any other key. For EC and
    /// OKP keys (fixed-size members, strict base64url) it is the RFC 7638 thumbprint input.
    pub fn material_id(&self) -> String {
        match self.kty {
            Kty::P256 | Kty::P384 => {
                let crv = if self.kty == Kty::P256 { "P-256" } else { "P-384" };
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#, self.first, self.second)
            }
            Kty::Ed25519 => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, self.first),
            Kty::Rsa => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, self.second, self.first),
        }
    }
}

/// Decodes base64url into exactly `N` bytes.
fn fixed<const N: usize>(text: &str, what: &str) -> Result<[u8; N], JwkError> {
    b64url_decode(text)
        .and_then(|bytes| <[u8; N]>::try_from(bytes).ok())
        .ok_or_else(|| JwkError::Invalid(format!("{what} is not {N} bytes of base64url")))
}

/// The decoded public key of a JWK, with its RFC 7638 thumbprint; the JWK's `alg` is not part
/// of it (see [`PublicKey`]).
pub struct KeyMaterial {
    kind: KeyKind,
    thumbprint: String,
}

#[allow(clippy::large_enum_variant)] // a handful of keys per worker; boxing buys nothing
enum KeyKind {
    P256(ec::P256Key),
    P384(ec::P384Key),
    Ed25519(ed25519::Ed25519Key),
    Rsa(rsa::RsaKey),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            KeyKind::P256(k) if k.is_precomputed() => "P-256, precomputed",
            KeyKind::P256(_) => "P-256",
            KeyKind::P384(_) => "P-384",
            KeyKind::Ed25519(k) if k.is_precomputed() => "Ed25519, precomputed",
            KeyKind::Ed25519(_) => "Ed25519",
            KeyKind::Rsa(_) => "RSA",
        };
        write!(f, "KeyMaterial({kind}, {})", self.thumbprint)
    }
}

impl KeyMaterial {
    /// Decodes and validates the key: EC points on their curve (and not the identity), an
    /// Ed25519 point canonical and not of small order, an RSA modulus of 2048–4096 bits with
    /// exponent 65537.
    pub fn decode(jwk: &CheckedJwk<'_>) -> Result<KeyMaterial, JwkError> {
        let kind = match jwk.kty {
            Kty::P256 => {
                let (x, y) = (fixed::<32>(jwk.first, "x")?, fixed::<32>(jwk.second, "y")?);
                KeyKind::P256(ec::P256Key::from_coordinates(&x, &y).ok_or_else(|| invalid("not a point of P-256"))?)
            }
            Kty::P384 => {
                let (x, y) = (fixed::<48>(jwk.first, "x")?, fixed::<48>(jwk.second, "y")?);
                KeyKind::P384(ec::P384Key::from_coordinates(&x, &y).ok_or_else(|| invalid("not a point of P-384"))?)
            }
            Kty::Ed25519 => {
                let x = fixed::<32>(jwk.first, "x")?;
                KeyKind::Ed25519(
                    ed25519::Ed25519Key::from_bytes(&x).ok_or_else(|| invalid("not a usable Ed25519 public key"))?,
                )
            }
            Kty::Rsa => {
                if jwk.second != "AQAB" {
                    return Err(invalid("RSA exponent is not 65537"));
                }
                let n = b64url_decode(jwk.first).ok_or_else(|| invalid("n is not base64url"))?;
                KeyKind::Rsa(rsa::RsaKey::from_modulus(&n).map_err(invalid)?)
            }
        };
        let thumbprint_input = match &kind {
            // The modulus without a sign byte, as RFC 7638 §3.2 and RFC 7518 §6.3.1.1 spell it.
            KeyKind::Rsa(key) => format!(r#"{{"e":"AQAB","kty":"RSA","n":"{}"}}"#, b64url_encode(key.modulus())),
            _ => jwk.material_id(),
        };
        Ok(KeyMaterial { kind, thumbprint: b64url_encode(&sha256(thumbprint_input.as_bytes())) })
    }

    /// RFC 7638 thumbprint, base64url.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    fn kty(&self) -> Kty {
        match self.kind {
            KeyKind::P256(_) => Kty::P256,
            KeyKind::P384(_) => Kty::P384,
            KeyKind::Ed25519(_) => Kty::Ed25519,
            KeyKind::Rsa(_) => Kty::Rsa,
        }
    }

    /// Whether the key type can verify `alg` at all (curve and family).
    pub fn fits(&self, alg: Alg) -> bool {
        self.kty().fits(alg)
    }

    /// The same key with a table of multiples of its point (P-256: 99 KB, Ed25519: 165 KB),
    /// which makes each later verification about twice as cheap; `None` for other key types
    /// and keys that have one. Costs two or three verifications' worth of time, once.
    pub fn precomputed(&self) -> Option<KeyMaterial> {
        let kind = match &self.kind {
            KeyKind::P256(key) if !key.is_precomputed() => KeyKind::P256(key.precomputed()),
            KeyKind::Ed25519(key) if !key.is_precomputed() => KeyKind::Ed25519(key.precomputed()),
            _ => return None,
        };
        Some(KeyMaterial { kind, thumbprint: self.thumbprint.clone() })
    }

    pub fn is_precomputed(&self) -> bool {
        match &self.kind {
            KeyKind::P256(key) => key.is_precomputed(),
            KeyKind::Ed25519(key) => key.is_precomputed(),
            KeyKind::P384(_) | KeyKind::Rsa(_) => false,
        }
    }

    /// Verifies `signature` over `signing_input` with `alg` (which must fit the key type).
    /// False on any mismatch.
    pub fn verify(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match &self.kind {
            KeyKind::P256(key) => key.verify(signing_input, signature),
            KeyKind::P384(key) => key.verify(signing_input, signature),
            KeyKind::Ed25519(key) => key.verify(signing_input, signature),
            KeyKind::Rsa(key) => key.verify(alg, signing_input, signature),
        }
    }
}

/// Key material that builds its table of multiples ([`KeyMaterial::precomputed`]) once it has
/// verified a second valid signature. A key that signs many (an issuer's: every token; a DPoP
/// client's: every proof) then verifies fixed-base; a one-off key never pays for a table; and
/// only valid signatures count, so a forger cannot make the filter build tables.
pub struct LearningKey {
    material: KeyMaterial,
    /// The material with its table (`None` for key types without one), made once.
    fast: OnceLock<Option<KeyMaterial>>,
    verified: AtomicU32,
}

impl std::fmt::Debug for LearningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fast.get() {
            Some(Some(fast)) => write!(f, "{fast:?}"),
            _ => write!(f, "{:?}", self.material),
        }
    }
}

impl LearningKey {
    pub fn new(material: KeyMaterial) -> LearningKey {
        LearningKey { material, fast: OnceLock::new(), verified: AtomicU32::new(0) }
    }

    /// Whether this key verifies with its table now.
    pub fn is_precomputed(&self) -> bool {
        matches!(self.fast.get(), Some(Some(_)))
    }

    pub fn thumbprint(&self) -> &str {
        self.material.thumbprint()
    }

    pub fn fits(&self, alg: Alg) -> bool {
        self.material.fits(alg)
    }

    /// Verifies `signature` over `signing_input` with `alg` (which must fit the key type),
    /// with the table once there is one. False on any mismatch.
    pub fn verify(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        if let Some(Some(fast)) = self.fast.get() {
            return fast.verify(alg, signing_input, signature);
        }
        let valid = self.material.verify(alg, signing_input, signature);
        if valid && self.verified.fetch_add(1, Ordering::Relaxed) >= 1 {
            self.fast.get_or_init(|| self.material.precomputed());
        }
        valid
    }
}

/// A public key from a JWK, ready to verify: its material (a [`LearningKey`], shared by
/// clones), and the JWK's own `alg`.
#[derive(Clone)]
pub struct PublicKey {
    key: Arc<LearningKey>,
    /// The JWK's own `alg`, when it names one: then only that algorithm may be used with it.
    pinned_alg: Option<Alg>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:?}, alg {:?})", self.key, self.pinned_alg)
    }
}

impl PublicKey {
    /// Builds a key from a JWK object. The JWK's `alg`, if any, pins the algorithm.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<PublicKey, JwkError> {
        let checked = CheckedJwk::read(jwk)?;
        let material = KeyMaterial::decode(&checked)?;
        Ok(PublicKey { key: Arc::new(LearningKey::new(material)), pinned_alg: checked.pinned_alg })
    }

    /// Whether this key verifies with its table now.
    pub fn is_precomputed(&self) -> bool {
        self.key.is_precomputed()
    }

    pub fn thumbprint(&self) -> &str {
        self.key.thumbprint()
    }

    /// Whether a JWS with header `alg` may be verified with this key: the algorithm comes from
    /// the key (its type, and its `alg` member when present), never from the token alone.
    pub fn allows(&self, alg: Alg) -> bool {
        self.key.fits(alg) && self.pinned_alg.is_none_or(|pinned| pinned == alg)
    }

    /// Verifies `signature` over `signing_input` with `alg`. False on any mismatch.
    pub fn verify(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        self.allows(alg) && self.key.verify(alg, signing_input, signature)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::testkit::*;

    fn jwk_obj(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    /// RFC 7638 §3.1: the thumbprint of the RSA key of RFC 7517 Appendix A.1.
    #[test]
    fn rfc7638_thumbprint_vector() {
        let jwk = jwk_obj(crate::testkit::vectors::RFC7638_JWK);
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(key.thumbprint(), crate::testkit::vectors::RFC7638_THUMBPRINT);
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(b64url_decode("AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(b64url_decode("AQAB="), None, "padding");
        assert_eq!(b64url_decode("a+/b"), None, "standard alphabet");
        assert_eq!(b64url_decode("AQB"), None, "non-canonical trailing bits");
    }

    #[test]
    fn split_refuses_wrong_shapes() {
        assert_eq!(CompactJws::split("a.b").unwrap_err(), JwsError::NotThreeParts);
        assert_eq!(CompactJws::split("a.b.c.d.e").unwrap_err(), JwsError::NotThreeParts);
        let header = b64url_encode(br#"{"alg":"ES256"}"#);
        assert_eq!(CompactJws::split(&format!("{header}.e30.")).unwrap_err(), JwsError::EmptySignature);
        let array = b64url_encode(b"[1]");
        assert_eq!(CompactJws::split(&format!("{array}.e30.AQAB")).unwrap_err(), JwsError::HeaderNotJsonObject);
        let long = "a".repeat(MAX_JWS_LEN + 1);
        assert_eq!(CompactJws::split(&long).unwrap_err(), JwsError::TooLong);
    }

    #[test]
    fn none_and_hmac_are_not_algorithms() {
        for name in ["none", "HS256", "HS384", "HS512", "es256", ""] {
            assert_eq!(Alg::parse(name), None, "{name}");
        }
        assert_eq!(Alg::parse("Ed25519"), Some(Alg::Ed25519));
        assert_eq!(Alg::parse("EdDSA"), Some(Alg::Ed25519));
    }

    #[test]
    fn each_key_type_verifies_its_own_signatures_only() {
        for signer in [TestKey::es256(), TestKey::es384(), TestKey::ed25519(), TestKey::rs256()] {
            let key = PublicKey::from_jwk(&signer.public_jwk()).unwrap();
            assert_eq!(key.thumbprint(), signer.thumbprint());
            let jws = signer.sign_jws(&serde_json::json!({"typ": "JWT"}), &serde_json::json!({"x": 1}));
            let parts = CompactJws::split(&jws).unwrap();
            let alg = Alg::parse(parts.header_str("alg").unwrap()).unwrap();
            assert!(key.verify(alg, parts.signing_input.as_bytes(), &parts.signature));
            // One flipped bit in the signed bytes fails.
            let mut tampered = parts.signing_input.as_bytes().to_vec();
            tampered[3] ^= 1;
            assert!(!key.verify(alg, &tampered, &parts.signature));
            // Another key of the same type fails.
            let other = signer.another_of_same_type();
            let other_key = PublicKey::from_jwk(&other.public_jwk()).unwrap();
            assert!(!other_key.verify(alg, parts.signing_input.as_bytes(), &parts.signature));
        }
    }

    #[test]
    fn key_type_and_jwk_alg_pin_the_algorithm() {
        let ec = PublicKey::from_jwk(&TestKey::es256().public_jwk()).unwrap();
        assert!(ec.allows(Alg::Es256));
        assert!(!ec.allows(Alg::Es384));
        assert!(!ec.allows(Alg::Rs256));
        let mut rsa_jwk = TestKey::rs256().public_jwk();
        let rsa_any = PublicKey::from_jwk(&rsa_jwk).unwrap();
        assert!(rsa_any.allows(Alg::Ps256) && rsa_any.allows(Alg::Rs512));
        rsa_jwk.insert("alg".into(), "RS256".into());
        let rsa_pinned = PublicKey::from_jwk(&rsa_jwk).unwrap();
        assert!(rsa_pinned.allows(Alg::Rs256));
        assert!(!rsa_pinned.allows(Alg::Ps256));
        let mut wrong = TestKey::es256().public_jwk();
        wrong.insert("alg".into(), "ES384".into());
        assert!(PublicKey::from_jwk(&wrong).is_err());
    }

    #[test]
    fn private_material_and_unsupported_keys_are_refused() {
        let mut private = TestKey::es256().public_jwk();
        private.insert("d".into(), "AAAA".into());
        assert_eq!(PublicKey::from_jwk(&private).unwrap_err(), JwkError::PrivateMaterial);
        let oct = jwk_obj(r#"{"kty":"oct","k":"c2VjcmV0"}"#);
        assert_eq!(PublicKey::from_jwk(&oct).unwrap_err(), JwkError::PrivateMaterial);
        let k1 = jwk_obj(r#"{"kty":"EC","crv":"secp256k1","x":"AA","y":"AA"}"#);
        assert!(matches!(PublicKey::from_jwk(&k1).unwrap_err(), JwkError::Unsupported(_)));
        let off_curve = jwk_obj(
            r#"{"kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        );
        assert!(matches!(PublicKey::from_jwk(&off_curve).unwrap_err(), JwkError::Invalid(_)));
    }

    #[test]
    fn jwk_members_must_fit_a_public_signature_key() {
        let base = TestKey::es256().public_jwk();
        assert!(PublicKey::from_jwk(&base).is_ok());
        let with = |name: &str, value: Value| {
            let mut jwk = base.clone();
            jwk.insert(name.into(), value);
            PublicKey::from_jwk(&jwk)
        };
        assert!(with("use", "sig".into()).is_ok());
        assert!(matches!(with("use", "enc".into()), Err(JwkError::Invalid(_))));
        assert!(with("key_ops", serde_json::json!(["verify"])).is_ok());
        assert!(matches!(with("key_ops", serde_json::json!(["sign"])), Err(JwkError::Invalid(_))));
        assert!(matches!(with("key_ops", serde_json::json!(["verify", "verify"])), Err(JwkError::Invalid(_))));
        assert!(matches!(with("n", "AQAB".into()), Err(JwkError::Invalid(_))), "RSA member on an EC key");
        assert!(matches!(with("alg", serde_json::json!(7)), Err(JwkError::Invalid(_))));
        assert!(matches!(with("alg", "XS256".into()), Err(JwkError::Unsupported(_))));
        assert!(matches!(with("x", "AAAA".into()), Err(JwkError::Invalid(_))), "short coordinate");
        let mut no_y = base.clone();
        no_y.remove("y");
        assert!(matches!(PublicKey::from_jwk(&no_y), Err(JwkError::Invalid(_))));
        // An RSA key whose exponent is not 65537.
        let mut rsa = TestKey::rs256().public_jwk();
        rsa.insert("e".into(), "Aw".into());
        assert!(matches!(PublicKey::from_jwk(&rsa), Err(JwkError::Invalid(_))));
    }

    /// The material id ignores everything but the key (so a cache keyed by it serves the same
    /// key whatever `kid`/`alg` the JWK carries), and the thumbprint is RFC 7638's.
    #[test]
    fn material_id_and_thumbprint() {
        for signer in [TestKey::es256(), TestKey::es384(), TestKey::ed25519()] {
            let jwk = signer.public_jwk();
            let checked = CheckedJwk::read(&jwk).unwrap();
            assert_eq!(b64url_encode(&sha256(checked.material_id().as_bytes())), signer.thumbprint());
            let mut other = jwk.clone();
            other.insert("kid".into(), "k".into());
            other.insert("alg".into(), signer.alg().into());
            let checked_other = CheckedJwk::read(&other).unwrap();
            assert_eq!(checked_other.material_id(), checked.material_id());
            assert_eq!(checked_other.pinned_alg(), Alg::parse(signer.alg()));
        }
    }

    /// A precomputed key verifies exactly what the plain one verifies.
    #[test]
    fn precomputed_keys_agree_with_plain_ones() {
        for signer in [TestKey::es256(), TestKey::ed25519()] {
            let plain = KeyMaterial::decode(&CheckedJwk::read(&signer.public_jwk()).unwrap()).unwrap();
            let fast = plain.precomputed().unwrap();
            assert!(fast.is_precomputed() && !plain.is_precomputed());
            assert_eq!(fast.thumbprint(), plain.thumbprint());
            let alg = Alg::parse(signer.alg()).unwrap();
            for i in 0..8u8 {
                let jws = signer.sign_jws(&serde_json::json!({"n": i}), &serde_json::json!({"x": i}));
                let parts = CompactJws::split(&jws).unwrap();
                let input = parts.signing_input.as_bytes();
                assert!(plain.verify(alg, input, &parts.signature) && fast.verify(alg, input, &parts.signature));
                let mut bad = parts.signature.clone();
                bad[usize::from(i) * 3] ^= 0x40;
                assert!(!plain.verify(alg, input, &bad) && !fast.verify(alg, input, &bad));
            }
        }
        let rsa = KeyMaterial::decode(&CheckedJwk::read(&TestKey::rs256().public_jwk()).unwrap()).unwrap();
        assert!(rsa.precomputed().is_none());
    }

    /// A JWKS key (the issuer's) gets its table once it has verified a second valid signature;
    /// forged signatures do not count, and the table path keeps the verdicts.
    #[test]
    fn a_key_that_keeps_verifying_gets_its_table() {
        for signer in [TestKey::es256(), TestKey::ed25519(), TestKey::rs256()] {
            let key = PublicKey::from_jwk(&signer.public_jwk()).unwrap();
            let copy = key.clone();
            let alg = Alg::parse(signer.alg()).unwrap();
            let signed = |i: u32| signer.sign_jws(&serde_json::json!({"typ": "JWT"}), &serde_json::json!({"n": i}));
            let parts = |jws: &str| {
                let p = CompactJws::split(jws).unwrap();
                (p.signing_input.as_bytes().to_vec(), p.signature)
            };
            let (input, signature) = parts(&signed(0));
            let mut forged = signature.clone();
            forged[5] ^= 0x10;
            for _ in 0..4 {
                assert!(!key.verify(alg, &input, &forged));
            }
            assert!(!key.is_precomputed(), "forgeries do not count");
            assert!(key.verify(alg, &input, &signature));
            assert!(!key.is_precomputed(), "one valid signature: plain");
            let (input2, signature2) = parts(&signed(1));
            assert!(key.verify(alg, &input2, &signature2));
            let tables = !matches!(signer, TestKey::Rs256(_));
            assert_eq!(key.is_precomputed(), tables, "{alg:?}: second valid signature");
            assert_eq!(copy.is_precomputed(), tables, "clones share the table");
            for i in 2..6 {
                let (input, signature) = parts(&signed(i));
                assert!(key.verify(alg, &input, &signature));
                let mut bad = signature.clone();
                bad[i as usize] ^= 0x01;
                assert!(!key.verify(alg, &input, &bad));
                assert!(!key.verify(alg, &input2, &signature));
            }
        }
    }

    /// Many keys, many messages: the table path and the plain one give the same verdict for
    /// every signature, its tampered copy and another key's signature (ES256 on `filter/p256`'s
    /// field, Ed25519 on `filter/ed25519`; the signer is jwt-simple, another implementation).
    #[test]
    fn precomputed_and_plain_paths_agree_across_keys() {
        for make in [TestKey::es256 as fn() -> TestKey, TestKey::ed25519] {
            let signers: Vec<TestKey> = (0..6).map(|_| make()).collect();
            let keys: Vec<(KeyMaterial, KeyMaterial)> = signers
                .iter()
                .map(|s| {
                    let plain = KeyMaterial::decode(&CheckedJwk::read(&s.public_jwk()).unwrap()).unwrap();
                    let fast = plain.precomputed().unwrap();
                    (plain, fast)
                })
                .collect();
            for (n, signer) in signers.iter().enumerate() {
                let alg = Alg::parse(signer.alg()).unwrap();
                for i in 0..5u32 {
                    let jws = signer.sign_jws(&serde_json::json!({"k": n, "m": i}), &serde_json::json!({"payload": "x".repeat(i as usize * 37)}));
                    let parts = CompactJws::split(&jws).unwrap();
                    let input = parts.signing_input.as_bytes();
                    let mut tampered = parts.signature.clone();
                    let at = (i as usize * 11 + n) % tampered.len();
                    tampered[at] ^= 0x01;
                    for (m, (plain, fast)) in keys.iter().enumerate() {
                        let own = m == n;
                        assert_eq!(plain.verify(alg, input, &parts.signature), own, "plain, signer {n}, key {m}, message {i}");
                        assert_eq!(fast.verify(alg, input, &parts.signature), own, "table, signer {n}, key {m}, message {i}");
                        assert!(!plain.verify(alg, input, &tampered) && !fast.verify(alg, input, &tampered));
                    }
                }
            }
        }
    }

    /// RSA-PSS with each hash, signed by another implementation (superboring, as the test kit
    /// signs RS256), verified here; RFC 7520's own vectors are in `rsa`.
    #[test]
    fn pss_signatures_of_another_implementation_verify() {
        use jwt_simple::prelude::RSAKeyPairLike as _;
        use superboring::{hash::MessageDigest, pkey::PKey, rsa::Padding, sign::Signer};
        let TestKey::Rs256(pair) = TestKey::rs256() else { unreachable!() };
        let key = PublicKey::from_jwk(&TestKey::Rs256(pair.clone()).public_jwk()).unwrap();
        let pkey = PKey::from_rsa(pair.key_pair().as_ref().clone()).unwrap();
        for (alg, md, padding) in [
            (Alg::Ps256, MessageDigest::sha256(), Padding::PKCS1_PSS),
            (Alg::Ps384, MessageDigest::sha384(), Padding::PKCS1_PSS),
            (Alg::Ps512, MessageDigest::sha512(), Padding::PKCS1_PSS),
            (Alg::Rs384, MessageDigest::sha384(), Padding::PKCS1),
            (Alg::Rs512, MessageDigest::sha512(), Padding::PKCS1),
        ] {
            let mut signer = Signer::new(md, &pkey).unwrap();
            signer.set_rsa_padding(padding).unwrap();
            signer.update(b"header.payload").unwrap();
            let sig = signer.sign_to_vec().unwrap();
            assert!(key.verify(alg, b"header.payload", &sig), "{alg:?}");
            assert!(!key.verify(alg, b"header.payloae", &sig), "{alg:?} other message");
        }
    }

}
