//! Webhook TLS, self-managed: a CA and a serving certificate generated with
//! rcgen, kept in a Secret so every replica serves the same pair, renewed
//! well before expiry.
//!
//! Several replicas start and renew at once, so every write is conditional:
//! a missing Secret is created by a server-side apply under the replica's
//! own field manager (a second creator gets 409 and adopts the winner's
//! pair), an existing one is patched with its `resourceVersion` as
//! precondition (a concurrent writer gets 409 and re-reads). One pair per
//! version, whoever writes it. A renewal keeps the previous CA in `ca.crt`
//! (and so in the webhook's caBundle) beside the new one: replicas still
//! serving the previous certificate stay trusted until they reload, and
//! each replica registers the bundle before it serves a new certificate.

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

/// The PEM certificates of a bundle, in order.
fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .filter(|b| b.contains(END))
        .map(|b| format!("{}\n", b.trim_start()))
        .collect()
}

/// A new CA and serving certificate whose `ca_pem` also holds the CA that
/// signed `previous` (not older ones: those expired long before).
pub fn rotate(
    previous: &WebhookCerts,
    dns_names: &[String],
    ips: &[IpAddr],
    now: OffsetDateTime,
) -> Result<WebhookCerts, TlsError> {
    let mut next = generate(dns_names, ips, now)?;
    if let Some(ca) = pem_blocks(&previous.ca_pem).into_iter().next() {
        next.ca_pem.push_str(&ca);
    }
    Ok(next)
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
    // A name of its own per CA: during a renewal the bundle holds two, and
    // clients that pick an issuer by subject alone must find the right one.
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("logstream webhook CA {}", now.unix_timestamp_nanos()),
    );
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
    // Names the signing CA's key, so verifiers pick it among several.
    leaf.use_authority_key_identifier_extension = true;
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
                crate::keys::MANAGED_BY.to_string(),
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
    /// Close to expiry: a new pair, the current CA kept in the bundle.
    Renew(WebhookCerts),
    /// Missing or unreadable: generate new ones.
    Issue,
}

fn plan(current: Option<&Secret>, owner: Option<&OwnerReference>, now: OffsetDateTime) -> Plan {
    let Some(s) = current else { return Plan::Issue };
    let Some(c) = from_secret(s) else {
        return Plan::Issue;
    };
    if c.needs_renewal(now) {
        return Plan::Renew(c);
    }
    let owned = owner.is_none_or(|o| {
        s.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == o.uid)
    });
    if owned { Plan::Keep(c) } else { Plan::Adopt(c) }
}

/// Conditional writes lost to another replica before giving up.
const WRITE_ATTEMPTS: usize = 5;

/// Where the pair lives and what it must name.
pub struct CertSpec<'a> {
    pub secret: &'a str,
    pub namespace: &'a str,
    pub dns_names: &'a [String],
    pub ips: &'a [IpAddr],
    /// The chart's ClusterRole ([`crate::owner`]), so the Secret goes with
    /// `helm uninstall`.
    pub owner: Option<&'a OwnerReference>,
    /// This replica (its field manager when it creates the Secret).
    pub replica: &'a str,
}

/// Loads the certificates from the Secret, or generates (and stores) new
/// ones when missing, unreadable or close to expiry. Returns them and whether
/// they are new. Safe to call from every replica at once (see the module
/// docs): what it returns is what the Secret holds. `serving`: the pair this
/// replica serves now; a pair issued because the Secret was deleted or
/// damaged keeps its CA in the bundle, as a renewal does.
pub async fn ensure(
    secrets: &Api<Secret>,
    spec: &CertSpec<'_>,
    serving: Option<&WebhookCerts>,
) -> Result<(WebhookCerts, bool), TlsError> {
    let CertSpec {
        secret: name,
        namespace,
        dns_names,
        ips,
        owner,
        replica,
    } = *spec;
    let err = |source| TlsError::Secret {
        name: name.into(),
        source,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = OffsetDateTime::now_utc();
        let current = secrets.get_opt(name).await.map_err(err)?;
        let (certs, fresh) = match plan(current.as_ref(), owner, now) {
            Plan::Keep(c) => return Ok((c, false)),
            Plan::Adopt(c) => (c, false),
            Plan::Renew(old) => (rotate(&old, dns_names, ips, now)?, true),
            Plan::Issue => match serving {
                Some(old) => (rotate(old, dns_names, ips, now)?, true),
                None => (generate(dns_names, ips, now)?, true),
            },
        };
        let desired = to_secret(name, namespace, &certs, owner);
        let written = match &current {
            // Server-side apply, not a create: RBAC can limit patch to this
            // Secret's name but not create. Without force and under a field
            // manager of this replica's own, a second replica applying other
            // certificates meets a conflict (409) instead of overwriting.
            None => {
                secrets
                    .patch(
                        name,
                        &PatchParams::apply(&format!("{}/{replica}", crate::keys::MANAGED_BY)),
                        &Patch::Apply(&desired),
                    )
                    .await
            }
            Some(cur) => {
                // The resourceVersion makes the patch conditional.
                let mut body = serde_json::to_value(&desired).unwrap_or_default();
                body["metadata"]["resourceVersion"] =
                    serde_json::json!(cur.metadata.resource_version);
                secrets
                    .patch(name, &PatchParams::default(), &Patch::Merge(body))
                    .await
            }
        };
        match written {
            Ok(_) => {}
            // Another replica wrote first: serve what it wrote.
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < WRITE_ATTEMPTS => {
                tracing::info!(
                    secret = name,
                    "webhook certificate written by another replica; re-reading"
                );
                continue;
            }
            Err(e) => return Err(err(e)),
        }
        if fresh {
            tracing::info!(secret = name, not_after = %certs.not_after, cas = pem_blocks(&certs.ca_pem).len(), "webhook certificate issued");
        } else {
            tracing::info!(
                secret = name,
                "webhook certificate Secret given its owner reference"
            );
        }
        return Ok((certs, fresh));
    }
}

