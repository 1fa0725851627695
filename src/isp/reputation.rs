//! Sender reputation as a provider keeps it: one standing per identity (a source IP, a
//! sending domain), folded once a day from what that identity sent (reference §4.5).
//!
//! Owns the daily update (`r ← r + α·(q − r)`, the quality target `q` from complaint rate,
//! unknown-user rate and engagement), clean sending days, the 0.3% complaint floor with its
//! seven-day mitigation wait, and what the standing decides: hourly capacity and blocks.
//! Pure and lazy: nothing runs at midnight; a standing catches up on the days it missed the
//! next time it is asked, so idle identities cost nothing. It must not draw random numbers
//! (the provider does) or know anything about SMTP.

use std::collections::BTreeMap;

use crate::scenario::{History, Reputation};
use crate::time::Time;

/// Days remembered per identity before they are folded; one is normal, more only when an
/// identity was idle (a folded day is gone).
const DAYS_PENDING_MAX: usize = 64;
/// Idle days after which clean sending days are forgotten (re-warm after 30 idle days,
/// reference §4.5, from SendGrid).
pub const IDLE_DAYS_FORGET: u32 = 30;

/// One day of an identity's mail as the provider saw it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Day {
    /// Messages accepted (or attempted and throttled: they count toward volume).
    sent: u64,
    complaints: u64,
    unknown_users: u64,
    /// Sum over accepted messages of the audience's engagement (0..1 each).
    engaged: f64,
    throttled: bool,
}

/// What a provider thinks of one identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Standing {
    /// `r` in [0, 1]; the model's `start` is neutral.
    pub score: f64,
    pub clean_days: u32,
    /// Days left before the score may rise again after a complaint rate at or over the
    /// bad threshold (Gmail: 7 consecutive days under 0.3%).
    pub mitigation_wait_days: u32,
    idle_days: u32,
    /// The first day not yet folded (days since the epoch).
    day: u64,
    pending: BTreeMap<u64, Day>,
}

impl Standing {
    fn new(model: &Reputation, history: &History, today: u64) -> Standing {
        Standing {
            score: history.score.unwrap_or(model.start),
            clean_days: history.clean_days,
            mitigation_wait_days: history.mitigation_wait_days,
            idle_days: 0,
            day: today,
            pending: BTreeMap::new(),
        }
    }

    /// Folds every finished day before `today`. `allowed_per_day` is the volume the identity
    /// was allowed on a day given its clean days then (a day is clean only when at least a
    /// quarter of it was used).
    fn catch_up(
        &mut self,
        model: &Reputation,
        today: u64,
        allowed_per_day: impl Fn(u32, f64) -> u64,
    ) {
        while self.day < today {
            let day = self.pending.remove(&self.day).unwrap_or_default();
            let allowed = allowed_per_day(self.clean_days, self.score);
            self.fold(model, &day, allowed);
            self.day += 1;
            if self.pending.is_empty() && self.day < today {
                // The rest are silent days: fold them without building empty records, but
                // not more than it takes to reach the fixed point.
                let silent = (today - self.day).min(u64::from(IDLE_DAYS_FORGET) * 4);
                for _ in 0..silent {
                    self.fold(model, &Day::default(), allowed);
                }
                self.day = today;
            }
        }
    }

    fn fold(&mut self, model: &Reputation, day: &Day, allowed: u64) {
        if day.sent == 0 {
            // Silence: nothing to judge. The mitigation wait runs down, and a damaged score
            // drifts back toward neutral (nobody is complaining), slowly.
            self.idle_days += 1;
            self.mitigation_wait_days = self.mitigation_wait_days.saturating_sub(1);
            if self.idle_days >= IDLE_DAYS_FORGET {
                self.clean_days = 0;
            }
            if self.mitigation_wait_days == 0 && self.score < model.start {
                self.score += model.daily_step * (model.start - self.score);
            }
            return;
        }
        self.idle_days = 0;
        let sent = day.sent as f64;
        let complaint_rate = day.complaints as f64 / sent;
        let unknown_rate = day.unknown_users as f64 / (sent + day.unknown_users as f64);
        let engagement = (day.engaged / sent).clamp(0.0, 1.0);
        let target = if complaint_rate >= model.complaint_bad {
            self.mitigation_wait_days = model.mitigation_days;
            self.clean_days = 0;
            0.0
        } else {
            self.mitigation_wait_days = self.mitigation_wait_days.saturating_sub(1);
            let over = (complaint_rate - model.complaint_good).max(0.0)
                / (model.complaint_bad - model.complaint_good);
            (1.0 - model.weight_complaints * over
                - model.weight_unknown * unknown_rate / model.unknown_bad
                - model.weight_engagement * (1.0 - engagement))
                .clamp(0.0, 1.0)
        };
        let step = model.daily_step * (target - self.score);
        if step < 0.0 || self.mitigation_wait_days == 0 {
            self.score = (self.score + step).clamp(0.0, 1.0);
        }
        if !day.throttled && complaint_rate < model.complaint_good && day.sent * 4 >= allowed {
            self.clean_days += 1;
        }
    }

