//! Strict decoding of MCP JSON-RPC request bodies (Streamable HTTP transport).
//!
//! Why strict: if this filter reads a body differently from the MCP server behind it (rmcp with
//! serde_json, the TypeScript SDK with `JSON.parse` + zod, the Python SDK with `json` + pydantic),
//! a client can show us one call and have the server run another. So wherever those readers could
//! disagree, or the body is ambiguous, the body is refused:
//!
//! - serde_json does all the lexing and unescaping (through [`serde::de::DeserializeSeed`] into a
//!   small private tree), so strings, keys and escapes mean exactly what serde_json says;
//! - duplicate object keys anywhere are refused (compared after unescaping): serde_json's `Value`,
//!   JS and Python keep the last one, serde-derived structs (rmcp) refuse them;
//! - nesting is bounded by [`MAX_DEPTH`], batches by [`MAX_BATCH`];
//! - integer literals outside `i64`/`u64` are refused (serde_json silently rounds them to `f64`,
//!   Python keeps them exact);
//! - lone UTF-16 surrogate escapes are refused (serde_json refuses them, Python accepts them);
//! - a BOM, invalid UTF-8 and trailing content are refused.
//!
//! What is read out is only what authorization needs: the method, the named tool, prompt or
//! resource, and the id (to echo in an error reply).
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::jose::members::MemberName;

/// Deepest nesting of arrays and objects accepted (the top-level object or array counts as 1).
pub const MAX_DEPTH: usize = 64;

/// Most messages accepted in one batch.
pub const MAX_BATCH: usize = 100;

/// How many characters of a duplicated key [`DecodeError::DuplicateKey`] keeps (keys can be huge).
const KEY_EXCERPT_CHARS: usize = 64;

/// A JSON-RPC id as the client sent it, kept as raw JSON text so an error reply echoes it exactly.
/// The text is canonical serde_json: a JSON string (escaped by `serde_json::to_string`) or a
/// decimal integer that fits `i64` or `u64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcId(pub String);

/// What one JSON-RPC message asks for, as far as authorization is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `tools/call` with `params.name`.
    Tool(String),
    /// `prompts/get` with `params.name`.
    Prompt(String),
    /// `resources/read` (and `resources/subscribe`/`unsubscribe`) with `params.uri`.
    Resource(String),
    /// Any other method: nothing named.
    None,
}

/// One message of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request (has `id`) or a notification (no `id`). `method` is exactly as decoded.
    Call { id: Option<RpcId>, method: String, target: Target },
    /// A JSON-RPC response the client sends back to a server-initiated request
    /// (`id` and exactly one of `result`/`error`, no `method`, no `params`).
    Response { id: RpcId },
}

/// A decoded body: one message, or a batch of at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    pub messages: Vec<Message>,
    pub is_batch: bool,
}

impl Body {
    /// The id of the body when it is one (non-batch) message that has an id.
    pub fn single_id(&self) -> Option<&RpcId> {
        if self.is_batch {
            return None;
        }
        match self.messages.as_slice() {
            [Message::Call { id: Some(id), .. }] | [Message::Response { id }] => Some(id),
            _ => None,
        }
    }
}

/// Why a body was refused. Flat and comparable so tests can `assert_eq!` on it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    // Parse level (JSON-RPC -32700).
    /// The body is empty or only JSON whitespace.
    Empty,
    /// The body starts with a UTF-8 byte order mark.
    ByteOrderMark,
    /// The body is not valid UTF-8.
    InvalidUtf8,
    /// serde_json refused the body: syntax error, trailing content, lone surrogate escape,
    /// number out of `f64` range, ...
    InvalidJson,
    /// An object has this key twice (after unescaping). Only its first 64 characters are kept.
    DuplicateKey(String),
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    TooDeep,
    /// An integer literal does not fit `i64`/`u64` (serde_json would round it to an `f64`).
    InexactNumber,

    // Invalid request level (JSON-RPC -32600).
    /// The top level (or a batch element) is not an object.
    NotAnObject,
    /// The batch is `[]`.
    EmptyBatch,
    /// The batch has more than [`MAX_BATCH`] elements.
    BatchTooLarge,
    /// A batch element is itself an array.
    NestedBatch,
    /// `jsonrpc` is missing or not exactly the string `"2.0"`.
    BadVersion,
    /// `id` is present but not a string or an integer (null, bool, float, object, array).
    BadId,
    /// No `method`, and not a response either (no `result`/`error`).
    MissingMethod,
    /// `method` is not a string.
    MethodNotString,
    /// `params` is present but not an object.
    ParamsNotObject,
    /// A message has `method` and also `result` or `error`.
    MethodWithResult,
    /// `tools/call` without `params.name`.
    MissingToolName,
    /// `tools/call` whose `params.name` is not a string.
    ToolNameNotString,
    /// `prompts/get` without `params.name`.
    MissingPromptName,
    /// `prompts/get` whose `params.name` is not a string.
    PromptNameNotString,
    /// `resources/read`/`subscribe`/`unsubscribe` without `params.uri`.
    MissingResourceUri,
    /// `resources/read`/`subscribe`/`unsubscribe` whose `params.uri` is not a string.
    ResourceUriNotString,
    /// Looks like a response (`result` or `error`, no `method`) but has no id, both `result`
    /// and `error`, or `params`.
    InvalidResponse,
}

