//! Accepted connections: the accept loop, its graceful end, and who answers
//! each connection, hyper or the accept loop itself.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer per connection
//! for as long as a response is in flight, and a WebSocket it upgrades moves
//! to a second task behind a boxed, type-erased socket; for connections that
//! idle for hours that was most of their memory (bench/ANALYSIS.md). So a
//! `GET /sse`, `GET /stream` or `GET /ws` upgrade whose request head arrives
//! in one piece is answered here: the router builds the response as for any
//! request, then [`pump`] writes a streamed body straight to the socket, or
//! the WebSocket (`/ws`, or Loki's `/loki/api/v1/tail`) runs on the socket
//! in the same task. Everything else (other
//! paths, heads split over several reads or over 4 KiB, request bodies,
//! HTTP/1.0) goes to hyper untouched: the head is only peeked, never
//! consumed, before that choice.

use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{self, StatusCode, header};
use bytes::Buf;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::heads::HeadGuard;
use super::{AppState, ws};

/// Heads longer than this (cookies...) go to hyper.
const PEEK_BYTES: usize = 4096;
/// Most header lines of a head answered directly (more: hyper).
const MAX_HEADERS: usize = 48;
/// Paths whose responses stream for as long as the client stays.
const DIRECT_PATHS: [&str; 2] = ["/sse", "/stream"];
/// WebSocket upgrades answered without hyper: the socket then stays with
/// the connection task, with no upgrade hand-over and no second task.
const WEBSOCKET_PATH: &str = "/ws";

/// Accepts connections until `stop` turns true, then waits for every
/// connection to end (hyper ones are asked to finish their response and
/// close; streams end when the hub drains).
pub async fn serve(listener: TcpListener, st: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let app = super::router(st.clone());
    let connections = TaskTracker::new();
    let clock = tokio::spawn(session_clock(Arc::downgrade(&st)));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of
                    // spinning on the same error.
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = super::until_true(&mut stop) => break,
        };
        // Frames are small and latency matters: no Nagle delay (with the
        // peer's delayed ACK it held frames ~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        connections.spawn(start(
            tcp,
            peer,
            app.clone(),
            st.clone(),
            stop.clone(),
            connections.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    clock.abort();
}

/// What streaming sessions wait for besides records, in one task: the
/// ping clock (one timer for every WebSocket and Loki tail; each tick bumps
/// `ping_epoch`), the SSE keep-alive clock (`keepalive_epoch`) and the
/// start of the drain. Each wakes the sessions through the hub; they then
/// ping their client (or drop it when it has been silent too long), send a
/// keep-alive comment, or tell it to reconnect.
async fn session_clock(st: std::sync::Weak<AppState>) {
    use std::sync::atomic::Ordering;
    let Some((period, keepalive, mut draining)) = st
        .upgrade()
        .map(|s| (s.cfg.ping_interval, s.cfg.keepalive, s.draining.clone()))
    else {
        return;
    };
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + period, period);
    let mut keep = tokio::time::interval_at(start + keepalive, keepalive);
    keep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_seen = false;
    loop {
        enum Why {
            Ping,
            KeepAlive,
            Drain,
        }
        let why = tokio::select! {
            _ = tick.tick() => Why::Ping,
            _ = keep.tick() => Why::KeepAlive,
            _ = super::until_true(&mut draining), if !drain_seen => {
                drain_seen = true;
                Why::Drain
            }
        };
        let Some(st) = st.upgrade() else { return };
        match why {
            Why::Ping => {
                st.ping_epoch.fetch_add(1, Ordering::Relaxed);
                // Refilled buckets are forgotten on the same clock.
                let held = st.limits.forget();
                st.metrics.rate_limit_buckets.set(held as i64);
            }
            Why::KeepAlive => {
                st.keepalive_epoch.fetch_add(1, Ordering::Relaxed);
            }
            Why::Drain => {}
        }
        st.hub.wake();
    }
}

