//! Cost per request of the three hot paths of the built filter, in the harness: wasmtime fuel
//! (≈ wasm instructions, deterministic) and wall time (cranelift, a rough stand-in for V8).
//! A measurement, not a check: `#[ignore]`d, run it by hand:
//!
//! ```sh
//! make wasm
//! FUEL_N=300 cargo test -p mcp-guard-tests --test fuel_paths -- --ignored --nocapture
//! # several builds side by side: FUEL_WASM=a.wasm,b.wasm
//! ```

use std::path::PathBuf;
use std::time::Instant;

use mcp_guard::testkit::{ProofSpec, TestIssuer, TestKey};
use mcp_guard_harness::{Harness, Options, Outcome};
use serde_json::json;

const NOW: u64 = 1_800_000_000;
const URL: &str = "https://mcp.example.com/mcp";
const WARMUP: usize = 20;

fn config(issuer: &TestIssuer, binding: &str) -> String {
    json!({
        "issuer": issuer.issuer, "audience": issuer.audience, "jwks": issuer.jwks(),
        "binding": binding, "public_url": URL,
        "dpop": {"algorithms": ["ES256", "EdDSA"], "replay_cache_entries": 100_000},
        "policy": {"tools": {"get_forecast": ["weather:read"]}, "unlisted_tools": "deny"}
    })
    .to_string()
}

fn body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "get_forecast", "arguments": {"city": "Paris", "days": 3}}})
    .to_string()
}

fn send(h: &mut Harness, headers: &[(&str, String)]) -> Outcome {
    let body = body();
    let mut b = h.request().method("POST").path("/mcp").authority("mcp.example.com").scheme("https");
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("content-length", &body.len().to_string())
        .body(body)
        .upstream_response(200, &[("content-type", "application/json")], "{}")
        .send()
        .unwrap()
}

/// (fuel per request, µs per request without fuel metering)
fn measure(wasm: &PathBuf, issuer: &TestIssuer, binding: &str, requests: &[Vec<(&str, String)>]) -> (u64, f64) {
    let run = |fuel: bool| {
        let mut h = Harness::load_with(wasm, Options { fuel, ..Options::default() }).unwrap();
        h.set_time(NOW);
        h.configure(&config(issuer, binding)).unwrap();
        let (warm, measured) = requests.split_at(WARMUP);
        for r in warm {
            let outcome = send(&mut h, r);
            assert!(matches!(outcome, Outcome::Forwarded(_)), "{outcome}");
        }
        let before = h.fuel_consumed().unwrap_or(0);
        let started = Instant::now();
        for r in measured {
            let outcome = send(&mut h, r);
            assert!(matches!(outcome, Outcome::Forwarded(_)), "{outcome}");
        }
        let micros = started.elapsed().as_secs_f64() * 1e6 / measured.len() as f64;
        let fuel = h.fuel_consumed().unwrap_or(0).saturating_sub(before) / measured.len() as u64;
        (fuel, micros)
    };
    let (fuel, _) = run(true);
    // Wall time: best of three runs without metering.
    let micros = (0..3).map(|_| run(false).1).fold(f64::INFINITY, f64::min);
    (fuel, micros)
}

#[test]
#[ignore = "a measurement; run by hand with --ignored --nocapture"]
fn fuel_per_request() {
    let n: usize = std::env::var("FUEL_N").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let wasms: Vec<PathBuf> = match std::env::var("FUEL_WASM") {
        Ok(list) => list.split(',').map(PathBuf::from).collect(),
        Err(_) => vec![mcp_guard_tests::wasm_path()],
    };
    let issuer = TestIssuer::new(TestKey::es256());
    let es = TestKey::es256();
    let ed = TestKey::ed25519();
    let bearer = issuer.token(&issuer.claims(NOW, "weather:read"));
    let es_token = issuer.dpop_token(NOW, "weather:read", &es);
    let ed_token = issuer.dpop_token(NOW, "weather:read", &ed);
    let total = WARMUP + n;
    let proofs = |key: &TestKey, token: &str| -> Vec<Vec<(&str, String)>> {
        (0..total)
            .map(|_| {
                let proof = ProofSpec::new(key, "POST", URL, NOW, token).sign(key);
                vec![("authorization", format!("DPoP {token}")), ("dpop", proof)]
            })
            .collect()
    };
    let es_reqs = proofs(&es, &es_token);
    let ed_reqs = proofs(&ed, &ed_token);
    let bearer_reqs: Vec<Vec<(&str, String)>> = vec![vec![("authorization", format!("Bearer {bearer}"))]; total];
    println!("{n} requests per path after {WARMUP} warm-up; µs: wasmtime without fuel metering, best of 3");
    println!("{:<60} {:>9} {:>12} {:>8} {:>12} {:>8} {:>12} {:>8}", "wasm", "bytes", "ES256 fuel", "µs", "EdDSA fuel", "µs", "bearer fuel", "µs");
    for wasm in &wasms {
        let bytes = std::fs::metadata(wasm).map(|m| m.len()).unwrap_or(0);
        let (es_f, es_t) = measure(wasm, &issuer, "dpop", &es_reqs);
        let (ed_f, ed_t) = measure(wasm, &issuer, "dpop", &ed_reqs);
        let (b_f, b_t) = measure(wasm, &issuer, "bearer", &bearer_reqs);
        println!(
            "{:<60} {:>9} {:>12} {:>8.1} {:>12} {:>8.1} {:>12} {:>8.1}",
            wasm.display(), bytes, es_f, es_t, ed_f, ed_t, b_f, b_t
        );
    }
}
