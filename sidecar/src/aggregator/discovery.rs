//! Finds the sidecars to pull: fixed URLs (`--source`), or the pods of a
//! namespace that carry the injection label, watched (never polled) through
//! the Kubernetes API.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::watch;

/// Upstream key (pod name or URL) → base URL.
pub type Upstreams = BTreeMap<String, String>;

/// Default sidecar port when the pod does not name one.
pub const DEFAULT_PORT: i32 = 7680;

/// Where a pod's sidecar listens, if it can be reached now. Terminating pods
/// stay: their sidecar drains and must be read to the end.
pub fn pod_upstream(pod: &Pod) -> Option<(String, String)> {
    let name = pod.metadata.name.clone()?;
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.as_ref().filter(|ip| !ip.is_empty())?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let port = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name == "logstream")
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("logstream"))
        .map_or(DEFAULT_PORT, |p| p.container_port);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    Some((name, format!("http://{host}:{port}")))
}

/// Watches the labelled pods of `namespace` and publishes their upstreams.
pub async fn watch_pods(
    client: kube::Client,
    namespace: String,
    label: String,
    tx: watch::Sender<Upstreams>,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut stream = watcher(api, watcher::Config::default().labels(&label)).boxed();
    let mut current: BTreeMap<String, Pod> = BTreeMap::new();
    let mut init: Option<BTreeMap<String, Pod>> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Init) => init = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(p)) => {
                if let (Some(buf), Some(n)) = (init.as_mut(), p.metadata.name.clone()) {
                    buf.insert(n, p);
                }
            }
            Ok(watcher::Event::InitDone) => current = init.take().unwrap_or_default(),
            Ok(watcher::Event::Apply(p)) => {
                if let Some(n) = p.metadata.name.clone() {
                    current.insert(n, p);
                }
            }
            Ok(watcher::Event::Delete(p)) => {
                if let Some(n) = &p.metadata.name {
                    current.remove(n);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                continue;
            }
        }
        if init.is_none() {
            let ups: Upstreams = current.values().filter_map(pod_upstream).collect();
            tx.send_if_modified(|old| {
                let changed = *old != ups;
                *old = ups;
                changed
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_upstream_uses_the_named_port_and_skips_unreachable_pods() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1"},
            "spec": {
                "initContainers": [{"name": "logstream", "ports": [{"name": "logstream", "containerPort": 7999}]}],
                "containers": [{"name": "app"}]
            },
            "status": {"phase": "Running", "podIP": "10.1.2.3"}
        }))
        .unwrap();
        assert_eq!(
            pod_upstream(&pod),
            Some(("web-1".into(), "http://10.1.2.3:7999".into()))
        );
        let mut pending = pod.clone();
        pending.status.as_mut().unwrap().pod_ip = None;
        assert_eq!(pod_upstream(&pending), None);
        let mut done = pod;
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(pod_upstream(&done), None);
    }
}