    fn today(&mut self, today: u64) -> &mut Day {
        if self.pending.len() >= DAYS_PENDING_MAX {
            // Never reached in practice (days are folded whenever the identity is asked
            // about); dropping the oldest keeps memory bounded.
            self.pending.pop_first();
        }
        self.pending.entry(today).or_default()
    }
}

/// Something an identity did that counts toward its reputation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Signal {
    /// A message accepted; its audience's engagement (0..1).
    Accepted { engagement: f64 },
    /// An attempt answered with a throttle.
    Throttled,
    /// A recipient that does not exist.
    UnknownUser,
    /// A feedback-loop complaint.
    Complaint,
}

/// How an identity's hourly capacity grows: `base_per_hour` for a cold, neutral identity,
/// times `growth` per clean sending day, up to `max_per_hour`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Curve {
    pub base_per_hour: u64,
    pub growth: f64,
    pub max_per_hour: u64,
}

/// Every identity's standing with one provider.
#[derive(Clone, Debug, PartialEq)]
pub struct Ledger {
    model: Reputation,
    history: History,
    /// Identities with a history of their own (a cold IP joining a warm pool), by key.
    identities: BTreeMap<String, History>,
    /// Capacity curves by identity prefix (`ip:`, `domain:`).
    curves: Vec<(&'static str, Curve)>,
    standings: BTreeMap<String, Standing>,
}

/// Most identities remembered per provider (source IPs and domains of one run).
pub const IDENTITIES_MAX: usize = 100_000;

impl Ledger {
    pub fn new(model: Reputation, history: History) -> Ledger {
        Ledger {
            model,
            history,
            identities: BTreeMap::new(),
            curves: Vec::new(),
            standings: BTreeMap::new(),
        }
    }

    /// `identity` (`ip:…`, `net:…/24`, `domain:…`) starts from `history` instead of the
    /// provider's.
    pub fn set_history(&mut self, identity: &str, history: History) {
        self.identities.insert(identity.to_string(), history);
    }

    /// Identities starting with `prefix` grow along `curve`.
    pub fn set_curve(&mut self, prefix: &'static str, curve: Curve) {
        self.curves.retain(|(p, _)| *p != prefix);
        self.curves.push((prefix, curve));
    }

    /// The standing of `identity` (`ip:…`, `net:…` or `domain:…`) at `now`, caught up to today.
    pub fn standing(&mut self, identity: &str, now: Time) -> &Standing {
        let today = now.unix_secs() / 86_400;
        let curve = self.curve(identity);
        let Ledger {
            model,
            history,
            identities,
            standings,
            ..
        } = self;
        let history = identities.get(identity).unwrap_or(history);
        let standing = entry(standings, model, history, identity, today);
        standing.catch_up(model, today, |days, score| {
            capacity(model, curve, days, score).saturating_mul(24)
        });
        standing
    }

    /// The hourly capacity of `identity` at `now`.
    pub fn capacity(&mut self, identity: &str, now: Time) -> u64 {
        let curve = self.curve(identity);
        let standing = self.standing(identity, now);
        let (clean_days, score) = (standing.clean_days, standing.score);
        capacity(&self.model, curve, clean_days, score)
    }

    /// Whether `identity` is blocked: its score is under the model's floor.
    pub fn blocked(&mut self, identity: &str, now: Time) -> bool {
        let floor = self.model.block_below;
        self.standing(identity, now).score < floor
    }

    pub fn record(&mut self, identity: &str, now: Time, signal: Signal) {
        self.record_many(identity, now, signal, 1);
    }

    /// `signal` `count` times over (a day's mail at once, as the warmup planner feeds it).
    pub fn record_many(&mut self, identity: &str, now: Time, signal: Signal, count: u64) {
        if count == 0 {
            return;
        }
        let today = now.unix_secs() / 86_400;
        let history = self.identities.get(identity).unwrap_or(&self.history);
        let day = entry(&mut self.standings, &self.model, history, identity, today).today(today);
        match signal {
            Signal::Accepted { engagement } => {
                day.sent += count;
                day.engaged += engagement * count as f64;
            }
            Signal::Throttled => day.throttled = true,
            Signal::UnknownUser => day.unknown_users += count,
            Signal::Complaint => day.complaints += count,
        }
    }

    fn curve(&self, identity: &str) -> Curve {
        self.curves
            .iter()
            .find(|(prefix, _)| identity.starts_with(prefix))
            .map_or(
                Curve {
                    base_per_hour: u64::MAX / 64,
                    growth: 1.0,
                    max_per_hour: u64::MAX / 64,
                },
                |(_, c)| *c,
            )
    }
}

/// The standing of `identity`, created from the history when the provider first sees it.
/// Looked up before inserting, so the hot path allocates nothing.
fn entry<'a>(
    standings: &'a mut BTreeMap<String, Standing>,
    model: &Reputation,
    history: &History,
    identity: &str,
    today: u64,
) -> &'a mut Standing {
    if !standings.contains_key(identity) {
        if standings.len() >= IDENTITIES_MAX {
            // Forget the identity idle longest: it would have returned to neutral anyway.
            if let Some(oldest) = standings
                .iter()
                .min_by_key(|(_, s)| s.day)
                .map(|(k, _)| k.clone())
            {
                standings.remove(&oldest);
            }
        }
        standings.insert(identity.to_string(), Standing::new(model, history, today));
    }
    standings.get_mut(identity).expect("just ensured")
}

