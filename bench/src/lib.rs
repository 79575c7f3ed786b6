//! Shared helpers of the logstream load tools (`ls-idle`, `ls-latency`,
//! `ls-throughput`, `ls-report`): start the real `logstream` binary, read its
//! `/metrics` and the kernel's `/proc` accounting, open WebSocket clients
//! from chosen loopback source addresses, summarise histograms.
//!
//! Everything here targets loopback only.

pub mod compare_report;
pub mod proto;
pub mod targets;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The command line of this process, for the record of how a number was made.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `logstream` binary next to this tool (both live in `target/release`).
pub fn default_server_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", exe.display()))?;
    let bin = dir.join("logstream");
    if !bin.exists() {
        bail!(
            "{} not found: build with `cargo build --release -p logstream -p logstream-bench`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A scratch folder on tmpfs (`/dev/shm`) when possible, removed on drop:
/// `logs/` is the watched folder, `stage/` is for files renamed in later.
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Result<Scratch> {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let root = base.join(format!(
            "logstream-bench-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(root.join("logs"))
            .with_context(|| format!("create {}", root.display()))?;
        std::fs::create_dir_all(root.join("stage"))?;
        Ok(Scratch { root })
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn stage(&self) -> PathBuf {
        self.root.join("stage")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A running `logstream serve` (spawned by us, or attached to).
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    /// The exact server command line, when we started it.
    pub command: String,
}

/// The new-stream rate limits off: the bench opens thousands of
/// connections from a few loopback addresses at once, which is what the
/// limits are there to refuse (sidecar/tests/limits.rs tests them).
pub const NO_STREAM_RATE_LIMITS: [&str; 4] =
    ["--rate-limit-address", "0", "--rate-limit-token", "0"];

impl Server {
    /// `BIN serve --dir DIR --listen 127.0.0.1:0 [NO_STREAM_RATE_LIMITS] EXTRA...`; waits for the
    /// `listening on http://ADDR` line and for `/readyz`.
    pub fn spawn(bin: &Path, dir: &Path, extra: &[String], stderr_to: &Path) -> Result<Server> {
        let err = std::fs::File::create(stderr_to)
            .with_context(|| format!("create {}", stderr_to.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(NO_STREAM_RATE_LIMITS)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("LS_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let command = format!(
            "{} serve --dir {} --listen 127.0.0.1:0 {} {}",
            bin.display(),
            dir.display(),
            NO_STREAM_RATE_LIMITS.join(" "),
            extra.join(" ")
        )
        .trim_end()
        .to_string();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read server stdout")?;
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(stderr_to).unwrap_or_default();
            bail!("unexpected first line {line:?} from the server; stderr:\n{log}");
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("bad address {addr:?}"))?;
        let pid = child.id();
        let s = Server {
            child: Some(child),
            addr,
            pid: Some(pid),
            command,
        };
        s.wait_ready(Duration::from_secs(30))?;
        Ok(s)
    }

    /// `BIN ARGS...` for any subcommand (`sidecar`, `aggregator`, ...): waits
    /// for the `listening on http://ADDR` line and for `/readyz`. `ARGS` must
    /// listen on loopback.
    pub fn spawn_args(bin: &Path, args: &[String], stderr_to: &Path) -> Result<Server> {
        let err = std::fs::File::create(stderr_to)
            .with_context(|| format!("create {}", stderr_to.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("LS_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let command = format!("{} {}", bin.display(), args.join(" "));
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("read server stdout")?;
        let parsed = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .filter(|a| a.ip().is_loopback());
        let Some(addr) = parsed else {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(stderr_to).unwrap_or_default();
            bail!("unexpected first line {line:?} from `{command}`; stderr:\n{log}");
        };
        let pid = child.id();
        let s = Server {
            child: Some(child),
            addr,
            pid: Some(pid),
            command,
        };
        s.wait_ready(Duration::from_secs(30))?;
        Ok(s)
    }

    /// An already running server.
    pub fn attach(addr: &str, pid: Option<u32>) -> Result<Server> {
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("bad address {addr:?}"))?;
        if !addr.ip().is_loopback() {
            bail!("{addr} is not a loopback address: the load tools only target loopback");
        }
        let s = Server {
            child: None,
            addr,
            pid,
            command: String::new(),
        };
        s.wait_ready(Duration::from_secs(30))?;
        Ok(s)
    }

    pub fn wait_ready(&self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if http_get(self.addr, "/readyz").map(|(c, _)| c).ok() == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("server at {} never became ready", self.addr)
    }

    /// A metric series (`name` or `name{labels}`) from `/metrics`.
    pub fn metric(&self, series: &str) -> Result<Option<f64>> {
        let (code, body) = http_get(self.addr, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(parse_metric(&body, series))
    }

    /// Server resident set size in bytes (needs the pid).
    pub fn rss(&self) -> Option<u64> {
        status_bytes(self.pid?, "VmRSS")
    }

    /// Server peak resident set size in bytes.
    pub fn hwm(&self) -> Option<u64> {
        status_bytes(self.pid?, "VmHWM")
    }

    /// Is the spawned child still running?
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Value of `series` in a Prometheus/OpenMetrics text body.
pub fn parse_metric(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Minimal HTTP/1.1 GET over a raw socket: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP answer from {addr}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

// ---------------------------------------------------------------- /proc

/// A `kB` field of `/proc/PID/status`, in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kb_field(&s, key)
}

pub(crate) fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    })
}

/// Kernel slab memory (`/proc/meminfo` `Slab:`) in bytes: socket structures,
/// inodes, epoll items... machine-wide.
pub fn kernel_slab() -> Option<u64> {
    kb_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "Slab")
}

/// Slab caches that grow with TCP sockets (`/proc/slabinfo`, root only):
/// active objects × object size of TCP, sock_inode_cache, eventpoll items,
/// bind buckets and `filp`. Less polluted by other work than `Slab:`.
pub fn socket_slab_bytes() -> Option<u64> {
    const CACHES: [&str; 7] = [
        "TCP",
        "sock_inode_cache",
        "eventpoll_epi",
        "eventpoll_pwq",
        "tcp_bind_bucket",
        "tcp_bind2_bucket",
        "filp",
    ];
    let s = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let mut total = 0;
    for l in s.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 3 && CACHES.contains(&f[0]) {
            let active: u64 = f[1].parse().ok()?;
            let size: u64 = f[3].parse().ok()?;
            total += active * size;
        }
    }
    Some(total)
}

/// `/proc/net/sockstat` TCP line: (inuse, mem in bytes of buffer pages).
pub fn sockstat_tcp() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| {
        f.iter()
            .position(|x| *x == k)
            .and_then(|i| f.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((get("inuse")?, get("mem")? * 4096))
}

/// Clock ticks per second of `/proc` CPU times.
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

fn stat_cpu(path: &Path) -> Option<Duration> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clk_tck() as f64))
}

/// User + system CPU time of a whole process.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    stat_cpu(Path::new(&format!("/proc/{pid}/stat")))
}

/// User + system CPU time of the threads of `pid` named `name`.
pub fn thread_cpu(pid: u32, name: &str) -> Option<Duration> {
    let mut total = None;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name
            && let Some(c) = stat_cpu(&t.path().join("stat"))
        {
            total = Some(total.unwrap_or(Duration::ZERO) + c);
        }
    }
    total
}

/// Machine-wide CPU ticks from `/proc/stat`: (busy, total).
pub fn machine_ticks() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Share of the machine's CPU busy over `window`.
pub fn machine_busy_share(window: Duration) -> Option<f64> {
    let (b0, t0) = machine_ticks()?;
    std::thread::sleep(window);
    let (b1, t1) = machine_ticks()?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// Waits (up to `max`) until the machine is quiet: other builds and tests on
/// a 2-core machine distort latency by whole scheduler slices.
pub fn wait_quiet(max: Duration, max_busy: f64) -> Value {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < max {
        last = machine_busy_share(Duration::from_millis(500));
        if last.is_none_or(|b| b <= max_busy) {
            break;
        }
    }
    let quiet = last.is_none_or(|b| b <= max_busy);
    if !quiet {
        eprintln!(
            "warning: the machine is busy ({:.0}% CPU) by other processes: numbers will be noisy",
            last.unwrap_or(0.0) * 100.0
        );
    }
    json!({"waited_secs": start.elapsed().as_secs_f64(), "busy_share_at_start": last, "quiet": quiet})
}

/// CPU used on the machine by everything but this tool and the server,
/// over a measurement: `start` then `finish`.
pub struct OtherLoad {
    machine: Option<(u64, u64)>,
    mine: Duration,
    server: Duration,
    at: Instant,
}

impl OtherLoad {
    pub fn start(server_pid: Option<u32>) -> OtherLoad {
        OtherLoad {
            machine: machine_ticks(),
            mine: process_cpu(std::process::id()).unwrap_or_default(),
            server: server_pid.and_then(process_cpu).unwrap_or_default(),
            at: Instant::now(),
        }
    }

    pub fn finish(&self, server_pid: Option<u32>) -> Value {
        let (Some((b0, t0)), Some((b1, t1))) = (self.machine, machine_ticks()) else {
            return Value::Null;
        };
        let tck = clk_tck() as f64;
        let busy = (b1 - b0) as f64 / tck;
        let capacity = (t1 - t0) as f64 / tck;
        let mine = process_cpu(std::process::id())
            .unwrap_or_default()
            .saturating_sub(self.mine)
            .as_secs_f64();
        let server = server_pid
            .and_then(process_cpu)
            .unwrap_or_default()
            .saturating_sub(self.server)
            .as_secs_f64();
        let other = (busy - mine - server).max(0.0);
        json!({
            "wall_secs": self.at.elapsed().as_secs_f64(),
            "machine_busy_share": if capacity > 0.0 { busy / capacity } else { 0.0 },
            "other_cpu_secs": other,
            "other_busy_share": if capacity > 0.0 { other / capacity } else { 0.0 },
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        })
    }
}

/// `nproc`, kernel release and model name, for the results.
pub fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let mem = kb_field(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemTotal",
    )
    .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "cpu": model,
        "mem_bytes": mem,
    })
}

