//! `kubectl logstream tail`: watches the target's pods, runs one stream per
//! pod with a sidecar (or one stream from the namespace's aggregator), and
//! prints their lines merged by time through a short reorder window. Pods
//! that start later join; pods that go away are announced.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use logstream::aggregator::merge::Reorder;
use logstream::hub::now_ns;
use logstream::protocol::{Cursor, Subscribe};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::CliError;
use crate::render::{Line, Style, render};
use crate::stream::{Event, Source, stream_pod};
use crate::target::{Pods, has_sidecar};

pub struct TailOptions {
    pub namespace: String,
    pub pods: Pods,
    pub sub: Subscribe,
    pub style: Style,
    /// How long a line may wait for older lines of other pods.
    pub window: Duration,
    pub via_aggregator: bool,
    pub token: Option<String>,
}

/// How often `--via-aggregator` looks for a running aggregator pod while
/// there is none.
const AGGREGATOR_RETRY: Duration = Duration::from_secs(2);

/// Labels of the namespace's aggregator pods (as the operator sets them).
fn aggregator_selector() -> String {
    logstream_operator::desired::aggregator_selector()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The pods being followed, and what was said about them.
#[derive(Default)]
struct Followed {
    /// Pod name → (uid, its stream).
    streams: HashMap<String, (String, JoinHandle<()>)>,
    /// Pods of the target that are there now (names).
    present: BTreeSet<String>,
    /// Pod uids already reported as having no sidecar.
    told_no_sidecar: HashSet<String>,
}

impl Drop for Followed {
    fn drop(&mut self) {
        for (_, (_, task)) in self.streams.drain() {
            task.abort();
        }
    }
}

fn running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn no_sidecar_message(ns: &str, pod: &str) -> String {
    format!(
        "pod {ns}/{pod} has no logstream sidecar: is it selected by a LogStream (kubectl logstream status -n {ns})? \
         Pods created before their LogStream get it when restarted (restartPods: true)"
    )
}

/// Runs until `shutdown` resolves (then prints what is buffered) or an
/// error stops it.
pub async fn tail(
    client: kube::Client,
    opts: TailOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    let ns = opts.namespace.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let config = match &opts.pods {
        Pods::Named(name) => watcher::Config::default().fields(&format!("metadata.name={name}")),
        Pods::Selected(sel) => watcher::Config::default().labels(sel),
    };
    let mut watch = watcher(pods.clone(), config).boxed();
    let (tx, mut rx) = mpsc::channel::<Event>(1024);
    let mut f = Followed::default();
    let mut agg = AggregatorStream::default();
    let mut reorder: Reorder<Line> = Reorder::new(opts.window);
    let mut initial: Vec<Pod> = Vec::new();
    let mut listed = false;
    let stdout = std::io::stdout();
    tokio::pin!(shutdown);
    loop {
        let mut wake = reorder.next_deadline().map(|d| {
            let wait = d.saturating_sub(now_ns()).max(0);
            Duration::from_nanos(wait as u64)
        });
        if opts.via_aggregator && agg.pod.is_none() {
            // Look for an aggregator pod again in a while.
            wake = Some(wake.map_or(AGGREGATOR_RETRY, |w| w.min(AGGREGATOR_RETRY)));
        }
        tokio::select! {
            () = &mut shutdown => break,
            ev = watch.next() => match ev {
                None => return Err(CliError::Cluster("the pod watch ended".into())),
                Some(Err(e)) => watch_error(e)?,
                Some(Ok(watcher::Event::Init)) => initial.clear(),
                Some(Ok(watcher::Event::InitApply(p))) => initial.push(p),
                Some(Ok(watcher::Event::InitDone)) => {
                    let now: Vec<Pod> = std::mem::take(&mut initial);
                    let names: BTreeSet<String> = now.iter().map(|p| p.name_any()).collect();
                    for gone in f.present.difference(&names).cloned().collect::<Vec<_>>() {
                        f.present.remove(&gone);
                    }
                    if !listed {
                        listed = true;
                        first_listing(&opts, &now)?;
                    }
                    for p in now {
                        f.apply(&client, &opts, &tx, p);
                    }
                }
                Some(Ok(watcher::Event::Apply(p))) => f.apply(&client, &opts, &tx, p),
                Some(Ok(watcher::Event::Delete(p))) => {
                    let name = p.name_any();
                    if f.present.remove(&name) {
                        eprintln!("- pod {name} was deleted");
                    }
                }
            },
            ev = rx.recv() => match ev {
                None => break,
                Some(Event::Line(l)) => {
                    // From the aggregator: only the target's pods.
                    if !opts.via_aggregator || f.present.contains(&l.pod) {
                        reorder.push(l, now_ns());
                    }
                }
                Some(Event::Notice(n)) => eprintln!("{n}"),
                Some(Event::Failed(e)) => return Err(e),
                Some(Event::Gone { pod, cursor }) => {
                    f.streams.remove(&pod);
                    if opts.via_aggregator {
                        agg.lost(cursor);
                    } else {
                        eprintln!("- pod {pod} went away");
                    }
                }
            },
            () = async { if let Some(w) = wake { tokio::time::sleep(w).await } else { std::future::pending().await } } => {}
        }
        if opts.via_aggregator && listed {
            agg.ensure(&client, &opts, &tx, &mut f).await?;
        }
        if !print(&stdout, reorder.pop_ready(now_ns()), opts.style) {
            return Ok(()); // stdout closed (`| head`)
        }
    }
    print(&stdout, reorder.drain_all(), opts.style);
    Ok(())
}

/// What the first listing says: a named pod that is missing or has no
/// sidecar ends the command; an empty selection waits.
fn first_listing(opts: &TailOptions, now: &[Pod]) -> Result<(), CliError> {
    let ns = &opts.namespace;
    match &opts.pods {
        Pods::Named(name) => match now.first() {
            None => Err(CliError::NotFound(format!("pod {ns}/{name} not found"))),
            Some(p) if !has_sidecar(p) => Err(CliError::NotFound(no_sidecar_message(ns, name))),
            Some(_) => Ok(()),
        },
        Pods::Selected(sel) => {
            if now.is_empty() {
                eprintln!("no pod in {ns} matches {sel} yet; waiting for one");
            } else if !now.iter().any(has_sidecar) {
                eprintln!(
                    "none of the {} pods matching {sel} in {ns} has a logstream sidecar yet: is a LogStream selecting them (kubectl logstream status -n {ns})? waiting",
                    now.len()
                );
            }
            Ok(())
        }
    }
}

fn watch_error(e: watcher::Error) -> Result<(), CliError> {
    let api = match &e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => Some(k),
        _ => None,
    };
    if let Some(kube::Error::Api(s)) = api
        && s.is_forbidden()
    {
        return Err(CliError::Forbidden(format!(
            "you may not list and watch pods here: {}. Ask for a Role with get, list and watch on pods",
            s.message
        )));
    }
    eprintln!("pod watch: {e}; retrying");
    Ok(())
}

