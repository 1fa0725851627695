//! The network driver: a simulated run under turmoil.
//!
//! Hosts, all on one OS thread: the engine (a turmoil client), one host per source IP that
//! opens the engine's connections from that address, and one host per MX running its
//! provider's side of each connection on port 25. Everything else — the world, the pump, the
//! faults as link changes, the provider connection, the output — is the `sim` room's; this
//! file keeps only turmoil's hosts, sockets, partitions and the step loop. Turmoil is seeded
//! from the scenario seed and its epoch set to the scenario's start, and the engine's `now`
//! is the start plus simulated elapsed time, so a run is a function of its inputs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::{ConnectionId, MxAnswer};
use crate::isp::Provider;
use crate::scenario::Scenario;
use crate::sim::faults::LinkSchedule;
use crate::sim::output::RunOutput;
use crate::sim::pump::{Connect, Input, Transport};
use crate::sim::server::ServerConn;
use crate::sim::world::World;
use crate::sim::{Progress, RunError, RunOptions, SimRun};
use crate::time::Time;

/// Read buffer per connection.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Simultaneous connections any listener can have queued (turmoil panics past it).
const TCP_CAPACITY: usize = 4096;
/// Steps between two progress reports.
const PROGRESS_EVERY_STEPS: u64 = 2_000;

/// What a connection task reports to the engine.
enum NetEvent {
    Connected(ConnectionId),
    ConnectFailed(ConnectionId, String),
    Bytes(ConnectionId, Vec<u8>),
    Closed(ConnectionId),
}

struct ConnectRequest {
    conn: ConnectionId,
    ip: IpAddr,
    port: u16,
    writes: mpsc::UnboundedReceiver<Vec<u8>>,
}

fn sim_now(start: Time) -> Time {
    let elapsed = turmoil::sim_elapsed().unwrap_or_default();
    start.plus_ms(elapsed.as_millis() as u64)
}

/// Runs `scenario` with `config` to its end, keeping the trace tests check (every injected
/// recipient, every RCPT time).
pub fn run(scenario: &Scenario, config: Config) -> Result<RunOutput, RunError> {
    run_with_progress(scenario, config, RunOptions::traced(), &mut |_| {})
}

