//! Drivers: the only room that runs the engine against a clock and a network.
//!
//! Owns the event loops that turn engine actions into I/O and I/O into engine inputs. The
//! network driver ([`network`]) runs everything inside tokio's turmoil: the engine, one host
//! per source IP (so receivers see each source IP as its own address), one host per MX, in
//! simulated time with seeded latency and scheduled faults. This room may import tokio and
//! turmoil; every `select!` in it is `biased;`, and it reads time only from the simulation.

pub mod mailauth;
pub mod network;

use std::path::{Path, PathBuf};

use crate::scenario::{IspSpec, Scenario, ScenarioError, parse_model};

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

/// Where `model = "NAME"` is looked up: `isp-models/` beside the scenario's directory
/// (`scenarios/x.toml` → `isp-models/`), else `isp-models/` in the working directory.
pub fn models_dir(scenario: &Path) -> PathBuf {
    let absolute = std::fs::canonicalize(scenario).unwrap_or_else(|_| scenario.to_path_buf());
    let beside = absolute
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("isp-models"));
    match beside {
        Some(dir) if dir.is_dir() => dir,
        _ => PathBuf::from("isp-models"),
    }
}

/// Reads a scenario file and the provider models it names.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    let unreadable = |file: &Path, err: std::io::Error| ScenarioError {
        file: file.display().to_string(),
        line: 1,
        column: 1,
        message: format!("cannot read: {err}"),
    };
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
    let dir = models_dir(path);
    let load = |name: &str| -> Result<IspSpec, ScenarioError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ScenarioError {
                file: path.display().to_string(),
                line: 1,
                column: 1,
                message: format!("`{name}` is not a model name (letters, digits, - and _)"),
            });
        }
        let file = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&file).map_err(|e| unreadable(&file, e))?;
        parse_model(&file, &text)
    };
    Scenario::parse_with(path, &text, &load)
}
