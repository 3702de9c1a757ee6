//! The plugin configuration: parsed once (in `on_configure`) into an immutable [`Config`].
//! Every refusal names the field at fault (`dpop.max_age_seconds: must be …`), unknown fields
//! are refused (a typo must not silently weaken the policy), and nothing security-relevant is
//! guessed: `issuer`, `audience`, the keys and `public_url` must be written.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use crate::binding::Binding;
use crate::jose::Alg;
use crate::jwks::KeySet;
use crate::policy::{Policy, Unlisted};
use crate::uri::{AbsoluteUrl, UriError};

/// A configuration refused at load: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid plugin configuration: {}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), problem: problem.into() }
}

/// Where the issuer's signing keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `jwks`: written in the configuration.
    Inline(KeySet),
    /// `jwks_uri`: fetched through an Envoy cluster.
    Remote(JwksUri),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUri {
    /// The Envoy cluster the fetch goes through.
    pub cluster: String,
    pub url: AbsoluteUrl,
    pub refresh_seconds: u64,
    pub timeout_ms: u64,
}

/// DPoP proof settings (RFC 9449).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    pub algorithms: Vec<Alg>,
    pub max_age_seconds: u64,
    pub clock_skew_seconds: u64,
    pub replay_cache_entries: u32,
}

/// What the RFC 9728 metadata document advertises beyond what the rest of the config implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceMetadata {
    pub authorization_servers: Vec<String>,
    pub scopes_supported: Vec<String>,
    pub resource_name: Option<String>,
}

/// Which decisions get a line in Envoy's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLog {
    /// Every decision (the default: nothing goes unrecorded when no access log is configured).
    All,
    /// Refusals only; allowed requests are recorded through the access log.
    Denied,
    None,
}

/// How a decision reaches Envoy's access log (filter state, `%FILTER_STATE(wasm.<name>:PLAIN)%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFilterState {
    /// One value per fact: `mcp_guard_decision`, `mcp_guard_reason`, `mcp_guard_sub`, …
    /// (readable in a text format; up to nine host calls per request).
    Fields,
    /// The whole audit record as one JSON value, `mcp_guard_audit`: one host call.
    Record,
    /// Nothing (the default): the audit line is the record. Access-log facts are asked for, as
    /// jwt_authn's `payload_in_metadata` is: the six values of a cached-token request cost 11%
    /// of its throughput in Envoy (bench/README.md).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    pub log: AuditLog,
    pub filter_state: AuditFilterState,
    /// Audit lines are gathered per worker and written together at most this late (or sooner,
    /// when [`AUDIT_LOG_BUFFER_BYTES`] are waiting); 0 writes each line as it is decided. One
    /// write into Envoy's log per line was the largest single cost of the cached path.
    pub log_flush_ms: u64,
}

/// The default `audit.log_flush_ms`: Envoy's own file access log flushes every second too.
pub const DEFAULT_AUDIT_LOG_FLUSH_MS: u64 = 1000;
/// The longest `audit.log_flush_ms` we accept: audit lines are not kept back for longer.
pub const MAX_AUDIT_LOG_FLUSH_MS: u64 = 10_000;
/// Waiting audit lines are written once they reach this size, whatever the time.
pub const AUDIT_LOG_BUFFER_BYTES: usize = 16 * 1024;

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { log: AuditLog::All, filter_state: AuditFilterState::None, log_flush_ms: DEFAULT_AUDIT_LOG_FLUSH_MS }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub issuer: String,
    pub audience: String,
    pub keys: KeySource,
    pub binding: Binding,
    pub public_url: AbsoluteUrl,
    pub dpop: DpopSettings,
    pub resource_metadata: ResourceMetadata,
    pub max_body_bytes: usize,
    /// Leeway for the access token's `exp`/`nbf`/`iat`.
    pub clock_skew_seconds: u64,
    /// How many verified access tokens each worker keeps.
    pub token_cache_entries: usize,
    /// Pass `Authorization` and `DPoP` on to the upstream. Off by default: the MCP spec forbids
    /// a server to receive and reuse the client's token (token passthrough).
    pub forward_token: bool,
    pub audit: AuditSettings,
    pub policy: Policy,
}

pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Above this, buffering bodies in every worker is a memory risk we refuse to configure.
pub const MAX_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Reads one JSON object, remembering which members were used so the rest can be refused.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl<'a> Fields<'a> {
    fn of(path: &str, value: &'a Value) -> Result<Fields<'a>, ConfigError> {
        match value {
            Value::Object(map) => Ok(Fields { path: path.to_string(), map, used: BTreeSet::new() }),
            _ => Err(err(display_path(path), "must be a JSON object")),
        }
    }

    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.used.insert(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn string(&mut self, name: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.as_str())),
            Some(Value::String(_)) => Err(err(self.field(name), "must not be empty")),
            Some(_) => Err(err(self.field(name), "must be a string")),
        }
    }

    fn required_string(&mut self, name: &'static str) -> Result<&'a str, ConfigError> {
        self.string(name)?.ok_or_else(|| err(self.field(name), "is required"))
    }

    fn integer(&mut self, name: &'static str, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(default);
        };
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(err(self.field(name), format!("must be a whole number from {min} to {max}"))),
        }
    }

    fn string_list(&mut self, name: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let field = self.field(name);
        string_list(&field, value).map(Some)
    }

    /// Refuses members nobody read: a misspelt field must not be silently ignored.
    fn finish(self) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !self.used.contains(k.as_str())) {
            None => Ok(()),
            // A member named "" is shown as `""`, so the refusal still names a field.
            Some(unknown) if unknown.is_empty() => Err(err(self.field("\"\""), "unknown field")),
            Some(unknown) => Err(err(self.field(unknown), "unknown field")),
        }
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "configuration"
    } else {
        path
    }
}

