//! Desired state, as pure functions: LogStream(s) → Kubernetes objects. No
//! client here; the reconciler applies what these return.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, Container, ContainerPort, PodSecurityContext, PodSpec, PodTemplateSpec,
    Service, ServiceAccount, ServicePort, ServiceSpec, SessionAffinityConfig,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::AccessMode;
use crate::crd::LogStream;
use crate::keys::{
    AGGREGATOR, AGGREGATOR_DRAIN_SECONDS, AUTH_DELEGATOR, MANAGED_BY, NAMESPACE_OWNER_LABEL,
    PULL_SECRET, PULL_TOKEN_FILE, STREAM_LABEL, STREAM_PORT, env,
};
use crate::mutate::{field_env, http_probe, restricted_security_context, secret_volume, value_env};
use crate::names::{label_value, object_name};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Volume, VolumeMount};

pub mod routing;

/// Settings of the operator that shape the objects.
#[derive(Clone, Debug, Default)]
pub struct BuildConfig {
    pub image: String,
    /// Owner of the cluster-scoped objects no LogStream can own (the chart's
    /// ClusterRole, [`crate::owner`]); `None` outside the chart.
    pub owner: Option<OwnerReference>,
    /// `imagePullPolicy` of the aggregator (`None`: the cluster's default).
    pub pull_policy: Option<String>,
    pub run_as: crate::dataplane::RunAs,
    pub aggregator_pod: crate::dataplane::AggregatorPod,
}

fn labels(component: &str, stream: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "logstream".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ]);
    if let Some(s) = stream {
        l.insert("logstream.dev/owner".into(), label_value(s));
    }
    l
}

pub fn stream_service_name(ls: &LogStream) -> String {
    object_name(&ls.name_any(), "logstream")
}

fn owner(ls: &LogStream) -> Option<OwnerReference> {
    ls.controller_owner_ref(&())
}

/// Non-controller owner reference: several LogStreams share the namespace's
/// aggregator, which the garbage collector removes with the last of them.
fn shared_owner(ls: &LogStream) -> Option<OwnerReference> {
    let mut o = ls.controller_owner_ref(&())?;
    o.controller = None;
    o.block_owner_deletion = None;
    Some(o)
}

/// The Service in front of the selected pods' sidecars (ClientIP affinity, so
/// a client keeps talking to the same pod's history).
pub fn stream_service(ls: &LogStream) -> Service {
    let name = ls.name_any();
    Service {
        metadata: ObjectMeta {
            name: Some(stream_service_name(ls)),
            namespace: ls.namespace(),
            labels: Some(labels("sidecars", Some(&name))),
            owner_references: owner(ls).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                STREAM_LABEL.to_string(),
                label_value(&name),
            )])),
            ports: Some(vec![stream_port()]),
            session_affinity: Some("ClientIP".into()),
            session_affinity_config: Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(3600),
                }),
            }),
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn stream_port() -> ServicePort {
    ServicePort {
        name: Some("logstream".into()),
        port: STREAM_PORT,
        target_port: Some(IntOrString::String("logstream".into())),
        app_protocol: Some("http".into()),
        ..ServicePort::default()
    }
}

/// Everything the namespace's aggregator needs. `streams` are the live
/// LogStreams of one namespace (at least one).
pub struct AggregatorObjects {
    pub pull_secret: Secret,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    pub service: Service,
}

/// The labels that select a namespace's aggregator pods.
pub fn aggregator_selector() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "logstream".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "aggregator".to_string(),
        ),
    ])
}

/// `pull_token` is the namespace's existing token, or a fresh random one.
/// `ns_mesh`: the service mesh the namespace opts into ([`crate::mesh`]),
/// which decides with the LogStreams whether loopback needs a token.
pub fn aggregator(
    namespace: &str,
    streams: &[LogStream],
    cfg: &BuildConfig,
    pull_token: &str,
    ns_mesh: Option<&str>,
) -> AggregatorObjects {
    let owners: Vec<OwnerReference> = streams.iter().filter_map(shared_owner).collect();
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: Some(labels("aggregator", None)),
        owner_references: Some(owners.clone()),
        ..ObjectMeta::default()
    };
    let replicas = streams
        .iter()
        .map(|s| s.spec.aggregator.replicas)
        .max()
        .unwrap_or(2);
    let (container, volumes) = aggregator_container(streams, cfg, ns_mesh);
    AggregatorObjects {
        pull_secret: Secret {
            metadata: meta(PULL_SECRET),
            string_data: None,
            data: Some(BTreeMap::from([(
                "token".to_string(),
                ByteString(pull_token.as_bytes().to_vec()),
            )])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        },
        service_account: ServiceAccount {
            metadata: meta(AGGREGATOR),
            automount_service_account_token: Some(true),
            ..ServiceAccount::default()
        },
        role: aggregator_role(meta(AGGREGATOR)),
        role_binding: aggregator_role_binding(meta(AGGREGATOR), namespace),
        deployment: aggregator_deployment(
            meta(AGGREGATOR),
            replicas,
            container,
            volumes,
            &cfg.aggregator_pod,
        ),
        service: aggregator_service(meta(AGGREGATOR)),
    }
}

