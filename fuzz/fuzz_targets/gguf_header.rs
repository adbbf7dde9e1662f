//! The GGUF header parser on arbitrary bytes: it must return an error or
//! metadata, never panic, overflow the stack or allocate without bound, and
//! what it returns must be safe to describe, validate and size.
//!
//! The parser is compiled in from its source file rather than through the
//! `jetsonmind-store` crate: it depends on nothing but `thiserror`, and this
//! spares building SQLite with sanitizers.

#![no_main]

#[path = "../../crates/store/src/gguf.rs"]
#[allow(dead_code)]
mod gguf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(metadata) = gguf::read_metadata(data) {
        let _ = gguf::describe(&metadata);
        let _ = gguf::validate(&metadata);
        let _ = gguf::kv_bytes_per_token(&metadata);
    }
});
