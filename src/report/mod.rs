//! Reports of a finished run: the summary (`summary.json`), the time series behind the
//! charts, which limit held each queue back, the charts themselves (`charts`), the HTML page
//! (`html`) and the terminal table (`terminal`).
//!
//! Owns `RunData` (what a run leaves beside `acct.csv` in `run.json`: providers' throttles and
//! standings, queue limits, mode changes, retries, queue entries, connections) and every
//! figure derived from it and the accounting rows. Pure: callers read and write the files;
//! the same inputs always give the same bytes, so `pmta-sim report DIR` rebuilds exactly
//! what `pmta-sim run` wrote. It must not import the engine's internals beyond the
//! accounting record, nor read a clock.

pub mod charts;
pub mod diff;
pub mod expect;
pub mod html;
pub mod terminal;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::accounting::{AcctRecord, HEADER};

/// The version of `summary.json` and `run.json`; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;
/// Most buckets in a time series (a chart's resolution).
pub const BUCKETS_MAX: u64 = 240;
/// Most queues drawn in one chart (the busiest).
pub const QUEUES_PER_CHART_MAX: usize = 12;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{file}: {message}")]
    Input { file: String, message: String },
}

/// A rate limit as `count` per `per_s` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub count: u64,
    pub per_s: u64,
}

/// Everything a report needs that `acct.csv` does not hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunData {
    pub schema_version: u32,
    pub scenario: String,
    pub seed: u64,
    pub version: String,
    /// SHA-256 of the PowerMTA configuration text, hex.
    pub config_sha256: String,
    /// Seconds since the Unix epoch.
    pub start_s: u64,
    pub duration_s: u64,
    pub providers: Vec<ProviderData>,
    pub queues: Vec<QueueData>,
    pub mode_changes: Vec<ModeChange>,
    pub retries: Vec<RetryWait>,
    pub queued: Vec<Queued>,
    pub connections: Vec<Connection>,
    /// Messages the engine refused at injection.
    #[serde(default)]
    pub refused: Refusals,
    /// Patterns the regex engine could not evaluate during the run (each once).
    #[serde(default)]
    pub pattern_failures: Vec<PatternFailure>,
    /// The replies behind the accounting records, counted by where they came: so a report
    /// can say at which SMTP step a provider said no (`acct.csv` has no such field).
    #[serde(default)]
    pub replies: Vec<ReplyCount>,
}

/// Most refused messages listed one by one (the rest are counted).
pub const REFUSALS_LISTED_MAX: usize = 100;

/// Messages the engine refused at injection: counted by reason, the first few listed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusals {
    pub messages: u64,
    pub recipients: u64,
    /// Reason (`unknown-virtual-mta`, `bad-address`, …) → messages.
    pub by_reason: BTreeMap<String, u64>,
    /// The first [`REFUSALS_LISTED_MAX`] refusals.
    pub first: Vec<Refused>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub at_s: u64,
    pub job_id: String,
    pub env_id: String,
    pub recipients: u64,
    pub reason: String,
}

/// A configured pattern that could not be evaluated (fancy-regex's backtracking limit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatternFailure {
    pub at_s: u64,
    /// `queue DOMAIN/VMTA` or `routing`.
    pub context: String,
    /// `FILE:LINE` of the pattern.
    pub position: String,
    pub pattern: String,
    pub subject: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderData {
    pub name: String,
    pub domains: Vec<String>,
    pub throttles: Vec<ThrottleWindow>,
    pub standings: Vec<StandingPoint>,
    /// What the sender sees of complaints: `reports` (a feedback loop's `f` records),
    /// `aggregate` (a daily spam rate only, as at Gmail) or `none`.
    #[serde(default)]
    pub feedback: String,
    /// Mail the provider accepted and the complaints about it, per UTC day.
    #[serde(default)]
    pub daily: Vec<DailyMail>,
}

/// One day of a provider's accepted mail and the complaints about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyMail {
    /// `2026-09-21`.
    pub day: String,
    /// Recipients accepted.
    pub delivered: u64,
    pub complaints: u64,
}

/// Replies of one kind on one queue from one source IP at one SMTP step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyCount {
    pub queue: String,
    pub source_ip: String,
    /// `connect`, `greeting`, `ehlo`, `starttls`, `mail`, `rcpt`, `data`, `data_end`, `rset`.
    pub phase: String,
    /// `421 4.7.28` (the code and the enhanced status).
    pub reply: String,
    pub count: u64,
    pub first_at_s: u64,
    pub last_at_s: u64,
    /// The first such reply, as `acct.csv` has it.
    pub example: String,
}

