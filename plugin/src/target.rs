//! What `kubectl logstream tail TARGET` names, and the pods it stands for:
//! a pod, a workload (`deploy/`, `sts/`, `ds/`, `rs/`), a LogStream (`ls/`)
//! or a label selector (`-l`). Parsing and selector rendering are pure;
//! [`resolve`] reads the named object once.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use logstream_operator::crd::LogStream;

use crate::error::CliError;

/// A workload kind whose pods a selector picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pod(String),
    Workload(Workload, String),
    LogStream(String),
    Selector(String),
}

/// The pods a target stands for: one by name, or all a selector matches
/// (pods that start later included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pods {
    Named(String),
    Selected(String),
}

impl Target {
    /// `TARGET` as kubectl spells resources (`deploy/web`, `deployment/web`,
    /// `deployments.apps/web`, a bare name is a pod), or `-l SELECTOR`.
    pub fn parse(target: Option<&str>, selector: Option<&str>) -> Result<Target, CliError> {
        let usage = |m: String| Err(CliError::Usage(m));
        let t = match (target, selector) {
            (Some(_), Some(_)) => return usage("give a TARGET or -l SELECTOR, not both".into()),
            (None, None) => {
                return usage(
                    "name what to tail: a pod, deploy/NAME, sts/NAME, ds/NAME, rs/NAME, ls/NAME or -l SELECTOR".into(),
                );
            }
            (None, Some(s)) if s.trim().is_empty() => {
                return usage("-l: an empty selector would select every pod".into());
            }
            (None, Some(s)) => return Ok(Target::Selector(s.trim().to_string())),
            (Some(t), None) => t,
        };
        let Some((kind, name)) = t.split_once('/') else {
            return valid_name(t).map(|n| Target::Pod(n.into()));
        };
        let name = valid_name(name)?.to_string();
        let kind = kind.to_ascii_lowercase();
        // `deployments.apps` and `deployment.v1.apps` name the same kind.
        let kind = kind.split('.').next().unwrap_or_default();
        Ok(match kind {
            "po" | "pod" | "pods" => Target::Pod(name),
            "deploy" | "deployment" | "deployments" => Target::Workload(Workload::Deployment, name),
            "sts" | "statefulset" | "statefulsets" => Target::Workload(Workload::StatefulSet, name),
            "ds" | "daemonset" | "daemonsets" => Target::Workload(Workload::DaemonSet, name),
            "rs" | "replicaset" | "replicasets" => Target::Workload(Workload::ReplicaSet, name),
            "ls" | "logstream" | "logstreams" => Target::LogStream(name),
            other => {
                return usage(format!(
                    "{other:?} is not a kind logstream can tail: use pod, deploy, sts, ds, rs or ls"
                ));
            }
        })
    }
}

fn valid_name(n: &str) -> Result<&str, CliError> {
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(n)
    } else {
        Err(CliError::Usage(format!(
            "{n:?} is not a Kubernetes object name (lower-case letters, digits, '-' and '.')"
        )))
    }
}

/// A label selector as the API's `labelSelector` parameter spells it.
/// Empty selectors are refused: they would select every pod.
pub fn selector_string(sel: &LabelSelector) -> Result<String, String> {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            op => return Err(format!("unknown selector operator {op:?}")),
        });
    }
    if parts.is_empty() {
        return Err("its selector is empty (it would select every pod)".into());
    }
    Ok(parts.join(","))
}

