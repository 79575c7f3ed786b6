//! Rate limits against the real binary over real sockets (server/limits.rs):
//! streams opened too fast get 429 with Retry-After before any upgrade
//! (curl reads it), per address and per token; a WebSocket flooding the
//! server with messages is closed 1008 after its burst instead of getting an
//! error reply for each; a client reconnecting and resubscribing as a page
//! does is never limited under the defaults.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::process::Command;

use common::{PATIENCE, Server, http_request};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// `curl -i` of an SSE stream: (status, the response head), the stream
/// closed after its head.
fn curl_head(s: &Server, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5", "-o", "-", "-D", "-"])
        .args(["-H", "Accept: text/event-stream"])
        .args(extra)
        // Only the head: curl stops reading when the pipe closes.
        .arg(s.url(path))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    (code, head)
}

/// The status and body of a request whose answer may be a stream: the head
/// is read, then the body when it has a length (a refusal); a stream is left
/// by closing the connection.
fn status_of(s: &Server, req: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(&s.addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    tcp.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    if let Some(len) = len {
        while buf.len() < head_end + len {
            let n = tcp.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    (code, String::from_utf8_lossy(&buf[head_end..]).into_owned())
}

/// `GET /sse?tail=0` with extra header lines.
fn stream_status(s: &Server, extra_headers: &str) -> (u16, String) {
    status_of(
        s,
        &format!(
            "GET /sse?tail=0 HTTP/1.1\r\nHost: {}\r\n{extra_headers}Connection: close\r\n\r\n",
            s.addr
        ),
    )
}

/// A WebSocket handshake for `path`.
fn upgrade(s: &Server, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    )
}

#[test]
fn streams_over_the_address_rate_get_429_with_retry_after() {
    // A burst of 3, then 1 per minute: the fourth stream is refused (the
    // test takes far less than the minute a token needs to come back).
    let s = Server::start(&["--rate-limit-address", "1/m,3"]);
    for i in 0..3 {
        let (code, _) = stream_status(&s, "");
        assert_eq!(code, 200, "stream {i} within the burst");
    }
    let (code, head) = curl_head(&s, "/sse?tail=0", &[]);
    assert_eq!(code, 429, "{head}");
    let retry = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(str::trim)
                .map(String::from)
        })
        .unwrap_or_else(|| panic!("no Retry-After: {head}"));
    let secs: u64 = retry.parse().unwrap();
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    // Before any upgrade: a WebSocket handshake gets the same answer.
    let (code, body) = status_of(&s, &upgrade(&s, "/ws"));
    assert_eq!(code, 429);
    assert!(
        body.contains("too many new streams from this address"),
        "{body}"
    );
    // So does Grafana's live tail; Loki queries are not streams.
    let (code, _) = status_of(
        &s,
        &upgrade(&s, "/loki/api/v1/tail?query=%7Bfile%3D~%22.%2B%22%7D"),
    );
    assert_eq!(code, 429);
    let (code, _) = http_request(
        &s.addr,
        &format!(
            "GET /loki/api/v1/labels HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.addr
        ),
    )
    .unwrap();
    assert_eq!(code, 200, "a query is not a stream");
    assert!(
        s.metric("logstream_rate_limited_total{reason=\"connections_per_address\"}")
            .unwrap()
            >= 3.0
    );
    assert!(s.metric("logstream_rate_limit_buckets").is_some());
}

#[test]
fn each_token_has_its_own_rate() {
    let dir = tempfile::tempdir().unwrap();
    let beta = dir.path().join("beta");
    std::fs::write(&beta, "beta\n").unwrap();
    let s = Server::start(&[
        "--token",
        "alpha",
        "--token-file",
        beta.to_str().unwrap(),
        "--no-loopback-exemption",
        "--rate-limit-address",
        "0",
        "--rate-limit-token",
        "1/m,2",
    ]);
    let with = |t: &str| stream_status(&s, &format!("Authorization: Bearer {t}\r\n"));
    assert_eq!(with("alpha").0, 200);
    assert_eq!(with("alpha").0, 200);
    let (code, body) = with("alpha");
    assert_eq!(code, 429);
    assert!(
        body.contains("too many new streams for this token"),
        "{body}"
    );
    assert_eq!(with("beta").0, 200, "another token is another client");
    // A wrong token is refused by the token check, not counted as one.
    assert_eq!(with("gamma").0, 401);
    assert_eq!(
        s.metric("logstream_rate_limited_total{reason=\"connections_per_credential\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_message_flood_is_closed_1008_after_its_burst() {
    // The default burst (100), refilled per minute instead of per second so
    // the count below does not depend on how fast this machine is.
    let s = Server::start(&["--rate-limit-messages", "50/m,100"]);
    let (ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    let (mut tx, mut rx) = ws.split();
    // 10,000 garbage messages as fast as the socket takes them; the server
    // may close before they are all written.
    let flood = tokio::spawn(async move {
        for _ in 0..10_000 {
            if tx.send(Message::text("garbage")).await.is_err() {
                break;
            }
        }
    });
    let mut errors = 0;
    let close = loop {
        match tokio::time::timeout(PATIENCE, rx.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                if t.as_str().contains("\"error\"") {
                    errors += 1;
                }
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let _ = flood.await;
    let close = close.unwrap();
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(
        close.reason.as_str(),
        "rate limit: too many messages on this connection"
    );
    // Replies stop at the burst (before, one error reply per message:
    // 10,000).
    assert!((1..=101).contains(&errors), "{errors} error replies");
    assert!(
        s.metric("logstream_rate_limited_total{reason=\"messages\"}")
            .unwrap()
            >= 1.0
    );
    assert!(
        s.metric("logstream_clients_dropped_total{reason=\"rate_limited\"}")
            .unwrap()
            >= 1.0
    );
}

/// What a page does on a flaky network, as fast as it can: reconnect 40
/// times (each time a hello) and resubscribe 15 times on one connection.
/// The defaults never get in its way.
#[tokio::test]
async fn a_reconnecting_resubscribing_client_is_never_limited() {
    let s = Server::start(&[]);
    s.append("app.log", "a line\n");
    for i in 0..40 {
        let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws?tail=1"))
            .await
            .unwrap_or_else(|e| panic!("reconnect {i}: {e}"));
        let first = tokio::time::timeout(PATIENCE, ws.next()).await.unwrap();
        assert!(
            matches!(&first, Some(Ok(Message::Text(t))) if t.as_str().contains("hello")),
            "reconnect {i}: {first:?}"
        );
        ws.close(None).await.unwrap();
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url("/ws"))
        .await
        .unwrap();
    let mut subscribed = 0;
    for level in ["info", "warn", "error"].iter().cycle().take(15) {
        ws.send(Message::text(format!(
            r#"{{"type":"subscribe","level":"{level}+"}}"#
        )))
        .await
        .unwrap();
        loop {
            match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) if t.as_str().contains("\"subscribed\"") => {
                    subscribed += 1;
                    break;
                }
                Some(Ok(Message::Close(c))) => panic!("closed after {subscribed}: {c:?}"),
                Some(Ok(_)) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(subscribed, 15);
    assert_eq!(s.metric("logstream_rate_limited_total"), None);
}
