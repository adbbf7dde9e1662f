//! A chat completion's server-sent events: split into events (`data:`
//! lines, one event per blank line), read as chunks, and gathered into the
//! generation so far.

use serde::Deserialize;

/// What is wrong with a stream: it is broken, not an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StreamError {
    #[error("an event of the stream is larger than max_event_bytes ({0})")]
    TooLarge(usize),
    #[error("the stream is not UTF-8")]
    NotText,
    #[error("an event of the stream is not a chat completion chunk: {0}")]
    Malformed(String),
}

/// Splits the bytes of an event stream into the data of its events, as they
/// arrive (a chunk may end anywhere, even inside a character).
#[derive(Debug)]
pub struct SseReader {
    /// The line being received.
    line: Vec<u8>,
    /// The data lines of the event being received.
    data: Option<String>,
    max_event_bytes: usize,
}

impl SseReader {
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            line: Vec::new(),
            data: None,
            max_event_bytes,
        }
    }

    /// The data of each event `bytes` completes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, StreamError> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                if self.line.len() + self.data.as_ref().map_or(0, String::len)
                    > self.max_event_bytes
                {
                    return Err(StreamError::TooLarge(self.max_event_bytes));
                }
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|_| StreamError::NotText)?;
            if let Some(event) = self.end_line(&line) {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Take in one whole line; the event's data when it ends one.
    fn end_line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        // Comments (`: keep-alive`) and the other fields (event, id, retry)
        // carry nothing a chat completion needs.
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

/// One event of a chat completion stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Chunk(Chunk),
    /// `[DONE]`: nothing follows.
    Done,
}

