use super::*;
use crate::{MetricExpr, Query, parse};

/// [`super::log_query`] over one slice, which cannot fail.
fn log_query(
    q: &LogQuery,
    e: &[impl LogEntry],
    start: i64,
    end: i64,
    limit: usize,
    dir: Direction,
) -> LogResult {
    super::log_query(q, e, start, end, limit, dir).expect("a slice is read whole")
}

pub const T0: i64 = 1_700_000_000_000_000_000;
pub const SEC: i64 = 1_000_000_000;

/// Levels of the sample lines.
#[derive(Clone, Copy)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// An entry of pod `pod` (container `app`, namespace `ns`): the stream
/// labels logstream gives a record.
pub struct Entry {
    file: String,
    level: Option<Level>,
    ts_ns: i64,
    idx: u64,
    line: String,
}

impl LogEntry for Entry {
    fn stream_key(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(&self.file, self.level.map(|l| l as u8)), &mut h);
        std::hash::Hasher::finish(&h)
    }
    fn stream_labels(&self) -> Labels {
        let level = match self.level {
            Some(Level::Info) => "info",
            Some(Level::Warn) => "warn",
            Some(Level::Error) => "error",
            None => "unknown",
        };
        [
            ("namespace", "ns"),
            ("pod", "pod"),
            ("container", "app"),
            ("file", self.file.as_str()),
            ("level", level),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }
    fn idx(&self) -> u64 {
        self.idx
    }
    fn line(&self) -> &str {
        &self.line
    }
}

/// Entries of `app.log` and `db.log` at known times: (file, level, seconds after T0, line).
pub fn entries(rows: &[(&str, Option<Level>, i64, &str)]) -> Vec<Arc<Entry>> {
    rows.iter()
        .zip(0..)
        .map(|((file, level, secs, line), idx)| {
            Arc::new(Entry {
                file: file.to_string(),
                level: *level,
                ts_ns: T0 + secs * SEC,
                idx,
                line: line.to_string(),
            })
        })
        .collect()
}

fn sample() -> Vec<Arc<Entry>> {
    use Level::*;
    entries(&[
        ("app.log", Some(Info), 0, "INFO started x=1"),
        ("app.log", Some(Warn), 1, "WARN slow request x=2"),
        ("db.log", None, 1, "vacuum"),
        (
            "app.log",
            Some(Error),
            2,
            r#"{"level":"error","status":500,"req":{"path":"/a"},"dur":"1.5s"}"#,
        ),
        (
            "app.log",
            Some(Info),
            3,
            r#"{"level":"info","status":200,"req":{"path":"/b"},"dur":"20ms"}"#,
        ),
        ("app.log", Some(Info), 4, "INFO done x=3"),
        ("app.log", None, 5, "no level here"),
    ])
}

fn lq(q: &str) -> LogQuery {
    match parse(q).unwrap() {
        Query::Log(l) => l,
        Query::Metric(_) => panic!("metric"),
    }
}

fn mq(q: &str) -> MetricExpr {
    match parse(q).unwrap() {
        Query::Metric(m) => m,
        Query::Log(_) => panic!("log"),
    }
}

fn lines(r: &LogResult) -> Vec<&str> {
    r.streams
        .iter()
        .flat_map(|s| s.values.iter().map(|(_, l)| l.as_str()))
        .collect()
}

const ALL: (i64, i64) = (T0, T0 + 100 * SEC);