/// A provider's throttle reply and the penalty it started (or extended).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThrottleWindow {
    pub at_s: u64,
    pub until_s: u64,
    pub source_ip: String,
    /// `ip:…`, `net:…` or `domain:…`.
    pub key: String,
    pub reply: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandingPoint {
    pub at_s: u64,
    pub identity: String,
    pub score: f64,
    pub capacity_per_hour: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueData {
    /// `domain/vmta`.
    pub name: String,
    pub domain: String,
    pub vmta: String,
    pub max_msg_rate: Option<RateLimit>,
    pub backoff_max_msg_rate: Option<RateLimit>,
    pub max_smtp_out: u64,
    pub backoff_max_smtp_out: u64,
    pub backoff_at_end: bool,
    pub queued_at_end: u64,
    /// How long a deferred recipient waits before its next attempt.
    #[serde(default)]
    pub retry_recipients_after_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeChange {
    pub at_s: u64,
    pub queue: String,
    pub backoff: bool,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryWait {
    pub at_s: u64,
    pub queue: String,
    pub until_s: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub at_s: u64,
    pub queue: String,
    pub recipients: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub queue: String,
    pub source_ip: String,
    pub opened_s: u64,
    pub closed_s: Option<u64>,
    /// Messages (MAIL FROM commands) sent on the connection.
    #[serde(default)]
    pub messages: u64,
}

/// Most queues times minutes a report looks at: each queue's binding limit is found minute
/// by minute.
pub const QUEUE_MINUTES_MAX: u64 = 200_000_000;
/// Most recipients a run can queue: the scenario's message limit times its recipients per
/// message.
pub const RECIPIENTS_MAX: u64 =
    crate::scenario::MESSAGES_MAX * crate::scenario::RECIPIENTS_PER_MESSAGE_MAX as u64;

impl RunData {
    /// Checks that `run.json` describes a run pmta-sim could have made: its version, a
    /// duration a scenario may have, times before the year 10000, rates with a count and a
    /// window, finite scores, and a size a report can be built for. A file that fails is
    /// refused with the reason (never a panic or an allocation abort).
    pub fn validate(&self) -> Result<(), String> {
        use crate::scenario::{DRAIN_S, DURATION_MAX_S, TIME_MAX_S};
        if self.schema_version != SCHEMA_VERSION {
            return Err(format!(
                "schema version {}; this pmta-sim reads version {SCHEMA_VERSION}",
                self.schema_version
            ));
        }
        if !(1..=DURATION_MAX_S).contains(&self.duration_s) {
            return Err(format!(
                "duration_s {} is not a run's length (1 to {DURATION_MAX_S})",
                self.duration_s
            ));
        }
        if self.start_s.saturating_add(self.duration_s + DRAIN_S) > TIME_MAX_S {
            return Err(format!(
                "start_s {} puts the run after the year 9999",
                self.start_s
            ));
        }
        if self.providers.len() > crate::scenario::ISPS_MAX {
            return Err(format!(
                "{} providers, over the limit of {}",
                self.providers.len(),
                crate::scenario::ISPS_MAX
            ));
        }
        // Provider names become chart file names.
        if let Some(p) = self
            .providers
            .iter()
            .find(|p| !crate::scenario::is_safe_name(&p.name))
        {
            return Err(format!(
                "provider name `{}` cannot name a chart file",
                crate::printable::escape(&p.name)
            ));
        }
        let times = self
            .providers
            .iter()
            .flat_map(|p| {
                p.throttles
                    .iter()
                    .flat_map(|t| [t.at_s, t.until_s])
                    .chain(p.standings.iter().map(|s| s.at_s))
            })
            .chain(self.mode_changes.iter().map(|c| c.at_s))
            .chain(self.retries.iter().flat_map(|r| [r.at_s, r.until_s]))
            .chain(self.queued.iter().map(|q| q.at_s))
            .chain(
                self.connections
                    .iter()
                    .flat_map(|c| std::iter::once(c.opened_s).chain(c.closed_s)),
            );
        for t in times {
            if t > TIME_MAX_S {
                return Err(format!("time {t} is after the year 9999"));
            }
        }
        for q in &self.queues {
            for rate in [q.max_msg_rate, q.backoff_max_msg_rate]
                .into_iter()
                .flatten()
            {
                if rate.count == 0 || !(1..=DURATION_MAX_S).contains(&rate.per_s) {
                    return Err(format!(
                        "queue `{}`: rate {}/{}s is not a rate limit",
                        q.name, rate.count, rate.per_s
                    ));
                }
            }
        }
        if let Some(s) = self
            .providers
            .iter()
            .flat_map(|p| &p.standings)
            .find(|s| !s.score.is_finite())
        {
            return Err(format!(
                "standing of `{}` has score {}",
                s.identity, s.score
            ));
        }
        let recipients = self
            .queued
            .iter()
            .fold(0u64, |sum, q| sum.saturating_add(q.recipients));
        if recipients > RECIPIENTS_MAX {
            return Err(format!(
                "{recipients} recipients queued, more than any run ({RECIPIENTS_MAX})"
            ));
        }
        let queue_minutes = (self.queues.len() as u64).saturating_mul(self.duration_s / 60 + 1);
        if queue_minutes > QUEUE_MINUTES_MAX {
            return Err(format!(
                "{} queues over {} minutes is more than a report is built for",
                self.queues.len(),
                self.duration_s / 60 + 1
            ));
        }
        Ok(())
    }
}

/// What a report reads of one accounting record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// `d`, `b`, `t`, `tq` or `f`.
    pub kind: String,
    pub logged_s: u64,
    pub queued_s: u64,
    pub rcpt_domain: String,
    pub status: String,
    pub diag: String,
    pub category: String,
    pub source_ip: String,
    pub queue: String,
}

impl Row {
    /// A record as `acct.csv` holds it (times to the second).
    pub fn of(record: &AcctRecord) -> Row {
        Row {
            kind: record.record_type.code().to_string(),
            logged_s: record.time_logged.unix_secs(),
            queued_s: record.time_queued.unix_secs(),
            rcpt_domain: domain_of(&record.rcpt),
            status: record.dsn_status.clone(),
            diag: record.dsn_diag.clone(),
            category: record.bounce_category.clone(),
            source_ip: record.dlv_source_ip.clone(),
            queue: record.queue.clone(),
        }
    }
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or("", |(_, d)| d)
        .to_ascii_lowercase()
}

/// Reads `acct.csv` (PowerMTA's default field set, as `pmta-sim run` writes it).
pub fn read_acct(file: &str, text: &str) -> Result<Vec<Row>, ReportError> {
    let err = |message: String| ReportError::Input {
        file: file.to_string(),
        message,
    };
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| err(e.to_string()))?.clone();
    let column = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            err(format!(
                "no `{name}` column; expected the header {}",
                HEADER.join(",")
            ))
        })
    };
    let kind = column("type")?;
    let logged = column("timeLogged")?;
    let queued = column("timeQueued")?;
    let rcpt = column("rcpt")?;
    let status = column("dsnStatus")?;
    let diag = column("dsnDiag")?;
    let category = column("bounceCat")?;
    let source_ip = column("dlvSourceIp")?;
    let queue = column("queue")?;
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|e| err(format!("line {line}: {e}")))?;
        let field = |i: usize| record.get(i).unwrap_or("").to_string();
        let time = |i: usize| {
            parse_acct_time(&field(i)).ok_or_else(|| {
                err(format!(
                    "line {line}: `{}` is not a timestamp like 2026-09-21 12:00:00+0000",
                    field(i)
                ))
            })
        };
        rows.push(Row {
            kind: field(kind),
            logged_s: time(logged)?,
            queued_s: time(queued)?,
            rcpt_domain: domain_of(&field(rcpt)),
            status: field(status),
            diag: field(diag),
            category: field(category),
            source_ip: field(source_ip),
            queue: field(queue),
        });
    }
    Ok(rows)
}

/// `2026-09-21 12:00:00+0000` → seconds since the Unix epoch.
fn parse_acct_time(text: &str) -> Option<u64> {
    let text = text.strip_suffix("+0000")?;
    let (date, time) = text.split_once(' ')?;
    crate::scenario::parse_utc(&format!("{date}T{time}Z"))
}

/// Percentiles of a set of durations, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of values given with their multiplicity, `(value, how many)`.
    pub(crate) fn of_counts(mut counted: Vec<(u64, u64)>) -> Percentiles {
        counted.retain(|(_, n)| *n > 0);
        counted.sort_unstable();
        let total: u64 = counted.iter().fold(0, |sum, (_, n)| sum.saturating_add(*n));
        if total == 0 {
            return Percentiles::default();
        }
        // The value at 0-based rank `r`, as `of` picks it from the expanded list.
        let at = |q: u64| {
            let rank = ((total - 1) as u128 * q as u128).div_ceil(100) as u64;
            let mut seen = 0u64;
            for (value, n) in &counted {
                seen = seen.saturating_add(*n);
                if rank < seen {
                    return *value;
                }
            }
            counted.last().map_or(0, |(v, _)| *v)
        };
        Percentiles {
            p50: at(50),
            p95: at(95),
            max: counted.last().map_or(0, |(v, _)| *v),
        }
    }

    pub(crate) fn of(mut values: Vec<u64>) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_unstable();
        let at = |q: usize| values[((values.len() - 1) * q).div_ceil(100)];
        Percentiles {
            p50: at(50),
            p95: at(95),
            max: *values.last().expect("not empty"),
        }
    }
}

