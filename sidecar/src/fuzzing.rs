//! Entry points of the coverage-guided fuzz targets (`fuzz/`, built with
//! AFL++ through `cargo afl`) and of the replay of their corpora in every
//! `cargo test`. Each takes arbitrary bytes from the outside world (a
//! client's request head and frames, a query string, a LogQL query, a log
//! file's bytes) and must return without panicking, hanging or breaking an
//! invariant; a panic is what the fuzzer reports as a crash.
//!
//! Not part of the API: hidden from the documentation and free to change.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http;
use futures::StreamExt;
use tower::ServiceExt;

use crate::filter::Filter;
use crate::hub::{Hub, HubLimits, Pending, SourceInfo, now_ns};
use crate::lines::{Line, LineSplitter};
use crate::metrics::Transport;
use crate::parse::{ParseMode, detect_level};
use crate::protocol::{ClientMessage, Level, Source, Subscribe};
use crate::server::{AppState, ServerConfig};
use crate::session::{Session, SessionLimits};

/// A small history every target that needs a server reads: two files of a
/// pod, plain, JSON and logfmt lines at several levels.
fn state() -> &'static Arc<AppState> {
    static STATE: OnceLock<Arc<AppState>> = OnceLock::new();
    STATE.get_or_init(|| {
        let hub = Hub::new(
            HubLimits {
                max_lines: 1000,
                max_bytes: 1 << 20,
            },
            "fuzz",
        );
        for (file, lines) in [
            (
                "app.log",
                &[
                    "2026-12-04T10:00:00Z INFO started port=8080",
                    r#"{"level":"error","msg":"payment failed","code":502,"user":"a"}"#,
                    "level=warn msg=\"slow query\" duration=1.5s table=orders",
                ][..],
            ),
            (
                "sub/worker.log",
                &[
                    "DEBUG tick 1",
                    "Exception in thread main",
                    "    at Foo.bar(Foo.java:3)",
                ][..],
            ),
        ] {
            let info: Arc<SourceInfo> = hub.source(Source {
                namespace: "shop".into(),
                pod: "web-0".into(),
                container: "app".into(),
                file: file.into(),
                service: String::new(),
            });
            hub.publish(
                lines
                    .iter()
                    .map(|l| Pending {
                        source: info.clone(),
                        seq: info.next_seq(),
                        ts_ns: now_ns(),
                        level: detect_level(l, ParseMode::Auto, None),
                        line: (*l).to_string(),
                        partial: false,
                        split: None,
                    })
                    .collect(),
            );
        }
        let (_ready_tx, ready) = tokio::sync::watch::channel(true);
        let (_drain_tx, draining) = tokio::sync::watch::channel(false);
        let cfg = ServerConfig {
            max_message_bytes: 4 << 10,
            ..ServerConfig::default()
        };
        AppState::new(
            hub,
            Arc::new(crate::metrics::Metrics::new()),
            cfg,
            ready,
            draining,
            None,
        )
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    })
}

/// Longest one input may take; past it the target panics, so a hang is
/// reported like a crash.
const PATIENCE: Duration = Duration::from_secs(2);

/// A request head as a client sends it: parsed by the accept loop's own
/// parser (the direct streaming paths and the WebSocket handshake) and, when
/// it is a request at all, answered by the whole router (access checks,
/// query parameters, filters, the Loki API and its LogQL).
pub fn request_head(data: &[u8]) {
    let _ = crate::server::is_stream_request(data);
    let direct = crate::server::direct_request(data);
    let req = match direct {
        Some((req, len)) => {
            assert!(len <= data.len(), "head longer than its bytes");
            req
        }
        None => match any_request(data) {
            Some(r) => r,
            None => return,
        },
    };
    // Built once: a router is cheap to clone, not to build.
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    let app = ROUTER
        .get_or_init(|| crate::server::router(state().clone()))
        .clone();
    runtime().block_on(async {
        let mut req = req;
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))));
        let answer = tokio::time::timeout(PATIENCE, app.oneshot(req)).await;
        let Ok(Ok(resp)) = answer else {
            panic!("the router did not answer in time");
        };
        // A streaming answer never ends: its first frame, if ready, is enough.
        let mut body = resp.into_body().into_data_stream();
        let _ = futures::FutureExt::now_or_never(body.next());
    });
}

/// Any request `httparse` accepts, as hyper would hand it to the router.
fn any_request(data: &[u8]) -> Option<http::Request<axum::body::Body>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(data) else {
        return None;
    };
    let mut b = http::Request::builder()
        .method(parsed.method?)
        .uri(parsed.path?);
    for h in parsed.headers.iter() {
        b = b.header(h.name, h.value);
    }
    b.body(axum::body::Body::from(data[len..].to_vec())).ok()
}

