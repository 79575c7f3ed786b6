//! What Grafana's Logs Drilldown asks of a log source besides queries, as
//! pure functions over lines and labels: the fields its lines carry
//! (`detected_fields`), their values, which stream labels are worth a tab
//! (`detected_labels`), the patterns of the lines (`patterns`), and the
//! `service_name` Loki derives for a stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::eval::{Labels, logfmt_fields};

/// Labels Loki takes `service_name` from, in order, when a stream has none.
pub const SERVICE_NAME_SOURCES: [&str; 13] = [
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "k8s_container_name",
    "component",
    "workload",
    "job",
    "k8s_job_name",
];

/// Loki's `service_name` when no source label has a value.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// `service_name` of a stream as Loki derives it: its own, else the first
/// non-empty label of [`SERVICE_NAME_SOURCES`], else `unknown_service`.
pub fn service_name(labels: &Labels) -> String {
    std::iter::once("service_name")
        .chain(SERVICE_NAME_SOURCES)
        .find_map(|k| labels.get(k).filter(|v| !v.is_empty()))
        .cloned()
        .unwrap_or_else(|| UNKNOWN_SERVICE.to_string())
}

/// One field of `detected_fields`.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectedField {
    pub label: String,
    /// `int`, `float`, `boolean`, `duration`, `bytes` or `string`.
    pub kind: &'static str,
    pub cardinality: usize,
    /// `json` and/or `logfmt`.
    pub parsers: Vec<&'static str>,
    /// The JSON path of the field, when a JSON parser found it.
    pub json_path: Option<Vec<String>>,
}

#[derive(Default)]
struct FieldAcc {
    values: BTreeSet<String>,
    parsers: BTreeSet<&'static str>,
    json_path: Option<Vec<String>>,
}

/// One parsed field: its name as `| json` / `| logfmt` names it, its JSON
/// path (JSON only) and its value.
pub type Field = (String, Option<Vec<String>>, String);

/// A line's fields: JSON (flattened as `| json` names them, with their
/// paths), else logfmt; `None` for a line of neither shape. The first item
/// names the parser.
pub fn line_fields(line: &str) -> Option<(&'static str, Vec<Field>)> {
    if line.trim_start().starts_with('{')
        && let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(line)
    {
        let mut out = Vec::new();
        flatten(&mut Vec::new(), &obj, &mut out);
        return Some(("json", out));
    }
    let kv = logfmt_fields(line)?;
    if kv.is_empty() {
        return None;
    }
    Some((
        "logfmt",
        kv.into_iter().map(|(k, v)| (k, None, v)).collect(),
    ))
}

fn flatten(
    path: &mut Vec<String>,
    obj: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<Field>,
) {
    for (k, v) in obj {
        path.push(k.clone());
        let value = match v {
            serde_json::Value::Object(o) => {
                flatten(path, o, out);
                None
            }
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            serde_json::Value::Array(_) | serde_json::Value::Null => None,
        };
        if let Some(value) = value {
            let name: String = path
                .join("_")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            out.push((name, Some(path.clone()), value));
        }
        path.pop();
    }
}

/// The fields of `lines` (at most `limit`, most frequent names first on a
/// tie of order): each with its type, distinct values and parsers. Error
/// labels are not fields.
pub fn detect_fields<'a>(lines: impl Iterator<Item = &'a str>, limit: usize) -> Vec<DetectedField> {
    let mut acc: BTreeMap<String, FieldAcc> = BTreeMap::new();
    for line in lines {
        let Some((parser, fields)) = line_fields(line) else {
            continue;
        };
        for (name, path, value) in fields {
            if name.starts_with("__") {
                continue;
            }
            let a = acc.entry(name).or_default();
            a.parsers.insert(parser);
            if a.json_path.is_none() {
                a.json_path = path;
            }
            // Distinct values are only counted; keep the set bounded.
            if a.values.len() < 10_000 {
                a.values.insert(value);
            }
        }
    }
    acc.into_iter()
        .take(limit)
        .map(|(label, a)| DetectedField {
            kind: value_type(a.values.iter().map(String::as_str)),
            cardinality: a.values.len(),
            parsers: a.parsers.into_iter().collect(),
            json_path: a.json_path,
            label,
        })
        .collect()
}

/// The distinct values of field or label `name` in `rows` (labels first,
/// then the line's parsed fields), at most `limit`, sorted.
pub fn field_values<'a>(
    rows: impl Iterator<Item = (&'a Labels, &'a str)>,
    name: &str,
    limit: usize,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (labels, line) in rows {
        if out.len() >= limit {
            break;
        }
        if let Some(v) = labels.get(name) {
            if !v.is_empty() {
                out.insert(v.clone());
            }
            continue;
        }
        if let Some((_, fields)) = line_fields(line) {
            for (k, _, v) in fields {
                if k == name && !v.is_empty() {
                    out.insert(v);
                }
            }
        }
    }
    out.into_iter().take(limit).collect()
}

/// The type every value of a field parses as, tried in Loki's order.
pub fn value_type<'a>(values: impl Iterator<Item = &'a str> + Clone) -> &'static str {
    let all = |f: fn(&str) -> bool| values.clone().all(f);
    if values.clone().next().is_none() {
        "string"
    } else if all(|v| v.parse::<i64>().is_ok()) {
        "int"
    } else if all(|v| v.parse::<f64>().is_ok_and(f64::is_finite)) {
        "float"
    } else if all(|v| v == "true" || v == "false") {
        "boolean"
    } else if all(|v| {
        crate::parse_duration(v).is_some() && v.ends_with(|c: char| c.is_ascii_alphabetic())
    }) {
        "duration"
    } else if all(is_bytes) {
        "bytes"
    } else {
        "string"
    }
}

