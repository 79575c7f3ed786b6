//! The "side by side" section of `bench/RESULTS.md`: renders the
//! `compare-*.json` results of the `compare` group of `bench/run.sh`
//! (logstream and the baselines of `bench/baselines/`, measured in the same
//! invocation) as tables of ratios, each row with the command that made it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::Value;

use crate::proto::Target;

const BYTES_PER_CONN_TARGET: f64 = 2048.0;
const LESS_THAN_WS_TARGET: f64 = 2.5;

fn load(dir: &Path, name: &str) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
}

/// Microseconds of one run, or of several: "median (min–max, N runs)".
fn spread(mut xs: Vec<f64>) -> String {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => "–".into(),
        1 => us(Some(xs[0])),
        n => format!(
            "{} ({}–{}, {n} runs)",
            us(Some(xs[n / 2])),
            us(Some(xs[0])),
            us(Some(xs[n - 1]))
        ),
    }
}

fn group(n: f64) -> String {
    let neg = n < 0.0;
    let s = (n.abs().round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if neg { format!("-{out}") } else { out }
}

fn n0(v: Option<f64>) -> String {
    v.map_or("–".into(), group)
}

fn us(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| {
        if x >= 1000.0 {
            format!("{:.2} ms", x / 1000.0)
        } else {
            format!("{x:.0} µs")
        }
    })
}

fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "–".into(),
    }
}

