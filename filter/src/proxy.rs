//! The proxy-wasm glue, and the only module that talks to the host.
//!
//! Per worker (VM): one root context holds the compiled [`Guard`], the issuer's keys and the
//! token cache in a [`Worker`] shared with every HTTP context. An HTTP context collects the
//! request (headers, then the whole body), asks the guard, and either lets the request go on or
//! sends the guard's local reply. Nothing reaches the upstream before the decision: headers are
//! held (`Pause`, which Envoy honours with `allow_on_headers_stop_iteration: true`) until the
//! body is judged.
//!
//! Keys from `jwks_uri` are fetched with `dispatch_http_call`. A request that needs keys not yet
//! loaded (or names an unknown `kid`) waits in `Worker::waiting`; whoever receives the JWKS
//! answer decides every waiting request again (switching to its context with
//! `set_effective_context`) and resumes or refuses it. A fetch that never answers is given up
//! on tick, so nobody waits forever, and a failure is a 503, never a pass.
//!
//! Host calls go through `proxy_wasm::hostcalls` so every error is handled here (the SDK's
//! context helpers unwrap), and header values are read as bytes (its string getters panic on
//! non-UTF-8).
#![allow(unsafe_code)] // `proxy_wasm::main!` exports `_initialize` with `#[no_mangle]`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::answer::LocalReply;
use crate::audit;
use crate::config::{AuditFilterState, AuditLog, Config, KeySource, AUDIT_LOG_BUFFER_BYTES};
use crate::denial::Denial;
use crate::guard::{Decision, Env, Guard, HeadVerdict, RequestHead};
use crate::jwks::KeySet;
use crate::listing::{self, ListFilter};
use crate::replay::{SharedStore, StoreError};
use crate::token::TokenCache;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(GuardRoot { context_id, worker: Rc::new(RefCell::new(Worker::default())) })
    });
}}

/// At most one unknown-`kid` refetch per this many seconds (a flood of tokens with made-up
/// `kid`s must not become a flood of JWKS fetches).
const UNKNOWN_KID_REFETCH_SECONDS: u64 = 30;
/// After a failed fetch with no keys at all, retry this often.
const RETRY_SECONDS: u64 = 5;

