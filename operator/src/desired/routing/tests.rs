use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{IngressClass, IngressClassSpec};
use serde_json::json;

use super::*;
use crate::desired::tests::stream;

fn with_ingress(ingress: Value) -> LogStream {
    stream(
        "web",
        json!({"selector": {"matchLabels": {"app": "web"}}, "ingress": ingress}),
    )
}

fn class(name: &str, controller: &str, default: bool) -> IngressClass {
    let mut c = IngressClass {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(IngressClassSpec {
            controller: Some(controller.into()),
            parameters: None,
        }),
    };
    if default {
        c.metadata.annotations = Some(BTreeMap::from([(
            "ingressclass.kubernetes.io/is-default-class".to_string(),
            "true".to_string(),
        )]));
    }
    c
}

fn annotations(ls: &LogStream, classes: &[IngressClass]) -> BTreeMap<String, String> {
    let ing = stream_ingress(ls, ingress_controller(ls, classes)).unwrap();
    ing.metadata.annotations.unwrap()
}

#[test]
fn ingress_has_tls_and_routes_to_the_aggregator() {
    let plain = stream("web", json!({"selector": {"matchLabels": {"app": "web"}}}));
    assert!(stream_ingress(&plain, None).is_none());
    let ls = with_ingress(json!({
        "host": "logs.example.com", "className": "traefik", "tlsSecretName": "logs-tls"
    }));
    let ing = stream_ingress(&ls, None).unwrap();
    let spec = ing.spec.unwrap();
    assert_eq!(
        spec.tls.unwrap()[0].secret_name.as_deref(),
        Some("logs-tls")
    );
    assert_eq!(spec.ingress_class_name.as_deref(), Some("traefik"));
    let rules = spec.rules.unwrap();
    let backend = &rules[0].http.as_ref().unwrap().paths[0].backend;
    assert_eq!(backend.service.as_ref().unwrap().name, AGGREGATOR);
    assert_eq!(crate::desired::urls(&ls)[0], "https://logs.example.com/");
}

