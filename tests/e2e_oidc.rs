//! End to end with a real authorization server: npm `oidc-provider` (tests/oidc/server.js,
//! installed by `make oidc`) issues JWT access tokens for the MCP resource with the
//! client-credentials grant, DPoP (server nonces required) and resource indicators. The tokens
//! go through real Envoy 1.40 with the built filter, whose `jwks_uri` is the provider's (found
//! in its discovery document) fetched through the `authz` cluster.
//!
//! What is checked: the token shape a real issuer produces (`typ` `at+jwt`, `iss`, `aud` = the
//! resource, `client_id`, `scope`, `cnf.jkt`) and that the filter accepts it in a real rmcp
//! session; and, with the same tokens, each refusal: a scope the token lacks (403), a proof by
//! another key (401), the DPoP-bound token as a Bearer token (401), a token for another
//! resource (401 wrong audience), and an opaque token issued without `resource` (401).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use mcp_guard::jose::b64url_decode;
use mcp_guard::testkit::{ProofSpec, TestKey};
use mcp_guard_demo::agent::{challenge_param, Agent, AgentConfig, RawAnswer, RawRequest};
use mcp_guard_demo::dpop::Holder;
use mcp_guard_demo::envoy::{self, Envoy, Spec};
use mcp_guard_demo::{now_seconds, weather, Error};
use serde_json::{json, Value};

const CLIENT_ID: &str = "mcp-agent";
const CLIENT_SECRET: &str = "e2e-oidc-client-secret";
/// Every scope the MCP resource (and the other one) offers at the provider.
const RESOURCE_SCOPES: &str = "weather:read alerts:write stations:admin docs:read prompts:use";
/// What the client is registered for: not `stations:admin`.
const CLIENT_SCOPES: &str = "weather:read alerts:write docs:read prompts:use";
/// A second resource server the provider issues tokens for; never contacted.
const OTHER_RESOURCE: &str = "https://other.example/api";
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e-oidc","version":"1"}}}"#;

