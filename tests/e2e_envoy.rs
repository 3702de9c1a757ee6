//! End to end in real Envoy: Envoy 1.40 (from `.venv`, see `make test`) loads the built
//! `mcp_guard.wasm`; behind it run the demo's rmcp MCP server, and beside it the demo issuer,
//! whose JWKS the filter fetches through the `authz` cluster. Everything binds to free loopback
//! ports; each test starts its own Envoy (killed on drop, also when the test fails), and the
//! issuer and MCP server run as tasks of the test's runtime.
//!
//! What is checked through Envoy: a real rmcp client session (initialize, tools/list,
//! tools/call, prompts/get, resources/read, the SSE GET, DELETE), the demo agent's script, every
//! refusal class with its status, reason and challenge, that no refusal ever reaches the MCP
//! server (`cluster.mcp_server.upstream_rq_total` does not move), the protected-resource
//! metadata, the filter's own stats, key rotation at the issuer without restarting Envoy, and
//! mTLS-bound tokens on a TLS listener that requires client certificates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use mcp_guard::jose::sha256;
use mcp_guard::testkit::{x5t_s256, TestKey};
use mcp_guard_demo::agent::{challenge_param, Agent, AgentConfig, RawAnswer, RawRequest, Refusal};
use mcp_guard_demo::dpop::Holder;
use mcp_guard_demo::envoy::{self, Envoy, Spec, Tls};
use mcp_guard_demo::issuer::{self, Issuer, TokenRequest};
use mcp_guard_demo::{script, weather, Error};
use serde_json::{json, Value};

/// Small, so the oversize case is cheap to send.
const MAX_BODY_BYTES: usize = 16 * 1024;
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}"#;

