//! One pod's stream: a port-forward to its sidecar through the Kubernetes
//! API (no local port, no `kubectl` process), the protocol's WebSocket over
//! it, and reconnection with the resume cursor, so a sidecar that restarts
//! or a forward that breaks repeats and loses nothing still in the
//! sidecar's history.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use logstream::client::{ClientOptions, Connection};
use logstream::protocol::{Cursor, ServerMessage, Subscribe};
use tokio::sync::mpsc;

use crate::error::CliError;
use crate::render::Line;

/// What a pod's stream reports to the printer.
#[derive(Debug)]
pub enum Event {
    Line(Line),
    /// Said on stderr, the stream goes on.
    Notice(String),
    /// The pod is gone; its position, for another replica (aggregator).
    Gone {
        pod: String,
        cursor: Cursor,
    },
    /// The stream cannot go on, nor can any other (RBAC, a token).
    Failed(CliError),
}

/// Where one stream reads from.
#[derive(Clone, Debug)]
pub struct Source {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
    pub sub: Subscribe,
    pub token: Option<String>,
    /// Start here instead of at `sub`'s `tail`/`since`.
    pub resume: Option<Cursor>,
}

/// Streams `src` into `out` until the pod is gone, the printer stops
/// listening, or access is refused.
pub async fn stream_pod(client: kube::Client, src: Source, out: mpsc::Sender<Event>) {
    let pods: Api<Pod> = Api::namespaced(client, &src.namespace);
    let name = src.pod.clone();
    let opts = ClientOptions {
        // Only the Host header: the bytes go through the port-forward, and
        // arrive at the sidecar from loopback, as `kubectl port-forward`'s
        // do (a loopback Host keeps its DNS-rebinding guard satisfied).
        base: format!("ws://localhost:{}", src.port),
        sub: src.sub.clone(),
        token: src.token.clone(),
    };
    // Records up to here were printed; a reconnect resumes after them.
    let mut seen = src.resume.clone().unwrap_or_default();
    let mut resumed = src.resume.is_some();
    let mut backoff = Duration::from_millis(200);
    let mut announced_error = false;
    loop {
        let end = match connect(&pods, &src, &opts, resumed.then_some(&seen)).await {
            Ok(mut conn) => {
                backoff = Duration::from_millis(200);
                announced_error = false;
                match read(&mut conn, &mut seen, &out).await {
                    Ok(ended) => ended,
                    Err(()) => return, // the printer is gone
                }
            }
            Err(Stop::Gone) => Ended::Gone,
            Err(Stop::Fatal(e)) => {
                let _ = out.send(Event::Failed(e)).await;
                return;
            }
            Err(Stop::Retry(why)) => {
                // Said once per outage, not once per attempt.
                if !announced_error {
                    announced_error = true;
                    let notice = format!("pod {name}: {why}; retrying");
                    if out.send(Event::Notice(notice)).await.is_err() {
                        return;
                    }
                }
                Ended::Retry
            }
        };
        resumed = resumed || !seen.0.is_empty();
        if let Ended::Reconnect(after) = end {
            tokio::time::sleep(after).await;
            continue;
        }
        if matches!(end, Ended::Gone) || pod_is_gone(&pods, &name).await {
            let _ = out
                .send(Event::Gone {
                    pod: name,
                    cursor: seen,
                })
                .await;
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

enum Ended {
    /// The connection ended; try again if the pod is still there.
    Retry,
    /// The server asked for a reconnect after this long.
    Reconnect(Duration),
    Gone,
}

enum Stop {
    Gone,
    Fatal(CliError),
    Retry(String),
}

async fn pod_is_gone(pods: &Api<Pod>, name: &str) -> bool {
    match pods.get_opt(name).await {
        Ok(None) => true,
        Ok(Some(p)) => p.status.and_then(|s| s.phase).is_some_and(|phase| {
            // A finished pod's sidecar does not come back.
            phase == "Succeeded" || phase == "Failed"
        }),
        Err(_) => false,
    }
}

async fn connect(
    pods: &Api<Pod>,
    src: &Source,
    opts: &ClientOptions,
    resume: Option<&Cursor>,
) -> Result<Connection, Stop> {
    let name = &src.pod;
    let mut pf = match pods.portforward(name, &[src.port]).await {
        Ok(pf) => pf,
        Err(kube::Error::Api(s)) if s.is_not_found() => return Err(Stop::Gone),
        Err(kube::Error::Api(s)) if s.is_forbidden() => {
            return Err(Stop::Fatal(CliError::Forbidden(format!(
                "you may not port-forward to pod {}/{name}: {}. Streaming needs `create` on \
                 pods/portforward in that namespace (kubectl auth can-i create pods/portforward -n {})",
                src.namespace, s.message, src.namespace
            ))));
        }
        Err(e) => return Err(Stop::Retry(format!("port-forward: {e}"))),
    };
    let Some(io) = pf.take_stream(src.port) else {
        return Err(Stop::Retry("port-forward gave no stream".into()));
    };
    let forward_error = pf.take_error(src.port);
    let handshake = Connection::over(Box::new(io), opts, resume);
    let conn = match forward_error {
        Some(err) => tokio::select! {
            c = handshake => c,
            Some(e) = err => return Err(Stop::Retry(format!(
                "the sidecar is not reachable on port {} ({e})", src.port
            ))),
        },
        None => handshake.await,
    };
    match conn {
        Ok(c) => {
            // The forward ends when the connection does; dropping its
            // handle does not stop it.
            drop(pf);
            Ok(c)
        }
        Err(e) if e.refused_with() == Some(401) => Err(Stop::Fatal(CliError::Forbidden(format!(
            "the sidecar of pod {}/{name} asks for a token (a service mesh, or its \
             LogStream's access settings): pass --token or set LOGSTREAM_TOKEN",
            src.namespace
        )))),
        Err(e) => Err(Stop::Retry(format!("no answer from its sidecar: {e}"))),
    }
}

/// Forwards one connection's records; `Err` once the printer is gone.
async fn read(
    conn: &mut Connection,
    seen: &mut Cursor,
    out: &mpsc::Sender<Event>,
) -> Result<Ended, ()> {
    loop {
        let msg = match conn.next().await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => return Ok(Ended::Retry),
        };
        let event = match msg {
            ServerMessage::Records { records, .. } => {
                for r in records {
                    if seen.covers(r.sid, r.seq) {
                        continue; // printed before a reconnect
                    }
                    seen.advance(r.sid, r.seq);
                    out.send(Event::Line(Line::from_record(r)))
                        .await
                        .map_err(|_| ())?;
                }
                continue;
            }
            ServerMessage::Gap { missed, reason, .. } => {
                Event::Notice(format!("{missed} lines skipped ({reason:?})"))
            }
            ServerMessage::Error { message, .. } => Event::Notice(message),
            ServerMessage::Reconnect { after_ms, .. } => {
                return Ok(Ended::Reconnect(Duration::from_millis(after_ms)));
            }
            _ => continue,
        };
        out.send(event).await.map_err(|_| ())?;
    }
}
