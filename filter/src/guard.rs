//! The decision: given what the request carries, allow it or refuse it with a reason.
//!
//! Two steps, as the proxy sees a request: [`Guard::on_head`] (method, path, headers) answers
//! the metadata endpoint, refuses early what can be refused without the body, and says whether
//! the body is needed; [`Guard::decide`] then authenticates, binds and authorizes.
//!
//! Order inside `decide`: token (signature, claims) → proof of possession (DPoP proof,
//! certificate) → replay → body → policy. Authentication failures come before body errors so a
//! caller without credentials learns nothing about the body's treatment.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::answer::{self, LocalReply};
use crate::binding::{self, Possession, Scheme};
use crate::config::Config;
use crate::denial::Denial;
use crate::dpop::{self, ProofContext};
use crate::jose::b64url_encode;
use crate::jwks::KeySet;
use crate::mcp::{self, Body, RpcId};
use crate::replay::{ReplayCache, ReplayError, SharedStore};
use crate::token::{AccessClaims, Expectations, TokenCache, TokenError, UntrustedToken, VerifiedToken};

/// The request as the proxy sees it before the body. Header names are lower case (HTTP/2,
/// and Envoy normalises HTTP/1); values are bytes, as they came.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead {
    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    fn single(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// A header's value as text, when it is valid UTF-8.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        self.single(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What [`Guard::on_head`] concludes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Answer now (the metadata document, or an early refusal).
    Reply(Box<LocalReply>, Option<Denial>),
    /// Buffer the body, then call [`Guard::decide`] with it.
    ReadBody,
    /// No body is expected: call [`Guard::decide`] now.
    Decide,
}

/// What `decide` needs besides the request: time, keys, caches. All passed in, so the core
/// runs the same natively and in the proxy.
pub struct Env<'a> {
    pub now: u64,
    /// The issuer's keys, `None` until they are loaded.
    pub keys: Option<&'a KeySet>,
    /// May `decide` ask for (re)loading the keys? False once a fetch failed or was just done.
    pub may_fetch_keys: bool,
    pub tokens: &'a mut TokenCache,
    pub replay_store: &'a mut dyn SharedStore,
    /// Distinguishes this writer in the shared replay cache (see [`crate::replay`]).
    pub replay_tag: u32,
    /// The downstream connection's `connection.sha256_peer_certificate_digest` (hex SHA-256 of
    /// the client certificate's DER, `None` without one). Asked only for a token bound to a
    /// certificate: in the proxy each ask is a host call.
    pub client_cert_sha256_hex: &'a dyn Fn() -> Option<Vec<u8>>,
}

/// What was allowed, and on whose authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Shared with the token cache.
    pub claims: Arc<AccessClaims>,
    pub scheme: Scheme,
    pub possession: Possession,
    /// The JSON-RPC messages of a POST (empty for GET/DELETE).
    pub messages: Vec<mcp::Message>,
    pub required_scopes: Vec<String>,
}

/// What was learned about a request before it was refused, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The token's claims, when it verified (shared with the token cache).
    pub claims: Option<Arc<AccessClaims>>,
    pub possession: Option<Possession>,
    /// The JSON-RPC messages, when the body decoded.
    pub messages: Vec<mcp::Message>,
    pub required_scopes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Box<Allowed>),
    Deny { denial: Denial, reply: Box<LocalReply>, facts: Box<Facts> },
    /// The token's signing key is not (yet) known: load keys, then decide again.
    NeedKeys { unknown_kid: Option<String> },
}

impl Decision {
    pub fn denial(&self) -> Option<&Denial> {
        match self {
            Decision::Deny { denial, .. } => Some(denial),
            _ => None,
        }
    }
}

/// The compiled configuration plus what is derived from it once.
#[derive(Debug, Clone)]
pub struct Guard {
    pub config: Config,
    replay: ReplayCache,
    metadata_path: String,
}

/// `Authorization: <scheme> <token>` read strictly.
enum Credentials<'a> {
    None,
    Token(Scheme, &'a str),
}

/// RFC 7235 token68 characters before the `=` padding: a table, as the check runs over the
/// whole token (hundreds of bytes) on every request. Built at compile time (an index out of
/// range here would fail the build, never a request).
#[allow(clippy::indexing_slicing)]
const TOKEN68: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

fn is_token68(s: &str) -> bool {
    let trimmed = s.trim_end_matches('=');
    !trimmed.is_empty() && trimmed.bytes().all(|b| TOKEN68.get(usize::from(b)).copied().unwrap_or(false))
}

