//! Reads the metadata of a GGUF file (the header's key-value pairs), to
//! describe a model in the store without loading it.
//!
//! Format: magic `GGUF`, version (u32), tensor count (u64), key-value count
//! (u64), then each key (u64 length + UTF-8) with a typed value; arrays are
//! skipped over (the tokenizer's are large and not needed here).

use std::collections::BTreeMap;
use std::io::{self, Read};

/// The metadata values kept: strings and numbers.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Number(f64),
    Bool(bool),
}

/// What the store records of a GGUF model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufInfo {
    pub architecture: Option<String>,
    pub quantization: Option<String>,
    pub parameters_label: Option<String>,
    pub context_length: Option<u64>,
    pub license: Option<String>,
}

/// Longest key or string value accepted: a bound against a corrupt length
/// making us allocate gigabytes.
const MAX_STRING: u64 = 1 << 24;
const MAX_KV: u64 = 1 << 16;

/// The header's key-value pairs, arrays left out.
pub fn read_metadata(mut input: impl Read) -> io::Result<BTreeMap<String, Value>> {
    let mut magic = [0u8; 4];
    input.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(invalid("not a GGUF file"));
    }
    let version = read_u32(&mut input)?;
    if !(2..=3).contains(&version) {
        return Err(invalid(&format!("GGUF version {version} is not supported")));
    }
    let _tensors = read_u64(&mut input)?;
    let count = read_u64(&mut input)?;
    if count > MAX_KV {
        return Err(invalid("implausible metadata count"));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..count {
        let key = read_string(&mut input)?;
        let kind = read_u32(&mut input)?;
        if let Some(value) = read_value(&mut input, kind)? {
            metadata.insert(key, value);
        }
    }
    Ok(metadata)
}

