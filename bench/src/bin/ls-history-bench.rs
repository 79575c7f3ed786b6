//! `ls-history-bench`: the logstream side of the history benchmark
//! (`bench/history/`, side by side with VictoriaLogs on the same data).
//!
//! 1. Reads the data set (`ls-loggen` JSON Lines) into memory, then
//!    publishes it through a hub into the history on disk exactly as the
//!    aggregator does (ring, writer queue, zstd blocks, segments), and
//!    measures the CPU time of this process for that: lines per CPU-second.
//! 2. Bytes on disk per line.
//! 3. Starts the real `logstream aggregator` on that directory (its one
//!    upstream is a closed port: nothing is added) and times the queries
//!    over its Loki API, 5 runs each, with the aggregator's CPU time per run
//!    (read from /proc): (a) a rare substring over the whole range,
//!    (b) `{pod="pod-07"} |= "error"` over the last hour (counted, and as
//!    Explore's 1,000-line request), (c) `sum by (level)
//!    (count_over_time(...[1m]))` over the 6 hours. Answers are checked
//!    against the generator's summary.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use logstream::history::{History, HistoryOptions, Stats};
use logstream::hub::{Hub, HubLimits, Pending, SourceInfo};
use logstream::protocol::{Level, Source};
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// The data set (ls-loggen output).
    #[arg(long)]
    data: PathBuf,
    /// Its summary (expected answers).
    #[arg(long)]
    summary: PathBuf,
    /// Result JSON.
    #[arg(long)]
    out: PathBuf,
    /// History directory (emptied first).
    #[arg(long, default_value = "/dev/shm/ls-history-bench")]
    dir: PathBuf,
    /// The logstream binary that serves the queries.
    #[arg(long, default_value = "target/release/logstream")]
    bin: PathBuf,
    /// zstd level of the blocks.
    #[arg(long, default_value_t = 1)]
    level: i32,
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// CPU time (user + system) of a process, from /proc/PID/stat (fields
/// 14 and 15, in clock ticks).
fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

