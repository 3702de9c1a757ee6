//! Parser differential (issue 7): for every body the filter accepts, the method and the tool,
//! prompt or resource it authorized are exactly what the MCP server behind it would execute.
//!
//! A deterministic generator ([`gen`]) makes a few thousand bodies (and a few Content-Types) from
//! valid seeds by structured mutation. Each goes through:
//! - the filter: the full native guard (`on_head` with the Content-Type, then `decide` with the
//!   body; a policy that allows every call, so "accepted" means "the decoder and the head checks
//!   let it through"), cross-checked against `mcp_guard::mcp::decode`;
//! - rmcp 3.11 as its Streamable HTTP server reads a POST (Content-Type essence check, then
//!   `serde_json::from_slice::<ClientJsonRpcMessage>`);
//! - a plain `serde_json::Value` reader (last duplicate key wins);
//! - the Python SDK (`tests/differential/python_reader.py`, two entry points);
//! - the TypeScript SDK (`tests/differential/ts_reader.mjs`: the web-standard transport, and the
//!   documented Express setup with `express.json()`).
//!
//! All bodies go to one Python and one Node process.
//!
//! The rule: when the filter accepts, every reader either refuses (the body, or the element's
//! params: nothing runs) or reads the same messages with the same method and the same target.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mcp_guard::config::{Config, KeySource};
use mcp_guard::guard::{Decision, Env, Guard, HeadVerdict, RequestHead};
use mcp_guard::jose::b64url_encode;
use mcp_guard::mcp::{self, Message, RpcId, Target};
use mcp_guard::replay::MemoryStore;
use mcp_guard::testkit::{TestIssuer, TestKey};
use mcp_guard::token::TokenCache;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage, NumberOrString};
use serde_json::{json, Map, Value};

const NOW: u64 = 1_800_000_000;
const JSON: &str = "application/json";
/// The methods whose params name what is called, and the member that names it.
const TARGET_METHODS: [(&str, &str); 5] = [
    ("tools/call", "name"),
    ("prompts/get", "name"),
    ("resources/read", "uri"),
    ("resources/subscribe", "uri"),
    ("resources/unsubscribe", "uri"),
];

fn target_member(method: &str) -> Option<&'static str> {
    TARGET_METHODS.iter().find(|(m, _)| *m == method).map(|(_, member)| *member)
}

// ---------------------------------------------------------------------------------------------
// What a reader makes of a body.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Notification,
    Response,
}

/// One message as a reader sees it. Strings are UTF-16 code units in hex (lone surrogates from
/// Python or JS survive and never equal a Rust string).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    kind: Kind,
    method: Option<String>,
    /// The tool, prompt or resource, for the methods in [`TARGET_METHODS`].
    target: Option<String>,
    /// False when the reader's server refuses the params of this call (nothing runs).
    target_ok: bool,
    /// "n:<integer>" or "s:<hex>".
    id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum View {
    Reject,
    Accept { batch: bool, messages: Vec<Msg> },
}

fn hex16(s: &str) -> String {
    s.encode_utf16().map(|u| format!("{u:04x}")).collect()
}

fn unhex16(h: &str) -> String {
    let units: Vec<u16> = (0..h.len() / 4).map(|i| u16::from_str_radix(&h[i * 4..i * 4 + 4], 16).unwrap()).collect();
    char::decode_utf16(units).map(|c| c.map_or_else(|e| format!("<lone {:04x}>", e.unpaired_surrogate()), |c| c.escape_debug().to_string())).collect()
}

impl Msg {
    fn call(kind: Kind, method: &str, target: Option<String>, target_ok: bool, id: Option<String>) -> Msg {
        Msg { kind, method: Some(hex16(method)), target, target_ok, id }
    }
    fn response(id: Option<String>) -> Msg {
        Msg { kind: Kind::Response, method: None, target: None, target_ok: true, id }
    }
    fn show(&self) -> String {
        let method = self.method.as_deref().map(unhex16).unwrap_or_default();
        let target = match (&self.target, self.target_ok) {
            (Some(t), true) => format!(" -> {:?}", unhex16(t)),
            (None, true) => String::new(),
            (_, false) => " -> (params refused)".into(),
        };
        format!("{:?} {method}{target} id={}", self.kind, self.id.as_deref().map(show_id).unwrap_or_default())
    }
}

fn show_id(id: &str) -> String {
    match id.strip_prefix("s:") {
        Some(h) => format!("{:?}", unhex16(h)),
        None => id.trim_start_matches("n:").to_string(),
    }
}

/// What one message makes a server do: (is a response, method, target or "refused").
type Run = (bool, Option<String>, Option<String>);

/// The members of an object under construction.
type Members = Vec<(String, J)>;

impl View {
    fn show(&self) -> String {
        match self {
            View::Reject => "reject".into(),
            View::Accept { batch, messages } => {
                let inner: Vec<String> = messages.iter().map(Msg::show).collect();
                if *batch { format!("[{}]", inner.join(", ")) } else { inner.join(", ") }
            }
        }
    }

    /// What the server would run: each message's kind class, method and (accepted) target.
    fn executes(&self) -> Option<Vec<Run>> {
        match self {
            View::Reject => None,
            View::Accept { messages, .. } => Some(
                messages
                    .iter()
                    .map(|m| (m.kind == Kind::Response, m.method.clone(), if m.target_ok { m.target.clone() } else { Some("refused".into()) }))
                    .collect(),
            ),
        }
    }

    /// Reads a reader's JSON verdict.
    fn from_reader(v: &Value) -> View {
        if v == "reject" {
            return View::Reject;
        }
        let str_of = |m: &Value, k: &str| m[k].as_str().map(str::to_string);
        let messages = v["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("reader verdict {v}"))
            .iter()
            .map(|m| Msg {
                kind: match m["kind"].as_str() {
                    Some("request") => Kind::Request,
                    Some("notification") => Kind::Notification,
                    Some("response") => Kind::Response,
                    other => panic!("reader message kind {other:?} in {v}"),
                },
                method: str_of(m, "method"),
                target: str_of(m, "target"),
                target_ok: m["target_ok"].as_bool().unwrap(),
                id: str_of(m, "id"),
            })
            .collect();
        View::Accept { batch: v["batch"].as_bool().unwrap(), messages }
    }
}

// ---------------------------------------------------------------------------------------------
// The filter: the full native guard.

fn rpc_id(id: &RpcId) -> String {
    if id.0.starts_with('"') {
        format!("s:{}", hex16(&serde_json::from_str::<String>(&id.0).unwrap()))
    } else {
        format!("n:{}", id.0)
    }
}

fn filter_messages(messages: &[Message]) -> Vec<Msg> {
    messages
        .iter()
        .map(|m| match m {
            Message::Call { id, method, target } => {
                let kind = if id.is_some() { Kind::Request } else { Kind::Notification };
                let target = match target {
                    Target::Tool(n) | Target::Prompt(n) | Target::Resource(n) => Some(hex16(n)),
                    Target::None => None,
                };
                Msg::call(kind, method, target, true, id.as_ref().map(rpc_id))
            }
            Message::Response { id } => Msg::response(Some(rpc_id(id))),
        })
        .collect()
}

struct Filter {
    guard: Guard,
    token: String,
    tokens: TokenCache,
    store: MemoryStore,
}

impl Filter {
    fn new() -> Filter {
        let issuer = TestIssuer::new(TestKey::es256());
        let config = json!({
            "issuer": issuer.issuer,
            "audience": issuer.audience,
            "jwks": issuer.jwks(),
            "binding": "bearer",
            "public_url": "https://mcp.example.com/mcp",
            "max_body_bytes": 1_048_576,
            "policy": {"tools": {}, "unlisted_tools": "allow"}
        });
        let config = Config::from_json(config.to_string().as_bytes()).unwrap();
        let token = issuer.token(&issuer.claims(NOW, ""));
        Filter { guard: Guard::new(config), token, tokens: TokenCache::new(100), store: MemoryStore::default() }
    }

