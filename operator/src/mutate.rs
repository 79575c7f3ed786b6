//! Sidecar injection as a pure function: pod + LogStreams → mutated pod.
//! The admission webhook only converts between this and JSON patches.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::crd::{AccessMode, LogStream};
use crate::keys::{
    INJECTED_ANNOTATION, OPT_OUT_LABEL, PULL_SECRET, PULL_TOKEN_FILE, SIDECAR_NAME, STREAM_LABEL,
    STREAM_PORT, env, paths,
};

const LOG_VOLUME: &str = "logstream-logs";
const TOKEN_VOLUME: &str = "logstream-token";
const TOKEN_DIR: &str = paths::TOKEN_DIR;
const PULL_VOLUME: &str = "logstream-pull";
/// The sidecar's own emptyDir for its file positions: it outlives a
/// restart of the sidecar container, so a restarted sidecar continues its
/// sources instead of sending the end of every file again.
const STATE_VOLUME: &str = "logstream-state";
const STATE_DIR: &str = paths::STATE_DIR;

#[derive(Clone, Debug, Default)]
pub struct InjectConfig {
    pub image: String,
    /// The cluster runs native sidecars (init containers with
    /// `restartPolicy: Always`, Kubernetes 1.29+).
    pub native_sidecars: bool,
    /// `imagePullPolicy` of the sidecar (`None`: the cluster's default).
    pub pull_policy: Option<String>,
    pub run_as: crate::dataplane::RunAs,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MutateError {
    #[error(
        "LogStream {stream}: container {container:?} not found in the pod (containers: {available})"
    )]
    NoContainer {
        stream: String,
        container: String,
        available: String,
    },
    #[error("LogStream {stream}: the pod has no containers")]
    NoContainers { stream: String },
    #[error(
        "LogStream {stream}: the pod already has a volume named {LOG_VOLUME:?} that is not mounted at {mount_path}"
    )]
    VolumeNameTaken { stream: String, mount_path: String },
    #[error(
        "LogStream {stream}: the pod already has a container named {SIDECAR_NAME:?} that logstream did not inject"
    )]
    NameTaken { stream: String },
    #[error("LogStream {stream}: emptyDirSizeLimit {value:?} is not a quantity (e.g. 500Mi, 2Gi)")]
    SizeLimit { stream: String, value: String },
    #[error(
        "LogStream {stream}: container {container:?} mounts {mount_path} with a subPathExpr, which the sidecar cannot expand the same way"
    )]
    SubPath {
        stream: String,
        container: String,
        mount_path: String,
    },
}

/// The app's volume holding `mount_path` and the sub-path the sidecar mounts
/// of it: the mount at exactly that path, else the deepest mount of a
/// parent folder (the logs are a sub-folder of that volume). `None`: no
/// mount holds it; `Err`: it is under a `subPathExpr`, whose variables are
/// the app container's.
#[allow(clippy::type_complexity)]
pub fn log_mount(
    mounts: &[VolumeMount],
    mount_path: &str,
) -> Option<Result<(String, Option<String>), ()>> {
    let below = |m: &VolumeMount| -> Option<String> {
        let at = m.mount_path.trim_end_matches('/');
        if at == mount_path {
            return Some(String::new());
        }
        let rel = mount_path.strip_prefix(at)?.strip_prefix('/')?;
        Some(rel.to_string())
    };
    let (m, rel) = mounts
        .iter()
        .filter_map(|m| below(m).map(|rel| (m, rel)))
        .min_by_key(|(_, rel)| rel.len())?;
    if m.sub_path_expr.as_deref().is_some_and(|e| !e.is_empty()) {
        return Some(Err(()));
    }
    let sub = [m.sub_path.as_deref().unwrap_or(""), rel.as_str()]
        .iter()
        .map(|p| p.trim_matches('/'))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    Some(Ok((m.name.clone(), (!sub.is_empty()).then_some(sub))))
}

/// A Kubernetes resource quantity (`500Mi`, `2G`, `1.5Gi`, `1e9`, `1000`),
/// non-negative, as the API server parses it.
pub fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix('+').unwrap_or(s);
    let digits = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    let number_ok = (!whole.is_empty() || frac.is_some_and(|f| !f.is_empty()))
        && frac.is_none_or(|f| !f.contains('.'));
    let suffix_ok = match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        e => e
            .strip_prefix(['e', 'E'])
            .map(|x| x.strip_prefix(['+', '-']).unwrap_or(x))
            .is_some_and(|x| !x.is_empty() && x.chars().all(|c| c.is_ascii_digit())),
    };
    number_ok && suffix_ok
}

