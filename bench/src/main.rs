//! `make bench`: mcp-guard in Envoy against Envoy's own `jwt_authn`, on loopback, one Envoy
//! worker each, interleaved rounds; then the deterministic figures from the harness (fuel per
//! request path, VM memory after many distinct tokens and proofs). See `bench/README.md`.
//!
//! `mcp-guard-bench [all|envoy|harness]` (default `all`); `mcp-guard-bench profile <path>
//! [seconds]` for `make profile`. Knobs (environment): `BENCH_ROUNDS`
//! (5), `BENCH_SECONDS` (10), `BENCH_WARMUP_SECONDS` (3), `BENCH_TOKENS` (200000, config 3),
//! `BENCH_FUEL_REQUESTS` (500), `BENCH_MEMORY_REQUESTS` (1000000), `BENCH_MEMORY_TOKENS`
//! (requests / 10), `BENCH_MEMORY_TOKEN_CACHE` (10000), `BENCH_MEMORY_REPLAY_ENTRIES` (100000),
//! `BENCH_ONLY` (a subset of configurations, e.g. `1,2,4`), `BENCH_COMPARE_WASM` (other builds,
//! `a.wasm:b.wasm`, on the cached-token path as configurations 4b, 4c, …, or with
//! `BENCH_COMPARE_PATH=es256` or `eddsa` on a DPoP path as 6b, … or 7b, …), `MCP_GUARD_WASM`, `ENVOY_BIN`.

mod envoy;
mod fuel;
mod load;
mod material;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use envoy::{Envoy, Front, Spec};
use load::{List, RunResult};
use material::Material;

#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

fn wasm_path(root: &Path) -> PathBuf {
    std::env::var_os("MCP_GUARD_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/wasm32-wasip1/release/mcp_guard.wasm"))
}

fn shell(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let result = match mode.as_str() {
        "all" | "envoy" | "harness" => run(&mode),
        "profile" => profile(std::env::args().nth(2), std::env::args().nth(3)),
        _ => Err(Error(format!(
            "usage: mcp-guard-bench [all|envoy|harness] | profile <path> [seconds] (got {mode:?})"
        ))),
    };
    if let Err(e) = result {
        eprintln!("\nBENCHMARK FAILED: {e}");
        std::process::exit(1);
    }
}

/// `profile <path> [seconds]`: one harness path in a loop with a perf map, under `perf record`
/// (see `make profile`); the wasm is the build at [`wasm_path`] (`MCP_GUARD_WASM`), which keeps
/// its function names only when built unstripped.
fn profile(key: Option<String>, seconds: Option<String>) -> Result<(), Error> {
    let Some(key) = key else {
        return Err(Error(format!("usage: mcp-guard-bench profile <path> [seconds]; paths: {}", fuel::path_keys().join(" "))));
    };
    let seconds = match seconds {
        Some(n) => n.parse::<f64>().map_err(|_| Error(format!("seconds: not a number: {n:?}")))?,
        None => 10.0,
    };
    let wasm = wasm_path(&workspace_root());
    let (sent, micros) = fuel::profile(&wasm, &key, seconds)?;
    println!("profile {key}: {sent} requests, {micros:.1} µs each in wasmtime (perf map /tmp/perf-{}.map)", std::process::id());
    Ok(())
}

fn run(mode: &str) -> Result<(), Error> {
    let root = workspace_root();
    let built = wasm_path(&root);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| Error(format!("{}: {e}", dir.display())))?;
    // The whole run uses one snapshot of the .wasm, even if it is rebuilt meanwhile.
    let wasm = dir.join("mcp_guard.wasm");
    let wasm_bytes = std::fs::copy(&built, &wasm).map_err(|e| {
        Error(format!(
            "{}: {e} (build it: cargo build -p mcp-guard --target wasm32-wasip1 --release)",
            built.display()
        ))
    })?;
    let started = Instant::now();
    println!(
        "mcp-guard benchmark — {}",
        shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
    );
    println!(
        "machine: {} cores; load average at start: {}",
        shell("nproc", &[]),
        load_average()
    );
    println!(
        "filter:  {} = {wasm_bytes} bytes ({:.1} KiB), copied to {}",
        built.display(),
        wasm_bytes as f64 / 1024.0,
        wasm.display()
    );

    let mut summary = Vec::new();
    let mut memory_within = true;
    if mode != "envoy" {
        summary.push(harness_section(&wasm)?);
        let memory = memory_section(&wasm)?;
        memory_within = memory.within;
        summary.push(memory.line);
    }
    if mode != "harness" {
        summary.push(envoy_section(&root, &dir, &wasm, wasm_bytes)?);
    } else {
        summary.push(format!("wasm: bytes={wasm_bytes}"));
    }
    eprintln!("(total {:.0} s)", started.elapsed().as_secs_f64());
    // The machine-readable summary; the `ratios:` line (Envoy runs) is the last line.
    println!();
    for line in &summary {
        println!("{line}");
    }
    if !memory_within {
        return Err(Error(
            "the VM's memory after the memory run is not within 10% of its size after a tenth of it (see above)"
                .into(),
        ));
    }
    Ok(())
}

