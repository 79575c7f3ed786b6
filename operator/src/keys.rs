//! Every name the operator puts on objects or shares with the streamer, in
//! one place: labels, annotations, the finalizer, fixed object names, the
//! port and container name of the data plane. What the streamer reads too
//! (port, container, mount paths, environment variables) comes from
//! `logstream_contract`, the one contract both crates use.

pub use logstream_contract::{STREAM_LABEL, env, paths};

/// Port the sidecar and the aggregator listen on (Kubernetes ports are i32).
pub const STREAM_PORT: i32 = logstream_contract::STREAM_PORT as i32;
/// Name of the injected sidecar container.
pub const SIDECAR_NAME: &str = logstream_contract::SIDECAR_CONTAINER;

/// Annotation marking injection, so it never happens twice.
pub const INJECTED_ANNOTATION: &str = "logstream.dev/injected";
/// Pods labelled `logstream.dev/inject: "false"` are never injected. A label,
/// not an annotation: the webhook's objectSelector can only match labels.
pub const OPT_OUT_LABEL: &str = "logstream.dev/inject";
/// Namespaces holding LogStreams carry this label; only their pods reach the webhook.
pub const NAMESPACE_LABEL: &str = "logstream.dev/injection";
/// Label naming the namespace a cluster-scoped object belongs to.
pub const NAMESPACE_OWNER_LABEL: &str = "logstream.dev/namespace";
/// Pod template annotation: when the owner was rolled (informative, like
/// `kubectl.kubernetes.io/restartedAt`).
pub const RESTARTED_AT: &str = "logstream.dev/restartedAt";
/// Pod template annotation: what the owner was rolled for,
/// `<LogStream uid>/<generation>` (see `restart::need`).
pub const RESTARTED_FOR: &str = "logstream.dev/restarted-for";
/// Finalizer of LogStreams: their cluster-scoped objects are removed first.
pub const FINALIZER: &str = "logstream.dev/cleanup";

/// `app.kubernetes.io/managed-by` of everything the operator writes, and
/// its field manager.
pub const MANAGED_BY: &str = "logstream-operator";
/// Name of the per-namespace aggregator (Deployment, Service, account).
pub const AGGREGATOR: &str = "logstream-aggregator";
/// Seconds the aggregator may take to drain; its grace period adds a margin.
pub const AGGREGATOR_DRAIN_SECONDS: i64 = 25;
/// The per-namespace Secret holding the token the aggregator pulls sidecars with.
pub const PULL_SECRET: &str = "logstream-pull-token";
/// Where the namespace's pull token (shared by sidecars and aggregator) is mounted.
pub const PULL_TOKEN_FILE: &str = paths::PULL_TOKEN_FILE;
/// The MutatingWebhookConfiguration and its webhook.
pub const WEBHOOK_NAME: &str = "logstream-injector";
/// Built-in ClusterRole allowing `create` on TokenReviews and
/// SubjectAccessReviews: what a server needs to check Kubernetes tokens.
pub const AUTH_DELEGATOR: &str = "system:auth-delegator";
/// Non-root user of the data-plane images (their Dockerfiles' `USER`).
pub const SIDECAR_UID: i64 = 65532;
