//! Everything of a simulated run that is not I/O, shared by every driver.
//!
//! Owns the seam between the engine and the drivers: the [`pump`] (the one loop that feeds
//! the engine and carries out its actions through a [`pump::Transport`], used by the
//! simulated drivers, the live driver, the test harness and the benchmarks), the simulated
//! [`world`] built from a scenario (providers, MX hosts, DNS, the zone receivers verify
//! against), its network [`faults`] as link changes, the provider side of a connection
//! ([`server`]), what a run produced ([`output`]) and [`SimRun`], the state of one simulated
//! run that a driver advances. The drivers under it are small: turmoil's hosts and steps
//! (`driver::network`), a virtual-time event queue (`driver::fast`), real sockets
//! (`driver::live`).
//!
//! Must not: import tokio or turmoil, read a clock or files, or draw unseeded randomness.

pub mod faults;
pub mod mailauth;
pub mod output;
pub mod pump;
pub mod server;
pub mod shared;
pub mod world;

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use thiserror::Error;

use self::output::{AcctOut, Collector, RunOutput};
use self::pump::{Connect, Input, Pump, Transport};
use self::shared::SharedStore;
use self::world::World;
use crate::config::Config;
use crate::engine::accounting::{AcctFormat, CsvWriter};
use crate::engine::shared::{PermitAnswer, PermitRequest};
use crate::engine::{ConnectionId, Engine, EngineOptions, MessageData, MessageId, MxAnswer};
use crate::isp::Provider;
use crate::report::aggregate::{Aggregator, Setup};
use crate::scenario::{FaultKind, Generated, Scenario};
use crate::time::Time;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("the configuration has no virtual MTA with an smtp-source-host: nothing could send")]
    NoSourceIps,
    #[error("DKIM: {0}")]
    Dkim(#[from] crate::auth::DkimError),
    #[error("simulation failed: {0}")]
    Simulation(String),
    #[error("source IP {0} is also an MX address in the simulated network")]
    AddressClash(IpAddr),
    #[error("cannot write the accounting file: {0}")]
    Acct(#[from] std::io::Error),
}

/// How a run is recorded.
#[derive(Default)]
pub struct RunOptions {
    /// Keep every record, event (but `QueueHeld`), injected recipient (`RunOutput::injected`) and connection
    /// with the time of every RCPT (`ConnectionTrace::rcpt_times`), and the providers'
    /// detailed logs: what whole-run checks need, and memory per message a user's run does
    /// without.
    pub trace: bool,
    /// Keep the accounting records (and nothing else of the trace) until the caller takes
    /// them ([`SimRun::take_records`]): a stepped run folds them as it goes, so its memory
    /// does not grow with the run's messages.
    pub records: bool,
    /// Where the accounting records go as they come, in the format of the configuration's
    /// `<acct-file>` (PowerMTA's CSV).
    pub acct: Option<Box<dyn std::io::Write>>,
}

impl RunOptions {
    /// Everything kept, for whole-run checks.
    pub fn traced() -> RunOptions {
        RunOptions {
            trace: true,
            records: true,
            acct: None,
        }
    }

    /// Only the accounting records, for a caller that takes them as the run goes.
    pub fn records_only() -> RunOptions {
        RunOptions {
            trace: false,
            records: true,
            acct: None,
        }
    }
}

/// How far a run is, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub simulated_s: u64,
    pub duration_s: u64,
    /// Messages the providers have accepted so far.
    pub accepted: u64,
}

/// The engine's side of one simulated run: the pump of each engine node, the workload still
/// to inject and what has been collected. A driver calls [`SimRun::inject_due`] and
/// [`SimRun::handle`] with its time and its transport, and sleeps until
/// [`SimRun::next_wake`] or its next input. With several nodes (`[engine] nodes`), each
/// message goes to the next node in turn, every node sends from the same source IPs, and
/// their `shared-throttles` requests go to one [`SharedStore`].
pub struct SimRun {
    /// One pump per node; node `i`'s connection ids start at `i << 40`.
    pumps: Vec<Pump>,
    store: SharedStore,
    /// The node the next injected message goes to.
    next_node: usize,
    generated: Generated,
    output: Collector,
    /// The providers by scenario name, asked after each step what they logged.
    providers: Vec<(String, Rc<RefCell<Provider>>)>,
    start: Time,
    end: Time,
}

