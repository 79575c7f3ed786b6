//! `ls-soak`: one `logstream serve` under hours of realistic, changing load,
//! sampled for leaks. A writer spreads `--rate` lines/s over `--files` files
//! and rotates each (rename, new file, oldest rotation deleted) when it
//! passes `--rotate-bytes`; `--clients` WebSocket, SSE and plain-stream
//! clients come and go (each lives a random 5–120 s, most filtered on one
//! file or a level); `--slow` clients read a trickle; and every few seconds
//! a hostile client does one of: garbage frames, an oversized message,
//! invalid UTF-8, a bad handshake key, a request head sent a byte a second,
//! a stream it never reads. Every `--sample-secs` the server's RSS, open
//! descriptors, CPU and connected clients are recorded. Reported: the
//! samples and, over the second half (after warm-up), the slope of RSS and
//! descriptors per hour: flat lines, or a leak.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use futures::StreamExt;
use logstream_bench as lb;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(
    name = "ls-soak",
    about = "Hours of churning, slow and hostile clients on rotating files: RSS, fds and CPU over time"
)]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 3600)]
    duration: u64,
    #[arg(long, default_value_t = 50)]
    files: usize,
    /// Lines per second over all files.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 200)]
    line_bytes: usize,
    /// A file is rotated when it passes this size.
    #[arg(long, default_value_t = 4 << 20)]
    rotate_bytes: u64,
    /// Clients connected at any time (each replaced when it leaves).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Clients that read 4 KiB a second.
    #[arg(long, default_value_t = 5)]
    slow: usize,
    /// Seconds between hostile clients.
    #[arg(long, default_value_t = 3)]
    hostile_every: u64,
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for `logstream serve` (repeat).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Counters shared by the load's tasks.
#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    connect_errors: AtomicU64,
    bytes: AtomicU64,
    hostile: AtomicU64,
    rotations: AtomicU64,
    lines: AtomicU64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.files == 0 || args.rate == 0 || args.duration == 0 {
        bail!("--files, --rate and --duration must be positive");
    }
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => lb::default_server_bin()?,
    };
    let scratch = lb::Scratch::new("soak")?;
    let mut server_args = vec!["--max-connections".to_string(), "4000".into()];
    server_args.extend(args.server_args.iter().cloned());
    let server = lb::Server::spawn(
        &bin,
        &scratch.logs(),
        &server_args,
        &scratch.stage().join("server.log"),
    )?;
    let Some(pid) = server.pid else {
        bail!("no server pid");
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (dir, tally, stop) = (scratch.logs(), tally.clone(), stop.clone());
        let (files, rate, line_bytes, rotate) =
            (args.files, args.rate, args.line_bytes, args.rotate_bytes);
        std::thread::spawn(move || {
            write_rotating(&dir, files, rate, line_bytes, rotate, &tally, &stop)
        })
    };
    let addr = server.addr;
    let samples = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..args.clients {
            tasks.push(tokio::spawn(churning_client(
                addr,
                i,
                args.files,
                tally.clone(),
                stop.clone(),
            )));
        }
        for _ in 0..args.slow {
            tasks.push(tokio::spawn(slow_client(addr, tally.clone(), stop.clone())));
        }
        tasks.push(tokio::spawn(hostile_clients(
            addr,
            Duration::from_secs(args.hostile_every),
            tally.clone(),
            stop.clone(),
        )));
        let samples = sample(&server, pid, &args, &tally).await;
        stop.store(true, Ordering::Relaxed);
        // Clients see the stop at their next message; quiet ones (a level
        // filter nothing matches) are not waited for.
        let all = futures::future::join_all(tasks.iter_mut());
        let _ = tokio::time::timeout(Duration::from_secs(5), all).await;
        for t in &tasks {
            t.abort();
        }
        samples
    });
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let result = summarize(&args, &server, samples?, &tally);
    lb::emit_result(args.json_out.as_deref(), &result)
}

/// Records the server's figures every `--sample-secs` until `--duration`.
async fn sample(server: &lb::Server, pid: u32, args: &Args, tally: &Tally) -> Result<Vec<Value>> {
    let start = Instant::now();
    let every = Duration::from_secs(args.sample_secs);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cpu = lb::process_cpu(pid).unwrap_or_default();
    let mut last_at = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < Duration::from_secs(args.duration) {
        tick.tick().await;
        let cpu = lb::process_cpu(pid).unwrap_or_default();
        let cpu_share = (cpu - last_cpu).as_secs_f64() / last_at.elapsed().as_secs_f64().max(1e-3);
        (last_cpu, last_at) = (cpu, Instant::now());
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
        let metrics = tokio::task::block_in_place(|| lb::http_get(server.addr, "/metrics"));
        let body = metrics.map(|(_, b)| b).unwrap_or_default();
        let m = |s: &str| lb::parse_metric(&body, s);
        let s = json!({
            "t_s": start.elapsed().as_secs_f64(),
            "rss_bytes": server.rss(),
            "fds": fds,
            "cpu_share": cpu_share,
            "clients": sum_series(&body, "logstream_clients{"),
            "records_in_history": m("logstream_history_records"),
            "slow_gaps": m("logstream_gaps_total{reason=\"slow_client\"}"),
            "lines_written": tally.lines.load(Ordering::Relaxed),
            "connects": tally.connects.load(Ordering::Relaxed),
            "hostile": tally.hostile.load(Ordering::Relaxed),
            "rotations": tally.rotations.load(Ordering::Relaxed),
        });
        eprintln!("ls-soak: {s}");
        samples.push(s);
    }
    Ok(samples)
}

