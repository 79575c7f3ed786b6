//! `ls-loggen`: writes the data set of the history benchmark
//! (`bench/history/`): a deterministic JSON Lines file of log records, one
//! per line,
//!
//! ```text
//! {"ts":<unix ns>,"namespace":"bench","pod":"pod-NN","container":"app","file":"app.log","level":"info","line":"..."}
//! ```
//!
//! - 50 sources (`pod-00` .. `pod-49`, drawn uniformly per record); each pod
//!   writes one format, as a real app does: pods 00-16 JSON lines, 17-33
//!   logfmt, 34-49 plain text (`2026-12-01T00:00:00.123Z WARN [worker-3] ...`).
//!   The level is written inside the line in that format (`"level":"warn"`,
//!   `level=warn`, `WARN`).
//! - levels about 70% info, 15% debug, 10% warn, 5% error; lines of 100 to 300
//!   bytes: request logs (method, path, status, duration, user, trace id),
//!   cache and database debug lines, retries, slow requests, errors with
//!   stack traces on one line.
//! - timestamps evenly spread over `[start, start + 6 h)`, non-decreasing:
//!   record `i` of `n` has `start + i * 6h / n`.
//! - exactly three lines contain `needle-7f3a9c`: records `n/10`, `n/2`,
//!   `9n/10`.
//!
//! The file stops at the first record that brings it to `--bytes`. Two
//! passes over the same seeded generator: the first only measures the
//! records to find their count `n` (which the timestamps and the marker
//! positions need), the second writes them.
//!
//! Prints a JSON summary on stdout, with the answers the benchmark's queries
//! must give (`expected`): hits of the marker, lines of `pod-07` containing
//! `error` (case-sensitive substring) in the last hour of the window, and
//! the number of non-empty (level, 1-minute bucket) series points: with
//! buckets `[t, t + 1m)` (LogsQL `stats by (_time:1m)`), and with LogQL's
//! `count_over_time(...[1m])` windows `(t - 1m, t]` at `t = start + k·1m`,
//! `k = 0..=360` (a query_range from start to end, step 1m).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::json;

/// 2026-12-01T00:00:00Z in unix nanoseconds.
const DEFAULT_START_NS: i64 = 1_796_083_200_000_000_000;
const WINDOW_NS: i64 = 6 * 3600 * 1_000_000_000;
const MINUTE_NS: i64 = 60 * 1_000_000_000;
const MARKER: &str = "needle-7f3a9c";
const PODS: u64 = 50;
const MIN_LINE: usize = 100;
const MAX_LINE: usize = 300;
const LEVELS: [&str; 4] = ["info", "debug", "warn", "error"];

#[derive(Parser, Debug)]
#[command(
    name = "ls-loggen",
    about = "Write the deterministic JSON Lines data set of the history benchmark"
)]
struct Args {
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Target size in bytes: stop at the first record that reaches it.
    #[arg(long, default_value_t = 1_073_741_824)]
    bytes: u64,
    /// Seed of the generator (same seed and size: same file).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Start of the 6-hour window, unix nanoseconds (default 2026-12-01T00:00:00Z).
    #[arg(long, default_value_t = DEFAULT_START_NS)]
    start_ns: i64,
}

/// xoshiro256** seeded through SplitMix64: small, fast, and the same on
/// every platform, so the data set depends only on the seed.
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (n > 0; the bias of the multiply-shift is < n / 2^64).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Skewed towards small values: a few hot users, paths, etc.
    fn zipfish(&mut self, n: u64) -> u64 {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b)
    }
}

