//! Reports of a finished run: the summary (`summary.json`), the time series behind the
//! charts, which limit held each queue back, the charts themselves (`charts`), the HTML page
//! (`html`) and the terminal table (`terminal`).
//!
//! Owns `RunData` (what a run leaves in `run.json`: providers' daily mail, standings and
//! throttle windows, queue limits, mode changes with their trigger, the replies by SMTP
//! step, and the [`Figures`] the [`aggregate::Aggregator`] kept up to date while the run
//! went) and every figure derived from it. A report is built from `run.json` alone, never
//! from the accounting records (a long run never holds them, and `acct.csv` may keep only
//! the record types and fields the configuration's `<acct-file>` asks for). Pure: callers
//! read and write the files; the same inputs always give the same bytes, so
//! `pmta-sim report DIR` rebuilds exactly what `pmta-sim run` wrote. It reads the engine's
//! accounting record and events, never its internals, and no clock.

pub mod aggregate;
pub mod charts;
pub mod diff;
pub mod expect;
pub mod html;
pub mod terminal;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The version of `summary.json` and `run.json`; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 2;
/// Most buckets in a time series (a chart's resolution) of a run up to [`DAILY_AFTER_S`].
pub const BUCKETS_MAX: u64 = 240;
/// Runs longer than this are charted by day: one bucket per day, bars per day.
pub const DAILY_AFTER_S: u64 = 2 * 86_400;
/// Most queues drawn in one chart (the busiest).
pub const QUEUES_PER_CHART_MAX: usize = 12;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("{file}: {message}")]
    Input { file: String, message: String },
}

/// The width of a chart's buckets for a run of `duration_s`: a day for multi-day runs, else
/// whole minutes, at most [`BUCKETS_MAX`] of them.
pub fn bucket_s(duration_s: u64) -> u64 {
    if duration_s > DAILY_AFTER_S {
        86_400
    } else {
        (duration_s.div_ceil(BUCKETS_MAX)).max(60).div_ceil(60) * 60
    }
}

/// A rate limit as `count` per `per_s` seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub count: u64,
    pub per_s: u64,
}

/// Everything a report needs: `run.json`.
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
    /// Messages the engine refused at injection.
    pub refused: Refusals,
    /// Patterns the regex engine could not evaluate during the run (each once).
    pub pattern_failures: Vec<PatternFailure>,
    /// The replies behind the accounting records, counted by where they came: so a report
    /// can say at which SMTP step a provider said no (`acct.csv` has no such field).
    pub replies: Vec<ReplyCount>,
    /// The run's figures, kept up to date while it went.
    pub figures: Figures,
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

/// Most throttle windows listed per provider (the rest are counted).
pub const THROTTLE_WINDOWS_LISTED_MAX: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderData {
    pub name: String,
    pub domains: Vec<String>,
    /// The provider's penalty windows: throttle replies on one source IP and key whose
    /// penalties overlap (an early retry extends one) are one window. The first
    /// [`THROTTLE_WINDOWS_LISTED_MAX`].
    pub throttles: Vec<ThrottleWindow>,
    /// Every penalty window, listed or not.
    pub throttle_windows: u64,
    /// Each identity's standing, at most one sample per identity per chart bucket (the last).
    pub standings: Vec<StandingPoint>,
    /// What the sender sees of complaints: `reports` (a feedback loop's `f` records),
    /// `aggregate` (a daily spam rate only, as at Gmail) or `none`.
    pub feedback: String,
    /// Mail the provider accepted and the complaints about it, per UTC day.
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

/// A provider's penalty on one key for one source IP: from its first throttle reply until
/// the last penalty it started or extended ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThrottleWindow {
    pub at_s: u64,
    pub until_s: u64,
    pub source_ip: String,
    /// `ip:…`, `net:…` or `domain:…`.
    pub key: String,
    /// The first reply of the window.
    pub reply: String,
    /// Throttle replies in the window.
    pub replies: u64,
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
    /// The queue's domain (after `queue-to`) and virtual MTA, as the engine names them.
    pub domain: String,
    pub vmta: String,
    pub max_msg_rate: Option<RateLimit>,
    pub backoff_max_msg_rate: Option<RateLimit>,
    pub max_smtp_out: u64,
    pub backoff_max_smtp_out: u64,
    pub backoff_at_end: bool,
    pub queued_at_end: u64,
    /// How long a deferred recipient waits before its next attempt.
    pub retry_recipients_after_s: u64,
}

