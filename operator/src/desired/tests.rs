use super::*;
use crate::crd::LogStreamSpec;

pub fn stream(name: &str, json: serde_json::Value) -> LogStream {
    let spec: LogStreamSpec = serde_json::from_value(json).unwrap();
    let mut ls = LogStream::new(name, spec);
    ls.metadata.namespace = Some("shop".into());
    ls.metadata.uid = Some(format!("uid-{name}"));
    ls
}

#[test]
fn service_selects_injected_pods_with_client_ip_affinity() {
    let ls = stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
    );
    let svc = stream_service(&ls);
    let spec = svc.spec.unwrap();
    assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
    assert_eq!(spec.selector.unwrap()[STREAM_LABEL], "web");
    assert_eq!(spec.ports.unwrap()[0].port, STREAM_PORT);
    let owner = &svc.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.kind, "LogStream");
    assert_eq!(owner.controller, Some(true));
}

#[test]
fn aggregator_is_shared_and_sized_by_the_largest_request() {
    let a = stream(
        "a",
        serde_json::json!({"selector": {"matchLabels": {"app": "a"}}, "aggregator": {"replicas": 3}}),
    );
    let b = stream(
        "b",
        serde_json::json!({"selector": {"matchLabels": {"app": "b"}}}),
    );
    let objs = aggregator(
        "shop",
        &[a, b],
        &BuildConfig {
            image: "img".into(),
            owner: None,
            ..BuildConfig::default()
        },
        "tok",
        None,
    );
    assert_eq!(objs.pull_secret.data.as_ref().unwrap()["token"].0, b"tok");
    let pod = objs
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let env = pod.containers[0].env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "LOGSTREAM_UPSTREAM_TOKEN_FILE")
    );
    let d = objs.deployment;
    assert_eq!(d.metadata.owner_references.as_ref().unwrap().len(), 2);
    assert!(
        d.metadata
            .owner_references
            .unwrap()
            .iter()
            .all(|o| o.controller.is_none())
    );
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.unwrap();
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(AGGREGATOR_DRAIN_SECONDS + 10)
    );
    let c = &pod.containers[0];
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        objs.service.spec.unwrap().session_affinity.as_deref(),
        Some("ClientIP")
    );
    let rules = objs.role.rules.unwrap();
    assert!(
        rules.iter().all(|r| r
            .verbs
            .iter()
            .all(|v| ["get", "list", "watch"].contains(&v.as_str()))),
        "read-only role"
    );
}

fn pod(name: &str, sa: Option<&str>, labels: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]}
    }))
    .unwrap()
}

