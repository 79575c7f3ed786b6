use super::*;
use crate::crd::LogStreamSpec;
use crate::keys::SIDECAR_UID;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn stream(name: &str, json: serde_json::Value) -> LogStream {
    let spec: LogStreamSpec = serde_json::from_value(json).unwrap();
    let mut ls = LogStream::new(name, spec);
    ls.metadata.namespace = Some("shop".into());
    ls
}

fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).unwrap()
}

fn cfg() -> InjectConfig {
    InjectConfig {
        image: "logstream:test".into(),
        native_sidecars: true,
        ..InjectConfig::default()
    }
}

fn web() -> LogStream {
    stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
    )
}

fn web_pod() -> Pod {
    pod(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    }))
}

fn sidecar(p: &Pod) -> &Container {
    let s = p.spec.as_ref().unwrap();
    s.init_containers
        .iter()
        .flatten()
        .chain(s.containers.iter())
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap()
}

fn count_sidecars(p: &Pod) -> usize {
    let s = p.spec.as_ref().unwrap();
    s.init_containers
        .iter()
        .flatten()
        .chain(s.containers.iter())
        .filter(|c| c.name == SIDECAR_NAME)
        .count()
}

fn group_of(p: &Pod) -> Option<i64> {
    sidecar(p).security_context.as_ref().unwrap().run_as_group
}

/// Files the app writes with mode 0640 as another user are readable when
/// the sidecar shares the app's group: taken from the app container, then
/// the pod, or set on the LogStream; never 0 unless the LogStream says so.
#[test]
fn sidecar_group_follows_the_app_or_the_logstream() {
    let injected = |pod_json: serde_json::Value, ls: LogStream| {
        mutate(&pod(pod_json), &[ls], &cfg()).unwrap().unwrap()
    };
    let app = |sc: serde_json::Value, pod_sc: serde_json::Value| {
        serde_json::json!({
            "metadata": {"name": "w", "labels": {"app": "web"}},
            "spec": {"securityContext": pod_sc,
                     "containers": [{"name": "app", "image": "x", "securityContext": sc}]}
        })
    };
    let none = serde_json::json!({});
    assert_eq!(
        group_of(&injected(app(none.clone(), none.clone()), web())),
        Some(SIDECAR_UID)
    );
    assert_eq!(
        group_of(&injected(
            app(
                serde_json::json!({"runAsGroup": 3000}),
                serde_json::json!({"runAsGroup": 4000})
            ),
            web()
        )),
        Some(3000)
    );
    assert_eq!(
        group_of(&injected(
            app(none.clone(), serde_json::json!({"runAsGroup": 4000})),
            web()
        )),
        Some(4000)
    );
    assert_eq!(
        group_of(&injected(
            app(serde_json::json!({"runAsGroup": 0}), none.clone()),
            web()
        )),
        Some(SIDECAR_UID),
        "the root group is not inherited"
    );
    let explicit = stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}, "sidecar": {"runAsGroup": 0}}),
    );
    assert_eq!(
        group_of(&injected(
            app(serde_json::json!({"runAsGroup": 3000}), none),
            explicit
        )),
        Some(0)
    );
}

#[test]
fn native_sidecar_with_emptydir_shared_read_only() {
    let out = mutate(&web_pod(), &[web()], &cfg()).unwrap().unwrap();
    let spec = out.spec.as_ref().unwrap();
    let sc = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(sc.name, SIDECAR_NAME);
    assert_eq!(sc.restart_policy.as_deref(), Some("Always"));
    let vols: Vec<_> = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter(|v| v.name == LOG_VOLUME)
        .collect();
    assert_eq!(vols.len(), 1);
    assert!(vols[0].empty_dir.is_some());
    let app_mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (app_mount.name.as_str(), app_mount.mount_path.as_str()),
        (LOG_VOLUME, "/var/log/app")
    );
    let sc_mount = &sc.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(sc_mount.read_only, Some(true));
    let sec = sc.security_context.as_ref().unwrap();
    assert_eq!(sec.run_as_non_root, Some(true));
    assert_eq!(sec.read_only_root_filesystem, Some(true));
    assert_eq!(
        sec.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
        &["ALL"]
    );
    assert_eq!(out.labels()[STREAM_LABEL], "web");
    assert_eq!(out.annotations()[INJECTED_ANNOTATION], "web");
    let env: BTreeMap<_, _> = sc
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.clone()))
        .collect();
    assert_eq!(env["LOGSTREAM_CONTAINER"].value.as_deref(), Some("app"));
    assert_eq!(env["LOGSTREAM_GLOBS"].value.as_deref(), Some("*.log"));
    assert!(env["POD_NAME"].value_from.is_some());
}

