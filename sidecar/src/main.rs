//! The `logstream` binary: local mode, sidecar, demo writer, client, schema.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use logstream::aggregator::{AggregatorOptions, Discovery, run_aggregator};
use logstream::hub::HubLimits;
use logstream::parse::ParseMode;
use logstream::protocol::{Format, ServerMessage, Subscribe};
use logstream::run::{StreamerOptions, run_streamer, termination};
use logstream::server::kube_auth::{KubeAuth, Target};
use logstream::server::{AuthConfig, ServerConfig};
use logstream::session::{SessionLimits, SlowPolicy};
use logstream::tailer::TailConfig;
use logstream_contract::{STREAM_PORT, env};

/// mimalloc instead of glibc's malloc: the aggregator ingests ~30% more lines
/// per CPU-second with it (212k vs 160k). Its arenas commit lazily
/// (.cargo/config.toml), which keeps idle SSE connections below glibc's cost
/// (bench/ANALYSIS.md, "Second round"). Off with `--no-default-features`
/// (the system allocator, for heap profilers).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "logstream",
    version,
    about = "Stream log files live over WebSocket, SSE and HTTP"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text", global = true, value_parser = logstream_contract::logging::FORMATS)]
    log_format: String,
    /// Threads that run connections, pulls and the merge (default: one per
    /// core). One thread spends less CPU per line where the work is many
    /// small wake-ups (an aggregator ordering 50 sidecars: ~20 % less,
    /// bench/ANALYSIS.md) but uses one core at most.
    #[arg(long, env = env::WORKER_THREADS, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Stream the files of a local folder (no cluster needed).
    Serve(ServeArgs),
    /// Run inside a pod next to the app (configured by the operator's injector).
    Sidecar(SidecarArgs),
    /// Pull every sidecar of a namespace (or `--source` URLs), merge and serve.
    Aggregator(AggregatorArgs),
    /// Write demo logs (mixed formats and levels, rotating) into a folder.
    DemoWriter(DemoWriterArgs),
    /// Follow a logstream server from the terminal (reconnects and resumes).
    Tail(TailArgs),
    /// Print the JSON Schema of the wire protocol.
    Schema,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Folder whose files are streamed.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7680")]
    listen: SocketAddr,
    /// `service_name` of the folder's streams in the Loki API (default:
    /// `unknown_service`, as Loki says when nothing names one).
    #[arg(long, default_value = "")]
    service_name: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct SidecarArgs {
    /// The shared log volume, mounted read-only.
    #[arg(long, env = env::DIR, default_value = "/var/log/app")]
    dir: PathBuf,
    #[arg(long, env = env::LISTEN, default_value_t = default_listen())]
    listen: SocketAddr,
    #[arg(long, env = env::POD_NAMESPACE, default_value = "")]
    namespace: String,
    #[arg(long, env = env::POD_NAME, default_value = "")]
    pod: String,
    /// The app container that writes the files.
    #[arg(long, env = env::CONTAINER, default_value = "")]
    container: String,
    /// The service the pod belongs to (the operator sets it from the pod's
    /// `app` label or its workload): `service_name` in the Loki API.
    #[arg(long, env = env::SERVICE_NAME, default_value = "")]
    service_name: String,
    #[command(flatten)]
    kubernetes: KubernetesAuth,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct AggregatorArgs {
    /// Upstream base URLs (repeat or comma-separate); without them, pods are discovered.
    #[arg(long = "source", env = env::SOURCES, value_delimiter = ',')]
    sources: Vec<String>,
    /// Namespace whose pods are discovered.
    #[arg(long, env = env::POD_NAMESPACE, default_value = "default")]
    namespace: String,
    /// Label selector of the pods carrying a sidecar.
    #[arg(
        long,
        env = env::DISCOVER_LABEL,
        default_value = "logstream.dev/stream"
    )]
    discover_label: String,
    #[arg(long, env = env::LISTEN, default_value_t = default_listen())]
    listen: SocketAddr,
    /// Cross-source reordering by timestamp; no record waits longer.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    reorder_window: Duration,
    /// How long a record waits for the sidecars' own watermarks before the
    /// ones holding it back are asked. Shorter: lower latency, more asks
    /// (each wakes a sidecar and this process). 50 sidecars x 2,000
    /// lines/s, 6ms against 1ms: a quarter of the asks, ~25 % less CPU per
    /// line, p50 ~2.5 ms later (bench/ANALYSIS.md).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    watermark_ask_after: Duration,
    /// Token presented to the sidecars.
    #[arg(long, env = env::UPSTREAM_TOKEN_FILE)]
    upstream_token_file: Option<PathBuf>,
    /// After SIGTERM, keep telling clients to reconnect this long before closing the listener.
    #[arg(long, env = env::DRAIN_DELAY, default_value = "2s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// Upper bound of the random delay clients are asked to wait before reconnecting.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    reconnect_jitter: Duration,
    /// Keep the history on disk too, in this directory (compressed
    /// segments, read back after a restart); Loki queries read memory and
    /// disk as one history.
    #[arg(long, env = env::HISTORY_DIR)]
    history_dir: Option<PathBuf>,
    /// Bytes the history on disk may take; the oldest segments go first.
    #[arg(long, env = env::HISTORY_MAX_BYTES, default_value_t = 2 << 30)]
    history_max_bytes: u64,
    /// Records older than this leave the history on disk (0s: kept until
    /// the bytes bound).
    #[arg(long, env = env::HISTORY_MAX_AGE, default_value = "24h", value_parser = humantime::parse_duration)]
    history_max_age: Duration,
    /// A record waits at most this long before it is written to disk (what
    /// a crash can lose).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    history_flush_after: Duration,
    #[command(flatten)]
    kubernetes: KubernetesAuth,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct DemoWriterArgs {
    dir: PathBuf,
    /// Lines per second.
    #[arg(long, default_value_t = 5)]
    rate: u64,
    /// Rotate app.log past this many bytes (0: never).
    #[arg(long, default_value_t = 1 << 20)]
    rotate_bytes: u64,
    /// Stop after this many lines (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
}

