//! The Istio manifests in `envoy/istio/`.
//!
//! - Every manifest is valid against its CRD's `openAPIV3Schema` (Istio's own CRDs, committed in
//!   `envoy/istio/crds/`), checked by a small validator for the OpenAPI v3 subset Kubernetes uses
//!   in structural schemas (below), with unknown fields refused where the schema is closed and
//!   allowed under `x-kubernetes-preserve-unknown-fields`; broken copies are refused side by side.
//! - The plugin configuration both forms carry (WasmPlugin `pluginConfig`, EnvoyFilter
//!   `configuration`) loads in the built `.wasm` through the harness, fetches its keys through the
//!   cluster the ServiceEntry creates, and judges requests.
//! - The EnvoyFilter's Wasm `typed_config` is accepted by Envoy 1.40 (`--mode validate`), fails
//!   closed, and sets `allow_on_headers_stop_iteration`.
//! - In a running Envoy, the PluginConfig Istio builds from the WasmPlugin (no
//!   `allow_on_headers_stop_iteration`) cannot judge request bodies, while the EnvoyFilter's can.
//!
//! Why a validator here rather than the `jsonschema` crate: a CRD schema is not JSON Schema as
//! such (`nullable`, `x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string`,
//! list-map keys, CEL rules, and "unknown fields are pruned/refused" instead of JSON Schema's
//! "allowed"), so the crate would still need the same Kubernetes-specific code around it, plus
//! its dependency tree. The subset below is what the three CRDs use; a schema keyword or CEL rule
//! it does not know fails the test instead of passing silently.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mcp_guard::testkit::{ProofSpec, TestKey};
use mcp_guard_demo::envoy::{self, Envoy, Ready};
use mcp_guard_demo::issuer::{Issuer, TokenRequest};
use mcp_guard_harness::{HarnessError, HttpCallReply, Outcome};
use mcp_guard_tests::{load_filter, send_wasm, tools_call, World};
use serde_json::{json, Value};

/// The cluster Istio generates for the authorization server's ServiceEntry.
const JWKS_CLUSTER: &str = "outbound|443||auth.example.com";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// Kinds in envoy/istio/ whose CRDs are not committed here (checked by hand below instead).
const NO_CRD_HERE: &[&str] = &["ServiceEntry", "DestinationRule"];

// ---------------------------------------------------------------------------------------------
// Files

fn istio_dir() -> PathBuf {
    envoy::workspace_root().join("envoy/istio")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of a YAML stream (`---` separated), as JSON values; empty documents skipped.
fn yaml_documents(text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let doc: Value = serde_norway::from_str(current).unwrap_or_else(|e| panic!("YAML: {e}\n{current}"));
        if !doc.is_null() {
            docs.push(doc);
        }
        current.clear();
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

/// Every manifest under envoy/istio/ (not the CRDs), with its file name.
fn manifest_files() -> Vec<(String, Vec<Value>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(istio_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), yaml_documents(&read(&p))))
        .collect()
}

fn the_one(kind: &str, file: &str) -> Value {
    let docs = yaml_documents(&read(&istio_dir().join(file)));
    let mut found: Vec<Value> = docs.into_iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{file}: expected one {kind}");
    found.remove(0)
}

fn wasmplugin() -> Value {
    the_one("WasmPlugin", "wasmplugin.yaml")
}

fn envoyfilter() -> Value {
    the_one("EnvoyFilter", "envoyfilter.yaml")
}

/// The HTTP filter the EnvoyFilter inserts (`name` + `typed_config`).
fn wasm_http_filter(envoyfilter: &Value) -> Value {
    let patches = envoyfilter["spec"]["configPatches"].as_array().expect("configPatches");
    assert_eq!(patches.len(), 1, "one patch expected");
    patches[0]["patch"]["value"].clone()
}

/// The gateway variant, commented out at the end of envoyfilter.yaml: uncommented, with the
/// sidecar patch's `value` in place of its `{}` placeholder.
fn gateway_variant() -> Value {
    let text = read(&istio_dir().join("envoyfilter.yaml"));
    let begin = "# BEGIN gateway variant\n";
    let start = text.find(begin).expect("envoyfilter.yaml: no '# BEGIN gateway variant'") + begin.len();
    let end = text.find("# END gateway variant").expect("envoyfilter.yaml: no '# END gateway variant'");
    let block: Vec<&str> = text[start..end]
        .lines()
        .map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')).unwrap_or_else(|| panic!("not commented: {l:?}")))
        .collect();
    let mut doc = yaml_documents(&block.join("\n")).remove(0);
    let value = &mut doc["spec"]["configPatches"][0]["patch"]["value"];
    assert_eq!(*value, json!({}), "the gateway variant's value placeholder changed");
    *value = wasm_http_filter(&envoyfilter());
    doc
}

// ---------------------------------------------------------------------------------------------
// CRDs and the validator

struct Crd {
    group: String,
    kind: String,
    /// (version, served, openAPIV3Schema)
    versions: Vec<(String, bool, Value)>,
}

fn crds() -> Vec<Crd> {
    let dir = istio_dir().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = read(&file);
        assert!(text.starts_with("# Istio's CustomResourceDefinition"), "{}: header missing", file.display());
        for doc in yaml_documents(&text) {
            assert_eq!(doc["kind"], "CustomResourceDefinition", "{}", file.display());
            let spec = &doc["spec"];
            let versions = spec["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (v["name"].as_str().unwrap().to_string(), v["served"] == true, v["schema"]["openAPIV3Schema"].clone())
                })
                .collect();
            out.push(Crd {
                group: spec["group"].as_str().unwrap().to_string(),
                kind: spec["names"]["kind"].as_str().unwrap().to_string(),
                versions,
            });
        }
    }
    out
}

