//! Deterministic figures from the harness: wasmtime fuel (≈ wasm instructions executed) per
//! request on each path, and the VM's linear memory after many distinct tokens and proofs.
//!
//! Fuel does not depend on the machine or its load, so a change to the filter can be judged by
//! it without noise; the Envoy runs then say what it is worth in requests per second.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use mcp_guard::testkit::{hex, TestIssuer, TestKey};
use mcp_guard_harness::{Harness, Options, Outcome};
use serde_json::{json, Value};

use crate::material::{self, PUBLIC_URL};
use crate::Error;

/// The filter configuration every run uses (Envoy and harness): one tool with one scope.
pub fn guard_config(jwks: &Value, binding: &str, replay_cache_entries: u32) -> Value {
    json!({
        "issuer": material::ISSUER,
        "audience": material::AUDIENCE,
        "jwks": jwks,
        "binding": binding,
        "public_url": PUBLIC_URL,
        // max_age_seconds and clock_skew_seconds as shipped (60 s, 5 s): proofs are made just
        // before each run.
        "dpop": {"algorithms": ["ES256", "EdDSA"], "replay_cache_entries": replay_cache_entries},
        "policy": {"tools": {material::TOOL: [material::SCOPE]}, "unlisted_tools": "deny"}
    })
}

/// One request as the harness sends it.
#[derive(Clone)]
struct Req {
    method: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
    cert_sha256_hex: Option<String>,
}

impl Req {
    fn post(headers: Vec<(&'static str, String)>) -> Req {
        Req {
            method: "POST",
            headers,
            body: Some(material::tools_call_body()),
            cert_sha256_hex: None,
        }
    }
}

fn send(h: &mut Harness, req: &Req) -> Result<Outcome, Error> {
    let mut b = h
        .request()
        .method(req.method)
        .path("/mcp")
        .authority("mcp.example.com")
        .scheme("https");
    b = b.header("accept", "application/json, text/event-stream");
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    if let Some(body) = &req.body {
        b = b
            .header("content-type", "application/json")
            .header("content-length", &body.len().to_string())
            .body(body.clone());
    }
    if let Some(cert) = &req.cert_sha256_hex {
        b = b.property(
            &["connection", "sha256_peer_certificate_digest"],
            cert.as_bytes().to_vec(),
        );
    }
    b.upstream_response(
        200,
        &[("content-type", "application/json")],
        r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
    )
    .send()
    .map_err(|e| Error(format!("harness: {e}")))
}

fn check(path: &str, outcome: &Outcome, expect: Option<u32>) -> Result<(), Error> {
    let ok = match (expect, outcome) {
        (None, Outcome::Forwarded(f)) => f.response.status == 200,
        (Some(status), Outcome::LocalReply(r)) => r.status == status,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let shown = match outcome {
            Outcome::LocalReply(r) => format!("local reply {} {}", r.status, r.body_str()),
            other => format!("{other}"),
        };
        let want = expect.map_or("forwarded (200)".to_string(), |s| format!("refused {s}"));
        Err(Error(format!(
            "harness path {path:?}: expected {want}, got {shown}"
        )))
    }
}

/// Fuel per request on one path.
pub struct PathFuel {
    pub key: &'static str,
    pub name: &'static str,
    pub fuel_per_request: u64,
    /// Wall time per request in the harness (wasmtime with fuel metering; host noise included).
    pub micros_per_request: f64,
    /// Calls across the VM boundary per request, by ABI function (the harness's count): out of
    /// the VM (host functions) and into it (`proxy_on_*` callbacks and allocations). Each
    /// costs Envoy time that fuel does not measure.
    pub calls_per_request: BTreeMap<&'static str, f64>,
}

impl PathFuel {
    /// Host functions called per request (out of the VM).
    pub fn calls_out(&self) -> f64 {
        self.calls_per_request.iter().filter(|(name, _)| !is_export(name)).map(|(_, n)| n).sum()
    }

