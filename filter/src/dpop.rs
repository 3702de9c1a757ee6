//! DPoP proofs (RFC 9449 §4.3): every check a resource server makes, except the replay check
//! (see [`crate::replay`]) and the comparison with the token's `cnf.jkt` (see
//! [`crate::binding`]), which need state or the token.
//!
//! A client signs every proof with the same key and the same header, so the decoded key is kept
//! per worker ([`ProofKeys`], bounded, least recently used out first) with the base64url header
//! of the last proof it verified, and a key that verified a second proof gets a table of
//! multiples of its point: each proof after that costs one fixed-base verification, about 2.7
//! times cheaper (Ed25519: 1.5 times). A proof repeating that header byte for byte skips the
//! header checks (`typ`, `crit`, the JWK's members), which it passed then; its `alg` is checked
//! against the settings again, and everything after the header (signature, claims) on every proof.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::sync::Arc;

use crate::config::DpopSettings;
use crate::jose::members::{Member, Members, MembersError};
use crate::jose::{b64url_encode, sha256, Alg, CheckedJwk, DecodedJws, JwkError, JwsError, KeyMaterial, LearningKey};
use crate::uri::AbsoluteUrl;

/// Longest `jti` we remember; RFC 9449 suggests 96 bits of randomness, so this is generous.
pub const MAX_JTI_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    Malformed(JwsError),
    WrongType,
    /// `alg` is not among the configured DPoP algorithms (or is `none`/HMAC).
    AlgorithmNotAllowed(String),
    MissingJwk,
    /// The `jwk` holds private material.
    PrivateKeyInJwk,
    BadJwk(String),
    /// The `jwk` cannot verify the header's `alg`.
    JwkAlgorithmMismatch,
    BadSignature,
    ClaimsNotJsonObject,
    MissingClaim(&'static str),
    BadClaim(&'static str),
    MethodMismatch,
    UriMismatch,
    TooOld,
    IssuedInTheFuture,
    AccessTokenHashMismatch,
    /// The header's `crit` names extensions; DPoP defines none and we understand none
    /// (RFC 7515 §4.1.11: the JWS is then invalid).
    CriticalHeader,
}

impl ProofError {
    pub fn describe(&self) -> String {
        match self {
            ProofError::Malformed(e) => format!("DPoP proof is not a compact JWS ({e:?})"),
            ProofError::WrongType => "DPoP proof typ must be dpop+jwt".into(),
            ProofError::AlgorithmNotAllowed(alg) => format!("DPoP proof algorithm {alg:?} is not accepted"),
            ProofError::MissingJwk => "DPoP proof header has no jwk".into(),
            ProofError::PrivateKeyInJwk => "DPoP proof jwk contains private key material".into(),
            ProofError::BadJwk(why) => format!("DPoP proof jwk is not usable ({why})"),
            ProofError::JwkAlgorithmMismatch => "DPoP proof jwk does not match its alg".into(),
            ProofError::BadSignature => "DPoP proof signature is invalid".into(),
            ProofError::ClaimsNotJsonObject => "DPoP proof claims are not a JSON object".into(),
            ProofError::MissingClaim(c) => format!("DPoP proof has no {c}"),
            ProofError::BadClaim(c) => format!("DPoP proof claim {c} is malformed"),
            ProofError::MethodMismatch => "DPoP proof htm does not match the request method".into(),
            ProofError::UriMismatch => "DPoP proof htu does not match the request URI".into(),
            ProofError::TooOld => "DPoP proof iat is too old".into(),
            ProofError::IssuedInTheFuture => "DPoP proof iat is in the future".into(),
            ProofError::AccessTokenHashMismatch => "DPoP proof ath does not match the access token".into(),
            ProofError::CriticalHeader => "DPoP proof header has critical extensions (crit) this server does not understand".into(),
        }
    }
}

/// What the request says a proof must be about.
#[derive(Debug, Clone)]
pub struct ProofContext<'a> {
    /// The HTTP method, exactly as on the request line.
    pub method: &'a str,
    /// `public_url`'s scheme and authority with the request's path.
    pub htu: &'a AbsoluteUrl,
    /// The access token the proof accompanies (for `ath`).
    pub access_token: &'a str,
}