fn other(v: &Value) -> String {
    v["other_load"]["other_busy_share"]
        .as_f64()
        .map_or("–".into(), |x| {
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

/// `secs` of an `ls-fanout` result, with how the run ended when not every
/// client saw every last line.
fn run_secs(v: &Value) -> String {
    let secs = f(v, &["secs"]).map_or("–".into(), |x| format!("{x:.3}"));
    if v["all_done"].as_bool().unwrap_or(false) {
        secs
    } else if v["quiesced"].as_bool().unwrap_or(false) {
        format!("{secs} (last line skipped)")
    } else {
        format!("{secs} (timeout)")
    }
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// Renders the section, or `None` when there are no compare results.
pub fn render(dir: &Path) -> Result<Option<String>> {
    let any = std::fs::read_dir(dir)?.flatten().any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n.starts_with("compare-") && n.ends_with(".json")
    });
    if !any {
        return Ok(None);
    }
    let mut md = String::new();
    writeln!(
        md,
        "## Side by side: logstream and the designs users would pick instead\n"
    )?;
    writeln!(
        md,
        "Made by the `compare` group of `bench/run.sh` (`SCENARIOS=compare bench/run.sh`): every target is measured in the same \
         invocation on the same machine, and every figure is also given as a ratio to the `ws` baseline of that invocation. \
         Targets: `ours-ws` / `ours-sse` = `target/release/logstream serve` over `/ws` and `/sse`; `ws` = chokidar + `ws` \
         (`bench/baselines/node/ws-server.js`), `socketio` = chokidar + Socket.IO (`node/socketio-server.js`), `tailf` = one \
         `tail -F` per client piped into chunked HTTP (`tailf/tailf-server.js`); versions pinned in \
         `bench/baselines/node/package-lock.json`. The server runs pinned to CPU 0 (`--server-cpu 0`, i.e. `taskset -c 0`), the \
         tool with its clients and writer under `taskset -c 1`. \"other CPU\" is the share of the machine used by other processes \
         during the measurement; above 20 % the row is marked ⚠ noisy.\n"
    )?;

    // ------------------------------------------------------------ idle
    let idle: Vec<(Target, Value)> = Target::ALL
        .iter()
        .filter_map(|t| Some((*t, load(dir, &format!("compare-idle-{}.json", t.name()))?)))
        .collect();
    if !idle.is_empty() {
        let per = |v: &Value| f(v, &["server_mem_fit_from_first_step", "bytes_per_conn"]);
        let ws = idle
            .iter()
            .find(|(t, _)| *t == Target::Ws)
            .and_then(|(_, v)| per(v));
        writeln!(md, "### Memory per idle connection\n")?;
        writeln!(
            md,
            "Server resident memory (VmRSS, plus the Pss of its child processes: the `tail`s of `tailf`) after each step of idle \
             connections opened by 2 client processes from 8 source addresses; slope of a least-squares fit from the first \
             non-zero step to the last. A connection is counted once its handshake completed (ours: `hello`; Socket.IO: `40` \
             ack; HTTP: response head). `tailf` starts one process per connection, so it is measured to a few hundred only.\n"
        )?;
        writeln!(
            md,
            "![server memory against idle connections](plots/compare-idle.png)\n"
        )?;
        writeln!(
            md,
            "| target | connections (last step) | **bytes per connection** | r² | ratio to ws | failed | other CPU | command |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|")?;
        for (t, v) in &idle {
            let last = v["points"]
                .as_array()
                .and_then(|p| p.last())
                .cloned()
                .unwrap_or(Value::Null);
            writeln!(
                md,
                "| {} | {} | **{}** | {} | {} | {} | {} | {} |",
                t.name(),
                n0(last["conns"].as_f64()),
                n0(per(v)),
                f(v, &["server_mem_fit_from_first_step", "r2"])
                    .map_or("–".into(), |x| format!("{x:.3}")),
                ratio(per(v), ws),
                v["failed"],
                other(v),
                cmd(v)
            )?;
        }
        writeln!(md)?;
        for t in [Target::OursWs, Target::OursSse] {
            if let Some(o) = idle.iter().find(|(x, _)| *x == t).and_then(|(_, v)| per(v)) {
                let less = ws.map(|w| w / o);
                let met =
                    o <= BYTES_PER_CONN_TARGET && less.is_some_and(|l| l >= LESS_THAN_WS_TARGET);
                writeln!(
                    md,
                    "- Goal for `{}` (≤ 2,048 bytes per connection and ≥ 2.5× less than `ws`): {} bytes; `ws` ÷ `{}` = {}: **{}**.",
                    t.name(),
                    group(o),
                    t.name(),
                    less.map_or("–".into(), |l| format!("{l:.2}×")),
                    if met { "met" } else { "MISSED" }
                )?;
            }
        }
        writeln!(md)?;
    }

    // ------------------------------------------------------------ throughput
    let mut tp = Vec::new();
    for files in [1, 10] {
        for t in Target::ALL {
            if let Some(v) = load(
                dir,
                &format!("compare-throughput-{files}-{}.json", t.name()),
            ) {
                tp.push((files, t, v));
            }
        }
    }
    if !tp.is_empty() {
        writeln!(md, "### Tail throughput and ingest cost\n")?;
        writeln!(
            md,
            "One client follows every file; the writer appends 100-byte lines with 1 MiB writes as fast as it can. `secs` = from \
             the first write until the client saw the last line of every file. CPU = utime+stime of the server process and its \
             children over the same interval, so **lines per server CPU-second** is the cost of getting a line from the file to \
             one client. The baselines have no client-free ingest (the `tail`s of `tailf` only run for clients), which is why one \
             client is attached for every target. Ours bounds what a client may lag (`--client-queue-bytes` 4 MiB, history \
             100k lines) and moves a client that falls further behind to the head with a `gap`; the Node baselines queue \
             without bound instead. With 100 MB written in a burst the one-core client falls behind, so ours delivers only part \
             of the lines: *lines per server CPU-s* counts delivered lines, the next column (ours only) every line the server \
             tailed (`logstream_lines_read_total`).\n"
        )?;
        writeln!(
            md,
            "| files | target | delivered / written | secs | lines/s | server CPU s | **lines per server CPU-s** | ratio to ws | ours: lines tailed per server CPU-s | server peak memory | other CPU | command |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for (files, t, v) in &tp {
            let base = tp
                .iter()
                .find(|(fl, x, _)| fl == files && *x == Target::Ws)
                .and_then(|(_, _, b)| f(b, &["lines_per_server_cpu_sec"]));
            writeln!(
                md,
                "| {files} | {} | {} / {} | {} | {} | {} | **{}** | {} | {} | {:.0} MiB | {} | {} |",
                t.name(),
                n0(f(v, &["delivered"])),
                n0(f(v, &["expected"])),
                run_secs(v),
                n0(f(v, &["lines_per_sec"])),
                f(v, &["server_cpu_secs"]).map_or("–".into(), |x| format!("{x:.2}")),
                n0(f(v, &["lines_per_server_cpu_sec"])),
                ratio(f(v, &["lines_per_server_cpu_sec"]), base),
                n0(f(v, &["ingested_per_server_cpu_sec"])),
                f(v, &["server_peak_mem_bytes"]).unwrap_or(0.0) / (1u64 << 20) as f64,
                other(v),
                cmd(v)
            )?;
        }
        writeln!(md)?;
    }

    // ------------------------------------------------------------ latency
    let mut lat = Vec::new();
    for rate in [1, 10000] {
        for t in Target::ALL {
            if let Some(v) = load(dir, &format!("compare-latency-{rate}-{}.json", t.name())) {
                lat.push((rate, t, v));
            }
        }
    }
    if !lat.is_empty() {
        writeln!(md, "### Write → client latency\n")?;
        writeln!(
            md,
            "`ls-latency`: the writer embeds its monotonic time in each line (`lat SEQ T_NS …`, 100 bytes, buffered writer flushed \
             once per tick of 1 ms or one line period); every client takes `now − T_NS` when the network message carrying the \
             line arrives. Every delivery to every client is one sample; the first line is not counted. Ours is asked for bare \
             lines like the baselines send (`/ws?format=raw&file=latency.log`, `/sse?format=raw&file=latency.log`): with JSON \
             records at 10,000 lines/s × 100 clients the one client core would parse 1M records/s and measure itself. \
             Lines still missing 5 s after the last write are counted as not received. Ratios are this target's percentile over \
             `ws`'s (run 1). The loaded row is run several times (`CMP_LAT_RUNS`, 5): its percentiles read median (min–max). \
             Its 100 clients share CPU 1 with the writer whatever the number of client processes (the server has CPU 0), \
             so they are kept in one process; the spread over runs shows how much of a row is the measurement.\n"
        )?;
        writeln!(md, "![latency CDF](plots/compare-latency.png)\n")?;
        writeln!(
            md,
            "| load | target | received / sent | p50 | p99 | max | p50 / p99 / max ratio to ws | other CPU | command |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
        for (rate, t, v) in &lat {
            let base = lat
                .iter()
                .find(|(r, x, _)| r == rate && *x == Target::Ws)
                .map(|(_, _, b)| b.clone())
                .unwrap_or(Value::Null);
            let q = |v: &Value, k: &str| f(v, &["latency", k]);
            // Repeated runs of the loaded row (bench/run.sh CMP_LAT_RUNS):
            // run 1 is `v`, runs 2.. carry `-rN`.
            let runs: Vec<Value> = std::iter::once(v.clone())
                .chain((2..=9).filter_map(|r| {
                    load(
                        dir,
                        &format!("compare-latency-{rate}-{}-r{r}.json", t.name()),
                    )
                }))
                .collect();
            let cell = |k: &str| spread(runs.iter().filter_map(|r| q(r, k)).collect());
            let load_name = if *rate == 1 {
                "1 line/s, 1 client".to_string()
            } else {
                format!("{} lines/s, {} clients", group(*rate as f64), v["clients"])
            };
            writeln!(
                md,
                "| {load_name} | {} | {} / {} | {} | {} | {} | {} / {} / {} | {} | {} |",
                t.name(),
                n0(f(v, &["records_received"])),
                n0(f(v, &["lines_written"])
                    .zip(f(v, &["clients"]))
                    .map(|(a, b)| a * b)),
                cell("p50_us"),
                cell("p99_us"),
                cell("max_us"),
                ratio(q(v, "p50_us"), q(&base, "p50_us")),
                ratio(q(v, "p99_us"), q(&base, "p99_us")),
                ratio(q(v, "max_us"), q(&base, "max_us")),
                other(v),
                cmd(v)
            )?;
        }
        writeln!(md)?;
    }

    // ------------------------------------------------------------ fan-out
    let mut fo = Vec::new();
    for clients in [1, 10, 100, 1000, 10000] {
        for t in Target::ALL {
            if let Some(v) = load(dir, &format!("compare-fanout-{clients}-{}.json", t.name())) {
                fo.push((clients, t, v));
            }
        }
    }
    if !fo.is_empty() {
        writeln!(md, "### Fan-out: lines delivered per second\n")?;
        writeln!(
            md,
            "`ls-fanout --clients N`: N clients follow one file, then the writer appends as fast as it can a number of 100-byte \
             lines that makes about the same number of deliveries at every N (N × lines); **delivered/s** = lines received by all \
             clients ÷ time until every client saw the last line; when a client was moved past a last line by a `gap` (ours), the time of the last line received once nothing more arrived for 2 s (\"last line skipped\"); or the 60 s timeout (\"timeout\"). Ours \
             batches lines into frames (up to 512 records / 64 KiB); the Node baselines send one message per line per client. \
             `tailf` stops at 1,000 clients (one process each). Ratio = this target's figure over `ws`'s. **The clients share one \
             core** (CPU 1), so where the server needs little CPU (ours) delivered/s is bounded by the clients; deliveries per \
             server CPU-second (server process and children, /proc ticks of 10 ms) is the server's own cost. Lines a client \
             missed because it fell more than the server's history behind are reported by ours as `gap` notices and are not \
             counted as delivered.\n"
        )?;
        writeln!(md, "![fan-out](plots/compare-fanout.png)\n")?;
        writeln!(
            md,
            "| clients | target | lines each | delivered / expected | secs | **delivered/s** | ratio to ws | server CPU s | **deliveries per server CPU-s** | ratio to ws | gaps | other CPU | command |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")?;
        for (clients, t, v) in &fo {
            let base = fo
                .iter()
                .find(|(c, x, _)| c == clients && *x == Target::Ws)
                .and_then(|(_, _, b)| f(b, &["delivered_per_sec"]));
            let base_cpu = fo
                .iter()
                .find(|(c, x, _)| c == clients && *x == Target::Ws)
                .and_then(|(_, _, b)| f(b, &["delivered_per_server_cpu_sec"]));
            writeln!(
                md,
                "| {} | {} | {} | {} / {} | {} | **{}** | {} | {} | **{}** | {} | {} | {} | {} |",
                group(*clients as f64),
                t.name(),
                n0(f(v, &["lines"])),
                n0(f(v, &["delivered"])),
                n0(f(v, &["expected"])),
                run_secs(v),
                n0(f(v, &["delivered_per_sec"])),
                ratio(f(v, &["delivered_per_sec"]), base),
                f(v, &["server_cpu_secs"]).map_or("–".into(), |x| format!("{x:.2}")),
                n0(f(v, &["delivered_per_server_cpu_sec"])),
                ratio(f(v, &["delivered_per_server_cpu_sec"]), base_cpu),
                v["gap_notices"],
                other(v),
                cmd(v)
            )?;
        }
        writeln!(md)?;
    }
    Ok(Some(md))
}
