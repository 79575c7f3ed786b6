//! Hostile input to every parser a client or a log file reaches: random
//! and mutated bytes must give a value or an error, never a panic, and
//! what is produced keeps its invariants. Property tests (proptest), run in
//! every `cargo test`; not coverage-guided fuzzing.
#![allow(clippy::unwrap_used)] // test code

use logstream::lines::{Line, LineSplitter};
use logstream::parse::{ParseMode, detect_level};
use logstream::protocol::{ClientMessage, SplitPart, Subscribe};
use proptest::prelude::*;

/// Strings that look like what the parser expects, cut and spliced.
fn near(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::sample::select(valid),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        ".{0,8}",
    )
        .prop_map(|(v, a, b, junk)| {
            let chars: Vec<char> = v.chars().collect();
            let (i, j) = (a.index(chars.len() + 1), b.index(chars.len() + 1));
            let (i, j) = (i.min(j), i.max(j));
            let mut s: String = chars[..i].iter().collect();
            s.push_str(&junk);
            s.extend(&chars[j..]);
            s
        })
}

const LOGQL: &[&str] = &[
    r#"{file="app.log"} |= "error" != "debug""#,
    r#"sum by (level) (count_over_time({pod=~"web-.*"} | json | level="error" [5m]))"#,
    r#"{container="app"} | logfmt | duration > 10s | line_format "{{.msg}}""#,
    r#"rate({file=~".+"} |~ "(?i)timeout" [1m]) > 0.5"#,
    r#"topk(3, sum by (pod) (bytes_over_time({namespace="shop"}[1h])))"#,
];

const QUERIES: &[&str] = &[
    "tail=100&since=5m&file=*.log&level=warn%2B&grep=timeout%7Crefused&format=json",
    "resume=0a1b2c3d4e5f6071:42,1122334455667788:7&pod=web-.*&container=app",
    "since=2026-11-25T10:00:00Z&format=raw",
];

const MESSAGES: &[&str] = &[
    r#"{"type":"subscribe","tail":100,"since":"5m","file":"*.log","level":"warn+","grep":"timeout","format":"json"}"#,
    r#"{"type":"ack","cursor":"0a1b2c3d4e5f6071:42"}"#,
    r#"{"type":"ping"}"#,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn logql_parses_or_says_why(q in prop_oneof![near(LOGQL), ".{0,200}"]) {
        let _ = logstream_logql::parse(&q);
        let _ = logstream_logql::parse_selector(&q);
    }

    #[test]
    fn stream_queries_parse_or_name_a_problem(q in prop_oneof![near(QUERIES), ".{0,200}"]) {
        if let Err(e) = logstream::server::parse_query(Some(&q)) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn client_messages_parse_or_fail(m in prop_oneof![near(MESSAGES), ".{0,200}"]) {
        if let Ok(ClientMessage::Subscribe(sub)) = serde_json::from_str::<ClientMessage>(&m) {
            let _ = logstream::filter::Filter::compile(&sub);
        }
    }

    #[test]
    fn filters_compile_or_fail(
        grep in ".{0,40}", file in ".{0,20}", level in ".{0,12}", since in ".{0,12}",
    ) {
        let sub = Subscribe {
            grep: Some(grep),
            file: Some(file),
            level: Some(level),
            since: Some(since),
            ..Subscribe::default()
        };
        let _ = logstream::filter::Filter::compile(&sub);
    }

    /// Any bytes in any chunking: lines never exceed the limit, split
    /// parts come in order, and no byte other than newlines goes missing.
    #[test]
    fn the_line_splitter_keeps_every_byte(
        data in prop::collection::vec(any::<u8>(), 0..4000),
        cuts in prop::collection::vec(1usize..300, 1..40),
        max in 8usize..200,
    ) {
        let mut s = LineSplitter::new(max);
        let mut out: Vec<Line> = Vec::new();
        let mut rest = &data[..];
        for c in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*c).min(rest.len());
            s.push(&rest[..n], &mut out);
            rest = &rest[n..];
        }
        s.flush(&mut out);
        // The limit is on bytes read (at least 16); an invalid byte becomes
        // U+FFFD, three bytes of text.
        let limit = if std::str::from_utf8(&data).is_ok() { max.max(16) } else { 3 * max.max(16) };
        let mut open_split = false;
        for l in &out {
            prop_assert!(l.text.len() <= limit, "{} > {limit}", l.text.len());
            match l.split {
                Some(SplitPart::First) => { prop_assert!(!open_split); open_split = true; }
                Some(SplitPart::Middle) => prop_assert!(open_split),
                Some(SplitPart::Last) => { prop_assert!(open_split); open_split = false; }
                None => prop_assert!(!open_split),
            }
        }
        prop_assert!(!open_split);
        // Valid UTF-8 input comes out byte for byte (newlines aside).
        if let Ok(text) = std::str::from_utf8(&data) {
            let want: String = text.replace("\r\n", "\n").chars().filter(|c| *c != '\n').collect();
            let got: String = out.iter().map(|l| l.text.as_str()).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn level_detection_never_panics(line in ".{0,300}", key in proptest::option::of("[a-z.]{0,8}")) {
        for mode in [ParseMode::Plain, ParseMode::Json, ParseMode::Logfmt, ParseMode::Auto] {
            let _ = detect_level(&line, mode, key.as_deref());
        }
    }
}