fn decode_hex32(hex: &[u8]) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        *out.get_mut(i)? = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

fn percent_decoded_eq(name: &str, expected: &str) -> bool {
    let mut out = Vec::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 3;
                    continue;
                }
                None => out.push(b),
            }
        } else if b == b'+' {
            out.push(b' ');
        } else {
            out.push(b);
        }
        i += 1;
    }
    out == expected.as_bytes()
}

impl Guard {
    pub fn new(config: Config) -> Guard {
        let replay = ReplayCache::new(config.dpop.replay_cache_entries);
        let metadata_path = config.resource_metadata_path();
        Guard { config, replay, metadata_path }
    }

    fn refuse(&self, denial: Denial, scheme: Option<Scheme>, id: Option<&RpcId>, facts: Facts) -> Decision {
        let reply = answer::refusal(&denial, &self.config, scheme, id);
        Decision::Deny { denial, reply: Box::new(reply), facts: Box::new(facts) }
    }

    fn early(&self, denial: Denial) -> HeadVerdict {
        let reply = answer::refusal(&denial, &self.config, None, None);
        HeadVerdict::Reply(Box::new(reply), Some(denial))
    }

    /// Looks at method, path and headers.
    pub fn on_head(&self, head: &RequestHead) -> HeadVerdict {
        let (path, query) = match head.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (head.path.as_str(), None),
        };
        if head.method == "GET" && path == self.metadata_path {
            return HeadVerdict::Reply(Box::new(answer::resource_metadata(&self.config)), None);
        }
        if let Some(query) = query {
            let names = query.split('&').map(|pair| pair.split('=').next().unwrap_or(""));
            if names.into_iter().any(|n| percent_decoded_eq(n, "access_token")) {
                return self.early(Denial::TokenInQuery);
            }
        }
        match head.method.as_str() {
            "POST" => {
                let Some(content_type) = head.single("content-type") else {
                    return self.early(Denial::UnsupportedMediaType);
                };
                // JSON in UTF-8 only: a server that honours another charset reads another body.
                if !mcp::is_json_content_type(content_type) || head.values("content-type").count() > 1 {
                    return self.early(Denial::UnsupportedMediaType);
                }
            }
            "GET" | "DELETE" => {
                let declares_body = head.single("content-length").is_some_and(|v| v != b"0")
                    || head.single("transfer-encoding").is_some();
                if declares_body {
                    return self.early(Denial::UnexpectedBody);
                }
            }
            _ => return self.early(Denial::MethodNotAllowed),
        }
        for encoding in head.values("content-encoding") {
            if !encoding.eq_ignore_ascii_case(b"identity") {
                return self.early(Denial::UnsupportedContentEncoding);
            }
        }
        if let Some(length) = head.single("content-length") {
            let too_large = std::str::from_utf8(length)
                .ok()
                .and_then(|l| l.trim().parse::<u64>().ok())
                .is_none_or(|n| n > self.config.max_body_bytes as u64);
            if too_large {
                return self.early(Denial::BodyTooLarge);
            }
        }
        if head.values("authorization").next().is_none() {
            return self.early(Denial::MissingToken);
        }
        if head.method == "POST" {
            HeadVerdict::ReadBody
        } else {
            HeadVerdict::Decide
        }
    }

    fn credentials<'a>(&self, head: &'a RequestHead) -> Result<Credentials<'a>, Denial> {
        let mut values = head.values("authorization");
        let Some(value) = values.next() else {
            return Ok(Credentials::None);
        };
        if values.next().is_some() {
            return Err(Denial::InvalidAuthorizationHeader);
        }
        let text = std::str::from_utf8(value).map_err(|_| Denial::InvalidAuthorizationHeader)?;
        let (scheme, token) = text.split_once(' ').ok_or(Denial::InvalidAuthorizationHeader)?;
        let scheme = if scheme.eq_ignore_ascii_case("dpop") {
            Scheme::Dpop
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Scheme::Bearer
        } else {
            // Basic and friends carry no access token: answer as if none was sent.
            return Ok(Credentials::None);
        };
        let token = token.trim_matches(' ');
        if !is_token68(token) {
            return Err(Denial::InvalidAuthorizationHeader);
        }
        Ok(Credentials::Token(scheme, token))
    }

    /// The client certificate's `x5t#S256`, from Envoy's hex digest.
    fn client_cert_x5t(env: &Env<'_>) -> Option<String> {
        let hex = (env.client_cert_sha256_hex)()?;
        decode_hex32(&hex).map(|digest| b64url_encode(&digest))
    }

    /// Authenticates, binds and authorizes. `body` is the whole body for POST, `None` for
    /// GET and DELETE (a body there is refused).
    pub fn decide(&self, head: &RequestHead, body: Option<&[u8]>, env: &mut Env<'_>) -> Decision {
        if body.is_some_and(|b| b.len() > self.config.max_body_bytes) {
            return self.refuse(Denial::BodyTooLarge, None, None, Facts::default());
        }
        let decoded: Option<Result<Body, mcp::Malformed>> = match (head.method.as_str(), body) {
            ("POST", Some(bytes)) => Some(mcp::decode(bytes)),
            ("POST", None) => Some(mcp::decode(&[])),
            (_, Some(bytes)) if !bytes.is_empty() => return self.refuse(Denial::UnexpectedBody, None, None, Facts::default()),
            _ => None,
        };
        let rpc_id: Option<RpcId> = match &decoded {
            Some(Ok(body)) => body.single_id().cloned(),
            Some(Err(malformed)) => malformed.id.clone(),
            None => None,
        };
        let id = rpc_id.as_ref();
        // The messages stay in `facts` (every refusal reports them) until an allowed request
        // takes them.
        let mut facts = Facts::default();
        let malformed = match decoded {
            Some(Ok(body)) => {
                facts.messages = body.messages;
                None
            }
            Some(Err(malformed)) => Some(malformed),
            None => None,
        };

        let (scheme, raw_token) = match self.credentials(head) {
            Ok(Credentials::Token(scheme, token)) => (scheme, token),
            Ok(Credentials::None) => return self.refuse(Denial::MissingToken, None, id, facts),
            Err(denial) => return self.refuse(denial, None, id, facts),
        };

        let token = match self.verified_token(raw_token, env) {
            Ok(token) => token,
            Err(TokenOutcome::NeedKeys(kid)) => return Decision::NeedKeys { unknown_kid: kid },
            Err(TokenOutcome::Denied(denial)) => return self.refuse(denial, Some(scheme), id, facts),
        };
        let claims = token.shared_claims();
        facts.claims = Some(Arc::clone(&claims));

        let proof = match scheme {
            Scheme::Bearer => None,
            Scheme::Dpop => {
                let mut proofs = head.values("dpop");
                let proof = match (proofs.next(), proofs.next()) {
                    (None, _) => return self.refuse(Denial::MissingProof, Some(scheme), id, facts),
                    (Some(_), Some(_)) => return self.refuse(Denial::MultipleProofs, Some(scheme), id, facts),
                    (Some(p), None) => p,
                };
                // Envoy may fold repeated headers into one with commas; a JWS has none.
                if proof.contains(&b',') {
                    return self.refuse(Denial::MultipleProofs, Some(scheme), id, facts);
                }
                let Ok(proof) = std::str::from_utf8(proof) else {
                    return self.refuse(Denial::InvalidProof(dpop::ProofError::Malformed(crate::jose::JwsError::BadBase64)), Some(scheme), id, facts);
                };
                let htu = match self.config.public_url.with_request_path(&head.path) {
                    Ok(htu) => htu,
                    Err(_) => return self.refuse(Denial::InvalidProof(dpop::ProofError::UriMismatch), Some(scheme), id, facts),
                };
                let ctx = ProofContext { method: &head.method, htu: &htu, access_token: raw_token };
                match dpop::verify_proof(proof.trim(), &ctx, &self.config.dpop, env.now) {
                    Ok(p) => Some(p),
                    Err(e) => return self.refuse(Denial::InvalidProof(e), Some(scheme), id, facts),
                }
            }
        };

        // Only a certificate-bound token looks at the certificate (binding::check).
        let cert = claims.cnf.x5t_s256.as_ref().and_then(|_| Self::client_cert_x5t(env));
        let possession = match binding::check(
            self.config.binding,
            scheme,
            &claims.cnf,
            proof.as_ref().map(|p| p.jkt.as_str()),
            cert.as_deref(),
        ) {
            Ok(p) => p,
            Err(e) => return self.refuse(Denial::Binding(e), Some(scheme), id, facts),
        };
        // A refusal from here on reports the possession (a copy); an allowed request takes it.
        let with_possession = |facts: Facts| Facts { possession: Some(possession.clone()), ..facts };

        if let Some(proof) = &proof {
            let digest = ReplayCache::digest(&proof.jkt, &proof.jti);
            match self.replay.check_and_remember(env.replay_store, digest, proof.remember_until, env.now, env.replay_tag) {
                Ok(()) => {}
                Err(ReplayError::Replayed) => return self.refuse(Denial::Replay, Some(scheme), id, with_possession(facts)),
                Err(ReplayError::Unavailable) => {
                    return self.refuse(Denial::ReplayCacheUnavailable, Some(scheme), id, with_possession(facts))
                }
            }
        }

        if let Some(malformed) = malformed {
            return self.refuse(Denial::Malformed(malformed.error), Some(scheme), id, with_possession(facts));
        }
        if let Err(denial) = routing_headers_agree(head, &facts.messages) {
            return self.refuse(denial, Some(scheme), id, with_possession(facts));
        }

        let mut required: Vec<String> = Vec::new();
        for message in &facts.messages {
            match self.config.policy.required_scopes(message) {
                Ok(scopes) => required.extend(scopes),
                Err(crate::policy::Forbidden::ToolNotListed(tool)) => {
                    return self.refuse(Denial::ToolNotAllowed(tool), Some(scheme), id, with_possession(facts))
                }
            }
        }
        required.sort();
        required.dedup();
        if required.iter().any(|s| !claims.has_scope(s)) {
            let facts = Facts { required_scopes: required.clone(), ..with_possession(facts) };
            return self.refuse(Denial::InsufficientScope { required }, Some(scheme), id, facts);
        }

        Decision::Allow(Box::new(Allowed {
            claims,
            scheme,
            possession,
            messages: facts.messages,
            required_scopes: required,
        }))
    }

    fn verified_token(&self, raw: &str, env: &mut Env<'_>) -> Result<VerifiedToken, TokenOutcome> {
        let skew = self.config.clock_skew_seconds;
        let cache_key = env.tokens.key_of(raw);
        if let Some(token) = env.tokens.get(&cache_key, env.now, skew) {
            return Ok(token);
        }
        let untrusted = UntrustedToken::parse(raw).map_err(|e| TokenOutcome::Denied(Denial::InvalidToken(e)))?;
        let Some(keys) = env.keys else {
            return Err(if env.may_fetch_keys {
                TokenOutcome::NeedKeys(None)
            } else {
                TokenOutcome::Denied(Denial::KeysUnavailable)
            });
        };
        let expect = Expectations {
            issuer: &self.config.issuer,
            audience: &self.config.audience,
            clock_skew_seconds: skew,
        };
        match untrusted.verify(keys, &expect, env.now) {
            Ok(token) => {
                env.tokens.insert(cache_key, &token);
                Ok(token)
            }
            Err(TokenError::UnknownKey(kid)) if env.may_fetch_keys => Err(TokenOutcome::NeedKeys(Some(kid))),
            Err(e) => Err(TokenOutcome::Denied(Denial::InvalidToken(e))),
        }
    }
}