#[derive(Args, Debug)]
struct TailArgs {
    /// `http://host:port` of a sidecar, local server or aggregator.
    url: String,
    #[arg(long, env = env::TOKEN)]
    token: Option<String>,
    #[arg(long)]
    tail: Option<usize>,
    #[arg(long)]
    grep: Option<String>,
    #[arg(long)]
    level: Option<String>,
    #[arg(long)]
    file: Option<String>,
    /// Print whole records as JSON lines.
    #[arg(long)]
    json: bool,
}

/// Kubernetes access mode of the in-cluster servers.
#[derive(Args, Debug, Clone)]
struct KubernetesAuth {
    /// Also accept Kubernetes bearer tokens whose user may `get pods/log`
    /// (TokenReview, then SubjectAccessReview): whoever may `kubectl logs` may stream.
    #[arg(long, env = env::KUBERNETES_AUTH)]
    kubernetes_auth: bool,
    /// How long a token's answer (allowed, forbidden or invalid) is remembered.
    #[arg(long, env = env::AUTH_CACHE_TTL, default_value = "30s", value_parser = humantime::parse_duration)]
    auth_cache_ttl: Duration,
}

impl KubernetesAuth {
    /// Turns the checks on for `target`, when asked to.
    fn apply(&self, server: &mut ServerConfig, target: Target) -> anyhow::Result<()> {
        if !self.kubernetes_auth {
            return Ok(());
        }
        if target.namespace.is_empty() || target.pod.as_ref().is_some_and(String::is_empty) {
            anyhow::bail!(
                "--kubernetes-auth needs the namespace (and, for a sidecar, the pod): --namespace/POD_NAMESPACE, --pod/POD_NAME"
            );
        }
        server.auth.kubernetes = Some(Arc::new(KubeAuth::new(target, self.auth_cache_ttl)));
        Ok(())
    }
}

