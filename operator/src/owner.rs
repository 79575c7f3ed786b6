//! The owner of what the operator creates outside any LogStream: the webhook
//! configuration, the webhook TLS Secret, the leader Lease and the
//! per-namespace auth-delegator ClusterRoleBindings.
//!
//! Helm deletes only what it rendered, so without an owner these objects
//! outlive `helm uninstall`. They get a reference to a cluster-scoped object
//! the chart owns, its operator ClusterRole (`--owner-cluster-role`), and
//! Kubernetes' garbage collector deletes them with it: no uninstall hook, and
//! it works when the operator is already gone. Cluster-scoped: a
//! cluster-scoped dependent (the webhook configuration, the bindings) may not
//! have a namespaced owner such as the operator's Deployment, while a
//! namespaced one (the Secret, the Lease) may have a cluster-scoped owner.

use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::{Resource, ResourceExt};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error("owner ClusterRole {name}: {source}")]
    Get { name: String, source: kube::Error },
    #[error("owner ClusterRole {name} has no uid")]
    NoUid { name: String },
}

/// A reference to `role` for the objects it owns. Neither controller (the
/// ClusterRole controls nothing) nor blocking: `blockOwnerDeletion: true`
/// would need `update` on the ClusterRole's finalizers, and nothing needs
/// the ClusterRole to wait for its dependents. `None` without a uid (an
/// object never stored).
pub fn reference(role: &ClusterRole) -> Option<OwnerReference> {
    let mut o = role.controller_owner_ref(&())?;
    o.controller = Some(false);
    o.block_owner_deletion = Some(false);
    Some(o)
}

/// The owner reference to the ClusterRole `name`, read once at start-up: its
/// uid is part of the reference, and a reference whose uid matches no object
/// makes the garbage collector delete the dependent at once.
pub async fn cluster_role(client: &kube::Client, name: &str) -> Result<OwnerReference, OwnerError> {
    let role = Api::<ClusterRole>::all(client.clone())
        .get(name)
        .await
        .map_err(|source| OwnerError::Get {
            name: name.into(),
            source,
        })?;
    let owner = reference(&role).ok_or_else(|| OwnerError::NoUid {
        name: role.name_any(),
    })?;
    tracing::info!(cluster_role = name, uid = %owner.uid, "objects created at run time are owned by this ClusterRole");
    Ok(owner)
}

/// The owner references of an object written whole (update, not apply):
/// `refs` with `owner` in place of any reference to an object of the same
/// kind and name (a ClusterRole deleted and created again has a new uid);
/// `refs` unchanged without an owner.
pub fn with_owner(
    refs: Option<Vec<OwnerReference>>,
    owner: Option<&OwnerReference>,
) -> Option<Vec<OwnerReference>> {
    let Some(owner) = owner else { return refs };
    let mut v: Vec<OwnerReference> = refs
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            !(r.api_version == owner.api_version && r.kind == owner.kind && r.name == owner.name)
        })
        .collect();
    v.push(owner.clone());
    Some(v)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    /// The chart's ClusterRole as the API server returns it.
    pub fn chart_role(uid: &str) -> ClusterRole {
        ClusterRole {
            metadata: ObjectMeta {
                name: Some("logstream-operator".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..ClusterRole::default()
        }
    }

    #[test]
    fn reference_names_the_cluster_role_without_controlling_or_blocking() {
        let o = reference(&chart_role("u1")).unwrap();
        assert_eq!(o.api_version, "rbac.authorization.k8s.io/v1");
        assert_eq!(o.kind, "ClusterRole");
        assert_eq!(o.name, "logstream-operator");
        assert_eq!(o.uid, "u1");
        assert_eq!(o.controller, Some(false));
        assert_eq!(o.block_owner_deletion, Some(false));
        assert!(reference(&ClusterRole::default()).is_none(), "no uid");
    }

    #[test]
    fn with_owner_adds_or_refreshes_the_reference_and_keeps_others() {
        let old = reference(&chart_role("old")).unwrap();
        let new = reference(&chart_role("new")).unwrap();
        let other = OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "x".into(),
            uid: "x".into(),
            ..OwnerReference::default()
        };
        assert_eq!(with_owner(None, None), None);
        assert_eq!(
            with_owner(Some(vec![other.clone()]), None),
            Some(vec![other.clone()])
        );
        assert_eq!(with_owner(None, Some(&new)), Some(vec![new.clone()]));
        assert_eq!(
            with_owner(Some(vec![other.clone(), old]), Some(&new)),
            Some(vec![other, new.clone()])
        );
        assert_eq!(
            with_owner(Some(vec![new.clone()]), Some(&new)),
            Some(vec![new])
        );
    }
}
