//! Access tokens: JWTs (RFC 7519, RFC 9068) signed by the issuer.
//!
//! An [`UntrustedToken`] is only a parsed header; it becomes a [`VerifiedToken`] through
//! [`UntrustedToken::verify`] and nothing else: signature by a key from the issuer's JWKS with
//! the algorithm that key allows, then `iss`, `aud` (RFC 8707 resource), `exp`, `nbf`, `iat`,
//! and a readable `cnf`. [`TokenCache`] keeps verified tokens by SHA-256 until `exp`, so a
//! worker verifies a session's token once, not on every request.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::jose::{sha256, Alg, CompactJws, JwsError};
use crate::jwks::{KeySet, Lookup};

/// Deepest `act` chain we read (RFC 8693 §4.1 nests one actor per level).
pub const MAX_DELEGATION_DEPTH: usize = 8;

/// Why an access token was refused. Flat, so tests compare with `assert_eq!`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    Malformed(JwsError),
    /// `alg` is `none`, HMAC, or anything else we do not verify.
    UnsupportedAlgorithm(String),
    /// `typ` is not a JWT access-token type (e.g. a DPoP proof sent as a token).
    WrongType(String),
    /// A `crit` header names extensions we do not understand (RFC 7515 §4.1.11).
    CriticalHeader,
    /// No key in the JWKS has the token's `kid`.
    UnknownKey(String),
    /// The key named cannot verify the token's `alg`.
    KeyAlgorithmMismatch,
    BadSignature,
    ClaimsNotJsonObject,
    WrongIssuer,
    WrongAudience,
    MissingExpiry,
    Expired,
    NotYetValid,
    IssuedInTheFuture,
    /// A claim has the wrong JSON type.
    BadClaim(&'static str),
    /// `cnf` names no confirmation method we can enforce, so the token's binding cannot be
    /// honoured.
    UnsupportedConfirmation,
    DelegationTooDeep,
}

impl TokenError {
    /// A short sentence for the `error_description` and the JSON-RPC error.
    pub fn describe(&self) -> String {
        match self {
            TokenError::Malformed(e) => format!("access token is not a compact JWS ({e:?})"),
            TokenError::UnsupportedAlgorithm(alg) => format!("access token algorithm {alg:?} is not accepted"),
            TokenError::WrongType(typ) => format!("access token typ {typ:?} is not an access token type"),
            TokenError::CriticalHeader => "access token has critical header extensions".into(),
            TokenError::UnknownKey(kid) => format!("no issuer key with kid {kid:?}"),
            TokenError::KeyAlgorithmMismatch => "the issuer key does not allow the token's algorithm".into(),
            TokenError::BadSignature => "access token signature is invalid".into(),
            TokenError::ClaimsNotJsonObject => "access token claims are not a JSON object".into(),
            TokenError::WrongIssuer => "access token issuer is not trusted".into(),
            TokenError::WrongAudience => "access token is not for this resource (aud)".into(),
            TokenError::MissingExpiry => "access token has no exp".into(),
            TokenError::Expired => "access token has expired".into(),
            TokenError::NotYetValid => "access token is not valid yet (nbf)".into(),
            TokenError::IssuedInTheFuture => "access token iat is in the future".into(),
            TokenError::BadClaim(name) => format!("access token claim {name} has the wrong type"),
            TokenError::UnsupportedConfirmation => "access token cnf names no binding this resource can check".into(),
            TokenError::DelegationTooDeep => "access token act chain is too deep".into(),
        }
    }
}

/// What a token must say to be accepted here.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub clock_skew_seconds: u64,
}

/// The key a token is bound to (`cnf`, RFC 7800).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confirmation {
    /// RFC 9449 §6: thumbprint of the DPoP key.
    pub jkt: Option<String>,
    /// RFC 8705 §3.1: base64url SHA-256 of the client certificate.
    pub x5t_s256: Option<String>,
}