/// The figures kept for the run, each provider, each queue and each source IP.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Recipients injected (`null` for a source IP: the IP is chosen at delivery).
    pub injected: Option<u64>,
    pub delivered: u64,
    /// Transient replies (`t` and `tq` records) by enhanced-status class (`4.7`, `4.2`, …).
    pub transient_by_class: BTreeMap<String, u64>,
    /// Bounces by PowerMTA bounce category.
    pub bounced_by_category: BTreeMap<String, u64>,
    pub bounced: u64,
    /// Bounces because `bounce-after` passed (category `message-expired`).
    pub expired: u64,
    /// Recipients still queued when the run ended (`null` for a source IP).
    pub queued_at_end: Option<u64>,
    /// Feedback-loop complaints (`f` records).
    pub complaints: u64,
    pub delivery_latency_s: Percentiles,
    /// Age of the recipients still queued at the end.
    pub queue_age_s: Percentiles,
    pub backoff_time_s: u64,
    pub backoff_entries: u64,
    pub max_connections: u64,
    /// Most deliveries in one minute, and in any 60 consecutive minutes.
    pub peak_delivered_per_minute: u64,
    pub peak_delivered_per_hour: u64,
}

/// The share of a queue's waiting time each limit held its mail back.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Binding {
    /// Minutes with recipients waiting in the queue.
    pub waiting_minutes: u64,
    /// Limit name → share of `waiting_minutes` (0..1), largest first in `explanation`.
    pub shares: BTreeMap<String, f64>,
    /// One line for the terminal: what held this queue back most.
    pub explanation: String,
}

/// A provider's figures, with what the sender sees of its complaints and where it said no.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ProviderSummary {
    #[serde(flatten)]
    pub counts: Counts,
    /// `reports`, `aggregate` or `none` (see [`ProviderData::feedback`]).
    pub feedback: String,
    /// The daily aggregate spam rate: complaints over accepted recipients per UTC day, the
    /// figure Gmail's Postmaster Tools shows (reference §4.7; 0.1% and 0.3% thresholds §2.1).
    pub spam_rate_daily: Vec<SpamRateDay>,
    /// Negative replies by SMTP step, then by `code status` (`421 4.7.28`).
    pub refusals_by_phase: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SpamRateDay {
    pub day: String,
    pub delivered: u64,
    pub complaints: u64,
    /// `complaints / delivered` (0 when nothing was delivered).
    pub spam_rate: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueSummary {
    #[serde(flatten)]
    pub counts: Counts,
    pub binding: Binding,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub schema_version: u32,
    pub scenario: String,
    pub seed: u64,
    pub version: String,
    pub config_sha256: String,
    pub start: String,
    pub duration_s: u64,
    pub run: Counts,
    pub providers: BTreeMap<String, ProviderSummary>,
    pub queues: BTreeMap<String, QueueSummary>,
    pub source_ips: BTreeMap<String, Counts>,
    /// Messages the engine refused at injection (never sent, never in `acct.csv`).
    pub refused: Refusals,
    /// Patterns that could not be evaluated: matches they decide are unknown.
    pub pattern_failures: Vec<PatternFailure>,
}

/// One named line of a chart: (seconds since the start, value).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// A limit: each value holds until the next point (drawn dashed, as steps).
    pub step: bool,
}

/// A shaded span of a chart (a queue in backoff).
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    pub row: String,
    pub from_s: f64,
    pub to_s: f64,
}

/// A report: the summary and every chart's data.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub summary: Summary,
    pub bucket_s: u64,
    /// Per provider: delivered, deferred and bounced per bucket, as a rate per hour.
    pub outcomes: BTreeMap<String, Vec<Series>>,
    /// Recipients queued per provider at the end of each bucket.
    pub queue_depth: Vec<Series>,
    /// Age of the oldest queued recipient per provider, in minutes.
    pub queue_age: Vec<Series>,
    /// Open connections per queue (the busiest queues).
    pub connections: Vec<Series>,
    pub backoff_bands: Vec<Band>,
    /// Per provider: deliveries per hour from each source IP, with the provider's hourly
    /// capacity for that IP (`… limit`).
    pub source_ip_rates: BTreeMap<String, Vec<Series>>,
    /// Per provider: each identity's reputation score.
    pub reputation: BTreeMap<String, Vec<Series>>,
}

/// The most spans `[from, to)` open at once (a span closing at the instant another opens
/// does not overlap it).
pub(crate) fn max_concurrent(spans: impl Iterator<Item = (u64, u64)>) -> u64 {
    let mut edges: Vec<(u64, i64)> = spans.flat_map(|(from, to)| [(from, 1), (to, -1)]).collect();
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut open, mut most) = (0i64, 0i64);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    most as u64
}

/// Each stay in backoff of the queues `wanted` accepts, as (queue, from, to) in seconds
/// since the epoch: closed ones in the order they closed, then those still open at the
/// run's end in queue order.
pub(crate) fn backoff_spans(
    data: &RunData,
    wanted: impl Fn(&str) -> bool,
) -> Vec<(&str, u64, u64)> {
    let mut spans = Vec::new();
    let mut open: BTreeMap<&str, u64> = BTreeMap::new();
    for change in data.mode_changes.iter().filter(|c| wanted(&c.queue)) {
        if change.backoff {
            open.entry(&change.queue).or_insert(change.at_s);
        } else if let Some(from) = open.remove(change.queue.as_str()) {
            spans.push((change.queue.as_str(), from, change.at_s));
        }
    }
    let end = data.start_s + data.duration_s;
    spans.extend(open.into_iter().map(|(queue, from)| (queue, from, end)));
    spans
}

/// The provider that answers `domain` (the domain itself when no provider does).
pub(crate) fn provider_of(data: &RunData, domain: &str) -> String {
    data.providers
        .iter()
        .find(|p| p.domains.iter().any(|d| d == domain))
        .map_or_else(|| domain.to_string(), |p| p.name.clone())
}

