//! Cross-source ordering: records from many upstreams are released in
//! timestamp order, but none waits longer than the reorder window after it
//! arrived. Per-source order always holds (timestamps are clamped to be
//! non-decreasing within a source).
//!
//! A record is released as soon as either rule allows:
//! - **watermarks** ([`Watermarks`]): every connected upstream has promised
//!   that nothing older than the record follows from it (protocol 1.1's
//!   `watermark`, asked for when a record waits on that upstream), so the
//!   order is exact and the wait is a round trip;
//! - **the window**: the record arrived a window ago. That bounds the wait
//!   on an upstream that does not answer (it is then left out of the
//!   watermark rule until it answers again) and is the only rule while an
//!   upstream that gives no watermarks (protocol 1.0) is connected.
//!
//! Generic over what it orders ([`Timed`]): the aggregator orders
//! [`Pending`] records into its hub, `kubectl logstream` orders the lines of
//! several pods into one terminal.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::Hash;

use crate::hub::Pending;
use crate::protocol::SourceId;

/// Something with a source and a time, as the reorder window sees it.
pub trait Timed {
    /// Per-source order is kept among items with the same key.
    type Source: Hash + Eq + Clone;
    fn source(&self) -> Self::Source;
    fn ts_ns(&self) -> i64;
}

impl Timed for Pending {
    type Source = SourceId;
    fn source(&self) -> SourceId {
        self.source.sid
    }
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }
}

struct Item<T> {
    ts: i64,
    arrival: u64,
    arrived_ns: i64,
    pending: T,
}

impl<T> PartialEq for Item<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.ts, self.arrival) == (o.ts, o.arrival)
    }
}
impl<T> Eq for Item<T> {}
impl<T> PartialOrd for Item<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Item<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.ts, self.arrival).cmp(&(o.ts, o.arrival))
    }
}

pub struct Reorder<T: Timed = Pending> {
    window_ns: i64,
    /// Records released by the window rule rather than a watermark.
    pub by_window: u64,
    heap: BinaryHeap<Reverse<Item<T>>>,
    /// (deadline, effective ts) in arrival order.
    deadlines: VecDeque<(i64, i64)>,
    last_ts: HashMap<T::Source, i64>,
    arrivals: u64,
}

impl<T: Timed> Reorder<T> {
    pub fn new(window: std::time::Duration) -> Reorder<T> {
        Reorder {
            window_ns: i64::try_from(window.as_nanos()).unwrap_or(i64::MAX),
            by_window: 0,
            heap: BinaryHeap::new(),
            deadlines: VecDeque::new(),
            last_ts: HashMap::new(),
            arrivals: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Adds a record that arrived at `now_ns`.
    pub fn push(&mut self, p: T, now_ns: i64) {
        let last = self.last_ts.entry(p.source()).or_insert(i64::MIN);
        let ts = p.ts_ns().max(*last);
        *last = ts;
        self.arrivals += 1;
        self.deadlines
            .push_back((now_ns.saturating_add(self.window_ns), ts));
        self.heap.push(Reverse(Item {
            ts,
            arrival: self.arrivals,
            arrived_ns: now_ns,
            pending: p,
        }));
    }

    /// Records whose time has come, in timestamp order.
    pub fn pop_ready(&mut self, now_ns: i64) -> Vec<T> {
        self.pop_ready_with(now_ns, None)
    }

    /// Records whose time has come by the window or by `watermark` (no
    /// record older than it will arrive), in timestamp order.
    pub fn pop_ready_with(&mut self, now_ns: i64, watermark: Option<i64>) -> Vec<T> {
        let marked = watermark.unwrap_or(i64::MIN);
        let mut horizon = i64::MIN;
        while let Some(&(deadline, ts)) = self.deadlines.front() {
            if deadline > now_ns {
                break;
            }
            horizon = horizon.max(ts);
            self.deadlines.pop_front();
        }
        // The deadline of a record the watermark covers could only release
        // what the watermark does: dropped, so no wake-up waits for it.
        while let Some(&(_, ts)) = self.deadlines.front() {
            if ts > marked {
                break;
            }
            self.deadlines.pop_front();
        }
        let horizon_all = horizon.max(marked);
        let mut out = Vec::new();
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.ts > horizon_all {
                break;
            }
            if top.ts > marked {
                self.by_window += 1;
            }
            if let Some(Reverse(item)) = self.heap.pop() {
                out.push(item.pending);
            }
        }
        out
    }

    /// The oldest record waiting: its time, and when it arrived.
    pub fn oldest(&self) -> Option<(i64, i64)> {
        self.heap.peek().map(|Reverse(i)| (i.ts, i.arrived_ns))
    }

    /// Everything, in timestamp order (shutdown).
    pub fn drain_all(&mut self) -> Vec<T> {
        self.deadlines.clear();
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(Reverse(item)) = self.heap.pop() {
            out.push(item.pending);
        }
        out
    }

    /// When the next record becomes ready.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.front().map(|(d, _)| *d)
    }
}