/// Why the sidecar cannot be added to this pod as it is (what the webhook
/// would answer now), `None` when it could be or nothing selects it.
pub fn injection_problem(pod: &Pod, streams: &[LogStream]) -> Option<MutateError> {
    let cfg = InjectConfig {
        native_sidecars: true,
        ..InjectConfig::default()
    };
    mutate(pod, streams, &cfg).err()
}

/// The sidecar's drain budget: the pod's `terminationGracePeriodSeconds`
/// (default 30) less one second. The kubelet stops a native sidecar only
/// after the app has exited, with what is left of that period (at least
/// 2 s), so the sidecar never needs more; a fixed shorter budget would cut
/// a drain the kubelet would have allowed.
pub fn drain_budget(spec: &k8s_openapi::api::core::v1::PodSpec) -> String {
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    format!("{}s", (grace - 1).max(1))
}

/// True when `ls` selects pods with these labels. An empty or invalid
/// selector selects nothing (the schema refuses both anyway).
pub fn selects(ls: &LogStream, labels: &BTreeMap<String, String>) -> bool {
    let sel = &ls.spec.selector;
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty());
    if empty {
        return false;
    }
    Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(labels))
}

/// The first LogStream (by name) that selects the pod.
pub fn choose<'a>(pod: &Pod, streams: &'a [LogStream]) -> Option<&'a LogStream> {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut matching: Vec<&LogStream> = streams.iter().filter(|ls| selects(ls, &labels)).collect();
    matching.sort_by_key(|ls| ls.name_any());
    matching.into_iter().next()
}

/// Opted out of injection (see [`OPT_OUT_LABEL`]): such a pod never gets the
/// sidecar, so it is never waiting for one either.
pub fn opted_out(pod: &Pod) -> bool {
    pod.labels()
        .get(OPT_OUT_LABEL)
        .is_some_and(|v| v == "false")
}

/// Already carries a sidecar from us?
pub fn is_injected(pod: &Pod) -> bool {
    pod.annotations().contains_key(INJECTED_ANNOTATION)
}

/// Returns the pod with the sidecar injected, `None` when nothing applies
/// (no LogStream selects it, or it is already injected).
pub fn mutate(
    pod: &Pod,
    streams: &[LogStream],
    cfg: &InjectConfig,
) -> Result<Option<Pod>, MutateError> {
    // The webhook's objectSelector already skips opted-out pods; checking
    // here too keeps this function the one definition of who is injected.
    if is_injected(pod) || opted_out(pod) {
        return Ok(None);
    }
    let Some(ls) = choose(pod, streams) else {
        return Ok(None);
    };
    let stream = ls.name_any();
    let mesh = crate::mesh::of_pod(pod);
    let service = service_name(&pod.metadata);
    let mut pod = pod.clone();
    let Some(spec) = pod.spec.as_mut() else {
        return Err(MutateError::NoContainers { stream });
    };
    if spec.containers.is_empty() {
        return Err(MutateError::NoContainers { stream });
    }
    if spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME)
    {
        return Err(MutateError::NameTaken { stream });
    }
    let mount_path = ls.spec.mount_path.trim_end_matches('/').to_string();
    let app_idx = app_container(spec, ls, &stream)?;
    let group = sidecar_group(
        ls.spec.sidecar.run_as_group,
        &spec.containers[app_idx],
        spec.security_context.as_ref(),
        cfg.run_as.group,
    );
    let app_name = spec.containers[app_idx].name.clone();
    let (volume, sub_path) = log_volume(spec, app_idx, ls, &stream, &mount_path)?;
    let mut mounts = vec![VolumeMount {
        name: volume,
        mount_path: mount_path.clone(),
        sub_path,
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut env = sidecar_env(ls, spec, &app_name, &mount_path, mesh);
    if !service.is_empty() {
        env.push(value_env(env::SERVICE_NAME, &service));
    }
    add_state_volume(spec, &mut mounts, &mut env);
    if let Some(k) = &ls.spec.parse.level_field {
        env.push(value_env(env::LEVEL_KEY, k));
    }
    add_access(spec, ls, &mut mounts, &mut env);
    let mut sidecar = sidecar_container(ls, cfg, env, mounts, group);
    if cfg.native_sidecars {
        // Starts before the app and stops after it, so the last lines are read.
        sidecar.restart_policy = Some("Always".into());
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, sidecar);
    } else {
        spec.containers.push(sidecar);
    }
    pod.labels_mut()
        .insert(STREAM_LABEL.into(), crate::names::label_value(&stream));
    pod.annotations_mut()
        .insert(INJECTED_ANNOTATION.into(), stream);
    Ok(Some(pod))
}