fn now_seconds() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Shared data as the replay cache's store.
struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas.unwrap_or(0))),
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let cas = if cas == 0 { None } else { Some(cas) };
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(_) => Err(StoreError::Failed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum KeyState {
    #[default]
    NotLoaded,
    Loaded,
    /// The last fetch failed and no keys were ever loaded.
    Failed,
}

/// A request waiting for keys.
struct Waiter {
    context_id: u32,
    head: RequestHead,
    body: Option<Vec<u8>>,
}

/// Counters in Envoy's stats (`wasmcustom.mcp_guard.*`), each defined on first use.
#[derive(Default)]
struct Metrics {
    ids: HashMap<String, u32>,
    /// Per tool of the policy (or `_unlisted`): the ids of its `allowed` and `denied` counters,
    /// found by the tool's name as the request spelled it, so a decision builds no stat name.
    tool_ids: HashMap<String, [Option<u32>; 2]>,
}

impl Metrics {
    fn increment(&mut self, name: &str) {
        if let Some(id) = self.id(name) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn id(&mut self, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(MetricType::Counter, name).ok()?;
        self.ids.insert(name.to_string(), id);
        Some(id)
    }

    /// `mcp_guard.tool.<tool>.<verdict>`; tools outside the policy all count as `_unlisted`.
    fn increment_tool(&mut self, guard: &Guard, tool: &str, denied: bool) {
        let key = if guard.config.policy.tools.contains_key(tool) { tool } else { UNLISTED_TOOL_STAT };
        let slot = usize::from(denied);
        let known = self.tool_ids.get(key).and_then(|ids| ids.get(slot).copied().flatten());
        let id = match known {
            Some(id) => id,
            None => {
                let verdict = if denied { "denied" } else { "allowed" };
                let Some(id) = self.id(&format!("mcp_guard.tool.{}.{verdict}", tool_stat(key))) else {
                    return;
                };
                let ids = self.tool_ids.entry(key.to_string()).or_default();
                if let Some(entry) = ids.get_mut(slot) {
                    *entry = Some(id);
                }
                id
            }
        };
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Everything one worker's contexts share.
#[derive(Default)]
struct Worker {
    guard: Option<Rc<Guard>>,
    root_context_id: u32,
    keys: Option<Rc<KeySet>>,
    key_state: KeyState,
    /// When the fetch under way must have answered by (else it is given up).
    fetch_deadline: Option<u64>,
    next_refresh: u64,
    last_unknown_kid_refetch: Option<u64>,
    waiting: Vec<Waiter>,
    /// Allowed requests with `tools/list` calls, by context id: their answers get filtered.
    list_filters: HashMap<u32, ListFilter>,
    tokens: Option<TokenCache>,
    metrics: Metrics,
    replay_tag: u32,
    /// Audit lines waiting to be written (`audit.log_flush_ms`), one per line, `\n` between.
    audit_lines: String,
}

impl Worker {
    fn push_audit_line(&mut self, event: &str) {
        if !self.audit_lines.is_empty() {
            self.audit_lines.push('\n');
        }
        self.audit_lines.push_str(audit::AUDIT_PREFIX);
        self.audit_lines.push_str(event);
    }

    /// Writes the waiting audit lines into Envoy's log, one host call for all of them.
    fn flush_audit_lines(&mut self) {
        if !self.audit_lines.is_empty() {
            log(LogLevel::Info, &self.audit_lines);
            self.audit_lines.clear(); // keeps its capacity for the next ones
        }
    }
}

type SharedWorker = Rc<RefCell<Worker>>;

fn random_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    // std draws RandomState's keys from the host's random source (WASI random_get).
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_seconds());
    (h.finish() as u32).max(1)
}

/// Starts a JWKS fetch from the current context. True if it was dispatched.
fn dispatch_jwks_fetch(worker: &mut Worker, now: u64) -> bool {
    let Some(guard) = worker.guard.clone() else {
        return false;
    };
    let KeySource::Remote(uri) = &guard.config.keys else {
        return false;
    };
    if worker.fetch_deadline.is_some() {
        return true; // one at a time; the waiter will be served by that one
    }
    let headers = vec![
        (":method", "GET"),
        (":path", uri.url.path()),
        (":authority", uri.url.authority()),
        (":scheme", uri.url.scheme()),
        ("accept", "application/json, application/jwk-set+json"),
    ];
    match hostcalls::dispatch_http_call(&uri.cluster, headers, None, vec![], Duration::from_millis(uri.timeout_ms)) {
        Ok(_) => {
            worker.fetch_deadline = Some(now + uri.timeout_ms.div_ceil(1000) + 2);
            true
        }
        Err(status) => {
            log(LogLevel::Warn, &format!("mcp-guard: cannot fetch JWKS through cluster {:?}: {status:?}", uri.cluster));
            false
        }
    }
}

/// Handles a JWKS answer (or its absence), then decides every waiting request again.
/// `caller` is the context whose callback we are in, restored at the end.
fn on_jwks_answer(shared: &SharedWorker, caller: u32, num_headers: usize, body_size: usize) {
    let now = now_seconds();
    {
        let mut w = shared.borrow_mut();
        w.fetch_deadline = None;
        // A failed call (reset, no healthy host) comes with no header map at all: asking it for
        // a value is an error the SDK panics on, so only read what the host says is there.
        let status = if num_headers == 0 {
            None
        } else {
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
                .ok()
                .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == ":status").map(|(_, v)| v))
        };
        let body = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
        };
        let refresh = match w.guard.as_ref().map(|g| &g.config.keys) {
            Some(KeySource::Remote(uri)) => uri.refresh_seconds,
            _ => 300,
        };
        let parsed = match status.as_deref() {
            Some(b"200") => KeySet::from_jwks_bytes(&body).map_err(|e| e.to_string()),
            Some(other) => Err(format!("status {}", String::from_utf8_lossy(other))),
            None => Err("no answer (timeout or connection failure)".to_string()),
        };
        match parsed {
            Ok(keys) => {
                log(LogLevel::Info, &format!("mcp-guard: JWKS loaded: {} keys ({} skipped)", keys.len(), keys.skipped));
                w.keys = Some(Rc::new(keys));
                w.key_state = KeyState::Loaded;
                w.next_refresh = now + refresh;
                // Tokens verified under the old set are verified again under the new one.
                if let Some(tokens) = w.tokens.as_mut() {
                    tokens.clear();
                }
                w.metrics.increment("mcp_guard.jwks_fetch_ok");
            }
            Err(why) => {
                log(LogLevel::Warn, &format!("mcp-guard: JWKS fetch failed: {why}"));
                w.metrics.increment("mcp_guard.jwks_fetch_failed");
                if w.key_state != KeyState::Loaded {
                    w.key_state = KeyState::Failed;
                    w.next_refresh = now + RETRY_SECONDS;
                } else {
                    // Keep serving with the keys we have; try again soon.
                    w.next_refresh = now + RETRY_SECONDS.max(refresh / 10);
                }
            }
        }
    }
    drain_waiting(shared, caller);
}

