//! Keys from `jwks_uri`: fetched with `dispatch_http_call` through the named cluster, waited for
//! by early requests, refreshed on tick, refetched on an unknown `kid` (rate-limited), and a
//! failure is a 503 — never a pass and never a crashed VM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_guard::testkit::{TestIssuer, TestKey};
use mcp_guard_harness::{Harness, HttpCallReply, Outcome};
use mcp_guard_tests::{load_filter, send_wasm, tools_call, World, NOW};
use serde_json::{json, Value};

fn remote_config(w: &World, cluster: &str) -> String {
    let mut config = w.config(json!({"jwks_uri": {"cluster": cluster, "url": "https://auth.example.com/jwks", "refresh_seconds": 300, "timeout_ms": 2000}}));
    config.as_object_mut().unwrap().remove("jwks");
    config.to_string()
}

/// A JWKS endpoint the test can change: it serves whatever `keys` holds.
fn serve(h: &mut Harness, keys: &Arc<Mutex<Value>>) {
    let keys = Arc::clone(keys);
    h.on_http_call(move |_call| HttpCallReply::json(keys.lock().unwrap().to_string()));
}

/// A configured filter whose JWKS endpoint serves the key set the test holds (and may change).
fn with_served_keys(w: &World) -> (Harness, Arc<Mutex<Value>>) {
    let mut h = load_filter();
    h.add_cluster("authz").set_time(NOW);
    let keys = Arc::new(Mutex::new(w.issuer.jwks()));
    serve(&mut h, &keys);
    h.configure(&remote_config(w, "authz")).unwrap();
    (h, keys)
}

/// A configured filter whose JWKS fetch is held, unanswered, for the test to answer.
fn with_fetch_held(w: &World) -> Harness {
    let mut h = load_filter();
    h.add_cluster("authz").set_time(NOW);
    h.on_http_call(|_| HttpCallReply::Hold);
    h.configure(&remote_config(w, "authz")).unwrap();
    h
}

fn status(outcome: &Outcome) -> Option<u32> {
    outcome.as_local_reply().map(|r| r.status)
}

fn reason(outcome: &Outcome) -> String {
    let r = outcome.as_local_reply().expect("a local reply");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    body["error"]["data"]["reason"].as_str().unwrap().to_string()
}

#[test]
fn first_load_goes_through_the_cluster_and_tokens_then_verify() {
    let w = World::new();
    let (mut h, _keys) = with_served_keys(&w);

    let calls = h.http_calls().to_vec();
    assert_eq!(calls.len(), 1, "one fetch at configure");
    assert_eq!(calls[0].cluster, "authz");
    assert_eq!(calls[0].headers.get_str(":method").as_deref(), Some("GET"));
    assert_eq!(calls[0].headers.get_str(":path").as_deref(), Some("/jwks"));
    assert_eq!(calls[0].headers.get_str(":authority").as_deref(), Some("auth.example.com"));

    let outcome = send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    assert!(outcome.as_forwarded().is_some(), "{outcome:?}");
    assert_eq!(h.http_calls().len(), 1, "no fetch per request");
}

#[test]
fn a_request_before_the_keys_waits_for_them() {
    let w = World::new();
    let mut h = with_fetch_held(&w);

    let early = send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    assert!(early.is_pending(), "held until keys arrive: {early:?}");
    let second = send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    assert!(second.is_pending());
    let pending = h.pending_http_calls();
    assert_eq!(pending.len(), 1, "one fetch serves every waiting request");

    h.respond_http_call(pending[0].token, HttpCallReply::json(w.issuer.jwks().to_string())).unwrap();
    for outcome in [early, second] {
        let now = h.outcome(outcome.context_id()).unwrap();
        assert!(now.as_forwarded().is_some(), "resumed after the keys came: {now:?}");
    }
}

#[test]
fn keys_that_cannot_be_had_give_503_never_a_pass() {
    let failures: Vec<(&str, HttpCallReply)> = vec![
        ("reset (no healthy upstream)", HttpCallReply::Reset),
        ("timeout (504)", HttpCallReply::Timeout),
        ("server error", HttpCallReply::response(500, &[], "oops")),
        ("not a JWKS", HttpCallReply::json("{\"keys\": 5}")),
    ];
    for (name, failure) in failures {
        let w = World::new();
        let mut h = with_fetch_held(&w);
        let waiting = send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
        assert!(waiting.is_pending(), "{name}");
        let token = h.pending_http_calls()[0].token;
        h.respond_http_call(token, failure).unwrap();
        let outcome = h.outcome(waiting.context_id()).unwrap();
        assert_eq!(status(&outcome), Some(503), "{name}: {outcome:?}");
        assert_eq!(reason(&outcome), "keys_unavailable", "{name}");
        assert!(h.trap().is_none(), "{name}: the VM must survive: {:?}", h.trap());
        // Later requests are refused at once (503) until a retry succeeds; never forwarded.
        let later = send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
        assert_eq!(status(&later), Some(503), "{name}: {later:?}");
        assert_eq!(h.metric("mcp_guard.jwks_fetch_failed"), Some(1), "{name}");
    }
}

