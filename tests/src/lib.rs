//! Integration-test support for logstream: a real Kubernetes control plane
//! per test.
//!
//! [`ControlPlane::start`] builds (once, cached in `~/.cache/logstream`) and
//! starts kube-apiserver v1.34, kube-controller-manager and etcd from
//! `tests/apiserver/` on free loopback ports, in a fresh temp work dir, so
//! several control planes can run side by side (tests in one binary run in
//! parallel). Dropping it stops the processes and removes the work dir.
//!
//! ```no_run
//! # async fn demo() {
//! let cp = logstream_tests::ControlPlane::start();
//! let client = cp.client().await;
//! let out = cp.kubectl(&["get", "ns", "-o", "name"]);
//! assert!(out.stdout_if_success().contains("namespace/default"));
//! # drop(client);
//! # }
//! ```
//!
//! Environment:
//! - `LOGSTREAM_K8S_BIN`: use the binaries in this directory instead of
//!   running `tests/apiserver/build.sh`.
//! - `LOGSTREAM_KEEP_CONTROL_PLANE=1`: keep the work dir (certs, logs, etcd
//!   data) after the test; its path is printed.
//! - `KUBECTL`: the kubectl binary (default: the one `build.sh` builds with the
//!   API server, else `kubectl` on `PATH`).
//! - `LOGSTREAM_CACHE`, `LOGSTREAM_APISERVER_TIMEOUT`: see
//!   `tests/apiserver/README.md`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::future::Future;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod node;

/// Component logs written by `start.sh` into the work dir, in start order.
const COMPONENTS: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// Attempts at starting when a port picked by `start.sh` was taken before the
/// component bound it (a race with other processes on the machine).
const START_ATTEMPTS: usize = 3;

/// A running etcd + kube-apiserver + kube-controller-manager, stopped on drop.
pub struct ControlPlane {
    /// Admin kubeconfig (`O=system:masters`, client certificate).
    pub kubeconfig: PathBuf,
    /// Certs (`pki/`), etcd data, `*.log`, `pids`, `env`.
    pub work_dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub apiserver_url: String,
    /// Where the binaries came from.
    pub bin_dir: PathBuf,
    /// How long `start.sh` took (certs, etcd, apiserver `/readyz`, controller
    /// manager `/healthz`).
    pub start_duration: Duration,
    /// Holds the write end of the watchdog's stdin; see [`Watchdog`].
    watchdog: Option<Watchdog>,
}

