//! `logstream-operator run`: the controller, the webhook server and its TLS,
//! and the health/metrics endpoint, until SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;

use crate::controller::{self, Context};
use crate::desired::BuildConfig;
use crate::leader::{Leader, LeaseConfig};
use crate::metrics::Metrics;
use crate::mutate::InjectConfig;
use crate::owner::{self, OwnerError};
use crate::tls;
use crate::webhook::{self, Endpoint, WebhookState};

/// How long a replica waits between registering a new caBundle and serving
/// a certificate signed by the new CA.
const BUNDLE_PROPAGATION: Duration = Duration::from_secs(2);

/// The operator's `run` command line: parsed by clap in the binary, read
/// here as it is (the derived values are methods).
#[derive(Clone, Debug, clap::Args)]
pub struct RunOptions {
    /// Namespace the operator runs in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "logstream-system")]
    pub namespace: String,
    /// Image of the sidecar and the aggregator.
    #[arg(
        long,
        env = "LOGSTREAM_IMAGE",
        default_value = "ghcr.io/logstream-dev/logstream:0.1.0"
    )]
    pub image: String,
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub webhook_listen: SocketAddr,
    /// Service the API server calls the webhook through.
    #[arg(
        long,
        env = "LOGSTREAM_WEBHOOK_SERVICE",
        default_value = "logstream-operator"
    )]
    pub webhook_service: String,
    #[arg(long, default_value_t = 443)]
    pub webhook_service_port: i32,
    /// Call the webhook by URL instead of Service (out-of-cluster runs and tests).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Secret holding the webhook CA and certificate.
    #[arg(long, default_value = "logstream-webhook-tls")]
    pub tls_secret: String,
    /// Extra DNS names on the serving certificate.
    #[arg(long = "cert-dns", value_delimiter = ',')]
    pub cert_dns: Vec<String>,
    /// Extra IP addresses on the serving certificate.
    #[arg(long = "cert-ip", value_delimiter = ',')]
    pub cert_ips: Vec<IpAddr>,
    /// Health and metrics (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub health_listen: SocketAddr,
    /// Inject native sidecars (true) or plain containers (false); detected from the server version when unset.
    #[arg(long)]
    pub native_sidecars: Option<bool>,
    /// Register the MutatingWebhookConfiguration and its CA bundle (false when a chart or cert-manager does).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_webhook: bool,
    /// Serve the webhook certificate from DIR/tls.crt and DIR/tls.key (e.g. a cert-manager Secret) instead of the self-managed Secret.
    #[arg(long)]
    pub tls_cert_dir: Option<std::path::PathBuf>,
    /// Identity in the leader-election lease (default: the pod name, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// A leader that has not renewed for this long is replaced.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// ClusterRole (the chart's own) that owns the webhook configuration, TLS Secret, leader Lease and auth-delegator bindings the operator creates, so the garbage collector deletes them with it (helm uninstall). Needs get on it.
    #[arg(long, env = "LOGSTREAM_OWNER_CLUSTER_ROLE")]
    pub owner_cluster_role: Option<String>,
    /// imagePullPolicy of the sidecar and the aggregator (default: the cluster's).
    #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: Option<String>,
    /// User the sidecar and the aggregator run as; empty: left to the platform (OpenShift's restricted SCC assigns one).
    #[arg(long, default_value = "65532", value_parser = crate::dataplane::parse_id)]
    pub run_as_user: crate::dataplane::OptionalId,
    /// Their group when the app's is unknown; empty: left to the platform.
    #[arg(long, default_value = "65532", value_parser = crate::dataplane::parse_id)]
    pub run_as_group: crate::dataplane::OptionalId,
    /// The aggregator pods' resources, nodeSelector, tolerations, imagePullSecrets and priorityClassName, as JSON.
    #[arg(long, env = "LOGSTREAM_AGGREGATOR_POD", default_value = "", value_parser = crate::dataplane::parse_aggregator_pod)]
    pub aggregator_pod: crate::dataplane::AggregatorPod,
    /// The API server's timeout for one admission call (1-30 s) in the webhook configuration the operator registers.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=30))]
    pub webhook_timeout_seconds: i32,
    /// How often each replica re-reads the self-managed certificate Secret, renews it when close to expiry, and serves what it holds.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub cert_check_interval: Duration,
}

impl RunOptions {
    /// How the API server reaches the webhook.
    pub fn endpoint(&self) -> Endpoint {
        match &self.webhook_url {
            Some(u) => Endpoint::Url(u.clone()),
            None => Endpoint::Service {
                name: self.webhook_service.clone(),
                namespace: self.namespace.clone(),
                port: self.webhook_service_port,
            },
        }
    }

    /// This replica in the leader-election lease (and as the creator of
    /// the TLS Secret).
    pub fn identity(&self) -> &str {
        self.identity.as_deref().unwrap_or_default()
    }

