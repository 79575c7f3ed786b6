//! The operator's own count of what it asks of the API server, by verb and
//! resource (`logstream_operator_api_requests_total`), taken in the kube
//! client's request path: the client-side view that the API server's
//! `apiserver_request_total` gives per user agent.
//!
//! Owns: naming a request ([`classify`], pure) and the tower layer that
//! counts every request the operator's client sends ([`layer`]).

use std::sync::Arc;

use crate::metrics::{ApiCall, Metrics};

/// The verb and resource of a request to the Kubernetes API, as the API
/// server's metrics name them (`get`, `list`, `watch`, `create`, `update`,
/// `patch`, `apply`, `delete`, `deletecollection`; resource with its
/// subresource as `pods/status`). Paths outside `/api` and `/apis` are
/// named by their first segment.
pub fn classify(method: &str, path: &str, query: &str, apply_patch: bool) -> ApiCall {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest: &[&str] = match parts.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        [first, ..] => {
            return ApiCall {
                verb: method.to_ascii_lowercase(),
                resource: format!("/{first}"),
            };
        }
        [] => &[],
    };
    // namespaces/NS/RESOURCE[/NAME[/SUB]], or RESOURCE[/NAME[/SUB]]
    // (a namespace itself: namespaces[/NAME[/SUB]]).
    let rest = match rest {
        ["namespaces", _ns, resource, tail @ ..] => {
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let (resource, named) = match rest.as_slice() {
        [] => (String::new(), false),
        [r] => ((*r).to_string(), false),
        [r, _name] => ((*r).to_string(), true),
        [r, _name, sub, ..] => (format!("{r}/{sub}"), true),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) if apply_patch => "apply",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => {
            return ApiCall {
                verb: other.to_ascii_lowercase(),
                resource,
            };
        }
    };
    ApiCall {
        verb: verb.to_string(),
        resource,
    }
}

/// Counts every request that passes through it (and names the operator
/// in its `User-Agent`, which the kube client leaves empty).
pub fn layer<B>(
    metrics: Arc<Metrics>,
) -> tower::util::MapRequestLayer<impl Fn(http::Request<B>) -> http::Request<B> + Clone> {
    tower::util::MapRequestLayer::new(move |mut req: http::Request<B>| {
        // Named in the API server's audit log and metrics by user agent.
        req.headers_mut().entry(http::header::USER_AGENT).or_insert(
            http::HeaderValue::from_static(concat!(
                "logstream-operator/",
                env!("CARGO_PKG_VERSION")
            )),
        );
        let apply = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
        let call = classify(
            req.method().as_str(),
            req.uri().path(),
            req.uri().query().unwrap_or(""),
            apply,
        );
        metrics.api_requests.get_or_create(&call).inc();
        req
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path: &str, query: &str) -> (String, String) {
        let a = classify(method, path, query, false);
        (a.verb, a.resource)
    }

    #[test]
    fn requests_are_named_like_the_api_server_names_them() {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            c("GET", "/api/v1/namespaces/shop/pods", ""),
            s("list", "pods")
        );
        assert_eq!(
            c("GET", "/api/v1/pods", "watch=true&resourceVersion=5"),
            s("watch", "pods")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/shop", ""),
            s("get", "namespaces")
        );
        assert_eq!(
            c("GET", "/api/v1/namespaces/shop/secrets/pull", ""),
            s("get", "secrets")
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/logstream.dev/v1alpha1/namespaces/shop/logstreams/web/status",
                ""
            ),
            s("patch", "logstreams/status")
        );
        assert_eq!(
            c("DELETE", "/apis/apps/v1/namespaces/shop/deployments/x", ""),
            s("delete", "deployments")
        );
        assert_eq!(
            c("POST", "/apis/authentication.k8s.io/v1/tokenreviews", ""),
            s("create", "tokenreviews")
        );
        assert_eq!(c("GET", "/version", ""), s("get", "/version"));
        let a = classify(
            "PATCH",
            "/api/v1/namespaces/shop/services/web-logs",
            "fieldManager=logstream",
            true,
        );
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str()),
            ("apply", "services")
        );
    }
}