/// Output of a `kubectl` run.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// The arguments after `--kubeconfig PATH`, for messages.
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    /// The output of a finished `kubectl` (or `helm`) run with `args`.
    pub fn new(args: &[&str], out: &std::process::Output) -> KubectlOutput {
        KubectlOutput {
            args: args.iter().map(|a| a.to_string()).collect(),
            status: out.status,
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout; panics with the command line and stderr if kubectl failed.
    #[track_caller]
    pub fn stdout_if_success(&self) -> &str {
        assert!(
            self.success,
            "kubectl {} failed ({}):\nstderr:\n{}\nstdout:\n{}",
            self.args.join(" "),
            self.status,
            self.stderr,
            self.stdout
        );
        &self.stdout
    }
}

impl ControlPlane {
    /// Builds (cached) and starts etcd, kube-apiserver and
    /// kube-controller-manager in a fresh temp work dir on free loopback
    /// ports; returns once all three are healthy (apiserver `/readyz`).
    /// Panics with the tail of the component logs if it cannot.
    ///
    /// Blocks the calling thread for a few seconds (fine inside
    /// `#[tokio::test]`).
    pub fn start() -> ControlPlane {
        ControlPlane::start_with_apiserver_args("")
    }

    /// [`ControlPlane::start`] with more kube-apiserver flags (split on
    /// spaces; e.g. an audit log for a benchmark).
    pub fn start_with_apiserver_args(api_args: &str) -> ControlPlane {
        let bin_dir = bin_dir();
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&bin_dir, api_args) {
                Ok(cp) => {
                    eprintln!(
                        "logstream-tests: control plane at {} started in {:.1?} ({})",
                        cp.apiserver_url,
                        cp.start_duration,
                        cp.work_dir.display()
                    );
                    return cp;
                }
                Err(failure) => {
                    let _ = writeln!(failures, "--- attempt {attempt} ---\n{failure}");
                    if !failure.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!(
            "cannot start the control plane (tests/apiserver/start.sh; \
             LOGSTREAM_KEEP_CONTROL_PLANE=1 keeps the work dir):\n{failures}"
        );
    }

    fn try_start(bin_dir: &Path, api_args: &str) -> Result<ControlPlane, String> {
        let work_dir = tempfile::Builder::new()
            .prefix("logstream-cp-")
            .tempdir()
            .expect("create a temp work dir for the control plane")
            .keep();
        // The watchdog comes first so that even a start interrupted by the
        // test process dying is cleaned up.
        let watchdog = Watchdog::spawn(&work_dir).unwrap_or_else(|e| {
            let _ = fs::remove_dir_all(&work_dir);
            panic!("{e}")
        });
        let mut cp = ControlPlane {
            kubeconfig: work_dir.join("kubeconfig"),
            work_dir,
            apiserver_url: String::new(),
            bin_dir: bin_dir.to_path_buf(),
            start_duration: Duration::ZERO,
            watchdog: Some(watchdog),
        };
        let started = Instant::now();
        let out = Command::new(apiserver_script("start.sh"))
            .arg(bin_dir)
            .arg(&cp.work_dir)
            .env("LOGSTREAM_APISERVER_ARGS", api_args)
            .stdin(Stdio::null())
            .output()
            .expect("run tests/apiserver/start.sh");
        cp.start_duration = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            // `cp` is dropped on return: stops what was started.
            return Err(format!(
                "start.sh {} {} exited with {} after {:.1?}\nstderr:\n{stderr}\n{}",
                bin_dir.display(),
                cp.work_dir.display(),
                out.status,
                cp.start_duration,
                cp.log_tails(30)
            ));
        }
        let printed = stdout.lines().last().unwrap_or_default().trim();
        if Path::new(printed) != cp.kubeconfig {
            return Err(format!(
                "start.sh printed {printed:?} as its last line, expected {}",
                cp.kubeconfig.display()
            ));
        }
        let env = fs::read_to_string(cp.work_dir.join("env")).unwrap_or_default();
        cp.apiserver_url = env
            .lines()
            .find_map(|l| l.strip_prefix("APISERVER_URL="))
            .ok_or_else(|| format!("no APISERVER_URL in {}/env:\n{env}", cp.work_dir.display()))?
            .to_string();
        Ok(cp)
    }

    /// kube client configuration for the admin kubeconfig.
    pub async fn config(&self) -> kube::Config {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .expect("read the control plane's kubeconfig");
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube::Config from the control plane's kubeconfig")
    }

    /// A `kube::Client` for the admin kubeconfig. Needs a tokio runtime.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).expect("kube::Client for the control plane")
    }

    /// Runs `kubectl --kubeconfig KUBECONFIG ARGS...`.
    pub fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.run_kubectl(args, None)
    }

    /// Runs `kubectl --kubeconfig KUBECONFIG ARGS...` with `stdin` as its
    /// input (e.g. `kubectl_stdin(&["apply", "-f", "-"], yaml)`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> KubectlOutput {
        self.run_kubectl(args, Some(stdin))
    }

    /// Waits until the named CRDs (`crd/NAME`) are established. `kubectl
    /// wait` fails at once, instead of waiting, while a new CRD has no
    /// `status.conditions` yet ("accessor error"), which a busy API server
    /// shows for a moment; that one answer is retried.
    #[track_caller]
    pub fn wait_crds_established(&self, crds: &[&str]) {
        let mut args = vec!["wait", "--for", "condition=established", "--timeout=60s"];
        args.extend_from_slice(crds);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.kubectl(&args);
            if out.success || !out.stderr.contains("accessor error") || Instant::now() > deadline {
                out.stdout_if_success();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run_kubectl(&self, args: &[&str], stdin: Option<&str>) -> KubectlOutput {
        run_kubectl(&self.bin_dir, &self.kubeconfig, args, stdin)
    }

    /// The last `lines` lines of each component log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        log_tails(&self.work_dir, &COMPONENTS, lines)
    }
}

