//! The one place that turns a [`Denial`] into what the client receives: status,
//! `WWW-Authenticate` challenges (RFC 6750 §3, RFC 9449 §7.1, MCP step-up with
//! `resource_metadata` and `scope`), and a JSON-RPC error body with a reason.
#![forbid(unsafe_code)]

use serde_json::{json, Value};

use crate::binding::Scheme;
use crate::config::Config;
use crate::denial::Denial;
use crate::mcp::RpcId;

/// A reply the filter sends itself; nothing goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// JSON-RPC error codes of our refusals. -32700/-32600 are JSON-RPC's own; the rest are in
/// the implementation-defined server-error range.
pub mod rpc_code {
    pub const UNAUTHORIZED: i64 = -32001;
    pub const FORBIDDEN: i64 = -32003;
    pub const UNAVAILABLE: i64 = -32004;
    pub const REQUEST_REFUSED: i64 = -32000;
}

/// Appends a quoted-string value for an auth-param: printable ASCII, with `"` and `\`
/// escaped.
fn push_quoted(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// `<scheme> name="value", ...`, written into one string.
fn challenge(scheme: Scheme, config: &Config, denial: Option<&Denial>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(scheme.name());
    out.push(' ');
    let first = out.len();
    let param = |out: &mut String, name: &str, value: &str| {
        if out.len() > first {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push('=');
        push_quoted(out, value);
    };
    if scheme == Scheme::Dpop {
        let algs: Vec<&str> = config.dpop.algorithms.iter().map(|a| a.name()).collect();
        param(&mut out, "algs", &algs.join(" "));
    }
    if let Some(d) = denial {
        if let Some(error) = d.oauth_error() {
            param(&mut out, "error", error);
            param(&mut out, "error_description", &d.describe());
        }
        if let Denial::InsufficientScope { required } = d {
            param(&mut out, "scope", &required.join(" "));
        }
    }
    param(&mut out, "resource_metadata", &config.resource_metadata_url());
    out
}

/// The schemes to challenge with: the one the client used when its error belongs to it,
/// else every scheme this server accepts.
fn challenge_schemes(denial: &Denial, config: &Config, presented: Option<Scheme>) -> Vec<Scheme> {
    let dpop_specific = matches!(
        denial,
        Denial::MissingProof | Denial::MultipleProofs | Denial::InvalidProof(_) | Denial::Replay
    );
    if dpop_specific {
        return vec![Scheme::Dpop];
    }
    if let (Denial::InsufficientScope { .. }, Some(scheme)) = (denial, presented) {
        return vec![scheme];
    }
    let mut schemes = Vec::new();
    if config.binding.accepts_dpop() {
        schemes.push(Scheme::Dpop);
    }
    if config.binding.accepts_bearer_scheme() {
        schemes.push(Scheme::Bearer);
    }
    schemes
}

fn rpc_error_body(id: Option<&RpcId>, code: i64, message: &str, data: Value) -> Vec<u8> {
    let id_json = id.map(|i| i.0.as_str()).unwrap_or("null");
    let error = json!({ "code": code, "message": message, "data": data });
    // The id is echoed as the client wrote it (already canonical JSON text).
    format!(r#"{{"jsonrpc":"2.0","id":{id_json},"error":{error}}}"#).into_bytes()
}

/// The reply for `denial`. `presented` is the scheme the request used, when it sent a token;
/// `id` is the JSON-RPC id of the (single) request, when known.
pub fn refusal(denial: &Denial, config: &Config, presented: Option<Scheme>, id: Option<&RpcId>) -> LocalReply {
    let status = denial.status();
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("cache-control".to_string(), "no-store".to_string()),
    ];
    let challenged = matches!(status, 401 | 403) || denial.oauth_error() == Some("invalid_request");
    if challenged {
        for scheme in challenge_schemes(denial, config, presented) {
            headers.push(("www-authenticate".to_string(), challenge(scheme, config, Some(denial))));
        }
    }
    match denial {
        Denial::MethodNotAllowed => headers.push(("allow".into(), "GET, POST, DELETE".into())),
        Denial::KeysUnavailable | Denial::ReplayCacheUnavailable => headers.push(("retry-after".into(), "5".into())),
        _ => {}
    }
    let code = match denial {
        Denial::Malformed(e) => e.jsonrpc_code(),
        _ => match status {
            401 => rpc_code::UNAUTHORIZED,
            403 => rpc_code::FORBIDDEN,
            503 => rpc_code::UNAVAILABLE,
            _ => rpc_code::REQUEST_REFUSED,
        },
    };
    let mut data = serde_json::Map::new();
    data.insert("reason".into(), json!(denial.code()));
    data.insert("status".into(), json!(status));
    if let Denial::InsufficientScope { required } = denial {
        data.insert("required_scopes".into(), json!(required));
    }
    let data = Value::Object(data);
    let body = rpc_error_body(id, code, &denial.describe(), data);
    LocalReply { status, headers, body }
}

/// 503 for when no configuration is at hand (a request reaching a plugin that is not
/// configured, which Envoy should never allow).
pub fn keys_unavailable() -> LocalReply {
    let denial = Denial::KeysUnavailable;
    LocalReply {
        status: denial.status(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "no-store".into()),
            ("retry-after".into(), "5".into()),
        ],
        body: rpc_error_body(None, rpc_code::UNAVAILABLE, &denial.describe(), json!({"reason": denial.code(), "status": denial.status()})),
    }
}

/// The RFC 9728 metadata document, answered by the filter.
pub fn resource_metadata(config: &Config) -> LocalReply {
    LocalReply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("cache-control".into(), "public, max-age=300".into()),
        ],
        body: crate::prm::document(config).to_string().into_bytes(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::token::TokenError;

    fn config(binding: &str) -> Config {
        crate::testkit::test_config(binding, json!({}))
    }

    const RM: &str = r#"resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#;

    #[test]
    fn missing_token_gets_a_bare_challenge_with_resource_metadata() {
        let r = refusal(&Denial::MissingToken, &config("dpop"), None, None);
        assert_eq!(r.status, 401);
        let challenges: Vec<_> = r.headers_named("www-authenticate").collect();
        assert_eq!(challenges, vec![format!(r#"DPoP algs="ES256 EdDSA", {RM}"#)]);
        let r = refusal(&Denial::MissingToken, &config("dpop_or_mtls"), None, None);
        let challenges: Vec<_> = r.headers_named("www-authenticate").collect();
        assert_eq!(challenges.len(), 2);
        assert!(challenges[1].starts_with("Bearer ") && challenges[1].ends_with(RM));
        assert!(!challenges[1].contains("error="));
    }

    #[test]
    fn invalid_token_and_proof_errors() {
        let r = refusal(&Denial::InvalidToken(TokenError::Expired), &config("mtls"), Some(Scheme::Bearer), None);
        let c = r.header("www-authenticate").unwrap();
        assert!(c.starts_with(r#"Bearer error="invalid_token", error_description="access token has expired""#), "{c}");
        let r = refusal(&Denial::Replay, &config("dpop_or_mtls"), Some(Scheme::Dpop), None);
        let challenges: Vec<_> = r.headers_named("www-authenticate").collect();
        assert_eq!(challenges.len(), 1);
        assert!(challenges[0].starts_with(r#"DPoP algs="ES256 EdDSA", error="invalid_dpop_proof""#));
    }

    #[test]
    fn insufficient_scope_is_a_step_up_challenge() {
        let d = Denial::InsufficientScope { required: vec!["repo:admin".into(), "repo:write".into()] };
        let id = RpcId("7".into());
        let r = refusal(&d, &config("dpop"), Some(Scheme::Dpop), Some(&id));
        assert_eq!(r.status, 403);
        let c = r.header("www-authenticate").unwrap();
        assert!(c.contains(r#"error="insufficient_scope""#) && c.contains(r#"scope="repo:admin repo:write""#) && c.ends_with(RM), "{c}");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"], json!(7));
        assert_eq!(body["error"]["code"], json!(rpc_code::FORBIDDEN));
        assert_eq!(body["error"]["data"]["reason"], "insufficient_scope");
        assert_eq!(body["error"]["data"]["required_scopes"], json!(["repo:admin", "repo:write"]));
    }

    #[test]
    fn non_auth_refusals_carry_no_challenge_and_a_json_rpc_body() {
        let r = refusal(&Denial::BodyTooLarge, &config("dpop"), None, None);
        assert_eq!(r.status, 413);
        assert!(r.header("www-authenticate").is_none());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["jsonrpc"], "2.0");
        assert_eq!(body["id"], Value::Null);
        assert_eq!(body["error"]["data"]["reason"], "body_too_large");
        let r = refusal(&Denial::MethodNotAllowed, &config("dpop"), None, None);
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST, DELETE")));
        let r = refusal(&Denial::KeysUnavailable, &config("dpop"), None, None);
        assert_eq!((r.status, r.header("retry-after")), (503, Some("5")));
    }

    #[test]
    fn quoted_strings_cannot_break_the_header() {
        let mut quoted = String::new();
        push_quoted(&mut quoted, "a\"b\\c\r\nd\u{e9}");
        assert_eq!(quoted, r#""a\"b\\c??d?""#);
    }
}
