//! The wire protocol every logstream client speaks: records, cursors, the
//! messages exchanged over WebSocket and SSE, and close codes.
//!
//! Compatibility rules (see `sidecar/PROTOCOL.md`): within a protocol version,
//! fields may be added but never removed or retyped; clients ignore unknown
//! fields and unknown message types; a breaking change bumps
//! [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version announced in the `hello` message.
pub const PROTOCOL_VERSION: u32 = 1;

/// Minor version announced in `hello` (absent: 0). 1.1 added `features`
/// and the watermark exchange; a 1.0 peer ignores both.
pub const PROTOCOL_MINOR: u32 = 1;

/// The `hello` feature of a server that answers `watermark` requests.
pub const FEATURE_WATERMARKS: &str = "watermarks";

/// WebSocket close codes used by the servers.
pub mod close {
    /// Server shutting down or draining: reconnect (elsewhere) with your cursor.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke RFC 6455's framing rules (unmasked or fragmented
    /// control frames, reserved bits or opcodes, oversized control frames).
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Slow consumer closed under the `close` policy, or a forbidden request.
    pub const POLICY: u16 = 1008;
    /// A client message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Unexpected server error.
    pub const INTERNAL: u16 = 1011;
    /// Connection limit reached: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Where a record came from.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct Source {
    /// Kubernetes namespace (empty in local mode).
    #[serde(rename = "ns", default)]
    pub namespace: String,
    /// Pod name (the host name in local mode).
    #[serde(default)]
    pub pod: String,
    /// Container that writes the file (empty in local mode).
    #[serde(default)]
    pub container: String,
    /// File path relative to the watched directory.
    pub file: String,
    /// The service the pod belongs to (its `app` label or its workload, as
    /// the operator found it at admission); omitted when unknown. Not part
    /// of the source id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
}

/// Stable 64-bit identifier of one source incarnation, printed as 16 hex digits.
///
/// Derived from the source and the incarnation of the process that tails it, so
/// a restarted sidecar gets fresh identifiers: an old cursor can never suppress
/// a new incarnation's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(pub u64);

impl SourceId {
    pub fn derive(source: &Source, incarnation: &str) -> Self {
        let key = format!(
            "{}\0{}\0{}\0{}\0{}",
            source.namespace, source.pod, source.container, source.file, incarnation
        );
        SourceId(xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SourceId {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(ProtocolError::BadCursor(format!(
                "source id {s:?} is not 16 hex digits"
            )));
        }
        u64::from_str_radix(s, 16)
            .map(SourceId)
            .map_err(|_| ProtocolError::BadCursor(format!("source id {s:?} is not hexadecimal")))
    }
}

impl Serialize for SourceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SourceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for SourceId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SourceId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{16}$",
            "description": "Source incarnation id: 16 lowercase hex digits"
        })
    }
}

/// Severity found in a line, normalised.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Fatal,
}

impl Level {
    pub const ALL: [Level; 6] = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Parses the spellings found in logs (`WARNING`, `err`, `CRITICAL`...).
    pub fn parse_loose(s: &str) -> Option<Level> {
        Level::parse_loose_bytes(s.trim().as_bytes())
    }

    /// [`Level::parse_loose`] of an untrimmed ASCII word, without allocating:
    /// it runs for words of most log lines.
    pub fn parse_loose_bytes(s: &[u8]) -> Option<Level> {
        // The longest spelling is "information".
        let mut buf = [0u8; 11];
        let lower = buf.get_mut(..s.len())?;
        lower.copy_from_slice(s);
        lower.make_ascii_lowercase();
        Some(match &*lower {
            b"trace" | b"trc" => Level::Trace,
            b"debug" | b"dbg" => Level::Debug,
            b"info" | b"inf" | b"information" | b"notice" => Level::Info,
            b"warn" | b"warning" | b"wrn" => Level::Warn,
            b"error" | b"err" | b"eror" => Level::Error,
            b"fatal" | b"critical" | b"crit" | b"panic" | b"emerg" | b"alert" => Level::Fatal,
            _ => return None,
        })
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of an oversized line a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SplitPart {
    First,
    Middle,
    Last,
}

/// One log line with its origin and position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Record {
    /// Source incarnation id; with `seq` it identifies the record.
    pub sid: SourceId,
    /// Per-source sequence number, starting at 1, without holes.
    pub seq: u64,
    /// Time the line was read, RFC 3339 with nanoseconds, UTC.
    pub ts: String,
    #[serde(flatten)]
    pub source: Source,
    /// Level found in the line, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    /// The line without its newline; invalid UTF-8 replaced by U+FFFD.
    pub line: String,
    /// The line had no newline yet and was flushed after a timeout or at shutdown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// Set when an oversized line was split into several records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitPart>,
}

/// Per-source high-water marks: every record with `seq <= cursor[sid]` has
/// been seen. Printed as `sid:seq,sid:seq` (sorted), empty when nothing was
/// seen. It is the SSE `id:` and the WebSocket `resume` value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<SourceId, u64>);

impl Cursor {
    pub fn get(&self, sid: SourceId) -> u64 {
        self.0.get(&sid).copied().unwrap_or(0)
    }

