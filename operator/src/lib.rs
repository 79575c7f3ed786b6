//! logstream's control plane.
//!
//! ```text
//!  LogStream ──► controller: dereference → build (pure) → apply (SSA) → status
//!                   │            Service, Ingress, aggregator (per namespace)
//!                   └─ namespace label ──► MutatingWebhook ──► mutate(pod) (pure) ──► patch
//!  webhook TLS: self-managed CA + serving cert in a Secret, caBundle patched, rotated
//!  run-time objects outside LogStreams: owned by the chart's ClusterRole (garbage collected)
//! ```

pub mod apicalls;
pub mod applied;
pub mod controller;
pub mod crd;
pub mod dataplane;
pub mod desired;
pub mod keys;
pub mod leader;
pub mod mesh;
pub mod metrics;
pub mod mutate;
pub mod names;
pub mod owner;
pub mod plan;
pub mod podcache;
pub mod probe;
pub mod restart;
pub mod run;
pub mod status;
pub mod tls;
pub mod uninstall;
pub mod webhook;
