//! Behaviour that only the built module shows: bodies in chunks and with trailers, the token
//! cache against the clock, stats, and the message when the module is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mcp_guard_harness::Harness;
use mcp_guard_tests::{load_filter, send_wasm, tools_call, World, NOW};
use serde_json::{json, Value};

fn configured(w: &World) -> Harness {
    let mut h = load_filter();
    h.set_time(NOW);
    h.configure(&w.config(json!({})).to_string()).unwrap();
    h
}

#[test]
fn a_missing_module_says_how_to_build_it() {
    let err = Harness::load("/nonexistent/mcp_guard.wasm").err().expect("no module there");
    let text = err.to_string();
    assert!(text.contains("cargo build -p mcp-guard --target wasm32-wasip1 --release") || text.contains("make"), "{text}");
}

#[test]
fn a_body_in_one_byte_chunks_is_judged_whole() {
    let w = World::new();
    for (tool, scope, allowed) in [("get_forecast", "weather:read", true), ("delete_repo", "weather:read", false)] {
        let mut h = configured(&w);
        let req = w.call(tool, scope);
        let body = req.body.clone().unwrap();
        let mut b = h.request().method("POST").path("/mcp").authority("mcp.example.com").scheme("https");
        for (k, v) in &req.headers {
            b = b.header_bytes(k, v);
        }
        let outcome = b.chunks(body.iter().map(|byte| vec![*byte])).send().unwrap();
        match (allowed, &outcome) {
            (true, o) => {
                let f = o.as_forwarded().unwrap_or_else(|| panic!("{o:?}"));
                assert_eq!(f.request_body, body, "the upstream gets the whole body");
            }
            (false, o) => assert_eq!(o.as_local_reply().map(|r| r.status), Some(403), "{o:?}"),
        }
    }
}

#[test]
fn a_body_followed_by_trailers_is_still_checked() {
    let w = World::new();
    let mut h = configured(&w);
    let req = w.call("delete_repo", "weather:read");
    let mut b = h.request().method("POST").path("/mcp").authority("mcp.example.com").scheme("https");
    for (k, v) in &req.headers {
        b = b.header_bytes(k, v);
    }
    let outcome = b.body(req.body.clone().unwrap()).trailer("x-checksum", "abc").send().unwrap();
    assert_eq!(outcome.as_local_reply().map(|r| r.status), Some(403), "{outcome:?}");
}

#[test]
fn an_oversize_body_without_content_length_is_refused_while_buffering() {
    let w = World::new();
    let mut h = configured(&w); // max_body_bytes 4096 in the test config
    let req = w.call("get_forecast", "weather:read");
    let mut b = h.request().method("POST").path("/mcp").authority("mcp.example.com").scheme("https");
    for (k, v) in &req.headers {
        b = b.header_bytes(k, v);
    }
    let outcome = b.chunks((0..10).map(|_| vec![b' '; 1000])).send().unwrap();
    let reply = outcome.as_local_reply().unwrap_or_else(|| panic!("{outcome:?}"));
    assert_eq!(reply.status, 413);
}

#[test]
fn a_cached_token_is_not_served_past_exp() {
    let w = World::new();
    let mut h = configured(&w);
    let token = w.dpop_token("weather:read"); // exp = NOW + 600, skew 30
    let first = send_wasm(&mut h, &w.dpop_request("POST", "/mcp", &token).json(&tools_call(1, "get_forecast")));
    assert!(first.as_forwarded().is_some(), "{first:?}");
    let within = send_wasm(&mut h, &w.dpop_request_at("POST", "/mcp", &token, NOW + 620).json(&tools_call(2, "get_forecast")));
    assert!(within.as_forwarded().is_some(), "still valid within exp + skew: {within:?}");
    let req = w.dpop_request_at("POST", "/mcp", &token, NOW + 631).json(&tools_call(3, "get_forecast"));
    let outcome = send_wasm(&mut h, &req);
    let reply = outcome.as_local_reply().unwrap_or_else(|| panic!("expired token served: {outcome:?}"));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!((reply.status, body["error"]["data"]["reason"].as_str()), (401, Some("expired")));
}

#[test]
fn decisions_are_counted_in_stats() {
    let w = World::new();
    let mut h = configured(&w);
    send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    send_wasm(&mut h, &mcp_guard_tests::Req::new("POST", "/mcp").json(&tools_call(1, "get_forecast")));
    send_wasm(&mut h, &w.call("delete_repo", "weather:read"));
    assert_eq!(h.metric("mcp_guard.allowed"), Some(1));
    assert_eq!(h.metric("mcp_guard.denied"), Some(2));
    assert_eq!(h.metric("mcp_guard.denied.missing_token"), Some(1));
    assert_eq!(h.metric("mcp_guard.denied.insufficient_scope"), Some(1));
    // The audit lines go out together at the tick (audit.log_flush_ms, 1 s by default).
    h.elapse(std::time::Duration::from_secs(1)).unwrap();
    let text = h.log_text();
    assert!(text.contains(r#""decision":"deny""#) && text.contains(r#""reason":"insufficient_scope""#), "{text}");
}

#[test]
fn a_replay_is_caught_by_the_shared_cache_not_the_request() {
    let w = World::new();
    let mut h = configured(&w);
    let req = w.call("get_forecast", "weather:read");
    assert!(send_wasm(&mut h, &req).as_forwarded().is_some());
    // What the worker remembers lives in proxy-wasm shared data (visible to every worker).
    let proof = String::from_utf8(req.headers.iter().find(|(k, _)| k == "dpop").unwrap().1.clone()).unwrap();
    let jti_digest = {
        let claims = proof.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(&mcp_guard::jose::b64url_decode(claims).unwrap()).unwrap();
        mcp_guard::replay::ReplayCache::digest(&w.client.thumbprint(), claims["jti"].as_str().unwrap())
    };
    let bucket = u32::from_be_bytes([jti_digest[0], jti_digest[1], jti_digest[2], jti_digest[3]]) % (100_000 / 8);
    let stored = h.shared_data(&format!("mcp-guard/jti/12500/{bucket}")).expect("the proof is remembered in shared data");
    assert!(stored.0.windows(16).any(|win| win == jti_digest), "bucket holds the proof's digest");
    let again = send_wasm(&mut h, &req.clone().at(NOW + 2));
    assert_eq!(again.as_local_reply().map(|r| r.status), Some(401));
}
