//! The web page (`GET /`) in a real browser: headless Chromium driven by
//! `tests/browser/page.mjs` (playwright-core). Needs `.ci/install-tools`
//! (chromium, node_modules); fails, never skips, when they are missing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{PATIENCE, Server};

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sidecar/ has a parent");
    workspace.join("tests/browser")
}

fn require_tools() -> (PathBuf, PathBuf) {
    let script = browser_dir().join("page.mjs");
    let pw = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        pw.exists(),
        "{} is missing: run .ci/install-tools (it runs `npm ci` in tests/browser)",
        pw.display()
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run .ci/install-tools (it installs Debian's chromium)"
    );
    (common::tool("node"), script)
}

/// `node page.mjs`, its stdout lines arriving on a channel; killed on drop
/// (Chromium exits with it: playwright talks to it over a pipe).
struct PageDriver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr_log: PathBuf,
}

impl PageDriver {
    fn start(node: &Path, script: &Path, args: &[&str], work: &Path) -> PageDriver {
        let stderr_log = work.join("page.stderr");
        let mut child = Command::new(node)
            .arg(script)
            .args(args)
            .current_dir(browser_dir())
            .env("CHROMIUM", CHROMIUM)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .env("PAGE_TIMEOUT_MS", PATIENCE.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("create page.stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {} {}: {e}", node.display(), script.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        PageDriver {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            stderr_log,
        }
    }

    /// Next stdout line, or a panic saying what was awaited and what the
    /// script said. Allows a little more than the script's own deadline so
    /// its explanation arrives first.
    fn next_line(&mut self, waiting_for: &str) -> Option<String> {
        let deadline = Instant::now() + PATIENCE + Duration::from_secs(15);
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(l) => {
                self.seen.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("timed out waiting for {waiting_for}"))
            }
        }
    }

    /// Reads lines until one equals `want`.
    fn expect(&mut self, want: &str) {
        loop {
            match self.next_line(&format!("{want:?}")) {
                Some(l) if l == want => return,
                Some(_) => {}
                None => self.fail(&format!("page.mjs ended before printing {want:?}")),
            }
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to page.mjs");
        stdin.flush().expect("flush page.mjs stdin");
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!(
            "{why}\npage.mjs stdout so far:\n  {}\npage.mjs stderr:\n{}",
            self.seen.join("\n  "),
            std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
        );
    }
}

impl Drop for PageDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// A `ROW <classes>\t<color>\t<text>` line from page.mjs.
struct Row {
    classes: String,
    color: String,
    text: String,
}

#[test]
fn page_shows_history_then_live_lines() {
    let (node, script) = require_tools();
    let work = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&[]);

    // Written before the page exists: must come from the server's history.
    let history = unique("history");
    server.append(
        "app.log",
        &format!(
            "2026-01-01T12:00:00Z INFO {history} service started\n\
             2026-01-01T12:00:01Z DEBUG cache warmed\n\
             2026-01-01T12:00:02Z WARN disk 91% full\n\
             2026-01-01T12:00:03Z ERROR request failed: <script>alert(1)</script> & more\n"
        ),
    );
    server.wait_metric("logstream_history_records", 4.0);

    let shot_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shot_dir).expect("create screenshot dir");
    let shot = shot_dir.join("page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = work.path().join("chromium-profile");
    let url = server.url("/");
    let mut page = PageDriver::start(
        &node,
        &script,
        &[
            &url,
            "--history",
            &history,
            "--stdin",
            "--screenshot",
            shot.to_str().expect("utf-8 path"),
            "--user-data-dir",
            profile.to_str().expect("utf-8 path"),
        ],
        work.path(),
    );
    page.expect(&format!("SEEN {history}"));
    page.expect("READY");

    // Written only after the page is live: must arrive over the WebSocket.
    let live = unique("live");
    server.append(
        "app.log",
        &format!("2026-01-01T12:00:04Z ERROR {live} after page load\n"),
    );
    page.send(&live);
    page.stdin = None; // EOF: no more markers
    page.expect(&format!("SEEN {live}"));

    let mut rows = Vec::new();
    loop {
        let Some(l) = page.next_line("the ROW dump and DONE") else {
            page.fail("page.mjs ended before DONE")
        };
        if l == "DONE" {
            break;
        }
        if let Some(r) = l.strip_prefix("ROW ") {
            let mut f = r.splitn(3, '\t');
            let (Some(classes), Some(color), Some(text)) = (f.next(), f.next(), f.next()) else {
                page.fail(&format!("malformed row {l:?}"))
            };
            rows.push(Row {
                classes: classes.into(),
                color: color.into(),
                text: text.into(),
            });
        }
    }
    let status = page.child.wait().expect("wait for page.mjs");
    if !status.success() {
        page.fail(&format!("page.mjs exited with {status}"));
    }

    let dump = rows
        .iter()
        .map(|r| format!("  [{}] {} | {}", r.classes, r.color, r.text))
        .collect::<Vec<_>>();
    let dump = dump.join("\n");
    let find = |needle: &str| -> usize {
        let at: Vec<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.text.contains(needle))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            at.len(),
            1,
            "{needle:?} should be shown exactly once; page lines:\n{dump}"
        );
        at[0]
    };
    let h = find(&history);
    let l = find(&live);
    assert!(
        h < l,
        "the live line should come after the history; page lines:\n{dump}"
    );
    assert_eq!(
        rows.len(),
        5,
        "4 history lines + 1 live line; page lines:\n{dump}"
    );

    // Levels become classes, and classes colours (page.css, light theme:
    // headless Chromium prefers light).
    let row = |needle: &str| &rows[find(needle)];
    for (needle, class, color) in [
        (history.as_str(), "info", "rgb(29, 31, 35)"),
        ("cache warmed", "debug", "rgb(122, 128, 138)"),
        ("disk 91% full", "warn", "rgb(154, 97, 0)"),
        ("request failed", "error", "rgb(196, 34, 42)"),
        (live.as_str(), "error", "rgb(196, 34, 42)"),
    ] {
        let r = row(needle);
        assert!(
            r.classes.split(' ').any(|c| c == class),
            "{needle:?} should have class {class}:\n{dump}"
        );
        assert_eq!(r.color, color, "colour of {needle:?}:\n{dump}");
    }
    // Markup in log lines is shown as text, not interpreted.
    assert!(
        row("request failed")
            .text
            .contains("<script>alert(1)</script> & more"),
        "HTML in a log line should be shown verbatim:\n{dump}"
    );
    // Each line names its source file.
    assert!(
        rows.iter().all(|r| r.text.contains("app.log ")),
        "every line should name app.log:\n{dump}"
    );

    // Chromium offers permessage-deflate: the history batch reached the
    // page compressed (and was shown intact, above).
    let wire = server
        .metric("logstream_compress_output_bytes_total{transport=\"ws\"}")
        .unwrap_or(0.0);
    let plain = server
        .metric("logstream_compress_input_bytes_total{transport=\"ws\"}")
        .unwrap_or(0.0);
    assert!(
        wire > 0.0 && wire < plain,
        "Chromium should have been sent compressed batches ({wire} bytes for {plain})"
    );

    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
}
