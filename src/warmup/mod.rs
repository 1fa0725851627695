//! IP warmup planning: the planner's input, the day-by-day schedule it searches against the
//! provider models, the schedule as CSV, as a replay scenario and as a PowerMTA snippet, and
//! the judgement of a replayed schedule (per day and provider: planned, accepted, deferred,
//! risk days with their reason).
//!
//! Pure: the caller reads files, loads provider models and runs the replay. The planner steps
//! each provider's reputation ledger (`isp::reputation`, the same code the simulated
//! providers use) one day at a time with the day's planned mail, so a 30-day plan at 1M a
//! day costs milliseconds; the replay (`warmup check`) then sends the schedule through the
//! engine and the provider models in fast mode. It must not read files or a clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::isp::reputation::{Ledger, Signal};
use crate::scenario::{History, IspSpec};
use crate::time::Time;

mod adapt;
mod check;
pub use adapt::{
    Action, Carried, Decision, Loop, Observed, ProviderView, STAGE_DELIVERED_MIN, Standing, view,
};
pub use check::{
    DayResult, IpDay, Judgement, Outcome, OutcomeKind, Risk, RiskKind, Standings, WarmDay,
    html_section, judge, scenario_input, standings_by_day, summary_json, table,
};
mod record;
pub use record::{Replayed, scenario_with_expectations};

/// Longest plan, in days (the SES ramp is 45 days; twice that is a failed plan).
pub const DAYS_MAX: usize = 90;
/// Most source IPs a plan warms.
pub const IPS_MAX: usize = 256;
/// Share of a provider's hourly capacity the plan uses (the rest absorbs the day's jitter).
/// With a day's volume based on yesterday's capacity (see [`RULES`]), the day is clean in the
/// provider's eyes only if it uses at least a quarter of the 24 h capacity it may have grown
/// to: `CAPACITY_MARGIN × window_hours ≥ 6 × growth`, which 0.85 meets for a 12 h window at
/// every shipped model (growth ≤ 1.4).
pub const CAPACITY_MARGIN: f64 = 0.85;
/// Share of the spike rule's allowance the plan uses.
pub const SPIKE_MARGIN: f64 = 0.9;
/// The planner counts a day as clean only when the chance that the day's complaints reach the
/// provider's `complaint_good` rate by bad luck is under this (complaints are drawn per
/// recipient in the replay: one complaint in 900 messages is already over 0.1%). Growth is
/// used a day late, so one unlucky day costs nothing; two in a row (under 1 in 16 at this
/// bound) would.
pub const CLEAN_RISK_MAX: f64 = 0.25;
/// The deferral rate over which a replayed day is a risk day (and the bound a plan states).
pub const DEFERRAL_BOUND: f64 = 0.05;
/// Most schedule rows read from a CSV.
pub const ROWS_MAX: usize = 1_000_000;

/// A bad planner input or schedule, at `FILE:LINE`.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{file}:{line}: error: {message}")]
pub struct WarmupError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    target_per_day: u64,
    new_ips: Vec<String>,
    mail_from: String,
    #[serde(default)]
    window: Option<String>,
    providers: indexmap::IndexMap<String, toml::Spanned<f64>>,
    #[serde(default)]
    unknown_user_rate: Option<f64>,
    #[serde(default)]
    complaint_rate: Option<f64>,
    #[serde(default)]
    engagement: Option<f64>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    warm_ips: Vec<toml::Spanned<String>>,
}