/// Builds the report of a run from its data and accounting rows.
pub fn build(data: &RunData, rows: &[Row]) -> Report {
    let start = data.start_s;
    let end = start + data.duration_s;
    let bucket_s = (data.duration_s.div_ceil(BUCKETS_MAX)).max(60).div_ceil(60) * 60;
    let buckets = data.duration_s.div_ceil(bucket_s).max(1) as usize;
    let provider_of_domain = |domain: &str| provider_of(data, domain);
    let queue_domain = |queue: &str| queue.split('/').next().unwrap_or("").to_string();
    let row_provider = |row: &Row| {
        if row.rcpt_domain.is_empty() {
            provider_of_domain(&queue_domain(&row.queue))
        } else {
            provider_of_domain(&row.rcpt_domain)
        }
    };

    // Counts for the run, each provider, queue and source IP.
    let mut run = Counts::default();
    let mut providers: BTreeMap<String, Counts> = data
        .providers
        .iter()
        .map(|p| (p.name.clone(), Counts::default()))
        .collect();
    let mut queues: BTreeMap<String, QueueSummary> = data
        .queues
        .iter()
        .map(|q| (q.name.clone(), QueueSummary::default()))
        .collect();
    let mut ips: BTreeMap<String, Counts> = BTreeMap::new();
    let mut latencies: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for row in rows {
        let provider = row_provider(row);
        let mut targets: Vec<&mut Counts> = vec![&mut run];
        targets.push(providers.entry(provider.clone()).or_default());
        if !row.queue.is_empty() {
            targets.push(&mut queues.entry(row.queue.clone()).or_default().counts);
        }
        if !row.source_ip.is_empty() {
            targets.push(ips.entry(row.source_ip.clone()).or_default());
        }
        for counts in targets {
            match row.kind.as_str() {
                "d" => counts.delivered += 1,
                "b" => {
                    counts.bounced += 1;
                    *counts
                        .bounced_by_category
                        .entry(row.category.clone())
                        .or_default() += 1;
                    if row.category == "message-expired" {
                        counts.expired += 1;
                    }
                }
                "t" | "tq" => {
                    let class: String = row
                        .status
                        .splitn(3, '.')
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(".");
                    *counts.transient_by_class.entry(class).or_default() += 1;
                }
                "f" => counts.complaints += 1,
                _ => {}
            }
        }
        if row.kind == "d" {
            let latency = row.logged_s.saturating_sub(row.queued_s);
            for key in [
                "run".to_string(),
                format!("p:{provider}"),
                format!("q:{}", row.queue),
                format!("i:{}", row.source_ip),
            ] {
                latencies.entry(key).or_default().push(latency);
            }
        }
    }
    let mut injected_by: BTreeMap<String, u64> = BTreeMap::new();
    for q in &data.queued {
        *injected_by.entry("run".into()).or_default() += q.recipients;
        *injected_by
            .entry(format!("p:{}", provider_of_domain(&queue_domain(&q.queue))))
            .or_default() += q.recipients;
        *injected_by.entry(format!("q:{}", q.queue)).or_default() += q.recipients;
    }

    // Ages of what is still queued at the end: entries minus final records, by timeQueued.
    let mut pending: BTreeMap<String, BTreeMap<u64, i64>> = BTreeMap::new();
    for q in &data.queued {
        *pending
            .entry(q.queue.clone())
            .or_default()
            .entry(q.at_s)
            .or_default() += q.recipients as i64;
    }
    for row in rows.iter().filter(|r| matches!(r.kind.as_str(), "d" | "b")) {
        *pending
            .entry(row.queue.clone())
            .or_default()
            .entry(row.queued_s)
            .or_default() -= 1;
    }
    // Each age with how many recipients have it: the memory follows the distinct times, not
    // the recipients.
    let mut ages: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for (queue, by_time) in &pending {
        let provider = provider_of_domain(&queue_domain(queue));
        for (at, n) in by_time {
            if *n <= 0 {
                continue;
            }
            let age = end.saturating_sub(*at);
            for key in [
                "run".to_string(),
                format!("p:{provider}"),
                format!("q:{queue}"),
            ] {
                ages.entry(key).or_default().push((age, *n as u64));
            }
        }
    }

    // Backoff spans per queue.
    let mut entries: BTreeMap<String, u64> = BTreeMap::new();
    for change in data.mode_changes.iter().filter(|c| c.backoff) {
        *entries.entry(change.queue.clone()).or_default() += 1;
    }
    let mut bands: Vec<Band> = backoff_spans(data, |_| true)
        .into_iter()
        .map(|(queue, from, to)| Band {
            row: queue.to_string(),
            from_s: from.saturating_sub(start) as f64,
            to_s: to.saturating_sub(start) as f64,
        })
        .collect();
    bands.sort_by(|a, b| a.row.cmp(&b.row).then(a.from_s.total_cmp(&b.from_s)));

    // Connections: the most open at once, per queue, provider, source IP and run.
    let max_open = |filter: &dyn Fn(&Connection) -> bool| -> u64 {
        max_concurrent(
            data.connections
                .iter()
                .filter(|c| filter(c))
                .map(|c| (c.opened_s, c.closed_s.unwrap_or(end))),
        )
    };

    // Deliveries per minute, for peaks: only the minutes with deliveries are kept, so the
    // memory follows the deliveries, not the run's length.
    let minutes = data.duration_s.div_ceil(60) + 1;
    let mut per_minute: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.kind == "d") {
        let m = row.logged_s.saturating_sub(start) / 60;
        if m >= minutes {
            continue;
        }
        for key in [
            "run".to_string(),
            format!("p:{}", row_provider(row)),
            format!("q:{}", row.queue),
            format!("i:{}", row.source_ip),
        ] {
            *per_minute.entry(key).or_default().entry(m).or_default() += 1;
        }
    }
    let peaks = |key: &str| -> (u64, u64) {
        let Some(counts) = per_minute.get(key) else {
            return (0, 0);
        };
        let minute = counts.values().copied().max().unwrap_or(0);
        // Any 60 consecutive minutes: a window over the minutes that have deliveries.
        let counted: Vec<(u64, u64)> = counts.iter().map(|(m, n)| (*m, *n)).collect();
        let (mut hour, mut sum, mut first) = (0, 0, 0);
        for &(m, n) in &counted {
            sum += n;
            while counted[first].0 + 60 <= m {
                sum -= counted[first].1;
                first += 1;
            }
            hour = hour.max(sum);
        }
        (minute, hour)
    };
    let finish = |key: &str, counts: &mut Counts, with_queue_data: bool| {
        counts.delivery_latency_s =
            Percentiles::of(latencies.get(key).cloned().unwrap_or_default());
        counts.queue_age_s = Percentiles::of_counts(ages.get(key).cloned().unwrap_or_default());
        let (minute, hour) = peaks(key);
        counts.peak_delivered_per_minute = minute;
        counts.peak_delivered_per_hour = hour;
        if with_queue_data {
            counts.injected = Some(injected_by.get(key).copied().unwrap_or(0));
        }
    };
    let backoff_time = |queue: &str| -> u64 {
        bands
            .iter()
            .filter(|b| b.row == queue)
            .map(|b| (b.to_s - b.from_s) as u64)
            .sum()
    };
    finish("run", &mut run, true);
    run.queued_at_end = Some(data.queues.iter().map(|q| q.queued_at_end).sum());
    run.backoff_time_s = data.queues.iter().map(|q| backoff_time(&q.name)).sum();
    run.backoff_entries = entries.values().sum();
    run.max_connections = max_open(&|_| true);
    for (name, counts) in providers.iter_mut() {
        finish(&format!("p:{name}"), counts, true);
        let mine: Vec<&QueueData> = data
            .queues
            .iter()
            .filter(|q| provider_of_domain(&q.domain) == *name)
            .collect();
        counts.queued_at_end = Some(mine.iter().map(|q| q.queued_at_end).sum());
        counts.backoff_time_s = mine.iter().map(|q| backoff_time(&q.name)).sum();
        counts.backoff_entries = mine
            .iter()
            .map(|q| entries.get(&q.name).copied().unwrap_or(0))
            .sum();
        counts.max_connections =
            max_open(&|c| provider_of_domain(&queue_domain(&c.queue)) == *name);
    }
    for (ip, counts) in ips.iter_mut() {
        finish(&format!("i:{ip}"), counts, false);
        counts.max_connections = max_open(&|c| c.source_ip == *ip);
    }
    let mut rows_by_queue: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in rows {
        rows_by_queue.entry(&row.queue).or_default().push(row);
    }
    for q in &data.queues {
        let summary = queues.entry(q.name.clone()).or_default();
        finish(&format!("q:{}", q.name), &mut summary.counts, true);
        summary.counts.queued_at_end = Some(q.queued_at_end);
        summary.counts.backoff_time_s = backoff_time(&q.name);
        summary.counts.backoff_entries = entries.get(&q.name).copied().unwrap_or(0);
        summary.counts.max_connections = max_open(&|c| c.queue == q.name);
        let own = rows_by_queue
            .get(q.name.as_str())
            .map_or(&[][..], Vec::as_slice);
        summary.binding = binding(data, own, q, &provider_of_domain(&q.domain));
    }

    // Time series.
    let bucket_of =
        |t: u64| ((t.saturating_sub(start)) / bucket_s).min(buckets as u64 - 1) as usize;
    let x = |i: usize| (i as u64 * bucket_s) as f64;
    let per_hour = 3600.0 / bucket_s as f64;
    let mut outcomes = BTreeMap::new();
    for p in &data.providers {
        let mut lines = Vec::new();
        for (label, kinds) in [
            ("delivered", &["d"][..]),
            ("deferred", &["t", "tq"][..]),
            ("bounced", &["b"][..]),
        ] {
            let mut counts = vec![0u64; buckets];
            for row in rows
                .iter()
                .filter(|r| kinds.contains(&r.kind.as_str()) && row_provider(r) == p.name)
            {
                counts[bucket_of(row.logged_s)] += 1;
            }
            lines.push(Series {
                name: format!("{label} per hour"),
                points: counts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (x(i), *n as f64 * per_hour))
                    .collect(),
                step: false,
            });
        }
        outcomes.insert(p.name.clone(), lines);
    }
    let mut queue_depth = Vec::new();
    let mut queue_age = Vec::new();
    for p in &data.providers {
        let mut delta = vec![0i64; buckets];
        let mut arrivals: Vec<(u64, u64)> = Vec::new();
        let mut finals: Vec<u64> = Vec::new();
        for q in data
            .queued
            .iter()
            .filter(|q| provider_of_domain(&queue_domain(&q.queue)) == p.name)
        {
            delta[bucket_of(q.at_s)] += q.recipients as i64;
            arrivals.push((q.at_s, q.recipients));
        }
        for row in rows
            .iter()
            .filter(|r| matches!(r.kind.as_str(), "d" | "b") && row_provider(r) == p.name)
        {
            delta[bucket_of(row.logged_s)] -= 1;
            finals.push(row.logged_s);
        }
        let mut depth = 0i64;
        let points = delta
            .iter()
            .enumerate()
            .map(|(i, d)| {
                depth += d;
                (x(i), depth.max(0) as f64)
            })
            .collect();
        queue_depth.push(Series {
            name: p.name.clone(),
            points,
            step: false,
        });
        // The oldest waiting recipient at each bucket's end: arrivals in order, each final
        // record retiring the recipient that entered earliest among those still waiting
        // (exact for the age of the queue when retries keep order; a good approximation
        // otherwise).
        arrivals.sort();
        finals.sort();
        let mut ages = Vec::new();
        let (mut a, mut f) = (0usize, 0usize);
        let mut waiting: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
        for i in 0..buckets {
            let until = start + (i as u64 + 1) * bucket_s;
            while a < arrivals.len() && arrivals[a].0 < until {
                waiting.push_back(arrivals[a]);
                a += 1;
            }
            while f < finals.len() && finals[f] < until {
                if let Some(front) = waiting.front_mut() {
                    front.1 -= 1;
                    if front.1 == 0 {
                        waiting.pop_front();
                    }
                }
                f += 1;
            }
            let age = waiting
                .front()
                .map_or(0, |(t, _)| until.min(end).saturating_sub(*t));
            ages.push((x(i), age as f64 / 60.0));
        }
        queue_age.push(Series {
            name: p.name.clone(),
            points: ages,
            step: false,
        });
    }
    let mut busiest: Vec<(&String, u64)> = queues
        .iter()
        .map(|(name, s)| (name, s.counts.delivered + s.counts.bounced))
        .collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut connections = Vec::new();
    for (name, _) in busiest.iter().take(QUEUES_PER_CHART_MAX) {
        let mut delta = vec![0i64; buckets + 1];
        for c in data.connections.iter().filter(|c| &c.queue == *name) {
            // Open during a bucket when opened before its end and closed after its start.
            delta[bucket_of(c.opened_s)] += 1;
            let closed = c.closed_s.unwrap_or(end);
            if closed < end {
                let after = (closed.saturating_sub(start)).div_ceil(bucket_s) as usize;
                delta[after.max(bucket_of(c.opened_s) + 1).min(buckets)] -= 1;
            }
        }
        let mut open = 0i64;
        connections.push(Series {
            name: (*name).clone(),
            points: (0..buckets)
                .map(|i| {
                    open += delta[i];
                    (x(i), open.max(0) as f64)
                })
                .collect(),
            step: false,
        });
    }
    let mut source_ip_rates = BTreeMap::new();
    let mut reputation = BTreeMap::new();
    let hours = data.duration_s.div_ceil(3600).max(1) as usize;
    for p in &data.providers {
        let mut lines = Vec::new();
        let mut by_ip: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for row in rows
            .iter()
            .filter(|r| r.kind == "d" && !r.source_ip.is_empty() && row_provider(r) == p.name)
        {
            let h = ((row.logged_s.saturating_sub(start)) / 3600).min(hours as u64 - 1) as usize;
            by_ip
                .entry(&row.source_ip)
                .or_insert_with(|| vec![0; hours])[h] += 1;
        }
        for (ip, counts) in &by_ip {
            lines.push(Series {
                name: format!("{ip} delivered/h"),
                points: counts
                    .iter()
                    .enumerate()
                    .map(|(h, n)| ((h * 3600) as f64, *n as f64))
                    .collect(),
                step: false,
            });
            let identity = format!("ip:{ip}");
            let limit: Vec<(f64, f64)> = p
                .standings
                .iter()
                .filter(|s| s.identity == identity)
                .map(|s| {
                    (
                        (s.at_s.saturating_sub(start) / 3600 * 3600) as f64,
                        s.capacity_per_hour as f64,
                    )
                })
                .collect();
            if !limit.is_empty() {
                lines.push(Series {
                    name: format!("{ip} limit/h"),
                    points: limit,
                    step: true,
                });
            }
        }
        source_ip_rates.insert(p.name.clone(), lines);
        let mut scores: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for s in &p.standings {
            scores
                .entry(&s.identity)
                .or_default()
                .push((s.at_s.saturating_sub(start) as f64, s.score));
        }
        reputation.insert(
            p.name.clone(),
            scores
                .into_iter()
                .map(|(identity, points)| Series {
                    name: identity.to_string(),
                    points,
                    step: false,
                })
                .collect(),
        );
    }

    Report {
        summary: Summary {
            schema_version: SCHEMA_VERSION,
            scenario: data.scenario.clone(),
            seed: data.seed,
            version: data.version.clone(),
            config_sha256: data.config_sha256.clone(),
            start: crate::time::Time::from_secs(start).acct_format(),
            duration_s: data.duration_s,
            run,
            providers: providers
                .into_iter()
                .map(|(name, counts)| {
                    let summary = provider_summary(data, &name, counts);
                    (name, summary)
                })
                .collect(),
            queues,
            source_ips: ips,
            refused: data.refused.clone(),
            pattern_failures: data.pattern_failures.clone(),
        },
        bucket_s,
        outcomes,
        queue_depth,
        queue_age,
        connections,
        backoff_bands: bands,
        source_ip_rates,
        reputation,
    }
}

