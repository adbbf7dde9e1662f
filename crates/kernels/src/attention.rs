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
    for &(start, len) in sequences {
        let (own, after) = rest.split_at_mut(len * hidden);
        let rows = &qkv[start * width..(start + len) * width];
        per_sequence.push((own, rows, len));
        rest = after;
    }
    per_sequence.into_par_iter().for_each(|(out, rows, len)| {
        let part = |token: usize, part: usize, head: usize| {
            &rows[token * width + part * hidden + head * head_size..][..head_size]
        };
        let mut weights = vec![0.0f32; len];
        for head in 0..heads {
            for i in 0..len {
                let query = part(i, 0, head);
                for (j, w) in weights.iter_mut().enumerate() {
                    *w = dot(query, part(j, 1, head)) * scale;
                }
                softmax(&mut weights);
                let target = &mut out[i * hidden + head * head_size..][..head_size];
                for (j, w) in weights.iter().enumerate() {
                    for (t, v) in target.iter_mut().zip(part(j, 2, head)) {
                        *t += w * v;
                    }
                }
            }
        }
    });
    out
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
