//! The network driver: the engine under turmoil.
//!
//! Hosts, all on one OS thread: the engine (a turmoil client), one host per source IP that
//! opens the engine's connections from that address, and one host per MX running the
//! provider's receiver on port 25. MX hosts get addresses from 198.18.0.0/15 (the
//! benchmarking range) in scenario order; DNS answers come from the scenario. Turmoil is
//! seeded from the scenario seed and its epoch set to the scenario's start, and the engine's
//! `now` is the start plus simulated elapsed time, so a run is a function of its inputs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::mailauth::{Verifier, Zone};
use super::{ConnectionTrace, RunOutput};
use crate::auth::Signer;
use crate::config::Config;
use crate::engine::{Action, ConnectionId, Engine, EngineOptions, MxAnswer, MxHost};
use crate::isp::{Provider, Receiver};
use crate::scenario::{FaultKind, Generated, Scenario, SpfPosture};
use crate::smtp::server::ServerSession;
use crate::time::Time;

/// Read buffer per connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Simultaneous connections any listener can have queued (turmoil panics past it).
const TCP_CAPACITY: usize = 4096;

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
}

/// What a connection task reports to the engine.
enum NetEvent {
    Connected(ConnectionId),
    ConnectFailed(ConnectionId, String),
    Bytes(ConnectionId, Vec<u8>),
    Closed(ConnectionId),
}

/// What the engine asks of a connection task.
enum ConnCmd {
    Write(Vec<u8>),
}

struct ConnectRequest {
    conn: ConnectionId,
    ip: IpAddr,
    port: u16,
    commands: mpsc::UnboundedReceiver<ConnCmd>,
}

fn sim_now(start: Time) -> Time {
    let elapsed = turmoil::sim_elapsed().unwrap_or_default();
    start.plus_ms(elapsed.as_millis() as u64)
}

/// Runs `scenario` with `config` to its end, keeping the trace tests check (every injected
/// recipient, every RCPT time).
pub fn run(scenario: &Scenario, config: Config) -> Result<RunOutput, RunError> {
    run_with_progress(scenario, config, RunOptions { trace: true }, &mut |_| {})
}

/// How a run is recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Keep every injected recipient (`RunOutput::injected`) and the time of every RCPT
    /// (`ConnectionTrace::rcpt_times`): what whole-run checks need, and memory per message a
    /// user's run does without.
    pub trace: bool,
}

/// How far a run is, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub simulated_s: u64,
    pub duration_s: u64,
    /// Messages the providers have accepted so far.
    pub accepted: u64,
}

/// Steps between two progress reports.
const PROGRESS_EVERY_STEPS: u64 = 2_000;

