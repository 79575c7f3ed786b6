//! The streaming protocols the load tools speak, so one measurement runs
//! against logstream and against the baselines of `bench/baselines/` alike:
//!
//! | target | server | client side |
//! |---|---|---|
//! | `ours-ws` | `logstream serve` | `/ws`: `hello`, then `records` frames (raw: lines joined by `\n`) |
//! | `ours-sse` | `logstream serve` | `/sse`: `event: hello`, then one `data:` per record |
//! | `ws` | `node/ws-server.js` | one WebSocket text message per line |
//! | `socketio` | `node/socketio-server.js` | engine.io v4 over WebSocket: open `0{…}`, `40` connect, `42["line","…"]` events, ping `2` answered by `3` |
//! | `tailf` | `tailf/tailf-server.js` | chunked HTTP text, one line per log line |
//!
//! This module owns starting the right server for a target, opening a client
//! that completed its handshake, and turning what arrives into log lines.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tokio_tungstenite::tungstenite::Message;

use crate::{Server, Ws, small_ws_config, ws_connect, ws_connect_deflate};

/// A server design under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// logstream over WebSocket.
    OursWs,
    /// logstream over Server-Sent Events.
    OursSse,
    /// logstream's Loki tail (`/loki/api/v1/tail`, what Grafana's live tail
    /// opens); not in [`Target::ALL`]: no baseline speaks it.
    OursTail,
    /// chokidar + `ws` (bench/baselines/node/ws-server.js).
    Ws,
    /// chokidar + Socket.IO (bench/baselines/node/socketio-server.js).
    Socketio,
    /// `tail -F` per client over chunked HTTP (bench/baselines/tailf/tailf-server.js).
    Tailf,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::OursWs,
        Target::OursSse,
        Target::Ws,
        Target::Socketio,
        Target::Tailf,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::OursWs => "ours-ws",
            Target::OursSse => "ours-sse",
            Target::OursTail => "ours-tail",
            Target::Ws => "ws",
            Target::Socketio => "socketio",
            Target::Tailf => "tailf",
        }
    }

    pub fn is_ours(self) -> bool {
        matches!(self, Target::OursWs | Target::OursSse | Target::OursTail)
    }

    /// The `transport` label of `logstream_clients` for our targets.
    pub fn transport_label(self) -> Option<&'static str> {
        match self {
            Target::OursWs | Target::OursTail => Some("ws"),
            Target::OursSse => Some("sse"),
            _ => None,
        }
    }

    /// Path and query of the stream. `file` restricts it to one file where
    /// the server can (ours, tailf); the Node baselines broadcast every file.
    /// `json` asks ours for JSON records instead of raw lines.
    pub fn stream_path(self, file: Option<&str>, json: bool) -> String {
        let format = if json { "json" } else { "raw" };
        let file_q = |sep: char| file.map_or(String::new(), |f| format!("{sep}file={f}"));
        match self {
            Target::OursWs => format!("/ws?format={format}{}", file_q('&')),
            Target::OursSse => format!("/sse?format={format}{}", file_q('&')),
            // `{file=~".+"}` (or the file), newest 10 lines first.
            Target::OursTail => format!(
                "/loki/api/v1/tail?limit=10&query=%7Bfile%3D~%22{}%22%7D",
                file.unwrap_or(".%2B")
            ),
            Target::Ws => "/".into(),
            Target::Socketio => "/socket.io/?EIO=4&transport=websocket".into(),
            Target::Tailf => format!("/{}", file_q('?')),
        }
    }
}

/// `bench/baselines` (override with `LS_BASELINES`).
pub fn baselines_dir() -> PathBuf {
    std::env::var_os("LS_BASELINES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("baselines"))
}

/// How to start the server of a target.
pub struct ServerSpec<'a> {
    pub target: Target,
    /// The folder the server follows.
    pub dir: &'a Path,
    /// A whole command instead of the default; `{dir}` is replaced by the
    /// folder. It must listen on `127.0.0.1:0` (or a fixed loopback port),
    /// print `listening on http://ADDR` and answer `GET /readyz`.
    pub server_cmd: Option<&'a str>,
    /// `logstream` binary for our targets (default: next to the tool).
    pub server_bin: Option<&'a Path>,
    /// Extra arguments of `logstream serve`, or of the `ws` baseline
    /// (`--deflate`); ignored by the other baselines.
    pub extra: &'a [String],
    /// Pin the server to this CPU with `taskset -c`.
    pub cpu: Option<usize>,
    pub stderr_to: &'a Path,
}

