//! The data server's prompt `explain_device_health` and its completions
//! (the `name` of `jetson://models/{name}`).

use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    ArgumentInfo, CompletionInfo, ContentBlock, GetPromptResult, Prompt, PromptMessage,
    ReadResourceResult, Reference, Role,
};

pub const EXPLAIN_DEVICE_HEALTH: &str = "explain_device_health";
pub const MODEL_TEMPLATE: &str = "jetson://models/{name}";

pub fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::new(
            EXPLAIN_DEVICE_HEALTH,
            Some(
                "Explain this device's health from its current metrics (jetson://system/metrics, \
                 embedded): CPU, memory, temperatures, power, anything abnormal.",
            ),
            None,
        )
        .with_title("Explain this device's health"),
    ]
}

/// The prompt's messages around a reading of the metrics resource: the
/// reading itself, embedded as the resource it is, then the question.
pub fn explain_device_health(metrics: ReadResourceResult) -> Result<GetPromptResult, McpError> {
    let reading = metrics.contents.into_iter().next().ok_or_else(|| {
        McpError::internal_error("jetson://system/metrics gave no contents", None)
    })?;
    let question = "Above is the current reading of this device's system metrics \
                    (jetson://system/metrics, JSON). Explain the device's health to its \
                    operator: CPU load and frequencies, memory and swap, temperatures, power \
                    and GPU where reported, and storage. Point out anything abnormal or close \
                    to a limit and what to do about it; say which readings are missing.";
    Ok(GetPromptResult::new(vec![
        PromptMessage::new(Role::User, ContentBlock::resource(reading)),
        PromptMessage::new_text(Role::User, question),
    ])
    .with_description("This device's health, from its current metrics"))
}

/// `name` of the model template completes to the store's models.
pub fn complete(
    reference: &Reference,
    argument: &ArgumentInfo,
    models: impl FnOnce() -> Result<Vec<String>, McpError>,
) -> Result<CompletionInfo, McpError> {
    if reference.as_resource_uri() != Some(MODEL_TEMPLATE) || argument.name != "name" {
        return Ok(CompletionInfo::default());
    }
    Ok(jetsonmind_core::completion(models()?, &argument.value))
}