impl Confirmation {
    pub fn is_bound(&self) -> bool {
        self.jkt.is_some() || self.x5t_s256.is_some()
    }
}

/// One actor of the `act` delegation chain (RFC 8693 §4.1), outermost (current) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub iss: Option<String>,
}

/// The claims of a verified access token that decisions and records use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub issuer: String,
    pub subject: Option<String>,
    /// `client_id` (RFC 9068), else `azp`.
    pub client_id: Option<String>,
    pub jti: Option<String>,
    pub expires_at: u64,
    pub scopes: Vec<String>,
    pub cnf: Confirmation,
    pub delegation: Vec<Actor>,
    /// Thumbprint of the issuer key that signed it.
    pub signing_key: String,
}

impl AccessClaims {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// A verified token. Only [`UntrustedToken::verify`] and the cache hand these out.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    claims: Arc<AccessClaims>,
}

impl VerifiedToken {
    pub fn claims(&self) -> &AccessClaims {
        &self.claims
    }

    /// The claims, shared (the token cache's copy: no clone of their strings per request).
    pub fn shared_claims(&self) -> Arc<AccessClaims> {
        Arc::clone(&self.claims)
    }
}

/// A parsed, unverified access token.
#[derive(Debug)]
pub struct UntrustedToken<'a> {
    jws: CompactJws<'a>,
    alg: Alg,
}

impl<'a> UntrustedToken<'a> {
    pub fn parse(raw: &'a str) -> Result<UntrustedToken<'a>, TokenError> {
        let jws = CompactJws::split(raw).map_err(TokenError::Malformed)?;
        let alg_name = jws.header_str("alg").unwrap_or("");
        let alg = Alg::parse(alg_name).ok_or_else(|| TokenError::UnsupportedAlgorithm(alg_name.to_string()))?;
        match jws.header.get("typ") {
            None => {}
            Some(Value::String(typ)) => {
                let lower = typ.to_ascii_lowercase();
                if !matches!(lower.as_str(), "jwt" | "at+jwt" | "application/at+jwt" | "application/jwt") {
                    return Err(TokenError::WrongType(typ.clone()));
                }
            }
            Some(_) => return Err(TokenError::WrongType("(not a string)".into())),
        }
        if jws.header.contains_key("crit") {
            return Err(TokenError::CriticalHeader);
        }
        Ok(UntrustedToken { jws, alg })
    }

    pub fn kid(&self) -> Option<&str> {
        self.jws.header_str("kid")
    }

    /// Verifies signature and claims at time `now` (Unix seconds).
    pub fn verify(self, keys: &KeySet, expect: &Expectations<'_>, now: u64) -> Result<VerifiedToken, TokenError> {
        let candidates = match keys.lookup(self.kid(), self.alg) {
            Lookup::Candidates(c) => c,
            Lookup::UnknownKid => return Err(TokenError::UnknownKey(self.kid().unwrap_or("").to_string())),
            Lookup::NoKeyForAlg => return Err(TokenError::KeyAlgorithmMismatch),
        };
        let input = self.jws.signing_input.as_bytes();
        let signer = candidates
            .into_iter()
            .find(|key| key.verify(self.alg, input, &self.jws.signature))
            .ok_or(TokenError::BadSignature)?;
        let claims = match serde_json::from_slice::<Value>(&self.jws.payload) {
            Ok(Value::Object(map)) => map,
            _ => return Err(TokenError::ClaimsNotJsonObject),
        };
        let claims = read_claims(&claims, expect, now, signer.thumbprint())?;
        Ok(VerifiedToken { claims: Arc::new(claims) })
    }
}

fn opt_string(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::BadClaim(name)),
    }
}

/// A NumericDate (RFC 7519 §2), whole seconds; fractions are cut off.
fn opt_time(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u))
            } else {
                match n.as_f64() {
                    Some(f) if (0.0..1e15).contains(&f) => Ok(Some(f as u64)),
                    _ => Err(TokenError::BadClaim(name)),
                }
            }
        }
        Some(_) => Err(TokenError::BadClaim(name)),
    }
}