/// Options shared by every streaming server.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Globs of files to stream, relative to the folder (repeat or comma-separate).
    #[arg(
        long = "glob",
        env = env::GLOBS,
        value_delimiter = ',',
        default_value = "**/*.log"
    )]
    globs: Vec<String>,
    /// How lines are parsed for their level.
    #[arg(long, env = env::PARSE, default_value = "auto")]
    parse: ParseMode,
    /// Field that carries the level in JSON/logfmt lines (default: level, lvl, severity...).
    #[arg(long, env = env::LEVEL_KEY)]
    level_key: Option<String>,
    /// Records kept in history.
    #[arg(long, env = env::BUFFER_LINES, default_value_t = 100_000)]
    buffer_lines: usize,
    /// Bytes kept in history.
    #[arg(long, env = env::BUFFER_BYTES, default_value_t = 64 << 20)]
    buffer_bytes: usize,
    /// Longer lines are split into marked parts.
    #[arg(long, default_value_t = 64 << 10)]
    max_line_bytes: usize,
    /// A line without newline is flushed after this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    partial_timeout: Duration,
    /// Stat fallback period.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Bytes of records a client may lag behind the live head...
    #[arg(long, default_value_t = 4 << 20)]
    client_queue_bytes: u64,
    /// ...for this long before the slow-client policy applies.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    slow_client_grace: Duration,
    #[arg(long, value_enum, default_value = "gap")]
    slow_client: SlowPolicy,
    /// Kernel send buffer of a streaming connection in bytes (0: the
    /// kernel's autotuning); what sits there reaches a slow client before
    /// its gap notice does.
    #[arg(long, default_value_t = logstream::server::DEFAULT_STREAM_SEND_BUFFER)]
    stream_send_buffer: usize,
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Largest message a client may send.
    #[arg(long, default_value_t = 64 << 10)]
    max_message_bytes: usize,
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pong_timeout: Duration,
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    send_timeout: Duration,
    /// SSE keep-alive clock period: on each tick, every SSE stream that sent
    /// nothing since the tick before sends a `: keep-alive` comment (one
    /// clock for all streams, none per connection).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    keepalive: Duration,
    /// Bearer token clients must present (header or `access_token=`).
    #[arg(long, env = env::TOKEN, hide_env_values = true)]
    token: Option<String>,
    /// Files holding accepted bearer tokens (mounted Secrets; repeat or comma-separate).
    #[arg(
        long = "token-file",
        env = env::TOKEN_FILE,
        value_delimiter = ','
    )]
    token_files: Vec<PathBuf>,
    /// Require the token from loopback clients (port-forward) too (set by
    /// the operator in pods with a service-mesh proxy).
    #[arg(long, env = env::NO_LOOPBACK_EXEMPTION)]
    no_loopback_exemption: bool,
    /// Serve non-loopback clients without a token (insecure).
    #[arg(long, env = env::ALLOW_UNAUTHENTICATED)]
    allow_unauthenticated: bool,
    /// Browser origins allowed besides the server's own (`*` for any).
    #[arg(
        long = "allowed-origin",
        env = env::ALLOWED_ORIGINS,
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// Longest a shutdown may take.
    #[arg(long, env = env::GRACE, default_value = "25s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How long a draining WebSocket waits for the client's ack.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,
    /// Folder where each file's position is kept, so a restarted streamer
    /// continues its sources instead of sending the end of every file again
    /// (an emptyDir in a pod survives a container restart).
    #[arg(long, env = env::STATE_DIR)]
    state_dir: Option<PathBuf>,
    /// Longest a client may take to send a whole request head (its
    /// WebSocket handshake included).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    head_timeout: Duration,
    /// New streams (`/ws`, `/sse`, `/stream`, Loki tail) one source address
    /// may open: RATE per second (`N`, `N/s`) or minute (`N/m`), BURST at
    /// once (`0`: no limit). Over it:
    /// 429 with Retry-After. Behind an ingress every client shares the
    /// proxy's address: raise it there and rely on the per-token limit.
    #[arg(long, default_value = "50,200", value_name = "RATE[,BURST]")]
    rate_limit_address: logstream::server::limits::Rate,
    /// New streams per bearer token (`0`: no limit).
    #[arg(long, default_value = "20,100", value_name = "RATE[,BURST]")]
    rate_limit_token: logstream::server::limits::Rate,
    /// Messages one WebSocket client may send (`0`: no limit). Over it: close 1008.
    #[arg(long, default_value = "50,100", value_name = "RATE[,BURST]")]
    rate_limit_messages: logstream::server::limits::Rate,
    /// `subscribe` messages one WebSocket client may send (`0`: no limit).
    #[arg(long, default_value = "5,20", value_name = "RATE[,BURST]")]
    rate_limit_subscribes: logstream::server::limits::Rate,
    /// `watermark` requests one WebSocket client may send (`0`: no limit),
    /// counted apart from other messages. Over it: close 1008.
    #[arg(long, default_value = "1000,1000", value_name = "RATE[,BURST]")]
    rate_limit_watermarks: logstream::server::limits::Rate,
    /// Never compress: no permessage-deflate on WebSockets, no gzip on
    /// `/sse` and `/stream` (compression is negotiated with each client;
    /// a batch is compressed once for every client sent the same bytes).
    #[arg(long)]
    no_compression: bool,
    /// Batches smaller than this go uncompressed.
    #[arg(long, default_value_t = logstream::server::compress::CompressConfig::default().min_bytes)]
    compress_min_bytes: usize,
    /// zlib level of compressed batches: 1 (fastest) to 9.
    #[arg(
        long,
        default_value_t = logstream::server::compress::CompressConfig::default().level,
        value_parser = clap::value_parser!(u32).range(1..=9)
    )]
    compress_level: u32,
}

