//! A CTranslate2 `model.bin` (format version 6) read into candle tensors
//! under the names candle's Whisper takes.
//!
//! The file: `u32` version, the spec's name, `u32` revision, then each
//! variable (name, rank, `u32` dims, dtype, `u32` byte count, data) and
//! aliases (name, target). Strings are a `u16` length then the bytes with a
//! closing NUL. CTranslate2 fuses attention projections (self-attention's
//! q, k, v into one `linear_0`; cross-attention's k, v into `linear_1`);
//! they are split apart here.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// The format versions read here.
const VERSIONS: std::ops::RangeInclusive<u32> = 5..=6;

#[derive(Debug, thiserror::Error)]
pub enum Ct2Error {
    #[error("not a CTranslate2 model: {0}")]
    Format(String),
    #[error("CTranslate2 model: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// The variables of a model file, as stored.
pub struct Ct2Model {
    pub spec: String,
    pub tensors: HashMap<String, Tensor>,
    /// Scalars (attention heads and flags), widened.
    pub scalars: HashMap<String, i64>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Ct2Error> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| Ct2Error::Format(format!("it ends early at byte {}", self.at)))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, Ct2Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Ct2Error> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, Ct2Error> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, Ct2Error> {
        let n = usize::from(self.u16()?);
        let raw = self.take(n)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| Ct2Error::Format("a name is not UTF-8".into()))
    }
}

/// Parse a whole model file. Half-precision weights are widened to `f32`.
pub fn read(bytes: &[u8]) -> Result<Ct2Model, Ct2Error> {
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.u32()?;
    if !VERSIONS.contains(&version) {
        return Err(Ct2Error::Format(format!(
            "format version {version}, not 5 or 6"
        )));
    }
    let spec = reader.string()?;
    let _revision = reader.u32()?;
    let count = reader.u32()?;
    let mut tensors = HashMap::new();
    let mut scalars = HashMap::new();
    for _ in 0..count {
        let name = reader.string()?;
        let rank = usize::from(reader.u8()?);
        let shape = (0..rank)
            .map(|_| reader.u32().map(|d| d as usize))
            .collect::<Result<Vec<_>, _>>()?;
        let dtype = reader.u8()?;
        let size = reader.u32()? as usize;
        let data = reader.take(size)?;
        let elements = shape.iter().try_fold(1usize, |n, d| n.checked_mul(*d));
        match dtype_of(dtype) {
            Some((_, width)) if elements.and_then(|n| n.checked_mul(width)) != Some(size) => {
                return Err(Ct2Error::Format(format!(
                    "{name}: {size} bytes for a {shape:?} shape"
                )));
            }
            Some((DType::F16 | DType::F32 | DType::BF16, _)) if rank > 0 => {
                let (dtype, _) = dtype_of(dtype).expect("matched");
                let tensor = Tensor::from_raw_buffer(data, dtype, &shape, &Device::Cpu)?;
                tensors.insert(name, tensor.to_dtype(DType::F32)?);
            }
            Some(_) if rank == 0 => {
                scalars.insert(name, scalar(dtype, data));
            }
            _ => {
                return Err(Ct2Error::Format(format!(
                    "{name}: value type {dtype} (quantized models are not read yet)"
                )));
            }
        }
    }
    let aliases = reader.u32()?;
    for _ in 0..aliases {
        let alias = reader.string()?;
        let target = reader.string()?;
        if let Some(tensor) = tensors.get(&target).cloned() {
            tensors.insert(alias, tensor);
        }
    }
    Ok(Ct2Model {
        spec,
        tensors,
        scalars,
    })
}

/// CTranslate2's `DataType` codes: the candle type and the width in bytes.
fn dtype_of(code: u8) -> Option<(DType, usize)> {
    match code {
        0 => Some((DType::F32, 4)),
        1 => Some((DType::I64, 1)), // int8: only scalars are read
        2 => Some((DType::I64, 2)), // int16
        3 => Some((DType::I64, 4)), // int32
        4 => Some((DType::F16, 2)),
        5 => Some((DType::BF16, 2)),
        _ => None,
    }
}

fn scalar(code: u8, data: &[u8]) -> i64 {
    match (code, data.len()) {
        (1, 1) => i64::from(data[0] as i8),
        (2, 2) => i64::from(i16::from_le_bytes([data[0], data[1]])),
        (3, 4) => i64::from(i32::from_le_bytes(data.try_into().expect("4 bytes"))),
        _ => 0,
    }
}

/// The tensors of a Whisper spec under the names of candle's Whisper
/// (Hugging Face's), the fused projections split.
pub fn whisper_names(model: &Ct2Model) -> Result<HashMap<String, Tensor>, Ct2Error> {
    let mut out = HashMap::new();
    for (name, tensor) in &model.tensors {
        let parts: Vec<&str> = name.split('/').collect();
        match parts.as_slice() {
            [side @ ("encoder" | "decoder"), rest @ ..] => {
                rename(side, rest, tensor, &mut out)?;
            }
            _ => continue,
        }
    }
    Ok(out)
}