fn string_list(field: &str, value: &Value) -> Result<Vec<String>, ConfigError> {
    let Value::Array(items) = value else {
        return Err(err(field, "must be an array of strings"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(err(format!("{field}[{i}]"), "must be a non-empty string")),
        })
        .collect()
}

/// RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
fn valid_scope_token(scope: &str) -> bool {
    !scope.is_empty() && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

fn scope_map(field: &str, value: Option<&Value>) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = value else {
        return Err(err(field, "must be an object mapping names to lists of scopes"));
    };
    let mut out = BTreeMap::new();
    for (name, scopes) in map {
        let entry = format!("{field}.{name}");
        if name.is_empty() {
            return Err(err(field, "names must not be empty"));
        }
        let list = string_list(&entry, scopes)?;
        if let Some(bad) = list.iter().find(|s| !valid_scope_token(s)) {
            return Err(err(entry, format!("{bad:?} is not a valid scope (RFC 6749 §3.3)")));
        }
        out.insert(name.clone(), list);
    }
    Ok(out)
}

fn url(field: String, text: &str) -> Result<AbsoluteUrl, ConfigError> {
    AbsoluteUrl::parse(text).map_err(|e: UriError| err(field, format!("{text:?} is not usable: {e}")))
}

impl Config {
    /// Parses the plugin configuration (the JSON Envoy hands to `on_configure`).
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let root: Value = serde_json::from_slice(bytes)
            .map_err(|e| err("configuration", format!("is not valid JSON ({e})")))?;
        let mut top = Fields::of("", &root)?;

        let issuer = top.required_string("issuer")?.to_string();
        let audience = top.required_string("audience")?.to_string();

        let keys = match (top.get("jwks"), top.get("jwks_uri")) {
            (Some(_), Some(_)) => return Err(err("jwks_uri", "give either jwks or jwks_uri, not both")),
            (None, None) => return Err(err("jwks", "one of jwks (inline keys) or jwks_uri is required")),
            (Some(jwks), None) => {
                let set = KeySet::from_jwks_value(jwks).map_err(|e| err(format!("jwks{}", e.location), e.problem))?;
                KeySource::Inline(set)
            }
            (None, Some(uri)) => {
                let mut f = Fields::of("jwks_uri", uri)?;
                let cluster = f.required_string("cluster")?.to_string();
                let url_field = f.field("url");
                let url = url(url_field, f.required_string("url")?)?;
                let refresh_seconds = f.integer("refresh_seconds", 300, 10, 86_400)?;
                let timeout_ms = f.integer("timeout_ms", 5_000, 100, 60_000)?;
                f.finish()?;
                KeySource::Remote(JwksUri { cluster, url, refresh_seconds, timeout_ms })
            }
        };

        let binding = match top.string("binding")? {
            None => Binding::Dpop,
            Some(name) => Binding::parse(name).ok_or_else(|| {
                err("binding", format!("{name:?} is not one of dpop, mtls, dpop_or_mtls, bearer"))
            })?,
        };

        let public_url = url("public_url".into(), top.required_string("public_url")?)?;

        let dpop = match top.get("dpop") {
            None => DpopSettings::default(),
            Some(value) => {
                let mut f = Fields::of("dpop", value)?;
                let algorithms = match f.string_list("algorithms")? {
                    None => DpopSettings::default().algorithms,
                    Some(names) if names.is_empty() => {
                        return Err(err("dpop.algorithms", "must name at least one algorithm"))
                    }
                    Some(names) => {
                        let mut algs = Vec::new();
                        for (i, name) in names.iter().enumerate() {
                            let alg = Alg::parse(name).ok_or_else(|| {
                                err(format!("dpop.algorithms[{i}]"), format!("{name:?} is not an asymmetric JWS algorithm we verify"))
                            })?;
                            if !algs.contains(&alg) {
                                algs.push(alg);
                            }
                        }
                        algs
                    }
                };
                let max_age_seconds = f.integer("max_age_seconds", 60, 1, 3_600)?;
                let clock_skew_seconds = f.integer("clock_skew_seconds", 5, 0, 300)?;
                let replay_cache_entries =
                    u32::try_from(f.integer("replay_cache_entries", 100_000, 64, 10_000_000)?).unwrap_or(100_000);
                f.finish()?;
                DpopSettings { algorithms, max_age_seconds, clock_skew_seconds, replay_cache_entries }
            }
        };

        let policy = match top.get("policy") {
            None => Policy::default(),
            Some(value) => {
                let mut f = Fields::of("policy", value)?;
                let tools = scope_map("policy.tools", f.get("tools"))?;
                let methods = scope_map("policy.methods", f.get("methods"))?;
                let prompts = scope_map("policy.prompts", f.get("prompts"))?;
                let unlisted_tools = match f.string("unlisted_tools")? {
                    None | Some("deny") => Unlisted::Deny,
                    Some("allow") => Unlisted::Allow,
                    Some(other) => return Err(err("policy.unlisted_tools", format!("{other:?} is not deny or allow"))),
                };
                f.finish()?;
                Policy { tools, unlisted_tools, methods, prompts }
            }
        };

        let resource_metadata = match top.get("resource_metadata") {
            None => ResourceMetadata { authorization_servers: vec![issuer.clone()], scopes_supported: policy.all_scopes(), resource_name: None },
            Some(value) => {
                let mut f = Fields::of("resource_metadata", value)?;
                let authorization_servers = f.string_list("authorization_servers")?.unwrap_or_else(|| vec![issuer.clone()]);
                let scopes_supported = f.string_list("scopes_supported")?.unwrap_or_else(|| policy.all_scopes());
                let resource_name = f.string("resource_name")?.map(str::to_string);
                f.finish()?;
                ResourceMetadata { authorization_servers, scopes_supported, resource_name }
            }
        };

        let max_body_bytes = usize::try_from(top.integer(
            "max_body_bytes",
            DEFAULT_MAX_BODY_BYTES as u64,
            1,
            MAX_MAX_BODY_BYTES as u64,
        )?)
        .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let clock_skew_seconds = top.integer("clock_skew_seconds", 30, 0, 600)?;
        let token_cache_entries = usize::try_from(top.integer("token_cache_entries", 10_000, 1, 1_000_000)?).unwrap_or(10_000);
        let forward_token = match top.get("forward_token") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(err("forward_token", "must be true or false")),
        };

        let audit = match top.get("audit") {
            None => AuditSettings::default(),
            Some(value) => {
                let mut f = Fields::of("audit", value)?;
                let log = match f.string("log")? {
                    None | Some("all") => AuditLog::All,
                    Some("denied") => AuditLog::Denied,
                    Some("none") => AuditLog::None,
                    Some(other) => return Err(err("audit.log", format!("{other:?} is not all, denied or none"))),
                };
                let filter_state = match f.string("filter_state")? {
                    Some("fields") => AuditFilterState::Fields,
                    Some("record") => AuditFilterState::Record,
                    None | Some("none") => AuditFilterState::None,
                    Some(other) => {
                        return Err(err("audit.filter_state", format!("{other:?} is not fields, record or none")))
                    }
                };
                let log_flush_ms = f.integer("log_flush_ms", DEFAULT_AUDIT_LOG_FLUSH_MS, 0, MAX_AUDIT_LOG_FLUSH_MS)?;
                f.finish()?;
                AuditSettings { log, filter_state, log_flush_ms }
            }
        };

        top.finish()?;

        Ok(Config {
            issuer,
            audience,
            keys,
            binding,
            public_url,
            dpop,
            resource_metadata,
            max_body_bytes,
            clock_skew_seconds,
            token_cache_entries,
            forward_token,
            audit,
            policy,
        })
    }

    /// `<public_url origin>/.well-known/oauth-protected-resource<public_url path>` (RFC 9728 §3.1).
    pub fn resource_metadata_url(&self) -> String {
        format!("{}{}", self.public_url.origin(), self.resource_metadata_path())
    }

    /// The request path at which the filter serves the metadata document itself.
    pub fn resource_metadata_path(&self) -> String {
        let path = self.public_url.path();
        if path == "/" {
            "/.well-known/oauth-protected-resource".to_string()
        } else {
            format!("/.well-known/oauth-protected-resource{path}")
        }
    }
}

