//! `/tail`: Loki's live tail over WebSocket, one session on the hub per
//! client. Accepted like `/ws` (server/ws.rs): on the accept loop's direct
//! path when the request head allows, as a [`ws::Job`] on the socket, with
//! record frames written straight to it (no write buffer kept after a
//! burst).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Loki;
use super::params::{Params, bounds, limit};
use super::response::StreamOut;
use crate::filter::Filter;
use crate::hub::{Entry, format_ts, now_ns};
use crate::protocol::{Subscribe, close};
use crate::server::state::{AppState, ConnGuard};
use crate::server::stream::Next as Step;
use crate::server::ws::{self, DataSink};
use crate::session::{Pull, Session};
use logstream_logql::eval::{self, Labels, StreamCache};
use logstream_logql::{self as logql, LogQuery, LokiError, Query};

/// A parsed `/tail` request.
#[derive(Debug)]
pub struct TailRequest {
    pub query: Arc<LogQuery>,
    pub start_ns: i64,
    /// Most history lines replayed before live ones.
    pub limit: usize,
}

impl TailRequest {
    pub fn parse(p: &Params, now: i64, shared: &SharedQueries) -> Result<TailRequest, LokiError> {
        let query = shared.get_or_parse(p.get("query").unwrap_or(""))?;
        let (start_ns, _) = bounds(p, now)?;
        Ok(TailRequest {
            query,
            start_ns,
            limit: limit(p)?,
        })
    }
}

fn parse_log_query(text: &str) -> Result<LogQuery, LokiError> {
    match logql::parse(text)? {
        Query::Log(q) => Ok(q),
        Query::Metric(_) => Err(LokiError::Query("tail supports log queries only".into())),
    }
}

/// Most distinct queries [`SharedQueries`] keeps.
const MAX_SHARED_QUERIES: usize = 1024;

/// The compiled queries of the open tails, by query text, so tails that ask
/// the same thing (every Grafana panel live-tailing one selector) share one:
/// a compiled regex with its match caches is kilobytes to hundreds of
/// kilobytes, which an idle tail would otherwise hold for its whole life.
/// Weak entries (a query lives as long as a tail holds it), at most
/// [`MAX_SHARED_QUERIES`] of them: past that a query is compiled for its
/// tail alone, as if nothing were shared.
#[derive(Default)]
pub struct SharedQueries {
    map: Mutex<HashMap<Box<str>, Weak<LogQuery>>>,
}

impl SharedQueries {
    fn get_or_parse(&self, text: &str) -> Result<Arc<LogQuery>, LokiError> {
        if let Some(q) = self.lookup(text) {
            return Ok(q);
        }
        // Compiled outside the lock: a large regex takes a while.
        let q = Arc::new(parse_log_query(text)?);
        let Ok(mut map) = self.map.lock() else {
            return Ok(q);
        };
        if let Some(held) = map.get(text).and_then(Weak::upgrade) {
            return Ok(held);
        }
        if map.len() >= MAX_SHARED_QUERIES {
            map.retain(|_, w| w.strong_count() > 0);
        }
        if map.len() < MAX_SHARED_QUERIES {
            map.insert(text.into(), Arc::downgrade(&q));
        }
        Ok(q)
    }

