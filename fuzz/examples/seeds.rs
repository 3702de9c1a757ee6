//! Writes the seed corpus `fuzz/seeds/<target>/` from the bodies, tokens, proofs, key sets,
//! configurations and tools lists the tests use (`make fuzz-seeds`; the output is committed).
//! Deterministic: the keys are the fixed ones of `mcp_guard_fuzz`, so signed seeds verify in
//! the targets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use jwt_simple::prelude::{ES256KeyPair, ES384KeyPair};
use mcp_guard::jose::b64url_encode;
use mcp_guard::testkit::{vectors, TestKey};
use mcp_guard_fuzz::*;
use serde_json::{json, Value};

struct Out {
    dir: PathBuf,
    count: usize,
}

impl Out {
    fn new(root: &Path, target: &str) -> Out {
        let dir = root.join(target);
        if dir.exists() {
            // Crash inputs kept as regression seeds (`regress-*`) are not ours to rewrite.
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if !path.file_name().unwrap().to_string_lossy().starts_with("regress-") {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        std::fs::create_dir_all(&dir).unwrap();
        Out { dir, count: 0 }
    }

    fn put(&mut self, name: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.dir.join(name), bytes.as_ref()).unwrap();
        self.count += 1;
    }
}

fn text(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

fn mcp_body(out: &mut Out) {
    let call = |id: u64, tool: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"city": "Paris"}}});
    out.put("tools_call", text(&call(1, "get_forecast")));
    out.put("batch", text(&json!([call(1, "get_forecast"), call(2, "delete_repo")])));
    out.put("escaped_name", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u0064elete_repo"}}"#);
    out.put("duplicate_method", br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"delete_repo"}}"#);
    out.put("duplicate_nested", br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":1,"x":2}}}"#);
    out.put("not_json", b"{oops");
    out.put("tools_list", br#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#);
    out.put("tools_list_string_id", br#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{"cursor":"c1"}}"#);
    out.put("resources_read", br#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"file:///docs/a.md"}}"#);
    out.put("resources_subscribe", br#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"file:///docs/a.md"}}"#);
    out.put("prompts_get", br#"{"jsonrpc":"2.0","id":"p","method":"prompts/get","params":{"name":"summarize","arguments":{}}}"#);
    out.put("initialize", br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"agent","version":"1.0"}}}"#);
    out.put("notification", br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    out.put("response_result", br#"{"jsonrpc":"2.0","id":7,"result":{"roots":[]}}"#);
    out.put("response_error", br#"{"jsonrpc":"2.0","id":"s-1","error":{"code":-32601,"message":"no"}}"#);
    out.put("mixed_batch", br#"[{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}},{"jsonrpc":"2.0","id":9,"result":{}},{"jsonrpc":"2.0","id":-3,"method":"ping"}]"#);
    out.put("big_integer", br#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#);
    out.put("max_integers", br#"{"jsonrpc":"2.0","id":-9223372036854775808,"method":"tools/call","params":{"name":"a","arguments":{"n":18446744073709551615,"f":1.5e300,"z":-0}}}"#);
    out.put("surrogates", br#"{"jsonrpc":"2.0","id":"\ud83d\ude00","method":"tools/call","params":{"name":"\ud800"}}"#);
    out.put("whitespace_bom", b"\xef\xbb\xbf {\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\n");
    out.put("deep", format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"a","arguments":{}1{}}}}}"#, "[".repeat(62), "]".repeat(62)));
    out.put("bad_version", br#"{"jsonrpc":2.0,"id":null,"method":["tools/call"],"params":[]}"#);
}

fn claims(scope: &str) -> serde_json::Map<String, Value> {
    let mut c = serde_json::Map::new();
    c.insert("iss".into(), ISSUER.into());
    c.insert("aud".into(), AUDIENCE.into());
    c.insert("sub".into(), "user-123".into());
    c.insert("client_id".into(), "agent-7".into());
    c.insert("iat".into(), NOW.into());
    c.insert("exp".into(), (NOW + 600).into());
    c.insert("jti".into(), "at-1".into());
    c.insert("scope".into(), scope.into());
    c.insert("cnf".into(), json!({"jkt": holder_key().thumbprint()}));
    c
}

fn proof_claims() -> serde_json::Map<String, Value> {
    let mut c = serde_json::Map::new();
    c.insert("jti".into(), "proof-1".into());
    c.insert("htm".into(), "POST".into());
    c.insert("htu".into(), PUBLIC_URL.into());
    c.insert("iat".into(), NOW.into());
    c.insert("ath".into(), ath(ACCESS_TOKEN).into());
    c
}

fn jose(out: &mut Out) {
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": KID});
    let pair = |h: &Value, c: &Value| format!("{}\n{}", text(h), text(c));
    let signed = |h: &Value, c: &Value| sign_compact(issuer_key(), text(h).as_bytes(), text(c).as_bytes());
    let good = Value::Object(claims("weather:read repo:admin"));

    // Raw access tokens.
    out.put("0_token", format!("0{}", signed(&header, &good)));
    let mut expired = claims("weather:read");
    expired.insert("exp".into(), (NOW - 60).into());
    out.put("0_token_expired", format!("0{}", signed(&header, &Value::Object(expired))));
    let none_header = b64url_encode(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#);
    out.put("0_alg_none", format!("0{none_header}.{}.", b64url_encode(text(&good).as_bytes())));
    let es = TestKey::Es256(ES256KeyPair::from_bytes(&[0x11; 32]).unwrap());
    out.put("0_other_key", format!("0{}", es.sign_jws(&json!({"typ": "at+jwt", "kid": KID}), &good)));
    out.put("0_not_a_jws", "0Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU");

    // Header and claims to be signed by the issuer key.
    out.put("1_good", pair(&header, &good));
    // The good seeds must pass every check, or the fuzzer starts below the claim checks.
    let expect = mcp_guard::token::Expectations { issuer: ISSUER, audience: AUDIENCE, clock_skew_seconds: SKEW };
    let token = signed(&header, &good);
    let verified = mcp_guard::token::UntrustedToken::parse(&token).unwrap().verify(keyset(), &expect, NOW).unwrap();
    assert_eq!(verified.claims().scopes, vec!["weather:read", "repo:admin"]);
    let mut c = claims("");
    c.insert("aud".into(), json!(["https://other.example.com", AUDIENCE]));
    c.insert("scp".into(), json!(["weather:read", "a b"]));
    c.insert("nbf".into(), (NOW - 10).into());
    c.insert("exp".into(), json!(1_800_000_600.5));
    c.insert("act".into(), json!({"sub": "agent-7", "act": {"sub": "orchestrator", "client_id": "o", "iss": ISSUER}}));
    out.put("1_aud_list_scp_act", pair(&json!({"alg": "Ed25519", "typ": "application/at+jwt"}), &Value::Object(c)));
    let mut c = claims("repo:admin");
    c.insert("cnf".into(), json!({"x5t#S256": b64url_encode(&[7u8; 32])}));
    c.remove("client_id");
    c.insert("azp".into(), "agent-8".into());
    out.put("1_mtls_azp", pair(&json!({"alg": "EdDSA", "typ": "JWT"}), &Value::Object(c)));
    let mut c = claims("x");
    c.remove("cnf");
    c.remove("exp");
    c.insert("iat".into(), (NOW + 3600).into());
    out.put("1_unbound_no_exp", pair(&json!({"alg": "EdDSA", "kid": KID, "crit": ["exp"]}), &Value::Object(c)));
    out.put("1_wrong_typ", pair(&json!({"alg": "EdDSA", "typ": "dpop+jwt", "kid": "k2"}), &good));
    out.put("1_claims_not_object", pair(&header, &json!(["iss", ISSUER])));

    // DPoP proofs for POST https://mcp.example.com/mcp with ACCESS_TOKEN.
    let proof_header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": Value::Object(holder_key().public_jwk())});
    let proof = |h: &Value, c: &Value| sign_compact(holder_key(), text(h).as_bytes(), text(c).as_bytes());
    out.put("2_proof", format!("2{}", proof(&proof_header, &Value::Object(proof_claims()))));
    out.put("2_rfc9449_fig13", format!("2{}", vectors::RFC9449_FIG13_PROOF));
    let mut c = proof_claims();
    c.insert("htm".into(), "GET".into());
    out.put("2_wrong_method", format!("2{}", proof(&proof_header, &Value::Object(c))));

    out.put("3_good", pair(&proof_header, &Value::Object(proof_claims())));
    let htu = mcp_guard::uri::AbsoluteUrl::parse(PUBLIC_URL).unwrap();
    let ctx = mcp_guard::dpop::ProofContext { method: "POST", htu: &htu, access_token: ACCESS_TOKEN };
    let good_proof = proof(&proof_header, &Value::Object(proof_claims()));
    let verified = mcp_guard::dpop::verify_proof(&good_proof, &ctx, &dpop_settings(), NOW).unwrap();
    assert_eq!(verified.jkt, holder_key().thumbprint());
    let mut c = proof_claims();
    c.insert("htu".into(), "HTTPS://MCP.example.com:443/mcp?x=1#f".into());
    c.insert("iat".into(), json!(1_799_999_990.25));
    c.insert("nonce".into(), "n-1".into());
    out.put("3_htu_variants", pair(&json!({"typ": "application/dpop+jwt", "alg": "Ed25519", "jwk": Value::Object(holder_key().public_jwk())}), &Value::Object(c)));
    let mut jwk = holder_key().public_jwk();
    jwk.insert("d".into(), "AAAA".into());
    out.put("3_private_jwk", pair(&json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": Value::Object(jwk)}), &Value::Object(proof_claims())));
    let mut c = proof_claims();
    c.insert("iat".into(), (NOW - 3600).into());
    c.insert("jti".into(), "".into());
    out.put("3_stale_empty_jti", pair(&json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": Value::Object(es.public_jwk())}), &Value::Object(c)));
}

fn jwks(out: &mut Out) {
    let es256 = TestKey::Es256(ES256KeyPair::from_bytes(&[0x11; 32]).unwrap());
    let es384 = TestKey::Es384(ES384KeyPair::from_bytes(&[0x22; 48]).unwrap());
    let rsa: Value = serde_json::from_str(vectors::RFC7638_JWK).unwrap();
    out.put("issuer", text(&issuer_jwks()));
    out.put("mixed", text(&json!({"keys": [
        es256.jwks_entry("ec"), es384.jwks_entry("ec384"), rsa, holder_key().jwks_entry("ed"),
        {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA", "use": "sig"},
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}
    ]})));
    out.put("symmetric", br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"hmac","alg":"HS256"}]}"#);
    let set = mcp_guard::jwks::KeySet::from_jwks_bytes(&std::fs::read(out.dir.join("mixed")).unwrap()).unwrap();
    assert_eq!((set.len(), set.skipped), (4, 2));
    let mut pinned = es256.public_jwk();
    pinned.insert("alg".into(), "ES256".into());
    let mut wrong = holder_key().public_jwk();
    wrong.insert("alg".into(), "ES256".into());
    out.put("pinned_and_wrong_alg", text(&json!({"keys": [pinned, wrong]})));
    let mut private = issuer_key().public_jwk();
    private.insert("d".into(), "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A".into());
    out.put("private", text(&json!({"keys": [private]})));
    out.put("lone_jwk", vectors::RFC7638_JWK);
    out.put("no_kid_dup_kid", text(&json!({"keys": [es256.public_jwk(), es384.jwks_entry("k"), es256.jwks_entry("k")]})));
    out.put("not_keys", br#"{"keys":{"kty":"EC"},"extra":[1,2]}"#);
}

fn config(out: &mut Out, policies: &Path) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(policies).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for path in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        out.put(&format!("policy_{name}"), std::fs::read(&path).unwrap());
    }
    // The scenario suite's configuration (tests/lib.rs World::config), with inline keys.
    let world = mcp_guard::testkit::scenario_config(ISSUER, AUDIENCE, issuer_jwks(), ISSUER);
    out.put("world", serde_json::to_string_pretty(&world).unwrap());
    mcp_guard::config::Config::from_json(world.to_string().as_bytes()).unwrap();
    out.put("minimal_bearer", text(&json!({
        "issuer": ISSUER, "audience": AUDIENCE, "binding": "bearer", "public_url": "http://127.0.0.1:8080/",
        "jwks_uri": {"cluster": "authz", "url": "http://127.0.0.1:9000/jwks", "timeout_ms": 100},
        "forward_token": true, "clock_skew_seconds": 0, "token_cache_entries": 1,
        "resource_metadata": {"resource_name": "Demo", "authorization_servers": ["https://a", "https://b"]}
    })));
    out.put("refused_unknown_field", text(&json!({
        "issuer": ISSUER, "audience": AUDIENCE, "jwks": issuer_jwks(), "binding": "dpop_or_mtls",
        "public_url": "https://mcp.example.com/a/../mcp?x", "dpop": {"algorithms": ["PS256", "HS256"], "replay_cache_entries": 63},
        "policy": {"tools": {"t": ["bad scope"]}, "unlisted_tools": "maybe"}, "polcy": {}
    })));
}

fn listing(out: &mut Out) {
    // The first byte: bit 0 selects the event stream, bits 1-2 the scopes (see the target).
    let list = |id: Value| json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
        {"name": "get_forecast", "inputSchema": {"type": "object"}},
        {"name": "delete_repo", "inputSchema": {"type": "object"}},
        {"name": "both"},
        {"name": "unlisted", "inputSchema": {"type": "object"}}
    ], "nextCursor": "c2"}});
    out.put("json_single", format!("\x02{}", text(&list(json!(1)))));
    out.put("json_batch", format!("\x06{}", text(&json!([list(json!("a")), {"jsonrpc": "2.0", "id": 2, "result": {}}, list(json!(3))]))));
    out.put("json_error_and_method", format!("\x00{}", text(&json!([{"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "x"}}, {"jsonrpc": "2.0", "id": 1, "method": "x", "result": {"tools": [{"name": "delete_repo"}]}}]))));
    out.put("json_bad_shape", format!("\x00{}", text(&json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"title": "x"}]}}))));
    out.put(
        "sse",
        format!(
            "\x03event: message\nid: 7\ndata: {}\n\n: keepalive\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}}\n\n",
            text(&list(json!(1)))
        ),
    );
    out.put("sse_crlf_multiline", format!("\x05retry: 10\r\ndata: {{\"jsonrpc\":\"2.0\",\r\ndata: \"id\":\"a\",\"result\":{{\"tools\":[{{\"name\":\"delete_repo\"}},{{\"name\":\"get_forecast\"}}]}}}}\r\n\r\ndata:[{}]", text(&list(json!(1)))));
    out.put("sse_unreadable", "\x01data: {\"jsonrpc\": \"2.0\", \"id\": 1, \"result\": {\"tools\": [\n\n");
}

fn main() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = fuzz_dir.join("seeds");
    let policies = fuzz_dir.join("../policies");
    let mut total = 0;
    type Generator<'a> = &'a dyn Fn(&mut Out);
    let generators: [(&str, Generator); 5] = [
        ("mcp_body", &mcp_body),
        ("jose", &jose),
        ("jwks", &jwks),
        ("config", &|o: &mut Out| config(o, &policies)),
        ("listing", &listing),
    ];
    for (target, generate) in generators {
        let mut out = Out::new(&root, target);
        generate(&mut out);
        println!("{target}: {} seeds in {}", out.count, out.dir.display());
        total += out.count;
    }
    println!("{total} seeds");
}
