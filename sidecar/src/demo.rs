//! A log writer for demos and tests: mixed formats and levels, buffered
//! writes, rename rotation.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub dir: PathBuf,
    /// Lines per second.
    pub rate: u64,
    /// Rotate `app.log` to `app.log.1` past this size (0: never).
    pub rotate_bytes: u64,
    /// Stop after this many lines (0: run forever).
    pub count: u64,
}

const PATHS: [&str; 5] = [
    "/",
    "/api/orders",
    "/api/users",
    "/healthz",
    "/static/app.js",
];

/// One demo line; deterministic in `n`.
pub fn demo_line(n: u64) -> String {
    let path = PATHS[(n % PATHS.len() as u64) as usize];
    let took = (n * 7919) % 500;
    let ts = crate::hub::format_ts(crate::hub::now_ns());
    match n % 10 {
        0 => format!(
            r#"{{"ts":"{ts}","level":"error","msg":"upstream failed","n":{n},"path":"{path}"}}"#
        ),
        1 | 2 => format!("ts={ts} level=warn msg=\"slow request\" n={n} path={path} took={took}ms"),
        3 => format!("{ts} DEBUG cache miss n={n} key=user:{}", n % 97),
        _ => format!("{ts} INFO request n={n} method=GET path={path} status=200 took={took}ms"),
    }
}

pub fn run_demo(opts: &DemoOptions) -> std::io::Result<()> {
    std::fs::create_dir_all(&opts.dir)?;
    let path = opts.dir.join("app.log");
    let mut out = open(&path)?;
    let mut written = 0u64;
    let tick = Duration::from_millis(10);
    let per_tick = (opts.rate / 100).max(1);
    let mut next = Instant::now();
    let mut n = 0u64;
    loop {
        let batch = if opts.rate >= 100 { per_tick } else { 1 };
        for _ in 0..batch {
            let line = demo_line(n);
            writeln!(out, "{line}")?;
            written += line.len() as u64 + 1;
            n += 1;
            if opts.count > 0 && n >= opts.count {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
        if opts.rotate_bytes > 0 && written >= opts.rotate_bytes {
            rotate(&opts.dir, &path)?;
            out = open(&path)?;
            written = 0;
        }
        next += if opts.rate >= 100 {
            tick
        } else {
            Duration::from_secs_f64(1.0 / opts.rate.max(1) as f64)
        };
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
}

fn open(path: &Path) -> std::io::Result<BufWriter<File>> {
    Ok(BufWriter::new(
        OpenOptions::new().create(true).append(true).open(path)?,
    ))
}

/// `app.log.2` → `app.log.3` (dropped), `app.log.1` → `.2`, `app.log` → `.1`.
fn rotate(dir: &Path, path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(dir.join("app.log.3"));
    for i in (1..3).rev() {
        let from = dir.join(format!("app.log.{i}"));
        if from.exists() {
            std::fs::rename(&from, dir.join(format!("app.log.{}", i + 1)))?;
        }
    }
    std::fs::rename(path, dir.join("app.log.1"))
}