// ---------------------------------------------------------------- WebSocket

pub type Ws = WebSocketStream<ClientIo>;

/// Bytes every client socket of this process read: what the wire carried
/// to the clients (compressed or not), for bytes-per-line figures.
pub static WIRE_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A client's TCP socket that counts what it reads into [`WIRE_BYTES`].
pub struct Counted(pub tokio::net::TcpStream);

/// What a client WebSocket runs on: the counted socket, with the frames of
/// a compressing server inflated when permessage-deflate was negotiated.
pub enum ClientIo {
    Plain(Counted),
    Deflate(Box<logstream::server::ws::Inflating<Counted>>),
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        WIRE_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio::io::AsyncRead for ClientIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            ClientIo::Deflate(io) => std::pin::Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for ClientIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Plain(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            ClientIo::Deflate(io) => std::pin::Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => std::pin::Pin::new(io).poll_flush(cx),
            ClientIo::Deflate(io) => std::pin::Pin::new(io.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientIo::Plain(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            ClientIo::Deflate(io) => std::pin::Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Small client buffers, so thousands of client connections stay cheap.
pub fn small_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0)
}

/// A measuring client's buffers: tungstenite zero-fills its whole read
/// buffer (128 KiB by default) before every read, which made a client
/// reading 100 connections spend more time per message than the server
/// spent sending it.
pub fn measuring_ws_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(16 << 10)
}

/// `127.0.0.N`: source addresses that each have their own ephemeral ports.
pub fn source_ip(n: usize) -> Result<IpAddr> {
    let last = u8::try_from(n).ok().filter(|n| (2..=254).contains(n));
    let last = last.ok_or_else(|| anyhow!("source address 127.0.0.{n} is out of range 2..=254"))?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// A TCP connection to `addr` from source address `src` (any when `None`),
/// without Nagle delay.
pub async fn connect_from(addr: SocketAddr, src: Option<IpAddr>) -> Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let stream = sock
        .connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens `ws://ADDR{path_and_query}` from source address `src`.
pub async fn ws_connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    path_and_query: &str,
    cfg: Option<WebSocketConfig>,
) -> Result<Ws> {
    let stream = connect_from(addr, src).await?;
    let url = format!("ws://{addr}{path_and_query}");
    let cfg = Some(cfg.unwrap_or_else(measuring_ws_config));
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, ClientIo::Plain(Counted(stream)), cfg)
            .await
            .context("websocket handshake")?;
    Ok(ws)
}

