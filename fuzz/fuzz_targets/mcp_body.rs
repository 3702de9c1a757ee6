//! The MCP JSON-RPC body decoder (`mcp::decode`) on arbitrary bytes, with a differential
//! against serde_json's `Value` (what rmcp and most Rust servers read):
//! - an accepted body is valid JSON to serde_json, of the same shape (object, or a batch of
//!   the same length), nested no deeper than `MAX_DEPTH`;
//! - for every message, the method, the tool/prompt/resource name and the id the decoder
//!   reports are exactly what serde_json's `Value` holds; a response has no method and one of
//!   `result`/`error`;
//! - a refused single message echoes an id only when serde_json sees that same id;
//! - what the decoder hands on (policy, tools/list filter) takes the decoded body without panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::listing::ListFilter;
use mcp_guard::mcp::{decode, Message, RpcId, Target, MAX_BATCH, MAX_DEPTH};
use mcp_guard::policy::Policy;
use serde_json::Value;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn same_id(id: &RpcId, v: Option<&Value>) {
    let ours: Value = serde_json::from_str(&id.0).unwrap_or_else(|e| panic!("id {:?} is not JSON: {e}", id.0));
    assert_eq!(Some(&ours), v, "id differs from serde_json's");
    assert!(ours.is_string() || ours.is_i64() || ours.is_u64(), "id {ours} is neither string nor integer");
}

fn check_message(message: &Message, v: &Value) {
    let obj = v.as_object().expect("an accepted message is an object to serde_json");
    assert_eq!(obj.get("jsonrpc").and_then(Value::as_str), Some("2.0"));
    match message {
        Message::Call { id, method, target } => {
            assert_eq!(obj.get("method").and_then(Value::as_str), Some(method.as_str()), "method differs");
            assert!(!obj.contains_key("result") && !obj.contains_key("error"));
            match id {
                Some(id) => same_id(id, obj.get("id")),
                None => assert!(!obj.contains_key("id"), "decoder lost the id"),
            }
            let params = obj.get("params");
            assert!(params.is_none() || params.is_some_and(Value::is_object), "params not an object");
            let member = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str).map(str::to_string);
            let expected = match method.as_str() {
                "tools/call" => Target::Tool(member("name").expect("tools/call without a string name")),
                "prompts/get" => Target::Prompt(member("name").expect("prompts/get without a string name")),
                "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                    Target::Resource(member("uri").expect("resource method without a string uri"))
                }
                _ => Target::None,
            };
            assert_eq!(target, &expected, "target differs from serde_json's");
        }
        Message::Response { id } => {
            assert!(!obj.contains_key("method") && !obj.contains_key("params"));
            assert!(obj.contains_key("result") != obj.contains_key("error"), "response needs exactly one of result/error");
            same_id(id, obj.get("id"));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(body) => {
            let v: Value = serde_json::from_slice(data).expect("decoder accepted what serde_json refuses");
            assert!(depth(&v) <= MAX_DEPTH, "accepted nesting deeper than MAX_DEPTH");
            if body.is_batch {
                let items = v.as_array().expect("a batch is an array to serde_json");
                assert_eq!(items.len(), body.messages.len());
                assert!((1..=MAX_BATCH).contains(&items.len()));
                assert!(body.single_id().is_none());
                for (m, item) in body.messages.iter().zip(items) {
                    check_message(m, item);
                }
            } else {
                assert_eq!(body.messages.len(), 1);
                check_message(&body.messages[0], &v);
                if let Some(id) = body.single_id() {
                    same_id(id, v.get("id"));
                }
            }
            // What the guard does next with a decoded body.
            let policy = Policy {
                tools: [("get_forecast".to_string(), vec!["weather:read".to_string()])].into(),
                ..Policy::default()
            };
            for m in &body.messages {
                let _ = policy.required_scopes(m);
            }
            if let Some(filter) = ListFilter::for_messages(&body.messages, &["weather:read".to_string()]) {
                let lists = body
                    .messages
                    .iter()
                    .filter(|m| matches!(m, Message::Call { method, id: Some(_), .. } if method == "tools/list"))
                    .count();
                assert_eq!(filter.ids.len(), lists);
            }
        }
        Err(malformed) => {
            let _ = (malformed.error.reason(), malformed.error.jsonrpc_code());
            if let Some(id) = &malformed.id {
                let v: Value = serde_json::from_slice(data).expect("an echoed id comes from a JSON body");
                assert!(v.is_object(), "an id is echoed only for a single message");
                same_id(id, v.get("id"));
            }
        }
    }
});