/// What each connected upstream has promised (its latest `watermark`),
/// and whom to ask for a newer one. Pure: times are passed in.
///
/// An upstream asked and silent for `stall_ns` is left out of the
/// watermark rule (the window then bounds what waited on it) until it
/// answers again.
pub struct Watermarks<K> {
    ups: HashMap<K, Up>,
    stall_ns: i64,
    /// Least time between two asks of one upstream whose answer fell short
    /// (its clock behind the record's source's): a bound, not a spin.
    reask_ns: i64,
    /// How long a record waits before its upstreams are asked: a sidecar
    /// that sends records ends the round with a watermark unasked, so the
    /// busy ones need no ask; each ask wakes a sidecar.
    ask_after_ns: i64,
}

#[derive(Debug)]
struct Up {
    /// Answers `watermark` (protocol ≥ 1.1).
    gives: bool,
    mark: i64,
    /// When the outstanding ask was sent.
    asked: Option<i64>,
    /// Not before this time is it asked again.
    not_before: i64,
    stalled: bool,
}

/// What changed for an upstream, for the log and the metrics.
#[derive(Debug, PartialEq, Eq)]
pub enum Stall<K> {
    /// Asked and silent for the bound: left out until it answers.
    Began(K),
}

impl<K: Hash + Eq + Clone> Watermarks<K> {
    pub fn new(stall: std::time::Duration, ask_after: std::time::Duration) -> Watermarks<K> {
        Watermarks {
            ups: HashMap::new(),
            stall_ns: i64::try_from(stall.as_nanos()).unwrap_or(i64::MAX),
            reask_ns: 1_000_000,
            ask_after_ns: i64::try_from(ask_after.as_nanos()).unwrap_or(i64::MAX),
        }
    }

    /// `up` connected; `gives`: its `hello` lists `watermarks`.
    pub fn connected(&mut self, up: K, gives: bool) {
        self.ups.insert(
            up,
            Up {
                gives,
                mark: i64::MIN,
                asked: None,
                not_before: i64::MIN,
                stalled: false,
            },
        );
    }

    /// `up` disconnected (or was removed): it holds nothing back.
    pub fn gone(&mut self, up: &K) {
        self.ups.remove(up);
    }

    /// `up` answered `mark` at `now`; `true` if it had been left out.
    pub fn marked(&mut self, up: &K, mark: i64, now: i64) -> bool {
        let Some(u) = self.ups.get_mut(up) else {
            return false;
        };
        u.mark = u.mark.max(mark);
        u.asked = None;
        u.not_before = now.saturating_add(self.reask_ns);
        std::mem::replace(&mut u.stalled, false)
    }

    /// No record older than this will arrive from a connected upstream:
    /// `None` while one gives no watermarks (the window rule alone).
    pub fn horizon(&self) -> Option<i64> {
        let mut h = i64::MAX;
        for u in self.ups.values() {
            if !u.gives {
                return None;
            }
            if !u.stalled {
                h = h.min(u.mark);
            }
        }
        Some(h)
    }

