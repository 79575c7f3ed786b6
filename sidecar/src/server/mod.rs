//! HTTP front of the streamer.
//!
//! ```text
//!  listen (accept loop, direct streams) ─► routes (router) ─► ws / sse (transports)
//!        │                                    │ query (parse + admit a stream)
//!        └──────────── state: config, AppState, admission, connection slots ◄── loki::api
//! ```
//! `state` is the base every other module (and the Loki API) builds on;
//! `routes` is the only one that knows them all.

pub mod compress;
mod frame;
mod heads;
pub mod kube_auth;
pub mod limits;
mod listen;
pub mod query;
pub mod routes;
pub mod sources;
pub mod sse;
pub mod state;
pub mod stream;
mod write;
pub mod ws;

pub use listen::serve;
pub(crate) use listen::{direct_request, is_stream_request};
pub use query::{QueryError, StreamQuery, parse_query};
pub use routes::{readiness_json, router};
pub use state::{
    AppState, AuthConfig, ConnGuard, DEFAULT_STREAM_SEND_BUFFER, ServerConfig, until_true,
};
