//! Input schemas of the compute tools. Doc comments become the schema's
//! descriptions, which is what a model reads when it decides how to call.
//! The text tools' are the contract's: a provider serves them too.

pub use jetsonmind_contract::inference::{
    ChatMessage, ChatRole, CodeCompleteArgs, TextGenerateArgs,
};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImageTask {
    /// The most likely ImageNet classes.
    Classify,
    /// The text in the image.
    Ocr,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageAnalyzeArgs {
    /// The image (PNG or JPEG), base64-encoded.
    pub image_base64: String,
    pub task: ImageTask,
    /// How many classes to return for `classify`.
    #[schemars(range(min = 1, max = 20))]
    pub top_k: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AudioTask {
    /// Speech to text (English).
    Transcribe,
    /// Text to speech, returned as WAV audio.
    Speak,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioProcessArgs {
    pub task: AudioTask,
    /// WAV audio, base64-encoded (for `transcribe`).
    pub audio_base64: Option<String>,
    /// Text to speak (for `speak`).
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiModalArgs {
    /// The question or instruction.
    pub prompt: String,
    /// An image (PNG or JPEG), base64-encoded.
    pub image_base64: Option<String>,
    /// WAV audio, base64-encoded.
    pub audio_base64: Option<String>,
    #[schemars(range(min = 1, max = 4096))]
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedArgs {
    /// Texts to embed, one vector each.
    #[schemars(length(min = 1, max = 256))]
    pub texts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadModelArgs {
    /// Model id from `jetson://models/available`.
    pub model: String,
    /// Unload it after this long unused (like Ollama's keep_alive); 0 keeps
    /// it until its memory is needed. The configured default when absent.
    pub keep_alive_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnloadModelArgs {
    /// Model id of a loaded model.
    pub model: String,
}
