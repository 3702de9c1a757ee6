//! Shared by the harness's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use mcp_guard_harness::{Harness, Options};

pub const BUILD_TEST_PLUGIN: &str = "cargo build --release --target wasm32-wasip1 \
     --manifest-path harness/test-plugin/Cargo.toml --target-dir target/test-plugin";

/// The test plugin's `.wasm`; fails the test with the command that builds it when missing.
pub fn test_plugin() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-plugin/wasm32-wasip1/release/mcp_guard_test_plugin.wasm");
    assert!(
        path.is_file(),
        "the harness test plugin is not built ({}); build it from the workspace root with\n    {BUILD_TEST_PLUGIN}",
        path.display()
    );
    path
}

/// The test plugin, loaded and configured, with the `authz` cluster declared.
pub fn plugin() -> Harness {
    plugin_with("{}", Options::default())
}

pub fn plugin_with(config: &str, options: Options) -> Harness {
    let mut h = Harness::load_with(test_plugin(), options).expect("load the test plugin");
    h.add_cluster("authz");
    h.configure(config).expect("configure the test plugin");
    h
}

/// A module from WAT text.
pub fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("valid WAT")
}
