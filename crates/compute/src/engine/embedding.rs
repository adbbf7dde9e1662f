//! Text embeddings, behind a trait: the tools know [`EmbeddingEngine`],
//! not BERT.

use super::{EngineError, ModelInfo};

/// A loaded sentence-embedding model. Calls block: run them off the async runtime.
pub trait EmbeddingEngine: Send + Sync {
    fn info(&self) -> &ModelInfo;

    /// Length of each vector.
    fn dimensions(&self) -> usize;

    /// One unit-length vector per text, in order: equal texts give equal
    /// vectors, so results can be cached.
    fn embed(&self, texts: &[String]) -> Result<Embedded, EngineError>;
}

pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read per text (after the model's cut).
    pub tokens: Vec<usize>,
}

/// Cosine similarity of unit vectors: their dot product.
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
