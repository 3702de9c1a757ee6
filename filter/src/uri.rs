//! Absolute http(s) URLs in RFC 3986 normal form, for `public_url`, `jwks_uri.url` and the
//! DPoP `htu` comparison (RFC 9449 §4.3: compare after syntax-based normalisation, ignoring
//! query and fragment).
//!
//! Normalisation (RFC 3986 §6.2.2): scheme and host to lower case, the default port dropped,
//! percent-encodings of unreserved characters decoded and the rest upper-cased, dot segments
//! removed, an empty path made `/`.
#![forbid(unsafe_code)]

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriError {
    NotAbsolute,
    UnsupportedScheme,
    UserInfo,
    BadHost,
    BadPort,
    BadPercentEncoding,
    HasQueryOrFragment,
    BadCharacter,
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UriError::NotAbsolute => "not an absolute URL (scheme://host/path)",
            UriError::UnsupportedScheme => "scheme must be http or https",
            UriError::UserInfo => "user information in the authority is not allowed",
            UriError::BadHost => "the host is empty or malformed",
            UriError::BadPort => "the port is not a number from 1 to 65535",
            UriError::BadPercentEncoding => "a percent-encoding is malformed",
            UriError::HasQueryOrFragment => "must not have a query or fragment",
            UriError::BadCharacter => "contains a character not allowed in a URL",
        })
    }
}

/// An absolute http(s) URL without query or fragment, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteUrl {
    scheme: String,
    /// Host and non-default port, normalised.
    authority: String,
    path: String,
}

impl AbsoluteUrl {
    /// Parses a URL that must not have a query or fragment (configuration values).
    pub fn parse(text: &str) -> Result<AbsoluteUrl, UriError> {
        if text.contains(['?', '#']) {
            return Err(UriError::HasQueryOrFragment);
        }
        Self::parse_ignoring_query(text)
    }

    /// Parses a URL and drops its query and fragment (a proof's `htu`).
    pub fn parse_ignoring_query(text: &str) -> Result<AbsoluteUrl, UriError> {
        if text.bytes().any(|b| b <= 0x20 || b >= 0x7F) {
            return Err(UriError::BadCharacter);
        }
        let without_fragment = text.split('#').next().unwrap_or("");
        let without_query = without_fragment.split('?').next().unwrap_or("");
        let (scheme, rest) = without_query.split_once("://").ok_or(UriError::NotAbsolute)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(UriError::UnsupportedScheme),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
            None => (rest, ""),
        };
        let authority = normalize_authority(authority, default_port)?;
        let path = normalize_path(path)?;
        Ok(AbsoluteUrl { scheme, authority, path })
    }

    /// This URL's scheme and authority with another path (the request's): the `htu` a proof
    /// for that request must carry.
    pub fn with_request_path(&self, request_path: &str) -> Result<AbsoluteUrl, UriError> {
        let path = request_path.split(['?', '#']).next().unwrap_or("");
        if path.bytes().any(|b| b <= 0x20 || b >= 0x7F) {
            return Err(UriError::BadCharacter);
        }
        Ok(AbsoluteUrl { scheme: self.scheme.clone(), authority: self.authority.clone(), path: normalize_path(path)? })
    }

    /// Whether `text` is this URL exactly as it is displayed (`scheme://authority/path`, no
    /// query or fragment). Normalising is idempotent, so such a text parses to this URL: the
    /// usual `htu` is recognised without parsing it (tested against the parse).
    pub fn is_spelled_by(&self, text: &str) -> bool {
        text.strip_prefix(self.scheme.as_str())
            .and_then(|rest| rest.strip_prefix("://"))
            .and_then(|rest| rest.strip_prefix(self.authority.as_str()))
            .is_some_and(|path| path == self.path)
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }
    pub fn authority(&self) -> &str {
        &self.authority
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }
}

impl fmt::Display for AbsoluteUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

fn normalize_authority(authority: &str, default_port: u16) -> Result<String, UriError> {
    if authority.contains('@') {
        return Err(UriError::UserInfo);
    }
    // An IPv6 literal keeps its colons inside brackets.
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner.split_once(']').ok_or(UriError::BadHost)?;
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(UriError::BadHost);
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(UriError::BadHost)?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if host.is_empty() || !host.bytes().all(valid) {
            return Err(UriError::BadHost);
        }
        (host.to_ascii_lowercase(), port)
    };
    match port {
        None | Some("") => Ok(host),
        Some(p) => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UriError::BadPort);
            }
            let n: u16 = p.parse().map_err(|_| UriError::BadPort)?;
            match n {
                0 => Err(UriError::BadPort),
                n if n == default_port => Ok(host),
                n => Ok(format!("{host}:{n}")),
            }
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises percent-encodings and removes dot segments (RFC 3986 §5.2.4).
pub fn normalize_path(path: &str) -> Result<String, UriError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(UriError::BadPercentEncoding);
            };
            let decoded = h * 16 + l;
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF".get(usize::from(h)).copied().unwrap_or(b'0')));
                out.push(char::from(b"0123456789ABCDEF".get(usize::from(l)).copied().unwrap_or(b'0')));
            }
            i += 3;
        } else {
            out.push(char::from(b));
            i += 1;
        }
    }
    Ok(remove_dot_segments(&out))
}

