//! Scaled dot-product attention over sequences packed one after another
//! (an encoder's batch without padding: each text attends to its own
//! tokens only).

use rayon::prelude::*;

use crate::vector::{dot, softmax};

/// Each sequence's attention over its own tokens, every head: `qkv` holds a
/// row per token, its queries, keys and values side by side
/// (`3 * heads * head_size` wide); `sequences` each sequence's `(first row,
/// rows)`, in order and without gaps. The result: a row per token,
/// `heads * head_size` wide. Sequences run in parallel.
///
/// # Panics
/// When `qkv` is not `3 * heads * head_size` wide for every row the
/// sequences cover, or a sequence does not start where the one before ends.
pub fn attend_packed(
    qkv: &[f32],
    sequences: &[(usize, usize)],
    heads: usize,
    head_size: usize,
) -> Vec<f32> {
    let hidden = heads * head_size;
    let width = 3 * hidden;
    let tokens: usize = sequences.iter().map(|(_, len)| len).sum();
    assert_eq!(qkv.len(), tokens * width, "attend_packed: qkv's shape");
    let scale = 1.0 / (head_size as f32).sqrt();
    let mut out = vec![0.0f32; tokens * hidden];
    let mut rest = out.as_mut_slice();
    let mut per_sequence = Vec::with_capacity(sequences.len());
    let mut next = 0;
    for &(start, len) in sequences {
        assert_eq!(
            start, next,
            "attend_packed: sequences out of order or with gaps"
        );
        next = start + len;
        let (own, after) = rest.split_at_mut(len * hidden);
        let rows = &qkv[start * width..next * width];
        per_sequence.push((own, rows, len));
        rest = after;
    }
    per_sequence.into_par_iter().for_each(|(out, rows, len)| {
        let mut weights = Vec::with_capacity(len);
        for head in 0..heads {
            let keys = &rows[hidden + head * head_size..];
            let values = &rows[2 * hidden + head * head_size..];
            for (i, out) in out.chunks_exact_mut(hidden).enumerate() {
                let query = &rows[i * width + head * head_size..][..head_size];
                let out = &mut out[head * head_size..][..head_size];
                let strided = Strided {
                    keys,
                    values,
                    stride: width,
                    len,
                };
                attend_query(query, strided, scale, &mut weights, out);
            }
        }
    });
    out
}

/// `len` keys and as many values, each a head's width long, `stride`
/// apart (key `j` at `keys[j * stride..]`).
pub struct Strided<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub stride: usize,
    pub len: usize,
}

/// One query's attention over one head's keys and values, added to `out`
/// (`query.len()` wide): `out += Σ_j softmax_j(scale · query · key_j) value_j`.
/// `weights` is scratch space, reused between calls.
pub fn attend_query(
    query: &[f32],
    over: Strided,
    scale: f32,
    weights: &mut Vec<f32>,
    out: &mut [f32],
) {
    let width = query.len();
    let at = |j: usize| j * over.stride;
    weights.clear();
    weights.extend((0..over.len).map(|j| dot(query, &over.keys[at(j)..][..width]) * scale));
    softmax(weights);
    for (j, w) in weights.iter().enumerate() {
        for (o, v) in out.iter_mut().zip(&over.values[at(j)..][..width]) {
            *o += w * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention over packed sequences equals attention over each alone,
    /// written out the plain way.
    #[test]
    fn attention_stays_within_each_sequence() {
        let (heads, head_size) = (2, 3);
        let width = 3 * heads * head_size;
        let sequences = [(0, 2), (2, 3), (5, 1)];
        let qkv: Vec<f32> = (0..6 * width)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        let got = attend_packed(&qkv, &sequences, heads, head_size);
        let hidden = heads * head_size;
        for (start, len) in sequences {
            for head in 0..heads {
                let part = |t: usize, p: usize| -> Vec<f32> {
                    let at = (start + t) * width + p * hidden + head * head_size;
                    qkv[at..at + head_size].to_vec()
                };
                for i in 0..len {
                    let scores: Vec<f32> = (0..len)
                        .map(|j| dot(&part(i, 0), &part(j, 1)) / (head_size as f32).sqrt())
                        .collect();
                    let total: f32 = scores.iter().map(|s| s.exp()).sum();
                    for d in 0..head_size {
                        let want: f32 = (0..len)
                            .map(|j| scores[j].exp() / total * part(j, 2)[d])
                            .sum();
                        let have = got[(start + i) * hidden + head * head_size + d];
                        assert!((want - have).abs() < 1e-5, "{want} {have}");
                    }
                }
            }
        }
    }
}
