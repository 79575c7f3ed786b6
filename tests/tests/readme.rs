#![allow(clippy::unwrap_used)] // test code
//! Every command in the READMEs is run by this test or by a script CI runs.
//!
//! What counts as a command:
//! - Only fenced blocks tagged `sh`, `bash`, `shell` or `console` hold
//!   commands. Untagged fences are usage synopses (`logstream serve --dir DIR
//!   [...]`) or sample output and are documentation, not commands.
//! - In `sh`/`bash`/`shell` blocks every line is a command; lines ending in
//!   `\` are joined with the next; blank lines and lines starting with `#` are
//!   skipped, and a trailing `# comment` is dropped. In `console` blocks only
//!   lines starting with `$ ` are commands (the rest is output).
//! - `a && b` is two commands: both must be covered.
//!
//! How a command is covered (anything else fails, naming file, line and
//! command):
//! - (a) Executed here: the commands of README.md's section "Try it on your
//!   machine" run in order through `sh -c`, verbatim except for the
//!   substitutions in [`local_command`] (the test's build profile and
//!   binary, a temp folder, the server's real address). A command ending in
//!   `&` keeps running in the background, `logstream serve` is the server,
//!   a command naming `127.0.0.1:7680` is a client that must print demo log
//!   lines (matching its filters), and any other must exit 0.
//! - (b) Run by CI: the command occurs in a script of [`SCRIPTS`] that a
//!   workflow in `.github/workflows/` runs (directly or through `.ci/run`).
//!   Both sides are compared with double quotes removed and whitespace
//!   collapsed; in the script, comments are ignored, continuations joined and
//!   the variables of [`PLACEHOLDERS`] replaced by their values (each checked
//!   against its assignment in the script). The script may add arguments
//!   after the README's (image tags, timeouts).
//!
//! The only exception is [`NOT_YET_RUN`]: examples/README.md walkthrough
//! commands (Loki's logcli, AGPL: kept out of our tooling) that no script
//! runs, listed one by one with the reason. It can only shrink.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use logstream_tests::workspace_bin;

/// READMEs whose commands are checked.
const READMES: [&str; 2] = ["README.md", "examples/README.md"];

/// The README.md section whose commands this test runs itself.
const LOCAL_SECTION: &str = "## Try it on your machine";

/// Scripts CI runs in which README commands may occur.
const SCRIPTS: [&str; 3] = [".ci/run", "tests/e2e/kind.sh", "tests/node/walkthrough.sh"];

/// Script variables and the README text they stand for: (script, variable,
/// value). The script must assign exactly this value (`NAME="value"`) unless
/// the assignment is `None` (derived, see the comment).
const PLACEHOLDERS: [(&str, &str, &str, Option<&str>); 11] = [
    // Images first: their values contain `${TAG}`, replaced below.
    (
        "tests/e2e/kind.sh",
        "${LOGSTREAM_IMAGE}",
        "ghcr.io/logstream-dev/logstream:${TAG}",
        Some("LOGSTREAM_IMAGE=\"ghcr.io/logstream-dev/logstream:${TAG}\""),
    ),
    (
        "tests/e2e/kind.sh",
        "${OPERATOR_IMAGE}",
        "ghcr.io/logstream-dev/logstream-operator:${TAG}",
        Some("OPERATOR_IMAGE=\"ghcr.io/logstream-dev/logstream-operator:${TAG}\""),
    ),
    // Its value when E2E_IMAGE_TAG is unset.
    (
        "tests/e2e/kind.sh",
        "${TAG}",
        "dev",
        Some("TAG=\"${E2E_IMAGE_TAG:-dev}\" # the tag examples/README.md builds"),
    ),
    // The repository root: `"${ROOT}/charts/logstream"` is `charts/logstream`
    // from the root, where the README's commands run.
    ("tests/e2e/kind.sh", "${ROOT}/", "", None),
    ("tests/e2e/kind.sh", "${ROOT}", ".", None),
    // The `logstream` CLI (kind.sh copies it out of the image).
    ("tests/e2e/kind.sh", "${LOGSTREAM}", "logstream", None),
    // `kubectl port-forward svc/logstream-aggregator` on a free local port
    // where the README forwards 7680.
    (
        "tests/e2e/kind.sh",
        "${AGG_URL}",
        "http://127.0.0.1:7680",
        None,
    ),
    ("tests/e2e/kind.sh", "${NS}", "demo", Some("NS=\"demo\"")),
    (
        "tests/e2e/kind.sh",
        "${OP_NS}",
        "logstream-system",
        Some("OP_NS=\"logstream-system\""),
    ),
    (
        "tests/e2e/kind.sh",
        "${RELEASE}",
        "logstream",
        Some("RELEASE=\"logstream\""),
    ),
    (
        "tests/e2e/kind.sh",
        "${HOST}",
        "logs.demo.localtest.me",
        Some("HOST=\"logs.demo.localtest.me\""),
    ),
];

