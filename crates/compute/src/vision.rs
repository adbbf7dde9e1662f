//! `image_analyze`: classify and detect (ONNX models on tract), and
//! properties (measured, no model). Decoding and the models run on
//! blocking threads; a cancelled call stops waiting for them.

use std::sync::Arc;
use std::time::Instant;

use jetsonmind_core::content::text_and_structured;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::tool_error;
use jetsonmind_core::unit::CallContext;
use jetsonmind_data::inputs::InputCache;
use jetsonmind_image::{ImageError, Limits, Picture};
use serde_json::{Value, json};

use crate::engine::image::{
    ClassScore, DetectOptions, Detection, ImageEngine, ReadOptions, TextLine,
};
use crate::engine::{EngineError, EngineKind};
use crate::input::{self, InputError, InputRules};
use crate::models::ModelRegistry;
use crate::schema::{AnalysisType, ImageAnalyzeArgs};

pub use jetsonmind_contract::inference::IMAGE_ANALYZE;

use crate::config::VisionConfig;

const DEFAULT_TOP_K: u32 = 5;
const DEFAULT_MIN_SCORE: f32 = 0.25;
const DEFAULT_MAX_OVERLAP: f32 = 0.45;
const DEFAULT_MAX_DETECTIONS: u32 = 100;
const DEFAULT_MIN_CONFIDENCE: f32 = 0.5;
const DEFAULT_MAX_LINES: u32 = 200;

pub struct ImageService {
    pub models: Arc<ModelRegistry>,
    pub settings: VisionConfig,
    /// Pictures already decoded, by the digest of their bytes.
    pub inputs: Arc<InputCache>,
}

/// The input cache's kind for a picture decoded and turned upright.
const DECODED_PICTURE: &str = "image/decoded";