/// What switched a queue's mode, as the engine said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// A reply matched a pattern of the queue's `<smtp-pattern-list>`.
    Pattern { pattern: String, reply: String },
    /// `backoff-to-normal-after` elapsed.
    BackoffToNormalAfter,
    /// A delivery while in backoff (`backoff-to-normal-after-delivery`).
    DeliveryInBackoff,
    /// Every source IP disabled (`backoff-upon-all-sources-disabled`).
    AllSourceIpsDisabled,
    /// An operator set the mode (live mode's management API).
    Operator,
    /// Another node put the queue into backoff (`shared-throttles`).
    SharedStore,
}

impl From<&crate::engine::ModeTrigger> for Trigger {
    fn from(trigger: &crate::engine::ModeTrigger) -> Trigger {
        use crate::engine::ModeTrigger as M;
        match trigger {
            M::Pattern { pattern, reply } => Trigger::Pattern {
                pattern: pattern.clone(),
                reply: reply.clone(),
            },
            M::BackoffToNormalAfter => Trigger::BackoffToNormalAfter,
            M::DeliveryInBackoff => Trigger::DeliveryInBackoff,
            M::AllSourceIpsDisabled => Trigger::AllSourceIpsDisabled,
            M::Operator => Trigger::Operator,
            M::SharedStore => Trigger::SharedStore,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModeChange {
    pub at_s: u64,
    pub queue: String,
    pub backoff: bool,
    pub trigger: Trigger,
}

/// The figures of a run, kept up to date while it went (see [`aggregate`]): the summary's
/// counts and the charts' series, never a list of records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Width of the series' buckets ([`bucket_s`]).
    pub bucket_s: u64,
    pub run: Counts,
    pub providers: BTreeMap<String, Counts>,
    pub queues: BTreeMap<String, QueueFigures>,
    pub source_ips: BTreeMap<String, Counts>,
    /// Per provider of the scenario: its series.
    pub series: BTreeMap<String, ProviderSeries>,
}

/// A queue's figures beyond its counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueFigures {
    #[serde(flatten)]
    pub counts: Counts,
    /// Minutes with recipients waiting in the queue.
    pub waiting_minutes: u64,
    /// Limit (`max-msg-rate 10/h`, `gmail's throttle`, `sending`, …) → minutes it held the
    /// queue's waiting mail back.
    pub held_minutes: BTreeMap<String, u64>,
    /// Messages (MAIL FROM commands) a connection carried → connections that carried that
    /// many.
    pub messages_per_connection: BTreeMap<u64, u64>,
    /// The most connections open at once in each bucket.
    pub connections: Vec<u64>,
}

/// One provider's series, one value per bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderSeries {
    pub delivered: Vec<u64>,
    /// `t` and `tq` records.
    pub deferred: Vec<u64>,
    pub bounced: Vec<u64>,
    /// Recipients queued at the end of each bucket.
    pub queued: Vec<u64>,
    /// Age of the oldest queued recipient at the end of each bucket.
    pub oldest_s: Vec<u64>,
    /// Deliveries from each source IP per hour (per day in a multi-day run).
    pub source_ip_delivered: BTreeMap<String, Vec<u64>>,
}

/// Most queues times buckets a report is built for (the connection series).
pub const QUEUE_BUCKETS_MAX: u64 = 100_000_000;

