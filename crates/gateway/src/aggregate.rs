//! `aggregate_responses`: one call sent to every replica that can take it,
//! the answers combined: the first good one, all of them, or the one most
//! replicas agree on.

use std::collections::BTreeSet;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jetsonmind_control::egress;
use jetsonmind_control::fleet::{Attempt, Fleet};
use jetsonmind_core::auth::Principal;
use jetsonmind_core::content::json_tool_result;
use jetsonmind_core::rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use jetsonmind_core::tool_error;
use jetsonmind_core::unit::CallContext;
use serde_json::{Value, json};

use crate::schema::AggregateStrategy;

/// One replica's answer.
struct Answer {
    replica: String,
    ok: bool,
    /// What is compared for `majority`: the structured result, else the text.
    value: Value,
}

/// Send `tool` to every eligible replica of `fleet` as `caller`; each call is
/// authorized where it is dispatched ([`Fleet::call_on`]).
pub async fn fan_out(
    fleet: &Fleet,
    tool: &str,
    arguments: JsonObject,
    caller: &Principal,
    strategy: AggregateStrategy,
    context: &CallContext,
) -> CallToolResult {
    let cancel = &context.cancel;
    // Each fanned-out call asks what the aggregate's request asked of egress.
    let mut params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    egress::carry(&context.meta, &mut params.meta);
    let arguments = params.arguments.clone().unwrap_or_default();
    let mut egress = match fleet.egress_of(&params, caller) {
        Ok(egress) => egress,
        Err(e) => return tool_error(e.message.to_string()),
    };
    let decision = fleet.decide(tool, &arguments, None, &BTreeSet::new(), &egress);
    // Each cloud replica asked costs a call of the caller's budget.
    let mut replicas = Vec::new();
    for replica in decision.order.iter().filter_map(|name| fleet.replica(name)) {
        if !replica.tier().is_cloud() || fleet.charge_for_cloud(&replica, caller, &mut egress).await
        {
            replicas.push(replica);
        }
    }
    if replicas.is_empty() {
        return tool_error(format!(
            "no replica of `{}` can take {tool} now: {}",
            fleet.name, decision.reason
        ));
    }
    let mut calls: FuturesUnordered<_> = replicas
        .iter()
        .map(|replica| {
            let params = params.clone();
            async move {
                let attempt = fleet.call_on(replica, params, caller, None, cancel).await;
                answer(replica.name(), attempt)
            }
        })
        .collect();
    let asked = replicas.len();
    let mut answers = Vec::new();
    while let Some(answer) = calls.next().await {
        if strategy == AggregateStrategy::First && answer.ok {
            // Dropping the other calls cancels them at their replicas.
            return json_tool_result(&json!({
                "strategy": "first",
                "asked": asked,
                "replica": answer.replica,
                "answer": answer.value,
            }));
        }
        answers.push(answer);
    }
    combine(strategy, asked, answers)
}

fn answer(replica: &str, attempt: Attempt) -> Answer {
    let (ok, value) = match attempt {
        Attempt::Answered(result) => (result.is_error != Some(true), result_value(&result)),
        Attempt::Refused(e) => (false, Value::String(e.message.to_string())),
        Attempt::Cancelled => (false, Value::String("cancelled".into())),
        Attempt::Failed { error, .. } => (false, Value::String(error)),
    };
    Answer {
        replica: replica.to_string(),
        ok,
        value,
    }
}

/// The part of a result that says what the answer is: its structured
/// content without timings and usage (which differ run to run), or its text.
fn result_value(result: &CallToolResult) -> Value {
    if let Some(Value::Object(map)) = &result.structured_content {
        let mut map = map.clone();
        for volatile in ["timings", "usage", "cached"] {
            map.remove(volatile);
        }
        return Value::Object(map);
    }
    let text: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    Value::String(text.join("\n"))
}

fn combine(strategy: AggregateStrategy, asked: usize, answers: Vec<Answer>) -> CallToolResult {
    let listed: Vec<Value> = answers
        .iter()
        .map(|a| json!({ "replica": a.replica, "ok": a.ok, "answer": a.value }))
        .collect();
    match strategy {
        AggregateStrategy::First => tool_error(format!(
            "none of the {asked} replica(s) answered successfully: {}",
            Value::Array(listed)
        )),
        AggregateStrategy::All => {
            let mut result = json_tool_result(&json!({
                "strategy": "all",
                "asked": asked,
                "succeeded": answers.iter().filter(|a| a.ok).count(),
                "answers": listed,
            }));
            result.is_error = Some(!answers.iter().any(|a| a.ok));
            result
        }
        AggregateStrategy::Majority => majority(asked, &answers, listed),
    }
}

/// The answer more than half of the asked replicas gave.
fn majority(asked: usize, answers: &[Answer], listed: Vec<Value>) -> CallToolResult {
    let mut groups: Vec<(&Value, Vec<&str>)> = Vec::new();
    for answer in answers.iter().filter(|a| a.ok) {
        match groups.iter_mut().find(|(value, _)| **value == answer.value) {
            Some((_, replicas)) => replicas.push(&answer.replica),
            None => groups.push((&answer.value, vec![&answer.replica])),
        }
    }
    groups.sort_by_key(|(_, replicas)| std::cmp::Reverse(replicas.len()));
    match groups.first() {
        Some((value, replicas)) if replicas.len() * 2 > asked => json_tool_result(&json!({
            "strategy": "majority",
            "asked": asked,
            "votes": replicas.len(),
            "replicas": replicas,
            "answer": value,
        })),
        _ => tool_error(format!(
            "no majority among {asked} replica(s): {}",
            Value::Array(listed)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(replica: &str, ok: bool, text: &str) -> Answer {
        Answer {
            replica: replica.into(),
            ok,
            value: Value::String(text.into()),
        }
    }

    #[test]
    fn majority_needs_more_than_half_of_those_asked() {
        let answers = vec![
            answer("a", true, "Paris"),
            answer("b", true, "Paris"),
            answer("c", true, "Lyon"),
        ];
        let result = combine(AggregateStrategy::Majority, 3, answers);
        assert_ne!(result.is_error, Some(true));
        let value = result.structured_content.unwrap();
        assert_eq!(value["answer"], "Paris");
        assert_eq!(value["votes"], 2);

        let split = vec![answer("a", true, "Paris"), answer("b", true, "Lyon")];
        let result = combine(AggregateStrategy::Majority, 2, split);
        assert_eq!(result.is_error, Some(true));

        let failures_count_against = vec![answer("a", true, "Paris"), answer("b", false, "down")];
        let result = combine(AggregateStrategy::Majority, 2, failures_count_against);
        assert_eq!(result.is_error, Some(true));
    }

    #[test]
    fn all_lists_every_answer_and_fails_only_when_all_failed() {
        let result = combine(
            AggregateStrategy::All,
            2,
            vec![answer("a", true, "x"), answer("b", false, "down")],
        );
        assert_ne!(result.is_error, Some(true));
        assert_eq!(result.structured_content.unwrap()["succeeded"], 1);
        let result = combine(AggregateStrategy::All, 1, vec![answer("a", false, "down")]);
        assert_eq!(result.is_error, Some(true));
    }

    #[test]
    fn volatile_fields_do_not_split_the_vote() {
        let a = CallToolResult::structured(json!({"text": "Paris", "timings": {"ms": 1}}));
        let b = CallToolResult::structured(json!({"text": "Paris", "timings": {"ms": 2}}));
        assert_eq!(result_value(&a), result_value(&b));
    }
}
