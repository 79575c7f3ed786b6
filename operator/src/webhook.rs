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

use crate::crd::LogStream;
use crate::metrics::Metrics;
use crate::mutate::{InjectConfig, mutate};

pub const WEBHOOK_NAME: &str = "logstream-injector";
/// Namespaces holding LogStreams carry this label; only their pods reach the webhook.
pub const NAMESPACE_LABEL: &str = "logstream.dev/injection";
pub use crate::mutate::OPT_OUT_LABEL;

pub struct WebhookState {
    pub client: kube::Client,
    pub inject: InjectConfig,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/mutate", post(handle))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
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
    let streams: Vec<LogStream> = match Api::<LogStream>::namespaced(st.client.clone(), ns)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l
            .items
            .into_iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect(),
        Err(e) => {
            // Never block a deploy on our own trouble: the reconciler reports
            // pods that were created without the sidecar.
            tracing::warn!(namespace = %ns, error = %e, "cannot list LogStreams; pod admitted unchanged");
            return (resp, "error");
        }
    };
    match mutate(pod, &streams, &st.inject) {
        Ok(None) => (resp, "skipped"),
        Ok(Some(mutated)) => {
            let (Ok(before), Ok(after)) =
                (serde_json::to_value(pod), serde_json::to_value(&mutated))
            else {
                return (resp, "error");
            };
            let patch = json_patch::diff(&before, &after);
            match resp.with_patch(patch) {
                Ok(r) => {
                    tracing::info!(namespace = %ns, pod = pod.metadata.name.as_deref().or(pod.metadata.generate_name.as_deref()).unwrap_or(""), "sidecar injected");
                    (r, "injected")
                }
                Err(e) => (
                    AdmissionResponse::from(req)
                        .deny(format!("logstream: cannot build patch: {e}")),
                    "error",
                ),
            }
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, error = %e, "pod refused");
            (resp.deny(format!("logstream: {e}")), "denied")
        }
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
/// Helm never rendered it.
pub fn configuration(
    endpoint: &Endpoint,
    ca_pem: &str,
    owner: Option<&OwnerReference>,
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
                crate::build::MANAGED_BY.to_string(),
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
            timeout_seconds: Some(5),
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
) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        WEBHOOK_NAME,
        &PatchParams::apply(crate::build::MANAGED_BY).force(),
        &Patch::Apply(configuration(endpoint, ca_pem, owner)),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_never_blocks_deploys_and_only_sees_labelled_namespaces() {
        let c = configuration(
            &Endpoint::Url("https://127.0.0.1:9443/mutate".into()),
            "CA",
            None,
        );
        assert!(c.metadata.owner_references.is_none(), "no owner given");
        let w = &c.webhooks.unwrap()[0];
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
        );
        assert_eq!(c.metadata.owner_references, Some(vec![owner]));
    }
}
