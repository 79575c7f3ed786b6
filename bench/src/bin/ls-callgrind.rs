//! `ls-callgrind`: instructions (callgrind `Ir`) the server executes per
//! 1,000 lines tailed and delivered, on a fixed workload, against a floor
//! (`tail -n +1 -F` on the same file, the least a tailer can do; it
//! ends by `--pid` since a killed `tail` leaves no callgrind output).
//!
//! Workload: the program under `valgrind --tool=callgrind` follows one file;
//! the tool appends `--lines` lines of `--line-bytes` in chunks of `--chunk`
//! (one `write` each) and writes the next chunk only once every line of the
//! previous one came out (our server: one raw WebSocket client; `tail`: its
//! stdout), so batching does not depend on how fast the machine is. Then
//! SIGTERM (our server drains; the client acks). The same run with no lines
//! gives the fixed cost (start-up, connection, shutdown), subtracted:
//! `Ir per 1,000 lines = (Ir(N) − Ir(0)) / N × 1000`. Each is repeated
//! `--runs` times; the spread is reported.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use logstream_bench as lb;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(
    name = "ls-callgrind",
    about = "Instructions per 1,000 lines tailed and delivered (valgrind callgrind), with a tail -F floor"
)]
struct Args {
    /// Lines per measured run.
    #[arg(long, default_value_t = 20_000)]
    lines: u64,
    /// Lines per write (the next chunk is written once this one was delivered).
    #[arg(long, default_value_t = 100)]
    chunk: u64,
    #[arg(long, default_value_t = 100)]
    line_bytes: usize,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The `logstream` binary (default: next to this tool).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Name of the measured revision, for the record.
    #[arg(long, default_value = "")]
    label: String,
    /// Skip the `tail -F` floor.
    #[arg(long)]
    no_floor: bool,
    /// Functions listed from callgrind_annotate.
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Keep the callgrind output files here (default: a scratch folder).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

const FILE: &str = "cg.log";

fn main() -> Result<()> {
    let args = Args::parse();
    if args.lines == 0 || args.chunk == 0 || args.runs == 0 {
        bail!("--lines, --chunk and --runs must be positive");
    }
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => lb::default_server_bin()?,
    };
    let scratch = lb::Scratch::new("callgrind")?;
    let out_dir = args.out_dir.clone().unwrap_or_else(|| scratch.root.clone());
    std::fs::create_dir_all(&out_dir)?;
    let valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .context("valgrind is needed (apt-get install valgrind)")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let load = lb::OtherLoad::start(None);
    let mut kinds = serde_json::Map::new();
    let mut last_out = None;
    let floors: &[&str] = if args.no_floor {
        &["ours"]
    } else {
        &["ours", "tail"]
    };
    for &kind in floors {
        let mut empty = Vec::new();
        let mut full = Vec::new();
        let mut secs = Vec::new();
        for run in 0..args.runs {
            for n in [0, args.lines] {
                let out = out_dir.join(format!("callgrind.out.{kind}.{n}.{run}"));
                let t = Instant::now();
                let ir = match kind {
                    "ours" => rt.block_on(run_ours(&args, &bin, n, &out))?,
                    _ => run_tail(&args, n, &out)?,
                };
                eprintln!(
                    "ls-callgrind: {kind} {n} lines run {run}: Ir {ir} ({:.1} s)",
                    t.elapsed().as_secs_f64()
                );
                if n == 0 {
                    empty.push(ir);
                } else {
                    full.push(ir);
                    secs.push(t.elapsed().as_secs_f64());
                    if kind == "ours" {
                        last_out = Some(out.clone());
                    }
                }
            }
        }
        // Pair each run with the empty run of the same repetition.
        let per_k: Vec<f64> = full
            .iter()
            .zip(&empty)
            .map(|(f, e)| (*f as f64 - *e as f64) / args.lines as f64 * 1000.0)
            .collect();
        kinds.insert(
            kind.into(),
            json!({
                "ir_total": full,
                "ir_fixed": empty,
                "ir_per_1000_lines": per_k,
                "ir_per_1000_lines_median": median(&per_k),
                "spread": spread(&per_k),
                "wall_secs": secs,
            }),
        );
    }
    let load = load.finish(None);
    let ratio = kinds
        .get("tail")
        .and_then(|t| t["ir_per_1000_lines_median"].as_f64())
        .zip(kinds["ours"]["ir_per_1000_lines_median"].as_f64())
        .map(|(t, o)| o / t);
    let top = match &last_out {
        Some(p) => top_functions(p, args.top)?,
        None => Value::Null,
    };
    eprintln!(
        "ls-callgrind: ours {:?} Ir per 1,000 lines (spread {}), tail floor {:?}, ratio {ratio:?}",
        kinds["ours"]["ir_per_1000_lines_median"],
        kinds["ours"]["spread"],
        kinds
            .get("tail")
            .map(|t| t["ir_per_1000_lines_median"].clone())
    );
    let result = json!({
        "tool": "ls-callgrind",
        "command": lb::command_line(),
        "label": args.label,
        "server_bin": bin.display().to_string(),
        "valgrind": valgrind,
        "machine": lb::machine(),
        "lines": args.lines,
        "chunk": args.chunk,
        "line_bytes": args.line_bytes,
        "runs": args.runs,
        "results": kinds,
        "ratio_ours_over_tail": ratio,
        "top_functions": top,
        "top_functions_of": last_out.map(|p| p.display().to_string()),
        "other_load": load,
    });
    lb::emit_result(args.json_out.as_deref(), &result)
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied()
}

