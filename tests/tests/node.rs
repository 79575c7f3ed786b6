//! The user flow of README.md and examples/README.md on a real one-node
//! cluster (`tests/node`): the chart's operator as a pod, the injected native
//! sidecar next to a real app, `kubectl port-forward`, kube-proxy Services,
//! the aggregator as a Deployment, rollouts, pod deletion, uninstall.
//!
//! One node for the whole binary (one per machine), brought up on first use
//! and torn down at the end: a custom harness (libtest-mimic) runs the cases
//! in order on one thread. Cases that need the chart or the demo app share
//! them (set up once, by whichever case comes first); every other case uses
//! its own namespace. The pod checks are `tests/e2e/checks.py`, the same
//! script kind.sh uses, so the two suites cannot drift apart.
//!
//! Needs root and `.ci/install-tools` (containerd, runc, CNI plugins,
//! buildah, iptables, conntrack, socat, helm, websocat, Chromium).
//! `cargo test -p logstream-tests --test node` runs it alone.
#![allow(clippy::unwrap_used)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use logstream_tests::node::{Node, PortForward};
use logstream_tests::{cache_dir, repo_root};
use serde_json::Value;

const OPERATOR_NS: &str = "logstream-system";
const DEMO_NS: &str = "demo";
const CONVERGE: Duration = Duration::from_secs(120);

/// The node and the shared set-ups, each done once.
struct Ctx {
    node: OnceLock<Node>,
    chart: OnceLock<Result<(), String>>,
    demo: OnceLock<Result<Vec<String>, String>>,
}

impl Ctx {
    fn node(&self) -> &Node {
        self.node.get_or_init(Node::up)
    }

    /// examples/README.md step 1, with the node's images:
    /// `helm install logstream charts/logstream --namespace logstream-system
    /// --create-namespace --wait` plus `-f tests/node/values.yaml`.
    fn chart(&self) -> Result<(), Failed> {
        let r = self.chart.get_or_init(|| {
            let node = self.node();
            let out = node.helm(&[
                "install",
                "logstream",
                "charts/logstream",
                "--namespace",
                OPERATOR_NS,
                "--create-namespace",
                "--wait",
                "--timeout",
                "3m",
                "-f",
                "tests/node/values.yaml",
            ]);
            if out.success {
                Ok(())
            } else {
                Err(format!(
                    "helm install failed: {}\n{}",
                    out.stderr,
                    self.describe(OPERATOR_NS)
                ))
            }
        });
        r.clone().map_err(Failed::from)
    }

    /// examples/README.md step 2: the demo app and its LogStream, converged
    /// to 2 injected, Ready pods. Returns the pod names.
    fn demo(&self) -> Result<Vec<String>, Failed> {
        self.chart()?;
        let r = self.demo.get_or_init(|| {
            let node = self.node();
            node.kubectl(&["create", "namespace", DEMO_NS])
                .stdout_if_success();
            let applied = node.kubectl(&[
                "apply",
                "-n",
                DEMO_NS,
                "-f",
                "examples/demo-app.yaml",
                "-f",
                "examples/logstream.yaml",
            ]);
            if !applied.success {
                return Err(format!("kubectl apply: {}", applied.stderr));
            }
            converged_pods(node, DEMO_NS, "app=demo", 2)
                .map_err(|why| format!("{why}\n{}", self.describe(DEMO_NS)))
        });
        r.clone().map_err(Failed::from)
    }

    /// Pods, events and the operator's log, for failure messages.
    fn describe(&self, ns: &str) -> String {
        let node = self.node();
        let pods = node.kubectl(&["-n", ns, "get", "pods,rs,ls", "-o", "wide"]);
        let events = node.kubectl(&["-n", ns, "get", "events", "--sort-by=.lastTimestamp"]);
        let op = node.kubectl(&[
            "-n",
            OPERATOR_NS,
            "logs",
            "deploy/logstream-operator",
            "--tail=30",
        ]);
        format!(
            "--- {ns}: pods, ReplicaSets, LogStreams ---\n{}{}\n--- events ---\n{}\n--- operator log ---\n{}{}",
            pods.stdout,
            pods.stderr,
            tail(&events.stdout, 30),
            op.stdout,
            op.stderr
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `python3 tests/e2e/checks.py ARGS...` with `stdin`: Ok(stdout) or Err(reason).
fn checks(args: &[&str], stdin: &str) -> Result<String, String> {
    let mut child = Command::new("python3")
        .arg(repo_root().join("tests/e2e/checks.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until `checks.py pods-converged N native` holds for the pods that
/// match `selector`; returns their names.
fn converged_pods(node: &Node, ns: &str, selector: &str, n: usize) -> Result<Vec<String>, String> {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let pods = node.kubectl(&["-n", ns, "get", "pods", "-l", selector, "-o", "json"]);
        let why = match checks(&["pods-converged", &n.to_string(), "native"], &pods.stdout) {
            Ok(names) => return Ok(names.lines().map(str::to_string).collect()),
            Err(why) => why,
        };
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "pods {selector} in {ns} did not converge in {CONVERGE:?}: {why}"
            ));
        }
        std::thread::sleep(Duration::from_millis(500)); // poll interval only
    }
}

/// Applies LogStream NAME in NS: pods labelled `app=NAME`, `*.log` under
/// /var/log/app; `extra` adds spec fields (`,"container":"x"`).
fn apply_stream(node: &Node, ns: &str, name: &str, extra: &str) {
    let ls = format!(
        r#"{{"apiVersion":"logstream.dev/v1alpha1","kind":"LogStream","metadata":{{"name":"{name}"}},
            "spec":{{"selector":{{"matchLabels":{{"app":"{name}"}}}},"paths":["*.log"],
                     "mountPath":"/var/log/app"{extra}}}}}"#
    );
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &ls)
        .stdout_if_success();
}

/// Namespace NS with LogStream NAME (see [`apply_stream`]), labelled for
/// injection: what most cases start from.
fn namespace_with_stream(ctx: &Ctx, ns: &str, name: &str, extra: &str) {
    let node = ctx.node();
    node.kubectl(&["create", "namespace", ns])
        .stdout_if_success();
    apply_stream(node, ns, name, extra);
    injection_enabled(ctx, ns);
}

/// Waits until the operator has labelled NS for injection: the webhook sees
/// only the pods of labelled namespaces.
fn injection_enabled(ctx: &Ctx, ns: &str) {
    let node = ctx.node();
    node.poll(
        "the namespace to be labelled for injection",
        CONVERGE,
        || {
            let v = get_json(node, &["namespace", ns]);
            (v["metadata"]["labels"]["logstream.dev/injection"] == "enabled").then_some(())
        },
        || ctx.describe(ns),
    );
}

/// Waits until the operator has created the namespace's aggregator and its
/// rollout is complete.
fn aggregator_rolled_out(ctx: &Ctx, ns: &str) {
    let node = ctx.node();
    node.poll(
        "the operator to create the namespace's aggregator",
        CONVERGE,
        || {
            node.kubectl(&["-n", ns, "get", "deploy/logstream-aggregator"])
                .success
                .then_some(())
        },
        || ctx.describe(ns),
    );
    node.kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        "deploy/logstream-aggregator",
        "--timeout=120s",
    ])
    .stdout_if_success();
}

/// The condition TYPE of a LogStream's `status` (null when absent).
fn condition_of(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn get_json(node: &Node, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    json(node.kubectl(&a).stdout_if_success())
}

/// `curl` with ARGS, its stdout (empty on failure).
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A child whose stdout lines arrive on a channel; killed on drop.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
    what: String,
}

/// Prefix of the stderr lines of a [`Lines::spawn_merged`] process.
const STDERR: &str = "stderr: ";

/// Sends `prefix` + each line of `from` to `tx` (echoed on the test's
/// stderr, tagged `echo`, when given) until either side ends.
fn forward_lines(
    from: impl std::io::Read + Send + 'static,
    tx: mpsc::Sender<String>,
    prefix: &'static str,
    echo: Option<String>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(tag) = &echo {
                eprintln!("{tag}: {line}");
            }
            if tx.send(format!("{prefix}{line}")).is_err() {
                break;
            }
        }
    });
}

impl Lines {
    /// Like [`Lines::spawn`], with the process's stderr lines in the same
    /// channel, prefixed with [`STDERR`] (notices that must be seen).
    fn spawn_merged(mut cmd: Command, what: &str) -> Lines {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let (tx, rx) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), tx.clone(), "", None);
        forward_lines(
            child.stderr.take().unwrap(),
            tx,
            STDERR,
            Some(what.to_string()),
        );
        Lines {
            child,
            rx,
            what: what.to_string(),
        }
    }

    fn spawn(mut cmd: Command, what: &str) -> Lines {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        let (tx, rx) = mpsc::channel();
        forward_lines(child.stdout.take().unwrap(), tx, "", None);
        Lines {
            child,
            rx,
            what: what.to_string(),
        }
    }

    /// Reads lines until one satisfies `want`; returns it.
    #[track_caller]
    fn until(&self, timeout: Duration, mut want: impl FnMut(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("{}: no wanted line within {timeout:?} ({e})", self.what),
            }
        }
    }
}

