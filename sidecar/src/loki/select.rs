//! What a request selects from the history: the `start`/`end` window and
//! stream selectors of its parameters, snapshots of the ring taken under
//! its lock, the streams in a window, and evaluation off the async threads.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::params::{Params, bounds, params};
use crate::hub::{Entry, Hub, format_ts, now_ns};
use logstream_logql::eval::{self, Labels};
use logstream_logql::{self as logql, LogQuery, LokiError, ParseError, Query};

/// Entries with a time in `[from, to]`, and what the history no longer has.
pub(super) struct Snapshot {
    pub(super) entries: Vec<Arc<Entry>>,
    /// Time of the oldest record still kept, when some were evicted.
    evicted_before: Option<i64>,
}

pub(super) fn snapshot(hub: &Hub, from: i64, to: i64) -> Snapshot {
    let ring = hub.lock();
    let evicted_before = (ring.evicted() > 0)
        .then(|| ring.get(ring.first_idx()).map(|e| e.ts_ns))
        .flatten();
    let entries = ring
        .iter_from(ring.first_idx())
        .filter(|e| e.ts_ns >= from && e.ts_ns <= to)
        .cloned()
        .collect();
    Snapshot {
        entries,
        evicted_before,
    }
}

pub(super) fn history_warning(snap: &Snapshot, start: i64) -> Option<String> {
    let oldest = snap.evicted_before?;
    (start < oldest).then(|| {
        format!(
            "logstream keeps a bounded history: lines before {} were evicted and are missing from this result",
            format_ts(oldest)
        )
    })
}

/// Distinct stream label sets with an entry in `[from, to)` that `sel` accepts.
/// The `start`/`end` window and the stream selectors found under `keys`,
/// as the label, series and stats endpoints take them.
pub(super) fn window_and_selectors(
    raw: Option<String>,
    body: &Bytes,
    keys: &[&str],
) -> Result<(i64, i64, Vec<LogQuery>), LokiError> {
    let p = params(raw, body);
    let (start, end) = bounds(&p, now_ns())?;
    let mut sels = Vec::new();
    for k in keys {
        sels.extend(selector_param(&p, k)?);
    }
    Ok((start, end, sels))
}

/// No selector matches everything; otherwise any one must match.
pub(super) fn selected(sels: &[LogQuery], labels: &Labels) -> bool {
    sels.is_empty() || sels.iter().any(|q| eval::selects(q, labels))
}

pub(super) fn streams_in(hub: &Hub, from: i64, to: i64, sels: &[LogQuery]) -> BTreeSet<Labels> {
    let ring = hub.lock();
    let mut seen = HashSet::new();
    let mut out = BTreeSet::new();
    for e in ring.iter_from(ring.first_idx()) {
        if e.ts_ns < from || e.ts_ns >= to || !seen.insert((e.source.slot, e.level)) {
            continue;
        }
        let l = super::stream_labels(e);
        if selected(sels, &l) {
            out.insert(l);
        }
    }
    out
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}\n"),
        )
            .into_response()
    })
}

/// Selectors of the optional `query` parameter of the metadata endpoints.
pub(super) fn selector_param(p: &Params, key: &str) -> Result<Vec<LogQuery>, LokiError> {
    p.all(key)
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| selector_of(s).map_err(LokiError::from))
        .collect()
}

/// A selector, or the selectors inside a metric query.
fn selector_of(s: &str) -> Result<LogQuery, ParseError> {
    match logql::parse_selector(s) {
        Ok(q) => Ok(q),
        Err(e) => match logql::parse(s) {
            Ok(Query::Metric(m)) => {
                let qs = m.log_queries();
                qs.first().map(|q| (*q).clone()).ok_or(e)
            }
            _ => Err(e),
        },
    }
}
