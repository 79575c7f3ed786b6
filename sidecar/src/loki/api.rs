//! The routes of the Loki read API and their admission (the server's token
//! rules, before any work).
//!
//! Handlers only convert: parameters in (`params.rs`), LogQL's evaluator
//! over a snapshot of the ring (`select.rs`: taken under the lock as `Arc`
//! clones, evaluated off the async threads; `query.rs`, `metadata.rs`), JSON out
//! (`response.rs`); the live tail is `tail.rs`. Errors are `400 text/plain`,
//! as Loki's are: every refusal is a `LokiError`, mapped in one place
//! (`response::Refusal`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;

use crate::server::state::AppState;

use super::Loki;
use super::drilldown::{
    detected_field_values, detected_fields, detected_labels, drilldown_limits, index_volume,
    index_volume_range, patterns,
};
use super::metadata::{buildinfo, index_stats, label_values, labels, ready, series};
use super::query::{query, query_range};
use super::tail::tail;

/// The Loki API routes, with their own admission (the server's token rules).
/// Merge into a server router: `.merge(crate::loki::api::router(state.clone()))`.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let lk = Loki {
        app: state,
        tails: Arc::default(),
    };
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
        // Grafana's Logs Drilldown.
        .route(
            "/loki/api/v1/index/volume",
            get(index_volume).post(index_volume),
        )
        .route(
            "/loki/api/v1/index/volume_range",
            get(index_volume_range).post(index_volume_range),
        )
        .route("/loki/api/v1/detected_labels", get(detected_labels))
        .route("/loki/api/v1/detected_fields", get(detected_fields))
        .route(
            "/loki/api/v1/detected_field/{name}/values",
            get(detected_field_values),
        )
        .route("/loki/api/v1/patterns", get(patterns))
        .route("/loki/api/v1/drilldown-limits", get(drilldown_limits))
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
    // The tail is a stream: counted against the new-stream limits as the
    // others are (queries are not: a dashboard sends many at once).
    let tail = req.uri().path() == super::TAIL_PATH;
    if tail && let Err(r) = lk.app.limit_connection(peer) {
        return r;
    }
    if let Err(r) = lk
        .app
        .check_token(req.headers(), peer, query_token.as_deref())
        .await
    {
        return r;
    }
    if tail
        && let Err(r) = lk
            .app
            .limit_credential(req.headers(), query_token.as_deref())
    {
        return r;
    }
    next.run(req).await
}