/// Reads the object a target names and returns its pods.
pub async fn resolve(client: &kube::Client, ns: &str, target: &Target) -> Result<Pods, CliError> {
    let (kind, name, sel) = match target {
        Target::Pod(name) => return Ok(Pods::Named(name.clone())),
        Target::Selector(s) => return Ok(Pods::Selected(s.clone())),
        Target::Workload(kind, name) => {
            let sel = match kind {
                Workload::Deployment => {
                    spec_selector::<Deployment>(client, ns, name, |d| {
                        d.spec.as_ref().map(|s| s.selector.clone())
                    })
                    .await?
                }
                Workload::StatefulSet => {
                    spec_selector::<StatefulSet>(client, ns, name, |d| {
                        d.spec.as_ref().map(|s| s.selector.clone())
                    })
                    .await?
                }
                Workload::DaemonSet => {
                    spec_selector::<DaemonSet>(client, ns, name, |d| {
                        d.spec.as_ref().map(|s| s.selector.clone())
                    })
                    .await?
                }
                Workload::ReplicaSet => {
                    spec_selector::<ReplicaSet>(client, ns, name, |d| {
                        d.spec.as_ref().map(|s| s.selector.clone())
                    })
                    .await?
                }
            };
            (format!("{kind:?}").to_lowercase(), name, sel)
        }
        Target::LogStream(name) => {
            let sel =
                spec_selector::<LogStream>(client, ns, name, |ls| Some(ls.spec.selector.clone()))
                    .await?;
            ("logstream".to_string(), name, sel)
        }
    };
    selector_string(&sel)
        .map(Pods::Selected)
        .map_err(|why| CliError::NotFound(format!("{kind} {ns}/{name}: {why}")))
}

async fn spec_selector<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sel: impl Fn(&K) -> Option<LabelSelector>,
) -> Result<LabelSelector, CliError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_lowercase();
    let obj = Api::<K>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| CliError::from_kube(e, &format!("get {kind} {ns}/{name}")))?;
    sel(&obj).ok_or_else(|| CliError::NotFound(format!("{kind} {ns}/{name} has no selector")))
}

/// Whether a pod carries the logstream sidecar (native or classic).
pub fn has_sidecar(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let name = logstream_contract::SIDECAR_CONTAINER;
    spec.is_some_and(|s| {
        s.containers.iter().any(|c| c.name == name)
            || s.init_containers.iter().flatten().any(|c| c.name == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn t(s: &str) -> Result<Target, CliError> {
        Target::parse(Some(s), None)
    }

    #[test]
    fn targets_as_kubectl_spells_them() {
        assert_eq!(t("web-1").unwrap(), Target::Pod("web-1".into()));
        assert_eq!(t("pod/web-1").unwrap(), Target::Pod("web-1".into()));
        for k in [
            "deploy",
            "deployment",
            "deployments",
            "deployments.apps",
            "Deployment",
        ] {
            assert_eq!(
                t(&format!("{k}/web")).unwrap(),
                Target::Workload(Workload::Deployment, "web".into()),
                "{k}"
            );
        }
        assert_eq!(
            t("sts/db").unwrap(),
            Target::Workload(Workload::StatefulSet, "db".into())
        );
        assert_eq!(
            t("ds/agent").unwrap(),
            Target::Workload(Workload::DaemonSet, "agent".into())
        );
        assert_eq!(t("ls/demo").unwrap(), Target::LogStream("demo".into()));
        assert_eq!(
            Target::parse(None, Some(" app=web ")).unwrap(),
            Target::Selector("app=web".into())
        );
    }

    #[test]
    fn bad_targets_are_usage_errors_that_say_why() {
        for (target, sel, says) in [
            (Some("svc/web"), None, "not a kind"),
            (Some("deploy/"), None, "not a Kubernetes object name"),
            (Some("Web"), None, "not a Kubernetes object name"),
            (Some("deploy/a/b"), None, "not a Kubernetes object name"),
            (Some("web"), Some("app=web"), "not both"),
            (None, None, "name what to tail"),
            (None, Some(" "), "every pod"),
        ] {
            match Target::parse(target, sel) {
                Err(CliError::Usage(m)) => assert!(m.contains(says), "{target:?}: {m}"),
                other => panic!("{target:?} {sel:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn selectors_render_as_the_api_reads_them() {
        let sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
                LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["x".into()]),
                },
                LabelSelectorRequirement {
                    key: "team".into(),
                    operator: "Exists".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_string(&sel).unwrap(),
            "app=web,tier in (a,b),!canary,zone notin (x),team"
        );
        assert!(selector_string(&LabelSelector::default()).is_err());
    }
}