/// [`run`], reporting progress every few thousand simulation steps.
pub fn run_with_progress(
    scenario: &Scenario,
    config: Config,
    options: RunOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunOutput, RunError> {
    let mut source_ips: Vec<IpAddr> = config
        .virtual_mtas
        .values()
        .flat_map(|v| v.source_hosts().into_iter().map(|h| h.ip))
        .collect();
    source_ips.sort();
    source_ips.dedup();
    if source_ips.is_empty() {
        return Err(RunError::NoSourceIps);
    }
    let engine = Engine::new(
        config,
        EngineOptions {
            seed: scenario.seed,
            backoff_clock: scenario.backoff_clock,
        },
    )?;

    // DNS: every ISP's MX hosts, with addresses in 198.18.0.0/15.
    let mut dns: BTreeMap<String, MxAnswer> = BTreeMap::new();
    let mut mx_hosts: Vec<(IpAddr, String, usize)> = Vec::new();
    for (isp_index, isp) in scenario.isps.iter().enumerate() {
        let mut hosts = Vec::new();
        for (mx_index, name) in isp.mx.iter().enumerate() {
            let ip = IpAddr::V4(Ipv4Addr::new(198, 18, isp_index as u8, mx_index as u8 + 1));
            if source_ips.contains(&ip) {
                return Err(RunError::AddressClash(ip));
            }
            mx_hosts.push((ip, name.clone(), isp_index));
            hosts.push(MxHost {
                preference: 10 * (mx_index as u16 + 1),
                name: name.clone(),
                addresses: vec![ip],
                port: 25,
            });
        }
        for domain in &isp.domains {
            dns.insert(domain.clone(), MxAnswer::Hosts(hosts.clone()));
        }
        // A records: a host named in `smtp-hosts` resolves to its own address.
        for host in &hosts {
            let mut own = host.clone();
            own.preference = 0;
            dns.entry(host.name.clone())
                .or_insert_with(|| MxAnswer::Hosts(vec![own]));
        }
    }
    let verifier = Rc::new(Verifier::new(sender_zone(
        scenario,
        engine.signer(),
        &source_ips,
    )));
    let providers: Vec<Rc<RefCell<Provider>>> = scenario
        .isps
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let seed = scenario.seed ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F);
            let mut provider = Provider::new(spec.clone(), seed);
            let verifier = Rc::clone(&verifier);
            provider.authenticator = Some(Box::new(move |peer, helo, mail_from, message| {
                verifier.check(peer, helo, mail_from, message)
            }));
            for w in &scenario.workloads {
                let sender = w.mail_from.to_ascii_lowercase();
                provider
                    .complaint_rates
                    .insert(sender.clone(), w.complaint_rate);
                provider.engagement_rates.insert(sender, w.engagement);
            }
            Rc::new(RefCell::new(provider))
        })
        .collect();
    for fault in &scenario.faults {
        if let FaultKind::ReplyOverride { isp, phase, reply } = &fault.kind {
            let index = scenario
                .isps
                .iter()
                .position(|i| &i.name == isp)
                .expect("validated");
            let from = scenario.start.plus_secs(fault.at_s);
            providers[index].borrow_mut().override_reply(
                *phase,
                reply.clone(),
                from,
                from.plus_secs(fault.for_s),
            );
        }
    }

    let mut builder = turmoil::Builder::new();
    builder
        .simulation_duration(Duration::from_secs(scenario.duration_s + 3600))
        .tick_duration(Duration::from_millis(scenario.tick_ms))
        .min_message_latency(Duration::from_millis(scenario.latency_ms.0))
        .max_message_latency(Duration::from_millis(scenario.latency_ms.1))
        .tcp_capacity(TCP_CAPACITY)
        .epoch(UNIX_EPOCH + Duration::from_millis(scenario.start.ms))
        .rng_seed(scenario.seed);
    let mut sim = builder.build();

    for (ip, _, isp_index) in &mx_hosts {
        let provider = Rc::clone(&providers[*isp_index]);
        let start = scenario.start;
        sim.host(*ip, move || {
            let provider = Rc::clone(&provider);
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", 25)).await?;
                loop {
                    let (stream, peer) = listener.accept().await?;
                    let provider = Rc::clone(&provider);
                    tokio::task::spawn_local(serve(stream, peer.ip(), provider, start));
                }
            }
        });
    }

    let (events_tx, events_rx) = mpsc::unbounded_channel::<NetEvent>();
    let mut source_txs: BTreeMap<IpAddr, mpsc::UnboundedSender<ConnectRequest>> = BTreeMap::new();
    for ip in &source_ips {
        let (tx, rx) = mpsc::unbounded_channel::<ConnectRequest>();
        source_txs.insert(*ip, tx);
        let rx = Rc::new(RefCell::new(Some(rx)));
        let events_tx = events_tx.clone();
        sim.host(*ip, move || {
            let rx = rx.borrow_mut().take();
            let events_tx = events_tx.clone();
            async move {
                let Some(mut rx) = rx else {
                    return Ok(());
                };
                while let Some(request) = rx.recv().await {
                    tokio::task::spawn_local(connection(request, events_tx.clone()));
                }
                Ok(())
            }
        });
    }
    drop(events_tx);

    let output = Rc::new(RefCell::new(None));
    let output_slot = Rc::clone(&output);
    let loop_state = EngineLoop {
        engine,
        generated: Generated::new(&scenario.workloads, scenario.seed, scenario.start),
        start: scenario.start,
        end: scenario.start.plus_secs(scenario.duration_s),
        dns,
        source_txs,
        conns: BTreeMap::new(),
        records: Vec::new(),
        events: Vec::new(),
        injected: Vec::new(),
        refused: crate::report::Refusals::default(),
        traces: BTreeMap::new(),
        trace: options.trace,
        last_queued: BTreeMap::new(),
    };
    sim.client("engine", async move {
        let state = loop_state.run(events_rx).await;
        *output_slot.borrow_mut() = Some(state);
        Ok(())
    });

    // Faults that change the network are applied between steps, at their times.
    let mut schedule: Vec<(u64, bool, usize)> = Vec::new();
    for (index, fault) in scenario.faults.iter().enumerate() {
        if !matches!(fault.kind, FaultKind::ReplyOverride { .. }) {
            schedule.push((fault.at_s * 1000, true, index));
            schedule.push(((fault.at_s + fault.for_s) * 1000, false, index));
        }
    }
    schedule.sort();
    let mut next_fault = 0;
    let mut cut: BTreeMap<(IpAddr, IpAddr), u32> = BTreeMap::new();
    let mut steps: u64 = 0;
    loop {
        let elapsed_ms = sim.elapsed().as_millis() as u64;
        steps += 1;
        if steps.is_multiple_of(PROGRESS_EVERY_STEPS) {
            progress(Progress {
                simulated_s: (elapsed_ms / 1000).min(scenario.duration_s),
                duration_s: scenario.duration_s,
                accepted: providers
                    .iter()
                    .map(|p| p.borrow().log.messages_accepted)
                    .sum(),
            });
        }
        while next_fault < schedule.len() && schedule[next_fault].0 <= elapsed_ms {
            let (_, begin, index) = schedule[next_fault];
            apply_fault(
                &sim,
                &scenario.faults[index].kind,
                begin,
                &source_ips,
                &mx_hosts,
                scenario,
                &mut cut,
            );
            next_fault += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(err) => return Err(RunError::Simulation(err.to_string())),
        }
    }
    let finished = output
        .borrow_mut()
        .take()
        .ok_or_else(|| RunError::Simulation("the engine did not finish".into()))?;
    let receivers = scenario
        .isps
        .iter()
        .zip(&providers)
        .map(|(spec, p)| (spec.name.clone(), p.borrow().log.clone()))
        .collect();
    let end = scenario.start.plus_secs(scenario.duration_s);
    let records = with_feedback(finished.records, &providers, end);
    Ok(RunOutput {
        records,
        events: finished.events,
        receivers,
        queues: finished.engine.queue_snapshots(),
        pending: finished.engine.recipients_pending(),
        injected: finished.injected,
        refused: finished.refused,
        connections: finished.traces.into_values().collect(),
    })
}

