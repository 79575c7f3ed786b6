//! The aggregator with real processes: three sidecars on temp folders feed
//! two aggregator replicas; clients merge, filter, and move between replicas
//! across a SIGTERM without gap or duplicate.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::collections::BTreeMap;

use common::{PATIENCE, Server, collect, opts};
use logstream::client::Connection;
use logstream::protocol::{Cursor, Record, ServerMessage, Subscribe};

async fn hello(c: &mut Connection) {
    assert_eq!(common::hello(c).await, "aggregator");
}

fn three_sidecars() -> Vec<Server> {
    (1..=3)
        .map(|i| Server::sidecar("shop", &format!("web-{i}"), &[]))
        .collect()
}

fn lines_of(n: usize, pod: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| format!("pod{pod} line {i}\n"))
        .collect()
}

/// Per-pod sequence of line numbers as received.
fn by_pod(recs: &[Record]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in recs {
        m.entry(r.source.pod.clone()).or_default().push(r.seq);
    }
    m
}

#[tokio::test]
async fn merges_every_sidecar_in_per_source_order_with_filters() {
    let sidecars = three_sidecars();
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(&refs, &["--reorder-window", "20ms"]);
    // History written before the aggregator connected is pulled too.
    sidecars[0].append("app.log", &lines_of(5, 1, 0));
    let mut all = Connection::open(
        &opts(
            &agg,
            Subscribe {
                tail: Some(1000),
                ..Default::default()
            },
        ),
        None,
    )
    .await
    .unwrap();
    hello(&mut all).await;
    let sub = Subscribe {
        pod: Some("web-(2|3)".into()),
        tail: Some(1000),
        ..Default::default()
    };
    let mut some = Connection::open(&opts(&agg, sub), None).await.unwrap();
    hello(&mut some).await;
    for (i, s) in sidecars.iter().enumerate() {
        s.append("app.log", &lines_of(50, i + 1, 100));
    }
    let (recs, _) = collect(&mut all, |r| r.len() >= 155).await;
    let per = by_pod(&recs);
    assert_eq!(
        per["web-1"],
        (1..=55).collect::<Vec<u64>>(),
        "per-source order, nothing lost or repeated"
    );
    assert_eq!(per["web-2"], (1..=50).collect::<Vec<u64>>());
    assert_eq!(per["web-3"], (1..=50).collect::<Vec<u64>>());
    assert!(
        recs.iter()
            .all(|r| r.source.namespace == "shop" && r.source.container == "app")
    );
    let (recs, _) = collect(&mut some, |r| r.len() >= 100).await;
    assert!(recs.iter().all(|r| r.source.pod != "web-1"), "pod filter");
    assert_eq!(recs.len(), 100);
    assert!(agg.metric("logstream_upstreams_connected").unwrap() >= 3.0);
    assert!(agg.metric("logstream_upstream_records_total").unwrap() >= 155.0);
}

