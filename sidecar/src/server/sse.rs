//! Server-Sent Events (`/sse`) and plain chunked text (`/stream`).
//!
//! The body is a stream pulled by hyper: a chunk is produced only when the
//! previous one was written, so a slow reader holds a position in the hub,
//! never a queue.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{Instant, Interval};

use super::frame;
use super::query::admit_stream;
use super::{AppState, ConnGuard};
use crate::hub::Head;
use crate::metrics::Transport;
use crate::protocol::{Format, PROTOCOL_VERSION, ServerMessage};
use crate::session::{Pull, Session};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Plain,
}

pub async fn sse(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: ConnectInfo<std::net::SocketAddr>,
    raw: RawQuery,
) -> Response {
    respond(st, headers, peer, raw, Kind::Sse).await
}

pub async fn stream(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: ConnectInfo<std::net::SocketAddr>,
    raw: RawQuery,
) -> Response {
    respond(st, headers, peer, raw, Kind::Plain).await
}

async fn respond(
    st: Arc<AppState>,
    headers: HeaderMap,
    peer: ConnectInfo<std::net::SocketAddr>,
    raw: RawQuery,
    kind: Kind,
) -> Response {
    let mut q = match admit_stream(&st, &headers, peer, raw).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let transport = if kind == Kind::Sse {
        Transport::sse
    } else {
        Transport::stream
    };
    let Some(guard) = st.try_connect(transport.clone()) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "connection limit reached\n",
        )
            .into_response();
    };
    if kind == Kind::Plain && q.sub.format.is_none() {
        q.filter.format = Format::Raw;
    }
    let format = q.filter.format;
    let session = Session::new(st.hub.clone(), &q.sub, q.filter, st.cfg.session);
    let mut keepalive =
        tokio::time::interval_at(Instant::now() + st.cfg.keepalive, st.cfg.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Boxed: the body stream then holds a pointer beside the chunk in the
    // making, not a second copy of the whole state (smaller idle streams).
    let state = Box::new(BodyState {
        head: st.hub.watch(),
        draining: st.draining.clone(),
        st: st.clone(),
        session,
        keepalive,
        kind,
        transport,
        started: false,
        done: false,
        _guard: guard,
    });
    let body = futures::stream::unfold(state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), s))
    });
    let ctype = match (kind, format) {
        (Kind::Sse, _) => "text/event-stream",
        (Kind::Plain, Format::Raw) => "text/plain; charset=utf-8",
        (Kind::Plain, Format::Json) => "application/x-ndjson",
    };
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell buffering proxies (ingress-nginx) to pass chunks through at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

struct BodyState {
    st: Arc<AppState>,
    head: watch::Receiver<Head>,
    draining: watch::Receiver<bool>,
    session: Session,
    keepalive: Interval,
    kind: Kind,
    transport: Transport,
    started: bool,
    done: bool,
    _guard: ConnGuard,
}

impl BodyState {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            if self.kind == Kind::Sse {
                let hello = ServerMessage::Hello {
                    version: PROTOCOL_VERSION,
                    server: format!("logstream/{}", env!("CARGO_PKG_VERSION")),
                    role: self.st.cfg.role.clone(),
                    cursor: self.session.cursor(),
                };
                return Some(Bytes::from(format!(
                    "retry: 2000\nevent: hello\ndata: {}\n\n",
                    frame::message(&hello)
                )));
            }
        }
        let metrics = self.st.metrics.clone();
        let reconnect_on_drain = self.st.cfg.reconnect_on_drain;
        loop {
            let draining = *self.draining.borrow();
            if reconnect_on_drain && draining {
                self.done = true;
                let after_ms = self.st.cfg.reconnect_after_ms();
                let reason = "server shutting down; resume elsewhere with your cursor".to_string();
                return Some(self.control(&ServerMessage::Reconnect { after_ms, reason }));
            }
            self.head.borrow_and_update();
            match self.session.pull() {
                Pull::Batch { entries, .. } if !entries.is_empty() => {
                    let chunk = match (self.kind, self.session.filter.format) {
                        (Kind::Sse, fmt) => {
                            sse_records(&entries, &self.session.cursor().to_string(), fmt)
                        }
                        (Kind::Plain, Format::Raw) => {
                            let mut s = frame::raw_lines(&entries);
                            s.push('\n');
                            s
                        }
                        (Kind::Plain, Format::Json) => {
                            let mut s = String::new();
                            for e in &entries {
                                s.push_str(std::str::from_utf8(e.json()).unwrap_or("null"));
                                s.push('\n');
                            }
                            s
                        }
                    };
                    metrics.sent(self.transport.clone(), entries.len(), chunk.len());
                    self.keepalive.reset();
                    return Some(Bytes::from(chunk));
                }
                Pull::Batch { .. } => continue,
                Pull::Gap {
                    missed,
                    reason,
                    cursor,
                } => {
                    metrics.gap(reason, missed);
                    return Some(self.control(&ServerMessage::Gap {
                        missed,
                        reason,
                        cursor,
                    }));
                }
                Pull::TooSlow => {
                    metrics.dropped("slow_client");
                    self.done = true;
                    return None;
                }
                Pull::Ended => {
                    self.done = true;
                    let cursor = self.session.cursor();
                    return Some(self.control(&ServerMessage::Draining { cursor }));
                }
                Pull::Idle => {
                    tokio::select! {
                        changed = self.head.changed() => {
                            if changed.is_err() {
                                self.done = true;
                                return None;
                            }
                        }
                        _ = super::until_true(&mut self.draining), if reconnect_on_drain => {}
                        _ = self.keepalive.tick() => {
                            if self.kind == Kind::Sse {
                                return Some(Bytes::from_static(b": keep-alive\n\n"));
                            }
                        }
                    }
                }
            }
        }
    }

    fn control(&self, m: &ServerMessage) -> Bytes {
        let name = match m {
            ServerMessage::Gap { .. } => "gap",
            ServerMessage::Draining { .. } => "draining",
            ServerMessage::Reconnect { .. } => "reconnect",
            _ => "message",
        };
        Bytes::from(match (self.kind, self.session.filter.format) {
            (Kind::Sse, _) => format!("event: {name}\ndata: {}\n\n", frame::message(m)),
            (Kind::Plain, Format::Json) => format!("{}\n", frame::message(m)),
            (Kind::Plain, Format::Raw) => format!("{}\n", frame::raw_notice(m)),
        })
    }
}

/// One SSE event per record; the resume cursor rides on the last one only,
/// which is all `EventSource` keeps.
fn sse_records(entries: &[Arc<crate::hub::Entry>], cursor: &str, fmt: Format) -> String {
    let mut s = String::with_capacity(
        entries.iter().map(|e| e.wire_size() + 8).sum::<usize>() + cursor.len() + 8,
    );
    let last = entries.len().saturating_sub(1);
    for (i, e) in entries.iter().enumerate() {
        if i == last {
            s.push_str("id: ");
            s.push_str(cursor);
            s.push('\n');
        }
        s.push_str("data: ");
        match fmt {
            Format::Json => s.push_str(std::str::from_utf8(e.json()).unwrap_or("null")),
            // A bare CR would end the SSE line early.
            Format::Raw => s.push_str(&e.line.replace('\r', "\\r")),
        }
        s.push_str("\n\n");
    }
    s
}