fn schema_of<'c>(crds: &'c [Crd], kind: &str) -> &'c Value {
    let crd = crds.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("no CRD for {kind}"));
    &crd.versions[0].2
}

/// The schema keywords this validator implements; any other one fails validation.
const KEYWORDS: &[&str] = &[
    "type",
    "description",
    "properties",
    "required",
    "additionalProperties",
    "maxProperties",
    "minProperties",
    "items",
    "maxItems",
    "minItems",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "format",
    "nullable",
    "anyOf",
    "oneOf",
    "allOf",
    "not",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
];

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name) == Some(&Value::Bool(true))
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64()
}

/// Validates `value` against a structural schema as the Kubernetes API server does with
/// strict field validation (`kubectl apply --validate=strict`): types, enums, patterns, bounds,
/// required fields, unknown fields refused unless the schema preserves them, list-map keys
/// unique, and the CEL rules (`x-kubernetes-validations`) through hand-written equivalents.
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(keywords) = schema.as_object() else {
        errors.push(format!("{path}: schema is not an object"));
        return;
    };
    if let Some(unknown) = keywords.keys().find(|k| !KEYWORDS.contains(&k.as_str())) {
        errors.push(format!("{path}: schema keyword {unknown:?} is not implemented by this validator"));
        return;
    }
    if value.is_null() {
        if !flag(schema, "nullable") {
            errors.push(format!("{path}: must not be null"));
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(value.is_string() || is_integer(value)) {
            errors.push(format!("{path}: must be an integer or a string"));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => is_integer(value),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            other => {
                errors.push(format!("{path}: schema type {other:?} is not implemented"));
                return;
            }
        };
        if !ok {
            errors.push(format!("{path}: must be of type {t}, is {value}"));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {}", Value::Array(allowed.clone())));
        }
    }
    if let Some(text) = value.as_str() {
        let chars = text.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if chars < min {
                errors.push(format!("{path}: shorter than {min} characters"));
            }
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if chars > max {
                errors.push(format!("{path}: longer than {max} characters"));
            }
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            match regex_lite::Regex::new(pattern) {
                Ok(re) if re.is_match(text) => {}
                Ok(_) => errors.push(format!("{path}: {text:?} does not match {pattern:?}")),
                Err(e) => errors.push(format!("{path}: schema pattern {pattern:?}: {e}")),
            }
        }
    }
    if value.is_number() {
        let n = value.as_f64().unwrap_or(f64::NAN);
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if n < min {
                errors.push(format!("{path}: {value} is below {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if n > max {
                errors.push(format!("{path}: {value} is above {max}"));
            }
        }
        if schema.get("format").and_then(Value::as_str) == Some("int32") && value.as_i64().and_then(|i| i32::try_from(i).ok()).is_none() {
            errors.push(format!("{path}: {value} is not an int32"));
        }
    }
    if let Some(map) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
        let closed = schema.get("type").and_then(Value::as_str) == Some("object");
        for (key, child) in map {
            let child_path = format!("{path}.{key}");
            if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                validate(child_schema, child, &child_path, errors);
            } else if let Some(child_schema) = additional.filter(|a| a.is_object()) {
                validate(child_schema, child, &child_path, errors);
            } else if preserve || additional == Some(&Value::Bool(true)) {
                // kept as written, not checked (x-kubernetes-preserve-unknown-fields)
            } else if closed {
                errors.push(format!("{child_path}: unknown field"));
            }
        }
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            if !map.contains_key(name) {
                errors.push(format!("{path}: required field {name:?} is missing"));
            }
        }
        if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
            if map.len() as u64 > max {
                errors.push(format!("{path}: more than {max} entries"));
            }
        }
        if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
            if (map.len() as u64) < min {
                errors.push(format!("{path}: fewer than {min} entries"));
            }
        }
    }
    if let Some(items) = value.as_array() {
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
            if items.len() as u64 > max {
                errors.push(format!("{path}: more than {max} items"));
            }
        }
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
            if (items.len() as u64) < min {
                errors.push(format!("{path}: fewer than {min} items"));
            }
        }
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .map(|k| k.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut seen = BTreeSet::new();
                for item in items {
                    let key: Vec<String> = keys.iter().map(|k| item[*k].to_string()).collect();
                    if !seen.insert(key.clone()) {
                        errors.push(format!("{path}: duplicate entries for key {keys:?} = {key:?}"));
                    }
                }
            }
            Some("set") => {
                let mut seen = BTreeSet::new();
                for item in items {
                    if !seen.insert(item.to_string()) {
                        errors.push(format!("{path}: duplicate item {item}"));
                    }
                }
            }
            Some("atomic") | None => {}
            Some(other) => errors.push(format!("{path}: list type {other:?} is not implemented")),
        }
    }
    let passes = |branch: &Value| {
        let mut branch_errors = Vec::new();
        validate(branch, value, path, &mut branch_errors);
        branch_errors.is_empty()
    };
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = branches.iter().filter(|b| passes(b)).count();
        if matching != 1 {
            errors.push(format!("{path}: must match exactly one oneOf branch, matches {matching}"));
        }
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array) {
        if !branches.iter().any(passes) {
            errors.push(format!("{path}: matches no anyOf branch"));
        }
    }
    for branch in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate(branch, value, path, errors);
    }
    if let Some(branch) = schema.get("not") {
        if passes(branch) {
            errors.push(format!("{path}: must not match {branch}"));
        }
    }
    for rule in schema.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
        let text = rule["rule"].as_str().unwrap_or_default();
        match cel(text, value) {
            Ok(true) => {}
            Ok(false) => errors.push(format!("{path}: {}", rule["message"].as_str().unwrap_or(text))),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
}

