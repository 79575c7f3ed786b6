//! `access.mode: kubernetes` against a real API server: the operator binds
//! the app's and the aggregator's ServiceAccounts to system:auth-delegator,
//! and a sidecar and an aggregator running with exactly those
//! ServiceAccounts' credentials admit whoever may `get pods/log` (a
//! `kubectl create token` of a ServiceAccount with such a Role), refuse
//! others with 403 and bad tokens with 401, while the aggregator keeps
//! pulling the sidecar with the pull token.
#![allow(clippy::unwrap_used)] // test code

use std::collections::BTreeSet;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::Api;
use logstream::client::{ClientOptions, Connection};
use logstream::protocol::{ServerMessage, Subscribe};
use logstream_tests::{ControlPlane, OperatorProcess, eventually, free_port};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);
const BINDING: &str = "logstream:auth-delegator:shop";

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A running `logstream` process and the address it printed; killed on drop.
struct Proc {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], kubeconfig: &Path, log: PathBuf) -> Proc {
        let mut child = Command::new(logstream_tests::workspace_bin("logstream", "logstream"))
            .args(args)
            .env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr = logstream_tests::listening_address(&mut child)
            .unwrap_or_else(|line| panic!("{line:?}: {}", std::fs::read_to_string(&log).unwrap()));
        Proc { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Status and body of `GET path` with an optional bearer token (curl).
    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let out = cmd
            .arg(format!("http://{}{path}", self.addr))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics", None);
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.addr, self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn create_token(cp: &ControlPlane, sa: &str) -> String {
    cp.kubectl(&["create", "token", sa, "-n", "shop", "--duration=1h"])
        .stdout_if_success()
        .trim()
        .to_string()
}

/// The admin kubeconfig with its user replaced by a token of `sa`.
fn service_account_kubeconfig(cp: &ControlPlane, sa: &str) -> PathBuf {
    let token = create_token(cp, sa);
    let mut cfg: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cp.kubeconfig).unwrap()).unwrap();
    cfg["users"] = json!([{"name": sa, "user": {"token": token}}]);
    cfg["contexts"][0]["context"]["user"] = json!(sa);
    let path = cp.work_dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

fn can_review(cp: &ControlPlane, sa: &str) -> bool {
    let out = cp.kubectl(&[
        "auth",
        "can-i",
        "create",
        "tokenreviews.authentication.k8s.io",
        &format!("--as=system:serviceaccount:shop:{sa}"),
    ]);
    out.stdout.trim() == "yes"
}

async fn binding_subjects(api: &Api<ClusterRoleBinding>) -> Option<BTreeSet<String>> {
    let b = api.get_opt(BINDING).await.ok()??;
    Some(
        b.subjects
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.name)
            .collect(),
    )
}

/// Waits for the first records on a WebSocket opened with `token`.
async fn stream_lines(base: &str, token: &str, want: usize) -> Vec<String> {
    let opts = ClientOptions {
        base: base.into(),
        sub: Subscribe {
            tail: Some(10),
            ..Default::default()
        },
        token: Some(token.into()),
    };
    let mut c = Connection::open(&opts, None).await.unwrap();
    let mut lines = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while lines.len() < want {
            if let Some(ServerMessage::Records { records, .. }) = c.next().await.unwrap() {
                lines.extend(records.into_iter().map(|r| r.line));
            }
        }
    })
    .await
    .unwrap();
    lines
}

