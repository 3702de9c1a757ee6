//! One HTTP stream as Envoy's filter manager sees it through a single Wasm filter, and the
//! types a test uses to describe a request and read what became of it.
//!
//! Each direction is a [`Flow`]: the downstream (or upstream) delivers headers, body chunks and
//! trailers to the filter; the filter lets them through (`Continue`) or holds them (`Pause`).
//! What it lets through is what the next hop sees.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use crate::map::Headers;

/// A piece of a request or response on its way to the filter.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    Headers(Headers, bool),
    Data(Vec<u8>, bool),
    Trailers(Headers),
}

/// How the filter stopped iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// `StopIteration` / `StopIterationAndBuffer`: later pieces are still delivered to the filter.
    Iteration,
    /// `StopAllIteration*`: nothing more reaches the filter until it resumes.
    All,
}

/// What got past the filter in one direction.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sent {
    pub headers: Option<Headers>,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
    pub complete: bool,
}

/// One direction of a stream at the filter.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    pub inputs: VecDeque<Input>,
    /// The filter's live map once headers were delivered.
    pub headers: Headers,
    pub headers_delivered: bool,
    /// Envoy keeps a pointer to the map while headers are held; writes fail once it is gone.
    pub headers_open: bool,
    pub trailers: Option<Headers>,
    pub trailers_open: bool,
    /// The body at the filter: the current chunk, or everything buffered so far.
    pub buffer: Vec<u8>,
    pub buffer_open: bool,
    pub buffering: bool,
    /// In a body callback with end_of_stream and no trailers: the filter may add trailers.
    pub body_eos_callback: bool,
    pub stopped: Option<Stop>,
    pub headers_released: bool,
    pub end_seen: bool,
    pub out: Sent,
}

impl Flow {
    pub fn new(inputs: Vec<Input>) -> Self {
        Flow { inputs: inputs.into(), ..Flow::default() }
    }

    /// Whether the next input may be handed to the filter now.
    pub fn can_deliver(&self) -> bool {
        !self.inputs.is_empty() && self.stopped != Some(Stop::All)
    }

    /// Lets everything held at the filter through (a `Continue`, or a resume).
    pub fn release(&mut self) {
        if self.headers_delivered && !self.headers_released {
            self.out.headers = Some(self.headers.clone());
            self.headers_released = true;
        }
        self.headers_open = false;
        self.out.body.append(&mut self.buffer);
        self.buffering = false;
        self.buffer_open = false;
        if self.end_seen {
            if let Some(trailers) = &self.trailers {
                self.out.trailers = Some(trailers.clone());
            }
            self.trailers_open = false;
            self.out.complete = true;
        }
        self.stopped = None;
    }

    /// Envoy drops its pointers to the maps as soon as the plugin asks to resume.
    pub fn close_maps(&mut self) {
        self.headers_open = false;
        self.trailers_open = false;
        self.buffer_open = self.buffering;
    }
}

/// Where a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Request,
    Response,
}

/// A local reply the plugin asked for during a callback (applied after the callback returns).
#[derive(Debug, Clone)]
pub(crate) struct LocalReplyRequest {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Headers,
    pub grpc_status: Option<i32>,
}

/// The live state of one stream context.
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: u32,
    pub phase: Phase,
    pub request: Flow,
    pub response: Flow,
    pub upstream_response: UpstreamResponse,
    /// Set once the response being encoded is a local reply.
    pub local_reply: Option<LocalReplyRequest>,
    pub pending_local_reply: Option<LocalReplyRequest>,
    pub continue_request: bool,
    pub continue_response: bool,
    pub reset: Option<String>,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    /// What the plugin set with `proxy_set_property` (Envoy's filter state), path segments
    /// joined with `.`, last value wins.
    pub filter_state: BTreeMap<String, Vec<u8>>,
    pub access_log_phase: bool,
}

impl Stream {
    /// The request headers as they are now: the filter's live map once delivered.
    pub fn current_request_headers(&self) -> &Headers {
        match &self.request.out.headers {
            Some(sent) if !self.request.headers_open => sent,
            _ => &self.request.headers,
        }
    }
}

/// What the upstream answers when a request gets through (default: `200` with no body).
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body_chunks: Vec<Vec<u8>>,
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl Default for UpstreamResponse {
    fn default() -> Self {
        UpstreamResponse { status: 200, headers: Vec::new(), body_chunks: Vec::new(), trailers: Vec::new() }
    }
}

impl UpstreamResponse {
    pub(crate) fn inputs(&self) -> Vec<Input> {
        let mut headers = Headers::new();
        headers.add(":status", self.status.to_string().as_bytes());
        for (k, v) in &self.headers {
            headers.add(k, v);
        }
        let chunks: Vec<&Vec<u8>> = self.body_chunks.iter().filter(|c| !c.is_empty()).collect();
        flow_inputs(headers, &chunks, &self.trailers)
    }
}

/// Headers, then chunks, then trailers, with end_of_stream on the last piece.
pub(crate) fn flow_inputs(headers: Headers, chunks: &[&Vec<u8>], trailers: &[(String, Vec<u8>)]) -> Vec<Input> {
    let has_trailers = !trailers.is_empty();
    let mut inputs = vec![Input::Headers(headers, chunks.is_empty() && !has_trailers)];
    let last = chunks.len().saturating_sub(1);
    for (i, chunk) in chunks.iter().enumerate() {
        inputs.push(Input::Data((*chunk).clone(), i == last && !has_trailers));
    }
    if has_trailers {
        inputs.push(Input::Trailers(Headers::from_pairs(trailers.iter().map(|(k, v)| (k.as_str(), v.as_slice())))));
    }
    inputs
}

