//! `mcp-guard-harness`: what would the filter do with this request? No Envoy needed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::http::{HttpCallReply, Outcome};
use crate::request::RequestSpec;
use crate::{Harness, HarnessError, Options};

const DEFAULT_WASM: &str = "target/wasm32-wasip1/release/mcp_guard.wasm";

const USAGE: &str = "\
usage: mcp-guard-harness --config POLICY.json --request REQUEST [options]

Runs one request through the filter, as Envoy would, and says what it does with it.

  --config FILE        the filter's plugin configuration (JSON)
  --request FILE       the request: JSON, or HTTP text (`POST /mcp HTTP/1.1`, headers,
                       blank line, body; `Host` becomes :authority)
  --wasm FILE          the filter module (default: $MCP_GUARD_WASM, else
                       target/wasm32-wasip1/release/mcp_guard.wasm)
  --time SECONDS       the Unix time the filter sees (default: now)
  --jwks FILE          answer every HTTP call the filter makes with 200 and this body
                       (without it, calls stay unanswered and the request stays pending)
  --cert-sha256 HEX    the client certificate's SHA-256 (hex), as Envoy reports it for mTLS
  --verbose            also print the filter's log lines

JSON request: {\"method\": \"POST\", \"path\": \"/mcp\", \"authority\": \"mcp.example.com\",
  \"headers\": {\"authorization\": \"DPoP ...\"} or [[\"name\", \"value\"], ...],
  \"body\": \"...\" or \"body_json\": {...}}

Exit status: 0 forwarded (or answered by the filter itself with a non-error status),
1 refused (or reset, or the filter trapped), 3 pending, 2 bad arguments or input.";

/// Runs the command line; returns the process exit code.
pub fn run(args: Vec<String>) -> i32 {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    run_with(args, &mut stdout.lock(), &mut stderr.lock())
}

#[derive(Debug, Default)]
struct Args {
    wasm: Option<PathBuf>,
    config: Option<PathBuf>,
    request: Option<PathBuf>,
    time: Option<u64>,
    jwks: Option<PathBuf>,
    cert_sha256: Option<String>,
    verbose: bool,
}

fn parse_args(args: Vec<String>) -> Result<Option<Args>, String> {
    let mut parsed = Args::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--wasm" => parsed.wasm = Some(value("--wasm")?.into()),
            "--config" => parsed.config = Some(value("--config")?.into()),
            "--request" => parsed.request = Some(value("--request")?.into()),
            "--jwks" => parsed.jwks = Some(value("--jwks")?.into()),
            "--cert-sha256" => parsed.cert_sha256 = Some(value("--cert-sha256")?.to_ascii_lowercase()),
            "--time" => {
                let v = value("--time")?;
                parsed.time = Some(v.parse().map_err(|_| format!("--time wants Unix seconds, not {v:?}"))?);
            }
            "--verbose" | "-v" => parsed.verbose = true,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if parsed.config.is_none() || parsed.request.is_none() {
        return Err("--config and --request are required (see --help)".to_string());
    }
    Ok(Some(parsed))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Runs the command with the given output streams; returns the exit code.
pub(crate) fn run_with(args: Vec<String>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    match execute(args, out) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(err, "mcp-guard-harness: {message}");
            2
        }
    }
}