#[test]
fn plain_container_on_old_clusters() {
    let out = mutate(
        &web_pod(),
        &[web()],
        &InjectConfig {
            native_sidecars: false,
            ..cfg()
        },
    )
    .unwrap()
    .unwrap();
    let spec = out.spec.unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers.len(), 2);
    assert_eq!(spec.containers[1].restart_policy, None);
}

#[test]
fn never_injects_twice() {
    let once = mutate(&web_pod(), &[web()], &cfg()).unwrap().unwrap();
    assert_eq!(mutate(&once, &[web()], &cfg()).unwrap(), None);
    assert_eq!(count_sidecars(&once), 1);
}

#[test]
fn reuses_the_apps_own_volume() {
    let p = pod(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {
            "containers": [{"name": "app", "volumeMounts": [{"name": "logs", "mountPath": "/var/log/app/"}]}],
            "volumes": [{"name": "logs", "hostPath": {"path": "/tmp"}}]
        }
    }));
    let out = mutate(&p, &[web()], &cfg()).unwrap().unwrap();
    let spec = out.spec.as_ref().unwrap();
    assert_eq!(
        spec.volumes.as_ref().unwrap().len(),
        3,
        "no extra log volume, only the pull token and the sidecar's state"
    );
    assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
    assert_eq!(
        sidecar(&out).volume_mounts.as_ref().unwrap()[0].name,
        "logs"
    );
}

#[test]
fn named_container_and_clear_refusals() {
    let ls = stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}, "container": "worker"}),
    );
    let err = mutate(&web_pod(), &[ls], &cfg()).unwrap_err();
    assert!(
        err.to_string().contains("container \"worker\" not found"),
        "{err}"
    );
    assert!(
        err.to_string().contains("app"),
        "lists the containers: {err}"
    );

    let p = pod(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "logstream-logs", "emptyDir": {}}]}
    }));
    assert!(matches!(
        mutate(&p, &[web()], &cfg()),
        Err(MutateError::VolumeNameTaken { .. })
    ));

    let p = pod(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app"}, {"name": "logstream"}]}
    }));
    assert!(matches!(
        mutate(&p, &[web()], &cfg()),
        Err(MutateError::NameTaken { .. })
    ));

    let p = pod(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "volumeMounts": [{"name": "d", "mountPath": "/var/log/app", "subPathExpr": "$(POD_NAME)"}]}],
                 "volumes": [{"name": "d", "emptyDir": {}}]}
    }));
    assert!(matches!(
        mutate(&p, &[web()], &cfg()),
        Err(MutateError::SubPath { .. })
    ));
}

/// The sidecar mounts what holds the logs: the app's volume at that
/// path (with its subPath), or the sub-folder of a volume mounted at a
/// parent folder, never a new emptyDir that would shadow it.
#[test]
fn logs_under_an_existing_volume_are_read_from_it() {
    let m = |name: &str, at: &str, sub: Option<&str>| VolumeMount {
        name: name.into(),
        mount_path: at.into(),
        sub_path: sub.map(Into::into),
        ..VolumeMount::default()
    };
    let found = |mounts: &[VolumeMount]| log_mount(mounts, "/var/log/app");
    assert_eq!(found(&[]), None);
    assert_eq!(found(&[m("d", "/var/log/application", None)]), None);
    assert_eq!(
        found(&[m("d", "/var/log/app/", None)]),
        Some(Ok(("d".into(), None)))
    );
    assert_eq!(
        found(&[m("d", "/var/log/app", Some("x"))]),
        Some(Ok(("d".into(), Some("x".into()))))
    );
    assert_eq!(
        found(&[
            m("root", "/", None),
            m("var", "/var/log", Some("logs/")),
            m("o", "/opt", None)
        ]),
        Some(Ok(("var".into(), Some("logs/app".into()))))
    );
    assert_eq!(
        found(&[m("root", "/", None)]),
        Some(Ok(("root".into(), Some("var/log/app".into()))))
    );

    // End to end: the app mounts its volume at /var/log.
    let p = pod(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "volumeMounts": [{"name": "data", "mountPath": "/var/log"}]}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "logs"}}]}
    }));
    let out = mutate(&p, &[web()], &cfg()).unwrap().unwrap();
    let spec = out.spec.as_ref().unwrap();
    assert_eq!(
        spec.volumes.as_ref().unwrap().len(),
        3,
        "only the pull token's and the sidecar's state volumes are added, no emptyDir for logs"
    );
    assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap().len(), 1);
    let mount = &sidecar(&out).volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (
            mount.name.as_str(),
            mount.mount_path.as_str(),
            mount.sub_path.as_deref()
        ),
        ("data", "/var/log/app", Some("app"))
    );
}