fn level(s: &str) -> Option<Level> {
    match s {
        "trace" => Some(Level::Trace),
        "debug" => Some(Level::Debug),
        "info" => Some(Level::Info),
        "warn" => Some(Level::Warn),
        "error" => Some(Level::Error),
        "fatal" => Some(Level::Fatal),
        _ => None,
    }
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, r)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16)?;
            if n == 0 {
                break;
            }
            out.push_str(&r[..n]);
            rest = &r[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn enc(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push('&');
        }
        s.push_str(k);
        s.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                s.push(b as char);
            } else {
                s.push_str(&format!("%{b:02X}"));
            }
        }
    }
    s
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&args.summary)?)?;
    let expected = &summary["expected"];

    // 1. Read and parse the data set (not measured).
    let hub = Hub::new(
        HubLimits {
            max_lines: 100_000,
            max_bytes: 64 << 20,
        },
        "bench",
    );
    let mut sources: HashMap<String, Arc<SourceInfo>> = HashMap::new();
    let mut batches: Vec<Vec<Pending>> = Vec::new();
    let mut batch = Vec::with_capacity(1000);
    let (mut lines, mut line_bytes) = (0u64, 0u64);
    let parse_started = Instant::now();
    let parse_cpu0 = cpu_of("self");
    for row in BufReader::with_capacity(1 << 20, std::fs::File::open(&args.data)?).lines() {
        let row = row?;
        let v: Value = serde_json::from_str(&row)?;
        let pod = v["pod"].as_str().unwrap_or_default();
        let info = sources
            .entry(pod.to_string())
            .or_insert_with(|| {
                hub.source(Source {
                    namespace: v["namespace"].as_str().unwrap_or_default().into(),
                    pod: pod.into(),
                    container: v["container"].as_str().unwrap_or_default().into(),
                    file: v["file"].as_str().unwrap_or_default().into(),
                    service: String::new(),
                })
            })
            .clone();
        let line = v["line"].as_str().unwrap_or_default().to_string();
        line_bytes += line.len() as u64;
        lines += 1;
        batch.push(Pending {
            seq: info.next_seq(),
            source: info,
            ts_ns: v["ts"].as_i64().unwrap_or(0),
            level: level(v["level"].as_str().unwrap_or_default()),
            line,
            partial: false,
            split: None,
        });
        if batch.len() == 1000 {
            batches.push(std::mem::replace(&mut batch, Vec::with_capacity(1000)));
        }
    }
    batches.push(batch);
    let parse_cpu = cpu_of("self") - parse_cpu0;
    eprintln!(
        "read {lines} lines ({line_bytes} bytes of lines) in {:.1} s",
        parse_started.elapsed().as_secs_f64()
    );

    // 2. Ingest: publish through the hub into the history, as the
    // aggregator's merge loop does.
    let _ = std::fs::remove_dir_all(&args.dir);
    let mut opts = HistoryOptions::new(args.dir.clone());
    opts.max_age = None;
    opts.max_bytes = 64 << 30;
    opts.level = args.level;
    let stats = Stats::default();
    let (history, _) = History::open(opts, stats.clone())?;
    let cpu0 = cpu_of("self");
    let wall0 = Instant::now();
    let writer = history.spawn_writer()?;
    for b in batches {
        // The bench keeps the writer's queue from overflowing (the
        // aggregator drops and counts instead: live streams come first).
        while history.queued_bytes() > 8 << 20 {
            std::thread::sleep(Duration::from_micros(200));
        }
        hub.publish_with(b, |new| history.push(new));
    }
    history.close();
    writer.join().ok().context("writer thread")?;
    let ingest_cpu = cpu_of("self") - cpu0;
    let ingest_wall = wall0.elapsed();
    if stats.records_dropped.get() > 0 || stats.records_written.get() != lines {
        bail!(
            "ingest lost records: {} written of {lines}, {} dropped",
            stats.records_written.get(),
            stats.records_dropped.get()
        );
    }
    let disk = dir_bytes(&args.dir);
    eprintln!(
        "ingested in {:.2} s CPU ({:.0} lines per CPU-second), {:.2} s wall; {disk} bytes on disk ({:.2} per line)",
        ingest_cpu.as_secs_f64(),
        lines as f64 / ingest_cpu.as_secs_f64(),
        ingest_wall.as_secs_f64(),
        disk as f64 / lines as f64
    );
    drop(history);

    // 3. Queries through the aggregator's Loki API.
    let mut child = Command::new(&args.bin)
        .args([
            "aggregator",
            "--listen",
            "127.0.0.1:0",
            "--source",
            "http://127.0.0.1:9",
            "--history-dir",
        ])
        .arg(&args.dir)
        .args([
            "--history-max-age",
            "0s",
            "--history-max-bytes",
            "68719476736",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start {}", args.bin.display()))?;
    let pid = child.id().to_string();
    let mut first = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut first)?;
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .context("no listening line")?
        .to_string();
    let start_ns = summary["start_ns"].as_i64().unwrap_or(0);
    let end_ns = summary["end_ns"].as_i64().unwrap_or(0);
    let b_range = &expected["b_range_ns"];
    let (b_from, b_to) = (
        b_range[0].as_i64().unwrap_or(0),
        b_range[1].as_i64().unwrap_or(0),
    );
    let (s, e) = (start_ns.to_string(), end_ns.to_string());
    let (bf, bt) = (b_from.to_string(), b_to.to_string());
    let queries: Vec<(&str, String, String)> = vec![
        (
            "a_rare_substring_whole_range",
            r#"{namespace="bench"} |= "needle-7f3a9c""#.into(),
            format!(
                "/loki/api/v1/query_range?{}",
                enc(&[
                    ("query", r#"{namespace="bench"} |= "needle-7f3a9c""#),
                    ("start", &s),
                    ("end", &e),
                    ("limit", "1000"),
                    ("direction", "backward"),
                ])
            ),
        ),
        (
            "b_pod07_error_last_hour_count",
            r#"sum(count_over_time({pod="pod-07"} |= "error" [1h]))"#.into(),
            format!(
                "/loki/api/v1/query?{}",
                enc(&[
                    (
                        "query",
                        r#"sum(count_over_time({pod="pod-07"} |= "error" [1h]))"#
                    ),
                    ("time", &(b_to - 1).to_string()),
                ])
            ),
        ),
        (
            "b_pod07_error_last_hour_lines",
            r#"{pod="pod-07"} |= "error""#.into(),
            format!(
                "/loki/api/v1/query_range?{}",
                enc(&[
                    ("query", r#"{pod="pod-07"} |= "error""#),
                    ("start", &bf),
                    ("end", &bt),
                    ("limit", "5000"),
                    ("direction", "backward"),
                ])
            ),
        ),
        (
            "c_count_by_level_per_minute_6h",
            r#"sum by (level) (count_over_time({namespace="bench"}[1m]))"#.into(),
            format!(
                "/loki/api/v1/query_range?{}",
                enc(&[
                    (
                        "query",
                        r#"sum by (level) (count_over_time({namespace="bench"}[1m]))"#
                    ),
                    ("start", &s),
                    ("end", &e),
                    ("step", "60s"),
                ])
            ),
        ),
    ];
    let mut results = serde_json::Map::new();
    for (name, logql, path) in &queries {
        let mut runs = Vec::new();
        let mut answer = Value::Null;
        for _ in 0..=args.runs {
            let c0 = cpu_of(&pid);
            let t0 = Instant::now();
            let (code, body) = http_get(&addr, path)?;
            let wall = t0.elapsed();
            let cpu = cpu_of(&pid) - c0;
            if code != 200 {
                bail!("{name}: {code} {body}");
            }
            let v: Value = serde_json::from_str(&body)?;
            answer = summarise(&v);
            runs.push(json!({"wall_s": wall.as_secs_f64(), "cpu_s": cpu.as_secs_f64()}));
        }
        // The first run after the server started reads cold structures
        // (the page cache is warm: the data was just written); then
        // `runs` more.
        let ms = |r: &Value| r["wall_s"].as_f64().unwrap_or(0.0) * 1000.0;
        let cold = runs.first().map(ms).unwrap_or(0.0);
        let mut walls: Vec<f64> = runs.iter().skip(1).map(ms).collect();
        walls.sort_by(f64::total_cmp);
        let median = walls.get(walls.len() / 2).copied().unwrap_or(cold);
        let mut cpu: Vec<f64> = runs
            .iter()
            .skip(1)
            .map(|r| r["cpu_s"].as_f64().unwrap_or(0.0))
            .collect();
        cpu.sort_by(f64::total_cmp);
        let cpu_median = cpu.get(cpu.len() / 2).copied().unwrap_or(0.0);
        eprintln!("{name}: cold {cold:.1} ms, median {median:.1} ms, answer {answer}");
        results.insert(
            (*name).into(),
            json!({
                "logql": logql,
                "request": format!("GET {path}"),
                "result": answer,
                "runs": runs,
                "cold_ms": cold,
                "min_ms": walls.first(),
                "median_ms": median,
                "median_server_cpu_s": cpu_median,
            }),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let version = Command::new(&args.bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let out = json!({
        "side": "logstream",
        "version": version,
        "data": args.data,
        "lines": lines,
        "line_bytes": line_bytes,
        "history_dir": args.dir,
        "zstd_level": args.level,
        "ingest": {
            "path": "hub publish_with -> writer queue -> zstd blocks -> segments (the aggregator's path, in process; the JSON Lines parse is not counted, see parse_cpu_s)",
            "cpu_s": ingest_cpu.as_secs_f64(),
            "wall_s": ingest_wall.as_secs_f64(),
            "lines_per_cpu_s_until_searchable": lines as f64 / ingest_cpu.as_secs_f64(),
            "parse_cpu_s": parse_cpu.as_secs_f64(),
            "lines_per_cpu_s_with_json_parse": lines as f64 / (ingest_cpu + parse_cpu).as_secs_f64(),
        },
        "disk": {"after_flush_bytes": disk, "after_flush_bytes_per_line": disk as f64 / lines as f64},
        "expected": expected,
        "queries": results,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)?)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// The answer of a response: the lines of a streams result, the value of
/// a vector, or the series, points and total of a matrix.
fn summarise(v: &Value) -> Value {
    let data = &v["data"];
    let result = data["result"].as_array().cloned().unwrap_or_default();
    match data["resultType"].as_str() {
        Some("streams") => {
            let n: usize = result
                .iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .sum();
            json!({"lines": n})
        }
        Some("vector") => json!({"value": result.first().map(|r| r["value"][1].clone())}),
        Some("matrix") => {
            let points: usize = result
                .iter()
                .map(|s| s["values"].as_array().map_or(0, Vec::len))
                .sum();
            let total: f64 = result
                .iter()
                .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p[1].as_str().and_then(|x| x.parse::<f64>().ok()))
                .sum();
            json!({"series": result.len(), "points": points, "total": total})
        }
        _ => Value::Null,
    }
}
