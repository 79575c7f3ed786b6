//! The control plane harness itself: each test starts its own etcd +
//! kube-apiserver + kube-controller-manager (they run in parallel).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use logstream_tests::{ControlPlane, eventually};

const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn apiserver_serves_kube_client_and_kubectl() {
    let cp = ControlPlane::start();
    let client = cp.client().await;

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34"),
        "{version:?}"
    );
    assert!(version.git_version.starts_with("v1.34."), "{version:?}");

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("logstream-it".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "logstream-it");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("level".to_string(), "warn".to_string())])),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();

    let ns_names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for expected in ["default", "kube-system", "logstream-it"] {
        assert!(
            ns_names.iter().any(|n| n == expected),
            "{expected} not in {ns_names:?}"
        );
    }

    // The controller manager also publishes kube-root-ca.crt into the namespace.
    let listed = config_maps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let settings = listed
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("settings"))
        .unwrap_or_else(|| panic!("settings not listed: {listed:?}"));
    assert_eq!(settings.data.as_ref().unwrap()["level"], "warn");

    let out = cp.kubectl(&["get", "ns", "-o", "name"]);
    let stdout = out.stdout_if_success();
    assert!(
        stdout.lines().any(|l| l == "namespace/logstream-it"),
        "{stdout}"
    );

    let out = cp.kubectl(&[
        "get",
        "configmap",
        "settings",
        "-n",
        "logstream-it",
        "-o",
        "jsonpath={.data.level}",
    ]);
    assert_eq!(out.stdout_if_success(), "warn");

    let out = cp.kubectl(&["get", "configmap", "missing", "-n", "logstream-it"]);
    assert!(!out.success && out.stderr.contains("NotFound"), "{out:?}");
}

#[tokio::test]
async fn controller_manager_reconciles_what_kubectl_applies() {
    let cp = ControlPlane::start();
    let manifest = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: apps
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: apps
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.invalid/web:1
"#;
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], manifest);
    let stdout = out.stdout_if_success();
    assert!(stdout.contains("deployment.apps/web created"), "{stdout}");

    let client = cp.client().await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), "apps");
    let rs = eventually("the Deployment's ReplicaSet", PATIENCE, || async {
        replica_sets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
    })
    .await;
    let owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );

    // No nodes: the ReplicaSet's Pods exist but stay Pending.
    let pods: Api<Pod> = Api::namespaced(client, "apps");
    let pending = eventually("2 Pods", PATIENCE, || async {
        let items = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items;
        (items.len() == 2).then_some(items)
    })
    .await;
    for pod in pending {
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    }
}
