//! Engine decisions per second, with receivers that answer instantly.
//!
//! Run: `cargo bench --bench engine`. 20,000 single-recipient messages to 5 domains through
//! a 4-member pool, every one a full pipelined SMTP exchange through pmta-sim's own server
//! session; time does not advance, so the figure is the engine's own cost plus the bytes.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::DOMAINS;
use pmta_sim::engine::accounting::AcctRecord;
use pmta_sim::engine::{
    ConnectionId, Engine, EngineEvent, EngineOptions, Injection, MxAnswer, MxHost, Time,
};
use pmta_sim::sim::pump::{Connect, Input, Pump, Sink, Transport};
use pmta_sim::smtp::server::{ServerPolicy, ServerSession};

const MESSAGES: usize = 20_000;
struct Accept;
impl ServerPolicy for Accept {}

/// Answers at once: every MX lookup, connection and reply, at the same `now`.
#[derive(Default)]
struct Instant {
    servers: BTreeMap<ConnectionId, ServerSession<Accept>>,
    inbox: VecDeque<(ConnectionId, Option<Vec<u8>>)>,
}

impl Transport for Instant {
    fn resolve_mx(&mut self, _now: Time, domain: &str) -> Option<MxAnswer> {
        Some(MxAnswer::Hosts(vec![MxHost {
            preference: 10,
            name: format!("mx.{domain}"),
            addresses: vec!["198.51.100.1".parse().unwrap()],
            port: 25,
        }]))
    }

    fn connect(&mut self, now: Time, connect: Connect<'_>) -> Result<(), String> {
        let mut server = ServerSession::new(Accept, now);
        let greeting = server.take_output();
        self.servers.insert(connect.conn, server);
        // Connected, then the greeting.
        self.inbox.push_back((connect.conn, None));
        self.inbox.push_back((connect.conn, greeting));
        Ok(())
    }

    fn write(&mut self, now: Time, conn: ConnectionId, bytes: Vec<u8>) {
        if let Some(server) = self.servers.get_mut(&conn) {
            server.handle_bytes(now, &bytes);
            if let Some(reply) = server.take_output() {
                self.inbox.push_back((conn, Some(reply)));
            }
        }
    }

    fn start_tls(&mut self, now: Time, conn: ConnectionId, _server_name: &str) -> bool {
        if let Some(server) = self.servers.get_mut(&conn) {
            server.tls_established(now);
        }
        true
    }

    fn close(&mut self, now: Time, conn: ConnectionId) {
        if let Some(mut server) = self.servers.remove(&conn) {
            server.close(now);
        }
    }
}

/// Counts deliveries.
#[derive(Default)]
struct Count(usize);

impl Sink for Count {
    fn record(&mut self, _record: AcctRecord) {
        self.0 += 1;
    }
    fn event(&mut self, _event: EngineEvent) {}
}

/// Runs the whole load; returns (decisions, records).
fn run() -> (u64, usize) {
    let engine = Engine::new(common::pool_config(4, 100), EngineOptions::default()).unwrap();
    let mut pump = Pump::new(engine);
    let now = Time::from_secs(1_789_992_000);
    let data = b"From: a@example.com\r\nTo: u@example.net\r\nSubject: hi\r\nMessage-ID: <x@example.com>\r\n\r\nhello\r\n".to_vec();
    let mut net = Instant::default();
    let mut records = Count::default();
    for i in 0..MESSAGES {
        let domain = DOMAINS[i % DOMAINS.len()];
        let injection = Injection {
            mail_from: "a@example.com".into(),
            recipients: vec![format!("u{i}@{domain}")],
            data: data.clone().into(),
            virtual_mta: Some("pool".into()),
            source_ip: None,
            job_id: String::new(),
            env_id: String::new(),
            queued_at: None,
        };
        pump.inject(now, injection, &mut net, &mut records).unwrap();
    }
    while let Some((conn, bytes)) = net.inbox.pop_front() {
        let input = match &bytes {
            None => Input::Connected(conn),
            Some(bytes) => Input::Bytes(conn, bytes),
        };
        pump.handle(now, input, &mut net, &mut records);
    }
    assert_eq!(records.0, MESSAGES, "every message delivered");
    (pump.engine().decisions(), records.0)
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
