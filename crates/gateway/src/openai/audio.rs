//! `POST /v1/audio/transcriptions` (multipart) and `POST /v1/audio/speech`
//! onto the `audio_process` tool.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{Multipart, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::CONTENT_TYPE;
use jetsonmind_contract::inference::AUDIO_PROCESS;
use jetsonmind_core::auth::Principal;
use jetsonmind_core::rmcp::model::JsonObject;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, OpenAi, tool_outcome};

/// OpenAI's model names stand for this server's configured models.
const OPENAI_SPEECH_MODELS: &[&str] = &["whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"];

/// What a transcription request's form held.
#[derive(Default)]
struct TranscriptionForm {
    file: Option<Vec<u8>>,
    model: Option<String>,
    prompt: Option<String>,
    response_format: Option<String>,
    temperature: Option<f32>,
    language: Option<String>,
}

pub(super) async fn transcribe(
    State(api): State<Arc<OpenAi>>,
    caller: Option<Extension<Principal>>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let caller = caller.map_or_else(Principal::local, |Extension(p)| p);
    let outcome = async {
        let form =
            form.map_err(|e| ApiError::invalid(format!("expected a multipart form: {e}")))?;
        let form = read_form(form).await?;
        transcription(&api, &caller, form).await
    };
    outcome.await.unwrap_or_else(IntoResponse::into_response)
}

async fn read_form(mut form: Multipart) -> Result<TranscriptionForm, ApiError> {
    let bad =
        |e: axum::extract::multipart::MultipartError| ApiError::invalid(format!("the form: {e}"));
    let mut out = TranscriptionForm::default();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            out.file = Some(field.bytes().await.map_err(bad)?.to_vec());
            continue;
        }
        let text = field.text().await.map_err(bad)?;
        match name.as_str() {
            "model" => out.model = Some(text),
            "prompt" => out.prompt = Some(text),
            "response_format" => out.response_format = Some(text),
            "language" => out.language = Some(text),
            "temperature" => {
                out.temperature = Some(text.trim().parse().map_err(|_| {
                    ApiError::invalid(format!("temperature `{text}` is not a number"))
                })?)
            }
            // timestamp_granularities[], chunking_strategy, stream...: segments always come.
            _ => {}
        }
    }
    Ok(out)
}

async fn transcription(
    api: &OpenAi,
    caller: &Principal,
    form: TranscriptionForm,
) -> Result<Response, ApiError> {
    let file = form
        .file
        .ok_or_else(|| ApiError::invalid("the form has no `file`"))?;
    if let Some(language) = form
        .language
        .as_deref()
        .filter(|l| !l.is_empty() && !l.starts_with("en"))
    {
        return Err(ApiError::invalid(format!(
            "language `{language}`: the speech model here is English-only"
        )));
    }
    let format = form.response_format.as_deref().unwrap_or("json");
    if !["json", "text", "verbose_json", "srt", "vtt"].contains(&format) {
        return Err(ApiError::invalid(format!(
            "response_format `{format}`: use json, text, verbose_json, srt or vtt"
        )));
    }
    let mut arguments = JsonObject::new();
    arguments.insert("operation".into(), json!("transcribe"));
    arguments.insert("audio_data".into(), json!(STANDARD.encode(&file)));
    if let Some(model) = form
        .model
        .as_deref()
        .filter(|m| !m.is_empty() && !OPENAI_SPEECH_MODELS.contains(m))
    {
        arguments.insert("model".into(), json!(model));
    }
    if let Some(prompt) = form.prompt.filter(|p| !p.trim().is_empty()) {
        arguments.insert("initial_prompt".into(), json!(prompt));
    }
    if let Some(temperature) = form.temperature {
        arguments.insert("temperature".into(), json!(temperature));
    }
    let out = tool_outcome(api.call(AUDIO_PROCESS, arguments, caller, None).await?)?;
    let text = out["text"].as_str().unwrap_or_default().to_string();
    let segments: Vec<&Value> = out["segments"].as_array().into_iter().flatten().collect();
    Ok(match format {
        "text" => plain(text + "\n", "text/plain; charset=utf-8"),
        "srt" => plain(subtitles(&segments, false), "text/plain; charset=utf-8"),
        "vtt" => plain(subtitles(&segments, true), "text/vtt; charset=utf-8"),
        "verbose_json" => Json(verbose(&out, &segments)).into_response(),
        _ => Json(json!({"text": text})).into_response(),
    })
}

fn plain(body: String, content_type: &'static str) -> Response {
    ([(CONTENT_TYPE, content_type)], body).into_response()
}