/// Decides every waiting request again (keys will not be fetched for them a second time).
fn drain_waiting(shared: &SharedWorker, caller: u32) {
    let waiting = std::mem::take(&mut shared.borrow_mut().waiting);
    for waiter in waiting {
        if hostcalls::set_effective_context(waiter.context_id).is_err() {
            continue; // the request is gone
        }
        let now = now_seconds();
        let decision = decide(shared, &waiter.head, waiter.body.as_deref(), false, now);
        record(shared, &waiter.head, &decision, now);
        match decision {
            Decision::Allow(_) => {
                if let Some(guard) = shared.borrow().guard.clone() {
                    apply_upstream_headers(shared, waiter.context_id, &guard, &waiter.head, &decision);
                }
                let _ = hostcalls::resume_http_request();
            }
            Decision::Deny { ref reply, .. } => send_reply(reply),
            // Cannot happen with may_fetch_keys false; refuse rather than leave it hanging.
            Decision::NeedKeys { .. } => send_reply(&crate::answer::keys_unavailable()),
        }
    }
    let _ = hostcalls::set_effective_context(caller);
}


/// `now` is read once per decision by the caller, which records the decision at that time too
/// (a host call each).
fn decide(shared: &SharedWorker, head: &RequestHead, body: Option<&[u8]>, may_fetch_keys: bool, now: u64) -> Decision {
    let mut w = shared.borrow_mut();
    let Some(guard) = w.guard.clone() else {
        // Envoy sends no traffic to a plugin whose configuration failed; refuse if it does.
        return Decision::Deny {
            denial: Denial::KeysUnavailable,
            reply: Box::new(crate::answer::keys_unavailable()),
            facts: Box::default(),
        };
    };
    let keys = w.keys.clone();
    let may_fetch_keys = may_fetch_keys && w.key_state != KeyState::Failed;
    let tag = w.replay_tag;
    let Worker { tokens, .. } = &mut *w;
    let tokens = tokens.get_or_insert_with(|| TokenCache::new(guard.config.token_cache_entries));
    let mut store = HostSharedData;
    let mut env = Env {
        now,
        keys: keys.as_deref(),
        may_fetch_keys,
        tokens,
        replay_store: &mut store,
        replay_tag: tag,
        client_cert_sha256_hex: &client_cert_sha256_hex,
    };
    guard.decide(head, body, &mut env)
}

/// The current stream's client certificate digest (a host call; see [`Env::client_cert_sha256_hex`]).
fn client_cert_sha256_hex() -> Option<Vec<u8>> {
    hostcalls::get_property(vec!["connection", "sha256_peer_certificate_digest"]).ok().flatten().filter(|v| !v.is_empty())
}

/// The stat name segment of every tool outside the policy (bounded cardinality: a caller
/// cannot mint stats by inventing tool names).
const UNLISTED_TOOL_STAT: &str = "_unlisted";