    /// Plugin exports the host called per request (into the VM).
    pub fn calls_in(&self) -> f64 {
        self.calls_per_request.iter().filter(|(name, _)| is_export(name)).map(|(_, n)| n).sum()
    }

    /// `name ×n` for each ABI function called at least once per ten requests, most first.
    pub fn call_breakdown(&self) -> String {
        let mut calls: Vec<(&&str, &f64)> = self.calls_per_request.iter().filter(|(_, n)| **n >= 0.1).collect();
        calls.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        calls.iter().map(|(name, n)| format!("{} ×{}", name.trim_start_matches("proxy_"), trim_count(**n))).collect::<Vec<_>>().join(", ")
    }
}

/// The host functions the harness counts are all `proxy_*` imports other than `proxy_on_*`;
/// everything else is an export the host called (`proxy_on_*`, the allocator, `_initialize`).
fn is_export(name: &str) -> bool {
    name.starts_with("proxy_on_") || !name.starts_with("proxy_")
}

fn trim_count(n: f64) -> String {
    if (n - n.round()).abs() < 0.005 {
        format!("{n:.0}")
    } else {
        format!("{n:.2}")
    }
}

struct PathSpec {
    key: &'static str,
    name: &'static str,
    binding: &'static str,
    /// `None`: forwarded with 200; `Some(status)`: refused with it.
    expect: Option<u32>,
    /// Requests: warm-up first, then the measured ones.
    requests: Vec<Req>,
}

/// Warm-up requests (first token verification, allocator growth, caches) before measuring.
const WARMUP: usize = 50;

/// The paths the benchmark runs in Envoy, and a few that split the cost, each with `total`
/// requests (distinct tokens or proofs where the path needs them; those made only for the
/// `wanted` path when one is named); with the issuer's JWKS and the time.
fn path_specs(total: usize, wanted: Option<&str>) -> (Value, u64, Vec<PathSpec>) {
    let now = material::now();
    let issuer = TestIssuer::new(TestKey::es256());
    let es_client = TestKey::es256();
    let ed_client = TestKey::ed25519();
    let cert_digest = mcp_guard::jose::sha256(b"bench client certificate");
    let bearer = material::unbound_token(&issuer, now, "fuel-bearer");
    let mtls = material::mtls_token(&issuer, now, "fuel-mtls", &cert_digest);
    let dpop_es = material::dpop_token(&issuer, now, "fuel-dpop-es", &es_client);
    let dpop_ed = material::dpop_token(&issuer, now, "fuel-dpop-ed", &ed_client);
    let auth = |t: &str, scheme: &str| ("authorization", format!("{scheme} {t}"));

    let distinct = |key: &str| if wanted.is_none_or(|w| w == key) { total } else { 0 };
    let fresh_tokens = material::par_generate(distinct("token_verify"), |i| {
        material::unbound_token(&issuer, now, &format!("fuel-fresh-{i}"))
    });
    let es_proofs = material::par_generate(distinct("dpop_es256"), |_| material::proof(&es_client, &dpop_es, now));
    let ed_proofs = material::par_generate(distinct("dpop_eddsa"), |_| material::proof(&ed_client, &dpop_ed, now));
    // A token whose signature does not verify: the issuer's header and claims, another key's signature.
    let forged = {
        let other = TestIssuer::new(TestKey::es256());
        material::unbound_token(&other, now, "fuel-forged")
    };

    // The same token with 1 KiB more claims, and the same call with 1 KiB more arguments: what
    // each byte of token and body costs on the cached path.
    let big_token = {
        let mut c = material::claims(&issuer, now, "fuel-big");
        c.insert("pad".into(), "x".repeat(1024).into());
        issuer.token(&c)
    };
    let big_body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": material::TOOL, "arguments": {"city": "Paris", "days": 3, "notes": "y".repeat(1024)}}})
    .to_string();
    let repeat = |req: Req| vec![req; total];
    let specs = vec![
        PathSpec {
            key: "cached",
            name: "4  bearer, cached token, POST tools/call",
            binding: "bearer",
            expect: None,
            requests: repeat(Req::post(vec![auth(&bearer, "Bearer")])),
        },
        PathSpec {
            key: "get_cached",
            name: "   bearer, cached token, GET (no body)",
            binding: "bearer",
            expect: None,
            requests: repeat(Req {
                method: "GET",
                headers: vec![auth(&bearer, "Bearer")],
                body: None,
                cert_sha256_hex: None,
            }),
        },
        PathSpec {
            key: "cached_big_token",
            name: "   bearer, cached token with 1 KiB more claims",
            binding: "bearer",
            expect: None,
            requests: repeat(Req::post(vec![auth(&big_token, "Bearer")])),
        },
        PathSpec {
            key: "cached_big_body",
            name: "   bearer, cached token, 1 KiB more tool arguments",
            binding: "bearer",
            expect: None,
            requests: repeat(Req {
                body: Some(big_body.clone()),
                ..Req::post(vec![auth(&bearer, "Bearer")])
            }),
        },
        PathSpec {
            key: "token_verify",
            name: "   bearer, a new ES256 token each request",
            binding: "bearer",
            expect: None,
            requests: fresh_tokens
                .iter()
                .map(|t| Req::post(vec![auth(t, "Bearer")]))
                .collect(),
        },
        PathSpec {
            key: "mtls",
            name: "5  mTLS-bound token, cached",
            binding: "mtls",
            expect: None,
            requests: repeat(Req {
                cert_sha256_hex: Some(hex(&cert_digest)),
                ..Req::post(vec![auth(&mtls, "Bearer")])
            }),
        },
        PathSpec {
            key: "dpop_es256",
            name: "6  DPoP, fresh ES256 proof, cached token",
            binding: "dpop",
            expect: None,
            requests: es_proofs
                .iter()
                .map(|p| Req::post(vec![auth(&dpop_es, "DPoP"), ("dpop", p.clone())]))
                .collect(),
        },
        PathSpec {
            key: "dpop_eddsa",
            name: "7  DPoP, fresh EdDSA proof, cached token",
            binding: "dpop",
            expect: None,
            requests: ed_proofs
                .iter()
                .map(|p| Req::post(vec![auth(&dpop_ed, "DPoP"), ("dpop", p.clone())]))
                .collect(),
        },
        PathSpec {
            key: "refused_no_token",
            name: "   refused: no token (401)",
            binding: "dpop",
            expect: Some(401),
            requests: repeat(Req::post(vec![])),
        },
        PathSpec {
            key: "refused_forged",
            name: "   refused: forged ES256 token (401, one failed verify)",
            binding: "bearer",
            expect: Some(401),
            requests: repeat(Req::post(vec![auth(&forged, "Bearer")])),
        },
    ];
    (issuer.jwks(), now, specs)
}

/// A harness with the path's configuration, at the time its tokens and proofs were made.
fn configured(wasm: &Path, options: &Options, jwks: &Value, now: u64, spec: &PathSpec) -> Result<Harness, Error> {
    let mut h = Harness::load_with(wasm, options.clone()).map_err(|e| Error(format!("harness: {e}")))?;
    h.set_time(now);
    h.configure(&guard_config(jwks, spec.binding, REPLAY_CACHE_ENTRIES).to_string())
        .map_err(|e| Error(format!("harness configure ({}): {e}", spec.key)))?;
    Ok(h)
}

/// Fuel per request for each path the benchmark runs in Envoy, and a few that split the cost.
pub fn fuel_per_path(wasm: &Path, measured: usize) -> Result<Vec<PathFuel>, Error> {
    let (jwks, now, specs) = path_specs(WARMUP + measured, None);
    let options = Options {
        fuel: true,
        ..Options::default()
    };
    let mut out = Vec::new();
    for spec in specs {
        let mut h = configured(wasm, &options, &jwks, now, &spec)?;
        let (warm, measure) = spec.requests.split_at(WARMUP.min(spec.requests.len()));
        for req in warm {
            let outcome = send(&mut h, req)?;
            check(spec.name, &outcome, spec.expect)?;
        }
        h.take_logs();
        let before = h.fuel_consumed().unwrap_or(0);
        let calls_before = h.abi_calls().clone();
        let started = Instant::now();
        for req in measure {
            let outcome = send(&mut h, req)?;
            check(spec.name, &outcome, spec.expect)?;
        }
        let elapsed = started.elapsed();
        let spent = h.fuel_consumed().unwrap_or(0).saturating_sub(before);
        let n = measure.len().max(1) as u64;
        let calls_per_request = h
            .abi_calls()
            .iter()
            .map(|(name, count)| {
                let made = count.saturating_sub(calls_before.get(name).copied().unwrap_or(0));
                (*name, made as f64 / n as f64)
            })
            .filter(|(_, per_request)| *per_request > 0.0)
            .collect();
        out.push(PathFuel {
            key: spec.key,
            name: spec.name,
            fuel_per_request: spent / n,
            micros_per_request: elapsed.as_secs_f64() * 1e6 / n as f64,
            calls_per_request,
        });
    }
    Ok(out)
}

/// The path keys [`profile`] knows.
pub fn path_keys() -> Vec<&'static str> {
    path_specs(0, Some("")).2.iter().map(|spec| spec.key).collect()
}