    /// Raises the mark of `sid` to `seq` (never lowers it).
    pub fn advance(&mut self, sid: SourceId, seq: u64) {
        let e = self.0.entry(sid).or_insert(0);
        if seq > *e {
            *e = seq;
        }
    }

    /// True when this cursor already covers `seq` of `sid`.
    pub fn covers(&self, sid: SourceId, seq: u64) -> bool {
        self.get(sid) >= seq
    }

    /// Pointwise maximum of two cursors.
    pub fn merge(&mut self, other: &Cursor) {
        for (sid, seq) in &other.0 {
            self.advance(*sid, *seq);
        }
    }
}

impl fmt::Display for Cursor {
    /// `sid:seq,…` by hand: every frame of every session carries one (50
    /// sources: 1.2 KB), and `write!` with `{:016x}` took 6 % of an
    /// aggregator's CPU.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // ',' + 16 hex digits + ':' + up to 20 decimal digits.
        let mut buf = [0u8; 38];
        let mut seqs = itoa::Buffer::new();
        for (i, (sid, seq)) in self.0.iter().enumerate() {
            let mut n = 0;
            if i > 0 {
                buf[0] = b',';
                n = 1;
            }
            for k in (0..16).rev() {
                buf[n] = HEX[((sid.0 >> (k * 4)) & 0xf) as usize];
                n += 1;
            }
            buf[n] = b':';
            n += 1;
            let digits = seqs.format(*seq).as_bytes();
            buf[n..n + digits.len()].copy_from_slice(digits);
            n += digits.len();
            // ASCII only.
            f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = Cursor::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (sid, seq) = part
                .split_once(':')
                .ok_or_else(|| ProtocolError::BadCursor(format!("{part:?} is not sid:seq")))?;
            let seq = seq.parse::<u64>().map_err(|_| {
                ProtocolError::BadCursor(format!("sequence {seq:?} is not a number"))
            })?;
            c.advance(sid.parse()?, seq);
        }
        Ok(c)
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Cursor {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cursor".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9a-f]{16}:[0-9]+(,[0-9a-f]{16}:[0-9]+)*)?$",
            "description": "Comma-separated sid:seq high-water marks"
        })
    }
}

/// What a client asks to see. Query parameters of `/ws`, `/sse`, `/stream`
/// use the same names; a WebSocket `subscribe` message carries them as JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Send up to this many matching history records first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<usize>,
    /// Only records read at or after this time: RFC 3339, or a duration back from now (`5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Resume after this cursor (takes precedence over `tail` and `since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Cursor>,
    /// Glob on the file path (`*.log`, `app.log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Comma-separated levels (`error,warn`), or `warn+` for warn and above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Regular expression the line must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grep: Option<String>,
    /// Regular expression on the pod name (fully anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Regular expression on the container name (fully anchored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `json` (records) or `raw` (lines only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
}

/// Output format of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Raw,
}

/// Messages a client sends over WebSocket (JSON text frames).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Replace the filters and position of this connection.
    Subscribe(Subscribe),
    /// Everything up to `cursor` was processed; required to finish a drain.
    Ack { cursor: Cursor },
    /// Application-level ping for clients that cannot see WebSocket pings.
    Ping,
    /// Asks for a `watermark` (servers whose `hello` lists `watermarks`).
    Watermark,
}

/// Why records were skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The client fell behind more than its queue allows.
    SlowClient,
    /// The records left the server's history before the client asked for them.
    Evicted,
    /// The upstream source lost records (aggregator only).
    Upstream,
}

