//! Compression with real clients: permessage-deflate negotiated by Node's
//! `ws` (tests/browser/ws-client.mjs; Chromium's is in browser.rs), gzip
//! read by curl and checked by gzip(1). websocat (1.x and 4.0 alike) never
//! offers permessage-deflate: it stays on plain frames, as the process
//! tests show.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};

use common::{PATIENCE, Server, tool};

fn ws_client() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser");
    assert!(
        dir.join("node_modules/ws/package.json").exists(),
        "tests/browser/node_modules/ws is missing: run .ci/install-tools (npm ci in tests/browser)"
    );
    (tool("node"), dir.join("ws-client.mjs"))
}

/// A child whose stdout lines arrive on a channel; killed on drop.
struct Lines {
    child: Child,
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn spawn(cmd: &mut Command) -> Lines {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("PAGE_TIMEOUT_MS", PATIENCE.as_millis().to_string())
            .spawn()
            .expect("spawn client");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Lines {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Lines up to and including the first that `done` accepts.
    fn until(&mut self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            match self
                .rx
                .recv_timeout(PATIENCE + std::time::Duration::from_secs(5))
            {
                Ok(l) => {
                    self.seen.push(l.clone());
                    let stop = done(&l);
                    got.push(l);
                    if stop {
                        return got;
                    }
                }
                Err(e) => panic!("{e:?}; client said:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Log lines that compress like real ones: a shape repeated, values varying.
fn log_lines(tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{{\"ts\":\"2026-12-05T06:{:02}:{:02}Z\",\"level\":\"info\",\"msg\":\"request served\",\"tag\":\"{tag}\",\"path\":\"/api/v1/items/{i}\",\"status\":200,\"ms\":{}}}",
                i / 60 % 60,
                i % 60,
                i % 97
            )
        })
        .collect()
}

fn append_lines(s: &Server, lines: &[String]) {
    s.append("app.log", &(lines.join("\n") + "\n"));
}

const WS_IN: &str = "logstream_compress_input_bytes_total{transport=\"ws\"}";
const WS_OUT: &str = "logstream_compress_output_bytes_total{transport=\"ws\"}";

fn printed_lines(out: &[String]) -> Vec<String> {
    out.iter()
        .filter_map(|l| l.strip_prefix("LINE ").map(str::to_string))
        .collect()
}

#[test]
fn node_ws_negotiates_deflate_and_both_directions_are_compressed() {
    let (node, script) = ws_client();
    let s = Server::start(&[]);
    let needles = log_lines("needle", 400);
    let mut all = log_lines("hay", 300);
    all.extend(needles.iter().cloned());
    append_lines(&s, &all);
    s.wait_metric("logstream_history_records", all.len() as f64);

    // The subscribe goes compressed (threshold 0): the server inflates it
    // or the client never hears `subscribed`.
    let mut c = Lines::spawn(Command::new(&node).args([
        script.to_str().unwrap(),
        &s.ws_url("/ws?tail=0"),
        "--send",
        r#"{"type":"subscribe","grep":"needle","tail":1000}"#,
        "--lines",
        "400",
    ]));
    let out = c.until(|l| l == "DONE" || l.starts_with("CLOSED"));
    let ext = out
        .iter()
        .find_map(|l| l.strip_prefix("EXTENSIONS "))
        .unwrap_or_else(|| panic!("no EXTENSIONS line: {out:?}"));
    assert_eq!(
        ext,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert!(out.iter().any(|l| l == "MSG subscribed"), "{out:?}");
    assert_eq!(printed_lines(&out), needles, "every line, once, in order");
    assert!(c.child.wait().unwrap().success());

    let (plain, wire) = (s.metric(WS_IN).unwrap(), s.metric(WS_OUT).unwrap());
    assert!(
        wire > 0.0 && wire * 5.0 < plain,
        "compressed batches should be a fifth of their size at most: {wire} of {plain} bytes"
    );
}

#[test]
fn a_client_that_offers_nothing_gets_plain_frames() {
    let (node, script) = ws_client();
    let s = Server::start(&[]);
    let lines = log_lines("plain", 200);
    append_lines(&s, &lines);
    s.wait_metric("logstream_history_records", 200.0);
    let mut c = Lines::spawn(Command::new(&node).args([
        script.to_str().unwrap(),
        &s.ws_url("/ws?tail=200"),
        "--lines",
        "200",
        "--no-deflate",
    ]));
    let out = c.until(|l| l == "DONE" || l.starts_with("CLOSED"));
    assert!(out.iter().any(|l| l == "EXTENSIONS "), "{out:?}");
    assert_eq!(printed_lines(&out), lines);
    assert_eq!(s.metric(WS_OUT).unwrap_or(0.0), 0.0);
}

#[test]
fn compression_can_be_turned_off() {
    let (node, script) = ws_client();
    let s = Server::start(&["--no-compression"]);
    let lines = log_lines("off", 100);
    append_lines(&s, &lines);
    s.wait_metric("logstream_history_records", 100.0);
    let mut c = Lines::spawn(Command::new(&node).args([
        script.to_str().unwrap(),
        &s.ws_url("/ws?tail=100"),
        "--lines",
        "100",
    ]));
    let out = c.until(|l| l == "DONE" || l.starts_with("CLOSED"));
    assert!(out.iter().any(|l| l == "EXTENSIONS "), "{out:?}");
    assert_eq!(printed_lines(&out), lines);
    let (code, head) = curl_head(&s, "/stream?tail=1", &["--compressed"]);
    assert_eq!(code, 200);
    assert!(!head.contains("content-encoding"), "{head}");
}

#[test]
fn one_batch_is_compressed_once_for_every_client() {
    let (node, script) = ws_client();
    let s = Server::start(&[]);
    append_lines(&s, &log_lines("first", 1));
    s.wait_metric("logstream_history_records", 1.0);
    let clients = 4;
    let mut cs: Vec<Lines> = (0..clients)
        .map(|_| {
            Lines::spawn(Command::new(&node).args([
                script.to_str().unwrap(),
                &s.ws_url("/ws?tail=0"),
                "--lines",
                "300",
            ]))
        })
        .collect();
    for c in &mut cs {
        c.until(|l| l == "MSG hello");
    }
    // One write: the clients are sent the same batches.
    let lines = log_lines("shared", 300);
    append_lines(&s, &lines);
    for c in &mut cs {
        let out = c.until(|l| l == "DONE" || l.starts_with("CLOSED"));
        assert_eq!(printed_lines(&out), lines);
    }
    let hit = s
        .metric("logstream_compressions_total{result=\"hit\"}")
        .unwrap_or(0.0);
    let miss = s
        .metric("logstream_compressions_total{result=\"miss\"}")
        .unwrap_or(0.0);
    assert!(
        miss >= 1.0 && hit >= miss,
        "{clients} clients at one position: most batches found compressed (hit {hit}, miss {miss})"
    );
}

/// `curl -sS -D - -o /dev/null URL`-like: (status, lower-cased head) of a
/// stream that is then abandoned.
fn curl_head(s: &Server, path: &str, extra: &[&str]) -> (u16, String) {
    let out = Command::new(tool("curl"))
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--max-time", "2"])
        .args(extra)
        .arg(s.url(path))
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head)
}

/// curl decompresses a gzip `/stream` or `/sse` as it arrives; the raw
/// body is one valid gzip member (CRC and length checked by gzip(1)) once
/// the server drains.
fn gzip_stream(path: &str, wanted: impl Fn(&[String]) -> Vec<String>) {
    let mut s = Server::start(&[]);
    let lines = log_lines("gz", 500);
    append_lines(&s, &lines);
    s.wait_metric("logstream_history_records", 500.0);
    let work = tempfile::tempdir().unwrap();
    let head = work.path().join("head");
    let raw = work.path().join("body.gz");

    let mut live = Lines::spawn(Command::new(tool("curl")).args([
        "-sS",
        "-N",
        "--compressed",
        "-D",
        head.to_str().unwrap(),
        &s.url(path),
    ]));
    let mut body = Command::new(tool("curl"))
        .args(["-sS", "-N", "-H", "Accept-Encoding: gzip", "-o"])
        .arg(&raw)
        .arg(s.url(path))
        .spawn()
        .expect("spawn curl");
    let want = wanted(&lines);
    let last = want.last().cloned().unwrap_or_default();
    let got = live.until(|l| l == last);
    let got: Vec<String> = got.into_iter().filter(|l| want.contains(l)).collect();
    assert_eq!(got, want, "curl --compressed read every line in order");
    // Both clients are served; the drain ends both bodies properly.
    s.wait_metric("logstream_compressions_total{result=\"miss\"}", 1.0);
    s.signal("TERM");
    assert!(
        live.child.wait().unwrap().success(),
        "curl --compressed saw a broken body"
    );
    assert!(body.wait().unwrap().success(), "curl saw a broken body");
    assert!(s.wait_exit().success(), "{}", s.stderr());
    let head = std::fs::read_to_string(&head).unwrap().to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    let check = Command::new("gzip").arg("-t").arg(&raw).output().unwrap();
    assert!(
        check.status.success(),
        "gzip -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let size = std::fs::metadata(&raw).unwrap().len();
    let plain = Command::new("gzip").arg("-dc").arg(&raw).output().unwrap();
    let text = String::from_utf8_lossy(&plain.stdout);
    for l in &want {
        assert!(text.contains(l.as_str()), "{l} missing from the gzip body");
    }
    assert!(
        size * 5 < plain.stdout.len() as u64,
        "{size} bytes for {} of text",
        plain.stdout.len()
    );
}

#[test]
fn curl_reads_a_gzip_plain_stream_and_it_ends_well_formed() {
    gzip_stream("/stream?tail=500", |lines| lines.to_vec());
}

#[test]
fn curl_reads_gzip_server_sent_events_and_they_end_well_formed() {
    gzip_stream("/sse?tail=500&format=raw", |lines| {
        lines.iter().map(|l| format!("data: {l}")).collect()
    });
}
