//! `ls-k6`: cross-checks our own Rust load client against k6, a third-party
//! load tool, on the same server in the same invocation.
//!
//! - `--scenario latency`: one writer appends `lat` lines (write time inside)
//!   to a watched file; our Rust client(s) and k6's VU(s) are subscribed at
//!   the same time and each records receive time − write time. Same lines,
//!   same server, same moment: the ratio k6 / ours is the clients' difference.
//! - `--scenario connect`: N WebSocket connections opened and held, by our
//!   client on one fresh server and by k6 on another; connect + handshake
//!   time per connection and server RSS with all N open.
//!
//! Each `--target` (ours, or a baseline command) is measured in turn.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::StreamExt;
use logstream_bench as lb;
use logstream_bench::targets::{Target, TargetSpec, write_and_read_lat};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "ls-k6",
    about = "Cross-check our Rust WebSocket load client against k6 (latency, connection scale)"
)]
struct Args {
    /// `latency` or `connect`.
    #[arg(long, value_parser = ["latency", "connect"])]
    scenario: String,
    /// `ours`, or `NAME=COMMAND` for a baseline (`{dir}`, `{port}` are
    /// replaced); repeat to measure several in one invocation.
    #[arg(long = "target", default_value = "ours")]
    targets: Vec<String>,
    /// WebSocket path on our server.
    #[arg(long, default_value = "/ws?format=raw")]
    ours_path: String,
    /// WebSocket path on a baseline.
    #[arg(long, default_value = "/")]
    baseline_path: String,
    /// Lines per second (latency).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of writing (latency).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Our Rust clients (latency).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// k6 VUs, one WebSocket each (latency).
    #[arg(long, default_value_t = 1)]
    k6_clients: usize,
    /// Connections to hold (connect).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Handshakes in flight at once, for both clients (connect).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// The k6 binary (default: what `bench/k6/install.sh` installs).
    #[arg(long)]
    k6_bin: Option<PathBuf>,
    /// Folder of the k6 scripts.
    #[arg(long, default_value = "bench/k6")]
    k6_dir: PathBuf,
    /// The `logstream` binary (default: next to this tool).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra argument for `logstream serve` (repeat).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Before each measurement, wait up to this long for the machine to be quiet.
    #[arg(long, default_value_t = 60)]
    quiet_wait_secs: u64,
    #[arg(long, default_value_t = 0.15)]
    quiet_busy: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

const FILE: &str = "latency.log";

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rate <= 0.0 || args.duration <= 0.0 || args.conns == 0 || args.concurrency == 0 {
        bail!("--rate, --duration, --conns and --concurrency must be positive");
    }
    let k6 = match &args.k6_bin {
        Some(b) => b.clone(),
        None => install_k6()?,
    };
    let k6_version = Command::new(&k6)
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .with_context(|| format!("run {}", k6.display()))?;
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => lb::default_server_bin()?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for t in &args.targets {
        let spec = TargetSpec::parse(t, &args.ours_path, &args.baseline_path)?;
        eprintln!("ls-k6: {} {}", args.scenario, spec.name);
        let r = match args.scenario.as_str() {
            "latency" => rt.block_on(latency(&args, &spec, &bin, &k6))?,
            _ => rt.block_on(connect(&args, &spec, &bin, &k6))?,
        };
        runs.push(r);
    }
    let result = json!({
        "tool": "ls-k6",
        "scenario": args.scenario,
        "command": lb::command_line(),
        "machine": lb::machine(),
        "k6_version": k6_version,
        "runs": runs,
    });
    lb::emit_result(args.json_out.as_deref(), &result)
}

fn install_k6() -> Result<PathBuf> {
    let out = Command::new("bench/k6/install.sh")
        .stderr(Stdio::inherit())
        .output()
        .context("run bench/k6/install.sh (run the tool from the workspace root)")?;
    if !out.status.success() {
        bail!("bench/k6/install.sh failed: {}", out.status);
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(path))
}

