//! The demo's authorization server: it mints access tokens (RFC 9068 `at+jwt`, ES256) bound to
//! a DPoP key (`cnf.jkt`) or a client certificate (`cnf["x5t#S256"]`), publishes its key at
//! `/jwks`, and can switch to a new key on `POST /rotate`.
//!
//! It is deliberately not an OAuth server a person logs in to: `POST /token` hands out whatever
//! scopes are asked for, so the demo and the tests can show what the filter decides for each.
//! Keys and token formats come from the filter's test kit, so they match the filter's own tests.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use mcp_guard::testkit::TestKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::{now_seconds, Error};

/// Lifetime of a token when the request names none.
pub const DEFAULT_TTL_SECONDS: u64 = 300;
const MAX_TTL_SECONDS: u64 = 86_400;
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// `POST /token` body. Exactly what the demo needs, and nothing unknown is accepted (a typo in
/// `dpop_jkt` must not silently yield an unbound token).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// RFC 7638 thumbprint of the client's DPoP key: a DPoP-bound token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpop_jkt: Option<String>,
    /// base64url SHA-256 of the client certificate's DER: an mTLS-bound token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    /// RFC 8693 actor claim (who acts on `sub`'s behalf), copied as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Overrides the audience (a string or a list), e.g. to mint a token for another resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Value>,
}

/// `POST /token` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// `DPoP` for a DPoP-bound token, else `Bearer`.
    pub token_type: String,
    pub expires_in: u64,
}

struct SigningKey {
    key: TestKey,
    kid: String,
}

impl SigningKey {
    fn generate() -> SigningKey {
        let key = TestKey::es256();
        // The kid is the key's own RFC 7638 thumbprint: a new key always has a new kid.
        let kid = key.thumbprint();
        SigningKey { key, kid }
    }
}

pub struct Issuer {
    issuer: String,
    audience: String,
    signing: Mutex<SigningKey>,
    minted: AtomicU64,
}

impl Issuer {
    pub fn new(issuer: &str, audience: &str) -> Issuer {
        Issuer {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            signing: Mutex::new(SigningKey::generate()),
            minted: AtomicU64::new(0),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn signing(&self) -> std::sync::MutexGuard<'_, SigningKey> {
        // A panic while holding the lock cannot leave a key half-written: keep using it.
        self.signing.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The kid of the current signing key.
    pub fn kid(&self) -> String {
        self.signing().kid.clone()
    }

    /// The JWK Set: only the current key (after a rotation the old one is gone).
    pub fn jwks(&self) -> Value {
        let signing = self.signing();
        let mut entry = signing.key.jwks_entry(&signing.kid);
        if let Value::Object(jwk) = &mut entry {
            jwk.insert("alg".into(), signing.key.alg().into());
        }
        json!({ "keys": [entry] })
    }

    /// Switches to a new signing key and returns its kid.
    pub fn rotate(&self) -> String {
        let mut signing = self.signing();
        *signing = SigningKey::generate();
        signing.kid.clone()
    }

    /// Mints an access token for `request`.
    pub fn mint(&self, request: &TokenRequest, now: u64) -> Result<TokenResponse, Error> {
        let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
            return Err(Error::msg(format!("ttl_seconds must be from 1 to {MAX_TTL_SECONDS}")));
        }
        let cnf = match (&request.dpop_jkt, &request.x5t_s256) {
            (Some(jkt), None) => Some(json!({ "jkt": jkt })),
            (None, Some(x5t)) => Some(json!({ "x5t#S256": x5t })),
            (Some(_), Some(_)) => return Err(Error::msg("give dpop_jkt or x5t_s256, not both")),
            (None, None) => None, // an unbound token, for servers configured with binding "bearer"
        };
        let aud = match &request.aud {
            None => Value::String(self.audience.clone()),
            Some(Value::String(a)) => Value::String(a.clone()),
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => Value::Array(list.clone()),
            Some(_) => return Err(Error::msg("aud must be a string or a list of strings")),
        };
        let n = self.minted.fetch_add(1, Ordering::Relaxed);
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), aud);
        claims.insert("sub".into(), request.sub.clone().unwrap_or_else(|| "demo-user".into()).into());
        claims.insert("client_id".into(), request.client_id.clone().unwrap_or_else(|| "demo-agent".into()).into());
        claims.insert("scope".into(), request.scope.clone().unwrap_or_default().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl).into());
        claims.insert("jti".into(), format!("at-{now}-{n}").into());
        if let Some(act) = &request.act {
            claims.insert("act".into(), act.clone());
        }
        if let Some(cnf) = cnf {
            claims.insert("cnf".into(), cnf);
        }
        let signing = self.signing();
        let access_token = signing.key.sign_jws(&json!({"typ": "at+jwt", "kid": signing.kid}), &Value::Object(claims));
        let token_type = if request.dpop_jkt.is_some() { "DPoP" } else { "Bearer" };
        Ok(TokenResponse { access_token, token_type: token_type.into(), expires_in: ttl })
    }

    /// RFC 8414 metadata, so the PRM document's `authorization_servers` leads somewhere real.
    fn metadata(&self) -> Value {
        let base = self.issuer.trim_end_matches('/');
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base}/jwks"),
            "token_endpoint": format!("{base}/token"),
            "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
            "tls_client_certificate_bound_access_tokens": true,
        })
    }

    /// Answers one HTTP request.
    pub fn handle(&self, method: &Method, path: &str, body: &[u8]) -> (StatusCode, Value) {
        match (method, path) {
            (&Method::GET, "/jwks") => (StatusCode::OK, self.jwks()),
            (&Method::GET, "/.well-known/oauth-authorization-server") => (StatusCode::OK, self.metadata()),
            (&Method::POST, "/token") => {
                let request: TokenRequest = match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => return invalid_request(&format!("token request: {e}")),
                };
                match self.mint(&request, now_seconds()) {
                    Ok(token) => {
                        println!(
                            "issued {} token: sub={} scope={:?} ttl={}s",
                            token.token_type,
                            request.sub.as_deref().unwrap_or("demo-user"),
                            request.scope.as_deref().unwrap_or(""),
                            token.expires_in
                        );
                        (StatusCode::OK, serde_json::to_value(&token).unwrap_or(Value::Null))
                    }
                    Err(e) => invalid_request(&e.to_string()),
                }
            }
            (&Method::POST, "/rotate") => {
                let kid = self.rotate();
                println!("rotated the signing key: new kid {kid}");
                (StatusCode::OK, json!({ "kid": kid }))
            }
            (_, "/jwks" | "/token" | "/rotate" | "/.well-known/oauth-authorization-server") => {
                (StatusCode::METHOD_NOT_ALLOWED, json!({"error": "method not allowed"}))
            }
            _ => (StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }
}

