//! The `LogStream` resource (`logstream.dev/v1alpha1`): what to stream from
//! which pods, and how to expose it. Validation lives in the schema (OpenAPI
//! bounds and CEL rules), so the API server itself refuses a bad resource
//! with a message naming the field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::keys::STREAM_PORT;

/// Streams the log files that the selected pods write into a shared volume.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "logstream.dev",
    version = "v1alpha1",
    kind = "LogStream",
    namespaced,
    shortname = "ls",
    status = "LogStreamStatus",
    category = "all",
    printcolumn = r#"{"name":"Selected","type":"integer","jsonPath":".status.selectedPods"}"#,
    printcolumn = r#"{"name":"Injected","type":"integer","jsonPath":".status.injectedPods"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","description":"Selected pods that need a restart to get the sidecar","jsonPath":".status.pendingRestartPods"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LogStreamSpec {
    /// Pods whose log files are streamed. Must not be empty.
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)",
        "message": "selector must not be empty: it would select every pod in the namespace"
    }]))]
    pub selector: LabelSelector,

    /// Globs of the files to stream, relative to `mountPath` (`*.log`, `**/*.log`).
    #[serde(default = "default_paths")]
    #[schemars(length(min = 1, max = 32))]
    pub paths: Vec<PathGlob>,

    /// Where the app container writes its logs. An existing volume mounted
    /// there is shared with the sidecar; otherwise an emptyDir is added.
    #[serde(default = "default_mount_path")]
    #[schemars(length(min = 1, max = 512))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.startsWith('/')", "message": "mountPath must be absolute"},
        {"rule": "!self.contains('..')", "message": "mountPath must not contain '..'"},
        {"rule": "self != '/'", "message": "mountPath must not be the root directory"}
    ]))]
    pub mount_path: String,

    /// `sizeLimit` of the emptyDir added when no volume of the app holds
    /// `mountPath` (default: none, as the app's own writes had). The kubelet
    /// evicts the pod when the files exceed it: pick it above what log
    /// rotation keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir_size_limit: Option<k8s_openapi::apimachinery::pkg::api::resource::Quantity>,

    /// The app container that writes the logs (default: the first container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub container: Option<String>,

    /// How lines are parsed for their level.
    #[serde(default)]
    pub parse: ParseSpec,

    /// History kept by each sidecar.
    #[serde(default)]
    pub buffer: BufferSpec,

    /// The per-LogStream Service in front of the selected pods' sidecars.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Optional Ingress to the aggregator, with session affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Optional Gateway API HTTPRoute to the aggregator (beside or instead
    /// of the Ingress), with cookie session persistence and no request
    /// timeout. Applied when the cluster serves the Gateway API; the
    /// `RouteReady` condition says what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,

    /// Who may stream.
    #[serde(default)]
    pub access: AccessSpec,

    /// The injected sidecar.
    #[serde(default)]
    pub sidecar: SidecarSpec,

    /// The namespace's aggregator.
    #[serde(default)]
    pub aggregator: AggregatorSpec,

    /// Restart (through their owner's rollout) selected pods that run without
    /// the sidecar, e.g. pods created while the webhook was unavailable.
    #[serde(default)]
    pub restart_pods: bool,
}

fn default_paths() -> Vec<PathGlob> {
    vec![PathGlob("*.log".into())]
}

/// A glob relative to the log volume; it can never leave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PathGlob(pub String);

impl std::fmt::Display for PathGlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for PathGlob {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PathGlob".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 256,
            "x-kubernetes-validations": [
                {"rule": "!self.startsWith('/')", "message": "paths must be relative to mountPath"},
                {"rule": "!self.contains('..')", "message": "paths must not leave mountPath ('..')"},
                {"rule": "self.matches('^[^\\\\[\\\\]]*(\\\\[[^\\\\[\\\\]]+\\\\][^\\\\[\\\\]]*)*$')", "message": "paths must be valid globs: unbalanced '[' or ']'"},
                {"rule": "self.matches('^[^{}]*(\\\\{[^{}]*\\\\}[^{}]*)*$')", "message": "paths must be valid globs: unbalanced '{' or '}'"}
            ]
        })
    }
}