/// An HTTP response as the downstream client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Option<Headers>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get_str(name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub context_id: u32,
    /// In order, as the upstream sees them (after the filter's changes).
    pub request_headers: Headers,
    pub request_body: Vec<u8>,
    pub request_trailers: Option<Headers>,
    /// The upstream's response after the filter's response callbacks.
    pub response: Response,
    /// The filter state the plugin set (what Envoy's access log reads), by dotted path.
    pub filter_state: BTreeMap<String, Vec<u8>>,
}

impl Forwarded {
    /// A request header the upstream received, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.request_headers.get_str(name)
    }

    /// A filter-state value the plugin set, as text.
    pub fn filter_state_str(&self, path: &str) -> Option<String> {
        self.filter_state.get(path).map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A response the plugin sent itself (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub context_id: u32,
    /// From the final `:status` (the filter's own response callbacks see local replies too).
    pub status: u32,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// The response-code details the plugin gave (Envoy's `%RESPONSE_CODE_DETAILS%`).
    pub details: String,
    pub grpc_status: Option<i32>,
    /// Headers the upstream had already received when the reply was sent, if any.
    pub upstream_request_headers: Option<Headers>,
    /// The filter state the plugin set (what Envoy's access log reads), by dotted path.
    pub filter_state: BTreeMap<String, Vec<u8>>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get_str(name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A filter-state value the plugin set, as text.
    pub fn filter_state_str(&self, path: &str) -> Option<String> {
        self.filter_state.get(path).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It reached the upstream, and the response came back through the filter.
    Forwarded(Forwarded),
    /// The plugin answered it itself.
    LocalReply(LocalReply),
    /// Still held by the plugin (e.g. waiting for an HTTP call); see [`crate::Harness::outcome`].
    Pending { context_id: u32 },
    /// The plugin reset the stream (`proxy_close_stream`), or a local reply came too late to send.
    Reset { context_id: u32, details: String },
    /// The plugin trapped. Envoy fails such a stream (503 with `fail_open: false`) and the VM.
    Trapped { context_id: u32, function: String, message: String },
}

impl Outcome {
    pub fn context_id(&self) -> u32 {
        match self {
            Outcome::Forwarded(f) => f.context_id,
            Outcome::LocalReply(r) => r.context_id,
            Outcome::Pending { context_id } | Outcome::Reset { context_id, .. } | Outcome::Trapped { context_id, .. } => {
                *context_id
            }
        }
    }

    pub fn as_forwarded(&self) -> Option<&Forwarded> {
        match self {
            Outcome::Forwarded(f) => Some(f),
            _ => None,
        }
    }

    pub fn as_local_reply(&self) -> Option<&LocalReply> {
        match self {
            Outcome::LocalReply(r) => Some(r),
            _ => None,
        }
    }

    pub fn is_pending(&self) -> bool {
        matches!(self, Outcome::Pending { .. })
    }

    /// The status the client gets: the response's, the local reply's, or 503 for a trap
    /// (Envoy's failed-stream reply); `None` while pending or after a reset.
    pub fn status(&self) -> Option<u32> {
        match self {
            Outcome::Forwarded(f) => Some(f.response.status),
            Outcome::LocalReply(r) => Some(r.status),
            Outcome::Trapped { .. } => Some(503),
            Outcome::Pending { .. } | Outcome::Reset { .. } => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Forwarded(fw) => write!(f, "forwarded; upstream answered {}", fw.response.status),
            Outcome::LocalReply(r) => write!(f, "local reply {} {}", r.status, String::from_utf8_lossy(&r.body)),
            Outcome::Pending { context_id } => write!(f, "pending (context {context_id})"),
            Outcome::Reset { details, .. } => write!(f, "stream reset ({details})"),
            Outcome::Trapped { function, message, .. } => write!(f, "trapped in {function}: {message}"),
        }
    }
}

/// An HTTP call the plugin dispatched (`proxy_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The context that dispatched it (the root context, or a stream).
    pub context_id: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout_ms: u32,
    /// When it was dispatched, in the plugin's real-time clock.
    pub dispatched_at_ns: u64,
}

impl HttpCall {
    pub fn method(&self) -> Option<String> {
        self.headers.get_str(":method")
    }

    pub fn path(&self) -> Option<String> {
        self.headers.get_str(":path")
    }

    pub fn authority(&self) -> Option<String> {
        self.headers.get_str(":authority")
    }
}

/// How the scripted upstream answers an HTTP call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpCallReply {
    /// A response (`:status` is added from `status`).
    Response { status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8> },
    /// The call's timeout expired. Envoy's async client gets this as a normal response from
    /// the router: `504`, `content-type: text/plain`, body `upstream request timeout`.
    Timeout,
    /// The stream was reset before a response (Envoy's `onHttpCallFailure`): the callback gets
    /// 0 headers, 0 body bytes and 0 trailers, and `proxy_get_status` says 11 / `reset`.
    Reset,
    /// Do not answer now: the test answers later with [`crate::Harness::respond_http_call`].
    Hold,
}

impl HttpCallReply {
    pub fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        HttpCallReply::Response {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
            body: body.into(),
        }
    }

    /// `200` with a JSON body and `content-type: application/json`.
    pub fn json(body: impl Into<Vec<u8>>) -> Self {
        Self::response(200, &[("content-type", "application/json")], body)
    }
}