/// A running `k6 run`: its console lines go to a channel (the scripts print
/// `k6-open` / `k6-vu-done` markers), the summary to a file.
struct K6Run {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    summary: PathBuf,
    command: String,
    log: Vec<String>,
}

impl K6Run {
    fn start(k6: &Path, script: &Path, env: &[(&str, String)], summary: PathBuf) -> Result<K6Run> {
        let mut cmd = Command::new(k6);
        cmd.args(["run", "--quiet", "--no-usage-report", "--log-format", "raw"]);
        let mut shown = format!(
            "{} run --quiet --no-usage-report --log-format raw",
            k6.display()
        );
        for (k, v) in env {
            cmd.arg("-e").arg(format!("{k}={v}"));
            shown.push_str(&format!(" -e '{k}={v}'"));
        }
        cmd.arg("-e")
            .arg(format!("SUMMARY={}", summary.display()))
            .arg(script);
        shown.push_str(&format!(" -e SUMMARY=FILE {}", script.display()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", k6.display()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(K6Run {
            child,
            lines: rx,
            summary,
            command: shown,
            log: Vec::new(),
        })
    }

    /// Waits for `n` console lines equal to `marker`.
    fn wait_markers(&mut self, marker: &str, n: usize, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        let mut seen = 0;
        while seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if l.trim() == marker {
                        seen += 1;
                    } else {
                        self.log.push(l);
                    }
                }
                Err(_) => bail!(
                    "k6 printed {seen} of {n} `{marker}` within {patience:?}; its output:\n{}",
                    self.log.join("\n")
                ),
            }
        }
        Ok(())
    }

    /// Waits for k6 to exit and reads its summary.
    fn finish(mut self, patience: Duration) -> Result<(Value, Vec<String>)> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(st) = self.child.try_wait()? {
                self.log.extend(self.lines.try_iter());
                // k6 exits non-zero when a threshold fails; we set none, so
                // only a broken run does.
                if !st.success() {
                    bail!("k6 exited with {st}; output:\n{}", self.log.join("\n"));
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("k6 did not finish within {patience:?}");
            }
            self.log.extend(self.lines.try_iter());
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&self.summary)
            .with_context(|| format!("read the k6 summary {}", self.summary.display()))?;
        let v: Value = serde_json::from_str(&text)?;
        let errors = self
            .log
            .iter()
            .filter(|l| l.starts_with("k6-error"))
            .cloned()
            .collect();
        Ok((v["metrics"].clone(), errors))
    }
}