/// [`ws_connect`] offering permessage-deflate as browsers do
/// (`permessage-deflate; client_max_window_bits`); the server's answer is
/// returned (`None`: it declined and frames are plain). Messages the
/// server compresses are inflated, with the window kept between them
/// unless it answered `server_no_context_takeover`. This client sends
/// uncompressed (a client may).
pub async fn ws_connect_deflate(
    addr: SocketAddr,
    src: Option<IpAddr>,
    path_and_query: &str,
    cfg: Option<WebSocketConfig>,
) -> Result<(Ws, Option<String>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = connect_from(addr, src).await?;
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    // Byte by byte: what follows the head is the server's first frame.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            bail!("websocket handshake: response head over 16 KiB");
        }
        let b = stream.read_u8().await.context("websocket handshake")?;
        head.push(b);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        bail!(
            "websocket handshake refused: {}",
            head.lines().next().unwrap_or("")
        );
    }
    let answer = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| v.trim().to_string())
    });
    let io = match &answer {
        Some(a) if a.to_ascii_lowercase().contains("permessage-deflate") => {
            let takeover = !a
                .to_ascii_lowercase()
                .contains("server_no_context_takeover");
            ClientIo::Deflate(Box::new(logstream::server::ws::Inflating::client(
                Counted(stream),
                64 << 20,
                takeover,
            )))
        }
        _ => ClientIo::Plain(Counted(stream)),
    };
    let ws = WebSocketStream::from_raw_socket(
        io,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(cfg.unwrap_or_else(measuring_ws_config)),
    )
    .await;
    Ok((ws, answer))
}

