//! The judgement of a replayed warmup: per day and provider, planned, delivered, deferred and
//! bounced; each source IP's reputation and hourly capacity at each provider at the end of
//! each day; the day each provider is warm (reached or projected); the risk days with their
//! reason, the reply that caused them and what to change; as a terminal table, as
//! `summary.json` and as the report's warmup section.
//!
//! Pure: the caller runs the replay and hands in its outcomes and the providers' standing
//! samples. It must not plan (the planner is `super`), read files or a clock. Every
//! threshold comes from the provider models (`isp-models/`) or the reputation ledger's rules,
//! none is made up here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{CAPACITY_MARGIN, DEFERRAL_BOUND, Input, SPIKE_MARGIN, Schedule, trailing_mean};
use crate::isp::StandingSample;
use crate::isp::reputation::IDLE_DAYS_FORGET;
use crate::scenario::{IspSpec, Requirement};

/// Why a day is a risk day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskKind {
    /// The day's volume is at or above the spike rule's allowance.
    Spike,
    /// More recipients deferred than the bound.
    Throttled,
    /// Less than half the day delivered, without throttling (the run ended first).
    Undelivered,
    /// The provider's authentication rules answered (bulk rules above its bulk threshold).
    MissingAuthentication,
    /// Long enough without mail that the provider forgets the clean days.
    IdleGap,
    /// Complaints projected at or over the provider's good (0.1%) or bad (0.3%) rate.
    Complaints,
    /// Unknown users over the provider's bad rate (2%).
    UnknownUsers,
}

impl RiskKind {
    /// The name in `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            RiskKind::Spike => "spike",
            RiskKind::Throttled => "throttled",
            RiskKind::Undelivered => "undelivered",
            RiskKind::MissingAuthentication => "missing_authentication",
            RiskKind::IdleGap => "idle_gap",
            RiskKind::Complaints => "complaints",
            RiskKind::UnknownUsers => "unknown_users",
        }
    }
}

/// One reason a day is a risk day, and what the user should change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Risk {
    pub kind: RiskKind,
    pub reason: String,
    /// The reply that caused it, when a reply did.
    pub reply: Option<String>,
    pub advice: String,
}

/// One day at one provider after a replay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DayResult {
    pub day: u32,
    pub provider: String,
    pub planned: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// The most frequent deferral reply.
    pub top_deferral: String,
    pub risks: Vec<Risk>,
}

impl DayResult {
    /// Share of the day's recipients deferred at least once.
    pub fn deferral_rate(&self) -> f64 {
        self.share(self.deferred)
    }

    /// Share of the day's recipients bounced.
    pub fn bounce_rate(&self) -> f64 {
        self.share(self.bounced)
    }

    /// `n` over the day's recipients: those planned (the replay queued each planned one that
    /// day), or those seen, when more. Not delivered + bounced: a recipient still deferred at
    /// the replay's end has neither record, so a day the provider deferred whole would read
    /// 0% deferred, and one with a few early bounces 100% bounced.
    fn share(&self, n: u64) -> f64 {
        let recipients = self
            .planned
            .max(self.delivered + self.bounced)
            .max(self.deferred);
        if recipients == 0 {
            0.0
        } else {
            n as f64 / recipients as f64
        }
    }
}

/// A source IP's standing with a provider at the end of a replayed day (its last sample that
/// day: the provider samples an identity at most once an hour while it sends).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IpDay {
    pub day: u32,
    pub provider: String,
    pub ip: Ipv4Addr,
    pub score: f64,
    pub capacity_per_hour: u64,
}

/// The day a provider is warm: takes its share of the target with deferrals under the bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmDay {
    pub provider: String,
    /// The provider's share of the target, messages a day.
    pub share_per_day: u64,
    /// The first replayed day it was warm.
    pub reached: Option<u32>,
    /// When not reached: the day its capacity (IPs, /24s and DKIM domain, growing by the
    /// model's growth per clean day) would carry the share, if it grows at all.
    pub projected: Option<u32>,
    /// The provider's authentication rules refused mail in the replay: no capacity makes it
    /// warm until that is fixed, so nothing is projected.
    pub refused_for_authentication: bool,
}

/// Everything a replay says about a warmup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub days: Vec<DayResult>,
    pub standings: Vec<IpDay>,
    pub warm: Vec<WarmDay>,
    /// The replay ran in closed loop (`warmup check --adaptive`): `days` judge what the loop
    /// sent, `decisions` say where it left the schedule and why, `carried` what it could not
    /// send.
    pub adaptive: bool,
    pub decisions: Vec<super::Decision>,
    pub carried: Vec<super::Carried>,
}

impl Judgement {
    pub fn risky(&self) -> bool {
        self.days.iter().any(|d| !d.risks.is_empty())
    }
}

