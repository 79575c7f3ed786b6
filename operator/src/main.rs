//! `logstream-operator`: prints the CRD, or runs the controller and webhook.

use std::net::{IpAddr, SocketAddr};

use clap::{Parser, Subcommand};
use logstream_operator::run::{RunOptions, run};
use logstream_operator::webhook::Endpoint;

#[derive(Parser, Debug)]
#[command(
    name = "logstream-operator",
    version,
    about = "Kubernetes operator for logstream"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = "LOGSTREAM_LOG_FORMAT", default_value = "text", global = true, value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the LogStream CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller and the injection webhook.
    Run(Box<RunArgs>),
    /// Delete every LogStream and wait until each is cleaned up (the chart's
    /// pre-delete hook). With --without-operator, do the cleanup here and
    /// release the finalizers: the way out when the operator is gone and
    /// LogStreams (or namespaces being deleted) are stuck.
    Uninstall(UninstallArgs),
}

#[derive(clap::Args, Debug)]
struct UninstallArgs {
    /// Only this namespace (default: all).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Run each LogStream's cleanup here and remove its finalizer.
    #[arg(long)]
    without_operator: bool,
    /// Longest wait for the LogStreams to go.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Namespace the operator runs in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "logstream-system")]
    namespace: String,
    /// Image of the sidecar and the aggregator.
    #[arg(
        long,
        env = "LOGSTREAM_IMAGE",
        default_value = "ghcr.io/logstream-dev/logstream:0.1.0"
    )]
    image: String,
    #[arg(long, default_value = "0.0.0.0:8443")]
    webhook_listen: SocketAddr,
    /// Service the API server calls the webhook through.
    #[arg(
        long,
        env = "LOGSTREAM_WEBHOOK_SERVICE",
        default_value = "logstream-operator"
    )]
    webhook_service: String,
    #[arg(long, default_value_t = 443)]
    webhook_service_port: i32,
    /// Call the webhook by URL instead of Service (out-of-cluster runs and tests).
    #[arg(long)]
    webhook_url: Option<String>,
    /// Secret holding the webhook CA and certificate.
    #[arg(long, default_value = "logstream-webhook-tls")]
    tls_secret: String,
    /// Extra DNS names on the serving certificate.
    #[arg(long = "cert-dns", value_delimiter = ',')]
    cert_dns: Vec<String>,
    /// Extra IP addresses on the serving certificate.
    #[arg(long = "cert-ip", value_delimiter = ',')]
    cert_ips: Vec<IpAddr>,
    /// Health and metrics (plain HTTP).
    #[arg(long, default_value = "0.0.0.0:8080")]
    health_listen: SocketAddr,
    /// Inject native sidecars (true) or plain containers (false); detected from the server version when unset.
    #[arg(long)]
    native_sidecars: Option<bool>,
    /// Register the MutatingWebhookConfiguration and its CA bundle (false when a chart or cert-manager does).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    manage_webhook: bool,
    /// Serve the webhook certificate from DIR/tls.crt and DIR/tls.key (e.g. a cert-manager Secret) instead of the self-managed Secret.
    #[arg(long)]
    tls_cert_dir: Option<std::path::PathBuf>,
    /// Identity in the leader-election lease (default: the pod name, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// A leader that has not renewed for this long is replaced.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: std::time::Duration,
    /// ClusterRole (the chart's own) that owns the webhook configuration, TLS Secret, leader Lease and auth-delegator bindings the operator creates, so the garbage collector deletes them with it (helm uninstall). Needs get on it.
    #[arg(long, env = "LOGSTREAM_OWNER_CLUSTER_ROLE")]
    owner_cluster_role: Option<String>,
    /// imagePullPolicy of the sidecar and the aggregator (default: the cluster's).
    #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"])]
    image_pull_policy: Option<String>,
    /// User the sidecar and the aggregator run as; empty: left to the platform (OpenShift's restricted SCC assigns one).
    #[arg(long, default_value = "65532", value_parser = logstream_operator::dataplane::parse_id)]
    run_as_user: logstream_operator::dataplane::OptionalId,
    /// Their group when the app's is unknown; empty: left to the platform.
    #[arg(long, default_value = "65532", value_parser = logstream_operator::dataplane::parse_id)]
    run_as_group: logstream_operator::dataplane::OptionalId,
    /// The aggregator pods' resources, nodeSelector, tolerations, imagePullSecrets and priorityClassName, as JSON.
    #[arg(long, env = "LOGSTREAM_AGGREGATOR_POD", default_value = "", value_parser = logstream_operator::dataplane::parse_aggregator_pod)]
    aggregator_pod: logstream_operator::dataplane::AggregatorPod,
    /// The API server's timeout for one admission call (1-30 s) in the webhook configuration the operator registers.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=30))]
    webhook_timeout_seconds: i32,
    /// How often each replica re-reads the self-managed certificate Secret, renews it when close to expiry, and serves what it holds.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    cert_check_interval: std::time::Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
    match cli.command {
        Command::Crd => {
            print!("{}", logstream_operator::crd::crd_yaml()?);
            Ok(())
        }
        Command::Uninstall(a) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = kube::Client::try_default().await?;
                // Only the cleanup of namespaces where other LogStreams stay
                // builds objects, and every LogStream is being removed.
                let ctx = logstream_operator::controller::Context::new(
                    client,
                    logstream_operator::desired::BuildConfig::default(),
                    std::sync::Arc::new(logstream_operator::metrics::Metrics::new()),
                );
                let n = logstream_operator::uninstall::uninstall(
                    &ctx,
                    a.namespace.as_deref(),
                    a.without_operator,
                    a.timeout,
                )
                .await?;
                println!("{n} LogStream(s) removed");
                anyhow::Ok(())
            })
        }
        Command::Run(a) => {
            let webhook = match a.webhook_url {
                Some(u) => Endpoint::Url(u),
                None => Endpoint::Service {
                    name: a.webhook_service,
                    namespace: a.namespace.clone(),
                    port: a.webhook_service_port,
                },
            };
            let opts = RunOptions {
                namespace: a.namespace,
                image: a.image,
                webhook_listen: a.webhook_listen,
                webhook,
                tls_secret: a.tls_secret,
                cert_dns: a.cert_dns,
                cert_ips: a.cert_ips,
                health_listen: a.health_listen,
                native_sidecars: a.native_sidecars,
                identity: a.identity.unwrap_or_else(|| {
                    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                    format!("{}-{}", host.trim(), std::process::id())
                }),
                lease_duration: a.lease_duration,
                manage_webhook: a.manage_webhook,
                tls_cert_dir: a.tls_cert_dir,
                owner_cluster_role: a.owner_cluster_role,
                pull_policy: a.image_pull_policy,
                run_as: logstream_operator::dataplane::RunAs {
                    user: a.run_as_user.0,
                    group: a.run_as_group.0,
                },
                aggregator_pod: a.aggregator_pod,
                webhook_timeout_seconds: a.webhook_timeout_seconds,
                cert_check_interval: a.cert_check_interval,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(opts))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let mut full = vec!["logstream-operator", "run"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Run(a) => *a,
            _ => unreachable!("run was parsed"),
        }
    }

    #[test]
    fn data_plane_ids_default_to_65532_and_can_be_left_to_the_platform() {
        let a = run_args(&[]);
        assert_eq!(
            (a.run_as_user.0, a.run_as_group.0),
            (Some(65532), Some(65532))
        );
        assert_eq!(a.webhook_timeout_seconds, 5);
        let a = run_args(&[
            "--run-as-user=",
            "--run-as-group=",
            "--webhook-timeout-seconds=12",
        ]);
        assert_eq!((a.run_as_user.0, a.run_as_group.0), (None, None));
        assert_eq!(a.webhook_timeout_seconds, 12);
        let a = run_args(&["--aggregator-pod", r#"{"nodeSelector":{"pool":"infra"}}"#]);
        assert_eq!(a.aggregator_pod.node_selector["pool"], "infra");
        assert!(Cli::try_parse_from(["logstream-operator", "run", "--run-as-user=0"]).is_err());
        assert!(
            Cli::try_parse_from(["logstream-operator", "run", "--webhook-timeout-seconds=31"])
                .is_err()
        );
    }
}
