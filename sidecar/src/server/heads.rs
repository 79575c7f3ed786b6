//! Connections whose request head is still arriving, and their bound.
//!
//! A client that sends its head one byte at a time (slowloris) holds a
//! descriptor for as long as the head timeout allows, without a token and
//! before any connection limit applies. Real clients (browsers, curl,
//! kubelet's probes) send a head in one write, so they are "pending" for
//! microseconds. So the pending set is bounded, and when a new connection
//! arrives at the bound the *oldest* pending one is closed: a flood of slow
//! heads evicts itself, and a probe that arrives whole is always answered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The pending set. Cheap to share: one lock taken twice per connection.
pub struct Pending {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// By arrival: the first key is the oldest.
    waiting: BTreeMap<u64, CancellationToken>,
}

impl Pending {
    pub fn new(cap: usize) -> Pending {
        Pending {
            cap: cap.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Registers a new connection whose head is awaited; returns its guard
    /// and how many older ones were evicted to make room.
    pub fn enter(self: &Arc<Self>) -> (HeadGuard, usize) {
        let token = CancellationToken::new();
        let mut evicted = 0;
        let id = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            while inner.waiting.len() >= self.cap {
                match inner.waiting.pop_first() {
                    Some((_, oldest)) => {
                        oldest.cancel();
                        evicted += 1;
                    }
                    None => break,
                }
            }
            let id = inner.next;
            inner.next += 1;
            inner.waiting.insert(id, token.clone());
            id
        };
        (
            HeadGuard {
                pending: self.clone(),
                id,
                token,
            },
            evicted,
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .len()
    }
}

/// One connection's place in the pending set, until its head is complete
/// (or it is dropped).
pub struct HeadGuard {
    pending: Arc<Pending>,
    id: u64,
    token: CancellationToken,
}

impl HeadGuard {
    /// The head is complete: the connection leaves the set. Idempotent.
    pub fn done(&self) {
        self.pending
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .remove(&self.id);
    }

    /// Resolves when the connection was evicted to make room.
    pub async fn evicted(&self) {
        self.token.cancelled().await
    }
}

impl Drop for HeadGuard {
    fn drop(&mut self) {
        self.done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn the_oldest_pending_head_makes_way_and_finished_ones_leave() {
        let p = Arc::new(Pending::new(2));
        let (a, _) = p.enter();
        let (b, _) = p.enter();
        b.done();
        let (c, evicted) = p.enter();
        assert_eq!(evicted, 0, "b finished its head: room for c");
        let (d, evicted) = p.enter();
        assert_eq!(evicted, 1);
        assert!(a.evicted().now_or_never().is_some(), "a was the oldest");
        assert!(c.evicted().now_or_never().is_none());
        assert!(d.evicted().now_or_never().is_none());
        drop(c);
        assert_eq!(p.len(), 1);
    }
}