    /// What the filter lets through, as the proxy runs it: head checks, then the body.
    fn view(&mut self, case: &Case) -> View {
        let mut headers = vec![("authorization".to_string(), format!("Bearer {}", self.token).into_bytes())];
        if let Some(ct) = &case.content_type {
            headers.push(("content-type".into(), ct.clone().into_bytes()));
        }
        headers.push(("content-length".into(), case.body.len().to_string().into_bytes()));
        let head = RequestHead { method: "POST".into(), path: "/mcp".into(), headers };
        if let HeadVerdict::Reply(..) = self.guard.on_head(&head) {
            return View::Reject;
        }
        let keys = match &self.guard.config.keys {
            KeySource::Inline(keys) => Some(keys),
            KeySource::Remote(_) => None,
        };
        let mut env = Env {
            now: NOW,
            keys,
            may_fetch_keys: false,
            tokens: &mut self.tokens,
            replay_store: &mut self.store,
            replay_tag: 1,
            client_cert_sha256_hex: &|| None,
        };
        let decoded = mcp::decode(&case.body);
        match (self.guard.decide(&head, Some(&case.body), &mut env), decoded) {
            (Decision::Allow(allowed), Ok(body)) => {
                // The guard authorized exactly what the public decoder reads.
                assert_eq!(allowed.messages, body.messages, "{}", case.label);
                View::Accept { batch: body.is_batch, messages: filter_messages(&allowed.messages) }
            }
            (Decision::Deny { .. }, Err(_)) => View::Reject,
            (decision, decoded) => panic!("{}: the guard and mcp::decode disagree: {decision:?} / {decoded:?}", case.label),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Readers in this process: rmcp, and serde_json::Value.

/// rmcp's Streamable HTTP server: `Content-Type` essence `application/json` (any case), then
/// `serde_json::from_slice::<ClientJsonRpcMessage>` (no batches).
fn rmcp_view(case: &Case) -> View {
    let type_ok = case.content_type.as_deref().is_some_and(|header| {
        let essence = header.split_once(';').map_or(header, |(essence, _)| essence);
        essence.trim().eq_ignore_ascii_case(JSON)
    });
    if !type_ok {
        return View::Reject;
    }
    match serde_json::from_slice::<ClientJsonRpcMessage>(&case.body) {
        Ok(message) => View::Accept { batch: false, messages: vec![rmcp_message(message)] },
        Err(_) => View::Reject,
    }
}

fn rmcp_id(id: &NumberOrString) -> String {
    match id {
        NumberOrString::Number(n) => format!("n:{n}"),
        NumberOrString::String(s) => format!("s:{}", hex16(s)),
    }
}

fn rmcp_message(message: ClientJsonRpcMessage) -> Msg {
    match message {
        JsonRpcMessage::Request(r) => {
            let id = Some(rmcp_id(&r.id));
            let method = r.request.method().to_string();
            let (target, ok) = match &r.request {
                ClientRequest::CallToolRequest(c) => (Some(hex16(&c.params.name)), true),
                ClientRequest::GetPromptRequest(c) => (Some(hex16(&c.params.name)), true),
                ClientRequest::ReadResourceRequest(c) => (Some(hex16(&c.params.uri)), true),
                ClientRequest::SubscribeRequest(c) => (Some(hex16(&c.params.uri)), true),
                ClientRequest::UnsubscribeRequest(c) => (Some(hex16(&c.params.uri)), true),
                // A targeted method rmcp did not read as its typed request: a custom request,
                // which the server answers "method not found".
                _ if target_member(&method).is_some() => (None, false),
                _ => (None, true),
            };
            Msg::call(Kind::Request, &method, target, ok, id)
        }
        JsonRpcMessage::Notification(n) => {
            let value = serde_json::to_value(&n.notification).unwrap();
            let method = value["method"].as_str().unwrap().to_string();
            // rmcp has no notification that runs a tool, prompt or resource.
            let ok = target_member(&method).is_none();
            Msg::call(Kind::Notification, &method, None, ok, None)
        }
        JsonRpcMessage::Response(r) => Msg::response(Some(rmcp_id(&r.id))),
        JsonRpcMessage::Error(e) => Msg::response(e.id.as_ref().map(rmcp_id)),
    }
}

/// A server built on `serde_json::Value` (duplicate keys: the last wins): an object or a
/// non-empty array of objects; `method` a string; the target a string member of `params`.
fn value_view(case: &Case) -> View {
    let Ok(value) = serde_json::from_slice::<Value>(&case.body) else { return View::Reject };
    value_shape(&value)
}

fn value_shape(value: &Value) -> View {
    let (batch, elements) = match value {
        Value::Object(_) => (false, vec![value]),
        Value::Array(a) if !a.is_empty() => (true, a.iter().collect()),
        _ => return View::Reject,
    };
    let mut messages = Vec::new();
    for element in elements {
        let Some(object) = element.as_object() else { return View::Reject };
        match value_message(object) {
            Some(m) => messages.push(m),
            None => return View::Reject,
        }
    }
    View::Accept { batch, messages }
}

fn value_id(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(format!("n:{n}")),
        Value::String(s) => Some(format!("s:{}", hex16(s))),
        _ => None,
    }
}

fn value_message(o: &Map<String, Value>) -> Option<Msg> {
    if o.get("jsonrpc") != Some(&json!("2.0")) {
        return None;
    }
    match o.get("method") {
        Some(Value::String(method)) => {
            let kind = if o.contains_key("id") { Kind::Request } else { Kind::Notification };
            let (target, ok) = match target_member(method) {
                None => (None, true),
                Some(member) => match o.get("params").and_then(|p| p.get(member)) {
                    Some(Value::String(t)) => (Some(hex16(t)), true),
                    _ => (None, false),
                },
            };
            Some(Msg::call(kind, method, target, ok, o.get("id").and_then(value_id)))
        }
        Some(_) => None,
        None if o.contains_key("result") || o.contains_key("error") => Some(Msg::response(o.get("id").and_then(value_id))),
        None => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Readers in other processes: the Python and the TypeScript SDK, all bodies in one go each.

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run_reader(mut command: Command, what: &str, cases: &[Case]) -> Vec<Value> {
    let mut input = String::new();
    for case in cases {
        input.push_str(&json!({"ct": case.content_type, "body": b64url_encode(&case.body)}).to_string());
        input.push('\n');
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {what} reader ({e}): run `make differential-deps`"));
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "{what} reader failed: {}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<Value> = String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), cases.len(), "{what} reader answered {} of {} cases", lines.len(), cases.len());
    lines
}

fn python_views(cases: &[Case]) -> Vec<(View, View)> {
    let python = std::env::var_os("MCP_GUARD_DIFF_PYTHON").map(PathBuf::from).unwrap_or_else(|| workspace().join(".venv-diff/bin/python"));
    assert!(python.exists(), "{} is missing: run `make differential-deps`", python.display());
    let mut command = Command::new(python);
    command.arg(workspace().join("tests/differential/python_reader.py"));
    run_reader(command, "Python SDK", cases).iter().map(|v| (View::from_reader(&v["py"]), View::from_reader(&v["py_modern"]))).collect()
}

fn ts_views(cases: &[Case]) -> Vec<(View, View)> {
    let dir = workspace().join("tests/differential");
    assert!(dir.join("node_modules/@modelcontextprotocol/sdk").exists(), "tests/differential/node_modules is missing: run `make differential-deps`");
    let mut command = Command::new("node");
    command.arg(dir.join("ts_reader.mjs")).current_dir(&dir);
    run_reader(command, "TypeScript SDK", cases).iter().map(|v| (View::from_reader(&v["ts"]), View::from_reader(&v["ts_express"]))).collect()
}

// ---------------------------------------------------------------------------------------------
// The comparison.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The filter refused the body.
    FilterRefused,
    /// Same messages, methods and targets.
    Agree,
    /// The reader refuses the whole body: nothing runs.
    ReaderRefuses,
    /// The reader refuses the params of some call: that call does not run.
    ReaderRefusesParams,
    /// The reader would run something other than what the filter authorized.
    Bypass(String),
}

/// Notes that are no authorization matter: id spelled differently, request vs notification.
#[derive(Debug, Default)]
struct Notes {
    id_differs: bool,
    kind_differs: bool,
}

fn compare(filter: &View, reader: &View, notes: &mut Notes) -> Verdict {
    let View::Accept { messages: authorized, .. } = filter else { return Verdict::FilterRefused };
    let View::Accept { messages: read, .. } = reader else { return Verdict::ReaderRefuses };
    if authorized.len() != read.len() {
        return Verdict::Bypass(format!("{} messages authorized, {} read", authorized.len(), read.len()));
    }
    let mut params_refused = false;
    for (i, (a, r)) in authorized.iter().zip(read).enumerate() {
        let a_is_call = a.kind != Kind::Response;
        let r_is_call = r.kind != Kind::Response;
        if a_is_call != r_is_call {
            return Verdict::Bypass(format!("message {i}: authorized {}, read {}", a.show(), r.show()));
        }
        if a.method != r.method {
            return Verdict::Bypass(format!("message {i}: authorized {}, read {}", a.show(), r.show()));
        }
        if a.kind != r.kind {
            notes.kind_differs = true;
        }
        if a.id != r.id {
            notes.id_differs = true;
        }
        // The filter names a target exactly for the methods in TARGET_METHODS.
        if a.target.is_some() || !a.target_ok {
            if !r.target_ok {
                params_refused = true;
            } else if a.target != r.target {
                return Verdict::Bypass(format!("message {i}: authorized {}, read {}", a.show(), r.show()));
            }
        }
    }
    if params_refused {
        Verdict::ReaderRefusesParams
    } else {
        Verdict::Agree
    }
}

const READERS: [&str; 6] = ["rmcp", "serde_json::Value", "python", "python-modern", "ts", "ts-express"];

/// A case and what the six readers make of it.
struct Read {
    case: Case,
    readers: [View; 6],
}

/// The filter's view beside the readers'.
struct Row<'a> {
    case: &'a Case,
    filter: View,
    readers: &'a [View; 6],
}

/// Runs every reader over `cases` (one Python and one Node process for all of them).
fn read_all(cases: Vec<Case>) -> Vec<Read> {
    let started = std::time::Instant::now();
    let python = python_views(&cases);
    let python_time = started.elapsed();
    let ts = ts_views(&cases);
    let ts_time = started.elapsed() - python_time;
    let reads = cases
        .into_iter()
        .zip(python)
        .zip(ts)
        .map(|((case, (py, py_modern)), (ts, ts_express))| Read { readers: [rmcp_view(&case), value_view(&case), py, py_modern, ts, ts_express], case })
        .collect::<Vec<_>>();
    println!(
        "{} bodies read: Python SDK {:.1} s, TypeScript SDK {:.1} s, rmcp and serde_json {:.1} s",
        reads.len(),
        python_time.as_secs_f64(),
        ts_time.as_secs_f64(),
        (started.elapsed() - python_time - ts_time).as_secs_f64()
    );
    reads
}

/// The generated corpus as the readers see it, read once for the tests that share it.
fn corpus() -> &'static [Read] {
    static CORPUS: std::sync::OnceLock<Vec<Read>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| read_all(gen()))
}

fn judge<'a>(reads: impl IntoIterator<Item = &'a Read>, filter_view: &mut dyn FnMut(&Case) -> View) -> Vec<Row<'a>> {
    reads.into_iter().map(|read| Row { case: &read.case, filter: filter_view(&read.case), readers: &read.readers }).collect()
}

