//! Webhook TLS, self-managed: a CA and a serving certificate generated with
//! rcgen, kept in a Secret so every replica serves the same pair, renewed
//! well before expiry.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Lifetime of generated certificates.
pub const VALIDITY: Duration = Duration::days(365);
/// Renew when less than this remains.
pub const RENEW_BEFORE: Duration = Duration::days(30);
const NOT_AFTER: &str = "logstream.dev/not-after";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("secret {name}: {source}")]
    Secret { name: String, source: kube::Error },
    #[error("secret {name}: missing or invalid key {key}")]
    SecretContent { name: String, key: &'static str },
}

/// A CA and a serving certificate signed by it, PEM encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookCerts {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl WebhookCerts {
    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        self.not_after - now < RENEW_BEFORE
    }
}

/// Generates a CA and a serving certificate for `dns_names` and `ips`.
pub fn generate(
    dns_names: &[String],
    ips: &[IpAddr],
    now: OffsetDateTime,
) -> Result<WebhookCerts, TlsError> {
    let not_after = now + VALIDITY;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "logstream webhook CA");
    ca.not_before = now - Duration::minutes(5);
    ca.not_after = not_after + Duration::days(1);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(dns_names.to_vec())?;
    leaf.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        dns_names
            .first()
            .map_or("logstream-webhook", String::as_str),
    );
    leaf.not_before = now - Duration::minutes(5);
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok(WebhookCerts {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// The Secret holding `c`. `owner` (the chart's ClusterRole,
/// [`crate::owner`]) makes `helm uninstall` remove it although Helm never
/// rendered it.
fn to_secret(
    name: &str,
    namespace: &str,
    c: &WebhookCerts,
    owner: Option<&OwnerReference>,
) -> Secret {
    let data = BTreeMap::from([
        (
            "ca.crt".to_string(),
            ByteString(c.ca_pem.clone().into_bytes()),
        ),
        (
            "tls.crt".to_string(),
            ByteString(c.cert_pem.clone().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(c.key_pem.clone().into_bytes()),
        ),
    ]);
    let not_after = c
        .not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            annotations: Some(BTreeMap::from([(NOT_AFTER.to_string(), not_after)])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                crate::build::MANAGED_BY.to_string(),
            )])),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    }
}

fn from_secret(s: &Secret) -> Option<WebhookCerts> {
    let data = s.data.as_ref()?;
    let text = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let not_after = s.metadata.annotations.as_ref()?.get(NOT_AFTER)?;
    Some(WebhookCerts {
        ca_pem: text("ca.crt")?,
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
        not_after: OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
            .ok()?,
    })
}

/// What [`ensure`] does with the Secret it found (pure).
#[derive(Debug, PartialEq)]
enum Plan {
    /// Valid, not close to expiry, owned as wanted: serve it.
    Keep(WebhookCerts),
    /// Valid but without the owner reference (stored before the operator had
    /// an owner): write the same certificates back with it, so an upgraded
    /// release's Secret goes with `helm uninstall` without waiting a year
    /// for the renewal.
    Adopt(WebhookCerts),
    /// Missing, unreadable or close to expiry: generate new ones.
    Issue,
}

fn plan(current: Option<&Secret>, owner: Option<&OwnerReference>, now: OffsetDateTime) -> Plan {
    let Some(s) = current else { return Plan::Issue };
    let Some(c) = from_secret(s).filter(|c| !c.needs_renewal(now)) else {
        return Plan::Issue;
    };
    let owned = owner.is_none_or(|o| {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == o.uid)
    });
    if owned { Plan::Keep(c) } else { Plan::Adopt(c) }
}

/// Loads the certificates from the Secret, or generates (and stores) new
/// ones when missing, unreadable or close to expiry. Returns them and whether
/// they are new.
pub async fn ensure(
    secrets: &Api<Secret>,
    name: &str,
    namespace: &str,
    dns_names: &[String],
    ips: &[IpAddr],
    owner: Option<&OwnerReference>,
) -> Result<(WebhookCerts, bool), TlsError> {
    let now = OffsetDateTime::now_utc();
    let current = secrets
        .get_opt(name)
        .await
        .map_err(|source| TlsError::Secret {
            name: name.into(),
            source,
        })?;
    let (certs, fresh) = match plan(current.as_ref(), owner, now) {
        Plan::Keep(c) => return Ok((c, false)),
        Plan::Adopt(c) => (c, false),
        Plan::Issue => (generate(dns_names, ips, now)?, true),
    };
    secrets
        .patch(
            name,
            &PatchParams::apply(crate::build::MANAGED_BY).force(),
            &Patch::Apply(to_secret(name, namespace, &certs, owner)),
        )
        .await
        .map_err(|source| TlsError::Secret {
            name: name.into(),
            source,
        })?;
    if fresh {
        tracing::info!(secret = name, not_after = %certs.not_after, "webhook certificate issued");
    } else {
        tracing::info!(
            secret = name,
            "webhook certificate Secret given its owner reference"
        );
    }
    Ok((certs, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_roundtrips_through_the_secret_and_renews_in_time() {
        let now = OffsetDateTime::now_utc();
        let c = generate(&["svc.ns.svc".into()], &["127.0.0.1".parse().unwrap()], now).unwrap();
        assert!(c.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(c.key_pem.contains("PRIVATE KEY"));
        assert!(!c.needs_renewal(now));
        assert!(c.needs_renewal(now + VALIDITY - RENEW_BEFORE + Duration::days(1)));
        let back = from_secret(&to_secret("s", "ns", &c, None)).unwrap();
        assert_eq!(back.cert_pem, c.cert_pem);
        assert_eq!(
            back.not_after.unix_timestamp(),
            c.not_after.unix_timestamp()
        );
    }

    #[test]
    fn secret_is_kept_adopted_by_the_owner_or_reissued() {
        let now = OffsetDateTime::now_utc();
        let c = generate(&["svc.ns.svc".into()], &[], now).unwrap();
        let owner = crate::owner::reference(&crate::owner::tests::chart_role("u1")).unwrap();
        let unowned = to_secret("s", "ns", &c, None);
        let owned = to_secret("s", "ns", &c, Some(&owner));
        assert_eq!(
            owned.metadata.owner_references.as_deref(),
            Some(&[owner.clone()][..])
        );
        // Without an owner (operator outside the chart): as before.
        assert_eq!(plan(Some(&unowned), None, now), Plan::Keep(c.clone()));
        assert_eq!(plan(Some(&owned), None, now), Plan::Keep(c.clone()));
        // Stored before the owner existed: same certificates, owner added.
        assert_eq!(
            plan(Some(&unowned), Some(&owner), now),
            Plan::Adopt(c.clone())
        );
        assert_eq!(plan(Some(&owned), Some(&owner), now), Plan::Keep(c));
        // Missing, unreadable, or close to expiry: new certificates.
        assert_eq!(plan(None, Some(&owner), now), Plan::Issue);
        assert_eq!(plan(Some(&Secret::default()), None, now), Plan::Issue);
        let late = now + VALIDITY - RENEW_BEFORE + Duration::days(1);
        assert_eq!(plan(Some(&owned), Some(&owner), late), Plan::Issue);
    }
}
