//! `logstream-operator`: prints the CRD, or runs the controller and webhook.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "logstream-operator",
    version,
    about = "Kubernetes operator for logstream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the LogStream CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", logstream_operator::crd::crd_yaml()?);
            Ok(())
        }
    }
}
