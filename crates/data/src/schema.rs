//! Input schemas of the data server's tools.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettingsArgs {
    /// Sections of keys to change, shaped like the TOML config file:
    /// `{"cache": {"ttl_secs": 60}}`. A `null` value resets a key to its default.
    pub settings: Map<String, Value>,
    /// Only check the settings; save nothing.
    pub dry_run: Option<bool>,
    /// In a cluster: the revision of the settings these changes were made
    /// from (`scope.revision` of jetson://config/settings). If another node
    /// changed one of these keys since, nothing is written and the error
    /// names the key. Default: the revision this node has applied.
    pub if_revision: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelAction {
    /// Every model in the store, with its metadata.
    List,
    /// Re-hash a model's files and compare them with their recorded digests.
    Verify,
    /// Take a model out of the store (its files go unless another model shares them).
    Remove,
    /// In a cluster: upload a model of this node's store to the cluster's
    /// model registry, from which any node pulls it when a call needs it.
    Publish,
    /// In a cluster: withdraw a model from the cluster's registry (this
    /// node's store keeps it).
    Unpublish,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageModelsArgs {
    pub action: ModelAction,
    /// The model's name, for all but `list`.
    pub name: Option<String>,
}
