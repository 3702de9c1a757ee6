//! An MCP client agent that reaches the server through Envoy with DPoP: it holds its own key,
//! gets tokens bound to it from the issuer, and runs a real rmcp session whose every HTTP
//! request carries a fresh proof ([`crate::dpop::DpopHttpClient`]). It can also send raw HTTP
//! requests, for what a well-behaved client never does (replaying a proof, a malformed body).

use std::sync::Arc;
use std::time::Duration;

use mcp_guard::testkit::TestKey;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, GetPromptRequestParams, Implementation, JsonObject,
    ReadResourceRequestParams, ResourceContents,
};
use rmcp::service::{RunningService, ServiceError};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, InsufficientScopeError, StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

use crate::dpop::{DpopHttpClient, Holder, ProofLog};
use crate::issuer::{TokenRequest, TokenResponse};
use crate::Error;

/// Where the agent talks to.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The MCP endpoint as the agent reaches it (Envoy's listener), e.g. `http://127.0.0.1:10000/mcp`.
    pub mcp_url: String,
    /// The `htu` of proofs: the public URL the filter is configured with (often the same).
    pub htu: String,
    /// The issuer's base URL, e.g. `http://127.0.0.1:19002`.
    pub issuer_url: String,
}

/// A plain HTTP client for loopback: no proxy from the environment, bounded waits.
pub fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::msg(format!("HTTP client: {e}")))
}

pub struct Agent {
    pub config: AgentConfig,
    key: Arc<TestKey>,
    http: reqwest::Client,
}

impl Agent {
    /// An agent with a new DPoP key (`ES256`, or `EdDSA` when `ed25519`).
    pub fn new(config: AgentConfig, ed25519: bool) -> Result<Agent, Error> {
        let key = if ed25519 { TestKey::ed25519() } else { TestKey::es256() };
        Ok(Agent { config, key: Arc::new(key), http: http_client()? })
    }

    /// RFC 7638 thumbprint of the agent's key: the `cnf.jkt` its tokens carry.
    pub fn jkt(&self) -> String {
        self.key.thumbprint()
    }

    pub fn key_alg(&self) -> &'static str {
        self.key.alg()
    }

    /// Asks the issuer for a token (`POST /token`).
    pub async fn request_token(&self, request: &TokenRequest) -> Result<TokenResponse, Error> {
        let url = format!("{}/token", self.config.issuer_url.trim_end_matches('/'));
        let response = self
            .http
            .post(&url)
            .timeout(Duration::from_secs(10))
            .json(request)
            .send()
            .await
            .map_err(|e| Error::msg(format!("POST {url}: {e}")))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| Error::msg(format!("POST {url}: {e}")))?;
        if !status.is_success() {
            return Err(Error::msg(format!("POST {url}: {status}: {body}")));
        }
        serde_json::from_str(&body).map_err(|e| Error::msg(format!("POST {url}: unexpected answer {body:?}: {e}")))
    }

    /// The token request for `scope`, bound to this agent's key.
    pub fn dpop_token_request(&self, scope: &str) -> TokenRequest {
        TokenRequest { scope: Some(scope.into()), dpop_jkt: Some(self.jkt()), ..Default::default() }
    }

    /// A token with `scope` bound to this agent's key, ready to sign proofs with.
    pub async fn dpop_token(&self, scope: &str) -> Result<Arc<Holder>, Error> {
        let token = self.request_token(&self.dpop_token_request(scope)).await?;
        Ok(self.holder(token.access_token))
    }

    /// `access_token` (bound to this agent's key) with the agent's key, to sign proofs with.
    pub fn holder(&self, access_token: String) -> Arc<Holder> {
        Arc::new(Holder::new(Arc::clone(&self.key), access_token, self.config.htu.clone()))
    }

    /// Opens an MCP session through Envoy (initialize, then notifications/initialized).
    pub async fn connect(&self, holder: Arc<Holder>) -> Result<Session, Error> {
        let client = DpopHttpClient::new(self.http.clone(), holder);
        let log = client.log();
        let transport = StreamableHttpClientTransport::with_client(
            client,
            StreamableHttpClientTransportConfig::with_uri(self.config.mcp_url.as_str()),
        );
        let info = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcp-guard-demo-agent", env!("CARGO_PKG_VERSION")),
        );
        let service = tokio::time::timeout(Duration::from_secs(20), info.serve(transport))
            .await
            .map_err(|_| Error::msg("MCP initialize timed out"))?
            .map_err(|e| match e.auth_challenge() {
                Some(challenge) => Error::msg(format!("MCP initialize refused: {challenge}")),
                None => Error::msg(format!("MCP initialize failed: {e}")),
            })?;
        Ok(Session { service, log })
    }

    /// Sends one raw HTTP request to the MCP endpoint.
    pub async fn send_raw(&self, raw: &RawRequest) -> Result<RawAnswer, Error> {
        let url = &self.config.mcp_url;
        let mut request = self.http.request(raw.method.clone(), url).timeout(Duration::from_secs(10));
        for (name, value) in &raw.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &raw.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.map_err(|e| Error::msg(format!("{} {url}: {e}", raw.method)))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body =
            response.text().await.map_err(|e| Error::msg(format!("{} {url}: reading the answer: {e}", raw.method)))?;
        Ok(RawAnswer { status, headers, body })
    }
}