/// The index of the container whose files are streamed: the LogStream's
/// `container`, else the first.
fn app_container(spec: &PodSpec, ls: &LogStream, stream: &str) -> Result<usize, MutateError> {
    let Some(name) = &ls.spec.container else {
        return Ok(0);
    };
    spec.containers
        .iter()
        .position(|c| &c.name == name)
        .ok_or_else(|| MutateError::NoContainer {
            stream: stream.to_string(),
            container: name.clone(),
            available: spec
                .containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The volume (and sub-path) holding the app's logs at `mount_path`: the
/// one the app already mounts there or at a parent folder (a new emptyDir
/// would shadow it), else a new emptyDir mounted into the app.
fn log_volume(
    spec: &mut PodSpec,
    app_idx: usize,
    ls: &LogStream,
    stream: &str,
    mount_path: &str,
) -> Result<(String, Option<String>), MutateError> {
    let app = &spec.containers[app_idx];
    match log_mount(app.volume_mounts.as_deref().unwrap_or_default(), mount_path) {
        Some(Ok(found)) => return Ok(found),
        Some(Err(())) => {
            return Err(MutateError::SubPath {
                stream: stream.to_string(),
                container: app.name.clone(),
                mount_path: mount_path.to_string(),
            });
        }
        None => {}
    }
    if spec.volumes.iter().flatten().any(|v| v.name == LOG_VOLUME) {
        return Err(MutateError::VolumeNameTaken {
            stream: stream.to_string(),
            mount_path: mount_path.to_string(),
        });
    }
    // The API server would reject the whole pod for a bad quantity: refuse
    // the sidecar instead, never the pod.
    if let Some(q) = &ls.spec.empty_dir_size_limit
        && !is_quantity(&q.0)
    {
        return Err(MutateError::SizeLimit {
            stream: stream.to_string(),
            value: q.0.clone(),
        });
    }
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: LOG_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: ls.spec.empty_dir_size_limit.clone(),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    spec.containers[app_idx]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: LOG_VOLUME.into(),
            mount_path: mount_path.to_string(),
            ..VolumeMount::default()
        });
    Ok((LOG_VOLUME.to_string(), None))
}

/// The sidecar's environment from the LogStream (the contract's names).
/// Pod labels that name its service, in the order Loki tries them
/// (`app.kubernetes.io/name` is what Loki sees as `app_kubernetes_io_name`).
const SERVICE_LABELS: [&str; 6] = [
    "service",
    "app",
    "application",
    "app_name",
    "name",
    "app.kubernetes.io/name",
];

/// The service a pod belongs to, for `service_name` in the Loki API (what
/// Grafana's Logs Drilldown lists): the first of [`SERVICE_LABELS`] it has,
/// else its controller (a ReplicaSet's Deployment: the name without the
/// `pod-template-hash`), else its `generateName`; empty for a bare pod
/// without such labels (the sidecar then uses the container's name, as
/// Loki would).
pub fn service_name(meta: &ObjectMeta) -> String {
    let labels = meta.labels.as_ref();
    if let Some(v) = SERVICE_LABELS
        .iter()
        .find_map(|k| labels.and_then(|l| l.get(*k)).filter(|v| !v.is_empty()))
    {
        return v.clone();
    }
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let Some(o) = owner {
        let hash = labels.and_then(|l| l.get("pod-template-hash"));
        return match (o.kind.as_str(), hash) {
            ("ReplicaSet", Some(h)) => o
                .name
                .strip_suffix(&format!("-{h}"))
                .unwrap_or(&o.name)
                .to_string(),
            _ => o.name.clone(),
        };
    }
    meta.generate_name
        .as_deref()
        .map(|g| g.trim_end_matches('-').to_string())
        .unwrap_or_default()
}

fn sidecar_env(
    ls: &LogStream,
    spec: &PodSpec,
    app_name: &str,
    mount_path: &str,
    mesh: Option<&str>,
) -> Vec<EnvVar> {
    let mut env = vec![
        field_env(env::POD_NAMESPACE, "metadata.namespace"),
        field_env(env::POD_NAME, "metadata.name"),
        value_env(env::CONTAINER, app_name),
        value_env(env::DIR, mount_path),
        value_env(env::LISTEN, &format!("0.0.0.0:{STREAM_PORT}")),
        value_env(
            env::GLOBS,
            &ls.spec
                .paths
                .iter()
                .map(|p| p.0.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        value_env(env::PARSE, ls.spec.parse.format.as_str()),
        value_env(env::BUFFER_LINES, &ls.spec.buffer.lines.to_string()),
        value_env(env::BUFFER_BYTES, &ls.spec.buffer.bytes.to_string()),
        value_env(env::LOG_FORMAT, "json"),
        value_env(env::GRACE, &drain_budget(spec)),
    ];
    if !crate::mesh::sidecar_trusts_loopback(ls, mesh) {
        env.push(value_env(env::NO_LOOPBACK_EXEMPTION, "true"));
    }
    env
}

/// The sidecar's own emptyDir for file positions. A name the pod already
/// uses costs the positions, not the sidecar.
fn add_state_volume(spec: &mut PodSpec, mounts: &mut Vec<VolumeMount>, env: &mut Vec<EnvVar>) {
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == STATE_VOLUME)
    {
        return;
    }
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: STATE_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            // A few hundred bytes per file.
            size_limit: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "8Mi".into(),
            )),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: STATE_VOLUME.into(),
        mount_path: STATE_DIR.into(),
        ..VolumeMount::default()
    });
    env.push(value_env(env::STATE_DIR, STATE_DIR));
}

