//! OpenAI-compatible endpoints as cloud replicas of compute's text tools
//! (`[[hybrid.providers]]`). They need no hub and no cluster: a single
//! device can send what it cannot serve to a provider.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use jetsonmind_core::config::is_subject_token;

/// One OpenAI-compatible endpoint (OpenAI, a hosted model, another machine's
/// llama.cpp server). The config names the environment variable that holds
/// its key, never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Its replica's name in the compute fleet (routes, health): letters,
    /// digits, `-` and `_`.
    pub name: String,
    /// The API root as OpenAI clients take it, with the provider's version
    /// path when it has one (`https://api.openai.com/v1`,
    /// `http://10.0.0.9:8080/v1`): calls go to `{base_url}/chat/completions`,
    /// nothing is appended.
    pub base_url: String,
    /// The environment variable holding its API key, sent as a bearer
    /// token; none: no key. Set but missing at start: the start fails.
    pub api_key_env: Option<String>,
    /// The model names calls use → the provider's own model names. Calls
    /// naming other models are never sent there.
    pub models: BTreeMap<String, String>,
    /// The provider's model for calls that name none; none: such calls are
    /// never sent there.
    pub default_model: Option<String>,
    /// What one call there costs, in the budgets' units; none:
    /// `hybrid.cloud_call_cost`.
    pub cost_per_call: Option<f64>,
    /// Calls sent to it at once: its capacity for routing (beyond the
    /// utilization ceiling calls wait or go elsewhere).
    pub max_concurrent: usize,
    /// Longest a call may take there, request to last token.
    pub timeout_ms: u64,
    /// Longest wait for a connection to it.
    pub connect_timeout_ms: u64,
    /// Longest silence of a streaming answer, before its first token too.
    pub idle_timeout_ms: u64,
    /// Its model list is fetched (its health check) at most this often
    /// while it is up; a provider that is down is checked at every health
    /// check (`gateway.health_interval_ms`).
    pub check_interval_ms: u64,
    /// Largest event of its stream (one SSE event), or error body, accepted.
    pub max_event_bytes: usize,
    /// Most stop strings a call sent there may give (OpenAI takes 4).
    pub max_stop: usize,
    /// It takes `top_k` (llama.cpp's server, vLLM and Ollama do, OpenAI
    /// does not); when false a call giving `top_k` is refused there.
    pub accepts_top_k: bool,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            base_url: String::new(),
            api_key_env: None,
            models: BTreeMap::new(),
            default_model: None,
            cost_per_call: None,
            max_concurrent: 4,
            timeout_ms: 120_000,
            connect_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            check_interval_ms: 30_000,
            max_event_bytes: 1 << 20,
            max_stop: 4,
            accepts_top_k: false,
        }
    }
}

impl ProviderConfig {
    /// The provider's model for a call naming `model` (none: the default);
    /// `None` when it does not serve it.
    pub fn provider_model(&self, model: Option<&str>) -> Option<&str> {
        match model {
            None => self.default_model.as_deref(),
            Some(name) => self.models.get(name).map(String::as_str).or(self
                .default_model
                .as_deref()
                .filter(|default| *default == name)),
        }
    }

    /// The model names calls may use there: the mapped ones and the
    /// default's own name.
    pub fn served_models(&self) -> BTreeSet<&str> {
        self.models
            .keys()
            .map(String::as_str)
            .chain(self.default_model.as_deref())
            .collect()
    }