/// The last `lines` lines of `WORK_DIR/NAME.log` for each component, for
/// failure messages.
fn log_tails(work_dir: &Path, components: &[&str], lines: usize) -> String {
    let mut s = String::new();
    for name in components {
        let path = work_dir.join(format!("{name}.log"));
        let Ok(log) = fs::read_to_string(&path) else {
            continue;
        };
        let all: Vec<&str> = log.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        let _ = writeln!(s, "--- last {} lines of {} ---", tail.len(), path.display());
        for line in tail {
            let _ = writeln!(s, "{line}");
        }
    }
    s
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
        }
        // Fallback if the watchdog could not do its job (e.g. it was killed).
        if self.work_dir.join("pids").exists() {
            let _ = Command::new(apiserver_script("stop.sh"))
                .arg(&self.work_dir)
                .stdin(Stdio::null())
                .status();
        }
        if keep_work_dir() {
            eprintln!(
                "logstream-tests: control plane stopped; work dir kept: {}",
                self.work_dir.display()
            );
        } else if self.work_dir.exists() {
            let _ = fs::remove_dir_all(&self.work_dir);
        }
    }
}

/// Runs `kubectl --kubeconfig KUBECONFIG ARGS...` in the repository root
/// (stdin fed from a thread).
fn run_kubectl(
    bin_dir: &Path,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> KubectlOutput {
    // The kubectl built with the API server (same release, no skew);
    // `KUBECTL` overrides, `kubectl` on PATH is the last resort.
    let built = bin_dir.join("kubectl");
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| {
        if built.exists() {
            built.into_os_string()
        } else {
            "kubectl".into()
        }
    });
    let mut child = Command::new(&kubectl)
        // Relative paths are from the repository root, as in the READMEs.
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {kubectl:?} (set KUBECTL?): {e}"));
    // Feed stdin from a thread so a large input cannot deadlock against
    // kubectl filling its stdout pipe.
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("kubectl stdin is piped");
        let input = input.to_owned();
        std::thread::spawn(move || pipe.write_all(input.as_bytes()))
    });
    let out = child.wait_with_output().expect("wait for kubectl");
    if let Some(writer) = writer {
        // kubectl may exit without reading all of stdin (e.g. bad flags):
        // a broken pipe here is not the interesting error.
        let _ = writer.join();
    }
    KubectlOutput::new(args, &out)
}

/// `tests/harness/watchdog.sh`: waits for EOF on its stdin, then runs
/// `stop.sh` and removes the work dir (unless kept). The test process holds
/// the only write end of that pipe (std creates pipes close-on-exec, so no
/// other child inherits it), so EOF comes on drop *or* when the test process
/// dies in any way (panic=abort, SIGKILL, Ctrl-C): the control plane never
/// outlives its test. It runs in its own process group so a terminal's Ctrl-C
/// does not kill it before it cleans up.
struct Watchdog {
    child: Child,
    stdin: ChildStdin,
}

impl Watchdog {
    fn spawn(work_dir: &Path) -> Result<Watchdog, String> {
        Self::spawn_with(work_dir, keep_work_dir(), &apiserver_script("stop.sh"))
    }

    /// Runs `stop` WORK_DIR on EOF, and removes WORK_DIR unless `keep`.
    fn spawn_with(work_dir: &Path, keep: bool, stop: &Path) -> Result<Watchdog, String> {
        let keep = if keep { "1" } else { "0" };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/watchdog.sh");
        let mut child = Command::new(&script)
            .arg(work_dir)
            .arg(keep)
            .arg(stop)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stdin = child.stdin.take().expect("watchdog stdin is piped");
        Ok(Watchdog { child, stdin })
    }

    /// Closes the pipe and waits until the watchdog has stopped everything.
    fn finish(self) {
        let Watchdog { mut child, stdin } = self;
        drop(stdin);
        let _ = child.wait();
    }
}

fn keep_work_dir() -> bool {
    std::env::var_os("LOGSTREAM_KEEP_CONTROL_PLANE").is_some_and(|v| v == OsStr::new("1"))
}

fn apiserver_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("apiserver")
        .join(name)
}

