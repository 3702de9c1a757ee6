//! Access tokens and DPoP proofs: compact JWS split, header checks, signature, claims
//! (`token::UntrustedToken::parse` + `verify`, `dpop::verify_proof`). The first byte picks the
//! mode (see `mcp_guard_fuzz::jose_mode`): the raw modes take the rest as the header value
//! text; the signed modes take `header\nclaims`, sign them with a fixed key and so reach the
//! claim checks behind the signature.
//!
//! Invariants:
//! - base64url is canonical: whatever decodes re-encodes to the same text;
//! - a split JWS is its own parts: `signing_input` + `.` + signature, header a JSON object;
//! - a parsed token's `alg` is one we verify; a header signed by the issuer key with an `alg`
//!   of that key, `kid` k1 or none, an access-token `typ` or none and no `crit` parses and its
//!   signature verifies;
//! - an accepted token satisfies issuer, audience, `exp`/`nbf`/`iat` (with the skew), its scopes
//!   are those of `scope`/`scp`, and the token cache serves it back;
//! - an accepted proof was signed by the holder key (its `jkt`), is for POST on the public URL
//!   and the fixed access token, is fresh, and the replay cache refuses it the second time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::binding::{self, Binding, Scheme};
use mcp_guard::dpop::{verify_proof, ProofContext, ProofError, MAX_JTI_LEN};
use mcp_guard::jose::{b64url_decode, b64url_encode, Alg, CompactJws};
use mcp_guard::replay::{MemoryStore, ReplayCache};
use mcp_guard::token::{Expectations, TokenCache, TokenError, UntrustedToken};
use mcp_guard::uri::AbsoluteUrl;
use mcp_guard_fuzz::*;
use serde_json::{Map, Value};

fn check_b64(part: &str) {
    if let Some(bytes) = b64url_decode(part) {
        assert_eq!(b64url_encode(&bytes), part, "base64url is not canonical");
    }
}