/// Adds an `f` record for every complaint a provider reports to the sender, at the time the
/// report arrives (before the run's end), in time order (a stable sort keeps the engine's
/// order among records of the same time). Complaints a provider does not report (Gmail,
/// iCloud) leave no record: the sender sees at most the provider's daily spam rate.
fn with_feedback(
    mut records: Vec<crate::engine::accounting::AcctRecord>,
    providers: &[Rc<RefCell<Provider>>],
    end: Time,
) -> Vec<crate::engine::accounting::AcctRecord> {
    use crate::engine::accounting::RecordType;
    // The last delivery of each (recipient, sender): the record a complaint is about carries
    // its queue and virtual MTA.
    let mut last_delivery: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (index, r) in records.iter().enumerate() {
        if r.record_type == RecordType::Delivered {
            last_delivery.insert((r.rcpt.as_str(), r.orig.as_str()), index);
        }
    }
    let mut feedback = Vec::new();
    for provider in providers {
        for complaint in &provider.borrow().log.complaints {
            let Some(report_at) = complaint.report_at.filter(|t| *t <= end) else {
                continue;
            };
            let delivery = last_delivery
                .get(&(complaint.rcpt.as_str(), complaint.mail_from.as_str()))
                .map(|i| &records[*i]);
            if let Some(d) = delivery {
                let mut f = d.clone();
                f.record_type = RecordType::Feedback;
                f.time_logged = report_at.max(d.time_logged);
                f.phase = None;
                f.dsn_status = String::new();
                f.dsn_diag = "abuse".to_string();
                f.bounce_category = String::new();
                feedback.push(f);
            }
        }
    }
    if !feedback.is_empty() {
        records.extend(feedback);
        records.sort_by_key(|r| r.time_logged);
    }
    records
}

