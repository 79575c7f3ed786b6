//! The release binaries the container images ship (`sidecar/Dockerfile`,
//! `operator/Dockerfile`): static musl executables for
//! `x86_64-unknown-linux-musl`, and for `aarch64-unknown-linux-musl` built
//! as the Dockerfiles cross-build it (cargo-zigbuild) and run under
//! qemu-user. Checks that they are static (they run on `scratch`), that they
//! run, and that the Grafana dashboard of the chart plots metrics the
//! streamer really exports.
//!
//! Needs `.ci/install-helm` (rustup target and musl-tools). The build uses
//! its own target dir, `$HOME/.cache/logstream/musl-target`, so it does not
//! fight the workspace build; cold it takes a few minutes.
#![allow(clippy::unwrap_used)] // test code

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn musl_release_dir() -> &'static Path {
    logstream_tests::musl_release_dir()
}

fn bin(name: &str) -> PathBuf {
    let p = musl_release_dir().join(name);
    assert!(p.is_file(), "{} was not built", p.display());
    p
}

/// ELF `e_machine` of x86-64 and of AArch64.
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

/// ELF64 little-endian `e_machine`.
fn elf_machine(path: &Path) -> u16 {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    u16::from_le_bytes([b[0x12], b[0x13]])
}

/// ELF64 little-endian program headers: (has PT_INTERP, has PT_DYNAMIC).
fn elf_interp_and_dynamic(path: &Path) -> (bool, bool) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(b[4], 2, "not ELF64");
    assert_eq!(b[5], 1, "not little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    let types: Vec<u32> = (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
        })
        .collect();
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    (types.contains(&PT_INTERP), types.contains(&PT_DYNAMIC))
}

fn assert_static(path: &Path) {
    let out = Command::new("ldd").arg(path).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd {}: {said}",
        path.display()
    );
    // No program interpreter: the kernel runs it without a libc on disk
    // (musl's static-pie keeps PT_DYNAMIC for self-relocation only).
    let (interp, _) = elf_interp_and_dynamic(path);
    assert!(!interp, "{} asks for a dynamic loader", path.display());
    let size = std::fs::metadata(path).unwrap().len();
    // Debug info stripped as in the images (unstripped: over 100 MiB).
    assert!(size < 48 << 20, "{} is {size} bytes", path.display());
    eprintln!(
        "static_binaries: {} {:.1} MiB, ldd: {}",
        path.display(),
        size as f64 / (1 << 20) as f64,
        said.trim()
    );
}