/// The CEL rules of Istio's CRDs, each by a hand-written equivalent, keyed by the rule's exact
/// text (whitespace collapsed). A rule not listed here is an error, never a pass.
fn cel(rule: &str, value: &Value) -> Result<bool, String> {
    let rule = rule.split_whitespace().collect::<Vec<_>>().join(" ");
    let has = |field: &str| value.get(field).is_some();
    let string = || value.as_str().ok_or_else(|| format!("CEL rule {rule:?} applied to a non-string"));
    let keys = || value.as_object().ok_or_else(|| format!("CEL rule {rule:?} applied to a non-object"));
    let count = |fields: &[&str]| fields.iter().filter(|f| has(f)).count();
    Ok(match rule.as_str() {
        r#"!self.contains("*")"# => !string()?.contains('*'),
        r#"self.all(key, !key.contains("*"))"# => keys()?.keys().all(|k| !k.contains('*')),
        "self.all(key, key.size() != 0)" => keys()?.keys().all(|k| !k.is_empty()),
        "self.size() == 0" => string()?.is_empty(),
        "0 < self && self <= 65535" => value.as_u64().is_some_and(|n| (1..=65_535).contains(&n)),
        "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            count(&["selector", "targetRef", "targetRefs"]) <= 1
        }
        "(has(self.selector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => count(&["selector", "targetRefs"]) <= 1,
        "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            count(&["workloadSelector", "targetRefs"]) <= 1
        }
        r#"(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)"# => {
            value.get("valueFrom").and_then(Value::as_str) != Some("HOST") || !has("value")
        }
        r#"has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)"# => {
            if value.get("context").and_then(Value::as_str) == Some("WAYPOINT") {
                has("waypoint")
            } else {
                !has("waypoint")
            }
        }
        "has(self.wasm) != has(self.lua)" => has("wasm") != has("lua"),
        r#"isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])"#
        | r#"isURL(self) ? (url(self).getScheme() in ["", "http", "https", "file", "oci"]) : (isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "file", "oci"])"# => {
            url_scheme_allowed(string()?)
        }
        _ => return Err(format!("no equivalent here for the CEL rule {rule:?}")),
    })
}

/// `isURL`/`url().getScheme()` as the WasmPlugin rule uses them: a `scheme://...` URL must use
/// http, https, oci or file; anything else is read as `http://` + the text (an OCI reference
/// without a scheme), which must then be a URL (no spaces, not empty).
fn url_scheme_allowed(text: &str) -> bool {
    let looks_like_scheme = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    };
    match text.split_once("://") {
        Some((scheme, rest)) if looks_like_scheme(scheme) => {
            ["http", "https", "oci", "file"].contains(&scheme.to_ascii_lowercase().as_str()) && !rest.is_empty()
        }
        _ => !text.is_empty() && !text.contains(char::is_whitespace),
    }
}

/// RFC 1123 subdomain (object names) / label (namespaces), as Kubernetes checks metadata.
fn dns_name(text: &str, max: usize, dots: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !text.is_empty() && text.len() <= max && text.chars().all(ok_char) && edge(text.chars().next()) && edge(text.chars().last())
}

/// Validates one manifest against its CRD: apiVersion and kind, metadata, then the rest against
/// the served version's openAPIV3Schema. Errors, empty when valid.
fn validate_manifest(crds: &[Crd], doc: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let Some((group, version)) = api_version.split_once('/') else {
        return vec![format!("apiVersion {api_version:?} is not group/version")];
    };
    let Some(crd) = crds.iter().find(|c| c.group == group && c.kind == kind) else {
        return vec![format!("no CRD for kind {kind:?} in group {group:?}")];
    };
    let Some((_, _, schema)) = crd.versions.iter().find(|(name, served, _)| name == version && *served) else {
        return vec![format!("{kind}: version {version:?} is not served by the CRD")];
    };
    match doc["metadata"].as_object() {
        None => errors.push("metadata: required".into()),
        Some(meta) => {
            for (key, v) in meta {
                match key.as_str() {
                    "name" if v.as_str().is_some_and(|n| dns_name(n, 253, true)) => {}
                    "namespace" if v.as_str().is_some_and(|n| dns_name(n, 63, false)) => {}
                    "labels" | "annotations" if v.as_object().is_some_and(|m| m.values().all(Value::is_string)) => {}
                    _ => errors.push(format!("metadata.{key}: not a valid or not an expected field ({v})")),
                }
            }
            if !meta.contains_key("name") {
                errors.push("metadata.name: required".into());
            }
        }
    }
    let mut body = doc.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        map.remove("metadata");
    }
    validate(schema, &body, kind, &mut errors);
    errors
}

// ---------------------------------------------------------------------------------------------
// Schema validation

#[test]
fn every_manifest_is_valid_against_its_crd() {
    let crds = crds();
    let kinds: BTreeSet<&str> = crds.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["EnvoyFilter", "TrafficExtension", "WasmPlugin"]));
    let mut checked = Vec::new();
    let mut not_checked = Vec::new();
    let files = manifest_files();
    assert!(files.iter().any(|(f, _)| f == "wasmplugin.yaml") && files.iter().any(|(f, _)| f == "envoyfilter.yaml"));
    for (file, docs) in files {
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_string();
            if NO_CRD_HERE.contains(&kind.as_str()) {
                not_checked.push(kind);
                continue;
            }
            let errors = validate_manifest(&crds, &doc);
            assert!(errors.is_empty(), "{file} ({kind}) is not valid:\n{}", errors.join("\n"));
            checked.push(format!("{file}:{kind}"));
        }
    }
    let errors = validate_manifest(&crds, &gateway_variant());
    assert!(errors.is_empty(), "the gateway variant in envoyfilter.yaml is not valid:\n{}", errors.join("\n"));
    checked.push("envoyfilter.yaml:EnvoyFilter (gateway variant)".into());
    assert_eq!(
        checked,
        ["envoyfilter.yaml:EnvoyFilter", "wasmplugin.yaml:WasmPlugin", "envoyfilter.yaml:EnvoyFilter (gateway variant)"]
    );
    assert_eq!(not_checked, ["ServiceEntry", "DestinationRule", "ServiceEntry", "DestinationRule"]);
}

