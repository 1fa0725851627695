//! The figures of a run, kept up to date while it goes: what `summary.json`, the charts and
//! the `[[expect]]` results are made of, in memory that follows the run's queues, providers,
//! source IPs, chart buckets and open connections, never its messages.
//!
//! Owns [`Aggregator`]: fed every accounting record, every engine event and every provider
//! throttle in time order, it counts per run, provider, queue and source IP; keeps delivery
//! latency in a bounded sketch (HdrHistogram, three significant digits: exact up to 2,047 s,
//! within 0.1% above); finds peaks per minute and per hour with a sliding window; counts
//! connections open at once at second resolution; samples each minute which limit held each
//! queue's waiting mail back (the engine's [`EngineEvent::QueueHeld`], or the provider's
//! throttle on one of the queue's source IPs); and fills the chart series bucket by bucket.
//! [`Aggregator::finish`] turns it into [`Figures`] (saved in `run.json`) and the
//! expectations' results. Must not: keep a record or a per-message list; read a clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use hdrhistogram::Histogram;

use super::expect::{self, Meters, Outcome};
use super::{
    Counts, Figures, Percentiles, ProviderSeries, QueueFigures, RateLimit, ReplyCount, RunData,
    ThrottleWindow, rate_text,
};
use crate::engine::accounting::{AcctRecord, RecordType};
use crate::engine::{EngineEvent, HeldBy};
use crate::scenario::Expectation;

/// HdrHistogram's precision: values up to 2 × 10³ are kept exactly.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// Latencies above this are recorded as this (no run is that long: 366 days and the drain
/// are under 2²⁵ s); it bounds the sketch's size, which grows with the largest value.
const LATENCY_MAX_S: u64 = 1 << 32;

/// What the aggregator knows before the run: its span and its providers.
#[derive(Clone, Debug)]
pub struct Setup {
    pub start_s: u64,
    pub duration_s: u64,
    /// Each provider of the scenario, in order, with the domains it answers.
    pub providers: Vec<(String, Vec<String>)>,
}

/// Delivery latencies in a bounded sketch, with the exact maximum.
#[derive(Clone, Debug)]
pub(crate) struct Latency {
    sketch: Histogram<u64>,
    max: u64,
}

impl Latency {
    pub(crate) fn new() -> Latency {
        Latency {
            sketch: Histogram::new(LATENCY_SIGNIFICANT_DIGITS)
                .expect("three significant digits are in HdrHistogram's range"),
            max: 0,
        }
    }

    pub(crate) fn record(&mut self, seconds: u64) {
        // The sketch grows to the largest value recorded (`saturating_record` would clamp to
        // its current range instead, 2,047 at first, so it is not used).
        self.sketch
            .record(seconds.min(LATENCY_MAX_S))
            .expect("an auto-resizing sketch takes any value up to LATENCY_MAX_S");
        self.max = self.max.max(seconds);
    }

    /// p50 and p95 at the sketch's precision (each bucket's highest value, never above the
    /// exact maximum), and the exact maximum.
    pub(crate) fn percentiles(&self) -> Percentiles {
        let counted: Vec<(u64, u64)> = self
            .sketch
            .iter_recorded()
            .map(|v| (v.value_iterated_to().min(self.max), v.count_at_value()))
            .collect();
        Percentiles {
            max: self.max,
            ..Percentiles::of_counts(counted)
        }
    }
}

/// Most deliveries in one minute and in any 60 consecutive minutes, from the deliveries'
/// minutes in time order.
#[derive(Clone, Debug, Default)]
struct Peaks {
    /// The last 60 minutes with deliveries: (minute, deliveries).
    window: VecDeque<(u64, u64)>,
    sum: u64,
    minute: u64,
    hour: u64,
}

impl Peaks {
    fn delivery(&mut self, minute: u64) {
        match self.window.back_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            _ => self.window.push_back((minute, 1)),
        }
        self.sum += 1;
        while let Some(&(m, n)) = self.window.front()
            && m + 60 <= minute
        {
            self.sum -= n;
            self.window.pop_front();
        }
        self.minute = self.minute.max(self.window.back().map_or(0, |(_, n)| *n));
        self.hour = self.hour.max(self.sum);
    }
}

/// Connections open at once, at second resolution, within `[from_s, to_s)`: in each second
/// the connections that closed leave before those that opened arrive, and a connection
/// opened and closed in the same second counts (as `max_concurrent` over the spans did).
#[derive(Clone, Debug)]
pub(crate) struct Concurrency {
    from_s: u64,
    to_s: u64,
    open: i64,
    max: u64,
    /// Second → (closes, opens) not yet applied.
    pending: BTreeMap<u64, (u64, u64)>,
}

