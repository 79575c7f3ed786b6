//! Wires tailer, hub and server together and runs them until a signal, then
//! drains: stop accepting, read every file to EOF, deliver, wait for acks,
//! close 1001, exit.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::hub::{Hub, HubLimits, now_ns};
use crate::metrics::Metrics;
use crate::server::{AppState, ServerConfig};
use crate::tailer::{TailConfig, Tailer};

pub struct StreamerOptions {
    pub tail: TailConfig,
    pub server: ServerConfig,
    pub history: HubLimits,
    pub listen: SocketAddr,
    /// Longest the whole drain may take before the process exits anyway.
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tail(#[from] crate::tailer::TailError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tailer thread: {0}")]
    Thread(std::io::Error),
    #[error("kubernetes client: {0}")]
    Kube(kube::Error),
    #[error(transparent)]
    History(crate::history::StoreError),
}

/// Runs a streamer until `shutdown` resolves, then drains.
pub async fn run_streamer(
    opts: StreamerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    if let Some(k8s) = &opts.server.auth.kubernetes {
        k8s.announce().await;
    }
    let incarnation = format!("{}-{}", now_ns(), std::process::id());
    let hub = Hub::new(opts.history, incarnation);
    let metrics = Arc::new(Metrics::new());
    let tailer = Tailer::new(opts.tail, hub.clone(), metrics.clone())?;
    let files = tailer.file_report();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    // The tailer gets a thread and runtime of its own: file reads are
    // blocking calls and must not stall the connections.
    let tail_thread = std::thread::Builder::new()
        .name("tailer".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(tailer.run(stop_rx, ready_tx)),
                Err(e) => tracing::error!(error = %e, "tailer runtime"),
            }
        })
        .map_err(RunError::Thread)?;
    let state = AppState::new(
        hub.clone(),
        metrics,
        opts.server,
        ready_rx,
        drain_rx.clone(),
        Some(files),
    );
    let (server, _local) = start_server(state.clone(), opts.listen, drain_rx).await?;
    shutdown.await;
    let started = std::time::Instant::now();
    tracing::info!(clients = state.connections(), "draining");
    let _ = drain_tx.send(true);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(opts.grace, async {
        let _ = tokio::task::spawn_blocking(move || tail_thread.join()).await;
        state.sessions.close();
        state.sessions.wait().await;
        let _ = server.await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!(took_ms = started.elapsed().as_millis() as u64, "drained"),
        Err(_) => tracing::warn!(
            clients = state.connections(),
            grace_ms = opts.grace.as_millis() as u64,
            "grace period over, exiting with clients still connected"
        ),
    }
    state
        .metrics
        .drain_seconds
        .set(started.elapsed().as_secs_f64());
    Ok(())
}

/// Binds `listen`, prints the bound address on stdout (scripts and tests read
/// it: the port may have been 0) and serves until `stop_accepting` turns true.
pub async fn start_server(
    state: Arc<AppState>,
    listen: SocketAddr,
    stop_accepting: watch::Receiver<bool>,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), RunError> {
    // A deep accept backlog: after a restart every client reconnects at
    // once, and the default (128) would drop SYNs into a 1 s retransmit.
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let sock = if listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.bind(listen)?;
        sock.listen(4096)
    };
    let listener = bind().map_err(|source| RunError::Listen {
        addr: listen,
        source,
    })?;
    let local = listener.local_addr().map_err(|source| RunError::Listen {
        addr: listen,
        source,
    })?;
    println!("listening on http://{local}");
    tracing::info!(%local, role = %state.cfg.role, "listening");
    let server = tokio::spawn(crate::server::serve(listener, state, stop_accepting));
    Ok((server, local))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}
