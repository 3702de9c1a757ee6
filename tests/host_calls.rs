//! The host calls the built filter makes for one request: each costs Envoy about a quarter of a
//! microsecond (bench/README.md), so one the request does not need must not creep in unseen.
//! Here: the client certificate's digest is read only for a certificate-bound token.

use mcp_guard::testkit::{TestIssuer, TestKey};
use mcp_guard_harness::{Harness, Outcome};
use serde_json::json;

const NOW: u64 = 1_800_000_000;

fn harness(issuer: &TestIssuer, binding: &str) -> Harness {
    let mut h = Harness::load(mcp_guard_tests::wasm_path()).unwrap();
    h.set_time(NOW);
    let config = json!({
        "issuer": issuer.issuer, "audience": issuer.audience, "jwks": issuer.jwks(),
        "binding": binding, "public_url": "https://mcp.example.com/mcp",
        "policy": {"tools": {"get_forecast": ["weather:read"]}, "unlisted_tools": "deny"}
    });
    h.configure(&config.to_string()).unwrap();
    h
}

/// `proxy_get_property` calls made by one allowed `tools/call` with this token and certificate.
fn property_reads(h: &mut Harness, token: &str, cert_hex: Option<&str>) -> u64 {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "get_forecast", "arguments": {}}})
    .to_string();
    let reads = |h: &Harness| h.abi_calls().get("proxy_get_property").copied().unwrap_or(0);
    let before = reads(h);
    let mut b = h
        .request()
        .method("POST")
        .path("/mcp")
        .authority("mcp.example.com")
        .scheme("https")
        .header("authorization", &format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("content-length", &body.len().to_string());
    if let Some(hex) = cert_hex {
        b = b.property(&["connection", "sha256_peer_certificate_digest"], hex.as_bytes().to_vec());
    }
    let outcome = b.body(body).upstream_response(200, &[("content-type", "application/json")], "{}").send().unwrap();
    assert!(matches!(outcome, Outcome::Forwarded(_)), "{outcome}");
    reads(h) - before
}

#[test]
fn the_certificate_is_read_only_for_a_certificate_bound_token() {
    let issuer = TestIssuer::new(TestKey::es256());
    let digest = [7u8; 32];
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();

    // A bearer token over a connection with a certificate: nothing to compare, no read.
    let mut bearer = harness(&issuer, "bearer");
    let token = issuer.token(&issuer.claims(NOW, "weather:read"));
    assert_eq!(property_reads(&mut bearer, &token, Some(&hex)), 0);
    assert_eq!(property_reads(&mut bearer, &token, None), 0);

    // A token bound to that certificate: one read per request, and it must match.
    let mut mtls = harness(&issuer, "mtls");
    let bound = issuer.mtls_token(NOW, "weather:read", &digest);
    assert_eq!(property_reads(&mut mtls, &bound, Some(&hex)), 1);
    assert_eq!(property_reads(&mut mtls, &bound, Some(&hex)), 1, "the cached token reads it again");
}
