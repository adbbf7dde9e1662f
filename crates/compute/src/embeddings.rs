//! `embed` and `rerank`: sentence vectors, and documents ranked by their
//! vectors' similarity to a query's (a bi-encoder: fast, and a little less
//! exact than a cross-encoder reading query and document together).
//! Vectors are deterministic, so repeated texts come from the inference
//! cache.

use std::sync::Arc;

use jetsonmind_core::content::text_and_structured;
use jetsonmind_core::rmcp::model::CallToolResult;
use jetsonmind_core::tool_error;
use jetsonmind_core::unit::CallContext;
use jetsonmind_data::cache::{InferenceCache, cache_key};
use serde_json::{Value, json};

use crate::engine::embedding::similarity;
use crate::engine::{EmbeddingEngine, EngineError, EngineKind};
use crate::models::ModelRegistry;
use crate::schema::{EmbedArgs, RerankArgs};

pub use jetsonmind_contract::inference::{EMBED, RERANK};

use crate::config::EmbeddingsConfig;

pub struct EmbeddingService {
    pub models: Arc<ModelRegistry>,
    pub cache: Arc<InferenceCache>,
    pub settings: EmbeddingsConfig,
}

#[derive(Debug, thiserror::Error)]
enum EmbedError {
    #[error("invalid arguments: {0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl EmbeddingService {
    pub async fn embed(&self, args: EmbedArgs, context: CallContext) -> CallToolResult {
        let outcome = async {
            self.check(&args.texts, "texts")?;
            let engine = self.engine(args.model.as_deref(), &context).await?;
            let (vectors, tokens) = self.vectors(&engine, &args.texts).await?;
            let embeddings: Vec<Value> = vectors.iter().map(|v| vector_json(v)).collect();
            Ok::<_, EmbedError>(json!({
                "embeddings": embeddings,
                "model": engine.info().id,
                "dimensions": engine.dimensions(),
                "tokens": tokens,
            }))
        }
        .await;
        match outcome {
            Ok(structured) => {
                let summary = format!(
                    "{} vector(s) of {} dimensions from {}",
                    args.texts.len(),
                    structured["dimensions"],
                    structured["model"].as_str().unwrap_or_default()
                );
                text_and_structured(summary, structured)
            }
            Err(e) => tool_error(e.to_string()),
        }
    }