fn invalid_request(description: &str) -> (StatusCode, Value) {
    (StatusCode::BAD_REQUEST, json!({"error": "invalid_request", "error_description": description}))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    response
}

async fn answer(issuer: Arc<Issuer>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "invalid_request", "error_description": e.to_string()}),
            ))
        }
    };
    let (status, value) = issuer.handle(&parts.method, parts.uri.path(), &body);
    Ok(json_response(status, &value))
}

/// Serves the issuer on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, issuer: Arc<Issuer>) {
    let service = hyper::service::service_fn(move |request| answer(Arc::clone(&issuer), request));
    crate::net::serve(listener, service).await
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decode_part(token: &str, index: usize) -> Value {
        let part = token.split('.').nth(index).unwrap();
        serde_json::from_slice(&mcp_guard::jose::b64url_decode(part).unwrap()).unwrap()
    }

    #[test]
    fn mints_bound_tokens_with_the_current_kid() {
        let issuer = Issuer::new("http://127.0.0.1:1", "http://127.0.0.1:2/mcp");
        let request =
            TokenRequest { scope: Some("weather:read".into()), dpop_jkt: Some("JKT".into()), ..Default::default() };
        let token = issuer.mint(&request, 1000).unwrap();
        assert_eq!((token.token_type.as_str(), token.expires_in), ("DPoP", DEFAULT_TTL_SECONDS));
        let header = decode_part(&token.access_token, 0);
        let claims = decode_part(&token.access_token, 1);
        assert_eq!(header, json!({"alg": "ES256", "typ": "at+jwt", "kid": issuer.kid()}));
        assert_eq!(claims["cnf"], json!({"jkt": "JKT"}));
        assert_eq!(claims["aud"], "http://127.0.0.1:2/mcp");
        assert_eq!(claims["iss"], "http://127.0.0.1:1");
        assert_eq!(claims["scope"], "weather:read");
        assert_eq!(claims["exp"], json!(1000 + DEFAULT_TTL_SECONDS));
    }

    #[test]
    fn rotation_replaces_the_published_key() {
        let issuer = Issuer::new("i", "a");
        let old = issuer.kid();
        let new = issuer.rotate();
        assert_ne!(old, new);
        assert_eq!(issuer.jwks()["keys"].as_array().map(Vec::len), Some(1));
        assert_eq!(issuer.jwks()["keys"][0]["kid"], json!(new));
    }

    #[test]
    fn refuses_unknown_fields_and_double_binding() {
        let issuer = Issuer::new("i", "a");
        let (status, body) = issuer.handle(&Method::POST, "/token", br#"{"scope":"x","dpop_jk":"typo"}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _) = issuer.handle(&Method::POST, "/token", br#"{"dpop_jkt":"a","x5t_s256":"b"}"#);
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = issuer.handle(&Method::POST, "/token", br#"{"x5t_s256":"b"}"#);
        assert_eq!((status, body["token_type"].as_str()), (StatusCode::OK, Some("Bearer")));
    }
}
