//! The aggregator's history on disk: every record it publishes is also
//! written, compressed, to append-only segment files, kept by bytes and by
//! age, and read back by queries together with the memory ring as one
//! history.
//!
//! ```text
//!  merge ──publish_with──► hub ring (memory, newest)            queries: ring ─┐
//!                └─ same entries, under the ring lock ─► queue ─► writer thread  queue ├─ one history,
//!                                                          block (zstd) ─► store   blocks ┘  by position
//! ```
//!
//! A record's *position* is `base + idx`: `base` is one past the newest
//! record on disk when the process started, `idx` the hub's index. Memory,
//! queue and disk hold disjoint position ranges at any time a reader looks
//! in that order (ring, then queue, then store): the queue gets entries
//! under the ring lock, before a later publish can evict them, and the
//! writer adds a block to the store before taking its entries off the
//! queue. So a query sees every record once, with no gap and no duplicate
//! at the seams.
//!
//! Durability: a block is written when the queue holds `block_bytes` or its
//! oldest record waited `flush_after`, so a crash loses at most that (the
//! queue); the file is fsynced when a segment is closed and at shutdown.
//! A write error (a full disk) stops history writing — live streaming goes
//! on — and is retried; the queue is bounded and drops its oldest records
//! (counted) while it cannot be written.

pub mod block;
mod replay;
pub mod store;
mod view;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::hub::{Entry, now_ns};
pub use store::{Recovery, StoreError, StoreLimits};
pub use view::{DiskView, ScanError, ScanLimits};

/// How the history on disk is kept.
#[derive(Clone, Debug)]
pub struct HistoryOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_age: Option<Duration>,
    /// A block is cut at this many bytes of lines.
    pub block_bytes: usize,
    /// Nor does a record wait longer than this in the queue.
    pub flush_after: Duration,
    /// zstd level.
    pub level: i32,
    /// Bounds of one query's reading.
    pub scan: ScanLimits,
}

impl HistoryOptions {
    pub fn new(dir: PathBuf) -> Self {
        HistoryOptions {
            dir,
            max_bytes: 2 << 30,
            max_age: Some(Duration::from_secs(24 * 3600)),
            block_bytes: 1 << 20,
            flush_after: Duration::from_secs(1),
            level: 1,
            scan: ScanLimits::default(),
        }
    }

    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(1 << 20, 64 << 20)
    }

    /// Records wait in the queue up to this many bytes of lines while they
    /// cannot be written.
    fn queue_cap(&self) -> usize {
        (self.block_bytes * 8).max(16 << 20)
    }
}

/// What `/readyz?format=json` says of the history on disk (the operator
/// turns it into the LogStream's `HistoryWritable` condition;
/// `tests/fixtures/readyz-history.json` pins the shape for both).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HistoryReport {
    /// False while writing fails (a full disk): live streams go on.
    pub writing: bool,
    pub bytes: u64,
    pub max_bytes: u64,
    pub records_dropped: u64,
    /// The last write error, while writing fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `/metrics` shows of the history on disk (clones share values: the
/// metrics registry holds one, the history another).
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub records_written: Counter,
    pub bytes_written: Counter,
    pub raw_bytes_written: Counter,
    pub records_dropped: Counter,
    pub write_errors: Counter,
    pub bytes_removed: Counter,
    pub truncated_bytes: Counter,
    /// Bytes of the segments on disk.
    pub disk_bytes: Gauge,
    /// 1 while writing works, 0 while it fails (a full disk).
    pub writing: Gauge,
}

struct Queue {
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    oldest_at: Option<Instant>,
    closing: bool,
}

pub struct History {
    store: Mutex<store::Store>,
    queue: Mutex<Queue>,
    signal: Condvar,
    base: u64,
    /// Records older than the oldest kept were removed (now or before the
    /// process started).
    removed_before: AtomicBool,
    /// Why writing fails, while it does.
    last_error: Mutex<Option<String>>,
    opts: HistoryOptions,
    pub stats: Stats,
}

/// Bytes a queued entry counts for.
fn queued_size(e: &Entry) -> usize {
    e.line.len() + 48
}

