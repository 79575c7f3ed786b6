//! `kubectl logstream status`: per LogStream, its conditions as the
//! operator reported them, then each selected pod: sidecar injected or
//! pending a restart, the sidecar's readiness and restarts.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use logstream_operator::crd::LogStream;

use crate::error::CliError;
use crate::target::{has_sidecar, selector_string};

/// Where to look: one namespace, or all of them.
pub enum Scope {
    Namespace(String),
    All,
}

pub async fn status(client: &kube::Client, scope: &Scope) -> Result<String, CliError> {
    let (streams, where_): (Api<LogStream>, String) = match scope {
        Scope::Namespace(ns) => (Api::namespaced(client.clone(), ns), format!("in {ns}")),
        Scope::All => (Api::all(client.clone()), "in any namespace".into()),
    };
    let list = streams
        .list(&ListParams::default())
        .await
        .map_err(|e| CliError::from_kube(e, "list LogStreams"))?;
    if list.items.is_empty() {
        return Ok(format!("no LogStream {where_}\n"));
    }
    let mut out = String::new();
    for ls in &list.items {
        let ns = ls.namespace().unwrap_or_default();
        let pods = match selector_string(&ls.spec.selector) {
            Ok(sel) => {
                Api::<Pod>::namespaced(client.clone(), &ns)
                    .list(&ListParams::default().labels(&sel))
                    .await
                    .map_err(|e| CliError::from_kube(e, &format!("list the pods of {ns}")))?
                    .items
            }
            Err(_) => Vec::new(),
        };
        out.push_str(&render(ls, &pods));
    }
    Ok(out)
}

/// One LogStream and its pods as text (pure).
pub fn render(ls: &LogStream, pods: &[Pod]) -> String {
    let mut o = String::new();
    let ns = ls.namespace().unwrap_or_default();
    let st = ls.status.clone().unwrap_or_default();
    let _ = writeln!(
        o,
        "LogStream {ns}/{}: {} selected, {} with the sidecar, {} pending a restart",
        ls.name_any(),
        st.selected_pods,
        st.injected_pods,
        st.pending_restart_pods
    );
    if st.conditions.is_empty() {
        let _ = writeln!(o, "  (no status yet: is the operator running?)");
    }
    for c in &st.conditions {
        let msg = if c.message.is_empty() {
            String::new()
        } else {
            format!(": {}", c.message)
        };
        let _ = writeln!(o, "  {:<14} {:<5} {}{msg}", c.type_, c.status, c.reason);
    }
    for url in &st.urls {
        let _ = writeln!(o, "  url            {url}");
    }
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by_key(|p| p.name_any());
    for p in pods {
        let _ = writeln!(o, "  pod {:<40} {}", p.name_any(), pod_state(p));
    }
    o
}

fn pod_state(p: &Pod) -> String {
    if !has_sidecar(p) {
        return "no sidecar (restart it to inject)".into();
    }
    let status = p.status.as_ref();
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
    let name = logstream_contract::SIDECAR_CONTAINER;
    let sidecar = status.and_then(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .find(|c| c.name == name)
    });
    match sidecar {
        None => format!("sidecar not started ({phase})"),
        Some(c) => format!(
            "sidecar {}, {} restart{}",
            if c.ready { "ready" } else { "not ready" },
            c.restart_count,
            if c.restart_count == 1 { "" } else { "s" }
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_conditions_and_each_pods_sidecar() {
        let ls: LogStream = serde_json::from_value(serde_json::json!({
            "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": {"selectedPods": 2, "injectedPods": 1, "pendingRestartPods": 1,
                "conditions": [{"type": "Injected", "status": "False", "reason": "PodsPendingRestart",
                    "message": "1 of 2 selected pods run without the sidecar",
                    "lastTransitionTime": "2026-12-04T10:00:00Z"}]}
        }))
        .unwrap();
        let with: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-b"},
            "spec": {"containers": [{"name": "app"}],
                     "initContainers": [{"name": "logstream", "restartPolicy": "Always"}]},
            "status": {"phase": "Running", "initContainerStatuses": [{"name": "logstream",
                "ready": true, "restartCount": 1, "image": "", "imageID": ""}]}
        }))
        .unwrap();
        let without: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-a"}, "spec": {"containers": [{"name": "app"}]}
        }))
        .unwrap();
        let text = render(&ls, &[with, without]);
        assert_eq!(
            text,
            "LogStream shop/web: 2 selected, 1 with the sidecar, 1 pending a restart\n  \
             Injected       False PodsPendingRestart: 1 of 2 selected pods run without the sidecar\n  \
             pod web-a                                    no sidecar (restart it to inject)\n  \
             pod web-b                                    sidecar ready, 1 restart\n"
        );
    }
}
