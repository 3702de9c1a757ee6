//! One Envoy per configuration, each with one worker (`--concurrency 1`), all from the same
//! binary, all on loopback: the same listener, `envoy.filters.http.buffer` before the router (a
//! `direct_response` route answers a POST at header time, and without the buffer filter Envoy
//! closes the connection after each request), and a `direct_response` 200 as the upstream.
//! Only the filter in front of the buffer differs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::material::Tls;
use crate::Error;

/// The HCM's stat prefix: `http.bench.downstream_rq_2xx` etc.
pub const STAT_PREFIX: &str = "bench";
/// What the trivial upstream answers.
pub const UPSTREAM_BODY: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"light rain"}]}}"#;

/// The Envoy binary: `$ENVOY_BIN`, else the one `make envoy` installed into `.venv`.
pub fn binary(root: &Path) -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let lib = root.join(".venv/lib");
    fs::read_dir(&lib)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error(format!(
                "Envoy not found under {}: run `make envoy`",
                lib.display()
            ))
        })
}

pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

pub fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error(format!("no free port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error(e.to_string()))
}

/// The HTTP filter in front of buffer + router.
#[derive(Clone)]
pub enum Front {
    None,
    /// Envoy's `jwt_authn` with the issuer's JWKS inline; `cache`: `jwt_cache_config` on.
    JwtAuthn {
        jwks: Value,
        cache: bool,
    },
    /// mcp-guard with this plugin configuration; `access_log`: a file access log that writes the
    /// filter's audit record (`audit.filter_state: record`) for every request.
    Guard {
        wasm: PathBuf,
        config: Value,
        access_log: Option<PathBuf>,
    },
}

#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub port: u16,
    pub front: Front,
    /// Terminate TLS and require a client certificate signed by the bench CA.
    pub mtls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Spec {
    pub fn mtls_files(tls: &Tls) -> Option<(PathBuf, PathBuf, PathBuf)> {
        Some((
            tls.server_cert.clone(),
            tls.server_key.clone(),
            tls.ca.clone(),
        ))
    }

    pub fn bootstrap(&self) -> Value {
        let mut filters = Vec::new();
        match &self.front {
            Front::None => {}
            Front::JwtAuthn { jwks, cache } => {
                let mut provider = json!({
                    "issuer": crate::material::ISSUER,
                    "audiences": [crate::material::AUDIENCE],
                    "local_jwks": {"inline_string": jwks.to_string()},
                    "forward": false
                });
                if *cache {
                    provider["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
                }
                filters.push(json!({
                    "name": "envoy.filters.http.jwt_authn",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                        "providers": {"bench": provider},
                        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]
                    }
                }));
            }
            Front::Guard { wasm, config, .. } => filters.push(json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "mcp_guard",
                        "failure_policy": "FAIL_CLOSED",
                        "allow_on_headers_stop_iteration": true,
                        "vm_config": {
                            "vm_id": "mcp_guard",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": wasm.display().to_string()}}
                        },
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": config.to_string()
                        }
                    }
                }
            })),
        }
        filters.push(json!({
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 1_048_576
            }
        }));
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        let hcm = json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": STAT_PREFIX,
                "route_config": {"name": "bench", "virtual_hosts": [{
                    "name": "bench", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "direct_response": {
                        "status": 200, "body": {"inline_string": UPSTREAM_BODY}
                    }}]
                }]},
                "http_filters": filters
            }
        });
        let mut hcm = hcm;
        if let Front::Guard {
            access_log: Some(file),
            ..
        } = &self.front
        {
            hcm["typed_config"]["access_log"] = json!([{
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": file.display().to_string(),
                    "log_format": {"text_format_source": {"inline_string": "%FILTER_STATE(wasm.mcp_guard_audit:PLAIN)%\n"}}
                }
            }]);
        }
        let mut chain = json!({"filters": [hcm]});
        if let Some((cert, key, ca)) = &self.mtls {
            chain["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": true,
                    "common_tls_context": {
                        "tls_certificates": [{
                            "certificate_chain": {"filename": cert.display().to_string()},
                            "private_key": {"filename": key.display().to_string()}
                        }],
                        "validation_context": {"trusted_ca": {"filename": ca.display().to_string()}}
                    }
                }
            });
        }
        json!({
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": self.port}},
                    "filter_chains": [chain]
                }]
            }
        })
    }
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only prctl, which is async-signal-safe, runs between fork and exec.
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

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    pub name: String,
    pub port: u16,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Envoy {
    pub fn start(binary: &Path, spec: &Spec, dir: &Path) -> Result<Envoy, Error> {
        let dir = dir.join(&spec.name);
        fs::create_dir_all(&dir).map_err(|e| Error(format!("{}: {e}", dir.display())))?;
        let config = dir.join("envoy.json");
        let admin_file = dir.join("admin-address");
        let log = dir.join("envoy.log");
        let _ = fs::remove_file(&admin_file);
        let text =
            serde_json::to_string_pretty(&spec.bootstrap()).map_err(|e| Error(e.to_string()))?;
        fs::write(&config, text).map_err(|e| Error(format!("{}: {e}", config.display())))?;
        let log_file =
            fs::File::create(&log).map_err(|e| Error(format!("{}: {e}", log.display())))?;
        let log_err = log_file.try_clone().map_err(|e| Error(e.to_string()))?;
        let mut command = Command::new(binary);
        die_with_parent(&mut command);
        // Envoy's default log level (info): the filter's audit line per decision is written,
        // as in a default deployment.
        let child = command
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| Error(format!("cannot start {}: {e}", binary.display())))?;
        let mut envoy = Envoy {
            child,
            name: spec.name.clone(),
            port: spec.port,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(envoy.fail(&format!("Envoy exited ({status})")));
            }
            if envoy.admin.port() == 0 {
                if let Some(addr) = fs::read_to_string(&admin_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    envoy.admin = addr;
                }
            } else if envoy
                .admin_get("/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(envoy.fail("Envoy did not become ready within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn fail(&self, what: &str) -> Error {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        Error(format!(
            "{} ({}): {what}\n--- last lines of {} ---\n{tail}",
            self.name,
            self.port,
            self.log.display()
        ))
    }

    /// A plain HTTP/1.1 GET (Connection: close; Envoy refuses HTTP/1.0) to the admin interface: (status, body).
    pub fn admin_get(&self, path: &str) -> Result<(u16, String), Error> {
        let mut stream = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2))
            .map_err(|e| Error(e.to_string()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| Error(e.to_string()))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| Error(e.to_string()))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| Error(e.to_string()))?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        Ok((
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_string()
            },
        ))
    }

    /// Counters and gauges from `/stats`.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>, Error> {
        let (status, body) = self.admin_get("/stats")?;
        if status != 200 {
            return Err(Error(format!(
                "{}: admin /stats answered {status}",
                self.name
            )));
        }
        Ok(body
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// CPU time the Envoy process has used so far, (user, system) in seconds (Linux `/proc`).
    pub fn cpu_seconds(&self) -> Option<(f64, f64)> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let hz = clock_ticks_per_second();
        Some((utime / hz, stime / hz))
    }

    /// Resident memory of the Envoy process, in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

