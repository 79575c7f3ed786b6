//! What every connection shares: the server's configuration, its state
//! (hub, metrics, readiness, drain), connection slots, and admission (token
//! and Origin checks), used by the routes and the Loki API alike.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::{heads, kube_auth};
use crate::hub::Hub;
use crate::metrics::{Metrics, ReasonLabel, Transport};
use crate::session::SessionLimits;

/// Who may stream.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Bearer tokens accepted from non-exempt clients (any of them).
    pub tokens: Vec<String>,
    /// Clients on loopback (port-forward) need no token.
    pub loopback_exempt: bool,
    /// Without a token, also serve non-loopback clients (explicitly insecure).
    pub allow_unauthenticated: bool,
    /// Also accept Kubernetes tokens whose user may `get pods/log` here.
    pub kubernetes: Option<Arc<kube_auth::KubeAuth>>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `sidecar`, `local` or `aggregator`, announced in `hello`.
    pub role: String,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    /// WebSocket write buffer (frames other than record batches).
    pub ws_buffer_bytes: usize,
    /// WebSocket read buffer. Clients send only small control messages,
    /// and tungstenite reserves a whole frame once its header is read, so a
    /// small buffer costs nothing in function; it is resident for every idle
    /// connection (tungstenite zero-fills it before each read), so it matters.
    pub ws_read_buffer_bytes: usize,
    pub session: SessionLimits,
    pub ping_interval: Duration,
    /// A WebSocket peer silent for this long is dropped.
    pub pong_timeout: Duration,
    /// A send that cannot complete for this long drops the client.
    pub send_timeout: Duration,
    pub keepalive: Duration,
    /// How long a draining WebSocket waits for the client's ack.
    pub ack_timeout: Duration,
    pub auth: AuthConfig,
    /// Extra origins allowed for browsers (same-host is always allowed; `*` allows all).
    pub allowed_origins: Vec<String>,
    /// On shutdown, tell clients to reconnect elsewhere (aggregator) instead
    /// of draining the history to them (sidecar).
    pub reconnect_on_drain: bool,
    /// Upper bound of the random delay suggested in `reconnect`.
    pub reconnect_jitter: Duration,
    /// Longest a connection may take to send a whole request head.
    pub head_timeout: Duration,
    /// Connections whose head is still arriving; at the bound the oldest
    /// is closed (server/heads.rs).
    pub pending_heads: usize,
    /// Kernel send buffer of a streaming connection (`/ws`, `/sse`,
    /// `/stream`, Loki tail); 0 leaves it to the kernel's autotuning, which
    /// grows it to megabytes that a slow reader must drain before it hears
    /// of its gap.
    pub stream_send_buffer: usize,
    /// Token buckets for new streams and client messages (server/limits.rs).
    pub rate: super::limits::RateConfig,
    /// permessage-deflate and gzip (server/compress.rs).
    pub compress: super::compress::CompressConfig,
}

/// Default of [`ServerConfig::stream_send_buffer`]: Linux doubles it for
/// bookkeeping, so ~256 KiB may sit in the kernel per stream, enough for
/// 250 MB/s at a 1 ms round trip.
pub const DEFAULT_STREAM_SEND_BUFFER: usize = 128 << 10;

impl ServerConfig {
    /// Whether `watermark` requests are answered: a sidecar's records are
    /// stamped by its own clock as it reads them, so it can promise that no
    /// earlier time follows. An aggregator passes its upstreams' times on,
    /// and a late upstream's record may be older than anything it promised.
    pub fn gives_watermarks(&self) -> bool {
        self.role != "aggregator"
    }

    /// Most bytes tungstenite may hold to send on one WebSocket. `/ws`
    /// writes record batches to the socket itself, so only control frames
    /// and one batch's worth pass through the buffer; the Loki tail sends
    /// its frames (a batch's records with labels and JSON escaping, up to
    /// about twice the batch) through it.
    pub fn ws_max_write_buffer(&self, frames_through_buffer: bool) -> usize {
        let batches = if frames_through_buffer { 4 } else { 2 };
        self.ws_buffer_bytes + self.session.batch_bytes * batches + self.max_message_bytes
    }

    /// Largest frame read from a client: a frame somewhat over the message
    /// limit is read whole, so the client gets a 1009 close instead of a
    /// reset on unread data; beyond that it is refused from its header.
    pub fn ws_max_frame(&self) -> usize {
        self.max_message_bytes.saturating_mul(4).max(64 << 10)
    }

