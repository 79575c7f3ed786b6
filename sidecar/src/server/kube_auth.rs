//! Kubernetes access: a bearer token is accepted when a TokenReview
//! authenticates it and a SubjectAccessReview allows its user to `get
//! pods/log` on what this server streams (the pod, for a sidecar; every pod
//! of the namespace, for the aggregator). Whoever may `kubectl logs` may
//! stream.
//!
//! The decisions ([`user_of`], [`verdict_of`]), the review objects and the
//! [`Cache`] are pure; [`KubeAuth::check`] makes the two API calls. Answers
//! (allowed, forbidden, unauthenticated) are cached for a short TTL under the
//! SHA-256 of the token, never the token itself, so a reconnect storm costs
//! the API server one review per token; concurrent checks of one token share
//! one review. An API server that cannot be reached fails closed and is
//! never cached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use kube::api::{Api, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::OnceCell;

use crate::metrics::{Metrics, ResultLabel};

/// Answers kept at most this long by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Tokens remembered at most (oldest forgotten first).
pub const DEFAULT_CAPACITY: usize = 4096;
/// Longest wait for the API server before a check fails closed.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// What this server streams, in the terms of a SubjectAccessReview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    /// The pod (a sidecar); `None`: every pod of the namespace (aggregator).
    pub pod: Option<String>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pod {
            Some(p) => write!(f, "pod {p:?} in namespace {:?}", self.namespace),
            None => write!(f, "the pods of namespace {:?}", self.namespace),
        }
    }
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Missing, invalid or expired token (HTTP 401).
    #[error("invalid or expired Kubernetes token{}", detail(.0))]
    Unauthenticated(String),
    /// Authenticated, but RBAC does not allow `get pods/log` (HTTP 403).
    #[error(
        "{user} may not stream {target}: it needs get on pods/log there, as for kubectl logs{}",
        detail(.reason)
    )]
    Forbidden {
        user: String,
        target: String,
        reason: String,
    },
    /// The API server could not answer (HTTP 503; fail closed, not cached).
    #[error("cannot verify the token with the Kubernetes API server: {0}")]
    Unavailable(String),
}

fn detail(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

impl AccessError {
    /// Label value of the reviews and cache-hit metrics.
    pub fn result(&self) -> &'static str {
        match self {
            AccessError::Unauthenticated(_) => "unauthenticated",
            AccessError::Forbidden { .. } => "forbidden",
            AccessError::Unavailable(_) => "error",
        }
    }
}

/// The cached outcome of both reviews: the user's name, or why not.
pub type Verdict = Result<String, AccessError>;

/// The TokenReview for `token` (default audiences: the API server's own,
/// which `kubectl create token` and projected ServiceAccount tokens carry).
pub fn token_review(token: &str) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..TokenReview::default()
    }
}

/// The authenticated user, or why the token is refused.
pub fn user_of(status: Option<&TokenReviewStatus>) -> Result<UserInfo, AccessError> {
    let Some(s) = status else {
        return Err(AccessError::Unauthenticated(
            "the TokenReview has no status".into(),
        ));
    };
    match &s.user {
        Some(u)
            if s.authenticated == Some(true)
                && u.username.as_ref().is_some_and(|n| !n.is_empty()) =>
        {
            Ok(u.clone())
        }
        _ => Err(AccessError::Unauthenticated(
            s.error.clone().unwrap_or_default(),
        )),
    }
}

/// The SubjectAccessReview asking whether `user` may `get pods/log` on `target`.
pub fn access_review(user: &UserInfo, target: &Target) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(target.namespace.clone()),
                verb: Some("get".into()),
                group: Some(String::new()),
                version: Some("v1".into()),
                resource: Some("pods".into()),
                subresource: Some("log".into()),
                name: target.pod.clone(),
                ..ResourceAttributes::default()
            }),
            non_resource_attributes: None,
        },
        ..SubjectAccessReview::default()
    }
}