fn apply_fault(
    sim: &turmoil::Sim<'_>,
    kind: &FaultKind,
    begin: bool,
    source_ips: &[IpAddr],
    mx_hosts: &[(IpAddr, String, usize)],
    scenario: &Scenario,
    cut: &mut BTreeMap<(IpAddr, IpAddr), u32>,
) {
    let isp_mx = |isp: &str| -> Vec<IpAddr> {
        let index = scenario.isps.iter().position(|i| i.name == isp);
        mx_hosts
            .iter()
            .filter(|(_, _, i)| Some(*i) == index)
            .map(|(ip, _, _)| *ip)
            .collect()
    };
    let (sources, targets): (Vec<IpAddr>, Vec<IpAddr>) = match kind {
        FaultKind::Outage { isp } => (source_ips.to_vec(), isp_mx(isp)),
        FaultKind::Partition { isp, source_ip } => (vec![*source_ip], isp_mx(isp)),
        FaultKind::MxDown { mx } => (
            source_ips.to_vec(),
            mx_hosts
                .iter()
                .filter(|(_, n, _)| n == mx)
                .map(|(ip, _, _)| *ip)
                .collect(),
        ),
        FaultKind::ReplyOverride { .. } => return,
    };
    // Overlapping faults may cut the same link: it heals when the last of them ends.
    for source in &sources {
        for target in &targets {
            let count = cut.entry((*source, *target)).or_insert(0);
            if begin {
                *count += 1;
                if *count == 1 {
                    sim.partition(*source, *target);
                }
            } else {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    sim.repair(*source, *target);
                }
            }
        }
    }
}

/// One receiver connection: the provider's policy over pmta-sim's server session.
async fn serve(
    mut stream: turmoil::net::TcpStream,
    peer: IpAddr,
    provider: Rc<RefCell<Provider>>,
    start: Time,
) -> std::io::Result<()> {
    provider.borrow_mut().now = sim_now(start);
    let mut session = ServerSession::new(Receiver::connect(Rc::clone(&provider), peer));
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        if let Some(out) = session.take_output() {
            stream.write_all(&out).await?;
        }
        if session.tls_pending {
            // STARTTLS is negotiated as protocol: the channel is now "encrypted".
            session.tls_established();
        }
        if session.is_closed() {
            break;
        }
        let n = stream.read(&mut buf).await?;
        provider.borrow_mut().now = sim_now(start);
        if n == 0 {
            break;
        }
        session.handle_bytes(&buf[..n]);
    }
    provider.borrow_mut().now = sim_now(start);
    Ok(())
}

/// One outgoing connection, run on its source IP's host.
async fn connection(request: ConnectRequest, events: mpsc::UnboundedSender<NetEvent>) {
    let ConnectRequest {
        conn,
        ip,
        port,
        mut commands,
    } = request;
    let stream = match turmoil::net::TcpStream::connect((ip, port)).await {
        Ok(stream) => stream,
        Err(err) => {
            let _ = events.send(NetEvent::ConnectFailed(conn, err.to_string()));
            return;
        }
    };
    let _ = events.send(NetEvent::Connected(conn));
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(ConnCmd::Write(bytes)) => {
                    if writer.write_all(&bytes).await.is_err() {
                        let _ = events.send(NetEvent::Closed(conn));
                        return;
                    }
                }
                None => return, // the engine closed the connection
            },
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = events.send(NetEvent::Closed(conn));
                    return;
                }
                Ok(n) => {
                    let _ = events.send(NetEvent::Bytes(conn, buf[..n].to_vec()));
                }
            },
        }
    }
}

struct EngineLoop {
    engine: Engine,
    generated: Generated,
    start: Time,
    end: Time,
    dns: BTreeMap<String, MxAnswer>,
    source_txs: BTreeMap<IpAddr, mpsc::UnboundedSender<ConnectRequest>>,
    conns: BTreeMap<ConnectionId, mpsc::UnboundedSender<ConnCmd>>,
    records: Vec<crate::engine::accounting::AcctRecord>,
    events: Vec<crate::engine::EngineEvent>,
    injected: Vec<(String, String)>,
    refused: crate::report::Refusals,
    traces: BTreeMap<ConnectionId, ConnectionTrace>,
    /// See [`RunOptions::trace`].
    trace: bool,
    /// Per queue, the index in `events` of its last `Queued` event: entries in the same second
    /// are folded into it (the report counts them per second), so the events kept grow with
    /// the run's seconds, not its messages.
    last_queued: BTreeMap<String, usize>,
}

