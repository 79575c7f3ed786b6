//! `logstream-operator`: prints the CRD, or runs the controller and webhook.

use clap::{Parser, Subcommand};
use logstream_operator::run::{RunOptions, run};

/// mimalloc instead of glibc's malloc: at 10,000 pods (the bench's
/// operator group, pods cached as k8s-openapi `Pod`s) the operator's
/// resident memory was 167 MiB with it against 282 MiB with glibc, whose
/// per-thread arenas keep what the watch and webhook parsing freed
/// (bench/ANALYSIS.md, "Operator at scale"). Off with
/// `--no-default-features` (the system allocator, for heap profilers).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "logstream-operator",
    version,
    about = "Kubernetes operator for logstream"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, env = logstream_contract::env::LOG_FORMAT, default_value = "text", global = true, value_parser = logstream_contract::logging::FORMATS)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the LogStream CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller and the injection webhook.
    Run(Box<RunOptions>),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logstream_contract::logging::init(&cli.log_format);
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
        Command::Run(opts) => {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(*opts))?;
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

    fn run_args(args: &[&str]) -> RunOptions {
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