    fn lookup(&self, text: &str) -> Option<Arc<LogQuery>> {
        self.map.lock().ok()?.get(text).and_then(Weak::upgrade)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

pub(super) async fn tail(
    State(lk): State<Loki>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    mut request: Request,
) -> Response {
    let st = lk.app.clone();
    if let Err(r) = st.check_origin(&headers) {
        return r;
    }
    let accept = match ws::handshake_accept(&headers) {
        Ok(a) => a,
        Err(r) => return r,
    };
    // A bad query is reported after the upgrade (close 1008 with the
    // reason): a refused handshake looks like 1006 to a browser, which
    // Grafana retries forever.
    let req = TailRequest::parse(&Params::parse(raw.as_deref(), &[]), now_ns(), &lk.tails);
    // Tails share the server's connection budget.
    let slot = st.try_connect(crate::metrics::Transport::ws);
    let job = Box::new(TailJob {
        st: st.clone(),
        req: Box::new(req),
        slot,
    });
    ws::switch(
        &st,
        &mut request,
        accept,
        ws::Admitted::job(st.clone(), job),
    )
}

/// One accepted tail, run on its socket.
struct TailJob {
    st: Arc<AppState>,
    req: Box<Result<TailRequest, LokiError>>,
    /// `None`: over the connection limit.
    slot: Option<ConnGuard>,
}

impl ws::Job for TailJob {
    fn run<'a>(
        self: Box<Self>,
        socket: &'a mut dyn ws::Socket,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let TailJob { st, req, slot } = *self;
            let (code, reason) = match (*req, slot) {
                (Err(e), _) => (close::POLICY, e.to_string()),
                (Ok(_), None) => (close::TRY_AGAIN_LATER, "connection limit reached".into()),
                (Ok(req), Some(_slot)) => {
                    let (code, reason) = run_tail(socket, &st, req).await;
                    (code, reason.to_string())
                }
            };
            let done = async {
                if code == 0 {
                    // The reply to a client's close frame is queued: flush it.
                    let _ = socket.close().await;
                } else {
                    let _ = socket.send(ws::close_msg(code, &reason)).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        })
    }
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

/// Runs the query over a batch. The stream verdicts are cached for the batch
/// only: an idle tail holds no labels.
fn process(q: &LogQuery, entries: &[Arc<Entry>], out: &mut Vec<(Arc<Labels>, i64, String)>) {
    let mut cache = StreamCache::default();
    for e in entries {
        let Some(base) = cache.selected(q, e) else {
            continue;
        };
        if let Some((line, changed)) = eval::run_pipeline(&q.pipeline, &base, &e.line, e.ts_ns) {
            out.push((changed.map_or(base, Arc::new), e.ts_ns, line.into_owned()));
        }
    }
}

/// How a tail ends: the close code and reason to send (code 0: the peer is
/// gone, send nothing).
type End = (u16, &'static str);

const PEER_GONE: End = (0, "");
const SHUTTING_DOWN: End = (close::GOING_AWAY, "server shutting down");

/// Streams a tail to one client: replays up to `limit` matching lines since
/// `start`, then live ones, pinging on the server's shared clock. Counts
/// what it sends, its gaps and why it drops a client as the other streams
/// do. Returns the close code and reason to send.
///
/// Shaped like the WebSocket stream's loop (server/ws.rs): every send is
/// boxed while in flight and the wait polls the socket by hand, so an idle
/// tail holds only what it waits on.
pub async fn run_tail<S, E>(ws: &mut S, st: &Arc<AppState>, req: TailRequest) -> End
where
    S: Sink<Message> + Stream<Item = Result<Message, E>> + DataSink + Unpin + ?Sized,
    E: std::error::Error + 'static,
{
    let Some(mut t) = Tail::new(ws, st, &req) else {
        return (close::POLICY, "bad start time");
    };
    if let Err(end) = Box::pin(t.replay(req.limit)).await {
        return end;
    }
    match t.live().await {
        Err(end) => end,
    }
}

/// One client's tail: its session on the hub (boxed: an idle tail holds a
/// pointer), its query (shared with the tails that asked the same) and the
/// socket.
struct Tail<'a, S: ?Sized> {
    session: Box<Session>,
    query: Arc<LogQuery>,
    st: &'a Arc<AppState>,
    ws: &'a mut S,
}

impl<'a, S, E> Tail<'a, S>
where
    S: Sink<Message> + Stream<Item = Result<Message, E>> + DataSink + Unpin + ?Sized,
    E: std::error::Error + 'static,
{
    fn new(ws: &'a mut S, st: &'a Arc<AppState>, req: &TailRequest) -> Option<Self> {
        let sub = Subscribe {
            since: Some(format_ts(req.start_ns)),
            ..Default::default()
        };
        let filter = Filter::compile(&sub).ok()?;
        Some(Tail {
            session: Box::new(Session::new(st.hub.clone(), &sub, filter, st.cfg.session)),
            query: req.query.clone(),
            st,
            ws,
        })
    }

    /// Sends the newest `limit` matches among what the hub held at connect
    /// time; ends the tail if the hub has ended.
    async fn replay(&mut self, limit: usize) -> Result<(), End> {
        let (rows, ended) = self.history(limit);
        if !rows.is_empty() {
            self.send_rows(&rows).await?;
        }
        if ended {
            return Err(SHUTTING_DOWN);
        }
        Ok(())
    }

    /// The newest `limit` matches among what the hub held at connect time,
    /// and whether the hub has ended.
    fn history(&mut self, limit: usize) -> (Vec<(Arc<Labels>, i64, String)>, bool) {
        let replay_end = self.st.hub.head().next_idx;
        let mut replay: VecDeque<(Arc<Labels>, i64, String)> = VecDeque::new();
        let mut rows = Vec::new();
        loop {
            match self.session.pull() {
                Pull::Batch { entries, more } => {
                    process(&self.query, &entries, &mut rows);
                    for r in rows.drain(..) {
                        replay.push_back(r);
                        if replay.len() > limit {
                            replay.pop_front();
                        }
                    }
                    if !more || entries.last().is_some_and(|e| e.idx + 1 >= replay_end) {
                        return (replay.into(), false);
                    }
                }
                Pull::Gap { .. } => {}
                Pull::TooSlow | Pull::Idle => return (replay.into(), false),
                Pull::Ended => return (replay.into(), true),
            }
        }
    }

    async fn ping(&mut self) -> Result<(), End> {
        let send = self.ws.send(Message::Ping(Bytes::new()));
        match tokio::time::timeout(self.st.cfg.send_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(PEER_GONE),
            Err(_) => {
                self.st.metrics.dropped("send_timeout");
                Err(PEER_GONE)
            }
        }
    }

    /// A frame of rows, counted as the other transports count theirs,
    /// written straight to the socket.
    async fn send_rows(&mut self, rows: &[(Arc<Labels>, i64, String)]) -> Result<(), End> {
        let frame = tail_frame(rows);
        (self.st.metrics).sent(crate::metrics::Transport::ws, rows.len(), frame.len());
        match self.ws.send_text(frame, self.st).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    self.st.metrics.dropped("send_timeout");
                }
                Err(PEER_GONE)
            }
        }
    }

    /// Sends what the session has now; `Ok` once it is idle. A server that
    /// drains closes the hub once its files are read: the tail ends when
    /// everything before that was sent.
    async fn flush(&mut self) -> Result<(), End> {
        let mut rows = Vec::new();
        loop {
            match crate::server::stream::next(&mut self.session, self.st) {
                Step::Records(entries) => {
                    process(&self.query, &entries, &mut rows);
                    if !rows.is_empty() {
                        self.send_rows(&rows).await?;
                        rows.clear();
                    }
                }
                // Loki's tail has no gap message: the client sees the
                // missing lines as a jump in time; the metrics count it.
                Step::Gap { .. } => {}
                Step::TooSlow => return Err((close::POLICY, "slow consumer")),
                Step::Idle => return Ok(()),
                Step::Drained(_) | Step::Reconnect(_) => return Err(SHUTTING_DOWN),
            }
        }
    }

    /// Live lines until the client, the server or a limit ends the tail.
    async fn live(&mut self) -> Result<std::convert::Infallible, End> {
        let st = self.st;
        let mut head = st.hub.watch();
        // Pings follow the server's shared clock (server/listen.rs), which
        // wakes the hub's waiters on every tick; so does a drain.
        let mut pinged = st.ping_epoch.load(std::sync::atomic::Ordering::Relaxed);
        let mut last_heard = Instant::now();
        loop {
            head.borrow_and_update();
            Box::pin(self.flush()).await?;
            let woke = tokio::select! {
                changed = head.changed() => Ok(changed),
                msg = self.ws.next() => Err(msg),
            };
            match woke {
                Ok(changed) => {
                    changed.map_err(|_| SHUTTING_DOWN)?;
                    let epoch = st.ping_epoch.load(std::sync::atomic::Ordering::Relaxed);
                    if epoch != pinged {
                        pinged = epoch;
                        if last_heard.elapsed() >= st.cfg.pong_timeout {
                            st.metrics.dropped("pong_timeout");
                            return Err((close::POLICY, "no pong"));
                        }
                        Box::pin(self.ping()).await?;
                    }
                }
                Err(msg) => {
                    last_heard = Instant::now();
                    match msg {
                        // The close code tells the client what it did; the
                        // metric counts it as the WebSocket stream does.
                        Some(Err(e)) => {
                            return Err(match crate::server::ws::violation_close(&e) {
                                Some((code, reason, counted)) => {
                                    st.metrics.dropped(counted);
                                    (code, reason)
                                }
                                None => PEER_GONE,
                            });
                        }
                        None | Some(Ok(Message::Close(_))) => return Err(PEER_GONE),
                        Some(Ok(_)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;

    fn p(q: &str) -> Params {
        Params::parse(Some(q), &[])
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
    }

    #[test]
    fn tails_of_one_query_share_it_while_one_holds_it() {
        let shared = SharedQueries::default();
        let q = "query=%7Bfile%3D~%22a.%2B%22%7D";
        let a = TailRequest::parse(&p(q), 0, &shared).unwrap();
        let b = TailRequest::parse(&p(q), 0, &shared).unwrap();
        assert!(Arc::ptr_eq(&a.query, &b.query));
        let other = TailRequest::parse(&p("query=%7Bfile%3D%22b%22%7D"), 0, &shared).unwrap();
        assert!(!Arc::ptr_eq(&a.query, &other.query));
        drop((a, b));
        let c = TailRequest::parse(&p(q), 0, &shared).unwrap();
        assert_eq!(
            Arc::strong_count(&c.query),
            1,
            "a new compile once no tail held it"
        );
        // Bad queries are refused, not kept.
        let bad = TailRequest::parse(&p("query=%7Bfile%3D"), 0, &shared);
        assert!(matches!(bad, Err(LokiError::Parse(_))), "{bad:?}");
        let metric = TailRequest::parse(
            &p("query=count_over_time(%7Ba%3D%22b%22%7D%5B1m%5D)"),
            0,
            &shared,
        );
        assert!(matches!(metric, Err(LokiError::Query(_))), "{metric:?}");
    }

    #[test]
    fn shared_queries_stay_bounded_and_forget_the_dead() {
        let shared = SharedQueries::default();
        let held: Vec<_> = (0..MAX_SHARED_QUERIES + 10)
            .map(|i| {
                TailRequest::parse(&p(&format!("query=%7Bf%3D%22{i}%22%7D")), 0, &shared).unwrap()
            })
            .collect();
        assert_eq!(shared.len(), MAX_SHARED_QUERIES);
        // Past the bound a query still works, compiled for its tail alone.
        assert!(held.iter().all(|r| r.query.matchers.len() == 1));
        drop(held);
        let _one = TailRequest::parse(&p("query=%7Bf%3D%22new%22%7D"), 0, &shared).unwrap();
        assert_eq!(
            shared.len(),
            1,
            "dead entries pruned when the table was full"
        );
    }

    /// What an idle tail's task holds is mostly this future: a send or a
    /// batch in flight is boxed (regression: 896 bytes with the flush, a
    /// drain timer and the start-up locals inline; ~1 KB more per idle tail
    /// than a `/ws` client, see bench/RESULTS.md).
    #[test]
    fn an_idle_tail_holds_a_small_future() {
        use futures::channel::mpsc;
        let hub = Hub::new(
            crate::hub::HubLimits {
                max_lines: 10,
                max_bytes: 1 << 20,
            },
            "t",
        );
        let st = AppState::for_tests(hub, crate::server::ServerConfig::default());
        let req = TailRequest::parse(&p("query=%7Ba%3D%22b%22%7D"), 0, &SharedQueries::default())
            .unwrap();
        let mut socket = crate::server::ws::testing::Duplex {
            tx: mpsc::channel::<Message>(1).0,
            rx: mpsc::channel::<Result<Message, std::io::Error>>(1).1,
        };
        let f = run_tail(&mut socket, &st, req);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 384, "run_tail's future is {size} bytes");
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
            &SharedQueries::default(),
        )
        .unwrap();
        let (server_tx, mut client_rx) = mpsc::channel::<Message>(16);
        let (mut client_tx, server_rx) = mpsc::channel::<Result<Message, std::io::Error>>(16);
        let task = tokio::spawn(async move {
            let mut socket = crate::server::ws::testing::Duplex {
                tx: server_tx,
                rx: server_rx,
            };
            run_tail(&mut socket, &st, req).await
        });
        let next_text = async |rx: &mut mpsc::Receiver<Message>| -> serde_json::Value {
            serde_json::from_str(&crate::server::ws::testing::next_text(rx).await).unwrap()
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