/// One path through the harness for about `seconds`, without fuel and with a perf map
/// (`/tmp/perf-<pid>.map`), for `perf record` to attribute time to the filter's functions: the
/// path's requests over and over, each pass in a fresh VM (a proof may be used once per VM).
/// Returns the requests sent and wall microseconds per request.
pub fn profile(wasm: &Path, key: &str, seconds: f64) -> Result<(usize, f64), Error> {
    const PASS: usize = 50_000;
    let (jwks, now, specs) = path_specs(WARMUP + PASS, Some(key));
    let Some(spec) = specs.into_iter().find(|spec| spec.key == key) else {
        return Err(Error(format!("no path {key:?}; paths: {}", path_keys().join(" "))));
    };
    let options = Options {
        perf_map: true,
        ..Options::default()
    };
    let (warm, measure) = spec.requests.split_at(WARMUP.min(spec.requests.len()));
    let mut sent = 0;
    let mut busy = std::time::Duration::ZERO;
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        let mut h = configured(wasm, &options, &jwks, now, &spec)?;
        for req in warm {
            check(spec.name, &send(&mut h, req)?, spec.expect)?;
        }
        let pass = Instant::now();
        for req in measure {
            check(spec.name, &send(&mut h, req)?, spec.expect)?;
            // The log lines would pile up in the harness for the whole pass.
            h.take_logs();
        }
        busy += pass.elapsed();
        sent += measure.len();
    }
    Ok((sent, busy.as_secs_f64() * 1e6 / sent.max(1) as f64))
}

