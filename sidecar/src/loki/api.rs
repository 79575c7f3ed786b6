//! HTTP and WebSocket endpoints of the Loki read API, over the hub's history.
//!
//! Handlers only convert: parameters in, [`super::eval`] over a snapshot of
//! the ring (taken under the lock as `Arc` clones, evaluated off the async
//! threads), JSON out. Errors are `400 text/plain`, as Loki's are.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

use crate::filter::Filter;
use crate::hub::{Entry, Hub, format_ts, now_ns, parse_ts};
use crate::protocol::{Subscribe, close};
use crate::server::state::AppState;
use crate::server::stream::Next as Step;
use crate::session::{Pull, Session};
use logstream_logql::eval::{self, Direction, Grid, Labels, Steps, StreamCache};
use logstream_logql::{self as logql, LogQuery, MetricExpr, ParseError, Query};

/// Loki's default `limit` for queries and the tail replay.
const DEFAULT_LIMIT: usize = 100;
/// Default lookback when `start` is missing.
const DEFAULT_SINCE_NS: i64 = 3_600 * 1_000_000_000;
/// Loki's cap on points per series of a range query.
const MAX_POINTS: i64 = 11_000;
/// A WebSocket close reason is at most 123 bytes.
const MAX_CLOSE_REASON: usize = 123;

#[derive(Clone)]
struct Loki {
    app: Arc<AppState>,
}

/// The Loki API routes, with their own admission (the server's token rules).
/// Merge into a server router: `.merge(crate::loki::api::router(state.clone()))`.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let lk = Loki { app: state };
    Router::new()
        .route("/loki/api/v1/query", get(query).post(query))
        .route(
            "/loki/api/v1/query_range",
            get(query_range).post(query_range),
        )
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route(
            "/loki/api/v1/label/{name}/values",
            get(label_values).post(label_values),
        )
        .route("/loki/api/v1/series", get(series).post(series))
        .route(
            "/loki/api/v1/index/stats",
            get(index_stats).post(index_stats),
        )
        .route("/loki/api/v1/status/buildinfo", get(buildinfo))
        .route(super::TAIL_PATH, get(tail))
        .route_layer(middleware::from_fn_with_state(lk.clone(), admit))
        .route("/ready", get(ready))
        .with_state(lk)
}

// ---------------------------------------------------------------------------
// Admission

/// The token rules of [`crate::server::AuthConfig`], applied before any work
/// (and before a WebSocket upgrade).
async fn admit(State(lk): State<Loki>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let query_token = req.uri().query().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v)
    });
    if let Err(r) = lk
        .app
        .check_token(req.headers(), peer, query_token.as_deref())
        .await
    {
        return r;
    }
    next.run(req).await
}

// ---------------------------------------------------------------------------
// Parameters

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
pub fn bounds(p: &Params, now: i64) -> Result<(i64, i64), String> {
    let since = match p.get("since") {
        Some(s) => logql::parse_duration(s)
            .ok_or_else(|| format!("could not parse 'since' parameter: {s:?}"))?,
        None => DEFAULT_SINCE_NS,
    };
    let end = parse_time(p.get("end"), now)
        .map_err(|e| format!("could not parse 'end' parameter: {e}"))?;
    let start = parse_time(p.get("start"), end.min(now).saturating_sub(since))
        .map_err(|e| format!("could not parse 'start' parameter: {e}"))?;
    Ok((start, end))
}

fn limit(p: &Params) -> Result<usize, String> {
    match p.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<u32>() {
            Ok(0) => Err("limit must be a positive value".into()),
            Ok(n) => Ok(n as usize),
            Err(_) => Err(format!("cannot parse limit {v:?}")),
        },
    }
}

fn direction(p: &Params) -> Result<Direction, String> {
    match p.get("direction").map(str::to_ascii_lowercase).as_deref() {
        None | Some("backward") => Ok(Direction::Backward),
        Some("forward") => Ok(Direction::Forward),
        Some(other) => Err(format!("invalid direction {other:?}")),
    }
}

