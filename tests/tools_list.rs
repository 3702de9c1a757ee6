//! `tools/list` answers trimmed to the tools the caller's token may call, in both body forms of
//! the Streamable HTTP transport, with `content-length` kept right; an answer the filter cannot
//! read becomes a 502, never a half-edited pass-through.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mcp_guard_harness::{Harness, Outcome};
use mcp_guard_tests::{load_filter, Req, World, NOW};
use serde_json::{json, Value};

const TOOLS: &str = r#"{"jsonrpc":"2.0","id":5,"result":{"tools":[{"name":"get_forecast","inputSchema":{"type":"object"}},{"name":"delete_repo","inputSchema":{"type":"object"}},{"name":"rm_rf","inputSchema":{"type":"object"}}]}}"#;

fn configured(w: &World) -> Harness {
    let mut h = load_filter();
    h.set_time(NOW);
    h.configure(&w.config(json!({})).to_string()).unwrap();
    h
}

fn list_request(w: &World, scope: &str) -> Req {
    w.dpop_request("POST", "/mcp", &w.dpop_token(scope)).json(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}))
}

fn send(h: &mut Harness, req: &Req, content_type: &str, upstream_body: &str) -> Outcome {
    h.set_time(req.now);
    let mut b = h.request().method(&req.method).path(&req.path).authority("mcp.example.com").scheme("https");
    for (k, v) in &req.headers {
        b = b.header_bytes(k, v);
    }
    let body = req.body.clone().unwrap();
    b = b.header("content-length", &body.len().to_string()).body(body);
    let length = upstream_body.len().to_string();
    b.upstream_response(200, &[("content-type", content_type), ("content-length", &length)], upstream_body).send().unwrap()
}

fn names(v: &Value) -> Vec<&str> {
    v["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect()
}

#[test]
fn a_json_answer_lists_only_callable_tools() {
    let w = World::new();
    for (scope, expected) in [("weather:read", vec!["get_forecast"]), ("weather:read repo:admin", vec!["get_forecast", "delete_repo"]), ("", vec![])] {
        let mut h = configured(&w);
        let outcome = send(&mut h, &list_request(&w, scope), "application/json", TOOLS);
        let f = outcome.as_forwarded().unwrap_or_else(|| panic!("{outcome:?}"));
        let body: Value = serde_json::from_slice(&f.response.body).unwrap();
        assert_eq!(names(&body), expected, "scope {scope:?}");
        assert_eq!(f.response.header("content-length"), Some(f.response.body.len().to_string()), "content-length follows the edit");
    }
}

#[test]
fn an_event_stream_answer_is_trimmed_event_by_event() {
    let w = World::new();
    let mut h = configured(&w);
    let stream = format!("event: message\nid: 1\ndata: {TOOLS}\n\n");
    let outcome = send(&mut h, &list_request(&w, "weather:read"), "text/event-stream", &stream);
    let f = outcome.as_forwarded().unwrap_or_else(|| panic!("{outcome:?}"));
    let text = String::from_utf8(f.response.body.clone()).unwrap();
    assert!(text.starts_with("event: message\nid: 1\ndata: "), "{text}");
    let data: Value = serde_json::from_str(text.trim_end().split("data: ").nth(1).unwrap()).unwrap();
    assert_eq!(names(&data), vec!["get_forecast"]);
    assert_eq!(f.response.header("content-length"), Some(f.response.body.len().to_string()));
}

#[test]
fn an_unreadable_answer_is_a_502_with_a_record() {
    let w = World::new();
    let mut h = configured(&w);
    let outcome = send(&mut h, &list_request(&w, "weather:read"), "application/json", "{\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{\"tools\":");
    let reply = outcome.as_local_reply().unwrap_or_else(|| panic!("half-edited answer passed: {outcome:?}"));
    assert_eq!(reply.status, 502);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["data"]["reason"], "unreadable_tools_list");
    h.elapse(std::time::Duration::from_secs(1)).unwrap(); // the audit lines' tick
    assert!(h.log_text().contains("\"reason\":\"unreadable_tools_list\""), "{}", h.log_text());
}

#[test]
fn other_answers_pass_untouched() {
    let w = World::new();
    let mut h = configured(&w);
    // A tools/call answer that happens to contain a "tools" member is not a list.
    let req = w.call("get_forecast", "weather:read");
    let upstream = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm_rf"}]}}"#;
    let outcome = send(&mut h, &req, "application/json", upstream);
    assert_eq!(outcome.as_forwarded().unwrap().response.body, upstream.as_bytes());
}
