//! One subscriber's view of the hub: its position, filter and cursor, and the
//! slow-client policy. Transports (WebSocket, SSE, plain HTTP) drive it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::filter::Filter;
use crate::hub::{Entry, Hub, Older, Replay, Ring};
use crate::protocol::{Cursor, GapReason, Subscribe};

/// What to do with a client that falls behind by more than its queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowPolicy {
    /// Skip to the live head and tell the client with a `gap` message.
    #[default]
    Gap,
    /// Close the connection (1008).
    Close,
}

/// Per-session bounds.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Most bytes of records (as sent) a client may lag behind the head...
    pub queue_bytes: u64,
    /// ...for longer than this before the slow-client policy applies, so a
    /// burst that a healthy client absorbs in a moment never costs it records.
    pub slow_grace: Duration,
    pub policy: SlowPolicy,
    /// Most records in one frame.
    pub batch_records: usize,
    /// Most bytes in one frame (soft: one record may exceed it).
    pub batch_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            queue_bytes: 4 << 20,
            slow_grace: Duration::from_secs(2),
            policy: SlowPolicy::Gap,
            batch_records: 512,
            batch_bytes: 64 << 10,
        }
    }
}

/// Result of one pull.
#[derive(Debug)]
pub enum Pull {
    /// Records in order (may be empty when only filtered records were scanned
    /// and `more` is set).
    Batch {
        entries: Vec<Arc<Entry>>,
        more: bool,
    },
    /// Records were skipped.
    Gap {
        missed: u64,
        reason: GapReason,
        cursor: Cursor,
    },
    /// The client is too slow and the policy says close.
    TooSlow,
    /// Nothing new: wait for the head to move.
    Idle,
    /// The hub is closed and everything was delivered.
    Ended,
}

/// Upper bound of entries examined under the lock per pull, so one client
/// with a rare filter cannot hold the lock across the whole history.
const SCAN_LIMIT: usize = 4096;

/// Ring positions every batch ends at (when it gets that far).
const BATCH_GRID: u64 = 512;

pub struct Session {
    hub: Arc<Hub>,
    pub filter: Filter,
    limits: SessionLimits,
    next: u64,
    /// Highest sequence seen per hub slot.
    seen: Vec<u64>,
    /// Marks of a resume cursor for sources this hub does not know (kept so
    /// the cursor handed back never forgets them). Boxed: rare.
    foreign: Option<Box<Cursor>>,
    /// A gap decided but not yet reported. Boxed: rare, and every idle
    /// connection holds its session.
    pending_gap: Option<Box<(u64, GapReason, Cursor)>>,
    /// Since when the client has been more than `queue_bytes` behind.
    behind_since: Option<Instant>,
    /// Per hub slot: does the filter's source part match (0: not asked yet,
    /// 1: yes, 2: no)? Pod, container and file filters then cost one lookup
    /// per record instead of a regex match.
    source_ok: Vec<u8>,
    /// Records older than the ring still to send first (an aggregator's
    /// history on disk, [`Older`]). Boxed: rare.
    replay: Option<Box<ReplayState>>,
    /// Watermarks (protocol 1.1), once the client asked for one. Boxed:
    /// only an aggregator's connections ask.
    marks: Option<Box<Marks>>,
    /// Resubscribed since the transport last asked (it then watches anew).
    resubscribed: bool,
}

/// A connection's watermark state (see [`Session::begin_round`]).
#[derive(Default)]
struct Marks {
    /// One is asked for and not yet given.
    asked: bool,
    /// This round's: the time and the ring's head when the round began.
    stamp: Option<(i64, u64)>,
    /// This round sent records and none carried the watermark.
    unmarked: bool,
}

struct ReplayState {
    src: Option<Box<dyn Replay>>,
    buf: VecDeque<Arc<Entry>>,
}

