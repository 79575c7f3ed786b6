//! Pulls one upstream (a sidecar) over WebSocket with a resume cursor, so a
//! reconnect — after a network error, a sidecar restart or our own restart —
//! repeats and loses nothing that is still in the upstream's history.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use crate::client::{ClientOptions, Connection};
use crate::hub::{Hub, Pending, SourceInfo, now_ns, parse_ts};
use crate::metrics::Metrics;
use crate::protocol::{
    ClientMessage, Cursor, FEATURE_WATERMARKS, Format, GapReason, ServerMessage, SourceId,
    Subscribe,
};

pub struct Upstream {
    /// Names this upstream to the merge while the aggregator runs.
    pub id: u64,
    pub key: String,
    pub url: String,
    pub token: Option<String>,
}

/// What pullers tell the merge, in each upstream's order.
pub enum Feed {
    /// Records of upstream `id` (perhaps none), then, when it sent one, its
    /// watermark: no record older than it will follow from that upstream.
    Records {
        id: u64,
        batch: Vec<Pending>,
        watermark: Option<i64>,
    },
    /// Upstream `id` connected; `gives`: it answers watermark requests,
    /// which the merge asks for by notifying `asks`.
    Connected {
        id: u64,
        key: String,
        gives: bool,
        asks: Arc<Notify>,
    },
    /// Upstream `id` disconnected or was removed.
    Gone { id: u64 },
}

/// Runs until aborted. Records go to `out` in upstream order.
pub async fn pull(
    up: Upstream,
    hub: Arc<Hub>,
    out: mpsc::Sender<Feed>,
    metrics: Arc<Metrics>,
    start: Cursor,
) {
    let id = up.id;
    // Empty, or where the history on disk stands (a restart).
    let mut cursor = start;
    let mut sources: HashMap<SourceId, Arc<SourceInfo>> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    let opts = ClientOptions {
        base: up.url.clone(),
        sub: Subscribe {
            format: Some(Format::Json),
            ..Subscribe::default()
        },
        token: up.token.clone(),
    };
    loop {
        // An empty cursor asks for the whole history on the first connect.
        match Connection::open(&opts, Some(&cursor)).await {
            Ok(mut conn) => {
                tracing::info!(upstream = %up.key, url = %up.url, cursor = %cursor, "pulling");
                metrics.upstreams_connected.inc();
                // One per connection: an ask meant for the last one is void.
                let asks = Arc::new(Notify::new());
                loop {
                    // The merge's asks are sent between messages (one
                    // outstanding at most: the notification holds one permit).
                    let next = tokio::select! {
                        biased;
                        m = conn.next() => m,
                        () = asks.notified() => {
                            metrics.upstream_watermark_asks.inc();
                            if let Err(e) = conn.send(&ClientMessage::Watermark).await {
                                tracing::debug!(upstream = %up.key, error = %e, "upstream write");
                                break;
                            }
                            continue;
                        }
                    };
                    let msg = match next {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(upstream = %up.key, error = %e, "upstream read");
                            break;
                        }
                    };
                    // What the merge is told, sent below.
                    let feed = match msg {
                        ServerMessage::Hello { features, .. } => {
                            backoff = Duration::from_millis(100);
                            Some(Feed::Connected {
                                id,
                                key: up.key.clone(),
                                gives: features.iter().any(|f| f == FEATURE_WATERMARKS),
                                asks: asks.clone(),
                            })
                        }
                        ServerMessage::Watermark { ts, .. } => {
                            parse_ts(&ts).map(|ts| Feed::Records {
                                id,
                                batch: Vec::new(),
                                watermark: Some(ts),
                            })
                        }
                        ServerMessage::Records {
                            records,
                            cursor: after,
                            watermark,
                        } => {
                            let mut batch = Vec::with_capacity(records.len());
                            for r in records {
                                if cursor.covers(r.sid, r.seq) {
                                    continue; // already have it
                                }
                                cursor.advance(r.sid, r.seq);
                                let info = sources
                                    .entry(r.sid)
                                    .or_insert_with(|| hub.source_with_id(r.source.clone(), r.sid))
                                    .clone();
                                batch.push(Pending {
                                    source: info,
                                    seq: r.seq,
                                    ts_ns: parse_ts(&r.ts).unwrap_or_else(now_ns),
                                    level: r.level,
                                    line: r.line,
                                    partial: r.partial,
                                    split: r.split,
                                });
                            }
                            cursor.merge(&after);
                            metrics.upstream_records.inc_by(batch.len() as u64);
                            // The frame's watermark rides with its records:
                            // one message to the merge.
                            let watermark = watermark.as_deref().and_then(parse_ts);
                            (!batch.is_empty() || watermark.is_some()).then_some(Feed::Records {
                                id,
                                batch,
                                watermark,
                            })
                        }
                        ServerMessage::Gap { missed, reason, .. } => {
                            if reason != GapReason::SlowClient {
                                tracing::warn!(upstream = %up.key, missed, ?reason, "records lost upstream");
                            }
                            metrics.upstream_gap_records.inc_by(missed);
                            None
                        }
                        // Connection::next has acknowledged it; the upstream closes next.
                        ServerMessage::Draining { .. } => {
                            tracing::info!(upstream = %up.key, "upstream drained");
                            None
                        }
                        _ => None,
                    };
                    if let Some(feed) = feed
                        && out.send(feed).await.is_err()
                    {
                        metrics.upstreams_connected.dec();
                        return;
                    }
                }
                metrics.upstreams_connected.dec();
                if out.send(Feed::Gone { id }).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!(upstream = %up.key, error = %e, "connect"),
        }
        metrics.upstream_reconnects.inc();
        // Exponential backoff with jitter, so replicas do not reconnect in step.
        let jitter = Duration::from_millis(u64::from(now_ns().unsigned_abs() as u32 % 100));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
