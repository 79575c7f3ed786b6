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

// ---------------------------------------------------------------------------
// The viewer's behaviours, step by step: `tests/browser/viewer.mjs` runs one
// JSON command per line and answers `OK <json>` or `ERR <reason>`, while the
// test writes the server's files between steps. Every wait is on a page
// condition, never a time.

struct Viewer {
    page: PageDriver,
    _work: tempfile::TempDir,
}

impl Viewer {
    fn start() -> Viewer {
        let (node, _) = require_tools();
        let work = tempfile::tempdir().expect("tempdir");
        let profile = work.path().join("chromium-profile");
        let page = PageDriver::start(
            &node,
            &browser_dir().join("viewer.mjs"),
            &[
                "--user-data-dir",
                profile.to_str().expect("utf-8 path"),
                // Not UTC, so the local/UTC toggle shows a difference.
                "--timezone",
                "Asia/Kolkata",
            ],
            work.path(),
        );
        Viewer { page, _work: work }
    }

    fn call(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        self.page.send(&cmd.to_string());
        let Some(answer) = self.page.next_line(&format!("the answer to {cmd}")) else {
            self.page.fail(&format!("viewer.mjs ended during {cmd}"))
        };
        if let Some(v) = answer.strip_prefix("OK ") {
            return serde_json::from_str(v).unwrap_or(serde_json::Value::Null);
        }
        self.page.fail(&format!("{cmd} failed: {answer}"))
    }

    fn open(&mut self, url: &str) {
        let status = self.call(serde_json::json!({"op": "open", "url": url}));
        assert_eq!(status, 200, "GET {url}");
        self.wait("document.getElementById('status').textContent === 'live'");
    }
    fn wait(&mut self, js: &str) {
        self.call(serde_json::json!({"op": "wait", "js": js}));
    }
    fn eval(&mut self, js: &str) -> serde_json::Value {
        self.call(serde_json::json!({"op": "eval", "js": js}))
    }
    fn click(&mut self, sel: &str) {
        self.call(serde_json::json!({"op": "click", "sel": sel}));
    }
    fn fill(&mut self, sel: &str, text: &str) {
        self.call(serde_json::json!({"op": "fill", "sel": sel, "text": text}));
    }
    fn press(&mut self, key: &str) {
        self.call(serde_json::json!({"op": "press", "key": key}));
    }
    /// Waits until the view holds a line containing `needle`.
    fn wait_line(&mut self, needle: &str) {
        self.wait(&format!(
            "window.logstreamStats.lines().some(l => l.includes({}))",
            js_str(needle)
        ));
    }
    /// Every line the view holds (continuation lines included).
    fn lines(&mut self) -> Vec<String> {
        serde_json::from_value(self.eval("window.logstreamStats.lines()")).expect("lines")
    }
    fn notices(&mut self) -> Vec<String> {
        serde_json::from_value(self.eval("window.logstreamStats.notices()")).expect("notices")
    }
    fn url_param(&mut self, name: &str) -> Option<String> {
        self.eval(&format!(
            "new URLSearchParams(location.search).get({})",
            js_str(name)
        ))
        .as_str()
        .map(String::from)
    }
    fn shot(&mut self, name: &str) {
        let path = screenshot_path(name);
        self.call(serde_json::json!({"op": "shot", "path": path.to_str().expect("utf-8 path")}));
        eprintln!("screenshot: {}", path.display());
    }
}

/// A JS string literal.
fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Screenshots go to the test's tmp dir, or with `LOGSTREAM_SCREENSHOTS=DIR`
/// to DIR (docs/screenshots, for the README).
fn screenshot_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("LOGSTREAM_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser"));
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    dir.join(name)
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("2026-01-01T12:00:00Z INFO {prefix}-{i} ok\n"))
        .collect()
}

/// `{file: counter text}` of the source panel, as a JS expression.
const SOURCE_COUNTS: &str = "JSON.stringify(Object.fromEntries(Array.from(\
     document.querySelectorAll('[data-testid=source]'), \
     e => [e.dataset.file, e.querySelector('[data-testid=count]').textContent])))";

