//! The load generators: wrk (Debian) for plain HTTP, with a Lua script that can send a new
//! header value (a fresh DPoP proof, another token) on every request; oha (crates.io) for the
//! TLS listener with a client certificate, which wrk cannot present.
//!
//! Every run's responses are counted twice: by the generator (wrk counts statuses > 399 and
//! socket errors; oha gives the status distribution) and by Envoy (`downstream_rq_completed` and
//! `downstream_rq_2xx` before and after). The benchmark fails if more than 1% are not 200.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::Error;

/// Concurrent connections, both generators.
pub const CONNECTIONS: u32 = 8;

/// Header values taken one per request from a file (one value a line).
#[derive(Clone)]
pub struct List {
    pub file: PathBuf,
    pub header: &'static str,
    /// Put before each value (`Bearer `).
    pub prefix: &'static str,
    /// Start again at the top when the file is used up (tokens, with jwt_authn's cache off);
    /// never for DPoP proofs, whose `jti` must not repeat.
    pub wrap: bool,
}

/// Lua long-bracket string that cannot be closed by the text inside.
fn lua_str(text: &str) -> String {
    let mut level = 1;
    while text.contains(&format!("]{}]", "=".repeat(level))) {
        level += 1;
    }
    let eq = "=".repeat(level);
    format!("[{eq}[{text}]{eq}]")
}

/// The wrk script for one configuration: method, body and fixed headers, a `request()` that
/// takes the next value from `list` (when there is one), and a `done()` that prints one
/// machine-readable line.
pub fn wrk_script(body: &str, headers: &[(&str, String)], list: Option<&List>) -> String {
    let mut s = String::from("-- written by mcp-guard-bench\n");
    s.push_str("wrk.method = \"POST\"\nwrk.path = \"/mcp\"\n");
    s.push_str(&format!("wrk.body = {}\n", lua_str(body)));
    s.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    s.push_str("wrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n");
    for (name, value) in headers {
        s.push_str(&format!(
            "wrk.headers[ {} ] = {}\n",
            lua_str(name),
            lua_str(value)
        ));
    }
    s.push_str(
        r#"
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
i = 0
exhausted = 0
"#,
    );
    if let Some(list) = list {
        s.push_str(&format!(
            r#"
local values = {{}}
local count = 0
local header = {header}
local prefix = {prefix}
local wrap = {wrap}
function init(args)
  for line in io.lines({file}) do
    if #line > 0 then
      count = count + 1
      values[count] = line
    end
  end
  if count == 0 then
    io.stderr:write("mcp-guard-bench: no values left in the list\n")
    os.exit(2)
  end
end
function request()
  i = i + 1
  local v = values[i]
  if v == nil then
    if wrap then
      i = 1
      v = values[1]
    else
      exhausted = 1
      v = values[count]
    end
  end
  wrk.headers[ header ] = prefix .. v
  return wrk.format()
end
"#,
            header = lua_str(list.header),
            prefix = lua_str(list.prefix),
            wrap = list.wrap,
            file = lua_str(&list.file.display().to_string()),
        ));
    }
    s.push_str(
        r#"
function done(summary, latency, requests)
  local used, out = 0, 0
  for _, t in ipairs(threads) do
    used = used + (t:get("i") or 0)
    out = out + (t:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH-RESULT requests=%d duration_us=%d status_errors=%d connect=%d read=%d write=%d timeout=%d p50_us=%d p99_us=%d used=%d exhausted=%d\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), used, out))
end
"#,
    );
    s
}

/// What one timed run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Responses received.
    pub requests: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Responses that were not 200, by the generator's count.
    pub not_ok: u64,
    /// Connect/read/write errors and timeouts (wrk), or errors other than the deadline (oha).
    pub socket_errors: u64,
    /// The list ran out (values were repeated).
    pub exhausted: bool,
    /// Requests the filter (or jwt_authn) counted as allowed, by Envoy's stats.
    pub allowed: u64,
    /// Envoy's CPU time (all threads) per response, user and system, in µs.
    pub envoy_user_us: f64,
    pub envoy_sys_us: f64,
}

impl RunResult {
    /// Successful responses per second (a run with any other response fails anyway).
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests.saturating_sub(self.not_ok) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

/// Reads the `BENCH-RESULT` line the script's `done()` prints.
pub fn parse_wrk(stdout: &str) -> Result<RunResult, Error> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("BENCH-RESULT "))
        .ok_or_else(|| Error(format!("wrk printed no result line:\n{stdout}")))?;
    let get =
        |n: &str| field(line, n).ok_or_else(|| Error(format!("wrk result line lacks {n}: {line}")));
    Ok(RunResult {
        requests: get("requests")?,
        seconds: get("duration_us")? as f64 / 1e6,
        p50_ms: get("p50_us")? as f64 / 1e3,
        p99_ms: get("p99_us")? as f64 / 1e3,
        not_ok: get("status_errors")?,
        socket_errors: get("connect")? + get("read")? + get("write")? + get("timeout")?,
        exhausted: get("exhausted")? > 0,
        ..RunResult::default()
    })
}

