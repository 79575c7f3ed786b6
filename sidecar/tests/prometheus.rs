//! A real Prometheus scrapes the streamer's `/metrics`, and PromQL finds our
//! counters: the exposition format is what Prometheus accepts.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{PATIENCE, Server, http_get};

#[test]
fn prometheus_scrapes_our_counters() {
    let s = Server::start(&[]);
    s.append("app.log", "one\ntwo\nthree\n");
    s.wait_metric("logstream_lines_read_total", 3.0);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: logstream\n    static_configs:\n      - targets: ['{}']\n",
            s.addr
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut prom = Command::new(common::tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let query = "/api/v1/query?query=logstream_lines_read_total%7Bjob%3D%22logstream%22%7D";
    let deadline = Instant::now() + PATIENCE;
    let value = loop {
        if let Some((200, body)) = http_get(&listen, query) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            if let Some(sample) = v["data"]["result"].get(0) {
                break sample["value"][1].as_str().unwrap().parse::<f64>().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned our counter"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value, 3.0);
    // The target is healthy: no scrape errors.
    let (_, body) = http_get(&listen, "/api/v1/targets").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["activeTargets"][0]["health"], "up", "{body}");
    let _ = prom.kill();
    let _ = prom.wait();
}