fn read_claims(claims: &Map<String, Value>, expect: &Expectations<'_>, now: u64, signer: &str) -> Result<AccessClaims, TokenError> {
    let skew = expect.clock_skew_seconds;
    let issuer = opt_string(claims, "iss")?.ok_or(TokenError::WrongIssuer)?;
    if issuer != expect.issuer {
        return Err(TokenError::WrongIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == expect.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(expect.audience)),
        None => false,
        Some(_) => return Err(TokenError::BadClaim("aud")),
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience);
    }
    let expires_at = opt_time(claims, "exp")?.ok_or(TokenError::MissingExpiry)?;
    if now >= expires_at.saturating_add(skew) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = opt_time(claims, "nbf")? {
        if now.saturating_add(skew) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    if let Some(iat) = opt_time(claims, "iat")? {
        if iat > now.saturating_add(skew) {
            return Err(TokenError::IssuedInTheFuture);
        }
    }
    Ok(AccessClaims {
        issuer,
        subject: opt_string(claims, "sub")?,
        client_id: match opt_string(claims, "client_id")? {
            Some(id) => Some(id),
            None => opt_string(claims, "azp")?,
        },
        jti: opt_string(claims, "jti")?,
        expires_at,
        scopes: read_scopes(claims)?,
        cnf: read_confirmation(claims)?,
        delegation: read_delegation(claims)?,
        signing_key: signer.to_string(),
    })
}

/// `scope` (space-separated, RFC 8693 §4.2 / RFC 9068) and `scp` (array or string, common in
/// the wild). Both are read; a scope in either counts.
fn read_scopes(claims: &Map<String, Value>) -> Result<Vec<String>, TokenError> {
    let mut scopes: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        for scope in s.split(' ').filter(|s| !s.is_empty()) {
            if !scopes.iter().any(|have| have == scope) {
                scopes.push(scope.to_string());
            }
        }
    };
    match claims.get("scope") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => add(s),
        Some(_) => return Err(TokenError::BadClaim("scope")),
    }
    match claims.get("scp") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => add(s),
        Some(Value::Array(items)) => {
            for item in items {
                add(item.as_str().ok_or(TokenError::BadClaim("scp"))?);
            }
        }
        Some(_) => return Err(TokenError::BadClaim("scp")),
    }
    Ok(scopes)
}

fn read_confirmation(claims: &Map<String, Value>) -> Result<Confirmation, TokenError> {
    let cnf = match claims.get("cnf") {
        None | Some(Value::Null) => return Ok(Confirmation::default()),
        Some(Value::Object(cnf)) => cnf,
        Some(_) => return Err(TokenError::BadClaim("cnf")),
    };
    let member = |name: &'static str| match cnf.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::BadClaim("cnf")),
    };
    let confirmation = Confirmation { jkt: member("jkt")?, x5t_s256: member("x5t#S256")? };
    // A `cnf` we cannot enforce (`jwk`, `kid`, `jku`, …) must not become an unbound token.
    if !confirmation.is_bound() {
        return Err(TokenError::UnsupportedConfirmation);
    }
    Ok(confirmation)
}

fn read_delegation(claims: &Map<String, Value>) -> Result<Vec<Actor>, TokenError> {
    let mut chain = Vec::new();
    let mut current = claims.get("act");
    while let Some(act) = current {
        let Value::Object(act) = act else {
            return Err(TokenError::BadClaim("act"));
        };
        if chain.len() == MAX_DELEGATION_DEPTH {
            return Err(TokenError::DelegationTooDeep);
        }
        chain.push(Actor {
            sub: opt_string(act, "sub").map_err(|_| TokenError::BadClaim("act"))?,
            client_id: opt_string(act, "client_id").map_err(|_| TokenError::BadClaim("act"))?,
            iss: opt_string(act, "iss").map_err(|_| TokenError::BadClaim("act"))?,
        });
        current = act.get("act");
    }
    Ok(chain)
}