    /// How the sidecar and the aggregator run.
    pub fn run_as(&self) -> crate::dataplane::RunAs {
        crate::dataplane::RunAs {
            user: self.run_as_user.0,
            group: self.run_as_group.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error("TLS server config: {0}")]
    TlsConfig(std::io::Error),
    #[error("listen: {0}")]
    Listen(std::io::Error),
}

pub async fn run(mut opts: RunOptions) -> Result<(), RunError> {
    opts.identity.get_or_insert_with(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::new());
    // Every request the operator sends is counted by verb and resource.
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&crate::apicalls::layer(metrics.clone()))
        .build();
    let native = native_sidecars(&client, opts.native_sidecars).await?;
    tracing::info!(native_sidecars = native, "cluster capabilities");
    // Before anything is created: an owner named but unreadable stops the
    // start rather than leave objects that would outlive the release.
    let owner = match &opts.owner_cluster_role {
        Some(name) => Some(owner::cluster_role(&client, name).await?),
        None => None,
    };

    // Webhook TLS: self-managed (a Secret shared by the replicas, CA bundle
    // registered by us) or mounted from cert-manager (files, CA injected by it).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &opts.namespace);
    let dns = webhook_dns(&opts);
    let (tls_config, certs) = webhook_tls(
        &opts,
        &secrets,
        &cert_spec(&opts, &dns, owner.as_ref()),
        &metrics,
    )
    .await?;
    if opts.manage_webhook {
        match &certs {
            Some(c) => {
                webhook::register(
                    &client,
                    &opts.endpoint(),
                    &c.ca_pem,
                    owner.as_ref(),
                    opts.webhook_timeout_seconds,
                )
                .await?
            }
            None => tracing::warn!(
                "--manage-webhook with --tls-cert-dir: the CA bundle is left to whoever issued the files"
            ),
        }
    }
    let (stream_store, stream_writer) = kube::runtime::reflector::store();
    let stream_watch = tokio::spawn(webhook::watch_streams(client.clone(), stream_writer));
    let (handle, webhook_task) = serve_webhook(
        &opts,
        WebhookState {
            streams: stream_store,
            client: client.clone(),
            inject: InjectConfig {
                image: opts.image.clone(),
                native_sidecars: native,
                pull_policy: opts.image_pull_policy.clone(),
                run_as: opts.run_as(),
            },
            metrics: metrics.clone(),
            recorder: kube::runtime::events::Recorder::new(
                client.clone(),
                kube::runtime::events::Reporter {
                    controller: format!("{}-webhook", crate::keys::MANAGED_BY),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
        },
        tls_config.clone(),
    )
    .await;

    let renew = spawn_renewal(RenewalParts {
        client: client.clone(),
        secrets: secrets.clone(),
        opts: opts.clone(),
        dns: dns.clone(),
        tls_config: tls_config.clone(),
        metrics: metrics.clone(),
        owner: owner.clone(),
        certs,
    });
    let health_task = serve_health(opts.health_listen, metrics.clone()).await?;

    let ctx = Arc::new(Context::new(
        client.clone(),
        BuildConfig {
            image: opts.image.clone(),
            owner: owner.clone(),
            pull_policy: opts.image_pull_policy.clone(),
            run_as: opts.run_as(),
            aggregator_pod: opts.aggregator_pod.clone(),
        },
        metrics,
    ));
    lead(ctx, &opts, owner).await;
    tracing::info!("shutting down");
    handle.graceful_shutdown(Some(Duration::from_secs(5)));
    let _ = webhook_task.await;
    stream_watch.abort();
    renew.abort();
    health_task.abort();
    Ok(())
}

/// Native sidecars (restartable init containers) as flagged, else from the
/// API server's version: Kubernetes 1.29 and later.
async fn native_sidecars(client: &kube::Client, flag: Option<bool>) -> Result<bool, RunError> {
    if let Some(n) = flag {
        return Ok(n);
    }
    let v = client.apiserver_version().await?;
    let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
    Ok(v.major == "1" && minor >= 29)
}

/// Names the webhook's serving certificate carries: the flagged ones and,
/// when the API server reaches it through a Service, that Service's names.
fn webhook_dns(opts: &RunOptions) -> Vec<String> {
    let mut dns = opts.cert_dns.clone();
    if let Endpoint::Service {
        name, namespace, ..
    } = &opts.endpoint()
    {
        dns.push(format!("{name}.{namespace}.svc"));
        dns.push(format!("{name}.{namespace}.svc.cluster.local"));
    }
    dns
}

/// Serves the admission webhook over TLS on every replica; prints the bound
/// address once listening (scripts and tests read it).
async fn serve_webhook(
    opts: &RunOptions,
    state: WebhookState,
    tls_config: RustlsConfig,
) -> (axum_server::Handle<SocketAddr>, tokio::task::JoinHandle<()>) {
    let handle = axum_server::Handle::new();
    let server = axum_server::bind_rustls(opts.webhook_listen, tls_config)
        .handle(handle.clone())
        .serve(webhook::router(Arc::new(state)).into_make_service());
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "webhook server");
        }
    });
    if let Some(addr) = handle.listening().await {
        println!("webhook listening on https://{addr}");
        tracing::info!(%addr, "webhook listening");
    }
    (handle, task)
}

