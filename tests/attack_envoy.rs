//! Attacks on the filter's resource bounds in real Envoy, and fail-closed when the filter fails.
//!
//! The stack is that of `tests/e2e_envoy.rs`: Envoy 1.40 (from `.venv`) with the built
//! `mcp_guard.wasm`, the demo issuer (JWKS through the `authz` cluster) and the rmcp demo MCP
//! server, here behind a counter of the requests it receives. Every test ends by checking that
//! Envoy is still up (admin `/ready`), that `cluster.mcp_server.upstream_rq_total` and the
//! server's own count grew by exactly the number of requests meant to be allowed: no refused
//! request reached the server.
//!
//! - Floods: thousands of valid requests, each with a fresh DPoP proof (distinct `jti`), over
//!   several connections and two Envoy workers, with a 64-entry replay cache: all allowed; the
//!   cache holds only its 64 newest proofs (an old proof, evicted, is accepted again; the newest
//!   is refused as a replay); Envoy's memory after N requests is within 20 % of that after N/10.
//!   Thousands of forged tokens (unknown `kid`s, bad signatures): all 401, memory flat, and the
//!   JWKS is refetched at most once per 30 s per worker. The short floods run in `make test`; the
//!   long ones (`#[ignore]`) in `make attack`.
//! - Bodies: 1-byte chunks (HTTP/1.1 chunked), slow bodies written over seconds, a body abandoned
//!   half way, HTTP/2 with request trailers and 1-byte DATA frames: judged whole, refused or
//!   allowed exactly as when sent at once.
//! - Headers at Envoy's `max_request_headers_kb`: under it the filter refuses, over it Envoy does.
//! - Fail closed: every Envoy configuration we ship sets `failure_policy: FAIL_CLOSED`; a plugin
//!   configuration the filter refuses keeps Envoy from starting; a VM that traps (a test-only build
//!   of the filter, feature `trap-for-tests`) fails its request and every later one with 503,
//!   unless `FAIL_RELOAD` starts a fresh, equally strict VM.
//!
//! Memory is measured on a real process: admin `/memory` gives tcmalloc's allocated bytes (where
//! proxy-wasm shared data, so the replay cache, lives) and `/proc/<pid>/status` the `VmRSS` (V8
//! heaps and Wasm memory included). Two checks after warm-up (N/10 requests) against after N: both
//! within 20 % (generous, for a real process), and allocated bytes within 16 bytes a request plus
//! 128 KiB (measured: 6 to 42 KB with the 64-entry cache; a cache that keeps every proof grows
//! by ~80 bytes a proof, 250 KB over the short flood and 1.5 MB over the long one, which the
//! contrast tests show).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mcp_guard::jose::{b64url_encode, sha256};
use mcp_guard_demo::agent::{Agent, AgentConfig, RawAnswer, RawRequest};
use mcp_guard_demo::dpop::Holder;
use mcp_guard_demo::envoy::{self, Envoy, Ready, Spec};
use mcp_guard_demo::issuer::{self, Issuer};
use mcp_guard_demo::{weather, Error};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_BODY_BYTES: usize = 16 * 1024;
/// The smallest replay cache the filter accepts: 8 buckets of 8.
const REPLAY_CACHE_ENTRIES: u64 = 64;
const PROTOCOL_VERSION: &str = "2025-06-18";
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"attack","version":"1"}}}"#;
/// Envoy's default `max_request_headers_kb` (we leave it at the default, as the shipped configs do).
const MAX_REQUEST_HEADERS_BYTES: usize = 60 * 1024;

fn must<T>(result: Result<T, Error>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn tool_call(id: u64, tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"station": "KSEA"}}})
        .to_string()
}

/// How to start a stack.
struct Options {
    name: &'static str,
    wasm: PathBuf,
    /// Envoy worker threads.
    concurrency: u32,
    /// `failure_policy` of the Wasm filter.
    failure_policy: &'static str,
    /// Members replacing those of the plugin configuration.
    plugin_patch: Value,
    ready: Ready,
}

impl Options {
    fn new(name: &'static str) -> Options {
        Options {
            name,
            wasm: must(envoy::filter_wasm(), "the filter"),
            concurrency: 2,
            failure_policy: "FAIL_CLOSED",
            plugin_patch: json!({}),
            ready: Ready::KeysLoaded,
        }
    }
}

/// The demo issuer, the demo MCP server (counting what reaches it) and Envoy with the filter.
struct Stack {
    issuer: Arc<Issuer>,
    issuer_url: String,
    mcp_url: String,
    envoy: Envoy,
    /// Requests the MCP server has received.
    seen: Arc<AtomicU64>,
}

fn plugin_config(issuer_url: &str, public_url: &str, patch: &Value) -> Value {
    let mut config = json!({
        "issuer": issuer_url,
        "audience": public_url,
        "jwks_uri": {"cluster": "authz", "url": format!("{issuer_url}/jwks"), "refresh_seconds": 300},
        "binding": "dpop",
        "public_url": public_url,
        "dpop": {"algorithms": ["ES256", "EdDSA"], "max_age_seconds": 60, "clock_skew_seconds": 5,
                 "replay_cache_entries": REPLAY_CACHE_ENTRIES},
        "resource_metadata": {"authorization_servers": [issuer_url]},
        "max_body_bytes": MAX_BODY_BYTES,
        "policy": {
            "tools": {
                "get_forecast": ["weather:read"],
                "post_alert": ["alerts:write"],
                "decommission_station": ["stations:admin", "alerts:write"]
            },
            "unlisted_tools": "deny"
        }
    });
    if let Value::Object(patch) = patch {
        for (k, v) in patch {
            config[k] = v.clone();
        }
    }
    config
}

/// The demo MCP server behind a counter of the requests it receives.
async fn counting_mcp_server(listener: tokio::net::TcpListener, seen: Arc<AtomicU64>) {
    let mcp = hyper_util::service::TowerToHyperService::new(weather::service());
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let mcp = mcp.clone();
        async move { hyper::service::Service::call(&mcp, request).await }
    });
    mcp_guard_demo::net::serve(listener, service).await
}

