//! JOSE building blocks shared by access tokens and DPoP proofs: strict base64url, the compact
//! JWS split, the algorithms we accept, public keys built from JWKs, and signature verification
//! over `header.payload`.
//!
//! jwt-simple parses and checks JWKs (it refuses private members, a `use` other than `sig`, an
//! `alg` that does not fit the key) and computes RFC 7638 thumbprints. Its token verifier types
//! a header's `jwk` as a string, so a DPoP proof cannot go through it: signatures are verified
//! here, directly with the curve crates jwt-simple itself uses.
#![forbid(unsafe_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jwt_simple::prelude::{
    ECDSAP256PublicKeyLike, ECDSAP384PublicKeyLike, ES256PublicKey, ES384PublicKey,
    EdDSAPublicKeyLike, Ed25519PublicKey, PS256PublicKey, PS384PublicKey, PS512PublicKey,
    RS256PublicKey, RS384PublicKey, RS512PublicKey, RSAPublicKeyLike,
};
use serde_json::{Map, Value};
use superboring::hash::MessageDigest;
use superboring::pkey::{PKey, Public};
use superboring::rsa::{Padding, Rsa};
use superboring::sign::Verifier;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwsError {
    TooLong,
    NotThreeParts,
    BadBase64,
    HeaderNotJsonObject,
    EmptySignature,
}

impl<'a> CompactJws<'a> {
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
        let header_bytes = b64url_decode(h).ok_or(JwsError::BadBase64)?;
        let payload = b64url_decode(p).ok_or(JwsError::BadBase64)?;
        let signature = b64url_decode(s).ok_or(JwsError::BadBase64)?;
        if signature.is_empty() {
            return Err(JwsError::EmptySignature);
        }
        let header = match serde_json::from_slice::<Value>(&header_bytes) {
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
    /// `kty`/`crv` we do not verify with (e.g. `oct`, `secp256k1`).
    Unsupported(String),
    /// The JWK carries private key material (`d`, `p`, …).
    PrivateMaterial,
    /// jwt-simple refused it: bad coordinates, a point off the curve, an RSA key under 2048
    /// bits, an `alg` or `use` that does not fit the key.
    Invalid(String),
}

/// A public key from a JWK, ready to verify.
#[derive(Clone)]
pub struct PublicKey {
    kind: KeyKind,
    /// The JWK's own `alg`, when it names one: then only that algorithm may be used with it.
    pinned_alg: Option<Alg>,
    /// RFC 7638 thumbprint, base64url.
    thumbprint: String,
}

#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a handful of keys per worker; boxing buys nothing
enum KeyKind {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_compact::PublicKey),
    Rsa(Rsa<Public>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            KeyKind::P256(_) => "P-256",
            KeyKind::P384(_) => "P-384",
            KeyKind::Ed25519(_) => "Ed25519",
            KeyKind::Rsa(_) => "RSA",
        };
        write!(f, "PublicKey({kind}, {})", self.thumbprint)
    }
}

/// Private members of every key type (RFC 7518 §6, RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

