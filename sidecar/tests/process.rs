//! Process tests: the real binary, real files, real sockets, real clients
//! (our Rust client, curl, websocat), real signals.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use common::{PATIENCE, Server, hello, http_get, http_request, opts, records, tool};
use futures::{SinkExt, StreamExt};
use logstream::client::{ClientOptions, Connection};
use logstream::protocol::{
    ClientMessage, GapReason, Record, ServerMessage, SplitPart, Subscribe, close,
};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn lines(recs: &[Record]) -> Vec<String> {
    recs.iter().map(|r| r.line.clone()).collect()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("{prefix} {i}\n")).collect()
}

fn expect_numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} {i}")).collect()
}

#[tokio::test]
async fn live_lines_then_resume_without_gap_or_duplicate() {
    let s = Server::start(&[]);
    s.append("app.log", "before the client\n");
    let mut c = Connection::open(
        &opts(
            &s,
            Subscribe {
                tail: Some(10),
                ..Default::default()
            },
        ),
        None,
    )
    .await
    .unwrap();
    hello(&mut c).await;
    let (r, _) = records(&mut c, 1).await;
    assert_eq!(r[0].line, "before the client");
    assert_eq!(r[0].seq, 1);
    assert_eq!(r[0].source.file, "app.log");
    s.append("app.log", &numbered("live", 0..100));
    let (r, _) = records(&mut c, 100).await;
    assert_eq!(lines(&r), expect_numbered("live", 0..100));
    let seqs: Vec<u64> = r.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (2..102).collect::<Vec<_>>());
    let cursor = c.cursor.clone();
    drop(c);
    // Written while nobody listens.
    s.append("app.log", &numbered("missed", 0..50));
    s.append("other.log", "another file\n");
    s.wait_metric("logstream_lines_read_total", 152.0);
    let mut c = Connection::open(&opts(&s, Subscribe::default()), Some(&cursor))
        .await
        .unwrap();
    hello(&mut c).await;
    let (r, other) = records(&mut c, 51).await;
    let mut got = lines(&r);
    got.sort();
    let mut want = expect_numbered("missed", 0..50);
    want.push("another file".into());
    want.sort();
    assert_eq!(got, want);
    assert!(other.is_empty(), "{other:?}");
}