fn must<T>(result: Result<T, Error>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `node tests/oidc/server.js`, killed when dropped (and, since its stdin is our pipe, it also
/// exits by itself should this process die without unwinding).
struct OidcProvider {
    child: Child,
    addr: SocketAddr,
    issuer: String,
    log: PathBuf,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    fn start(dir: &std::path::Path, resources: &[&str]) -> Result<OidcProvider, Error> {
        let root = envoy::workspace_root();
        let oidc_dir = root.join("tests/oidc");
        if !oidc_dir.join("node_modules/oidc-provider/package.json").is_file() {
            return Err(Error::msg(format!(
                "oidc-provider is not installed in {}: run `make oidc` (npm ci; needs node and npm, Debian: apt-get install nodejs npm)",
                oidc_dir.display()
            )));
        }
        let node = std::env::var_os("NODE_BIN").map_or_else(|| PathBuf::from("node"), PathBuf::from);
        fs::create_dir_all(dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
        let log = dir.join("oidc-provider.log");
        let log_file = fs::File::create(&log).map_err(|e| Error::msg(format!("{}: {e}", log.display())))?;
        let mut command = Command::new(&node);
        command
            .arg(oidc_dir.join("server.js"))
            .args(["--port", "0", "--exit-with-stdin"])
            .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
            .args(["--scopes", RESOURCE_SCOPES, "--client-scopes", CLIENT_SCOPES]);
        for resource in resources {
            command.args(["--resource", resource]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| Error::msg(format!("cannot run {} (apt-get install nodejs): {e}", node.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| Error::msg("no stdout pipe"))?;
        // From here on, Drop kills it whatever happens.
        let mut provider =
            OidcProvider { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)), issuer: String::new(), log };
        let (lines, ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        // "listening on 127.0.0.1:PORT issuer=http://127.0.0.1:PORT"
        let line = ready.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            Error::msg(format!(
                "oidc-provider printed no ready line within 30 s:\n{}",
                fs::read_to_string(&provider.log).unwrap_or_default()
            ))
        })?;
        let rest = line.strip_prefix("listening on ").ok_or_else(|| Error::msg(format!("unexpected line {line:?}")))?;
        let (addr, issuer) =
            rest.split_once(" issuer=").ok_or_else(|| Error::msg(format!("unexpected line {line:?}")))?;
        provider.addr = addr.parse().map_err(|e| Error::msg(format!("{line:?}: {e}")))?;
        provider.issuer = issuer.to_string();
        Ok(provider)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `application/x-www-form-urlencoded` (RFC 6749 §B).
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// A JWT's header and claims, undecoded signature left aside.
fn jwt_parts(token: &str) -> Option<(Value, Value)> {
    let mut parts = token.split('.');
    let (header, claims, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let decode = |part: &str| serde_json::from_slice::<Value>(&b64url_decode(part)?).ok();
    Some((decode(header)?, decode(claims)?))
}

/// The provider's token endpoint, with DPoP proofs and the server nonce it hands out.
struct TokenEndpoint {
    url: String,
    nonce: Mutex<Option<String>>,
    /// How often the provider answered `use_dpop_nonce`.
    nonce_challenges: AtomicUsize,
}

struct TokenAnswer {
    status: u16,
    body: Value,
}

impl TokenEndpoint {
    /// A DPoP proof for `POST <token endpoint>` (no `ath`: there is no token yet), with the
    /// last nonce the provider gave.
    fn proof(&self, key: &TestKey) -> String {
        let mut spec = ProofSpec::new(key, "POST", &self.url, now_seconds(), "");
        spec.ath = None;
        if let Some(nonce) = self.nonce.lock().unwrap().clone() {
            spec.extra_claims.insert("nonce".into(), nonce.into());
        }
        spec.sign(key)
    }

    /// A client-credentials token request (client_secret_basic) with `params`, a DPoP proof by
    /// `key` when given; retried once with the provider's nonce when it asks for one.
    async fn request(&self, key: Option<&TestKey>, params: &[(&str, &str)]) -> TokenAnswer {
        let mut pairs = vec![("grant_type", "client_credentials")];
        pairs.extend_from_slice(params);
        let http = must(mcp_guard_demo::agent::http_client(), "HTTP client");
        for attempt in 0..2 {
            let mut request = http
                .post(&self.url)
                .timeout(Duration::from_secs(10))
                .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(form(&pairs));
            if let Some(key) = key {
                request = request.header("dpop", self.proof(key));
            }
            let response = request.send().await.unwrap_or_else(|e| panic!("POST {}: {e}", self.url));
            let status = response.status().as_u16();
            if let Some(nonce) = response.headers().get("dpop-nonce").and_then(|v| v.to_str().ok()) {
                *self.nonce.lock().unwrap() = Some(nonce.to_string());
            }
            let text = response.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("token answer {text:?}: {e}"));
            if status == 400 && body["error"] == "use_dpop_nonce" && attempt == 0 {
                self.nonce_challenges.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            return TokenAnswer { status, body };
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// An access token, or a panic with the provider's answer.
    async fn token(&self, key: &TestKey, params: &[(&str, &str)]) -> (String, Value) {
        let answer = self.request(Some(key), params).await;
        assert_eq!(answer.status, 200, "token request {params:?}: {}", answer.body);
        let token = answer.body["access_token"].as_str().expect("access_token").to_string();
        (token, answer.body)
    }
}

/// The provider, the demo MCP server and Envoy with the filter, configured from the provider's
/// discovery document.
struct Stack {
    provider: OidcProvider,
    discovery: Value,
    mcp_url: String,
    envoy: Envoy,
    agent: Agent,
    tokens: TokenEndpoint,
}

impl Stack {
    async fn start(name: &str) -> Stack {
        let wasm = must(envoy::filter_wasm(), "the filter");
        must(envoy::binary(), "Envoy");
        // Envoy's port is picked free and released before Envoy binds it: should another
        // process take it in between, start again on another.
        let mut attempt = 1;
        loop {
            match Stack::try_start(name, wasm.clone()).await {
                Ok(stack) => return stack,
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => attempt += 1,
                Err(e) => panic!("starting the stack: {e}"),
            }
        }
    }

    async fn try_start(name: &str, wasm: PathBuf) -> Result<Stack, Error> {
        let listen_port = envoy::free_port()?;
        let mcp_url = format!("http://127.0.0.1:{listen_port}/mcp");
        let provider = OidcProvider::start(&envoy::work_dir(name), &[&mcp_url, OTHER_RESOURCE])?;
        let http = mcp_guard_demo::agent::http_client()?;

        let well_known = format!("{}/.well-known/openid-configuration", provider.issuer);
        let discovery: Value = http
            .get(&well_known)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| Error::msg(format!("GET {well_known}: {e}")))?
            .json()
            .await
            .map_err(|e| Error::msg(format!("GET {well_known}: {e}")))?;
        let field = |name: &str| {
            discovery[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::msg(format!("discovery has no {name}: {discovery}")))
        };
        let (issuer, jwks_uri, token_endpoint) = (field("issuer")?, field("jwks_uri")?, field("token_endpoint")?);

        let mcp_listener = mcp_guard_demo::net::bind("127.0.0.1:0".parse().unwrap()).await?;
        let mcp_server = mcp_listener.local_addr().unwrap();
        // Serves until the test's runtime ends.
        tokio::spawn(weather::serve(mcp_listener));
        let spec = Spec {
            name: name.to_string(),
            wasm,
            plugin_config: plugin_config(&issuer, &jwks_uri, &mcp_url),
            listen_port,
            tls: None,
            mcp_server,
            authz: provider.addr,
            concurrency: 1,
        };
        let envoy = Envoy::start(&spec).await?;
        let agent =
            Agent::new(AgentConfig { mcp_url: mcp_url.clone(), htu: mcp_url.clone(), issuer_url: issuer }, false)?;
        let tokens =
            TokenEndpoint { url: token_endpoint, nonce: Mutex::new(None), nonce_challenges: AtomicUsize::new(0) };
        Ok(Stack { provider, discovery, mcp_url, envoy, agent, tokens })
    }

    async fn upstream_requests(&self) -> u64 {
        must(self.envoy.counter("cluster.mcp_server.upstream_rq_total").await, "admin stats")
    }

    /// Sends `request`, expecting the filter to refuse it with `status` and `reason`, and checks
    /// that nothing reached the MCP server.
    async fn expect_refusal(&self, case: &str, request: &RawRequest, status: u16, reason: &str) -> RawAnswer {
        let before = self.upstream_requests().await;
        let answer = must(self.agent.send_raw(request).await, case);
        assert_eq!(
            (answer.status, answer.reason().as_deref()),
            (status, Some(reason)),
            "{case}: {} {:?}",
            answer.body,
            answer.challenges()
        );
        assert_eq!(self.upstream_requests().await, before, "{case}: the refusal reached the MCP server");
        answer
    }

    /// Sends `request`, expecting the filter to let it through to the MCP server.
    async fn expect_forwarded(&self, case: &str, request: &RawRequest) -> RawAnswer {
        let before = self.upstream_requests().await;
        let answer = must(self.agent.send_raw(request).await, case);
        assert_eq!(answer.status, 200, "{case}: {}", answer.body);
        assert_eq!(self.upstream_requests().await, before + 1, "{case}: not forwarded");
        answer
    }
}

fn plugin_config(issuer: &str, jwks_uri: &str, mcp_url: &str) -> Value {
    json!({
        "issuer": issuer,
        "audience": mcp_url,
        "jwks_uri": {"cluster": "authz", "url": jwks_uri, "refresh_seconds": 300},
        "binding": "dpop",
        "public_url": mcp_url,
        "dpop": {"algorithms": ["ES256", "EdDSA"], "max_age_seconds": 60, "clock_skew_seconds": 5},
        "resource_metadata": {"authorization_servers": [issuer]},
        "policy": {
            "tools": {
                "get_forecast": ["weather:read"],
                "post_alert": ["alerts:write"],
                "decommission_station": ["stations:admin", "alerts:write"]
            },
            "unlisted_tools": "deny",
            "methods": {"resources/read": ["docs:read"]},
            "prompts": {"summarize_week": ["prompts:use"]}
        }
    })
}

fn tool_call(id: u64, tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": tool, "arguments": {"station": "KSEA", "message": "storm"}}})
    .to_string()
}

fn scopes(text: &str) -> BTreeSet<&str> {
    text.split(' ').filter(|s| !s.is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_tokens_pass_the_filter_in_real_envoy_and_each_refusal_holds() {
    let stack = Stack::start("oidc").await;
    let issuer = stack.provider.issuer.clone();
    let url = stack.mcp_url.clone();
    assert_eq!(stack.discovery["issuer"], json!(issuer));
    let algs = &stack.discovery["dpop_signing_alg_values_supported"];
    assert!(algs.as_array().is_some_and(|a| a.contains(&json!("ES256"))), "{algs}");
    // The filter loaded the provider's keys through the authz cluster before Envoy was ready.
    assert!(stack.envoy.counter("cluster.authz.upstream_rq_total").await.unwrap() >= 1);

    // A token for the MCP resource, bound to a key made here.
    let key = Arc::new(TestKey::es256());
    let (token, response) = stack.tokens.token(&key, &[("resource", &url), ("scope", "weather:read docs:read")]).await;
    assert!(
        stack.tokens.nonce_challenges.load(Ordering::Relaxed) >= 1,
        "the provider requires DPoP nonces: the first request must have been told use_dpop_nonce"
    );
    assert_eq!(response["token_type"], "DPoP", "{response}");
    let (header, claims) = jwt_parts(&token).unwrap_or_else(|| panic!("not a JWT: {token}"));
    println!("oidc-provider access token header: {header}\nclaims: {claims}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    let jwks: Value = mcp_guard_demo::agent::http_client()
        .unwrap()
        .get(stack.discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .expect("GET jwks_uri")
        .json()
        .await
        .expect("JWKS");
    let kids: Vec<&Value> = jwks["keys"].as_array().expect("keys").iter().map(|k| &k["kid"]).collect();
    assert!(kids.contains(&&header["kid"]), "kid {} not in the JWKS {jwks}", header["kid"]);
    assert_eq!(claims["iss"], json!(issuer), "{claims}");
    assert_eq!(claims["aud"], json!(url), "{claims}");
    assert_eq!(claims["client_id"], CLIENT_ID, "{claims}");
    assert_eq!(scopes(claims["scope"].as_str().expect("scope")), scopes("weather:read docs:read"), "{claims}");
    assert_eq!(claims["cnf"]["jkt"], json!(key.thumbprint()), "{claims}");
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert!(exp > iat && exp > now_seconds(), "{claims}");

    // The provider's own policy: this client is not registered for stations:admin.
    let refused =
        stack.tokens.request(Some(&key), &[("resource", &url), ("scope", "weather:read stations:admin")]).await;
    assert_eq!((refused.status, &refused.body["error"]), (400, &json!("invalid_scope")), "{}", refused.body);

    // Accepted: a real rmcp session through Envoy, every request with a fresh proof (ath).
    let holder = Arc::new(Holder::new(Arc::clone(&key), token.clone(), url.clone()));
    let before = stack.upstream_requests().await;
    let session = must(stack.agent.connect(Arc::clone(&holder)).await, "MCP initialize through Envoy");
    let forecast =
        session.call_tool("get_forecast", json!({"station": "KSEA"})).await.expect("tools/call get_forecast");
    assert!(forecast.starts_with("Forecast for KSEA"), "{forecast}");
    // The identity the filter took from the provider's token and handed to the server.
    for expected in [
        format!("x-mcp-guard-agent={CLIENT_ID}"),
        format!("x-mcp-guard-subject={CLIENT_ID}"),
        format!("x-mcp-guard-issuer={issuer}"),
        format!("x-mcp-guard-scopes={}", claims["scope"].as_str().unwrap()),
        format!("x-mcp-guard-key={}", key.thumbprint()),
        "x-mcp-guard-binding=dpop".to_string(),
    ] {
        assert!(forecast.contains(&expected), "{expected:?} missing from {forecast}");
    }
    must(session.close().await, "DELETE");
    assert!(stack.upstream_requests().await >= before + 3, "the session did not reach the server");

    // The same token and key in a raw request: forwarded; the refusals below differ from it in
    // one thing each.
    stack.expect_forwarded("raw initialize", &RawRequest::post(INITIALIZE).signed(&holder)).await;

    // A tool needing a scope the token lacks: 403 and a step-up challenge naming it.
    let request = RawRequest::post(tool_call(7, "post_alert")).signed(&holder);
    let answer = stack.expect_refusal("missing scope", &request, 403, "insufficient_scope").await;
    let challenge = answer.challenges().join(" | ");
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    assert_eq!(challenge_param(&challenge, "scope").as_deref(), Some("alerts:write"), "{challenge}");

    // The same token with a proof by another key.
    let thief = Holder::new(Arc::new(TestKey::es256()), token.clone(), url.clone());
    let request = RawRequest::post(INITIALIZE).signed(&thief);
    stack.expect_refusal("proof by another key", &request, 401, "binding_mismatch").await;

    // The DPoP-bound token as a Bearer token without a proof.
    let request = RawRequest::post(INITIALIZE).header("authorization", &format!("Bearer {token}"));
    let answer = stack.expect_refusal("bearer without proof", &request, 401, "binding_mismatch").await;
    assert!(answer.challenges().iter().any(|c| c.contains("error=\"invalid_token\"")), "{:?}", answer.challenges());

    // A token the provider issued for another resource: signed by the same key, wrong audience.
    let (other, _) = stack.tokens.token(&key, &[("resource", OTHER_RESOURCE), ("scope", "weather:read")]).await;
    let (_, other_claims) = jwt_parts(&other).expect("a JWT for the other resource");
    assert_eq!(other_claims["aud"], OTHER_RESOURCE, "{other_claims}");
    let foreign = Holder::new(Arc::clone(&key), other, url.clone());
    let request = RawRequest::post(INITIALIZE).signed(&foreign);
    stack.expect_refusal("token for another resource", &request, 401, "wrong_audience").await;

    // No `resource`: the provider issues an opaque token (no audience, no JWT) that the filter
    // cannot verify.
    let (opaque, _) = stack.tokens.token(&key, &[("scope", "weather:read")]).await;
    assert!(jwt_parts(&opaque).is_none(), "expected an opaque token without resource: {opaque}");
    let unaddressed = Holder::new(Arc::clone(&key), opaque, url.clone());
    let request = RawRequest::post(INITIALIZE).signed(&unaddressed);
    stack.expect_refusal("token without resource", &request, 401, "invalid_token").await;

    // The provider served every request without an internal error.
    let log = stack.provider.log_text();
    assert!(!log.contains("oidc server error"), "{log}");
}
