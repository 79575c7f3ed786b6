//! The admission webhook: HTTPS (rustls) in front of [`crate::mutate`], and
//! its MutatingWebhookConfiguration.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, OwnerReference,
};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::crd::LogStream;
use crate::metrics::Metrics;
use crate::mutate::{InjectConfig, mutate};

use crate::keys::{MANAGED_BY, NAMESPACE_LABEL, OPT_OUT_LABEL, WEBHOOK_NAME};

pub struct WebhookState {
    pub client: kube::Client,
    pub inject: InjectConfig,
    pub metrics: Arc<Metrics>,
    /// Records a Warning Event on the owner of a pod admitted without the
    /// sidecar (the pod itself may not have a name yet).
    pub recorder: kube::runtime::events::Recorder,
    /// Every LogStream, from a watch ([`watch_streams`]): admissions read
    /// it instead of listing the namespace's LogStreams for each pod.
    pub streams: Store<LogStream>,
}

/// Keeps `writer`'s store of LogStreams in step with the API server until
/// the task is dropped (a watch that re-lists only on its own errors).
pub async fn watch_streams(client: kube::Client, writer: Writer<LogStream>) {
    use futures::StreamExt;
    let api: Api<LogStream> = Api::all(client);
    reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .applied_objects()
    .for_each(|_| std::future::ready(()))
    .await;
}

/// The namespace's live LogStreams from the cache; `None` when the cache
/// cannot tell: not synced yet, or holding none for `ns` (the API server
/// only calls for namespaces the reconciler labelled, which it does after
/// seeing a LogStream there, so an empty answer may be a watch that has not
/// caught up: the caller asks the API server).
pub fn cached_streams(ns: &str, ready: bool, all: &[Arc<LogStream>]) -> Option<Vec<LogStream>> {
    if !ready {
        return None;
    }
    let streams: Vec<LogStream> = all
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(ns))
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|s| (**s).clone())
        .collect();
    (!streams.is_empty()).then_some(streams)
}

pub fn router(state: Arc<WebhookState>) -> Router {
    let timed = axum::middleware::from_fn_with_state(state.clone(), timed);
    Router::new()
        .route("/mutate", post(handle).layer(timed))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// Times a review whole: the body read and parsed, the answer serialized.
async fn timed(
    State(st): State<Arc<WebhookState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let start = std::time::Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .admission_seconds
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn handle(
    State(st): State<Arc<WebhookState>>,
    Json(review): Json<AdmissionReview<Pod>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            st.metrics
                .admissions
                .get_or_create(&crate::metrics::Outcome { outcome: "invalid" })
                .inc();
            return Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let (resp, outcome) = review_pod(&st, &req).await;
    st.metrics
        .admissions
        .get_or_create(&crate::metrics::Outcome { outcome })
        .inc();
    Json(resp.into_review())
}

async fn review_pod(
    st: &WebhookState,
    req: &AdmissionRequest<Pod>,
) -> (AdmissionResponse, &'static str) {
    let resp = AdmissionResponse::from(req);
    let (Some(pod), Some(ns)) = (&req.object, &req.namespace) else {
        return (resp, "skipped");
    };
    use futures::FutureExt;
    let ready = st
        .streams
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok());
    let here = st
        .streams
        .state_filter(|s| s.metadata.namespace.as_deref() == Some(ns));
    let cached = cached_streams(ns, ready, &here);
    let listed = match cached {
        Some(streams) => Ok(streams),
        None => {
            st.metrics.admission_lists.inc();
            Api::<LogStream>::namespaced(st.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter(|s| s.metadata.deletion_timestamp.is_none())
                        .collect()
                })
        }
    };
    let streams: Vec<LogStream> = match listed {
        Ok(streams) => streams,
        Err(e) => {
            // Never block a deploy on our own trouble: the reconciler reports
            // pods that were created without the sidecar.
            tracing::warn!(namespace = %ns, error = %e, "cannot list LogStreams; pod admitted unchanged");
            return (resp, "error");
        }
    };
    let name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("");
    let (resp, outcome) = respond(resp, pod, mutate(pod, &streams, &st.inject));
    match outcome {
        "injected" => tracing::info!(namespace = %ns, pod = name, "sidecar injected"),
        "not_injected" => {
            tracing::warn!(namespace = %ns, pod = name, warnings = ?resp.warnings, "pod admitted without the sidecar");
            if req.dry_run {
                return (resp, outcome);
            }
            if let Some(owner) = owner_ref(pod, ns) {
                let note = resp.warnings.clone().unwrap_or_default().join("; ");
                let recorder = st.recorder.clone();
                // Off the admission path: the answer never waits for it.
                tokio::spawn(async move {
                    let ev = kube::runtime::events::Event {
                        type_: kube::runtime::events::EventType::Warning,
                        reason: "SidecarNotInjected".into(),
                        note: Some(note),
                        action: "Admit".into(),
                        secondary: None,
                    };
                    if let Err(e) = recorder.publish(&ev, &owner).await {
                        tracing::debug!(error = %e, "event not recorded");
                    }
                });
            }
        }
        _ => {}
    }
    (resp, outcome)
}