#[test]
fn limit_applies_across_streams_in_both_directions() {
    let e = sample();
    let q = lq(r#"{file="app.log"}"#);
    let r = log_query(&q, &e, ALL.0, ALL.1, 2, Direction::Backward);
    assert_eq!(r.matched, 6);
    assert_eq!(r.returned, 2);
    let mut got = lines(&r);
    got.sort();
    assert_eq!(got, ["INFO done x=3", "no level here"]);
    let r = log_query(&q, &e, ALL.0, ALL.1, 2, Direction::Forward);
    let mut got = lines(&r);
    got.sort();
    assert_eq!(got, ["INFO started x=1", "WARN slow request x=2"]);
    // Within a stream, values follow the direction.
    let r = log_query(&q, &e, ALL.0, ALL.1, 100, Direction::Backward);
    let info = r
        .streams
        .iter()
        .find(|s| s.labels["level"] == "info")
        .unwrap();
    let ts: Vec<i64> = info.values.iter().map(|(t, _)| *t).collect();
    assert!(ts.windows(2).all(|w| w[0] > w[1]), "{ts:?}");
}

#[test]
fn start_is_inclusive_and_end_exclusive() {
    let e = sample();
    let q = lq(r#"{file="app.log"}"#);
    let r = log_query(&q, &e, T0 + SEC, T0 + 3 * SEC, 100, Direction::Forward);
    assert_eq!(lines(&r).len(), 2, "{:?}", lines(&r));
    assert_eq!(r.streams[0].values.len() + r.streams[1].values.len(), 2);
}

#[test]
fn line_filters_and_selectors() {
    let e = sample();
    let r = log_query(
        &lq(r#"{file=~"app.*", level!="warn"} |= "x=" != "done""#),
        &e,
        ALL.0,
        ALL.1,
        100,
        Direction::Forward,
    );
    assert_eq!(lines(&r), ["INFO started x=1"]);
    let r = log_query(
        &lq(r#"{level="unknown"}"#),
        &e,
        ALL.0,
        ALL.1,
        100,
        Direction::Forward,
    );
    // Streams are ordered by their labels (app.log before db.log).
    assert_eq!(lines(&r), ["no level here", "vacuum"]);
}

#[test]
fn json_extracts_flattened_fields_and_marks_errors() {
    let e = sample();
    let r = log_query(
        &lq(r#"{file="app.log"} | json | status >= 500"#),
        &e,
        ALL.0,
        ALL.1,
        100,
        Direction::Forward,
    );
    // Non-JSON lines carry __error__ and skip the label filter, like Loki.
    let errored: Vec<&Stream> = r
        .streams
        .iter()
        .filter(|s| s.labels.contains_key(ERROR_LABEL))
        .collect();
    assert_eq!(errored.iter().map(|s| s.values.len()).sum::<usize>(), 4);
    let ok: Vec<&Stream> = r
        .streams
        .iter()
        .filter(|s| !s.labels.contains_key(ERROR_LABEL))
        .collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].labels["status"], "500");
    assert_eq!(ok[0].labels["req_path"], "/a");
    assert_eq!(ok[0].labels["level_extracted"], "error");
    assert_eq!(ok[0].labels["level"], "error");
    // Dropping errored lines and comparing durations.
    let r = log_query(
        &lq(r#"{file="app.log"} | json | __error__=`` | dur > 1s"#),
        &e,
        ALL.0,
        ALL.1,
        100,
        Direction::Forward,
    );
    assert_eq!(r.returned, 1);
    assert!(lines(&r)[0].contains("/a"));
    // drop __error__ keeps the lines but removes the label.
    let r = log_query(
        &lq(r#"{file="app.log"} | json | drop __error__, req_path"#),
        &e,
        ALL.0,
        ALL.1,
        100,
        Direction::Forward,
    );
    assert_eq!(r.returned, 6);
    assert!(
        r.streams
            .iter()
            .all(|s| !s.labels.contains_key(ERROR_LABEL) && !s.labels.contains_key("req_path"))
    );
}

#[test]
fn logfmt_regexp_formats_and_keep() {
    let e = sample();
    let r = log_query(
        &lq(
            r#"{file="app.log"} |~ "x=\\d" | logfmt | x > 1 | line_format "{{.level}}: x is {{.x}}" | label_format n=x | keep n, level"#,
        ),
        &e,
        ALL.0,
        ALL.1,
        100,
        Direction::Forward,
    );
    assert_eq!(lines(&r), ["info: x is 3", "warn: x is 2"]);
    assert!(r.streams.iter().all(|s| s.labels.len() == 2));
    assert_eq!(r.streams[0].labels["n"], "3");
    let r = log_query(
        &lq(r#"{file="app.log"} | regexp `^(?P<word>[A-Z]+) ` | word="WARN""#),
        &e,
        ALL.0,
        ALL.1,
        100,
        Direction::Forward,
    );
    assert_eq!(lines(&r), ["WARN slow request x=2"]);
}

#[test]
fn logfmt_parser() {
    assert_eq!(
        logfmt_fields(r#"a=1 b="two words" c= d e="q\"x""#).unwrap(),
        [
            ("a".into(), "1".into()),
            ("b".into(), "two words".into()),
            ("c".into(), String::new()),
            ("d".into(), String::new()),
            ("e".into(), "q\"x".into()),
        ]
    );
    assert!(logfmt_fields(r#"a="open"#).is_none());
    assert!(logfmt_fields("=x").is_none());
    assert_eq!(decolorize("\u{1b}[31mred\u{1b}[0m!"), "red!");
}

#[test]
fn count_over_time_with_sum_by_level() {
    let e = sample();
    let expr = mq(r#"sum by (level) (count_over_time({file="app.log"} | drop __error__[2000ms]))"#);
    let steps = Steps {
        start: T0,
        step: 2 * SEC,
        count: 4,
    };
    let Grid::Vector(series) = metric_query(&expr, &e, &steps).unwrap() else {
        panic!()
    };
    let get = |lvl: &str| {
        series
            .iter()
            .find(|s| s.labels.get("level").map(String::as_str) == Some(lvl))
            .unwrap_or_else(|| panic!("{lvl}: {series:?}"))
            .values
            .clone()
    };
    // Windows (t-2s, t] at t = 0, 2, 4, 6 s.
    assert_eq!(get("info"), [Some(1.0), None, Some(2.0), None]);
    assert_eq!(get("warn"), [None, Some(1.0), None, None]);
    assert_eq!(get("error"), [None, Some(1.0), None, None]);
    assert_eq!(get("unknown"), [None, None, None, Some(1.0)]);
    assert!(series.iter().all(|s| s.labels.len() == 1));
}

#[test]
fn rate_sum_without_and_arithmetic() {
    let e = sample();
    let steps = Steps {
        start: T0 + 10 * SEC,
        step: SEC,
        count: 1,
    };
    let g = metric_query(&mq(r#"sum(rate({file=~".+"}[10s]))"#), &e, &steps).unwrap();
    // Entries at 1..=5 s (6 of 7; the one at 0 s is outside (0, 10]).
    assert_eq!(
        g,
        Grid::Vector(vec![Series {
            labels: Labels::new(),
            values: vec![Some(0.6)]
        }])
    );
    let g = metric_query(
        &mq(r#"sum without (level, pod, namespace, container) (count_over_time({file=~".+"}[1m])) * 2"#),
        &e,
        &steps,
    )
    .unwrap();
    let Grid::Vector(s) = g else { panic!() };
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].labels["file"], "app.log");
    assert_eq!(s[0].values, [Some(12.0)]);
    assert_eq!(s[1].values, [Some(2.0)]);
    let g = metric_query(&mq("vector(1)+vector(1)"), &e, &Steps::instant(T0)).unwrap();
    assert_eq!(
        g,
        Grid::Vector(vec![Series {
            labels: Labels::new(),
            values: vec![Some(2.0)]
        }])
    );
    assert_eq!(
        metric_query(&mq("2 ^ 3 - 1"), &e, &Steps::instant(T0)).unwrap(),
        Grid::Scalar(7.0)
    );
    assert!(metric_query(&mq("sum(1)"), &e, &Steps::instant(T0)).is_err());
}

#[test]
fn offset_shifts_the_window() {
    let e = sample();
    let steps = Steps::instant(T0 + 12 * SEC);
    let g = metric_query(
        &mq(r#"count_over_time({file="db.log"}[5s] offset 10s)"#),
        &e,
        &steps,
    )
    .unwrap();
    let Grid::Vector(s) = g else { panic!() };
    assert_eq!(s[0].values, [Some(1.0)]);
    assert_eq!(
        needed_window(&mq(r#"count_over_time({a="b"}[5s] offset 10s)"#), &steps).0,
        T0 - 3 * SEC
    );
}

#[test]
fn values_format_like_prometheus() {
    assert_eq!(format_value(2.0), "2");
    assert_eq!(format_value(0.1), "0.1");
    assert_eq!(format_value(1e21), "1000000000000000000000");
    assert_eq!(format_value(f64::INFINITY), "+Inf");
    assert_eq!(format_value(f64::NAN), "NaN");
}

/// One row of a parity table: a query, its input lines (all in `app.log`,
/// a second apart) and what Loki answers: each returned line with the
/// labels it gets beyond the stream's, in time order.
struct Parity {
    query: &'static str,
    lines: &'static [&'static str],
    want: &'static [(&'static str, &'static [(&'static str, &'static str)])],
}

/// A returned line and the labels it has beyond its stream's.
type Got = (String, Vec<(String, String)>);

fn check_parity(rows: &[Parity]) {
    for row in rows {
        let input: Vec<(&str, Option<Level>, i64, &str)> = row
            .lines
            .iter()
            .zip(0..)
            .map(|(l, i)| ("app.log", None, i, *l))
            .collect();
        let e = entries(&input);
        let r = log_query(&lq(row.query), &e, ALL.0, ALL.1, 100, Direction::Forward);
        let base = e[0].stream_labels();
        let mut got: Vec<(i64, Got)> = r
            .streams
            .iter()
            .flat_map(|s| {
                let extra: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .filter(|(k, v)| base.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                s.values
                    .iter()
                    .map(move |(ts, l)| (*ts, (l.clone(), extra.clone())))
            })
            .collect();
        got.sort();
        let got: Vec<Got> = got.into_iter().map(|(_, g)| g).collect();
        let want: Vec<Got> = row
            .want
            .iter()
            .map(|(l, x)| {
                let mut x: Vec<(String, String)> = x
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                x.sort();
                (l.to_string(), x)
            })
            .collect();
        assert_eq!(got, want, "{}", row.query);
    }
}

/// Where ours and Loki's answers differed for the same query and lines
/// (Loki's behaviour as its LogQL documentation and parsers define it).
#[test]
fn parsers_and_label_filters_answer_as_loki() {
    check_parity(&[
        // Loki runs logfmt on a line json failed on; `drop` removes the error.
        Parity {
            query: r#"{file="app.log"} | json | logfmt | drop __error__, __error_details__"#,
            lines: &[r#"{"a":"1"}"#, "b=2 c=x"],
            want: &[
                ("{\"a\":\"1\"}", &[("a", "1")]),
                ("b=2 c=x", &[("b", "2"), ("c", "x")]),
            ],
        },
        // A numeric comparison drops a line without the label; a value that
        // does not convert keeps the line with __error__ (LabelFilterErr).
        Parity {
            query: r#"{file="app.log"} | json | n > 10"#,
            lines: &[r#"{"n":11}"#, r#"{"n":5}"#, r#"{"m":1}"#, r#"{"n":"x"}"#],
            want: &[
                ("{\"n\":11}", &[("n", "11")]),
                (
                    "{\"n\":\"x\"}",
                    &[("n", "x"), ("__error__", "LabelFilterErr")],
                ),
            ],
        },
        // The same for durations.
        Parity {
            query: r#"{file="app.log"} | logfmt | took > 1s"#,
            lines: &["took=2s", "took=10ms", "other=1"],
            want: &[("took=2s", &[("took", "2s")])],
        },
        // String equality with a missing label compares the empty value.
        Parity {
            query: r#"{file="app.log"} | logfmt | user="""#,
            lines: &["user=ann", "other=1"],
            want: &[("other=1", &[("other", "1")])],
        },
    ]);
}

/// Pattern line filters as the Logs Drilldown app writes them from its
/// Patterns tab (`|>` include, `!>` exclude, `or` between patterns).
#[test]
fn pattern_line_filters() {
    check_parity(&[
        Parity {
            query: r#"{file="app.log"} |> "<_> level=info <_>""#,
            lines: &["t=1 level=info msg=a", "t=2 level=warn msg=b", "level=info"],
            want: &[("t=1 level=info msg=a", &[])],
        },
        Parity {
            query: r#"{file="app.log"} !> "GET <_> 200 <_>""#,
            lines: &["GET /a 200 5ms", "GET /b 500 1ms", "GET  /c   200  2ms"],
            want: &[("GET /b 500 1ms", &[])],
        },
        Parity {
            query: r#"{file="app.log"} |> "disk <_>" or "<_> full""#,
            lines: &["disk full", "cpu full", "cpu idle"],
            want: &[("disk full", &[]), ("cpu full", &[])],
        },
        // Regular-expression characters in a pattern are literal.
        Parity {
            query: r#"{file="app.log"} |> "a.b (<_>)""#,
            lines: &["a.b (x)", "axb (x)"],
            want: &[("a.b (x)", &[])],
        },
    ]);
}

/// Instant results of a metric query over `lines` (all in `app.log`, a
/// second apart from T0), evaluated at T0 + 30 s: label set → value.
fn instant(query: &str, lines: &[&str]) -> Result<Vec<(Labels, f64)>, crate::LokiError> {
    let input: Vec<(&str, Option<Level>, i64, &str)> = lines
        .iter()
        .zip(0..)
        .map(|(l, i)| ("app.log", None, i, *l))
        .collect();
    let e = entries(&input);
    let base = e[0].stream_labels();
    match metric_query(&mq(query), &e, &Steps::instant(T0 + 30 * SEC))? {
        Grid::Vector(series) => Ok(series
            .into_iter()
            .filter_map(|s| {
                let extra: Labels = s
                    .labels
                    .into_iter()
                    .filter(|(k, v)| base.get(k) != Some(v))
                    .collect();
                Some((extra, s.values.first().copied().flatten()?))
            })
            .collect()),
        Grid::Scalar(v) => Ok(vec![(Labels::new(), v)]),
    }
}

fn one(v: f64) -> Vec<(Labels, f64)> {
    vec![(Labels::new(), v)]
}

/// `unwrap` and the functions over its samples, as Loki's documentation
/// defines them (Prometheus's `*_over_time` semantics over the window).
#[test]
fn unwrapped_range_functions_answer_as_loki() {
    let lat = ["took=1", "took=2", "took=3", "took=10"];
    let q = |f: &str| format!(r#"{f}({{file="app.log"}} | logfmt | unwrap took [1m])"#);
    let sum_by = |f: &str| format!("sum by () ({})", q(f));
    assert_eq!(instant(&sum_by("sum_over_time"), &lat).unwrap(), one(16.0));
    assert_eq!(instant(&sum_by("avg_over_time"), &lat).unwrap(), one(4.0));
    assert_eq!(instant(&sum_by("min_over_time"), &lat).unwrap(), one(1.0));
    assert_eq!(instant(&sum_by("max_over_time"), &lat).unwrap(), one(10.0));
    assert_eq!(instant(&sum_by("first_over_time"), &lat).unwrap(), one(1.0));
    assert_eq!(instant(&sum_by("last_over_time"), &lat).unwrap(), one(10.0));
    assert_eq!(
        instant(&sum_by("stdvar_over_time"), &lat).unwrap(),
        one(12.5)
    );
    assert_eq!(instant(&sum_by("rate"), &lat).unwrap(), one(16.0 / 60.0));
    let q90 =
        r#"sum by () (quantile_over_time(0.5, {file="app.log"} | logfmt | unwrap took [1m]))"#;
    assert_eq!(instant(q90, &lat).unwrap(), one(2.5));
    // Grouping on the range function itself: one series per path; the
    // unwrapped label is not a label of the result.
    let by_path = instant(
        r#"avg_over_time({file="app.log"} | logfmt | unwrap took [1m]) by (path)"#,
        &[
            "took=1 path=/a",
            "took=2 path=/a",
            "took=3 path=/b",
            "took=10 path=/b",
        ],
    )
    .unwrap();
    let want: Vec<(Labels, f64)> = vec![
        ([("path".to_string(), "/a".to_string())].into(), 1.5),
        ([("path".to_string(), "/b".to_string())].into(), 6.5),
    ];
    assert_eq!(by_path, want);
    // bytes() and duration() conversions, as the Drilldown app's field
    // breakdowns use them.
    let sizes = ["size=1KB", "size=512B", "size=1MiB"];
    assert_eq!(
        instant(
            r#"sum by () (sum_over_time({file="app.log"} | logfmt | unwrap bytes(size) [1m]))"#,
            &sizes
        )
        .unwrap(),
        one(1000.0 + 512.0 + 1_048_576.0)
    );
    let durs = ["d=150ms", "d=2s"];
    assert_eq!(
        instant(
            r#"sum by () (max_over_time({file="app.log"} | logfmt | unwrap duration(d) | __error__="" [1m]))"#,
            &durs
        )
        .unwrap(),
        one(2.0)
    );
    // A value that does not convert is an error of the query, unless a
    // label filter after the unwrap drops it.
    let mixed = ["took=1", "took=x"];
    let err = instant(
        r#"sum_over_time({file="app.log"} | logfmt | unwrap took [1m])"#,
        &mixed,
    )
    .unwrap_err();
    assert!(err.to_string().contains("SampleExtractionErr"), "{err}");
    assert_eq!(
        instant(
            r#"sum by () (sum_over_time({file="app.log"} | logfmt | unwrap took | __error__="" [1m]))"#,
            &mixed
        )
        .unwrap(),
        one(1.0)
    );
}

#[test]
fn unwrap_is_checked_where_it_is_written() {
    for (q, says) in [
        (r#"sum_over_time({a="b"}[1m])"#, "without unwrap"),
        (r#"count_over_time({a="b"} | unwrap x [1m])"#, "with unwrap"),
        (
            r#"{a="b"} | logfmt | unwrap x"#,
            "only allowed inside a range aggregation",
        ),
        (
            r#"count_over_time({a="b"}[1m]) by (x)"#,
            "grouping is not allowed",
        ),
    ] {
        let e = crate::parse(q).unwrap_err();
        assert!(e.to_string().contains(says), "{q}: {e}");
    }
}

/// Comparison operators and topk/bottomk, as Prometheus defines them for
/// LogQL: without `bool` a false comparison drops the sample (the vector's
/// value is kept), with `bool` every sample is 1 or 0.
#[test]
fn comparisons_and_topk_answer_as_loki() {
    // Counts per path over the minute: /a 3, /b 2, /c 1.
    let lines = [
        "path=/a", "path=/a", "path=/b", "path=/a", "path=/b", "path=/c",
    ];
    let by_path = r#"sum by (path) (count_over_time({file="app.log"} | logfmt [1m]))"#;
    let path = |p: &str| -> Labels { [("path".to_string(), p.to_string())].into() };
    assert_eq!(
        instant(&format!("{by_path} > 1"), &lines).unwrap(),
        vec![(path("/a"), 3.0), (path("/b"), 2.0)]
    );
    assert_eq!(
        instant(&format!("{by_path} > bool 1"), &lines).unwrap(),
        vec![(path("/a"), 1.0), (path("/b"), 1.0), (path("/c"), 0.0)]
    );
    assert_eq!(
        instant(&format!("2 >= {by_path}"), &lines).unwrap(),
        vec![(path("/b"), 2.0), (path("/c"), 1.0)]
    );
    assert_eq!(
        instant(&format!("{by_path} == {by_path}"), &lines).unwrap(),
        vec![(path("/a"), 3.0), (path("/b"), 2.0), (path("/c"), 1.0)]
    );
    assert_eq!(instant("1 < bool 2", &lines).unwrap(), one(1.0));
    // Comparisons bind looser than arithmetic.
    assert_eq!(
        instant(&format!("{by_path} * 2 > 4"), &lines).unwrap(),
        vec![(path("/a"), 6.0)]
    );
    assert_eq!(
        instant(&format!("topk(2, {by_path})"), &lines).unwrap(),
        vec![(path("/a"), 3.0), (path("/b"), 2.0)]
    );
    assert_eq!(
        instant(&format!("bottomk(1, {by_path})"), &lines).unwrap(),
        vec![(path("/c"), 1.0)]
    );
    // topk per group.
    let lines = [
        "path=/a lvl=x",
        "path=/a lvl=x",
        "path=/b lvl=x",
        "path=/c lvl=y",
    ];
    let by_both = r#"sum by (path, lvl) (count_over_time({file="app.log"} | logfmt [1m]))"#;
    let got = instant(&format!("topk by (lvl) (1, {by_both})"), &lines).unwrap();
    let paths: Vec<&str> = got.iter().map(|(l, _)| l["path"].as_str()).collect();
    assert_eq!(paths, ["/a", "/c"]);
    for (q, says) in [
        ("1 > 2", "must use BOOL modifier"),
        (
            &format!("topk(0, {by_path})") as &str,
            "not a positive integer",
        ),
    ] {
        let e = crate::parse(q).unwrap_err();
        assert!(e.to_string().contains(says), "{q}: {e}");
    }
}

/// `| pattern`, `| unpack` and `label_replace`, as Loki's documentation
/// defines them.
#[test]
fn pattern_unpack_and_label_replace_answer_as_loki() {
    check_parity(&[
        // `<_>` skips; the last capture runs to the end of the line; a line
        // that does not match gets no labels and is kept.
        Parity {
            query: r#"{file="app.log"} | pattern "<ip> - <_> \"<method> <path> <_>\" <status> <rest>""#,
            lines: &[
                r#"10.0.0.1 - bob "GET /a HTTP/1.1" 200 512 ms"#,
                "not an access log line",
            ],
            want: &[
                (
                    r#"10.0.0.1 - bob "GET /a HTTP/1.1" 200 512 ms"#,
                    &[
                        ("ip", "10.0.0.1"),
                        ("method", "GET"),
                        ("path", "/a"),
                        ("status", "200"),
                        ("rest", "512 ms"),
                    ],
                ),
                ("not an access log line", &[]),
            ],
        },
        // Packed lines: string fields become labels, `_entry` the line.
        Parity {
            query: r#"{file="app.log"} | unpack"#,
            lines: &[
                r#"{"_entry":"the original line","team":"a","n":1}"#,
                "plain",
            ],
            want: &[
                ("the original line", &[("team", "a")]),
                ("plain", &[("__error__", "JSONParserErr")]),
            ],
        },
    ]);
    let lines = ["path=/api/users", "path=/api/users", "path=/static/x"];
    let q = r#"label_replace(sum by (path) (count_over_time({file="app.log"} | logfmt [1m])), "area", "$1", "path", "/([a-z]+)/.*")"#;
    let got = instant(q, &lines).unwrap();
    let areas: Vec<(&str, &str, f64)> = got
        .iter()
        .map(|(l, v)| (l["path"].as_str(), l["area"].as_str(), *v))
        .collect();
    assert_eq!(
        areas,
        [("/api/users", "api", 2.0), ("/static/x", "static", 1.0)]
    );
    for (q, says) in [
        (
            r#"{a="b"} | pattern "<_> only""#,
            "at least one named capture",
        ),
        (r#"{a="b"} | pattern "<x> <x>""#, "repeats"),
        (
            r#"label_replace(vector(1), "d", "$1", "s", "(")"#,
            "invalid regular expression in label_replace()",
        ),
    ] {
        let e = crate::parse(q).unwrap_err();
        assert!(e.to_string().contains(says), "{q}: {e}");
    }
}

/// Entries split into chunks of `size`, read in the query's direction with
/// the time span of each chunk offered to `want` first, as a store on disk
/// does.
struct Chunked {
    entries: Vec<Arc<Entry>>,
    size: usize,
    read: std::cell::Cell<usize>,
}

impl EntryChunks for Chunked {
    type Entry = Arc<Entry>;
    fn each_chunk(
        &self,
        from: i64,
        to: i64,
        dir: Direction,
        want: &mut dyn FnMut(i64, i64) -> bool,
        visit: &mut dyn FnMut(&[Arc<Entry>]),
    ) -> Result<(), crate::LokiError> {
        let chunks: Vec<&[Arc<Entry>]> = self.entries.chunks(self.size).collect();
        let order: Box<dyn Iterator<Item = &&[Arc<Entry>]>> = match dir {
            Direction::Forward => Box::new(chunks.iter()),
            Direction::Backward => Box::new(chunks.iter().rev()),
        };
        for c in order {
            let lo = c.iter().map(|e| e.ts_ns).min().unwrap();
            let hi = c.iter().map(|e| e.ts_ns).max().unwrap();
            if hi >= from && lo < to && want(lo, hi) {
                self.read.set(self.read.get() + 1);
                visit(c);
            }
        }
        Ok(())
    }
}

#[test]
fn chunked_reading_returns_what_one_slice_does_and_skips_chunks_it_cannot_use() {
    // 600 lines, times not quite in order (as after a merge), some equal.
    let rows: Vec<(String, i64)> = (0..600)
        .map(|i| {
            (
                format!("line {i} {}", if i % 7 == 0 { "error" } else { "ok" }),
                (i / 3) as i64 + (i % 5) as i64,
            )
        })
        .collect();
    let all: Vec<Arc<Entry>> = rows
        .iter()
        .enumerate()
        .map(|(i, (line, secs))| {
            Arc::new(Entry {
                file: if i % 2 == 0 { "app.log" } else { "db.log" }.into(),
                level: None,
                ts_ns: T0 + secs * SEC,
                idx: i as u64,
                line: line.clone(),
            })
        })
        .collect();
    for q in [r#"{pod="pod"}"#, r#"{file="app.log"} |= "error""#] {
        let q = lq(q);
        for dir in [Direction::Forward, Direction::Backward] {
            for limit in [1, 10, 100, 1000] {
                let whole = log_query(&q, &all, ALL.0, ALL.1, limit, dir);
                for size in [1, 7, 64, 600] {
                    let c = Chunked {
                        entries: all.clone(),
                        size,
                        read: std::cell::Cell::new(0),
                    };
                    let got = super::log_query(&q, &c, ALL.0, ALL.1, limit, dir).unwrap();
                    let flat = |r: &LogResult| -> Vec<(i64, String)> {
                        r.streams
                            .iter()
                            .flat_map(|s| s.values.iter().cloned())
                            .collect()
                    };
                    assert_eq!(
                        flat(&got),
                        flat(&whole),
                        "limit {limit} size {size} {dir:?}"
                    );
                    if limit == 1 && size == 1 {
                        assert!(
                            c.read.get() < 60,
                            "read {} of 600 chunks: {q:?} {dir:?}",
                            c.read.get()
                        );
                    }
                }
            }
        }
    }
}
