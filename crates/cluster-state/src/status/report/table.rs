//! `cluster status` as tables, the way `kubectl get nodes` prints them:
//! upper-case headers, columns padded to their widest cell, `<none>` for an
//! empty list and `-` for what is not known.

use serde_json::Value;

use crate::backup::CloudReading;

use super::{ClusterStatus, ModelRow, NodeRow, Readiness};

const NODE_HEADERS: [&str; 10] = [
    "NODE",
    "STATUS",
    "AGE",
    "SERVERS",
    "REPLICAS",
    "LOADED MODELS",
    "MEM",
    "TEMP",
    "CALLS",
    "P99",
];
const MODEL_HEADERS: [&str; 4] = ["MODEL", "SIZE", "HOLDERS", "LOADED ON"];
const PLACEMENT_HEADERS: [&str; 3] = ["PLACEMENT", "REPLICAS", "STRATEGY"];
const BACKUP_HEADERS: [&str; 4] = ["BACKUP", "AT SITE", "AT HUB", "LAG"];

pub fn render(status: &ClusterStatus) -> String {
    let mut out = match status.nodes.is_empty() {
        true => format!("No nodes in cluster {}.\n", status.cluster),
        false => table(&NODE_HEADERS, status.nodes.iter().map(node_cells)),
    };
    match &status.models {
        Some(models) if !models.is_empty() => {
            out.push('\n');
            out += &table(&MODEL_HEADERS, models.iter().map(model_cells));
        }
        Some(_) => out += "\nNo models published.\n",
        None => {}
    }
    if let Some(placements) = status.placements.as_ref().filter(|p| !p.is_empty()) {
        out.push('\n');
        out += &table(&PLACEMENT_HEADERS, placements.iter().map(placement_cells));
    }
    if let Some(cloud) = &status.cloud {
        out += &cloud_lines(cloud);
    }
    out
}

/// The hub in a line, then each backup.
fn cloud_lines(cloud: &CloudReading) -> String {
    let link = match cloud.reachable {
        true => format!("reachable; cloud nodes {}", list(&cloud.cloud_nodes)),
        false => {
            "UNREACHABLE (uplink down?): calls stay on the site, backups catch up later".into()
        }
    };
    let mut out = format!("\nHub {}: {link}\n", cloud.hub_domain);
    let count = |n: Option<u64>| known(n.map(|n| n.to_string()));
    out += &table(
        &BACKUP_HEADERS,
        cloud.backups.iter().map(|b| {
            vec![
                b.stream.clone(),
                count(b.site_messages),
                count(b.hub_messages),
                count(b.lag),
            ]
        }),
    );
    out
}

fn node_cells(node: &NodeRow) -> Vec<String> {
    let memory = match (node.memory_used_bytes, node.memory_total_bytes) {
        (Some(used), Some(total)) => format!("{:.1}/{:.1}Gi", gib(used), gib(total)),
        _ => "-".into(),
    };
    vec![
        node.node.clone(),
        readiness(node.status).into(),
        age(node.age_secs),
        list(&node.servers),
        format!("{}/{}", node.replicas_healthy, node.replicas_total),
        list(&node.loaded_models),
        memory,
        known(node.temperature_c.map(|c| format!("{c:.0}C"))),
        known(node.calls.map(|calls| calls.to_string())),
        known(node.p99_ms.map(|ms| format!("{ms:.0}ms"))),
    ]
}

fn model_cells(model: &ModelRow) -> Vec<String> {
    vec![
        model.name.clone(),
        known(model.size_bytes.map(bytes)),
        list(&model.holders),
        list(&model.loaded_on),
    ]
}

fn placement_cells(placement: &Value) -> Vec<String> {
    let field = |name: &str| match placement.get(name) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    vec![field("model"), field("replicas"), field("strategy")]
}

fn readiness(status: Readiness) -> &'static str {
    match status {
        Readiness::Ready => "Ready",
        Readiness::NotReady => "NotReady",
        Readiness::Draining => "Draining",
    }
}

/// Rows under `headers`, each column as wide as its widest cell, three
/// spaces apart.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let lines: Vec<Vec<String>> = std::iter::once(header).chain(rows).collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|column| {
            let cells = lines.iter().filter_map(|line| line.get(column));
            cells.map(|cell| cell.chars().count()).max().unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let padded: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out += padded.join("   ").trim_end();
        out.push('\n');
    }
    out
}

fn list(items: &[String]) -> String {
    match items.is_empty() {
        true => "<none>".into(),
        false => items.join(","),
    }
}

fn known(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".into())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Sizes as `kubectl` shows quantities: Ki, Mi, Gi.
fn bytes(n: u64) -> String {
    const UNITS: [(&str, u32); 3] = [("Gi", 30), ("Mi", 20), ("Ki", 10)];
    for (unit, shift) in UNITS {
        if n >= 1 << shift {
            return format!("{:.1}{unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n}B")
}

/// Ages as `kubectl` shows them: 45s, 12m, 5h, 3d.
fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_unknowns_say_so() {
        let text = table(
            &["NODE", "P99"],
            [
                vec!["dev1".into(), "12ms".into()],
                vec!["a-long-node".into(), "-".into()],
            ]
            .into_iter(),
        );
        assert_eq!(
            text,
            "NODE          P99\ndev1          12ms\na-long-node   -\n"
        );
        assert_eq!(list(&[]), "<none>");
        assert_eq!(list(&["a".into(), "b".into()]), "a,b");
    }

    #[test]
    fn ages_and_sizes_read_as_kubectl_writes_them() {
        let ages: Vec<String> = [5, 119, 120, 7_199, 7_200, 172_800].map(age).into();
        assert_eq!(ages, ["5s", "119s", "2m", "119m", "2h", "2d"]);
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5Ki");
        assert_eq!(bytes(135 << 20), "135.0Mi");
        assert_eq!(bytes(3 << 30), "3.0Gi");
    }

    #[test]
    fn placements_show_their_fields_whatever_their_json_type() {
        let placement = serde_json::json!({"model": "smol", "replicas": 2, "strategy": "spread"});
        assert_eq!(placement_cells(&placement), ["smol", "2", "spread"]);
        assert_eq!(placement_cells(&serde_json::json!({})), ["-", "-", "-"]);
    }

    #[test]
    fn the_hub_says_whether_it_is_reachable_and_how_far_each_backup_is() {
        use crate::backup::BackupState;
        let mut cloud = CloudReading {
            hub_domain: "hub".into(),
            reachable: true,
            cloud_nodes: vec!["c1".into()],
            backups: vec![BackupState {
                stream: "site1_analytics".into(),
                site_messages: Some(12),
                hub_messages: Some(10),
                lag: Some(2),
            }],
        };
        let row = |text: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with("site1_analytics"));
            line.unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let text = cloud_lines(&cloud);
        assert!(
            text.contains("Hub hub: reachable; cloud nodes c1"),
            "{text}"
        );
        assert_eq!(row(&text), ["site1_analytics", "12", "10", "2"], "{text}");
        cloud.reachable = false;
        (cloud.backups[0].hub_messages, cloud.backups[0].lag) = (None, None);
        let text = cloud_lines(&cloud);
        assert!(text.contains("UNREACHABLE"), "{text}");
        assert_eq!(row(&text), ["site1_analytics", "12", "-", "-"], "{text}");
    }
}