impl EngineLoop {
    fn closed(&mut self, conn: ConnectionId, now: Time) {
        self.conns.remove(&conn);
        if let Some(trace) = self.traces.get_mut(&conn) {
            trace.closed.get_or_insert(now);
        }
    }

    async fn run(mut self, mut events_rx: mpsc::UnboundedReceiver<NetEvent>) -> EngineLoop {
        loop {
            let now = sim_now(self.start);
            for (_, injection) in self.generated.take_due(now) {
                let job = injection.job_id.clone();
                let env_id = injection.env_id.clone();
                let rcpts = if self.trace {
                    injection.recipients.clone()
                } else {
                    Vec::new()
                };
                let rcpt_count = injection.recipients.len() as u64;
                match self.engine.inject(now, injection) {
                    Ok(_) => self
                        .injected
                        .extend(rcpts.into_iter().map(|r| (job.clone(), r))),
                    Err(err) => {
                        // Refused mail is never silent: counted, listed, and in the summary.
                        let refused = &mut self.refused;
                        refused.messages += 1;
                        refused.recipients += rcpt_count;
                        *refused.by_reason.entry(err.kind().to_string()).or_insert(0) += 1;
                        if refused.first.len() < crate::report::REFUSALS_LISTED_MAX {
                            refused.first.push(crate::report::Refused {
                                at_s: now.unix_secs(),
                                job_id: job,
                                env_id,
                                recipients: rcpt_count,
                                reason: err.to_string(),
                            });
                        }
                    }
                }
            }
            self.drain(now);
            if now >= self.end {
                break;
            }
            let wake = [
                self.engine.poll_timeout(),
                self.generated.next_due(),
                Some(self.end),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("end is always there");
            let sleep_ms = wake.since(now);
            tokio::select! {
                biased;
                event = events_rx.recv() => {
                    let now = sim_now(self.start);
                    match event {
                        Some(NetEvent::Connected(conn)) => self.engine.handle_connected(now, conn),
                                                Some(NetEvent::ConnectFailed(conn, reason)) => {
                            self.closed(conn, now);
                            self.engine.handle_connect_failed(now, conn, &reason)
                        }
                        Some(NetEvent::Bytes(conn, bytes)) => self.engine.handle_bytes(now, conn, &bytes),
                                                Some(NetEvent::Closed(conn)) => {
                            self.closed(conn, now);
                            self.engine.handle_closed(now, conn)
                        }
                        None => {}
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                    let now = sim_now(self.start);
                    self.engine.handle_timeout(now);
                }
            }
        }
        self
    }

    fn drain(&mut self, now: Time) {
        // Actions answered here (MX lookups, refused connects) may queue more; this loop
        // takes them too, since it polls until the engine has nothing left.
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::ResolveMx { domain } => {
                    let answer = self
                        .dns
                        .get(&domain)
                        .cloned()
                        .unwrap_or(MxAnswer::NoMailHost);
                    self.engine.handle_mx(now, &domain, answer);
                }
                Action::Connect {
                    conn,
                    queue,
                    source_ip,
                    ip,
                    port,
                    ..
                } => {
                    self.traces.insert(
                        conn,
                        ConnectionTrace {
                            queue,
                            source_ip,
                            opened: now,
                            closed: None,
                            rcpt_times: Vec::new(),
                            messages: 0,
                        },
                    );
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.conns.insert(conn, tx);
                    let request = ConnectRequest {
                        conn,
                        ip,
                        port,
                        commands: rx,
                    };
                    match self.source_txs.get(&source_ip) {
                        Some(host) if host.send(request).is_ok() => {}
                        _ => {
                            self.conns.remove(&conn);
                            self.engine.handle_connect_failed(
                                now,
                                conn,
                                "no such source IP in the simulation",
                            );
                        }
                    }
                }
                Action::Write { conn, bytes } => {
                    // Command writes start with a verb; message data (which may hold any
                    // text) is written on its own and is not counted.
                    let is_commands = [
                        &b"EHLO"[..],
                        b"HELO",
                        b"MAIL",
                        b"RCPT",
                        b"DATA",
                        b"RSET",
                        b"QUIT",
                        b"STARTTLS",
                    ]
                    .iter()
                    .any(|verb| bytes.starts_with(verb));
                    if let Some(trace) = self
                        .traces
                        .get_mut(&conn)
                        .filter(|_| is_commands && self.trace)
                    {
                        for line in bytes.split(|b| *b == b'\n') {
                            if line.starts_with(b"RCPT TO:") {
                                trace.rcpt_times.push(now);
                            } else if line.starts_with(b"MAIL FROM:") {
                                trace.messages += 1;
                            }
                        }
                    }
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.send(ConnCmd::Write(bytes));
                    }
                }
                Action::StartTls { conn, .. } => self.engine.handle_tls_established(now, conn),
                Action::Close { conn } => self.closed(conn, now),
            }
        }
        while let Some(record) = self.engine.poll_record() {
            self.records.push(record);
        }
        while let Some(event) = self.engine.poll_event() {
            if let crate::engine::EngineEvent::Queued {
                at,
                queue,
                recipients,
            } = &event
                && let Some(&index) = self.last_queued.get(queue)
                && let crate::engine::EngineEvent::Queued {
                    at: last_at,
                    recipients: total,
                    ..
                } = &mut self.events[index]
                && last_at.unix_secs() == at.unix_secs()
            {
                *total += recipients;
                continue;
            }
            if let crate::engine::EngineEvent::Queued { queue, .. } = &event {
                self.last_queued.insert(queue.clone(), self.events.len());
            }
            self.events.push(event);
        }
    }
}

