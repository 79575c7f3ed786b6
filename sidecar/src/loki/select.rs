//! What a request selects from the history: the `start`/`end` window and
//! stream selectors of its parameters, snapshots of the ring taken under
//! its lock, the streams in a window, and evaluation off the async threads.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use memchr::memmem::Finder;
use std::cell::Cell;
use std::collections::{BTreeSet, HashSet};

use super::params::{Params, bounds, params};
use super::{HistEntry, labels_of};
use crate::history::DiskView;
use crate::hub::{format_ts, now_ns};
use crate::server::state::AppState;
use logstream_logql::eval::{self, Direction, EntryChunks, Labels};
use logstream_logql::{self as logql, LogQuery, LokiError, ParseError, Query};

/// What a query reads: the ring's entries with a time in `[from, to]`
/// and, with a history on disk, what is older than the ring (see
/// `crate::history`: the parts hold disjoint positions).
pub(super) struct Snapshot {
    mem: Vec<HistEntry>,
    queued: Vec<HistEntry>,
    disk: Option<DiskView>,
    /// Per source of the disk's dictionary: whether a query's selector
    /// may take it (at some level).
    accept: Vec<bool>,
    /// Texts every returned line contains (one log query's `|=` filters).
    literals: Vec<String>,
    /// Whether the query reads lines (else the disk leaves them compressed).
    lines: bool,
    /// Time of the oldest record still kept, when older ones were removed.
    evicted_before: Option<i64>,
    /// Blocks that could not be read.
    unreadable: Cell<usize>,
}

/// Takes a snapshot for `queries` (their selectors and line filters let
/// the disk skip blocks; no query: everything).
pub(super) fn snapshot(
    app: &AppState,
    from: i64,
    to: i64,
    queries: &[&LogQuery],
    lines: bool,
) -> Snapshot {
    let (mem, mem_first_pos, evicted) = {
        let ring = app.hub.lock();
        let base = app.history.get().map_or(0, |h| h.base());
        let evicted = (ring.evicted() > 0)
            .then(|| ring.get(ring.first_idx()).map(|e| e.ts_ns))
            .flatten();
        let mem: Vec<HistEntry> = ring
            .iter_from(ring.first_idx())
            .filter(|e| e.ts_ns >= from && e.ts_ns <= to)
            .map(|e| HistEntry::Mem(e.clone(), base))
            .collect();
        (mem, base + ring.first_idx(), evicted)
    };
    let Some(history) = app.history.get() else {
        return Snapshot {
            mem,
            queued: Vec::new(),
            disk: None,
            accept: Vec::new(),
            literals: Vec::new(),
            lines,
            evicted_before: evicted,
            unreadable: Cell::new(0),
        };
    };
    let view = history.view(mem_first_pos, from, to);
    let base = view.base;
    let queued = view
        .queued
        .iter()
        .filter(|e| e.ts_ns >= from && e.ts_ns <= to)
        .map(|e| HistEntry::Mem(e.clone(), base))
        .collect();
    let accept = view
        .dict
        .iter()
        .map(|s| {
            queries.is_empty()
                || crate::protocol::Level::ALL
                    .iter()
                    .map(|l| Some(*l))
                    .chain([None])
                    .any(|l| {
                        let labels = labels_of(&s.source, l);
                        queries.iter().any(|q| eval::selects(q, &labels))
                    })
        })
        .collect();
    let literals = match queries {
        [q] => eval::required_literals(q),
        _ => Vec::new(),
    };
    let evicted_before = view.removed_before.then_some(view.oldest_ts).flatten().or(
        if view.blocks.is_empty() && view.queued.is_empty() {
            evicted
        } else {
            None
        },
    );
    Snapshot {
        mem,
        queued,
        disk: Some(view),
        accept,
        literals,
        lines,
        evicted_before,
        unreadable: Cell::new(0),
    }
}