impl PublicKey {
    /// Builds a key from a JWK object. The JWK's `alg`, if any, pins the algorithm.
    pub fn from_jwk(jwk: &Map<String, Value>) -> Result<PublicKey, JwkError> {
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(JwkError::PrivateMaterial);
        }
        let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
        let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
        let jwk_alg = match jwk.get("alg") {
            None => None,
            Some(Value::String(name)) => Some(
                Alg::parse(name).ok_or_else(|| JwkError::Unsupported(format!("alg {name}")))?,
            ),
            Some(_) => return Err(JwkError::Invalid("alg is not a string".into())),
        };
        let text = serde_json::to_string(jwk).map_err(|e| JwkError::Invalid(e.to_string()))?;
        let invalid = |e: jwt_simple::Error| JwkError::Invalid(e.to_string());
        let (kind, thumbprint) = match (kty, crv) {
            ("EC", "P-256") => {
                let key = ES256PublicKey::from_jwk(&text).map_err(invalid)?;
                (KeyKind::P256(*key.public_key().as_ref()), key.jwk_thumbprint())
            }
            ("EC", "P-384") => {
                let key = ES384PublicKey::from_jwk(&text).map_err(invalid)?;
                (KeyKind::P384(*key.public_key().as_ref()), key.jwk_thumbprint())
            }
            ("OKP", "Ed25519") => {
                let key = Ed25519PublicKey::from_jwk(&text).map_err(invalid)?;
                (KeyKind::Ed25519(*key.public_key().as_ref()), key.jwk_thumbprint())
            }
            ("RSA", _) => {
                // jwt-simple's RSA importers each accept only their own `alg` member.
                let (rsa, thumbprint) = match jwk_alg.unwrap_or(Alg::Rs256) {
                    Alg::Rs384 => rsa_parts(RS384PublicKey::from_jwk(&text).map_err(invalid)?),
                    Alg::Rs512 => rsa_parts(RS512PublicKey::from_jwk(&text).map_err(invalid)?),
                    Alg::Ps256 => rsa_parts(PS256PublicKey::from_jwk(&text).map_err(invalid)?),
                    Alg::Ps384 => rsa_parts(PS384PublicKey::from_jwk(&text).map_err(invalid)?),
                    Alg::Ps512 => rsa_parts(PS512PublicKey::from_jwk(&text).map_err(invalid)?),
                    _ => rsa_parts(RS256PublicKey::from_jwk(&text).map_err(invalid)?),
                };
                (KeyKind::Rsa(rsa), thumbprint)
            }
            _ => return Err(JwkError::Unsupported(format!("kty {kty:?} crv {crv:?}"))),
        };
        let key = PublicKey { kind, pinned_alg: jwk_alg, thumbprint };
        if let Some(alg) = jwk_alg {
            if !key.fits(alg) {
                return Err(JwkError::Invalid(format!("alg {} does not fit the key", alg.name())));
            }
        }
        Ok(key)
    }

    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// Whether the key type can verify `alg` at all (curve and family).
    fn fits(&self, alg: Alg) -> bool {
        matches!(
            (&self.kind, alg),
            (KeyKind::P256(_), Alg::Es256)
                | (KeyKind::P384(_), Alg::Es384)
                | (KeyKind::Ed25519(_), Alg::Ed25519)
                | (
                    KeyKind::Rsa(_),
                    Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
                )
        )
    }

    /// Whether a JWS with header `alg` may be verified with this key: the algorithm comes from
    /// the key (its type, and its `alg` member when present), never from the token alone.
    pub fn allows(&self, alg: Alg) -> bool {
        self.fits(alg) && self.pinned_alg.is_none_or(|pinned| pinned == alg)
    }

    /// Verifies `signature` over `signing_input` with `alg`. False on any mismatch.
    pub fn verify(&self, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
        if !self.allows(alg) {
            return false;
        }
        match &self.kind {
            KeyKind::P256(key) => {
                use p256::ecdsa::signature::Verifier as _;
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok())
            }
            KeyKind::P384(key) => {
                use p384::ecdsa::signature::Verifier as _;
                p384::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok())
            }
            KeyKind::Ed25519(key) => ed25519_compact::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(signing_input, &sig).is_ok()),
            KeyKind::Rsa(rsa) => verify_rsa(rsa, alg, signing_input, signature),
        }
    }
}

fn rsa_parts(key: impl RSAPublicKeyLike + RsaThumbprint) -> (Rsa<Public>, String) {
    (key.public_key().as_ref().clone(), key.thumbprint())
}

/// jwt-simple gives each RSA key type its own inherent `jwk_thumbprint`; this lets
/// [`rsa_parts`] take any of them.
trait RsaThumbprint {
    fn thumbprint(&self) -> String;
}

macro_rules! rsa_thumbprint {
    ($($t:ty),*) => {$(
        impl RsaThumbprint for $t {
            fn thumbprint(&self) -> String {
                self.jwk_thumbprint()
            }
        }
    )*};
}
rsa_thumbprint!(RS256PublicKey, RS384PublicKey, RS512PublicKey, PS256PublicKey, PS384PublicKey, PS512PublicKey);

fn verify_rsa(rsa: &Rsa<Public>, alg: Alg, signing_input: &[u8], signature: &[u8]) -> bool {
    let (digest, padding) = match alg {
        Alg::Rs256 => (MessageDigest::sha256(), Padding::PKCS1),
        Alg::Rs384 => (MessageDigest::sha384(), Padding::PKCS1),
        Alg::Rs512 => (MessageDigest::sha512(), Padding::PKCS1),
        Alg::Ps256 => (MessageDigest::sha256(), Padding::PKCS1_PSS),
        Alg::Ps384 => (MessageDigest::sha384(), Padding::PKCS1_PSS),
        Alg::Ps512 => (MessageDigest::sha512(), Padding::PKCS1_PSS),
        _ => return false,
    };
    let Ok(pkey) = PKey::from_rsa(rsa.clone()) else {
        return false;
    };
    let Ok(mut verifier) = Verifier::new(digest, &pkey) else {
        return false;
    };
    verifier.set_rsa_padding(padding).is_ok()
        && verifier.update(signing_input).is_ok()
        && verifier.verify(signature).unwrap_or(false)
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
}