/// Allowed only when the review says so and no authorizer denied it.
pub fn verdict_of(
    user: &UserInfo,
    target: &Target,
    status: Option<&SubjectAccessReviewStatus>,
) -> Verdict {
    let name = user.username.clone().unwrap_or_default();
    match status {
        Some(s) if s.allowed && s.denied != Some(true) => Ok(name),
        _ => Err(AccessError::Forbidden {
            user: name,
            target: target.to_string(),
            reason: status
                .and_then(|s| s.reason.clone().or_else(|| s.evaluation_error.clone()))
                .unwrap_or_default(),
        }),
    }
}

/// SHA-256 of a token: what the cache is keyed by.
pub type TokenKey = [u8; 32];

pub fn token_key(token: &str) -> TokenKey {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

/// A slot per token: filled once by whoever reviews it first, shared by
/// everyone asking meanwhile.
pub type Slot = Arc<OnceCell<Verdict>>;

/// Bounded TTL map of verdicts. Every entry lives the same TTL, so insertion
/// order is expiry order: a queue finds the expired and the oldest in O(1).
#[derive(Debug)]
pub struct Cache {
    ttl: Duration,
    capacity: usize,
    slots: HashMap<TokenKey, (Instant, Slot)>,
    /// Insertion times; an entry whose time no longer matches the map was replaced.
    order: VecDeque<(Instant, TokenKey)>,
}

impl Cache {
    pub fn new(ttl: Duration, capacity: usize) -> Cache {
        Cache {
            ttl,
            capacity: capacity.max(1),
            slots: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot of `key` at `now`: the live one, or a new empty one.
    pub fn slot(&mut self, key: TokenKey, now: Instant) -> Slot {
        self.expire(now);
        if let Some((_, slot)) = self.slots.get(&key) {
            return slot.clone();
        }
        while self.slots.len() >= self.capacity {
            if !self.pop_oldest() {
                break;
            }
        }
        let slot = Slot::default();
        self.slots.insert(key, (now, slot.clone()));
        self.order.push_back((now, key));
        slot
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < self.ttl {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Forgets the oldest entry; false when there is none.
    fn pop_oldest(&mut self) -> bool {
        let Some((at, key)) = self.order.pop_front() else {
            return false;
        };
        if self.slots.get(&key).is_some_and(|(t, _)| *t == at) {
            self.slots.remove(&key);
        }
        true
    }
}

/// Checks tokens against the Kubernetes API for one [`Target`].
pub struct KubeAuth {
    target: Target,
    cache: Mutex<Cache>,
    /// Made on first use: from the pod's ServiceAccount, or `KUBECONFIG`.
    client: OnceCell<Result<kube::Client, String>>,
}

impl std::fmt::Debug for KubeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAuth")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl KubeAuth {
    /// Uses the in-cluster configuration (or `KUBECONFIG`) when first needed.
    pub fn new(target: Target, ttl: Duration) -> KubeAuth {
        KubeAuth {
            target,
            cache: Mutex::new(Cache::new(ttl, DEFAULT_CAPACITY)),
            client: OnceCell::new(),
        }
    }

    /// With a ready client.
    pub fn with_client(target: Target, ttl: Duration, client: kube::Client) -> KubeAuth {
        let auth = KubeAuth::new(target, ttl);
        let _ = auth.client.set(Ok(client));
        auth
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The API client, or why there is none (logged by the caller at start).
    pub async fn client(&self) -> Result<kube::Client, String> {
        self.client
            .get_or_init(|| async {
                kube::Client::try_default()
                    .await
                    .map_err(|e| format!("no Kubernetes client configuration: {e}"))
            })
            .await
            .clone()
    }

    /// Makes the client now and says in the log whether tokens can be
    /// checked; without a configuration the server still runs (loopback and
    /// static tokens work) and refuses Kubernetes tokens with 503.
    pub async fn announce(&self) {
        match self.client().await {
            Ok(_) => {
                tracing::info!(streams = %self.target, "Kubernetes tokens accepted with get pods/log")
            }
            Err(e) => {
                tracing::error!(error = %e, "Kubernetes tokens cannot be checked: they are refused (503)")
            }
        }
    }

    /// The user behind `token` when they may stream the target.
    pub async fn check(&self, token: &str, metrics: &Metrics) -> Verdict {
        let slot = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.slot(token_key(token), Instant::now())
        };
        if let Some(v) = slot.get() {
            count(&metrics.auth_cache_hits, v);
            return v.clone();
        }
        let reviewed = slot
            .get_or_try_init(|| async {
                let v = self.review(token).await;
                count(&metrics.auth_reviews, &v);
                match v {
                    Err(AccessError::Unavailable(e)) => Err(AccessError::Unavailable(e)),
                    v => Ok(v),
                }
            })
            .await;
        match reviewed {
            Ok(v) => v.clone(),
            Err(e) => Err(e),
        }
    }

    /// The two reviews, uncached.
    async fn review(&self, token: &str) -> Verdict {
        let client = self.client().await.map_err(AccessError::Unavailable)?;
        let call = async {
            let tr = Api::<TokenReview>::all(client.clone())
                .create(&PostParams::default(), &token_review(token))
                .await
                .map_err(unavailable)?;
            let user = user_of(tr.status.as_ref())?;
            let sar = Api::<SubjectAccessReview>::all(client)
                .create(&PostParams::default(), &access_review(&user, &self.target))
                .await
                .map_err(unavailable)?;
            verdict_of(&user, &self.target, sar.status.as_ref())
        };
        match tokio::time::timeout(REVIEW_TIMEOUT, call).await {
            Ok(v) => v,
            Err(_) => Err(AccessError::Unavailable(format!(
                "no answer within {REVIEW_TIMEOUT:?}"
            ))),
        }
    }
}

fn unavailable(e: kube::Error) -> AccessError {
    AccessError::Unavailable(e.to_string())
}

fn count(family: &Family<ResultLabel, Counter>, v: &Verdict) {
    let result = match v {
        Ok(_) => "allowed",
        Err(e) => e.result(),
    };
    family.get_or_create(&ResultLabel { result }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            groups: Some(vec!["system:serviceaccounts".into()]),
            uid: Some("u-1".into()),
            extra: None,
        }
    }

    fn sidecar() -> Target {
        Target {
            namespace: "shop".into(),
            pod: Some("web-1".into()),
        }
    }

    #[test]
    fn only_an_authenticated_named_user_passes_the_token_review() {
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(user("system:serviceaccount:shop:viewer")),
            ..TokenReviewStatus::default()
        };
        assert_eq!(
            user_of(Some(&ok)).unwrap().username.as_deref(),
            Some("system:serviceaccount:shop:viewer")
        );
        let bad = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..TokenReviewStatus::default()
        };
        let e = user_of(Some(&bad)).unwrap_err();
        assert_eq!(e, AccessError::Unauthenticated("token has expired".into()));
        assert!(e.to_string().contains("token has expired"));
        // Authenticated without a user name, or no status at all: refused.
        let nameless = TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo::default()),
            ..TokenReviewStatus::default()
        };
        assert!(user_of(Some(&nameless)).is_err());
        assert!(user_of(None).is_err());
    }

    #[test]
    fn the_access_review_asks_for_get_pods_log_of_the_target_as_the_user() {
        let sar = access_review(&user("alice"), &sidecar());
        let spec = &sar.spec;
        assert_eq!(spec.user.as_deref(), Some("alice"));
        assert_eq!(spec.groups.as_ref().unwrap(), &["system:serviceaccounts"]);
        assert_eq!(spec.uid.as_deref(), Some("u-1"));
        let ra = spec.resource_attributes.as_ref().unwrap();
        assert_eq!(
            (
                ra.verb.as_deref(),
                ra.resource.as_deref(),
                ra.subresource.as_deref(),
                ra.namespace.as_deref(),
                ra.name.as_deref()
            ),
            (
                Some("get"),
                Some("pods"),
                Some("log"),
                Some("shop"),
                Some("web-1")
            )
        );
        // The aggregator streams every pod: no name, namespace-wide.
        let agg = Target {
            namespace: "shop".into(),
            pod: None,
        };
        let ra = access_review(&user("alice"), &agg)
            .spec
            .resource_attributes
            .unwrap();
        assert_eq!(ra.name, None);
        // The token itself never reaches the access review.
        assert!(
            !serde_json::to_string(&sar)
                .unwrap()
                .contains("secret-token")
        );
        assert_eq!(
            token_review("secret-token").spec.token.as_deref(),
            Some("secret-token")
        );
    }

    #[test]
    fn allowed_only_when_allowed_and_not_denied_and_a_refusal_says_what_is_missing() {
        let u = user("system:serviceaccount:shop:nobody");
        let allow = SubjectAccessReviewStatus {
            allowed: true,
            ..SubjectAccessReviewStatus::default()
        };
        assert_eq!(
            verdict_of(&u, &sidecar(), Some(&allow)),
            Ok("system:serviceaccount:shop:nobody".into())
        );
        let deny = SubjectAccessReviewStatus {
            allowed: false,
            reason: Some("no RBAC policy matched".into()),
            ..SubjectAccessReviewStatus::default()
        };
        let e = verdict_of(&u, &sidecar(), Some(&deny)).unwrap_err();
        let msg = e.to_string();
        for part in [
            "system:serviceaccount:shop:nobody",
            "pods/log",
            "\"web-1\"",
            "\"shop\"",
            "no RBAC policy matched",
        ] {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
        assert_eq!(e.result(), "forbidden");
        let contradictory = SubjectAccessReviewStatus {
            allowed: true,
            denied: Some(true),
            ..SubjectAccessReviewStatus::default()
        };
        assert!(verdict_of(&u, &sidecar(), Some(&contradictory)).is_err());
        assert!(verdict_of(&u, &sidecar(), None).is_err());
    }

    #[test]
    fn the_cache_keys_by_hash_shares_slots_expires_and_stays_bounded() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(30);
        let mut c = Cache::new(ttl, 3);
        let a = token_key("token-a");
        assert_ne!(&a[..], b"token-a".as_slice());
        assert_eq!(a, token_key("token-a"));
        let s1 = c.slot(a, t0);
        s1.set(Ok("alice".into())).unwrap();
        // Same token within the TTL: the same slot, already answered.
        let s2 = c.slot(a, t0 + Duration::from_secs(29));
        assert!(Arc::ptr_eq(&s1, &s2));
        assert_eq!(s2.get(), Some(&Ok("alice".into())));
        // After the TTL: a fresh, empty slot.
        let s3 = c.slot(a, t0 + ttl);
        assert!(s3.get().is_none());
        assert_eq!(c.len(), 1);
        // Bounded: the oldest is forgotten first.
        let t1 = t0 + ttl;
        for (i, t) in ["b", "c", "d"].iter().enumerate() {
            c.slot(token_key(t), t1 + Duration::from_secs(i as u64 + 1));
        }
        assert_eq!(c.len(), 3);
        let again = c.slot(a, t1 + Duration::from_secs(5));
        assert!(
            !Arc::ptr_eq(&again, &s3),
            "token-a was evicted as the oldest"
        );
        assert_eq!(c.len(), 3);
        // Everything expires.
        c.slot(token_key("e"), t1 + Duration::from_secs(100));
        assert_eq!(c.len(), 1);
    }

    #[tokio::test]
    async fn without_an_api_server_the_check_fails_closed_and_is_not_cached() {
        // A kubeconfig-free client that points at a closed port.
        let url: axum::http::Uri = "https://127.0.0.1:9".parse().unwrap();
        let cfg = kube::Config::new(url);
        let client = kube::Client::try_from(cfg).unwrap();
        let auth = KubeAuth::with_client(sidecar(), DEFAULT_TTL, client);
        let metrics = Metrics::new();
        for _ in 0..2 {
            let e = auth.check("some-token", &metrics).await.unwrap_err();
            assert!(matches!(e, AccessError::Unavailable(_)), "{e:?}");
        }
        let text = metrics.encode();
        assert!(
            text.contains("logstream_auth_reviews_total{result=\"error\"} 2"),
            "{text}"
        );
        assert!(!text.contains("logstream_auth_cache_hits_total{"), "{text}");
    }
}