/// `10KB`, `1.5MiB`, `512B`: a number and a byte unit.
fn is_bytes(v: &str) -> bool {
    let unit_at = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (n, unit) = v.split_at(unit_at);
    !n.is_empty()
        && n.parse::<f64>().is_ok()
        && matches!(
            unit.trim().to_ascii_uppercase().as_str(),
            "B" | "KB" | "MB" | "GB" | "TB" | "PB" | "KIB" | "MIB" | "GIB" | "TIB" | "PIB"
        )
}

/// Whether a label value looks like an identifier (a UUID, or a number other
/// than 0 and 1): a label whose every value does is not worth a tab.
pub fn is_id_like(v: &str) -> bool {
    let uuid = v.len() == 36
        && v.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    let number = v != "0" && v != "1" && !v.is_empty() && v.parse::<f64>().is_ok();
    uuid || number
}

/// Labels Loki keeps in `detected_labels` even when their values look like ids.
const ALWAYS_DETECTED: [&str; 4] = ["cluster", "namespace", "instance", "pod"];

/// `detected_labels` of these streams: each label with its number of distinct
/// values, leaving out labels whose every value is an id.
pub fn detected_labels<'a>(streams: impl Iterator<Item = &'a Labels>) -> Vec<(String, usize)> {
    let mut values: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for l in streams {
        for (k, v) in l {
            values.entry(k.as_str()).or_default().insert(v.as_str());
        }
    }
    values
        .into_iter()
        .filter(|(k, vs)| ALWAYS_DETECTED.contains(k) || !vs.iter().all(|v| is_id_like(v)))
        .map(|(k, vs)| (k.to_string(), vs.len()))
        .collect()
}

// ---------------------------------------------------------------------------
// Patterns

/// The placeholder of a variable token in a pattern, as Loki prints it.
pub const VARIABLE: &str = "<_>";

/// A token that is a variable before any clustering: it holds a digit.
fn is_variable(t: &str) -> bool {
    t.bytes().any(|b| b.is_ascii_digit())
}

/// Share of equal tokens above which a line joins a pattern.
const SIMILARITY: f64 = 0.5;
/// Patterns kept per (level, token count) group; lines beyond are counted
/// in the most similar one.
const MAX_PER_GROUP: usize = 100;

struct Cluster {
    tokens: Vec<String>,
    level: String,
    /// Count per step index.
    samples: BTreeMap<i64, u64>,
}

/// Groups lines into patterns in the manner of Drain: lines of the same
/// level and token count whose tokens agree enough share a pattern; tokens
/// that differ (and tokens with digits) become `<_>`. Bounded: at most
/// [`MAX_PER_GROUP`] patterns per level and token count.
pub struct Patterns {
    step_ns: i64,
    groups: HashMap<(String, usize), Vec<Cluster>>,
}

/// One pattern: its text, its level and its count per step (seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub pattern: String,
    pub level: String,
    pub samples: Vec<(i64, u64)>,
}

impl Patterns {
    pub fn new(step_ns: i64) -> Patterns {
        Patterns {
            step_ns: step_ns.max(1),
            groups: HashMap::new(),
        }
    }

    pub fn add(&mut self, ts_ns: i64, level: &str, line: &str) {
        let tokens: Vec<String> = line
            .split_whitespace()
            .map(|t| {
                if is_variable(t) {
                    VARIABLE.to_string()
                } else {
                    t.to_string()
                }
            })
            .collect();
        if tokens.is_empty() {
            return;
        }
        let step = ts_ns.div_euclid(self.step_ns);
        let group = self
            .groups
            .entry((level.to_string(), tokens.len()))
            .or_default();
        let best = group
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let same = c.tokens.iter().zip(&tokens).filter(|(a, b)| a == b).count();
                (same as f64 / tokens.len() as f64, i)
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let i = match best {
            Some((sim, i)) if sim >= SIMILARITY || group.len() >= MAX_PER_GROUP => {
                if let Some(c) = group.get_mut(i) {
                    for (t, new) in c.tokens.iter_mut().zip(&tokens) {
                        if *t != *new {
                            *t = VARIABLE.to_string();
                        }
                    }
                }
                i
            }
            _ => {
                group.push(Cluster {
                    tokens,
                    level: level.to_string(),
                    samples: BTreeMap::new(),
                });
                group.len() - 1
            }
        };
        if let Some(c) = group.get_mut(i) {
            *c.samples.entry(step).or_insert(0) += 1;
        }
    }

    /// The patterns, most frequent first; patterns that became equal merged.
    pub fn finish(self) -> Vec<Pattern> {
        let step_ns = self.step_ns;
        let mut merged: BTreeMap<(String, String), BTreeMap<i64, u64>> = BTreeMap::new();
        for c in self.groups.into_values().flatten() {
            let e = merged.entry((c.tokens.join(" "), c.level)).or_default();
            for (k, n) in c.samples {
                *e.entry(k).or_insert(0) += n;
            }
        }
        let mut out: Vec<Pattern> = merged
            .into_iter()
            .map(|((pattern, level), s)| Pattern {
                pattern,
                level,
                samples: s
                    .into_iter()
                    .map(|(k, n)| ((k * step_ns).div_euclid(1_000_000_000), n))
                    .collect(),
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.samples.iter().map(|s| s.1).sum::<u64>()));
        out
    }
}

#[cfg(test)]
mod tests;
