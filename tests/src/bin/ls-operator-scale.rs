//! `ls-operator-scale`: the operator at scale against the real API server
//! the tests build (etcd + kube-apiserver + kube-controller-manager; pods
//! need no node). For each operator binary given (`--operator
//! LABEL=PATH`, e.g. a baseline revision and the current one), on a fresh
//! control plane with an audit log:
//!
//! 1. `--namespaces` namespaces with `--streams` LogStreams each, then
//!    `--pods` pods per namespace (created through the operator's webhook);
//! 2. churn for `--churn-secs`: every second `--churn-rate`/2 pods created
//!    and as many deleted (one namespace per second, in turn), and one
//!    LogStream's spec edited;
//! 3. measured over the churn: the operator's requests to the API server by
//!    verb and resource, from the API server's audit log (by user agent:
//!    every request not from kubectl, kube-controller-manager or the API
//!    server itself), reconciles (`logstream_operator_reconciles_total`),
//!    reconcile p99 (its histogram, where the binary has one), the API
//!    server's webhook admission latency histogram, the operator's RSS.
//!
//! Prints and writes (`--json-out`) one JSON document with a run per
//! operator. Needs the binaries `.ci/install-tools` builds (etcd,
//! kube-apiserver, kube-controller-manager, kubectl).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use logstream_tests::{ControlPlane, OperatorProcess, free_port, repo_root};
use serde_json::{Value, json};

struct Args {
    operators: Vec<(String, PathBuf)>,
    namespaces: usize,
    streams: usize,
    pods: usize,
    churn_secs: u64,
    churn_rate: usize,
    json_out: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: ls-operator-scale --operator LABEL=PATH [--operator ...] [--namespaces 50] \
         [--streams 4] [--pods 200] [--churn-secs 120] [--churn-rate 50] [--json-out FILE]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        operators: Vec::new(),
        namespaces: 50,
        streams: 4,
        pods: 200,
        churn_secs: 120,
        churn_rate: 50,
        json_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let num = |v: String| v.parse::<usize>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--operator" => {
                let v = value();
                let Some((label, path)) = v.split_once('=') else {
                    usage()
                };
                a.operators.push((label.to_string(), PathBuf::from(path)));
            }
            "--namespaces" => a.namespaces = num(value()),
            "--streams" => a.streams = num(value()),
            "--pods" => a.pods = num(value()),
            "--churn-secs" => a.churn_secs = num(value()) as u64,
            "--churn-rate" => a.churn_rate = num(value()),
            "--json-out" => a.json_out = Some(PathBuf::from(value())),
            _ => usage(),
        }
    }
    if a.operators.is_empty() {
        usage()
    }
    a
}

fn ns_name(i: usize) -> String {
    format!("scale-{i:02}")
}

fn pod_json(ns: &str, name: &str, app: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": format!("app-{app}")}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}
    })
}

fn list(items: Vec<Value>) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// `kubectl get --raw /metrics` of the API server.
fn apiserver_metrics(cp: &ControlPlane) -> String {
    cp.kubectl(&["get", "--raw", "/metrics"]).stdout
}

/// Cumulative histogram buckets of `name` whose labels contain every
/// `filter`, summed over the other labels: (upper bound, count).
fn buckets(text: &str, name: &str, filter: &[&str]) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
    let prefix = format!("{name}_bucket{{");
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else {
            continue;
        };
        if !filter.iter().all(|f| rest.contains(f)) {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("le=\""))
            .map(|v| v.trim_end_matches('"').to_string())
        else {
            continue;
        };
        *by_le.entry(le).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    let mut v: Vec<(f64, f64)> = by_le
        .into_iter()
        .map(|(le, n)| (le.parse().unwrap_or(f64::INFINITY), n))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The smallest bucket bound holding quantile `q` of the difference
/// `after - before` (a histogram over an interval).
fn quantile_bound(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - b)
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    diff.iter()
        .find(|(_, n)| *n >= q * total)
        .map(|(le, _)| *le)
}

fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// This tool's own client, named in the audit log.
const AGENT: &str = "ls-operator-scale/1";

/// Who sent an audited request: the operator names itself (this code) or
/// sends no User-Agent at all (older revisions); kubectl, the control
/// plane's own components and this tool name themselves otherwise.
fn is_operator(user_agent: &str) -> bool {
    user_agent.is_empty() || user_agent.starts_with("logstream-operator/")
}

