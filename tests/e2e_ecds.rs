//! The filter's configuration delivered by ECDS (extension config discovery) from a file, in real
//! Envoy 1.40: `envoy/ecds.yaml` (the bootstrap: the listener names the filter and where its
//! configuration comes from) and `envoy/ecds/mcp_guard.yaml` (the resource: the whole Wasm filter
//! configuration, policy included), both filled in the way `e2e_envoy.rs` fills in
//! `envoy/demo.yaml`.
//!
//! What is checked:
//! - `envoy --mode validate` accepts the bootstrap, and refuses it when the resource file is
//!   missing; validate mode does not read the ECDS resource, so the resource is also validated
//!   spliced into a static twin of the bootstrap (which runs the plugin's `on_configure`), a bad
//!   one side by side; the resource's plugin JSON and the clusters mirror `envoy/demo.yaml`.
//! - On ONE raw HTTP/1.1 keep-alive connection, with a DPoP token and a fresh proof per request:
//!   policy A allows one tool and refuses another (403 insufficient_scope); the file is replaced
//!   atomically (temporary file in the same directory, then rename) with policy B, which flips
//!   both decisions, and once Envoy reports the new version on its workers
//!   (`extension_config_discovery.http_filter.mcp_guard.config_reload`) the same requests on the
//!   same connection get B's decisions. A version the filter refuses (an unknown field), and a
//!   file that is not YAML, are rejected (`config_fail`) and B stays in force; policy A moved
//!   back in applies again. Envoy's PID never changes and the listener saw exactly one
//!   connection, never closed.
//! - With no loadable configuration at start-up Envoy answers every request 500 itself (response
//!   flag NFCF) and nothing reaches the MCP server; a good version moved in later fixes that
//!   without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mcp_guard_demo::agent::{challenge_param, Agent, AgentConfig, RawRequest};
use mcp_guard_demo::dpop::Holder;
use mcp_guard_demo::envoy::{self, Envoy, Ready};
use mcp_guard_demo::issuer::{self, Issuer};
use mcp_guard_demo::{weather, Error};
use serde_json::{json, Value};

/// The resource file Envoy watches, in the ECDS directory.
const RESOURCE: &str = "mcp_guard.yaml";
/// The ECDS subscription's stats.
const ECDS: &str = "extension_config_discovery.http_filter.mcp_guard";
/// The listener's HTTP connection manager stats (`stat_prefix: mcp_ingress`).
const INGRESS: &str = "http.mcp_ingress";
const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e-ecds","version":"1"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
/// How long a policy change may take to reach Envoy's workers (it takes milliseconds).
const UPDATE_WAIT: Duration = Duration::from_secs(10);

fn must<T>(result: Result<T, Error>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn read_template(name: &str) -> String {
    let path = envoy::workspace_root().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `${NAME}` values of envoy/ecds.yaml and envoy/ecds/mcp_guard.yaml (and envoy/demo.yaml).
fn vars(envoy_port: u16, mcp_server: u16, issuer: u16, ecds_dir: &Path, wasm: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("ENVOY_PORT", envoy_port.to_string()),
        // Port 0: Envoy picks one and writes it to --admin-address-path (see envoy::Envoy).
        ("ENVOY_ADMIN_PORT", "0".to_string()),
        ("MCP_SERVER_PORT", mcp_server.to_string()),
        ("ISSUER_PORT", issuer.to_string()),
        ("ECDS_DIR", ecds_dir.display().to_string()),
        ("MCP_GUARD_WASM", wasm.display().to_string()),
    ]
}

/// `text` with `from` (which must occur exactly once) replaced by `to`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected {from:?} once in envoy/ecds/mcp_guard.yaml");
    text.replacen(from, to, 1)
}