/// Opens one connection, waits for `hello`, then keeps reading (which also
/// answers the server's pings) until the server closes; `closed` counts the
/// connections the server ended.
pub async fn open_idle(
    addr: SocketAddr,
    ip: IpAddr,
    path: String,
    closed: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
) -> Result<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut ws = ws_connect(addr, Some(ip), &path, Some(small_ws_config())).await?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(r#""type":"hello""#) => {}
        Ok(other) => bail!("expected hello, got {other:?}"),
        Err(_) => bail!("no hello within 10 s"),
    }
    Ok(tokio::spawn(async move {
        while let Some(Ok(_)) = ws.next().await {}
        if let Some(c) = closed {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }))
}

// ---------------------------------------------------------------- numbers

/// Latency histogram in nanoseconds, 1 ns .. 100 s, 3 significant digits.
pub fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// Percentiles of a nanosecond histogram, in microseconds.
pub fn summarize_us(h: &Histogram<u64>) -> Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    json!({
        "count": h.len(),
        "min_us": us(h.min()),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p90_us": us(h.value_at_quantile(0.90)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
        "mean_us": h.mean() / 1000.0,
    })
}

/// Least-squares fit `y = slope * x + intercept`: (slope, intercept, r²).
pub fn linear_regression(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    Some((slope, my - slope * mx, r2))
}

/// How many of `lines` lines file `i` of `files` gets when they are spread
/// evenly (the first files take the remainder).
pub fn lines_of(lines: u64, files: usize, i: usize) -> u64 {
    let files = files as u64;
    lines / files + u64::from((i as u64) < lines % files)
}

/// Appends `lines` numbered lines (`push_line`, `line_bytes` each) spread
/// over `paths` by [`lines_of`], round-robin, one `chunk_bytes` write at a
/// time; paced at `rate` lines/s in 1 ms rounds when `rate` > 0. Returns the
/// bytes written.
pub fn write_numbered(
    paths: &[PathBuf],
    lines: u64,
    rate: u64,
    line_bytes: usize,
    chunk_bytes: usize,
) -> Result<u64> {
    write_numbered_mix(paths, lines, rate, line_bytes, chunk_bytes, false)
}