impl Default for DpopSettings {
    fn default() -> Self {
        DpopSettings {
            algorithms: vec![Alg::Es256, Alg::Ed25519],
            max_age_seconds: 60,
            clock_skew_seconds: 5,
            replay_cache_entries: 100_000,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::testkit::{TestIssuer, TestKey};
    use serde_json::json;

    fn base() -> Value {
        let issuer = TestIssuer::new(TestKey::es256());
        json!({
            "issuer": issuer.issuer,
            "audience": issuer.audience,
            "jwks": issuer.jwks(),
            "binding": "dpop",
            "public_url": "https://mcp.example.com/mcp",
            "policy": { "tools": { "get_forecast": ["weather:read"] } }
        })
    }

    fn load(v: &Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes())
    }

    fn refused_field(v: &Value) -> String {
        load(v).unwrap_err().field
    }

    #[test]
    fn the_example_configuration_loads_with_defaults() {
        let config = load(&base()).unwrap();
        assert_eq!(config.binding, Binding::Dpop);
        assert_eq!(config.dpop, DpopSettings::default());
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(config.policy.unlisted_tools, Unlisted::Deny);
        assert_eq!(config.audit, AuditSettings { log: AuditLog::All, filter_state: AuditFilterState::None, log_flush_ms: 1000 });
        assert_eq!(config.resource_metadata.scopes_supported, vec!["weather:read".to_string()]);
        assert_eq!(config.resource_metadata_url(), "https://mcp.example.com/.well-known/oauth-protected-resource/mcp");
    }

    #[test]
    fn required_fields_are_never_guessed() {
        for field in ["issuer", "audience", "public_url"] {
            let mut v = base();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(refused_field(&v), field);
        }
        let mut no_keys = base();
        no_keys.as_object_mut().unwrap().remove("jwks");
        assert_eq!(refused_field(&no_keys), "jwks");
    }

    #[test]
    fn audit_settings_are_read() {
        let mut v = base();
        v["audit"] = json!({"log": "denied", "filter_state": "record"});
        assert_eq!(
            load(&v).unwrap().audit,
            AuditSettings { log: AuditLog::Denied, filter_state: AuditFilterState::Record, log_flush_ms: 1000 }
        );
        v["audit"] = json!({"filter_state": "fields"});
        assert_eq!(load(&v).unwrap().audit.filter_state, AuditFilterState::Fields);
        v["audit"] = json!({"log": "none", "filter_state": "none", "log_flush_ms": 0});
        assert_eq!(load(&v).unwrap().audit, AuditSettings { log: AuditLog::None, filter_state: AuditFilterState::None, log_flush_ms: 0 });
        v["audit"] = json!({"log_flush_ms": 10_000});
        assert_eq!(load(&v).unwrap().audit.log_flush_ms, 10_000);
        v["audit"] = json!({});
        assert_eq!(load(&v).unwrap().audit, AuditSettings::default());
    }

    #[test]
    fn jwks_and_jwks_uri_are_exclusive() {
        let mut v = base();
        v["jwks_uri"] = json!({"cluster": "authz", "url": "https://auth.example.com/jwks"});
        assert_eq!(refused_field(&v), "jwks_uri");
        v.as_object_mut().unwrap().remove("jwks");
        let config = load(&v).unwrap();
        let KeySource::Remote(uri) = config.keys else { panic!("remote expected") };
        assert_eq!(uri.cluster, "authz");
        assert_eq!(uri.refresh_seconds, 300);
        assert_eq!(uri.url.authority(), "auth.example.com");
        assert_eq!(uri.url.path(), "/jwks");
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let cases = [
            (json!({"binding": "none"}), "binding"),
            (json!({"binding": ""}), "binding"),
            (json!({"public_url": "mcp.example.com/mcp"}), "public_url"),
            (json!({"public_url": "https://mcp.example.com/mcp?x=1"}), "public_url"),
            (json!({"dpop": {"algorithms": ["HS256"]}}), "dpop.algorithms[0]"),
            (json!({"dpop": {"algorithms": ["none"]}}), "dpop.algorithms[0]"),
            (json!({"dpop": {"algorithms": []}}), "dpop.algorithms"),
            (json!({"dpop": {"max_age_seconds": 0}}), "dpop.max_age_seconds"),
            (json!({"dpop": {"max_age_seconds": "60"}}), "dpop.max_age_seconds"),
            (json!({"dpop": {"replay_cache_entries": -1}}), "dpop.replay_cache_entries"),
            (json!({"dpop": {"max_age": 60}}), "dpop.max_age"),
            (json!({"max_body_bytes": 0}), "max_body_bytes"),
            (json!({"policy": {"tools": {"x": "weather:read"}}}), "policy.tools.x"),
            (json!({"policy": {"tools": {"x": ["has space"]}}}), "policy.tools.x"),
            (json!({"policy": {"unlisted_tools": "maybe"}}), "policy.unlisted_tools"),
            (json!({"policy": {"tool": {}}}), "policy.tool"),
            (json!({"polcy": {}}), "polcy"),
            // Found by the `config` fuzz target: an unknown member named "" was refused with an
            // empty field name.
            (json!({"": true}), "\"\""),
            (json!({"dpop": {"": 1}}), "dpop.\"\""),
            (json!({"jwks": {"keys": []}}), "jwks.keys"),
            (json!({"issuer": 7}), "issuer"),
            (json!({"forward_token": "yes"}), "forward_token"),
            (json!({"audit": "all"}), "audit"),
            (json!({"audit": {"log": "some"}}), "audit.log"),
            (json!({"audit": {"filter_state": "json"}}), "audit.filter_state"),
            (json!({"audit": {"log_flush_ms": 10_001}}), "audit.log_flush_ms"),
            (json!({"audit": {"log_flush_ms": -1}}), "audit.log_flush_ms"),
            (json!({"audit": {"log_flush_ms": "1s"}}), "audit.log_flush_ms"),
            (json!({"audit": {"logs": "all"}}), "audit.logs"),
        ];
        for (patch, field) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            assert_eq!(refused_field(&v), field, "patch {patch}");
        }
    }

