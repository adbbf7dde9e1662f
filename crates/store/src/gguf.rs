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
        if let Some(value) = read_value(&mut input, kind, 0)? {
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
        .filter(|n| n.fract() == 0.0 && (0.0..=MAX_COUNT).contains(n))
        .map(|n| n as u64);
    GgufInfo {
        quantization: number("general.file_type").map(|t| file_type_name(t as u32)),
        parameters_label: text("general.size_label"),
        license: text("general.license"),
        architecture,
        context_length,
    }
}

/// A header value llama.cpp would misread or that would break the memory
/// estimate (a fractional head count divided by, a size that overflows).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("GGUF header: `{key}` {problem}")]
pub struct BadValue {
    pub key: String,
    pub problem: String,
}

/// Largest value accepted for a count or size: llama.cpp reads them as u32.
const MAX_COUNT: f64 = u32::MAX as f64;

/// The shape keys (under the architecture's prefix) that must be whole numbers.
const SHAPE_KEYS: &[&str] = &[
    "context_length",
    "block_count",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
];

/// Check the values the store and the memory estimate use: whole numbers in
/// range, and a KV cache size that can be computed.
pub fn validate(metadata: &BTreeMap<String, Value>) -> Result<(), BadValue> {
    whole(metadata, "general.file_type")?;
    if let Some(arch) = architecture(metadata) {
        for key in SHAPE_KEYS {
            whole(metadata, &format!("{arch}.{key}"))?;
        }
    }
    kv_bytes_per_token(metadata).map(|_| ())
}

/// Bytes of KV cache one token of context takes (f16 keys and values), from
/// the layer count and attention shape; `None` when the header lacks them,
/// an error when they are not usable numbers.
pub fn kv_bytes_per_token(metadata: &BTreeMap<String, Value>) -> Result<Option<u64>, BadValue> {
    let Some(arch) = architecture(metadata) else {
        return Ok(None);
    };
    // Zero counts as absent: an attention-free model has no KV cache to count.
    let number = |key: &str| -> Result<Option<u64>, BadValue> {
        Ok(whole(metadata, &format!("{arch}.{key}"))?.filter(|n| *n > 0))
    };
    let (Some(layers), Some(heads)) = (number("block_count")?, number("attention.head_count")?)
    else {
        return Ok(None);
    };
    let kv_heads = number("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = match (number("attention.key_length")?, number("embedding_length")?) {
        (Some(length), _) => length,
        (None, Some(width)) => width / heads,
        (None, None) => return Ok(None),
    };
    let value_dim = number("attention.value_length")?.unwrap_or(head_dim);
    const F16: u64 = 2;
    let bytes = head_dim
        .checked_add(value_dim)
        .and_then(|dims| dims.checked_mul(layers))
        .and_then(|n| n.checked_mul(kv_heads))
        .and_then(|n| n.checked_mul(F16));
    match bytes {
        Some(bytes) => Ok(Some(bytes)),
        None => Err(BadValue {
            key: format!("{arch}.attention"),
            problem: "gives a KV cache too large to count".into(),
        }),
    }
}

fn architecture(metadata: &BTreeMap<String, Value>) -> Option<&str> {
    match metadata.get("general.architecture") {
        Some(Value::Text(arch)) if !arch.is_empty() => Some(arch),
        _ => None,
    }
}

/// `key` as a whole number from 0 to u32::MAX; `None` when absent.
fn whole(metadata: &BTreeMap<String, Value>, key: &str) -> Result<Option<u64>, BadValue> {
    let bad = |problem: String| BadValue {
        key: key.to_string(),
        problem,
    };
    match metadata.get(key) {
        None => Ok(None),
        Some(Value::Number(n)) if n.fract() == 0.0 && (0.0..=MAX_COUNT).contains(n) => {
            Ok(Some(*n as u64))
        }
        Some(Value::Number(n)) => Err(bad(format!(
            "is {n}; it must be a whole number from 0 to {MAX_COUNT}"
        ))),
        Some(other) => Err(bad(format!("is {other:?}; it must be a number"))),
    }
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

/// Deepest nesting of arrays in arrays followed: a bound against a crafted
/// header recursing until the stack overflows.
const MAX_ARRAY_DEPTH: u32 = 4;

fn read_value(input: &mut impl Read, kind: u32, depth: u32) -> io::Result<Option<Value>> {
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
            skip_array(input, depth + 1)?;
            Ok(None)
        }
        10 => number(read_u64(input)? as f64),
        11 => number(i64::from_le_bytes(read_array(input)?) as f64),
        12 => number(f64::from_le_bytes(read_array(input)?)),
        other => Err(invalid(&format!("unknown GGUF value type {other}"))),
    }
}

fn skip_array(input: &mut impl Read, depth: u32) -> io::Result<()> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(invalid("arrays nested too deep"));
    }
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
                read_value(input, kind, depth)?;
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

