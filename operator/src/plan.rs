//! What one reconcile of a LogStream writes, decided from what it read.
//!
//! `controller.rs` reads the namespace ([`Observed`]), asks [`plan`] for
//! every object to apply or delete and every pod to restart (pure: no I/O,
//! unit-tested here), applies that, then writes the status: read → build →
//! apply → status, in that order.

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::ResourceExt;
use kube::api::DynamicObject;

use crate::crd::LogStream;
use crate::desired::routing::{self, Persistence};
use crate::desired::{self, AggregatorObjects, BuildConfig};
use crate::restart::{self, Census};

/// What a reconcile reads before it decides anything.
pub struct Observed {
    pub namespace: Namespace,
    /// The namespace's LogStreams that are not being deleted, by name.
    pub streams: Vec<LogStream>,
    pub pods: Vec<Pod>,
    /// The namespace's pull token: the one its Secret holds (sidecars already
    /// have it), or a new one when there is none yet.
    pub pull_token: String,
    /// The cluster's IngressClasses, read only when the LogStream's Ingress
    /// leaves its controller to them (empty otherwise, or when unreadable).
    pub ingress_classes: Vec<IngressClass>,
    /// How the cluster's HTTPRoute CRD spells session persistence; `None`
    /// when HTTPRoute is not served (read only when a route is asked for).
    pub http_routes: Option<Persistence>,
}

/// An object the reconcile applies, or the name of one it removes.
#[derive(Debug, Clone, PartialEq)]
pub enum Want<K> {
    Apply(K),
    Delete(String),
}

/// Every write of one reconcile.
pub struct Plan<'a> {
    pub stream_service: Want<Service>,
    pub ingress: Want<Ingress>,
    /// The Gateway API HTTPRoute (applied only where the kind is served:
    /// `route_schema`).
    pub route: Want<DynamicObject>,
    pub route_schema: Option<Persistence>,
    pub aggregator: AggregatorObjects,
    pub auth_binding: Want<ClusterRoleBinding>,
    /// Selected, injected and pending pods.
    pub census: Census<'a>,
    /// Pending pods the webhook admitted without the sidecar because it
    /// cannot be added (a missing container, a taken volume name), with
    /// why: a restart would not help, the reason goes into the status.
    pub blocked: Vec<(String, String)>,
    /// Pending pods whose owner a restart would give the sidecar.
    pub restartable: Vec<&'a Pod>,
}

/// Decides the writes of a reconcile of `ls` from what was read.
pub fn plan<'a>(ls: &LogStream, seen: &'a Observed, cfg: &BuildConfig) -> Plan<'a> {
    let ns = seen.namespace.name_any();
    let stream_service = if ls.spec.service.enabled {
        Want::Apply(desired::stream_service(ls))
    } else {
        Want::Delete(desired::stream_service_name(ls))
    };
    let controller = routing::ingress_controller(ls, &seen.ingress_classes);
    let ingress = match routing::stream_ingress(ls, controller) {
        Some(ing) => Want::Apply(ing),
        None => Want::Delete(routing::route_name(ls)),
    };
    let route = match routing::http_route(ls, seen.http_routes.unwrap_or(Persistence::Absent)) {
        Some(r) => Want::Apply(r),
        None => Want::Delete(routing::route_name(ls)),
    };
    // Meshed by the namespace's opt-in, or found meshed (a mesh injecting by
    // default gives the aggregator's own pods a proxy).
    let ns_mesh = crate::mesh::of_meta(&seen.namespace.metadata).or_else(|| {
        let selector = desired::aggregator_selector();
        seen.pods
            .iter()
            .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .find_map(crate::mesh::of_pod)
    });
    let aggregator = desired::aggregator(&ns, &seen.streams, cfg, &seen.pull_token, ns_mesh);
    let auth_binding = auth_binding(&ns, &seen.streams, &seen.pods, cfg);
    let census = restart::census(ls, &seen.pods);
    let mut blocked = Vec::new();
    let mut restartable = Vec::new();
    for p in &census.pending {
        match crate::mutate::injection_problem(p, &seen.streams) {
            Some(e) => blocked.push((p.name_any(), e.to_string())),
            None => restartable.push(*p),
        }
    }
    Plan {
        stream_service,
        ingress,
        route,
        route_schema: seen.http_routes,
        aggregator,
        auth_binding,
        census,
        blocked,
        restartable,
    }
}