/// The directory with etcd, kube-apiserver and kube-controller-manager:
/// `$LOGSTREAM_K8S_BIN`, or what `tests/apiserver/build.sh` prints (it builds
/// only what is missing). Resolved once per process; across processes the
/// build is serialized with a file lock so parallel test binaries do not
/// compile kubernetes twice.
pub fn bin_dir() -> PathBuf {
    static BIN_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN_DIR.get_or_init(resolve_bin_dir) {
        Ok(dir) => dir.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn resolve_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("LOGSTREAM_K8S_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match std::env::var_os("LOGSTREAM_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").ok_or("neither LOGSTREAM_CACHE nor HOME is set")?;
            Path::new(&home).join(".cache/logstream")
        }
    };
    fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let lock_path = cache.join("build.lock");
    let lock =
        File::create(&lock_path).map_err(|e| format!("create {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    let script = apiserver_script("build.sh");
    // stderr is inherited: a first build takes minutes and says so there.
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    drop(lock);
    if !out.status.success() {
        return Err(format!(
            "{} failed with {} (see its stderr above)",
            script.display(),
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !dir.join("kube-apiserver").is_file() {
        return Err(format!(
            "{} printed {:?} as its last line: not a dir with kube-apiserver",
            script.display(),
            dir
        ));
    }
    Ok(dir)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where builds and tools are cached: `$LOGSTREAM_CACHE`, else
/// `~/.cache/logstream`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("LOGSTREAM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/logstream")
        })
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after
/// `timeout` naming `what` — for state the controllers reach eventually
/// (a Deployment's ReplicaSet, a namespace's `kube-root-ca.crt`).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval only
    }
}

/// Path of one of this workspace's binaries, built (or brought up to date)
/// first: `cargo test --workspace` builds only the binaries of packages that
/// have integration tests of their own, and a stale binary would test old code.
/// The address a spawned `logstream` announces on its first line of
/// stdout (`listening on http://ADDR`); `Err` holds the line it printed
/// instead (empty when it exited first).
pub fn listening_address(child: &mut Child) -> Result<String, String> {
    use std::io::BufRead as _;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    line.trim()
        .strip_prefix("listening on http://")
        .map(str::to_string)
        .ok_or(line)
}

/// The packages whose binaries the tests run (`-p` arguments of cargo),
/// the same for the debug and the static builds (tests/node/images.sh
/// lists them too).
const WORKSPACE_BIN_PACKAGES: [&str; 6] = [
    "-p",
    "logstream",
    "-p",
    "logstream-operator",
    "-p",
    "kubectl-logstream",
];

pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--bins"])
            .args(WORKSPACE_BIN_PACKAGES)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("building the workspace binaries for {package} failed:\n{e}");
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("test executable lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing after building {package}",
        bin.display()
    );
    bin
}

/// A free TCP port on loopback (for processes that cannot bind `:0` and
/// report back, like the operator's webhook whose URL must be known first).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `logstream-operator run`: stderr goes to a log file whose tail is
/// printed when the test panics; SIGTERM on drop.
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
    /// `/healthz`, `/readyz`, `/metrics`.
    health: String,
}

impl OperatorProcess {
    /// Runs the operator with its webhook on `127.0.0.1:port`, called by the
    /// API server by URL (no cluster network here), and waits for it to serve.
    pub fn spawn(
        bin: &Path,
        kubeconfig: &Path,
        port: u16,
        args: &[&str],
        log: PathBuf,
    ) -> OperatorProcess {
        use std::io::BufRead as _;
        let health = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(bin)
            .args(["--log-format", "json", "run", "--image", "logstream:test"])
            .args(["--webhook-listen", &format!("127.0.0.1:{port}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{port}/mutate")])
            .args(["--cert-ip", "127.0.0.1", "--health-listen", &health])
            .args(args)
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).expect("operator log file"))
            .spawn()
            .expect("start logstream-operator");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let op = OperatorProcess { child, log, health };
        assert!(
            line.starts_with("webhook listening on https://"),
            "the operator did not start: {line:?}\n{}",
            op.log()
        );
        op
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The value of one series of the operator's `/metrics` (`name` or
    /// `name{labels}` as exposed), `None` when absent or unreachable.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics_text()?;
        text.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    /// The operator's whole `/metrics` answer (head included).
    pub fn metrics_text(&self) -> Option<String> {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&self.health).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            c,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.health
        )
        .ok()?;
        let mut text = String::new();
        c.read_to_string(&mut text).ok()?;
        Some(text)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for the operator")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- last 40 lines of the operator's log ({}) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// `nice -n 10 cargo` in a clean, fixed environment, the one
