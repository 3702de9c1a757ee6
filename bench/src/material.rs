//! What the load carries: an issuer, access tokens, DPoP proofs and TLS certificates, all made
//! at run time with the filter's own test kit (real ES256 / Ed25519 signatures) and openssl.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use mcp_guard::jose::{b64url_encode, sha256};
use mcp_guard::testkit::{ProofSpec, TestIssuer, TestKey};
use serde_json::{json, Map, Value};

use crate::Error;

/// The MCP endpoint as clients address it (the filter's `public_url`; proofs' `htu`). The
/// filter compares `htu` with this origin plus the request path, whatever `Host` says.
pub const PUBLIC_URL: &str = "https://mcp.example.com/mcp";
pub const ISSUER: &str = "https://auth.example.com";
pub const AUDIENCE: &str = "https://mcp.example.com/mcp";
/// The scope the tool needs, and the tokens carry.
pub const SCOPE: &str = "weather:read";
pub const TOOL: &str = "get_forecast";
/// Tokens outlive any run.
pub const TOKEN_LIFETIME: u64 = 4 * 3600;

/// The one request every configuration serves: an MCP `tools/call`.
pub fn tools_call_body() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": TOOL, "arguments": {"city": "Paris", "days": 3}}})
    .to_string()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Claims of an access token valid from `now` for [`TOKEN_LIFETIME`], with a unique `jti`.
pub fn claims(issuer: &TestIssuer, now: u64, jti: &str) -> Map<String, Value> {
    let mut c = issuer.claims(now, SCOPE);
    c.insert("exp".into(), (now + TOKEN_LIFETIME).into());
    c.insert("jti".into(), jti.into());
    c
}

pub fn unbound_token(issuer: &TestIssuer, now: u64, jti: &str) -> String {
    issuer.token(&claims(issuer, now, jti))
}

pub fn dpop_token(issuer: &TestIssuer, now: u64, jti: &str, holder: &TestKey) -> String {
    let mut c = claims(issuer, now, jti);
    c.insert("cnf".into(), json!({"jkt": holder.thumbprint()}));
    issuer.token(&c)
}

pub fn mtls_token(issuer: &TestIssuer, now: u64, jti: &str, cert_der_sha256: &[u8; 32]) -> String {
    let mut c = claims(issuer, now, jti);
    c.insert(
        "cnf".into(),
        json!({"x5t#S256": b64url_encode(cert_der_sha256)}),
    );
    issuer.token(&c)
}

/// A fresh DPoP proof (unique `jti`) for `POST PUBLIC_URL` at `iat`.
pub fn proof(key: &TestKey, token: &str, iat: u64) -> String {
    ProofSpec::new(key, "POST", PUBLIC_URL, iat, token).sign(key)
}

/// `count` items made by `make(i)` on every core (signing dominates; order kept).
pub fn par_generate(count: usize, make: impl Fn(usize) -> String + Sync) -> Vec<String> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    let chunk = count.div_ceil(threads).max(1);
    let make = &make;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let start = t * chunk;
                    let end = ((t + 1) * chunk).min(count);
                    (start..end).map(make).collect::<Vec<String>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// Writes one value per line (what the wrk script iterates through).
pub fn write_lines(path: &Path, lines: &[String]) -> Result<(), Error> {
    let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    fs::write(path, text).map_err(|e| Error(format!("{}: {e}", path.display())))
}

/// Everything the Envoy runs need.
pub struct Material {
    pub now: u64,
    /// ES256, as in the issue: jwt_authn and our filter verify the same tokens.
    pub issuer: TestIssuer,
    pub es_client: TestKey,
    pub ed_client: TestKey,
    /// Unbound, reused (configs 2 and 4).
    pub bearer_token: String,
    pub dpop_es_token: String,
    pub dpop_ed_token: String,
    pub tls: Tls,
    pub mtls_token: String,
}

impl Material {
    pub fn new(dir: &Path) -> Result<Material, Error> {
        let now = now();
        let issuer = TestIssuer::new(TestKey::es256());
        let es_client = TestKey::es256();
        let ed_client = TestKey::ed25519();
        let tls = Tls::create(&dir.join("tls"))?;
        Ok(Material {
            bearer_token: unbound_token(&issuer, now, "bench-bearer"),
            dpop_es_token: dpop_token(&issuer, now, "bench-dpop-es256", &es_client),
            dpop_ed_token: dpop_token(&issuer, now, "bench-dpop-eddsa", &ed_client),
            mtls_token: mtls_token(&issuer, now, "bench-mtls", &tls.client_der_sha256),
            now,
            issuer,
            es_client,
            ed_client,
            tls,
        })
    }

    pub fn jwks(&self) -> Value {
        self.issuer.jwks()
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate (P-256), by openssl.
pub struct Tls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Another client certificate from the same CA (not the one the token is bound to).
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
    /// SHA-256 of the client certificate's DER: the token's `cnf.x5t#S256`.
    pub client_der_sha256: [u8; 32],
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| Error(format!("cannot run openssl: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Tls {
    pub fn create(dir: &Path) -> Result<Tls, Error> {
        fs::create_dir_all(dir).map_err(|e| Error(format!("{}: {e}", dir.display())))?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=mcp-guard bench CA",
        ]);
        openssl(dir, &ca)?;
        for (name, cn, ext) in [
            (
                "server",
                "/CN=127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "/CN=bench-agent", "extendedKeyUsage=clientAuth\n"),
            ("other", "/CN=bench-other", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            fs::write(dir.join(&extfile), ext).map_err(|e| Error(e.to_string()))?;
            let mut req = vec!["req"];
            req.extend(ec);
            req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
            openssl(dir, &req)?;
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &extfile,
                ],
            )?;
        }
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "client.pem",
                "-outform",
                "DER",
                "-out",
                "client.der",
            ],
        )?;
        let der = fs::read(dir.join("client.der")).map_err(|e| Error(e.to_string()))?;
        Ok(Tls {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_cert: dir.join("other.pem"),
            other_key: dir.join("other.key"),
            client_der_sha256: sha256(&der),
        })
    }
}
