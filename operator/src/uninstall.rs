//! Removing every LogStream, for `helm uninstall` and for namespaces stuck
//! in Terminating (`logstream-operator uninstall`).
//!
//! Each LogStream carries the finalizer `logstream.dev/cleanup`: the
//! operator unlabels the namespace and shrinks or removes the shared
//! aggregator and auth-delegator binding before the object may go. With the
//! operator running, deleting the LogStreams and waiting is enough (the
//! chart's pre-delete hook does that). Without it — the chart was removed
//! first, or the operator cannot start — the finalizer never runs and the
//! LogStreams, and any namespace being deleted with them, stay. Then
//! `--without-operator` runs the same cleanup here and releases the
//! finalizer itself.

use std::time::Duration;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::controller::{Context, cleanup};
use crate::crd::LogStream;
use crate::keys::FINALIZER;

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("cleaning up {name}: {source}")]
    Cleanup {
        name: String,
        source: Box<crate::controller::Error>,
    },
    #[error(
        "{left} LogStream(s) still there after {waited:?}: {names}. Is the operator running? If not, run again with --without-operator"
    )]
    Timeout {
        left: usize,
        waited: Duration,
        names: String,
    },
}

/// `namespace/name` of a LogStream, for messages.
fn key(ls: &LogStream) -> String {
    format!("{}/{}", ls.namespace().unwrap_or_default(), ls.name_any())
}

fn scoped(ctx: &Context, ls: &LogStream) -> Api<LogStream> {
    Api::namespaced(ctx.client.clone(), &ls.namespace().unwrap_or_default())
}

/// Deletes every LogStream (of `namespace`, or of all namespaces) and
/// returns once none is left. `without_operator`: also runs each one's
/// cleanup and removes the finalizer, so nothing waits for an operator.
pub async fn uninstall(
    ctx: &Context,
    namespace: Option<&str>,
    without_operator: bool,
    timeout: Duration,
) -> Result<usize, UninstallError> {
    let api: Api<LogStream> = match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let found = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        // The CRD is gone already: no LogStream can be left.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    // All are marked for deletion first, so no cleanup below sees another
    // live LogStream and rebuilds the shared objects for it.
    for ls in &found {
        match scoped(ctx, ls)
            .delete(&ls.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => tracing::info!(logstream = %key(ls), "deleting"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if without_operator {
        for ls in &found {
            let api = scoped(ctx, ls);
            let Some(ls) = api.get_opt(&ls.name_any()).await? else {
                continue;
            };
            if !ls.finalizers().iter().any(|f| f == FINALIZER) {
                continue;
            }
            cleanup(&ls, ctx)
                .await
                .map_err(|e| UninstallError::Cleanup {
                    name: key(&ls),
                    source: Box::new(e),
                })?;
            let rest: Vec<String> = ls
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            // Guarded by resourceVersion: a concurrent change fails this
            // patch (run the command again) instead of being overwritten.
            let patch = serde_json::json!({"metadata": {
                "finalizers": rest,
                "resourceVersion": ls.meta().resource_version,
            }});
            match api
                .patch(
                    &ls.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Ok(_) => tracing::info!(logstream = %key(&ls), "cleaned up, finalizer released"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = api.list(&ListParams::default()).await?.items;
        if left.is_empty() {
            return Ok(found.len());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(UninstallError::Timeout {
                left: left.len(),
                waited: timeout,
                names: left.iter().map(key).collect::<Vec<_>>().join(", "),
            });
        }
        // The operator removes them one reconcile at a time.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
