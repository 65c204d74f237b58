//! Rendering what commands print: one [`Format`] for every command (`-o table|json|yaml`,
//! JSON by default when stdout is not a terminal), aligned tables, nodes.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use diplo_api::pb;
use serde_json::{Value, json};

/// How a command prints what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON (one document).
    Json,
    /// YAML (one document).
    Yaml,
}

impl Format {
    /// The format asked for; else a table on a terminal and JSON when stdout is a pipe
    /// or a file (scripts get data without asking).
    pub fn resolve(asked: Option<Format>, stdout_is_terminal: bool) -> Format {
        asked.unwrap_or(if stdout_is_terminal { Format::Table } else { Format::Json })
    }
}

/// `value` as `format`; `table` renders it for people (used only for [`Format::Table`]).
pub fn render(format: Format, value: &Value, table: impl FnOnce() -> String) -> Result<String> {
    Ok(match format {
        Format::Table => table(),
        Format::Json => serde_json::to_string_pretty(value).context("rendering JSON")?,
        Format::Yaml => serde_norway::to_string(value).context("rendering YAML")?.trim_end().to_owned(),
    })
}

/// Prints `value` as `format` (see [`render`]).
pub fn print(format: Format, value: &Value, table: impl FnOnce() -> String) -> Result<()> {
    println!("{}", render(format, value, table)?);
    Ok(())
}

/// Prints `value` as JSON or YAML, and as indented JSON for [`Format::Table`] (a single
/// object with nested parts has no table).
pub fn print_document(format: Format, value: &Value) -> Result<()> {
    print(format, value, || serde_json::to_string_pretty(value).unwrap_or_default())
}

/// A one-line progress indication on stderr, redrawn in place; shown only when stderr is
/// a terminal (logs and pipes get only the results on stdout).
pub struct Progress {
    enabled: bool,
    shown: bool,
}

impl Progress {
    /// Progress on stderr if it is a terminal, else a no-op.
    pub fn on_stderr() -> Progress {
        use std::io::IsTerminal;
        Progress { enabled: std::io::stderr().is_terminal(), shown: false }
    }

    /// Replaces the line shown.
    pub fn update(&mut self, line: &str) {
        if self.enabled {
            use std::io::Write;
            let mut stderr = std::io::stderr();
            let _ = write!(stderr, "\r\x1b[2K{line}");
            let _ = stderr.flush();
            self.shown = true;
        }
    }

    /// Clears the line before results are printed.
    pub fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }
}

/// Rows under a header as aligned columns (two spaces apart, no trailing blanks).
pub fn table<const N: usize>(header: [&str; N], rows: impl IntoIterator<Item = [String; N]>) -> String {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    all.extend(rows.into_iter().map(|row| row.to_vec()));
    let widths: Vec<usize> = (0..N).map(|col| all.iter().map(|row| row[col].chars().count()).max().unwrap_or(0)).collect();
    all.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node's name for tables: its name when known, else its id shortened.
pub fn node_label<'a>(names: &'a std::collections::HashMap<String, String>, node_id: &'a str) -> String {
    match names.get(node_id).filter(|n| !n.is_empty()) {
        Some(name) => name.clone(),
        None if node_id.is_empty() => "-".to_owned(),
        None => node_id.chars().take(12).collect(),
    }
}

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

/// A backend as JSON (`diplo backends info`).
pub fn backend_json(backend: &pb::Backend) -> Value {
    let nodes: Vec<Value> = backend
        .nodes
        .iter()
        .map(|n| {
            json!({"node": n.node_name, "node_id": n.node_id, "status": status_name(n.status), "available": n.available,
                   "version": n.version, "error": (!n.error.is_empty()).then_some(&n.error),
                   "instances": {"total": n.instances_total, "running": n.instances_running}})
        })
        .collect();
    json!({
        "backend": runtime_name(backend.runtime),
        "available": backend.available,
        "capabilities": backend.capabilities,
        "nodes": nodes,
        "instances": {"total": backend.instances_total, "running": backend.instances_running},
    })
}

