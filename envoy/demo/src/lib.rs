//! The mcp-guard demo: everything around the filter that a person (or the e2e test) needs to
//! see it work in real Envoy.
//!
//! - [`weather`]: an MCP server built with rmcp (Streamable HTTP), with tools of every risk level;
//! - [`issuer`]: a local authorization server minting DPoP- and mTLS-bound access tokens;
//! - [`dpop`] and [`agent`]: an rmcp client whose every HTTP request carries a fresh DPoP proof;
//! - [`script`]: the scripted session `demo-agent` runs, and the e2e test too;
//! - [`envoy`]: real Envoy with the built filter, for the end-to-end tests;
//! - [`net`] and [`cli`]: loopback-only listeners and the binaries' flags.

pub mod agent;
pub mod cli;
pub mod dpop;
pub mod envoy;
pub mod issuer;
pub mod net;
pub mod script;
pub mod weather;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// An error with a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

impl Error {
    pub fn msg(message: impl Into<String>) -> Error {
        Error(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Seconds since the Unix epoch (tokens' `iat`/`exp`, proofs' `iat`).
pub fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