fn remove_dot_segments(path: &str) -> String {
    if path.is_empty() {
        return "/".to_string();
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = path.split('/').peekable();
    // A path always starts with '/' here, so the first split item is empty.
    if path.starts_with('/') {
        parts.next();
    }
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                segments.pop();
                trailing_slash = last;
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn norm(s: &str) -> String {
        AbsoluteUrl::parse_ignoring_query(s).unwrap().to_string()
    }

    #[test]
    fn rfc3986_normalisation() {
        assert_eq!(norm("HTTPS://MCP.Example.COM:443/mcp"), "https://mcp.example.com/mcp");
        assert_eq!(norm("http://h:80/a"), "http://h/a");
        assert_eq!(norm("https://h:8443/a"), "https://h:8443/a");
        assert_eq!(norm("https://h/%7euser/%2f%41"), "https://h/~user/%2FA");
        assert_eq!(norm("https://h/a/./b/../c"), "https://h/a/c");
        assert_eq!(norm("https://h/a/b/.."), "https://h/a/");
        assert_eq!(norm("https://h"), "https://h/");
        assert_eq!(norm("https://h/mcp?x=1#frag"), "https://h/mcp");
        assert_eq!(norm("https://[::1]:8443/x"), "https://[::1]:8443/x");
    }

    #[test]
    fn different_urls_stay_different() {
        assert_ne!(norm("https://h/mcp"), norm("https://h/MCP"));
        assert_ne!(norm("https://h/mcp"), norm("http://h/mcp"));
        assert_ne!(norm("https://h/mcp"), norm("https://h:444/mcp"));
        assert_ne!(norm("https://h/mcp"), norm("https://h/mcp/"));
        assert_ne!(norm("https://h/a%2Fb"), norm("https://h/a/b"));
    }

    /// `is_spelled_by` says yes exactly for the displayed form, and that form parses back to the
    /// same URL (normalising twice changes nothing), so the shortcut never accepts what the parse
    /// would refuse or read differently.
    #[test]
    fn the_displayed_form_is_the_only_shortcut() {
        let texts = [
            "HTTPS://MCP.Example.COM:443/mcp",
            "http://h:80/a",
            "https://h:8443/a",
            "https://h/%7euser/%2f%41",
            "https://h/%2E%2E/a/%2e/b",
            "https://h/a/./b/../c",
            "https://h/a/b/..",
            "https://h",
            "https://h//a//",
            "https://h/mcp?x=1#frag",
            "https://[::1]:8443/x",
            "https://h/a%2Fb/%25",
        ];
        for text in texts {
            let url = AbsoluteUrl::parse_ignoring_query(text).unwrap();
            let shown = url.to_string();
            assert!(url.is_spelled_by(&shown), "{text}");
            assert_eq!(AbsoluteUrl::parse_ignoring_query(&shown).unwrap(), url, "{text}: normalising is idempotent");
            // Any other spelling takes the parse (which may still find it equal).
            assert_eq!(url.is_spelled_by(text), text == shown, "{text}");
            for other in [format!("{shown}?q"), format!("{shown}#f"), format!("{shown}/"), shown.to_uppercase(), shown.replace("://", ":/")] {
                if other != shown {
                    assert!(!url.is_spelled_by(&other), "{other}");
                }
            }
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(AbsoluteUrl::parse("https://h/x?q").unwrap_err(), UriError::HasQueryOrFragment);
        assert_eq!(AbsoluteUrl::parse("/x").unwrap_err(), UriError::NotAbsolute);
        assert_eq!(AbsoluteUrl::parse("ftp://h/x").unwrap_err(), UriError::UnsupportedScheme);
        assert_eq!(AbsoluteUrl::parse("https://u:p@h/x").unwrap_err(), UriError::UserInfo);
        assert_eq!(AbsoluteUrl::parse("https://h:99999/x").unwrap_err(), UriError::BadPort);
        assert_eq!(AbsoluteUrl::parse("https://h:0/x").unwrap_err(), UriError::BadPort);
        assert_eq!(AbsoluteUrl::parse("https:///x").unwrap_err(), UriError::BadHost);
        assert_eq!(AbsoluteUrl::parse("https://h/%zz").unwrap_err(), UriError::BadPercentEncoding);
        assert_eq!(AbsoluteUrl::parse("https://h/a b").unwrap_err(), UriError::BadCharacter);
        assert_eq!(AbsoluteUrl::parse("https://h/\u{e9}").unwrap_err(), UriError::BadCharacter);
    }

    #[test]
    fn request_path_replaces_the_path_and_drops_the_query() {
        let base = AbsoluteUrl::parse("https://MCP.example.com/mcp").unwrap();
        assert_eq!(base.with_request_path("/mcp?session=1").unwrap().to_string(), "https://mcp.example.com/mcp");
        assert_eq!(base.with_request_path("/other/../mcp").unwrap().to_string(), "https://mcp.example.com/mcp");
        assert_eq!(base.origin(), "https://mcp.example.com");
    }
}
