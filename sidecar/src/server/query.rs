//! The query string of a streaming request, and the admission every
//! stream goes through (token, Origin, query, `Last-Event-ID`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::filter::{Filter, FilterError};
use crate::protocol::{Cursor, Subscribe};

/// Query string of a streaming request: the subscription plus `access_token`.
pub struct StreamQuery {
    pub sub: Subscribe,
    pub filter: Filter,
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("bad query: {0}")]
    Syntax(String),
    #[error("{name}: {value:?} is not valid: {reason}")]
    Param {
        name: String,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Filter(#[from] FilterError),
}

pub fn parse_query(raw: Option<&str>) -> Result<StreamQuery, QueryError> {
    let mut token = None;
    let mut rest: Vec<(String, String)> = Vec::new();
    for (k, v) in url_pairs(raw.unwrap_or("")) {
        if k == "access_token" {
            token = Some(v);
        } else {
            rest.push((k, v));
        }
    }
    let encoded =
        serde_urlencoded::to_string(&rest).map_err(|e| QueryError::Syntax(e.to_string()))?;
    // Deserialized with its path tracked, so an error names the parameter
    // (PROTOCOL.md promises it; serde_urlencoded alone says "invalid digit").
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(encoded.as_bytes()));
    let sub: Subscribe = serde_path_to_error::deserialize(de).map_err(|e| {
        let name = e.path().to_string();
        match rest.iter().find(|(k, _)| *k == name) {
            Some((_, value)) => QueryError::Param {
                name,
                value: value.clone(),
                reason: e.into_inner().to_string(),
            },
            None => QueryError::Syntax(e.into_inner().to_string()),
        }
    })?;
    let filter = Filter::compile(&sub)?;
    Ok(StreamQuery { sub, filter, token })
}

pub(crate) fn url_pairs(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

pub(crate) fn bad_request(e: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

/// Common admission for the three streaming endpoints: auth, Origin, query,
/// `Last-Event-ID`.
#[allow(clippy::result_large_err)]
pub(crate) async fn admit_stream(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(raw): RawQuery,
) -> Result<StreamQuery, Response> {
    let pre_token = url_pairs(raw.as_deref().unwrap_or(""))
        .into_iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v);
    st.limit_connection(Some(peer))?;
    st.admit(headers, peer, pre_token.as_deref()).await?;
    st.limit_credential(headers, pre_token.as_deref())?;
    let mut q = parse_query(raw.as_deref()).map_err(|e| {
        st.reject("bad_request");
        bad_request(e)
    })?;
    if q.sub.resume.is_none()
        && let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
    {
        let c: Cursor = id.parse().map_err(bad_request)?;
        q.sub.resume = Some(c);
    }
    Ok(q)
}
