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
//! `pod`, `container`, `file` (those that are not empty) and `level`
//! (lower-case, `unknown` when the line had none).
//!
//! LogQL (what is supported, the parser and the evaluator) is the
//! `logstream-logql` crate (`logql/`).

/// Loki's live tail (a WebSocket that streams for as long as the client stays).
pub const TAIL_PATH: &str = "/loki/api/v1/tail";

pub mod api;
pub mod eval;