/// Applies `edit` to a copy of `doc` and returns the validator's errors for it.
fn errors_after(crds: &[Crd], doc: &Value, edit: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut copy = doc.clone();
    edit(&mut copy);
    validate_manifest(crds, &copy)
}

fn rename(object: &mut Value, from: &str, to: &str) {
    let map = object.as_object_mut().unwrap();
    let value = map.remove(from).unwrap_or_else(|| panic!("no field {from}"));
    map.insert(to.to_string(), value);
}

#[test]
fn the_validator_refuses_broken_manifests_side_by_side() {
    let crds = crds();
    let wp = wasmplugin();
    let ef = envoyfilter();
    assert!(validate_manifest(&crds, &wp).is_empty());
    assert!(validate_manifest(&crds, &ef).is_empty());

    type Edit = Box<dyn FnOnce(&mut Value)>;
    let refused: Vec<(&str, &Value, Edit, &str)> = vec![
        ("misspelt field", &wp, Box::new(|d| rename(&mut d["spec"], "failStrategy", "failStratgy")), "spec.failStratgy: unknown field"),
        ("wrong enum value", &wp, Box::new(|d| d["spec"]["phase"] = json!("AUTHENTICATION")), "spec.phase: \"AUTHENTICATION\" is not one of"),
        ("fail strategy spelt as Envoy's", &wp, Box::new(|d| d["spec"]["failStrategy"] = json!("FAIL_CLOSED")), "spec.failStrategy"),
        ("sha256 not hex", &wp, Box::new(|d| d["spec"]["sha256"] = json!("ABCDEF")), "spec.sha256"),
        ("port as a string", &wp, Box::new(|d| d["spec"]["match"][0]["ports"][0]["number"] = json!("8080")), "must be of type integer"),
        ("port out of range", &wp, Box::new(|d| d["spec"]["match"][0]["ports"][0]["number"] = json!(70000)), "is above 65535"),
        ("the same port twice", &wp, Box::new(|d| d["spec"]["match"][0]["ports"] = json!([{"number": 8080}, {"number": 8080}])), "duplicate entries"),
        ("url required", &wp, Box::new(|d| { d["spec"].as_object_mut().unwrap().remove("url"); }), "required field \"url\""),
        ("url scheme", &wp, Box::new(|d| d["spec"]["url"] = json!("ftp://wasm.example.com/mcp_guard.wasm")), "url must have schema one of"),
        ("selector and targetRefs", &wp, Box::new(|d| d["spec"]["targetRefs"] = json!([{"kind": "Service", "group": "", "name": "weather-mcp"}])), "only one of targetRefs or selector"),
        ("wildcard label", &wp, Box::new(|d| d["spec"]["selector"]["matchLabels"]["app"] = json!("weather-*")), "wildcard not allowed"),
        ("pluginConfig not an object", &wp, Box::new(|d| d["spec"]["pluginConfig"] = json!("{}")), "spec.pluginConfig: must be of type object"),
        ("unknown top-level field", &wp, Box::new(|d| d["specs"] = json!({})), "specs: unknown field"),
        ("bad metadata name", &wp, Box::new(|d| d["metadata"]["name"] = json!("MCP_Guard")), "metadata.name"),
        ("wrong apiVersion", &wp, Box::new(|d| d["apiVersion"] = json!("extensions.istio.io/v1")), "not served"),
        ("misspelt field (EnvoyFilter)", &ef, Box::new(|d| rename(&mut d["spec"]["configPatches"][0]["match"]["listener"], "portNumber", "portNumbr")), "listener.portNumbr: unknown field"),
        ("wrong context", &ef, Box::new(|d| d["spec"]["configPatches"][0]["match"]["context"] = json!("SIDECAR_INBOUD")), "context: \"SIDECAR_INBOUD\" is not one of"),
        ("wrong operation", &ef, Box::new(|d| d["spec"]["configPatches"][0]["patch"]["operation"] = json!("INSERT_BEFOR")), "operation"),
        ("wrong applyTo", &ef, Box::new(|d| d["spec"]["configPatches"][0]["applyTo"] = json!("HTTP_FILTERS")), "applyTo"),
        ("two match targets (oneOf)", &ef, Box::new(|d| d["spec"]["configPatches"][0]["match"]["cluster"] = json!({"name": "x"})), "exactly one oneOf branch"),
        ("waypoint outside WAYPOINT", &ef, Box::new(|d| d["spec"]["configPatches"][0]["match"]["waypoint"] = json!({"portNumber": 8080})), "only support waypointMatch"),
        ("workloadSelector and targetRefs", &ef, Box::new(|d| d["spec"]["targetRefs"] = json!([{"kind": "Service", "name": "weather-mcp"}])), "only one of targetRefs or workloadSelector"),
        ("patch value not an object", &ef, Box::new(|d| d["spec"]["configPatches"][0]["patch"]["value"] = json!([])), "must be of type object"),
    ];
    for (what, doc, edit, expected) in refused {
        let errors = errors_after(&crds, doc, edit);
        assert!(errors.iter().any(|e| e.contains(expected)), "{what}: expected an error containing {expected:?}, got {errors:?}");
    }

    // x-kubernetes-preserve-unknown-fields: whatever the plugin or Envoy reads is not the
    // schema's business (the harness and Envoy check those parts below).
    let accepted: Vec<(&str, &Value, Edit)> = vec![
        ("unknown field inside pluginConfig", &wp, Box::new(|d| d["spec"]["pluginConfig"]["anything"] = json!({"at": ["all"]}))),
        ("unknown field inside patch.value", &ef, Box::new(|d| d["spec"]["configPatches"][0]["patch"]["value"]["anything"] = json!(1))),
        ("targetRefs instead of selector", &wp, Box::new(|d| {
            d["spec"].as_object_mut().unwrap().remove("selector");
            d["spec"]["targetRefs"] = json!([{"kind": "Service", "group": "", "name": "weather-mcp"}]);
        })),
        ("an OCI url without scheme", &wp, Box::new(|d| d["spec"]["url"] = json!("registry.example.com:5000/mcp/mcp-guard:0.1.0"))),
    ];
    for (what, doc, edit) in accepted {
        let errors = errors_after(&crds, doc, edit);
        assert!(errors.is_empty(), "{what}: refused: {errors:?}");
    }
}

