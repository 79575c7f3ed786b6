//! `kubectl logstream`: a pod's (or a workload's) live log files from a
//! terminal, through the Kubernetes API.
//!
//! ```text
//!  TARGET ─► target::resolve ─► pod watch (follow.rs) ─► one stream per pod (stream.rs):
//!                                                         port-forward ─► /ws ─► resume cursor
//!                                   lines ─► reorder window (time order) ─► render.rs ─► stdout
//! ```

pub mod error;
pub mod follow;
pub mod render;
pub mod status;
pub mod stream;
pub mod target;
