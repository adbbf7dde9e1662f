//! Whisper speech to text on candle, from a CTranslate2 model directory
//! (`model.bin`, `tokenizer.json`, `config.json`), the format the registry
//! packages ship.
//!
//! Long audio is transcribed as Whisper was trained: a 30 s window at a
//! time, each window's start moved to where the last complete segment of
//! the one before ended (its last timestamp), with the text so far as the
//! next window's prompt.

mod ct2;
mod decode;
mod decoder;
mod encoder;
mod mel;
mod spec;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use tokenizers::Tokenizer;

use super::speech::{Segment, SpeechEngine, TranscribeRequest, Transcript, WindowDone};
use super::{EngineError, Flow, ModelDir, ModelInfo};
use decode::{Special, Window};
use decoder::Decoder;
use encoder::Encoder;

/// Mel frames per second of audio.
const FRAMES_PER_SEC: f64 = (spec::SAMPLE_RATE / mel::HOP) as f64;
/// A window the model saw that held no speech: it is skipped.
const NO_SPEECH_PROB: f64 = 0.6;
/// Below this mean log-probability a window is decoded again, hotter.
const LOW_LOGPROB: f64 = -1.0;

pub struct WhisperEngine {
    info: ModelInfo,
    encoder: Encoder,
    decoder: Decoder,
    mel_bins: usize,
    tokenizer: Tokenizer,
    filters: Vec<f32>,
    special: Special,
}

impl WhisperEngine {
    /// Load a CTranslate2 Whisper directory by its files' names.
    pub fn load(dir: &ModelDir) -> Result<Self, EngineError> {
        let fail = |e: String| dir.fail(e);
        let bytes = dir.read("model.bin")?;
        let model = ct2::read(&bytes).map_err(|e| fail(e.to_string()))?;
        drop(bytes);
        if model.spec != "WhisperSpec" {
            return Err(fail(format!("a {} model, not Whisper", model.spec)));
        }
        let extra: Extra = dir.json("config.json")?;
        let config = whisper_config(&model).map_err(fail)?;
        let named = ct2::whisper_names(&model).map_err(|e| fail(e.to_string()))?;
        let size_bytes = named.values().map(|t| t.elem_count() as u64 * 4).sum();
        let vb = VarBuilder::from_tensors(named, DType::F32, &Device::Cpu);
        let encoder =
            Encoder::load(vb.pp("model.encoder"), &config).map_err(|e| fail(e.to_string()))?;
        let decoder =
            Decoder::load(vb.pp("model.decoder"), &config).map_err(|e| fail(e.to_string()))?;
        let tokenizer = Tokenizer::from_file(dir.path("tokenizer.json")?)
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        let special = Special::find(&tokenizer, &config, &extra).map_err(fail)?;
        Ok(Self {
            info: ModelInfo {
                id: dir.id.to_string(),
                architecture: Some("whisper".into()),
                parameters: size_bytes / 4,
                size_bytes,
                context_train: config.max_target_positions as u32,
                has_chat_template: false,
                supports_fill_in_middle: false,
            },
            encoder,
            mel_bins: config.num_mel_bins,
            decoder,
            tokenizer,
            filters: mel::filters(config.num_mel_bins, mel::N_FFT, spec::SAMPLE_RATE as f64),
            special,
        })
    }

    fn mel(&self, samples: &[f32]) -> Result<Tensor, EngineError> {
        // A window's worth of silence after the end: the last window is as
        // long as any, padded as the model was trained.
        mel::log_mel(samples, spec::N_SAMPLES, &self.filters, self.mel_bins)
            .and_then(|mel| mel.unsqueeze(0))
            .map_err(inference)
    }

