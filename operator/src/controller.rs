//! The reconciler: per LogStream, dereference → build (pure, [`crate::desired`])
//! → apply (server-side apply) → status. A finalizer runs cleanup that owner
//! references cannot: unlabelling the namespace and shrinking the shared
//! aggregator's owner list.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, Pod, PodTemplateSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::applied::{self, Applied, Key};
use crate::crd::{LogStream, LogStreamStatus};
use crate::desired::routing::{self, Persistence, RouteOutcome};
use crate::desired::{self, BuildConfig};
use crate::keys::{AGGREGATOR, FINALIZER, MANAGED_BY, NAMESPACE_LABEL, PULL_SECRET};
use crate::metrics::{ErrorLabel, Metrics};
use crate::mutate::selects;
use crate::plan::{self, Observed, Plan, Want};
use crate::podcache::{self, CachedPod};
use crate::probe;
use crate::restart::{self, Workload, WorkloadKind};
use crate::status::status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("LogStream is missing its namespace")]
    NoNamespace,
    #[error("random source: {0}")]
    Random(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "no_namespace",
            Error::Random(_) => "random",
        }
    }
}

pub struct Context {
    pub client: kube::Client,
    pub build: BuildConfig,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The controller's own cache of LogStreams, once it runs: a reconcile
    /// reads the namespace's LogStreams from it instead of a LIST.
    streams: std::sync::OnceLock<kube::runtime::reflector::Store<DeserializeGuard<LogStream>>>,
    /// The cluster's pods (compact, [`CachedPod`]) from the watch that
    /// triggers reconciles: a reconcile reads its namespace's pods here
    /// instead of a LIST.
    pods: std::sync::OnceLock<kube::runtime::reflector::Store<CachedPod>>,
    /// The cluster's namespaces, from a watch: a reconcile reads its
    /// namespace here instead of a GET.
    namespaces: std::sync::OnceLock<kube::runtime::reflector::Store<Namespace>>,
    /// What was applied lately: unchanged objects are not applied again.
    pub applied: Applied,
    /// Each namespace's pull token once applied (it never changes while
    /// the namespace has LogStreams): not read again from its Secret.
    tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Context {
    pub fn new(client: kube::Client, build: BuildConfig, metrics: Arc<Metrics>) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGED_BY.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            build,
            metrics,
            recorder,
            streams: std::sync::OnceLock::new(),
            pods: std::sync::OnceLock::new(),
            namespaces: std::sync::OnceLock::new(),
            applied: Applied::default(),
            tokens: std::sync::Mutex::default(),
        }
    }
}

fn ssa() -> PatchParams {
    PatchParams::apply(MANAGED_BY).force()
}

/// Server-side applies `obj`, unless the same was applied lately
/// (applied.rs).
async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let key = Key::new(&K::kind(&()), ns, &obj.name_any());
    unless_fresh(ctx, key, applied::content_hash(obj), || async {
        let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
        api.patch(&obj.name_any(), &ssa(), &Patch::Apply(obj))
            .await
            .map(|_| ())
    })
    .await
}

/// Runs `send` (an apply of `content` as `key`) unless the same content was
/// applied lately; records it once sent.
async fn unless_fresh<F, Fut>(
    ctx: &Context,
    key: Key,
    content: u64,
    send: F,
) -> Result<(), kube::Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    if ctx
        .applied
        .is_fresh(&key, content, std::time::Instant::now())
    {
        ctx.metrics.applies_skipped.inc();
        return Ok(());
    }
    send().await?;
    ctx.applied.record(key, content, std::time::Instant::now());
    Ok(())
}

async fn delete_if_present<K>(ctx: &Context, ns: &str, name: &str) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let key = Key::new(&K::kind(&()), ns, name);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    delete_unless_absent(ctx, key, &api, name).await
}