impl Concurrency {
    pub(crate) fn new(from_s: u64, to_s: u64) -> Concurrency {
        Concurrency {
            from_s,
            to_s,
            open: 0,
            max: 0,
            pending: BTreeMap::new(),
        }
    }

    /// A connection opened at `opened_s` (one opened before the window counts from its
    /// start); `each` as in [`Concurrency::flush`], for the seconds this one ends.
    pub(crate) fn opened(&mut self, opened_s: u64, each: impl FnMut(u64, u64)) {
        self.flush(opened_s, each);
        if opened_s >= self.to_s {
            return;
        }
        self.pending.entry(opened_s.max(self.from_s)).or_default().1 += 1;
    }

    /// A connection opened at `opened_s` closed at `closed_s`.
    pub(crate) fn closed(&mut self, opened_s: u64, closed_s: u64, each: impl FnMut(u64, u64)) {
        self.flush(closed_s, each);
        if opened_s >= self.to_s || closed_s >= self.to_s {
            return;
        }
        self.pending.entry(closed_s).or_default().0 += 1;
    }

    /// Applies every second before `before_s`, calling `each(second, open)` after each.
    pub(crate) fn flush(&mut self, before_s: u64, mut each: impl FnMut(u64, u64)) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= before_s {
                break;
            }
            let (second, (closes, opens)) = entry.remove_entry();
            self.open = self.open - closes as i64 + opens as i64;
            if second >= self.from_s {
                let open = self.open.max(0) as u64;
                self.max = self.max.max(open);
                each(second, open);
            }
        }
    }

    pub(crate) fn open_now(&self) -> u64 {
        self.open.max(0) as u64
    }

    pub(crate) fn max(mut self) -> u64 {
        self.flush(u64::MAX, |_, _| {});
        self.max
    }
}

/// The figures of one run, provider, queue or source IP.
#[derive(Clone, Debug)]
struct Tally {
    counts: Counts,
    injected: u64,
    latency: Latency,
    peaks: Peaks,
    connections: Concurrency,
    /// Ages of what is still queued at the end: (age, recipients).
    ages: Vec<(u64, u64)>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            counts: Counts::default(),
            injected: 0,
            latency: Latency::new(),
            peaks: Peaks::default(),
            connections: Concurrency::new(0, u64::MAX),
            ages: Vec::new(),
        }
    }

    fn record(&mut self, r: &AcctRecord, minute: Option<u64>, latency_s: u64) {
        let counts = &mut self.counts;
        match r.record_type {
            RecordType::Delivered => {
                counts.delivered += 1;
                self.latency.record(latency_s);
                if let Some(m) = minute {
                    self.peaks.delivery(m);
                }
            }
            RecordType::Bounced => {
                counts.bounced += 1;
                *counts
                    .bounced_by_category
                    .entry(r.bounce_category.clone())
                    .or_default() += 1;
                if r.bounce_category == "message-expired" {
                    counts.expired += 1;
                }
            }
            RecordType::Transient | RecordType::TransientQueue => {
                *counts
                    .transient_by_class
                    .entry(status_class(&r.dsn_status))
                    .or_default() += 1;
            }
            RecordType::Feedback => counts.complaints += 1,
        }
    }

    /// The counts, finished; `injected` only where recipients enter (not a source IP).
    fn finish(self, with_injected: bool) -> Counts {
        let mut counts = self.counts;
        counts.delivery_latency_s = self.latency.percentiles();
        counts.queue_age_s = Percentiles::of_counts(self.ages);
        counts.peak_delivered_per_minute = self.peaks.minute;
        counts.peak_delivered_per_hour = self.peaks.hour;
        counts.max_connections = self.connections.max();
        if with_injected {
            counts.injected = Some(self.injected);
        }
        counts
    }
}

/// `4.7.28` → `4.7`.
fn status_class(status: &str) -> String {
    let mut parts = status.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => format!("{a}.{b}"),
        (Some(a), None) => a.to_string(),
        _ => String::new(),
    }
}

/// What held a queue's waiting mail back in a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Holder {
    Engine(HeldBy),
    /// A penalty of the queue's provider on one of its source IPs.
    Throttle,
}