impl Snapshot {
    fn disk_chunks(
        &self,
        from: i64,
        to: i64,
        newest_first: bool,
        want: &mut dyn FnMut(i64, i64) -> bool,
        visit: &mut dyn FnMut(&[HistEntry]),
    ) -> Result<(), LokiError> {
        let Some(view) = &self.disk else {
            return Ok(());
        };
        let finders: Vec<Finder<'_>> = self.literals.iter().map(Finder::new).collect();
        let verdicts = &self.accept;
        let accept = move |d: u32| verdicts.get(d as usize).copied().unwrap_or(false);
        let mut chunk: Vec<HistEntry> = Vec::new();
        // `to` is inclusive for the snapshot's window; the scan's is not.
        let report = view
            .scan(
                from,
                to.saturating_add(1),
                newest_first,
                self.lines || !self.literals.is_empty(),
                &accept,
                &finders,
                want,
                &mut |hits| {
                    chunk.clear();
                    chunk.extend(hits.records.iter().map(|i| HistEntry::Disk {
                        block: hits.block.clone(),
                        i: *i,
                        dict: hits.dict_index(*i),
                    }));
                    visit(&chunk);
                },
            )
            .map_err(|e| LokiError::Limit(e.to_string()))?;
        self.unreadable
            .set(self.unreadable.get() + report.unreadable);
        Ok(())
    }
}

/// The oldest and newest time of some entries.
fn span(entries: &[HistEntry]) -> Option<(i64, i64)> {
    use logstream_logql::eval::LogEntry;
    entries.iter().map(|e| e.ts_ns()).fold(None, |acc, t| {
        Some(acc.map_or((t, t), |(lo, hi): (i64, i64)| (lo.min(t), hi.max(t))))
    })
}

impl EntryChunks for Snapshot {
    type Entry = HistEntry;
    fn each_chunk(
        &self,
        from: i64,
        to: i64,
        dir: Direction,
        want: &mut dyn FnMut(i64, i64) -> bool,
        visit: &mut dyn FnMut(&[HistEntry]),
    ) -> Result<(), LokiError> {
        // The ring and the queue are newer than the disk (by position,
        // and nearly by time): first when reading backward, last forward.
        let memory = |part: &[HistEntry],
                      want: &mut dyn FnMut(i64, i64) -> bool,
                      visit: &mut dyn FnMut(&[HistEntry])| {
            if let Some((lo, hi)) = span(part)
                && want(lo, hi)
            {
                visit(part);
            }
        };
        match dir {
            Direction::Backward => {
                memory(&self.mem, want, visit);
                memory(&self.queued, want, visit);
                self.disk_chunks(from, to, true, want, visit)
            }
            Direction::Forward => {
                self.disk_chunks(from, to, false, want, visit)?;
                memory(&self.queued, want, visit);
                memory(&self.mem, want, visit);
                Ok(())
            }
        }
    }
}

pub(super) fn history_warning(snap: &Snapshot, start: i64) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(oldest) = snap.evicted_before
        && start < oldest
    {
        out.push(format!(
            "logstream keeps a bounded history: lines before {} were evicted and are missing from this result",
            format_ts(oldest)
        ));
    }
    let bad = snap.unreadable.get();
    if bad > 0 {
        out.push(format!(
            "{bad} blocks of the history on disk could not be read and are missing from this result"
        ));
    }
    out
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

pub(super) fn streams_in(
    app: &AppState,
    from: i64,
    to: i64,
    sels: &[LogQuery],
) -> BTreeSet<Labels> {
    let mut out = BTreeSet::new();
    {
        let ring = app.hub.lock();
        let mut seen = HashSet::new();
        for e in ring.iter_from(ring.first_idx()) {
            if e.ts_ns < from || e.ts_ns >= to || !seen.insert((e.source.slot, e.level)) {
                continue;
            }
            let l = super::stream_labels(e);
            if selected(sels, &l) {
                out.insert(l);
            }
        }
    }
    // What the disk holds, from the blocks' headers (their sources and
    // levels), without reading a payload.
    if let Some(h) = app.history.get() {
        let view = h.view(u64::MAX, from, to.saturating_sub(1));
        let mut seen = HashSet::new();
        for b in &view.blocks {
            for m in b.sources.iter() {
                for code in 0..8u8 {
                    if m.levels & (1 << code) == 0 || !seen.insert((m.dict, code)) {
                        continue;
                    }
                    let Some(s) = view.dict.get(m.dict as usize) else {
                        continue;
                    };
                    let l = labels_of(&s.source, crate::history::block::level_of(code));
                    if selected(sels, &l) {
                        out.insert(l);
                    }
                }
            }
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