/// The SMTP steps in conversation order, as `run.json` names them.
pub const PHASES: [&str; 9] = [
    "connect", "greeting", "ehlo", "starttls", "mail", "rcpt", "data", "data_end", "rset",
];

impl ProviderSummary {
    /// Where the provider said no, in conversation order: each step with its refusals and
    /// its most frequent reply (`data_end 1200 (421 4.7.28)`).
    pub fn refusals(&self) -> Vec<(&'static str, u64, &str)> {
        PHASES
            .iter()
            .filter_map(|phase| {
                let by_reply = self.refusals_by_phase.get(*phase)?;
                let total = by_reply.values().sum();
                let top = by_reply
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .map_or("", |(reply, _)| reply.as_str());
                Some((*phase, total, top))
            })
            .collect()
    }
}

/// A provider's summary: its counts, the daily spam rate it measures, and its negative
/// replies by SMTP step.
fn provider_summary(data: &RunData, name: &str, counts: Counts) -> ProviderSummary {
    let provider = data.providers.iter().find(|p| p.name == name);
    let spam_rate_daily = provider
        .map(|p| {
            p.daily
                .iter()
                .map(|d| SpamRateDay {
                    day: d.day.clone(),
                    delivered: d.delivered,
                    complaints: d.complaints,
                    spam_rate: if d.delivered == 0 {
                        0.0
                    } else {
                        d.complaints as f64 / d.delivered as f64
                    },
                })
                .collect()
        })
        .unwrap_or_default();
    let mut refusals_by_phase: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for r in &data.replies {
        let domain = r.queue.split('/').next().unwrap_or("");
        if r.reply.starts_with('2') || provider_of(data, domain) != name {
            continue;
        }
        *refusals_by_phase
            .entry(r.phase.clone())
            .or_default()
            .entry(r.reply.clone())
            .or_default() += r.count;
    }
    ProviderSummary {
        counts,
        feedback: provider.map(|p| p.feedback.clone()).unwrap_or_default(),
        spam_rate_daily,
        refusals_by_phase,
    }
}