fn must<T>(result: Result<T, Error>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The demo issuer, the demo MCP server and Envoy with the filter in front of it.
struct Stack {
    issuer: Arc<Issuer>,
    issuer_url: String,
    /// The MCP endpoint through Envoy; also the filter's `public_url` and the tokens' audience.
    mcp_url: String,
    envoy: Envoy,
}

impl Stack {
    /// `binding` is the filter's binding mode; `tls` makes the listener HTTPS with mandatory
    /// client certificates.
    async fn start(name: &str, binding: &str, tls: Option<Tls>) -> Stack {
        Stack::start_with(name, binding, tls, json!({})).await
    }

    /// As `start`, with `patch`'s top-level members replacing the plugin configuration's.
    async fn start_with(name: &str, binding: &str, tls: Option<Tls>, patch: Value) -> Stack {
        let wasm = must(envoy::filter_wasm(), "the filter");
        must(envoy::binary(), "Envoy");
        // Envoy's port is picked free and then released before Envoy binds it: should another
        // process take it in between, start again on another.
        let mut attempt = 1;
        loop {
            match Stack::try_start(name, binding, tls.clone(), wasm.clone(), &patch).await {
                Ok(stack) => return stack,
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => attempt += 1,
                Err(e) => panic!("starting Envoy: {e}"),
            }
        }
    }

    async fn try_start(name: &str, binding: &str, tls: Option<Tls>, wasm: PathBuf, patch: &Value) -> Result<Stack, Error> {
        let issuer_listener = mcp_guard_demo::net::bind("127.0.0.1:0".parse().unwrap()).await?;
        let mcp_listener = mcp_guard_demo::net::bind("127.0.0.1:0".parse().unwrap()).await?;
        let authz = issuer_listener.local_addr().unwrap();
        let mcp_server = mcp_listener.local_addr().unwrap();
        let listen_port = envoy::free_port()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mcp_url = format!("{scheme}://127.0.0.1:{listen_port}/mcp");
        let issuer_url = format!("http://{authz}");
        let issuer = Arc::new(Issuer::new(&issuer_url, &mcp_url));
        // Both serve until the test's runtime ends.
        tokio::spawn(issuer::serve(issuer_listener, Arc::clone(&issuer)));
        tokio::spawn(weather::serve(mcp_listener));
        let spec = Spec {
            name: name.to_string(),
            wasm,
            plugin_config: {
                let mut config = plugin_config(&issuer_url, &mcp_url, binding);
                if let (Some(config), Some(patch)) = (config.as_object_mut(), patch.as_object()) {
                    config.extend(patch.clone());
                }
                config
            },
            listen_port,
            tls,
            mcp_server,
            authz,
            // One worker: the unknown-kid refetch limit is per worker, and one is enough here.
            concurrency: 1,
        };
        let envoy = Envoy::start(&spec).await?;
        Ok(Stack { issuer, issuer_url, mcp_url, envoy })
    }

    fn agent(&self) -> Agent {
        let config = AgentConfig {
            mcp_url: self.mcp_url.clone(),
            htu: self.mcp_url.clone(),
            issuer_url: self.issuer_url.clone(),
        };
        must(Agent::new(config, false), "agent")
    }

    /// Requests Envoy has sent to the MCP server so far.
    async fn upstream_requests(&self) -> u64 {
        must(self.envoy.counter("cluster.mcp_server.upstream_rq_total").await, "admin stats")
    }

    async fn counter(&self, name: &str) -> u64 {
        must(self.envoy.counter(name).await, "admin stats")
    }

    /// Sends `request`, expecting the filter to refuse it with `status` and `reason`, and checks
    /// that nothing reached the MCP server.
    async fn expect_refusal(
        &self,
        agent: &Agent,
        case: &str,
        request: &RawRequest,
        status: u16,
        reason: &str,
    ) -> RawAnswer {
        let before = self.upstream_requests().await;
        let answer = must(agent.send_raw(request).await, case);
        let body: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{case}: the refusal body is not JSON ({e}): {:?}", answer.body));
        assert_eq!((answer.status, answer.reason().as_deref()), (status, Some(reason)), "{case}: {}", answer.body);
        assert_eq!(body["jsonrpc"], "2.0", "{case}: {body}");
        assert_eq!(body["error"]["data"]["status"], json!(status), "{case}: {body}");
        assert_eq!(self.upstream_requests().await, before, "{case}: the refusal reached the MCP server");
        answer
    }
}

fn plugin_config(issuer_url: &str, public_url: &str, binding: &str) -> Value {
    json!({
        "issuer": issuer_url,
        "audience": public_url,
        "jwks_uri": {"cluster": "authz", "url": format!("{issuer_url}/jwks"), "refresh_seconds": 300},
        "binding": binding,
        "public_url": public_url,
        "dpop": {"algorithms": ["ES256", "EdDSA"], "max_age_seconds": 60, "clock_skew_seconds": 5},
        "resource_metadata": {"authorization_servers": [issuer_url]},
        "max_body_bytes": MAX_BODY_BYTES,
        // The access log's format prints the facts one by one.
        "audit": {"filter_state": "fields"},
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
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {"station": "KSEA"}}})
        .to_string()
}

