//! The process's file descriptors: raising the soft limit, and sharing what
//! it allows between tailed files and connections.
//!
//! Every tailed file and every connection holds a descriptor. Without a
//! budget, enough files (or clients) take the last one and `accept` fails:
//! the server stops answering even `/healthz`. So the limit is split up
//! front: a reserve for the process itself, half of the rest for files, the
//! rest for connections (clients, and request heads still arriving). Past
//! its share, a file is reported as not tailed and a client is refused
//! with 1013/503, while the server keeps answering.

/// Descriptors kept for the process itself: stdio, the runtime's epoll and
/// wakers, inotify, the listener, the Kubernetes client, log files opened
/// briefly (readiness, tokens).
pub const RESERVED: u64 = 64;

/// The soft `RLIMIT_NOFILE` after raising it to the hard limit, and what
/// it was before (`u64::MAX`: unlimited).
pub fn raise_nofile_limit() -> (u64, u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let before = lim.current.unwrap_or(u64::MAX);
    if lim.current != lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return (lim.maximum.unwrap_or(u64::MAX), before);
        }
    }
    (before, before)
}

/// Raises the limit once per process and returns its split, logged.
pub fn process_budget() -> Budget {
    static BUDGET: std::sync::OnceLock<Budget> = std::sync::OnceLock::new();
    *BUDGET.get_or_init(|| {
        let (limit, before) = raise_nofile_limit();
        let b = Budget::of(limit);
        tracing::info!(
            limit,
            raised_from = before,
            files = b.files,
            connections = b.connections,
            pending_heads = b.pending_heads,
            "descriptor budget"
        );
        b
    })
}

/// How the descriptor limit is shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Files the tailer may hold open (active and rotated).
    pub files: usize,
    /// Connections (streams and requests) served at once.
    pub connections: usize,
    /// Connections whose request head is still arriving; past this the
    /// oldest is closed (a slow-head client cannot starve the others).
    pub pending_heads: usize,
}

impl Budget {
    /// The split of `limit` descriptors (RLIM_INFINITY counts as plenty).
    pub fn of(limit: u64) -> Budget {
        let avail = limit.saturating_sub(RESERVED).max(32);
        let files = avail / 2;
        let connections = avail - files;
        let clamp = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Budget {
            files: clamp(files),
            connections: clamp(connections),
            pending_heads: clamp((connections / 4).clamp(8, 1024)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_leaves_room_for_the_process_and_caps_pending_heads() {
        let b = Budget::of(1024);
        assert_eq!(b.files + b.connections, 1024 - RESERVED as usize);
        assert_eq!(b.pending_heads, 120);
        let tiny = Budget::of(16);
        assert!(tiny.files >= 16 && tiny.connections >= 16);
        assert_eq!(tiny.pending_heads, 8);
        let huge = Budget::of(u64::MAX);
        assert_eq!(huge.pending_heads, 1024);
        assert!(huge.files > 1 << 40);
    }

    #[test]
    fn the_soft_limit_is_at_the_hard_one_afterwards() {
        use rustix::process::{Resource, getrlimit};
        let (now, _) = raise_nofile_limit();
        let lim = getrlimit(Resource::Nofile);
        assert_eq!(lim.current, lim.maximum);
        assert_eq!(Some(now), lim.current.or(Some(u64::MAX)));
    }
}