    pub async fn rerank(&self, args: RerankArgs, context: CallContext) -> CallToolResult {
        let outcome = async {
            self.check(&args.documents, "documents")?;
            self.check(std::slice::from_ref(&args.query), "query")?;
            let engine = self.engine(args.model.as_deref(), &context).await?;
            let mut texts = vec![args.query.clone()];
            texts.extend(args.documents.iter().cloned());
            let (vectors, tokens) = self.vectors(&engine, &texts).await?;
            let mut ranked: Vec<(usize, f32)> = vectors[1..]
                .iter()
                .enumerate()
                .map(|(i, v)| (i, similarity(&vectors[0], v)))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            ranked.truncate(args.top_k.map_or(ranked.len(), |k| k as usize));
            let results: Vec<Value> = ranked
                .iter()
                .map(|(i, score)| json!({"index": i, "score": score, "document": args.documents[*i]}))
                .collect();
            Ok::<_, EmbedError>(json!({"results": results, "model": engine.info().id, "tokens": tokens}))
        }
        .await;
        match outcome {
            Ok(structured) => {
                let lines: Vec<String> = structured["results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        format!(
                            "{:.3} [{}] {}",
                            r["score"].as_f64().unwrap_or(0.0),
                            r["index"],
                            r["document"].as_str().unwrap_or_default()
                        )
                    })
                    .collect();
                text_and_structured(lines.join("\n"), structured)
            }
            Err(e) => tool_error(e.to_string()),
        }
    }

    fn check(&self, texts: &[String], what: &str) -> Result<(), EmbedError> {
        let limits = &self.settings;
        if texts.is_empty() {
            return Err(EmbedError::Invalid(format!("`{what}` is empty")));
        }
        if texts.len() > limits.max_texts {
            return Err(EmbedError::Invalid(format!(
                "`{what}` has {} texts; the limit is {} (compute.embeddings.max_texts)",
                texts.len(),
                limits.max_texts
            )));
        }
        if let Some((i, text)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > limits.max_text_bytes)
        {
            return Err(EmbedError::Invalid(format!(
                "`{what}` text {i} is {} bytes; the limit is {} (compute.embeddings.max_text_bytes)",
                text.len(),
                limits.max_text_bytes
            )));
        }
        Ok(())
    }

    async fn engine(
        &self,
        model: Option<&str>,
        context: &CallContext,
    ) -> Result<Arc<dyn EmbeddingEngine>, EmbedError> {
        Ok(self
            .models
            .engine(model, EngineKind::Embedding, context.progress.as_ref())
            .await?
            .embedding()?)
    }

    /// One vector per text, and the tokens read in all: cached ones from
    /// the cache, the rest embedded in batches on a blocking thread and cached.
    async fn vectors(
        &self,
        engine: &Arc<dyn EmbeddingEngine>,
        texts: &[String],
    ) -> Result<(Vec<Vec<f32>>, usize), EmbedError> {
        let model = engine.info().id.clone();
        let keys: Vec<String> = texts
            .iter()
            .map(|t| cache_key(EMBED, &model, &json!({"text": t})))
            .collect();
        let mut found: Vec<Option<CachedVector>> = keys
            .iter()
            .map(|k| {
                self.cache
                    .get(k)
                    .and_then(|v| serde_json::from_value(v).ok())
            })
            .collect();
        let missing: Vec<usize> = (0..texts.len()).filter(|i| found[*i].is_none()).collect();
        if !missing.is_empty() {
            let batch = self.settings.batch_size;
            let todo: Vec<String> = missing.iter().map(|i| texts[*i].clone()).collect();
            let worker = engine.clone();
            let computed = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let mut out = Vec::with_capacity(todo.len());
                for chunk in todo.chunks(batch) {
                    let embedded = worker.embed(chunk)?;
                    out.extend(embedded.vectors.into_iter().zip(embedded.tokens));
                }
                tracing::debug!(
                    texts = out.len(),
                    tokens = out.iter().map(|(_, t)| t).sum::<usize>(),
                    ms = started.elapsed().as_millis() as u64,
                    "embedded"
                );
                Ok::<_, EngineError>(out)
            })
            .await
            .map_err(|e| EngineError::Inference(format!("embedding thread failed: {e}")))??;
            for (i, (vector, tokens)) in missing.into_iter().zip(computed) {
                let entry = CachedVector { vector, tokens };
                self.cache
                    .put(keys[i].clone(), EMBED, &model, json!(&entry));
                found[i] = Some(entry);
            }
        }
        let found: Vec<CachedVector> = found.into_iter().map(Option::unwrap_or_default).collect();
        let tokens = found.iter().map(|f| f.tokens).sum();
        Ok((found.into_iter().map(|f| f.vector).collect(), tokens))
    }
}

/// A text's vector as the inference cache keeps it.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct CachedVector {
    vector: Vec<f32>,
    tokens: usize,
}

/// A vector as JSON numbers that print as their `f32` (about 9 digits), not
/// as the `f64` that serde_json widens an `f32` to (17): half the bytes to
/// send and for the client to parse, and the client reads back the same `f32`.
fn vector_json(vector: &[f32]) -> Value {
    Value::Array(vector.iter().map(|x| json!(shortest_f64(*x))).collect())
}

/// The `f64` nearest to the shortest decimal that reads back as `x`.
fn shortest_f64(x: f32) -> f64 {
    let mut digits = zmij::Buffer::new();
    digits.format(x).parse().unwrap_or(f64::from(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_print_as_short_as_their_f32_and_read_back_exactly() {
        let values = [
            0.1f32,
            -0.033_843_61,
            1.0,
            0.0,
            -0.0,
            1.2e-10,
            f32::MIN_POSITIVE,
            0.123_456_79,
        ];
        for x in values {
            let text = serde_json::to_string(&vector_json(&[x])).unwrap();
            let back: Vec<f32> = serde_json::from_str(&text).unwrap();
            assert_eq!(back[0].to_bits(), x.to_bits(), "{x} came back as {text}");
            assert!(text.len() <= 2 + 15, "{x} printed as {text}");
        }
        // And a sample of every f32 there is, every 10007th bit pattern.
        for bits in (0..=u32::MAX).step_by(10_007) {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                let text = serde_json::to_string(&vector_json(&[x])).unwrap();
                let back: Vec<f32> = serde_json::from_str(&text).unwrap();
                assert_eq!(back[0].to_bits(), x.to_bits(), "{x:e} came back as {text}");
            }
        }
        let widened = serde_json::to_string(&json!([0.1f32])).unwrap();
        assert!(widened.len() > serde_json::to_string(&vector_json(&[0.1])).unwrap().len());
    }
}
