//! Servers under comparison and the timestamped-line workload shared by the
//! cross-check tools (`ls-k6`, `ls-stall`): our `logstream serve` or a
//! baseline started from a command template, the writer of `lat` lines, and
//! a client reader that understands both our raw frames and a baseline's
//! one-line-per-message frames.

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_tungstenite::tungstenite::Message;

use crate::Server;

/// What a tool measures: `ours` or a baseline command such as
/// `node bench/baselines/node/ws-server.js --dir {dir} --port {port}`.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    /// Short name used in results (`ours`, `ws-baseline`, ...).
    pub name: String,
    /// `None` for our server; else a shell command template where `{dir}`
    /// and `{port}` are replaced.
    pub command: Option<String>,
    /// WebSocket path and query that streams every line of the folder.
    pub ws_path: String,
}

impl TargetSpec {
    /// Parses `NAME=COMMAND` (a baseline) or `ours`.
    pub fn parse(spec: &str, ours_path: &str, baseline_path: &str) -> Result<TargetSpec> {
        if spec == "ours" {
            return Ok(TargetSpec {
                name: "ours".into(),
                command: None,
                ws_path: ours_path.into(),
            });
        }
        let (name, cmd) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("target {spec:?}: expected `ours` or `NAME=COMMAND`"))?;
        if name.is_empty() || cmd.trim().is_empty() {
            bail!("target {spec:?}: empty name or command");
        }
        Ok(TargetSpec {
            name: name.into(),
            command: Some(cmd.into()),
            ws_path: baseline_path.into(),
        })
    }

    pub fn is_ours(&self) -> bool {
        self.command.is_none()
    }
}

/// A running server under test.
pub enum Target {
    Ours(Server),
    Baseline {
        child: Child,
        addr: SocketAddr,
        command: String,
    },
}