impl Event {
    pub fn parse(data: &str) -> Result<Self, StreamError> {
        if data.trim() == "[DONE]" {
            return Ok(Event::Done);
        }
        serde_json::from_str(data)
            .map(Event::Chunk)
            .map_err(|e| StreamError::Malformed(e.to_string()))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    pub choices: Vec<Choice>,
    pub usage: Option<Usage>,
    /// llama.cpp's server says how long the prompt and the generation took.
    pub timings: Option<ServerTimings>,
    /// Some servers report a failure inside the stream.
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Delta {
    pub content: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ServerTimings {
    pub prompt_ms: f64,
    pub predicted_ms: f64,
    pub prompt_per_second: f64,
    pub predicted_per_second: f64,
}

/// The generation so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Generation {
    pub text: String,
    /// Chunks that carried text: about one token each, until the usage
    /// says how many there were.
    pub pieces: u32,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    pub timings: Option<ServerTimings>,
    /// `[DONE]` came.
    pub done: bool,
}

impl Generation {
    /// Take in one event; whether it added text. A failure the provider
    /// reports in the stream is its answer: `Err` carries its message.
    pub fn take(&mut self, event: Event) -> Result<bool, String> {
        let chunk = match event {
            Event::Done => {
                self.done = true;
                return Ok(false);
            }
            Event::Chunk(chunk) => chunk,
        };
        if let Some(error) = chunk.error {
            return Err(error_message(&error));
        }
        self.usage = chunk.usage.or(self.usage);
        self.timings = chunk.timings.or(self.timings);
        let mut added = false;
        // One choice is asked for (no `n`): the first is the answer.
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(content) = choice.delta.content.filter(|c| !c.is_empty()) {
                self.text.push_str(&content);
                self.pieces += 1;
                added = true;
            }
            self.finish_reason = choice.finish_reason.or(self.finish_reason.take());
        }
        Ok(added)
    }

    /// Whether the provider said the generation is over.
    pub fn finished(&self) -> bool {
        self.done || self.finish_reason.is_some()
    }

    pub fn completion_tokens(&self) -> u32 {
        self.usage.map_or(self.pieces, |u| u.completion_tokens)
    }
}

/// What an OpenAI-style error (`{"error": {"message": ...}}`, or the error
/// object itself, or a string) says.
pub fn error_message(error: &serde_json::Value) -> String {
    let inner = error.get("error").unwrap_or(error);
    match inner.get("message").and_then(|m| m.as_str()) {
        Some(message) => message.to_string(),
        None => match inner.as_str() {
            Some(text) => text.to_string(),
            None => inner.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What llama.cpp's server sent for a 2-token answer (ids shortened).
    const LLAMA_SERVER: &str = concat!(
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"I\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"'m\"}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[],\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":32,\"total_tokens\":34},\"timings\":{\"prompt_n\":32,\"prompt_ms\":276.6,\"prompt_per_second\":115.7,\"predicted_n\":2,\"predicted_ms\":20.1,\"predicted_per_second\":99.5}}\n\n",
        "data: [DONE]\n\n",
    );

    fn generation_of(bytes: &[u8], split: usize) -> Result<Generation, StreamError> {
        let mut reader = SseReader::new(1 << 20);
        let mut generation = Generation::default();
        for piece in bytes.chunks(split) {
            for data in reader.feed(piece)? {
                generation.take(Event::parse(&data)?).unwrap();
            }
        }
        Ok(generation)
    }

    #[test]
    fn llama_servers_stream_read_in_pieces_of_any_size() {
        for split in [1, 2, 7, 64, LLAMA_SERVER.len()] {
            let generation = generation_of(LLAMA_SERVER.as_bytes(), split).unwrap();
            assert_eq!(generation.text, "I'm", "split {split}");
            assert_eq!(generation.pieces, 2);
            assert_eq!(generation.finish_reason.as_deref(), Some("length"));
            assert_eq!(generation.usage.unwrap().prompt_tokens, 32);
            assert_eq!(generation.timings.unwrap().prompt_ms, 276.6);
            assert!(generation.done && generation.finished());
        }
    }

    #[test]
    fn crlf_comments_other_fields_and_multiline_data_are_read_as_sse_says() {
        let mut reader = SseReader::new(1024);
        let stream = ": keep-alive\r\nevent: message\r\nid: 3\r\ndata: {\"a\":\r\ndata:1}\r\n\r\ndata: [DONE]\n\n";
        let events = reader.feed(stream.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec!["{\"a\":\n1}".to_string(), "[DONE]".to_string()]
        );
        assert_eq!(Event::parse(&events[1]), Ok(Event::Done));
        assert!(
            reader.feed(b"data: partial").unwrap().is_empty(),
            "not ended yet"
        );
        // A character cut between two reads is whole once both are in.
        let mut reader = SseReader::new(1024);
        let text = "data: {\"choices\":[{\"delta\":{\"content\":\"é\"}}]}\n\n".as_bytes();
        let cut = text.iter().position(|b| *b >= 0x80).unwrap() + 1;
        assert!(reader.feed(&text[..cut]).unwrap().is_empty());
        let data = reader.feed(&text[cut..]).unwrap();
        let mut generation = Generation::default();
        assert_eq!(generation.take(Event::parse(&data[0]).unwrap()), Ok(true));
        assert_eq!(generation.text, "é");
    }

    #[test]
    fn malformed_oversized_and_failed_streams_are_errors() {
        assert!(matches!(
            Event::parse("{not json"),
            Err(StreamError::Malformed(_))
        ));
        let mut reader = SseReader::new(16);
        let endless = [b'x'; 64];
        assert_eq!(reader.feed(&endless), Err(StreamError::TooLarge(16)));
        let mut reader = SseReader::new(1024);
        assert_eq!(reader.feed(b"data: \xff\n\n"), Err(StreamError::NotText));
        let failed = Event::parse(r#"{"error":{"message":"context too long","code":400}}"#);
        let mut generation = Generation::default();
        assert_eq!(
            generation.take(failed.unwrap()),
            Err("context too long".to_string())
        );
        let unfinished = generation_of(&LLAMA_SERVER.as_bytes()[..200], 200).unwrap();
        assert!(!unfinished.finished(), "{unfinished:?}");
    }
}