/// Recipients with one outcome in a replay: the day (from the run's start) their messages
/// were queued, the provider, what happened, the reply and the sender's domain, counted.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub day: u32,
    pub provider: String,
    pub kind: OutcomeKind,
    pub diag: String,
    /// The envelope sender's domain.
    pub sender_domain: String,
    /// Recipients with this outcome, day, provider, reply and sender domain.
    pub count: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutcomeKind {
    Delivered,
    /// Deferred (counted once per recipient however many retries it took).
    Deferred,
    Bounced,
}

/// What the providers' standing samples say per replayed day: each source IP's last sample
/// at each provider, and per (day, provider) the hourly capacity its /24s and DKIM domains
/// share (the least of their sums), which caps what the IPs together may send.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Standings {
    pub ips: Vec<IpDay>,
    pub shared: BTreeMap<(u32, String), u64>,
}

/// [`Standings`] from `(provider, sample)` pairs; days count from `start_s` (midnight UTC).
pub fn standings_by_day<'a>(
    start_s: u64,
    samples: impl IntoIterator<Item = (&'a str, &'a StandingSample)>,
) -> Standings {
    let mut last: BTreeMap<(u32, String, String), (f64, u64)> = BTreeMap::new();
    for (provider, s) in samples {
        let day = (s.at.unix_secs().saturating_sub(start_s) / 86_400) as u32;
        last.insert(
            (day, provider.to_string(), s.identity.clone()),
            (s.score, s.capacity_per_hour),
        );
    }
    let mut out = Standings::default();
    let mut sums: BTreeMap<(u32, String, &str), u64> = BTreeMap::new();
    for ((day, provider, identity), (score, capacity_per_hour)) in &last {
        if let Some(ip) = identity
            .strip_prefix("ip:")
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        {
            out.ips.push(IpDay {
                day: *day,
                provider: provider.clone(),
                ip,
                score: *score,
                capacity_per_hour: *capacity_per_hour,
            });
        } else if let Some((prefix, _)) = identity.split_once(':') {
            let prefix = if prefix == "net" { "net" } else { "domain" };
            let sum = sums.entry((*day, provider.clone(), prefix)).or_default();
            *sum = sum.saturating_add(*capacity_per_hour);
        }
    }
    for ((day, provider, _), sum) in sums {
        let shared = out.shared.entry((day, provider)).or_insert(sum);
        *shared = (*shared).min(sum);
    }
    out
}