/// What the user wants warmed: target volume, provider mix, new IPs, list quality.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub target_per_day: u64,
    pub new_ips: Vec<Ipv4Addr>,
    pub mail_from: String,
    /// Sending window, seconds of the UTC day.
    pub window: (u64, u64),
    /// Provider (an `isp-models/` name) and its share of the list, in file order.
    pub providers: Vec<(String, f64)>,
    pub unknown_user_rate: f64,
    pub complaint_rate: f64,
    pub engagement: f64,
    /// Day 0, midnight UTC (seconds since the epoch).
    pub start_s: u64,
    /// IPs with warm history at every provider (they have been sending this mail, so its
    /// DKIM domain is warm too): the overflow for what the new IPs cannot take yet.
    pub warm_ips: Vec<Ipv4Addr>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Input {
    /// Parses a planner input; `known` says whether a provider model exists.
    pub fn parse(
        file: &str,
        text: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Input, WarmupError> {
        let err = |offset: usize, message: String| WarmupError {
            file: file.to_string(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawInput = toml::from_str(text)
            .map_err(|e| err(e.span().map_or(0, |s| s.start), e.message().to_string()))?;
        let whole = |m: String| err(0, m);
        if raw.target_per_day == 0 || raw.target_per_day > 100_000_000 {
            return Err(whole(format!(
                "target_per_day is 1 to 100000000, not {}",
                raw.target_per_day
            )));
        }
        if raw.new_ips.is_empty() || raw.new_ips.len() > IPS_MAX {
            return Err(whole(format!(
                "new_ips lists 1 to {IPS_MAX} IPv4 addresses"
            )));
        }
        let mut new_ips = Vec::new();
        for ip in &raw.new_ips {
            new_ips.push(
                ip.parse::<Ipv4Addr>()
                    .map_err(|_| whole(format!("new_ips: `{ip}` is not an IPv4 address")))?,
            );
        }
        if crate::config::value::parse_address(&raw.mail_from).is_err() {
            return Err(whole(format!(
                "mail_from `{}` is not an address",
                raw.mail_from
            )));
        }
        let window = match &raw.window {
            Some(w) => crate::scenario::shape::parse_window(w).map_err(whole)?,
            None => (8 * 3600, 20 * 3600),
        };
        let mut providers = Vec::new();
        for (name, share) in &raw.providers {
            let at = share.span().start;
            if !known(name) {
                return Err(err(
                    at,
                    format!("unknown provider `{name}`: no isp-models/{name}.toml"),
                ));
            }
            let v = *share.get_ref();
            if !(v > 0.0 && v <= 1.0) {
                return Err(err(
                    at,
                    format!("the share of `{name}` is above 0 and at most 1, not {v}"),
                ));
            }
            providers.push((name.clone(), v));
        }
        let sum: f64 = providers.iter().map(|(_, v)| v).sum();
        if providers.is_empty() || (sum - 1.0).abs() > 1e-6 {
            let at = raw.providers.values().next().map_or(0, |s| s.span().start);
            return Err(err(at, format!("the provider shares sum to {sum}, not 1")));
        }
        let rate = |name: &str, v: Option<f64>, default: f64| match v.unwrap_or(default) {
            v if (0.0..=1.0).contains(&v) => Ok(v),
            v => Err(whole(format!("{name} is between 0 and 1, not {v}"))),
        };
        if raw.warm_ips.len() > IPS_MAX {
            return Err(whole(format!(
                "warm_ips lists at most {IPS_MAX} IPv4 addresses"
            )));
        }
        let mut warm_ips = Vec::new();
        for ip in &raw.warm_ips {
            let at = ip.span().start;
            let text = ip.get_ref();
            let parsed = text
                .parse::<Ipv4Addr>()
                .map_err(|_| err(at, format!("warm_ips: `{text}` is not an IPv4 address")))?;
            if new_ips.contains(&parsed) || warm_ips.contains(&parsed) {
                return Err(err(
                    at,
                    format!("warm_ips: {parsed} is listed twice (an IP is new or warm, once)"),
                ));
            }
            warm_ips.push(parsed);
        }
        let start_s = match &raw.start_time {
            Some(t) => crate::scenario::parse_utc(t)
                .ok_or_else(|| whole(format!("start_time `{t}` is not a UTC time")))?,
            None => crate::scenario::parse_utc("2026-10-05T00:00:00Z").expect("a valid date"),
        };
        Ok(Input {
            target_per_day: raw.target_per_day,
            new_ips,
            mail_from: raw.mail_from.to_ascii_lowercase(),
            window,
            providers,
            unknown_user_rate: rate("unknown_user_rate", raw.unknown_user_rate, 0.005)?,
            complaint_rate: rate("complaint_rate", raw.complaint_rate, 0.0005)?,
            engagement: rate("engagement", raw.engagement, 0.2)?,
            start_s: start_s - start_s % 86_400,
            warm_ips,
        })
    }

    fn window_hours(&self) -> f64 {
        (self.window.1 - self.window.0) as f64 / 3600.0
    }
}

/// One row of a schedule: what one IP sends to one provider on one day.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Row {
    pub day: u32,
    pub provider: String,
    pub ip: Ipv4Addr,
    pub messages: u64,
}

/// A day-by-day, per-IP, per-provider schedule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub rows: Vec<Row>,
}

impl Schedule {
    pub fn days(&self) -> u32 {
        self.rows.iter().map(|r| r.day + 1).max().unwrap_or(0)
    }

    /// Messages per (day, provider).
    pub fn per_provider(&self) -> BTreeMap<(u32, String), u64> {
        let mut out = BTreeMap::new();
        for r in &self.rows {
            *out.entry((r.day, r.provider.clone())).or_insert(0) += r.messages;
        }
        out
    }

    /// `day,provider,ip,messages` with a header.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("day,provider,ip,messages\n");
        for r in &self.rows {
            let _ = writeln!(out, "{},{},{},{}", r.day + 1, r.provider, r.ip, r.messages);
        }
        out
    }

    /// Reads a schedule CSV (days from 1); every bad line is an error with its number.
    pub fn parse_csv(
        file: &str,
        text: &str,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<Schedule, WarmupError> {
        let mut rows = Vec::new();
        let err = |line: usize, message: String| WarmupError {
            file: file.to_string(),
            line,
            message,
        };
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || (n == 1 && line.starts_with("day")) {
                continue;
            }
            if rows.len() >= ROWS_MAX {
                return Err(err(n, format!("more than {ROWS_MAX} rows")));
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [day, provider, ip, messages] = fields[..] else {
                return Err(err(n, format!("`{line}` is not day,provider,ip,messages")));
            };
            let day: u32 = day
                .parse()
                .ok()
                .filter(|d| (1..=DAYS_MAX as u32).contains(d))
                .ok_or_else(|| err(n, format!("day `{day}` is not 1 to {DAYS_MAX}")))?;
            if !known(provider) {
                return Err(err(n, format!("unknown provider `{provider}`")));
            }
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| err(n, format!("`{ip}` is not an IPv4 address")))?;
            let messages: u64 = messages
                .parse()
                .ok()
                .filter(|m| *m <= 100_000_000)
                .ok_or_else(|| err(n, format!("messages `{messages}` is not a count")))?;
            rows.push(Row {
                day: day - 1,
                provider: provider.to_string(),
                ip,
                messages,
            });
        }
        if rows.is_empty() {
            return Err(err(1, "the schedule has no rows".into()));
        }
        rows.sort();
        Ok(Schedule { rows })
    }
}

