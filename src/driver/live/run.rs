//! Live mode's delivery loop: the engine behind the pump, on tokio with real time, real
//! sockets, the durable spool and a real resolver.
//!
//! Owns the wiring: the listener's accepted messages (already on disk) go to the engine;
//! the engine's actions are carried out by [`Live`], a [`Transport`] whose connections are
//! tokio tasks (bound to the virtual MTA's source IP, upgraded with rustls on STARTTLS) and
//! whose lookups are hickory queries; bodies are read back from the spool when a
//! transaction needs them (the engine keeps none, `Bodies::Driver`); every recipient the
//! engine settles is settled in the spool, every accounting record goes to the
//! `<acct-file>`. On the stop signal: the listener stops accepting, the engine is told to
//! open nothing more and lets transactions in flight finish, and what is left stays in the
//! spool for the next start.
//!
//! Must not: decide anything the engine decides (when to connect, what to send, what a reply
//! means), or carry out actions in an order of its own — the pump's order is the one order
//! every driver shares.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use super::acct::{AcctError, AcctLog, AcctSettings};
use super::dns::{Resolver, ResolverError, Route};
use super::listener::{Accepted, Listener, ListenerConfig, ListenerError};
use super::mgmt::{self, DaemonStats, MgmtError, MgmtSettings, Reloader};
use super::observe::Observer;
use super::shared::{self, SharedClient};
use super::spool::{Outcome, Spool, SpoolError, SpoolId, SpoolLimits, SpoolSync};
use super::tls::{self, TlsClient, TlsError, TlsMode};
use super::{log, wall_clock};
use crate::config::model::{Config, QueueMode, Value};
use crate::engine::accounting::AcctRecord;
use crate::engine::settings::GlobalSettings;
use crate::engine::shared::{PermitAnswer, PermitRequest, SharedState};
use crate::engine::{
    Bodies, ConnectionId, Engine, EngineEvent, EngineOptions, Injection, MessageData, MessageId,
    MxAnswer, Settled,
};
use crate::inbound::{InboundError, InboundSettings, ListenerLimits};
use crate::sim::pump::{Connect, Input, Pump, Sink, Transport};
use crate::time::Time;

/// Bytes read from a remote server at a time (replies are small; read into spare capacity,
/// never zeroed).
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Events from connection and lookup tasks waiting for the engine; a task waits when it is
/// full, so a fast peer cannot make the driver buffer without bound.
const EVENTS_MAX: usize = 4096;
/// Messages accepted but not yet handed to the engine (the listener waits beyond this; the
/// messages are safe in the spool either way).
const ACCEPTED_MAX: usize = 4096;
/// Inputs handled per wake before the accounting file is flushed and the loop looks at the
/// other sources again, so no source starves the others.
const BATCH_MAX: usize = 512;
/// How often a stopping driver looks whether everything has finished.
const STOP_POLL_MS: u64 = 50;
/// Timeout of one DNS query, and attempts, with `--resolver`.
const DNS_TIMEOUT_MS: u64 = 5_000;
const DNS_ATTEMPTS: usize = 2;

#[derive(Debug, Error)]
pub enum LiveError {
    #[error(transparent)]
    Inbound(#[from] InboundError),
    #[error(
        "no spool directory: write `spool DIR` in the configuration (PowerMTA's own is /var/spool/pmta)"
    )]
    NoSpool,
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Acct(#[from] AcctError),
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("DKIM: {0}")]
    Dkim(String),
    #[error(transparent)]
    Mgmt(#[from] MgmtError),
    #[error("shared-throttles: {0}")]
    Shared(#[from] redis::RedisError),
}

/// What live mode takes beside the configuration.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// One DNS server to ask instead of the system's resolver.
    pub resolver: Option<SocketAddr>,
    /// Static routes `DOMAIN=HOST:PORT` that bypass DNS.
    pub routes: Vec<Route>,
    /// The spool directory instead of the configuration's.
    pub spool_dir: Option<PathBuf>,
    /// How long a stop waits for transfers and transactions in flight.
    pub stop_grace: Duration,
    pub limits: ListenerLimits,
    /// Reads the configuration again for the management API's reload.
    pub reloader: Option<Reloader>,
}