impl SimRun {
    /// The engine for `scenario` with `config`, and the world it sends to.
    pub fn new(
        scenario: &Scenario,
        config: Config,
        options: RunOptions,
    ) -> Result<(SimRun, World), RunError> {
        let mut engines = Vec::new();
        for node in 0..scenario.nodes.max(1) {
            engines.push(Engine::new(
                config.clone(),
                EngineOptions {
                    seed: scenario.seed,
                    backoff_clock: scenario.backoff_clock,
                    bodies: crate::engine::Bodies::Engine,
                    node,
                },
            )?);
        }
        let engine = &engines[0];
        let world = World::build(scenario, engine.config(), engine.signer(), options.trace)?;
        let acct: Option<AcctOut> = match options.acct {
            Some(out) => Some(CsvWriter::with_format(
                out,
                AcctFormat::from_config(engine.config()),
            )?),
            None => None,
        };
        let setup = Setup {
            start_s: scenario.start.unix_secs(),
            duration_s: scenario.duration_s,
            providers: scenario
                .isps
                .iter()
                .map(|i| (i.name.clone(), i.domains.clone()))
                .collect(),
        };
        let end = scenario.start.plus_secs(scenario.duration_s);
        let aggregator = Aggregator::new(&setup, &scenario.expect);
        let providers = scenario
            .isps
            .iter()
            .zip(&world.providers)
            .map(|(spec, p)| (spec.name.clone(), Rc::clone(p)))
            .collect();
        let store_down = scenario
            .faults
            .iter()
            .filter(|f| f.kind == FaultKind::StoreDown)
            .map(|f| {
                (
                    scenario.start.plus_secs(f.at_s),
                    scenario.start.plus_secs(f.at_s + f.for_s),
                )
            })
            .collect();
        let run = SimRun {
            pumps: engines.into_iter().map(Pump::new).collect(),
            store: SharedStore::new(store_down),
            next_node: 0,
            generated: Generated::new(&scenario.workloads, scenario.seed, scenario.start),
            output: Collector::new(aggregator, acct, options.trace, options.records, end),
            providers,
            start: scenario.start,
            end,
        };
        Ok((run, world))
    }

    pub fn start(&self) -> Time {
        self.start
    }

    /// When the run ends.
    pub fn end(&self) -> Time {
        self.end
    }

    /// Hands the engine every message of the workload due at or before `now`; mail it
    /// refuses is counted, never silent.
    pub fn inject_due(&mut self, now: Time, transport: &mut impl Transport) {
        self.catch_up(now);
        for (_, injection) in self.generated.take_due(now) {
            let job = injection.job_id.clone();
            let env_id = injection.env_id.clone();
            let count = injection.recipients.len() as u64;
            let rcpts = self
                .output_needs_recipients()
                .then(|| injection.recipients.clone());
            let node = self.next_node;
            self.next_node = (node + 1) % self.pumps.len();
            let mut transport = NodeTransport {
                inner: transport,
                store: &mut self.store,
                node: node as u16,
            };
            match self.pumps[node].inject(now, injection, &mut transport, &mut self.output) {
                Ok(_) => {
                    if let Some(rcpts) = rcpts {
                        self.output.injected(&job, &rcpts);
                    }
                }
                Err(err) => self.output.refused(now, &err, job, env_id, count),
            }
        }
    }

    fn output_needs_recipients(&self) -> bool {
        self.output.traces()
    }

    /// Feeds the engine one input at `now`: a connection's input to the node that opened
    /// it, a timeout to every node whose timer is due, the rest to every node.
    pub fn handle(&mut self, now: Time, input: Input<'_>, transport: &mut impl Transport) {
        self.catch_up(now);
        let conn_node = |conn: ConnectionId| (conn.0 >> 40) as usize;
        let nodes: Vec<usize> = match &input {
            Input::Connected(conn)
            | Input::ConnectFailed(conn, _)
            | Input::Bytes(conn, _)
            | Input::TlsEstablished(conn)
            | Input::Closed(conn) => vec![conn_node(*conn)],
            Input::MessageData(message, _) => vec![(message.0 >> 40) as usize],
            Input::Timeout => (0..self.pumps.len())
                .filter(|n| self.pumps[*n].poll_timeout().is_some_and(|t| t <= now))
                .collect(),
            Input::Mx(..) | Input::Permits(..) | Input::Stop => (0..self.pumps.len()).collect(),
        };
        if let [node] = nodes[..] {
            let mut transport = NodeTransport {
                inner: transport,
                store: &mut self.store,
                node: node as u16,
            };
            self.pumps[node].handle(now, input, &mut transport, &mut self.output);
            return;
        }
        for node in nodes {
            let mut transport = NodeTransport {
                inner: transport,
                store: &mut self.store,
                node: node as u16,
            };
            let input = match &input {
                Input::Mx(domain, answer) => Input::Mx(domain, answer.clone()),
                Input::Permits(queue, request, answer) => Input::Permits(queue, request, *answer),
                Input::Stop => Input::Stop,
                _ => Input::Timeout,
            };
            self.pumps[node].handle(now, input, &mut transport, &mut self.output);
        }
    }

