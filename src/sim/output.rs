//! What a simulated run produced, collected as it happens: the accounting records (written
//! to the accounting file as they come), the figures the report is built from, each
//! provider's `f` records once their reports arrive, and the mail refused at injection;
//! with a trace, also every record, event and connection for whole-run checks.
//!
//! Owns [`Collector`] (the [`Sink`] of a simulated run) and [`RunOutput`]. Without a trace
//! its memory follows the run's queues, connections and complaints awaiting their report,
//! never its messages: records stream to the accounting file and into the
//! [`report::aggregate::Aggregator`]. Must not: read files or a clock; parse the engine's
//! bytes or reason strings (everything comes from typed [`EngineEvent`]s and records).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;

use super::pump::Sink;
use crate::engine::accounting::{AcctRecord, CsvWriter, RecordType};
use crate::engine::{ConnectionId, EngineEvent, InjectError, QueueSnapshot};
use crate::isp::{Complaint, ReceiverLog, Recent};
use crate::report;
use crate::report::aggregate::Aggregator;
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

/// Everything a run produced. The lists (`records`, `events`, `injected`, `connections`)
/// are filled only when the run was traced ([`super::RunOptions::trace`]).
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
    /// What the report is built from (`run.json`), its `config_sha256` left to the caller.
    pub data: report::RunData,
    /// The scenario's `[[expect]]`, measured.
    pub outcomes: Vec<report::expect::Outcome>,
}

/// Where the accounting file goes while the run goes.
pub type AcctOut = CsvWriter<Box<dyn Write>>;

/// The [`Sink`] of a simulated run.
pub struct Collector {
    aggregator: Aggregator,
    acct: Option<AcctOut>,
    /// The first error writing the accounting file (nothing more is written after it).
    acct_error: Option<std::io::Error>,
    /// See [`Collector::new`].
    trace: bool,
    keep_records: bool,
    records: Vec<AcctRecord>,
    events: Vec<EngineEvent>,
    traces: BTreeMap<ConnectionId, ConnectionTrace>,
    injected: Vec<(String, String)>,
    refused: report::Refusals,
    /// Per queue, the index in `events` of its last `Queued` event: entries in the same second
    /// are folded into it, so the events kept grow with the run's seconds, not its messages.
    last_queued: BTreeMap<String, usize>,
    /// Complaints a provider will report, waiting for the delivery they are about: by
    /// (recipient, sender), their report times.
    complaints: BTreeMap<(String, String), Vec<Time>>,
    /// `f` records waiting for their time, in order.
    feedback: BTreeMap<(Time, u64), AcctRecord>,
    feedback_seq: u64,
    end: Time,
}

impl Collector {
    /// `trace` keeps every record, event, injected recipient and connection (with the time
    /// of each RCPT): what whole-run checks need, and memory per message a user's run does
    /// without. `keep_records` keeps the records alone (a trace keeps them too), for the
    /// caller to take as the run goes ([`Collector::take_records`]). `acct` receives each
    /// record of a type its format writes, as it comes.
    pub fn new(
        aggregator: Aggregator,
        acct: Option<AcctOut>,
        trace: bool,
        keep_records: bool,
        end: Time,
    ) -> Collector {
        Collector {
            aggregator,
            acct,
            acct_error: None,
            trace,
            keep_records: trace || keep_records,
            records: Vec::new(),
            events: Vec::new(),
            traces: BTreeMap::new(),
            injected: Vec::new(),
            refused: report::Refusals::default(),
            last_queued: BTreeMap::new(),
            complaints: BTreeMap::new(),
            feedback: BTreeMap::new(),
            feedback_seq: 0,
            end,
        }
    }

    /// Whether every injected recipient and RCPT time is kept.
    pub fn traces(&self) -> bool {
        self.trace
    }

    /// The records kept so far and not taken (with a trace or `keep_records`; none without).
    pub fn records(&self) -> &[AcctRecord] {
        &self.records
    }