/// Deletes `name` unless it was deleted (or found absent) lately: then
/// there is nothing to send.
async fn delete_unless_absent<K>(
    ctx: &Context,
    key: Key,
    api: &Api<K>,
    name: &str,
) -> Result<(), kube::Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    unless_fresh(ctx, key, applied::ABSENT, || async {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
}

/// Applies the namespace's auth-delegator binding, or deletes it when no
/// LogStream there uses kubernetes mode any more. Cluster-scoped: it cannot
/// have a LogStream as owner, so this (and the finalizer) keep it in step.
async fn apply_auth_binding(
    ctx: &Context,
    want: &Want<ClusterRoleBinding>,
) -> Result<(), kube::Error> {
    let api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    match want {
        Want::Apply(b) => {
            let key = Key::new("ClusterRoleBinding", "", &b.name_any());
            unless_fresh(ctx, key, applied::content_hash(b), || async {
                api.patch(&b.name_any(), &ssa(), &Patch::Apply(b))
                    .await
                    .map(|_| ())
            })
            .await?;
        }
        Want::Delete(name) => {
            let key = Key::new("ClusterRoleBinding", "", name);
            delete_unless_absent(ctx, key, &api, name).await?;
        }
    }
    Ok(())
}

/// Applies a wanted object, or removes it when it is no longer wanted.
async fn apply_or_delete<K>(ctx: &Context, ns: &str, want: &Want<K>) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    match want {
        Want::Apply(obj) => apply(ctx, ns, obj).await?,
        Want::Delete(name) => delete_if_present::<K>(ctx, ns, name).await?,
    }
    Ok(())
}

/// How long a LogStream's reconcile waits for more triggers (a rollout's
/// pods come in a burst: one reconcile for the lot). Trailing-edge: a
/// LogStream whose pods change faster than this all the time waits until
/// they pause.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// Which pod events trigger reconciles: a pod's first sight and every
/// change of what a reconcile reads of it ([`podcache::fingerprint`]), and every
/// deletion; a re-list's unchanged pods do not.
fn pod_trigger(
    seen: &mut std::collections::HashMap<ObjectRef<CachedPod>, u64>,
    event: Result<watcher::Event<CachedPod>, watcher::Error>,
) -> Option<Result<CachedPod, watcher::Error>> {
    match event {
        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
            let print = podcache::fingerprint(&p);
            let changed = seen.insert(ObjectRef::from_obj(&p), print) != Some(print);
            changed.then_some(Ok(p))
        }
        Ok(watcher::Event::Delete(p)) => {
            seen.remove(&ObjectRef::from_obj(&p));
            Some(Ok(p))
        }
        Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        Err(e) => Some(Err(e)),
    }
}

/// The apply record's key of a namespaced object.
fn applied_key<K: Resource<DynamicType = ()>>(o: &K) -> Key {
    Key::new(
        &K::kind(&()),
        o.meta().namespace.as_deref().unwrap_or(""),
        &o.name_any(),
    )
}

/// The watch of an owned kind, forgetting in the apply record (applied.rs)
/// whatever it sees change.
fn owned_watch<K>(
    ctx: &Arc<Context>,
    cfg: watcher::Config,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt;
    let ctx = ctx.clone();
    watcher::watcher(Api::<K>::all(ctx.client.clone()), cfg)
        .default_backoff()
        .touched_objects()
        .inspect_ok(move |o: &K| ctx.applied.forget(&applied_key(o)))
}