/// The plan: the schedule, the day each provider reaches its share of the target (if it
/// does within `DAYS_MAX`), and the rules it followed.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub schedule: Schedule,
    pub warm_day: Vec<(String, Option<u32>)>,
}

/// The rules the planner follows, stated in the output.
pub const RULES: &[&str] = &[
    "each provider is planned on its own model: its reputation ledger (score, clean days, capacity C_cold·G^clean_days·(r/r0)², the /24 and DKIM-domain buckets) is stepped one day at a time with the day's planned mail, as the provider records it (accepted mail and complaints on the IP, its /24 and the DKIM domain; unknown users on the IP)",
    "a day's volume is based on the capacity the IPs, their /24s and the DKIM domain had the day before: growth is used only the day after it was earned, so a day the replay does not count as clean (a complaint drawn by bad luck) leaves the next day still under capacity",
    "a day uses at most 85% of that hourly capacity over the sending window, and at least a quarter of the 24 h capacity, so the provider counts it as a clean day",
    "a day's hourly volume stays under 90% of the spike rule's allowance (spike factor × the mean of the trailing 7 sending days)",
    "a stage advances only on a clean day: under capacity, and complaints under the provider's 0.1% with at least 75% odds (a day too small for that, where one complaint is over 0.1%, is counted as not clean and the stage is held)",
    "the volume is spread evenly over the new IPs and over the sending window; a provider that reaches its share holds it while the others finish",
    "with warm_ips, the part of each provider's share the new IPs cannot take yet goes through the warm IPs (split evenly, each within its capacity over the window less 15%), so the stream sends its target from day 1 while the new IPs ramp; in PowerMTA each new IP is the cold-virtual-mta twin of a warm virtual MTA: the day's first N messages per domain through the new IP, the rest through the warm one",
    "in closed loop (`warmup check --adaptive`) the schedule runs one day at a time and each IP × provider's next day is decided from what its day really did and from the provider's own ledger: its stage advances only on a day that delivered at least 90% of the stage, deferred at most 5% and that the provider counted clean (the IP's clean days grew)",
    "an IP × provider whose day deferred over 5%, delivered under 90% or was not counted clean holds its stage; one whose capacity the provider cut (a complaint rate at or over 0.3%) steps back to the largest earlier stage within what its standing now allows (its hourly capacity over the window, less 15%)",
    "what a held or stepped-back IP does not take goes to the same provider's new IPs that advanced and have room, then to the warm IPs, each within its own capacity, its /24's and the DKIM domain's, and within the spike rule; the rest is carried (not sent that day) and reported",
];