impl Lines {
    /// Accumulates the output until the documents in it satisfy `want`;
    /// returns the text.
    #[track_caller]
    fn until_text(&self, timeout: Duration, mut want: impl FnMut(&[Value]) -> bool) -> String {
        let mut text = String::new();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if want(&json_docs(&text)) {
                return text;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(e) => panic!("{}: not there within {timeout:?} ({e}):\n{text}", self.what),
            }
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exec_append(node: &Node, ns: &str, pod: &str, line: &str) {
    node.kubectl(&[
        "-n",
        ns,
        "exec",
        pod,
        "-c",
        "app",
        "--",
        "sh",
        "-c",
        &format!("echo '{line}' >> /var/log/app/app.log"),
    ])
    .stdout_if_success();
}

fn unique(tag: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{n:x}")
}

// ---------------------------------------------------------------------------
// The cases, in the order a user meets them.

/// The chart's operator runs as a pod, Ready; it registered its webhook with
/// the CA of its TLS Secret; the API server reaches it over TLS at its
/// Service (a server-side dry run of a selected pod comes back injected).
fn chart_operator_runs_and_the_api_server_calls_its_webhook(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let deploy = get_json(node, &["-n", OPERATOR_NS, "deploy/logstream-operator"]);
    assert_eq!(
        deploy["status"]["readyReplicas"], 2,
        "two replicas (tests/node/values.yaml): {deploy:#}"
    );
    let hook = get_json(
        node,
        &["mutatingwebhookconfiguration", "logstream-injector"],
    );
    let client = &hook["webhooks"][0]["clientConfig"];
    assert_eq!(client["service"]["namespace"], OPERATOR_NS, "{hook:#}");
    assert!(
        client["caBundle"].as_str().is_some_and(|b| !b.is_empty()),
        "no caBundle: {hook:#}"
    );

    // A namespace with a LogStream; a dry-run pod is mutated by the webhook.
    let ns = "webhook-check";
    node.kubectl(&["create", "namespace", ns])
        .stdout_if_success();
    apply_stream(node, ns, "w", "");
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"w","labels":{"app":"w"}},
        "spec":{"containers":[{"name":"app","image":"docker.io/library/busybox:1.36","command":["sleep","3600"]}]}}"#;
    let mutated = node.poll(
        "the webhook to inject a dry-run pod",
        CONVERGE,
        || {
            let out = node.kubectl_stdin(
                &[
                    "create",
                    "-n",
                    ns,
                    "--dry-run=server",
                    "-o",
                    "json",
                    "-f",
                    "-",
                ],
                pod,
            );
            let v: Value = serde_json::from_str(&out.stdout).ok()?;
            let init = v["spec"]["initContainers"].as_array()?.clone();
            init.iter()
                .any(|c| c["name"] == "logstream" && c["restartPolicy"] == "Always")
                .then_some(v)
        },
        || ctx.describe(ns),
    );
    assert_eq!(
        mutated["spec"]["containers"].as_array().unwrap().len(),
        1,
        "the app container is kept as it was: {mutated:#}"
    );
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// `kubectl apply -f examples/demo-app.yaml -f examples/logstream.yaml`: the
/// demo pods (which may start before the LogStream) end up with the native
/// sidecar exactly once, Running and Ready; the status says 2/2/0, Ready.
fn examples_get_the_native_sidecar_once(ctx: &Ctx) -> Result<(), Failed> {
    let pods = ctx.demo()?;
    assert_eq!(pods.len(), 2);
    let node = ctx.node();
    let ls = node.poll(
        "LogStream demo status 2/2/0",
        CONVERGE,
        || {
            let ls = get_json(node, &["-n", DEMO_NS, "ls/demo"]);
            let st = &ls["status"];
            (st["selectedPods"] == 2 && st["injectedPods"] == 2 && st["pendingRestartPods"] == 0)
                .then_some(ls)
        },
        || ctx.describe(DEMO_NS),
    );
    let ready = ls["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ready["status"], "True", "{ls:#}");
    for pod in &pods {
        let p = get_json(node, &["-n", DEMO_NS, "pod", pod]);
        let statuses = p["status"]["initContainerStatuses"].as_array().unwrap();
        let sidecar: Vec<_> = statuses
            .iter()
            .filter(|c| c["name"] == "logstream")
            .collect();
        assert_eq!(sidecar.len(), 1, "{p:#}");
        assert_eq!(sidecar[0]["started"], true, "{p:#}");
        assert_eq!(sidecar[0]["ready"], true, "{p:#}");
        assert_eq!(sidecar[0]["restartCount"], 0, "{p:#}");
    }
    Ok(())
}

/// examples/README.md step 3: `kubectl port-forward pod/POD`, then curl,
/// websocat and the web page in Chromium see the app's lines, old and new.
fn port_forward_to_a_pod_streams_to_curl_websocat_and_chromium(ctx: &Ctx) -> Result<(), Failed> {
    let pods = ctx.demo()?;
    let node = ctx.node();
    let pod = &pods[0];
    let pf = node.port_forward(DEMO_NS, &format!("pod/{pod}"), 7680);
    let url = pf.url();

    // curl: history, then a line written now.
    let mut cmd = Command::new("curl");
    cmd.args(["-sSN", &format!("{url}/stream?tail=5")]);
    let curl_stream = Lines::spawn(cmd, "curl /stream");
    curl_stream.until(CONVERGE, |l| l.contains("request n=") || l.contains("n="));
    let websocat = cache_dir().join("tools/bin/websocat");
    let mut cmd = Command::new(&websocat);
    cmd.args([
        "-t",
        "--no-close",
        &format!("ws://127.0.0.1:{}/ws?format=raw", pf.port),
    ]);
    let ws = Lines::spawn(cmd, "websocat /ws");

    let history = unique("before-page");
    exec_append(node, DEMO_NS, pod, &history);
    curl_stream.until(CONVERGE, |l| l.contains(&history));
    ws.until(CONVERGE, |l| l.contains(&history));

    // The page: the marker written before it opened is in its history, one
    // written after READY arrives live.
    let live = unique("after-page");
    let mut cmd = Command::new("node");
    cmd.arg(repo_root().join("tests/browser/page.mjs"))
        .arg(format!("{url}/"))
        .args(["--history", &history, "--live", &live]);
    let page = Lines::spawn(cmd, "page.mjs in Chromium");
    page.until(CONVERGE, |l| l == "READY");
    exec_append(node, DEMO_NS, pod, &live);
    page.until(CONVERGE, |l| l == format!("SEEN {live}"));
    page.until(CONVERGE, |l| l == "DONE");
    curl_stream.until(CONVERGE, |l| l.contains(&live));
    ws.until(CONVERGE, |l| l.contains(&live));
    Ok(())
}

/// A ServiceAccount that may `get pods/log` in `ns`, one that may not; their
/// tokens, minted by the API server.
fn reader_and_stranger_tokens(node: &Node, ns: &str) -> (String, String) {
    node.kubectl_stdin(
        &["apply", "-n", ns, "-f", "-"],
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: log-reader}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: stranger}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: log-reader}
rules:
- {apiGroups: [""], resources: [pods/log], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: log-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: log-reader}
subjects:
- {kind: ServiceAccount, name: log-reader}
"#,
    )
    .stdout_if_success();
    let token = |sa: &str| {
        node.kubectl(&["-n", ns, "create", "token", sa])
            .stdout_if_success()
            .trim()
            .to_string()
    };
    (token("log-reader"), token("stranger"))
}