/// For each minute a queue had mail waiting, which limit held it back, in order: the
/// backoff limits while in backoff (its rate, its connections), the retry timer
/// (`backoff-retry-after` in backoff, else `retry-after`), the receiver's penalty on one of
/// its source IPs, `max-msg-rate` and `max-smtp-out` in normal mode, recipients waiting out
/// `retry-recipients-after` after a deferral; a minute with none of them is "sending".
/// `rows` are the queue's own accounting rows.
fn binding(data: &RunData, rows: &[&Row], queue: &QueueData, provider: &str) -> Binding {
    let start = data.start_s;
    let minutes = data.duration_s.div_ceil(60);
    let attempts = sorted_times(rows.iter().copied(), |r| {
        matches!(r.kind.as_str(), "d" | "b" | "t") && !r.source_ip.is_empty()
    });
    let in_window = |t: u64, per_s: u64| -> u64 {
        let lo = attempts.partition_point(|a| *a + per_s <= t);
        let hi = attempts.partition_point(|a| *a <= t);
        (hi - lo) as u64
    };
    let ips: Vec<&str> = data
        .connections
        .iter()
        .filter(|c| c.queue == queue.name)
        .map(|c| c.source_ip.as_str())
        .collect();
    let throttles: Vec<&ThrottleWindow> = data
        .providers
        .iter()
        .filter(|p| p.name == provider)
        .flat_map(|p| &p.throttles)
        .filter(|t| ips.contains(&t.source_ip.as_str()))
        .collect();
    let changes: Vec<&ModeChange> = data
        .mode_changes
        .iter()
        .filter(|c| c.queue == queue.name)
        .collect();
    let retries: Vec<&RetryWait> = data
        .retries
        .iter()
        .filter(|r| r.queue == queue.name)
        .collect();
    let conns: Vec<&Connection> = data
        .connections
        .iter()
        .filter(|c| c.queue == queue.name)
        .collect();
    // Recipients waiting: entries so far minus final records so far.
    let mut entered: Vec<(u64, u64)> = data
        .queued
        .iter()
        .filter(|q| q.queue == queue.name)
        .map(|q| (q.at_s, q.recipients))
        .collect();
    entered.sort();
    let finished = sorted_times(rows.iter().copied(), |r| {
        matches!(r.kind.as_str(), "d" | "b")
    });
    let deferrals = sorted_times(rows.iter().copied(), |r| r.kind == "t");
    // Whether a recipient deferred in the last `retry-recipients-after` is still waiting.
    let deferred_waiting = |t: u64| {
        let lo = deferrals.partition_point(|d| d + queue.retry_recipients_after_s <= t);
        let hi = deferrals.partition_point(|d| *d <= t);
        hi > lo
    };
    let mut held: BTreeMap<String, u64> = BTreeMap::new();
    let mut waiting_minutes = 0;
    let (mut e, mut f, mut waiting) = (0usize, 0usize, 0i64);
    let rate_name = |prefix: &str, r: RateLimit| format!("{prefix} {}", rate_text(r));
    for m in 0..minutes {
        let t = start + m * 60 + 59;
        while e < entered.len() && entered[e].0 <= t {
            waiting += entered[e].1 as i64;
            e += 1;
        }
        while f < finished.len() && finished[f] <= t {
            waiting -= 1;
            f += 1;
        }
        if waiting <= 0 {
            continue;
        }
        waiting_minutes += 1;
        let backoff = changes
            .iter()
            .rev()
            .find(|c| c.at_s <= t)
            .is_some_and(|c| c.backoff);
        let open = conns
            .iter()
            .filter(|c| c.opened_s <= t && c.closed_s.is_none_or(|end| end > t))
            .count() as u64;
        let backoff_rate = queue
            .backoff_max_msg_rate
            .filter(|r| backoff && in_window(t, r.per_s) >= r.count);
        let reason = if let Some(r) = backoff_rate {
            rate_name("backoff-max-msg-rate", r)
        } else if backoff && open >= queue.backoff_max_smtp_out {
            format!("backoff-max-smtp-out {}", queue.backoff_max_smtp_out)
        } else if retries.iter().any(|r| r.at_s <= t && t < r.until_s) {
            if backoff {
                "backoff-retry-after".to_string()
            } else {
                "retry-after".to_string()
            }
        } else if throttles.iter().any(|w| w.at_s <= t && t < w.until_s) {
            format!("{provider}'s throttle")
        } else if let Some(r) = queue
            .max_msg_rate
            .filter(|r| !backoff && in_window(t, r.per_s) >= r.count)
        {
            rate_name("max-msg-rate", r)
        } else if !backoff && open >= queue.max_smtp_out {
            format!("max-smtp-out {}", queue.max_smtp_out)
        } else if deferred_waiting(t) {
            "retry-recipients-after".to_string()
        } else {
            "sending".to_string()
        };
        *held.entry(reason).or_default() += 1;
    }
    let shares: BTreeMap<String, f64> = held
        .iter()
        .map(|(k, n)| (k.clone(), *n as f64 / waiting_minutes.max(1) as f64))
        .collect();
    let top = held
        .iter()
        .filter(|(k, _)| k.as_str() != "sending")
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
    let explanation = match top {
        None => format!("{}: never held back", queue.name),
        Some((limit, n)) => {
            let share = (*n * 100).div_ceil(waiting_minutes.max(1));
            let cause = changes
                .iter()
                .find(|c| c.backoff)
                .filter(|_| limit.starts_with("backoff"))
                .map(|c| {
                    let reply = c.reason.split('`').nth(1).unwrap_or(&c.reason);
                    let words: Vec<&str> = reply.split_whitespace().take(2).collect();
                    format!(
                        " after {} at {}",
                        words.join(" "),
                        clock(c.at_s.saturating_sub(start))
                    )
                })
                .unwrap_or_default();
            format!(
                "{}: held back by {limit} for {share}% of the time mail waited{cause}",
                queue.name
            )
        }
    };
    Binding {
        waiting_minutes,
        shares,
        explanation,
    }
}

