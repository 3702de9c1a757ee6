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

/// The lines of an event stream with their terminators, as the WHATWG event-stream rules read
/// them: a line ends at CRLF, LF or a lone CR (the last line may have no terminator). Reading
/// lines any other way than the client does would let an event through unedited.
fn sse_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, terminator, tail) = match rest.find(['\r', '\n']) {
            None => (rest, "", ""),
            Some(i) => {
                // `i` is at an ASCII byte, so every cut below is on a character boundary.
                let width = if rest.get(i..).is_some_and(|after| after.starts_with("\r\n")) { 2 } else { 1 };
                let end = i.saturating_add(width);
                (rest.get(..i).unwrap_or(""), rest.get(i..end).unwrap_or(""), rest.get(end..).unwrap_or(""))
            }
        };
        rest = tail;
        Some((line, terminator))
    })
}

/// The field of an event-stream line: the text before the first `:` (all of it when there is
/// none); a comment line (`:` first) has the empty field.
fn sse_field(line: &str) -> (&str, &str) {
    match line.split_once(':') {
        Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    }
}

/// Appends one event (its lines, including the blank line that ends it): byte for byte, or, when
/// its `data` is a response to our `tools/list`, re-emitted with the filtered list in one `data`
/// line where the first was, and every line ending in LF.
fn emit_event(out: &mut String, lines: &[(&str, &str)], filter: &ListFilter, policy: &Policy) -> Result<usize, ListError> {
    let mut payload: Option<String> = None;
    for (line, _) in lines {
        if let ("data", value) = sse_field(line) {
            match &mut payload {
                Some(p) => {
                    p.push('\n');
                    p.push_str(value);
                }
                None => payload = Some(value.to_string()),
            }
        }
    }
    let edited = match payload {
        Some(p) if p.trim_start().starts_with(['{', '[']) => {
            let (new, n) = edit_json(p.as_bytes(), filter, policy)?;
            (n > 0).then_some((new, n))
        }
        _ => None,
    };
    let Some((new, removed)) = edited else {
        for (line, terminator) in lines {
            out.push_str(line);
            out.push_str(terminator);
        }
        return Ok(0);
    };
    // serde_json's output has no raw line break: one `data` line carries it all.
    let new = String::from_utf8(new).map_err(|_| ListError::Unreadable)?;
    let mut data_written = false;
    for (line, _) in lines {
        if sse_field(line).0 == "data" {
            if !data_written {
                out.push_str("data: ");
                out.push_str(&new);
                out.push('\n');
                data_written = true;
            }
        } else {
            // Every line of a re-emitted event ends in LF: a kept line ending in a lone CR
            // must not meet the LF of the line after the removed `data` lines as one CRLF.
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(removed)
}

/// Edits an event stream: events are kept byte for byte, except those whose `data` is a
/// response to our `tools/list`, which are re-emitted with the filtered list. Lines and events
/// are split exactly as a client splits them (WHATWG HTML, "event stream interpretation").
fn edit_sse(body: &[u8], filter: &ListFilter, policy: &Policy) -> Result<(Vec<u8>, usize), ListError> {
    let text = std::str::from_utf8(body).map_err(|_| ListError::Unreadable)?;
    let mut out = String::with_capacity(text.len());
    // A byte order mark may open the stream; the client skips it before reading lines.
    let text = match text.strip_prefix('\u{feff}') {
        Some(rest) => {
            out.push('\u{feff}');
            rest
        }
        None => text,
    };
    let mut removed = 0;
    let mut event: Vec<(&str, &str)> = Vec::new();
    for (line, terminator) in sse_lines(text) {
        event.push((line, terminator));
        // A blank line ends the event.
        if line.is_empty() {
            removed += emit_event(&mut out, &event, filter, policy)?;
            event.clear();
        }
    }
    // An unterminated last event is read too (fail safe: it may yet be dispatched).
    removed += emit_event(&mut out, &event, filter, policy)?;
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

    /// Found by the `listing` fuzz target: the event stream used to be cut into lines at LF only
    /// and into events at `\n\n`/`\r\n\r\n`, while a client also ends lines at a lone CR (and so
    /// sees a blank line in `\n\r`) and skips a leading BOM. Those events reached the client with
    /// the full list. Each body is checked edited and not edited side by side.
    #[test]
    fn event_stream_lines_are_split_as_the_client_splits_them() {
        let data = list(1).to_string();
        for body in [
            format!("id: 1\rdata: {data}\r\r"),                   // CR line endings
            format!("event: x\n\rdata: {data}\n\n"),                // LF then CR: a blank line
            format!("\u{feff}data: {data}\n\n"),                     // leading byte order mark
            format!("retry: 10\r\ndata: {data}\r\r\n\r\n"),          // mixed endings
            format!("data\ndata: {data}\n\n"),                        // a `data` line without a colon
        ] {
            let (out, removed) = filter_body(body.as_bytes(), "text/event-stream", &reader(&["weather:read"]), &policy()).unwrap();
            assert_eq!(removed, 2, "{body:?}");
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("delete_repo") && text.contains("get_forecast"), "{body:?} became {text:?}");
            // With every tool allowed, nothing changes, byte for byte.
            let all = ListFilter { ids: vec![json!(1)], scopes: vec!["weather:read".into(), "repo:admin".into()] };
            let mut open = policy();
            open.unlisted_tools = Unlisted::Allow;
            let (same, none) = filter_body(body.as_bytes(), "text/event-stream", &all, &open).unwrap();
            assert_eq!((same, none), (body.clone().into_bytes(), 0));
        }
        // Found by the fuzzer after that fix: a kept line ending in CR between two `data` lines
        // met the blank line's LF once the `data` lines were replaced, so the event no longer
        // ended there and swallowed the next one.
        let text = list(1).to_string();
        let (head, rest) = text.split_at(text.find("\"result\"").unwrap());
        let body = format!("data: {head}\nid: 1\rdata: {rest}\n\nevent: next\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}}\n\n");
        let (out, removed) = filter_body(body.as_bytes(), "text/event-stream", &reader(&["weather:read"]), &policy()).unwrap();
        assert_eq!(removed, 2);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("id: 1\n\nevent: next\n"), "{text:?}");
        assert_eq!(filter_body(&out, "text/event-stream", &reader(&["weather:read"]), &policy()).unwrap(), (out.clone(), 0));

        // The fuzzer's input, minimised: a CR after an LF ends the event the list is in.
        let found = "retry:(10\r\ndata: x\n\ra: y\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"id\":1,\"result\":{\"tools\":[{\"name\":\"delete_repo\"}]}}\r\n\r\n";
        let (out, removed) = filter_body(found.as_bytes(), "text/event-stream", &reader(&["weather:read"]), &policy()).unwrap();
        assert_eq!(removed, 1);
        assert!(!String::from_utf8(out).unwrap().contains("delete_repo"));
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
