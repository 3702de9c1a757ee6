//! `--flag value` command lines for the three binaries (no parser crate: a handful of flags).

use std::collections::BTreeMap;

use crate::Error;

/// The flags one binary accepts: name (without `--`), default (None = required), help.
pub struct Spec {
    pub program: &'static str,
    pub about: &'static str,
    pub flags: &'static [(&'static str, Option<&'static str>, &'static str)],
}

impl Spec {
    pub fn usage(&self) -> String {
        let mut out = format!("{}: {}\n\nusage: {}", self.program, self.about, self.program);
        for (name, default, _) in self.flags {
            match default {
                None => out.push_str(&format!(" --{name} VALUE")),
                Some(_) => out.push_str(&format!(" [--{name} VALUE]")),
            }
        }
        out.push('\n');
        for (name, default, help) in self.flags {
            let default = default.map(|d| format!(" (default: {d})")).unwrap_or_default();
            out.push_str(&format!("  --{name:<14} {help}{default}\n"));
        }
        out
    }

    /// Parses `args` (without the program name). `--help` returns the usage as the error.
    pub fn parse(&self, args: impl IntoIterator<Item = String>) -> Result<Flags, Error> {
        let mut values = BTreeMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Err(Error::msg(self.usage()));
            }
            let (name, inline) = match arg.strip_prefix("--") {
                Some(rest) => match rest.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (rest.to_string(), None),
                },
                None => return Err(Error::msg(format!("unexpected argument {arg:?}\n\n{}", self.usage()))),
            };
            if !self.flags.iter().any(|(n, _, _)| *n == name) {
                return Err(Error::msg(format!("unknown flag --{name}\n\n{}", self.usage())));
            }
            let value = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| Error::msg(format!("--{name} needs a value")))?,
            };
            values.insert(name, value);
        }
        for (name, default, _) in self.flags {
            if !values.contains_key(*name) {
                match default {
                    Some(d) => {
                        values.insert((*name).to_string(), (*d).to_string());
                    }
                    None => return Err(Error::msg(format!("--{name} is required\n\n{}", self.usage()))),
                }
            }
        }
        Ok(Flags { values })
    }
}

pub struct Flags {
    values: BTreeMap<String, String>,
}

impl Flags {
    /// A flag's value (every declared flag has one after [`Spec::parse`]).
    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map(String::as_str).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        program: "t",
        about: "test",
        flags: &[("listen", Some("127.0.0.1:0"), "address"), ("issuer", None, "issuer URL")],
    };

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_required_and_unknown_flags() {
        let flags = SPEC.parse(args(&["--issuer", "http://x"])).ok();
        assert_eq!(flags.as_ref().map(|f| f.get("listen")), Some("127.0.0.1:0"));
        let flags = SPEC.parse(args(&["--issuer=http://y", "--listen", "127.0.0.1:5"])).ok();
        assert_eq!(flags.as_ref().map(|f| (f.get("issuer"), f.get("listen"))), Some(("http://y", "127.0.0.1:5")));
        assert!(SPEC.parse(args(&[])).is_err());
        assert!(SPEC.parse(args(&["--issuer", "x", "--bogus", "1"])).is_err());
        assert!(SPEC.parse(args(&["--issuer"])).is_err());
    }
}