fn cluster_ip(node: &Node, ns: &str, svc: &str) -> String {
    node.kubectl(&[
        "-n",
        ns,
        "get",
        "svc",
        svc,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
    .stdout_if_success()
    .to_string()
}

/// examples/README.md step 4: the aggregator Deployment pulls every pod;
/// through `kubectl port-forward svc/logstream-aggregator` the Loki API
/// returns lines of both. From a client that is not loopback (a network
/// namespace on the pod bridge, through the ClusterIP), a token that may
/// `get pods/log` reads, one that may not gets 403, none gets 401.
fn aggregator_serves_every_pod_and_checks_real_tokens(ctx: &Ctx) -> Result<(), Failed> {
    let pods = ctx.demo()?;
    let node = ctx.node();
    aggregator_rolled_out(ctx, DEMO_NS);
    let pf = node.port_forward(DEMO_NS, "svc/logstream-aggregator", 7680);
    let markers: Vec<(String, String)> = pods
        .iter()
        .map(|p| (p.clone(), unique(&format!("agg-{p}"))))
        .collect();
    for (pod, marker) in &markers {
        exec_append(node, DEMO_NS, pod, marker);
    }
    let query = format!(
        "{}/loki/api/v1/query_range?query=%7Bnamespace%3D%22{DEMO_NS}%22%7D%20%7C%3D%20%22agg-%22&limit=1000&since=10m",
        pf.url()
    );
    node.poll(
        "the Loki API to return the marker of every pod",
        CONVERGE,
        || {
            let (ok, body) = curl(&["-sS", "--max-time", "10", &query]);
            let v: Value = serde_json::from_str(&body).ok()?;
            let mut seen = BTreeSet::new();
            for stream in v["data"]["result"].as_array()? {
                let pod = stream["stream"]["pod"].as_str().unwrap_or_default();
                for value in stream["values"].as_array()? {
                    let line = value[1].as_str().unwrap_or_default();
                    for (p, m) in &markers {
                        if line.contains(m.as_str()) && p == pod {
                            seen.insert(m.clone());
                        }
                    }
                }
            }
            (ok && seen.len() == markers.len()).then_some(())
        },
        || ctx.describe(DEMO_NS),
    );

    let (reader, stranger) = reader_and_stranger_tokens(node, DEMO_NS);
    let ip = cluster_ip(node, DEMO_NS, "logstream-aggregator");
    let client = node.client(1);
    let code = |token: Option<&str>| {
        let mut c = client.command("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        c.arg(format!("http://{ip}:7680/loki/api/v1/labels"));
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // kube-proxy may need a moment for a new client's first packets.
    node.poll(
        "the aggregator's ClusterIP to answer the client namespace",
        CONVERGE,
        || (code(None) != "000").then_some(()),
        || ctx.describe(DEMO_NS),
    );
    assert_eq!(code(None), "401", "no token");
    assert_eq!(code(Some(&stranger)), "403", "token without pods/log");
    assert_eq!(code(Some(&reader)), "200", "token with pods/log");
    assert_eq!(code(Some("not-a-token")), "401", "bad token");
    Ok(())
}

/// Service `demo-logstream` has `sessionAffinity: ClientIP`: repeated
/// requests of one client (a network namespace on the pod bridge) land on
/// one pod, through kube-proxy.
fn service_client_ip_affinity_keeps_a_client_on_one_pod(ctx: &Ctx) -> Result<(), Failed> {
    let pods = ctx.demo()?;
    let node = ctx.node();
    let svc = get_json(node, &["-n", DEMO_NS, "svc/demo-logstream"]);
    assert_eq!(svc["spec"]["sessionAffinity"], "ClientIP", "{svc:#}");
    let (reader, _) = reader_and_stranger_tokens(node, DEMO_NS);
    let ip = cluster_ip(node, DEMO_NS, "demo-logstream");
    let client = node.client(2);
    let which_pod = || -> Option<String> {
        let out = client
            .command("curl")
            .args(["-sSN", "--max-time", "5"])
            .args(["-H", &format!("Authorization: Bearer {reader}")])
            .arg(format!("http://{ip}:7680/stream?format=json&tail=1"))
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout);
        let first = body.lines().next()?;
        let v: Value = serde_json::from_str(first).ok()?;
        v["pod"].as_str().map(str::to_string)
    };
    let first = node.poll(
        "a record through the Service from the client namespace",
        CONVERGE,
        which_pod,
        || ctx.describe(DEMO_NS),
    );
    assert!(pods.contains(&first), "{first} is not one of {pods:?}");
    let mut seen = BTreeMap::new();
    for _ in 0..12 {
        *seen.entry(which_pod().expect("a record")).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 1, "one client, several pods: {seen:?}");
    assert!(seen.contains_key(&first), "{seen:?} vs {first}");
    Ok(())
}

/// The Ingress host of the examples (`logstream.yaml`).
const INGRESS_HOST: &str = "logs.demo.localtest.me";

/// Requests to `path` served by each aggregator pod so far (its
/// `/metrics`, through a port-forward to the pod), by pod name.
fn aggregator_requests(node: &Node, pods: &[String], path: &str) -> BTreeMap<String, u64> {
    let want =
        format!("logstream_http_request_duration_seconds_count{{path=\"{path}\",code=\"200\"}} ");
    pods.iter()
        .map(|pod| {
            let pf = node.port_forward(DEMO_NS, &format!("pod/{pod}"), 7680);
            let (ok, body) = curl(&["-sS", "--max-time", "10", &format!("{}/metrics", pf.url())]);
            assert!(ok, "metrics of {pod}: {body}");
            let n = body
                .lines()
                .find_map(|l| l.strip_prefix(want.as_str()))
                .map_or(0, |n| n.trim().parse().unwrap());
            (pod.clone(), n)
        })
        .collect()
}

/// examples/README.md step 6 through a real ingress controller: Traefik
/// (tests/node/traefik.yaml, the node's default IngressClass) routes
/// `logs.demo.localtest.me` (resolved by the client namespace's hosts file)
/// to the aggregator with the operator's Ingress: 401 without a token,
/// Grafana's health check and SSE with one; its sticky cookie (read from the
/// aggregator's Service) keeps a client on one of the two replicas, which
/// round-robin without it.
fn an_ingress_through_traefik_keeps_a_client_on_one_aggregator_replica(
    ctx: &Ctx,
) -> Result<(), Failed> {
    ctx.demo()?;
    let node = ctx.node();
    aggregator_rolled_out(ctx, DEMO_NS);
    let ingress = get_json(node, &["-n", DEMO_NS, "ingress/demo-logstream"]);
    assert_eq!(
        ingress["spec"]["rules"][0]["host"], INGRESS_HOST,
        "{ingress:#}"
    );
    let client = node.client(3);
    let url = |path: &str| format!("http://{INGRESS_HOST}{path}");
    // (status, headers and body) of `curl -i ARGS URL` from the client.
    let request = |args: &[&str], path: &str| -> (String, String) {
        let out = client
            .command("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .args(args)
            .arg(url(path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text.split_whitespace().nth(1).unwrap_or("000").to_string();
        (status, text)
    };
    // 404 until Traefik has read the Ingress, 503 until it has endpoints.
    let (_, refused) = node.poll(
        "Traefik to route the Ingress to the aggregator (401 without a token)",
        CONVERGE,
        || {
            let (status, text) = request(&[], "/stream");
            (status == "401").then_some((status, text))
        },
        || {
            let traefik = node.kubectl(&["-n", "traefik", "logs", "deploy/traefik", "--tail=20"]);
            format!(
                "{}{}\n{}",
                traefik.stdout,
                traefik.stderr,
                ctx.describe(DEMO_NS)
            )
        },
    );
    assert!(refused.contains("Kubernetes token"), "{refused}");
    assert!(
        refused
            .to_ascii_lowercase()
            .contains("set-cookie: logstream-affinity="),
        "no sticky cookie from Traefik: {refused}"
    );
    let (reader, _) = reader_and_stranger_tokens(node, DEMO_NS);
    let bearer = format!("Authorization: Bearer {reader}");
    let (status, health) = request(
        &["-H", &bearer],
        "/loki/api/v1/query?query=vector(1)%2Bvector(1)&time=4000000000",
    );
    assert_eq!(status, "200", "{health}");
    assert!(health.contains(r#""value":[4000000000,"2"]"#), "{health}");
    let sse = client
        .command("curl")
        .args(["-sSN", "--max-time", "3", "-H", &bearer])
        .arg(url("/sse?tail=5&format=raw"))
        .output()
        .unwrap();
    let sse = String::from_utf8_lossy(&sse.stdout);
    assert!(
        sse.contains("event: hello"),
        "no SSE through Traefik: {sse}"
    );
    assert!(
        sse.matches("\ndata:").count() >= 5,
        "fewer than 5 records: {sse}"
    );

    // Two replicas; which one served a request shows in its metrics.
    let replicas: Vec<String> = node
        .kubectl(&[
            "-n",
            DEMO_NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=aggregator",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .stdout_if_success()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(replicas.len(), 2, "aggregator replicas: {replicas:?}");
    let labels = "/loki/api/v1/labels";
    let served = |cookie: Option<&str>| {
        let before = aggregator_requests(node, &replicas, labels);
        for _ in 0..12 {
            let mut args = vec!["-H", bearer.as_str()];
            if let Some(c) = cookie {
                args.extend(["-b", c]);
            }
            let (status, text) = request(&args, labels);
            assert_eq!(status, "200", "{text}");
        }
        let after = aggregator_requests(node, &replicas, labels);
        replicas
            .iter()
            .map(|r| after[r] - before[r])
            .collect::<Vec<u64>>()
    };
    let spread = served(None);
    assert!(
        spread.iter().all(|&n| n > 0),
        "without the cookie Traefik should use both replicas: {spread:?}"
    );
    let cookie = refused
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie").then(|| {
                value
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
        })
        .unwrap();
    let sticky = served(Some(&cookie));
    assert_eq!(
        sticky.iter().filter(|&&n| n > 0).count(),
        1,
        "with the cookie {cookie} every request should reach one replica: {sticky:?}"
    );
    assert_eq!(sticky.iter().sum::<u64>(), 12, "{sticky:?}");
    Ok(())
}

/// Runs `script` in a busybox pod of `ns` as ServiceAccount `sa` (its token
/// mounted, as Grafana's is) and returns its phase and output once it ends.
fn run_pod(node: &Node, ns: &str, name: &str, sa: &str, script: &str) -> (String, String) {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": sa,
            "restartPolicy": "Never",
            "containers": [{
                "name": "client",
                "image": "docker.io/library/busybox:1.36",
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }],
        },
    });
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &pod.to_string())
        .stdout_if_success();
    let phase = node.poll(
        &format!("pod {ns}/{name} to finish"),
        CONVERGE,
        || {
            let p = get_json(node, &["-n", ns, &format!("pod/{name}")]);
            let phase = p["status"]["phase"].as_str()?.to_string();
            (phase == "Succeeded" || phase == "Failed").then_some(phase)
        },
        || {
            let d = node.kubectl(&["-n", ns, "describe", "pod", name]);
            format!("{}{}", d.stdout, d.stderr)
        },
    );
    let logs = node.kubectl(&["-n", ns, "logs", name]);
    (phase, format!("{}{}", logs.stdout, logs.stderr))
}

/// examples/README.md step 5, "A Grafana in the cluster": a pod in namespace
/// `monitoring` running as ServiceAccount `grafana` reaches the aggregator at
/// the URL of examples/grafana/datasource.yaml through the cluster DNS
/// (CoreDNS, tests/node/coredns.yaml), sending its own mounted token as that
/// file's header says; once the README's Role and RoleBinding grant it
/// `pods/log`, Grafana's health check answers 2 and the labels come back;
/// another ServiceAccount of that namespace gets 403.
fn an_in_cluster_grafana_reaches_the_aggregator_by_dns_with_its_token(
    ctx: &Ctx,
) -> Result<(), Failed> {
    ctx.demo()?;
    let node = ctx.node();
    let ds: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("examples/grafana/datasource.yaml")).unwrap(),
    )
    .unwrap();
    let source = &ds["datasources"][0];
    let url = source["url"].as_str().unwrap();
    assert_eq!(url, "http://logstream-aggregator.demo.svc:7680");
    assert_eq!(source["jsonData"]["httpHeaderName1"], "Authorization");
    let value = source["secureJsonData"]["httpHeaderValue1"]
        .as_str()
        .unwrap();
    // Grafana expands $__file{PATH} to the file's content when it provisions.
    let (prefix, path) = value
        .split_once("$__file{")
        .and_then(|(pre, rest)| Some((pre, rest.strip_suffix('}')?)))
        .unwrap_or_else(|| panic!("no $__file{{...}} in {value}"));
    let ns = "monitoring";
    node.kubectl(&["create", "namespace", ns])
        .stdout_if_success();
    for sa in ["grafana", "stranger"] {
        node.kubectl(&["-n", ns, "create", "serviceaccount", sa])
            .stdout_if_success();
    }
    // The grant, as examples/README.md writes it.
    node.kubectl(&[
        "-n",
        DEMO_NS,
        "create",
        "role",
        "logstream-viewer",
        "--verb=get",
        "--resource=pods/log",
    ])
    .stdout_if_success();
    node.kubectl(&[
        "-n",
        DEMO_NS,
        "create",
        "rolebinding",
        "grafana-logstream-viewer",
        "--role=logstream-viewer",
        "--serviceaccount=monitoring:grafana",
    ])
    .stdout_if_success();
    let script = format!(
        "set -e; nslookup logstream-aggregator.demo.svc.cluster.local; \
         auth=\"Authorization: {prefix}$(cat {path})\"; \
         wget -qO- --header \"$auth\" '{url}/loki/api/v1/query?query=vector(1)%2Bvector(1)&time=4000000000'; echo; \
         wget -qO- --header \"$auth\" '{url}/loki/api/v1/labels'; echo"
    );
    let (phase, out) = run_pod(node, ns, "grafana", "grafana", &script);
    assert_eq!(phase, "Succeeded", "{out}");
    assert!(out.contains(r#""value":[4000000000,"2"]"#), "{out}");
    assert!(
        out.contains(r#""pod""#) && out.contains(r#""level""#),
        "{out}"
    );
    let (phase, out) = run_pod(node, ns, "stranger", "stranger", &script);
    assert_eq!(phase, "Failed", "{out}");
    assert!(out.contains("403"), "{out}");
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    for what in [
        "rolebinding/grafana-logstream-viewer",
        "role/logstream-viewer",
    ] {
        node.kubectl(&["-n", DEMO_NS, "delete", what])
            .stdout_if_success();
    }
    Ok(())
}

/// Switching a LogStream from `kubernetes` to `token` access must not break
/// the aggregator replicas still running in kubernetes mode while the
/// rollout replaces them: they keep their TokenReview/SubjectAccessReview
/// rights (the auth-delegator binding) until they are gone, and the binding
/// goes once they are. The rollout is paused, so the old replicas stay for
/// as long as the case needs them (before: the binding was removed at once
/// and a reader's token got an error from every old replica).
fn an_access_mode_switch_keeps_old_replicas_able_to_check_tokens(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "access-switch";
    namespace_with_stream(ctx, ns, "sw", "");
    aggregator_rolled_out(ctx, ns);
    let binding = format!("clusterrolebinding/logstream:auth-delegator:{ns}");
    node.kubectl(&["get", &binding]).stdout_if_success();
    let (reader, _) = reader_and_stranger_tokens(node, ns);
    node.kubectl(&["-n", ns, "rollout", "pause", "deploy/logstream-aggregator"])
        .stdout_if_success();
    let old_pods: Vec<String> = node
        .kubectl(&[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=aggregator",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ])
        .stdout_if_success()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!old_pods.is_empty(), "no aggregator pods in {ns}");
    node.kubectl(&[
        "-n",
        ns,
        "create",
        "secret",
        "generic",
        "sw-token",
        "--from-literal=token=0123456789abcdef0123456789abcdef",
    ])
    .stdout_if_success();
    node.kubectl(&[
        "-n",
        ns,
        "patch",
        "ls",
        "sw",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"access":{"mode":"token","tokenSecret":{"name":"sw-token","key":"token"}}}}"#,
    ])
    .stdout_if_success();
    // The operator has reconciled the switch: the Deployment (paused, so
    // not rolled out) no longer asks for Kubernetes tokens, and the
    // LogStream's status is of the new generation.
    node.poll(
        "the operator to apply token mode to the paused aggregator Deployment",
        CONVERGE,
        || {
            let d = get_json(node, &["-n", ns, "deploy/logstream-aggregator"]);
            let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()?
                .clone();
            let kube = env
                .iter()
                .any(|e| e["name"] == "LOGSTREAM_KUBERNETES_AUTH" && e["value"] == "true");
            let ls = get_json(node, &["-n", ns, "ls/sw"]);
            (!kube && ls["status"]["observedGeneration"] == ls["metadata"]["generation"])
                .then_some(())
        },
        || ctx.describe(ns),
    );
    // The old replicas still serve a Kubernetes token with pods/log.
    let client = node.client(4);
    for ip in &old_pods {
        let out = client
            .command("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--max-time", "10"])
            .args(["-H", &format!("Authorization: Bearer {reader}")])
            .arg(format!("http://{ip}:7680/loki/api/v1/labels"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.trim_end().ends_with("200"),
            "old replica {ip} after the switch: {body}"
        );
    }
    node.kubectl(&["get", &binding]).stdout_if_success();
    // Once the rollout has replaced them, the binding goes.
    node.kubectl(&["-n", ns, "rollout", "resume", "deploy/logstream-aggregator"])
        .stdout_if_success();
    node.poll(
        "the auth-delegator binding to go with the last kubernetes-mode replica",
        CONVERGE,
        || {
            let out = node.kubectl(&["get", &binding, "--ignore-not-found", "-o", "name"]);
            (out.success && out.stdout.trim().is_empty()).then_some(())
        },
        || ctx.describe(ns),
    );
    Ok(())
}

/// Issue "restartPods looped": a Deployment of 2 replicas created before its
/// LogStream, with `restartPods: true`, converges to 2 injected pods with
/// exactly one extra ReplicaSet and one template change, and stays there when
/// later events reconcile the LogStream again.
fn restart_pods_rolls_an_existing_deployment_once(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "restart";
    node.kubectl(&["create", "namespace", ns])
        .stdout_if_success();
    node.kubectl(&["apply", "-n", ns, "-f", "examples/demo-app.yaml"])
        .stdout_if_success();
    node.kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        "deploy/demo",
        "--timeout=120s",
    ])
    .stdout_if_success();
    let pods = node.kubectl(&["-n", ns, "get", "pods", "-l", "app=demo", "-o", "json"]);
    checks(&["pods-without-sidecar", "2"], &pods.stdout).map_err(Failed::from)?;

    node.kubectl(&["apply", "-n", ns, "-f", "examples/logstream.yaml"])
        .stdout_if_success();
    converged_pods(node, ns, "app=demo", 2).map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    let rs_count = || {
        get_json(node, &["-n", ns, "rs", "-l", "app=demo"])["items"]
            .as_array()
            .unwrap()
            .len()
    };
    let generation =
        || get_json(node, &["-n", ns, "deploy/demo"])["metadata"]["generation"].clone();
    assert_eq!(rs_count(), 2, "{}", ctx.describe(ns));
    assert_eq!(generation(), 2, "{}", ctx.describe(ns));

    // More reconciles: a pod replaced by its ReplicaSet, a LogStream change
    // that is not a new need. Neither restarts the app again.
    let victim = node
        .kubectl(&[
            "-n",
            ns,
            "get",
            "pods",
            "-l",
            "app=demo",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .stdout_if_success()
        .to_string();
    node.kubectl(&["-n", ns, "delete", "pod", &victim, "--wait=true"])
        .stdout_if_success();
    node.kubectl(&["-n", ns, "annotate", "ls/demo", "touched=yes"])
        .stdout_if_success();
    converged_pods(node, ns, "app=demo", 2).map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    node.poll(
        "LogStream status 2/2/0 after the replacement",
        CONVERGE,
        || {
            let st = get_json(node, &["-n", ns, "ls/demo"])["status"].clone();
            (st["injectedPods"] == 2 && st["pendingRestartPods"] == 0).then_some(())
        },
        || ctx.describe(ns),
    );
    assert_eq!(rs_count(), 2, "{}", ctx.describe(ns));
    assert_eq!(generation(), 2, "{}", ctx.describe(ns));
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// Deleting a pod while a client follows the aggregator: every line the app
/// wrote before it exited reaches the client exactly once; the app stops
/// first, then the sidecar, with exit code 0.
fn deleting_a_pod_loses_no_line(ctx: &Ctx) -> Result<(), Failed> {
    drain_case(ctx, "drain", 0)
}

/// An app that keeps writing for 20 s after SIGTERM, within the default
/// 30 s grace: the sidecar streams until the app is gone and drains in
/// what is left (its budget is the pod's grace period, set by the webhook).
fn an_app_that_exits_20s_after_sigterm_loses_no_line(ctx: &Ctx) -> Result<(), Failed> {
    drain_case(ctx, "drain-slow", 20)
}

/// Creates `ns` with a LogStream `counter`, applies the counter app `pod`
/// there, waits for it and the aggregator, and follows the aggregator from
/// the start of its history; returns the port-forward, the follower and
/// its first `counter-line` record.
fn counter_followed(
    ctx: &Ctx,
    ns: &str,
    pod: &str,
) -> Result<(PortForward, Lines, Vec<String>), Failed> {
    let node = ctx.node();
    namespace_with_stream(ctx, ns, "counter", "");
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], pod)
        .stdout_if_success();
    converged_pods(node, ns, "app=counter", 1).map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    aggregator_rolled_out(ctx, ns);
    let pf = node.port_forward(ns, "svc/logstream-aggregator", 7680);
    let mut cmd = Command::new(logstream_tests::workspace_bin("logstream", "logstream"));
    cmd.args([
        "tail",
        &pf.url(),
        "--json",
        "--tail",
        "1000000",
        "--grep",
        "counter-",
    ]);
    let follow = Lines::spawn(cmd, "logstream tail --json (aggregator)");
    let first = follow.until(CONVERGE, |l| l.contains("counter-line"));
    Ok((pf, follow, vec![first]))
}

/// How often each `counter-line N` came, by N.
fn counter_lines(records: &[String]) -> BTreeMap<u64, u32> {
    let mut count = BTreeMap::new();
    for r in records {
        if let Some(k) = json(r)["line"]
            .as_str()
            .and_then(|l| l.strip_prefix("counter-line "))
            .and_then(|k| k.trim().parse::<u64>().ok())
        {
            *count.entry(k).or_insert(0u32) += 1;
        }
    }
    count
}

/// Deletes a numbered-lines app `linger` seconds of writing after SIGTERM
/// while a client follows the aggregator; counts lost and repeated lines
/// and checks the order and exit codes of app and sidecar.
fn drain_case(ctx: &Ctx, ns: &str, linger: u32) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    // The app numbers its lines; LINGER seconds after SIGTERM it writes one
    // last line with the count, then exits.
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: counter, labels: {app: counter}}
spec:
  containers:
  - name: app
    image: docker.io/library/busybox:1.36
    env: [{name: LINGER, value: "LINGER_S"}]
    command:
    - sh
    - -c
    - |
      n=0; stop=0
      trap 'stop=$(date +%s)' TERM
      while true; do
        n=$((n+1)); echo "counter-line $n" >> /var/log/app/app.log
        if [ $stop -gt 0 ] && [ $(( $(date +%s) - stop )) -ge $LINGER ]; then
          echo "counter-last $n" >> /var/log/app/app.log; exit 0
        fi
        sleep 0.01
      done
    volumeMounts: [{name: logs, mountPath: /var/log/app}]
  volumes: [{name: logs, emptyDir: {}}]
"#
    .replace("LINGER_S", &linger.to_string());
    let (_pf, follow, mut records) = counter_followed(ctx, ns, &pod)?;

    // Watch the pod's container states through its deletion.
    let mut cmd = Command::new(node.bin_dir.join("kubectl"));
    cmd.arg("--kubeconfig")
        .arg(&node.kubeconfig)
        .args(["-n", ns, "get", "pod", "counter", "--watch", "-o", "json"]);
    let watch = Lines::spawn(cmd, "kubectl get pod --watch");
    node.kubectl(&[
        "-n",
        ns,
        "delete",
        "pod",
        "counter",
        "--wait=true",
        "--timeout=90s",
    ])
    .stdout_if_success();

    let last = follow.until(CONVERGE, |l| {
        records.push(l.to_string());
        l.contains("counter-last")
    });
    let n: u64 = json(&last)["line"]
        .as_str()
        .and_then(|l| l.strip_prefix("counter-last "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{last}"));
    let count = counter_lines(&records);
    let lost: Vec<u64> = (1..=n).filter(|k| !count.contains_key(k)).collect();
    let repeated: Vec<(&u64, &u32)> = count.iter().filter(|(_, c)| **c > 1).collect();
    eprintln!(
        "drain ({linger} s after SIGTERM): {n} lines written, lost {}, repeated {}",
        lost.len(),
        repeated.len()
    );
    assert!(n > 0);
    assert!(
        lost.is_empty(),
        "{} of {n} lines lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(repeated.is_empty(), "repeated: {repeated:?}");

    // The last status the watch saw: the app ended first, the sidecar after
    // it, both with exit code 0.
    let text = watch.until_text(CONVERGE, |docs| {
        docs.iter()
            .any(|d| terminated(d, "initContainerStatuses", "logstream").is_some())
    });
    let docs = json_docs(&text);
    let pod = docs
        .iter()
        .rev()
        .find(|d| terminated(d, "initContainerStatuses", "logstream").is_some())
        .unwrap();
    let app = terminated(pod, "containerStatuses", "app").unwrap_or_else(|| panic!("{pod:#}"));
    let sidecar = terminated(pod, "initContainerStatuses", "logstream").unwrap();
    assert_eq!(app["exitCode"], 0, "{pod:#}");
    assert_eq!(sidecar["exitCode"], 0, "{pod:#}");
    assert!(
        app["finishedAt"].as_str() <= sidecar["finishedAt"].as_str(),
        "the sidecar ended before the app: {pod:#}"
    );
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// Polls `f` until it gives a value, for at most `limit`.
fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The host pid of the injected sidecar of pod `pod` of namespace `ns`
/// (the node's processes are this machine's: found by command line and
/// environment).
fn sidecar_pid_of(ns: &str, pod: &str) -> Option<u32> {
    let want = format!("POD_NAMESPACE={ns}");
    let want_pod = format!("POD_NAME={pod}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_sidecar = args.first().is_some_and(|a| a.ends_with(b"logstream"))
            && args.get(1).is_some_and(|a| *a == b"sidecar");
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |w: &str| vars.contains(&w.as_bytes());
        (is_sidecar && has(&want) && has(&want_pod)).then_some(pid)
    })
}

/// SIGKILLs the sidecar of pod `pod` of `ns` (as the OOM killer or a node
/// problem would) once it has saved its positions, and waits until the
/// kubelet has restarted it and it is ready again.
fn kill_sidecar_and_wait_restart(ctx: &Ctx, ns: &str, pod: &str) -> Result<(), Failed> {
    let node = ctx.node();
    let pid = sidecar_pid_of(ns, pod)
        .ok_or_else(|| format!("the sidecar process of {ns}/{pod} is not on this machine"))?;
    // Positions are saved about once a second: wait for the first save,
    // read through the process's own root.
    let saved = format!("/proc/{pid}/root/var/run/logstream/state/positions.json");
    wait_for(CONVERGE, || {
        std::fs::read_to_string(&saved)
            .is_ok_and(|t| t.contains("app.log"))
            .then_some(())
    })
    .ok_or_else(|| format!("{saved} never written"))?;
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    if !killed.success() {
        return Err(format!("kill -KILL {pid} failed").into());
    }
    wait_for(CONVERGE, || {
        let p = get_json(node, &["-n", ns, "pod", pod]);
        let st = p["status"]["initContainerStatuses"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "logstream").cloned())
            .unwrap_or_default();
        (st["restartCount"].as_u64() >= Some(1) && st["ready"] == true).then_some(())
    })
    .ok_or_else(|| format!("the sidecar was not restarted\n{}", ctx.describe(ns)))?;
    Ok(())
}

/// The sidecar container is killed (SIGKILL, as the OOM killer or a node
/// problem would) while the app writes numbered lines; the kubelet restarts
/// it, and a client following the aggregator from the start gets every
/// line once: the restarted sidecar continues its sources from its state
/// emptyDir. Before, it read the end of the file again under new ids and
/// the client got those lines twice.
fn a_killed_sidecar_repeats_nothing_downstream(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "sidecar-kill";
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: counter, labels: {app: counter}}
spec:
  containers:
  - name: app
    image: docker.io/library/busybox:1.36
    command: [sh, -c, 'n=0; while true; do n=$((n+1)); echo "counter-line $n" >> /var/log/app/app.log; sleep 0.01; done']
    volumeMounts: [{name: logs, mountPath: /var/log/app}]
  volumes: [{name: logs, emptyDir: {}}]
"#;
    let (_pf, follow, mut records) = counter_followed(ctx, ns, pod)?;
    // The kubelet restarts it; then one more line, the end marker.
    kill_sidecar_and_wait_restart(ctx, ns, "counter")?;
    exec_append(node, ns, "counter", "counter-end");
    follow.until(CONVERGE, |l| {
        records.push(l.to_string());
        l.contains("counter-end")
    });
    let count = counter_lines(&records);
    let (first, last) = (
        *count.keys().next().ok_or("no lines")?,
        *count.keys().last().ok_or("no lines")?,
    );
    let lost: Vec<u64> = (first..=last).filter(|k| !count.contains_key(k)).collect();
    let repeated: Vec<(&u64, &u32)> = count.iter().filter(|(_, c)| **c > 1).collect();
    eprintln!(
        "killed sidecar: lines {first}..={last} seen, lost {}, repeated {}",
        lost.len(),
        repeated.len()
    );
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(20)]);
    assert!(
        repeated.is_empty(),
        "{} lines repeated: {:?}",
        repeated.len(),
        &repeated[..repeated.len().min(20)]
    );
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

// ---------------------------------------------------------------------------
// kubectl logstream

/// `kubectl logstream ARGS` as a user runs it: kubectl finds the plugin on
/// PATH and passes KUBECONFIG on; stdout and stderr (prefixed) as lines.
fn kubectl_logstream(node: &Node, args: &[&str], kubeconfig: &std::path::Path) -> Command {
    let plugin = logstream_tests::workspace_bin("kubectl-logstream", "kubectl-logstream");
    let dir = plugin.parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut cmd = Command::new(node.bin_dir.join("kubectl"));
    cmd.arg("logstream")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .env("NO_COLOR", "1");
    cmd
}

/// `counter-line POD N` lines: N by pod, with how often each came.
fn counters_by_pod(records: &[Value]) -> BTreeMap<String, BTreeMap<u64, u32>> {
    let mut by_pod: BTreeMap<String, BTreeMap<u64, u32>> = BTreeMap::new();
    for r in records {
        let Some(rest) = r["line"]
            .as_str()
            .and_then(|l| l.strip_prefix("counter-line "))
        else {
            continue;
        };
        let mut it = rest.split_whitespace();
        if let (Some(pod), Some(n)) = (it.next(), it.next().and_then(|n| n.parse().ok())) {
            *by_pod
                .entry(pod.to_string())
                .or_default()
                .entry(n)
                .or_insert(0) += 1;
        }
    }
    by_pod
}

/// `kubectl logstream tail deploy/counter` over a Deployment of two pods
/// that number their lines: both pods' lines, in write order across pods
/// (markers written one after the other come out in that order), none
/// lost or repeated through a SIGKILLed and restarted sidecar; a third pod
/// joins when the Deployment scales; a deleted pod is announced and the
/// command goes on; Ctrl-C ends it with 0. `-l` through the aggregator
/// sees both pods; `status` names the LogStream and its pods.
fn kubectl_logstream_tails_a_deployment_through_restarts_and_new_pods(
    ctx: &Ctx,
) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "plugin";
    namespace_with_stream(ctx, ns, "counter", "");
    let deploy = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: counter}