// ---------------------------------------------------------------------------
// Responses

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{msg}\n"),
    )
        .into_response()
}

fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Serialize)]
struct Envelope<T: Serialize> {
    status: &'static str,
    data: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn success<T: Serialize>(data: T, warnings: Vec<String>) -> Response {
    json(&Envelope {
        status: "success",
        data,
        warnings,
    })
}

/// A sample time: seconds as a JSON number, with millisecond precision.
#[derive(Clone, Copy)]
struct Secs(i64);

impl Serialize for Secs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.div_euclid(1_000_000);
        if ms % 1000 == 0 {
            s.serialize_i64(ms / 1000)
        } else {
            s.serialize_f64(ms as f64 / 1000.0)
        }
    }
}

#[derive(Serialize)]
struct Data<R: Serialize> {
    #[serde(rename = "resultType")]
    result_type: &'static str,
    result: R,
}

#[derive(Serialize)]
struct StreamOut<'a> {
    stream: &'a Labels,
    values: Vec<(String, &'a str)>,
}

#[derive(Serialize)]
struct MatrixOut<'a> {
    metric: &'a Labels,
    values: Vec<(Secs, String)>,
}

#[derive(Serialize)]
struct VectorOut<'a> {
    metric: &'a Labels,
    value: (Secs, String),
}

/// Renders a metric result: a matrix for range queries, a vector (or
/// scalar) for instant ones.
fn metric_response(grid: &Grid, steps: &Steps, instant: bool, warnings: Vec<String>) -> Response {
    let empty = Labels::new();
    match (grid, instant) {
        (Grid::Scalar(v), true) => success(
            Data {
                result_type: "scalar",
                result: (Secs(steps.start), eval::format_value(*v)),
            },
            warnings,
        ),
        (Grid::Vector(series), true) => {
            let result: Vec<VectorOut<'_>> = series
                .iter()
                .filter_map(|s| {
                    let v = s.values.first().copied().flatten()?;
                    Some(VectorOut {
                        metric: &s.labels,
                        value: (Secs(steps.start), eval::format_value(v)),
                    })
                })
                .collect();
            success(
                Data {
                    result_type: "vector",
                    result,
                },
                warnings,
            )
        }
        (grid, false) => {
            let scalar;
            let series: &[eval::Series] = match grid {
                Grid::Vector(s) => s,
                Grid::Scalar(v) => {
                    scalar = [eval::Series {
                        labels: empty.clone(),
                        values: vec![Some(*v); steps.count],
                    }];
                    &scalar
                }
            };
            let result: Vec<MatrixOut<'_>> = series
                .iter()
                .map(|s| MatrixOut {
                    metric: &s.labels,
                    values: s
                        .values
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| Some((Secs(steps.at(i)), eval::format_value((*v)?))))
                        .collect(),
                })
                .filter(|m| !m.values.is_empty())
                .collect();
            success(
                Data {
                    result_type: "matrix",
                    result,
                },
                warnings,
            )
        }
    }
}

// ---------------------------------------------------------------------------
// History snapshots

/// Entries with a time in `[from, to]`, and what the history no longer has.
struct Snapshot {
    entries: Vec<Arc<Entry>>,
    /// Time of the oldest record still kept, when some were evicted.
    evicted_before: Option<i64>,
}