/// Names under any `properties` of a schema, recursively.
fn property_names(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            map.values().for_each(|v| property_names(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| property_names(v, out)),
        _ => {}
    }
}

#[test]
fn neither_wasmplugin_nor_trafficextension_can_set_stop_iteration() {
    // The reason for shipping the EnvoyFilter form. When Istio adds such a field, this fails:
    // then set it in wasmplugin.yaml and change docs/istio.md.
    let crds = crds();
    for kind in ["WasmPlugin", "TrafficExtension"] {
        let mut names = BTreeSet::new();
        property_names(schema_of(&crds, kind), &mut names);
        assert!(names.contains("pluginConfig") || names.contains("wasm"), "{kind}: unexpected schema");
        let normalised: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase().replace('_', "")).collect();
        let found: Vec<&String> = normalised.iter().filter(|n| n.contains("stopiteration") || n.contains("allowonheaders")).collect();
        assert!(found.is_empty(), "{kind} now has {found:?}: update wasmplugin.yaml and docs/istio.md");
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin configuration in the filter

/// What Istio hands the filter for a WasmPlugin's `pluginConfig`: the object goes through a
/// google.protobuf.Struct (every number becomes a double) and is printed as JSON by protojson,
/// which writes whole doubles below 1e21 without a fraction.
fn through_protobuf_struct(value: &Value) -> Value {
    match value {
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            if f.fract() == 0.0 && f.abs() < 1e21 && f.abs() <= (1u64 << 53) as f64 {
                json!(f as i64)
            } else {
                json!(f)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(through_protobuf_struct).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), through_protobuf_struct(v))).collect()),
        other => other.clone(),
    }
}

fn wasmplugin_config_json() -> String {
    let config = &wasmplugin()["spec"]["pluginConfig"];
    assert!(config.is_object(), "wasmplugin.yaml: pluginConfig missing");
    through_protobuf_struct(config).to_string()
}

fn envoyfilter_config_json() -> String {
    let configuration = &wasm_http_filter(&envoyfilter())["typed_config"]["config"]["configuration"];
    assert_eq!(configuration["@type"], STRING_VALUE_TYPE);
    configuration["value"].as_str().expect("configuration.value: a JSON string").to_string()
}

/// `outbound|<port>||<host>`, the cluster Istio generates for each port of a ServiceEntry.
fn service_entry_clusters() -> Vec<String> {
    let docs = yaml_documents(&read(&istio_dir().join("serviceentry.yaml")));
    let mut clusters = Vec::new();
    for se in docs.iter().filter(|d| d["kind"] == "ServiceEntry") {
        for host in se["spec"]["hosts"].as_array().unwrap() {
            for port in se["spec"]["ports"].as_array().unwrap() {
                clusters.push(format!("outbound|{}||{}", port["number"], host.as_str().unwrap()));
            }
        }
    }
    clusters
}

#[test]
fn both_forms_carry_the_same_configuration_naming_the_service_entry_clusters() {
    let from_wasmplugin: Value = serde_json::from_str(&wasmplugin_config_json()).unwrap();
    let from_envoyfilter: Value = serde_json::from_str(&envoyfilter_config_json()).unwrap();
    assert_eq!(from_wasmplugin, from_envoyfilter, "wasmplugin.yaml and envoyfilter.yaml carry different configurations");
    // Through the Struct, whole numbers stay whole (the filter refuses 300.0 for an integer).
    assert_eq!(from_wasmplugin["max_body_bytes"], json!(1_048_576));

    let clusters = service_entry_clusters();
    assert_eq!(from_wasmplugin["jwks_uri"]["cluster"], JWKS_CLUSTER);
    assert!(clusters.iter().any(|c| c == JWKS_CLUSTER), "serviceentry.yaml makes {clusters:?}, not {JWKS_CLUSTER}");
    let jwks_url = from_wasmplugin["jwks_uri"]["url"].as_str().unwrap();
    assert!(jwks_url.starts_with("https://auth.example.com/"), "{jwks_url}");
    let code = &wasm_http_filter(&envoyfilter())["typed_config"]["config"]["vm_config"]["code"]["remote"]["http_uri"];
    let module_cluster = code["cluster"].as_str().unwrap();
    assert!(clusters.iter().any(|c| c == module_cluster), "serviceentry.yaml makes {clusters:?}, not {module_cluster}");
    let module_host = module_cluster.rsplit("||").next().unwrap();
    assert!(code["uri"].as_str().unwrap().starts_with(&format!("https://{module_host}/")));

    // Every DestinationRule originates TLS to its own host, on the ServiceEntry's port, only for
    // the MCP server's pods, and stays in the namespace.
    let docs = yaml_documents(&read(&istio_dir().join("serviceentry.yaml")));
    let rules: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "DestinationRule").collect();
    let entries: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ServiceEntry").collect();
    assert_eq!((rules.len(), entries.len()), (2, 2));
    for (entry, rule) in entries.iter().zip(&rules) {
        let host = entry["spec"]["hosts"][0].as_str().unwrap();
        assert_eq!(rule["spec"]["host"], host);
        assert_eq!(entry["spec"]["exportTo"], json!(["."]));
        assert_eq!(rule["spec"]["exportTo"], json!(["."]));
        assert_eq!(rule["spec"]["workloadSelector"]["matchLabels"], wasmplugin()["spec"]["selector"]["matchLabels"]);
        let port = &rule["spec"]["trafficPolicy"]["portLevelSettings"][0];
        assert_eq!(port["port"]["number"], entry["spec"]["ports"][0]["number"]);
        assert_eq!(port["tls"]["mode"], "SIMPLE");
        assert_eq!(port["tls"]["sni"], host);
    }
}

