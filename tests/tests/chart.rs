//! The Helm chart `charts/logstream`: `helm lint`, `helm template` with
//! default and optional features, the rendered objects applied to a real
//! kube-apiserver (server-side dry run), its RBAC checked against an explicit
//! allow-list, and the operator run against the API server with nothing but
//! the permissions the chart grants its ServiceAccount.
//!
//! helm comes from `.ci/install-helm` (`$HOME/.cache/logstream/tools/bin/helm`,
//! else `helm` on PATH).
#![allow(clippy::unwrap_used)] // test code

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams};
use logstream_operator::crd::LogStream;
use logstream_tests::{ControlPlane, OperatorProcess, cache_dir, eventually, free_port, repo_root};
use serde_json::{Value, json};

const NS: &str = "logstream-system";
const RELEASE: &str = "logstream";
/// The harness' API server (tests/apiserver): capabilities for `helm template`.
const KUBE_VERSION: &str = "1.34.4";
const PATIENCE: Duration = Duration::from_secs(60);

/// Every optional feature on.
const FULL: &[&str] = &[
    "webhook.tls.mode=certManager",
    "metrics.serviceMonitor.enabled=true",
    "grafana.dashboard.enabled=true",
    "grafana.lokiDatasource.enabled=true",
    "operator.replicas=2",
    "operator.hostNetwork=true",
    "webhook.containerPort=9443",
    "logstream.image.pullPolicy=Always",
    "aggregator.nodeSelector.pool=infra",
];

/// What the operator's ClusterRole may grant, as `group/resource:verb` or
/// `group/resource:verb@name` (core group: empty). The chart's rbac.yaml says
/// which API call needs each one.
const CLUSTER_ALLOWED: &[&str] = &[
    "logstream.dev/logstreams:get",
    "logstream.dev/logstreams:list",
    "logstream.dev/logstreams:watch",
    "logstream.dev/logstreams:patch",
    "logstream.dev/logstreams:delete",
    "logstream.dev/logstreams/status:patch",
    "/pods:get",
    "/pods:list",
    "/pods:watch",
    "/services:list",
    "/services:watch",
    "/services:create",
    "/services:patch",
    "/services:delete",
    "networking.k8s.io/ingresses:list",
    "networking.k8s.io/ingresses:watch",
    "networking.k8s.io/ingresses:create",
    "networking.k8s.io/ingresses:patch",
    "networking.k8s.io/ingresses:delete",
    "networking.k8s.io/ingressclasses:list",
    "gateway.networking.k8s.io/httproutes:create",
    "gateway.networking.k8s.io/httproutes:patch",
    "gateway.networking.k8s.io/httproutes:delete",
    "apiextensions.k8s.io/customresourcedefinitions:get@httproutes.gateway.networking.k8s.io",
    "/serviceaccounts:create",
    "/serviceaccounts:patch",
    "/serviceaccounts:delete",
    "rbac.authorization.k8s.io/roles:create",
    "rbac.authorization.k8s.io/roles:patch",
    "rbac.authorization.k8s.io/roles:delete",
    "rbac.authorization.k8s.io/rolebindings:create",
    "rbac.authorization.k8s.io/rolebindings:patch",
    "rbac.authorization.k8s.io/rolebindings:delete",
    "rbac.authorization.k8s.io/clusterrolebindings:create",
    "rbac.authorization.k8s.io/clusterrolebindings:patch",
    "rbac.authorization.k8s.io/clusterrolebindings:delete",
    "rbac.authorization.k8s.io/clusterroles:bind@system:auth-delegator",
    // Its own ClusterRole's uid: the owner of its run-time objects.
    "rbac.authorization.k8s.io/clusterroles:get@logstream-operator",
    "apps/deployments:list",
    "apps/deployments:watch",
    "apps/deployments:create",
    "apps/deployments:patch",
    "apps/deployments:delete",
    "apps/statefulsets:patch",
    "apps/daemonsets:patch",
    "apps/replicasets:get",
    "/namespaces:get",
    "/namespaces:list",
    "/namespaces:watch",
    "/namespaces:patch",
    "/secrets:get@logstream-pull-token",
    "/secrets:create@logstream-pull-token",
    "/secrets:patch@logstream-pull-token",
    "/secrets:delete@logstream-pull-token",
    "events.k8s.io/events:create",
    "events.k8s.io/events:patch",
];

