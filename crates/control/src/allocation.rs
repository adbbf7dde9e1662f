//! `manage_resources(allocation_strategy)`: how this device keeps models in
//! memory. The strategy is a setting (`compute.allocation`, with
//! `compute.pinned_models`), which the compute server follows; `preload`
//! also loads, now, the models that recent calls used most, as many as the
//! memory budget holds.

use std::collections::BTreeMap;

use jetsonmind_contract::allocation::AllocationStrategy;
use jetsonmind_contract::inference::{CODE_COMPLETE, LOAD_MODEL, ModelAction, TEXT_GENERATE};
use jetsonmind_core::auth::Principal;
use jetsonmind_core::rmcp::model::CallToolRequestParams;
use jetsonmind_data::analytics::SeriesReport;
use jetsonmind_data::settings::Settings;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::fleet::{Fleet, Replica};
use crate::routing::same_model;
use crate::{describe_attempt, write_settings};

/// The window recent use is counted in (the analytics' longest).
const RECENT: &str = "1h";

/// Save `strategy` (and, for `pinned`, `models`) as the settings the
/// compute server follows.
pub async fn set(
    settings: &Settings,
    strategy: AllocationStrategy,
    models: &[String],
) -> Result<Value, String> {
    match (strategy, models.is_empty()) {
        (AllocationStrategy::Pinned, true) => {
            return Err("`pinned` needs `models`: the models to keep loaded".into());
        }
        (AllocationStrategy::Pinned, false) | (_, true) => {}
        (_, false) => return Err("`models` goes with `pinned` only".into()),
    }
    let mut compute = json!({ "allocation": strategy });
    if strategy == AllocationStrategy::Pinned {
        compute["pinned_models"] = json!(models);
    }
    write_settings(settings, &json!({ "compute": compute })).await
}

/// The models of `store_bytes` (each with what it is counted for) by how
/// many calls used them recently, most first; lifetime calls break ties.
/// Those no call used are left out.
pub fn most_used(
    series: &[SeriesReport],
    store_bytes: &BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    let inference = |s: &&SeriesReport| s.tool == TEXT_GENERATE || s.tool == CODE_COMPLETE;
    let mut uses: Vec<(String, (usize, u64))> = store_bytes
        .keys()
        .map(|name| {
            let of_model = series
                .iter()
                .filter(inference)
                .filter(|s| !s.model.is_empty() && same_model(&s.model, name));
            let (recent, lifetime) = of_model.fold((0, 0), |(recent, lifetime), s| {
                let window = s.windows.get(RECENT).map_or(0, |w| w.calls);
                (recent + window, lifetime + s.calls)
            });
            (name.clone(), (recent, lifetime))
        })
        .filter(|(_, (recent, lifetime))| recent + (*lifetime as usize) > 0)
        .collect();
    uses.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    uses.into_iter()
        .map(|(name, (recent, _))| (name, recent as u64))
        .collect()
}

/// Of `ranked`, the ones that fit in `budget` together, in order, and the
/// ones left out.
pub fn within_budget(
    ranked: &[(String, u64)],
    store_bytes: &BTreeMap<String, u64>,
    budget: u64,
) -> (Vec<String>, Vec<String>) {
    let mut room = budget;
    let (mut chosen, mut left_out) = (Vec::new(), Vec::new());
    for (name, _) in ranked {
        let bytes = store_bytes.get(name).copied().unwrap_or(u64::MAX);
        if bytes <= room {
            room -= bytes;
            chosen.push(name.clone());
        } else {
            left_out.push(name.clone());
        }
    }
    (chosen, left_out)
}

/// Load on `replica` the models recent calls used most, as many as its
/// memory budget holds.
pub async fn preload(
    fleet: &Fleet,
    replica: &Replica,
    series: &[SeriesReport],
    caller: &Principal,
    cancel: &CancellationToken,
) -> Result<Value, String> {
    let report = replica
        .report()
        .ok_or("the replica has not reported its status yet; try again shortly")?;
    let ranked = most_used(series, &report.model_bytes);
    let (chosen, left_out) =
        within_budget(&ranked, &report.model_bytes, report.memory_budget_bytes);
    let mut loaded = Vec::new();
    for model in chosen {
        let arguments = ModelAction {
            model: model.clone(),
            keep_alive_secs: None,
        }
        .arguments();
        let params = CallToolRequestParams::new(LOAD_MODEL).with_arguments(arguments);
        let attempt = fleet.call_on(replica, params, caller, None, cancel).await;
        let (ok, outcome) = describe_attempt(attempt);
        loaded.push(json!({ "model": model, "ok": ok, "outcome": outcome }));
    }
    Ok(json!({
        "replica": replica.name(),
        "recent_calls": ranked.into_iter().collect::<BTreeMap<_, _>>(),
        "loaded": loaded,
        "left_out_for_memory": left_out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_data::analytics::WindowReport;

    fn series(tool: &str, model: &str, recent: usize, lifetime: u64) -> SeriesReport {
        let window = WindowReport {
            calls: recent,
            ..Default::default()
        };
        SeriesReport {
            server: "jetsonmind-compute".into(),
            tool: tool.into(),
            model: model.into(),
            calls: lifetime,
            errors: 0,
            completion_tokens: 0,
            windows: [(RECENT.to_string(), window)].into(),
        }
    }

    #[test]
    fn the_most_used_come_first_and_fill_the_budget_in_order() {
        let store: BTreeMap<String, u64> = [
            ("a.gguf", 60),
            ("b.gguf", 50),
            ("c.gguf", 30),
            ("d.gguf", 10),
        ]
        .map(|(n, b)| (n.to_string(), b))
        .into();
        let calls = [
            series("text_generate", "a.gguf", 2, 9),
            series("text_generate", "b.gguf", 5, 5),
            series("code_complete", "b", 1, 1),
            series("text_generate", "c.gguf", 2, 20),
            series("load_model", "d.gguf", 50, 50),
        ];
        let ranked = most_used(&calls, &store);
        assert_eq!(
            ranked,
            [
                ("b.gguf".into(), 6),
                ("c.gguf".into(), 2),
                ("a.gguf".into(), 2)
            ]
        );
        let (chosen, left_out) = within_budget(&ranked, &store, 100);
        assert_eq!(chosen, ["b.gguf", "c.gguf"]);
        assert_eq!(left_out, ["a.gguf"]);
    }
}
