//! The operator against a real kube-apiserver, controller-manager and etcd:
//! CRD validation, reconcile, the webhook called by the API server, status,
//! owner restarts and cleanup. kubectl is driven the way a user would.
#![allow(clippy::unwrap_used)] // test code

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams};
use logstream_operator::crd::LogStream;
use logstream_tests::{ControlPlane, OperatorProcess, eventually, free_port};

const PATIENCE: Duration = Duration::from_secs(60);

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The operator binary built by this workspace.
fn operator_bin() -> PathBuf {
    logstream_tests::workspace_bin("logstream-operator", "logstream-operator")
}

/// Starts the real operator against a control plane.
struct Operator;

impl Operator {
    fn start(cp: &ControlPlane) -> OperatorProcess {
        Operator::start_as(cp, "operator-0")
    }

    fn start_as(cp: &ControlPlane, identity: &str) -> OperatorProcess {
        Operator::start_with(cp, identity, free_port(), &[])
    }

    fn start_with(cp: &ControlPlane, identity: &str, port: u16, extra: &[&str]) -> OperatorProcess {
        let mut args = vec![
            "--namespace",
            "logstream-system",
            "--identity",
            identity,
            "--lease-duration",
            "3s",
        ];
        args.extend_from_slice(extra);
        let log = cp.work_dir.join(format!("{identity}.log"));
        OperatorProcess::spawn(&operator_bin(), &cp.kubeconfig, port, &args, log)
    }
}

fn install_crd(cp: &ControlPlane) {
    cp.kubectl(&["apply", "-f", &repo("crds/")])
        .stdout_if_success();
    cp.wait_crds_established(&["crd/logstreams.logstream.dev"]);
}

/// Applies a LogStream selecting `app=web` in `shop`, waits until the
/// operator has labelled the namespace for injection, then creates pod
/// `web-1` through the API server and returns it as stored.
async fn create_web_pod_in_shop(cp: &ControlPlane, client: &kube::Client) -> Pod {
    let ls = r#"{"apiVersion":"logstream.dev/v1alpha1","kind":"LogStream","metadata":{"name":"web","namespace":"shop"},"spec":{"selector":{"matchLabels":{"app":"web"}}}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], ls)
        .stdout_if_success();
    let ns: Api<Namespace> = Api::all(client.clone());
    eventually("the namespace to be labelled", PATIENCE, || async {
        ns.get("shop")
            .await
            .ok()?
            .metadata
            .labels?
            .get("logstream.dev/injection")
            .cloned()
    })
    .await;
    let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-1","namespace":"shop","labels":{"app":"web"}},"spec":{"containers":[{"name":"app","image":"busybox"}]}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], pod)
        .stdout_if_success();
    Api::<Pod>::namespaced(client.clone(), "shop")
        .get("web-1")
        .await
        .unwrap()
}

#[test]
fn bad_logstreams_are_refused_by_the_api_server_naming_the_field() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    let cases = [
        (r#"{"selector":{}}"#, "spec.selector", "must not be empty"),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"paths":["/etc/passwd"]}"#,
            "spec.paths[0]",
            "relative",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"paths":["../secrets/*.log"]}"#,
            "spec.paths[0]",
            "must not leave",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"paths":["app[.log"]}"#,
            "spec.paths[0]",
            "valid globs",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"paths":[]}"#,
            "spec.paths",
            "at least 1",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"buffer":{"lines":-5}}"#,
            "spec.buffer.lines",
            "greater than or equal to 1",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"access":{"mode":"token"}}"#,
            "spec.access",
            "tokenSecret is required",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"mountPath":"var/log"}"#,
            "spec.mountPath",
            "absolute",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"aggregator":{"replicas":0}}"#,
            "spec.aggregator.replicas",
            "greater than or equal to 1",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"parse":{"format":"xml"}}"#,
            "spec.parse.format",
            "Unsupported value",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"gateway":{"parentRefs":[]}}"#,
            "spec.gateway.parentRefs",
            "at least 1",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"gateway":{"parentRefs":[{"name":"eg"}],"requestTimeout":"forever"}}"#,
            "spec.gateway.requestTimeout",
            "should match",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"gateway":{"parentRefs":[{"name":"eg"}],"hostnames":["Logs.Example.com"]}}"#,
            "spec.gateway.hostnames[0]",
            "should match",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"gateway":{"parentRefs":[{"name":"eg"}],"sessionPersistence":"Header"}}"#,
            "spec.gateway.sessionPersistence",
            "Unsupported value",
        ),
        (
            r#"{"selector":{"matchLabels":{"a":"b"}},"ingress":{"host":"l.example.com","controller":"nginx"}}"#,
            "spec.ingress.controller",
            "Unsupported value",
        ),
    ];
    for (spec, field, message) in cases {
        let body = format!(
            r#"{{"apiVersion":"logstream.dev/v1alpha1","kind":"LogStream","metadata":{{"name":"bad","namespace":"default"}},"spec":{spec}}}"#
        );
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &body);
        assert!(!out.success, "{spec} was accepted");
        assert!(
            out.stderr.contains(field),
            "{spec}: error does not name {field}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(message),
            "{spec}: error lacks {message:?}: {}",
            out.stderr
        );
    }
    let good = r#"{"apiVersion":"logstream.dev/v1alpha1","kind":"LogStream","metadata":{"name":"good","namespace":"default"},"spec":{"selector":{"matchLabels":{"a":"b"}}}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], good)
        .stdout_if_success();
    let listed = cp.kubectl(&["get", "ls", "-n", "default", "-o", "name"]);
    assert_eq!(
        listed.stdout_if_success().trim(),
        "logstream.logstream.dev/good"
    );
}