/// Messages a server sends over WebSocket (JSON text frames) and, as SSE
/// events named by `type`, over `/sse`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message of every WebSocket connection.
    Hello {
        version: u32,
        server: String,
        /// `sidecar`, `local` or `aggregator`.
        role: String,
        /// The position the stream starts from.
        cursor: Cursor,
        /// Minor protocol version (absent: 0).
        #[serde(default, skip_serializing_if = "is_zero")]
        minor: u32,
        /// What this server offers beyond protocol 1.0: `watermarks`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// A batch of records in order; `cursor` is the position after the batch.
    Records {
        records: Vec<Record>,
        cursor: Cursor,
        /// 1.1, once the client asked for watermarks: on the batch that
        /// reaches what the server held, the `ts` of a `watermark` (no
        /// record with an earlier time follows on this connection).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        watermark: Option<String>,
    },
    /// Records were skipped; `cursor` is the position before them, so a new
    /// connection with `resume=cursor` fetches what is still in history.
    Gap {
        missed: u64,
        reason: GapReason,
        cursor: Cursor,
    },
    /// The last client message was refused; the connection stays open.
    Error { code: String, message: String },
    /// A `subscribe` was applied.
    Subscribed { cursor: Cursor },
    /// Answer to a client `ping`.
    Pong,
    /// The server is shutting down: every record has been sent up to `cursor`.
    /// Ack it; the server then closes with 1001.
    Draining { cursor: Cursor },
    /// Reconnect (to another replica) after `after_ms`, resuming with your cursor.
    Reconnect { after_ms: u64, reason: String },
    /// The answer to a client's `watermark`, sent after every record the
    /// server held for this connection when it was asked: no record with a
    /// time before `ts` follows on this connection. `cursor` is the
    /// position the answer was given at.
    Watermark { ts: String, cursor: Cursor },
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ServerMessage {
    /// Parses one message. `records` frames, nearly all the traffic an
    /// aggregator reads, take a direct path: the tagged enum and the
    /// flattened source would otherwise buffer every record in serde's
    /// intermediate form first, which cost an aggregator ~10% of its CPU.
    pub fn parse(text: &str) -> serde_json::Result<ServerMessage> {
        if text.starts_with(r#"{"type":"records","#) {
            #[derive(Deserialize)]
            struct Frame {
                records: Vec<WireRecord>,
                cursor: Cursor,
                #[serde(default)]
                watermark: Option<String>,
            }
            #[derive(Deserialize)]
            struct WireRecord {
                sid: SourceId,
                seq: u64,
                ts: String,
                #[serde(default)]
                ns: String,
                #[serde(default)]
                pod: String,
                #[serde(default)]
                container: String,
                file: String,
                #[serde(default)]
                service: String,
                #[serde(default)]
                level: Option<Level>,
                line: String,
                #[serde(default)]
                partial: bool,
                #[serde(default)]
                split: Option<SplitPart>,
            }
            let f: Frame = serde_json::from_str(text)?;
            let records = f
                .records
                .into_iter()
                .map(|r| Record {
                    sid: r.sid,
                    seq: r.seq,
                    ts: r.ts,
                    source: Source {
                        namespace: r.ns,
                        pod: r.pod,
                        container: r.container,
                        file: r.file,
                        service: r.service,
                    },
                    level: r.level,
                    line: r.line,
                    partial: r.partial,
                    split: r.split,
                })
                .collect();
            return Ok(ServerMessage::Records {
                records,
                cursor: f.cursor,
                watermark: f.watermark,
            });
        }
        serde_json::from_str(text)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("bad cursor: {0}")]
    BadCursor(String),
}

/// The JSON Schema of every message, generated from these types.
pub fn json_schema() -> serde_json::Value {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    /// All messages of the logstream wire protocol.
    struct Protocol {
        version: u32,
        client: ClientMessage,
        server: ServerMessage,
    }
    let mut v = serde_json::to_value(schemars::schema_for!(Protocol)).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("title".into(), "logstream wire protocol".into());
        o.insert(
            "$comment".into(),
            format!("protocol version {PROTOCOL_VERSION}; generated by `logstream schema`").into(),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_fast_path_parses_like_serde() {
        let r = |line: &str, level, partial, split| Record {
            sid: SourceId(0x1f),
            seq: 7,
            ts: "2026-11-25T10:00:00.000000001Z".into(),
            source: Source {
                namespace: "ns".into(),
                pod: "web-0".into(),
                container: "app".into(),
                file: "a/app.log".into(),
                service: String::new(),
            },
            level,
            line: line.into(),
            partial,
            split,
        };
        let mut cursor = Cursor::default();
        cursor.advance(SourceId(0x1f), 8);
        let m = ServerMessage::Records {
            records: vec![
                r("plain", None, false, None),
                r(
                    "e\"sc\u{1}aped ✓",
                    Some(Level::Error),
                    true,
                    Some(SplitPart::Middle),
                ),
            ],
            cursor,
            watermark: Some("2026-11-25T10:00:00.000000002Z".into()),
        };
        let text = serde_json::to_string(&m).unwrap();
        let fixture = include_str!("../tests/fixtures/server_records.json");
        let marked = include_str!("../tests/fixtures/server_records_watermark.json");
        for t in [text.as_str(), fixture.trim(), marked.trim()] {
            assert!(t.starts_with(r#"{"type":"records","#), "{t}");
            let slow: ServerMessage = serde_json::from_str(t).unwrap();
            assert_eq!(ServerMessage::parse(t).unwrap(), slow);
        }
        assert_eq!(ServerMessage::parse(&text).unwrap(), m);
        assert!(ServerMessage::parse(r#"{"type":"records","records":[{"sid":1}]}"#).is_err());
        assert!(matches!(
            ServerMessage::parse(r#"{"type":"pong"}"#).unwrap(),
            ServerMessage::Pong
        ));
    }

    #[test]
    fn cursor_roundtrip_and_order() {
        let c: Cursor = "00000000000000ff:7,0000000000000001:3".parse().unwrap();
        assert_eq!(c.to_string(), "0000000000000001:3,00000000000000ff:7");
        assert_eq!(c.get(SourceId(0xff)), 7);
        assert!(c.covers(SourceId(1), 3));
        assert!(!c.covers(SourceId(1), 4));
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::default());
    }

    #[test]
    fn cursor_text_is_hex_sid_and_decimal_seq_at_the_extremes() {
        let mut c = Cursor::default();
        let pairs = [(0, 0), (1, 9), (0xabc, 10), (u64::MAX - 1, u64::MAX)];
        for (sid, seq) in pairs {
            c.advance(SourceId(sid), seq);
        }
        let want: Vec<String> = pairs
            .iter()
            .map(|(sid, seq)| format!("{sid:016x}:{seq}"))
            .collect();
        assert_eq!(c.to_string(), want.join(","));
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
    }

    #[test]
    fn cursor_rejects_garbage_with_reason() {
        for bad in [
            "xyz",
            "0000000000000001:",
            "01:3",
            "000000000000000g:1",
            "0000000000000001:-1",
        ] {
            let err = bad.parse::<Cursor>().unwrap_err();
            assert!(matches!(err, ProtocolError::BadCursor(_)), "{bad}");
        }
    }

    #[test]
    fn cursor_never_goes_back() {
        let mut c = Cursor::default();
        c.advance(SourceId(1), 5);
        c.advance(SourceId(1), 3);
        assert_eq!(c.get(SourceId(1)), 5);
        let mut d = Cursor::default();
        d.advance(SourceId(1), 9);
        d.advance(SourceId(2), 1);
        c.merge(&d);
        assert_eq!(c.to_string(), "0000000000000001:9,0000000000000002:1");
    }

    #[test]
    fn source_id_depends_on_incarnation() {
        let s = Source {
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            file: "a.log".into(),
            service: String::new(),
        };
        assert_eq!(SourceId::derive(&s, "1"), SourceId::derive(&s, "1"));
        assert_ne!(SourceId::derive(&s, "1"), SourceId::derive(&s, "2"));
    }

    #[test]
    fn loose_levels() {
        assert_eq!(Level::parse_loose("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse_loose("err"), Some(Level::Error));
        assert_eq!(Level::parse_loose("Critical"), Some(Level::Fatal));
        assert_eq!(Level::parse_loose("verbose-ish"), None);
    }

    #[test]
    fn unknown_client_message_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"nope"}"#).is_err());
        assert!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"subscribe","bogus":1}"#).is_err()
        );
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"subscribe","level":"warn+"}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Subscribe(Subscribe { level: Some(_), .. })
        ));
    }
}