// ---- harness: fuel per path -----------------------------------------------------------------

fn harness_section(wasm: &Path) -> Result<String, Error> {
    let n = env_u64("BENCH_FUEL_REQUESTS", 500) as usize;
    println!("\n== wasmtime fuel per request (harness, the built .wasm; {n} requests per path after 50 warm-up) ==");
    println!("   fuel ≈ wasm instructions executed; independent of the machine and its load (keys are new each run: ±0.3%).");
    let paths = fuel::fuel_per_path(wasm, n)?;
    println!(
        "{:<58} {:>13} {:>9} {:>8} {:>12}",
        "path", "fuel/request", "host†", "VM†", "µs/request*"
    );
    for p in &paths {
        println!(
            "{:<58} {:>13} {:>9.1} {:>8.1} {:>12.1}",
            p.name,
            group(p.fuel_per_request),
            p.calls_out(),
            p.calls_in(),
            p.micros_per_request
        );
    }
    println!("   † calls across the VM boundary per request: to host functions, and into the plugin (callbacks,");
    println!("     allocations for what the host hands back); Envoy's cost per call is outside the fuel figure.");
    println!("   * wall time in wasmtime with fuel metering on, this machine, this load: indicative only.");
    for key in ["cached", "dpop_eddsa"] {
        if let Some(p) = paths.iter().find(|p| p.key == key) {
            println!("   calls per request, {}: {}", p.name.trim(), p.call_breakdown());
        }
    }
    let f = |k: &str| {
        paths
            .iter()
            .find(|p| p.key == k)
            .map_or(0, |p| p.fuel_per_request) as i128
    };
    let part = |what: &str, v: i128| println!("   {what:<62} {:>13}", group_i(v));
    println!("where it goes (differences between paths):");
    part(
        "request without body: headers, cached token, identity headers, audit",
        f("get_cached"),
    );
    part(
        "JSON-RPC body decode + tool policy (POST cached − GET cached)",
        f("cached") - f("get_cached"),
    );
    part(
        "ES256 access-token verification (new token − cached token)",
        f("token_verify") - f("cached"),
    );
    part(
        "DPoP proof, ES256: parse, verify, thumbprint, ath, replay (6 − 4)",
        f("dpop_es256") - f("cached"),
    );
    part("DPoP proof, EdDSA (7 − 4)", f("dpop_eddsa") - f("cached"));
    part(
        "each KiB of access token on the cached path (SHA-256 key, copies)",
        f("cached_big_token") - f("cached"),
    );
    part(
        "each KiB of JSON-RPC body (strict decode)",
        f("cached_big_body") - f("cached"),
    );
    part("mTLS binding check (5 − 4)", f("mtls") - f("cached"));
    part(
        "a refusal without a token (401 at header time)",
        f("refused_no_token"),
    );
    let calls = |k: &str| paths.iter().find(|p| p.key == k).map_or(0.0, |p| p.calls_out() + p.calls_in());
    Ok(format!(
        "fuel: cached={} get_cached={} token_verify={} mtls={} dpop_es256={} dpop_eddsa={} refused={} forged={} \
         big_token={} big_body={}\nabi_calls: cached={:.1} mtls={:.1} dpop_es256={:.1} dpop_eddsa={:.1}",
        f("cached"),
        f("get_cached"),
        f("token_verify"),
        f("mtls"),
        f("dpop_es256"),
        f("dpop_eddsa"),
        f("refused_no_token"),
        f("refused_forged"),
        f("cached_big_token"),
        f("cached_big_body"),
        calls("cached"),
        calls("mtls"),
        calls("dpop_es256"),
        calls("dpop_eddsa")
    ))
}

fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn group_i(n: i128) -> String {
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", group(n.unsigned_abs() as u64))
}

// ---- harness: memory -------------------------------------------------------------------------

/// The memory figures for the summary.
struct MemorySummary {
    line: String,
    within: bool,
}