impl Common {
    fn tokens(&self) -> anyhow::Result<Vec<String>> {
        let mut tokens: Vec<String> = self.token.iter().map(|t| t.trim().to_string()).collect();
        for p in &self.token_files {
            tokens.push(read_secret(p)?);
        }
        if tokens.iter().any(String::is_empty) {
            anyhow::bail!("a token is empty");
        }
        Ok(tokens)
    }

    fn server(&self, role: &str) -> anyhow::Result<ServerConfig> {
        let budget = logstream::fds::process_budget();
        if self.max_connections > budget.connections {
            // Said loudly only when someone asked for more than fits.
            if self.max_connections == DEFAULT_MAX_CONNECTIONS {
                tracing::info!(
                    budget = budget.connections,
                    "serving at most the descriptor budget's connections"
                );
            } else {
                tracing::warn!(
                    max_connections = self.max_connections,
                    budget = budget.connections,
                    "--max-connections is more than the descriptor limit allows: serving at most the budget (raise RLIMIT_NOFILE for more)"
                );
            }
        }
        Ok(ServerConfig {
            role: role.into(),
            max_connections: self.max_connections.min(budget.connections),
            head_timeout: self.head_timeout,
            pending_heads: budget.pending_heads,
            max_message_bytes: self.max_message_bytes,
            session: SessionLimits {
                queue_bytes: self.client_queue_bytes,
                slow_grace: self.slow_client_grace,
                policy: self.slow_client,
                ..SessionLimits::default()
            },
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            send_timeout: self.send_timeout,
            keepalive: self.keepalive,
            ack_timeout: self.ack_timeout,
            auth: AuthConfig {
                tokens: self.tokens()?,
                loopback_exempt: !self.no_loopback_exemption,
                allow_unauthenticated: self.allow_unauthenticated,
                kubernetes: None,
            },
            allowed_origins: self.allowed_origins.clone(),
            stream_send_buffer: self.stream_send_buffer,
            rate: logstream::server::limits::RateConfig {
                connections_per_address: self.rate_limit_address,
                connections_per_credential: self.rate_limit_token,
                messages: self.rate_limit_messages,
                subscribes: self.rate_limit_subscribes,
                watermarks: self.rate_limit_watermarks,
            },
            compress: logstream::server::compress::CompressConfig {
                enabled: !self.no_compression,
                min_bytes: self.compress_min_bytes,
                level: self.compress_level,
            },
            ..ServerConfig::default()
        })
    }

    fn history(&self) -> HubLimits {
        HubLimits {
            max_lines: self.buffer_lines,
            max_bytes: self.buffer_bytes,
        }
    }

    fn build(
        &self,
        dir: PathBuf,
        origin: logstream::protocol::Source,
        role: &str,
        listen: SocketAddr,
    ) -> anyhow::Result<StreamerOptions> {
        let mut tail = TailConfig::new(dir);
        tail.globs = self.globs.clone();
        tail.origin = origin;
        tail.parse = self.parse;
        tail.level_key = self.level_key.clone();
        tail.max_line = self.max_line_bytes;
        tail.partial_timeout = self.partial_timeout;
        tail.poll = self.poll_interval;
        tail.max_files = logstream::fds::process_budget().files;
        if let Some(d) = &self.state_dir {
            std::fs::create_dir_all(d)
                .map_err(|e| anyhow::anyhow!("state folder {}: {e}", d.display()))?;
            tail.state_file = Some(d.join(logstream::positions::FILE_NAME));
        }
        Ok(StreamerOptions {
            tail,
            server: self.server(role)?,
            history: self.history(),
            listen,
            grace: self.grace,
        })
    }
}

const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Every address on the contract's port.
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], STREAM_PORT))
}

fn read_secret(p: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(p)
        .map_err(|e| anyhow::anyhow!("token file {}: {e}", p.display()))?
        .trim()
        .to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logstream_contract::logging::init(&cli.log_format);
    match cli.command {
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&logstream::protocol::json_schema())?
            );
            Ok(())
        }
        Command::DemoWriter(a) => a.run(),
        Command::Serve(a) => a.run(cli.worker_threads),
        Command::Sidecar(a) => a.run(cli.worker_threads),
        Command::Aggregator(a) => a.run(cli.worker_threads),
        Command::Tail(a) => a.run(cli.worker_threads),
    }
}

