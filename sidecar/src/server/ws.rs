//! The WebSocket transport. [`serve`] is generic over the socket halves so
//! tests can drive it with channels.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::time::Instant;

use super::frame;
use super::{AppState, ConnGuard, admit_stream};
use crate::filter::Filter;
use crate::metrics::{ReasonLabel, Transport};
use crate::protocol::{ClientMessage, Cursor, Format, PROTOCOL_VERSION, ServerMessage, close};
use crate::session::{Pull, Session};

pub async fn handler(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    peer: ConnectInfo<std::net::SocketAddr>,
    raw: RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let q = match admit_stream(&st, &headers, peer, raw).await {
        Ok(q) => q,
        Err(r) => return r,
    };
    let buf = st.cfg.ws_buffer_bytes;
    let ws = ws
        .read_buffer_size(buf)
        .write_buffer_size(buf)
        .max_write_buffer_size(buf + st.cfg.session.batch_bytes * 2 + st.cfg.max_message_bytes)
        .max_message_size(st.cfg.max_message_bytes)
        // A frame somewhat over the limit is read whole, so the client gets
        // our 1009 close instead of a reset on unread data; beyond that it is
        // refused from its header alone.
        .max_frame_size(st.cfg.max_message_bytes.saturating_mul(4).max(64 << 10));
    let guard = st.try_connect(Transport::ws);
    let tracker = st.sessions.clone();
    ws.on_upgrade(move |socket: WebSocket| {
        tracker.track_future(async move {
            let (mut tx, rx) = socket.split();
            let Some(guard) = guard else {
                let _ = tx
                    .send(close_msg(
                        close::TRY_AGAIN_LATER,
                        "connection limit reached",
                    ))
                    .await;
                return;
            };
            let session = Session::new(st.hub.clone(), &q.sub, q.filter, st.cfg.session);
            serve(tx, rx, st, session, guard).await;
        })
    })
}

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason.to_string()),
    }))
}

fn text(s: String) -> Message {
    Message::Text(Utf8Bytes::from(s))
}

/// Why a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    Drained,
    DrainTimeout,
    TooSlow,
    TooBig,
    SendFailed,
    SendTimeout,
    PeerSilent,
}

