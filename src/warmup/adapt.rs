//! The plan in closed loop: a schedule executed one day at a time, each IP × provider's next
//! day decided from what its last day really did — advance a stage only on a day that
//! delivered most of it and that the provider counted clean, hold it when the day deferred
//! or was not clean, step back to what the provider's standing now allows when it cut the
//! IP's capacity — and the volume a held pair does not take sent through the same
//! provider's other new IPs with room, then the warm IPs, else carried and reported.
//!
//! Pure: the caller runs the replay (`driver::fast::run_stepped`), and at each day boundary
//! hands in what each pair delivered and deferred and each provider's standing of the IPs,
//! their /24s and the DKIM domain (read from the provider's own reputation ledger). It must
//! not run the replay, read files or a clock, or invent a threshold: the bounds are the
//! planner's ([`super::CAPACITY_MARGIN`], [`super::SPIKE_MARGIN`], [`super::DEFERRAL_BOUND`])
//! and the providers' models.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{CAPACITY_MARGIN, DEFERRAL_BOUND, Input, Row, SPIKE_MARGIN, Schedule, net_key};
use crate::isp::reputation::Ledger;
use crate::scenario::IspSpec;
use crate::time::Time;

/// Share of a stage a day must deliver for the stage to advance (SparkPost holds a stage
/// under 90% delivered, `reference/isp-behavior.md` §4).
pub const STAGE_DELIVERED_MIN: f64 = 0.9;

/// What a provider's ledger says of one identity at a day boundary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Standing {
    pub score: f64,
    pub clean_days: u32,
    pub capacity_per_hour: u64,
}

/// One provider at a day boundary: its standing of each IP, and the hourly capacity of each
/// /24 and of the DKIM domain where its model throttles them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProviderView {
    pub ips: BTreeMap<Ipv4Addr, Standing>,
    /// Per /24 (`net:a.b.c.0/24`), when the model has a /24 bucket.
    pub nets: BTreeMap<String, u64>,
    /// When the model has a DKIM-domain bucket.
    pub domain_per_hour: Option<u64>,
}

/// `spec`'s view of `ips` (and their /24s, and `domain`) at `now`, from a copy of its ledger
/// (asking the ledger folds the finished days, so the provider's own is left alone).
pub fn view(
    ledger: &Ledger,
    spec: &IspSpec,
    ips: &[Ipv4Addr],
    domain: &str,
    now: Time,
) -> ProviderView {
    let mut ledger = ledger.clone();
    let throttle = spec.throttle.as_ref();
    let mut out = ProviderView::default();
    for ip in ips {
        let key = format!("ip:{ip}");
        let capacity_per_hour = ledger.capacity(&key, now);
        let s = ledger.standing(&key, now);
        out.ips.insert(
            *ip,
            Standing {
                score: s.score,
                clean_days: s.clean_days,
                capacity_per_hour,
            },
        );
        if throttle.is_some_and(|t| t.messages_per_netblock_per_hour.is_some()) {
            let net = net_key(*ip);
            let c = ledger.capacity(&net, now);
            out.nets.insert(net, c);
        }
    }
    if throttle.is_some_and(|t| t.messages_per_domain_per_hour.is_some()) {
        out.domain_per_hour = Some(ledger.capacity(&format!("domain:{domain}"), now));
    }
    out
}

/// What one IP did at one provider on a day (recipients, each counted once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub delivered: u64,
    /// Deferred at least once.
    pub deferred: u64,
    pub bounced: u64,
}

/// What the loop did with one IP × provider on one day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The stage advanced (the day before delivered it and was counted clean).
    Advanced,
    /// The stage was held.
    Held,
    /// Back to what the provider's standing now allows.
    SteppedBack,
    /// A warm IP took volume the new IPs could not.
    Overflow,
}

impl Action {
    /// The name in `summary.json`.
    pub fn name(self) -> &'static str {
        match self {
            Action::Advanced => "advanced",
            Action::Held => "held",
            Action::SteppedBack => "stepped_back",
            Action::Overflow => "overflow",
        }
    }
}

/// One IP × provider's day when it differs from the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The day decided (from 0).
    pub day: u32,
    pub provider: String,
    pub ip: Ipv4Addr,
    pub action: Action,
    /// The schedule's volume for the pair that day.
    pub scheduled: u64,
    /// What it sent, `overflow` included.
    pub volume: u64,
    /// Taken over from pairs that held or stepped back.
    pub overflow: u64,
    pub reason: String,
}

