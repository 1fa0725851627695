//! Drivers: the only room that runs the engine against a clock and a network.
//!
//! Owns the event loops that turn engine actions into I/O and I/O into engine inputs. The
//! network driver ([`network`]) runs everything inside tokio's turmoil: the engine, one host
//! per source IP (so receivers see each source IP as its own address), one host per MX, in
//! simulated time with seeded latency and scheduled faults. This room may import tokio and
//! turmoil; every `select!` in it is `biased;`, and it reads time only from the simulation.

pub mod network;

use std::net::IpAddr;

use crate::engine::accounting::AcctRecord;
use crate::engine::{EngineEvent, QueueSnapshot};
use crate::isp::ReceiverLog;
use crate::time::Time;

/// One connection as the engine's side saw it: for whole-run checks of the limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionTrace {
    pub queue: String,
    pub source_ip: IpAddr,
    pub opened: Time,
    pub closed: Option<Time>,
    /// When each RCPT command was written.
    pub rcpt_times: Vec<Time>,
    /// MAIL commands written (transactions started).
    pub transactions: u64,
}

/// Everything a run produced.
#[derive(Debug)]
pub struct RunOutput {
    pub records: Vec<AcctRecord>,
    pub events: Vec<EngineEvent>,
    /// Each provider's own log, by ISP name.
    pub receivers: Vec<(String, ReceiverLog)>,
    pub queues: Vec<QueueSnapshot>,
    /// Recipients injected, as (job id, recipient).
    pub injected: Vec<(String, String)>,
    /// Recipients still queued when the run ended.
    pub pending: usize,
    /// Messages the engine refused at injection, with the reason.
    pub refused: Vec<String>,
    /// Every connection the engine opened, in order.
    pub connections: Vec<ConnectionTrace>,
}