/// The sum of every series whose line starts with `prefix`.
fn sum_series(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn summarize(args: &Args, server: &lb::Server, samples: Vec<Value>, tally: &Tally) -> Value {
    let half = samples.len() / 2;
    let fit = |key: &str| {
        let pts: Vec<(f64, f64)> = samples[half..]
            .iter()
            .filter_map(|s| Some((s["t_s"].as_f64()? / 3600.0, s[key].as_f64()?)))
            .collect();
        let range = pts.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
        lb::linear_regression(&pts).map(|(slope, _, r2)| {
            json!({"slope_per_hour": slope, "r2": r2, "min": range.0, "max": range.1})
        })
    };
    let cpu: Vec<f64> = samples
        .iter()
        .filter_map(|s| s["cpu_share"].as_f64())
        .collect();
    json!({
        "scenario": "soak",
        "command": lb::command_line(),
        "server_command": server.command,
        "machine": lb::machine(),
        "load": {
            "duration_s": args.duration,
            "files": args.files,
            "rate_lines_per_s": args.rate,
            "line_bytes": args.line_bytes,
            "rotate_bytes": args.rotate_bytes,
            "clients": args.clients,
            "slow_clients": args.slow,
            "hostile_every_s": args.hostile_every,
        },
        "totals": {
            "lines_written": tally.lines.load(Ordering::Relaxed),
            "rotations": tally.rotations.load(Ordering::Relaxed),
            "connects": tally.connects.load(Ordering::Relaxed),
            "connect_errors": tally.connect_errors.load(Ordering::Relaxed),
            "bytes_received": tally.bytes.load(Ordering::Relaxed),
            "hostile_clients": tally.hostile.load(Ordering::Relaxed),
        },
        "second_half": {
            "rss_bytes": fit("rss_bytes"),
            "fds": fit("fds"),
            "clients": fit("clients"),
        },
        "cpu_share_mean": cpu.iter().sum::<f64>() / cpu.len().max(1) as f64,
        "samples": samples,
    })
}

/// Appends lines round-robin over the files at `rate` lines/s, rotating a
/// file past `rotate` bytes as logrotate does (rename to `.1`, the previous
/// `.1` deleted, a new file created).
fn write_rotating(
    dir: &Path,
    files: usize,
    rate: u64,
    line_bytes: usize,
    rotate: u64,
    tally: &Tally,
    stop: &AtomicBool,
) -> Result<()> {
    let path = |i: usize| dir.join(format!("app-{i}.log"));
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    };
    let mut out = Vec::new();
    for i in 0..files {
        out.push((open(&path(i))?, 0u64));
    }
    let start = Instant::now();
    let mut seq = 0u64;
    let mut buf = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if seq >= due {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        while seq < due {
            let i = (seq % files as u64) as usize;
            buf.clear();
            lb::push_line(&mut buf, i, seq, line_bytes);
            let (f, size) = &mut out[i];
            f.write_all(&buf)?;
            *size += buf.len() as u64;
            seq += 1;
            if *size >= rotate {
                let p = path(i);
                let old = p.with_extension("log.1");
                let _ = std::fs::remove_file(&old);
                std::fs::rename(&p, &old)?;
                out[i] = (open(&p)?, 0);
                tally.rotations.fetch_add(1, Ordering::Relaxed);
            }
        }
        tally.lines.store(seq, Ordering::Relaxed);
    }
    Ok(())
}