/// Starts the server of `spec.target` and waits until it is ready.
pub fn spawn_server(spec: &ServerSpec) -> Result<Server> {
    let dir = spec.dir.display().to_string();
    let mut words: Vec<String> = match spec.server_cmd {
        Some(cmd) => cmd
            .split_whitespace()
            .map(|w| w.replace("{dir}", &dir))
            .collect(),
        None => {
            let listen = ["--listen".to_string(), "127.0.0.1:0".to_string()];
            let script = |rel: &str| -> Result<Vec<String>> {
                let p = baselines_dir().join(rel);
                if !p.exists() {
                    bail!("{} not found", p.display());
                }
                if rel.starts_with("node/") && !baselines_dir().join("node/node_modules").exists() {
                    bail!("baseline dependencies missing: run bench/baselines/install.sh");
                }
                let mut v = vec![
                    "node".into(),
                    p.display().to_string(),
                    "--dir".into(),
                    dir.clone(),
                ];
                v.extend(listen.iter().cloned());
                Ok(v)
            };
            match spec.target {
                Target::OursWs | Target::OursSse | Target::OursTail => {
                    let bin = match spec.server_bin {
                        Some(b) => b.to_path_buf(),
                        None => crate::default_server_bin()?,
                    };
                    let mut v = vec![
                        bin.display().to_string(),
                        "serve".into(),
                        "--dir".into(),
                        dir.clone(),
                    ];
                    v.extend(listen.iter().cloned());
                    v.extend(crate::NO_STREAM_RATE_LIMITS.iter().map(|s| s.to_string()));
                    v.extend(spec.extra.iter().cloned());
                    v
                }
                Target::Ws => {
                    let mut v = script("node/ws-server.js")?;
                    v.extend(spec.extra.iter().cloned());
                    v
                }
                Target::Socketio => script("node/socketio-server.js")?,
                Target::Tailf => script("tailf/tailf-server.js")?,
            }
        }
    };
    if let Some(cpu) = spec.cpu {
        words.splice(0..0, ["taskset".to_string(), "-c".into(), cpu.to_string()]);
    }
    let (program, args) = words
        .split_first()
        .ok_or_else(|| anyhow!("empty --server-cmd"))?;
    Server::spawn_args(Path::new(program), args, spec.stderr_to)
}

enum Io {
    Ws(Box<Ws>),
    Http {
        body: Incoming,
        // Kept so the connection is not torn down while the body streams.
        _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    },
}

/// One client connection that completed its protocol's handshake.
pub struct Client {
    pub target: Target,
    io: Io,
    json: bool,
    /// Bytes after the last newline (HTTP bodies).
    rest: Vec<u8>,
    /// The current SSE event name, when not the default `message`.
    sse_event: Option<String>,
    hello: bool,
    /// `gap` notices received (ours).
    pub gaps: u64,
}

/// What a received line carries besides its text.
pub struct LineMeta<'a> {
    /// The record's `ts` (when the tailer cut the line), JSON format only.
    pub ts: Option<&'a str>,
}

impl Client {
    /// Connects from `src` and completes the handshake: ours `hello`,
    /// Socket.IO open + connect, HTTP response head. `small` uses small
    /// buffers (for many idle connections).
    pub async fn connect(
        target: Target,
        addr: SocketAddr,
        src: Option<IpAddr>,
        path: &str,
        small: bool,
    ) -> Result<Client> {
        Client::connect_with(target, addr, src, path, small, false)
            .await
            .map(|(c, _)| c)
    }