/// Whether two slices of one length hold the same bytes, reading all of them whatever they
/// hold (eight at a time: the token is compared on every request).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let word = |chunk: &[u8]| u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or_default());
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words.remainder().iter().zip(b_words.remainder()).fold(0u64, |acc, (x, y)| acc | u64::from(x ^ y));
    a.len() == b.len() && a_words.zip(b_words).fold(tail, |acc, (x, y)| acc | (word(x) ^ word(y))) == 0
}

/// Verified tokens of one worker, by SHA-256 of the token text, until their `exp`. Bounded:
/// when full, the oldest entry goes first.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Arc<AccessClaims>>,
    order: VecDeque<[u8; 32]>,
    /// The last token seen and its key: a client repeats its token on every request, and
    /// hashing it again costs more than the rest of a cached request's checks.
    last: Option<(Box<[u8]>, [u8; 32])>,
}

impl TokenCache {
    /// The table is sized once for twice `capacity`: evictions leave tombstones, and a table
    /// more than half full would be rebuilt at double size after enough of them, so memory
    /// would step up long after the cache first filled. Sized so, it is rehashed in place and
    /// the worker's memory is flat from the start (about 80 bytes per entry).
    pub fn new(capacity: usize) -> TokenCache {
        let capacity = capacity.max(1);
        TokenCache {
            capacity,
            entries: HashMap::with_capacity(capacity.saturating_mul(2)),
            order: VecDeque::with_capacity(capacity.saturating_mul(2)),
            last: None,
        }
    }

    pub fn key(raw_token: &str) -> [u8; 32] {
        sha256(raw_token.as_bytes())
    }

    /// [`TokenCache::key`], remembered for the last token: the same bytes give the same key.
    /// The comparison reads every byte whatever they hold, so its time tells nothing about how
    /// much of the previous caller's token a guess shares.
    pub fn key_of(&mut self, raw_token: &str) -> [u8; 32] {
        let raw = raw_token.as_bytes();
        if let Some((last, key)) = &self.last {
            if last.len() == raw.len() && same_bytes(last, raw) {
                return *key;
            }
        }
        let key = sha256(raw);
        self.last = Some((raw.into(), key));
        key
    }

    /// A cached token still valid at `now` (with the same skew verification allows). An
    /// expired one is dropped, never served.
    pub fn get(&mut self, key: &[u8; 32], now: u64, skew: u64) -> Option<VerifiedToken> {
        let claims = self.entries.get(key)?;
        if now >= claims.expires_at.saturating_add(skew) {
            self.entries.remove(key);
            return None;
        }
        Some(VerifiedToken { claims: Arc::clone(claims) })
    }

    pub fn insert(&mut self, key: [u8; 32], token: &VerifiedToken) {
        if self.entries.contains_key(&key) {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        // `order` may hold keys already dropped as expired; keep it from growing past twice
        // the capacity by compacting it when it does.
        if self.order.len() >= self.capacity.saturating_mul(2) {
            let live = &self.entries;
            self.order.retain(|k| live.contains_key(k));
        }
        self.entries.insert(key, Arc::clone(&token.claims));
        self.order.push_back(key);
    }

    /// Forget everything (the issuer's keys changed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::testkit::{TestIssuer, TestKey};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn same_bytes_sees_a_difference_in_any_byte_of_any_length() {
        for len in [0usize, 1, 7, 8, 9, 16, 23, 600] {
            let a: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "{len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x40;
                assert!(!same_bytes(&a, &b), "{len} {at}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same_bytes(&a, &longer), "{len}");
        }
    }

    fn setup(key: TestKey) -> (TestIssuer, KeySet) {
        let issuer = TestIssuer::new(key);
        let keys = KeySet::from_jwks_value(&issuer.jwks()).unwrap();
        (issuer, keys)
    }

    fn expect(issuer: &TestIssuer) -> Expectations<'_> {
        Expectations { issuer: &issuer.issuer, audience: &issuer.audience, clock_skew_seconds: 30 }
    }

