//! The gateway `top` reads, as an MCP client over Streamable HTTP: the
//! same resources and tools any client uses, authorized as the key given.

use rmcp::model::{CallToolRequestParams, ReadResourceRequestParams, ResourceContents};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

use crate::TopError;
use jetsonmind_figures::Snapshot;

use jetsonmind_contract::resources::{
    PERFORMANCE_ANALYTICS as ANALYTICS, SYSTEM_METRICS as METRICS,
};

pub struct Gateway {
    client: RunningService<RoleClient, ()>,
}

impl Gateway {
    /// An MCP session with the gateway at `url`, sending `bearer` if given.
    pub async fn connect(url: &str, bearer: Option<String>) -> Result<Self, TopError> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(url);
        if let Some(token) = bearer {
            config = config.auth_header(token);
        }
        let client = ()
            .serve(StreamableHttpClientTransport::from_config(config))
            .await
            .map_err(|e| TopError::Gateway(format!("cannot connect to {url}: {e}")))?;
        Ok(Self { client })
    }

    /// Every figure `top` shows, read now.
    pub async fn snapshot(&self) -> Result<Snapshot, TopError> {
        let (metrics, health, analytics) = tokio::try_join!(
            self.resource(METRICS),
            self.tool("monitor_health", json!({})),
            self.resource(ANALYTICS),
        )?;
        Ok(Snapshot::read(&metrics, &health, &analytics))
    }

    /// Unload `model` from every replica holding it (an administrative
    /// tool: the key must allow it); what the control server said.
    pub async fn unload(&self, model: &str) -> Result<String, TopError> {
        let arguments = json!({"action": "unload", "model": model});
        let result = self.tool("manage_resources", arguments).await?;
        Ok(result["message"]
            .as_str()
            .map_or_else(|| format!("unloaded {model}"), str::to_string))
    }

    async fn resource(&self, uri: &str) -> Result<Value, TopError> {
        let read = self
            .client
            .peer()
            .read_resource(ReadResourceRequestParams::new(uri))
            .await
            .map_err(|e| TopError::Gateway(format!("{uri}: {e}")))?;
        match read.contents.first() {
            Some(ResourceContents::TextResourceContents { text, .. }) => serde_json::from_str(text)
                .map_err(|e| TopError::Gateway(format!("{uri} is not JSON: {e}"))),
            _ => Err(TopError::Gateway(format!("{uri} has no text"))),
        }
    }

    async fn tool(&self, name: &'static str, arguments: Value) -> Result<Value, TopError> {
        let arguments = arguments.as_object().cloned().unwrap_or_default();
        let result = self
            .client
            .peer()
            .call_tool(CallToolRequestParams::new(name).with_arguments(arguments))
            .await
            .map_err(|e| TopError::Gateway(format!("{name}: {e}")))?;
        let text = || {
            result
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        if result.is_error == Some(true) {
            return Err(TopError::Gateway(format!("{name}: {}", text())));
        }
        Ok(result.structured_content.clone().unwrap_or(Value::Null))
    }
}