/// Runs one WebSocket client to the end.
pub async fn serve<W, R, E>(
    mut tx: W,
    mut rx: R,
    st: Arc<AppState>,
    mut session: Session,
    _guard: ConnGuard,
) -> End
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let end = run(&mut tx, &mut rx, &st, &mut session).await;
    tracing::debug!(?end, "websocket session ended");
    let (code, reason, dropped) = match end {
        End::ClientClosed => (None, "", None),
        End::Drained | End::DrainTimeout => (Some(close::GOING_AWAY), "server shutting down", None),
        End::TooSlow => (Some(close::POLICY), "slow consumer", Some("slow_client")),
        End::TooBig => (
            Some(close::TOO_BIG),
            "message too big",
            Some("message_too_big"),
        ),
        End::SendFailed => (None, "", None),
        End::SendTimeout => (None, "", Some("send_timeout")),
        End::PeerSilent => (Some(close::POLICY), "no pong", Some("pong_timeout")),
    };
    if let Some(reason) = dropped {
        st.metrics
            .clients_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }
    if let Some(code) = code {
        let send = tx.send(close_msg(code, reason));
        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
        // Closing handshake with a responsive peer: wait briefly for its
        // close so it reads ours before the socket goes away.
        let responsive = matches!(end, End::TooBig | End::Drained);
        if responsive {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Some(Ok(m)) = rx.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
    end
}

async fn run<W, R, E>(tx: &mut W, rx: &mut R, st: &Arc<AppState>, session: &mut Session) -> End
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    let cfg = &st.cfg;
    let metrics = &st.metrics;
    let send_timeout = cfg.send_timeout;
    macro_rules! send {
        ($msg:expr) => {
            match tokio::time::timeout(send_timeout, tx.send($msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return End::SendFailed,
                Err(_) => return End::SendTimeout,
            }
        };
    }
    let hello = ServerMessage::Hello {
        version: PROTOCOL_VERSION,
        server: format!("logstream/{}", env!("CARGO_PKG_VERSION")),
        role: cfg.role.clone(),
        cursor: session.cursor(),
    };
    send!(text(render(&hello, session.filter.format)));
    let mut head = st.hub.watch();
    let mut draining_rx = st.draining.clone();
    let reconnect = |cfg: &super::ServerConfig| ServerMessage::Reconnect {
        after_ms: cfg.reconnect_after_ms(),
        reason: "server shutting down; resume elsewhere with your cursor".into(),
    };
    let already_draining = *draining_rx.borrow();
    if cfg.reconnect_on_drain && already_draining {
        send!(text(render(&reconnect(cfg), session.filter.format)));
        return End::Drained;
    }
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping_interval, cfg.ping_interval);
    let mut last_heard = Instant::now();
    let mut draining: Option<(Cursor, Instant)> = None;
    loop {
        if draining.is_none() {
            head.borrow_and_update();
            loop {
                match session.pull() {
                    Pull::Batch { entries, more } => {
                        if !entries.is_empty() {
                            let bytes: usize;
                            let msg = match session.filter.format {
                                Format::Json => {
                                    let s = frame::records_json(&entries, &session.cursor());
                                    bytes = s.len();
                                    text(s)
                                }
                                Format::Raw => {
                                    let s = frame::raw_lines(&entries);
                                    bytes = s.len();
                                    text(s)
                                }
                            };
                            send!(msg);
                            metrics.sent(Transport::ws, entries.len(), bytes);
                        }
                        // Even at the head, pull once more: only Idle or Ended
                        // may end this loop, or a close seen before the
                        // wake-up above would be missed (regression: a drain
                        // waited for the next ping).
                        let _ = more;
                    }
                    Pull::Gap {
                        missed,
                        reason,
                        cursor,
                    } => {
                        metrics.gap(reason, missed);
                        let m = ServerMessage::Gap {
                            missed,
                            reason,
                            cursor,
                        };
                        send!(text(render(&m, session.filter.format)));
                    }
                    Pull::TooSlow => return End::TooSlow,
                    Pull::Idle => break,
                    Pull::Ended => {
                        let cursor = session.cursor();
                        let m = ServerMessage::Draining {
                            cursor: cursor.clone(),
                        };
                        send!(text(render(&m, session.filter.format)));
                        draining = Some((cursor, Instant::now() + cfg.ack_timeout));
                        break;
                    }
                }
            }
        }
        let drain_deadline = draining.as_ref().map(|(_, d)| *d);
        tokio::select! {
            changed = head.changed(), if draining.is_none() => {
                if changed.is_err() {
                    // The hub is gone: nothing more will come.
                    return End::Drained;
                }
            }
            msg = rx.next() => {
                last_heard = Instant::now();
                let msg = match msg {
                    None => return End::ClientClosed,
                    Some(Err(e)) => {
                        return if is_capacity(&e) { End::TooBig } else { End::ClientClosed };
                    }
                    Some(Ok(m)) => m,
                };
                match msg {
                    Message::Text(t) => match serde_json::from_str::<ClientMessage>(t.as_str()) {
                        Ok(ClientMessage::Subscribe(sub)) => match Filter::compile(&sub) {
                            Ok(f) => {
                                session.resubscribe(&sub, f);
                                send!(text(frame::message(&ServerMessage::Subscribed { cursor: session.cursor() })));
                            }
                            Err(e) => {
                                metrics.client_errors.inc();
                                send!(text(frame::message(&ServerMessage::Error { code: "bad_filter".into(), message: e.to_string() })));
                            }
                        },
                        Ok(ClientMessage::Ack { cursor }) => {
                            if let Some((want, _)) = &draining
                                && want.0.iter().all(|(sid, seq)| cursor.covers(*sid, *seq))
                            {
                                return End::Drained;
                            }
                        }
                        Ok(ClientMessage::Ping) => send!(text(frame::message(&ServerMessage::Pong))),
                        Err(e) => {
                            metrics.client_errors.inc();
                            send!(text(frame::message(&ServerMessage::Error { code: "bad_message".into(), message: e.to_string() })));
                        }
                    },
                    Message::Binary(_) => {
                        metrics.client_errors.inc();
                        send!(text(frame::message(&ServerMessage::Error {
                            code: "bad_message".into(),
                            message: "binary frames are not part of the protocol; send JSON text".into(),
                        })));
                    }
                    Message::Close(_) => return End::ClientClosed,
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= cfg.pong_timeout {
                    return End::PeerSilent;
                }
                send!(Message::Ping(bytes::Bytes::new()));
            }
            _ = sleep_until_opt(drain_deadline) => return End::DrainTimeout,
            _ = super::until_true(&mut draining_rx), if cfg.reconnect_on_drain => {
                send!(text(render(&reconnect(cfg), session.filter.format)));
                return End::Drained;
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn render(m: &ServerMessage, f: Format) -> String {
    match f {
        Format::Json => frame::message(m),
        Format::Raw => frame::raw_notice(m),
    }
}

fn is_capacity<E: std::error::Error + 'static>(e: &E) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            return matches!(t, tokio_tungstenite::tungstenite::Error::Capacity(_));
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    //! The WebSocket logic driven through channels instead of a socket.
    use super::*;
    use crate::hub::tests::{publish_lines, src};
    use crate::hub::{Hub, HubLimits};
    use crate::protocol::Subscribe;
    use crate::server::ServerConfig;
    use futures::channel::mpsc;

    fn state(hub: &Arc<Hub>) -> Arc<AppState> {
        AppState::for_tests(hub.clone(), ServerConfig::default())
    }

    async fn recv(rx: &mut mpsc::Receiver<Message>) -> ServerMessage {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.next())
                .await
                .unwrap()
                .unwrap()
            {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn subscribe_records_errors_and_drain_over_channels() {
        let hub = Hub::new(
            HubLimits {
                max_lines: 100,
                max_bytes: 1 << 20,
            },
            "t",
        );
        let a = hub.source(src("a.log"));
        let st = state(&hub);
        let (server_tx, mut client_rx) = mpsc::channel::<Message>(16);
        let (mut client_tx, server_rx) = mpsc::channel::<Result<Message, std::io::Error>>(16);
        let sub = Subscribe::default();
        let session = Session::new(
            hub.clone(),
            &sub,
            Filter::compile(&sub).unwrap(),
            st.cfg.session,
        );
        let guard = st.try_connect(Transport::ws).unwrap();
        let task = tokio::spawn(serve(server_tx, server_rx, st.clone(), session, guard));

        assert!(matches!(
            recv(&mut client_rx).await,
            ServerMessage::Hello { .. }
        ));
        publish_lines(&hub, &a, &["one", "two"]);
        match recv(&mut client_rx).await {
            ServerMessage::Records { records, cursor } => {
                assert_eq!(
                    records.iter().map(|r| r.line.as_str()).collect::<Vec<_>>(),
                    ["one", "two"]
                );
                assert_eq!(cursor.get(a.sid), 2);
            }
            other => panic!("{other:?}"),
        }
        client_tx.send(Ok(Message::text("{oops"))).await.unwrap();
        assert!(matches!(
            recv(&mut client_rx).await,
            ServerMessage::Error { .. }
        ));
        client_tx
            .send(Ok(Message::text(r#"{"type":"subscribe","grep":"^t"}"#)))
            .await
            .unwrap();
        assert!(matches!(
            recv(&mut client_rx).await,
            ServerMessage::Subscribed { .. }
        ));
        publish_lines(&hub, &a, &["nope", "three"]);
        match recv(&mut client_rx).await {
            ServerMessage::Records { records, .. } => assert_eq!(records[0].line, "three"),
            other => panic!("{other:?}"),
        }
        assert_eq!(st.connections(), 1);
        hub.close();
        let cursor = match recv(&mut client_rx).await {
            ServerMessage::Draining { cursor } => cursor,
            other => panic!("{other:?}"),
        };
        assert_eq!(cursor.get(a.sid), 4);
        client_tx
            .send(Ok(Message::text(
                serde_json::to_string(&ClientMessage::Ack { cursor }).unwrap(),
            )))
            .await
            .unwrap();
        assert_eq!(task.await.unwrap(), End::Drained);
        match client_rx.next().await {
            Some(Message::Close(Some(f))) => assert_eq!(f.code, close::GOING_AWAY),
            other => panic!("{other:?}"),
        }
        assert_eq!(st.connections(), 0, "the connection slot is released");
    }

    #[tokio::test]
    async fn an_ack_that_does_not_cover_the_end_does_not_finish_the_drain() {
        let hub = Hub::new(
            HubLimits {
                max_lines: 100,
                max_bytes: 1 << 20,
            },
            "t",
        );
        let a = hub.source(src("a.log"));
        let cfg = ServerConfig {
            ack_timeout: Duration::from_millis(50),
            ..ServerConfig::default()
        };
        let st = AppState::for_tests(hub.clone(), cfg);
        let (server_tx, mut client_rx) = mpsc::channel::<Message>(16);
        let (mut client_tx, server_rx) = mpsc::channel::<Result<Message, std::io::Error>>(16);
        let sub = Subscribe::default();
        let session = Session::new(
            hub.clone(),
            &sub,
            Filter::compile(&sub).unwrap(),
            st.cfg.session,
        );
        let guard = st.try_connect(Transport::ws).unwrap();
        let task = tokio::spawn(serve(server_tx, server_rx, st.clone(), session, guard));
        recv(&mut client_rx).await;
        publish_lines(&hub, &a, &["x", "y"]);
        recv(&mut client_rx).await;
        hub.close();
        assert!(matches!(
            recv(&mut client_rx).await,
            ServerMessage::Draining { .. }
        ));
        let mut stale = Cursor::default();
        stale.advance(a.sid, 1);
        client_tx
            .send(Ok(Message::text(
                serde_json::to_string(&ClientMessage::Ack { cursor: stale }).unwrap(),
            )))
            .await
            .unwrap();
        assert_eq!(task.await.unwrap(), End::DrainTimeout);
    }
}
