//! mcp-guard: a proxy-wasm filter that lets a request reach an MCP server only when its caller
//! proves who it is (a JWT access token, sender-constrained by DPoP or by the mTLS client
//! certificate) and holds the scopes for what it asks.
//!
//! Follow a request through the modules:
//! - `proxy` (wasm32-wasip1 only) is the thin proxy-wasm glue: it reads headers, body and connection
//!   properties into [`guard::RequestFacts`], asks [`guard::Guard::decide`], and either lets the
//!   request continue or sends the local reply that [`answer`] built.
//! - [`config`] turns the plugin configuration JSON into an immutable [`config::Config`], once.
//! - [`mcp`] decodes the JSON-RPC body (single request or batch) strictly, refusing anything the
//!   MCP server behind us could read differently.
//! - [`token`] verifies the access token ([`token::UntrustedToken`] becomes a
//!   [`token::VerifiedToken`] only through `verify`), with keys from [`jwks`] and signatures
//!   from [`jose`]; [`token::TokenCache`] keeps verified tokens until `exp`.
//! - [`dpop`] verifies DPoP proofs (RFC 9449); [`replay`] is the bounded `jti` replay cache.
//! - [`binding`] holds the token to its `cnf` (DPoP `jkt`, mTLS `x5t#S256`).
//! - [`policy`] says which scopes a call needs.
//! - [`denial`] is the one flat list of reasons to refuse; [`answer`] is the one place that maps
//!   them to HTTP statuses, `WWW-Authenticate` challenges and JSON-RPC error bodies.
//! - [`prm`] serves the RFC 9728 protected-resource metadata.
//! - [`listing`] trims `tools/list` responses to the tools the caller may call.
//! - [`audit`] records who did what (one JSON line per decision) and builds the verified
//!   identity headers the upstream gets instead of the caller's credentials.
//!
//! The core knows nothing of proxy-wasm: the clock (`now`), the replay store and the caches are
//! passed in, so it runs natively and on wasm32 alike.
#![deny(unsafe_code)]

pub mod answer;
pub mod audit;
pub mod binding;
pub mod config;
pub mod denial;
pub mod dpop;
pub mod guard;
pub mod jose;
pub mod jwks;
pub mod listing;
pub mod mcp;
pub mod policy;
pub mod prm;
pub mod replay;
pub mod token;
pub mod uri;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

// The proxy-wasm glue exists only in the module Envoy loads (wasm32-wasip1); the core's own
// wasm32 tests run on wasm32-unknown-unknown without it.
#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod proxy;