fn snapshot(hub: &Hub, from: i64, to: i64) -> Snapshot {
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

fn history_warning(snap: &Snapshot, start: i64) -> Option<String> {
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
#[allow(clippy::result_large_err)]
fn window_and_selectors(
    raw: Option<String>,
    body: &Bytes,
    keys: &[&str],
) -> Result<(i64, i64, Vec<LogQuery>), Response> {
    let p = params(raw, body);
    let (start, end) = bounds(&p, now_ns()).map_err(bad_request)?;
    let mut sels = Vec::new();
    for k in keys {
        sels.extend(selector_param(&p, k)?);
    }
    Ok((start, end, sels))
}

/// No selector matches everything; otherwise any one must match.
fn selected(sels: &[LogQuery], labels: &Labels) -> bool {
    sels.is_empty() || sels.iter().any(|q| eval::selects(q, labels))
}

fn streams_in(hub: &Hub, from: i64, to: i64, sels: &[LogQuery]) -> BTreeSet<Labels> {
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

async fn blocking<T: Send + 'static>(
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

fn params(raw: Option<String>, body: &Bytes) -> Params {
    Params::parse(raw.as_deref(), body)
}

// ---------------------------------------------------------------------------
// Handlers

async fn query_range(State(lk): State<Loki>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let p = params(raw, &body);
    let now = now_ns();
    let parsed = (|| -> Result<_, String> {
        let q = logql::parse(p.get("query").unwrap_or("")).map_err(|e| e.to_string())?;
        let (start, end) = bounds(&p, now)?;
        if end < start {
            return Err("end timestamp must not be before or equal to start time".into());
        }
        Ok((q, start, end, limit(&p)?, direction(&p)?))
    })();
    let (q, start, end, limit, dir) = match parsed {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    match q {
        Query::Log(q) => log_response(&lk.app.hub, q, start, end, limit, dir).await,
        Query::Metric(m) => {
            let step = match p.get("step") {
                Some(s) => match parse_seconds_or_duration(s) {
                    Ok(v) => v,
                    Err(e) => return bad_request(e),
                },
                None => ((end - start) / 1_000_000_000 / 250).max(1) * 1_000_000_000,
            };
            if step <= 0 {
                return bad_request(
                    "zero or negative query resolution step widths are not accepted. Try a positive integer",
                );
            }
            if (end - start) / step > MAX_POINTS {
                return bad_request(
                    "exceeded maximum resolution of 11,000 points per time series. Try increasing the value of the step parameter",
                );
            }
            // Steps on multiples of `step`, the last one at or after `end`
            // so the newest lines are counted.
            let first = start.div_euclid(step) * step;
            let last =
                end.div_euclid(step) * step + if end.rem_euclid(step) == 0 { 0 } else { step };
            let steps = Steps {
                start: first,
                step,
                count: ((last - first) / step) as usize + 1,
            };
            metric_eval(&lk.app.hub, m, steps, start, false).await
        }
    }
}

async fn log_response(
    hub: &Arc<Hub>,
    q: LogQuery,
    start: i64,
    end: i64,
    limit: usize,
    dir: Direction,
) -> Response {
    let hub = hub.clone();
    let result = blocking(move || {
        let snap = snapshot(&hub, start, end);
        let r = eval::log_query(&q, &snap.entries, start, end, limit, dir);
        let mut warnings: Vec<String> = history_warning(&snap, start).into_iter().collect();
        if r.matched > r.returned {
            warnings.push(format!(
                "results truncated to the limit of {limit} lines ({} matched); narrow the query or raise the limit",
                r.matched
            ));
        }
        (r, warnings)
    })
    .await;
    let (r, warnings) = match result {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let result: Vec<StreamOut<'_>> = r
        .streams
        .iter()
        .map(|s| StreamOut {
            stream: &s.labels,
            values: s
                .values
                .iter()
                .map(|(ts, line)| (ts.to_string(), line.as_str()))
                .collect(),
        })
        .collect();
    success(
        Data {
            result_type: "streams",
            result,
        },
        warnings,
    )
}

async fn metric_eval(
    hub: &Arc<Hub>,
    m: MetricExpr,
    steps: Steps,
    start: i64,
    instant: bool,
) -> Response {
    let hub = hub.clone();
    let result = blocking(move || {
        let (from, to) = eval::needed_window(&m, &steps);
        let snap = snapshot(&hub, from, to);
        let warnings: Vec<String> = history_warning(&snap, start.min(from))
            .into_iter()
            .collect();
        eval::metric_query(&m, &snap.entries, &steps).map(|g| (g, warnings))
    })
    .await;
    match result {
        Ok(Ok((grid, warnings))) => metric_response(&grid, &steps, instant, warnings),
        Ok(Err(e)) => bad_request(e),
        Err(resp) => resp,
    }
}

async fn query(State(lk): State<Loki>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let p = params(raw, &body);
    let q = match logql::parse(p.get("query").unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let t = match parse_time(p.get("time"), now_ns()) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("could not parse 'time' parameter: {e}")),
    };
    match q {
        Query::Log(_) => bad_request(
            "log queries are not supported as an instant query type, please change your query to a range query type",
        ),
        Query::Metric(m) => metric_eval(&lk.app.hub, m, Steps::instant(t), t, true).await,
    }
}

/// Selectors of the optional `query` parameter of the metadata endpoints.
#[allow(clippy::result_large_err)]
fn selector_param(p: &Params, key: &str) -> Result<Vec<LogQuery>, Response> {
    p.all(key)
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| selector_of(s).map_err(bad_request))
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

async fn labels(State(lk): State<Loki>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let (start, end, sels) = match window_and_selectors(raw, &body, &["query"]) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let names: BTreeSet<String> = streams_in(&lk.app.hub, start, end, &sels)
        .into_iter()
        .flat_map(|l| l.into_keys())
        .collect();
    success(names, Vec::new())
}

async fn label_values(
    State(lk): State<Loki>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let (start, end, sels) = match window_and_selectors(raw, &body, &["query"]) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let values: BTreeSet<String> = streams_in(&lk.app.hub, start, end, &sels)
        .into_iter()
        .filter_map(|mut l| l.remove(&name))
        .collect();
    success(values, Vec::new())
}

async fn series(State(lk): State<Loki>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let (start, end, sels) = match window_and_selectors(raw, &body, &["match[]", "match"]) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let all: Vec<Labels> = streams_in(&lk.app.hub, start, end, &sels)
        .into_iter()
        .collect();
    success(all, Vec::new())
}

#[derive(Serialize, Default)]
struct IndexStats {
    streams: usize,
    chunks: usize,
    entries: usize,
    bytes: usize,
}

async fn index_stats(State(lk): State<Loki>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let (start, end, sels) = match window_and_selectors(raw, &body, &["query"]) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let hub = lk.app.hub.clone();
    let stats = blocking(move || {
        let ring = hub.lock();
        let mut verdicts = std::collections::HashMap::new();
        let mut streams = HashSet::new();
        let mut st = IndexStats::default();
        for e in ring.iter_from(ring.first_idx()) {
            if e.ts_ns < start || e.ts_ns >= end {
                continue;
            }
            let key = (e.source.slot, e.level);
            let ok = *verdicts
                .entry(key)
                .or_insert_with(|| selected(&sels, &super::stream_labels(e)));
            if ok {
                streams.insert(key);
                st.entries += 1;
                st.bytes += e.line.len();
            }
        }
        st.streams = streams.len();
        st.chunks = st.streams;
        st
    })
    .await;
    match stats {
        Ok(s) => json(&s),
        Err(r) => r,
    }
}

async fn buildinfo() -> Response {
    json(&serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": "logstream",
    }))
}

async fn ready(State(lk): State<Loki>) -> Response {
    if lk.app.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

// ---------------------------------------------------------------------------
// Live tail

/// A parsed `/tail` request.
#[derive(Debug)]
pub struct TailRequest {
    pub query: LogQuery,
    pub start_ns: i64,
    /// Most history lines replayed before live ones.
    pub limit: usize,
}

impl TailRequest {
    pub fn parse(p: &Params, now: i64) -> Result<TailRequest, String> {
        let query = match logql::parse(p.get("query").unwrap_or("")).map_err(|e| e.to_string())? {
            Query::Log(q) => q,
            Query::Metric(_) => return Err("tail supports log queries only".into()),
        };
        let (start_ns, _) = bounds(p, now)?;
        Ok(TailRequest {
            query,
            start_ns,
            limit: limit(p)?,
        })
    }
}

async fn tail(
    State(lk): State<Loki>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let st = lk.app.clone();
    if let Err(r) = st.check_origin(&headers) {
        return r;
    }
    // A bad query is reported after the upgrade (close 1008 with the
    // reason): a refused handshake looks like 1006 to a browser, which
    // Grafana retries forever.
    let req = TailRequest::parse(&Params::parse(raw.as_deref(), &[]), now_ns());
    // Tails share the server's connection budget.
    let slot = st.try_connect(crate::metrics::Transport::ws);
    let cfg = &st.cfg;
    let ws = ws
        .read_buffer_size(cfg.ws_read_buffer_bytes)
        .write_buffer_size(cfg.ws_buffer_bytes)
        .max_write_buffer_size(cfg.ws_max_write_buffer(true))
        .max_message_size(cfg.max_message_bytes)
        .max_frame_size(cfg.ws_max_frame());
    let tracker = st.sessions.clone();
    ws.on_upgrade(move |socket: WebSocket| {
        tracker.track_future(async move {
            let (mut tx, rx) = socket.split();
            let (code, reason) = match (req, slot) {
                (Err(e), _) => (close::POLICY, e),
                (Ok(_), None) => (close::TRY_AGAIN_LATER, "connection limit reached".into()),
                (Ok(req), Some(_slot)) => {
                    let (code, reason) = run_tail(&mut tx, rx, &st, req).await;
                    (code, reason.to_string())
                }
            };
            if code != 0 {
                let send = tx.send(close_msg(code, &reason));
                let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
            }
        })
    })
}

fn close_msg(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason[..end].to_string()),
    }))
}