/// What a replay saw, per day and provider, judged against the provider models.
/// `standings` come from [`standings_by_day`].
pub fn judge(
    input: &Input,
    schedule: &Schedule,
    models: &[IspSpec],
    outcomes: &[Outcome],
    standings: Standings,
) -> Judgement {
    let Standings {
        ips: standings,
        shared: shared_capacity,
    } = standings;
    let shared_capacity = &shared_capacity;
    let planned = schedule.per_provider();
    // Per reply: recipients, and the sending domain of the first.
    type Replies = BTreeMap<String, (u64, String)>;
    let mut out: BTreeMap<(u32, String), (DayResult, Replies, Replies)> = BTreeMap::new();
    for ((day, provider), n) in &planned {
        let e = out.entry((*day, provider.clone())).or_default();
        e.0.day = *day;
        e.0.provider = provider.clone();
        e.0.planned = *n;
    }
    for o in outcomes {
        let Some((r, deferrals, bounces)) = out.get_mut(&(o.day, o.provider.clone())) else {
            continue;
        };
        match o.kind {
            OutcomeKind::Delivered => r.delivered += o.count,
            OutcomeKind::Deferred => {
                r.deferred += o.count;
                deferrals
                    .entry(o.diag.clone())
                    .or_insert((0, o.sender_domain.clone()))
                    .0 += o.count;
            }
            OutcomeKind::Bounced => {
                r.bounced += o.count;
                bounces
                    .entry(o.diag.clone())
                    .or_insert((0, o.sender_domain.clone()))
                    .0 += o.count;
            }
        }
    }
    let domain = input
        .mail_from
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_string());
    let hours = (input.window.1 - input.window.0) as f64 / 3600.0;
    let mut results = Vec::new();
    let mut trailing: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last_sent: BTreeMap<String, (u32, u64)> = BTreeMap::new();
    for ((day, provider), (mut r, deferrals, bounces)) in out {
        r.top_deferral = most_frequent(&deferrals);
        let spec = models.iter().find(|m| m.name == provider);
        let prior = trailing.entry(provider.clone()).or_default();
        if let Some(factor) = spec
            .and_then(|s| s.throttle.as_ref())
            .and_then(|t| t.spike_percent)
            .map(|p| p as f64 / 100.0)
            && let Some(mean) = trailing_mean(prior)
            && r.planned as f64 >= factor * mean
        {
            let hold = (mean * factor * SPIKE_MARGIN) as u64;
            r.risks.push(Risk {
                kind: RiskKind::Spike,
                reason: format!(
                    "step above the spike rule: {} planned, {:.1}× the trailing mean of {:.0} (limit {factor}×)",
                    r.planned,
                    r.planned as f64 / mean,
                    mean
                ),
                reply: None,
                advice: format!(
                    "hold {provider} at {hold} on day {} (spike rule: {factor}× trailing mean {mean:.0}, less a {:.0}% margin)",
                    day + 1,
                    (1.0 - SPIKE_MARGIN) * 100.0
                ),
            });
        }
        prior.push(r.planned);
        if let Some((gap_from, gap_volume)) = last_sent.get(&provider).copied()
            && r.planned > 0
        {
            let idle = day - gap_from - 1;
            if idle >= IDLE_DAYS_FORGET {
                r.risks.push(Risk {
                    kind: RiskKind::IdleGap,
                    reason: format!(
                        "idle gap: {idle} days without mail to {provider} after day {}: after {IDLE_DAYS_FORGET} idle days the provider forgets the clean days, the IPs are cold again",
                        gap_from + 1
                    ),
                    reply: None,
                    advice: format!(
                        "send at least {} to {provider} by day {} (a quarter of day {}'s volume, so the day counts as clean) to avoid the idle gap, or plan day {} as day 1 of a new warmup",
                        (gap_volume / 4).max(1),
                        gap_from + IDLE_DAYS_FORGET + 1,
                        gap_from + 1,
                        day + 1
                    ),
                });
            }
        }
        if r.planned > 0 {
            last_sent.insert(provider.clone(), (day, r.planned));
        }
        if let Some(auth) = spec.and_then(|s| s.auth.as_ref()) {
            // Each authentication rule that answered, with its most frequent reply.
            let mut answered: BTreeMap<usize, (u64, &String, u64, &str)> = BTreeMap::new();
            for (reply, (n, sender)) in deferrals.iter().chain(&bounces) {
                if let Some(index) = auth.rules.iter().position(|rule| {
                    is_reply(reply, &rule.temporary) || is_reply(reply, &rule.permanent)
                }) {
                    let e = answered.entry(index).or_insert((0, reply, 0, sender));
                    e.0 += n;
                    if *n > e.2 {
                        (e.1, e.2, e.3) = (reply, *n, sender);
                    }
                }
            }
            for (index, (n, reply, _, sender)) in answered {
                let rule = &auth.rules[index];
                let over = if rule.bulk_only {
                    format!(
                        " for bulk volume ({} planned, {provider}'s bulk threshold is {}/day)",
                        r.planned, auth.bulk_threshold_per_day
                    )
                } else {
                    String::new()
                };
                r.risks.push(Risk {
                    kind: RiskKind::MissingAuthentication,
                    reason: format!(
                        "missing authentication{over}: {n} recipients answered for the {} rule",
                        requirement_name(rule.require)
                    ),
                    reply: Some(crate::printable::escape(reply).into_owned()),
                    advice: authentication_advice(
                        rule.require,
                        if sender.is_empty() { &domain } else { sender },
                    ),
                });
            }
        }
        if r.deferral_rate() > DEFERRAL_BOUND
            && !r
                .risks
                .iter()
                .any(|k| k.kind == RiskKind::MissingAuthentication && is_same(k, &r.top_deferral))
        {
            let ips: Vec<&IpDay> = standings
                .iter()
                .filter(|s| s.day == day && s.provider == provider)
                .collect();
            let mut capacity: u64 = ips.iter().map(|s| s.capacity_per_hour).sum();
            if let Some(shared) = shared_capacity.get(&(day, provider.clone())) {
                capacity = capacity.min(*shared);
            }
            let advice = if ips.is_empty() {
                format!(
                    "send at most {} to {provider} on day {} (what it accepted), and step up from there",
                    r.delivered,
                    day + 1
                )
            } else {
                format!(
                    "send at most {} to {provider} on day {}: {capacity}/h for its {} IPs over the {hours:.0} h window, less a {:.0}% margin",
                    (capacity as f64 * hours * CAPACITY_MARGIN) as u64,
                    day + 1,
                    ips.len(),
                    (1.0 - CAPACITY_MARGIN) * 100.0
                )
            };
            r.risks.push(Risk {
                kind: RiskKind::Throttled,
                reason: format!(
                    "throttled: {:.1}% deferred (bound {:.0}%)",
                    r.deferral_rate() * 100.0,
                    DEFERRAL_BOUND * 100.0
                ),
                reply: Some(crate::printable::escape(&r.top_deferral).into_owned()),
                advice,
            });
        }
        if r.planned > 0 && r.delivered < r.planned / 2 && r.deferral_rate() <= DEFERRAL_BOUND {
            r.risks.push(Risk {
                kind: RiskKind::Undelivered,
                reason: format!("only {} of {} planned delivered", r.delivered, r.planned),
                reply: None,
                advice: format!(
                    "replay more days (--days) to see day {} finish, or plan it at {}",
                    day + 1,
                    r.delivered
                ),
            });
        }
        let reputation = spec.and_then(|s| s.reputation.clone()).unwrap_or_default();
        let complaints = input.complaint_rate;
        if complaints >= reputation.complaint_bad {
            r.risks.push(Risk {
                kind: RiskKind::Complaints,
                reason: format!(
                    "complaints projected at {:.2}%: at or over {:.1}%, reputation falls and stays down {} days",
                    complaints * 100.0,
                    reputation.complaint_bad * 100.0,
                    reputation.mitigation_days
                ),
                reply: None,
                advice: complaint_advice(complaints, reputation.complaint_good),
            });
        } else if complaints >= reputation.complaint_good {
            r.risks.push(Risk {
                kind: RiskKind::Complaints,
                reason: format!(
                    "complaints projected at {:.2}%: over {:.1}%, clean days stop counting",
                    complaints * 100.0,
                    reputation.complaint_good * 100.0
                ),
                reply: None,
                advice: complaint_advice(complaints, reputation.complaint_good),
            });
        }
        if input.unknown_user_rate > reputation.unknown_bad {
            r.risks.push(Risk {
                kind: RiskKind::UnknownUsers,
                reason: format!(
                    "unknown users at {:.1}%: over {:.0}%",
                    input.unknown_user_rate * 100.0,
                    reputation.unknown_bad * 100.0
                ),
                reply: None,
                advice: format!(
                    "suppress unknown users: {:.1}% > {:.0}% (validate the list, drop hard bounces before sending)",
                    input.unknown_user_rate * 100.0,
                    reputation.unknown_bad * 100.0
                ),
            });
        }
        results.push(r);
    }
    results.sort_by(|a, b| (a.day, &a.provider).cmp(&(b.day, &b.provider)));
    let warm = warm_days(input, models, &results, &standings, shared_capacity, hours);
    Judgement {
        days: results,
        standings,
        warm,
        ..Judgement::default()
    }
}

