//! `ls-idle`: opens idle stream connections (WebSocket `/ws` by default;
//! `--target` for SSE and the baselines of `bench/baselines/`) in steps, from
//! several loopback source addresses and several worker processes, and at
//! each step measures the server's resident memory (VmRSS) and the kernel's
//! socket memory. Fits bytes per connection by linear regression. For a
//! server that starts processes per client (the `tailf` baseline), the
//! children's proportional set size is added (`server_mem_bytes`).
//!
//! The coordinator (this process) starts the server (or attaches to one),
//! starts `--procs` workers (this binary with `--worker`) and tells each how
//! many connections to hold through its stdin; a worker answers
//! `open N failed F ms T` once it holds N connections that got their `hello`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use logstream_bench as lb;
use logstream_bench::proto::{self, Target};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

#[derive(Parser, Debug)]
#[command(
    name = "ls-idle",
    about = "Hold idle WebSocket connections and measure server memory per connection"
)]
struct Args {
    /// Connection counts to measure at, increasing (0: before any connection).
    #[arg(long, value_delimiter = ',', default_value = "0,1000,2000,5000,10000")]
    steps: Vec<usize>,
    /// Client processes (each holds < 20k sockets: the per-process fd limit).
    #[arg(long, default_value_t = 2)]
    procs: usize,
    /// Source addresses per process: 127.0.0.2, 127.0.0.3, ...
    #[arg(long, default_value_t = 4)]
    ips_per_proc: usize,
    /// Connection attempts in flight per process.
    #[arg(long, default_value_t = 48)]
    concurrency: usize,
    /// Wait after a step is reached before reading memory.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Keep the connections open this long after the last step.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
    /// Server design under test.
    #[arg(long, value_enum, default_value = "ours-ws")]
    target: Target,
    /// Clients offer permessage-deflate (WebSocket targets).
    #[arg(long)]
    deflate: bool,
    /// Path and query of the stream (default: the target's stream).
    #[arg(long)]
    path: Option<String>,
    /// Start the server with this command instead (`{dir}` = the folder).
    #[arg(long)]
    server_cmd: Option<String>,
    /// Pin the server to this CPU (`taskset -c`).
    #[arg(long)]
    server_cpu: Option<usize>,
    /// Attach to a running server instead of starting one (loopback only).
    #[arg(long)]
    addr: Option<String>,
    /// Pid of the attached server (for memory readings).
    #[arg(long)]
    pid: Option<u32>,
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
    /// Internal: run as a worker process.
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal: last octet of the worker's first source address.
    #[arg(long, hide = true, default_value_t = 2)]
    ip_base: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.worker {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return rt.block_on(worker(args));
    }
    coordinator(args)
}

// ---------------------------------------------------------------- worker

async fn worker(args: Args) -> Result<()> {
    let addr: SocketAddr = args
        .addr
        .as_deref()
        .ok_or_else(|| anyhow!("worker needs --addr"))?
        .parse()?;
    let ips = (0..args.ips_per_proc.max(1))
        .map(|i| lb::source_ip(args.ip_base + i))
        .collect::<Result<Vec<_>>>()?;
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let mut held: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut failed = 0usize;
    let mut next_ip = 0usize;
    let mut first_errors = 0;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let target: usize = line
            .trim()
            .parse()
            .with_context(|| format!("bad target {line:?}"))?;
        let start = Instant::now();
        if target < held.len() {
            for h in held.drain(target..) {
                h.abort();
            }
        }
        // A few rounds, so a transient refusal (SYN backlog) does not stop the step.
        for _round in 0..3 {
            let need = target.saturating_sub(held.len());
            if need == 0 {
                break;
            }
            let path = stream_path(&args);
            let results: Vec<Result<tokio::task::JoinHandle<()>>> = futures::stream::iter(0..need)
                .map(|i| {
                    let ip = ips[(next_ip + i) % ips.len()];
                    proto::open_idle(
                        args.target,
                        addr,
                        ip,
                        path.clone(),
                        Some(closed_by_server.clone()),
                        args.deflate,
                    )
                })
                .buffer_unordered(args.concurrency.max(1))
                .collect()
                .await;
            next_ip += need;
            for r in results {
                match r {
                    Ok(h) => held.push(h),
                    Err(e) => {
                        failed += 1;
                        if first_errors < 5 {
                            first_errors += 1;
                            eprintln!("ls-idle worker: connect failed: {e:#}");
                        }
                    }
                }
            }
        }
        println!(
            "open {} failed {} ms {} closed {}",
            held.len(),
            failed,
            start.elapsed().as_millis(),
            closed_by_server.load(Ordering::Relaxed)
        );
        std::io::stdout().flush()?;
    }
    for h in held {
        h.abort();
    }
    Ok(())
}

