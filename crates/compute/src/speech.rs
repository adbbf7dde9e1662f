//! `audio_process`: transcribe (whisper), synthesize (espeak-ng, a separate
//! program), analyze and convert. Decoding and the model run on blocking
//! threads; a transcription reports progress per 30 s window and stops at
//! the next decoding step when its call is cancelled.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jetsonmind_audio::{Audio, AudioError, Limits};
use jetsonmind_core::content::text_and_structured;
use jetsonmind_core::rmcp::model::{
    CallToolResult, ContentBlock, NumberOrString, ProgressNotificationParam, ProgressToken,
};
use jetsonmind_core::tool_error;
use jetsonmind_core::unit::CallContext;
use jetsonmind_core::upstream::ProgressSink;
use jetsonmind_data::inputs::InputCache;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::engine::speech::{TranscribeRequest, WindowDone};
use crate::engine::{EngineError, EngineKind, Flow};
use crate::input::{self, InputError, InputRules};
use crate::models::ModelRegistry;
use crate::schema::{AudioOperation, AudioProcessArgs};
use crate::text::SetOnDrop;

pub use jetsonmind_contract::inference::AUDIO_PROCESS;

use crate::config::AudioConfig;

const DEFAULT_VOICE: &str = "en";
const DEFAULT_RATE_WPM: u32 = 175;
const DEFAULT_PITCH: u32 = 50;

pub struct AudioService {
    pub models: Arc<ModelRegistry>,
    pub settings: AudioConfig,
    /// Clips already resampled for speech, by the digest of their bytes.
    pub inputs: Arc<InputCache>,
}

/// The input cache's kind for a clip decoded, mixed down and resampled to
/// 16 kHz for the speech models.
const SPEECH_INPUT: &str = "audio/speech-16k";

#[derive(Debug, thiserror::Error)]
enum AudioCallError {
    #[error("invalid arguments: {0}")]
    Invalid(String),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("text to speech failed: {0}")]
    Speech(String),
}

type Outcome = Result<CallToolResult, AudioCallError>;

impl AudioService {
    pub async fn audio_process(
        &self,
        args: AudioProcessArgs,
        context: CallContext,
    ) -> CallToolResult {
        let outcome = match args.operation {
            AudioOperation::Transcribe => self.transcribe(args, &context).await,
            AudioOperation::Synthesize => self.synthesize(args).await,
            AudioOperation::Analyze => self.analyze(args).await,
            AudioOperation::Convert => self.convert(args).await,
        };
        outcome.unwrap_or_else(|e| tool_error(e.to_string()))
    }

    /// The caller's audio, decoded (on a blocking thread) within the limits.
    async fn decoded(&self, args: &AudioProcessArgs) -> Result<Audio, AudioCallError> {
        let bytes = self.bytes(args)?;
        self.decode(bytes).await
    }

    async fn decode(&self, bytes: Vec<u8>) -> Result<Audio, AudioCallError> {
        let limits = Limits {
            max_seconds: self.settings.max_seconds,
        };
        Ok(blocking(move || jetsonmind_audio::decode(&bytes, &limits)).await??)
    }

    /// The caller's audio as sent, within the byte limit.
    fn bytes(&self, args: &AudioProcessArgs) -> Result<Vec<u8>, AudioCallError> {
        let data = args.audio_data.as_deref().ok_or_else(|| {
            AudioCallError::Invalid(format!("`audio_data` is required for {:?}", args.operation))
        })?;
        Ok(input::read(
            data,
            &InputRules {
                what: "audio_data",
                max_bytes: self.settings.max_bytes,
                setting: "compute.audio.max_bytes",
                allowed_dirs: &self.settings.allowed_dirs,
                allowed_dirs_setting: "compute.audio.allowed_dirs",
            },
        )?)
    }

    /// The caller's audio at 16 kHz mono, from the input cache when the
    /// same clip was sent before (and is within today's length limit).
    async fn speech_samples(&self, args: &AudioProcessArgs) -> Result<Vec<f32>, AudioCallError> {
        let bytes = self.bytes(args)?;
        let max_samples = self.settings.max_seconds * f64::from(jetsonmind_audio::SPEECH_RATE);
        let resample = |bytes: Vec<u8>| async move {
            let audio = self.decode(bytes).await?;
            Ok::<_, AudioCallError>(blocking(move || audio.for_speech()).await??)
        };
        let samples = self
            .inputs
            .prepared(
                SPEECH_INPUT,
                bytes,
                |samples: &Vec<f32>| samples.len() as f64 <= max_samples,
                |samples| samples.len() * std::mem::size_of::<f32>(),
                resample,
            )
            .await?;
        // The cache's own copy stays; a clip it does not keep is not copied.
        Ok(Arc::try_unwrap(samples).unwrap_or_else(|kept| kept.to_vec()))
    }