/// (max − min) / median.
fn spread(v: &[f64]) -> Option<f64> {
    let lo = v.iter().copied().reduce(f64::min)?;
    let hi = v.iter().copied().reduce(f64::max)?;
    median(v).filter(|m| *m != 0.0).map(|m| (hi - lo) / m)
}

fn callgrind_cmd(out: &Path) -> Command {
    let mut c = Command::new("valgrind");
    c.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--quiet");
    c
}

/// The `summary:` (or `totals:`) Ir of a callgrind output file.
fn total_ir(out: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(out).with_context(|| format!("read {}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no summary line in {}", out.display()))
}

fn chunk_bytes(start: u64, n: u64, line_bytes: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(n as usize * line_bytes);
    for seq in start..start + n {
        lb::push_line(&mut buf, 0, seq, line_bytes);
    }
    buf
}

fn append(file: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(file)?;
    f.write_all(bytes)?;
    Ok(())
}

fn wait_exit(child: &mut Child, patience: Duration) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the measured process did not exit within {patience:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn run_ours(args: &Args, bin: &Path, lines: u64, out: &Path) -> Result<u64> {
    let scratch = lb::Scratch::new("callgrind-run")?;
    let file = scratch.logs().join(FILE);
    std::fs::File::create(&file)?;
    let stderr = scratch.root.join("server.stderr");
    let err = std::fs::File::create(&stderr)?;
    let mut child = callgrind_cmd(out)
        .arg(bin)
        .arg("serve")
        .arg("--dir")
        .arg(scratch.logs())
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .context("start valgrind")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "unexpected first line {line:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        })?;
    let pid = child.id();
    let mut ws = lb::ws_connect(addr, None, &format!("/ws?file={FILE}&format=raw"), None).await?;
    match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains(r#""type":"hello""#) => {}
        other => bail!("expected hello, got {other:?}"),
    }
    let mut got = 0u64;
    let mut sent = 0u64;
    while sent < lines {
        let n = args.chunk.min(lines - sent);
        append(&file, &chunk_bytes(sent, n, args.line_bytes))?;
        sent += n;
        while got < sent {
            let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
                .await
                .map_err(|_| anyhow!("no line within 60 s ({got} of {sent})"))?
                .ok_or_else(|| anyhow!("server closed"))??;
            if let Message::Text(t) = msg {
                got += t
                    .as_str()
                    .split('\n')
                    .filter(|l| !l.is_empty() && !l.starts_with("# logstream:"))
                    .count() as u64;
            }
        }
    }
    // Clean exit: SIGTERM, then ack the `draining` message.
    lb::targets::signal(pid, "TERM")?;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
        if let Message::Text(t) = msg
            && let Some(ctl) = t.as_str().strip_prefix("# logstream: ")
            && let Ok(v) = serde_json::from_str::<Value>(ctl)
            && v["type"] == "draining"
        {
            let ack = json!({"type": "ack", "cursor": v["cursor"]}).to_string();
            let _ = ws.send(Message::text(ack)).await;
        }
    }
    drop(ws);
    // Nothing else runs on this runtime: blocking here is harmless.
    wait_exit(&mut child, Duration::from_secs(120))?;
    total_ir(out)
}

