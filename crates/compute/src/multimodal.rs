//! `multi_modal_inference` and `image_analyze`'s `describe`: what the image
//! and audio models extract (classes, text read, measured properties, a
//! transcript), given to the language model with the caller's text and
//! task. No vision-language model ships in the registries, so the language
//! model never sees the pixels: results say so.
//!
//! Each part is a call of this server's own tools (`image_analyze`,
//! `audio_process`, `text_generate`), made as the caller: authorized and
//! checked against the tool's schema at that point, as the caller's own
//! call of it would be ([`ComputeServer::call_for`]).

pub use jetsonmind_contract::inference::MULTI_MODAL_INFERENCE;
use jetsonmind_contract::inference::TEXT_GENERATE;
use jetsonmind_core::McpUnit;
use jetsonmind_core::auth::Principal;
use jetsonmind_core::content::text_and_structured;
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::{
    CallToolResult, NumberOrString, ProgressNotificationParam, ProgressToken,
};
use jetsonmind_core::unit::CallContext;
use jetsonmind_core::{ToolCall, tool_error};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::Pin;

use crate::ComputeServer;
use crate::schema::{ImageAnalyzeArgs, MultiModalArgs};
use crate::speech::AUDIO_PROCESS;
use crate::vision::IMAGE_ANALYZE;

/// The image analyses a picture is read with.
const IMAGE_PARTS: [&str; 3] = ["classify", "ocr", "properties"];
const DESCRIBE_MAX_TOKENS: u32 = 96;
const DEFAULT_MAX_TOKENS: u32 = 256;

const SYSTEM: &str = "You are a helpful assistant. You cannot see images or hear audio \
    yourself: tools have analysed them and their findings are given to you. Use the findings \
    and the user's text to do the task. Be brief and concrete.";

/// A part's outcome: what its tool returned, or why it failed.
type Part = Result<Value, String>;

