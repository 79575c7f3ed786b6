//! The hub: a bounded history ring of records shared by every subscriber.
//!
//! ```text
//!  tailer / puller ──publish──► Ring [first_idx .. next_idx) ──read──► Session (one per client)
//!                                  │ bounded by lines and bytes        (its own position, filter,
//!                                  └─► watch<Head> wakes sessions        cursor; no queue of its own)
//! ```
//!
//! Records are serialised once when published; sessions share them as
//! `Arc<Entry>`, so fan-out costs no per-client copies of history and a slow
//! client only holds a position, never a growing queue.
//!
//! Sessions whose filter names sources (file, pod, container) wait on the
//! watch of their *wake class*: one per distinct source filter, woken only
//! by publishes of a source it selects ([`Hub::watch_for`]). A line of one
//! file then wakes the sessions of that file, not the thousands watching
//! others; the clock, the drain and the end still wake every class.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use crate::protocol::{Level, Record, Source, SourceId, SplitPart};

/// One source known to the hub; `slot` indexes per-source arrays.
#[derive(Debug)]
pub struct SourceInfo {
    pub slot: u32,
    pub sid: SourceId,
    pub source: Source,
    next_seq: AtomicU64,
    /// Bytes its strings take in every serialised record (escapes
    /// included), counted once.
    wire_strings: usize,
}

impl SourceInfo {
    /// Allocates the next sequence number of this source (starting at 1).
    pub fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The last sequence number allocated (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Continues a sequence an earlier process left at `seq`.
    pub fn continue_after(&self, seq: u64) {
        self.next_seq.fetch_max(seq, Ordering::Relaxed);
    }
}

/// A record ready to be published.
#[derive(Debug)]
pub struct Pending {
    pub source: Arc<SourceInfo>,
    pub seq: u64,
    pub ts_ns: i64,
    pub level: Option<Level>,
    pub line: String,
    pub partial: bool,
    pub split: Option<SplitPart>,
}

/// A published record.
#[derive(Debug)]
pub struct Entry {
    pub idx: u64,
    pub source: Arc<SourceInfo>,
    pub seq: u64,
    pub ts_ns: i64,
    pub level: Option<Level>,
    pub line: Box<str>,
    pub partial: bool,
    pub split: Option<SplitPart>,
    /// The record serialised as a JSON object, made by the first session
    /// that sends it (outside the hub lock), then shared by all.
    json: std::sync::OnceLock<Bytes>,
    /// Wire bytes published before this entry (cumulative), for lag accounting.
    pub start_bytes: u64,
    /// Size of the serialised record (made once, at publish).
    wire: u32,
}

/// Bytes of a serialised record besides its strings and seq: the keys,
/// quotes and separators, the 16-digit sid and the 30-byte ts.
const RECORD_OVERHEAD: usize = 123;
/// What the allocator adds to each allocation (header and rounding), and
/// the Arc's counts: the entry, its line and its JSON are three.
const ALLOC_OVERHEAD: usize = 16;

/// Bytes `s` takes inside a JSON string: serde_json writes `"`, `\\` and
/// the five short control escapes as two bytes, other control bytes as
/// `\u00XX` (six). A line of control bytes is six times its length on the
/// wire and in the history: counting its raw length let `--buffer-bytes`
/// hold five times what it said.
fn json_escaped_len(s: &str) -> usize {
    // Most lines need no escape: one pass the compiler vectorises says so.
    if !s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        return s.len();
    }
    s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Size of the serialised record of `p` (a test checks it is exact).
fn wire_size(p: &Pending) -> u32 {
    let optional = p.level.map_or(0, |l| 11 + l.as_str().len())
        + if p.partial { 15 } else { 0 }
        + p.split.map_or(0, |s| {
            11 + match s {
                SplitPart::First => 5,
                SplitPart::Middle => 6,
                SplitPart::Last => 4,
            }
        });
    let n = RECORD_OVERHEAD
        + p.seq.checked_ilog10().unwrap_or(0) as usize
        + 1
        + optional
        + json_escaped_len(&p.line)
        + p.source.wire_strings;
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Records older than the ring, kept elsewhere (the aggregator's history
/// on disk), that a session replays before the ring's: `since=`, `tail=`
/// and a resume cursor reach back through them. `ring_first` is the ring's
/// first index when the session looked: what is replayed is older.
/// Implementations take their own locks after the ring's, never the ring's.
pub trait Older: Send + Sync {
    /// Records with a time at or after `since_ns`, in order.
    fn since(&self, ring_first: u64, since_ns: i64) -> Box<dyn Replay>;
    /// Records of the sources `marks` names, past their marks; and per
    /// source the first sequence number still kept.
    fn resume(
        &self,
        ring_first: u64,
        marks: &HashMap<SourceId, u64>,
    ) -> (Box<dyn Replay>, HashMap<SourceId, u64>);
    /// The newest `n` records that `wanted` takes, oldest first.
    fn tail(
        &self,
        hub: &Hub,
        ring_first: u64,
        n: usize,
        wanted: &mut dyn FnMut(&Entry) -> bool,
    ) -> Vec<Arc<Entry>>;
}

/// Older records read a piece at a time (a block of the disk).
pub trait Replay: Send {
    /// The next records in order; `None` when there are no more. Registers
    /// their sources in `hub` (takes the ring's lock: call without it).
    fn next_chunk(&mut self, hub: &Hub) -> Option<Vec<Arc<Entry>>>;
}

impl Entry {
    /// An entry made from an older record (not in the ring: its index is 0
    /// and it counts for no lag).
    pub fn replayed(p: Pending) -> Entry {
        let wire = wire_size(&p);
        Entry::made(p, 0, wire, 0)
    }

    fn made(p: Pending, idx: u64, wire: u32, start_bytes: u64) -> Entry {
        Entry {
            idx,
            wire,
            source: p.source,
            seq: p.seq,
            ts_ns: p.ts_ns,
            level: p.level,
            line: p.line.into_boxed_str(),
            partial: p.partial,
            split: p.split,
            json: std::sync::OnceLock::new(),
            start_bytes,
        }
    }

    /// The record as JSON (serialised once, on first use).
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| serialise(self))
    }

    /// Size of the serialised record, known without serialising it.
    pub fn wire_size(&self) -> usize {
        self.wire as usize
    }

    /// Memory accounted for in the history: the entry, its line and, once
    /// made, its JSON, each with the allocator's bookkeeping.
    pub fn size(&self) -> usize {
        self.wire_size() + self.line.len() + std::mem::size_of::<Entry>() + 3 * ALLOC_OVERHEAD
    }

    pub fn to_record(&self) -> Record {
        Record {
            sid: self.source.sid,
            seq: self.seq,
            ts: format_ts(self.ts_ns),
            source: self.source.source.clone(),
            level: self.level,
            line: self.line.to_string(),
            partial: self.partial,
            split: self.split,
        }
    }
}

/// What sessions wait on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub next_idx: u64,
    /// No more records will be published (drain finished).
    pub closed: bool,
}