    /// The records kept since the last take, handed over.
    pub fn take_records(&mut self) -> Vec<AcctRecord> {
        std::mem::take(&mut self.records)
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

    /// What provider `name` logged since it was last asked: its throttles go to the figures
    /// now, its reported complaints wait for the delivery they are about.
    pub fn provider_recent(&mut self, name: &str, recent: Recent) {
        let mut throttles = recent.throttles;
        throttles.sort_by_key(|t| t.at);
        for t in &throttles {
            self.aggregator.throttle(
                name,
                t.at.unix_secs(),
                t.until.unix_secs(),
                t.peer,
                &t.key,
                &t.reply,
            );
        }
        for Complaint {
            rcpt,
            mail_from,
            report_at,
            ..
        } in recent.complaints
        {
            // Complaints a provider does not report (Gmail, iCloud) leave no record: the
            // sender sees at most the provider's daily spam rate.
            if let Some(at) = report_at.filter(|t| *t <= self.end) {
                self.complaints
                    .entry((rcpt, mail_from))
                    .or_default()
                    .push(at);
            }
        }
    }

    /// The clock reached `now`: `f` records due before it are written.
    pub fn advance(&mut self, now: Time) {
        while let Some(entry) = self.feedback.first_entry() {
            if entry.key().0 >= now {
                break;
            }
            let record = entry.remove();
            self.keep(record);
        }
    }

    /// A record, to the figures, the accounting file and (traced) the list.
    fn keep(&mut self, record: AcctRecord) {
        self.aggregator.record(&record);
        if let Some(acct) = &mut self.acct
            && self.acct_error.is_none()
            && let Err(err) = acct.write(&record)
        {
            self.acct_error = Some(err);
        }
        if self.keep_records {
            self.records.push(record);
        }
    }

    /// Everything collected, with the providers' logs and the engine's end state; `Err` when
    /// the accounting file could not be written.
    pub fn finish(
        mut self,
        scenario: &Scenario,
        receivers: Vec<(String, ReceiverLog)>,
        queues: Vec<QueueSnapshot>,
        pending: usize,
    ) -> Result<RunOutput, std::io::Error> {
        // `f` records up to the end (the engine's records of that instant come first).
        let end = self.end;
        while let Some(entry) = self.feedback.first_entry() {
            if entry.key().0 > end {
                break;
            }
            let record = entry.remove();
            self.keep(record);
        }
        if let Some(err) = self.acct_error.take() {
            return Err(err);
        }
        if let Some(acct) = self.acct.take() {
            acct.finish()?.flush()?;
        }
        let data = run_data(scenario, &receivers, &queues, self.refused.clone());
        let (data, outcomes) = self.aggregator.finish(data);
        Ok(RunOutput {
            records: self.records,
            events: self.events,
            receivers,
            queues,
            pending,
            injected: self.injected,
            refused: self.refused,
            connections: self.traces.into_values().collect(),
            data,
            outcomes,
        })
    }

    /// Keeps an event for the trace (every one but [`EngineEvent::QueueHeld`]).
    fn trace_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::ConnectionOpened {
                at,
                conn,
                ref queue,
                source_ip,
                ..
            } => {
                self.traces.insert(
                    conn,
                    ConnectionTrace {
                        queue: queue.clone(),
                        source_ip,
                        opened: at,
                        closed: None,
                        rcpt_times: Vec::new(),
                        messages: 0,
                    },
                );
                self.events.push(event);
            }
            EngineEvent::TransactionStarted {
                at,
                conn,
                recipients,
            } => {
                if let Some(trace) = self.traces.get_mut(&conn) {
                    trace.messages += 1;
                    trace
                        .rcpt_times
                        .extend(std::iter::repeat_n(at, recipients as usize));
                }
                self.events.push(event);
            }
            EngineEvent::ConnectionClosed { at, conn, .. } => {
                if let Some(trace) = self.traces.get_mut(&conn) {
                    trace.closed.get_or_insert(at);
                }
                self.events.push(event);
            }
            EngineEvent::Queued {
                at,
                ref queue,
                recipients,
                ..
            } => {
                if let Some(&index) = self.last_queued.get(queue)
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
                self.events.push(event);
            }
            // Per recipient, and already in the records: what the live spool journals.
            EngineEvent::RecipientSettled { .. } => {}
            // What held a queue changes with nearly every message of a rate-limited queue;
            // the aggregator reads it, whole-run checks do not.
            EngineEvent::QueueHeld { .. } => {}
            other => self.events.push(other),
        }
    }
}