#[tokio::test]
async fn filters_and_raw_format_and_subscribe_message() {
    // No clock ticks: only the publishes a session's filter takes may wake
    // it (a session still waiting on its old filter's wake class after a
    // resubscribe would never see the new file's lines).
    let s = Server::start(&["--ping-interval", "1h", "--keepalive", "1h"]);
    let sub = Subscribe {
        level: Some("warn+".into()),
        file: Some("a*.log".into()),
        ..Default::default()
    };
    let mut c = Connection::open(&opts(&s, sub), None).await.unwrap();
    hello(&mut c).await;
    s.append(
        "app.log",
        "INFO fine\nWARN careful\n{\"level\":\"error\",\"msg\":\"bad\"}\n",
    );
    s.append("zzz.log", "ERROR other file\n");
    let (r, _) = records(&mut c, 2).await;
    assert_eq!(
        lines(&r),
        ["WARN careful", r#"{"level":"error","msg":"bad"}"#]
    );
    // Change filters on the fly.
    let resubscribe = async |c: &mut Connection, sub: Subscribe| {
        c.send(&ClientMessage::Subscribe(sub)).await.unwrap();
        loop {
            if let Some(ServerMessage::Subscribed { .. }) = c.next().await.unwrap() {
                break;
            }
        }
    };
    let grep = Subscribe {
        grep: Some("^z+$".into()),
        ..Default::default()
    };
    resubscribe(&mut c, grep).await;
    s.append("zzz.log", "no\nzzz\n");
    let (r, _) = records(&mut c, 1).await;
    assert_eq!(r[0].line, "zzz");
    assert_eq!(r[0].source.file, "zzz.log");
    // From every file to one, then to another.
    for file in ["b.log", "c.log"] {
        let one = Subscribe {
            file: Some(file.into()),
            ..Default::default()
        };
        resubscribe(&mut c, one).await;
        s.append(file, &format!("in {file}\n"));
        let (r, _) = records(&mut c, 1).await;
        assert_eq!(r[0].line, format!("in {file}"));
    }
}

#[tokio::test]
async fn malformed_messages_get_error_frames_and_the_connection_survives() {
    let s = Server::start(&[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    let next_json = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| -> serde_json::Value {
        loop {
            match tokio::time::timeout(PATIENCE, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
            {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                _ => continue,
            }
        }
    };
    assert_eq!(next_json(&mut ws).await["type"], "hello");
    for bad in [
        "not json",
        r#"{"type":"nope"}"#,
        r#"{"type":"subscribe","grep":"("}"#,
        "\u{0}\u{1}",
    ] {
        ws.send(Message::text(bad)).await.unwrap();
        let m = next_json(&mut ws).await;
        assert_eq!(m["type"], "error", "{bad}: {m}");
        assert!(!m["message"].as_str().unwrap().is_empty());
    }
    ws.send(Message::binary(vec![0xff, 0x00, 0xfe]))
        .await
        .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "error");
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    assert!(s.metric("logstream_client_errors_total").unwrap() >= 5.0);
}

#[tokio::test]
async fn oversized_client_message_is_closed_with_1009() {
    let s = Server::start(&["--max-message-bytes", "1024"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    ws.send(Message::text("x".repeat(4096))).await.unwrap();
    let code = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(Some(f)) = m {
                return Some(u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(code, Some(close::TOO_BIG));
    s.wait_ready(); // and the server lives on
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let s = Server::start(&[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
        Some(Ok(Message::Text(t))) => assert!(t.contains("\"hello\""), "{t}"),
        other => panic!("expected hello, got {other:?}"),
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    // The server's reply completes the closing handshake; without it the
    // client reads EOF (1006 in browsers and k6).
    let mut got_close = false;
    while let Some(m) = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
        match m {
            Ok(Message::Close(_)) => got_close = true,
            Ok(_) => {}
            Err(e) => panic!("no close reply before the connection ended: {e}"),
        }
    }
    assert!(got_close, "the server answered the close");
}

#[tokio::test]
async fn connection_limit_closes_1013_and_answers_503() {
    let s = Server::start(&["--max-connections", "1"]);
    let mut first = Connection::open(&opts(&s, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut first).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), close::TRY_AGAIN_LATER),
        other => panic!("expected close 1013, got {other:?}"),
    }
    let (code, _) = http_get(&s.addr, "/stream").unwrap();
    assert_eq!(code, 503);
    assert!(
        s.metric("logstream_connections_rejected_total{reason=\"connection_limit\"}")
            .unwrap()
            >= 2.0
    );
    // The first client still streams.
    s.append("app.log", "still here\n");
    let (r, _) = records(&mut first, 1).await;
    assert_eq!(r[0].line, "still here");
}

#[tokio::test]
async fn token_auth_and_origin_checks_happen_before_the_upgrade() {
    let s = Server::start(&["--token", "s3cret", "--no-loopback-exemption"]);
    let (code, _) = http_get(&s.addr, "/stream").unwrap();
    assert_eq!(code, 401);
    let ws_req = |extra: &str| {
        format!(
            "GET /ws{extra} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            s.addr
        )
    };
    let (code, _) = http_request(&s.addr, &format!("{}\r\n", ws_req(""))).unwrap();
    assert_eq!(code, 401, "upgrade without token must be refused");
    let (code, _) = http_request(
        &s.addr,
        &format!("{}Authorization: Bearer wrong\r\n\r\n", ws_req("")),
    )
    .unwrap();
    assert_eq!(code, 401);
    let (code, _) = http_request(
        &s.addr,
        &format!(
            "{}Authorization: Bearer s3cret\r\nOrigin: http://evil.example\r\n\r\n",
            ws_req("")
        ),
    )
    .unwrap();
    assert_eq!(code, 403, "foreign origin must be refused");
    let mut c = Connection::open(
        &ClientOptions {
            base: s.url(""),
            sub: Subscribe::default(),
            token: Some("s3cret".into()),
        },
        None,
    )
    .await
    .unwrap();
    hello(&mut c).await;
    // Browsers cannot set headers: the token may ride in the query.
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws?access_token=s3cret"))
        .await
        .unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
}

#[test]
fn loopback_only_without_token() {
    // No token configured: loopback clients are served, others would get 403.
    let s = Server::start(&[]);
    let (code, _) = http_get(&s.addr, "/healthz").unwrap();
    assert_eq!(code, 200);
    let (code, body) = http_get(&s.addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("logstream_lines_read_total"), "{body}");
    assert!(
        body.contains(
            r#"logstream_http_request_duration_seconds_count{path="/healthz",code="200"} 1"#
        ),
        "{body}"
    );
}

#[tokio::test]
async fn slow_client_gets_a_gap_and_does_not_slow_the_others() {
    let s = Server::start(&["--client-queue-bytes", "65536", "--slow-client-grace", "0s"]);
    let mut fast = Connection::open(&opts(&s, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut fast).await;
    // A client with a tiny receive buffer that does not read.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(s.addr.parse().unwrap()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(s.ws_url("/ws"), tcp)
        .await
        .unwrap();
    assert!(matches!(slow.next().await, Some(Ok(Message::Text(_)))));
    // Lockstep: the fast client is never more than one step behind.
    let (steps, per_step) = (200, 100);
    for step in 0..steps {
        s.append(
            "app.log",
            &numbered(&format!("{step:03} {}", "x".repeat(300)), 0..per_step),
        );
        let (r, other) = records(&mut fast, per_step).await;
        assert_eq!(r.len(), per_step);
        assert!(
            other.is_empty(),
            "the fast client must not see gaps: {other:?}"
        );
    }
    let total = (steps * per_step) as u64;
    // Now the slow client reads: it must be told what it missed.
    let mut seen_gap = None;
    let mut got = 0u64;
    tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(m)) = slow.next().await {
            if let Message::Text(t) = m {
                match serde_json::from_str::<ServerMessage>(t.as_str()).unwrap() {
                    ServerMessage::Gap { missed, reason, .. } => {
                        assert_eq!(reason, GapReason::SlowClient);
                        *seen_gap.get_or_insert(0) += missed;
                    }
                    ServerMessage::Records { records, .. } => got += records.len() as u64,
                    _ => {}
                }
                if got + seen_gap.unwrap_or(0) >= total {
                    break;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("slow client: gap {seen_gap:?}, {got} records"));
    let missed = seen_gap.expect("a gap notice");
    assert!(missed > 0);
    assert_eq!(
        missed + got,
        total,
        "every record is either delivered or counted as missed"
    );
    assert!(
        s.metric("logstream_gaps_total{reason=\"slow_client\"}")
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn silent_peer_is_dropped_after_pong_timeout() {
    let s = Server::start(&["--ping-interval", "50ms", "--pong-timeout", "200ms"]);
    // Connected but never polled: it cannot answer pings.
    let (_ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    s.wait_metric(
        "logstream_clients_dropped_total{reason=\"pong_timeout\"}",
        1.0,
    );
    assert_eq!(s.metric("logstream_clients{transport=\"ws\"}"), Some(0.0));
}

/// A client that answers pings stays connected past many pong timeouts.
#[tokio::test]
async fn responsive_peer_outlives_the_pong_timeout() {
    let s = Server::start(&["--ping-interval", "50ms", "--pong-timeout", "120ms"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    // Reading answers each ping; ten pings span over four pong timeouts.
    let mut pings = 0;
    while pings < 10 {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(_)) => {}
            other => panic!("dropped after {pings} pings: {other:?}"),
        }
    }
    assert_eq!(s.metric("logstream_clients{transport=\"ws\"}"), Some(1.0));
    assert_eq!(
        s.metric("logstream_clients_dropped_total{reason=\"pong_timeout\"}"),
        None
    );
}

#[tokio::test]
async fn rotation_truncation_partial_and_hostile_bytes_live() {
    let s = Server::start(&["--partial-timeout", "100ms", "--max-line-bytes", "1000"]);
    let mut c = Connection::open(&opts(&s, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut c).await;
    s.append("app.log", &numbered("a", 0..10));
    let (r, _) = records(&mut c, 10).await;
    assert_eq!(lines(&r), expect_numbered("a", 0..10));
    // Rename rotation: the old file's late lines, then the new file's.
    std::fs::rename(s.dir.join("app.log"), s.dir.join("app.log.1")).unwrap();
    s.append("app.log.1", "late line in the old file\n");
    s.append("app.log", &numbered("b", 0..10));
    let (r, _) = records(&mut c, 11).await;
    let got = lines(&r);
    assert!(
        got.contains(&"late line in the old file".to_string()),
        "{got:?}"
    );
    let mut b: Vec<_> = got.into_iter().filter(|l| l.starts_with("b ")).collect();
    b.dedup();
    assert_eq!(b, expect_numbered("b", 0..10));
    // copytruncate.
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.dir.join("app.log"))
        .unwrap()
        .set_len(0)
        .unwrap();
    s.append("app.log", "after truncate\n");
    let (r, _) = records(&mut c, 1).await;
    assert_eq!(r[0].line, "after truncate");
    // A partial line is flushed after the timeout, marked.
    s.append("app.log", "no newline yet");
    let (r, _) = records(&mut c, 1).await;
    assert_eq!(r[0].line, "no newline yet");
    assert!(r[0].partial);
    // Invalid UTF-8, NULs and an oversized line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(s.dir.join("app.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"\nbad \xff\xfe utf8\n\x00\x01\x02\n").unwrap();
    std::io::Write::write_all(&mut f, format!("{}\n", "y".repeat(2500)).as_bytes()).unwrap();
    let (r, _) = records(&mut c, 6).await;
    assert_eq!(
        r[0].line, "",
        "the newline ending the partial line gives an empty line"
    );
    assert_eq!(r[1].line, "bad \u{FFFD}\u{FFFD} utf8");
    assert_eq!(r[2].line, "\u{0}\u{1}\u{2}");
    assert_eq!(r[3].split, Some(SplitPart::First));
    assert_eq!(r[4].split, Some(SplitPart::Middle));
    assert_eq!(r[5].split, Some(SplitPart::Last));
    assert_eq!(r[3..].iter().map(|r| r.line.len()).sum::<usize>(), 2500);
    s.wait_ready();
}

/// Spawns a line-reading child process; lines arrive on the channel.
fn spawn_lines(cmd: &mut Command) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn client");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let l = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("timed out; saw {seen:?}"));
        let done = pred(&l);
        seen.push(l);
        if done {
            return seen;
        }
    }
}

#[test]
fn curl_reads_sse_and_resumes_with_last_event_id() {
    let s = Server::start(&[]);
    let curl = tool("curl");
    let (mut child, rx) = spawn_lines(Command::new(&curl).args(["-sN", &s.url("/sse")]));
    wait_line(&rx, |l| l.starts_with("event: hello"));
    s.append("app.log", &numbered("sse", 0..5));
    let seen = wait_line(&rx, |l| l.contains("sse 4"));
    let data: Vec<Record> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| !d.contains(r#""type":"hello""#))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(lines(&data), expect_numbered("sse", 0..5));
    let id = seen
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an id")
        .to_string();
    child.kill().unwrap();
    let _ = child.wait();
    s.append("app.log", &numbered("after", 0..3));
    let (mut child, rx) = spawn_lines(Command::new(&curl).args([
        "-sN",
        "-H",
        &format!("Last-Event-ID: {id}"),
        &s.url("/sse"),
    ]));
    let seen = wait_line(&rx, |l| l.contains("after 2"));
    let data: Vec<String> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Record>(d).ok())
        .map(|r| r.line)
        .collect();
    assert_eq!(
        data,
        expect_numbered("after", 0..3),
        "resume must repeat nothing and miss nothing"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

/// Reads an HTTP/1.1 response head from `r`: its lines, lower-cased.
fn read_head(r: &mut impl BufRead) -> Vec<String> {
    let mut head = Vec::new();
    loop {
        let mut l = String::new();
        assert!(
            r.read_line(&mut l).unwrap() > 0,
            "closed in the head: {head:?}"
        );
        let l = l.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            return head;
        }
        head.push(l);
    }
}

/// Reads body lines until one equals `want`; returns those seen.
fn read_until_line(r: &mut impl BufRead, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        assert!(
            r.read_line(&mut l).unwrap() > 0,
            "closed before {want:?}: {seen:?}"
        );
        let l = l.trim_end().to_string();
        if l == want {
            return seen;
        }
        seen.push(l);
    }
}

/// An event stream whose request head arrives whole is written without
/// hyper (server/listen.rs); one whose head does not fit the peek goes to
/// hyper. Both stream the same lines, and a client that goes away frees
/// its slot without the server writing to it first.
#[test]
fn sse_streams_with_or_without_hyper_and_a_leaving_client_frees_its_slot() {
    use std::io::Write;
    // No keep-alive write could find the closed socket: the close itself must be seen.
    let s = Server::start(&["--keepalive", "1h"]);
    let head = |pad: usize| {
        format!(
            "GET /sse?format=raw HTTP/1.1\r\nHost: {}\r\nX-Pad: {}\r\n\r\n",
            s.addr,
            "p".repeat(pad)
        )
    };
    let mut clients = Vec::new();
    // Small head: the direct writer. A head over 4 KiB: hyper.
    for pad in [1, 6000] {
        let mut tcp = std::net::TcpStream::connect(&s.addr).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        tcp.write_all(head(pad).as_bytes()).unwrap();
        let mut r = BufReader::new(tcp);
        let h = read_head(&mut r);
        assert_eq!(h[0], "http/1.1 200 ok", "{h:?}");
        assert!(
            h.contains(&"content-type: text/event-stream".to_string()),
            "{h:?}"
        );
        assert!(
            h.contains(&"transfer-encoding: chunked".to_string()),
            "{h:?}"
        );
        let hello = read_until_line(&mut r, "");
        assert!(hello.iter().any(|l| l == "event: hello"), "{hello:?}");
        clients.push(r);
    }
    s.append("app.log", "to both\n");
    for r in &mut clients {
        let seen = read_until_line(r, "data: to both");
        assert!(seen.iter().all(|l| !l.starts_with("data:")), "{seen:?}");
    }
    let sse = "logstream_clients{transport=\"sse\"}";
    assert_eq!(s.metric(sse), Some(2.0));
    drop(clients);
    s.wait_metric_eq(sse, 0.0);
}

/// A WebSocket upgrade whose head fits the peek is answered by the accept
/// loop on its own socket; one that does not (a 6 KB header here) through
/// hyper's upgrade. Both stream the same lines and free their slot on close.
#[tokio::test]
async fn websocket_streams_with_or_without_hyper() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let s = Server::start(&[]);
    let mut clients = Vec::new();
    for pad in [1, 6000] {
        let mut req = s.ws_url("/ws?format=raw").into_client_request().unwrap();
        req.headers_mut()
            .insert("x-pad", "p".repeat(pad).parse().unwrap());
        let (c, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        clients.push(c);
    }
    s.append("app.log", "to both\n");
    for c in &mut clients {
        loop {
            match tokio::time::timeout(PATIENCE, c.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) if t.contains("to both") => break,
                Some(Ok(_)) => continue,
                other => panic!("stream ended: {other:?}"),
            }
        }
    }
    let ws = "logstream_clients{transport=\"ws\"}";
    assert_eq!(s.metric(ws), Some(2.0));
    drop(clients);
    s.wait_metric_eq(ws, 0.0);
}

/// Record batches are framed by the server itself (ws.rs `DataSink`): frames
/// of every length form (7-bit, 16-bit, 64-bit) reach a standard client
/// intact, between the control frames tungstenite writes.
#[tokio::test]
async fn websocket_data_frames_of_every_length_form_arrive_intact() {
    let s = Server::start(&["--max-line-bytes", "200000"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws?format=raw"))
        .await
        .unwrap();
    for len in [10usize, 300, 70_000] {
        let line = "y".repeat(len);
        s.append("app.log", &format!("{line}\n"));
        loop {
            match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) if t.starts_with('y') => {
                    assert_eq!(t.as_str(), line, "a {len}-byte line");
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("stream ended: {other:?}"),
            }
        }
    }
    // The connection still speaks the protocol both ways afterwards.
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.contains("pong") => break,
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

/// A client that stops reading its event stream (stalled, or gone without a
/// word) is dropped after --send-timeout instead of holding its slot.
#[tokio::test]
async fn a_stalled_sse_client_is_dropped_after_the_send_timeout() {
    use tokio::io::AsyncWriteExt;
    let s = Server::start(&["--send-timeout", "300ms"]);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window, so the server's writes block soon.
    sock.set_recv_buffer_size(4096).unwrap();
    let mut tcp = sock.connect(s.addr.parse().unwrap()).await.unwrap();
    let head = format!("GET /sse?format=raw HTTP/1.1\r\nHost: {}\r\n\r\n", s.addr);
    tcp.write_all(head.as_bytes()).await.unwrap();
    let sse = "logstream_clients{transport=\"sse\"}";
    s.wait_metric(sse, 1.0);
    // Never read: 16 MB of lines fill every buffer between us and the server.
    let mb = format!("{}\n", "x".repeat(999)).repeat(1000);
    for _ in 0..16 {
        s.append("app.log", &mb);
    }
    s.wait_metric(
        "logstream_clients_dropped_total{reason=\"send_timeout\"}",
        1.0,
    );
    assert_eq!(s.metric(sse), Some(0.0));
    drop(tcp);
}

/// On SIGTERM a directly written event stream ends with its `draining`
/// event and a well-formed end of body (curl fails on a cut chunked body).
#[test]
fn sse_ends_cleanly_on_sigterm() {
    let mut s = Server::start(&[]);
    let (mut child, rx) = spawn_lines(Command::new(tool("curl")).args(["-sSN", &s.url("/sse")]));
    wait_line(&rx, |l| l.starts_with("event: hello"));
    s.signal("TERM");
    wait_line(&rx, |l| l == "event: draining");
    assert!(child.wait().unwrap().success(), "curl saw a broken body");
    assert!(s.wait_exit().success(), "{}", s.stderr());
}

#[test]
fn curl_reads_plain_stream_with_grep() {
    let s = Server::start(&[]);
    s.append("app.log", "old one\n");
    let (mut child, rx) = spawn_lines(
        Command::new(tool("curl")).args(["-sN", &s.url("/stream?tail=5&grep=one|two")]),
    );
    let seen = wait_line(&rx, |l| l == "old one");
    assert_eq!(seen, ["old one"]);
    s.append("app.log", "skip me\nline two\n");
    let seen = wait_line(&rx, |l| l == "line two");
    assert_eq!(seen, ["line two"]);
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn websocat_reads_raw_lines() {
    let s = Server::start(&[]);
    s.append("app.log", "history line\n");
    let (mut child, rx) = spawn_lines(
        Command::new(tool("websocat"))
            .args(["-t", "--no-close", &s.ws_url("/ws?format=raw&tail=1")])
            .stdin(Stdio::piped()),
    );
    let seen = wait_line(&rx, |l| l == "history line");
    assert!(
        seen.iter()
            .any(|l| l.starts_with("# logstream: ") && l.contains("\"hello\"")),
        "{seen:?}"
    );
    s.append("app.log", "via websocat\n");
    wait_line(&rx, |l| l == "via websocat");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn sigterm_delivers_every_line_waits_for_ack_and_exits_zero() {
    let mut s = Server::start(&["--partial-timeout", "1h"]);
    let mut c = Connection::open(&opts(&s, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut c).await;
    // Lines right up to the signal, the last one without its newline.
    let n = 5000;
    let mut body = numbered("final", 0..n);
    body.push_str("unterminated last words");
    s.append("app.log", &body);
    s.signal("TERM");
    let mut got = Vec::new();
    let mut drained = None;
    tokio::time::timeout(PATIENCE, async {
        while let Some(m) = c.next().await.unwrap() {
            match m {
                ServerMessage::Records { records, .. } => got.extend(records),
                // Connection::next acknowledges this cursor itself.
                ServerMessage::Draining { cursor } => drained = Some(cursor),
                _ => {}
            }
        }
    })
    .await
    .expect("server never closed");
    let mut want = expect_numbered("final", 0..n);
    want.push("unterminated last words".into());
    assert_eq!(got.len(), want.len(), "records lost in the drain");
    assert!(lines(&got) == want, "records out of order");
    assert!(got.last().unwrap().partial);
    let drained = drained.expect("a draining notice before the close");
    assert_eq!(drained.get(got[0].sid), n as u64 + 1);
    let status = s.wait_exit();
    assert!(status.success(), "exit {status:?}\n{}", s.stderr());
    assert!(s.stderr().contains("drained"), "{}", s.stderr());
}

#[tokio::test]
async fn sigterm_closes_websocket_with_1001_after_ack() {
    let mut s = Server::start(&[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))));
    s.signal("TERM");
    let mut close_code = None;
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(m) = ws.next().await {
            seen.push(format!("{m:?}"));
            let Ok(m) = m else { break };
            match m {
                Message::Text(t) => {
                    if let ServerMessage::Draining { cursor } =
                        serde_json::from_str(t.as_str()).unwrap()
                    {
                        let ack = serde_json::to_string(&ClientMessage::Ack { cursor }).unwrap();
                        ws.send(Message::text(ack)).await.unwrap();
                    }
                }
                Message::Close(f) => {
                    close_code = f.map(|f| u16::from(f.code));
                    break;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        close_code,
        Some(close::GOING_AWAY),
        "{seen:?}\n{}",
        s.stderr()
    );
    assert!(s.wait_exit().success());
}

#[test]
fn bad_folder_and_bad_glob_are_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args([
            "serve",
            "--dir",
            "/nonexistent/logs",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/logs"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--glob",
            "../*.log",
            "--dir",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inside the directory"), "{err}");
}

#[test]
fn sse_sends_keepalive_comments_when_idle() {
    // One clock for every stream (server/listen.rs): each idle stream gets
    // its comments, gzip-encoded ones included.
    let s = Server::start(&["--keepalive", "50ms"]);
    let url = s.url("/sse");
    let clients: Vec<_> = [&["-sN"][..], &["-sN"], &["-sN", "--compressed"]]
        .into_iter()
        .map(|flags| spawn_lines(Command::new(tool("curl")).args(flags).arg(&url)))
        .collect();
    for (mut child, rx) in clients {
        wait_line(&rx, |l| l == ": keep-alive");
        wait_line(&rx, |l| l == ": keep-alive");
        child.kill().unwrap();
        let _ = child.wait();
    }
}

#[test]
fn readyz_is_unavailable_while_draining() {
    // A client holding the drain open (it never acks) keeps the server in
    // the draining state long enough to observe /readyz.
    let mut s = Server::start(&["--ack-timeout", "30s", "--grace", "30s"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut c = rt
        .block_on(tokio_tungstenite::connect_async(s.ws_url("/ws")))
        .unwrap()
        .0;
    rt.block_on(c.next());
    s.signal("TERM");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match http_get(&s.addr, "/readyz") {
            Some((503, body)) => {
                assert_eq!(body.trim(), "draining");
                break;
            }
            // Refused: the listener is already closed, which is also "not ready".
            None => break,
            Some(_) => assert!(
                std::time::Instant::now() < deadline,
                "/readyz never turned 503"
            ),
        }
    }
    drop(c);
    assert!(s.wait_exit().success());
}

#[test]
fn readyz_reports_paths_not_tailed_to_token_holders_and_forgets_them_when_gone() {
    let s = Server::start(&["--token", "s3cret", "--no-loopback-exemption"]);
    s.append("app.log", "hello\n");
    std::os::unix::fs::symlink("/etc/passwd", s.dir.join("evil.log")).unwrap();
    let series = r#"logstream_files_not_tailed{reason="symlink"}"#;
    s.wait_metric_eq(series, 1.0);
    // The probe stays a bare word; the detail names files and takes the token.
    assert_eq!(
        http_get(&s.addr, "/readyz"),
        Some((200, "ready\n".to_string()))
    );
    let (code, _) = http_get(&s.addr, "/readyz?verbose").unwrap();
    assert_eq!(code, 401);
    let (code, text) = http_get(&s.addr, "/readyz?verbose&access_token=s3cret").unwrap();
    assert_eq!(code, 200);
    assert!(
        text.contains("[+]tailer: 1 files tailed\n")
            && text.contains("[-]files: 1 matching paths not tailed\n")
            && text.contains("    evil.log: symlink: symlinks are not followed\n")
            && text.ends_with("ready\n"),
        "{text}"
    );
    let (code, json) = http_get(&s.addr, "/readyz?format=json&access_token=s3cret").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["files"]["tailed"], 1);
    assert_eq!(v["files"]["not_tailed_total"], 1);
    assert_eq!(v["files"]["not_tailed"][0]["path"], "evil.log");
    assert_eq!(v["files"]["not_tailed"][0]["reason"], "symlink");
    // A non-UTF-8 name is reported only when the globs select it.
    use std::os::unix::ffi::OsStrExt;
    let odd = |n: &[u8]| s.dir.join(std::ffi::OsStr::from_bytes(n));
    std::fs::write(odd(b"notes-\xff.txt"), "x\n").unwrap();
    std::fs::write(odd(b"app-\xff.log"), "x\n").unwrap();
    s.wait_metric_eq(r#"logstream_files_not_tailed{reason="non_utf8_name"}"#, 1.0);
    std::fs::remove_file(odd(b"notes-\xff.txt")).unwrap();
    std::fs::remove_file(odd(b"app-\xff.log")).unwrap();
    // Gone from the folder, gone from the report and the gauge.
    std::fs::remove_file(s.dir.join("evil.log")).unwrap();
    s.wait_metric_eq(series, 0.0);
    let (_, text) = http_get(&s.addr, "/readyz?verbose&access_token=s3cret").unwrap();
    assert!(
        text.contains("[+]files: every matching path is tailed\n"),
        "{text}"
    );
}

/// What the operator sets in meshed pods (a mesh proxy delivers inbound
/// connections from loopback): loopback clients need the token too.
#[test]
fn the_operators_loopback_switch_requires_the_token_from_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    let args = [
        "serve",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--token",
        "s3cret",
    ];
    let s = Server::spawn_env(&dir, &args, &[("LOGSTREAM_NO_LOOPBACK_EXEMPTION", "true")]);
    assert_eq!(http_get(&s.addr, "/sse").map(|r| r.0), Some(401));
    assert_eq!(http_get(&s.addr, "/readyz?verbose").map(|r| r.0), Some(401));
    let (code, _) = http_request(
        &s.addr,
        &format!(
            "GET /readyz?verbose HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n",
            s.addr
        ),
    )
    .map_or((0, String::new()), |r| r);
    assert_eq!(code, 200);
    drop(s);
    let s = Server::spawn_env(&dir, &args, &[("LOGSTREAM_NO_LOOPBACK_EXEMPTION", "false")]);
    assert_eq!(http_get(&s.addr, "/readyz?verbose").map(|r| r.0), Some(200));
}

/// Threads named by the kernel for `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn worker_threads_sets_the_runtime_threads() {
    for (args, want) in [
        (vec!["--worker-threads", "1"], 1),
        (vec!["--worker-threads", "3"], 3),
    ] {
        let s = Server::start(&args);
        s.wait_ready();
        assert_eq!(
            threads_named(s.child.id(), "tokio-rt-worker"),
            want,
            "{args:?}"
        );
    }
}