impl DecodeError {
    /// A short human-readable sentence for the 400 reply.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "the request body is empty",
            DecodeError::ByteOrderMark => "the request body starts with a byte order mark",
            DecodeError::InvalidUtf8 => "the request body is not valid UTF-8",
            DecodeError::InvalidJson => "the request body is not valid JSON",
            DecodeError::DuplicateKey(_) => "the request body has a duplicate object key",
            DecodeError::TooDeep => "the request body nests arrays and objects too deeply",
            DecodeError::InexactNumber => "the request body has an integer too large to represent exactly",
            DecodeError::NotAnObject => "a JSON-RPC message must be an object",
            DecodeError::EmptyBatch => "a JSON-RPC batch must not be empty",
            DecodeError::BatchTooLarge => "the JSON-RPC batch has too many messages",
            DecodeError::NestedBatch => "a JSON-RPC batch must not contain a batch",
            DecodeError::BadVersion => "jsonrpc must be the string \"2.0\"",
            DecodeError::BadId => "id must be a string or an integer",
            DecodeError::MissingMethod => "the message has no method",
            DecodeError::MethodNotString => "method must be a string",
            DecodeError::ParamsNotObject => "params must be an object",
            DecodeError::MethodWithResult => "a request must not carry result or error",
            DecodeError::MissingToolName => "tools/call needs params.name",
            DecodeError::ToolNameNotString => "params.name of tools/call must be a string",
            DecodeError::MissingPromptName => "prompts/get needs params.name",
            DecodeError::PromptNameNotString => "params.name of prompts/get must be a string",
            DecodeError::MissingResourceUri => "this resources method needs params.uri",
            DecodeError::ResourceUriNotString => "params.uri must be a string",
            DecodeError::InvalidResponse => "a response needs an id and exactly one of result or error, and no params",
        }
    }

    /// The JSON-RPC error code: -32700 (parse error) when the body could not be read as one
    /// unambiguous JSON document, -32600 (invalid request) when it could but is no valid message.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            DecodeError::Empty
            | DecodeError::ByteOrderMark
            | DecodeError::InvalidUtf8
            | DecodeError::InvalidJson
            | DecodeError::DuplicateKey(_)
            | DecodeError::TooDeep
            | DecodeError::InexactNumber => -32700,
            _ => -32600,
        }
    }
}

/// A refused body: why, and the request's id when it could be read (a single message whose
/// `id` is valid), so the error reply can echo it. `None` for batches and parse errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub error: DecodeError,
    pub id: Option<RpcId>,
}

impl From<DecodeError> for Malformed {
    fn from(error: DecodeError) -> Self {
        Malformed { error, id: None }
    }
}

/// Decodes a request body strictly (see the module documentation).
pub fn decode(body: &[u8]) -> Result<Body, Malformed> {
    let tree = parse(body)?;
    match tree {
        Json::Obj(members) => {
            let message = message(&members).map_err(|(error, id)| Malformed { error, id })?;
            Ok(Body { messages: vec![message], is_batch: false })
        }
        Json::Arr(elements) => {
            if elements.is_empty() {
                return Err(DecodeError::EmptyBatch.into());
            }
            if elements.len() > MAX_BATCH {
                return Err(DecodeError::BatchTooLarge.into());
            }
            let messages = elements
                .iter()
                .map(|element| match element {
                    Json::Obj(members) => message(members).map_err(|(error, _)| Malformed::from(error)),
                    Json::Arr(_) => Err(DecodeError::NestedBatch.into()),
                    _ => Err(DecodeError::NotAnObject.into()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Body { messages, is_batch: true })
        }
        _ => Err(DecodeError::NotAnObject.into()),
    }
}

/// Whether a request's `Content-Type` value declares JSON the way [`decode`] reads it: the media
/// type `application/json` (any case) with no `charset` parameter, or exactly `charset=utf-8`
/// (any case, optionally quoted). Anything else that mentions a charset is refused, since some
/// servers decode the body in the declared charset: the TypeScript SDK's `createMcpExpressApp`
/// (`express.json()`) reads `charset=utf-7`, where `+ACI-` is a quote, so a body this module reads
/// as one tool call can be another to the server. Other parameters are ignored by every reader
/// and allowed; a value that is not ASCII is refused.
pub fn is_json_content_type(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    if !value.is_ascii() {
        return false;
    }
    let value = value.to_ascii_lowercase();
    let (essence, parameters) = value.split_once(';').unwrap_or((value.as_str(), ""));
    if essence.trim() != "application/json" {
        return false;
    }
    if !parameters.contains("charset") {
        return true;
    }
    let parameters: Vec<&str> = parameters.split(';').map(str::trim).filter(|p| !p.is_empty()).collect();
    matches!(parameters.as_slice(), ["charset=utf-8" | "charset=\"utf-8\""])
}

// ---------------------------------------------------------------------------------------------
// Parse level: bytes to an unambiguous tree.

/// The parsed document. Strings and keys are serde_json's unescaping, borrowed from the body
/// when they hold no escape (most do: no copy), owned when unescaping changed them. Integers are those
/// serde_json reads as `i64`/`u64`; null, booleans and floats (including `-0`, which serde_json
/// reads as the float `-0.0`) are not needed by anything here and are kept as `Other`.
#[derive(Debug)]
enum Json<'b> {
    Other,
    Int(i128),
    Str(Cow<'b, str>),
    Arr(Vec<Json<'b>>),
    Obj(BTreeMap<Cow<'b, str>, Json<'b>>),
}

fn parse(body: &[u8]) -> Result<Json<'_>, DecodeError> {
    // JSON whitespace, exactly the four bytes serde_json skips.
    if body.iter().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return Err(DecodeError::Empty);
    }
    if body.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(DecodeError::ByteOrderMark);
    }
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::InvalidUtf8)?;
    let mut refusal = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Node { depth: 0, refusal: &mut refusal }.deserialize(&mut de);
    let tree = match parsed {
        Ok(tree) => tree,
        Err(_) => return Err(refusal.unwrap_or(DecodeError::InvalidJson)),
    };
    de.end().map_err(|_| DecodeError::InvalidJson)?;
    check_integer_literals(text)?;
    Ok(tree)
}