/// A small deterministic generator (xorshift), so runs are repeatable.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One client slot: connects with a random transport and filter, reads for
/// a random 5–120 s, leaves (cleanly or by dropping the socket), repeats.
async fn churning_client(
    addr: SocketAddr,
    n: usize,
    files: usize,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
    // Spread the first connections over the first 20 s.
    tokio::time::sleep(Duration::from_millis(next_rand(&mut rng) % 20_000)).await;
    while !stop.load(Ordering::Relaxed) {
        let r = next_rand(&mut rng);
        let file = r % files as u64;
        let filter = match r % 100 {
            0..=79 => format!("file=app-{file}.log"),
            80..=89 => "level=warn%2B".to_string(),
            90..=97 => format!("grep=seq%3D%5Cd%2B7{}&file=app-{file}.log", r % 10),
            _ => String::new(),
        };
        let life = Duration::from_millis(5_000 + next_rand(&mut rng) % 115_000);
        let transport = next_rand(&mut rng) % 10;
        tally.connects.fetch_add(1, Ordering::Relaxed);
        let ok = match transport {
            0..=5 => {
                ws_client(
                    addr,
                    &format!("/ws?{filter}"),
                    life,
                    r.is_multiple_of(2),
                    &tally,
                    &stop,
                )
                .await
            }
            6..=8 => http_client(addr, &format!("/sse?{filter}"), life, &tally, &stop).await,
            _ => http_client(addr, &format!("/stream?{filter}"), life, &tally, &stop).await,
        };
        if ok.is_err() {
            tally.connect_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn ws_client(
    addr: SocketAddr,
    path: &str,
    life: Duration,
    clean_close: bool,
    tally: &Tally,
    stop: &AtomicBool,
) -> Result<()> {
    let mut ws = lb::ws_connect(addr, None, path, Some(lb::small_ws_config())).await?;
    let until = tokio::time::Instant::now() + life;
    loop {
        match tokio::time::timeout_at(until, ws.next()).await {
            Ok(Some(Ok(m))) => {
                tally.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
            }
            Ok(_) => bail!("the server ended a WebSocket"),
            Err(_) => break,
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    if clean_close {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    Ok(())
}

async fn http_client(
    addr: SocketAddr,
    path: &str,
    life: Duration,
    tally: &Tally,
    stop: &AtomicBool,
) -> Result<()> {
    let mut tcp = lb::connect_from(addr, None).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let until = tokio::time::Instant::now() + life;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => bail!("the server ended a stream"),
            Ok(Ok(n)) => {
                tally.bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(_) => break,
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(())
}

/// A client of the unfiltered stream that reads 4 KiB a second, for ever
/// (reconnecting when the server drops it).
async fn slow_client(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = lb::connect_from(addr, None).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let req = "GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n";
        if tcp.write_all(req.as_bytes()).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4 << 10];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tally.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A WebSocket handshake on a raw socket; the response head is left unread.
async fn raw_ws(addr: SocketAddr, key: &str) -> Result<tokio::net::TcpStream> {
    let mut tcp = lb::connect_from(addr, None).await?;
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await?;
    Ok(tcp)
}

/// A masked client frame (`first`: FIN and opcode) of `payload`.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Every `every`, one hostile client, cycling through the kinds; each runs
/// in its own task so a slow one does not delay the next.
async fn hostile_clients(
    addr: SocketAddr,
    every: Duration,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut tick = tokio::time::interval(every);
    let mut kind = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        kind += 1;
        tally.hostile.fetch_add(1, Ordering::Relaxed);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = hostile(addr, kind % 6, KEY, &stop).await;
        });
    }
}

async fn hostile(addr: SocketAddr, kind: u64, key: &str, stop: &AtomicBool) -> Result<()> {
    let mut sink = vec![0u8; 64 << 10];
    match kind {
        // Garbage where frames belong.
        0 => {
            let mut tcp = raw_ws(addr, key).await?;
            let junk: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            tcp.write_all(&junk).await?;
            drain(&mut tcp, &mut sink, Duration::from_secs(5)).await;
        }
        // A message over the limit.
        1 => {
            let mut tcp = raw_ws(addr, key).await?;
            tcp.write_all(&frame(0x81, &vec![b'a'; 1 << 20])).await?;
            drain(&mut tcp, &mut sink, Duration::from_secs(5)).await;
        }
        // Text that is not UTF-8.
        2 => {
            let mut tcp = raw_ws(addr, key).await?;
            tcp.write_all(&frame(0x81, b"{\"type\":\"subscribe\",\xff\xfe}"))
                .await?;
            drain(&mut tcp, &mut sink, Duration::from_secs(5)).await;
        }
        // A handshake key that is not 16 bytes.
        3 => {
            let mut tcp = raw_ws(addr, "c2hvcnQ=").await?;
            drain(&mut tcp, &mut sink, Duration::from_secs(5)).await;
        }
        // A request head a byte a second (slowloris), for 30 s.
        4 => {
            let mut tcp = lb::connect_from(addr, None).await?;
            for b in
                b"GET /sse HTTP/1.1\r\nHost: localhost\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaa".iter()
            {
                if stop.load(Ordering::Relaxed) || tcp.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // A stream never read, held for 60 s.
        _ => {
            let tcp = raw_ws(addr, key).await?;
            for _ in 0..60 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            drop(tcp);
        }
    }
    Ok(())
}

/// Reads until the server closes or `within` passes.
async fn drain(tcp: &mut tokio::net::TcpStream, buf: &mut [u8], within: Duration) {
    let _ = tokio::time::timeout(within, async {
        while let Ok(n) = tcp.read(buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
