//! Server-Sent Events (`/sse`) and plain chunked text (`/stream`).
//!
//! The body is a stream pulled by hyper: a chunk is produced only when the
//! previous one was written, so a slow reader holds a position in the hub,
//! never a queue.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::watch;

use super::compress::{self, GzipBody};
use super::frame;
use super::query::admit_stream;
use super::stream::{self, Next};
use super::{AppState, ConnGuard};
use crate::hub::Head;
use crate::metrics::Transport;
use crate::protocol::{Format, ServerMessage};
use crate::session::Session;

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
    // gzip when asked for: each batch is deflated once for every client
    // with the same rendering (server/compress.rs), flushed per chunk.
    let gzip = st.compression.cfg.enabled
        && compress::accepts_gzip(
            headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
    let session = Session::new(st.hub.clone(), &q.sub, q.filter, st.cfg.session);
    let kept = st.keepalive_epoch.load(Ordering::Relaxed);
    // Boxed: the body stream then holds a pointer beside the chunk in the
    // making, not a second copy of the whole state (smaller idle streams).
    let state = Box::new(BodyState {
        head: session.watch(),
        draining: st.draining.clone(),
        st: st.clone(),
        session,
        kept,
        // The hello counts: the first comment comes after a whole quiet period.
        sent: true,
        kind,
        transport,
        started: false,
        done: false,
        gzip: gzip.then(GzipBody::default),
        _guard: guard,
    });
    let body = futures::stream::unfold(state, |mut s| async move {
        let chunk = s.next_encoded().await?;
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
    if st.compression.cfg.enabled {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

struct BodyState {
    st: Arc<AppState>,
    head: watch::Receiver<Head>,
    draining: watch::Receiver<bool>,
    session: Session,
    /// The keep-alive clock's tick last seen (server/listen.rs).
    kept: u64,
    /// Something went out since that tick.
    sent: bool,
    kind: Kind,
    transport: Transport,
    started: bool,
    done: bool,
    /// The body is gzip: its running CRC and length (`None` once the
    /// trailer went out).
    gzip: Option<GzipBody>,
    _guard: ConnGuard,
}

impl BodyState {
    /// The next chunk as the client takes it: as rendered, or as the next
    /// piece of its gzip stream (the trailer after the last chunk).
    async fn next_encoded(&mut self) -> Option<Bytes> {
        let chunk = self.next_chunk().await;
        if self.gzip.is_none() {
            return chunk;
        }
        let Some(chunk) = chunk else {
            return self.gzip.take().map(|mut g| g.finish());
        };
        let c = &self.st.compression;
        let gz = self.gzip.as_mut()?;
        if !c.worth(chunk.len()) {
            return Some(gz.plain(&chunk));
        }
        let plain = chunk.len();
        let (packed, found) = c.pack(chunk).await;
        let bytes = gz.packed(&packed);
        (self.st.metrics).compressed(self.transport.clone(), plain, bytes.len(), found);
        Some(bytes)
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let format = self.session.filter.format;
        if !self.started {
            self.started = true;
            if self.kind == Kind::Sse {
                let hello = stream::hello(&self.session, &self.st.cfg);
                return Some(Bytes::from(format!(
                    "retry: 2000\n{}",
                    frame::sse_event(&hello)
                )));
            }
        }
        let reconnect_on_drain = self.st.cfg.reconnect_on_drain;
        loop {
            self.head.borrow_and_update();
            match stream::next(&mut self.session, &self.st) {
                Next::Records(entries) => {
                    let chunk = match self.kind {
                        Kind::Sse => {
                            frame::sse_records(&entries, &self.session.cursor().to_string(), format)
                        }
                        Kind::Plain => frame::plain_records(&entries, format),
                    };
                    self.st
                        .metrics
                        .sent(self.transport.clone(), entries.len(), chunk.len());
                    self.sent = true;
                    return Some(Bytes::from(chunk));
                }
                Next::Gap {
                    missed,
                    reason,
                    cursor,
                } => {
                    return Some(self.control(&ServerMessage::Gap {
                        missed,
                        reason,
                        cursor,
                    }));
                }
                Next::TooSlow => {
                    self.done = true;
                    return None;
                }
                Next::Reconnect(m) => {
                    self.done = true;
                    return Some(self.control(&m));
                }
                Next::Drained(cursor) => {
                    self.done = true;
                    return Some(self.control(&ServerMessage::Draining { cursor }));
                }
                Next::Idle => {
                    // A comment when a tick of the shared keep-alive clock
                    // found nothing sent since the one before: a stream
                    // quiet for one to two periods gets one.
                    let epoch = self.st.keepalive_epoch.load(Ordering::Relaxed);
                    if epoch != self.kept {
                        self.kept = epoch;
                        let quiet = !std::mem::take(&mut self.sent);
                        if quiet && self.kind == Kind::Sse {
                            return Some(Bytes::from_static(b": keep-alive\n\n"));
                        }
                    }
                    // The clock's ticks and the drain wake the hub's waiters.
                    tokio::select! {
                        changed = self.head.changed() => {
                            if changed.is_err() {
                                self.done = true;
                                return None;
                            }
                        }
                        _ = super::until_true(&mut self.draining), if reconnect_on_drain => {}
                    }
                }
            }
        }
    }

    fn control(&self, m: &ServerMessage) -> Bytes {
        Bytes::from(match self.kind {
            Kind::Sse => frame::sse_event(m),
            Kind::Plain => format!("{}\n", frame::notice(m, self.session.filter.format)),
        })
    }
}
