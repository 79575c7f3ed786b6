//! The contract between the operator and the streamer it runs: the operator
//! writes these names into pods (the injected sidecar, the aggregator
//! Deployment) and the streamer reads them. Both crates take them from
//! here, so a rename is one edit; `tests/tests/contract.rs` starts the
//! streamer with exactly the environment the operator builds (and nothing
//! else) and checks that it serves.

pub mod logging;

/// The port every streamer (sidecar and aggregator) serves on.
pub const STREAM_PORT: u16 = 7680;

/// Name of the injected sidecar container.
pub const SIDECAR_CONTAINER: &str = "logstream";

/// Label on the pods of a LogStream (value: the LogStream's name as a label
/// value); the aggregator discovers its sidecars by it.
pub const STREAM_LABEL: &str = "logstream.dev/stream";

/// Where the operator mounts things into the sidecar.
pub mod paths {
    /// The sidecar's own emptyDir for file positions (`env::STATE_DIR`).
    pub const STATE_DIR: &str = "/var/run/logstream/state";
    /// Folder of the LogStream's token Secrets (`spec.access.tokenSecrets`).
    pub const TOKEN_DIR: &str = "/var/run/logstream/token";
    /// The token the aggregator presents to sidecars.
    pub const PULL_TOKEN_FILE: &str = "/var/run/logstream/pull/token";
}

/// Environment variables of the streamer (`logstream sidecar`,
/// `logstream aggregator`).
pub mod env {
    /// Namespace and name of the pod (downward API).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const POD_NAME: &str = "POD_NAME";
    /// The app container whose files are streamed.
    pub const CONTAINER: &str = "LOGSTREAM_CONTAINER";
    /// The service the pod belongs to (`service_name` in the Loki API).
    pub const SERVICE_NAME: &str = "LOGSTREAM_SERVICE_NAME";
    /// The mounted log folder.
    pub const DIR: &str = "LOGSTREAM_DIR";
    pub const LISTEN: &str = "LOGSTREAM_LISTEN";
    /// Comma-separated globs of the files to stream.
    pub const GLOBS: &str = "LOGSTREAM_GLOBS";
    pub const PARSE: &str = "LOGSTREAM_PARSE";
    pub const LEVEL_KEY: &str = "LOGSTREAM_LEVEL_KEY";
    pub const BUFFER_LINES: &str = "LOGSTREAM_BUFFER_LINES";
    pub const BUFFER_BYTES: &str = "LOGSTREAM_BUFFER_BYTES";
    /// The aggregator's history on disk: its directory (unset: none),
    /// its bound in bytes and its bound in age (a duration such as `24h`).
    pub const HISTORY_DIR: &str = "LOGSTREAM_HISTORY_DIR";
    pub const HISTORY_MAX_BYTES: &str = "LOGSTREAM_HISTORY_MAX_BYTES";
    pub const HISTORY_MAX_AGE: &str = "LOGSTREAM_HISTORY_MAX_AGE";
    /// `json` or `text`.
    pub const LOG_FORMAT: &str = "LOGSTREAM_LOG_FORMAT";
    /// Threads running the server's tasks (default: one per core).
    pub const WORKER_THREADS: &str = "LOGSTREAM_WORKER_THREADS";
    /// Longest a shutdown may take (a duration such as `25s`).
    pub const GRACE: &str = "LOGSTREAM_GRACE";
    pub const STATE_DIR: &str = "LOGSTREAM_STATE_DIR";
    /// Comma-separated files of accepted bearer tokens.
    pub const TOKEN_FILE: &str = "LOGSTREAM_TOKEN_FILE";
    pub const TOKEN: &str = "LOGSTREAM_TOKEN";
    /// `true`: also accept Kubernetes tokens allowed to `get pods/log`.
    pub const KUBERNETES_AUTH: &str = "LOGSTREAM_KUBERNETES_AUTH";
    pub const AUTH_CACHE_TTL: &str = "LOGSTREAM_AUTH_CACHE_TTL";
    /// `true`: loopback clients need a token too (pods with a mesh proxy).
    pub const NO_LOOPBACK_EXEMPTION: &str = "LOGSTREAM_NO_LOOPBACK_EXEMPTION";
    pub const ALLOW_UNAUTHENTICATED: &str = "LOGSTREAM_ALLOW_UNAUTHENTICATED";
    pub const ALLOWED_ORIGINS: &str = "LOGSTREAM_ALLOWED_ORIGINS";
    pub const MAX_CONNECTIONS: &str = "LOGSTREAM_MAX_CONNECTIONS";
    /// Aggregator: label selecting the sidecars' pods.
    pub const DISCOVER_LABEL: &str = "LOGSTREAM_DISCOVER_LABEL";
    /// Aggregator: fixed upstream URLs instead of discovery.
    pub const SOURCES: &str = "LOGSTREAM_SOURCES";
    /// Aggregator: the token file it presents to sidecars.
    pub const UPSTREAM_TOKEN_FILE: &str = "LOGSTREAM_UPSTREAM_TOKEN_FILE";
    pub const DRAIN_DELAY: &str = "LOGSTREAM_DRAIN_DELAY";
}