/// [`run`], reporting progress every few thousand simulation steps.
pub fn run_with_progress(
    scenario: &Scenario,
    config: Config,
    options: RunOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunOutput, RunError> {
    let (sim_run, world) = SimRun::new(scenario, config, options)?;
    let world = Rc::new(world);
    let mut links = LinkSchedule::new(scenario, &world);

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

    for site in &world.mx_sites {
        let provider = Rc::clone(&world.providers[site.provider]);
        let start = scenario.start;
        sim.host(site.ip, move || {
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
    for ip in &world.source_ips {
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

    let finished = Rc::new(RefCell::new(None));
    let finished_slot = Rc::clone(&finished);
    let transport = Turmoil {
        world: Rc::clone(&world),
        source_txs,
        conns: BTreeMap::new(),
    };
    sim.client("engine", async move {
        let run = engine_loop(sim_run, transport, events_rx).await;
        *finished_slot.borrow_mut() = Some(run);
        Ok(())
    });

    let mut steps: u64 = 0;
    loop {
        let elapsed_ms = sim.elapsed().as_millis() as u64;
        steps += 1;
        if steps.is_multiple_of(PROGRESS_EVERY_STEPS) {
            progress(Progress {
                simulated_s: (elapsed_ms / 1000).min(scenario.duration_s),
                duration_s: scenario.duration_s,
                accepted: world.accepted(),
            });
        }
        // Faults that change the network are applied between steps, at their times.
        for (_, change) in links.take_due(scenario.start.plus_ms(elapsed_ms)) {
            if change.cut {
                sim.partition(change.source, change.target);
            } else {
                sim.repair(change.source, change.target);
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(err) => return Err(RunError::Simulation(err.to_string())),
        }
    }
    let run = finished
        .borrow_mut()
        .take()
        .ok_or_else(|| RunError::Simulation("the engine did not finish".into()))?;
    run.finish(&world, scenario)
}

/// The engine's turmoil client: workload in, network events in, timers, until the end.
async fn engine_loop(
    mut run: SimRun,
    mut transport: Turmoil,
    mut events_rx: mpsc::UnboundedReceiver<NetEvent>,
) -> SimRun {
    let start = run.start();
    loop {
        let now = sim_now(start);
        run.inject_due(now, &mut transport);
        if now >= run.end() {
            break;
        }
        let sleep_ms = run.next_wake().since(now);
        tokio::select! {
            biased;
            event = events_rx.recv() => {
                let now = sim_now(start);
                match event {
                    Some(NetEvent::Connected(conn)) => {
                        run.handle(now, Input::Connected(conn), &mut transport)
                    }
                    Some(NetEvent::ConnectFailed(conn, reason)) => {
                        run.handle(now, Input::ConnectFailed(conn, &reason), &mut transport)
                    }
                    Some(NetEvent::Bytes(conn, bytes)) => {
                        run.handle(now, Input::Bytes(conn, &bytes), &mut transport)
                    }
                    Some(NetEvent::Closed(conn)) => {
                        run.handle(now, Input::Closed(conn), &mut transport)
                    }
                    None => {}
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                run.handle(sim_now(start), Input::Timeout, &mut transport);
            }
        }
    }
    run
}

/// The engine's connections as turmoil streams, each run by its source IP's host.
struct Turmoil {
    world: Rc<World>,
    source_txs: BTreeMap<IpAddr, mpsc::UnboundedSender<ConnectRequest>>,
    conns: BTreeMap<ConnectionId, mpsc::UnboundedSender<Vec<u8>>>,
}

impl Transport for Turmoil {
    fn resolve_mx(&mut self, _now: Time, domain: &str) -> Option<MxAnswer> {
        Some(self.world.resolve_mx(domain))
    }

    fn connect(&mut self, _now: Time, connect: Connect<'_>) -> Result<(), String> {
        let (tx, writes) = mpsc::unbounded_channel();
        let request = ConnectRequest {
            conn: connect.conn,
            ip: connect.ip,
            port: connect.port,
            writes,
        };
        match self.source_txs.get(&connect.source_ip) {
            Some(host) if host.send(request).is_ok() => {
                self.conns.insert(connect.conn, tx);
                Ok(())
            }
            _ => Err("no such source IP in the simulation".into()),
        }
    }

    fn write(&mut self, _now: Time, conn: ConnectionId, bytes: Vec<u8>) {
        if let Some(tx) = self.conns.get(&conn) {
            let _ = tx.send(bytes);
        }
    }

    fn start_tls(&mut self, _now: Time, _conn: ConnectionId, _server_name: &str) -> bool {
        // Simulated TLS is negotiated as protocol: done as soon as the 220 is read.
        true
    }

    fn close(&mut self, _now: Time, conn: ConnectionId) {
        // Dropping the sender ends the connection's task, which drops the stream.
        self.conns.remove(&conn);
    }
}

/// One receiver connection on an MX host.
async fn serve(
    mut stream: turmoil::net::TcpStream,
    peer: IpAddr,
    provider: Rc<RefCell<Provider>>,
    start: Time,
) {
    let mut conn = ServerConn::accept(provider, peer, sim_now(start));
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    loop {
        if let Some(out) = conn.take_output()
            && stream.write_all(&out).await.is_err()
        {
            break;
        }
        if conn.is_closed() {
            break;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => conn.handle_bytes(sim_now(start), &buf[..n]),
        }
    }
    conn.close(sim_now(start));
}

/// One outgoing connection, run on its source IP's host.
async fn connection(request: ConnectRequest, events: mpsc::UnboundedSender<NetEvent>) {
    let ConnectRequest {
        conn,
        ip,
        port,
        mut writes,
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
            bytes = writes.recv() => match bytes {
                Some(bytes) => {
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