/// [`write_numbered`], with the demo writer's mix of lines
/// ([`push_demo_line`], ~100 bytes each) instead of padded ones when
/// `demo`.
pub fn write_numbered_mix(
    paths: &[PathBuf],
    lines: u64,
    rate: u64,
    line_bytes: usize,
    chunk_bytes: usize,
    demo: bool,
) -> Result<u64> {
    let mut files = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("open {}", p.display()))?;
        files.push((f, 0u64, lines_of(lines, paths.len(), i)));
    }
    let mut buf = Vec::with_capacity(chunk_bytes + line_bytes * 2);
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut written = 0u64;
    let per_round = (rate / 1000).max(1).div_ceil(paths.len().max(1) as u64);
    loop {
        if rate > 0 {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if written >= due {
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
        }
        let mut any = false;
        for (i, (f, next, total)) in files.iter_mut().enumerate() {
            if *next >= *total {
                continue;
            }
            any = true;
            buf.clear();
            let until = if rate > 0 {
                (*next + per_round).min(*total)
            } else {
                *total
            };
            while *next < until && buf.len() + line_bytes <= chunk_bytes.max(line_bytes) {
                if demo {
                    push_demo_line(&mut buf, i, *next);
                } else {
                    push_line(&mut buf, i, *next, line_bytes);
                }
                *next += 1;
                written += 1;
            }
            f.write_all(&buf)?;
            bytes += buf.len() as u64;
        }
        if !any {
            return Ok(bytes);
        }
    }
}

/// Writes one line of the demo writer's mix (`logstream demo`: JSON,
/// logfmt and plain lines, mixed levels) numbered like [`push_line`]'s:
/// `… file=F seq=S`.
pub fn push_demo_line(out: &mut Vec<u8>, file: usize, seq: u64) {
    out.extend_from_slice(logstream::demo::demo_line(seq).as_bytes());
    let _ = writeln!(out, " file={file} seq={seq:010}");
}

/// Writes one log-looking line of exactly `bytes` bytes (newline included)
/// into `out`: `2025-01-01T00:00:00.000Z INFO bench file=F seq=S msg=xxxx…`.
pub fn push_line(out: &mut Vec<u8>, file: usize, seq: u64, bytes: usize) {
    let start = out.len();
    let _ = write!(
        out,
        "2025-01-01T00:00:00.000Z INFO bench file={file} seq={seq:010} msg="
    );
    let target = start + bytes.max(out.len() - start + 2);
    out.resize(target - 1, b'x');
    out.push(b'\n');
}

/// Writes a JSON result file (pretty) if a path was given, and prints it.
/// The time of the measurement is added as `measured_at` (UTC).
pub fn emit_result(path: Option<&Path>, v: &Value) -> Result<()> {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        let now = logstream::hub::format_ts(logstream::hub::now_ns());
        // Seconds are enough: 2026-01-01T00:00:00Z.
        let short = format!("{}Z", now.get(..19).unwrap_or(&now));
        o.insert("measured_at".into(), short.into());
        if let Ok(rev) = std::env::var("LS_REVISION") {
            o.insert("revision".into(), rev.into());
        }
    }
    let text = serde_json::to_string_pretty(&v)?;
    println!("{text}");
    if let Some(p) = path {
        std::fs::write(p, format!("{text}\n")).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_matched_exactly() {
        let body = "# HELP x\nlogstream_lines_read_total 42\nlogstream_lines_read_total_x 1\nlogstream_clients{transport=\"ws\"} 7\n";
        assert_eq!(parse_metric(body, "logstream_lines_read_total"), Some(42.0));
        assert_eq!(
            parse_metric(body, "logstream_clients{transport=\"ws\"}"),
            Some(7.0)
        );
        assert_eq!(parse_metric(body, "logstream_clients"), None);
    }

    #[test]
    fn lines_have_the_requested_size() {
        let mut v = Vec::new();
        push_line(&mut v, 3, 12, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(v.last(), Some(&b'\n'));
        push_line(&mut v, 3, 13, 10);
        assert!(v.len() > 110 && v.ends_with(b"x\n"));
    }

    #[test]
    fn regression_recovers_a_line() {
        let pts: Vec<(f64, f64)> = (0..5)
            .map(|i| (i as f64 * 1000.0, 5e6 + 3000.0 * i as f64 * 1000.0))
            .collect();
        let (s, i, r2) = linear_regression(&pts).unwrap();
        assert!((s - 3000.0).abs() < 1e-6 && (i - 5e6).abs() < 1e-3 && (r2 - 1.0).abs() < 1e-9);
    }
}
