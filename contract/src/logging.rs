//! How both binaries log: structured `tracing` events on stderr, as text for
//! a terminal or as JSON lines for a cluster's log pipeline. The operator
//! picks JSON for the streamers it runs (`env::LOG_FORMAT`); `RUST_LOG`
//! filters (default `info`).

/// The values `--log-format` / `LOGSTREAM_LOG_FORMAT` accept.
pub const FORMATS: [&str; 2] = ["text", "json"];

/// Installs the global subscriber for `format` (one of [`FORMATS`]; anything
/// but `json` is text). Call once, first thing in `main`.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}