/// A DPoP token bound to a key of the test's own (not the agent's), for crafting bad proofs.
async fn holder_with_own_key(agent: &Agent, key: Arc<TestKey>, request: TokenRequest, htu: &str) -> Holder {
    let request = TokenRequest { dpop_jkt: Some(key.thumbprint()), ..request };
    let token = must(agent.request_token(&request).await, "token");
    Holder::new(key, token.access_token, htu.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_rmcp_session_and_the_demo_script_pass_through_envoy() {
    let stack = Stack::start("session", "dpop", None).await;
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read docs:read prompts:use").await, "token");
    let before = stack.upstream_requests().await;

    let session = must(agent.connect(holder).await, "MCP initialize through Envoy");
    let mut tools = session.tool_names().await.expect("tools/list");
    tools.sort();
    // The server has three tools; the filter lists only those this token may call.
    assert_eq!(tools, ["get_forecast"]);
    let forecast = session.call_tool("get_forecast", json!({"station": "KSEA"})).await.expect("tools/call");
    assert!(forecast.starts_with("Forecast for KSEA"), "{forecast}");
    // The server saw the verified identity the filter added, not the caller's credentials.
    assert!(forecast.contains("x-mcp-guard-scopes=weather:read docs:read prompts:use"), "{forecast}");
    assert!(forecast.contains("x-mcp-guard-tool=get_forecast"), "{forecast}");
    assert!(forecast.contains("x-mcp-guard-binding=dpop"), "{forecast}");
    let prompt = session.get_prompt("summarize_week", json!({"station": "KSEA"})).await.expect("prompts/get");
    assert!(prompt.iter().any(|m| m.contains("station KSEA")), "{prompt:?}");
    let readme = session.read_resource(weather::README_URI).await.expect("resources/read");
    assert!(readme.iter().any(|t| t.starts_with("Weather stations demo")), "{readme:?}");
    let (post, get, delete) = must(session.close().await, "DELETE");
    assert!(post >= 6 && get >= 1 && delete == 1, "proofs sent: POST {post}, GET {get}, DELETE {delete}");

    // Everything the client sent was allowed and reached the server.
    let forwarded = stack.upstream_requests().await - before;
    assert!(
        forwarded >= (post + delete) as u64,
        "{forwarded} requests forwarded, {post} POSTs and {delete} DELETE sent"
    );
    assert!(stack.counter("wasmcustom.mcp_guard.allowed").await >= (post + delete) as u64);
    assert_eq!(stack.counter("wasmcustom.mcp_guard.denied").await, 0);

    // The protected-resource metadata comes from the filter, not the server.
    let before = stack.upstream_requests().await;
    let prm_url = stack.mcp_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp");
    let http = must(mcp_guard_demo::agent::http_client(), "HTTP client");
    let prm: Value = http.get(&prm_url).send().await.expect("PRM").json().await.expect("PRM JSON");
    assert_eq!(prm["resource"], json!(stack.mcp_url), "{prm}");
    assert_eq!(prm["authorization_servers"], json!([stack.issuer_url]), "{prm}");
    assert_eq!(prm["dpop_bound_access_tokens_required"], json!(true), "{prm}");
    assert_eq!(stack.upstream_requests().await, before, "the PRM request reached the MCP server");

    // The demo agent's script, as `make run` shows it.
    let steps = script::run(&stack.agent(), &mut |_| {}).await;
    let failed: Vec<_> = steps.iter().filter(|s| !s.ok).collect();
    assert!(failed.is_empty() && steps.len() == 6, "demo steps: {steps:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_local_reply_that_never_reaches_the_server() {
    let stack = Stack::start("refusals", "dpop", None).await;
    let agent = stack.agent();
    let url = stack.mcp_url.clone();
    let holder = must(agent.dpop_token("weather:read").await, "token");
    let metadata =
        format!("resource_metadata=\"{}\"", url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"));

    // No token: 401 and a bare DPoP challenge naming the metadata document.
    let answer = stack.expect_refusal(&agent, "no token", &RawRequest::post(INITIALIZE), 401, "missing_token").await;
    let challenges = answer.challenges();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(challenges[0].starts_with("DPoP ") && challenges[0].contains(&metadata), "{challenges:?}");
    assert!(!challenges[0].contains("error="), "{challenges:?}");

    // A proof for another URL.
    let key = Arc::new(TestKey::es256());
    let elsewhere =
        holder_with_own_key(&agent, Arc::clone(&key), TokenRequest::default(), "http://127.0.0.1:1/elsewhere").await;
    let request = RawRequest::post(INITIALIZE).signed(&elsewhere);
    let answer = stack.expect_refusal(&agent, "proof for another htu", &request, 401, "invalid_dpop_proof").await;
    let challenge = answer.challenges().join(" | ");
    assert!(challenge.starts_with("DPoP ") && challenge.contains("error=\"invalid_dpop_proof\""), "{challenge}");

    // A stolen token: a valid proof, but by a key that is not the token's.
    let thief = Holder::new(Arc::new(TestKey::es256()), holder.token().to_string(), url.clone());
    let request = RawRequest::post(INITIALIZE).signed(&thief);
    stack.expect_refusal(&agent, "proof by another key", &request, 401, "binding_mismatch").await;

    // Replay: the first request passes, the identical second one does not.
    let captured = RawRequest::post(INITIALIZE).signed(&holder);
    let before = stack.upstream_requests().await;
    let first = must(agent.send_raw(&captured).await, "first send");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(stack.upstream_requests().await, before + 1);
    let answer = stack.expect_refusal(&agent, "replayed proof", &captured, 401, "dpop_replay").await;
    assert!(
        answer.challenges().iter().any(|c| c.contains("error=\"invalid_dpop_proof\"")),
        "{:?}",
        answer.challenges()
    );

    // A token for another resource.
    let other = TokenRequest { aud: Some(json!("https://elsewhere.example/mcp")), ..Default::default() };
    let foreign = holder_with_own_key(&agent, Arc::clone(&key), other, &url).await;
    let request = RawRequest::post(INITIALIZE).signed(&foreign);
    let answer = stack.expect_refusal(&agent, "wrong audience", &request, 401, "wrong_audience").await;
    assert!(answer.challenges().iter().any(|c| c.contains("error=\"invalid_token\"")), "{:?}", answer.challenges());

    // Missing scope: 403 and an MCP step-up challenge naming what the call needs.
    let request = RawRequest::post(tool_call(7, "decommission_station")).signed(&holder);
    let answer = stack.expect_refusal(&agent, "missing scope", &request, 403, "insufficient_scope").await;
    let challenge = answer.challenges().into_iter().next().unwrap_or_default();
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    let mut scope: Vec<String> =
        challenge_param(&challenge, "scope").unwrap_or_default().split(' ').map(String::from).collect();
    scope.sort();
    assert_eq!(scope, ["alerts:write", "stations:admin"], "{challenge}");
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(body["id"], json!(7), "{body}");

    // A tool the policy does not list.
    let request = RawRequest::post(tool_call(8, "format_disk")).signed(&holder);
    stack.expect_refusal(&agent, "unlisted tool", &request, 403, "tool_not_allowed").await;

    // A body that is not JSON-RPC.
    let request = RawRequest::post(r#"{"jsonrpc":"2.0","id":9,"method":"#).signed(&holder);
    stack.expect_refusal(&agent, "malformed body", &request, 400, "malformed_request").await;

    // A body over max_body_bytes.
    let padding = "x".repeat(MAX_BODY_BYTES);
    let big = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                     "params": {"name": "get_forecast", "arguments": {"station": padding}}});
    let request = RawRequest::post(big.to_string()).signed(&holder);
    stack.expect_refusal(&agent, "oversize body", &request, 413, "body_too_large").await;

    // The same refusal through a real rmcp client: the transport surfaces the challenge.
    let session = must(agent.connect(Arc::clone(&holder)).await, "MCP session");
    let error =
        session.call_tool("decommission_station", json!({"station": "KSEA"})).await.expect_err("needs stations:admin");
    let refusal = Refusal::of(&error).unwrap_or_else(|| panic!("not a challenge: {error}"));
    assert_eq!((refusal.status, refusal.error().as_deref()), (403, Some("insufficient_scope")));
    must(session.close().await, "DELETE");

    // The filter counts every decision by reason.
    let stats = must(stack.envoy.stats().await, "admin stats");
    for reason in [
        "missing_token",
        "invalid_dpop_proof",
        "binding_mismatch",
        "dpop_replay",
        "wrong_audience",
        "insufficient_scope",
        "tool_not_allowed",
        "malformed_request",
        "body_too_large",
    ] {
        let name = format!("wasmcustom.mcp_guard.denied.{reason}");
        assert!(stats.get(&name).copied().unwrap_or(0) >= 1, "{name} missing from /stats");
    }
    assert!(stats.get("wasmcustom.mcp_guard.denied").copied().unwrap_or(0) >= 10);
    assert!(stats.get("wasmcustom.mcp_guard.allowed").copied().unwrap_or(0) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_issuer_key_is_fetched_through_the_cluster_without_restarting_envoy() {
    let stack = Stack::start("rotation", "dpop", None).await;
    let agent = stack.agent();
    let fetched_at_start = stack.counter("cluster.authz.upstream_rq_total").await;
    assert!(fetched_at_start >= 1, "the JWKS did not go through the authz cluster");

    let old = must(agent.dpop_token("weather:read").await, "token");
    let answer = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(&old)).await, "old key");
    assert_eq!(answer.status, 200, "{}", answer.body);

    // The issuer switches keys (and publishes only the new one).
    let old_kid = stack.issuer.kid();
    let rotated: Value = must(mcp_guard_demo::agent::http_client(), "HTTP client")
        .post(format!("{}/rotate", stack.issuer_url))
        .send()
        .await
        .expect("POST /rotate")
        .json()
        .await
        .expect("rotate answer");
    assert_ne!(rotated["kid"], json!(old_kid));

    // A token signed by the new key: unknown kid, so the filter refetches and accepts it.
    let new = must(agent.dpop_token("weather:read").await, "token");
    let answer = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(&new)).await, "new key");
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, stack.envoy.log_tail(20));
    assert!(stack.counter("cluster.authz.upstream_rq_total").await > fetched_at_start);

    // The old key is gone from the JWKS: its tokens no longer verify.
    let answer = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(&old)).await, "old key again");
    assert_eq!((answer.status, answer.reason().as_deref()), (401, Some("invalid_token")), "{}", answer.body);
}

