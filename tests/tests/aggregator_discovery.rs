//! The aggregator discovers sidecars through a real API server: pods carrying
//! the injection label are watched; their sidecars (real processes here, on
//! loopback) are pulled while they exist.
#![allow(clippy::unwrap_used)] // test code

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use logstream::client::{ClientOptions, Connection};
use logstream::protocol::{ServerMessage, Subscribe};
use logstream_tests::{ControlPlane, eventually};

const PATIENCE: Duration = Duration::from_secs(60);

fn bin(name: &str) -> PathBuf {
    logstream_tests::workspace_bin("logstream", name)
}

/// A running `logstream` process and the address it printed.
struct Proc {
    child: Child,
    addr: String,
}

impl Proc {
    fn spawn(args: &[&str], kubeconfig: Option<&std::path::Path>) -> Proc {
        let mut cmd = Command::new(bin("logstream"));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let mut child = cmd.spawn().unwrap();
        let addr = logstream_tests::listening_address(&mut child)
            .unwrap_or_else(|line| panic!("{line:?}"));
        Proc { child, addr }
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{}/metrics", self.addr)])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn aggregator_pulls_the_sidecars_of_labelled_pods_it_discovers() {
    let cp = ControlPlane::start();
    cp.kubectl(&["create", "namespace", "shop"])
        .stdout_if_success();
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path().to_str().unwrap();
    let sidecar = Proc::spawn(
        &[
            "sidecar",
            "--dir",
            dir,
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            "shop",
            "--pod",
            "web-1",
            "--container",
            "app",
        ],
        None,
    );
    let port: i32 = sidecar.addr.rsplit(':').next().unwrap().parse().unwrap();
    // The pod as the injector leaves it; without nodes, its status is set by hand
    // to point at the real sidecar process on loopback.
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"web-1","namespace":"shop","labels":{{"app":"web","logstream.dev/stream":"web"}}}},
           "spec":{{"initContainers":[{{"name":"logstream","image":"logstream","restartPolicy":"Always","ports":[{{"name":"logstream","containerPort":{port}}}]}}],
                    "containers":[{{"name":"app","image":"app"}}]}}}}"#
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &pod)
        .stdout_if_success();
    cp.kubectl(&[
        "patch",
        "pod",
        "web-1",
        "-n",
        "shop",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"127.0.0.1","podIPs":[{"ip":"127.0.0.1"}]}}"#,
    ])
    .stdout_if_success();
    // A pod without the label is ignored.
    cp.kubectl_stdin(&["apply", "-f", "-"], r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"db","namespace":"shop"},"spec":{"containers":[{"name":"db","image":"db"}]}}"#)
        .stdout_if_success();

    std::fs::write(logs.path().join("app.log"), "before discovery\n").unwrap();
    let agg = Proc::spawn(
        &[
            "aggregator",
            "--namespace",
            "shop",
            "--discover-label",
            "logstream.dev/stream",
            "--listen",
            "127.0.0.1:0",
            "--reorder-window",
            "0s",
        ],
        Some(&cp.kubeconfig),
    );
    eventually(
        "the aggregator to connect to the discovered sidecar",
        PATIENCE,
        || async { (agg.metric("logstream_upstreams_connected")? >= 1.0).then_some(()) },
    )
    .await;
    assert_eq!(
        agg.metric("logstream_upstreams_known"),
        Some(1.0),
        "only the labelled pod"
    );
    let opts = ClientOptions {
        base: format!("http://{}", agg.addr),
        sub: Subscribe {
            tail: Some(10),
            ..Default::default()
        },
        token: None,
    };
    let mut c = Connection::open(&opts, None).await.unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(logs.path().join("app.log"))
        .map(|mut f| std::io::Write::write_all(&mut f, b"after discovery\n"))
        .unwrap()
        .unwrap();
    let mut lines = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while lines.len() < 2 {
            if let Some(ServerMessage::Records { records, .. }) = c.next().await.unwrap() {
                for r in records {
                    assert_eq!(
                        (r.source.namespace.as_str(), r.source.pod.as_str()),
                        ("shop", "web-1")
                    );
                    lines.push(r.line);
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(lines, ["before discovery", "after discovery"]);

    // The pod goes away: its upstream is dropped.
    cp.kubectl(&[
        "delete",
        "pod",
        "web-1",
        "-n",
        "shop",
        "--grace-period=0",
        "--force",
    ])
    .stdout_if_success();
    eventually("the upstream to be dropped", PATIENCE, || async {
        (agg.metric("logstream_upstreams_known")? == 0.0).then_some(())
    })
    .await;
}