/// The pod's controlling owner (ReplicaSet, StatefulSet, Job, ...) as an
/// event target; `None` for a bare pod (which has no name yet when created
/// with generateName, and is named in the warning `kubectl` prints).
fn owner_ref(pod: &Pod, ns: &str) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
    let o = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    Some(k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(o.api_version.clone()),
        kind: Some(o.kind.clone()),
        name: Some(o.name.clone()),
        namespace: Some(ns.to_string()),
        uid: Some(o.uid.clone()),
        ..Default::default()
    })
}

/// The answer to one admission review, given what [`mutate`] decided.
///
/// Never a deny: a pod the LogStream cannot be injected into (its container
/// is missing, the log volume's name is taken, ...) is admitted unchanged
/// with an admission warning, which `kubectl` prints; the reconciler reports
/// it as a pod without the sidecar. `failurePolicy: Ignore` covers only our
/// errors, not a deny, so a deny here would stall scale-ups, node drains and
/// rollouts of the app.
fn respond(
    resp: AdmissionResponse,
    pod: &Pod,
    decision: Result<Option<Pod>, crate::mutate::MutateError>,
) -> (AdmissionResponse, &'static str) {
    let not_injected = |resp: AdmissionResponse, why: String| {
        let mut resp = resp;
        resp.warnings = Some(vec![format!(
            "logstream: {why}; the pod is admitted without the logstream sidecar"
        )]);
        (resp, "not_injected")
    };
    match decision {
        Ok(None) => (resp, "skipped"),
        Ok(Some(mutated)) => {
            let (Ok(before), Ok(after)) =
                (serde_json::to_value(pod), serde_json::to_value(&mutated))
            else {
                return not_injected(resp, "cannot serialise the pod".into());
            };
            let patch = json_patch::diff(&before, &after);
            match resp.clone().with_patch(patch) {
                Ok(r) => (r, "injected"),
                Err(e) => not_injected(resp, format!("cannot build the patch: {e}")),
            }
        }
        Err(e) => not_injected(resp, e.to_string()),
    }
}

/// Where the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// In-cluster Service (name, namespace, port).
    Service {
        name: String,
        namespace: String,
        port: i32,
    },
    /// A URL (tests: `https://127.0.0.1:PORT/mutate`).
    Url(String),
}

/// The webhook configuration the operator registers. `owner` (the chart's
/// ClusterRole, [`crate::owner`]) makes `helm uninstall` remove it although
/// Helm never rendered it; `timeout_seconds` is the chart's
/// `webhook.timeoutSeconds` (the API server's default is 10).
pub fn configuration(
    endpoint: &Endpoint,
    ca_pem: &str,
    owner: Option<&OwnerReference>,
    timeout_seconds: i32,
) -> MutatingWebhookConfiguration {
    let client_config = match endpoint {
        Endpoint::Service {
            name,
            namespace,
            port,
        } => WebhookClientConfig {
            service: Some(ServiceReference {
                name: name.clone(),
                namespace: namespace.clone(),
                path: Some("/mutate".into()),
                port: Some(*port),
            }),
            url: None,
            ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
        },
        Endpoint::Url(u) => WebhookClientConfig {
            service: None,
            url: Some(u.clone()),
            ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
        },
    };
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_NAME.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGED_BY.to_string(),
            )])),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.logstream.dev".into(),
            admission_review_versions: vec!["v1".into()],
            client_config,
            // An outage of the operator must never block a deploy.
            failure_policy: Some("Ignore".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(timeout_seconds.clamp(1, 30)),
            reinvocation_policy: Some("IfNeeded".into()),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_LABEL.to_string(),
                    "enabled".to_string(),
                )])),
                match_expressions: None,
            }),
            object_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: OPT_OUT_LABEL.into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["false".into()]),
                }]),
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            ..MutatingWebhook::default()
        }]),
    }
}

