//! How the CLI prints: aligned tables, ages, and the `-o json|yaml` encodings.

use clap::ValueEnum;
use serde::Serialize;
use skiff_api::Millis;

/// The `-o` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned columns for people
    #[default]
    Table,
    /// The API objects as pretty JSON
    Json,
    /// The API objects as YAML
    Yaml,
}

/// Prints `value` as JSON or YAML.
pub fn print_encoded<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_norway::to_string(value)?),
        Format::Table => anyhow::bail!("internal: table output has no encoding"),
    }
    Ok(())
}

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table { rows: vec![header.iter().map(|h| h.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, each line indented by `indent`.
    pub fn render(&self, indent: &str) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; cols];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::from(indent);
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 3));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render(""));
    }
}

/// How long ago `then` was, as kubectl writes it: `42s`, `5m`, `3h`, `2d`.
pub fn age(then: Millis) -> String {
    if then == 0 {
        return "-".to_string();
    }
    let secs = skiff_api::now_ms().saturating_sub(then) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Memory for people: exact when a binary unit divides it (`64Mi`), else rounded to
/// one decimal of the largest unit (`23.6Gi`), where `format_memory` would write
/// `24731708Ki`.
pub fn memory(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (suffix, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{}{suffix}", bytes / size)
            } else {
                format!("{:.1}{suffix}", bytes as f64 / size as f64)
            };
        }
    }
    bytes.to_string()
}

/// `cpu 2, memory 23.6Gi`.
pub fn resources(r: skiff_api::Resources) -> String {
    format!("cpu {}, memory {}", skiff_api::quantity::format_cpu(r.cpu.0), memory(r.memory.0))
}

/// `k=v,k2=v2`, or `<none>`.
pub fn map_list(map: &std::collections::BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "<none>".to_string();
    }
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// A workload in a table cell: `wasm sha256:0123456789ab` or `image REF`.
pub fn short_workload(w: &skiff_api::Workload) -> String {
    match w {
        skiff_api::Workload::Wasm(d) => {
            let short = match d.strip_prefix("sha256:") {
                Some(hex) => format!("sha256:{}", &hex[..hex.len().min(12)]),
                None => d.clone(),
            };
            format!("wasm {short}")
        }
        skiff_api::Workload::Image(r) => format!("image {r}"),
    }
}

/// `-` for a missing value.
pub fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "STATE", "REASON"]);
        t.row(vec!["a".into(), "running".into(), "-".into()]);
        t.row(vec!["longer-name".into(), "pending".into(), "0/3 nodes fit".into()]);
        expect![[r#"
            NAME          STATE     REASON
            a             running   -
            longer-name   pending   0/3 nodes fit
        "#]]
        .assert_eq(&t.render(""));
    }

    #[test]
    fn memory_is_readable() {
        assert_eq!(memory(64 << 20), "64Mi");
        assert_eq!(memory(24731708 << 10), "23.6Gi");
        assert_eq!(memory(1000), "1000");
    }

    #[test]
    fn workloads_are_short() {
        let w = skiff_api::Workload::Wasm(format!("sha256:{}", "ab".repeat(32)));
        assert_eq!(short_workload(&w), "wasm sha256:abababababab");
    }
}
