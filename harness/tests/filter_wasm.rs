//! The real filter module, when it has been built: every import it has must be provided.
//! (Its behaviour is tested in tests/, not here.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Instant;

use mcp_guard_harness::{Harness, Options};

/// The built filter. `make test` builds it first; run alone, a missing module fails the test
/// with the command that builds it.
fn filter_wasm() -> PathBuf {
    let path = std::env::var_os("MCP_GUARD_WASM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/release/mcp_guard.wasm")
    });
    assert!(
        path.is_file(),
        "{} is not built: run `make wasm` (or cargo build -p mcp-guard --target wasm32-wasip1 --release)",
        path.display()
    );
    path
}

#[test]
fn the_filter_module_loads_with_every_import_provided() {
    let path = filter_wasm();
    let started = Instant::now();
    let h = Harness::load_with(&path, Options::default()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("loaded {} in {:?} ({} pages)", path.display(), started.elapsed(), h.memory_pages());
    let started = Instant::now();
    let _again = Harness::load(&path).unwrap();
    eprintln!("second load (module cached in-process) in {:?}", started.elapsed());
}
