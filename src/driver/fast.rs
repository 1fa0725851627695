//! The fast driver: a simulated run in virtual time that jumps straight to the next event.
//!
//! The same engine, world, providers and SMTP bytes as the network driver, without turmoil's
//! fixed tick: one ordered queue of timed events (a segment reaching the server or the
//! client, a connection reaching its MX host, a link cut or healed) beside the engine's
//! timer and the workload, and the clock moves to whichever comes first. Idle time costs
//! nothing, so weeks of sending take seconds.
//!
//! The network follows turmoil's model so both modes agree: every write is one segment with
//! its own latency, `min + (max − min)·X` with `X ~ Exp(5)` clamped to 1 and truncated to
//! whole milliseconds, drawn from a seeded stream; it arrives at the first tick boundary
//! after that (turmoil delivers only between steps, so the scenario's `tick_ms` is the
//! network's resolution in both modes), and what the engine sends leaves at the next
//! boundary (under turmoil the engine hands it to its source IP's host, which has already
//! run in that step); a segment never overtakes the one before it on the same connection; a connection costs one one-way latency; a connection attempted across a
//! cut link is refused at once; a segment sent or in flight when its link is cut is lost,
//! and so is everything after it on that connection (turmoil's TCP does not retransmit), so
//! a partition stalls open connections into the engine's timeouts.
//!
//! Must not: read a clock, draw unseeded randomness, or iterate anything unordered.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::rc::Rc;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use crate::config::Config;
use crate::engine::{ConnectionId, MxAnswer};
use crate::scenario::Scenario;
use crate::sim::faults::LinkSchedule;
use crate::sim::output::RunOutput;
use crate::sim::pump::{Connect, Input, Transport};
use crate::sim::server::ServerConn;
use crate::sim::world::World;
use crate::sim::{Progress, RunError, RunOptions, SimRun};
use crate::time::Time;

/// Events between two progress reports.
const PROGRESS_EVERY_EVENTS: u64 = 200_000;
/// Most events waiting at once: far above what the engine's connection limit can put in
/// flight, so only a runaway would reach it.
const EVENTS_MAX: usize = 10_000_000;
/// The latency stream's seed is the scenario's, mixed so it is not the providers' stream.
const LATENCY_SEED_MIX: u64 = 0x5EED_1A7E_0C10_0F5A;

/// Runs `scenario` with `config` to its end in virtual time, keeping the trace tests check.
pub fn run(scenario: &Scenario, config: Config) -> Result<RunOutput, RunError> {
    run_with_progress(scenario, config, RunOptions::traced(), &mut |_| {})
}