impl RunData {
    /// Checks that `run.json` describes a run pmta-sim could have made: its version, a
    /// duration a scenario may have, times before the year 10000, rates with a count and a
    /// window, finite scores, series of the run's buckets, and a size a report can be built
    /// for. A file that fails is refused with the reason (never a panic or an allocation
    /// abort).
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
            .chain(self.mode_changes.iter().map(|c| c.at_s));
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
        let figures = &self.figures;
        if figures.bucket_s != bucket_s(self.duration_s) {
            return Err(format!(
                "buckets of {} s; a run of {} s has buckets of {} s",
                figures.bucket_s,
                self.duration_s,
                bucket_s(self.duration_s)
            ));
        }
        let buckets = self.duration_s.div_ceil(figures.bucket_s) as usize;
        let rate_buckets = self.duration_s.div_ceil(rate_bucket_s(self.duration_s)) as usize;
        for (name, s) in &figures.series {
            let lengths = [
                &s.delivered,
                &s.deferred,
                &s.bounced,
                &s.queued,
                &s.oldest_s,
            ]
            .map(Vec::len);
            if lengths.iter().any(|n| *n != buckets)
                || s.source_ip_delivered
                    .values()
                    .any(|v| v.len() != rate_buckets)
            {
                return Err(format!(
                    "provider `{}`: series are not the run's {buckets} buckets",
                    crate::printable::escape(name)
                ));
            }
        }
        if let Some((name, _)) = figures
            .queues
            .iter()
            .find(|(_, q)| q.connections.len() != buckets)
        {
            return Err(format!(
                "queue `{}`: connections are not the run's {buckets} buckets",
                crate::printable::escape(name)
            ));
        }
        if (figures.queues.len() as u64).saturating_mul(buckets as u64) > QUEUE_BUCKETS_MAX {
            return Err(format!(
                "{} queues over {buckets} buckets is more than a report is built for",
                figures.queues.len()
            ));
        }
        Ok(())
    }
}

/// The width of a source IP's delivery series: an hour, a day in a multi-day run.
pub fn rate_bucket_s(duration_s: u64) -> u64 {
    if duration_s > DAILY_AFTER_S {
        86_400
    } else {
        3600
    }
}

/// Percentiles of a set of durations, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

