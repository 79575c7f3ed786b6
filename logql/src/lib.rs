//! LogQL for logstream's Loki-compatible API: the AST, a lexer, a
//! recursive-descent parser for the subset logstream evaluates, and the
//! evaluator over any log entries ([`eval::LogEntry`]). Pure: no I/O, no
//! async runtime, so it is table-tested and fuzzed alone.
//!
//! Errors carry the line and column of the offending token and print like
//! Loki's own: `parse error at line L, col C: ...`; errors about the query as
//! a whole (no usable matcher) have no position: `parse error : ...`. Every
//! error a Loki request can meet, in the query or in its parameters, is one
//! [`LokiError`]; the API maps each to a 400 `text/plain` with its message.
//!
//! LogQL supported: what README.md's Grafana section lists (selectors,
//! line and pattern filters, the parsers `json`, `logfmt`, `regexp`,
//! `pattern`, `unpack`, label filters, `drop`/`keep`, formats, range
//! functions over counts, bytes and `| unwrap` samples, vector aggregations,
//! `topk`/`bottomk`, `label_replace`, arithmetic and comparisons).
//! Anything else is a 400 `parse error at line L, col C: ...`.
//!
//! The parser is our own: the `logql-parser` crate is AGPL-3.0, which an
//! Apache-2.0 binary cannot link without taking on the AGPL's terms.

use std::fmt;

use regex::Regex;

mod ast;
pub mod drilldown;
pub mod eval;
mod lexer;
mod parser;

pub use ast::*;
pub use parser::{parse, parse_selector};

/// Longest accepted query, to bound parse and regex compile cost.
pub const MAX_QUERY_BYTES: usize = 64 << 10;

/// Loki's message for a selector without a matcher that excludes the empty value.
pub const EMPTY_SELECTOR: &str = "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based; 0 with `col` 0 when the error concerns the whole query.
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 && self.col == 0 {
            write!(f, "parse error : {}", self.msg)
        } else {
            write!(
                f,
                "parse error at line {}, col {}: {}",
                self.line, self.col, self.msg
            )
        }
    }
}

impl std::error::Error for ParseError {}

/// Why a Loki request is refused. Every variant is a client error (Loki's
/// 400); the message is what Loki prints for the same request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LokiError {
    /// The query does not parse or uses what logstream does not evaluate.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A request parameter (`start`, `limit`, `step`, ...) is malformed.
    #[error("{0}")]
    Param(String),
    /// The query parses but cannot be evaluated as asked (an instant log
    /// query, a metric aggregation over a scalar, a metric tail).
    #[error("{0}")]
    Query(String),
    /// The request would exceed a bound Loki also enforces (points per
    /// series).
    #[error("{0}")]
    Limit(String),
}

/// Parses a duration such as `15s`, `2000ms`, `1h30m`, `1d`, `1.5s`.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            "w" => 7.0 * 86_400e9,
            "y" => 365.0 * 86_400e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some(total as i64)
}

pub(crate) fn compile(p: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

/// RFC 3339 UTC with nanoseconds. The date-and-seconds prefix is cached per
/// thread: consecutive records mostly share their second.
pub fn format_ts(ns: i64) -> String {
    use std::cell::RefCell;
    use std::fmt::Write;
    thread_local! {
        static PREFIX: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    PREFIX.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let t = time::OffsetDateTime::from_unix_timestamp(secs)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
            cache.1 = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.",
                t.hour(),
                t.minute(),
                t.second()
            );
            cache.0 = secs;
        }
        let mut s = String::with_capacity(cache.1.len() + 10);
        s.push_str(&cache.1);
        // Writing into a String cannot fail.
        let _ = write!(s, "{nanos:09}Z");
        s
    })
}

#[cfg(test)]
mod tests;