/// Only with selfManaged TLS: the operator registers its own webhook.
const CLUSTER_SELF_MANAGED: &[&str] = &[
    "admissionregistration.k8s.io/mutatingwebhookconfigurations:create@logstream-injector",
    "admissionregistration.k8s.io/mutatingwebhookconfigurations:patch@logstream-injector",
    // Never called: lets it set ownerReferences under OwnerReferencesPermissionEnforcement.
    "admissionregistration.k8s.io/mutatingwebhookconfigurations:delete@logstream-injector",
];

/// The Role in the operator's namespace.
const ROLE_ALLOWED: &[&str] = &[
    "coordination.k8s.io/leases:get@logstream-operator",
    "coordination.k8s.io/leases:update@logstream-operator",
    "coordination.k8s.io/leases:delete@logstream-operator",
    "coordination.k8s.io/leases:create",
];

const ROLE_SELF_MANAGED: &[&str] = &[
    "/secrets:get@logstream-webhook-tls",
    "/secrets:create@logstream-webhook-tls",
    "/secrets:patch@logstream-webhook-tls",
    "/secrets:delete@logstream-webhook-tls",
];

fn helm_bin() -> PathBuf {
    let cached = cache_dir().join("tools/bin/helm");
    if cached.is_file() {
        return cached;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("helm"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "helm not found at {} nor on PATH: run .ci/install-helm",
            cached.display()
        )
    })
}