impl Default for LiveOptions {
    fn default() -> LiveOptions {
        LiveOptions {
            resolver: None,
            routes: Vec::new(),
            spool_dir: None,
            stop_grace: Duration::from_secs(30),
            limits: ListenerLimits::default(),
            reloader: None,
        }
    }
}

/// What a live run did, from start to stop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveSummary {
    pub recovered: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub bounced: u64,
    /// Messages still in the spool at the stop (delivered after the next start).
    pub queued_at_stop: usize,
}

/// Runs live mode until `stop` resolves: listens, spools, delivers, settles, then stops as
/// the module says. Logs what an operator needs on standard error (the listening addresses
/// first, as `listening on IP:PORT`).
pub async fn run(
    config: Config,
    options: LiveOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<LiveSummary, LiveError> {
    tls::install_crypto_provider();
    let settings = Arc::new(InboundSettings::from_config(&config)?);
    let spool_dir = options
        .spool_dir
        .clone()
        .or_else(|| settings.spool_dir.clone().map(PathBuf::from))
        .ok_or(LiveError::NoSpool)?;
    let sync = SpoolSync {
        create: global_flag(&config, "sync-msg-create"),
        update: global_flag(&config, "sync-msg-update"),
    };
    let acct = match AcctSettings::from_config(&config)? {
        Some(settings) => Some(AcctLog::open(settings, wall_clock())?),
        None => {
            log("no <acct-file> in the configuration: accounting records are not written");
            None
        }
    };
    let resolver = match options.resolver {
        Some(server) => {
            Resolver::with_server(server, Duration::from_millis(DNS_TIMEOUT_MS), DNS_ATTEMPTS)
        }
        None => Resolver::system()?,
    }
    .with_routes(options.routes.clone());
    let tls_client = TlsClient::with_system_roots(Vec::new())?;
    let mgmt_settings = MgmtSettings::from_config(&config);
    let globals = GlobalSettings::read(&config.globals, None);
    let engine = Engine::new(
        config,
        EngineOptions {
            bodies: Bodies::Driver,
            ..EngineOptions::default()
        },
    )
    .map_err(|e| LiveError::Dkim(e.to_string()))?;

    let (spool, recovery) = Spool::open(&spool_dir, SpoolLimits::default(), sync)?;
    for quarantined in &recovery.quarantined {
        log(&quarantined.to_string());
    }
    let spool = Arc::new(spool);
    let (events_tx, mut events) = mpsc::channel(EVENTS_MAX);
    let shared = match &globals.shared_throttles {
        Some(url) => {
            let node = globals.shared_throttles_node.clone().unwrap_or_else(|| {
                let host = globals.host_name.as_deref().unwrap_or("pmta-sim");
                format!("{host}-{}", std::process::id())
            });
            log(&format!(
                "shared throttles in {url} as node {node}, one of {}",
                globals.shared_throttles_nodes
            ));
            Some(SharedClient::start(
                url,
                node,
                events_tx.clone(),
                Event::Permits,
            )?)
        }
        None => None,
    };
    let mut clock = Clock::default();
    let mut live = Live {
        spool: spool.clone(),
        resolver: Arc::new(resolver),
        tls: tls_client,
        events: events_tx,
        conns: BTreeMap::new(),
        messages: BTreeMap::new(),
        loads: Vec::new(),
        handshakes: Vec::new(),
        tls_modes: BTreeMap::new(),
        shared,
    };
    let mut sink = LiveSink {
        acct,
        settled: Vec::new(),
        failed: None,
        observer: Observer::default(),
    };
    let mut pump = Pump::new(engine);
    let mut summary = LiveSummary::default();

    for recovered in recovery.messages {
        let data = match spool.read_data(recovered.id) {
            Ok(data) => data,
            Err(error) => {
                log(&format!(
                    "cannot read back message {}: {error}",
                    recovered.id
                ));
                continue;
            }
        };
        let mut injection = recovered.injection;
        injection.data = MessageData::from(data);
        let now = clock.now();
        inject(
            &mut pump,
            &mut live,
            &mut sink,
            now,
            recovered.id,
            injection,
            Some(recovered.recipient_indices.into_boxed_slice()),
        );
        summary.recovered += 1;
        after_drain(&mut pump, &mut live, &mut sink, &mut clock, &mut summary);
    }
    log(&format!("recovered {} messages", summary.recovered));

    let (accepted_tx, mut accepted) = mpsc::channel::<Accepted>(ACCEPTED_MAX);
    let listener = Listener::start(
        ListenerConfig {
            settings,
            limits: options.limits,
            listen: None,
        },
        spool.clone(),
        accepted_tx,
    )
    .await?;
    for addr in listener.local_addrs() {
        log(&format!("listening on {addr}"));
    }
    let (requests_tx, mut requests) = mpsc::channel(mgmt::REQUESTS_MAX);
    let mut mgmt_on = false;
    if let Some(settings) = mgmt_settings {
        let addr = mgmt::start(settings, requests_tx).await?;
        log(&format!("management API on {addr}"));
        mgmt_on = true;
    }
    let mut listener = Some(listener);
    let mut listener_stop = None;
    let mut accepting = true;
    let mut stop_deadline = None;
    tokio::pin!(stop);

    loop {
        let timeout = pump.poll_timeout().map(|at| clock.instant(at));
        tokio::select! {
            biased;
            () = &mut stop, if stop_deadline.is_none() => {
                log("stopping: no new connections; transactions in flight finish");
                stop_deadline = Some(Instant::now() + options.stop_grace);
                if let Some(listener) = listener.take() {
                    listener_stop = Some(tokio::spawn(listener.shutdown(options.stop_grace)));
                }
                let now = clock.now();
                pump.handle(now, Input::Stop, &mut live, &mut sink);
            }
            event = events.recv() => {
                let mut next = event;
                let mut handled = 0;
                while let Some(event) = next {
                    let now = clock.now();
                    live.handle(&mut pump, &mut sink, now, event);
                    handled += 1;
                    next = if handled < BATCH_MAX { events.try_recv().ok() } else { None };
                }
            }
            message = accepted.recv(), if accepting => match message {
                Some(message) => {
                    let mut next = Some(message);
                    let mut handled = 0;
                    while let Some(message) = next {
                        let now = clock.now();
                        summary.accepted += 1;
                        sink.observer.received(now, message.injection.recipients.len());
                        inject(&mut pump, &mut live, &mut sink, now, message.id, message.injection, None);
                        handled += 1;
                        next = if handled < BATCH_MAX { accepted.try_recv().ok() } else { None };
                    }
                }
                None => accepting = false,
            },
            request = requests.recv(), if mgmt_on => match request {
                Some(request) => {
                    let now = clock.now();
                    let inbound = listener.as_ref().map(Listener::stats).unwrap_or_default();
                    let stats = DaemonStats {
                        spool_messages: spool.len(),
                        spool_bytes: spool.bytes(),
                        connections_in: inbound.open,
                        connections_in_total: inbound.connections,
                        connections_in_refused: inbound.refused,
                    };
                    let reloader = options.reloader.as_ref();
                    mgmt::answer(request, now, &mut pump, &mut live, &mut sink, |s| &s.observer, stats, reloader);
                }
                None => mgmt_on = false,
            },
            () = sleep_until(timeout), if timeout.is_some() => {
                let now = clock.now();
                pump.handle(now, Input::Timeout, &mut live, &mut sink);
            }
            () = tokio::time::sleep(Duration::from_millis(STOP_POLL_MS)), if stop_deadline.is_some() => {}
        }
        after_drain(&mut pump, &mut live, &mut sink, &mut clock, &mut summary);
        let now = clock.now();
        if let Some(acct) = &mut sink.acct
            && let Err(error) = acct.flush(now)
        {
            sink.failed.get_or_insert(error);
        }
        if let Some(error) = sink.failed.take() {
            return Err(error.into());
        }
        if let Some(deadline) = stop_deadline {
            let listener_done = listener_stop.as_ref().is_none_or(|t| t.is_finished());
            let engine_done = pump.engine().connections_open() == 0;
            if (listener_done && engine_done) || Instant::now() >= deadline {
                break;
            }
        }
    }

    // Messages the listener accepted while stopping are in the spool: the next start
    // delivers them.
    for (conn, _) in std::mem::take(&mut live.conns) {
        log(&format!(
            "stop: connection {} still open at the deadline, closed",
            conn.0
        ));
    }
    if let Some(task) = listener_stop {
        let _ = task.await;
    }
    if let Some(acct) = &mut sink.acct {
        acct.flush(clock.now())?;
    }
    drop(pump);
    drop(live);
    summary.queued_at_stop = spool.len();
    // The last reference: dropping the spool writes and syncs what is waiting.
    drop(spool);
    Ok(summary)
}

/// PowerMTA's `sync-msg-create` / `sync-msg-update`: yes unless written `no`.
fn global_flag(config: &Config, name: &str) -> bool {
    !matches!(
        config.globals.get(name).map(|s| &s.value),
        Some(Value::Bool(false))
    )
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// The wall clock as the engine's `Time`, never going backwards (the engine requires it;
/// the wall clock may be set back).
#[derive(Default)]
struct Clock {
    last: Time,
}

impl Clock {
    fn now(&mut self) -> Time {
        self.last = self.last.max(wall_clock());
        self.last
    }

    /// The tokio instant of engine time `at`.
    fn instant(&mut self, at: Time) -> Instant {
        let now = self.now();
        Instant::now() + Duration::from_millis(at.since(now))
    }
}

/// Hands one spooled message to the engine. A message the engine refuses (no route for its
/// virtual MTA, too large, ...) was already acknowledged: it is logged and closed in the
/// spool, so it does not come back at every start.
fn inject(
    pump: &mut Pump,
    live: &mut Live,
    sink: &mut LiveSink,
    now: Time,
    id: SpoolId,
    injection: Injection,
    indices: Option<Box<[u32]>>,
) {
    let recipients = injection.recipients.len() as u32;
    match pump.inject(now, injection, live, sink) {
        Ok(message) => {
            live.messages.insert(message, Spooled { id, indices });
        }
        Err(error) => {
            log(&format!(
                "message {id} refused by the engine, dropped: {error}"
            ));
            let indices: Vec<u32> = match &indices {
                Some(indices) => indices.to_vec(),
                None => (0..recipients).collect(),
            };
            for index in indices {
                if let Err(error) = live.spool.settle(id, index, Outcome::Bounced) {
                    log(&format!("spool: {error}"));
                }
            }
            live.spool.commit_settled();
        }
    }
}

/// Carries out what the engine's last inputs left for after the pump's drain: bodies to
/// read, TLS handshakes to start, recipients to settle in the spool. Reading a body feeds
/// the engine again, which may ask for more: repeat until nothing is left.
fn after_drain(
    pump: &mut Pump,
    live: &mut Live,
    sink: &mut LiveSink,
    clock: &mut Clock,
    summary: &mut LiveSummary,
) {
    loop {
        let settled = std::mem::take(&mut sink.settled);
        for &(message, recipient, outcome) in &settled {
            match outcome {
                Settled::Delivered => summary.delivered += 1,
                Settled::Bounced => summary.bounced += 1,
            }
            live.settle(message, recipient, outcome);
        }
        if !settled.is_empty() {
            live.spool.commit_settled();
        }
        for (conn, server_name, queue) in std::mem::take(&mut live.handshakes) {
            let mode = live.tls_mode(pump.engine().config(), &queue);
            if let Some(conn) = live.conns.get(&conn) {
                let _ = conn.commands.send(Command::StartTls { server_name, mode });
            }
        }
        let loads = std::mem::take(&mut live.loads);
        if loads.is_empty() {
            break;
        }
        for message in loads {
            let data = live.read(message);
            let now = clock.now();
            pump.handle(now, Input::MessageData(message, data), live, sink);
        }
    }
}

/// Where an engine message is in the spool.
struct Spooled {
    id: SpoolId,
    /// The spool index of each of the engine's recipients, for a recovered message that
    /// lost some; `None`: the same indices.
    indices: Option<Box<[u32]>>,
}

/// A request from the engine loop to a connection's task.
enum Command {
    Write(Vec<u8>),
    StartTls { server_name: String, mode: TlsMode },
}

/// What tasks report to the engine loop.
#[derive(Debug)]
enum Event {
    Connected(ConnectionId),
    ConnectFailed(ConnectionId, String),
    Bytes(ConnectionId, Vec<u8>),
    TlsEstablished(ConnectionId),
    Closed(ConnectionId),
    Mx(String, MxAnswer),
    /// The shared store's answer to a permit request.
    Permits(shared::Answer),
}

/// One open connection as the engine loop sees it.
struct Conn {
    /// The engine's queue, for its TLS settings.
    queue: String,
    /// Unbounded on purpose: the engine writes at most one command batch or one message per
    /// connection before it waits for replies, so the engine bounds it, and the engine loop
    /// must never wait on a connection.
    commands: mpsc::UnboundedSender<Command>,
}

/// The live transport: real sockets, a real resolver, the spool's bodies.
struct Live {
    spool: Arc<Spool>,
    resolver: Arc<Resolver>,
    tls: TlsClient,
    events: mpsc::Sender<Event>,
    conns: BTreeMap<ConnectionId, Conn>,
    messages: BTreeMap<MessageId, Spooled>,
    /// Bodies the engine asked for during the last drain.
    loads: Vec<MessageId>,
    /// STARTTLS asked for during the last drain: connection, server name, queue.
    handshakes: Vec<(ConnectionId, String, String)>,
    tls_modes: BTreeMap<String, TlsMode>,
    /// `shared-throttles`: the Redis task.
    shared: Option<SharedClient>,
}

impl Live {
    fn handle(&mut self, pump: &mut Pump, sink: &mut LiveSink, now: Time, event: Event) {
        // A connection the engine already closed may still report (bytes in flight, its
        // end): the engine has forgotten it, and so has the transport.
        match &event {
            Event::Connected(conn)
            | Event::ConnectFailed(conn, _)
            | Event::Bytes(conn, _)
            | Event::TlsEstablished(conn)
            | Event::Closed(conn)
                if !self.conns.contains_key(conn) =>
            {
                return;
            }
            _ => {}
        }
        match event {
            Event::Connected(conn) => pump.handle(now, Input::Connected(conn), self, sink),
            Event::ConnectFailed(conn, reason) => {
                self.conns.remove(&conn);
                pump.handle(now, Input::ConnectFailed(conn, &reason), self, sink);
            }
            Event::Bytes(conn, bytes) => pump.handle(now, Input::Bytes(conn, &bytes), self, sink),
            Event::TlsEstablished(conn) => {
                pump.handle(now, Input::TlsEstablished(conn), self, sink)
            }
            Event::Closed(conn) => {
                self.conns.remove(&conn);
                pump.handle(now, Input::Closed(conn), self, sink);
            }
            Event::Mx(domain, answer) => pump.handle(now, Input::Mx(&domain, answer), self, sink),
            Event::Permits(shared::Answer {
                queue,
                request,
                answer,
            }) => pump.handle(now, Input::Permits(&queue, &request, answer), self, sink),
        }
    }

    fn read(&self, message: MessageId) -> Result<MessageData, String> {
        let spooled = self
            .messages
            .get(&message)
            .ok_or_else(|| format!("message {} is not in the spool", message.0))?;
        self.spool
            .read_data(spooled.id)
            .map(MessageData::from)
            .map_err(|e| e.to_string())
    }

    fn settle(&mut self, message: MessageId, recipient: u32, outcome: Settled) {
        let Some(spooled) = self.messages.get(&message) else {
            return;
        };
        let index = match &spooled.indices {
            Some(indices) => indices
                .get(recipient as usize)
                .copied()
                .unwrap_or(recipient),
            None => recipient,
        };
        let outcome = match outcome {
            Settled::Delivered => Outcome::Delivered,
            Settled::Bounced => Outcome::Bounced,
        };
        match self.spool.settle(spooled.id, index, outcome) {
            Ok(true) => {
                self.messages.remove(&message);
            }
            Ok(false) => {}
            Err(error) => log(&format!("spool: {error}")),
        }
    }

    /// The queue's TLS directives (`use-starttls`, `require-starttls`,
    /// `require-tls-verify`), read once per queue.
    fn tls_mode(&mut self, config: &Config, queue: &str) -> TlsMode {
        if let Some(mode) = self.tls_modes.get(queue) {
            return *mode;
        }
        let mode = match crate::config::queue::explain(config, queue) {
            Ok(view) => {
                let flag = |name: &str| {
                    matches!(
                        view.settings.get(name).and_then(|e| e.value.as_ref()),
                        Some(Value::Bool(true))
                    )
                };
                TlsMode::from_settings(
                    flag("use-starttls"),
                    flag("require-starttls"),
                    flag("require-tls-verify"),
                )
            }
            Err(_) => TlsMode::Opportunistic,
        };
        self.tls_modes.insert(queue.to_string(), mode);
        mode
    }
}

impl Transport for Live {
    fn resolve_mx(&mut self, _now: Time, domain: &str) -> Option<MxAnswer> {
        let resolver = self.resolver.clone();
        let events = self.events.clone();
        let domain = domain.to_string();
        tokio::spawn(async move {
            let answer = resolver.resolve_mx(&domain).await;
            let _ = events.send(Event::Mx(domain, answer)).await;
        });
        None
    }

    fn connect(&mut self, _now: Time, connect: Connect<'_>) -> Result<(), String> {
        let (commands, receiver) = mpsc::unbounded_channel();
        self.conns.insert(
            connect.conn,
            Conn {
                queue: connect.queue.to_string(),
                commands,
            },
        );
        tokio::spawn(connection(
            connect.conn,
            connect.source_ip,
            SocketAddr::new(connect.ip, connect.port),
            self.tls.clone(),
            self.events.clone(),
            receiver,
        ));
        Ok(())
    }

    fn write(&mut self, _now: Time, conn: ConnectionId, bytes: Vec<u8>) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.commands.send(Command::Write(bytes));
        }
    }

    fn start_tls(&mut self, _now: Time, conn: ConnectionId, server_name: &str) -> bool {
        // The queue's TLS mode is read from the engine's configuration once the drain is
        // over (the engine writes nothing on this connection until the handshake is done).
        if let Some(c) = self.conns.get(&conn) {
            self.handshakes
                .push((conn, server_name.to_string(), c.queue.clone()));
        }
        false
    }

    fn close(&mut self, _now: Time, conn: ConnectionId) {
        // Dropping the sender ends the task after the writes before it.
        self.conns.remove(&conn);
    }

    fn load_message(
        &mut self,
        _now: Time,
        message: MessageId,
    ) -> Option<Result<MessageData, String>> {
        // Answered after the drain: a message injected in this very call is not in
        // `messages` until `inject` returns.
        self.loads.push(message);
        None
    }

    fn permits(&mut self, now: Time, queue: &str, request: &PermitRequest) -> Option<PermitAnswer> {
        let needs_answer = matches!(
            request,
            PermitRequest::Messages { .. } | PermitRequest::Connection { .. }
        );
        let sent = self.shared.as_ref().is_some_and(|client| {
            client.request(shared::Request {
                queue: queue.to_string(),
                request: request.clone(),
                now,
            })
        });
        // A full channel is an unreachable store too: the engine must not wait forever.
        (!sent && needs_answer).then_some(PermitAnswer::Unavailable)
    }
}

