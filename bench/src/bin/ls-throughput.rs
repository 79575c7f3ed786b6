//! `ls-throughput`: how many lines per second the tailer gets into the hub.
//!
//! Writes `--lines` lines of `--line-bytes` into `--files` files as fast as
//! possible with large writes (`live`), or prepares them outside the watched
//! folder and renames them in at once (`rename`: the pure read side, no
//! writer competing for the CPU). Measures wall time until the server's
//! `logstream_lines_read_total` reaches the total, and until the tailer thread
//! went idle (its batch published into the hub), plus the server's CPU time
//! from `/proc/PID/stat` (whole process and the `tailer` thread).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use logstream::protocol::ServerMessage;
use logstream_bench as lb;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ls-throughput",
    about = "Measure tail throughput (lines/s and lines per CPU-second)"
)]
struct Args {
    /// Lines in total (spread evenly over the files).
    #[arg(long, default_value_t = 2_000_000)]
    lines: u64,
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// `live`: write while the server tails; `rename`: write elsewhere, rename in.
    #[arg(long, default_value = "live", value_parser = ["live", "rename"])]
    mode: String,
    /// Pace the writer at this many lines/s in total (0: as fast as
    /// possible). Below the tailer's capacity this measures CPU per line in
    /// steady state instead of one huge backlog.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Size of each write(2) of the writer.
    #[arg(long, default_value_t = 1 << 20)]
    chunk_bytes: usize,
    /// WebSocket clients following the stream (0: tail into the hub only).
    #[arg(long, default_value_t = 0)]
    clients: usize,
    /// Format the clients ask for.
    #[arg(long, default_value = "raw", value_parser = ["json", "raw"])]
    client_format: String,
    /// Give up after this long.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Period of `/metrics` polls.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// The `logstream` binary (default: next to this tool).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for `logstream serve` (repeat).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
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

fn file_name(i: usize) -> String {
    format!("tp-{i:02}.log")
}

fn lines_of(args: &Args, i: usize) -> u64 {
    lb::lines_of(args.lines, args.files, i)
}

/// Writes every file round-robin, one `chunk_bytes` write at a time; paced
/// at `rate` lines/s in 1 ms rounds when `rate` is set.
fn write_files(args: &Args, dir: &Path) -> Result<u64> {
    let paths: Vec<_> = (0..args.files).map(|i| dir.join(file_name(i))).collect();
    let bytes = lb::write_numbered(
        &paths,
        args.lines,
        args.rate,
        args.line_bytes,
        args.chunk_bytes,
    )?;
    Ok(bytes)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.files == 0 || args.lines == 0 {
        bail!("--files and --lines must be positive");
    }
    let scratch = lb::Scratch::new("throughput")?;
    let logs = scratch.logs();
    let mut staged_secs = None;
    match args.mode.as_str() {
        "live" => {
            for i in 0..args.files {
                std::fs::File::create(logs.join(file_name(i)))?;
            }
        }
        _ => {
            let t = Instant::now();
            write_files(&args, &scratch.stage())?;
            staged_secs = Some(t.elapsed().as_secs_f64());
        }
    }
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => lb::default_server_bin()?,
    };
    let mut server = lb::Server::spawn(
        &bin,
        &logs,
        &args.server_args,
        &scratch.root.join("server.stderr"),
    )?;
    let pid = server.pid.ok_or_else(|| anyhow!("no server pid"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;

    // Clients first, so they follow from the live head.
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for c in 0..args.clients {
        let path = format!("/ws?format={}", args.client_format);
        let mut ws = rt.block_on(lb::ws_connect(
            server.addr,
            Some(lb::source_ip(2 + c % 200)?),
            &path,
            None,
        ))?;
        match rt.block_on(ws.next()) {
            Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"hello""#) => {}
            other => bail!("expected hello, got {other:?}"),
        }
        let last: Vec<u64> = (0..args.files)
            .map(|i| lines_of(&args, i).saturating_sub(1))
            .collect();
        let raw = args.client_format == "raw";
        readers.push(rt.spawn(follow(ws, last, raw, done.clone())));
    }
    std::thread::sleep(Duration::from_millis(200));
    let quiet = lb::wait_quiet(Duration::from_secs(args.quiet_wait_secs), args.quiet_busy);
    let load = lb::OtherLoad::start(Some(pid));
    let read0 = server.metric("logstream_lines_read_total")?.unwrap_or(0.0) as u64;
    let cpu0 = lb::process_cpu(pid).unwrap_or_default();
    let tailer0 = lb::thread_cpu(pid, "tailer").unwrap_or_default();
    let t0 = Instant::now();
    let writer = match args.mode.as_str() {
        "live" => {
            let a = args.clone();
            let dir = logs.clone();
            Some(std::thread::spawn(move || -> Result<f64> {
                let t = Instant::now();
                write_files(&a, &dir)?;
                Ok(t.elapsed().as_secs_f64())
            }))
        }
        _ => {
            for i in 0..args.files {
                std::fs::rename(scratch.stage().join(file_name(i)), logs.join(file_name(i)))?;
            }
            None
        }
    };
    let goal = read0 + args.lines;
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let poll = Duration::from_millis(args.poll_ms.max(1));
    let mut read_secs = None;
    let mut last_read = read0;
    while Instant::now() < deadline {
        if !server.alive() {
            bail!(
                "the server died; stderr in {}",
                scratch.root.join("server.stderr").display()
            );
        }
        last_read = server.metric("logstream_lines_read_total")?.unwrap_or(0.0) as u64;
        if last_read >= goal {
            read_secs = Some(t0.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(poll);
    }
    let writer_secs = match writer {
        Some(w) => Some(w.join().map_err(|_| anyhow!("writer panicked"))??),
        None => None,
    };
    let Some(read_secs) = read_secs else {
        bail!(
            "timeout: lines_read_total reached {} of {}",
            last_read - read0,
            args.lines
        );
    };
    // The counter moves as lines are cut; the batch is published after. The
    // tailer thread going idle (CPU unchanged over 3 polls of 20 ms) marks
    // the end of the publish.
    let mut samples: Vec<(f64, Duration, Duration)> = Vec::new();
    let idle_deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let published = loop {
        let tl = lb::thread_cpu(pid, "tailer").unwrap_or_default();
        let pc = lb::process_cpu(pid).unwrap_or_default();
        samples.push((t0.elapsed().as_secs_f64(), tl, pc));
        let n = samples.len();
        if n >= 3 && samples[n - 1].1 == samples[n - 3].1 {
            break samples[n - 3];
        }
        if Instant::now() > idle_deadline {
            bail!("the tailer never went idle");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (published_secs, tailer1, cpu1) = published;
    let published_secs = published_secs.max(read_secs);
    let server_cpu = (cpu1.saturating_sub(cpu0)).as_secs_f64();
    let tailer_cpu = (tailer1.saturating_sub(tailer0)).as_secs_f64();
    let hwm = server.hwm();
    let load = load.finish(Some(pid));
    // Clients: wait for the last line of every file.
    let client_deadline = Instant::now() + Duration::from_secs(20);
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < client_deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    done.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    for r in readers {
        let (mut c, finished) = rt.block_on(r)??;
        c["secs"] = json!(finished.map(|f| f.duration_since(t0).as_secs_f64()));
        clients.push(c);
    }
    let client_secs_max = clients
        .iter()
        .filter_map(|c| c["secs"].as_f64())
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let n = args.lines as f64;
    let result = json!({
        "tool": "ls-throughput",
        "command": lb::command_line(),
        "server_command": server.command,
        "machine": lb::machine(),
        "mode": args.mode,
        "rate": args.rate,
        "files": args.files,
        "lines": args.lines,
        "line_bytes": args.line_bytes,
        "staged_secs": staged_secs,
        "writer_secs": writer_secs,
        "read_secs": read_secs,
        "published_secs": published_secs,
        "lines_per_sec_read": n / read_secs,
        "lines_per_sec_published": n / published_secs,
        "server_cpu_secs": server_cpu,
        "tailer_cpu_secs": tailer_cpu,
        "lines_per_server_cpu_sec": if server_cpu > 0.0 { Some(n / server_cpu) } else { None },
        "lines_per_tailer_cpu_sec": if tailer_cpu > 0.0 { Some(n / tailer_cpu) } else { None },
        "server_peak_rss_bytes": hwm,
        "quiet_wait": quiet,
        "other_load": load,
        "clients": clients,
        "client_secs_max": client_secs_max,
        "lines_per_sec_to_clients": client_secs_max.map(|s| n / s),
    });
    eprintln!(
        "ls-throughput: {} lines in {} files ({}): read {:.3} s ({:.0} lines/s), published {:.3} s, server CPU {:.3} s ({:.0} lines/CPU-s), peak RSS {} MiB",
        args.lines,
        args.files,
        args.mode,
        read_secs,
        n / read_secs,
        published_secs,
        server_cpu,
        n / server_cpu.max(1e-9),
        hwm.unwrap_or(0) >> 20
    );
    lb::emit_result(args.json_out.as_deref(), &result)
}

/// Follows the stream until the last line of every file was seen (or `done`):
/// counts records and records skipped by gap notices.
async fn follow(
    mut ws: lb::Ws,
    last: Vec<u64>,
    raw: bool,
    done: Arc<AtomicBool>,
) -> Result<(serde_json::Value, Option<Instant>)> {
    let mut seen_last = vec![false; last.len()];
    let mut records = 0u64;
    let mut missed = 0u64;
    let mut frames = 0u64;
    let mut finished = None;
    let check = |line: &str, seen: &mut [bool]| {
        let file = field(line, "file=");
        let seq = field(line, "seq=");
        if let (Some(f), Some(s)) = (file, seq)
            && let Some(l) = last.get(f as usize)
            && s == *l
            && let Some(x) = seen.get_mut(f as usize)
        {
            *x = true;
        }
    };
    while !done.load(Ordering::Relaxed) {
        let msg = match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(m)) => m?,
        };
        let Message::Text(t) = msg else { continue };
        frames += 1;
        if raw {
            for l in t.as_str().split('\n') {
                if let Some(rest) = l.strip_prefix("# logstream: ") {
                    if let Ok(ServerMessage::Gap { missed: m, .. }) =
                        serde_json::from_str::<ServerMessage>(rest)
                    {
                        missed += m;
                    }
                } else {
                    records += 1;
                    check(l, &mut seen_last);
                }
            }
        } else {
            match serde_json::from_str::<ServerMessage>(t.as_str())? {
                ServerMessage::Records { records: rs, .. } => {
                    for r in rs {
                        records += 1;
                        check(&r.line, &mut seen_last);
                    }
                }
                ServerMessage::Gap { missed: m, .. } => missed += m,
                _ => {}
            }
        }
        if seen_last.iter().all(|s| *s) {
            finished = Some(Instant::now());
            break;
        }
    }
    Ok((
        json!({"records": records, "missed_in_gaps": missed, "frames": frames}),
        finished,
    ))
}

fn field(line: &str, key: &str) -> Option<u64> {
    let i = line.find(key)? + key.len();
    let rest = &line[i..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