struct QueueTally {
    name: String,
    domain: String,
    vmta: String,
    provider: usize,
    tally: Tally,
    /// Recipients entered less recipients settled (`d`, `b`).
    waiting: i64,
    /// Recipients not yet settled, by their queued second.
    pending: BTreeMap<u64, i64>,
    held: HeldBy,
    /// The source IPs the queue has sent from.
    source_ips: BTreeSet<IpAddr>,
    minutes: BTreeMap<Holder, u64>,
    waiting_minutes: u64,
    per_connection: BTreeMap<u64, u64>,
    /// The most connections open at once per bucket.
    buckets: Vec<u64>,
}

/// Where a queue's connections open at once go: the most in each bucket.
fn into_buckets(buckets: &mut [u64], start_s: u64, bucket_s: u64) -> impl FnMut(u64, u64) + '_ {
    move |second, open| {
        let last = buckets.len() as u64 - 1;
        let b = ((second.saturating_sub(start_s)) / bucket_s).min(last) as usize;
        buckets[b] = buckets[b].max(open);
    }
}

struct ProviderTally {
    name: String,
    tally: Tally,
    /// Only the scenario's providers have series.
    series: Option<ProviderSeries>,
    /// Per source IP: when its latest penalty ends.
    penalized_until: BTreeMap<IpAddr, u64>,
    /// Recipients entered less recipients settled, per bucket.
    depth: Vec<i64>,
    /// Penalty windows, the first listed; the open one of each (source IP, key) by index.
    windows: Vec<ThrottleWindow>,
    window_count: u64,
    open_windows: BTreeMap<(IpAddr, String), (usize, u64)>,
}

struct OpenConnection {
    queue: usize,
    source_ip: usize,
    opened_s: u64,
    messages: u64,
}