/// OpenAI's `verbose_json`: the text, the language, the duration and the segments.
fn verbose(out: &Value, segments: &[&Value]) -> Value {
    let segments: Vec<Value> = segments
        .iter()
        .enumerate()
        .map(|(id, s)| {
            json!({
                "id": id,
                "seek": 0,
                "start": s["start_secs"],
                "end": s["end_secs"],
                "text": s["text"],
                "tokens": [],
                "temperature": s["temperature"],
                "avg_logprob": s["avg_logprob"],
                "compression_ratio": 0.0,
                "no_speech_prob": s["no_speech_prob"],
            })
        })
        .collect();
    json!({
        "task": "transcribe",
        "language": "english",
        "duration": out["duration_secs"],
        "text": out["text"],
        "segments": segments,
    })
}

/// SubRip (`HH:MM:SS,mmm`, numbered cues) or WebVTT (`HH:MM:SS.mmm`, a header).
fn subtitles(segments: &[&Value], vtt: bool) -> String {
    let mut out = String::from(if vtt { "WEBVTT\n\n" } else { "" });
    for (i, segment) in segments.iter().enumerate() {
        let at = |key: &str| timestamp(segment[key].as_f64().unwrap_or(0.0), vtt);
        if !vtt {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            at("start_secs"),
            at("end_secs"),
            segment["text"].as_str().unwrap_or_default().trim()
        ));
    }
    out
}

fn timestamp(secs: f64, vtt: bool) -> String {
    let millis = (secs.max(0.0) * 1000.0).round() as u64;
    let (h, m, s, ms) = (
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1000 % 60,
        millis % 1000,
    );
    let sep = if vtt { '.' } else { ',' };
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

#[derive(Debug, Deserialize)]
struct SpeechRequest {
    input: String,
    #[allow(dead_code)]
    model: Option<String>,
    voice: Option<String>,
    response_format: Option<String>,
    /// 0.25 to 4: a multiple of the normal 175 words per minute.
    speed: Option<f32>,
}

pub(super) async fn speech(
    State(api): State<Arc<OpenAi>>,
    caller: Option<Extension<Principal>>,
    body: axum::body::Bytes,
) -> Response {
    let caller = caller.map_or_else(Principal::local, |Extension(p)| p);
    synthesize(&api, &caller, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn synthesize(api: &OpenAi, caller: &Principal, body: &[u8]) -> Result<Response, ApiError> {
    let request: SpeechRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
    let format = request.response_format.as_deref().unwrap_or("mp3");
    if format != "wav" {
        return Err(ApiError::invalid(format!(
            "response_format `{format}`: this server writes wav only (no MP3, Opus, AAC or FLAC \
             encoder is built in); ask for response_format=wav"
        )));
    }
    let speed = request.speed.unwrap_or(1.0);
    if !(0.25..=4.0).contains(&speed) {
        return Err(ApiError::invalid("speed is 0.25 to 4.0"));
    }
    let mut arguments = JsonObject::new();
    arguments.insert("operation".into(), json!("synthesize"));
    arguments.insert("text".into(), json!(request.input));
    arguments.insert(
        "voice".into(),
        json!(espeak_voice(request.voice.as_deref())),
    );
    arguments.insert(
        "rate".into(),
        json!(((175.0 * speed).round() as u32).clamp(80, 450)),
    );
    let result = api.call(AUDIO_PROCESS, arguments, caller, None).await?;
    let audio = result
        .content
        .iter()
        .find_map(|c| c.as_audio())
        .map(|a| a.data.clone());
    tool_outcome(result)?;
    let wav = audio
        .and_then(|data| STANDARD.decode(data).ok())
        .ok_or_else(|| ApiError::server("audio_process returned no audio"))?;
    Ok(([(CONTENT_TYPE, "audio/wav")], wav).into_response())
}

/// OpenAI's voices as espeak-ng voices (an espeak-ng voice name passes as is).
fn espeak_voice(voice: Option<&str>) -> String {
    let mapped = match voice.unwrap_or("alloy") {
        "alloy" | "ash" | "verse" => "en",
        "echo" | "onyx" => "en-us+m3",
        "fable" | "ballad" => "en-gb",
        "nova" | "shimmer" | "coral" | "sage" => "en-us+f3",
        other => other,
    };
    mapped.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitle_timestamps() {
        assert_eq!(timestamp(3723.4567, false), "01:02:03,457");
        assert_eq!(timestamp(0.0, true), "00:00:00.000");
        let segment = json!({"start_secs": 1.5, "end_secs": 2.25, "text": " Hello. "});
        assert_eq!(
            subtitles(&[&segment], false),
            "1\n00:00:01,500 --> 00:00:02,250\nHello.\n\n"
        );
        assert!(
            subtitles(&[&segment], true).starts_with("WEBVTT\n\n00:00:01.500 --> 00:00:02.250\n")
        );
    }
}
