//! A Loki-compatible read API over the hub's history, so an unmodified
//! Grafana (Loki data source) and Loki's own `logcli` can query and live-tail
//! logstream. See `docs/grafana-contract.md` for what Grafana needs.
//!
//! ```text
//!  GET /loki/api/v1/query_range ─┐                 ┌─► eval::log_query    ─► "streams"
//!  GET /loki/api/v1/query ───────┼─ logql::parse ──┤
//!  labels, label values, series ─┘  (own parser)   └─► eval::metric_query ─► "matrix" / "vector"
//!  WS  /loki/api/v1/tail ── Session on the hub ── eval::run_pipeline ──► {"streams":[..]} frames
//! ```
//!
//! Streams: every record belongs to the Loki stream labelled `namespace`,
//! `pod`, `container`, `file` (those that are not empty), `level`
//! (lower-case, `unknown` when the line had none) and what Loki derives:
//! `detected_level` (the same value) and `service_name` (the source's
//! service, which the operator sets from the pod's `app` label or workload;
//! else Loki's rule over these labels: the container, else
//! `unknown_service`).
//!
//! LogQL (what is supported, the parser and the evaluator) is the
//! `logstream-logql` crate (`logql/`).

/// Loki's live tail (a WebSocket that streams for as long as the client stays).
pub const TAIL_PATH: &str = "/loki/api/v1/tail";

pub mod api;
mod drilldown;
mod metadata;
mod params;
mod query;
mod response;

mod select;
mod tail;

use std::sync::Arc;

use logstream_logql::eval::{Labels, LogEntry};

use crate::hub::Entry;
use crate::protocol::Level;
use crate::server::state::AppState;

/// The state every Loki handler takes: the server's, and the compiled
/// queries of the open tails.
#[derive(Clone)]
struct Loki {
    app: Arc<AppState>,
    tails: Arc<tail::SharedQueries>,
}

/// The labels of the Loki stream an entry belongs to: `namespace`, `pod`,
/// `container`, `file` (each only when not empty) and `level` (`unknown`
/// when the line had none).
pub fn stream_labels(e: &Entry) -> Labels {
    labels_of(&e.source.source, e.level)
}

/// The labels of the Loki stream of a source's lines at a level.
pub fn labels_of(s: &crate::protocol::Source, level: Option<Level>) -> Labels {
    let mut l = Labels::new();
    for (k, v) in [
        ("namespace", &s.namespace),
        ("pod", &s.pod),
        ("container", &s.container),
        ("file", &s.file),
    ] {
        if !v.is_empty() {
            l.insert(k.to_string(), v.clone());
        }
    }
    let level = level_name(level);
    l.insert("level".into(), level.into());
    // What Loki derives at ingestion and Grafana's Logs Drilldown keys on:
    // the level (Loki keeps it as structured metadata; here it is a label,
    // so selectors, label filters and `by (detected_level)` all see it) and
    // the service (Loki's rule over these labels: the container's name).
    l.insert("detected_level".into(), level.into());
    let service = if s.service.is_empty() {
        logstream_logql::drilldown::service_name(&l)
    } else {
        s.service.clone()
    };
    l.insert("service_name".into(), service);
    l
}

pub fn level_name(l: Option<Level>) -> &'static str {
    l.map_or("unknown", Level::as_str)
}

/// The hub's records are what LogQL evaluates: one stream per source and
/// level.
impl LogEntry for Entry {
    fn stream_key(&self) -> u64 {
        (u64::from(self.source.slot) << 8) | self.level.map_or(0, |l| l as u64 + 1)
    }
    fn stream_labels(&self) -> Labels {
        stream_labels(self)
    }
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }
    fn idx(&self) -> u64 {
        self.idx
    }
    fn line(&self) -> &str {
        &self.line
    }
}

/// A record a query reads: from the ring or the writer's queue (an entry
/// and the position of the hub's index 0), or from a block on disk.
pub enum HistEntry {
    Mem(Arc<Entry>, u64),
    Disk {
        block: Arc<crate::history::block::Decoded>,
        i: u32,
        /// The source's index in the disk's dictionary.
        dict: u32,
    },
}

impl HistEntry {
    /// Bytes of its line, also when a block's lines were left compressed.
    pub fn line_len(&self) -> usize {
        match self {
            HistEntry::Mem(e, _) => e.line.len(),
            HistEntry::Disk { block, i, .. } => block.line_len(*i as usize),
        }
    }
}

impl LogEntry for HistEntry {
    fn stream_key(&self) -> u64 {
        match self {
            HistEntry::Mem(e, _) => e.stream_key(),
            // Keys of the ring's streams stay below 2^40 (slot, level).
            HistEntry::Disk { block, i, dict } => {
                (1 << 62)
                    | (u64::from(*dict) << 8)
                    | u64::from(crate::history::block::level_code(block.level(*i as usize)))
            }
        }
    }
    fn stream_labels(&self) -> Labels {
        match self {
            HistEntry::Mem(e, _) => stream_labels(e),
            HistEntry::Disk { block, i, .. } => match block.source(*i as usize) {
                Some(s) => labels_of(&s.source, block.level(*i as usize)),
                None => Labels::new(),
            },
        }
    }
    fn ts_ns(&self) -> i64 {
        match self {
            HistEntry::Mem(e, _) => e.ts_ns,
            HistEntry::Disk { block, i, .. } => block.ts.get(*i as usize).copied().unwrap_or(0),
        }
    }
    fn idx(&self) -> u64 {
        match self {
            HistEntry::Mem(e, base) => base + e.idx,
            HistEntry::Disk { block, i, .. } => block.first_pos + u64::from(*i),
        }
    }
    fn line(&self) -> &str {
        match self {
            HistEntry::Mem(e, _) => &e.line,
            HistEntry::Disk { block, i, .. } => block.line(*i as usize),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::{Hub, HubLimits, Pending};

    /// One entry per (file, level) of pod `pod` in namespace `ns`.
    fn entries(rows: &[(&str, Option<Level>)]) -> Vec<Arc<Entry>> {
        let hub = Hub::new(
            HubLimits {
                max_lines: 100,
                max_bytes: 1 << 20,
            },
            "t",
        );
        for (file, level) in rows {
            let info = hub.source(crate::hub::tests::src(file));
            hub.publish(vec![Pending {
                source: info.clone(),
                seq: info.next_seq(),
                ts_ns: 1,
                level: *level,
                line: "x".into(),
                partial: false,
                split: None,
            }]);
        }
        let ring = hub.lock();
        ring.iter_from(ring.first_idx()).cloned().collect()
    }

    #[test]
    fn stream_labels_of_an_entry() {
        let e = entries(&[
            ("app.log", Some(Level::Info)),
            ("db.log", None),
            ("app.log", Some(Level::Error)),
            ("app.log", Some(Level::Info)),
        ]);
        let want: Labels = [
            ("container", "app"),
            ("detected_level", "info"),
            ("file", "app.log"),
            ("level", "info"),
            ("namespace", "ns"),
            ("pod", "pod"),
            ("service_name", "app"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(stream_labels(&e[0]), want);
        assert_eq!(stream_labels(&e[1])["level"], "unknown");
        // One stream key per stream.
        assert_eq!(e[0].stream_key(), e[3].stream_key());
        assert_ne!(e[0].stream_key(), e[1].stream_key());
        assert_ne!(e[0].stream_key(), e[2].stream_key());
    }
}
