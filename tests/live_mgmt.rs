//! Operating a live daemon: the HTTP management API on `http-mgmt-port` with its
//! `http-access` rules, every `pmta-sim ctl` verb, reload, and the Prometheus endpoint —
//! against a running `pmta-sim run --live` delivering to Postfix's smtp-sink. Clients
//! connect from loopback aliases (127.0.0.3 has monitor access, 127.0.0.4 none).

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::live::{Client, LiveProcess, TempDir, free_port, send_message, smtp_sink};

/// `pmta-sim run --live` with its management API.
struct Node {
    process: LiveProcess,
    smtp: SocketAddr,
    api: SocketAddr,
}

impl Node {
    fn start(config: &Path, args: &[String]) -> Node {
        let mut process = LiveProcess::start(config, args);
        let api = process.logged_address("management API on ");
        Node {
            smtp: process.addr,
            api: SocketAddr::from(([127, 0, 0, 1], api.port())),
            process,
        }
    }

    fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// `pmta-sim ctl --api ... [--bind FROM] WORDS`: exit status, stdout, stderr.
    fn ctl(&self, from: Option<&str>, words: &str) -> (i32, String, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pmta-sim"));
        command.arg("ctl").arg(format!("--api={}", self.api));
        if let Some(from) = from {
            command.arg(format!("--bind={from}"));
        }
        let output = command.args(words.split_whitespace()).output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A `ctl` command that must succeed; its output.
    fn ok(&self, words: &str) -> String {
        let (status, out, err) = self.ctl(None, words);
        assert_eq!(status, 0, "ctl {words}: {err}\n{}", self.stderr());
        out
    }

    /// One HTTP GET from `from`: status and body.
    fn get(&self, from: &str, path: &str) -> (u16, String) {
        http(from, self.api, "GET", path, "")
    }
}

/// A plain HTTP/1.1 request with `Connection: close`, from source address `from`.
fn http(from: &str, to: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let socket = bind_connect(from.parse().unwrap(), to);
    let mut stream = socket;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A TCP connection to `to` from `from` (tokio's socket, on a thread of its own so the
/// test's runtime is not blocked, then used blocking).
fn bind_connect(from: IpAddr, to: SocketAddr) -> TcpStream {
    std::thread::spawn(move || connect_from(from, to))
        .join()
        .unwrap()
}

fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let stream = socket.connect(to).await.unwrap();
        let std = stream.into_std().unwrap();
        std.set_nonblocking(false).unwrap();
        std
    })
}

/// Rows of type `kind` of the accounting file.
fn rows(path: &Path, kind: &str) -> Vec<csv::StringRecord> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(&bytes[..])
        .records()
        .map(|r| r.unwrap())
        .filter(|r| &r[0] == kind)
        .collect()
}