fn helm(args: &[&str]) -> String {
    let out = Command::new(helm_bin())
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {}: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `helm template` of the chart with `--set` values.
fn render(sets: &[&str], include_crds: bool) -> String {
    let mut args = vec![
        "template",
        RELEASE,
        "charts/logstream",
        "--namespace",
        NS,
        "--kube-version",
        KUBE_VERSION,
    ];
    if include_crds {
        args.push("--include-crds");
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// The YAML documents of a multi-document stream, as JSON values.
fn docs(yaml: &str) -> Vec<Value> {
    format!("\n{yaml}")
        .split("\n---")
        .filter_map(|d| {
            let v: Value = serde_yaml::from_str(d)
                .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{d}"));
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn all_of<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = all_of(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// RBAC rules flattened to `group/resource:verb[@name]`.
fn grants(role: &Value) -> BTreeSet<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "non-resource rule {rule}"
        );
        let names = strings(&rule["resourceNames"]);
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    if names.is_empty() {
                        out.insert(format!("{g}/{r}:{v}"));
                    }
                    for n in &names {
                        out.insert(format!("{g}/{r}:{v}@{n}"));
                    }
                }
            }
        }
    }
    out
}

fn set_of(lists: &[&[&str]]) -> BTreeSet<String> {
    lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let chart = std::fs::read_to_string(
        repo_root().join("charts/logstream/crds/logstream.dev_logstreams.yaml"),
    )
    .expect("charts/logstream/crds/logstream.dev_logstreams.yaml");
    let generated =
        std::fs::read_to_string(repo_root().join("crds/logstream.dev_logstreams.yaml")).unwrap();
    assert!(
        chart == generated,
        "charts/logstream/crds/ drifted from crds/: cp crds/logstream.dev_logstreams.yaml charts/logstream/crds/"
    );
    assert_eq!(generated, logstream_operator::crd::crd_yaml().unwrap());
    let with_crds = docs(&render(&[], true));
    assert_eq!(
        one(&with_crds, "CustomResourceDefinition")["metadata"]["name"],
        "logstreams.logstream.dev"
    );
}

#[test]
fn helm_lint_is_clean() {
    for sets in [&[][..], FULL] {
        let mut args = vec!["lint", "--strict", "charts/logstream"];
        for s in sets {
            args.extend(["--set", s]);
        }
        let out = helm(&args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    // Values are validated (values.schema.json).
    let bad = Command::new(helm_bin())
        .args([
            "template",
            "x",
            "charts/logstream",
            "--set",
            "webhook.tls.mode=vault",
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("webhook/tls/mode"));
}

#[test]
fn rbac_grants_exactly_the_allow_list() {
    let default = docs(&render(&[], false));
    let cluster = grants(one(&default, "ClusterRole"));
    assert_eq!(
        cluster,
        set_of(&[CLUSTER_ALLOWED, CLUSTER_SELF_MANAGED]),
        "ClusterRole differs from the allow-list"
    );
    let role = grants(one(&default, "Role"));
    assert_eq!(role, set_of(&[ROLE_ALLOWED, ROLE_SELF_MANAGED]));
    // The one bind: the built-in system:auth-delegator, for the bindings
    // that let the data plane review tokens (kubernetes access mode).
    const AUTH_DELEGATOR_BIND: &str =
        "rbac.authorization.k8s.io/clusterroles:bind@system:auth-delegator";
    for g in cluster.iter().chain(&role) {
        assert!(!g.contains('*'), "wildcard grant {g}");
        for verb in [":escalate", ":bind", ":impersonate", ":deletecollection"] {
            assert!(
                !g.contains(verb) || g == AUTH_DELEGATOR_BIND,
                "dangerous grant {g}"
            );
        }
    }
    assert!(
        cluster
            .iter()
            .filter(|g| g.starts_with("/secrets"))
            .all(|g| g.ends_with("@logstream-pull-token")),
        "outside its namespace the operator may touch only the pull-token Secrets"
    );
    // Bindings point at the chart's ServiceAccount.
    let sa = one(&default, "ServiceAccount")["metadata"]["name"].clone();
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        let b = one(&default, kind);
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], NS);
    }

    // cert-manager: no Secret, no webhook configuration for the operator.
    let full = docs(&render(FULL, false));
    assert_eq!(
        grants(one(&full, "ClusterRole")),
        set_of(&[CLUSTER_ALLOWED])
    );
    assert_eq!(grants(one(&full, "Role")), set_of(&[ROLE_ALLOWED]));

    let none = docs(&render(&["rbac.create=false"], false));
    assert!(all_of(&none, "ClusterRole").is_empty() && all_of(&none, "Role").is_empty());
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn operator_deployment_is_hardened_and_wired() {
    let default = docs(&render(&[], false));
    let d = one(&default, "Deployment");
    assert_eq!(d["metadata"]["name"], "logstream-operator");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["serviceAccountName"], "logstream-operator");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert!(sc["capabilities"].get("add").is_none());
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["image"], "ghcr.io/logstream-dev/logstream-operator:0.1.0");
    let args = strs(&c["args"]);
    for want in [
        "run",
        "--namespace=$(POD_NAMESPACE)",
        "--image=ghcr.io/logstream-dev/logstream:0.1.0",
        "--webhook-service=logstream-operator",
        "--webhook-service-port=443",
        "--webhook-listen=0.0.0.0:8443",
        "--tls-secret=logstream-webhook-tls",
        "--health-listen=0.0.0.0:8080",
        // The chart's ClusterRole owns the operator's run-time objects.
        "--owner-cluster-role=logstream-operator",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    assert_eq!(
        one(&default, "ClusterRole")["metadata"]["name"],
        "logstream-operator"
    );
    assert!(!args.iter().any(|a| a.starts_with("--manage-webhook")));
    // Without the chart's RBAC there is no ClusterRole to own them.
    let no_rbac = docs(&render(&["rbac.create=false"], false));
    let no_rbac_args =
        strs(&one(&no_rbac, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(
        !no_rbac_args
            .iter()
            .any(|a| a.starts_with("--owner-cluster-role")),
        "{no_rbac_args:?}"
    );
    let env: Vec<(&str, &str)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?,
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?,
            ))
        })
        .collect();
    assert!(env.contains(&("POD_NAMESPACE", "metadata.namespace")));
    assert!(env.contains(&("POD_NAME", "metadata.name")));
    let ports: Vec<(&str, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, [("webhook", 8443), ("health", 8080)]);
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "health"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "health"})
    );

    // The Service the API server calls (--webhook-service) and Prometheus scrapes.
    let svc = one(&default, "Service");
    assert_eq!(svc["metadata"]["name"], "logstream-operator");
    assert_eq!(
        svc["spec"]["selector"],
        d["spec"]["selector"]["matchLabels"]
    );
    let sports: Vec<(&str, i64, &str)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["port"].as_i64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sports,
        [("webhook", 443, "webhook"), ("metrics", 8080, "health")]
    );

    // One replica: no PodDisruptionBudget (it would block every drain).
    assert!(all_of(&default, "PodDisruptionBudget").is_empty());
    // selfManaged: the operator registers the webhook, the chart does not.
    assert!(all_of(&default, "MutatingWebhookConfiguration").is_empty());
    for kind in ["ServiceMonitor", "ConfigMap", "Certificate", "Issuer"] {
        assert!(
            all_of(&default, kind).is_empty(),
            "{kind} rendered by default"
        );
    }

    let full = docs(&render(FULL, false));
    let pdb = one(&full, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"], d["spec"]["selector"]);
    assert_eq!(one(&full, "Deployment")["spec"]["replicas"], 2);
}

/// The operator's arguments as the chart renders them with `sets`.
fn operator_args(sets: &[&str]) -> (Vec<String>, Value) {
    let rendered = docs(&render(sets, false));
    let pod = one(&rendered, "Deployment")["spec"]["template"]["spec"].clone();
    let args = strs(&pod["containers"][0]["args"])
        .into_iter()
        .map(str::to_string)
        .collect();
    (args, pod)
}

fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

/// Day-one settings reach the operator in the form it parses: pull policy,
/// data-plane ids (or none, for OpenShift), the aggregator's placement, the
/// webhook's timeout and port, host networking.
#[test]
fn data_plane_and_webhook_settings_reach_the_operator() {
    let (args, pod) = operator_args(&[]);
    assert_eq!(arg(&args, "--run-as-user"), Some("65532"));
    assert_eq!(arg(&args, "--run-as-group"), Some("65532"));
    assert_eq!(arg(&args, "--webhook-timeout-seconds"), Some("5"));
    assert_eq!(arg(&args, "--image-pull-policy"), None);
    let agg = logstream_operator::dataplane::parse_aggregator_pod(
        arg(&args, "--aggregator-pod").unwrap(),
    )
    .unwrap();
    assert_eq!(agg, logstream_operator::dataplane::AggregatorPod::default());
    assert!(pod["hostNetwork"].is_null());

    let (args, pod) = operator_args(&[
        "logstream.image.pullPolicy=Always",
        "aggregator.nodeSelector.pool=infra",
        "aggregator.imagePullSecrets[0].name=regcred",
        "aggregator.resources.limits.memory=1Gi",
        "aggregator.priorityClassName=high",
        "webhook.timeoutSeconds=9",
        "webhook.containerPort=9443",
        "operator.hostNetwork=true",
    ]);
    assert_eq!(arg(&args, "--image-pull-policy"), Some("Always"));
    // Large ids stay integers (Helm's numbers are floats: 1e+06).
    let (big, _) = operator_args(&["logstream.runAsUser=1000000"]);
    assert_eq!(arg(&big, "--run-as-user"), Some("1000000"));
    assert_eq!(arg(&args, "--webhook-timeout-seconds"), Some("9"));
    assert_eq!(arg(&args, "--webhook-listen"), Some("0.0.0.0:9443"));
    assert_eq!(pod["containers"][0]["ports"][0]["containerPort"], 9443);
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    let agg = logstream_operator::dataplane::parse_aggregator_pod(
        arg(&args, "--aggregator-pod").unwrap(),
    )
    .unwrap();
    assert_eq!(agg.node_selector["pool"], "infra");
    assert_eq!(agg.image_pull_secrets[0].name, "regcred");
    assert_eq!(agg.priority_class_name.as_deref(), Some("high"));
    assert_eq!(agg.resources.unwrap().limits.unwrap()["memory"].0, "1Gi");
}

/// `helm uninstall` first runs `logstream-operator uninstall` in a Job
/// (pre-delete hook) with the operator's ServiceAccount; its pod is not
/// picked by the webhook Service or the PodDisruptionBudget.
#[test]
fn uninstall_hook_deletes_the_logstreams_first() {
    let rendered = docs(&render(FULL, false));
    let job = one(&rendered, "Job");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    let pod = &job["spec"]["template"];
    assert_eq!(strs(&pod["spec"]["containers"][0]["args"])[0], "uninstall");
    assert_eq!(pod["spec"]["serviceAccountName"], "logstream-operator");
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    let svc = one(&rendered, "Service");
    let selector = svc["spec"]["selector"].as_object().unwrap();
    assert!(
        !selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the webhook Service would select the hook's pod"
    );
    let off = docs(&render(&["uninstall.deleteLogStreams=false"], false));
    assert!(all_of(&off, "Job").is_empty());
}

/// OpenShift's restricted SCC assigns user, group and fsGroup itself and
/// rejects pods that pin others: with the documented nulls, neither the
/// operator's pod nor the data plane pins any.
#[test]
fn openshift_values_pin_no_ids() {
    let (args, pod) = operator_args(&[
        "operator.podSecurityContext.runAsUser=null",
        "operator.podSecurityContext.runAsGroup=null",
        "operator.podSecurityContext.fsGroup=null",
        "operator.securityContext.runAsUser=null",
        "operator.securityContext.runAsGroup=null",
        "logstream.runAsUser=null",
        "logstream.runAsGroup=null",
    ]);
    let text = serde_json::to_string(&pod).unwrap();
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        assert!(!text.contains(key), "{key} still pinned: {pod:#}");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(arg(&args, "--run-as-user"), Some(""));
    assert_eq!(arg(&args, "--run-as-group"), Some(""));
    assert_eq!(
        logstream_operator::dataplane::parse_id(""),
        Ok(logstream_operator::dataplane::OptionalId(None))
    );
}

