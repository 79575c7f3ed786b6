//! The WebSocket logic driven through channels instead of a socket.
use super::*;
use crate::hub::Hub;
use crate::hub::tests::{publish_lines, small_hub, src};
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

async fn recv(rx: &mut mpsc::Receiver<Message>) -> ServerMessage {
    serde_json::from_str(&super::testing::next_text(rx).await).unwrap()
}

#[tokio::test]
async fn subscribe_records_errors_and_drain_over_channels() {
    let hub = small_hub();
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
    let task = spawn_serve(&st, server_tx, server_rx, session);

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
    let (server_tx, mut client_rx) = mpsc::channel::<Message>(16);
    let (mut client_tx, server_rx) = mpsc::channel::<Result<Message, std::io::Error>>(16);
    let sub = Subscribe::default();
    let session = Session::new(
        hub.clone(),
        &sub,
        Filter::compile(&sub).unwrap(),
        st.cfg.session,
    );
    let task = spawn_serve(&st, server_tx, server_rx, session);
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
    let mut admitted = Admitted::refused(st.clone());
    let task = async move { run_admitted(&mut socket, &mut admitted).await };
    let size = std::mem::size_of_val(&task);
    assert!(size <= 400, "the stream task's future is {size} bytes");
}