/// Builds GGUF headers: for tests (here, the store's, the compute
/// server's) and the fuzz target's seeds.
pub mod build {
    /// A GGUF string: u64 length, then the bytes.
    pub fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A GGUF v3 header with the given string and u32 pairs and one string array.
    pub fn header(strings: &[(&str, &str)], numbers: &[(&str, u32)]) -> Vec<u8> {
        header_with_floats(strings, numbers, &[])
    }

    /// As [`header`], with f32 pairs too.
    pub fn header_with_floats(
        strings: &[(&str, &str)],
        numbers: &[(&str, u32)],
        floats: &[(&str, f32)],
    ) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        let count = strings.len() + numbers.len() + floats.len() + 1;
        out.extend((count as u64).to_le_bytes());
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
        for (key, value) in floats {
            string(&mut out, key);
            out.extend(6u32.to_le_bytes());
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
        assert_eq!(
            kv_bytes_per_token(&metadata),
            Ok(Some(30 * 3 * (64 + 64) * 2))
        );
        assert_eq!(validate(&metadata), Ok(()));
        let bare = build::header(&[("general.architecture", "llama")], &[]);
        assert_eq!(
            kv_bytes_per_token(&read_metadata(&bare[..]).unwrap()),
            Ok(None)
        );
    }

    /// The header of the review's 246-byte file: half an attention head made
    /// the memory estimate divide by zero.
    #[test]
    fn fractional_or_out_of_range_shapes_are_errors_not_panics() {
        let half_a_head = build::header_with_floats(
            &[("general.architecture", "llama")],
            &[("llama.block_count", 30), ("llama.embedding_length", 576)],
            &[("llama.attention.head_count", 0.5)],
        );
        let metadata = read_metadata(&half_a_head[..]).unwrap();
        let err = kv_bytes_per_token(&metadata).unwrap_err();
        assert_eq!(err.key, "llama.attention.head_count");
        assert!(err.to_string().contains("whole number"), "{err}");
        assert_eq!(validate(&metadata), Err(err));

        let negative = build::header_with_floats(
            &[("general.architecture", "llama")],
            &[],
            &[("llama.context_length", -1.0)],
        );
        let metadata = read_metadata(&negative[..]).unwrap();
        assert_eq!(validate(&metadata).unwrap_err().key, "llama.context_length");
        assert_eq!(describe(&metadata).context_length, None);

        let huge = build::header(
            &[("general.architecture", "llama")],
            &[
                ("llama.block_count", u32::MAX),
                ("llama.attention.head_count", u32::MAX),
                ("llama.attention.key_length", u32::MAX),
            ],
        );
        let metadata = read_metadata(&huge[..]).unwrap();
        assert!(kv_bytes_per_token(&metadata).is_err());
        assert!(validate(&metadata).is_err());
    }

    /// A header shaped like a real small model's (SmolLM2-135M), to mutate.
    fn realistic_header() -> Vec<u8> {
        build::header_with_floats(
            &[
                ("general.architecture", "llama"),
                ("general.name", "SmolLM2 135M Instruct"),
                ("general.license", "apache-2.0"),
                ("general.size_label", "135M"),
            ],
            &[
                ("general.file_type", 3),
                ("llama.context_length", 8192),
                ("llama.block_count", 30),
                ("llama.embedding_length", 576),
                ("llama.feed_forward_length", 1536),
                ("llama.attention.head_count", 9),
                ("llama.attention.head_count_kv", 3),
            ],
            &[("llama.rope.freq_base", 100000.0)],
        )
    }

    /// Everything the store and the compute server do with a header.
    fn use_every_reader(bytes: &[u8]) {
        if let Ok(metadata) = read_metadata(bytes) {
            let _ = describe(&metadata);
            let _ = validate(&metadata);
            let _ = kv_bytes_per_token(&metadata);
        }
    }

    /// The deterministic half of `fuzz/` (cargo-fuzz needs nightly): every
    /// prefix of a real-shaped header, and every byte of it flipped or set to
    /// an edge value, is read without a panic.
    #[test]
    fn no_truncation_or_byte_mutation_of_a_header_panics() {
        let header = realistic_header();
        assert_eq!(validate(&read_metadata(&header[..]).unwrap()), Ok(()));
        for cut in 0..header.len() {
            assert!(read_metadata(&header[..cut]).is_err(), "cut at {cut}");
        }
        let mut mutated = header.clone();
        for at in 0..header.len() {
            for value in [
                header[at] ^ 0x01,
                header[at] ^ 0x80,
                header[at] ^ 0xff,
                0x00,
                0x7f,
                0xff,
            ] {
                mutated[at] = value;
                use_every_reader(&mutated);
            }
            mutated[at] = header[at];
        }
    }

    #[test]
    fn deeply_nested_arrays_are_refused_not_followed() {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(0u64.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        build::string(&mut bytes, "nested");
        bytes.extend(9u32.to_le_bytes());
        for _ in 0..100_000 {
            // An array of one array of ...
            bytes.extend(9u32.to_le_bytes());
            bytes.extend(1u64.to_le_bytes());
        }
        let err = read_metadata(&bytes[..]).unwrap_err();
        assert!(err.to_string().contains("nested too deep"), "{err}");
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
