//! Rendering nodes as a table or JSON.

use chrono::{DateTime, Utc};
use diplo_api::pb;
use serde_json::{Value, json};

/// Short name of a wire runtime kind.
pub fn runtime_name(kind: i32) -> &'static str {
    pb::RuntimeKind::try_from(kind).map(|k| k.short_name()).unwrap_or("unknown")
}

fn status_name(status: i32) -> &'static str {
    match pb::NodeStatus::try_from(status) {
        Ok(pb::NodeStatus::Ready) => "ready",
        Ok(pb::NodeStatus::Unhealthy) => "unhealthy",
        Ok(pb::NodeStatus::Down) => "down",
        _ => "unknown",
    }
}

fn time(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    ts.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

/// A node as JSON (`diplo nodes ls -o json`).
pub fn node_json(node: &pb::Node) -> Value {
    let fp = node.fingerprint.clone().unwrap_or_default();
    let available: Vec<&str> = fp.runtimes.iter().filter(|r| r.available).map(|r| runtime_name(r.kind)).collect();
    let runtimes: Vec<Value> = fp
        .runtimes
        .iter()
        .map(|r| json!({"runtime": runtime_name(r.kind), "available": r.available, "version": r.version, "endpoint": r.endpoint, "error": r.error}))
        .collect();
    let preferred = (fp.preferred_runtime != 0).then(|| runtime_name(fp.preferred_runtime));
    json!({
        "id": node.id,
        "name": node.name,
        "status": status_name(node.status),
        "cordoned": node.cordoned,
        "os": fp.os,
        "arch": fp.arch,
        "os_release": fp.os_release,
        "kernel": fp.kernel,
        "hostname": fp.hostname,
        "cpus": fp.cpus,
        "memory_bytes": fp.memory_bytes,
        "virtualization": fp.virtualization,
        "raspberry_pi_model": fp.raspberry_pi_model,
        "available": available,
        "preferred": preferred,
        "runtimes": runtimes,
        "labels": node.labels,
        "reported_labels": fp.labels,
        "address": node.address,
        "joined_at": time(node.joined_at.as_ref()),
        "last_seen_at": time(node.last_seen_at.as_ref()),
    })
}

/// Nodes as an aligned table.
pub fn nodes_table(nodes: &[pb::Node]) -> String {
    let mut rows =
        vec![["NAME", "STATUS", "OS/ARCH", "RUNTIMES", "PREFERRED", "VIRT", "CPUS", "MEMORY", "LAST SEEN"].map(String::from).to_vec()];
    let now = Utc::now();
    for node in nodes {
        let fp = node.fingerprint.clone().unwrap_or_default();
        let available: Vec<&str> = fp.runtimes.iter().filter(|r| r.available).map(|r| runtime_name(r.kind)).collect();
        let mut status = status_name(node.status).to_owned();
        if node.cordoned {
            status.push_str(",cordoned");
        }
        let seen = time(node.last_seen_at.as_ref()).map_or("-".to_owned(), |t| format!("{}s ago", (now - t).num_seconds().max(0)));
        rows.push(vec![
            node.name.clone(),
            status,
            format!("{}/{}", fp.os, fp.arch),
            if available.is_empty() { "-".into() } else { available.join(",") },
            if fp.preferred_runtime == 0 { "-".into() } else { runtime_name(fp.preferred_runtime).into() },
            fp.virtualization.clone(),
            fp.cpus.to_string(),
            format!("{:.1}GiB", fp.memory_bytes as f64 / f64::from(1u32 << 30)),
            seen,
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
