//! Test harness: starts the real `logstream` binary on a free loopback port
//! and waits for it through its own output and `/readyz`.
#![allow(dead_code, clippy::unwrap_used)] // test code

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
    stderr_log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// A deadline for waiting on events that must happen; generous because CI
/// machines are slow, never used as a sleep.
pub const PATIENCE: Duration = Duration::from_secs(30);

impl Server {
    /// `logstream serve --dir <new temp dir> --listen 127.0.0.1:0 <args>`.
    pub fn start(args: &[&str]) -> Server {
        Server::start_limited(args, None)
    }

    /// [`Server::start`] with `RLIMIT_NOFILE` set to (soft, hard) before it
    /// starts, as `prlimit --nofile` or a container runtime would.
    pub fn start_with_nofile(args: &[&str], nofile: (u64, u64)) -> Server {
        Server::start_limited(args, Some(nofile))
    }

    fn start_limited(args: &[&str], nofile: Option<(u64, u64)>) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Server::serve_in(&dir, args, nofile);
        s._tmp = Some(tmp);
        s
    }

    pub fn start_in(dir: &Path, args: &[&str]) -> Server {
        Server::serve_in(dir, args, None)
    }

    fn serve_in(dir: &Path, args: &[&str], nofile: Option<(u64, u64)>) -> Server {
        let mut full = vec![
            "serve",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        full.extend_from_slice(args);
        Server::spawn_with(dir, &full, &[], nofile)
    }

    /// `logstream sidecar` on a new temp folder, as pod `pod` of namespace `ns`.
    pub fn sidecar(ns: &str, pod: &str, args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let mut full = vec![
            "sidecar",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        full.extend_from_slice(&["--namespace", ns, "--pod", pod, "--container", "app"]);
        full.extend_from_slice(args);
        let mut s = Server::spawn(&dir, &full);
        s._tmp = Some(tmp);
        s
    }

    /// `logstream aggregator --source URL... --listen 127.0.0.1:0 <args>`.
    pub fn aggregator(sources: &[&Server], args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let urls: Vec<String> = sources.iter().map(|s| s.url("")).collect();
        let mut full = vec!["aggregator", "--listen", "127.0.0.1:0"];
        for u in &urls {
            full.extend_from_slice(&["--source", u]);
        }
        full.extend_from_slice(args);
        let mut s = Server::spawn(tmp.path(), &full);
        s._tmp = Some(tmp);
        s
    }

    /// Runs the binary with `args`; `dir` is the watched folder (or a scratch dir).
    pub fn spawn(dir: &Path, args: &[&str]) -> Server {
        Server::spawn_env(dir, args, &[])
    }

    /// [`Server::spawn`] with extra environment variables (the operator
    /// configures the injected sidecar through them).
    pub fn spawn_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Server {
        Server::spawn_with(dir, args, envs, None)
    }

    pub fn spawn_with(
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
    ) -> Server {
        let stderr_log = dir.with_extension(format!("stderr.{}.log", std::process::id()));
        let err = std::fs::File::create(&stderr_log).unwrap();
        // util-linux's prlimit sets the limit and execs the server.
        let mut cmd = match nofile {
            Some((soft, hard)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_logstream"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_logstream")),
        };
        cmd.args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = cmd.spawn().expect("start logstream");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                panic!(
                    "unexpected first line {line:?}: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            })
            .to_string();
        let s = Server {
            child,
            addr,
            dir: dir.to_path_buf(),
            stderr_log,
            _tmp: None,
        };
        s.wait_ready();
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if http_get(&self.addr, "/readyz").map(|(code, _)| code) == Some(200) {
                return;
            }
            std::thread::yield_now();
        }
        panic!("server never became ready:\n{}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for exit; returns the exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Appends raw bytes to a file in the watched folder.
    pub fn append(&self, file: &str, data: &str) {
        let path = self.dir.join(file);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(data.as_bytes()).unwrap();
    }

    /// Value of a metric line (`name{labels}`) from `/metrics`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = http_get(&self.addr, "/metrics")?;
        body.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// Waits until `series` reads exactly `want`.
    pub fn wait_metric_eq(&self, series: &str, want: f64) {
        let deadline = Instant::now() + PATIENCE;
        while self.metric(series) != Some(want) {
            assert!(
                Instant::now() < deadline,
                "{series} never became {want}: {:?}",
                self.metric(series)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `series` reaches at least `min`.
    pub fn wait_metric(&self, series: &str, min: f64) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(v) = self.metric(series)
                && v >= min
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never reached {min}: {:?}",
                self.metric(series)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

/// Minimal HTTP/1.1 GET over a raw socket: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

pub fn http_request(addr: &str, req: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    // Read the head, then exactly Content-Length bytes: the server may keep
    // the connection open.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok());
    match len {
        Some(len) => {
            while buf.len() < head_end + len {
                let n = s.read(&mut chunk).ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            let _ = s.read_to_end(&mut buf);
        }
    }
    Some((code, String::from_utf8_lossy(&buf[head_end..]).to_string()))
}

/// Finds a tool on PATH or in the CI tool cache.
pub fn tool(name: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let cached = Path::new(&home)
        .join(".cache/logstream/tools/bin")
        .join(name);
    if cached.exists() {
        return cached;
    }
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!("{name} is not installed: run .ci/install-tools (it installs every tool the tests use)");
}

/// Client options for `/ws` of `s` with `sub`.
pub fn opts(s: &Server, sub: logstream::protocol::Subscribe) -> logstream::client::ClientOptions {
    logstream::client::ClientOptions {
        base: s.url(""),
        sub,
        token: None,
    }
}

/// Waits for the `hello` (so the subscription is registered before writing),
/// checks the protocol version and returns the server's role.
pub async fn hello(c: &mut logstream::client::Connection) -> String {
    use logstream::protocol::ServerMessage;
    match tokio::time::timeout(PATIENCE, c.next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(ServerMessage::Hello { version, role, .. }) => {
            assert_eq!(version, logstream::protocol::PROTOCOL_VERSION);
            role
        }
        other => panic!("expected hello, got {other:?}"),
    }
}

/// Reads messages until `done` holds or the server closes; returns the
/// records and every other message.
pub async fn collect(
    c: &mut logstream::client::Connection,
    mut done: impl FnMut(&[logstream::protocol::Record]) -> bool,
) -> (
    Vec<logstream::protocol::Record>,
    Vec<logstream::protocol::ServerMessage>,
) {
    use logstream::protocol::ServerMessage;
    let mut recs = Vec::new();
    let mut other = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while !done(&recs) {
            match c.next().await.expect("protocol error") {
                Some(ServerMessage::Records { records, .. }) => recs.extend(records),
                Some(m) => other.push(m),
                None => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out with {} records; other {other:?}", recs.len()));
    (recs, other)
}

/// Exactly `collect` until `n` records arrived; a close before that fails.
pub async fn records(
    c: &mut logstream::client::Connection,
    n: usize,
) -> (
    Vec<logstream::protocol::Record>,
    Vec<logstream::protocol::ServerMessage>,
) {
    let (recs, other) = collect(c, |r| r.len() >= n).await;
    assert!(
        recs.len() >= n,
        "closed after {} of {n} records; other: {other:?}",
        recs.len()
    );
    (recs, other)
}
