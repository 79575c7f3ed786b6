use super::*;

fn log(q: &str) -> LogQuery {
    match parse(q).unwrap_or_else(|e| panic!("{q}: {e}")) {
        Query::Log(l) => l,
        Query::Metric(m) => panic!("{q}: metric {m:?}"),
    }
}

fn metric(q: &str) -> MetricExpr {
    match parse(q).unwrap_or_else(|e| panic!("{q}: {e}")) {
        Query::Metric(m) => m,
        Query::Log(l) => panic!("{q}: log {l:?}"),
    }
}

fn err(q: &str) -> String {
    match parse(q) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("{q} parsed: {v:?}"),
    }
}

#[test]
fn selectors_with_all_operators_and_anchored_regexes() {
    let q = log(r#"{a="b", c!="d", e=~"re.*", f!~"x|y"}"#);
    assert_eq!(q.matchers.len(), 4);
    let [a, c, e, f] = &q.matchers[..] else {
        panic!()
    };
    assert!(a.matches("b") && !a.matches("bb"));
    assert!(c.matches("x") && !c.matches("d"));
    assert!(
        e.matches("red") && !e.matches("are"),
        "anchored at the start"
    );
    assert!(f.matches("xy") && !f.matches("y"), "anchored at both ends");
}

#[test]
fn go_escapes_backticks_and_comments() {
    let q = log("{file=\"a\\\"b\\\\c\\x41\\u00e9\\101\"} # a comment\n |= `raw\\n`");
    assert_eq!(q.matchers[0].value, "a\"b\\cAéA");
    let Stage::Line(f) = &q.pipeline[0] else {
        panic!()
    };
    assert_eq!(f.patterns, ["raw\\n"]);
}

#[test]
fn chained_line_filters_including_the_empty_one() {
    let q = log(r#"{file="app.log"} |= `` |= "err" != "debug" |~ "(?i)time.?out" !~ "^x""#);
    assert_eq!(q.pipeline.len(), 5);
    let ok = |line: &str| {
        q.pipeline.iter().all(|s| match s {
            Stage::Line(f) => f.matches(line),
            _ => true,
        })
    };
    assert!(ok("an err: TIMEOUT"));
    assert!(!ok("an err: debug timeout"));
    assert!(!ok("x err timeout"));
    assert!(!ok("err but no match"));
    let q = log(r#"{a="b"} |= "one" or "two""#);
    let Stage::Line(f) = &q.pipeline[0] else {
        panic!()
    };
    assert!(f.matches("two") && !f.matches("three"));
}

#[test]
fn parsers_label_filters_drop_and_formats() {
    let q = log(
        r#"{a="b"} | json | logfmt | status >= 400 and method=~"GET|POST", latency > 250ms or (x="1" y!="2") | __error__=`` | drop __error__, a="x" | keep a | line_format "{{.a}} {{ __line__ }}" | label_format b=a, c="{{.a}}!" | decolorize | regexp `(?P<w>\w+)`"#,
    );
    assert!(matches!(q.pipeline[0], Stage::Json));
    assert!(matches!(q.pipeline[1], Stage::Logfmt));
    let Stage::LabelFilter(LabelFilter::Or(l, r)) = &q.pipeline[2] else {
        panic!("{:?}", q.pipeline[2])
    };
    assert!(matches!(**l, LabelFilter::And(..)));
    assert!(matches!(**r, LabelFilter::And(..)));
    assert!(
        matches!(&q.pipeline[3], Stage::LabelFilter(LabelFilter::Str(m)) if m.name == "__error__" && m.value.is_empty())
    );
    let Stage::Drop(d) = &q.pipeline[4] else {
        panic!()
    };
    assert_eq!(d.len(), 2);
    assert!(matches!(q.pipeline[5], Stage::Keep(_)));
    let Stage::LineFormat(t) = &q.pipeline[6] else {
        panic!()
    };
    assert_eq!(
        t.0,
        [
            TplPart::Label("a".into()),
            TplPart::Lit(" ".into()),
            TplPart::Line
        ]
    );
    assert!(matches!(q.pipeline[7], Stage::LabelFormat(ref v) if v.len() == 2));
    assert!(matches!(q.pipeline[8], Stage::Decolorize));
    assert!(matches!(q.pipeline[9], Stage::Regexp(_)));
}

#[test]
fn logs_volume_queries_grafana_sends() {
    for q in [
        r#"sum by (level) (count_over_time({file="app.log"} | drop __error__[2000ms]))"#,
        r#"sum by (level, detected_level) (count_over_time({file="app.log"} |= `` | drop __error__[15s]))"#,
        r#"sum by (level) (count_over_time({file="app.log"}[1m]))"#,
        r#"sum(rate({file="app.log"} | json | __error__="" [1h])) by (level)"#,
        r#"sum without (pod) (count_over_time({file=~".+"}[1d]))"#,
        r#"count_over_time(({file="a"} |= "x")[5m] offset 1m)"#,
        r#"count_over_time({file="a"}[5m] |= "x")"#,
    ] {
        metric(q);
    }
    let m =
        metric(r#"sum by (level) (count_over_time({file="app.log"} | drop __error__[2000ms]))"#);
    let MetricExpr::Agg {
        op: AggOp::Sum,
        grouping: Some(g),
        inner,
    } = m
    else {
        panic!()
    };
    assert_eq!(g.labels, ["level"]);
    let MetricExpr::Range {
        func: RangeFn::CountOverTime,
        range_ns,
        query,
        ..
    } = *inner
    else {
        panic!()
    };
    assert_eq!(range_ns, 2_000_000_000);
    assert!(matches!(query.pipeline[0], Stage::Drop(_)));
}

#[test]
fn health_check_arithmetic() {
    let m = metric("vector(1)+vector(1)");
    assert!(matches!(m, MetricExpr::Binary { op: BinOp::Add, .. }));
    assert!(matches!(
        metric("1 + 2 * 3"),
        MetricExpr::Binary { op: BinOp::Add, .. }
    ));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("2000ms"), Some(2_000_000_000));
    assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
    assert_eq!(parse_duration("1d"), Some(86_400_000_000_000));
    assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("5parsecs"), None);
}

#[test]
fn empty_compatible_selectors_are_rejected_like_loki() {
    for q in [
        "{}",
        r#"{a=~".*"}"#,
        r#"{a!="x"}"#,
        r#"sum(count_over_time({}[1m]))"#,
    ] {
        assert_eq!(err(q), format!("parse error : {EMPTY_SELECTOR}"), "{q}");
    }
    assert!(parse_selector("{}").is_ok());
    assert!(parse(r#"{a=~".+"}"#).is_ok());
}

#[test]
fn errors_have_positions() {
    assert_eq!(
        err(r#"{a="b"} |= "x" | nope"#),
        "parse error at line 1, col 18: syntax error: unexpected IDENTIFIER \"nope\", expecting a parser (json, logfmt, regexp), a label filter, drop, keep, line_format or label_format"
    );
    assert_eq!(
        err("{a=\"b\"}\n  | json |"),
        "parse error at line 2, col 11: syntax error: unexpected end of input, expecting a pipeline stage"
    );
    assert!(err(r#"{a="b"#).starts_with("parse error at line 1, col 4: unterminated string"));
    assert!(
        err(r#"{a=~"("}"#).starts_with("parse error at line 1, col 5: invalid regular expression")
    );
    assert!(err(r#"absent_over_time({a="b"}[1m])"#).contains("not supported"));
    assert!(err(r#"sum_over_time({a="b"}[1m])"#).starts_with(
        "parse error at line 1, col 1: invalid aggregation sum_over_time without unwrap"
    ));
    assert!(err(r#"{a="b"} | distinct x"#).contains("not supported"));
    assert!(err(r#"{a="b"} | line_format "{{ .a | upper }}""#).contains("not supported"));
    assert!(err(r#"{a="b"} + 1"#).contains("log query cannot be used here"));
    assert!(err("").contains("empty query"));
    assert!(err(r#"count_over_time({a="b"})"#).contains("expecting \"[\""));
}
