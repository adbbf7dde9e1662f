//! Input schemas of the gateway's own tools.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionAction {
    /// Every federated backend with its replicas, and the client connections.
    List,
    /// Close one client connection (`id`).
    Close,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManageConnectionsArgs {
    pub action: ConnectionAction,
    /// Connection id (from `list`), for `close`.
    pub id: Option<u64>,
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
    /// Create an API key with `scopes` (needs `admin`); the key is shown once.
    CreateKey,
    /// The API keys: ids, names, scopes, never the keys (needs `admin`).
    ListKeys,
    /// Revoke the API key `key_id` (needs `admin`).
    RevokeKey,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandleAuthArgs {
    pub action: AuthAction,
    /// For `create_key`: what the key may do (tools:NAME, tools:*,
    /// resources:URI, resources:*, metrics, admin).
    pub scopes: Option<Vec<String>>,
    /// For `create_key`: who or what will use it.
    pub name: Option<String>,
    /// For `revoke_key`.
    pub key_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BridgeAction {
    /// Federate a server: `url` (Streamable HTTP) or `command` (stdio).
    Add,
    /// The servers bridged at run time.
    List,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtocolBridgeArgs {
    pub action: BridgeAction,
    /// Name to federate it under (letters, digits, `-`).
    pub name: Option<String>,
    /// Streamable HTTP URL of the MCP server to bridge to.
    pub url: Option<String>,
    /// Instead of `url`: a program and its arguments that speaks MCP on
    /// stdin/stdout; it is started and bridged to this gateway's clients.
    pub command: Option<Vec<String>>,
    /// Environment variable of this gateway holding a bearer token for `url`.
    pub token_env: Option<String>,
}