/// examples/README.md commands that nothing runs yet, each exactly as written
/// there. This list may only shrink: an entry that is covered or no longer in
/// the README fails the test, and a new README command is never exempt.
const NOT_YET_RUN: [(&str, &str); 5] = [
    // Loki's own client is AGPL-licensed: it stays out of our tooling.
    // sidecar/tests/loki.rs sends the requests it sends instead.
    (
        "examples/README.md",
        "logcli --addr=http://127.0.0.1:7680 labels --since=1h",
    ),
    (
        "examples/README.md",
        "logcli --addr=http://127.0.0.1:7680 query '{pod=~\"demo-.*\", level=\"error\"}' --since=10m --limit=20",
    ),
    (
        "examples/README.md",
        "logcli --addr=http://127.0.0.1:7680 query '{file=\"app.log\"} |= \"upstream\"' --tail",
    ),
    (
        "examples/README.md",
        "logcli --addr=http://127.0.0.1:7680 query 'sum by (level) (count_over_time({pod=~\"demo-.*\"}[1m]))' --since=10m",
    ),
    (
        "examples/README.md",
        "logcli --addr=http://logs.demo.localtest.me --bearer-token=\"$TOKEN\" labels",
    ),
];

/// How long a client may take to print its lines.
const PATIENCE: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// A command found in a README.
#[derive(Debug, Clone)]
struct ReadmeCommand {
    file: &'static str,
    /// 1-based line where the command starts.
    line: usize,
    /// The `## ` section it is in.
    section: String,
    /// As written (continuations joined, trailing comment dropped).
    text: String,
}

/// Extracts the commands of `markdown` (see the module docs for the rules).
fn commands(file: &'static str, markdown: &str) -> Vec<ReadmeCommand> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut fence: Option<String> = None; // Some(language) inside a fence
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        if let Some(lang) = trimmed.strip_prefix("```") {
            match fence {
                None => fence = Some(lang.trim().to_string()),
                Some(_) => {
                    assert!(
                        pending.is_none(),
                        "{file}:{line_no}: a fenced block ends in a `\\` continuation"
                    );
                    fence = None;
                }
            }
            continue;
        }
        let Some(lang) = &fence else {
            if raw.starts_with("## ") {
                section = raw.to_string();
            }
            continue;
        };
        let (start, mut text) = match pending.take() {
            Some((start, so_far)) => (start, format!("{so_far} {trimmed}")),
            None => {
                let cmd = match lang.as_str() {
                    "sh" | "bash" | "shell" => trimmed,
                    "console" => match trimmed.strip_prefix("$ ") {
                        Some(cmd) => cmd.trim(),
                        None => continue,
                    },
                    _ => continue,
                };
                if cmd.is_empty() || cmd.starts_with('#') {
                    continue;
                }
                (line_no, cmd.to_string())
            }
        };
        if let Some(head) = text.strip_suffix('\\') {
            pending = Some((start, head.trim_end().to_string()));
            continue;
        }
        text = strip_comment(&text).to_string();
        for part in text.split(" && ") {
            out.push(ReadmeCommand {
                file,
                line: start,
                section: section.clone(),
                text: part.trim().to_string(),
            });
        }
    }
    assert!(fence.is_none(), "{file}: a fenced block is not closed");
    out
}

/// Drops a trailing `# comment` (a `#` after whitespace, outside quotes).
fn strip_comment(cmd: &str) -> &str {
    let (mut single, mut double, mut prev_space) = (false, false, false);
    for (i, c) in cmd.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if prev_space && !single && !double => return cmd[..i].trim_end(),
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    cmd.trim_end()
}

/// Double quotes removed, whitespace collapsed.
fn normalise(s: &str) -> String {
    s.replace('"', "")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The commands a script runs, one per entry: comments dropped,
/// continuations joined, placeholders replaced, normalised.
fn script_commands(rel: &str) -> Vec<String> {
    let text = read(rel);
    for (_, var, _, assignment) in PLACEHOLDERS.iter().filter(|p| p.0 == rel) {
        let name = var.trim_start_matches("${").split('}').next().unwrap();
        let assigned = |l: &str| match assignment {
            Some(assignment) => l.trim() == *assignment,
            None => l.trim().starts_with(&format!("{name}=")),
        };
        assert!(
            text.lines().any(assigned),
            "{rel} no longer assigns {name} as PLACEHOLDERS says ({assignment:?})"
        );
    }
    let mut out = Vec::new();
    let mut joined = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            continue;
        }
        joined.push_str(trimmed);
        if let Some(head) = joined.strip_suffix('\\') {
            joined = format!("{head} ");
            continue;
        }
        let mut cmd = normalise(&joined);
        for (script, var, value, _) in PLACEHOLDERS {
            if script == rel {
                cmd = cmd.replace(var, value);
            }
        }
        out.push(cmd);
        joined.clear();
    }
    out
}

