//! What the operator keeps of a pod (pure).
//!
//! The controller caches every pod of the cluster from one watch. A pod as
//! k8s-openapi holds it is large even when most fields are empty (a
//! `Container` is 2 KB before any of its strings, a `Pod` 2.2 KB), and as
//! the API server sends it carries image, command, probes, resources, every
//! env entry, managed fields, conditions and each container's state: tens
//! of KB per pod, most of the operator's memory at 10,000 pods.
//! [`CachedPod`] is what the watch deserializes instead: only the fields
//! something in the reconcile reads — the census, the webhook's dry run of
//! a pending pod ([`crate::mutate::injection_problem`]), the auth binding,
//! mesh detection, restarts, probes and status — in compact types;
//! [`CachedPod::to_pod`] gives the reconcile a `Pod` again, for one
//! namespace at a time. [`fingerprint`] hashes the part whose change should
//! trigger a reconcile. The tests below hold the list honest: every reader
//! gives the same answer on a cached pod as on the full one.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, EnvVar, Pod, PodSecurityContext, PodSpec, PodStatus,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::keys::env;

/// A pod as the controller's cache holds it (see the module docs). Read
/// from the API server like a `Pod` (same path, fields it does not name
/// are skipped while parsing); [`CachedPod::compact`] then drops what only
/// a pod waiting for the sidecar needs.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CachedPod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    containers: Vec<CachedContainer>,
    #[serde(default)]
    init_containers: Option<Vec<CachedContainer>>,
    /// Names only: the dry run asks whether a name is taken.
    #[serde(default)]
    volumes: Option<Vec<Named>>,
    security_context: Option<Box<PodSecurityContext>>,
    service_account_name: Option<String>,
    termination_grace_period_seconds: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedContainer {
    name: String,
    /// Of the environment, only whether the streamer checks Kubernetes
    /// tokens (the rest is dropped by [`CachedPod::compact`]).
    env: Option<Vec<EnvVar>>,
    /// The dry run finds the log volume's mount and the app's group.
    volume_mounts: Option<Vec<VolumeMount>>,
    security_context: Option<Box<SecurityContext>>,
    /// A native sidecar is an init container that keeps running.
    restart_policy: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Named {
    name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    phase: Option<String>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    container_statuses: Option<Vec<Readiness>>,
    init_container_statuses: Option<Vec<Readiness>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct Readiness {
    name: String,
    #[serde(default)]
    ready: bool,
    started: Option<bool>,
}

impl kube::Resource for CachedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CachedPod {
    /// Drops what no reconcile reads of this pod: managed fields, the
    /// last-applied annotation, env entries other than the token check's,
    /// and — once the pod carries the sidecar, so it is never dry-run
    /// through the webhook's mutation again — mounts, volumes and security
    /// contexts.
    pub fn compact(&mut self) {
        let m = &mut self.metadata;
        m.managed_fields = None;
        if let Some(a) = m.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let injected = m
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(crate::keys::INJECTED_ANNOTATION));
        let dry_run = !injected;
        let s = &mut self.spec;
        for c in s
            .containers
            .iter_mut()
            .chain(s.init_containers.iter_mut().flatten())
        {
            if let Some(e) = c.env.as_mut() {
                e.retain(|v| v.name == env::KUBERNETES_AUTH);
                e.shrink_to_fit();
            }
            if c.env.as_ref().is_some_and(Vec::is_empty) {
                c.env = None;
            }
            if !dry_run {
                c.volume_mounts = None;
                c.security_context = None;
            }
        }
        if !dry_run {
            s.volumes = None;
            s.security_context = None;
        }
    }

    fn container_names(&self) -> impl Iterator<Item = &str> {
        self.spec
            .containers
            .iter()
            .chain(self.spec.init_containers.iter().flatten())
            .map(|c| c.name.as_str())
    }

    /// The pod as the reconcile's readers take it: the kept fields, the
    /// rest empty.
    pub fn to_pod(&self) -> Pod {
        let container = |c: &CachedContainer| Container {
            name: c.name.clone(),
            env: c.env.clone(),
            volume_mounts: c.volume_mounts.clone(),
            security_context: c.security_context.as_deref().cloned(),
            restart_policy: c.restart_policy.clone(),
            ..Container::default()
        };
        let readiness = |v: &Option<Vec<Readiness>>| {
            v.as_ref().map(|v| {
                v.iter()
                    .map(|c| ContainerStatus {
                        name: c.name.clone(),
                        ready: c.ready,
                        started: c.started,
                        ..ContainerStatus::default()
                    })
                    .collect()
            })
        };
        let s = &self.spec;
        Pod {
            metadata: self.metadata.clone(),
            spec: Some(PodSpec {
                containers: s.containers.iter().map(container).collect(),
                init_containers: s
                    .init_containers
                    .as_ref()
                    .map(|v| v.iter().map(container).collect()),
                volumes: s.volumes.as_ref().map(|v| {
                    v.iter()
                        .map(|v| Volume {
                            name: v.name.clone(),
                            ..Volume::default()
                        })
                        .collect()
                }),
                security_context: s.security_context.as_deref().cloned(),
                service_account_name: s.service_account_name.clone(),
                termination_grace_period_seconds: s.termination_grace_period_seconds,
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: self.status.phase.clone(),
                pod_ip: self.status.pod_ip.clone(),
                container_statuses: readiness(&self.status.container_statuses),
                init_container_statuses: readiness(&self.status.init_container_statuses),
                ..PodStatus::default()
            }),
        }
    }
}

/// What a reconcile reads of a pod, hashed: a pod event that changes none
/// of it (a probe's timestamps, a condition, a restart count) reconciles
/// nothing.
pub fn fingerprint(p: &CachedPod) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.metadata.labels.hash(&mut h);
    p.metadata.annotations.hash(&mut h);
    p.metadata.deletion_timestamp.is_some().hash(&mut h);
    p.metadata
        .owner_references
        .as_ref()
        .map(|o| o.len())
        .hash(&mut h);
    for name in p.container_names() {
        name.hash(&mut h);
    }
    p.spec.service_account_name.hash(&mut h);
    let st = &p.status;
    st.phase.hash(&mut h);
    st.pod_ip.hash(&mut h);
    for c in st
        .init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
    {
        (c.ready, c.started).hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LogStream, LogStreamSpec};
    use crate::desired::BuildConfig;
    use crate::mutate::{self, InjectConfig};
    use crate::restart;

    fn stream(name: &str, json: serde_json::Value) -> LogStream {
        let spec: LogStreamSpec = serde_json::from_value(json).unwrap();
        let mut ls = LogStream::new(name, spec);
        ls.metadata.namespace = Some("shop".into());
        ls
    }

    fn streams() -> Vec<LogStream> {
        vec![
            stream(
                "web",
                serde_json::json!({"selector": {"matchLabels": {"app": "web"}},
                    "access": {"mode": "kubernetes"}, "restartPods": true}),
            ),
            stream(
                "api",
                serde_json::json!({"selector": {"matchLabels": {"app": "api"}},
                    "container": "main", "mountPath": "/var/log/api"}),
            ),
        ]
    }

    /// A pod as the API server returns it: everything the trim drops is set.
    fn full(name: &str, app: &str, extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {
                "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "labels": {"app": app, "pod-template-hash": "abc"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": format!("{app}-abc"), "uid": "rs", "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]
            },
            "spec": {
                "serviceAccountName": "shop-sa",
                "terminationGracePeriodSeconds": 45,
                "securityContext": {"runAsGroup": 3000, "fsGroup": 2000},
                "containers": [{
                    "name": "main", "image": "registry.example/app:1.2.3",
                    "command": ["/app"], "args": ["--serve"],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "ports": [{"containerPort": 8080}],
                    "resources": {"limits": {"cpu": "1"}},
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                    "securityContext": {"runAsGroup": 4000},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"},
                        {"name": "cfg", "mountPath": "/etc/app"}]
                }],
                "volumes": [
                    {"name": "data", "emptyDir": {}},
                    {"name": "cfg", "configMap": {"name": "app-config"}}
                ],
                "nodeName": "node-1", "tolerations": [{"operator": "Exists"}]
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.7", "hostIP": "172.18.0.2",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "main", "ready": true, "started": true,
                    "restartCount": 3, "image": "registry.example/app:1.2.3",
                    "imageID": "sha256:00", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
            }
        });
        json_patch_merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn json_patch_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    json_patch_merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    /// Pods in every state a reconcile tells apart: pending (no sidecar,
    /// with and without a problem), injected (sidecar ready or not, in
    /// kubernetes mode), meshed, finished, being deleted, unselected.
    fn pods() -> Vec<Pod> {
        let cfg = InjectConfig {
            image: "logstream:test".into(),
            native_sidecars: true,
            ..InjectConfig::default()
        };
        let all = streams();
        let mut v = vec![
            full("web-pending", "web", serde_json::json!({})),
            full("api-pending", "api", serde_json::json!({})),
            // The api stream wants its logs where the app mounts a subPath.
            full(
                "api-subpath",
                "api",
                serde_json::json!({"spec": {"containers": [{"name": "main",
                    "volumeMounts": [{"name": "data", "mountPath": "/var/log/api", "subPath": "x"}]}]}}),
            ),
            full(
                "api-nocontainer",
                "api",
                serde_json::json!({"spec": {"containers": [{"name": "other"}]}}),
            ),
            full(
                "web-meshed",
                "web",
                serde_json::json!({"metadata": {"annotations": {"sidecar.istio.io/status": "{}"}}}),
            ),
            full(
                "web-done",
                "web",
                serde_json::json!({"status": {"phase": "Succeeded"}}),
            ),
            full(
                "web-going",
                "web",
                serde_json::json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
            full("other", "db", serde_json::json!({})),
        ];
        for name in ["web-injected", "api-injected"] {
            let app = &name[..3];
            let p = full(name, app, serde_json::json!({}));
            let mut injected = mutate::mutate(&p, &all, &cfg).unwrap().unwrap();
            let st = injected.status.as_mut().unwrap();
            let sidecar = serde_json::from_value(serde_json::json!({
                "name": crate::keys::SIDECAR_NAME, "ready": true, "started": true,
                "restartCount": 0, "image": "logstream:test", "imageID": "sha256:11"
            }))
            .unwrap();
            st.init_container_statuses = Some(vec![sidecar]);
            v.push(injected);
        }
        v
    }

    /// The pod as the watch caches it: parsed from the API server's JSON.
    fn cached(p: &Pod) -> CachedPod {
        let mut c: CachedPod = serde_json::from_value(serde_json::to_value(p).unwrap()).unwrap();
        c.compact();
        c
    }

    /// Everything the reconcile and the webhook's dry run derive from pods.
    fn readings(pods: &[Pod]) -> String {
        let all = streams();
        let mut out = Vec::new();
        for ls in &all {
            let census = restart::census(ls, pods);
            let names = |v: &[&Pod]| {
                v.iter()
                    .map(|p| p.metadata.name.clone())
                    .collect::<Vec<_>>()
            };
            out.push(format!(
                "{}: selected {:?} injected {:?} pending {:?} sets {:?} probe {:?}",
                ls.metadata.name.as_deref().unwrap_or_default(),
                names(&census.selected),
                names(&census.injected),
                names(&census.pending),
                restart::replica_sets(&census.pending),
                names(&crate::probe::probeable(&census.injected)),
            ));
        }
        for p in pods {
            let spec = p.spec.as_ref().unwrap();
            out.push(format!(
                "{:?}: problem {:?} mesh {:?} finished {} injected {} drain {} responsible {:?}",
                p.metadata.name,
                mutate::injection_problem(p, &all),
                crate::mesh::of_pod(p),
                restart::finished(p),
                mutate::is_injected(p),
                mutate::drain_budget(spec),
                restart::responsible(p, &all).map(|s| s.metadata.name.clone()),
            ));
        }
        let binding = crate::desired::auth_binding("shop", &all, pods, &BuildConfig::default());
        out.push(format!("{:?}", binding.map(|b| b.subjects)));
        out.join("\n")
    }

    #[test]
    fn a_cached_pod_reads_as_the_full_one() {
        let full = pods();
        let cached: Vec<Pod> = full.iter().map(|p| cached(p).to_pod()).collect();
        assert_eq!(readings(&cached), readings(&full));
    }

    #[test]
    fn a_cached_pod_is_a_fraction_of_a_pod_in_memory() {
        // Inline bytes of an injected pod's cached form against the
        // k8s-openapi form of the same fields (what the cache held before):
        // the pod, its containers and their statuses are the bulk.
        let p = pods().pop().unwrap();
        let spec = p.spec.as_ref().unwrap();
        let n = spec.containers.len() + spec.init_containers.as_ref().map_or(0, Vec::len);
        let as_pod = size_of::<Pod>() + n * (size_of::<Container>() + size_of::<ContainerStatus>());
        let as_cached =
            size_of::<CachedPod>() + n * (size_of::<CachedContainer>() + size_of::<Readiness>());
        assert!(as_cached * 5 < as_pod, "{as_cached} vs {as_pod}");
        // And an injected pod keeps no mounts, volumes or foreign env.
        let c = cached(&p);
        let containers = || {
            c.spec
                .containers
                .iter()
                .chain(c.spec.init_containers.iter().flatten())
        };
        assert!(c.spec.volumes.is_none());
        assert!(containers().all(|c| c.volume_mounts.is_none() && c.security_context.is_none()));
        assert!(
            containers()
                .flat_map(|c| c.env.iter().flatten())
                .all(|e| e.name == env::KUBERNETES_AUTH)
        );
        assert!(c.metadata.managed_fields.is_none());
    }

    #[test]
    fn status_noise_does_not_change_the_fingerprint() {
        let p = full("web-1", "web", serde_json::json!({}));
        let mut noisy = p.clone();
        let st = noisy.status.as_mut().unwrap();
        st.conditions = None;
        st.container_statuses.as_mut().unwrap()[0].restart_count = 9;
        assert_eq!(fingerprint(&cached(&noisy)), fingerprint(&cached(&p)));
        let mut not_ready = p.clone();
        let statuses = not_ready
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut();
        statuses.unwrap()[0].ready = false;
        assert_ne!(fingerprint(&cached(&not_ready)), fingerprint(&cached(&p)));
    }
}
