//! `ls-fanout`: lines delivered per second to N clients, for logstream and
//! for the baselines (`--target`). The tool starts the target's server on a
//! fresh folder, connects `--clients` clients that follow every file, then a
//! writer thread appends `--lines` lines to `--files` files (large buffered
//! writes, or paced with `--rate`). Each client counts the lines it receives
//! and is done when it saw the last line of every file. Measured: time until
//! every client is done, lines delivered per second (all clients), and the
//! CPU of the server process and its children (`tail` for the `tailf`
//! baseline) over the same interval, so with one client it is also the
//! ingest cost per line (`lines per server CPU-second`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use logstream_bench as lb;
use logstream_bench::proto::{self, Target};
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ls-fanout",
    about = "Lines delivered per second to N clients, for logstream and the baselines"
)]
struct Args {
    /// Server design under test.
    #[arg(long, value_enum, default_value = "ours-ws")]
    target: Target,
    /// Clients following every file.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Lines written in total (spread over the files); every client should get all.
    #[arg(long, default_value_t = 200_000)]
    lines: u64,
    #[arg(long, default_value_t = 1)]
    files: usize,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Pace the writer at this many lines/s in total (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Write the demo writer's mix of lines (JSON, logfmt, plain; ~100
    /// bytes) instead of padded ones (`--line-bytes` is then ignored).
    #[arg(long)]
    demo_mix: bool,
    /// Clients offer permessage-deflate (WebSocket targets); the wire bytes
    /// they read are counted either way.
    #[arg(long)]
    deflate: bool,
    /// Size of each write(2) of the writer.
    #[arg(long, default_value_t = 1 << 20)]
    chunk_bytes: usize,
    /// Source addresses 127.0.0.2 … for the clients.
    #[arg(long, default_value_t = 8)]
    ips: usize,
    /// Give up this long after the first write.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Start the server with this command instead (`{dir}` = the folder).
    #[arg(long)]
    server_cmd: Option<String>,
    /// The `logstream` binary (default: next to this tool).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for `logstream serve` (repeat; ours only).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Pin the server to this CPU (`taskset -c`).
    #[arg(long)]
    server_cpu: Option<usize>,
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
    format!("fo-{i:02}.log")
}

fn lines_of(args: &Args, i: usize) -> u64 {
    lb::lines_of(args.lines, args.files, i)
}

/// Writes every file round-robin, one `chunk_bytes` write at a time; paced
/// at `rate` lines/s in 1 ms rounds when `rate` is set.
fn write_files(args: &Args, dir: &Path) -> Result<()> {
    let paths: Vec<_> = (0..args.files).map(|i| dir.join(file_name(i))).collect();
    lb::write_numbered_mix(
        &paths,
        args.lines,
        args.rate,
        args.line_bytes,
        args.chunk_bytes,
        args.demo_mix,
    )
    .map(|_bytes| ())
}

fn field(line: &str, key: &str) -> Option<u64> {
    let i = line.find(key)? + key.len();
    let rest = &line[i..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct Shared {
    /// The clock of `last_recv_ns`.
    base: Instant,
    /// When any client last received a line (ns since `base`).
    last_recv_ns: AtomicU64,
    received: AtomicU64,
    done_clients: AtomicUsize,
    stop: AtomicBool,
}

/// Follows until the last line of every file was seen (or `stop`):
/// (lines received, gap notices, finish time).
async fn follow(
    mut c: proto::Client,
    last: Vec<u64>,
    shared: Arc<Shared>,
) -> Result<(u64, u64, Option<Instant>)> {
    let mut seen = vec![false; last.len()];
    let mut left = last.len();
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) && left > 0 {
        let before = n;
        let more = match tokio::time::timeout(
            Duration::from_millis(200),
            c.next(&mut |l, _| {
                n += 1;
                if let (Some(f), Some(s)) = (field(l, "file="), field(l, "seq="))
                    && last.get(f as usize) == Some(&s)
                    && let Some(x) = seen.get_mut(f as usize)
                    && !*x
                {
                    *x = true;
                    left -= 1;
                }
            }),
        )
        .await
        {
            Err(_) => true,
            Ok(r) => r?,
        };
        if n > before {
            shared
                .last_recv_ns
                .fetch_max(shared.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        if !more {
            break;
        }
    }
    shared.received.fetch_add(n, Ordering::Relaxed);
    let finished = (left == 0).then(Instant::now);
    if finished.is_some() {
        shared.done_clients.fetch_add(1, Ordering::Relaxed);
    }
    // Keep reading (answering pings) until told to stop, so a finished
    // client does not look like a stalled one to the server.
    while !shared.stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), c.next(&mut |_, _| {})).await {
            Ok(Ok(true)) | Err(_) => {}
            _ => break,
        }
    }
    Ok((n, c.gaps, finished))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.files == 0 || args.lines == 0 || args.clients == 0 {
        bail!("--files, --lines and --clients must be positive");
    }
    if args.clients > 18_000 {
        bail!("--clients above 18,000 exceed the per-process fd limit");
    }
    let scratch = lb::Scratch::new("fanout")?;
    let logs = scratch.logs();
    for i in 0..args.files {
        std::fs::File::create(logs.join(file_name(i)))?;
    }
    let server = proto::spawn_server(&proto::ServerSpec {
        target: args.target,
        dir: &logs,
        server_cmd: args.server_cmd.as_deref(),
        server_bin: args.server_bin.as_deref(),
        extra: &args.server_args,
        cpu: args.server_cpu,
        stderr_to: &scratch.root.join("server.stderr"),
    })?;
    let pid = server.pid.ok_or_else(|| anyhow!("no server pid"))?;
    eprintln!(
        "ls-fanout: {} server {} pid {pid}",
        args.target.name(),
        server.addr
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        last_recv_ns: AtomicU64::new(0),
        received: AtomicU64::new(0),
        done_clients: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let last: Vec<u64> = (0..args.files)
        .map(|i| lines_of(&args, i).saturating_sub(1))
        .collect();
    let path = args.target.stream_path(None, false);
    let t_conn = Instant::now();
    let opened: Vec<(proto::Client, Option<String>)> = rt.block_on(async {
        let opened: Vec<Result<(proto::Client, Option<String>)>> =
            futures::stream::iter(0..args.clients)
                .map(|i| {
                    let path = path.clone();
                    let addr = server.addr;
                    let ips = args.ips.clamp(1, 200);
                    async move {
                        proto::Client::connect_with(
                            args.target,
                            addr,
                            Some(lb::source_ip(2 + i % ips)?),
                            &path,
                            args.clients > 100,
                            args.deflate,
                        )
                        .await
                    }
                })
                .buffer_unordered(64)
                .collect()
                .await;
        opened.into_iter().collect::<Result<Vec<_>>>()
    })?;
    // Every client got the same answer, or the run says which differ.
    let mut answers: Vec<Option<String>> = opened.iter().map(|(_, a)| a.clone()).collect();
    answers.dedup();
    let clients: Vec<proto::Client> = opened.into_iter().map(|(c, _)| c).collect();
    let connect_secs = t_conn.elapsed().as_secs_f64();
    eprintln!(
        "ls-fanout: {} clients connected in {connect_secs:.2} s",
        clients.len()
    );
    let mut readers = Vec::new();
    for c in clients {
        readers.push(rt.spawn(follow(c, last.clone(), shared.clone())));
    }
    // Let the server register the subscribers (the tailf baseline starts a `tail` each).
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    // The clients keep being polled (pings) while the machine calms down.
    let (qw, qb) = (args.quiet_wait_secs, args.quiet_busy);
    let quiet = rt.block_on(async {
        tokio::task::spawn_blocking(move || lb::wait_quiet(Duration::from_secs(qw), qb)).await
    })?;
    let load = lb::OtherLoad::start(Some(pid));
    let wire0 = lb::WIRE_BYTES.load(Ordering::Relaxed);
    let cpu0 = proto::tree_cpu(pid).unwrap_or_default();
    let t0 = Instant::now();
    let writer = {
        let a = args.clone();
        let dir = logs.clone();
        std::thread::spawn(move || -> Result<f64> {
            let t = Instant::now();
            write_files(&a, &dir)?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    let mut peak_mem = 0u64;
    // A client moved past a file's last line by a `gap` never sees it: once
    // the writer is done and nothing arrived for QUIESCE, the run is over.
    const QUIESCE: Duration = Duration::from_secs(2);
    let t0_ns = t0.duration_since(shared.base).as_nanos() as u64;
    let mut quiesced = false;
    rt.block_on(async {
        while Instant::now() < deadline
            && shared.done_clients.load(Ordering::Relaxed) < args.clients
        {
            if readers.iter().all(|r| r.is_finished()) {
                break;
            }
            let last = shared.last_recv_ns.load(Ordering::Relaxed).max(t0_ns);
            if writer.is_finished()
                && shared.base.elapsed().as_nanos() as u64 > last + QUIESCE.as_nanos() as u64
            {
                quiesced = true;
                break;
            }
            peak_mem = peak_mem.max(proto::tree_memory(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = proto::tree_cpu(pid).unwrap_or_default();
    let wire = lb::WIRE_BYTES.load(Ordering::Relaxed).saturating_sub(wire0);
    // Ours counts what it tailed, whether or not a slow client got it all.
    let ingested = if args.target.is_ours() {
        server
            .metric("logstream_lines_read_total")
            .ok()
            .flatten()
            .map(|x| x as u64)
    } else {
        None
    };
    // Ours: how often a batch was found compressed already.
    let server_metric = |name: &str| -> Option<f64> {
        if args.target.is_ours() {
            server.metric(name).ok().flatten()
        } else {
            None
        }
    };
    let compress = json!({
        "hit": server_metric("logstream_compressions_total{result=\"hit\"}"),
        "miss": server_metric("logstream_compressions_total{result=\"miss\"}"),
        "input_bytes": server_metric("logstream_compress_input_bytes_total{transport=\"ws\"}"),
        "output_bytes": server_metric("logstream_compress_output_bytes_total{transport=\"ws\"}"),
    });
    let load = load.finish(Some(pid));
    let writer_secs = writer.join().map_err(|_| anyhow!("writer panicked"))??;
    shared.stop.store(true, Ordering::Relaxed);
    let mut finish = Vec::new();
    let mut gaps = 0u64;
    let mut errors = Vec::new();
    for r in readers {
        match rt.block_on(r)? {
            Ok((_, g, f)) => {
                gaps += g;
                if let Some(f) = f {
                    finish.push(f.duration_since(t0).as_secs_f64());
                }
            }
            Err(e) => {
                if errors.len() < 3 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    let all_done = finish.len() == args.clients;
    let last_recv_secs = shared
        .last_recv_ns
        .load(Ordering::Relaxed)
        .saturating_sub(t0_ns) as f64
        / 1e9;
    let secs = if all_done {
        finish.iter().copied().fold(0.0, f64::max)
    } else if quiesced {
        last_recv_secs
    } else {
        elapsed
    };
    let received = shared.received.load(Ordering::Relaxed);
    let expected = args.lines * args.clients as u64;
    let server_cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    let result = json!({
        "tool": "ls-fanout",
        "command": lb::command_line(),
        "server_command": server.command,
        "target": args.target.name(),
        "machine": lb::machine(),
        "clients": args.clients,
        "files": args.files,
        "lines": args.lines,
        "line_bytes": if args.demo_mix { None } else { Some(args.line_bytes) },
        "demo_mix": args.demo_mix,
        "deflate_offered": args.deflate,
        "extensions": answers,
        "wire_bytes": wire,
        "compressions": compress,
        "wire_bytes_per_line": if received > 0 { Some(wire as f64 / received as f64) } else { None },
        "rate": args.rate,
        "connect_secs": connect_secs,
        "writer_secs": writer_secs,
        "secs": secs,
        "all_done": all_done,
        "quiesced": quiesced,
        "clients_done": finish.len(),
        "delivered": received,
        "expected": expected,
        "gap_notices": gaps,
        "client_errors": errors,
        "delivered_per_sec": received as f64 / secs.max(1e-9),
        "lines_per_sec": args.lines as f64 * (received as f64 / expected as f64) / secs.max(1e-9),
        "server_cpu_secs": server_cpu,
        "delivered_per_server_cpu_sec": if server_cpu > 0.0 { Some(received as f64 / server_cpu) } else { None },
        "lines_per_server_cpu_sec": if server_cpu > 0.0 { Some(args.lines as f64 * (received as f64 / expected as f64) / server_cpu) } else { None },
        "server_peak_mem_bytes": peak_mem,
        "lines_ingested": ingested,
        "ingested_per_server_cpu_sec": ingested.filter(|_| server_cpu > 0.0).map(|n| n as f64 / server_cpu),
        "server_cpu_pin": args.server_cpu,
        "quiet_wait": quiet,
        "other_load": load,
    });
    eprintln!(
        "ls-fanout: {} × {} clients: {received} of {expected} lines in {secs:.3} s ({:.0} delivered/s), server CPU {server_cpu:.3} s",
        args.target.name(),
        args.clients,
        received as f64 / secs.max(1e-9)
    );
    drop(server);
    lb::emit_result(args.json_out.as_deref(), &result)
}
