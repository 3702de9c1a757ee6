//! The `tools/list` answer filter (`listing::filter_body`), JSON and event-stream bodies. The
//! first byte picks the body form (bit 0: event stream) and the caller's scopes (bits 1-2).
//!
//! Invariants:
//! - nothing removed means the body is returned byte for byte;
//! - filtering is idempotent: the output filtered again is unchanged, nothing removed;
//! - JSON: `removed` is the number of tools the scopes may not call in the responses to our
//!   `tools/list` ids (as serde_json reads them), and none is left in the output;
//! - event stream: the output, read by an independent parser that follows the WHATWG
//!   event-stream rules (lines end at CRLF, LF or CR; an event ends at a blank line; `data`
//!   lines joined with LF), carries no tool the scopes may not call in a response to our ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::listing::{filter_body, tool_allowed, ListFilter};
use mcp_guard::policy::Policy;
use mcp_guard_fuzz::{listing_filter, listing_policy, LISTING_SCOPES};
use serde_json::Value;

/// Tools in `message` (a response to one of our ids) the scopes may not call.
fn forbidden_in(message: &Value, filter: &ListFilter, policy: &Policy) -> usize {
    let Some(obj) = message.as_object() else { return 0 };
    let ours = obj.get("id").is_some_and(|id| filter.ids.contains(id)) && !obj.contains_key("method");
    let Some(tools) = obj.get("result").filter(|_| ours).and_then(|r| r.get("tools")).and_then(Value::as_array) else {
        return 0;
    };
    tools
        .iter()
        .filter(|t| t.get("name").and_then(Value::as_str).is_some_and(|n| !tool_allowed(policy, n, &filter.scopes)))
        .count()
}

fn forbidden_in_json(value: &Value, filter: &ListFilter, policy: &Policy) -> usize {
    match value {
        Value::Array(items) => items.iter().map(|m| forbidden_in(m, filter, policy)).sum(),
        other => forbidden_in(other, filter, policy),
    }
}

/// The `data` of each event of an event stream, per the WHATWG HTML "event stream" parsing
/// rules (every event, including an unterminated last one).
fn sse_events(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']);
        let line = &rest[..end.unwrap_or(rest.len())];
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(d);
            }
        } else if !line.starts_with(':') {
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            if field == "data" {
                let d = data.get_or_insert_with(String::new);
                d.push_str(value);
                d.push('\n');
            }
        }
        match end {
            None => break,
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
        }
    }
    if let Some(d) = data.take() {
        events.push(d);
    }
    // The spec strips the final LF of the data buffer.
    events
        .into_iter()
        .map(|mut d| {
            d.pop();
            d
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let sse = selector & 1 == 1;
    let content_type = if sse { "text/event-stream" } else { "application/json; charset=utf-8" };
    let filter = listing_filter(LISTING_SCOPES[usize::from(selector >> 1) % LISTING_SCOPES.len()]);
    let policy = listing_policy();

    let Ok((out, removed)) = filter_body(body, content_type, &filter, &policy) else { return };
    if removed == 0 {
        assert_eq!(out, body, "nothing removed, yet the body changed");
    }
    let again = filter_body(&out, content_type, &filter, &policy);
    assert_eq!(again, Ok((out.clone(), 0)), "filtering the output again changed it");

    if sse {
        let text = std::str::from_utf8(&out).expect("edited event stream is UTF-8");
        for event in sse_events(text) {
            if let Ok(value) = serde_json::from_str::<Value>(&event) {
                assert_eq!(forbidden_in_json(&value, &filter, &policy), 0, "a client reads a forbidden tool in event {event:?}");
            }
        }
    } else {
        let before: Value = serde_json::from_slice(body).expect("a filtered JSON body is JSON");
        assert_eq!(forbidden_in_json(&before, &filter, &policy), removed, "removed count differs");
        let after: Value = serde_json::from_slice(&out).expect("the output is JSON");
        assert_eq!(forbidden_in_json(&after, &filter, &policy), 0, "a forbidden tool is left");
    }
});