    /// [`Client::connect`], offering permessage-deflate on a WebSocket when
    /// `deflate`; also returns the server's answer to the offer.
    pub async fn connect_with(
        target: Target,
        addr: SocketAddr,
        src: Option<IpAddr>,
        path: &str,
        small: bool,
        deflate: bool,
    ) -> Result<(Client, Option<String>)> {
        let json = path.contains("format=json");
        let mut answer = None;
        let io = match target {
            Target::OursWs | Target::OursTail | Target::Ws | Target::Socketio => {
                let cfg = small.then(small_ws_config);
                if deflate {
                    let (ws, a) = ws_connect_deflate(addr, src, path, cfg).await?;
                    answer = a;
                    Io::Ws(Box::new(ws))
                } else {
                    Io::Ws(Box::new(ws_connect(addr, src, path, cfg).await?))
                }
            }
            Target::OursSse | Target::Tailf => http_get_stream(addr, src, path, small).await?,
        };
        let mut c = Client {
            target,
            io,
            json,
            rest: Vec::new(),
            sse_event: None,
            hello: false,
            gaps: 0,
        };
        tokio::time::timeout(Duration::from_secs(15), c.handshake())
            .await
            .map_err(|_| anyhow!("{}: no handshake within 15 s", target.name()))??;
        Ok((c, answer))
    }