#[tokio::test]
async fn logstream_wires_objects_injects_pods_restarts_owners_and_cleans_up() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    cp.kubectl(&["create", "namespace", "logstream-system"])
        .stdout_if_success();
    cp.kubectl(&["create", "namespace", "shop"])
        .stdout_if_success();
    // An app deployed before logstream: its pods have no sidecar.
    cp.kubectl(&["apply", "-n", "shop", "-f", &repo("examples/demo-app.yaml")])
        .stdout_if_success();
    let client = cp.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    eventually("the demo Deployment's first pods", PATIENCE, || async {
        let l = pods
            .list(&ListParams::default().labels("app=demo"))
            .await
            .ok()?;
        (l.items.len() == 2).then_some(())
    })
    .await;

    let op = Operator::start(&cp);
    cp.kubectl(&[
        "apply",
        "-n",
        "shop",
        "-f",
        &repo("examples/logstream.yaml"),
    ])
    .stdout_if_success();

    // Desired objects, with the affinity settings.
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    let svc = eventually("the LogStream's Service", PATIENCE, || async {
        services.get_opt("demo-logstream").await.ok()?
    })
    .await;
    let spec = svc.spec.unwrap();
    assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(spec.selector.unwrap()["logstream.dev/stream"], "demo");
    // Applied after the Service in the same reconcile: wait for it too.
    let ingresses = Api::<Ingress>::namespaced(client.clone(), "shop");
    let ing = eventually("the LogStream's Ingress", PATIENCE, || async {
        ingresses.get_opt("demo-logstream").await.ok()?
    })
    .await;
    let ann = ing.metadata.annotations.unwrap();
    // No IngressClass in this cluster: every maintained controller's
    // annotations, never ingress-nginx's.
    assert_eq!(
        ann["traefik.ingress.kubernetes.io/router.entrypoints"],
        "web,websecure"
    );
    assert_eq!(ann["haproxy-ingress.github.io/affinity"], "cookie");
    assert_eq!(ann["projectcontour.io/websocket-routes"], "/");
    assert!(!ann.keys().any(|k| k.starts_with("nginx.")), "{ann:?}");
    assert_eq!(
        ann["haproxy-ingress.github.io/timeout-tunnel"], "2h",
        "user annotations win"
    );
    assert_eq!(
        ing.spec.unwrap().rules.unwrap()[0].host.as_deref(),
        Some("logs.demo.localtest.me")
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    // Applied after the Service in the same reconcile: wait for it too.
    let agg = eventually("the aggregator Deployment", PATIENCE, || async {
        deployments.get_opt("logstream-aggregator").await.ok()?
    })
    .await;
    assert_eq!(agg.spec.as_ref().unwrap().replicas, Some(2));
    // The aggregator's Service is applied right after its Deployment.
    let agg_svc = eventually("the aggregator Service", PATIENCE, || async {
        services.get_opt("logstream-aggregator").await.ok()?
    })
    .await;
    assert_eq!(
        agg_svc.spec.unwrap().session_affinity.as_deref(),
        Some("ClientIP")
    );
    let pull = cp.kubectl(&[
        "get",
        "-n",
        "shop",
        "secret",
        "logstream-pull-token",
        "-o",
        "jsonpath={.data.token}",
    ]);
    assert_eq!(
        pull.stdout_if_success().len(),
        88,
        "a 32-byte hex token, base64-encoded"
    );
    for kind in ["serviceaccount", "role", "rolebinding"] {
        cp.kubectl(&["get", "-n", "shop", kind, "logstream-aggregator"])
            .stdout_if_success();
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get("shop")
        .await
        .unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["logstream.dev/injection"],
        "enabled"
    );

    // The old pods are found, reported, and their Deployment is rolled;
    // the new pods come through the webhook with the sidecar, exactly once.
    eventually("the demo Deployment to be restarted", PATIENCE, || async {
        let d = deployments.get("demo").await.ok()?;
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("logstream.dev/restartedAt")
            .cloned()
    })
    .await;
    let injected = eventually(
        "injected pods from the new ReplicaSet",
        PATIENCE,
        || async {
            let l = pods
                .list(&ListParams::default().labels("app=demo,logstream.dev/stream=demo"))
                .await
                .ok()?;
            (!l.items.is_empty()).then_some(l.items)
        },
    )
    .await;
    for p in &injected {
        let s = p.spec.as_ref().unwrap();
        let sidecars: Vec<_> = s
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.name == "logstream")
            .collect();
        assert_eq!(
            sidecars.len(),
            1,
            "exactly one sidecar in {:?}",
            p.metadata.name
        );
        assert_eq!(
            sidecars[0].restart_policy.as_deref(),
            Some("Always"),
            "native sidecar"
        );
        assert!(s.containers.iter().all(|c| c.name != "logstream"));
        // examples/demo-app.yaml mounts its own volume at /var/log/app: reused,
        // not duplicated; the other volumes we add are the pull token and
        // the sidecar's state (its file positions).
        let ours: Vec<&str> = s
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .filter(|n| !n.starts_with("kube-api-access"))
            .collect();
        assert_eq!(ours, ["logs", "logstream-state", "logstream-pull"]);
        let mount = &sidecars[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!((mount.name.as_str(), mount.read_only), ("logs", Some(true)));
    }

    // A pod that opted out stays without sidecar; it is neither selected nor
    // pending a restart (a restart would not change it: it would loop).
    let opted_out = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"manual","namespace":"shop","labels":{"app":"demo","logstream.dev/inject":"false"}},"spec":{"containers":[{"name":"app","image":"busybox"}]}}"#;
    let created = cp.kubectl_stdin(&["create", "-o", "json", "-f", "-"], opted_out);
    let created: serde_json::Value = serde_json::from_str(created.stdout_if_success()).unwrap();
    assert!(
        created["spec"]["initContainers"].is_null()
            && created["spec"]["containers"].as_array().unwrap().len() == 1,
        "opted-out pod was changed: {created:#}"
    );
    let streams: Api<LogStream> = Api::namespaced(client.clone(), "shop");
    // Selected: the live demo pods that did not opt out (no kubelet runs
    // here, so the old ReplicaSet's pods stay pending next to the new ones).
    let status = eventually(
        "status that counts every demo pod but the opted-out one",
        PATIENCE,
        || async {
            let s = streams.get("demo").await.ok()?.status?;
            let live = pods
                .list(&ListParams::default().labels("app=demo,logstream.dev/inject!=false"))
                .await
                .ok()?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count() as i32;
            (s.selected_pods == live && !s.pending_restart.contains(&"manual".to_string()))
                .then_some(s)
        },
    )
    .await;
    assert!(status.selected_pods >= status.injected_pods);
    assert!(
        status
            .urls
            .contains(&"http://logs.demo.localtest.me/".to_string()),
        "{:?}",
        status.urls
    );
    let table = cp.kubectl(&["get", "ls", "-n", "shop"]);
    let table = table.stdout_if_success();
    assert!(
        table.contains("SELECTED") && table.contains("PENDING") && table.contains("demo"),
        "{table}"
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

    // Deleting the LogStream removes what it created and stops injection.
    cp.kubectl(&[
        "delete",
        "-n",
        "shop",
        "-f",
        &repo("examples/logstream.yaml"),
        "--wait=true",
    ])
    .stdout_if_success();
    eventually(
        "cleanup of the Service, Ingress and aggregator",
        PATIENCE,
        || async {
            let gone = services.get_opt("demo-logstream").await.ok()?.is_none()
                && services
                    .get_opt("logstream-aggregator")
                    .await
                    .ok()?
                    .is_none()
                && deployments
                    .get_opt("logstream-aggregator")
                    .await
                    .ok()?
                    .is_none()
                && Api::<Ingress>::namespaced(client.clone(), "shop")
                    .get_opt("demo-logstream")
                    .await
                    .ok()?
                    .is_none();
            gone.then_some(())
        },
    )
    .await;
    let ns = Api::<Namespace>::all(client.clone())
        .get("shop")
        .await
        .unwrap();
    assert!(
        !ns.metadata
            .labels
            .unwrap_or_default()
            .contains_key("logstream.dev/injection")
    );
    let plain = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"after","namespace":"shop","labels":{"app":"demo"}},"spec":{"containers":[{"name":"app","image":"busybox"}]}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], plain)
        .stdout_if_success();
    let after = pods.get("after").await.unwrap();
    assert!(
        after.spec.unwrap().init_containers.is_none(),
        "no injection once the LogStream is gone"
    );
    assert!(op.log().contains("sidecar injected"), "{}", op.log());
    // The injected pods were admitted from the webhook's watch of
    // LogStreams, not a LIST per pod: only the first admissions of a
    // namespace may list (the cache may not have caught up yet).
    let admissions: f64 = ["injected", "not_injected", "skipped", "error"]
        .iter()
        .filter_map(|o| {
            op.metric(&format!(
                "logstream_operator_admissions_total{{outcome=\"{o}\"}}"
            ))
        })
        .sum();
    let lists = op
        .metric("logstream_operator_admission_lists_total")
        .unwrap();
    assert!(admissions >= 1.0, "{admissions}");
    assert!(
        lists < admissions,
        "{lists} of {admissions} admissions listed"
    );
    // Reconciles read pods from the operator's pod watch, not a LIST each
    // (counted by the operator's own client): the watch's lists only.
    let reconciles = op.metric("logstream_operator_reconciles_total").unwrap();
    let pod_lists = op
        .metric("logstream_operator_api_requests_total{verb=\"list\",resource=\"pods\"}")
        .unwrap_or(0.0);
    let pod_watches = op
        .metric("logstream_operator_api_requests_total{verb=\"watch\",resource=\"pods\"}")
        .unwrap_or(0.0);
    eprintln!("reconciles {reconciles}, pod LISTs {pod_lists}, pod WATCHes {pod_watches}");
    assert!(pod_watches >= 1.0, "the operator watches pods");
    assert!(reconciles >= 2.0, "{reconciles} reconciles");
    assert!(
        pod_lists <= 2.0 && pod_lists < reconciles,
        "{pod_lists} pod LISTs over {reconciles} reconciles"
    );
}

