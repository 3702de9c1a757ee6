//! Every reason to refuse a request, in one flat list. [`crate::answer`] is the one place that
//! turns them into HTTP answers; [`Denial::code`] is the closed set of reason codes that logs,
//! stats and audit records use.
#![forbid(unsafe_code)]

use crate::binding::BindingError;
use crate::dpop::ProofError;
use crate::mcp::DecodeError;
use crate::token::TokenError;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// An HTTP method the MCP transport does not use (405).
    MethodNotAllowed,
    /// A method or path that is not valid UTF-8 text (400).
    InvalidRequestTarget,
    /// A GET or DELETE that carries a body (400).
    UnexpectedBody,
    /// A POST whose `Content-Type` is not JSON (415).
    UnsupportedMediaType,
    /// A body with a `Content-Encoding` other than identity: we cannot read it as the server
    /// would (415).
    UnsupportedContentEncoding,
    /// Over `max_body_bytes` (413).
    BodyTooLarge,
    /// `access_token` in the query string (RFC 6750 §2.3), refused (400).
    TokenInQuery,
    /// More than one `Authorization` header, or a malformed one (400).
    InvalidAuthorizationHeader,
    /// The body is not a JSON-RPC message we can read exactly as the server would (400).
    Malformed(DecodeError),
    /// `Mcp-Method` / `Mcp-Name` headers that do not say what the body says (400).
    RoutingHeaderMismatch,
    /// No access token (401).
    MissingToken,
    InvalidToken(TokenError),
    /// The DPoP scheme without exactly one `DPoP` header (401).
    MissingProof,
    MultipleProofs,
    InvalidProof(ProofError),
    /// The proof's `jti` was seen before (401).
    Replay,
    Binding(BindingError),
    /// The token lacks scopes this call needs (403, step-up).
    InsufficientScope { required: Vec<String> },
    /// The policy forbids this tool whatever the scopes (403).
    ToolNotAllowed(String),
    /// The issuer's keys could not be had (503).
    KeysUnavailable,
    /// The replay cache could not be updated (503).
    ReplayCacheUnavailable,
    /// The upstream's `tools/list` answer could not be read to filter it (502): it is not
    /// passed on half-edited.
    UnreadableToolsList,
}

impl Denial {
    pub fn status(&self) -> u32 {
        match self {
            Denial::MethodNotAllowed => 405,
            Denial::UnsupportedMediaType | Denial::UnsupportedContentEncoding => 415,
            Denial::BodyTooLarge => 413,
            Denial::InvalidRequestTarget | Denial::RoutingHeaderMismatch | Denial::UnexpectedBody | Denial::TokenInQuery | Denial::InvalidAuthorizationHeader | Denial::Malformed(_) => 400,
            Denial::MissingToken
            | Denial::InvalidToken(_)
            | Denial::MissingProof
            | Denial::MultipleProofs
            | Denial::InvalidProof(_)
            | Denial::Replay
            | Denial::Binding(_) => 401,
            Denial::InsufficientScope { .. } | Denial::ToolNotAllowed(_) => 403,
            Denial::KeysUnavailable | Denial::ReplayCacheUnavailable => 503,
            Denial::UnreadableToolsList => 502,
        }
    }

    /// The reason code: a closed, documented set.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::MethodNotAllowed
            | Denial::InvalidRequestTarget
            | Denial::RoutingHeaderMismatch
            | Denial::UnexpectedBody
            | Denial::UnsupportedMediaType
            | Denial::UnsupportedContentEncoding
            | Denial::TokenInQuery
            | Denial::InvalidAuthorizationHeader
            | Denial::Malformed(_) => "malformed_request",
            Denial::BodyTooLarge => "body_too_large",
            Denial::MissingToken => "missing_token",
            Denial::InvalidToken(TokenError::Expired) => "expired",
            Denial::InvalidToken(TokenError::WrongAudience) => "wrong_audience",
            Denial::InvalidToken(_) => "invalid_token",
            Denial::MissingProof | Denial::MultipleProofs | Denial::InvalidProof(_) => "invalid_dpop_proof",
            Denial::Replay => "dpop_replay",
            Denial::Binding(_) => "binding_mismatch",
            Denial::InsufficientScope { .. } => "insufficient_scope",
            Denial::ToolNotAllowed(_) => "tool_not_allowed",
            Denial::KeysUnavailable => "keys_unavailable",
            Denial::ReplayCacheUnavailable => "replay_cache_unavailable",
            Denial::UnreadableToolsList => "unreadable_tools_list",
        }
    }

    /// One sentence a person can act on.
    pub fn describe(&self) -> String {
        match self {
            Denial::MethodNotAllowed => "HTTP method not allowed for an MCP endpoint".into(),
            Denial::InvalidRequestTarget => "the request method or path is not valid text".into(),
            Denial::UnexpectedBody => "GET and DELETE requests must not carry a body".into(),
            Denial::UnsupportedMediaType => "POST body must be application/json".into(),
            Denial::UnsupportedContentEncoding => "compressed request bodies are not accepted".into(),
            Denial::BodyTooLarge => "request body is larger than this endpoint accepts".into(),
            Denial::TokenInQuery => "access tokens in the query string are not accepted; use the Authorization header".into(),
            Denial::InvalidAuthorizationHeader => "send exactly one Authorization header".into(),
            Denial::Malformed(e) => e.reason().to_string(),
            Denial::RoutingHeaderMismatch => "the Mcp-Method or Mcp-Name header does not match the body".into(),
            Denial::MissingToken => "an access token is required".into(),
            Denial::InvalidToken(e) => e.describe(),
            Denial::MissingProof => "the DPoP scheme requires a DPoP proof header".into(),
            Denial::MultipleProofs => "send exactly one DPoP proof header".into(),
            Denial::InvalidProof(e) => e.describe(),
            Denial::Replay => "this DPoP proof was already used".into(),
            Denial::Binding(e) => e.describe(),
            Denial::InsufficientScope { required } => format!("this call needs the scopes: {}", required.join(" ")),
            Denial::ToolNotAllowed(tool) => format!("tool {tool:?} is not allowed by this server's policy"),
            Denial::KeysUnavailable => "the authorization server's keys are unavailable; try again".into(),
            Denial::ReplayCacheUnavailable => "the DPoP replay cache is busy; try again".into(),
            Denial::UnreadableToolsList => "the MCP server's tools/list answer could not be read to filter it".into(),
        }
    }

    /// The OAuth `error` value of the challenge, where there is one.
    pub fn oauth_error(&self) -> Option<&'static str> {
        match self {
            Denial::MissingToken => None,
            Denial::InvalidToken(_) | Denial::Binding(BindingError::DpopBoundTokenAsBearer)
            | Denial::Binding(BindingError::TokenNotDpopBound)
            | Denial::Binding(BindingError::TokenNotBound)
            | Denial::Binding(BindingError::SchemeNotAccepted(_))
            | Denial::Binding(BindingError::MissingClientCertificate)
            | Denial::Binding(BindingError::CertificateMismatch) => Some("invalid_token"),
            Denial::Binding(_) | Denial::MissingProof | Denial::MultipleProofs | Denial::InvalidProof(_) | Denial::Replay => {
                Some("invalid_dpop_proof")
            }
            Denial::InsufficientScope { .. } => Some("insufficient_scope"),
            Denial::TokenInQuery | Denial::InvalidAuthorizationHeader => Some("invalid_request"),
            _ => None,
        }
    }
}