fn run_tail(args: &Args, lines: u64, out: &Path) -> Result<u64> {
    let scratch = lb::Scratch::new("callgrind-tail")?;
    let file = scratch.logs().join(FILE);
    std::fs::File::create(&file)?;
    // `tail` killed by a signal leaves no callgrind output: it is told to
    // exit normally when this sentinel process ends (`--pid`).
    let mut sentinel = Command::new("sleep")
        .arg("3600")
        .stdin(Stdio::null())
        .spawn()
        .context("start sleep")?;
    let mut child = callgrind_cmd(out)
        .args(["tail", "-n", "+1", "-F"])
        .arg(format!("--pid={}", sentinel.id()))
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start valgrind tail")?;
    let mut stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    let mut sent = 0u64;
    while sent < lines {
        let n = args.chunk.min(lines - sent);
        append(&file, &chunk_bytes(sent, n, args.line_bytes))?;
        sent += n;
        while got < sent {
            let k = stdout.read(&mut buf)?;
            if k == 0 {
                bail!("tail ended early");
            }
            got += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    sentinel.kill()?;
    sentinel.wait()?;
    wait_exit(&mut child, Duration::from_secs(120))?;
    total_ir(out)
}

/// The first `n` functions of `callgrind_annotate` by own instructions, as
/// (Ir, share, function). Inlined code is listed once per source file it
/// came from, so rows are summed per function name first.
fn top_functions(out: &Path, n: usize) -> Result<Value> {
    let o = Command::new("callgrind_annotate")
        .args(["--threshold=100", "--auto=no"])
        .arg(out)
        .output()
        .context("run callgrind_annotate")?;
    let text = String::from_utf8_lossy(&o.stdout);
    let mut total = 0u64;
    let mut by_fn: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for l in text.lines() {
        // `1,234,567 (12.34%)  file:function [object]`
        let t = l.trim_start();
        let Some((ir, rest)) = t.split_once(' ') else {
            continue;
        };
        let Ok(ir) = ir.replace(',', "").parse::<u64>() else {
            continue;
        };
        let Some((_, func)) = rest.trim_start().split_once(')') else {
            continue;
        };
        let func = func.trim();
        if func.starts_with("PROGRAM TOTALS") {
            total = ir;
        } else if !func.is_empty() {
            *by_fn.entry(short_name(func)).or_default() += ir;
        }
    }
    let mut rows: Vec<(String, u64)> = by_fn.into_iter().collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Value::Array(
        rows.into_iter()
            .take(n)
            .map(|(f, ir)| {
                let share = if total > 0 {
                    format!("{:.2}%", ir as f64 * 100.0 / total as f64)
                } else {
                    String::new()
                };
                json!({"ir": ir, "share": share, "function": f})
            })
            .collect(),
    ))
}

/// `file:function [object]` → `function`: the file is the first `:` that is
/// not part of a `::` path separator.
fn short_name(entry: &str) -> String {
    let entry = match entry.rfind(" [") {
        Some(i) if entry.ends_with(']') => &entry[..i],
        _ => entry,
    };
    let b = entry.as_bytes();
    let split = (0..b.len())
        .find(|&i| b[i] == b':' && b.get(i + 1) != Some(&b':') && (i == 0 || b[i - 1] != b':'));
    match split {
        Some(i) => entry[i + 1..].to_string(),
        None => entry.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_entries_keep_the_function() {
        assert_eq!(
            short_name(
                "/rustc/x/library/core/src/str/pattern.rs:logstream::parse::logfmt_level [/t/logstream]"
            ),
            "logstream::parse::logfmt_level"
        );
        assert_eq!(
            short_name("./malloc/./malloc/malloc.c:_int_free [/usr/lib/libc.so.6]"),
            "_int_free"
        );
        assert_eq!(short_name("???:0x0000000000012345"), "0x0000000000012345");
    }
}
