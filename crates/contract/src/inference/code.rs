//! `code_complete` asked of a chat model, and its answer cut back to the
//! completion: compute does this for models without fill-in-the-middle, and
//! the control plane for OpenAI-compatible providers, so both answer alike.

use super::tools::{ChatRole, CodeCompleteArgs};

/// The chat turns that ask a model to continue `args.code`.
pub fn instruct_completion(args: &CodeCompleteArgs) -> Vec<(ChatRole, String)> {
    let system = "You complete code. Reply with only the code that comes next, continuing exactly where the \
                  given code stops. No explanations, no repetition of the given code.";
    let mut user = format!("Language: {}\n", args.language);
    if let Some(context) = &args.context {
        user.push_str(&format!("Context:\n{context}\n"));
    }
    user.push_str(&format!("Code to continue:\n{}", args.code));
    if let Some(suffix) = &args.suffix {
        user.push_str(&format!("\nCode that follows the gap:\n{suffix}"));
    }
    vec![(ChatRole::System, system.into()), (ChatRole::User, user)]
}

/// Keep only what continues `code`: models wrap code in fences, repeat the
/// input, or start the function over; none of that is completion.
pub fn strip_to_completion(answer: &str, code: &str) -> String {
    let mut text = answer;
    if let Some(rest) = answer.trim_start().strip_prefix("```") {
        text = rest.split_once('\n').map_or("", |(_, body)| body);
    }
    let text = text.split("```").next().unwrap_or("");
    let trimmed_code = code.trim_end();
    let text = match text.find(trimmed_code) {
        Some(at) if !trimmed_code.is_empty() => {
            let rest = &text[at + trimmed_code.len()..];
            // The whitespace the code ended with is already in place.
            rest.strip_prefix(&code[trimmed_code.len()..])
                .unwrap_or(rest)
        }
        _ => skip_repeated_lines(text, code),
    };
    text.trim_end().to_string()
}

/// Drop the leading lines of `text` that are lines of `code`, in order.
fn skip_repeated_lines<'a>(text: &'a str, code: &str) -> &'a str {
    let code_lines: Vec<&str> = code
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut next_code = 0;
    let mut rest = text;
    loop {
        let (line, after) = rest.split_once('\n').unwrap_or((rest, ""));
        let trimmed = line.trim();
        if trimmed.is_empty() && !after.is_empty() && next_code > 0 {
            rest = after;
            continue;
        }
        match code_lines[next_code.min(code_lines.len())..]
            .iter()
            .position(|c| *c == trimmed)
        {
            Some(found) if !trimmed.is_empty() => {
                next_code += found + 1;
                rest = after;
            }
            _ => return rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruct_answers_are_cut_to_the_continuation() {
        let code = "def add(a, b):\n";
        assert_eq!(
            strip_to_completion(
                "```python\ndef add(a, b):\n    return a + b\n```\nThis adds.",
                code
            ),
            "    return a + b"
        );
        assert_eq!(
            strip_to_completion("    return a + b", code),
            "    return a + b"
        );
    }

    #[test]
    fn the_instruction_carries_every_part_of_the_call() {
        let args = CodeCompleteArgs {
            code: "fn main() {".into(),
            language: "rust".into(),
            context: Some("use std::io;".into()),
            suffix: Some("}".into()),
            max_tokens: None,
            model: None,
        };
        let turns = instruct_completion(&args);
        assert_eq!(turns[0].0, ChatRole::System);
        let user = &turns[1].1;
        for part in [
            "Language: rust",
            "use std::io;",
            "fn main() {",
            "follows the gap:\n}",
        ] {
            assert!(user.contains(part), "{part} missing from {user}");
        }
    }
}