/// Runs the controller until SIGTERM.
pub async fn run(ctx: Arc<Context>) {
    use kube::runtime::WatchStreamExt;
    use kube::runtime::controller::Config as ControllerConfig;
    let client = ctx.client.clone();
    let streams: Api<DeserializeGuard<LogStream>> = Api::all(client.clone());
    let controller = Controller::new(streams, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().debounce(DEBOUNCE));
    let store = controller.store();
    let _ = ctx.streams.set(store.clone());
    // Namespaces: a cache only (their changes trigger nothing).
    let (ns_reader, ns_writer) = kube::runtime::reflector::store::<Namespace>();
    let _ = ctx.namespaces.set(ns_reader);
    tokio::spawn(
        watcher::watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
        .reflect(ns_writer)
        .for_each(|_| futures::future::ready(())),
    );
    // One pod watch both fills the reconciles' pod cache and triggers them.
    let (pod_reader, pod_writer) = kube::runtime::reflector::store::<CachedPod>();
    let _ = ctx.pods.set(pod_reader);
    let mut fingerprints = std::collections::HashMap::new();
    let pod_events = watcher::watcher(
        Api::<CachedPod>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(CachedPod::compact)
    .reflect(pod_writer)
    .filter_map(move |event| futures::future::ready(pod_trigger(&mut fingerprints, event)));
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    // The owned kinds' watches also tell the apply record (applied.rs) what
    // changed under it: an edit or a deletion by someone else is undone by
    // the reconcile the same event triggers.
    let services = owned_watch::<Service>(&ctx, managed.clone());
    let ingresses = owned_watch::<Ingress>(&ctx, managed.clone());
    // The aggregator (owned by every LogStream of its namespace).
    let deployments = owned_watch::<Deployment>(&ctx, managed);
    controller
        .owns_stream(services)
        .owns_stream(ingresses)
        .owns_stream(deployments)
        .watches_stream(pod_events, move |pod: CachedPod| {
            // A pod change re-counts every LogStream of its namespace that
            // selects it; an aggregator pod's concerns them all (the
            // auth-delegator binding stays while an old replica runs).
            let labels = pod.labels().clone();
            let ns = pod.namespace();
            let aggregator = desired::aggregator_selector()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v));
            store
                .state()
                .into_iter()
                .filter(|g| g.namespace() == ns)
                .filter(|g| {
                    g.0.as_ref()
                        .is_ok_and(|ls| aggregator || selects(ls, &labels))
                })
                .map(|g| ObjectRef::from_obj(&*g))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile event");
            }
        })
        .await;
}

