//! The scenario table: every behaviour the filter promises, as requests and expected answers,
//! written once and run against two targets — the native decision core and the built `.wasm`
//! inside the harness — so the two cannot drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mcp_guard::guard::{Decision, Env, Guard, HeadVerdict, RequestHead};
use mcp_guard::config::{Config, KeySource};
use mcp_guard::jose::sha256;
use mcp_guard::replay::MemoryStore;
use mcp_guard::testkit::{hex, scenario_config, ProofSpec, TestIssuer, TestKey};
use mcp_guard::token::TokenCache;
use mcp_guard_harness::{Harness, Outcome as WasmOutcome};
use serde_json::{json, Map, Value};

pub const NOW: u64 = 1_800_000_000;
pub const PUBLIC_URL: &str = "https://mcp.example.com/mcp";

/// Keys and identities a scenario is built from, generated fresh for each run.
pub struct World {
    pub issuer: TestIssuer,
    /// The agent's DPoP key.
    pub client: TestKey,
    /// Another DPoP key (the thief's).
    pub thief: TestKey,
    pub ed_client: TestKey,
    /// SHA-256 of the client certificate's DER, as Envoy reports it for mTLS.
    pub cert_digest: [u8; 32],
}

impl World {
    pub fn new() -> World {
        World {
            issuer: TestIssuer::new(TestKey::es256()),
            client: TestKey::es256(),
            thief: TestKey::es256(),
            ed_client: TestKey::ed25519(),
            cert_digest: sha256(format!("client certificate {:?}", std::time::SystemTime::now()).as_bytes()),
        }
    }

    /// The configuration most scenarios use; `patch` replaces top-level members.
    pub fn config(&self, patch: Value) -> Value {
        let mut config = scenario_config(&self.issuer.issuer, &self.issuer.audience, self.issuer.jwks(), "https://auth.example.com");
        if let Value::Object(patch) = patch {
            for (k, v) in patch {
                config[k] = v;
            }
        }
        config
    }

    pub fn dpop_token(&self, scope: &str) -> String {
        self.issuer.dpop_token(NOW, scope, &self.client)
    }

    pub fn token_with(&self, scope: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> String {
        let mut claims = self.issuer.claims(NOW, scope);
        claims.insert("cnf".into(), json!({"jkt": self.client.thumbprint()}));
        edit(&mut claims);
        self.issuer.token(&claims)
    }

    /// A DPoP request: token and a fresh proof by `self.client` for this method and path.
    pub fn dpop_request(&self, method: &str, path: &str, token: &str) -> Req {
        self.dpop_request_at(method, path, token, NOW)
    }

    /// A DPoP request whose proof is made, and which the filter sees, at `now`.
    pub fn dpop_request_at(&self, method: &str, path: &str, token: &str, now: u64) -> Req {
        let proof = ProofSpec::new(&self.client, method, &format!("https://mcp.example.com{path}"), now, token).sign(&self.client);
        Req::new(method, path).header("authorization", &format!("DPoP {token}")).header("dpop", &proof).at(now)
    }

    pub fn call(&self, tool: &str, scope: &str) -> Req {
        self.dpop_request("POST", "/mcp", &self.dpop_token(scope)).json(&tools_call(1, tool))
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

pub fn tools_call(id: u64, tool: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"city": "Paris"}}})
}

/// A request as a client sends it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Option<Vec<u8>>,
    /// Hex SHA-256 of the client certificate, when the connection is mTLS.
    pub cert_sha256_hex: Option<String>,
    /// The time the filter sees.
    pub now: u64,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Req {
        Req { method: method.into(), path: path.into(), headers: Vec::new(), body: None, cert_sha256_hex: None, now: NOW }
    }
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }
    pub fn without_header(mut self, name: &str) -> Req {
        self.headers.retain(|(k, _)| k != name);
        self
    }
    pub fn json(self, body: &Value) -> Req {
        self.raw_body("application/json", body.to_string().into_bytes())
    }
    pub fn raw_body(mut self, content_type: &str, body: Vec<u8>) -> Req {
        self = self.without_header("content-type").header("content-type", content_type);
        self.body = Some(body);
        self
    }
    pub fn cert(mut self, digest: &[u8; 32]) -> Req {
        self.cert_sha256_hex = Some(hex(digest));
        self
    }
    pub fn at(mut self, now: u64) -> Req {
        self.now = now;
        self
    }
}