/// Bounds of the history.
#[derive(Clone, Copy, Debug)]
pub struct HubLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
}

/// An entry's source slot and sequence number, kept beside the entries in
/// one array: a session scans these to find the records its filter takes
/// and to advance its marks, touching an entry itself only when its source
/// is selected (an aggregator's session filtered to one of 50 pods skips
/// the other 49 pods' records reading 16 bytes each, in cache-line runs).
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub slot: u32,
    pub seq: u64,
}

pub struct Ring {
    entries: VecDeque<Arc<Entry>>,
    /// `entries[i]`'s slot and seq, same indices.
    meta: VecDeque<Meta>,
    first_idx: u64,
    bytes: usize,
    total_bytes: u64,
    sources: Vec<Arc<SourceInfo>>,
    by_sid: HashMap<SourceId, u32>,
    /// Highest published sequence per slot.
    last_seq: Vec<u64>,
    evicted: u64,
    /// The latest watermark given out ([`Hub::watermark`]): entries
    /// published later are stamped no earlier, so the promise holds for a
    /// line read before the watermark and published after it.
    clock: i64,
}

impl Ring {
    pub fn first_idx(&self) -> u64 {
        self.first_idx
    }
    pub fn next_idx(&self) -> u64 {
        self.first_idx + self.entries.len() as u64
    }
    pub fn get(&self, idx: u64) -> Option<&Arc<Entry>> {
        let off = idx.checked_sub(self.first_idx)?;
        self.entries.get(usize::try_from(off).ok()?)
    }
    /// Cumulative wire bytes (serialised records) published so far.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
    /// Cumulative bytes published before `idx` (`idx` may be the head).
    pub fn bytes_before(&self, idx: u64) -> u64 {
        self.get(idx).map_or(self.total_bytes, |e| e.start_bytes)
    }
    pub fn sources(&self) -> &[Arc<SourceInfo>] {
        &self.sources
    }
    pub fn slot_of(&self, sid: SourceId) -> Option<u32> {
        self.by_sid.get(&sid).copied()
    }
    pub fn last_seq(&self, slot: u32) -> u64 {
        self.last_seq.get(slot as usize).copied().unwrap_or(0)
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
    pub fn iter_from(&self, idx: u64) -> impl Iterator<Item = &Arc<Entry>> {
        self.entries.range(self.offset(idx)..)
    }
    /// The slots and sequence numbers of the entries from `idx` on.
    pub fn meta_from(&self, idx: u64) -> impl Iterator<Item = &Meta> {
        self.meta.range(self.offset(idx)..)
    }
    fn offset(&self, idx: u64) -> usize {
        idx.saturating_sub(self.first_idx)
            .min(self.entries.len() as u64) as usize
    }
}

pub struct Hub {
    ring: Mutex<Ring>,
    head: watch::Sender<Head>,
    /// Wake classes (see the module docs). Locked after `ring` when both are.
    wakers: Mutex<Wakers>,
    limits: HubLimits,
    incarnation: String,
    /// Where records older than the ring are (an aggregator's disk).
    older: std::sync::OnceLock<Arc<dyn Older>>,
}

/// Which sources a wake class takes (the source part of a filter).
pub type Selects = Box<dyn Fn(&Source) -> bool + Send + Sync>;

/// Sessions woken by the same sources.
struct Class {
    tx: watch::Sender<Head>,
    selects: Selects,
}

#[derive(Default)]
struct Wakers {
    /// By the source filter's text.
    classes: HashMap<String, Arc<Class>>,
    /// Per hub slot: the classes that select the source.
    by_slot: Vec<Vec<Arc<Class>>>,
}

impl Wakers {
    /// Forgets the classes no session waits on any more.
    fn prune(&mut self) {
        let before = self.classes.len();
        self.classes.retain(|_, c| c.tx.receiver_count() > 0);
        if self.classes.len() != before {
            for v in &mut self.by_slot {
                v.retain(|c| c.tx.receiver_count() > 0);
            }
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Class>> {
        self.classes.values()
    }
}

impl Hub {
    pub fn new(limits: HubLimits, incarnation: impl Into<String>) -> Arc<Hub> {
        let (head, _) = watch::channel(Head::default());
        Arc::new(Hub {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                meta: VecDeque::new(),
                first_idx: 0,
                bytes: 0,
                total_bytes: 0,
                sources: Vec::new(),
                by_sid: HashMap::new(),
                last_seq: Vec::new(),
                evicted: 0,
                clock: i64::MIN,
            }),
            head,
            wakers: Mutex::new(Wakers::default()),
            limits,
            incarnation: incarnation.into(),
            older: std::sync::OnceLock::new(),
        })
    }

