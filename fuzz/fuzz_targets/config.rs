//! The plugin configuration parser (`config::Config::from_json`) on arbitrary bytes, and what
//! is built from a loaded configuration once (`guard::Guard::new`, the RFC 9728 metadata).
//!
//! Invariants:
//! - an accepted configuration is a JSON object to serde_json with non-blank `issuer`,
//!   `audience` and `public_url` as written, and no member the parser does not know;
//! - numbers are within their documented ranges; DPoP algorithms are non-empty and distinct;
//!   every policy scope is an RFC 6749 scope-token;
//! - the metadata document names the audience as `resource`, and its path is under
//!   `/.well-known/oauth-protected-resource`;
//! - a refusal names a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_guard::binding::Binding;
use mcp_guard::config::{Config, KeySource, MAX_MAX_BODY_BYTES};
use mcp_guard::guard::{Guard, HeadVerdict, RequestHead};
use mcp_guard::jwks::MAX_KEYS;
use serde_json::Value;

const TOP_LEVEL: [&str; 13] = [
    "issuer",
    "audience",
    "jwks",
    "jwks_uri",
    "binding",
    "public_url",
    "dpop",
    "policy",
    "resource_metadata",
    "max_body_bytes",
    "clock_skew_seconds",
    "token_cache_entries",
    "forward_token",
];

fn scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(config) => {
            let v: Value = serde_json::from_slice(data).expect("accepted configuration is JSON to serde_json");
            let top = v.as_object().expect("accepted configuration is an object");
            for key in top.keys() {
                assert!(TOP_LEVEL.contains(&key.as_str()), "accepted unknown member {key:?}");
            }
            assert_eq!(top.get("issuer").and_then(Value::as_str), Some(config.issuer.as_str()));
            assert_eq!(top.get("audience").and_then(Value::as_str), Some(config.audience.as_str()));
            assert!(!config.issuer.trim().is_empty() && !config.audience.trim().is_empty());
            assert!(top.get("public_url").and_then(Value::as_str).is_some());
            match &config.keys {
                KeySource::Inline(set) => assert!((1..=MAX_KEYS).contains(&set.len())),
                KeySource::Remote(uri) => {
                    assert!(!uri.cluster.trim().is_empty());
                    assert!((10..=86_400).contains(&uri.refresh_seconds));
                    assert!((100..=60_000).contains(&uri.timeout_ms));
                }
            }
            assert!((1..=MAX_MAX_BODY_BYTES).contains(&config.max_body_bytes));
            assert!(config.clock_skew_seconds <= 600);
            assert!((1..=1_000_000).contains(&config.token_cache_entries));
            let algs = &config.dpop.algorithms;
            assert!(!algs.is_empty());
            for (i, a) in algs.iter().enumerate() {
                assert!(!algs[..i].contains(a), "duplicate DPoP algorithm");
            }
            assert!((1..=3_600).contains(&config.dpop.max_age_seconds));
            assert!(config.dpop.clock_skew_seconds <= 300);
            assert!((64..=10_000_000).contains(&config.dpop.replay_cache_entries));
            let p = &config.policy;
            for (name, scopes) in p.tools.iter().chain(&p.methods).chain(&p.prompts) {
                assert!(!name.is_empty());
                assert!(scopes.iter().all(|s| scope_token(s)), "invalid scope in {name:?}: {scopes:?}");
            }
            // Built once from a loaded configuration.
            let doc = mcp_guard::prm::document(&config);
            assert_eq!(doc.get("resource").and_then(Value::as_str), Some(config.audience.as_str()));
            assert_eq!(doc.get("dpop_bound_access_tokens_required").is_some(), config.binding == Binding::Dpop);
            assert!(config.resource_metadata_path().starts_with("/.well-known/oauth-protected-resource"));
            assert!(config.resource_metadata_url().ends_with(&config.resource_metadata_path()));
            let reply = mcp_guard::answer::resource_metadata(&config);
            assert_eq!(reply.status, 200);
            let guard = Guard::new(config.clone());
            let head = RequestHead { method: "GET".into(), path: config.resource_metadata_path(), ..RequestHead::default() };
            match guard.on_head(&head) {
                HeadVerdict::Reply(reply, None) => assert_eq!(reply.status, 200),
                other => panic!("the metadata path {:?} is not served: {other:?}", head.path),
            }
        }
        Err(e) => {
            assert!(!e.field.is_empty(), "refusal without a field: {e:?}");
            assert!(!e.problem.is_empty());
        }
    }
});