/// A stat name segment from a policy tool's name: characters outside [A-Za-z0-9_-] as `_`.
fn tool_stat(tool: &str) -> String {
    tool.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// Stats, audit lines and access-log facts for a decision, in the current stream context.
fn record(shared: &SharedWorker, head: &RequestHead, decision: &Decision, now: u64) {
    let mut w = shared.borrow_mut();
    let guard = w.guard.clone();
    let (denied, messages) = match decision {
        Decision::Allow(a) => (false, a.messages.as_slice()),
        Decision::Deny { denial, facts, .. } => {
            w.metrics.increment(&format!("mcp_guard.denied.{}", denial.code()));
            (true, facts.messages.as_slice())
        }
        Decision::NeedKeys { .. } => return,
    };
    w.metrics.increment(if denied { "mcp_guard.denied" } else { "mcp_guard.allowed" });
    if let Some(guard) = &guard {
        for message in messages {
            if let crate::mcp::Message::Call { target: crate::mcp::Target::Tool(tool), .. } = message {
                w.metrics.increment_tool(guard, tool, denied);
            }
        }
    }
    drop(w);
    let settings = guard.as_ref().map(|g| g.config.audit).unwrap_or_default();
    let log_line = match settings.log {
        AuditLog::All => true,
        AuditLog::Denied => denied,
        AuditLog::None => false,
    };
    if !log_line && settings.filter_state == AuditFilterState::None {
        return;
    }
    if log_line || settings.filter_state == AuditFilterState::Record {
        let events = audit::events_json(head, decision, now);
        if log_line {
            // Gathered and written together: a write into Envoy's log per line cost more than
            // the rest of the cached path's host calls. The tick and a full buffer flush them;
            // with `log_flush_ms` 0, or without a configuration (no tick), each goes at once.
            let write_now = settings.log_flush_ms == 0 || guard.is_none();
            let mut w = shared.borrow_mut();
            for event in &events {
                w.push_audit_line(event);
                if write_now {
                    w.flush_audit_lines();
                }
            }
            if w.audit_lines.len() >= AUDIT_LOG_BUFFER_BYTES {
                w.flush_audit_lines();
            }
        }
        if settings.filter_state == AuditFilterState::Record {
            // The whole record, one host call: the event, or an array of them for a batch.
            let record = match events.as_slice() {
                [one] => one.clone(),
                many => format!("[{}]", many.join(",")),
            };
            let _ = hostcalls::set_property(vec![audit::FILTER_STATE_RECORD], Some(record.as_bytes()));
        }
    }
    match settings.filter_state {
        AuditFilterState::None | AuditFilterState::Record => {}
        // The facts one by one for Envoy's access log: %FILTER_STATE(wasm.mcp_guard_<name>:PLAIN)%.
        AuditFilterState::Fields => {
            for (key, value) in audit::filter_state_facts(decision) {
                let _ = hostcalls::set_property(vec![key], Some(value.as_bytes()));
            }
            let chain: Vec<String> = match decision {
                Decision::Allow(a) => audit::delegation_names(&a.claims),
                Decision::Deny { facts, .. } => facts.claims.as_deref().map(audit::delegation_names).unwrap_or_default(),
                Decision::NeedKeys { .. } => Vec::new(),
            };
            if !chain.is_empty() {
                let _ = hostcalls::set_property(vec!["mcp_guard_delegation"], Some(chain.join(",").as_bytes()));
            }
        }
    }
}

/// Before an allowed request goes on: the client's credentials and any identity headers it
/// sent in our namespace go; the verified identity comes.
fn apply_upstream_headers(shared: &SharedWorker, context_id: u32, guard: &Guard, head: &RequestHead, decision: &Decision) {
    let Decision::Allow(allowed) = decision else {
        return;
    };
    if let Some(filter) = ListFilter::for_messages(&allowed.messages, &allowed.claims.scopes) {
        shared.borrow_mut().list_filters.insert(context_id, filter);
    }
    let edits = audit::upstream_headers(&guard.config, head, &allowed.claims, &allowed.possession, &allowed.messages);
    for name in &edits.remove {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, None);
    }
    for (name, value) in &edits.set {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value.as_bytes()));
    }
}

fn send_reply(reply: &LocalReply) {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Err(status) = hostcalls::send_http_response(reply.status, headers, Some(&reply.body)) {
        log(LogLevel::Error, &format!("mcp-guard: cannot send local reply: {status:?}; resetting the request"));
        let _ = hostcalls::reset_http_request();
    }
}

struct GuardRoot {
    context_id: u32,
    worker: SharedWorker,
}

