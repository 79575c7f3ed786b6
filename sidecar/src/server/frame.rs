//! Renders batches of records and control messages into wire frames.

use std::sync::Arc;

use crate::hub::Entry;
use crate::protocol::{Cursor, ServerMessage};

/// `{"type":"records","records":[...],"cursor":"..."}` from pre-serialised records.
pub fn records_json(entries: &[Arc<Entry>], cursor: &Cursor) -> String {
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