impl History {
    /// Opens the store in `opts.dir` (repairing a torn tail); the first
    /// record published gets the position after the newest one on disk.
    pub fn open(
        opts: HistoryOptions,
        stats: Stats,
    ) -> Result<(Arc<History>, Recovery), StoreError> {
        let limits = StoreLimits {
            max_bytes: opts.max_bytes,
            max_age_ns: opts
                .max_age
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            segment_bytes: opts.segment_bytes(),
        };
        let (store, rec) = store::Store::open(&opts.dir, limits)?;
        let base = store.next_pos();
        let removed = store.blocks().first().is_some_and(|b| b.first_pos > 0);
        stats.truncated_bytes.inc_by(rec.truncated_bytes);
        stats.writing.set(1);
        stats
            .disk_bytes
            .set(i64::try_from(store.bytes()).unwrap_or(i64::MAX));
        tracing::info!(
            dir = %opts.dir.display(),
            segments = rec.segments,
            blocks = rec.blocks,
            bytes = store.bytes(),
            next_position = base,
            "history on disk opened"
        );
        Ok((
            Arc::new(History {
                store: Mutex::new(store),
                queue: Mutex::new(Queue {
                    entries: VecDeque::new(),
                    bytes: 0,
                    oldest_at: None,
                    closing: false,
                }),
                signal: Condvar::new(),
                base,
                removed_before: AtomicBool::new(removed),
                last_error: Mutex::new(None),
                opts,
                stats,
            }),
            rec,
        ))
    }

    /// Where each source stored stands (sequence numbers): a restarted
    /// aggregator resumes its upstreams from here, so what the disk holds
    /// is neither pulled nor stored twice.
    /// `pod`: only the sources of that pod (an upstream found by pod
    /// discovery; a fixed upstream URL names no pod). At most the `max`
    /// most recently stored sources: a cursor travels in a URL.
    pub fn stored_cursor(&self, pod: Option<&str>, max: usize) -> crate::protocol::Cursor {
        let store = self.store();
        let of_pod: Option<std::collections::HashSet<crate::protocol::SourceId>> = pod.map(|p| {
            store
                .dict()
                .iter()
                .filter(|s| s.source.pod == p)
                .map(|s| s.sid)
                .collect()
        });
        let mut all: Vec<(u64, crate::protocol::SourceId, u64)> = store
            .last_seqs()
            .iter()
            .filter(|(sid, _)| of_pod.as_ref().is_none_or(|set| set.contains(*sid)))
            .map(|(sid, (seq, at))| (*at, *sid, *seq))
            .collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.truncate(max);
        crate::protocol::Cursor(all.into_iter().map(|(_, sid, seq)| (sid, seq)).collect())
    }