/// Searches the fastest schedule the provider models allow (see [`RULES`]).
pub fn plan(input: &Input, models: &[IspSpec]) -> Plan {
    let mut rows = Vec::new();
    let mut warm_day = Vec::new();
    let domain = input
        .mail_from
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_string());
    let hours = input.window_hours();
    let n_ips = input.new_ips.len() as u64;
    let mut nets: Vec<String> = input.new_ips.iter().map(|ip| net_key(*ip)).collect();
    nets.sort();
    nets.dedup();
    for (name, share) in &input.providers {
        let Some(spec) = models.iter().find(|m| m.name == *name) else {
            continue;
        };
        let target = (input.target_per_day as f64 * share).round() as u64;
        let mut ledger = ledger_for(spec);
        if !input.warm_ips.is_empty() {
            // The warm IPs have been sending this mail: they, their /24s and its DKIM domain
            // start warm, as the replay's `[[identity]]` entries say.
            let warm = History::named("warm").expect("a named history");
            for ip in &input.warm_ips {
                ledger.set_history(&format!("ip:{ip}"), warm.clone());
                ledger.set_history(&net_key(*ip), warm.clone());
            }
            ledger.set_history(&format!("domain:{domain}"), warm);
        }
        let complaint_good = spec.reputation.clone().unwrap_or_default().complaint_good;
        let throttle = spec.throttle.as_ref();
        let spike = throttle
            .and_then(|t| t.spike_percent)
            .map(|p| p as f64 / 100.0);
        let by_net = throttle.is_some_and(|t| t.messages_per_netblock_per_hour.is_some());
        let by_domain = throttle.is_some_and(|t| t.messages_per_domain_per_hour.is_some());
        let mut history: Vec<u64> = Vec::new();
        let mut yesterday: Option<f64> = None;
        let mut reached = None;
        for day in 0..DAYS_MAX as u32 {
            let now = Time::from_secs(input.start_s + day as u64 * 86_400 + input.window.0);
            let per_ip_cap: u64 = input
                .new_ips
                .iter()
                .map(|ip| ledger.capacity(&format!("ip:{ip}"), now))
                .min()
                .unwrap_or(0);
            let mut hourly = (per_ip_cap * n_ips) as f64;
            if by_net {
                let net_cap: u64 = nets.iter().map(|n| ledger.capacity(n, now)).sum();
                hourly = hourly.min(net_cap as f64);
            }
            if by_domain {
                hourly = hourly.min(ledger.capacity(&format!("domain:{domain}"), now) as f64);
            }
            // Growth earned yesterday is used from tomorrow: if the replay did not count
            // yesterday clean, today is still under capacity.
            let basis = yesterday.map_or(hourly, |y| y.min(hourly));
            yesterday = Some(hourly);
            let mut volume = (basis * CAPACITY_MARGIN * hours) as u64;
            if let (Some(factor), Some(mean)) = (spike, trailing_mean(&history)) {
                volume = volume.min((mean * factor * SPIKE_MARGIN) as u64);
            }
            let volume = volume.min(target).max(n_ips);
            history.push(volume);
            let per_ip = volume / n_ips;
            // The day's mail per identity, as the provider counts it.
            let mut per_identity: BTreeMap<String, u64> = BTreeMap::new();
            let mut send = |ip: Ipv4Addr, messages: u64| {
                rows.push(Row {
                    day,
                    provider: name.clone(),
                    ip,
                    messages,
                });
                for key in [format!("ip:{ip}"), net_key(ip), format!("domain:{domain}")] {
                    *per_identity.entry(key).or_default() += messages;
                }
            };
            for (i, ip) in input.new_ips.iter().enumerate() {
                send(*ip, per_ip + u64::from((i as u64) < volume % n_ips));
            }
            // The part of the share the new IPs cannot take yet goes through the warm IPs,
            // evenly, each within its capacity over the window less the margin.
            let mut rest = target.saturating_sub(volume);
            for (i, ip) in input.warm_ips.iter().enumerate() {
                let room = (ledger.capacity(&format!("ip:{ip}"), now) as f64
                    * CAPACITY_MARGIN
                    * hours) as u64;
                let left = (input.warm_ips.len() - i) as u64;
                let messages = rest.div_ceil(left).min(room);
                rest -= messages;
                if messages > 0 {
                    send(*ip, messages);
                }
            }
            for (key, messages) in &per_identity {
                feed(&mut ledger, key, now, *messages, input, complaint_good);
            }
            if volume >= target {
                reached = Some(day);
                break;
            }
        }
        warm_day.push((name.clone(), reached));
    }
    // A warm provider holds its target while the others finish.
    let last = warm_day.iter().filter_map(|(_, d)| *d).max().unwrap_or(0);
    for (name, day) in &warm_day {
        let Some(day) = day else { continue };
        let held: Vec<Row> = rows
            .iter()
            .filter(|r| r.day == *day && r.provider == *name)
            .cloned()
            .collect();
        for d in day + 1..=last {
            rows.extend(held.iter().map(|r| Row {
                day: d,
                ..r.clone()
            }));
        }
    }
    rows.sort();
    Plan {
        schedule: Schedule { rows },
        warm_day,
    }
}

