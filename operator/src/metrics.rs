//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: &'static str,
}

pub struct Metrics {
    registry: Registry,
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
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            admissions: Family::default(),
            pods_pending_restart: Gauge::default(),
            cert_renewals: Counter::default(),
            admission_lists: Counter::default(),
        };
        registry.register("reconciles", "Reconciliations run", m.reconciles.clone());
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
