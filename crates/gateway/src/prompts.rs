//! Federated prompts and completions: each goes to the backend that offers
//! the prompt or template, under the backend's own name, on behalf of the
//! caller (so the backend checks what the prompt embeds against the caller).

use jetsonmind_control::fleet::Replica;
use jetsonmind_control::link::LinkError;
use jetsonmind_core::auth::{Principal, delegate};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CompleteRequestParams, CompletionInfo, GetPromptRequestParams, GetPromptResult, JsonObject,
    Reference,
};
use jetsonmind_core::unit::unknown_prompt;
use std::sync::Arc;

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
        let (backend, primary) = self.primary(&route)?;
        let mut params = GetPromptRequestParams::new(route.original).with_arguments(arguments);
        delegate(&mut params.meta, caller);
        primary
            .link
            .get_prompt(params)
            .await
            .map_err(|e| upstream_error(&backend, e))
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
        let (backend, primary) = self.primary(&route)?;
        let mut params = CompleteRequestParams::new(reference, request.argument.clone());
        params.context = request.context.clone();
        delegate(&mut params.meta, caller);
        let result = primary.link.complete(params).await;
        result
            .map(|r| r.completion)
            .map_err(|e| upstream_error(&backend, e))
    }

    /// The backend's name and its first live replica.
    fn primary(&self, route: &Route) -> Result<(String, Arc<Replica>), McpError> {
        let backend = self.backend(route.backend);
        let name = backend.as_ref().map(|b| b.name.clone()).unwrap_or_default();
        match backend.and_then(|b| b.primary()) {
            Some(replica) => Ok((name, replica)),
            None => Err(McpError::internal_error(
                format!("`{name}` is unavailable"),
                None,
            )),
        }
    }
}

/// The backend's own refusal as it is; a broken connection as the backend
/// being unavailable (the health loop takes it out of the view).
fn upstream_error(backend: &str, error: LinkError) -> McpError {
    match error {
        LinkError::Refused(error) => error,
        LinkError::Cancelled => McpError::internal_error("cancelled", None),
        LinkError::Unavailable(e) | LinkError::Broken(e) => {
            McpError::internal_error(format!("`{backend}` is unavailable ({e})"), None)
        }
    }
}
