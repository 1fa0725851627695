//! Engine decisions per second, with receivers that answer instantly.
//!
//! Run: `cargo bench --bench engine`. 20,000 single-recipient messages to 5 domains through
//! a 4-member pool, every one a full pipelined SMTP exchange through pmta-sim's own server
//! session; time does not advance, so the figure is the engine's own cost plus the bytes.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::DOMAINS;
use pmta_sim::engine::{
    Action, ConnectionId, Engine, EngineOptions, Injection, MxAnswer, MxHost, Time,
};
use pmta_sim::smtp::server::{ServerPolicy, ServerSession};

const MESSAGES: usize = 20_000;
struct Accept;
impl ServerPolicy for Accept {}

/// Runs the whole load; returns (decisions, records).
fn run() -> (u64, usize) {
    let mut engine = Engine::new(common::pool_config(4, 100), EngineOptions::default()).unwrap();
    let now = Time::from_secs(1_789_992_000);
    let data = b"From: a@example.com\r\nTo: u@example.net\r\nSubject: hi\r\nMessage-ID: <x@example.com>\r\n\r\nhello\r\n".to_vec();
    let mut servers: BTreeMap<ConnectionId, ServerSession<Accept>> = BTreeMap::new();
    let mut inbox: VecDeque<(ConnectionId, Vec<u8>)> = VecDeque::new();
    let mut records = 0;
    for i in 0..MESSAGES {
        let domain = DOMAINS[i % DOMAINS.len()];
        engine
            .inject(
                now,
                Injection {
                    mail_from: "a@example.com".into(),
                    recipients: vec![format!("u{i}@{domain}")],
                    data: data.clone().into(),
                    virtual_mta: Some("pool".into()),
                    source_ip: None,
                    job_id: String::new(),
                    env_id: String::new(),
                    queued_at: None,
                },
            )
            .unwrap();
    }
    loop {
        let mut progressed = false;
        while let Some(action) = engine.poll_action() {
            progressed = true;
            match action {
                Action::ResolveMx { domain } => {
                    let host = MxHost {
                        preference: 10,
                        name: format!("mx.{domain}"),
                        addresses: vec!["198.51.100.1".parse().unwrap()],
                        port: 25,
                    };
                    engine.handle_mx(now, &domain, MxAnswer::Hosts(vec![host]));
                }
                Action::Connect { conn, .. } => {
                    let mut server = ServerSession::new(Accept);
                    let greeting = server.take_output().unwrap();
                    servers.insert(conn, server);
                    engine.handle_connected(now, conn);
                    inbox.push_back((conn, greeting));
                }
                Action::Write { conn, bytes } => {
                    if let Some(server) = servers.get_mut(&conn) {
                        server.handle_bytes(&bytes);
                        if let Some(reply) = server.take_output() {
                            inbox.push_back((conn, reply));
                        }
                    }
                }
                Action::StartTls { conn, .. } => {
                    if let Some(server) = servers.get_mut(&conn) {
                        server.tls_established();
                    }
                    engine.handle_tls_established(now, conn);
                }
                Action::Close { conn } => {
                    servers.remove(&conn);
                }
            }
        }
        while engine.poll_record().is_some() {
            records += 1;
        }
        if let Some((conn, bytes)) = inbox.pop_front() {
            engine.handle_bytes(now, conn, &bytes);
            continue;
        }
        if !progressed {
            break;
        }
    }
    assert_eq!(records, MESSAGES, "every message delivered");
    (engine.decisions(), records)
}

fn main() {
    let (decisions, records) = run();
    println!(
        "per run: {decisions} scheduling decisions, {records} deliveries (full SMTP exchanges)"
    );
    divan::main();
}

#[divan::bench(sample_count = 10)]
fn deliver_20k_messages(bencher: divan::Bencher) {
    bencher
        .counter(divan::counter::ItemsCount::new(MESSAGES))
        .bench(run);
}
