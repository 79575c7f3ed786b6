//! The contract between the operator and the streamer (logstream_contract),
//! end to end: every variable the operator writes into the sidecar and the
//! aggregator is one the streamer reads, and the streamer started with
//! exactly the environment and arguments of an injected sidecar (nothing
//! inherited: `env_clear`) serves that pod's files. Only what cannot exist
//! outside a pod is moved: paths under the pod's mounts live in a temporary
//! folder, and the listen address is a free loopback port.
#![allow(clippy::unwrap_used)] // test code

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use logstream_operator::crd::{LogStream, LogStreamSpec};
use logstream_operator::desired::{self, BuildConfig};
use logstream_operator::keys::SIDECAR_NAME;
use logstream_operator::mutate::{InjectConfig, mutate};

fn bin() -> std::path::PathBuf {
    logstream_tests::workspace_bin("logstream", "logstream")
}

fn stream(json: serde_json::Value) -> LogStream {
    let spec: LogStreamSpec = serde_json::from_value(json).unwrap();
    let mut ls = LogStream::new("web", spec);
    ls.metadata.namespace = Some("shop".into());
    ls
}

/// Token mode with every optional setting on, and the default mode (which
/// adds Kubernetes token checks).
fn streams() -> [LogStream; 2] {
    [
        stream(serde_json::json!({
            "selector": {"matchLabels": {"app": "web"}},
            "container": "app",
            "paths": ["*.log", "sub/*.txt"],
            "parse": {"format": "json", "levelField": "severity"},
            "access": {"mode": "token", "tokenSecret": {"name": "t", "key": "token"},
                       "trustLoopback": false},
        })),
        stream(serde_json::json!({"selector": {"matchLabels": {"app": "web"}}})),
    ]
}

fn injected(ls: &LogStream) -> Container {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    }))
    .unwrap();
    let cfg = InjectConfig {
        image: "logstream:test".into(),
        native_sidecars: true,
        ..InjectConfig::default()
    };
    let out = mutate(&pod, std::slice::from_ref(ls), &cfg)
        .unwrap()
        .unwrap();
    let spec = out.spec.unwrap();
    spec.init_containers
        .into_iter()
        .flatten()
        .chain(spec.containers)
        .find(|c| c.name == SIDECAR_NAME)
        .unwrap()
}

/// The variables `logstream SUBCOMMAND` reads, from its own `--help`.
fn variables_read_by(subcommand: &str) -> BTreeSet<String> {
    let out = Command::new(bin())
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect()
}

fn variables_of(c: &Container) -> BTreeSet<String> {
    c.env.iter().flatten().map(|e| e.name.clone()).collect()
}

#[test]
fn every_variable_the_operator_writes_is_read_by_the_streamer() {
    let sidecar_reads = variables_read_by("sidecar");
    assert!(sidecar_reads.contains("LOGSTREAM_DIR"), "{sidecar_reads:?}");
    for ls in streams() {
        let written = variables_of(&injected(&ls));
        let unread: Vec<_> = written.difference(&sidecar_reads).collect();
        assert!(
            unread.is_empty(),
            "sidecar: {unread:?} are written, never read"
        );
    }
    let aggregator_reads = variables_read_by("aggregator");
    let cfg = BuildConfig {
        image: "logstream:test".into(),
        owner: None,
        pull_policy: None,
        run_as: Default::default(),
        aggregator_pod: Default::default(),
    };
    for mesh in [None, Some("istio")] {
        let objects = desired::aggregator("shop", &streams(), &cfg, "pull-token", mesh);
        let pod = objects.deployment.spec.unwrap().template.spec.unwrap();
        for c in &pod.containers {
            let written = variables_of(c);
            let unread: Vec<_> = written.difference(&aggregator_reads).collect();
            assert!(
                unread.is_empty(),
                "aggregator: {unread:?} are written, never read"
            );
        }
    }
}

#[test]
fn the_injected_sidecar_serves_with_exactly_the_operators_environment() {
    let [token_mode, _] = streams();
    let c = injected(&token_mode);
    let root = tempfile::tempdir().unwrap();
    // A path inside the pod, at the same place under the temporary root.
    let moved = |p: &str| root.path().join(p.trim_start_matches('/'));
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => "shop".into(),
                Some("metadata.name") => "web-1".into(),
                other => panic!("{}: unexpected source {other:?}", e.name),
            },
            (None, None) => String::new(),
        };
        let value = match e.name.as_str() {
            "LOGSTREAM_LISTEN" => "127.0.0.1:0".to_string(),
            _ if value.starts_with('/') => value
                .split(',')
                .map(|p| moved(p).to_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(","),
            _ => value,
        };
        env.push((e.name.clone(), value));
    }
    // What the volumes would hold: the log folder, the state emptyDir and
    // the token files the Secrets would provide.
    for m in c.volume_mounts.iter().flatten() {
        std::fs::create_dir_all(moved(&m.mount_path)).unwrap();
    }
    for (name, value) in &env {
        if name == "LOGSTREAM_TOKEN_FILE" {
            for f in value.split(',') {
                std::fs::create_dir_all(Path::new(f).parent().unwrap()).unwrap();
                std::fs::write(f, "a-token\n").unwrap();
            }
        }
    }
    let dir = &env.iter().find(|(n, _)| n == "LOGSTREAM_DIR").unwrap().1;
    std::fs::write(
        Path::new(dir).join("app.log"),
        "{\"severity\":\"error\",\"msg\":\"boom\"}\n",
    )
    .unwrap();

    let mut child = Command::new(bin())
        .args(c.args.iter().flatten())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = match logstream_tests::listening_address(&mut child) {
        Ok(addr) => addr,
        Err(line) => {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            let _ = child.kill();
            panic!("the sidecar did not start: {line:?}\n{err}");
        }
    };
    // The line, with the level the LogStream's levelField names and the
    // pod's identity; `trustLoopback: false` makes even this loopback client
    // present the token of the Secret.
    let mut tcp = TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        tcp,
        "GET /stream?tail=1&format=json HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer a-token\r\n\r\n"
    )
    .unwrap();
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains("boom") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains(r#""level":"error""#), "{got}");
    assert!(got.contains(r#""pod":"web-1""#), "{got}");
    assert!(got.contains(r#""ns":"shop""#), "{got}");
    assert!(got.contains(r#""container":"app""#), "{got}");
}