    async fn transcribe(&self, args: AudioProcessArgs, context: &CallContext) -> Outcome {
        let samples = self.speech_samples(&args).await?;
        let engine = self
            .models
            .engine(
                args.model.as_deref(),
                EngineKind::Speech,
                context.progress.as_ref(),
            )
            .await?
            .speech()?;
        let request = TranscribeRequest {
            samples,
            initial_prompt: args.initial_prompt.clone(),
            temperature: args.temperature.unwrap_or(0.0),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let cancelled = request.cancel.clone();
        let _stop_on_drop = SetOnDrop(cancelled.clone());
        let (progress, updates) = mpsc::unbounded_channel();
        let relay = tokio::spawn(relay_windows(context.progress.clone(), updates));
        let started = Instant::now();
        let model = engine.info().id.clone();
        let work = tokio::task::spawn_blocking(move || {
            engine.transcribe(&request, &mut |done| {
                let _ = progress.send(done);
                Flow::Continue
            })
        });
        let transcript = tokio::select! {
            outcome = work => outcome
                .map_err(|e| EngineError::Inference(format!("transcription thread failed: {e}")))??,
            _ = context.cancel.cancelled() => {
                cancelled.store(true, Ordering::Relaxed);
                return Err(EngineError::Cancelled.into());
            }
        };
        let _ = relay.await;
        let elapsed = started.elapsed().as_secs_f64();
        let mut structured =
            serde_json::to_value(&transcript).map_err(|e| AudioCallError::Speech(e.to_string()))?;
        structured["model"] = json!(model);
        structured["timings"] = json!({
            "elapsed_ms": elapsed * 1000.0,
            "real_time_factor": elapsed / transcript.duration_secs.max(1e-9),
        });
        Ok(text_and_structured(transcript.text.clone(), structured))
    }

    async fn synthesize(&self, args: AudioProcessArgs) -> Outcome {
        let text = args
            .text
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AudioCallError::Invalid("`text` is required for synthesize".into()))?;
        let chars = text.chars().count();
        if chars > self.settings.max_speech_chars {
            return Err(AudioCallError::Invalid(format!(
                "`text` is {chars} characters; the limit is {} (compute.audio.max_speech_chars)",
                self.settings.max_speech_chars
            )));
        }
        let voice = args.voice.as_deref().unwrap_or(DEFAULT_VOICE);
        check_voice(voice)?;
        let rate = args.rate.unwrap_or(DEFAULT_RATE_WPM);
        let pitch = args.pitch.unwrap_or(DEFAULT_PITCH);
        if !(80..=450).contains(&rate) || pitch > 99 {
            return Err(AudioCallError::Invalid(
                "`rate` is 80 to 450 words per minute and `pitch` 0 to 99".into(),
            ));
        }
        let wav = self.speak(text, voice, rate, pitch).await?;
        let audio = jetsonmind_audio::decode_streamed_wav(&wav)?;
        let structured = json!({
            "duration_secs": audio.duration_secs(),
            "sample_rate": audio.rate,
            "channels": audio.channels,
            "voice": voice,
            "rate": rate,
            "pitch": pitch,
            "mime_type": "audio/wav",
        });
        audio_result(
            &audio,
            format!(
                "Spoke {chars} characters: {:.2} s of audio.",
                audio.duration_secs()
            ),
            structured,
        )
    }

