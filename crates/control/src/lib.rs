//! The control server: which compute replica serves what, model placement
//! within the memory budget, health, power modes and scaling.

pub mod schema;

use std::sync::Arc;

use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::{Catalog, McpUnit, ToolCall, UnitIdentity, not_available, tool_from};

use crate::schema::*;

pub struct ControlServer {
    catalog: Arc<Catalog>,
}

impl Default for ControlServer {
    fn default() -> Self {
        Self {
            catalog: Arc::new(catalog()),
        }
    }
}

fn catalog() -> Catalog {
    let tools = vec![
        tool_from::<RouteRequestArgs>(
            "route_request",
            "Pick the compute replica for a call (model affinity, load, latency, temperature) and say why.",
        ),
        tool_from::<OptimizeSystemArgs>(
            "optimize_system",
            "Report or set the power mode and clocks of this device (nvpmodel / jetson_clocks on Jetson).",
        ),
        tool_from::<ManageResourcesArgs>(
            "manage_resources",
            "List, load or unload models within the memory budget.",
        ),
        tool_from::<MonitorHealthArgs>(
            "monitor_health",
            "Health of the compute replicas: liveness, queue depth, memory, temperature, latency.",
        ),
        tool_from::<ScaleClusterArgs>(
            "scale_cluster",
            "Show, add or remove compute replicas on this machine.",
        ),
    ];
    Catalog::new(tools, Vec::new(), Vec::new()).expect("the control catalog is valid")
}

impl McpUnit for ControlServer {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: "jetsonmind-control",
            title: "JetsonMind control",
            instructions: "The control plane: routing, model placement, health, power modes and scaling \
                           of the compute replicas.",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.clone()
    }

    async fn call_tool(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let reason = match call.name.as_str() {
            "route_request" | "monitor_health" => "the replica registry is not built yet",
            "manage_resources" => "model placement is not built yet",
            "optimize_system" => "power-mode control is not built yet",
            "scale_cluster" => "replica scaling is not built yet",
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool: {other}"),
                    None,
                ));
            }
        };
        Ok(not_available(&call.name, reason))
    }
}
