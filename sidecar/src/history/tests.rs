//! Model-based tests of the store (appends, reopening, torn tails,
//! retention) and of the seams between ring, queue and disk.

use std::io::Write;
use std::sync::Arc;

use proptest::prelude::*;

use super::block::{self, Input, StoredRecord};
use super::store::{Store, StoreLimits, read_block};
use super::*;
use crate::hub::{Hub, HubLimits, Pending};
use crate::protocol::{Level, Source, SourceId};

fn source(n: u8) -> Source {
    Source {
        namespace: "ns".into(),
        pod: format!("pod-{n}"),
        container: "app".into(),
        file: "app.log".into(),
        service: String::new(),
    }
}

/// One record of the model: what reading it back must give.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    rec: StoredRecord,
    pod: u8,
    line: String,
}

#[derive(Clone, Debug)]
enum Op {
    /// A block of `n` records (`gap` positions skipped before it).
    Append { n: usize, gap: u64, seed: u64 },
    /// The process ends and starts again.
    Reopen,
    /// A crash in the middle of writing a block: its first `cut` bytes
    /// (per mille of its length) reach the file.
    Tear { n: usize, cut: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..60, prop_oneof![3 => Just(0u64), 1 => 1u64..5], any::<u64>())
            .prop_map(|(n, gap, seed)| Op::Append { n, gap, seed }),
        1 => Just(Op::Reopen),
        1 => (1usize..60, 0u16..1000).prop_map(|(n, cut)| Op::Tear { n, cut }),
    ]
}

fn rows(first_pos: u64, n: usize, seed: u64) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let x = seed
                .wrapping_add(i as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let pod = (x % 3) as u8;
            Row {
                rec: StoredRecord {
                    pos: first_pos + i as u64,
                    sid: SourceId(100 + u64::from(pod)),
                    seq: first_pos + i as u64 + 1,
                    ts_ns: (first_pos + i as u64) as i64 * 1_000 - (x % 500) as i64,
                    level: Level::ALL.get((x >> 8) as usize % 7).copied(),
                    partial: x & 0x100 != 0,
                    split: None,
                },
                pod,
                line: format!(
                    "line {} of {seed:x} {}",
                    first_pos + i as u64,
                    "é".repeat((x % 40) as usize)
                ),
            }
        })
        .collect()
}

fn encode(rows: &[Row]) -> Vec<u8> {
    let sources: Vec<Source> = (0..3).map(source).collect();
    let inputs: Vec<Input<'_>> = rows
        .iter()
        .map(|r| Input {
            record: r.rec.clone(),
            source: &sources[r.pod as usize],
            line: &r.line,
        })
        .collect();
    block::encode(&inputs, 1, &mut Vec::new()).unwrap()
}

/// Every record the store serves, in position order.
fn read_all(store: &Store) -> Vec<Row> {
    let mut out = Vec::new();
    for meta in store.blocks() {
        let d = read_block(meta, store.dict(), true).unwrap();
        for i in 0..d.len() {
            let s = d.source(i).unwrap();
            out.push(Row {
                rec: d.record(i).unwrap(),
                pod: s.source.pod.trim_start_matches("pod-").parse().unwrap(),
                line: d.line(i).to_string(),
            });
        }
    }
    out
}

const LIMITS: StoreLimits = StoreLimits {
    max_bytes: 24 << 10,
    max_age_ns: None,
    segment_bytes: 6 << 10,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The store serves exactly the records appended, minus the oldest
    /// segments retention removed and never a torn block; positions go on
    /// after a reopen.
    #[test]
    fn the_store_serves_what_was_appended(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), LIMITS).unwrap();
        let mut model: Vec<Row> = Vec::new();
        for op in ops {
            match op {
                Op::Append { n, gap, seed } => {
                    let rs = rows(store.next_pos() + gap, n, seed);
                    store.append(&encode(&rs)).unwrap();
                    store.enforce(0);
                    model.extend(rs);
                }
                Op::Reopen => {
                    let next = store.next_pos();
                    drop(store);
                    let (s, rec) = Store::open(dir.path(), LIMITS).unwrap();
                    store = s;
                    prop_assert_eq!(rec.truncated_bytes, 0);
                    prop_assert!(store.next_pos() == next || model.is_empty());
                }
                Op::Tear { n, cut } => {
                    let bytes = encode(&rows(store.next_pos(), n, 7));
                    let keep = bytes.len() * usize::from(cut) / 1000;
                    let newest = std::fs::read_dir(dir.path()).unwrap()
                        .map(|e| e.unwrap().path())
                        .max();
                    if let (Some(path), true) = (newest, keep > 0) {
                        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                        f.write_all(&bytes[..keep]).unwrap();
                    }
                    drop(store);
                    let (s, rec) = Store::open(dir.path(), LIMITS).unwrap();
                    store = s;
                    let newest_exists = keep > 0;
                    prop_assert!(!newest_exists || rec.truncated_bytes == keep as u64 || model.is_empty(),
                        "cut {} bytes, truncated {}", keep, rec.truncated_bytes);
                }
            }
            // Retention drops whole oldest segments: the store keeps a
            // suffix of the model.
            let got = read_all(&store);
            let first = got.first().map(|r| r.rec.pos);
            let want: Vec<Row> = model.iter().filter(|r| first.is_some_and(|f| r.rec.pos >= f)).cloned().collect();
            prop_assert_eq!(&got, &want);
            prop_assert!(store.bytes() <= LIMITS.max_bytes + LIMITS.segment_bytes + (8 << 10));
            if let Some(last) = model.last() {
                prop_assert!(got.is_empty() || got.last().map(|r| r.rec.pos) == Some(last.rec.pos));
            }
        }
    }
}