/// One tail frame: `{"streams":[{"stream":{..},"values":[["ns","line"],..]}],"dropped_entries":null}`.
pub fn tail_frame(rows: &[(Arc<Labels>, i64, String)]) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        streams: Vec<StreamOut<'a>>,
        dropped_entries: Option<()>,
    }
    let mut streams: Vec<StreamOut<'_>> = Vec::new();
    let mut index: std::collections::HashMap<&Labels, usize> = std::collections::HashMap::new();
    for (labels, ts, line) in rows {
        let i = *index.entry(labels).or_insert_with(|| {
            streams.push(StreamOut {
                stream: labels,
                values: Vec::new(),
            });
            streams.len() - 1
        });
        if let Some(s) = streams.get_mut(i) {
            s.values.push((ts.to_string(), line));
        }
    }
    serde_json::to_string(&Frame {
        streams,
        dropped_entries: None,
    })
    .unwrap_or_default()
}

fn process(
    q: &LogQuery,
    cache: &mut StreamCache,
    entries: &[Arc<Entry>],
    out: &mut Vec<(Arc<Labels>, i64, String)>,
) {
    for e in entries {
        let Some(base) = cache.selected(q, e) else {
            continue;
        };
        if let Some((line, changed)) = eval::run_pipeline(&q.pipeline, &base, &e.line, e.ts_ns) {
            out.push((changed.map_or(base, Arc::new), e.ts_ns, line.into_owned()));
        }
    }
}