fn memory_section(wasm: &Path) -> Result<MemorySummary, Error> {
    let total = env_u64("BENCH_MEMORY_REQUESTS", 1_000_000).max(10);
    let tokens = env_u64("BENCH_MEMORY_TOKENS", total / 10).clamp(1, total) as usize;
    let replay = env_u64(
        "BENCH_MEMORY_REPLAY_ENTRIES",
        u64::from(fuel::REPLAY_CACHE_ENTRIES),
    )
    .clamp(64, 10_000_000) as u32;
    let token_cache =
        env_u64("BENCH_MEMORY_TOKEN_CACHE", fuel::TOKEN_CACHE_ENTRIES).clamp(1, 1_000_000);
    let shipped = token_cache == fuel::TOKEN_CACHE_ENTRIES && replay == fuel::REPLAY_CACHE_ENTRIES;
    let every = (total / 10).max(1);
    let per_token = total.div_ceil(tokens as u64).max(1);
    println!(
        "\n== VM memory with bounded caches (harness, one VM): {total} DPoP requests, each with a fresh EdDSA proof \
         (distinct jti), over {tokens} distinct DPoP-bound tokens ({per_token} consecutive requests each) =="
    );
    println!(
        "   token cache {token_cache} entries in the VM, replay cache {replay} entries in shared data (host-side){}; \
         the check compares the VM's pages at the end with those after {every} requests",
        if shipped { " (the shipped defaults)" } else { "" }
    );
    let run = fuel::memory_run(wasm, total, tokens, replay, token_cache, every)?;
    println!(
        "{:>10} {:>9} {:>8} {:>12} {:>15} {:>13} {:>7}",
        "requests", "VM pages", "VM MiB", "shared keys", "replay records", "shared bytes", "s"
    );
    for p in &run.points {
        println!(
            "{:>10} {:>9} {:>8.2} {:>12} {:>15} {:>13} {:>7.0}",
            p.requests,
            p.pages,
            p.pages as f64 * 65536.0 / 1048576.0,
            p.shared_keys,
            p.shared_records,
            p.shared_bytes,
            p.seconds
        );
    }
    let base = run.points.iter().find(|p| p.requests >= every);
    let (Some(base), Some(last)) = (base, run.points.last()) else {
        return Err(Error("memory run recorded nothing".into()));
    };
    let growth = last.pages as f64 / base.pages.max(1) as f64 - 1.0;
    let within = growth <= 0.10 && last.shared_records <= replay as usize;
    println!(
        "memory: VM pages after {} requests {}, after {} requests {}: {:+.1}% -> {}; replay cache {} records (bound {replay})",
        base.requests,
        base.pages,
        last.requests,
        last.pages,
        growth * 100.0,
        if within { "within 10%" } else { "NOT within 10%" },
        last.shared_records
    );
    if let Some(settled) = run.points.iter().find(|p| p.pages == last.pages) {
        if settled.requests < last.requests {
            println!(
                "        (no growth from {} requests on: {} pages for the last {} requests)",
                settled.requests,
                last.pages,
                last.requests - settled.requests
            );
        }
    }
    Ok(MemorySummary {
        line: format!(
            "memory: requests={} tokens={} pages_at_{}={} pages_at_{}={} growth_pct={:.1} replay_records={} replay_bound={replay} token_cache={}",
            last.requests,
            run.distinct_tokens,
            base.requests,
            base.pages,
            last.requests,
            last.pages,
            growth * 100.0,
            last.shared_records,
            run.token_cache_entries
        ),
        within,
    })
}

// ---- Envoy ------------------------------------------------------------------------------------

enum Gen {
    Wrk {
        script: PathBuf,
        list: Option<List>,
    },
    Oha {
        headers: Vec<(&'static str, String)>,
    },
}

/// A DPoP configuration's proofs: a fresh file before every run, sized from the fastest rate
/// seen so far (the list never runs out, and every proof's `iat` is recent).
struct ProofPool {
    alg: &'static str,
    /// Requests per second to provision for: a generous first guess, then 2 × the best seen.
    rate: f64,
    best: f64,
}

/// What must be true of the counters after a run, besides "every response was a 200".
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// No filter: the direct_response answered.
    Plain,
    /// jwt_authn allowed every request; `cached`: from its JWT cache (else never from it).
    JwtAuthn { cached: bool },
    /// mcp-guard allowed every request and denied none.
    Guard,
}

struct Config {
    id: &'static str,
    label: &'static str,
    envoy: Envoy,
    gen: Gen,
    check: Check,
    proofs: Option<ProofPool>,
    results: Vec<RunResult>,
    rss_kib: Option<u64>,
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, name: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
    get(after).saturating_sub(get(before))
}

impl Config {
    /// Writes the proofs the next run of `seconds` needs (DPoP configurations only).
    fn provision(&mut self, seconds: u64, m: &Material) -> Result<(), Error> {
        let (
            Some(pool),
            Gen::Wrk {
                list: Some(list), ..
            },
        ) = (&self.proofs, &self.gen)
        else {
            return Ok(());
        };
        let count = (pool.rate * seconds as f64) as usize + 2_000;
        let (key, token) = if pool.alg == "ES256" {
            (&m.es_client, &m.dpop_es_token)
        } else {
            (&m.ed_client, &m.dpop_ed_token)
        };
        let iat = material::now();
        let proofs = material::par_generate(count, |_| material::proof(key, token, iat));
        material::write_lines(&list.file, &proofs)
    }