    /// Gives sessions the records older than the ring (once).
    pub fn set_older(&self, older: Arc<dyn Older>) {
        let _ = self.older.set(older);
    }

    pub fn older(&self) -> Option<&Arc<dyn Older>> {
        self.older.get()
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    pub fn limits(&self) -> HubLimits {
        self.limits
    }

    /// Locks the ring. A panic while holding the lock cannot leave the ring
    /// half-updated in a way readers care about, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A time no entry published from now on will be stamped before (the
    /// protocol's `watermark`), and the ring's next index then: once a
    /// session has been sent what the ring held up to that index, nothing
    /// it is sent later is older. Only a hub whose records carry its own
    /// clock's times (a sidecar's) may give one; a later publish is
    /// clamped to it.
    pub fn watermark(&self) -> (i64, u64) {
        let mut ring = self.lock();
        ring.clock = ring.clock.max(now_ns());
        (ring.clock, ring.next_idx())
    }

    pub fn watch(&self) -> watch::Receiver<Head> {
        self.head.subscribe()
    }

    fn wakers(&self) -> MutexGuard<'_, Wakers> {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The watch of the wake class `key` (the source filter's text, the
    /// same text for the same `selects`): changed by publishes of sources
    /// that `selects` takes, and by every [`Hub::wake`] and [`Hub::close`].
    pub fn watch_for(&self, key: &str, selects: impl FnOnce() -> Selects) -> watch::Receiver<Head> {
        // Ring first: the sources cannot change while the class is placed.
        let ring = self.lock();
        let mut w = self.wakers();
        if let Some(c) = w.classes.get(key) {
            return c.tx.subscribe();
        }
        w.prune();
        let (tx, rx) = watch::channel(self.head());
        let class = Arc::new(Class {
            tx,
            selects: selects(),
        });
        w.by_slot.resize_with(ring.sources.len(), Vec::new);
        for (src, slot) in ring.sources.iter().zip(&mut w.by_slot) {
            if (class.selects)(&src.source) {
                slot.push(class.clone());
            }
        }
        w.classes.insert(key.to_string(), class);
        rx
    }

    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// Registers a local source (its id derives from this hub's incarnation).
    pub fn source(&self, source: Source) -> Arc<SourceInfo> {
        let sid = SourceId::derive(&source, &self.incarnation);
        self.source_with_id(source, sid)
    }

    /// Registers a source whose id was chosen upstream (aggregator).
    pub fn source_with_id(&self, source: Source, sid: SourceId) -> Arc<SourceInfo> {
        let mut ring = self.lock();
        if let Some(slot) = ring.by_sid.get(&sid) {
            return ring.sources[*slot as usize].clone();
        }
        let slot = ring.sources.len() as u32;
        let wire_strings = json_escaped_len(&source.namespace)
            + json_escaped_len(&source.pod)
            + json_escaped_len(&source.container)
            + json_escaped_len(&source.file)
            // `,"service":"..."`, only when known.
            + if source.service.is_empty() {
                0
            } else {
                13 + json_escaped_len(&source.service)
            };
        let info = Arc::new(SourceInfo {
            slot,
            sid,
            source,
            next_seq: AtomicU64::new(0),
            wire_strings,
        });
        ring.sources.push(info.clone());
        ring.by_sid.insert(sid, slot);
        ring.last_seq.push(0);
        let mut w = self.wakers();
        let takers = w
            .all()
            .filter(|c| (c.selects)(&info.source))
            .cloned()
            .collect();
        w.by_slot.resize_with(slot as usize, Vec::new);
        w.by_slot.push(takers);
        info
    }

    /// Appends records in order and wakes the sessions.
    pub fn publish(&self, batch: Vec<Pending>) {
        self.publish_with(batch, |_| {});
    }

    /// [`Hub::publish`], handing the new entries to `sink` while the ring is
    /// still locked: before any later publish can evict them, so a reader
    /// that looks at the ring and then at what the sink keeps misses none.
    pub fn publish_with(&self, batch: Vec<Pending>, sink: impl FnOnce(&[Arc<Entry>])) {
        if batch.is_empty() {
            return;
        }
        // Sized before the lock: the line is scanned for escapes.
        // In the same pass, the sources published (a batch usually holds
        // one or a few): the wake classes to change.
        let mut slots: Vec<u32> = Vec::new();
        let wires: Vec<u32> = batch
            .iter()
            .map(|p| {
                if !slots.contains(&p.source.slot) {
                    slots.push(p.source.slot);
                }
                wire_size(p)
            })
            .collect();
        let next_idx = {
            let mut ring = self.lock();
            let first_new = ring.next_idx();
            for (mut p, wire) in batch.into_iter().zip(wires) {
                // Fixed-width times: the clamp leaves the wire size as is.
                p.ts_ns = p.ts_ns.max(ring.clock);
                let idx = ring.next_idx();
                let slot = p.source.slot as usize;
                if let Some(last) = ring.last_seq.get_mut(slot) {
                    *last = (*last).max(p.seq);
                }
                let entry = Entry::made(p, idx, wire, ring.total_bytes);
                let size = entry.size();
                ring.total_bytes += entry.wire_size() as u64;
                ring.bytes += size;
                ring.meta.push_back(Meta {
                    slot: entry.source.slot,
                    seq: entry.seq,
                });
                ring.entries.push_back(Arc::new(entry));
            }
            let added = (ring.next_idx() - first_new) as usize;
            let (a, b) = ring.entries.as_slices();
            if b.len() >= added {
                sink(&b[b.len() - added..]);
            } else {
                let mut new: Vec<Arc<Entry>> = a[a.len() - (added - b.len())..].to_vec();
                new.extend_from_slice(b);
                sink(&new);
            }
            while ring.entries.len() > self.limits.max_lines.max(1)
                || (ring.bytes > self.limits.max_bytes && ring.entries.len() > 1)
            {
                if let Some(old) = ring.entries.pop_front() {
                    ring.meta.pop_front();
                    ring.bytes -= old.size();
                    ring.first_idx += 1;
                    ring.evicted += 1;
                }
            }
            ring.next_idx()
        };
        self.head.send_modify(|h| h.next_idx = next_idx);
        let w = self.wakers();
        if w.classes.is_empty() {
            return;
        }
        let mut woken: Vec<*const Class> = Vec::new();
        for slot in slots {
            for c in w.by_slot.get(slot as usize).into_iter().flatten() {
                // A class that takes several of the batch's sources: once.
                let id = Arc::as_ptr(c);
                if !woken.contains(&id) {
                    woken.push(id);
                    c.tx.send_modify(|h| h.next_idx = next_idx);
                }
            }
        }
    }

    /// Wakes every waiting session without new records, so it looks at the
    /// server's state again (the ping clock, the drain flag). Classes no
    /// session waits on any more are forgotten on the way.
    pub fn wake(&self) {
        self.head.send_modify(|_| {});
        let mut w = self.wakers();
        w.prune();
        for c in w.all() {
            c.tx.send_modify(|_| {});
        }
    }

    /// Marks the end of the stream: sessions finish once they reach the head.
    pub fn close(&self) {
        self.head.send_modify(|h| h.closed = true);
        for c in self.wakers().all() {
            c.tx.send_modify(|h| h.closed = true);
        }
    }
}

fn serialise(p: &Entry) -> Bytes {
    let rec = RecordRef {
        sid: p.source.sid,
        seq: p.seq,
        ts: format_ts(p.ts_ns),
        source: &p.source.source,
        level: p.level,
        line: &p.line,
        partial: p.partial,
        split: p.split,
    };
    // Sized up front, so the history holds no doubled Vec capacity.
    let mut out = Vec::with_capacity(p.wire_size());
    // Serialising plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &rec);
    out.shrink_to_fit();
    Bytes::from(out)
}

/// Borrowing twin of [`Record`] used to serialise without copies; a golden
/// test checks both produce the same JSON.
#[derive(serde::Serialize)]
struct RecordRef<'a> {
    sid: SourceId,
    seq: u64,
    ts: String,
    #[serde(flatten)]
    source: &'a Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<Level>,
    line: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    split: Option<SplitPart>,
}

/// RFC 3339 UTC with nanoseconds: one formatter for the wire and LogQL's
/// `{{__timestamp__}}`.
pub use logstream_logql::format_ts;

/// Parses RFC 3339 into nanoseconds since the epoch.
pub fn parse_ts(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A hub of 100 records / 1 MiB, for tests that only need a few.
    pub fn small_hub() -> Arc<Hub> {
        Hub::new(
            HubLimits {
                max_lines: 100,
                max_bytes: 1 << 20,
            },
            "t",
        )
    }

    pub fn src(file: &str) -> Source {
        Source {
            namespace: "ns".into(),
            pod: "pod".into(),
            container: "app".into(),
            file: file.into(),
            service: String::new(),
        }
    }

    pub fn publish_lines(hub: &Hub, info: &Arc<SourceInfo>, lines: &[&str]) {
        hub.publish(
            lines
                .iter()
                .map(|l| Pending {
                    source: info.clone(),
                    seq: info.next_seq(),
                    ts_ns: now_ns(),
                    level: None,
                    line: l.to_string(),
                    partial: false,
                    split: None,
                })
                .collect(),
        );
    }

    #[test]
    fn wake_classes_nobody_waits_on_are_forgotten() {
        let hub = small_hub();
        let a = hub.source(src("a.log"));
        let of_a = || -> Selects { Box::new(|s: &Source| s.file == "a.log") };
        let w1 = hub.watch_for("a", of_a);
        let w2 = hub.watch_for("a", || unreachable!("one class per key"));
        assert_eq!(hub.wakers().classes.len(), 1);
        assert_eq!(hub.wakers().by_slot[a.slot as usize].len(), 1);
        drop((w1, w2));
        hub.wake();
        assert!(hub.wakers().classes.is_empty());
        assert!(hub.wakers().by_slot.iter().all(Vec::is_empty));
        // And a publish wakes nothing it should not.
        publish_lines(&hub, &a, &["x"]);
        assert_eq!(hub.head().next_idx, 1);
    }

    #[test]
    fn ring_is_bounded_by_lines() {
        let hub = Hub::new(
            HubLimits {
                max_lines: 3,
                max_bytes: 1 << 20,
            },
            "t",
        );
        let a = hub.source(src("a.log"));
        publish_lines(&hub, &a, &["1", "2", "3", "4", "5"]);
        let ring = hub.lock();
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.first_idx(), 2);
        assert_eq!(ring.get(2).unwrap().line.as_ref(), "3");
        assert_eq!(ring.evicted(), 2);
        assert_eq!(hub.head().next_idx, 5);
    }

