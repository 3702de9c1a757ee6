//! OAuth 2.0 Protected Resource Metadata (RFC 9728), served by the filter itself at
//! `/.well-known/oauth-protected-resource<public_url path>` so MCP clients can discover the
//! authorization server (MCP authorization spec, 2025-11-25).
#![forbid(unsafe_code)]

use serde_json::{json, Map, Value};

use crate::binding::Binding;
use crate::config::Config;

/// The metadata document.
pub fn document(config: &Config) -> Value {
    let mut doc = Map::new();
    doc.insert("resource".into(), json!(config.audience));
    doc.insert("authorization_servers".into(), json!(config.resource_metadata.authorization_servers));
    doc.insert("scopes_supported".into(), json!(config.resource_metadata.scopes_supported));
    doc.insert("bearer_methods_supported".into(), json!(["header"]));
    if let Some(name) = &config.resource_metadata.resource_name {
        doc.insert("resource_name".into(), json!(name));
    }
    if config.binding.accepts_dpop() {
        let algs: Vec<&str> = config.dpop.algorithms.iter().map(|a| a.name()).collect();
        doc.insert("dpop_signing_alg_values_supported".into(), json!(algs));
    }
    if config.binding == Binding::Dpop {
        doc.insert("dpop_bound_access_tokens_required".into(), json!(true));
    }
    if config.binding == Binding::Mtls {
        doc.insert("tls_client_certificate_bound_access_tokens".into(), json!(true));
    }
    Value::Object(doc)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn config(binding: &str) -> Config {
        let metadata = json!({"authorization_servers": ["https://auth.example.com"], "scopes_supported": ["mcp:echo"]});
        crate::testkit::test_config(binding, json!({"resource_metadata": metadata}))
    }

    #[test]
    fn dpop_server_says_dpop_is_required() {
        let doc = document(&config("dpop"));
        assert_eq!(doc["resource"], "https://mcp.example.com/mcp");
        assert_eq!(doc["authorization_servers"], json!(["https://auth.example.com"]));
        assert_eq!(doc["scopes_supported"], json!(["mcp:echo"]));
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
        assert_eq!(doc["dpop_bound_access_tokens_required"], json!(true));
        assert_eq!(doc["dpop_signing_alg_values_supported"], json!(["ES256", "EdDSA"]));
    }

    #[test]
    fn other_modes_do_not_claim_dpop_is_required() {
        for mode in ["mtls", "dpop_or_mtls", "bearer"] {
            assert!(document(&config(mode)).get("dpop_bound_access_tokens_required").is_none(), "{mode}");
        }
        assert_eq!(document(&config("mtls"))["tls_client_certificate_bound_access_tokens"], json!(true));
        assert!(document(&config("mtls")).get("dpop_signing_alg_values_supported").is_none());
    }
}