impl ComputeServer {
    pub(crate) async fn multi_modal(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let args: MultiModalArgs = call.parse()?;
        let (caller, context) = (&call.caller, &call.context);
        // Reading, each part read, answering: then the result.
        let parts = u32::from(args.image.is_some()) + u32::from(args.audio.is_some());
        let stage = Stages::new(context, parts + 2);
        stage.advance("reading the image and audio").await;
        let reading = async {
            tokio::join!(
                self.image_findings(caller, context, args.image.as_deref(), &stage),
                self.transcript(caller, context, args.audio.as_deref(), &stage),
            )
        };
        let (image, audio) = tokio::select! {
            parts = reading => parts,
            _ = context.cancel.cancelled() => return Ok(tool_error("cancelled")),
        };
        let image = match image? {
            Some(Err(why)) => return Ok(tool_error(format!("the image: {why}"))),
            image => image.map(Result::unwrap_or_default),
        };
        let audio = match audio? {
            Some(Err(why)) => return Ok(tool_error(format!("the audio: {why}"))),
            audio => audio.map(Result::unwrap_or_default),
        };
        stage.advance("answering").await;
        let prompt = prompt(&args.task, Some(&args.text), image.as_ref(), audio.as_ref());
        let max_tokens = args.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let answer = match self
            .answer(caller, context, prompt, args.model.as_deref(), max_tokens)
            .await?
        {
            Ok(answer) => answer,
            Err(why) => return Ok(tool_error(format!("the answer: {why}"))),
        };
        let text = answer["text"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut structured = json!({
            "answer": text,
            "model": answer["model"],
            "finish_reason": answer["finish_reason"],
            "usage": answer["usage"],
            "derived_from": "the language model read the findings of the image and audio tools \
                             below, not the image or audio itself",
        });
        if let Some(image) = image {
            structured["image"] = image;
        }
        if let Some(audio) = audio {
            structured["audio"] = audio;
        }
        Ok(text_and_structured(text, structured))
    }

    /// `image_analyze` with `describe`: the classification, the text read
    /// and the properties, written up by the language model.
    pub(crate) async fn describe(&self, call: ToolCall) -> Result<CallToolResult, McpError> {
        let args: ImageAnalyzeArgs = call.parse()?;
        let (caller, context) = (&call.caller, &call.context);
        let stage = Stages::new(context, 3);
        stage.advance("analysing the image").await;
        let found = tokio::select! {
            found = self.image_findings(caller, context, Some(&args.image_data), &stage) => found?,
            _ = context.cancel.cancelled() => return Ok(tool_error("cancelled")),
        };
        let findings = match found {
            Some(Ok(findings)) => findings,
            Some(Err(why)) => return Ok(tool_error(why)),
            None => unreachable!("an image was given"),
        };
        stage.advance("writing the description").await;
        let task = "Describe the picture in one or two sentences, from the findings only.";
        let prompt = prompt(task, None, Some(&findings), None);
        let answer = match self
            .answer(caller, context, prompt, None, DESCRIBE_MAX_TOKENS)
            .await?
        {
            Ok(answer) => answer,
            Err(why) => return Ok(tool_error(format!("the description: {why}"))),
        };
        let description = answer["text"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string();
        let structured = json!({
            "analysis_type": "describe",
            "description": description,
            "model": answer["model"],
            "derived_from": "written by the language model from the classification, the text \
                             read and the measured properties below; no model looked at the \
                             picture as a whole",
            "findings": findings,
        });
        let text = format!(
            "{description}\n(Written by the language model from the image's classification, \
             text and properties; not from the picture itself.)"
        );
        Ok(text_and_structured(text, structured))
    }

    /// The picture's properties, then its classification and text at once;
    /// `None` without a picture. The picture fails when its properties do
    /// (they need no model: it cannot be read); a model's part that fails is
    /// left out and named (a text reader may not be installed).
    async fn image_findings(
        &self,
        caller: &Principal,
        context: &CallContext,
        image: Option<&str>,
        stage: &Stages<'_>,
    ) -> Result<Option<Part>, McpError> {
        let Some(image) = image else {
            return Ok(None);
        };
        let run = |analysis: &str| {
            let arguments = json!({"image_data": image, "analysis_type": analysis});
            self.call_for(caller, context, IMAGE_ANALYZE, arguments)
        };
        // Properties first: it decodes the picture into the input cache,
        // where the two models then find it.
        let properties = match run("properties").await? {
            Ok(properties) => properties,
            Err(why) => return Ok(Some(Err(why))),
        };
        let (classify, ocr) = tokio::join!(run("classify"), run("ocr"));
        let parts = [classify?, ocr?, Ok(properties)];
        stage.advance("image analysed").await;
        let mut findings = Map::new();
        let mut failures = Vec::new();
        for (analysis, part) in IMAGE_PARTS.into_iter().zip(parts) {
            match part {
                Ok(found) => {
                    findings.insert(analysis.into(), found);
                }
                Err(why) => failures.push(format!("{analysis}: {why}")),
            }
        }
        if !failures.is_empty() {
            findings.insert("not_available".into(), json!(failures));
        }
        Ok(Some(Ok(Value::Object(findings))))
    }

    /// The audio's transcript; `None` without audio.
    async fn transcript(
        &self,
        caller: &Principal,
        context: &CallContext,
        audio: Option<&str>,
        stage: &Stages<'_>,
    ) -> Result<Option<Part>, McpError> {
        let Some(audio) = audio else {
            return Ok(None);
        };
        let arguments = json!({"audio_data": audio, "operation": "transcribe"});
        let part = self
            .call_for(caller, context, AUDIO_PROCESS, arguments)
            .await?;
        stage.advance("audio transcribed").await;
        Ok(Some(part))
    }

    /// The language model's answer to `prompt`, greedy (the same findings
    /// give the same answer, from the inference cache when repeated).
    async fn answer(
        &self,
        caller: &Principal,
        context: &CallContext,
        prompt: String,
        model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Part, McpError> {
        let mut arguments = json!({
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": prompt},
            ],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        });
        if let Some(model) = model {
            arguments["model"] = json!(model);
        }
        self.call_for(caller, context, TEXT_GENERATE, arguments)
            .await
    }

    /// A call this server's tool makes of another of its tools for
    /// `caller`: refused as the caller's own call would be, its arguments
    /// checked against the tool's schema, cancelled with the calling one.
    /// `Err` is a refusal; a failed call is `Ok(Err(its message))`. Boxed:
    /// the tool it calls may call back here (`describe`).
    pub(crate) fn call_for<'a>(
        &'a self,
        caller: &'a Principal,
        context: &'a CallContext,
        tool: &'a str,
        arguments: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Part, McpError>> + Send + 'a>> {
        Box::pin(async move {
            let Some(access) = self.tool_access(tool) else {
                return Err(McpError::internal_error(format!("no tool {tool}"), None));
            };
            if !caller.may_call(&access) {
                return Err(caller.refusal(&access));
            }
            let Value::Object(arguments) = arguments else {
                return Err(McpError::internal_error("arguments are an object", None));
            };
            let violations = self
                .catalog
                .check_arguments(tool, &arguments)
                .unwrap_or_default();
            if !violations.is_empty() {
                let message = format!("invalid arguments for {tool}: {}", violations.join("; "));
                return Ok(Err(message));
            }
            let call = ToolCall {
                name: tool.to_string(),
                arguments,
                context: CallContext {
                    meta: context.meta.clone(),
                    cancel: context.cancel.child_token(),
                    progress: None,
                    extensions: Default::default(),
                },
                caller: caller.clone(),
            };
            let result = self.infer(call).await?;
            if result.is_error == Some(true) {
                return Ok(Err(text_of(&result)));
            }
            Ok(Ok(result.structured_content.unwrap_or_default()))
        })
    }
}

/// Progress by stage, to the caller that asked for it: each stage one step
/// of `total`, the first at 0.
struct Stages<'a> {
    context: &'a CallContext,
    reached: std::sync::atomic::AtomicU32,
    total: u32,
}

