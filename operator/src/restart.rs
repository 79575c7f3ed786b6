//! `restartPods`, as pure functions: which pods a LogStream waits for, which
//! owners to roll so that their pods come back through the webhook, and the
//! patch that rolls them. The reconciler ([`crate::controller`]) reads the
//! ReplicaSets and the owners' templates, calls these, then patches.
//!
//! One restart per owner per need: the patch records on the owner's pod
//! template which LogStream generation it was rolled for
//! ([`RESTARTED_FOR`]). While that record matches, the rollout is under way
//! or done, and old pods still lacking the sidecar are no reason to roll
//! again. Without the record every pod event of the rollout re-patched the
//! template with a fresh timestamp, each patch starting another ReplicaSet.
//!
//! PodDisruptionBudgets: nothing here deletes or evicts a pod. Changing the
//! template lets the owner's own controller replace its pods with its normal
//! update strategy (a Deployment's rolling update within maxUnavailable and
//! maxSurge, a StatefulSet's ordered or partitioned update, a DaemonSet's
//! maxUnavailable), exactly like `kubectl rollout restart`; as one need rolls
//! an owner once, rollouts are never stacked on top of each other.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::LogStream;
use crate::keys::{RESTARTED_AT, RESTARTED_FOR};
use crate::mutate::{is_injected, opted_out, selects};

/// The pods a LogStream accounts for, by state.
#[derive(Debug, Default)]
pub struct Census<'a> {
    pub selected: Vec<&'a Pod>,
    pub injected: Vec<&'a Pod>,
    /// Selected pods running without the sidecar.
    pub pending: Vec<&'a Pod>,
}

/// Pods that finished (`Succeeded`, `Failed`) never run again: a sidecar
/// would not matter, and rolling their owner would not replace them.
pub fn finished(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
}

/// Does `ls` account for this pod? Pods on their way out (being deleted or
/// finished) and pods that opted out of injection are not counted at all:
/// they never get the sidecar, so they are never waiting for it.
pub fn counts(ls: &LogStream, pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !finished(pod)
        && !opted_out(pod)
        && selects(ls, pod.labels())
}

pub fn census<'a>(ls: &LogStream, pods: &'a [Pod]) -> Census<'a> {
    let selected: Vec<&Pod> = pods.iter().filter(|p| counts(ls, p)).collect();
    let (injected, pending) = selected.iter().copied().partition(|p| is_injected(p));
    Census {
        selected,
        injected,
        pending,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// An owner whose pod template can be rolled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}/{}", self.kind, self.name)
    }
}

fn controller_of(pod: &Pod) -> Option<(&str, &str)> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

/// The ReplicaSets controlling these pods: the reconciler reads them to find
/// their Deployments.
pub fn replica_sets(pods: &[&Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| controller_of(p))
        .filter(|(kind, _)| *kind == "ReplicaSet")
        .map(|(_, name)| name.to_string())
        .collect()
}

/// The Deployment controlling a ReplicaSet, if any.
pub fn deployment_of(rs: &ReplicaSet) -> Option<String> {
    rs.owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "Deployment")
        .map(|o| o.name.clone())
}

/// The owner to roll for a pod. `deployments` maps ReplicaSet names to their
/// Deployments. Bare pods, Jobs and bare ReplicaSets have none: rolling
/// cannot replace their pods, which stay reported.
pub fn workload_of(pod: &Pod, deployments: &BTreeMap<String, String>) -> Option<Workload> {
    let (kind, name) = controller_of(pod)?;
    let (kind, name) = match kind {
        "ReplicaSet" => (WorkloadKind::Deployment, deployments.get(name)?.as_str()),
        "StatefulSet" => (WorkloadKind::StatefulSet, name),
        "DaemonSet" => (WorkloadKind::DaemonSet, name),
        _ => return None,
    };
    Some(Workload {
        kind,
        name: name.to_string(),
    })
}

fn identity(ls: &LogStream) -> String {
    // The uid tells a re-created LogStream of the same name from the old one;
    // objects built in memory have none.
    ls.uid().unwrap_or_else(|| ls.name_any())
}

/// What a restart for `ls` is for, as recorded in [`RESTARTED_FOR`]: a new
/// generation (e.g. a changed selector) is a new need, a new pod event is not.
pub fn need(ls: &LogStream) -> String {
    format!(
        "{}/{}",
        identity(ls),
        ls.metadata.generation.unwrap_or_default()
    )
}

/// Of the live LogStreams (`streams`) with `restartPods` that select the pod,
/// the first by name rolls its owner. One LogStream per pod: two that each
/// overwrote the other's record would roll the owner back and forth.
pub fn responsible<'a>(pod: &Pod, streams: &'a [LogStream]) -> Option<&'a LogStream> {
    streams
        .iter()
        .filter(|s| s.spec.restart_pods && selects(s, pod.labels()))
        .min_by_key(|s| s.name_any())
}