/// A proof whose signature and claims passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 thumbprint of the proof key, to compare with the token's `cnf.jkt`.
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
    /// Until when the replay cache must remember this proof.
    pub remember_until: u64,
}

pub fn verify_proof(
    proof: &str,
    ctx: &ProofContext<'_>,
    settings: &DpopSettings,
    now: u64,
) -> Result<VerifiedProof, ProofError> {
    let jws = DecodedJws::split(proof).map_err(ProofError::Malformed)?;
    // A client sends the same header (typ, alg, jwk) with every proof: one that verified a
    // proof before, byte for byte, passed every header check then and names the key found
    // again here (its alg still checked against the settings, which a new configuration may
    // have changed). Any other header is read and checked in full.
    let (alg, key, learned) = match PROOF_KEYS.with(|keys| keys.borrow_mut().by_header(jws.header_b64)) {
        Some((alg, key)) if settings.algorithms.contains(&alg) => (alg, key, None),
        _ => {
            let (alg, key, id) = read_header(&jws, settings)?;
            (alg, key, Some(id))
        }
    };
    if !key.verify(alg, jws.signing_input.as_bytes(), &jws.signature) {
        return Err(ProofError::BadSignature);
    }
    if let Some(id) = learned {
        PROOF_KEYS.with(|keys| keys.borrow_mut().verified(id, jws.header_b64, alg, &key));
    }

    let claims = Members::parse(&jws.payload).map_err(|e| match e {
        MembersError::NotAnObject => ProofError::ClaimsNotJsonObject,
        MembersError::Duplicate => ProofError::Malformed(JwsError::DuplicateMember),
        MembersError::TooMany => ProofError::Malformed(JwsError::TooManyMembers),
    })?;
    let string_claim = |name: &'static str| match claims.get(name) {
        Member::Absent => Err(ProofError::MissingClaim(name)),
        Member::Str(s) => Ok(s.as_ref()),
        Member::Number(_) | Member::Object(_) | Member::Other => Err(ProofError::BadClaim(name)),
    };

    let jti = string_claim("jti")?;
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(ProofError::BadClaim("jti"));
    }
    if string_claim("htm")? != ctx.method {
        return Err(ProofError::MethodMismatch);
    }
    let htu = string_claim("htu")?;
    // A client usually sends the normalised form itself: recognised without parsing.
    if !ctx.htu.is_spelled_by(htu) {
        let htu = AbsoluteUrl::parse_ignoring_query(htu).map_err(|_| ProofError::BadClaim("htu"))?;
        if &htu != ctx.htu {
            return Err(ProofError::UriMismatch);
        }
    }
    let iat = match claims.get("iat") {
        Member::Absent => return Err(ProofError::MissingClaim("iat")),
        Member::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| (0.0..1e15).contains(f)).map(|f| f as u64))
            .ok_or(ProofError::BadClaim("iat"))?,
        Member::Str(_) | Member::Object(_) | Member::Other => return Err(ProofError::BadClaim("iat")),
    };
    if iat > now.saturating_add(settings.clock_skew_seconds) {
        return Err(ProofError::IssuedInTheFuture);
    }
    let remember_until = iat.saturating_add(settings.max_age_seconds);
    if now > remember_until {
        return Err(ProofError::TooOld);
    }
    let ath = string_claim("ath")?;
    if !LAST_ATH.with(|last| last.borrow_mut().matches(ctx.access_token, ath)) {
        return Err(ProofError::AccessTokenHashMismatch);
    }

    Ok(VerifiedProof {
        jkt: key.thumbprint().to_string(),
        jti: jti.to_string(),
        iat,
        // One second past the last instant the proof is accepted.
        remember_until: remember_until.saturating_add(1),
    })
}