/// As a dependency of another chart, Helm passes `global`: the schema must
/// accept it (it rejected every unknown top-level key).
#[test]
fn the_chart_works_as_a_subchart() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("parent");
    std::fs::create_dir_all(parent.join("charts")).unwrap();
    std::fs::write(
        parent.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: parent\nversion: 0.1.0\ndependencies:\n- name: logstream\n  version: \">=0.0.0\"\n  repository: file://{}\n",
            repo_root().join("charts/logstream").display()
        ),
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\nlogstream:\n  operator:\n    replicas: 1\n",
    )
    .unwrap();
    let parent = parent.to_str().unwrap();
    helm(&["dependency", "build", parent]);
    let out = helm(&[
        "template",
        "p",
        parent,
        "--namespace",
        NS,
        "--kube-version",
        KUBE_VERSION,
    ]);
    let rendered = docs(&out);
    assert_eq!(one(&rendered, "Deployment")["kind"], "Deployment");
}

#[test]
fn cert_manager_mode_issues_the_certificate_and_owns_the_webhook() {
    let full = docs(&render(FULL, false));
    let cert = one(&full, "Certificate");
    assert_eq!(cert["spec"]["secretName"], "logstream-webhook-tls");
    let dns = strs(&cert["spec"]["dnsNames"]);
    assert!(
        dns.contains(&"logstream-operator.logstream-system.svc"),
        "{dns:?}"
    );
    let issuer = one(&full, "Issuer");
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    assert_eq!(issuer["spec"]["selfSigned"], json!({}));

    let mwc = one(&full, "MutatingWebhookConfiguration");
    assert_eq!(
        mwc["metadata"]["name"],
        logstream_operator::keys::WEBHOOK_NAME
    );
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NS}/{}", cert["metadata"]["name"].as_str().unwrap())
    );
    // Same webhook as the operator registers in selfManaged mode.
    let ours = logstream_operator::webhook::configuration(
        &logstream_operator::webhook::Endpoint::Service {
            name: "logstream-operator".into(),
            namespace: NS.into(),
            port: 443,
        },
        "",
        None,
        5,
    );
    let mut want = serde_json::to_value(&ours).unwrap()["webhooks"].clone();
    want[0]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    assert_eq!(
        mwc["webhooks"], want,
        "chart and operator disagree on the webhook"
    );

    // The operator serves cert-manager's certificate and leaves the webhook alone.
    let d = one(&full, "Deployment");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args = strs(&c["args"]);
    assert!(args.contains(&"--manage-webhook=false"), "{args:?}");
    assert!(args.contains(&"--tls-cert-dir=/etc/logstream/webhook-tls"));
    assert_eq!(
        c["volumeMounts"][0]["mountPath"],
        "/etc/logstream/webhook-tls"
    );
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    assert_eq!(
        d["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "logstream-webhook-tls"
    );
}