spec:
  replicas: 2
  selector: {matchLabels: {app: counter}}
  template:
    metadata: {labels: {app: counter}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: docker.io/library/busybox:1.36
        command: [sh, -c, 'n=0; while true; do n=$((n+1)); echo "counter-line $HOSTNAME $n" >> /var/log/app/app.log; sleep 0.05; done']
        volumeMounts: [{name: logs, mountPath: /var/log/app}]
      volumes: [{name: logs, emptyDir: {}}]
"#;
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], deploy)
        .stdout_if_success();
    let pods = converged_pods(node, ns, "app=counter", 2)
        .map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    let cmd = kubectl_logstream(
        node,
        &[
            "tail",
            "deploy/counter",
            "-n",
            ns,
            "-o",
            "json",
            "--tail",
            "1000000",
        ],
        &node.kubeconfig,
    );
    let tail = Lines::spawn_merged(cmd, "kubectl logstream tail deploy/counter");
    let mut records: Vec<Value> = Vec::new();
    let mut stderr: Vec<String> = Vec::new();
    let take = |l: &str, records: &mut Vec<Value>, stderr: &mut Vec<String>| match l
        .strip_prefix(STDERR)
    {
        Some(e) => stderr.push(e.to_string()),
        None => records.push(json(l)),
    };
    // Both pods stream.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    tail.until(CONVERGE, |l| {
        take(l, &mut records, &mut stderr);
        if let Some(r) = records.last() {
            seen.insert(r["pod"].as_str().unwrap_or_default().to_string());
        }
        pods.iter().all(|p| seen.contains(p))
    });

    // Across pods, in the order written: one pod then the other, and back.
    let (a, b) = (&pods[0], &pods[1]);
    let marks = [
        (a, unique("mark-1")),
        (b, unique("mark-2")),
        (b, unique("mark-3")),
        (a, unique("mark-4")),
    ];
    for (pod, mark) in &marks {
        exec_append(node, ns, pod, mark);
    }
    let last = &marks[3].1;
    tail.until(CONVERGE, |l| {
        take(l, &mut records, &mut stderr);
        l.contains(last.as_str())
    });
    let order: Vec<&str> = records
        .iter()
        .filter_map(|r| r["line"].as_str())
        .filter(|l| l.starts_with("mark-"))
        .collect();
    let want: Vec<&str> = marks.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(order, want, "markers out of write order");
    for r in records
        .iter()
        .filter(|r| r["line"].as_str().is_some_and(|l| l.starts_with("mark-")))
    {
        assert_eq!(r["container"], "app", "{r}");
        assert_eq!(r["file"], "app.log", "{r}");
    }

    // One pod's sidecar is SIGKILLed; the kubelet restarts it.
    kill_sidecar_and_wait_restart(ctx, ns, a)?;
    let after_restart = unique("after-restart");
    exec_append(node, ns, a, &after_restart);
    tail.until(CONVERGE, |l| {
        take(l, &mut records, &mut stderr);
        l.contains(after_restart.as_str())
    });

    // A third pod joins.
    node.kubectl(&["-n", ns, "scale", "deploy/counter", "--replicas=3"])
        .stdout_if_success();
    let three = converged_pods(node, ns, "app=counter", 3)
        .map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    let c = three
        .iter()
        .find(|p| !pods.contains(p))
        .ok_or("no third pod")?
        .clone();
    tail.until(CONVERGE, |l| {
        take(l, &mut records, &mut stderr);
        records.last().is_some_and(|r| r["pod"] == c.as_str())
    });

    // A pod goes away: announced, not an error.
    node.kubectl(&["-n", ns, "delete", "pod", b, "--wait=false"])
        .stdout_if_success();
    tail.until(CONVERGE, |l| {
        take(l, &mut records, &mut stderr);
        l.starts_with(STDERR) && l.contains(&format!("- pod {b}"))
    });
    let pid = tail.child.id();
    let interrupted = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    assert!(interrupted.success());
    let mut tail = tail;
    let status = tail.child.wait()?;
    assert_eq!(
        status.code(),
        Some(0),
        "Ctrl-C ends kubectl logstream with 0"
    );

    // Every pod's numbered lines: contiguous from the first seen, none twice.
    let by_pod = counters_by_pod(&records);
    for p in [a, &c] {
        let count = by_pod
            .get(p.as_str())
            .ok_or_else(|| format!("no line of {p}"))?;
        let (first, last) = (*count.keys().next().unwrap(), *count.keys().last().unwrap());
        let lost: Vec<u64> = (first..=last).filter(|k| !count.contains_key(k)).collect();
        let repeated: Vec<(&u64, &u32)> = count.iter().filter(|(_, n)| **n > 1).collect();
        eprintln!(
            "kubectl logstream, pod {p}: lines {first}..={last}, lost {}, repeated {}",
            lost.len(),
            repeated.len()
        );
        assert!(
            lost.is_empty(),
            "{p}: lost {:?}",
            &lost[..lost.len().min(20)]
        );
        assert!(
            repeated.is_empty(),
            "{p}: repeated {:?}",
            &repeated[..repeated.len().min(20)]
        );
    }
    assert!(
        stderr.iter().any(|l| *l == format!("+ pod {c}")),
        "the new pod was not announced: {stderr:?}"
    );

    // `-l` through the namespace's aggregator: lines of two pods.
    aggregator_rolled_out(ctx, ns);
    let cmd = kubectl_logstream(
        node,
        &[
            "tail",
            "-l",
            "app=counter",
            "-n",
            ns,
            "--via-aggregator",
            "-o",
            "json",
            "--tail",
            "5",
        ],
        &node.kubeconfig,
    );
    let via = Lines::spawn_merged(cmd, "kubectl logstream tail -l --via-aggregator");
    let mut via_pods = BTreeSet::new();
    via.until(CONVERGE, |l| {
        if !l.starts_with(STDERR) {
            via_pods.insert(json(l)["pod"].as_str().unwrap_or_default().to_string());
        }
        via_pods.len() >= 2
    });
    drop(via);

    // `status`: the LogStream, its conditions and every selected pod.
    let out = kubectl_logstream(node, &["status", "-n", ns], &node.kubeconfig).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("LogStream {ns}/counter: ")),
        "{text}"
    );
    assert!(text.contains("Injected       True  AllInjected"), "{text}");
    assert!(
        text.contains(&format!("pod {c}")) && text.contains("sidecar ready"),
        "{text}"
    );
    Ok(())
}

