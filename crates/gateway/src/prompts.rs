//! Federated prompts and completions: each goes to the backend that offers
//! the prompt or template, under the backend's own name, on behalf of the
//! caller (so the backend checks what the prompt embeds against the caller).

use jetsonmind_core::auth::{Principal, delegate};
use jetsonmind_core::rmcp::model::{
    CompleteRequestParams, CompletionInfo, GetPromptRequestParams, GetPromptResult, JsonObject,
    Reference,
};
use jetsonmind_core::rmcp::service::Peer;
use jetsonmind_core::rmcp::{ErrorData as McpError, RoleClient, ServiceError};
use jetsonmind_core::unit::unknown_prompt;

use crate::Gateway;
use crate::view::Route;

impl Gateway {
    pub(crate) async fn forward_get_prompt(
        &self,
        name: &str,
        arguments: JsonObject,
        caller: &Principal,
    ) -> Result<GetPromptResult, McpError> {
        let route = self.current().prompt_routes.get(name).cloned();
        let route = route.ok_or_else(|| unknown_prompt(name))?;
        let (backend, peer) = self.primary_peer(&route)?;
        let mut params = GetPromptRequestParams::new(route.original).with_arguments(arguments);
        delegate(&mut params.meta, caller);
        peer.get_prompt(params)
            .await
            .map_err(|e| self.upstream_error(&backend, e))
    }

    /// A prompt reference goes to the prompt's backend, a template reference
    /// to the template's; either under the name the backend gave it.
    pub(crate) async fn forward_complete(
        &self,
        request: &CompleteRequestParams,
        caller: &Principal,
    ) -> Result<CompletionInfo, McpError> {
        let view = self.current();
        let (route, reference) = match &request.r#ref {
            Reference::Prompt(prompt) => {
                let route = view.prompt_routes.get(&prompt.name).cloned();
                let route = route.ok_or_else(|| unknown_prompt(&prompt.name))?;
                let reference = Reference::for_prompt(route.original.clone());
                (route, reference)
            }
            Reference::Resource(template) => {
                let Some(route) = view.template_route(&template.uri) else {
                    return Ok(CompletionInfo::default());
                };
                let reference = Reference::for_resource(route.original.clone());
                (route, reference)
            }
            _ => return Ok(CompletionInfo::default()),
        };
        let (backend, peer) = self.primary_peer(&route)?;
        let mut params = CompleteRequestParams::new(reference, request.argument.clone());
        params.context = request.context.clone();
        delegate(&mut params.meta, caller);
        let result = peer.complete(params).await;
        result
            .map(|r| r.completion)
            .map_err(|e| self.upstream_error(&backend, e))
    }

    /// The backend's name and a peer of its first live replica.
    fn primary_peer(&self, route: &Route) -> Result<(String, Peer<RoleClient>), McpError> {
        let backend = self.backend(route.backend);
        let name = backend.as_ref().map(|b| b.name.clone()).unwrap_or_default();
        let client = backend
            .and_then(|b| b.primary())
            .and_then(|replica| replica.upstream.client());
        match client {
            Some(client) => Ok((name, client.peer().clone())),
            None => Err(McpError::internal_error(
                format!("`{name}` is unavailable"),
                None,
            )),
        }
    }

    /// The backend's own refusal as it is; a broken connection as the
    /// backend being unavailable (the health loop takes it out of the view).
    fn upstream_error(&self, backend: &str, error: ServiceError) -> McpError {
        match error {
            ServiceError::McpError(error) => error,
            other => {
                McpError::internal_error(format!("`{backend}` is unavailable ({other})"), None)
            }
        }
    }
}