/// Streams a tail to one client: replays up to `limit` matching lines since
/// `start`, then live ones, pinging on the server's shared clock. Counts
/// what it sends, its gaps and why it drops a client as the other streams
/// do. Returns the close code and reason to send (code 0: the peer is gone,
/// send nothing).
pub async fn run_tail<W, R, E>(
    tx: &mut W,
    mut rx: R,
    st: &Arc<AppState>,
    req: TailRequest,
) -> (u16, &'static str)
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + 'static,
{
    let cfg = &st.cfg;
    let metrics = &st.metrics;
    macro_rules! send {
        ($msg:expr) => {
            match tokio::time::timeout(cfg.send_timeout, tx.send($msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return (0, ""),
                Err(_) => {
                    metrics.dropped("send_timeout");
                    return (0, "");
                }
            }
        };
    }
    // A frame of rows, counted as the other transports count theirs.
    macro_rules! send_rows {
        ($rows:expr) => {{
            let frame = tail_frame($rows);
            metrics.sent(crate::metrics::Transport::ws, $rows.len(), frame.len());
            send!(Message::Text(Utf8Bytes::from(frame)));
        }};
    }
    let sub = Subscribe {
        since: Some(format_ts(req.start_ns)),
        ..Default::default()
    };
    let Ok(filter) = Filter::compile(&sub) else {
        return (close::POLICY, "bad start time");
    };
    let mut session = Session::new(st.hub.clone(), &sub, filter, cfg.session);
    let mut cache = StreamCache::default();
    // Replay: everything before the head as it was at connect time; only the
    // newest `limit` matches are kept.
    let replay_end = st.hub.head().next_idx;
    let mut replay: VecDeque<(Arc<Labels>, i64, String)> = VecDeque::new();
    let mut rows = Vec::new();
    let mut ended = false;
    loop {
        match session.pull() {
            Pull::Batch { entries, more } => {
                process(&req.query, &mut cache, &entries, &mut rows);
                for r in rows.drain(..) {
                    replay.push_back(r);
                    if replay.len() > req.limit {
                        replay.pop_front();
                    }
                }
                if !more || entries.last().is_some_and(|e| e.idx + 1 >= replay_end) {
                    break;
                }
            }
            Pull::Gap { .. } => {}
            Pull::TooSlow | Pull::Idle => break,
            Pull::Ended => {
                ended = true;
                break;
            }
        }
    }
    if !replay.is_empty() {
        let rows: Vec<_> = replay.into_iter().collect();
        send_rows!(&rows);
    }
    if ended {
        return (close::GOING_AWAY, "server shutting down");
    }
    let mut head = st.hub.watch();
    let mut draining = st.draining.clone();
    let mut drain_deadline: Option<Instant> = None;
    // Pings follow the server's shared clock (server/listen.rs), which
    // wakes the hub's waiters on every tick.
    let mut pinged = st.ping_epoch.load(std::sync::atomic::Ordering::Relaxed);
    let mut last_heard = Instant::now();
    loop {
        head.borrow_and_update();
        loop {
            match crate::server::stream::next(&mut session, st) {
                Step::Records(entries) => {
                    process(&req.query, &mut cache, &entries, &mut rows);
                    if !rows.is_empty() {
                        send_rows!(&rows);
                        rows.clear();
                    }
                }
                // Loki's tail has no gap message: the client sees the
                // missing lines as a jump in time; the metrics count it.
                Step::Gap { .. } => {}
                Step::TooSlow => return (close::POLICY, "slow consumer"),
                Step::Idle => break,
                Step::Drained(_) | Step::Reconnect(_) => {
                    return (close::GOING_AWAY, "server shutting down");
                }
            }
        }
        let deadline = drain_deadline;
        tokio::select! {
            changed = head.changed() => {
                if changed.is_err() {
                    return (close::GOING_AWAY, "server shutting down");
                }
                let epoch = st.ping_epoch.load(std::sync::atomic::Ordering::Relaxed);
                if epoch != pinged {
                    pinged = epoch;
                    if last_heard.elapsed() >= cfg.pong_timeout {
                        metrics.dropped("pong_timeout");
                        return (close::POLICY, "no pong");
                    }
                    send!(Message::Ping(Bytes::new()));
                }
            }
            d = draining.changed(), if drain_deadline.is_none() => {
                if d.is_err() || *draining.borrow() {
                    // Keep delivering until the hub closes, within the ack timeout.
                    drain_deadline = Some(Instant::now() + cfg.ack_timeout);
                }
            }
            _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } else { std::future::pending::<()>().await } } => {
                return (close::GOING_AWAY, "server shutting down");
            }
            msg = rx.next() => {
                last_heard = Instant::now();
                match msg {
                    Some(Err(e)) => {
                        // The close code tells the client what it did; the
                        // metric counts it as the WebSocket stream does.
                        return match crate::server::ws::violation_close(&e) {
                            Some((code, reason, counted)) => {
                                metrics.dropped(counted);
                                (code, reason)
                            }
                            None => (0, ""),
                        };
                    }
                    None | Some(Ok(Message::Close(_))) => return (0, ""),
                    Some(Ok(_)) => {}
                }
            }
        }
    }
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
        assert_eq!(p("match[]=a&match[]=b").all("match[]"), ["a", "b"]);
    }

    #[test]
    fn sample_times_are_seconds_numbers() {
        assert_eq!(serde_json::to_string(&Secs(4_000_000_000)).unwrap(), "4");
        assert_eq!(
            serde_json::to_string(&Secs(1_700_000_000_123_456_789)).unwrap(),
            "1700000000.123"
        );
    }

    #[test]
    fn tail_frames_group_by_stream_and_use_ns_strings() {
        let a: Arc<Labels> = Arc::new([("file".to_string(), "a".to_string())].into());
        let b: Arc<Labels> = Arc::new([("file".to_string(), "b".to_string())].into());
        let f = tail_frame(&[
            (a.clone(), 1, "x".into()),
            (b, 2, "y".into()),
            (a, 3, "z".into()),
        ]);
        assert_eq!(
            f,
            r#"{"streams":[{"stream":{"file":"a"},"values":[["1","x"],["3","z"]]},{"stream":{"file":"b"},"values":[["2","y"]]}],"dropped_entries":null}"#
        );
        assert_eq!(close_msg(1008, &"é".repeat(100)), {
            let reason = "é".repeat(61);
            Message::Close(Some(CloseFrame {
                code: 1008,
                reason: Utf8Bytes::from(reason),
            }))
        });
    }

    #[tokio::test]
    async fn tail_replays_then_streams_over_channels() {
        use crate::hub::HubLimits;
        use crate::hub::tests::{publish_lines, src};
        use crate::server::ServerConfig;
        use futures::channel::mpsc;

        let hub = Hub::new(
            HubLimits {
                max_lines: 1000,
                max_bytes: 1 << 20,
            },
            "t",
        );
        let a = hub.source(src("app.log"));
        let lines: Vec<String> = (0..150).map(|i| format!("old {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        publish_lines(&hub, &a, &refs);
        publish_lines(&hub, &a, &["skip me"]);
        let st = AppState::for_tests(hub.clone(), ServerConfig::default());
        let req = TailRequest::parse(
            &p("query=%7Bfile%3D%22app.log%22%7D%20%21%3D%20%22skip%22&limit=100"),
            now_ns(),
        )
        .unwrap();
        let (mut server_tx, mut client_rx) = mpsc::channel::<Message>(16);
        let (mut client_tx, server_rx) = mpsc::channel::<Result<Message, std::io::Error>>(16);
        let task = tokio::spawn(async move { run_tail(&mut server_tx, server_rx, &st, req).await });
        let next_text = async |rx: &mut mpsc::Receiver<Message>| -> serde_json::Value {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), rx.next())
                    .await
                    .unwrap()
                    .unwrap()
                {
                    Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                    Message::Close(c) => panic!("closed {c:?}"),
                    _ => continue,
                }
            }
        };
        let first = next_text(&mut client_rx).await;
        let values = first["streams"][0]["values"].as_array().unwrap();
        assert_eq!(values.len(), 100);
        assert_eq!(values[0][1], "old 50");
        assert_eq!(values[99][1], "old 149");
        assert_eq!(first["streams"][0]["stream"]["file"], "app.log");
        assert!(first["dropped_entries"].is_null());
        publish_lines(&hub, &a, &["skip this", "live 1"]);
        let live = next_text(&mut client_rx).await;
        assert_eq!(live["streams"][0]["values"][0][1], "live 1");
        let ts = live["streams"][0]["values"][0][0].as_str().unwrap();
        assert!(ts.parse::<i64>().is_ok(), "{ts}");
        client_tx.send(Ok(Message::Close(None))).await.unwrap();
        assert_eq!(task.await.unwrap(), (0, ""));
    }
}