#[test]
fn a_meshed_pods_sidecar_requires_the_token_from_loopback() {
    let flag = |p: &Pod, streams: &[LogStream]| {
        let out = mutate(p, streams, &cfg()).unwrap().unwrap();
        sidecar(&out)
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "LOGSTREAM_NO_LOOPBACK_EXEMPTION")
            .and_then(|e| e.value.clone())
    };
    assert_eq!(flag(&web_pod(), &[web()]), None);
    let mut meshed = web_pod();
    meshed.spec.as_mut().unwrap().containers.push(Container {
        name: "istio-proxy".into(),
        ..Container::default()
    });
    assert_eq!(flag(&meshed, &[web()]).as_deref(), Some("true"));
    let mut trusting = web();
    trusting.spec.access.trust_loopback = Some(true);
    assert_eq!(flag(&meshed, &[trusting]), None);
    let mut strict = web();
    strict.spec.access.trust_loopback = Some(false);
    assert_eq!(flag(&web_pod(), &[strict]).as_deref(), Some("true"));
}

/// OpenShift's restricted SCC assigns ids itself and rejects others:
/// the operator can leave them unset; pull policy and the emptyDir's
/// size limit come from the chart and the LogStream.
#[test]
fn ids_pull_policy_and_size_limit_are_configurable() {
    let platform = InjectConfig {
        pull_policy: Some("Always".into()),
        run_as: crate::dataplane::RunAs {
            user: None,
            group: None,
        },
        ..cfg()
    };
    let mut ls = web();
    ls.spec.empty_dir_size_limit = Some(Quantity("2Gi".into()));
    let out = mutate(&web_pod(), &[ls], &platform).unwrap().unwrap();
    let sc = sidecar(&out).security_context.clone().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sidecar(&out).image_pull_policy.as_deref(), Some("Always"));
    let vol = out
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == LOG_VOLUME)
        .unwrap();
    assert_eq!(
        vol.empty_dir.as_ref().unwrap().size_limit,
        Some(Quantity("2Gi".into()))
    );
    // The app's group is still shared when the pod states it.
    let mut grouped = web_pod();
    grouped.spec.as_mut().unwrap().containers[0].security_context = Some(SecurityContext {
        run_as_group: Some(3000),
        ..SecurityContext::default()
    });
    let out = mutate(&grouped, &[web()], &platform).unwrap().unwrap();
    assert_eq!(
        sidecar(&out)
            .security_context
            .as_ref()
            .unwrap()
            .run_as_group,
        Some(3000)
    );
    // Defaults: 65532, no pull policy, no size limit.
    let out = mutate(&web_pod(), &[web()], &cfg()).unwrap().unwrap();
    let sc = sidecar(&out).security_context.clone().unwrap();
    assert_eq!(
        (sc.run_as_user, sc.run_as_group),
        (Some(65532), Some(65532))
    );
    assert_eq!(sidecar(&out).image_pull_policy, None);
}

#[test]
fn a_long_logstream_name_becomes_a_valid_label_value() {
    let long = "a".repeat(60) + ".b-c-" + &"d".repeat(100);
    let ls = stream(
        &long,
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
    );
    let out = mutate(&web_pod(), std::slice::from_ref(&ls), &cfg())
        .unwrap()
        .unwrap();
    let v = &out.labels()[STREAM_LABEL];
    assert!(
        v.len() <= 63 && v.chars().last().unwrap().is_ascii_alphanumeric(),
        "{v}"
    );
    assert_eq!(*v, crate::names::label_value(&long));
    let svc = crate::desired::stream_service(&ls);
    assert_eq!(svc.spec.unwrap().selector.unwrap()[STREAM_LABEL], *v);
    assert_eq!(crate::names::label_value("web"), "web");
}

#[test]
fn quantities_are_recognised_and_a_bad_size_limit_costs_only_the_sidecar() {
    for ok in [
        "500Mi", "2Gi", "1.5Gi", "1e9", "1000", "0.5", "+1k", "1E3", "100m",
    ] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in ["lots", "", "Mi", "1.2.3", "-1Gi", "1GB", "1e", "1 Gi"] {
        assert!(!is_quantity(bad), "{bad}");
    }
    let mut ls = web();
    ls.spec.empty_dir_size_limit = Some(Quantity("lots".into()));
    assert!(matches!(
        mutate(&web_pod(), &[ls], &cfg()),
        Err(MutateError::SizeLimit { .. })
    ));
}