fn check_split(text: &str) {
    for part in text.split('.').take(4) {
        check_b64(part);
    }
    if let Ok(jws) = CompactJws::split(text) {
        assert!(text.starts_with(jws.signing_input));
        assert_eq!(text, format!("{}.{}", jws.signing_input, b64url_encode(&jws.signature)));
        let (_, payload) = jws.signing_input.split_once('.').expect("signing input has a dot");
        assert_eq!(b64url_encode(&jws.payload), payload);
        assert!(!jws.signature.is_empty());
    }
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Option<u64> {
    let n = claims.get(name)?.as_number()?;
    n.as_u64().or_else(|| n.as_f64().map(|f| f as u64))
}

fn scopes_of(claims: &Map<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    if let Some(Value::String(s)) = claims.get("scope") {
        texts.push(s);
    }
    match claims.get("scp") {
        Some(Value::String(s)) => texts.push(s),
        Some(Value::Array(items)) => texts.extend(items.iter().filter_map(Value::as_str)),
        _ => {}
    }
    for scope in texts.iter().flat_map(|t| t.split(' ')).filter(|s| !s.is_empty()) {
        if !out.iter().any(|have| have == scope) {
            out.push(scope.to_string());
        }
    }
    out
}

fn check_token(raw: &str, signed_header: Option<&[u8]>) {
    check_split(raw);
    let parsed = UntrustedToken::parse(raw);
    if let Some(header) = signed_header {
        // Completeness: a well-formed header over our own signature must parse and verify.
        if let Ok(Value::Object(h)) = serde_json::from_slice::<Value>(header) {
            let alg_ok = matches!(h.get("alg").and_then(Value::as_str), Some("EdDSA" | "Ed25519"));
            let kid_ok = match h.get("kid") {
                None => true,
                Some(k) => k.as_str() == Some(KID),
            };
            let typ_ok = match h.get("typ") {
                None => true,
                Some(Value::String(t)) => {
                    matches!(t.to_ascii_lowercase().as_str(), "jwt" | "at+jwt" | "application/at+jwt" | "application/jwt")
                }
                Some(_) => false,
            };
            if alg_ok && kid_ok && typ_ok && !h.contains_key("crit") && raw.len() <= mcp_guard::jose::MAX_JWS_LEN {
                if let Err(e) = &parsed {
                    panic!("well-formed signed token refused at parse: {e:?}");
                }
            }
        }
    }
    let Ok(token) = parsed else { return };
    let jws = CompactJws::split(raw).expect("a parsed token splits");
    let alg = jws.header_str("alg").and_then(Alg::parse).expect("a parsed token has an alg we verify");
    assert_eq!(token.kid(), jws.header_str("kid"));
    let expect = Expectations { issuer: ISSUER, audience: AUDIENCE, clock_skew_seconds: SKEW };
    match token.verify(keyset(), &expect, NOW) {
        Ok(verified) => {
            assert_eq!(alg, Alg::Ed25519, "only the Ed25519 issuer key is in the key set");
            let c = verified.claims();
            let claims = match serde_json::from_slice::<Value>(&jws.payload) {
                Ok(Value::Object(map)) => map,
                other => panic!("accepted claims that are not an object: {other:?}"),
            };
            assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
            assert_eq!(c.issuer, ISSUER);
            let aud_ok = match claims.get("aud") {
                Some(Value::String(a)) => a == AUDIENCE,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
                _ => false,
            };
            assert!(aud_ok, "accepted a token for another audience");
            let exp = numeric(&claims, "exp").expect("accepted a token without exp");
            assert_eq!(c.expires_at, exp);
            assert!(NOW < exp.saturating_add(SKEW), "accepted an expired token");
            if let Some(nbf) = numeric(&claims, "nbf") {
                assert!(NOW + SKEW >= nbf, "accepted a token before nbf");
            }
            if let Some(iat) = numeric(&claims, "iat") {
                assert!(iat <= NOW + SKEW, "accepted a token issued in the future");
            }
            assert_eq!(c.scopes, scopes_of(&claims), "scopes differ from scope/scp");
            assert_eq!(c.subject.as_deref(), claims.get("sub").and_then(Value::as_str));
            assert_eq!(c.signing_key, issuer_key().thumbprint());
            if let Some(Value::Object(cnf)) = claims.get("cnf") {
                assert!(c.cnf.is_bound());
                assert_eq!(c.cnf.jkt.as_deref(), cnf.get("jkt").and_then(Value::as_str));
            } else {
                assert!(!c.cnf.is_bound(), "cnf read from nowhere");
            }
            // The token cache hands back what it was given, until exp.
            let mut cache = TokenCache::new(4);
            let key = TokenCache::key(raw);
            cache.insert(key, &verified);
            let again = cache.get(&key, NOW, SKEW).expect("a just-verified token is served from the cache");
            assert_eq!(again.claims(), c);
            assert!(cache.get(&key, exp.saturating_add(SKEW), SKEW).is_none(), "cache serves an expired token");
            // The binding check takes whatever cnf the token has.
            let _ = binding::check(Binding::DpopOrMtls, Scheme::Dpop, &c.cnf, Some(holder_key().thumbprint().as_str()), None);
        }
        Err(e) => {
            if signed_header.is_some() && alg == Alg::Ed25519 && token_kid_ok(&jws) {
                assert!(
                    !matches!(e, TokenError::BadSignature | TokenError::UnknownKey(_) | TokenError::KeyAlgorithmMismatch),
                    "our own signature was refused: {e:?}"
                );
            }
            let _ = e.describe();
        }
    }
}

fn token_kid_ok(jws: &CompactJws<'_>) -> bool {
    match jws.header.get("kid") {
        None => true,
        Some(k) => k.as_str() == Some(KID),
    }
}

fn check_proof(proof: &str, signed: bool) {
    check_split(proof);
    let htu = AbsoluteUrl::parse(PUBLIC_URL).expect("public URL");
    let ctx = ProofContext { method: "POST", htu: &htu, access_token: ACCESS_TOKEN };
    let settings = dpop_settings();
    match verify_proof(proof, &ctx, &settings, NOW) {
        Ok(verified) => {
            let jws = CompactJws::split(proof).expect("a verified proof splits");
            let claims = match serde_json::from_slice::<Value>(&jws.payload) {
                Ok(Value::Object(map)) => map,
                other => panic!("accepted proof claims that are not an object: {other:?}"),
            };
            if signed {
                assert_eq!(verified.jkt, holder_key().thumbprint(), "jkt is not the signer's thumbprint");
            }
            assert!(!verified.jti.is_empty() && verified.jti.len() <= MAX_JTI_LEN);
            assert_eq!(claims.get("jti").and_then(Value::as_str), Some(verified.jti.as_str()));
            assert_eq!(claims.get("htm").and_then(Value::as_str), Some("POST"));
            assert_eq!(claims.get("ath").and_then(Value::as_str), Some(ath(ACCESS_TOKEN).as_str()));
            let htu_claim = claims.get("htu").and_then(Value::as_str).expect("accepted proof without htu");
            assert_eq!(AbsoluteUrl::parse_ignoring_query(htu_claim).ok().as_ref(), Some(&htu));
            assert!(verified.iat <= NOW + settings.clock_skew_seconds, "accepted a proof from the future");
            assert!(NOW <= verified.iat + settings.max_age_seconds, "accepted a stale proof");
            assert!(verified.remember_until > NOW);
            // Replay: the first use is remembered, the second refused.
            let cache = ReplayCache::new(64);
            let mut store = MemoryStore::default();
            let digest = ReplayCache::digest(&verified.jkt, &verified.jti);
            assert!(cache.check_and_remember(&mut store, digest, verified.remember_until, NOW, 1).is_ok());
            assert!(cache.check_and_remember(&mut store, digest, verified.remember_until, NOW, 2).is_err(), "replay not caught");
        }
        Err(e) => {
            if signed {
                assert_ne!(e, ProofError::Malformed(mcp_guard::jose::JwsError::EmptySignature));
            }
            let _ = e.describe();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        jose_mode::RAW_TOKEN => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check_token(text, None);
            }
        }
        jose_mode::SIGNED_TOKEN => {
            let (header, claims) = split_document_pair(rest);
            let token = sign_compact(issuer_key(), header, claims);
            check_token(&token, Some(header));
        }
        jose_mode::RAW_PROOF => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check_proof(text, false);
            }
        }
        _ => {
            let (header, claims) = split_document_pair(rest);
            let proof = sign_compact(holder_key(), header, claims);
            check_proof(&proof, true);
        }
    }
});
