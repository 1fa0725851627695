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
pub mod world;

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use thiserror::Error;

use self::output::{AcctOut, Collector, RunOutput};
use self::pump::{Input, Pump, Transport};
use self::world::World;
use crate::config::Config;
use crate::engine::accounting::{AcctFormat, CsvWriter};
use crate::engine::{Engine, EngineOptions};
use crate::isp::Provider;
use crate::report::aggregate::{Aggregator, Setup};
use crate::scenario::{Generated, Scenario};
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
    /// Where the accounting records go as they come, in the format of the configuration's
    /// `<acct-file>` (PowerMTA's CSV).
    pub acct: Option<Box<dyn std::io::Write>>,
}

impl RunOptions {
    /// Everything kept, for whole-run checks.
    pub fn traced() -> RunOptions {
        RunOptions {
            trace: true,
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

/// The engine's side of one simulated run: the pump, the workload still to inject and what
/// has been collected. A driver calls [`SimRun::inject_due`] and [`SimRun::handle`] with its
/// time and its transport, and sleeps until [`SimRun::next_wake`] or its next input.
pub struct SimRun {
    pump: Pump,
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
        let engine = Engine::new(
            config,
            EngineOptions {
                seed: scenario.seed,
                backoff_clock: scenario.backoff_clock,
                bodies: crate::engine::Bodies::Engine,
            },
        )?;
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
        let run = SimRun {
            pump: Pump::new(engine),
            generated: Generated::new(&scenario.workloads, scenario.seed, scenario.start),
            output: Collector::new(aggregator, acct, options.trace, end),
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
            match self
                .pump
                .inject(now, injection, transport, &mut self.output)
            {
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

    /// Feeds the engine one input at `now`.
    pub fn handle(&mut self, now: Time, input: Input<'_>, transport: &mut impl Transport) {
        self.catch_up(now);
        self.pump.handle(now, input, transport, &mut self.output);
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

    /// The next time something is due without any input: the engine's timer, the next
    /// message of the workload, or the end of the run.
    pub fn next_wake(&self) -> Time {
        [
            self.pump.poll_timeout(),
            self.generated.next_due(),
            Some(self.end),
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the end is always there")
    }

    /// The engine's next timer alone.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.pump.poll_timeout()
    }

    /// Everything the run produced, with the providers' logs; `Err` when the accounting
    /// file could not be written.
    pub fn finish(mut self, world: &World, scenario: &Scenario) -> Result<RunOutput, RunError> {
        self.catch_up(self.end);
        let engine = self.pump.into_engine();
        Ok(self.output.finish(
            scenario,
            world.receiver_logs(scenario),
            engine.queue_snapshots(),
            engine.recipients_pending(),
        )?)
    }
}