#[test]
fn auth_binding_covers_the_aggregator_and_the_streamed_pods_service_accounts() {
    let web = stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
    );
    let tok = stream(
        "tok",
        serde_json::json!({"selector": {"matchLabels": {"app": "tok"}},
            "access": {"mode": "token", "tokenSecret": {"name": "s", "key": "k"}}}),
    );
    let pods = [
        pod("web-1", Some("web"), serde_json::json!({"app": "web"})),
        pod("web-2", Some("web"), serde_json::json!({"app": "web"})),
        // Selected, default ServiceAccount.
        pod("web-3", None, serde_json::json!({"app": "web"})),
        // Injected by web, no longer selected: its sidecar still checks tokens.
        pod(
            "old",
            Some("legacy"),
            serde_json::json!({STREAM_LABEL: "web"}),
        ),
        // Opted out: no sidecar.
        pod(
            "manual",
            Some("manual"),
            serde_json::json!({"app": "web", "logstream.dev/inject": "false"}),
        ),
        // Another LogStream in token mode, and an unrelated pod.
        pod("tok-1", Some("tok"), serde_json::json!({"app": "tok"})),
        pod("db-1", Some("db"), serde_json::json!({"app": "db"})),
    ];
    let cfg = BuildConfig {
        image: "i".into(),
        owner: None,
        ..BuildConfig::default()
    };
    let b = auth_binding("shop", &[web.clone(), tok.clone()], &pods, &cfg).unwrap();
    assert_eq!(
        b.metadata.name.as_deref(),
        Some("logstream:auth-delegator:shop")
    );
    assert_eq!(
        b.metadata.labels.as_ref().unwrap()[NAMESPACE_OWNER_LABEL],
        "shop"
    );
    assert!(
        b.metadata.owner_references.is_none(),
        "cluster-scoped: no namespaced owner, and no chart owner given"
    );
    // In the chart: owned by its ClusterRole (cluster-scoped too).
    let owner = crate::owner::reference(&crate::owner::tests::chart_role("u1")).unwrap();
    let owned = BuildConfig {
        owner: Some(owner.clone()),
        ..cfg.clone()
    };
    let b2 = auth_binding("shop", &[web.clone(), tok.clone()], &pods, &owned).unwrap();
    assert_eq!(b2.metadata.owner_references, Some(vec![owner]));
    assert_eq!(b2.subjects, b.subjects);
    assert_eq!(
        (b.role_ref.kind.as_str(), b.role_ref.name.as_str()),
        ("ClusterRole", AUTH_DELEGATOR)
    );
    let subjects = b.subjects.unwrap();
    let names: Vec<&str> = subjects.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default", "legacy", AGGREGATOR, "web"]);
    assert!(
        subjects
            .iter()
            .all(|s| s.kind == "ServiceAccount" && s.namespace.as_deref() == Some("shop"))
    );
    // No kubernetes-mode LogStream left: no binding.
    assert!(auth_binding("shop", std::slice::from_ref(&tok), &pods, &owned).is_none());
    assert!(auth_binding("shop", &[], &pods, &cfg).is_none());
    // ... unless a streamer that checks Kubernetes tokens still runs: an
    // aggregator replica from before the switch to token mode, until the
    // rollout replaces it (terminating included); finished pods do not count.
    let old_aggregator = |name: &str, phase: &str, deleted: bool| -> Pod {
        let mut meta = serde_json::json!({"name": name, "namespace": "shop"});
        if deleted {
            meta["deletionTimestamp"] = "2026-12-04T00:00:00Z".into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta,
            "spec": {"serviceAccountName": AGGREGATOR, "containers": [{
                "name": "aggregator", "image": "i",
                "env": [{"name": env::KUBERNETES_AUTH, "value": "true"}],
            }]},
            "status": {"phase": phase},
        }))
        .unwrap()
    };
    let kept = auth_binding(
        "shop",
        std::slice::from_ref(&tok),
        &[old_aggregator("agg-old", "Running", true)],
        &cfg,
    )
    .expect("the old replica still checks tokens");
    let names: Vec<String> = kept.subjects.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, [AGGREGATOR]);
    assert!(
        auth_binding(
            "shop",
            std::slice::from_ref(&tok),
            &[old_aggregator("agg-done", "Succeeded", false)],
            &cfg
        )
        .is_none()
    );
    // The aggregator checks tokens whenever one LogStream uses kubernetes mode.
    let objs = aggregator(
        "shop",
        std::slice::from_ref(&web),
        &BuildConfig {
            image: "i".into(),
            owner: None,
            ..BuildConfig::default()
        },
        "t",
        None,
    );
    let env_of = |objs: AggregatorObjects| {
        objs.deployment
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap()
    };
    let env = env_of(objs);
    assert!(
        env.iter()
            .any(|e| e.name == "LOGSTREAM_KUBERNETES_AUTH" && e.value.as_deref() == Some("true"))
    );
    assert!(
        !env.iter()
            .any(|e| e.name == "LOGSTREAM_NO_LOOPBACK_EXEMPTION")
    );
    // In an Istio namespace loopback is the mesh's proxy: token required.
    let cfg = BuildConfig {
        image: "i".into(),
        owner: None,
        ..BuildConfig::default()
    };
    let env = env_of(aggregator(
        "shop",
        std::slice::from_ref(&web),
        &cfg,
        "t",
        Some("istio"),
    ));
    assert!(
        env.iter()
            .any(|e| e.name == "LOGSTREAM_NO_LOOPBACK_EXEMPTION"
                && e.value.as_deref() == Some("true"))
    );
}

