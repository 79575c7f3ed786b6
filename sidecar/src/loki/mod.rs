//! A Loki-compatible read API over the hub's history, so an unmodified
//! Grafana (Loki data source) and Loki's own `logcli` can query and live-tail
//! logstream. See `/work/shared/grafana-contract.md` for what Grafana needs.
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
//! LogQL supported: stream selectors (`= != =~ !~`, regexes fully anchored,
//! `"..."` with Go escapes or backticks, `#` comments); line filters
//! (`|= != |~ !~`, chained, `or`-alternatives, the empty `` |= `` ``);
//! `| json` and `| logfmt` (no parameters), `| regexp`, label filters
//! (`= != =~ !~ == > >= < <=` on strings, numbers and durations, combined with
//! `and`, `,`, `or` and parentheses; like Loki, a failed conversion sets
//! `__error__`), `| drop` and `| keep` (names or `name="value"`),
//! `| line_format` and `| label_format` with `{{.label}}`, `{{__line__}}`,
//! `{{__timestamp__}}` only, `| decolorize`; metrics `count_over_time`,
//! `rate`, `bytes_over_time`, `bytes_rate` with `[range]` and `offset`,
//! `sum avg min max count` with `by`/`without`, and arithmetic
//! (`+ - * / % ^`) between scalars, `vector(n)` and vectors with equal labels.
//! Anything else is a 400 `parse error at line L, col C: ...`.
//!
//! The parser is our own: the `logql-parser` crate is AGPL-3.0, which an
//! Apache-2.0 binary cannot link without taking on the AGPL's terms.

/// Loki's live tail (a WebSocket that streams for as long as the client stays).
pub const TAIL_PATH: &str = "/loki/api/v1/tail";

pub mod api;
pub mod eval;
pub mod logql;
