//! An engine harness with no runtime: virtual time, a fixed one-way network latency,
//! scripted sans-io SMTP receivers (pmta-sim's own `ServerSession`) and a DNS table, all a
//! `Transport` under the same pump every driver uses. What the receivers see (every command
//! line with its time) and what the engine reports are logged so tests can assert exact
//! timing and records.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;

use pmta_sim::config::{self, MemFs, Options};
use pmta_sim::engine::accounting::{AcctRecord, RecordType};
use pmta_sim::engine::{
    ConnectionId, Engine, EngineEvent, EngineOptions, Injection, MessageData, MessageId, MxAnswer,
    MxHost, Time,
};
use pmta_sim::sim::pump::{Connect, Input, Pump, Sink, Transport};
use pmta_sim::smtp::Reply;
use pmta_sim::smtp::server::{Envelope, ServerPolicy, ServerSession};

/// 2026-09-21 12:00:00 UTC: the harness's epoch.
pub const T0: Time = Time::from_secs(1_789_992_000);
pub const LATENCY_MS: u64 = 10;

pub type Policy = Box<dyn ServerPolicy>;

/// How a host answers a connection.
pub enum Host {
    Accept(Box<dyn FnMut() -> Policy>),
    Refuse,
    /// Never answers: the engine's connect timeout fires.
    Blackhole,
    /// Decides per connection, from the time it is opened.
    Custom(Box<dyn FnMut(Time) -> Behavior>),
}

/// What one connection to a [`Host::Custom`] meets.
pub enum Behavior {
    Refuse,
    /// Accepts the TCP connection and never says a word.
    Silent,
    Accept(Policy),
    /// Answers everything except the end of message data.
    MuteAfterData(Policy),
}

/// Answers a RCPT for an address.
pub type RcptScript = Box<dyn FnMut(&str) -> Reply>;
/// Answers the end of message data.
pub type MessageScript = Box<dyn FnMut(&Envelope) -> Reply>;

/// A policy built from closures, for scripted receivers.
#[derive(Default)]
pub struct Script {
    pub greeting: Option<Reply>,
    /// The answer to EHLO and HELO instead of the usual 250.
    pub ehlo: Option<Reply>,
    pub capabilities: Option<Vec<String>>,
    pub rcpt: Option<RcptScript>,
    pub message: Option<MessageScript>,
}

impl ServerPolicy for Script {
    fn greeting(&mut self, _now: Time) -> Reply {
        self.greeting
            .clone()
            .unwrap_or_else(|| Reply::new(220, None, "mx.test ESMTP"))
    }
    fn capabilities(&mut self, _tls: bool) -> Vec<String> {
        self.capabilities.clone().unwrap_or_else(|| {
            vec![
                "PIPELINING".into(),
                "8BITMIME".into(),
                "SIZE 52428800".into(),
                "ENHANCEDSTATUSCODES".into(),
            ]
        })
    }
    fn ehlo(&mut self, _now: Time, _host: &str) -> Option<Reply> {
        self.ehlo.clone()
    }
    fn rcpt_to(&mut self, _now: Time, _envelope: &Envelope, rcpt: &str) -> Reply {
        match &mut self.rcpt {
            Some(f) => f(rcpt),
            None => Reply::new(250, Some([2, 1, 5]), "OK"),
        }
    }
    fn message(&mut self, _now: Time, envelope: &Envelope, _data: &[u8]) -> Reply {
        match &mut self.message {
            Some(f) => f(envelope),
            None => Reply::new(250, Some([2, 0, 0]), "OK queued"),
        }
    }
}

struct Boxed(Policy, Rc<std::cell::RefCell<Vec<Vec<u8>>>>);

impl ServerPolicy for Boxed {
    fn greeting(&mut self, now: Time) -> Reply {
        self.0.greeting(now)
    }
    fn capabilities(&mut self, tls: bool) -> Vec<String> {
        self.0.capabilities(tls)
    }
    fn ehlo(&mut self, now: Time, host: &str) -> Option<Reply> {
        self.0.ehlo(now, host)
    }
    fn mail_from(&mut self, now: Time, envelope: &Envelope) -> Reply {
        self.0.mail_from(now, envelope)
    }
    fn rcpt_to(&mut self, now: Time, envelope: &Envelope, rcpt: &str) -> Reply {
        self.0.rcpt_to(now, envelope, rcpt)
    }
    fn data(&mut self, now: Time, envelope: &Envelope) -> Reply {
        self.0.data(now, envelope)
    }
    fn message(&mut self, now: Time, envelope: &Envelope, data: &[u8]) -> Reply {
        self.1.borrow_mut().push(data.to_vec());
        self.0.message(now, envelope, data)
    }
    fn closed(&mut self, now: Time) {
        self.0.closed(now)
    }
}

