//! Finds the level of a log line: JSON objects, logfmt pairs, or a level word
//! near the start of plain text.

use std::str::FromStr;

use crate::protocol::Level;

/// How lines are parsed for their level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseMode {
    Plain,
    Json,
    Logfmt,
    #[default]
    Auto,
}

impl FromStr for ParseMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(ParseMode::Plain),
            "json" => Ok(ParseMode::Json),
            "logfmt" => Ok(ParseMode::Logfmt),
            "auto" => Ok(ParseMode::Auto),
            other => Err(format!(
                "unknown parse mode {other:?}: use plain, json, logfmt or auto"
            )),
        }
    }
}

/// Field names that carry a level in structured logs.
const LEVEL_KEYS: [&str; 5] = ["level", "lvl", "severity", "log.level", "loglevel"];

/// Plain text: a level word within the first bytes of the line.
const PLAIN_WINDOW: usize = 80;

/// Level of `line` under `mode`, if one is found.
pub fn detect_level(line: &str, mode: ParseMode, level_key: Option<&str>) -> Option<Level> {
    match mode {
        ParseMode::Json => json_level(line, level_key),
        ParseMode::Logfmt => logfmt_level(line, level_key),
        ParseMode::Plain => plain_level(line),
        ParseMode::Auto => {
            let t = line.trim_start();
            if t.starts_with('{') {
                json_level(t, level_key).or_else(|| plain_level(line))
            } else if t.contains('=') {
                logfmt_level(t, level_key).or_else(|| plain_level(line))
            } else {
                plain_level(line)
            }
        }
    }
}

fn json_level(line: &str, key: Option<&str>) -> Option<Level> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let pick = |k: &str| -> Option<Level> {
        match obj.get(k)? {
            serde_json::Value::String(s) => Level::parse_loose(s),
            // Bunyan/pino numeric levels.
            serde_json::Value::Number(n) => match n.as_u64()? {
                0..=10 => Some(Level::Trace),
                11..=20 => Some(Level::Debug),
                21..=30 => Some(Level::Info),
                31..=40 => Some(Level::Warn),
                41..=50 => Some(Level::Error),
                _ => Some(Level::Fatal),
            },
            _ => None,
        }
    };
    match key {
        Some(k) => pick(k),
        None => LEVEL_KEYS.iter().find_map(|k| pick(k)),
    }
}

fn logfmt_level(line: &str, key: Option<&str>) -> Option<Level> {
    for (k, v) in logfmt_pairs(line) {
        let wanted = match key {
            Some(want) => k == want,
            None => LEVEL_KEYS.contains(&k),
        };
        if wanted {
            return Level::parse_loose(v);
        }
    }
    None
}

/// `key=value` and `key="quoted value"` pairs; good enough for level lookup.
/// Scans with memchr: this runs for every line that contains a `=`.
fn logfmt_pairs(line: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = line;
    std::iter::from_fn(move || {
        loop {
            rest = rest.trim_start();
            if rest.is_empty() {
                return None;
            }
            // ' ' and '=' are ASCII, so every index below is a char boundary.
            let end = memchr::memchr2(b' ', b'=', rest.as_bytes()).unwrap_or(rest.len());
            let key = &rest[..end];
            rest = &rest[end..];
            if let Some(r) = rest.strip_prefix('=') {
                let (val, after) = if let Some(q) = r.strip_prefix('"') {
                    let close = memchr::memchr(b'"', q.as_bytes()).unwrap_or(q.len());
                    (&q[..close], q.get(close + 1..).unwrap_or(""))
                } else {
                    let e = memchr::memchr(b' ', r.as_bytes()).unwrap_or(r.len());
                    (&r[..e], &r[e..])
                };
                rest = after;
                return Some((key, val));
            }
        }
    })
}

fn plain_level(line: &str) -> Option<Level> {
    // Bytes, not chars: only ASCII letters make words, so a multi-byte
    // character (or one cut at the window's end) just separates them.
    let head = &line.as_bytes()[..line.len().min(PLAIN_WINDOW)];
    head.split(|c| !c.is_ascii_alphabetic())
        .filter(|w| (3..=8).contains(&w.len()))
        // Plain text needs the conventional upper-case spelling ("ERROR",
        // "[warn]" is also common), but not prose words such as "information".
        .find_map(|w| {
            let upper = w.iter().all(u8::is_ascii_uppercase);
            let bracketed = matches!(w.len(), 4 | 5) && w.iter().all(u8::is_ascii_lowercase);
            if upper || bracketed {
                Level::parse_loose_bytes(w)
            } else {
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_levels() {
        let auto = ParseMode::Auto;
        assert_eq!(
            detect_level(r#"{"level":"ERROR","msg":"x"}"#, auto, None),
            Some(Level::Error)
        );
        assert_eq!(
            detect_level(r#"{"severity":"warning"}"#, auto, None),
            Some(Level::Warn)
        );
        assert_eq!(
            detect_level(r#"{"level":50}"#, auto, None),
            Some(Level::Error)
        );
        assert_eq!(
            detect_level(r#"{"sev":"debug"}"#, auto, Some("sev")),
            Some(Level::Debug)
        );
        assert_eq!(
            detect_level(r#"{"msg":"no level"}"#, ParseMode::Json, None),
            None
        );
        assert_eq!(detect_level("{broken", ParseMode::Json, None), None);
    }

    #[test]
    fn logfmt_levels() {
        assert_eq!(
            detect_level("ts=1 level=warn msg=\"a b\"", ParseMode::Auto, None),
            Some(Level::Warn)
        );
        assert_eq!(
            detect_level("msg=\"level=error\" lvl=info", ParseMode::Logfmt, None),
            Some(Level::Info)
        );
        assert_eq!(detect_level("a=b", ParseMode::Logfmt, None), None);
    }

    #[test]
    fn plain_levels() {
        assert_eq!(
            detect_level("2026-01-01 12:00:00 ERROR boom", ParseMode::Auto, None),
            Some(Level::Error)
        );
        assert_eq!(
            detect_level("[warn] disk almost full", ParseMode::Plain, None),
            Some(Level::Warn)
        );
        assert_eq!(
            detect_level("for your information only", ParseMode::Plain, None),
            None
        );
        assert_eq!(detect_level("", ParseMode::Auto, None), None);
        // Multi-byte characters at the window edge must not panic.
        let s = "é".repeat(100);
        assert_eq!(detect_level(&s, ParseMode::Plain, None), None);
    }
}