/// Where the engine's records and settled recipients go.
struct LiveSink {
    acct: Option<AcctLog>,
    settled: Vec<(MessageId, u32, Settled)>,
    /// The first accounting write that failed: the run stops with it.
    failed: Option<AcctError>,
    observer: Observer,
}

impl Sink for LiveSink {
    fn record(&mut self, record: AcctRecord) {
        self.observer.record(&record);
        if let Some(acct) = &mut self.acct
            && let Err(error) = acct.write(record.time_logged, &record)
        {
            self.failed.get_or_insert(error);
        }
    }

    fn event(&mut self, event: EngineEvent) {
        self.observer.event(&event);
        match event {
            EngineEvent::RecipientSettled {
                message,
                recipient,
                outcome,
                ..
            } => self.settled.push((message, recipient, outcome)),
            // What an operator watches PowerMTA's log for.
            EngineEvent::ModeChanged {
                queue,
                mode,
                trigger,
                ..
            } => {
                let mode = match mode {
                    QueueMode::Normal => "normal",
                    QueueMode::Backoff => "backoff",
                };
                log(&format!("queue {queue}: {mode} mode ({trigger})"));
            }
            EngineEvent::SharedThrottles { state, nodes, .. } => log(&match state {
                SharedState::Fallback => format!(
                    "shared throttles: store unreachable, each limit at this node's share (1/{nodes})"
                ),
                SharedState::Shared => {
                    "shared throttles: store reachable, limits shared again".to_string()
                }
            }),
            EngineEvent::SourceIpDisabled {
                queue, ip, until, ..
            } => log(&format!(
                "queue {queue}: source IP {ip} disabled{}",
                until.map(|t| format!(" until {t}")).unwrap_or_default()
            )),
            EngineEvent::PatternFailed {
                context,
                position,
                pattern,
                error,
                ..
            } => log(&format!(
                "{context}: pattern {pattern} at {position} could not be evaluated: {error}"
            )),
            _ => {}
        }
    }
}

