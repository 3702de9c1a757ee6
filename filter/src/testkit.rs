//! Test kit: real keys generated at run time, and the tokens and DPoP proofs a client and an
//! authorization server would produce with them. Compiled for the crate's unit tests and, with
//! the `testkit` feature, for the scenario suite in `tests/`. Never part of the shipped filter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::OnceLock;

use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

use crate::jose::{b64url_encode, sha256};

/// A signing key of one of the types the filter verifies.
pub enum TestKey {
    Es256(ES256KeyPair),
    Es384(ES384KeyPair),
    Ed25519(Ed25519KeyPair),
    Rs256(RS256KeyPair),
}

/// RSA key generation is slow in a debug build: one per test process is enough.
fn shared_rsa(slot: usize) -> RS256KeyPair {
    static KEYS: [OnceLock<RS256KeyPair>; 2] = [OnceLock::new(), OnceLock::new()];
    KEYS[slot].get_or_init(|| RS256KeyPair::generate(2048).unwrap()).clone()
}

impl TestKey {
    pub fn es256() -> TestKey {
        TestKey::Es256(ES256KeyPair::generate())
    }
    pub fn es384() -> TestKey {
        TestKey::Es384(ES384KeyPair::generate())
    }
    pub fn ed25519() -> TestKey {
        TestKey::Ed25519(Ed25519KeyPair::generate())
    }
    pub fn rs256() -> TestKey {
        TestKey::Rs256(shared_rsa(0))
    }

    /// A different key of the same type (for "signed by someone else" cases).
    pub fn another_of_same_type(&self) -> TestKey {
        match self {
            TestKey::Es256(_) => TestKey::es256(),
            TestKey::Es384(_) => TestKey::es384(),
            TestKey::Ed25519(_) => TestKey::ed25519(),
            TestKey::Rs256(_) => TestKey::Rs256(shared_rsa(1)),
        }
    }

    /// The JWS `alg` this key signs with.
    pub fn alg(&self) -> &'static str {
        match self {
            TestKey::Es256(_) => "ES256",
            TestKey::Es384(_) => "ES384",
            TestKey::Ed25519(_) => "EdDSA",
            TestKey::Rs256(_) => "RS256",
        }
    }

    pub fn public_jwk(&self) -> Map<String, Value> {
        let text = match self {
            TestKey::Es256(k) => k.public_key().to_jwk(),
            TestKey::Es384(k) => k.public_key().to_jwk(),
            TestKey::Ed25519(k) => k.public_key().to_jwk(),
            TestKey::Rs256(k) => k.public_key().to_jwk(),
        };
        let mut jwk: Map<String, Value> = serde_json::from_str(&text).unwrap();
        // Keep only the key itself: callers add `kid`/`alg`/`use` as a JWKS would.
        jwk.retain(|k, _| matches!(k.as_str(), "kty" | "crv" | "x" | "y" | "n" | "e"));
        jwk
    }

    /// The public JWK with a `kid`, as it would stand in a JWKS.
    pub fn jwks_entry(&self, kid: &str) -> Value {
        let mut jwk = self.public_jwk();
        jwk.insert("kid".into(), kid.into());
        jwk.insert("use".into(), "sig".into());
        Value::Object(jwk)
    }

    /// RFC 7638 thumbprint of the public key.
    pub fn thumbprint(&self) -> String {
        match self {
            TestKey::Es256(k) => k.public_key().jwk_thumbprint(),
            TestKey::Es384(k) => k.public_key().jwk_thumbprint(),
            TestKey::Ed25519(k) => k.public_key().jwk_thumbprint(),
            TestKey::Rs256(k) => k.public_key().jwk_thumbprint(),
        }
    }

    /// Signs raw bytes the way JWS `alg` of this key requires.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        match self {
            TestKey::Es256(k) => {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = k.key_pair().as_ref().sign(message);
                sig.to_bytes().to_vec()
            }
            TestKey::Es384(k) => {
                use p384::ecdsa::signature::Signer as _;
                let sig: p384::ecdsa::Signature = k.key_pair().as_ref().sign(message);
                sig.to_bytes().to_vec()
            }
            TestKey::Ed25519(k) => k.key_pair().as_ref().sk.sign(message, None).to_vec(),
            TestKey::Rs256(k) => {
                use superboring::{hash::MessageDigest, pkey::PKey, rsa::Padding, sign::Signer};
                let pkey = PKey::from_rsa(k.key_pair().as_ref().clone()).unwrap();
                let mut signer = Signer::new(MessageDigest::sha256(), &pkey).unwrap();
                signer.set_rsa_padding(Padding::PKCS1).unwrap();
                signer.update(message).unwrap();
                signer.sign_to_vec().unwrap()
            }
        }
    }

    /// A compact JWS: `header` members are added to `{"alg": <this key's alg>}` (and may
    /// override it, to build wrong-`alg` cases).
    pub fn sign_jws(&self, header: &Value, claims: &Value) -> String {
        let mut full = Map::new();
        full.insert("alg".into(), self.alg().into());
        if let Value::Object(extra) = header {
            for (k, v) in extra {
                full.insert(k.clone(), v.clone());
            }
        }
        let input = format!(
            "{}.{}",
            b64url_encode(serde_json::to_string(&full).unwrap().as_bytes()),
            b64url_encode(serde_json::to_string(claims).unwrap().as_bytes())
        );
        let sig = self.sign_bytes(input.as_bytes());
        format!("{input}.{}", b64url_encode(&sig))
    }
}