pub fn run_wrk(script: &Path, port: u16, seconds: u64) -> Result<RunResult, Error> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/mcp"))
        .output()
        .map_err(|e| Error(format!("cannot run wrk: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error(format!(
            "wrk failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_wrk(&stdout).map_err(|e| Error(format!("{e}\n{}", String::from_utf8_lossy(&out.stderr))))
}

/// oha's `--output-format json`.
pub fn parse_oha(json: &str) -> Result<RunResult, Error> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| Error(format!("oha output is not JSON ({e}): {json}")))?;
    let codes = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let count = |pred: &dyn Fn(&str) -> bool| -> u64 {
        codes
            .iter()
            .filter(|(k, _)| pred(k))
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    };
    let requests = count(&|_| true);
    let not_ok = count(&|k| k != "200");
    let socket_errors = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let pct = |p: &str| v["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1e3;
    Ok(RunResult {
        requests,
        seconds: v["summary"]["total"].as_f64().unwrap_or(0.0),
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        not_ok,
        socket_errors,
        exhausted: false,
        ..RunResult::default()
    })
}

/// oha with one tokio worker thread (like `wrk -t1`), a client certificate, over TLS.
pub fn run_oha(
    port: u16,
    seconds: u64,
    body_file: &Path,
    headers: &[(&str, String)],
    cert: &Path,
    key: &Path,
) -> Result<RunResult, Error> {
    let mut cmd = Command::new("oha");
    cmd.env("TOKIO_WORKER_THREADS", "1")
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "-z",
            &format!("{seconds}s"),
            "-c",
            &CONNECTIONS.to_string(),
        ])
        .args([
            "-m",
            "POST",
            "-T",
            "application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-D",
        ])
        .arg(body_file)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg("--insecure");
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/mcp"))
        .output()
        .map_err(|e| Error(format!("cannot run oha: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error(format!(
            "oha failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_oha(&stdout)
}

/// One request with curl (a smoke check before timing): (status, body).
pub fn curl(
    url: &str,
    headers: &[(&str, String)],
    body: &str,
    tls: Option<(&Path, &Path)>,
) -> Result<(u16, String), Error> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-S",
        "--max-time",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
    ])
    .args([
        "-H",
        "content-type: application/json",
        "-H",
        "accept: application/json, text/event-stream",
    ])
    .args(["--data-binary", body]);
    for (name, value) in headers {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some((cert, key)) = tls {
        cmd.arg("-k").arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd
        .arg(url)
        .output()
        .map_err(|e| Error(format!("cannot run curl: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = code.trim().parse().unwrap_or(0);
    if status == 0 {
        return Err(Error(format!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok((status, body.to_string()))
}

pub fn tool_version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|_| format!("{cmd}: not found"))
}

pub fn write(path: &Path, text: &str) -> Result<(), Error> {
    fs::write(path, text).map_err(|e| Error(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_result_line_is_read() {
        let out = "Running 10s test\nBENCH-RESULT requests=1000 duration_us=2000000 status_errors=3 connect=0 read=1 write=0 timeout=2 p50_us=150 p99_us=900 used=1000 exhausted=0\n";
        let r = parse_wrk(out).unwrap_or_default();
        assert_eq!(
            (r.requests, r.not_ok, r.socket_errors, r.exhausted),
            (1000, 3, 3, false)
        );
        assert!((r.rps() - 498.5).abs() < 1e-9, "successful responses only");
        assert!((r.p99_ms - 0.9).abs() < 1e-9);
        assert!(parse_wrk("no line").is_err());
    }

    #[test]
    fn oha_json_is_read_and_deadline_aborts_are_not_errors() {
        let json = r#"{"summary":{"total":2.0},"latencyPercentiles":{"p50":0.001,"p99":0.004},
            "statusCodeDistribution":{"200":990,"401":10},
            "errorDistribution":{"aborted due to deadline":8,"connection closed":1}}"#;
        let r = parse_oha(json).unwrap_or_default();
        assert_eq!((r.requests, r.not_ok, r.socket_errors), (1000, 10, 1));
        assert!((r.rps() - 495.0).abs() < 1e-9, "successful responses only");
        assert!((r.p50_ms - 1.0).abs() < 1e-9);
    }

    #[test]
    fn lua_strings_cannot_be_closed_from_inside() {
        assert_eq!(lua_str("a"), "[=[a]=]");
        assert_eq!(lua_str("x]=]y"), "[==[x]=]y]==]");
    }

    #[test]
    fn the_script_takes_values_from_the_list_only_when_there_is_one() {
        let plain = wrk_script("{}", &[("Authorization", "Bearer t".into())], None);
        assert!(!plain.contains("function request"));
        assert!(plain.contains("function done"));
        let list = List {
            file: PathBuf::from("/tmp/p"),
            header: "DPoP",
            prefix: "",
            wrap: false,
        };
        let dynamic = wrk_script("{}", &[], Some(&list));
        assert!(dynamic.contains("function request") && dynamic.contains("local wrap = false"));
    }
}
