//! How the operator runs its data-plane containers (the injected sidecar
//! and the per-namespace aggregator): pull policy, user and group, and where
//! the aggregator's pods go. Cluster-wide settings from the chart, passed as
//! flags; the LogStream's own fields (image, resources, runAsGroup) win.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{LocalObjectReference, ResourceRequirements, Toleration};
use serde::Deserialize;

use crate::keys::SIDECAR_UID;

/// User and group of the data-plane containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// `None`: left to the platform (OpenShift's restricted SCC assigns one
    /// from the namespace's range and rejects any other).
    pub user: Option<i64>,
    /// Default primary group when the app's is unknown; `None` as above.
    pub group: Option<i64>,
}

impl Default for RunAs {
    fn default() -> RunAs {
        RunAs {
            user: Some(SIDECAR_UID),
            group: Some(SIDECAR_UID),
        }
    }
}

/// The aggregator Deployment's pod settings (`--aggregator-pod`, JSON).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AggregatorPod {
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    #[serde(default)]
    pub priority_class_name: Option<String>,
}

/// Requests of `cpu` and `memory`, and a `memory_limit` (no CPU limit:
/// throttling a streamer only delays lines).
pub fn resources(cpu: &str, memory: &str, memory_limit: &str) -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The aggregator's resources when none are configured: it holds the
/// namespace's merged history (100,000 records / 64 MiB by default).
pub fn default_aggregator_resources() -> ResourceRequirements {
    resources("50m", "96Mi", "512Mi")
}

/// A user or group id, or none ("leave it to the platform").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalId(pub Option<i64>);

/// `--run-as-user` / `--run-as-group`: a number, or empty for "leave it to
/// the platform".
pub fn parse_id(s: &str) -> Result<OptionalId, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(OptionalId(None));
    }
    match s.parse::<i64>() {
        Ok(0) => Err("0 (root) is not allowed: the data plane runs as non-root".into()),
        Ok(n) if n > 0 => Ok(OptionalId(Some(n))),
        _ => Err(format!(
            "{s:?} is not a user or group id (a positive number, or empty)"
        )),
    }
}

/// `--aggregator-pod`: the chart's `aggregator` values as JSON.
pub fn parse_aggregator_pod(s: &str) -> Result<AggregatorPod, String> {
    if s.trim().is_empty() {
        return Ok(AggregatorPod::default());
    }
    let mut pod: AggregatorPod =
        serde_json::from_str(s).map_err(|e| format!("--aggregator-pod: {e}"))?;
    // The chart renders its defaults ({} and ""): they mean "not set".
    if pod
        .resources
        .as_ref()
        .is_some_and(|r| r.requests.is_none() && r.limits.is_none() && r.claims.is_none())
    {
        pod.resources = None;
    }
    pod.priority_class_name = pod.priority_class_name.filter(|p| !p.is_empty());
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_aggregator_pod_parse_with_clear_errors() {
        assert_eq!(parse_id("65532"), Ok(OptionalId(Some(65532))));
        assert_eq!(parse_id(""), Ok(OptionalId(None)));
        assert!(parse_id("0").unwrap_err().contains("non-root"));
        assert!(parse_id("-3").is_err());
        let pod = parse_aggregator_pod(
            r#"{"nodeSelector":{"pool":"infra"},"tolerations":[{"key":"infra","operator":"Exists","effect":"NoSchedule"}],
                "imagePullSecrets":[{"name":"regcred"}],"resources":{"limits":{"memory":"1Gi"}},"priorityClassName":"high"}"#,
        )
        .unwrap();
        assert_eq!(pod.node_selector["pool"], "infra");
        assert_eq!(pod.image_pull_secrets[0].name, "regcred");
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
        assert_eq!(parse_aggregator_pod("").unwrap(), AggregatorPod::default());
        let chart_defaults = r#"{"imagePullSecrets":[],"nodeSelector":{},"priorityClassName":"","resources":{},"tolerations":[]}"#;
        assert_eq!(
            parse_aggregator_pod(chart_defaults).unwrap(),
            AggregatorPod::default()
        );
        assert!(
            parse_aggregator_pod(r#"{"nodeSelectr":{}}"#)
                .unwrap_err()
                .contains("unknown field `nodeSelectr`")
        );
    }
}
