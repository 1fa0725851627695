//! The pump: the one loop between the engine and whatever carries its bytes.
//!
//! Owns the engine's call order (an input with `now`, then every action it asks for carried
//! out in order, then its records and events handed on) so that no driver writes it again.
//! The turmoil driver, the fast driver, the live driver, the test harness and the engine
//! benchmark all feed the engine through [`Pump::handle`] and [`Pump::inject`], and carry
//! its actions out through a [`Transport`]; what the engine reports goes to a [`Sink`].
//!
//! Must not: do I/O, read a clock, or know which network is underneath (turmoil, a virtual
//! event queue or real sockets are the transport's business).

use std::net::IpAddr;

use crate::engine::accounting::AcctRecord;
use crate::engine::shared::{PermitAnswer, PermitRequest};
use crate::engine::{
    Action, ConnectionId, Engine, EngineEvent, InjectError, Injection, MessageData, MessageId,
    MxAnswer,
};
use crate::time::Time;

/// What carries the engine's connections: a network, simulated or real.
pub trait Transport {
    /// The mail hosts of `domain`: `Some` when the answer is known now (a simulated zone),
    /// `None` when it comes later as [`Input::Mx`] (a real resolver).
    fn resolve_mx(&mut self, now: Time, domain: &str) -> Option<MxAnswer>;
    /// Opens `connect.conn` from its source IP to `ip:port`. `Err(reason)` when it fails at
    /// once; otherwise the outcome comes later as [`Input::Connected`] or
    /// [`Input::ConnectFailed`].
    fn connect(&mut self, now: Time, connect: Connect<'_>) -> Result<(), String>;
    /// Sends `bytes` on `conn`, in order after everything written before.
    fn write(&mut self, now: Time, conn: ConnectionId, bytes: Vec<u8>);
    /// Upgrades `conn` to TLS for `server_name`: `true` when it is done at once (simulated
    /// TLS is negotiated as protocol), `false` when [`Input::TlsEstablished`] follows.
    fn start_tls(&mut self, now: Time, conn: ConnectionId, server_name: &str) -> bool;
    /// The engine is done with `conn`.
    fn close(&mut self, now: Time, conn: ConnectionId);
    /// The data of `message`, for an engine whose driver keeps the bodies
    /// (`Bodies::Driver`): `Some` when it is read now, `None` when it comes later as
    /// [`Input::MessageData`]. Engines that keep their bodies never ask.
    fn load_message(
        &mut self,
        _now: Time,
        _message: MessageId,
    ) -> Option<Result<MessageData, String>> {
        Some(Err("this transport keeps no message bodies".into()))
    }
    /// Asks the shared store (`shared-throttles`) for `queue`'s permits: `Some` when the
    /// answer is known now (a simulated store), `None` when it comes later as
    /// [`Input::Permits`] or when the request needs no answer. A transport with no store
    /// answers that it is unreachable, so the engine keeps its share of each limit.
    fn permits(
        &mut self,
        _now: Time,
        _queue: &str,
        request: &PermitRequest,
    ) -> Option<PermitAnswer> {
        match request {
            PermitRequest::Messages { .. } | PermitRequest::Connection { .. } => {
                Some(PermitAnswer::Unavailable)
            }
            PermitRequest::Holding { .. } | PermitRequest::Backoff { .. } => None,
        }
    }
}

/// A connection the engine asks for.
#[derive(Clone, Copy, Debug)]
pub struct Connect<'a> {
    pub conn: ConnectionId,
    /// The queue (`DOMAIN/VMTA`) it is for.
    pub queue: &'a str,
    pub source_ip: IpAddr,
    /// The MX host's name and address.
    pub host: &'a str,
    pub ip: IpAddr,
    pub port: u16,
}

/// Where the engine's accounting records and events go.
pub trait Sink {
    fn record(&mut self, record: AcctRecord);
    fn event(&mut self, event: EngineEvent);
}

