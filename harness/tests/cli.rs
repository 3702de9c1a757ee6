//! The `mcp-guard-harness` command, run against the test plugin.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::test_plugin;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-guard-harness")).args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-guard-harness-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_refusal_prints_the_status_and_reason() {
    let wasm = test_plugin();
    let config = temp_file("refusal-config.json", "{}");
    let request = temp_file("refusal.json", r#"{"method":"POST","path":"/mcp","headers":{"x-test-action":"reply"},"body":"{}"}"#);
    let r = run(&["--wasm", s(&wasm), "--config", s(&config), "--request", s(&request)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("decision: refused"), "{}", r.stdout);
    assert!(r.stdout.contains("status: 403"), "{}", r.stdout);
    assert!(r.stdout.contains("reason: denied"), "{}", r.stdout);
}

#[test]
fn a_forwarded_http_text_request_lists_the_upstream_headers() {
    let wasm = test_plugin();
    let config = temp_file("fwd-config.json", "{}");
    let request = temp_file("fwd.http", "GET /status HTTP/1.1\r\nHost: mcp.example.com\r\nX-Test-Action: property\r\n\r\n");
    let r = run(&["--wasm", s(&wasm), "--config", s(&config), "--request", s(&request), "--cert-sha256", "AB12", "--verbose"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("decision: forwarded"), "{}", r.stdout);
    assert!(r.stdout.contains("  :authority: mcp.example.com"), "{}", r.stdout);
    assert!(r.stdout.contains("  x-cert: ab12"), "{}", r.stdout);
    assert!(r.stdout.contains("filter log:"), "{}", r.stdout);
}

#[test]
fn an_http_call_is_answered_with_the_jwks_file_or_left_pending() {
    let wasm = test_plugin();
    let config = temp_file("call-config.json", "{}");
    let request = temp_file("call.json", r#"{"headers":[["x-test-action","call"]]}"#);
    let pending = run(&["--wasm", s(&wasm), "--config", s(&config), "--request", s(&request)]);
    assert_eq!(pending.code, 3, "{}{}", pending.stdout, pending.stderr);
    assert!(pending.stdout.contains("waiting for: HTTP call to cluster authz (GET /keys)"), "{}", pending.stdout);
    let jwks = temp_file("jwks.json", r#"{"keys":[]}"#);
    let answered = run(&["--wasm", s(&wasm), "--config", s(&config), "--request", s(&request), "--jwks", s(&jwks)]);
    assert_eq!(answered.code, 0, "{}{}", answered.stdout, answered.stderr);
    assert!(answered.stdout.contains(r#"x-call-body: {"keys":[]}"#), "{}", answered.stdout);
}

#[test]
fn errors_are_one_line_with_exit_code_2() {
    let wasm = test_plugin();
    let config = temp_file("err-config.json", "{}");
    let request = temp_file("err.json", "{}");

    let missing = run(&["--wasm", s(&wasm), "--config", "/nonexistent/policy.json", "--request", s(&request)]);
    assert_eq!(missing.code, 2);
    assert!(missing.stderr.contains("cannot read the configuration /nonexistent/policy.json"), "{}", missing.stderr);
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);

    let rejected_config = temp_file("reject.json", "reject");
    let rejected = run(&["--wasm", s(&wasm), "--config", s(&rejected_config), "--request", s(&request)]);
    assert_eq!(rejected.code, 2);
    assert!(rejected.stderr.contains("the filter rejected") && rejected.stderr.contains("rejected on purpose"), "{}", rejected.stderr);

    let bad_request = temp_file("bad.json", "{not json");
    let unreadable = run(&["--wasm", s(&wasm), "--config", s(&config), "--request", s(&bad_request)]);
    assert_eq!(unreadable.code, 2);
    assert!(unreadable.stderr.contains("cannot understand the request"), "{}", unreadable.stderr);

    let no_wasm = run(&["--wasm", "/nonexistent/x.wasm", "--config", s(&config), "--request", s(&request)]);
    assert_eq!(no_wasm.code, 2);
    assert!(no_wasm.stderr.contains("cargo build -p mcp-guard"), "{}", no_wasm.stderr);

    let usage = run(&["--config", s(&config)]);
    assert_eq!(usage.code, 2);
    assert!(run(&["--help"]).stdout.contains("usage: mcp-guard-harness"));
}

/// The CLI on a real policy from `policies/` with the real filter: a call without a token is
/// refused with the challenge, and the metadata document is served.
#[test]
fn the_real_filter_explains_a_policy_decision() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = std::env::var_os("MCP_GUARD_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/wasm32-wasip1/release/mcp_guard.wasm"));
    assert!(wasm.is_file(), "{} is not built: run `make wasm`", wasm.display());
    let policy = root.join("policies/weather-dpop.json");
    let jwks = temp_file("policy-jwks.json", r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}"#);

    let call = temp_file(
        "policy-call.http",
        "POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nContent-Type: application/json\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"get_forecast\"}}",
    );
    let r = run(&["--wasm", s(&wasm), "--config", s(&policy), "--request", s(&call), "--jwks", s(&jwks)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("decision: refused"), "{}", r.stdout);
    assert!(r.stdout.contains("status: 401"), "{}", r.stdout);
    assert!(r.stdout.contains("missing_token"), "{}", r.stdout);
    assert!(r.stdout.contains("resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""), "{}", r.stdout);

    let prm = temp_file("policy-prm.json", r#"{"method":"GET","path":"/.well-known/oauth-protected-resource/mcp","authority":"mcp.example.com"}"#);
    let r = run(&["--wasm", s(&wasm), "--config", s(&policy), "--request", s(&prm), "--jwks", s(&jwks)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("status: 200"), "{}", r.stdout);
}