/// A Gateway API CRD from `.ci/install-tools` (sigs.k8s.io/gateway-api).
fn gateway_crd(version: &str, channel: &str) -> String {
    let p = logstream_tests::cache_dir().join(format!(
        "gateway-api/{version}/{channel}/gateway.networking.k8s.io_httproutes.yaml"
    ));
    assert!(
        p.exists(),
        "{} is missing: run .ci/install-tools",
        p.display()
    );
    p.display().to_string()
}

/// Installs (or replaces) the HTTPRoute CRD, as a cluster admin would.
fn install_http_route_crd(cp: &ControlPlane, version: &str, channel: &str) {
    cp.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &gateway_crd(version, channel),
    ])
    .stdout_if_success();
    cp.wait_crds_established(&["crd/httproutes.gateway.networking.k8s.io"]);
}

/// `RouteReady` of LogStream `web` in `shop` once its reason is `reason`
/// (the reconcile is nudged by an annotation `step`, as any edit would).
async fn route_ready(
    cp: &ControlPlane,
    client: &kube::Client,
    step: &str,
    reason: &str,
) -> (String, String) {
    let api: Api<LogStream> = Api::namespaced(client.clone(), "shop");
    let nudge = format!("logstream.test/step={step}");
    cp.kubectl(&["annotate", "-n", "shop", "ls", "web", &nudge, "--overwrite"])
        .stdout_if_success();
    eventually(&format!("RouteReady {reason}"), PATIENCE, || async {
        let ls = api.get("web").await.ok()?;
        let c = ls
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "RouteReady" && c.reason == reason)?;
        Some((c.status, c.message))
    })
    .await
}