/// Something that happened to the engine's connections or lookups.
#[derive(Debug)]
pub enum Input<'a> {
    Connected(ConnectionId),
    ConnectFailed(ConnectionId, &'a str),
    Bytes(ConnectionId, &'a [u8]),
    TlsEstablished(ConnectionId),
    /// The peer closed the connection, or the transport lost it.
    Closed(ConnectionId),
    Mx(&'a str, MxAnswer),
    /// The answer to [`Transport::load_message`] when it came later.
    MessageData(MessageId, Result<MessageData, String>),
    /// The answer to [`Transport::permits`] when it came later.
    Permits(&'a str, &'a PermitRequest, PermitAnswer),
    /// The time [`Pump::poll_timeout`] named has come.
    Timeout,
    /// The driver is shutting down: no new connection or transaction.
    Stop,
}

/// The engine and its call order.
pub struct Pump {
    engine: Engine,
}

impl Pump {
    pub fn new(engine: Engine) -> Pump {
        Pump { engine }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn into_engine(self) -> Engine {
        self.engine
    }

    /// When the engine next wants [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Time> {
        self.engine.poll_timeout()
    }

    /// Hands the engine a message, then carries out what it asks.
    pub fn inject(
        &mut self,
        now: Time,
        injection: Injection,
        transport: &mut impl Transport,
        sink: &mut impl Sink,
    ) -> Result<MessageId, InjectError> {
        let result = self.engine.inject(now, injection);
        self.drain(now, transport, sink);
        result
    }

    /// Runs an operator's call on the engine (`handle_control`, `reload`), then carries
    /// out what it asks.
    pub fn with_engine<R>(
        &mut self,
        now: Time,
        call: impl FnOnce(&mut Engine) -> R,
        transport: &mut impl Transport,
        sink: &mut impl Sink,
    ) -> R {
        let result = call(&mut self.engine);
        self.drain(now, transport, sink);
        result
    }

    /// Feeds the engine one input at `now`, then carries out what it asks.
    pub fn handle(
        &mut self,
        now: Time,
        input: Input<'_>,
        transport: &mut impl Transport,
        sink: &mut impl Sink,
    ) {
        match input {
            Input::Connected(conn) => self.engine.handle_connected(now, conn),
            Input::ConnectFailed(conn, reason) => {
                self.engine.handle_connect_failed(now, conn, reason)
            }
            Input::Bytes(conn, bytes) => self.engine.handle_bytes(now, conn, bytes),
            Input::TlsEstablished(conn) => self.engine.handle_tls_established(now, conn),
            Input::Closed(conn) => self.engine.handle_closed(now, conn),
            Input::Mx(domain, answer) => self.engine.handle_mx(now, domain, answer),
            Input::MessageData(message, data) => {
                self.engine.handle_message_data(now, message, data)
            }
            Input::Permits(queue, request, answer) => {
                self.engine.handle_permits(now, queue, request, answer)
            }
            Input::Timeout => self.engine.handle_timeout(now),
            Input::Stop => self.engine.handle_stop(now),
        }
        self.drain(now, transport, sink);
    }

    /// Carries out every action, in order, until the engine asks for nothing more (answers
    /// given at once, such as a simulated MX lookup, may make it ask again), then hands on
    /// its records and events.
    fn drain(&mut self, now: Time, transport: &mut impl Transport, sink: &mut impl Sink) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::ResolveMx { domain } => {
                    if let Some(answer) = transport.resolve_mx(now, &domain) {
                        self.engine.handle_mx(now, &domain, answer);
                    }
                }
                Action::Connect {
                    conn,
                    queue,
                    source_ip,
                    host,
                    ip,
                    port,
                } => {
                    let connect = Connect {
                        conn,
                        queue: &queue,
                        source_ip,
                        host: &host,
                        ip,
                        port,
                    };
                    if let Err(reason) = transport.connect(now, connect) {
                        self.engine.handle_connect_failed(now, conn, &reason);
                    }
                }
                Action::Write { conn, bytes } => transport.write(now, conn, bytes),
                Action::StartTls { conn, server_name } => {
                    if transport.start_tls(now, conn, &server_name) {
                        self.engine.handle_tls_established(now, conn);
                    }
                }
                Action::Close { conn } => transport.close(now, conn),
                Action::LoadMessage { message } => {
                    if let Some(data) = transport.load_message(now, message) {
                        self.engine.handle_message_data(now, message, data);
                    }
                }
                Action::Permits { queue, request } => {
                    if let Some(answer) = transport.permits(now, &queue, &request) {
                        self.engine.handle_permits(now, &queue, &request, answer);
                    }
                }
            }
        }
        while let Some(record) = self.engine.poll_record() {
            sink.record(record);
        }
        while let Some(event) = self.engine.poll_event() {
            sink.event(event);
        }
    }
}