/// Bytes a client sends after its WebSocket handshake, read by the server's
/// real WebSocket session until they end or it closes the connection.
pub fn websocket_frames(data: &[u8]) {
    let st = state().clone();
    runtime().block_on(async {
        let (server_io, client_io) = tokio::io::duplex(64 << 10);
        let Some(socket) = crate::server::ws::socket(server_io, &st) else {
            panic!("no WebSocket over a duplex");
        };
        websocket_session(st, socket, client_io, data).await;
    });
}

/// [`websocket_frames`] on a connection that negotiated permessage-deflate:
/// the bytes pass the server's inflating layer first (compressed
/// messages, fragments, bombs).
pub fn websocket_deflate_frames(data: &[u8]) {
    let st = state().clone();
    runtime().block_on(async {
        let (server_io, client_io) = tokio::io::duplex(64 << 10);
        let io = crate::server::ws::Inflating::new(server_io, st.cfg.max_message_bytes);
        let Some(socket) = crate::server::ws::socket(io, &st) else {
            panic!("no WebSocket over a duplex");
        };
        websocket_session(st, socket, client_io, data).await;
    });
}

async fn websocket_session<T>(
    st: Arc<AppState>,
    mut socket: tokio_tungstenite::WebSocketStream<T>,
    mut client_io: tokio::io::DuplexStream,
    data: &[u8],
) where
    T: crate::server::ws::Wire,
{
    let Some(guard) = st.try_connect(Transport::ws) else {
        panic!("connection limit in a fuzz run");
    };
    let sub = Subscribe {
        tail: Some(10),
        ..Subscribe::default()
    };
    let filter = Filter::compile(&sub).expect("the default filter compiles");
    let mut session = Session::new(st.hub.clone(), &sub, filter, SessionLimits::default());
    let client = async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut rx, mut tx) = tokio::io::split(&mut client_io);
        let send = async {
            let _ = tx.write_all(data).await;
            let _ = tx.shutdown().await;
        };
        let drain = async {
            let mut sink = vec![0u8; 16 << 10];
            while matches!(rx.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::join!(send, drain);
    };
    let server = async move {
        crate::server::ws::serve(&mut socket, &st, &mut session, &guard).await;
        drop(socket);
    };
    let both = async { tokio::join!(server, client) };
    if tokio::time::timeout(PATIENCE, both).await.is_err() {
        panic!("the WebSocket session did not end after the client's bytes");
    }
}

/// A client message (a WebSocket text frame's payload): parsed, and a
/// subscription compiled into a filter and positioned on the history.
pub fn client_message(data: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<ClientMessage>(data) else {
        return;
    };
    if let ClientMessage::Subscribe(sub) = msg {
        subscribe(&sub);
    }
}

/// A stream's query string (`/ws?…`, `/sse?…`): parsed, compiled and
/// positioned; a refusal must say what is wrong.
pub fn stream_query(data: &[u8]) {
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    match crate::server::parse_query(Some(q)) {
        Ok(query) => subscribe(&query.sub),
        Err(e) => assert!(!e.to_string().is_empty(), "an empty error"),
    }
}

fn subscribe(sub: &Subscribe) {
    let Ok(filter) = Filter::compile(sub) else {
        return;
    };
    let hub = state().hub.clone();
    let mut session = Session::new(hub, sub, filter, SessionLimits::default());
    for _ in 0..4 {
        if matches!(
            session.pull(),
            crate::session::Pull::Idle | crate::session::Pull::Ended
        ) {
            break;
        }
    }
    let _ = session.cursor().to_string();
}

/// A LogQL query as Grafana sends it: parsed as a query and as a selector.
pub fn logql(data: &[u8]) {
    use logstream_logql::eval::{self, Direction, Steps};
    use logstream_logql::{Query, drilldown};
    let Ok(q) = std::str::from_utf8(data) else {
        return;
    };
    let _ = logstream_logql::parse_selector(q);
    // What parses is evaluated over the shared history: every stage and
    // function (unwrap, patterns, label_replace, topk...) on real lines.
    let entries: Vec<Arc<crate::hub::Entry>> = {
        let ring = state().hub.lock();
        ring.iter_from(ring.first_idx()).cloned().collect()
    };
    let now = now_ns();
    match logstream_logql::parse(q) {
        Ok(Query::Log(lq)) => {
            let _ = eval::log_query(&lq, &entries, 0, now + 1, 100, Direction::Backward);
        }
        Ok(Query::Metric(m)) => {
            let steps = Steps {
                start: now - 60_000_000_000,
                step: 15_000_000_000,
                count: 5,
            };
            let _ = eval::metric_query(&m, &entries, &steps);
        }
        Err(_) => {}
    }
    // The input as log lines, through what the Logs Drilldown endpoints run.
    let lines: Vec<&str> = q.lines().collect();
    let _ = drilldown::detect_fields(lines.iter().copied(), 100);
    let mut patterns = drilldown::Patterns::new(1_000_000_000);
    for (i, l) in lines.iter().enumerate() {
        patterns.add(i as i64 * 500_000_000, "info", l);
    }
    let _ = patterns.finish();
}