    /// espeak-ng as a separate process (GPL-3: run, never linked): the text
    /// on its standard input, never on its command line.
    async fn speak(
        &self,
        text: &str,
        voice: &str,
        rate: u32,
        pitch: u32,
    ) -> Result<Vec<u8>, AudioCallError> {
        let program = &self.settings.tts_command;
        let failed = |why: String| AudioCallError::Speech(format!("{program}: {why}"));
        let mut child = tokio::process::Command::new(program)
            .args(["--stdout", "--stdin", "-b", "1", "-v", voice])
            .args(["-s", &rate.to_string(), "-p", &pitch.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                failed(format!(
                    "cannot start it ({e}); install espeak-ng or set compute.audio.tts_command"
                ))
            })?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = text.to_string();
        let feed = tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let timeout = Duration::from_secs(self.settings.tts_timeout_secs);
        let output = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| {
                failed(format!(
                    "no answer within {} s (compute.audio.tts_timeout_secs)",
                    timeout.as_secs()
                ))
            })?
            .map_err(|e| failed(e.to_string()))?;
        let _ = feed.await;
        if !output.status.success() || output.stdout.len() <= 44 {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(failed(format!("{} {}", output.status, stderr.trim())));
        }
        Ok(output.stdout)
    }

    async fn analyze(&self, args: AudioProcessArgs) -> Outcome {
        let audio = self.decoded(&args).await?;
        let analysis = blocking(move || jetsonmind_audio::analyze(&audio)).await?;
        let speech = analysis
            .spans
            .iter()
            .filter(|s| s.kind == jetsonmind_audio::SpanKind::Speech)
            .count();
        let summary = format!(
            "{:.2} s, {} Hz, {} channel(s), peak {:.1} dBFS, loudness {}, {speech} stretch(es) of sound over {:.2} s",
            analysis.duration_secs,
            analysis.sample_rate,
            analysis.channels,
            analysis.peak_dbfs,
            analysis
                .loudness_lufs
                .map_or("silent".to_string(), |l| format!("{l:.1} LUFS")),
            analysis.speech_secs,
        );
        let structured =
            serde_json::to_value(&analysis).map_err(|e| AudioCallError::Speech(e.to_string()))?;
        Ok(text_and_structured(summary, structured))
    }

    async fn convert(&self, args: AudioProcessArgs) -> Outcome {
        let rate = args.sample_rate.unwrap_or(jetsonmind_audio::SPEECH_RATE);
        if !(4000..=192_000).contains(&rate) {
            return Err(AudioCallError::Invalid(
                "`sample_rate` is 4000 to 192000".into(),
            ));
        }
        let mono = match args.channels {
            None | Some(1) => true,
            Some(0) => false,
            Some(n) => {
                return Err(AudioCallError::Invalid(format!(
                    "`channels` is 1 (mix down) or 0 (keep them), not {n}"
                )));
            }
        };
        let audio = self.decoded(&args).await?;
        let from = (audio.rate, audio.channels);
        let converted = blocking(move || {
            let audio = if mono { audio.downmix() } else { audio };
            audio.resample(rate)
        })
        .await??;
        let structured = json!({
            "duration_secs": converted.duration_secs(),
            "sample_rate": converted.rate,
            "channels": converted.channels,
            "from": {"sample_rate": from.0, "channels": from.1},
            "mime_type": "audio/wav",
        });
        let summary = format!(
            "Converted {} Hz, {} channel(s) to {} Hz, {} channel(s): {:.2} s.",
            from.0,
            from.1,
            converted.rate,
            converted.channels,
            converted.duration_secs()
        );
        audio_result(&converted, summary, structured)
    }
}

/// A voice name as espeak-ng spells them (`en-gb`, `en+f3`, `mb-en1`): it
/// goes on a command line, so nothing that could read as an option.
fn check_voice(voice: &str) -> Result<(), AudioCallError> {
    let fine = !voice.is_empty()
        && voice.len() <= 40
        && !voice.starts_with('-')
        && voice
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_+".contains(c));
    match fine {
        true => Ok(()),
        false => Err(AudioCallError::Invalid(format!(
            "`voice` `{voice}` is not a voice name (letters, digits, `-`, `_`, `+`; e.g. en-us, en+f3)"
        ))),
    }
}

/// MCP audio content (base64 WAV) with a line of text and the details.
fn audio_result(audio: &Audio, summary: String, mut structured: Value) -> Outcome {
    let wav = jetsonmind_audio::encode_wav(audio)?;
    structured["bytes"] = json!(wav.len());
    let mut result = CallToolResult::structured(structured);
    result.content = vec![
        ContentBlock::audio(STANDARD.encode(&wav), "audio/wav"),
        ContentBlock::text(summary),
    ];
    Ok(result)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AudioCallError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AudioCallError::Speech(format!("worker thread failed: {e}")))
}

async fn relay_windows(
    sink: Option<ProgressSink>,
    mut updates: mpsc::UnboundedReceiver<WindowDone>,
) {
    let Some(sink) = sink else {
        while updates.recv().await.is_some() {}
        return;
    };
    // The sink puts the caller's own progress token in.
    let token = ProgressToken(NumberOrString::Number(0));
    while let Some(done) = updates.recv().await {
        let note = ProgressNotificationParam::new(token.clone(), done.done_secs)
            .with_total(done.total_secs)
            .with_message(format!(
                "transcribed {:.1} of {:.1} s",
                done.done_secs, done.total_secs
            ));
        sink.report(note).await;
    }
}