/// The token cache's size as shipped (`token_cache_entries` default), set explicitly.
pub const TOKEN_CACHE_ENTRIES: u64 = 10_000;
/// The replay cache's size as shipped (`dpop.replay_cache_entries` default), set explicitly.
pub const REPLAY_CACHE_ENTRIES: u32 = 100_000;
/// A replay-cache record in shared data (filter/src/replay.rs: digest 16, expiry 8, tag 4).
const REPLAY_RECORD_BYTES: usize = 28;

/// The memory check: VM pages and the host's shared data at checkpoints.
pub struct MemoryPoint {
    pub requests: u64,
    pub pages: u64,
    pub shared_keys: usize,
    pub shared_bytes: usize,
    /// Records in the replay cache's buckets.
    pub shared_records: usize,
    pub seconds: f64,
}

pub struct MemoryRun {
    pub points: Vec<MemoryPoint>,
    pub distinct_tokens: usize,
    pub token_cache_entries: u64,
}

/// Sum of the replay cache's buckets in shared data (the layout of `filter/src/replay.rs`:
/// keys `mcp-guard/jti/<buckets>/<n>`, 8 records per bucket).
fn shared_replay_size(h: &Harness, entries: u32) -> (usize, usize) {
    let buckets = entries.div_ceil(8).max(1);
    (0..buckets)
        .filter_map(|n| h.shared_data(&format!("mcp-guard/jti/{buckets}/{n}")))
        .fold((0, 0), |(keys, bytes), (value, _)| {
            (keys + 1, bytes + value.len())
        })
}