impl Context for GuardRoot {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        on_jwks_answer(&self.worker, self.context_id, num_headers, body_size);
    }

    /// The plugin is going away (configuration change, shutdown): no audit line stays behind.
    fn on_done(&mut self) -> bool {
        self.worker.borrow_mut().flush_audit_lines();
        true
    }
}

impl RootContext for GuardRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(bytes)) => bytes,
            _ => Vec::new(),
        };
        let config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                log(LogLevel::Error, &format!("mcp-guard: {e}"));
                return false;
            }
        };
        let now = now_seconds();
        let mut w = self.worker.borrow_mut();
        w.root_context_id = self.context_id;
        w.replay_tag = random_tag();
        w.tokens = Some(TokenCache::new(config.token_cache_entries));
        match &config.keys {
            KeySource::Inline(keys) => {
                w.keys = Some(Rc::new(keys.clone()));
                w.key_state = KeyState::Loaded;
            }
            KeySource::Remote(_) => {
                w.keys = None;
                w.key_state = KeyState::NotLoaded;
                w.fetch_deadline = None;
            }
        }
        let remote = matches!(config.keys, KeySource::Remote(_));
        // The tick refreshes keys (each second) and writes waiting audit lines (at most
        // `audit.log_flush_ms` late); a reconfiguration first writes the old settings' lines.
        w.flush_audit_lines();
        let flush_ms = match config.audit.log {
            AuditLog::None => 0,
            AuditLog::All | AuditLog::Denied => config.audit.log_flush_ms,
        };
        let tick_ms = match (remote, flush_ms) {
            (false, ms) => ms,
            (true, 0) => 1000,
            (true, ms) => ms.min(1000),
        };
        log(
            LogLevel::Info,
            &format!(
                "mcp-guard: configured for {} (binding {}, {} tools in policy)",
                config.audience,
                config.binding.name(),
                config.policy.tools.len()
            ),
        );
        w.guard = Some(Rc::new(Guard::new(config)));
        if remote {
            // Clusters may not be ready this early; the tick retries if this fails.
            dispatch_jwks_fetch(&mut w, now);
        }
        let _ = hostcalls::set_tick_period(Duration::from_millis(tick_ms));
        true
    }

    fn on_tick(&mut self) {
        let now = now_seconds();
        let gave_up = {
            let mut w = self.worker.borrow_mut();
            w.flush_audit_lines();
            if !matches!(w.guard.as_ref().map(|g| &g.config.keys), Some(KeySource::Remote(_))) {
                return; // inline keys: the tick is for the audit lines only
            }
            match w.fetch_deadline {
                Some(deadline) if now > deadline => {
                    // The answer never came (e.g. its context went away): give up on it.
                    w.fetch_deadline = None;
                    if w.key_state != KeyState::Loaded {
                        w.key_state = KeyState::Failed;
                    }
                    w.next_refresh = now + RETRY_SECONDS;
                    log(LogLevel::Warn, "mcp-guard: JWKS fetch timed out");
                    true
                }
                Some(_) => false,
                None => {
                    if now >= w.next_refresh {
                        dispatch_jwks_fetch(&mut w, now);
                    }
                    false
                }
            }
        };
        if gave_up {
            drain_waiting(&self.worker, self.context_id);
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GuardStream {
            context_id,
            worker: Rc::clone(&self.worker),
            head: None,
            body_size: 0,
            decided: false,
            editing: None,
        }))
    }
}

struct GuardStream {
    context_id: u32,
    worker: SharedWorker,
    head: Option<RequestHead>,
    body_size: usize,
    decided: bool,
    /// A `tools/list` answer being buffered to filter: the filter and the content type.
    editing: Option<(ListFilter, String)>,
}

impl GuardStream {
    fn guard(&self) -> Option<Rc<Guard>> {
        self.worker.borrow().guard.clone()
    }

    fn refuse_now(&mut self, reply: &LocalReply, denial: Option<&Denial>) -> Action {
        self.decided = true;
        if let Some(denial) = denial {
            let decision = Decision::Deny { denial: denial.clone(), reply: Box::new(reply.clone()), facts: Box::default() };
            let none = RequestHead::default();
            record(&self.worker, self.head.as_ref().unwrap_or(&none), &decision, now_seconds());
        }
        send_reply(reply);
        Action::Pause
    }

