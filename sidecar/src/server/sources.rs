//! `GET /sources`: what this server streams, one entry per source (namespace,
//! pod, container, file) with its line counter, for the web page's source
//! panel. Admitted like the streams (token, then Origin): it names files
//! and pods.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::query::url_pairs;
use crate::hub::{Ring, format_ts};

/// One source as the page lists it. Incarnations of the same source (a
/// restarted sidecar's new sids) are merged.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct SourceSummary {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ns: String,
    pub pod: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
    pub file: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Lines published by the source (the sum of its incarnations' last
    /// sequence numbers; upstream numbers on an aggregator).
    pub lines: u64,
    /// Of those, records still in this server's history.
    pub history: u64,
    /// Time of its newest record in history (absent when none is left).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ts: Option<String>,
    /// `last_ts` in nanoseconds, while merging.
    #[serde(skip)]
    last_ns: Option<i64>,
}

/// (namespace, pod, container, file): what the page lists.
type SourceKey = (String, String, String, String);

/// The sources of `ring` that published at least one line, sorted by
/// (namespace, pod, container, file). One pass over the history. Without
/// `keep_idle`, sources with no record left in the history are left out: on
/// an aggregator, a pod that went away leaves the list when its last line
/// leaves the history (a sidecar keeps listing the files it tails).
pub fn summarise(ring: &Ring, keep_idle: bool) -> Vec<SourceSummary> {
    let n = ring.sources().len();
    let mut history = vec![0u64; n];
    let mut last_ts = vec![None::<i64>; n];
    for e in ring.iter_from(ring.first_idx()) {
        let slot = e.source.slot as usize;
        if let Some(h) = history.get_mut(slot) {
            *h += 1;
        }
        if let Some(t) = last_ts.get_mut(slot) {
            *t = Some(t.map_or(e.ts_ns, |old: i64| old.max(e.ts_ns)));
        }
    }
    let mut merged: BTreeMap<SourceKey, SourceSummary> = BTreeMap::new();
    for (i, info) in ring.sources().iter().enumerate() {
        let lines = ring.last_seq(info.slot);
        if lines == 0 {
            continue;
        }
        let s = &info.source;
        let key = (
            s.namespace.clone(),
            s.pod.clone(),
            s.container.clone(),
            s.file.clone(),
        );
        let sum = merged.entry(key).or_insert_with(|| SourceSummary {
            ns: s.namespace.clone(),
            pod: s.pod.clone(),
            container: s.container.clone(),
            file: s.file.clone(),
            ..SourceSummary::default()
        });
        if !s.service.is_empty() {
            sum.service = s.service.clone();
        }
        sum.lines += lines;
        sum.history += history.get(i).copied().unwrap_or(0);
        if let Some(t) = last_ts.get(i).copied().flatten() {
            sum.last_ns = Some(sum.last_ns.map_or(t, |old| old.max(t)));
        }
    }
    merged
        .into_values()
        .filter(|sum| keep_idle || sum.history > 0)
        .map(|mut sum| {
            sum.last_ts = sum.last_ns.map(format_ts);
            sum
        })
        .collect()
}

/// How long a summary is served again: every open page polls, and each
/// summary is a pass over the history under its lock, so a process makes
/// at most one a second however many pages are open.
const FRESH: Duration = Duration::from_secs(1);

/// The last summary: (hub it describes, when, the JSON).
type Cached = Option<(usize, Instant, axum::body::Bytes)>;
static LAST: Mutex<Cached> = Mutex::new(None);

pub async fn sources(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Response {
    let pairs = url_pairs(raw.as_deref().unwrap_or(""));
    let token = pairs
        .iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.as_str());
    if let Err(refused) = st.admit(&headers, peer, token).await {
        return refused;
    }
    let hub = st.hub.clone();
    let id = Arc::as_ptr(&hub) as usize;
    let keep_idle = st.cfg.role != "aggregator";
    let json = tokio::task::spawn_blocking(move || {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((of, at, body)) = last.as_ref()
            && *of == id
            && at.elapsed() < FRESH
        {
            return body.clone();
        }
        let list = summarise(&hub.lock(), keep_idle);
        let body = axum::body::Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "sources": list })).unwrap_or_default(),
        );
        *last = Some((id, Instant::now(), body.clone()));
        body
    })
    .await;
    match json {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("sources failed: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::tests::{publish_lines, small_hub, src};
    use crate::protocol::Source;

    #[test]
    fn lists_each_source_with_its_counter_and_merges_incarnations() {
        let hub = small_hub();
        let app = hub.source(src("app.log"));
        let db = hub.source(Source {
            pod: "db-0".into(),
            ..src("db.log")
        });
        let _quiet = hub.source(src("quiet.log"));
        publish_lines(&hub, &app, &["a", "b", "c"]);
        publish_lines(&hub, &db, &["x"]);
        // A second incarnation of app.log (a restarted tailer).
        let again = hub.source_with_id(src("app.log"), crate::protocol::SourceId(0xfeed));
        publish_lines(&hub, &again, &["d", "e"]);

        let list = summarise(&hub.lock(), true);
        let names: Vec<(&str, &str, u64, u64)> = list
            .iter()
            .map(|s| (s.pod.as_str(), s.file.as_str(), s.lines, s.history))
            .collect();
        let pod = src("app.log").pod;
        assert_eq!(
            names,
            vec![("db-0", "db.log", 1, 1), (pod.as_str(), "app.log", 5, 5)],
            "sorted by pod then file; quiet.log published nothing"
        );
        assert!(list.iter().all(|s| s.last_ts.is_some()));
        let json = serde_json::to_value(&list[0]).unwrap();
        assert_eq!(json["file"], "db.log");
        assert!(json.get("service").is_none(), "empty fields are omitted");
    }

    #[test]
    fn sources_whose_lines_left_the_history_are_left_out_unless_kept() {
        let hub = small_hub(); // 100 records
        let gone = hub.source(src("gone.log"));
        let busy = hub.source(src("busy.log"));
        publish_lines(&hub, &gone, &["bye"]);
        let many: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        publish_lines(&hub, &busy, &many);

        let files = |keep| -> Vec<(String, u64, u64, bool)> {
            summarise(&hub.lock(), keep)
                .into_iter()
                .map(|s| (s.file, s.lines, s.history, s.last_ts.is_some()))
                .collect()
        };
        assert_eq!(files(false), vec![("busy.log".into(), 100, 100, true)]);
        assert_eq!(
            files(true),
            vec![
                ("busy.log".into(), 100, 100, true),
                ("gone.log".into(), 1, 0, false)
            ]
        );
    }
}