/// Reads up to the response, then hands the connection to a task of its own
/// sized to what it does from then on (streaming a body, a WebSocket, or
/// hyper): the wait for the head (with its timer), the request and the
/// handler are gone by then, so an idle stream costs only its socket, its
/// body or WebSocket and the loop between them.
async fn start(
    mut tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    st: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    connections: TaskTracker,
) {
    // The whole head is due within the head timeout: the first bytes here,
    // the rest (a head split over several reads) under hyper's timer.
    let started = tokio::time::Instant::now();
    let (head, evicted) = st.heads.enter();
    for _ in 0..evicted {
        st.reject("slow_head");
    }
    let peeked = tokio::select! {
        r = tokio::time::timeout(st.cfg.head_timeout, peek_direct(&tcp, st.cfg.stream_send_buffer)) => match r {
            Ok(Ok(p)) => p,
            // Silent, closed or broken before a request: nothing to answer.
            _ => return,
        },
        _ = head.evicted() => return,
        _ = super::until_true(&mut stop) => return,
    };
    let Some((req, head_len)) = peeked else {
        let left = st.cfg.head_timeout.saturating_sub(started.elapsed());
        connections.spawn(with_hyper(tcp, peer, app, stop, head, left));
        return;
    };
    drop(head);
    drop(stop);
    match respond(&mut tcp, peer, app, req, head_len).await {
        Ok(Answer::Body(mut body, chunked)) => {
            connections.spawn(async move { stream(&mut tcp, &mut body, chunked, &st).await });
        }
        Ok(Answer::WebSocket(admitted)) => {
            drop(st);
            ws::spawn_on(&connections, tcp, admitted);
        }
        Ok(Answer::Done) => close(&mut tcp, Ok(())).await,
        Err(e) => close(&mut tcp, Err(e)).await,
    }
}

/// Waits for the first bytes of the connection and, when they hold a whole
/// request head for a direct path, returns it and its length (still unread).
/// `Ok(None)`: hyper answers. An error or end of stream: nothing to answer.
/// A request for a stream gets its send buffer capped to `send_buffer`.
async fn peek_direct(
    tcp: &TcpStream,
    send_buffer: usize,
) -> std::io::Result<Option<(http::Request<Body>, usize)>> {
    let mut buf = vec![0u8; PEEK_BYTES];
    let n = tcp.peek(&mut buf).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if send_buffer > 0 && is_stream_request(&buf[..n]) {
        // What the kernel buffers for a client is invisible to the
        // slow-client check: left to autotuning it grows to megabytes that a
        // slow reader drains before it reads of its gap.
        if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(tcp, send_buffer) {
            tracing::debug!(error = %e, "SO_SNDBUF");
        }
    }
    Ok(direct_request(&buf[..n]))
}

/// Whether a request's first bytes ask for a response that streams for as
/// long as the client stays (the direct paths and Loki's tail).
pub(crate) fn is_stream_request(bytes: &[u8]) -> bool {
    let Some(target) = bytes
        .strip_prefix(b"GET ")
        .and_then(|rest| rest.split(|b| *b == b' ').next())
    else {
        return false;
    };
    let path = target.split(|b| *b == b'?').next().unwrap_or(target);
    DIRECT_PATHS
        .iter()
        .chain([&WEBSOCKET_PATH, &crate::loki::TAIL_PATH])
        .any(|p| path == p.as_bytes())
}

/// The request of `bytes` and the length of its head, when it is one the
/// accept loop answers: a complete `GET` over HTTP/1.1 without body, of a
/// streaming path (no upgrade) or of `/ws` (a WebSocket upgrade).
pub(crate) fn direct_request(bytes: &[u8]) -> Option<(http::Request<Body>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let target = req.path?;
    let path = target.split('?').next().unwrap_or(target);
    // Loki's tail is a WebSocket too, accepted the same way.
    let websocket = path == WEBSOCKET_PATH || path == crate::loki::TAIL_PATH;
    if !websocket && !DIRECT_PATHS.contains(&path) {
        return None;
    }
    let mut b = http::Request::builder()
        .method(http::Method::GET)
        .uri(target)
        .version(http::Version::HTTP_11);
    let mut upgrade = false;
    for h in req.headers.iter() {
        let no_body = h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() == b"0";
        let special = ["content-length", "transfer-encoding", "upgrade", "expect"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n));
        if h.name.eq_ignore_ascii_case("upgrade") && websocket {
            // The handler checks the rest of the handshake.
            upgrade = h.value.eq_ignore_ascii_case(b"websocket");
        } else if special && !no_body {
            return None;
        }
        b = b.header(h.name, h.value);
    }
    if websocket && !upgrade {
        return None;
    }
    if websocket {
        b = b.extension(ws::DirectUpgrade);
    }
    b.body(Body::empty()).ok().map(|r| (r, head_len))
}

/// Writes the body of a direct answer, then closes the connection.
///
/// The caller's task owns the socket and the body and lends them here (a
/// task captures them once; async fn arguments would be stored twice).
async fn stream(tcp: &mut TcpStream, body: &mut Body, chunked: bool, st: &AppState) {
    let r = pump(tcp, body, chunked, st.cfg.send_timeout).await;
    if matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
        st.metrics.dropped("send_timeout");
    }
    close(tcp, r).await
}

async fn close(tcp: &mut TcpStream, written: std::io::Result<()>) {
    match written {
        Ok(()) => {
            let _ = tcp.shutdown().await;
        }
        Err(e) => tracing::debug!(error = %e, "stream connection ended"),
    }
}