#[test]
fn the_drain_budget_is_the_pods_grace_period() {
    let env = |p: &Pod| {
        let out = mutate(p, &[web()], &cfg()).unwrap().unwrap();
        sidecar(&out)
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "LOGSTREAM_GRACE")
            .and_then(|e| e.value.clone())
            .unwrap()
    };
    assert_eq!(env(&web_pod()), "29s");
    let mut long = web_pod();
    long.spec.as_mut().unwrap().termination_grace_period_seconds = Some(120);
    assert_eq!(env(&long), "119s");
    long.spec.as_mut().unwrap().termination_grace_period_seconds = Some(0);
    assert_eq!(env(&long), "1s");
}

#[test]
fn unselected_and_expression_selectors() {
    let other = pod(
        serde_json::json!({"metadata": {"name": "x", "labels": {"app": "db"}}, "spec": {"containers": [{"name": "db"}]}}),
    );
    assert_eq!(mutate(&other, &[web()], &cfg()).unwrap(), None);
    let mut manual = web_pod();
    manual
        .labels_mut()
        .insert(OPT_OUT_LABEL.into(), "false".into());
    assert!(opted_out(&manual));
    assert_eq!(mutate(&manual, &[web()], &cfg()).unwrap(), None);
    let expr = stream(
        "tier",
        serde_json::json!({"selector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}}),
    );
    let p = pod(
        serde_json::json!({"metadata": {"name": "x", "labels": {"tier": "edge"}}, "spec": {"containers": [{"name": "c"}]}}),
    );
    assert!(mutate(&p, &[expr], &cfg()).unwrap().is_some());
    let empty = stream("all", serde_json::json!({"selector": {}}));
    assert_eq!(
        mutate(&p, &[empty], &cfg()).unwrap(),
        None,
        "an empty selector selects nothing"
    );
}

#[test]
fn first_stream_by_name_wins() {
    let b = stream(
        "b",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}}),
    );
    let a = stream(
        "a",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}}, "paths": ["x/*.txt"]}),
    );
    let out = mutate(&web_pod(), &[b, a], &cfg()).unwrap().unwrap();
    assert_eq!(out.labels()[STREAM_LABEL], "a");
}

/// The sidecar keeps its file positions in an emptyDir of its own, so a
/// restart of its container repeats nothing; a pod that already uses
/// the name still gets the sidecar, without positions.
#[test]
fn the_sidecar_keeps_its_positions_in_its_own_emptydir() {
    let p = pod(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    let out = mutate(&p, &[web()], &cfg()).unwrap().unwrap();
    let spec = out.spec.as_ref().unwrap();
    let state = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == STATE_VOLUME)
        .expect("state volume");
    assert!(state.empty_dir.is_some());
    let sc = sidecar(&out);
    let mount = sc
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == STATE_VOLUME)
        .expect("state mount");
    assert_eq!(mount.mount_path, STATE_DIR);
    assert_ne!(mount.read_only, Some(true));
    let env = sc.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "LOGSTREAM_STATE_DIR" && e.value.as_deref() == Some(STATE_DIR))
    );
    assert!(
        spec.containers.iter().all(|c| c
            .volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != STATE_VOLUME)),
        "the app does not see it"
    );

    let taken = pod(serde_json::json!({
        "metadata": {"name": "web-2", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app"}],
                 "volumes": [{"name": "logstream-state", "configMap": {"name": "x"}}]}
    }));
    let out = mutate(&taken, &[web()], &cfg()).unwrap().unwrap();
    let sc = sidecar(&out);
    assert!(
        sc.env
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| e.name != "LOGSTREAM_STATE_DIR")
    );
    assert!(
        sc.volume_mounts
            .iter()
            .flatten()
            .all(|m| m.name != STATE_VOLUME)
    );
}

