//! Bounded memory (issue 5), scaled down for `make test`: the built `.wasm` in the harness, one
//! VM, many distinct DPoP-bound tokens and a fresh proof (distinct `jti`) on every request, with
//! small caches. Once both caches are full (after a tenth of the run) the VM's linear memory
//! stays within 10%, the replay cache in shared data holds at most its configured entries, and
//! both caches evict their oldest entries. `make bench` runs the full-size version (1,000,000
//! requests over 100,000 tokens with the shipped cache sizes).

use mcp_guard::testkit::{ProofSpec, TestIssuer, TestKey};
use mcp_guard_harness::{Harness, Options, Outcome};
use mcp_guard_tests::{tools_call, wasm_path, NOW, PUBLIC_URL};
use serde_json::{json, Value};

/// The token cache per VM (`token_cache_entries`).
const TOKEN_CACHE: usize = 500;
/// The replay cache in shared data (`dpop.replay_cache_entries`): 125 buckets of 8 records.
const REPLAY_CACHE: u32 = 1_000;
const REQUESTS: usize = 10_000;
/// Consecutive requests per token: each token is verified once, then served from the cache.
const PER_TOKEN: usize = 2;
const TOKENS: usize = REQUESTS / PER_TOKEN;
/// After this many requests both caches are full: TOKEN_CACHE tokens and REPLAY_CACHE proofs seen.
const BASELINE: usize = REQUESTS / 10;

/// The replay cache's layout in shared data (filter/src/replay.rs): keys
/// `mcp-guard/jti/<buckets>/<n>`, records of 16 + 8 + 4 bytes.
const BUCKETS: u32 = REPLAY_CACHE.div_ceil(8);
const RECORD_BYTES: usize = 28;

fn config(issuer: &TestIssuer) -> String {
    json!({
        "issuer": issuer.issuer, "audience": issuer.audience, "jwks": issuer.jwks(),
        "binding": "dpop", "public_url": PUBLIC_URL,
        "token_cache_entries": TOKEN_CACHE,
        "dpop": {"algorithms": ["EdDSA"], "max_age_seconds": 300, "replay_cache_entries": REPLAY_CACHE},
        "policy": {"tools": {"get_forecast": ["weather:read"]}, "unlisted_tools": "deny"}
    })
    .to_string()
}

fn token(issuer: &TestIssuer, client: &TestKey, i: usize) -> String {
    let mut claims = issuer.claims(NOW, "weather:read");
    claims.insert("jti".into(), format!("at-{i}").into());
    claims.insert("exp".into(), (NOW + 3600).into());
    claims.insert("cnf".into(), json!({"jkt": client.thumbprint()}));
    issuer.token(&claims)
}

fn proof(client: &TestKey, token: &str) -> String {
    ProofSpec::new(client, "POST", PUBLIC_URL, NOW, token).sign(client)
}

fn send(h: &mut Harness, token: &str, proof: &str) -> Outcome {
    let body = tools_call(1, "get_forecast").to_string();
    h.request()
        .method("POST")
        .path("/mcp")
        .authority("mcp.example.com")
        .scheme("https")
        .header("authorization", &format!("DPoP {token}"))
        .header("dpop", proof)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("content-length", &body.len().to_string())
        .body(body)
        .upstream_response(200, &[("content-type", "application/json")], "{}")
        .send()
        .unwrap_or_else(|e| panic!("harness: {e}"))
}

fn forwarded(outcome: &Outcome, what: &str) {
    match outcome {
        Outcome::Forwarded(f) if f.response.status == 200 => {}
        Outcome::LocalReply(r) => panic!("{what}: refused {} {}", r.status, r.body_str()),
        other => panic!("{what}: {other}"),
    }
}

fn reason(outcome: &Outcome) -> Option<String> {
    let Outcome::LocalReply(r) = outcome else { return None };
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    v["error"]["data"]["reason"].as_str().map(str::to_string)
}

/// (bucket keys present, records in them) of the replay cache.
fn replay_cache_size(h: &Harness) -> (u32, usize) {
    (0..BUCKETS)
        .filter_map(|n| h.shared_data(&format!("mcp-guard/jti/{BUCKETS}/{n}")))
        .fold((0, 0), |(keys, records), (value, _)| (keys + 1, records + value.len() / RECORD_BYTES))
}

