//! Who did what: one audit event per decision (per JSON-RPC message of a batch), and the
//! verified identity the upstream receives instead of the caller's credentials.
//!
//! An event holds the agent (`client_id`/`azp`), the user it acts for (`sub`), the delegation
//! chain (`act`, RFC 8693 §4.1), the tool, the key that proved possession, the decision and its
//! reason, and the scopes the call needed. Never the token, the proof or a signature.
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

use crate::binding::Possession;
use crate::config::Config;
use crate::guard::{Decision, Facts, RequestHead};
use crate::mcp::{Message, Target};
use crate::token::AccessClaims;

/// Every audit line starts with this, so log pipelines can pick them out.
pub const AUDIT_PREFIX: &str = "mcp-guard-audit ";
/// The filter-state name of the whole record (`audit.filter_state: record`); Envoy's access log
/// reads it as `%FILTER_STATE(wasm.mcp_guard_audit:PLAIN)%`.
pub const FILTER_STATE_RECORD: &str = "mcp_guard_audit";

/// The header namespace the filter owns: client-sent ones are removed, verified ones added.
pub const IDENTITY_HEADER_PREFIX: &str = "x-mcp-guard-";

fn binding_name(p: &Possession) -> Option<&'static str> {
    match (&p.dpop_jkt, &p.mtls_x5t) {
        (Some(_), Some(_)) => Some("dpop+mtls"),
        (Some(_), None) => Some("dpop"),
        (None, Some(_)) => Some("mtls"),
        (None, None) => None,
    }
}

/// The delegation chain as names: each actor's `sub`, else its `client_id`.
pub fn delegation_names(claims: &AccessClaims) -> Vec<String> {
    claims
        .delegation
        .iter()
        .map(|a| a.sub.clone().or_else(|| a.client_id.clone()).unwrap_or_else(|| "?".into()))
        .collect()
}

fn identity(event: &mut Map<String, Value>, claims: &AccessClaims, possession: Option<&Possession>) {
    event.insert("sub".into(), json!(claims.subject));
    event.insert("agent".into(), json!(claims.client_id));
    event.insert(
        "delegation".into(),
        Value::Array(
            claims
                .delegation
                .iter()
                .map(|a| json!({"sub": a.sub, "client_id": a.client_id, "iss": a.iss}))
                .collect(),
        ),
    );
    event.insert("iss".into(), json!(claims.issuer));
    event.insert("token_jti".into(), json!(claims.jti));
    if let Some(p) = possession {
        event.insert("binding".into(), json!(binding_name(p).unwrap_or("bearer")));
        if let Some(jkt) = &p.dpop_jkt {
            event.insert("jkt".into(), json!(jkt));
        }
        if let Some(x5t) = &p.mtls_x5t {
            event.insert("x5t#S256".into(), json!(x5t));
        }
    }
}

fn target(event: &mut Map<String, Value>, message: &Message) {
    match message {
        Message::Call { method, target, id } => {
            event.insert("method".into(), json!(method));
            event.insert("rpc_id".into(), id.as_ref().map_or(Value::Null, |i| serde_json::from_str(&i.0).unwrap_or(Value::Null)));
            match target {
                Target::Tool(name) => event.insert("tool".into(), json!(name)),
                Target::Prompt(name) => event.insert("prompt".into(), json!(name)),
                Target::Resource(uri) => event.insert("resource".into(), json!(uri)),
                Target::None => None,
            };
        }
        Message::Response { id } => {
            event.insert("method".into(), Value::Null);
            event.insert("rpc_id".into(), serde_json::from_str(&id.0).unwrap_or(Value::Null));
            event.insert("response".into(), json!(true));
        }
    }
}