    /// Upstreams to ask now for the oldest record waiting (its time, when
    /// it arrived) to be released: those behind it with no ask
    /// outstanding, once it waited `ask_after`; marked as asked.
    pub fn to_ask(&mut self, (oldest, arrived): (i64, i64), now: i64) -> Vec<K> {
        let mut out = Vec::new();
        if now < arrived.saturating_add(self.ask_after_ns) {
            return out;
        }
        for (k, u) in &mut self.ups {
            if u.gives && !u.stalled && u.mark < oldest && u.asked.is_none() && now >= u.not_before
            {
                u.asked = Some(now);
                out.push(k.clone());
            }
        }
        out
    }

    /// Upstreams silent past the bound at `now`, now left out.
    pub fn stalls(&mut self, now: i64) -> Vec<Stall<K>> {
        let mut out = Vec::new();
        for (k, u) in &mut self.ups {
            if let Some(at) = u.asked
                && !u.stalled
                && now.saturating_sub(at) >= self.stall_ns
            {
                u.stalled = true;
                out.push(Stall::Began(k.clone()));
            }
        }
        out
    }

    /// When [`Watermarks::stalls`] or [`Watermarks::to_ask`] may next have
    /// something to do.
    pub fn next_timer(&self, oldest: Option<(i64, i64)>) -> Option<i64> {
        self.ups
            .values()
            .filter_map(|u| match (u.asked, oldest) {
                (Some(at), _) if !u.stalled => Some(at.saturating_add(self.stall_ns)),
                (None, Some((ts, arrived))) if u.gives && !u.stalled && u.mark < ts => {
                    Some(u.not_before.max(arrived.saturating_add(self.ask_after_ns)))
                }
                _ => None,
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::hub::tests::src;
    use std::sync::Arc;
    use std::time::Duration;

    fn rec(hub: &Hub, file: &str, ts: i64) -> Pending {
        let info = hub.source(src(file));
        Pending {
            seq: info.next_seq(),
            source: info,
            ts_ns: ts,
            level: None,
            line: format!("{file}@{ts}"),
            partial: false,
            split: None,
        }
    }

    fn lines(v: &[Pending]) -> Vec<String> {
        v.iter().map(|p| p.line.clone()).collect()
    }

    #[test]
    fn orders_across_sources_within_the_window() {
        let hub = crate::hub::tests::small_hub();
        let mut r: Reorder = Reorder::new(Duration::from_nanos(100));
        r.push(rec(&hub, "a", 30), 0);
        r.push(rec(&hub, "b", 10), 5);
        r.push(rec(&hub, "a", 40), 6);
        assert!(r.pop_ready(99).is_empty(), "nothing is due yet");
        assert_eq!(lines(&r.pop_ready(100)), ["b@10", "a@30"]);
        assert_eq!(lines(&r.pop_ready(106)), ["a@40"]);
        assert!(r.is_empty());
    }

    #[test]
    fn nothing_waits_longer_than_the_window() {
        let hub = crate::hub::tests::small_hub();
        let mut r: Reorder = Reorder::new(Duration::from_nanos(100));
        r.push(rec(&hub, "late", 1000), 0);
        r.push(rec(&hub, "early", 5), 50);
        // At 100 the first arrival is due: it and everything older go out.
        assert_eq!(lines(&r.pop_ready(100)), ["early@5", "late@1000"]);
    }

    #[test]
    fn per_source_order_survives_clock_steps_back() {
        let hub = crate::hub::tests::small_hub();
        let mut r: Reorder = Reorder::new(Duration::ZERO);
        r.push(rec(&hub, "a", 50), 0);
        r.push(rec(&hub, "a", 20), 0);
        let out = r.pop_ready(0);
        assert_eq!(lines(&out), ["a@50", "a@20"]);
        assert!(out[0].seq < out[1].seq);
        let _ = Arc::new(());
    }

    #[test]
    fn a_watermark_releases_before_the_window_and_in_order() {
        let hub = crate::hub::tests::small_hub();
        let mut r: Reorder = Reorder::new(Duration::from_secs(3600));
        r.push(rec(&hub, "a", 30), 0);
        r.push(rec(&hub, "b", 10), 1);
        r.push(rec(&hub, "a", 50), 2);
        assert!(
            r.pop_ready_with(3, None).is_empty(),
            "the window alone waits"
        );
        assert_eq!(lines(&r.pop_ready_with(3, Some(30))), ["b@10", "a@30"]);
        assert_eq!(r.oldest(), Some((50, 2)));
        assert_eq!(lines(&r.pop_ready_with(4, Some(i64::MAX))), ["a@50"]);
        assert_eq!(r.by_window, 0);
        assert_eq!(r.next_deadline(), None, "no wake-up for what is gone");
    }

    #[test]
    fn the_window_still_bounds_the_wait_and_is_counted() {
        let hub = crate::hub::tests::small_hub();
        let mut r: Reorder = Reorder::new(Duration::from_nanos(100));
        r.push(rec(&hub, "a", 30), 0);
        r.push(rec(&hub, "b", 20), 0);
        assert_eq!(lines(&r.pop_ready_with(100, Some(20))), ["b@20", "a@30"]);
        assert_eq!(r.by_window, 1, "a@30 went by the window");
    }

    fn ms(n: i64) -> i64 {
        n * 1_000_000
    }

    fn ms_d(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_horizon_is_the_least_promise_of_those_that_answer() {
        let mut w: Watermarks<u8> = Watermarks::new(Duration::from_millis(200), Duration::ZERO);
        assert_eq!(
            w.horizon(),
            Some(i64::MAX),
            "no upstream holds anything back"
        );
        w.connected(1, true);
        w.connected(2, true);
        assert_eq!(w.horizon(), Some(i64::MIN), "no promise yet");
        w.marked(&1, ms(10), 0);
        w.marked(&2, ms(7), 0);
        assert_eq!(w.horizon(), Some(ms(7)));
        w.marked(&2, ms(5), 0);
        assert_eq!(w.horizon(), Some(ms(7)), "a promise is never taken back");
        w.gone(&2);
        assert_eq!(w.horizon(), Some(ms(10)));
        w.connected(3, false);
        assert_eq!(w.horizon(), None, "a 1.0 upstream: the window alone");
    }

    #[test]
    fn asks_once_those_behind_and_leaves_out_the_silent() {
        let mut w: Watermarks<u8> = Watermarks::new(Duration::from_millis(200), ms_d(1));
        w.connected(1, true);
        w.connected(2, true);
        w.connected(3, false);
        w.marked(&1, ms(50), 0);
        let record = (ms(20), ms(1));
        assert!(w.to_ask(record, ms(1)).is_empty(), "not before it waited");
        assert_eq!(w.next_timer(Some(record)), Some(ms(2)));
        let mut asked = w.to_ask(record, ms(2));
        asked.sort_unstable();
        assert_eq!(asked, [2], "1 is past it, 3 gives none");
        assert!(w.to_ask(record, ms(3)).is_empty(), "one ask outstanding");
        assert_eq!(w.next_timer(Some(record)), Some(ms(202)));
        assert!(w.stalls(ms(201)).is_empty());
        assert_eq!(w.stalls(ms(202)), [Stall::Began(2)]);
        assert!(w.stalls(ms(300)).is_empty(), "said once");
        w.gone(&3);
        assert_eq!(w.horizon(), Some(ms(50)), "the silent one is left out");
        assert!(w.marked(&2, ms(30), ms(400)), "back");
        assert_eq!(w.horizon(), Some(ms(30)));
        // Answered short of the record (a clock behind): asked again, but
        // not before the re-ask gap.
        let record = (ms(40), ms(300));
        assert!(w.to_ask(record, ms(400)).is_empty());
        assert_eq!(w.next_timer(Some(record)), Some(ms(401)));
        assert_eq!(w.to_ask(record, ms(401)), [2]);
    }

    #[test]
    fn zero_window_releases_at_once() {
        let hub = crate::hub::tests::small_hub();
        let mut r: Reorder = Reorder::new(Duration::ZERO);
        r.push(rec(&hub, "a", 7), 42);
        assert_eq!(r.pop_ready(42).len(), 1);
    }
}