#[derive(Debug, thiserror::Error)]
enum ImageCallError {
    #[error("invalid arguments: {0}")]
    Invalid(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

type Outcome = Result<CallToolResult, ImageCallError>;

impl ImageService {
    pub async fn image_analyze(
        &self,
        args: ImageAnalyzeArgs,
        context: CallContext,
    ) -> CallToolResult {
        let work = self.analyze(args);
        let outcome = tokio::select! {
            outcome = work => outcome,
            _ = context.cancel.cancelled() => Err(EngineError::Cancelled.into()),
        };
        outcome.unwrap_or_else(|e| tool_error(e.to_string()))
    }

    async fn analyze(&self, args: ImageAnalyzeArgs) -> Outcome {
        let started = Instant::now();
        let picture = self.decoded(&args).await?;
        let decode_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (text, mut structured) = match args.analysis_type {
            AnalysisType::Properties => properties(picture.clone()).await?,
            AnalysisType::Classify => self.classify(&args, picture.clone()).await?,
            AnalysisType::Detect => self.detect(&args, picture.clone()).await?,
            AnalysisType::Ocr => self.read_text(&args, picture.clone()).await?,
            // The compute server writes descriptions: it runs the language
            // model on what this service finds (crate::multimodal).
            AnalysisType::Describe => {
                return Err(ImageCallError::Invalid(
                    "describe is answered by the compute server, not the image service".into(),
                ));
            }
        };
        structured["image"] = json!(picture.summary());
        structured["timings"] = json!({
            "decode_ms": decode_ms,
            "total_ms": started.elapsed().as_secs_f64() * 1000.0,
        });
        Ok(text_and_structured(text, structured))
    }

    /// The caller's image, decoded (on a blocking thread) within the limits;
    /// from the input cache when the same bytes were sent before (and the
    /// picture is within today's pixel limit).
    async fn decoded(&self, args: &ImageAnalyzeArgs) -> Result<Arc<Picture>, ImageCallError> {
        let bytes = input::read(
            &args.image_data,
            &InputRules {
                what: "image_data",
                max_bytes: self.settings.max_bytes,
                setting: "compute.vision.max_bytes",
                allowed_dirs: &self.settings.allowed_dirs,
                allowed_dirs_setting: "compute.vision.allowed_dirs",
            },
        )?;
        let limits = Limits {
            max_pixels: self.settings.max_pixels,
            setting: "compute.vision.max_pixels",
        };
        let max_pixels = limits.max_pixels;
        let decode = |bytes: Vec<u8>| async move {
            Ok(blocking(move || jetsonmind_image::decode(&bytes, &limits)).await??)
        };
        self.inputs
            .prepared(
                DECODED_PICTURE,
                bytes,
                |picture: &Picture| {
                    u64::from(picture.width()) * u64::from(picture.height()) <= max_pixels
                },
                |picture| picture.rgb.as_raw().len(),
                decode,
            )
            .await
    }

    /// The model `args` names; else the configured detector for `detect` or
    /// text reader for `ocr`, and the registry's image default
    /// (`compute.vision.classify_model`) for `classify`.
    async fn engine(
        &self,
        args: &ImageAnalyzeArgs,
    ) -> Result<Arc<dyn ImageEngine>, ImageCallError> {
        let detector = &self.settings.detect_model;
        let name = match (args.model.as_deref(), args.analysis_type) {
            (Some(name), _) => Some(name),
            (None, AnalysisType::Detect) if detector.is_empty() => {
                return Err(ImageCallError::Invalid(
                    "no detector is configured: import a YOLO-layout ONNX detector \
                     (`jetsonmind models import`), then name it in `model` or in \
                     compute.vision.detect_model"
                        .into(),
                ));
            }
            (None, AnalysisType::Detect) => Some(detector.as_str()),
            (None, AnalysisType::Ocr) => Some(self.settings.ocr_model.as_str()),
            (None, _) => None,
        };
        Ok(self
            .models
            .engine(name, EngineKind::Image, None)
            .await?
            .image()?)
    }

    /// Run `work` on the image model for `args`, on a blocking thread.
    async fn run<T: serde::Serialize + Send + 'static>(
        &self,
        args: &ImageAnalyzeArgs,
        work: impl FnOnce(&dyn ImageEngine) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<Ran<T>, ImageCallError> {
        let engine = self.engine(args).await?;
        let model = engine.info().id.clone();
        let runs_on = engine.info().architecture.clone();
        let started = Instant::now();
        let found = blocking(move || work(engine.as_ref())).await??;
        Ok(Ran {
            model,
            runs_on,
            found,
            inference_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    async fn classify(
        &self,
        args: &ImageAnalyzeArgs,
        picture: Arc<Picture>,
    ) -> Result<(String, Value), ImageCallError> {
        let top_k = args.top_k.unwrap_or(DEFAULT_TOP_K) as usize;
        let ran = self
            .run(args, move |engine| engine.classify(&picture.rgb, top_k))
            .await?;
        let text = match ran.found.first() {
            Some(best) => format!("Most likely {}: {}.", best.label, ranked(&ran.found)),
            None => "No class scored.".to_string(),
        };
        Ok((text, ran.structured("classify", "classes")))
    }

    async fn detect(
        &self,
        args: &ImageAnalyzeArgs,
        picture: Arc<Picture>,
    ) -> Result<(String, Value), ImageCallError> {
        let options = DetectOptions {
            min_score: args.min_score.unwrap_or(DEFAULT_MIN_SCORE),
            max_overlap: args.max_overlap.unwrap_or(DEFAULT_MAX_OVERLAP),
            max_detections: args.max_detections.unwrap_or(DEFAULT_MAX_DETECTIONS) as usize,
        };
        let ran = self
            .run(args, move |engine| engine.detect(&picture.rgb, &options))
            .await?;
        Ok((found(&ran.found), ran.structured("detect", "detections")))
    }

    async fn read_text(
        &self,
        args: &ImageAnalyzeArgs,
        picture: Arc<Picture>,
    ) -> Result<(String, Value), ImageCallError> {
        let options = ReadOptions {
            min_confidence: args.min_score.unwrap_or(DEFAULT_MIN_CONFIDENCE),
            max_lines: args.max_lines.unwrap_or(DEFAULT_MAX_LINES) as usize,
        };
        let ran = self
            .run(args, move |engine| engine.read_text(&picture.rgb, &options))
            .await?;
        let mut structured = ran.structured("ocr", "lines");
        structured["text"] = json!(joined(&ran.found));
        Ok((read(&ran.found), structured))
    }
}

/// What a model found, which model it was, and how long it took.
struct Ran<T> {
    model: String,
    /// The engine and the runtime under it (`onnx classifier on tract`).
    runs_on: Option<String>,
    found: T,
    inference_ms: f64,
}

impl<T: serde::Serialize> Ran<T> {
    /// `{"analysis_type", "model", "engine", <key>: what was found, "inference_ms"}`.
    fn structured(&self, analysis_type: &str, key: &str) -> Value {
        let mut out = json!({
            "analysis_type": analysis_type,
            "model": self.model,
            "engine": self.runs_on,
            "inference_ms": self.inference_ms,
        });
        out[key] = json!(self.found);
        out
    }
}

async fn properties(picture: Arc<Picture>) -> Result<(String, Value), ImageCallError> {
    let format = picture.format;
    let p = blocking(move || jetsonmind_image::properties(&picture.rgb)).await?;
    let colours: Vec<&str> = p.dominant_colours.iter().map(|c| c.hex.as_str()).collect();
    let text = format!(
        "{}x{} {}; brightness {:.0}/255, {}, {}; dominant colours {}.",
        p.width,
        p.height,
        format.to_uppercase(),
        p.brightness,
        p.exposure.verdict,
        p.focus,
        colours.join(", ")
    );
    let mut structured = json!(p);
    structured["analysis_type"] = json!("properties");
    Ok((text, structured))
}

/// `tiger cat 40%, Egyptian cat 35%, tabby 17%`.
fn ranked(classes: &[ClassScore]) -> String {
    classes
        .iter()
        .map(|c| format!("{} {:.0}%", c.label, c.score * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lines' text, one per line.
fn joined(lines: &[TextLine]) -> String {
    lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `Read 2 lines: "Hello" (98%), "world" (95%).`
fn read(lines: &[TextLine]) -> String {
    if lines.is_empty() {
        return "Found no text.".into();
    }
    let each: Vec<String> = lines
        .iter()
        .map(|l| format!("{:?} ({:.0}%)", l.text, l.confidence * 100.0))
        .collect();
    let noun = if lines.len() == 1 { "line" } else { "lines" };
    format!("Read {} {noun}: {}.", lines.len(), each.join(", "))
}

/// `Found 2 objects: person 91% at (12, 40) 80x200, dog 77% at ...`.
fn found(detections: &[Detection]) -> String {
    if detections.is_empty() {
        return "Found no object above the score threshold.".into();
    }
    let each: Vec<String> = detections
        .iter()
        .map(|d| {
            format!(
                "{} {:.0}% at ({:.0}, {:.0}) {:.0}x{:.0}",
                d.label,
                d.score * 100.0,
                d.bounds.x,
                d.bounds.y,
                d.bounds.width,
                d.bounds.height
            )
        })
        .collect();
    let noun = if detections.len() == 1 {
        "object"
    } else {
        "objects"
    };
    format!("Found {} {noun}: {}.", detections.len(), each.join(", "))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ImageCallError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| EngineError::Inference(format!("worker thread failed: {e}")).into())
}