/// A backend for people: its capabilities and instances, then its nodes as a table.
pub fn backend_table(backend: &pb::Backend) -> String {
    let rows = backend.nodes.iter().map(|n| {
        [
            n.node_name.clone(),
            status_name(n.status).to_owned(),
            if n.available { "yes".to_owned() } else { format!("no: {}", n.error) },
            if n.version.is_empty() { "-".to_owned() } else { n.version.clone() },
            format!("{}/{}", n.instances_running, n.instances_total),
        ]
    });
    format!(
        "Backend: {} ({})\nCapabilities: {}\nInstances: {} total, {} running\n\n{}",
        runtime_name(backend.runtime),
        if backend.available { "available" } else { "not available" },
        backend.capabilities.join(", "),
        backend.instances_total,
        backend.instances_running,
        table(["NODE", "STATUS", "AVAILABLE", "VERSION", "INSTANCES"], rows)
    )
}

/// Nodes as an aligned table.
pub fn nodes_table(nodes: &[pb::Node]) -> String {
    let now = Utc::now();
    let rows = nodes.iter().map(|node| {
        let fp = node.fingerprint.clone().unwrap_or_default();
        let available: Vec<&str> = fp.runtimes.iter().filter(|r| r.available).map(|r| runtime_name(r.kind)).collect();
        let mut status = status_name(node.status).to_owned();
        if node.cordoned {
            status.push_str(",cordoned");
        }
        let seen = time(node.last_seen_at.as_ref()).map_or("-".to_owned(), |t| format!("{}s ago", (now - t).num_seconds().max(0)));
        [
            node.name.clone(),
            status,
            format!("{}/{}", fp.os, fp.arch),
            if available.is_empty() { "-".into() } else { available.join(",") },
            if fp.preferred_runtime == 0 { "-".into() } else { runtime_name(fp.preferred_runtime).into() },
            fp.virtualization.clone(),
            fp.cpus.to_string(),
            format!("{:.1}GiB", fp.memory_bytes as f64 / f64::from(1u32 << 30)),
            seen,
        ]
    });
    table(["NAME", "STATUS", "OS/ARCH", "RUNTIMES", "PREFERRED", "VIRT", "CPUS", "MEMORY", "LAST SEEN"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_flag_else_the_terminal() {
        let cases = [
            (None, true, Format::Table),
            (None, false, Format::Json),
            (Some(Format::Yaml), true, Format::Yaml),
            (Some(Format::Table), false, Format::Table),
            (Some(Format::Json), true, Format::Json),
        ];
        for (asked, terminal, expected) in cases {
            assert_eq!(Format::resolve(asked, terminal), expected, "{asked:?} terminal={terminal}");
        }
    }

    #[test]
    fn json_and_yaml_carry_the_same_data_and_tables_align() {
        let value = json!([{"name": "web", "replicas": 3, "labels": {"a": "b"}}]);
        let as_json: Value = serde_json::from_str(&render(Format::Json, &value, String::new).expect("json")).expect("parses");
        let as_yaml: Value = serde_norway::from_str(&render(Format::Yaml, &value, String::new).expect("yaml")).expect("parses");
        assert_eq!(as_json, value);
        assert_eq!(as_yaml, value);
        assert_eq!(render(Format::Table, &value, || "T".into()).expect("table"), "T");
        let rendered = table(["NAME", "NODE"], [["web".to_owned(), "pi-kitchen".to_owned()], ["a-long-name".to_owned(), String::new()]]);
        assert_eq!(rendered, "NAME         NODE\nweb          pi-kitchen\na-long-name");
        let names = std::collections::HashMap::from([("0123456789abcdef".to_owned(), "pi".to_owned())]);
        assert_eq!(node_label(&names, "0123456789abcdef"), "pi");
        assert_eq!(node_label(&names, "fedcba9876543210"), "fedcba987654");
        assert_eq!(node_label(&names, ""), "-");
    }
}
