//! `tools/list` answered with only the tools the caller's token may call: an agent should not
//! even see what it cannot use. Both body forms of the Streamable HTTP transport are handled: a
//! JSON body (one response or a batch of them) and a `text/event-stream` whose `data:` events
//! carry the responses. A body we cannot read is an error, never passed through half-edited.
#![forbid(unsafe_code)]

use serde_json::Value;

use crate::mcp::RpcId;
use crate::policy::{Policy, Unlisted};

/// What to filter in one response: the ids of the request's `tools/list` calls, and the scopes
/// of the token that made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub ids: Vec<Value>,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListError {
    /// A JSON body that is not JSON, or an SSE `data:` that should be a response and is not.
    Unreadable,
    /// A response to our `tools/list` whose `result.tools` is not an array of named tools.
    UnexpectedShape,
}

/// Largest response body the filter buffers to edit (a tools list is small; anything this big
/// is refused rather than buffered).
pub const MAX_LIST_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

impl ListFilter {
    /// The filter for an allowed request, if it has `tools/list` calls with ids.
    pub fn for_messages(messages: &[crate::mcp::Message], scopes: &[String]) -> Option<ListFilter> {
        let ids: Vec<Value> = messages
            .iter()
            .filter_map(|m| match m {
                crate::mcp::Message::Call { method, id: Some(RpcId(id)), .. } if method == "tools/list" => {
                    serde_json::from_str(id).ok()
                }
                _ => None,
            })
            .collect();
        (!ids.is_empty()).then(|| ListFilter { ids, scopes: scopes.to_vec() })
    }
}

/// Whether `content_type` is a body form we edit.
pub fn editable(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/event-stream"
}

/// Could a token with `scopes` call `tool` under `policy`?
pub fn tool_allowed(policy: &Policy, tool: &str, scopes: &[String]) -> bool {
    let has_all = |needed: &[String]| needed.iter().all(|s| scopes.iter().any(|have| have == s));
    let method_scopes = policy.methods.get("tools/call").map(Vec::as_slice).unwrap_or(&[]);
    if !has_all(method_scopes) {
        return false;
    }
    match policy.tools.get(tool) {
        Some(needed) => has_all(needed),
        None => policy.unlisted_tools == Unlisted::Allow,
    }
}

/// Edits one JSON-RPC message in place if it is a response to one of our `tools/list` calls.
/// Returns how many tools were removed.
fn edit_message(message: &mut Value, filter: &ListFilter, policy: &Policy) -> Result<usize, ListError> {
    let Some(obj) = message.as_object_mut() else {
        return Ok(0);
    };
    let ours = obj.get("id").is_some_and(|id| filter.ids.contains(id)) && !obj.contains_key("method");
    if !ours {
        return Ok(0);
    }
    let Some(result) = obj.get_mut("result") else {
        return Ok(0); // an error response lists nothing
    };
    let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
        return Err(ListError::UnexpectedShape);
    };
    if tools.iter().any(|t| t.get("name").and_then(Value::as_str).is_none()) {
        return Err(ListError::UnexpectedShape);
    }
    let before = tools.len();
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(|name| tool_allowed(policy, name, &filter.scopes)));
    Ok(before - tools.len())
}

fn edit_json(body: &[u8], filter: &ListFilter, policy: &Policy) -> Result<(Vec<u8>, usize), ListError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|_| ListError::Unreadable)?;
    let removed = match &mut value {
        Value::Array(items) => {
            let mut n = 0;
            for item in items {
                n += edit_message(item, filter, policy)?;
            }
            n
        }
        other => edit_message(other, filter, policy)?,
    };
    if removed == 0 {
        return Ok((body.to_vec(), 0));
    }
    Ok((serde_json::to_vec(&value).map_err(|_| ListError::Unreadable)?, removed))
}

/// Splits `s` at `at` into the event and what follows its `terminator`.
fn cut<'a>(s: &'a str, at: usize, terminator: &'static str) -> (&'a str, &'static str, &'a str) {
    let (event, after) = s.split_at_checked(at).unwrap_or((s, ""));
    (event, terminator, after.get(terminator.len()..).unwrap_or(""))
}

/// Edits an event stream: events are kept byte for byte, except those whose `data` is a
/// response to our `tools/list`, which are re-emitted with the filtered list.
fn edit_sse(body: &[u8], filter: &ListFilter, policy: &Policy) -> Result<(Vec<u8>, usize), ListError> {
    let text = std::str::from_utf8(body).map_err(|_| ListError::Unreadable)?;
    let mut out = String::with_capacity(text.len());
    let mut removed = 0;
    let mut rest = text;
    while !rest.is_empty() {
        // An event ends at a blank line; keep its terminator as it was.
        let (event, terminator, tail) = match (rest.find("\n\n"), rest.find("\r\n\r\n")) {
            (Some(a), Some(b)) if b < a => cut(rest, b, "\r\n\r\n"),
            (Some(a), _) => cut(rest, a, "\n\n"),
            (None, Some(b)) => cut(rest, b, "\r\n\r\n"),
            (None, None) => (rest, "", ""),
        };
        rest = tail;
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d)))
            .collect();
        let payload = data.join("\n");
        let edited = if payload.trim_start().starts_with(['{', '[']) {
            let (new, n) = edit_json(payload.as_bytes(), filter, policy)?;
            removed += n;
            (n > 0).then_some(new)
        } else {
            None
        };
        match edited {
            Some(new) => {
                let new = String::from_utf8(new).map_err(|_| ListError::Unreadable)?;
                for line in event.lines().filter(|l| !l.starts_with("data:")) {
                    out.push_str(line);
                    out.push('\n');
                }
                out.push_str("data: ");
                out.push_str(&new);
                out.push_str(if terminator.is_empty() { "\n" } else { "\n\n" });
            }
            None => {
                out.push_str(event);
                out.push_str(terminator);
            }
        }
    }
    Ok((out.into_bytes(), removed))
}

