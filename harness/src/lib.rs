//! A small proxy-wasm host for tests: it loads any proxy-wasm ABI 0.2.1 module built for
//! `wasm32-wasip1` into wasmtime and drives it the way Envoy does, so a filter's whole
//! behaviour can be tested with `cargo test`, without Envoy.
//!
//! ```no_run
//! use mcp_guard_harness::{Harness, HttpCallReply, Outcome};
//! # fn main() -> Result<(), mcp_guard_harness::HarnessError> {
//! let mut h = Harness::load("target/wasm32-wasip1/release/mcp_guard.wasm")?;
//! h.add_cluster("authz").set_time(1_750_000_000);
//! h.on_http_call(|_call| HttpCallReply::json(r#"{"keys":[]}"#));
//! h.configure(r#"{"...": "..."}"#)?;
//! let outcome = h.request().method("POST").path("/mcp").authority("mcp.example.com")
//!     .header("authorization", "DPoP abc").body(r#"{"jsonrpc":"2.0"}"#).send()?;
//! if let Outcome::LocalReply(reply) = &outcome {
//!     println!("refused: {} {}", reply.status, reply.body_str());
//! }
//! # Ok(()) }
//! ```
//!
//! What is modelled (Envoy 1.35+, `allow_on_headers_stop_iteration: true`):
//! - load: `_initialize` (or `_start`), `proxy_on_context_create(root, 0)`, `proxy_on_vm_start`;
//!   [`Harness::configure`]: `proxy_on_configure`.
//! - per request: context create, request headers / body chunks / trailers, then (once the
//!   request got through) the upstream's response through the response callbacks, then
//!   `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
//! - `Pause` from headers holds them while body chunks are still delivered; `Pause` from a body
//!   chunk buffers (the buffer holds everything so far); `Continue` or `proxy_continue_stream`
//!   releases what is held. Local replies, resumes and resets take effect after the callback.
//! - HTTP calls are answered after the dispatching callback returns, by a responder closure or
//!   later by the test; tokens, failures and timeouts look as they do in Envoy.

mod abi;
mod cli;
mod driver;
mod error;
mod harness;
pub mod http;
pub mod map;
mod request;
mod state;
mod wasi;

pub use cli::run as cli_main;
pub use error::HarnessError;
pub use harness::Harness;
pub use http::{Forwarded, HttpCall, HttpCallReply, LocalReply, Outcome, Response, UpstreamResponse};
pub use map::Headers;
pub use request::{RequestBuilder, RequestSpec};

use std::fmt;

/// The root context's id (Envoy numbers contexts per VM from 1; the root comes first).
pub const ROOT_CONTEXT_ID: u32 = 1;

/// The plugin's clock until a test sets it: 2023-11-14T22:13:20Z.
pub const DEFAULT_TIME_SECS: u64 = 1_700_000_000;

/// Proxy-wasm log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

impl LogLevel {
    pub fn from_u32(level: u32) -> Option<Self> {
        Some(match level {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            5 => LogLevel::Critical,
            _ => return None,
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        })
    }
}

/// One line the plugin logged (`proxy_log`, or stdout / stderr through WASI `fd_write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub level: LogLevel,
    pub message: String,
    /// The effective context when it was logged (the root context is [`ROOT_CONTEXT_ID`]).
    pub context_id: u32,
}

/// Proxy-wasm metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Histogram = 2,
}

/// A metric the plugin defined, read back by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricInfo {
    pub name: String,
    pub kind: MetricType,
    /// Counter or gauge value; for a histogram, the number of samples.
    pub value: u64,
    pub samples: Vec<u64>,
}

/// How to set up a VM.
#[derive(Debug, Clone)]
pub struct Options {
    /// Count wasm instructions executed (wasmtime fuel), read with [`Harness::fuel_consumed`].
    /// Compiles a separate, slightly slower module.
    pub fuel: bool,
    /// `vm_config.configuration`, given to `proxy_on_vm_start`.
    pub vm_config: Vec<u8>,
    /// The plugin's `root_id` (property `plugin_root_id`).
    pub root_id: String,
    /// The VM id (property `plugin_vm_id`; shared queues resolve against it).
    pub vm_id: String,
    /// The plugin's name (property `plugin_name`).
    pub plugin_name: String,
    /// Envoy's `allow_on_headers_stop_iteration`: with it, `Pause` from request/response
    /// headers is `StopIteration` (body callbacks still come); without it, Envoy turns it into
    /// `StopAllIterationAndWatermark` (nothing more reaches the plugin until it resumes).
    pub allow_on_headers_stop_iteration: bool,
    /// Environment variables the plugin sees through WASI (Envoy passes none by default).
    pub env: Vec<(String, String)>,
    /// Seed of the deterministic `random_get`.
    pub random_seed: u64,
    /// The host's log level: lower plugin logs are dropped, and `proxy_get_log_level` says it.
    pub log_level: LogLevel,
    /// Keep compiled modules on disk (under the `target/` the `.wasm` lives in, else the system
    /// temp dir), keyed by a hash of the module bytes and the engine, so later processes skip
    /// the compile. Default on; `MCP_GUARD_HARNESS_DISK_CACHE=0` turns it off.
    pub disk_cache: bool,
    /// Write `/tmp/perf-<pid>.map` naming the compiled wasm functions, so `perf record` of the
    /// process shows the filter's own functions (for profiling; `mcp-guard-bench profile`).
    pub perf_map: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fuel: false,
            vm_config: Vec::new(),
            root_id: String::new(),
            vm_id: String::new(),
            plugin_name: "mcp-guard".to_string(),
            allow_on_headers_stop_iteration: true,
            env: Vec::new(),
            random_seed: 0x5eed,
            log_level: LogLevel::Trace,
            disk_cache: std::env::var_os("MCP_GUARD_HARNESS_DISK_CACHE").is_none_or(|v| v != "0"),
            perf_map: false,
        }
    }
}