enum NetEvent {
    Connected(ConnectionId),
    ConnectFailed(ConnectionId),
    Bytes(ConnectionId, Vec<u8>),
    Closed(ConnectionId),
    Tls(ConnectionId),
    Mx(String, MxAnswer),
    Data(MessageId, Result<MessageData, String>),
}

/// One connection's life, as the harness saw it.
#[derive(Clone, Debug)]
pub struct ConnLog {
    pub queue: String,
    pub source_ip: IpAddr,
    pub ip: IpAddr,
    pub opened: Time,
    pub closed: Option<Time>,
    /// Every command line the engine wrote, with the time it wrote it.
    pub commands: Vec<(Time, String)>,
}

pub struct Harness {
    pump: Pump,
    pub now: Time,
    pub clock: Rc<Cell<Time>>,
    pub hosts: BTreeMap<IpAddr, Host>,
    pub dns: BTreeMap<String, MxAnswer>,
    net: BTreeMap<(Time, u64), NetEvent>,
    seq: u64,
    servers: BTreeMap<ConnectionId, ServerSession<Boxed>>,
    mute_after_data: BTreeMap<ConnectionId, bool>,
    pub conns: BTreeMap<ConnectionId, ConnLog>,
    pub records: Vec<AcctRecord>,
    pub events: Vec<EngineEvent>,
    /// Every MX lookup the engine asked for, in order.
    pub resolved: Vec<String>,
    /// Every STARTTLS upgrade the engine asked for: the server name.
    pub tls_names: Vec<String>,
    pub injected: Vec<(String, String)>,
    /// Every message the receivers took in, as received (dot-unstuffed).
    pub received_log: Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
    next_job: u64,
    /// The bodies, kept by the harness for an engine with `Bodies::Driver`: a load is
    /// answered one latency later; a message missing here cannot be read.
    pub bodies: BTreeMap<MessageId, Vec<u8>>,
    /// Every message the engine asked to load, in order.
    pub loads: Vec<MessageId>,
}

/// The harness's network, borrowed from it for one pump call.
struct Net<'a> {
    hosts: &'a mut BTreeMap<IpAddr, Host>,
    dns: &'a BTreeMap<String, MxAnswer>,
    net: &'a mut BTreeMap<(Time, u64), NetEvent>,
    seq: &'a mut u64,
    servers: &'a mut BTreeMap<ConnectionId, ServerSession<Boxed>>,
    mute_after_data: &'a mut BTreeMap<ConnectionId, bool>,
    conns: &'a mut BTreeMap<ConnectionId, ConnLog>,
    resolved: &'a mut Vec<String>,
    tls_names: &'a mut Vec<String>,
    clock: &'a Cell<Time>,
    received_log: &'a Rc<std::cell::RefCell<Vec<Vec<u8>>>>,
    bodies: &'a BTreeMap<MessageId, Vec<u8>>,
    loads: &'a mut Vec<MessageId>,
}

/// What the engine reports, borrowed from the harness for one pump call.
struct Log<'a> {
    records: &'a mut Vec<AcctRecord>,
    events: &'a mut Vec<EngineEvent>,
}

impl Sink for Log<'_> {
    fn record(&mut self, record: AcctRecord) {
        self.records.push(record);
    }
    fn event(&mut self, event: EngineEvent) {
        self.events.push(event);
    }
}

impl Net<'_> {
    fn push(&mut self, at: Time, event: NetEvent) {
        *self.seq += 1;
        self.net.insert((at, *self.seq), event);
    }
}

