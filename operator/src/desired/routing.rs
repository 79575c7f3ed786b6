//! How traffic from outside reaches the namespace's aggregator (pure): the
//! LogStream's Ingress with the annotations of the controller that serves it,
//! and its Gateway API HTTPRoute. Both route to the aggregator's Service;
//! what each controller honours is in docs/routing.md.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressClass, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::{labels, owner};
use crate::crd::{IngressController, LogStream, SessionPersistence};
use crate::keys::{AGGREGATOR, STREAM_PORT};
use crate::names::object_name;

/// The cookie that keeps a browser on one aggregator replica, whichever
/// proxy sets it.
pub const AFFINITY_COOKIE: &str = "logstream-affinity";

/// Seconds a proxy keeps an idle stream open where it takes a number: an
/// hour (the streams ping every 20 s, so only a dead peer idles this long).
const STREAM_TIMEOUT_SECS: u32 = 3600;

/// The name of a LogStream's Ingress and HTTPRoute.
pub fn route_name(ls: &LogStream) -> String {
    object_name(&ls.name_any(), "logstream")
}

/// The controller whose annotations the Ingress carries: the LogStream's
/// choice, else the one named by its IngressClass (`className`, else the
/// cluster's default class) among `classes`; `None` when unknown.
pub fn ingress_controller(ls: &LogStream, classes: &[IngressClass]) -> Option<IngressController> {
    let spec = ls.spec.ingress.as_ref()?;
    if let Some(c) = spec.controller {
        return Some(c);
    }
    let class = match &spec.class_name {
        Some(name) => classes.iter().find(|c| c.name_any() == *name),
        None => classes.iter().find(|c| {
            c.annotations()
                .get("ingressclass.kubernetes.io/is-default-class")
                .is_some_and(|v| v == "true")
        }),
    }?;
    let controller = class.spec.as_ref()?.controller.as_deref()?;
    // Contour serves the class named `contour` whatever its controller says.
    controller_of_class(controller)
        .or_else(|| (class.name_any() == "contour").then_some(IngressController::Contour))
}

/// The controller an IngressClass's `spec.controller` names.
pub fn controller_of_class(controller: &str) -> Option<IngressController> {
    // Each project's documented value, or its domain as a prefix (their
    // charts let users pick a suffix).
    let c = controller.to_ascii_lowercase();
    if c.starts_with("traefik.io/") {
        Some(IngressController::Traefik)
    } else if c.starts_with("haproxy.org/") {
        Some(IngressController::Haproxy)
    } else if c.starts_with("haproxy-ingress.github.io/") {
        Some(IngressController::HaproxyIngress)
    } else if c.starts_with("projectcontour.io/") {
        Some(IngressController::Contour)
    } else if c == "k8s.io/ingress-nginx" {
        Some(IngressController::IngressNginx)
    } else {
        None
    }
}