/// The day each provider takes its share with deferrals under the bound, or when its
/// capacity would carry it.
fn warm_days(
    input: &Input,
    models: &[IspSpec],
    results: &[DayResult],
    standings: &[IpDay],
    shared_capacity: &BTreeMap<(u32, String), u64>,
    hours: f64,
) -> Vec<WarmDay> {
    let mut out = Vec::new();
    for (provider, share) in &input.providers {
        let share_per_day = (input.target_per_day as f64 * share).round() as u64;
        let reached = results
            .iter()
            .find(|r| {
                r.provider == *provider
                    && r.delivered as f64 >= share_per_day as f64 * (1.0 - DEFERRAL_BOUND)
                    && r.deferral_rate() <= DEFERRAL_BOUND
            })
            .map(|r| r.day);
        let refused_for_authentication = results.iter().any(|r| {
            r.provider == *provider
                && r.risks
                    .iter()
                    .any(|risk| risk.kind == RiskKind::MissingAuthentication)
        });
        let mut projected = None;
        let last_day = standings
            .iter()
            .filter(|s| s.provider == *provider)
            .map(|s| s.day)
            .max();
        let throttle = models
            .iter()
            .find(|m| m.name == *provider)
            .and_then(|m| m.throttle.as_ref());
        if reached.is_none()
            && !refused_for_authentication
            && let (Some(last), Some(t)) = (last_day, throttle)
        {
            let ips: Vec<&IpDay> = standings
                .iter()
                .filter(|s| s.day == last && s.provider == *provider)
                .collect();
            let growth = t.growth_percent_per_clean_day.unwrap_or(100) as f64 / 100.0;
            let mut capacity: f64 = ips.iter().map(|s| s.capacity_per_hour as f64).sum();
            if let Some(shared) = shared_capacity.get(&(last, provider.clone())) {
                capacity = capacity.min(*shared as f64);
            }
            let ceiling = t.messages_max_per_hour as f64 * ips.len() as f64;
            let need = share_per_day as f64 / (hours * CAPACITY_MARGIN);
            if capacity >= need {
                projected = Some(last + 1);
            } else if growth > 1.0 && capacity > 0.0 && need <= ceiling {
                let days = ((need / capacity).ln() / growth.ln()).ceil() as u32;
                projected = Some(last + days.max(1));
            }
        }
        out.push(WarmDay {
            provider: provider.clone(),
            share_per_day,
            reached,
            projected,
            refused_for_authentication,
        });
    }
    out
}

fn most_frequent(replies: &BTreeMap<String, (u64, String)>) -> String {
    replies
        .iter()
        .max_by_key(|(reply, (n, _))| (*n, std::cmp::Reverse((*reply).clone())))
        .map(|(reply, _)| reply.clone())
        .unwrap_or_default()
}