    fn check(issuer: &TestIssuer, keys: &KeySet, token: &str, now: u64) -> Result<VerifiedToken, TokenError> {
        UntrustedToken::parse(token)?.verify(keys, &expect(issuer), now)
    }

    #[test]
    fn valid_tokens_of_every_key_type_verify() {
        for key in [TestKey::es256(), TestKey::es384(), TestKey::ed25519(), TestKey::rs256()] {
            let (issuer, keys) = setup(key);
            let token = issuer.token(&issuer.claims(NOW, "a b"));
            let verified = check(&issuer, &keys, &token, NOW).unwrap();
            assert_eq!(verified.claims().scopes, vec!["a", "b"]);
            assert_eq!(verified.claims().client_id.as_deref(), Some("agent-7"));
            assert_eq!(verified.claims().signing_key, issuer.key.thumbprint());
        }
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        let (issuer, keys) = setup(TestKey::es256());
        let forger = TestIssuer::new(TestKey::es256());
        let forged = forger.token(&issuer.claims(NOW, "a"));
        assert_eq!(check(&issuer, &keys, &forged, NOW).unwrap_err(), TokenError::BadSignature);
    }

    #[test]
    fn alg_none_and_hmac_are_refused() {
        let (issuer, keys) = setup(TestKey::es256());
        let good = issuer.token(&issuer.claims(NOW, "a"));
        let parts: Vec<&str> = good.split('.').collect();
        for alg in ["none", "HS256"] {
            let header = crate::jose::b64url_encode(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#).as_bytes());
            let token = format!("{header}.{}.{}", parts[1], parts[2]);
            assert_eq!(check(&issuer, &keys, &token, NOW).unwrap_err(), TokenError::UnsupportedAlgorithm(alg.into()));
        }
        // Right alg name, wrong key type: ES384 claimed for a P-256 key.
        let confused = issuer.key.sign_jws(&json!({"alg": "ES384", "kid": "k1"}), &Value::Object(issuer.claims(NOW, "a")));
        assert_eq!(check(&issuer, &keys, &confused, NOW).unwrap_err(), TokenError::KeyAlgorithmMismatch);
    }

    #[test]
    fn claims_checks_pass_and_fail_side_by_side() {
        let (issuer, keys) = setup(TestKey::es256());
        let with = |f: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = issuer.claims(NOW, "a");
            f(&mut c);
            issuer.token(&c)
        };
        // Audience as an array containing ours passes; without ours fails.
        let ok = with(&|c| { c.insert("aud".into(), json!(["other", issuer.audience])); });
        assert!(check(&issuer, &keys, &ok, NOW).is_ok());
        let bad = with(&|c| { c.insert("aud".into(), json!(["other"])); });
        assert_eq!(check(&issuer, &keys, &bad, NOW).unwrap_err(), TokenError::WrongAudience);
        let no_aud = with(&|c| { c.remove("aud"); });
        assert_eq!(check(&issuer, &keys, &no_aud, NOW).unwrap_err(), TokenError::WrongAudience);
        let wrong_iss = with(&|c| { c.insert("iss".into(), json!("https://auth.example.com/")); });
        assert_eq!(check(&issuer, &keys, &wrong_iss, NOW).unwrap_err(), TokenError::WrongIssuer);
        let no_exp = with(&|c| { c.remove("exp"); });
        assert_eq!(check(&issuer, &keys, &no_exp, NOW).unwrap_err(), TokenError::MissingExpiry);
        // exp: valid up to exp + skew, refused from then on.
        let token = issuer.token(&issuer.claims(NOW, "a"));
        assert!(check(&issuer, &keys, &token, NOW + 600 + 29).is_ok());
        assert_eq!(check(&issuer, &keys, &token, NOW + 600 + 30).unwrap_err(), TokenError::Expired);
        // nbf honoured with skew.
        let nbf = with(&|c| { c.insert("nbf".into(), json!(NOW + 100)); });
        assert_eq!(check(&issuer, &keys, &nbf, NOW).unwrap_err(), TokenError::NotYetValid);
        assert!(check(&issuer, &keys, &nbf, NOW + 70).is_ok());
        let future = with(&|c| { c.insert("iat".into(), json!(NOW + 3600)); });
        assert_eq!(check(&issuer, &keys, &future, NOW).unwrap_err(), TokenError::IssuedInTheFuture);
        let exp_string = with(&|c| { c.insert("exp".into(), json!("soon")); });
        assert_eq!(check(&issuer, &keys, &exp_string, NOW).unwrap_err(), TokenError::BadClaim("exp"));
    }