/// The owners whose pods `ls` waits for and is responsible for rolling.
/// `pending` comes from [`census`]; the reconciler then reads these owners'
/// templates for [`to_restart`].
pub fn candidates(
    ls: &LogStream,
    streams: &[LogStream],
    pending: &[&Pod],
    deployments: &BTreeMap<String, String>,
) -> BTreeSet<Workload> {
    if !ls.spec.restart_pods {
        return BTreeSet::new();
    }
    let me = identity(ls);
    pending
        .iter()
        .filter(|p| responsible(p, streams).is_some_and(|s| identity(s) == me))
        .filter_map(|p| workload_of(p, deployments))
        .collect()
}

/// The owners to patch: those whose template does not record [`need`] yet.
/// `records` holds the [`RESTARTED_FOR`] value (if any) of each candidate
/// that still exists.
pub fn to_restart(ls: &LogStream, records: &BTreeMap<Workload, Option<String>>) -> Vec<Workload> {
    let need = need(ls);
    records
        .iter()
        .filter(|(_, rec)| rec.as_deref() != Some(need.as_str()))
        .map(|(w, _)| w.clone())
        .collect()
}

/// The [`RESTARTED_FOR`] record of a pod template's annotations.
pub fn record(template_annotations: &BTreeMap<String, String>) -> Option<String> {
    template_annotations.get(RESTARTED_FOR).cloned()
}