/// Whether an accounting diagnostic (`smtp;421 4.7.30 ...`, possibly the multi-line form
/// `421-4.7.30 ...`) is `reply`: same code and enhanced status code.
fn is_reply(diag: &str, reply: &crate::smtp::Reply) -> bool {
    let Some([a, b, c]) = reply.enhanced else {
        return false;
    };
    let enhanced = format!("{a}.{b}.{c}");
    [' ', '-']
        .iter()
        .any(|sep| diag.contains(&format!("{}{sep}{enhanced}", reply.code)))
}

fn is_same(risk: &Risk, reply: &str) -> bool {
    risk.reply.as_deref() == Some(crate::printable::escape(reply).as_ref())
}

fn requirement_name(r: Requirement) -> &'static str {
    match r {
        Requirement::SpfOrDkim => "SPF or DKIM",
        Requirement::Spf => "SPF",
        Requirement::Dkim => "DKIM",
        Requirement::DmarcRecord => "DMARC record",
        Requirement::DmarcAligned => "DMARC alignment",
        Requirement::Ptr => "PTR",
        Requirement::Tls => "TLS",
        Requirement::OneClickUnsubscribe => "one-click unsubscribe",
    }
}

fn authentication_advice(r: Requirement, domain: &str) -> String {
    match r {
        Requirement::SpfOrDkim | Requirement::Dkim => format!(
            "sign with DKIM: `dkim-sign yes` and a `domain-key` for {domain}, its public key in DNS"
        ),
        Requirement::Spf => {
            format!("publish SPF for {domain} listing every source IP (`v=spf1 ip4:… -all`)")
        }
        Requirement::DmarcRecord => {
            format!("publish a DMARC record at _dmarc.{domain} (`v=DMARC1; p=none` is enough)")
        }
        Requirement::DmarcAligned => {
            format!("align the From: domain with the DKIM d= or SPF domain ({domain})")
        }
        Requirement::Ptr => "give each source IP a PTR name that resolves back to it".to_string(),
        Requirement::Tls => "use STARTTLS (`use-starttls yes`)".to_string(),
        Requirement::OneClickUnsubscribe => {
            "add List-Unsubscribe and List-Unsubscribe-Post: List-Unsubscribe=One-Click".to_string()
        }
    }
}

fn complaint_advice(rate: f64, good: f64) -> String {
    format!(
        "send to engaged recipients (≤ 30 days) first and offer one-click unsubscribe: complaints {:.2}% ≥ {:.1}%",
        rate * 100.0,
        good * 100.0
    )
}