/// Every check of a proof's header (RFC 9449 §4.3 steps 4–7): `typ`, no `crit`, an allowed
/// `alg`, a public `jwk` that fits it. Gives the alg, the key (the cached one for the same
/// material, else decoded) and the key's material id.
fn read_header(jws: &DecodedJws<'_>, settings: &DpopSettings) -> Result<(Alg, Arc<LearningKey>, String), ProofError> {
    let bytes = jws.header().map_err(ProofError::Malformed)?;
    let header = Members::parse(&bytes).map_err(|e| match e {
        MembersError::NotAnObject => ProofError::Malformed(JwsError::HeaderNotJsonObject),
        MembersError::Duplicate => ProofError::Malformed(JwsError::DuplicateMember),
        MembersError::TooMany => ProofError::Malformed(JwsError::TooManyMembers),
    })?;
    let typ_ok = match header.get("typ") {
        Member::Str(typ) => typ.eq_ignore_ascii_case("dpop+jwt") || typ.eq_ignore_ascii_case("application/dpop+jwt"),
        _ => false,
    };
    if !typ_ok {
        return Err(ProofError::WrongType);
    }
    if header.get("crit") != &Member::Absent {
        return Err(ProofError::CriticalHeader);
    }
    let alg_name = match header.get("alg") {
        Member::Str(name) => name.as_ref(),
        _ => "",
    };
    let alg = Alg::parse(alg_name)
        .filter(|a| settings.algorithms.contains(a))
        .ok_or_else(|| ProofError::AlgorithmNotAllowed(alg_name.to_string()))?;
    let jwk = match header.get("jwk") {
        Member::Object(jwk) => jwk,
        Member::Absent => return Err(ProofError::MissingJwk),
        _ => return Err(ProofError::BadJwk("not a JSON object".into())),
    };
    let jwk_error = |e: JwkError| match e {
        JwkError::PrivateMaterial => ProofError::PrivateKeyInJwk,
        JwkError::Unsupported(why) | JwkError::Invalid(why) => ProofError::BadJwk(why),
    };
    let checked = CheckedJwk::read(jwk).map_err(jwk_error)?;
    let id = checked.material_id();
    let key = match PROOF_KEYS.with(|keys| keys.borrow_mut().get(&id)) {
        Some(key) => key,
        None => Arc::new(LearningKey::new(KeyMaterial::decode(&checked).map_err(jwk_error)?)),
    };
    if !checked.allows(alg) {
        return Err(ProofError::JwkAlgorithmMismatch);
    }
    Ok((alg, key, id))
}

/// Proof keys that verified a proof, per worker (a proxy-wasm VM runs one thread), by
/// [`CheckedJwk::material_id`]. Bounded: the least recently used goes first. Each is a
/// [`LearningKey`], precomputed once it verified a second proof, so a one-off key does not pay
/// for its table, and a stream of fresh keys costs no more than without the cache.
pub struct ProofKeys {
    entries: Vec<ProofKeyEntry>,
    capacity: usize,
    clock: u64,
}

struct ProofKeyEntry {
    id: String,
    /// The base64url header of the last proof that verified with this key, and its `alg`: a
    /// proof with the same header needs no header checks.
    header_b64: String,
    alg: Alg,
    key: Arc<LearningKey>,
    last_used: u64,
}

/// Keys kept per worker: up to 32 (with its table a P-256 key is about 99 KB, an Ed25519 key
/// 165 KB: at most about 5.3 MB per worker).
pub const PROOF_KEYS_KEPT: usize = 32;

thread_local! {
    static PROOF_KEYS: RefCell<ProofKeys> = RefCell::new(ProofKeys::new(PROOF_KEYS_KEPT));
    static LAST_ATH: RefCell<LastAth> = const { RefCell::new(LastAth { token: String::new(), ath: String::new() }) };
}

impl ProofKeys {
    pub fn new(capacity: usize) -> ProofKeys {
        ProofKeys { entries: Vec::new(), capacity: capacity.max(1), clock: 0 }
    }

    pub fn get(&mut self, id: &str) -> Option<Arc<LearningKey>> {
        self.clock += 1;
        let entry = self.entries.iter_mut().find(|e| e.id == id)?;
        entry.last_used = self.clock;
        Some(Arc::clone(&entry.key))
    }

