//! The issuer's signing keys (a JWK Set, RFC 7517 §5), from the configuration or fetched
//! through an Envoy cluster.
//!
//! Keys we cannot verify with (encryption keys, other curves) are skipped, as a JWKS often
//! carries them beside the signing keys; a key we could use but that is malformed, or any key
//! with private material, refuses the whole set: a broken JWKS is a fault to surface, not to
//! paper over. At least one usable key is required.
#![forbid(unsafe_code)]

use serde_json::Value;

use crate::jose::{Alg, JwkError, PublicKey};

/// Largest JWKS document we parse, and most keys we keep.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
pub const MAX_KEYS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksError {
    /// Where in the document (`.keys[2]`), empty for the whole.
    pub location: String,
    pub problem: String,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JWKS{}: {}", self.location, self.problem)
    }
}

fn jwks_err(location: impl Into<String>, problem: impl Into<String>) -> JwksError {
    JwksError { location: location.into(), problem: problem.into() }
}

#[derive(Debug, Clone)]
struct Entry {
    kid: Option<String>,
    key: PublicKey,
}

#[derive(Debug, Clone)]
pub struct KeySet {
    entries: Vec<Entry>,
    /// How many keys were passed over as not for signature verification by us.
    pub skipped: usize,
}

/// Which keys may verify a token whose header names `kid` and `alg`.
#[derive(Debug)]
pub enum Lookup<'a> {
    Candidates(Vec<&'a PublicKey>),
    /// No key has that `kid`: the issuer may have rotated keys, so a refetch can help.
    UnknownKid,
    /// Keys exist (with that `kid`, if one was named) but none is for that algorithm.
    NoKeyForAlg,
}

impl KeySet {
    pub fn from_jwks_bytes(bytes: &[u8]) -> Result<KeySet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(jwks_err("", format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| jwks_err("", format!("not JSON ({e})")))?;
        Self::from_jwks_value(&value)
    }

    pub fn from_jwks_value(value: &Value) -> Result<KeySet, JwksError> {
        let Some(Value::Array(keys)) = value.get("keys") else {
            return Err(jwks_err(".keys", "must be an array of JWKs"));
        };
        let mut entries = Vec::new();
        let mut skipped = 0;
        for (i, jwk) in keys.iter().enumerate() {
            let location = format!(".keys[{i}]");
            let Value::Object(map) = jwk else {
                return Err(jwks_err(location, "is not a JSON object"));
            };
            if map.get("use").is_some_and(|u| u != "sig") {
                skipped += 1;
                continue;
            }
            let kid = match map.get("kid") {
                None => None,
                Some(Value::String(kid)) => Some(kid.clone()),
                Some(_) => return Err(jwks_err(location, "kid is not a string")),
            };
            match PublicKey::from_jwk(map) {
                Ok(key) => entries.push(Entry { kid, key }),
                Err(JwkError::Unsupported(_)) => skipped += 1,
                Err(JwkError::PrivateMaterial) => {
                    return Err(jwks_err(location, "holds private key material; publish public keys only"))
                }
                Err(JwkError::Invalid(why)) => return Err(jwks_err(location, format!("invalid key: {why}"))),
            }
            if entries.len() > MAX_KEYS {
                return Err(jwks_err(".keys", format!("more than {MAX_KEYS} keys")));
            }
        }
        if entries.is_empty() {
            return Err(jwks_err(".keys", "holds no signature key we can verify with (EC P-256/P-384, Ed25519, RSA ≥ 2048)"));
        }
        Ok(KeySet { entries, skipped })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains_kid(&self, kid: &str) -> bool {
        self.entries.iter().any(|e| e.kid.as_deref() == Some(kid))
    }

    /// The keys that may verify a JWS with header `kid` (if any) and `alg`.
    pub fn lookup(&self, kid: Option<&str>, alg: Alg) -> Lookup<'_> {
        let named: Vec<&Entry> = match kid {
            Some(kid) => self.entries.iter().filter(|e| e.kid.as_deref() == Some(kid)).collect(),
            None => self.entries.iter().collect(),
        };
        if named.is_empty() {
            return Lookup::UnknownKid;
        }
        let fit: Vec<&PublicKey> = named.iter().map(|e| &e.key).filter(|k| k.allows(alg)).collect();
        if fit.is_empty() {
            Lookup::NoKeyForAlg
        } else {
            Lookup::Candidates(fit)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::testkit::TestKey;
    use serde_json::json;

    #[test]
    fn finds_keys_by_kid_and_algorithm() {
        let ec = TestKey::es256();
        let ed = TestKey::ed25519();
        let set = KeySet::from_jwks_value(&json!({"keys": [ec.jwks_entry("a"), ed.jwks_entry("b")]})).unwrap();
        assert_eq!(set.len(), 2);
        assert!(matches!(set.lookup(Some("a"), Alg::Es256), Lookup::Candidates(k) if k.len() == 1));
        assert!(matches!(set.lookup(Some("a"), Alg::Ed25519), Lookup::NoKeyForAlg));
        assert!(matches!(set.lookup(Some("zzz"), Alg::Es256), Lookup::UnknownKid));
        assert!(matches!(set.lookup(None, Alg::Ed25519), Lookup::Candidates(k) if k.len() == 1));
    }

    #[test]
    fn skips_encryption_and_unsupported_keys() {
        let ec = TestKey::es256();
        let mut enc = TestKey::es256().jwks_entry("enc");
        enc["use"] = json!("enc");
        let k1 = json!({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "kid": "k1"});
        let set = KeySet::from_jwks_value(&json!({"keys": [enc, k1, ec.jwks_entry("sig")]})).unwrap();
        assert_eq!((set.len(), set.skipped), (1, 2));
    }

    #[test]
    fn refuses_broken_sets() {
        let only_enc = json!({"keys": [{"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}]});
        assert_eq!(KeySet::from_jwks_value(&only_enc).unwrap_err().location, ".keys");
        assert_eq!(KeySet::from_jwks_value(&json!({"keys": {}})).unwrap_err().location, ".keys");
        assert_eq!(KeySet::from_jwks_value(&json!([])).unwrap_err().location, ".keys");
        let mut private = TestKey::es256().jwks_entry("p");
        private["d"] = json!("AAAA");
        let e = KeySet::from_jwks_value(&json!({"keys": [TestKey::es256().jwks_entry("ok"), private]})).unwrap_err();
        assert_eq!(e.location, ".keys[1]");
        assert!(e.problem.contains("private"));
        assert!(KeySet::from_jwks_bytes(b"not json").is_err());
        let big = vec![b' '; MAX_JWKS_BYTES + 1];
        assert!(KeySet::from_jwks_bytes(&big).unwrap_err().problem.contains("larger"));
    }
}