#[tokio::test]
async fn a_client_moved_to_another_replica_by_sigterm_misses_and_repeats_nothing() {
    let sidecars = three_sidecars();
    let refs: Vec<&Server> = sidecars.iter().collect();
    let mut a = Server::aggregator(
        &refs,
        &[
            "--reorder-window",
            "10ms",
            "--drain-delay",
            "0s",
            "--reconnect-jitter",
            "50ms",
        ],
    );
    let b = Server::aggregator(&refs, &["--reorder-window", "10ms"]);
    let mut c = Connection::open(&opts(&a, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut c).await;

    // Writers keep going on every sidecar while replica A goes away.
    let per_pod = 3000;
    let writers: Vec<_> = sidecars
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let dir = s.dir.clone();
            std::thread::spawn(move || {
                for chunk in 0..30 {
                    let body = lines_of(per_pod / 30, i + 1, chunk * (per_pod / 30));
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join("app.log"))
                        .unwrap();
                    std::io::Write::write_all(&mut f, body.as_bytes()).unwrap();
                    std::thread::yield_now();
                }
            })
        })
        .collect();
    // Mid-stream: once some records arrived, replica A is terminated.
    let (mut recs, _) = collect(&mut c, |r| r.len() >= 500).await;
    a.signal("TERM");
    let mut told = None;
    tokio::time::timeout(PATIENCE, async {
        while let Some(m) = c.next().await.unwrap() {
            match m {
                ServerMessage::Records { records, .. } => recs.extend(records),
                ServerMessage::Reconnect { after_ms, .. } => told = Some(after_ms),
                _ => {}
            }
        }
    })
    .await
    .expect("replica A never closed the connection");
    let after_ms = told.expect("a reconnect notice before the close");
    assert!(
        after_ms < 50,
        "jitter bounded by --reconnect-jitter: {after_ms}"
    );
    assert!(a.wait_exit().success(), "{}", a.stderr());
    for w in writers {
        w.join().unwrap();
    }

    // The client resumes on replica B with its cursor.
    let cursor: Cursor = c.cursor.clone();
    let mut c = Connection::open(&opts(&b, Subscribe::default()), Some(&cursor))
        .await
        .unwrap();
    hello(&mut c).await;
    let total = 3 * per_pod;
    let (more, other) = collect(&mut c, |r| recs.len() + r.len() >= total).await;
    assert!(
        other
            .iter()
            .all(|m| !matches!(m, ServerMessage::Gap { .. })),
        "{other:?}"
    );
    recs.extend(more);
    let per = by_pod(&recs);
    for pod in ["web-1", "web-2", "web-3"] {
        let seqs = &per[pod];
        assert_eq!(
            seqs.len(),
            per_pod,
            "{pod}: {} records, expected {per_pod} (duplicates or losses)",
            seqs.len()
        );
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted,
            (1..=per_pod as u64).collect::<Vec<_>>(),
            "{pod}: not every record exactly once"
        );
    }
}

