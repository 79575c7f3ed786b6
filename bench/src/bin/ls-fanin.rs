//! `ls-fanin`: the aggregator under fan-in. Starts N real `logstream sidecar`
//! processes (one folder and one file each), one `logstream aggregator`
//! pulling all of them, and M filtered WebSocket clients on the aggregator
//! plus one unfiltered client directly on sidecar 0 (the baseline).
//!
//! One writer thread appends to every file at a fixed rate, every tick
//! (10 ms): per file, the lines due are formatted with the current monotonic
//! time of this process and flushed with one `write`. Every client parses
//! that time out of the lines it receives, so write→receive is measured on
//! one clock. After a warm-up, a window of `--duration` seconds is measured:
//! the aggregator's `logstream_upstream_records_total` and its CPU
//! (`/proc/PID/stat`), and the latency of the lines *written* in the window.
//!
//! `--render-md DIR` prints the "Aggregator fan-in" section of
//! `bench/RESULTS.md` from the `fanin-*.json` results in DIR.
//!
//! Everything runs on loopback (127.0.0.x).

// The result is one large `json!` literal.
#![recursion_limit = "256"]

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use logstream_bench as lb;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(
    name = "ls-fanin",
    about = "Aggregator fan-in: N sidecars, one aggregator, M filtered WebSocket clients"
)]
struct Args {
    /// Sidecar processes (pods `web-0` … `web-(N-1)`), one file each.
    #[arg(long, default_value_t = 50)]
    sidecars: usize,
    /// Lines per second written to each sidecar's file.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Writer tick in milliseconds (one flush per file per tick).
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Filtered WebSocket clients on the aggregator: the first half follow
    /// one pod each (`pod=web-K`), a quarter follow warn and above of four
    /// pods (`pod=web-(a|b|c|d)&level=warn+`), the rest `level=error`.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// `--reorder-window` of the aggregator.
    #[arg(long, default_value = "200ms")]
    reorder_window: String,
    /// Seconds of writing before the measured window.
    #[arg(long, default_value_t = 8.0)]
    warmup_secs: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds clients keep reading after the window (late deliveries).
    #[arg(long, default_value_t = 2.0)]
    grace_secs: f64,
    /// Hard bound of the whole run: past it, every process we started is
    /// killed and the tool exits with status 2.
    #[arg(long, default_value_t = 115)]
    max_secs: u64,
    /// The `logstream` binary (default: next to this tool).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for the aggregator (repeat).
    #[arg(long = "agg-arg", allow_hyphen_values = true)]
    agg_args: Vec<String>,
    /// Extra argument for every sidecar (repeat).
    #[arg(long = "sidecar-arg", allow_hyphen_values = true)]
    sidecar_args: Vec<String>,
    /// Before starting anything, wait up to this long for a quiet machine.
    #[arg(long, default_value_t = 60)]
    quiet_wait_secs: u64,
    /// "Quiet": at most this share of the machine's CPU busy.
    #[arg(long, default_value_t = 0.15)]
    quiet_busy: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Only print the RESULTS.md section from the `fanin-*.json` in this folder.
    #[arg(long)]
    render_md: Option<PathBuf>,
}

const FILE: &str = "app.log";
const ISSUE_LINES_PER_CORE: f64 = 400_000.0;
const ISSUE_PEAK_RSS_BYTES: f64 = 100.0 * 1024.0 * 1024.0;
const ISSUE_ADDED_P99_US: f64 = 5_000.0;

/// Pids of every process we started, for the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.render_md {
        print!("{}", render_md(dir)?);
        return Ok(());
    }
    if args.sidecars == 0 || args.rate <= 0.0 || args.duration <= 0.0 || args.tick_ms == 0 {
        bail!("--sidecars, --rate, --duration and --tick-ms must be positive");
    }
    watchdog(Duration::from_secs(args.max_secs));
    let started = Instant::now();
    let result = run(&args);
    let result = result.map(|mut v| {
        v["run_secs"] = json!(started.elapsed().as_secs_f64());
        v
    })?;
    lb::emit_result(args.json_out.as_deref(), &result)
}

/// Past `max`, kills every process we started (by pid) and exits.
fn watchdog(max: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(max);
        eprintln!(
            "ls-fanin: still running after {} s: killing what it started",
            max.as_secs()
        );
        let pids = CHILDREN.lock().map(|p| p.clone()).unwrap_or_default();
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        std::process::exit(2);
    });
}

fn remember(s: &lb::Server) {
    if let (Some(pid), Ok(mut v)) = (s.pid, CHILDREN.lock()) {
        v.push(pid);
    }
}

/// What a client subscribes to, and so which lines it must get.
#[derive(Clone, Debug)]
enum Want {
    /// Every line of one pod (the direct client too).
    Pod(usize),
    /// Warn and above of a few pods.
    PodsWarn(Vec<usize>),
    /// Errors of every pod.
    Error,
}

impl Want {
    fn group(&self) -> &'static str {
        match self {
            Want::Pod(_) => "pod",
            Want::PodsWarn(_) => "pods-warn",
            Want::Error => "error",
        }
    }

    fn query(&self) -> String {
        match self {
            Want::Pod(k) => format!("pod=web-{k}"),
            Want::PodsWarn(ks) => {
                let alt: Vec<String> = ks.iter().map(|k| k.to_string()).collect();
                // `web-(1|2)` and `warn+`, URL-encoded.
                format!("pod=web-%28{}%29&level=warn%2B", alt.join("%7C"))
            }
            Want::Error => "level=error".into(),
        }
    }

    fn accepts(&self, pod: usize, level: u8) -> bool {
        match self {
            Want::Pod(k) => pod == *k,
            Want::PodsWarn(ks) => level >= WARN && ks.contains(&pod),
            Want::Error => level >= ERROR,
        }
    }

    fn expected(&self, w: &WriterOut) -> u64 {
        match self {
            Want::Pod(k) => w.in_window[*k][0],
            Want::PodsWarn(ks) => ks.iter().map(|k| w.in_window[*k][1]).sum(),
            Want::Error => w.in_window.iter().map(|c| c[2]).sum(),
        }
    }
}

const INFO: u8 = 0;
const WARN: u8 = 1;
const ERROR: u8 = 2;

/// Level of line `seq`: 1 % ERROR, 4 % WARN, the rest INFO.
fn level_of(seq: u64) -> u8 {
    if seq % 100 == 7 {
        ERROR
    } else if seq % 25 == 3 {
        WARN
    } else {
        INFO
    }
}

