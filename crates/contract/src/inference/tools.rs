//! `text_generate` and `code_complete` as offered: their arguments, what an
//! absent argument means, and the tool definitions. Compute serves them on
//! this device; the control plane also serves them from an OpenAI-compatible
//! provider (`control::link::openai`), which must offer and read the same
//! tools, so they are written here once.

use rmcp::handler::server::common::schema_for_type;
use rmcp::model::{Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CODE_COMPLETE, TEXT_GENERATE};

/// Tokens generated when a call gives no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// The same, for `code_complete`.
pub const DEFAULT_CODE_MAX_TOKENS: u32 = 128;
/// Sampling when a call gives none.
pub const DEFAULT_TEMPERATURE: f32 = 0.7;
pub const DEFAULT_TOP_P: f32 = 0.95;
pub const DEFAULT_TOP_K: u32 = 40;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: ChatRole,
    pub content: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextGenerateArgs {
    /// Plain prompt; wrapped in the model's chat template as one user turn. Give this or `messages`.
    pub prompt: Option<String>,
    /// Chat turns, rendered with the model's own chat template. Give this or `prompt`.
    pub messages: Option<Vec<ChatMessage>>,
    /// Model id from `jetson://models/available`; the default model when absent.
    pub model: Option<String>,
    /// Most tokens to generate.
    #[schemars(range(min = 1, max = 8192))]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; 0 picks the most likely token every time.
    #[schemars(range(min = 0.0, max = 2.0))]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the smallest set of tokens whose probability sum reaches this.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[schemars(range(min = 0, max = 1000))]
    pub top_k: Option<u32>,
    /// Random seed: the same seed, prompt and parameters give the same text.
    pub seed: Option<u64>,
    /// Stop when any of these strings is generated.
    #[schemars(length(max = 16))]
    pub stop: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeCompleteArgs {
    /// Code before the cursor.
    pub code: String,
    /// Language name, e.g. `python`, `rust`.
    pub language: String,
    /// Other relevant code or notes (imports, the surrounding file).
    pub context: Option<String>,
    /// Code after the cursor, for fill-in-the-middle.
    pub suffix: Option<String>,
    #[schemars(range(min = 1, max = 4096))]
    pub max_tokens: Option<u32>,
    pub model: Option<String>,
}

impl TextGenerateArgs {
    /// The chat turns the call asks about: its `prompt` as one user turn, or
    /// its `messages`; an error says what is wrong with them.
    pub fn turns(&self) -> Result<Vec<(ChatRole, String)>, String> {
        let turns = match (&self.prompt, &self.messages) {
            (Some(prompt), None) => vec![(ChatRole::User, prompt.clone())],
            (None, Some(messages)) => messages
                .iter()
                .map(|m| (m.role, m.content.clone()))
                .collect(),
            (Some(_), Some(_)) => return Err("give `prompt` or `messages`, not both".into()),
            (None, None) => return Err("give `prompt` or `messages`".into()),
        };
        if turns.iter().all(|(_, text)| text.trim().is_empty()) {
            return Err("the prompt is empty".into());
        }
        Ok(turns)
    }

    /// `top_p`, or the default; 0 would keep no token at all.
    pub fn top_p_or_default(&self) -> Result<f32, String> {
        match self.top_p {
            Some(v) if v <= 0.0 => Err("top_p must be greater than 0".into()),
            Some(v) => Ok(v),
            None => Ok(DEFAULT_TOP_P),
        }
    }

    /// The stop strings; an empty one would stop before the first token.
    pub fn stop_strings(&self) -> Result<Vec<String>, String> {
        let stop = self.stop.clone().unwrap_or_default();
        if stop.iter().any(String::is_empty) {
            return Err("stop strings must not be empty".into());
        }
        Ok(stop)
    }
}

impl CodeCompleteArgs {
    /// Whether there is anything to complete.
    pub fn check(&self) -> Result<(), String> {
        let suffix = self.suffix.as_deref().unwrap_or("");
        if self.code.trim().is_empty() && suffix.trim().is_empty() {
            return Err("`code` is empty: there is nothing to complete".into());
        }
        Ok(())
    }
}

/// Inference reads its inputs and changes nothing: a call may run twice
/// (the control plane retries it on another replica when one dies).
fn inference(tool: Tool) -> Tool {
    tool.annotate(ToolAnnotations::new().read_only(true).idempotent(true))
}

pub fn text_generate_tool() -> Tool {
    inference(Tool::new(
        TEXT_GENERATE,
        "Generate text with a local language model from a prompt or chat messages.",
        schema_for_type::<TextGenerateArgs>(),
    ))
}

pub fn code_complete_tool() -> Tool {
    inference(Tool::new(
        CODE_COMPLETE,
        "Complete code at a point (fill-in-the-middle when the model supports it).",
        schema_for_type::<CodeCompleteArgs>(),
    ))
}