/// When the rows `keep` accepts were logged, in order.
pub(crate) fn sorted_times<'r>(
    rows: impl Iterator<Item = &'r Row>,
    keep: impl Fn(&Row) -> bool,
) -> Vec<u64> {
    let mut times: Vec<u64> = rows.filter(|r| keep(r)).map(|r| r.logged_s).collect();
    times.sort_unstable();
    times
}

/// `10/m`, `60/h`, `5/30s`.
pub fn rate_text(r: RateLimit) -> String {
    match r.per_s {
        1 => format!("{}/s", r.count),
        60 => format!("{}/m", r.count),
        3600 => format!("{}/h", r.count),
        86_400 => format!("{}/d", r.count),
        s => format!("{}/{s}s", r.count),
    }
}

/// Seconds since the start as `HH:MM` (days as `1d HH:MM`).
pub fn clock(s: u64) -> String {
    let days = s / 86_400;
    let rest = s % 86_400;
    let hm = format!("{:02}:{:02}", rest / 3600, rest / 60 % 60);
    if days > 0 {
        format!("{days}d {hm}")
    } else {
        hm
    }
}

/// `summary.json`: pretty, keys in a fixed order, a trailing newline.
pub fn summary_json(summary: &Summary) -> String {
    let mut text = serde_json::to_string_pretty(summary).expect("a summary always serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_counted_values_match_the_expanded_list() {
        let cases: [&[(u64, u64)]; 4] = [
            &[(5, 2), (1, 1), (9, 3)],
            &[(7, 1)],
            &[(3, 40), (100, 1), (2, 0)],
            &[(1, 19), (2, 1), (3, 1)],
        ];
        for counted in cases {
            let expanded: Vec<u64> = counted
                .iter()
                .flat_map(|(v, n)| std::iter::repeat_n(*v, *n as usize))
                .collect();
            assert_eq!(
                Percentiles::of_counts(counted.to_vec()),
                Percentiles::of(expanded),
                "{counted:?}"
            );
        }
        assert_eq!(
            Percentiles::of_counts(vec![(4, u64::MAX)]).max,
            4,
            "a count too large to expand"
        );
    }

    fn data(duration_s: u64) -> RunData {
        RunData {
            schema_version: SCHEMA_VERSION,
            scenario: "t".into(),
            seed: 1,
            version: "0".into(),
            config_sha256: String::new(),
            start_s: 1_000_000,
            duration_s,
            providers: vec![ProviderData {
                name: "p".into(),
                domains: vec!["p.example".into()],
                throttles: Vec::new(),
                standings: Vec::new(),
                feedback: "aggregate".into(),
                daily: Vec::new(),
            }],
            queues: vec![QueueData {
                name: "p.example/v".into(),
                domain: "p.example".into(),
                vmta: "v".into(),
                max_msg_rate: Some(RateLimit {
                    count: 60,
                    per_s: 3600,
                }),
                backoff_max_msg_rate: Some(RateLimit {
                    count: 10,
                    per_s: 3600,
                }),
                max_smtp_out: 2,
                backoff_max_smtp_out: 1,
                backoff_at_end: false,
                queued_at_end: 0,
                retry_recipients_after_s: 600,
            }],
            mode_changes: Vec::new(),
            retries: Vec::new(),
            queued: Vec::new(),
            connections: Vec::new(),
            refused: Refusals::default(),
            pattern_failures: Vec::new(),
            replies: Vec::new(),
        }
    }

    fn delivered(at_s: u64, queued_s: u64) -> Row {
        Row {
            kind: "d".into(),
            logged_s: at_s,
            queued_s,
            rcpt_domain: "p.example".into(),
            status: "2.0.0".into(),
            diag: "smtp;250 ok".into(),
            category: String::new(),
            source_ip: "192.0.2.1".into(),
            queue: "p.example/v".into(),
        }
    }

    #[test]
    fn a_constant_rate_draws_a_flat_line_at_that_rate() {
        // One delivery a minute for four hours: 60 an hour in every bucket.
        let d = data(4 * 3600);
        let rows: Vec<Row> = (0..240)
            .map(|m| delivered(d.start_s + m * 60 + 5, d.start_s))
            .collect();
        let report = build(&d, &rows);
        let line = &report.outcomes["p"][0];
        assert_eq!(line.name, "delivered per hour");
        assert!(
            line.points.iter().all(|(_, v)| (*v - 60.0).abs() < 1e-9),
            "{:?}",
            line.points
        );
        let rate = &report.source_ip_rates["p"][0];
        assert_eq!(
            rate.points,
            vec![
                (0.0, 60.0),
                (3600.0, 60.0),
                (7200.0, 60.0),
                (10_800.0, 60.0)
            ]
        );
        assert_eq!(report.summary.run.delivered, 240);
        assert_eq!(report.summary.run.peak_delivered_per_hour, 60);
        assert_eq!(report.summary.run.peak_delivered_per_minute, 1);
    }

    #[test]
    fn a_backoff_band_spans_the_mode_changes_and_explains_the_queue() {
        let mut d = data(3 * 3600);
        let s = d.start_s;
        d.queued.push(Queued {
            at_s: s,
            queue: "p.example/v".into(),
            recipients: 100,
        });
        d.mode_changes.push(ModeChange {
            at_s: s + 1800,
            queue: "p.example/v".into(),
            backoff: true,
            reason: "/4\\.7\\.28/ matched `421 4.7.28 slow down`".into(),
        });
        d.mode_changes.push(ModeChange {
            at_s: s + 5400,
            queue: "p.example/v".into(),
            backoff: false,
            reason: "backoff-to-normal-after elapsed".into(),
        });
        // Ten deliveries fill the backoff rate of 10/h right after entering backoff.
        let rows: Vec<Row> = (0..10).map(|i| delivered(s + 1800 + i, s)).collect();
        let report = build(&d, &rows);
        assert_eq!(
            report.backoff_bands,
            vec![Band {
                row: "p.example/v".into(),
                from_s: 1800.0,
                to_s: 5400.0
            }]
        );
        let q = &report.summary.queues["p.example/v"];
        assert_eq!(
            (q.counts.backoff_entries, q.counts.backoff_time_s),
            (1, 3600)
        );
        assert_eq!(q.counts.queued_at_end, Some(0));
        assert_eq!(q.counts.injected, Some(100));
        // Backoff for 60 of the 180 waiting minutes, all of it under the backoff rate.
        assert_eq!(q.binding.waiting_minutes, 180);
        assert!((q.binding.shares["backoff-max-msg-rate 10/h"] - 60.0 / 180.0).abs() < 1e-9);
        assert_eq!(
            q.binding.explanation,
            "p.example/v: held back by backoff-max-msg-rate 10/h for 34% of the time mail waited after 421 4.7.28 at 00:30"
        );
    }

    #[test]
    fn the_accounting_file_reads_back_as_written() {
        let text = format!(
            "{}\nd,2026-09-21 12:00:05+0000,2026-09-21 12:00:00+0000,a@x.example,u@p.example,,relayed,2.0.0,smtp;250 ok,mx,,api,,smtp,192.0.2.1,198.18.0.1,,100,v,j,e,p.example/v,\n",
            HEADER.join(",")
        );
        let rows = read_acct("acct.csv", &text).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].logged_s - rows[0].queued_s, 5);
        assert_eq!(rows[0].rcpt_domain, "p.example");
        let bad = text.replace("2026-09-21 12:00:05+0000", "yesterday");
        let err = read_acct("acct.csv", &bad).unwrap_err().to_string();
        assert!(
            err.contains("line 2: `yesterday` is not a timestamp"),
            "{err}"
        );
    }

    #[test]
    fn queue_depth_age_and_connections_follow_known_data() {
        // 100 recipients at the start; one delivered a minute from minute 0; one connection
        // open from 10 to 40 minutes.
        let mut d = data(2 * 3600);
        let s = d.start_s;
        d.queued.push(Queued {
            at_s: s,
            queue: "p.example/v".into(),
            recipients: 100,
        });
        d.connections.push(Connection {
            queue: "p.example/v".into(),
            source_ip: "192.0.2.1".into(),
            opened_s: s + 600,
            closed_s: Some(s + 2400),
            messages: 30,
        });
        let rows: Vec<Row> = (0..100).map(|m| delivered(s + m * 60, s)).collect();
        let report = build(&d, &rows);
        assert_eq!(report.bucket_s, 60);
        let depth = &report.queue_depth[0].points;
        assert_eq!(depth[0], (0.0, 99.0));
        assert_eq!(depth[49], (2940.0, 50.0));
        assert_eq!(depth[99], (5940.0, 0.0));
        // The oldest waiting recipient entered at the start: its age grows a minute a bucket
        // until the queue is empty.
        let age = &report.queue_age[0].points;
        assert_eq!(age[0], (0.0, 1.0));
        assert_eq!(age[49], (2940.0, 50.0));
        assert_eq!(age[100], (6000.0, 0.0));
        let open = &report.connections[0].points;
        assert_eq!(open[9].1, 0.0);
        assert!(
            open[10..40].iter().all(|(_, n)| *n == 1.0),
            "{:?}",
            &open[8..42]
        );
        assert_eq!(open[40].1, 0.0);
        assert_eq!(
            report.summary.queues["p.example/v"].counts.max_connections,
            1
        );
    }

    #[test]
    fn reputation_and_limits_come_from_the_providers_samples() {
        let mut d = data(3 * 3600);
        let s = d.start_s;
        for (h, score, capacity) in [(0, 0.5, 20), (1, 0.5, 20), (2, 0.45, 16)] {
            d.providers[0].standings.push(StandingPoint {
                at_s: s + h * 3600 + 120,
                identity: "ip:192.0.2.1".into(),
                score,
                capacity_per_hour: capacity,
            });
        }
        let rows = vec![delivered(s + 10, s)];
        let report = build(&d, &rows);
        let reputation = &report.reputation["p"];
        assert_eq!(reputation[0].name, "ip:192.0.2.1");
        assert_eq!(
            reputation[0].points,
            vec![(120.0, 0.5), (3720.0, 0.5), (7320.0, 0.45)]
        );
        let limit = &report.source_ip_rates["p"][1];
        assert_eq!(limit.name, "192.0.2.1 limit/h");
        assert_eq!(
            limit.points,
            vec![(0.0, 20.0), (3600.0, 20.0), (7200.0, 16.0)]
        );
    }

    #[test]
    fn a_flat_rate_is_a_flat_line_in_the_drawn_svg() {
        let d = data(2 * 3600);
        let rows: Vec<Row> = (0..120)
            .map(|m| delivered(d.start_s + m * 60 + 5, d.start_s))
            .collect();
        let report = build(&d, &rows);
        let charts = charts::render(&report);
        let outcomes = charts.iter().find(|c| c.name == "outcomes-p").unwrap();
        // The first polyline is the delivered series: every point at the same height.
        let points = outcomes
            .svg
            .split("<polyline")
            .find(|p| p.contains("stroke-width=\"2\""))
            .and_then(|p| p.split("points=\"").nth(1))
            .and_then(|p| p.split('"').next())
            .unwrap();
        let ys: std::collections::BTreeSet<&str> = points
            .split_whitespace()
            .filter_map(|xy| xy.split(',').nth(1))
            .collect();
        assert_eq!(ys.len(), 1, "{points}");
        assert!(outcomes.png.starts_with(b"\x89PNG"));
    }

    /// Issue 13 items 5 and 7: the summary shows each provider's daily aggregate spam rate
    /// (what Gmail's Postmaster Tools shows, reference §4.7) and where it said no, by SMTP
    /// step, from `run.json`.
    #[test]
    fn the_summary_shows_the_daily_spam_rate_and_where_a_provider_said_no() {
        let mut d = data(2 * 86_400);
        d.providers[0].daily = vec![
            DailyMail {
                day: "1970-01-12".into(),
                delivered: 2000,
                complaints: 7,
            },
            DailyMail {
                day: "1970-01-13".into(),
                delivered: 0,
                complaints: 0,
            },
        ];
        let reply = |phase: &str, reply: &str, count: u64| ReplyCount {
            queue: "p.example/v".into(),
            source_ip: "192.0.2.1".into(),
            phase: phase.into(),
            reply: reply.into(),
            count,
            first_at_s: d.start_s,
            last_at_s: d.start_s,
            example: format!("smtp;{reply} ..."),
        };
        d.replies = vec![
            reply("data_end", "250 2.0.0", 100),
            reply("data_end", "421 4.7.28", 40),
            reply("rcpt", "550 5.1.1", 3),
            reply("mail", "421 4.7.0", 1),
        ];
        let report = build(&d, &[]);
        let p = &report.summary.providers["p"];
        assert_eq!(p.feedback, "aggregate");
        assert_eq!(p.spam_rate_daily[0].spam_rate, 7.0 / 2000.0);
        assert_eq!(p.spam_rate_daily[1].spam_rate, 0.0);
        assert_eq!(p.refusals_by_phase["data_end"]["421 4.7.28"], 40);
        assert!(!p.refusals_by_phase["data_end"].contains_key("250 2.0.0"));
        assert_eq!(
            p.refusals(),
            [
                ("mail", 1, "421 4.7.0"),
                ("rcpt", 3, "550 5.1.1"),
                ("data_end", 40, "421 4.7.28")
            ]
        );
        let json = summary_json(&report.summary);
        assert!(json.contains("\"spam_rate\": 0.0035"), "{json}");
        assert!(json.contains("\"refusals_by_phase\""));
        let page = html::page(&report, &[]);
        assert!(page.contains("<td>40 (421 4.7.28)</td>"));
        assert!(page.contains("<td>0.350%</td>"));
    }
}
