//! The per-namespace aggregator: pulls every sidecar, merges, keeps a bounded
//! history and serves the same streams (plus the Loki API) as a sidecar.
//!
//! ```text
//!  discovery (pods | --source) ──► puller per upstream ──► reorder ──────────► hub ──► sessions
//!                                  resume cursor, acks       ts order by the     records keep the
//!                                  backoff + jitter,         upstreams' water-   upstream sid:seq
//!                                  watermark asks            marks, ≤ window
//! ```
//!
//! Records keep their upstream source ids and sequence numbers, so a
//! client's cursor means the same thing on every replica: moved to another
//! replica, it resumes there without gap or duplicate.

pub mod discovery;
pub mod merge;
pub mod puller;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::history::{History, HistoryOptions};
use crate::hub::{Hub, HubLimits, Pending, now_ns};
use crate::metrics::Metrics;
use crate::run::{RunError, start_server};
use crate::server::{AppState, ServerConfig};
use discovery::Upstreams;
use merge::{Reorder, Stall, Watermarks};
use puller::{Feed, Upstream};

/// Where upstreams come from.
#[derive(Clone, Debug)]
pub enum Discovery {
    /// Fixed base URLs.
    Static(Vec<String>),
    /// Labelled pods of a namespace.
    Pods { namespace: String, label: String },
}

pub struct AggregatorOptions {
    pub discovery: Discovery,
    pub server: ServerConfig,
    pub history: HubLimits,
    /// The history on disk, if any (`crate::history`).
    pub disk_history: Option<HistoryOptions>,
    pub listen: SocketAddr,
    pub reorder_window: Duration,
    /// How long a record waits before the upstreams holding it back are
    /// asked for a watermark.
    pub watermark_ask_after: Duration,
    /// Token presented to the sidecars.
    pub upstream_token: Option<String>,
    /// After SIGTERM, keep answering (readiness 503, `reconnect` to every
    /// client) this long so load balancers stop sending traffic, then stop.
    pub drain_delay: Duration,
    pub grace: Duration,
}

