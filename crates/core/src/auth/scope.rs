//! Scopes: what a credential may do.
//!
//! - `tools:NAME` calls one tool; `tools:PREFIX*` the tools whose name starts
//!   with PREFIX; `tools:*` every tool except the administrative ones. NAME
//!   is the tool's own name at the server that runs it, whatever a gateway
//!   renamed it to.
//! - `resources:URI` reads or watches one resource; `resources:PREFIX*` and
//!   `resources:*` likewise.
//! - `metrics` reads the Prometheus endpoint.
//! - `admin` does everything, including what changes the node: keys,
//!   bridges, settings, the model store, scaling, power modes.
//!
//! Which tools are administrative is said by the tool itself ([`ToolAccess`],
//! carried in its `_meta`), so the flag travels with it through every
//! gateway and survives renaming.

use rmcp::model::Tool;
use serde::{Deserialize, Serialize};

pub use jetsonmind_contract::access::{ACCESS_META_KEY, AccessLevel};

/// Every scope a server understands, for `scopes_supported`.
pub const KNOWN_SCOPES: &[&str] = &["tools:*", "resources:*", "metrics", "admin"];

/// What a call of a tool is authorized on: the tool's own name where it
/// runs, and its access level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolAccess {
    pub name: String,
    pub level: AccessLevel,
}

impl ToolAccess {
    /// An ordinary tool: what a name is checked as when its server does not
    /// say more (it may then refuse or check the call itself).
    pub fn scoped(name: &str) -> Self {
        Self {
            name: name.to_string(),
            level: AccessLevel::Scoped,
        }
    }

    pub fn of(tool: &Tool) -> Self {
        Self {
            name: tool.name.to_string(),
            level: AccessLevel::of(tool),
        }
    }

    /// The scope that grants it.
    pub fn scope(&self) -> String {
        tool_scope(&self.name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scopes(Vec<String>);

impl Scopes {
    pub fn new(scopes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(scopes.into_iter().map(Into::into).collect())
    }

    /// Every scope: a caller when authentication is off.
    pub fn all() -> Self {
        Self::new(["admin"])
    }

    /// A space-separated list (the OAuth `scope` claim).
    pub fn parse(list: &str) -> Self {
        Self::new(list.split_whitespace())
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn is_admin(&self) -> bool {
        self.0.iter().any(|s| s == "admin")
    }

    /// Whether these scopes grant `required` (itself a scope, never a pattern).
    pub fn grants(&self, required: &str) -> bool {
        self.is_admin() || self.0.iter().any(|granted| covers(granted, required))
    }

    /// Whether these scopes allow calling the tool `access` describes.
    pub fn may_call(&self, access: &ToolAccess) -> bool {
        let required = access.scope();
        match access.level {
            AccessLevel::Anyone => true,
            AccessLevel::Scoped => self.grants(&required),
            // A wildcard never reaches an administrative tool.
            AccessLevel::Admin => self.is_admin() || self.0.contains(&required),
        }
    }

    pub fn may_read(&self, uri: &str) -> bool {
        self.grants(&resource_scope(uri))
    }
}

pub fn tool_scope(tool: &str) -> String {
    format!("tools:{tool}")
}

pub fn resource_scope(uri: &str) -> String {
    format!("resources:{uri}")
}

fn covers(granted: &str, required: &str) -> bool {
    match granted.strip_suffix('*') {
        Some(prefix) => required.starts_with(prefix),
        None => granted == required,
    }
}

/// Checks a scope someone wants to grant: a known form, so a typo is an
/// error instead of a key that silently grants nothing.
pub fn check_grantable(scope: &str) -> Result<(), String> {
    let valid = matches!(scope, "admin" | "metrics")
        || scope
            .strip_prefix("tools:")
            .or_else(|| scope.strip_prefix("resources:"))
            .is_some_and(|rest| !rest.is_empty());
    match valid {
        true => Ok(()),
        false => Err(format!(
            "unknown scope `{scope}`: use tools:NAME, tools:*, resources:URI, resources:*, metrics or admin"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, level: AccessLevel) -> ToolAccess {
        ToolAccess {
            name: name.into(),
            level,
        }
    }

    #[test]
    fn wildcards_cover_prefixes_but_not_admin_tools() {
        let scopes = Scopes::new(["tools:*", "resources:jetson://system/*"]);
        assert!(scopes.may_call(&tool("text_generate", AccessLevel::Scoped)));
        assert!(!scopes.may_call(&tool("scale_cluster", AccessLevel::Admin)));
        assert!(
            !Scopes::new(["tools:scale*"]).may_call(&tool("scale_cluster", AccessLevel::Admin))
        );
        assert!(scopes.may_read("jetson://system/metrics"));
        assert!(!scopes.may_read("jetson://config/settings"));
        assert!(!scopes.grants("metrics"));
    }

    #[test]
    fn exact_scopes_and_admin() {
        let scopes = Scopes::parse("tools:text_generate tools:scale_cluster");
        assert!(scopes.may_call(&tool("text_generate", AccessLevel::Scoped)));
        assert!(scopes.may_call(&tool("scale_cluster", AccessLevel::Admin)));
        assert!(!scopes.may_call(&tool("code_complete", AccessLevel::Scoped)));
        assert!(Scopes::all().may_call(&tool("protocol_bridge", AccessLevel::Admin)));
        assert!(Scopes::all().grants("metrics"));
        assert!(!Scopes::default().may_call(&tool("text_generate", AccessLevel::Scoped)));
        assert!(Scopes::default().may_call(&tool("handle_auth", AccessLevel::Anyone)));
    }

    #[test]
    fn a_renamed_tool_keeps_its_level() {
        let plain = Tool::new("update_settings", "", rmcp::model::JsonObject::new());
        assert_eq!(AccessLevel::of(&plain), AccessLevel::Scoped);
        let admin = AccessLevel::Admin.mark(plain.clone());
        assert_eq!(AccessLevel::of(&admin), AccessLevel::Admin);
        // Renamed by a gateway, still administrative.
        let mut renamed: Tool =
            serde_json::from_value(serde_json::to_value(&admin).unwrap()).unwrap();
        renamed.name = "data_update_settings".into();
        assert_eq!(ToolAccess::of(&renamed).level, AccessLevel::Admin);
    }

    #[test]
    fn only_known_forms_can_be_granted() {
        for ok in [
            "admin",
            "metrics",
            "tools:*",
            "tools:text_generate",
            "resources:*",
        ] {
            assert!(check_grantable(ok).is_ok(), "{ok}");
        }
        for bad in ["tool:x", "tools:", "everything", ""] {
            assert!(check_grantable(bad).is_err(), "{bad}");
        }
    }
}