/// A hub whose ring holds `max_lines` records.
fn hub(max_lines: usize) -> Arc<Hub> {
    Hub::new(
        HubLimits {
            max_lines,
            max_bytes: 1 << 20,
        },
        "t",
    )
}

fn history_opts(dir: &std::path::Path) -> HistoryOptions {
    let mut o = HistoryOptions::new(dir.to_path_buf());
    o.block_bytes = 2 << 10;
    o.flush_after = std::time::Duration::from_millis(5);
    o
}

/// Publishes `n` lines of source `info` in batches of `batch`.
fn publish(hub: &Hub, h: &History, info: &Arc<crate::hub::SourceInfo>, n: usize, batch: usize) {
    let mut left = n;
    while left > 0 {
        let k = left.min(batch);
        let b: Vec<Pending> = (0..k)
            .map(|_| {
                let seq = info.next_seq();
                Pending {
                    source: info.clone(),
                    seq,
                    ts_ns: seq as i64,
                    level: Some(Level::Info),
                    line: format!("line {seq}"),
                    partial: false,
                    split: None,
                }
            })
            .collect();
        hub.publish_with(b, |new| h.push(new));
        left -= k;
    }
}

/// Positions a reader sees, looking in the documented order: ring, then
/// queue and disk.
fn seen(hub: &Hub, h: &History) -> Vec<u64> {
    let (mut out, first) = {
        let ring = hub.lock();
        let v: Vec<u64> = ring
            .iter_from(ring.first_idx())
            .map(|e| h.base() + e.idx)
            .collect();
        (v, h.base() + ring.first_idx())
    };
    let view = h.view(first, i64::MIN, i64::MAX);
    out.extend(view.queued.iter().map(|e| h.base() + e.idx));
    for b in &view.blocks {
        let d = read_block(b, &view.dict, true).unwrap();
        out.extend(
            (0..d.len() as u64)
                .map(|i| d.first_pos + i)
                .filter(|p| *p < view.limit),
        );
    }
    out.sort_unstable();
    out
}

#[test]
fn ring_queue_and_disk_hold_every_record_once_while_the_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = History::open(history_opts(dir.path()), Stats::default()).unwrap();
    let writer = h.spawn_writer().unwrap();
    let hub = hub(50);
    let info = hub.source(source(1));
    let mut published = 0u64;
    for round in 0..200 {
        let n = 1 + round % 37;
        publish(&hub, &h, &info, n, 1 + round % 7);
        published += n as u64;
        let got = seen(&hub, &h);
        let want: Vec<u64> = (0..published).collect();
        assert_eq!(got, want, "round {round}");
    }
    h.close();
    writer.join().unwrap();
    // Everything reached the disk, and a new process continues after it.
    let (h2, rec) = History::open(history_opts(dir.path()), Stats::default()).unwrap();
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(h2.base(), published);
    let view = h2.view(u64::MAX, i64::MIN, i64::MAX);
    let lines: Vec<String> = view
        .blocks
        .iter()
        .flat_map(|b| {
            let d = read_block(b, &view.dict, true).unwrap();
            (0..d.len())
                .map(move |i| d.line(i).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(lines.len() as u64, published);
    assert_eq!(lines.first().map(String::as_str), Some("line 1"));
}

#[test]
fn a_history_that_cannot_write_keeps_streaming_and_counts_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Stats::default();
    let mut opts = history_opts(dir.path());
    opts.block_bytes = 256;
    let (h, _) = History::open(opts, stats.clone()).unwrap();
    // A directory stands where the first segment would go, so every
    // append fails (as on a full disk), whoever runs the test.
    std::fs::create_dir(dir.path().join("seg-0000000000000000.lsh")).unwrap();
    let writer = h.spawn_writer().unwrap();
    let hub = hub(10);
    let info = hub.source(source(2));
    // The queue is bounded: far more than its cap goes through the hub.
    let line_bytes = 64;
    let n = (h.opts.queue_cap() / line_bytes) * 2;
    publish(&hub, &h, &info, n, 500);
    assert_eq!(hub.head().next_idx, n as u64, "live publishing went on");
    let queued = h.queue().bytes;
    assert!(queued <= h.opts.queue_cap(), "queue {queued} over its cap");
    assert!(stats.records_dropped.get() > 0);
    assert_eq!(stats.records_written.get(), 0);
    h.close();
    writer.join().unwrap();
}

#[test]
fn a_scan_past_its_byte_bound_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (h, _) = History::open(history_opts(dir.path()), Stats::default()).unwrap();
    let writer = h.spawn_writer().unwrap();
    let hub = hub(10);
    let info = hub.source(source(3));
    publish(&hub, &h, &info, 5000, 100);
    h.close();
    writer.join().unwrap();
    let mut view = h.view(u64::MAX, i64::MIN, i64::MAX);
    assert!(view.blocks.len() > 2, "{} blocks", view.blocks.len());
    let read_all = |view: &DiskView| {
        let mut n = 0;
        view.scan(
            i64::MIN,
            i64::MAX,
            false,
            true,
            &|_| true,
            &[],
            &mut |_, _| true,
            &mut |hits| n += hits.records.len(),
        )
        .map(|_| n)
    };
    assert_eq!(read_all(&view).unwrap(), 5000);
    view.scan.max_bytes = 4 << 10;
    let err = read_all(&view).unwrap_err();
    assert!(matches!(err, ScanError::Bytes(_)));
    assert!(err.to_string().contains("narrow its time range"), "{err}");
}