/// Reloads `config` from `dir`'s `tls.crt` and `tls.key` whenever the
/// certificate file changes (cert-manager rotating the mounted Secret);
/// looks once a minute, never returns.
pub async fn follow_files(
    dir: &std::path::Path,
    config: &axum_server::tls_rustls::RustlsConfig,
    metrics: &crate::metrics::Metrics,
) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&dir.join("tls.crt"));
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        let now = modified(&dir.join("tls.crt"));
        if now == seen {
            continue;
        }
        match config
            .reload_from_pem_file(dir.join("tls.crt"), dir.join("tls.key"))
            .await
        {
            Ok(()) => {
                tracing::info!("webhook certificate reloaded from files");
                metrics.cert_renewals.inc();
                seen = now;
            }
            Err(e) => tracing::error!(error = %e, "reload webhook certificate files"),
        }
    }
}

/// Keeps a self-managed pair fresh, never returns: every `every`, each
/// replica looks at the Secret; the one that finds the pair close to expiry
/// renews it, the others pick the new pair up. A new pair is served only
/// after `publish_ca` has made its CA trusted (the webhook's caBundle); when
/// that fails the current pair stays.
pub async fn keep_fresh<F, Fut>(
    secrets: &Api<Secret>,
    spec: &CertSpec<'_>,
    mut current: WebhookCerts,
    config: &axum_server::tls_rustls::RustlsConfig,
    metrics: &crate::metrics::Metrics,
    every: std::time::Duration,
    publish_ca: F,
) where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    loop {
        tokio::time::sleep(every).await;
        match ensure(secrets, spec, Some(&current)).await {
            Ok((c, fresh)) if c != current => {
                if fresh {
                    metrics.cert_renewals.inc();
                }
                if let Err(e) = publish_ca(c.ca_pem.clone()).await {
                    tracing::error!(error = %e, "update caBundle; keeping the current certificate");
                    continue;
                }
                if let Err(e) = config
                    .reload_from_pem(
                        c.cert_pem.clone().into_bytes(),
                        c.key_pem.clone().into_bytes(),
                    )
                    .await
                {
                    tracing::error!(error = %e, "reload webhook certificate");
                    continue;
                }
                tracing::info!(not_after = %c.not_after, "webhook certificate reloaded");
                current = c;
            }
            // Unchanged. Not registered again: a read that lost a race with
            // another replica's renewal would put a stale bundle back.
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "webhook certificate renewal"),
        }
    }
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
        assert_eq!(plan(Some(&owned), Some(&owner), now), Plan::Keep(c.clone()));
        // Missing, unreadable, or close to expiry: new certificates.
        assert_eq!(plan(None, Some(&owner), now), Plan::Issue);
        assert_eq!(plan(Some(&Secret::default()), None, now), Plan::Issue);
        let late = now + VALIDITY - RENEW_BEFORE + Duration::days(1);
        assert_eq!(plan(Some(&owned), Some(&owner), late), Plan::Renew(c));
    }

    /// A renewal's bundle holds the new CA and the one before it (which
    /// still signs what other replicas serve), never more.
    #[test]
    fn renewal_keeps_the_previous_ca_in_the_bundle() {
        let now = OffsetDateTime::now_utc();
        let first = generate(&["svc.ns.svc".into()], &[], now).unwrap();
        assert_eq!(
            pem_blocks(&first.ca_pem),
            std::slice::from_ref(&first.ca_pem)
        );
        let second = rotate(&first, &["svc.ns.svc".into()], &[], now).unwrap();
        let blocks = pem_blocks(&second.ca_pem);
        assert_eq!(blocks.len(), 2);
        assert_ne!(blocks[0], first.ca_pem);
        assert_eq!(blocks[1], first.ca_pem);
        let third = rotate(&second, &["svc.ns.svc".into()], &[], now).unwrap();
        let blocks3 = pem_blocks(&third.ca_pem);
        assert_eq!(blocks3.len(), 2);
        assert_eq!(blocks3[1], blocks[0], "only the previous CA is carried");
        // Both CAs verify: rustls accepts the bundle as roots.
        let mut roots = rustls::RootCertStore::empty();
        for b in &blocks {
            let der = rustls_pemfile_der(b);
            roots.add(der).unwrap();
        }
        assert_eq!(roots.len(), 2);
    }

    fn rustls_pemfile_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}