#[test]
fn sources_panel_lists_files_with_live_counters_and_selection_filters_the_stream() {
    let server = Server::start(&[]);
    let tag = unique("src");
    server.append("a.log", &numbered(&format!("{tag}-a"), 0..3));
    server.append("b.log", &numbered(&format!("{tag}-b"), 0..2));
    server.append("c.log", &numbered(&format!("{tag}-c"), 0..4));
    server.wait_metric("logstream_history_records", 9.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait("document.querySelector('[data-testid=sources]') !== null");
    v.wait(&format!(
        "{SOURCE_COUNTS} === {}",
        js_str(r#"{"a.log":"3","b.log":"2","c.log":"4"}"#)
    ));
    // Counters are live.
    server.append("c.log", &numbered(&format!("{tag}-c"), 4..6));
    v.wait(&format!(
        "{SOURCE_COUNTS} === {}",
        js_str(r#"{"a.log":"3","b.log":"2","c.log":"6"}"#)
    ));

    // Each source a colour of its own, the same in the panel and on its lines.
    let colours = v.eval(
        "Array.from(document.querySelectorAll('[data-testid=source]'), e => [e.dataset.file, \
         getComputedStyle(e.querySelector('.sw')).backgroundColor])",
    );
    let colours: Vec<(String, String)> = serde_json::from_value(colours).expect("colours");
    assert_eq!(colours.len(), 3);
    let distinct: std::collections::BTreeSet<&String> = colours.iter().map(|(_, c)| c).collect();
    assert_eq!(
        distinct.len(),
        3,
        "three sources, three colours: {colours:?}"
    );
    let line_colours = v.eval(
        "Array.from(document.querySelectorAll('[data-testid=line] .s'), s => [s.textContent, \
         getComputedStyle(s).color])",
    );
    let line_colours: Vec<(String, String)> =
        serde_json::from_value(line_colours).expect("line colours");
    assert!(!line_colours.is_empty());
    for (file, c) in &line_colours {
        let want = &colours
            .iter()
            .find(|(f, _)| f == file)
            .expect("known file")
            .1;
        assert_eq!(c, want, "lines of {file} take its panel colour");
    }

    // Two of three selected: the stream's file filter, and only their lines.
    v.click("[data-testid=source][data-file='a.log']");
    v.wait("new URLSearchParams(location.search).get('file') === 'a.log'");
    v.click("[data-testid=source][data-file='b.log']");
    v.wait("new URLSearchParams(location.search).get('file') === '{a.log,b.log}'");
    v.wait_line(&format!("{tag}-b-1"));
    let lines = v.lines();
    assert_eq!(lines.len(), 5, "a's 3 and b's 2 lines: {lines:?}");
    assert!(lines.iter().all(|l| !l.contains(&format!("{tag}-c"))));
    let selected = v.eval(
        "Array.from(document.querySelectorAll('[data-testid=source].sel'), e => e.dataset.file)",
    );
    assert_eq!(selected, serde_json::json!(["a.log", "b.log"]));

    // A line of c (published first) never shows; b's next line does.
    server.append("c.log", &numbered(&format!("{tag}-c"), 6..7));
    v.wait(&format!(
        "{SOURCE_COUNTS} === {}",
        js_str(r#"{"a.log":"3","b.log":"2","c.log":"7"}"#)
    ));
    server.append("b.log", &numbered(&format!("{tag}-b"), 2..3));
    v.wait_line(&format!("{tag}-b-2"));
    assert!(
        v.lines().iter().all(|l| !l.contains(&format!("{tag}-c"))),
        "c.log is not selected"
    );
    v.shot("sidecar.png");

    // "all" clears the selection.
    v.click("[data-testid=sources-clear]");
    v.wait("!new URLSearchParams(location.search).get('file')");
    v.wait_line(&format!("{tag}-c-6"));
}

#[test]
fn aggregator_source_panel_shows_the_pods_of_three_sidecars() {
    let sidecars: Vec<Server> = ["web-1", "web-2", "worker-1"]
        .iter()
        .map(|pod| Server::sidecar("shop", pod, &[]))
        .collect();
    let tag = unique("agg");
    for (i, s) in sidecars.iter().enumerate() {
        s.append("app.log", &numbered(&format!("{tag}-p{i}"), 0..i + 2));
    }
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(&refs, &["--reorder-window", "20ms"]);
    agg.wait_metric("logstream_history_records", 9.0);

    let mut v = Viewer::start();
    v.open(&agg.url("/"));
    v.wait("document.getElementById('role').textContent.includes('aggregator')");
    v.wait("document.querySelectorAll('[data-testid=pod]').length === 3");
    let pods = v.eval(
        "Array.from(document.querySelectorAll('[data-testid=source]'), e => \
         [e.dataset.pod, e.dataset.container, e.dataset.file])",
    );
    assert_eq!(
        pods,
        serde_json::json!([
            ["web-1", "app", "app.log"],
            ["web-2", "app", "app.log"],
            ["worker-1", "app", "app.log"]
        ])
    );
    let counts = "JSON.stringify(Array.from(document.querySelectorAll('[data-testid=source]'), \
                  e => e.querySelector('[data-testid=count]').textContent))";
    v.wait(&format!("{counts} === '[\"2\",\"3\",\"4\"]'"));
    // Lines name their pod when there are several.
    v.wait_line(&format!("{tag}-p2-3"));
    let label = v.eval(&format!(
        "Array.from(document.querySelectorAll('[data-testid=line]')).find(d => \
         d.textContent.includes({})).querySelector('.s').textContent",
        js_str(&format!("{tag}-p2-3"))
    ));
    assert_eq!(label, "worker-1/app/app.log");

    // A pod's new lines move its counter.
    sidecars[1].append("app.log", &numbered(&format!("{tag}-p1"), 3..6));
    v.wait(&format!("{counts} === '[\"2\",\"6\",\"4\"]'"));
    v.shot("aggregator.png");

    // Selecting a pod filters by pod.
    v.click("[data-testid=pod][data-pod='web-2']");
    v.wait("new URLSearchParams(location.search).get('pod') === 'web-2'");
    v.wait_line(&format!("{tag}-p1-5"));
    let lines = v.lines();
    assert_eq!(lines.len(), 6, "web-2's lines only: {lines:?}");
    assert!(lines.iter().all(|l| l.contains(&format!("{tag}-p1-"))));
}

#[test]
fn lines_show_json_fields_logfmt_keys_grouped_stack_traces_and_either_time_zone() {
    let server = Server::start(&[]);
    let tag = unique("render");
    server.append(
        "app.log",
        &format!(
            "{{\"level\":\"info\",\"msg\":\"{tag} order placed\",\"order_id\":4711,\"user\":\"ada\",\"items\":[1,2]}}\n\
             level=warn msg=\"{tag} slow query\" duration_ms=812 table=orders\n\
             2026-01-01T12:00:00Z ERROR {tag} request failed\n\
             java.lang.IllegalStateException: boom\n\
             \tat com.shop.Orders.place(Orders.java:42)\n\
             \tat com.shop.Api.handle(Api.java:7)\n\
             Caused by: java.io.IOException: disk\n\
             \t... 12 more\n\
             2026-01-01T12:00:01Z ERROR {tag} worker crashed\n\
             Traceback (most recent call last):\n\
             \x20 File \"worker.py\", line 3, in <module>\n\
             \x20   run()\n\
             ValueError: bad input\n\
             2026-01-01T12:00:02Z INFO {tag} after the traces\n"
        ),
    );
    server.wait_metric("logstream_history_records", 14.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_line(&format!("{tag} after the traces"));
    // Rows of the view: five heads, each trace folded into its first line.
    let rows = "Array.from(document.querySelectorAll('[data-testid=line]'), d => d.querySelector('.x') ? d.querySelector('.x').textContent : d.textContent)";
    let shown: Vec<String> = serde_json::from_value(v.eval(rows)).expect("rows");
    assert_eq!(shown.len(), 5, "stack traces are grouped: {shown:?}");
    // A JSON line's fields, and each trace folded under its log line.
    let expanders =
        v.eval("Array.from(document.querySelectorAll('[data-testid=expand]'), e => e.textContent)");
    assert_eq!(
        expanders,
        serde_json::json!(["▸ 4 fields", "▸ +5 lines", "▸ +4 lines"])
    );
    assert_eq!(
        shown[0],
        format!("{tag} order placed"),
        "a JSON line shows its message"
    );

    // logfmt keys are marked.
    let keys = v.eval(&format!(
        "Array.from(Array.from(document.querySelectorAll('[data-testid=line]')).find(d => \
         d.textContent.includes({})).querySelectorAll('.x .k'), k => k.textContent)",
        js_str(&format!("{tag} slow query"))
    ));
    assert_eq!(
        keys,
        serde_json::json!(["level", "msg", "duration_ms", "table"])
    );

    // Expanding the JSON line lists its fields, one row each.
    v.click("[data-testid=expand] >> nth=0");
    v.wait("document.querySelectorAll('[data-testid=field]').length === 4");
    let fields =
        v.eval("Array.from(document.querySelectorAll('[data-testid=field]'), d => d.textContent)");
    assert_eq!(
        fields,
        serde_json::json!(["level: info", "order_id: 4711", "user: ada", "items: [1,2]"])
    );
    v.shot("json-expanded.png");
    v.click("[data-testid=expand] >> nth=0");
    v.wait("document.querySelectorAll('[data-testid=field]').length === 0");

    // Expanding the Java trace shows its lines; collapsing hides them.
    v.click("[data-testid=expand] >> nth=1");
    v.wait("document.querySelectorAll('[data-testid=line].cont').length === 5");
    let trace = v.eval(
        "Array.from(document.querySelectorAll('[data-testid=line].cont'), d => d.textContent)",
    );
    assert_eq!(
        trace,
        serde_json::json!([
            "java.lang.IllegalStateException: boom",
            "\tat com.shop.Orders.place(Orders.java:42)",
            "\tat com.shop.Api.handle(Api.java:7)",
            "Caused by: java.io.IOException: disk",
            "\t... 12 more"
        ])
    );
    v.shot("stacktrace.png");
    v.click("[data-testid=expand] >> nth=1");
    v.wait("document.querySelectorAll('[data-testid=line].cont').length === 0");

    // Local time (the browser is in Asia/Kolkata) or UTC, as the record's ts.
    let time = "(() => { const t = document.querySelector('[data-testid=line] .t'); \
                return [t.textContent, t.title.slice(11, 23)]; })()";
    let (local, utc): (String, String) = serde_json::from_value(v.eval(time)).expect("time");
    assert_ne!(local, utc, "local time is shown first");
    v.click("[data-testid=tz]");
    v.wait("new URLSearchParams(location.search).get('tz') === 'utc'");
    let (shown_utc, utc): (String, String) = serde_json::from_value(v.eval(time)).expect("time");
    assert_eq!(shown_utc, utc, "UTC is the record's own time");
}

impl Viewer {
    fn select(&mut self, sel: &str, value: &str) {
        self.call(serde_json::json!({"op": "select", "sel": sel, "value": value}));
    }
    fn wait_lines(&mut self, want: &[String]) {
        self.wait(&format!(
            "JSON.stringify(window.logstreamStats.lines()) === {}",
            js_str(&serde_json::to_string(want).expect("lines serialise"))
        ));
    }
}

#[test]
fn find_filters_on_the_server_highlights_matches_and_shows_regex_errors_in_place() {
    let server = Server::start(&[]);
    let tag = unique("find");
    let line = |level: &str, text: &str| format!("2026-01-01T12:00:00Z {level} {tag} {text}");
    let (one, two, three, four) = (
        line("INFO", "alpha one"),
        line("INFO", "beta two"),
        line("INFO", "ALPHA three"),
        line("WARN", "alpha four"),
    );
    server.append("app.log", &format!("{one}\n{two}\n{three}\n{four}\n"));
    server.wait_metric("logstream_history_records", 4.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_lines(&[one.clone(), two.clone(), three.clone(), four.clone()]);

    // Case-sensitive by default: the server filters, the page marks.
    v.fill("[data-testid=grep]", "alpha");
    v.wait("new URLSearchParams(location.search).get('grep') === 'alpha'");
    v.wait_lines(&[one.clone(), four.clone()]);
    let marks =
        "Array.from(document.querySelectorAll('[data-testid=line] mark'), m => m.textContent)";
    // (Rendered on the next frame: waited for, like the rest.)
    v.wait(&format!(
        "JSON.stringify({marks}) === '[\"alpha\",\"alpha\"]'"
    ));

    // Either case.
    v.click("[data-testid=case]");
    v.wait("new URLSearchParams(location.search).get('icase') === '1'");
    v.wait_lines(&[one.clone(), three.clone(), four.clone()]);
    v.wait(&format!(
        "JSON.stringify({marks}) === '[\"alpha\",\"ALPHA\",\"alpha\"]'"
    ));

    // Levels.
    v.select("[data-testid=level]", "warn+");
    v.wait("new URLSearchParams(location.search).get('level') === 'warn+'");
    v.wait_lines(std::slice::from_ref(&four));

    // An invalid regex: the server's reason in place; the old filter streams on.
    v.fill("[data-testid=grep]", "alpha(");
    v.wait("!document.querySelector('[data-testid=find-error]').hidden");
    let why = v.eval("document.querySelector('[data-testid=find-error]').textContent");
    assert!(
        why.as_str()
            .is_some_and(|w| w.starts_with("grep: invalid regular expression")),
        "the server's message: {why}"
    );
    assert_eq!(v.url_param("grep").as_deref(), Some("alpha"));
    let live = line("ERROR", "Alpha live");
    server.append("app.log", &format!("{live}\n"));
    v.wait_lines(&[four.clone(), live.clone()]);
    // Fixing it clears the message.
    v.fill("[data-testid=grep]", "live");
    v.wait("document.querySelector('[data-testid=find-error]').hidden");
    v.wait_lines(std::slice::from_ref(&live));
}

#[test]
fn follow_stops_on_scroll_up_counts_new_lines_and_pause_holds_lines() {
    let server = Server::start(&[]);
    let tag = unique("flow");
    server.append("app.log", &numbered(&tag, 0..300));
    server.wait_metric("logstream_history_records", 300.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_line(&format!("{tag}-299 "));
    let last_visible = |n: usize| {
        format!(
            "(() => {{ const log = document.getElementById('log'); \
             const d = Array.from(document.querySelectorAll('[data-testid=line]')).find(d => \
             d.textContent.includes({})); if (!d) return false; const top = d.offsetTop; \
             return top >= log.scrollTop && top + d.offsetHeight <= log.scrollTop + log.clientHeight + 1; }})()",
            js_str(&format!("{tag}-{n} "))
        )
    };
    v.wait(&last_visible(299));
    assert_eq!(v.eval("window.logstreamStats.follow()"), true);

    // Scrolling up stops following; new lines are counted, not scrolled to.
    v.call(serde_json::json!({"op": "wheel", "dy": -3000}));
    v.wait(
        "!window.logstreamStats.follow() && !document.querySelector('[data-testid=jump]').hidden",
    );
    assert_eq!(
        v.eval("document.querySelector('[data-testid=follow]').getAttribute('aria-pressed')"),
        "false"
    );
    server.append("app.log", &numbered(&tag, 300..305));
    v.wait("document.querySelector('[data-testid=jump]').textContent === '5 new lines — jump to latest'");
    assert_eq!(v.eval(&last_visible(304)), false);
    v.click("[data-testid=jump]");
    v.wait(&last_visible(304));
    v.wait("window.logstreamStats.follow() && document.querySelector('[data-testid=jump]').hidden");

    // Keyboard: f toggles follow, / goes to the search box.
    v.press("f");
    v.wait("!window.logstreamStats.follow()");
    v.press("f");
    v.wait("window.logstreamStats.follow()");
    v.press("/");
    v.wait("document.activeElement && document.activeElement.id === 'grep'");
    v.press("Escape");
    v.wait("document.activeElement === document.body");

    // Space pauses: lines are held and counted, then shown.
    v.press(" ");
    v.wait("document.querySelector('[data-testid=pause]').getAttribute('aria-pressed') === 'true'");
    server.append("app.log", &numbered(&tag, 305..308));
    v.wait("document.querySelector('[data-testid=held]').textContent === '3 held'");
    assert!(
        !v.lines().iter().any(|l| l.contains(&format!("{tag}-305 "))),
        "held lines are not shown while paused"
    );
    v.press(" ");
    v.wait_line(&format!("{tag}-307 "));
    v.wait("document.querySelector('[data-testid=held]').hidden");
    let lines = v.lines();
    assert_eq!(lines.len(), 308, "every line once");
}

#[test]
fn the_url_holds_filters_and_cursor_so_a_reload_resumes_where_it_was() {
    let server = Server::start(&[]);
    let tag = unique("url");
    server.append("app.log", &numbered(&tag, 0..6));
    server.append("other.log", &numbered("other", 0..2));
    server.wait_metric("logstream_history_records", 8.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.fill("[data-testid=grep]", &tag);
    v.wait_line(&format!("{tag}-5 "));
    v.wait(
        "new URLSearchParams(location.search).get('grep') !== null && \
         new URLSearchParams(location.search).get('resume') === window.logstreamStats.cursor() && \
         window.logstreamStats.cursor() !== ''",
    );
    let url = v.eval("location.href");
    v.call(serde_json::json!({"op": "reload"}));
    v.wait("document.getElementById('status').textContent === 'live'");
    assert_eq!(v.eval("location.href"), url, "the reload kept the URL");
    assert_eq!(
        v.eval("document.getElementById('grep').value"),
        serde_json::json!(tag)
    );
    // Lines written after the cursor arrive; those before it do not repeat.
    server.append("app.log", &numbered(&tag, 6..8));
    v.wait_line(&format!("{tag}-7 "));
    let lines = v.lines();
    assert_eq!(
        lines,
        vec![
            format!("2026-01-01T12:00:00Z INFO {tag}-6 ok"),
            format!("2026-01-01T12:00:00Z INFO {tag}-7 ok")
        ]
    );
    assert_eq!(v.notices(), vec!["resumed, nothing lost".to_string()]);
}

#[test]
fn a_server_restart_shows_reconnecting_then_resumes_without_duplicates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("logs");
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&dir).expect("logs dir");
    let args = |listen: &str| -> Vec<String> {
        [
            "serve",
            "--dir",
            dir.to_str().expect("utf-8 path"),
            "--listen",
            listen,
            "--state-dir",
            state.to_str().expect("utf-8 path"),
        ]
        .map(String::from)
        .to_vec()
    };
    let first_args = args("127.0.0.1:0");
    let first: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut server = Server::spawn(&dir, &first);
    let tag = unique("restart");
    server.append("app.log", &numbered(&tag, 0..20));
    server.wait_metric("logstream_history_records", 20.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_line(&format!("{tag}-19 "));

    server.signal("TERM");
    assert!(server.wait_exit().success());
    v.wait("window.logstreamStats.notices().some(n => n.startsWith('reconnecting…'))");
    v.wait("document.getElementById('status').textContent === 'reconnecting…'");
    // Written while no server runs.
    server.append("app.log", &numbered(&tag, 20..30));

    let again_args = args(&server.addr);
    let again: Vec<&str> = again_args.iter().map(String::as_str).collect();
    let server = Server::spawn(&dir, &again);
    server.append("app.log", &numbered(&tag, 30..32));
    v.wait_line(&format!("{tag}-31 "));
    v.wait("window.logstreamStats.notices().includes('resumed, nothing lost')");
    let want: Vec<String> = (0..32)
        .map(|i| format!("2026-01-01T12:00:00Z INFO {tag}-{i} ok"))
        .collect();
    assert_eq!(v.lines(), want, "every line once, in order");
    v.shot("reconnect.png");
}

/// Appends `rate` lines a second to `path` for `seconds`, in 10 ms slices
/// (pacing a writer, not awaiting an event): access-log lines with logfmt,
/// JSON and an error with a stack trace now and then. Returns the lines
/// written.
fn write_at_rate(path: &Path, tag: &str, rate: usize, seconds: f64) -> usize {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the load file");
    let start = Instant::now();
    let mut written = 0usize;
    let mut buf = String::new();
    loop {
        let elapsed = start.elapsed().as_secs_f64().min(seconds);
        let due = (elapsed * rate as f64) as usize;
        buf.clear();
        while written < due {
            let i = written;
            let line = match i % 100 {
                0 => format!(
                    "2026-01-01T12:00:00Z ERROR {tag}-{i} request failed\n\tat shop.Api.handle(Api.java:7)\n"
                ),
                10 | 60 => format!(
                    "{{\"level\":\"info\",\"msg\":\"{tag}-{i} order placed\",\"order\":{i},\"user\":\"u{}\"}}\n",
                    i % 97
                ),
                20 | 70 => format!(
                    "level=warn msg=\"{tag}-{i} slow\" duration_ms={} table=orders\n",
                    i % 1000
                ),
                _ => format!(
                    "2026-01-01T12:00:00Z INFO {tag}-{i} GET /api/orders/{i} 200 {}ms\n",
                    i % 50
                ),
            };
            buf.push_str(&line);
            written += 1 + usize::from(i.is_multiple_of(100));
        }
        f.write_all(buf.as_bytes()).expect("append load lines");
        if elapsed >= seconds {
            return written;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Frame times from requestAnimationFrame deltas, long tasks, and the
/// line counter, collected in the page.
const PERF_START: &str = "(() => { const p = window.__perf = { frames: [], long: 0, last: performance.now() }; \
    const tick = t => { if (p.stop) return; p.frames.push(t - p.last); p.last = t; requestAnimationFrame(tick); }; \
    requestAnimationFrame(tick); \
    try { new PerformanceObserver(l => { p.long += l.getEntries().length; }).observe({ type: 'longtask' }); } catch (_) {} \
    return performance.memory ? performance.memory.usedJSHeapSize : 0; })()";
const PERF_STOP: &str = "(() => { const p = window.__perf; p.stop = true; \
    const f = p.frames.slice(1).sort((a, b) => a - b); const q = x => f[Math.min(f.length - 1, Math.floor(x * f.length))]; \
    return { frames: f.length, p50: q(0.5), p95: q(0.95), p99: q(0.99), max: f[f.length - 1], long_tasks: p.long, \
      heap: performance.memory ? performance.memory.usedJSHeapSize : 0, received: window.logstreamStats.received, \
      items: window.logstreamStats.items(), dom_rows: document.getElementById('spacer').childElementCount, \
      missed: window.logstreamStats.missed, gaps: window.logstreamStats.notices().filter(n => n.startsWith('gap')) }; })()";

#[test]
fn page_keeps_up_with_10k_lines_per_second_with_bounded_rows() {
    // The bench (bench/RESULTS.md) runs the full minute:
    // VIEWER_LOAD_SECONDS=60; the test a few seconds.
    let seconds: f64 = std::env::var("VIEWER_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let rate: usize = std::env::var("VIEWER_LOAD_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let cap = 20_000usize;
    let server = Server::start(&[]);
    let tag = unique("load");
    server.append("load.log", "2026-01-01T12:00:00Z INFO load starts\n");
    server.wait_metric("logstream_history_records", 1.0);

    let mut v = Viewer::start();
    v.open(&server.url(&format!("/?cap={cap}")));
    v.wait_line("load starts");
    let heap_start = v.call(serde_json::json!({"op": "heap"}))["JSHeapUsedSize"]
        .as_f64()
        .unwrap_or(0.0);
    v.eval(PERF_START);

    let path = server.dir.join("load.log");
    let writer_tag = tag.clone();
    let writer = std::thread::spawn(move || write_at_rate(&path, &writer_tag, rate, seconds));
    // While it writes: lines keep arriving (each sample waits for 10,000
    // more), and the page holds at most `cap` lines and a screenful of rows.
    let mut samples = Vec::new();
    let mut heaps = Vec::new();
    let mut want = 10_000;
    while !writer.is_finished() {
        v.wait(&format!(
            "window.logstreamStats.received + window.logstreamStats.missed >= {want}"
        ));
        let s = v.eval(
            "[window.logstreamStats.received + window.logstreamStats.missed, \
             window.logstreamStats.items(), document.getElementById('spacer').childElementCount, \
             performance.memory ? performance.memory.usedJSHeapSize : 0]",
        );
        let (received, items, rows, heap): (u64, usize, usize, u64) =
            serde_json::from_value(s).expect("sample");
        heaps.push(heap);
        assert!(items <= cap, "the page holds at most {cap} lines: {items}");
        assert!(
            rows <= 200,
            "only a screenful of rows is in the DOM: {rows}"
        );
        samples.push(received);
        want = received + 10_000;
        if want as f64 > rate as f64 * seconds {
            break;
        }
    }
    let written = writer.join().expect("writer");
    let report = v.eval(PERF_STOP);
    let heap_end = v.call(serde_json::json!({"op": "heap"}))["JSHeapUsedSize"]
        .as_f64()
        .unwrap_or(0.0);
    // Every line arrives or is counted in a gap (a page that falls behind,
    // on a machine busy with other tests, is moved to the head: the
    // protocol's answer to a slow client).
    v.wait(&format!(
        "window.logstreamStats.received + window.logstreamStats.missed >= {}",
        written + 1
    ));
    let summary = serde_json::json!({
        "seconds": seconds,
        "rate": rate,
        "written": written,
        "cap": cap,
        "frames": report,
        "cdp_heap_start": heap_start,
        "cdp_heap_end": heap_end,
        // performance.memory every 10,000 lines: flat once the cap is reached.
        "heap_every_10k_lines": heaps,
    });
    eprintln!("viewer load: {summary}");
    let out = screenshot_path("viewer-load.json").with_file_name("viewer-load.json");
    std::fs::write(&out, summary.to_string()).expect("write the load report");
    let items: usize =
        serde_json::from_value(v.eval("window.logstreamStats.items()")).expect("items");
    assert!(items <= cap, "{items} lines held, cap {cap}");
    assert!(
        samples.windows(2).all(|w| w[0] < w[1]),
        "lines kept arriving: {samples:?}"
    );
}

#[test]
fn downloads_themes_and_a_page_that_runs_no_log_text() {
    let server = Server::start(&[]);
    let tag = unique("dl");
    let lines = [
        format!("2026-01-01T12:00:00Z INFO {tag} first"),
        format!("2026-01-01T12:00:01Z ERROR {tag} <img src=x onerror=\"window.__pwned=1\"> failed"),
        "\tat shop.Api.handle(Api.java:7)".to_string(),
        format!("2026-01-01T12:00:02Z WARN {tag} last"),
    ];
    server.append("app.log", &(lines.join("\n") + "\n"));
    server.wait_metric("logstream_history_records", 4.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_lines(&lines);

    // Text: one line each (the trace's line too), with time, source, level.
    let d = v.call(serde_json::json!({"op": "download", "sel": "[data-testid=download-text]"}));
    assert!(
        d["name"].as_str().is_some_and(|n| n.ends_with(".log")),
        "{d}"
    );
    let text: Vec<&str> = d["text"].as_str().expect("text").lines().collect();
    assert_eq!(text.len(), 4, "{text:?}");
    for (got, want) in text.iter().zip(&lines) {
        assert!(got.ends_with(want.as_str()), "{got:?} ends with {want:?}");
        assert!(got.contains("app.log "), "{got:?} names its file");
    }
    assert!(text[1].contains(" error "), "{:?}", text[1]);
    // JSON Lines: the records as the server sent them.
    let d = v.call(serde_json::json!({"op": "download", "sel": "[data-testid=download-jsonl]"}));
    assert!(
        d["name"].as_str().is_some_and(|n| n.ends_with(".jsonl")),
        "{d}"
    );
    let recs: Vec<serde_json::Value> = d["text"]
        .as_str()
        .expect("text")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let got: Vec<&str> = recs.iter().filter_map(|r| r["line"].as_str()).collect();
    assert_eq!(got, lines.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        recs.iter()
            .all(|r| r["sid"].is_string() && r["seq"].is_u64())
    );

    // Markup in a line is text: no element made from it, nothing ran.
    assert_eq!(v.eval("document.querySelectorAll('#log img').length"), 0);
    assert_eq!(v.eval("window.__pwned === undefined"), true);
    let policy =
        v.call(serde_json::json!({"op": "header", "url": "/", "name": "content-security-policy"}));
    let policy = policy.as_str().expect("a content security policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }

    // Light and dark follow the system.
    let bg = "getComputedStyle(document.body).backgroundColor";
    assert_eq!(v.eval(bg), "rgb(251, 251, 252)");
    v.call(serde_json::json!({"op": "scheme", "value": "dark"}));
    v.wait(&format!("{bg} === 'rgb(17, 19, 22)'"));
    v.shot("dark.png");
}

/// The README's pictures: realistic logs on a sidecar and an aggregator.
/// Not a behaviour test (the others are); run it to refresh them:
/// `LOGSTREAM_SCREENSHOTS=docs/screenshots cargo test -p logstream --test
/// browser readme_screenshots -- --ignored` (from sidecar/, the path is
/// relative to it: use an absolute one).
#[test]
#[ignore = "makes the README's screenshots; run on demand"]
fn readme_screenshots() {
    let server = Server::start(&[]);
    server.append(
        "api/access.log",
        "10.0.3.17 - - [05/Dec/2026:10:31:02 +0000] \"GET /api/orders/4711 HTTP/1.1\" 200 812 \"-\" \"shop-web/2.3\"\n\
         10.0.3.17 - - [05/Dec/2026:10:31:02 +0000] \"POST /api/cart HTTP/1.1\" 201 97 \"-\" \"shop-web/2.3\"\n\
         10.0.7.2 - - [05/Dec/2026:10:31:03 +0000] \"GET /healthz HTTP/1.1\" 200 3 \"-\" \"kube-probe/1.34\"\n",
    );
    server.append(
        "api/app.log",
        "{\"level\":\"info\",\"ts\":\"2026-12-05T10:31:02.114Z\",\"msg\":\"order placed\",\"order_id\":4711,\"user\":\"ada\",\"total_eur\":129.9,\"items\":3,\"trace_id\":\"4bf92f3577b34da6\"}\n\
         {\"level\":\"debug\",\"ts\":\"2026-12-05T10:31:02.120Z\",\"msg\":\"cache hit\",\"key\":\"cart:ada\",\"age_ms\":412}\n\
         {\"level\":\"warn\",\"ts\":\"2026-12-05T10:31:02.388Z\",\"msg\":\"payment provider slow\",\"provider\":\"acme-pay\",\"latency_ms\":2380}\n",
    );
    server.append(
        "payments.log",
        "2026-12-05 10:31:03.002 INFO  [http-nio-8080-exec-4] c.s.p.PaymentService : charging order 4711 (129.90 EUR)\n\
         2026-12-05 10:31:05.391 ERROR [http-nio-8080-exec-4] c.s.p.PaymentService : charge failed for order 4711\n\
         com.shop.payments.ProviderException: acme-pay answered 503\n\
         \tat com.shop.payments.AcmeClient.charge(AcmeClient.java:88)\n\
         \tat com.shop.payments.PaymentService.charge(PaymentService.java:41)\n\
         \tat com.shop.api.OrderController.pay(OrderController.java:112)\n\
         Caused by: java.net.SocketTimeoutException: Read timed out\n\
         \tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:168)\n\
         \t... 31 more\n\
         2026-12-05 10:31:05.402 INFO  [http-nio-8080-exec-4] c.s.p.PaymentService : order 4711 queued for retry in 30s\n",
    );
    server.append(
        "worker/worker.log",
        "time=2026-12-05T10:31:04Z level=info msg=\"job started\" job=invoice-pdf order=4711 queue=default\n\
         time=2026-12-05T10:31:04Z level=error msg=\"job failed\" job=invoice-pdf order=4711 attempt=1\n\
         Traceback (most recent call last):\n\
         \x20 File \"/app/worker/jobs.py\", line 57, in run\n\
         \x20   pdf = render(order)\n\
         \x20 File \"/app/worker/pdf.py\", line 12, in render\n\
         \x20   raise ValueError(f\"missing VAT id for {order.customer}\")\n\
         ValueError: missing VAT id for ada\n\
         time=2026-12-05T10:31:05Z level=info msg=\"job retried\" job=invoice-pdf order=4711 delay=30s\n",
    );
    server.wait_metric("logstream_history_records", 25.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_line("job retried");
    v.wait("document.querySelectorAll('[data-testid=source]').length === 4");
    v.shot("sidecar.png");
    // The Java trace, expanded.
    v.click("[data-testid=line]:has-text('charge failed') [data-testid=expand]");
    v.wait("document.querySelectorAll('[data-testid=line].cont').length === 7");
    v.shot("stacktrace.png");
    v.click("[data-testid=line]:has-text('charge failed') [data-testid=expand]");
    v.click("[data-testid=line]:has-text('order placed') [data-testid=expand]");
    v.wait("document.querySelectorAll('[data-testid=field]').length > 0");
    v.fill("[data-testid=grep]", "order|4711");
    v.wait("document.querySelectorAll('[data-testid=line] mark').length > 0");
    v.click("[data-testid=line]:has-text('order placed') [data-testid=expand]");
    v.wait("document.querySelectorAll('[data-testid=field]').length > 0");
    v.shot("json-expanded.png");
    v.call(serde_json::json!({"op": "scheme", "value": "dark"}));
    v.wait("getComputedStyle(document.body).backgroundColor === 'rgb(17, 19, 22)'");
    v.shot("dark.png");

    let pods = [
        ("checkout-7d9f6c-x2k4q", "checkout"),
        ("checkout-7d9f6c-pq8zn", "checkout"),
        ("payments-5c6b8d-9wq2d", "payments"),
    ];
    let sidecars: Vec<Server> = pods
        .iter()
        .map(|(pod, _)| Server::sidecar("shop", pod, &[]))
        .collect();
    for (i, (s, (_, app))) in sidecars.iter().zip(pods).enumerate() {
        for n in 0..6 {
            s.append(
                "app.log",
                &format!(
                    "level={} msg=\"{}\" app={app} request_id=r{i}{n:03} duration_ms={}\n",
                    if n == 4 && i == 2 {
                        "error"
                    } else if n == 2 {
                        "warn"
                    } else {
                        "info"
                    },
                    [
                        "request served",
                        "cart updated",
                        "slow downstream",
                        "order placed",
                        "charge failed",
                        "retry queued"
                    ][n],
                    17 + n * 31 + i * 7
                ),
            );
        }
        s.append(
            "access.log",
            &format!("10.0.3.{i} - - \"GET /api/cart HTTP/1.1\" 200 97\n"),
        );
    }
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(&refs, &["--reorder-window", "20ms"]);
    agg.wait_metric("logstream_history_records", 21.0);
    let mut v = Viewer::start();
    v.open(&agg.url("/"));
    v.wait("document.querySelectorAll('[data-testid=source]').length === 6");
    v.wait("window.logstreamStats.lines().length === 21");
    v.shot("aggregator.png");
}

#[test]
fn aggregator_pods_leave_the_source_panel_when_their_lines_leave_the_history() {
    let sidecars: Vec<Server> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|pod| Server::sidecar("shop", pod, &[]))
        .collect();
    let tag = unique("leave");
    for (i, s) in sidecars.iter().enumerate() {
        s.append("app.log", &numbered(&format!("{tag}-p{i}"), 0..3));
    }
    let refs: Vec<&Server> = sidecars.iter().collect();
    let agg = Server::aggregator(&refs, &["--reorder-window", "20ms", "--buffer-lines", "20"]);
    agg.wait_metric("logstream_history_records", 9.0);

    let mut v = Viewer::start();
    v.open(&agg.url("/"));
    let pods = "JSON.stringify(Array.from(document.querySelectorAll('[data-testid=pod]'), e => e.dataset.pod))";
    v.wait(&format!(
        "{pods} === {}",
        js_str(r#"["web-1","web-2","web-3"]"#)
    ));
    // web-1's lines push the others' out of the aggregator's history of 20:
    // their pods leave the panel (struck through first, then gone).
    sidecars[0].append("app.log", &numbered(&format!("{tag}-p0"), 3..30));
    v.wait_line(&format!("{tag}-p0-29 "));
    v.wait(&format!("{pods} === {}", js_str(r#"["web-1"]"#)));
    // A pod that writes again comes back.
    sidecars[2].append("app.log", &numbered(&format!("{tag}-p2"), 3..4));
    v.wait(&format!("{pods} === {}", js_str(r#"["web-1","web-3"]"#)));
}

#[test]
fn a_link_whose_cursor_left_the_history_shows_the_gap_inline() {
    let server = Server::start(&["--buffer-lines", "10"]);
    let tag = unique("gap");
    server.append("app.log", &numbered(&tag, 0..5));
    server.wait_metric("logstream_history_records", 5.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_line(&format!("{tag}-4 "));
    v.wait("new URLSearchParams(location.search).get('resume') === window.logstreamStats.cursor()");
    let link = v.eval("location.href");
    let link = link.as_str().expect("the page's URL").to_string();

    // 30 more lines: the history of 10 keeps the last 10 (25..35); the
    // link's cursor (after line 4) misses 20.
    server.append("app.log", &numbered(&tag, 5..35));
    v.wait_line(&format!("{tag}-34 "));
    v.open(&link);
    v.wait("window.logstreamStats.notices().some(n => n.startsWith('gap'))");
    v.wait_line(&format!("{tag}-34 "));
    assert_eq!(
        v.notices(),
        vec![
            "resumed".to_string(),
            "gap: 20 lines skipped (evicted)".to_string()
        ]
    );
    let want: Vec<String> = (25..35)
        .map(|i| format!("2026-01-01T12:00:00Z INFO {tag}-{i} ok"))
        .collect();
    assert_eq!(v.lines(), want);
}

#[test]
fn a_page_too_slow_for_the_stream_shows_the_gap_and_goes_on() {
    // A small queue and no grace: a page that falls 64 KiB behind is moved
    // to the head with a gap.
    let server = Server::start(&["--client-queue-bytes", "65536", "--slow-client-grace", "0s"]);
    let tag = unique("slow");
    server.append(
        "app.log",
        &format!("2026-01-01T12:00:00Z INFO {tag} first\n"),
    );
    server.wait_metric("logstream_history_records", 1.0);

    let mut v = Viewer::start();
    v.open(&server.url("/"));
    v.wait_line(&format!("{tag} first"));
    v.call(serde_json::json!({"op": "throttle", "rate": 50}));
    let filler = "x".repeat(300);
    let big: String = (0..20_000)
        .map(|i| format!("2026-01-01T12:00:00Z INFO {tag}-{i} {filler}\n"))
        .collect();
    server.append("app.log", &big);
    server.wait_metric("logstream_gaps_total{reason=\"slow_client\"}", 1.0);
    v.call(serde_json::json!({"op": "throttle", "rate": 1}));
    v.wait("window.logstreamStats.notices().some(n => n.startsWith('gap: ') && n.endsWith('(slow client)'))");
    // Caught up: every line shown or counted in a gap; the next one shows.
    v.wait("window.logstreamStats.received + window.logstreamStats.missed >= 20001");
    server.append(
        "app.log",
        &format!("2026-01-01T12:00:00Z INFO {tag} after the gap\n"),
    );
    v.wait_line(&format!("{tag} after the gap"));
    let counted: u64 = serde_json::from_value(
        v.eval("window.logstreamStats.received + window.logstreamStats.missed"),
    )
    .expect("count");
    assert_eq!(counted, 20_002, "every line shown or counted in a gap");
}

#[test]
fn the_page_passes_its_access_token_to_the_stream_and_the_source_list() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("logs");
    std::fs::create_dir_all(&dir).expect("logs dir");
    let args = [
        "serve",
        "--dir",
        dir.to_str().expect("utf-8 path"),
        "--listen",
        "127.0.0.1:0",
        "--token",
        "s3cret",
    ];
    let server = Server::spawn_env(&dir, &args, &[("LOGSTREAM_NO_LOOPBACK_EXEMPTION", "true")]);
    let tag = unique("token");
    server.append("app.log", &numbered(&tag, 0..2));
    server.wait_metric("logstream_history_records", 2.0);
    // The source list names files: it takes the token like the streams.
    assert_eq!(
        common::http_get(&server.addr, "/sources").map(|r| r.0),
        Some(401)
    );
    let (code, body) =
        common::http_get(&server.addr, "/sources?access_token=s3cret").expect("GET /sources");
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list["sources"][0]["file"], "app.log");
    assert_eq!(list["sources"][0]["lines"], 2);

    let mut v = Viewer::start();
    // Without the token the page says why it shows nothing.
    assert_eq!(
        v.call(serde_json::json!({"op": "open", "url": server.url("/")})),
        200
    );
    v.wait("window.logstreamStats.notices().some(n => n.includes('(401)'))");
    // With it, the stream and the panel.
    v.open(&server.url("/?access_token=s3cret"));
    v.wait_line(&format!("{tag}-1 "));
    v.wait(&format!(
        "{SOURCE_COUNTS} === {}",
        js_str(r#"{"app.log":"2"}"#)
    ));
    assert_eq!(v.url_param("access_token").as_deref(), Some("s3cret"));
}