/// `count` items made by `make(i)` on two threads (debug-build signing is the slow part).
fn par<T: Send>(count: usize, make: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let half = count / 2;
    let make = &make;
    std::thread::scope(|s| {
        let first = s.spawn(move || (0..half).map(make).collect::<Vec<T>>());
        let mut second: Vec<T> = (half..count).map(make).collect();
        let mut out = first.join().unwrap_or_else(|_| panic!("signing thread failed"));
        out.append(&mut second);
        out
    })
}

#[test]
fn memory_and_caches_stay_bounded_over_many_tokens_and_proofs() {
    let issuer = TestIssuer::new(TestKey::ed25519());
    let client = TestKey::ed25519();
    let tokens = par(TOKENS + 1, |i| token(&issuer, &client, i));
    let proofs = par(REQUESTS, |i| proof(&client, &tokens[i / PER_TOKEN]));
    let never_seen = &tokens[TOKENS];

    let mut h = Harness::load_with(wasm_path(), Options { fuel: true, ..Options::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    h.set_time(NOW);
    h.configure(&config(&issuer)).unwrap_or_else(|e| panic!("configure: {e}"));

    let mut baseline_pages = 0;
    for (i, proof) in proofs.iter().enumerate() {
        let outcome = send(&mut h, &tokens[i / PER_TOKEN], proof);
        forwarded(&outcome, &format!("request {i}"));
        if i + 1 == BASELINE {
            baseline_pages = h.memory_pages();
        }
        if (i + 1) % 1000 == 0 {
            h.take_logs();
        }
    }
    let end_pages = h.memory_pages();
    let (keys, records) = replay_cache_size(&h);
    eprintln!(
        "{REQUESTS} requests over {TOKENS} tokens: VM pages {baseline_pages} after {BASELINE}, {end_pages} after {REQUESTS}; \
         replay cache {records} records in {keys} keys (bound {REPLAY_CACHE} in {BUCKETS})"
    );

    // The VM: within 10% of its size when the caches had just filled.
    assert!(baseline_pages > 0);
    assert!(
        end_pages * 10 <= baseline_pages * 11,
        "VM memory grew from {baseline_pages} pages after {BASELINE} requests to {end_pages} after {REQUESTS}"
    );

    // The replay cache: never more than its bound, and really in use (full).
    assert!(keys <= BUCKETS && records <= REPLAY_CACHE as usize, "{records} records in {keys} keys");
    assert!(records * 10 >= REPLAY_CACHE as usize * 9, "the replay cache holds only {records} records");
    assert!(h.shared_data(&format!("mcp-guard/jti/{BUCKETS}/{BUCKETS}")).is_none());

    // Newest proofs are remembered: replayed, they are refused.
    for i in REQUESTS - 10..REQUESTS {
        let outcome = send(&mut h, &tokens[i / PER_TOKEN], &proofs[i]);
        assert_eq!(reason(&outcome).as_deref(), Some("dpop_replay"), "proof {i} replayed");
    }
    // The oldest was evicted: a cache of REPLAY_CACHE entries cannot remember the first of REQUESTS
    // proofs (in a deployment `max_age_seconds` × request rate must stay under the cache size).
    forwarded(&send(&mut h, &tokens[0], &proofs[0]), "the first proof, evicted from the replay cache");

    // The token cache (in the VM): the newest token is served from it, a token never seen and the
    // oldest token (evicted) both cost a signature verification. Fuel is deterministic.
    let mut fuel_of = |token: &str, what: &str| {
        let before = h.fuel_consumed().unwrap_or(0);
        forwarded(&send(&mut h, token, &proof(&client, token)), what);
        h.fuel_consumed().unwrap_or(0) - before
    };
    let newest = fuel_of(&tokens[TOKENS - 1], "newest token");
    let unseen = fuel_of(never_seen, "a token never seen");
    let oldest = fuel_of(&tokens[1], "an old token");
    let verify = unseen.saturating_sub(newest);
    eprintln!("fuel per request: cached token {newest}, new token {unseen}, evicted token {oldest}");
    // With the issuer key's table (built once it has verified two tokens) an ES256 verification
    // is about 580k fuel; without it about 13M. A cache hit costs none of it.
    assert!(verify > 250_000, "a token verification costs only {verify} fuel?");
    assert!(oldest > newest + verify / 2, "the oldest token ({oldest} fuel) was still cached (cached: {newest}, new: {unseen})");
}
