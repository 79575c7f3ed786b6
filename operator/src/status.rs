//! A LogStream's status, from what the reconcile observed (pure): its
//! conditions (`Ready`, `Injected`, `FilesReadable`, `Degraded`, and
//! `RouteReady` when it asks for an HTTPRoute) with
//! transition times kept while a condition does not change, the pod counts
//! and the names of pods still waiting for a restart.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{LogStream, LogStreamStatus};
use crate::desired;
use crate::desired::routing::RouteOutcome;
use crate::keys::AGGREGATOR;

/// Pods named in `pendingRestart`.
const PENDING_LISTED: usize = 20;
/// Pods named, with their reason, in the Injected condition.
const BLOCKED_LISTED: usize = 5;

/// Status from what was observed (pure). `blocked`: selected pods the
/// webhook cannot inject, with why; `files`: the probe of a ready sidecar
/// (`ok`, reason, message), `None` before one runs; `route`: what became of
/// the HTTPRoute, `None` when none is asked for.
#[allow(clippy::too_many_arguments)]
pub fn status(
    ls: &LogStream,
    old: &LogStreamStatus,
    selected: usize,
    injected: usize,
    pending: &[&Pod],
    blocked: &[(String, String)],
    files: Option<(bool, &str, String)>,
    route: Option<&RouteOutcome>,
) -> LogStreamStatus {
    let c = Conditions {
        old,
        generation: ls.metadata.generation,
    };
    let pending_n = pending.len();
    let unread = files
        .as_ref()
        .is_some_and(|(ok, reason, _)| !ok && *reason == "PathsNotTailed");
    let files_cond = match files {
        Some((ok, reason, message)) => c.flag("FilesReadable", ok, reason, message),
        None => c.make(
            "FilesReadable",
            "Unknown",
            "NoSidecarRunning",
            "no injected pod has a ready sidecar yet".into(),
        ),
    };
    let degraded = match degraded_reason(ls, pending_n, blocked, unread) {
        Some((reason, message)) => c.flag("Degraded", true, reason, message),
        None => c.flag("Degraded", false, "AsExpected", String::new()),
    };
    let mut conditions = vec![
        c.flag(
            "Ready",
            true,
            "Reconciled",
            format!("Service, Ingress and {AGGREGATOR} applied"),
        ),
        injected_condition(&c, ls, selected, pending_n, blocked),
        files_cond,
        degraded,
    ];
    conditions.extend(route.map(|r| route_condition(&c, r)));
    LogStreamStatus {
        observed_generation: c.generation,
        conditions,
        selected_pods: selected as i32,
        injected_pods: injected as i32,
        pending_restart_pods: pending_n as i32,
        pending_restart: pending
            .iter()
            .take(PENDING_LISTED)
            .map(|p| p.name_any())
            .collect(),
        urls: desired::urls(ls),
    }
}

/// `RouteReady`: whether the HTTPRoute is in place as asked.
fn route_condition(c: &Conditions<'_>, r: &RouteOutcome) -> Condition {
    match r {
        RouteOutcome::Applied { refused: None } => c.flag(
            "RouteReady",
            true,
            "Applied",
            "HTTPRoute applied; the Gateway's own verdict is in the HTTPRoute's status".into(),
        ),
        RouteOutcome::Applied {
            refused: Some(why),
        } => c.flag(
            "RouteReady",
            false,
            "NotAccepted",
            format!("a Gateway did not accept the HTTPRoute: {why}"),
        ),
        RouteOutcome::PersistenceDropped => c.flag(
            "RouteReady",
            false,
            "SessionPersistenceDropped",
            "HTTPRoute applied without sessionPersistence: this cluster's HTTPRoute CRD has no such \
             field (Gateway API standard channel). Install the experimental channel's CRDs, set \
             your implementation's own cookie affinity (docs/routing.md), or set \
             gateway.sessionPersistence: None"
                .into(),
        ),
        RouteOutcome::NotInstalled => c.flag(
            "RouteReady",
            false,
            "GatewayAPINotInstalled",
            "the API server does not serve HTTPRoute (gateway.networking.k8s.io/v1): install the \
             Gateway API CRDs; the route is applied on the next reconcile"
                .into(),
        ),
    }
}