/// The HTTPRoute against the real API server, through every state a cluster
/// can be in: no Gateway API (the rest is applied, the status says what is
/// missing), the standard channel (no sessionPersistence: applied without
/// it, and said), the experimental channel of v1.6 and of v1.7 (the two
/// shapes of sessionPersistence, each kept), then the LogStream no longer
/// asking for a route (deleted) and being deleted (the route with it).
#[tokio::test]
async fn an_http_route_follows_the_gateway_api_the_cluster_serves() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    for ns in ["logstream-system", "shop"] {
        cp.kubectl(&["create", "namespace", ns]).stdout_if_success();
    }
    let client = cp.client().await;
    let _op = Operator::start(&cp);
    let ls = r#"{"apiVersion":"logstream.dev/v1alpha1","kind":"LogStream","metadata":{"name":"web","namespace":"shop"},"spec":{"selector":{"matchLabels":{"app":"web"}},"gateway":{"parentRefs":[{"name":"eg","namespace":"infra","sectionName":"https"}],"hostnames":["logs.example.com"]}}}"#;
    cp.kubectl_stdin(&["apply", "-f", "-"], ls)
        .stdout_if_success();
    let (status, message) = route_ready(&cp, &client, "none", "GatewayAPINotInstalled").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("install the Gateway API CRDs"),
        "{message}"
    );
    // Everything else was applied all the same.
    let services: Api<Service> = Api::namespaced(client.clone(), "shop");
    assert!(services.get_opt("web-logstream").await.unwrap().is_some());

    let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &logstream_operator::desired::routing::http_route_resource(),
    );
    install_http_route_crd(&cp, "v1.7.0", "standard");
    let (status, message) =
        route_ready(&cp, &client, "standard", "SessionPersistenceDropped").await;
    assert_eq!(status, "False");
    assert!(message.contains("experimental channel"), "{message}");
    let route = routes.get("web-logstream").await.unwrap();
    let spec = &route.data["spec"];
    assert_eq!(spec["hostnames"][0], "logs.example.com");
    assert_eq!(spec["parentRefs"][0]["name"], "eg");
    assert_eq!(spec["parentRefs"][0]["sectionName"], "https");
    let rule = &spec["rules"][0];
    assert_eq!(rule["backendRefs"][0]["name"], "logstream-aggregator");
    assert_eq!(rule["timeouts"]["request"], "0s");
    assert!(rule.get("sessionPersistence").is_none(), "{rule}");
    assert_eq!(
        route.metadata.owner_references.as_ref().unwrap()[0].name,
        "web"
    );

    for (version, kept) in [("v1.6.3", "sessionName"), ("v1.7.0", "cookie")] {
        install_http_route_crd(&cp, version, "experimental");
        let (status, _) = route_ready(&cp, &client, version, "Applied").await;
        assert_eq!(status, "True");
        let sp = eventually(
            &format!("sessionPersistence under {version}"),
            PATIENCE,
            || async {
                let r = routes.get("web-logstream").await.ok()?;
                let sp = r.data["spec"]["rules"][0]["sessionPersistence"].clone();
                sp.get(kept).is_some().then_some(sp)
            },
        )
        .await;
        assert_eq!(sp["type"], "Cookie", "{version}: {sp}");
        assert_eq!(sp["absoluteTimeout"], "24h", "{version}: {sp}");
    }
    let sp =
        routes.get("web-logstream").await.unwrap().data["spec"]["rules"][0]["sessionPersistence"]
            .clone();
    assert_eq!(sp["cookie"]["name"], "logstream-affinity", "{sp}");
    assert!(
        sp.get("sessionName").is_none(),
        "v1.7 drops the old shape: {sp}"
    );

    // examples/gateway-api.yaml is valid against the real CRDs (Gateway and
    // LogStream; a dry run creates nothing).
    cp.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &logstream_tests::cache_dir()
            .join("gateway-api/v1.7.0/experimental/gateway.networking.k8s.io_gateways.yaml")
            .display()
            .to_string(),
    ])
    .stdout_if_success();
    cp.wait_crds_established(&["crd/gateways.gateway.networking.k8s.io"]);
    cp.kubectl(&[
        "apply",
        "-n",
        "shop",
        "--dry-run=server",
        "-f",
        &repo("examples/gateway-api.yaml"),
    ])
    .stdout_if_success();

    // No route asked: it is deleted and the condition goes.
    cp.kubectl(&[
        "patch",
        "-n",
        "shop",
        "ls",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/gateway"}]"#,
    ])
    .stdout_if_success();
    eventually("the HTTPRoute to be deleted", PATIENCE, || async {
        routes
            .get_opt("web-logstream")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let api: Api<LogStream> = Api::namespaced(client.clone(), "shop");
    eventually("RouteReady to go", PATIENCE, || async {
        let s = api.get("web").await.ok()?.status?;
        (!s.conditions.iter().any(|c| c.type_ == "RouteReady")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    let cp = ControlPlane::start();
    install_crd(&cp);
    cp.kubectl(&["create", "namespace", "logstream-system"])
        .stdout_if_success();
    cp.kubectl(&["create", "namespace", "team"])
        .stdout_if_success();
    let client = cp.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "logstream-system");
    let holder = || async {
        leases
            .get_opt("logstream-operator")
            .await
            .ok()??
            .spec?
            .holder_identity
    };
    let mut first = Operator::start_as(&cp, "replica-a");
    eventually("replica-a to lead", PATIENCE, || async {
        (holder().await? == "replica-a").then_some(())
    })
    .await;
    let second = Operator::start_as(&cp, "replica-b");
    let apply = |name: &str| {
        let body = format!(
            r#"{{"apiVersion":"logstream.dev/v1alpha1","kind":"LogStream","metadata":{{"name":"{name}","namespace":"team"}},"spec":{{"selector":{{"matchLabels":{{"app":"{name}"}}}}}}}}"#
        );
        cp.kubectl_stdin(&["apply", "-f", "-"], &body)
            .stdout_if_success();
    };
    let services: Api<Service> = Api::namespaced(client.clone(), "team");
    apply("one");
    eventually("the leader to reconcile", PATIENCE, || async {
        services.get_opt("one-logstream").await.ok()?
    })
    .await;
    assert_eq!(
        holder().await.as_deref(),
        Some("replica-a"),
        "the standby must not take the lease"
    );
    assert!(second.log().contains("standing by"), "{}", second.log());
    assert!(
        !second.log().contains("LogStream cleaned up") && !second.log().contains("reconciling"),
        "{}",
        second.log()
    );

    // The leader goes away and releases the lease; the standby takes over.
    assert!(first.terminate().success(), "{}", first.log());
    eventually("replica-b to lead", PATIENCE, || async {
        (holder().await? == "replica-b").then_some(())
    })
    .await;
    apply("two");
    eventually("the new leader to reconcile", PATIENCE, || async {
        services.get_opt("two-logstream").await.ok()?
    })
    .await;
    assert!(first.log().contains("lease released"), "{}", first.log());
}

/// cert-manager mode: the certificate comes from files and someone else
/// registers the webhook; the operator only serves.
#[tokio::test]
async fn webhook_served_from_mounted_certificate_files() {
    use logstream_operator::webhook::{Endpoint, register};
    let cp = ControlPlane::start();
    install_crd(&cp);
    cp.kubectl(&["create", "namespace", "logstream-system"])
        .stdout_if_success();
    cp.kubectl(&["create", "namespace", "shop"])
        .stdout_if_success();
    let certs = logstream_operator::tls::generate(
        &[],
        &["127.0.0.1".parse().unwrap()],
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), &certs.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &certs.key_pem).unwrap();
    let port = free_port();
    let op = Operator::start_with(
        &cp,
        "files",
        port,
        &[
            "--manage-webhook=false",
            "--tls-cert-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    let client = cp.client().await;
    let hooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    assert!(
        hooks.get_opt("logstream-injector").await.unwrap().is_none(),
        "the operator must not register the webhook"
    );
    // What the chart (with cert-manager's CA injection) would create.
    register(
        &client,
        &Endpoint::Url(format!("https://127.0.0.1:{port}/mutate")),
        &certs.ca_pem,
        None,
        5,
    )
    .await
    .unwrap();
    let p = create_web_pod_in_shop(&cp, &client).await;
    let sidecars = p.spec.unwrap().init_containers.unwrap_or_default();
    assert_eq!(
        sidecars.iter().filter(|c| c.name == "logstream").count(),
        1,
        "{}",
        op.log()
    );
    assert!(
        !op.log().contains("webhook certificate issued"),
        "no self-managed certificate in files mode"
    );
}

/// A certificate close to expiry in the Secret is replaced at start, and the
/// API server is given the new CA: the webhook keeps working.
#[tokio::test]
async fn a_webhook_certificate_near_expiry_is_renewed() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Secret;
    let cp = ControlPlane::start();
    install_crd(&cp);
    cp.kubectl(&["create", "namespace", "logstream-system"])
        .stdout_if_success();
    cp.kubectl(&["create", "namespace", "shop"])
        .stdout_if_success();
    // An old pair that expires tomorrow, as a previous run would have left it.
    let now = time::OffsetDateTime::now_utc();
    let old = logstream_operator::tls::generate(
        &[],
        &["127.0.0.1".parse().unwrap()],
        now - time::Duration::days(364),
    )
    .unwrap();
    let b64 = |s: &str| {
        let out = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut out.stdin.as_ref().unwrap(), s.as_bytes()).unwrap();
        String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
    };
    let not_after = old
        .not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let secret = format!(
        r#"{{"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/tls","metadata":{{"name":"logstream-webhook-tls","namespace":"logstream-system","annotations":{{"logstream.dev/not-after":"{not_after}"}}}},
           "data":{{"ca.crt":"{}","tls.crt":"{}","tls.key":"{}"}}}}"#,
        b64(&old.ca_pem),
        b64(&old.cert_pem),
        b64(&old.key_pem)
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &secret)
        .stdout_if_success();
    let op = Operator::start(&cp);
    let client = cp.client().await;
    let stored = Api::<Secret>::namespaced(client.clone(), "logstream-system")
        .get("logstream-webhook-tls")
        .await
        .unwrap();
    let ca = String::from_utf8(stored.data.as_ref().unwrap()["ca.crt"].0.clone()).unwrap();
    assert_ne!(ca, old.ca_pem, "the old CA must be replaced");
    let renewed = stored.metadata.annotations.unwrap()["logstream.dev/not-after"].clone();
    let renewed =
        time::OffsetDateTime::parse(&renewed, &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!(renewed - now > time::Duration::days(300), "{renewed}");
    let hook = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("logstream-injector")
        .await
        .unwrap();
    assert_eq!(
        hook.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .unwrap()
            .0,
        ca.as_bytes()
    );
    // And the API server trusts the new certificate.
    let p = create_web_pod_in_shop(&cp, &client).await;
    assert!(
        p.spec
            .unwrap()
            .init_containers
            .unwrap_or_default()
            .iter()
            .any(|c| c.name == "logstream"),
        "{}",
        op.log()
    );
}

/// `logstream-operator uninstall ARGS` as a user runs it; (success, stdout, stderr).
fn uninstall(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(operator_bin())
        .arg("uninstall")
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The operator removed before its LogStreams: their finalizer can no
/// longer run, so they (and a namespace being deleted with them) stay.
/// `uninstall` says so; `uninstall --without-operator` runs the cleanup
/// itself and releases them, leaving nothing of ours in the namespace.
#[tokio::test]
async fn logstreams_left_without_the_operator_are_released_by_uninstall() {
    let cp = ControlPlane::start();
    install_crd(&cp);
    for ns in ["logstream-system", "shop"] {
        cp.kubectl(&["create", "namespace", ns]).stdout_if_success();
    }
    let client = cp.client().await;
    let op = Operator::start(&cp);
    cp.kubectl(&[
        "apply",
        "-n",
        "shop",
        "-f",
        &repo("examples/logstream.yaml"),
    ])
    .stdout_if_success();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    eventually("the aggregator Deployment", PATIENCE, || async {
        deployments.get_opt("logstream-aggregator").await.ok()?
    })
    .await;
    let streams: Api<LogStream> = Api::namespaced(client.clone(), "shop");
    eventually("the finalizer", PATIENCE, || async {
        let ls = streams.get("demo").await.ok()?;
        ls.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"logstream.dev/cleanup".to_string())
            .then_some(())
    })
    .await;
    drop(op);

    cp.kubectl(&["delete", "-n", "shop", "logstream", "demo", "--wait=false"])
        .stdout_if_success();
    let stuck = streams.get("demo").await.unwrap();
    assert!(
        stuck.metadata.deletion_timestamp.is_some(),
        "held by its finalizer"
    );

    let (ok, _, err) = uninstall(&cp, &["--timeout", "2s"]);
    assert!(!ok);
    assert!(
        err.contains("shop/demo") && err.contains("--without-operator"),
        "{err}"
    );
    let (ok, out, err) = uninstall(&cp, &["--without-operator"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1 LogStream(s) removed");
    assert!(streams.get_opt("demo").await.unwrap().is_none());
    assert!(
        deployments
            .get_opt("logstream-aggregator")
            .await
            .unwrap()
            .is_none()
    );
    let ns = Api::<Namespace>::all(client.clone())
        .get("shop")
        .await
        .unwrap();
    assert!(
        !ns.metadata
            .labels
            .unwrap_or_default()
            .contains_key("logstream.dev/injection")
    );
    let bindings: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(client);
    assert!(
        bindings
            .get_opt("logstream:auth-delegator:shop")
            .await
            .unwrap()
            .is_none()
    );
}

/// `curl --cacert BUNDLE https://127.0.0.1:PORT/healthz` succeeds: the
/// replica on PORT serves a certificate the bundle trusts.
fn trusted(bundle: &str, port: u16, dir: &std::path::Path) -> bool {
    let file = dir.join(format!("bundle-{port}.pem"));
    std::fs::write(&file, bundle).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "10", "--cacert"])
        .arg(&file)
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "curl to {port}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    out.status.success()
}

/// Two replicas starting at once against no Secret serve one CA, and a
/// forced renewal keeps every replica trusted by the registered caBundle
/// throughout: the bundle carries the previous CA until each replica serves
/// the new certificate. Before, each renewal replaced the bundle, and a
/// replica still serving the previous certificate failed TLS for up to an
/// hour (admissions to it: pods without the sidecar).
#[tokio::test]
async fn replicas_share_one_ca_and_stay_trusted_through_a_renewal() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Secret;
    let cp = ControlPlane::start();
    install_crd(&cp);
    cp.kubectl(&["create", "namespace", "logstream-system"])
        .stdout_if_success();
    let (p1, p2) = (free_port(), free_port());
    let extra = ["--cert-check-interval", "1s"];
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Operator::start_with(&cp, "operator-a", p1, &extra));
        let b = s.spawn(|| Operator::start_with(&cp, "operator-b", p2, &extra));
        (a.join().unwrap(), b.join().unwrap())
    });
    let client = cp.client().await;
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let bundle = || async {
        let h = hooks.get("logstream-injector").await.unwrap();
        String::from_utf8(
            h.webhooks.unwrap()[0]
                .client_config
                .ca_bundle
                .clone()
                .unwrap()
                .0,
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let first = bundle().await;
    assert!(trusted(&first, p1, dir.path()), "replica a: {}", a.log());
    assert!(trusted(&first, p2, dir.path()), "replica b: {}", b.log());

    // Force a renewal: the stored pair now expires tomorrow.
    let tomorrow = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    cp.kubectl(&[
        "-n",
        "logstream-system",
        "annotate",
        "--overwrite",
        "secret",
        "logstream-webhook-tls",
        &format!("logstream.dev/not-after={tomorrow}"),
    ])
    .stdout_if_success();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "logstream-system");
    let mut checks = 0;
    loop {
        // Whatever is registered right now trusts both replicas.
        let now = bundle().await;
        assert!(
            trusted(&now, p1, dir.path()),
            "replica a untrusted during the renewal: {}",
            a.log()
        );
        assert!(
            trusted(&now, p2, dir.path()),
            "replica b untrusted during the renewal: {}",
            b.log()
        );
        checks += 1;
        let reloaded = |log: String| log.contains("webhook certificate reloaded");
        if reloaded(a.log()) && reloaded(b.log()) {
            break;
        }
        assert!(checks < 600, "the replicas did not both reload");
    }
    let stored = secrets.get("logstream-webhook-tls").await.unwrap();
    let ca = String::from_utf8(stored.data.unwrap()["ca.crt"].0.clone()).unwrap();
    assert_eq!(
        ca.matches("BEGIN CERTIFICATE").count(),
        2,
        "new CA + previous CA"
    );
    assert!(ca.ends_with(&first), "the previous CA is kept");
    assert_eq!(bundle().await, ca);
    // Both serve the new certificate: the new CA alone trusts them.
    let new_ca = &ca[..ca.find(&first).unwrap()];
    assert!(trusted(new_ca, p1, dir.path()) && trusted(new_ca, p2, dir.path()));
    assert_eq!(
        a.log().matches("webhook certificate issued").count()
            + b.log().matches("webhook certificate issued").count(),
        2,
        "one issue at start and one renewal, by whichever replica won"
    );
}