impl Percentiles {
    /// Percentiles of values given with their multiplicity, `(value, how many)`: the value
    /// at 0-based rank ⌈(n − 1)·q⌉ of the sorted list.
    pub(crate) fn of_counts(mut counted: Vec<(u64, u64)>) -> Percentiles {
        counted.retain(|(_, n)| *n > 0);
        counted.sort_unstable();
        let total: u64 = counted.iter().fold(0, |sum, (_, n)| sum.saturating_add(*n));
        if total == 0 {
            return Percentiles::default();
        }
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
}

/// The figures kept for the run, each provider, each queue and each source IP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// From a bounded sketch: exact up to 2,047 s, within 0.1% above.
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
    /// Charted by day: one value per day (bars), a daily axis.
    pub daily: bool,
    /// Per provider: delivered, deferred and bounced per bucket, as a rate per hour (per
    /// day in a multi-day run).
    pub outcomes: BTreeMap<String, Vec<Series>>,
    /// Recipients queued per provider at the end of each bucket.
    pub queue_depth: Vec<Series>,
    /// Age of the oldest queued recipient per provider, in minutes (hours in a multi-day
    /// run).
    pub queue_age: Vec<Series>,
    /// The most connections open at once per bucket, per queue (the busiest queues).
    pub connections: Vec<Series>,
    pub backoff_bands: Vec<Band>,
    /// Per provider: deliveries per hour (per day in a multi-day run) from each source IP,
    /// with the provider's capacity for that IP (`… limit`).
    pub source_ip_rates: BTreeMap<String, Vec<Series>>,
    /// Per provider: each identity's reputation score.
    pub reputation: BTreeMap<String, Vec<Series>>,
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

/// Builds the report of a run from its `run.json`.
pub fn build(data: &RunData) -> Report {
    let start = data.start_s;
    let figures = &data.figures;
    let bucket_s = figures.bucket_s.max(1);
    let daily = data.duration_s > DAILY_AFTER_S;
    let buckets = data.duration_s.div_ceil(bucket_s).max(1) as usize;
    let x = |i: usize| (i as u64 * bucket_s) as f64;

    // Backoff spans per queue.
    let mut entries: BTreeMap<&str, u64> = BTreeMap::new();
    for change in data.mode_changes.iter().filter(|c| c.backoff) {
        *entries.entry(&change.queue).or_default() += 1;
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
    let backoff_time = |queue: &str| -> u64 {
        bands
            .iter()
            .filter(|b| b.row == queue)
            .map(|b| (b.to_s - b.from_s) as u64)
            .fold(0, u64::saturating_add)
    };
    let queue_provider = |q: &QueueData| provider_of(data, &q.domain);

    let mut run = figures.run.clone();
    run.queued_at_end = Some(total(data.queues.iter().map(|q| q.queued_at_end)));
    run.backoff_time_s = total(data.queues.iter().map(|q| backoff_time(&q.name)));
    run.backoff_entries = total(entries.values().copied());
    let mut providers: BTreeMap<String, ProviderSummary> = BTreeMap::new();
    for (name, counts) in &figures.providers {
        let mut counts = counts.clone();
        let mine: Vec<&QueueData> = data
            .queues
            .iter()
            .filter(|q| queue_provider(q) == *name)
            .collect();
        counts.queued_at_end = Some(total(mine.iter().map(|q| q.queued_at_end)));
        counts.backoff_time_s = total(mine.iter().map(|q| backoff_time(&q.name)));
        counts.backoff_entries = total(
            mine.iter()
                .map(|q| entries.get(q.name.as_str()).copied().unwrap_or(0)),
        );
        providers.insert(name.clone(), provider_summary(data, name, counts));
    }
    let mut queues: BTreeMap<String, QueueSummary> = figures
        .queues
        .iter()
        .map(|(name, q)| {
            (
                name.clone(),
                QueueSummary {
                    counts: q.counts.clone(),
                    binding: Binding::default(),
                },
            )
        })
        .collect();
    for q in &data.queues {
        let summary = queues.entry(q.name.clone()).or_default();
        summary.counts.queued_at_end = Some(q.queued_at_end);
        summary.counts.backoff_time_s = backoff_time(&q.name);
        summary.counts.backoff_entries = entries.get(q.name.as_str()).copied().unwrap_or(0);
        let held = figures.queues.get(&q.name).cloned().unwrap_or_default();
        summary.binding = binding(data, q, &held);
    }

    // Time series.
    let per_hour = if daily { 1.0 } else { 3600.0 / bucket_s as f64 };
    let points = |values: &[u64], scale: f64| -> Vec<(f64, f64)> {
        values
            .iter()
            .enumerate()
            .map(|(i, n)| (x(i), *n as f64 * scale))
            .collect()
    };
    let rate_label = if daily { "per day" } else { "per hour" };
    let mut outcomes = BTreeMap::new();
    let mut queue_depth = Vec::new();
    let mut queue_age = Vec::new();
    let mut source_ip_rates = BTreeMap::new();
    let mut reputation = BTreeMap::new();
    let age_unit_s = if daily { 3600.0 } else { 60.0 };
    let rate_bucket = rate_bucket_s(data.duration_s);
    for p in &data.providers {
        let empty = ProviderSeries::default();
        let series = figures.series.get(&p.name).unwrap_or(&empty);
        let line = |label: &str, values: &[u64]| Series {
            name: format!("{label} {rate_label}"),
            points: points(values, per_hour),
            step: false,
        };
        outcomes.insert(
            p.name.clone(),
            vec![
                line("delivered", &series.delivered),
                line("deferred", &series.deferred),
                line("bounced", &series.bounced),
            ],
        );
        queue_depth.push(Series {
            name: p.name.clone(),
            points: points(&series.queued, 1.0),
            step: false,
        });
        queue_age.push(Series {
            name: p.name.clone(),
            points: points(&series.oldest_s, 1.0 / age_unit_s),
            step: false,
        });
        let mut lines = Vec::new();
        for (ip, counts) in &series.source_ip_delivered {
            lines.push(Series {
                name: format!("{ip} delivered/{}", if daily { "d" } else { "h" }),
                points: counts
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ((i as u64 * rate_bucket) as f64, *n as f64))
                    .collect(),
                step: false,
            });
            let identity = format!("ip:{ip}");
            // The capacity at the bucket's last sample: per hour, or a day of it.
            let per = rate_bucket / 3600;
            let mut limit: Vec<(f64, f64)> = Vec::new();
            for s in p.standings.iter().filter(|s| s.identity == identity) {
                let at = (s.at_s.saturating_sub(start) / rate_bucket * rate_bucket) as f64;
                let value = s.capacity_per_hour as f64 * per as f64;
                match limit.last_mut() {
                    Some(last) if last.0 == at => last.1 = value,
                    _ => limit.push((at, value)),
                }
            }
            if !limit.is_empty() {
                lines.push(Series {
                    name: format!("{ip} limit/{}", if daily { "d" } else { "h" }),
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
    let mut busiest: Vec<(&String, u64)> = queues
        .iter()
        .map(|(name, s)| (name, s.counts.delivered.saturating_add(s.counts.bounced)))
        .collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let connections = busiest
        .iter()
        .take(QUEUES_PER_CHART_MAX)
        .filter_map(|(name, _)| {
            let q = figures.queues.get(*name)?;
            Some(Series {
                name: (*name).clone(),
                points: points(&q.connections[..q.connections.len().min(buckets)], 1.0),
                step: false,
            })
        })
        .collect();

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
            providers,
            queues,
            source_ips: figures.source_ips.clone(),
            refused: data.refused.clone(),
            pattern_failures: data.pattern_failures.clone(),
        },
        bucket_s,
        daily,
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
                let total = total(by_reply.values().copied());
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
        let domain = data
            .queues
            .iter()
            .find(|q| q.name == r.queue)
            .map_or("", |q| q.domain.as_str());
        if r.reply.starts_with('2') || provider_of(data, domain) != name {
            continue;
        }
        let count = refusals_by_phase
            .entry(r.phase.clone())
            .or_default()
            .entry(r.reply.clone())
            .or_default();
        *count = count.saturating_add(r.count);
    }
    ProviderSummary {
        counts,
        feedback: provider.map(|p| p.feedback.clone()).unwrap_or_default(),
        spam_rate_daily,
        refusals_by_phase,
    }
}

/// A queue's binding limits, from the minutes the aggregator attributed while the run went
/// (see [`aggregate`]): the shares, and one line naming the limit that held the queue back
/// most (with the reply that switched it into backoff, when that limit is a backoff one).
fn binding(data: &RunData, queue: &QueueData, figures: &QueueFigures) -> Binding {
    let waiting_minutes = figures.waiting_minutes;
    let held = &figures.held_minutes;
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
            let share = n.saturating_mul(100).div_ceil(waiting_minutes.max(1));
            let cause = data
                .mode_changes
                .iter()
                .filter(|c| c.queue == queue.name)
                .find(|c| c.backoff)
                .filter(|_| limit.starts_with("backoff"))
                .map(|c| {
                    let trigger = match &c.trigger {
                        Trigger::Pattern { reply, .. } => {
                            let words: Vec<&str> = reply.split_whitespace().take(2).collect();
                            words.join(" ")
                        }
                        Trigger::AllSourceIpsDisabled => "all source IPs disabled".to_string(),
                        Trigger::Operator => "set by the operator".to_string(),
                        Trigger::SharedStore => "set by another node".to_string(),
                        Trigger::BackoffToNormalAfter | Trigger::DeliveryInBackoff => {
                            "a switch".to_string()
                        }
                    };
                    format!(
                        " after {trigger} at {}",
                        clock(c.at_s.saturating_sub(data.start_s))
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

/// The sum of `values`, saturating: a `run.json` from elsewhere may hold any number.
pub(crate) fn total(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0, u64::saturating_add)
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