impl Stack {
    async fn start(options: &Options) -> Stack {
        must(envoy::binary(), "Envoy");
        // Envoy's port is picked free and released before Envoy binds it: retry if it was taken.
        let mut attempt = 1;
        loop {
            match Stack::try_start(options).await {
                Ok(stack) => return stack,
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => attempt += 1,
                Err(e) => panic!("starting Envoy: {e}"),
            }
        }
    }

    async fn try_start(options: &Options) -> Result<Stack, Error> {
        let issuer_listener = mcp_guard_demo::net::bind("127.0.0.1:0".parse().unwrap()).await?;
        let mcp_listener = mcp_guard_demo::net::bind("127.0.0.1:0".parse().unwrap()).await?;
        let authz = issuer_listener.local_addr().unwrap();
        let mcp_server = mcp_listener.local_addr().unwrap();
        let listen_port = envoy::free_port()?;
        let mcp_url = format!("http://127.0.0.1:{listen_port}/mcp");
        let issuer_url = format!("http://{authz}");
        let issuer = Arc::new(Issuer::new(&issuer_url, &mcp_url));
        let seen = Arc::new(AtomicU64::new(0));
        // Both serve until the test's runtime ends.
        tokio::spawn(issuer::serve(issuer_listener, Arc::clone(&issuer)));
        tokio::spawn(counting_mcp_server(mcp_listener, Arc::clone(&seen)));
        let spec = Spec {
            name: format!("attack-{}", options.name),
            wasm: options.wasm.clone(),
            plugin_config: plugin_config(&issuer_url, &mcp_url, &options.plugin_patch),
            listen_port,
            tls: None,
            mcp_server,
            authz,
            concurrency: options.concurrency,
        };
        let mut bootstrap = spec.bootstrap();
        let hcm = &mut bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        hcm["http_filters"][0]["typed_config"]["config"]["failure_policy"] = json!(options.failure_policy);
        let dir = envoy::work_dir(&spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
        let config = dir.join("envoy.json");
        std::fs::write(&config, serde_json::to_string_pretty(&bootstrap).unwrap())
            .map_err(|e| Error::msg(format!("{}: {e}", config.display())))?;
        let envoy = Envoy::start_with_config(&dir, &config, listen_port, options.concurrency, options.ready).await?;
        Ok(Stack { issuer, issuer_url, mcp_url, envoy, seen })
    }

    fn agent(&self) -> Arc<Agent> {
        let config = AgentConfig {
            mcp_url: self.mcp_url.clone(),
            htu: self.mcp_url.clone(),
            issuer_url: self.issuer_url.clone(),
        };
        // EdDSA: the cheapest proofs to sign, for floods.
        Arc::new(must(Agent::new(config, true), "agent"))
    }

    async fn counter(&self, name: &str) -> u64 {
        must(self.envoy.counter(name).await, "admin stats")
    }

    /// What reached the MCP server so far: Envoy's count and the server's own.
    async fn upstream(&self) -> (u64, u64) {
        (self.counter("cluster.mcp_server.upstream_rq_total").await, self.seen.load(Ordering::SeqCst))
    }

    /// Envoy is still serving, and exactly `allowed` requests reached the server since `before`.
    async fn assert_up_and_forwarded(&mut self, before: (u64, u64), allowed: u64, what: &str) {
        assert!(self.envoy.is_running(), "{what}: Envoy exited\n{}", self.envoy.log_tail(30));
        let (status, _) = must(self.envoy.admin("/ready").await, "admin /ready");
        assert_eq!(status, 200, "{what}: Envoy is not ready");
        let after = self.upstream().await;
        assert_eq!(after.0 - before.0, allowed, "{what}: cluster.mcp_server.upstream_rq_total grew by {}", after.0 - before.0);
        assert_eq!(after.1 - before.1, allowed, "{what}: the MCP server received {} requests", after.1 - before.1);
    }

    /// Envoy's memory: tcmalloc's allocated bytes (admin `/memory`) and the process's `VmRSS`.
    async fn memory(&self) -> Memory {
        let (_, body) = must(self.envoy.admin("/memory").await, "admin /memory");
        let memory: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/memory: {e}: {body}"));
        let number = |v: &Value| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.envoy.pid())).unwrap_or_default();
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Memory { allocated: number(&memory["allocated"]), rss: rss_kb * 1024 }
    }

    /// Opens an MCP session through Envoy (2 allowed requests): its `Mcp-Session-Id`.
    async fn session(&self, agent: &Agent, holder: &Holder) -> String {
        let answer = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(holder)).await, "initialize");
        assert_eq!(answer.status, 200, "initialize: {}", answer.body);
        let session = answer.headers.get("mcp-session-id").expect("Mcp-Session-Id").to_str().unwrap().to_string();
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let answer = must(agent.send_raw(&in_session(RawRequest::post(initialized), &session).signed(holder)).await, "initialized");
        assert!(answer.status == 202 || answer.status == 200, "notifications/initialized: {} {}", answer.status, answer.body);
        session
    }
}

fn in_session(request: RawRequest, session: &str) -> RawRequest {
    request.header("mcp-session-id", session).header("mcp-protocol-version", PROTOCOL_VERSION)
}

#[derive(Debug, Clone, Copy)]
struct Memory {
    allocated: u64,
    rss: u64,
}

/// `later` is within `margin` of `earlier` (only growth counts).
fn assert_flat(earlier: Memory, later: Memory, margin: f64, what: &str) {
    for (name, a, b) in [("allocated", earlier.allocated, later.allocated), ("VmRSS", earlier.rss, later.rss)] {
        assert!(a > 0, "{what}: no {name} figure");
        let limit = (a as f64 * (1.0 + margin)) as u64;
        assert!(b <= limit, "{what}: Envoy's {name} grew from {a} to {b} bytes (more than {:.0} %)", margin * 100.0);
    }
    eprintln!(
        "{what}: allocated {} -> {} bytes, VmRSS {} -> {} bytes",
        earlier.allocated, later.allocated, earlier.rss, later.rss
    );
}