/// A user who may list pods but not `create pods/portforward` gets exit
/// code 4 and what is missing; one who may not even list pods, the same.
fn kubectl_logstream_tells_a_user_without_rbac_what_is_missing(ctx: &Ctx) -> Result<(), Failed> {
    let node = ctx.node();
    let ns = "plugin";
    let rbac = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-viewer}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, watch]}
- {apiGroups: [apps], resources: [deployments], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-viewer}
subjects: [{kind: ServiceAccount, name: viewer}]
"#;
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], rbac)
        .stdout_if_success();
    for (sa, says) in [
        ("viewer", "pods/portforward"),
        ("nobody", "list and watch pods"),
    ] {
        let token = node
            .kubectl(&["-n", ns, "create", "token", sa])
            .stdout_if_success()
            .trim()
            .to_string();
        // The admin kubeconfig's cluster, with this account's token.
        let mut kc = json(
            node.kubectl(&[
                "config",
                "view",
                "--raw",
                "--minify",
                "--flatten",
                "-o",
                "json",
            ])
            .stdout_if_success(),
        );
        kc["users"][0]["user"] = serde_json::json!({ "token": token });
        let path = node.work_dir.join(format!("kubeconfig-{sa}"));
        std::fs::write(&path, kc.to_string())?;
        let target = if sa == "viewer" {
            "deploy/counter"
        } else {
            "-lapp=counter"
        };
        let out = kubectl_logstream(node, &["tail", target, "-n", ns], &path).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{sa}: {stderr}");
        assert!(stderr.contains(says), "{sa}: {stderr}");
    }
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// The `state.terminated` of container `name` in `status.KIND`.
fn terminated(pod: &Value, kind: &str, name: &str) -> Option<Value> {
    pod["status"][kind]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["state"].get("terminated").cloned())
}