fn client_wants(clients: usize, sidecars: usize) -> Vec<Want> {
    let half = clients / 2;
    let quarter = clients / 4;
    (0..clients)
        .map(|i| {
            if i < half {
                Want::Pod(i % sidecars)
            } else if i < half + quarter {
                let j = i - half;
                let mut ks: Vec<usize> = (0..4).map(|d| (4 * j + d) % sidecars).collect();
                ks.dedup();
                Want::PodsWarn(ks)
            } else {
                Want::Error
            }
        })
        .collect()
}

/// A point-in-time sample of the processes and the machine.
struct Sample {
    at: Instant,
    agg_cpu: Duration,
    agg_records: f64,
    sidecars_cpu: Duration,
    bench_cpu: Duration,
    machine: Option<(u64, u64)>,
    /// The `cpu` line of `/proc/stat` (user nice system idle iowait irq softirq steal …).
    cpu_line: Vec<u64>,
    written: u64,
    /// The aggregator's reorder counters: records released by the window
    /// (not by watermarks), watermark asks, upstreams left out.
    window_releases: f64,
    watermark_asks: f64,
    watermark_stalls: f64,
}

fn sample(agg: &lb::Server, sidecars: &[lb::Server], written: &AtomicU64) -> Result<Sample> {
    let agg_pid = agg.pid.ok_or_else(|| anyhow!("aggregator pid unknown"))?;
    Ok(Sample {
        at: Instant::now(),
        agg_cpu: lb::process_cpu(agg_pid).unwrap_or_default(),
        agg_records: agg
            .metric("logstream_upstream_records_total")?
            .unwrap_or(0.0),
        sidecars_cpu: sidecars
            .iter()
            .filter_map(|s| s.pid.and_then(lb::process_cpu))
            .sum(),
        bench_cpu: lb::process_cpu(std::process::id()).unwrap_or_default(),
        machine: lb::machine_ticks(),
        cpu_line: cpu_line(),
        written: written.load(Ordering::Relaxed),
        window_releases: agg
            .metric("logstream_reorder_window_releases_total")?
            .unwrap_or(0.0),
        watermark_asks: agg
            .metric("logstream_upstream_watermark_asks_total")?
            .unwrap_or(0.0),
        watermark_stalls: agg
            .metric("logstream_upstream_watermark_stalls_total")?
            .unwrap_or(0.0),
    })
}