/// The aggregator's container and the volumes it mounts: the pull token it
/// presents to sidecars, and the tokens of LogStreams in token mode (their
/// users may present them to the aggregator too).
fn aggregator_container(
    streams: &[LogStream],
    cfg: &BuildConfig,
    ns_mesh: Option<&str>,
) -> (Container, Vec<Volume>) {
    let mut volumes = vec![secret_volume("logstream-pull", PULL_SECRET)];
    let mut mounts = vec![VolumeMount {
        name: "logstream-pull".into(),
        mount_path: PULL_TOKEN_FILE.trim_end_matches("/token").into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut user_tokens = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        if let (AccessMode::Token, Some(t)) = (s.spec.access.mode, &s.spec.access.token_secret) {
            let name = format!("user-token-{i}");
            volumes.push(secret_volume(&name, &t.name));
            let dir = format!("/var/run/logstream/{name}");
            user_tokens.push(format!("{dir}/{}", t.key));
            mounts.push(VolumeMount {
                name,
                mount_path: dir,
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }
    let mut extra_env = vec![value_env(env::UPSTREAM_TOKEN_FILE, PULL_TOKEN_FILE)];
    if let Some(h) = history_of(streams) {
        extra_env.extend([
            value_env(env::HISTORY_DIR, HISTORY_DIR),
            value_env(env::HISTORY_MAX_BYTES, &h.max_bytes.to_string()),
            value_env(env::HISTORY_MAX_AGE, &h.max_age),
        ]);
        volumes.push(h.volume);
        mounts.push(VolumeMount {
            name: "history".into(),
            mount_path: HISTORY_DIR.into(),
            ..VolumeMount::default()
        });
    }
    // The pull token is accepted too, as by every sidecar: the operator
    // reads the aggregator's `/readyz?format=json` (its history) with it.
    user_tokens.insert(0, PULL_TOKEN_FILE.to_string());
    extra_env.push(value_env(env::TOKEN_FILE, &user_tokens.join(",")));
    if streams.iter().any(uses_kubernetes_access) {
        extra_env.push(value_env(env::KUBERNETES_AUTH, "true"));
    }
    if !crate::mesh::aggregator_trusts_loopback(streams, ns_mesh) {
        extra_env.push(value_env(env::NO_LOOPBACK_EXEMPTION, "true"));
    }
    let container = Container {
        name: "aggregator".into(),
        image: Some(cfg.image.clone()),
        args: Some(vec!["aggregator".into()]),
        env: Some(
            vec![
                field_env(env::POD_NAMESPACE, "metadata.namespace"),
                value_env(env::LISTEN, &format!("0.0.0.0:{STREAM_PORT}")),
                value_env(env::DISCOVER_LABEL, STREAM_LABEL),
                value_env(env::GRACE, &format!("{AGGREGATOR_DRAIN_SECONDS}s")),
                value_env(env::LOG_FORMAT, "json"),
            ]
            .into_iter()
            .chain(extra_env)
            .collect(),
        ),
        volume_mounts: Some(mounts),
        ports: Some(vec![ContainerPort {
            name: Some("logstream".into()),
            container_port: STREAM_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz")),
        liveness_probe: Some(http_probe("/healthz")),
        image_pull_policy: cfg.pull_policy.clone(),
        resources: Some(
            cfg.aggregator_pod
                .resources
                .clone()
                .unwrap_or_else(crate::dataplane::default_aggregator_resources),
        ),
        security_context: Some(restricted_security_context(cfg.run_as)),
        ..Container::default()
    };
    (container, volumes)
}

/// Where the aggregator keeps its history on disk.
const HISTORY_DIR: &str = "/var/lib/logstream/history";

/// The aggregator's history on disk, merged over a namespace's LogStreams.
struct History {
    volume: Volume,
    /// What the history may take: the volume less room for one segment and
    /// the index (an emptyDir over its sizeLimit gets its pod evicted).
    max_bytes: u64,
    max_age: String,
}

/// The largest size and the longest age any LogStream asks for, on the
/// first StorageClass named; `None` when none asks for a history.
fn history_of(streams: &[LogStream]) -> Option<History> {
    use k8s_openapi::api::core::v1::{
        EmptyDirVolumeSource, EphemeralVolumeSource, PersistentVolumeClaimSpec,
        PersistentVolumeClaimTemplate, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let specs: Vec<&crate::crd::HistorySpec> = streams
        .iter()
        .filter_map(|s| s.spec.aggregator.history.as_ref())
        .collect();
    let size = specs
        .iter()
        .filter_map(|h| quantity_bytes(&h.size.0))
        .max()?;
    let max_age = specs
        .iter()
        .max_by_key(|h| {
            humantime::parse_duration(&h.max_age)
                .map(|d| {
                    if d.is_zero() {
                        std::time::Duration::MAX
                    } else {
                        d
                    }
                })
                .unwrap_or_default()
        })
        .map_or_else(|| "24h".into(), |h| h.max_age.clone());
    let class = specs.iter().find_map(|h| h.storage_class_name.clone());
    let quantity = Quantity(size.to_string());
    let volume = match class {
        None => Volume {
            name: "history".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(quantity),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
        Some(class) => Volume {
            name: "history".into(),
            ephemeral: Some(EphemeralVolumeSource {
                volume_claim_template: Some(PersistentVolumeClaimTemplate {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels("aggregator", None)),
                        ..ObjectMeta::default()
                    }),
                    spec: PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        storage_class_name: Some(class),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(BTreeMap::from([("storage".to_string(), quantity)])),
                            ..VolumeResourceRequirements::default()
                        }),
                        ..PersistentVolumeClaimSpec::default()
                    },
                }),
            }),
            ..Volume::default()
        },
    };
    // Room for the segment being written (at most 64 MiB) and 10%.
    let max_bytes = size.saturating_sub((size / 10).max(64 << 20).min(size / 2));
    Some(History {
        volume,
        max_bytes,
        max_age,
    })
}

/// Bytes of a Kubernetes quantity (`2Gi`, `500M`, `1e9`, `1073741824`);
/// `None` for anything else or a fraction of a byte.
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let at = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(at);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = n * mult;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// What the aggregator may read: pods (discovery) and LogStreams.
fn aggregator_role(metadata: ObjectMeta) -> Role {
    Role {
        metadata,
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec!["logstream.dev".into()]),
                resources: Some(vec!["logstreams".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            },
        ]),
    }
}

fn aggregator_role_binding(metadata: ObjectMeta, namespace: &str) -> RoleBinding {
    RoleBinding {
        metadata,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: AGGREGATOR.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: AGGREGATOR.into(),
            namespace: Some(namespace.into()),
            ..Subject::default()
        }]),
    }
}