const PATHS: &[&str] = &[
    "/api/v1/orders",
    "/api/v1/orders/{id}",
    "/api/v1/users/{id}",
    "/api/v1/users/{id}/preferences",
    "/api/v1/cart",
    "/api/v1/cart/items",
    "/api/v1/search",
    "/api/v1/products/{id}",
    "/api/v1/products/{id}/reviews",
    "/api/v2/checkout",
    "/api/v2/payments/{id}/capture",
    "/healthz",
    "/metrics",
    "/static/js/app.min.js",
    "/login",
    "/logout",
];
const METHODS: &[&str] = &["GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE"];
const OK_STATUS: &[u32] = &[200, 200, 200, 200, 200, 201, 204, 304];
const WARN_STATUS: &[u32] = &[400, 401, 403, 404, 404, 409, 429];
const ERR_STATUS: &[u32] = &[500, 502, 503, 504];
const TABLES: &[&str] = &[
    "orders",
    "users",
    "products",
    "cart_items",
    "payments",
    "sessions",
];
const UPSTREAMS: &[&str] = &[
    "payments.svc:8443",
    "inventory.svc:8080",
    "postgres-primary:5432",
    "redis-cache:6379",
    "kafka-0.kafka:9092",
    "auth.svc:9000",
];
const ERRORS: &[&str] = &[
    "connection refused",
    "context deadline exceeded",
    "i/o timeout",
    "connection reset by peer",
    "too many open connections",
    "unexpected EOF",
    "TLS handshake timeout",
];
const STACKS: &[&str] = &[
    "java.lang.NullPointerException: Cannot invoke \"Order.getTotal()\" because \"order\" is null at com.shop.orders.OrderService.process(OrderService.java:142) at com.shop.orders.OrderController.create(OrderController.java:57) at jdk.internal.reflect.GeneratedMethodAccessor12.invoke(Unknown Source)",
    "panic: runtime error: index out of range [3] with length 3 goroutine 1187 [running]: main.(*Cart).Item(0xc000a1c000, 0x3) /app/cart.go:88 +0x1d4 main.handleCart(0xc0001b2000) /app/handlers.go:141 +0x2b9",
    "Traceback (most recent call last): File \"/app/worker.py\", line 211, in run result = self.handle(job) File \"/app/worker.py\", line 97, in handle raise ValueError(f\"bad payload for job {job.id}\") ValueError: bad payload",
    "java.sql.SQLTransientConnectionException: HikariPool-1 - Connection is not available, request timed out after 30000ms. at com.zaxxer.hikari.pool.HikariPool.createTimeoutException(HikariPool.java:696)",
];
const THREADS: &[&str] = &[
    "main",
    "worker-1",
    "worker-2",
    "worker-3",
    "http-nio-8080-exec-4",
    "scheduler",
];
const FILLER: &[&str] = &[
    " region=eu-west-1",
    " az=eu-west-1b",
    " version=2.14.3",
    " build=8c1f2e9",
    " tenant=acme",
    " node=ip-10-0-3-17",
    " shard=3",
    " client=web",
];

/// Line format of a pod.
#[derive(Clone, Copy)]
enum Format {
    Json,
    Logfmt,
    Plain,
}

fn format_of(pod: u64) -> Format {
    match pod {
        0..=16 => Format::Json,
        17..=33 => Format::Logfmt,
        _ => Format::Plain,
    }
}

fn push_hex(buf: &mut Vec<u8>, mut v: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let start = buf.len();
    buf.resize(start + digits, b'0');
    for i in (0..digits).rev() {
        buf[start + i] = HEX[(v & 15) as usize];
        v >>= 4;
    }
}

fn push_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_u64(buf, v.unsigned_abs());
}

fn push_pad(buf: &mut Vec<u8>, v: u64, width: usize) {
    let start = buf.len();
    push_u64(buf, v);
    let len = buf.len() - start;
    if len < width {
        let pad = width - len;
        buf.splice(start..start, std::iter::repeat_n(b'0', pad));
    }
}

/// A path with its `{id}` replaced by a number.
fn push_path(buf: &mut Vec<u8>, rng: &mut Rng) {
    let p = PATHS[rng.zipfish(PATHS.len() as u64) as usize];
    match p.find("{id}") {
        Some(at) => {
            buf.extend_from_slice(&p.as_bytes()[..at]);
            push_u64(buf, 10_000 + rng.below(90_000));
            buf.extend_from_slice(&p.as_bytes()[at + 4..]);
        }
        None => buf.extend_from_slice(p.as_bytes()),
    }
}