impl Sink for Collector {
    fn record(&mut self, record: AcctRecord) {
        self.advance(record.time_logged);
        if record.record_type == RecordType::Delivered
            && !self.complaints.is_empty()
            && let Some(reports) = self
                .complaints
                .remove(&(record.rcpt.clone(), record.orig.clone()))
        {
            // Each complaint about this delivery becomes an `f` record when its report
            // arrives (never before the delivery).
            for report_at in reports {
                let mut f = record.clone();
                f.record_type = RecordType::Feedback;
                f.time_logged = report_at.max(record.time_logged);
                f.phase = None;
                f.dsn_status = String::new();
                f.dsn_diag = "abuse".to_string();
                f.bounce_category = String::new();
                self.feedback_seq += 1;
                self.feedback.insert((f.time_logged, self.feedback_seq), f);
            }
        }
        self.keep(record);
    }

    fn event(&mut self, event: EngineEvent) {
        self.aggregator.event(&event);
        if self.trace {
            self.trace_event(event);
        }
    }
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

/// What `run.json` says of the providers and queues as the run left them; the aggregator
/// adds the rest.
fn run_data(
    scenario: &Scenario,
    receivers: &[(String, ReceiverLog)],
    queues: &[QueueSnapshot],
    refused: report::Refusals,
) -> report::RunData {
    let secs = |t: Time| t.unix_secs();
    let start_s = secs(scenario.start);
    let bucket_s = report::bucket_s(scenario.duration_s);
    let mut data = report::RunData {
        schema_version: report::SCHEMA_VERSION,
        scenario: scenario.name.clone(),
        seed: scenario.seed,
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_sha256: String::new(),
        start_s,
        duration_s: scenario.duration_s,
        providers: Vec::new(),
        queues: Vec::new(),
        mode_changes: Vec::new(),
        refused,
        pattern_failures: Vec::new(),
        replies: Vec::new(),
        figures: report::Figures::default(),
    };
    for (name, log) in receivers {
        let spec = scenario.isps.iter().find(|i| &i.name == name);
        let domains = spec.map(|i| i.domains.clone()).unwrap_or_default();
        // One sample per identity per chart bucket (the last): what the charts draw.
        let mut standings: Vec<report::StandingPoint> = Vec::new();
        let mut slot: BTreeMap<(&str, u64), usize> = BTreeMap::new();
        for s in &log.standings {
            let point = report::StandingPoint {
                at_s: secs(s.at),
                identity: s.identity.clone(),
                score: s.score,
                capacity_per_hour: s.capacity_per_hour,
            };
            let bucket = secs(s.at).saturating_sub(start_s) / bucket_s;
            match slot.get(&(s.identity.as_str(), bucket)) {
                Some(index) => standings[*index] = point,
                None => {
                    slot.insert((s.identity.as_str(), bucket), standings.len());
                    standings.push(point);
                }
            }
        }
        data.providers.push(report::ProviderData {
            name: name.clone(),
            domains,
            throttles: Vec::new(),
            throttle_windows: 0,
            standings,
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
    for q in queues {
        data.queues.push(report::QueueData {
            name: q.name.clone(),
            domain: q.domain.clone(),
            vmta: q.vmta.clone(),
            max_msg_rate: rate_limit(q.settings.max_msg_rate),
            backoff_max_msg_rate: rate_limit(q.settings.backoff_max_msg_rate),
            max_smtp_out: q.settings.max_smtp_out,
            backoff_max_smtp_out: q.settings.backoff_max_smtp_out,
            backoff_at_end: q.mode == crate::config::model::QueueMode::Backoff,
            queued_at_end: q.recipients_queued as u64,
            retry_recipients_after_s: q.settings.retry_recipients_after_s,
        });
    }
    data
}