fn default_mount_path() -> String {
    "/var/log/app".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParseFormat {
    Plain,
    Json,
    Logfmt,
    #[default]
    Auto,
}

impl ParseFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseFormat::Plain => "plain",
            ParseFormat::Json => "json",
            ParseFormat::Logfmt => "logfmt",
            ParseFormat::Auto => "auto",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParseSpec {
    #[serde(default)]
    pub format: ParseFormat,
    /// Field carrying the level in JSON/logfmt lines (default: level, lvl, severity...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub level_field: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BufferSpec {
    /// Records kept in each sidecar's history.
    #[serde(default = "default_lines")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub lines: i64,
    /// Bytes kept in each sidecar's history.
    #[serde(default = "default_bytes")]
    #[schemars(range(min = 65_536, max = 4_294_967_296_i64))]
    pub bytes: i64,
}

fn default_lines() -> i64 {
    10_000
}
fn default_bytes() -> i64 {
    8 << 20
}

impl Default for BufferSpec {
    fn default() -> Self {
        BufferSpec {
            lines: default_lines(),
            bytes: default_bytes(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Create the per-LogStream Service.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec { enabled: true }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name served.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(
        pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub host: String,
    /// IngressClass (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// TLS Secret for the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations (override the affinity and timeout defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Whose annotations to write for cookie affinity and long-lived
    /// streams. Default: the controller of the IngressClass (`className`,
    /// else the cluster's default class); when that is unknown, those of
    /// every maintained controller below (each ignores the others').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<IngressController>,
}

/// An ingress controller whose annotations the operator knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IngressController {
    /// Traefik (`traefik.io/ingress-controller`): sticky cookie on the
    /// aggregator's Service.
    Traefik,
    /// HAProxy Kubernetes Ingress Controller (`haproxy.org/...`).
    Haproxy,
    /// HAProxy Ingress (`haproxy-ingress.github.io/...`).
    HaproxyIngress,
    /// Contour (`projectcontour.io/...`): WebSocket routes and timeouts; it
    /// has no cookie affinity for an Ingress (use `gateway`).
    Contour,
    /// ingress-nginx (retired by Kubernetes SIG Network in March 2026), for
    /// clusters that still run it.
    IngressNginx,
    /// None: only the `annotations` given.
    None,
}

/// The HTTPRoute (`gateway.networking.k8s.io/v1`) the operator writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The Gateways (or their listeners) the route attaches to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<GatewayParentRef>,
    /// Host names the route answers (default: those of the Gateway's
    /// listeners).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(inner(length(min = 1, max = 253)))]
    #[schemars(inner(regex(
        pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    )))]
    pub hostnames: Vec<String>,
    /// `Cookie` (default): the route asks for cookie session persistence
    /// (`sessionPersistence`, GEP-1619, the `logstream-affinity` cookie), so
    /// a browser stays on one aggregator replica. It is in the Gateway API's
    /// experimental channel: with the standard channel's CRDs the API server
    /// drops it and `RouteReady` says so. `None`: no session persistence.
    #[serde(default)]
    pub session_persistence: SessionPersistence,
    /// The route's request timeout (`timeouts.request`, a Gateway API
    /// duration such as `1h`). Default `0s`: none, as streams last for
    /// hours (an implementation that cannot disable it uses its longest).
    /// `unset`: the route carries no `timeouts` (NGINX Gateway Fabric
    /// refuses a rule that has them).
    #[serde(default = "default_request_timeout")]
    #[schemars(regex(pattern = r"^(unset|([0-9]{1,5}(h|m|s|ms)){1,4})$"))]
    pub request_timeout: String,
}