/// UTC `2026-12-01T00:00:00.123Z` of a unix nanosecond time (civil from days,
/// H. Hinnant's algorithm).
fn push_rfc3339_ms(buf: &mut Vec<u8>, ns: i64) {
    let secs = ns.div_euclid(1_000_000_000);
    let ms = ns.rem_euclid(1_000_000_000) / 1_000_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let n = |v: i64| v.unsigned_abs();
    push_pad(buf, n(y), 4);
    buf.push(b'-');
    push_pad(buf, n(m), 2);
    buf.push(b'-');
    push_pad(buf, n(d), 2);
    buf.push(b'T');
    push_pad(buf, n(sod / 3600), 2);
    buf.push(b':');
    push_pad(buf, n(sod / 60 % 60), 2);
    buf.push(b':');
    push_pad(buf, n(sod % 60), 2);
    buf.push(b'.');
    push_pad(buf, n(ms), 3);
    buf.push(b'Z');
}

/// Key/value writer in the pod's format: JSON object members or logfmt pairs.
struct Kv<'a> {
    buf: &'a mut Vec<u8>,
    fmt: Format,
}

impl Kv<'_> {
    fn str(&mut self, k: &str, v: &[u8]) {
        match self.fmt {
            Format::Json => {
                self.buf.extend_from_slice(b",\"");
                self.buf.extend_from_slice(k.as_bytes());
                self.buf.extend_from_slice(b"\":\"");
                for &c in v {
                    if c == b'"' || c == b'\\' {
                        self.buf.push(b'\\');
                    }
                    self.buf.push(c);
                }
                self.buf.push(b'"');
            }
            _ => {
                self.buf.push(b' ');
                self.buf.extend_from_slice(k.as_bytes());
                self.buf.push(b'=');
                let quote = v.iter().any(|&c| c == b' ' || c == b'"' || c == b'=');
                if quote {
                    self.buf.push(b'"');
                    for &c in v {
                        if c == b'"' || c == b'\\' {
                            self.buf.push(b'\\');
                        }
                        self.buf.push(c);
                    }
                    self.buf.push(b'"');
                } else {
                    self.buf.extend_from_slice(v);
                }
            }
        }
    }

    fn num(&mut self, k: &str, v: u64) {
        match self.fmt {
            Format::Json => {
                self.buf.extend_from_slice(b",\"");
                self.buf.extend_from_slice(k.as_bytes());
                self.buf.extend_from_slice(b"\":");
            }
            _ => {
                self.buf.push(b' ');
                self.buf.extend_from_slice(k.as_bytes());
                self.buf.push(b'=');
            }
        }
        push_u64(self.buf, v);
    }
}

/// Generator state: the scratch buffers are reused for every record.
struct Gen {
    rng: Rng,
    line: Vec<u8>,
    scratch: Vec<u8>,
}