/// One reply kind of one queue, source IP and SMTP step.
type ReplyKey = (usize, usize, &'static str);

/// The figures of a run, kept up to date while it goes. Feed it in time order.
pub struct Aggregator {
    start_s: u64,
    end_s: u64,
    bucket_s: u64,
    buckets: usize,
    rate_bucket_s: u64,
    rate_buckets: usize,
    /// The latest second fed.
    clock_s: u64,
    /// The next minute whose last second has not been sampled.
    next_minute: u64,
    minutes: u64,
    /// The bucket the clock is in.
    bucket: usize,
    run: Tally,
    providers: Vec<ProviderTally>,
    provider_index: BTreeMap<String, usize>,
    domains: BTreeMap<String, usize>,
    queues: Vec<QueueTally>,
    queue_index: BTreeMap<String, usize>,
    ips: Vec<(String, Tally)>,
    ip_index: BTreeMap<String, usize>,
    open: BTreeMap<u64, OpenConnection>,
    replies: BTreeMap<ReplyKey, Vec<ReplyCount>>,
    mode_changes: Vec<super::ModeChange>,
    pattern_failures: Vec<super::PatternFailure>,
    meters: Meters,
}

impl Aggregator {
    pub fn new(setup: &Setup, expectations: &[Expectation]) -> Aggregator {
        let bucket_s = super::bucket_s(setup.duration_s);
        let buckets = setup.duration_s.div_ceil(bucket_s).max(1) as usize;
        let rate_bucket_s = super::rate_bucket_s(setup.duration_s);
        let rate_buckets = setup.duration_s.div_ceil(rate_bucket_s).max(1) as usize;
        let mut aggregator = Aggregator {
            start_s: setup.start_s,
            end_s: setup.start_s + setup.duration_s,
            bucket_s,
            buckets,
            rate_bucket_s,
            rate_buckets,
            clock_s: setup.start_s,
            next_minute: 0,
            minutes: setup.duration_s.div_ceil(60),
            bucket: 0,
            run: Tally::new(),
            providers: Vec::new(),
            provider_index: BTreeMap::new(),
            domains: BTreeMap::new(),
            queues: Vec::new(),
            queue_index: BTreeMap::new(),
            ips: Vec::new(),
            ip_index: BTreeMap::new(),
            open: BTreeMap::new(),
            replies: BTreeMap::new(),
            mode_changes: Vec::new(),
            pattern_failures: Vec::new(),
            meters: Meters::new(
                expectations,
                setup.start_s,
                setup.start_s + setup.duration_s,
            ),
        };
        for (name, domains) in &setup.providers {
            let index = aggregator.provider(name);
            aggregator.providers[index].series = Some(ProviderSeries {
                delivered: vec![0; buckets],
                deferred: vec![0; buckets],
                bounced: vec![0; buckets],
                queued: Vec::new(),
                oldest_s: vec![0; buckets],
                source_ip_delivered: BTreeMap::new(),
            });
            for domain in domains {
                aggregator.domains.entry(domain.clone()).or_insert(index);
            }
        }
        aggregator
    }

    fn provider(&mut self, name: &str) -> usize {
        if let Some(index) = self.provider_index.get(name) {
            return *index;
        }
        self.providers.push(ProviderTally {
            name: name.to_string(),
            tally: Tally::new(),
            series: None,
            depth: vec![0; self.buckets],
            penalized_until: BTreeMap::new(),
            windows: Vec::new(),
            window_count: 0,
            open_windows: BTreeMap::new(),
        });
        let index = self.providers.len() - 1;
        self.provider_index.insert(name.to_string(), index);
        index
    }

    /// The provider answering `domain` (a provider named after the domain when none does).
    fn provider_of(&mut self, domain: &str) -> usize {
        match self.domains.get(domain) {
            Some(index) => *index,
            None => self.provider(domain),
        }
    }

    fn queue(&mut self, name: &str, domain: &str, vmta: &str) -> usize {
        if let Some(index) = self.queue_index.get(name) {
            return *index;
        }
        let provider = self.provider_of(domain);
        self.queues.push(QueueTally {
            name: name.to_string(),
            domain: domain.to_string(),
            vmta: vmta.to_string(),
            provider,
            tally: Tally::new(),
            waiting: 0,
            pending: BTreeMap::new(),
            held: HeldBy::Sending,
            source_ips: BTreeSet::new(),
            minutes: BTreeMap::new(),
            waiting_minutes: 0,
            per_connection: BTreeMap::new(),
            buckets: vec![0; self.buckets],
        });
        let index = self.queues.len() - 1;
        self.queue_index.insert(name.to_string(), index);
        index
    }

    fn ip(&mut self, ip: &str) -> usize {
        if let Some(index) = self.ip_index.get(ip) {
            return *index;
        }
        self.ips.push((ip.to_string(), Tally::new()));
        let index = self.ips.len() - 1;
        self.ip_index.insert(ip.to_string(), index);
        index
    }

    fn bucket_of(&self, s: u64) -> usize {
        ((s.saturating_sub(self.start_s)) / self.bucket_s).min(self.buckets as u64 - 1) as usize
    }

    /// Moves the clock to second `s`: every minute whose last second is before `s` is
    /// sampled, every bucket that ended by `s` is closed. Inputs come in time order; one
    /// from before the clock (a provider's throttle fed after an engine event of the same
    /// instant) counts at the clock.
    fn tick(&mut self, s: u64) {
        if s <= self.clock_s {
            return;
        }
        // Minutes: the state at the end of second `start + 60·m + 59`, for each whose end
        // is before `s`.
        while self.next_minute < self.minutes {
            let t = self.start_s + self.next_minute * 60 + 59;
            if t >= s {
                break;
            }
            self.sample_minute(t);
            self.next_minute += 1;
        }
        // Buckets: the queue age at each bucket's end; the connections open across it.
        let to = if s >= self.end_s {
            self.buckets
        } else {
            self.bucket_of(s)
        };
        if to > self.bucket {
            let (start_s, bucket_s) = (self.start_s, self.bucket_s);
            for q in &mut self.queues {
                q.tally
                    .connections
                    .flush(s, into_buckets(&mut q.buckets, start_s, bucket_s));
            }
            for b in self.bucket..to {
                let until = self.start_s + (b as u64 + 1) * self.bucket_s;
                self.close_bucket(b, until.min(self.end_s));
            }
            // Buckets entered since: a connection open across a bucket's start counts in it.
            for b in (self.bucket + 1)..=to.min(self.buckets - 1) {
                if self.start_s + b as u64 * self.bucket_s < s {
                    for q in &mut self.queues {
                        q.buckets[b] = q.buckets[b].max(q.tally.connections.open_now());
                    }
                }
            }
            self.bucket = to;
        }
        self.clock_s = s;
    }

    /// Which limit held each queue with waiting mail back at second `t`.
    fn sample_minute(&mut self, t: u64) {
        for q in &mut self.queues {
            if q.waiting <= 0 {
                continue;
            }
            q.waiting_minutes += 1;
            let provider = &self.providers[q.provider];
            let throttled = q
                .source_ips
                .iter()
                .any(|ip| provider.penalized_until.get(ip).is_some_and(|u| *u > t));
            let holder = if !q.held.is_backoff_or_retry() && throttled {
                Holder::Throttle
            } else {
                Holder::Engine(q.held)
            };
            *q.minutes.entry(holder).or_default() += 1;
        }
    }

    /// The oldest waiting recipient of each provider at `until`, the end of bucket `b`.
    fn close_bucket(&mut self, b: usize, until: u64) {
        let mut oldest: BTreeMap<usize, u64> = BTreeMap::new();
        for q in &self.queues {
            if let Some((&queued, _)) = q.pending.iter().find(|(_, n)| **n > 0) {
                let e = oldest.entry(q.provider).or_insert(queued);
                *e = (*e).min(queued);
            }
        }
        for (index, p) in self.providers.iter_mut().enumerate() {
            if let Some(series) = &mut p.series {
                series.oldest_s[b] = oldest.get(&index).map_or(0, |t| until.saturating_sub(*t));
            }
        }
    }

    /// An accounting record, as the engine (or a provider's feedback loop) wrote it.
    pub fn record(&mut self, r: &AcctRecord) {
        let logged_s = r.time_logged.unix_secs();
        self.tick(logged_s);
        let queued_s = r.time_queued.unix_secs();
        let latency_s = logged_s.saturating_sub(queued_s);
        let minute = {
            let m = logged_s.saturating_sub(self.start_s) / 60;
            (m <= self.minutes).then_some(m)
        };
        let queue = self.queue_index.get(r.queue.as_str()).copied();
        let rcpt_domain = r.rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        let lowered;
        let rcpt_domain = if rcpt_domain.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = rcpt_domain.to_ascii_lowercase();
            lowered.as_str()
        } else {
            rcpt_domain
        };
        let domain = match (rcpt_domain, queue) {
            ("", Some(q)) => self.queues[q].domain.clone(),
            (d, _) => d.to_string(),
        };
        let provider = self.provider_of(&domain);
        let ip = (!r.dlv_source_ip.is_empty()).then(|| self.ip(&r.dlv_source_ip));
        self.run.record(r, minute, latency_s);
        self.providers[provider].tally.record(r, minute, latency_s);
        if let Some(q) = queue {
            self.queues[q].tally.record(r, minute, latency_s);
        }
        if let Some(i) = ip {
            self.ips[i].1.record(r, minute, latency_s);
        }
        let settles = matches!(r.record_type, RecordType::Delivered | RecordType::Bounced);
        let b = self.bucket_of(logged_s);
        let queue_provider = queue.map(|q| self.queues[q].provider);
        if let Some(series) = &mut self.providers[provider].series {
            match r.record_type {
                RecordType::Delivered => series.delivered[b] += 1,
                RecordType::Transient | RecordType::TransientQueue => series.deferred[b] += 1,
                RecordType::Bounced => series.bounced[b] += 1,
                RecordType::Feedback => {}
            }
            if r.record_type == RecordType::Delivered && !r.dlv_source_ip.is_empty() {
                let slot = ((logged_s.saturating_sub(self.start_s)) / self.rate_bucket_s)
                    .min(self.rate_buckets as u64 - 1) as usize;
                let rate_buckets = self.rate_buckets;
                series
                    .source_ip_delivered
                    .entry(r.dlv_source_ip.clone())
                    .or_insert_with(|| vec![0; rate_buckets])[slot] += 1;
            }
        }
        if settles {
            // The depth falls where its recipients entered: the provider of the queue's
            // domain.
            let depth_provider = queue_provider.unwrap_or(provider);
            self.providers[depth_provider].depth[b] -= 1;
            if let Some(q) = queue {
                let q = &mut self.queues[q];
                q.waiting -= 1;
                let left = q.pending.entry(queued_s).or_default();
                *left -= 1;
                if *left == 0 {
                    q.pending.remove(&queued_s);
                }
            }
        }
        if let Some(phase) = r.phase {
            self.reply(r, queue, phase.name(), logged_s);
        }
        let queue_info = queue.map(|q| {
            let q = &self.queues[q];
            (q.name.as_str(), q.domain.as_str(), q.vmta.as_str())
        });
        let provider_name = self.providers[provider].name.as_str();
        self.meters.record(&expect::RecordView {
            record: r,
            logged_s,
            latency_s,
            domain: &domain,
            queue: queue_info.map_or(r.queue.as_str(), |q| q.0),
            vmta: queue_info.map_or("", |q| q.2),
            provider: provider_name,
        });
    }

    /// Counts the reply behind a record by queue, source IP, step and reply.
    fn reply(&mut self, r: &AcctRecord, queue: Option<usize>, phase: &'static str, at_s: u64) {
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
        let ip = self.ip(&r.dlv_source_ip);
        let queue = queue.unwrap_or(usize::MAX);
        let kinds = self.replies.entry((queue, ip, phase)).or_default();
        match kinds.iter_mut().find(|c| c.reply == reply) {
            Some(count) => {
                count.count += 1;
                count.last_at_s = at_s;
            }
            None => kinds.push(ReplyCount {
                queue: r.queue.clone(),
                source_ip: r.dlv_source_ip.clone(),
                phase: phase.to_string(),
                reply,
                count: 1,
                first_at_s: at_s,
                last_at_s: at_s,
                example: r.dsn_diag.clone(),
            }),
        }
    }

    /// An event of the engine.
    pub fn event(&mut self, event: &EngineEvent) {
        match event {
            EngineEvent::Queued {
                at,
                queue,
                domain,
                vmta,
                recipients,
            } => {
                let at_s = at.unix_secs();
                self.tick(at_s);
                let q = self.queue(queue, domain, vmta);
                let provider = self.queues[q].provider;
                self.run.injected += recipients;
                self.providers[provider].tally.injected += recipients;
                let b = self.bucket_of(at_s);
                let qt = &mut self.queues[q];
                qt.tally.injected += recipients;
                qt.waiting += *recipients as i64;
                *qt.pending.entry(at_s).or_default() += *recipients as i64;
                self.providers[provider].depth[b] += *recipients as i64;
                let at = queue_view(&self.queues, &self.providers, q);
                self.meters.queued(at_s, &at, *recipients);
            }
            EngineEvent::QueueHeld {
                at,
                queue,
                domain,
                vmta,
                limit,
                ..
            } => {
                self.tick(at.unix_secs());
                let q = self.queue(queue, domain, vmta);
                self.queues[q].held = *limit;
            }
            EngineEvent::ConnectionOpened {
                at,
                conn,
                queue,
                domain,
                vmta,
                source_ip,
            } => {
                let at_s = at.unix_secs();
                self.tick(at_s);
                let q = self.queue(queue, domain, vmta);
                let ip = self.ip(&source_ip.to_string());
                let provider = self.queues[q].provider;
                self.queues[q].source_ips.insert(*source_ip);
                for c in [
                    &mut self.run.connections,
                    &mut self.providers[provider].tally.connections,
                    &mut self.ips[ip].1.connections,
                ] {
                    c.opened(at_s, |_, _| {});
                }
                let (start_s, bucket_s) = (self.start_s, self.bucket_s);
                let qt = &mut self.queues[q];
                qt.tally
                    .connections
                    .opened(at_s, into_buckets(&mut qt.buckets, start_s, bucket_s));
                self.open.insert(
                    conn.0,
                    OpenConnection {
                        queue: q,
                        source_ip: ip,
                        opened_s: at_s,
                        messages: 0,
                    },
                );
                let at = queue_view(&self.queues, &self.providers, q);
                self.meters.connection_opened(at_s, &at, &self.ips[ip].0);
            }
            // Per recipient, and already counted from its accounting record.
            EngineEvent::RecipientSettled { .. } => {}
            EngineEvent::TransactionStarted { at, conn, .. } => {
                self.tick(at.unix_secs());
                if let Some(c) = self.open.get_mut(&conn.0) {
                    c.messages += 1;
                }
            }
            EngineEvent::ConnectionClosed { at, conn, .. } => {
                let at_s = at.unix_secs();
                self.tick(at_s);
                let Some(c) = self.open.remove(&conn.0) else {
                    return;
                };
                let provider = self.queues[c.queue].provider;
                for counter in [
                    &mut self.run.connections,
                    &mut self.providers[provider].tally.connections,
                    &mut self.ips[c.source_ip].1.connections,
                ] {
                    counter.closed(c.opened_s, at_s, |_, _| {});
                }
                let (start_s, bucket_s) = (self.start_s, self.bucket_s);
                let qt = &mut self.queues[c.queue];
                qt.tally.connections.closed(
                    c.opened_s,
                    at_s,
                    into_buckets(&mut qt.buckets, start_s, bucket_s),
                );
                *self.queues[c.queue]
                    .per_connection
                    .entry(c.messages)
                    .or_default() += 1;
                let at = queue_view(&self.queues, &self.providers, c.queue);
                self.meters
                    .connection_closed(c.opened_s, at_s, &at, &self.ips[c.source_ip].0);
            }
            EngineEvent::ModeChanged {
                at,
                queue,
                domain,
                vmta,
                mode,
                trigger,
            } => {
                self.tick(at.unix_secs());
                self.queue(queue, domain, vmta);
                self.mode_changes.push(super::ModeChange {
                    at_s: at.unix_secs(),
                    queue: queue.clone(),
                    backoff: *mode == crate::config::model::QueueMode::Backoff,
                    trigger: trigger.into(),
                });
            }
            EngineEvent::PatternFailed {
                at,
                context,
                position,
                pattern,
                subject,
                error,
            } => {
                self.tick(at.unix_secs());
                self.pattern_failures.push(super::PatternFailure {
                    at_s: at.unix_secs(),
                    context: context.clone(),
                    position: position.clone(),
                    pattern: pattern.clone(),
                    subject: subject.clone(),
                    error: error.clone(),
                });
            }
            EngineEvent::SourceIpDisabled { at, .. }
            | EngineEvent::RetryScheduled { at, .. }
            | EngineEvent::SharedThrottles { at, .. } => {
                self.tick(at.unix_secs());
            }
        }
    }

    /// A throttle reply of provider `provider` (scenario order) to `source_ip` at `at_s`,
    /// whose penalty on `key` lasts until `until_s`.
    pub fn throttle(
        &mut self,
        provider: &str,
        at_s: u64,
        until_s: u64,
        source_ip: IpAddr,
        key: &str,
        reply: &str,
    ) {
        self.tick(at_s);
        let index = self.provider(provider);
        let p = &mut self.providers[index];
        let until = p.penalized_until.entry(source_ip).or_insert(until_s);
        *until = (*until).max(until_s);
        let open = p.open_windows.get_mut(&(source_ip, key.to_string()));
        match open {
            Some((slot, window_until)) if at_s < *window_until => {
                *window_until = (*window_until).max(until_s);
                if let Some(w) = p.windows.get_mut(*slot) {
                    w.until_s = *window_until;
                    w.replies += 1;
                }
            }
            _ => {
                p.window_count += 1;
                let slot = if p.windows.len() < super::THROTTLE_WINDOWS_LISTED_MAX {
                    p.windows.push(ThrottleWindow {
                        at_s,
                        until_s,
                        source_ip: source_ip.to_string(),
                        key: key.to_string(),
                        reply: reply.to_string(),
                        replies: 1,
                    });
                    p.windows.len() - 1
                } else {
                    usize::MAX
                };
                p.open_windows
                    .insert((source_ip, key.to_string()), (slot, until_s));
            }
        }
    }

    /// Closes the run at its end and completes `data` (its providers and queues as the run
    /// left them) with the mode changes, pattern failures, replies, throttle windows and
    /// figures; returns it with the expectations' results.
    pub fn finish(mut self, mut data: RunData) -> (RunData, Vec<Outcome>) {
        let end = self.end_s;
        // Past the end and past the last minute's last second: everything is sampled.
        let last_minute_end = self.start_s + self.minutes * 60;
        self.tick(end.max(last_minute_end).max(self.clock_s + 1));
        // Ages of what is still queued at the end.
        for q in &mut self.queues {
            for (queued, n) in &q.pending {
                if *n > 0 {
                    let age = (end.saturating_sub(*queued), *n as u64);
                    self.run.ages.push(age);
                    self.providers[q.provider].tally.ages.push(age);
                    q.tally.ages.push(age);
                }
            }
        }
        // Connections still open at the end.
        for c in self.open.values() {
            *self.queues[c.queue]
                .per_connection
                .entry(c.messages)
                .or_default() += 1;
        }
        data.mode_changes = std::mem::take(&mut self.mode_changes);
        data.pattern_failures = std::mem::take(&mut self.pattern_failures);
        let pending: Vec<(expect::QueueView<'_>, &BTreeMap<u64, i64>)> = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| (queue_view(&self.queues, &self.providers, i), &q.pending))
            .collect();
        let outcomes = self.meters.finish(&data, end, &pending);
        drop(pending);
        let mut replies: Vec<ReplyCount> = std::mem::take(&mut self.replies)
            .into_values()
            .flatten()
            .collect();
        replies.sort_by(|a, b| {
            (&a.queue, &a.source_ip, &a.phase, &a.reply).cmp(&(
                &b.queue,
                &b.source_ip,
                &b.phase,
                &b.reply,
            ))
        });
        data.replies = replies;
        let mut figures = Figures {
            bucket_s: self.bucket_s,
            run: self.run.finish(true),
            ..Figures::default()
        };
        let settings: BTreeMap<&str, &super::QueueData> =
            data.queues.iter().map(|q| (q.name.as_str(), q)).collect();
        for q in self.queues {
            let queue_data = settings.get(q.name.as_str()).copied();
            let provider = &self.providers[q.provider].name;
            let held_minutes = q
                .minutes
                .iter()
                .map(|(holder, n)| (holder_name(*holder, queue_data, provider), *n))
                .fold(BTreeMap::new(), |mut map, (name, n)| {
                    *map.entry(name).or_insert(0) += n;
                    map
                });
            figures.queues.insert(
                q.name.clone(),
                QueueFigures {
                    counts: q.tally.finish(true),
                    waiting_minutes: q.waiting_minutes,
                    held_minutes,
                    messages_per_connection: q.per_connection,
                    connections: q.buckets,
                },
            );
        }
        for (name, tally) in self.ips {
            figures.source_ips.insert(name, tally.finish(false));
        }
        for p in self.providers {
            if let Some(d) = data.providers.iter_mut().find(|d| d.name == p.name) {
                d.throttles = p.windows;
                d.throttle_windows = p.window_count;
            }
            if let Some(mut series) = p.series {
                // Per-bucket changes become the depth at each bucket's end.
                let mut depth = 0i64;
                series.queued = p
                    .depth
                    .iter()
                    .map(|d| {
                        depth += d;
                        depth.max(0) as u64
                    })
                    .collect();
                figures.series.insert(p.name.clone(), series);
            }
            figures.providers.insert(p.name, p.tally.finish(true));
        }
        data.figures = figures;
        (data, outcomes)
    }
}

/// A limit's name in the summary: the directive with its value where the queue has one
/// (`max-msg-rate 10/h`, `backoff-max-smtp-out 1`), or `PROVIDER's throttle`.
fn holder_name(holder: Holder, queue: Option<&super::QueueData>, provider: &str) -> String {
    let limit = match holder {
        Holder::Throttle => return format!("{provider}'s throttle"),
        Holder::Engine(limit) => limit,
    };
    let rate = |r: Option<RateLimit>| r.map(|r| format!("{} {}", limit.name(), rate_text(r)));
    let named = queue.and_then(|q| match limit {
        HeldBy::MaxMsgRate => rate(q.max_msg_rate),
        HeldBy::BackoffMaxMsgRate => rate(q.backoff_max_msg_rate),
        HeldBy::MaxSmtpOut => Some(format!("max-smtp-out {}", q.max_smtp_out)),
        HeldBy::BackoffMaxSmtpOut => {
            Some(format!("backoff-max-smtp-out {}", q.backoff_max_smtp_out))
        }
        _ => None,
    });
    named.unwrap_or_else(|| limit.name().to_string())
}

/// How expectation filters see queue `q`: its name, domain, virtual MTA and provider.
fn queue_view<'a>(
    queues: &'a [QueueTally],
    providers: &'a [ProviderTally],
    q: usize,
) -> expect::QueueView<'a> {
    let qt = &queues[q];
    expect::QueueView {
        name: &qt.name,
        domain: &qt.domain,
        vmta: &qt.vmta,
        provider: &providers[qt.provider].name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sketch's percentiles are the exact ones up to 2,047 s and within 0.1% above,
    /// however large the values (a sketch that clamped to its first range would say 2).
    #[test]
    fn latency_percentiles_are_within_the_sketchs_precision() {
        let mut latency = Latency::new();
        let values: Vec<u64> = (0..10_000u64).map(|i| i * 37 % 100_000).collect();
        for v in &values {
            latency.record(*v);
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        let exact = |q: usize| sorted[((sorted.len() - 1) * q).div_ceil(100)];
        let p = latency.percentiles();
        for (sketch, exact) in [(p.p50, exact(50)), (p.p95, exact(95))] {
            assert!(exact > 2047);
            assert!(
                sketch.abs_diff(exact) as f64 <= exact as f64 * 0.001,
                "{sketch} vs {exact}"
            );
        }
        assert_eq!(p.max, *sorted.last().unwrap());
        let mut small = Latency::new();
        for v in [3, 1, 2, 2047, 5] {
            small.record(v);
        }
        assert_eq!(
            small.percentiles(),
            Percentiles {
                p50: 3,
                p95: 2047,
                max: 2047
            }
        );
    }
}