/// Every (case, reader, reason) where the filter accepted and the reader runs something else.
fn bypasses(rows: &[Row]) -> Vec<String> {
    let mut found = Vec::new();
    for row in rows {
        for (name, view) in READERS.iter().zip(row.readers) {
            if let Verdict::Bypass(why) = compare(&row.filter, view, &mut Notes::default()) {
                found.push(format!(
                    "{}: {name}: {why}\n    content-type {:?}\n    body {:?}\n    filter {}\n    {name} {}",
                    row.case.label,
                    row.case.content_type,
                    String::from_utf8_lossy(&row.case.body).chars().take(400).collect::<String>(),
                    row.filter.show(),
                    view.show()
                ));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------
// The generator.

/// A JSON text under construction: raw pieces keep odd spellings (escapes, numbers) as written.
#[derive(Debug, Clone, PartialEq)]
enum J {
    /// Written as is.
    Raw(String),
    /// A string, escaped by serde_json.
    Str(String),
    Arr(Vec<J>),
    /// Members; the key is written between quotes as is (so it may hold escapes).
    Obj(Vec<(String, J)>),
}

impl J {
    fn render(&self) -> String {
        match self {
            J::Raw(r) => r.clone(),
            J::Str(s) => serde_json::to_string(s).unwrap(),
            J::Arr(items) => format!("[{}]", items.iter().map(J::render).collect::<Vec<_>>().join(",")),
            J::Obj(members) => format!("{{{}}}", members.iter().map(|(k, v)| format!("\"{k}\":{}", v.render())).collect::<Vec<_>>().join(",")),
        }
    }
}

fn s(text: &str) -> J {
    J::Str(text.into())
}

fn raw(text: &str) -> J {
    J::Raw(text.into())
}

fn obj(members: &[(&str, J)]) -> J {
    J::Obj(members.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

fn message(id: Option<J>, method: &str, params: Option<J>) -> J {
    let mut members = vec![("jsonrpc".to_string(), s("2.0"))];
    if let Some(id) = id {
        members.push(("id".into(), id));
    }
    members.push(("method".into(), s(method)));
    if let Some(params) = params {
        members.push(("params".into(), params));
    }
    J::Obj(members)
}

#[derive(Debug, Clone)]
struct Case {
    /// The mutation family (for the summary).
    class: String,
    /// Seed and mutation, for messages.
    label: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn seeds() -> Vec<(&'static str, J)> {
    let call = |id: i64, name: &str| message(Some(raw(&id.to_string())), "tools/call", Some(obj(&[("name", s(name)), ("arguments", obj(&[("city", s("Paris"))]))])));
    vec![
        ("tools/call", call(1, "get_forecast")),
        ("tools/call (string id, _meta)", message(Some(s("a-1")), "tools/call", Some(obj(&[("name", s("delete_repo")), ("arguments", obj(&[])), ("_meta", obj(&[("progressToken", raw("5"))]))])))),
        ("prompts/get", message(Some(raw("2")), "prompts/get", Some(obj(&[("name", s("summarize")), ("arguments", obj(&[("text", s("x"))]))])))),
        ("resources/read", message(Some(raw("3")), "resources/read", Some(obj(&[("uri", s("file:///etc/hosts"))])))),
        ("resources/subscribe", message(Some(raw("4")), "resources/subscribe", Some(obj(&[("uri", s("https://example.com/r/1"))])))),
        ("resources/unsubscribe", message(Some(raw("5")), "resources/unsubscribe", Some(obj(&[("uri", s("https://example.com/r/1"))])))),
        ("tools/list", message(Some(raw("6")), "tools/list", Some(obj(&[("cursor", s("c1"))])))),
        (
            "initialize",
            message(
                Some(raw("0")),
                "initialize",
                Some(obj(&[("protocolVersion", s("2025-06-18")), ("capabilities", obj(&[])), ("clientInfo", obj(&[("name", s("agent")), ("version", s("1"))]))])),
            ),
        ),
        ("ping", message(Some(raw("7")), "ping", None)),
        ("notification", message(None, "notifications/initialized", None)),
        ("notification named like a call", message(None, "tools/call", Some(obj(&[("name", s("get_forecast"))])))),
        ("response", obj(&[("jsonrpc", s("2.0")), ("id", raw("8")), ("result", obj(&[("action", s("accept"))]))])),
        ("error response", obj(&[("jsonrpc", s("2.0")), ("id", s("srv-1")), ("error", obj(&[("code", raw("-1")), ("message", s("no"))]))])),
        ("batch", J::Arr(vec![call(1, "get_forecast"), message(Some(raw("2")), "tools/list", None), message(None, "notifications/initialized", None)])),
        ("batch with a response", J::Arr(vec![obj(&[("jsonrpc", s("2.0")), ("id", raw("9")), ("result", obj(&[]))]), call(10, "delete_repo")])),
    ]
}

/// Every `\uXXXX`.
fn escape_all(text: &str) -> String {
    text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect()
}

/// The first character as `\uXXXX`, `/` as `\/`, the rest as serde_json writes it.
fn escape_first(text: &str) -> String {
    let mut chars = text.chars();
    let Some(first) = chars.next() else { return String::new() };
    let rest = serde_json::to_string(chars.as_str()).unwrap();
    format!("{}{}", escape_all(&first.to_string()), &rest[1..rest.len() - 1])
}

/// A value that means something else in the same place (for duplicates).
fn other_value(key: &str, value: &J) -> J {
    let pick = |a: &str, b: &str| if *value == s(a) { s(b) } else { s(a) };
    match key {
        "method" => pick("tools/call", "tools/list"),
        "name" => pick("delete_repo", "get_forecast"),
        "uri" => pick("file:///etc/shadow", "file:///etc/hosts"),
        "jsonrpc" => s("1.0"),
        "id" => raw("99"),
        "params" => obj(&[("name", s("delete_repo")), ("uri", s("file:///etc/shadow"))]),
        "arguments" => obj(&[("city", s("Rome"))]),
        _ => raw("null"),
    }
}

/// Replacements for one value.
fn value_variants(key: &str, value: &J) -> Vec<(&'static str, String, J)> {
    let mut out: Vec<(&'static str, String, J)> = Vec::new();
    let mut add = |class: &'static str, what: &str, j: J| out.push((class, what.to_string(), j));
    match value {
        J::Str(text) => {
            add("string escapes", "all \\u escapes", J::Raw(format!("\"{}\"", escape_all(text))));
            add("string escapes", "first char \\u, \\/", J::Raw(format!("\"{}\"", escape_first(text).replace('/', "\\/"))));
            add("string escapes", "uppercase \\U escape", J::Raw(format!("\"{}\"", escape_all(text).to_uppercase().replace("\\U", "\\u"))));
            add("lone surrogate", "lone high surrogate appended", J::Raw(format!("\"{}\\ud800\"", escape_all(text))));
            add("lone surrogate", "lone low surrogate first", J::Raw(format!("\"\\udc00{}\"", escape_all(text))));
            add("lone surrogate", "reversed pair", J::Raw(format!("\"{}\\ude00\\ud83d\"", escape_all(text))));
            add("lone surrogate", "high surrogate then escape", J::Raw(format!("\"{}\\ud800\\u0041\"", escape_all(text))));
            add("surrogate pair", "escaped pair appended", J::Raw(format!("\"{}\\ud83d\\ude00\"", escape_all(text))));
            add("NUL and controls", "escaped NUL appended", J::Raw(format!("\"{}\\u0000\"", escape_all(text))));
            add("NUL and controls", "escaped NUL prefix", J::Raw(format!("\"\\u0000{}\"", escape_all(text))));
            add("NUL and controls", "raw TAB inside", J::Raw(format!("\"{}\t\"", escape_all(text))));
            add("NUL and controls", "raw DEL inside", J::Raw(format!("\"{}\u{7f}\"", escape_all(text))));
            add("odd whitespace", "NBSP appended", s(&format!("{text}\u{a0}")));
            add("odd whitespace", "LINE SEPARATOR appended", s(&format!("{text}\u{2028}")));
            add("odd whitespace", "leading space", s(&format!(" {text}")));
            add("odd whitespace", "escaped vertical tab", J::Raw(format!("\"{}\\u000b\"", escape_all(text))));
            add("odd whitespace", "zero-width space inside", s(&format!("{}\u{200b}{}", &text[..text.len() / 2], &text[text.len() / 2..])));
            add("normalization", "combining acute appended (NFD)", s(&format!("{text}e\u{301}")));
            add("normalization", "precomposed é appended (NFC)", s(&format!("{text}\u{e9}")));
            add("normalization", "fullwidth first letter", s(&text.chars().enumerate().map(|(i, c)| if i == 0 && c.is_ascii_lowercase() { char::from_u32(c as u32 - 0x61 + 0xFF41).unwrap() } else { c }).collect::<String>()));
            add("case", "upper case", s(&text.to_uppercase()));
            add("not a string", "number", raw("1"));
            add("not a string", "null", raw("null"));
            add("not a string", "true", raw("true"));
            add("not a string", "array of it", J::Arr(vec![value.clone()]));
            add("not a string", "object of it", obj(&[(key, value.clone())]));
            add("long strings", "64 KiB string", s(&format!("{text}{}", "x".repeat(65_536))));
        }
        J::Raw(number) if number.bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            for (what, literal) in [
                ("1.0", "1.0"),
                ("1e0", "1e0"),
                ("1E0", "1E0"),
                ("-0", "-0"),
                ("-0.0", "-0.0"),
                ("01", "01"),
                ("+1", "+1"),
                ("0x1", "0x1"),
                ("1.5", "1.5"),
                ("-1", "-1"),
                ("i64 max", "9223372036854775807"),
                ("i64 max + 1", "9223372036854775808"),
                ("u64 max", "18446744073709551615"),
                ("u64 max + 1", "18446744073709551616"),
                ("i64 min - 1", "-9223372036854775809"),
                ("2^53 + 1", "9007199254740993"),
                ("1e400", "1e400"),
                ("NaN", "NaN"),
                ("Infinity", "Infinity"),
                ("-Infinity", "-Infinity"),
                ("string", "\"1\""),
                ("null", "null"),
                ("array", "[1]"),
            ] {
                add("numbers", what, raw(literal));
            }
        }
        _ => {
            add("wrong type", "null", raw("null"));
            add("wrong type", "empty array", raw("[]"));
            add("wrong type", "array of it", J::Arr(vec![value.clone()]));
            add("wrong type", "string", s("x"));
            add("wrong type", "number", raw("1"));
        }
    }
    out
}

/// Structured mutations of one object (`path` names it), recursing into params and arguments.
fn object_mutations(members: &[(String, J)], path: &str, out: &mut Vec<(String, String, J)>) {
    let rebuild = |edit: &dyn Fn(&mut Members)| {
        let mut m = members.to_vec();
        edit(&mut m);
        J::Obj(m)
    };
    for (i, (key, value)) in members.iter().enumerate() {
        let at = format!("{path}.{key}");
        let other = other_value(key, value);
        out.push(("duplicate key".into(), format!("{at} duplicated, other value first"), rebuild(&|m| m.insert(i, (key.clone(), other.clone())))));
        out.push(("duplicate key".into(), format!("{at} duplicated, other value last"), rebuild(&|m| m.insert(i + 1, (key.clone(), other.clone())))));
        out.push(("duplicate key".into(), format!("{at} duplicated, same value"), rebuild(&|m| m.insert(i + 1, (key.clone(), value.clone())))));
        out.push(("duplicate key".into(), format!("{at} duplicated under an escaped key"), rebuild(&|m| m.push((escape_first(key), other.clone())))));
        out.push(("duplicate key".into(), format!("{at} duplicated under an all-escaped key"), rebuild(&|m| m.insert(0, (escape_all(key), other.clone())))));
        let capitalized: String = key.chars().enumerate().map(|(j, c)| if j == 0 { c.to_ascii_uppercase() } else { c }).collect();
        out.push(("key variants".into(), format!("{at} as {capitalized}"), rebuild(&|m| m[i].0 = capitalized.clone())));
        out.push(("key variants".into(), format!("{at} upper case"), rebuild(&|m| m[i].0 = key.to_uppercase())));
        out.push(("key variants".into(), format!("{at} and a {capitalized} with another value"), rebuild(&|m| m.push((capitalized.clone(), other.clone())))));
        out.push(("key variants".into(), format!("{at} with a trailing space"), rebuild(&|m| m[i].0 = format!("{key} "))));
        out.push(("key variants".into(), format!("{at} with an escaped NUL"), rebuild(&|m| m[i].0 = format!("{key}\\u0000"))));
        out.push(("key variants".into(), format!("{at} missing"), rebuild(&|m| {
            m.remove(i);
        })));
        for (class, what, replacement) in value_variants(key, value) {
            out.push((class.to_string(), format!("{at}: {what}"), rebuild(&|m| m[i].1 = replacement.clone())));
        }
        if let J::Obj(inner) = value {
            if matches!(key.as_str(), "params" | "arguments" | "result") {
                let mut nested = Vec::new();
                object_mutations(inner, &at, &mut nested);
                for (class, what, replacement) in nested {
                    out.push((class, what, rebuild(&|m| m[i].1 = replacement.clone())));
                }
            }
        }
    }
    for (extra, value) in [
        ("__proto__", obj(&[("name", s("delete_repo")), ("method", s("tools/call"))])),
        ("constructor", obj(&[("name", s("delete_repo"))])),
        ("meta", obj(&[("progressToken", raw("1"))])),
    ] {
        out.push(("prototype keys".into(), format!("{path} with {extra}"), rebuild(&|m| m.push((extra.to_string(), value.clone())))));
    }
}

fn structured(seed: &J) -> Vec<(String, String, J)> {
    let mut out = Vec::new();
    match seed {
        J::Obj(members) => object_mutations(members, "$", &mut out),
        J::Arr(items) => {
            for (i, item) in items.iter().enumerate() {
                if let J::Obj(members) = item {
                    let mut inner = Vec::new();
                    object_mutations(members, &format!("$[{i}]"), &mut inner);
                    for (class, what, replacement) in inner {
                        let mut items = items.clone();
                        items[i] = replacement;
                        out.push((format!("batch element: {class}"), what, J::Arr(items)));
                    }
                }
            }
        }
        J::Raw(_) | J::Str(_) => {}
    }
    out
}

/// Mutations of the whole text.
fn textual(text: &str) -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |class: &'static str, what: String, body: Vec<u8>| out.push((class, what, body));
    let t = text.as_bytes();
    add("BOM", "UTF-8 BOM".into(), [&b"\xef\xbb\xbf"[..], t].concat());
    add("BOM", "UTF-8 BOM after a space".into(), [&b" \xef\xbb\xbf"[..], t].concat());
    add("BOM", "UTF-16LE with BOM".into(), [vec![0xff, 0xfe], text.encode_utf16().flat_map(u16::to_le_bytes).collect()].concat());
    add("BOM", "UTF-16BE without BOM".into(), text.encode_utf16().flat_map(u16::to_be_bytes).collect());
    for (what, ws) in [
        ("space", " "),
        ("tab", "\t"),
        ("CRLF", "\r\n"),
        ("vertical tab", "\x0b"),
        ("form feed", "\x0c"),
        ("NUL", "\0"),
        ("NBSP", "\u{a0}"),
        ("LINE SEPARATOR", "\u{2028}"),
        ("NEL", "\u{85}"),
        ("ZWNBSP", "\u{feff}"),
    ] {
        add("odd whitespace", format!("leading {what}"), [ws.as_bytes(), t].concat());
        add("odd whitespace", format!("trailing {what}"), [t, ws.as_bytes()].concat());
        add("odd whitespace", format!("{what} after the first brace"), text.replacen(['{', '['], &format!("{}{ws}", &text[..1]), 1).into_bytes());
        add("odd whitespace", format!("{what} around colons"), text.replace("\":", &format!("\"{ws}:{ws}")).into_bytes());
    }
    for (what, tail) in [("garbage", " x"), ("a comma", ","), ("a second copy", text), ("a closing bracket", "]"), ("a line comment", "//c"), ("a block comment", "/*c*/"), ("a newline and garbage", "\n{")] {
        add("trailing content", format!("followed by {what}"), [t, tail.as_bytes()].concat());
    }
    add("comments", "block comment first".into(), [&b"/*c*/"[..], t].concat());
    add("comments", "block comment inside".into(), text.replacen(',', ",/*c*/", 1).into_bytes());
    add("comments", "line comment inside".into(), text.replacen(',', ",//c\n", 1).into_bytes());
    if let Some(last) = text.rfind(['}', ']']) {
        add("trailing comma", "before the last closing".into(), format!("{},{}", &text[..last], &text[last..]).into_bytes());
    }
    add("syntax", "single quotes".into(), text.replace('"', "'").into_bytes());
    add("syntax", "unquoted keys".into(), text.replace("\"jsonrpc\"", "jsonrpc").into_bytes());
    add("syntax", "truncated".into(), t[..t.len() - 1].to_vec());
    // Bytes inside strings: invalid UTF-8, CESU-8 surrogates, overlong forms, raw controls.
    for (what, bytes) in [
        ("invalid byte 0xFF", &b"\xff"[..]),
        ("CESU-8 lone surrogate", b"\xed\xa0\x80"),
        ("CESU-8 surrogate pair", b"\xed\xa0\xbd\xed\xb8\x80"),
        ("overlong slash", b"\xc0\xaf"),
        ("truncated sequence", b"\xe2\x82"),
        ("raw NUL", b"\0"),
        ("raw newline", b"\n"),
        ("raw 0x1F", b"\x1f"),
    ] {
        if let Some(at) = text.find("2.0\"") {
            let mut body = t[..at + 3].to_vec();
            body.extend_from_slice(bytes);
            body.extend_from_slice(&t[at + 3..]);
            add("bytes in strings", format!("{what} in jsonrpc"), body);
        }
        if let Some(at) = text.find("\"method\":\"") {
            let at = at + "\"method\":\"".len();
            let mut body = t[..at].to_vec();
            body.extend_from_slice(bytes);
            body.extend_from_slice(&t[at..]);
            add("bytes in strings", format!("{what} in method"), body);
        }
    }
    // Batches.
    let element = text;
    add("batches", "batch of one".into(), format!("[{element}]").into_bytes());
    add("batches", "nested batch".into(), format!("[[{element}]]").into_bytes());
    add("batches", "batch of two copies".into(), format!("[{element},{element}]").into_bytes());
    add("batches", "batch with a number".into(), format!("[{element},1]").into_bytes());
    add("batches", "batch with null".into(), format!("[{element},null]").into_bytes());
    add("batches", "batch with an empty object".into(), format!("[{element},{{}}]").into_bytes());
    add("batches", "batch with a leading comma".into(), format!("[,{element}]").into_bytes());
    add("batches", "batch of 100".into(), format!("[{}]", vec![element; 100].join(",")).into_bytes());
    add("batches", "batch of 101".into(), format!("[{}]", vec![element; 101].join(",")).into_bytes());
    out
}

/// Deep nesting inside `arguments` of a tools/call (message 1, params 2, arguments 3).
fn nesting(depth: usize) -> Vec<u8> {
    let inner = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_forecast","arguments":{{"x":{inner}}}}}}}"#).into_bytes()
}

/// UTF-7 as iconv-lite decodes it: `+`, base64 of UTF-16BE without padding, `-`.
fn utf7(text: &str) -> String {
    let units: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    format!("+{}-", b64url_encode(&units).replace('-', "+").replace('_', "/"))
}

/// A body that reads `get_forecast` as UTF-8 and `delete_repo` as UTF-7.
fn utf7_smuggle() -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_forecast","x":"{}delete_repo"}}}}"#, utf7(r#"","name":""#)).into_bytes()
}

const CONTENT_TYPES: [Option<&str>; 22] = [
    Some("application/json; charset=utf-8"),
    Some("application/json;charset=UTF-8"),
    Some("application/json; charset=\"utf-8\""),
    Some("application/json ; charset=utf-8"),
    Some("application/json; charset=utf-7"),
    Some("application/json; charset=\"UTF-7\""),
    Some("application/json; charset=\"utf\\-7\""),
    Some("application/json; charset=utf-8; charset=utf-7"),
    Some("application/json; charset=utf-16le"),
    Some("application/json; charset=utf-16"),
    Some("application/json; charset=utf-32"),
    Some("application/json; charset=latin1"),
    Some("application/json; CHARSET=utf-7"),
    Some("application/json; foo=bar"),
    Some("Application/JSON"),
    Some("application/json, text/plain"),
    Some("text/plain, application/json"),
    Some("application/jsonx"),
    Some("text/plain"),
    Some("application/json-patch+json"),
    Some(""),
    None,
];

/// The deterministic corpus: seeds, structured and textual mutations, content types, and a few
/// bodies made by hand.
fn gen() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut push = |class: &str, label: String, content_type: Option<&str>, body: Vec<u8>| {
        cases.push(Case { class: class.into(), label, content_type: content_type.map(str::to_string), body });
    };
    for (name, seed) in seeds() {
        let text = seed.render();
        push("seed", format!("{name}: as is"), Some(JSON), text.clone().into_bytes());
        for (class, what, mutated) in structured(&seed) {
            push(&class, format!("{name}: {what}"), Some(JSON), mutated.render().into_bytes());
        }
        for (class, what, body) in textual(&text) {
            push(class, format!("{name}: {what}"), Some(JSON), body);
        }
        for ct in CONTENT_TYPES {
            push("content type", format!("{name}: content-type {ct:?}"), ct, text.clone().into_bytes());
        }
    }
    push("empty", "empty body".into(), Some(JSON), Vec::new());
    push("empty", "empty batch".into(), Some(JSON), b"[]".to_vec());
    push("empty", "whitespace".into(), Some(JSON), b" \n".to_vec());
    for depth in [58, 60, 61, 62, 63, 100, 300, 2000] {
        push("nesting", format!("arguments nested {depth} deep"), Some(JSON), nesting(depth));
    }
    let long = "n".repeat(200_000);
    push("long strings", "200 000-character tool name".into(), Some(JSON), format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{long}"}}}}"#).into_bytes());
    push("long strings", "500 000-character argument".into(), Some(JSON), format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"get_forecast","arguments":{{"a":"{}"}}}}}}"#, "a".repeat(500_000)).into_bytes());
    for ct in CONTENT_TYPES {
        push("content type", format!("UTF-7 smuggled name, content-type {ct:?}"), ct, utf7_smuggle());
    }
    cases.extend(by_hand());
    cases
}

// ---------------------------------------------------------------------------------------------
// The tests.

fn label_width(rows: &[Row]) -> usize {
    rows.iter().map(|r| r.case.class.len()).max().unwrap_or(0)
}

#[test]
fn every_accepted_body_means_the_same_to_every_sdk() {
    let reads = corpus();
    assert!(reads.len() > 2000, "the corpus shrank: {}", reads.len());
    let mut filter = Filter::new();
    let rows = judge(reads, &mut |case| filter.view(case));

    // Counts: per reader, what happened to the bodies the filter accepted.
    let accepted = rows.iter().filter(|r| matches!(r.filter, View::Accept { .. })).count();
    let mut per_reader: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    let mut refused_by_reader: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for row in &rows {
        for (name, view) in READERS.iter().zip(row.readers) {
            let mut notes = Notes::default();
            let class = match compare(&row.filter, view, &mut notes) {
                Verdict::FilterRefused => continue,
                Verdict::Agree => "agree",
                Verdict::ReaderRefuses => "reader refuses body",
                Verdict::ReaderRefusesParams => "reader refuses params",
                Verdict::Bypass(_) => "BYPASS",
            };
            let counts = per_reader.entry(name).or_default();
            *counts.entry(class).or_default() += 1;
            if class.starts_with("reader refuses") {
                *refused_by_reader.entry((name, row.case.class.as_str())).or_default() += 1;
            }
            if notes.id_differs {
                *counts.entry("(id spelled differently)").or_default() += 1;
            }
            if notes.kind_differs {
                *counts.entry("(request/notification differ)").or_default() += 1;
            }
        }
    }
    // Bodies the filter refused on which the readers disagree with each other: what the
    // strictness is for, by mutation class.
    let mut refused_disagreements: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.filter == View::Reject) {
        let runs: Vec<_> = row.readers.iter().map(View::executes).collect();
        let entry = refused_disagreements.entry(row.case.class.as_str()).or_default();
        entry.0 += 1;
        if runs.iter().any(|r| r != &runs[0]) {
            entry.1 += 1;
        }
    }

    let width = label_width(&rows);
    println!("parser differential: {} bodies, {} accepted by the filter, {} refused", rows.len(), accepted, rows.len() - accepted);
    for (name, counts) in &per_reader {
        println!("  {name:<18} {counts:?}");
    }
    println!("  accepted by the filter, refused (body or params) by a reader, by class:");
    for ((name, class), n) in &refused_by_reader {
        println!("    {name:<18} {class:<width$} {n:>5}");
    }
    let disagreements: usize = refused_disagreements.values().map(|(_, d)| d).sum();
    println!("  refused by the filter, by class: bodies / on which the readers disagree (in all: {disagreements})");
    for (class, (n, disagree)) in &refused_disagreements {
        println!("    {class:<width$} {n:>5} / {disagree}");
    }

    let found = bypasses(&rows);
    assert!(found.is_empty(), "{} bypasses:\n{}", found.len(), found.join("\n"));
    // The corpus exercises what it is for: bodies get through, and readers do disagree on some
    // of the refused ones.
    assert!(accepted > 300, "only {accepted} bodies accepted");
    assert!(disagreements > 100, "{disagreements}");
    for name in READERS {
        assert!(per_reader[name].get("agree").copied().unwrap_or(0) > 100, "{name}: {:?}", per_reader[name]);
    }
}

fn case(label: &str, content_type: &str, body: &[u8]) -> Case {
    Case { class: "by hand".into(), label: label.into(), content_type: Some(content_type.into()), body: body.to_vec() }
}

/// Bodies known to mean different things to different readers (part of the corpus; the last is
/// a control that must pass).
fn by_hand() -> Vec<Case> {
    vec![
        case("duplicate name: JS and Python keep the last", JSON, br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast","name":"delete_repo"}}"#),
        case("duplicate name under an escaped key", JSON, br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast","n\u0061me":"delete_repo"}}"#),
        case("duplicate params", JSON, br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_forecast"},"params":{"name":"delete_repo"}}"#),
        case("duplicate method", JSON, br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"name":"delete_repo"},"method":"tools/call"}"#),
        case("duplicate name in a batch element", JSON, br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_forecast","name":"delete_repo"}}]"#),
        case("lone surrogate in the name: Python's json accepts it", JSON, br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo\ud800"}}"#),
        case("UTF-7 charset: express.json() decodes it", "application/json; charset=utf-7", &utf7_smuggle()),
        case("UTF-7 charset, quoted and upper case", "application/json; charset=\"UTF-7\"", &utf7_smuggle()),
        case("BOM: JS and Python strip it", JSON, b"\xef\xbb\xbf{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"delete_repo\"}}"),
        // Side by side, the same body declared UTF-8: accepted, and every reader runs get_forecast.
        case("UTF-7 smuggle body declared UTF-8", "application/json; charset=utf-8", &utf7_smuggle()),
    ]
}

/// Bodies known to mean different things to different readers: the filter refuses each, and
/// each really is read differently (so the refusal matters).
#[test]
fn known_dangerous_bodies_are_refused() {
    let forecast = hex16("get_forecast");
    let delete = hex16("delete_repo");
    let reads: Vec<&Read> = corpus().iter().filter(|r| r.case.class == "by hand").collect();
    assert_eq!(reads.len(), by_hand().len());
    let mut filter = Filter::new();
    let rows = judge(reads, &mut |case| filter.view(case));
    let (control, rows) = rows.split_last().unwrap();
    assert_eq!(control.filter.executes(), Some(vec![(false, Some(hex16("tools/call")), Some(forecast.clone()))]));
    for view in control.readers {
        assert_eq!(view, &control.filter, "{}", control.case.label);
    }
    for row in rows {
        let shown: Vec<String> = READERS.iter().zip(row.readers).map(|(n, v)| format!("{n}: {}", v.show())).collect();
        println!("{}\n    filter: {}\n    {}", row.case.label, row.filter.show(), shown.join("\n    "));
        assert_eq!(row.filter, View::Reject, "{}", row.case.label);
        let runs: Vec<_> = row.readers.iter().map(View::executes).collect();
        let someone_runs_it = runs.iter().any(Option::is_some);
        assert!(someone_runs_it, "{}: no reader accepts it, so it is no test of the filter", row.case.label);
    }
    // What the dangerous ones make a reader do: run delete_repo where the first-spelled name
    // was get_forecast.
    let ts_express = |i: usize| &rows[i].readers[5];
    let targets = |v: &View| match v {
        View::Accept { messages, .. } => messages.iter().filter_map(|m| m.target.clone()).collect::<Vec<_>>(),
        View::Reject => Vec::new(),
    };
    assert_eq!(targets(ts_express(0)), vec![delete.clone()]);
    assert_eq!(targets(&rows[0].readers[2]), vec![delete.clone()], "python keeps the last name");
    assert_eq!(targets(ts_express(6)), vec![delete.clone()], "express.json() reads UTF-7");
    assert_eq!(targets(&rows[6].readers[4]), vec![forecast], "the web-standard transport reads UTF-8");
    assert_eq!(rows[5].readers[3].executes().map(|r| r.len()), Some(1), "python's json.loads accepts a lone surrogate");
}

/// The comparison catches a lax decoder: with `serde_json::Value` (the last duplicate wins) or a
/// reader that keeps the first duplicate in the filter's place, the same corpus shows bypasses.
#[test]
fn a_lax_decoder_in_the_filters_place_is_caught() {
    // The duplicate-key and content-type cases of the shared corpus.
    let subset: Vec<&Read> = corpus().iter().filter(|r| r.case.class.contains("duplicate key") || r.case.class == "content type").collect();
    assert!(subset.len() > 300);

    // serde_json::Value, last key wins, and no look at the Content-Type's charset.
    let rows = judge(subset.iter().copied(), &mut |case| value_view(case));
    let found = bypasses(&rows);
    println!("serde_json::Value as the filter: {} bypasses, e.g.\n{}", found.len(), found.first().cloned().unwrap_or_default());
    assert!(found.iter().any(|f| f.contains("ts-express") && f.contains("charset=utf-7")), "{found:#?}");

    // The first duplicate wins (as a hand-written scanner that stops at the first match would).
    let rows = judge(subset.iter().copied(), &mut |case| first_key_view(case));
    let found = bypasses(&rows);
    println!("first-key-wins as the filter: {} bypasses, e.g.\n{}", found.len(), found.first().cloned().unwrap_or_default());
    for reader in ["python", "ts"] {
        assert!(found.iter().any(|f| f.contains(&format!(": {reader}: ")) && f.contains("duplicated, other value last")), "{reader}: {found:#?}");
    }
}

/// A JSON reader where the first of duplicate keys wins.
fn first_key_view(case: &Case) -> View {
    struct FirstWins(Value);
    impl<'de> serde::Deserialize<'de> for FirstWins {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = FirstWins;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_bool<E>(self, v: bool) -> Result<FirstWins, E> {
                    Ok(FirstWins(Value::Bool(v)))
                }
                fn visit_i64<E>(self, v: i64) -> Result<FirstWins, E> {
                    Ok(FirstWins(json!(v)))
                }
                fn visit_u64<E>(self, v: u64) -> Result<FirstWins, E> {
                    Ok(FirstWins(json!(v)))
                }
                fn visit_f64<E>(self, v: f64) -> Result<FirstWins, E> {
                    Ok(FirstWins(json!(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<FirstWins, E> {
                    Ok(FirstWins(Value::String(v.into())))
                }
                fn visit_unit<E>(self) -> Result<FirstWins, E> {
                    Ok(FirstWins(Value::Null))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<FirstWins, A::Error> {
                    let mut items = Vec::new();
                    while let Some(FirstWins(v)) = seq.next_element()? {
                        items.push(v);
                    }
                    Ok(FirstWins(Value::Array(items)))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FirstWins, A::Error> {
                    let mut members = Map::new();
                    while let Some((k, FirstWins(v))) = map.next_entry::<String, FirstWins>()? {
                        members.entry(k).or_insert(v);
                    }
                    Ok(FirstWins(Value::Object(members)))
                }
            }
            d.deserialize_any(V)
        }
    }
    match serde_json::from_slice::<FirstWins>(&case.body) {
        Ok(FirstWins(value)) => value_shape(&value),
        Err(_) => View::Reject,
    }
}

/// The regression for the one bypass this comparison found (a body the filter read as UTF-8
/// while `express.json()` read it as UTF-7), on the native core and on the built `.wasm`: the
/// UTF-7 declaration is refused with 415, the same body declared UTF-8 goes through for a token
/// that may call only `get_forecast`.
#[test]
fn a_charset_other_than_utf8_is_refused_by_the_filter_and_its_wasm() {
    use mcp_guard_tests::{check, refused, Expect, NativeTarget, Target as _, WasmTarget, World};
    let w = World::new();
    let config = w.config(json!({}));
    let body = utf7_smuggle();
    let steps = [
        ("application/json; charset=utf-7", refused(415, "malformed_request")),
        ("application/json; charset=\"UTF-7\"", refused(415, "malformed_request")),
        ("application/json; charset=utf-16le", refused(415, "malformed_request")),
        ("application/json; charset=utf-8; charset=utf-7", refused(415, "malformed_request")),
        ("application/json; charset=utf-8", Expect::Forwarded),
        ("application/json", Expect::Forwarded),
    ];
    let mut native = NativeTarget::new();
    native.configure(&config).unwrap();
    let mut wasm = WasmTarget::new();
    wasm.configure(&config).unwrap();
    for (i, (content_type, expect)) in steps.iter().enumerate() {
        let req = w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read")).raw_body(content_type, body.clone());
        check(&format!("native, {content_type}"), i, &native.send(&req), expect);
        let req = w.dpop_request("POST", "/mcp", &w.dpop_token("weather:read")).raw_body(content_type, body.clone());
        check(&format!("wasm, {content_type}"), i, &wasm.send(&req), expect);
    }
}