impl Transport for Net<'_> {
    fn resolve_mx(&mut self, now: Time, domain: &str) -> Option<MxAnswer> {
        self.resolved.push(domain.to_string());
        let answer = self
            .dns
            .get(domain)
            .cloned()
            .unwrap_or(MxAnswer::NoMailHost);
        // The answer comes back as an input of its own, at the same time.
        self.push(now, NetEvent::Mx(domain.to_string(), answer));
        None
    }

    fn connect(&mut self, now: Time, connect: Connect<'_>) -> Result<(), String> {
        let conn = connect.conn;
        self.conns.insert(
            conn,
            ConnLog {
                queue: connect.queue.to_string(),
                source_ip: connect.source_ip,
                ip: connect.ip,
                opened: now,
                closed: None,
                commands: Vec::new(),
            },
        );
        let behavior = match self.hosts.get_mut(&connect.ip) {
            Some(Host::Accept(make)) => Behavior::Accept(make()),
            Some(Host::Refuse) | None => Behavior::Refuse,
            Some(Host::Blackhole) => return Ok(()),
            Some(Host::Custom(decide)) => decide(now),
        };
        let (policy, mute) = match behavior {
            Behavior::Refuse => {
                self.push(now.plus_ms(LATENCY_MS), NetEvent::ConnectFailed(conn));
                return Ok(());
            }
            Behavior::Silent => {
                self.push(now.plus_ms(LATENCY_MS), NetEvent::Connected(conn));
                return Ok(());
            }
            Behavior::Accept(policy) => (policy, false),
            Behavior::MuteAfterData(policy) => (policy, true),
        };
        let mut server = ServerSession::new(Boxed(policy, Rc::clone(self.received_log)), now);
        let greeting = server.take_output().unwrap_or_default();
        self.servers.insert(conn, server);
        self.mute_after_data.insert(conn, mute);
        self.push(now.plus_ms(LATENCY_MS), NetEvent::Connected(conn));
        self.push(now.plus_ms(2 * LATENCY_MS), NetEvent::Bytes(conn, greeting));
        Ok(())
    }

    fn write(&mut self, now: Time, conn: ConnectionId, bytes: Vec<u8>) {
        self.clock.set(now);
        let log = self.conns.get_mut(&conn).unwrap();
        for line in String::from_utf8_lossy(&bytes).split("\r\n") {
            let upper = line.to_ascii_uppercase();
            if [
                "EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "QUIT", "STARTTLS",
            ]
            .iter()
            .any(|c| upper.starts_with(c))
            {
                log.commands.push((now, line.to_string()));
            }
        }
        if let Some(server) = self.servers.get_mut(&conn) {
            server.handle_bytes(now, &bytes);
            let mut reply = server.take_output().unwrap_or_default();
            if self.mute_after_data.get(&conn) == Some(&true) && bytes.ends_with(b"\r\n.\r\n") {
                reply.clear();
            }
            let closed = server.is_closed();
            if !reply.is_empty() {
                self.push(now.plus_ms(2 * LATENCY_MS), NetEvent::Bytes(conn, reply));
            }
            if closed {
                if let Some(mut server) = self.servers.remove(&conn) {
                    server.close(now);
                }
                self.push(now.plus_ms(2 * LATENCY_MS), NetEvent::Closed(conn));
            }
        }
    }

    fn start_tls(&mut self, now: Time, conn: ConnectionId, server_name: &str) -> bool {
        self.tls_names.push(server_name.to_string());
        if let Some(server) = self.servers.get_mut(&conn) {
            server.tls_established(now);
        }
        self.push(now.plus_ms(2 * LATENCY_MS), NetEvent::Tls(conn));
        false
    }

    fn close(&mut self, now: Time, conn: ConnectionId) {
        if let Some(mut server) = self.servers.remove(&conn) {
            server.close(now);
        }
        if let Some(log) = self.conns.get_mut(&conn) {
            log.closed.get_or_insert(now);
        }
    }

    fn load_message(
        &mut self,
        now: Time,
        message: MessageId,
    ) -> Option<Result<MessageData, String>> {
        self.loads.push(message);
        let data = self
            .bodies
            .get(&message)
            .map(|b| MessageData::from(b.clone()))
            .ok_or_else(|| "no such message file".to_string());
        self.push(now.plus_ms(LATENCY_MS), NetEvent::Data(message, data));
        None
    }
}

/// Loads a config from text (files beside it optional) and asserts it is clean.
pub fn config_from(text: &str) -> config::Config {
    config_with_files(text, &[])
}

/// As [`config_from`], with more files (key files, includes) in the in-memory file system.
pub fn config_with_files(text: &str, files: &[(&str, Vec<u8>)]) -> config::Config {
    let mut fs = MemFs::new().with("/etc/pmta/config", text);
    for (path, bytes) in files {
        fs = fs.with(*path, bytes.clone());
    }
    let checked = config::load(Path::new("/etc/pmta/config"), &fs, Options::default()).unwrap();
    let rendered: String = checked
        .diagnostics
        .iter()
        .map(|d| d.render(&checked.config.sources))
        .collect();
    assert_eq!(checked.error_count(), 0, "{rendered}");
    checked.config
}