    /// Before anything at `now`: what the providers logged since the last step (it
    /// happened before `now`), and the `f` records due before `now`.
    fn catch_up(&mut self, now: Time) {
        for (name, provider) in &self.providers {
            let recent = {
                let mut p = provider.borrow_mut();
                if !p.has_recent() {
                    continue;
                }
                p.take_recent()
            };
            self.output.provider_recent(name, recent);
        }
        self.output.advance(now);
    }

    /// Sets the volume of workload stream `stream`'s sending day opening `at_ms` after the
    /// start (see [`Generated::set_day`]): how a driver stepping the run a day at a time
    /// lets the caller decide the next day. `false` when that day has begun or the stream
    /// has no daily shape.
    pub fn set_day_volume(&mut self, stream: usize, at_ms: u64, span_ms: u64, count: u64) -> bool {
        self.generated.set_day(stream, at_ms, span_ms, count)
    }

    /// The accounting records so far and not taken (runs that keep records; otherwise none).
    pub fn records(&self) -> &[crate::engine::accounting::AcctRecord] {
        self.output.records()
    }

    /// The records kept since the last take ([`RunOptions::records`]), handed over.
    pub fn take_records(&mut self) -> Vec<crate::engine::accounting::AcctRecord> {
        self.output.take_records()
    }

    /// The next time something is due without any input: the engine's timer, the next
    /// message of the workload, or the end of the run.
    pub fn next_wake(&self) -> Time {
        [
            self.poll_timeout(),
            self.generated.next_due(),
            Some(self.end),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the end is always there")
    }

    /// The engines' next timer alone.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.pumps.iter().filter_map(Pump::poll_timeout).min()
    }

    /// Everything the run produced, with the providers' logs; `Err` when the accounting
    /// file could not be written.
    pub fn finish(mut self, world: &World, scenario: &Scenario) -> Result<RunOutput, RunError> {
        self.catch_up(self.end);
        let engines: Vec<Engine> = self.pumps.into_iter().map(Pump::into_engine).collect();
        Ok(self.output.finish(
            scenario,
            world.receiver_logs(scenario),
            merged_snapshots(&engines),
            engines.iter().map(Engine::recipients_pending).sum(),
        )?)
    }
}

/// The queues of every node, one snapshot per queue name (counts added up).
fn merged_snapshots(engines: &[Engine]) -> Vec<crate::engine::QueueSnapshot> {
    let mut merged: indexmap::IndexMap<String, crate::engine::QueueSnapshot> =
        indexmap::IndexMap::new();
    for snapshot in engines.iter().flat_map(Engine::queue_snapshots) {
        match merged.get_mut(&snapshot.name) {
            Some(into) => {
                into.recipients_queued += snapshot.recipients_queued;
                into.connections += snapshot.connections;
                into.retry_until = into.retry_until.max(snapshot.retry_until);
            }
            None => {
                merged.insert(snapshot.name.clone(), snapshot);
            }
        }
    }
    merged.into_values().collect()
}

/// A driver's transport as one node sees it: everything goes to the driver's network, but
/// the node's `shared-throttles` requests go to the run's [`SharedStore`].
struct NodeTransport<'a, T: Transport> {
    inner: &'a mut T,
    store: &'a mut SharedStore,
    node: u16,
}

impl<T: Transport> Transport for NodeTransport<'_, T> {
    fn resolve_mx(&mut self, now: Time, domain: &str) -> Option<MxAnswer> {
        self.inner.resolve_mx(now, domain)
    }

    fn connect(&mut self, now: Time, connect: Connect<'_>) -> Result<(), String> {
        self.inner.connect(now, connect)
    }

    fn write(&mut self, now: Time, conn: ConnectionId, bytes: Vec<u8>) {
        self.inner.write(now, conn, bytes)
    }

    fn start_tls(&mut self, now: Time, conn: ConnectionId, server_name: &str) -> bool {
        self.inner.start_tls(now, conn, server_name)
    }

    fn close(&mut self, now: Time, conn: ConnectionId) {
        self.inner.close(now, conn)
    }

    fn load_message(
        &mut self,
        now: Time,
        message: MessageId,
    ) -> Option<Result<MessageData, String>> {
        self.inner.load_message(now, message)
    }

    fn permits(&mut self, now: Time, queue: &str, request: &PermitRequest) -> Option<PermitAnswer> {
        self.store.answer(now, self.node, queue, request)
    }
}
