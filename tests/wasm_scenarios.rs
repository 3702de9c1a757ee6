//! The scenario table against the built `.wasm` in the harness: the same table as
//! `native_scenarios.rs`, so the core and the shipped module cannot drift apart.
use mcp_guard_tests::{run_all, WasmTarget};

#[test]
fn every_scenario_on_the_built_wasm() {
    run_all(WasmTarget::new);
}