    /// A random delay in `[0, reconnect_jitter)`, so clients do not all come back at once.
    pub fn reconnect_after_ms(&self) -> u64 {
        let max = self.reconnect_jitter.as_millis().max(1) as u64;
        let seed =
            crate::hub::now_ns().unsigned_abs() ^ u64::from(std::process::id()).rotate_left(17);
        xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes()) % max
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            role: "local".into(),
            max_connections: 10_000,
            max_message_bytes: 64 << 10,
            ws_buffer_bytes: 4 << 10,
            ws_read_buffer_bytes: 64,
            session: SessionLimits::default(),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            keepalive: Duration::from_secs(15),
            ack_timeout: Duration::from_secs(10),
            auth: AuthConfig {
                tokens: Vec::new(),
                loopback_exempt: true,
                allow_unauthenticated: false,
                kubernetes: None,
            },
            allowed_origins: Vec::new(),
            stream_send_buffer: DEFAULT_STREAM_SEND_BUFFER,
            reconnect_on_drain: false,
            reconnect_jitter: Duration::from_secs(2),
            head_timeout: Duration::from_secs(10),
            pending_heads: 1024,
            rate: super::limits::RateConfig::default(),
            compress: super::compress::CompressConfig::default(),
        }
    }
}

pub struct AppState {
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub cfg: ServerConfig,
    connections: AtomicUsize,
    /// Tailer has done its first scan.
    pub ready: watch::Receiver<bool>,
    /// What the tailer reads and cannot read (empty on an aggregator).
    pub files: watch::Receiver<crate::tailer::FileReport>,
    /// SIGTERM received.
    pub draining: watch::Receiver<bool>,
    /// Streaming sessions, awaited on shutdown.
    pub sessions: TaskTracker,
    /// Ticks of the shared ping clock (server/listen.rs): every WebSocket
    /// pings when it changes, so no connection keeps a timer of its own.
    pub ping_epoch: std::sync::atomic::AtomicU64,
    /// Ticks of the shared keep-alive clock (every `keepalive`): an SSE
    /// stream that sent nothing since the previous tick sends a comment,
    /// so no stream keeps a timer of its own either.
    pub keepalive_epoch: std::sync::atomic::AtomicU64,
    /// Connections whose request head is still arriving.
    pub(crate) heads: Arc<heads::Pending>,
    /// The rate limits' buckets.
    pub(crate) limits: super::limits::RateLimits,
    /// The shared compressor and its cache of recent batches.
    pub compression: super::compress::Compression,
    /// The history on disk (an aggregator with `--history-dir`).
    pub history: std::sync::OnceLock<Arc<crate::history::History>>,
}