    /// A `tools/list` answer we cannot filter is replaced by a 502, never passed half-edited.
    fn refuse_response(&mut self) -> Action {
        self.editing = None;
        let denial = Denial::UnreadableToolsList;
        let reply = match self.guard() {
            Some(guard) => crate::answer::refusal(&denial, &guard.config, None, None),
            None => crate::answer::keys_unavailable(),
        };
        let decision = Decision::Deny { denial, reply: Box::new(reply.clone()), facts: Box::default() };
        let none = RequestHead::default();
        record(&self.worker, self.head.as_ref().unwrap_or(&none), &decision, now_seconds());
        send_reply(&reply);
        Action::Pause
    }

    fn read_head(&self) -> Result<RequestHead, ()> {
        let pairs = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).map_err(|_| ())?;
        let mut head = RequestHead::default();
        for (name, value) in pairs {
            match name.as_str() {
                ":method" => head.method = String::from_utf8(value).map_err(|_| ())?,
                ":path" => head.path = String::from_utf8(value).map_err(|_| ())?,
                _ => {
                    let mut name = name;
                    name.make_ascii_lowercase();
                    head.headers.push((name, value));
                }
            }
        }
        Ok(head)
    }

    /// Decides with the whole body; `Continue` lets the request go, `Pause` holds it (refused,
    /// or waiting for keys).
    fn decide_with_body(&mut self, body: Option<Vec<u8>>) -> Action {
        let Some(head) = self.head.as_ref() else {
            return Action::Pause;
        };
        self.decided = true;
        let now = now_seconds();
        let decision = decide(&self.worker, head, body.as_deref(), true, now);
        match decision {
            Decision::Allow(_) => {
                record(&self.worker, head, &decision, now);
                if let Some(guard) = self.guard() {
                    apply_upstream_headers(&self.worker, self.context_id, &guard, head, &decision);
                }
                Action::Continue
            }
            Decision::Deny { ref reply, .. } => {
                record(&self.worker, head, &decision, now);
                send_reply(reply);
                Action::Pause
            }
            Decision::NeedKeys { unknown_kid } => {
                let head = head.clone();
                self.wait_for_keys(head, body, unknown_kid)
            }
        }
    }

    fn wait_for_keys(&mut self, head: RequestHead, body: Option<Vec<u8>>, unknown_kid: Option<String>) -> Action {
        let now = now_seconds();
        let dispatched = {
            let mut w = self.worker.borrow_mut();
            let in_flight = w.fetch_deadline.is_some();
            let allowed = match (&unknown_kid, w.last_unknown_kid_refetch) {
                (None, _) => true, // keys not loaded yet: the root's fetch serves us
                (Some(_), Some(last)) => now >= last + UNKNOWN_KID_REFETCH_SECONDS || in_flight,
                (Some(_), None) => true,
            };
            if !allowed {
                false
            } else {
                if unknown_kid.is_some() && !in_flight {
                    w.last_unknown_kid_refetch = Some(now);
                }
                w.waiting.push(Waiter { context_id: self.context_id, head: head.clone(), body: body.clone() });
                in_flight || dispatch_jwks_fetch(&mut w, now)
            }
        };
        if dispatched {
            if let Some(kid) = unknown_kid {
                log(LogLevel::Info, &format!("mcp-guard: token names unknown kid {kid:?}; refetching JWKS"));
            }
            return Action::Pause;
        }
        // No fetch possible now: decide without fetching (unknown kid → 401, no keys → 503).
        self.worker.borrow_mut().waiting.retain(|w| w.context_id != self.context_id);
        let decision = decide(&self.worker, &head, body.as_deref(), false, now);
        record(&self.worker, &head, &decision, now);
        match decision {
            Decision::Allow(_) => {
                if let Some(guard) = self.guard() {
                    apply_upstream_headers(&self.worker, self.context_id, &guard, &head, &decision);
                }
                Action::Continue
            }
            Decision::Deny { reply, .. } => {
                send_reply(&reply);
                Action::Pause
            }
            Decision::NeedKeys { .. } => {
                send_reply(&crate::answer::keys_unavailable());
                Action::Pause
            }
        }
    }

    fn whole_body(&self) -> Option<Vec<u8>> {
        match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, self.body_size) {
            Ok(Some(bytes)) => Some(bytes),
            _ => Some(Vec::new()),
        }
    }
}

