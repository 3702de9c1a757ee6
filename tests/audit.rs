//! Three identities in every decision: the audit event's fields, the verified identity headers
//! the upstream gets instead of the caller's credentials, and stats by reason and tool.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use mcp_guard::audit::AUDIT_PREFIX;
use mcp_guard_harness::Harness;
use mcp_guard_tests::{load_filter, send_wasm, tools_call, Req, World, NOW};
use serde_json::{json, Value};

fn configured(w: &World, patch: Value) -> Harness {
    let mut h = load_filter();
    h.set_time(NOW);
    h.configure(&w.config(patch).to_string()).unwrap();
    h
}

/// The audit events written so far, once the waiting lines are out: they are written together,
/// at most `audit.log_flush_ms` (1 s by default) after their decisions.
fn audit_events(h: &mut Harness) -> Vec<Value> {
    h.elapse(Duration::from_millis(1000)).unwrap();
    written_events(h)
}

/// The audit events in the log now, without waiting (several lines may come in one log call).
fn written_events(h: &Harness) -> Vec<Value> {
    h.logs()
        .iter()
        .flat_map(|l| l.message.split('\n'))
        .filter_map(|line| line.strip_prefix(AUDIT_PREFIX))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect()
}

fn header(req: &Req, name: &str) -> String {
    String::from_utf8(req.headers.iter().find(|(k, _)| k == name).unwrap().1.clone()).unwrap()
}

/// A token acting for user-123 through three agents (RFC 8693 nested `act`).
fn delegated_token(w: &World, scope: &str) -> String {
    w.token_with(scope, |c| {
        c.insert("act".into(), json!({"sub": "agent-a", "act": {"sub": "agent-b", "client_id": "cb", "act": {"client_id": "agent-c"}}}));
    })
}

#[test]
fn the_upstream_gets_verified_identity_not_credentials() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    let token = delegated_token(&w, "weather:read");
    let req = w
        .dpop_request("POST", "/mcp", &token)
        .header("x-mcp-guard-subject", "admin")
        .header("X-MCP-Guard-Agent", "trusted-agent")
        .header("x-mcp-guard-scopes", "repo:admin")
        .json(&tools_call(1, "get_forecast"));
    let outcome = send_wasm(&mut h, &req);
    let f = outcome.as_forwarded().unwrap_or_else(|| panic!("{outcome:?}"));
    assert_eq!(f.header("authorization"), None, "no token passthrough");
    assert_eq!(f.header("dpop"), None, "no proof passthrough");
    assert_eq!(f.header("x-mcp-guard-subject").as_deref(), Some("user-123"), "spoofed subject replaced");
    assert_eq!(f.header("x-mcp-guard-agent").as_deref(), Some("agent-7"), "spoofed agent replaced");
    assert_eq!(f.header("x-mcp-guard-scopes").as_deref(), Some("weather:read"), "spoofed scopes replaced");
    assert_eq!(f.request_headers.get_all("x-mcp-guard-subject").len(), 1, "exactly one, the verified one");
    assert_eq!(f.header("x-mcp-guard-delegation").as_deref(), Some("agent-a,agent-b,agent-c"));
    assert_eq!(f.header("x-mcp-guard-tool").as_deref(), Some("get_forecast"));
    assert_eq!(f.header("x-mcp-guard-binding").as_deref(), Some("dpop"));
    assert_eq!(f.header("x-mcp-guard-key"), Some(w.client.thumbprint()));
    assert_eq!(f.header("x-mcp-guard-issuer").as_deref(), Some("https://auth.example.com"));
    assert_eq!(f.header("content-type").as_deref(), Some("application/json"), "other headers untouched");
}

#[test]
fn forward_token_keeps_the_credentials_but_still_replaces_identity() {
    let w = World::new();
    let mut h = configured(&w, json!({"forward_token": true}));
    let req = w.call("get_forecast", "weather:read").header("x-mcp-guard-subject", "admin");
    let outcome = send_wasm(&mut h, &req);
    let f = outcome.as_forwarded().unwrap();
    assert_eq!(f.header("authorization"), Some(header(&req, "authorization")));
    assert_eq!(f.header("dpop"), Some(header(&req, "dpop")));
    assert_eq!(f.header("x-mcp-guard-subject").as_deref(), Some("user-123"));
}