#[tokio::test]
async fn whoever_may_get_pods_log_may_stream_through_the_binding_the_operator_makes() {
    let cp = ControlPlane::start();
    cp.kubectl(&["apply", "-f", &repo("crds/")])
        .stdout_if_success();
    cp.wait_crds_established(&["crd/logstreams.logstream.dev"]);
    for ns in ["logstream-system", "shop"] {
        cp.kubectl(&["create", "namespace", ns]).stdout_if_success();
    }
    // The app's ServiceAccount; a viewer who may `kubectl logs` any pod of
    // shop, one who may only for web-1, and one who may not at all.
    for sa in ["web", "viewer", "pod-viewer", "nobody"] {
        cp.kubectl(&["create", "serviceaccount", sa, "-n", "shop"])
            .stdout_if_success();
    }
    cp.kubectl(&[
        "create",
        "role",
        "log-reader",
        "-n",
        "shop",
        "--verb=get",
        "--resource=pods/log",
    ])
    .stdout_if_success();
    cp.kubectl(&[
        "create",
        "role",
        "web-1-log-reader",
        "-n",
        "shop",
        "--verb=get",
        "--resource=pods/log",
        "--resource-name=web-1",
    ])
    .stdout_if_success();
    cp.kubectl(&[
        "create",
        "rolebinding",
        "viewer",
        "-n",
        "shop",
        "--role=log-reader",
        "--serviceaccount=shop:viewer",
    ])
    .stdout_if_success();
    cp.kubectl(&[
        "create",
        "rolebinding",
        "pod-viewer",
        "-n",
        "shop",
        "--role=web-1-log-reader",
        "--serviceaccount=shop:pod-viewer",
    ])
    .stdout_if_success();
    assert!(
        !can_review(&cp, "web"),
        "an app ServiceAccount cannot review tokens by itself"
    );

    let op = OperatorProcess::spawn(
        &logstream_tests::workspace_bin("logstream-operator", "logstream-operator"),
        &cp.kubeconfig,
        free_port(),
        &[
            "--namespace",
            "logstream-system",
            "--identity",
            "operator-0",
            "--lease-duration",
            "3s",
        ],
        cp.work_dir.join("operator.log"),
    );
    // The default access mode is kubernetes.
    let ls = r#"{"apiVersion":"logstream.dev/v1alpha1","kind":"LogStream","metadata":{"name":"web","namespace":"shop"},"spec":{"selector":{"matchLabels":{"app":"web"}}}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], ls)
        .stdout_if_success();
    let client = cp.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually("the namespace to be labelled", PATIENCE, || async {
        namespaces
            .get("shop")
            .await
            .ok()?
            .metadata
            .labels?
            .get("logstream.dev/injection")
            .cloned()
    })
    .await;
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-1","namespace":"shop","labels":{"app":"web"}},"spec":{"serviceAccountName":"web","containers":[{"name":"app","image":"busybox"}]}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], pod)
        .stdout_if_success();
    let injected = Api::<Pod>::namespaced(client.clone(), "shop")
        .get("web-1")
        .await
        .unwrap();
    let sidecar_env = injected
        .spec
        .unwrap()
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.name == "logstream")
        .unwrap_or_else(|| panic!("web-1 was not injected:\n{}", op.log()))
        .env
        .unwrap_or_default();
    assert!(
        sidecar_env
            .iter()
            .any(|e| e.name == "LOGSTREAM_KUBERNETES_AUTH" && e.value.as_deref() == Some("true")),
        "{sidecar_env:?}"
    );

    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let want: BTreeSet<String> = ["logstream-aggregator", "web"].map(String::from).into();
    eventually(
        "the binding of the app's and the aggregator's ServiceAccounts",
        PATIENCE,
        || async { (binding_subjects(&bindings).await? == want).then_some(()) },
    )
    .await;
    assert!(can_review(&cp, "web") && can_review(&cp, "logstream-aggregator"));

    // The sidecar of web-1 and the aggregator as the injector configures
    // them, each with its ServiceAccount's credentials; loopback is not
    // exempt, so every request here is checked as a remote one would be.
    let logs = tempfile::tempdir().unwrap();
    std::fs::write(logs.path().join("app.log"), "first line\n").unwrap();
    let pull = logs.path().join("pull-token");
    std::fs::write(&pull, "the-pull-token\n").unwrap();
    let sidecar = Proc::spawn(
        &[
            "sidecar",
            "--dir",
            logs.path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            "shop",
            "--pod",
            "web-1",
            "--container",
            "app",
            "--token-file",
            pull.to_str().unwrap(),
            "--kubernetes-auth",
            "--no-loopback-exemption",
        ],
        &service_account_kubeconfig(&cp, "web"),
        cp.work_dir.join("sidecar.log"),
    );
    let aggregator = Proc::spawn(
        &[
            "aggregator",
            "--namespace",
            "shop",
            "--source",
            &format!("http://{}", sidecar.addr),
            "--upstream-token-file",
            pull.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--reorder-window",
            "0s",
            "--kubernetes-auth",
            "--no-loopback-exemption",
        ],
        &service_account_kubeconfig(&cp, "logstream-aggregator"),
        cp.work_dir.join("aggregator.log"),
    );

    let viewer = create_token(&cp, "viewer");
    let pod_viewer = create_token(&cp, "pod-viewer");
    let nobody = create_token(&cp, "nobody");
    let labels = "/loki/api/v1/labels";
    for server in [&sidecar, &aggregator] {
        assert_eq!(server.get(labels, Some(&viewer)).0, 200, "{}", server.log());
        // Browsers send the token in the query.
        assert_eq!(
            server
                .get(&format!("{labels}?access_token={viewer}"), None)
                .0,
            200
        );
        let (code, body) = server.get("/sse?tail=1", Some(&nobody));
        assert_eq!(code, 403, "{body}");
        assert!(
            body.contains("system:serviceaccount:shop:nobody") && body.contains("pods/log"),
            "the refusal names who and what is missing: {body}"
        );
        for bad in [Some("not-a-token"), None] {
            assert_eq!(server.get("/sse?tail=1", bad).0, 401, "{bad:?}");
        }
    }
    // A Role limited to web-1 opens its sidecar, not the namespace-wide aggregator.
    assert_eq!(sidecar.get(labels, Some(&pod_viewer)).0, 200);
    let (code, body) = aggregator.get(labels, Some(&pod_viewer));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("namespace \"shop\""), "{body}");

    // Streams: the sidecar directly, and the aggregator, which pulls the
    // sidecar with the pull token while the sidecar checks Kubernetes tokens.
    assert_eq!(
        stream_lines(&format!("http://{}", sidecar.addr), &viewer, 1).await,
        ["first line"]
    );
    assert_eq!(
        stream_lines(&format!("http://{}", aggregator.addr), &viewer, 1).await,
        ["first line"]
    );

    // Answers are cached: each allowed token was reviewed once per server
    // (the sidecar saw the viewer and the pod viewer, the aggregator the viewer).
    for (server, allowed_tokens) in [(&sidecar, 2.0), (&aggregator, 1.0)] {
        assert_eq!(
            server.metric("logstream_auth_reviews_total{result=\"allowed\"}"),
            allowed_tokens,
            "{}",
            server.log()
        );
        assert!(server.metric("logstream_auth_cache_hits_total{result=\"allowed\"}") >= 2.0);
        assert!(server.metric("logstream_auth_reviews_total{result=\"forbidden\"}") >= 1.0);
        assert!(server.metric("logstream_auth_reviews_total{result=\"unauthenticated\"}") >= 1.0);
    }

    // Pruning: once web-1 is gone, the app's ServiceAccount loses the grant.
    cp.kubectl(&[
        "delete",
        "pod",
        "web-1",
        "-n",
        "shop",
        "--grace-period=0",
        "--force",
    ])
    .stdout_if_success();
    let only_aggregator: BTreeSet<String> = ["logstream-aggregator".to_string()].into();
    eventually("the app's ServiceAccount pruned", PATIENCE, || async {
        (binding_subjects(&bindings).await? == only_aggregator).then_some(())
    })
    .await;
    assert!(!can_review(&cp, "web"));

    // The finalizer removes the cluster-scoped binding with the LogStream.
    cp.kubectl(&[
        "delete",
        "-n",
        "shop",
        "logstream/web",
        "--wait=true",
        "--timeout=60s",
    ])
    .stdout_if_success();
    eventually("the binding deleted", PATIENCE, || async {
        bindings
            .get_opt(BINDING)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    assert!(!can_review(&cp, "logstream-aggregator"));
}