/// Volume no IP could take on a day at a provider: not sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub day: u32,
    pub provider: String,
    pub messages: u64,
    pub reason: String,
}

/// One IP at one provider: its scheduled days, its stage, the day it sends and the
/// provider's standing when that day began.
#[derive(Clone, Debug)]
struct Pair {
    ip: Ipv4Addr,
    scheduled: Vec<u64>,
    stage: usize,
    volume: u64,
    start: Option<Standing>,
    /// What it sent each day, for the provider's spike rule (per source IP: the hour's
    /// volume against the same hour of its trailing sending days).
    sent: Vec<u64>,
}

impl Pair {
    /// The schedule's volume for the pair on `day`; past the schedule's last day, that day's
    /// (a daily list's last value repeats, so a replay may run on until the loop has caught
    /// up with the schedule).
    fn at(&self, day: usize) -> u64 {
        self.scheduled
            .get(day)
            .or(self.scheduled.last())
            .copied()
            .unwrap_or(0)
    }

    /// The most it may send in a day at `capacity_per_hour`: that capacity over the window
    /// less the planner's margin, and under the spike rule's allowance of its own trailing
    /// sending days less the planner's margin.
    fn room(&self, capacity_per_hour: u64, hours: f64, spike: Option<f64>) -> u64 {
        let mut room = allowed(capacity_per_hour, hours);
        if let (Some(factor), Some(mean)) = (spike, super::trailing_mean(&self.sent)) {
            room = room.min((mean * factor * SPIKE_MARGIN) as u64);
        }
        room
    }

