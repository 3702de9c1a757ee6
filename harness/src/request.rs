//! Describing a request for the harness to send.

use crate::error::HarnessError;
use crate::harness::Harness;
use crate::http::{Outcome, UpstreamResponse};
use crate::map::Headers;

/// A request as the downstream client sends it, and how the upstream will answer.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub scheme: String,
    /// Regular headers, in order (names are lower-cased, as Envoy's codecs do).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body as the client sends it, chunk by chunk (empty: no body).
    pub body_chunks: Vec<Vec<u8>>,
    pub trailers: Vec<(String, Vec<u8>)>,
    /// Properties of this stream (e.g. `["connection", "sha256_peer_certificate_digest"]`).
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
    pub upstream_response: UpstreamResponse,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            method: "GET".to_string(),
            path: "/".to_string(),
            authority: "localhost".to_string(),
            scheme: "http".to_string(),
            headers: Vec::new(),
            body_chunks: Vec::new(),
            trailers: Vec::new(),
            properties: Vec::new(),
            upstream_response: UpstreamResponse::default(),
        }
    }
}

impl RequestSpec {
    /// The header map the filter first sees: pseudo-headers, then the others in order.
    /// A pseudo-header given in `headers` replaces the default one.
    pub fn header_map(&self) -> Headers {
        let mut map = Headers::new();
        map.add(":method", self.method.as_bytes());
        map.add(":scheme", self.scheme.as_bytes());
        map.add(":authority", self.authority.as_bytes());
        map.add(":path", self.path.as_bytes());
        for (name, value) in &self.headers {
            if name.starts_with(':') {
                map.replace(name, value);
            } else {
                map.add(name, value);
            }
        }
        map
    }
}

/// Fluent description of one request; [`RequestBuilder::send`] runs it through the plugin.
pub struct RequestBuilder<'h> {
    harness: &'h mut Harness,
    spec: RequestSpec,
}

impl<'h> RequestBuilder<'h> {
    pub(crate) fn new(harness: &'h mut Harness) -> Self {
        RequestBuilder { harness, spec: RequestSpec::default() }
    }

    pub fn method(mut self, method: &str) -> Self {
        self.spec.method = method.to_string();
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.spec.path = path.to_string();
        self
    }

    pub fn authority(mut self, authority: &str) -> Self {
        self.spec.authority = authority.to_string();
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.spec.scheme = scheme.to_string();
        self
    }

    pub fn header(self, name: &str, value: &str) -> Self {
        self.header_bytes(name, value.as_bytes())
    }

    pub fn header_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.spec.headers.push((name.to_ascii_lowercase(), value.to_vec()));
        self
    }

    /// The body in one chunk.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        let body = body.into();
        self.spec.body_chunks = if body.is_empty() { Vec::new() } else { vec![body] };
        self
    }

    /// The body in these chunks, each delivered to `proxy_on_request_body` on its own.
    pub fn chunks<B: Into<Vec<u8>>>(mut self, chunks: impl IntoIterator<Item = B>) -> Self {
        self.spec.body_chunks = chunks.into_iter().map(Into::into).collect();
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.spec.trailers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
        self
    }

    /// A property of this stream, e.g. `&["connection", "sha256_peer_certificate_digest"]`
    /// with the hex digest Envoy gives for a client certificate.
    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        self.spec.properties.push((path.iter().map(|s| s.to_string()).collect(), value.into()));
        self
    }

    /// How the upstream answers if the request gets through.
    pub fn upstream_response(mut self, status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Self {
        let body = body.into();
        self.spec.upstream_response = UpstreamResponse {
            status,
            headers: headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())).collect(),
            body_chunks: if body.is_empty() { Vec::new() } else { vec![body] },
            trailers: Vec::new(),
        };
        self
    }

    /// The upstream's answer in full (chunks, trailers).
    pub fn upstream(mut self, response: UpstreamResponse) -> Self {
        self.spec.upstream_response = response;
        self
    }

    /// Replaces the whole description.
    pub fn spec(mut self, spec: RequestSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Runs the request: the plugin's callbacks in Envoy's order, HTTP calls answered by the
    /// responder, until the stream ends or waits for the test.
    pub fn send(self) -> Result<Outcome, HarnessError> {
        self.harness.start_stream(self.spec)
    }
}

impl Harness {
    /// Runs a request described by a [`RequestSpec`].
    pub fn send(&mut self, spec: RequestSpec) -> Result<Outcome, HarnessError> {
        self.start_stream(spec)
    }
}
