//! The inference tools as other servers see them: the names the control
//! plane calls and routes by, the model a call names, what a generation's
//! progress notifications carry, and the text tools themselves ([`tools`]:
//! arguments and definitions; [`code`]: code completion asked of a chat
//! model), which compute and the control plane's providers both serve.

pub mod code;
pub mod tools;

pub use tools::{
    ChatMessage, ChatRole, CodeCompleteArgs, DEFAULT_CODE_MAX_TOKENS, DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, TextGenerateArgs, code_complete_tool,
    text_generate_tool,
};

use rmcp::model::{JsonObject, NumberOrString, ProgressNotificationParam, ProgressToken};
use serde::{Deserialize, Serialize};

pub const TEXT_GENERATE: &str = "text_generate";
pub const CODE_COMPLETE: &str = "code_complete";
/// Text, a picture and audio answered together (the OpenAI endpoint sends
/// chats with a picture to it).
pub const MULTI_MODAL_INFERENCE: &str = "multi_modal_inference";
pub const IMAGE_ANALYZE: &str = "image_analyze";
pub const AUDIO_PROCESS: &str = "audio_process";
pub const EMBED: &str = "embed";
pub const RERANK: &str = "rerank";
/// Load a model on one replica (`manage_resources` sends it to each).
pub const LOAD_MODEL: &str = "load_model";
pub const UNLOAD_MODEL: &str = "unload_model";

/// The argument that names the model an inference call runs on.
pub const MODEL_ARGUMENT: &str = "model";

/// The model a call of an inference tool names; the replica's default when
/// none (what routing's model affinity looks at).
pub fn model_named(arguments: &JsonObject) -> Option<&str> {
    arguments.get(MODEL_ARGUMENT).and_then(|m| m.as_str())
}

/// The arguments of `load_model` and `unload_model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAction {
    pub model: String,
    /// `load_model` only: unload after this long unused; 0 keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive_secs: Option<u64>,
}

impl ModelAction {
    pub fn arguments(&self) -> JsonObject {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(arguments)) => arguments,
            _ => JsonObject::new(),
        }
    }
}

/// Where a generation stands: each progress notification carries the
/// tokens generated so far out of `max_tokens`, and the whole text so far
/// (so a relay that missed one loses nothing; streams send what is new).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationProgress {
    pub tokens: u32,
    pub max_tokens: u32,
    pub text: String,
}

impl GenerationProgress {
    pub fn notification(&self, token: ProgressToken) -> ProgressNotificationParam {
        ProgressNotificationParam::new(token, self.tokens as f64)
            .with_total(self.max_tokens as f64)
            .with_message(self.text.clone())
    }

    /// The progress a notification reports; `None` when it carries no text
    /// or no total (then it is not a generation's: a [`TransferProgress`]).
    pub fn read(notification: &ProgressNotificationParam) -> Option<Self> {
        Some(Self {
            tokens: notification.progress as u32,
            max_tokens: notification.total? as u32,
            text: notification.message.clone()?,
        })
    }
}

/// Where a model transfer stands: `verb` (`pulling`, `publishing`) `model`,
/// `done` of `total` bytes. The progress is the fraction done, kept below
/// 1, so that the token counts of a generation that follows in the same
/// call still move forward; it has no total, which tells it from a
/// [`GenerationProgress`], and says the bytes in its message.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferProgress<'a> {
    pub verb: &'a str,
    pub model: &'a str,
    pub done: u64,
    pub total: u64,
}

/// The most a transfer's progress reaches.
const TRANSFER_DONE: f64 = 0.999;

impl TransferProgress<'_> {
    /// Each step of a transfer of `model` that `verb`s (`pulling`,
    /// `publishing`), as a notification for a sink to send: the sink puts
    /// its caller's own progress token in.
    pub fn describer(
        verb: &'static str,
        model: &str,
    ) -> impl Fn(u64, u64) -> ProgressNotificationParam + Send + 'static {
        let model = model.to_string();
        move |done, total| {
            let progress = TransferProgress {
                verb,
                model: &model,
                done,
                total,
            };
            progress.notification(ProgressToken(NumberOrString::Number(0)))
        }
    }

    pub fn notification(&self, token: ProgressToken) -> ProgressNotificationParam {
        let fraction = match self.total {
            0 => TRANSFER_DONE,
            total => (self.done as f64 / total as f64).min(TRANSFER_DONE),
        };
        let mib = |bytes: u64| bytes as f64 / (1u64 << 20) as f64;
        ProgressNotificationParam::new(token, fraction).with_message(format!(
            "{} {}: {:.1} of {:.1} MiB",
            self.verb,
            self.model,
            mib(self.done),
            mib(self.total)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::NumberOrString;

    #[test]
    fn progress_round_trips_through_a_notification() {
        let progress = GenerationProgress {
            tokens: 3,
            max_tokens: 16,
            text: "Paris is".into(),
        };
        let token = ProgressToken(NumberOrString::Number(7));
        assert_eq!(
            GenerationProgress::read(&progress.notification(token)),
            Some(progress)
        );
    }

    #[test]
    fn a_transfer_is_not_read_as_generated_text_and_stays_below_a_first_token() {
        let token = ProgressToken(NumberOrString::Number(7));
        let transfer = TransferProgress {
            verb: "pulling",
            model: "m.gguf",
            done: 3 << 20,
            total: 3 << 20,
        }
        .notification(token);
        assert_eq!(GenerationProgress::read(&transfer), None);
        assert!(transfer.progress < 1.0, "{}", transfer.progress);
        assert_eq!(
            transfer.message.as_deref(),
            Some("pulling m.gguf: 3.0 of 3.0 MiB")
        );
    }

    #[test]
    fn model_actions_are_the_tools_arguments() {
        let load = ModelAction {
            model: "m.gguf".into(),
            keep_alive_secs: Some(60),
        };
        let arguments = load.arguments();
        assert_eq!(model_named(&arguments), Some("m.gguf"));
        assert_eq!(arguments["keep_alive_secs"], 60);
        let unload = ModelAction {
            model: "m.gguf".into(),
            keep_alive_secs: None,
        };
        assert!(!unload.arguments().contains_key("keep_alive_secs"));
    }
}