impl DemoWriterArgs {
    fn run(self) -> anyhow::Result<()> {
        let DemoWriterArgs {
            dir,
            rate,
            rotate_bytes,
            count,
        } = self;
        logstream::demo::run_demo(&logstream::demo::DemoOptions {
            dir,
            rate,
            rotate_bytes,
            count,
        })?;
        Ok(())
    }
}

impl ServeArgs {
    fn run(self, threads: Option<u16>) -> anyhow::Result<()> {
        let ServeArgs {
            dir,
            listen,
            service_name,
            common,
        } = self;
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let origin = logstream::protocol::Source {
            namespace: String::new(),
            pod: host,
            container: String::new(),
            file: String::new(),
            service: service_name,
        };
        let opts = common.build(dir, origin, "local", listen)?;
        runtime(threads)?.block_on(run_streamer(opts, termination()))?;
        Ok(())
    }
}

impl SidecarArgs {
    fn run(self, threads: Option<u16>) -> anyhow::Result<()> {
        let SidecarArgs {
            dir,
            listen,
            namespace,
            pod,
            container,
            service_name,
            kubernetes,
            common,
        } = self;
        let target = Target {
            namespace: namespace.clone(),
            pod: Some(pod.clone()),
        };
        let origin = logstream::protocol::Source {
            namespace,
            pod,
            container,
            file: String::new(),
            service: service_name,
        };
        let mut opts = common.build(dir, origin, "sidecar", listen)?;
        kubernetes.apply(&mut opts.server, target)?;
        runtime(threads)?.block_on(run_streamer(opts, termination()))?;
        Ok(())
    }
}

impl AggregatorArgs {
    fn run(self, threads: Option<u16>) -> anyhow::Result<()> {
        let AggregatorArgs {
            sources,
            namespace,
            discover_label,
            listen,
            reorder_window,
            watermark_ask_after,
            upstream_token_file,
            drain_delay,
            reconnect_jitter,
            history_dir,
            history_max_bytes,
            history_max_age,
            history_flush_after,
            kubernetes,
            common,
        } = self;
        let disk_history = history_dir.map(|dir| {
            let mut h = logstream::history::HistoryOptions::new(dir);
            h.max_bytes = history_max_bytes;
            h.max_age = (!history_max_age.is_zero()).then_some(history_max_age);
            h.flush_after = history_flush_after;
            h
        });
        let mut server = common.server("aggregator")?;
        kubernetes.apply(
            &mut server,
            Target {
                namespace: namespace.clone(),
                pod: None,
            },
        )?;
        let discovery = if sources.is_empty() {
            Discovery::Pods {
                namespace,
                label: discover_label,
            }
        } else {
            Discovery::Static(sources)
        };
        server.reconnect_jitter = reconnect_jitter;
        let opts = AggregatorOptions {
            discovery,
            server,
            history: common.history(),
            disk_history,
            listen,
            reorder_window,
            watermark_ask_after,
            upstream_token: upstream_token_file
                .as_deref()
                .map(read_secret)
                .transpose()?,
            drain_delay,
            grace: common.grace,
        };
        runtime(threads)?.block_on(run_aggregator(opts, termination()))?;
        Ok(())
    }
}

impl TailArgs {
    fn run(self, threads: Option<u16>) -> anyhow::Result<()> {
        let TailArgs {
            url,
            token,
            tail,
            grep,
            level,
            file,
            json,
        } = self;
        let sub = Subscribe {
            tail,
            grep,
            level,
            file,
            format: Some(Format::Json),
            ..Default::default()
        };
        let opts = logstream::client::ClientOptions {
            base: url,
            sub,
            token,
        };
        runtime(threads)?.block_on(async move {
            tokio::select! {
                r = logstream::client::follow(opts, move |m, r| print_message(m, r, json)) => r.map_err(anyhow::Error::from),
                _ = termination() => Ok(()),
            }
        })
    }
}

fn print_message(m: &ServerMessage, r: Option<&logstream::protocol::Record>, json: bool) {
    match (m, r) {
        (_, Some(r)) if json => println!("{}", serde_json::to_string(r).unwrap_or_default()),
        (_, Some(r)) => println!("{}", r.line),
        (ServerMessage::Gap { missed, reason, .. }, None) => {
            eprintln!("logstream: {missed} records skipped ({reason:?})")
        }
        (ServerMessage::Error { message, .. }, None) => eprintln!("logstream: error: {message}"),
        _ => {}
    }
}

fn runtime(threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(usize::from(n));
    }
    b.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