#[test]
fn an_allowed_call_is_recorded_with_every_field_and_no_secret() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    let token = delegated_token(&w, "weather:read");
    let req = w.dpop_request("POST", "/mcp", &token).header("x-request-id", "req-42").json(&tools_call(7, "get_forecast"));
    assert!(send_wasm(&mut h, &req).as_forwarded().is_some());
    let events = audit_events(&mut h);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["time"], json!(NOW));
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["reason"], "allowed");
    assert_eq!(e["method"], "tools/call");
    assert_eq!(e["tool"], "get_forecast");
    assert_eq!(e["rpc_id"], json!(7));
    assert_eq!(e["request_id"], "req-42");
    assert_eq!(e["sub"], "user-123");
    assert_eq!(e["agent"], "agent-7");
    assert_eq!(e["iss"], "https://auth.example.com");
    assert_eq!(e["token_jti"], json!(format!("at-{NOW}")));
    assert_eq!(e["binding"], "dpop");
    assert_eq!(e["jkt"], json!(w.client.thumbprint()));
    assert_eq!(e["scopes_required"], json!(["weather:read"]));
    let chain: Vec<_> = e["delegation"].as_array().unwrap().iter().map(|a| (a["sub"].clone(), a["client_id"].clone())).collect();
    assert_eq!(
        chain,
        vec![(json!("agent-a"), Value::Null), (json!("agent-b"), json!("cb")), (Value::Null, json!("agent-c"))],
        "three-level act chain, outermost first"
    );
    let all = h.log_text();
    let proof = header(&req, "dpop");
    for secret in [token.as_str(), proof.as_str(), token.rsplit('.').next().unwrap(), proof.rsplit('.').next().unwrap()] {
        assert!(!all.contains(secret), "a credential leaked into the logs");
    }
}

#[test]
fn refusals_are_recorded_with_status_reason_and_what_was_known() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    // Missing scope: identity known, tool known.
    send_wasm(&mut h, &w.call("delete_repo", "weather:read"));
    // No token: refused at the headers, before the body.
    send_wasm(&mut h, &Req::new("POST", "/mcp").json(&tools_call(1, "delete_repo")));
    // Replay.
    let req = w.call("get_forecast", "weather:read");
    send_wasm(&mut h, &req);
    send_wasm(&mut h, &req.clone().at(NOW + 1));
    let events = audit_events(&mut h);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!((events[0]["decision"].as_str(), events[0]["status"].as_u64(), events[0]["reason"].as_str()), (Some("deny"), Some(403), Some("insufficient_scope")));
    assert_eq!(events[0]["tool"], "delete_repo");
    assert_eq!(events[0]["sub"], "user-123");
    assert_eq!(events[0]["scopes_required"], json!(["repo:admin"]));
    // The proof's key was verified before the refusal: it is on record (binding and jkt).
    assert_eq!((events[0]["binding"].as_str(), events[0]["jkt"].clone()), (Some("dpop"), json!(w.client.thumbprint())));
    assert_eq!((events[1]["status"].as_u64(), events[1]["reason"].as_str()), (Some(401), Some("missing_token")));
    assert!(events[1].get("sub").is_none(), "no identity without a token");
    assert_eq!(events[3]["reason"], "dpop_replay");
    assert_eq!(events[3]["agent"], "agent-7", "the replayed token's agent is on record");
    assert_eq!(events[3]["jkt"], json!(w.client.thumbprint()), "and the key that signed the replayed proof");
}

#[test]
fn a_batch_is_recorded_per_element() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    let req = w
        .dpop_request("POST", "/mcp", &w.dpop_token("weather:read"))
        .json(&json!([tools_call(1, "get_forecast"), {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "file:///a"}}]));
    send_wasm(&mut h, &req);
    let events = audit_events(&mut h);
    assert_eq!(events.len(), 2);
    assert_eq!((events[0]["batch_index"].as_u64(), events[0]["tool"].as_str()), (Some(0), Some("get_forecast")));
    assert_eq!((events[1]["batch_index"].as_u64(), events[1]["resource"].as_str()), (Some(1), Some("file:///a")));
    assert!(events.iter().all(|e| e["reason"] == "insufficient_scope"), "one denial denies the batch");
}

#[test]
fn an_mtls_call_records_the_certificate_thumbprint() {
    let w = World::new();
    let mut h = configured(&w, json!({"binding": "mtls"}));
    let req = Req::new("POST", "/mcp")
        .header("authorization", &format!("Bearer {}", w.issuer.mtls_token(NOW, "weather:read", &w.cert_digest)))
        .json(&tools_call(1, "get_forecast"))
        .cert(&w.cert_digest);
    let outcome = send_wasm(&mut h, &req);
    let f = outcome.as_forwarded().unwrap_or_else(|| panic!("{outcome:?}"));
    let x5t = mcp_guard::testkit::x5t_s256(&w.cert_digest);
    assert_eq!(f.header("x-mcp-guard-binding").as_deref(), Some("mtls"));
    assert_eq!(f.header("x-mcp-guard-key"), Some(x5t.clone()));
    let e = &audit_events(&mut h)[0];
    assert_eq!((e["binding"].as_str(), e["x5t#S256"].as_str()), (Some("mtls"), Some(x5t.as_str())));
}