impl AppState {
    pub fn new(
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        cfg: ServerConfig,
        ready: watch::Receiver<bool>,
        draining: watch::Receiver<bool>,
        files: Option<watch::Receiver<crate::tailer::FileReport>>,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            hub,
            metrics,
            heads: Arc::new(heads::Pending::new(cfg.pending_heads)),
            limits: super::limits::RateLimits::new(&cfg.rate),
            compression: super::compress::Compression::new(cfg.compress),
            cfg,
            connections: AtomicUsize::new(0),
            ready,
            files: files.unwrap_or_else(|| watch::channel(Default::default()).1),
            draining,
            sessions: TaskTracker::new(),
            ping_epoch: std::sync::atomic::AtomicU64::new(0),
            keepalive_epoch: std::sync::atomic::AtomicU64::new(0),
            history: std::sync::OnceLock::new(),
        })
    }

    /// A ready, not draining server over `hub`, for tests that drive the
    /// transports without a socket.
    #[cfg(test)]
    pub(crate) fn for_tests(hub: Arc<Hub>, cfg: ServerConfig) -> Arc<AppState> {
        // The senders are dropped: the flags keep their last values.
        let (_, ready) = watch::channel(true);
        let (_, draining) = watch::channel(false);
        AppState::new(hub, Arc::new(Metrics::new()), cfg, ready, draining, None)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub(crate) fn try_connect(self: &Arc<Self>, transport: Transport) -> Option<ConnGuard> {
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= self.cfg.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.reject("connection_limit");
            return None;
        }
        self.metrics
            .clients
            .get_or_create(&self.metrics.transport(transport.clone()))
            .inc();
        Some(ConnGuard {
            state: self.clone(),
            transport,
        })
    }

    /// A new stream from `peer`: over its address's rate, `429` with
    /// `Retry-After`. Before the token check, so a flood costs no review.
    #[allow(clippy::result_large_err)]
    pub(crate) fn limit_connection(&self, peer: Option<SocketAddr>) -> Result<(), Response> {
        match peer.map(|p| self.limits.connection_from(p.ip())) {
            Some(Err((why, wait))) => Err(self.too_many(why, wait)),
            _ => Ok(()),
        }
    }

    /// A new stream with the credential it presented (after the token
    /// check accepted it): over that credential's rate, `429`.
    #[allow(clippy::result_large_err)]
    pub(crate) fn limit_credential(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<(), Response> {
        match bearer(headers).or(query_token) {
            Some(token) => self
                .limits
                .connection_with(token)
                .map_err(|(why, wait)| self.too_many(why, wait)),
            None => Ok(()),
        }
    }

    /// Counts a limited client.
    pub(crate) fn limited(&self, why: super::limits::Limited) {
        self.metrics
            .rate_limited
            .get_or_create(&ReasonLabel {
                reason: why.reason(),
            })
            .inc();
    }

    fn too_many(&self, why: super::limits::Limited, wait: std::time::Duration) -> Response {
        self.limited(why);
        self.reject("rate_limited");
        let secs = super::limits::retry_after_secs(wait);
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            format!("{}; retry after {secs} s\n", why.message()),
        )
            .into_response()
    }

    pub(crate) fn reject(&self, reason: &'static str) {
        self.metrics
            .connections_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Auth, then Origin: both before any upgrade.
    // A ready-made response is the natural error of an HTTP admission check.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn admit(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
        query_token: Option<&str>,
    ) -> Result<(), Response> {
        self.check_token(headers, Some(peer), query_token).await?;
        self.check_origin(headers)
    }

    /// The token rules: loopback may be exempt; otherwise one of the
    /// configured tokens, or a Kubernetes token allowed to `get pods/log`
    /// here (kubernetes mode), or nothing at all when neither is configured
    /// and unauthenticated access was not allowed explicitly.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn check_token(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        query_token: Option<&str>,
    ) -> Result<(), Response> {
        let auth = &self.cfg.auth;
        // The exemption is for port-forward users, who address the server
        // by a loopback name. A page on a name its owner rebinds to
        // 127.0.0.1 reaches the same socket with its own name as Host (and
        // as Origin, so the origin check alone cannot tell): it is not exempt.
        let mut foreign_host = None;
        if peer.is_some_and(|p| is_loopback(p.ip())) && auth.loopback_exempt {
            let host = headers.get(header::HOST).map(|h| h.to_str().unwrap_or("?"));
            match host {
                Some(h) if !self.exempt_host(h) => foreign_host = Some(h),
                _ => return Ok(()),
            }
        }
        let got = bearer(headers).or(query_token);
        // Compare against every token, in constant time each.
        let static_ok = got.is_some_and(|g| {
            auth.tokens.iter().fold(false, |hit, want| {
                hit | constant_time_eq::constant_time_eq(g.as_bytes(), want.as_bytes())
            })
        });
        if static_ok {
            return Ok(());
        }
        if let (Some(host), None) = (foreign_host, got) {
            self.reject("foreign_host");
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "Host {host:?} is not a loopback name: without a token, only requests to \
                     localhost, *.localhost or a loopback address (or the host of an \
                     --allowed-origin) are served, so a page on a rebound name cannot read \
                     through a port-forward\n"
                ),
            )
                .into_response());
        }
        if let Some(k8s) = &auth.kubernetes {
            let Some(token) = got else {
                return Err(self.refuse(&kube_auth::AccessError::Unauthenticated(
                    "no bearer token (Authorization: Bearer, or access_token=)".into(),
                )));
            };
            return match k8s.check(token, &self.metrics).await {
                Ok(user) => {
                    tracing::debug!(%user, "admitted by Kubernetes RBAC");
                    Ok(())
                }
                Err(e) => Err(self.refuse(&e)),
            };
        }
        if auth.tokens.is_empty() {
            if auth.allow_unauthenticated {
                return Ok(());
            }
            self.reject("forbidden");
            return Err((
                StatusCode::FORBIDDEN,
                "no token is configured: only loopback clients (port-forward) may connect\n",
            )
                .into_response());
        }
        self.reject("unauthorized");
        Err(unauthorized("missing or invalid bearer token\n".into()))
    }

    /// The response to a refused Kubernetes token: 401, 403 naming the
    /// missing permission, or 503 when the API server cannot tell.
    fn refuse(&self, e: &kube_auth::AccessError) -> Response {
        use kube_auth::AccessError;
        let body = format!("{e}\n");
        match e {
            AccessError::Unauthenticated(_) => {
                self.reject("unauthorized");
                unauthorized(body)
            }
            AccessError::Forbidden { .. } => {
                self.reject("forbidden");
                (StatusCode::FORBIDDEN, body).into_response()
            }
            AccessError::Unavailable(_) => {
                tracing::warn!(error = %e, "token not checked: refusing the client");
                self.reject("auth_unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, "5")],
                    body,
                )
                    .into_response()
            }
        }
    }

    /// Browsers must come from the server itself or an allowed origin.
    #[allow(clippy::result_large_err)]
    pub(crate) fn check_origin(&self, headers: &HeaderMap) -> Result<(), Response> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        if self.origin_allowed(
            origin,
            headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        ) {
            return Ok(());
        }
        self.reject("origin");
        Err((
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} is not allowed\n"),
        )
            .into_response())
    }

    /// Whether a loopback client's Host may use the loopback exemption: a
    /// loopback name or address, or the host of an allowed origin.
    fn exempt_host(&self, host: &str) -> bool {
        is_loopback_host(host)
            || self
                .cfg
                .allowed_origins
                .iter()
                .any(|a| a == "*" || origin_host(a).eq_ignore_ascii_case(host))
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host(origin))) {
            return true;
        }
        self.cfg
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow() && !*self.draining.borrow()
    }
}