/// The namespace's auth-delegator binding as `streams` and `pods` need it,
/// or its removal (also what a LogStream's cleanup applies).
pub fn auth_binding(
    ns: &str,
    streams: &[LogStream],
    pods: &[Pod],
    cfg: &BuildConfig,
) -> Want<ClusterRoleBinding> {
    match desired::auth_binding(ns, streams, pods, cfg) {
        Some(b) => Want::Apply(b),
        None => Want::Delete(desired::auth_binding_name(ns)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(spec: serde_json::Value) -> LogStream {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(name: &str, labels: serde_json::Value, containers: &[&str]) -> Pod {
        let containers: Vec<serde_json::Value> = containers
            .iter()
            .map(|c| serde_json::json!({"name": c, "image": "x"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"containers": containers},
            "status": {"phase": "Running"},
        }))
        .unwrap()
    }

    fn observed(ls: &LogStream, pods: Vec<Pod>) -> Observed {
        Observed {
            namespace: serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}}))
                .unwrap(),
            streams: vec![ls.clone()],
            pods,
            pull_token: "t".into(),
            ingress_classes: Vec::new(),
            http_routes: None,
        }
    }

    #[test]
    fn a_plan_names_every_write_of_a_reconcile() {
        let ls = stream(serde_json::json!({
            "selector": {"matchLabels": {"app": "web"}},
            "container": "app",
            "ingress": {"host": "logs.example.com"},
        }));
        let seen = observed(
            &ls,
            vec![
                // Started before the LogStream: a restart would inject it.
                pod("web-1", serde_json::json!({"app": "web"}), &["app"]),
                // The container the LogStream names is missing: blocked.
                pod("web-2", serde_json::json!({"app": "web"}), &["other"]),
                pod("db-1", serde_json::json!({"app": "db"}), &["db"]),
            ],
        );
        let p = plan(&ls, &seen, &BuildConfig::default());
        assert!(matches!(p.stream_service, Want::Apply(_)));
        assert!(matches!(p.ingress, Want::Apply(_)));
        assert_eq!(p.route, Want::Delete("web-logstream".into()));
        assert!(
            matches!(p.auth_binding, Want::Apply(_)),
            "kubernetes mode by default"
        );
        assert_eq!(p.census.selected.len(), 2);
        assert_eq!(p.census.pending.len(), 2);
        let restartable: Vec<String> = p.restartable.iter().map(|p| p.name_any()).collect();
        assert_eq!(restartable, ["web-1"]);
        assert_eq!(p.blocked.len(), 1);
        assert_eq!(p.blocked[0].0, "web-2");
        assert_eq!(p.aggregator.deployment.name_any(), crate::keys::AGGREGATOR);
    }

    #[test]
    fn what_the_spec_turns_off_is_deleted_by_name() {
        let ls = stream(serde_json::json!({
            "selector": {"matchLabels": {"app": "web"}},
            "service": {"enabled": false},
            "access": {"mode": "token", "tokenSecret": {"name": "s", "key": "token"}},
        }));
        let seen = observed(&ls, Vec::new());
        let p = plan(&ls, &seen, &BuildConfig::default());
        assert_eq!(
            p.stream_service,
            Want::Delete(desired::stream_service_name(&ls))
        );
        assert_eq!(p.ingress, Want::Delete("web-logstream".into()));
        assert_eq!(
            p.auth_binding,
            Want::Delete(desired::auth_binding_name("shop"))
        );
    }
}
