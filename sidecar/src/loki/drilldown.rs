//! What Grafana's Logs Drilldown app asks besides queries (see
//! `docs/grafana-contract.md`): `index/volume` (its service list) and
//! `index/volume_range`, `detected_labels`, `detected_fields`,
//! `detected_field/<name>/values`, `patterns` and `drilldown-limits`. Same
//! parameters and response shapes as Loki; the work is pure functions of
//! the `logstream-logql` crate (`drilldown`) over a snapshot of the history.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::Loki;
use super::params::{Params, bounds, params, parse_seconds_or_duration};
use super::response::{Data, Refusal, Secs, json, success};
use super::select::{blocking, selector_param, snapshot, streams_in, window_and_selectors};
use crate::hub::now_ns;
use logstream_logql::drilldown::{self, Patterns};
use logstream_logql::eval::{self, Direction, Labels};
use logstream_logql::{self as logql, LogQuery, LokiError, Query};

/// Loki's default `limit` of `index/volume`.
const VOLUME_LIMIT: usize = 100;
/// Lines `detected_fields` reads (Loki's `line_limit` default).
const FIELD_LINES: usize = 100;
/// Fields and values returned at most by default (Loki's).
const FIELD_LIMIT: usize = 1000;
/// Lines `detected_field/<name>/values` reads.
const VALUE_LINES: usize = 1000;
/// Patterns returned at most (the app keeps 500).
const MAX_PATTERNS: usize = 300;

fn usize_param(p: &Params, names: &[&str], default: usize) -> Result<usize, LokiError> {
    match names.iter().find_map(|n| p.get(n)) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(LokiError::Param(format!(
                "invalid {}: {v:?} is not a positive integer",
                names[0]
            ))),
        },
    }
}

/// A log query parameter, or every stream when it is absent or `{}`.
fn log_query_param(p: &Params) -> Result<LogQuery, LokiError> {
    match p.get("query").map(str::trim) {
        None | Some("{}") => Ok(LogQuery {
            matchers: Vec::new(),
            pipeline: Vec::new(),
        }),
        Some(q) => match logql::parse(q)? {
            Query::Log(q) => Ok(q),
            Query::Metric(_) => Err(LokiError::Query(
                "a log query is needed here, not a metric query".into(),
            )),
        },
    }
}

/// Runs a log query over the history, newest first, at most `limit` lines.
async fn lines(
    app: &std::sync::Arc<crate::server::AppState>,
    q: LogQuery,
    start: i64,
    end: i64,
    limit: usize,
) -> Result<Result<eval::LogResult, LokiError>, Response> {
    let app = app.clone();
    blocking(move || {
        let snap = snapshot(&app, start, end, &[&q], true);
        eval::log_query(&q, &snap, start, end, limit, Direction::Backward)
    })
    .await
}

// ---------------------------------------------------------------------------
// Volume

/// Byte counts of a stream per step bucket.
type Volume = (Labels, BTreeMap<i64, u64>);

/// Bytes per (grouped) stream and step bucket.
fn volumes(
    app: &crate::server::AppState,
    start: i64,
    end: i64,
    sels: &[LogQuery],
    step: i64,
) -> Result<Vec<Volume>, LokiError> {
    use logstream_logql::eval::{EntryChunks, LogEntry};
    // Memory and the disk as one history; lines' lengths only (a block's
    // lines stay compressed).
    let queries: Vec<&LogQuery> = sels.iter().collect();
    let snap = snapshot(app, start, end, &queries, false);
    let mut verdicts: HashMap<u64, Option<usize>> = HashMap::new();
    let mut out: Vec<Volume> = Vec::new();
    snap.each_chunk(
        start,
        end.saturating_add(1),
        Direction::Forward,
        &mut |_, _| true,
        &mut |chunk| {
            for e in chunk {
                let ts = e.ts_ns();
                if ts < start || ts > end {
                    continue;
                }
                let slot = *verdicts.entry(e.stream_key()).or_insert_with(|| {
                    let l = e.stream_labels();
                    super::select::selected(sels, &l).then(|| {
                        out.push((l, BTreeMap::new()));
                        out.len() - 1
                    })
                });
                if let Some((_, buckets)) = slot.and_then(|i| out.get_mut(i)) {
                    *buckets.entry(ts.div_euclid(step)).or_insert(0) += e.line_len() as u64;
                }
            }
        },
    )?;
    // A stream met in memory and on disk is one stream.
    let mut merged: BTreeMap<Labels, BTreeMap<i64, u64>> = BTreeMap::new();
    for (l, b) in out {
        let m = merged.entry(l).or_default();
        for (k, n) in b {
            *m.entry(k).or_insert(0) += n;
        }
    }
    Ok(merged.into_iter().collect())
}