/// Applies the webhook configuration with the current CA bundle (and the
/// owner reference, so one registered before the operator had an owner gets
/// it at the next start).
pub async fn register(
    client: &kube::Client,
    endpoint: &Endpoint,
    ca_pem: &str,
    owner: Option<&OwnerReference>,
    timeout_seconds: i32,
) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        WEBHOOK_NAME,
        &PatchParams::apply(MANAGED_BY).force(),
        &Patch::Apply(configuration(endpoint, ca_pem, owner, timeout_seconds)),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn admissions_read_the_cache_once_it_knows_the_namespace() {
        let ls = |name: &str, ns: &str, deleting: bool| {
            let mut l: LogStream = serde_json::from_value(serde_json::json!({
                "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": name}}}
            }))
            .unwrap();
            if deleting {
                l.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    ));
            }
            Arc::new(l)
        };
        let all = vec![
            ls("web", "shop", false),
            ls("old", "shop", true),
            ls("db", "other", false),
        ];
        let names = |v: Option<Vec<LogStream>>| {
            v.map(|v| {
                v.iter()
                    .map(|l| l.metadata.name.clone().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            names(cached_streams("shop", true, &all)),
            Some(vec!["web".to_string()])
        );
        // Not synced yet, or nothing known there: ask the API server.
        assert_eq!(names(cached_streams("shop", false, &all)), None);
        assert_eq!(names(cached_streams("empty", true, &all)), None);
        assert_eq!(
            names(cached_streams("shop", true, &[ls("old", "shop", true)])),
            None,
            "only LogStreams being deleted: the API server is asked"
        );
    }

    use super::*;

    fn review_response(pod: &Pod) -> AdmissionResponse {
        let review: AdmissionReview<Pod> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0d4d7c9e-1b2a-4c3d-8e9f-000000000001",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": "shop",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": false
            }
        }))
        .unwrap();
        let req: AdmissionRequest<Pod> = review.try_into().unwrap();
        AdmissionResponse::from(&req)
    }

    fn app_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .unwrap()
    }

    /// A pod the LogStream cannot be injected into is admitted unchanged,
    /// with a warning that says why: a deny would stall the app's rollouts.
    #[test]
    fn a_pod_that_cannot_be_injected_is_admitted_unchanged_with_a_warning() {
        let pod = app_pod();
        let err = crate::mutate::MutateError::NoContainer {
            stream: "web".into(),
            container: "nope".into(),
            available: "app".into(),
        };
        let (resp, outcome) = respond(review_response(&pod), &pod, Err(err));
        assert_eq!(outcome, "not_injected");
        let v = serde_json::to_value(resp.into_review()).unwrap();
        let r = &v["response"];
        assert_eq!(r["allowed"], true, "{v:#}");
        assert!(r.get("patch").is_none_or(|p| p.is_null()), "{v:#}");
        let warning = r["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains(r#"container "nope" not found"#)
                && warning.contains("admitted without the logstream sidecar"),
            "{warning}"
        );
    }

    #[test]
    fn an_injected_pod_is_admitted_with_its_patch_and_no_warning() {
        let pod = app_pod();
        let mut mutated = pod.clone();
        mutated
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("logstream.dev/stream".into(), "web".into());
        let (resp, outcome) = respond(review_response(&pod), &pod, Ok(Some(mutated)));
        assert_eq!(outcome, "injected");
        let v = serde_json::to_value(resp.into_review()).unwrap();
        assert_eq!(v["response"]["allowed"], true);
        assert!(!v["response"]["patch"].is_null(), "{v:#}");
        assert!(
            v["response"].get("warnings").is_none_or(|w| w.is_null()),
            "{v:#}"
        );
    }

    #[test]
    fn configuration_never_blocks_deploys_and_only_sees_labelled_namespaces() {
        let c = configuration(
            &Endpoint::Url("https://127.0.0.1:9443/mutate".into()),
            "CA",
            None,
            7,
        );
        assert!(c.metadata.owner_references.is_none(), "no owner given");
        let w = &c.webhooks.unwrap()[0];
        assert_eq!(w.timeout_seconds, Some(7));
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
        assert_eq!(w.side_effects, "None");
        assert_eq!(
            w.namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[NAMESPACE_LABEL],
            "enabled"
        );
        assert_eq!(
            w.rules.as_ref().unwrap()[0].operations.as_ref().unwrap(),
            &["CREATE"]
        );
        assert_eq!(w.client_config.ca_bundle.as_ref().unwrap().0, b"CA");
    }

    #[test]
    fn configuration_is_owned_by_the_chart_cluster_role_when_given() {
        let owner = crate::owner::reference(&crate::owner::tests::chart_role("u1")).unwrap();
        let c = configuration(
            &Endpoint::Url("https://127.0.0.1:9443/mutate".into()),
            "CA",
            Some(&owner),
            5,
        );
        assert_eq!(c.metadata.owner_references, Some(vec![owner]));
    }
}