    fn stage_volume(&self, stage: usize) -> u64 {
        self.scheduled
            .get(stage)
            .or(self.scheduled.last())
            .copied()
            .unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
struct ProviderLoop {
    name: String,
    spike: Option<f64>,
    new: Vec<Pair>,
    warm: Vec<Pair>,
    /// What the loop sent each day, for the spike rule.
    sent: Vec<u64>,
}

/// A schedule executed day by day with the rules of [`super::RULES`] applied per IP ×
/// provider.
#[derive(Clone, Debug)]
pub struct Loop {
    hours: f64,
    providers: Vec<ProviderLoop>,
    pub decisions: Vec<Decision>,
    pub carried: Vec<Carried>,
    /// What was sent: the executed schedule.
    pub executed: Schedule,
}

/// The most a pair may send in a day with `standing`: its hourly capacity over the window,
/// less the planner's margin.
fn allowed(capacity_per_hour: u64, hours: f64) -> u64 {
    (capacity_per_hour as f64 * hours * CAPACITY_MARGIN) as u64
}

impl Loop {
    /// The loop for `schedule`, made for `input` (its `warm_ips` are the overflow); it runs
    /// as many days as it is asked, the schedule's last day repeating after its end.
    pub fn new(input: &Input, schedule: &Schedule, models: &[IspSpec]) -> Loop {
        let days = schedule.days();
        // Each pair's days in one pass over the schedule (it may hold a million rows).
        let mut days_of: BTreeMap<(&str, Ipv4Addr), Vec<u64>> = BTreeMap::new();
        for r in &schedule.rows {
            let days = days_of
                .entry((r.provider.as_str(), r.ip))
                .or_insert_with(|| vec![0; days as usize]);
            if let Some(v) = days.get_mut(r.day as usize) {
                *v += r.messages;
            }
        }
        let mut providers = Vec::new();
        for (name, _) in &input.providers {
            let spike = models
                .iter()
                .find(|m| m.name == *name)
                .and_then(|m| m.throttle.as_ref())
                .and_then(|t| t.spike_percent)
                .map(|p| p as f64 / 100.0);
            let mut ips: Vec<Ipv4Addr> = days_of
                .keys()
                .filter(|(p, _)| p == name)
                .map(|(_, ip)| *ip)
                .chain(input.warm_ips.iter().copied())
                .collect();
            ips.sort();
            ips.dedup();
            let (mut new, mut warm) = (Vec::new(), Vec::new());
            for ip in ips {
                let pair = Pair {
                    ip,
                    scheduled: days_of
                        .get(&(name.as_str(), ip))
                        .cloned()
                        .unwrap_or_default(),
                    stage: 0,
                    volume: 0,
                    start: None,
                    sent: Vec::new(),
                };
                if input.warm_ips.contains(&ip) {
                    warm.push(pair);
                } else {
                    new.push(pair);
                }
            }
            providers.push(ProviderLoop {
                name: name.clone(),
                spike,
                new,
                warm,
                sent: Vec::new(),
            });
        }
        Loop {
            hours: input.window_hours(),
            providers,
            decisions: Vec::new(),
            carried: Vec::new(),
            executed: Schedule::default(),
        }
    }

    /// Every IP × provider of the loop, for the replay to give each a stream.
    pub fn pairs(&self) -> Vec<(String, Ipv4Addr)> {
        self.providers
            .iter()
            .flat_map(|p| {
                p.new
                    .iter()
                    .chain(&p.warm)
                    .map(move |pair| (p.name.clone(), pair.ip))
            })
            .collect()
    }

    /// Decides day `day` (from 0) from what day `day − 1` did (`observed`, per provider and
    /// IP) and the providers' standing now (`views`, by provider): the volume of every IP ×
    /// provider that day.
    pub fn day(
        &mut self,
        day: u32,
        observed: &BTreeMap<(String, Ipv4Addr), Observed>,
        views: &BTreeMap<String, ProviderView>,
    ) -> Vec<(String, Ipv4Addr, u64)> {
        let hours = self.hours;
        let mut out = Vec::new();
        for p in &mut self.providers {
            let empty = ProviderView::default();
            let view = views.get(&p.name).unwrap_or(&empty);
            let standing_of = |ip: Ipv4Addr, start: Option<Standing>| {
                view.ips.get(&ip).copied().or(start).unwrap_or(Standing {
                    score: 0.0,
                    clean_days: 0,
                    capacity_per_hour: u64::MAX / 1024,
                })
            };
            let d = day as usize;
            let mut decisions: Vec<Decision> = Vec::new();
            // 1. Each new IP's own stage.
            let mut volumes = Vec::new();
            for pair in &mut p.new {
                let now = standing_of(pair.ip, pair.start);
                let cap = pair.room(now.capacity_per_hour, hours, p.spike);
                let (action, stage, reason) = match (day, pair.start) {
                    (0, _) | (_, None) => (Action::Advanced, pair.stage, String::new()),
                    (_, Some(before)) => judge_pair(
                        pair,
                        before,
                        now,
                        observed
                            .get(&(p.name.clone(), pair.ip))
                            .copied()
                            .unwrap_or_default(),
                        cap,
                        &p.name,
                        day,
                    ),
                };
                pair.stage = stage;
                let want = pair.stage_volume(stage);
                let (action, reason) = if want > cap && action == Action::Advanced {
                    (
                        Action::Held,
                        format!(
                            "the stage's {want} is over what {}'s {}/h and the spike rule allow ({cap})",
                            pair.ip, now.capacity_per_hour
                        ),
                    )
                } else {
                    (action, reason)
                };
                let reason = if reason.is_empty() && day > 0 && want != pair.at(d) {
                    format!(
                        "advanced to the schedule's day {} stage ({want}): its stages lag the calendar after a hold or step back",
                        stage + 1
                    )
                } else {
                    reason
                };
                volumes.push((want.min(cap), cap, action, reason, now));
            }
            // 2. The /24s and the DKIM domain the new IPs share.
            let mut net_room: BTreeMap<String, u64> = view
                .nets
                .iter()
                .map(|(n, c)| (n.clone(), allowed(*c, hours)))
                .collect();
            let mut domain_room = view.domain_per_hour.map(|c| allowed(c, hours));
            for (pair, v) in p.new.iter().zip(volumes.iter_mut()) {
                let net = net_key(pair.ip);
                let mut room = net_room.get(&net).copied().unwrap_or(u64::MAX);
                if let Some(d) = domain_room {
                    room = room.min(d);
                }
                if v.0 > room {
                    let why = format!(
                        "the /24 and DKIM-domain capacity left at {} allows {room} of its {}",
                        p.name, v.0
                    );
                    v.3 = if v.3.is_empty() {
                        why
                    } else {
                        format!("{}; {why}", v.3)
                    };
                    v.0 = room;
                    if v.2 == Action::Advanced {
                        v.2 = Action::Held;
                    }
                }
                if let Some(r) = net_room.get_mut(&net) {
                    *r -= v.0;
                }
                if let Some(d) = domain_room.as_mut() {
                    *d -= v.0;
                }
            }
            // 3. The warm IPs' own share, in the room left.
            let mut warm_volumes = Vec::new();
            for pair in &p.warm {
                let now = standing_of(pair.ip, pair.start);
                let cap = pair.room(now.capacity_per_hour, hours, p.spike);
                let net = net_key(pair.ip);
                let mut v = pair.at(d).min(cap);
                if let Some(r) = net_room.get(&net) {
                    v = v.min(*r);
                }
                if let Some(r) = domain_room {
                    v = v.min(r);
                }
                if let Some(r) = net_room.get_mut(&net) {
                    *r -= v;
                }
                if let Some(r) = domain_room.as_mut() {
                    *r -= v;
                }
                warm_volumes.push((v, cap, now));
            }
            // 4. What the schedule wanted that nobody took yet, within the spike rule.
            let scheduled: u64 = p.new.iter().chain(&p.warm).map(|x| x.at(d)).sum();
            let assigned: u64 = volumes.iter().map(|v| v.0).sum::<u64>()
                + warm_volumes.iter().map(|v| v.0).sum::<u64>();
            let mut spike_cap = u64::MAX;
            if let (Some(factor), Some(mean)) = (p.spike, super::trailing_mean(&p.sent)) {
                spike_cap = (mean * factor * SPIKE_MARGIN) as u64;
            }
            let short = scheduled.saturating_sub(assigned);
            let mut left = short.min(spike_cap.saturating_sub(assigned));
            let spike_cut = short - left;
            // 5. Overflow: the new IPs that advanced and have room, then the warm IPs.
            let mut extra = vec![0u64; volumes.len()];
            let mut warm_extra = vec![0u64; warm_volumes.len()];
            {
                let mut heads: Vec<(Ipv4Addr, u64, &mut u64)> = Vec::new();
                for ((pair, v), e) in p.new.iter().zip(&volumes).zip(extra.iter_mut()) {
                    if v.2 == Action::Advanced {
                        heads.push((pair.ip, v.1.saturating_sub(v.0), e));
                    }
                }
                fill(&mut heads, &mut left, &mut net_room, &mut domain_room);
                let mut heads: Vec<(Ipv4Addr, u64, &mut u64)> = Vec::new();
                for ((pair, v), e) in p.warm.iter().zip(&warm_volumes).zip(warm_extra.iter_mut()) {
                    heads.push((pair.ip, v.1.saturating_sub(v.0), e));
                }
                fill(&mut heads, &mut left, &mut net_room, &mut domain_room);
            }
            // 6. Record the day.
            let mut total = 0;
            for ((pair, v), e) in p.new.iter_mut().zip(volumes).zip(&extra) {
                let (volume, _, action, reason, now) = v;
                let sent = volume + e;
                let sched = pair.at(d);
                if action != Action::Advanced || *e > 0 || (day > 0 && sent != sched) {
                    let reason = if *e > 0 {
                        let more = format!("took {e} the held pairs at {} could not", p.name);
                        if reason.is_empty() {
                            more
                        } else {
                            format!("{reason}; {more}")
                        }
                    } else {
                        reason
                    };
                    decisions.push(Decision {
                        day,
                        provider: p.name.clone(),
                        ip: pair.ip,
                        action,
                        scheduled: sched,
                        volume: sent,
                        overflow: *e,
                        reason,
                    });
                }
                pair.volume = sent;
                pair.start = Some(now);
                pair.sent.push(sent);
                total += sent;
                out.push((p.name.clone(), pair.ip, sent));
            }
            for ((pair, (volume, cap, now)), e) in
                p.warm.iter_mut().zip(warm_volumes).zip(&warm_extra)
            {
                let sent = volume + e;
                if *e > 0 {
                    decisions.push(Decision {
                        day,
                        provider: p.name.clone(),
                        ip: pair.ip,
                        action: Action::Overflow,
                        scheduled: pair.at(d),
                        volume: sent,
                        overflow: *e,
                        reason: format!(
                            "warm IP: took {e} the new IPs at {} could not (it may send {cap} a day)",
                            p.name
                        ),
                    });
                }
                pair.volume = sent;
                pair.start = Some(now);
                pair.sent.push(sent);
                total += sent;
                out.push((p.name.clone(), pair.ip, sent));
            }
            let carried = left + spike_cut;
            if carried > 0 {
                let mut why = Vec::new();
                if left > 0 {
                    why.push(format!(
                        "no IP at {} had room for {left} (their capacity over the window, less {:.0}%)",
                        p.name,
                        (1.0 - CAPACITY_MARGIN) * 100.0
                    ));
                }
                if spike_cut > 0 {
                    why.push(format!(
                        "{spike_cut} over the spike rule's allowance ({spike_cap}: {:.0}% of {}× the trailing mean)",
                        SPIKE_MARGIN * 100.0,
                        p.spike.unwrap_or(0.0)
                    ));
                }
                self.carried.push(Carried {
                    day,
                    provider: p.name.clone(),
                    messages: carried,
                    reason: why.join("; "),
                });
            }
            p.sent.push(total);
            self.decisions.extend(decisions);
        }
        for (provider, ip, messages) in &out {
            if *messages > 0 {
                self.executed.rows.push(Row {
                    day,
                    provider: provider.clone(),
                    ip: *ip,
                    messages: *messages,
                });
            }
        }
        self.executed.rows.sort();
        out
    }
}

/// The rule for one new IP after a day it sent `pair.volume`: step back when the provider
/// cut its capacity, hold when the day deferred over the bound, delivered under 90% or was
/// not counted clean, else advance. Returns the action, the stage and the reason.
fn judge_pair(
    pair: &Pair,
    before: Standing,
    now: Standing,
    o: Observed,
    cap: u64,
    provider: &str,
    day: u32,
) -> (Action, usize, String) {
    let sent = pair.volume;
    let ip = pair.ip;
    if sent == 0 {
        return if pair.stage_volume(pair.stage) == 0 {
            (Action::Advanced, pair.stage + 1, String::new())
        } else {
            (
                Action::Held,
                pair.stage,
                format!("sent nothing on day {day}: nothing to advance on"),
            )
        };
    }
    if now.capacity_per_hour < before.capacity_per_hour {
        let stage = (0..=pair.stage)
            .rev()
            .find(|k| {
                let v = pair.stage_volume(*k);
                v > 0 && v <= cap
            })
            .unwrap_or(0);
        return (
            Action::SteppedBack,
            stage,
            format!(
                "{provider} cut {ip}'s capacity from {}/h to {}/h after day {day} (score {:.3} → {:.3}, clean days {} → {}): back to what it allows, {cap} a day at most",
                before.capacity_per_hour,
                now.capacity_per_hour,
                before.score,
                now.score,
                before.clean_days,
                now.clean_days
            ),
        );
    }
    let rate = o.deferred as f64 / sent as f64;
    if rate > DEFERRAL_BOUND {
        return (
            Action::Held,
            pair.stage,
            format!(
                "day {day} deferred {:.1}% of {sent} (bound {:.0}%)",
                rate * 100.0,
                DEFERRAL_BOUND * 100.0
            ),
        );
    }
    if (o.delivered as f64) < sent as f64 * STAGE_DELIVERED_MIN {
        return (
            Action::Held,
            pair.stage,
            format!(
                "day {day} delivered {} of {sent}, under {:.0}%",
                o.delivered,
                STAGE_DELIVERED_MIN * 100.0
            ),
        );
    }
    // A day under a quarter of the IP's 24 h capacity is too small for the provider to count
    // either way (its growth then comes from the /24 and DKIM-domain buckets, which the
    // shared capacity check holds to): only a day it judged and did not count clean holds.
    let judged = sent.saturating_mul(4) >= before.capacity_per_hour.saturating_mul(24);
    if judged && now.clean_days <= before.clean_days {
        return (
            Action::Held,
            pair.stage,
            format!(
                "{provider} did not count day {day} clean for {ip} (clean days stayed {})",
                now.clean_days
            ),
        );
    }
    (Action::Advanced, pair.stage + 1, String::new())
}

/// Shares `left` over `heads` (IP, room, taken) evenly, each within its own room, its /24's
/// and the DKIM domain's, until it is all taken or nobody has room.
fn fill(
    heads: &mut [(Ipv4Addr, u64, &mut u64)],
    left: &mut u64,
    net_room: &mut BTreeMap<String, u64>,
    domain_room: &mut Option<u64>,
) {
    // Each round either takes everything or fills at least one head: at most one round per
    // head, plus one.
    for _ in 0..=heads.len() {
        let open = heads.iter().filter(|h| h.1 > 0).count() as u64;
        if *left == 0 || open == 0 {
            return;
        }
        let share = left.div_ceil(open);
        let mut progress = false;
        for (ip, room, taken) in heads.iter_mut() {
            let net = net_key(*ip);
            let mut take = share.min(*room).min(*left);
            if let Some(r) = net_room.get(&net) {
                take = take.min(*r);
            }
            if let Some(r) = *domain_room {
                take = take.min(r);
            }
            if take == 0 {
                *room = 0;
                continue;
            }
            progress = true;
            *room -= take;
            **taken += take;
            *left -= take;
            if let Some(r) = net_room.get_mut(&net) {
                *r -= take;
            }
            if let Some(r) = domain_room.as_mut() {
                *r -= take;
            }
        }
        if !progress {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
    const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
    const W: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

    fn input(warm: &[Ipv4Addr]) -> Input {
        Input {
            target_per_day: 600,
            new_ips: vec![A, B],
            mail_from: "news@sender.example".into(),
            window: (8 * 3600, 20 * 3600),
            providers: vec![("gmail".into(), 1.0)],
            unknown_user_rate: 0.0,
            complaint_rate: 0.0,
            engagement: 0.3,
            start_s: 0,
            warm_ips: warm.to_vec(),
        }
    }

    /// Two new IPs scheduled 100, 200, 300 a day each.
    fn schedule() -> Schedule {
        let mut rows = Vec::new();
        for (day, v) in [100, 200, 300].into_iter().enumerate() {
            for ip in [A, B] {
                rows.push(Row {
                    day: day as u32,
                    provider: "gmail".into(),
                    ip,
                    messages: v,
                });
            }
        }
        Schedule { rows }
    }

    fn standing(capacity_per_hour: u64, clean_days: u32, score: f64) -> Standing {
        Standing {
            score,
            clean_days,
            capacity_per_hour,
        }
    }

    fn views(ips: &[(Ipv4Addr, Standing)]) -> BTreeMap<String, ProviderView> {
        BTreeMap::from([(
            "gmail".to_string(),
            ProviderView {
                ips: ips.iter().copied().collect(),
                ..ProviderView::default()
            },
        )])
    }

    fn delivered(n: u64, deferred: u64) -> Observed {
        Observed {
            delivered: n,
            deferred,
            bounced: 0,
        }
    }

    fn volume(out: &[(String, Ipv4Addr, u64)], ip: Ipv4Addr) -> u64 {
        out.iter().find(|(_, i, _)| *i == ip).map_or(0, |x| x.2)
    }

    /// An IP whose capacity the provider cut steps back to the stage it allows; what it
    /// does not take goes to the IP that advanced (within its capacity), then the warm IP.
    #[test]
    fn a_cut_steps_back_and_the_rest_overflows_to_advanced_then_warm_ips() {
        let mut l = Loop::new(&input(&[W]), &schedule(), &[]);
        let cold = standing(20, 0, 0.5);
        let warm = standing(10_000, 21, 0.8);
        let day0 = l.day(
            0,
            &BTreeMap::new(),
            &views(&[(A, cold), (B, cold), (W, warm)]),
        );
        assert_eq!(
            (volume(&day0, A), volume(&day0, B), volume(&day0, W)),
            (100, 100, 0)
        );
        assert!(l.decisions.is_empty(), "day 1 is the schedule's");
        let observed = BTreeMap::from([
            (("gmail".to_string(), A), delivered(100, 0)),
            (("gmail".to_string(), B), delivered(100, 0)),
        ]);
        // A's day was clean (28/h now); B drew complaints: 14/h, 142 a day at most.
        let day1 = l.day(
            1,
            &observed,
            &views(&[
                (A, standing(28, 1, 0.5)),
                (B, standing(14, 0, 0.425)),
                (W, warm),
            ]),
        );
        // A advances to 200 and takes 85 more (28/h × 12 h × 85% = 285); W takes the last 15.
        assert_eq!(
            (volume(&day1, A), volume(&day1, B), volume(&day1, W)),
            (285, 100, 15)
        );
        let of = |ip| {
            l.decisions
                .iter()
                .find(|d| d.ip == ip && d.day == 1)
                .unwrap()
        };
        assert_eq!(
            (of(B).action, of(B).scheduled, of(B).volume),
            (Action::SteppedBack, 200, 100)
        );
        assert!(
            of(B)
                .reason
                .contains("cut 192.0.2.12's capacity from 20/h to 14/h"),
            "{}",
            of(B).reason
        );
        assert_eq!((of(A).action, of(A).overflow), (Action::Advanced, 85));
        assert_eq!((of(W).action, of(W).overflow), (Action::Overflow, 15));
        assert!(l.carried.is_empty());
        assert_eq!(
            l.executed
                .rows
                .iter()
                .filter(|r| r.day == 1)
                .map(|r| r.messages)
                .sum::<u64>(),
            400
        );
    }

    /// Past the schedule's last day, that day repeats: a loop run on after the schedule's end
    /// keeps sending its last stage (a held stage catches up there), not nothing.
    #[test]
    fn past_the_schedules_end_its_last_day_repeats() {
        // The warm IP sends its own 40, 50, 60 beside the new IPs' stages.
        let mut with_warm = schedule();
        for (day, v) in [40, 50, 60].into_iter().enumerate() {
            with_warm.rows.push(Row {
                day: day as u32,
                provider: "gmail".into(),
                ip: W,
                messages: v,
            });
        }
        let mut l = Loop::new(&input(&[W]), &with_warm, &[]);
        let mut observed = BTreeMap::new();
        let mut sent = Vec::new();
        for day in 0..5u32 {
            let roomy = standing(10_000, day, 0.8);
            let out = l.day(
                day,
                &observed,
                &views(&[(A, roomy), (B, roomy), (W, roomy)]),
            );
            sent.push((volume(&out, A), volume(&out, B), volume(&out, W)));
            observed = out
                .iter()
                .map(|(p, ip, v)| ((p.clone(), *ip), delivered(*v, 0)))
                .collect();
        }
        assert_eq!(
            sent,
            [
                (100, 100, 40),
                (200, 200, 50),
                (300, 300, 60),
                (300, 300, 60),
                (300, 300, 60)
            ]
        );
    }

    /// A day deferred over the bound, or judged and not counted clean, holds the stage; what
    /// nobody has room for is carried and reported.
    #[test]
    fn a_throttled_or_unclean_day_holds_and_what_has_no_room_is_carried() {
        let mut l = Loop::new(&input(&[]), &schedule(), &[]);
        let cold = standing(20, 0, 0.5);
        l.day(0, &BTreeMap::new(), &views(&[(A, cold), (B, cold)]));
        let observed = BTreeMap::from([
            (("gmail".to_string(), A), delivered(90, 10)),
            (("gmail".to_string(), B), delivered(100, 0)),
        ]);
        // A deferred 10%. B's day is judged only if it used a quarter of its 24 h capacity:
        // at 16/h, 100 × 4 ≥ 16 × 24; its clean days did not grow.
        l.providers[0].new[1].start = Some(standing(16, 0, 0.5));
        let day1 = l.day(
            1,
            &observed,
            &views(&[(A, cold), (B, standing(16, 0, 0.5))]),
        );
        let of = |ip| {
            l.decisions
                .iter()
                .find(|d| d.ip == ip && d.day == 1)
                .unwrap()
        };
        assert_eq!(of(A).action, Action::Held);
        assert!(
            of(A).reason.contains("deferred 10.0% of 100"),
            "{}",
            of(A).reason
        );
        assert_eq!(of(B).action, Action::Held);
        assert!(
            of(B).reason.contains("did not count day 1 clean"),
            "{}",
            of(B).reason
        );
        assert_eq!((volume(&day1, A), volume(&day1, B)), (100, 100));
        // Nobody advanced and there is no warm IP: the 200 the schedule wanted more is carried.
        assert_eq!(l.carried.len(), 1);
        assert_eq!(l.carried[0].messages, 200);
        assert!(
            l.carried[0]
                .reason
                .contains("no IP at gmail had room for 200")
        );
    }
}
