//! The one-node cluster of `tests/node` for tests.
//!
//! [`Node::up`] runs `tests/node/up.sh` in a fresh work dir: control plane,
//! containerd, CNI bridge, kubelet and kube-proxy on this machine, with the
//! project's images imported. A watchdog runs `tests/node/down.sh` when the
//! test process ends in any way, and [`Node::down`] runs it synchronously.
//! One node per machine (fixed bridge and addresses): a test binary holds at
//! most one, and `up.sh` clears whatever an earlier, killed run left.
//!
//! Around it: `kubectl` and `helm` against the node, [`PortForward`]
//! (`kubectl port-forward` on a free local port), [`ClientNetns`] (a test
//! client host on the pod bridge, for traffic that is not loopback) and
//! [`Node::poll`] for state the cluster reaches eventually.
//!
//! Environment: `LOGSTREAM_KEEP_NODE=1` keeps the work dir (logs, certs,
//! pod logs) after the run and prints its path.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{KubectlOutput, Watchdog, run_kubectl};

/// Component logs in the work dir, for failure messages.
const COMPONENTS: [&str; 8] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "containerd",
    "kubelet",
    "kube-proxy",
    "etcd",
    "socat",
];

/// A running one-node cluster; stopped by [`Node::down`] or, failing that,
/// by its watchdog when the process ends.
pub struct Node {
    /// Admin kubeconfig (`O=system:masters`).
    pub kubeconfig: PathBuf,
    /// Certs, configs, `*.log`, `pids`, `env`, pod logs.
    pub work_dir: PathBuf,
    /// kubectl and the cluster binaries.
    pub bin_dir: PathBuf,
    /// How long `up.sh` took (builds included when they were not cached).
    pub up_duration: Duration,
    watchdog: Option<Watchdog>,
}

fn node_script(name: &str) -> PathBuf {
    crate::repo_root().join("tests/node").join(name)
}

fn keep() -> bool {
    std::env::var_os("LOGSTREAM_KEEP_NODE").is_some_and(|v| v == "1")
}

impl Node {
    /// Builds what is missing, starts the node and waits until it is Ready.
    /// Panics with `up.sh`'s output and the component logs if it cannot.
    pub fn up() -> Node {
        let work_dir = tempfile::Builder::new()
            .prefix("logstream-node-")
            .tempdir()
            .expect("create a work dir for the node")
            .keep();
        let watchdog = Watchdog::spawn_with(&work_dir, keep(), &node_script("down.sh"))
            .unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        // stderr is inherited: a cold build takes minutes and says so there.
        let out = Command::new(node_script("up.sh"))
            .arg(&work_dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/node/up.sh");
        let mut node = Node {
            kubeconfig: work_dir.join("kubeconfig"),
            bin_dir: PathBuf::new(),
            work_dir,
            up_duration: started.elapsed(),
            watchdog: Some(watchdog),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = format!("export KUBECONFIG={}", node.kubeconfig.display());
        if !out.status.success() || stdout.lines().last() != Some(want.as_str()) {
            panic!(
                "tests/node/up.sh {} failed ({}) after {:.1?}; stdout:\n{stdout}\n{}",
                node.work_dir.display(),
                out.status,
                node.up_duration,
                node.log_tails(30)
            );
        }
        node.bin_dir = PathBuf::from(
            fs::read_to_string(node.work_dir.join("bin-dir"))
                .expect("up.sh writes bin-dir")
                .trim(),
        );
        eprintln!(
            "logstream-tests: node up in {:.1?} ({})",
            node.up_duration,
            node.work_dir.display()
        );
        node
    }

    /// Stops the node now (down.sh) and removes the work dir unless kept.
    pub fn down(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish();
            if keep() {
                eprintln!(
                    "logstream-tests: node stopped; work dir kept: {}",
                    self.work_dir.display()
                );
            }
        }
    }

    /// `kubectl --kubeconfig KUBECONFIG ARGS...`.
    pub fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        run_kubectl(&self.bin_dir, &self.kubeconfig, args, None)
    }

    /// `kubectl` with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> KubectlOutput {
        run_kubectl(&self.bin_dir, &self.kubeconfig, args, Some(stdin))
    }

    /// `helm ARGS...` against the node (`.ci/install-helm`'s helm), run from
    /// the repository root as the READMEs' commands are.
    pub fn helm(&self, args: &[&str]) -> KubectlOutput {
        let helm = crate::cache_dir().join("tools/bin/helm");
        let out = Command::new(&helm)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.work_dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.work_dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.work_dir.join("helm/data"))
            .current_dir(crate::repo_root())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} (.ci/install-helm): {e}", helm.display()));
        KubectlOutput::new(args, &out)
    }

    /// `kubectl -n NS port-forward TARGET :REMOTE`, once it forwards.
    pub fn port_forward(&self, ns: &str, target: &str, remote: u16) -> PortForward {
        let mut child = Command::new(self.bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["-n", ns, "port-forward", target, &format!(":{remote}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its errors (a lost connection to the pod) go to the test's output.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run kubectl port-forward");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads stdout for as long as kubectl runs: it prints a line per
        // connection, and a closed pipe would kill it (SIGPIPE).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // "Forwarding from 127.0.0.1:PORT -> REMOTE"
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .and_then(|line| {
                let rest = line.strip_prefix("Forwarding from 127.0.0.1:")?;
                rest.split_whitespace().next()?.parse::<u16>().ok()
            });
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kubectl -n {ns} port-forward {target} :{remote} did not forward (its stderr is above)"
            );
        };
        PortForward { child, port }
    }

    /// A test client host on the pod bridge (`client-netns.sh add N`).
    pub fn client(&self, n: u8) -> ClientNetns {
        let out = Command::new(node_script("client-netns.sh"))
            .args(["add", &n.to_string()])
            .output()
            .expect("run tests/node/client-netns.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut words = stdout.split_whitespace();
        match (out.status.success(), words.next(), words.next()) {
            (true, Some(name), Some(addr)) => ClientNetns {
                n,
                name: name.to_string(),
                addr: addr.to_string(),
            },
            _ => panic!(
                "client-netns.sh add {n}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Calls `check` every 250 ms until it returns `Some`, or panics after
    /// `timeout` naming `what`, with `describe()` for context.
    #[track_caller]
    pub fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
        describe: impl FnOnce() -> String,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    describe()
                );
            }
            std::thread::sleep(Duration::from_millis(250)); // poll interval only
        }
    }

    /// The last `lines` lines of each component log.
    pub fn log_tails(&self, lines: usize) -> String {
        crate::log_tails(&self.work_dir, &COMPONENTS, lines)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `kubectl port-forward` on `127.0.0.1:port`; killed on drop.
pub struct PortForward {
    child: Child,
    pub port: u16,
}

impl PortForward {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A network namespace on the node's pod bridge with one route, to the
/// service range: a client that is neither loopback nor a pod. Removed on
/// drop.
pub struct ClientNetns {
    n: u8,
    pub name: String,
    pub addr: String,
}

impl ClientNetns {
    /// `ip netns exec NAME PROGRAM`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for ClientNetns {
    fn drop(&mut self) {
        let _ = Command::new(node_script("client-netns.sh"))
            .args(["del", &self.n.to_string()])
            .status();
    }
}