fn execute(args: Vec<String>, out: &mut dyn Write) -> Result<i32, String> {
    let Some(args) = parse_args(args)? else {
        let _ = writeln!(out, "{USAGE}");
        return Ok(0);
    };
    let config_path = args.config.clone().unwrap_or_default();
    let request_path = args.request.clone().unwrap_or_default();
    let config = read_file(&config_path, "the configuration")?;
    let request_bytes = read_file(&request_path, "the request")?;
    let mut spec = parse_request(&request_bytes).map_err(|e| format!("cannot understand the request {}: {e}", request_path.display()))?;
    let jwks = args.jwks.as_deref().map(|p| read_file(p, "the JWKS")).transpose()?;
    if let Some(hex) = &args.cert_sha256 {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("--cert-sha256 wants hex, not {hex:?}"));
        }
        spec.properties.push((vec!["connection".into(), "sha256_peer_certificate_digest".into()], hex.clone().into_bytes()));
        spec.properties.push((vec!["connection".into(), "mtls".into()], vec![1]));
    }

    let wasm = args
        .wasm
        .clone()
        .or_else(|| std::env::var_os("MCP_GUARD_WASM").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_WASM));
    let mut h = Harness::load_with(&wasm, Options::default()).map_err(|e| e.to_string())?;
    h.allow_any_cluster();
    let now = args.time.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    });
    h.set_time(now);
    if let Some(body) = jwks {
        h.on_http_call(move |_| HttpCallReply::json(body.clone()));
    }
    if let Err(e) = h.configure_bytes(&config) {
        return Err(match e {
            HarnessError::ConfigureRejected { logs } => {
                let why = logs
                    .iter()
                    .rev()
                    .find(|l| l.level >= crate::LogLevel::Warn)
                    .or(logs.last())
                    .map_or_else(|| "it logged nothing".to_string(), |l| l.message.clone());
                format!("the filter rejected {}: {why}", config_path.display())
            }
            other => other.to_string(),
        });
    }
    let outcome = h.send(spec).map_err(|e| e.to_string())?;
    let code = report(&h, &outcome, out);
    if args.verbose {
        let _ = writeln!(out, "filter log:");
        for line in h.logs() {
            let _ = writeln!(out, "  [{}] {}", line.level, line.message);
        }
    }
    Ok(code)
}

/// Prints the decision; returns the exit code for it.
fn report(h: &Harness, outcome: &Outcome, out: &mut dyn Write) -> i32 {
    let mut lines: Vec<String> = Vec::new();
    let code = match outcome {
        Outcome::Forwarded(f) => {
            lines.push("decision: forwarded".into());
            lines.push(format!("status: {} (from the upstream; this tool's upstream always answers 200)", f.response.status));
            lines.push("headers sent upstream:".into());
            for (name, value) in f.request_headers.iter() {
                lines.push(format!("  {name}: {}", String::from_utf8_lossy(value)));
            }
            if !f.request_body.is_empty() {
                lines.push(format!("body sent upstream: {} bytes", f.request_body.len()));
            }
            0
        }
        Outcome::LocalReply(r) if r.status < 400 => {
            // E.g. the resource metadata document, which the filter serves itself.
            lines.push("decision: answered by the filter".into());
            lines.push(format!("status: {}", r.status));
            if !r.body.is_empty() {
                lines.push(format!("body: {}", r.body_str()));
            }
            0
        }
        Outcome::LocalReply(r) => {
            lines.push("decision: refused".into());
            lines.push(format!("status: {}", r.status));
            let (reason, message) = reasons(&r.body);
            if let Some(reason) = &reason {
                lines.push(format!("reason: {reason}"));
            }
            if let Some(message) = &message {
                lines.push(format!("message: {message}"));
            }
            if let Some(challenge) = r.header("www-authenticate") {
                lines.push(format!("www-authenticate: {challenge}"));
            }
            if !r.details.is_empty() {
                lines.push(format!("details: {}", r.details));
            }
            if reason.is_none() && message.is_none() && !r.body.is_empty() {
                lines.push(format!("body: {}", r.body_str()));
            }
            1
        }
        Outcome::Pending { .. } => {
            lines.push("decision: pending (the filter holds the request)".into());
            for call in h.pending_http_calls() {
                lines.push(format!(
                    "waiting for: HTTP call to cluster {} ({} {}); answer it with --jwks",
                    call.cluster,
                    call.method().unwrap_or_default(),
                    call.path().unwrap_or_default()
                ));
            }
            3
        }
        Outcome::Reset { details, .. } => {
            lines.push(format!("decision: reset ({details})"));
            1
        }
        Outcome::Trapped { function, message, .. } => {
            lines.push("decision: refused (the filter trapped; Envoy answers 503)".into());
            lines.push(format!("trap: in {function}: {message}"));
            1
        }
    };
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    code
}