/// One record as generated: pod number, level index, and `Gen::line`.
struct Rec {
    pod: u64,
    level: usize,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            rng: Rng::new(seed),
            line: Vec::with_capacity(512),
            scratch: Vec::with_capacity(256),
        }
    }

    /// Generates the next record's line into `self.line` (100-300 bytes).
    fn next(&mut self, ts: i64, marker: bool) -> Rec {
        let pod = self.rng.below(PODS);
        let r = self.rng.below(100);
        let level = match r {
            0..70 => 0,
            70..85 => 1,
            85..95 => 2,
            _ => 3,
        };
        let fmt = format_of(pod);
        self.line.clear();
        let lvl = LEVELS[level];
        // Head: the level and the time where the format puts them.
        match fmt {
            Format::Json => {
                self.line.extend_from_slice(b"{\"ts\":\"");
                push_rfc3339_ms(&mut self.line, ts);
                self.line.extend_from_slice(b"\",\"level\":\"");
                self.line.extend_from_slice(lvl.as_bytes());
                self.line.push(b'"');
            }
            Format::Logfmt => {
                self.line.extend_from_slice(b"time=");
                push_rfc3339_ms(&mut self.line, ts);
                self.line.extend_from_slice(b" level=");
                self.line.extend_from_slice(lvl.as_bytes());
            }
            Format::Plain => {
                push_rfc3339_ms(&mut self.line, ts);
                self.line.push(b' ');
                let up = match level {
                    0 => "INFO ",
                    1 => "DEBUG",
                    2 => "WARN ",
                    _ => "ERROR",
                };
                self.line.extend_from_slice(up.as_bytes());
                self.line.extend_from_slice(b" [");
                let th = *self.rng.pick(THREADS);
                self.line.extend_from_slice(th.as_bytes());
                self.line.extend_from_slice(b"] ");
            }
        }
        if marker {
            self.body_marker(fmt);
        } else {
            match fmt {
                Format::Plain => self.body_plain(level),
                _ => self.body_kv(fmt, level),
            }
        }
        if let Format::Json = fmt {
            self.line.push(b'}');
        }
        // Pad short lines with the static fields real apps add; cut long
        // ones (stack traces) at 300 bytes.
        let mut i = 0;
        while self.line.len() < MIN_LINE {
            let f = FILLER[(pod as usize + i) % FILLER.len()];
            let at = if let Format::Json = fmt {
                self.line.len() - 1
            } else {
                self.line.len()
            };
            let (k, v) = f[1..].split_once('=').unwrap_or(("x", "y"));
            let piece = match fmt {
                Format::Json => format!(",\"{k}\":\"{v}\""),
                _ => f.to_string(),
            };
            self.line.splice(at..at, piece.bytes());
            i += 1;
        }
        if self.line.len() > MAX_LINE {
            self.line.truncate(MAX_LINE);
            // A cut JSON line is still closed with `..."}` when it was inside a string.
            if let Format::Json = fmt {
                self.line.truncate(MAX_LINE - 5);
                while self.line.last() == Some(&b'\\') {
                    self.line.pop();
                }
                self.line.extend_from_slice(b"...\"}");
            }
        }
        Rec { pod, level }
    }

    fn trace_id(&mut self) {
        self.scratch.clear();
        let a = self.rng.next_u64();
        let b = self.rng.next_u64();
        push_hex(&mut self.scratch, a, 16);
        push_hex(&mut self.scratch, b, 16);
    }

    fn body_marker(&mut self, fmt: Format) {
        let probe = self.rng.below(1000);
        match fmt {
            Format::Plain => {
                self.line
                    .extend_from_slice(b"canary probe passed token=needle-7f3a9c probe=");
                push_u64(&mut self.line, probe);
            }
            _ => {
                let mut kv = Kv {
                    buf: &mut self.line,
                    fmt,
                };
                kv.str("msg", b"canary probe passed");
                kv.str("token", MARKER.as_bytes());
                kv.num("probe", probe);
            }
        }
    }

    fn body_kv(&mut self, fmt: Format, level: usize) {
        let kind = self.rng.below(8);
        let user = 1000 + self.rng.zipfish(5000);
        self.trace_id();
        let mut path = Vec::with_capacity(48);
        push_path(&mut path, &mut self.rng);
        let method = *self.rng.pick(METHODS);
        let dur = self.rng.zipfish(400) + 1;
        let rng = &mut self.rng;
        let mut kv = Kv {
            buf: &mut self.line,
            fmt,
        };
        match (level, kind) {
            (0, _) => {
                if kind == 7 {
                    kv.str("msg", b"job completed");
                    kv.str("job", b"reindex-products");
                    kv.num("items", rng.below(5000));
                    kv.num("errors", 0);
                    kv.num("duration_ms", dur * 10);
                } else {
                    kv.str("msg", b"request completed");
                    kv.str("method", method.as_bytes());
                    kv.str("path", &path);
                    kv.num("status", u64::from(*rng.pick(OK_STATUS)));
                    kv.num("duration_ms", dur);
                    kv.num("bytes", 200 + rng.below(20_000));
                    kv.num("user_id", user);
                }
                kv.str("trace_id", &self.scratch);
            }
            (1, _) => {
                if kind < 4 {
                    kv.str("msg", b"cache lookup");
                    let mut key = b"user:".to_vec();
                    push_u64(&mut key, user);
                    key.extend_from_slice(b":profile");
                    kv.str("key", &key);
                    kv.str("hit", if rng.below(4) > 0 { b"true" } else { b"false" });
                    kv.str("backend", b"redis-cache:6379");
                } else {
                    kv.str("msg", b"query executed");
                    let table = *rng.pick(TABLES);
                    let mut sql = b"SELECT * FROM ".to_vec();
                    sql.extend_from_slice(table.as_bytes());
                    sql.extend_from_slice(b" WHERE id = $1 LIMIT 50");
                    kv.str("sql", &sql);
                    kv.num("rows", rng.below(50));
                    kv.num("duration_us", dur * 37);
                }
                kv.str("trace_id", &self.scratch);
            }
            (2, _) => {
                if kind < 4 {
                    kv.str("msg", b"slow request");
                    kv.str("method", method.as_bytes());
                    kv.str("path", &path);
                    kv.num("status", u64::from(*rng.pick(WARN_STATUS)));
                    kv.num("duration_ms", 1000 + dur * 20);
                    kv.num("user_id", user);
                } else {
                    kv.str("msg", b"retrying upstream call");
                    kv.str("upstream", rng.pick(UPSTREAMS).as_bytes());
                    kv.num("attempt", 1 + rng.below(4));
                    kv.num("backoff_ms", 100 << rng.below(5));
                    kv.str("reason", rng.pick(ERRORS).as_bytes());
                }
                kv.str("trace_id", &self.scratch);
            }
            _ => {
                if kind < 4 {
                    kv.str("msg", b"request failed");
                    kv.str("method", method.as_bytes());
                    kv.str("path", &path);
                    kv.num("status", u64::from(*rng.pick(ERR_STATUS)));
                    let mut e = b"upstream error: ".to_vec();
                    e.extend_from_slice(rng.pick(ERRORS).as_bytes());
                    kv.str("error", &e);
                    kv.str("trace_id", &self.scratch);
                } else {
                    kv.str("msg", b"unhandled exception");
                    kv.str("trace_id", &self.scratch);
                    kv.str("stack", rng.pick(STACKS).as_bytes());
                }
            }
        }
    }

    fn body_plain(&mut self, level: usize) {
        let kind = self.rng.below(8);
        let user = 1000 + self.rng.zipfish(5000);
        let dur = self.rng.zipfish(400) + 1;
        let method = *self.rng.pick(METHODS);
        self.trace_id();
        let b = &mut self.line;
        let rng = &mut self.rng;
        match level {
            0 => {
                if kind == 7 {
                    b.extend_from_slice(b"Scheduled job reindex-products finished: ");
                    push_u64(b, rng.below(5000));
                    b.extend_from_slice(b" items, 0 errors in ");
                    push_u64(b, dur * 10);
                    b.extend_from_slice(b" ms");
                } else {
                    b.extend_from_slice(b"10.0.");
                    push_u64(b, rng.below(8));
                    b.push(b'.');
                    push_u64(b, rng.below(250));
                    b.extend_from_slice(b" - user");
                    push_u64(b, user);
                    b.extend_from_slice(b" \"");
                    b.extend_from_slice(method.as_bytes());
                    b.push(b' ');
                    push_path(b, rng);
                    b.extend_from_slice(b" HTTP/1.1\" ");
                    push_u64(b, u64::from(*rng.pick(OK_STATUS)));
                    b.push(b' ');
                    push_u64(b, 200 + rng.below(20_000));
                    b.push(b' ');
                    push_u64(b, dur);
                    b.extend_from_slice(b"ms");
                }
            }
            1 => {
                if kind < 4 {
                    b.extend_from_slice(b"Cache lookup key=user:");
                    push_u64(b, user);
                    b.extend_from_slice(b":profile hit=");
                    b.extend_from_slice(if rng.below(4) > 0 { b"true" } else { b"false" });
                } else {
                    b.extend_from_slice(b"Executing query on ");
                    b.extend_from_slice(rng.pick(TABLES).as_bytes());
                    b.extend_from_slice(b": returned ");
                    push_u64(b, rng.below(50));
                    b.extend_from_slice(b" rows in ");
                    push_u64(b, dur * 37);
                    b.extend_from_slice(b"us");
                }
            }
            2 => {
                if kind < 4 {
                    b.extend_from_slice(b"Slow request ");
                    b.extend_from_slice(method.as_bytes());
                    b.push(b' ');
                    push_path(b, rng);
                    b.extend_from_slice(b" took ");
                    push_u64(b, 1000 + dur * 20);
                    b.extend_from_slice(b"ms status=");
                    push_u64(b, u64::from(*rng.pick(WARN_STATUS)));
                } else {
                    b.extend_from_slice(b"Retrying call to ");
                    b.extend_from_slice(rng.pick(UPSTREAMS).as_bytes());
                    b.extend_from_slice(b" (attempt ");
                    push_u64(b, 1 + rng.below(4));
                    b.extend_from_slice(b"): ");
                    b.extend_from_slice(rng.pick(ERRORS).as_bytes());
                }
            }
            _ => {
                if kind < 4 {
                    b.extend_from_slice(b"Request failed ");
                    b.extend_from_slice(method.as_bytes());
                    b.push(b' ');
                    push_path(b, rng);
                    b.extend_from_slice(b" status=");
                    push_u64(b, u64::from(*rng.pick(ERR_STATUS)));
                    b.extend_from_slice(b": upstream error: ");
                    b.extend_from_slice(rng.pick(ERRORS).as_bytes());
                } else {
                    b.extend_from_slice(b"Unhandled exception: ");
                    b.extend_from_slice(rng.pick(STACKS).as_bytes());
                }
            }
        }
        b.extend_from_slice(b" trace_id=");
        b.extend_from_slice(&self.scratch);
    }
}