/// A loaded configuration for a test issuer's inline keys, `binding`, the public URL
/// `https://mcp.example.com/mcp`, and the members of `extra` added.
pub fn test_config(binding: &str, extra: Value) -> crate::config::Config {
    let issuer = TestIssuer::new(TestKey::es256());
    let mut v = json!({
        "issuer": issuer.issuer, "audience": issuer.audience, "jwks": issuer.jwks(),
        "binding": binding, "public_url": "https://mcp.example.com/mcp"
    });
    if let (Value::Object(base), Value::Object(extra)) = (&mut v, extra) {
        base.extend(extra);
    }
    crate::config::Config::from_json(v.to_string().as_bytes()).unwrap()
}

/// The configuration of the scenario table (tests/lib.rs `World::config`) and of the fuzz
/// seeds: DPoP binding on `https://mcp.example.com/mcp`, read and admin tools, a guarded
/// resource method and prompt, 4 KiB bodies; `authorization_server` for the metadata document.
pub fn scenario_config(issuer: &str, audience: &str, jwks: Value, authorization_server: &str) -> Value {
    json!({
        "issuer": issuer,
        "audience": audience,
        "jwks": jwks,
        "binding": "dpop",
        "public_url": "https://mcp.example.com/mcp",
        "dpop": {"algorithms": ["ES256", "EdDSA"], "max_age_seconds": 60, "clock_skew_seconds": 5},
        "resource_metadata": {"authorization_servers": [authorization_server], "scopes_supported": ["weather:read", "repo:admin"]},
        "max_body_bytes": 4096,
        "policy": {
            "tools": {"get_forecast": ["weather:read"], "delete_repo": ["repo:admin"]},
            "unlisted_tools": "deny",
            "methods": {"resources/read": ["docs:read"]},
            "prompts": {"summarize": ["prompts:use"]}
        }
    })
}

/// base64url(SHA-256(token)): a proof's `ath`.
pub fn ath(token: &str) -> String {
    b64url_encode(&sha256(token.as_bytes()))
}

/// `x5t#S256` of a certificate whose DER SHA-256 is `digest`.
pub fn x5t_s256(digest: &[u8; 32]) -> String {
    b64url_encode(digest)
}

/// The hex form Envoy exposes for `connection.sha256_peer_certificate_digest`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An authorization server for tests: one signing key, an issuer, an audience.
pub struct TestIssuer {
    pub key: TestKey,
    pub kid: String,
    pub issuer: String,
    pub audience: String,
}

