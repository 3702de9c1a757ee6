//! What the fuzz targets and the seed generator share: fixed (seeded, so reproducible) keys,
//! the fixed request a token or proof is checked against, and the input layouts.
//!
//! Signed inputs: the fuzzer cannot forge signatures, so a target that only parsed fuzzer
//! bytes as a JWS would never get past the signature check. The `signed` modes of the `jose`
//! target therefore take a header and a claims document from the input (separated by the
//! first `\n`), sign them with the fixed key, and hand the compact JWS to the filter: the
//! claim checks after the signature are fuzzed too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::OnceLock;

use jwt_simple::prelude::Ed25519KeyPair;
use mcp_guard::config::DpopSettings;
use mcp_guard::jose::{b64url_encode, sha256, Alg};
use mcp_guard::jwks::KeySet;
use mcp_guard::listing::ListFilter;
use mcp_guard::policy::{Policy, Unlisted};
use mcp_guard::testkit::TestKey;
use serde_json::{json, Value};

/// The fuzzers' clock (Unix seconds); seeds are minted for it.
pub const NOW: u64 = 1_800_000_000;
pub const ISSUER: &str = "https://auth.example.com";
pub const AUDIENCE: &str = "https://mcp.example.com/mcp";
pub const PUBLIC_URL: &str = "https://mcp.example.com/mcp";
pub const KID: &str = "k1";
pub const SKEW: u64 = 30;
/// The access token every DPoP proof of the `jose` target accompanies (for `ath`).
pub const ACCESS_TOKEN: &str = "fuzz-access-token.not-a-jwt.x";

fn ed25519_from_seed(seed: u8) -> TestKey {
    let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new([seed; 32]));
    TestKey::Ed25519(Ed25519KeyPair::from_bytes(&kp[..]).expect("seeded Ed25519 key"))
}

/// The issuer's signing key (kid `k1`).
pub fn issuer_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| ed25519_from_seed(1))
}

/// The DPoP client's key.
pub fn holder_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| ed25519_from_seed(2))
}

pub fn issuer_jwks() -> Value {
    json!({ "keys": [issuer_key().jwks_entry(KID)] })
}

pub fn keyset() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::from_jwks_value(&issuer_jwks()).expect("issuer JWKS"))
}

pub fn dpop_settings() -> DpopSettings {
    DpopSettings { algorithms: vec![Alg::Es256, Alg::Ed25519, Alg::Rs256], ..DpopSettings::default() }
}

/// `b64url(header).b64url(claims).b64url(signature by key)`, over arbitrary bytes.
pub fn sign_compact(key: &TestKey, header: &[u8], claims: &[u8]) -> String {
    let input = format!("{}.{}", b64url_encode(header), b64url_encode(claims));
    let signature = key.sign_bytes(input.as_bytes());
    format!("{input}.{}", b64url_encode(&signature))
}

/// Splits a signed-mode input into header and claims at the first `\n`.
pub fn split_document_pair(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// base64url(SHA-256(text)).
pub fn ath(text: &str) -> String {
    b64url_encode(&sha256(text.as_bytes()))
}

/// Modes of the `jose` target (the first input byte, modulo 4; seeds use the ASCII digits).
pub mod jose_mode {
    /// The rest is an access token as it would stand in `Authorization`.
    pub const RAW_TOKEN: u8 = 0;
    /// The rest is `header\nclaims`, signed with the issuer key into an access token.
    pub const SIGNED_TOKEN: u8 = 1;
    /// The rest is a DPoP proof as it would stand in the `DPoP` header.
    pub const RAW_PROOF: u8 = 2;
    /// The rest is `header\nclaims`, signed with the holder key into a DPoP proof.
    pub const SIGNED_PROOF: u8 = 3;
}

/// The policy the `listing` target trims with (the scenario suite's).
pub fn listing_policy() -> Policy {
    Policy {
        tools: [
            ("get_forecast".to_string(), vec!["weather:read".to_string()]),
            ("delete_repo".to_string(), vec!["repo:admin".to_string()]),
            ("both".to_string(), vec!["weather:read".to_string(), "repo:admin".to_string()]),
        ]
        .into(),
        unlisted_tools: Unlisted::Deny,
        methods: Default::default(),
        prompts: Default::default(),
    }
}

/// The `tools/list` request ids the `listing` target's responses answer.
pub fn listing_filter(scopes: &[&str]) -> ListFilter {
    ListFilter { ids: vec![json!(1), json!("a")], scopes: scopes.iter().map(|s| s.to_string()).collect() }
}

/// Scope sets the `listing` target picks from with the first input byte.
pub const LISTING_SCOPES: [&[&str]; 4] = [&[], &["weather:read"], &["repo:admin"], &["weather:read", "repo:admin"]];
