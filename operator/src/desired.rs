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
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
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

/// Ingress annotations: cookie affinity for ingress-nginx and Traefik,
/// timeouts and buffering suited to long-lived WebSocket/SSE streams.
pub fn ingress_annotations(extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut a: BTreeMap<String, String> = [
        ("nginx.ingress.kubernetes.io/affinity", "cookie"),
        ("nginx.ingress.kubernetes.io/affinity-mode", "persistent"),
        (
            "nginx.ingress.kubernetes.io/session-cookie-name",
            "logstream-affinity",
        ),
        (
            "nginx.ingress.kubernetes.io/session-cookie-max-age",
            "86400",
        ),
        ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
        ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
        ("nginx.ingress.kubernetes.io/proxy-buffering", "off"),
        (
            "traefik.ingress.kubernetes.io/router.entrypoints",
            "web,websecure",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    a.extend(extra.clone());
    a
}

/// The LogStream's Ingress, to the namespace's aggregator (merged view, resume
/// on any replica; the cookie keeps a browser on one replica).
pub fn stream_ingress(ls: &LogStream) -> Option<Ingress> {
    let spec = ls.spec.ingress.as_ref()?;
    let name = ls.name_any();
    Some(Ingress {
        metadata: ObjectMeta {
            name: Some(object_name(&name, "logstream")),
            namespace: ls.namespace(),
            labels: Some(labels("ingress", Some(&name))),
            annotations: Some(ingress_annotations(&spec.annotations)),
            owner_references: owner(ls).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|s| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(s.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: AGGREGATOR.into(),
                                port: Some(ServiceBackendPort {
                                    name: Some("logstream".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        status: None,
    })
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
    if !user_tokens.is_empty() {
        extra_env.push(value_env(env::TOKEN_FILE, &user_tokens.join(",")));
    }
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

/// The aggregator's Service: ClientIP affinity, and Traefik's sticky
/// cookie for Ingresses.
fn aggregator_service(metadata: ObjectMeta) -> Service {
    Service {
        metadata: ObjectMeta {
            // Traefik reads its sticky cookie from the Service an
            // Ingress routes to, and every LogStream Ingress routes here.
            annotations: Some(BTreeMap::from([
                (
                    "traefik.ingress.kubernetes.io/service.sticky.cookie".to_string(),
                    "true".to_string(),
                ),
                (
                    "traefik.ingress.kubernetes.io/service.sticky.cookie.name".to_string(),
                    "logstream-affinity".to_string(),
                ),
            ])),
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
mod tests {
    use super::*;
    use crate::crd::{IngressSpec as LsIngress, LogStreamSpec};

    pub fn stream(name: &str, json: serde_json::Value) -> LogStream {
        let spec: LogStreamSpec = serde_json::from_value(json).unwrap();
        let mut ls = LogStream::new(name, spec);
        ls.metadata.namespace = Some("shop".into());
        ls.metadata.uid = Some(format!("uid-{name}"));
        ls
    }

    #[test]
    fn service_selects_injected_pods_with_client_ip_affinity() {
        let ls = stream(
            "web",
            serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
        );
        let svc = stream_service(&ls);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        assert_eq!(spec.selector.unwrap()[STREAM_LABEL], "web");
        assert_eq!(spec.ports.unwrap()[0].port, STREAM_PORT);
        let owner = &svc.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "LogStream");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn ingress_has_affinity_timeouts_tls_and_user_overrides() {
        let mut ls = stream(
            "web",
            serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
        );
        assert!(stream_ingress(&ls).is_none());
        ls.spec.ingress = Some(LsIngress {
            host: "logs.example.com".into(),
            class_name: Some("nginx".into()),
            tls_secret_name: Some("logs-tls".into()),
            annotations: BTreeMap::from([(
                "nginx.ingress.kubernetes.io/proxy-read-timeout".into(),
                "600".into(),
            )]),
        });
        let ing = stream_ingress(&ls).unwrap();
        let a = ing.metadata.annotations.unwrap();
        assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "600");
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
        let spec = ing.spec.unwrap();
        assert_eq!(
            spec.tls.unwrap()[0].secret_name.as_deref(),
            Some("logs-tls")
        );
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(urls(&ls)[0], "https://logs.example.com/");
    }

    #[test]
    fn aggregator_is_shared_and_sized_by_the_largest_request() {
        let a = stream(
            "a",
            serde_json::json!({"selector": {"matchLabels": {"app": "a"}}, "aggregator": {"replicas": 3}}),
        );
        let b = stream(
            "b",
            serde_json::json!({"selector": {"matchLabels": {"app": "b"}}}),
        );
        let objs = aggregator(
            "shop",
            &[a, b],
            &BuildConfig {
                image: "img".into(),
                owner: None,
                ..BuildConfig::default()
            },
            "tok",
            None,
        );
        assert_eq!(objs.pull_secret.data.as_ref().unwrap()["token"].0, b"tok");
        let pod = objs
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let env = pod.containers[0].env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "LOGSTREAM_UPSTREAM_TOKEN_FILE")
        );
        let d = objs.deployment;
        assert_eq!(d.metadata.owner_references.as_ref().unwrap().len(), 2);
        assert!(
            d.metadata
                .owner_references
                .unwrap()
                .iter()
                .all(|o| o.controller.is_none())
        );
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(AGGREGATOR_DRAIN_SECONDS + 10)
        );
        let c = &pod.containers[0];
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            objs.service.spec.unwrap().session_affinity.as_deref(),
            Some("ClientIP")
        );
        let rules = objs.role.rules.unwrap();
        assert!(
            rules.iter().all(|r| r
                .verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))),
            "read-only role"
        );
    }

    fn pod(name: &str, sa: Option<&str>, labels: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]}
        }))
        .unwrap()
    }

    #[test]
    fn auth_binding_covers_the_aggregator_and_the_streamed_pods_service_accounts() {
        let web = stream(
            "web",
            serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
        );
        let tok = stream(
            "tok",
            serde_json::json!({"selector": {"matchLabels": {"app": "tok"}},
                "access": {"mode": "token", "tokenSecret": {"name": "s", "key": "k"}}}),
        );
        let pods = [
            pod("web-1", Some("web"), serde_json::json!({"app": "web"})),
            pod("web-2", Some("web"), serde_json::json!({"app": "web"})),
            // Selected, default ServiceAccount.
            pod("web-3", None, serde_json::json!({"app": "web"})),
            // Injected by web, no longer selected: its sidecar still checks tokens.
            pod(
                "old",
                Some("legacy"),
                serde_json::json!({STREAM_LABEL: "web"}),
            ),
            // Opted out: no sidecar.
            pod(
                "manual",
                Some("manual"),
                serde_json::json!({"app": "web", "logstream.dev/inject": "false"}),
            ),
            // Another LogStream in token mode, and an unrelated pod.
            pod("tok-1", Some("tok"), serde_json::json!({"app": "tok"})),
            pod("db-1", Some("db"), serde_json::json!({"app": "db"})),
        ];
        let cfg = BuildConfig {
            image: "i".into(),
            owner: None,
            ..BuildConfig::default()
        };
        let b = auth_binding("shop", &[web.clone(), tok.clone()], &pods, &cfg).unwrap();
        assert_eq!(
            b.metadata.name.as_deref(),
            Some("logstream:auth-delegator:shop")
        );
        assert_eq!(
            b.metadata.labels.as_ref().unwrap()[NAMESPACE_OWNER_LABEL],
            "shop"
        );
        assert!(
            b.metadata.owner_references.is_none(),
            "cluster-scoped: no namespaced owner, and no chart owner given"
        );
        // In the chart: owned by its ClusterRole (cluster-scoped too).
        let owner = crate::owner::reference(&crate::owner::tests::chart_role("u1")).unwrap();
        let owned = BuildConfig {
            owner: Some(owner.clone()),
            ..cfg.clone()
        };
        let b2 = auth_binding("shop", &[web.clone(), tok.clone()], &pods, &owned).unwrap();
        assert_eq!(b2.metadata.owner_references, Some(vec![owner]));
        assert_eq!(b2.subjects, b.subjects);
        assert_eq!(
            (b.role_ref.kind.as_str(), b.role_ref.name.as_str()),
            ("ClusterRole", AUTH_DELEGATOR)
        );
        let subjects = b.subjects.unwrap();
        let names: Vec<&str> = subjects.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default", "legacy", AGGREGATOR, "web"]);
        assert!(
            subjects
                .iter()
                .all(|s| s.kind == "ServiceAccount" && s.namespace.as_deref() == Some("shop"))
        );
        // No kubernetes-mode LogStream left: no binding.
        assert!(auth_binding("shop", std::slice::from_ref(&tok), &pods, &owned).is_none());
        assert!(auth_binding("shop", &[], &pods, &cfg).is_none());
        // ... unless a streamer that checks Kubernetes tokens still runs: an
        // aggregator replica from before the switch to token mode, until the
        // rollout replaces it (terminating included); finished pods do not count.
        let old_aggregator = |name: &str, phase: &str, deleted: bool| -> Pod {
            let mut meta = serde_json::json!({"name": name, "namespace": "shop"});
            if deleted {
                meta["deletionTimestamp"] = "2026-12-04T00:00:00Z".into();
            }
            serde_json::from_value(serde_json::json!({
                "metadata": meta,
                "spec": {"serviceAccountName": AGGREGATOR, "containers": [{
                    "name": "aggregator", "image": "i",
                    "env": [{"name": env::KUBERNETES_AUTH, "value": "true"}],
                }]},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let kept = auth_binding(
            "shop",
            std::slice::from_ref(&tok),
            &[old_aggregator("agg-old", "Running", true)],
            &cfg,
        )
        .expect("the old replica still checks tokens");
        let names: Vec<String> = kept.subjects.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, [AGGREGATOR]);
        assert!(
            auth_binding(
                "shop",
                std::slice::from_ref(&tok),
                &[old_aggregator("agg-done", "Succeeded", false)],
                &cfg
            )
            .is_none()
        );
        // The aggregator checks tokens whenever one LogStream uses kubernetes mode.
        let objs = aggregator(
            "shop",
            std::slice::from_ref(&web),
            &BuildConfig {
                image: "i".into(),
                owner: None,
                ..BuildConfig::default()
            },
            "t",
            None,
        );
        let env_of = |objs: AggregatorObjects| {
            objs.deployment
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .containers[0]
                .env
                .clone()
                .unwrap()
        };
        let env = env_of(objs);
        assert!(
            env.iter().any(
                |e| e.name == "LOGSTREAM_KUBERNETES_AUTH" && e.value.as_deref() == Some("true")
            )
        );
        assert!(
            !env.iter()
                .any(|e| e.name == "LOGSTREAM_NO_LOOPBACK_EXEMPTION")
        );
        // In an Istio namespace loopback is the mesh's proxy: token required.
        let cfg = BuildConfig {
            image: "i".into(),
            owner: None,
            ..BuildConfig::default()
        };
        let env = env_of(aggregator(
            "shop",
            std::slice::from_ref(&web),
            &cfg,
            "t",
            Some("istio"),
        ));
        assert!(
            env.iter()
                .any(|e| e.name == "LOGSTREAM_NO_LOOPBACK_EXEMPTION"
                    && e.value.as_deref() == Some("true"))
        );
    }

    #[test]
    fn aggregator_placement_pull_policy_and_traefik_stickiness() {
        let web = stream(
            "web",
            serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
        );
        let cfg = BuildConfig {
            image: "i".into(),
            pull_policy: Some("IfNotPresent".into()),
            run_as: crate::dataplane::RunAs {
                user: None,
                group: None,
            },
            aggregator_pod: crate::dataplane::parse_aggregator_pod(
                r#"{"nodeSelector":{"pool":"infra"},"tolerations":[{"key":"infra","operator":"Exists"}],
                    "imagePullSecrets":[{"name":"regcred"}],"resources":{"limits":{"memory":"1Gi"}}}"#,
            )
            .unwrap(),
            ..BuildConfig::default()
        };
        let objs = aggregator("shop", std::slice::from_ref(&web), &cfg, "t", None);
        let pod = objs.deployment.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "infra");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("infra"));
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        let c = &pod.containers[0];
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
            "1Gi"
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
        // Defaults: resources set, nothing else.
        let objs = aggregator("shop", &[web], &BuildConfig::default(), "t", None);
        let pod = objs.deployment.spec.unwrap().template.spec.unwrap();
        assert!(pod.node_selector.is_none() && pod.tolerations.is_none());
        assert!(
            pod.containers[0]
                .resources
                .as_ref()
                .unwrap()
                .requests
                .is_some()
        );
        // Traefik's sticky cookie sits on the Service the Ingress routes to.
        let a = objs.service.metadata.annotations.unwrap();
        assert_eq!(
            a["traefik.ingress.kubernetes.io/service.sticky.cookie"],
            "true"
        );
        assert_eq!(objs.service.metadata.name.as_deref(), Some(AGGREGATOR));
    }
}