    async fn handshake(&mut self) -> Result<()> {
        match (self.target, &mut self.io) {
            (Target::OursWs, Io::Ws(ws)) => match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str().contains(r#""type":"hello""#) => Ok(()),
                other => bail!("expected hello, got {other:?}"),
            },
            (Target::Socketio, Io::Ws(ws)) => {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str().starts_with('0') => {}
                    other => bail!("expected the engine.io open packet, got {other:?}"),
                }
                ws.send(Message::text("40")).await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.as_str().starts_with("40") => return Ok(()),
                        Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                            ws.send(Message::text("3")).await?;
                        }
                        Some(Ok(Message::Text(t))) if t.as_str().starts_with("44") => {
                            bail!("Socket.IO connect refused: {t}")
                        }
                        Some(Ok(_)) => {}
                        other => bail!("expected the Socket.IO connect ack, got {other:?}"),
                    }
                }
            }
            (Target::OursSse, _) => {
                while !self.hello {
                    if !self.next(&mut |_, _| {}).await? {
                        bail!("SSE stream ended before hello");
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Reads one network message (frame or body chunk) and calls `f` for
    /// every log line it completes. Answers pings. `false` at end of stream.
    pub async fn next(&mut self, f: &mut impl FnMut(&str, LineMeta)) -> Result<bool> {
        match &mut self.io {
            Io::Ws(ws) => {
                let msg = match ws.next().await {
                    None => return Ok(false),
                    Some(m) => m?,
                };
                let Message::Text(t) = msg else {
                    return Ok(!matches!(msg, Message::Close(_)));
                };
                let t = t.as_str();
                match self.target {
                    Target::OursWs if self.json => {
                        use logstream::protocol::ServerMessage;
                        match ServerMessage::parse(t)? {
                            ServerMessage::Records { records, .. } => {
                                for r in &records {
                                    f(&r.line, LineMeta { ts: Some(&r.ts) });
                                }
                            }
                            ServerMessage::Gap { .. } => self.gaps += 1,
                            _ => {}
                        }
                    }
                    Target::OursWs => {
                        for l in t.split('\n') {
                            if let Some(ctl) = l.strip_prefix("# logstream:") {
                                self.gaps += u64::from(ctl.contains(r#""type":"gap""#));
                            } else {
                                f(l, LineMeta { ts: None });
                            }
                        }
                    }
                    Target::Socketio => {
                        if t == "2" {
                            ws.send(Message::text("3")).await?;
                        } else if let Some(ev) = t.strip_prefix("42") {
                            let (_name, line): (String, String) = serde_json::from_str(ev)
                                .with_context(|| format!("bad Socket.IO event {t:?}"))?;
                            f(&line, LineMeta { ts: None });
                        }
                    }
                    _ => f(t, LineMeta { ts: None }),
                }
                Ok(true)
            }
            Io::Http { body, .. } => {
                let chunk = loop {
                    match body.frame().await {
                        None => return Ok(false),
                        Some(fr) => {
                            if let Ok(d) = fr?.into_data() {
                                break d;
                            }
                        }
                    }
                };
                self.rest.extend_from_slice(&chunk);
                let Some(last_nl) = memchr_last(&self.rest) else {
                    return Ok(true);
                };
                let rest = self.rest.split_off(last_nl + 1);
                let done = std::mem::replace(&mut self.rest, rest);
                let text = String::from_utf8_lossy(&done);
                for l in text.split_terminator('\n') {
                    if self.target == Target::OursSse {
                        self.sse_line(l.strip_suffix('\r').unwrap_or(l), f)?;
                    } else {
                        f(l, LineMeta { ts: None });
                    }
                }
                Ok(true)
            }
        }
    }

    fn sse_line(&mut self, l: &str, f: &mut impl FnMut(&str, LineMeta)) -> Result<()> {
        if l.is_empty() {
            self.sse_event = None;
        } else if let Some(ev) = l.strip_prefix("event:") {
            self.sse_event = Some(ev.trim_start().to_string());
        } else if let Some(data) = l.strip_prefix("data:") {
            let data = data.strip_prefix(' ').unwrap_or(data);
            match self.sse_event.as_deref() {
                None | Some("message") if self.json => {
                    let r: logstream::protocol::Record = serde_json::from_str(data)?;
                    f(&r.line, LineMeta { ts: Some(&r.ts) });
                }
                None | Some("message") => f(data, LineMeta { ts: None }),
                Some("hello") => self.hello = true,
                Some("gap") => self.gaps += 1,
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn memchr_last(b: &[u8]) -> Option<usize> {
    b.iter().rposition(|&c| c == b'\n')
}

async fn http_get_stream(
    addr: SocketAddr,
    src: Option<IpAddr>,
    path: &str,
    small: bool,
) -> Result<Io> {
    let stream = crate::connect_from(addr, src).await?;
    let mut b = hyper::client::conn::http1::Builder::new();
    if small {
        b.max_buf_size(8192);
    }
    let (mut sender, conn) = b
        .handshake::<_, Empty<Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await.context("HTTP request")?;
    if !resp.status().is_success() {
        bail!("GET {path} answered {}", resp.status());
    }
    Ok(Io::Http {
        body: resp.into_body(),
        _sender: sender,
    })
}

/// Opens one client and keeps reading (answering pings) until the server
/// closes; `closed` counts the connections the server ended.
pub async fn open_idle(
    target: Target,
    addr: SocketAddr,
    ip: IpAddr,
    path: String,
    closed: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    deflate: bool,
) -> Result<tokio::task::JoinHandle<()>> {
    let (mut c, _) = Client::connect_with(target, addr, Some(ip), &path, true, deflate).await?;
    Ok(tokio::spawn(async move {
        while let Ok(true) = c.next(&mut |_, _| {}).await {}
        if let Some(c) = closed {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }))
}

/// Resident memory of a server and the processes it started (the `tail`s
/// of the `tailf` baseline): VmRSS of `pid` plus the proportional set size
/// (Pss, shared pages split between sharers) of its direct children.
pub fn tree_memory(pid: u32) -> Option<u64> {
    let own = crate::status_bytes(pid, "VmRSS")?;
    let kids: u64 = children(pid)
        .into_iter()
        .filter_map(|c| {
            let s = std::fs::read_to_string(format!("/proc/{c}/smaps_rollup")).ok()?;
            crate::kb_field(&s, "Pss")
        })
        .sum();
    Some(own + kids)
}

/// CPU time of a server and its direct children (live ones).
pub fn tree_cpu(pid: u32) -> Option<Duration> {
    let own = crate::process_cpu(pid)?;
    Some(
        children(pid)
            .into_iter()
            .filter_map(crate::process_cpu)
            .fold(own, |a, b| a + b),
    )
}

/// Pids whose parent is `pid` (a scan of `/proc/*/stat`: this kernel has
/// no `/proc/PID/task/TID/children`).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // Field 4 (ppid) follows `(comm) state`.
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
