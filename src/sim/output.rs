//! What a simulated run produced, collected as it happens: the accounting records, the
//! engine's events a report reads, each connection's trace, the mail refused at injection,
//! and each provider's `f` records once their reports arrive.
//!
//! Owns [`Collector`] (the [`Sink`] of a simulated run), [`RunOutput`] and its `run_data`
//! for the report (`run.json`). Must not: read files or a clock; parse the engine's bytes or
//! reason strings (everything comes from typed [`EngineEvent`]s and records).

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::pump::Sink;
use crate::engine::accounting::{AcctRecord, RecordType};
use crate::engine::{ConnectionId, EngineEvent, InjectError, QueueSnapshot};
use crate::isp::ReceiverLog;
use crate::report;
use crate::scenario::Scenario;
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

/// The [`Sink`] of a simulated run: keeps what [`RunOutput`] holds.
#[derive(Debug, Default)]
pub struct Collector {
    records: Vec<AcctRecord>,
    events: Vec<EngineEvent>,
    traces: BTreeMap<ConnectionId, ConnectionTrace>,
    injected: Vec<(String, String)>,
    refused: report::Refusals,
    /// See [`Collector::new`].
    trace: bool,
    /// Per queue, the index in `events` of its last `Queued` event: entries in the same second
    /// are folded into it (the report counts them per second), so the events kept grow with
    /// the run's seconds, not its messages.
    last_queued: BTreeMap<String, usize>,
}

impl Collector {
    /// `trace` keeps every injected recipient and the time of every RCPT: what whole-run
    /// checks need, and memory per message a user's run does without.
    pub fn new(trace: bool) -> Collector {
        Collector {
            trace,
            ..Collector::default()
        }
    }

    /// Whether every injected recipient and RCPT time is kept.
    pub fn traces(&self) -> bool {
        self.trace
    }

    /// A message the engine took: its recipients, for the whole-run checks.
    pub fn injected(&mut self, job_id: &str, recipients: &[String]) {
        if self.trace {
            self.injected
                .extend(recipients.iter().map(|r| (job_id.to_string(), r.clone())));
        }
    }

    /// A message the engine refused: never silent, it is counted by reason and listed.
    pub fn refused(
        &mut self,
        now: Time,
        error: &InjectError,
        job_id: String,
        env_id: String,
        recipients: u64,
    ) {
        let refused = &mut self.refused;
        refused.messages += 1;
        refused.recipients += recipients;
        *refused
            .by_reason
            .entry(error.kind().to_string())
            .or_insert(0) += 1;
        if refused.first.len() < report::REFUSALS_LISTED_MAX {
            refused.first.push(report::Refused {
                at_s: now.unix_secs(),
                job_id,
                env_id,
                recipients,
                reason: error.to_string(),
            });
        }
    }

    /// Everything collected, with the providers' logs and the engine's end state.
    pub fn finish(
        self,
        receivers: Vec<(String, ReceiverLog)>,
        queues: Vec<QueueSnapshot>,
        pending: usize,
        end: Time,
    ) -> RunOutput {
        let records = with_feedback(self.records, &receivers, end);
        RunOutput {
            records,
            events: self.events,
            receivers,
            queues,
            pending,
            injected: self.injected,
            refused: self.refused,
            connections: self.traces.into_values().collect(),
        }
    }
}

impl Sink for Collector {
    fn record(&mut self, record: AcctRecord) {
        self.records.push(record);
    }

    fn event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::ConnectionOpened {
                at,
                conn,
                queue,
                source_ip,
            } => {
                self.traces.insert(
                    conn,
                    ConnectionTrace {
                        queue,
                        source_ip,
                        opened: at,
                        closed: None,
                        rcpt_times: Vec::new(),
                        messages: 0,
                    },
                );
            }
            EngineEvent::TransactionStarted {
                at,
                conn,
                recipients,
            } => {
                if let Some(trace) = self.traces.get_mut(&conn) {
                    trace.messages += 1;
                    if self.trace {
                        trace
                            .rcpt_times
                            .extend(std::iter::repeat_n(at, recipients as usize));
                    }
                }
            }
            EngineEvent::ConnectionClosed { at, conn, .. } => {
                if let Some(trace) = self.traces.get_mut(&conn) {
                    trace.closed.get_or_insert(at);
                }
            }
            EngineEvent::Queued {
                at,
                queue,
                recipients,
            } => {
                if let Some(&index) = self.last_queued.get(&queue)
                    && let EngineEvent::Queued {
                        at: last_at,
                        recipients: total,
                        ..
                    } = &mut self.events[index]
                    && last_at.unix_secs() == at.unix_secs()
                {
                    *total += recipients;
                    return;
                }
                self.last_queued.insert(queue.clone(), self.events.len());
                self.events.push(EngineEvent::Queued {
                    at,
                    queue,
                    recipients,
                });
            }
            // Per recipient, and already in the records: what the live spool journals.
            EngineEvent::RecipientSettled { .. } => {}
            other => self.events.push(other),
        }
    }
}

/// Adds an `f` record for every complaint a provider reports to the sender, at the time the
/// report arrives (before the run's end), in time order (a stable sort keeps the engine's
/// order among records of the same time). Complaints a provider does not report (Gmail,
/// iCloud) leave no record: the sender sees at most the provider's daily spam rate.
fn with_feedback(
    mut records: Vec<AcctRecord>,
    receivers: &[(String, ReceiverLog)],
    end: Time,
) -> Vec<AcctRecord> {
    // The last delivery of each (recipient, sender): the record a complaint is about carries
    // its queue and virtual MTA.
    let mut last_delivery: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (index, r) in records.iter().enumerate() {
        if r.record_type == RecordType::Delivered {
            last_delivery.insert((r.rcpt.as_str(), r.orig.as_str()), index);
        }
    }
    let mut feedback = Vec::new();
    for (_, log) in receivers {
        for complaint in &log.complaints {
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
                EngineEvent::SourceIpDisabled { .. }
                | EngineEvent::RecipientSettled { .. }
                | EngineEvent::ConnectionOpened { .. }
                | EngineEvent::TransactionStarted { .. }
                | EngineEvent::ConnectionClosed { .. } => {}
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