impl TestIssuer {
    pub fn new(key: TestKey) -> TestIssuer {
        TestIssuer {
            key,
            kid: "k1".into(),
            issuer: "https://auth.example.com".into(),
            audience: "https://mcp.example.com/mcp".into(),
        }
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.key.jwks_entry(&self.kid)] })
    }

    /// Claims an access token for this issuer carries by default; tests change what they test.
    pub fn claims(&self, now: u64, scope: &str) -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("iss".into(), self.issuer.clone().into());
        c.insert("aud".into(), self.audience.clone().into());
        c.insert("sub".into(), "user-123".into());
        c.insert("client_id".into(), "agent-7".into());
        c.insert("iat".into(), now.into());
        c.insert("exp".into(), (now + 600).into());
        c.insert("jti".into(), format!("at-{now}").into());
        c.insert("scope".into(), scope.into());
        c
    }

    pub fn token(&self, claims: &Map<String, Value>) -> String {
        self.key.sign_jws(
            &json!({"typ": "at+jwt", "kid": self.kid}),
            &Value::Object(claims.clone()),
        )
    }

    /// A DPoP-bound token for `holder`'s key.
    pub fn dpop_token(&self, now: u64, scope: &str, holder: &TestKey) -> String {
        let mut c = self.claims(now, scope);
        c.insert("cnf".into(), json!({ "jkt": holder.thumbprint() }));
        self.token(&c)
    }

    /// An mTLS-bound token for the certificate with DER SHA-256 `cert_digest`.
    pub fn mtls_token(&self, now: u64, scope: &str, cert_digest: &[u8; 32]) -> String {
        let mut c = self.claims(now, scope);
        c.insert("cnf".into(), json!({ "x5t#S256": x5t_s256(cert_digest) }));
        self.token(&c)
    }
}

/// The claims of a DPoP proof, with `build` to sign it; fields are public so tests break one.
pub struct ProofSpec {
    pub typ: Value,
    pub alg: Option<String>,
    pub jwk: Option<Value>,
    pub htm: Value,
    pub htu: Value,
    pub iat: Value,
    pub jti: Value,
    pub ath: Option<Value>,
    pub extra_claims: Map<String, Value>,
    /// Header members besides `typ`, `alg` and `jwk` (e.g. `crit`).
    pub extra_header: Map<String, Value>,
}

impl ProofSpec {
    pub fn new(key: &TestKey, htm: &str, htu: &str, now: u64, token: &str) -> ProofSpec {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ProofSpec {
            typ: "dpop+jwt".into(),
            alg: None,
            jwk: Some(Value::Object(key.public_jwk())),
            htm: htm.into(),
            htu: htu.into(),
            iat: now.into(),
            jti: format!("proof-{now}-{n}").into(),
            ath: Some(ath(token).into()),
            extra_claims: Map::new(),
            extra_header: Map::new(),
        }
    }

    pub fn sign(&self, key: &TestKey) -> String {
        let mut header = self.extra_header.clone();
        header.insert("typ".into(), self.typ.clone());
        if let Some(alg) = &self.alg {
            header.insert("alg".into(), alg.clone().into());
        }
        if let Some(jwk) = &self.jwk {
            header.insert("jwk".into(), jwk.clone());
        }
        let mut claims = self.extra_claims.clone();
        claims.insert("htm".into(), self.htm.clone());
        claims.insert("htu".into(), self.htu.clone());
        claims.insert("iat".into(), self.iat.clone());
        claims.insert("jti".into(), self.jti.clone());
        if let Some(ath) = &self.ath {
            claims.insert("ath".into(), ath.clone());
        }
        key.sign_jws(&Value::Object(header), &Value::Object(claims))
    }
}

/// Published test vectors, kept apart from generated keys.
pub mod vectors {
    /// RFC 7638 §3.1 example: the RSA key of RFC 7517 Appendix A.1 …
    pub const RFC7638_JWK: &str = r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#;
    /// … and its thumbprint.
    pub const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    /// RFC 9449 Figure 13: a DPoP proof for a protected-resource request (GET
    /// https://resource.example.org/protectedresource, iat 1562262618) …
    pub const RFC9449_FIG13_PROOF: &str = concat!(
        "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwi",
        "eCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5",
        "IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNy",
        "diI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiw",
        "iaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJ",
        "jZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHh",
        "XWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA",
        "1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
    );
    /// … the access token it accompanies (Figure 12) …
    pub const RFC9449_FIG13_ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    /// … its `ath` (Figure 14) …
    pub const RFC9449_FIG14_ATH: &str = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo";
    /// … and the `cnf.jkt` of the proof key (Figure 9).
    pub const RFC9449_FIG9_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
}
