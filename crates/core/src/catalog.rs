//! A server's offer: tools, resources and resource templates, with the tool
//! argument validators compiled once when the catalog is built.

use std::collections::HashMap;
use std::sync::Arc;

use rmcp::model::{JsonObject, Resource, ResourceTemplate, Tool};
use serde_json::Value;

use crate::CoreError;

pub struct Catalog {
    tools: Vec<Tool>,
    validators: HashMap<String, jsonschema::Validator>,
    resources: Vec<Resource>,
    templates: Vec<ResourceTemplate>,
}

impl Catalog {
    pub fn new(
        tools: Vec<Tool>,
        resources: Vec<Resource>,
        templates: Vec<ResourceTemplate>,
    ) -> Result<Self, CoreError> {
        let mut validators = HashMap::with_capacity(tools.len());
        for tool in &tools {
            let schema = Value::Object(tool.input_schema.as_ref().clone());
            let validator =
                jsonschema::validator_for(&schema).map_err(|e| CoreError::InvalidToolSchema {
                    tool: tool.name.to_string(),
                    reason: e.to_string(),
                })?;
            if validators
                .insert(tool.name.to_string(), validator)
                .is_some()
            {
                return Err(CoreError::DuplicateTool(tool.name.to_string()));
            }
        }
        Ok(Self {
            tools,
            validators,
            resources,
            templates,
        })
    }

    pub fn empty() -> Self {
        Self::new(Vec::new(), Vec::new(), Vec::new()).expect("an empty catalog is valid")
    }

    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn templates(&self) -> &[ResourceTemplate] {
        &self.templates
    }

    /// Check `arguments` against the tool's input schema.
    ///
    /// Returns every violation, each with the JSON pointer of the offending
    /// value, so a model calling the tool can correct all of them at once.
    /// `None` when the tool is unknown.
    pub fn check_arguments(&self, tool: &str, arguments: &JsonObject) -> Option<Vec<String>> {
        let validator = self.validators.get(tool)?;
        let instance = Value::Object(arguments.clone());
        Some(
            validator
                .iter_errors(&instance)
                .map(|error| {
                    let at = error.instance_path().to_string();
                    if at.is_empty() {
                        error.to_string()
                    } else {
                        format!("{at}: {error}")
                    }
                })
                .collect(),
        )
    }
}

/// Build a tool whose input schema comes from a `schemars` type.
pub fn tool_from<T: schemars::JsonSchema + 'static>(
    name: &'static str,
    description: &'static str,
) -> Tool {
    let schema = rmcp::handler::server::common::schema_for_type::<T>();
    Tool::new(name, description, schema)
}

/// Shareable handle to a catalog that can be swapped while being read
/// (the gateway's merged view changes as backends come and go).
pub type SharedCatalog = Arc<std::sync::RwLock<Arc<Catalog>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Args {
        /// Prompt text.
        prompt: String,
        #[schemars(range(min = 1, max = 10))]
        count: Option<u32>,
    }

    fn catalog() -> Catalog {
        Catalog::new(vec![tool_from::<Args>("t", "a tool")], vec![], vec![]).unwrap()
    }

    fn obj(v: Value) -> JsonObject {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn valid_arguments_pass() {
        let errors = catalog()
            .check_arguments("t", &obj(json!({"prompt": "hi", "count": 3})))
            .unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn violations_name_their_place() {
        let errors = catalog()
            .check_arguments("t", &obj(json!({"count": 99})))
            .unwrap();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("prompt")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("/count")), "{errors:?}");
    }

    #[test]
    fn unknown_tool_is_none_and_duplicates_are_refused() {
        assert!(
            catalog()
                .check_arguments("nope", &JsonObject::new())
                .is_none()
        );
        let dup = Catalog::new(
            vec![tool_from::<Args>("t", "a"), tool_from::<Args>("t", "b")],
            vec![],
            vec![],
        );
        assert!(matches!(dup, Err(CoreError::DuplicateTool(_))));
    }
}