/// The reputation ledger's key for the /24 of `ip`, as the provider names it.
fn net_key(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("net:{}.{}.{}.0/24", o[0], o[1], o[2])
}

/// A fresh ledger for `spec`'s reputation model and throttle curves (as `isp::Provider`
/// builds its own).
fn ledger_for(spec: &IspSpec) -> Ledger {
    let mut ledger = Ledger::new(
        spec.reputation.clone().unwrap_or_default(),
        History::default(),
    );
    if let Some(t) = &spec.throttle {
        crate::isp::set_throttle_curves(&mut ledger, t);
    }
    ledger
}

/// A day's mail from one identity as the provider's ledger records it: the accepted messages
/// (the list's unknown users are refused at RCPT and recorded against the source IP only) and
/// the expected complaints. A day so small that the complaints drawn in the replay reach
/// `complaint_good` with a chance over [`CLEAN_RISK_MAX`] is recorded as not clean.
fn feed(
    ledger: &mut Ledger,
    key: &str,
    now: Time,
    messages: u64,
    input: &Input,
    complaint_good: f64,
) {
    let unknown = (messages as f64 * input.unknown_user_rate).round() as u64;
    let accepted = messages - unknown.min(messages);
    ledger.record_many(
        key,
        now,
        Signal::Accepted {
            engagement: input.engagement,
        },
        accepted,
    );
    if key.starts_with("ip:") {
        ledger.record_many(key, now, Signal::UnknownUser, unknown);
    }
    let expected = accepted as f64 * input.complaint_rate;
    ledger.record_many(key, now, Signal::Complaint, expected.round() as u64);
    let at_least = (accepted as f64 * complaint_good).ceil().max(1.0) as u64;
    if accepted > 0 && poisson_at_least(expected, at_least) > CLEAN_RISK_MAX {
        ledger.record(key, now, Signal::Throttled);
    }
}

