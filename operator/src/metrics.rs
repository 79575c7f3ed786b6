//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: &'static str,
}

/// A request to the API server (`apicalls.rs` names it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCall {
    pub verb: String,
    pub resource: String,
}

pub struct Metrics {
    registry: Registry,
    /// Requests this operator sent to the API server, by verb and resource.
    pub api_requests: Family<ApiCall, Counter>,
    /// Time of one reconcile, reads to status.
    pub reconcile_seconds: Histogram,
    /// The webhook's own time per admission review, from the request to
    /// the answer (the API server's histogram adds its call on top).
    pub admission_seconds: Histogram,
    /// Applies skipped: the same object was applied lately (applied.rs).
    pub applies_skipped: Counter,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabel, Counter>,
    pub admissions: Family<Outcome, Counter>,
    pub pods_pending_restart: Gauge,
    pub cert_renewals: Counter,
    /// Admissions that read the namespace's LogStreams from the API server
    /// instead of the webhook's cache (cache not synced yet, or it held none
    /// for a namespace the API server calls us for).
    pub admission_lists: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("logstream_operator");
        let m = Metrics {
            registry: Registry::default(),
            api_requests: Family::default(),
            applies_skipped: Counter::default(),
            reconcile_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            admission_seconds: Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5,
            ]),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            admissions: Family::default(),
            pods_pending_restart: Gauge::default(),
            cert_renewals: Counter::default(),
            admission_lists: Counter::default(),
        };
        registry.register("reconciles", "Reconciliations run", m.reconciles.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Time of a reconciliation, from its reads to its status",
            prometheus_client::registry::Unit::Seconds,
            m.reconcile_seconds.clone(),
        );
        registry.register_with_unit(
            "admission_duration",
            "Time the injection webhook takes to answer an admission review",
            prometheus_client::registry::Unit::Seconds,
            m.admission_seconds.clone(),
        );
        registry.register(
            "applies_skipped",
            "Server-side applies not sent: the same object was applied lately",
            m.applies_skipped.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by verb and resource (client side)",
            m.api_requests.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciliations failed, by error",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "admissions",
            "Pod admissions reviewed, by outcome",
            m.admissions.clone(),
        );
        registry.register(
            "pods_pending_restart",
            "Selected pods running without the sidecar (last reconcile)",
            m.pods_pending_restart.clone(),
        );
        registry.register(
            "cert_renewals",
            "Webhook certificates issued",
            m.cert_renewals.clone(),
        );
        registry.register(
            "admission_lists",
            "Admissions that listed LogStreams from the API server instead of the webhook's cache",
            m.admission_lists.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