    #[test]
    fn typ_must_be_an_access_token_type() {
        let (issuer, keys) = setup(TestKey::es256());
        let claims = Value::Object(issuer.claims(NOW, "a"));
        for typ in ["at+jwt", "JWT", "application/at+jwt"] {
            let t = issuer.key.sign_jws(&json!({"typ": typ, "kid": "k1"}), &claims);
            assert!(check(&issuer, &keys, &t, NOW).is_ok(), "{typ}");
        }
        let proof_as_token = issuer.key.sign_jws(&json!({"typ": "dpop+jwt", "kid": "k1"}), &claims);
        assert_eq!(check(&issuer, &keys, &proof_as_token, NOW).unwrap_err(), TokenError::WrongType("dpop+jwt".into()));
        let crit = issuer.key.sign_jws(&json!({"kid": "k1", "crit": ["exp"]}), &claims);
        assert_eq!(check(&issuer, &keys, &crit, NOW).unwrap_err(), TokenError::CriticalHeader);
    }

    #[test]
    fn unknown_kid_is_reported_for_a_refetch() {
        let (issuer, keys) = setup(TestKey::es256());
        let t = issuer.key.sign_jws(&json!({"kid": "rotated"}), &Value::Object(issuer.claims(NOW, "a")));
        assert_eq!(check(&issuer, &keys, &t, NOW).unwrap_err(), TokenError::UnknownKey("rotated".into()));
    }

    #[test]
    fn scopes_from_scope_and_scp() {
        let (issuer, keys) = setup(TestKey::es256());
        let mut c = issuer.claims(NOW, "a  b");
        c.insert("scp".into(), json!(["c", "a"]));
        let v = check(&issuer, &keys, &issuer.token(&c), NOW).unwrap();
        assert_eq!(v.claims().scopes, vec!["a", "b", "c"]);
        c.remove("scope");
        c.insert("scp".into(), json!("x y"));
        assert_eq!(check(&issuer, &keys, &issuer.token(&c), NOW).unwrap().claims().scopes, vec!["x", "y"]);
        c.insert("scp".into(), json!([1]));
        assert_eq!(check(&issuer, &keys, &issuer.token(&c), NOW).unwrap_err(), TokenError::BadClaim("scp"));
    }

    #[test]
    fn cnf_must_be_enforceable() {
        let (issuer, keys) = setup(TestKey::es256());
        let mut c = issuer.claims(NOW, "a");
        c.insert("cnf".into(), json!({"jkt": "abc", "x5t#S256": "def"}));
        let v = check(&issuer, &keys, &issuer.token(&c), NOW).unwrap();
        assert_eq!(v.claims().cnf, Confirmation { jkt: Some("abc".into()), x5t_s256: Some("def".into()) });
        c.insert("cnf".into(), json!({"jwk": {"kty": "EC"}}));
        assert_eq!(check(&issuer, &keys, &issuer.token(&c), NOW).unwrap_err(), TokenError::UnsupportedConfirmation);
        c.insert("cnf".into(), json!({"jkt": 5}));
        assert_eq!(check(&issuer, &keys, &issuer.token(&c), NOW).unwrap_err(), TokenError::BadClaim("cnf"));
    }