    fn run(&mut self, seconds: u64, ctx: &Ctx) -> Result<RunResult, Error> {
        self.provision(seconds, &ctx.material)?;
        let before = self.envoy.stats()?;
        let cpu_before = self.envoy.cpu_seconds();
        let mut result = match &self.gen {
            Gen::Wrk { script, .. } => load::run_wrk(script, self.envoy.port, seconds)?,
            Gen::Oha { headers } => load::run_oha(
                self.envoy.port,
                seconds,
                &ctx.body_file,
                headers,
                &ctx.material.tls.client_cert,
                &ctx.material.tls.client_key,
            )?,
        };
        let cpu_after = self.envoy.cpu_seconds();
        let after = self.envoy.stats()?;
        let d = |name: &str| delta(&before, &after, name);
        let hcm = |n: &str| d(&format!("http.{}.downstream_rq_{n}", envoy::STAT_PREFIX));
        let (completed, ok_2xx) = (hcm("completed"), hcm("2xx"));
        let refused = hcm("4xx") + hcm("5xx") + hcm("1xx") + hcm("3xx");
        if let (Some((u0, s0)), Some((u1, s1))) = (cpu_before, cpu_after) {
            let n = completed.max(1) as f64;
            result.envoy_user_us = (u1 - u0) * 1e6 / n;
            result.envoy_sys_us = (s1 - s0) * 1e6 / n;
        }
        // Requests cut at the deadline: the generator stops with up to one request in flight per
        // connection; Envoy may have answered them (oha does not count them) or seen them reset.
        let slack = 2 * u64::from(load::CONNECTIONS);
        let mut problems = Vec::new();
        if result.exhausted {
            problems.push("the proof list ran out (proofs would be replayed)".to_string());
        }
        if result.requests == 0 {
            problems.push("no responses".into());
        }
        if result.not_ok > 0 || result.socket_errors > 0 {
            problems.push(format!(
                "the generator saw {} responses that were not 200 and {} socket errors",
                result.not_ok, result.socket_errors
            ));
        }
        if refused > 0 {
            problems.push(format!(
                "Envoy answered {refused} requests with a status other than 2xx"
            ));
        }
        if completed.saturating_sub(ok_2xx) > slack || ok_2xx.abs_diff(result.requests) > slack {
            problems.push(format!(
                "Envoy completed {completed} requests, {ok_2xx} with 2xx; the generator counted {} responses",
                result.requests
            ));
        }
        match self.check {
            Check::Plain => {}
            Check::JwtAuthn { cached } => {
                let jwt = |n: &str| d(&format!("http.{}.jwt_authn.{n}", envoy::STAT_PREFIX));
                let (allowed, denied, hits) = (jwt("allowed"), jwt("denied"), jwt("jwt_cache_hit"));
                if denied > 0 || allowed.abs_diff(ok_2xx) > slack {
                    problems.push(format!(
                        "jwt_authn allowed {allowed}, denied {denied}; {ok_2xx} answered 2xx"
                    ));
                }
                if cached && hits + slack < allowed {
                    problems.push(format!(
                        "jwt_authn's cache served only {hits} of {allowed} requests"
                    ));
                }
                if !cached && hits > 0 {
                    problems.push(format!(
                        "jwt_authn's cache is off, yet served {hits} requests"
                    ));
                }
            }
            Check::Guard => {
                let (allowed, denied) = (
                    d("wasmcustom.mcp_guard.allowed"),
                    d("wasmcustom.mcp_guard.denied"),
                );
                if denied > 0 || allowed.abs_diff(ok_2xx) > slack {
                    problems.push(format!(
                        "mcp-guard allowed {allowed}, denied {denied}; {ok_2xx} answered 2xx"
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(Error(format!(
                "config {} ({}): {}; a benchmark of refusals is worthless. Envoy log: {}",
                self.id,
                self.label,
                problems.join("; "),
                self.envoy.log.display()
            )));
        }
        result.allowed = match self.check {
            Check::Plain => ok_2xx,
            Check::JwtAuthn { .. } => d(&format!("http.{}.jwt_authn.allowed", envoy::STAT_PREFIX)),
            Check::Guard => d("wasmcustom.mcp_guard.allowed"),
        };
        if let Some(pool) = &mut self.proofs {
            pool.best = pool.best.max(result.rps());
            pool.rate = 2.0 * pool.best;
        }
        Ok(result)
    }
}

struct Ctx {
    material: Material,
    body: String,
    body_file: PathBuf,
}

fn smoke(
    cfg: &Config,
    ctx: &Ctx,
    headers: &[(&str, String)],
    want: u16,
    what: &str,
) -> Result<(), Error> {
    let tls = matches!(cfg.gen, Gen::Oha { .. });
    let url = format!(
        "{}://127.0.0.1:{}/mcp",
        if tls { "https" } else { "http" },
        cfg.envoy.port
    );
    let certs = (
        ctx.material.tls.client_cert.as_path(),
        ctx.material.tls.client_key.as_path(),
    );
    let (status, body) = load::curl(&url, headers, &ctx.body, tls.then_some(certs))?;
    // A 200 must be the trivial upstream's answer (the direct_response), nothing else.
    if status != want || (want == 200 && body != envoy::UPSTREAM_BODY) {
        return Err(Error(format!(
            "config {} ({}): smoke check {what}: expected {want}, got {status} {body}",
            cfg.id, cfg.label
        )));
    }
    Ok(())
}

/// The configurations BENCH_COMPARE_WASM adds, one per .wasm: on the cached-token path (4's
/// twins), or with BENCH_COMPARE_PATH=es256 or eddsa on a DPoP path (6's or 7's).
const COMPARE_IDS: [&str; 6] = ["4b", "4c", "4d", "4e", "4f", "4g"];
const COMPARE_ES256_IDS: [&str; 6] = ["6b", "6c", "6d", "6e", "6f", "6g"];
const COMPARE_EDDSA_IDS: [&str; 6] = ["7b", "7c", "7d", "7e", "7f", "7g"];

fn is_compared(id: &str) -> bool {
    COMPARE_IDS.contains(&id) || COMPARE_ES256_IDS.contains(&id) || COMPARE_EDDSA_IDS.contains(&id)
}

fn envoy_section(root: &Path, dir: &Path, wasm: &Path, wasm_bytes: u64) -> Result<String, Error> {
    let rounds = env_u64("BENCH_ROUNDS", 5).max(1);
    let seconds = env_u64("BENCH_SECONDS", 10).max(1);
    let warmup = env_u64("BENCH_WARMUP_SECONDS", 3).max(1);
    let token_count = env_u64("BENCH_TOKENS", 200_000).max(1) as usize;
    let binary = envoy::binary(root)?;

    println!("\n== Envoy: requests/s, one worker each, loopback ==");
    println!("envoy: {}", envoy::version(&binary));
    println!(
        "load:  wrk ({}) -t1 -c{c}; oha ({}) -c{c} with TOKIO_WORKER_THREADS=1 for the TLS + client certificate listener \
         (wrk cannot present a client certificate)",
        load::tool_version("wrk", "-v"),
        load::tool_version("oha", "--version"),
        c = load::CONNECTIONS
    );
    let t = Instant::now();
    let material = Material::new(dir)?;
    let body = material::tools_call_body();
    let body_file = dir.join("body.json");
    load::write(&body_file, &body)?;
    let tokens_file = dir.join("tokens-es256.txt");
    let tokens = material::par_generate(token_count, |i| {
        material::unbound_token(&material.issuer, material.now, &format!("jwt-{i}"))
    });
    material::write_lines(&tokens_file, &tokens)?;
    let first_token = tokens.first().cloned().unwrap_or_default();
    drop(tokens);
    println!(
        "made:  {token_count} distinct ES256 tokens (configs 3 and 4t, reused in turn), TLS certificates ({:.1} s); \
         DPoP proofs (configs 6, 7) are made before each run, one per request",
        t.elapsed().as_secs_f64()
    );

    let ctx = Ctx {
        material,
        body,
        body_file,
    };
    let m = &ctx.material;
    let jwks = m.jwks();
    let guard = |binding: &str| Front::Guard {
        wasm: wasm.to_path_buf(),
        config: fuel::guard_config(&jwks, binding, fuel::REPLAY_CACHE_ENTRIES),
        access_log: None,
    };
    // The deployment that records every decision in Envoy's access log instead of its log: one
    // filter-state value per request, a buffered file write; refusals still get a log line.
    let audit_log_file = dir.join("config-4a-access.log");
    // Envoy appends: a previous run's records must not count for this one.
    let _ = std::fs::remove_file(&audit_log_file);
    let guard_access_log = Front::Guard {
        wasm: wasm.to_path_buf(),
        config: {
            let mut config = fuel::guard_config(&jwks, "bearer", fuel::REPLAY_CACHE_ENTRIES);
            config["audit"] = serde_json::json!({"log": "denied", "filter_state": "record"});
            config
        },
        access_log: Some(audit_log_file.clone()),
    };
    let bearer = |t: &str| ("Authorization", format!("Bearer {t}"));
    let script =
        |name: &str, headers: &[(&str, String)], list: Option<List>| -> Result<Gen, Error> {
            let path = dir.join(format!("wrk-{name}.lua"));
            load::write(&path, &load::wrk_script(&ctx.body, headers, list.as_ref()))?;
            Ok(Gen::Wrk { script: path, list })
        };
    // The tokens of 3, one per request, in file order.
    let token_list = || List {
        file: tokens_file.clone(),
        header: "Authorization",
        prefix: "Bearer ",
        wrap: true,
    };
    let proof_list = |name: &str| List {
        file: dir.join(format!("proofs-{name}.txt")),
        header: "DPoP",
        prefix: "",
        wrap: false,
    };
    // Before the first (warm-up) run nothing is known: a generous guess.
    let pool = |alg| {
        Some(ProofPool {
            alg,
            rate: 20_000.0,
            best: 0.0,
        })
    };

    type Plan = (
        &'static str,
        &'static str,
        Front,
        bool,
        Gen,
        Check,
        Option<ProofPool>,
    );
    let plans: Vec<Plan> = vec![
        (
            "1",
            "no filter",
            Front::None,
            false,
            script("1", &[], None)?,
            Check::Plain,
            None,
        ),
        (
            "2",
            "jwt_authn ES256, jwt_cache_config on (one token)",
            Front::JwtAuthn {
                jwks: jwks.clone(),
                cache: true,
            },
            false,
            script("2", &[bearer(&m.bearer_token)], None)?,
            Check::JwtAuthn { cached: true },
            None,
        ),
        (
            "3",
            "jwt_authn ES256, cache off (distinct tokens)",
            Front::JwtAuthn {
                jwks: jwks.clone(),
                cache: false,
            },
            false,
            script("3", &[], Some(token_list()))?,
            Check::JwtAuthn { cached: false },
            None,
        ),
        (
            "4",
            "mcp-guard bearer, cached token",
            guard("bearer"),
            false,
            script("4", &[bearer(&m.bearer_token)], None)?,
            Check::Guard,
            None,
        ),
        (
            "4t",
            "mcp-guard bearer, a new ES256 token per request",
            guard("bearer"),
            false,
            // The tokens of 3, in the same order: each request misses the token cache (10,000
            // entries, 200,000 tokens) and verifies a signature, as jwt_authn uncached does.
            script("4t", &[], Some(token_list()))?,
            Check::Guard,
            None,
        ),
        (
            "4a",
            "mcp-guard bearer, cached token, audit to access log",
            guard_access_log,
            false,
            script("4a", &[bearer(&m.bearer_token)], None)?,
            Check::Guard,
            None,
        ),
        (
            "5n",
            "no filter, TLS + client cert (oha)",
            Front::None,
            true,
            Gen::Oha { headers: vec![] },
            Check::Plain,
            None,
        ),
        (
            "5",
            "mcp-guard mTLS-bound token, TLS + client cert (oha)",
            guard("mtls"),
            true,
            Gen::Oha {
                headers: vec![("authorization", format!("Bearer {}", m.mtls_token))],
            },
            Check::Guard,
            None,
        ),
        (
            "6",
            "mcp-guard DPoP ES256, fresh proof per request",
            guard("dpop"),
            false,
            script(
                "6",
                &[("Authorization", format!("DPoP {}", m.dpop_es_token))],
                Some(proof_list("es256")),
            )?,
            Check::Guard,
            pool("ES256"),
        ),
        (
            "7",
            "mcp-guard DPoP EdDSA, fresh proof per request",
            guard("dpop"),
            false,
            script(
                "7",
                &[("Authorization", format!("DPoP {}", m.dpop_ed_token))],
                Some(proof_list("eddsa")),
            )?,
            Check::Guard,
            pool("EdDSA"),
        ),
    ];

    let mut plans = plans;
    // A/B of two builds in one run: the cached-token path again with another .wasm, interleaved
    // with the rest, so a change is judged against the same machine drift.
    // BENCH_COMPARE_WASM=a.wasm:b.wasm:… adds 4b, 4c, … in order.
    let compared: Vec<PathBuf> = std::env::var_os("BENCH_COMPARE_WASM")
        .map(|list| {
            std::env::split_paths(&list)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    // The DPoP path the compared builds run, if not the cached-token one: (alg, token, ids).
    let dpop = match std::env::var("BENCH_COMPARE_PATH").as_deref() {
        Err(_) | Ok("" | "cached") => None,
        Ok("es256") => Some(("ES256", &m.dpop_es_token, COMPARE_ES256_IDS)),
        Ok("eddsa") => Some(("EdDSA", &m.dpop_ed_token, COMPARE_EDDSA_IDS)),
        Ok(other) => return Err(Error(format!("BENCH_COMPARE_PATH={other}: cached, es256 or eddsa"))),
    };
    let ids = dpop.map_or(COMPARE_IDS, |(_, _, ids)| ids);
    for (other, id) in compared.iter().zip(ids) {
        let name = other
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (label, binding, gen, proofs) = match dpop {
            Some((alg, token, _)) => (
                format!("mcp-guard DPoP {alg}, fresh proof per request, {name}"),
                "dpop",
                script(
                    id,
                    &[("Authorization", format!("DPoP {token}"))],
                    Some(proof_list(&format!("{}-{id}", alg.to_ascii_lowercase()))),
                )?,
                pool(alg),
            ),
            None => (format!("mcp-guard bearer, cached token, {name}"), "bearer", script(id, &[bearer(&m.bearer_token)], None)?, None),
        };
        plans.push((
            id,
            Box::leak(label.into_boxed_str()),
            Front::Guard {
                wasm: other.clone(),
                config: fuel::guard_config(&jwks, binding, fuel::REPLAY_CACHE_ENTRIES),
                access_log: None,
            },
            false,
            gen,
            Check::Guard,
            proofs,
        ));
    }
    // A subset (e.g. BENCH_ONLY=1,2,4): ratios whose configurations did not run print NaN.
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        plans.retain(|plan| wanted.contains(&plan.0));
        if plans.is_empty() {
            return Err(Error(format!("BENCH_ONLY={only}: no such configuration (1 2 3 4 5n 5 6 7, 4b…, 6b… or 7b… with BENCH_COMPARE_WASM)")));
        }
    }
    let ids: Vec<&str> = plans.iter().map(|plan| plan.0).collect();
    println!(
        "plan:  {rounds} rounds × {} configurations × {seconds} s, interleaved ({}, {} …) after a {warmup} s warm-up each; \
         every Envoy: --concurrency 1, log level info (the filter's audit line per request is written), \
         buffer filter + direct_response 200 upstream",
        ids.len(),
        ids.join(" "),
        ids.iter().take(2).copied().collect::<Vec<_>>().join(" ")
    );

    let t = Instant::now();
    let mut configs = Vec::new();
    for (id, label, front, mtls, gen, check, proofs) in plans {
        let spec = Spec {
            name: format!("config-{id}"),
            port: envoy::free_port()?,
            front,
            mtls: if mtls { Spec::mtls_files(&m.tls) } else { None },
        };
        let envoy = Envoy::start(&binary, &spec, dir)?;
        configs.push(Config {
            id,
            label,
            envoy,
            gen,
            check,
            proofs,
            results: Vec::new(),
            rss_kib: None,
        });
    }
    println!(
        "start: {} Envoys ready ({:.1} s)",
        configs.len(),
        t.elapsed().as_secs_f64()
    );

    // Smoke checks: each configuration answers the benchmark's request with the direct_response's
    // 200 and, where there is a filter, 401 without credentials (the filter is really in the path).
    let smoke_es = material::proof(&m.es_client, &m.dpop_es_token, material::now());
    let smoke_ed = material::proof(&m.ed_client, &m.dpop_ed_token, material::now());
    for cfg in &configs {
        let good: Vec<(&str, String)> = match cfg.id {
            "1" | "5n" => vec![],
            id if id == "2" || id.starts_with('4') => vec![bearer(&m.bearer_token)],
            "3" => vec![bearer(&first_token)],
            "5" => vec![bearer(&m.mtls_token)],
            "6" => vec![
                ("Authorization", format!("DPoP {}", m.dpop_es_token)),
                ("DPoP", smoke_es.clone()),
            ],
            _ => vec![
                ("Authorization", format!("DPoP {}", m.dpop_ed_token)),
                ("DPoP", smoke_ed.clone()),
            ],
        };
        smoke(cfg, &ctx, &good, 200, "with credentials")?;
        // A compared build may be an experiment that refuses nothing (a floor measurement).
        if !matches!(cfg.id, "1" | "5n") && !is_compared(cfg.id) {
            smoke(cfg, &ctx, &[], 401, "without credentials")?;
        }
        if cfg.id == "5" {
            // The binding is really checked: the same token over a connection with another client
            // certificate (same CA, so the TLS handshake succeeds) is refused.
            let other = (m.tls.other_cert.as_path(), m.tls.other_key.as_path());
            let url = format!("https://127.0.0.1:{}/mcp", cfg.envoy.port);
            let (status, body) = load::curl(&url, &good, &ctx.body, Some(other))?;
            if status != 401 || !body.contains("binding_mismatch") {
                return Err(Error(format!(
                    "config 5: the mTLS-bound token with another client certificate: expected 401 binding_mismatch, got {status} {body}"
                )));
            }
        }
        if cfg.id == "6" {
            // The replay cache is really on: the smoke proof, sent again, is refused.
            smoke(cfg, &ctx, &good, 401, "with a replayed proof")?;
        }
    }
    println!(
        "smoke: every configuration answers the direct_response's 200 with credentials; every filter answers 401 \
         without; the mTLS-bound token with another client certificate and a replayed DPoP proof are refused"
    );

    // Warm-up: JIT, caches, connection pools, and the rate the proof lists are sized from.
    for cfg in &mut configs {
        let r = cfg.run(warmup, &ctx)?;
        eprintln!(
            "warm-up {:<3} {:<52} {:>9.0} req/s",
            cfg.id,
            cfg.label,
            r.rps()
        );
    }

    let load_before = load_average();
    let t = Instant::now();
    for round in 1..=rounds {
        for cfg in &mut configs {
            let r = cfg.run(seconds, &ctx)?;
            eprintln!(
                "round {round}/{rounds} {:<3} {:<52} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  not-200 {}",
                cfg.id,
                cfg.label,
                r.rps(),
                r.p50_ms,
                r.p99_ms,
                r.not_ok + r.socket_errors
            );
            cfg.results.push(r);
        }
    }
    for cfg in &mut configs {
        cfg.rss_kib = cfg.envoy.rss_kib();
    }
    if configs.iter().any(|c| c.id == "4a") {
        // The audit record really reached the access log (Envoy flushes it in 64 KiB blocks).
        // Read line by line: a full run leaves hundreds of megabytes of records.
        use std::io::BufRead;
        let records = std::fs::File::open(&audit_log_file)
            .map(|file| {
                std::io::BufReader::new(file)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| l.contains("\"decision\":\"allow\""))
                    .count()
            })
            .unwrap_or(0);
        if records == 0 {
            return Err(Error(format!(
                "config 4a: no audit record in its access log {}",
                audit_log_file.display()
            )));
        }
        println!("audit: config 4a's access log holds {records} audit records of allowed requests (flushed so far)");
    }
    let load_after = load_average();
    let elapsed = t.elapsed().as_secs_f64();

    Ok(print_table(
        &configs,
        rounds,
        seconds,
        elapsed,
        &load_before,
        &load_after,
        wasm_bytes,
    ))
}

fn print_table(
    configs: &[Config],
    rounds: u64,
    seconds: u64,
    elapsed: f64,
    load_before: &str,
    load_after: &str,
    wasm_bytes: u64,
) -> String {
    let med = |id: &str, f: &dyn Fn(&RunResult) -> f64| -> f64 {
        let mut v: Vec<f64> = configs
            .iter()
            .filter(|c| c.id == id)
            .flat_map(|c| c.results.iter().map(f))
            .collect();
        median(&mut v)
    };
    let per_round = |id: &str| -> Vec<f64> {
        configs
            .iter()
            .filter(|c| c.id == id)
            .flat_map(|c| c.results.iter().map(|r| r.rps()))
            .collect()
    };
    // A ratio is taken within each round (the two runs were seconds apart), then the median over
    // rounds: drift of the machine between rounds cancels.
    let round_ratios = |a: &str, b: &str| -> Vec<f64> {
        let mut v: Vec<f64> = per_round(a)
            .iter()
            .zip(per_round(b))
            .map(|(x, y)| x / y)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let ratio = |a: &str, b: &str| median(&mut round_ratios(a, b));
    let spread = |a: &str, b: &str| {
        let v = round_ratios(a, b);
        format!(
            "{:.2} ({:.2}–{:.2})",
            median(&mut v.clone()),
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN)
        )
    };
    println!("\nper round (req/s):");
    for c in configs {
        let list: Vec<String> = c
            .results
            .iter()
            .map(|r| format!("{:.0}", r.rps()))
            .collect();
        println!("  {:<3} {}", c.id, list.join("  "));
    }
    println!(
        "\n== {} — {rounds} interleaved rounds × {seconds} s per configuration ({elapsed:.0} s); load average before {load_before}, after {load_after} ==",
        shell("date", &["-u", "+%Y-%m-%d"])
    );
    println!(
        "{:<3} {:<52} {:>9} {:>15} {:>8} {:>8} {:>8} {:>7} {:>10} {:>6}",
        "#",
        "configuration",
        "req/s",
        "min–max",
        "p50 ms",
        "p99 ms",
        "not-200",
        "vs 1",
        "CPU µs/req",
        "RSS MB"
    );
    for c in configs {
        let mut v: Vec<f64> = c.results.iter().map(|r| r.rps()).collect();
        let m = median(&mut v);
        let lo = v.first().copied().unwrap_or(f64::NAN);
        let hi = v.last().copied().unwrap_or(f64::NAN);
        let bad: u64 = c.results.iter().map(|r| r.not_ok + r.socket_errors).sum();
        println!(
            "{:<3} {:<52} {:>9.0} {:>15} {:>8.2} {:>8.2} {:>8} {:>7.2} {:>10} {:>6}",
            c.id,
            c.label,
            m,
            format!("{lo:.0}–{hi:.0}"),
            med(c.id, &|r| r.p50_ms),
            med(c.id, &|r| r.p99_ms),
            bad,
            ratio(c.id, "1"),
            format!(
                "{:.1}+{:.1}",
                med(c.id, &|r| r.envoy_user_us),
                med(c.id, &|r| r.envoy_sys_us)
            ),
            c.rss_kib
                .map_or("?".into(), |k| format!("{:.0}", k as f64 / 1024.0))
        );
    }
    println!(
        "   CPU µs/req: the Envoy process's user+system CPU time per response (medians over rounds; all its threads). \
         RSS: after the last round."
    );
    println!(
        "ratios (median over rounds of the ratio within each round, min–max in parentheses; \"vs 1\" likewise):\n   \
         4/2 {} cached token: mcp-guard vs jwt_authn (audit line per decision in Envoy's log, the default)\n   \
         4a/2 {} the same, audit record to the access log, log line for refusals only\n   6/3 {} and 7/3 {} one signature per request: DPoP proof vs jwt_authn uncached\n   \
         4t/3 {} one signature per request: a new access token each time, both uncached\n   \
         5/5n {} mTLS binding, both over TLS with oha (5 vs 1 mixes generators and TLS: compare 5 with 5n)",
        spread("4", "2"),
        spread("4a", "2"),
        spread("6", "3"),
        spread("7", "3"),
        spread("4t", "3"),
        spread("5", "5n")
    );
    // Compared builds against jwt_authn and against the same path with the run's own build.
    for (ids, jwt_authn, own, path) in [
        (COMPARE_IDS, "2", "4", "the cached-token path"),
        (COMPARE_ES256_IDS, "3", "6", "the DPoP ES256 path"),
        (COMPARE_EDDSA_IDS, "3", "7", "the DPoP EdDSA path"),
    ] {
        for c in configs.iter().filter(|c| ids.contains(&c.id)) {
            println!(
                "   {id}/{jwt_authn} {} and {id}/{own} {} {path} with BENCH_COMPARE_WASM",
                spread(c.id, jwt_authn),
                spread(c.id, own),
                id = c.id
            );
        }
    }
    format!(
        "ratios: cached={:.2} cached_access_log={:.2} dpop_es256={:.2} dpop_eddsa={:.2} new_token={:.2} mtls={:.2} none_2={:.2} none_3={:.2} none_4={:.2} none_6={:.2} none_7={:.2} wasm_kib={:.0}",
        ratio("4", "2"),
        ratio("4a", "2"),
        ratio("6", "3"),
        ratio("7", "3"),
        ratio("4t", "3"),
        ratio("5", "5n"),
        ratio("2", "1"),
        ratio("3", "1"),
        ratio("4", "1"),
        ratio("6", "1"),
        ratio("7", "1"),
        wasm_bytes as f64 / 1024.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(999), "999");
        assert_eq!(group_i(-1000), "-1,000");
    }
}
