//! `ls-stall`: one stalled client among many. A writer appends timestamped
//! lines at a steady rate; `--clients - 1` clients in this process measure
//! write→client latency while one more client runs as a separate process
//! (this tool, `--stalled-client`). Each target is run twice on a fresh
//! server: once with that process reading normally (the baseline of the
//! ratio) and once with it stopped by SIGSTOP for the whole run. Reported:
//! the others' latency with / without the stall, and the server's RSS over
//! time (a server that queues per client without a bound grows).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use logstream_bench as lb;
use logstream_bench::targets::{
    Target, TargetSpec, frame_lines, rss_summary, sample_rss, signal, write_and_read_lat,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(
    name = "ls-stall",
    about = "Latency of the other clients and server memory while one client is stopped (SIGSTOP)"
)]
struct Args {
    /// `ours`, or `NAME=COMMAND` for a baseline (`{dir}`, `{port}` are
    /// replaced); repeat to measure several in one invocation.
    #[arg(long = "target", default_value = "ours")]
    targets: Vec<String>,
    #[arg(long, default_value = "/ws?format=raw")]
    ours_path: String,
    #[arg(long, default_value = "/")]
    baseline_path: String,
    /// Clients in all, the stalled one included.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Lines per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of writing.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 512)]
    line_bytes: usize,
    /// Receive buffer of the stalled client's socket (fixed, so the kernel
    /// absorbs the same amount before the server has to queue).
    #[arg(long, default_value_t = 65536)]
    stalled_rcvbuf: u32,
    /// RSS sampling period.
    #[arg(long, default_value_t = 250)]
    rss_every_ms: u64,
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for `logstream serve` (repeat).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[arg(long, default_value_t = 60)]
    quiet_wait_secs: u64,
    #[arg(long, default_value_t = 0.15)]
    quiet_busy: f64,
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Internal: run as the separate client process on this URL.
    #[arg(long, hide = true)]
    stalled_client: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Some(url) = &args.stalled_client {
        return rt.block_on(stalled_client(url, args.stalled_rcvbuf));
    }
    if args.clients < 2 || args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--clients must be at least 2, --rate and --duration positive");
    }
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => lb::default_server_bin()?,
    };
    let mut runs = Vec::new();
    for t in &args.targets {
        let spec = TargetSpec::parse(t, &args.ours_path, &args.baseline_path)?;
        let mut phases = serde_json::Map::new();
        for stalled in [false, true] {
            eprintln!("ls-stall: {} stalled={stalled}", spec.name);
            let r = rt.block_on(phase(&args, &spec, &bin, stalled))?;
            phases.insert(if stalled { "stalled" } else { "normal" }.into(), r);
        }
        let p99 = |k: &str| phases[k]["others"]["latency"]["p99_us"].as_f64();
        let p50 = |k: &str| phases[k]["others"]["latency"]["p50_us"].as_f64();
        let div =
            |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        let max = |k: &str| phases[k]["server_rss"]["max_bytes"].as_f64();
        let p99_ratio = div(p99("stalled"), p99("normal"));
        eprintln!(
            "ls-stall: {}: others' p99 stalled/normal = {:?}, server RSS max {:?} / {:?} MiB",
            spec.name,
            p99_ratio,
            max("stalled").map(|b| b / 1048576.0),
            max("normal").map(|b| b / 1048576.0)
        );
        runs.push(json!({
            "target": spec.name,
            "ratio_stalled_over_normal": {
                "p50": div(p50("stalled"), p50("normal")),
                "p99": p99_ratio,
                "server_rss_max": div(max("stalled"), max("normal")),
            },
            "phases": phases,
        }));
    }
    let result = json!({
        "tool": "ls-stall",
        "command": lb::command_line(),
        "machine": lb::machine(),
        "clients": args.clients,
        "rate": args.rate,
        "duration_secs": args.duration,
        "line_bytes": args.line_bytes,
        "stalled_rcvbuf": args.stalled_rcvbuf,
        "runs": runs,
    });
    lb::emit_result(args.json_out.as_deref(), &result)
}

const FILE: &str = "stall.log";