/// What happened to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the upstream.
    Forwarded,
    /// Answered by the filter.
    Reply { status: u32, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Still held (waiting for keys).
    Pending,
}

impl Outcome {
    pub fn status(&self) -> Option<u32> {
        match self {
            Outcome::Reply { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// `error.data.reason` of a JSON-RPC error body.
    pub fn reason(&self) -> Option<String> {
        let Outcome::Reply { body, .. } = self else { return None };
        let v: Value = serde_json::from_slice(body).ok()?;
        v["error"]["data"]["reason"].as_str().map(str::to_string)
    }
    pub fn challenges(&self) -> Vec<String> {
        match self {
            Outcome::Reply { headers, .. } => headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
                .map(|(_, v)| v.clone())
                .collect(),
            _ => Vec::new(),
        }
    }
    pub fn body_json(&self) -> Value {
        match self {
            Outcome::Reply { body, .. } => serde_json::from_slice(body).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }
}

/// What a scenario expects.
#[derive(Debug, Clone)]
pub enum Expect {
    Forwarded,
    /// Status, reason code, and text each `WWW-Authenticate` challenge joined must contain.
    Refused { status: u32, reason: &'static str, challenge: Vec<String> },
    /// A reply that is not a refusal (the metadata document): status and a body member.
    Served { status: u32, body_has: &'static str },
}

pub fn refused(status: u32, reason: &'static str) -> Expect {
    Expect::Refused { status, reason, challenge: Vec::new() }
}

pub fn refused_with(status: u32, reason: &'static str, challenge: &[&str]) -> Expect {
    Expect::Refused { status, reason, challenge: challenge.iter().map(|s| s.to_string()).collect() }
}

pub struct Scenario {
    pub name: &'static str,
    pub config: Value,
    /// Sent in order to one configured filter (so replays and caches carry over).
    pub steps: Vec<(Req, Expect)>,
}

/// Something that runs the filter: the native core or the `.wasm` in the harness.
pub trait Target {
    fn configure(&mut self, config: &Value) -> Result<(), String>;
    fn send(&mut self, req: &Req) -> Outcome;
}

pub fn check(name: &str, step: usize, outcome: &Outcome, expect: &Expect) {
    let shown = match outcome {
        Outcome::Reply { status, headers, body } => format!("reply {status} {headers:?} {}", String::from_utf8_lossy(body)),
        other => format!("{other:?}"),
    };
    let ctx = format!("scenario {name:?} step {step}: got {shown}");
    match expect {
        Expect::Forwarded => assert_eq!(outcome, &Outcome::Forwarded, "{ctx}"),
        Expect::Refused { status, reason, challenge } => {
            assert_eq!(outcome.status(), Some(*status), "{ctx}");
            assert_eq!(outcome.reason().as_deref(), Some(*reason), "{ctx}");
            let body = outcome.body_json();
            assert_eq!(body["jsonrpc"], "2.0", "{ctx}");
            assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{ctx}");
            let joined = outcome.challenges().join(" | ");
            for part in challenge {
                assert!(joined.contains(part.as_str()), "{ctx}: challenge {joined:?} lacks {part:?}");
            }
            if matches!(status, 401 | 403) {
                assert!(joined.contains("resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""), "{ctx}");
            }
        }
        Expect::Served { status, body_has } => {
            assert_eq!(outcome.status(), Some(*status), "{ctx}");
            assert!(outcome.body_json().get(*body_has).is_some(), "{ctx}");
        }
    }
}

/// Runs every scenario against targets made by `make`.
pub fn run_all<T: Target>(mut make: impl FnMut() -> T) {
    let world = World::new();
    let table = scenarios(&world);
    assert!(table.len() >= 30, "the table shrank");
    for scenario in table {
        let mut target = make();
        target.configure(&scenario.config).unwrap_or_else(|e| panic!("scenario {:?}: configure: {e}", scenario.name));
        for (i, (req, expect)) in scenario.steps.iter().enumerate() {
            let outcome = target.send(req);
            check(scenario.name, i, &outcome, expect);
        }
    }
}

fn one(name: &'static str, config: Value, req: Req, expect: Expect) -> Scenario {
    Scenario { name, config, steps: vec![(req, expect)] }
}

/// The table.
pub fn scenarios(w: &World) -> Vec<Scenario> {
    let base = w.config(json!({}));
    let dpop_challenge = "DPoP algs=\"ES256 EdDSA\"";
    let mut table = vec![
        one("allowed tools/call with the tool's scope", base.clone(), w.call("get_forecast", "weather:read"), Expect::Forwarded),
        one(
            "no token",
            base.clone(),
            Req::new("POST", "/mcp").json(&tools_call(1, "get_forecast")),
            refused_with(401, "missing_token", &[dpop_challenge]),
        ),
        one(
            "missing scope is a step-up challenge",
            base.clone(),
            w.call("delete_repo", "weather:read"),
            refused_with(403, "insufficient_scope", &["error=\"insufficient_scope\"", "scope=\"repo:admin\""]),
        ),
        one("unlisted tool denied", base.clone(), w.call("rm_rf", "weather:read repo:admin"), refused(403, "tool_not_allowed")),
        one("unlisted tool allowed when configured", w.config(json!({"policy": {"unlisted_tools": "allow"}})), w.call("rm_rf", ""), Expect::Forwarded),
        one(
            "batch: one element denied denies all",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read"))
                .json(&json!([tools_call(1, "get_forecast"), tools_call(2, "delete_repo")])),
            // The step-up names everything the batch needs, so one new token covers it.
            refused_with(403, "insufficient_scope", &["scope=\"repo:admin weather:read\""]),
        ),
        one(
            "batch: all elements allowed",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read repo:admin"))
                .json(&json!([tools_call(1, "get_forecast"), tools_call(2, "delete_repo")])),
            Expect::Forwarded,
        ),
        one(
            "escaped tool name is the tool it spells",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read")).raw_body(
                "application/json",
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\u0064elete_repo"}}"#.to_vec(),
            ),
            refused_with(403, "insufficient_scope", &["scope=\"repo:admin\""]),
        ),
        one(
            "expired token",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read")).json(&tools_call(1, "get_forecast")).at(NOW + 700),
            refused_with(401, "expired", &["error=\"invalid_token\""]),
        ),
        one(
            "token for another resource",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.token_with("weather:read", |c| {
                c.insert("aud".into(), json!("https://other.example.com/mcp"));
            }))
            .json(&tools_call(1, "get_forecast")),
            refused_with(401, "wrong_audience", &["error=\"invalid_token\""]),
        ),
        one(
            "token from another issuer key",
            base.clone(),
            {
                let forger = TestIssuer::new(TestKey::es256());
                let token = forger.dpop_token(NOW, "weather:read", &w.client);
                w.dpop_request("POST", "/mcp", &token).json(&tools_call(1, "get_forecast"))
            },
            refused(401, "invalid_token"),
        ),
        one(
            "alg none token",
            base.clone(),
            {
                let good = w.dpop_token("weather:read");
                let payload = good.split('.').nth(1).unwrap().to_string();
                let header = mcp_guard::jose::b64url_encode(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#);
                w.dpop_request("POST", "/mcp", &format!("{header}.{payload}.AA")).json(&tools_call(1, "get_forecast"))
            },
            refused(401, "invalid_token"),
        ),
        one(
            "DPoP-bound token sent as Bearer",
            w.config(json!({"binding": "dpop_or_mtls"})),
            Req::new("POST", "/mcp").header("authorization", &format!("Bearer {}", w.dpop_token("weather:read"))).json(&tools_call(1, "get_forecast")),
            refused_with(401, "binding_mismatch", &["error=\"invalid_token\""]),
        ),
        one(
            "DPoP scheme without a proof",
            base.clone(),
            w.call("get_forecast", "weather:read").without_header("dpop"),
            refused_with(401, "invalid_dpop_proof", &["error=\"invalid_dpop_proof\""]),
        ),
        one(
            "two DPoP proof headers",
            base.clone(),
            {
                let req = w.call("get_forecast", "weather:read");
                let proof = req.headers.iter().find(|(k, _)| k == "dpop").unwrap().1.clone();
                req.header("dpop", &String::from_utf8(proof).unwrap())
            },
            refused(401, "invalid_dpop_proof"),
        ),
        one(
            "proof for another URL",
            base.clone(),
            {
                let token = w.dpop_token("weather:read");
                let proof = ProofSpec::new(&w.client, "POST", "https://mcp.example.com/other", NOW, &token).sign(&w.client);
                Req::new("POST", "/mcp").header("authorization", &format!("DPoP {token}")).header("dpop", &proof).json(&tools_call(1, "get_forecast"))
            },
            refused(401, "invalid_dpop_proof"),
        ),
        one(
            "proof signed by a thief's key (not the token's cnf.jkt)",
            base.clone(),
            {
                let token = w.dpop_token("weather:read");
                let proof = ProofSpec::new(&w.thief, "POST", PUBLIC_URL, NOW, &token).sign(&w.thief);
                Req::new("POST", "/mcp").header("authorization", &format!("DPoP {token}")).header("dpop", &proof).json(&tools_call(1, "get_forecast"))
            },
            refused(401, "binding_mismatch"),
        ),
        one(
            "stale proof",
            base.clone(),
            w.call("get_forecast", "weather:read").at(NOW + 61),
            refused(401, "invalid_dpop_proof"),
        ),
        {
            let req = w.call("get_forecast", "weather:read");
            Scenario {
                name: "replayed proof",
                config: base.clone(),
                steps: vec![(req.clone(), Expect::Forwarded), (req.at(NOW + 1), refused_with(401, "dpop_replay", &["error=\"invalid_dpop_proof\""]))],
            }
        },
        {
            let token = w.dpop_token("weather:read");
            Scenario {
                name: "a token serves many requests, each with a fresh proof",
                config: base.clone(),
                steps: (0..3)
                    .map(|i| (w.dpop_request("POST", "/mcp", &token).json(&tools_call(i, "get_forecast")).at(NOW + i), Expect::Forwarded))
                    .collect(),
            }
        },
        one(
            "Ed25519 proof that says alg Ed25519",
            base.clone(),
            {
                let token = w.issuer.dpop_token(NOW, "weather:read", &w.ed_client);
                let mut spec = ProofSpec::new(&w.ed_client, "POST", PUBLIC_URL, NOW, &token);
                spec.alg = Some("Ed25519".into());
                Req::new("POST", "/mcp").header("authorization", &format!("DPoP {token}")).header("dpop", &spec.sign(&w.ed_client)).json(&tools_call(1, "get_forecast"))
            },
            Expect::Forwarded,
        ),
        one(
            "malformed body: duplicate method",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read")).raw_body(
                "application/json",
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"delete_repo"}}"#.to_vec(),
            ),
            refused(400, "malformed_request"),
        ),
        one(
            "malformed body: not JSON",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read")).raw_body("application/json", b"{oops".to_vec()),
            refused(400, "malformed_request"),
        ),
        one(
            "body over max_body_bytes",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read"))
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "get_forecast", "arguments": {"pad": "x".repeat(5000)}}})),
            refused(413, "body_too_large"),
        ),
        one(
            "body that is not JSON by content type",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read")).raw_body("text/plain", tools_call(1, "get_forecast").to_string().into_bytes()),
            refused(415, "malformed_request"),
        ),
        one(
            "compressed body",
            base.clone(),
            w.call("get_forecast", "weather:read").header("content-encoding", "gzip"),
            refused(415, "malformed_request"),
        ),
        one(
            "token in the query string",
            base.clone(),
            {
                let token = w.dpop_token("weather:read");
                Req::new("POST", &format!("/mcp?access_token={token}")).json(&tools_call(1, "get_forecast"))
            },
            refused(400, "malformed_request"),
        ),
        one("GET opens the SSE stream with a bound token", base.clone(), w.dpop_request("GET", "/mcp", &w.dpop_token("")), Expect::Forwarded),
        one("DELETE ends the session with a bound token", base.clone(), w.dpop_request("DELETE", "/mcp", &w.dpop_token("")), Expect::Forwarded),
        one("GET without a token", base.clone(), Req::new("GET", "/mcp"), refused(401, "missing_token")),
        one("PUT is not an MCP method", base.clone(), w.dpop_request("PUT", "/mcp", &w.dpop_token("")), refused(405, "malformed_request")),
        one(
            "protected resource metadata needs no token",
            base.clone(),
            Req::new("GET", "/.well-known/oauth-protected-resource/mcp"),
            Expect::Served { status: 200, body_has: "authorization_servers" },
        ),
        one(
            "resources/read needs its method scope",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read"))
                .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "file:///docs/a.md"}})),
            refused_with(403, "insufficient_scope", &["scope=\"docs:read\""]),
        ),
        one(
            "resources/read with docs:read",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("docs:read"))
                .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "file:///docs/a.md"}})),
            Expect::Forwarded,
        ),
        one(
            "prompts/get of a listed prompt needs its scope",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read"))
                .json(&json!({"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": "summarize"}})),
            refused_with(403, "insufficient_scope", &["scope=\"prompts:use\""]),
        ),
        one(
            "tools/list needs only a valid bound token",
            base.clone(),
            w.dpop_request("POST", "/mcp", &w.dpop_token("")).json(&json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})),
            Expect::Forwarded,
        ),
        one(
            "mTLS-bound token with its certificate",
            w.config(json!({"binding": "mtls"})),
            Req::new("POST", "/mcp")
                .header("authorization", &format!("Bearer {}", w.issuer.mtls_token(NOW, "weather:read", &w.cert_digest)))
                .json(&tools_call(1, "get_forecast"))
                .cert(&w.cert_digest),
            Expect::Forwarded,
        ),
        one(
            "mTLS-bound token from another certificate",
            w.config(json!({"binding": "mtls"})),
            Req::new("POST", "/mcp")
                .header("authorization", &format!("Bearer {}", w.issuer.mtls_token(NOW, "weather:read", &w.cert_digest)))
                .json(&tools_call(1, "get_forecast"))
                .cert(&[7u8; 32]),
            refused_with(401, "binding_mismatch", &["Bearer error=\"invalid_token\""]),
        ),
        one(
            "mTLS-bound token without a client certificate",
            w.config(json!({"binding": "mtls"})),
            Req::new("POST", "/mcp")
                .header("authorization", &format!("Bearer {}", w.issuer.mtls_token(NOW, "weather:read", &w.cert_digest)))
                .json(&tools_call(1, "get_forecast")),
            refused(401, "binding_mismatch"),
        ),
        one(
            "an mtls-only server refuses DPoP-bound tokens",
            w.config(json!({"binding": "mtls"})),
            w.call("get_forecast", "weather:read").cert(&w.cert_digest),
            refused(401, "binding_mismatch"),
        ),
        one(
            "unbound token on a bearer server",
            w.config(json!({"binding": "bearer"})),
            Req::new("POST", "/mcp")
                .header("authorization", &format!("Bearer {}", w.issuer.token(&w.issuer.claims(NOW, "weather:read"))))
                .json(&tools_call(1, "get_forecast")),
            Expect::Forwarded,
        ),
        one(
            "unbound token on a dpop server",
            base.clone(),
            Req::new("POST", "/mcp")
                .header("authorization", &format!("Bearer {}", w.issuer.token(&w.issuer.claims(NOW, "weather:read"))))
                .json(&tools_call(1, "get_forecast")),
            refused(401, "binding_mismatch"),
        ),
        one(
            "Mcp-Method and Mcp-Name that match the body",
            base.clone(),
            w.call("get_forecast", "weather:read").header("mcp-method", "tools/call").header("mcp-name", "get_forecast"),
            Expect::Forwarded,
        ),
        one(
            "Mcp-Name naming another tool than the body",
            base.clone(),
            w.call("get_forecast", "weather:read").header("mcp-method", "tools/call").header("mcp-name", "delete_repo"),
            refused(400, "malformed_request"),
        ),
        one(
            "Mcp-Method naming another method than the body",
            base.clone(),
            w.call("get_forecast", "weather:read").header("mcp-method", "tools/list"),
            refused(400, "malformed_request"),
        ),
        one(
            "GET with a body",
            base.clone(),
            w.dpop_request("GET", "/mcp", &w.dpop_token("")).json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})),
            refused(400, "malformed_request"),
        ),
        one(
            "two Authorization headers",
            base.clone(),
            w.call("get_forecast", "weather:read").header("authorization", "Bearer second"),
            refused_with(400, "malformed_request", &["error=\"invalid_request\""]),
        ),
        one(
            "an Authorization token with a character outside token68",
            base.clone(),
            w.call("get_forecast", "weather:read").without_header("authorization").header("authorization", "DPoP abc,def"),
            refused_with(400, "malformed_request", &["error=\"invalid_request\""]),
        ),
        one(
            "an Authorization scheme with no token",
            base.clone(),
            w.call("get_forecast", "weather:read").without_header("authorization").header("authorization", "Bearer  "),
            refused_with(400, "malformed_request", &["error=\"invalid_request\""]),
        ),
        one(
            "POST without a content type",
            base.clone(),
            w.call("get_forecast", "weather:read").without_header("content-type"),
            refused(415, "malformed_request"),
        ),
        one(
            "Basic credentials are no token",
            base.clone(),
            Req::new("POST", "/mcp").header("authorization", "Basic dXNlcjpwYXNz").json(&tools_call(1, "get_forecast")),
            refused(401, "missing_token"),
        ),
    ];
    table.shrink_to_fit();
    table
}