/// `P(X ≥ k)` for `X ~ Poisson(mean)`: the chance the replay's per-recipient complaint draws
/// reach `k` (a normal tail past a mean of 100, where the sum would be long).
fn poisson_at_least(mean: f64, k: u64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    if mean > 100.0 {
        // Normal tail, `erfc` by Abramowitz and Stegun 7.1.26 (error under 1.5e-7).
        let z = (k as f64 - 0.5 - mean) / mean.sqrt();
        let x = z.abs() / std::f64::consts::SQRT_2;
        let t = 1.0 / (1.0 + 0.327_591_1 * x);
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        let upper = 0.5 * poly * (-x * x).exp();
        return if z >= 0.0 { upper } else { 1.0 - upper };
    }
    let mut term = (-mean).exp();
    let mut below = 0.0;
    for i in 0..k {
        below += term;
        term *= mean / (i + 1) as f64;
    }
    (1.0 - below).max(0.0)
}

/// The replay scenario of `schedule`: one virtual MTA per IP, one stream per IP and
/// provider with its daily list over the window, `days` days long.
pub fn replay_scenario(
    input: &Input,
    schedule: &Schedule,
    models: &[IspSpec],
    days: u32,
    seed: u64,
) -> String {
    replay_streams(input, schedule, models, days, seed, &[]).0
}

/// [`replay_scenario`] with a stream for each of `pairs` (provider, IP) too, sending or not
/// (the closed loop sets their days as it goes), and the streams' (provider, IP) in
/// workload order. Warm IPs (`input.warm_ips`), their /24s and the DKIM domain start warm
/// at every provider.
pub fn replay_streams(
    input: &Input,
    schedule: &Schedule,
    models: &[IspSpec],
    days: u32,
    seed: u64,
    pairs: &[(String, Ipv4Addr)],
) -> (String, Vec<(String, Ipv4Addr)>) {
    let domain = input
        .mail_from
        .rsplit_once('@')
        .map_or("sender.example", |(_, d)| d);
    let mut config = format!("domain-key s1,{domain},/etc/pmta/dkim/{domain}.pem\n");
    let mut ips: Vec<Ipv4Addr> = schedule
        .rows
        .iter()
        .map(|r| r.ip)
        .chain(pairs.iter().map(|(_, ip)| *ip))
        .collect();
    ips.sort();
    ips.dedup();
    for (i, ip) in ips.iter().enumerate() {
        let _ = write!(
            config,
            "<virtual-mta w{}>\n    smtp-source-host {ip} mta{}.{domain}\n</virtual-mta>\n",
            i + 1,
            i + 1
        );
    }
    // Deferred recipients wait 30 minutes: longer than the providers' usual penalty windows,
    // so a throttle is not made worse by early retries.
    config.push_str("<domain *>\n    dkim-sign yes\n    max-smtp-out 10\n    retry-after 30m\n    retry-recipients-after 30m\n</domain>\n");
    let mut out = format!(
        "# Replays a warmup schedule: one stream per IP and provider, each day's volume from the schedule.\nname = \"warmup-replay\"\nseed = {seed}\nduration = \"{days}d\"\nmode = \"fast\"\nstart_time = \"{}\"\ntick_ms = 100\nconfig_inline = \"\"\"\n{config}\"\"\"\n\n",
        utc(input.start_s)
    );
    for (name, _) in &input.providers {
        let _ = write!(out, "[isps.{name}]\nmodel = \"{name}\"\n\n");
    }
    if !input.warm_ips.is_empty() {
        // The warm IPs have been sending this mail: they, their /24s and its DKIM domain
        // have warm history at every provider.
        let mut nets: Vec<String> = input.warm_ips.iter().map(|ip| net_key(*ip)).collect();
        nets.sort();
        nets.dedup();
        for ip in &input.warm_ips {
            let _ = write!(
                out,
                "[[identity]]\nsource_ip = \"{ip}\"\nhistory = \"warm\"\n\n"
            );
        }
        for net in &nets {
            let _ = write!(
                out,
                "[[identity]]\nnetblock = \"{}\"\nhistory = \"warm\"\n\n",
                net.trim_start_matches("net:")
            );
        }
        let _ = write!(
            out,
            "[[identity]]\ndomain = \"{domain}\"\nhistory = \"warm\"\n\n"
        );
    }
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        input.window.0 / 3600,
        input.window.0 % 3600 / 60,
        input.window.1 / 3600,
        input.window.1 % 3600 / 60
    );
    let mut streams = Vec::new();
    for (name, _) in &input.providers {
        let Some(spec) = models.iter().find(|m| m.name == *name) else {
            continue;
        };
        let rcpt_domain = &spec.domains[0];
        for (i, ip) in ips.iter().enumerate() {
            let daily: Vec<u64> = (0..days)
                .map(|d| {
                    schedule
                        .rows
                        .iter()
                        .filter(|r| r.day == d && r.provider == *name && r.ip == *ip)
                        .map(|r| r.messages)
                        .sum()
                })
                .collect();
            let kept = pairs.iter().any(|(p, a)| p == name && a == ip);
            if daily.iter().all(|v| *v == 0) && !kept {
                continue;
            }
            streams.push((name.clone(), *ip));
            let list: Vec<String> = daily.iter().map(u64::to_string).collect();
            let _ = write!(
                out,
                "[[workload]]\nvmta = \"w{}\"\nmail_from = \"{}\"\ndaily = [{}]\nwindow = \"{window}\"\ndomains = {{ \"{rcpt_domain}\" = 1.0 }}\nunknown_user_rate = {}\ncomplaint_rate = {}\nengagement = {}\none_click_unsubscribe = true\n\n",
                i + 1,
                input.mail_from,
                list.join(", "),
                input.unknown_user_rate,
                input.complaint_rate,
                input.engagement
            );
        }
    }
    (out, streams)
}