impl Harness {
    pub fn new(config_text: &str) -> Harness {
        Harness::with_config(config_from(config_text))
    }

    pub fn with_config(config: config::Config) -> Harness {
        Harness::with_options(
            config,
            EngineOptions {
                seed: 7,
                ..EngineOptions::default()
            },
        )
    }

    pub fn with_options(config: config::Config, options: EngineOptions) -> Harness {
        let engine = Engine::new(config, options).unwrap();
        Harness {
            pump: Pump::new(engine),
            now: T0,
            clock: Rc::new(Cell::new(T0)),
            hosts: BTreeMap::new(),
            dns: BTreeMap::new(),
            net: BTreeMap::new(),
            seq: 0,
            servers: BTreeMap::new(),
            mute_after_data: BTreeMap::new(),
            conns: BTreeMap::new(),
            records: Vec::new(),
            events: Vec::new(),
            resolved: Vec::new(),
            tls_names: Vec::new(),
            injected: Vec::new(),
            received_log: Rc::default(),
            next_job: 0,
            bodies: BTreeMap::new(),
            loads: Vec::new(),
        }
    }

    /// `domain` has one MX `mx.<domain>` at `ip`, answering with policies from `make`.
    pub fn mx(
        &mut self,
        domain: &str,
        ip: &str,
        make: impl FnMut() -> Policy + 'static,
    ) -> &mut Harness {
        let ip: IpAddr = ip.parse().unwrap();
        self.dns.insert(
            domain.to_string(),
            MxAnswer::Hosts(vec![MxHost {
                preference: 10,
                name: format!("mx.{domain}"),
                addresses: vec![ip],
                port: 25,
            }]),
        );
        self.hosts.insert(ip, Host::Accept(Box::new(make)));
        self
    }

    /// An accepting MX that delivers everything.
    pub fn accept_all(&mut self, domain: &str, ip: &str) -> &mut Harness {
        self.mx(domain, ip, || Box::new(Script::default()))
    }

    fn push(&mut self, at: Time, event: NetEvent) {
        self.seq += 1;
        self.net.insert((at, self.seq), event);
    }

    /// Injects one message from `a@sender.example` to `rcpts` through `vmta`.
    pub fn inject(&mut self, vmta: Option<&str>, rcpts: &[&str]) {
        self.inject_data(vmta, rcpts, b"From: a@sender.example\r\nTo: x@y\r\nSubject: test\r\nMessage-ID: <1@sender.example>\r\n\r\nhello\r\n".to_vec());
    }

    pub fn inject_data(&mut self, vmta: Option<&str>, rcpts: &[&str], data: Vec<u8>) {
        self.inject_queued(vmta, rcpts, data, None);
    }

    /// Injects a message first queued at `queued_at` (one recovered from a spool).
    pub fn inject_queued(
        &mut self,
        vmta: Option<&str>,
        rcpts: &[&str],
        data: Vec<u8>,
        queued_at: Option<Time>,
    ) {
        self.next_job += 1;
        let job = format!("job{}", self.next_job);
        for rcpt in rcpts {
            self.injected.push((job.clone(), rcpt.to_string()));
        }
        let keep = self.pump.engine().bodies() == pmta_sim::engine::Bodies::Driver;
        let body = keep.then(|| data.clone());
        let injection = Injection {
            mail_from: "a@sender.example".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            data: data.into(),
            virtual_mta: vmta.map(str::to_string),
            source_ip: None,
            job_id: job,
            env_id: String::new(),
            queued_at,
        };
        let now = self.now;
        let (pump, mut net, mut log) = self.split();
        let id = pump.inject(now, injection, &mut net, &mut log).unwrap();
        if let Some(body) = body {
            self.bodies.insert(id, body);
        }
    }

    /// The engine the harness drives.
    pub fn engine(&self) -> &Engine {
        self.pump.engine()
    }

    /// An operator's request at the current time (as the live management API makes it).
    pub fn control(
        &mut self,
        control: &pmta_sim::engine::control::Control,
    ) -> Result<pmta_sim::engine::control::ControlOutcome, pmta_sim::engine::control::ControlError>
    {
        let now = self.now;
        let (pump, mut net, mut log) = self.split();
        pump.with_engine(now, |e| e.handle_control(now, control), &mut net, &mut log)
    }

