//! The routes of a streaming server: the streams, the page, health,
//! readiness, metrics, the protocol schema, and the Loki API merged in.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::query::url_pairs;
use super::{AppState, sse, ws};

/// Builds the router of a streaming server.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(page_js))
        .route("/page.css", get(page_css))
        .route("/ws", get(ws::handler))
        .route("/sse", get(sse::sse))
        .route("/stream", get(sse::stream))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/protocol.schema.json", get(schema))
        .route("/sources", get(super::sources::sources))
        .merge(crate::loki::api::router(state.clone()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Request latency by route and status. For the streaming routes it is the
/// time to the response head (the stream itself is counted elsewhere).
async fn observe(
    State(st): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .request_seconds
        .get_or_create(&crate::metrics::RequestLabels {
            path,
            code: resp.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// The page may load only its own script and stylesheet and talk only to
/// this server: log text that slipped into markup could run nothing.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

async fn page() -> Response {
    (
        [(header::CONTENT_SECURITY_POLICY, PAGE_POLICY)],
        Html(include_str!("page.html")),
    )
        .into_response()
}

async fn page_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("page.js"),
    )
        .into_response()
}

async fn page_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("page.css"),
    )
        .into_response()
}

/// Readiness for probes (status code and one word), and with `?verbose`
/// (text) or `?format=json` the files report: which matching paths are not
/// tailed and why. The report names files, so it takes a token like the
/// streams do; the bare probe does not.
async fn readyz(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (code, word) = if *st.draining.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if !*st.ready.borrow() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    } else {
        (StatusCode::OK, "ready")
    };
    let pairs = url_pairs(raw.as_deref().unwrap_or(""));
    let json = pairs.iter().any(|(k, v)| k == "format" && v == "json");
    let verbose = pairs.iter().any(|(k, _)| k == "verbose");
    if !json && !verbose {
        return (code, format!("{word}\n")).into_response();
    }
    let token = pairs
        .iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.as_str());
    if let Err(refused) = st.check_token(&headers, Some(peer), token).await {
        return refused;
    }
    let report = st.files.borrow().clone();
    let history = st.history.get().map(|h| h.report());
    if json {
        let mut doc = readiness_json(word, &report);
        if let (Some(h), Some(obj)) = (&history, doc.as_object_mut()) {
            obj.insert("history".into(), serde_json::json!(h));
        }
        return (code, axum::Json(doc)).into_response();
    }
    let mut text = render_readiness(word, &report);
    if let Some(h) = history {
        let line = if h.writing {
            format!(
                "[+]history: written to disk ({} of {} bytes)\n",
                h.bytes, h.max_bytes
            )
        } else {
            format!(
                "[-]history: not written to disk ({}); {} records dropped\n",
                h.error.as_deref().unwrap_or("write failed"),
                h.records_dropped
            )
        };
        text.insert_str(0, &line);
    }
    (code, text).into_response()
}

/// `/readyz?format=json`; the operator reads it (operator/src/probe.rs), and
/// `tests/fixtures/readyz-files.json` pins its shape for both.
pub fn readiness_json(word: &str, report: &crate::tailer::FileReport) -> serde_json::Value {
    serde_json::json!({"status": word, "files": report})
}

/// `/readyz?verbose`: one line per check, then the paths not tailed.
fn render_readiness(word: &str, report: &crate::tailer::FileReport) -> String {
    use std::fmt::Write;
    let mut out = format!("[+]tailer: {} files tailed\n", report.tailed);
    if report.not_tailed_total == 0 {
        out.push_str("[+]files: every matching path is tailed\n");
    } else {
        let _ = writeln!(
            out,
            "[-]files: {} matching paths not tailed",
            report.not_tailed_total
        );
        for n in &report.not_tailed {
            let _ = writeln!(out, "    {}: {}: {}", n.path, n.reason, n.detail);
        }
        if report.not_tailed.len() < report.not_tailed_total {
            let _ = writeln!(
                out,
                "    … and {} more",
                report.not_tailed_total - report.not_tailed.len()
            );
        }
    }
    let _ = writeln!(out, "{word}");
    out
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

async fn schema() -> Response {
    (
        [(header::CONTENT_TYPE, "application/schema+json")],
        serde_json::to_string_pretty(&crate::protocol::json_schema()).unwrap_or_default(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_document_matches_the_fixture_the_operator_parses() {
        let report = crate::tailer::FileReport {
            tailed: 1,
            not_tailed: vec![crate::tailer::NotTailed {
                path: "app/secret.log".into(),
                reason: "open_failed",
                detail: "Permission denied (os error 13); owner 1000:4000 mode 0640; the streamer runs as uid 65532 gid 3000 groups [3000] (set the LogStream's sidecar.runAsGroup to the file's group, or have the app write group-readable files)".into(),
            }],
            not_tailed_total: 1,
        };
        let want: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/readyz-files.json")).unwrap();
        assert_eq!(readiness_json("ready", &report), want);
    }

    #[test]
    fn history_report_matches_the_fixture_the_operator_parses() {
        let report = crate::history::HistoryReport {
            writing: false,
            bytes: 2_147_000_000,
            max_bytes: 2_147_483_648,
            records_dropped: 1200,
            error: Some("history segment /var/lib/logstream/history/seg-00000000000f4240.lsh: No space left on device (os error 28)".into()),
        };
        let mut doc = readiness_json("ready", &crate::tailer::FileReport::default());
        doc.as_object_mut()
            .unwrap()
            .insert("history".into(), serde_json::json!(report));
        let want: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/readyz-history.json")).unwrap();
        assert_eq!(doc, want);
    }
}
