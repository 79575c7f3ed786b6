//! The wire protocol is a contract: golden fixtures pin every message's
//! shape, and the committed JSON Schema must match the Rust types.
#![allow(clippy::unwrap_used)] // test code

use logstream::protocol::{ClientMessage, ServerMessage, json_schema};

fn fixtures(prefix: &str) -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no {prefix} fixtures");
    out
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(name: &str, text: &str) {
    let parsed: T = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let again = serde_json::to_value(&parsed).unwrap();
    let want: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(
        again, want,
        "{name}: the types no longer produce the documented JSON"
    );
}

#[test]
fn client_fixtures_roundtrip() {
    for (name, text) in fixtures("client_") {
        roundtrip::<ClientMessage>(&name, &text);
    }
}

#[test]
fn server_fixtures_roundtrip() {
    for (name, text) in fixtures("server_") {
        roundtrip::<ServerMessage>(&name, &text);
    }
}

#[test]
fn every_message_type_has_a_fixture() {
    let names: Vec<String> = fixtures("").into_iter().map(|(n, _)| n).collect();
    let schema = json_schema().to_string();
    for t in [
        "subscribe",
        "ack",
        "ping",
        "hello",
        "records",
        "gap",
        "error",
        "subscribed",
        "pong",
        "draining",
        "reconnect",
        "watermark",
    ] {
        assert!(names.iter().any(|n| n.contains(t)), "no fixture for {t}");
        assert!(schema.contains(&format!("\"{t}\"")), "schema lacks {t}");
    }
}

/// Regenerate with `cargo run -p logstream -- schema > sidecar/protocol.schema.json`.
#[test]
fn committed_schema_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol.schema.json");
    let committed = std::fs::read_to_string(path).expect("sidecar/protocol.schema.json is missing");
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&json_schema()).unwrap()
    );
    assert!(
        committed == generated,
        "sidecar/protocol.schema.json drifted from the Rust types: run `cargo run -p logstream -- schema > sidecar/protocol.schema.json`"
    );
}