/// How much Envoy's allocated bytes may grow over `requests` requests once warm: 16 bytes a
/// request (a replay-cache record alone is 28) plus 128 KiB for buffers in flight. Measured with
/// a 64-entry cache: 6 to 32 KiB over 1,800 requests, 42 KiB over 18,000; with a 100,000-entry
/// cache (every proof kept): 250 KiB and 1.5 MiB.
fn growth_bound(requests: u64) -> u64 {
    16 * requests + 128 * 1024
}

type MakeRequest = Arc<dyn Fn(u64) -> RawRequest + Send + Sync>;
type CheckAnswer = Arc<dyn Fn(u64, &RawAnswer) + Send + Sync>;

/// Sends the requests `make(i)` for `i` in `range` over `connections` concurrent connections,
/// and `check`s every answer.
async fn flood(agent: &Arc<Agent>, range: std::ops::Range<u64>, connections: u64, make: &MakeRequest, check: &CheckAnswer) {
    let mut tasks = Vec::new();
    for lane in 0..connections {
        let (agent, make, check) = (Arc::clone(agent), Arc::clone(make), Arc::clone(check));
        let range = range.clone();
        tasks.push(tokio::spawn(async move {
            for i in range.filter(|i| i % connections == lane) {
                let answer = must(agent.send_raw(&make(i)).await, &format!("request {i}"));
                check(i, &answer);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap_or_else(|e| panic!("a flood connection failed: {e}"));
    }
}

/// The valid flood: `total` tool calls, each with a fresh proof, with a replay cache of
/// `cache_entries`; then what the cache remembers.
async fn valid_flood(name: &'static str, total: u64, cache_entries: u64) {
    const CONNECTIONS: u64 = 8;
    // Proofs sent after the one checked for eviction: far more than a 64-entry cache holds.
    let tail = 1000.min(total / 2);
    let warm = total / 10;
    let mut options = Options::new(name);
    options.plugin_patch = json!({"dpop": {"algorithms": ["ES256", "EdDSA"], "max_age_seconds": 60,
                                           "clock_skew_seconds": 5, "replay_cache_entries": cache_entries}});
    let mut stack = Stack::start(&options).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let before = stack.upstream().await;
    let allowed_before = stack.counter("wasmcustom.mcp_guard.allowed").await;
    let session = stack.session(&agent, &holder).await;

    let call = {
        let (holder, session) = (Arc::clone(&holder), session.clone());
        Arc::new(move |i: u64| in_session(RawRequest::post(tool_call(i, "get_forecast")), &session).signed(&holder))
            as MakeRequest
    };
    let check: CheckAnswer = Arc::new(|i, answer| {
        assert_eq!(answer.status, 200, "request {i}: {}", answer.body);
        assert!(answer.body.contains("Forecast for KSEA"), "request {i}: {}", answer.body);
    });
    let started = Instant::now();
    flood(&agent, 0..warm, CONNECTIONS, &call, &check).await;
    let after_warm = stack.memory().await;
    flood(&agent, warm..total - tail, CONNECTIONS, &call, &check).await;

    // A proof we keep, then `tail` more.
    let old = call(total);
    let first = must(agent.send_raw(&old).await, "the proof kept");
    assert_eq!(first.status, 200, "{}", first.body);
    flood(&agent, total - tail..total, CONNECTIONS, &call, &check).await;
    let newest = call(total + 1);
    let answer = must(agent.send_raw(&newest).await, "the newest proof");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let after_all = stack.memory().await;
    let elapsed = started.elapsed().as_secs_f64();

    // The newest proof is remembered (whichever worker sees the replay: the cache is shared).
    let replay = must(agent.send_raw(&newest).await, "replay of the newest proof");
    assert_eq!((replay.status, replay.reason().as_deref()), (401, Some("dpop_replay")), "{}", replay.body);
    // The old one, still within max_age_seconds: a cache of 64 (8 buckets of 8) has evicted it
    // after `tail` newer proofs and accepts it again: the cache holds its newest entries,
    // whatever the flood; that is the price of the bound (size replay_cache_entries above the
    // proofs an endpoint sees within max_age_seconds). A cache sized for the flood still has it.
    let again = must(agent.send_raw(&old).await, "replay of the old proof");
    let evicted = cache_entries < tail;
    let mut allowed = 2 + total + 2; // initialize, initialized, the flood, the kept and the newest proof
    if evicted {
        assert_eq!(again.status, 200, "an evicted proof: {}", again.body);
        allowed += 1;
    } else {
        assert_eq!((again.status, again.reason().as_deref()), (401, Some("dpop_replay")), "{}", again.body);
    }
    let replays = if evicted { 1 } else { 2 };
    eprintln!("{total} fresh proofs in {elapsed:.1} s ({:.0}/s), replay cache of {cache_entries}", total as f64 / elapsed);
    let what = format!("{total} fresh proofs, cache of {cache_entries}");
    let growth_bound = growth_bound(total - warm);
    if cache_entries <= REPLAY_CACHE_ENTRIES {
        assert_flat(after_warm, after_all, 0.20, &what);
        assert!(
            after_all.allocated <= after_warm.allocated + growth_bound,
            "{what}: allocated grew by {} bytes (bound {growth_bound})",
            after_all.allocated.saturating_sub(after_warm.allocated)
        );
    } else {
        eprintln!(
            "{what} (not bounded by the flood): allocated {} -> {} bytes (+{}, bound for a bounded cache {growth_bound}), VmRSS {} -> {} bytes",
            after_warm.allocated,
            after_all.allocated,
            after_all.allocated.saturating_sub(after_warm.allocated),
            after_warm.rss,
            after_all.rss
        );
        if total >= 10_000 {
            // The measurement sees what a cache that keeps every proof costs (~80 bytes each).
            assert!(after_all.allocated > after_warm.allocated + growth_bound, "{what}: no growth measured");
        }
    }
    assert_eq!(stack.counter("wasmcustom.mcp_guard.allowed").await - allowed_before, allowed);
    assert_eq!(stack.counter("wasmcustom.mcp_guard.denied.dpop_replay").await, replays);
    stack.assert_up_and_forwarded(before, allowed, "valid flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_fresh_proofs_is_allowed_and_the_replay_cache_stays_bounded() {
    valid_flood("valid-flood", 2_000, REPLAY_CACHE_ENTRIES).await;
}

/// The contrast: the same flood with the default cache (100000 entries) remembers the old proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_cache_sized_for_the_flood_remembers_every_proof() {
    valid_flood("valid-flood-large-cache", 2_000, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes: make attack"]
async fn a_long_flood_of_fresh_proofs_is_allowed_and_the_replay_cache_stays_bounded() {
    valid_flood("valid-flood-long", 20_000, REPLAY_CACHE_ENTRIES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes: make attack"]
async fn a_long_flood_with_a_large_replay_cache() {
    valid_flood("valid-flood-long-large-cache", 20_000, 100_000).await;
}

/// A JWS that looks like the issuer's access token but is signed by nobody: `kid` as given,
/// a random 64-byte signature.
fn forged_token(issuer: &str, audience: &str, kid: &str, jkt: &str, n: u64) -> String {
    let now = mcp_guard_demo::now_seconds();
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
    let claims = json!({
        "iss": issuer, "aud": audience, "sub": "mallory", "scope": "weather:read",
        "iat": now, "exp": now + 600, "jti": format!("forged-{n}"), "cnf": {"jkt": jkt}
    });
    let mut signature = sha256(format!("sig-a-{n}").as_bytes()).to_vec();
    signature.extend_from_slice(&sha256(format!("sig-b-{n}").as_bytes()));
    format!(
        "{}.{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(claims.to_string().as_bytes()),
        b64url_encode(&signature)
    )
}

/// `total` forged tokens, half with unknown `kid`s (each one a refetch candidate), half with the
/// issuer's `kid` and a bad signature.
async fn invalid_flood(name: &'static str, total: u64) {
    const CONNECTIONS: u64 = 8;
    let options = Options::new(name);
    let workers = u64::from(options.concurrency);
    let mut stack = Stack::start(&options).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let before = stack.upstream().await;
    let fetches_before = stack.counter("cluster.authz.upstream_rq_total").await;
    let warm = total / 10;

    let make: MakeRequest = {
        let (issuer, audience, kid, jkt) = (stack.issuer_url.clone(), stack.mcp_url.clone(), stack.issuer.kid(), agent.jkt());
        // A well-formed proof: the token is checked first, and fails.
        let proof = holder.proof("POST");
        Arc::new(move |i: u64| {
            let kid = if i.is_multiple_of(2) { b64url_encode(&sha256(format!("kid-{i}").as_bytes())) } else { kid.clone() };
            RawRequest::post(tool_call(i, "get_forecast"))
                .header("authorization", &format!("DPoP {}", forged_token(&issuer, &audience, &kid, &jkt, i)))
                .header("dpop", &proof)
        })
    };
    let check: CheckAnswer = Arc::new(|i, answer| {
        assert_eq!((answer.status, answer.reason().as_deref()), (401, Some("invalid_token")), "forged token {i}: {}", answer.body);
    });
    let started = Instant::now();
    flood(&agent, 0..warm, CONNECTIONS, &make, &check).await;
    let after_warm = stack.memory().await;
    flood(&agent, warm..total, CONNECTIONS, &make, &check).await;
    let elapsed = started.elapsed().as_secs();
    let after_all = stack.memory().await;

    // Unknown kids made the filter refetch, but at most once per 30 s on each worker. (The
    // filter's clock counts whole seconds: two refetches may be 29.x s apart in real time.)
    let fetches = stack.counter("cluster.authz.upstream_rq_total").await - fetches_before;
    let bound = workers * (1 + (elapsed + 2) / 30);
    eprintln!("{total} forged tokens in {elapsed} s: {fetches} JWKS fetches (bound {bound})");
    assert!(fetches >= 1, "no unknown-kid refetch at all");
    assert!(fetches <= bound, "{fetches} JWKS fetches for {total} forged tokens in {elapsed} s (bound {bound})");
    assert_flat(after_warm, after_all, 0.20, &format!("{total} forged tokens"));
    let bound = growth_bound(total - warm);
    assert!(
        after_all.allocated <= after_warm.allocated + bound,
        "{total} forged tokens: allocated grew by {} bytes (bound {bound})",
        after_all.allocated.saturating_sub(after_warm.allocated)
    );
    assert_eq!(stack.counter("wasmcustom.mcp_guard.denied.invalid_token").await, total);

    // The keys are still there: a valid request passes.
    let ok = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(&holder)).await, "valid request");
    assert_eq!(ok.status, 200, "{}", ok.body);
    stack.assert_up_and_forwarded(before, 1, "forged-token flood").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_tokens_is_refused_without_growth_or_a_refetch_storm() {
    invalid_flood("invalid-flood", 4_000).await;
}

/// Long enough (about a minute or more) for the 30-s refetch limit to open again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes: make attack"]
async fn a_long_flood_of_forged_tokens_is_refused_without_growth_or_a_refetch_storm() {
    invalid_flood("invalid-flood-long", 150_000).await;
}

/// An HTTP/1.1 answer read off a raw connection.
#[derive(Debug)]
struct RawHttp {
    status: u16,
    body: Vec<u8>,
}

impl RawHttp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn reason(&self) -> Option<String> {
        let body: Value = serde_json::from_slice(&self.body).ok()?;
        body.pointer("/error/data/reason").and_then(Value::as_str).map(str::to_string)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or up to the close).
async fn read_response(stream: &mut TcpStream) -> Result<RawHttp, String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        if !fill(stream, &mut buf).await? {
            return Err(format!("connection closed before a response ({} bytes)", buf.len()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let body = if let Some(length) = get("content-length") {
        let length: usize = length.parse().map_err(|_| "content-length".to_string())?;
        while rest.len() < length {
            if !fill(stream, &mut rest).await? {
                return Err("connection closed inside the body".into());
            }
        }
        rest.truncate(length);
        rest
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(&rest, b"\r\n") {
                    break at;
                }
                if !fill(stream, &mut rest).await? {
                    return Err("connection closed inside a chunk".into());
                }
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("chunk size {size_text:?}"))?;
            rest.drain(..line_end + 2);
            if size == 0 {
                break;
            }
            while rest.len() < size + 2 {
                if !fill(stream, &mut rest).await? {
                    return Err("connection closed inside a chunk".into());
                }
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        body
    } else {
        while fill(stream, &mut rest).await? {}
        rest
    };
    Ok(RawHttp { status, body })
}

/// How a raw HTTP/1.1 request sends its body.
enum Sending {
    /// `Transfer-Encoding: chunked`, one byte per chunk, `pause` between chunks.
    OneByteChunks { pause: Duration },
    /// `Content-Length`, written in `pieces` parts with `pause` between them.
    Slowly { pieces: usize, pause: Duration },
    /// `Content-Length`, but only the first half is written; then the client goes away.
    Abandoned,
}

/// A POST to `/mcp` over a raw connection, the body sent as `sending` says.
async fn raw_post(port: u16, headers: &[(String, String)], body: &[u8], sending: Sending) -> Result<Option<RawHttp>, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    let mut head = format!("POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match sending {
        Sending::OneByteChunks { .. } => head.push_str("transfer-encoding: chunked\r\n\r\n"),
        Sending::Slowly { .. } | Sending::Abandoned => head.push_str(&format!("content-length: {}\r\n\r\n", body.len())),
    }
    stream.write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    match sending {
        Sending::OneByteChunks { pause } => {
            for byte in body {
                let mut chunk = b"1\r\n".to_vec();
                chunk.push(*byte);
                chunk.extend_from_slice(b"\r\n");
                stream.write_all(&chunk).await.map_err(|e| format!("write: {e}"))?;
                tokio::time::sleep(pause).await;
            }
            stream.write_all(b"0\r\n\r\n").await.map_err(|e| format!("write: {e}"))?;
        }
        Sending::Slowly { pieces, pause } => {
            for piece in body.chunks(body.len().div_ceil(pieces)) {
                stream.write_all(piece).await.map_err(|e| format!("write: {e}"))?;
                tokio::time::sleep(pause).await;
            }
        }
        Sending::Abandoned => {
            stream.write_all(&body[..body.len() / 2]).await.map_err(|e| format!("write: {e}"))?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            return Ok(None); // dropped: the connection closes with the body half sent
        }
    }
    let answer = tokio::time::timeout(Duration::from_secs(30), read_response(&mut stream))
        .await
        .map_err(|_| "no answer within 30 s".to_string())??;
    Ok(Some(answer))
}

/// `Authorization`, `DPoP` (a fresh proof) and the MCP headers for a raw request.
fn raw_headers(holder: &Holder, session: &str) -> Vec<(String, String)> {
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("accept".to_string(), "application/json, text/event-stream".to_string()),
        ("mcp-session-id".to_string(), session.to_string()),
        ("mcp-protocol-version".to_string(), PROTOCOL_VERSION.to_string()),
    ];
    for (name, value) in holder.headers("POST") {
        headers.push((name.to_string(), value));
    }
    headers
}

/// Waits until Envoy has no downstream connection open (the abandoned one is gone).
async fn wait_for_no_open_connections(stack: &Stack) {
    for _ in 0..100 {
        if stack.counter("http.mcp_ingress.downstream_rq_active").await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("a request stayed active in Envoy\n{}", stack.envoy.log_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_one_byte_chunks_slowly_or_abandoned_are_judged_whole() {
    let mut stack = Stack::start(&Options::new("chunks")).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let session = stack.session(&agent, &holder).await;
    let before = stack.upstream().await;
    let port = stack.envoy.port;
    let allowed = tool_call(11, "get_forecast");
    let forbidden = tool_call(12, "decommission_station");
    let mut expected = 0;

    let one_byte = || Sending::OneByteChunks { pause: Duration::from_millis(5) };
    let slowly = || Sending::Slowly { pieces: 8, pause: Duration::from_millis(400) };
    for (how, sending) in [("1-byte chunks", one_byte()), ("slow body", slowly())] {
        let answer = raw_post(port, &raw_headers(&holder, &session), allowed.as_bytes(), sending).await.unwrap().unwrap();
        assert_eq!(answer.status, 200, "{how}, allowed call: {}", answer.text());
        assert!(answer.text().contains("Forecast for KSEA"), "{how}: the server did not get the whole body: {}", answer.text());
        expected += 1;
    }
    for (how, sending) in [("1-byte chunks", one_byte()), ("slow body", slowly())] {
        let upstream = stack.upstream().await;
        let answer = raw_post(port, &raw_headers(&holder, &session), forbidden.as_bytes(), sending).await.unwrap().unwrap();
        assert_eq!((answer.status, answer.reason().as_deref()), (403, Some("insufficient_scope")), "{how}: {}", answer.text());
        assert_eq!(stack.upstream().await, upstream, "{how}: the refused call reached the server");
    }
    // Over max_body_bytes in 1-byte chunks: refused while buffering (413), never forwarded.
    let padding = "x".repeat(MAX_BODY_BYTES);
    let big = json!({"jsonrpc": "2.0", "id": 13, "method": "tools/call",
                     "params": {"name": "get_forecast", "arguments": {"station": padding}}})
    .to_string();
    let too_large = stack.counter("wasmcustom.mcp_guard.denied.body_too_large").await;
    let answer = raw_post(port, &raw_headers(&holder, &session), big.as_bytes(), Sending::OneByteChunks { pause: Duration::ZERO })
        .await;
    match answer {
        Ok(Some(answer)) => {
            assert_eq!((answer.status, answer.reason().as_deref()), (413, Some("body_too_large")), "{}", answer.text())
        }
        // Envoy may close the connection on the local reply while we are still writing.
        Err(e) => assert!(e.contains("write") || e.contains("closed"), "oversize body: {e}"),
        Ok(None) => unreachable!(),
    }
    assert_eq!(stack.counter("wasmcustom.mcp_guard.denied.body_too_large").await, too_large + 1);
    // An allowed call whose client goes away half way: the held headers never go upstream.
    let upstream = stack.upstream().await;
    assert!(raw_post(port, &raw_headers(&holder, &session), allowed.as_bytes(), Sending::Abandoned).await.unwrap().is_none());
    wait_for_no_open_connections(&stack).await;
    assert_eq!(stack.upstream().await, upstream, "half a body reached the server");

    stack.assert_up_and_forwarded(before, expected, "chunked and slow bodies").await;
}

/// An HTTP/2 (prior knowledge, cleartext) POST to `/mcp`: the body in `chunks` DATA frames,
/// then `trailers` (if any) ending the stream. The status and body, or the stream's error.
async fn h2_post(
    port: u16,
    headers: &[(String, String)],
    chunks: &[&[u8]],
    trailers: Option<&[(&str, &str)]>,
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    let (client, connection) = h2::client::handshake(tcp).await.map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| format!("h2: {e}"))?;
    let mut request = http::Request::builder().method("POST").uri(format!("http://127.0.0.1:{port}/mcp"));
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    let (response, mut stream) =
        client.send_request(request.body(()).unwrap(), false).map_err(|e| format!("h2 request: {e}"))?;
    let last = chunks.len().saturating_sub(1);
    for (n, chunk) in chunks.iter().enumerate() {
        let end = trailers.is_none() && n == last;
        stream.send_data(Bytes::copy_from_slice(chunk), end).map_err(|e| format!("h2 data: {e}"))?;
    }
    if let Some(trailers) = trailers {
        let mut map = http::HeaderMap::new();
        for (k, v) in trailers {
            map.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), http::HeaderValue::from_str(v).unwrap());
        }
        stream.send_trailers(map).map_err(|e| format!("h2 trailers: {e}"))?;
    }
    let outcome = async {
        let response = response.await.map_err(|e| format!("h2 response: {e}"))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| format!("h2 body: {e}"))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    };
    let result = tokio::time::timeout(Duration::from_secs(30), outcome).await.map_err(|_| "no h2 answer within 30 s".to_string())?;
    driver.abort();
    result
}

fn reason_of(body: &str) -> Option<String> {
    let body: Value = serde_json::from_str(body).ok()?;
    body.pointer("/error/data/reason").and_then(Value::as_str).map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_with_trailers_are_judged_whole() {
    let mut stack = Stack::start(&Options::new("h2")).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let session = stack.session(&agent, &holder).await;
    let before = stack.upstream().await;
    let port = stack.envoy.port;
    let allowed = tool_call(21, "get_forecast");
    let forbidden = tool_call(22, "decommission_station");
    let trailers: &[(&str, &str)] = &[("x-checksum", "abc")];

    // Allowed, with trailers: the server answers.
    let (status, body) = h2_post(port, &raw_headers(&holder, &session), &[allowed.as_bytes()], Some(trailers)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Forecast for KSEA"), "{body}");

    // Forbidden, with trailers; and in 1-byte DATA frames then trailers: refused, not forwarded.
    let one_byte: Vec<&[u8]> = forbidden.as_bytes().chunks(1).collect();
    let cases: [(&str, Vec<&[u8]>); 2] = [("whole body", vec![forbidden.as_bytes()]), ("1-byte frames", one_byte)];
    for (how, chunks) in cases {
        let upstream = stack.upstream().await;
        let (status, body) = h2_post(port, &raw_headers(&holder, &session), &chunks, Some(trailers)).await.unwrap();
        assert_eq!((status, reason_of(&body).as_deref()), (403, Some("insufficient_scope")), "{how}: {body}");
        assert_eq!(stack.upstream().await, upstream, "{how}: the refused call reached the server");
    }
    // Trailers and no body at all: an empty POST body is not JSON-RPC.
    let upstream = stack.upstream().await;
    let (status, body) = h2_post(port, &raw_headers(&holder, &session), &[], Some(trailers)).await.unwrap();
    assert_eq!((status, reason_of(&body).as_deref()), (400, Some("malformed_request")), "{body}");
    assert_eq!(stack.upstream().await, upstream);

    stack.assert_up_and_forwarded(before, 1, "HTTP/2 with trailers").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_at_envoys_size_limit_are_refused_by_the_filter_or_by_envoy() {
    let mut stack = Stack::start(&Options::new("headers")).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let session = stack.session(&agent, &holder).await;
    let before = stack.upstream().await;
    let port = stack.envoy.port;
    let body = tool_call(31, "get_forecast");
    // What the other headers take (name + value per header, as Envoy counts them).
    let base = raw_headers(&holder, &session);
    let other: usize = base.iter().filter(|(k, _)| k != "authorization" && k != "dpop").map(|(k, v)| k.len() + v.len()).sum::<usize>()
        + "host127.0.0.1:00000content-length000".len();
    let filler = |total: usize, name: &str| total.saturating_sub(other + name.len());

    let cases = [
        // (header, total header bytes, expected status, expected reason)
        ("authorization", MAX_REQUEST_HEADERS_BYTES - 1024, 401, Some("invalid_token")),
        ("dpop", MAX_REQUEST_HEADERS_BYTES - 1024, 401, Some("invalid_dpop_proof")),
        ("authorization", MAX_REQUEST_HEADERS_BYTES + 1024, 431, None),
        ("dpop", MAX_REQUEST_HEADERS_BYTES + 1024, 431, None),
    ];
    for (name, total, status, reason) in cases {
        let mut headers: Vec<(String, String)> = base.iter().filter(|(k, _)| k != name).cloned().collect();
        let size = filler(total, name);
        let value = match name {
            "authorization" => format!("DPoP {}", "A".repeat(size - 5)),
            _ => "B".repeat(size),
        };
        headers.push((name.to_string(), value));
        let case = format!("{name} with {total} header bytes");
        let upstream = stack.upstream().await;
        let answer = raw_post(port, &headers, body.as_bytes(), Sending::Slowly { pieces: 1, pause: Duration::ZERO }).await;
        let answer = answer.unwrap_or_else(|e| panic!("{case}: {e}")).unwrap();
        assert_eq!(answer.status, status, "{case}: {}", answer.text());
        if reason.is_some() {
            assert_eq!(answer.reason().as_deref(), reason, "{case}: {}", answer.text());
        }
        assert_eq!(stack.upstream().await, upstream, "{case}: reached the server");
    }
    // The same over HTTP/2: Envoy resets the stream (RST_STREAM) before any filter runs.
    let mut headers: Vec<(String, String)> = base.iter().filter(|(k, _)| k != "authorization").cloned().collect();
    headers.push(("authorization".into(), format!("DPoP {}", "A".repeat(MAX_REQUEST_HEADERS_BYTES + 1024))));
    let upstream = stack.upstream().await;
    let outcome = h2_post(port, &headers, &[body.as_bytes()], None).await;
    assert!(outcome.as_ref().is_err_and(|e| e.contains("stream error")), "HTTP/2 oversized headers: {outcome:?}");
    assert_eq!(stack.counter("http2.header_list_size_too_large").await, 1);
    assert_eq!(stack.upstream().await, upstream, "HTTP/2 oversized headers reached the server");

    // And a normal call still passes.
    let answer = raw_post(port, &raw_headers(&holder, &session), body.as_bytes(), Sending::Slowly { pieces: 1, pause: Duration::ZERO })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    stack.assert_up_and_forwarded(before, 1, "headers at the limit").await;
}

// ---- Fail closed when the filter fails -------------------------------------------------------

/// Every Envoy configuration we ship that loads the filter says `failure_policy: FAIL_CLOSED`
/// (Istio's WasmPlugin: `failStrategy: FAIL_CLOSE`), and none fails open.
#[test]
fn every_shipped_envoy_config_fails_closed() {
    fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                yaml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json") {
                out.push(path);
            }
        }
    }
    let root = envoy::workspace_root();
    let mut files = Vec::new();
    yaml_files(&root.join("envoy"), &mut files);
    files.sort();
    let mut checked = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        // Only what is configuration, not comments.
        let lines: Vec<&str> = text.lines().map(|l| l.split(" #").next().unwrap_or("")).filter(|l| !l.trim_start().starts_with('#')).collect();
        let config = lines.join("\n");
        if config.contains("kind: CustomResourceDefinition") {
            continue; // a schema (Istio's CRDs, vendored), not a configuration
        }
        assert!(!config.contains("FAIL_OPEN") && !config.contains("fail_open"), "{name} fails open");
        let wasm_configs = config.matches("vm_config:").count();
        let closed = config.matches("failure_policy: FAIL_CLOSED").count();
        assert_eq!(closed, wasm_configs, "{name}: {wasm_configs} Wasm filter configs, {closed} with failure_policy: FAIL_CLOSED");
        let plugins = config.matches("kind: WasmPlugin").count();
        let close = config.matches("failStrategy: FAIL_CLOSE").count();
        assert_eq!(close, plugins, "{name}: {plugins} Istio WasmPlugins, {close} with failStrategy: FAIL_CLOSE");
        if wasm_configs + plugins > 0 {
            checked.push(name);
        }
    }
    // The ones we know of must be among them (a renamed file must not silently drop out).
    for known in ["envoy/demo.yaml", "envoy/ecds/mcp_guard.yaml"] {
        assert!(checked.iter().any(|c| c == known), "{known} was not checked: {checked:?}");
    }
    eprintln!("fail-closed configs: {checked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_configuration_the_filter_refuses_keeps_envoy_from_serving() {
    let mut options = Options::new("refused-config");
    options.plugin_patch = json!({"polcy": {"tools": {}}});
    options.ready = Ready::Live;
    let outcome = Stack::try_start(&options).await;
    match outcome {
        Err(e) => {
            let text = e.to_string();
            eprintln!("refused configuration: {text}");
            assert!(text.contains("Envoy exited"), "{text}");
            assert!(text.contains("polcy"), "the log does not name the field: {text}");
        }
        Ok(stack) => panic!("Envoy started with a configuration the filter refuses\n{}", stack.envoy.log_tail(30)),
    }
}

/// The test-only build that traps on `x-mcp-guard-test-trap: 1`: `$MCP_GUARD_TRAP_WASM`, else
/// built here into `target/trap-wasm` (as `make wasm-trap` does; a no-op when it is up to date).
fn trap_wasm() -> PathBuf {
    if let Some(path) = std::env::var_os("MCP_GUARD_TRAP_WASM") {
        return PathBuf::from(path);
    }
    let root = envoy::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "-p", "mcp-guard", "--target", "wasm32-wasip1", "--release", "--features", "trap-for-tests"])
        .args(["--target-dir", "target/trap-wasm"])
        .current_dir(&root)
        .status()
        .expect("cargo");
    assert!(status.success(), "building the trap-for-tests filter failed (make wasm-trap)");
    root.join("target/trap-wasm/wasm32-wasip1/release/mcp_guard.wasm")
}

/// Sends `request` and returns its status and body.
async fn status_of(agent: &Agent, request: &RawRequest, what: &str) -> (u16, String) {
    let answer = must(agent.send_raw(request).await, what);
    (answer.status, answer.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_vm_fails_closed_and_stays_closed() {
    let mut options = Options::new("trap-closed");
    options.wasm = trap_wasm();
    options.concurrency = 1;
    let mut stack = Stack::start(&options).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let before = stack.upstream().await;

    let (status, body) = status_of(&agent, &RawRequest::post(INITIALIZE).signed(&holder), "before the trap").await;
    assert_eq!(status, 200, "{body}");
    // A valid request that makes the VM trap: Envoy answers itself, nothing goes upstream.
    let trap = RawRequest::post(INITIALIZE).signed(&holder).header("x-mcp-guard-test-trap", "1");
    let (status, body) = status_of(&agent, &trap, "the trap").await;
    eprintln!("trapping request: {status} {body:?}");
    assert_eq!(status, 503, "{body}");
    // The VM is dead: every later request, valid or not, is refused the same way, also after
    // longer than FAIL_RELOAD's backoff (FAIL_CLOSED never starts a new VM).
    for n in 0..6 {
        if n == 3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let (status, body) = status_of(&agent, &RawRequest::post(INITIALIZE).signed(&holder), "after the trap").await;
        assert_eq!(status, 503, "valid request {n} after the trap: {body}");
        let (status, body) = status_of(&agent, &RawRequest::post(INITIALIZE), "after the trap, no token").await;
        assert_eq!(status, 503, "request {n} without a token after the trap: {body}");
    }
    let log = std::fs::read_to_string(&stack.envoy.log).unwrap_or_default();
    assert!(log.contains("proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"), "{}", stack.envoy.log_tail(30));
    stack.assert_up_and_forwarded(before, 1, "trap with FAIL_CLOSED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fail_reload_a_trapped_vm_is_replaced_by_an_equally_strict_one() {
    let mut options = Options::new("trap-reload");
    options.wasm = trap_wasm();
    options.concurrency = 1;
    options.failure_policy = "FAIL_RELOAD";
    let mut stack = Stack::start(&options).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let before = stack.upstream().await;

    let trap = RawRequest::post(INITIALIZE).signed(&holder).header("x-mcp-guard-test-trap", "1");
    let (status, body) = status_of(&agent, &trap, "the trap").await;
    eprintln!("trapping request (FAIL_RELOAD): {status} {body:?}");
    assert!(status >= 500, "{status} {body}");
    // Until a new VM runs (Envoy reloads it after a backoff, 1 s by default), requests are
    // refused with 503; once it runs, it checks as the old one did: never a request unchecked.
    let mut statuses = Vec::new();
    let mut allowed = 0;
    for _ in 0..50 {
        let (unauth, body) = status_of(&agent, &RawRequest::post(INITIALIZE), "no token").await;
        assert!(unauth == 401 || unauth == 503, "a request without a token got {unauth}: {body}");
        let (status, body) = status_of(&agent, &RawRequest::post(INITIALIZE).signed(&holder), "valid").await;
        assert!(status == 200 || status == 503, "a valid request got {status}: {body}");
        statuses.push((unauth, status));
        if status == 200 {
            allowed += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("after the trap with FAIL_RELOAD (no token, valid): {statuses:?}");
    assert_eq!(allowed, 1, "no fresh VM served within 10 s: {statuses:?}\n{}", stack.envoy.log_tail(30));
    // The fresh VM refuses what the old one refused.
    let (status, body) = status_of(&agent, &RawRequest::post(INITIALIZE), "no token, fresh VM").await;
    assert_eq!((status, reason_of(&body).as_deref()), (401, Some("missing_token")), "{body}");
    let forbidden = RawRequest::post(tool_call(2, "decommission_station")).signed(&holder);
    let (status, body) = status_of(&agent, &forbidden, "missing scope, fresh VM").await;
    assert_eq!((status, reason_of(&body).as_deref()), (403, Some("insufficient_scope")), "{body}");
    stack.assert_up_and_forwarded(before, allowed, "trap with FAIL_RELOAD").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_build_has_no_trap_hook() {
    let mut stack = Stack::start(&Options::new("no-trap-hook")).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let before = stack.upstream().await;
    let request = RawRequest::post(INITIALIZE).signed(&holder).header("x-mcp-guard-test-trap", "1");
    let (status, body) = status_of(&agent, &request, "trap header on the release build").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = status_of(&agent, &RawRequest::post(INITIALIZE).header("x-mcp-guard-test-trap", "1"), "no token").await;
    assert_eq!(status, 401);
    stack.assert_up_and_forwarded(before, 1, "release build").await;
}

/// The harness sees the same: the trapping request is `Outcome::Trapped`, and the VM is failed
/// for every later call.
#[test]
fn the_harness_reports_the_trap_and_a_failed_vm() {
    use mcp_guard_harness::{Harness, HarnessError, Outcome};
    use mcp_guard_tests::{World, NOW};
    let w = World::new();
    let mut h = Harness::load(trap_wasm()).unwrap_or_else(|e| panic!("{e}"));
    h.set_time(NOW);
    h.configure(&w.config(json!({})).to_string()).unwrap();
    let send = |h: &mut Harness, trap: bool| {
        let req = w.call("get_forecast", "weather:read");
        let mut b = h.request().method("POST").path("/mcp").authority("mcp.example.com").scheme("https");
        for (k, v) in &req.headers {
            b = b.header_bytes(k, v);
        }
        if trap {
            b = b.header("x-mcp-guard-test-trap", "1");
        }
        b.body(req.body.clone().unwrap()).upstream_response(200, &[("content-type", "application/json")], "{}").send()
    };
    assert!(matches!(send(&mut h, false), Ok(Outcome::Forwarded(_))), "the trap build works without the header");
    match send(&mut h, true) {
        Ok(Outcome::Trapped { message, .. }) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("expected a trap: {other:?}"),
    }
    match send(&mut h, false) {
        Err(HarnessError::Trap { .. }) => {}
        other => panic!("the VM should be failed after a trap: {other:?}"),
    }
}