fn stream_path(args: &Args) -> String {
    args.path
        .clone()
        .unwrap_or_else(|| args.target.stream_path(None, true))
}

// ---------------------------------------------------------------- coordinator

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

struct WorkerReport {
    open: usize,
    failed: usize,
    closed: usize,
}

impl Worker {
    fn set(&mut self, target: usize) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("worker stdin closed"))?;
        writeln!(stdin, "{target}")?;
        stdin.flush()?;
        Ok(())
    }

    fn report(&mut self) -> Result<WorkerReport> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("worker {} exited", self.child.id());
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |k: &str| -> Result<usize> {
            let i = f
                .iter()
                .position(|x| *x == k)
                .ok_or_else(|| anyhow!("bad worker line {line:?}"))?;
            f.get(i + 1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("bad worker line {line:?}"))
        };
        Ok(WorkerReport {
            open: num("open")?,
            failed: num("failed")?,
            closed: num("closed")?,
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coordinator(args: Args) -> Result<()> {
    let mut steps = args.steps.clone();
    steps.sort_unstable();
    steps.dedup();
    let max = steps.last().copied().unwrap_or(0);
    let procs = args.procs.max(1);
    if max / procs > 18_000 {
        bail!(
            "{} connections per process exceed the 20k fd limit: raise --procs",
            max / procs
        );
    }
    if 2 + procs * args.ips_per_proc > 254 {
        bail!("too many source addresses");
    }
    let scratch = lb::Scratch::new("idle")?;
    let server = match &args.addr {
        Some(a) => lb::Server::attach(a, args.pid)?,
        None => proto::spawn_server(&proto::ServerSpec {
            target: args.target,
            dir: &scratch.logs(),
            server_cmd: args.server_cmd.as_deref(),
            server_bin: args.server_bin.as_deref(),
            extra: &args.server_args,
            cpu: args.server_cpu,
            stderr_to: &scratch.root.join("server.stderr"),
        })?,
    };
    // The tailf baseline follows the files present when a client arrives.
    std::fs::write(scratch.logs().join("idle.log"), b"")?;
    eprintln!("ls-idle: server {} pid {:?}", server.addr, server.pid);
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for i in 0..procs {
        let mut child = Command::new(&exe)
            .args([
                "--worker",
                "--addr",
                &server.addr.to_string(),
                "--path",
                &stream_path(&args),
                "--target",
                args.target.name(),
            ])
            .args(["--ips-per-proc", &args.ips_per_proc.to_string()])
            .args(["--ip-base", &(2 + i * args.ips_per_proc).to_string()])
            .args(["--concurrency", &args.concurrency.to_string()])
            .args(args.deflate.then_some("--deflate"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start worker")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker stdout"))?,
        );
        workers.push(Worker {
            child,
            stdin,
            stdout,
        });
    }
    // One request first, so lazily built server state is not counted per connection.
    if args.target.is_ours() {
        let _ = server.metric("logstream_clients");
    }
    std::thread::sleep(Duration::from_millis(args.settle_ms.min(1000)));
    let quiet = lb::wait_quiet(Duration::from_secs(args.quiet_wait_secs), args.quiet_busy);
    let load = lb::OtherLoad::start(server.pid);
    let workers_cpu = |ws: &[Worker]| -> f64 {
        ws.iter()
            .filter_map(|w| lb::process_cpu(w.child.id()))
            .map(|d| d.as_secs_f64())
            .sum()
    };
    let workers_cpu0 = workers_cpu(&workers);
    let mut points = Vec::new();
    let mut total_failed = 0;
    for &target in &steps {
        let started = Instant::now();
        let share = |i: usize| target / procs + usize::from(i < target % procs);
        for (i, w) in workers.iter_mut().enumerate() {
            w.set(share(i))?;
        }
        let mut open = 0;
        let mut failed = 0;
        let mut closed = 0;
        for w in workers.iter_mut() {
            let r = w.report()?;
            open += r.open;
            failed += r.failed;
            closed += r.closed;
        }
        let open_secs = started.elapsed().as_secs_f64();
        total_failed = failed;
        // Wait for the server's own count to agree (closed connections are gone).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut server_count = None;
        while let Some(label) = args.target.transport_label()
            && Instant::now() < deadline
        {
            server_count = server.metric(&format!("logstream_clients{{transport=\"{label}\"}}"))?;
            if server_count.unwrap_or(0.0) as usize == open {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        let client_rss: u64 = workers
            .iter()
            .filter_map(|w| lb::status_bytes(w.child.id(), "VmRSS"))
            .sum();
        let (tcp_inuse, tcp_mem) = lb::sockstat_tcp().unwrap_or((0, 0));
        let p = json!({
            "target": target,
            "conns": open,
            "server_count": server_count,
            "failed_total": failed,
            "closed_by_server": closed,
            "open_secs": open_secs,
            "server_rss_bytes": server.rss(),
            "server_mem_bytes": server.pid.and_then(proto::tree_memory),
            "server_hwm_bytes": server.hwm(),
            "client_rss_bytes": client_rss,
            "kernel_slab_bytes": lb::kernel_slab(),
            "kernel_socket_slab_bytes": lb::socket_slab_bytes(),
            "sockstat_tcp_inuse": tcp_inuse,
            "sockstat_tcp_mem_bytes": tcp_mem,
        });
        eprintln!("ls-idle: {p}");
        points.push(p);
    }
    if args.hold_secs > 0 {
        eprintln!("ls-idle: holding {} s", args.hold_secs);
        std::thread::sleep(Duration::from_secs(args.hold_secs));
    }
    let mut load = load.finish(server.pid);
    // The client workers are part of the measurement, not other load.
    let spent = (workers_cpu(&workers) - workers_cpu0).max(0.0);
    if let (Some(other), Some(share)) = (
        load["other_cpu_secs"].as_f64(),
        load["other_busy_share"].as_f64(),
    ) && other > 0.0
    {
        let left = (other - spent).max(0.0);
        load["other_cpu_secs"] = json!(left);
        load["other_busy_share"] = json!(share * left / other);
        load["client_workers_cpu_secs"] = json!(spent);
    }
    drop(workers);

    let fit = |key: &str, from: usize| {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p["conns"].as_u64().unwrap_or(0) as usize >= from)
            .filter_map(|p| Some((p["conns"].as_f64()?, p[key].as_f64()?)))
            .collect();
        lb::linear_regression(&pts).map(|(s, i, r2)| json!({"bytes_per_conn": s, "intercept_bytes": i, "r2": r2, "points": pts.len()}))
    };
    let second = steps.iter().copied().find(|s| *s > 0).unwrap_or(0);
    let result = json!({
        "tool": "ls-idle",
        "target": args.target.name(),
        "path": stream_path(&args),
        "deflate_offered": args.deflate,
        "command": lb::command_line(),
        "server_command": server.command,
        "machine": lb::machine(),
        "procs": procs,
        "source_ips": procs * args.ips_per_proc,
        "points": points,
        "server_rss_fit": fit("server_rss_bytes", 0),
        "server_rss_fit_from_first_step": fit("server_rss_bytes", second),
        "server_mem_fit_from_first_step": fit("server_mem_bytes", second),
        "client_rss_fit": fit("client_rss_bytes", 0),
        "kernel_slab_fit": fit("kernel_slab_bytes", 0),
        "kernel_socket_slab_fit": fit("kernel_socket_slab_bytes", 0),
        "sockstat_mem_fit": fit("sockstat_tcp_mem_bytes", 0),
        "failed": total_failed,
        "quiet_wait": quiet,
        "other_load": load,
    });
    lb::emit_result(args.json_out.as_deref(), &result)?;
    if total_failed > 0 {
        eprintln!("ls-idle: {total_failed} connection attempts failed");
    }
    Ok(())
}