/// How volumes are grouped: by the named labels (`targetLabels`, else the
/// labels the query's matchers name), per series, or per label name.
fn group_volumes(
    streams: Vec<(Labels, BTreeMap<i64, u64>)>,
    names: &[String],
    by_label: bool,
) -> BTreeMap<Labels, BTreeMap<i64, u64>> {
    let mut out: BTreeMap<Labels, BTreeMap<i64, u64>> = BTreeMap::new();
    for (l, buckets) in streams {
        let keys: Vec<Labels> = if by_label {
            names
                .iter()
                .filter(|n| l.contains_key(*n))
                .map(|n| Labels::from([(n.clone(), String::new())]))
                .collect()
        } else {
            let g: Labels = l
                .iter()
                .filter(|(k, _)| names.is_empty() || names.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            vec![g]
        };
        for k in keys {
            let e = out.entry(k).or_default();
            for (b, n) in &buckets {
                *e.entry(*b).or_insert(0) += n;
            }
        }
    }
    out
}

/// An `index/volume` or `index/volume_range` request.
struct VolumeRequest {
    p: Params,
    start: i64,
    end: i64,
    sels: Vec<LogQuery>,
    /// Labels to group by (see [`group_volumes`]).
    names: Vec<String>,
    by_label: bool,
    limit: usize,
}

fn volume_params(raw: Option<String>, body: &Bytes) -> Result<VolumeRequest, LokiError> {
    let p = params(raw, body);
    let (start, end) = bounds(&p, now_ns())?;
    let sels = selector_param(&p, "query")?;
    let mut names: Vec<String> = match p.get("targetLabels") {
        Some(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        None => sels
            .iter()
            .flat_map(|q| q.matchers.iter().map(|m| m.name.clone()))
            .collect(),
    };
    names.sort();
    names.dedup();
    let by_label = match p.get("aggregateBy") {
        None | Some("series") => false,
        Some("labels") => true,
        Some(other) => {
            return Err(LokiError::Param(format!(
                "invalid aggregateBy {other:?}: series or labels"
            )));
        }
    };
    let limit = usize_param(&p, &["limit"], VOLUME_LIMIT)?;
    Ok(VolumeRequest {
        p,
        start,
        end,
        sels,
        names,
        by_label,
        limit,
    })
}

/// The request's volumes in `step` buckets (`i64::MAX`: one bucket),
/// grouped, largest first, at most `limit`; `Err`: the evaluation failed.
async fn grouped_volumes(
    app: &std::sync::Arc<crate::server::AppState>,
    r: VolumeRequest,
    step: i64,
) -> Result<Result<Vec<Volume>, LokiError>, Response> {
    let app = app.clone();
    let VolumeRequest {
        start,
        end,
        sels,
        names,
        by_label,
        limit,
        ..
    } = r;
    let grouped = match blocking(move || {
        volumes(&app, start, end, &sels, step).map(|v| group_volumes(v, &names, by_label))
    })
    .await?
    {
        Ok(g) => g,
        Err(e) => return Ok(Err(e)),
    };
    let mut rows: Vec<(Labels, BTreeMap<i64, u64>)> = grouped.into_iter().collect();
    rows.sort_by(|a, b| {
        let total = |r: &(Labels, BTreeMap<i64, u64>)| r.1.values().sum::<u64>();
        total(b).cmp(&total(a)).then_with(|| a.0.cmp(&b.0))
    });
    rows.truncate(limit);
    Ok(Ok(rows))
}

pub(super) async fn index_volume(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let r = volume_params(raw, &body)?;
    let end = r.end;
    let rows = match grouped_volumes(&lk.app, r, i64::MAX).await {
        Ok(rows) => rows?,
        Err(resp) => return Ok(resp),
    };
    let result: Vec<Value> = rows
        .into_iter()
        .map(|(metric, b)| {
            let bytes: u64 = b.values().sum();
            json!({"metric": metric, "value": (Secs(end), bytes.to_string())})
        })
        .collect();
    Ok(success(
        Data {
            result_type: "vector",
            result,
        },
        Vec::new(),
    ))
}

pub(super) async fn index_volume_range(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let r = volume_params(raw, &body)?;
    let step = super::params::step(&r.p, r.start, r.end)?;
    let rows = match grouped_volumes(&lk.app, r, step).await {
        Ok(rows) => rows?,
        Err(resp) => return Ok(resp),
    };
    let result: Vec<Value> = rows
        .into_iter()
        .map(|(metric, b)| {
            let values: Vec<Value> = b
                .into_iter()
                .map(|(k, n)| json!((Secs(k * step), n.to_string())))
                .collect();
            json!({"metric": metric, "values": values})
        })
        .collect();
    Ok(success(
        Data {
            result_type: "matrix",
            result,
        },
        Vec::new(),
    ))
}

// ---------------------------------------------------------------------------
// Labels, fields, values

pub(super) async fn detected_labels(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (start, end, sels) = window_and_selectors(raw, &body, &["query"])?;
    let streams = streams_in(&lk.app, start, end, &sels);
    let detected: Vec<Value> = drilldown::detected_labels(streams.iter())
        .into_iter()
        .map(|(label, cardinality)| json!({"label": label, "cardinality": cardinality}))
        .collect();
    Ok(json(&json!({ "detectedLabels": detected })))
}

pub(super) async fn detected_fields(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let p = params(raw, &body);
    let (start, end) = bounds(&p, now_ns())?;
    let q = log_query_param(&p)?;
    let limit = usize_param(&p, &["limit", "field_limit"], FIELD_LIMIT)?;
    let line_limit = usize_param(&p, &["line_limit"], FIELD_LINES)?;
    let r = match lines(&lk.app, q, start, end, line_limit).await {
        Ok(r) => r?,
        Err(resp) => return Ok(resp),
    };
    let all = r
        .streams
        .iter()
        .flat_map(|s| s.values.iter().map(|(_, l)| l.as_str()));
    let fields: Vec<Value> = drilldown::detect_fields(all, limit)
        .into_iter()
        .map(|f| {
            let mut v = json!({
                "label": f.label,
                "type": f.kind,
                "cardinality": f.cardinality,
                "parsers": f.parsers,
            });
            if let Some(path) = f.json_path {
                v["jsonPath"] = json!(path);
            }
            v
        })
        .collect();
    Ok(json(&json!({"fields": fields, "limit": limit})))
}

pub(super) async fn detected_field_values(
    State(lk): State<Loki>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let p = params(raw, &body);
    let (start, end) = bounds(&p, now_ns())?;
    let q = log_query_param(&p)?;
    let limit = usize_param(&p, &["limit"], FIELD_LIMIT)?;
    let r = match lines(&lk.app, q, start, end, VALUE_LINES).await {
        Ok(r) => r?,
        Err(resp) => return Ok(resp),
    };
    let rows = r
        .streams
        .iter()
        .flat_map(|s| s.values.iter().map(move |(_, l)| (&*s.labels, l.as_str())));
    let values = drilldown::field_values(rows, &name, limit);
    Ok(json(&json!({"values": values, "limit": limit})))
}

// ---------------------------------------------------------------------------
// Patterns and limits

pub(super) async fn patterns(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let p = params(raw, &body);
    let (start, end) = bounds(&p, now_ns())?;
    let q = log_query_param(&p)?;
    let step = match p.get("step") {
        Some(s) => parse_seconds_or_duration(s).map_err(LokiError::Param)?,
        None => super::params::step(&Params::default(), start, end)?,
    };
    if step <= 0 {
        return Err(LokiError::Param("step must be greater than 0".into()).into());
    }
    let app = lk.app.clone();
    let found = blocking(move || {
        let snap = snapshot(&app, start, end, &[&q], true);
        let r = eval::log_query(&q, &snap, start, end, usize::MAX, Direction::Forward)?;
        let mut pat = Patterns::new(step);
        for s in &r.streams {
            let level = s.labels.get("detected_level").map_or("", String::as_str);
            for (ts, line) in &s.values {
                pat.add(*ts, level, line);
            }
        }
        Ok::<_, LokiError>(pat.finish())
    })
    .await;
    let found = match found {
        Ok(f) => f?,
        Err(resp) => return Ok(resp),
    };
    let data: Vec<Value> = found
        .into_iter()
        .take(MAX_PATTERNS)
        .map(|p| json!({"pattern": p.pattern, "level": p.level, "samples": p.samples}))
        .collect();
    Ok(success(data, Vec::new()))
}

/// The limits Loki publishes for the app (only those it reads matter:
/// retention, the line cap, whether patterns work).
pub(super) async fn drilldown_limits(State(lk): State<Loki>) -> Response {
    let limits = lk.app.hub.limits();
    json(&json!({
        "limits": {
            "discover_log_levels": true,
            "discover_service_name": drilldown::SERVICE_NAME_SOURCES,
            "log_level_fields": ["level", "detected_level"],
            "max_entries_limit_per_query": 5000,
            "max_line_size_truncate": false,
            "max_query_series": 500,
            "metric_aggregation_enabled": false,
            "pattern_persistence_enabled": false,
            // A bounded in-memory history, not a retention period: 0s is
            // "no limit" to the app, which then offers every time range.
            "retention_period": "0s",
            "retention_stream": [],
            "volume_enabled": true,
            "volume_max_series": 1000,
            "history_max_lines": limits.max_lines,
            "history_max_bytes": limits.max_bytes,
        },
        "pattern_ingester_enabled": true,
        "version": format!("logstream-{}", env!("CARGO_PKG_VERSION")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn volumes_group_by_the_named_labels_or_per_label() {
        let streams = vec![
            (
                l(&[("service_name", "a"), ("pod", "a-1")]),
                BTreeMap::from([(0, 10)]),
            ),
            (
                l(&[("service_name", "a"), ("pod", "a-2")]),
                BTreeMap::from([(0, 5), (1, 1)]),
            ),
            (
                l(&[("service_name", "b"), ("pod", "b-1")]),
                BTreeMap::from([(1, 7)]),
            ),
        ];
        let names = vec!["service_name".to_string()];
        let g = group_volumes(streams.clone(), &names, false);
        assert_eq!(
            g[&l(&[("service_name", "a")])],
            BTreeMap::from([(0, 15), (1, 1)])
        );
        assert_eq!(g[&l(&[("service_name", "b")])], BTreeMap::from([(1, 7)]));
        let g = group_volumes(
            streams,
            &["pod".to_string(), "service_name".to_string()],
            true,
        );
        assert_eq!(g[&l(&[("pod", "")])], BTreeMap::from([(0, 15), (1, 8)]));
        assert_eq!(g.len(), 2);
    }
}