/// Concatenated JSON documents (what `kubectl get --watch -o json` prints).
fn json_docs(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .collect()
}

/// A pod the LogStream cannot be injected into (it names a container the pod
/// does not have) is still created: admitted unchanged, with the reason as a
/// warning `kubectl` prints, and reported in the LogStream's status. The
/// webhook never blocks a workload.
fn a_pod_that_cannot_be_injected_is_admitted_with_a_warning(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "misfit";
    namespace_with_stream(ctx, ns, "misfit", r#","container":"nope""#);
    let run = node.kubectl(&[
        "run",
        "-n",
        ns,
        "misfit",
        "--image=docker.io/library/busybox:1.36",
        "--labels=app=misfit",
        "--",
        "sleep",
        "3600",
    ]);
    run.stdout_if_success();
    assert!(
        run.stderr.contains("Warning: logstream:")
            && run.stderr.contains(r#"container "nope" not found"#),
        "no admission warning: {}",
        run.stderr
    );
    let pod = get_json(node, &["-n", ns, "pod", "misfit"]);
    assert!(pod["spec"]["initContainers"].is_null(), "{pod:#}");
    assert_eq!(
        pod["spec"]["containers"].as_array().unwrap().len(),
        1,
        "{pod:#}"
    );
    // A Deployment's pods are admitted too (the rollout completes), and the
    // reason is recorded as a Warning Event on their ReplicaSet.
    let deployment = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: misfit-app}
spec:
  replicas: 1
  selector: {matchLabels: {role: misfit-app}}
  template:
    metadata: {labels: {app: misfit, role: misfit-app}}
    spec:
      containers:
      - {name: app, image: docker.io/library/busybox:1.36, command: [sleep, "3600"]}
"#;
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], deployment)
        .stdout_if_success();
    node.kubectl(&[
        "-n",
        ns,
        "rollout",
        "status",
        "deployment/misfit-app",
        "--timeout=120s",
    ])
    .stdout_if_success();
    node.poll(
        "a SidecarNotInjected Event on the ReplicaSet",
        CONVERGE,
        || {
            let ev = get_json(
                node,
                &[
                    "-n",
                    ns,
                    "events",
                    "--field-selector",
                    "reason=SidecarNotInjected",
                ],
            );
            ev["items"]
                .as_array()?
                .iter()
                .any(|e| {
                    e["involvedObject"]["kind"] == "ReplicaSet"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.contains(r#"container "nope" not found"#))
                })
                .then_some(())
        },
        || ctx.describe(ns),
    );
    // The LogStream names each pod and the reason; a restart would not help.
    node.poll(
        "the LogStream status to name the pods that cannot get the sidecar, and why",
        CONVERGE,
        || {
            let st = get_json(node, &["-n", ns, "ls/misfit"])["status"].clone();
            let injected = condition_of(&st, "Injected");
            let msg = injected["message"].as_str()?;
            (injected["reason"] == "CannotInject"
                && msg.starts_with("2 of 2 selected pods cannot get the sidecar")
                && msg.contains(r#"misfit: LogStream misfit: container "nope" not found"#)
                && st["pendingRestart"]
                    .as_array()?
                    .iter()
                    .any(|p| p == "misfit"))
            .then_some(())
        },
        || {
            format!(
                "{:#}\n{}",
                get_json(node, &["-n", ns, "ls/misfit"])["status"],
                ctx.describe(ns)
            )
        },
    );
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// An app that writes its files as another user with mode 0640. With its
/// group in the pod spec, the sidecar shares it by default and reads them.
/// With the group invisible to the operator (the app chowns its files), the
/// sidecar cannot open them and says so in its metrics, and the LogStream's
/// status names pod, path, owner and mode; the documented setting,
/// `sidecar.runAsGroup`, makes them readable.
fn files_written_as_another_user_with_mode_0640(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "perms";
    node.kubectl(&["create", "namespace", ns])
        .stdout_if_success();
    apply_stream(node, ns, "inherit", "");
    apply_stream(node, ns, "chowned", "");
    injection_enabled(ctx, ns);
    // uid 1000, gid 3000 in the pod spec; umask 027: app.log is 0640 1000:3000.
    let inherit = r#"
apiVersion: v1
kind: Pod
metadata: {name: inherit, labels: {app: inherit}}
spec:
  containers:
  - name: app
    image: docker.io/library/busybox:1.36
    securityContext: {runAsUser: 1000, runAsGroup: 3000}
    command: [sh, -c, 'umask 027; while true; do echo "perms-inherit $(date +%s)" >> /var/log/app/app.log; sleep 0.2; done']
    volumeMounts: [{name: logs, mountPath: /var/log/app}]
  volumes: [{name: logs, emptyDir: {}}]
"#;
    // Root in the pod spec; app.log appears (renamed into place) as
    // 1000:4000, mode 0640.
    let chowned = r#"
apiVersion: v1
kind: Pod
metadata: {name: chowned, labels: {app: chowned}}
spec:
  containers:
  - name: app
    image: docker.io/library/busybox:1.36
    command: [sh, -c, 'f=/var/log/app/app.log; t=/var/log/app/.app.tmp; umask 077; touch $t; chown 1000:4000 $t; chmod 0640 $t; mv $t $f; while true; do echo "perms-chowned $(date +%s)" >> $f; sleep 0.2; done']
    volumeMounts: [{name: logs, mountPath: /var/log/app}]
  volumes: [{name: logs, emptyDir: {}}]
"#;
    for pod in [inherit, chowned] {
        node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], pod)
            .stdout_if_success();
    }
    converged_pods(node, ns, "app=inherit", 1).map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    converged_pods(node, ns, "app=chowned", 1).map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;

    let lines_of = |pod: &str, marker: &str| {
        let pf = node.port_forward(ns, &format!("pod/{pod}"), 7680);
        node.poll(
            &format!("{pod}'s lines through its sidecar"),
            CONVERGE,
            || {
                let (_, body) = curl(&[
                    "-sN",
                    "--max-time",
                    "3",
                    &format!("{}/stream?tail=3", pf.url()),
                ]);
                body.contains(marker).then_some(())
            },
            || ctx.describe(ns),
        );
    };
    lines_of("inherit", "perms-inherit");

    let pf = node.port_forward(ns, "pod/chowned", 7680);
    node.poll(
        "the chowned file to be refused (files_refused{reason=open_failed})",
        CONVERGE,
        || {
            let (_, metrics) = curl(&["-s", "--max-time", "3", &format!("{}/metrics", pf.url())]);
            metrics
                .lines()
                .any(|l| {
                    l.contains("files_refused") && l.contains("open_failed") && !l.ends_with(" 0")
                })
                .then_some(())
        },
        || ctx.describe(ns),
    );
    drop(pf);
    // The operator asks the sidecar and says it in the LogStream's status
    // (naming pod, path, owner and mode) and in a Warning Event.
    let condition = |name: &str, type_: &str| {
        condition_of(
            &get_json(node, &["-n", ns, "logstream", name])["status"],
            type_,
        )
    };
    node.poll(
        "LogStream chowned to report the unreadable file (FilesReadable=False)",
        CONVERGE,
        || {
            let c = condition("chowned", "FilesReadable");
            let msg = c["message"].as_str().unwrap_or("");
            (c["status"] == "False"
                && c["reason"] == "PathsNotTailed"
                && msg.contains("chowned: app.log: open_failed: Permission denied")
                && msg.contains("owner 1000:4000 mode 0640"))
            .then_some(())
        },
        || {
            format!(
                "{:#}\n{}",
                condition("chowned", "FilesReadable"),
                ctx.describe(ns)
            )
        },
    );
    assert_eq!(condition("chowned", "Degraded")["reason"], "PathsNotTailed");
    let events = node
        .kubectl(&[
            "-n",
            ns,
            "get",
            "events",
            "--field-selector",
            "reason=PathsNotTailed",
            "-o",
            "name",
        ])
        .stdout_if_success()
        .to_string();
    assert!(!events.trim().is_empty(), "no PathsNotTailed event");
    node.poll(
        "LogStream inherit to report every file tailed",
        CONVERGE,
        || (condition("inherit", "FilesReadable")["status"] == "True").then_some(()),
        || format!("{:#}", condition("inherit", "FilesReadable")),
    );

    // The documented setting, then a new pod.
    apply_stream(node, ns, "chowned", r#","sidecar":{"runAsGroup":4000}"#);
    node.kubectl(&["-n", ns, "delete", "pod", "chowned", "--wait=true"])
        .stdout_if_success();
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], chowned)
        .stdout_if_success();
    converged_pods(node, ns, "app=chowned", 1).map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    lines_of("chowned", "perms-chowned");
    node.poll(
        "LogStream chowned to report every file tailed",
        CONVERGE,
        || (condition("chowned", "FilesReadable")["status"] == "True").then_some(()),
        || {
            format!(
                "{:#}\n{}",
                condition("chowned", "FilesReadable"),
                ctx.describe(ns)
            )
        },
    );
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// The app mounts its volume at /var/log and writes /var/log/app/app.log;
/// the LogStream reads /var/log/app. The sidecar mounts that sub-folder of
/// the app's volume instead of shadowing it with an emptyDir, so the file
/// stays in the app's volume (another container reading the volume sees
/// it) and streams.
fn logs_under_a_volume_mounted_at_a_parent_folder_stay_in_it(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "parent-volume";
    namespace_with_stream(ctx, ns, "nested", "");
    let pod = r#"
apiVersion: v1
kind: Pod
metadata: {name: nested, labels: {app: nested}}
spec:
  containers:
  - name: app
    image: docker.io/library/busybox:1.36
    command: [sh, -c, 'mkdir -p /var/log/app; while true; do echo "nested-line $(date +%s)" >> /var/log/app/app.log; sleep 0.2; done']
    volumeMounts: [{name: data, mountPath: /var/log}]
  - name: shipper
    image: docker.io/library/busybox:1.36
    command: [sh, -c, 'while true; do sleep 1; done']
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
"#;
    node.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], pod)
        .stdout_if_success();
    converged_pods(node, ns, "app=nested", 1).map_err(|e| format!("{e}\n{}", ctx.describe(ns)))?;
    let spec = get_json(node, &["-n", ns, "pod", "nested"]);
    // The sidecar's own state emptyDir aside, no emptyDir shadows the logs.
    let empty_dirs = spec["spec"]["volumes"].as_array().map_or(0, |v| {
        v.iter()
            .filter(|v| !v["emptyDir"].is_null() && v["name"] != "logstream-state")
            .count()
    });
    assert_eq!(empty_dirs, 1, "only the app's own emptyDir: {spec:#}");
    let pf = node.port_forward(ns, "pod/nested", 7680);
    node.poll(
        "nested's lines through its sidecar",
        CONVERGE,
        || {
            let (_, body) = curl(&[
                "-sN",
                "--max-time",
                "3",
                &format!("{}/stream?tail=3", pf.url()),
            ]);
            body.contains("nested-line").then_some(())
        },
        || ctx.describe(ns),
    );
    let shipped = node.kubectl(&[
        "-n",
        ns,
        "exec",
        "nested",
        "-c",
        "shipper",
        "--",
        "tail",
        "-n",
        "1",
        "/data/app/app.log",
    ]);
    assert!(
        shipped.stdout_if_success().contains("nested-line"),
        "the app's file is not in its own volume"
    );
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// Two operator replicas serve the webhook through its Service. Their
/// shared certificate is renewed (the Secret made to expire tomorrow) while
/// pods keep being admitted: every pod admitted before, during and after
/// the rotation gets the sidecar, and both replicas end up serving the new
/// certificate with the previous CA still in the bundle.
fn a_certificate_renewal_under_two_replicas_misses_no_pod(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    let ns = "rotation";
    namespace_with_stream(ctx, ns, "rot", "");
    node.kubectl(&[
        "-n",
        OPERATOR_NS,
        "rollout",
        "status",
        "deployment/logstream-operator",
        "--timeout=120s",
    ])
    .stdout_if_success();
    let replicas: Vec<String> = node
        .kubectl(&[
            "-n",
            OPERATOR_NS,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "name",
        ])
        .stdout_if_success()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    let reloaded = |pod: &str| {
        node.kubectl(&["-n", OPERATOR_NS, "logs", pod])
            .stdout
            .contains("webhook certificate reloaded")
    };
    assert!(
        !replicas.iter().any(|p| reloaded(p)),
        "a reload before the renewal"
    );
    let pod = |i: usize| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"rot-{i}","labels":{{"app":"rot"}}}},
                "spec":{{"containers":[{{"name":"app","image":"docker.io/library/busybox:1.36","command":["sleep","3600"]}}]}}}}"#
        )
    };
    // Admitted through the Service (either replica), not stored.
    let admitted_with_sidecar = |i: usize| {
        let out = node.kubectl_stdin(
            &[
                "create",
                "-n",
                ns,
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            &pod(i),
        );
        let v: Value = serde_json::from_str(out.stdout_if_success()).unwrap_or(Value::Null);
        v["spec"]["initContainers"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "logstream"))
    };
    let mut admitted = 0;
    let mut missed = Vec::new();
    for i in 0..5 {
        admitted += 1;
        if !admitted_with_sidecar(i) {
            missed.push(i);
        }
    }
    let expiry = {
        let out = Command::new("date")
            .args(["-u", "-d", "+1 day", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    node.kubectl(&[
        "-n",
        OPERATOR_NS,
        "annotate",
        "--overwrite",
        "secret",
        "logstream-webhook-tls",
        &format!("logstream.dev/not-after={expiry}"),
    ])
    .stdout_if_success();
    // Keep admitting until both replicas serve the new certificate, then a
    // few more.
    let deadline = std::time::Instant::now() + CONVERGE;
    let mut after = 0;
    let mut i = 5;
    while after < 5 {
        admitted += 1;
        if !admitted_with_sidecar(i) {
            missed.push(i);
        }
        i += 1;
        if replicas.iter().all(|p| reloaded(p)) {
            after += 1;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas did not both reload: {}",
            ctx.describe(OPERATOR_NS)
        );
    }
    eprintln!(
        "certificate renewal under two replicas: {admitted} pods admitted, {} without the sidecar",
        missed.len()
    );
    assert!(
        missed.is_empty(),
        "admitted without the sidecar: {missed:?}"
    );
    let hook = get_json(
        node,
        &["mutatingwebhookconfiguration", "logstream-injector"],
    );
    let bundle = hook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or("");
    let pem = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bundle.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let pem = String::from_utf8_lossy(&pem.stdout);
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "new and previous CA: {pem}"
    );
    node.kubectl(&["delete", "namespace", ns, "--wait=false"])
        .stdout_if_success();
    Ok(())
}

/// `helm uninstall` with LogStreams still there, then deleting the
/// namespaces (which would hang on a LogStream's finalizer without the
/// chart's pre-delete hook): nothing of ours is left in the cluster.
fn uninstall_leaves_nothing_behind(ctx: &Ctx) -> Result<(), Failed> {
    ctx.chart()?;
    let node = ctx.node();
    // LogStreams are still there: the chart's pre-delete hook removes them
    // while the operator can still clean each up.
    let before = node.kubectl(&["get", "ls", "--all-namespaces", "-o", "name"]);
    assert!(
        !before.stdout_if_success().trim().is_empty(),
        "the case needs a LogStream left at uninstall"
    );
    node.helm(&[
        "uninstall",
        "logstream",
        "--namespace",
        OPERATOR_NS,
        "--wait",
    ])
    .stdout_if_success();
    let after = node.kubectl(&["get", "ls", "--all-namespaces", "-o", "name"]);
    assert_eq!(after.stdout_if_success().trim(), "", "LogStreams left");
    let labelled = node.kubectl(&[
        "get",
        "namespaces",
        "-l",
        "logstream.dev/injection",
        "-o",
        "name",
    ]);
    assert_eq!(
        labelled.stdout_if_success().trim(),
        "",
        "namespaces still labelled"
    );
    for ns in [
        OPERATOR_NS,
        DEMO_NS,
        "drain",
        "drain-slow",
        "rotation",
        "restart",
        "webhook-check",
        "misfit",
        "access-switch",
    ] {
        node.kubectl(&[
            "delete",
            "namespace",
            ns,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ])
        .stdout_if_success();
    }
    let left = node.kubectl(&[
        "get",
        "mutatingwebhookconfigurations,validatingwebhookconfigurations,clusterroles,clusterrolebindings",
        "-o",
        "name",
    ]);
    let ours: Vec<&str> = left
        .stdout_if_success()
        .lines()
        .filter(|l| l.contains("logstream"))
        .collect();
    assert!(ours.is_empty(), "left behind: {ours:?}");
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // One node, shared state: one case at a time, in this order.
    args.test_threads = Some(1);
    let ctx = Arc::new(Ctx {
        node: OnceLock::new(),
        chart: OnceLock::new(),
        demo: OnceLock::new(),
    });
    type Case = fn(&Ctx) -> Result<(), Failed>;
    let cases: [(&str, Case); 19] = [
        (
            "chart_operator_runs_and_the_api_server_calls_its_webhook",
            chart_operator_runs_and_the_api_server_calls_its_webhook,
        ),
        (
            "examples_get_the_native_sidecar_once",
            examples_get_the_native_sidecar_once,
        ),
        (
            "port_forward_to_a_pod_streams_to_curl_websocat_and_chromium",
            port_forward_to_a_pod_streams_to_curl_websocat_and_chromium,
        ),
        (
            "aggregator_serves_every_pod_and_checks_real_tokens",
            aggregator_serves_every_pod_and_checks_real_tokens,
        ),
        (
            "service_client_ip_affinity_keeps_a_client_on_one_pod",
            service_client_ip_affinity_keeps_a_client_on_one_pod,
        ),
        (
            "an_ingress_through_traefik_keeps_a_client_on_one_aggregator_replica",
            an_ingress_through_traefik_keeps_a_client_on_one_aggregator_replica,
        ),
        (
            "an_in_cluster_grafana_reaches_the_aggregator_by_dns_with_its_token",
            an_in_cluster_grafana_reaches_the_aggregator_by_dns_with_its_token,
        ),
        (
            "an_access_mode_switch_keeps_old_replicas_able_to_check_tokens",
            an_access_mode_switch_keeps_old_replicas_able_to_check_tokens,
        ),
        (
            "restart_pods_rolls_an_existing_deployment_once",
            restart_pods_rolls_an_existing_deployment_once,
        ),
        ("deleting_a_pod_loses_no_line", deleting_a_pod_loses_no_line),
        (
            "a_killed_sidecar_repeats_nothing_downstream",
            a_killed_sidecar_repeats_nothing_downstream,
        ),
        (
            "kubectl_logstream_tails_a_deployment_through_restarts_and_new_pods",
            kubectl_logstream_tails_a_deployment_through_restarts_and_new_pods,
        ),
        (
            "kubectl_logstream_tells_a_user_without_rbac_what_is_missing",
            kubectl_logstream_tells_a_user_without_rbac_what_is_missing,
        ),
        (
            "an_app_that_exits_20s_after_sigterm_loses_no_line",
            an_app_that_exits_20s_after_sigterm_loses_no_line,
        ),
        (
            "a_pod_that_cannot_be_injected_is_admitted_with_a_warning",
            a_pod_that_cannot_be_injected_is_admitted_with_a_warning,
        ),
        (
            "files_written_as_another_user_with_mode_0640",
            files_written_as_another_user_with_mode_0640,
        ),
        (
            "logs_under_a_volume_mounted_at_a_parent_folder_stay_in_it",
            logs_under_a_volume_mounted_at_a_parent_folder_stay_in_it,
        ),
        (
            "a_certificate_renewal_under_two_replicas_misses_no_pod",
            a_certificate_renewal_under_two_replicas_misses_no_pod,
        ),
        (
            "uninstall_leaves_nothing_behind",
            uninstall_leaves_nothing_behind,
        ),
    ];
    let trials = cases
        .into_iter()
        .map(|(name, case)| {
            let ctx = Arc::clone(&ctx);
            Trial::test(name, move || {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&ctx)))
                    .unwrap_or_else(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        Err(Failed::from(msg))
                    })
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The trials (and their clones of ctx) are gone: stop the node now, not
    // from the watchdog after the process exits.
    if let Ok(ctx) = Arc::try_unwrap(ctx)
        && let Some(node) = ctx.node.into_inner()
    {
        node.down();
    }
    conclusion.exit();
}