impl<'a> Stages<'a> {
    fn new(context: &'a CallContext, total: u32) -> Self {
        Self {
            context,
            reached: Default::default(),
            total,
        }
    }

    async fn advance(&self, message: &str) {
        let done = self
            .reached
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(sink) = &self.context.progress {
            // The sink puts the caller's own progress token in.
            let token = ProgressToken(NumberOrString::Number(0));
            let note = ProgressNotificationParam::new(token, f64::from(done))
                .with_total(f64::from(self.total))
                .with_message(message.to_string());
            sink.report(note).await;
        }
    }
}

/// The user's turn: the task, the text, and the findings in words.
fn prompt(task: &str, text: Option<&str>, image: Option<&Value>, audio: Option<&Value>) -> String {
    let mut out = format!("Task: {task}\n");
    if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
        out.push_str(&format!("\nText: {text}\n"));
    }
    if let Some(image) = image {
        out.push_str("\nFindings about the image:\n");
        out.push_str(&image_findings_in_words(image));
    }
    if let Some(audio) = audio {
        let transcript = audio["text"].as_str().unwrap_or_default().trim();
        out.push_str(&format!("\nTranscript of the audio: {transcript}\n"));
    }
    out
}

fn image_findings_in_words(image: &Value) -> String {
    let mut out = String::new();
    if let Some(classes) = image["classify"]["classes"].as_array() {
        // The likeliest class named first and on its own: a small model
        // weighs a list of near-equal guesses by their wording (one point
        // of a percentage turned SmolLM2's "cat" into "leopard").
        let named: Vec<String> = classes
            .iter()
            .take(3)
            .map(|c| {
                format!(
                    "{} ({:.0}%)",
                    c["label"].as_str().unwrap_or_default(),
                    c["score"].as_f64().unwrap_or_default() * 100.0
                )
            })
            .collect();
        if let Some((likeliest, others)) = named.split_first() {
            out.push_str(&format!("- The classifier's best guess: {likeliest}"));
            if !others.is_empty() {
                out.push_str(&format!("; next: {}", others.join(", ")));
            }
            out.push('\n');
        }
    }
    if let Some(text) = image["ocr"]["text"].as_str() {
        match text.trim() {
            "" => out.push_str("- No text is written in it.\n"),
            text => out.push_str(&format!(
                "- Text written in it: {}\n",
                text.replace('\n', " / ")
            )),
        }
    }
    let properties = &image["properties"];
    if properties.is_object() {
        let colours: Vec<&str> = properties["dominant_colours"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().or(c["hex"].as_str()))
            .take(3)
            .collect();
        out.push_str(&format!(
            "- {}x{} pixels, {}, {}; main colours {}\n",
            properties["width"],
            properties["height"],
            properties["exposure"]["verdict"]
                .as_str()
                .unwrap_or("exposure unknown"),
            properties["focus"].as_str().unwrap_or("focus unknown"),
            colours.join(", ")
        ));
    }
    out
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_become_words_the_model_can_use() {
        let image = json!({
            "classify": {"classes": [
                {"label": "tabby", "score": 0.41},
                {"label": "tiger cat", "score": 0.3},
                {"label": "Egyptian cat", "score": 0.2},
                {"label": "lynx", "score": 0.01},
            ]},
            "ocr": {"text": "OPEN\nDAILY"},
            "properties": {"width": 451, "height": 300, "exposure": {"verdict": "well exposed"},
                           "focus": "sharp", "dominant_colours": [{"hex": "#806040"}]},
        });
        let prompt = prompt("What animal is this?", Some("a photo"), Some(&image), None);
        assert!(
            prompt.starts_with("Task: What animal is this?\n"),
            "{prompt}"
        );
        assert!(prompt.contains("Text: a photo"));
        assert!(prompt.contains(
            "The classifier's best guess: tabby (41%); next: tiger cat (30%), Egyptian cat (20%)\n"
        ));
        assert!(!prompt.contains("lynx"));
        assert!(prompt.contains("Text written in it: OPEN / DAILY"));
        assert!(prompt.contains("451x300 pixels, well exposed, sharp; main colours #806040"));
        let audio = json!({"text": " hello there "});
        let spoken = super::prompt("Summarize", None, None, Some(&audio));
        assert!(
            spoken.ends_with("Transcript of the audio: hello there\n"),
            "{spoken}"
        );
    }
}
