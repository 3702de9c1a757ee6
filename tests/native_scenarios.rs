//! The scenario table against the native decision core (the same code the .wasm runs, compiled
//! for the host). `wasm_scenarios.rs` runs the same table through the built .wasm.
use mcp_guard_tests::{run_all, NativeTarget};

#[test]
fn every_scenario_on_the_native_core() {
    run_all(NativeTarget::new);
}