/// Takes the peeked head off the socket, asks the router and writes the
/// response head; returns the body still to write and whether it is chunked.
async fn respond(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    app: Router,
    mut req: http::Request<Body>,
    head_len: usize,
) -> std::io::Result<Answer> {
    // All of the head is in the socket's queue already: it was peeked.
    let mut head = vec![0u8; head_len];
    tcp.read_exact(&mut head).await?;
    drop(head);
    req.extensions_mut().insert(ConnectInfo(peer));
    let Ok(resp) = app.oneshot(req).await;
    let (parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let admitted = parts
            .extensions
            .get::<ws::Accepted>()
            .and_then(|a| a.take());
        let Some(admitted) = admitted else {
            return Err(std::io::Error::other(
                "switching protocols without a connection to run",
            ));
        };
        tcp.write_all(&response_head(&parts, Framing::Upgrade))
            .await?;
        return Ok(Answer::WebSocket(admitted));
    }
    let framing = if parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked,
        }
    };
    let head = response_head(&parts, framing);
    drop(parts);
    tcp.write_all(&head).await?;
    Ok(match framing {
        Framing::None => Answer::Done,
        f => Answer::Body(body, f == Framing::Chunked),
    })
}

/// What is left to do once the response head is written.
enum Answer {
    Body(Body, bool),
    Done,
    WebSocket(ws::Admitted),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (and no length).
    None,
    Length(u64),
    Chunked,
    /// 101: the connection speaks another protocol after the head.
    Upgrade,
}

/// Status line and headers of a response written by [`direct`]: the
/// handler's headers, a date, the body's framing, and `connection: close`.
fn response_head(parts: &http::response::Parts, framing: Framing) -> Vec<u8> {
    let mut h = Vec::with_capacity(256);
    let status = parts.status;
    // Writes into a Vec cannot fail.
    let _ = write!(
        h,
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if (name == header::CONNECTION && framing != Framing::Upgrade)
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        h.extend_from_slice(name.as_str().as_bytes());
        h.extend_from_slice(b": ");
        h.extend_from_slice(value.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        let _ = write!(
            h,
            "date: {}\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now())
        );
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            let _ = write!(h, "content-length: {n}\r\n");
        }
        Framing::Chunked => h.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Upgrade => {
            h.extend_from_slice(b"\r\n");
            return h;
        }
    }
    h.extend_from_slice(b"connection: close\r\n\r\n");
    h
}