/// Deserializes one value at `depth` (the depth of its parent container; 0 at the top). Our own
/// refusals (duplicate key, too deep) are stored in `refusal`, since a serde error cannot carry
/// them.
struct Node<'r> {
    depth: usize,
    refusal: &'r mut Option<DecodeError>,
}

impl Node<'_> {
    fn refuse<E: de::Error>(self, error: DecodeError) -> E {
        *self.refusal = Some(error);
        E::custom("refused")
    }

    fn child(&mut self, depth: usize) -> Node<'_> {
        Node { depth, refusal: &mut *self.refusal }
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Json<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::Int(i128::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::Int(i128::from(v)))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let depth = self.depth.saturating_add(1);
        if depth > MAX_DEPTH {
            return Err(self.refuse(DecodeError::TooDeep));
        }
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element_seed(self.child(depth))? {
            elements.push(element);
        }
        Ok(Json::Arr(elements))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Json<'de>, A::Error> {
        let depth = self.depth.saturating_add(1);
        if depth > MAX_DEPTH {
            return Err(self.refuse(DecodeError::TooDeep));
        }
        let mut members = BTreeMap::new();
        // Keys go through serde_json's string deserializer: unescaped, surrogates checked.
        while let Some(key) = map.next_key_seed(MemberName)? {
            match members.entry(key) {
                Entry::Occupied(taken) => {
                    let excerpt = taken.key().chars().take(KEY_EXCERPT_CHARS).collect();
                    return Err(self.refuse(DecodeError::DuplicateKey(excerpt)));
                }
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(self.child(depth))?);
                }
            }
        }
        Ok(Json::Obj(members))
    }
}

/// Refuses integer literals outside `i64`/`u64`, which serde_json silently turns into a rounded
/// `f64` (Python keeps them exact, JS rounds them too). The visitor cannot tell `1e20` from
/// `100000000000000000000`, so the literals are found in the text, which serde_json has already
/// accepted as one valid JSON document: outside strings, a number starts with `-` or a digit and
/// runs over `0-9 + - . e E`; inside strings, `\` escapes the next byte and `"` ends the string
/// (bytes of multi-byte UTF-8 characters are never `"` or `\`).
fn check_integer_literals(text: &str) -> Result<(), DecodeError> {
    let mut in_string = false;
    let mut escaped = false;
    let mut number_start: Option<usize> = None;
    for (i, b) in text.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        if let Some(start) = number_start {
            if matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
                continue;
            }
            check_integer_literal(text.get(start..i))?;
            number_start = None;
        }
        if b == b'"' {
            in_string = true;
        } else if b == b'-' || b.is_ascii_digit() {
            number_start = Some(i);
        }
    }
    match number_start {
        Some(start) => check_integer_literal(text.get(start..)),
        None => Ok(()),
    }
}