    /// A reload with `config` at the current time.
    pub fn reload(&mut self, config: config::Config) {
        let now = self.now;
        let (pump, mut net, mut log) = self.split();
        pump.with_engine(now, |e| e.reload(now, config), &mut net, &mut log)
            .unwrap();
    }

    /// Tells the engine the driver is shutting down.
    pub fn stop(&mut self) {
        let now = self.now;
        self.feed(now, Input::Stop);
    }

    /// The pump, the harness's network and its log, borrowed apart for one call.
    fn split(&mut self) -> (&mut Pump, Net<'_>, Log<'_>) {
        (
            &mut self.pump,
            Net {
                hosts: &mut self.hosts,
                dns: &self.dns,
                net: &mut self.net,
                seq: &mut self.seq,
                servers: &mut self.servers,
                mute_after_data: &mut self.mute_after_data,
                conns: &mut self.conns,
                resolved: &mut self.resolved,
                tls_names: &mut self.tls_names,
                clock: &self.clock,
                received_log: &self.received_log,
                bodies: &self.bodies,
                loads: &mut self.loads,
            },
            Log {
                records: &mut self.records,
                events: &mut self.events,
            },
        )
    }

    /// Feeds the engine one input at `now`.
    fn feed(&mut self, now: Time, input: Input<'_>) {
        let (pump, mut net, mut log) = self.split();
        pump.handle(now, input, &mut net, &mut log);
    }

    /// Runs `seconds` of virtual time (stopping early only in time, never in work).
    pub fn run_for(&mut self, seconds: u64) {
        let end = self.now.plus_secs(seconds);
        loop {
            let next_net = self.net.keys().next().map(|(t, _)| *t);
            let next_timer = self.pump.poll_timeout();
            let next = match (next_net, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            self.now = next;
            if next_net == Some(next) {
                let (_, event) = self.net.pop_first().unwrap();
                match event {
                    NetEvent::Connected(c) => self.feed(next, Input::Connected(c)),
                    NetEvent::ConnectFailed(c) => {
                        if let Some(log) = self.conns.get_mut(&c) {
                            log.closed.get_or_insert(next);
                        }
                        self.feed(next, Input::ConnectFailed(c, "Connection refused"));
                    }
                    NetEvent::Bytes(c, bytes) => self.feed(next, Input::Bytes(c, &bytes)),
                    NetEvent::Closed(c) => {
                        if let Some(log) = self.conns.get_mut(&c) {
                            log.closed.get_or_insert(next);
                        }
                        self.feed(next, Input::Closed(c));
                    }
                    NetEvent::Tls(c) => self.feed(next, Input::TlsEstablished(c)),
                    NetEvent::Mx(domain, answer) => self.feed(next, Input::Mx(&domain, answer)),
                    NetEvent::Data(message, data) => {
                        self.feed(next, Input::MessageData(message, data))
                    }
                }
            } else {
                self.feed(next, Input::Timeout);
            }
        }
        self.now = self.now.max(end);
    }

    /// The remote side closes every open connection now (an MX's own idle timeout).
    pub fn remote_close_all(&mut self) {
        let now = self.now;
        let (_, mut net, _) = self.split();
        let open: Vec<ConnectionId> = net.servers.keys().copied().collect();
        for conn in open {
            if let Some(mut server) = net.servers.remove(&conn) {
                server.close(now);
            }
            net.push(now, NetEvent::Closed(conn));
        }
    }

    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received_log.borrow().clone()
    }

    pub fn records_of(&self, kind: RecordType) -> Vec<&AcctRecord> {
        self.records
            .iter()
            .filter(|r| r.record_type == kind)
            .collect()
    }

    /// Seconds since T0 at which each record of `kind` was logged.
    pub fn times_of(&self, kind: RecordType) -> Vec<f64> {
        self.records_of(kind)
            .iter()
            .map(|r| r.time_logged.since(T0) as f64 / 1000.0)
            .collect()
    }

    /// Every RCPT command with its time, across connections, in time order.
    pub fn rcpt_times(&self, queue: &str) -> Vec<Time> {
        let mut times: Vec<Time> = self
            .conns
            .values()
            .filter(|c| c.queue == queue)
            .flat_map(|c| {
                c.commands
                    .iter()
                    .filter(|(_, l)| l.starts_with("RCPT"))
                    .map(|(t, _)| *t)
            })
            .collect();
        times.sort();
        times
    }
}

/// Seconds from T0.
pub fn secs(t: Time) -> f64 {
    t.since(T0) as f64 / 1000.0
}
