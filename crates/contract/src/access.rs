//! A tool's flags: who may call it beyond holding its scope, and whether a
//! call may run twice (what failover needs to know).
//!
//! The access level rides in the tool's `_meta` (`jetsonmind/access`), the
//! others in its MCP annotations, so a gateway that renames the tool passes
//! every flag on unchanged.

use rmcp::model::{MetaObject, Tool};
use serde_json::Value;

/// The `_meta` key of a tool's access level.
pub const ACCESS_META_KEY: &str = "jetsonmind/access";

/// Who may call a tool, beyond holding its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLevel {
    /// `tools:NAME`, a wildcard over it, or `admin`.
    #[default]
    Scoped,
    /// Changes the node or who may use it: `tools:NAME` or `admin`, never a wildcard.
    Admin,
    /// Anyone authenticated; the tool checks finer rights itself (`whoami`).
    Anyone,
}

impl AccessLevel {
    fn as_meta(self) -> Option<&'static str> {
        match self {
            AccessLevel::Scoped => None,
            AccessLevel::Admin => Some("admin"),
            AccessLevel::Anyone => Some("anyone"),
        }
    }

    /// The level a tool declares; an unknown value is treated as admin, the
    /// safe reading of a flag we do not understand.
    pub fn of(tool: &Tool) -> Self {
        let declared = tool.meta.as_ref().and_then(|m| m.0.get(ACCESS_META_KEY));
        match declared.and_then(Value::as_str) {
            None => AccessLevel::Scoped,
            Some("anyone") => AccessLevel::Anyone,
            Some(_) => AccessLevel::Admin,
        }
    }

    /// `tool`, declaring this level in its `_meta`.
    pub fn mark(self, mut tool: Tool) -> Tool {
        if let Some(value) = self.as_meta() {
            tool.meta
                .get_or_insert_with(MetaObject::new)
                .0
                .insert(ACCESS_META_KEY.into(), Value::String(value.into()));
        }
        tool
    }
}

/// Everything a router needs to know of a tool, read from the tool itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ToolFlags {
    pub access: AccessLevel,
    /// Calling it twice has the effect of calling it once.
    pub idempotent: bool,
    /// It changes nothing.
    pub read_only: bool,
}

impl ToolFlags {
    pub fn of(tool: &Tool) -> Self {
        let hint = |read: fn(&rmcp::model::ToolAnnotations) -> Option<bool>| {
            tool.annotations.as_ref().and_then(read).unwrap_or(false)
        };
        Self {
            access: AccessLevel::of(tool),
            idempotent: hint(|a| a.idempotent_hint),
            read_only: hint(|a| a.read_only_hint),
        }
    }

    /// Whether a call that may have started on a replica that then failed
    /// may be sent to another one.
    pub fn may_run_twice(&self) -> bool {
        self.idempotent || self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ToolAnnotations;

    fn tool() -> Tool {
        Tool::new("t", "a tool", std::sync::Arc::new(Default::default()))
    }

    #[test]
    fn levels_round_trip_through_meta_and_unknown_ones_read_as_admin() {
        for level in [AccessLevel::Scoped, AccessLevel::Admin, AccessLevel::Anyone] {
            assert_eq!(AccessLevel::of(&level.mark(tool())), level);
        }
        let mut odd = tool();
        odd.meta
            .get_or_insert_with(MetaObject::new)
            .0
            .insert(ACCESS_META_KEY.into(), Value::String("superuser".into()));
        assert_eq!(AccessLevel::of(&odd), AccessLevel::Admin);
    }

    #[test]
    fn only_idempotent_or_read_only_tools_may_run_twice() {
        assert!(!ToolFlags::of(&tool()).may_run_twice());
        let mut read = tool();
        read.annotations = Some(ToolAnnotations::new().read_only(true));
        assert!(ToolFlags::of(&read).may_run_twice());
        let mut again = tool();
        again.annotations = Some(ToolAnnotations::new().idempotent(true));
        let flags = ToolFlags::of(&AccessLevel::Admin.mark(again));
        assert!(flags.may_run_twice() && flags.access == AccessLevel::Admin);
    }
}