/// Loads `config` into the built filter, answers its JWKS fetch with `world`'s issuer keys, and
/// returns the harness ready for requests.
fn configured_filter(world: &World, config: &str, origin: &str) -> mcp_guard_harness::Harness {
    let mut h = load_filter();
    h.add_cluster(JWKS_CLUSTER); // the only cluster the sidecar has for it
    let jwks = world.issuer.jwks().to_string();
    h.on_http_call(move |_| HttpCallReply::json(jwks.clone()));
    h.configure(config).unwrap_or_else(|e| panic!("{origin}: the filter refused its configuration: {e}"));
    assert!(h.log_text().contains("mcp-guard: configured for"), "{origin}: {}", h.log_text());
    let calls = h.http_calls();
    assert_eq!(calls.len(), 1, "{origin}: one JWKS fetch expected");
    assert_eq!(calls[0].cluster, JWKS_CLUSTER);
    assert_eq!(calls[0].method().as_deref(), Some("GET"));
    assert_eq!(calls[0].authority().as_deref(), Some("auth.example.com"));
    assert_eq!(calls[0].path().as_deref(), Some("/jwks"));
    h
}

#[test]
fn the_configuration_of_both_forms_loads_in_the_filter_and_judges_calls() {
    for (origin, config) in [("wasmplugin.yaml", wasmplugin_config_json()), ("envoyfilter.yaml", envoyfilter_config_json())] {
        let world = World::new(); // fresh keys; its issuer is https://auth.example.com
        let mut h = configured_filter(&world, &config, origin);
        let allowed = send_wasm(&mut h, &world.call("get_forecast", "weather:read"));
        assert!(matches!(allowed, Outcome::Forwarded(_)), "{origin}: get_forecast with weather:read: {allowed}");
        let refused = send_wasm(&mut h, &world.call("post_alert", "weather:read"));
        assert_eq!(refused.status(), Some(403), "{origin}: post_alert with weather:read: {refused}");
        let unlisted = send_wasm(&mut h, &world.call("not_in_the_policy", "weather:read"));
        assert_eq!(unlisted.status(), Some(403), "{origin}: an unlisted tool: {unlisted}");

        // Side by side: the same configuration with a misspelt member is refused at load.
        let mut broken: Value = serde_json::from_str(&config).unwrap();
        rename(&mut broken, "policy", "polcy");
        let mut h = load_filter();
        h.add_cluster(JWKS_CLUSTER);
        match h.configure(&broken.to_string()) {
            Err(HarnessError::ConfigureRejected { logs }) => {
                let text = format!("{logs:?}");
                assert!(text.contains("invalid plugin configuration: polcy"), "{origin}: {text}");
            }
            other => panic!("{origin}: a misspelt member was accepted: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The EnvoyFilter's Envoy part

#[test]
fn the_envoyfilter_inserts_a_fail_closed_wasm_filter_before_the_router_with_stop_iteration() {
    let ef = envoyfilter();
    let patch = &ef["spec"]["configPatches"][0];
    assert_eq!(patch["applyTo"], "HTTP_FILTER");
    assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
    assert_eq!(patch["match"]["listener"]["portNumber"], wasmplugin()["spec"]["match"][0]["ports"][0]["number"]);
    assert_eq!(patch["match"]["listener"]["filterChain"]["filter"]["name"], "envoy.filters.network.http_connection_manager");
    assert_eq!(patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"], "envoy.filters.http.router");
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(ef["spec"]["workloadSelector"]["labels"], wasmplugin()["spec"]["selector"]["matchLabels"]);
    let gateway = gateway_variant();
    assert_eq!(gateway["spec"]["configPatches"][0]["match"]["context"], "GATEWAY");

    let filter = wasm_http_filter(&ef);
    assert_eq!(filter["name"], "envoy.filters.http.wasm");
    assert_eq!(filter["typed_config"]["@type"], WASM_TYPE);
    let config = &filter["typed_config"]["config"];
    assert_eq!(config["allow_on_headers_stop_iteration"], json!(true));
    assert_eq!(config["failure_policy"], "FAIL_CLOSED");
    assert!(config.get("fail_open").is_none(), "fail_open is deprecated; failure_policy says it");
    assert_eq!(config["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    let sha = config["vm_config"]["code"]["remote"]["sha256"].as_str().unwrap();
    assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{sha}");
    assert_eq!(sha, wasmplugin()["spec"]["sha256"].as_str().unwrap(), "the two forms name different modules");
}

fn hcm(stat_prefix: &str, wasm_filter: Value, idle_timeout: Option<&str>) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": {"virtual_hosts": [{
            "name": "mcp",
            "domains": ["*"],
            // Stands in for the MCP server: whatever passes the filter gets this answer.
            "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "upstream reached\n"}}}]
        }]},
        "http_filters": [
            wasm_filter,
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        ]
    });
    if let Some(timeout) = idle_timeout {
        hcm["stream_idle_timeout"] = json!(timeout);
    }
    hcm
}

fn listener(name: &str, port: u16, hcm: Value) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]
    })
}

