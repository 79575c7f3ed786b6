//! `ls-latency`: write→client latency. A writer thread appends timestamped
//! lines to a file in the watched folder at a fixed rate (buffered writer,
//! flushed once per tick); clients subscribed to `/ws` (or, with `--target`,
//! to `/sse` or one of the baselines of `bench/baselines/`) parse the
//! timestamp out of each received line and record `now - written` in an
//! HDR histogram. Writer and readers share one monotonic clock (this process).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use logstream_bench as lb;
use logstream_bench::proto::{self, Target};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "ls-latency",
    about = "Measure write-to-client latency of live log lines over WebSocket"
)]
struct Args {
    /// Server design under test.
    #[arg(long, value_enum, default_value = "ours-ws")]
    target: Target,
    /// Start the server with this command instead (`{dir}` = the folder).
    #[arg(long)]
    server_cmd: Option<String>,
    /// Pin the server to this CPU (`taskset -c`).
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Lines per second.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds of writing.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// WebSocket clients receiving every line (each delivery is one sample).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Extra connections held open while measuring (not measured).
    #[arg(long, default_value_t = 0)]
    extra_conns: usize,
    /// What the extra connections subscribe to (default: a file that gets no
    /// lines, so they cost the server only what an idle subscriber costs).
    #[arg(long, default_value = "/ws?file=other.log")]
    extra_path: String,
    /// First lines not counted (cold caches, first wake-ups).
    #[arg(long, default_value_t = 1)]
    warmup_lines: u64,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// `json` (records) or `raw` (lines only); ours only.
    #[arg(long, default_value = "json", value_parser = ["json", "raw"])]
    format: String,
    /// Attach to a running server (loopback only); needs --dir.
    #[arg(long, requires = "dir")]
    addr: Option<String>,
    /// The folder the attached server watches.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `logstream` binary (default: next to this tool).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for `logstream serve` (repeat).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Measured clients offer permessage-deflate (WebSocket targets).
    #[arg(long)]
    deflate: bool,
    /// Write every sample (client, seq, written ns, latency ns) here.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Before measuring, wait up to this long for the machine to be quiet.
    #[arg(long, default_value_t = 60)]
    quiet_wait_secs: u64,
    /// "Quiet": at most this share of the machine's CPU busy.
    #[arg(long, default_value_t = 0.15)]
    quiet_busy: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

const FILE: &str = "latency.log";

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--rate and --duration must be positive");
    }
    if args.extra_conns > 0 && !args.target.is_ours() {
        bail!("--extra-conns subscribes to another file: only ours can filter by file");
    }
    let scratch = lb::Scratch::new("latency")?;
    let dir = args.dir.clone().unwrap_or_else(|| scratch.logs());
    // The file exists before the server starts, so it is tracked from its first scan.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(FILE))?;
    let server = match &args.addr {
        Some(a) => lb::Server::attach(a, None)?,
        None => proto::spawn_server(&proto::ServerSpec {
            target: args.target,
            dir: &dir,
            server_cmd: args.server_cmd.as_deref(),
            server_bin: args.server_bin.as_deref(),
            extra: &args.server_args,
            cpu: args.server_cpu,
            stderr_to: &scratch.root.join("server.stderr"),
        })?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&args, &server, dir))?;
    lb::emit_result(args.json_out.as_deref(), &result)
}

