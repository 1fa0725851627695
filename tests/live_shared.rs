//! The live driver's shared-throttles store against a real Redis (Debian's `redis-server`,
//! started by each test on a loopback port in a temporary directory): the Lua scripts keep
//! one sliding window and one connection count for two nodes, a dead node's connections are
//! released with its heartbeat, shared backoff reaches the other node, and a stopped Redis
//! answers `Unavailable` until it is back. Then two `pmta-sim run --live` processes against
//! that Redis and one receiver: the receiver sees the shared limits, and with Redis stopped
//! mid-run each node falls back to its share and no mail is lost.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::live::{
    Client, Daemon, LiveProcess, TempDir, free_port, received, receiver, require, send_message,
    stats, wait_for_port,
};
use pmta_sim::config::value::Rate;
use pmta_sim::driver::live::shared::{Answer, Request, SharedClient};
use pmta_sim::engine::shared::{PermitAnswer, PermitRequest};
use pmta_sim::time::Time;
use tokio::sync::mpsc;

fn redis(dir: &TempDir, port: u16) -> Daemon {
    Daemon::spawn(
        Command::new(require("redis-server"))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path()),
    )
}

struct Node {
    client: SharedClient,
    answers: mpsc::Receiver<Answer>,
}

impl Node {
    fn start(port: u16, name: &str) -> Node {
        let (tx, answers) = mpsc::channel(64);
        let client = SharedClient::start(
            &format!("redis://127.0.0.1:{port}/0"),
            name.to_string(),
            tx,
            |a| a,
        )
        .unwrap();
        Node { client, answers }
    }

    async fn ask(&mut self, request: PermitRequest) -> PermitAnswer {
        assert!(self.client.request(Request {
            queue: "gmail.com/v1".into(),
            request,
            now: Time::from_ms(1_000_000),
        }));
        tokio::time::timeout(Duration::from_secs(5), self.answers.recv())
            .await
            .expect("an answer within the request timeout")
            .unwrap()
            .answer
    }

    /// A request that needs no answer, then a round trip so it has been carried out.
    async fn tell(&mut self, request: PermitRequest) {
        assert!(self.client.request(Request {
            queue: "gmail.com/v1".into(),
            request,
            now: Time::from_ms(1_000_000),
        }));
        // The node's task answers in order: once this is answered, that was carried out.
        self.ask(PermitRequest::Messages { n: 0, rate: RATE }).await;
    }
}

fn granted(answer: PermitAnswer) -> u64 {
    match answer {
        PermitAnswer::Granted { granted, .. } => granted,
        PermitAnswer::Unavailable => panic!("the store was reachable"),
    }
}