fn rename(
    side: &str,
    rest: &[&str],
    tensor: &Tensor,
    out: &mut HashMap<String, Tensor>,
) -> Result<(), Ct2Error> {
    let prefix = format!("model.{side}");
    let mut put = |name: String, t: Tensor| {
        out.insert(name, t);
    };
    match rest {
        [conv @ ("conv1" | "conv2"), param] => {
            put(format!("{prefix}.{conv}.{param}"), tensor.clone())
        }
        ["layer_norm", param] => put(
            format!("{prefix}.layer_norm.{}", norm(param)),
            tensor.clone(),
        ),
        ["embeddings", "weight"] => put(format!("{prefix}.embed_tokens.weight"), tensor.clone()),
        ["position_encodings", "encodings"] => {
            put(format!("{prefix}.embed_positions.weight"), tensor.clone())
        }
        [layer, block, sub @ ..] if layer.starts_with("layer_") => {
            let i = &layer["layer_".len()..];
            let at = format!("{prefix}.layers.{i}");
            layer_part(&at, block, sub, tensor, &mut put)?;
        }
        _ => {}
    }
    Ok(())
}

fn layer_part(
    at: &str,
    block: &str,
    sub: &[&str],
    tensor: &Tensor,
    put: &mut impl FnMut(String, Tensor),
) -> Result<(), Ct2Error> {
    let (attn, ln) = match block {
        "self_attention" => ("self_attn", "self_attn_layer_norm"),
        "attention" => ("encoder_attn", "encoder_attn_layer_norm"),
        "ffn" => ("", "final_layer_norm"),
        _ => return Ok(()),
    };
    match (block, sub) {
        (_, ["layer_norm", param]) => put(format!("{at}.{ln}.{}", norm(param)), tensor.clone()),
        ("ffn", [linear, param]) => {
            let fc = if *linear == "linear_0" { "fc1" } else { "fc2" };
            put(format!("{at}.{fc}.{param}"), tensor.clone());
        }
        ("self_attention", ["linear_0", param]) => {
            for (proj, part) in ["q_proj", "k_proj", "v_proj"]
                .iter()
                .zip(tensor.chunk(3, 0)?)
            {
                put(format!("{at}.{attn}.{proj}.{param}"), part);
            }
        }
        ("self_attention", ["linear_1", param]) | ("attention", ["linear_2", param]) => {
            put(format!("{at}.{attn}.out_proj.{param}"), tensor.clone())
        }
        ("attention", ["linear_0", param]) => {
            put(format!("{at}.{attn}.q_proj.{param}"), tensor.clone())
        }
        ("attention", ["linear_1", param]) => {
            for (proj, part) in ["k_proj", "v_proj"].iter().zip(tensor.chunk(2, 0)?) {
                put(format!("{at}.{attn}.{proj}.{param}"), part);
            }
        }
        _ => {}
    }
    Ok(())
}

/// CTranslate2 names a layer norm's scale and shift gamma and beta.
fn norm(param: &str) -> &str {
    match param {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny model file: one fused f16 attention projection and one scalar.
    fn file() -> Vec<u8> {
        let mut out = Vec::new();
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u16 + 1).to_le_bytes());
            out.extend(s.as_bytes());
            out.push(0);
        };
        out.extend(6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend(3u32.to_le_bytes());
        out.extend(2u32.to_le_bytes());
        string(&mut out, "encoder/layer_0/self_attention/linear_0/weight");
        out.push(2);
        out.extend(3u32.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.push(4);
        out.extend(6u32.to_le_bytes());
        for v in [1.0f32, 2.0, 3.0] {
            out.extend(half_bits(v).to_le_bytes());
        }
        string(&mut out, "encoder/num_heads");
        out.push(0);
        out.push(2);
        out.extend(2u32.to_le_bytes());
        out.extend(6i16.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out
    }

    /// f16 bits of small whole numbers (exact).
    fn half_bits(v: f32) -> u16 {
        let bits = v.to_bits();
        let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
    }

    #[test]
    fn reads_and_splits_a_fused_projection() {
        let bytes = file();
        let model = read(&bytes).unwrap();
        assert_eq!(model.spec, "WhisperSpec");
        assert_eq!(model.scalars["encoder/num_heads"], 6);
        let named = whisper_names(&model).unwrap();
        let at = "model.encoder.layers.0.self_attn";
        for (proj, want) in [("q_proj", 1.0f32), ("k_proj", 2.0), ("v_proj", 3.0)] {
            let t = &named[&format!("{at}.{proj}.weight")];
            assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [want]);
        }
    }

    #[test]
    fn a_cut_file_is_an_error_not_a_panic() {
        let bytes = file();
        for cut in 0..bytes.len() - 1 {
            assert!(read(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