fn run(args: &Args) -> Result<Value> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => lb::default_server_bin()?,
    };
    let scratch = lb::Scratch::new("fanin")?;
    let mut files = Vec::new();
    for k in 0..args.sidecars {
        let dir = scratch.root.join("pods").join(format!("web-{k}"));
        std::fs::create_dir_all(&dir)?;
        // The file exists before the sidecar starts, so it is tracked from its first scan.
        let f = dir.join(FILE);
        std::fs::File::create(&f)?;
        files.push(f);
    }
    let quiet = lb::wait_quiet(Duration::from_secs(args.quiet_wait_secs), args.quiet_busy);

    // Sidecars, then the aggregator pulling all of them.
    let t_start = Instant::now();
    let mut sidecars = Vec::new();
    for (k, f) in files.iter().enumerate() {
        let dir = f.parent().ok_or_else(|| anyhow!("no folder"))?;
        let mut a: Vec<String> = vec![
            "sidecar".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--namespace".into(),
            "bench".into(),
            "--pod".into(),
            format!("web-{k}"),
            "--container".into(),
            "app".into(),
        ];
        a.extend(lb::NO_STREAM_RATE_LIMITS.iter().map(|s| s.to_string()));
        a.extend(args.sidecar_args.iter().cloned());
        let s =
            lb::Server::spawn_args(&bin, &a, &scratch.root.join(format!("sidecar-{k}.stderr")))?;
        remember(&s);
        sidecars.push(s);
    }
    let mut a: Vec<String> = vec!["aggregator".into()];
    for s in &sidecars {
        a.push("--source".into());
        a.push(format!("http://{}", s.addr));
    }
    a.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--reorder-window".into(),
        args.reorder_window.clone(),
    ]);
    a.extend(lb::NO_STREAM_RATE_LIMITS.iter().map(|s| s.to_string()));
    a.extend(args.agg_args.iter().cloned());
    let agg = lb::Server::spawn_args(&bin, &a, &scratch.root.join("aggregator.stderr"))?;
    remember(&agg);
    let agg_pid = agg.pid.ok_or_else(|| anyhow!("aggregator pid unknown"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = agg.metric("logstream_upstreams_connected")?.unwrap_or(0.0);
        if up as usize >= args.sidecars {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the aggregator connected to {up} of {} sidecars",
                args.sidecars
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "ls-fanin: {} sidecars and the aggregator (pid {agg_pid}, window {}) up in {:.2} s",
        args.sidecars,
        args.reorder_window,
        t_start.elapsed().as_secs_f64()
    );

    // Clients: connect all, then start the writer.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let wants = client_wants(args.clients, args.sidecars);
    let span = Duration::from_secs_f64(args.warmup_secs + args.duration + args.grace_secs + 2.0);
    let direct_slots = (args.rate * span.as_secs_f64()).ceil() as usize + 1024;
    let direct_times: Arc<Vec<AtomicU64>> =
        Arc::new((0..direct_slots).map(|_| AtomicU64::new(0)).collect());
    let conns = rt.block_on(async {
        let mut v = Vec::new();
        for (i, w) in wants.iter().enumerate() {
            let path = format!("/ws?{}", w.query());
            let ws = connect(agg.addr, lb::source_ip(2 + i % 200)?, &path).await?;
            v.push((w.clone(), false, ws));
        }
        // The baseline: every line of pod 0, straight from its sidecar.
        let ws = connect(sidecars[0].addr, lb::source_ip(250)?, "/ws").await?;
        v.push((Want::Pod(0), true, ws));
        anyhow::Ok(v)
    })?;
    let base = Instant::now();
    let ns = |secs: f64| (secs * 1e9) as u64;
    let window = (ns(args.warmup_secs), ns(args.warmup_secs + args.duration));
    let read_until = window.1 + ns(args.grace_secs);
    let mut readers = Vec::new();
    for (want, direct, ws) in conns {
        readers.push(rt.spawn(read_client(
            ws,
            want,
            direct,
            base,
            window,
            read_until,
            direct_times.clone(),
        )));
    }
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (files, written) = (files.clone(), written.clone());
        let (rate, tick, bytes) = (
            args.rate,
            Duration::from_millis(args.tick_ms),
            args.line_bytes,
        );
        let stop = window.1 + ns(0.5);
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || write_lines(&files, base, rate, tick, bytes, window, stop, &written))?
    };

    // The measured window.
    let at = |n: u64| base + Duration::from_nanos(n);
    sleep_until(at(window.0));
    let load = lb::OtherLoad::start(Some(agg_pid));
    let s0 = sample(&agg, &sidecars, &written)?;
    let rss0 = agg.rss();
    let mut per_sec = Vec::new();
    let mut rss_max = rss0.unwrap_or(0);
    let mut prev = (s0.at, s0.agg_records);
    let mut next = s0.at;
    loop {
        next += Duration::from_secs(1);
        if next > at(window.1) {
            break;
        }
        sleep_until(next);
        let r = agg
            .metric("logstream_upstream_records_total")?
            .unwrap_or(0.0);
        let now = Instant::now();
        per_sec.push((r - prev.1) / now.duration_since(prev.0).as_secs_f64());
        prev = (now, r);
        rss_max = rss_max.max(agg.rss().unwrap_or(0));
    }
    sleep_until(at(window.1));
    let s1 = sample(&agg, &sidecars, &written)?;
    let rss1 = agg.rss();
    let hwm = agg.hwm();
    let load = load.finish(Some(agg_pid));
    let agg_threads = thread_cpu_by_name(agg_pid);
    let backlog_at_end = s1.written as f64 - s1.agg_records;

    let w = writer
        .join()
        .map_err(|_| anyhow!("writer thread panicked"))??;
    let outs: Vec<ClientOut> = rt.block_on(async {
        let mut v = Vec::new();
        for r in readers {
            v.push(r.await??);
        }
        anyhow::Ok(v)
    })?;
    let metrics_text = lb::http_get(agg.addr, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let am = |s: &str| lb::parse_metric(&metrics_text, s);

    // Ingest and CPU over the window.
    let secs = s1.at.duration_since(s0.at).as_secs_f64();
    let ingested = s1.agg_records - s0.agg_records;
    let offered_lines: u64 = w.in_window.iter().map(|c| c[0]).sum();
    let agg_cpu = (s1.agg_cpu.saturating_sub(s0.agg_cpu)).as_secs_f64();
    let sidecars_cpu = (s1.sidecars_cpu.saturating_sub(s0.sidecars_cpu)).as_secs_f64();
    let bench_cpu = (s1.bench_cpu.saturating_sub(s0.bench_cpu)).as_secs_f64();
    let (machine_busy, machine_capacity) = match (s0.machine, s1.machine) {
        (Some((b0, t0)), Some((b1, t1))) => {
            let tck = lb::clk_tck() as f64;
            ((b1 - b0) as f64 / tck, (t1 - t0) as f64 / tck)
        }
        _ => (0.0, 0.0),
    };
    // Interrupt time (loopback TCP runs in softirq) is charged to no process.
    let ticks = |i: usize| {
        let d = s1.cpu_line.get(i).copied().unwrap_or(0) as f64
            - s0.cpu_line.get(i).copied().unwrap_or(0) as f64;
        d.max(0.0) / lb::clk_tck() as f64
    };
    let irq_cpu = ticks(5) + ticks(6);
    let steal_cpu = ticks(7);
    let others_cpu = (machine_busy - agg_cpu - sidecars_cpu - bench_cpu - irq_cpu).max(0.0);

    // Latency: per group, all aggregator clients, the direct baseline, and
    // the per-line difference for lines of pod 0.
    let mut agg_hist = lb::latency_histogram()?;
    let mut direct_hist = lb::latency_histogram()?;
    let mut paired = lb::latency_histogram()?;
    let mut paired_negative = 0u64;
    let mut paired_missing = 0u64;
    let mut groups: Vec<(&'static str, Histogram<u64>, u64, u64, usize)> = Vec::new();
    let (mut gaps, mut gap_missed, mut mismatched, mut after_window) = (0u64, 0u64, 0u64, 0u64);
    let mut clients_ended = 0usize;
    for o in &outs {
        gaps += o.gaps;
        gap_missed += o.gap_missed;
        mismatched += o.mismatched;
        after_window += o.late;
        clients_ended += usize::from(o.ended);
        let expected = o.want.expected(&w);
        if o.direct {
            direct_hist
                .add(&o.hist)
                .map_err(|e| anyhow!("merge: {e}"))?;
            groups.push((
                "direct (sidecar web-0)",
                o.hist.clone(),
                o.in_window,
                expected,
                1,
            ));
            continue;
        }
        agg_hist.add(&o.hist).map_err(|e| anyhow!("merge: {e}"))?;
        let g = o.want.group();
        match groups.iter_mut().find(|x| x.0 == g) {
            Some(x) => {
                x.1.add(&o.hist).map_err(|e| anyhow!("merge: {e}"))?;
                x.2 += o.in_window;
                x.3 += expected;
                x.4 += 1;
            }
            None => groups.push((g, o.hist.clone(), o.in_window, expected, 1)),
        }
        for &(seq, recv) in &o.pod0 {
            match direct_times
                .get(seq as usize)
                .map(|t| t.load(Ordering::Relaxed))
            {
                Some(d) if d > 0 => {
                    if recv < d {
                        paired_negative += 1;
                    }
                    let _ = paired.record(recv.saturating_sub(d).max(1));
                }
                _ => paired_missing += 1,
            }
        }
    }
    let agg_s = lb::summarize_us(&agg_hist);
    let direct_s = lb::summarize_us(&direct_hist);
    let diff = |k: &str| agg_s[k].as_f64().unwrap_or(0.0) - direct_s[k].as_f64().unwrap_or(0.0);
    let added = json!({
        "p50_us": diff("p50_us"),
        "p90_us": diff("p90_us"),
        "p99_us": diff("p99_us"),
        "p999_us": diff("p999_us"),
    });
    let group_json: Vec<Value> = groups
        .iter()
        .map(|(g, h, got, exp, n)| {
            json!({
                "group": g,
                "clients": n,
                "received_in_window": got,
                "expected_in_window": exp,
                "latency": lb::summarize_us(h),
            })
        })
        .collect();
    let sidecar_cmd = sidecars
        .first()
        .map(|s| s.command.clone())
        .unwrap_or_default();
    let agg_cmd_short = format!(
        "{} aggregator --source http://127.0.0.1:PORT_0 … --source http://127.0.0.1:PORT_{} --listen 127.0.0.1:0 --reorder-window {}{}",
        bin.display(),
        args.sidecars - 1,
        args.reorder_window,
        args.agg_args
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    let lines_per_core = if agg_cpu > 0.0 {
        ingested / agg_cpu
    } else {
        0.0
    };
    eprintln!(
        "ls-fanin: window {}: offered {:.0} lines/s, ingested {:.0} lines/s, aggregator {:.3} CPU-s/s → {:.0} lines per CPU-s; latency agg p50 {} p99 {} µs, direct p50 {} p99 {} µs, paired p50 {} p99 {} µs; RSS {} MiB",
        args.reorder_window,
        offered_lines as f64 / args.duration,
        ingested / secs,
        agg_cpu / secs,
        lines_per_core,
        agg_s["p50_us"],
        agg_s["p99_us"],
        direct_s["p50_us"],
        direct_s["p99_us"],
        lb::summarize_us(&paired)["p50_us"],
        lb::summarize_us(&paired)["p99_us"],
        rss1.unwrap_or(0) >> 20
    );
    Ok(json!({
        "tool": "ls-fanin",
        "command": lb::command_line(),
        "aggregator_command": agg.command,
        "aggregator_command_short": agg_cmd_short,
        "sidecar_command": sidecar_cmd,
        "machine": lb::machine(),
        "reorder_window": args.reorder_window,
        "sidecars": args.sidecars,
        "agg_args": args.agg_args,
        "rate_per_sidecar": args.rate,
        "tick_ms": args.tick_ms,
        "line_bytes": args.line_bytes,
        "clients": args.clients,
        "client_mix": {
            "pod": wants.iter().filter(|w| matches!(w, Want::Pod(_))).count(),
            "pods_warn": wants.iter().filter(|w| matches!(w, Want::PodsWarn(_))).count(),
            "error": wants.iter().filter(|w| matches!(w, Want::Error)).count(),
            "examples": wants.iter().map(Want::query).take(1)
                .chain(wants.iter().filter(|w| !matches!(w, Want::Pod(_))).map(Want::query).take(1))
                .chain(wants.iter().filter(|w| matches!(w, Want::Error)).map(Want::query).take(1))
                .collect::<Vec<_>>(),
        },
        "warmup_secs": args.warmup_secs,
        "duration_secs": args.duration,
        "window_secs": secs,
        "offered_lines": offered_lines,
        "offered_lines_per_sec": offered_lines as f64 / args.duration,
        "ingested_lines": ingested,
        "ingested_lines_per_sec": ingested / secs,
        "ingested_per_sec_each_second": per_sec,
        "backlog_at_window_end": backlog_at_end,
        "aggregator_cpu_secs": agg_cpu,
        "aggregator_cores": agg_cpu / secs,
        "aggregator_us_per_line": if ingested > 0.0 { agg_cpu * 1e6 / ingested } else { 0.0 },
        "ingest_lines_per_core": lines_per_core,
        "aggregator_threads_cpu_secs_total": agg_threads,
        "sidecars_cpu_secs": sidecars_cpu,
        "sidecars_cores": sidecars_cpu / secs,
        "bench_cpu_secs": bench_cpu,
        "bench_cores": bench_cpu / secs,
        "irq_softirq_cores": irq_cpu / secs.max(1e-9),
        "steal_cores": steal_cpu / secs.max(1e-9),
        "others_cores": others_cpu / secs.max(1e-9),
        "machine_busy_share": if machine_capacity > 0.0 { machine_busy / machine_capacity } else { 0.0 },
        "aggregator_rss_start_bytes": rss0,
        "aggregator_rss_end_bytes": rss1,
        "aggregator_rss_max_sampled_bytes": rss_max,
        "aggregator_hwm_bytes": hwm,
        "latency_aggregator_clients": agg_s,
        "latency_direct_sidecar": direct_s,
        "added_by_aggregator_percentile_difference": added,
        "added_by_aggregator_paired_pod0": lb::summarize_us(&paired),
        "reorder": {
            "window_releases": s1.window_releases - s0.window_releases,
            "watermark_asks": s1.watermark_asks - s0.watermark_asks,
            "watermark_stalls": s1.watermark_stalls - s0.watermark_stalls,
        },
        "paired_negative": paired_negative,
        "paired_missing": paired_missing,
        "groups": group_json,
        "gap_notices": gaps,
        "gap_missed_records": gap_missed,
        "filter_mismatches": mismatched,
        "records_written_after_window_received": after_window,
        "clients_closed_by_server": clients_ended,
        "writer": {
            "lines_total": w.total,
            "max_tick_late_us": w.max_late_ns as f64 / 1000.0,
            "ticks_late_over_5ms": w.ticks_late,
            "ticks": w.ticks,
        },
        "aggregator_metrics_after": {
            "upstream_gap_records": am("logstream_upstream_gap_records_total"),
            "upstream_reconnects": am("logstream_upstream_reconnects_total"),
            "upstreams_connected": am("logstream_upstreams_connected"),
            "reorder_buffered": am("logstream_reorder_buffered"),
            "history_records": am("logstream_history_records"),
        },
        "aggregator_pid": agg_pid,
        "quiet_wait": quiet,
        "other_load": load,
    }))
}

/// Machine-wide CPU ticks by kind, from the `cpu` line of `/proc/stat`.
fn cpu_line() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("cpu ")).map(|l| {
                l.split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// CPU seconds of the aggregator's threads, summed by thread name.
fn thread_cpu_by_name(pid: u32) -> Value {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    let mut m = serde_json::Map::new();
    for n in names {
        if let Some(c) = lb::thread_cpu(pid, &n) {
            m.insert(n, json!(c.as_secs_f64()));
        }
    }
    Value::Object(m)
}

async fn connect(addr: std::net::SocketAddr, ip: std::net::IpAddr, path: &str) -> Result<lb::Ws> {
    let mut ws = lb::ws_connect(addr, Some(ip), path, None).await?;
    match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(r#""type":"hello""#) => Ok(ws),
        Ok(other) => bail!("{path}: expected hello, got {other:?}"),
        Err(_) => bail!("{path}: no hello within 10 s"),
    }
}

struct WriterOut {
    /// Per pod: lines written in the window, of them warn and above, errors.
    in_window: Vec<[u64; 3]>,
    total: u64,
    ticks: u64,
    ticks_late: u64,
    max_late_ns: u64,
}

/// Every `tick`, appends to every file the lines due at `rate` per second
/// (`LEVEL fanin p=POD s=SEQ t=MONO_NS xxx…`), one flush per file, until
/// `stop` (ns after `base`).
#[allow(clippy::too_many_arguments)]
fn write_lines(
    files: &[PathBuf],
    base: Instant,
    rate: f64,
    tick: Duration,
    line_bytes: usize,
    window: (u64, u64),
    stop: u64,
    written: &AtomicU64,
) -> Result<WriterOut> {
    let mut out = Vec::new();
    for f in files {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(f)
            .with_context(|| format!("open {}", f.display()))?;
        out.push(BufWriter::with_capacity(64 << 10, file));
    }
    let mut r = WriterOut {
        in_window: vec![[0; 3]; files.len()],
        total: 0,
        ticks: 0,
        ticks_late: 0,
        max_late_ns: 0,
    };
    let mut seq = 0u64; // the same for every file: all files get the same count
    let mut next = Instant::now();
    let start = next;
    let mut line = Vec::with_capacity(line_bytes + 64);
    loop {
        let now = base.elapsed().as_nanos() as u64;
        if now >= stop {
            break;
        }
        let late = Instant::now().saturating_duration_since(next).as_nanos() as u64;
        r.max_late_ns = r.max_late_ns.max(late);
        r.ticks_late += u64::from(late > 5_000_000);
        r.ticks += 1;
        let due = (start.elapsed().as_secs_f64() * rate).floor() as u64;
        for (pod, w) in out.iter_mut().enumerate() {
            let t = base.elapsed().as_nanos() as u64;
            let inside = (window.0..window.1).contains(&t);
            for s in seq..due {
                let level = level_of(s);
                line.clear();
                let word = ["INFO", "WARN", "ERROR"][level as usize];
                write!(line, "{word} fanin p={pod:03} s={s:010} t={t:016} ")?;
                if line.len() + 1 < line_bytes {
                    line.resize(line_bytes - 1, b'x');
                }
                line.push(b'\n');
                w.write_all(&line)?;
                if inside {
                    let c = &mut r.in_window[pod];
                    c[0] += 1;
                    c[1] += u64::from(level >= WARN);
                    c[2] += u64::from(level >= ERROR);
                }
            }
            w.flush()?;
            r.total += due - seq;
            written.fetch_add(due - seq, Ordering::Relaxed);
        }
        seq = due;
        next += tick;
        sleep_until(next);
    }
    Ok(r)
}

struct ClientOut {
    want: Want,
    direct: bool,
    hist: Histogram<u64>,
    /// Lines written in the window that this client received.
    in_window: u64,
    /// Lines received that were written after the window (not counted).
    late: u64,
    gaps: u64,
    gap_missed: u64,
    /// Lines its filter should not have let through.
    mismatched: u64,
    /// (seq, receive ns) of the pod-0 lines written in the window.
    pod0: Vec<(u64, u64)>,
    /// The server closed the connection.
    ended: bool,
}

/// Parses `LEVEL fanin p=POD s=SEQ t=NS …`: (level, pod, seq, written ns).
fn parse_line(l: &str) -> Option<(u8, usize, u64, u64)> {
    let mut f = l.split(' ');
    let level = match f.next()? {
        "INFO" => INFO,
        "WARN" => WARN,
        "ERROR" => ERROR,
        _ => return None,
    };
    if f.next()? != "fanin" {
        return None;
    }
    let pod = f.next()?.strip_prefix("p=")?.parse().ok()?;
    let seq = f.next()?.strip_prefix("s=")?.parse().ok()?;
    let t = f.next()?.strip_prefix("t=")?.parse().ok()?;
    Some((level, pod, seq, t))
}

/// Reads one client until `until` (ns after `base`). Frames are scanned, not
/// deserialised: the lines are plain ASCII without quotes, so the text
/// between `"line":"` and the next `"` is the line.
async fn read_client(
    mut ws: lb::Ws,
    want: Want,
    direct: bool,
    base: Instant,
    window: (u64, u64),
    until: u64,
    direct_times: Arc<Vec<AtomicU64>>,
) -> Result<ClientOut> {
    let mut o = ClientOut {
        want,
        direct,
        hist: lb::latency_histogram()?,
        in_window: 0,
        late: 0,
        gaps: 0,
        gap_missed: 0,
        mismatched: 0,
        pod0: Vec::new(),
        ended: false,
    };
    const KEY: &str = r#""line":""#;
    loop {
        let left = until.saturating_sub(base.elapsed().as_nanos() as u64);
        if left == 0 {
            break;
        }
        let msg = match tokio::time::timeout(Duration::from_nanos(left), ws.next()).await {
            Err(_) => break,
            Ok(None) | Ok(Some(Err(_))) => {
                o.ended = true;
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        let now = base.elapsed().as_nanos() as u64;
        let Message::Text(text) = msg else { continue };
        let text = text.as_str();
        if !text.starts_with(r#"{"type":"records""#) {
            if text.contains(r#""type":"gap""#) {
                o.gaps += 1;
                o.gap_missed += text
                    .split_once(r#""missed":"#)
                    .and_then(|(_, r)| {
                        r.split(|c: char| !c.is_ascii_digit())
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0);
            }
            continue;
        }
        for (i, _) in text.match_indices(KEY) {
            let rest = &text[i + KEY.len()..];
            let line = rest.split('"').next().unwrap_or("");
            let Some((level, pod, seq, t)) = parse_line(line) else {
                continue;
            };
            if !o.want.accepts(pod, level) {
                o.mismatched += 1;
            }
            if t >= window.1 {
                o.late += 1;
                continue;
            }
            if t < window.0 {
                continue;
            }
            o.in_window += 1;
            let _ = o.hist.record(now.saturating_sub(t).max(1));
            if direct {
                if let Some(slot) = direct_times.get(seq as usize) {
                    let _ = slot.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
                }
            } else if pod == 0 {
                o.pod0.push((seq, now));
            }
        }
    }
    Ok(o)
}

// ---------------------------------------------------------------- report

fn fmt_int(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn fmt_us(us: f64) -> String {
    if us.abs() >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// A run's row label: its window, its sidecars when not the usual 50, and
/// the aggregator's extra arguments.
fn label(r: &Value) -> String {
    let win = r["reorder_window"].as_str().unwrap_or("?");
    let mut l = match r["sidecars"].as_u64() {
        Some(50) | None => win.to_string(),
        Some(n) => format!("{win}, {n} sidecars"),
    };
    let extra: Vec<&str> = r["agg_args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !extra.is_empty() {
        l.push_str(", ");
        l.push_str(&extra.join(" "));
    }
    l
}

/// The "Aggregator fan-in" section of RESULTS.md.
fn render_md(dir: &Path) -> Result<String> {
    let mut runs: Vec<Value> = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fanin-") && n.ends_with(".json"))
        })
        .collect();
    names.sort();
    for p in &names {
        let text = std::fs::read_to_string(p)?;
        let mut v: Value = serde_json::from_str(&text)?;
        v["file"] = json!(p.display().to_string());
        runs.push(v);
    }
    // Most sidecars first, then larger windows (200ms before 0s), then
    // the default aggregator before one with extra arguments.
    runs.sort_by_key(|v| {
        (
            std::cmp::Reverse(v["sidecars"].as_u64().unwrap_or(0)),
            std::cmp::Reverse(v["reorder_window"].as_str().unwrap_or("").to_string()),
            v["agg_args"].as_array().map_or(0, Vec::len),
        )
    });
    let mut md = String::new();
    writeln!(md, "## Aggregator fan-in\n")?;
    if runs.is_empty() {
        writeln!(
            md,
            "No `fanin-*.json` results: run `SCENARIOS=fanin bench/run.sh`.\n"
        )?;
        return Ok(md);
    }
    let r0 = &runs[0];
    writeln!(
        md,
        "`ls-fanin` starts {} real `logstream sidecar` processes (pods `web-0`…, one folder and one file `app.log` each), \
         one `logstream aggregator` with a `--source` per sidecar, {} filtered WebSocket clients on the aggregator \
         ({} × `pod=web-K`, one pod each; {} × `pod=web-(a|b|c|d)&level=warn+`; {} × `level=error`) and one unfiltered \
         client directly on sidecar `web-0` (the baseline). One writer thread appends {} lines/s of {} bytes to every file \
         ({} lines/s offered in all), flushing each file once per {} ms tick; 1 % of lines are `ERROR`, 4 % `WARN`. \
         Each line carries its write time (monotonic clock of the tool, which also runs the clients). \
         After {} s of warm-up, {} s are measured: ingest = the aggregator's `logstream_upstream_records_total` over the window; \
         CPU = utime+stime of the aggregator from `/proc/PID/stat` over the same window (it includes the fan-out to the clients, \
         not only the ingest); latency = receive time − write time of every line *written* in the window (clients read {} s longer). \
         \"added\" is the aggregator clients' percentile minus the direct client's; \"paired\" is, line by line, \
         the receive time at an aggregator client minus the receive time of the same line at the direct client (pod `web-0` lines only). \
         Loopback only; nothing is pinned; the machine has {} CPUs shared by the sidecars, the aggregator, the tool and anything else running.\n",
        r0["sidecars"],
        r0["clients"],
        r0["client_mix"]["pod"],
        r0["client_mix"]["pods_warn"],
        r0["client_mix"]["error"],
        fmt_int(f(&r0["rate_per_sidecar"])),
        r0["line_bytes"],
        fmt_int(f(&r0["rate_per_sidecar"]) * f(&r0["sidecars"])),
        r0["tick_ms"],
        r0["warmup_secs"],
        r0["duration_secs"],
        2,
        r0["machine"]["nproc"],
    )?;
    writeln!(
        md,
        "**Ordering.** Since protocol 1.1 the aggregator releases a record as soon as every sidecar has promised, by a \
         watermark it asks for when a record waits, that nothing older follows (`sidecar/src/aggregator/merge.rs`, \
         PROTOCOL.md \"Ordering across sources\"): records leave in time order after about a round trip, and \
         `--reorder-window` is only the bound on a sidecar that does not answer. `200ms` is the default (ordered); `0s` \
         releases every record on arrival (no cross-source order) and is the floor to compare with.\n"
    )?;
    writeln!(
        md,
        "| reorder window | records released by the window (not by watermarks) | watermark asks | upstreams left out |"
    )?;
    writeln!(md, "|---|---|---|---|")?;
    for r in &runs {
        let o = &r["reorder"];
        writeln!(
            md,
            "| `{}` | {} | {} | {} |",
            label(r),
            fmt_int(f(&o["window_releases"])),
            fmt_int(f(&o["watermark_asks"])),
            fmt_int(f(&o["watermark_stalls"])),
        )?;
    }
    writeln!(md)?;
    writeln!(md, "### Targets (from the issue)\n")?;
    writeln!(md, "| target | reorder window | measured | verdict |")?;
    writeln!(md, "|---|---|---|---|")?;
    for r in &runs {
        let lpc = f(&r["ingest_lines_per_core"]);
        writeln!(
            md,
            "| ≥ 400,000 lines/s ingested per aggregator core | `{}` | {} lines per aggregator CPU-second ({:.2} µs per line, fan-out to {} clients included) | **{}** |",
            label(r),
            fmt_int(lpc),
            f(&r["aggregator_us_per_line"]),
            r["clients"],
            if r["sidecars"].as_u64() != Some(50) {
                "n/a: the goal is set at 50 sidecars"
            } else if lpc >= ISSUE_LINES_PER_CORE {
                "met"
            } else {
                "MISSED"
            }
        )?;
    }
    for r in &runs {
        let p99 = f(&r["added_by_aggregator_percentile_difference"]["p99_us"]);
        let paired = f(&r["added_by_aggregator_paired_pod0"]["p99_us"]);
        writeln!(
            md,
            "| ≤ 5 ms added p99 | `{}` | {} (percentile difference); {} (paired, pod web-0) | **{}** |",
            label(r),
            fmt_us(p99),
            fmt_us(paired),
            match (
                p99 <= ISSUE_ADDED_P99_US && paired <= ISSUE_ADDED_P99_US,
                r["sidecars"].as_u64() == Some(50),
            ) {
                (true, true) => "met",
                (false, true) => "MISSED",
                (true, false) => "met at this lighter load",
                (false, false) => "missed at this lighter load",
            }
        )?;
    }
    for r in &runs {
        let peak = f(&r["aggregator_hwm_bytes"]);
        writeln!(
            md,
            "| peak RSS ≤ 100 MiB | `{}` | {:.0} MiB (VmHWM) | **{}** |",
            label(r),
            peak / 1048576.0,
            if peak > 0.0 && peak <= ISSUE_PEAK_RSS_BYTES {
                "met"
            } else {
                "MISSED"
            }
        )?;
    }
    writeln!(md)?;
    writeln!(md, "### Ingest, CPU, memory\n")?;
    writeln!(
        md,
        "| reorder window | offered lines/s | ingested lines/s (window; min–max per second) | backlog at end | aggregator cores | **lines per aggregator CPU-s** | sidecars cores (all {}) | tool cores (clients + writer) | irq + softirq cores (loopback TCP) | other processes cores | machine busy | aggregator RSS start → end (peak) | load average |",
        r0["sidecars"]
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &runs {
        let per: Vec<f64> = r["ingested_per_sec_each_second"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let (mn, mx) = per
            .iter()
            .fold((f64::INFINITY, 0f64), |(a, b), x| (a.min(*x), b.max(*x)));
        let mib = |v: &Value| f(v) / f64::from(1u32 << 20);
        writeln!(
            md,
            "| `{}` | {} | {} ({}–{}) | {} | {:.2} | **{}** | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}% | {:.1} → {:.1} MiB ({:.1} MiB) | {} |",
            label(r),
            fmt_int(f(&r["offered_lines_per_sec"])),
            fmt_int(f(&r["ingested_lines_per_sec"])),
            fmt_int(mn),
            fmt_int(mx),
            fmt_int(f(&r["backlog_at_window_end"])),
            f(&r["aggregator_cores"]),
            fmt_int(f(&r["ingest_lines_per_core"])),
            f(&r["sidecars_cores"]),
            f(&r["bench_cores"]),
            f(&r["irq_softirq_cores"]),
            f(&r["others_cores"]),
            f(&r["machine_busy_share"]) * 100.0,
            mib(&r["aggregator_rss_start_bytes"]),
            mib(&r["aggregator_rss_end_bytes"]),
            mib(&r["aggregator_hwm_bytes"]),
            r["other_load"]["loadavg"]
                .as_str()
                .unwrap_or("?")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        )?;
    }
    writeln!(md)?;
    writeln!(md, "### Latency: write → client\n")?;
    writeln!(
        md,
        "| reorder window | clients | lines (received / expected) | p50 | p90 | p99 | p99.9 | max |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for r in &runs {
        let win = label(r);
        for g in r["groups"].as_array().into_iter().flatten() {
            let l = &g["latency"];
            writeln!(
                md,
                "| `{win}` | {} × {} | {} / {} | {} | {} | {} | {} | {} |",
                g["clients"],
                g["group"].as_str().unwrap_or("?"),
                fmt_int(f(&g["received_in_window"])),
                fmt_int(f(&g["expected_in_window"])),
                fmt_us(f(&l["p50_us"])),
                fmt_us(f(&l["p90_us"])),
                fmt_us(f(&l["p99_us"])),
                fmt_us(f(&l["p999_us"])),
                fmt_us(f(&l["max_us"])),
            )?;
        }
        let a = &r["latency_aggregator_clients"];
        writeln!(
            md,
            "| `{win}` | **all {} aggregator clients** | {} samples | {} | {} | {} | {} | {} |",
            r["clients"],
            fmt_int(f(&a["count"])),
            fmt_us(f(&a["p50_us"])),
            fmt_us(f(&a["p90_us"])),
            fmt_us(f(&a["p99_us"])),
            fmt_us(f(&a["p999_us"])),
            fmt_us(f(&a["max_us"])),
        )?;
        let d = &r["added_by_aggregator_percentile_difference"];
        writeln!(
            md,
            "| `{win}` | **added** (aggregator − direct, per percentile) | | {} | {} | {} | {} | |",
            fmt_us(f(&d["p50_us"])),
            fmt_us(f(&d["p90_us"])),
            fmt_us(f(&d["p99_us"])),
            fmt_us(f(&d["p999_us"])),
        )?;
        let p = &r["added_by_aggregator_paired_pod0"];
        writeln!(
            md,
            "| `{win}` | **added, paired** (same line: aggregator client − direct client; pod web-0) | {} pairs | {} | {} | {} | {} | {} |",
            fmt_int(f(&p["count"])),
            fmt_us(f(&p["p50_us"])),
            fmt_us(f(&p["p90_us"])),
            fmt_us(f(&p["p99_us"])),
            fmt_us(f(&p["p999_us"])),
            fmt_us(f(&p["max_us"])),
        )?;
    }
    writeln!(md)?;
    writeln!(md, "Losses and checks:\n")?;
    for r in &runs {
        let (mut got, mut exp) = (0.0, 0.0);
        for g in r["groups"].as_array().into_iter().flatten() {
            got += f(&g["received_in_window"]);
            exp += f(&g["expected_in_window"]);
        }
        let n = |v: &Value| fmt_int(v.as_f64().unwrap_or(0.0));
        writeln!(
            md,
            "- `{}`: clients lost {} of {} lines ({:.2} %) to {} slow-client `gap` notices (a notice's `missed` counts every \
             history record skipped, {} here, not only the ones the filter wanted); the aggregator missed {} records upstream \
             and reconnected {} times; {} clients closed by the server; {} lines did not match their client's filter; \
             the writer was more than 5 ms late on {} of {} ticks (max {}).",
            label(r),
            fmt_int(exp - got),
            fmt_int(exp),
            if exp > 0.0 {
                (exp - got) * 100.0 / exp
            } else {
                0.0
            },
            r["gap_notices"],
            n(&r["gap_missed_records"]),
            n(&r["aggregator_metrics_after"]["upstream_gap_records"]),
            n(&r["aggregator_metrics_after"]["upstream_reconnects"]),
            r["clients_closed_by_server"],
            r["filter_mismatches"],
            r["writer"]["ticks_late_over_5ms"],
            r["writer"]["ticks"],
            fmt_us(f(&r["writer"]["max_tick_late_us"])),
        )?;
    }
    writeln!(
        md,
        "\nCommands (each writes `bench/results/fanin-WINDOW.json`):\n"
    )?;
    for r in &runs {
        writeln!(md, "- `{}`", r["command"].as_str().unwrap_or("?"))?;
        writeln!(
            md,
            "  - aggregator: `{}`",
            r["aggregator_command_short"].as_str().unwrap_or("?")
        )?;
    }
    if let Some(s) = r0["sidecar_command"].as_str() {
        writeln!(md, "- sidecar (×{}, pod `web-K`): `{s}`", r0["sidecars"])?;
    }
    writeln!(md, "\n{FINDINGS}")?;
    Ok(md)
}

/// Hand-written interpretation, kept with the tool that renders the section
/// (RESULTS.md is generated): check it against the tables when the numbers move.
const FINDINGS: &str = r#"### Findings (hand-written, 2026-11-25, code 0b17c88)

Written from the tables above and from extra runs of the same tool on the same machine (their commands are below; "nodelay" is a
copy of the same code with one change, `set_nodelay(true)` on accepted sockets, built to `/tmp/lsx-target`; it is not in the tree).
On the 2-core machine the whole setup needs ~1.5 cores by itself (aggregator 0.9, 50 sidecars 0.55, tool 0.15), so the
latency figures include CPU contention between our own processes; other processes took 0.00 cores in both table rows.

- **Ingest alone meets 200k lines/s per core; the fan-out to 100 filtered clients does not.** Without clients
  (`ls-fanin --reorder-window 0s --clients 0 --warmup-secs 5 --duration 15`) the aggregator spends 2.65 µs per line
  (377k lines per CPU-second, backlog ≈ 1k lines). With 10 / 40 / 100 clients (`--clients N`): 4.2 / 6.2 / 9.3 µs per
  line = 240k / 162k / 108k lines per CPU-second. Every session looks at every published record, about 65 ns per record
  per session. CPU per line also depends on the load: a run where other processes took 0.5 core measured 7.1 µs per line,
  because a starved aggregator sends bigger batches.
- **Where the CPU goes** (`perf record -F 499 --call-graph dwarf -p AGG_PID -- sleep 10`, 100 clients, window `0s`):
  - WebSocket sessions take 55 %. `Session::pull` takes 25 %: the scan under the hub lock, with `Filter::matches` and
    its regex at 11 %. `frame::records_json` takes 19 %, of which 11 % is the lazy `Entry::json` serialisation.
  - The pullers take 30 %. Of that, `serde_json::from_str::<ServerMessage>` is 24 %: the internally tagged enum buffers
    every frame into serde `Content` and deserialises it twice, with about 6 `String`s per record.
  - `merge_loop` and `Hub::publish` take 13 %.
  - Spread across all of these: malloc/free about 25 % (self time), and kernel `futex` 15 % (the hub `Mutex` `lock_contended`,
    malloc arenas, `OnceLock`).
- **Latency runs away between 40 and 100 clients, before the CPU is saturated.**
  - With the nodelay build and window `0s`, the added latency (paired) at p50 / p99 is 2.8 / 6.8 ms with 10 clients,
    3.4 / 7.9 ms with 40, and 122 / 504 ms with 100.
  - At 100 clients the aggregator uses 0.92–0.95 cores (it has 2 worker threads) and the machine is 81–84 % busy.
    At the end of the window, the `0s` runs had an ingest backlog of 3.6k–31k lines (0.04–0.3 s), against ≤ 1.1k with
    ≤ 40 clients.
  - The serial resource is the hub `Mutex`. Every session holds it for its whole scan (`sidecar/src/session.rs:227-300`),
    `Hub::publish` takes it, and `session.cursor()` takes it again for every frame (`sidecar/src/server/ws.rs:189`).
    Tokio workers that block on it cannot run the pullers, so ingest falls behind.
  - The system sits at a tipping point. Over 4 runs of this code with 100 clients and window `0s`, p99 ranged from
    75 ms (an 8 s `QUICK=1` run) to 2.0 s (a run where other processes took 0.5 core).
- **Server sockets lack TCP_NODELAY.** `sidecar/src/run.rs:133` calls `axum::serve(listener, …)`, and axum 0.8 does not
  set NODELAY. A small frame sent while the previous one is unacknowledged waits for the peer's delayed ACK (≈ 40 ms).
  This happens on both hops, sidecar → aggregator and aggregator → client.
  - One sidecar at 2,000 lines/s with one client (`--sidecars 1 --clients 0`): p50 / p99 is 4.1 / 34.6 ms, and
    0.28 / 0.63 ms with nodelay.
  - Direct sidecar client in this scenario: 4.3 / 37.6 ms, and 1.0 / 5.8 ms with nodelay.
  - Aggregator, 10 clients: added p99 41 ms (paired), and 6.8 ms with nodelay.
  - It probably also explains the 1,000 lines/s tails in the latency section above (p99 24 ms).
- **The reorder window adds itself plus queueing.** With `200ms` the added p50 is 307 ms (paired), and 277 ms with
  nodelay. The ≤ 5 ms target needs `--reorder-window 0s` (or a window of a few ms), by design
  (`sidecar/src/aggregator/merge.rs:79`, default at `sidecar/src/main.rs:78`). *(2026-12-05: superseded — records
  are now released by the sidecars' watermarks, protocol 1.1; see "Speed round" in the hand-written analysis.)*
- **Memory.** RSS is 160–165 MiB with clients and 46 MiB without them. The history (`--buffer-lines` 100,000 by
  default, `sidecar/src/main.rs:145`) holds only 1 s at this rate, and each record's JSON is built lazily, the first time
  a client needs it.
- **Gap notices overstate what a filtered client lost.** `missed` counts every history record skipped
  (`sidecar/src/session.rs:265`). In the `200ms` row the clients lost 188 wanted lines, but the gap notices reported
  46,101.

What I would change, by expected gain:

1. Set NODELAY on accepted sockets with `axum::serve::ListenerExt::tap_io` (`sidecar/src/run.rs:131-133`). For the
   puller, use `connect_async_with_config(req, None, true)` (`sidecar/src/client.rs:83`).
2. Evaluate source filters once per source, not once per record. pod, container and file depend only on the source,
   so keep a per-slot verdict in the session and use a regex only when a source is new
   (`sidecar/src/filter.rs:95`, `sidecar/src/session.rs:282-300`).
3. Wake only the sessions whose verdict for the published sources is true, instead of `send_modify` waking every
   session on every publish (`sidecar/src/hub.rs:297`, `sidecar/src/server/ws.rs:237`).
4. Do not scan under the `Mutex`: clone the `Arc<Entry>` range under the lock, then filter outside it, or read through
   an `RwLock` or an append-only segment list (`sidecar/src/session.rs:227`).
5. Parse upstream frames without serde's buffering of tagged enums. Peek at `"type"` and deserialise a borrowed
   `Records` struct (`&str` line, ts and source). Keep one `Arc<SourceInfo>` per sid instead of `Source` strings per
   record (`sidecar/src/client.rs:101`, `sidecar/src/protocol.rs:366`, `sidecar/src/aggregator/puller.rs:60-80`).
6. Coalesce publishes in `merge_loop` (`sidecar/src/aggregator/mod.rs:185-206`). With window `0s` every upstream batch
   becomes a publish and a wake-up of every session. A 1 ms tick would cut the wake-ups without a visible delay.

Extra runs (all `target/release/ls-fanin … --reorder-window 0s --warmup-secs 5 --duration 15`, plus
`--server-bin /tmp/lsx-target/release/logstream` for nodelay): `--clients 0`; `--clients 10`; `--clients 40`; and
`--sidecars 1 --clients 0 --warmup-secs 2 --duration 6`. The nodelay 100-client runs used the table's commands with
`--server-bin`.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_back() {
        let l = "ERROR fanin p=007 s=0000000123 t=0000000001234567 xxxx";
        assert_eq!(parse_line(l), Some((ERROR, 7, 123, 1_234_567)));
        assert_eq!(parse_line("lat 1 2"), None);
    }

    #[test]
    fn levels_have_the_planned_shares() {
        let n = 10_000;
        let err = (0..n).filter(|s| level_of(*s) == ERROR).count();
        let warn = (0..n).filter(|s| level_of(*s) == WARN).count();
        assert_eq!((err, warn), (100, 400));
    }

    #[test]
    fn client_mix_and_filters() {
        let w = client_wants(100, 50);
        assert_eq!(w.iter().filter(|w| matches!(w, Want::Pod(_))).count(), 50);
        assert_eq!(w.iter().filter(|w| matches!(w, Want::Error)).count(), 25);
        assert_eq!(w[50].query(), "pod=web-%280%7C1%7C2%7C3%29&level=warn%2B");
        assert!(w[50].accepts(3, WARN) && !w[50].accepts(3, INFO) && !w[50].accepts(4, ERROR));
    }
}