/// Makes conditions for one status, keeping each one's transition time
/// from the old status while its status value does not change.
/// Adds `HistoryWritable` for a LogStream that asks for a history on disk:
/// what the aggregators' `/readyz` say of it ([`crate::probe::history_condition`];
/// `None`: no aggregator answered yet).
pub fn add_history_condition(
    ls: &LogStream,
    old: &LogStreamStatus,
    status: &mut LogStreamStatus,
    history: Option<(bool, &str, String)>,
) {
    if ls.spec.aggregator.history.is_none() {
        return;
    }
    let c = Conditions {
        old,
        generation: ls.metadata.generation,
    };
    status.conditions.push(match history {
        Some((ok, reason, message)) => c.flag("HistoryWritable", ok, reason, message),
        None => c.make(
            "HistoryWritable",
            "Unknown",
            "NoAggregatorRunning",
            "no aggregator with a history on disk has answered yet".into(),
        ),
    });
}

struct Conditions<'a> {
    old: &'a LogStreamStatus,
    generation: Option<i64>,
}

impl Conditions<'_> {
    fn make(&self, type_: &str, status: &str, reason: &str, message: String) -> Condition {
        let last = self
            .old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.generation,
            last_transition_time: last,
        }
    }

    fn flag(&self, type_: &str, ok: bool, reason: &str, message: String) -> Condition {
        self.make(type_, if ok { "True" } else { "False" }, reason, message)
    }
}

fn injected_condition(
    c: &Conditions<'_>,
    ls: &LogStream,
    selected: usize,
    pending_n: usize,
    blocked: &[(String, String)],
) -> Condition {
    if selected == 0 {
        return c.flag(
            "Injected",
            true,
            "NoPodsSelected",
            "no pod matches the selector yet".into(),
        );
    }
    if !blocked.is_empty() {
        return c.flag(
            "Injected",
            false,
            "CannotInject",
            blocked_message(selected, pending_n, blocked),
        );
    }
    if pending_n == 0 {
        return c.flag(
            "Injected",
            true,
            "AllInjected",
            format!("all {selected} selected pods have the sidecar"),
        );
    }
    c.flag(
        "Injected",
        false,
        "PodsPendingRestart",
        format!(
            "{pending_n} of {selected} selected pods run without the sidecar (created before the LogStream or while the webhook was unavailable){}",
            if ls.spec.restart_pods {
                "; their owners are rolled once per LogStream generation (bare pods need a manual restart)"
            } else {
                "; set restartPods: true or restart them"
            }
        ),
    )
}

/// The first [`BLOCKED_LISTED`] blocked pods with their reasons, how many
/// more, and how many others only wait for a restart.
fn blocked_message(selected: usize, pending_n: usize, blocked: &[(String, String)]) -> String {
    let listed: Vec<String> = blocked
        .iter()
        .take(BLOCKED_LISTED)
        .map(|(pod, why)| format!("{pod}: {why}"))
        .collect();
    let mut message = format!(
        "{} of {selected} selected pods cannot get the sidecar: {}",
        blocked.len(),
        listed.join("; ")
    );
    if blocked.len() > BLOCKED_LISTED {
        message.push_str(&format!("; … and {} more", blocked.len() - BLOCKED_LISTED));
    }
    if pending_n > blocked.len() {
        message.push_str(&format!(
            "; {} more run without it until restarted",
            pending_n - blocked.len()
        ));
    }
    message
}

/// Why the LogStream is degraded, most pressing first.
fn degraded_reason(
    ls: &LogStream,
    pending_n: usize,
    blocked: &[(String, String)],
    unread: bool,
) -> Option<(&'static str, String)> {
    if !blocked.is_empty() {
        Some((
            "CannotInject",
            format!(
                "{} selected pods cannot get the sidecar: see Injected",
                blocked.len()
            ),
        ))
    } else if pending_n > 0 && !ls.spec.restart_pods {
        Some((
            "PodsWithoutSidecar",
            format!("{pending_n} selected pods cannot be streamed until restarted"),
        ))
    } else if unread {
        Some((
            "PathsNotTailed",
            "some matching log files cannot be read by the sidecar: see FilesReadable".into(),
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