impl Drop for K6Run {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A k6 trend (ms) as our summary fields (µs).
fn k6_trend_us(m: &Value) -> Value {
    let v = &m["values"];
    let us = |k: &str| v[k].as_f64().map(|x| x * 1000.0);
    json!({
        "count": v["count"],
        "min_us": us("min"),
        "p50_us": us("med"),
        "p90_us": us("p(90)"),
        "p99_us": us("p(99)"),
        "p999_us": us("p(99.9)"),
        "max_us": us("max"),
        "mean_us": us("avg"),
    })
}

fn ratios(k6: &Value, ours: &Value) -> Value {
    let mut o = serde_json::Map::new();
    for k in ["p50_us", "p90_us", "p99_us", "max_us", "mean_us"] {
        let r = match (k6[k].as_f64(), ours[k].as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        o.insert(k.trim_end_matches("_us").to_string(), json!(r));
    }
    Value::Object(o)
}

/// A fresh folder (holding `files`, empty) with a server of `spec` on it,
/// started once the machine is quiet; the wait's record is returned too.
fn fresh_target(
    args: &Args,
    spec: &TargetSpec,
    bin: &Path,
    label: &str,
    files: &[&str],
) -> Result<(lb::Scratch, Target, Value)> {
    let scratch = lb::Scratch::new(label)?;
    for f in files {
        std::fs::File::create(scratch.logs().join(f))?;
    }
    let target = Target::start(
        spec,
        bin,
        &scratch.logs(),
        &args.server_args,
        &scratch.root.join("server.stderr"),
    )?;
    let quiet = lb::wait_quiet(Duration::from_secs(args.quiet_wait_secs), args.quiet_busy);
    Ok((scratch, target, quiet))
}

async fn latency(args: &Args, spec: &TargetSpec, bin: &Path, k6: &Path) -> Result<Value> {
    // The file exists before the server starts, so it is tracked from its first scan.
    let (scratch, target, quiet) = fresh_target(args, spec, bin, "k6-latency", &[FILE])?;
    let file = scratch.logs().join(FILE);
    let total = (args.rate * args.duration).round().max(2.0) as u64;
    let url = format!("ws://{}{}", target.addr(), spec.ws_path);
    // k6 first (it takes a moment to start), then our clients.
    let mut k6run = K6Run::start(
        k6,
        &args.k6_dir.join("latency.js"),
        &[
            ("URL", url.clone()),
            ("TOTAL", total.to_string()),
            ("VUS", args.k6_clients.to_string()),
            ("MAX_SECS", format!("{}", args.duration + 30.0)),
        ],
        scratch.root.join("k6-summary.json"),
    )?;
    k6run.wait_markers("k6-open", args.k6_clients, Duration::from_secs(60))?;
    let base = Instant::now();
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let ip = lb::source_ip(2 + i % 200)?;
        clients.push(lb::ws_connect(target.addr(), Some(ip), &spec.ws_path, None).await?);
    }
    let load = lb::OtherLoad::start(target.pid());
    let (written, results) =
        write_and_read_lat(clients, &file, base, args.rate, total, args.line_bytes).await?;
    let mut hist = lb::latency_histogram()?;
    let (mut received, mut gaps) = (0u64, 0u64);
    for r in results {
        let (h, n, g) = r?;
        hist.add(&h).map_err(|e| anyhow!("merge: {e}"))?;
        received += n;
        gaps += g;
    }
    let load = load.finish(target.pid());
    let k6_command = k6run.command.clone();
    let (metrics, k6_errors) =
        tokio::task::spawn_blocking(move || k6run.finish(Duration::from_secs(60))).await??;
    let ours = lb::summarize_us(&hist);
    let theirs = k6_trend_us(&metrics["line_latency"]);
    eprintln!(
        "ls-k6: {} latency p50/p99 µs: ours-client {}/{}, k6 {}/{}",
        spec.name, ours["p50_us"], ours["p99_us"], theirs["p50_us"], theirs["p99_us"]
    );
    Ok(json!({
        "target": spec.name,
        "server_command": target.command(),
        "url": url,
        "rate": args.rate,
        "duration_secs": args.duration,
        "line_bytes": args.line_bytes,
        "lines_written": written,
        "ours_client": {
            "clients": args.clients,
            "latency": ours,
            "records_received": received,
            "gap_notices": gaps,
        },
        "k6": {
            "command": k6_command,
            "clients": args.k6_clients,
            "latency": theirs,
            "records_received": metrics["lines_received"]["values"]["count"],
            "gap_notices": metrics["gap_notices"]["values"]["count"],
            "errors": k6_errors,
        },
        "ratio_k6_over_ours": ratios(&theirs, &ours),
        "quiet_wait": quiet,
        "other_load": load,
    }))
}

async fn connect(args: &Args, spec: &TargetSpec, bin: &Path, k6: &Path) -> Result<Value> {
    // Our client, on a fresh server.
    let ours = {
        let (_scratch, target, quiet) = fresh_target(args, spec, bin, "k6-connect", &[])?;
        let rss0 = target.rss();
        let load = lb::OtherLoad::start(target.pid());
        let addr = target.addr();
        let t = Instant::now();
        let opened: Vec<Result<(lb::Ws, Duration)>> = futures::stream::iter(0..args.conns)
            .map(|i| {
                let path = spec.ws_path.clone();
                async move {
                    let t = Instant::now();
                    let ws = lb::ws_connect(
                        addr,
                        Some(lb::source_ip(2 + i % 200)?),
                        &path,
                        Some(lb::small_ws_config()),
                    )
                    .await?;
                    Ok((ws, t.elapsed()))
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        let open_secs = t.elapsed().as_secs_f64();
        let mut h = lb::latency_histogram()?;
        let mut held = Vec::new();
        let mut failed = 0;
        for r in opened {
            match r {
                Ok((ws, d)) => {
                    let _ = h.record(d.as_nanos() as u64);
                    held.push(ws);
                }
                Err(_) => failed += 1,
            }
        }
        // Let the server finish its per-connection setup (hello, subscribe).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss1 = target.rss();
        let load = load.finish(target.pid());
        drop(held);
        json!({
            "opened": h.len(), "failed": failed, "open_secs": open_secs,
            "connect": lb::summarize_us(&h),
            "server_rss_before_bytes": rss0, "server_rss_held_bytes": rss1,
            "server_command": target.command(),
            "quiet_wait": quiet, "other_load": load,
        })
    };
    // k6, on another fresh server.
    let theirs = {
        let (scratch, target, quiet) = fresh_target(args, spec, bin, "k6-connect", &[])?;
        let rss0 = target.rss();
        let url = format!("ws://{}{}", target.addr(), spec.ws_path);
        let mut k6run = K6Run::start(
            k6,
            &args.k6_dir.join("connect.js"),
            &[
                ("URL", url),
                ("CONNS", args.conns.to_string()),
                ("VUS", args.concurrency.to_string()),
                ("MAX_SECS", "300".into()),
            ],
            scratch.root.join("k6-summary.json"),
        )?;
        let load = lb::OtherLoad::start(target.pid());
        let t = Instant::now();
        k6run.wait_markers("k6-vu-done", args.concurrency, Duration::from_secs(300))?;
        // k6 starts its VUs before the first connection: the wall time is
        // an upper bound of k6's opening time.
        let open_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss1 = target.rss();
        let load = load.finish(target.pid());
        let command = target.command().to_string();
        // Stopping the server closes every k6 connection, which ends k6.
        drop(target);
        let k6_command = k6run.command.clone();
        let (metrics, _) =
            tokio::task::spawn_blocking(move || k6run.finish(Duration::from_secs(120))).await??;
        json!({
            "command": k6_command,
            "opened": metrics["conns_opened"]["values"]["count"],
            "failed": metrics["conns_failed"]["values"]["count"],
            "open_secs_upper_bound": open_secs,
            "connect": k6_trend_us(&metrics["ws_connecting"]),
            "server_rss_before_bytes": rss0, "server_rss_held_bytes": rss1,
            "server_command": command,
            "quiet_wait": quiet, "other_load": load,
        })
    };
    let per_conn = |v: &Value| {
        let (a, b) = (
            v["server_rss_held_bytes"].as_f64(),
            v["server_rss_before_bytes"].as_f64(),
        );
        a.zip(b).map(|(a, b)| (a - b) / args.conns as f64)
    };
    let (po, pk) = (per_conn(&ours), per_conn(&theirs));
    eprintln!(
        "ls-k6: {} connect p50/p99 µs: ours-client {}/{}, k6 {}/{}",
        spec.name,
        ours["connect"]["p50_us"],
        ours["connect"]["p99_us"],
        theirs["connect"]["p50_us"],
        theirs["connect"]["p99_us"]
    );
    Ok(json!({
        "target": spec.name,
        "conns": args.conns,
        "concurrency": args.concurrency,
        "ours_client": ours,
        "k6": theirs,
        "server_rss_per_conn_bytes": {"ours_client": po, "k6": pk},
        "ratio_k6_over_ours": {
            "connect": ratios(&theirs["connect"], &ours["connect"]),
            "server_rss_per_conn": po.zip(pk).filter(|(o, _)| *o > 0.0).map(|(o, k)| k / o),
        },
    }))
}
