//! The compute server's prompts: `summarize`, which has the client's model
//! summarize a text with a local model through `text_generate`.

use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    ArgumentInfo, CompletionInfo, GetPromptResult, JsonObject, Prompt, PromptArgument,
    PromptMessage, Reference, Role,
};
use jetsonmind_core::unit::unknown_prompt;
use jetsonmind_store::ModelStore;

pub const SUMMARIZE: &str = "summarize";

/// Summaries longer than this many words are not summaries.
const MAX_WORDS_LIMIT: u32 = 10_000;

pub fn prompts() -> Vec<Prompt> {
    let arguments = vec![
        PromptArgument::new("text")
            .with_description("The text to summarize.")
            .with_required(true),
        PromptArgument::new("model")
            .with_description(
                "A model of the store (`jetson://models/available`); the default model when absent.",
            )
            .with_required(false),
        PromptArgument::new("max_words")
            .with_description("The longest summary wanted, in words.")
            .with_required(false),
    ];
    vec![
        Prompt::new(
            SUMMARIZE,
            Some("Summarize a text with a model running on this device (the text_generate tool)."),
            Some(arguments),
        )
        .with_title("Summarize with the local model"),
    ]
}

/// The messages of `name`, its arguments checked: `text` given, `model` a
/// GGUF model of the store, `max_words` a positive whole number.
pub fn get(
    name: &str,
    arguments: &JsonObject,
    store: &ModelStore,
) -> Result<GetPromptResult, McpError> {
    if name != SUMMARIZE {
        return Err(unknown_prompt(name));
    }
    let text = string_argument(arguments, "text")?
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            McpError::invalid_params("summarize needs `text`: the text to summarize", None)
        })?;
    let model = string_argument(arguments, "model")?;
    if let Some(model) = &model {
        check_model(model, store)?;
    }
    let max_words = string_argument(arguments, "max_words")?
        .map(|words| parse_max_words(&words))
        .transpose()?;
    let message = summarize_request(&text, model.as_deref(), max_words);
    Ok(
        GetPromptResult::new(vec![PromptMessage::new_text(Role::User, message)])
            .with_description("Summarize a text with this device's local model"),
    )
}

/// `model` of `summarize` completes to the store's GGUF models.
pub fn complete(
    reference: &Reference,
    argument: &ArgumentInfo,
    store: &ModelStore,
) -> Result<CompletionInfo, McpError> {
    if reference.as_prompt_name() != Some(SUMMARIZE) || argument.name != "model" {
        return Ok(CompletionInfo::default());
    }
    Ok(jetsonmind_core::completion(
        gguf_models(store)?,
        &argument.value,
    ))
}

fn summarize_request(text: &str, model: Option<&str>, max_words: Option<u32>) -> String {
    let model = match model {
        Some(model) => format!("with `\"model\": \"{model}\"`"),
        None => "without a `model` (the server's default model)".to_string(),
    };
    let length = match max_words {
        Some(words) => format!("in at most {words} words"),
        None => "briefly".to_string(),
    };
    format!(
        "Summarize the text below {length}. Do it with the local model: call the \
         `text_generate` tool {model}, passing in `prompt` an instruction to summarize \
         {length} followed by the text. Answer with the summary it returns, tidied if \
         needed, and nothing else.\n\n---\n{text}"
    )
}

/// Prompt arguments are strings (MCP); anything else is the client's mistake.
fn string_argument(arguments: &JsonObject, name: &str) -> Result<Option<String>, McpError> {
    match arguments.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(McpError::invalid_params(
            format!("prompt argument `{name}` must be a string"),
            None,
        )),
    }
}

fn parse_max_words(words: &str) -> Result<u32, McpError> {
    match words.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_WORDS_LIMIT).contains(&n) => Ok(n),
        _ => Err(McpError::invalid_params(
            format!(
                "`max_words` must be a whole number from 1 to {MAX_WORDS_LIMIT}, not `{words}`"
            ),
            None,
        )),
    }
}

fn check_model(model: &str, store: &ModelStore) -> Result<(), McpError> {
    let known = gguf_models(store)?;
    match known.iter().any(|m| m == model) {
        true => Ok(()),
        false => Err(McpError::invalid_params(
            format!(
                "no GGUF model `{model}` in the model store; it has: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
            None,
        )),
    }
}

/// The names of the models `text_generate` can run.
fn gguf_models(store: &ModelStore) -> Result<Vec<String>, McpError> {
    let models = store
        .list()
        .map_err(|e| McpError::internal_error(format!("cannot list the model store: {e}"), None))?;
    Ok(models
        .into_iter()
        .filter(|m| m.format == "gguf")
        .map(|m| m.name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_words_must_be_a_positive_whole_number() {
        assert_eq!(parse_max_words(" 50 ").unwrap(), 50);
        for bad in ["0", "-3", "ten", "1.5", "10001"] {
            assert!(parse_max_words(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_names_the_tool_the_model_and_the_length() {
        let with_model = summarize_request("Jetsons are small.", Some("tiny"), Some(20));
        assert!(with_model.contains("`text_generate`"));
        assert!(with_model.contains("\"model\": \"tiny\""));
        assert!(with_model.contains("at most 20 words"));
        assert!(with_model.ends_with("Jetsons are small."));
        assert!(summarize_request("x", None, None).contains("default model"));
    }
}
