//! DPoP on the client side (RFC 9449): a token holder that signs a fresh proof for each HTTP
//! request, and an rmcp Streamable HTTP client that attaches one to every request it makes.
//!
//! The hook is rmcp's `StreamableHttpClient` trait: the transport calls it for each POST
//! (initialize, notifications, requests), for the GET that opens the server's SSE stream, and
//! for the DELETE that ends the session. [`DpopHttpClient`] implements it by adding
//! `Authorization: DPoP <token>` and a new `DPoP` proof for that method to the request's headers,
//! then handing the request to rmcp's own reqwest implementation, so everything else (SSE
//! parsing, limits, session handling, 401/403 challenges) stays rmcp's.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use mcp_guard::testkit::{ProofSpec, TestKey};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::{Error as SseError, Sse};

use crate::now_seconds;

/// An access token bound to `key` (its `cnf.jkt`), and what its proofs say.
pub struct Holder {
    key: Arc<TestKey>,
    token: String,
    /// The `htu` of every proof: the MCP endpoint's public URL, as the filter is configured with.
    htu: String,
    /// Random per holder, so proofs' `jti`s never repeat across runs of the agent.
    jti_prefix: u64,
    proofs: AtomicU64,
}

impl Holder {
    pub fn new(key: Arc<TestKey>, token: String, htu: String) -> Holder {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(now_seconds());
        Holder { key, token, htu, jti_prefix: hasher.finish(), proofs: AtomicU64::new(0) }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn htu(&self) -> &str {
        &self.htu
    }

    /// A fresh proof for one request with HTTP method `htm`: `htu`, `iat` now, a new `jti`, and
    /// `ath` (the token's hash) as RFC 9449 §4.2 requires for a protected resource.
    pub fn proof(&self, htm: &str) -> String {
        let mut spec = ProofSpec::new(&self.key, htm, &self.htu, now_seconds(), &self.token);
        let n = self.proofs.fetch_add(1, Ordering::Relaxed);
        spec.jti = format!("{:016x}-{n}", self.jti_prefix).into();
        spec.sign(&self.key)
    }

    /// `Authorization` and `DPoP` for one request.
    pub fn headers(&self, htm: &str) -> [(HeaderName, String); 2] {
        [
            (http::header::AUTHORIZATION, format!("DPoP {}", self.token)),
            (HeaderName::from_static("dpop"), self.proof(htm)),
        ]
    }
}

/// What the client sent, for the demo's account of the session.
#[derive(Default)]
pub struct ProofLog {
    post: AtomicUsize,
    get: AtomicUsize,
    delete: AtomicUsize,
    session_id: Mutex<Option<String>>,
}

impl ProofLog {
    /// Proofs sent per HTTP method: (POST, GET, DELETE).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.post.load(Ordering::Relaxed), self.get.load(Ordering::Relaxed), self.delete.load(Ordering::Relaxed))
    }

    /// The `Mcp-Session-Id` the transport last sent.
    pub fn session_id(&self) -> Option<String> {
        self.session_id.lock().ok().and_then(|s| s.clone())
    }

    fn saw(&self, htm: &str, session_id: Option<&str>) {
        let counter = match htm {
            "POST" => &self.post,
            "GET" => &self.get,
            _ => &self.delete,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let (Some(id), Ok(mut slot)) = (session_id, self.session_id.lock()) {
            *slot = Some(id.to_string());
        }
    }
}

/// rmcp's reqwest client plus a DPoP proof on every request.
#[derive(Clone)]
pub struct DpopHttpClient {
    http: reqwest::Client,
    holder: Arc<Holder>,
    log: Arc<ProofLog>,
}

impl DpopHttpClient {
    pub fn new(http: reqwest::Client, holder: Arc<Holder>) -> DpopHttpClient {
        DpopHttpClient { http, holder, log: Arc::default() }
    }

    pub fn log(&self) -> Arc<ProofLog> {
        Arc::clone(&self.log)
    }

    /// `headers` plus this request's credentials. rmcp's own `auth_header` is not used: it can
    /// only say `Bearer`.
    fn sign(
        &self,
        htm: &str,
        session_id: Option<&str>,
        mut headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<HashMap<HeaderName, HeaderValue>, StreamableHttpError<reqwest::Error>> {
        self.log.saw(htm, session_id);
        for (name, value) in self.holder.headers(htm) {
            let value = HeaderValue::from_str(&value).map_err(|_| {
                StreamableHttpError::UnexpectedServerResponse(format!("{name} is not a valid header value").into())
            })?;
            headers.insert(name, value);
        }
        Ok(headers)
    }
}

type StreamResult = Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<reqwest::Error>>;

impl StreamableHttpClient for DpopHttpClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            None,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_sse_event_size = max_sse_event_size;
        self.post_message_with_response_limits(uri, message, session_id, None, custom_headers, limits).await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let headers = self.sign("POST", session_id.as_deref(), custom_headers)?;
        self.http.post_message_with_response_limits(uri, message, session_id, None, headers, limits).await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        let headers = self.sign("DELETE", Some(&session_id), custom_headers)?;
        self.http.delete_session(uri, session_id, None, headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> StreamResult {
        let headers = self.sign("GET", session_id.as_deref(), custom_headers)?;
        self.http.get_stream(uri, session_id, last_event_id, None, headers).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> StreamResult {
        let headers = self.sign("GET", session_id.as_deref(), custom_headers)?;
        self.http
            .get_stream_with_max_sse_event_size(uri, session_id, last_event_id, None, headers, max_sse_event_size)
            .await
    }
}