#[test]
fn token_mode_mounts_the_secret() {
    let ls = stream(
        "web",
        serde_json::json!({"selector": {"matchLabels": {"app": "web"}},
        "access": {"mode": "token", "tokenSecret": {"name": "logs-token", "key": "token"}}}),
    );
    let ls_token = ls.clone();
    let out = mutate(&web_pod(), &[ls], &cfg()).unwrap().unwrap();
    let sc = sidecar(&out);
    assert!(
        sc.env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "LOGSTREAM_TOKEN_FILE"
                && e.value.as_deref()
                    == Some("/var/run/logstream/pull/token,/var/run/logstream/token/token"))
    );
    assert!(
        out.spec
            .unwrap()
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.secret.is_some())
    );
    let kube = |sc: &Container| {
        sc.env
            .iter()
            .flatten()
            .any(|e| e.name == "LOGSTREAM_KUBERNETES_AUTH" && e.value.as_deref() == Some("true"))
    };
    let token_mode = mutate(&web_pod(), &[ls_token], &cfg()).unwrap().unwrap();
    assert!(
        !kube(sidecar(&token_mode)),
        "token mode: no Kubernetes token checks"
    );
    // The default mode: the sidecar checks Kubernetes tokens itself.
    let out = mutate(&web_pod(), &[web()], &cfg()).unwrap().unwrap();
    assert!(kube(sidecar(&out)));
}

proptest::proptest! {
    /// Whatever the pod shape, injection adds exactly one sidecar and one
    /// log mount in the app, and a second pass changes nothing.
    #[test]
    fn injection_is_idempotent_on_many_shapes(
        n_containers in 1usize..4,
        app_mounts_logs in proptest::bool::ANY,
        has_init in proptest::bool::ANY,
        native in proptest::bool::ANY,
    ) {
        let containers: Vec<serde_json::Value> = (0..n_containers).map(|i| {
            if i == 0 && app_mounts_logs {
                serde_json::json!({"name": format!("c{i}"), "volumeMounts": [{"name": "mine", "mountPath": "/var/log/app"}]})
            } else {
                serde_json::json!({"name": format!("c{i}")})
            }
        }).collect();
        let mut spec = serde_json::json!({"containers": containers});
        if app_mounts_logs { spec["volumes"] = serde_json::json!([{"name": "mine", "emptyDir": {}}]); }
        if has_init { spec["initContainers"] = serde_json::json!([{"name": "init"}]); }
        let p = pod(serde_json::json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": spec}));
        let c = InjectConfig { native_sidecars: native, ..cfg() };
        let out = mutate(&p, &[web()], &c).unwrap().unwrap();
        proptest::prop_assert_eq!(count_sidecars(&out), 1);
        let s = out.spec.as_ref().unwrap();
        let app_log_mounts = s.containers[0].volume_mounts.iter().flatten().filter(|m| m.mount_path == "/var/log/app").count();
        proptest::prop_assert_eq!(app_log_mounts, 1);
        // The logs' (the app's own or one added), the pull token's, the sidecar's state.
        proptest::prop_assert_eq!(s.volumes.as_ref().unwrap().len(), 3);
        proptest::prop_assert_eq!(mutate(&out, &[web()], &c).unwrap(), None);
    }
}

#[test]
fn service_name_from_labels_then_the_workload() {
    let meta = |v: serde_json::Value| -> ObjectMeta { serde_json::from_value(v).unwrap() };
    // Loki's label order: `app` before `app.kubernetes.io/name`.
    assert_eq!(
        service_name(&meta(serde_json::json!({
            "labels": {"app.kubernetes.io/name": "shop", "app": "web"}
        }))),
        "web"
    );
    assert_eq!(
        service_name(&meta(serde_json::json!({
            "labels": {"app.kubernetes.io/name": "shop", "app": ""}
        }))),
        "shop"
    );
    // A Deployment's pod at admission: no name yet, its ReplicaSet owns it.
    assert_eq!(
        service_name(&meta(serde_json::json!({
            "generateName": "checkout-7d9f8b6c5-",
            "labels": {"pod-template-hash": "7d9f8b6c5", "tier": "x"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "checkout-7d9f8b6c5", "uid": "u", "controller": true}]
        }))),
        "checkout"
    );
    assert_eq!(
        service_name(&meta(serde_json::json!({
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                "name": "db", "uid": "u", "controller": true}]
        }))),
        "db"
    );
    assert_eq!(
        service_name(&meta(serde_json::json!({"generateName": "batch-"}))),
        "batch"
    );
    assert_eq!(service_name(&meta(serde_json::json!({"name": "bare"}))), "");
}

#[test]
fn the_sidecar_is_told_the_pods_service() {
    let out = mutate(&web_pod(), &[web()], &cfg()).unwrap().unwrap();
    let env = sidecar(&out).env.clone().unwrap_or_default();
    let service = env.iter().find(|e| e.name == env::SERVICE_NAME);
    assert_eq!(service.and_then(|e| e.value.as_deref()), Some("web"));
}