    /// The position of the hub's index 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn store(&self) -> MutexGuard<'_, store::Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of the segments on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.store().bytes()
    }

    /// Queues newly published entries for the writer (the hub's
    /// [`crate::hub::Hub::publish_with`] sink: called under the ring lock,
    /// so it only appends).
    pub fn push(&self, new: &[Arc<Entry>]) {
        let mut q = self.queue();
        if q.closing {
            return;
        }
        for e in new {
            q.bytes += queued_size(e);
            q.entries.push_back(e.clone());
        }
        if q.oldest_at.is_none() && !q.entries.is_empty() {
            q.oldest_at = Some(Instant::now());
        }
        let cap = self.opts.queue_cap();
        let mut dropped = 0;
        while q.bytes > cap {
            let Some(old) = q.entries.pop_front() else {
                break;
            };
            q.bytes -= queued_size(&old);
            dropped += 1;
        }
        if dropped > 0 {
            self.stats.records_dropped.inc_by(dropped);
            self.removed_before.store(true, Ordering::Relaxed);
        }
        if q.bytes >= self.opts.block_bytes {
            self.signal.notify_one();
        }
    }

    /// The state of the history for `/readyz?format=json`.
    pub fn report(&self) -> HistoryReport {
        HistoryReport {
            writing: self.stats.writing.get() == 1,
            bytes: self.disk_bytes(),
            max_bytes: self.opts.max_bytes,
            records_dropped: self.stats.records_dropped.get(),
            error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Bytes of lines waiting for the writer.
    pub fn queued_bytes(&self) -> usize {
        self.queue().bytes
    }

    /// Starts the writer thread; it ends after [`History::close`] once the
    /// queue is written.
    pub fn spawn_writer(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || me.write_loop())
    }

    /// Writes what is queued and stops the writer.
    pub fn close(&self) {
        self.queue().closing = true;
        self.signal.notify_all();
    }

    fn write_loop(&self) {
        let mut scratch = Vec::new();
        let mut retry_at: Option<Instant> = None;
        loop {
            let (batch, closing) = {
                let mut q = self.queue();
                loop {
                    if q.entries.is_empty() {
                        if q.closing {
                            self.store().sync();
                            return;
                        }
                    } else {
                        let due = q.closing
                            || q.bytes >= self.opts.block_bytes
                            || q.oldest_at
                                .is_some_and(|t| t.elapsed() >= self.opts.flush_after);
                        let backing_off = retry_at.is_some_and(|t| Instant::now() < t);
                        if due && (!backing_off || q.closing) {
                            break;
                        }
                    }
                    let wait = match (retry_at, q.oldest_at) {
                        (Some(t), _) if t > Instant::now() => t - Instant::now(),
                        (_, Some(t)) => self.opts.flush_after.saturating_sub(t.elapsed()),
                        _ => self.opts.flush_after,
                    };
                    q = self
                        .signal
                        .wait_timeout(q, wait.max(Duration::from_millis(1)))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                let mut taken = Vec::new();
                let mut bytes = 0;
                for e in &q.entries {
                    if bytes >= self.opts.block_bytes {
                        break;
                    }
                    bytes += e.line.len();
                    taken.push(e.clone());
                }
                (taken, q.closing)
            };
            match self.write_block(&batch, &mut scratch) {
                Ok(()) => {
                    if self.stats.writing.set(1) == 0 {
                        tracing::info!("history: writing again");
                        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    }
                    retry_at = None;
                }
                Err(e) => {
                    self.stats.write_errors.inc();
                    *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(e.to_string());
                    if self.stats.writing.set(0) == 1 {
                        tracing::error!(error = %e, "history: writing stopped (live streams go on); retrying every 10 s");
                    }
                    if closing {
                        return;
                    }
                    retry_at = Some(Instant::now() + Duration::from_secs(10));
                    continue;
                }
            }
            // Off the queue only now that the block is in the store.
            let last = batch.last().map(|e| e.idx);
            let mut q = self.queue();
            while let (Some(front), Some(last)) = (q.entries.front(), last) {
                if front.idx > last {
                    break;
                }
                let size = queued_size(front);
                q.bytes -= size;
                q.entries.pop_front();
            }
            q.oldest_at = (!q.entries.is_empty()).then(Instant::now);
        }
    }

    fn write_block(&self, batch: &[Arc<Entry>], scratch: &mut Vec<u8>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let inputs: Vec<block::Input<'_>> = batch
            .iter()
            .map(|e| block::Input {
                record: block::StoredRecord {
                    pos: self.base + e.idx,
                    sid: e.source.sid,
                    seq: e.seq,
                    ts_ns: e.ts_ns,
                    level: e.level,
                    partial: e.partial,
                    split: e.split,
                },
                source: &e.source.source,
                line: &e.line,
            })
            .collect();
        let bytes = block::encode(&inputs, self.opts.level, scratch).map_err(|source| {
            StoreError::Block {
                path: self.opts.dir.clone(),
                offset: 0,
                source,
            }
        })?;
        let raw: usize = batch.iter().map(|e| e.line.len()).sum();
        let mut store = self.store();
        store.append(&bytes)?;
        let removed = store.enforce(now_ns());
        self.stats
            .disk_bytes
            .set(i64::try_from(store.bytes()).unwrap_or(i64::MAX));
        drop(store);
        if removed > 0 {
            self.removed_before.store(true, Ordering::Relaxed);
            self.stats.bytes_removed.inc_by(removed);
        }
        self.stats.records_written.inc_by(batch.len() as u64);
        self.stats.bytes_written.inc_by(bytes.len() as u64);
        self.stats.raw_bytes_written.inc_by(raw as u64);
        Ok(())
    }

    /// What a query reads besides the ring: queued entries and blocks with
    /// positions before `mem_first_pos` (the ring's first position, taken
    /// *before* this call) and times overlapping `[from, to]`.
    pub fn view(&self, mem_first_pos: u64, from: i64, to: i64) -> DiskView {
        let (queued, limit) = {
            let q = self.queue();
            let queued: Vec<Arc<Entry>> = q
                .entries
                .iter()
                .filter(|e| self.base + e.idx < mem_first_pos)
                .cloned()
                .collect();
            let limit = q
                .entries
                .front()
                .map_or(mem_first_pos, |e| (self.base + e.idx).min(mem_first_pos));
            (queued, limit)
        };
        let store = self.store();
        let oldest_ts = store.blocks().iter().map(|b| b.min_ts).min();
        let blocks = store
            .blocks()
            .iter()
            .filter(|b| b.first_pos < limit && b.max_ts >= from && b.min_ts <= to)
            .cloned()
            .collect();
        DiskView {
            blocks,
            dict: store.dict().to_vec(),
            queued,
            limit,
            base: self.base,
            oldest_ts,
            removed_before: self.removed_before.load(Ordering::Relaxed),
            scan: self.opts.scan,
        }
    }
}