/// The fields the store shows, from the metadata.
pub fn describe(metadata: &BTreeMap<String, Value>) -> GgufInfo {
    let text = |key: &str| match metadata.get(key) {
        Some(Value::Text(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let number = |key: &str| match metadata.get(key) {
        Some(Value::Number(n)) => Some(*n),
        _ => None,
    };
    let architecture = text("general.architecture");
    let context_length = architecture
        .as_deref()
        .and_then(|arch| number(&format!("{arch}.context_length")))
        .map(|n| n as u64);
    GgufInfo {
        quantization: number("general.file_type").map(|t| file_type_name(t as u32)),
        parameters_label: text("general.size_label"),
        license: text("general.license"),
        architecture,
        context_length,
    }
}

/// Bytes of KV cache one token of context takes (f16 keys and values), from
/// the layer count and attention shape; `None` when the header lacks them.
pub fn kv_bytes_per_token(metadata: &BTreeMap<String, Value>) -> Option<u64> {
    let arch = match metadata.get("general.architecture") {
        Some(Value::Text(arch)) => arch.clone(),
        _ => return None,
    };
    let number = |key: &str| match metadata.get(&format!("{arch}.{key}")) {
        Some(Value::Number(n)) if *n > 0.0 => Some(*n as u64),
        _ => None,
    };
    let layers = number("block_count")?;
    let heads = number("attention.head_count")?;
    let kv_heads = number("attention.head_count_kv").unwrap_or(heads);
    let head_dim = number("attention.key_length").unwrap_or(number("embedding_length")? / heads);
    let value_dim = number("attention.value_length").unwrap_or(head_dim);
    const F16: u64 = 2;
    Some(layers * kv_heads * (head_dim + value_dim) * F16)
}

/// llama.cpp's `llama_ftype`: how most of the weights are stored.
fn file_type_name(file_type: u32) -> String {
    let name = match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        other => return format!("file_type {other}"),
    };
    name.to_string()
}

fn read_value(input: &mut impl Read, kind: u32) -> io::Result<Option<Value>> {
    let number = |n: f64| Ok(Some(Value::Number(n)));
    match kind {
        0 => number(read_array::<1>(input)?[0] as f64),
        1 => number(read_array::<1>(input)?[0] as i8 as f64),
        2 => number(u16::from_le_bytes(read_array(input)?) as f64),
        3 => number(i16::from_le_bytes(read_array(input)?) as f64),
        4 => number(read_u32(input)? as f64),
        5 => number(i32::from_le_bytes(read_array(input)?) as f64),
        6 => number(f32::from_le_bytes(read_array(input)?) as f64),
        7 => Ok(Some(Value::Bool(read_array::<1>(input)?[0] != 0))),
        8 => Ok(Some(Value::Text(read_string(input)?))),
        9 => {
            skip_array(input)?;
            Ok(None)
        }
        10 => number(read_u64(input)? as f64),
        11 => number(i64::from_le_bytes(read_array(input)?) as f64),
        12 => number(f64::from_le_bytes(read_array(input)?)),
        other => Err(invalid(&format!("unknown GGUF value type {other}"))),
    }
}

fn skip_array(input: &mut impl Read) -> io::Result<()> {
    let kind = read_u32(input)?;
    let len = read_u64(input)?;
    let fixed = match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    match fixed {
        Some(width) => {
            let bytes = len
                .checked_mul(width)
                .ok_or_else(|| invalid("array too large"))?;
            let skipped = io::copy(&mut input.take(bytes), &mut io::sink())?;
            if skipped != bytes {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        None => {
            for _ in 0..len {
                read_value(input, kind)?;
            }
        }
    }
    Ok(())
}

fn read_string(input: &mut impl Read) -> io::Result<String> {
    let len = read_u64(input)?;
    if len > MAX_STRING {
        return Err(invalid("implausible string length"));
    }
    let mut bytes = vec![0u8; len as usize];
    input.read_exact(&mut bytes)?;
    String::from_utf8(bytes).map_err(|_| invalid("a string is not UTF-8"))
}

fn read_array<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    input.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    Ok(u32::from_le_bytes(read_array(input)?))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    Ok(u64::from_le_bytes(read_array(input)?))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// Builds GGUF headers for tests (here and in the store's tests).
#[cfg(test)]
pub(crate) mod build {
    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A GGUF v3 header with the given string and u32 pairs and one string array.
    pub fn header(strings: &[(&str, &str)], numbers: &[(&str, u32)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend(((strings.len() + numbers.len() + 1) as u64).to_le_bytes());
        string(&mut out, "tokenizer.ggml.tokens");
        out.extend(9u32.to_le_bytes());
        out.extend(8u32.to_le_bytes());
        out.extend(2u64.to_le_bytes());
        string(&mut out, "<s>");
        string(&mut out, "</s>");
        for (key, value) in strings {
            string(&mut out, key);
            out.extend(8u32.to_le_bytes());
            string(&mut out, value);
        }
        for (key, value) in numbers {
            string(&mut out, key);
            out.extend(4u32.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_store_shows() {
        let bytes = build::header(
            &[
                ("general.architecture", "llama"),
                ("general.license", "apache-2.0"),
                ("general.size_label", "135M"),
            ],
            &[("general.file_type", 3), ("llama.context_length", 8192)],
        );
        let metadata = read_metadata(&bytes[..]).unwrap();
        assert_eq!(
            describe(&metadata),
            GgufInfo {
                architecture: Some("llama".into()),
                quantization: Some("Q4_1".into()),
                parameters_label: Some("135M".into()),
                context_length: Some(8192),
                license: Some("apache-2.0".into()),
            }
        );
        assert!(!metadata.contains_key("tokenizer.ggml.tokens"));
    }

    #[test]
    fn kv_cache_per_token_follows_the_attention_shape() {
        // SmolLM2-135M: 30 layers, 576 wide, 9 heads of 64, 3 KV heads.
        let bytes = build::header(
            &[("general.architecture", "llama")],
            &[
                ("llama.block_count", 30),
                ("llama.embedding_length", 576),
                ("llama.attention.head_count", 9),
                ("llama.attention.head_count_kv", 3),
            ],
        );
        let metadata = read_metadata(&bytes[..]).unwrap();
        assert_eq!(kv_bytes_per_token(&metadata), Some(30 * 3 * (64 + 64) * 2));
        let bare = build::header(&[("general.architecture", "llama")], &[]);
        assert_eq!(kv_bytes_per_token(&read_metadata(&bare[..]).unwrap()), None);
    }

    #[test]
    fn truncated_or_foreign_input_is_an_error_not_a_panic() {
        let bytes = build::header(&[("general.architecture", "llama")], &[]);
        for cut in [0, 3, 10, 30, bytes.len() - 1] {
            assert!(read_metadata(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_metadata(&b"PK\x03\x04rest"[..]).is_err());
        let mut huge = b"GGUF".to_vec();
        huge.extend(3u32.to_le_bytes());
        huge.extend(0u64.to_le_bytes());
        huge.extend(1u64.to_le_bytes());
        huge.extend(u64::MAX.to_le_bytes());
        assert!(read_metadata(&huge[..]).is_err());
    }
}