/// Whether `needle` occurs in `hay` as whole words (not inside a longer
/// argument).
fn contains_words(hay: &str, needle: &str) -> bool {
    let boundary = |c: Option<char>| c.is_none_or(|c| c.is_whitespace() || "();|&`".contains(c));
    hay.match_indices(needle).any(|(i, _)| {
        boundary(hay[..i].chars().next_back()) && boundary(hay[i + needle.len()..].chars().next())
    })
}

/// Whether a workflow runs `script`, directly or through `.ci/run`.
fn run_by_ci(script: &str) -> bool {
    let workflows = root().join(".github/workflows");
    let mut run_lines = Vec::new();
    for entry in std::fs::read_dir(&workflows).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap();
            run_lines.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with('#'))
                    .filter_map(|l| l.strip_prefix("run:").or(l.strip_prefix("- run:")))
                    .map(|l| l.trim().to_string()),
            );
        }
    }
    let direct = |s: &str| run_lines.iter().any(|l| contains_words(l, s));
    direct(script)
        || (script != ".ci/run"
            && direct(".ci/run")
            && script_commands(".ci/run")
                .iter()
                .any(|c| contains_words(c, script)))
}

/// The README command with the substitutions that let it run here: this
/// test's build profile and binary, a temp folder for the demo logs, and the
/// address the server really listens on (it binds port 0, so parallel tests
/// and a developer's own `logstream serve` on 7680 do not collide).
fn local_command(cmd: &str, bin: &Path, demo_dir: &Path, addr: Option<&str>) -> String {
    let mut s = cmd.replace("./target/release/logstream", bin.to_str().unwrap());
    if cfg!(debug_assertions) {
        s = s.replace("cargo build --release", "cargo build");
    }
    s = s.replace("/tmp/logstream-demo", demo_dir.to_str().unwrap());
    if let Some(addr) = addr {
        s = s.replace("127.0.0.1:7680", addr);
    }
    s
}

/// Runs `sh -c 'exec CMD'` from the repository root with the installed test
/// tools first on `PATH`.
fn spawn_sh(cmd: &str, stdout: Stdio) -> Child {
    let home = std::env::var("HOME").unwrap_or_default();
    let path = format!(
        "{home}/.cache/logstream/tools/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .current_dir(root())
        .env("PATH", path)
        .stdin(Stdio::piped()) // held open: websocat stops at stdin's end
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("sh -c {cmd:?}: {e}"))
}

/// Kills the processes on drop (also when the test fails).
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads lines of `child`'s stdout until `enough` of them are demo log lines
/// or PATIENCE runs out; returns all lines read.
fn read_lines(child: &mut Child, enough: usize) -> Vec<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut found = 0;
    // One deadline for all lines: keepalives must not extend it.
    let deadline = std::time::Instant::now() + PATIENCE;
    while found < enough {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if is_demo_line(&line) {
                    found += 1;
                }
                lines.push(line);
            }
            Err(_) => break,
        }
    }
    lines
}

/// A line `logstream demo-writer` wrote (possibly inside a JSON or SSE frame).
fn is_demo_line(line: &str) -> bool {
    line.contains(" n=") || line.contains("\"n\":") || line.contains("\\\"n\\\":")
}

/// What a client's demo lines must also show, by a filter in its command.
fn filter_holds(cmd: &str, line: &str) -> Result<(), &'static str> {
    let is_warn_or_error = line.contains("level=warn") || line.contains("error");
    if cmd.contains("level=warn+") && !is_warn_or_error {
        return Err("level=warn+ let through a line below warn");
    }
    if cmd.contains("grep=orders") && !line.contains("orders") {
        return Err("grep=orders let through a line without `orders`");
    }
    if cmd.contains("--level error") && !line.contains("error") {
        return Err("--level error let through a line below error");
    }
    Ok(())
}