    fn text(&self, tokens: &[u32]) -> Result<String, EngineError> {
        let text: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|t| *t < self.special.eot)
            .collect();
        self.tokenizer
            .decode(&text, true)
            .map_err(|e| EngineError::Inference(format!("detokenizing: {e}")))
    }

    fn prompt_tokens(&self, prompt: &str) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .tokenizer
            .encode(format!(" {}", prompt.trim()), false)
            .map_err(|e| EngineError::Inference(format!("tokenizing the prompt: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }
}

impl SpeechEngine for WhisperEngine {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn transcribe(
        &self,
        request: &TranscribeRequest,
        on_window: &mut dyn FnMut(WindowDone) -> Flow,
    ) -> Result<Transcript, EngineError> {
        let total_frames = request.samples.len() / mel::HOP;
        let total_secs = request.samples.len() as f64 / spec::SAMPLE_RATE as f64;
        let mel = self.mel(&request.samples)?;
        let mut context = match &request.initial_prompt {
            Some(prompt) if !prompt.trim().is_empty() => self.prompt_tokens(prompt)?,
            _ => Vec::new(),
        };
        let mut segments = Vec::new();
        let mut seek = 0;
        let mut rng = decode::Rng::new(0x5eed);
        while seek < total_frames {
            if request.cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            let frames = (total_frames - seek).min(spec::N_FRAMES);
            let window = mel.narrow(2, seek, spec::N_FRAMES).map_err(inference)?;
            let started = std::time::Instant::now();
            let features = self.encoder.forward(&window).map_err(inference)?;
            let encoded = started.elapsed();
            let window = self.decode_window(&features, &context, request, &mut rng)?;
            tracing::debug!(
                at_secs = seek as f64 / FRAMES_PER_SEC,
                encode_ms = encoded.as_millis() as u64,
                decode_ms = (started.elapsed() - encoded).as_millis() as u64,
                tokens = window.tokens.len(),
                "whisper window"
            );
            let offset = seek as f64 / FRAMES_PER_SEC;
            let skipped =
                window.no_speech_prob > NO_SPEECH_PROB && window.avg_logprob < LOW_LOGPROB;
            let advance = match skipped {
                true => frames,
                false => {
                    let parsed = decode::segments(&window.tokens, &self.special, frames);
                    for piece in parsed.pieces {
                        let text = self.text(&piece.tokens)?;
                        if text.trim().is_empty() {
                            continue;
                        }
                        context.extend(&piece.with_timestamps);
                        segments.push(Segment {
                            start_secs: offset + piece.start_secs,
                            end_secs: (offset + piece.end_secs).min(total_secs),
                            text: text.trim().to_string(),
                            avg_logprob: window.avg_logprob,
                            no_speech_prob: window.no_speech_prob,
                            temperature: window.temperature,
                        });
                    }
                    parsed.advance_frames
                }
            };
            seek += advance.max(1);
            let done = WindowDone {
                done_secs: (seek as f64 / FRAMES_PER_SEC).min(total_secs),
                total_secs,
            };
            if on_window(done) == Flow::Cancel {
                return Err(EngineError::Cancelled);
            }
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Transcript {
            text,
            segments,
            language: "en".into(),
            duration_secs: total_secs,
        })
    }
}

impl WhisperEngine {
    /// Decode one window, again at a higher temperature while the result
    /// looks wrong (low confidence, or no end before the token limit).
    fn decode_window(
        &self,
        features: &Tensor,
        context: &[u32],
        request: &TranscribeRequest,
        rng: &mut decode::Rng,
    ) -> Result<Window, EngineError> {
        let mut temperature = request.temperature.clamp(0.0, 1.0);
        loop {
            let window = decode::window(
                &self.decoder,
                features,
                context,
                &self.special,
                temperature,
                rng,
                &request.cancel,
            )?;
            let doubtful = window.avg_logprob < LOW_LOGPROB || !window.ended;
            let silent = window.no_speech_prob > NO_SPEECH_PROB;
            if !doubtful || silent || temperature >= 1.0 {
                return Ok(window);
            }
            temperature = (temperature + 0.2).min(1.0);
        }
    }
}

/// What the CTranslate2 `config.json` adds to the weights.
#[derive(Debug, serde::Deserialize)]
struct Extra {
    #[serde(default)]
    suppress_ids: Vec<u32>,
    #[serde(default)]
    suppress_ids_begin: Vec<u32>,
}

/// The model's dimensions, read off its tensors.
fn whisper_config(model: &ct2::Ct2Model) -> Result<spec::Config, String> {
    let shape = |name: &str| -> Result<Vec<usize>, String> {
        model
            .tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| format!("model.bin lacks {name}"))
    };
    let heads = |side: &str| -> Result<usize, String> {
        model
            .scalars
            .get(&format!("{side}/num_heads"))
            .and_then(|n| usize::try_from(*n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("model.bin lacks {side}/num_heads"))
    };
    let conv1 = shape("encoder/conv1/weight")?;
    let embeddings = shape("decoder/embeddings/weight")?;
    let target_positions = shape("decoder/position_encodings/encodings")?[0];
    if conv1.len() != 3 || embeddings.len() != 2 || target_positions < 16 {
        return Err("model.bin: not the shapes of a Whisper model".into());
    }
    Ok(spec::Config {
        num_mel_bins: conv1[1],
        max_source_positions: shape("encoder/position_encodings/encodings")
            .map(|s| s[0])
            .unwrap_or(1500),
        d_model: conv1[0],
        encoder_attention_heads: heads("encoder")?,
        encoder_layers: layers(&model.tensors, "encoder"),
        vocab_size: embeddings[0],
        max_target_positions: target_positions,
        decoder_attention_heads: heads("decoder")?,
        decoder_layers: layers(&model.tensors, "decoder"),
    })
}

fn layers(tensors: &HashMap<String, Tensor>, side: &str) -> usize {
    let prefix = format!("{side}/layer_");
    tensors
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix))
        .filter_map(|rest| rest.split('/').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

fn inference(e: candle_core::Error) -> EngineError {
    EngineError::Inference(e.to_string())
}
