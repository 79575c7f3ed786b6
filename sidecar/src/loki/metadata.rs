//! Labels, label values, series, index stats, build info and readiness.

use std::collections::{BTreeSet, HashSet};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Loki;
use super::response::{Refusal, json, success};
use super::select::{blocking, selected, streams_in, window_and_selectors};
use logstream_logql::eval::Labels;

pub(super) async fn labels(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (start, end, sels) = window_and_selectors(raw, &body, &["query"])?;
    let names: BTreeSet<String> = streams_in(&lk.app, start, end, &sels)
        .into_iter()
        .flat_map(|l| l.into_keys())
        .collect();
    Ok(success(names, Vec::new()))
}

pub(super) async fn label_values(
    State(lk): State<Loki>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (start, end, sels) = window_and_selectors(raw, &body, &["query"])?;
    let values: BTreeSet<String> = streams_in(&lk.app, start, end, &sels)
        .into_iter()
        .filter_map(|mut l| l.remove(&name))
        .collect();
    Ok(success(values, Vec::new()))
}

pub(super) async fn series(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (start, end, sels) = window_and_selectors(raw, &body, &["match[]", "match"])?;
    let all: Vec<Labels> = streams_in(&lk.app, start, end, &sels).into_iter().collect();
    Ok(success(all, Vec::new()))
}

#[derive(Serialize, Default)]
struct IndexStats {
    streams: usize,
    chunks: usize,
    entries: usize,
    bytes: usize,
}

pub(super) async fn index_stats(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let (start, end, sels) = window_and_selectors(raw, &body, &["query"])?;
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
    Ok(match stats {
        Ok(s) => json(&s),
        Err(r) => r,
    })
}

pub(super) async fn buildinfo() -> Response {
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

pub(super) async fn ready(State(lk): State<Loki>) -> Response {
    if lk.app.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}