/// `logstream_*` metric names in the dashboard's queries.
fn dashboard_metrics(dash: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let mut rest = t["expr"].as_str().unwrap();
            while let Some(i) = rest.find("logstream_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    names
}

#[test]
fn monitoring_dashboard_and_loki_datasource() {
    let full = docs(&render(FULL, false));
    let monitors = all_of(&full, "ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    let svc = one(&full, "Service");
    assert_eq!(
        monitors[0]["spec"]["selector"]["matchLabels"],
        svc["spec"]["selector"]
    );
    assert_eq!(monitors[0]["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitors[1]["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(monitors[1]["spec"]["endpoints"][0]["port"], "logstream");

    let maps = all_of(&full, "ConfigMap");
    let dash_map = maps
        .iter()
        .find(|m| m["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("dashboard ConfigMap labelled grafana_dashboard: \"1\"");
    let dash: Value =
        serde_json::from_str(dash_map["data"]["logstream.json"].as_str().unwrap()).unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["name"] == "DS_PROMETHEUS").unwrap();
    assert_eq!(
        (ds["type"].as_str(), ds["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {}",
                p["title"]
            );
        }
    }
    // Every operator metric is plotted, and only those that exist
    // (the streamer's are checked against the real binary in static_binaries.rs).
    // Families with labels appear once they have a sample.
    let metrics = logstream_operator::metrics::Metrics::new();
    metrics
        .admissions
        .get_or_create(&logstream_operator::metrics::Outcome {
            outcome: "injected",
        })
        .inc();
    metrics
        .reconcile_errors
        .get_or_create(&logstream_operator::metrics::ErrorLabel { error: "kube" })
        .inc();
    metrics
        .api_requests
        .get_or_create(&logstream_operator::metrics::ApiCall {
            verb: "list".into(),
            resource: "pods".into(),
        })
        .inc();
    let exposition = metrics.encode();
    let families: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            }
        })
        .collect();
    assert!(families.len() >= 5, "{exposition}");
    // A histogram is plotted through its buckets.
    let plotted: BTreeSet<String> = dashboard_metrics(&dash)
        .into_iter()
        .filter(|m| m.starts_with("logstream_operator_"))
        .map(|m| m.strip_suffix("_bucket").map_or(m.clone(), str::to_string))
        .collect();
    assert_eq!(
        plotted, families,
        "charts/logstream/dashboards/logstream.json must plot exactly the operator's metrics (operator/src/metrics.rs)"
    );
    assert!(dashboard_metrics(&dash).len() > families.len() + 15);

    let loki = maps
        .iter()
        .find(|m| m["metadata"]["labels"]["grafana_datasource"] == "1")
        .expect("Loki datasource ConfigMap");
    let provisioning: Value = serde_yaml::from_str(
        loki["data"]["logstream-loki-datasources.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let d = &provisioning["datasources"][0];
    assert_eq!(d["type"], "loki");
    assert_eq!(d["url"], "http://logstream-aggregator.default.svc:7680");
    // Grafana presents its own ServiceAccount token (kubernetes access mode).
    assert_eq!(d["jsonData"]["httpHeaderName1"], "Authorization");
    assert_eq!(
        d["secureJsonData"]["httpHeaderValue1"],
        "Bearer $__file{/var/run/secrets/kubernetes.io/serviceaccount/token}"
    );
}

/// Minimal CRDs for the optional objects' kinds, so the API server can check
/// them: it validates their apiVersion/kind/metadata/namespace (their bodies
/// are the Prometheus Operator's and cert-manager's business).
fn third_party_crds() -> String {
    let crd = |group: &str, kind: &str, plural: &str| {
        format!(
            r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{kind: {kind}, plural: {plural}, singular: {singular}, listKind: {kind}List}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#,
            singular = kind.to_lowercase()
        )
    };
    [
        crd("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        crd("cert-manager.io", "Certificate", "certificates"),
        crd("cert-manager.io", "Issuer", "issuers"),
    ]
    .join("---\n")
}

#[test]
fn rendered_manifests_are_accepted_by_the_api_server() {
    let cp = ControlPlane::start();
    cp.kubectl(&["create", "namespace", NS]).stdout_if_success();
    cp.kubectl_stdin(&["apply", "-f", "-"], &third_party_crds())
        .stdout_if_success();
    cp.wait_crds_established(&[
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/certificates.cert-manager.io",
        "crd/issuers.cert-manager.io",
    ]);
    for sets in [&[][..], FULL] {
        let rendered = render(sets, true);
        let n = docs(&rendered).len();
        let out = cp.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=helm",
                "--dry-run=server",
                "-f",
                "-",
            ],
            &rendered,
        );
        let applied = out.stdout_if_success();
        assert_eq!(
            applied.matches("(server dry run)").count(),
            n,
            "{sets:?}: {applied}"
        );
    }
}

/// The musl release operator (what the image ships), built like
/// static_binaries.rs does (shared target dir, so one build serves both).
fn operator_bin() -> PathBuf {
    logstream_tests::musl_release_dir().join("logstream-operator")
}

/// A kubeconfig for `cp` that authenticates as the chart's ServiceAccount
/// (a TokenRequest token) instead of the admin.
fn service_account_kubeconfig(cp: &ControlPlane, sa: &str) -> PathBuf {
    let token = cp.kubectl(&["create", "token", sa, "-n", NS, "--duration=1h"]);
    let token = token.stdout_if_success().trim().to_string();
    let mut cfg: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cp.kubeconfig).unwrap()).unwrap();
    cfg["users"] = json!([{"name": sa, "user": {"token": token}}]);
    cfg["contexts"][0]["context"]["user"] = json!(sa);
    let path = cp.work_dir.join("operator-sa.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn operator_runs_with_only_the_permissions_the_chart_grants() {
    let bin = operator_bin();
    let cp = ControlPlane::start();
    cp.kubectl(&["create", "namespace", NS]).stdout_if_success();
    let rendered = render(&[], true);
    cp.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=helm", "-f", "-"],
        &rendered,
    )
    .stdout_if_success();
    cp.wait_crds_established(&["crd/logstreams.logstream.dev"]);
    // The owner the chart passes to the operator: its ClusterRole.
    let rendered_docs = docs(&rendered);
    let owner_role = strs(
        &one(&rendered_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
    )
    .into_iter()
    .find_map(|a| a.strip_prefix("--owner-cluster-role="))
    .expect("--owner-cluster-role in the Deployment's args")
    .to_string();
    assert_eq!(
        one(&rendered_docs, "ClusterRole")["metadata"]["name"],
        owner_role.as_str()
    );

    // What the ServiceAccount must not do.
    let who = format!("--as=system:serviceaccount:{NS}:logstream-operator");
    for (verb, what, ns) in [
        ("get", "secrets", "default"),
        ("list", "secrets", "shop"),
        ("get", "secrets/app-credentials", "shop"),
        ("update", "leases/other", NS),
        ("list", "secrets", NS),
        ("get", "secrets/other", NS),
        ("create", "pods", "default"),
        ("delete", "pods", "default"),
        ("create", "clusterroles", "default"),
        ("bind", "clusterroles/cluster-admin", "default"),
        ("bind", "clusterroles/admin", "default"),
        ("get", "clusterroles/cluster-admin", "default"),
        ("update", "clusterroles/logstream-operator", "default"),
        ("delete", "clusterroles/logstream-operator", "default"),
        ("escalate", "clusterroles", "default"),
        ("get", "clusterrolebindings", "default"),
        ("patch", "mutatingwebhookconfigurations/other", "default"),
        ("update", "deployments", "default"),
        ("delete", "namespaces", "default"),
    ] {
        let out = cp.kubectl(&["auth", "can-i", verb, what, "-n", ns, &who]);
        assert_eq!(
            out.stdout.trim(),
            "no",
            "the operator may {verb} {what} in {ns}"
        );
    }
    for (verb, what, ns) in [
        ("patch", "secrets/logstream-webhook-tls", NS),
        ("get", "secrets/logstream-pull-token", "shop"),
        ("update", "leases/logstream-operator", NS),
        ("create", "leases", NS),
        ("watch", "pods", "default"),
        ("bind", "clusterroles/system:auth-delegator", "default"),
        ("get", "clusterroles/logstream-operator", "default"),
        (
            "patch",
            "clusterrolebindings/logstream:auth-delegator:shop",
            "default",
        ),
        (
            "patch",
            "mutatingwebhookconfigurations/logstream-injector",
            "default",
        ),
    ] {
        let out = cp.kubectl(&["auth", "can-i", verb, what, "-n", ns, &who]);
        assert_eq!(
            out.stdout.trim(),
            "yes",
            "the operator may not {verb} {what} in {ns}"
        );
    }

    // An app deployed before logstream.
    cp.kubectl(&["create", "namespace", "shop"])
        .stdout_if_success();
    cp.kubectl(&[
        "apply",
        "-n",
        "shop",
        "-f",
        &repo_root().join("examples/demo-app.yaml").to_string_lossy(),
    ])
    .stdout_if_success();
    let client = cp.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    eventually("the demo Deployment's pods", PATIENCE, || async {
        let l = pods
            .list(&ListParams::default().labels("app=demo"))
            .await
            .ok()?;
        (!l.items.is_empty()).then_some(())
    })
    .await;

    // The operator as its ServiceAccount; webhook by URL (no cluster network).
    let kubeconfig = service_account_kubeconfig(&cp, "logstream-operator");
    let mut op = OperatorProcess::spawn(
        &bin,
        &kubeconfig,
        free_port(),
        &[
            "--namespace",
            NS,
            "--identity",
            "logstream-operator-test",
            "--owner-cluster-role",
            &owner_role,
        ],
        cp.work_dir.join("operator.log"),
    );
    // It created its TLS Secret, registered its webhook and took the leader
    // Lease, all owned by the chart's ClusterRole (helm uninstall deletes it,
    // the garbage collector them).
    let role = Api::<ClusterRole>::all(client.clone())
        .get(&owner_role)
        .await
        .unwrap();
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let tls_secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let webhook = webhooks.get("logstream-injector").await.unwrap();
    assert_owned_by(&webhook.metadata, &role);
    let tls_secret = tls_secrets.get("logstream-webhook-tls").await.unwrap();
    assert_owned_by(&tls_secret.metadata, &role);
    let lease = eventually("the leader Lease", PATIENCE, || async {
        leases.get_opt("logstream-operator").await.ok()?
    })
    .await;
    assert_owned_by(&lease.metadata, &role);

    cp.kubectl(&[
        "apply",
        "-n",
        "shop",
        "-f",
        &repo_root()
            .join("examples/logstream.yaml")
            .to_string_lossy(),
    ])
    .stdout_if_success();
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    eventually("the Service, Ingress and aggregator", PATIENCE, || async {
        services.get_opt("demo-logstream").await.ok()??;
        deployments.get_opt("logstream-aggregator").await.ok()??;
        Some(())
    })
    .await;
    for kind in [
        "ingress/demo-logstream",
        "serviceaccount/logstream-aggregator",
        "role/logstream-aggregator",
        "rolebinding/logstream-aggregator",
        "service/logstream-aggregator",
    ] {
        cp.kubectl(&["get", "-n", "shop", kind]).stdout_if_success();
    }
    // Owners restarted, new pods injected by the webhook (which lists
    // LogStreams as the ServiceAccount), status patched, events recorded.
    eventually("injected pods", PATIENCE, || async {
        let l = pods
            .list(&ListParams::default().labels("app=demo,logstream.dev/stream=demo"))
            .await
            .ok()?;
        (!l.items.is_empty()).then_some(())
    })
    .await;
    // kubernetes access mode (the default): the demo pods' ServiceAccount and
    // the aggregator's may review tokens, through the binding the operator made.
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = eventually("the auth-delegator binding", PATIENCE, || async {
        bindings
            .get_opt("logstream:auth-delegator:shop")
            .await
            .ok()?
    })
    .await;
    assert_eq!(binding.role_ref.name, "system:auth-delegator");
    assert_owned_by(&binding.metadata, &role);
    let subjects: BTreeSet<String> = binding
        .subjects
        .unwrap_or_default()
        .into_iter()
        .map(|s| format!("{}/{}", s.namespace.unwrap_or_default(), s.name))
        .collect();
    assert_eq!(
        subjects,
        set_of(&[&["shop/default", "shop/logstream-aggregator"]])
    );
    let streams: Api<LogStream> = Api::namespaced(client.clone(), "shop");
    eventually("status with injected pods", PATIENCE, || async {
        let s = streams.get("demo").await.ok()?.status?;
        (s.injected_pods > 0).then_some(())
    })
    .await;
    let ns = Api::<Namespace>::all(client.clone())
        .get("shop")
        .await
        .unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["logstream.dev/injection"],
        "enabled"
    );
    let events = cp.kubectl(&[
        "get",
        "events",
        "-n",
        "shop",
        "--field-selector",
        "involvedObject.kind=LogStream",
    ]);
    assert!(
        events.stdout_if_success().contains("RestartedOwner"),
        "{}",
        events.stdout
    );

    // Cleanup (finalizer, deletes, namespace label) with the same permissions.
    cp.kubectl(&[
        "delete",
        "-n",
        "shop",
        "logstream/demo",
        "--wait=true",
        "--timeout=60s",
    ])
    .stdout_if_success();
    eventually(
        "the aggregator and the auth-delegator binding deleted, the namespace unlabelled",
        PATIENCE,
        || async {
            bindings
                .get_opt("logstream:auth-delegator:shop")
                .await
                .ok()?
                .is_none()
                .then_some(())?;
            deployments
                .get_opt("logstream-aggregator")
                .await
                .ok()?
                .is_none()
                .then_some(())?;
            let ns = Api::<Namespace>::all(client.clone())
                .get("shop")
                .await
                .ok()?;
            let labels = ns.metadata.labels.unwrap_or_default();
            (!labels.contains_key("logstream.dev/injection")).then_some(())
        },
    )
    .await;

    // Let the last reconcile's log lines land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = op.log();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator hit a permission the chart does not grant:\n{log}"
    );

    // helm uninstall deletes the ClusterRole (the operator is gone by then);
    // the garbage collector (kube-controller-manager) deletes what it owns.
    op.terminate();
    Api::<ClusterRole>::all(client.clone())
        .delete(&owner_role, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the webhook configuration, TLS Secret and Lease garbage collected",
        PATIENCE,
        || async {
            webhooks
                .get_opt("logstream-injector")
                .await
                .ok()?
                .is_none()
                .then_some(())?;
            tls_secrets
                .get_opt("logstream-webhook-tls")
                .await
                .ok()?
                .is_none()
                .then_some(())?;
            leases
                .get_opt("logstream-operator")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// `meta` names `role` as a non-controlling, non-blocking owner.
fn assert_owned_by(meta: &ObjectMeta, role: &ClusterRole) {
    let refs = meta.owner_references.clone().unwrap_or_default();
    assert!(
        refs.iter()
            .any(|r| r.api_version == "rbac.authorization.k8s.io/v1"
                && r.kind == "ClusterRole"
                && Some(&r.name) == role.metadata.name.as_ref()
                && Some(&r.uid) == role.metadata.uid.as_ref()
                && r.controller != Some(true)
                && r.block_owner_deletion != Some(true)),
        "{} is not owned by ClusterRole {:?}: {refs:?}",
        meta.name.as_deref().unwrap_or_default(),
        role.metadata.name
    );
}