#[test]
fn aggregator_placement_pull_policy_and_traefik_stickiness() {
    let web = stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
    );
    let cfg = BuildConfig {
        image: "i".into(),
        pull_policy: Some("IfNotPresent".into()),
        run_as: crate::dataplane::RunAs {
            user: None,
            group: None,
        },
        aggregator_pod: crate::dataplane::parse_aggregator_pod(
            r#"{"nodeSelector":{"pool":"infra"},"tolerations":[{"key":"infra","operator":"Exists"}],
                "imagePullSecrets":[{"name":"regcred"}],"resources":{"limits":{"memory":"1Gi"}}}"#,
        )
        .unwrap(),
        ..BuildConfig::default()
    };
    let objs = aggregator("shop", std::slice::from_ref(&web), &cfg, "t", None);
    let pod = objs.deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["pool"], "infra");
    assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("infra"));
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
    let c = &pod.containers[0];
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "1Gi"
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
    // Defaults: resources set, nothing else.
    let objs = aggregator("shop", &[web], &BuildConfig::default(), "t", None);
    let pod = objs.deployment.spec.unwrap().template.spec.unwrap();
    assert!(pod.node_selector.is_none() && pod.tolerations.is_none());
    assert!(
        pod.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .is_some()
    );
    // Traefik's sticky cookie sits on the Service the Ingress routes to.
    let a = objs.service.metadata.annotations.unwrap();
    assert_eq!(
        a["traefik.ingress.kubernetes.io/service.sticky.cookie"],
        "true"
    );
    assert_eq!(objs.service.metadata.name.as_deref(), Some(AGGREGATOR));
}

#[test]
fn aggregator_history_on_disk_takes_the_largest_size_and_age_of_the_namespace() {
    let selector = serde_json::json!({"matchLabels": {"app": "a"}});
    let none = stream("none", serde_json::json!({"selector": selector}));
    let objs = aggregator(
        "shop",
        std::slice::from_ref(&none),
        &BuildConfig::default(),
        "t",
        None,
    );
    let pod = objs.deployment.spec.unwrap().template.spec.unwrap();
    assert!(
        pod.containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| !e.name.starts_with("LOGSTREAM_HISTORY")),
        "no history unless asked"
    );

    let small = stream(
        "small",
        serde_json::json!({"selector": selector, "aggregator": {"history": {"size": "1Gi", "maxAge": "48h"}}}),
    );
    let big = stream(
        "big",
        serde_json::json!({"selector": selector, "aggregator": {"history": {"size": "10Gi"}}}),
    );
    let objs = aggregator(
        "shop",
        &[none, small, big],
        &BuildConfig::default(),
        "t",
        None,
    );
    let pod = objs.deployment.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let env: BTreeMap<String, String> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    assert_eq!(env["LOGSTREAM_HISTORY_DIR"], "/var/lib/logstream/history");
    // 10 GiB less a tenth: the emptyDir's limit is never reached.
    assert_eq!(env["LOGSTREAM_HISTORY_MAX_BYTES"], "9663676416");
    assert_eq!(env["LOGSTREAM_HISTORY_MAX_AGE"], "48h");
    let vol = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "history")
        .unwrap();
    assert_eq!(
        vol.empty_dir
            .as_ref()
            .unwrap()
            .size_limit
            .as_ref()
            .unwrap()
            .0,
        "10737418240"
    );
    assert!(
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == "history" && m.mount_path == "/var/lib/logstream/history")
    );

    // A StorageClass: a claim made with each aggregator pod.
    let pvc = stream(
        "pvc",
        serde_json::json!({"selector": selector, "aggregator": {"history": {"size": "500Mi", "storageClassName": "fast"}}}),
    );
    let objs = aggregator("shop", &[pvc], &BuildConfig::default(), "t", None);
    let pod = objs.deployment.spec.unwrap().template.spec.unwrap();
    let vol = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "history")
        .unwrap();
    let claim = vol.ephemeral.unwrap().volume_claim_template.unwrap().spec;
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(
        claim.resources.unwrap().requests.unwrap()["storage"].0,
        "524288000"
    );
}

#[test]
fn quantities_in_bytes() {
    for (q, want) in [
        ("2Gi", Some(2u64 << 30)),
        ("500M", Some(500_000_000)),
        ("1e9", Some(1_000_000_000)),
        ("1073741824", Some(1 << 30)),
        ("1.5Ki", Some(1536)),
        ("12XB", None),
        ("", None),
    ] {
        assert_eq!(quantity_bytes(q), want, "{q}");
    }
}