#[test]
fn stats_count_by_reason_and_by_listed_tool_only() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    send_wasm(&mut h, &w.call("delete_repo", "weather:read"));
    for i in 0..3 {
        send_wasm(&mut h, &w.call(&format!("made-up-{i}"), "weather:read"));
    }
    assert_eq!(h.metric("mcp_guard.tool.get_forecast.allowed"), Some(1));
    assert_eq!(h.metric("mcp_guard.tool.delete_repo.denied"), Some(1));
    assert_eq!(h.metric("mcp_guard.tool._unlisted.denied"), Some(3), "invented names share one stat");
    assert_eq!(h.metric("mcp_guard.tool.made-up-0.denied"), None);
    assert_eq!(h.metric("mcp_guard.denied.tool_not_allowed"), Some(3));
}

/// Sends one allowed call and one refused call; returns their outcomes.
fn allowed_and_refused(w: &World, h: &mut Harness) -> (mcp_guard_harness::Outcome, mcp_guard_harness::Outcome) {
    let allowed = send_wasm(h, &w.call("get_forecast", "weather:read"));
    let refused = send_wasm(h, &w.call("delete_repo", "weather:read"));
    assert!(allowed.as_forwarded().is_some(), "{allowed:?}");
    assert_eq!(refused.status(), Some(403));
    (allowed, refused)
}

#[test]
fn by_default_every_decision_is_logged_and_nothing_is_set_for_the_access_log() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    let (allowed, refused) = allowed_and_refused(&w, &mut h);
    assert_eq!(audit_events(&mut h).len(), 2, "one line per decision");
    assert!(allowed.as_forwarded().unwrap().filter_state.is_empty(), "{allowed:?}");
    assert!(refused.as_local_reply().unwrap().filter_state.is_empty(), "{refused:?}");
}

#[test]
fn fields_sets_each_fact_as_filter_state() {
    let w = World::new();
    let mut h = configured(&w, json!({"audit": {"filter_state": "fields"}}));
    let (allowed, refused) = allowed_and_refused(&w, &mut h);
    assert_eq!(audit_events(&mut h).len(), 2, "one line per decision");
    let f = allowed.as_forwarded().unwrap();
    assert_eq!(f.filter_state_str("mcp_guard_decision").as_deref(), Some("allow"));
    assert_eq!(f.filter_state_str("mcp_guard_sub").as_deref(), Some("user-123"));
    assert_eq!(f.filter_state_str("mcp_guard_agent").as_deref(), Some("agent-7"));
    assert_eq!(f.filter_state_str("mcp_guard_tool").as_deref(), Some("get_forecast"));
    assert_eq!(f.filter_state_str("mcp_guard_jkt"), Some(w.client.thumbprint()));
    assert!(!f.filter_state.contains_key("mcp_guard_audit"), "no whole record unless asked");
    let r = refused.as_local_reply().unwrap();
    assert_eq!(r.filter_state_str("mcp_guard_reason").as_deref(), Some("insufficient_scope"));
}

#[test]
fn audit_to_the_access_log_records_each_decision_once_and_logs_only_refusals() {
    let w = World::new();
    let mut logged = configured(&w, json!({}));
    allowed_and_refused(&w, &mut logged);
    let lines = audit_events(&mut logged);

    let mut h = configured(&w, json!({"audit": {"log": "denied", "filter_state": "record"}}));
    let (allowed, refused) = allowed_and_refused(&w, &mut h);
    let events = audit_events(&mut h);
    assert_eq!(events.len(), 1, "only the refusal has a log line: {events:?}");
    assert_eq!(events[0]["reason"], "insufficient_scope");
    let f = allowed.as_forwarded().unwrap();
    let record: Value = serde_json::from_str(&f.filter_state_str("mcp_guard_audit").unwrap()).unwrap();
    // The record is the log line's event, field for field (the same request and time).
    assert_eq!(record, lines[0]);
    assert!(!f.filter_state.contains_key("mcp_guard_decision"), "one value, not the fields");
    let r = refused.as_local_reply().unwrap();
    let record: Value = serde_json::from_str(&r.filter_state_str("mcp_guard_audit").unwrap()).unwrap();
    assert_eq!(record, lines[1]);
    assert_eq!((record["decision"].as_str(), record["status"].as_u64()), (Some("deny"), Some(403)));
}