/// A log file's bytes, cut into reads at sizes the input chooses: the
/// splitter keeps every byte once (as text or a replacement), never cuts a
/// part over its limit, and every line's level is read in every mode.
pub fn file_bytes(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let max_line = 16 + usize::from(first);
    let mut splitter = LineSplitter::new(max_line);
    let mut out: Vec<Line> = Vec::new();
    let mut input = rest;
    let mut step = 1 + usize::from(first % 7);
    while !input.is_empty() {
        let n = step.min(input.len());
        splitter.push(&input[..n], &mut out);
        input = &input[n..];
        step = step * 3 % 97 + 1;
    }
    splitter.flush(&mut out);
    assert_eq!(splitter.pending(), 0, "a flush leaves nothing pending");
    for line in &out {
        assert!(
            !line.text.contains('\n'),
            "a line holds a newline: {:?}",
            line.text
        );
        // Each input byte becomes at most one U+FFFD (3 bytes) of text.
        assert!(
            line.text.len() <= 3 * max_line.max(16),
            "a part of {} bytes over a limit of {max_line}",
            line.text.len()
        );
        for mode in [
            ParseMode::Auto,
            ParseMode::Json,
            ParseMode::Logfmt,
            ParseMode::Plain,
        ] {
            let _ = detect_level(&line.text, mode, None);
            let _ = detect_level(&line.text, mode, Some("severity"));
        }
        let _ = Level::parse_loose(&line.text);
    }
}

/// Bytes as blocks of the history on disk (what start-up and queries read
/// back from segment files): a damaged block is an error, never a panic or
/// an allocation the header asks for. Input starting with `SEED` is first
/// made into a valid block (its bytes as lines) and, when its last byte is
/// a control byte, damaged at the place that byte names, so mutations start
/// from real blocks.
pub fn history_block(data: &[u8]) {
    use crate::history::block::{self, Input, StoredRecord};
    let made;
    let bytes: &[u8] = match data.strip_prefix(b"SEED") {
        Some(rest) => {
            let text = String::from_utf8_lossy(rest);
            let source = crate::protocol::Source {
                namespace: "ns".into(),
                pod: "p".into(),
                container: "c".into(),
                file: "f.log".into(),
                service: String::new(),
            };
            let inputs: Vec<Input<'_>> = text
                .split('\n')
                .enumerate()
                .map(|(i, line)| Input {
                    record: StoredRecord {
                        pos: i as u64,
                        sid: crate::protocol::SourceId(1 + (i % 3) as u64),
                        seq: i as u64 + 1,
                        ts_ns: (i as i64) * 1_000 - (line.len() as i64),
                        level: crate::protocol::Level::ALL.get(line.len() % 7).copied(),
                        partial: i % 2 == 0,
                        split: None,
                    },
                    source: &source,
                    line,
                })
                .collect();
            let Ok(mut b) = block::encode(&inputs, 1, &mut Vec::new()) else {
                return;
            };
            let n = b.len().max(1);
            if let Some(&at) = rest.last()
                && at < 0x20
                && let Some(byte) = b.get_mut(usize::from(at) * 7 % n)
            {
                *byte ^= at | 1;
            }
            made = b;
            &made
        }
        None => data,
    };
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(len) = block::header_len(rest) else {
            return;
        };
        let Some(head) = rest.get(..len) else {
            return;
        };
        let Ok(h) = block::parse_header(head) else {
            return;
        };
        let sources: Vec<_> = h.sources.iter().cloned().map(std::sync::Arc::new).collect();
        let end = len.saturating_add(h.payload_len as usize).min(rest.len());
        let payload = rest.get(len..end).unwrap_or(&[]);
        for lines in [false, true] {
            if let Ok(d) = block::decode(&h, sources.clone(), payload, lines) {
                for i in 0..d.len() {
                    let _ = (d.record(i), d.line(i), d.source(i), d.level(i));
                }
                let _ = d.record_at(d.lines.len() / 2);
            }
        }
        rest = rest.get(end..).unwrap_or(&[]);
    }
}

/// A fuzz target: arbitrary bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, for the fuzz binaries and the corpus replay.
pub const TARGETS: [(&str, Target); 8] = [
    ("request_head", request_head),
    ("websocket_frames", websocket_frames),
    ("websocket_deflate_frames", websocket_deflate_frames),
    ("client_message", client_message),
    ("stream_query", stream_query),
    ("logql", logql),
    ("file_bytes", file_bytes),
    ("history_block", history_block),
];
