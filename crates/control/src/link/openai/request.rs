//! A call of compute's text tools as an OpenAI chat completion request,
//! mapped as compute maps it: the same turns, the same defaults, and
//! `code_complete` asked as compute asks a model without fill-in-the-middle.
//! What the provider cannot honour is refused, never dropped silently.

use jetsonmind_contract::inference::code::instruct_completion;
use jetsonmind_contract::inference::{
    CODE_COMPLETE, ChatRole, CodeCompleteArgs, DEFAULT_CODE_MAX_TOKENS, DEFAULT_MAX_TOKENS,
    DEFAULT_TEMPERATURE, TEXT_GENERATE, TextGenerateArgs,
};
use jetsonmind_core::rmcp::ErrorData as McpError;
use jetsonmind_core::rmcp::model::JsonObject;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::ProviderConfig;
use crate::routing::same_model;

/// The body POSTed to `{base_url}/chat/completions`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    pub stream: bool,
    /// The token counts come in a last chunk.
    pub stream_options: StreamOptions,
}

impl ChatRequest {
    /// A streamed request with greedy sampling and no stop strings (what
    /// code completion sends; text generation sets its own sampling).
    fn greedy(model: String, messages: Vec<Message>, max_tokens: u32) -> Self {
        Self {
            model,
            messages,
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            top_k: None,
            seed: None,
            stop: Vec::new(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// One call, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub body: ChatRequest,
    /// The model the result names: the one the call named (as the provider
    /// serves it), or the provider's default.
    pub model: String,
    /// `code_complete`: the code the answer is cut back to.
    pub completes: Option<String>,
}

/// Why a call is not sent.
#[derive(Debug)]
pub enum NotSent {
    /// Not a call of these tools: a protocol error, as compute answers it.
    Refused(McpError),
    /// A call the provider cannot serve as asked: a tool error (the model
    /// that made the call can fix it).
    Tool(String),
}

/// `tool` called with `arguments`, as `provider` is asked it.
pub fn map_call(
    provider: &ProviderConfig,
    tool: &str,
    arguments: JsonObject,
) -> Result<Call, NotSent> {
    match tool {
        TEXT_GENERATE => text_generate(provider, parse(arguments)?),
        CODE_COMPLETE => code_complete(provider, parse(arguments)?),
        other => Err(NotSent::Refused(McpError::invalid_params(
            format!(
                "unknown tool: {other} (provider `{}` serves {TEXT_GENERATE} and {CODE_COMPLETE})",
                provider.name
            ),
            None,
        ))),
    }
}

fn parse<T: DeserializeOwned>(arguments: JsonObject) -> Result<T, NotSent> {
    serde_json::from_value(serde_json::Value::Object(arguments)).map_err(|e| {
        NotSent::Refused(McpError::invalid_params(
            format!("invalid arguments: {e}"),
            None,
        ))
    })
}

fn invalid(message: String) -> NotSent {
    NotSent::Tool(format!("invalid arguments: {message}"))
}

fn text_generate(provider: &ProviderConfig, args: TextGenerateArgs) -> Result<Call, NotSent> {
    let (model, provider_model) = model_of(provider, args.model.as_deref())?;
    let turns = args.turns().map_err(invalid)?;
    if args.top_k.is_some() && !provider.accepts_top_k {
        return Err(NotSent::Tool(format!(
            "`top_k` cannot be honoured by provider `{}`: the OpenAI API has no such parameter \
             (leave it out, or set accepts_top_k for a server that takes it)",
            provider.name
        )));
    }
    let stop = args.stop_strings().map_err(invalid)?;
    if stop.len() > provider.max_stop {
        return Err(NotSent::Tool(format!(
            "provider `{}` takes at most {} stop strings, the call gives {} (max_stop)",
            provider.name,
            provider.max_stop,
            stop.len()
        )));
    }
    let max_tokens = args.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let body = ChatRequest {
        temperature: args.temperature.unwrap_or(DEFAULT_TEMPERATURE),
        top_p: args.top_p_or_default().map_err(invalid)?,
        top_k: args.top_k,
        seed: args.seed,
        stop,
        ..ChatRequest::greedy(provider_model, messages(turns), max_tokens)
    };
    Ok(Call {
        body,
        model,
        completes: None,
    })
}

/// Greedy, as compute completes code.
fn code_complete(provider: &ProviderConfig, args: CodeCompleteArgs) -> Result<Call, NotSent> {
    let (model, provider_model) = model_of(provider, args.model.as_deref())?;
    args.check().map_err(invalid)?;
    let max_tokens = args.max_tokens.unwrap_or(DEFAULT_CODE_MAX_TOKENS);
    let body = ChatRequest::greedy(
        provider_model,
        messages(instruct_completion(&args)),
        max_tokens,
    );
    Ok(Call {
        body,
        model,
        completes: Some(args.code),
    })
}

fn messages(turns: Vec<(ChatRole, String)>) -> Vec<Message> {
    turns
        .into_iter()
        .map(|(role, content)| Message {
            role: role.as_str(),
            content,
        })
        .collect()
}

/// (the name the result gives, the provider's model) for a call naming
/// `named`; routing sends only calls of models it maps, so another is a
/// clear error, not a guess. Names match as routing matches them (with or
/// without `.gguf`).
fn model_of(provider: &ProviderConfig, named: Option<&str>) -> Result<(String, String), NotSent> {
    let served = provider.served_models();
    let named = named.map(|name| {
        served
            .iter()
            .copied()
            .find(|s| same_model(s, name))
            .unwrap_or(name)
    });
    match provider.provider_model(named) {
        Some(model) => Ok((named.unwrap_or(model).to_string(), model.to_string())),
        None => Err(NotSent::Tool(match named {
            Some(name) => format!(
                "provider `{}` does not serve model `{name}`; it serves: {}",
                provider.name,
                served.into_iter().collect::<Vec<_>>().join(", ")
            ),
            None => format!(
                "provider `{}` has no default model: name one of {}",
                provider.name,
                served.into_iter().collect::<Vec<_>>().join(", ")
            ),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> ProviderConfig {
        ProviderConfig {
            name: "p".into(),
            base_url: "http://127.0.0.1:1/v1".into(),
            models: [("cloud-small".to_string(), "small-v2".to_string())].into(),
            ..ProviderConfig::default()
        }
    }

    fn call(tool: &str, arguments: serde_json::Value) -> Result<Call, NotSent> {
        let serde_json::Value::Object(arguments) = arguments else {
            panic!("arguments are an object");
        };
        map_call(&provider(), tool, arguments)
    }

    fn tool_error(outcome: Result<Call, NotSent>) -> String {
        match outcome {
            Err(NotSent::Tool(message)) => message,
            other => panic!("expected a tool error, got {other:?}"),
        }
    }

    #[test]
    fn text_generate_maps_every_argument_with_computes_defaults() {
        let full = call(
            TEXT_GENERATE,
            json!({"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}],
                   "model": "cloud-small", "max_tokens": 9, "temperature": 0.2,
                   "top_p": 0.5, "seed": 7, "stop": ["\n"]}),
        )
        .unwrap();
        let body = serde_json::to_value(&full.body).unwrap();
        assert_eq!(
            body,
            json!({"model": "small-v2",
                   "messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}],
                   "max_tokens": 9, "temperature": 0.2f32, "top_p": 0.5, "seed": 7,
                   "stop": ["\n"], "stream": true, "stream_options": {"include_usage": true}})
        );
        assert_eq!(
            full.model, "cloud-small",
            "the result names the call's model"
        );
        let plain = call(
            TEXT_GENERATE,
            json!({"prompt": "Hi", "model": "cloud-small.gguf"}),
        )
        .unwrap();
        assert_eq!(plain.body.messages[0].role, "user");
        assert_eq!(plain.body.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(plain.body.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(plain.body.seed, None);
        assert_eq!(plain.model, "cloud-small");
    }

    #[test]
    fn what_the_provider_cannot_honour_is_a_clear_error() {
        let asked = |extra: serde_json::Value| {
            let mut arguments = json!({"prompt": "Hi", "model": "cloud-small"});
            arguments
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            call(TEXT_GENERATE, arguments)
        };
        assert!(tool_error(asked(json!({"top_k": 5}))).contains("top_k"));
        let five = json!({"stop": ["a", "b", "c", "d", "e"]});
        assert!(tool_error(asked(five)).contains("max_stop"));
        assert!(tool_error(asked(json!({"top_p": 0.0}))).contains("top_p"));
        assert!(tool_error(asked(json!({"model": "other"}))).contains("cloud-small"));
        assert!(tool_error(asked(json!({"prompt": " "}))).contains("empty"));
        let none = call(TEXT_GENERATE, json!({"prompt": "Hi"}));
        assert!(tool_error(none).contains("no default model"));
        let unknown = call(TEXT_GENERATE, json!({"prompt": "Hi", "temprature": 1}));
        assert!(matches!(unknown, Err(NotSent::Refused(_))));
        assert!(matches!(
            call("load_model", json!({"model": "x"})),
            Err(NotSent::Refused(_))
        ));
    }

    #[test]
    fn code_complete_is_asked_greedily_as_compute_asks_it() {
        let code = call(
            CODE_COMPLETE,
            json!({"code": "def add(a, b):\n", "language": "python", "model": "cloud-small"}),
        )
        .unwrap();
        assert_eq!(code.body.temperature, 0.0);
        assert_eq!(code.body.max_tokens, DEFAULT_CODE_MAX_TOKENS);
        assert_eq!(code.body.messages[0].role, "system");
        assert!(code.body.messages[1].content.contains("def add(a, b):"));
        assert_eq!(code.completes.as_deref(), Some("def add(a, b):\n"));
        let empty = call(
            CODE_COMPLETE,
            json!({"code": " ", "language": "python", "model": "cloud-small"}),
        );
        assert!(tool_error(empty).contains("nothing to complete"));
    }
}