    #[test]
    fn delegation_chain_is_read_outermost_first_and_bounded() {
        let (issuer, keys) = setup(TestKey::es256());
        let mut c = issuer.claims(NOW, "a");
        c.insert("act".into(), json!({"sub": "agent-a", "act": {"sub": "agent-b", "client_id": "cb", "act": {"sub": "agent-c"}}}));
        let v = check(&issuer, &keys, &issuer.token(&c), NOW).unwrap();
        let subs: Vec<_> = v.claims().delegation.iter().map(|a| a.sub.clone().unwrap()).collect();
        assert_eq!(subs, vec!["agent-a", "agent-b", "agent-c"]);
        assert_eq!(v.claims().delegation[1].client_id.as_deref(), Some("cb"));
        let mut deep = json!({"sub": "last"});
        for i in 0..MAX_DELEGATION_DEPTH {
            deep = json!({"sub": format!("a{i}"), "act": deep});
        }
        c.insert("act".into(), deep);
        assert_eq!(check(&issuer, &keys, &issuer.token(&c), NOW).unwrap_err(), TokenError::DelegationTooDeep);
    }

    #[test]
    fn remembered_key_is_the_hash_of_exactly_these_bytes() {
        let mut cache = TokenCache::new(2);
        let a = "eyJhbGciOiJFUzI1NiJ9.e30.sig-a";
        let b = "eyJhbGciOiJFUzI1NiJ9.e30.sig-b"; // same length, one byte differs
        for raw in [a, a, b, b, a, "", "eyJ", a] {
            assert_eq!(cache.key_of(raw), TokenCache::key(raw));
        }
        assert_ne!(cache.key_of(a), cache.key_of(b));
    }

    #[test]
    fn cache_serves_until_exp_and_stays_bounded() {
        let (issuer, keys) = setup(TestKey::es256());
        let token = issuer.token(&issuer.claims(NOW, "a"));
        let verified = check(&issuer, &keys, &token, NOW).unwrap();
        let mut cache = TokenCache::new(2);
        let key = TokenCache::key(&token);
        cache.insert(key, &verified);
        assert!(cache.get(&key, NOW + 10, 0).is_some());
        assert!(cache.get(&key, NOW + 600, 0).is_none(), "expired tokens are never served");
        assert!(cache.is_empty(), "and are dropped");
        for i in 0..5u8 {
            cache.insert([i; 32], &verified);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&[4; 32], NOW, 0).is_some() && cache.get(&[3; 32], NOW, 0).is_some());
        assert!(cache.get(&[0; 32], NOW, 0).is_none(), "oldest evicted first");
    }

    #[test]
    fn cache_table_never_grows_under_churn() {
        // The bench's memory step: a table rebuilt at double size after many evictions.
        let (issuer, keys) = setup(TestKey::es256());
        let verified = check(&issuer, &keys, &issuer.token(&issuer.claims(NOW, "a")), NOW).unwrap();
        let mut cache = TokenCache::new(1000);
        let insert = |cache: &mut TokenCache, i: u32| {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(key, &verified);
        };
        for i in 0..1000 {
            insert(&mut cache, i);
        }
        let (table, order) = (cache.entries.capacity(), cache.order.capacity());
        for i in 1000..50_000 {
            insert(&mut cache, i);
        }
        assert_eq!(cache.len(), 1000);
        // `capacity()` falls as tombstones accumulate and returns to the start on an in-place
        // rehash; only a rebuilt, larger table goes above it.
        assert!(cache.entries.capacity() <= table, "table grew: {} > {table}", cache.entries.capacity());
        assert_eq!(cache.order.capacity(), order);
    }
}
