//! The aggregator's history on disk with real processes: a sidecar feeds an
//! aggregator whose memory ring holds 100 records; Grafana's requests for
//! "Last 6 hours" still get every line, before and after a restart, and
//! after a kill -9.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{PATIENCE, Server, http_get};
use logstream::protocol::Subscribe;
use serde_json::Value;

const WRITTEN: &str = "logstream_history_disk_records_written_total";

fn enc(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

fn get_json(s: &Server, path: &str) -> Value {
    let (code, body) = http_get(&s.addr, path).unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn aggregator(sidecar: &Server, history: &Path) -> Server {
    Server::aggregator(
        &[sidecar],
        &[
            "--reorder-window",
            "0s",
            "--buffer-lines",
            "100",
            "--history-dir",
            history.to_str().unwrap(),
            "--history-flush-after",
            "20ms",
        ],
    )
}

/// What Grafana's Explore sends for "Last 6 hours" (a log query, newest
/// first, 1,000 lines), with the direction asked.
fn last_6h(s: &Server, query: &str, limit: &str, direction: &str) -> Value {
    let now = logstream::hub::now_ns();
    let start = now - 6 * 3600 * 1_000_000_000;
    get_json(
        s,
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                ("direction", direction),
                ("end", &now.to_string()),
                ("limit", limit),
                ("query", query),
                ("start", &start.to_string()),
                ("step", "10000ms"),
            ])
        ),
    )
}

/// The lines of a streams result in the order of its values, all streams
/// merged by timestamp (Grafana merges them so).
fn lines(v: &Value, backward: bool) -> Vec<String> {
    assert_eq!(v["status"], "success", "{v}");
    let mut rows: Vec<(i64, String)> = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        for p in s["values"].as_array().unwrap() {
            rows.push((
                p[0].as_str().unwrap().parse().unwrap(),
                p[1].as_str().unwrap().to_string(),
            ));
        }
    }
    rows.sort_by_key(|r| r.0);
    if backward {
        rows.reverse();
    }
    rows.into_iter().map(|r| r.1).collect()
}

/// Grafana's logs volume query over 6 hours: the counts summed.
fn volume_total(s: &Server) -> f64 {
    let now = logstream::hub::now_ns();
    let start = now - 6 * 3600 * 1_000_000_000;
    let v = get_json(
        s,
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                (
                    "query",
                    r#"sum by (level, detected_level) (count_over_time({namespace="ns"} | drop __error__[1m]))"#,
                ),
                ("start", &start.to_string()),
                ("end", &now.to_string()),
                ("step", "60000ms"),
            ])
        ),
    );
    assert_eq!(v["data"]["resultType"], "matrix", "{v}");
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["values"].as_array().unwrap().iter())
        .map(|p| p[1].as_str().unwrap().parse::<f64>().unwrap())
        .sum()
}

fn numbered(from: usize, to: usize) -> String {
    (from..=to).map(|i| format!("line {i:05}\n")).collect()
}

fn want(from: usize, to: usize) -> Vec<String> {
    (from..=to).map(|i| format!("line {i:05}")).collect()
}