fn default_request_timeout() -> String {
    "0s".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SessionPersistence {
    #[default]
    Cookie,
    None,
}

/// A Gateway the route attaches to (`parentRefs`, kind Gateway).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayParentRef {
    /// The Gateway's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace (default: the LogStream's). The Gateway's listeners
    /// must allow routes from this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// One listener of it, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
    ))]
    pub section_name: Option<String>,
    /// Its listeners on this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Bearer tokens checked with TokenReview + SubjectAccessReview (`get pods/log`).
    #[default]
    Kubernetes,
    /// A static token from a Secret.
    Token,
    /// Loopback only (kubectl port-forward).
    None,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.mode != 'token' || has(self.tokenSecret)",
    "message": "access.tokenSecret is required when access.mode is token"
}]))]
pub struct AccessSpec {
    #[serde(default)]
    pub mode: AccessMode,
    /// Secret key holding the token (mode `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// Serve loopback clients (`kubectl port-forward`, which the API server
    /// already authorised) without a token. Default: yes, except in pods and
    /// namespaces with a service-mesh proxy (Istio, Linkerd), whose proxy
    /// delivers every inbound connection from loopback; `false` requires a
    /// token from everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_loopback: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// Image of the sidecar (default: the operator's `--image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources of the sidecar (default: 10m/32Mi requests, 128Mi limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Primary group of the sidecar (it runs as user 65532), so that it can
    /// read files the app writes group-readable (mode 0640) as another user.
    /// Default: the app container's `runAsGroup`, else the pod's, when set
    /// and not 0; else 65532.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub run_as_group: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AggregatorSpec {
    /// Replicas of the namespace's aggregator (the largest value among the
    /// namespace's LogStreams wins).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,
    /// History on disk, so Grafana's "Last 6 hours" reads hours of lines,
    /// not what fits in memory (unset: memory only). Each replica keeps
    /// its own copy; among a namespace's LogStreams the largest size and
    /// age win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySpec>,
}

fn default_replicas() -> i32 {
    2
}

impl Default for AggregatorSpec {
    fn default() -> Self {
        AggregatorSpec {
            replicas: default_replicas(),
            history: None,
        }
    }
}

/// The aggregator's history on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// The volume each replica keeps it on; the history stays below it
    /// (the oldest lines go first).
    #[serde(default = "default_history_size")]
    pub size: k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    /// Lines older than this go (`0s`: only the size bounds it).
    #[serde(default = "default_history_max_age")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d))+$"))]
    pub max_age: String,
    /// A StorageClass: the volume is a PersistentVolumeClaim made with each
    /// aggregator pod (a generic ephemeral volume). Unset: an emptyDir of
    /// `size`. Either survives a restart of the aggregator's container, not
    /// the replacement of its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

fn default_history_size() -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
    k8s_openapi::apimachinery::pkg::api::resource::Quantity("2Gi".into())
}

fn default_history_max_age() -> String {
    "24h".into()
}

/// Observed state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogStreamStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Injected`, `FilesReadable` (what running sidecars cannot
    /// read, from their `/readyz` report), `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub selected_pods: i32,
    #[serde(default)]
    pub injected_pods: i32,
    #[serde(default)]
    pub pending_restart_pods: i32,
    /// Names of pods running without the sidecar (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// Where to watch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// The CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    Ok(format!(
        "# Generated by `logstream-operator crd`; do not edit.\n{}",
        serde_yaml::to_string(&LogStream::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regenerate with `cargo run -p logstream-operator -- crd > crds/logstream.dev_logstreams.yaml`.
    #[test]
    fn committed_crd_matches_the_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/logstream.dev_logstreams.yaml"
        );
        let committed =
            std::fs::read_to_string(path).expect("crds/logstream.dev_logstreams.yaml is missing");
        assert!(
            committed == crd_yaml().unwrap(),
            "crds/ drifted from the Rust types: run `cargo run -p logstream-operator -- crd > crds/logstream.dev_logstreams.yaml`"
        );
    }

    #[test]
    fn golden_schema_bits() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(LogStream::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "ls");
        assert_eq!(v["subresources"]["status"], serde_json::json!({}));
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["selector"]));
        let rules = spec["properties"]["paths"]["items"]["x-kubernetes-validations"]
            .as_array()
            .unwrap();
        assert!(rules.len() >= 4);
        assert_eq!(
            spec["properties"]["buffer"]["properties"]["lines"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert!(spec["properties"]["access"]["x-kubernetes-validations"].is_array());
        let cols: Vec<&str> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["Selected", "Injected", "Pending", "Ready", "Age"]);
    }

    #[test]
    fn defaults_fill_a_minimal_resource() {
        let spec: LogStreamSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "web"}}
        }))
        .unwrap();
        assert_eq!(spec.paths, [PathGlob("*.log".into())]);
        assert_eq!(spec.mount_path, "/var/log/app");
        assert_eq!(spec.buffer.lines, 10_000);
        assert!(spec.service.enabled);
        assert_eq!(spec.aggregator.replicas, 2);
        assert_eq!(spec.access.mode, AccessMode::Kubernetes);
    }
}
