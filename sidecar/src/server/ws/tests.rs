//! The WebSocket logic driven through channels instead of a socket.
use super::*;
use crate::hub::tests::{publish_lines, small_hub, src};
use crate::hub::{Hub, Pending};
use crate::protocol::Subscribe;
use crate::server::ServerConfig;
use futures::channel::mpsc;

fn state(hub: &Arc<Hub>) -> Arc<AppState> {
    AppState::for_tests(hub.clone(), ServerConfig::default())
}

use super::testing::Duplex;

/// Serves one connection over channels on its own task.
fn spawn_serve(
    st: &Arc<AppState>,
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Result<Message, std::io::Error>>,
    mut session: Session,
) -> tokio::task::JoinHandle<End> {
    let st = st.clone();
    let guard = st.try_connect(Transport::ws).unwrap();
    tokio::spawn(async move {
        let mut socket = Duplex { tx, rx };
        serve(&mut socket, &st, &mut session, &guard).await
    })
}

/// One unfiltered connection served on its own task: what the client sends,
/// what it receives, the task.
fn serve_unfiltered(
    st: &Arc<AppState>,
) -> (
    mpsc::Sender<Result<Message, std::io::Error>>,
    mpsc::Receiver<Message>,
    tokio::task::JoinHandle<End>,
) {
    let (server_tx, client_rx) = mpsc::channel::<Message>(16);
    let (client_tx, server_rx) = mpsc::channel::<Result<Message, std::io::Error>>(16);
    let sub = Subscribe::default();
    let session = Session::new(
        st.hub.clone(),
        &sub,
        Filter::compile(&sub).unwrap(),
        st.cfg.session,
    );
    (
        client_tx,
        client_rx,
        spawn_serve(st, server_tx, server_rx, session),
    )
}

async fn recv(rx: &mut mpsc::Receiver<Message>) -> ServerMessage {
    serde_json::from_str(&super::testing::next_text(rx).await).unwrap()
}

#[tokio::test]
async fn subscribe_records_errors_and_drain_over_channels() {
    let hub = small_hub();
    let a = hub.source(src("a.log"));
    let st = state(&hub);
    let (mut client_tx, mut client_rx, task) = serve_unfiltered(&st);

    assert!(matches!(
        recv(&mut client_rx).await,
        ServerMessage::Hello { .. }
    ));
    publish_lines(&hub, &a, &["one", "two"]);
    match recv(&mut client_rx).await {
        ServerMessage::Records {
            records, cursor, ..
        } => {
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
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), close::GOING_AWAY),
        other => panic!("{other:?}"),
    }
    assert_eq!(st.connections(), 0, "the connection slot is released");
}

#[tokio::test]
async fn an_ack_that_does_not_cover_the_end_does_not_finish_the_drain() {
    let hub = small_hub();
    let a = hub.source(src("a.log"));
    let cfg = ServerConfig {
        ack_timeout: Duration::from_millis(50),
        ..ServerConfig::default()
    };
    let st = AppState::for_tests(hub.clone(), cfg);
    let (mut client_tx, mut client_rx, task) = serve_unfiltered(&st);
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

#[test]
fn close_reasons_are_cut_at_a_character_boundary_within_123_bytes() {
    let Message::Close(Some(f)) = close_msg(1008, &"é".repeat(100)) else {
        panic!("a close frame")
    };
    assert_eq!(u16::from(f.code), 1008);
    assert_eq!(f.reason.as_str(), "é".repeat(61));
}

/// What an idle stream's task holds is mostly this future (the session and
/// the sends are boxed). Regression: a job branch in it (Loki's tail) made it
/// 32 bytes larger, and the task crossed an allocator size class: ~240 bytes
/// more per idle `/ws` connection (bench/RESULTS.md, ls-idle).
#[tokio::test]
async fn an_idle_streams_task_future_stays_small() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, _) = l.accept().await.unwrap();
    let st = AppState::for_tests(crate::hub::tests::small_hub(), ServerConfig::default());
    let mut socket = socket(tcp, &st).unwrap();
    // The loop itself is boxed apart, and so is the session: each stays
    // within its allocator size class (448 and 224 bytes) — watermark
    // state once grew the loop by 96 bytes, 192 per idle connection.
    {
        let sub = Subscribe::default();
        let f = Filter::compile(&sub).unwrap();
        let mut session = Session::new(st.hub.clone(), &sub, f, st.cfg.session);
        let run = run(&mut socket, &st, &mut session);
        let size = std::mem::size_of_val(&run);
        assert!(size <= 448, "the stream loop's future is {size} bytes");
    }
    let session = std::mem::size_of::<Session>();
    assert!(session <= 224, "a session is {session} bytes");
    let mut admitted = Admitted::refused(st.clone());
    let task = async move { run_admitted(&mut socket, &mut admitted).await };
    let size = std::mem::size_of_val(&task);
    assert!(size <= 400, "the stream task's future is {size} bytes");

    // A connection that negotiated compression: no bigger a task, and
    // the boxed inflating layer holds no frame state while idle.
    let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, _) = l.accept().await.unwrap();
    let mut zsocket = super::socket(Box::new(Inflating::new(tcp, 1 << 16)), &st).unwrap();
    let mut admitted = Admitted::refused(st.clone());
    let task = async move { run_admitted(&mut zsocket, &mut admitted).await };
    let deflating = std::mem::size_of_val(&task);
    assert!(
        deflating <= size,
        "a compressed connection's task future is {deflating} bytes (plain: {size})"
    );
    let layer = std::mem::size_of::<Inflating<tokio::net::TcpStream>>();
    assert!(layer <= 80, "the inflating layer is {layer} bytes");
}