    /// The alg and key of the proof that last verified with exactly this base64url header.
    pub fn by_header(&mut self, header_b64: &str) -> Option<(Alg, Arc<LearningKey>)> {
        self.clock += 1;
        let entry = self.entries.iter_mut().find(|e| e.header_b64 == header_b64)?;
        entry.last_used = self.clock;
        Some((entry.alg, Arc::clone(&entry.key)))
    }

    /// Notes that `key` (material `id`) verified a proof whose header (`header_b64`, naming
    /// `alg`) passed every check: kept, or kept fresh.
    pub fn verified(&mut self, id: String, header_b64: &str, alg: Alg, key: &Arc<LearningKey>) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.entries.iter_mut().find(|e| e.id == id) {
            entry.last_used = clock;
            if entry.header_b64 != header_b64 {
                entry.header_b64 = header_b64.to_string();
            }
            entry.alg = alg;
            return;
        }
        if self.entries.len() >= self.capacity {
            if let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) {
                self.entries.swap_remove(oldest);
            }
        }
        self.entries.push(ProofKeyEntry { id, header_b64: header_b64.to_string(), alg, key: Arc::clone(key), last_used: clock });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The `ath` of the last access token seen, per worker: a session sends the same token with
/// every proof, so its SHA-256 is computed once.
struct LastAth {
    token: String,
    ath: String,
}

impl LastAth {
    fn matches(&mut self, token: &str, ath: &str) -> bool {
        if self.token != token || self.ath.is_empty() {
            self.ath = b64url_encode(&sha256(token.as_bytes()));
            self.token = token.to_string();
        }
        self.ath == ath
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::type_complexity)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::testkit::{vectors, ProofSpec, TestKey};
    use serde_json::{json, Value};

    const NOW: u64 = 1_800_000_000;
    const URL: &str = "https://mcp.example.com/mcp";
    const TOKEN: &str = "header.payload.signature";

    fn settings() -> DpopSettings {
        DpopSettings { algorithms: vec![Alg::Es256, Alg::Ed25519, Alg::Rs256], ..DpopSettings::default() }
    }

    fn run(proof: &str, method: &str, now: u64) -> Result<VerifiedProof, ProofError> {
        let htu = AbsoluteUrl::parse(URL).unwrap();
        verify_proof(proof, &ProofContext { method, htu: &htu, access_token: TOKEN }, &settings(), now)
    }

    /// RFC 9449 Figure 13/14: a published proof verifies, on the RFC's own timeline, and
    /// its key's thumbprint is the `jkt` published in Figure 9.
    #[test]
    fn rfc9449_figure_13_proof() {
        let htu = AbsoluteUrl::parse("https://resource.example.org/protectedresource").unwrap();
        let ctx = ProofContext { method: "GET", htu: &htu, access_token: vectors::RFC9449_FIG13_ACCESS_TOKEN };
        let proof = verify_proof(vectors::RFC9449_FIG13_PROOF, &ctx, &settings(), 1_562_262_619).unwrap();
        assert_eq!(proof.jkt, vectors::RFC9449_FIG9_JKT);
        assert_eq!(proof.jti, "e1j3V_bKic8-LAEB");
        assert_eq!(proof.iat, 1_562_262_618);
        assert_eq!(b64url_encode(&sha256(vectors::RFC9449_FIG13_ACCESS_TOKEN.as_bytes())), vectors::RFC9449_FIG14_ATH);
        // The same proof an hour later, or for POST, or for another token, fails.
        assert_eq!(verify_proof(vectors::RFC9449_FIG13_PROOF, &ctx, &settings(), 1_562_266_218).unwrap_err(), ProofError::TooOld);
        let post = ProofContext { method: "POST", ..ctx.clone() };
        assert_eq!(verify_proof(vectors::RFC9449_FIG13_PROOF, &post, &settings(), 1_562_262_619).unwrap_err(), ProofError::MethodMismatch);
        let other = ProofContext { access_token: "another", ..ctx };
        assert_eq!(verify_proof(vectors::RFC9449_FIG13_PROOF, &other, &settings(), 1_562_262_619).unwrap_err(), ProofError::AccessTokenHashMismatch);
    }

