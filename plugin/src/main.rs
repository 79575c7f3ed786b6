//! `kubectl-logstream`: run as `kubectl logstream ...` (kubectl finds it on
//! PATH) or alone. See `--help` and the README.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubectl_logstream::error::CliError;
use kubectl_logstream::follow::{TailOptions, tail};
use kubectl_logstream::render::{Output, Style};
use kubectl_logstream::status::{Scope, status};
use kubectl_logstream::target::{Target, resolve};
use logstream::protocol::{Format, Subscribe};

const EXIT_CODES: &str = "Exit codes: 0 ended by Ctrl-C (or done), 1 the cluster could not be reached \
or answered an error, 2 bad arguments, 3 the target or its sidecar was not found, 4 not allowed \
(RBAC: pods get/list/watch, pods/portforward create; or the sidecar asks for a token).";

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-logstream",
    version,
    about = "Live log files from inside pods, through their logstream sidecars",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    kube: KubeArgs,
}

/// Which cluster, as kubectl picks it.
#[derive(Args, Debug)]
struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (default: the context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Follow the log files of a pod, a workload's pods, a LogStream's pods or
    /// a label selector's pods, merged by time.
    #[command(after_help = EXIT_CODES)]
    Tail(Box<TailArgs>),
    /// LogStreams, their pods, injected or pending, sidecar readiness.
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct TailArgs {
    /// POD, pod/NAME, deploy/NAME, sts/NAME, ds/NAME, rs/NAME or ls/NAME (a LogStream).
    target: Option<String>,
    /// Label selector instead of a TARGET (`app=web,tier!=db`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Only files written by this container (regular expression, whole name).
    #[arg(short, long)]
    container: Option<String>,
    /// Only files matching this glob (`*.log`, `access/*.log`).
    #[arg(long)]
    file: Option<String>,
    /// Levels: `error,warn`, or `warn+` for warn and above.
    #[arg(long)]
    level: Option<String>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// Start with lines read in this last while (`5m`, `1h`) or since an RFC 3339 time.
    #[arg(long, conflicts_with = "tail")]
    since: Option<String>,
    /// Start with this many lines of history per pod (default 10).
    #[arg(long)]
    tail: Option<usize>,
    #[arg(short, long, value_enum, default_value = "pretty")]
    output: Output,
    /// Print each line's time (when the sidecar read it).
    #[arg(long)]
    timestamps: bool,
    /// No colours (also when NO_COLOR is set or stdout is not a terminal).
    #[arg(long)]
    no_color: bool,
    /// Read the namespace's aggregator instead of each pod's sidecar.
    #[arg(long)]
    via_aggregator: bool,
    /// Token for sidecars that ask for one (service mesh, access settings).
    #[arg(long, env = "LOGSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long a line waits for older lines of other pods before it is printed.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    merge_window: Duration,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Bad arguments are told before any cluster is asked.
    let target = match &cli.command {
        Command::Tail(a) => Some(Target::parse(a.target.as_deref(), a.selector.as_deref())?),
        Command::Status(_) => None,
    };
    let (client, default_ns) = connect(&cli.kube).await?;
    let ns = cli.kube.namespace.clone().unwrap_or(default_ns);
    match cli.command {
        Command::Status(a) => {
            let scope = if a.all_namespaces {
                Scope::All
            } else {
                Scope::Namespace(ns)
            };
            print!("{}", status(&client, &scope).await?);
            Ok(())
        }
        Command::Tail(a) => {
            let target = target.ok_or_else(|| CliError::Usage("no target".into()))?;
            let pods = resolve(&client, &ns, &target).await?;
            let color = !a.no_color
                && std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stdout());
            let opts = TailOptions {
                namespace: ns,
                pods,
                sub: Subscribe {
                    tail: if a.since.is_some() {
                        None
                    } else {
                        Some(a.tail.unwrap_or(10))
                    },
                    since: a.since,
                    file: a.file,
                    level: a.level,
                    grep: a.grep,
                    container: a.container,
                    format: Some(Format::Json),
                    ..Subscribe::default()
                },
                style: Style {
                    output: a.output,
                    timestamps: a.timestamps,
                    color,
                },
                window: a.merge_window,
                via_aggregator: a.via_aggregator,
                token: a.token,
            };
            tail(client, opts, terminated()).await
        }
    }
}

/// A client for the kubeconfig and context kubectl would use, and the
/// context's namespace.
async fn connect(k: &KubeArgs) -> Result<(kube::Client, String), CliError> {
    let options = KubeConfigOptions {
        context: k.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &k.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| CliError::Usage(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await
        }
        None if k.context.is_some() => kube::Config::from_kubeconfig(&options).await,
        None => kube::Config::infer().await.map_err(|e| {
            kube::config::KubeconfigError::ReadConfig(
                std::io::Error::other(e.to_string()),
                "".into(),
            )
        }),
    }
    .map_err(|e| CliError::Cluster(format!("no usable kubeconfig: {e}")))?;
    let ns = config.default_namespace.clone();
    let client =
        kube::Client::try_from(config).map_err(|e| CliError::Cluster(format!("client: {e}")))?;
    Ok((client, ns))
}

/// Ctrl-C or SIGTERM.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_style_arguments_parse() {
        let cli = Cli::try_parse_from([
            "kubectl-logstream",
            "tail",
            "deploy/web",
            "-n",
            "shop",
            "--level",
            "warn+",
            "--since",
            "5m",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.kube.namespace.as_deref(), Some("shop"));
        let Command::Tail(t) = cli.command else {
            panic!("tail")
        };
        assert_eq!(t.target.as_deref(), Some("deploy/web"));
        assert_eq!(t.output, Output::Json);
        assert!(
            Cli::try_parse_from([
                "kubectl-logstream",
                "tail",
                "x",
                "--since",
                "5m",
                "--tail",
                "3"
            ])
            .is_err(),
            "--since and --tail conflict"
        );
    }
}