/// A client frame carrying `payload` deflated (RSV1 set), as a
/// compressing browser sends it.
fn compressed_frame(text: &[u8]) -> Message {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let payload = crate::server::compress::deflate(text, 6).message();
    let mut f = Frame::message(payload, OpCode::Data(Data::Text), true);
    f.header_mut().rsv1 = true;
    Message::Frame(f)
}

#[tokio::test]
async fn a_compressing_client_is_read_and_sent_compressed_batches() {
    let hub = small_hub();
    let a = hub.source(src("a.log"));
    let lines: Vec<String> = (0..50)
        .map(|i| format!("line {i} of the history"))
        .collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    publish_lines(&hub, &a, &refs);
    let st = state(&hub);
    let (server_io, client_io) = tokio::io::duplex(1 << 20);
    let socket = super::socket(Inflating::new(server_io, st.cfg.max_message_bytes), &st).unwrap();
    let sub = Subscribe {
        tail: Some(0),
        ..Subscribe::default()
    };
    let session = Session::new(
        hub.clone(),
        &sub,
        Filter::compile(&sub).unwrap(),
        st.cfg.session,
    );
    let guard = st.try_connect(Transport::ws).unwrap();
    let served = {
        let st = st.clone();
        tokio::spawn(async move {
            let (mut socket, mut session) = (socket, session);
            serve(&mut socket, &st, &mut session, &guard).await
        })
    };
    // The client end inflates what the server compresses.
    let mut client = WebSocketStream::from_raw_socket(
        Inflating::client(client_io, 1 << 20, false),
        Role::Client,
        None,
    )
    .await;
    match client.next().await {
        Some(Ok(Message::Text(t))) => assert!(t.as_str().contains(r#""type":"hello""#), "{t}"),
        other => panic!("{other:?}"),
    }
    client
        .send(compressed_frame(br#"{"type":"subscribe","tail":50}"#))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 50 {
        match client.next().await {
            Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()).unwrap() {
                ServerMessage::Subscribed { .. } => {}
                ServerMessage::Records { records, .. } => {
                    got.extend(records.into_iter().map(|r| r.line));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, lines);
    let compressed = st
        .metrics
        .compressions
        .get_or_create(&crate::metrics::ResultLabel { result: "miss" })
        .get();
    assert_eq!(compressed, 1, "the history went as one compressed batch");

    // A message that inflates past the limit closes the connection (1009).
    client
        .send(compressed_frame(&vec![b' '; 1 << 20]))
        .await
        .unwrap();
    let close = loop {
        match client.next().await {
            Some(Ok(Message::Close(c))) => break c,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(close::TOO_BIG));
    assert_eq!(served.await.unwrap(), End::TooBig);
}

/// Protocol 1.1: a `watermark` is answered after the records held, and
/// nothing published later carries an earlier time — even a line read
/// (stamped) before the watermark was given.
#[tokio::test]
async fn a_watermark_comes_after_the_records_and_bounds_what_follows() {
    let hub = small_hub();
    let a = hub.source(src("a.log"));
    let st = state(&hub);
    let (mut client_tx, mut client_rx, task) = serve_unfiltered(&st);
    match recv(&mut client_rx).await {
        ServerMessage::Hello {
            minor, features, ..
        } => {
            assert_eq!(minor, crate::protocol::PROTOCOL_MINOR);
            assert_eq!(features, ["watermarks"]);
        }
        other => panic!("{other:?}"),
    }
    publish_lines(&hub, &a, &["one"]);
    let one = match recv(&mut client_rx).await {
        ServerMessage::Records { records, .. } => crate::hub::parse_ts(&records[0].ts).unwrap(),
        other => panic!("{other:?}"),
    };
    client_tx
        .send(Ok(Message::text(r#"{"type":"watermark"}"#)))
        .await
        .unwrap();
    let mark = match recv(&mut client_rx).await {
        ServerMessage::Watermark { ts, cursor } => {
            assert_eq!(cursor.get(a.sid), 1);
            crate::hub::parse_ts(&ts).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert!(mark >= one);
    // Read at time 0, published after the watermark.
    hub.publish(vec![Pending {
        seq: a.next_seq(),
        source: a.clone(),
        ts_ns: 0,
        level: None,
        line: "late".into(),
        partial: false,
        split: None,
    }]);
    match recv(&mut client_rx).await {
        ServerMessage::Records {
            records, watermark, ..
        } => {
            assert_eq!(records[0].line, "late");
            let ts = crate::hub::parse_ts(&records[0].ts).unwrap();
            assert!(ts >= mark);
            // Once asked, a batch that reaches the head carries one unasked.
            let next = crate::hub::parse_ts(&watermark.expect("a watermark")).unwrap();
            assert!(next >= ts);
        }
        other => panic!("{other:?}"),
    }
    task.abort();
}

/// An aggregator passes its upstreams' times on and cannot promise one.
#[tokio::test]
async fn an_aggregator_refuses_a_watermark_request_and_lists_no_feature() {
    let hub = small_hub();
    let cfg = ServerConfig {
        role: "aggregator".into(),
        ..ServerConfig::default()
    };
    let st = AppState::for_tests(hub.clone(), cfg);
    let (mut client_tx, mut client_rx, task) = serve_unfiltered(&st);
    match recv(&mut client_rx).await {
        ServerMessage::Hello { features, .. } => assert!(features.is_empty()),
        other => panic!("{other:?}"),
    }
    client_tx
        .send(Ok(Message::text(r#"{"type":"watermark"}"#)))
        .await
        .unwrap();
    match recv(&mut client_rx).await {
        ServerMessage::Error { code, message } => {
            assert_eq!(code, "unsupported");
            assert!(message.contains("an aggregator"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    task.abort();
}