/// [`run`], reporting progress every so many events.
pub fn run_with_progress(
    scenario: &Scenario,
    config: Config,
    options: RunOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunOutput, RunError> {
    run_loop(scenario, config, options, progress, None)
}

/// What a stepped run hands its caller at each step: the time, the run (to read its
/// records and change its workload's coming days) and the world (the providers' ledgers).
pub type Step<'a> = &'a mut dyn FnMut(Time, &mut SimRun, &World);

/// [`run`], stopped at the start and every `step_ms` after it (before anything due then) to
/// let `at_step` read the run and set the workload's coming days
/// ([`SimRun::set_day_volume`]): the closed-loop warmup replay decides each day from the
/// days before it. A step that changes nothing leaves the run as [`run`] makes it.
pub fn run_stepped(
    scenario: &Scenario,
    config: Config,
    options: RunOptions,
    step_ms: u64,
    at_step: Step<'_>,
) -> Result<RunOutput, RunError> {
    run_loop(
        scenario,
        config,
        options,
        &mut |_| {},
        Some((step_ms.max(1), at_step)),
    )
}

fn run_loop(
    scenario: &Scenario,
    config: Config,
    options: RunOptions,
    progress: &mut dyn FnMut(Progress),
    mut steps: Option<(u64, Step<'_>)>,
) -> Result<RunOutput, RunError> {
    let (mut run, world) = SimRun::new(scenario, config, options)?;
    let mut next_step = steps.as_ref().map(|_| scenario.start);
    let mut links = LinkSchedule::new(scenario, &world);
    let mut net = Network {
        world: &world,
        events: BTreeMap::new(),
        seq: 0,
        conns: BTreeMap::new(),
        cut: BTreeSet::new(),
        latency: Latency::new(scenario),
    };
    let end = run.end();
    let mut handled: u64 = 0;
    loop {
        let next_net = net.events.first_key_value().map(|((at, _), _)| *at);
        let now = [Some(run.next_wake()), next_net, links.next_due()]
            .into_iter()
            .flatten()
            .min()
            .expect("the end is always there");
        if let (Some(at), Some((step_ms, at_step))) = (next_step, steps.as_mut())
            && at <= now
            && at < end
        {
            at_step(at, &mut run, &world);
            next_step = Some(at.plus_ms(*step_ms));
            continue;
        }
        for (_, change) in links.take_due(now) {
            net.change_link(change.source, change.target, change.cut);
        }
        run.inject_due(now, &mut net);
        if now >= end {
            break;
        }
        handled += 1;
        if handled.is_multiple_of(PROGRESS_EVERY_EVENTS) {
            progress(Progress {
                simulated_s: now.since(scenario.start) / 1000,
                duration_s: scenario.duration_s,
                accepted: world.accepted(),
            });
        }
        // Network events before the engine's timer at the same instant, as the network
        // driver's biased select takes them.
        if next_net == Some(now) {
            let ((_, _), event) = net.events.pop_first().expect("an event is due");
            net.deliver(now, event, &mut run);
        } else if run.poll_timeout().is_some_and(|t| t <= now) {
            run.handle(now, Input::Timeout, &mut net);
        }
        if net.events.len() > EVENTS_MAX {
            return Err(RunError::Simulation(format!(
                "more than {EVENTS_MAX} network events in flight"
            )));
        }
    }
    // Connections still open end with the run.
    for conn in net.conns.values_mut() {
        if let Some(server) = conn.server.as_mut() {
            server.close(end);
        }
    }
    run.finish(&world, scenario)
}

/// Segment latency as turmoil draws it: `min + (max − min)·X`, `X ~ Exp(5)`, clamped to the
/// maximum and truncated to whole milliseconds.
struct Latency {
    rng: ChaCha8Rng,
    min_ms: u64,
    max_ms: u64,
    start: Time,
    tick_ms: u64,
}

impl Latency {
    fn new(scenario: &Scenario) -> Latency {
        Latency {
            rng: ChaCha8Rng::seed_from_u64(scenario.seed ^ LATENCY_SEED_MIX),
            min_ms: scenario.latency_ms.0,
            max_ms: scenario.latency_ms.1,
            start: scenario.start,
            tick_ms: scenario.tick_ms.max(1),
        }
    }

    /// When a segment the server sends at `now` arrives: after its latency, at the next
    /// tick boundary.
    fn arrival(&mut self, now: Time) -> Time {
        let due_ms = now.since(self.start) + self.draw_ms();
        let ticks = due_ms.div_ceil(self.tick_ms);
        self.start.plus_ms(ticks * self.tick_ms)
    }

    /// When a segment the engine sends at `now` arrives: it leaves at the next tick boundary
    /// (the step after this one), then as [`Latency::arrival`].
    fn arrival_from_engine(&mut self, now: Time) -> Time {
        let ticks = now.since(self.start) / self.tick_ms + 1;
        self.arrival(self.start.plus_ms(ticks * self.tick_ms))
    }

    fn draw_ms(&mut self) -> u64 {
        let span = self.max_ms.saturating_sub(self.min_ms);
        if span == 0 {
            return self.min_ms;
        }
        // 1 − U is in (0, 1], so the logarithm is finite.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        let x = (-u.ln() / 5.0).min(1.0);
        self.min_ms + (span as f64 * x) as u64
    }
}

/// What the queue holds.
#[derive(Debug)]
enum Event {
    /// The connection reaches its MX host.
    Syn(ConnectionId),
    /// A segment from the engine reaches the server.
    ToServer(ConnectionId, Vec<u8>),
    /// A segment from the server reaches the engine.
    ToClient(ConnectionId, Vec<u8>),
    /// The engine let the connection go: the server reads the end of the stream.
    FinToServer(ConnectionId),
    /// The server ended the session: the engine reads the end of the stream.
    FinToClient(ConnectionId),
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The attempt is on its way to the MX host.
    Connecting,
    Open,
    /// The server ended the session; the end of the stream is on its way to the engine.
    ServerGone,
}

/// One connection, both ends.
struct Conn {
    source_ip: IpAddr,
    mx_ip: IpAddr,
    stage: Stage,
    server: Option<ServerConn>,
    /// When the last segment each way arrives (a later one never overtakes it).
    to_server_at: Time,
    to_client_at: Time,
    /// A segment was lost to a cut link: nothing more arrives either way.
    broken: bool,
    /// The engine is done with the connection.
    client_gone: bool,
}

/// The virtual network: the [`Transport`] of a fast run.
struct Network<'w> {
    world: &'w World,
    events: BTreeMap<(Time, u64), Event>,
    seq: u64,
    conns: BTreeMap<ConnectionId, Conn>,
    /// Links cut now (source IP, MX address).
    cut: BTreeSet<(IpAddr, IpAddr)>,
    latency: Latency,
}

impl Network<'_> {
    fn push(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn change_link(&mut self, source: IpAddr, target: IpAddr, cut: bool) {
        if cut {
            self.cut.insert((source, target));
            // Segments in flight on the link are lost with it, and with them the stream.
            for conn in self.conns.values_mut() {
                if conn.source_ip == source && conn.mx_ip == target {
                    conn.broken = true;
                }
            }
        } else {
            self.cut.remove(&(source, target));
        }
    }

    /// Schedules a segment, toward the server or the engine, after the one before it; lost
    /// (and the stream with it) if the path is cut.
    fn send(&mut self, now: Time, id: ConnectionId, event: Event) {
        let arrival = match event {
            Event::ToServer(..) | Event::FinToServer(_) => self.latency.arrival_from_engine(now),
            _ => self.latency.arrival(now),
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.broken || self.cut.contains(&(conn.source_ip, conn.mx_ip)) {
            conn.broken = true;
            return;
        }
        let last = match event {
            Event::ToServer(..) | Event::FinToServer(_) => &mut conn.to_server_at,
            _ => &mut conn.to_client_at,
        };
        let at = arrival.max(*last);
        *last = at;
        self.push(at, event);
    }

    /// Sends what the server wrote, and the end of the stream if it ended the session.
    fn flush_server(&mut self, now: Time, id: ConnectionId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(server) = conn.server.as_mut() else {
            return;
        };
        let out = server.take_output();
        if server.is_closed() {
            server.close(now);
            conn.server = None;
            conn.stage = Stage::ServerGone;
            if let Some(out) = out {
                self.send(now, id, Event::ToClient(id, out));
            }
            self.send(now, id, Event::FinToClient(id));
        } else if let Some(out) = out {
            self.send(now, id, Event::ToClient(id, out));
        }
    }

    /// Carries out an event that has come.
    fn deliver(&mut self, now: Time, event: Event, run: &mut SimRun) {
        let id = match &event {
            Event::Syn(id)
            | Event::ToServer(id, _)
            | Event::ToClient(id, _)
            | Event::FinToServer(id)
            | Event::FinToClient(id) => *id,
        };
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.broken {
            // Lost in flight with a cut link. A lost attempt is refused, as turmoil's
            // dropped SYN is; anything else leaves the stream stuck.
            if matches!(event, Event::Syn(_)) {
                let engine_waits = !conn.client_gone;
                self.conns.remove(&id);
                if engine_waits {
                    run.handle(now, Input::ConnectFailed(id, "connection refused"), self);
                }
            }
            return;
        }
        match event {
            Event::Syn(_) => {
                if conn.client_gone {
                    // The engine gave up on the attempt before it arrived.
                    self.conns.remove(&id);
                    return;
                }
                let Some(provider) = self.world.provider_at(conn.mx_ip) else {
                    self.conns.remove(&id);
                    run.handle(now, Input::ConnectFailed(id, "connection refused"), self);
                    return;
                };
                let server = ServerConn::accept(Rc::clone(provider), conn.source_ip, now);
                let conn = self.conns.get_mut(&id).expect("present");
                conn.server = Some(server);
                conn.stage = Stage::Open;
                conn.to_client_at = now;
                conn.to_server_at = now;
                // The handshake's answer is immediate in turmoil: the engine learns of the
                // connection as it reaches the host; the greeting follows with its latency.
                run.handle(now, Input::Connected(id), self);
                self.flush_server(now, id);
            }
            Event::ToServer(_, bytes) => {
                let Some(server) = self.conns.get_mut(&id).and_then(|c| c.server.as_mut()) else {
                    return;
                };
                server.handle_bytes(now, &bytes);
                self.flush_server(now, id);
            }
            Event::ToClient(_, bytes) => {
                if !conn.client_gone {
                    run.handle(now, Input::Bytes(id, &bytes), self);
                }
            }
            Event::FinToServer(_) => {
                if let Some(mut conn) = self.conns.remove(&id)
                    && let Some(server) = conn.server.as_mut()
                {
                    server.close(now);
                }
            }
            Event::FinToClient(_) => {
                let engine_reads = !conn.client_gone;
                self.conns.remove(&id);
                if engine_reads {
                    run.handle(now, Input::Closed(id), self);
                }
            }
        }
    }
}

impl Transport for Network<'_> {
    fn resolve_mx(&mut self, _now: Time, domain: &str) -> Option<MxAnswer> {
        Some(self.world.resolve_mx(domain))
    }

    fn connect(&mut self, now: Time, connect: Connect<'_>) -> Result<(), String> {
        if !self.world.source_ips.contains(&connect.source_ip) {
            return Err("no such source IP in the simulation".into());
        }
        if self.cut.contains(&(connect.source_ip, connect.ip)) {
            return Err("connection refused".into());
        }
        let arrival = self.latency.arrival_from_engine(now);
        self.conns.insert(
            connect.conn,
            Conn {
                source_ip: connect.source_ip,
                mx_ip: connect.ip,
                stage: Stage::Connecting,
                server: None,
                to_server_at: now,
                to_client_at: now,
                broken: false,
                client_gone: false,
            },
        );
        self.push(arrival, Event::Syn(connect.conn));
        Ok(())
    }

    fn write(&mut self, now: Time, conn: ConnectionId, bytes: Vec<u8>) {
        self.send(now, conn, Event::ToServer(conn, bytes));
    }

    fn start_tls(&mut self, _now: Time, _conn: ConnectionId, _server_name: &str) -> bool {
        // Simulated TLS is negotiated as protocol, as under turmoil.
        true
    }

    fn close(&mut self, now: Time, id: ConnectionId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.client_gone = true;
        match conn.stage {
            // The attempt's arrival finds the engine gone and drops it.
            Stage::Connecting => {}
            Stage::Open => self.send(now, id, Event::FinToServer(id)),
            Stage::ServerGone => {
                self.conns.remove(&id);
            }
        }
    }
}
