//! Which scopes a call needs. A tool's scope list means all of them; `methods` adds scopes to
//! any method (including `tools/call` and `prompts/get`); `prompts` adds scopes per prompt.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use crate::mcp::{Message, Target};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Unlisted {
    /// A tool the policy does not list cannot be called (the default).
    #[default]
    Deny,
    /// A tool the policy does not list needs a valid, bound token and no scope.
    Allow,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub tools: BTreeMap<String, Vec<String>>,
    pub unlisted_tools: Unlisted,
    pub methods: BTreeMap<String, Vec<String>>,
    pub prompts: BTreeMap<String, Vec<String>>,
}

/// A call the policy forbids whatever the scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    ToolNotListed(String),
}

impl Policy {
    /// Every scope the policy mentions, sorted: the default `scopes_supported`.
    pub fn all_scopes(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .tools
            .values()
            .chain(self.methods.values())
            .chain(self.prompts.values())
            .flatten()
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The scopes `message` needs, all of which the token must hold.
    pub fn required_scopes(&self, message: &Message) -> Result<Vec<String>, Forbidden> {
        let Message::Call { method, target, .. } = message else {
            // A response to a server-initiated request exercises no privilege of its own.
            return Ok(Vec::new());
        };
        let mut needed: Vec<String> = self.methods.get(method).cloned().unwrap_or_default();
        match target {
            Target::Tool(name) if method == "tools/call" => match self.tools.get(name) {
                Some(scopes) => needed.extend(scopes.iter().cloned()),
                None if self.unlisted_tools == Unlisted::Allow => {}
                None => return Err(Forbidden::ToolNotListed(name.clone())),
            },
            Target::Prompt(name) if method == "prompts/get" => {
                if let Some(scopes) = self.prompts.get(name) {
                    needed.extend(scopes.iter().cloned());
                }
            }
            _ => {}
        }
        needed.sort();
        needed.dedup();
        Ok(needed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn call(method: &str, target: Target) -> Message {
        Message::Call { id: None, method: method.into(), target }
    }

    fn policy() -> Policy {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Policy {
            tools: [("get_forecast".into(), list(&["weather:read"])), ("delete_repo".into(), list(&["repo:admin", "repo:write"]))].into(),
            unlisted_tools: Unlisted::Deny,
            methods: [("resources/read".into(), list(&["docs:read"])), ("tools/call".into(), list(&["mcp:tools"]))].into(),
            prompts: [("summarize".into(), list(&["prompts:use"]))].into(),
        }
    }

    #[test]
    fn scopes_per_tool_prompt_and_method() {
        let p = policy();
        assert_eq!(p.required_scopes(&call("tools/call", Target::Tool("get_forecast".into()))).unwrap(), vec!["mcp:tools", "weather:read"]);
        assert_eq!(p.required_scopes(&call("tools/call", Target::Tool("delete_repo".into()))).unwrap(), vec!["mcp:tools", "repo:admin", "repo:write"]);
        assert_eq!(p.required_scopes(&call("prompts/get", Target::Prompt("summarize".into()))).unwrap(), vec!["prompts:use"]);
        assert_eq!(p.required_scopes(&call("prompts/get", Target::Prompt("other".into()))).unwrap(), Vec::<String>::new());
        assert_eq!(p.required_scopes(&call("resources/read", Target::Resource("file:///x".into()))).unwrap(), vec!["docs:read"]);
        assert_eq!(p.required_scopes(&call("tools/list", Target::None)).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn unlisted_tools_follow_the_setting() {
        let mut p = policy();
        let unknown = call("tools/call", Target::Tool("rm_rf".into()));
        assert_eq!(p.required_scopes(&unknown), Err(Forbidden::ToolNotListed("rm_rf".into())));
        p.unlisted_tools = Unlisted::Allow;
        assert_eq!(p.required_scopes(&unknown).unwrap(), vec!["mcp:tools"]);
    }

    #[test]
    fn names_are_compared_exactly() {
        let p = policy();
        for name in ["Get_forecast", "get_forecast ", "get_forecast\u{0}"] {
            assert!(p.required_scopes(&call("tools/call", Target::Tool(name.into()))).is_err(), "{name:?}");
        }
    }

    #[test]
    fn all_scopes_is_sorted_and_unique() {
        assert_eq!(policy().all_scopes(), vec!["docs:read", "mcp:tools", "prompts:use", "repo:admin", "repo:write", "weather:read"]);
    }
}