/// `error.data.reason` and `error.message` of a JSON-RPC error body; for an OAuth-style body,
/// `error` and `error_description`.
fn reasons(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(json) = serde_json::from_slice::<Value>(body) else { return (None, None) };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match json.get("error") {
        Some(Value::Object(error)) => {
            let reason = text(error.get("data").and_then(|d| d.get("reason")));
            (reason, text(error.get("message")))
        }
        Some(Value::String(error)) => (Some(error.clone()), text(json.get("error_description"))),
        _ => (None, None),
    }
}

/// Reads a request file: JSON when it starts with `{`, otherwise HTTP text.
pub(crate) fn parse_request(bytes: &[u8]) -> Result<RequestSpec, String> {
    let trimmed = bytes.iter().position(|b| !b.is_ascii_whitespace()).map_or(&b""[..], |i| bytes.get(i..).unwrap_or_default());
    if trimmed.first() == Some(&b'{') {
        parse_json_request(trimmed)
    } else {
        parse_http_request(trimmed)
    }
}

fn parse_json_request(bytes: &[u8]) -> Result<RequestSpec, String> {
    let json: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let mut spec = RequestSpec::default();
    let field = |name: &str| -> Result<Option<String>, String> {
        match json.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("\"{name}\" must be a string")),
        }
    };
    if let Some(m) = field("method")? {
        spec.method = m;
    }
    if let Some(p) = field("path")? {
        spec.path = p;
    }
    if let Some(a) = field("authority")? {
        spec.authority = a;
    }
    if let Some(s) = field("scheme")? {
        spec.scheme = s;
    }
    match json.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let v = v.as_str().ok_or_else(|| format!("header {k:?} must be a string"))?;
                push_header(&mut spec, k, v);
            }
        }
        Some(Value::Array(pairs)) => {
            for pair in pairs {
                let (Some(k), Some(v)) = (pair.get(0).and_then(Value::as_str), pair.get(1).and_then(Value::as_str)) else {
                    return Err("\"headers\" pairs must be [\"name\", \"value\"]".into());
                };
                push_header(&mut spec, k, v);
            }
        }
        Some(_) => return Err("\"headers\" must be an object or a list of pairs".into()),
    }
    let body = match (field("body")?, json.get("body_json")) {
        (Some(_), Some(_)) => return Err("give \"body\" or \"body_json\", not both".into()),
        (Some(text), None) => text.into_bytes(),
        (None, Some(value)) => {
            if !spec.headers.iter().any(|(k, _)| k == "content-type") {
                spec.headers.push(("content-type".into(), b"application/json".to_vec()));
            }
            serde_json::to_vec(value).map_err(|e| e.to_string())?
        }
        (None, None) => Vec::new(),
    };
    if !body.is_empty() {
        spec.body_chunks = vec![body];
    }
    Ok(spec)
}

/// `Host` is the HTTP/1 spelling of `:authority` (Envoy's codec turns one into the other).
fn push_header(spec: &mut RequestSpec, name: &str, value: &str) {
    let name = name.to_ascii_lowercase();
    if name == "host" || name == ":authority" {
        spec.authority = value.to_string();
    } else {
        spec.headers.push((name, value.as_bytes().to_vec()));
    }
}

