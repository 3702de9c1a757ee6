//! What can go wrong loading or driving a plugin.

use std::fmt;
use std::path::PathBuf;

use crate::LogEntry;

/// Errors of the harness itself or of the plugin's setup. A trap while a request is being
/// processed is not one of these: it is that request's [`crate::Outcome::Trapped`].
#[derive(Debug, Clone)]
pub enum HarnessError {
    /// The `.wasm` file is not there.
    WasmNotFound { path: PathBuf },
    /// The file could not be read, or is not a valid module.
    InvalidModule { path: Option<PathBuf>, message: String },
    /// The module imports a function this host does not provide. Envoy would refuse it too.
    UnknownImport { module: String, name: String },
    /// The module exports no `proxy_abi_version_0_2_*` marker.
    UnsupportedAbi { exports: Vec<String> },
    /// A `proxy_on_*` export has a signature other than the ABI's.
    BadExport { name: String, message: String },
    /// Instantiation failed (e.g. an import of the right name but the wrong type).
    Instantiate { message: String },
    /// The plugin trapped (a Rust panic ends in `unreachable`). After a trap the VM is failed,
    /// as in Envoy: every later call reports the same trap.
    Trap { function: String, message: String },
    /// `proxy_on_vm_start` returned false.
    VmStartRejected { logs: Vec<LogEntry> },
    /// `proxy_on_configure` returned false; `logs` holds what the plugin logged while refusing.
    ConfigureRejected { logs: Vec<LogEntry> },
    /// A request was sent before a successful `configure`; Envoy never creates a stream
    /// context for a plugin that was not configured.
    NotConfigured,
    /// No HTTP call with this token is waiting for an answer.
    UnknownHttpCall { token: u32 },
    /// No live stream with this context id.
    UnknownContext { context_id: u32 },
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::WasmNotFound { path } => write!(
                f,
                "no wasm module at {}: run `make wasm`, or `cargo build -p mcp-guard --target wasm32-wasip1 --release`",
                path.display()
            ),
            HarnessError::InvalidModule { path: Some(path), message } => {
                write!(f, "cannot load {}: {message}", path.display())
            }
            HarnessError::InvalidModule { path: None, message } => write!(f, "cannot load the module: {message}"),
            HarnessError::UnknownImport { module, name } => {
                write!(f, "the module imports `{module}.{name}`, which this host does not provide")
            }
            HarnessError::UnsupportedAbi { exports } => write!(
                f,
                "the module exports no proxy_abi_version_0_2_1 (or 0_2_0) marker; is it a proxy-wasm plugin? exports: {}",
                exports.join(", ")
            ),
            HarnessError::BadExport { name, message } => write!(f, "export `{name}` has the wrong signature: {message}"),
            HarnessError::Instantiate { message } => write!(f, "cannot instantiate the module: {message}"),
            HarnessError::Trap { function, message } => write!(f, "the plugin trapped in {function}: {message}"),
            HarnessError::VmStartRejected { logs } => {
                write!(f, "proxy_on_vm_start returned false")?;
                write_logs(f, logs)
            }
            HarnessError::ConfigureRejected { logs } => {
                write!(f, "the plugin rejected its configuration (proxy_on_configure returned false)")?;
                write_logs(f, logs)
            }
            HarnessError::NotConfigured => write!(f, "configure the plugin before sending requests"),
            HarnessError::UnknownHttpCall { token } => write!(f, "no pending HTTP call with token {token}"),
            HarnessError::UnknownContext { context_id } => write!(f, "no live stream with context id {context_id}"),
        }
    }
}

fn write_logs(f: &mut fmt::Formatter<'_>, logs: &[LogEntry]) -> fmt::Result {
    for entry in logs {
        write!(f, "\n  [{}] {}", entry.level, entry.message)?;
    }
    Ok(())
}

impl std::error::Error for HarnessError {}
