//! The Loki read API against the real binary: the exact requests an
//! unmodified Grafana sends (shared/grafana-contract.md), a tail WebSocket,
//! and the requests of Loki's command-line client (not the client itself:
//! it is AGPL-licensed).
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{PATIENCE, Server};
use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const LOG_QUERY_INSTANT: &str = "log queries are not supported as an instant query type, please change your query to a range query type";
const EMPTY_SELECTOR: &str = "parse error : queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will";

/// A GET over a fresh connection: (status, content type, body).
fn get(s: &Server, path: &str) -> (u16, String, String) {
    get_with(s, path, "")
}

/// A GET with extra header lines (each ending in `\r\n`).
fn get_with(s: &Server, path: &str, headers: &str) -> (u16, String, String) {
    let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{headers}Connection: close\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, ctype, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn get_json(s: &Server, path: &str) -> Value {
    let (code, ctype, body) = get(s, path);
    assert_eq!(code, 200, "{path}: {body}");
    assert_eq!(ctype, "application/json", "{path}");
    serde_json::from_str(&body).unwrap()
}

fn enc(pairs: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap()
}

fn now_ns() -> i64 {
    logstream::hub::now_ns()
}

/// Grafana's window: the last 10 minutes, as nanosecond strings.
fn last_10m() -> (String, String) {
    let now = now_ns();
    ((now - 600_000_000_000).to_string(), now.to_string())
}

/// Polls `query_range` until `query` returns `n` lines (the tailer publishes
/// asynchronously); returns the response.
fn wait_lines(s: &Server, query: &str, n: usize) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (start, end) = last_10m();
        let v = get_json(
            s,
            &format!(
                "/loki/api/v1/query_range?{}",
                enc(&[
                    ("direction", "backward"),
                    ("end", &end),
                    ("limit", "1000"),
                    ("query", query),
                    ("start", &start),
                    ("step", "2000ms"),
                ])
            ),
        );
        let got: usize = v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["values"].as_array().unwrap().len())
            .sum();
        if got >= n {
            return v;
        }
        assert!(Instant::now() < deadline, "only {got} of {n} lines: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the fixture: 3 info, 2 warn, 1 error, 1 without level in app.log;
/// 2 lines in db.log.
fn write_fixture(s: &Server) {
    s.append(
        "app.log",
        "INFO started x=1\nWARN slow x=2\nINFO tick x=3\n{\"level\":\"error\",\"status\":500,\"msg\":\"boom x\"}\nno level here\nWARN slower x=4\nINFO done\n",
    );
    s.append("db.log", "INFO vacuum\nERROR disk full\n");
    wait_lines(s, r#"{file="app.log"}"#, 7);
    wait_lines(s, r#"{file="db.log"}"#, 2);
}

fn all_lines(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in v["data"]["result"].as_array().unwrap() {
        for pair in s["values"].as_array().unwrap() {
            let pair = pair.as_array().unwrap();
            assert_eq!(pair.len(), 2, "values are 2-tuples: {pair:?}");
            out.push((
                pair[0].as_str().unwrap().to_string(),
                pair[1].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn grafana_health_checks() {
    let s = Server::start(&[]);
    // Grafana >= 10.2 (backend).
    let (code, ctype, body) = get(
        &s,
        "/loki/api/v1/query?query=vector%281%29%2Bvector%281%29&time=4000000000&direction=backward",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(ctype, "application/json");
    assert_eq!(
        body,
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[4000000000,"2"]}]}}"#
    );
    // Grafana 10.0-10.1 (browser): labels over the last 10 minutes, non-empty.
    s.append("app.log", "INFO hello\n");
    wait_lines(&s, r#"{file="app.log"}"#, 1);
    let (start, end) = last_10m();
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/labels?{}",
            enc(&[("start", &start), ("end", &end)])
        ),
    );
    assert_eq!(v["status"], "success");
    let names: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"file") && names.contains(&"level"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"namespace"),
        "empty labels are absent: {names:?}"
    );
    assert_eq!(get(&s, "/ready").0, 200);
    let b = get_json(&s, "/loki/api/v1/status/buildinfo");
    assert!(b["version"].is_string());
}

#[test]
fn labels_values_series_and_stats_as_grafana_asks() {
    let s = Server::start(&[]);
    write_fixture(&s);
    let (start, end) = last_10m();
    let window = enc(&[("start", &start), ("end", &end)]);
    let v = get_json(&s, &format!("/loki/api/v1/label/level/values?{window}"));
    assert_eq!(
        v["data"],
        serde_json::json!(["error", "info", "unknown", "warn"])
    );
    let v = get_json(&s, &format!("/loki/api/v1/label/file/values?{window}"));
    assert_eq!(v["data"], serde_json::json!(["app.log", "db.log"]));
    // Newer Grafana narrows values with a selector.
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/label/level/values?{window}&{}",
            enc(&[("query", r#"{file="db.log"}"#)])
        ),
    );
    assert_eq!(v["data"], serde_json::json!(["error", "info"]));
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/series?{window}&{}",
            enc(&[("match[]", r#"{file="app.log"}"#)])
        ),
    );
    let mut levels: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(l["file"], "app.log");
            l["level"].as_str().unwrap()
        })
        .collect();
    levels.sort();
    assert_eq!(levels, ["error", "info", "unknown", "warn"]);
    let (code, _, body) = get(
        &s,
        &format!(
            "/loki/api/v1/index/stats?{window}&{}",
            enc(&[("query", r#"{file="db.log"}"#)])
        ),
    );
    assert_eq!(code, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["streams"], 2);
    assert_eq!(st["entries"], 2);
    assert_eq!(st["bytes"], "INFO vacuum".len() + "ERROR disk full".len());
}

#[test]
fn query_range_log_queries_like_grafana() {
    let s = Server::start(&[]);
    write_fixture(&s);
    let v = wait_lines(&s, r#"{file="app.log"}"#, 7);
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "streams");
    assert!(v.get("warnings").is_none(), "{v}");
    let lines = all_lines(&v);
    assert_eq!(lines.len(), 7);
    for (ts, _) in &lines {
        let ns: i64 = ts.parse().unwrap();
        assert!(ns > now_ns() - 600_000_000_000 && ts.len() == 19, "{ts}");
    }
    let warn = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"]["level"] == "warn")
        .unwrap();
    assert_eq!(warn["stream"]["file"], "app.log");
    let warn_lines: Vec<&str> = warn["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_str().unwrap())
        .collect();
    assert_eq!(warn_lines, ["WARN slower x=4", "WARN slow x=2"], "backward");

    // Line filters, chained and empty, as "add line filter" emits them; a
    // limit across streams with a truncation warning.
    let (start, end) = last_10m();
    let q = |query: &str, limit: &str, dir: &str| {
        get_json(
            &s,
            &format!(
                "/loki/api/v1/query_range?{}",
                enc(&[
                    ("direction", dir),
                    ("end", &end),
                    ("limit", limit),
                    ("query", query),
                    ("start", &start),
                    ("step", "2000ms"),
                ])
            ),
        )
    };
    let v = q(
        r#"{file="app.log"} |= `` |= "x" != "x=3""#,
        "1000",
        "backward",
    );
    let mut got: Vec<String> = all_lines(&v).into_iter().map(|(_, l)| l).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "INFO started x=1",
            "WARN slow x=2",
            "WARN slower x=4",
            r#"{"level":"error","status":500,"msg":"boom x"}"#
        ]
    );
    let v = q(r#"{file=~"app.log|db.log"}"#, "2", "forward");
    let got: Vec<String> = all_lines(&v).into_iter().map(|(_, l)| l).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    // Cut at the limit: no notice, as Loki sends none.
    assert!(v.get("warnings").is_none(), "{v}");
    // Parsers and label filters from Explore's buttons.
    let v = q(
        r#"{file="app.log"} | json | __error__=`` | status >= 500"#,
        "1000",
        "backward",
    );
    let r = v["data"]["result"].as_array().unwrap();
    assert_eq!(r.len(), 1, "{v}");
    assert_eq!(r[0]["stream"]["msg"], "boom x");
    let v = q(r#"{file="app.log"} | logfmt | x > 2"#, "1000", "backward");
    let mut got: Vec<String> = all_lines(&v).into_iter().map(|(_, l)| l).collect();
    got.sort();
    assert!(
        got.contains(&"WARN slower x=4".to_string()) && got.contains(&"INFO tick x=3".to_string()),
        "{got:?}"
    );

    // start inclusive, end exclusive.
    let first: i64 = all_lines(&q(r#"{file="app.log"}"#, "1", "forward"))[0]
        .0
        .parse()
        .unwrap();
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                ("query", r#"{file="app.log"}"#),
                ("start", &first.to_string()),
                ("end", &(first + 1).to_string()),
                ("limit", "1000"),
            ])
        ),
    );
    let at_first = all_lines(&v);
    assert!(!at_first.is_empty() && at_first.iter().all(|(t, _)| *t == first.to_string()));
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                ("query", r#"{file="app.log"}"#),
                ("start", &(first - 1_000_000_000).to_string()),
                ("end", &first.to_string()),
            ])
        ),
    );
    assert!(all_lines(&v).is_empty(), "{v}");
    // RFC 3339 and float seconds are accepted too.
    let rfc = logstream::hub::format_ts(first);
    let secs = format!("{}.{:03}", (first - 1_000_000_000) / 1_000_000_000, 0);
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                ("query", r#"{file="app.log"}"#),
                ("start", &secs),
                ("end", &rfc)
            ])
        ),
    );
    assert!(
        all_lines(&v)
            .iter()
            .all(|(t, _)| t.parse::<i64>().unwrap() < first)
    );
}