/// Certificates for the mTLS test, made with the openssl CLI: a CA, a server certificate for
/// 127.0.0.1, and two client certificates.
struct Pki {
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

impl Pki {
    fn create(name: &str) -> Pki {
        let dir = envoy::workspace_root().join("target/e2e-envoy").join(name).join("pki");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &dir,
            &[
                &["req", "-x509"][..],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=mcp-guard e2e CA"][..],
            ]
            .concat(),
        );
        let pki = Pki { dir };
        pki.issue("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        pki.issue("client-a", "extendedKeyUsage=clientAuth\n");
        pki.issue("client-b", "extendedKeyUsage=clientAuth\n");
        pki
    }

    fn issue(&self, name: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let subject = format!("/CN={name}");
        openssl(&self.dir, &[&["req"][..], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", &subject][..]].concat());
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// `x5t#S256` of a certificate: base64url of the SHA-256 of its DER.
    fn x5t(&self, name: &str) -> String {
        let der = openssl(&self.dir, &["x509", "-in", &format!("{name}.pem"), "-outform", "DER"]);
        x5t_s256(&sha256(&der))
    }

    /// POSTs `body` over TLS with curl, presenting client certificate `client` (if any).
    /// Returns the status and body, or curl's error when the handshake fails.
    fn post(&self, url: &str, client: Option<&str>, token: &str, body: &str) -> Result<(u16, String), String> {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "--noproxy", "*", "--cacert"]).arg(self.path("ca.pem"));
        if let Some(client) = client {
            curl.arg("--cert")
                .arg(self.path(&format!("{client}.pem")))
                .arg("--key")
                .arg(self.path(&format!("{client}.key")));
        }
        let output = curl
            .args([
                "-X",
                "POST",
                url,
                "-H",
                "content-type: application/json",
                "-H",
                "accept: application/json, text/event-stream",
            ])
            .args(["-H", &format!("authorization: Bearer {token}"), "--data-binary", body, "-w", "\n%{http_code}"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl (apt-get install curl): {e}"));
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok((status.trim().parse().unwrap_or(0), body.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_bound_tokens_need_the_bound_client_certificate() {
    let pki = Pki::create("mtls");
    let tls =
        Tls { cert_chain: pki.path("server.pem"), private_key: pki.path("server.key"), client_ca: pki.path("ca.pem") };
    let stack = Stack::start("mtls", "mtls", Some(tls)).await;
    let agent = stack.agent();
    let request =
        TokenRequest { scope: Some("weather:read".into()), x5t_s256: Some(pki.x5t("client-a")), ..Default::default() };
    let token = must(agent.request_token(&request).await, "mTLS-bound token");
    assert_eq!(token.token_type, "Bearer");
    let url = stack.mcp_url.clone();
    let token = token.access_token;

    // The certificate the token is bound to: allowed, and answered by the MCP server.
    let before = stack.upstream_requests().await;
    let pki = Arc::new(pki);
    let run = |client: Option<&'static str>| {
        let (pki, url, token) = (Arc::clone(&pki), url.clone(), token.clone());
        tokio::task::spawn_blocking(move || pki.post(&url, client, &token, INITIALIZE))
    };
    let (status, body) = run(Some("client-a")).await.unwrap().unwrap_or_else(|e| panic!("curl with client-a: {e}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mcp-guard-demo-weather"), "{body}");
    assert_eq!(stack.upstream_requests().await, before + 1);

    // Another certificate from the same CA: the TLS handshake succeeds, the filter refuses.
    let (status, body) = run(Some("client-b")).await.unwrap().unwrap_or_else(|e| panic!("curl with client-b: {e}"));
    let reason: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!((status, &reason["error"]["data"]["reason"]), (401, &json!("binding_mismatch")), "{body}");
    assert_eq!(stack.upstream_requests().await, before + 1, "the refusal reached the MCP server");

    // No certificate at all: the listener requires one, so there is no HTTP exchange.
    assert!(run(None).await.unwrap().is_err(), "a TLS connection without a client certificate was accepted");
    assert!(stack.counter("wasmcustom.mcp_guard.denied.binding_mismatch").await >= 1);
}

#[test]
fn the_demo_envoy_config_loads_with_the_filter() {
    // `make run` fills in envoy/demo.yaml with envsubst; this fills it in the same way and has
    // Envoy load it, plugin configuration included (validate mode runs the plugin's on_configure).
    let root = envoy::workspace_root();
    let template = std::fs::read_to_string(root.join("envoy/demo.yaml")).expect("envoy/demo.yaml");
    let wasm = must(envoy::filter_wasm(), "the filter");
    let vars = [
        ("ENVOY_PORT", "10000".to_string()),
        ("ENVOY_ADMIN_PORT", "9901".to_string()),
        ("MCP_SERVER_PORT", "19001".to_string()),
        ("ISSUER_PORT", "19002".to_string()),
        ("MCP_GUARD_WASM", wasm.display().to_string()),
    ];
    let config = must(envoy::render_template(&template, &vars), "envoy/demo.yaml");
    let dir = root.join("target/e2e-envoy/demo-yaml");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    must(envoy::validate(&path), "envoy/demo.yaml");
}

/// Reads Envoy's log until a line passes `pick` (the access log is flushed on a timer).
async fn log_line(stack: &Stack, what: &str, pick: impl Fn(&str) -> bool) -> String {
    for _ in 0..50 {
        let log = std::fs::read_to_string(&stack.envoy.log).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| pick(l)) {
            return line.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no {what} in Envoy's log:\n{}", stack.envoy.log_tail(40));
}

/// What the filter records, as an operator sees it in Envoy: the access log (the filter's facts
/// in filter state), the audit lines in Envoy's log, and stats by reason and by tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_show_in_the_access_log_the_audit_log_and_stats() {
    let stack = Stack::start("records", "dpop", None).await;
    let agent = stack.agent();
    let request = TokenRequest {
        act: Some(json!({"sub": "planner-agent", "act": {"sub": "orchestrator"}})),
        ..agent.dpop_token_request("weather:read")
    };
    let token = must(agent.request_token(&request).await, "token");
    let holder = agent.holder(token.access_token);
    let jkt = agent.jkt();

    let allowed = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(&holder)).await, "initialize");
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let refused = RawRequest::post(tool_call(2, "decommission_station")).signed(&holder).header("x-request-id", "audit-e2e-1");
    stack.expect_refusal(&agent, "missing scope", &refused, 403, "insufficient_scope").await;

    let allow_line = log_line(&stack, "access line of the allowed call", |l| l.starts_with("[access] POST /mcp 200 ")).await;
    for part in ["decision=allow", "reason=allowed", "agent=demo-agent", "delegation=planner-agent,orchestrator", "binding=dpop", &format!("jkt={jkt}")] {
        assert!(allow_line.contains(part), "{part} missing in: {allow_line}");
    }
    let deny_line = log_line(&stack, "access line of the refusal", |l| l.starts_with("[access] POST /mcp 403 ")).await;
    for part in ["decision=deny", "reason=insufficient_scope", "tool=decommission_station", &format!("jkt={jkt}")] {
        assert!(deny_line.contains(part), "{part} missing in: {deny_line}");
    }

    let audit = log_line(&stack, "audit line of the refusal", |l| l.contains("mcp-guard-audit ") && l.contains("audit-e2e-1")).await;
    let event: Value = serde_json::from_str(audit.split("mcp-guard-audit ").nth(1).unwrap()).expect("audit JSON");
    assert_eq!(event["decision"], "deny");
    assert_eq!(event["status"], 403);
    assert_eq!(event["tool"], "decommission_station");
    assert_eq!(event["request_id"], "audit-e2e-1");
    assert_eq!(event["scopes_required"], json!(["alerts:write", "stations:admin"]));
    assert_eq!(event["delegation"][1]["sub"], "orchestrator");
    assert_eq!(event["jkt"], json!(jkt));
    let log = std::fs::read_to_string(&stack.envoy.log).unwrap();
    assert!(!log.contains(holder.token()), "the access token leaked into Envoy's log");

    assert_eq!(stack.counter("wasmcustom.mcp_guard.tool.decommission_station.denied").await, 1);
    assert_eq!(stack.counter("wasmcustom.mcp_guard.denied.insufficient_scope").await, 1);
    assert!(stack.counter("wasmcustom.mcp_guard.allowed").await >= 1);
}

/// `audit: {log: denied, filter_state: record}`: every decision reaches the access log as one
/// JSON record; only the refusal gets a line in Envoy's own log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_record_goes_to_the_access_log_and_only_refusals_to_envoys_log() {
    let stack = Stack::start_with("record", "dpop", None, json!({"audit": {"log": "denied", "filter_state": "record"}})).await;
    let agent = stack.agent();
    let token = must(agent.request_token(&agent.dpop_token_request("weather:read")).await, "token");
    let holder = agent.holder(token.access_token);

    let allowed = RawRequest::post(INITIALIZE).signed(&holder).header("x-request-id", "record-e2e-allowed");
    let answer = must(agent.send_raw(&allowed).await, "initialize");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let refused = RawRequest::post(tool_call(2, "decommission_station")).signed(&holder).header("x-request-id", "record-e2e-refused");
    stack.expect_refusal(&agent, "missing scope", &refused, 403, "insufficient_scope").await;

    let record_of = |line: &str| -> Value {
        let json = line.split(" audit=").nth(1).unwrap_or_else(|| panic!("no audit= in: {line}"));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("the record is not JSON ({e}): {json}"))
    };
    let allow_line = log_line(&stack, "access line of the allowed call", |l| l.contains("record-e2e-allowed") && l.starts_with("[access] ")).await;
    let record = record_of(&allow_line);
    assert_eq!((record["decision"].as_str(), record["method"].as_str()), (Some("allow"), Some("initialize")), "{record}");
    assert_eq!(record["jkt"], json!(agent.jkt()));
    assert!(allow_line.contains("decision=- "), "fields are not set in record mode: {allow_line}");
    let deny_line = log_line(&stack, "access line of the refusal", |l| l.contains("record-e2e-refused") && l.starts_with("[access] ")).await;
    let record = record_of(&deny_line);
    assert_eq!((record["status"].as_u64(), record["reason"].as_str()), (Some(403), Some("insufficient_scope")));

    // Envoy's own log: the refusal's audit line, none for the allowed call. One worker writes
    // its lines in order (gathered, audit.log_flush_ms), so once the later refusal's line is
    // there, the allowed call's would be too.
    log_line(&stack, "audit line of the refusal", |l| l.contains("mcp-guard-audit ") && l.contains("record-e2e-refused")).await;
    let log = std::fs::read_to_string(&stack.envoy.log).unwrap();
    assert!(
        !log.lines().any(|l| l.contains("mcp-guard-audit ") && l.contains("record-e2e-allowed")),
        "an allowed call was logged with audit.log = denied"
    );
}