fn run(path: &Path, args: &[&str]) -> String {
    let out = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        // Nothing from the host environment the image would not have.
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn logstream_is_static_and_runs() {
    let logstream = bin("logstream");
    assert_static(&logstream);
    assert_eq!(elf_machine(&logstream), EM_X86_64);
    assert_eq!(
        run(&logstream, &["--version"]).trim(),
        format!("logstream {}", env!("CARGO_PKG_VERSION"))
    );
    let schema: serde_json::Value =
        serde_json::from_str(&run(&logstream, &["schema"])).expect("schema prints JSON");
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("sidecar/protocol.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        schema, committed,
        "schema differs from sidecar/protocol.schema.json"
    );
}

#[test]
fn operator_is_static_and_runs() {
    let operator = bin("logstream-operator");
    assert_static(&operator);
    assert_eq!(
        run(&operator, &["--version"]).trim(),
        format!("logstream-operator {}", env!("CARGO_PKG_VERSION"))
    );
    let crd = run(&operator, &["crd"]);
    assert_eq!(
        crd,
        std::fs::read_to_string(repo().join("crds/logstream.dev_logstreams.yaml")).unwrap(),
        "the static operator prints the committed CRD"
    );
}

/// An arm64 binary: AArch64, no program interpreter (ldd cannot read a
/// foreign ELF).
fn assert_static_aarch64(path: &Path) {
    assert_eq!(elf_machine(path), EM_AARCH64, "{}", path.display());
    let (interp, _) = elf_interp_and_dynamic(path);
    assert!(!interp, "{} asks for a dynamic loader", path.display());
}

/// `qemu-aarch64 BIN ARGS` with nothing from the host environment.
fn qemu(path: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("qemu-aarch64");
    c.arg(path).args(args).stdin(Stdio::null()).env_clear();
    c
}

/// The arm64 images' binaries: static AArch64 executables that run (under
/// qemu-user): versions, the protocol schema and the CRD they print, and a
/// streamer that tails a file and answers a Loki query over HTTP.
#[test]
fn arm64_binaries_are_static_and_run() {
    let dir = logstream_tests::aarch64_build_dir();
    let logstream = dir.join("logstream");
    let operator = dir.join("logstream-operator");
    for b in [&logstream, &operator] {
        assert_static_aarch64(b);
    }
    let out = |mut c: Command| {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(
        out(qemu(&logstream, &["--version"])).trim(),
        format!("logstream {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        out(qemu(&operator, &["crd"])),
        std::fs::read_to_string(repo().join("crds/logstream.dev_logstreams.yaml")).unwrap(),
        "the arm64 operator prints the committed CRD"
    );
    let schema: serde_json::Value =
        serde_json::from_str(&out(qemu(&logstream, &["schema"]))).unwrap();
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("sidecar/protocol.schema.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(schema, committed);

    // A streamer: a line written before it starts is served back.
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(logs.path().join("app.log"), "hello from arm64\n").unwrap();
    let mut server = qemu(
        &logstream,
        &[
            "serve",
            "--dir",
            &logs.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let addr = logstream_tests::listening_address(&mut server).unwrap();
    let query = "/loki/api/v1/query_range?query=%7Bfile%3D%22app.log%22%7D&limit=10";
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // Polled: the tailer's first read of the file is not observable from
    // outside except through what the server answers.
    let body = loop {
        let body = http_get(&addr, query);
        if body.contains("hello from arm64") || std::time::Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(body.contains("hello from arm64"), "{body}");
}

/// The released plugin is one static file too (krew installs it alone);
/// without a cluster it says what is wrong and exits 1, and bad arguments
/// exit 2, as its help documents.
#[test]
fn kubectl_logstream_is_static_and_runs() {
    let plugin = bin("kubectl-logstream");
    assert_static(&plugin);
    assert_eq!(
        run(&plugin, &["--version"]).trim(),
        format!("kubectl-logstream {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(run(&plugin, &["tail", "--help"]).contains("Exit codes: 0 ended by Ctrl-C"));
    let exit = |args: &[&str]| {
        let out = Command::new(&plugin)
            .args(args)
            .env_clear()
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = exit(&["tail", "deploy/web"]);
    assert_eq!(code, Some(1), "no cluster: {stderr}");
    assert!(stderr.contains("no usable kubeconfig"), "{stderr}");
    let (code, stderr) = exit(&["tail", "svc/web"]);
    assert_eq!(code, Some(2), "a bad target, before any cluster: {stderr}");
    assert!(stderr.contains("\"svc\" is not a kind"), "{stderr}");
}

/// `logstream_*` names in the dashboard's queries.
fn dashboard_metrics(prefix: &str) -> Vec<String> {
    let path = repo().join("charts/logstream/dashboards/logstream.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("logstream_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                let name = &tail[..end];
                if name.starts_with(prefix) && !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
                rest = &tail[end..];
            }
        }
    }
    names
}

/// `# TYPE` lines of a Prometheus text exposition: family name → type.
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// True when `series` (as queried) is exported: a counter family `x` is
/// queried as `x_total`, a histogram as `x_bucket`/`x_sum`/`x_count`, a
/// gauge by its name.
fn exported(families: &BTreeMap<String, String>, series: &str) -> bool {
    let is = |family: &str, kind: &str| families.get(family).is_some_and(|t| t == kind);
    if series
        .strip_suffix("_total")
        .is_some_and(|f| is(f, "counter"))
    {
        return true;
    }
    if ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        series
            .strip_suffix(suffix)
            .is_some_and(|f| is(f, "histogram"))
    }) {
        return true;
    }
    is(series, "gauge")
}

/// The families that carry labels appear only once they have a sample: the
/// library's registry with one sample in each (same names as the binary's).
fn labelled_families() -> BTreeMap<String, String> {
    use logstream::metrics::{Metrics, ReasonLabel, RequestLabels, Transport};
    let m = Metrics::new();
    let reason = ReasonLabel { reason: "test" };
    for f in [
        &m.rotations,
        &m.files_refused,
        &m.connections_rejected,
        &m.clients_dropped,
        &m.gaps,
    ] {
        f.get_or_create(&reason).inc();
    }
    let t = m.transport(Transport::ws);
    m.records_sent.get_or_create(&t).inc();
    m.bytes_sent.get_or_create(&t).inc();
    m.clients.get_or_create(&t).inc();
    m.request_seconds
        .get_or_create(&RequestLabels {
            path: "/test".into(),
            code: 200,
        })
        .observe(0.1);
    families(&m.encode())
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn dashboard_plots_metrics_the_static_streamer_exports() {
    let logstream = bin("logstream");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.log"), "hello\n").unwrap();
    let mut child = Command::new(&logstream)
        .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = logstream_tests::listening_address(&mut child)
        .unwrap_or_else(|line| panic!("unexpected first line: {line:?}"));
    let metrics = http_get(&addr, "/metrics");
    let _ = child.kill();
    let _ = child.wait();
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let mut fams = labelled_families();
    let unlabelled = families(&metrics);
    assert!(
        unlabelled.contains_key("logstream_lines_read")
            && unlabelled.contains_key("logstream_history_records"),
        "{metrics}"
    );
    // The binary's own names win where both have a family.
    fams.extend(unlabelled);
    let wanted = dashboard_metrics("logstream_");
    let streamer: Vec<&String> = wanted
        .iter()
        .filter(|n| !n.starts_with("logstream_operator_"))
        .collect();
    assert!(streamer.len() >= 15, "dashboard plots {streamer:?}");
    let missing: Vec<&&String> = streamer.iter().filter(|n| !exported(&fams, n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which logstream does not export:\n{metrics}"
    );
}