/// A connection's socket, plain or after STARTTLS.
type Stream = tls::MaybeTls<TlsStream<TcpStream>>;

/// Opens a socket from `source_ip` (the virtual MTA's `smtp-source-host`; unbound when
/// unspecified).
async fn open(source_ip: IpAddr, to: SocketAddr) -> Result<TcpStream, String> {
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| e.to_string())?;
    if !source_ip.is_unspecified() && source_ip.is_ipv4() == to.is_ipv4() {
        socket
            .bind(SocketAddr::new(source_ip, 0))
            .map_err(|e| format!("cannot bind source IP {source_ip}: {e}"))?;
    }
    let stream = socket.connect(to).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One outbound connection: connects, then carries the engine's writes and STARTTLS and
/// reports what the server sends, until the engine drops it (its sender is gone) or the
/// server closes. The engine's own deadlines (connect, reply) close it from the other end.
async fn connection(
    conn: ConnectionId,
    source_ip: IpAddr,
    to: SocketAddr,
    tls: TlsClient,
    events: mpsc::Sender<Event>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let opened = tokio::select! {
        biased;
        // The engine gave up (its connect timeout) before the connection was made.
        None = closed(&mut commands) => return,
        opened = open(source_ip, to) => opened,
    };
    let mut stream = match opened {
        Ok(stream) => Stream::Plain(stream),
        Err(reason) => {
            let _ = events.send(Event::ConnectFailed(conn, reason)).await;
            return;
        }
    };
    if events.send(Event::Connected(conn)).await.is_err() {
        return;
    }
    let mut buffer = Vec::with_capacity(READ_BUFFER_BYTES);
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(Command::Write(bytes)) => {
                    if stream.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Command::StartTls { server_name, mode }) => {
                    let Stream::Plain(plain) = stream else {
                        break;
                    };
                    match tls.connect(plain, &server_name, mode).await {
                        Ok(tls_stream) => {
                            stream = Stream::Tls(Box::new(tls_stream));
                            if events.send(Event::TlsEstablished(conn)).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                None => {
                    let _ = stream.shutdown().await;
                    return;
                }
            },
            read = stream.read_buf(&mut buffer) => match read {
                Ok(n) if n > 0 => {
                    let bytes = buffer.to_vec();
                    buffer.clear();
                    if events.send(Event::Bytes(conn, bytes)).await.is_err() {
                        return;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = events.send(Event::Closed(conn)).await;
}

/// Waits until the engine drops the connection, ignoring anything sent before the
/// connection exists (nothing is: the engine writes only after `Connected`).
async fn closed(commands: &mut mpsc::UnboundedReceiver<Command>) -> Option<Command> {
    while commands.recv().await.is_some() {}
    None
}
