//! Asks injected sidecars what they cannot read, for the LogStream's status.
//!
//! A sidecar knows which matching paths it does not tail (a file the app
//! wrote as another user with mode 0640, an unreadable folder, a symlink);
//! the API server does not. The reconciler reads each injected, running
//! pod's `GET /readyz?format=json` with the namespace's pull token (which
//! every sidecar accepts) and turns the answers into the `FilesReadable`
//! condition ([`files_condition`], pure). The document's shape is pinned by
//! `sidecar/tests/fixtures/readyz-files.json`, which the sidecar's tests
//! render and this module's tests parse.

use std::time::Duration;

use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::Deserialize;

use crate::keys::{SIDECAR_NAME, STREAM_PORT};

/// Pods asked at once, and how long one may take.
const CONCURRENCY: usize = 8;
const TIMEOUT: Duration = Duration::from_secs(3);
/// Answers larger than this are not read (a sidecar lists at most 50 paths).
const MAX_BODY: usize = 256 << 10;
/// Paths named in the condition's message; the rest is counted.
const LISTED: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("pod has no IP yet")]
    NoAddress,
    #[error("{0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("answered {0}")]
    Status(u16),
    #[error("unreadable answer: {0}")]
    Body(String),
}

/// `GET /readyz?format=json` as a sidecar answers it (and an aggregator:
/// no files, its history on disk).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Readiness {
    pub status: String,
    #[serde(default)]
    pub files: FileReport,
    #[serde(default)]
    pub history: Option<HistoryReport>,
}

/// An aggregator's history on disk, as its `/readyz?format=json` says
/// (`sidecar/tests/fixtures/readyz-history.json`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct HistoryReport {
    pub writing: bool,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub max_bytes: u64,
    #[serde(default)]
    pub records_dropped: u64,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct FileReport {
    pub tailed: usize,
    #[serde(default)]
    pub not_tailed: Vec<NotTailed>,
    #[serde(default)]
    pub not_tailed_total: usize,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct NotTailed {
    pub path: String,
    pub reason: String,
    #[serde(default)]
    pub detail: String,
}

/// Running, with an address, and a ready container named `container`.
fn answers_as(p: &Pod, container: &str) -> bool {
    let Some(st) = p.status.as_ref() else {
        return false;
    };
    st.phase.as_deref() == Some("Running")
        && st.pod_ip.is_some()
        && st
            .init_container_statuses
            .iter()
            .chain(st.container_statuses.iter())
            .flatten()
            .any(|c| c.name == container && c.ready)
}

/// Pods worth asking: running, with an address and a ready sidecar.
pub fn probeable<'a>(pods: &[&'a Pod]) -> Vec<&'a Pod> {
    pods.iter()
        .copied()
        .filter(|p| answers_as(p, SIDECAR_NAME))
        .collect()
}

/// The namespace's aggregator pods worth asking: running, with an address
/// and a ready `aggregator` container.
pub fn aggregator_probeable(pods: &[Pod]) -> Vec<&Pod> {
    let selector = crate::desired::aggregator_selector();
    pods.iter()
        .filter(|p| {
            let labels = p.labels();
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|p| answers_as(p, "aggregator"))
        .collect()
}

/// `HistoryWritable` from the aggregators' answers: `None` when none
/// answered with a history (not started yet, or an older image).
pub fn history_condition(
    answers: &[(String, Result<Readiness, ProbeError>)],
) -> Option<(bool, &'static str, String)> {
    let mut failing = Vec::new();
    let mut writing = Vec::new();
    for (pod, answer) in answers {
        let Ok(Readiness {
            history: Some(h), ..
        }) = answer
        else {
            continue;
        };
        if h.writing {
            writing.push(format!(
                "{pod} ({} of {} MiB)",
                h.bytes >> 20,
                h.max_bytes >> 20
            ));
        } else {
            failing.push(format!(
                "{pod}: {}; {} records dropped",
                h.error.as_deref().unwrap_or("writing fails"),
                h.records_dropped
            ));
        }
    }
    if !failing.is_empty() {
        return Some((
            false,
            "WriteFailing",
            format!(
                "the history on disk is not written (live streaming goes on): {}",
                listed(&failing, "; ")
            ),
        ));
    }
    (!writing.is_empty()).then(|| {
        (
            true,
            "Writing",
            format!("history on disk written by {}", listed(&writing, ", ")),
        )
    })
}

/// Asks every pod, a few at a time; answers in the pods' order.
pub async fn ask_all(pods: &[&Pod], token: &str) -> Vec<(String, Result<Readiness, ProbeError>)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let token: std::sync::Arc<str> = token.into();
    let asks: Vec<_> = pods
        .iter()
        .map(|p| {
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            ask_pod(client.clone(), p.name_any(), ip, token.clone())
        })
        .collect();
    futures::stream::iter(asks)
        .buffered(CONCURRENCY)
        .collect()
        .await
}