/// Policy A is the shipped resource: get_forecast needs weather:read, post_alert alerts:write.
/// Policy B flips both decisions for a weather:read token: get_forecast now needs weather:premium,
/// post_alert only weather:read.
fn policy_b(a: &str) -> String {
    let b = replace_once(a, r#""get_forecast": ["weather:read"]"#, r#""get_forecast": ["weather:premium"]"#);
    replace_once(&b, r#""post_alert": ["alerts:write"]"#, r#""post_alert": ["weather:read"]"#)
}

/// A version the filter refuses (an unknown field), with a policy that would allow both tools:
/// should it ever be applied, get_forecast would pass under it where policy B refuses it.
fn refused_version(a: &str) -> String {
    let allow_all = replace_once(a, r#""post_alert": ["alerts:write"]"#, r#""post_alert": ["weather:read"]"#);
    replace_once(&allow_all, r#""unlisted_tools": "deny""#, r#""unlisted_tools": "deny", "bogus_field": true"#)
}

/// Replaces the watched file atomically, as Envoy's `watched_directory` expects: the new version
/// is written to a temporary file in the same directory, then renamed over the old one (Envoy
/// reloads on the move; it never sees a half-written file).
fn publish(ecds_dir: &Path, content: &str) {
    let tmp = ecds_dir.join(format!(".{RESOURCE}.new"));
    std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, ecds_dir.join(RESOURCE))
        .unwrap_or_else(|e| panic!("rename into {}: {e}", ecds_dir.display()));
}

/// The lines of the block that follows the line whose trimmed text is `key` (the lines indented
/// deeper, blank lines included), and that line's indentation.
fn block_after<'a>(text: &'a str, key: &str) -> (usize, Vec<&'a str>) {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.trim() == key).unwrap_or_else(|| panic!("no {key:?} line"));
    let indent = lines[at].len() - lines[at].trim_start().len();
    let block = lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .copied()
        .collect();
    (indent, block)
}

/// The plugin's JSON configuration in a filled-in config (the `value: |` block).
fn plugin_json(config: &str) -> Value {
    let (_, block) = block_after(config, "value: |");
    serde_json::from_str(&block.join("\n")).unwrap_or_else(|e| panic!("plugin configuration is not JSON: {e}"))
}

/// A static twin of the ECDS bootstrap: the resource's `typed_config` in place of the
/// `config_discovery` block, so `envoy --mode validate` loads the plugin with that configuration.
fn static_twin(bootstrap: &str, resource: &str) -> String {
    let (indent, discovery) = block_after(bootstrap, "config_discovery:");
    let (_, typed_config) = block_after(resource, "typed_config:");
    let child =
        typed_config.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap();
    let pad = " ".repeat(indent + 2 - child);
    let mut spliced: Vec<String> = vec![format!("{}typed_config:", " ".repeat(indent))];
    spliced.extend(typed_config.iter().map(|l| format!("{pad}{l}")));
    let lines: Vec<&str> = bootstrap.lines().collect();
    let at = lines.iter().position(|l| l.trim() == "config_discovery:").unwrap();
    let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
    out.extend(spliced);
    out.extend(lines[at + 1 + discovery.len()..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

/// The lines of `text` from `  clusters:` on, comments left out.
fn clusters(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.trim_end() == "  clusters:").expect("a clusters section");
    lines[at..].iter().filter(|l| !l.trim_start().starts_with('#')).copied().collect()
}

#[test]
fn the_ecds_configs_validate_and_mirror_the_static_one() {
    let wasm = must(envoy::filter_wasm(), "the filter");
    let dir = envoy::work_dir("ecds-validate");
    let _ = std::fs::remove_dir_all(&dir);
    let ecds_dir = dir.join("ecds");
    std::fs::create_dir_all(&ecds_dir).unwrap();
    let vars = vars(10000, 19001, 19002, &ecds_dir, &wasm);
    let bootstrap = must(envoy::render_template(&read_template("envoy/ecds.yaml"), &vars), "envoy/ecds.yaml");
    let resource =
        must(envoy::render_template(&read_template("envoy/ecds/mcp_guard.yaml"), &vars), "envoy/ecds/mcp_guard.yaml");
    let demo = must(envoy::render_template(&read_template("envoy/demo.yaml"), &vars), "envoy/demo.yaml");
    let config = dir.join("envoy.yaml");
    std::fs::write(&config, &bootstrap).unwrap();

    // The bootstrap needs the resource file to exist...
    let missing = envoy::validate(&config).expect_err("validated without the ECDS file");
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    // ...and then loads (validate mode does not read the resource itself).
    publish(&ecds_dir, &resource);
    must(envoy::validate(&config), "envoy/ecds.yaml");

    // The resource, in a static twin of the bootstrap: Envoy loads the plugin and its JSON.
    let twin = dir.join("static-twin.yaml");
    std::fs::write(&twin, static_twin(&bootstrap, &resource)).unwrap();
    must(envoy::validate(&twin), "envoy/ecds/mcp_guard.yaml in a static bootstrap");
    let bad = dir.join("static-twin-refused.yaml");
    std::fs::write(&bad, static_twin(&bootstrap, &refused_version(&resource))).unwrap();
    let refused = envoy::validate(&bad).expect_err("a plugin configuration with an unknown field was accepted");
    assert!(refused.to_string().contains("bogus_field"), "{refused}");

    // The ECDS resource mirrors envoy/demo.yaml: the same plugin JSON, the same Wasm settings,
    // the same clusters.
    assert_eq!(plugin_json(&resource), plugin_json(&demo));
    for setting in
        ["failure_policy: FAIL_CLOSED", "allow_on_headers_stop_iteration: true", "runtime: envoy.wasm.runtime.v8"]
    {
        assert!(resource.contains(setting) && demo.contains(setting), "{setting} missing");
    }
    assert_eq!(clusters(&bootstrap), clusters(&demo));
}

/// One HTTP/1.1 keep-alive connection to Envoy's listener, written to by hand, so that every
/// request provably travels on the same connection: if Envoy closed it, the next request fails.
struct Connection {
    reader: BufReader<TcpStream>,
    host: String,
    session: Option<String>,
}

/// An HTTP answer read off the connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The JSON-RPC message: the body, or the last `data:` event of an SSE body.
    fn message(&self) -> Value {
        let sse = self.header("content-type").is_some_and(|t| t.starts_with("text/event-stream"));
        let json = if sse {
            self.body
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .rfind(|d| !d.is_empty())
                .unwrap_or_else(|| panic!("no data event in {:?}", self.body))
        } else {
            self.body.as_str()
        };
        serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Connection {
    fn open(port: u16) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to Envoy: {e}"));
        // A bound on every read, so a hang fails the test instead of stalling it.
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Connection { reader: BufReader::new(stream), host: format!("127.0.0.1:{port}"), session: None }
    }

    /// POSTs a JSON-RPC body to /mcp with the token and a fresh DPoP proof, and reads the answer.
    /// Blocking I/O, moved off the runtime's scheduler (the issuer and MCP server run on it).
    fn post(&mut self, holder: &Holder, body: &str) -> Answer {
        tokio::task::block_in_place(|| {
            let mut head = format!(
                "POST /mcp HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n",
                self.host,
                body.len()
            );
            for (name, value) in RawRequest::post(body)
                .signed(holder)
                .headers
                .iter()
                .filter(|(n, _)| n == "authorization" || n == "dpop")
            {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            if let Some(session) = &self.session {
                head.push_str(&format!("mcp-session-id: {session}\r\nmcp-protocol-version: 2025-06-18\r\n"));
            }
            head.push_str("\r\n");
            let stream = self.reader.get_mut();
            stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(body.as_bytes()))
                .unwrap_or_else(|e| panic!("writing to the connection (did Envoy close it?): {e}"));
            let answer = self.read_answer();
            assert!(
                !answer.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")),
                "Envoy is closing the connection: {answer:?}"
            );
            answer
        })
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap_or_else(|e| panic!("reading the answer: {e}"));
        assert!(n > 0, "Envoy closed the connection");
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    fn read_answer(&mut self) -> Answer {
        let status_line = self.line();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("header line {line:?}"));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if find("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            loop {
                let size_line = self.line();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or_else(|e| panic!("chunk size {size_line:?}: {e}"));
                if size == 0 {
                    while !self.line().is_empty() {} // trailers
                    break;
                }
                let mut chunk = vec![0; size];
                self.reader.read_exact(&mut chunk).unwrap_or_else(|e| panic!("reading a chunk: {e}"));
                body.extend(chunk);
                assert!(self.line().is_empty(), "no CRLF after a chunk");
            }
        } else {
            let length: usize = find("content-length")
                .unwrap_or_else(|| {
                    panic!("an answer without a length would end the connection: {status_line} {headers:?}")
                })
                .parse()
                .unwrap();
            body.resize(length, 0);
            self.reader.read_exact(&mut body).unwrap_or_else(|e| panic!("reading the body: {e}"));
        }
        Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
    }
}

/// The issuer, the MCP server and Envoy running envoy/ecds.yaml with the ECDS file in `ecds_dir`.
struct EcdsStack {
    envoy: Envoy,
    issuer_url: String,
    mcp_url: String,
    ecds_dir: PathBuf,
    /// The filled-in envoy/ecds/mcp_guard.yaml (policy A).
    policy_a: String,
}

impl EcdsStack {
    /// Starts everything, with `first` (given policy A, the filled-in resource) as the first
    /// version of the ECDS file.
    async fn start(name: &str, first: fn(&str) -> String, ready: Ready) -> EcdsStack {
        let wasm = must(envoy::filter_wasm(), "the filter");
        must(envoy::binary(), "Envoy");
        // Envoy's port is picked free and then released before Envoy binds it: should another
        // process take it in between, start again on another.
        let mut attempt = 1;
        loop {
            match EcdsStack::try_start(name, first, ready, &wasm).await {
                Ok(stack) => return stack,
                Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => attempt += 1,
                Err(e) => panic!("starting Envoy: {e}"),
            }
        }
    }

    async fn try_start(name: &str, first: fn(&str) -> String, ready: Ready, wasm: &Path) -> Result<EcdsStack, Error> {
        let issuer_listener = mcp_guard_demo::net::bind("127.0.0.1:0".parse().unwrap()).await?;
        let mcp_listener = mcp_guard_demo::net::bind("127.0.0.1:0".parse().unwrap()).await?;
        let authz = issuer_listener.local_addr().unwrap();
        let mcp_server = mcp_listener.local_addr().unwrap();
        let listen_port = envoy::free_port()?;
        let mcp_url = format!("http://127.0.0.1:{listen_port}/mcp");
        let issuer_url = format!("http://{authz}");
        // Both serve until the test's runtime ends.
        tokio::spawn(issuer::serve(issuer_listener, Arc::new(Issuer::new(&issuer_url, &mcp_url))));
        tokio::spawn(weather::serve(mcp_listener));

        let dir = envoy::work_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        let ecds_dir = dir.join("ecds");
        std::fs::create_dir_all(&ecds_dir).map_err(|e| Error::msg(format!("{}: {e}", ecds_dir.display())))?;
        let vars = vars(listen_port, mcp_server.port(), authz.port(), &ecds_dir, wasm);
        let bootstrap = envoy::render_template(&read_template("envoy/ecds.yaml"), &vars)?;
        let policy_a = envoy::render_template(&read_template("envoy/ecds/mcp_guard.yaml"), &vars)?;
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap).map_err(|e| Error::msg(format!("{}: {e}", config.display())))?;
        publish(&ecds_dir, &first(&policy_a));
        // (1) Envoy accepts the configuration.
        envoy::validate(&config)?;
        let envoy = Envoy::start_with_config(&dir, &config, listen_port, 1, ready).await?;
        Ok(EcdsStack { envoy, issuer_url, mcp_url, ecds_dir, policy_a })
    }

    fn agent(&self) -> Agent {
        let config = AgentConfig {
            mcp_url: self.mcp_url.clone(),
            htu: self.mcp_url.clone(),
            issuer_url: self.issuer_url.clone(),
        };
        must(Agent::new(config, false), "agent")
    }

    async fn counter(&self, name: &str) -> u64 {
        must(self.envoy.counter(name).await, "admin stats")
    }

    async fn ecds(&self, stat: &str) -> u64 {
        self.counter(&format!("{ECDS}.{stat}")).await
    }

    /// Requests Envoy has sent to the MCP server so far.
    async fn upstream_requests(&self) -> u64 {
        self.counter("cluster.mcp_server.upstream_rq_total").await
    }

    /// Polls Envoy's stats until `done` holds, for at most UPDATE_WAIT.
    async fn wait_for(&self, what: &str, done: impl Fn(&std::collections::BTreeMap<String, u64>) -> bool) {
        let deadline = Instant::now() + UPDATE_WAIT;
        loop {
            let stats = must(self.envoy.stats().await, "admin stats");
            if done(&stats) {
                return;
            }
            if Instant::now() > deadline {
                let ecds: Vec<_> = stats.iter().filter(|(k, _)| k.starts_with(ECDS)).collect();
                panic!("{what}: not within {UPDATE_WAIT:?}: {ecds:?}\n{}", self.envoy.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves `content` into place and waits until Envoy has accepted it and every worker runs it.
    async fn apply(&self, what: &str, content: &str) {
        let (reload, success, fail) =
            (self.ecds("config_reload").await, self.ecds("update_success").await, self.ecds("config_fail").await);
        publish(&self.ecds_dir, content);
        let stat =
            |s: &std::collections::BTreeMap<String, u64>, n: &str| s.get(&format!("{ECDS}.{n}")).copied().unwrap_or(0);
        self.wait_for(what, |s| stat(s, "config_reload") > reload && stat(s, "update_success") > success).await;
        assert_eq!(self.ecds("config_fail").await, fail, "{what}: rejected\n{}", self.envoy.log_tail(20));
    }

    /// Sends a tools/call that the policy in force must allow: it reaches the server, which answers.
    async fn expect_allowed(&self, conn: &mut Connection, holder: &Holder, tool: &str, arguments: Value, says: &str) {
        let before = self.upstream_requests().await;
        let answer = conn.post(holder, &tool_call(tool, arguments));
        assert_eq!(answer.status, 200, "{tool}: {answer:?}");
        let message = answer.message();
        let text = message["result"]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{tool}: {message}"));
        assert!(text.starts_with(says), "{tool}: {text}");
        assert_eq!(self.upstream_requests().await, before + 1, "{tool}: did not reach the MCP server");
    }

    /// Sends a tools/call that the policy in force must refuse: 403 insufficient_scope naming
    /// `scope`, and nothing reaches the server.
    async fn expect_refused(&self, conn: &mut Connection, holder: &Holder, tool: &str, arguments: Value, scope: &str) {
        let before = self.upstream_requests().await;
        let answer = conn.post(holder, &tool_call(tool, arguments));
        let message = answer.message();
        assert_eq!(
            (answer.status, &message["error"]["data"]["reason"]),
            (403, &json!("insufficient_scope")),
            "{tool}: {answer:?}"
        );
        let challenge = answer.header("www-authenticate").unwrap_or_default();
        assert_eq!(challenge_param(challenge, "scope").as_deref(), Some(scope), "{tool}: {challenge}");
        assert_eq!(self.upstream_requests().await, before, "{tool}: the refusal reached the MCP server");
    }

    /// The two calls under policy A (`b` false) or policy B (`b` true), for a weather:read token.
    async fn expect_policy(&self, conn: &mut Connection, holder: &Holder, b: bool) {
        let forecast = json!({"station": "KSEA"});
        let alert = json!({"station": "KSEA", "message": "gale warning"});
        if b {
            self.expect_refused(conn, holder, "get_forecast", forecast, "weather:premium").await;
            self.expect_allowed(conn, holder, "post_alert", alert, "Alert posted for KSEA").await;
        } else {
            self.expect_allowed(conn, holder, "get_forecast", forecast, "Forecast for KSEA").await;
            self.expect_refused(conn, holder, "post_alert", alert, "alerts:write").await;
        }
    }
}

/// A tools/call with a new JSON-RPC id.
fn tool_call(tool: &str, arguments: Value) -> String {
    static NEXT_ID: AtomicU64 = AtomicU64::new(2);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_by_ecds_applies_on_the_same_connection_without_restart() {
    let mut stack = EcdsStack::start("ecds-live", |a| a.to_string(), Ready::KeysLoaded).await;
    let pid = stack.envoy.pid();
    assert_eq!(stack.ecds("config_fail").await, 0, "the first version was rejected");
    let holder = must(stack.agent().dpop_token("weather:read").await, "token");

    // (2) One connection for everything below: an MCP session on it.
    let mut conn = Connection::open(stack.envoy.port);
    let answer = conn.post(&holder, INITIALIZE);
    assert_eq!(answer.status, 200, "initialize: {answer:?}");
    conn.session = Some(answer.header("mcp-session-id").expect("a session id").to_string());
    assert_eq!(conn.post(&holder, INITIALIZED).status, 202);

    // (3) Policy A.
    stack.expect_policy(&mut conn, &holder, false).await;

    // (4) Policy B, moved into place: the same requests on the same connection now get B's decisions.
    let policy_b = policy_b(&stack.policy_a);
    stack.apply("policy B", &policy_b).await;
    stack.expect_policy(&mut conn, &holder, true).await;

    // (5) A version the filter refuses is rejected, and B stays in force.
    let (success, rejected) = (stack.ecds("update_success").await, stack.ecds("update_rejected").await);
    let fail = stack.ecds("config_fail").await;
    publish(&stack.ecds_dir, &refused_version(&stack.policy_a));
    let config_fail = format!("{ECDS}.config_fail");
    stack.wait_for("the refused version", |s| s.get(&config_fail).copied().unwrap_or(0) > fail).await;
    assert_eq!(stack.ecds("update_rejected").await, rejected + 1);
    assert_eq!(stack.ecds("update_success").await, success, "a refused version was accepted");
    let log = std::fs::read_to_string(&stack.envoy.log).unwrap();
    assert!(log.contains("bogus_field: unknown field"), "the filter did not refuse it:\n{}", stack.envoy.log_tail(20));
    stack.expect_policy(&mut conn, &holder, true).await;

    // The same refused version moved in again: Envoy 1.40 compares it with the last version it
    // tried (the refused one) and skips it as unchanged, counted as a success and not as a
    // failure (docs/envoy.md warns about this). B stays in force.
    let (attempts, fail) = (stack.ecds("update_attempt").await, stack.ecds("config_fail").await);
    let (success, reload) = (stack.ecds("update_success").await, stack.ecds("config_reload").await);
    publish(&stack.ecds_dir, &refused_version(&stack.policy_a));
    let update_attempt = format!("{ECDS}.update_attempt");
    stack.wait_for("the refused version again", |s| s.get(&update_attempt).copied().unwrap_or(0) > attempts).await;
    assert_eq!((stack.ecds("config_fail").await, stack.ecds("update_success").await), (fail, success + 1));
    assert_eq!(stack.ecds("config_reload").await, reload, "the refused version was pushed to the workers");
    stack.expect_policy(&mut conn, &holder, true).await;

    // A file that is not even YAML: rejected too, B stays in force.
    let fail = stack.ecds("config_fail").await;
    publish(&stack.ecds_dir, "resources: [\n");
    stack.wait_for("the broken file", |s| s.get(&config_fail).copied().unwrap_or(0) > fail).await;
    stack.expect_policy(&mut conn, &holder, true).await;

    // And policy A, moved back, applies again.
    stack.apply("policy A again", &stack.policy_a.clone()).await;
    stack.expect_policy(&mut conn, &holder, false).await;

    // Same Envoy process, and the listener saw one connection only, never closed.
    assert_eq!(stack.envoy.pid(), pid);
    assert!(stack.envoy.is_running(), "Envoy exited");
    assert_eq!(stack.counter(&format!("{INGRESS}.downstream_cx_total")).await, 1, "more than one connection");
    assert_eq!(stack.counter(&format!("{INGRESS}.downstream_cx_active")).await, 1);
    assert_eq!(stack.counter(&format!("{INGRESS}.downstream_cx_destroy")).await, 0, "a connection was closed");
    assert!(stack.counter(&format!("{INGRESS}.downstream_rq_total")).await >= 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_loadable_configuration_envoy_refuses_every_request_until_one_arrives() {
    // The first version is refused by the filter: Envoy serves, but without the filter.
    let mut stack = EcdsStack::start("ecds-missing", refused_version, Ready::Live).await;
    let pid = stack.envoy.pid();
    assert!(stack.ecds("config_fail").await >= 1);
    assert_eq!(stack.ecds("update_success").await, 0);
    let agent = stack.agent();
    let holder = must(agent.dpop_token("weather:read").await, "token");

    // A request every policy allows (initialize, with a valid token and proof): refused by Envoy
    // itself with 500, flag NFCF, and nothing reaches the MCP server.
    for _ in 0..3 {
        let answer = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(&holder)).await, "initialize");
        assert_eq!(answer.status, 500, "{}", answer.body);
    }
    assert_eq!(stack.upstream_requests().await, 0, "a request passed without the filter");
    let deadline = Instant::now() + UPDATE_WAIT;
    loop {
        let log = std::fs::read_to_string(&stack.envoy.log).unwrap_or_default();
        if log.lines().any(|l| l.starts_with("[access] POST /mcp 500 flags=NFCF")) {
            break;
        }
        assert!(Instant::now() < deadline, "no NFCF access line:\n{}", stack.envoy.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A good version moved into place: the filter runs, without a restart.
    stack.apply("policy A", &stack.policy_a.clone()).await;
    let answer = must(agent.send_raw(&RawRequest::post(INITIALIZE).signed(&holder)).await, "initialize");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(stack.upstream_requests().await, 1);
    let unsigned = must(agent.send_raw(&RawRequest::post(INITIALIZE)).await, "initialize without a token");
    assert_eq!((unsigned.status, unsigned.reason().as_deref()), (401, Some("missing_token")));
    assert_eq!(stack.envoy.pid(), pid);
    assert!(stack.envoy.is_running(), "Envoy exited");
}