async fn run(args: &Args, server: &lb::Server, dir: PathBuf) -> Result<serde_json::Value> {
    // Before any connection: nothing must wait unpolled (the server drops
    // clients that do not answer its pings).
    let quiet = lb::wait_quiet(Duration::from_secs(args.quiet_wait_secs), args.quiet_busy);
    let total = (args.rate * args.duration).round().max(1.0) as u64;
    let base = Instant::now();
    let path = args.target.stream_path(Some(FILE), args.format == "json");
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let ip = lb::source_ip(2 + i % 200)?;
        clients.push(
            proto::Client::connect_with(
                args.target,
                server.addr,
                Some(ip),
                &path,
                false,
                args.deflate,
            )
            .await?
            .0,
        );
    }
    let mut extra = Vec::new();
    if args.extra_conns > 0 {
        let t = Instant::now();
        let addr = server.addr;
        let opened: Vec<Result<tokio::task::JoinHandle<()>>> = futures::stream::iter(
            0..args.extra_conns,
        )
        .map(|i| {
            let path = args.extra_path.clone();
            async move { lb::open_idle(addr, lb::source_ip(210 + i % 40)?, path, None).await }
        })
        .buffer_unordered(48)
        .collect()
        .await;
        for r in opened {
            extra.push(r?);
        }
        eprintln!(
            "ls-latency: {} extra connections open in {:.2} s",
            extra.len(),
            t.elapsed().as_secs_f64()
        );
    }
    let load = lb::OtherLoad::start(server.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for c in clients {
        let warmup = args.warmup_lines;
        readers.push(tokio::spawn(read_client(
            c,
            base,
            warmup,
            total,
            stop.clone(),
            args.dump.is_some(),
        )));
    }
    let (rate, line_bytes, file) = (args.rate, args.line_bytes, dir.join(FILE));
    let writer = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || lb::targets::write_lat_lines(&file, base, rate, total, line_bytes))?;
    // Wait for the writer, then give deliveries a grace period.
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow!("writer thread panicked"))??;
    let grace_end = Instant::now() + Duration::from_secs(5);
    let mut hist = lb::latency_histogram()?;
    let mut tail = lb::latency_histogram()?;
    let mut deliver = lb::latency_histogram()?;
    let mut received = 0u64;
    let mut gaps = 0u64;
    let mut stopper = Some(tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep_until(grace_end.into()).await;
            stop.store(true, Ordering::Relaxed);
        }
    }));
    let mut dump = String::new();
    for (i, r) in readers.into_iter().enumerate() {
        let c = r.await??;
        hist.add(&c.hist)
            .map_err(|e| anyhow!("merge histograms: {e}"))?;
        tail.add(&c.tail)
            .map_err(|e| anyhow!("merge histograms: {e}"))?;
        deliver
            .add(&c.deliver)
            .map_err(|e| anyhow!("merge histograms: {e}"))?;
        received += c.received;
        gaps += c.gaps;
        for (seq, t, lat) in c.samples {
            dump.push_str(&format!("{i} {seq} {t} {lat}\n"));
        }
    }
    if let Some(p) = &args.dump {
        std::fs::write(p, format!("client seq written_ns latency_ns\n{dump}"))?;
    }
    if let Some(s) = stopper.take() {
        s.abort();
    }
    let load = load.finish(server.pid);
    let expected = total.saturating_sub(args.warmup_lines) * args.clients as u64;
    let s = lb::summarize_us(&hist);
    eprintln!(
        "ls-latency: rate {}/s, {} clients, {} samples of {expected}: p50 {} µs p90 {} µs p99 {} µs max {} µs",
        args.rate,
        args.clients,
        hist.len(),
        s["p50_us"],
        s["p90_us"],
        s["p99_us"],
        s["max_us"]
    );
    Ok(json!({
        "tool": "ls-latency",
        "target": args.target.name(),
        "path": path,
        "deflate_offered": args.deflate,
        "cdf": cdf(&hist),
        "command": lb::command_line(),
        "server_command": server.command,
        "machine": lb::machine(),
        "rate": args.rate,
        "duration_secs": args.duration,
        "clients": args.clients,
        "extra_conns": extra.len(),
        "extra_path": args.extra_path,
        "format": args.format,
        "line_bytes": args.line_bytes,
        "lines_written": written,
        "samples_expected": expected,
        "records_received": received,
        "gap_notices": gaps,
        "latency": s,
        "write_to_tail": lb::summarize_us(&tail),
        "tail_to_client": lb::summarize_us(&deliver),
        "quiet_wait": quiet,
        "other_load": load,
    }))
}

/// Reads one client until it saw every expected line (or `stop`): returns the
/// histogram, the records received, the gap notices and, when asked, every
/// sample as (seq, written ns, latency ns). The receive time is taken as soon
/// as the frame is read, before it is parsed.
async fn read_client(
    mut c: proto::Client,
    base: Instant,
    warmup: u64,
    total: u64,
    stop: Arc<AtomicBool>,
    keep: bool,
) -> Result<ClientResult> {
    let mut r = ClientResult {
        hist: lb::latency_histogram()?,
        tail: lb::latency_histogram()?,
        deliver: lb::latency_histogram()?,
        received: 0,
        gaps: 0,
        samples: Vec::new(),
    };
    let mut last_seq = None;
    // `ts` is when the tailer cut the line (wall clock, ours with JSON
    // records): it splits the latency into write→tail and tail→client.
    let record = |line: &str,
                  now: u64,
                  now_wall: i64,
                  ts: Option<&str>,
                  r: &mut ClientResult|
     -> Option<u64> {
        let mut f = line.split(' ');
        if f.next()? != "lat" {
            return None;
        }
        let seq: u64 = f.next()?.parse().ok()?;
        let t: u64 = f.next()?.parse().ok()?;
        let t_wall: i64 = f.next()?.parse().ok()?;
        let lat = now.saturating_sub(t).max(1);
        if seq >= warmup {
            let _ = r.hist.record(lat);
            if let Some(cut) = ts.and_then(logstream::hub::parse_ts) {
                let _ = r.tail.record((cut - t_wall).max(1) as u64);
                let _ = r.deliver.record((now_wall - cut).max(1) as u64);
            }
        }
        if keep {
            r.samples.push((seq, t, lat));
        }
        r.received += 1;
        Some(seq)
    };
    while !stop.load(Ordering::Relaxed) && last_seq.is_none_or(|s| s + 1 < total) {
        // The receive time is taken once per network message, before its
        // lines are looked at.
        let mut now: Option<(u64, i64)> = None;
        let got = tokio::time::timeout(
            Duration::from_millis(100),
            c.next(&mut |line, meta| {
                let (t, w) = *now.get_or_insert_with(|| {
                    (base.elapsed().as_nanos() as u64, logstream::hub::now_ns())
                });
                if let Some(s) = record(line, t, w, meta.ts, &mut r) {
                    last_seq = Some(s);
                }
            }),
        )
        .await;
        match got {
            Err(_) => continue,
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break,
            Ok(Err(e)) => return Err(e),
        }
    }
    r.gaps = c.gaps;
    Ok(r)
}

/// The latency distribution as (quantile, µs) points, for CDF plots.
fn cdf(h: &Histogram<u64>) -> serde_json::Value {
    let qs = [
        0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99,
        0.995, 0.999, 0.9999, 1.0,
    ];
    serde_json::Value::Array(
        qs.iter()
            .map(|&q| json!([q, h.value_at_quantile(q) as f64 / 1000.0]))
            .collect(),
    )
}

struct ClientResult {
    hist: Histogram<u64>,
    tail: Histogram<u64>,
    deliver: Histogram<u64>,
    received: u64,
    gaps: u64,
    samples: Vec<(u64, u64, u64)>,
}
