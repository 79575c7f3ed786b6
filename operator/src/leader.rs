//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas never reconcile at once. Every replica serves the webhook; only
//! the holder of the lease runs the controller.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// A holder that has not renewed for this long loses the lease.
    pub duration: Duration,
    pub renew_every: Duration,
    /// Owner of the Lease (the chart's ClusterRole, [`crate::owner`]), so
    /// `helm uninstall` removes it; `None` outside the chart.
    pub owner: Option<OwnerReference>,
}

pub struct Leader {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

/// Outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Held,
    HeldByOther(String),
}

impl Leader {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Leader {
        Leader {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Takes or renews the lease once. Conflicts (another replica won the
    /// race) count as held by the other.
    pub async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    owner_references: self.cfg.owner.clone().map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    Ok(Attempt::HeldByOther("unknown".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.cfg.identity;
        let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(t)), Some(d)) => {
                let deadline = t
                    .checked_add(std::time::Duration::from_secs(d.max(0) as u64))
                    .unwrap_or(*t);
                deadline < now
            }
            _ => true,
        };
        if !mine && !holder.is_empty() && !expired {
            return Ok(Attempt::HeldByOther(holder));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, transitions, acquired));
        // A Lease created before the operator had an owner gets it here.
        lease.metadata.owner_references = crate::owner::with_owner(
            lease.metadata.owner_references.take(),
            self.cfg.owner.as_ref(),
        );
        // The resourceVersion in `lease` makes this a compare-and-swap.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::HeldByOther(holder)),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Held) => {
                    tracing::info!(identity = %self.cfg.identity, lease = %self.cfg.name, "leading");
                    return;
                }
                Ok(Attempt::HeldByOther(h)) => {
                    if h != last_holder {
                        tracing::info!(holder = %h, "another replica leads; standing by");
                        last_holder = h;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease"),
            }
            tokio::time::sleep(self.cfg.renew_every).await;
        }
    }

    /// Renews until the lease is lost (returns then).
    pub async fn hold(&self) {
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(self.cfg.renew_every).await;
            match self.try_acquire().await {
                Ok(Attempt::Held) => failing_since = None,
                Ok(Attempt::HeldByOther(h)) => {
                    tracing::error!(holder = %h, "lease taken over");
                    return;
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    tracing::warn!(error = %e, "lease renewal failed");
                    if since.elapsed() >= self.cfg.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.cfg.identity.as_str())
        {
            if let Some(s) = lease.spec.as_mut() {
                s.holder_identity = None;
                s.renew_time = None;
            }
            match self
                .api
                .replace(&self.cfg.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => tracing::info!("lease released"),
                Err(e) => tracing::warn!(error = %e, "lease release"),
            }
        }
    }
}
