//! The JWKS parser (`jwks::KeySet::from_jwks_bytes`) and JWK import (`jose::PublicKey::from_jwk`)
//! on arbitrary bytes.
//!
//! Invariants:
//! - an accepted set is a JSON object whose `keys` array holds at least one and at most
//!   `MAX_KEYS` usable keys (kept + skipped never exceeds the array);
//! - every string `kid` of a usable key is found; a lookup only offers keys that allow the alg;
//! - a JWK that imports has the RFC 7638 thumbprint computed independently here from its
//!   required members (when they are canonical base64url without leading zero bytes);
//! - a JWK with private members never imports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::jose::{b64url_decode, b64url_encode, sha256, Alg, JwkError, PublicKey};
use mcp_guard::jwks::{KeySet, Lookup, MAX_KEYS};
use serde_json::{Map, Value};

const ALGS: [Alg; 9] = [Alg::Es256, Alg::Es384, Alg::Ed25519, Alg::Rs256, Alg::Rs384, Alg::Rs512, Alg::Ps256, Alg::Ps384, Alg::Ps512];

/// A member as canonical base64url (and, for RSA integers, without a leading zero byte).
fn canonical<'a>(jwk: &'a Map<String, Value>, name: &str, integer: bool) -> Option<&'a str> {
    let text = jwk.get(name)?.as_str()?;
    let bytes = b64url_decode(text)?;
    if b64url_encode(&bytes) != text || (integer && bytes.first().is_none_or(|&b| b == 0)) {
        return None;
    }
    Some(text)
}

/// RFC 7638 §3: SHA-256 over the required members, lexicographic, no whitespace.
fn rfc7638(jwk: &Map<String, Value>) -> Option<String> {
    let q = |s: &str| serde_json::to_string(s).ok();
    let text = match jwk.get("kty")?.as_str()? {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            q(jwk.get("crv")?.as_str()?)?,
            q(canonical(jwk, "x", false)?)?,
            q(canonical(jwk, "y", false)?)?
        ),
        "OKP" => format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, q(jwk.get("crv")?.as_str()?)?, q(canonical(jwk, "x", false)?)?),
        "RSA" => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, q(canonical(jwk, "e", true)?)?, q(canonical(jwk, "n", true)?)?),
        _ => return None,
    };
    Some(b64url_encode(&sha256(text.as_bytes())))
}

fn check_jwk(jwk: &Map<String, Value>) -> Option<PublicKey> {
    let result = PublicKey::from_jwk(jwk);
    let private = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"].iter().any(|m| jwk.contains_key(*m));
    match result {
        Ok(key) => {
            assert!(!private, "imported a JWK with private members");
            let t = key.thumbprint();
            assert_eq!(b64url_decode(t).map(|b| b.len()), Some(32), "thumbprint {t:?} is not a base64url SHA-256");
            if let Some(expected) = rfc7638(jwk) {
                assert_eq!(t, expected, "thumbprint differs from RFC 7638 over the JWK's members");
            }
            if let Some(pinned) = jwk.get("alg").and_then(Value::as_str).and_then(Alg::parse) {
                for alg in ALGS {
                    assert_eq!(key.allows(alg), alg == pinned, "a pinned key allows another alg");
                }
            }
            assert!(ALGS.iter().any(|&a| key.allows(a)), "a key that allows no alg");
            Some(key)
        }
        Err(e) => {
            if private {
                assert_eq!(e, JwkError::PrivateMaterial);
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let value: Option<Value> = serde_json::from_slice(data).ok();
    let items: Vec<&Map<String, Value>> = match &value {
        Some(Value::Object(top)) => match top.get("keys") {
            Some(Value::Array(keys)) => keys.iter().filter_map(Value::as_object).collect(),
            _ => vec![top], // a lone JWK
        },
        _ => Vec::new(),
    };
    let imported: Vec<(Option<&str>, PublicKey)> = items
        .iter()
        .filter_map(|jwk| check_jwk(jwk).map(|k| (jwk.get("kid").and_then(Value::as_str), k)))
        .collect();

    match KeySet::from_jwks_bytes(data) {
        Ok(set) => {
            let value = value.as_ref().expect("an accepted JWKS is JSON to serde_json");
            let keys = value.get("keys").and_then(Value::as_array).expect("an accepted JWKS has a keys array");
            assert!((1..=MAX_KEYS).contains(&set.len()), "{} keys", set.len());
            assert!(!set.is_empty());
            assert!(set.len() + set.skipped <= keys.len());
            for (i, jwk) in keys.iter().enumerate() {
                let jwk = jwk.as_object().unwrap_or_else(|| panic!("accepted a JWKS whose keys[{i}] is not an object"));
                let for_sig = jwk.get("use").is_none_or(|u| u == "sig");
                if let (true, Some(Value::String(kid))) = (for_sig, jwk.get("kid")) {
                    if PublicKey::from_jwk(jwk).is_ok() {
                        assert!(set.contains_kid(kid), "usable key with kid {kid:?} not found");
                    }
                }
            }
            for alg in ALGS {
                for kid in imported.iter().map(|(kid, _)| *kid).chain([None, Some("")]) {
                    match set.lookup(kid, alg) {
                        Lookup::Candidates(c) => {
                            assert!(!c.is_empty());
                            assert!(c.iter().all(|k| k.allows(alg)), "lookup offered a key that refuses {alg:?}");
                        }
                        Lookup::UnknownKid => assert!(kid.is_some_and(|k| !set.contains_kid(k))),
                        Lookup::NoKeyForAlg => {}
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