#[cfg(target_os = "linux")]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

#[cfg(not(target_os = "linux"))]
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_names(spec: &Spec) -> Vec<String> {
        let b = spec.bootstrap();
        let hcm = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        hcm["http_filters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f["name"].as_str().map(String::from))
            .collect()
    }

    #[test]
    fn every_configuration_buffers_before_the_router() {
        let jwks = json!({"keys": []});
        for front in [
            Front::None,
            Front::JwtAuthn {
                jwks: jwks.clone(),
                cache: true,
            },
            Front::Guard {
                wasm: PathBuf::from("/x.wasm"),
                config: json!({}),
                access_log: None,
            },
        ] {
            let spec = Spec {
                name: "t".into(),
                port: 1,
                front,
                mtls: None,
            };
            let names = filter_names(&spec);
            assert_eq!(
                names[names.len() - 2..],
                ["envoy.filters.http.buffer", "envoy.filters.http.router"]
            );
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"),
            "hello, world"
        );
    }

    #[test]
    fn jwt_cache_only_when_asked() {
        let jwks = json!({"keys": []});
        for cache in [true, false] {
            let spec = Spec {
                name: "t".into(),
                port: 1,
                front: Front::JwtAuthn {
                    jwks: jwks.clone(),
                    cache,
                },
                mtls: None,
            };
            let b = spec.bootstrap();
            let provider = &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                ["typed_config"]["http_filters"][0]["typed_config"]["providers"]["bench"];
            assert_eq!(provider.get("jwt_cache_config").is_some(), cache);
        }
    }
}