impl Target {
    /// Starts `spec` watching `dir`; `ours_args` are extra `serve` flags.
    pub fn start(
        spec: &TargetSpec,
        bin: &Path,
        dir: &Path,
        ours_args: &[String],
        stderr_to: &Path,
    ) -> Result<Target> {
        let Some(template) = &spec.command else {
            return Ok(Target::Ours(Server::spawn(bin, dir, ours_args, stderr_to)?));
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let command = template
            .replace("{dir}", &dir.display().to_string())
            .replace("{port}", &port.to_string());
        let err = std::fs::File::create(stderr_to)
            .with_context(|| format!("create {}", stderr_to.display()))?;
        // `exec` so the pid is the server's own (RSS, CPU, SIGTERM).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("start `{command}`"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                let log = std::fs::read_to_string(stderr_to).unwrap_or_default();
                bail!("`{command}` exited with {st} before listening; stderr:\n{log}");
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{command}` did not listen on {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Target::Baseline {
            child,
            addr,
            command,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Target::Ours(s) => s.addr,
            Target::Baseline { addr, .. } => *addr,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Target::Ours(s) => s.pid,
            Target::Baseline { child, .. } => Some(child.id()),
        }
    }

    pub fn command(&self) -> &str {
        match self {
            Target::Ours(s) => &s.command,
            Target::Baseline { command, .. } => command,
        }
    }

    /// Resident set size in bytes.
    pub fn rss(&self) -> Option<u64> {
        crate::status_bytes(self.pid()?, "VmRSS")
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Target::Baseline { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Appends `total` lines `lat SEQ MONO_NS WALL_NS xxx…\n` of `line_bytes`
/// bytes at `rate` per second, flushing the due lines once per tick (1 ms at
/// high rates): `MONO_NS` is `base.elapsed()`, `WALL_NS` the Unix time, so a
/// reader in another process (k6) can use the wall clock.
pub fn write_lat_lines(
    file: &Path,
    base: Instant,
    rate: f64,
    total: u64,
    line_bytes: usize,
) -> Result<u64> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("open {}", file.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let tick = Duration::from_secs_f64((1.0 / rate).max(0.001));
    let start = Instant::now();
    let mut written = 0u64;
    let mut next = start;
    let mut line = Vec::with_capacity(line_bytes + 64);
    while written < total {
        let due = ((start.elapsed().as_secs_f64() * rate).floor() as u64 + 1).min(total);
        while written < due {
            line.clear();
            let t = base.elapsed().as_nanos() as u64;
            write!(
                line,
                "lat {written:010} {t:020} {:020} ",
                logstream::hub::now_ns()
            )?;
            if line.len() + 1 < line_bytes {
                line.resize(line_bytes - 1, b'x');
            }
            line.push(b'\n');
            w.write_all(&line)?;
            written += 1;
        }
        w.flush()?;
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    Ok(written)
}

/// One `lat` line seen by a client: (seq, mono ns at write).
pub fn parse_lat(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split(' ');
    if f.next()? != "lat" {
        return None;
    }
    let seq = f.next()?.parse().ok()?;
    let t = f.next()?.parse().ok()?;
    Some((seq, t))
}

/// What one text frame holds: data lines and whether it was (or held) a
/// `gap` notice. Our raw frames are lines joined by `\n` with control
/// messages as `# logstream: {json}`; a baseline sends a line per message,
/// possibly as JSON with a `line` field.
pub fn frame_lines(text: &str, mut on_line: impl FnMut(&str)) -> u64 {
    let mut gaps = 0;
    for l in text.split('\n') {
        if let Some(ctl) = l.strip_prefix("# logstream:") {
            gaps += u64::from(ctl.contains(r#""type":"gap""#));
        } else if l.starts_with('{') {
            if let Ok(v) = serde_json::from_str::<Value>(l)
                && let Some(s) = v["line"].as_str()
            {
                on_line(s.trim_end_matches('\n'));
            }
        } else if !l.is_empty() {
            on_line(l);
        }
    }
    gaps
}

/// Samples a process's RSS every `every` until `stop` is set: (seconds since
/// start, bytes) pairs.
pub fn sample_rss(
    pid: u32,
    every: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(f64, u64)>> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut out = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(r) = crate::status_bytes(pid, "VmRSS") {
                out.push((t0.elapsed().as_secs_f64(), r));
            }
            std::thread::sleep(every);
        }
        out
    })
}

/// Start, peak, end and the slope of the last half of an RSS series.
pub fn rss_summary(series: &[(f64, u64)]) -> Value {
    let half: Vec<(f64, f64)> = series
        .iter()
        .skip(series.len() / 2)
        .map(|&(t, b)| (t, b as f64))
        .collect();
    json!({
        "start_bytes": series.first().map(|p| p.1),
        "max_bytes": series.iter().map(|p| p.1).max(),
        "end_bytes": series.last().map(|p| p.1),
        "slope_bytes_per_sec_second_half": crate::linear_regression(&half).map(|f| f.0),
        "samples": series.iter().map(|&(t, b)| json!([(t * 1000.0).round() / 1000.0, b])).collect::<Vec<_>>(),
    })
}

/// `kill -SIG PID` (the workspace forbids `unsafe`, so no direct syscall).
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("run kill")?;
    if !st.success() {
        bail!("kill -{sig} {pid} failed: {st}");
    }
    Ok(())
}

/// One [`read_lat`] reader per client while [`write_lat_lines`] appends
/// `total` lines to `file`; the readers are told to stop 5 s after the last
/// write (time for the tail to arrive). Returns the lines written and each
/// reader's result, in client order.
pub async fn write_and_read_lat(
    clients: Vec<crate::Ws>,
    file: &Path,
    base: Instant,
    rate: f64,
    total: u64,
    line_bytes: usize,
) -> Result<(u64, Vec<Result<(hdrhistogram::Histogram<u64>, u64, u64)>>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(read_lat(ws, base, total, stop.clone())))
        .collect();
    let f = file.to_path_buf();
    let writer = std::thread::spawn(move || write_lat_lines(&f, base, rate, total, line_bytes));
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow!("writer panicked"))??;
    let stopper = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stop.store(true, Ordering::Relaxed);
        }
    });
    let mut results = Vec::with_capacity(readers.len());
    for r in readers {
        results.push(r.await?);
    }
    stopper.abort();
    Ok((written, results))
}

/// Reads one client until line `total - 1` or `stop`: (histogram of
/// receive − write in ns, lines, gap notices). Line 0 is not counted
/// (first wake-ups), as in `ls-latency`.
pub async fn read_lat(
    mut ws: crate::Ws,
    base: Instant,
    total: u64,
    stop: Arc<AtomicBool>,
) -> Result<(hdrhistogram::Histogram<u64>, u64, u64)> {
    let mut h = crate::latency_histogram()?;
    let (mut n, mut gaps, mut last) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && last + 1 < total {
        let msg = match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(m)) => m?,
        };
        let now = base.elapsed().as_nanos() as u64;
        let Message::Text(t) = msg else { continue };
        gaps += frame_lines(t.as_str(), |l| {
            if let Some((seq, w)) = parse_lat(l) {
                if seq >= 1 {
                    let _ = h.record(now.saturating_sub(w).max(1));
                }
                n += 1;
                last = last.max(seq);
            }
        });
    }
    Ok((h, n, gaps))
}