/// The audit events of one decision: one per JSON-RPC message, or one for the request when
/// it carried none (GET, DELETE, or refused before its body was read).
pub fn events(head: &RequestHead, decision: &Decision, now: u64) -> Vec<Value> {
    type Seen<'a> = (Option<&'a AccessClaims>, Option<&'a Possession>, &'a [Message], &'a [String]);
    let (allowed, status, reason, (claims, possession, messages, required_scopes)): (bool, u32, &str, Seen<'_>) = match decision {
        Decision::Allow(a) => (true, 0, "allowed", (Some(&a.claims), Some(&a.possession), &a.messages, &a.required_scopes)),
        Decision::Deny { denial, reply, facts } => {
            let Facts { claims, possession, messages, required_scopes } = &**facts;
            (false, reply.status, denial.code(), (claims.as_ref(), possession.as_ref(), messages, required_scopes))
        }
        Decision::NeedKeys { .. } => return Vec::new(),
    };
    let mut base = Map::new();
    base.insert("time".into(), json!(now));
    base.insert("decision".into(), json!(if allowed { "allow" } else { "deny" }));
    if !allowed {
        base.insert("status".into(), json!(status));
    }
    base.insert("reason".into(), json!(reason));
    base.insert("http_method".into(), json!(head.method));
    base.insert("request_id".into(), json!(head.header_text("x-request-id")));
    if let Some(claims) = claims {
        identity(&mut base, claims, possession);
    }
    base.insert("scopes_required".into(), json!(required_scopes));
    let Some((last, others)) = messages.split_last() else {
        return vec![Value::Object(base)];
    };
    let batch = !others.is_empty();
    let event = |mut event: Map<String, Value>, i: usize, m: &Message| {
        target(&mut event, m);
        if batch {
            event.insert("batch_index".into(), json!(i));
        }
        Value::Object(event)
    };
    let mut events: Vec<Value> = others.iter().enumerate().map(|(i, m)| event(base.clone(), i, m)).collect();
    // The last message takes the base itself rather than a copy.
    events.push(event(base, others.len(), last));
    events
}

/// Makes a claim value safe as a header value: printable ASCII, everything else (and `%`)
/// percent-encoded, so a claim can never inject a header line.
pub fn header_safe(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x20..0x7F).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the upstream must not see, and the verified identity it gets instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Header names to remove: the credentials, and every client-sent header of our namespace.
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
}

/// The header changes for an allowed request.
pub fn upstream_headers(config: &Config, head: &RequestHead, claims: &AccessClaims, possession: &Possession, messages: &[Message]) -> HeaderEdits {
    let mut remove = Vec::new();
    if !config.forward_token {
        // MCP authorization spec: the server must not receive (or pass on) the client's token.
        // `head` holds every request header, so a credential header it lacks is not there to
        // remove (and each removal is a host call).
        for credential in ["authorization", "dpop"] {
            if head.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(credential)) {
                remove.push(credential.to_string());
            }
        }
    }
    // Client-sent identity headers of our namespace are removed whatever their case.
    remove.extend(
        head.headers
            .iter()
            .filter(|(k, _)| k.get(..IDENTITY_HEADER_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(IDENTITY_HEADER_PREFIX)))
            .map(|(k, _)| k.clone()),
    );
    let mut set = Vec::new();
    let mut put = |name: &str, value: String| {
        let mut header = String::with_capacity(IDENTITY_HEADER_PREFIX.len() + name.len());
        header.push_str(IDENTITY_HEADER_PREFIX);
        header.push_str(name);
        set.push((header, header_safe(&value)));
    };
    if let Some(sub) = &claims.subject {
        put("subject", sub.clone());
    }
    if let Some(agent) = &claims.client_id {
        put("agent", agent.clone());
    }
    let chain = delegation_names(claims);
    if !chain.is_empty() {
        put("delegation", chain.join(","));
    }
    put("issuer", claims.issuer.clone());
    put("scopes", claims.scopes.join(" "));
    if let Some(binding) = binding_name(possession) {
        put("binding", binding.to_string());
    }
    if let Some(key) = possession.dpop_jkt.as_ref().or(possession.mtls_x5t.as_ref()) {
        put("key", key.clone());
    }
    let tools: Vec<&str> = messages
        .iter()
        .filter_map(|m| match m {
            Message::Call { target: Target::Tool(name), .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    if !tools.is_empty() {
        put("tool", tools.join(","));
    }
    HeaderEdits { remove, set }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn header_values_cannot_inject_lines() {
        assert_eq!(header_safe("alice"), "alice");
        assert_eq!(header_safe("a\r\nx-evil: 1"), "a%0D%0Ax-evil: 1");
        assert_eq!(header_safe("100%é"), "100%25%C3%A9");
    }
}
