//! Renders batches of records and control messages into wire frames.

use std::sync::Arc;

use crate::hub::Entry;
use crate::protocol::{Cursor, Format, ServerMessage};

/// `{"type":"records","records":[...],"cursor":"..."}` from pre-serialised
/// records, with a `watermark` (protocol 1.1) when one is given.
pub fn records_json(entries: &[Arc<Entry>], cursor: &Cursor, watermark: Option<i64>) -> String {
    let body: usize = entries.iter().map(|e| e.wire_size() + 1).sum();
    let mut s = String::with_capacity(body + 64);
    s.push_str(r#"{"type":"records","records":["#);
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // Entries were serialised by serde_json from Rust strings: valid UTF-8.
        s.push_str(std::str::from_utf8(e.json()).unwrap_or("null"));
    }
    s.push_str(r#"],"cursor":""#);
    s.push_str(&cursor.to_string());
    if let Some(ts) = watermark {
        s.push_str(r#"","watermark":""#);
        s.push_str(&crate::hub::format_ts(ts));
    }
    s.push_str("\"}");
    s
}

/// The lines alone, newline-separated.
pub fn raw_lines(entries: &[Arc<Entry>]) -> String {
    let mut s = String::with_capacity(entries.iter().map(|e| e.line.len() + 1).sum());
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&e.line);
    }
    s
}

pub fn message(m: &ServerMessage) -> String {
    // Serialising the protocol's own types cannot fail.
    serde_json::to_string(m).unwrap_or_default()
}

/// A control message as a comment-style line for raw text streams.
pub fn raw_notice(m: &ServerMessage) -> String {
    format!("# logstream: {}", message(m))
}

/// A control message as a WebSocket text frame or a line of a JSON stream
/// (`format=json`), or as a `# logstream:` line of a raw one.
pub fn notice(m: &ServerMessage, f: Format) -> String {
    match f {
        Format::Json => message(m),
        Format::Raw => raw_notice(m),
    }
}

/// One SSE event per record; the resume cursor rides on the last one only,
/// which is all `EventSource` keeps.
pub fn sse_records(entries: &[Arc<Entry>], cursor: &str, fmt: Format) -> String {
    let mut s = String::with_capacity(
        entries.iter().map(|e| e.wire_size() + 8).sum::<usize>() + cursor.len() + 8,
    );
    let last = entries.len().saturating_sub(1);
    for (i, e) in entries.iter().enumerate() {
        if i == last {
            s.push_str("id: ");
            s.push_str(cursor);
            s.push('\n');
        }
        s.push_str("data: ");
        match fmt {
            Format::Json => s.push_str(std::str::from_utf8(e.json()).unwrap_or("null")),
            // A bare CR would end the SSE line early.
            Format::Raw => s.push_str(&e.line.replace('\r', "\\r")),
        }
        s.push_str("\n\n");
    }
    s
}

/// A control message as a named SSE event (`gap`, `draining`, `reconnect`,
/// `hello`).
pub fn sse_event(m: &ServerMessage) -> String {
    let name = match m {
        ServerMessage::Hello { .. } => "hello",
        ServerMessage::Gap { .. } => "gap",
        ServerMessage::Draining { .. } => "draining",
        ServerMessage::Reconnect { .. } => "reconnect",
        _ => "message",
    };
    format!("event: {name}\ndata: {}\n\n", message(m))
}

/// Records as the plain stream sends them: raw lines, or one JSON record
/// per line (`format=json`); each ends with a newline.
pub fn plain_records(entries: &[Arc<Entry>], fmt: Format) -> String {
    match fmt {
        Format::Raw => {
            let mut s = raw_lines(entries);
            s.push('\n');
            s
        }
        Format::Json => {
            let mut s = String::with_capacity(entries.iter().map(|e| e.wire_size() + 1).sum());
            for e in entries {
                s.push_str(std::str::from_utf8(e.json()).unwrap_or("null"));
                s.push('\n');
            }
            s
        }
    }
}