async fn ask_pod(
    client: HttpClient,
    name: String,
    ip: Option<String>,
    token: std::sync::Arc<str>,
) -> (String, Result<Readiness, ProbeError>) {
    let answer = match ip {
        None => Err(ProbeError::NoAddress),
        Some(ip) => match tokio::time::timeout(TIMEOUT, ask(&client, &ip, &token)).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::Timeout(TIMEOUT)),
        },
    };
    (name, answer)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

async fn ask(client: &HttpClient, ip: &str, token: &str) -> Result<Readiness, ProbeError> {
    // An IPv6 pod address needs brackets in the authority.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let req = hyper::Request::get(format!("http://{host}:{STREAM_PORT}/readyz?format=json"))
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .map_err(|e| ProbeError::Request(e.to_string()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| ProbeError::Request(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ProbeError::Body(e.to_string()))?
        .to_bytes();
    // 503 while starting or draining still carries the report.
    if status != 200 && status != 503 {
        return Err(ProbeError::Status(status));
    }
    serde_json::from_slice(&body).map_err(|e| ProbeError::Body(e.to_string()))
}

/// The first [`LISTED`] items, joined.
fn listed(items: &[String], sep: &str) -> String {
    items
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(sep)
}

/// The `FilesReadable` condition from the answers: (ok, reason, message).
/// `None` when there was no one to ask.
pub fn files_condition(
    answers: &[(String, Result<Readiness, ProbeError>)],
) -> Option<(bool, &'static str, String)> {
    if answers.is_empty() {
        return None;
    }
    let mut problems = Vec::new();
    let mut total = 0;
    let mut unreachable = Vec::new();
    for (pod, answer) in answers {
        match answer {
            Ok(r) => {
                total += r.files.not_tailed_total.max(r.files.not_tailed.len());
                for n in &r.files.not_tailed {
                    problems.push(format!("{pod}: {}: {}: {}", n.path, n.reason, n.detail));
                }
            }
            Err(e) => unreachable.push(format!("{pod} ({e})")),
        }
    }
    let asked = answers.len() - unreachable.len();
    let not_asked = if unreachable.is_empty() {
        String::new()
    } else {
        format!("; not answering: {}", listed(&unreachable, ", "))
    };
    if total > 0 {
        let more = total.saturating_sub(problems.len().min(LISTED));
        let mut msg = format!(
            "{total} matching paths not tailed: {}",
            listed(&problems, "; ")
        );
        if more > 0 {
            msg.push_str(&format!(
                "; … and {more} more (see the pod's /readyz?verbose)"
            ));
        }
        msg.push_str(&not_asked);
        return Some((false, "PathsNotTailed", msg));
    }
    if asked == 0 {
        return Some((
            false,
            "SidecarsNotAnswering",
            format!("no sidecar answered{not_asked}"),
        ));
    }
    Some((
        true,
        "AllTailed",
        format!("every matching path is tailed in {asked} pods{not_asked}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Readiness {
        let text = include_str!("../../sidecar/tests/fixtures/readyz-files.json");
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_aggregators_history_becomes_the_condition() {
        let failing: Readiness = serde_json::from_str(include_str!(
            "../../sidecar/tests/fixtures/readyz-history.json"
        ))
        .unwrap();
        let h = failing.history.clone().unwrap();
        assert!(!h.writing);
        assert_eq!(h.records_dropped, 1200);
        let mut fine = failing.clone();
        fine.history = Some(HistoryReport {
            writing: true,
            bytes: 300 << 20,
            max_bytes: 2 << 30,
            ..HistoryReport::default()
        });
        assert_eq!(history_condition(&[]), None);
        assert_eq!(
            history_condition(&[("agg-1".into(), Ok(fixture()))]),
            None,
            "a sidecar's answer has no history"
        );
        let (ok, reason, msg) = history_condition(&[("agg-1".into(), Ok(fine.clone()))]).unwrap();
        assert_eq!((ok, reason), (true, "Writing"));
        assert_eq!(msg, "history on disk written by agg-1 (300 of 2048 MiB)");
        let (ok, reason, msg) = history_condition(&[
            ("agg-1".into(), Ok(fine)),
            ("agg-2".into(), Ok(failing)),
            ("agg-3".into(), Err(ProbeError::Timeout(TIMEOUT))),
        ])
        .unwrap();
        assert_eq!((ok, reason), (false, "WriteFailing"));
        assert!(msg.contains("agg-2: history segment"), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
        assert!(msg.contains("1200 records dropped"), "{msg}");
    }

    #[test]
    fn the_sidecars_document_parses() {
        let r = fixture();
        assert_eq!(r.status, "ready");
        assert_eq!(r.files.tailed, 1);
        assert_eq!(r.files.not_tailed_total, 1);
        assert_eq!(r.files.not_tailed[0].path, "app/secret.log");
        assert_eq!(r.files.not_tailed[0].reason, "open_failed");
    }

    #[test]
    fn the_condition_names_pod_path_and_reason() {
        let ok = Readiness {
            status: "ready".into(),
            files: FileReport {
                tailed: 2,
                ..Default::default()
            },
            history: None,
        };
        assert_eq!(files_condition(&[]), None);
        let (good, reason, msg) = files_condition(&[("web-1".into(), Ok(ok.clone()))]).unwrap();
        assert!(good);
        assert_eq!(reason, "AllTailed");
        assert_eq!(msg, "every matching path is tailed in 1 pods");

        let answers = vec![
            ("web-1".to_string(), Ok(ok)),
            ("web-2".to_string(), Ok(fixture())),
            ("web-3".to_string(), Err(ProbeError::Timeout(TIMEOUT))),
        ];
        let (good, reason, msg) = files_condition(&answers).unwrap();
        assert!(!good);
        assert_eq!(reason, "PathsNotTailed");
        assert!(
            msg.starts_with(
                "1 matching paths not tailed: web-2: app/secret.log: open_failed: Permission denied"
            ),
            "{msg}"
        );
        assert!(
            msg.ends_with("; not answering: web-3 (timed out after 3s)"),
            "{msg}"
        );

        let (good, reason, _) =
            files_condition(&[("web-3".into(), Err(ProbeError::NoAddress))]).unwrap();
        assert!(!good);
        assert_eq!(reason, "SidecarsNotAnswering");
    }

    #[test]
    fn many_paths_are_counted_not_listed() {
        let mut r = fixture();
        r.files.not_tailed = (0..50)
            .map(|i| NotTailed {
                path: format!("f{i}.log"),
                reason: "symlink".into(),
                detail: "symlinks are not followed".into(),
            })
            .collect();
        r.files.not_tailed_total = 300;
        let (_, _, msg) = files_condition(&[("p".into(), Ok(r))]).unwrap();
        assert!(
            msg.starts_with("300 matching paths not tailed: p: f0.log"),
            "{msg}"
        );
        assert!(msg.contains("… and 295 more"), "{msg}");
        assert!(msg.len() < 1024, "{}", msg.len());
    }
}