/// Runs an aggregator until `shutdown` resolves, then drains.
pub async fn run_aggregator(
    opts: AggregatorOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RunError> {
    if let Some(k8s) = &opts.server.auth.kubernetes {
        k8s.announce().await;
    }
    let incarnation = format!("agg-{}-{}", now_ns(), std::process::id());
    let hub = Hub::new(opts.history, incarnation);
    let metrics = Arc::new(Metrics::new());
    let disk = match opts.disk_history.clone() {
        Some(h) => {
            let (history, _recovery) =
                History::open(h, metrics.disk_history.clone()).map_err(RunError::History)?;
            let writer = history.spawn_writer().map_err(RunError::Thread)?;
            // Sessions reach back into it (since=, tail=, resume).
            hub.set_older(history.clone());
            Some((history, writer))
        }
        None => None,
    };
    let (ups_tx, ups_rx) = watch::channel(Upstreams::new());
    let (ready_tx, ready_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);

    let discovery = match opts.discovery.clone() {
        Discovery::Static(urls) => {
            let _ = ups_tx.send(urls.iter().map(|u| (u.clone(), u.clone())).collect());
            None
        }
        Discovery::Pods { namespace, label } => {
            let client = kube::Client::try_default().await.map_err(RunError::Kube)?;
            Some(tokio::spawn(discovery::watch_pods(
                client, namespace, label, ups_tx,
            )))
        }
    };

    // Pullers feed the reorder window; one task publishes into the hub.
    let (rec_tx, rec_rx) = mpsc::channel::<Feed>(256);
    let merger = tokio::spawn(merge_loop(
        rec_rx,
        hub.clone(),
        disk.as_ref().map(|(h, _)| h.clone()),
        metrics.clone(),
        opts.reorder_window,
        opts.watermark_ask_after,
    ));
    let stored = disk.as_ref().map(|(h, _)| h.clone());
    let supervisor = tokio::spawn(supervise(
        ups_rx,
        hub.clone(),
        rec_tx,
        metrics.clone(),
        opts.upstream_token.clone(),
        ready_tx,
        stored,
    ));

    let mut server_cfg = opts.server;
    server_cfg.role = "aggregator".into();
    server_cfg.reconnect_on_drain = true;
    let state = AppState::new(
        hub.clone(),
        metrics.clone(),
        server_cfg,
        ready_rx,
        drain_rx,
        None,
    );
    if let Some((h, _)) = &disk {
        let _ = state.history.set(h.clone());
    }
    let (server, _local) = start_server(state.clone(), opts.listen, stop_rx).await?;

    shutdown.await;
    let started = std::time::Instant::now();
    tracing::info!(
        clients = state.connections(),
        "draining: readiness off, clients told to reconnect"
    );
    let _ = drain_tx.send(true);
    let finished = tokio::time::timeout(opts.grace, async {
        // Every connected client gets `reconnect` and a 1001 close now; new
        // ones during the delay get the same at once.
        tokio::time::sleep(opts.drain_delay).await;
        let _ = stop_tx.send(true);
        state.sessions.close();
        state.sessions.wait().await;
        let _ = server.await;
    })
    .await;
    supervisor.abort();
    merger.abort();
    if let Some(d) = discovery {
        d.abort();
    }
    if let Some((h, writer)) = disk {
        // What is queued goes to disk before the process ends.
        h.close();
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
    metrics.drain_seconds.set(started.elapsed().as_secs_f64());
    match finished {
        Ok(()) => tracing::info!(took_ms = started.elapsed().as_millis() as u64, "drained"),
        Err(_) => tracing::warn!(clients = state.connections(), "grace period over, exiting"),
    }
    Ok(())
}

/// Starts and stops one puller per upstream as discovery changes.
async fn supervise(
    mut ups: watch::Receiver<Upstreams>,
    hub: Arc<Hub>,
    out: mpsc::Sender<Feed>,
    metrics: Arc<Metrics>,
    token: Option<String>,
    ready: watch::Sender<bool>,
    stored: Option<Arc<History>>,
) {
    type Running = HashMap<String, (String, u64, tokio::task::JoinHandle<()>)>;
    let mut running: Running = HashMap::new();
    let mut ids = 0u64;
    loop {
        let current = ups.borrow_and_update().clone();
        let mut gone = Vec::new();
        running.retain(|key, (url, id, handle)| {
            let keep = current.get(key) == Some(url);
            if !keep {
                tracing::info!(upstream = %key, "upstream gone");
                handle.abort();
                gone.push(*id);
            }
            keep
        });
        // An aborted puller says nothing more: the merge stops waiting on
        // its watermark here.
        for id in gone {
            if out.send(Feed::Gone { id }).await.is_err() {
                return;
            }
        }
        for (key, url) in current {
            if let std::collections::hash_map::Entry::Vacant(slot) = running.entry(key.clone()) {
                // Resumed where the history on disk stands: by pod when the
                // key is one (pod discovery), else every stored source.
                let start = stored.as_ref().map_or_else(Default::default, |h| {
                    let pod = (key != url).then_some(key.as_str());
                    h.stored_cursor(pod, 256)
                });
                ids += 1;
                let up = Upstream {
                    id: ids,
                    key,
                    url: url.clone(),
                    token: token.clone(),
                };
                let task = tokio::spawn(puller::pull(
                    up,
                    hub.clone(),
                    out.clone(),
                    metrics.clone(),
                    start,
                ));
                slot.insert((url, ids, task));
            }
        }
        metrics.upstreams_known.set(running.len() as i64);
        let _ = ready.send(true);
        if ups.changed().await.is_err() {
            // Discovery ended (static list): keep the pullers running.
            std::future::pending::<()>().await;
        }
    }
}

async fn merge_loop(
    mut rx: mpsc::Receiver<Feed>,
    hub: Arc<Hub>,
    disk: Option<Arc<History>>,
    metrics: Arc<Metrics>,
    window: Duration,
    ask_after: Duration,
) {
    let publish = |batch: Vec<Pending>| match &disk {
        Some(h) => hub.publish_with(batch, |new| h.push(new)),
        None => hub.publish(batch),
    };
    let mut reorder = Reorder::new(window);
    // An upstream silent on an ask for the window is merged without; a
    // record waits `ask_after` for the unasked watermarks that end the
    // upstreams' rounds before the laggards are asked.
    let mut marks: Watermarks<u64> = Watermarks::new(window, ask_after);
    let mut asks: HashMap<u64, (String, Arc<tokio::sync::Notify>)> = HashMap::new();
    loop {
        let timer = match (reorder.next_deadline(), marks.next_timer(reorder.oldest())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            feed = rx.recv() => {
                let Some(feed) = feed else { break };
                let now = now_ns();
                take(feed, &mut reorder, &mut marks, &mut asks, now);
                // Take whatever else is queued before publishing: fewer, larger batches.
                while let Ok(more) = rx.try_recv() {
                    take(more, &mut reorder, &mut marks, &mut asks, now);
                }
            }
            _ = sleep_until_ns(timer), if timer.is_some() => {}
        }
        let now = now_ns();
        for Stall::Began(id) in marks.stalls(now) {
            metrics.upstream_watermark_stalls.inc();
            let key = asks.get(&id).map_or("?", |(k, _)| k.as_str());
            tracing::warn!(
                upstream = %key,
                waited_ms = window.as_millis() as u64,
                "upstream gave no watermark: merging without it until it answers"
            );
        }
        let released_by_window = reorder.by_window;
        let ready = reorder.pop_ready_with(now, marks.horizon());
        metrics
            .reorder_window_releases
            .inc_by(reorder.by_window - released_by_window);
        if let Some(oldest) = reorder.oldest() {
            for id in marks.to_ask(oldest, now) {
                if let Some((_, n)) = asks.get(&id) {
                    n.notify_one();
                }
            }
        }
        metrics.reorder_buffered.set(reorder.len() as i64);
        if !ready.is_empty() {
            publish(ready);
            let ring = hub.lock();
            metrics.history_records.set(ring.len() as i64);
            metrics.history_bytes.set(ring.bytes() as i64);
        }
    }
    let rest = reorder.drain_all();
    publish(rest);
}

/// One message of a puller into the merge's state.
fn take(
    feed: Feed,
    reorder: &mut Reorder,
    marks: &mut Watermarks<u64>,
    asks: &mut HashMap<u64, (String, Arc<tokio::sync::Notify>)>,
    now: i64,
) {
    match feed {
        Feed::Records {
            id,
            batch,
            watermark,
        } => {
            for p in batch {
                reorder.push(p, now);
            }
            if let Some(ts) = watermark
                && marks.marked(&id, ts, now)
            {
                let key = asks.get(&id).map_or("?", |(k, _)| k.as_str());
                tracing::info!(upstream = %key, "upstream answers watermarks again");
            }
        }
        Feed::Connected {
            id,
            key,
            gives,
            asks: n,
        } => {
            if !gives {
                tracing::info!(upstream = %key, "upstream gives no watermarks (protocol 1.0): the reorder window orders its records");
            }
            marks.connected(id, gives);
            asks.insert(id, (key, n));
        }
        Feed::Gone { id } => {
            marks.gone(&id);
            asks.remove(&id);
        }
    }
}

async fn sleep_until_ns(deadline: Option<i64>) {
    let wait = deadline.map_or(0, |d| d.saturating_sub(now_ns()).max(0));
    tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
}