impl Context for GuardStream {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize, _trailers: usize) {
        on_jwks_answer(&self.worker, self.context_id, num_headers, body_size);
    }
}

/// TEST-ONLY (feature `trap-for-tests`, never in a release build): a request with
/// `x-mcp-guard-test-trap: 1` traps the VM, as a bug would, for the fail-closed tests.
#[cfg(feature = "trap-for-tests")]
fn trap_for_tests() {
    if let Ok(Some(value)) = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-mcp-guard-test-trap") {
        if value == b"1" {
            core::arch::wasm32::unreachable();
        }
    }
}

impl HttpContext for GuardStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "trap-for-tests")]
        trap_for_tests();
        let Some(guard) = self.guard() else {
            return self.refuse_now(&crate::answer::keys_unavailable(), Some(&Denial::KeysUnavailable));
        };
        let head = match self.read_head() {
            Ok(head) => head,
            Err(()) => {
                let reply = crate::answer::refusal(&Denial::InvalidRequestTarget, &guard.config, None, None);
                return self.refuse_now(&reply, Some(&Denial::InvalidRequestTarget));
            }
        };
        let verdict = guard.on_head(&head);
        self.head = Some(head);
        match verdict {
            HeadVerdict::Reply(reply, denial) => self.refuse_now(&reply, denial.as_ref()),
            HeadVerdict::ReadBody | HeadVerdict::Decide if end_of_stream => {
                let body = if verdict == HeadVerdict::ReadBody { Some(Vec::new()) } else { None };
                self.decide_with_body(body)
            }
            // Hold the headers until the body is judged.
            HeadVerdict::ReadBody | HeadVerdict::Decide => Action::Pause,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.decided {
            return Action::Continue;
        }
        self.body_size = body_size;
        let Some(guard) = self.guard() else {
            return Action::Pause;
        };
        if body_size > guard.config.max_body_bytes {
            let denial = Denial::BodyTooLarge;
            let reply = crate::answer::refusal(&denial, &guard.config, None, None);
            return self.refuse_now(&reply, Some(&denial));
        }
        if !end_of_stream {
            return Action::Pause; // keep buffering
        }
        let body = self.whole_body();
        self.decide_with_body(body)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.decided {
            return Action::Continue;
        }
        // Trailers end the request: the buffered body is complete.
        let body = self.whole_body();
        self.decide_with_body(body)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(filter) = self.worker.borrow_mut().list_filters.remove(&self.context_id) else {
            return Action::Continue;
        };
        if end_of_stream {
            return Action::Continue;
        }
        let content_type = hostcalls::get_map_bytes(MapType::HttpResponseHeaders)
            .ok()
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k.eq_ignore_ascii_case("content-type")))
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        if !listing::editable(&content_type) {
            return Action::Continue;
        }
        self.editing = Some((filter, content_type));
        Action::Pause // hold the headers: content-length changes with the body
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some((filter, content_type)) = self.editing.clone() else {
            return Action::Continue;
        };
        if body_size > listing::MAX_LIST_RESPONSE_BYTES {
            return self.refuse_response();
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.editing = None;
        let Some(guard) = self.guard() else {
            return self.refuse_response();
        };
        let body = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
        match listing::filter_body(&body, &content_type, &filter, &guard.config.policy) {
            Ok((_, 0)) => Action::Continue,
            Ok((edited, removed)) => {
                let replaced = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, body_size, &edited).is_ok();
                let length = edited.len().to_string();
                let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, "content-length", Some(length.as_bytes()));
                if !replaced {
                    return self.refuse_response();
                }
                log(LogLevel::Debug, &format!("mcp-guard: tools/list trimmed by {removed} tools the caller may not call"));
                Action::Continue
            }
            Err(_) => self.refuse_response(),
        }
    }

    fn on_log(&mut self) {
        // A request that went away while waiting for keys is not decided later.
        let id = self.context_id;
        let mut w = self.worker.borrow_mut();
        w.waiting.retain(|w| w.context_id != id);
        w.list_filters.remove(&id);
    }
}