/// The native core, driven the way the proxy glue drives it.
pub struct NativeTarget {
    guard: Option<Guard>,
    tokens: TokenCache,
    store: MemoryStore,
}

impl NativeTarget {
    pub fn new() -> NativeTarget {
        NativeTarget { guard: None, tokens: TokenCache::new(100), store: MemoryStore::default() }
    }
}

impl Default for NativeTarget {
    fn default() -> Self {
        NativeTarget::new()
    }
}

fn reply_outcome(reply: &mcp_guard::answer::LocalReply) -> Outcome {
    Outcome::Reply { status: reply.status, headers: reply.headers.clone(), body: reply.body.clone() }
}

impl Target for NativeTarget {
    fn configure(&mut self, config: &Value) -> Result<(), String> {
        let config = Config::from_json(config.to_string().as_bytes()).map_err(|e| e.to_string())?;
        self.guard = Some(Guard::new(config));
        Ok(())
    }

    fn send(&mut self, req: &Req) -> Outcome {
        let guard = self.guard.as_ref().expect("configured");
        let head = RequestHead {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
        };
        let cert = req.cert_sha256_hex.as_ref().map(|h| h.as_bytes().to_vec());
        let client_cert_sha256_hex = || cert.clone();
        let mut head = head;
        if let Some(body) = &req.body {
            head.headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        match guard.on_head(&head) {
            HeadVerdict::Reply(reply, _) => return reply_outcome(&reply),
            HeadVerdict::ReadBody | HeadVerdict::Decide => {}
        }
        let keys = match &guard.config.keys {
            KeySource::Inline(keys) => Some(keys),
            KeySource::Remote(_) => None,
        };
        let mut env = Env {
            now: req.now,
            keys,
            may_fetch_keys: false,
            tokens: &mut self.tokens,
            replay_store: &mut self.store,
            replay_tag: 1,
            client_cert_sha256_hex: &client_cert_sha256_hex,
        };
        let body = req.body.clone().or_else(|| (req.method == "POST").then(Vec::new));
        let decision = guard.decide(&head, body.as_deref(), &mut env);
        audit_writer_agrees(&head, &decision, req.now);
        match decision {
            Decision::Allow(_) => Outcome::Forwarded,
            Decision::Deny { reply, .. } => reply_outcome(&reply),
            Decision::NeedKeys { .. } => Outcome::Pending,
        }
    }
}

/// The filter writes its audit events with a direct JSON writer; on every decision of the table
/// they must be, byte for byte, what serde_json writes for the `Value` events, and the
/// filter-state facts those of the first event.
fn audit_writer_agrees(head: &RequestHead, decision: &Decision, now: u64) {
    let events = mcp_guard::audit::events(head, decision, now);
    let expected: Vec<String> = events.iter().map(Value::to_string).collect();
    assert_eq!(mcp_guard::audit::events_json(head, decision, now), expected);
    let names = [
        ("decision", "mcp_guard_decision"),
        ("reason", "mcp_guard_reason"),
        ("sub", "mcp_guard_sub"),
        ("agent", "mcp_guard_agent"),
        ("tool", "mcp_guard_tool"),
        ("jkt", "mcp_guard_jkt"),
        ("x5t#S256", "mcp_guard_x5t_S256"),
        ("binding", "mcp_guard_binding"),
    ];
    let from_first: Vec<(&str, &str)> = events
        .first()
        .map(|first| names.iter().filter_map(|(member, key)| Some((*key, first.get(*member)?.as_str()?))).collect())
        .unwrap_or_default();
    assert_eq!(mcp_guard::audit::filter_state_facts(decision), from_first);
}

/// Where the built filter is: `$MCP_GUARD_WASM`, else the workspace's release build.
pub fn wasm_path() -> std::path::PathBuf {
    match std::env::var_os("MCP_GUARD_WASM") {
        Some(path) => path.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/mcp_guard.wasm"),
    }
}

/// Loads the built filter; a missing file fails with the harness's own "how to build it".
pub fn load_filter() -> Harness {
    match Harness::load(wasm_path()) {
        Ok(h) => h,
        Err(e) => panic!("{e}"),
    }
}

/// The built `.wasm` in the harness, driven as Envoy drives it.
pub struct WasmTarget {
    pub harness: Harness,
}

impl WasmTarget {
    pub fn new() -> WasmTarget {
        WasmTarget { harness: load_filter() }
    }
}

impl Default for WasmTarget {
    fn default() -> Self {
        WasmTarget::new()
    }
}

/// The harness's outcome in the table's terms.
pub fn from_wasm(outcome: &WasmOutcome) -> Outcome {
    match outcome {
        WasmOutcome::Forwarded(_) => Outcome::Forwarded,
        WasmOutcome::LocalReply(r) => Outcome::Reply {
            status: r.status,
            headers: r.headers.iter().map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned())).collect(),
            body: r.body.clone(),
        },
        WasmOutcome::Pending { .. } => Outcome::Pending,
        other => panic!("the filter failed the request: {other:?}"),
    }
}

/// Sends a table request through the harness.
pub fn send_wasm(h: &mut Harness, req: &Req) -> WasmOutcome {
    h.set_time(req.now);
    let mut b = h.request().method(&req.method).path(&req.path).authority("mcp.example.com").scheme("https");
    for (k, v) in &req.headers {
        b = b.header_bytes(k, v);
    }
    if let Some(body) = &req.body {
        b = b.header("content-length", &body.len().to_string()).body(body.clone());
    }
    if let Some(cert) = &req.cert_sha256_hex {
        b = b.property(&["connection", "sha256_peer_certificate_digest"], cert.as_bytes().to_vec());
    }
    b.upstream_response(200, &[("content-type", "application/json")], "{}").send().unwrap_or_else(|e| panic!("harness: {e}"))
}

impl Target for WasmTarget {
    fn configure(&mut self, config: &Value) -> Result<(), String> {
        self.harness.configure(&config.to_string()).map_err(|e| e.to_string())
    }

    fn send(&mut self, req: &Req) -> Outcome {
        let outcome = send_wasm(&mut self.harness, req);
        from_wasm(&outcome)
    }
}