    #[test]
    fn ring_is_bounded_by_bytes() {
        let hub = Hub::new(
            HubLimits {
                max_lines: 1000,
                max_bytes: 2000,
            },
            "t",
        );
        let a = hub.source(src("a.log"));
        let long = "x".repeat(300);
        for _ in 0..20 {
            publish_lines(&hub, &a, &[&long]);
        }
        let ring = hub.lock();
        assert!(ring.bytes() <= 2000, "{}", ring.bytes());
        assert!(!ring.is_empty() && ring.len() < 20);
    }

    /// The history counts what a record costs on the wire and in memory:
    /// escapes included (a control byte is six bytes of JSON).
    #[test]
    fn the_wire_size_counts_json_escapes() {
        let hub = small_hub();
        let a = hub.source(src("a.log"));
        // A source with a service (an escape in it too).
        let b = hub.source(Source {
            service: "shop \"api\"".into(),
            ..src("b.log")
        });
        publish_lines(&hub, &b, &["with a service"]);
        let lines = [
            "plain text".to_string(),
            "\u{1}".repeat(1000),
            "\"quoted\" \\ back\tslash\n".repeat(50),
            "é€ multi-byte".repeat(40),
        ];
        for l in &lines {
            publish_lines(&hub, &a, &[l]);
        }
        for (i, (level, partial, split)) in [
            (Some(Level::Error), true, Some(SplitPart::Middle)),
            (Some(Level::Warn), false, Some(SplitPart::First)),
            (None, true, Some(SplitPart::Last)),
        ]
        .into_iter()
        .enumerate()
        {
            // Sequence numbers of every width.
            for _ in 0..(i * 5000) {
                a.next_seq();
            }
            hub.publish(vec![Pending {
                source: a.clone(),
                seq: a.next_seq(),
                ts_ns: now_ns(),
                level,
                line: "with options".into(),
                partial,
                split,
            }]);
        }
        let ring = hub.lock();
        for e in ring.iter_from(ring.first_idx()) {
            assert_eq!(e.json().len(), e.wire_size(), "{:?}", e.line);
        }
    }

    #[test]
    fn serialised_entry_matches_record_type() {
        let hub = Hub::new(
            HubLimits {
                max_lines: 10,
                max_bytes: 1 << 20,
            },
            "t",
        );
        let a = hub.source(src("a.log"));
        hub.publish(vec![Pending {
            source: a.clone(),
            seq: a.next_seq(),
            ts_ns: 1_700_000_000_123_456_789,
            level: Some(Level::Warn),
            line: "quote \" and \u{1}".into(),
            partial: true,
            split: Some(SplitPart::Last),
        }]);
        let ring = hub.lock();
        let e = ring.get(0).unwrap();
        let rec: Record = serde_json::from_slice(e.json()).unwrap();
        assert_eq!(rec.seq, 1);
        assert_eq!(rec.ts, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(format_ts(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(format_ts(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(parse_ts(&rec.ts), Some(1_700_000_000_123_456_789));
        assert_eq!(rec.level, Some(Level::Warn));
        assert!(rec.partial);
        assert_eq!(rec.split, Some(SplitPart::Last));
        assert_eq!(rec.line, "quote \" and \u{1}");
        assert_eq!(rec.source, src("a.log"));
    }
}