fn error_policy(_: Arc<DeserializeGuard<LogStream>>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabel {
            error: e.metric_label(),
        })
        .inc();
    tracing::warn!(error = %e, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile(
    guard: Arc<DeserializeGuard<LogStream>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = std::time::Instant::now();
    let r = reconcile_inner(guard, &ctx).await;
    ctx.metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    r
}

async fn reconcile_inner(
    guard: Arc<DeserializeGuard<LogStream>>,
    ctx: &Arc<Context>,
) -> Result<Action, Error> {
    let ls = match &guard.0 {
        Ok(ls) => ls.clone(),
        Err(invalid) => {
            // One malformed object must not stall the others.
            tracing::warn!(name = %guard.name_any(), error = %invalid.error, "skipping a LogStream that does not deserialize");
            return Ok(Action::await_change());
        }
    };
    let ns = ls.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<LogStream> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, Arc::new(ls), |event| async {
        match event {
            Finalizer::Apply(ls) => apply_stream(&ls, ctx).await,
            Finalizer::Cleanup(ls) => cleanup(&ls, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// `store` once it holds a complete list.
fn synced<K>(
    store: Option<&kube::runtime::reflector::Store<K>>,
) -> Option<&kube::runtime::reflector::Store<K>>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    use futures::FutureExt;
    store.filter(|s| {
        s.wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
    })
}

/// The namespace as the namespace watch has it, or from the API server
/// until that is synced (or does not know it yet).
async fn namespace(ctx: &Context, ns: &str) -> Result<Namespace, kube::Error> {
    let cached = synced(ctx.namespaces.get())
        .and_then(|s| s.get(&ObjectRef::<Namespace>::new(ns)))
        .map(|n| Namespace::clone(&n));
    match cached {
        Some(n) => Ok(n),
        None => Api::<Namespace>::all(ctx.client.clone()).get(ns).await,
    }
}

/// The namespace's pods: from the pod watch's cache once it is synced,
/// from the API server before.
async fn namespace_pods(ctx: &Context, ns: &str) -> Result<Vec<Pod>, kube::Error> {
    let Some(store) = synced(ctx.pods.get()) else {
        return Ok(Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items);
    };
    let mut pods: Vec<Pod> = store
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .map(|p| p.to_pod())
        .collect();
    // The order a LIST gives, so plans do not depend on the cache's.
    pods.sort_by_key(|p| p.name_any());
    Ok(pods)
}

/// Live LogStreams of a namespace (not being deleted), sorted by name, from
/// the controller's cache once it is synced; from the API server otherwise.
async fn cached_live_streams(ctx: &Context, ns: &str) -> Result<Vec<LogStream>, kube::Error> {
    let Some(store) = synced(ctx.streams.get()) else {
        return live_streams(&ctx.client, ns).await;
    };
    let mut v: Vec<LogStream> = store
        .state()
        .iter()
        .filter(|g| g.namespace().as_deref() == Some(ns))
        .filter_map(|g| g.0.as_ref().ok().cloned())
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    v.sort_by_key(|s| s.name_any());
    Ok(v)
}

/// Live LogStreams of a namespace (not being deleted), sorted by name, as
/// the API server has them now (the cleanup of the last LogStream must not
/// miss one just created).
async fn live_streams(client: &kube::Client, ns: &str) -> Result<Vec<LogStream>, kube::Error> {
    let mut v: Vec<LogStream> = Api::<LogStream>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .collect();
    v.sort_by_key(|s| s.name_any());
    Ok(v)
}

/// The namespace's pull token as this operator last applied it, or
/// [`pull_token`]'s.
async fn namespace_token(ctx: &Context, ns: &str) -> Result<String, Error> {
    let known = ctx.tokens.lock().ok().and_then(|t| t.get(ns).cloned());
    match known {
        Some(t) => Ok(t),
        None => pull_token(&ctx.client, ns).await,
    }
}

/// The namespace's pull token: its Secret's, or a new one. Sidecars already
/// hold a token once made, so it is kept.
async fn pull_token(client: &kube::Client, ns: &str) -> Result<String, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .get_opt(PULL_SECRET)
        .await?
        .and_then(|s| {
            s.data?
                .get("token")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        })
        .filter(|t| !t.is_empty())
        .map_or_else(random_token, Ok)
}

async fn apply_aggregator(
    ctx: &Context,
    ns: &str,
    objs: &desired::AggregatorObjects,
) -> Result<(), Error> {
    apply(ctx, ns, &objs.pull_secret).await?;
    apply(ctx, ns, &objs.service_account).await?;
    apply(ctx, ns, &objs.role).await?;
    apply(ctx, ns, &objs.role_binding).await?;
    apply(ctx, ns, &objs.deployment).await?;
    apply(ctx, ns, &objs.service).await?;
    Ok(())
}

/// 32 random bytes from the OS, hex.
fn random_token() -> Result<String, Error> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| Error::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Sets or removes the injection label; returns the namespace as it now is.
async fn label_namespace(
    client: &kube::Client,
    ns: &str,
    enabled: bool,
) -> Result<Namespace, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let value = if enabled {
        serde_json::json!("enabled")
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({"metadata": {"labels": {NAMESPACE_LABEL: value}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

async fn apply_stream(ls: &LogStream, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = ls.namespace().ok_or(Error::NoNamespace)?;
    // Read.
    let seen = Observed {
        namespace: namespace(ctx, &ns).await?,
        streams: cached_live_streams(ctx, &ns).await?,
        pods: namespace_pods(ctx, &ns).await?,
        pull_token: namespace_token(ctx, &ns).await?,
        ingress_classes: ingress_classes(client, ls).await?,
        http_routes: http_routes(client, ls).await?,
    };
    // Build.
    let plan = plan::plan(ls, &seen, &ctx.build);
    // Apply.
    if seen
        .namespace
        .labels()
        .get(NAMESPACE_LABEL)
        .map(String::as_str)
        != Some("enabled")
    {
        label_namespace(client, &ns, true).await?;
    }
    apply_or_delete(ctx, &ns, &plan.stream_service).await?;
    apply_or_delete(ctx, &ns, &plan.ingress).await?;
    let route = apply_route(ctx, &ns, ls, &plan).await?;
    apply_aggregator(ctx, &ns, &plan.aggregator).await?;
    if let Ok(mut t) = ctx.tokens.lock() {
        t.insert(ns.clone(), seen.pull_token.clone());
    }
    apply_auth_binding(ctx, &plan.auth_binding).await?;
    ctx.metrics
        .pods_pending_restart
        .set(plan.census.pending.len() as i64);
    if ls.spec.restart_pods && !plan.restartable.is_empty() {
        for owner in &restart_owners(client, &ns, ls, &seen.streams, &plan.restartable).await? {
            publish(
                ctx,
                ls,
                EventType::Normal,
                "RestartedOwner",
                format!("rolled {owner} to add the logstream sidecar"),
            )
            .await;
        }
    }
    // Status.
    report(ctx, ls, &ns, &seen.pull_token, &plan, route.as_ref()).await
}

/// The IngressClasses, when the LogStream's Ingress leaves the choice of
/// annotations to its class. An operator not allowed to read them (RBAC
/// trimmed by hand) writes every maintained controller's annotations.
async fn ingress_classes(
    client: &kube::Client,
    ls: &LogStream,
) -> Result<Vec<IngressClass>, Error> {
    if ls
        .spec
        .ingress
        .as_ref()
        .is_none_or(|i| i.controller.is_some())
    {
        return Ok(Vec::new());
    }
    match Api::<IngressClass>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(l) => Ok(l.items),
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 404 => {
            tracing::debug!(error = %e, "IngressClasses not readable");
            Ok(Vec::new())
        }
        Err(e) => Err(e.into()),
    }
}

/// How the cluster's HTTPRoute CRD spells session persistence, when the
/// LogStream asks for a route; `None` when the kind is not installed.
async fn http_routes(client: &kube::Client, ls: &LogStream) -> Result<Option<Persistence>, Error> {
    if ls.spec.gateway.is_none() {
        return Ok(None);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    Ok(crds
        .get_opt(routing::HTTP_ROUTE_CRD)
        .await?
        .map(|crd| routing::persistence_of(&crd)))
}

/// Applies or removes the LogStream's HTTPRoute. A cluster without the
/// Gateway API is an outcome, not an error: the rest of the reconcile goes
/// on and the status says so. `None`: no route wanted.
async fn apply_route(
    ctx: &Context,
    ns: &str,
    ls: &LogStream,
    plan: &Plan<'_>,
) -> Result<Option<RouteOutcome>, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &routing::http_route_resource());
    match (&plan.route, plan.route_schema) {
        (Want::Apply(_), None) => Ok(Some(RouteOutcome::NotInstalled)),
        (Want::Apply(route), Some(persistence)) => {
            // Applied every time: its status feeds the LogStream's.
            ctx.applied
                .forget(&Key::new("HTTPRoute", ns, &route.name_any()));
            let applied = api
                .patch(&route.name_any(), &ssa(), &Patch::Apply(route))
                .await;
            match applied {
                Ok(stored) => Ok(Some(routing::route_outcome(ls, persistence, &stored))),
                // The CRD went away since it was read.
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(Some(RouteOutcome::NotInstalled)),
                Err(e) => Err(e.into()),
            }
        }
        (Want::Delete(name), _) => {
            let key = Key::new("HTTPRoute", ns, name);
            delete_unless_absent(ctx, key, &api, name).await?;
            Ok(None)
        }
    }
}

/// Writes the status of `ls` (and the Events of its changes) from the plan
/// and what the running sidecars say they cannot read.
async fn report(
    ctx: &Context,
    ls: &LogStream,
    ns: &str,
    pull_token: &str,
    plan: &Plan<'_>,
    route: Option<&RouteOutcome>,
) -> Result<Action, Error> {
    let restart::Census {
        selected,
        injected,
        pending,
    } = &plan.census;
    let blocked = &plan.blocked;
    // What the running sidecars cannot read (their /readyz report).
    let answers = probe::ask_all(&probe::probeable(injected), pull_token).await;
    let files = probe::files_condition(&answers);
    let old = ls.status.clone().unwrap_or_default();
    let mut status = status(
        ls,
        &old,
        selected.len(),
        injected.len(),
        pending,
        blocked,
        files,
        route,
    );
    // What the aggregators say of their history on disk, when asked for.
    if ls.spec.aggregator.history.is_some() {
        let pods = namespace_pods(ctx, ns).await.map_err(Error::Kube)?;
        let answers = probe::ask_all(&probe::aggregator_probeable(&pods), pull_token).await;
        crate::status::add_history_condition(
            ls,
            &old,
            &mut status,
            probe::history_condition(&answers),
        );
    }
    // The paths, not who answered this time: a flaky sidecar must not
    // repeat the Event.
    let files_message = |s: &LogStreamStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "FilesReadable" && c.reason == "PathsNotTailed")
            .map(|c| {
                c.message
                    .split("; not answering:")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
    };
    if let Some(msg) = files_message(&status)
        && files_message(&old).as_ref() != Some(&msg)
    {
        publish(ctx, ls, EventType::Warning, "PathsNotTailed", msg).await;
    }
    if old.injected_pods != status.injected_pods
        || old.pending_restart_pods != status.pending_restart_pods
    {
        let (kind, reason) = if pending.is_empty() {
            (EventType::Normal, "Injected")
        } else {
            (EventType::Warning, "PodsWithoutSidecar")
        };
        publish(
            ctx,
            ls,
            kind,
            reason,
            format!(
                "{} of {} selected pods have the sidecar",
                injected.len(),
                selected.len()
            ),
        )
        .await;
    }
    if Some(&status) != ls.status.as_ref() {
        Api::<LogStream>::namespaced(ctx.client.clone(), ns)
            .patch_status(
                &ls.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": status })),
            )
            .await?;
    }
    // Sidecars' reports change without an event the controller sees: ask
    // again soon while any runs.
    let every = if injected.is_empty() { 300 } else { 60 };
    Ok(Action::requeue(Duration::from_secs(every)))
}

async fn publish(ctx: &Context, ls: &LogStream, type_: EventType, reason: &str, note: String) {
    let ev = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &ls.object_ref(&())).await {
        tracing::debug!(error = %e, "event not recorded");
    }
}

/// Rolls, once per need, the owners (Deployment, StatefulSet, DaemonSet) of
/// pods that lack the sidecar; bare pods cannot be restarted and stay
/// reported. Read (ReplicaSets, owners' templates) → decide
/// ([`restart::to_restart`]) → patch. Returns the owners patched.
async fn restart_owners(
    client: &kube::Client,
    ns: &str,
    ls: &LogStream,
    streams: &[LogStream],
    pending: &[&Pod],
) -> Result<Vec<Workload>, kube::Error> {
    let mut deployments = BTreeMap::new();
    for rs in restart::replica_sets(pending) {
        let found = Api::<ReplicaSet>::namespaced(client.clone(), ns)
            .get_opt(&rs)
            .await?;
        if let Some(d) = found.as_ref().and_then(restart::deployment_of) {
            deployments.insert(rs, d);
        }
    }
    let mut records = BTreeMap::new();
    for w in restart::candidates(ls, streams, pending, &deployments) {
        // An owner deleted meanwhile has nothing to roll.
        if let Some(template) = owner_template(client, ns, &w).await? {
            let annotations = template.metadata.and_then(|m| m.annotations);
            records.insert(w, restart::record(&annotations.unwrap_or_default()));
        }
    }
    let todo = restart::to_restart(ls, &records);
    if todo.is_empty() {
        return Ok(todo);
    }
    let stamp = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // The owner's controller replaces the pods with its own update strategy
    // (rolling update within maxUnavailable/maxSurge): no pod is deleted or
    // evicted here, so PodDisruptionBudgets are not bypassed.
    let patch = Patch::Merge(restart::restart_patch(ls, &stamp));
    for w in &todo {
        patch_owner(client, ns, w, &patch).await?;
    }
    Ok(todo)
}

/// The owner's pod template, `None` when the owner is gone. Read with an
/// empty merge patch: the operator may patch these kinds but not get them
/// (least privilege, charts/logstream/templates/rbac.yaml), and a patch that
/// changes nothing is not written (no new generation, no rollout).
async fn owner_template(
    client: &kube::Client,
    ns: &str,
    w: &Workload,
) -> Result<Option<PodTemplateSpec>, kube::Error> {
    let read = Patch::Merge(serde_json::json!({}));
    match patch_owner(client, ns, w, &read).await {
        Ok(t) => Ok(Some(t)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Merge-patches the owner, returning its pod template as the API server now has it.
async fn patch_owner(
    client: &kube::Client,
    ns: &str,
    w: &Workload,
    patch: &Patch<serde_json::Value>,
) -> Result<PodTemplateSpec, kube::Error> {
    let pp = PatchParams::default();
    let template = match w.kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(&w.name, &pp, patch)
            .await?
            .spec
            .map(|s| s.template),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .patch(&w.name, &pp, patch)
            .await?
            .spec
            .map(|s| s.template),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), ns)
            .patch(&w.name, &pp, patch)
            .await?
            .spec
            .map(|s| s.template),
    };
    Ok(template.unwrap_or_default())
}

/// What the finalizer does before a LogStream goes (also run by
/// [`crate::uninstall`] when no operator runs).
pub(crate) async fn cleanup(ls: &LogStream, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = ls.namespace().ok_or(Error::NoNamespace)?;
    let others: Vec<LogStream> = live_streams(client, &ns)
        .await?
        .into_iter()
        .filter(|s| s.uid() != ls.uid())
        .collect();
    if others.is_empty() {
        // The last one: stop injecting here; owner references remove the rest.
        label_namespace(client, &ns, false).await?;
        ctx.applied.forget_namespace(&ns);
        if let Ok(mut t) = ctx.tokens.lock() {
            t.remove(&ns);
        }
        for del in [
            delete_if_present::<Deployment>(ctx, &ns, AGGREGATOR).await,
            delete_if_present::<Service>(ctx, &ns, AGGREGATOR).await,
            delete_if_present::<RoleBinding>(ctx, &ns, AGGREGATOR).await,
            delete_if_present::<Role>(ctx, &ns, AGGREGATOR).await,
            delete_if_present::<ServiceAccount>(ctx, &ns, AGGREGATOR).await,
            delete_if_present::<Secret>(ctx, &ns, PULL_SECRET).await,
        ] {
            del?;
        }
    } else {
        // Setting the label that is already there returns the namespace.
        let namespace = label_namespace(client, &ns, true).await?;
        let objs = desired::aggregator(
            &ns,
            &others,
            &ctx.build,
            &pull_token(client, &ns).await?,
            crate::mesh::of_meta(&namespace.metadata),
        );
        apply_aggregator(ctx, &ns, &objs).await?;
    }
    // Without `others` (or none in kubernetes mode) this deletes the binding;
    // otherwise it drops the ServiceAccounts only this LogStream needed.
    let pods = if others.is_empty() {
        Vec::new()
    } else {
        Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?
            .items
    };
    apply_auth_binding(ctx, &plan::auth_binding(&ns, &others, &pods, &ctx.build)).await?;
    tracing::info!(namespace = %ns, name = %ls.name_any(), remaining = others.len(), "LogStream cleaned up");
    Ok(Action::await_change())
}