/// A client of the control plane that names itself [`AGENT`].
async fn load_client(cp: &ControlPlane) -> kube::Client {
    let layer = tower::util::MapRequestLayer::new(|mut req: http::Request<kube::client::Body>| {
        req.headers_mut().insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(AGENT),
        );
        req
    });
    kube::client::ClientBuilder::try_from(cp.config().await)
        .expect("client for the control plane")
        .with_layer(&layer)
        .build()
}

/// Creates `pods` (up to 32 requests at once); how many were created.
async fn create_pods(client: &kube::Client, pods: Vec<Value>) -> usize {
    use futures::StreamExt;
    futures::stream::iter(pods)
        .map(|p| {
            let client = client.clone();
            async move {
                let ns = p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string();
                let Ok(pod) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(p) else {
                    return false;
                };
                kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, &ns)
                    .create(&kube::api::PostParams::default(), &pod)
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await
}

/// Deletes the named pods of `ns` (all at once); how many were deleted.
async fn delete_pods(client: &kube::Client, ns: &str, names: &[String]) -> usize {
    let api = kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns);
    let dp = kube::api::DeleteParams::default();
    futures::future::join_all(names.iter().map(|n| api.delete(n, &dp)))
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count()
}

/// The operator's requests in `log` between the byte offsets: by
/// `verb resource`, and their total.
fn audited(log: &Path, from: u64, to: u64) -> (BTreeMap<String, u64>, u64, BTreeMap<String, u64>) {
    let mut by = BTreeMap::new();
    let mut agents = BTreeMap::new();
    let mut total = 0;
    let Ok(mut f) = std::fs::File::open(log) else {
        return (by, 0, agents);
    };
    if f.seek(std::io::SeekFrom::Start(from)).is_err() {
        return (by, 0, agents);
    }
    let mut reader = std::io::BufReader::new(f);
    let mut at = from;
    let mut line = String::new();
    while at < to {
        line.clear();
        let Ok(n) = reader.read_line(&mut line) else {
            break;
        };
        if n == 0 {
            break;
        }
        at += n as u64;
        let Ok(ev) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let verb = ev["verb"].as_str().unwrap_or("");
        let stage = ev["stage"].as_str().unwrap_or("");
        // A watch is counted when it starts, anything else when it ends.
        let counted = if verb == "watch" {
            stage == "ResponseStarted"
        } else {
            stage == "ResponseComplete"
        };
        if !counted {
            continue;
        }
        let ua = ev["userAgent"].as_str().unwrap_or("");
        let family = ua.split('/').next().unwrap_or("").to_string();
        *agents.entry(family).or_default() += 1;
        if !is_operator(ua) {
            continue;
        }
        let mut resource = ev["objectRef"]["resource"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(sub) = ev["objectRef"]["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        *by.entry(format!("{verb} {resource}")).or_default() += 1;
        total += 1;
    }
    (by, total, agents)
}

fn run_one(a: &Args, label: &str, bin: &Path, work: &Path) -> Value {
    let audit_dir = work.join(label);
    std::fs::create_dir_all(&audit_dir).expect("audit dir");
    let policy = audit_dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n- level: Metadata\n",
    )
    .expect("write the audit policy");
    let log = audit_dir.join("audit.log");
    let cp = ControlPlane::start_with_apiserver_args(&format!(
        "--audit-policy-file={} --audit-log-path={} --audit-log-maxsize=0",
        policy.display(),
        log.display()
    ));
    let crds = repo_root().join("crds");
    cp.kubectl(&["apply", "-f", crds.to_str().unwrap_or("crds")])
        .stdout_if_success();
    cp.wait_crds_established(&["crd/logstreams.logstream.dev"]);
    cp.kubectl(&["create", "namespace", "logstream-system"])
        .stdout_if_success();
    let nss: Vec<String> = (0..a.namespaces).map(ns_name).collect();
    let mut ns_list = Vec::new();
    for ns in &nss {
        ns_list.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    cp.kubectl_stdin(&["create", "-f", "-"], &list(ns_list))
        .stdout_if_success();

    let port = free_port();
    let op_log = audit_dir.join("operator.log");
    let op = OperatorProcess::spawn(
        bin,
        &cp.kubeconfig,
        port,
        &["--namespace", "logstream-system", "--identity", label],
        op_log,
    );
    let pid = op.pid();
    let t_start = Instant::now();
    let mut streams = Vec::new();
    for ns in &nss {
        for k in 0..a.streams {
            streams.push(json!({
                "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
                "metadata": {"name": format!("ls-{k}"), "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": format!("app-{k}")}}}
            }));
        }
    }
    cp.kubectl_stdin(&["create", "-f", "-"], &list(streams))
        .stdout_if_success();
    // Pods are admitted with the sidecar once the operator labelled their
    // namespace.
    let labelled = Instant::now();
    loop {
        let out = cp.kubectl(&[
            "get",
            "ns",
            "-l",
            "logstream.dev/injection=enabled",
            "-o",
            "name",
        ]);
        if out.stdout.lines().count() >= a.namespaces {
            break;
        }
        assert!(
            labelled.elapsed() < Duration::from_secs(600),
            "namespaces not labelled: {}",
            op.log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let streams_secs = t_start.elapsed().as_secs_f64();
    let t_pods = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let load = rt.block_on(load_client(&cp));
    let all: Vec<Value> = nss
        .iter()
        .flat_map(|ns| {
            (0..a.pods).map(move |i| pod_json(ns, &format!("p-{i}"), i % a.streams.max(1)))
        })
        .collect();
    let made = rt.block_on(create_pods(&load, all));
    assert_eq!(made, a.namespaces * a.pods, "pods created");
    let pods_secs = t_pods.elapsed().as_secs_f64();
    eprintln!(
        "ls-operator-scale {label}: {} LogStreams wired in {streams_secs:.1} s, {} pods created in {pods_secs:.1} s",
        a.namespaces * a.streams,
        a.namespaces * a.pods
    );
    // Let the reconciles of the creation settle.
    std::thread::sleep(Duration::from_secs(10));
    let rss_settled = rss(pid);

    let metrics0 = apiserver_metrics(&cp);
    let reconciles0 = op
        .metric("logstream_operator_reconciles_total")
        .unwrap_or(0.0);
    let rec_hist0 = op_buckets(&op, RECONCILE);
    let adm_hist0 = op_buckets(&op, ADMISSION);
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let t_churn = Instant::now();
    let per_tick = (a.churn_rate / 2).max(1);
    let (mut created, mut deleted, mut edits) = (0usize, 0usize, 0usize);
    let mut rss_max = rss_settled.unwrap_or(0);
    let mut tick = 0usize;
    while t_churn.elapsed() < Duration::from_secs(a.churn_secs) {
        let due = t_churn + Duration::from_secs(tick as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let ns = &nss[tick % nss.len()];
        let pods: Vec<Value> = (0..per_tick)
            .map(|i| pod_json(ns, &format!("c{tick}-{i}"), i % a.streams.max(1)))
            .collect();
        // The first rounds delete pods made before the churn; later ones
        // those the churn made ten rounds before (same namespace count).
        let names: Vec<String> = if tick >= 10 * nss.len() {
            (0..per_tick)
                .map(|i| format!("c{}-{i}", tick - 10 * nss.len()))
                .collect()
        } else {
            let round = tick / nss.len();
            (0..per_tick)
                .map(|i| format!("p-{}", round * per_tick + i))
                .collect()
        };
        let (c, d) = rt.block_on(async {
            futures::join!(create_pods(&load, pods), delete_pods(&load, ns, &names))
        });
        created += c;
        deleted += d;
        let (ens, k) = (&nss[(tick * 7) % nss.len()], tick % a.streams.max(1));
        let paths = if tick.is_multiple_of(2) {
            r#"{"spec":{"paths":["**/*.log","**/*.txt"]}}"#
        } else {
            r#"{"spec":{"paths":["**/*.log"]}}"#
        };
        let name = format!("ls-{k}");
        let patch: Value = serde_json::from_str(paths).unwrap_or(Value::Null);
        let edited = rt.block_on(async {
            kube::Api::<kube::api::DynamicObject>::namespaced_with(
                load.clone(),
                ens,
                &kube::api::ApiResource {
                    group: "logstream.dev".into(),
                    version: "v1alpha1".into(),
                    api_version: "logstream.dev/v1alpha1".into(),
                    kind: "LogStream".into(),
                    plural: "logstreams".into(),
                },
            )
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(patch),
            )
            .await
            .is_ok()
        });
        if edited {
            edits += 1;
        }
        rss_max = rss_max.max(rss(pid).unwrap_or(0));
        tick += 1;
    }
    let churn_secs = t_churn.elapsed().as_secs_f64();
    // The debounced reconciles of the last edits.
    std::thread::sleep(Duration::from_secs(3));
    let to = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let metrics1 = apiserver_metrics(&cp);
    let reconciles1 = op
        .metric("logstream_operator_reconciles_total")
        .unwrap_or(0.0);
    let rec_hist1 = op_buckets(&op, RECONCILE);
    let adm_hist1 = op_buckets(&op, ADMISSION);
    let (by, total, agents) = audited(&log, from, to);
    let lists: u64 = by
        .iter()
        .filter(|(k, _)| k.starts_with("list "))
        .map(|(_, n)| n)
        .sum();
    let writes: u64 = by
        .iter()
        .filter(|(k, _)| {
            ["create ", "update ", "patch ", "delete "]
                .iter()
                .any(|v| k.starts_with(v))
        })
        .map(|(_, n)| n)
        .sum();
    let adm = "apiserver_admission_webhook_admission_duration_seconds";
    let adm0 = buckets(&metrics0, adm, &["operation=\"CREATE\""]);
    let adm1 = buckets(&metrics1, adm, &["operation=\"CREATE\""]);
    let pod_events = (created + deleted) as f64;
    let reconciles = reconciles1 - reconciles0;
    let result = json!({
        "label": label,
        "operator": bin.display().to_string(),
        "namespaces": a.namespaces,
        "logstreams": a.namespaces * a.streams,
        "pods": a.namespaces * a.pods,
        "streams_wired_secs": streams_secs,
        "pods_created_secs": pods_secs,
        "churn_secs": churn_secs,
        "pods_created": created,
        "pods_deleted": deleted,
        "logstream_edits": edits,
        "pod_events_per_sec": pod_events / churn_secs,
        "operator_requests": total,
        "operator_requests_per_sec": total as f64 / churn_secs,
        "operator_requests_per_pod_event": if pod_events > 0.0 { Some(total as f64 / pod_events) } else { None },
        "operator_lists": lists,
        "operator_writes": writes,
        "operator_writes_per_sec": writes as f64 / churn_secs,
        "operator_requests_by_verb_resource": by,
        "requests_by_user_agent": agents,
        "reconciles": reconciles,
        "reconciles_per_sec": reconciles / churn_secs,
        "reconcile_p99_secs": rec_hist0.as_ref().zip(rec_hist1.as_ref()).and_then(|(b, a)| quantile_bound(b, a, 0.99)),
        "webhook_admission_p99_bound_secs": adm_hist0.as_ref().zip(adm_hist1.as_ref()).and_then(|(b, a)| quantile_bound(b, a, 0.99)),
        "webhook_admission_p50_bound_secs": adm_hist0.as_ref().zip(adm_hist1.as_ref()).and_then(|(b, a)| quantile_bound(b, a, 0.50)),
        "admission_p99_bound_secs": quantile_bound(&adm0, &adm1, 0.99),
        "admission_p50_bound_secs": quantile_bound(&adm0, &adm1, 0.50),
        "admission_buckets_during_churn": adm1.iter().map(|(le, n)| {
            let b = adm0.iter().find(|(l, _)| l == le).map_or(0.0, |(_, n)| *n);
            json!([le, n - b])
        }).collect::<Vec<_>>(),
        "operator_rss_settled_bytes": rss_settled,
        "operator_rss_max_bytes": rss_max,
    });
    eprintln!("ls-operator-scale {label}: {result}");
    drop(op);
    drop(cp);
    result
}

const RECONCILE: &str = "logstream_operator_reconcile_duration_seconds";
/// The webhook's own time per review (the API server's histogram adds the
/// call: connection, TLS, queueing on a busy machine).
const ADMISSION: &str = "logstream_operator_admission_duration_seconds";

/// One of the operator's histograms, when it has it (the baseline has
/// neither).
fn op_buckets(op: &OperatorProcess, name: &str) -> Option<Vec<(f64, f64)>> {
    let text = op.metrics_text()?;
    let b = buckets(&text, name, &[]);
    (!b.is_empty()).then_some(b)
}

fn main() {
    let a = args();
    let work = tempfile::Builder::new()
        .prefix("ls-operator-scale-")
        .tempdir()
        .expect("work dir");
    let mut runs = Vec::new();
    for (label, bin) in &a.operators {
        runs.push(run_one(&a, label, bin, work.path()));
    }
    let mut cmd = String::new();
    for (i, w) in std::env::args().enumerate() {
        if i > 0 {
            cmd.push(' ');
        }
        let _ = write!(cmd, "{w}");
    }
    let revision = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let doc = json!({
        "tool": "ls-operator-scale",
        "command": cmd,
        "revision": revision,
        "churn_rate": a.churn_rate,
        "runs": runs,
    });
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    println!("{text}");
    if let Some(p) = &a.json_out
        && let Err(e) = std::fs::write(p, format!("{text}\n"))
    {
        eprintln!("write {}: {e}", p.display());
        std::process::exit(1);
    }
}