fn wait_until(node: &Node, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {what}; pmta-sim said:\n{}",
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Messages smtp-sink wrote to `dump`.
fn dumped(dump: &Path) -> usize {
    std::fs::read_dir(dump).map(|d| d.count()).unwrap_or(0)
}

fn config_text(dir: &TempDir, listen: u16, extra: &str) -> String {
    let root = dir.path().display();
    format!(
        "host-name pmta.lab.test
smtp-listener 127.0.0.1:{listen}
spool {root}/spool
http-mgmt-port 0
http-access 127.0.0.1 admin
http-access 127.0.0.3 monitor
<acct-file {root}/acct.csv>
    records d,b,t,tq
</acct-file>
<source 127.0.0.1>
    always-allow-relaying yes
    default-virtual-mta mta1
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.pmta.lab.test
</virtual-mta>
<domain dead.lab.test>
    retry-after 1h
</domain>
{extra}"
    )
}

async fn inject(addr: SocketAddr, domain: &str, count: usize) {
    let mut client = Client::connect(addr).await;
    assert_eq!(client.reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO client.lab.test").await.code, 250);
    for i in 0..count {
        let to = format!("user{i}@{domain}");
        let body =
            format!("From: sender@news.example.com\r\nTo: {to}\r\nSubject: {i}\r\n\r\nHello.");
        let reply = send_message(&mut client, "sender@news.example.com", &[&to], &body).await;
        assert_eq!(reply.code, 250, "{reply}");
    }
    client.command("QUIT").await;
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the endpoint parses as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ctl_verb_and_api_call_against_a_running_daemon() {
    let dir = TempDir::new("live-mgmt");
    let dump = dir.path().join("dump");
    let (_sink, sink) = smtp_sink(&dump).await;
    // Nothing listens there: every connection is refused.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = free_port();
    let conf_path: PathBuf = dir.write("pmta.conf", &config_text(&dir, listen, ""));
    let node = Node::start(
        &conf_path,
        &[
            format!("--route=sink.lab.test={sink}"),
            format!("--route=dead.lab.test={dead}"),
        ],
    );
    let acct = dir.path().join("acct.csv");

    // Pause a domain before it has a queue: its mail waits.
    assert!(node.ok("pause queue sink.lab.test").contains("paused"));
    inject(node.smtp, "sink.lab.test", 5).await;
    inject(node.smtp, "dead.lab.test", 3).await;
    wait_until(
        &node,
        Duration::from_secs(20),
        "a tq record for dead.lab.test",
        || !rows(&acct, "tq").is_empty(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(dumped(&dump), 0, "a paused queue sent mail");
    let queues = node.ok("show queues");
    let line = queues
        .lines()
        .find(|l| l.starts_with("sink.lab.test/mta1"))
        .unwrap_or_else(|| panic!("{queues}"));
    assert!(
        line.contains(" 5 ") && line.contains("yes") && line.ends_with("paused"),
        "{line}"
    );
    let dead_part = node.ok("show queues dead.lab.test/mta1");
    assert!(
        dead_part.contains("dead.lab.test/mta1") && !dead_part.contains("sink.lab.test"),
        "{dead_part}"
    );
    assert!(dead_part.contains("last error:"), "{dead_part}");

    // Access rules: monitor may look, not act; an unlisted address gets 403 for anything.
    let (status, out, _) = node.ctl(Some("127.0.0.3"), "show status");
    assert_eq!(status, 0);
    assert!(
        out.contains("Inbound") && out.contains("Outbound") && out.contains("Spool"),
        "{out}"
    );
    let (status, _, err) = node.ctl(Some("127.0.0.3"), "resume queue sink.lab.test");
    assert_eq!(status, 1);
    assert!(err.contains("403") && err.contains("monitor"), "{err}");
    let (status, _, err) = node.ctl(Some("127.0.0.4"), "show status");
    assert_eq!(status, 1);
    assert!(err.contains("403"), "{err}");
    assert_eq!(node.get("127.0.0.4", "/metrics").0, 403);
    assert_eq!(
        http(
            "127.0.0.3",
            node.api,
            "POST",
            "/api/v1/queues/pause",
            r#"{"queue":"dead.lab.test"}"#
        )
        .0,
        403
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dumped(&dump), 0, "the monitor's resume was carried out");

    // Resume: smtp-sink receives the five.
    assert!(node.ok("resume queue sink.lab.test").contains("resumed"));
    wait_until(&node, Duration::from_secs(20), "5 d records", || {
        rows(&acct, "d").len() == 5
    });
    assert_eq!(dumped(&dump), 5);

    // Mode by hand, filtered listing.
    node.ok("set queue --mode=backoff sink.lab.test/mta1");
    let backoff = node.ok("show queues --mode=backoff");
    assert!(
        backoff.contains("sink.lab.test/mta1") && backoff.contains("backoff: set by the operator"),
        "{backoff}"
    );
    assert!(!backoff.contains("dead.lab.test"), "{backoff}");
    node.ok("set queue --mode=normal sink.lab.test/mta1");
    assert!(
        !node
            .ok("show queues --mode=backoff")
            .contains("sink.lab.test")
    );
    let (status, _, err) = node.ctl(None, "set queue --mode=fast sink.lab.test/mta1");
    assert_eq!(status, 1, "{err}");
    let (status, _, err) = node.ctl(None, "pause queue nowhere.test/mta1");
    assert_eq!(status, 1);
    assert!(err.contains("no queue matches"), "{err}");

    // The dead queue waits an hour in retry mode; `schedule` retries now.
    let (_, body) = node.get("127.0.0.1", "/api/v1/queues?queue=dead.lab.test/mta1");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed[0]["held_by"], "retry-after", "{listed}");
    assert!(listed[0]["next_retry"].is_string(), "{listed}");
    assert!(
        listed[0]["last_errors"][0]["diag"].as_str().is_some(),
        "{listed}"
    );
    let tq_before = rows(&acct, "tq").len();
    node.ok("schedule dead.lab.test/mta1");
    wait_until(
        &node,
        Duration::from_secs(20),
        "a retry after schedule",
        || rows(&acct, "tq").len() > tq_before,
    );
    // Delete: three `b` records.
    let deleted = node.ok("delete --queue=dead.lab.test/mta1");
    assert!(deleted.starts_with("3 recipients deleted"), "{deleted}");
    wait_until(&node, Duration::from_secs(10), "3 b records", || {
        rows(&acct, "b").len() == 3
    });
    for row in rows(&acct, "b") {
        assert_eq!(&row[7], "5.0.0", "{row:?}");
    }
    let top = node.ok("show topdomains");
    assert!(
        top.contains("sink.lab.test") && top.contains("dead.lab.test"),
        "{top}"
    );

    // A broken reload changes nothing and says why, as `check` would.
    node.ok("pause queue sink.lab.test");
    inject(node.smtp, "sink.lab.test", 2).await;
    let good = config_text(
        &dir,
        listen,
        "<domain sink.lab.test>\n    max-smtp-out 1\n</domain>\nhttp-access 127.0.0.5 monitor\n",
    );
    let broken = config_text(
        &dir,
        listen,
        "<domain sink.lab.test>\n    max-smtp-out lots\n</domain>\n",
    );
    std::fs::write(&conf_path, &broken).unwrap();
    let (status, _, err) = node.ctl(None, "reload");
    assert_eq!(status, 1);
    assert!(
        err.contains("pmta.conf:") && err.contains("max-smtp-out") && err.contains("lots"),
        "{err}"
    );
    let line = node.ok("show queues sink.lab.test/mta1");
    assert!(line.contains(" 2 ") && line.contains("yes"), "{line}");
    // A good one keeps the queue, its pause and its two messages.
    assert_eq!(node.get("127.0.0.5", "/api/v1/status").0, 403);
    std::fs::write(&conf_path, &good).unwrap();
    assert!(node.ok("reload").contains("reloaded"));
    // ... and its new `http-access` line is in force at once.
    assert_eq!(node.get("127.0.0.5", "/api/v1/status").0, 200);
    let (_, body) = node.get("127.0.0.1", "/api/v1/queues?queue=sink.lab.test/mta1");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed[0]["recipients"], 2, "{listed}");
    assert_eq!(listed[0]["paused"], true, "{listed}");
    assert_eq!(listed[0]["max_smtp_out"], 1, "{listed}");
    node.ok("resume queue sink.lab.test");
    wait_until(&node, Duration::from_secs(20), "7 d records", || {
        rows(&acct, "d").len() == 7
    });

    // Status JSON and the OpenAPI description. One inbound session stays open while the
    // status and the metrics are read: both count it.
    let mut idle = Client::connect(node.smtp).await;
    assert_eq!(idle.reply().await.unwrap().code, 220);
    let (status, body) = node.get("127.0.0.3", "/api/v1/status");
    assert_eq!(status, 200);
    let status_json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let connections = &status_json["connections"];
    assert_eq!(connections["smtp_in"], 1, "{status_json}");
    assert!(
        connections["smtp_in_total"].as_u64().unwrap() >= 3,
        "{status_json}"
    );
    assert_eq!(connections["smtp_in_refused"], 0, "{status_json}");
    assert_eq!(
        status_json["traffic"]["last_hour"]["messages_in"], 10,
        "{status_json}"
    );
    assert_eq!(
        status_json["traffic"]["last_hour"]["delivered"], 7,
        "{status_json}"
    );
    let (status, body) = node.get("127.0.0.3", "/api/v1/openapi.json");
    assert_eq!(status, 200);
    let openapi: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/status",
        "/api/v1/queues",
        "/api/v1/queues/pause",
        "/api/v1/reload",
        "/metrics",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} undocumented");
    }

    // Prometheus, read by a real parser.
    let (status, text) = node.get("127.0.0.3", "/metrics");
    assert_eq!(status, 200);
    let delivered = [
        ("outcome", "delivered"),
        ("queue", "sink.lab.test/mta1"),
        ("class", "2"),
    ];
    assert_eq!(
        metric(&text, "pmta_sim_recipients_total", &delivered),
        7.0,
        "{text}"
    );
    let bounced = [
        ("outcome", "bounced"),
        ("provider", "dead.lab.test"),
        ("class", "5"),
    ];
    assert_eq!(
        metric(&text, "pmta_sim_recipients_total", &bounced),
        3.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "pmta_sim_recipients_total",
            &[("outcome", "deferred"), ("class", "4")]
        ) >= 2.0
    );
    assert_eq!(
        metric(&text, "pmta_sim_messages_received_total", &[]),
        10.0,
        "{text}"
    );
    assert_eq!(metric(&text, "pmta_sim_connections_in", &[]), 1.0, "{text}");
    idle.command("QUIT").await;
    assert_eq!(
        metric(
            &text,
            "pmta_sim_queue_recipients",
            &[("queue", "sink.lab.test/mta1")]
        ),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "pmta_sim_queue_paused",
            &[("queue", "sink.lab.test/mta1")]
        ),
        0.0
    );

    // The Grafana dashboard asks only for names the endpoint has.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if name.starts_with("pmta_sim_") {
                    asked += 1;
                    assert!(
                        scrape.samples.iter().any(|s| s.metric == name),
                        "the dashboard asks for {name}, which /metrics does not have"
                    );
                }
            }
        }
    }
    assert!(asked >= 8, "{asked}");
}