/// Copies `body` to the socket (chunked when its length is unknown) until it
/// ends, the client goes away or a write fails. A chunk is asked for only
/// once the previous one was written, so a slow reader holds a position in
/// the hub, never a queue.
async fn pump(
    tcp: &mut TcpStream,
    body: &mut Body,
    chunked: bool,
    send_timeout: Duration,
) -> std::io::Result<()> {
    loop {
        // Polled by hand, not with `select!` over futures: the wait is what
        // an idle stream is doing, and this way it keeps no state at all.
        let data = match std::future::poll_fn(|cx| poll_next(tcp, body, cx)).await? {
            Next::Data(d) => d,
            Next::End => break,
            Next::ClientGone => return Ok(()),
        };
        // Boxed: what a write needs exists only while it is in flight.
        // A client that stops reading (stalled, or gone without a word)
        // must not hold its slot and its place in the hub forever.
        Box::pin(write_data(tcp, data, chunked, send_timeout)).await?;
    }
    if chunked {
        tcp.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

async fn write_data(
    tcp: &mut TcpStream,
    mut data: bytes::Bytes,
    chunked: bool,
    stall: Duration,
) -> std::io::Result<()> {
    if chunked {
        let size = format!("{:x}\r\n", data.len());
        let mut out = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
        super::write::write_all_progressing(tcp, &mut out, stall).await
    } else {
        super::write::write_all_progressing(tcp, &mut data, stall).await
    }
}

enum Next {
    Data(bytes::Bytes),
    End,
    ClientGone,
}

/// The next data of `body`; while there is none, watches the socket for the
/// client's close.
fn poll_next(
    tcp: &TcpStream,
    body: &mut Body,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<Next>> {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(None) => return Poll::Ready(Ok(Next::End)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(std::io::Error::other(e))),
            Poll::Ready(Some(Ok(f))) => match f.into_data() {
                Ok(d) if !d.is_empty() => return Poll::Ready(Ok(Next::Data(d))),
                // Trailers and empty frames carry nothing to write.
                _ => continue,
            },
            Poll::Pending => break,
        }
    }
    loop {
        match tcp.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                // Anything the client sends now (a pipelined request) gets
                // no answer: the stream has no end. Only its close matters.
                let mut scratch = [0u8; 64];
                match tcp.try_read(&mut scratch) {
                    Ok(0) => return Poll::Ready(Ok(Next::ClientGone)),
                    // Read again until the socket would block, which
                    // re-arms the readiness wake-up.
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }
}

/// Serves a connection with hyper (HTTP/1.1, upgrades for WebSockets).
/// Serves a connection with hyper. Its first head is still arriving:
/// `head` keeps it in the pending set (evicted: closed) until hyper has the
/// whole head, which must come within `head_timeout` (and every later head
/// on the connection within the server's head timeout).
async fn with_hyper(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    mut stop: watch::Receiver<bool>,
    head: HeadGuard,
    head_timeout: Duration,
) {
    let head = Arc::new(head);
    let first_head = head.clone();
    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        first_head.done();
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut asked_to_end = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::trace!(error = %e, %peer, "connection");
                }
                return;
            }
            _ = head.evicted() => return,
            _ = super::until_true(&mut stop), if !asked_to_end => {
                asked_to_end = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct_path(head: &str) -> Option<String> {
        direct_request(head.as_bytes()).map(|(r, n)| {
            assert_eq!(n, head.find("\r\n\r\n").map(|i| i + 4).unwrap_or(0));
            r.uri().to_string()
        })
    }

    use proptest::prelude::Strategy as _;

    proptest::proptest! {
        /// Any bytes, as the first read of a connection: a request or
        /// "hyper's turn", never a panic, and the head length fits.
        #[test]
        fn any_first_bytes_are_routed_without_panic(
            bytes in proptest::prop_oneof![
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
                "GET /(ws|sse|stream)[?a-z=&%0-9]{0,30} HTTP/1\\.[01]\r\n([A-Za-z-]{1,12}: [ -~]{0,20}\r\n){0,60}\r\n"
                    .prop_map(String::into_bytes),
            ]
        ) {
            let bytes: Vec<u8> = bytes;
            if let Some((_, n)) = direct_request(&bytes) {
                proptest::prop_assert!(n <= bytes.len());
            }
        }
    }

    #[test]
    fn only_whole_bodiless_http11_gets_of_stream_paths_are_answered_directly() {
        let ok = "GET /sse?file=a.log HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        assert_eq!(direct_path(ok).as_deref(), Some("/sse?file=a.log"));
        assert!(
            direct_path("GET /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").is_some()
        );
        let ws = "GET /ws?tail=1 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n";
        let (req, _) = direct_request(ws.as_bytes()).expect("a WebSocket upgrade");
        assert!(req.extensions().get::<ws::DirectUpgrade>().is_some());
        // Loki's tail is accepted the same way.
        let tail = "GET /loki/api/v1/tail?query=%7Ba%3D%22b%22%7D HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let (req, _) = direct_request(tail.as_bytes()).expect("a tail upgrade");
        assert!(req.extensions().get::<ws::DirectUpgrade>().is_some());
        for hyper in [
            "GET /sse HTTP/1.1\r\nHost: x\r\n",      // head not whole yet
            "GET /sse HTTP/1.0\r\nHost: x\r\n\r\n",  // no chunked encoding
            "HEAD /sse HTTP/1.1\r\nHost: x\r\n\r\n", // not GET
            "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",   // not an upgrade
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", // not WebSocket
            "GET /loki/api/v1/tail HTTP/1.1\r\nHost: x\r\n\r\n", // not an upgrade
            "GET /loki/api/v1/tailx HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", // other path
            "GET /sse HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", // upgrade
            "GET /sse HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", // a body
            "GET /sse HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", // a body
            "GET /sse HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", // expects an interim
            "GET /ssex HTTP/1.1\r\nHost: x\r\n\r\n", // other path
            "GET /sse HTTP/1.1\r\nBad Header\r\n\r\n", // invalid: hyper's 400
            "\x16\x03\x01\x02\x00",                  // TLS hello
        ] {
            assert_eq!(direct_path(hyper), None, "{hyper:?}");
        }
    }

    #[test]
    fn response_heads_frame_the_body_and_close() {
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .header("connection", "keep-alive")
            .body(())
            .expect("valid response");
        let (parts, ()) = resp.into_parts();
        let head = String::from_utf8(response_head(&parts, Framing::Chunked)).expect("ascii");
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(
            head.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{head}"
        );
        assert!(!head.contains("keep-alive"), "{head}");
        let head = String::from_utf8(response_head(&parts, Framing::Length(12))).expect("ascii");
        assert!(
            head.ends_with("content-length: 12\r\nconnection: close\r\n\r\n"),
            "{head}"
        );
    }
}