/// The aggregator Service's annotations: the controllers that read cookie
/// affinity from the Service an Ingress routes to (every LogStream's
/// Ingress routes there). Others ignore them.
pub fn service_annotations() -> BTreeMap<String, String> {
    [
        (
            "traefik.ingress.kubernetes.io/service.sticky.cookie",
            "true",
        ),
        (
            "traefik.ingress.kubernetes.io/service.sticky.cookie.name",
            AFFINITY_COOKIE,
        ),
        ("haproxy.org/cookie-persistence", AFFINITY_COOKIE),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Controllers whose annotations an Ingress of an unknown controller gets:
/// the maintained ones (each ignores the others' annotations).
const MAINTAINED: [IngressController; 4] = [
    IngressController::Traefik,
    IngressController::Haproxy,
    IngressController::HaproxyIngress,
    IngressController::Contour,
];

/// One controller's annotations for cookie affinity and long-lived
/// WebSocket/SSE streams. Traefik's and HAProxy's cookies are on the
/// aggregator's Service (where they read them: [`service_annotations`]).
fn controller_annotations(c: IngressController) -> Vec<(&'static str, String)> {
    let secs = STREAM_TIMEOUT_SECS;
    let cookie = AFFINITY_COOKIE.to_string();
    match c {
        IngressController::Traefik => vec![(
            "traefik.ingress.kubernetes.io/router.entrypoints",
            "web,websecure".into(),
        )],
        // Its cookie is on the aggregator's Service too (the Ingress
        // annotation is deprecated there); `timeout-tunnel` (1 h by default)
        // is set only in its ConfigMap.
        IngressController::Haproxy => vec![("haproxy.org/timeout-server", format!("{secs}s"))],
        IngressController::HaproxyIngress => vec![
            ("haproxy-ingress.github.io/affinity", "cookie".into()),
            ("haproxy-ingress.github.io/session-cookie-name", cookie),
            (
                "haproxy-ingress.github.io/timeout-tunnel",
                format!("{secs}s"),
            ),
            (
                "haproxy-ingress.github.io/timeout-server",
                format!("{secs}s"),
            ),
        ],
        IngressController::Contour => vec![
            ("projectcontour.io/websocket-routes", "/".into()),
            ("projectcontour.io/response-timeout", "infinity".into()),
        ],
        IngressController::IngressNginx => vec![
            ("nginx.ingress.kubernetes.io/affinity", "cookie".into()),
            (
                "nginx.ingress.kubernetes.io/affinity-mode",
                "persistent".into(),
            ),
            ("nginx.ingress.kubernetes.io/session-cookie-name", cookie),
            (
                "nginx.ingress.kubernetes.io/session-cookie-max-age",
                "86400".into(),
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-read-timeout",
                secs.to_string(),
            ),
            (
                "nginx.ingress.kubernetes.io/proxy-send-timeout",
                secs.to_string(),
            ),
            ("nginx.ingress.kubernetes.io/proxy-buffering", "off".into()),
        ],
        IngressController::None => Vec::new(),
    }
}

/// The Ingress's annotations: the controller's (every maintained
/// controller's when it is unknown), then the user's, which win.
pub fn ingress_annotations(
    controller: Option<IngressController>,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let controllers: &[IngressController] = match &controller {
        Some(c) => std::slice::from_ref(c),
        None => &MAINTAINED,
    };
    let mut a: BTreeMap<String, String> = controllers
        .iter()
        .flat_map(|c| controller_annotations(*c))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    a.extend(extra.clone());
    a
}

/// The LogStream's Ingress, to the namespace's aggregator (merged view,
/// resume on any replica; the cookie keeps a browser on one replica).
pub fn stream_ingress(ls: &LogStream, controller: Option<IngressController>) -> Option<Ingress> {
    let spec = ls.spec.ingress.as_ref()?;
    let name = ls.name_any();
    Some(Ingress {
        metadata: ObjectMeta {
            name: Some(route_name(ls)),
            namespace: ls.namespace(),
            labels: Some(labels("ingress", Some(&name))),
            annotations: Some(ingress_annotations(controller, &spec.annotations)),
            owner_references: owner(ls).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            tls: spec.tls_secret_name.as_ref().map(|s| {
                vec![IngressTLS {
                    hosts: Some(vec![spec.host.clone()]),
                    secret_name: Some(s.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: AGGREGATOR.into(),
                                port: Some(ServiceBackendPort {
                                    name: Some("logstream".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

/// `gateway.networking.k8s.io/v1` `HTTPRoute`, which k8s-openapi does not
/// carry.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The name of the HTTPRoute CRD, read to learn what its schema holds.
pub const HTTP_ROUTE_CRD: &str = "httproutes.gateway.networking.k8s.io";

/// How the cluster's HTTPRoute CRD spells `sessionPersistence`: the field is
/// in the experimental channel only and changed shape in v1.7. The API
/// server refuses a server-side apply naming a field its schema lacks, so
/// the route is written in the shape the CRD has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// Standard channel: no such field.
    Absent,
    /// Experimental v1.1 to v1.6: `sessionName`, `cookieConfig`.
    SessionName,
    /// Experimental v1.7 on: `cookie.name`, `cookie.lifetimeType`.
    Cookie,
}

/// What the served version (`v1`) of the HTTPRoute CRD says of
/// `rules[].sessionPersistence`.
pub fn persistence_of(crd: &CustomResourceDefinition) -> Persistence {
    let schema = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1")
        .and_then(|v| v.schema.as_ref()?.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let fields = &schema["properties"]["spec"]["properties"]["rules"]["items"]["properties"]["sessionPersistence"]
        ["properties"];
    if fields.get("cookie").is_some() {
        Persistence::Cookie
    } else if fields.get("sessionName").is_some() {
        Persistence::SessionName
    } else {
        Persistence::Absent
    }
}

/// The LogStream's HTTPRoute: every path of its host names to the
/// aggregator's Service, with the request timeout asked (none by default)
/// and cookie session persistence, in the shape the cluster's CRD has,
/// unless turned off.
pub fn http_route(ls: &LogStream, persistence: Persistence) -> Option<DynamicObject> {
    let spec = ls.spec.gateway.as_ref()?;
    let name = ls.name_any();
    let parents: Vec<Value> = spec
        .parent_refs
        .iter()
        .map(|p| {
            let mut r = json!({
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": p.name,
            });
            for (k, v) in [
                ("namespace", p.namespace.clone().map(Value::from)),
                ("sectionName", p.section_name.clone().map(Value::from)),
                ("port", p.port.map(Value::from)),
            ] {
                if let Some(v) = v {
                    r[k] = v;
                }
            }
            r
        })
        .collect();
    let mut rule = json!({
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [{
            "group": "",
            "kind": "Service",
            "name": AGGREGATOR,
            "port": STREAM_PORT,
        }],
    });
    if spec.request_timeout != "unset" {
        rule["timeouts"] = json!({"request": spec.request_timeout});
    }
    if spec.session_persistence == SessionPersistence::Cookie {
        let lifetime = json!({"lifetimeType": "Permanent"});
        let sp = match persistence {
            Persistence::Absent => Value::Null,
            Persistence::SessionName => json!({
                "type": "Cookie",
                "sessionName": AFFINITY_COOKIE,
                "absoluteTimeout": "24h",
                "cookieConfig": lifetime,
            }),
            Persistence::Cookie => json!({
                "type": "Cookie",
                "absoluteTimeout": "24h",
                "cookie": {"name": AFFINITY_COOKIE, "lifetimeType": "Permanent"},
            }),
        };
        if !sp.is_null() {
            rule["sessionPersistence"] = sp;
        }
    }
    let mut route_spec = json!({"parentRefs": parents, "rules": [rule]});
    if !spec.hostnames.is_empty() {
        route_spec["hostnames"] = json!(spec.hostnames);
    }
    let mut obj = DynamicObject::new(&route_name(ls), &http_route_resource())
        .within(&ls.namespace().unwrap_or_default())
        .data(json!({"spec": route_spec}));
    obj.metadata.labels = Some(labels("route", Some(&name)));
    obj.metadata.owner_references = owner(ls).map(|o| vec![o]);
    Some(obj)
}

/// What became of a LogStream's HTTPRoute, for its `RouteReady` condition.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteOutcome {
    /// Applied as asked; the Gateways' verdict when one was given
    /// (`Accepted` of each parent, `None` before any controller wrote one).
    Applied { refused: Option<String> },
    /// Applied without the session persistence asked for: the cluster's
    /// CRD has no such field (the Gateway API's standard channel).
    PersistenceDropped,
    /// The API server does not serve HTTPRoute (no Gateway API CRDs).
    NotInstalled,
}

/// The outcome of an applied route: whether it lacks the persistence asked
/// for, and what the Gateways' controllers said of it.
pub fn route_outcome(
    ls: &LogStream,
    persistence: Persistence,
    stored: &DynamicObject,
) -> RouteOutcome {
    let asked = ls
        .spec
        .gateway
        .as_ref()
        .is_some_and(|g| g.session_persistence == SessionPersistence::Cookie);
    if asked && persistence == Persistence::Absent {
        return RouteOutcome::PersistenceDropped;
    }
    let refused: Vec<String> = stored.data["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let accepted = p["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "Accepted")?;
            (accepted["status"] == "False").then(|| {
                format!(
                    "{}: {} ({})",
                    p["parentRef"]["name"].as_str().unwrap_or("?"),
                    accepted["reason"].as_str().unwrap_or(""),
                    accepted["message"].as_str().unwrap_or("")
                )
            })
        })
        .collect();
    RouteOutcome::Applied {
        refused: (!refused.is_empty()).then(|| refused.join("; ")),
    }
}

#[cfg(test)]
mod tests;
