//! Input schemas of the compute tools. Doc comments become the schema's
//! descriptions, which is what a model reads when it decides how to call.

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: ChatRole,
    pub content: String,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
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
