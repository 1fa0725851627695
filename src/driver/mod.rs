//! Drivers: the only room that runs the engine against a clock and a network.
//!
//! Owns the event loops that turn engine actions into I/O and I/O into engine inputs. The
//! network driver ([`network`]) runs everything inside tokio's turmoil: the engine, one host
//! per source IP (so receivers see each source IP as its own address), one host per MX, in
//! simulated time with seeded latency and scheduled faults. This room may import tokio and
//! turmoil; every `select!` in it is `biased;`, and it reads time only from the simulation.

pub mod estimate;
pub mod live;
pub mod mailauth;
pub mod network;
pub mod progress;

use std::path::{Path, PathBuf};

use crate::scenario::{ConfigSource, IspSpec, Scenario, ScenarioError, parse_model};

use std::net::IpAddr;

use crate::engine::accounting::AcctRecord;
use crate::engine::{EngineEvent, QueueSnapshot};
use crate::isp::ReceiverLog;
use crate::report;
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
    /// MAIL FROM commands written: the messages the connection carried.
    pub messages: u64,
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
    pub refused: report::Refusals,
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

/// Largest scenario file read.
pub const SCENARIO_FILE_MAX_BYTES: u64 = 16 << 20;
/// Largest provider model file read.
pub const MODEL_FILE_MAX_BYTES: u64 = 1 << 20;

/// Reads a text file that must be a regular file of at most `max_bytes`, as UTF-8.
fn read_text(path: &Path, max_bytes: u64) -> Result<String, ScenarioError> {
    let bytes = crate::config::source::read_regular(path, max_bytes)
        .map_err(|e| ScenarioError::in_file(path, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        ScenarioError::in_file(
            path,
            format!(
                "is not UTF-8 text (byte {} is not)",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Reads a scenario file and the provider models it names.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    read_scenario(path).map(|(scenario, _)| scenario)
}

/// [`load_scenario`], with the scenario's text.
fn read_scenario(path: &Path) -> Result<(Scenario, String), ScenarioError> {
    let text = read_text(path, SCENARIO_FILE_MAX_BYTES)?;
    let dir = models_dir(path);
    let load = |name: &str| -> Result<IspSpec, ScenarioError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ScenarioError::in_file(
                path,
                format!("`{name}` is not a model name (letters, digits, - and _)"),
            ));
        }
        let file = dir.join(format!("{name}.toml"));
        let text = read_text(&file, MODEL_FILE_MAX_BYTES)?;
        parse_model(&file, &text)
    };
    let scenario = Scenario::parse_with(path, &text, &load)?;
    Ok((scenario, text))
}

/// Reads a scenario's PowerMTA configuration (its file, or its inline text, which is named
/// `SCENARIO.inline.conf` in messages).
pub fn load_config(
    scenario: &Scenario,
    scenario_path: &Path,
) -> Result<crate::config::Checked, crate::config::Unreadable> {
    use crate::config::{self, MemFs, Options, RealFs};
    match &scenario.config {
        ConfigSource::Path(path) => config::load(path, &RealFs, Options::default()),
        ConfigSource::Inline(text) => {
            let inline = scenario_path.with_extension("inline.conf");
            config::load(
                &inline,
                &MemFs::new().with(&inline, text.as_bytes()),
                Options::default(),
            )
        }
    }
}

/// A scenario and its configuration, read and checked against each other.
#[derive(Debug)]
pub struct Loaded {
    pub scenario: Scenario,
    pub checked: crate::config::Checked,
    /// The scenario's warnings, then (when the configuration has no error of its own) every
    /// place where the scenario names something the configuration does not have.
    pub problems: Vec<ScenarioError>,
}

/// Why a scenario could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Scenario(#[from] ScenarioError),
    #[error("error: {0}")]
    Config(#[from] crate::config::Unreadable),
}

/// Reads a scenario, its models and its configuration, and checks them against each other.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let (scenario, text) = read_scenario(path)?;
    let checked = load_config(&scenario, path)?;
    let mut problems = scenario.warnings.clone();
    if checked.error_count() == 0 {
        problems.extend(crate::scenario::check_against(
            path,
            &text,
            &scenario,
            &checked.config,
        ));
    }
    Ok(Loaded {
        scenario,
        checked,
        problems,
    })
}