async fn phase(
    args: &Args,
    spec: &TargetSpec,
    bin: &std::path::Path,
    stall: bool,
) -> Result<Value> {
    let scratch = lb::Scratch::new("stall")?;
    let file = scratch.logs().join(FILE);
    std::fs::File::create(&file)?;
    let target = Target::start(
        spec,
        bin,
        &scratch.logs(),
        &args.server_args,
        &scratch.root.join("server.stderr"),
    )?;
    let pid = target
        .pid()
        .ok_or_else(|| anyhow!("no pid for the server"))?;
    let quiet = lb::wait_quiet(Duration::from_secs(args.quiet_wait_secs), args.quiet_busy);
    let url = format!("ws://{}{}", target.addr(), spec.ws_path);
    // The separate client process; it prints `ready` once subscribed.
    let mut ext = Command::new(std::env::current_exe()?)
        .arg("--stalled-client")
        .arg(&url)
        .arg("--stalled-rcvbuf")
        .arg(args.stalled_rcvbuf.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the stalled client process")?;
    let ext_pid = ext.id();
    let mut ext_out = BufReader::new(ext.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
    let mut line = String::new();
    ext_out.read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the client process said {line:?} instead of `ready`");
    }
    let base = Instant::now();
    let mut clients = Vec::new();
    for i in 0..args.clients - 1 {
        let ip = lb::source_ip(2 + i % 200)?;
        clients.push(lb::ws_connect(target.addr(), Some(ip), &spec.ws_path, None).await?);
    }
    let total = (args.rate * args.duration).round().max(2.0) as u64;
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(
        pid,
        Duration::from_millis(args.rss_every_ms),
        sampling.clone(),
    );
    let load = lb::OtherLoad::start(Some(pid));
    if stall {
        signal(ext_pid, "STOP")?;
    }
    let (written, results) =
        write_and_read_lat(clients, &file, base, args.rate, total, args.line_bytes).await?;
    let mut hist = lb::latency_histogram()?;
    let (mut received, mut gaps, mut failed) = (0u64, 0u64, 0u64);
    for r in results {
        match r {
            Ok((h, n, g)) => {
                hist.add(&h).map_err(|e| anyhow!("merge: {e}"))?;
                received += n;
                gaps += g;
            }
            Err(e) => {
                eprintln!("ls-stall: a client failed: {e:#}");
                failed += 1;
            }
        }
    }
    let load = load.finish(Some(pid));
    sampling.store(true, Ordering::Relaxed);
    let series = sampler.join().map_err(|_| anyhow!("sampler panicked"))?;
    let rss_after = target.rss();
    // Our server counts its slow-client decisions (gap notices, closes).
    let server_gaps: Vec<String> = match &target {
        Target::Ours(_) => lb::http_get(target.addr(), "/metrics")
            .map(|(_, body)| {
                body.lines()
                    .filter(|l| l.starts_with("logstream_gap") && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        Target::Baseline { .. } => Vec::new(),
    };
    if stall {
        signal(ext_pid, "CONT")?;
    }
    // Closing its stdin tells the client process to report and exit.
    drop(ext.stdin.take());
    let mut report = String::new();
    let done = std::thread::spawn(move || {
        let _ = std::io::Read::read_to_string(&mut ext_out, &mut report);
        report
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while ext.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = ext.kill();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = ext.wait();
    let report = done.join().map_err(|_| anyhow!("reader panicked"))?;
    let ext_report: Value = serde_json::from_str(report.trim()).unwrap_or(Value::Null);
    let s = lb::summarize_us(&hist);
    eprintln!(
        "ls-stall: {} stalled={stall}: others p50 {} µs p99 {} µs, {received} of {} lines; server RSS end {:?}",
        spec.name,
        s["p50_us"],
        s["p99_us"],
        written * (args.clients as u64 - 1),
        rss_after
    );
    Ok(json!({
        "stalled": stall,
        "server_command": target.command(),
        "url": url,
        "lines_written": written,
        "others": {
            "clients": args.clients - 1,
            "latency": s,
            "records_received": received,
            "records_expected": written * (args.clients as u64 - 1),
            "gap_notices": gaps,
            "failed_clients": failed,
        },
        "separate_client": ext_report,
        "server_gap_metrics": server_gaps,
        "server_rss": rss_summary(&series),
        "server_rss_after_bytes": rss_after,
        "quiet_wait": quiet,
        "other_load": load,
    }))
}

/// The separate client process: connects with a fixed receive buffer, says
/// `ready`, reads until its stdin closes (then until the connection is idle
/// for 1 s) or the server ends the connection, then prints what it saw as
/// JSON.
async fn stalled_client(url: &str, rcvbuf: u32) -> Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow!("{url}: not ws://"))?;
    let (hostport, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: std::net::SocketAddr = hostport.parse()?;
    if !addr.ip().is_loopback() {
        bail!("{addr} is not loopback");
    }
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(rcvbuf)?;
    sock.bind("127.0.0.254:0".parse()?)?;
    let stream = sock.connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{}", if path.is_empty() { "/" } else { path }),
        stream,
        Some(lb::small_ws_config()),
    )
    .await
    .context("websocket handshake")?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let eof = stdin.read_to_end(&mut sink);
    tokio::pin!(eof);
    let (mut lines, mut gaps, mut bytes) = (0u64, 0u64, 0u64);
    let mut close: Option<String> = None;
    // After stdin closes, read on until the connection is idle for 1 s, so
    // what the server did to it (gap, close) is seen.
    let mut draining = false;
    loop {
        if draining {
            match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Ok(Message::Text(t)))) => {
                    bytes += t.len() as u64;
                    gaps += frame_lines(t.as_str(), |_| lines += 1);
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    close = Some(c.map_or("no code".into(), |c| {
                        format!("{} {}", u16::from(c.code), c.reason)
                    }));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => {
                    close.get_or_insert(format!("error: {e}"));
                    break;
                }
            }
            continue;
        }
        tokio::select! {
            _ = &mut eof => draining = true,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    bytes += t.len() as u64;
                    gaps += frame_lines(t.as_str(), |_| lines += 1);
                }
                Some(Ok(Message::Close(c))) => {
                    close = Some(c.map_or("no code".into(), |c| format!("{} {}", u16::from(c.code), c.reason)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => { close.get_or_insert(format!("error: {e}")); break }
                None => break,
            }
        }
    }
    println!(
        "{}",
        json!({"lines": lines, "bytes": bytes, "gap_notices": gaps, "closed_by_server": close})
    );
    Ok(())
}
