//! Which models stay in memory: a memory budget, least-recently-used
//! eviction of idle models, and keep-alive (like Ollama's): a model unused
//! for its keep-alive time is unloaded. Pure decisions, so they are tested
//! without loading anything.

use std::time::{Duration, Instant};

/// Most slots chosen when `compute.parallel` is 0 (llama-server's common
/// choice; more rarely adds throughput on an edge device).
pub const MAX_AUTO_SLOTS: usize = 8;

/// Slots when the default model's KV size is unknown.
pub const FALLBACK_SLOTS: usize = 4;

/// How many sequence slots a model gets when none is configured: as many
/// full contexts of `context_bytes` (KV of one sequence) as a quarter of
/// the memory budget holds, from 1 to [`MAX_AUTO_SLOTS`]; the rest of the
/// budget stays for the weights and other models.
pub fn auto_slots(budget_bytes: u64, context_bytes: Option<u64>) -> usize {
    match context_bytes {
        Some(0) | None => FALLBACK_SLOTS,
        Some(bytes) => ((budget_bytes / 4 / bytes) as usize).clamp(1, MAX_AUTO_SLOTS),
    }
}

/// A loaded model, as placement sees it.
#[derive(Debug, Clone)]
pub struct Resident {
    pub name: String,
    /// Memory it is counted for (weights and context reserve).
    pub bytes: u64,
    pub last_used: Instant,
    /// Calls are running on it now: it cannot be unloaded.
    pub in_use: bool,
    /// Kept loaded whatever else needs room (`compute.pinned_models`).
    pub pinned: bool,
    /// Unloaded once idle this long; `None` keeps it until evicted.
    pub keep_alive: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "model `{model}` needs {} MiB but the memory budget is {} MiB (compute.memory_budget_bytes)",
        .need >> 20, .budget >> 20
    )]
    LargerThanBudget {
        model: String,
        need: u64,
        budget: u64,
    },
    #[error(
        "model `{model}` needs {} MiB; {} MiB of the {} MiB budget is held by models in use or \
         pinned ({}); try again when they are idle",
        .need >> 20, .held >> 20, .budget >> 20, .busy.join(", ")
    )]
    BudgetHeldByBusyModels {
        model: String,
        need: u64,
        held: u64,
        budget: u64,
        busy: Vec<String>,
    },
}

/// The idle models to unload, least recently used first, so that a model
/// of `need` bytes fits in `budget` beside what stays.
pub fn evictions_for(
    model: &str,
    need: u64,
    resident: &[Resident],
    budget: u64,
) -> Result<Vec<String>, PlacementError> {
    if need > budget {
        return Err(PlacementError::LargerThanBudget {
            model: model.to_string(),
            need,
            budget,
        });
    }
    let mut held: u64 = resident.iter().map(|r| r.bytes).sum();
    let mut idle: Vec<&Resident> = resident.iter().filter(|r| !r.in_use && !r.pinned).collect();
    idle.sort_by_key(|r| r.last_used);
    let mut evict = Vec::new();
    for candidate in idle {
        if held + need <= budget {
            break;
        }
        held -= candidate.bytes;
        evict.push(candidate.name.clone());
    }
    if held + need > budget {
        return Err(PlacementError::BudgetHeldByBusyModels {
            model: model.to_string(),
            need,
            held,
            budget,
            busy: resident
                .iter()
                .filter(|r| r.in_use || r.pinned)
                .map(|r| r.name.clone())
                .collect(),
        });
    }
    Ok(evict)
}

/// Idle models whose keep-alive has run out at `now`.
pub fn expired(resident: &[Resident], now: Instant) -> Vec<String> {
    resident
        .iter()
        .filter(|r| !r.in_use && !r.pinned)
        .filter(|r| {
            r.keep_alive
                .is_some_and(|keep| now.duration_since(r.last_used) >= keep)
        })
        .map(|r| r.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn resident(name: &str, mib: u64, age_secs: u64, in_use: bool, now: Instant) -> Resident {
        Resident {
            name: name.into(),
            bytes: mib * MIB,
            last_used: now - Duration::from_secs(age_secs),
            in_use,
            pinned: false,
            keep_alive: Some(Duration::from_secs(300)),
        }
    }

    #[test]
    fn pinned_models_are_never_evicted_nor_expired() {
        let now = Instant::now();
        let mut pinned = resident("pinned", 100, 900, false, now);
        pinned.pinned = true;
        let loaded = [pinned, resident("other", 100, 5, false, now)];
        assert_eq!(
            evictions_for("new", 100 * MIB, &loaded, 200 * MIB),
            Ok(vec!["other".to_string()])
        );
        let err = evictions_for("big", 150 * MIB, &loaded, 200 * MIB).unwrap_err();
        assert!(err.to_string().contains("pinned"), "{err}");
        assert!(expired(&loaded, now + Duration::from_secs(3600)) == vec!["other".to_string()]);
    }

    #[test]
    fn fits_without_evicting() {
        let now = Instant::now();
        let loaded = [resident("a", 100, 10, false, now)];
        assert_eq!(
            evictions_for("b", 100 * MIB, &loaded, 300 * MIB),
            Ok(vec![])
        );
    }

    #[test]
    fn evicts_least_recently_used_idle_models_first() {
        let now = Instant::now();
        let loaded = [
            resident("recent", 100, 5, false, now),
            resident("old", 100, 500, false, now),
            resident("busy", 100, 900, true, now),
        ];
        assert_eq!(
            evictions_for("new", 100 * MIB, &loaded, 300 * MIB),
            Ok(vec!["old".to_string()])
        );
        assert_eq!(
            evictions_for("new", 200 * MIB, &loaded, 300 * MIB),
            Ok(vec!["old".to_string(), "recent".to_string()])
        );
    }

    #[test]
    fn never_overcommits() {
        let now = Instant::now();
        let loaded = [
            resident("busy", 250, 1, true, now),
            resident("idle", 10, 1, false, now),
        ];
        let err = evictions_for("new", 100 * MIB, &loaded, 300 * MIB).unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        let err = evictions_for("huge", 400 * MIB, &[], 300 * MIB).unwrap_err();
        assert!(matches!(err, PlacementError::LargerThanBudget { .. }));
        assert!(err.to_string().contains("400 MiB"), "{err}");
    }

    #[test]
    fn keep_alive_expires_only_idle_models() {
        let now = Instant::now();
        let mut forever = resident("forever", 1, 10_000, false, now);
        forever.keep_alive = None;
        let loaded = [
            resident("stale", 1, 301, false, now),
            resident("fresh", 1, 10, false, now),
            resident("stale-but-busy", 1, 999, true, now),
            forever,
        ];
        assert_eq!(expired(&loaded, now), vec!["stale".to_string()]);
    }

    #[test]
    fn slots_follow_the_budget_and_the_context_size() {
        let gib = 1u64 << 30;
        // SmolLM2-135M: about 92 MiB of KV per 4096-token context.
        assert_eq!(auto_slots(19 * gib, Some(92 << 20)), MAX_AUTO_SLOTS);
        // A 3B model on an 8 GB Jetson: 470 MiB per context, 6.4 GB budget.
        assert_eq!(auto_slots(6_400_000_000, Some(470 << 20)), 3);
        assert_eq!(auto_slots(gib, Some(2 * gib)), 1);
        assert_eq!(auto_slots(gib, None), FALLBACK_SLOTS);
    }
}