/// A raw request to the MCP endpoint.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: reqwest::Method,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl RawRequest {
    /// A JSON-RPC POST as an MCP client sends it, without credentials.
    pub fn post(body: impl Into<String>) -> RawRequest {
        RawRequest {
            method: reqwest::Method::POST,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("accept".into(), "application/json, text/event-stream".into()),
            ],
            body: Some(body.into()),
        }
    }

    /// Adds `Authorization: DPoP …` and a fresh proof for this request's method.
    pub fn signed(mut self, holder: &Holder) -> RawRequest {
        for (name, value) in holder.headers(self.method.as_str()) {
            self.headers.push((name.to_string(), value));
        }
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> RawRequest {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The answer to a raw request.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl RawAnswer {
    /// The JSON-RPC error's `data.reason` (the filter's reason code).
    pub fn reason(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body.pointer("/error/data/reason").and_then(Value::as_str).map(str::to_string)
    }

    /// Every `WWW-Authenticate` challenge.
    pub fn challenges(&self) -> Vec<String> {
        self.headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// One auth-param of a challenge (`scope="a b"` → `a b`).
pub fn challenge_param(challenge: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=\"");
    let start = challenge.find(&needle)? + needle.len();
    let rest = challenge.get(start..)?;
    let mut value = String::new();
    let mut escaped = false;
    for c in rest.chars() {
        match (escaped, c) {
            (true, _) => {
                value.push(c);
                escaped = false;
            }
            (false, '\\') => escaped = true,
            (false, '"') => return Some(value),
            (false, _) => value.push(c),
        }
    }
    None
}

/// How the filter refused an rmcp call, read from the error rmcp returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub challenge: String,
}

impl Refusal {
    /// The refusal behind `error`, if the transport hit a 401 or 403 challenge.
    pub fn of(error: &ServiceError) -> Option<Refusal> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(current) = source {
            if let Some(e) = current.downcast_ref::<InsufficientScopeError>() {
                return Some(Refusal { status: 403, challenge: e.www_authenticate_header.clone() });
            }
            if let Some(e) = current.downcast_ref::<AuthRequiredError>() {
                return Some(Refusal { status: 401, challenge: e.www_authenticate_header.clone() });
            }
            source = current.source();
        }
        None
    }

    /// The OAuth `error` of the challenge, e.g. `insufficient_scope`.
    pub fn error(&self) -> Option<String> {
        challenge_param(&self.challenge, "error")
    }

    /// The scopes the challenge asks for (MCP step-up).
    pub fn scope(&self) -> Option<String> {
        challenge_param(&self.challenge, "scope")
    }
}

/// An MCP session through Envoy.
pub struct Session {
    pub service: RunningService<RoleClient, ClientConfig>,
    log: Arc<ProofLog>,
}

impl Session {
    /// The `Mcp-Session-Id` the server gave this session.
    pub fn session_id(&self) -> Option<String> {
        self.log.session_id()
    }

    /// The protocol version the server agreed to.
    pub fn protocol_version(&self) -> Option<String> {
        self.service.peer_info().map(|info| info.protocol_version.to_string())
    }

    /// Proofs sent so far per HTTP method: (POST, GET, DELETE).
    pub fn proofs_sent(&self) -> (usize, usize, usize) {
        self.log.counts()
    }

    /// The names of the server's tools.
    pub async fn tool_names(&self) -> Result<Vec<String>, ServiceError> {
        let tools = self.service.list_tools(None).await?;
        Ok(tools.tools.iter().map(|t| t.name.to_string()).collect())
    }

    /// Calls a tool and returns its text.
    pub async fn call_tool(&self, name: &str, arguments: Value) -> Result<String, ServiceError> {
        let mut params = CallToolRequestParams::new(name.to_string());
        if let Value::Object(arguments) = arguments {
            params = params.with_arguments(arguments as JsonObject);
        }
        let result = self.service.call_tool(params).await?;
        let texts: Vec<String> = result.content.iter().filter_map(|c| c.as_text().map(|t| t.text.clone())).collect();
        Ok(texts.join("\n"))
    }

    /// Gets a prompt; returns its messages' text.
    pub async fn get_prompt(&self, name: &str, arguments: Value) -> Result<Vec<String>, ServiceError> {
        let mut params = GetPromptRequestParams::new(name);
        if let Value::Object(arguments) = arguments {
            params = params.with_arguments(arguments as JsonObject);
        }
        let result = self.service.get_prompt(params).await?;
        Ok(result
            .messages
            .iter()
            .map(|m| m.content.as_text().map_or_else(|| format!("{:?}", m.content), |t| t.text.clone()))
            .collect())
    }

    /// Reads a resource; returns its text contents.
    pub async fn read_resource(&self, uri: &str) -> Result<Vec<String>, ServiceError> {
        let result = self.service.read_resource(ReadResourceRequestParams::new(uri)).await?;
        Ok(result
            .contents
            .iter()
            .map(|c| match c {
                ResourceContents::TextResourceContents { text, .. } => text.clone(),
                other => format!("{other:?}"),
            })
            .collect())
    }

    /// Ends the session (DELETE) and waits for the transport to close. Returns the proofs sent.
    pub async fn close(self) -> Result<(usize, usize, usize), Error> {
        let log = Arc::clone(&self.log);
        self.service.cancel().await.map_err(|e| Error::msg(format!("closing the MCP session: {e}")))?;
        Ok(log.counts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params_are_unquoted() {
        let c = r#"DPoP algs="ES256 EdDSA", error="insufficient_scope", error_description="needs \"x\"", scope="a b""#;
        assert_eq!(challenge_param(c, "scope").as_deref(), Some("a b"));
        assert_eq!(challenge_param(c, "error").as_deref(), Some("insufficient_scope"));
        assert_eq!(challenge_param(c, "error_description").as_deref(), Some(r#"needs "x""#));
        assert_eq!(challenge_param(c, "resource_metadata"), None);
    }
}