/// The terminal table of a judged replay: one line per day and provider, each risk with its
/// reply and advice under it, then the standings and the warm days.
pub fn table(j: &Judgement) -> String {
    let mut out = format!(
        "{:>4}  {:<10} {:>10} {:>10} {:>9} {:>7} {:>7}  risk\n",
        "day", "provider", "planned", "delivered", "deferred", "defer%", "bounce%"
    );
    for r in &j.days {
        let _ = writeln!(
            out,
            "{:>4}  {:<10} {:>10} {:>10} {:>9} {:>6.1}% {:>6.1}%  {}",
            r.day + 1,
            r.provider,
            r.planned,
            r.delivered,
            r.deferred,
            r.deferral_rate() * 100.0,
            r.bounce_rate() * 100.0,
            r.risks
                .iter()
                .map(|k| k.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        for k in &r.risks {
            if let Some(reply) = &k.reply {
                let _ = writeln!(out, "{:>6}reply: {reply}", "");
            }
            let _ = writeln!(out, "{:>6}change: {}", "", k.advice);
        }
    }
    if !j.standings.is_empty() {
        let _ = writeln!(
            out,
            "\n{:>4}  {:<10} {:<15} {:>6} {:>10}",
            "day", "provider", "source IP", "score", "capacity/h"
        );
        for s in &j.standings {
            let _ = writeln!(
                out,
                "{:>4}  {:<10} {:<15} {:>6.3} {:>10}",
                s.day + 1,
                s.provider,
                s.ip,
                s.score,
                s.capacity_per_hour
            );
        }
    }
    if j.adaptive {
        out.push_str(&loop_table(j));
    }
    out.push('\n');
    for w in &j.warm {
        let _ = writeln!(out, "{:<10} {}", w.provider, warm_text(w));
    }
    out
}

/// The closed loop's days that left the schedule: each IP × provider held, stepped back or
/// given overflow, with the reason, and what was carried.
fn loop_table(j: &Judgement) -> String {
    let mut out = format!(
        "\nclosed loop ({} changes, {} carried)\n{:>4}  {:<10} {:<15} {:<12} {:>9} {:>9}  reason\n",
        j.decisions.len(),
        j.carried.len(),
        "day",
        "provider",
        "source IP",
        "action",
        "scheduled",
        "sent"
    );
    for d in &j.decisions {
        let _ = writeln!(
            out,
            "{:>4}  {:<10} {:<15} {:<12} {:>9} {:>9}  {}",
            d.day + 1,
            d.provider,
            d.ip,
            d.action.name(),
            d.scheduled,
            d.volume,
            d.reason
        );
    }
    for c in &j.carried {
        let _ = writeln!(
            out,
            "{:>4}  {:<10} {:<15} {:<12} {:>9} {:>9}  {}",
            c.day + 1,
            c.provider,
            "-",
            "carried",
            c.messages,
            0,
            c.reason
        );
    }
    out
}

/// `warm on day 5`, `projected warm on day 12`, or why not.
pub fn warm_text(w: &WarmDay) -> String {
    match (w.reached, w.projected) {
        (Some(d), _) => format!("warm on day {} ({} a day)", d + 1, w.share_per_day),
        (None, _) if w.refused_for_authentication => format!(
            "not warm: its authentication rules refuse the mail; fix them before any volume ({} a day)",
            w.share_per_day
        ),
        (None, Some(d)) => format!(
            "projected warm on day {} ({} a day)",
            d + 1,
            w.share_per_day
        ),
        (None, None) => format!(
            "not warm, and its capacity does not grow to {} a day",
            w.share_per_day
        ),
    }
}

/// `summary.json` of a judged replay.
pub fn summary_json(j: &Judgement) -> serde_json::Value {
    serde_json::json!({
        "deferral_bound": DEFERRAL_BOUND,
        "days": j.days.iter().map(|r| serde_json::json!({
            "day": r.day + 1,
            "provider": r.provider,
            "planned": r.planned,
            "delivered": r.delivered,
            "deferred": r.deferred,
            "bounced": r.bounced,
            "deferral_rate": r.deferral_rate(),
            "bounce_rate": r.bounce_rate(),
            "risks": r.risks.iter().map(|k| serde_json::json!({
                "kind": k.kind.name(),
                "reason": k.reason,
                "reply": k.reply,
                "advice": k.advice,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "standings": j.standings.iter().map(|s| serde_json::json!({
            "day": s.day + 1,
            "provider": s.provider,
            "ip": s.ip.to_string(),
            "score": s.score,
            "capacity_per_hour": s.capacity_per_hour,
        })).collect::<Vec<_>>(),
        "adaptive": j.adaptive,
        "decisions": j.decisions.iter().map(|d| serde_json::json!({
            "day": d.day + 1,
            "provider": d.provider,
            "ip": d.ip.to_string(),
            "action": d.action.name(),
            "scheduled": d.scheduled,
            "sent": d.volume,
            "overflow": d.overflow,
            "reason": d.reason,
        })).collect::<Vec<_>>(),
        "carried": j.carried.iter().map(|c| serde_json::json!({
            "day": c.day + 1,
            "provider": c.provider,
            "messages": c.messages,
            "reason": c.reason,
        })).collect::<Vec<_>>(),
        "warm": j.warm.iter().map(|w| serde_json::json!({
            "provider": w.provider,
            "share_per_day": w.share_per_day,
            "reached_day": w.reached.map(|d| d + 1),
            "projected_day": w.projected.map(|d| d + 1),
            "refused_for_authentication": w.refused_for_authentication,
        })).collect::<Vec<_>>(),
    })
}

/// The judge's input for any scenario replayed as a warmup: its providers with their share of
/// the mail the replay queued, its largest day as the target, the workloads' list quality
/// weighted by their messages, the first workload's sender and sending window.
/// `schedule` is what the replay queued, per day, provider and source IP.
pub fn scenario_input(scenario: &crate::scenario::Scenario, schedule: &Schedule) -> Input {
    let mut per_provider: BTreeMap<&str, u64> = BTreeMap::new();
    let mut per_day: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &schedule.rows {
        *per_provider.entry(r.provider.as_str()).or_default() += r.messages;
        *per_day.entry(r.day).or_default() += r.messages;
    }
    let total: u64 = per_provider.values().sum();
    let providers = scenario
        .isps
        .iter()
        .filter_map(|i| {
            let n = *per_provider.get(i.name.as_str())?;
            (n > 0).then(|| (i.name.clone(), n as f64 / total as f64))
        })
        .collect();
    let mut new_ips: Vec<Ipv4Addr> = schedule
        .rows
        .iter()
        .map(|r| r.ip)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    new_ips.sort();
    new_ips.dedup();
    let start = scenario.start.unix_secs();
    let weight: f64 = scenario.workloads.iter().map(|w| w.messages as f64).sum();
    let mean = |f: &dyn Fn(&crate::scenario::Workload) -> f64| {
        if weight == 0.0 {
            0.0
        } else {
            scenario
                .workloads
                .iter()
                .map(|w| f(w) * w.messages as f64)
                .sum::<f64>()
                / weight
        }
    };
    let window = scenario
        .workloads
        .first()
        .and_then(|w| w.days.first())
        .filter(|d| d.span_ms < 86_400_000)
        .map_or((0, 86_400), |d| {
            let from = (start % 86_400 + d.at_ms / 1000) % 86_400;
            (from, (from + d.span_ms / 1000).min(86_400))
        });
    Input {
        target_per_day: per_day.values().copied().max().unwrap_or(0),
        new_ips,
        mail_from: scenario
            .workloads
            .first()
            .map_or(String::new(), |w| w.mail_from.to_ascii_lowercase()),
        window,
        providers,
        unknown_user_rate: mean(&|w| w.unknown_user_rate),
        complaint_rate: mean(&|w| w.complaint_rate),
        engagement: mean(&|w| w.engagement),
        start_s: start - start % 86_400,
        warm_ips: Vec::new(),
    }
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One table row of the warmup section: `cells[0]` is its heading cell, the rest data cells;
/// text cells come already escaped ([`escape_html`]).
fn html_row(out: &mut String, class: Option<&str>, cells: &[&dyn std::fmt::Display]) {
    match class {
        Some(class) => {
            let _ = write!(out, "<tr class=\"{class}\">");
        }
        None => out.push_str("<tr>"),
    }
    for (i, cell) in cells.iter().enumerate() {
        let tag = if i == 0 { "th" } else { "td" };
        let _ = write!(out, "<{tag}>{cell}</{tag}>");
    }
    out.push_str("</tr>\n");
}

/// The chart of one provider's days: planned and delivered as bars side by side, one pair
/// per day, the x axis counting days.
fn day_chart(provider: &str, days: &[&DayResult]) -> String {
    const W: f64 = 720.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 60.0;
    const BOTTOM: f64 = 30.0;
    let top = days
        .iter()
        .map(|d| d.planned.max(d.delivered))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let first = days.first().map_or(0, |d| d.day);
    let last = days.last().map_or(0, |d| d.day);
    let slot = (W - LEFT - 10.0) / f64::from(last - first + 1);
    let y = |v: u64| (H - BOTTOM) - (v as f64 / top) * (H - BOTTOM - 10.0);
    let mut out = format!(
        "<figure id=\"warmup-chart-{id}\"><svg role=\"img\" aria-label=\"{id}: planned and delivered per day\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"11\">\n<line x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#444\"/>\n<line x1=\"{LEFT}\" y1=\"10\" x2=\"{LEFT}\" y2=\"{b}\" stroke=\"#444\"/>\n<text x=\"{tx}\" y=\"14\" text-anchor=\"end\">{top}</text>\n<text x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0</text>\n",
        id = escape_html(provider),
        b = H - BOTTOM,
        r = W - 10.0,
        tx = LEFT - 4.0,
        top = top as u64,
    );
    let label_every = ((last - first + 1) / 15).max(1);
    for d in days {
        let x = LEFT + f64::from(d.day - first) * slot;
        let bar = (slot * 0.4).max(1.0);
        let _ = write!(
            out,
            "<rect class=\"planned\" x=\"{x:.1}\" y=\"{py:.1}\" width=\"{bar:.1}\" height=\"{ph:.1}\" fill=\"#1f77b4\"><title>day {day}: {planned} planned</title></rect>\n<rect class=\"delivered\" x=\"{dx:.1}\" y=\"{dy:.1}\" width=\"{bar:.1}\" height=\"{dh:.1}\" fill=\"#2ca02c\"><title>day {day}: {delivered} delivered</title></rect>\n",
            py = y(d.planned),
            ph = (H - BOTTOM) - y(d.planned),
            dx = x + bar,
            dy = y(d.delivered),
            dh = (H - BOTTOM) - y(d.delivered),
            day = d.day + 1,
            planned = d.planned,
            delivered = d.delivered,
        );
        if (d.day - first).is_multiple_of(label_every) {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + bar,
                H - BOTTOM + 14.0,
                d.day + 1
            );
        }
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">day</text>\n</svg><figcaption>{}: planned (blue) and delivered (green) per day</figcaption></figure>\n",
        W - 10.0,
        H - 2.0,
        escape_html(provider)
    );
    out
}

/// The warmup section of `report.html`: the warm day per provider, the risk days with their
/// reason, reply and advice, planned against delivered per provider per day (a chart with a
/// daily axis and a table with deferral and bounce rates), each source IP's reputation and
/// hourly capacity per provider per day, and the schedule.
pub fn html_section(j: &Judgement, schedule: &Schedule) -> String {
    let mut out = String::from("<section id=\"warmup\">\n<h2>Warmup</h2>\n");
    out.push_str("<table id=\"warmup-warm\">\n<caption>When each provider is warm</caption>\n<tr><th>provider</th><th>share a day</th><th>warm</th></tr>\n");
    for w in &j.warm {
        html_row(
            &mut out,
            None,
            &[
                &escape_html(&w.provider),
                &w.share_per_day,
                &escape_html(&warm_text(w)),
            ],
        );
    }
    out.push_str("</table>\n<table id=\"warmup-risks\">\n<caption>Risk days and what to change</caption>\n<tr><th>day</th><th>provider</th><th>reason</th><th>reply</th><th>change</th></tr>\n");
    for r in &j.days {
        for k in &r.risks {
            html_row(
                &mut out,
                Some(k.kind.name()),
                &[
                    &(r.day + 1),
                    &escape_html(&r.provider),
                    &escape_html(&k.reason),
                    &escape_html(k.reply.as_deref().unwrap_or("")),
                    &escape_html(&k.advice),
                ],
            );
        }
    }
    out.push_str("</table>\n");
    let mut providers: Vec<&str> = j.days.iter().map(|d| d.provider.as_str()).collect();
    providers.sort();
    providers.dedup();
    for p in &providers {
        let days: Vec<&DayResult> = j.days.iter().filter(|d| d.provider == *p).collect();
        out.push_str(&day_chart(p, &days));
    }
    out.push_str("<table id=\"warmup-days\">\n<caption>Planned and accepted per provider per day</caption>\n<tr><th>day</th><th>provider</th><th>planned</th><th>delivered</th><th>deferred</th><th>deferral rate</th><th>bounce rate</th></tr>\n");
    for r in &j.days {
        html_row(
            &mut out,
            None,
            &[
                &(r.day + 1),
                &escape_html(&r.provider),
                &r.planned,
                &r.delivered,
                &r.deferred,
                &format!("{:.1}%", r.deferral_rate() * 100.0),
                &format!("{:.1}%", r.bounce_rate() * 100.0),
            ],
        );
    }
    if j.adaptive {
        out.push_str("</table>\n<table id=\"warmup-loop\">\n<caption>Closed loop: where each day left the schedule, and why</caption>\n<tr><th>day</th><th>provider</th><th>source IP</th><th>action</th><th>scheduled</th><th>sent</th><th>reason</th></tr>\n");
        for d in &j.decisions {
            html_row(
                &mut out,
                Some(d.action.name()),
                &[
                    &(d.day + 1),
                    &escape_html(&d.provider),
                    &d.ip,
                    &d.action.name(),
                    &d.scheduled,
                    &d.volume,
                    &escape_html(&d.reason),
                ],
            );
        }
        for c in &j.carried {
            html_row(
                &mut out,
                Some("carried"),
                &[
                    &(c.day + 1),
                    &escape_html(&c.provider),
                    &"",
                    &"carried",
                    &c.messages,
                    &0,
                    &escape_html(&c.reason),
                ],
            );
        }
    }
    out.push_str("</table>\n<table id=\"warmup-standings\">\n<caption>Reputation and hourly capacity per source IP and provider, at the end of each day</caption>\n<tr><th>day</th><th>provider</th><th>source IP</th><th>score</th><th>capacity/h</th></tr>\n");
    for s in &j.standings {
        html_row(
            &mut out,
            None,
            &[
                &(s.day + 1),
                &escape_html(&s.provider),
                &s.ip,
                &format!("{:.3}", s.score),
                &s.capacity_per_hour,
            ],
        );
    }
    out.push_str("</table>\n<table id=\"warmup-schedule\">\n<caption>The schedule</caption>\n<tr><th>day</th><th>provider</th><th>source IP</th><th>messages</th></tr>\n");
    for r in &schedule.rows {
        html_row(
            &mut out,
            None,
            &[&(r.day + 1), &escape_html(&r.provider), &r.ip, &r.messages],
        );
    }
    out.push_str("</table>\n</section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(planned: u64, delivered: u64, deferred: u64, bounced: u64) -> DayResult {
        DayResult {
            planned,
            delivered,
            deferred,
            bounced,
            ..DayResult::default()
        }
    }

    /// Rates are over the day's recipients, those still deferred at the end included.
    #[test]
    fn rates_count_recipients_still_deferred() {
        // SparkPost's day 2 at Gmail: most recipients still deferred when the replay ends.
        let d = day(1600, 100, 1491, 9);
        assert!((d.deferral_rate() - 1491.0 / 1600.0).abs() < 1e-12);
        assert!((d.bounce_rate() - 9.0 / 1600.0).abs() < 1e-12);
        // Deferred whole, nothing final yet.
        assert_eq!(day(500, 0, 500, 0).deferral_rate(), 1.0);
        // Deferred recipients that were delivered later are counted once.
        let d = day(1000, 1000, 100, 0);
        assert!((d.deferral_rate() - 0.1).abs() < 1e-12);
        assert_eq!(d.bounce_rate(), 0.0);
        // Nothing planned or seen.
        assert_eq!(day(0, 0, 0, 0).deferral_rate(), 0.0);
    }
}
