//! Resource reads (failing over) and subscriptions (on the primary only).

use std::collections::BTreeSet;

use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::ReadResourceResult;

use super::Fleet;
use crate::link::LinkError;

impl Fleet {
    /// Read from the primary, failing over to the next replica up when the
    /// primary's connection breaks.
    pub async fn read_resource(&self, uri: &str) -> Result<ReadResourceResult, McpError> {
        let mut last_error = None;
        for replica in self.replicas().into_iter().filter(|r| r.link.is_up()) {
            match replica.link.read_resource(uri).await {
                Ok(result) => return Ok(result),
                Err(LinkError::Refused(error)) => return Err(error),
                Err(LinkError::Cancelled) => {
                    return Err(McpError::internal_error("cancelled", None));
                }
                Err(LinkError::Unavailable(e) | LinkError::Broken(e)) => {
                    last_error = Some(format!("{}: {e}", replica.name()));
                }
            }
        }
        Err(McpError::internal_error(
            format!(
                "`{}` is unavailable{}",
                self.name,
                last_error.map(|e| format!(" ({e})")).unwrap_or_default()
            ),
            None,
        ))
    }

    /// Hold exactly `wanted` subscriptions, on the primary only.
    pub async fn sync_subscriptions(&self, wanted: &BTreeSet<String>) {
        let primary = self.primary().map(|p| p.link.id());
        let none = BTreeSet::new();
        for replica in self.replicas() {
            let uris = match Some(replica.link.id()) == primary {
                true => wanted,
                false => &none,
            };
            replica.link.sync_subscriptions(uris).await;
        }
    }
}
