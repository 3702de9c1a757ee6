//! Who did what: one audit event per decision (per JSON-RPC message of a batch), and the
//! verified identity the upstream receives instead of the caller's credentials.
//!
//! An event holds the agent (`client_id`/`azp`), the user it acts for (`sub`), the delegation
//! chain (`act`, RFC 8693 §4.1), the tool, the key that proved possession, the decision and its
//! reason, and the scopes the call needed. Never the token, the proof or a signature.
#![forbid(unsafe_code)]

use std::borrow::Cow;

#[cfg(any(test, feature = "testkit"))]
use serde_json::{json, Map};
use serde_json::Value;

use crate::binding::Possession;
use crate::config::Config;
use crate::guard::{Decision, RequestHead};
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

#[cfg(any(test, feature = "testkit"))]
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

#[cfg(any(test, feature = "testkit"))]
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
///
/// The reference model, kept for the tests only (feature `testkit`): the filter writes
/// [`events_json`], and the tests hold its output to this one's serialization, byte for byte,
/// on every decision of the scenario table.
#[cfg(any(test, feature = "testkit"))]
pub fn events(head: &RequestHead, decision: &Decision, now: u64) -> Vec<Value> {
    type Seen<'a> = (Option<&'a AccessClaims>, Option<&'a Possession>, &'a [Message], &'a [String]);
    let (allowed, status, reason, (claims, possession, messages, required_scopes)): (bool, u32, &str, Seen<'_>) = match decision {
        Decision::Allow(a) => (true, 0, "allowed", (Some(&a.claims), Some(&a.possession), &a.messages, &a.required_scopes)),
        Decision::Deny { denial, reply, facts } => {
            let crate::guard::Facts { claims, possession, messages, required_scopes } = &**facts;
            (false, reply.status, denial.code(), (claims.as_deref(), possession.as_ref(), messages, required_scopes))
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

/// The audit events of one decision as compact JSON: byte for byte what `serde_json` writes
/// for [`events`] (the same members, keys in their sorted order), written straight into
/// strings. Building the events as `Value` maps and serializing them was a third of the
/// filter's instructions on an allowed request (57k of 171k wasm instructions, cached token).
pub fn events_json(head: &RequestHead, decision: &Decision, now: u64) -> Vec<String> {
    let (allowed, status, reason, claims, possession, messages, required_scopes) = match decision {
        Decision::Allow(a) => (true, 0, "allowed", Some(&a.claims), Some(&a.possession), a.messages.as_slice(), a.required_scopes.as_slice()),
        Decision::Deny { denial, reply, facts } => (
            false,
            reply.status,
            denial.code(),
            facts.claims.as_ref(),
            facts.possession.as_ref(),
            facts.messages.as_slice(),
            facts.required_scopes.as_slice(),
        ),
        Decision::NeedKeys { .. } => return Vec::new(),
    };
    let batch = messages.len() > 1;
    let one = |index: usize, message: Option<&Message>| {
        let mut o = JsonObject::new(512);
        if let Some(c) = claims {
            o.opt_str("agent", c.client_id.as_deref());
        }
        if batch {
            o.key("batch_index");
            o.out.push_str(&index.to_string());
        }
        if let (Some(_), Some(p)) = (claims, possession) {
            o.str("binding", binding_name(p).unwrap_or("bearer"));
        }
        o.str("decision", if allowed { "allow" } else { "deny" });
        if let Some(c) = claims {
            o.key("delegation");
            o.out.push('[');
            for (i, actor) in c.delegation.iter().enumerate() {
                if i > 0 {
                    o.out.push(',');
                }
                let mut a = JsonObject::new(64);
                a.opt_str("client_id", actor.client_id.as_deref());
                a.opt_str("iss", actor.iss.as_deref());
                a.opt_str("sub", actor.sub.as_deref());
                o.out.push_str(&a.finish());
            }
            o.out.push(']');
        }
        o.str("http_method", &head.method);
        if let Some(c) = claims {
            o.str("iss", &c.issuer);
        }
        if let (Some(_), Some(jkt)) = (claims, possession.and_then(|p| p.dpop_jkt.as_deref())) {
            o.str("jkt", jkt);
        }
        match message {
            Some(Message::Call { method, .. }) => o.str("method", method),
            Some(Message::Response { .. }) => o.opt_str("method", None),
            None => {}
        }
        if let Some(Message::Call { target: Target::Prompt(name), .. }) = message {
            o.str("prompt", name);
        }
        o.str("reason", reason);
        o.opt_str("request_id", head.header_text("x-request-id"));
        if let Some(Message::Call { target: Target::Resource(uri), .. }) = message {
            o.str("resource", uri);
        }
        if let Some(Message::Response { .. }) = message {
            o.key("response");
            o.out.push_str("true");
        }
        let rpc_id = match message {
            Some(Message::Call { id, .. }) => Some(id.as_ref()),
            Some(Message::Response { id }) => Some(Some(id)),
            None => None,
        };
        if let Some(id) = rpc_id {
            // Through serde_json, as `events` does: the id's text read back as a value.
            let value = id.and_then(|i| serde_json::from_str::<Value>(&i.0).ok()).unwrap_or(Value::Null);
            o.key("rpc_id");
            o.out.push_str(&value.to_string());
        }
        o.key("scopes_required");
        o.out.push('[');
        for (i, scope) in required_scopes.iter().enumerate() {
            if i > 0 {
                o.out.push(',');
            }
            escape_into(&mut o.out, scope);
        }
        o.out.push(']');
        if !allowed {
            o.key("status");
            o.out.push_str(&status.to_string());
        }
        if let Some(c) = claims {
            o.opt_str("sub", c.subject.as_deref());
        }
        o.key("time");
        o.out.push_str(&now.to_string());
        if let Some(c) = claims {
            o.opt_str("token_jti", c.jti.as_deref());
        }
        if let Some(Message::Call { target: Target::Tool(name), .. }) = message {
            o.str("tool", name);
        }
        if let (Some(_), Some(x5t)) = (claims, possession.and_then(|p| p.mtls_x5t.as_deref())) {
            o.str("x5t#S256", x5t);
        }
        o.finish()
    };
    if messages.is_empty() {
        return vec![one(0, None)];
    }
    messages.iter().enumerate().map(|(i, m)| one(i, Some(m))).collect()
}

/// The facts the access log reads one by one (`audit.filter_state: fields`), as filter-state
/// name and value: those of the decision's first event that are strings, in this order.
pub fn filter_state_facts(decision: &Decision) -> Vec<(&'static str, &str)> {
    let (allowed, reason, claims, possession, messages) = match decision {
        Decision::Allow(a) => (true, "allowed", Some(&a.claims), Some(&a.possession), a.messages.as_slice()),
        Decision::Deny { denial, facts, .. } => {
            (false, denial.code(), facts.claims.as_ref(), facts.possession.as_ref(), facts.messages.as_slice())
        }
        Decision::NeedKeys { .. } => return Vec::new(),
    };
    let mut facts = vec![("mcp_guard_decision", if allowed { "allow" } else { "deny" }), ("mcp_guard_reason", reason)];
    let identity = claims.zip(possession);
    if let Some(sub) = claims.and_then(|c| c.subject.as_deref()) {
        facts.push(("mcp_guard_sub", sub));
    }
    if let Some(agent) = claims.and_then(|c| c.client_id.as_deref()) {
        facts.push(("mcp_guard_agent", agent));
    }
    if let Some(Message::Call { target: Target::Tool(tool), .. }) = messages.first() {
        facts.push(("mcp_guard_tool", tool));
    }
    if let Some(jkt) = identity.and_then(|(_, p)| p.dpop_jkt.as_deref()) {
        facts.push(("mcp_guard_jkt", jkt));
    }
    if let Some(x5t) = identity.and_then(|(_, p)| p.mtls_x5t.as_deref()) {
        facts.push(("mcp_guard_x5t_S256", x5t));
    }
    if let Some((_, p)) = identity {
        facts.push(("mcp_guard_binding", binding_name(p).unwrap_or("bearer")));
    }
    facts
}

/// A JSON object written member by member, in the order given.
struct JsonObject {
    out: String,
    empty: bool,
}

impl JsonObject {
    fn new(capacity: usize) -> JsonObject {
        let mut out = String::with_capacity(capacity);
        out.push('{');
        JsonObject { out, empty: true }
    }

    /// A member name: always one of this module's literals, none of which needs escaping (the
    /// writer's output is compared with serde_json's in the tests).
    fn key(&mut self, name: &'static str) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        self.out.push('"');
        self.out.push_str(name);
        self.out.push_str("\":");
    }

    fn str(&mut self, name: &'static str, value: &str) {
        self.key(name);
        escape_into(&mut self.out, value);
    }

    fn opt_str(&mut self, name: &'static str, value: Option<&str>) {
        match value {
            Some(value) => self.str(name, value),
            None => {
                self.key(name);
                self.out.push_str("null");
            }
        }
    }

    fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, the control characters as
/// `\b \t \n \f \r` or `\u00xx` (lower-case hex), everything else (all of UTF-8) as is.
fn escape_into(out: &mut String, value: &str) {
    out.push('"');
    // Claims, names and ids rarely need escaping: one scan, one copy.
    if !value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(value);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(value.get(start..i).unwrap_or_default());
        if escaped.is_empty() {
            out.push_str(&format!("\\u{byte:04x}"));
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(value.get(start..).unwrap_or_default());
    out.push('"');
}

/// Makes a claim value safe as a header value: printable ASCII, everything else (and `%`)
/// percent-encoded, so a claim can never inject a header line. A value that is safe already (the
/// usual case) is passed on as it is, without a copy.
pub fn header_safe(value: Cow<'_, str>) -> Cow<'_, str> {
    let safe = |b: u8| (0x20..0x7F).contains(&b) && b != b'%';
    if value.bytes().all(safe) {
        return value;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len() + 16);
    for b in value.bytes() {
        if safe(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0')));
            out.push(char::from(HEX.get(usize::from(b & 0xf)).copied().unwrap_or(b'0')));
        }
    }
    Cow::Owned(out)
}

/// The identity headers an allowed request carries upstream, all in [`IDENTITY_HEADER_PREFIX`].
pub const SUBJECT_HEADER: &str = "x-mcp-guard-subject";
pub const AGENT_HEADER: &str = "x-mcp-guard-agent";
pub const DELEGATION_HEADER: &str = "x-mcp-guard-delegation";
pub const ISSUER_HEADER: &str = "x-mcp-guard-issuer";
pub const SCOPES_HEADER: &str = "x-mcp-guard-scopes";
pub const BINDING_HEADER: &str = "x-mcp-guard-binding";
pub const KEY_HEADER: &str = "x-mcp-guard-key";
pub const TOOL_HEADER: &str = "x-mcp-guard-tool";

/// What the upstream must not see, and the verified identity it gets instead. Names and values
/// borrow from the request and the claims; only a joined list or a percent-encoded value is new.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits<'a> {
    /// Header names to remove: the credentials, and every client-sent header of our namespace.
    pub remove: Vec<&'a str>,
    pub set: Vec<(&'static str, Cow<'a, str>)>,
}

/// The header changes for an allowed request.
pub fn upstream_headers<'a>(
    config: &Config,
    head: &'a RequestHead,
    claims: &'a AccessClaims,
    possession: &'a Possession,
    messages: &'a [Message],
) -> HeaderEdits<'a> {
    let mut remove = Vec::new();
    if !config.forward_token {
        // MCP authorization spec: the server must not receive (or pass on) the client's token.
        // `head` holds every request header, so a credential header it lacks is not there to
        // remove (and each removal is a host call).
        for credential in ["authorization", "dpop"] {
            if head.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(credential)) {
                remove.push(credential);
            }
        }
    }
    // Client-sent identity headers of our namespace are removed whatever their case.
    remove.extend(
        head.headers
            .iter()
            .filter(|(k, _)| k.get(..IDENTITY_HEADER_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(IDENTITY_HEADER_PREFIX)))
            .map(|(k, _)| k.as_str()),
    );
    let mut set = Vec::with_capacity(8);
    let mut put = |name: &'static str, value: Cow<'a, str>| set.push((name, header_safe(value)));
    if let Some(sub) = &claims.subject {
        put(SUBJECT_HEADER, Cow::Borrowed(sub));
    }
    if let Some(agent) = &claims.client_id {
        put(AGENT_HEADER, Cow::Borrowed(agent));
    }
    let chain = delegation_names(claims);
    if !chain.is_empty() {
        put(DELEGATION_HEADER, Cow::Owned(chain.join(",")));
    }
    put(ISSUER_HEADER, Cow::Borrowed(&claims.issuer));
    put(SCOPES_HEADER, joined(claims.scopes.iter().map(String::as_str), " "));
    if let Some(binding) = binding_name(possession) {
        put(BINDING_HEADER, Cow::Borrowed(binding));
    }
    if let Some(key) = possession.dpop_jkt.as_ref().or(possession.mtls_x5t.as_ref()) {
        put(KEY_HEADER, Cow::Borrowed(key));
    }
    let mut tools = messages
        .iter()
        .filter_map(|m| match m {
            Message::Call { target: Target::Tool(name), .. } => Some(name.as_str()),
            _ => None,
        })
        .peekable();
    if tools.peek().is_some() {
        put(TOOL_HEADER, joined(tools, ","));
    }
    HeaderEdits { remove, set }
}

/// The items joined by `separator`; one item is borrowed as it is.
fn joined<'a>(mut items: impl Iterator<Item = &'a str>, separator: &str) -> Cow<'a, str> {
    let Some(first) = items.next() else {
        return Cow::Borrowed("");
    };
    let Some(second) = items.next() else {
        return Cow::Borrowed(first);
    };
    let mut out = String::with_capacity(first.len() + separator.len() + second.len());
    out.push_str(first);
    for item in std::iter::once(second).chain(items) {
        out.push_str(separator);
        out.push_str(item);
    }
    Cow::Owned(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn hostile() -> Vec<String> {
        let mut all_controls: String = (0u8..0x20).map(char::from).collect();
        all_controls.push('\u{7f}');
        vec![
            all_controls,
            "quote \" and backslash \\ and slash /".into(),
            "é, 日本, 🦀, U+2028 \u{2028}".into(),
            String::new(),
        ]
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for text in hostile() {
            let mut ours = String::new();
            escape_into(&mut ours, &text);
            assert_eq!(ours, serde_json::to_string(&text).unwrap());
        }
    }

    /// The direct writer and the `Value` events agree on every member, whatever the claims hold.
    #[test]
    fn the_json_writer_matches_the_value_events_for_hostile_claims() {
        use crate::binding::Scheme;
        use crate::guard::Allowed;
        use crate::mcp::RpcId;
        use crate::token::{Actor, Confirmation};
        for text in hostile() {
            let claims = AccessClaims {
                issuer: text.clone(),
                subject: Some(text.clone()),
                client_id: None,
                jti: Some(text.clone()),
                expires_at: 0,
                scopes: vec![text.clone()],
                cnf: Confirmation::default(),
                delegation: vec![
                    Actor { sub: Some(text.clone()), client_id: None, iss: Some(text.clone()) },
                    Actor { sub: None, client_id: Some("x".into()), iss: None },
                ],
                signing_key: String::new(),
            };
            let messages = [
                Message::Call { id: Some(RpcId("1.5e3".into())), method: text.clone(), target: Target::Tool(text.clone()) },
                Message::Call { id: None, method: "prompts/get".into(), target: Target::Prompt(text.clone()) },
                Message::Call { id: Some(RpcId("\"a\\u0001\"".into())), method: "resources/read".into(), target: Target::Resource(text.clone()) },
                Message::Response { id: RpcId("-7".into()) },
            ];
            let mut head = RequestHead { method: text.clone(), ..RequestHead::default() };
            head.headers.push(("x-request-id".into(), text.clone().into_bytes()));
            for possession in [
                Possession::default(),
                Possession { dpop_jkt: Some(text.clone()), mtls_x5t: Some("t".into()) },
            ] {
                for count in [0, 1, messages.len()] {
                    let allowed = Decision::Allow(Box::new(Allowed {
                        claims: std::sync::Arc::new(claims.clone()),
                        scheme: Scheme::Dpop,
                        possession: possession.clone(),
                        messages: messages[..count].to_vec(),
                        required_scopes: vec![text.clone(), "b".into()],
                    }));
                    let expected: Vec<String> = events(&head, &allowed, 42).iter().map(Value::to_string).collect();
                    assert_eq!(events_json(&head, &allowed, 42), expected);
                }
            }
        }
    }

    #[test]
    fn header_values_cannot_inject_lines() {
        let safe = |text: &str| header_safe(Cow::Borrowed(text)).into_owned();
        assert!(matches!(header_safe(Cow::Borrowed("alice")), Cow::Borrowed("alice")));
        assert_eq!(safe("a\r\nx-evil: 1"), "a%0D%0Ax-evil: 1");
        assert_eq!(safe("100%é"), "100%25%C3%A9");
        assert_eq!(safe("\u{7f}\u{0}~ "), "%7F%00~ ");
    }

    #[test]
    fn identity_headers_are_in_our_namespace() {
        let names =
            [SUBJECT_HEADER, AGENT_HEADER, DELEGATION_HEADER, ISSUER_HEADER, SCOPES_HEADER, BINDING_HEADER, KEY_HEADER, TOOL_HEADER];
        for name in names {
            assert!(name.starts_with(IDENTITY_HEADER_PREFIX), "{name}");
            assert_eq!(name, name.to_ascii_lowercase());
        }
    }

    #[test]
    fn joined_borrows_one_item_and_joins_more() {
        assert!(matches!(joined(["a"].into_iter(), ","), Cow::Borrowed("a")));
        assert_eq!(joined(["a", "b", "c"].into_iter(), ","), "a,b,c");
        assert_eq!(joined(std::iter::empty(), " "), "");
    }
}