fn static_cluster(name: &str, addr: std::net::SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": addr.ip().to_string(), "port_value": addr.port()
        }}}}]}]}
    })
}

fn envoy_validates(name: &str, wasm_filter: Value) -> Result<(), String> {
    let bootstrap = json!({"static_resources": {"listeners": [listener("mcp", 0, hcm("mcp", wasm_filter, None))]}});
    let dir = envoy::work_dir("istio-manifests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    envoy::validate(&path).map_err(|e| e.to_string())
}

/// The EnvoyFilter's Wasm filter with the module read from a local file instead of fetched.
fn with_local_code(mut filter: Value, wasm: &Path) -> Value {
    filter["typed_config"]["config"]["vm_config"]["code"] = json!({"local": {"filename": wasm.display().to_string()}});
    filter
}

#[test]
fn envoy_accepts_the_envoyfilter_wasm_config() {
    let filter = wasm_http_filter(&envoyfilter());
    // As written (remote code: validate mode checks every field but fetches nothing).
    envoy_validates("envoyfilter-as-written", filter.clone()).unwrap_or_else(|e| panic!("{e}"));
    // With the built module as a local file: validate mode also loads it and runs on_configure
    // with the configuration.
    let wasm = envoy::filter_wasm().unwrap_or_else(|e| panic!("{e}"));
    envoy_validates("envoyfilter-local-code", with_local_code(filter.clone(), &wasm)).unwrap_or_else(|e| panic!("{e}"));

    // Side by side: Envoy refuses a misspelt field and the WasmPlugin spelling of the enum.
    let mut misspelt = filter.clone();
    rename(&mut misspelt["typed_config"]["config"], "allow_on_headers_stop_iteration", "allow_on_header_stop_iteration");
    let error = envoy_validates("envoyfilter-misspelt", misspelt).expect_err("a misspelt field passed");
    assert!(error.contains("allow_on_header_stop_iteration"), "{error}");
    let mut wrong_enum = filter.clone();
    wrong_enum["typed_config"]["config"]["failure_policy"] = json!("FAIL_CLOSE");
    let error = envoy_validates("envoyfilter-wrong-enum", wrong_enum).expect_err("FAIL_CLOSE passed");
    assert!(error.contains("FAIL_CLOSE"), "{error}");
    // And, with local code, a configuration the filter refuses.
    let mut refused = with_local_code(filter, &wasm);
    let configuration = &mut refused["typed_config"]["config"]["configuration"]["value"];
    *configuration = json!(configuration.as_str().unwrap().replace("\"binding\": \"dpop\"", "\"binding\": \"none\""));
    let error = envoy_validates("envoyfilter-refused-config", refused).expect_err("a configuration the filter refuses passed");
    assert!(error.contains("invalid plugin configuration: binding"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// In a running Envoy: what the WasmPlugin form does with request bodies

/// The Wasm filter Istio builds from a WasmPlugin (pilot/pkg/model/wasm.go, read, not run):
/// PluginConfig name `<namespace>.<name>`, root_id = pluginName, the V8 runtime, the module the
/// Istio agent downloaded as a local file, `pluginConfig` as a JSON string, failStrategy as
/// failure_policy, and no allow_on_headers_stop_iteration: there is no field for it.
fn as_istio_builds_it(wp: &Value, wasm: &Path) -> Value {
    let spec = &wp["spec"];
    let failure_policy = match spec["failStrategy"].as_str() {
        Some("FAIL_OPEN") => "FAIL_OPEN",
        Some("FAIL_RELOAD") => "FAIL_RELOAD",
        _ => "FAIL_CLOSED",
    };
    json!({
        "name": format!("{}.{}", wp["metadata"]["namespace"].as_str().unwrap(), wp["metadata"]["name"].as_str().unwrap()),
        "typed_config": {
            "@type": WASM_TYPE,
            "config": {
                "name": format!("{}.{}", wp["metadata"]["namespace"].as_str().unwrap(), wp["metadata"]["name"].as_str().unwrap()),
                "root_id": spec["pluginName"],
                "configuration": {"@type": STRING_VALUE_TYPE, "value": wasmplugin_config_json()},
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm.display().to_string()}}},
                "failure_policy": failure_policy
            }
        }
    })
}

/// One HTTP/1.1 exchange on a new connection: (status, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, String)], body: &str) -> (u16, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: mcp.example.com\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    exchange(port, &request)
}