/// The response body with the tools the caller may not call removed, and how many were.
pub fn filter_body(body: &[u8], content_type: &str, filter: &ListFilter, policy: &Policy) -> Result<(Vec<u8>, usize), ListError> {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "text/event-stream" {
        edit_sse(body, filter, policy)
    } else {
        edit_json(body, filter, policy)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            tools: [("get_forecast".into(), vec!["weather:read".into()]), ("delete_repo".into(), vec!["repo:admin".into()])].into(),
            ..Policy::default()
        }
    }

    fn list(id: u64) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
            {"name": "get_forecast", "inputSchema": {"type": "object"}},
            {"name": "delete_repo", "inputSchema": {"type": "object"}},
            {"name": "unlisted", "inputSchema": {"type": "object"}}
        ]}})
    }

    fn names(v: &Value) -> Vec<String> {
        v["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
    }

    fn reader(scopes: &[&str]) -> ListFilter {
        ListFilter { ids: vec![json!(1)], scopes: scopes.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn json_body_keeps_only_callable_tools() {
        let body = list(1).to_string();
        let (out, removed) = filter_body(body.as_bytes(), "application/json", &reader(&["weather:read"]), &policy()).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(names(&serde_json::from_slice(&out).unwrap()), vec!["get_forecast"]);
        let (out, removed) = filter_body(body.as_bytes(), "application/json", &reader(&["weather:read", "repo:admin"]), &policy()).unwrap();
        assert_eq!(removed, 1);
        assert_eq!(names(&serde_json::from_slice(&out).unwrap()), vec!["get_forecast", "delete_repo"]);
    }

    #[test]
    fn other_responses_and_ids_are_untouched() {
        let other = json!({"jsonrpc": "2.0", "id": 2, "result": {"tools": [{"name": "delete_repo"}]}}).to_string();
        let (out, removed) = filter_body(other.as_bytes(), "application/json", &reader(&[]), &policy()).unwrap();
        assert_eq!((out, removed), (other.clone().into_bytes(), 0));
        let batch = json!([list(1), json!({"jsonrpc": "2.0", "id": 2, "result": {}})]).to_string();
        let (out, _) = filter_body(batch.as_bytes(), "application/json", &reader(&["weather:read"]), &policy()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(names(&v[0]), vec!["get_forecast"]);
        assert_eq!(v[1], json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
    }

    #[test]
    fn event_stream_events_are_edited_in_place() {
        let body = format!("event: message\nid: 7\ndata: {}\n\n: keepalive\n\nevent: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}}\n\n", list(1));
        let (out, removed) = filter_body(body.as_bytes(), "text/event-stream", &reader(&["weather:read"]), &policy()).unwrap();
        assert_eq!(removed, 2);
        let text = String::from_utf8(out).unwrap();
        let events: Vec<&str> = text.split("\n\n").collect();
        assert!(events[0].starts_with("event: message\nid: 7\ndata: "), "{text}");
        let data: Value = serde_json::from_str(events[0].split("data: ").nth(1).unwrap()).unwrap();
        assert_eq!(names(&data), vec!["get_forecast"]);
        assert_eq!(events[1], ": keepalive");
        assert!(events[2].contains("notifications/progress"));
    }

    #[test]
    fn unreadable_bodies_are_errors_not_pass_throughs() {
        assert_eq!(filter_body(b"{not json", "application/json", &reader(&[]), &policy()).unwrap_err(), ListError::Unreadable);
        let odd = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": "all of them"}}).to_string();
        assert_eq!(filter_body(odd.as_bytes(), "application/json", &reader(&[]), &policy()).unwrap_err(), ListError::UnexpectedShape);
        let nameless = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"title": "x"}]}}).to_string();
        assert_eq!(filter_body(nameless.as_bytes(), "application/json", &reader(&[]), &policy()).unwrap_err(), ListError::UnexpectedShape);
        let sse = "data: {\"jsonrpc\": \"2.0\", \"id\": 1, \"result\": {\"tools\": [\n\n";
        assert_eq!(filter_body(sse.as_bytes(), "text/event-stream", &reader(&[]), &policy()).unwrap_err(), ListError::Unreadable);
    }

    #[test]
    fn method_scopes_and_unlisted_setting_apply() {
        let mut p = policy();
        p.methods.insert("tools/call".into(), vec!["mcp:tools".into()]);
        assert!(!tool_allowed(&p, "get_forecast", &["weather:read".into()]));
        assert!(tool_allowed(&p, "get_forecast", &["weather:read".into(), "mcp:tools".into()]));
        assert!(!tool_allowed(&p, "unlisted", &["mcp:tools".into()]));
        p.unlisted_tools = Unlisted::Allow;
        assert!(tool_allowed(&p, "unlisted", &["mcp:tools".into()]));
    }
}