impl Session {
    /// Positions a new session according to `sub` (`resume`, `tail`, `since`).
    /// What to wait on for this session's records: the hub's watch, or its
    /// filter's wake class when the filter names sources. Asked again after
    /// a resubscribe.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<crate::hub::Head> {
        match self.filter.source_key() {
            None => self.hub.watch(),
            Some(key) => self.hub.watch_for(&key, || {
                // The source part only: a class holds no grep pattern.
                let f = self.filter.source_part();
                Box::new(move |s| f.matches_source(s))
            }),
        }
    }

    /// The client asked for a watermark: given at the end of the next
    /// round, and one ends every round that sends records from now on.
    pub fn ask_watermark(&mut self) {
        self.marks.get_or_insert_with(Box::default).asked = true;
    }

    /// A transport starts pulling (until Idle): once watermarks were asked
    /// for, stamps one — taken before the pull, it covers what the ring
    /// holds, and what is published later is stamped no earlier
    /// ([`Hub::watermark`]).
    pub fn begin_round(&mut self) {
        if let Some(m) = &mut self.marks {
            m.stamp = Some(self.hub.watermark());
            m.unmarked = false;
        }
    }

    /// For a batch about to be sent: the watermark it carries, when it
    /// reaches what the ring held at the round's stamp.
    pub fn batch_watermark(&mut self) -> Option<i64> {
        let m = self.marks.as_deref_mut()?;
        match m.stamp {
            Some((ts, head)) if self.next >= head => {
                m.asked = false;
                m.unmarked = false;
                Some(ts)
            }
            _ => {
                m.unmarked = true;
                None
            }
        }
    }

    /// The round reached Idle: a watermark to send on its own, if one was
    /// asked for or the round's records carried none.
    pub fn end_round(&mut self) -> Option<i64> {
        let m = self.marks.as_deref_mut()?;
        let (ts, _) = m.stamp.take()?;
        if m.asked || m.unmarked {
            m.asked = false;
            m.unmarked = false;
            return Some(ts);
        }
        None
    }

    /// The bounds this session runs under.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn new(hub: Arc<Hub>, sub: &Subscribe, filter: Filter, limits: SessionLimits) -> Session {
        let mut s = Session {
            hub,
            filter,
            limits,
            next: 0,
            seen: Vec::new(),
            foreign: None,
            pending_gap: None,
            behind_since: None,
            source_ok: Vec::new(),
            replay: None,
            marks: None,
            resubscribed: false,
        };
        s.reposition(sub);
        s
    }

    /// Applies a new subscription to a running session. A `resume` moves the
    /// position; otherwise `tail`/`since` replay history from the current head.
    pub fn resubscribe(&mut self, sub: &Subscribe, filter: Filter) {
        self.filter = filter;
        self.source_ok.clear();
        self.seen.clear();
        self.foreign = None;
        self.pending_gap = None;
        self.resubscribed = true;
        self.reposition(sub);
    }

    /// Whether [`Session::resubscribe`] ran since the last call: its filter
    /// may wait on another wake class ([`Session::watch`]).
    pub fn take_resubscribed(&mut self) -> bool {
        std::mem::take(&mut self.resubscribed)
    }

    fn reposition(&mut self, sub: &Subscribe) {
        let hub = self.hub.clone();
        self.replay = None;
        let older = hub.older().cloned();
        // `tail=` that the ring cannot fill: how many more, before which index.
        let mut tail_more: Option<(usize, u64)> = None;
        {
            let ring = hub.lock();
            self.seen = vec![0; ring.sources().len()];
            let head = ring.next_idx();
            if let Some(cursor) = &sub.resume {
                self.resume_from(&ring, cursor, older.as_ref());
                return;
            }
            let start = if let Some(n) = sub.tail {
                let mut count = 0;
                let mut idx = head;
                while idx > ring.first_idx() && count < n {
                    idx -= 1;
                    if let Some(e) = ring.get(idx)
                        && self.filter.matches(e)
                    {
                        count += 1;
                    }
                }
                if count < n && older.is_some() {
                    tail_more = Some((n - count, ring.first_idx()));
                }
                // Skip non-matching entries in front of the first match.
                while idx < head && ring.get(idx).is_some_and(|e| !self.filter.matches(e)) {
                    idx += 1;
                }
                idx
            } else if let Some(since) = self.filter.since_ns {
                if let Some(older) = &older
                    && ring.get(ring.first_idx()).is_none_or(|e| e.ts_ns > since)
                {
                    self.replay = Some(Box::new(ReplayState {
                        src: Some(older.since(ring.first_idx(), since)),
                        buf: VecDeque::new(),
                    }));
                }
                ring.iter_from(ring.first_idx())
                    .find(|e| e.ts_ns >= since)
                    .map_or(head, |e| e.idx)
            } else {
                head
            };
            self.next = start;
            if self.replay.is_none() && tail_more.is_none() {
                // The cursor at `start`: the last sequence of every source
                // before it. (With older records to replay, every mark stays
                // 0: what is sent is exactly the replay, then the ring from
                // `start`.)
                // Only the sources the filter selects: a session filtered
                // to one pod hands back a cursor of that pod's sources.
                let selected = self.selected(&ring);
                for (slot, seq) in self.seen.iter_mut().enumerate() {
                    if selected[slot] {
                        *seq = ring.last_seq(slot as u32);
                    }
                }
                let mut lowered = vec![false; self.seen.len()];
                for m in ring.meta_from(start) {
                    let slot = m.slot as usize;
                    if selected[slot] && !lowered[slot] {
                        lowered[slot] = true;
                        self.seen[slot] = m.seq.saturating_sub(1);
                    }
                }
            }
        }
        // Read off the disk without the ring's lock (it registers sources).
        if let (Some((n, first)), Some(older)) = (tail_more, older) {
            let filter = &self.filter;
            let pre = older.tail(&hub, first, n, &mut |e| filter.matches(e));
            if !pre.is_empty() {
                self.replay = Some(Box::new(ReplayState {
                    src: None,
                    buf: pre.into(),
                }));
            }
        }
    }

    fn resume_from(&mut self, ring: &Ring, cursor: &Cursor, older: Option<&Arc<dyn Older>>) {
        // What the disk still has of the cursor's sources, replayed first.
        let on_disk: HashMap<crate::protocol::SourceId, u64> = match older {
            Some(older) => {
                let marks: HashMap<_, _> = cursor
                    .0
                    .iter()
                    .filter(|(_, seq)| **seq > 0)
                    .map(|(sid, seq)| (*sid, *seq))
                    .collect();
                let (replay, first) = older.resume(ring.first_idx(), &marks);
                self.replay = Some(Box::new(ReplayState {
                    src: Some(replay),
                    buf: VecDeque::new(),
                }));
                first
            }
            None => HashMap::new(),
        };
        for (sid, seq) in &cursor.0 {
            match ring.slot_of(*sid) {
                Some(slot) => self.seen[slot as usize] = *seq,
                None => {
                    self.foreign
                        .get_or_insert_with(Default::default)
                        .advance(*sid, *seq);
                }
            }
        }
        // Records that left the history before the client came back (of
        // the sources the filter selects: the others are not sent).
        let selected = self.selected(ring);
        let mut oldest: Vec<Option<u64>> = vec![None; self.seen.len()];
        let mut start = None;
        for (i, m) in ring.meta_from(ring.first_idx()).enumerate() {
            let slot = m.slot as usize;
            if !selected[slot] {
                continue;
            }
            if oldest[slot].is_none() {
                oldest[slot] = Some(m.seq);
            }
            if start.is_none() && m.seq > self.seen[slot] {
                start = Some(ring.first_idx() + i as u64);
            }
        }
        let mut missed = 0;
        for (slot, seen) in self.seen.iter().enumerate() {
            if !selected[slot] {
                continue;
            }
            let in_ring = oldest[slot].unwrap_or(ring.last_seq(slot as u32) + 1);
            let first_kept = ring
                .sources()
                .get(slot)
                .and_then(|info| on_disk.get(&info.sid))
                .map_or(in_ring, |d| in_ring.min(*d));
            if *seen > 0 || cursor.0.is_empty() {
                missed += first_kept.saturating_sub(seen + 1);
            }
        }
        // Sources only the disk still knows (the ring evicted all of them).
        if let Some(foreign) = &self.foreign {
            for (sid, seen) in &foreign.0 {
                if let Some(first) = on_disk.get(sid) {
                    missed += first.saturating_sub(seen + 1);
                }
            }
        }
        if missed > 0 {
            self.pending_gap = Some(Box::new((
                missed,
                GapReason::Evicted,
                self.cursor_locked(ring),
            )));
        }
        self.next = start.unwrap_or(ring.next_idx());
    }

    /// The position of this session as a cursor.
    pub fn cursor(&self) -> Cursor {
        let ring = self.hub.lock();
        self.cursor_locked(&ring)
    }

    fn cursor_locked(&self, ring: &Ring) -> Cursor {
        let mut c = self.foreign.as_deref().cloned().unwrap_or_default();
        for (slot, seq) in self.seen.iter().enumerate() {
            if *seq > 0
                && let Some(info) = ring.sources().get(slot)
            {
                c.advance(info.sid, *seq);
            }
        }
        c
    }

    /// Does the filter's source part take the source in `slot`? Asked once
    /// per slot.
    fn selects(&mut self, slot: usize, source: &crate::protocol::Source) -> bool {
        if self.source_ok.len() <= slot {
            self.source_ok.resize(slot + 1, 0);
        }
        match self.source_ok[slot] {
            0 => {
                let ok = self.filter.matches_source(source);
                self.source_ok[slot] = if ok { 1 } else { 2 };
                ok
            }
            v => v == 1,
        }
    }

    /// [`Session::selects`] by slot alone (the ring names its source).
    #[inline]
    fn selects_slot(&mut self, ring: &Ring, slot: usize) -> bool {
        match self.source_ok.get(slot) {
            Some(1) => true,
            Some(2) => false,
            _ => ring
                .sources()
                .get(slot)
                .is_some_and(|info| self.selects(slot, &info.source)),
        }
    }

    /// Per slot of `seen`: does the filter select its source?
    fn selected(&mut self, ring: &Ring) -> Vec<bool> {
        (0..self.seen.len())
            .map(|slot| self.selects_slot(ring, slot))
            .collect()
    }

    /// Applies the slow-client policy: `Gap` (the session now stands at the
    /// head) or `TooSlow` once the client has been more than `queue_bytes`
    /// behind for `slow_grace`.
    fn judge(&mut self, ring: &Ring) -> Option<Pull> {
        if self.next < ring.first_idx() {
            return None; // an eviction gap comes first (pull)
        }
        let lag = ring.total_bytes() - ring.bytes_before(self.next);
        let now = Instant::now();
        if lag <= self.limits.queue_bytes {
            self.behind_since = None;
            return None;
        }
        let since = *self.behind_since.get_or_insert(now);
        if now.duration_since(since) < self.limits.slow_grace {
            return None;
        }
        self.behind_since = None;
        if self.limits.policy == SlowPolicy::Close {
            return Some(Pull::TooSlow);
        }
        let cursor = self.cursor_locked(ring);
        let head = ring.next_idx();
        let missed = head - self.next;
        for m in ring.meta_from(self.next) {
            let slot = m.slot as usize;
            if self.selects_slot(ring, slot) {
                self.seen[slot] = self.seen[slot].max(m.seq);
            }
        }
        self.next = head;
        Some(Pull::Gap {
            missed,
            reason: GapReason::SlowClient,
            cursor,
        })
    }

    /// The slow-client check between pulls, for a transport whose send is
    /// taking long: `true` when the client is to be closed. A gap decided
    /// here is reported by the next [`Session::pull`], before any record.
    pub fn too_slow(&mut self) -> bool {
        if self.pending_gap.is_some() {
            return false;
        }
        let hub = self.hub.clone();
        let ring = hub.lock();
        match self.judge(&ring) {
            Some(Pull::TooSlow) => true,
            Some(Pull::Gap {
                missed,
                reason,
                cursor,
            }) => {
                self.pending_gap = Some(Box::new((missed, reason, cursor)));
                false
            }
            _ => false,
        }
    }

    /// The mark of an entry's source (a resume cursor's, if it named the
    /// source before the hub knew it).
    fn mark_of(&mut self, e: &Entry) -> &mut u64 {
        let slot = e.source.slot as usize;
        if self.seen.len() <= slot {
            self.seen.resize(slot + 1, 0);
        }
        if let Some(m) = self
            .foreign
            .as_mut()
            .and_then(|f| f.0.remove(&e.source.sid))
        {
            self.seen[slot] = self.seen[slot].max(m);
        }
        &mut self.seen[slot]
    }

    /// A batch of the older records still to replay, if any. Reads the
    /// disk (a block at a time) outside the ring's lock.
    fn pull_replay(&mut self) -> Option<Pull> {
        let mut r = self.replay.take()?;
        while r.buf.is_empty() {
            let chunk = r.src.as_mut().and_then(|s| s.next_chunk(&self.hub))?;
            r.buf.extend(chunk);
        }
        let mut entries = Vec::new();
        let mut bytes = 0;
        while let Some(e) = r.buf.pop_front() {
            if !self.selects(e.source.slot as usize, &e.source.source) {
                continue;
            }
            let mark = self.mark_of(&e);
            if e.seq <= *mark {
                continue;
            }
            *mark = e.seq;
            if self.filter.matches_record(&e) {
                bytes += e.wire_size();
                entries.push(e);
            }
            if entries.len() >= self.limits.batch_records || bytes >= self.limits.batch_bytes {
                break;
            }
        }
        self.replay = Some(r);
        Some(Pull::Batch {
            entries,
            more: true,
        })
    }

    /// Takes the next step for this client.
    pub fn pull(&mut self) -> Pull {
        if let Some(gap) = self.pending_gap.take() {
            let (missed, reason, cursor) = *gap;
            return Pull::Gap {
                missed,
                reason,
                cursor,
            };
        }
        if let Some(batch) = self.pull_replay() {
            return batch;
        }
        let closed = self.hub.head().closed;
        let hub = self.hub.clone();
        let ring = hub.lock();
        if self.seen.len() < ring.sources().len() {
            // Sources that appeared since: a resume cursor may already hold
            // their marks (an aggregator replica that met them later).
            let known = self.seen.len();
            self.seen.resize(ring.sources().len(), 0);
            for (slot, info) in ring.sources().iter().enumerate().skip(known) {
                if let Some(seq) = self.foreign.as_mut().and_then(|f| f.0.remove(&info.sid)) {
                    self.seen[slot] = seq;
                }
            }
        }
        let head = ring.next_idx();
        if self.next < ring.first_idx() {
            let cursor = self.cursor_locked(&ring);
            let missed = ring.first_idx() - self.next;
            self.next = ring.first_idx();
            return Pull::Gap {
                missed,
                reason: GapReason::Evicted,
                cursor,
            };
        }
        if let Some(verdict) = self.judge(&ring) {
            return verdict;
        }
        if self.next >= head {
            return if closed { Pull::Ended } else { Pull::Idle };
        }
        let mut entries = Vec::new();
        let mut bytes = 0;
        // The compact (slot, seq) array first: an entry is looked at only
        // when its source is selected. Every slot in the ring has its mark
        // (`seen` was sized to the sources above).
        let start = self.next;
        for (scanned, m) in ring.meta_from(start).enumerate() {
            if entries.len() >= self.limits.batch_records
                || bytes >= self.limits.batch_bytes
                || scanned >= SCAN_LIMIT
            {
                break;
            }
            let idx = start + scanned as u64;
            self.next = idx + 1;
            // Batches end on a grid of the ring as well as at the limits:
            // clients that read the same records are then cut the same
            // way whenever they started, and are sent the same bytes (one
            // rendering and compression for all, server/compress.rs).
            let grid = (idx + 1).is_multiple_of(BATCH_GRID);
            let slot = m.slot as usize;
            if !self.selects_slot(&ring, slot) {
                // Another source's: its mark is not this session's to keep.
                if grid {
                    break;
                }
                continue;
            }
            if m.seq <= self.seen[slot] {
                continue; // covered by the resume cursor (or a replay)
            }
            self.seen[slot] = m.seq;
            if let Some(e) = ring.get(idx)
                && self.filter.matches_record(e)
            {
                bytes += e.wire_size();
                entries.push(e.clone());
            }
            if grid {
                break;
            }
        }
        Pull::Batch {
            entries,
            more: self.next < head,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubLimits;
    use crate::hub::tests::{publish_lines, src};

    fn hub(max_lines: usize) -> Arc<Hub> {
        Hub::new(
            HubLimits {
                max_lines,
                max_bytes: 1 << 30,
            },
            "t",
        )
    }

    fn session(hub: &Arc<Hub>, sub: Subscribe) -> Session {
        let f = Filter::compile(&sub).unwrap();
        Session::new(hub.clone(), &sub, f, SessionLimits::default())
    }

    fn drain(s: &mut Session) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match s.pull() {
                Pull::Batch { entries, .. } => {
                    out.extend(entries.iter().map(|e| e.line.to_string()))
                }
                Pull::Idle | Pull::Ended => return out,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_session_of_some_sources_is_woken_by_them_only() {
        let h = hub(100);
        let a = h.source(src("a.log"));
        let of_b = Subscribe {
            file: Some("b*.log".into()),
            ..Default::default()
        };
        let s = session(&h, of_b.clone());
        let mut w = s.watch();
        let all = session(&h, Subscribe::default());
        let mut w_all = all.watch();
        publish_lines(&h, &a, &["a1"]);
        assert!(!w.has_changed().unwrap(), "woken by another file");
        assert!(w_all.has_changed().unwrap());
        w_all.borrow_and_update();
        // A source that appears after the session is taken in.
        let b = h.source(src("b.log"));
        publish_lines(&h, &b, &["b1"]);
        assert!(w.has_changed().unwrap());
        w.borrow_and_update();
        // A batch of several sources wakes the class once, and every
        // session of the same filter shares it.
        let b2 = h.source(src("b2.log"));
        let twin = session(&h, of_b);
        let mut w_twin = twin.watch();
        h.publish(
            [&b, &b2, &a]
                .into_iter()
                .map(|s| crate::hub::Pending {
                    source: s.clone(),
                    seq: s.next_seq(),
                    ts_ns: crate::hub::now_ns(),
                    level: None,
                    line: "x".into(),
                    partial: false,
                    split: None,
                })
                .collect(),
        );
        assert!(w.has_changed().unwrap() && w_twin.has_changed().unwrap());
        w.borrow_and_update();
        w_twin.borrow_and_update();
        // The clock and the end wake every session.
        h.wake();
        assert!(w.has_changed().unwrap());
        w.borrow_and_update();
        h.close();
        assert!(w.has_changed().unwrap() && w.borrow_and_update().closed);
    }

    #[test]
    fn live_session_sees_only_new_records() {
        let h = hub(100);
        let a = h.source(src("a.log"));
        publish_lines(&h, &a, &["old"]);
        let mut s = session(&h, Subscribe::default());
        assert!(matches!(s.pull(), Pull::Idle));
        publish_lines(&h, &a, &["new1", "new2"]);
        assert_eq!(drain(&mut s), ["new1", "new2"]);
    }

    #[test]
    fn tail_counts_matching_records_only() {
        let h = hub(100);
        let a = h.source(src("a.log"));
        let b = h.source(src("b.log"));
        publish_lines(&h, &a, &["a1", "a2"]);
        publish_lines(&h, &b, &["b1"]);
        publish_lines(&h, &a, &["a3"]);
        let mut s = session(
            &h,
            Subscribe {
                tail: Some(2),
                file: Some("a.log".into()),
                ..Default::default()
            },
        );
        assert_eq!(drain(&mut s), ["a2", "a3"]);
    }

    #[test]
    fn resume_gives_no_gap_and_no_duplicate() {
        let h = hub(100);
        let a = h.source(src("a.log"));
        let b = h.source(src("b.log"));
        let mut s = session(&h, Subscribe::default());
        publish_lines(&h, &a, &["a1", "a2"]);
        publish_lines(&h, &b, &["b1"]);
        assert_eq!(drain(&mut s), ["a1", "a2", "b1"]);
        let cursor = s.cursor();
        publish_lines(&h, &a, &["a3"]);
        publish_lines(&h, &b, &["b2"]);
        let mut r = session(
            &h,
            Subscribe {
                resume: Some(cursor),
                ..Default::default()
            },
        );
        assert_eq!(drain(&mut r), ["a3", "b2"]);
    }

    #[test]
    fn a_session_of_some_sources_keeps_marks_of_those_only() {
        let h = hub(100);
        let a = h.source(src("a.log"));
        let b = h.source(src("b.log"));
        publish_lines(&h, &a, &["a1"]);
        publish_lines(&h, &b, &["b1"]);
        let of_a = Subscribe {
            file: Some("a.log".into()),
            ..Default::default()
        };
        // Live and with a tail alike.
        let mut live = session(&h, of_a.clone());
        let mut tail = session(
            &h,
            Subscribe {
                tail: Some(5),
                ..of_a.clone()
            },
        );
        publish_lines(&h, &b, &["b2", "b3"]);
        publish_lines(&h, &a, &["a2"]);
        assert_eq!(drain(&mut live), ["a2"]);
        assert_eq!(drain(&mut tail), ["a1", "a2"]);
        for s in [&live, &tail] {
            let c = s.cursor();
            assert_eq!(c.0.len(), 1, "{c}");
            assert_eq!(c.get(a.sid), 2);
        }
        // Resumed: no gap for the other file's records, none lost or
        // repeated of its own.
        let cursor = live.cursor();
        publish_lines(&h, &b, &["b4"]);
        publish_lines(&h, &a, &["a3"]);
        let mut r = session(
            &h,
            Subscribe {
                resume: Some(cursor),
                ..of_a.clone()
            },
        );
        assert_eq!(drain(&mut r), ["a3"]);
        assert_eq!(r.cursor().0.len(), 1);
        // A resume cursor's marks of sources the filter leaves out are
        // handed back unchanged.
        let mut both = Cursor::default();
        both.advance(a.sid, 3);
        both.advance(b.sid, 1);
        let mut r = session(
            &h,
            Subscribe {
                resume: Some(both),
                ..of_a
            },
        );
        publish_lines(&h, &b, &["b5"]);
        publish_lines(&h, &a, &["a4"]);
        assert_eq!(drain(&mut r), ["a4"]);
        let c = r.cursor();
        assert_eq!((c.get(a.sid), c.get(b.sid)), (4, 1), "{c}");
    }

    #[test]
    fn resume_with_interleaved_cursor_skips_covered_records() {
        let h = hub(100);
        let a = h.source(src("a.log"));
        let b = h.source(src("b.log"));
        publish_lines(&h, &a, &["a1"]);
        publish_lines(&h, &b, &["b1", "b2"]);
        publish_lines(&h, &a, &["a2"]);
        // A cursor from another replica that saw a1 and b1..b2 but not a2.
        let mut c = Cursor::default();
        c.advance(a.sid, 1);
        c.advance(b.sid, 2);
        let mut r = session(
            &h,
            Subscribe {
                resume: Some(c),
                ..Default::default()
            },
        );
        assert_eq!(drain(&mut r), ["a2"]);
    }

    #[test]
    fn resume_reports_evicted_records() {
        let h = hub(3);
        let a = h.source(src("a.log"));
        publish_lines(&h, &a, &["1"]);
        let mut s = session(
            &h,
            Subscribe {
                tail: Some(10),
                ..Default::default()
            },
        );
        assert_eq!(drain(&mut s), ["1"]);
        let c = s.cursor();
        publish_lines(&h, &a, &["2", "3", "4", "5", "6"]);
        let mut r = session(
            &h,
            Subscribe {
                resume: Some(c),
                ..Default::default()
            },
        );
        match r.pull() {
            Pull::Gap { missed, reason, .. } => {
                assert_eq!(missed, 2);
                assert_eq!(reason, GapReason::Evicted);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(drain(&mut r), ["4", "5", "6"]);
    }

    #[test]
    fn unknown_sources_in_cursor_are_kept() {
        let h = hub(10);
        let a = h.source(src("a.log"));
        let mut c = Cursor::default();
        c.advance(crate::protocol::SourceId(42), 9);
        let mut s = session(
            &h,
            Subscribe {
                resume: Some(c),
                ..Default::default()
            },
        );
        publish_lines(&h, &a, &["x"]);
        assert_eq!(drain(&mut s), ["x"]);
        assert_eq!(s.cursor().get(crate::protocol::SourceId(42)), 9);
        assert_eq!(s.cursor().get(a.sid), 1);
    }

    #[test]
    fn marks_for_sources_that_appear_later_are_honoured() {
        // A client moved from a replica that already knew source b.
        let h = hub(100);
        let a = h.source(src("a.log"));
        let b_sid = crate::protocol::SourceId(0xb);
        let mut c = Cursor::default();
        c.advance(b_sid, 2);
        let mut s = session(
            &h,
            Subscribe {
                resume: Some(c),
                ..Default::default()
            },
        );
        publish_lines(&h, &a, &["a1"]);
        let b = h.source_with_id(src("b.log"), b_sid);
        for (seq, line) in [(1, "b1"), (2, "b2"), (3, "b3")] {
            h.publish(vec![crate::hub::Pending {
                source: b.clone(),
                seq,
                ts_ns: 0,
                level: None,
                line: line.into(),
                partial: false,
                split: None,
            }]);
        }
        assert_eq!(drain(&mut s), ["a1", "b3"]);
        assert_eq!(s.cursor().get(b_sid), 3);
    }

    #[test]
    fn slow_client_gets_gap_then_continues() {
        let h = hub(100_000);
        let a = h.source(src("a.log"));
        let sub = Subscribe::default();
        let f = Filter::compile(&sub).unwrap();
        let limits = SessionLimits {
            queue_bytes: 4096,
            slow_grace: Duration::ZERO,
            ..Default::default()
        };
        let mut s = Session::new(h.clone(), &sub, f, limits);
        let lines: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        publish_lines(&h, &a, &refs);
        match s.pull() {
            Pull::Gap {
                missed,
                reason,
                cursor,
            } => {
                assert_eq!(missed, 200);
                assert_eq!(reason, GapReason::SlowClient);
                assert_eq!(cursor.get(a.sid), 0);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.cursor().get(a.sid), 200);
        publish_lines(&h, &a, &["after"]);
        assert_eq!(drain(&mut s), ["after"]);
        // The same client under the close policy is closed instead.
        let f = Filter::compile(&sub).unwrap();
        let limits = SessionLimits {
            queue_bytes: 4096,
            slow_grace: Duration::ZERO,
            policy: SlowPolicy::Close,
            ..Default::default()
        };
        let mut c = Session::new(h.clone(), &sub, f, limits);
        publish_lines(&h, &a, &refs);
        assert!(matches!(c.pull(), Pull::TooSlow));
    }

    #[test]
    fn a_burst_absorbed_within_the_grace_costs_nothing() {
        let h = hub(100_000);
        let a = h.source(src("a.log"));
        let sub = Subscribe::default();
        let limits = SessionLimits {
            queue_bytes: 4096,
            slow_grace: Duration::from_secs(3600),
            ..Default::default()
        };
        let mut s = Session::new(h.clone(), &sub, Filter::compile(&sub).unwrap(), limits);
        let lines: Vec<String> = (0..2000).map(|i| format!("burst {i}")).collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        publish_lines(&h, &a, &refs);
        assert_eq!(drain(&mut s).len(), 2000);
    }

    #[test]
    fn closed_hub_ends_sessions_after_delivery() {
        let h = hub(10);
        let a = h.source(src("a.log"));
        let mut s = session(&h, Subscribe::default());
        publish_lines(&h, &a, &["last"]);
        h.close();
        assert!(matches!(s.pull(), Pull::Batch { .. }));
        assert!(matches!(s.pull(), Pull::Ended));
    }
}