    fn validate(&self) -> Result<(), String> {
        if !is_subject_token(&self.name) {
            return Err("name: use letters, digits, `-` and `_` only".into());
        }
        check_base_url(&self.base_url)?;
        if let Some(var) = &self.api_key_env
            && !is_env_var_name(var)
        {
            return Err(format!(
                "api_key_env `{var}` is not an environment variable name (it names the \
                 variable that holds the key, not the key)"
            ));
        }
        if self.models.is_empty() && self.default_model.is_none() {
            return Err("give `models` or `default_model`: it serves nothing".into());
        }
        let names = self.models.iter().flat_map(|(k, v)| [k, v]);
        if names
            .chain(&self.default_model)
            .any(|m| m.trim().is_empty())
        {
            return Err("model names must not be empty".into());
        }
        if self
            .cost_per_call
            .is_some_and(|c| !(c >= 0.0 && c.is_finite()))
        {
            return Err("cost_per_call must be a finite number >= 0".into());
        }
        let limits = [
            self.max_concurrent as u64,
            self.timeout_ms,
            self.connect_timeout_ms,
            self.idle_timeout_ms,
            self.check_interval_ms,
        ];
        if limits.contains(&0) {
            return Err(
                "max_concurrent, timeout_ms, connect_timeout_ms, idle_timeout_ms and \
                 check_interval_ms must be at least 1"
                    .into(),
            );
        }
        if self.max_event_bytes < 1024 {
            return Err("max_event_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

/// An http(s) URL with a host, and no credentials in it (they would be
/// shown wherever the URL is: the key goes in `api_key_env`).
fn check_base_url(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("base_url `{url}` is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("base_url `{url}`: use an http:// or https:// URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "base_url must not hold credentials: name the key's variable in api_key_env".into(),
        );
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("base_url `{url}`: no query or fragment"));
    }
    Ok(())
}

fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Each provider valid, and their names distinct.
pub(super) fn validate(providers: &[ProviderConfig]) -> Result<(), String> {
    let mut names = BTreeSet::new();
    for (i, provider) in providers.iter().enumerate() {
        let at = match provider.name.is_empty() {
            true => format!("providers[{i}]"),
            false => format!("providers.{}", provider.name),
        };
        provider.validate().map_err(|e| format!("{at}: {e}"))?;
        if !names.insert(&provider.name) {
            return Err(format!("{at}: two providers have this name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HybridConfig;
    use jetsonmind_testkit::config_with;

    fn provider() -> ProviderConfig {
        ProviderConfig {
            name: "p".into(),
            base_url: "http://127.0.0.1:8080/v1".into(),
            models: [("cloud-small".to_string(), "small-v2".to_string())].into(),
            ..ProviderConfig::default()
        }
    }

    #[test]
    fn calls_map_to_the_providers_models_and_nothing_else() {
        let mut p = provider();
        assert_eq!(p.provider_model(Some("cloud-small")), Some("small-v2"));
        assert_eq!(p.provider_model(Some("small-v2")), None, "not mapped");
        assert_eq!(p.provider_model(None), None, "no default");
        p.default_model = Some("big-v1".into());
        assert_eq!(p.provider_model(None), Some("big-v1"));
        assert_eq!(p.provider_model(Some("big-v1")), Some("big-v1"));
        assert_eq!(
            p.served_models().into_iter().collect::<Vec<_>>(),
            vec!["big-v1", "cloud-small"]
        );
    }

    #[test]
    fn providers_come_from_one_environment_variable() {
        let value =
            r#"[{name = "p", base_url = "http://127.0.0.1:1/v1", models = {cloud-small = "m"}}]"#;
        let env = [("JETSONMIND_HYBRID__PROVIDERS", value)];
        let config = config_with::<HybridConfig>(&env).unwrap();
        let p = &config.section::<HybridConfig>().providers[0];
        assert_eq!(p.provider_model(Some("cloud-small")), Some("m"));
        assert_eq!(p.max_concurrent, ProviderConfig::default().max_concurrent);
        assert!(
            !config.section::<HybridConfig>().enabled(),
            "a provider needs no hub"
        );
        let typo = value.replace("models", "modles");
        assert!(config_with::<HybridConfig>(&[("JETSONMIND_HYBRID__PROVIDERS", &typo)]).is_err());
    }

    #[test]
    fn bad_providers_are_refused_saying_which_and_why() {
        type Spoil = fn(&mut ProviderConfig);
        let cases: [(Spoil, &str); 8] = [
            (|p| p.name = "a b".into(), "name"),
            (|p| p.base_url = "ftp://x/v1".into(), "http"),
            (
                |p| p.base_url = "https://user:pw@x/v1".into(),
                "credentials",
            ),
            (|p| p.api_key_env = Some("sk-123".into()), "api_key_env"),
            (|p| p.models.clear(), "serves nothing"),
            (|p| p.cost_per_call = Some(-1.0), "cost_per_call"),
            (|p| p.timeout_ms = 0, "timeout_ms"),
            (|p| p.max_event_bytes = 10, "max_event_bytes"),
        ];
        for (spoil, named) in cases {
            let mut p = provider();
            spoil(&mut p);
            let error = validate(&[p]).unwrap_err();
            assert!(error.contains(named), "{named}: {error}");
        }
        let error = validate(&[provider(), provider()]).unwrap_err();
        assert!(error.contains("two providers"), "{error}");
        assert_eq!(validate(&[provider()]), Ok(()));
    }
}
