//! Every example in `policies/` loads through the real filter, and a broken configuration is
//! refused at load with the filter's own line naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use mcp_guard_harness::HarnessError;
use mcp_guard_tests::load_filter;

fn policy_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_policy_loads_in_the_filter() {
    let files = policy_files();
    assert!(files.len() >= 3, "policies/ lost its examples: {files:?}");
    for file in files {
        let mut h = load_filter();
        h.allow_any_cluster();
        let text = std::fs::read_to_string(&file).unwrap();
        h.configure(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(h.log_text().contains("mcp-guard: configured for"), "{}: {}", file.display(), h.log_text());
        // Each one fetches its keys through its own cluster at once.
        assert_eq!(h.http_calls().len(), 1, "{}", file.display());
    }
}

#[test]
fn a_broken_policy_is_refused_with_the_field_named() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/weather-dpop.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    config["policy"]["unlisted_tools"] = "sometimes".into();
    let mut h = load_filter();
    match h.configure(&config.to_string()) {
        Err(HarnessError::ConfigureRejected { logs }) => {
            let text = format!("{logs:?}");
            assert!(text.contains("invalid plugin configuration: policy.unlisted_tools"), "{text}");
        }
        other => panic!("expected the configuration to be refused, got {other:?}"),
    }
    let mut h = load_filter();
    assert!(matches!(h.configure("{\"issuer\": 1}"), Err(HarnessError::ConfigureRejected { .. })));
}