    #[test]
    fn the_message_says_what_is_wrong() {
        let mut v = base();
        v["dpop"] = json!({"max_age_seconds": 0});
        let e = load(&v).unwrap_err();
        assert_eq!(e.to_string(), "invalid plugin configuration: dpop.max_age_seconds: must be a whole number from 1 to 3600");
        assert!(Config::from_json(b"{not json").unwrap_err().problem.starts_with("is not valid JSON"));
    }

    #[test]
    fn bearer_binding_only_when_written() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("binding");
        assert_eq!(load(&v).unwrap().binding, Binding::Dpop);
        v["binding"] = json!("bearer");
        assert_eq!(load(&v).unwrap().binding, Binding::Bearer);
    }

    #[test]
    fn ed25519_is_accepted_under_both_names() {
        let mut v = base();
        v["dpop"] = json!({"algorithms": ["Ed25519", "EdDSA", "ES256"]});
        assert_eq!(load(&v).unwrap().dpop.algorithms, vec![Alg::Ed25519, Alg::Es256]);
    }

    #[test]
    fn metadata_path_for_a_root_url() {
        let mut v = base();
        v["public_url"] = json!("https://mcp.example.com");
        let config = load(&v).unwrap();
        assert_eq!(config.resource_metadata_path(), "/.well-known/oauth-protected-resource");
    }
}