#[test]
fn a_retry_on_tick_recovers_after_a_failure() {
    let w = World::new();
    let mut h = load_filter();
    h.add_cluster("authz").set_time(NOW);
    let up = Arc::new(Mutex::new(false));
    let keys = w.issuer.jwks().to_string();
    let up2 = Arc::clone(&up);
    h.on_http_call(move |_| if *up2.lock().unwrap() { HttpCallReply::json(keys.clone()) } else { HttpCallReply::response(503, &[], "") });
    h.configure(&remote_config(&w, "authz")).unwrap();
    assert_eq!(status(&send_wasm(&mut h, &w.call("get_forecast", "weather:read"))), Some(503));
    *up.lock().unwrap() = true;
    h.elapse(Duration::from_secs(6)).unwrap();
    let outcome = send_wasm(&mut h, &w.call("get_forecast", "weather:read").at(NOW + 6));
    assert!(outcome.as_forwarded().is_some(), "{outcome:?}");
}

#[test]
fn a_fetch_that_never_answers_is_given_up_and_its_waiters_refused() {
    let w = World::new();
    let mut h = with_fetch_held(&w);
    let waiting = send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    assert!(waiting.is_pending());
    // The call's own timeout (2 s) answers 504 through the harness; either way it ends in 503.
    h.elapse(Duration::from_secs(6)).unwrap();
    let outcome = h.outcome(waiting.context_id()).unwrap();
    assert_eq!(status(&outcome), Some(503), "{outcome:?}");
}

#[test]
fn an_unknown_cluster_is_a_503_not_a_hang() {
    let w = World::new();
    let mut h = load_filter();
    h.set_time(NOW); // no cluster declared: dispatch fails with BadArgument, as in Envoy
    h.configure(&remote_config(&w, "nowhere")).unwrap();
    let outcome = send_wasm(&mut h, &w.call("get_forecast", "weather:read"));
    assert_eq!(status(&outcome), Some(503), "{outcome:?}");
    assert!(h.log_text().contains("cannot fetch JWKS through cluster \"nowhere\""), "{}", h.log_text());
}

#[test]
fn keys_are_refreshed_on_tick() {
    let w = World::new();
    let (mut h, keys) = with_served_keys(&w);
    assert_eq!(h.http_calls().len(), 1);

    // The issuer rotates to a new key under the same kid; the old key is gone.
    let rotated = TestIssuer::new(TestKey::es256());
    *keys.lock().unwrap() = rotated.jwks();
    h.elapse(Duration::from_secs(299)).unwrap();
    assert_eq!(h.http_calls().len(), 1, "not before refresh_seconds");
    h.elapse(Duration::from_secs(2)).unwrap();
    assert_eq!(h.http_calls().len(), 2, "refreshed after refresh_seconds");

    let t = NOW + 301;
    let token = rotated.dpop_token(t, "weather:read", &w.client);
    let new_ok = send_wasm(&mut h, &w.dpop_request_at("POST", "/mcp", &token, t).json(&tools_call(1, "get_forecast")));
    assert!(new_ok.as_forwarded().is_some(), "{new_ok:?}");
    // A token of the removed key is no longer accepted, even though it was never cached.
    let old_token = w.issuer.dpop_token(t, "weather:read", &w.client);
    let old = send_wasm(&mut h, &w.dpop_request_at("POST", "/mcp", &old_token, t).json(&tools_call(1, "get_forecast")));
    assert_eq!(status(&old), Some(401), "{old:?}");
}

#[test]
fn an_unknown_kid_triggers_one_refetch_per_30_seconds() {
    let w = World::new();
    let (mut h, keys) = with_served_keys(&w);

    // The issuer adds a key "k2" and signs with it.
    let mut k2 = TestIssuer::new(TestKey::es256());
    k2.kid = "k2".into();
    let both = json!({"keys": [w.issuer.key.jwks_entry("k1"), k2.key.jwks_entry("k2")]});
    *keys.lock().unwrap() = both;
    let token = k2.dpop_token(NOW, "weather:read", &w.client);
    let outcome = send_wasm(&mut h, &w.dpop_request("POST", "/mcp", &token).json(&tools_call(1, "get_forecast")));
    assert!(outcome.as_forwarded().is_some(), "refetched and accepted: {outcome:?}");
    assert_eq!(h.http_calls().len(), 2);

    // A flood of made-up kids within 30 s costs at most that one fetch.
    for i in 0..5 {
        let mut fake = TestIssuer::new(TestKey::es256());
        fake.kid = format!("made-up-{i}");
        let token = fake.dpop_token(NOW, "weather:read", &w.client);
        let refused = send_wasm(&mut h, &w.dpop_request("POST", "/mcp", &token).json(&tools_call(1, "get_forecast")).at(NOW + 5));
        assert_eq!(status(&refused), Some(401), "{refused:?}");
        assert_eq!(reason(&refused), "invalid_token");
    }
    assert_eq!(h.http_calls().len(), 2, "no refetch storm");

    // After 30 s another unknown kid may refetch again.
    h.set_time(NOW + 31);
    let mut k3 = TestIssuer::new(TestKey::es256());
    k3.kid = "k3".into();
    let token = k3.dpop_token(NOW + 31, "weather:read", &w.client);
    let _ = send_wasm(&mut h, &w.dpop_request_at("POST", "/mcp", &token, NOW + 31).json(&tools_call(1, "get_forecast")));
    assert_eq!(h.http_calls().len(), 3);
}