/// The simulated DNS the receivers verify against: the scenario's own TXT records first (they
/// win: a wrong key there is a broken DKIM setup), then what the sender's posture publishes
/// for every sending domain (SPF over the source IPs, DMARC `p=none`), the engine's DKIM keys,
/// and a PTR name per source IP that resolves back to it.
pub fn sender_zone(scenario: &Scenario, signer: &Signer, source_ips: &[IpAddr]) -> Zone {
    let posture = &scenario.sender;
    let mut zone = Zone::default();
    for (name, value) in &posture.dns_txt {
        zone.add_txt(name, value);
    }
    // Envelope domains (SPF) and From: domains (DMARC) of every stream.
    let mut domains: Vec<String> = scenario
        .workloads
        .iter()
        .flat_map(|w| [Some(&w.mail_from), w.header_from.as_ref()])
        .flatten()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect();
    domains.sort();
    domains.dedup();
    let spf = match posture.spf {
        SpfPosture::Pass => Some(
            source_ips
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(v4) => format!("ip4:{v4}"),
                    IpAddr::V6(v6) => format!("ip6:{v6}"),
                })
                .fold("v=spf1".to_string(), |record, term| record + " " + &term)
                + " -all",
        ),
        // TEST-NET-3: never a source IP in a simulation.
        SpfPosture::Fail => Some("v=spf1 ip4:203.0.113.0/24 -all".to_string()),
        SpfPosture::None => None,
    };
    for domain in &domains {
        if let Some(record) = &spf {
            zone.add_txt(domain, record);
        }
        if posture.dmarc {
            zone.add_txt(&format!("_dmarc.{domain}"), "v=DMARC1; p=none");
        }
    }
    if posture.publish_dkim_keys {
        for s in signer.signers() {
            if let Some(record) = &s.stand_in_record {
                zone.add_txt(&format!("{}._domainkey.{}", s.selector, s.domain), record);
            }
        }
    }
    if posture.ptr {
        let base = domains.first().map_or("pmta-sim.example", String::as_str);
        for (index, ip) in source_ips.iter().enumerate() {
            let name = format!("mta{}.{base}", index + 1);
            zone.add_ptr(*ip, &name);
            if let IpAddr::V4(v4) = ip {
                zone.add_a(&name, *v4);
            }
        }
    }
    zone
}
