use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn service_name_as_loki_derives_it() {
    assert_eq!(
        service_name(&labels(&[("service_name", "api"), ("app", "x")])),
        "api"
    );
    assert_eq!(
        service_name(&labels(&[("app", "shop"), ("container", "c")])),
        "shop"
    );
    assert_eq!(
        service_name(&labels(&[("container", "app"), ("job", "j")])),
        "app"
    );
    assert_eq!(
        service_name(&labels(&[("pod", "web-0"), ("app", "")])),
        UNKNOWN_SERVICE
    );
}

#[test]
fn fields_of_json_and_logfmt_lines_with_types_and_paths() {
    let lines = [
        r#"{"level":"error","status":500,"took":"15ms","req":{"path":"/a","size":"10KB"}}"#,
        r#"{"level":"info","status":200,"took":"2s","req":{"path":"/b","size":"512B"}}"#,
        "level=warn user=ann ratio=0.5 ok=true",
        "level=info user=bob ratio=2 ok=false",
        "plain text without fields",
    ];
    let f = detect_fields(lines.iter().copied(), 100);
    let get = |n: &str| {
        f.iter()
            .find(|d| d.label == n)
            .unwrap_or_else(|| panic!("{n}: {f:?}"))
    };
    assert_eq!(get("status").kind, "int");
    assert_eq!(get("status").cardinality, 2);
    assert_eq!(get("took").kind, "duration");
    assert_eq!(get("req_size").kind, "bytes");
    assert_eq!(
        get("req_path").json_path,
        Some(vec!["req".to_string(), "path".to_string()])
    );
    assert_eq!(get("req_path").parsers, ["json"]);
    assert_eq!(get("ratio").kind, "float");
    assert_eq!(get("ok").kind, "boolean");
    assert_eq!(get("user").json_path, None);
    assert_eq!(get("level").parsers, ["json", "logfmt"]);
    assert_eq!(get("level").cardinality, 3);
    assert_eq!(detect_fields(lines.iter().copied(), 2).len(), 2);
}

#[test]
fn values_come_from_labels_then_fields() {
    let a = labels(&[("detected_level", "error")]);
    let b = labels(&[("detected_level", "info")]);
    let rows = [(&a, "user=ann"), (&b, "user=bob"), (&b, r#"{"user":"cy"}"#)];
    assert_eq!(
        field_values(rows.iter().map(|(l, s)| (*l, *s)), "detected_level", 10),
        ["error", "info"]
    );
    assert_eq!(
        field_values(rows.iter().map(|(l, s)| (*l, *s)), "user", 10),
        ["ann", "bob", "cy"]
    );
    assert!(field_values(rows.iter().map(|(l, s)| (*l, *s)), "nope", 10).is_empty());
}

#[test]
fn labels_of_ids_only_are_not_detected() {
    let a = labels(&[("app", "web"), ("trace", "1234"), ("pod", "7")]);
    let b = labels(&[
        ("app", "db"),
        ("trace", "550e8400-e29b-41d4-a716-446655440000"),
        ("pod", "8"),
    ]);
    assert_eq!(
        detected_labels([&a, &b].into_iter()),
        [("app".to_string(), 2), ("pod".to_string(), 2)]
    );
}

#[test]
fn patterns_group_similar_lines_and_count_per_step() {
    let mut p = Patterns::new(10_000_000_000);
    p.add(1_000_000_000, "info", "GET /api/users 200 in 12ms");
    p.add(2_000_000_000, "info", "GET /api/orders 200 in 7ms");
    p.add(12_000_000_000, "info", "GET /api/users 404 in 1ms");
    p.add(13_000_000_000, "error", "disk full on /dev/sda1");
    p.add(14_000_000_000, "error", "disk full on /dev/sdb1");
    let out = p.finish();
    assert_eq!(
        out[0],
        Pattern {
            pattern: "GET <_> <_> in <_>".into(),
            level: "info".into(),
            samples: vec![(0, 2), (10, 1)],
        }
    );
    assert_eq!(out[1].pattern, "disk full on <_>");
    assert_eq!(out[1].samples, vec![(10, 2)]);
}

#[test]
fn patterns_stay_bounded() {
    let mut p = Patterns::new(1_000_000_000);
    for i in 0..10_000 {
        // Every line differs in every token: no two are similar.
        p.add(
            0,
            "info",
            &format!("a{} b{} c{}", char_of(i), char_of(i / 26), char_of(i / 676)),
        );
    }
    assert!(p.finish().len() <= MAX_PER_GROUP);
}

fn char_of(i: usize) -> char {
    (b'a' + (i % 26) as u8) as char
}