/// Sends `request` as is on a new connection and reads the answer: (status, body).
fn exchange(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A guard against a hung test, not a timing assertion: Envoy answers well before.
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap_or_else(|e| panic!("on :{port}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {text}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Headers for a request to the public URL with a DPoP-bound token and a fresh proof.
fn dpop_headers(issuer: &Issuer, holder: &TestKey, method: &str, scope: &str) -> Vec<(&'static str, String)> {
    let now = mcp_guard_demo::now_seconds();
    let request = TokenRequest { scope: Some(scope.into()), dpop_jkt: Some(holder.thumbprint()), ..Default::default() };
    let token = issuer.mint(&request, now).unwrap().access_token;
    let proof = ProofSpec::new(holder, method, "https://mcp.example.com/mcp", now, &token).sign(holder);
    vec![("authorization", format!("DPoP {token}")), ("dpop", proof)]
}

/// A DPoP-bound MCP call (`tools/call`): headers and body.
fn mcp_call(issuer: &Issuer, holder: &TestKey, tool: &str, scope: &str) -> (Vec<(&'static str, String)>, String) {
    let mut headers = dpop_headers(issuer, holder, "POST", scope);
    headers.push(("content-type", "application/json".to_string()));
    (headers, tools_call(1, tool).to_string())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasmplugin_form_cannot_judge_bodies_in_envoy() {
    let wasm = envoy::filter_wasm().unwrap_or_else(|e| panic!("{e}"));
    // The authorization server, reached through the cluster named as Istio names it (plain HTTP
    // here; in the mesh the DestinationRule adds TLS).
    let issuer = Arc::new(Issuer::new("https://auth.example.com", "https://mcp.example.com/mcp"));
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer_addr = socket.local_addr().unwrap();
    let _issuer_task = AbortOnDrop(tokio::spawn(mcp_guard_demo::issuer::serve(socket, Arc::clone(&issuer))));

    // Two listeners in one Envoy: the EnvoyFilter's Wasm filter (module as a local file), and
    // the one Istio builds from the WasmPlugin. A stream idle timeout of 2 s stands in for the
    // sidecar's own, so that a stalled request ends.
    let envoyfilter_port = envoy::free_port().unwrap();
    let wasmplugin_port = envoy::free_port().unwrap();
    let envoyfilter_wasm = with_local_code(wasm_http_filter(&envoyfilter()), &wasm);
    let wasmplugin_wasm = as_istio_builds_it(&wasmplugin(), &wasm);
    assert!(wasmplugin_wasm["typed_config"]["config"].get("allow_on_headers_stop_iteration").is_none());
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                listener("envoyfilter", envoyfilter_port, hcm("envoyfilter", envoyfilter_wasm, Some("2s"))),
                listener("wasmplugin", wasmplugin_port, hcm("wasmplugin", wasmplugin_wasm, Some("2s")))
            ],
            "clusters": [static_cluster(JWKS_CLUSTER, issuer_addr)]
        }
    });
    let dir = envoy::work_dir("istio-manifests-running");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("envoy.json");
    std::fs::write(&config, serde_json::to_string_pretty(&bootstrap).unwrap()).unwrap();
    let envoy = Envoy::start_with_config(&dir, &config, envoyfilter_port, 1, Ready::KeysLoaded)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let holder = TestKey::es256();
    let issuer_for_client = Arc::clone(&issuer);
    let results = tokio::task::spawn_blocking(move || {
        let mut results = Vec::new();
        for (form, port) in [("envoyfilter", envoyfilter_port), ("wasmplugin", wasmplugin_port)] {
            let (headers, body) = mcp_call(&issuer_for_client, &holder, "get_forecast", "weather:read");
            results.push((form, "allowed call", http(port, "POST", "/mcp", &headers, &body)));
            let (headers, body) = mcp_call(&issuer_for_client, &holder, "post_alert", "weather:read");
            results.push((form, "call without the scope", http(port, "POST", "/mcp", &headers, &body)));
            let headers = [("content-type", "application/json".to_string())];
            results.push((form, "call without a token", http(port, "POST", "/mcp", &headers, &tools_call(1, "get_forecast").to_string())));
            results.push((form, "metadata", http(port, "GET", "/.well-known/oauth-protected-resource/mcp", &[], "")));
            let headers = dpop_headers(&issuer_for_client, &holder, "GET", "weather:read");
            results.push((form, "GET with a token", http(port, "GET", "/mcp", &headers, "")));
        }
        // A client that has not finished sending its body (20 of 1000 bytes), in the WasmPlugin form.
        let (headers, _) = mcp_call(&issuer_for_client, &holder, "get_forecast", "weather:read");
        let mut unfinished = String::from("POST /mcp HTTP/1.1\r\nhost: mcp.example.com\r\ncontent-length: 1000\r\n");
        for (name, value) in &headers {
            unfinished.push_str(&format!("{name}: {value}\r\n"));
        }
        unfinished.push_str("\r\n{\"jsonrpc\": \"2.0\", ");
        results.push(("wasmplugin", "unfinished body", exchange(wasmplugin_port, &unfinished)));
        results
    })
    .await
    .unwrap();
    let log = envoy.log_tail(60);
    let get = |form: &str, what: &str| {
        results.iter().find(|(f, w, _)| *f == form && *w == what).map(|(_, _, r)| r.clone()).unwrap()
    };

    // The EnvoyFilter form judges the body: allowed calls reach the upstream, others are refused
    // by the filter.
    let (status, body) = get("envoyfilter", "allowed call");
    assert_eq!((status, body.as_str()), (200, "upstream reached\n"), "{log}");
    let (status, body) = get("envoyfilter", "call without the scope");
    assert_eq!(status, 403, "{body}\n{log}");
    assert!(body.contains("insufficient_scope"), "{body}");

    // The WasmPlugin form: a call with a token and a body is neither forwarded nor answered by
    // the filter, allowed or not; it stalls until the stream idle timeout and Envoy answers 504.
    for what in ["allowed call", "call without the scope"] {
        let (status, body) = get("wasmplugin", what);
        assert_eq!((status, body.as_str()), (504, "stream timeout"), "wasmplugin form, {what}\n{log}");
    }

    // Had the client not finished sending, Envoy's answer at the timeout is 408 instead.
    let (status, body) = get("wasmplugin", "unfinished body");
    assert_eq!((status, body.as_str()), (408, "stream timeout"), "{log}");

    // Both: what the filter decides from the headers alone still works.
    for form in ["envoyfilter", "wasmplugin"] {
        let (status, body) = get(form, "call without a token");
        assert_eq!(status, 401, "{form}: {body}");
        assert!(body.contains("missing_token"), "{form}: {body}");
        let (status, body) = get(form, "metadata");
        assert_eq!(status, 200, "{form}: {body}");
        assert!(body.contains("\"authorization_servers\""), "{form}: {body}");
        // A request without a body is judged at the headers, token and proof included.
        let (status, body) = get(form, "GET with a token");
        assert_eq!((status, body.as_str()), (200, "upstream reached\n"), "{form}\n{log}");
    }
    drop(envoy);
}