fn utc(s: u64) -> String {
    let t = Time::from_secs(s).acct_format();
    // `YYYY-MM-DD HH:MM:SS±0000` → RFC 3339.
    format!("{}T{}Z", &t[..10], &t[11..19])
}

/// The spike rule's baseline: the mean of the sending days among the last seven, once there
/// are at least three (the planner caps a step by it, the check flags a step above it).
pub(crate) fn trailing_mean(days: &[u64]) -> Option<f64> {
    let active: Vec<u64> = days
        .iter()
        .rev()
        .take(7)
        .copied()
        .filter(|v| *v > 0)
        .collect();
    (active.len() >= 3).then(|| active.iter().sum::<u64>() as f64 / active.len() as f64)
}

/// A PowerMTA snippet implementing the schedule. PowerMTA's `cold-virtual-mta` names one
/// virtual MTA, the twin of the one it sits in, and `max-cold-virtual-mta-msg` counts per
/// domain per day for that pair; so each new IP is the cold twin `coldN` of a warm virtual MTA
/// `warmN`, whose nested `<domain>` block per provider carries that IP's own daily list (the
/// provider's other domains `queue-to` its first, so the list counts the provider's mail, not
/// one domain's). Mail injected to the pool `warm` sends each day's first N messages per
/// provider through the new IPs, the rest through the warm ones.
pub fn pmta_snippet(input: &Input, schedule: &Schedule, models: &[IspSpec]) -> String {
    let domain = input
        .mail_from
        .rsplit_once('@')
        .map_or("sender.example", |(_, d)| d);
    let mut out = format!(
        "# Warmup schedule from `pmta-sim warmup plan`. Each new IP is the cold twin `coldN` of a\n# warm virtual MTA `warmN` ({}); PowerMTA sends the day's first N messages\n# per provider through the twin (max-cold-virtual-mta-msg, one value per day, the last\n# repeating; a provider's domains share one queue) and the rest through the warm IP.\n# Inject to the pool `warm`.\n",
        if input.warm_ips.is_empty() {
            "give each its warm IP"
        } else {
            "on the plan's warm IPs"
        }
    );
    // max-cold-virtual-mta-msg counts per queue, and a queue is one domain: a list under each
    // of Yahoo's four domains would let four times the IP's Yahoo share through the cold IP.
    // So each provider is one queue, its first domain's, which its other domains queue-to.
    let queues: Vec<(&str, &String, &[String])> = input
        .providers
        .iter()
        .filter_map(|(name, _)| {
            let spec = models.iter().find(|m| m.name == *name)?;
            let (first, rest) = spec.domains.split_first()?;
            Some((name.as_str(), first, rest))
        })
        .collect();
    for (name, first, rest) in &queues {
        for d in *rest {
            let _ = write!(
                out,
                "<domain {d}>\n    # {name}: one queue, so one daily count\n    queue-to {first}\n</domain>\n"
            );
        }
    }
    let mut ips: Vec<Ipv4Addr> = schedule
        .rows
        .iter()
        .map(|r| r.ip)
        .filter(|ip| !input.warm_ips.contains(ip))
        .collect();
    ips.sort();
    ips.dedup();
    let days = schedule.days();
    let mut per_ip: BTreeMap<(Ipv4Addr, &str, u32), u64> = BTreeMap::new();
    for row in &schedule.rows {
        *per_ip
            .entry((row.ip, row.provider.as_str(), row.day))
            .or_default() += row.messages;
    }
    for (i, ip) in ips.iter().enumerate() {
        let n = i + 1;
        let _ = write!(
            out,
            "<virtual-mta cold{n}>\n    smtp-source-host {ip} mta{n}.{domain}\n</virtual-mta>\n<virtual-mta warm{n}>\n"
        );
        match input.warm_ips.get(i % input.warm_ips.len().max(1)) {
            Some(warm) => {
                let w = input.warm_ips.iter().position(|x| x == warm).unwrap_or(0) + 1;
                let _ = writeln!(out, "    smtp-source-host {warm} warm{w}.{domain}");
            }
            None => {
                let _ = writeln!(out, "    # smtp-source-host <warm IP {n}> <its name>");
            }
        }
        let _ = writeln!(out, "    cold-virtual-mta cold{n}");
        for (name, first, _) in &queues {
            let list: Vec<String> = (0..days)
                .map(|d| {
                    let v = per_ip.get(&(*ip, *name, d)).copied().unwrap_or(0);
                    format!("{v}/d")
                })
                .collect();
            let _ = write!(
                out,
                "    <domain {first}>\n        # {name}: day 1 .. day {days}\n        max-cold-virtual-mta-msg {}\n    </domain>\n",
                list.join(",")
            );
        }
        out.push_str("</virtual-mta>\n");
    }
    // Warm IPs beyond one per new IP send through the pool on their own.
    for (i, warm) in input.warm_ips.iter().enumerate().skip(ips.len()) {
        let _ = write!(
            out,
            "<virtual-mta warm{n}>\n    smtp-source-host {warm} warm{w}.{domain}\n</virtual-mta>\n",
            n = i + 1,
            w = i + 1
        );
    }
    out.push_str("<virtual-mta-pool warm>\n");
    for i in 0..ips.len().max(input.warm_ips.len()) {
        let _ = writeln!(out, "    virtual-mta warm{}", i + 1);
    }
    out.push_str("</virtual-mta-pool>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chance the replay's complaint draws reach a count: exact under a mean of 100,
    /// a normal tail above it.
    #[test]
    fn complaint_draws_reach_a_count_with_poissons_odds() {
        // P(X ≥ 2 | 0.5) = 1 − e^−0.5 · 1.5.
        let exact = 1.0 - (-0.5f64).exp() * 1.5;
        assert!((poisson_at_least(0.5, 2) - exact).abs() < 1e-12);
        assert_eq!(poisson_at_least(0.0, 1), 0.0);
        // A mean of 400: 2.5 standard deviations above it is rare, its mean is a coin toss.
        let far = poisson_at_least(400.0, 450);
        assert!((0.005..0.01).contains(&far), "{far}");
        assert!((poisson_at_least(400.0, 400) - 0.5).abs() < 0.03);
    }
}