/// Newer MCP clients repeat the method and the tool/prompt/resource name in `Mcp-Method` and
/// `Mcp-Name` headers. A server (or a router in front of it) that acts on those while we judged
/// the body would execute something else than what was authorized: when they are present they
/// must say exactly what the body says, for a single message.
fn routing_headers_agree(head: &RequestHead, messages: &[mcp::Message]) -> Result<(), Denial> {
    let method_header = head.values("mcp-method").collect::<Vec<_>>();
    let name_header = head.values("mcp-name").collect::<Vec<_>>();
    if method_header.is_empty() && name_header.is_empty() {
        return Ok(());
    }
    let disagree = Err(Denial::RoutingHeaderMismatch);
    let [mcp::Message::Call { method, target, .. }] = messages else {
        return disagree; // headers describe one call; a batch or a response cannot match them
    };
    match method_header.as_slice() {
        [] => {}
        [value] if *value == method.as_bytes() => {}
        _ => return disagree,
    }
    let name = match target {
        mcp::Target::Tool(n) | mcp::Target::Prompt(n) | mcp::Target::Resource(n) => Some(n.as_bytes()),
        mcp::Target::None => None,
    };
    match (name_header.as_slice(), name) {
        ([], _) => Ok(()),
        ([value], Some(name)) if *value == name => Ok(()),
        _ => disagree,
    }
}

enum TokenOutcome {
    NeedKeys(Option<String>),
    Denied(Denial),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The table is RFC 7235's token68 alphabet (before the padding), byte for byte.
    #[test]
    fn token68_table_is_the_rfc_alphabet() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
            assert_eq!(TOKEN68[usize::from(b)], expected, "byte {b:#04x}");
        }
        assert!(is_token68("abc.DEF-_~+/=="));
        assert!(!is_token68("abc,def") && !is_token68("==") && !is_token68("") && !is_token68("a b"));
    }
}
