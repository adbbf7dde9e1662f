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
pub enum AnalysisType {
    /// The most likely classes (ImageNet's thousand with the default model),
    /// with scores.
    Classify,
    /// Objects with boxes, classes and scores (needs a YOLO-layout detector:
    /// `model`, or `compute.vision.detect_model`).
    Detect,
    /// Lines of text with boxes and confidences (PP-OCRv4 by default).
    Ocr,
    /// Size, format, colour statistics, dominant colours, sharpness and
    /// exposure (no model).
    Properties,
    /// A short description the language model writes from the
    /// classification, the text read and the properties (it does not see
    /// the picture itself).
    Describe,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageAnalyzeArgs {
    /// The image (PNG, JPEG, WebP, GIF's first frame or BMP): base64, a data
    /// URI (`data:image/png;base64,...`), or the path of a file in a
    /// directory the server allows.
    pub image_data: String,
    pub analysis_type: AnalysisType,
    /// `classify`: how many classes to return (5 by default).
    #[schemars(range(min = 1, max = 100))]
    pub top_k: Option<u32>,
    /// `detect`: the lowest score a detection may have (0.25 by default);
    /// `ocr`: the lowest confidence a line may be read with (0.5 by default).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_score: Option<f32>,
    /// `detect`: boxes of one class overlapping more than this (intersection
    /// over union) are one object (0.45 by default).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_overlap: Option<f32>,
    /// `detect`: the most detections to return (100 by default).
    #[schemars(range(min = 1, max = 1000))]
    pub max_detections: Option<u32>,
    /// `ocr`: the most lines to read, top to bottom (200 by default).
    #[schemars(range(min = 1, max = 1000))]
    pub max_lines: Option<u32>,
    /// The model; the configured one for the analysis type when absent.
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AudioOperation {
    /// Speech to text (English): the transcript, with timed segments.
    Transcribe,
    /// Text to speech (`text`): WAV audio.
    Synthesize,
    /// Duration, sample rate, channels, levels, loudness (LUFS) and where
    /// there is speech or silence.
    Analyze,
    /// Resample and mix down (16 kHz mono for speech by default): WAV audio.
    Convert,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AudioProcessArgs {
    /// The audio (WAV, FLAC, MP3 or OGG Vorbis): base64, a data URI
    /// (`data:audio/wav;base64,...`), or the path of a file in a directory
    /// the server allows. Not used by `synthesize`.
    pub audio_data: Option<String>,
    pub operation: AudioOperation,
    /// The text to speak (`synthesize`).
    pub text: Option<String>,
    /// The speech model (`transcribe`); the configured one when absent.
    pub model: Option<String>,
    /// `transcribe`: text the speech likely continues (names, spellings,
    /// punctuation style).
    pub initial_prompt: Option<String>,
    /// `transcribe`: 0 decodes greedily (default); a window whose text
    /// looks wrong is decoded again hotter.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub temperature: Option<f32>,
    /// `synthesize`: an espeak-ng voice (`en`, `en-us`, `en-gb`, `de`, `fr`,
    /// with variants such as `en+f3`).
    pub voice: Option<String>,
    /// `synthesize`: words per minute, 80 to 450 (175 by default).
    #[schemars(range(min = 80, max = 450))]
    pub rate: Option<u32>,
    /// `synthesize`: pitch, 0 to 99 (50 by default).
    #[schemars(range(min = 0, max = 99))]
    pub pitch: Option<u32>,
    /// `convert`: the sample rate to convert to (16000 by default).
    #[schemars(range(min = 4000, max = 192000))]
    pub sample_rate: Option<u32>,
    /// `convert`: 1 mixes down to mono (default); 0 keeps the channels.
    #[schemars(range(min = 0, max = 1))]
    pub channels: Option<u16>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiModalArgs {
    /// The text that goes with the image and audio: a question, notes, a
    /// document (may be empty).
    pub text: String,
    /// An image (as `image_analyze` takes it): classified, its text read and
    /// its properties measured, at once with the audio.
    pub image: Option<String>,
    /// Audio (as `audio_process` takes it): transcribed.
    pub audio: Option<String>,
    /// What the language model is to do with the text and what was found
    /// in the image and audio ("answer the question", "summarize"...).
    #[schemars(length(min = 1))]
    pub task: String,
    /// The language model; the default one when absent.
    pub model: Option<String>,
    /// Most tokens of the answer (256 by default).
    #[schemars(range(min = 1, max = 4096))]
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbedArgs {
    /// Texts to embed, one unit-length vector each, in order.
    #[schemars(length(min = 1))]
    pub texts: Vec<String>,
    /// The embedding model; the configured one when absent.
    pub model: Option<String>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankArgs {
    /// What the documents are ranked against.
    pub query: String,
    /// The candidates, ranked by similarity to the query.
    #[schemars(length(min = 1))]
    pub documents: Vec<String>,
    /// How many of the best to return (all by default).
    #[schemars(range(min = 1))]
    pub top_k: Option<u32>,
    /// The embedding model; the configured one when absent.
    pub model: Option<String>,
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