/// Bytes of the record around its line (`{"ts":...,"line":"` and `"}\n`),
/// without the escaping of the line.
fn record_overhead(ts_digits: usize, level: usize) -> usize {
    // pod-NN: always two digits
    r#"{"ts":,"namespace":"bench","pod":"pod-NN","container":"app","file":"app.log","level":"","line":""}"#.len()
        + 1
        + ts_digits
        + LEVELS[level].len()
}

fn escaped_len(line: &[u8]) -> usize {
    line.len() + line.iter().filter(|&&c| c == b'"' || c == b'\\').count()
}

fn digits(v: i64) -> usize {
    let mut b = Vec::with_capacity(20);
    push_i64(&mut b, v);
    b.len()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.bytes == 0 {
        bail!("--bytes must be > 0");
    }
    let t0 = Instant::now();
    let end_ns = args
        .start_ns
        .checked_add(WINDOW_NS)
        .context("--start-ns too large")?;
    let ts_digits = digits(args.start_ns);
    if digits(end_ns - 1) != ts_digits {
        bail!("the window must not change the number of digits of the timestamps");
    }

    // Pass 1: the number of records that reach --bytes.
    let mut g = Gen::new(args.seed);
    let mut n: u64 = 0;
    let mut total: u64 = 0;
    while total < args.bytes {
        let rec = g.next(args.start_ns, false);
        total += (record_overhead(ts_digits, rec.level) + escaped_len(&g.line)) as u64;
        n += 1;
    }
    let pass1_secs = t0.elapsed().as_secs_f64();

    // Pass 2: the same records, with their timestamps and the markers.
    let markers = [n / 10, n / 2, n * 9 / 10];
    let file = File::create(&args.out).with_context(|| format!("create {:?}", args.out))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut g = Gen::new(args.seed);
    let mut rec_buf: Vec<u8> = Vec::with_capacity(1024);
    let mut bytes: u64 = 0;
    let mut levels = [0u64; 4];
    let mut marker_hits = 0u64;
    let mut marker_lines = Vec::new();
    let mut buckets = vec![[0u64; 4]; (WINDOW_NS / MINUTE_NS) as usize];
    // LogQL's count_over_time(...[1m]) at step t counts (t - 1m, t]; a
    // query_range from start to end (inclusive) with step 1m evaluates at
    // t = start + k·1m, k = 0..=360: a record goes to k = ceil(off / 1m).
    let mut loki_points = vec![[0u64; 4]; (WINDOW_NS / MINUTE_NS) as usize + 1];
    let last_hour = end_ns - 3600 * 1_000_000_000;
    let mut pod07_error_last_hour = 0u64;
    let mut pod07_last_hour = 0u64;
    let mut first_ts = 0i64;
    let mut last_ts = 0i64;
    for i in 0..n {
        let off = (i128::from(i) * i128::from(WINDOW_NS) / i128::from(n)) as i64;
        let ts = args.start_ns + off;
        let is_marker = markers.contains(&i);
        let rec = g.next(ts, is_marker);
        if i == 0 {
            first_ts = ts;
        }
        last_ts = ts;
        rec_buf.clear();
        rec_buf.extend_from_slice(b"{\"ts\":");
        push_i64(&mut rec_buf, ts);
        rec_buf.extend_from_slice(b",\"namespace\":\"bench\",\"pod\":\"pod-");
        push_pad(&mut rec_buf, rec.pod, 2);
        rec_buf.extend_from_slice(b"\",\"container\":\"app\",\"file\":\"app.log\",\"level\":\"");
        rec_buf.extend_from_slice(LEVELS[rec.level].as_bytes());
        rec_buf.extend_from_slice(b"\",\"line\":\"");
        for &c in &g.line {
            if c == b'"' || c == b'\\' {
                rec_buf.push(b'\\');
            }
            rec_buf.push(c);
        }
        rec_buf.extend_from_slice(b"\"}\n");
        w.write_all(&rec_buf)?;
        bytes += rec_buf.len() as u64;
        levels[rec.level] += 1;
        buckets[(off / MINUTE_NS) as usize][rec.level] += 1;
        loki_points[((off + MINUTE_NS - 1) / MINUTE_NS) as usize][rec.level] += 1;
        if contains(&g.line, MARKER.as_bytes()) {
            marker_hits += 1;
            marker_lines.push(i + 1);
        }
        if rec.pod == 7 && ts >= last_hour {
            pod07_last_hour += 1;
            if contains(&g.line, b"error") {
                pod07_error_last_hour += 1;
            }
        }
    }
    w.flush()?;
    drop(w);
    let secs = t0.elapsed().as_secs_f64();
    if marker_hits != 3 {
        bail!("the marker is in {marker_hits} lines, not 3: file too small?");
    }
    let series_points: usize = buckets
        .iter()
        .map(|b| b.iter().filter(|&&c| c > 0).count())
        .sum();
    let minutes_nonempty = buckets.iter().filter(|b| b.iter().any(|&c| c > 0)).count();
    let loki_series_points: usize = loki_points
        .iter()
        .map(|b| b.iter().filter(|&&c| c > 0).count())
        .sum();
    let boundary_records: u64 = loki_points[0].iter().sum();
    let summary = json!({
        "out": args.out,
        "seed": args.seed,
        "target_bytes": args.bytes,
        "lines": n,
        "bytes": bytes,
        "start_ns": args.start_ns,
        "end_ns": end_ns,
        "first_ts_ns": first_ts,
        "last_ts_ns": last_ts,
        "sources": PODS,
        "levels": {
            "info": levels[0], "debug": levels[1], "warn": levels[2], "error": levels[3],
        },
        "marker": MARKER,
        "marker_count": marker_hits,
        "marker_line_numbers": marker_lines,
        "expected": {
            "a_marker_hits": marker_hits,
            "b_pod07_error_substring_last_hour": pod07_error_last_hour,
            "b_pod07_lines_last_hour": pod07_last_hour,
            "b_range_ns": [last_hour, end_ns],
            "c_total": n,
            "c_minutes_nonempty": minutes_nonempty,
            "c_level_minute_points": series_points,
            "c_loki_step_points": loki_series_points,
            "c_loki_records_at_start_point": boundary_records,
        },
        "secs": secs,
        "pass1_secs": pass1_secs,
        "mb_per_s_written": bytes as f64 / 1e6 / secs,
        "mb_per_s_generated_both_passes": 2.0 * bytes as f64 / 1e6 / secs,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let mut b = Vec::new();
        push_rfc3339_ms(&mut b, DEFAULT_START_NS + 3_723_456_000_000);
        assert_eq!(b, b"2026-12-01T01:02:03.456Z");
    }

    #[test]
    fn lines_within_bounds_and_deterministic() {
        let mut g = Gen::new(7);
        let mut h = Gen::new(7);
        for i in 0..20_000 {
            g.next(DEFAULT_START_NS, i % 1000 == 0);
            h.next(DEFAULT_START_NS, i % 1000 == 0);
            assert!(
                (MIN_LINE..=MAX_LINE).contains(&g.line.len()),
                "{}",
                g.line.len()
            );
            assert_eq!(g.line, h.line);
            assert!(!g.line.contains(&b'\n'));
        }
    }
}