#[tokio::test]
async fn sidecar_drain_reaches_the_aggregator() {
    let mut sidecars = three_sidecars();
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(&refs, &["--reorder-window", "0s"]);
    // A sidecar that nobody pulls takes its last lines with it: wait until
    // the aggregator holds a connection to every sidecar.
    agg.wait_metric("logstream_upstreams_connected", 3.0);
    let mut c = Connection::open(&opts(&agg, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut c).await;
    // The last words of a pod, written right before it is terminated.
    sidecars[1].append("app.log", &lines_of(200, 2, 0));
    sidecars[1].append("app.log", "no newline at the end");
    sidecars[1].signal("TERM");
    let (recs, _) = collect(&mut c, |r| r.len() >= 201).await;
    assert_eq!(recs.last().unwrap().line, "no newline at the end");
    assert!(recs.last().unwrap().partial);
    assert!(sidecars[1].wait_exit().success());
}

#[tokio::test]
async fn upstream_pulls_need_the_pull_token_when_loopback_is_not_exempt() {
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "pull-secret-123\n").unwrap();
    let token = token.to_str().unwrap();
    let sidecar = Server::sidecar(
        "shop",
        "web-1",
        &["--token-file", token, "--no-loopback-exemption"],
    );
    sidecar.append("app.log", "guarded line\n");
    let with = Server::aggregator(
        &[&sidecar],
        &["--upstream-token-file", token, "--reorder-window", "0s"],
    );
    let without = Server::aggregator(&[&sidecar], &["--reorder-window", "0s"]);
    let mut c = Connection::open(
        &opts(
            &with,
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
    let (recs, _) = collect(&mut c, |r| !r.is_empty()).await;
    assert_eq!(recs[0].line, "guarded line");
    without.wait_metric("logstream_upstream_reconnects_total", 2.0);
    assert_eq!(
        without.metric("logstream_upstream_records_total"),
        Some(0.0)
    );
    // Refused before the upgrade, and counted (metrics stay open for Prometheus).
    assert!(
        sidecar
            .metric("logstream_connections_rejected_total{reason=\"unauthorized\"}")
            .unwrap()
            >= 2.0
    );
}

/// Protocol 1.1: with a window of an hour, lines still arrive — released by
/// the sidecars' watermarks — and in time order across sidecars (each
/// stamps a line as it reads it). Before watermarks, each waited the window.
#[tokio::test]
async fn watermarks_merge_in_time_order_without_waiting_for_the_window() {
    let sidecars = three_sidecars();
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(&refs, &["--reorder-window", "1h"]);
    agg.wait_metric("logstream_upstreams_connected", 3.0);
    let mut all = Connection::open(&opts(&agg, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut all).await;
    for round in 0..20 {
        for (i, s) in sidecars.iter().enumerate() {
            s.append("app.log", &lines_of(1 + (round + i) % 3, i + 1, round * 10));
        }
    }
    let (recs, _) = collect(&mut all, |r| r.len() >= 120).await;
    assert_eq!(recs.len(), 120);
    let times: Vec<i64> = recs
        .iter()
        .map(|r| logstream::hub::parse_ts(&r.ts).unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "records in time order across sidecars"
    );
    assert_eq!(
        agg.metric("logstream_reorder_window_releases_total"),
        Some(0.0)
    );
    assert!(
        agg.metric("logstream_upstream_watermark_asks_total")
            .unwrap()
            >= 1.0
    );
}

/// A sidecar that stops answering (SIGSTOP: its connection stays open) is
/// given up after the window, and the aggregator says so; once it answers
/// again it is waited on again.
#[tokio::test]
async fn a_silent_upstream_is_merged_without_after_the_window_and_said_so() {
    let sidecars: Vec<Server> = (1..=2)
        .map(|i| Server::sidecar("shop", &format!("web-{i}"), &[]))
        .collect();
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(&refs, &["--reorder-window", "1s"]);
    agg.wait_metric("logstream_upstreams_connected", 2.0);
    let mut all = Connection::open(&opts(&agg, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut all).await;
    // A line from each: both upstreams' hellos were read (what the merge
    // waits on is what said hello).
    sidecars[0].append("app.log", &lines_of(1, 1, 0));
    sidecars[1].append("app.log", &lines_of(1, 2, 0));
    collect(&mut all, |r| r.len() >= 2).await;
    sidecars[1].signal("STOP");
    sidecars[0].append("app.log", &lines_of(5, 1, 1));
    let (recs, _) = collect(&mut all, |r| r.len() >= 5).await;
    assert_eq!(recs.len(), 5);
    agg.wait_metric("logstream_upstream_watermark_stalls_total", 1.0);
    assert!(
        agg.stderr().contains("gave no watermark"),
        "{}",
        agg.stderr()
    );
    sidecars[1].signal("CONT");
    sidecars[1].append("app.log", &lines_of(5, 2, 1));
    sidecars[0].append("app.log", &lines_of(5, 1, 6));
    let (recs, _) = collect(&mut all, |r| r.len() >= 10).await;
    assert_eq!(by_pod(&recs).values().map(Vec::len).sum::<usize>(), 10);
}

/// `--watermark-ask-after`: an aggregator told to wait longer than its
/// window before asking never asks; its records are released by the
/// window, all of them, in order per source.
#[tokio::test]
async fn an_ask_after_past_the_window_leaves_the_window_rule() {
    let sidecars = three_sidecars();
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(
        &refs,
        &["--reorder-window", "50ms", "--watermark-ask-after", "1h"],
    );
    agg.wait_metric("logstream_upstreams_connected", 3.0);
    let mut all = Connection::open(&opts(&agg, Subscribe::default()), None)
        .await
        .unwrap();
    hello(&mut all).await;
    for (i, s) in sidecars.iter().enumerate() {
        s.append("app.log", &lines_of(10, i + 1, 0));
    }
    let (recs, _) = collect(&mut all, |r| r.len() >= 30).await;
    for seqs in by_pod(&recs).values() {
        assert_eq!(seqs, &(1..=10).collect::<Vec<u64>>());
    }
    assert_eq!(
        agg.metric("logstream_upstream_watermark_asks_total"),
        Some(0.0)
    );
    assert_eq!(
        agg.metric("logstream_reorder_window_releases_total"),
        Some(30.0)
    );
}