/// tests/node/images.sh builds the static binaries in: what cargo test adds
/// to ours (LD_LIBRARY_PATH, CARGO_PKG_*, ...) would make each build rebuild
/// the whole tree after the other. rustup puts its toolchain's bin dir first
/// on PATH (and sets CARGO_HOME and RUSTUP_HOME) for what it starts, and
/// callers add their own dirs: PATH is one fixed list, after `path_prefix`
/// (empty, or directories each followed by `:`).
fn clean_cargo(path_prefix: &str) -> Command {
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    let mut c = Command::new("nice");
    c.env_clear()
        .env(
            "PATH",
            format!(
                "{path_prefix}{cargo_home}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            ),
        )
        .env("HOME", &home)
        .env("CARGO_HOME", &cargo_home)
        .env(
            "RUSTUP_HOME",
            std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup")),
        )
        .args(["-n", "10", "cargo"]);
    c
}

/// The images' second architecture.
pub const AARCH64_TARGET: &str = "aarch64-unknown-linux-musl";

/// `cargo zigbuild --locked --target aarch64-unknown-linux-musl` of
/// `logstream` and `logstream-operator` (the Dockerfiles' cross-compiling
/// source stage; dev profile: the point is that arm64 compiles, links
/// statically and runs, which the release profile does not change), in its
/// own target dir, once per test binary; returns the output directory.
/// Needs `.ci/install-helm` (rust target, cargo-zigbuild and zig).
pub fn aarch64_build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target_dir = cache_dir().join("aarch64-target");
        let zig_bin = cache_dir().join("tools/zig-venv/bin");
        assert!(
            zig_bin.join("cargo-zigbuild").is_file(),
            "{} is missing: run .ci/install-helm",
            zig_bin.join("cargo-zigbuild").display()
        );
        // The clean environment of the x86_64 static build, zig first on PATH.
        let started = Instant::now();
        let status = clean_cargo(&format!("{}:", zig_bin.display()))
            .args(["zigbuild", "--locked", "--target"])
            .arg(AARCH64_TARGET)
            .args(["-p", "logstream", "-p", "logstream-operator"])
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", &target_dir)
            // No debug info: a quicker build, and a binary small enough to
            // put in an image in a test (release_workflow.rs).
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo zigbuild: {e}"));
        assert!(
            status.success(),
            "aarch64 build failed ({status}); run .ci/install-helm"
        );
        eprintln!(
            "logstream-tests: aarch64 build took {:.1?}",
            started.elapsed()
        );
        target_dir.join(AARCH64_TARGET).join("debug")
    })
}

/// The static binaries' target (the Dockerfiles build for it).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// `cargo build --release --locked --target x86_64-unknown-linux-musl` of
/// `logstream` and `logstream-operator` (as in the Dockerfiles) and of
/// `kubectl-logstream` (as released), once per test
/// binary; returns the release directory. The one way the tests build them:
/// every suite (and tests/node/images.sh, with the same environment) shares
/// the target dir, so a build in another environment would make the next
/// one rebuild the whole tree.
pub fn musl_release_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target_dir = cache_dir().join("musl-target");
        let started = Instant::now();
        // stderr is inherited: a cold build takes minutes and says so there.
        let status = clean_cargo("")
            .args(["build", "--release", "--locked", "--target", MUSL_TARGET])
            .args(WORKSPACE_BIN_PACKAGES)
            .current_dir(repo_root())
            .env("CARGO_TARGET_DIR", &target_dir)
            // As the Dockerfiles set it.
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
        assert!(
            status.success(),
            "musl release build failed ({status}); run .ci/install-helm \
             (rustup target add {MUSL_TARGET}, apt musl-tools)"
        );
        eprintln!(
            "logstream-tests: musl release build took {:.1?}",
            started.elapsed()
        );
        target_dir.join(MUSL_TARGET).join("release")
    })
}