/// `C_hour = C_cold · G^clean_days · (r / r_neutral)²`, capped (reference §4.5, with the
/// reputation factor normalized so a neutral score leaves the cold capacity as measured).
fn capacity(model: &Reputation, curve: Curve, clean_days: u32, score: f64) -> u64 {
    let max = curve.max_per_hour as f64;
    let mut c = curve.base_per_hour as f64;
    for _ in 0..clean_days {
        if c >= max {
            break;
        }
        c = (c * curve.growth).min(max);
    }
    let factor = (score / model.start).powi(2);
    (c * factor).min(max) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Reputation {
        Reputation::default()
    }

    fn ledger(history: History) -> Ledger {
        let mut ledger = Ledger::new(model(), history);
        let curve = Curve {
            base_per_hour: 20,
            growth: 1.4,
            max_per_hour: 100_000,
        };
        ledger.set_curve("ip:", curve);
        ledger
    }

    fn day(n: u64) -> Time {
        Time::from_secs(n * 86_400 + 3600)
    }

    #[test]
    fn clean_days_grow_capacity_and_complaints_shrink_it() {
        let mut ledger = ledger(History::default());
        assert_eq!(ledger.capacity("ip:a", day(0)), 20);
        for d in 0..5 {
            for _ in 0..1000 {
                ledger.record("ip:a", day(d), Signal::Accepted { engagement: 0.5 });
            }
        }
        let warm = ledger.capacity("ip:a", day(5));
        assert!(warm > 20 * 5, "five clean days grow 20/h to {warm}");
        for _ in 0..200 {
            ledger.record("ip:a", day(5), Signal::Accepted { engagement: 0.5 });
        }
        for _ in 0..2 {
            ledger.record("ip:a", day(5), Signal::Complaint);
        }
        let after = ledger.capacity("ip:a", day(6));
        assert!(
            after < warm / 4,
            "1% complaints: {warm}/h before, {after}/h after"
        );
        let standing = ledger.standing("ip:a", day(6));
        assert_eq!((standing.clean_days, standing.mitigation_wait_days), (0, 7));
    }

    #[test]
    fn a_damaged_identity_is_blocked_and_silence_slowly_lifts_it() {
        let history = History {
            score: Some(0.12),
            clean_days: 0,
            mitigation_wait_days: 0,
        };
        let mut ledger = ledger(history);
        assert!(!ledger.blocked("ip:a", day(0)));
        for d in 0..2 {
            for _ in 0..100 {
                ledger.record("ip:a", day(d), Signal::Accepted { engagement: 0.0 });
            }
            for _ in 0..5 {
                ledger.record("ip:a", day(d), Signal::Complaint);
            }
        }
        assert!(
            !ledger.blocked("ip:a", day(1)),
            "one bad day: 0.12 to 0.102"
        );
        assert!(
            ledger.blocked("ip:a", day(2)),
            "two: 0.087, under the floor"
        );
        let lifted = (2..30).find(|d| !ledger.blocked("ip:a", day(*d))).unwrap();
        assert_eq!(
            lifted, 9,
            "seven days of mitigation wait, then drift back to neutral"
        );
    }

    #[test]
    fn an_identity_with_its_own_history_starts_from_it() {
        let mut ledger = ledger(History::named("warm").unwrap());
        ledger.set_history("ip:new", History::default());
        let warm = ledger.capacity("ip:old", day(0));
        let cold = ledger.capacity("ip:new", day(0));
        assert_eq!(cold, 20, "the new IP is cold");
        assert!(warm > 20 * 100, "the pool's old IP is warm: {warm}/h");
        // The new IP warms from its own start: a clean day grows it by the curve.
        for _ in 0..200 {
            ledger.record("ip:new", day(0), Signal::Accepted { engagement: 0.5 });
        }
        let grown = ledger.capacity("ip:new", day(1));
        assert!(
            (28..100).contains(&grown),
            "a clean day: ×1.4 and a better score, {grown}/h"
        );
    }

    #[test]
    fn unknown_users_and_no_engagement_lower_the_score() {
        let mut ledger = ledger(History::default());
        for _ in 0..100 {
            ledger.record("ip:clean", day(0), Signal::Accepted { engagement: 0.6 });
            ledger.record("ip:dirty", day(0), Signal::Accepted { engagement: 0.0 });
        }
        for _ in 0..5 {
            ledger.record("ip:dirty", day(0), Signal::UnknownUser);
        }
        let clean = ledger.standing("ip:clean", day(1)).score;
        let dirty = ledger.standing("ip:dirty", day(1)).score;
        assert!(clean > 0.5 && dirty < 0.5, "clean {clean}, dirty {dirty}");
    }
}