#[test]
fn logs_volume_and_metric_queries() {
    let s = Server::start(&[]);
    write_fixture(&s);
    let (start, end) = last_10m();
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                ("direction", "backward"),
                ("end", &end),
                ("limit", "1000"),
                (
                    "query",
                    r#"sum by (level) (count_over_time({file="app.log"} | drop __error__[2000ms]))"#
                ),
                ("start", &start),
                ("step", "2000ms"),
            ])
        ),
    );
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "matrix");
    let mut totals = std::collections::BTreeMap::new();
    for series in v["data"]["result"].as_array().unwrap() {
        let metric = series["metric"].as_object().unwrap();
        assert_eq!(metric.len(), 1, "only the level label: {metric:?}");
        let mut sum = 0.0;
        for p in series["values"].as_array().unwrap() {
            let t = p[0].as_f64().expect("sample time is a number");
            assert_eq!(t % 2.0, 0.0, "steps on multiples of 2s: {t}");
            sum += p[1]
                .as_str()
                .expect("sample value is a string")
                .parse::<f64>()
                .unwrap();
        }
        totals.insert(metric["level"].as_str().unwrap().to_string(), sum);
    }
    assert_eq!(
        totals,
        [
            ("error", 1.0),
            ("info", 3.0),
            ("unknown", 1.0),
            ("warn", 2.0)
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into()
    );
    // An instant metric query is a vector; rate divides by the range.
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query?{}",
            enc(&[("query", r#"sum(count_over_time({file=~".+"}[1h])) * 2"#)])
        ),
    );
    assert_eq!(v["data"]["resultType"], "vector");
    assert_eq!(v["data"]["result"][0]["value"][1], "18");
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query?{}",
            enc(&[("query", r#"sum by (file) (rate({file="db.log"}[1h]))"#)])
        ),
    );
    assert_eq!(v["data"]["result"][0]["metric"]["file"], "db.log");
    let rate: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((rate - 2.0 / 3600.0).abs() < 1e-12, "{rate}");
}

#[test]
fn errors_are_400_text_plain_with_lokis_messages() {
    let s = Server::start(&[]);
    let check = |path: &str, want: &str| {
        let (code, ctype, body) = get(&s, path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(ctype.starts_with("text/plain"), "{ctype}");
        assert!(
            body.starts_with(want),
            "{path}: {body:?} does not start with {want:?}"
        );
    };
    check(
        &format!(
            "/loki/api/v1/query?{}",
            enc(&[("query", r#"{file="app.log"}"#)])
        ),
        LOG_QUERY_INSTANT,
    );
    for path in ["/loki/api/v1/query_range", "/loki/api/v1/query"] {
        check(
            &format!("{path}?{}", enc(&[("query", "{}")])),
            EMPTY_SELECTOR,
        );
    }
    check(
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[("query", "{file=\"a\"}\n | unknown_stage")])
        ),
        "parse error at line 2, col 4: syntax error: unexpected IDENTIFIER \"unknown_stage\"",
    );
    check(
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[("query", r#"absent_over_time({a="b"}[1m])"#)])
        ),
        "parse error at line 1, col 1: function absent_over_time is not supported",
    );
    check(
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                ("query", r#"count_over_time({a="b"}[1m])"#),
                ("step", "1ms")
            ])
        ),
        "exceeded maximum resolution of 11,000 points",
    );
}

#[tokio::test]
async fn the_servers_token_rules_apply_before_any_work() {
    let s = Server::start(&["--token", "s3cret", "--no-loopback-exemption"]);
    let labels = "/loki/api/v1/labels";
    assert_eq!(get(&s, labels).0, 401);
    assert_eq!(
        get_with(&s, labels, "Authorization: Bearer nope\r\n").0,
        401
    );
    let (code, _, body) = get_with(&s, labels, "Authorization: Bearer s3cret\r\n");
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&s, &format!("{labels}?access_token=s3cret")).0, 200);
    assert_eq!(get(&s, "/ready").0, 200, "probes need no token");
    // The tail is refused before the upgrade, and from a foreign origin.
    let url = s.ws_url(&format!(
        "/loki/api/v1/tail?{}",
        enc(&[("query", r#"{file="a"}"#)])
    ));
    match tokio_tungstenite::connect_async(url.clone()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{url}&access_token=s3cret")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}&access_token=s3cret"))
        .await
        .unwrap();
    drop(ws);
}

async fn next_text(
    ws: &mut (impl StreamExt<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin),
) -> Value {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .unwrap()
        {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

fn frame_lines(v: &Value) -> Vec<String> {
    assert!(v["dropped_entries"].is_null(), "{v}");
    let mut out = Vec::new();
    for s in v["streams"].as_array().unwrap() {
        assert!(s["stream"]["file"].is_string());
        for p in s["values"].as_array().unwrap() {
            assert_eq!(p.as_array().unwrap().len(), 2);
            assert!(
                p[0].as_str().unwrap().parse::<i64>().is_ok(),
                "ns string: {p}"
            );
            out.push(p[1].as_str().unwrap().to_string());
        }
    }
    out
}

#[tokio::test]
async fn tail_replays_recent_lines_then_streams_live() {
    let s = Server::start(&[]);
    write_fixture(&s);
    let url = s.ws_url(&format!(
        "/loki/api/v1/tail?{}",
        enc(&[("query", r#"{file="app.log"} |= "x""#)])
    ));
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101);
    let replay = frame_lines(&next_text(&mut ws).await);
    let mut sorted = replay.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "INFO started x=1",
            "INFO tick x=3",
            "WARN slow x=2",
            "WARN slower x=4",
            r#"{"level":"error","status":500,"msg":"boom x"}"#
        ]
    );
    s.append("app.log", "no match here\nERROR live x=5\n");
    s.append("db.log", "x but another file\n");
    let mut live = Vec::new();
    while live.is_empty() {
        live = frame_lines(&next_text(&mut ws).await);
    }
    assert_eq!(live, ["ERROR live x=5"]);
    // The server pings; tungstenite answers while we read. Close cleanly.
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn tail_with_a_bad_query_is_accepted_then_closed_1008() {
    let s = Server::start(&[]);
    let url = s.ws_url(&format!(
        "/loki/api/v1/tail?{}",
        enc(&[("query", r#"{file="app.log"} |= "x" | nope"#)])
    ));
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(resp.status(), 101, "the upgrade is accepted");
    match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Policy);
            assert!(
                frame
                    .reason
                    .as_str()
                    .starts_with("parse error at line 1, col 27"),
                "{}",
                frame.reason
            );
        }
        other => panic!("expected close 1008, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The requests Loki's command-line client sends (its `query`, `labels` and
// `series` commands: `direction`, `limit` and a window in nanoseconds). The
// client itself is not run: it is AGPL-licensed and stays out of our tooling.

/// The lines of a log query, newest first (`direction=backward`) or oldest
/// first, as that client prints them with `-o raw`.
fn cli_query(s: &Server, query: &str, limit: usize, backward: bool) -> Vec<String> {
    let now = now_ns();
    let v = get_json(
        s,
        &format!(
            "/loki/api/v1/query_range?{}",
            enc(&[
                ("query", query),
                ("limit", &limit.to_string()),
                ("start", &(now - 3_600_000_000_000).to_string()),
                ("end", &now.to_string()),
                ("direction", if backward { "backward" } else { "forward" }),
            ])
        ),
    );
    let mut lines = all_lines(&v);
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    if backward {
        lines.reverse();
    }
    lines.into_iter().map(|(_, line)| line).collect()
}

fn cli_list(s: &Server, path: &str, extra: &[(&str, &str)]) -> Vec<Value> {
    let now = now_ns();
    let start = (now - 3_600_000_000_000).to_string();
    let end = now.to_string();
    let mut pairs = vec![("start", start.as_str()), ("end", end.as_str())];
    pairs.extend_from_slice(extra);
    let v = get_json(s, &format!("{path}?{}", enc(&pairs)));
    v["data"].as_array().unwrap().clone()
}

#[test]
fn cli_shaped_query_labels_and_series() {
    let s = Server::start(&[]);
    write_fixture(&s);
    let got = cli_query(&s, r#"{file="app.log"} |= "x""#, 4, true);
    // The 4 newest matching lines, newest first.
    assert_eq!(
        got,
        [
            "WARN slower x=4",
            r#"{"level":"error","status":500,"msg":"boom x"}"#,
            "INFO tick x=3",
            "WARN slow x=2",
        ]
    );
    let mut got = cli_query(&s, r#"{level="error"}"#, 100, false);
    got.sort();
    assert_eq!(
        got,
        [
            "ERROR disk full",
            r#"{"level":"error","status":500,"msg":"boom x"}"#
        ]
    );
    let labels = cli_list(&s, "/loki/api/v1/labels", &[]);
    assert!(
        labels.contains(&Value::from("file")) && labels.contains(&Value::from("level")),
        "{labels:?}"
    );
    let values = cli_list(&s, "/loki/api/v1/label/file/values", &[]);
    assert_eq!(values, [Value::from("app.log"), Value::from("db.log")]);
    let series = cli_list(
        &s,
        "/loki/api/v1/series",
        &[("match[]", r#"{file="app.log"}"#)],
    );
    assert_eq!(series.len(), 4, "{series:?}");
    for level in ["error", "info", "unknown", "warn"] {
        assert!(
            series
                .iter()
                .any(|l| l["file"] == "app.log" && l["level"] == level),
            "{level}: {series:?}"
        );
    }
}

/// A Loki tail is counted like every other stream: records and bytes sent
/// by transport, gaps by reason, clients dropped by reason (before, a tail
/// counted only the records its gaps skipped).
#[tokio::test]
async fn a_tail_is_counted_like_every_stream() {
    let s = Server::start(&[
        "--client-queue-bytes",
        "65536",
        "--slow-client-grace",
        "0s",
        "--slow-client",
        "close",
    ]);
    write_fixture(&s);
    let url = s.ws_url(&format!(
        "/loki/api/v1/tail?{}",
        enc(&[("query", r#"{file="app.log"}"#)])
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(!frame_lines(&next_text(&mut ws).await).is_empty());
    s.wait_metric("logstream_records_sent_total{transport=\"ws\"}", 1.0);
    // Then it stops reading while the file grows far past its queue.
    let block = format!("{}\n", "y".repeat(199)).repeat(500);
    let series = "logstream_clients_dropped_total{reason=\"slow_client\"}";
    let deadline = Instant::now() + PATIENCE;
    while s.metric(series).unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "never dropped");
        s.append("app.log", &block);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);
}

/// SIGTERM with a tail open: the lines written before it are delivered,
/// then the tail is closed 1001 and the process exits 0. The tail waits on
/// the hub alone (no drain timer of its own, which every idle tail held):
/// the hub closing after the last read is what ends it.
#[tokio::test]
async fn a_tail_gets_every_line_then_1001_when_the_server_drains() {
    let mut s = Server::start(&[]);
    write_fixture(&s);
    let url = s.ws_url(&format!(
        "/loki/api/v1/tail?{}",
        enc(&[("query", r#"{file="app.log"} |= "last""#)])
    ));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    s.append("app.log", "the last line\n");
    s.wait_metric("logstream_lines_read_total", 1.0);
    let mut got = Vec::new();
    while got.is_empty() {
        got = frame_lines(&next_text(&mut ws).await);
    }
    assert_eq!(got, ["the last line"]);
    s.append("app.log", "written before the signal: last\n");
    s.signal("TERM");
    let mut lines = Vec::new();
    let close = loop {
        match tokio::time::timeout(PATIENCE, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                lines.extend(frame_lines(&serde_json::from_str(t.as_str()).unwrap()))
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(lines, ["written before the signal: last"]);
    let close = close.unwrap();
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "server shutting down");
    assert!(s.wait_exit().success());
}

/// RFC 3339 with milliseconds, as the Logs Drilldown app sends `start`/`end`.
fn iso(ns: i64) -> String {
    logstream::hub::format_ts(ns - ns.rem_euclid(1_000_000))
        .replace(".000000Z", "Z")
        .replacen("000000Z", "Z", 1)
}

/// The app's window: `start` and `end` in RFC 3339, the last 10 minutes
/// (and a second ahead), as query parameters.
fn iso_window() -> String {
    let now = now_ns();
    enc(&[
        ("start", &iso(now - 600_000_000_000)),
        ("end", &iso(now + 1_000_000_000)),
    ])
}

/// The requests Grafana 12's Logs Drilldown app sends on its landing page, a
/// service page (logs, volume, labels, fields, patterns) and a value picker
/// (docs/grafana-contract.md), each answered 200 with the shape the app
/// parses, read field by field as it reads them.
#[test]
fn logs_drilldown_requests_get_the_shapes_the_app_parses() {
    let s = Server::start(&[]);
    write_fixture(&s);
    let window = iso_window();
    let (ns_start, ns_end) = last_10m();
    let ns_window = enc(&[("start", &ns_start), ("end", &ns_end)]);
    // Landing page: the app's configuration, then the service list.
    let limits = get_json(&s, "/loki/api/v1/drilldown-limits");
    assert_eq!(limits["pattern_ingester_enabled"], true);
    assert_eq!(limits["limits"]["retention_period"], "0s");
    assert!(
        limits["limits"]["max_entries_limit_per_query"]
            .as_u64()
            .unwrap()
            > 0
    );
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/index/volume?{}&{window}&limit=5000",
            enc(&[("query", "{service_name=~`.+`}")])
        ),
    );
    assert_eq!(v["status"], "success");
    assert_eq!(v["data"]["resultType"], "vector");
    let result = v["data"]["result"].as_array().unwrap();
    assert_eq!(result.len(), 1, "{v}");
    // Local mode: no container, so Loki's rule gives unknown_service.
    assert_eq!(
        result[0]["metric"],
        serde_json::json!({"service_name": "unknown_service"})
    );
    let bytes: u64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
    let fixture_bytes = "INFO started x=1WARN slow x=2INFO tick x=3{\"level\":\"error\",\"status\":500,\"msg\":\"boom x\"}no level hereWARN slower x=4INFO doneINFO vacuumERROR disk full".len();
    assert_eq!(bytes as usize, fixture_bytes);
    assert!(result[0]["value"][0].is_f64() || result[0]["value"][0].is_u64());
    // The label tabs: an empty query is every stream.
    let v = get_json(&s, &format!("/loki/api/v1/detected_labels?query=&{window}"));
    let labels: Vec<(&str, u64)> = v["detectedLabels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["label"].as_str().unwrap(),
                l["cardinality"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(labels.contains(&("detected_level", 4)), "{labels:?}");
    assert!(labels.contains(&("file", 2)), "{labels:?}");
    assert!(labels.contains(&("service_name", 1)), "{labels:?}");
    // The bars of a service, by level (Grafana has replaced $__auto).
    let svc = r#"service_name="unknown_service""#;
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query_range?{}&{ns_window}&step=2000ms",
            enc(&[(
                "query",
                &format!("sum by (detected_level) (count_over_time({{ {svc} }} [2s]))"),
            )])
        ),
    );
    let mut by_level: Vec<(String, u64)> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let total: u64 = r["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p[1].as_str().unwrap().parse::<u64>().unwrap())
                .sum();
            (
                r["metric"]["detected_level"].as_str().unwrap().to_string(),
                total,
            )
        })
        .collect();
    by_level.sort();
    assert_eq!(
        by_level,
        [
            ("error".to_string(), 2),
            ("info".to_string(), 4),
            ("unknown".to_string(), 1),
            ("warn".to_string(), 2)
        ]
    );
    // The logs panel with a level filter, as the app writes it.
    let v = wait_lines(
        &s,
        &format!("{{{svc}}} | detected_level=`error` or detected_level=``"),
        2,
    );
    let mut got: Vec<String> = all_lines(&v).into_iter().map(|(_, l)| l).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "ERROR disk full",
            r#"{"level":"error","status":500,"msg":"boom x"}"#
        ]
    );
    // The service page's parsers and its volume by level.
    let parsed = format!("{{{svc}}} | json | logfmt | drop __error__, __error_details__");
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/query_range?{}&{ns_window}&step=2000ms",
            enc(&[(
                "query",
                &format!("sum(count_over_time({parsed} [2s])) by (detected_level)"),
            )])
        ),
    );
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 4, "{v}");
    // Fields tab.
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/detected_fields?{}&{window}",
            enc(&[("query", &parsed)])
        ),
    );
    let fields = v["fields"].as_array().unwrap();
    let field = |n: &str| {
        fields
            .iter()
            .find(|f| f["label"] == n)
            .unwrap_or_else(|| panic!("{n}: {v}"))
            .clone()
    };
    assert_eq!(field("status")["type"], "int");
    assert_eq!(field("status")["parsers"], serde_json::json!(["json"]));
    assert_eq!(field("status")["jsonPath"], serde_json::json!(["status"]));
    assert_eq!(field("x")["parsers"], serde_json::json!(["logfmt"]));
    assert_eq!(field("x")["cardinality"], 4);
    assert!(v["limit"].as_u64().unwrap() > 0);
    // A value picker (Grafana core: ns times).
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/detected_field/detected_level/values?{}&{ns_window}&limit=1000",
            enc(&[("query", &format!("{{{svc}}}"))])
        ),
    );
    assert_eq!(
        v["values"],
        serde_json::json!(["error", "info", "unknown", "warn"])
    );
    let v = get_json(
        &s,
        &format!("/loki/api/v1/detected_field/nothing_here/values?{ns_window}"),
    );
    assert_eq!(v["values"], serde_json::json!([]), "an array, never {{}}");
    // Patterns tab: counts per step in whole seconds.
    let v = get_json(
        &s,
        &format!(
            "/loki/api/v1/patterns?{}&{window}&step=1m",
            enc(&[("query", &format!("{{{svc}}}"))])
        ),
    );
    assert_eq!(v["status"], "success");
    let pats = v["data"].as_array().unwrap();
    let warn = pats
        .iter()
        .find(|p| p["pattern"] == "WARN <_> <_>")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(warn["level"], "warn");
    let n: u64 = warn["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s[0].is_i64() || s[0].is_u64(), "{s}");
            s[1].as_u64().unwrap()
        })
        .sum();
    assert_eq!(n, 2);
    // Bad input: Loki's 400.
    let (code, ctype, body) = get(&s, "/loki/api/v1/patterns?query=%7B&step=1m");
    assert_eq!(code, 400, "{body}");
    assert!(ctype.starts_with("text/plain"));
    assert!(body.starts_with("parse error"), "{body}");
}

/// The Drilldown landing page and a service page on an aggregator fed by
/// two sidecars whose pods belong to different services (as the operator
/// tells them), with JSON, logfmt and plain lines: the service list names
/// both, and a service's fields and levels are its own.
#[test]
fn logs_drilldown_on_an_aggregator_of_two_services() {
    let checkout = Server::sidecar("shop", "checkout-1", &["--service-name", "checkout"]);
    let search = Server::sidecar("shop", "search-1", &["--service-name", "search"]);
    let agg = Server::aggregator(&[&checkout, &search], &["--reorder-window", "0s"]);
    checkout.append(
        "app.log",
        "{\"level\":\"error\",\"order\":7,\"msg\":\"card declined\"}\nlevel=info order=8 msg=paid\n",
    );
    search.append(
        "app.log",
        "INFO query q=shoes took=12ms\nplain words only\n",
    );
    wait_lines(&agg, r#"{service_name=~"checkout|search"}"#, 4);
    let window = iso_window();
    let v = get_json(
        &agg,
        &format!(
            "/loki/api/v1/index/volume?{}&{window}&limit=5000",
            enc(&[("query", "{service_name=~`.+`}")])
        ),
    );
    let mut services: Vec<&str> = v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["service_name"].as_str().unwrap())
        .collect();
    services.sort();
    assert_eq!(services, ["checkout", "search"], "{v}");
    let v = get_json(
        &agg,
        &format!(
            "/loki/api/v1/detected_fields?{}&{window}",
            enc(&[(
                "query",
                r#"{service_name="checkout"} | json | logfmt | drop __error__, __error_details__"#
            )])
        ),
    );
    let mut fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["level", "msg", "order"], "{v}");
    let v = get_json(
        &agg,
        &format!(
            "/loki/api/v1/detected_field/detected_level/values?{window}&{}",
            enc(&[("query", r#"{service_name="search"}"#)])
        ),
    );
    assert_eq!(v["values"], serde_json::json!(["info", "unknown"]));
    let v = get_json(
        &agg,
        &format!("/loki/api/v1/label/service_name/values?{window}"),
    );
    assert_eq!(v["data"], serde_json::json!(["checkout", "search"]));
}
