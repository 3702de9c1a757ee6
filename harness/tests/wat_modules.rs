//! Loading rules and host-call checks, with tiny hand-written modules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use common::wat;
use mcp_guard_harness::{Harness, HarnessError, Options, Outcome};

const MARKER: &str = r#"(func (export "proxy_abi_version_0_2_1"))"#;

fn load(text: &str) -> Result<Harness, HarnessError> {
    Harness::from_bytes(&wat(text), Options::default())
}

#[test]
fn an_unknown_env_import_fails_at_load_and_is_named() {
    let err = load(&format!(
        r#"(module (import "env" "proxy_bogus" (func (param i32) (result i32))) (memory (export "memory") 1) {MARKER})"#
    ))
    .err()
    .expect("load must fail");
    match &err {
        HarnessError::UnknownImport { module, name } => assert_eq!((module.as_str(), name.as_str()), ("env", "proxy_bogus")),
        other => panic!("expected UnknownImport, got {other:?}"),
    }
    assert!(err.to_string().contains("env.proxy_bogus"), "{err}");
}

#[test]
fn an_unknown_wasi_import_fails_at_load() {
    let err = load(&format!(
        r#"(module (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32))) (memory (export "memory") 1) {MARKER})"#
    ))
    .err()
    .expect("load must fail");
    assert!(matches!(&err, HarnessError::UnknownImport { name, .. } if name == "sock_accept"), "{err:?}");
}

#[test]
fn a_known_import_with_the_wrong_type_fails_at_load() {
    let err = load(&format!(r#"(module (import "env" "proxy_log" (func (param i32))) (memory (export "memory") 1) {MARKER})"#))
        .err()
        .expect("load must fail");
    assert!(matches!(&err, HarnessError::Instantiate { message } if message.contains("proxy_log")), "{err:?}");
}

#[test]
fn a_module_without_the_abi_marker_is_refused() {
    let err = load(r#"(module (memory (export "memory") 1))"#).err().expect("load must fail");
    assert!(matches!(err, HarnessError::UnsupportedAbi { .. }), "{err:?}");
}

#[test]
fn a_missing_file_says_how_to_build_it() {
    let err = Harness::load("/nonexistent/mcp_guard.wasm").err().expect("load must fail");
    assert!(matches!(err, HarnessError::WasmNotFound { .. }));
    assert!(err.to_string().contains("cargo build -p mcp-guard --target wasm32-wasip1 --release"), "{err}");
}

/// A plugin that passes bad arguments to host calls and reports the statuses it got back in
/// the request header `x-statuses` (one digit per call).
const BAD_POINTERS: &str = r#"
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 1024) ":path")
  (data (i32.const 1040) "x-statuses")
  (data (i32.const 1056) "hello")
  (data (i32.const 1072) "authz")
  ;; a map announcing 3 pairs in 8 bytes
  (data (i32.const 1088) "\03\00\00\00\01\00\00\00")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    global.get $heap
    local.set $p
    global.get $heap
    local.get $n
    i32.add
    global.set $heap
    local.get $p)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func $digit (param $at i32) (param $status i32)
    local.get $at
    local.get $status
    i32.const 48
    i32.add
    i32.store8)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; message pointer far outside memory: InvalidMemoryAccess (6)
    (call $digit (i32.const 2048) (call $log (i32.const 2) (i32.const 0xFFFFFFF0) (i32.const 100)))
    ;; return pointers outside memory: 6
    (call $digit (i32.const 2049) (call $get_value (i32.const 0) (i32.const 1024) (i32.const 5) (i32.const 0xFFFFFFF0) (i32.const 0xFFFFFFF4)))
    ;; unknown log level: BadArgument (2)
    (call $digit (i32.const 2050) (call $log (i32.const 9) (i32.const 1056) (i32.const 5)))
    ;; unknown buffer type: 2
    (call $digit (i32.const 2051) (call $get_buffer (i32.const 99) (i32.const 0) (i32.const 10) (i32.const 3000) (i32.const 3004)))
    ;; unknown map type: 2
    (call $digit (i32.const 2052) (call $get_pairs (i32.const 42) (i32.const 3000) (i32.const 3004)))
    ;; a message running past the end of memory: 6
    (call $digit (i32.const 2053) (call $log (i32.const 2) (i32.const 65530) (i32.const 100)))
    ;; an HTTP call without :path (empty map): BadArgument (2)
    (call $digit (i32.const 2054) (call $http_call (i32.const 1072) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 3008)))
    ;; an unknown context: 2
    (call $digit (i32.const 2055) (call $set_effective (i32.const 777)))
    ;; fd_write with iovecs outside memory: WASI FAULT (21) -> digit 'E'
    (call $digit (i32.const 2056) (call $fd_write (i32.const 1) (i32.const 0xFFFFFFF0) (i32.const 2) (i32.const 3000)))
    ;; a malformed map replacing the request headers: Ok (0), and the map is emptied as in Envoy
    (call $digit (i32.const 2057) (call $set_pairs (i32.const 0) (i32.const 1088) (i32.const 8)))
    (drop (call $add (i32.const 0) (i32.const 1040) (i32.const 10) (i32.const 2048) (i32.const 10)))
    i32.const 0)
)
"#;

#[test]
fn bad_arguments_get_error_statuses_not_host_panics() {
    let mut h = load(BAD_POINTERS).unwrap();
    h.add_cluster("authz");
    h.configure("").unwrap();
    let outcome = h.request().header("x-keep", "1").send().unwrap();
    let Outcome::Forwarded(forwarded) = &outcome else { panic!("{outcome:?}") };
    assert_eq!(forwarded.header("x-statuses").as_deref(), Some("66222622E0"));
    // The malformed map emptied the headers; only the plugin's own header remains.
    assert_eq!(forwarded.request_headers.len(), 1, "{:?}", forwarded.request_headers);
    assert!(h.host_notes().iter().any(|n| n.contains("proxy_set_header_map_pairs")), "{:?}", h.host_notes());
}

#[test]
fn a_trap_in_the_plugin_allocator_fails_the_request_and_the_vm() {
    let text = format!(
        r#"(module
          (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          {MARKER}
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) unreachable)
          (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (drop (call $get_pairs (i32.const 0) (i32.const 100) (i32.const 104)))
            i32.const 0))"#
    );
    let mut h = load(&text).unwrap();
    h.configure("").unwrap();
    let outcome = h.request().send().unwrap();
    match &outcome {
        Outcome::Trapped { function, message, .. } => {
            assert_eq!(function, "proxy_on_request_headers");
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(outcome.status(), Some(503));
    assert!(matches!(h.request().send(), Err(HarnessError::Trap { .. })));
}

#[test]
fn a_module_without_callbacks_forwards_everything() {
    let mut h = load(&format!(r#"(module (memory (export "memory") 1) {MARKER})"#)).unwrap();
    h.configure("").unwrap();
    let outcome = h.request().method("POST").path("/x").body("abc").send().unwrap();
    let forwarded = outcome.as_forwarded().expect("forwarded");
    assert_eq!(forwarded.request_body, b"abc");
    assert_eq!(forwarded.header(":path").as_deref(), Some("/x"));
    assert_eq!(forwarded.response.status, 200);
}

#[test]
fn start_runs_for_command_modules_and_proc_exit_zero_is_fine() {
    let text = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          {MARKER}
          (func (export "_start") (call $exit (i32.const 0))))"#
    );
    assert!(load(&text).is_ok());
}