/// Every check of the whole history of `n` lines `line 00001..n`.
fn check_whole_history(agg: &Server, n: usize) {
    let q = r#"{namespace="ns"}"#;
    // Explore's request: the newest 1,000, newest first.
    let v = last_6h(agg, q, "1000", "backward");
    assert!(v.get("warnings").is_none(), "{v}");
    let mut newest = want(n - 999, n);
    newest.reverse();
    assert_eq!(lines(&v, true), newest);
    // Oldest first, all of them: the ring holds 100; the rest is on disk.
    assert_eq!(
        lines(&last_6h(agg, q, "100000", "forward"), false),
        want(1, n)
    );
    // A line filter finds one line far outside the ring.
    let v = last_6h(
        agg,
        r#"{namespace="ns"} |= "line 00042""#,
        "1000",
        "backward",
    );
    assert_eq!(lines(&v, true), ["line 00042"]);
    assert_eq!(volume_total(agg), n as f64);
    // Logs Drilldown's volume of the whole window: every line's bytes,
    // memory and disk (each line is "line NNNNN", 10 bytes).
    let now = logstream::hub::now_ns();
    let v = get_json(
        agg,
        &format!(
            "/loki/api/v1/index/volume?{}",
            enc(&[
                ("query", r#"{namespace="ns"}"#),
                ("start", &(now - 6 * 3600 * 1_000_000_000).to_string()),
                ("end", &now.to_string()),
                ("limit", "100"),
            ])
        ),
    );
    let bytes: u64 = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"][1].as_str().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(bytes, 10 * n as u64, "{v}");
    // The series and label values endpoints see the disk's streams.
    let v = get_json(agg, "/loki/api/v1/label/pod/values");
    assert_eq!(v["data"], serde_json::json!(["pod-a"]), "{v}");
}

#[test]
fn grafana_reads_hours_of_history_that_memory_no_longer_holds_across_restarts() {
    let history = tempfile::tempdir().unwrap();
    let sidecar = Server::sidecar("ns", "pod-a", &[]);
    sidecar.append("app.log", &numbered(1, 3000));
    let mut agg = aggregator(&sidecar, history.path());
    agg.wait_metric(WRITTEN, 3000.0);
    check_whole_history(&agg, 3000);

    // A restart: the disk is read back, the sidecar is resumed where the
    // disk stands (nothing pulled twice), and new lines follow.
    agg.signal("TERM");
    assert!(agg.wait_exit().success());
    let agg = aggregator(&sidecar, history.path());
    sidecar.append("app.log", &numbered(3001, 3500));
    agg.wait_metric(WRITTEN, 500.0);
    check_whole_history(&agg, 3500);
    assert_eq!(agg.metric(WRITTEN), Some(500.0), "nothing was stored twice");
}

#[test]
fn kill_9_while_writing_loses_at_most_the_queue_and_corrupts_nothing() {
    let history = tempfile::tempdir().unwrap();
    let sidecar = Server::sidecar("ns", "pod-a", &[]);
    let mut agg = aggregator(&sidecar, history.path());
    // 30,000 lines (all within the sidecar's memory); the aggregator is
    // killed while it is still pulling and writing them.
    let written = 30_000;
    for k in 0..15 {
        sidecar.append("app.log", &numbered(k * 2000 + 1, k * 2000 + 2000));
    }
    agg.wait_metric(WRITTEN, 5_000.0);
    agg.child.kill().unwrap(); // SIGKILL
    agg.child.wait().unwrap();
    let stored_before = agg.metric(WRITTEN);
    assert!(stored_before.is_none(), "the process is gone");
    drop(agg);

    // Restarted on the same directory: whatever reached the disk is whole
    // and served; the sidecar (which still has every line) fills the rest.
    let agg = aggregator(&sidecar, history.path());
    let truncated = agg
        .metric("logstream_history_disk_truncated_bytes_total")
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = lines(
            &last_6h(&agg, r#"{namespace="ns"}"#, "1000000", "forward"),
            false,
        );
        if got.len() >= written {
            assert_eq!(
                got,
                want(1, written),
                "in order, once each (cut {truncated} bytes)"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {written} lines",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn connect(agg: &Server, sub: Subscribe) -> logstream::client::Connection {
    let o = common::opts(agg, sub);
    let mut c = logstream::client::Connection::open(&o, o.sub.resume.as_ref())
        .await
        .unwrap();
    assert_eq!(common::hello(&mut c).await, "aggregator");
    c
}

fn record_lines(recs: &[logstream::protocol::Record]) -> Vec<String> {
    recs.iter().map(|r| r.line.clone()).collect()
}

/// Live clients reach into the disk too: `since=`, `tail=` and a resume
/// cursor from before a restart get the lines the ring no longer holds, in
/// order, once each, and a gap notice only for what no part kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_tail_and_resume_read_the_disk_before_the_ring() {
    let history = tempfile::tempdir().unwrap();
    let sidecar = Server::sidecar("ns", "pod-a", &[]);
    sidecar.append("app.log", &numbered(1, 2000));
    let agg = aggregator(&sidecar, history.path());
    agg.wait_metric(WRITTEN, 2000.0);

    // since=1h: everything, though the ring holds the last 100.
    let mut c = connect(
        &agg,
        Subscribe {
            since: Some("1h".into()),
            ..Subscribe::default()
        },
    )
    .await;
    let (recs, other) = common::records(&mut c, 2000).await;
    assert_eq!(record_lines(&recs[..2000]), want(1, 2000), "{other:?}");
    // A client that saw the first 500 lines, for the resume below.
    let cursor =
        logstream::protocol::Cursor([(recs[499].sid, recs[499].seq)].into_iter().collect());

    // tail=300 with a filter: 300 matching lines, 200 of them from disk.
    let mut c = connect(
        &agg,
        Subscribe {
            tail: Some(300),
            grep: Some("line 0[01]".into()),
            ..Subscribe::default()
        },
    )
    .await;
    let (recs, _) = common::records(&mut c, 300).await;
    assert_eq!(record_lines(&recs[..300]), want(1700, 1999));

    // A restart: the resume cursor from before it still works, from disk.
    drop(agg);
    let agg = aggregator(&sidecar, history.path());
    sidecar.append("app.log", &numbered(2001, 2010));
    agg.wait_metric(WRITTEN, 10.0);
    let mut c = connect(
        &agg,
        Subscribe {
            resume: Some(cursor),
            ..Subscribe::default()
        },
    )
    .await;
    let (recs, other) = common::records(&mut c, 1510).await;
    assert_eq!(record_lines(&recs[..1510]), want(501, 2010));
    assert!(
        !other
            .iter()
            .any(|m| matches!(m, logstream::protocol::ServerMessage::Gap { .. })),
        "nothing was missing: {other:?}"
    );
}