    #[test]
    fn valid_proofs_of_each_algorithm() {
        for key in [TestKey::es256(), TestKey::ed25519(), TestKey::rs256()] {
            let proof = ProofSpec::new(&key, "POST", URL, NOW, TOKEN).sign(&key);
            let verified = run(&proof, "POST", NOW).unwrap();
            assert_eq!(verified.jkt, key.thumbprint());
            assert_eq!(verified.remember_until, NOW + 61);
        }
    }

    #[test]
    fn ed25519_may_say_eddsa_or_ed25519() {
        let key = TestKey::ed25519();
        let mut spec = ProofSpec::new(&key, "POST", URL, NOW, TOKEN);
        spec.alg = Some("Ed25519".into());
        assert!(run(&spec.sign(&key), "POST", NOW).is_ok());
    }

    /// Each check: one field broken, everything else valid.
    #[test]
    fn each_claim_and_header_check_refuses() {
        let key = TestKey::es256();
        let cases: Vec<(&str, Box<dyn Fn(&mut ProofSpec)>, ProofError)> = vec![
            ("typ", Box::new(|s| s.typ = json!("jwt")), ProofError::WrongType),
            ("alg none", Box::new(|s| s.alg = Some("none".into())), ProofError::AlgorithmNotAllowed("none".into())),
            ("alg HS256", Box::new(|s| s.alg = Some("HS256".into())), ProofError::AlgorithmNotAllowed("HS256".into())),
            ("alg not configured", Box::new(|s| s.alg = Some("ES384".into())), ProofError::AlgorithmNotAllowed("ES384".into())),
            ("no jwk", Box::new(|s| s.jwk = None), ProofError::MissingJwk),
            ("jwk string", Box::new(|s| s.jwk = Some(json!("{}"))), ProofError::BadJwk("not a JSON object".into())),
            ("private jwk", Box::new(|s| { s.jwk.as_mut().unwrap()["d"] = json!("AAAA"); }), ProofError::PrivateKeyInJwk),
            ("htm", Box::new(|s| s.htm = json!("GET")), ProofError::MethodMismatch),
            ("htm case", Box::new(|s| s.htm = json!("post")), ProofError::MethodMismatch),
            ("htu path", Box::new(|s| s.htu = json!("https://mcp.example.com/other")), ProofError::UriMismatch),
            ("htu host", Box::new(|s| s.htu = json!("https://evil.example.com/mcp")), ProofError::UriMismatch),
            ("htu scheme", Box::new(|s| s.htu = json!("http://mcp.example.com/mcp")), ProofError::UriMismatch),
            ("htu relative", Box::new(|s| s.htu = json!("/mcp")), ProofError::BadClaim("htu")),
            ("iat old", Box::new(|s| s.iat = json!(NOW - 61)), ProofError::TooOld),
            ("iat future", Box::new(|s| s.iat = json!(NOW + 6)), ProofError::IssuedInTheFuture),
            ("iat string", Box::new(|s| s.iat = json!("now")), ProofError::BadClaim("iat")),
            ("jti missing", Box::new(|s| s.jti = Value::Null), ProofError::BadClaim("jti")),
            ("jti empty", Box::new(|s| s.jti = json!("")), ProofError::BadClaim("jti")),
            ("jti long", Box::new(|s| s.jti = json!("x".repeat(MAX_JTI_LEN + 1))), ProofError::BadClaim("jti")),
            ("ath missing", Box::new(|s| s.ath = None), ProofError::MissingClaim("ath")),
            ("ath other token", Box::new(|s| s.ath = Some(json!(crate::testkit::ath("other")))), ProofError::AccessTokenHashMismatch),
            ("crit", Box::new(|s| { s.extra_header.insert("crit".into(), json!(["exp"])); }), ProofError::CriticalHeader),
            ("crit empty", Box::new(|s| { s.extra_header.insert("crit".into(), json!([])); }), ProofError::CriticalHeader),
        ];
        for (name, breaker, expected) in cases {
            let mut spec = ProofSpec::new(&key, "POST", URL, NOW, TOKEN);
            breaker(&mut spec);
            assert_eq!(run(&spec.sign(&key), "POST", NOW), Err(expected), "{name}");
        }
        // The untouched spec passes, so each failure above is that one field's doing.
        assert!(run(&ProofSpec::new(&key, "POST", URL, NOW, TOKEN).sign(&key), "POST", NOW).is_ok());
    }

