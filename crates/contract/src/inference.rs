//! The inference tools as other servers see them: the names the control
//! plane calls and routes by, the model a call names, and what a
//! generation's progress notifications carry.

use rmcp::model::{JsonObject, ProgressNotificationParam, ProgressToken};
use serde::{Deserialize, Serialize};

pub const TEXT_GENERATE: &str = "text_generate";
pub const CODE_COMPLETE: &str = "code_complete";
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

    /// The progress a notification reports; `None` when it carries no text.
    pub fn read(notification: &ProgressNotificationParam) -> Option<Self> {
        Some(Self {
            tokens: notification.progress as u32,
            max_tokens: notification.total.unwrap_or_default() as u32,
            text: notification.message.clone()?,
        })
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