fn parse_http_request(bytes: &[u8]) -> Result<RequestSpec, String> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = match text.find("\r\n\r\n").map(|i| (i, 4)).or_else(|| text.find("\n\n").map(|i| (i, 2))) {
        Some((i, sep)) => (text.get(..i).unwrap_or_default(), text.get(i + sep..).unwrap_or_default()),
        None => (text.as_ref(), ""),
    };
    let mut lines = head.lines();
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Err(format!("the first line must be `METHOD PATH [HTTP/1.1]`, not {request_line:?}"));
    };
    let mut spec = RequestSpec { method: method.to_string(), path: path.to_string(), ..RequestSpec::default() };
    for line in lines {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| format!("not a header line: {line:?}"))?;
        push_header(&mut spec, name.trim(), value.trim());
    }
    let body = body.trim_end_matches(['\r', '\n']);
    if !body.is_empty() {
        spec.body_chunks = vec![body.as_bytes().to_vec()];
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn json_requests_with_header_objects_or_pairs() {
        let spec = parse_request(
            br#"{"method":"POST","path":"/mcp","authority":"mcp.example.com","headers":{"Authorization":"DPoP x"},"body_json":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!((spec.method.as_str(), spec.path.as_str(), spec.authority.as_str()), ("POST", "/mcp", "mcp.example.com"));
        assert_eq!(spec.headers[0], ("authorization".to_string(), b"DPoP x".to_vec()));
        assert_eq!(spec.headers[1], ("content-type".to_string(), b"application/json".to_vec()));
        assert_eq!(spec.body_chunks, vec![br#"{"a":1}"#.to_vec()]);

        let spec = parse_request(br#" {"headers":[["host","h.example"],["x","1"],["x","2"]],"body":"hi"}"#).unwrap();
        assert_eq!(spec.authority, "h.example");
        assert_eq!(spec.headers.len(), 2);
        assert_eq!(spec.method, "GET");
        assert!(parse_request(br#"{"headers":[["only-name"]]}"#).is_err());
        assert!(parse_request(br#"{"body":"a","body_json":{}}"#).is_err());
    }

    #[test]
    fn http_text_requests() {
        let spec = parse_request(b"POST /mcp HTTP/1.1\r\nHost: mcp.example.com\r\nAuthorization: DPoP abc\r\nDPoP: e.y.j\r\n\r\n{\"jsonrpc\":\"2.0\"}\r\n").unwrap();
        assert_eq!(spec.method, "POST");
        assert_eq!(spec.path, "/mcp");
        assert_eq!(spec.authority, "mcp.example.com");
        assert_eq!(spec.headers, vec![("authorization".into(), b"DPoP abc".to_vec()), ("dpop".into(), b"e.y.j".to_vec())]);
        assert_eq!(spec.body_chunks, vec![br#"{"jsonrpc":"2.0"}"#.to_vec()]);
        let spec = parse_request(b"GET /.well-known/oauth-protected-resource\n").unwrap();
        assert!(spec.body_chunks.is_empty());
        assert!(parse_request(b"nonsense").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\nbad header line\n\n").is_err());
    }

    #[test]
    fn reasons_from_json_rpc_and_oauth_bodies() {
        let rpc = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"Forbidden","data":{"reason":"insufficient_scope"}}}"#;
        assert_eq!(reasons(rpc), (Some("insufficient_scope".into()), Some("Forbidden".into())));
        let oauth = br#"{"error":"invalid_token","error_description":"expired"}"#;
        assert_eq!(reasons(oauth), (Some("invalid_token".into()), Some("expired".into())));
        assert_eq!(reasons(b"plain"), (None, None));
    }

    #[test]
    fn argument_errors() {
        assert!(parse_args(vec!["--config".into()]).is_err());
        assert!(parse_args(vec!["--bogus".into()]).is_err());
        assert!(parse_args(vec!["--config=a".into()]).is_err()); // no --request
        assert!(parse_args(vec!["--help".into()]).unwrap().is_none());
        let args = parse_args(vec!["--config=a".into(), "--request".into(), "b".into(), "--time".into(), "5".into()]).unwrap().unwrap();
        assert_eq!(args.time, Some(5));
        assert!(parse_args(vec!["--config=a".into(), "--request=b".into(), "--time=x".into()]).is_err());
    }
}
