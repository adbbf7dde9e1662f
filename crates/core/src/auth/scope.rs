//! Scopes: what a credential may do.
//!
//! - `tools:NAME` calls one tool; `tools:PREFIX*` the tools whose name starts
//!   with PREFIX; `tools:*` every tool except the administrative ones.
//! - `resources:URI` reads or watches one resource; `resources:PREFIX*` and
//!   `resources:*` likewise.
//! - `metrics` reads the Prometheus endpoint.
//! - `admin` does everything, including what changes the node: keys,
//!   bridges, settings, the model store, scaling, power modes.

use serde::Serialize;

/// Tools that change the node or who may use it: `tools:*` does not cover
/// them; `admin` or their own `tools:NAME` does.
pub const ADMIN_TOOLS: &[&str] = &[
    "handle_auth",
    "protocol_bridge",
    "manage_connections",
    "update_settings",
    "manage_models",
    "manage_resources",
    "load_model",
    "unload_model",
    "scale_cluster",
    "optimize_system",
];

/// Every scope a server understands, for `scopes_supported`.
pub const KNOWN_SCOPES: &[&str] = &["tools:*", "resources:*", "metrics", "admin"];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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

    pub fn may_call(&self, tool: &str) -> bool {
        self.grants(&tool_scope(tool))
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
    if granted == required {
        return true;
    }
    let Some(prefix) = granted.strip_suffix('*') else {
        return false;
    };
    if !required.starts_with(prefix) {
        return false;
    }
    // A wildcard over tools never reaches the administrative ones.
    match required.strip_prefix("tools:") {
        Some(tool) => !ADMIN_TOOLS.contains(&tool),
        None => true,
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

    #[test]
    fn wildcards_cover_prefixes_but_not_admin_tools() {
        let scopes = Scopes::new(["tools:*", "resources:jetson://system/*"]);
        assert!(scopes.may_call("text_generate"));
        assert!(!scopes.may_call("scale_cluster"));
        assert!(!scopes.may_call("handle_auth"));
        assert!(scopes.may_read("jetson://system/metrics"));
        assert!(!scopes.may_read("jetson://config/settings"));
        assert!(!scopes.grants("metrics"));
    }

    #[test]
    fn exact_scopes_and_admin() {
        let scopes = Scopes::parse("tools:text_generate tools:scale_cluster");
        assert!(scopes.may_call("text_generate"));
        assert!(scopes.may_call("scale_cluster"));
        assert!(!scopes.may_call("code_complete"));
        assert!(Scopes::all().may_call("protocol_bridge"));
        assert!(Scopes::all().grants("metrics"));
        assert!(!Scopes::default().may_call("text_generate"));
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
