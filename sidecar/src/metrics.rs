//! Prometheus metrics of the streamer, in the text exposition format.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Label values are the variant names, hence lower case.
#[allow(non_camel_case_types)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Transport {
    ws,
    sse,
    stream,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: Transport,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub path: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Outcome of an access check: `allowed`, `forbidden`, `unauthenticated`, `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub lines_read: Counter,
    pub bytes_read: Counter,
    pub lines_split: Counter,
    pub partial_flushes: Counter,
    pub rotations: Family<ReasonLabel, Counter>,
    pub files_refused: Family<ReasonLabel, Counter>,
    pub files_not_tailed: Family<ReasonLabel, Gauge>,
    pub files_tracked: Gauge,
    pub inotify_overflows: Counter,
    pub records_sent: Family<TransportLabel, Counter>,
    pub bytes_sent: Family<TransportLabel, Counter>,
    pub clients: Family<TransportLabel, Gauge>,
    pub connections_rejected: Family<ReasonLabel, Counter>,
    pub clients_dropped: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<ReasonLabel, Counter>,
    pub rate_limit_buckets: Gauge,
    pub compress_input: Family<TransportLabel, Counter>,
    pub compress_output: Family<TransportLabel, Counter>,
    pub compressions: Family<ResultLabel, Counter>,
    pub gaps: Family<ReasonLabel, Counter>,
    pub gap_records: Counter,
    pub client_errors: Counter,
    pub history_records: Gauge,
    pub history_bytes: Gauge,
    /// The aggregator's history on disk (zero without one).
    pub disk_history: crate::history::Stats,
    pub upstreams_connected: Gauge,
    pub upstreams_known: Gauge,
    pub upstream_records: Counter,
    pub upstream_gap_records: Counter,
    pub upstream_reconnects: Counter,
    pub reorder_buffered: Gauge,
    /// Records released by the reorder window rather than a watermark.
    pub reorder_window_releases: Counter,
    pub upstream_watermark_asks: Counter,
    pub upstream_watermark_stalls: Counter,
    pub drain_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub request_seconds: Family<RequestLabels, Histogram>,
    pub auth_reviews: Family<ResultLabel, Counter>,
    pub auth_cache_hits: Family<ResultLabel, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("logstream");
        let m = Metrics {
            lines_read: Counter::default(),
            bytes_read: Counter::default(),
            lines_split: Counter::default(),
            partial_flushes: Counter::default(),
            rotations: Family::default(),
            files_refused: Family::default(),
            files_not_tailed: Family::default(),
            files_tracked: Gauge::default(),
            inotify_overflows: Counter::default(),
            records_sent: Family::default(),
            bytes_sent: Family::default(),
            clients: Family::default(),
            connections_rejected: Family::default(),
            clients_dropped: Family::default(),
            rate_limited: Family::default(),
            rate_limit_buckets: Gauge::default(),
            compress_input: Family::default(),
            compress_output: Family::default(),
            compressions: Family::default(),
            gaps: Family::default(),
            gap_records: Counter::default(),
            client_errors: Counter::default(),
            history_records: Gauge::default(),
            history_bytes: Gauge::default(),
            disk_history: crate::history::Stats::default(),
            upstreams_connected: Gauge::default(),
            upstreams_known: Gauge::default(),
            upstream_records: Counter::default(),
            upstream_gap_records: Counter::default(),
            upstream_reconnects: Counter::default(),
            reorder_buffered: Gauge::default(),
            reorder_window_releases: Counter::default(),
            upstream_watermark_asks: Counter::default(),
            upstream_watermark_stalls: Counter::default(),
            drain_seconds: Gauge::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
            }),
            auth_reviews: Family::default(),
            auth_cache_hits: Family::default(),
            registry: Registry::default(),
        };
        m.register_files(&mut registry);
        m.register_clients(&mut registry);
        m.register_history(&mut registry);
        m.register_aggregator(&mut registry);
        m.register_requests(&mut registry);
        Metrics { registry, ..m }
    }

    /// The tailer: what it read from files, and files it tracks or refuses.
    fn register_files(&self, r: &mut Registry) {
        r.register(
            "lines_read",
            "Lines read from log files",
            self.lines_read.clone(),
        );
        r.register_with_unit(
            "read",
            "Bytes read from log files",
            Unit::Bytes,
            self.bytes_read.clone(),
        );
        r.register(
            "lines_split",
            "Oversized lines split into parts",
            self.lines_split.clone(),
        );
        r.register(
            "partial_flushes",
            "Lines flushed without a newline",
            self.partial_flushes.clone(),
        );
        r.register(
            "rotations",
            "File rotations seen, by kind (rename, truncate, delete)",
            self.rotations.clone(),
        );
        r.register(
            "files_refused",
            "Paths refused, by reason",
            self.files_refused.clone(),
        );
        r.register(
            "files_not_tailed",
            "Matching paths not tailed after the last scan (unreadable, not regular, symlink), by reason",
            self.files_not_tailed.clone(),
        );
        r.register(
            "files_tracked",
            "Files currently open",
            self.files_tracked.clone(),
        );
        r.register(
            "inotify_overflows",
            "inotify queue overflows (rescanned)",
            self.inotify_overflows.clone(),
        );
    }

    /// Streaming clients: what they were sent, and why some were refused, dropped or skipped records.
    fn register_clients(&self, r: &mut Registry) {
        r.register(
            "records_sent",
            "Records sent to clients",
            self.records_sent.clone(),
        );
        r.register_with_unit(
            "sent",
            "Bytes sent to clients",
            Unit::Bytes,
            self.bytes_sent.clone(),
        );
        r.register(
            "clients",
            "Connected streaming clients",
            self.clients.clone(),
        );
        r.register(
            "connections_rejected",
            "Streaming requests refused, by reason",
            self.connections_rejected.clone(),
        );
        r.register(
            "clients_dropped",
            "Clients disconnected by the server, by reason",
            self.clients_dropped.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused (429) and WebSockets closed (1008) by a rate limit, by which limit",
            self.rate_limited.clone(),
        );
        r.register(
            "rate_limit_buckets",
            "Token buckets held (clients seen within a refill time)",
            self.rate_limit_buckets.clone(),
        );
        r.register_with_unit(
            "compress_input",
            "Bytes of batches sent compressed (permessage-deflate, gzip), before compression",
            Unit::Bytes,
            self.compress_input.clone(),
        );
        r.register_with_unit(
            "compress_output",
            "Bytes of batches sent compressed, as sent",
            Unit::Bytes,
            self.compress_output.clone(),
        );
        r.register(
            "compressions",
            "Compressed batches sent: deflated for this client (miss) or found deflated for another (hit)",
            self.compressions.clone(),
        );
        r.register("gaps", "Gap notices sent, by reason", self.gaps.clone());
        r.register(
            "gap_records",
            "Records skipped by gaps",
            self.gap_records.clone(),
        );
        r.register(
            "client_errors",
            "Malformed client messages answered with an error frame",
            self.client_errors.clone(),
        );
    }

    /// The in-memory history and the last drain.
    fn register_history(&self, r: &mut Registry) {
        r.register(
            "history_records",
            "Records held in history",
            self.history_records.clone(),
        );
        r.register_with_unit(
            "history",
            "Bytes held in history",
            Unit::Bytes,
            self.history_bytes.clone(),
        );
        let d = &self.disk_history;
        for (name, help, c) in [
            (
                "history_disk_records_written",
                "Records written to the history on disk",
                &d.records_written,
            ),
            (
                "history_disk_write_errors",
                "Failed writes of the history on disk (a full disk stops it; it is retried)",
                &d.write_errors,
            ),
            (
                "history_disk_records_dropped",
                "Records that never reached the history on disk (its queue was full while writing failed)",
                &d.records_dropped,
            ),
        ] {
            r.register(name, help, c.clone());
        }
        for (name, help, c) in [
            (
                "history_disk_written",
                "Compressed bytes written to the history on disk",
                &d.bytes_written,
            ),
            (
                "history_disk_lines_written",
                "Bytes of lines written to the history on disk, before compression",
                &d.raw_bytes_written,
            ),
            (
                "history_disk_removed",
                "Bytes of old segments removed from the history on disk (retention by bytes and age)",
                &d.bytes_removed,
            ),
            (
                "history_disk_truncated",
                "Bytes of a torn tail cut off the history on disk at start-up",
                &d.truncated_bytes,
            ),
        ] {
            r.register_with_unit(name, help, Unit::Bytes, c.clone());
        }
        r.register_with_unit(
            "history_disk",
            "Bytes of the segments of the history on disk",
            Unit::Bytes,
            d.disk_bytes.clone(),
        );
        r.register(
            "history_disk_writing",
            "1 while the history on disk is written, 0 while writing fails",
            d.writing.clone(),
        );
        r.register_with_unit(
            "drain",
            "Duration of the last drain",
            Unit::Seconds,
            self.drain_seconds.clone(),
        );
    }

    /// The aggregator's upstream sidecars and its reorder window.
    fn register_aggregator(&self, r: &mut Registry) {
        r.register(
            "upstreams_connected",
            "Upstream sidecars connected (aggregator)",
            self.upstreams_connected.clone(),
        );
        r.register(
            "upstreams_known",
            "Upstream sidecars discovered (aggregator)",
            self.upstreams_known.clone(),
        );
        r.register(
            "upstream_records",
            "Records received from upstreams (aggregator)",
            self.upstream_records.clone(),
        );
        r.register(
            "upstream_gap_records",
            "Records upstreams reported lost (aggregator)",
            self.upstream_gap_records.clone(),
        );
        r.register(
            "upstream_reconnects",
            "Upstream connections lost or refused (aggregator)",
            self.upstream_reconnects.clone(),
        );
        r.register(
            "reorder_buffered",
            "Records waiting in the reorder window (aggregator)",
            self.reorder_buffered.clone(),
        );
        r.register(
            "reorder_window_releases",
            "Records released when their reorder window ran out rather than by the upstreams' watermarks: an upstream gives none (protocol 1.0) or did not answer (aggregator)",
            self.reorder_window_releases.clone(),
        );
        r.register(
            "upstream_watermark_asks",
            "Watermark requests sent to upstreams (aggregator)",
            self.upstream_watermark_asks.clone(),
        );
        r.register(
            "upstream_watermark_stalls",
            "Times an upstream left a watermark request unanswered for the reorder window and was merged without until it answered (aggregator)",
            self.upstream_watermark_stalls.clone(),
        );
    }

    /// HTTP requests and Kubernetes token checks.
    fn register_requests(&self, r: &mut Registry) {
        r.register(
            "auth_reviews",
            "Kubernetes token checks sent to the API server (TokenReview + SubjectAccessReview), by result",
            self.auth_reviews.clone(),
        );
        r.register(
            "auth_cache_hits",
            "Kubernetes token checks answered from the cache, by result",
            self.auth_cache_hits.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP request latency to the response head, by route and status",
            Unit::Seconds,
            self.request_seconds.clone(),
        );
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a gap notice and the records it skipped.
    pub fn gap(&self, reason: crate::protocol::GapReason, missed: u64) {
        use crate::protocol::GapReason;
        let reason = match reason {
            GapReason::SlowClient => "slow_client",
            GapReason::Evicted => "evicted",
            GapReason::Upstream => "upstream",
        };
        self.gaps.get_or_create(&ReasonLabel { reason }).inc();
        self.gap_records.inc_by(missed);
    }

    /// Counts a client the server dropped, by why.
    pub fn dropped(&self, reason: &'static str) {
        self.clients_dropped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a batch sent compressed over `t`: `plain` bytes as `wire`.
    pub fn compressed(
        &self,
        t: Transport,
        plain: usize,
        wire: usize,
        found: crate::server::compress::Found,
    ) {
        let label = self.transport(t);
        self.compress_input
            .get_or_create(&label)
            .inc_by(plain as u64);
        self.compress_output
            .get_or_create(&label)
            .inc_by(wire as u64);
        let result = match found {
            crate::server::compress::Found::Hit => "hit",
            crate::server::compress::Found::Miss => "miss",
        };
        self.compressions
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a frame of records sent over `t`.
    pub fn sent(&self, t: Transport, records: usize, bytes: usize) {
        let label = self.transport(t);
        self.records_sent
            .get_or_create(&label)
            .inc_by(records as u64);
        self.bytes_sent.get_or_create(&label).inc_by(bytes as u64);
    }

    pub fn transport(&self, t: Transport) -> TransportLabel {
        TransportLabel { transport: t }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
