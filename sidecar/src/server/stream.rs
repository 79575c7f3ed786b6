//! The transport-neutral part of every stream: what one client is sent
//! next, with the drain, reconnect and slow-client policies and the gap and
//! drop metrics applied in one place. Transports (ws.rs, sse.rs, the Loki
//! tail) wait — for the hub, their client, their timers — and render and
//! write what this yields; they decide nothing about the stream itself.

use std::sync::Arc;

use super::AppState;
use super::ServerConfig;
use crate::hub::Entry;
use crate::protocol::{
    Cursor, FEATURE_WATERMARKS, GapReason, PROTOCOL_MINOR, PROTOCOL_VERSION, ServerMessage,
};
use crate::session::{Pull, Session};

/// What to send a client next.
#[derive(Debug)]
pub enum Next {
    /// Records in order, never empty.
    Records(Vec<Arc<Entry>>),
    /// Records were skipped (already counted in the metrics).
    Gap {
        missed: u64,
        reason: GapReason,
        cursor: Cursor,
    },
    /// Nothing now: wait for the hub to move.
    Idle,
    /// The hub closed and everything was delivered: send `draining` with
    /// this cursor, then end (or wait for the client's ack).
    Drained(Cursor),
    /// The server drains and its clients resume elsewhere (aggregator):
    /// send this `reconnect`, then end. Boxed: a step is held across a
    /// transport's awaits, and every idle connection carries its size.
    Reconnect(Box<ServerMessage>),
    /// Too slow under `--slow-client close`: end (already counted as a
    /// drop).
    TooSlow,
}

/// The next step of `session`. Call again until it is `Idle` (then wait
/// for the hub) or an end: a close seen between two wake-ups is only
/// noticed by pulling once more.
pub fn next(session: &mut Session, st: &AppState) -> Next {
    if st.cfg.reconnect_on_drain && *st.draining.borrow() {
        return Next::Reconnect(Box::new(reconnect(&st.cfg)));
    }
    loop {
        return match session.pull() {
            // Only filtered-out records were scanned: go on.
            Pull::Batch { entries, .. } if entries.is_empty() => continue,
            Pull::Batch { entries, .. } => Next::Records(entries),
            Pull::Gap {
                missed,
                reason,
                cursor,
            } => {
                st.metrics.gap(reason, missed);
                Next::Gap {
                    missed,
                    reason,
                    cursor,
                }
            }
            Pull::TooSlow => {
                st.metrics.dropped("slow_client");
                Next::TooSlow
            }
            Pull::Idle => Next::Idle,
            Pull::Ended => Next::Drained(session.cursor()),
        };
    }
}

/// The slow-client policy while a transport's write is blocked: `true`
/// when the client is to be closed (counted as a drop here); a gap decided
/// meanwhile is what [`next`] yields first.
pub fn too_slow(session: &mut Session, st: &AppState) -> bool {
    let close = session.too_slow();
    if close {
        st.metrics.dropped("slow_client");
    }
    close
}

/// The `hello` every stream starts with.
pub fn hello(session: &Session, cfg: &ServerConfig) -> ServerMessage {
    ServerMessage::Hello {
        version: PROTOCOL_VERSION,
        server: format!("logstream/{}", env!("CARGO_PKG_VERSION")),
        role: cfg.role.clone(),
        cursor: session.cursor(),
        minor: PROTOCOL_MINOR,
        features: if cfg.gives_watermarks() {
            vec![FEATURE_WATERMARKS.into()]
        } else {
            Vec::new()
        },
    }
}

/// The `reconnect` of a draining aggregator, with a random delay so its
/// clients do not all come back at once.
pub fn reconnect(cfg: &ServerConfig) -> ServerMessage {
    ServerMessage::Reconnect {
        after_ms: cfg.reconnect_after_ms(),
        reason: "server shutting down; resume elsewhere with your cursor".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::tests::{publish_lines, small_hub, src};
    use crate::protocol::Subscribe;
    use crate::session::SessionLimits;

    fn setup(cfg: ServerConfig) -> (Arc<AppState>, Session) {
        let hub = small_hub();
        let st = AppState::for_tests(hub.clone(), cfg);
        let sub = Subscribe::default();
        let filter = crate::filter::Filter::compile(&sub).unwrap();
        let session = Session::new(hub, &sub, filter, SessionLimits::default());
        (st, session)
    }

    #[test]
    fn records_then_idle_then_drained_when_the_hub_closes() {
        let (st, mut s) = setup(ServerConfig::default());
        let info = st.hub.source(src("a.log"));
        publish_lines(&st.hub, &info, &["one", "two"]);
        match next(&mut s, &st) {
            Next::Records(r) => assert_eq!(r.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut s, &st), Next::Idle));
        st.hub.close();
        assert!(matches!(next(&mut s, &st), Next::Drained(_)));
    }

    #[test]
    fn a_filter_that_skips_everything_is_idle_not_an_empty_batch() {
        let (st, _) = setup(ServerConfig::default());
        let sub = Subscribe {
            grep: Some("^never$".into()),
            ..Subscribe::default()
        };
        let filter = crate::filter::Filter::compile(&sub).unwrap();
        let mut s = Session::new(st.hub.clone(), &sub, filter, SessionLimits::default());
        let info = st.hub.source(src("a.log"));
        publish_lines(&st.hub, &info, &["one", "two"]);
        assert!(matches!(next(&mut s, &st), Next::Idle));
    }
}