fn check_integer_literal(literal: Option<&str>) -> Result<(), DecodeError> {
    let Some(literal) = literal else {
        return Err(DecodeError::InvalidJson);
    };
    if literal.contains(['.', 'e', 'E']) {
        return Ok(()); // a float literal: every reader rounds it to an f64
    }
    let fits = if literal.starts_with('-') { literal.parse::<i64>().is_ok() } else { literal.parse::<u64>().is_ok() };
    if fits {
        Ok(())
    } else {
        Err(DecodeError::InexactNumber)
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid-request level: one object to a message.

type Refusal = (DecodeError, Option<RpcId>);

fn message(members: &BTreeMap<Cow<'_, str>, Json<'_>>) -> Result<Message, Refusal> {
    let id = match members.get("id") {
        None => None,
        Some(value) => Some(rpc_id(value).ok_or((DecodeError::BadId, None))?),
    };
    let refuse = |error: DecodeError| (error, id.clone());

    match members.get("jsonrpc") {
        Some(Json::Str(version)) if version == "2.0" => {}
        _ => return Err(refuse(DecodeError::BadVersion)),
    }
    let has_result = members.contains_key("result");
    let has_error = members.contains_key("error");
    let params = members.get("params");

    match members.get("method") {
        Some(Json::Str(method)) => {
            if has_result || has_error {
                return Err(refuse(DecodeError::MethodWithResult));
            }
            let params = match params {
                None => None,
                Some(Json::Obj(params)) => Some(params),
                Some(_) => return Err(refuse(DecodeError::ParamsNotObject)),
            };
            let target = target(method, params).map_err(refuse)?;
            Ok(Message::Call { id: id.clone(), method: method.to_string(), target })
        }
        Some(_) => Err(refuse(DecodeError::MethodNotString)),
        None => {
            if !has_result && !has_error {
                return Err(refuse(DecodeError::MissingMethod));
            }
            match id.clone() {
                Some(id) if has_result != has_error && params.is_none() => Ok(Message::Response { id }),
                _ => Err(refuse(DecodeError::InvalidResponse)),
            }
        }
    }
}

/// The id as canonical JSON text, when it is a string or an integer.
fn rpc_id(value: &Json<'_>) -> Option<RpcId> {
    match value {
        Json::Str(s) => serde_json::to_string(s.as_ref()).ok().map(RpcId),
        Json::Int(n) => Some(RpcId(n.to_string())),
        Json::Other | Json::Arr(_) | Json::Obj(_) => None,
    }
}

fn target(method: &str, params: Option<&BTreeMap<Cow<'_, str>, Json<'_>>>) -> Result<Target, DecodeError> {
    let member = |key: &str, missing: DecodeError, not_string: DecodeError| -> Result<String, DecodeError> {
        match params.and_then(|p| p.get(key)) {
            None => Err(missing),
            Some(Json::Str(s)) => Ok(s.to_string()),
            Some(_) => Err(not_string),
        }
    };
    match method {
        "tools/call" => member("name", DecodeError::MissingToolName, DecodeError::ToolNameNotString).map(Target::Tool),
        "prompts/get" => member("name", DecodeError::MissingPromptName, DecodeError::PromptNameNotString).map(Target::Prompt),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            member("uri", DecodeError::MissingResourceUri, DecodeError::ResourceUriNotString).map(Target::Resource)
        }
        _ => Ok(Target::None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn ok(body: &str) -> Body {
        decode(body.as_bytes()).unwrap_or_else(|m| panic!("refused {body:?}: {m:?}"))
    }

    fn one(body: &str) -> Message {
        let decoded = ok(body);
        assert!(!decoded.is_batch);
        assert_eq!(decoded.messages.len(), 1);
        decoded.messages.into_iter().next().unwrap()
    }

    fn err(body: impl AsRef<[u8]>) -> DecodeError {
        decode(body.as_ref()).map(|b| panic!("accepted {:?}: {b:?}", String::from_utf8_lossy(body.as_ref()))).unwrap_err().error
    }

    fn id(text: &str) -> Option<RpcId> {
        Some(RpcId(text.to_string()))
    }

    fn call(id_text: Option<&str>, method: &str, target: Target) -> Message {
        Message::Call { id: id_text.map(|t| RpcId(t.to_string())), method: method.to_string(), target }
    }

    fn tool(name: &str) -> Target {
        Target::Tool(name.to_string())
    }

    /// A tools/call whose `arguments` holds `value`.
    fn with_arguments(value: &str) -> String {
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"add","arguments":{value}}}}}"#)
    }

    /// `n` nested arrays.
    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    // --- single requests and targets -------------------------------------------------------

    #[test]
    fn tools_call_names_the_tool() {
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}}"#),
            call(Some("1"), "tools/call", tool("add"))
        );
    }

    #[test]
    fn tools_call_without_name_is_refused() {
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#), DecodeError::MissingToolName);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#), DecodeError::MissingToolName);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"nam":"add"}}"#), DecodeError::MissingToolName);
    }

    #[test]
    fn tools_call_name_must_be_a_string() {
        for name in ["1", "null", "true", r#"["add"]"#, r#"{"name":"add"}"#] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":{name}}}}}"#);
            assert_eq!(err(&body), DecodeError::ToolNameNotString, "{body}");
        }
    }

    #[test]
    fn prompts_get_names_the_prompt() {
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":"p","method":"prompts/get","params":{"name":"greet","arguments":{}}}"#),
            call(Some(r#""p""#), "prompts/get", Target::Prompt("greet".into()))
        );
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{}}"#), DecodeError::MissingPromptName);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get"}"#), DecodeError::MissingPromptName);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":7}}"#), DecodeError::PromptNameNotString);
    }

    #[test]
    fn resource_methods_name_the_uri() {
        for method in ["resources/read", "resources/subscribe", "resources/unsubscribe"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"uri":"file:///a.txt"}}}}"#);
            assert_eq!(one(&body), call(Some("1"), method, Target::Resource("file:///a.txt".into())));
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{}}}}"#);
            assert_eq!(err(&body), DecodeError::MissingResourceUri, "{body}");
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}"}}"#);
            assert_eq!(err(&body), DecodeError::MissingResourceUri, "{body}");
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{{"uri":["file:///a.txt"]}}}}"#);
            assert_eq!(err(&body), DecodeError::ResourceUriNotString, "{body}");
        }
    }

    #[test]
    fn other_methods_name_nothing() {
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#), call(Some("1"), "tools/list", Target::None));
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#),
            call(Some("1"), "initialize", Target::None)
        );
        // No case folding, no trimming: these are not tools/call (the server does not know them either).
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call"}"#), call(Some("1"), "Tools/Call", Target::None));
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call "}"#), call(Some("1"), "tools/call ", Target::None));
    }

    #[test]
    fn names_are_compared_and_kept_after_unescaping() {
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/c\u0061ll","params":{"name":"\u0061dd"}}"#),
            call(Some("1"), "tools/call", tool("add"))
        );
        assert_eq!(
            one(r#"{"\u006asonrpc":"2\u002e0","\u0069d":1,"\u006dethod":"tools/call","p\u0061rams":{"n\u0061me":"a\"b\\c\n\ud83d\ude00"}}"#),
            call(Some("1"), "tools/call", tool("a\"b\\c\n\u{1F600}"))
        );
        // Kept exactly: spaces and case are part of the name.
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":" Add "}}"#), call(Some("1"), "tools/call", tool(" Add ")));
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#), call(Some("1"), "tools/call", tool("")));
    }

    #[test]
    fn very_long_strings_decode() {
        let name = "n".repeat(1 << 20);
        let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}","arguments":{{"blob":"{name}"}}}}}}"#);
        assert_eq!(one(&body), call(Some("1"), "tools/call", tool(&name)));
    }

    #[test]
    fn unknown_members_are_ignored() {
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","_meta":{"progressToken":1}},"extra":[1,{"x":null}]}"#),
            call(Some("1"), "tools/call", tool("add"))
        );
    }

    // --- method, params, result --------------------------------------------------------------

    #[test]
    fn method_must_be_a_string() {
        for method in ["1", "null", "true", r#"["tools/call"]"#, r#"{"name":"tools/call"}"#] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":{method},"params":{{"name":"add"}}}}"#);
            assert_eq!(err(&body), DecodeError::MethodNotString, "{body}");
        }
    }

    #[test]
    fn params_must_be_an_object() {
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}"#), call(Some("1"), "ping", Target::None));
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), call(Some("1"), "ping", Target::None));
        for params in [r#"["add"]"#, "[]", "null", r#""add""#, "1", "false"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{params}}}"#);
            assert_eq!(err(&body), DecodeError::ParamsNotObject, "{body}");
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{params}}}"#);
            assert_eq!(err(&body), DecodeError::ParamsNotObject, "{body}");
        }
    }

    #[test]
    fn a_request_must_not_carry_result_or_error() {
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#), DecodeError::MethodWithResult);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"ping","error":{"code":1,"message":"x"}}"#), DecodeError::MethodWithResult);
        assert_eq!(err(r#"{"jsonrpc":"2.0","method":"ping","result":null}"#), DecodeError::MethodWithResult);
    }

    // --- version -----------------------------------------------------------------------------

    #[test]
    fn jsonrpc_must_be_the_string_2_0() {
        assert!(matches!(one(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#), Message::Call { .. }));
        for version in [r#""1.0""#, "2.0", "2", "null", r#""2.0 ""#, r#"" 2.0""#, r#""2.00""#, r#"["2.0"]"#] {
            let body = format!(r#"{{"jsonrpc":{version},"id":1,"method":"ping"}}"#);
            assert_eq!(err(&body), DecodeError::BadVersion, "{body}");
        }
        assert_eq!(err(r#"{"id":1,"method":"ping"}"#), DecodeError::BadVersion);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"result":{},"JSONRPC":"2.0"}"#.replace(r#""jsonrpc":"2.0","#, "")), DecodeError::BadVersion);
    }

    // --- ids ---------------------------------------------------------------------------------

    #[test]
    fn ids_are_strings_or_integers_kept_canonical() {
        let cases = [
            (r#""abc""#, r#""abc""#),
            (r#""""#, r#""""#),
            (r#""a\u0062\/""#, r#""ab/""#),
            (r#""\u0001\"""#, r#""\u0001\"""#),
            (r#""1""#, r#""1""#),
            ("0", "0"),
            ("7", "7"),
            ("-7", "-7"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("9007199254740993", "9007199254740993"),
        ];
        for (given, canonical) in cases {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{given},"method":"ping"}}"#);
            assert_eq!(one(&body), call(Some(canonical), "ping", Target::None), "{body}");
            assert_eq!(ok(&body).single_id(), id(canonical).as_ref());
            // The canonical text is JSON that reads back as the same value.
            let back: serde_json::Value = serde_json::from_str(canonical).unwrap();
            let orig: serde_json::Value = serde_json::from_str(given).unwrap();
            assert_eq!(back, orig);
        }
    }

    #[test]
    fn other_ids_are_refused() {
        for given in ["null", "true", "false", "1.0", "1e2", "1E2", "-0", "0.5", "-1.5e3", "{}", r#"{"a":1}"#, "[]", "[1]"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{given},"method":"ping"}}"#);
            assert_eq!(decode(body.as_bytes()), Err(Malformed { error: DecodeError::BadId, id: None }), "{body}");
            let body = format!(r#"{{"jsonrpc":"2.0","id":{given},"result":{{}}}}"#);
            assert_eq!(err(&body), DecodeError::BadId, "{body}");
        }
    }

    #[test]
    fn integers_that_do_not_fit_64_bits_are_refused_anywhere() {
        for given in ["18446744073709551616", "-9223372036854775809", "123456789012345678901234567890"] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{given},"method":"ping"}}"#);
            assert_eq!(err(&body), DecodeError::InexactNumber, "{body}");
            assert_eq!(err(with_arguments(&format!(r#"{{"n":[{given}]}}"#))), DecodeError::InexactNumber);
            assert_eq!(err(given), DecodeError::InexactNumber);
        }
        // The largest that fit, floats of any size, and digits inside strings are fine.
        for fine in ["18446744073709551615", "-9223372036854775808", "1e20", "1.7e308", "-0", "0.1", "1e-400", "-0.0"] {
            ok(&with_arguments(&format!(r#"{{"n":{fine},"s":"18446744073709551616","\"-99999999999999999999":"x\\"}}"#)));
        }
        // Out of f64 range: serde_json itself refuses.
        assert_eq!(err(with_arguments(r#"{"n":1e400}"#)), DecodeError::InvalidJson);
        assert_eq!(err(with_arguments(r#"{"n":-1e309}"#)), DecodeError::InvalidJson);
    }

    #[test]
    fn malformed_carries_the_id_once_read() {
        let refused = decode(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}"#).unwrap_err();
        assert_eq!(refused, Malformed { error: DecodeError::MissingToolName, id: id("7") });
        assert_eq!(refused.error.jsonrpc_code(), -32600);
        let refused = decode(br#"{"jsonrpc":"1.0","id":"x\u0079","method":"ping"}"#).unwrap_err();
        assert_eq!(refused, Malformed { error: DecodeError::BadVersion, id: id(r#""xy""#) });
        let refused = decode(br#"{"jsonrpc":"2.0","id":8,"method":5}"#).unwrap_err();
        assert_eq!(refused.id, id("8"));
        let refused = decode(br#"{"jsonrpc":"2.0","id":9,"result":{},"error":{}}"#).unwrap_err();
        assert_eq!(refused, Malformed { error: DecodeError::InvalidResponse, id: id("9") });
        // No id without a single message with a valid id.
        assert_eq!(decode(br#"{"jsonrpc":"2.0","method":"tools/call"}"#).unwrap_err().id, None);
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#).unwrap_err().id, None);
        assert_eq!(decode(br#"[{"jsonrpc":"2.0","id":7,"method":"tools/call"}]"#).unwrap_err().id, None);
        assert_eq!(decode(br#"{"jsonrpc":"2.0","id":7,"method":"ping","x":1,"x":2}"#).unwrap_err().id, None);
    }

    // --- notifications and responses ----------------------------------------------------------

    #[test]
    fn a_notification_is_a_call_without_id() {
        let decoded = ok(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(decoded.messages, vec![call(None, "notifications/initialized", Target::None)]);
        assert_eq!(decoded.single_id(), None);
        // Still authorized like a call: the target is read.
        assert_eq!(one(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"rm"}}"#), call(None, "tools/call", tool("rm")));
        assert_eq!(err(r#"{"jsonrpc":"2.0","method":"tools/call"}"#), DecodeError::MissingToolName);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":null,"method":"notifications/initialized"}"#), DecodeError::BadId);
    }

    #[test]
    fn responses_to_server_requests() {
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":3,"result":{"content":[]}}"#), Message::Response { id: RpcId("3".into()) });
        assert_eq!(one(r#"{"jsonrpc":"2.0","id":"s1","error":{"code":-1,"message":"no"}}"#), Message::Response { id: RpcId(r#""s1""#.into()) });
        assert_eq!(ok(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#).single_id(), id("3").as_ref());
        // Both, neither, no id, null id, params, no version.
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":3,"result":{},"error":{"code":1,"message":"x"}}"#), DecodeError::InvalidResponse);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":3}"#), DecodeError::MissingMethod);
        assert_eq!(err(r#"{"jsonrpc":"2.0"}"#), DecodeError::MissingMethod);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":3,"params":{"name":"add"}}"#), DecodeError::MissingMethod);
        assert_eq!(err(r#"{"jsonrpc":"2.0","result":{}}"#), DecodeError::InvalidResponse);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":null,"result":{}}"#), DecodeError::BadId);
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":3,"result":{},"params":{}}"#), DecodeError::InvalidResponse);
        assert_eq!(err(r#"{"id":3,"result":{}}"#), DecodeError::BadVersion);
    }

    // --- batches ------------------------------------------------------------------------------

    #[test]
    fn a_mixed_batch() {
        let decoded = ok(r#"[
            {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}},
            {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}},
            {"jsonrpc":"2.0","id":"r","result":{}},
            {"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///x"}}
        ]"#);
        assert!(decoded.is_batch);
        assert_eq!(
            decoded.messages,
            vec![
                call(Some("1"), "tools/call", tool("add")),
                call(None, "notifications/progress", Target::None),
                Message::Response { id: RpcId(r#""r""#.into()) },
                call(Some("2"), "resources/read", Target::Resource("file:///x".into())),
            ]
        );
        assert_eq!(decoded.single_id(), None);
        // A batch of one is still a batch: no single id.
        let decoded = ok(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#);
        assert!(decoded.is_batch);
        assert_eq!(decoded.single_id(), None);
    }

    #[test]
    fn one_bad_element_refuses_the_batch() {
        assert_eq!(
            decode(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call"}]"#),
            Err(Malformed { error: DecodeError::MissingToolName, id: None })
        );
        assert_eq!(err(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"1.0","id":2,"method":"ping"}]"#), DecodeError::BadVersion);
    }

    #[test]
    fn empty_nested_and_non_object_batches_are_refused() {
        assert_eq!(err("[]"), DecodeError::EmptyBatch);
        assert_eq!(err(" [ ] "), DecodeError::EmptyBatch);
        assert_eq!(err(r#"[[{"jsonrpc":"2.0","id":1,"method":"ping"}]]"#), DecodeError::NestedBatch);
        assert_eq!(err(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},[]]"#), DecodeError::NestedBatch);
        for element in ["1", r#""ping""#, "null", "true"] {
            assert_eq!(err(format!(r#"[{{"jsonrpc":"2.0","id":1,"method":"ping"}},{element}]"#)), DecodeError::NotAnObject);
        }
    }

    #[test]
    fn batch_size_is_bounded() {
        let element = r#"{"jsonrpc":"2.0","method":"notifications/x"}"#;
        let batch = |n: usize| format!("[{}]", vec![element; n].join(","));
        assert_eq!(ok(&batch(MAX_BATCH)).messages.len(), MAX_BATCH);
        assert_eq!(err(batch(MAX_BATCH + 1)), DecodeError::BatchTooLarge);
        assert_eq!(err(batch(10_000)), DecodeError::BatchTooLarge);
    }

    #[test]
    fn top_level_must_be_an_object_or_array() {
        for body in ["1", r#""tools/call""#, "null", "true", "-0"] {
            assert_eq!(err(body), DecodeError::NotAnObject, "{body}");
        }
    }

    // --- duplicate keys -----------------------------------------------------------------------

    #[test]
    fn duplicate_keys_are_refused_anywhere() {
        let dup = |key: &str| DecodeError::DuplicateKey(key.to_string());
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"rm"}}"#), dup("method"));
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#), dup("id"));
        assert_eq!(err(r#"{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}"#), dup("jsonrpc"));
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","name":"rm"}}"#), dup("name"));
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"},"params":{"name":"rm"}}"#), dup("params"));
        assert_eq!(err(with_arguments(r#"{"a":1,"a":1}"#)), dup("a"));
        assert_eq!(err(with_arguments(r#"{"x":[{"deep":{"k":1,"k":2}}]}"#)), dup("k"));
        assert_eq!(err(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping","x":{},"x":{}}]"#), dup("x"));
        // Compared after unescaping.
        assert_eq!(err(with_arguments(r#"{"a":1,"\u0061":2}"#)), dup("a"));
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","\u006dethod":"tools/call"}"#), dup("method"));
        assert_eq!(err(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","n\u0061me":"rm"}}"#), dup("name"));
        assert_eq!(err(with_arguments(r#"{"\/":1,"/":2}"#)), dup("/"));
        assert_eq!(err(with_arguments(r#"{"":1,"":2}"#)), dup(""));
        // The refusal is a parse error.
        assert_eq!(dup("a").jsonrpc_code(), -32700);
    }

    #[test]
    fn equal_keys_in_different_objects_and_near_duplicates_are_fine() {
        ok(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"name":"x","params":{"name":1}}}}"#);
        ok(&with_arguments(r#"{"a":1,"A":2,"a ":3,"\u00e9":4,"e\u0301":5}"#));
        ok(&with_arguments(r#"[{"a":1},{"a":1}]"#));
    }

    #[test]
    fn duplicate_key_excerpt_is_bounded() {
        let key = "k".repeat(10_000);
        let error = err(with_arguments(&format!(r#"{{"{key}":1,"{key}":2}}"#)));
        assert_eq!(error, DecodeError::DuplicateKey("k".repeat(KEY_EXCERPT_CHARS)));
    }

    // --- depth --------------------------------------------------------------------------------

    #[test]
    fn nesting_up_to_max_depth_is_accepted() {
        // Message object (1) > params (2) > arguments {"x":..} (3) > arrays (4..).
        assert_eq!(one(&with_arguments(&format!(r#"{{"x":{}}}"#, nested(MAX_DEPTH - 3)))), call(Some("1"), "tools/call", tool("add")));
        assert_eq!(err(with_arguments(&format!(r#"{{"x":{}}}"#, nested(MAX_DEPTH - 2)))), DecodeError::TooDeep);
        // Objects count too: arguments is the outermost of them (3..).
        let objects = |n: usize| format!("{}1{}", r#"{"o":"#.repeat(n), "}".repeat(n));
        ok(&with_arguments(&objects(MAX_DEPTH - 2)));
        assert_eq!(err(with_arguments(&objects(MAX_DEPTH - 1))), DecodeError::TooDeep);
        // A bare top-level nest: MAX_DEPTH reads as JSON (then is a nested batch), one more is too deep.
        assert_eq!(err(nested(MAX_DEPTH)), DecodeError::NestedBatch);
        assert_eq!(err(nested(MAX_DEPTH + 1)), DecodeError::TooDeep);
    }

    #[test]
    fn very_deep_nesting_is_refused_without_overflow() {
        assert_eq!(err(nested(100_000)), DecodeError::TooDeep);
        assert_eq!(err("[".repeat(100_000)), DecodeError::TooDeep);
        assert_eq!(err(with_arguments(&r#"{"a":"#.repeat(50_000))), DecodeError::TooDeep);
        assert_eq!(DecodeError::TooDeep.jsonrpc_code(), -32700);
    }

    // --- bytes and syntax ---------------------------------------------------------------------

    #[test]
    fn empty_and_whitespace_bodies_are_refused() {
        assert_eq!(err(""), DecodeError::Empty);
        assert_eq!(err(" \t\r\n "), DecodeError::Empty);
        // Not JSON whitespace: a syntax error, not "empty".
        assert_eq!(err("\x0c"), DecodeError::InvalidJson);
        assert_eq!(err("\u{a0}"), DecodeError::InvalidJson);
        // Whitespace around a message is fine.
        ok(" \r\n\t{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"} \r\n\t");
    }

    #[test]
    fn a_byte_order_mark_is_refused() {
        let mut body = vec![0xEF, 0xBB, 0xBF];
        body.extend_from_slice(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        assert_eq!(err(&body), DecodeError::ByteOrderMark);
        assert_eq!(err(&body[..3]), DecodeError::ByteOrderMark);
        // Elsewhere than the start it is just not whitespace.
        assert_eq!(err(" \u{feff}{}"), DecodeError::InvalidJson);
        // Inside a string it is an ordinary character.
        assert_eq!(one("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"\u{feff}add\"}}"), call(Some("1"), "tools/call", tool("\u{feff}add")));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let valid = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}"#;
        ok(valid);
        for bad in [&b"\xff"[..], b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82"] {
            let mut body = valid.replace("add", "ad@").into_bytes();
            let at = body.iter().position(|&b| b == b'@').unwrap();
            body.splice(at..=at, bad.iter().copied());
            assert_eq!(err(&body), DecodeError::InvalidUtf8, "{bad:?}");
        }
        assert_eq!(err(b"{\"jsonrpc\":\"2.0\"}\xff"), DecodeError::InvalidUtf8);
    }

    #[test]
    fn lone_surrogate_escapes_are_refused() {
        let body = |name: &str| format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#);
        assert_eq!(one(&body(r"\ud83d\ude00")), call(Some("1"), "tools/call", tool("\u{1F600}")));
        assert_eq!(one(&body(r"\uD83D\uDE00")), call(Some("1"), "tools/call", tool("\u{1F600}")));
        for lone in [r"\ud800", r"\udfff", r"\udc00", r"a\ud800b", r"\ud800\u0041", r"\ud800\ud800", r"\ude00\ud83d", r"\ud800\n"] {
            assert_eq!(err(body(lone)), DecodeError::InvalidJson, "{lone}");
        }
        // In keys and anywhere else too.
        assert_eq!(err(with_arguments(r#"{"\ud800":1}"#)), DecodeError::InvalidJson);
        assert_eq!(err(with_arguments(r#"["\udc00"]"#)), DecodeError::InvalidJson);
    }

    #[test]
    fn syntax_errors_and_trailing_content_are_refused() {
        let valid = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        ok(valid);
        for bad in [
            format!("{valid} x"),
            format!("{valid}{valid}"),
            format!("{valid},"),
            format!("{valid}\0"),
            format!("[{valid}] ]"),
            valid.replace('}', ",}"),
            valid.replace('"', "'"),
            valid.replace(r#""id":1"#, r#""id":01"#),
            valid.replace(r#""id":1"#, r#""id":NaN"#),
            valid.replace(r#""id":1"#, r#""id":+1"#),
            valid.replace(r#""id":1"#, r#""id":0x1"#),
            valid.replace(r#""id":1"#, r#"id:1"#),
            valid.replace("ping", "pi\u{1}ng"),
            valid.replace("ping", r"pi\xng"),
            valid.replace("ping", r"pi\u00"),
            r#"{"jsonrpc":"2.0","id":1,"method":"ping""#.to_string(),
            "{".to_string(),
            "/* c */{}".to_string(),
        ] {
            assert_eq!(err(&bad), DecodeError::InvalidJson, "{bad}");
        }
    }

    // --- content type --------------------------------------------------------------------------

    #[test]
    fn json_content_types_in_utf8_only() {
        for fine in [
            "application/json",
            "Application/JSON",
            " application/json ",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json ; charset=utf-8 ;",
            "application/json; foo=bar",
        ] {
            assert!(is_json_content_type(fine.as_bytes()), "{fine}");
        }
        for refused in [
            "",
            "text/plain",
            "application/jsonx",
            "application/json-patch+json",
            "application/json, text/plain",
            // Another charset: express.json() decodes the body in it (UTF-7 turns `+ACI-` into `"`).
            "application/json; charset=utf-7",
            "application/json; CHARSET=\"UTF-7\"",
            "application/json; charset=\"utf\\-7\"",
            "application/json; charset=utf-16le",
            "application/json; charset=latin1",
            "application/json; charset=utf8",
            // Two charsets, or a charset beside other parameters: refused rather than guessed.
            "application/json; charset=utf-8; charset=utf-7",
            "application/json; charset=utf-7; charset=utf-8",
            "application/json; foo=bar; charset=utf-8",
            "application/json; x=\"a;charset=utf-7\"",
            "application/json; charset = utf-8",
        ] {
            assert!(!is_json_content_type(refused.as_bytes()), "{refused}");
        }
        assert!(!is_json_content_type(b"application/json; charset=\xff"));
        assert!(!is_json_content_type("application/json; x=\u{e9}".as_bytes()));
    }

    // --- codes and reasons ----------------------------------------------------------------------

    #[test]
    fn codes_and_reasons() {
        let parse = [
            DecodeError::Empty,
            DecodeError::ByteOrderMark,
            DecodeError::InvalidUtf8,
            DecodeError::InvalidJson,
            DecodeError::DuplicateKey("a".into()),
            DecodeError::TooDeep,
            DecodeError::InexactNumber,
        ];
        let request = [
            DecodeError::NotAnObject,
            DecodeError::EmptyBatch,
            DecodeError::BatchTooLarge,
            DecodeError::NestedBatch,
            DecodeError::BadVersion,
            DecodeError::BadId,
            DecodeError::MissingMethod,
            DecodeError::MethodNotString,
            DecodeError::ParamsNotObject,
            DecodeError::MethodWithResult,
            DecodeError::MissingToolName,
            DecodeError::ToolNameNotString,
            DecodeError::MissingPromptName,
            DecodeError::PromptNameNotString,
            DecodeError::MissingResourceUri,
            DecodeError::ResourceUriNotString,
            DecodeError::InvalidResponse,
        ];
        let mut reasons = std::collections::BTreeSet::new();
        for e in &parse {
            assert_eq!(e.jsonrpc_code(), -32700, "{e:?}");
            assert!(reasons.insert(e.reason()), "{e:?}");
        }
        for e in &request {
            assert_eq!(e.jsonrpc_code(), -32600, "{e:?}");
            assert!(reasons.insert(e.reason()), "{e:?}");
        }
    }
}