/// The aggregator's Deployment: rolled one new pod at a time with none
/// unavailable, given time to drain, placed as the chart says.
fn aggregator_deployment(
    metadata: ObjectMeta,
    replicas: i32,
    container: Container,
    volumes: Vec<Volume>,
    placement: &crate::dataplane::AggregatorPod,
) -> Deployment {
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(aggregator_selector()),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels("aggregator", None)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(AGGREGATOR.into()),
                    termination_grace_period_seconds: Some(AGGREGATOR_DRAIN_SECONDS + 10),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: (!placement.node_selector.is_empty())
                        .then(|| placement.node_selector.clone()),
                    tolerations: (!placement.tolerations.is_empty())
                        .then(|| placement.tolerations.clone()),
                    image_pull_secrets: (!placement.image_pull_secrets.is_empty())
                        .then(|| placement.image_pull_secrets.clone()),
                    priority_class_name: placement.priority_class_name.clone(),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The aggregator's Service: ClientIP affinity, and the cookie affinity of
/// the ingress controllers that read it from the Service.
fn aggregator_service(metadata: ObjectMeta) -> Service {
    Service {
        metadata: ObjectMeta {
            annotations: Some(routing::service_annotations()),
            ..metadata
        },
        spec: Some(ServiceSpec {
            selector: Some(aggregator_selector()),
            ports: Some(vec![stream_port()]),
            session_affinity: Some("ClientIP".into()),
            session_affinity_config: Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(3600),
                }),
            }),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The LogStream's servers check Kubernetes tokens themselves.
pub fn uses_kubernetes_access(ls: &LogStream) -> bool {
    ls.spec.access.mode == AccessMode::Kubernetes
}

/// One binding per namespace, so it lives and dies with the namespace's
/// LogStreams (cluster-scoped: no LogStream can own it, the finalizer removes
/// it; the chart's ClusterRole owns it so `helm uninstall` removes it too).
pub fn auth_binding_name(namespace: &str) -> String {
    format!("logstream:auth-delegator:{namespace}")
}

/// The ServiceAccount a pod runs as.
fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Binds `system:auth-delegator` to the ServiceAccounts whose servers check
/// Kubernetes tokens in `namespace`: the aggregator's, and those of the pods
/// a kubernetes-mode LogStream selects or has injected (pods waiting for a
/// restart included, so their new sidecar can check tokens at once), and of
/// any pod still running a streamer that checks them: after a switch to
/// token mode, the old replicas serve until the rollout replaces them.
/// `None` when no LogStream of the namespace uses kubernetes mode and no
/// such pod runs: the binding goes. Owned by `cfg.owner` when set.
pub fn auth_binding(
    namespace: &str,
    streams: &[LogStream],
    pods: &[Pod],
    cfg: &BuildConfig,
) -> Option<ClusterRoleBinding> {
    let kube_streams: Vec<&LogStream> = streams
        .iter()
        .filter(|s| uses_kubernetes_access(s))
        .collect();
    let mut accounts = std::collections::BTreeSet::new();
    if !kube_streams.is_empty() {
        accounts.insert(AGGREGATOR.to_string());
    }
    for pod in pods {
        let labels = pod.labels();
        let opted_out = crate::mutate::opted_out(pod);
        let streamed = kube_streams.iter().any(|s| {
            labels.get(STREAM_LABEL) == Some(&label_value(&s.name_any()))
                || crate::mutate::selects(s, labels)
        });
        if (pod.metadata.deletion_timestamp.is_none() && !opted_out && streamed)
            || checks_kubernetes_tokens(pod)
        {
            accounts.insert(service_account_of(pod));
        }
    }
    if accounts.is_empty() {
        return None;
    }
    let mut meta_labels = labels("auth", None);
    meta_labels.insert(NAMESPACE_OWNER_LABEL.into(), namespace.into());
    Some(ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(auth_binding_name(namespace)),
            labels: Some(meta_labels),
            owner_references: cfg.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: AUTH_DELEGATOR.into(),
        },
        subjects: Some(
            accounts
                .into_iter()
                .map(|name| Subject {
                    kind: "ServiceAccount".into(),
                    name,
                    namespace: Some(namespace.into()),
                    ..Subject::default()
                })
                .collect(),
        ),
    })
}

/// Whether a pod that has not finished runs a streamer (sidecar or
/// aggregator) that checks Kubernetes tokens: it needs the binding for as
/// long as it serves, terminating included.
fn checks_kubernetes_tokens(pod: &Pod) -> bool {
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    !finished
        && spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.env.iter().flatten())
            .any(|e| e.name == env::KUBERNETES_AUTH && e.value.as_deref() == Some("true"))
}

/// URLs reported in status.
pub fn urls(ls: &LogStream) -> Vec<String> {
    let ns = ls.namespace().unwrap_or_default();
    let mut u = Vec::new();
    if let Some(i) = &ls.spec.ingress {
        let scheme = if i.tls_secret_name.is_some() {
            "https"
        } else {
            "http"
        };
        u.push(format!("{scheme}://{}/", i.host));
    }
    u.push(format!("http://{AGGREGATOR}.{ns}.svc:{STREAM_PORT}/"));
    if ls.spec.service.enabled {
        u.push(format!(
            "http://{}.{ns}.svc:{STREAM_PORT}/",
            stream_service_name(ls)
        ));
    }
    u
}

#[cfg(test)]
pub(crate) mod tests;
