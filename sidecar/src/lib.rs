//! logstream's data plane: tail log files from a shared volume (or a local
//! folder) and stream them live over WebSocket, SSE and plain HTTP.
//!
//! ```text
//!  files ──► tailer ──publish──► hub (bounded history) ──► session per client ──► /ws /sse /stream
//!            inotify + stat        records serialised once      position, filter,
//!            rotation-aware        per-source seq numbers       cursor, slow policy
//! ```
//!
//! [`protocol`] is the wire contract every client (browser page, CLI,
//! aggregator) relies on; it is documented in `sidecar/PROTOCOL.md`.

pub mod aggregator;
pub mod client;
pub mod demo;
pub mod fds;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod hub;
pub mod lines;
pub mod loki;
pub mod metrics;
pub mod parse;
pub mod positions;
pub mod protocol;
pub mod run;
pub mod server;
pub mod session;
pub mod tailer;