    #[test]
    fn iat_edges() {
        let key = TestKey::es256();
        let at = |iat: u64, now: u64| {
            let mut s = ProofSpec::new(&key, "POST", URL, NOW, TOKEN);
            s.iat = json!(iat);
            run(&s.sign(&key), "POST", now)
        };
        assert!(at(NOW - 60, NOW).is_ok(), "exactly max_age old");
        assert!(at(NOW + 5, NOW).is_ok(), "exactly skew ahead");
    }

    #[test]
    fn htu_is_compared_after_normalisation() {
        let key = TestKey::es256();
        let mut s = ProofSpec::new(&key, "POST", "HTTPS://MCP.EXAMPLE.COM:443/./mcp?x=1#f", NOW, TOKEN);
        assert!(run(&s.sign(&key), "POST", NOW).is_ok());
        s.htu = json!("https://mcp.example.com/%6Dcp");
        assert!(run(&s.sign(&key), "POST", NOW).is_ok(), "%6D is m");
    }

    #[test]
    fn signature_must_be_by_the_jwk() {
        let key = TestKey::es256();
        let other = TestKey::es256();
        // Header names `key`'s jwk but `other` signs.
        let spec = ProofSpec::new(&key, "POST", URL, NOW, TOKEN);
        assert_eq!(run(&spec.sign(&other), "POST", NOW).unwrap_err(), ProofError::BadSignature);
        // An Ed25519 jwk with alg ES256.
        let ed = TestKey::ed25519();
        let mut mixed = ProofSpec::new(&ed, "POST", URL, NOW, TOKEN);
        mixed.alg = Some("ES256".into());
        assert_eq!(run(&mixed.sign(&key), "POST", NOW).unwrap_err(), ProofError::JwkAlgorithmMismatch);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(run("not-a-jwt", "POST", NOW), Err(ProofError::Malformed(_))));
        assert!(matches!(run("", "POST", NOW), Err(ProofError::Malformed(_))));
    }

    /// The per-worker key cache: a key is kept once it verified a proof, precomputed after
    /// its second, and the least recently used goes first when full.
    #[test]
    fn proof_keys_cache_precomputes_and_stays_bounded() {
        let keys: Vec<TestKey> = (0..3).map(|_| TestKey::es256()).collect();
        let jwks: Vec<_> = keys.iter().map(|k| k.public_jwk()).collect();
        let checked: Vec<_> = jwks.iter().map(|j| CheckedJwk::read(j).unwrap()).collect();
        let id = |i: usize| checked[i].material_id();
        let header = |i: usize| format!("header-of-key-{i}");
        let mut cache = ProofKeys::new(2);
        // A proof of key i, verified as verify_proof does: the cached key or a new one, then kept.
        let prove = |cache: &mut ProofKeys, i: usize| {
            let key = cache.get(&id(i)).unwrap_or_else(|| Arc::new(LearningKey::new(KeyMaterial::decode(&checked[i]).unwrap())));
            let jws = keys[i].sign_jws(&json!({"typ": "dpop+jwt"}), &json!({"jti": i}));
            let parts = DecodedJws::split(&jws).unwrap();
            assert!(key.verify(Alg::Es256, parts.signing_input.as_bytes(), &parts.signature));
            cache.verified(id(i), &header(i), Alg::Es256, &key);
        };
        assert!(cache.get(&id(0)).is_none());
        prove(&mut cache, 0);
        assert!(!cache.get(&id(0)).unwrap().is_precomputed(), "one proof: decoded only");
        prove(&mut cache, 0);
        assert!(cache.get(&id(0)).unwrap().is_precomputed(), "second proof: precomputed");
        prove(&mut cache, 1);
        // Key 0 was used last: adding key 2 evicts key 1.
        cache.get(&id(0));
        prove(&mut cache, 2);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&id(0)).is_some() && cache.get(&id(2)).is_some() && cache.get(&id(1)).is_none());
        // Found by the header of the proof it verified too, and only by that exact header.
        assert!(cache.by_header(&header(0)).is_some() && cache.by_header(&header(1)).is_none());
        assert!(cache.by_header(&format!("{}A", header(0))).is_none());
    }

    /// A proof whose header is signed as given (the JSON text exactly), with these claims.
    fn raw_proof(key: &TestKey, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64url_encode(header.as_bytes()), b64url_encode(claims.as_bytes()));
        format!("{input}.{}", b64url_encode(&key.sign_bytes(input.as_bytes())))
    }

    /// A member named twice, in the header or in the claims, is refused, whichever value the
    /// duplicate carries; the same proof without the duplicate passes.
    #[test]
    fn duplicate_members_are_refused() {
        let key = TestKey::ed25519();
        let jwk = serde_json::to_string(&key.public_jwk()).unwrap();
        let header = |extra: &str| format!(r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{jwk}{extra}}}"#);
        let claims = |jti: &str, extra: &str| {
            format!(
                r#"{{"jti":"{jti}","htm":"POST","htu":"{URL}","iat":{NOW},"ath":"{}"{extra}}}"#,
                crate::testkit::ath(TOKEN)
            )
        };
        assert!(run(&raw_proof(&key, &header(""), &claims("dup-0", "")), "POST", NOW).is_ok());
        let duplicate = ProofError::Malformed(JwsError::DuplicateMember);
        for (h, c) in [
            (header(r#","alg":"EdDSA""#), claims("dup-1", "")),
            (header(r#","typ":"dpop+jwt""#), claims("dup-2", "")),
            (header(&format!(r#","jwk":{jwk}"#)), claims("dup-3", "")),
            (header(""), claims("dup-4", r#","jti":"dup-4b""#)),
            (header(""), claims("dup-5", r#","htu":"https://evil.example.com/mcp""#)),
            (header(""), claims("dup-6", r#","i\u0061t":0"#)),
        ] {
            assert_eq!(run(&raw_proof(&key, &h, &c), "POST", NOW), Err(duplicate.clone()), "{h} {c}");
        }
    }

    /// A header seen before is not read again; any other is read in full and finds the same
    /// cached key for the same material: the key's JWK spelled another way (members reordered,
    /// a `kid` added) verifies with the cached key, and a header that differs in what it allows
    /// is checked in full. A configuration that no longer allows the alg refuses it even for a
    /// header seen before.
    #[test]
    fn a_header_seen_before_skips_its_checks_and_any_other_is_read_in_full() {
        let key = TestKey::es256();
        let jwk = key.public_jwk();
        let reordered: String = {
            let mut members: Vec<(&String, &Value)> = jwk.iter().collect();
            members.reverse();
            let inner: Vec<String> = members.iter().map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v)).collect();
            format!("{{{},\"kid\":\"k1\"}}", inner.join(","))
        };
        let header = |jwk_text: &str| format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{jwk_text}}}"#);
        let claims = |jti: &str| {
            format!(r#"{{"jti":"{jti}","htm":"POST","htu":"{URL}","iat":{NOW},"ath":"{}"}}"#, crate::testkit::ath(TOKEN))
        };
        let plain = serde_json::to_string(&jwk).unwrap();
        let first = run(&raw_proof(&key, &header(&plain), &claims("spell-1")), "POST", NOW).unwrap();
        let second = run(&raw_proof(&key, &header(&reordered), &claims("spell-2")), "POST", NOW).unwrap();
        assert_eq!((first.jkt.as_str(), second.jkt.as_str()), (key.thumbprint().as_str(), key.thumbprint().as_str()));
        let id = CheckedJwk::read(&jwk).unwrap().material_id();
        let cached = PROOF_KEYS.with(|k| k.borrow_mut().get(&id)).unwrap();
        let seen = b64url_encode(header(&reordered).as_bytes());
        assert_eq!(PROOF_KEYS.with(|k| k.borrow_mut().by_header(&seen)).map(|(_, k)| Arc::ptr_eq(&k, &cached)), Some(true));
        let proof = raw_proof(&key, &header(&reordered), &claims("spell-5"));
        let htu = AbsoluteUrl::parse(URL).unwrap();
        let ctx = ProofContext { method: "POST", htu: &htu, access_token: TOKEN };
        let ed_only = DpopSettings { algorithms: vec![Alg::Ed25519], ..DpopSettings::default() };
        assert_eq!(verify_proof(&proof, &ctx, &ed_only, NOW), Err(ProofError::AlgorithmNotAllowed("ES256".into())));
        assert!(run(&proof, "POST", NOW).is_ok());
        // The cached text with a contradicting `alg` pinned is another text: read in full, refused.
        let pinned = reordered.replacen('{', r#"{"alg":"EdDSA","#, 1);
        assert!(matches!(run(&raw_proof(&key, &header(&pinned), &claims("spell-3")), "POST", NOW), Err(ProofError::BadJwk(_))));
        // A private member added to the cached text: read in full, refused.
        let private = reordered.replacen('{', r#"{"d":"AAAA","#, 1);
        assert_eq!(run(&raw_proof(&key, &header(&private), &claims("spell-4")), "POST", NOW), Err(ProofError::PrivateKeyInJwk));
    }

    /// Many proofs of one key (the later ones verified with its precomputed table): each valid
    /// one passes, a forged one with the same jwk fails, for both proof algorithms.
    #[test]
    fn repeated_proofs_of_one_key_pass_and_forgeries_fail() {
        for key in [TestKey::es256(), TestKey::ed25519()] {
            let forger = key.another_of_same_type();
            for round in 0..5 {
                let proof = ProofSpec::new(&key, "POST", URL, NOW, TOKEN).sign(&key);
                assert_eq!(run(&proof, "POST", NOW).unwrap().jkt, key.thumbprint(), "round {round}");
                let forged = ProofSpec::new(&key, "POST", URL, NOW, TOKEN).sign(&forger);
                assert_eq!(run(&forged, "POST", NOW).unwrap_err(), ProofError::BadSignature, "round {round}");
            }
            let id = CheckedJwk::read(&key.public_jwk()).unwrap().material_id();
            assert!(PROOF_KEYS.with(|k| k.borrow_mut().get(&id)).unwrap().is_precomputed());
            // The cached key does not widen what the JWK allows: the same key with a JWK `alg`
            // that the header contradicts is still refused.
            let mut spec = ProofSpec::new(&key, "POST", URL, NOW, TOKEN);
            spec.jwk.as_mut().unwrap()["alg"] = json!(if key.alg() == "ES256" { "EdDSA" } else { "ES256" });
            assert!(matches!(run(&spec.sign(&key), "POST", NOW).unwrap_err(), ProofError::BadJwk(_)));
        }
    }

    /// The remembered `ath` follows the token: a proof for token A is refused with token B,
    /// and accepted again with A.
    #[test]
    fn ath_follows_the_access_token() {
        let key = TestKey::ed25519();
        let htu = AbsoluteUrl::parse(URL).unwrap();
        let check = |token: &str, proof_token: &str| {
            let proof = ProofSpec::new(&key, "POST", URL, NOW, proof_token).sign(&key);
            verify_proof(&proof, &ProofContext { method: "POST", htu: &htu, access_token: token }, &settings(), NOW)
        };
        assert!(check("token-a", "token-a").is_ok());
        assert_eq!(check("token-b", "token-a").unwrap_err(), ProofError::AccessTokenHashMismatch);
        assert!(check("token-b", "token-b").is_ok());
        assert!(check("token-a", "token-a").is_ok());
        assert_eq!(check("token-a", "token-b").unwrap_err(), ProofError::AccessTokenHashMismatch);
    }

}
