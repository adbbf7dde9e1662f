//! Input schemas of the gateway's own tools.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionAction {
    /// Every federated backend with its state and what it offers.
    List,
    /// Close one client connection (`id`).
    Close,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageConnectionsArgs {
    pub action: ConnectionAction,
    /// Connection id, for `close`.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequestArgs {
    /// Tool name as listed by this gateway.
    pub tool: String,
    /// The arguments to check against the tool's input schema.
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AggregateStrategy {
    /// The first successful answer.
    First,
    /// Every answer.
    All,
    /// The answer most replicas agree on.
    Majority,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateResponsesArgs {
    /// Tool to fan out across replicas.
    pub tool: String,
    #[serde(default)]
    pub arguments: Map<String, Value>,
    pub strategy: AggregateStrategy,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthAction {
    /// Who the caller is and which scopes it holds.
    Whoami,
    /// Create an API key with `scopes`.
    CreateKey,
    /// Revoke the API key `key_id`.
    RevokeKey,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandleAuthArgs {
    pub action: AuthAction,
    pub scopes: Option<Vec<String>>,
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtocolBridgeArgs {
    /// Streamable HTTP URL of the MCP server to bridge to.
    pub url: String,
    /// Name to federate it under.
    pub name: String,
}
