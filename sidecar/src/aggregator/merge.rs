//! Cross-source ordering: records from many upstreams are released in
//! timestamp order, but none waits longer than the reorder window after it
//! arrived. Per-source order always holds (timestamps are clamped to be
//! non-decreasing within a source).
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
            pending: p,
        }));
    }

    /// Records whose time has come, in timestamp order.
    pub fn pop_ready(&mut self, now_ns: i64) -> Vec<T> {
        let mut horizon = i64::MIN;
        while let Some(&(deadline, ts)) = self.deadlines.front() {
            if deadline > now_ns {
                break;
            }
            horizon = horizon.max(ts);
            self.deadlines.pop_front();
        }
        let mut out = Vec::new();
        while let Some(Reverse(top)) = self.heap.peek() {
            if top.ts > horizon {
                break;
            }
            if let Some(Reverse(item)) = self.heap.pop() {
                out.push(item.pending);
            }
        }
        out
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
    fn zero_window_releases_at_once() {
        let hub = crate::hub::tests::small_hub();
        let mut r: Reorder = Reorder::new(Duration::ZERO);
        r.push(rec(&hub, "a", 7), 42);
        assert_eq!(r.pop_ready(42).len(), 1);
    }
}
