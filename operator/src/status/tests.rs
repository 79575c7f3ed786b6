use super::*;

#[test]
fn status_reports_pending_pods_and_keeps_transition_times() {
    let mut ls: LogStream = serde_json::from_value(serde_json::json!({
        "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
        "metadata": {"name": "web", "namespace": "shop", "generation": 3},
        "spec": {"selector": {"matchLabels": {"app": "web"}}}
    }))
    .unwrap();
    let pod: Pod =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web-old"}})).unwrap();
    let s1 = status(
        &ls,
        &LogStreamStatus::default(),
        3,
        2,
        &[&pod],
        &[],
        None,
        None,
    );
    assert_eq!(
        (s1.selected_pods, s1.injected_pods, s1.pending_restart_pods),
        (3, 2, 1)
    );
    assert_eq!(s1.pending_restart, ["web-old"]);
    assert_eq!(s1.observed_generation, Some(3));
    let by =
        |s: &LogStreamStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(by(&s1, "Injected").status, "False");
    assert_eq!(by(&s1, "Injected").reason, "PodsPendingRestart");
    assert_eq!(by(&s1, "Degraded").status, "True");
    let s2 = status(&ls, &s1, 3, 2, &[&pod], &[], None, None);
    assert_eq!(
        by(&s2, "Injected").last_transition_time,
        by(&s1, "Injected").last_transition_time
    );
    ls.spec.restart_pods = true;
    let s3 = status(&ls, &s2, 3, 3, &[], &[], None, None);
    assert_eq!(by(&s3, "Injected").reason, "AllInjected");
    assert_eq!(by(&s3, "Degraded").status, "False");
    assert!(
        s3.urls
            .iter()
            .any(|u| u.contains("logstream-aggregator.shop.svc"))
    );
}

#[test]
fn status_names_pods_that_cannot_get_the_sidecar_and_unread_files() {
    let ls: LogStream = serde_json::from_value(serde_json::json!({
        "apiVersion": "logstream.dev/v1alpha1", "kind": "LogStream",
        "metadata": {"name": "web", "namespace": "shop", "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "restartPods": true}
    }))
    .unwrap();
    let pod = |n: &str| -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": n}})).unwrap()
    };
    let (a, b) = (pod("web-a"), pod("web-b"));
    let blocked = vec![(
        "web-a".to_string(),
        "container \"nope\" not found".to_string(),
    )];
    let files = Some((
        false,
        "PathsNotTailed",
        "1 matching paths not tailed: web-c: x.log: symlink: no".to_string(),
    ));
    let s = status(
        &ls,
        &LogStreamStatus::default(),
        3,
        1,
        &[&a, &b],
        &blocked,
        files,
        None,
    );
    let by = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(by("Injected").reason, "CannotInject");
    assert_eq!(
        by("Injected").message,
        "1 of 3 selected pods cannot get the sidecar: web-a: container \"nope\" not found; 1 more run without it until restarted"
    );
    assert_eq!(
        (
            by("Degraded").status.as_str(),
            by("Degraded").reason.as_str()
        ),
        ("True", "CannotInject")
    );
    assert_eq!(by("FilesReadable").status, "False");
    let s = status(&ls, &s, 3, 3, &[], &[], None, None);
    let by = |t: &str| s.conditions.iter().find(|c| c.type_ == t).unwrap().clone();
    assert_eq!(
        (
            by("FilesReadable").status.as_str(),
            by("FilesReadable").reason.as_str()
        ),
        ("Unknown", "NoSidecarRunning")
    );
    assert_eq!(by("Degraded").status, "False");
}

#[test]
fn route_ready_says_what_became_of_the_http_route() {
    use crate::desired::routing::RouteOutcome;
    let ls = crate::desired::tests::stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
    );
    let cond = |r: Option<&RouteOutcome>| {
        let s = status(&ls, &LogStreamStatus::default(), 0, 0, &[], &[], None, r);
        s.conditions
            .iter()
            .find(|c| c.type_ == "RouteReady")
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    assert_eq!(cond(None), None, "no route asked, no condition");
    let (st, reason, _) = cond(Some(&RouteOutcome::Applied { refused: None })).unwrap();
    assert_eq!((st.as_str(), reason.as_str()), ("True", "Applied"));
    let (st, reason, msg) = cond(Some(&RouteOutcome::NotInstalled)).unwrap();
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "GatewayAPINotInstalled")
    );
    assert!(msg.contains("install the Gateway API CRDs"), "{msg}");
    let (st, reason, msg) = cond(Some(&RouteOutcome::PersistenceDropped)).unwrap();
    assert_eq!(
        (st.as_str(), reason.as_str()),
        ("False", "SessionPersistenceDropped")
    );
    assert!(msg.contains("experimental channel"), "{msg}");
    let (st, reason, msg) = cond(Some(&RouteOutcome::Applied {
        refused: Some("eg: NotAllowedByListeners (x)".into()),
    }))
    .unwrap();
    assert_eq!((st.as_str(), reason.as_str()), ("False", "NotAccepted"));
    assert!(msg.ends_with("eg: NotAllowedByListeners (x)"), "{msg}");
}