/// Merge patch rolling an owner for `ls`; `stamp` is the current time (RFC 3339).
pub fn restart_patch(ls: &LogStream, stamp: &str) -> serde_json::Value {
    serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT: stamp,
            RESTARTED_FOR: need(ls),
        }}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{INJECTED_ANNOTATION, OPT_OUT_LABEL};

    fn stream(name: &str, generation: i64, restart: bool) -> LogStream {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                         "generation": generation},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "restartPods": restart}
        }))
        .unwrap()
    }

    /// A pod of `owner` (kind, name), with extra labels, annotations, phase.
    fn pod(
        name: &str,
        owner: Option<(&str, &str)>,
        extra_labels: serde_json::Value,
        annotations: serde_json::Value,
        phase: &str,
    ) -> Pod {
        let mut labels = serde_json::json!({"app": "web"});
        if let (Some(l), Some(extra)) = (labels.as_object_mut(), extra_labels.as_object()) {
            l.extend(extra.clone());
        }
        let owners: Vec<serde_json::Value> = owner
            .into_iter()
            .map(|(kind, name)| {
                serde_json::json!({"apiVersion": "apps/v1", "kind": kind, "name": name,
                                   "uid": format!("uid-{name}"), "controller": true})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": labels,
                         "annotations": annotations, "ownerReferences": owners},
            "spec": {"containers": [{"name": "app"}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    fn old_pod(name: &str) -> Pod {
        pod(
            name,
            Some(("ReplicaSet", "web-old")),
            serde_json::json!({}),
            serde_json::json!({}),
            "Running",
        )
    }

    fn new_pod(name: &str) -> Pod {
        pod(
            name,
            Some(("ReplicaSet", "web-new")),
            serde_json::json!({}),
            serde_json::json!({INJECTED_ANNOTATION: "web", RESTARTED_FOR: "uid-web/3"}),
            "Running",
        )
    }

    fn deployments() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("web-old".to_string(), "web".to_string()),
            ("web-new".to_string(), "web".to_string()),
        ])
    }

    fn web_deployment() -> Workload {
        Workload {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
        }
    }

    /// The whole decision, as the reconciler takes it, with `record` as the
    /// Deployment's current template record.
    fn decide(ls: &LogStream, pods: &[Pod], record: Option<&str>) -> Vec<Workload> {
        let c = census(ls, pods);
        let cands = candidates(ls, std::slice::from_ref(ls), &c.pending, &deployments());
        let records = cands
            .into_iter()
            .map(|w| (w, record.map(str::to_string)))
            .collect();
        to_restart(ls, &records)
    }

    #[test]
    fn first_need_rolls_the_deployment_once() {
        let ls = stream("web", 3, true);
        let pods = [old_pod("web-old-1"), old_pod("web-old-2")];
        assert_eq!(
            replica_sets(&census(&ls, &pods).pending),
            ["web-old".to_string()].into()
        );
        assert_eq!(decide(&ls, &pods, None), [web_deployment()]);
        let patch = restart_patch(&ls, "2025-01-01T00:00:00Z");
        let ann = &patch["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(ann[RESTARTED_FOR], "uid-web/3");
        assert_eq!(ann[RESTARTED_AT], "2025-01-01T00:00:00Z");
        // Without restartPods nothing is rolled, the pods stay reported.
        let off = stream("web", 3, false);
        assert_eq!(census(&off, &pods).pending.len(), 2);
        assert!(decide(&off, &pods, None).is_empty());
    }

    #[test]
    fn owner_already_rolled_for_this_generation_is_not_patched_again() {
        // Mid-rollout: old pods still lack the sidecar, new ones have it.
        let ls = stream("web", 3, true);
        let pods = [old_pod("web-old-1"), new_pod("web-new-1")];
        let c = census(&ls, &pods);
        assert_eq!(
            (c.selected.len(), c.injected.len(), c.pending.len()),
            (2, 1, 1)
        );
        assert!(decide(&ls, &pods, Some("uid-web/3")).is_empty());
    }

    #[test]
    fn a_new_generation_rolls_once_more() {
        let ls = stream("web", 4, true);
        let pods = [old_pod("web-old-1")];
        assert_eq!(decide(&ls, &pods, Some("uid-web/3")), [web_deployment()]);
        // Once patched, the record matches: no second patch.
        let patch = restart_patch(&ls, "now");
        let rec = patch["spec"]["template"]["metadata"]["annotations"][RESTARTED_FOR].as_str();
        assert!(decide(&ls, &pods, rec).is_empty());
        // A re-created LogStream of the same name is a new need too.
        let mut again = stream("web", 3, true);
        again.metadata.uid = Some("uid-web-2".into());
        assert_eq!(decide(&again, &pods, Some("uid-web/3")), [web_deployment()]);
    }

    #[test]
    fn opted_out_and_finished_pods_are_neither_pending_nor_restarted() {
        let ls = stream("web", 3, true);
        let pods = [
            pod(
                "manual",
                Some(("ReplicaSet", "web-old")),
                serde_json::json!({OPT_OUT_LABEL: "false"}),
                serde_json::json!({}),
                "Running",
            ),
            pod(
                "done",
                Some(("ReplicaSet", "web-old")),
                serde_json::json!({}),
                serde_json::json!({}),
                "Succeeded",
            ),
            pod(
                "crashed",
                Some(("StatefulSet", "db")),
                serde_json::json!({}),
                serde_json::json!({}),
                "Failed",
            ),
        ];
        let c = census(&ls, &pods);
        assert!(c.pending.is_empty() && c.selected.is_empty());
        assert!(decide(&ls, &pods, None).is_empty());
        // `inject: "true"` is no opt-out.
        let p = pod(
            "p",
            Some(("ReplicaSet", "web-old")),
            serde_json::json!({OPT_OUT_LABEL: "true"}),
            serde_json::json!({}),
            "Pending",
        );
        assert_eq!(census(&ls, std::slice::from_ref(&p)).pending.len(), 1);
    }

    #[test]
    fn owners_by_kind() {
        let w = |kind: &str, name: &str| {
            let p = pod(
                "p",
                Some((kind, name)),
                serde_json::json!({}),
                serde_json::json!({}),
                "Running",
            );
            workload_of(&p, &deployments()).map(|w| w.to_string())
        };
        assert_eq!(
            w("ReplicaSet", "web-old").as_deref(),
            Some("Deployment/web")
        );
        assert_eq!(w("StatefulSet", "db").as_deref(), Some("StatefulSet/db"));
        assert_eq!(w("DaemonSet", "agent").as_deref(), Some("DaemonSet/agent"));
        assert_eq!(w("ReplicaSet", "bare-rs"), None);
        assert_eq!(w("Job", "migrate"), None);
        let bare = pod(
            "bare",
            None,
            serde_json::json!({}),
            serde_json::json!({}),
            "Running",
        );
        assert_eq!(workload_of(&bare, &deployments()), None);
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-old", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]}
        }))
        .unwrap();
        assert_eq!(deployment_of(&rs).as_deref(), Some("web"));
    }

    #[test]
    fn one_logstream_rolls_a_pod_selected_by_several() {
        // Both select the pods: only the first by name with restartPods rolls,
        // so the two never overwrite each other's record.
        let a = stream("a", 1, true);
        let b = stream("b", 1, true);
        let streams = [b.clone(), a.clone()];
        let pods = [old_pod("web-old-1")];
        let pending = census(&a, &pods).pending;
        assert_eq!(
            candidates(&a, &streams, &pending, &deployments()),
            [web_deployment()].into()
        );
        assert!(candidates(&b, &streams, &pending, &deployments()).is_empty());
        // Without restartPods on `a`, `b` takes over.
        let streams = [b.clone(), stream("a", 1, false)];
        assert_eq!(
            candidates(&b, &streams, &pending, &deployments()),
            [web_deployment()].into()
        );
    }
}