/// Reconciles while this replica holds the lease, until SIGTERM/SIGINT or
/// the lease is lost; then gives the lease up.
async fn lead(ctx: Arc<Context>, opts: &RunOptions, owner: Option<OwnerReference>) {
    let leader = Leader::new(
        ctx.client.clone(),
        LeaseConfig {
            namespace: opts.namespace.clone(),
            name: "logstream-operator".into(),
            identity: opts.identity().to_string(),
            duration: opts.lease_duration,
            renew_every: (opts.lease_duration / 3).max(Duration::from_millis(200)),
            owner,
        },
    );
    // Every replica serves the webhook; only the leader reconciles.
    let leading = async {
        leader.acquire().await;
        tokio::select! {
            // Returns on SIGTERM/SIGINT (the controller listens for them).
            _ = controller::run(ctx) => {}
            _ = leader.hold() => tracing::error!("leadership lost: controller stopped"),
        }
    };
    tokio::select! {
        _ = leading => {}
        _ = terminated() => {}
    }
    leader.release().await;
}

/// The webhook's TLS: the mounted files (cert-manager), or the Secret the
/// replicas share (made or renewed here when missing or due).
async fn webhook_tls(
    opts: &RunOptions,
    secrets: &Api<Secret>,
    spec: &tls::CertSpec<'_>,
    metrics: &Metrics,
) -> Result<(RustlsConfig, Option<tls::WebhookCerts>), RunError> {
    if let Some(dir) = &opts.tls_cert_dir {
        let config = RustlsConfig::from_pem_file(dir.join("tls.crt"), dir.join("tls.key"))
            .await
            .map_err(RunError::TlsConfig)?;
        return Ok((config, None));
    }
    let (certs, fresh) = tls::ensure(secrets, spec, None).await?;
    if fresh {
        metrics.cert_renewals.inc();
    }
    let config = RustlsConfig::from_pem(
        certs.cert_pem.clone().into_bytes(),
        certs.key_pem.clone().into_bytes(),
    )
    .await
    .map_err(RunError::TlsConfig)?;
    Ok((config, Some(certs)))
}

/// What the renewal task owns.
struct RenewalParts {
    client: kube::Client,
    secrets: Api<Secret>,
    opts: RunOptions,
    dns: Vec<String>,
    tls_config: RustlsConfig,
    metrics: Arc<Metrics>,
    owner: Option<OwnerReference>,
    certs: Option<tls::WebhookCerts>,
}

/// Renews the certificate before it expires (self-managed), or reloads the
/// mounted files when cert-manager rotates them; every replica reloads.
fn spawn_renewal(parts: RenewalParts) -> tokio::task::JoinHandle<()> {
    let RenewalParts {
        client,
        secrets,
        opts,
        dns,
        tls_config,
        metrics,
        owner,
        certs,
    } = parts;
    tokio::spawn(async move {
        if let Some(dir) = &opts.tls_cert_dir {
            tls::follow_files(dir, &tls_config, &metrics).await;
        }
        let Some(current) = certs else { return };
        // The API server must trust the new CA before this replica
        // serves a certificate signed by it (the bundle still holds the
        // previous CA for the others); it sees the new bundle through
        // its watch, shortly after the write (seen on a loaded machine:
        // 7 ms after the write was too early for a client that had just
        // read the previous bundle).
        let publish_ca = |ca_pem: String| {
            let (client, opts, owner) = (&client, &opts, owner.as_ref());
            async move {
                if !opts.manage_webhook {
                    return Ok(());
                }
                webhook::register(
                    client,
                    &opts.endpoint(),
                    &ca_pem,
                    owner,
                    opts.webhook_timeout_seconds,
                )
                .await?;
                tokio::time::sleep(BUNDLE_PROPAGATION).await;
                Ok(())
            }
        };
        let spec = cert_spec(&opts, &dns, owner.as_ref());
        tls::keep_fresh(
            &secrets,
            &spec,
            current,
            &tls_config,
            &metrics,
            opts.cert_check_interval,
            publish_ca,
        )
        .await;
    })
}

/// `/healthz`, `/readyz` and `/metrics` over plain HTTP.
async fn serve_health(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, RunError> {
    let health = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.encode() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(RunError::Listen)?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, health).await;
    }))
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// What the webhook certificate must name, from the options.
fn cert_spec<'a>(
    opts: &'a RunOptions,
    dns: &'a [String],
    owner: Option<&'a OwnerReference>,
) -> tls::CertSpec<'a> {
    tls::CertSpec {
        secret: &opts.tls_secret,
        namespace: &opts.namespace,
        dns_names: dns,
        ips: &opts.cert_ips,
        owner,
        replica: opts.identity(),
    }
}