/// `total` DPoP requests, each with a fresh EdDSA proof (distinct `jti`), over `distinct_tokens`
/// DPoP-bound tokens (each used for `total / distinct_tokens` consecutive requests, so each is
/// verified once), with the shipped cache sizes. Ed25519 keys for issuer and client: the caches
/// hold the same things whatever the algorithm, and Ed25519 verifies fastest in wasm.
pub fn memory_run(
    wasm: &Path,
    total: u64,
    distinct_tokens: usize,
    replay_cache_entries: u32,
    token_cache_entries: u64,
    checkpoint_every: u64,
) -> Result<MemoryRun, Error> {
    let now = material::now();
    let issuer = TestIssuer::new(TestKey::ed25519());
    let client = TestKey::ed25519();
    let tokens = material::par_generate(distinct_tokens, |i| {
        material::dpop_token(&issuer, now, &format!("mem-{i}"), &client)
    });
    let mut config = guard_config(&issuer.jwks(), "dpop", replay_cache_entries);
    config["token_cache_entries"] = token_cache_entries.into();
    let mut h =
        Harness::load_with(wasm, Options::default()).map_err(|e| Error(format!("harness: {e}")))?;
    h.set_time(now);
    h.configure(&config.to_string())
        .map_err(|e| Error(format!("harness configure: {e}")))?;

    // Proofs are signed on another thread while this one drives the VM.
    let per_token = total.div_ceil(distinct_tokens as u64).max(1);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, String)>(8192);
    let started = Instant::now();
    let mut points = Vec::new();
    std::thread::scope(|s| -> Result<(), Error> {
        let tokens = &tokens;
        let client = &client;
        s.spawn(move || {
            for i in 0..total {
                let t = ((i / per_token) as usize).min(tokens.len() - 1);
                let proof = material::proof(client, &tokens[t], now);
                if tx.send((t, proof)).is_err() {
                    break;
                }
            }
        });
        let mut sent = 0u64;
        for (t, proof) in rx.iter() {
            let req = Req::post(vec![
                ("authorization", format!("DPoP {}", tokens[t])),
                ("dpop", proof),
            ]);
            let outcome = send(&mut h, &req)?;
            check("memory run", &outcome, None)?;
            sent += 1;
            if sent.is_multiple_of(10_000) {
                h.take_logs();
            }
            if sent.is_multiple_of(checkpoint_every) || sent == total {
                let (shared_keys, shared_bytes) = shared_replay_size(&h, replay_cache_entries);
                eprintln!(
                    "   memory run: {sent} requests, {} pages ({:.0} s)",
                    h.memory_pages(),
                    started.elapsed().as_secs_f64()
                );
                points.push(MemoryPoint {
                    requests: sent,
                    pages: h.memory_pages(),
                    shared_keys,
                    shared_bytes,
                    shared_records: shared_bytes / REPLAY_RECORD_BYTES,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
        }
        Ok(())
    })?;
    Ok(MemoryRun {
        points,
        distinct_tokens,
        token_cache_entries,
    })
}