/// Resolves once the flag is true (the borrow guard is released before
/// returning, so the future may be held across awaits).
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Holds a connection slot; frees it when dropped.
pub struct ConnGuard {
    state: Arc<AppState>,
    transport: Transport,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.state.connections.fetch_sub(1, Ordering::AcqRel);
        self.state
            .metrics
            .clients
            .get_or_create(&self.state.metrics.transport(self.transport.clone()))
            .dec();
    }
}

fn unauthorized(body: String) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, body).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"logstream\""),
    );
    r
}

/// The `host[:port]` of an origin (`scheme://host[:port]`).
fn origin_host(origin: &str) -> &str {
    origin
        .split_once("://")
        .map_or(origin, |(_, h)| h)
        .trim_end_matches('/')
}

/// `localhost`, a name under `.localhost` (RFC 6761: always loopback, so
/// nobody can rebind it) or a loopback address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(a, _)| a),
        None => host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, HubLimits};
    use kube_auth::{KubeAuth, Target};

    /// A server in kubernetes mode whose API server is unreachable, with the
    /// pull token configured as a static token.
    fn state() -> Arc<AppState> {
        let url: axum::http::Uri = "https://127.0.0.1:9".parse().unwrap();
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        let target = Target {
            namespace: "shop".into(),
            pod: Some("web-1".into()),
        };
        let cfg = ServerConfig {
            auth: AuthConfig {
                tokens: vec!["pull-token".into()],
                loopback_exempt: true,
                allow_unauthenticated: false,
                kubernetes: Some(Arc::new(KubeAuth::with_client(
                    target,
                    kube_auth::DEFAULT_TTL,
                    client,
                ))),
            },
            ..ServerConfig::default()
        };
        let limits = HubLimits {
            max_lines: 10,
            max_bytes: 1 << 10,
        };
        AppState::for_tests(Hub::new(limits, "t"), cfg)
    }

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        h
    }

    async fn status(st: &AppState, peer: &str, token: Option<&str>, query: Option<&str>) -> u16 {
        let peer: SocketAddr = peer.parse().unwrap();
        match st.check_token(&headers(token), Some(peer), query).await {
            Ok(()) => 200,
            Err(r) => r.status().as_u16(),
        }
    }

    #[tokio::test]
    async fn kubernetes_mode_keeps_loopback_and_static_tokens_and_fails_closed() {
        let st = state();
        let remote = "10.1.2.3:40000";
        assert_eq!(status(&st, "127.0.0.1:40000", None, None).await, 200);
        assert_eq!(status(&st, remote, Some("pull-token"), None).await, 200);
        assert_eq!(status(&st, remote, None, Some("pull-token")).await, 200);
        assert_eq!(status(&st, remote, None, None).await, 401, "no token");
        // Not the pull token, and the API server cannot be asked: 503, not 200.
        assert_eq!(status(&st, remote, Some("k8s-token"), None).await, 503);
        assert_eq!(status(&st, remote, None, Some("k8s-token")).await, 503);
        let text = st.metrics.encode();
        assert!(
            text.contains("logstream_connections_rejected_total{reason=\"auth_unavailable\"} 2"),
            "{text}"
        );
    }
}
