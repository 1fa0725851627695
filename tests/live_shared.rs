//! The live driver's shared-throttles store against a real Redis (Debian's `redis-server`,
//! started by each test on a loopback port in a temporary directory): the Lua scripts keep
//! one sliding window and one connection count for two nodes, a dead node's connections are
//! released with its heartbeat, shared backoff reaches the other node, and a stopped Redis
//! answers `Unavailable` until it is back.

mod common;

use std::process::Command;
use std::time::Duration;

use common::live::{Daemon, TempDir, free_port, require, wait_for_port};
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
