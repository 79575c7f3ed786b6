//! Service meshes and the loopback exemption (pure).
//!
//! The streamer serves loopback clients without a token, because
//! `kubectl port-forward` arrives from 127.0.0.1 inside the pod and is
//! already authorised by the API server (`pods/portforward`). In a pod with
//! a mesh proxy that is no longer true: Istio's proxy delivers every inbound
//! connection from 127.0.0.6, Linkerd's from 127.0.0.1, so an Ingress or any
//! in-cluster client would reach the logs with no token. This module decides
//! where the exemption is safe: never in a meshed pod or namespace unless a
//! LogStream says `access.trustLoopback: true`, never when one says `false`.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::LogStream;

/// The mesh whose proxy this pod carries or will carry, if any. The mesh's
/// injector usually runs before ours (webhooks are called in name order:
/// `istio-sidecar-injector`, `linkerd-proxy-injector` < `logstream-injector`),
/// so its proxy container is often already there; its opt-in labels and
/// annotations cover the other order.
pub fn of_pod(pod: &Pod) -> Option<&'static str> {
    let containers = pod.spec.iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    });
    for c in containers {
        match c.name.as_str() {
            "istio-proxy" => return Some("istio"),
            "linkerd-proxy" => return Some("linkerd"),
            _ => {}
        }
    }
    of_meta(&pod.metadata)
}

/// The mesh a pod or namespace opts into through its labels/annotations.
pub fn of_meta(meta: &ObjectMeta) -> Option<&'static str> {
    let label = |k: &str| meta.labels.as_ref()?.get(k).map(String::as_str);
    let annotation = |k: &str| meta.annotations.as_ref()?.get(k).map(String::as_str);
    if label("istio-injection") == Some("enabled")
        || label("sidecar.istio.io/inject") == Some("true")
        || annotation("sidecar.istio.io/inject") == Some("true")
        || annotation("sidecar.istio.io/status").is_some()
        || label("istio.io/rev").is_some()
    {
        return Some("istio");
    }
    if annotation("linkerd.io/inject").is_some_and(|v| v == "enabled" || v == "ingress")
        || annotation("linkerd.io/proxy-version").is_some()
    {
        return Some("linkerd");
    }
    None
}

/// May a sidecar serve loopback clients without a token? The LogStream's
/// `access.trustLoopback` when set, else only outside a mesh.
pub fn sidecar_trusts_loopback(ls: &LogStream, pod_mesh: Option<&str>) -> bool {
    ls.spec.access.trust_loopback.unwrap_or(pod_mesh.is_none())
}

/// The shared aggregator of a namespace: no when any LogStream there says
/// no; in a meshed namespace only when every LogStream says yes.
pub fn aggregator_trusts_loopback(streams: &[LogStream], ns_mesh: Option<&str>) -> bool {
    let said: Vec<Option<bool>> = streams
        .iter()
        .map(|s| s.spec.access.trust_loopback)
        .collect();
    if said.contains(&Some(false)) {
        return false;
    }
    match ns_mesh {
        None => true,
        Some(_) => !said.is_empty() && said.iter().all(|s| *s == Some(true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ls(trust: Option<bool>) -> LogStream {
        let mut v = serde_json::json!({
            "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}}
        });
        if let Some(t) = trust {
            v["spec"]["access"] = serde_json::json!({"trustLoopback": t});
        }
        serde_json::from_value(v).unwrap()
    }

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn meshed_pods_are_recognised() {
        let plain = pod(serde_json::json!({"spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(of_pod(&plain), None);
        let istio = pod(
            serde_json::json!({"spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}}),
        );
        assert_eq!(of_pod(&istio), Some("istio"));
        let native = pod(serde_json::json!({"spec": {"containers": [{"name": "app"}],
            "initContainers": [{"name": "linkerd-proxy", "restartPolicy": "Always"}]}}));
        assert_eq!(of_pod(&native), Some("linkerd"));
        let opted = pod(
            serde_json::json!({"metadata": {"labels": {"sidecar.istio.io/inject": "true"}},
            "spec": {"containers": [{"name": "app"}]}}),
        );
        assert_eq!(of_pod(&opted), Some("istio"));
        let ns = ObjectMeta {
            annotations: Some(BTreeMap::from([(
                "linkerd.io/inject".to_string(),
                "enabled".to_string(),
            )])),
            ..ObjectMeta::default()
        };
        assert_eq!(of_meta(&ns), Some("linkerd"));
        let off = ObjectMeta {
            labels: Some(BTreeMap::from([(
                "istio-injection".to_string(),
                "disabled".to_string(),
            )])),
            ..ObjectMeta::default()
        };
        assert_eq!(of_meta(&off), None);
    }

    #[test]
    fn loopback_is_trusted_only_outside_a_mesh_unless_the_logstream_says() {
        assert!(sidecar_trusts_loopback(&ls(None), None));
        assert!(!sidecar_trusts_loopback(&ls(None), Some("istio")));
        assert!(sidecar_trusts_loopback(&ls(Some(true)), Some("istio")));
        assert!(!sidecar_trusts_loopback(&ls(Some(false)), None));

        assert!(aggregator_trusts_loopback(&[ls(None)], None));
        assert!(!aggregator_trusts_loopback(
            &[ls(None), ls(Some(false))],
            None
        ));
        assert!(!aggregator_trusts_loopback(&[ls(None)], Some("linkerd")));
        assert!(!aggregator_trusts_loopback(
            &[ls(Some(true)), ls(None)],
            Some("istio")
        ));
        assert!(aggregator_trusts_loopback(&[ls(Some(true))], Some("istio")));
    }
}
