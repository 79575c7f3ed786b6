//! Why `kubectl logstream` stops, and its exit code (documented in the
//! README and `--help`).

/// Exit codes: 0 ended by Ctrl-C or done; 1 the cluster could not be
/// reached or answered an error; 2 bad arguments; 3 the target or its
/// sidecar was not found; 4 the user may not do what it takes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Cluster(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Cluster(_) => 1,
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::Forbidden(_) => 4,
        }
    }

    /// An API error while doing `what`, with what to do about it.
    pub fn from_kube(e: kube::Error, what: &str) -> CliError {
        match &e {
            kube::Error::Api(s) if s.is_not_found() => {
                CliError::NotFound(format!("{what}: not found"))
            }
            kube::Error::Api(s) if s.is_forbidden() => CliError::Forbidden(format!(
                "{what}: forbidden: {}. Ask for a Role that allows it (kubectl auth can-i)",
                s.message
            )),
            _ => CliError::Cluster(format!("{what}: {e}")),
        }
    }
}