#[test]
fn a_batch_record_is_an_array_of_its_events() {
    let w = World::new();
    let mut h = configured(&w, json!({"audit": {"filter_state": "record"}}));
    let req = w
        .dpop_request("POST", "/mcp", &w.dpop_token("weather:read"))
        .json(&json!([tools_call(1, "get_forecast"), tools_call(2, "get_forecast")]));
    let outcome = send_wasm(&mut h, &req);
    let f = outcome.as_forwarded().unwrap_or_else(|| panic!("{outcome:?}"));
    let record: Value = serde_json::from_str(&f.filter_state_str("mcp_guard_audit").unwrap()).unwrap();
    assert_eq!(Value::Array(audit_events(&mut h)), record);
    assert_eq!(record[1]["batch_index"], 1);
}

#[test]
fn audit_off_still_enforces_and_counts() {
    let w = World::new();
    let mut h = configured(&w, json!({"audit": {"log": "none", "filter_state": "none"}}));
    let (allowed, refused) = allowed_and_refused(&w, &mut h);
    assert!(audit_events(&mut h).is_empty());
    assert!(allowed.as_forwarded().unwrap().filter_state.is_empty());
    assert!(refused.as_local_reply().unwrap().filter_state.is_empty());
    assert_eq!(h.metric("mcp_guard.allowed"), Some(1));
    assert_eq!(h.metric("mcp_guard.denied.insufficient_scope"), Some(1));
    assert_eq!(
        allowed.as_forwarded().unwrap().header("x-mcp-guard-subject").as_deref(),
        Some("user-123"),
        "the upstream still gets the verified identity"
    );
}

/// Audit lines are gathered per worker and written in one log call: at the tick, at most
/// `audit.log_flush_ms` after the decision, or as soon as 16 KiB are waiting.
#[test]
fn audit_lines_are_written_together_at_most_log_flush_ms_late() {
    let w = World::new();
    let mut h = configured(&w, json!({"audit": {"log_flush_ms": 250}}));
    allowed_and_refused(&w, &mut h);
    assert!(written_events(&h).is_empty(), "waiting for the tick: {}", h.log_text());
    h.elapse(Duration::from_millis(249)).unwrap();
    assert!(written_events(&h).is_empty(), "not before log_flush_ms");
    h.elapse(Duration::from_millis(1)).unwrap();
    let events = written_events(&h);
    let decisions: Vec<_> = events.iter().map(|e| (e["decision"].as_str(), e["reason"].as_str())).collect();
    assert_eq!(decisions, vec![(Some("allow"), Some("allowed")), (Some("deny"), Some("insufficient_scope"))], "in order");
    let audit_calls = h.logs().iter().filter(|l| l.message.contains(AUDIT_PREFIX)).count();
    assert_eq!(audit_calls, 1, "both lines in one log call");
}

#[test]
fn a_full_audit_buffer_is_written_without_waiting() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    let mut sent = 0;
    // Refusals without a token: ~250 bytes of audit line each, past 16 KiB in 70.
    while sent < 200 {
        send_wasm(&mut h, &Req::new("POST", "/mcp").header("x-request-id", &format!("full-{sent}")).json(&tools_call(1, "get_forecast")));
        sent += 1;
    }
    let early = written_events(&h).len();
    assert!(early > 0 && early < sent, "the first 16 KiB went out before any tick ({early} of {sent})");
    let all = audit_events(&mut h);
    let ids: Vec<String> = all.iter().map(|e| e["request_id"].as_str().unwrap_or("").to_string()).collect();
    let expected: Vec<String> = (0..sent).map(|i| format!("full-{i}")).collect();
    assert_eq!(ids, expected, "every line once, in order, the rest at the tick");
}

#[test]
fn log_flush_ms_0_writes_each_line_as_it_is_decided() {
    let w = World::new();
    let mut h = configured(&w, json!({"audit": {"log_flush_ms": 0}}));
    send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    assert_eq!(written_events(&h).len(), 1, "no waiting");
    send_wasm(&mut h, &w.call("delete_repo", "weather:read"));
    assert_eq!(written_events(&h).len(), 2);
    let audit_calls = h.logs().iter().filter(|l| l.message.contains(AUDIT_PREFIX)).count();
    assert_eq!(audit_calls, 2, "a log call per line");
    assert_eq!(h.tick_period(), None, "no tick needed with inline keys and nothing to flush");
}

#[test]
fn a_new_configuration_first_writes_the_waiting_lines() {
    let w = World::new();
    let mut h = configured(&w, json!({}));
    allowed_and_refused(&w, &mut h);
    assert!(written_events(&h).is_empty());
    h.configure(&w.config(json!({"audit": {"log": "none"}})).to_string()).unwrap();
    assert_eq!(written_events(&h).len(), 2, "nothing lost to the change: {}", h.log_text());
}