/// SHA-256 over the configuration's files (name and text, in load order), hex.
pub fn config_sha256(sources: &crate::config::source::SourceMap) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for (_, file) in sources.files() {
        context.update(file.path.to_string_lossy().as_bytes());
        context.update(&[0]);
        context.update(file.text.as_bytes());
        context.update(&[0]);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rate_limit(rate: crate::config::value::Rate) -> Option<report::RateLimit> {
    match rate {
        crate::config::value::Rate::Limit { count, per_seconds } => Some(report::RateLimit {
            count,
            per_s: per_seconds,
        }),
        crate::config::value::Rate::Unlimited => None,
    }
}

/// The replies behind the records, counted by queue, source IP, SMTP step and reply.
fn reply_counts(records: &[AcctRecord]) -> Vec<report::ReplyCount> {
    let mut counts: std::collections::BTreeMap<(&str, &str, &str, String), report::ReplyCount> =
        std::collections::BTreeMap::new();
    for r in records {
        let Some(phase) = r.phase else {
            continue;
        };
        let code: String = r
            .dsn_diag
            .strip_prefix("smtp;")
            .unwrap_or("")
            .chars()
            .take(3)
            .collect();
        let reply = if code.len() == 3 {
            format!("{code} {}", r.dsn_status)
        } else {
            // A failure without a reply (a refused connection, a timeout).
            format!("none {}", r.dsn_status)
        };
        let at = r.time_logged.unix_secs();
        counts
            .entry((&r.queue, &r.dlv_source_ip, phase.name(), reply.clone()))
            .and_modify(|c| {
                c.count += 1;
                c.last_at_s = at;
            })
            .or_insert_with(|| report::ReplyCount {
                queue: r.queue.clone(),
                source_ip: r.dlv_source_ip.clone(),
                phase: phase.name().to_string(),
                reply,
                count: 1,
                first_at_s: at,
                last_at_s: at,
                example: r.dsn_diag.clone(),
            });
    }
    counts.into_values().collect()
}

impl RunOutput {
    /// What the report needs beside `acct.csv` (saved as `run.json`).
    pub fn run_data(&self, scenario: &Scenario, config_sha256: String) -> report::RunData {
        let secs = |t: Time| t.unix_secs();
        let mut data = report::RunData {
            schema_version: report::SCHEMA_VERSION,
            scenario: scenario.name.clone(),
            seed: scenario.seed,
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_sha256,
            start_s: secs(scenario.start),
            duration_s: scenario.duration_s,
            providers: Vec::new(),
            queues: Vec::new(),
            mode_changes: Vec::new(),
            retries: Vec::new(),
            queued: Vec::new(),
            connections: Vec::new(),
            refused: self.refused.clone(),
            pattern_failures: Vec::new(),
            replies: reply_counts(&self.records),
        };
        for (name, log) in &self.receivers {
            let spec = scenario.isps.iter().find(|i| &i.name == name);
            let domains = spec.map(|i| i.domains.clone()).unwrap_or_default();
            data.providers.push(report::ProviderData {
                name: name.clone(),
                domains,
                throttles: log
                    .throttles
                    .iter()
                    .map(|t| report::ThrottleWindow {
                        at_s: secs(t.at),
                        until_s: secs(t.until),
                        source_ip: t.peer.to_string(),
                        key: t.key.clone(),
                        reply: t.reply.clone(),
                    })
                    .collect(),
                standings: log
                    .standings
                    .iter()
                    .map(|s| report::StandingPoint {
                        at_s: secs(s.at),
                        identity: s.identity.clone(),
                        score: s.score,
                        capacity_per_hour: s.capacity_per_hour,
                    })
                    .collect(),
                feedback: spec.map_or("none", |i| i.feedback.kind()).to_string(),
                daily: log
                    .daily
                    .iter()
                    .map(|(day, mail)| report::DailyMail {
                        day: Time::from_secs(day * 86_400).acct_format()[..10].to_string(),
                        delivered: mail.delivered,
                        complaints: mail.complaints,
                    })
                    .collect(),
            });
        }
        for q in &self.queues {
            let (domain, vmta) = q.name.split_once('/').unwrap_or((&q.name, ""));
            data.queues.push(report::QueueData {
                name: q.name.clone(),
                domain: domain.to_string(),
                vmta: vmta.to_string(),
                max_msg_rate: rate_limit(q.settings.max_msg_rate),
                backoff_max_msg_rate: rate_limit(q.settings.backoff_max_msg_rate),
                max_smtp_out: q.settings.max_smtp_out,
                backoff_max_smtp_out: q.settings.backoff_max_smtp_out,
                backoff_at_end: q.mode == crate::config::model::QueueMode::Backoff,
                queued_at_end: q.recipients_queued as u64,
                retry_recipients_after_s: q.settings.retry_recipients_after_s,
            });
        }
        for event in &self.events {
            match event {
                EngineEvent::ModeChanged {
                    at,
                    queue,
                    mode,
                    reason,
                } => data.mode_changes.push(report::ModeChange {
                    at_s: secs(*at),
                    queue: queue.clone(),
                    backoff: *mode == crate::config::model::QueueMode::Backoff,
                    reason: reason.clone(),
                }),
                EngineEvent::RetryScheduled { at, queue, until } => {
                    data.retries.push(report::RetryWait {
                        at_s: secs(*at),
                        queue: queue.clone(),
                        until_s: secs(*until),
                    })
                }
                EngineEvent::Queued {
                    at,
                    queue,
                    recipients,
                } => data.queued.push(report::Queued {
                    at_s: secs(*at),
                    queue: queue.clone(),
                    recipients: *recipients,
                }),
                EngineEvent::PatternFailed {
                    at,
                    context,
                    position,
                    pattern,
                    subject,
                    error,
                } => data.pattern_failures.push(report::PatternFailure {
                    at_s: secs(*at),
                    context: context.clone(),
                    position: position.clone(),
                    pattern: pattern.clone(),
                    subject: subject.clone(),
                    error: error.clone(),
                }),
                EngineEvent::SourceIpDisabled { .. } => {}
            }
        }
        data.connections = self
            .connections
            .iter()
            .map(|c| report::Connection {
                queue: c.queue.clone(),
                source_ip: c.source_ip.to_string(),
                opened_s: secs(c.opened),
                closed_s: c.closed.map(secs),
                messages: c.messages,
            })
            .collect();
        data
    }
}