impl Followed {
    /// A pod was added or changed: start its stream once it runs with a
    /// sidecar; a new pod under an old name replaces the old stream.
    fn apply(
        &mut self,
        client: &kube::Client,
        opts: &TailOptions,
        tx: &mpsc::Sender<Event>,
        p: Pod,
    ) {
        let name = p.name_any();
        let uid = p.uid().unwrap_or_default();
        if p.metadata.deletion_timestamp.is_none() {
            self.present.insert(name.clone());
        }
        if !has_sidecar(&p) {
            if self.told_no_sidecar.insert(uid) {
                eprintln!("{}", no_sidecar_message(&opts.namespace, &name));
            }
            return;
        }
        if opts.via_aggregator || !running(&p) {
            return;
        }
        if let Some((old_uid, task)) = self.streams.get(&name) {
            if *old_uid == uid {
                return;
            }
            task.abort();
        }
        eprintln!("+ pod {name}");
        let src = Source {
            namespace: opts.namespace.clone(),
            pod: name.clone(),
            port: logstream_contract::STREAM_PORT,
            sub: opts.sub.clone(),
            token: opts.token.clone(),
            resume: None,
        };
        let task = tokio::spawn(stream_pod(client.clone(), src, tx.clone()));
        self.streams.insert(name, (uid, task));
    }
}

/// `--via-aggregator`: one stream from a running aggregator pod; when that
/// pod goes, another one continues from the same cursor (it means the same
/// on every replica).
#[derive(Default)]
struct AggregatorStream {
    pod: Option<String>,
    cursor: Option<Cursor>,
    said_missing: bool,
}

impl AggregatorStream {
    fn lost(&mut self, cursor: Cursor) {
        self.pod = None;
        if !cursor.0.is_empty() {
            self.cursor = Some(cursor);
        }
    }

    async fn ensure(
        &mut self,
        client: &kube::Client,
        opts: &TailOptions,
        tx: &mpsc::Sender<Event>,
        f: &mut Followed,
    ) -> Result<(), CliError> {
        if self.pod.is_some() {
            return Ok(());
        }
        let ns = &opts.namespace;
        let list = Api::<Pod>::namespaced(client.clone(), ns)
            .list(&kube::api::ListParams::default().labels(&aggregator_selector()))
            .await
            .map_err(|e| CliError::from_kube(e, &format!("list the aggregator pods of {ns}")))?;
        let Some(pod) = list.items.iter().find(|p| running(p)) else {
            if !self.said_missing {
                self.said_missing = true;
                eprintln!("no running aggregator in {ns} (a LogStream creates it); waiting");
            }
            // Checked again on the next event.
            return Ok(());
        };
        let name = pod.name_any();
        eprintln!("+ aggregator {name}");
        let mut sub = opts.sub.clone();
        if let Pods::Named(p) = &opts.pods {
            sub.pod = Some(regex_escape(p));
        }
        let src = Source {
            namespace: ns.clone(),
            pod: name.clone(),
            port: logstream_contract::STREAM_PORT,
            sub,
            token: opts.token.clone(),
            resume: self.cursor.take(),
        };
        let task = tokio::spawn(stream_pod(client.clone(), src, tx.clone()));
        f.streams.insert(name.clone(), (String::new(), task));
        self.pod = Some(name);
        Ok(())
    }
}

/// A pod name as a regular expression matching only itself.
fn regex_escape(name: &str) -> String {
    name.replace('.', "\\.")
}

/// Prints lines; `false` once stdout is closed.
fn print(stdout: &std::io::Stdout, lines: Vec<Line>, style: Style) -> bool {
    if lines.is_empty() {
        return true;
    }
    let mut w = std::io::BufWriter::new(stdout.lock());
    for l in &lines {
        if writeln!(w, "{}", render(l, style)).is_err() {
            return false;
        }
    }
    w.flush().is_ok()
}