/// Who may read the sidecar: the aggregator with the namespace's pull token;
/// in token mode the users' token too; in kubernetes mode whoever may `get
/// pods/log`. Loopback (port-forward) needs none of them.
fn add_access(
    spec: &mut PodSpec,
    ls: &LogStream,
    mounts: &mut Vec<VolumeMount>,
    env: &mut Vec<EnvVar>,
) {
    let mut token_files = vec![PULL_TOKEN_FILE.to_string()];
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(secret_volume(PULL_VOLUME, PULL_SECRET));
    mounts.push(VolumeMount {
        name: PULL_VOLUME.into(),
        mount_path: PULL_TOKEN_FILE.trim_end_matches("/token").into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    if let (AccessMode::Token, Some(secret)) = (ls.spec.access.mode, &ls.spec.access.token_secret) {
        spec.volumes
            .get_or_insert_with(Vec::new)
            .push(secret_volume(TOKEN_VOLUME, &secret.name));
        mounts.push(VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        token_files.push(format!("{TOKEN_DIR}/{}", secret.key));
    }
    env.push(value_env(env::TOKEN_FILE, &token_files.join(",")));
    if ls.spec.access.mode == AccessMode::Kubernetes {
        // Checked with the pod's ServiceAccount, which the operator binds
        // to system:auth-delegator.
        env.push(value_env(env::KUBERNETES_AUTH, "true"));
    }
}

/// The sidecar container itself: hardened, probed, with its environment and
/// mounts.
fn sidecar_container(
    ls: &LogStream,
    cfg: &InjectConfig,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
    group: Option<i64>,
) -> Container {
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(
            ls.spec
                .sidecar
                .image
                .clone()
                .unwrap_or_else(|| cfg.image.clone()),
        ),
        args: Some(vec!["sidecar".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("logstream".into()),
            container_port: STREAM_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/readyz")),
        liveness_probe: Some(http_probe("/healthz")),
        resources: Some(
            ls.spec
                .sidecar
                .resources
                .clone()
                .unwrap_or_else(default_resources),
        ),
        image_pull_policy: cfg.pull_policy.clone(),
        security_context: Some(SecurityContext {
            run_as_group: group,
            ..restricted_security_context(cfg.run_as)
        }),
        ..Container::default()
    }
}

/// The sidecar's primary group: the LogStream's `sidecar.runAsGroup`, else
/// the app container's `runAsGroup`, else the pod's, else `fallback` (the
/// operator's `--run-as-group`, 65532 by default; `None` leaves it to the
/// platform).
/// The app's group lets the sidecar read what the app writes with mode 0640
/// as another user (the common case); group 0 is never inherited, only
/// granted by the LogStream, since it opens every root-group file.
pub fn sidecar_group(
    explicit: Option<i64>,
    app: &Container,
    pod: Option<&k8s_openapi::api::core::v1::PodSecurityContext>,
    fallback: Option<i64>,
) -> Option<i64> {
    explicit
        .or_else(|| {
            app.security_context
                .as_ref()
                .and_then(|c| c.run_as_group)
                .or_else(|| pod.and_then(|p| p.run_as_group))
                .filter(|g| *g != 0)
        })
        .or(fallback)
}

/// Non-root, read-only root filesystem, no capabilities, default seccomp;
/// user and group as configured (unset: the platform assigns them).
pub fn restricted_security_context(run_as: crate::dataplane::RunAs) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: run_as.user,
        run_as_group: run_as.group,
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

fn default_resources() -> ResourceRequirements {
    crate::dataplane::resources("10m", "32Mi", "128Mi")
}

pub fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A probe of the streamer's port (named `logstream`) at `path`, every 5 s.
pub fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("logstream".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

pub fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// A variable from the pod's own fields (downward API).
pub fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

#[cfg(test)]
mod tests;