const RATE: Rate = Rate::Limit {
    count: 10,
    per_seconds: 60,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_window_one_connection_count_and_backoff() {
    let dir = TempDir::new("redis-shared");
    let port = free_port();
    let _redis = redis(&dir, port);
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut a = Node::start(port, "node-a");
    let mut b = Node::start(port, "node-b");

    // One window of 10 a minute for both nodes.
    assert_eq!(
        granted(a.ask(PermitRequest::Messages { n: 6, rate: RATE }).await),
        6
    );
    assert_eq!(
        granted(b.ask(PermitRequest::Messages { n: 6, rate: RATE }).await),
        4
    );
    match a.ask(PermitRequest::Messages { n: 1, rate: RATE }).await {
        PermitAnswer::Granted {
            granted: 0,
            retry_at: Some(at),
            ..
        } => {
            // The first grant leaves the window a minute after it was made.
            let wait = at.since(Time::from_ms(1_000_000));
            assert!((55_000..=60_000).contains(&wait), "{wait}");
        }
        other => panic!("a full window grants nothing: {other:?}"),
    }

    // max-smtp-out 3 across both nodes.
    let conn = |holding| PermitRequest::Connection { holding, max: 3 };
    assert_eq!(granted(a.ask(conn(0)).await), 1);
    assert_eq!(granted(a.ask(conn(1)).await), 1);
    assert_eq!(granted(b.ask(conn(0)).await), 1);
    assert_eq!(granted(b.ask(conn(1)).await), 0);
    // A closes one: B may open it.
    a.tell(PermitRequest::Holding { holding: 1 }).await;
    assert_eq!(granted(b.ask(conn(1)).await), 1);

    // Backoff entered on A reaches B with the next answer.
    a.tell(PermitRequest::Backoff {
        until: Time::from_ms(1_000_000 + 120_000),
    })
    .await;
    match b.ask(conn(2)).await {
        PermitAnswer::Granted {
            backoff_until: Some(until),
            ..
        } => {
            let left = until.since(Time::from_ms(1_000_000));
            assert!((110_000..=120_000).contains(&left), "{left}");
        }
        other => panic!("the backoff is shared: {other:?}"),
    }

    // A dead node's connections stop counting when its heartbeat key expires (15 s after
    // its last beat): node C takes the fourth of four, then its key goes as the expiry
    // would remove it (C is gone: it beats no more), and B gets that connection.
    let mut c = Node::start(port, "node-c");
    let four = |holding| PermitRequest::Connection { holding, max: 4 };
    assert_eq!(granted(c.ask(four(0)).await), 1, "A 1 + B 2 + C 1 = 4");
    assert_eq!(granted(b.ask(four(2)).await), 0);
    drop(c);
    let status = Command::new(require("redis-cli"))
        .args(["-p", &port.to_string(), "DEL", "pmta-sim:node:node-c"])
        .output()
        .unwrap();
    assert!(status.status.success());
    assert_eq!(granted(b.ask(four(2)).await), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_is_unavailable_until_it_is_back() {
    let dir = TempDir::new("redis-outage");
    let port = free_port();
    let redis_process = redis(&dir, port);
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let mut a = Node::start(port, "node-a");
    assert_eq!(
        granted(a.ask(PermitRequest::Messages { n: 2, rate: RATE }).await),
        2
    );

    drop(redis_process);
    assert_eq!(
        a.ask(PermitRequest::Messages { n: 2, rate: RATE }).await,
        PermitAnswer::Unavailable
    );
    assert_eq!(
        a.ask(PermitRequest::Connection { holding: 0, max: 3 })
            .await,
        PermitAnswer::Unavailable
    );

    let _redis = redis(&dir, port);
    wait_for_port(format!("127.0.0.1:{port}").parse().unwrap()).await;
    // Within the reconnect interval the answer may still be Unavailable; then it is back
    // (a restarted Redis without persistence starts with an empty window).
    let mut answer = PermitAnswer::Unavailable;
    for _ in 0..20 {
        answer = a.ask(PermitRequest::Messages { n: 2, rate: RATE }).await;
        if answer != PermitAnswer::Unavailable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(granted(answer), 2);
}

/// The shared limits of the two-node test: 7 messages in any 10 s for both nodes together,
/// so a share of 3 each (6 together) while Redis is away; 2 connections, a share of 1 each.
const SHARED_RATE_COUNT: usize = 7;
const SHARE_SUM_COUNT: usize = 6;
const WINDOW_S: f64 = 10.0;
const MAX_SMTP_OUT: u64 = 2;
/// The receiver stamps a message when its DATA ends, a few ms after Redis granted it; a
/// window this much shorter than the rate's absorbs that delay and its jitter on a busy
/// machine (a node ignoring the shared limit would still put 14 in one window).
const ARRIVAL_SLACK_S: f64 = 1.0;

/// A live node's configuration in `dir`: its own listener and spool, relaying for 127.0.0.1
/// through virtual MTA `mta1` at source IP 127.0.0.2 (the same on both nodes), with the
/// shared limits for `shared.lab.test` kept in the Redis at `redis_port`.
fn node_config(dir: &TempDir, redis_port: u16) -> PathBuf {
    let root = dir.path().display();
    dir.write(
        "pmta.conf",
        &format!(
            "host-name pmta.lab.test
smtp-listener 127.0.0.1:{listen}
spool {root}/spool
shared-throttles redis://127.0.0.1:{redis_port}/0
shared-throttles-nodes 2
<source 127.0.0.1>
    always-allow-relaying yes
    default-virtual-mta mta1
</source>
<source 0/0>
    always-allow-relaying no
</source>
<virtual-mta mta1>
    smtp-source-host 127.0.0.2 mta1.pmta.lab.test
</virtual-mta>
<domain shared.lab.test>
    max-msg-rate {SHARED_RATE_COUNT}/{window}s
    max-smtp-out {MAX_SMTP_OUT}
</domain>
",
            listen = free_port(),
            window = WINDOW_S as u64,
        ),
    )
}

/// Sends messages `ids` to the live listener at `addr` over one connection; each must be
/// acknowledged with a 250.
async fn inject(addr: SocketAddr, ids: Vec<String>) {
    let mut client = Client::connect(addr).await;
    assert_eq!(client.reply().await.unwrap().code, 220);
    assert_eq!(client.command("EHLO client.lab.test").await.code, 250);
    for id in ids {
        let to = format!("{id}@shared.lab.test");
        let body = format!(
            "From: sender@news.example.com\r\nTo: {to}\r\nSubject: {id}\r\nX-Test-Id: {id}\r\n\r\nHello."
        );
        let reply = send_message(&mut client, "sender@news.example.com", &[&to], &body).await;
        assert_eq!(reply.code, 250, "{id}: {reply}");
    }
    client.command("QUIT").await;
}

fn ids(node: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{node}{i}")).collect()
}

/// The most arrivals in any window of `window_s` seconds that starts at an arrival.
fn most_in_window(times: &[f64], window_s: f64) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut most = 0;
    let mut end = 0;
    for start in 0..sorted.len() {
        while end < sorted.len() && sorted[end] < sorted[start] + window_s {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

fn unix_now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

async fn wait_for(limit: Duration, what: &str, nodes: &[&LiveProcess], done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {what}; the nodes said:\n{}",
            nodes
                .iter()
                .map(|n| n.stderr())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_nodes_keep_the_shared_rate_and_connections_and_lose_nothing_when_redis_stops() {
    let redis_dir = TempDir::new("redis-nodes");
    let redis_port = free_port();
    let redis_process = redis(&redis_dir, redis_port);
    wait_for_port(SocketAddr::from(([127, 0, 0, 1], redis_port))).await;
    let rcv_dir = TempDir::new("shared-receiver");
    let (_receiver, rcv) = receiver(&rcv_dir, &[]);
    wait_for_port(rcv).await;

    let route = format!("--route=shared.lab.test={rcv}");
    let (dir_a, dir_b) = (TempDir::new("node-a"), TempDir::new("node-b"));
    let a = LiveProcess::start(
        &node_config(&dir_a, redis_port),
        std::slice::from_ref(&route),
    );
    let b = LiveProcess::start(
        &node_config(&dir_b, redis_port),
        std::slice::from_ref(&route),
    );
    for node in [&a, &b] {
        assert!(
            node.stderr().contains(&format!(
                "shared throttles in redis://127.0.0.1:{redis_port}/0"
            )),
            "{}",
            node.stderr()
        );
    }

    // 16 messages at once for a limit of 7 in 10 s: the nodes must wait for each other.
    tokio::join!(
        inject(a.addr, ids("a", 0..8)),
        inject(b.addr, ids("b", 0..8))
    );
    wait_for(Duration::from_secs(30), "10 deliveries", &[&a, &b], || {
        received(&rcv_dir).len() >= 10
    })
    .await;

    // Mid-run, Redis goes away: each node falls back to its share, and more mail comes in.
    drop(redis_process);
    let stopped_at = unix_now_s();
    let before_stop = received(&rcv_dir).len();
    assert!(before_stop < 16, "Redis stopped mid-run, not after it");
    tokio::join!(
        inject(a.addr, ids("a", 8..12)),
        inject(b.addr, ids("b", 8..12))
    );
    let fallback = "shared throttles: store unreachable, each limit at this node's share (1/2)";
    wait_for(
        Duration::from_secs(30),
        "both nodes' fallback",
        &[&a, &b],
        || a.stderr().contains(fallback) && b.stderr().contains(fallback),
    )
    .await;
    wait_for(
        Duration::from_secs(90),
        "all 24 deliveries",
        &[&a, &b],
        || received(&rcv_dir).len() >= 24,
    )
    .await;
    // Let a stray duplicate or a connection still closing reach the record.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // No mail lost, none delivered twice.
    let log = received(&rcv_dir);
    let mut delivered: Vec<&str> = log.iter().map(|(id, _)| id.as_str()).collect();
    delivered.sort_unstable();
    let mut injected: Vec<String> = ids("a", 0..12).into_iter().chain(ids("b", 0..12)).collect();
    injected.sort_unstable();
    assert_eq!(delivered, injected);

    // The shared rate over every sliding window, from both nodes together.
    let times: Vec<f64> = log.iter().map(|(_, at)| *at).collect();
    let window_s = WINDOW_S - ARRIVAL_SLACK_S;
    let most = most_in_window(&times, window_s);
    assert!(
        most <= SHARED_RATE_COUNT,
        "{most} messages within {window_s} s, limit {SHARED_RATE_COUNT}: {log:?}"
    );
    // Before Redis stopped, one window took the whole shared limit: more than the two shares
    // would allow, so the nodes really shared it.
    let before: Vec<f64> = times.iter().copied().filter(|t| *t <= stopped_at).collect();
    assert!(
        most_in_window(&before, window_s) > SHARE_SUM_COUNT,
        "the shared limit was never reached: {log:?}"
    );
    // While Redis was away, the shares: 3 + 3.
    let after: Vec<f64> = times.iter().copied().filter(|t| *t > stopped_at).collect();
    assert!(after.len() >= 24 - 16, "{log:?}");
    let most_after = most_in_window(&after, window_s);
    assert!(
        most_after <= SHARE_SUM_COUNT,
        "{most_after} messages within {window_s} s after Redis stopped, shares {SHARE_SUM_COUNT}: {log:?}"
    );
    // Connections open at once at the receiver, from both nodes together.
    let counts = stats(&rcv_dir);
    let max_open = counts["max_open"].as_u64().unwrap();
    assert!(
        (1..=MAX_SMTP_OUT).contains(&max_open),
        "{max_open} connections open at once, max-smtp-out {MAX_SMTP_OUT}"
    );
    // A connection waits for the store's answer instead of quitting and opening another
    // (connection-idle-timeout is 0 here): fewer connections than messages.
    let connections = counts["connections"].as_u64().unwrap();
    assert!(
        connections <= injected.len() as u64,
        "{connections} connections for {} messages",
        injected.len()
    );

    for node in [a, b] {
        let (status, text) = node.stop();
        assert_eq!(status, 0, "{text}");
        assert!(text.contains("0 messages left in the spool"), "{text}");
    }
}
