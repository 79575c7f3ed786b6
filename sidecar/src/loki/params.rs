//! Loki's request parameters: query string and form, times, bounds, limit,
//! direction.

use axum::body::Bytes;

use crate::hub::parse_ts;
use logstream_logql::eval::Direction;
use logstream_logql::{self as logql, LokiError};

/// Loki's default `limit` for queries and the tail replay.
const DEFAULT_LIMIT: usize = 100;
/// Default lookback when `start` is missing.
const DEFAULT_SINCE_NS: i64 = 3_600 * 1_000_000_000;

/// Query-string and form parameters (Loki accepts both for every endpoint).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>, body: &[u8]) -> Params {
        let mut v: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
        if !body.is_empty() {
            v.extend(
                serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default(),
            );
        }
        Params(v)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, v)| key == k && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, k: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A Loki timestamp: float seconds (`1.5`), integer seconds (up to 10
/// digits), integer nanoseconds, or RFC 3339.
pub fn parse_time(v: Option<&str>, default: i64) -> Result<i64, String> {
    let Some(v) = v else {
        return Ok(default);
    };
    if v.contains('.')
        && let Ok(f) = v.parse::<f64>()
    {
        let secs = f.trunc();
        let ms = ((f - secs) * 1000.0).round();
        return Ok((secs as i64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ms as i64 * 1_000_000));
    }
    match v.parse::<i64>() {
        Ok(n) if v.trim_start_matches('-').len() <= 10 => Ok(n.saturating_mul(1_000_000_000)),
        Ok(n) => Ok(n),
        Err(_) => parse_ts(v).ok_or_else(|| format!("cannot parse {v:?} to a valid timestamp")),
    }
}

/// `step`, `since`: float seconds or a duration (`2000ms`, `1m`).
pub fn parse_seconds_or_duration(v: &str) -> Result<i64, String> {
    if let Ok(f) = v.parse::<f64>() {
        let ns = f * 1e9;
        if !ns.is_finite() || ns.abs() > i64::MAX as f64 {
            return Err(format!(
                "cannot parse {v:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ns as i64);
    }
    logql::parse_duration(v).ok_or_else(|| format!("cannot parse {v:?} to a valid duration"))
}

/// `start`/`end`/`since` as Loki reads them: end defaults to now, start to
/// `min(end, now) - since` (since defaults to 1h).
pub fn bounds(p: &Params, now: i64) -> Result<(i64, i64), LokiError> {
    let since = match p.get("since") {
        Some(s) => logql::parse_duration(s)
            .ok_or_else(|| LokiError::Param(format!("could not parse 'since' parameter: {s:?}")))?,
        None => DEFAULT_SINCE_NS,
    };
    let end = time_param(p, "end", now)?;
    let start = time_param(p, "start", end.min(now).saturating_sub(since))?;
    Ok((start, end))
}

/// A timestamp parameter, `default` when absent.
pub fn time_param(p: &Params, name: &str, default: i64) -> Result<i64, LokiError> {
    parse_time(p.get(name), default)
        .map_err(|e| LokiError::Param(format!("could not parse '{name}' parameter: {e}")))
}

/// `step` of a range query: given, or Loki's default of about 250 points
/// per series (at least a second).
pub(super) fn step(p: &Params, start: i64, end: i64) -> Result<i64, LokiError> {
    let step = match p.get("step") {
        Some(s) => parse_seconds_or_duration(s).map_err(LokiError::Param)?,
        None => ((end - start) / 1_000_000_000 / 250).max(1) * 1_000_000_000,
    };
    if step <= 0 {
        return Err(LokiError::Param(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    Ok(step)
}

pub(super) fn limit(p: &Params) -> Result<usize, LokiError> {
    match p.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<u32>() {
            Ok(0) => Err(LokiError::Param("limit must be a positive value".into())),
            Ok(n) => Ok(n as usize),
            Err(_) => Err(LokiError::Param(format!("cannot parse limit {v:?}"))),
        },
    }
}

pub(super) fn direction(p: &Params) -> Result<Direction, LokiError> {
    match p.get("direction").map(str::to_ascii_lowercase).as_deref() {
        None | Some("backward") => Ok(Direction::Backward),
        Some("forward") => Ok(Direction::Forward),
        Some(other) => Err(LokiError::Param(format!("invalid direction {other:?}"))),
    }
}

pub(super) fn params(raw: Option<String>, body: &Bytes) -> Params {
    Params::parse(raw.as_deref(), body)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn p(q: &str) -> Params {
        Params::parse(Some(q), &[])
    }

    #[test]
    fn timestamps_as_loki_reads_them() {
        assert_eq!(
            parse_time(Some("4000000000"), 0),
            Ok(4_000_000_000_000_000_000)
        );
        assert_eq!(
            parse_time(Some("1700000000123456789"), 0),
            Ok(1_700_000_000_123_456_789)
        );
        assert_eq!(
            parse_time(Some("1700000000.5"), 0),
            Ok(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse_time(Some("2023-11-14T22:13:20.25Z"), 0),
            Ok(1_700_000_000_250_000_000)
        );
        assert_eq!(parse_time(None, 7), Ok(7));
        assert!(parse_time(Some("yesterday"), 0).is_err());
        assert_eq!(parse_seconds_or_duration("2000ms"), Ok(2_000_000_000));
        assert_eq!(parse_seconds_or_duration("15"), Ok(15_000_000_000));
        assert_eq!(parse_seconds_or_duration("0.5"), Ok(500_000_000));
    }

    #[test]
    fn default_bounds_limit_direction() {
        let now = 10_000 * 1_000_000_000;
        assert_eq!(bounds(&p(""), now), Ok((now - DEFAULT_SINCE_NS, now)));
        assert_eq!(
            bounds(&p("since=5m&end=9000"), now),
            Ok((9000 * 1_000_000_000 - 300_000_000_000, 9000 * 1_000_000_000))
        );
        assert_eq!(limit(&p("")), Ok(100));
        assert!(limit(&p("limit=0")).is_err());
        assert_eq!(direction(&p("direction=FORWARD")), Ok(Direction::Forward));
        assert_eq!(direction(&p("")), Ok(Direction::Backward));
        assert!(direction(&p("direction=up")).is_err());
        assert_eq!(step(&p(""), 0, 3_600_000_000_000), Ok(14_000_000_000));
        assert_eq!(step(&p("step=30s"), 0, 1), Ok(30_000_000_000));
        assert!(matches!(step(&p("step=0"), 0, 1), Err(LokiError::Param(_))));
        assert_eq!(
            bounds(&p("start=yesterday"), now),
            Err(LokiError::Param(
                "could not parse 'start' parameter: cannot parse \"yesterday\" to a valid timestamp"
                    .into()
            ))
        );
        assert_eq!(p("match[]=a&match[]=b").all("match[]"), ["a", "b"]);
    }
}
