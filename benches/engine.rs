//! Engine decisions per second, with receivers that answer instantly.
//!
//! Run: `cargo bench --bench engine`. 20,000 single-recipient messages to 5 domains through
//! a 4-member pool, every one a full pipelined SMTP exchange through pmta-sim's own server
//! session; time does not advance, so the figure is the engine's own cost plus the bytes.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use pmta_sim::config::{self, MemFs, Options};
use pmta_sim::engine::{
    Action, ConnectionId, Engine, EngineOptions, Injection, MxAnswer, MxHost, Time,
};
use pmta_sim::smtp::server::{ServerPolicy, ServerSession};

const MESSAGES: usize = 20_000;
const DOMAINS: [&str; 5] = [
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "icloud.com",
    "gmx.net",
];
const CONFIG: &str = "
<virtual-mta v1>
    smtp-source-host 192.0.2.1 m1.example.com
</virtual-mta>
<virtual-mta v2>
    smtp-source-host 192.0.2.2 m2.example.com
</virtual-mta>
<virtual-mta v3>
    smtp-source-host 192.0.2.3 m3.example.com
</virtual-mta>
<virtual-mta v4>
    smtp-source-host 192.0.2.4 m4.example.com
</virtual-mta>
<virtual-mta-pool pool>
    virtual-mta v1
    virtual-mta v2
    virtual-mta v3
    virtual-mta v4
</virtual-mta-pool>
<domain *>
    max-smtp-out 10
    max-msg-per-connection 100
    connection-idle-timeout 1m
</domain>
";

struct Accept;
impl ServerPolicy for Accept {}

/// Runs the whole load; returns (decisions, records).
fn run() -> (u64, usize) {
    let fs = MemFs::new().with("/c", CONFIG);
    let checked = config::load(Path::new("/c"), &fs, Options::default()).unwrap();
    assert_eq!(checked.error_count(), 0);
    let mut engine = Engine::new(checked.config, EngineOptions::default()).unwrap();
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
                    data: data.clone(),
                    virtual_mta: Some("pool".into()),
                    source_ip: None,
                    job_id: String::new(),
                    env_id: String::new(),
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