#[test]
fn the_ingress_class_picks_the_annotations() {
    let classes = [
        class("traefik", "traefik.io/ingress-controller", true),
        class("haproxy", "haproxy.org/ingress-controller/haproxy", false),
        class("contour", "projectcontour.io/ingress-controller", false),
        class("nginx", "k8s.io/ingress-nginx", false),
        class("other", "example.com/ingress", false),
    ];
    // No className: the cluster's default class (Traefik).
    let a = annotations(&with_ingress(json!({"host": "l.example.com"})), &classes);
    assert_eq!(
        a["traefik.ingress.kubernetes.io/router.entrypoints"],
        "web,websecure"
    );
    assert!(a.keys().all(|k| k.starts_with("traefik.")), "{a:?}");
    let a = annotations(
        &with_ingress(json!({"host": "l.example.com", "className": "haproxy"})),
        &classes,
    );
    assert_eq!(a["haproxy.org/timeout-server"], "3600s");
    assert!(a.keys().all(|k| k.starts_with("haproxy.org/")), "{a:?}");
    // Its cookie, like Traefik's, is read from the Service.
    let svc = service_annotations();
    assert_eq!(svc["haproxy.org/cookie-persistence"], AFFINITY_COOKIE);
    assert_eq!(
        svc["traefik.ingress.kubernetes.io/service.sticky.cookie.name"],
        AFFINITY_COOKIE
    );
    let a = annotations(
        &with_ingress(json!({"host": "l.example.com", "className": "contour"})),
        &classes,
    );
    assert_eq!(a["projectcontour.io/websocket-routes"], "/");
    // ingress-nginx only where the cluster runs it.
    let a = annotations(
        &with_ingress(json!({"host": "l.example.com", "className": "nginx"})),
        &classes,
    );
    assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
    assert_eq!(a["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    assert!(a.keys().all(|k| k.starts_with("nginx.")), "{a:?}");
}

#[test]
fn an_unknown_controller_gets_every_maintained_one_and_never_ingress_nginx() {
    let classes = [class("other", "example.com/ingress", true)];
    for ls in [
        with_ingress(json!({"host": "l.example.com"})),
        with_ingress(json!({"host": "l.example.com", "className": "missing"})),
    ] {
        let a = annotations(&ls, &classes);
        assert!(a.contains_key("traefik.ingress.kubernetes.io/router.entrypoints"));
        assert!(a.contains_key("haproxy.org/timeout-server"));
        assert!(a.contains_key("haproxy-ingress.github.io/affinity"));
        assert!(a.contains_key("projectcontour.io/websocket-routes"));
        assert!(!a.keys().any(|k| k.starts_with("nginx.")), "{a:?}");
    }
    // Without any IngressClass readable, the same.
    let a = annotations(&with_ingress(json!({"host": "l.example.com"})), &[]);
    assert!(!a.keys().any(|k| k.starts_with("nginx.")), "{a:?}");
}

#[test]
fn the_logstream_field_and_user_annotations_win() {
    let classes = [class("traefik", "traefik.io/ingress-controller", true)];
    let ls = with_ingress(json!({
        "host": "l.example.com",
        "controller": "haproxy-ingress",
        "annotations": {"haproxy-ingress.github.io/timeout-tunnel": "2h", "x/y": "z"}
    }));
    let a = annotations(&ls, &classes);
    assert_eq!(a["haproxy-ingress.github.io/affinity"], "cookie");
    assert_eq!(a["haproxy-ingress.github.io/timeout-tunnel"], "2h");
    assert_eq!(a["x/y"], "z");
    assert!(!a.keys().any(|k| k.starts_with("traefik.")), "{a:?}");
    let none = with_ingress(json!({"host": "l.example.com", "controller": "none"}));
    assert!(annotations(&none, &classes).is_empty());
}

#[test]
fn http_route_to_the_aggregator_with_cookie_persistence_and_no_timeout() {
    let ls = stream(
        "web",
        json!({
            "selector": {"matchLabels": {"app": "web"}},
            "gateway": {
                "parentRefs": [{"name": "eg", "namespace": "infra", "sectionName": "https"}],
                "hostnames": ["logs.example.com"]
            }
        }),
    );
    let r = http_route(&ls, Persistence::Cookie).unwrap();
    assert_eq!(r.types.as_ref().unwrap().kind, "HTTPRoute");
    assert_eq!(
        r.types.as_ref().unwrap().api_version,
        "gateway.networking.k8s.io/v1"
    );
    assert_eq!(r.metadata.name.as_deref(), Some("web-logstream"));
    assert_eq!(r.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        r.metadata.owner_references.as_ref().unwrap()[0].kind,
        "LogStream"
    );
    let spec = &r.data["spec"];
    assert_eq!(
        spec["parentRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                "name": "eg", "namespace": "infra", "sectionName": "https"}])
    );
    assert_eq!(spec["hostnames"], json!(["logs.example.com"]));
    let rule = &spec["rules"][0];
    assert_eq!(
        rule["backendRefs"],
        json!([{"group": "", "kind": "Service", "name": AGGREGATOR, "port": STREAM_PORT}])
    );
    assert_eq!(rule["timeouts"], json!({"request": "0s"}));
    assert_eq!(
        rule["sessionPersistence"],
        json!({"type": "Cookie", "absoluteTimeout": "24h",
               "cookie": {"name": AFFINITY_COOKIE, "lifetimeType": "Permanent"}})
    );
    // The shape of Gateway API v1.1 to v1.6, and none for the standard channel.
    let old = http_route(&ls, Persistence::SessionName).unwrap();
    assert_eq!(
        old.data["spec"]["rules"][0]["sessionPersistence"],
        json!({"type": "Cookie", "sessionName": AFFINITY_COOKIE, "absoluteTimeout": "24h",
               "cookieConfig": {"lifetimeType": "Permanent"}})
    );
    let standard = http_route(&ls, Persistence::Absent).unwrap();
    assert!(
        standard.data["spec"]["rules"][0]
            .get("sessionPersistence")
            .is_none()
    );
}

#[test]
fn http_route_without_persistence_and_with_a_timeout() {
    let ls = stream(
        "web",
        json!({
            "selector": {"matchLabels": {"app": "web"}},
            "gateway": {"parentRefs": [{"name": "eg"}], "sessionPersistence": "None",
                        "requestTimeout": "2h"}
        }),
    );
    let r = http_route(&ls, Persistence::Cookie).unwrap();
    let rule = &r.data["spec"]["rules"][0];
    assert!(rule.get("sessionPersistence").is_none(), "{rule}");
    assert_eq!(rule["timeouts"]["request"], "2h");
    assert!(r.data["spec"].get("hostnames").is_none());
    assert_eq!(r.data["spec"]["parentRefs"][0]["name"], "eg");
    assert!(r.data["spec"]["parentRefs"][0].get("namespace").is_none());
    let plain = stream("web", json!({"selector": {"matchLabels": {"app": "web"}}}));
    assert!(http_route(&plain, Persistence::Cookie).is_none());
    let unset = stream(
        "web",
        json!({"selector": {"matchLabels": {"app": "web"}},
               "gateway": {"parentRefs": [{"name": "ngf"}], "requestTimeout": "unset"}}),
    );
    let r = http_route(&unset, Persistence::Cookie).unwrap();
    assert!(
        r.data["spec"]["rules"][0].get("timeouts").is_none(),
        "{r:?}"
    );
}

#[test]
fn route_outcome_says_what_was_dropped_and_what_the_gateways_said() {
    let ls = stream(
        "web",
        json!({"selector": {"matchLabels": {"app": "web"}},
               "gateway": {"parentRefs": [{"name": "eg"}]}}),
    );
    let mut stored = http_route(&ls, Persistence::Cookie).unwrap();
    assert_eq!(
        route_outcome(&ls, Persistence::Cookie, &stored),
        RouteOutcome::Applied { refused: None }
    );
    assert_eq!(
        route_outcome(&ls, Persistence::Absent, &stored),
        RouteOutcome::PersistenceDropped
    );
    stored.data["status"] = json!({"parents": [{
        "parentRef": {"name": "eg"},
        "controllerName": "example.com/gw",
        "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                        "message": "no listener allows routes from shop"}]
    }]});
    assert_eq!(
        route_outcome(&ls, Persistence::SessionName, &stored),
        RouteOutcome::Applied {
            refused: Some("eg: NotAllowedByListeners (no listener allows routes from shop)".into())
        }
    );
    // No persistence asked: a standard-channel CRD drops nothing.
    let none = stream(
        "web",
        json!({"selector": {"matchLabels": {"app": "web"}},
               "gateway": {"parentRefs": [{"name": "eg"}], "sessionPersistence": "None"}}),
    );
    assert_eq!(
        route_outcome(
            &none,
            Persistence::Absent,
            &http_route(&none, Persistence::Absent).unwrap()
        ),
        RouteOutcome::Applied { refused: None }
    );
}

/// The three shapes, read from the CRDs the Gateway API publishes
/// (`.ci/install-tools` fetches them).
#[test]
fn persistence_is_read_from_the_crds_schema() {
    let dir = std::env::var_os("LOGSTREAM_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/logstream")
        })
        .join("gateway-api");
    let crd = |v: &str, channel: &str| -> CustomResourceDefinition {
        let p = dir.join(format!(
            "{v}/{channel}/gateway.networking.k8s.io_httproutes.yaml"
        ));
        let text = std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e} (run .ci/install-tools)", p.display()));
        serde_yaml::from_str(&text).unwrap()
    };
    assert_eq!(
        persistence_of(&crd("v1.7.0", "standard")),
        Persistence::Absent
    );
    assert_eq!(
        persistence_of(&crd("v1.6.3", "standard")),
        Persistence::Absent
    );
    assert_eq!(
        persistence_of(&crd("v1.6.3", "experimental")),
        Persistence::SessionName
    );
    assert_eq!(
        persistence_of(&crd("v1.7.0", "experimental")),
        Persistence::Cookie
    );
}