/// (a): README.md's local commands, run as written (see [`local_command`]).
fn run_local_commands(local: &[ReadmeCommand]) {
    assert!(
        !local.is_empty(),
        "README.md has no commands under {LOCAL_SECTION:?}"
    );
    let bin = workspace_bin("logstream", "logstream");
    let tmp = tempfile::tempdir().unwrap();
    let demo_dir = tmp.path().join("logstream-demo");
    let mut procs = Processes(Vec::new());
    let mut addr: Option<String> = None;
    for c in local {
        let at = format!("{}:{}: `{}`", c.file, c.line, c.text);
        let mut cmd = local_command(&c.text, &bin, &demo_dir, addr.as_deref());
        if c.text.contains("127.0.0.1:7680") {
            // A client: must stream demo lines the server read from the
            // demo writer's files, matching its filters.
            assert!(addr.is_some(), "{at}: a client before the server");
            let mut client = spawn_sh(&cmd, Stdio::piped());
            let lines = read_lines(&mut client, 3);
            let _ = client.kill();
            let _ = client.wait();
            let demo: Vec<&String> = lines.iter().filter(|l| is_demo_line(l)).collect();
            assert!(
                demo.len() >= 3,
                "{at} (run as `{cmd}`) printed no demo log lines within {PATIENCE:?}:\n{}",
                lines.join("\n")
            );
            for l in demo {
                if let Err(why) = filter_holds(&c.text, l) {
                    panic!("{at}: {why}: {l}");
                }
            }
            eprintln!("ran {at}: {} lines", lines.len());
        } else if let Some(bg) = cmd.strip_suffix('&') {
            // The README's background job: kept running.
            procs.0.push(spawn_sh(bg.trim_end(), Stdio::null()));
        } else if c.text.contains(" serve ") {
            assert!(addr.is_none(), "{at}: a second server");
            cmd.push_str(" --listen 127.0.0.1:0");
            let mut server = spawn_sh(&cmd, Stdio::piped());
            let a = logstream_tests::listening_address(&mut server)
                .unwrap_or_else(|first| panic!("{at}: unexpected first line {first:?}"));
            procs.0.push(server);
            addr = Some(a);
        } else {
            // Anything else (the build, mkdir) runs to completion.
            let status = spawn_sh(&cmd, Stdio::inherit()).wait().unwrap();
            assert!(status.success(), "{at} failed: {status}");
        }
    }
}

#[test]
fn every_readme_command_is_run_by_this_test_or_by_ci() {
    let mut all = Vec::new();
    for file in READMES {
        all.extend(commands(file, &read(file)));
    }
    assert!(all.len() > 10, "too few commands found: {all:#?}");

    let scripts: Vec<(&str, Vec<String>)> = SCRIPTS
        .iter()
        .map(|s| {
            assert!(run_by_ci(s), "{s} is not run by .github/workflows/*.yml");
            (*s, script_commands(s))
        })
        .collect();

    let (local, rest): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|c| c.file == "README.md" && c.section.starts_with(LOCAL_SECTION));

    let mut uncovered = Vec::new();
    let mut pending = Vec::new();
    for c in &rest {
        let want = normalise(&c.text);
        let by = scripts
            .iter()
            .find(|(_, cmds)| cmds.iter().any(|s| contains_words(s, &want)));
        let listed = NOT_YET_RUN
            .iter()
            .any(|(file, text)| *file == c.file && normalise(text) == want);
        match (by, listed) {
            (Some((script, _)), false) => {
                eprintln!("{}:{}: run by {script}: {want}", c.file, c.line)
            }
            (Some((script, _)), true) => panic!(
                "{}:{}: `{}` is run by {script} now: remove it from NOT_YET_RUN",
                c.file, c.line, c.text
            ),
            (None, true) => pending.push((c.file, want)),
            (None, false) => uncovered.push(format!("{}:{}: {}", c.file, c.line, c.text)),
        }
    }
    for (file, text) in NOT_YET_RUN {
        assert!(
            pending.contains(&(file, normalise(text))),
            "NOT_YET_RUN lists `{text}` which {file} no longer has: remove the entry"
        );
    }
    eprintln!(
        "{} examples/README.md commands not run yet (NOT_YET_RUN)",
        pending.len()
    );
    assert!(
        uncovered.is_empty(),
        "README commands run neither by this test nor by a script CI runs ({}): \
         run them in tests/e2e/kind.sh or .ci/run (see the rules at the top of \
         tests/tests/readme.rs):\n{}",
        SCRIPTS.join(", "),
        uncovered.join("\n")
    );

    run_local_commands(&local);
}

#[test]
fn extraction_rules() {
    let md = "## A\n```\nlogstream serve --dir DIR\n```\n```sh\n# comment\n\
              helm install x \\\n  --wait   # note\na && b\n```\n## B\n\
              ```console\n$ kubectl get ls\nNAME\n```\n";
    let got: Vec<(usize, String, String)> = commands("t.md", md)
        .into_iter()
        .map(|c| (c.line, c.section, c.text))
        .collect();
    let want = [
        (7, "## A", "helm install x --wait"),
        (9, "## A", "a"),
        (9, "## A", "b"),
        (13, "## B", "kubectl get ls"),
    ];
    assert_eq!(got, want.map(|(l, s, t)| (l, s.to_string(), t.to_string())));
    assert!(contains_words(
        "helm install logstream charts/logstream --wait --timeout 5m",
        "helm install logstream charts/logstream --wait"
    ));
    assert!(!contains_words("kubectl get lsx", "kubectl get ls"));
    assert_eq!(strip_comment("curl 'a#b' # c"), "curl 'a#b'");
}
