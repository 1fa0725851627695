//! The judgement of a replayed warmup: per day and provider, planned, delivered, deferred and
//! bounced, the risk days with their reason, as a terminal table and as `summary.json`.
//!
//! Pure: the caller runs the replay and hands in its outcomes. It must not plan (the planner
//! is `super`), read files or a clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{DEFERRAL_BOUND, Input, Schedule, trailing_mean};
use crate::scenario::IspSpec;

/// One day at one provider after a replay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DayResult {
    pub day: u32,
    pub provider: String,
    pub planned: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    /// The most frequent deferral reply.
    pub top_deferral: String,
    pub risks: Vec<String>,
}

impl DayResult {
    /// Share of the day's recipients deferred at least once.
    pub fn deferral_rate(&self) -> f64 {
        let tried = self.delivered + self.bounced;
        if tried == 0 {
            0.0
        } else {
            (self.deferred as f64 / tried.max(self.deferred) as f64).min(1.0)
        }
    }
}

/// What a replay saw, per day (from the run's start) and provider: `(day, provider,
/// kind, diag)` with kind `d`, `t` or `b`.
pub fn judge(
    input: &Input,
    schedule: &Schedule,
    models: &[IspSpec],
    outcomes: &[(u32, String, char, String)],
) -> Vec<DayResult> {
    let planned = schedule.per_provider();
    let mut out: BTreeMap<(u32, String), (DayResult, BTreeMap<String, u64>)> = BTreeMap::new();
    for ((day, provider), n) in &planned {
        let e = out.entry((*day, provider.clone())).or_default();
        e.0.day = *day;
        e.0.provider = provider.clone();
        e.0.planned = *n;
    }
    for (day, provider, kind, diag) in outcomes {
        let Some((r, replies)) = out.get_mut(&(*day, provider.clone())) else {
            continue;
        };
        match kind {
            'd' => r.delivered += 1,
            't' => {
                r.deferred += 1;
                *replies.entry(diag.clone()).or_insert(0) += 1;
            }
            _ => r.bounced += 1,
        }
    }
    let mut results = Vec::new();
    let mut trailing: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for ((_, provider), (mut r, replies)) in out {
        r.top_deferral = replies
            .iter()
            .max_by_key(|(reply, n)| (**n, std::cmp::Reverse((*reply).clone())))
            .map(|(reply, _)| reply.clone())
            .unwrap_or_default();
        let spec = models.iter().find(|m| m.name == provider);
        let prior = trailing.entry(provider.clone()).or_default();
        if let Some(factor) = spec
            .and_then(|s| s.throttle.as_ref())
            .and_then(|t| t.spike_percent)
            .map(|p| p as f64 / 100.0)
            && let Some(mean) = trailing_mean(prior)
            && r.planned as f64 >= factor * mean
        {
            r.risks.push(format!(
                "step above the spike rule: {} planned, {:.1}× the trailing mean of {:.0} (limit {factor}×)",
                r.planned,
                r.planned as f64 / mean,
                mean
            ));
        }
        prior.push(r.planned);
        if r.deferral_rate() > DEFERRAL_BOUND {
            r.risks.push(format!(
                "throttled: {:.1}% deferred (bound {:.0}%), mostly `{}`",
                r.deferral_rate() * 100.0,
                DEFERRAL_BOUND * 100.0,
                crate::printable::escape(&r.top_deferral)
            ));
        }
        if r.planned > 0 && r.delivered < r.planned / 2 && r.deferral_rate() <= DEFERRAL_BOUND {
            r.risks.push(format!(
                "only {} of {} planned delivered",
                r.delivered, r.planned
            ));
        }
        results.push(r);
    }
    if input.complaint_rate >= 0.003 {
        for r in &mut results {
            r.risks.push(format!(
                "complaints projected at {:.2}%: at or over 0.3%, reputation falls and stays down 7 days",
                input.complaint_rate * 100.0
            ));
        }
    } else if input.complaint_rate >= 0.001 {
        for r in &mut results {
            r.risks.push(format!(
                "complaints projected at {:.2}%: over 0.1%, clean days stop counting",
                input.complaint_rate * 100.0
            ));
        }
    }
    if input.unknown_user_rate > 0.02 {
        for r in &mut results {
            r.risks.push(format!(
                "unknown users at {:.1}%: over 2%",
                input.unknown_user_rate * 100.0
            ));
        }
    }
    results.sort_by(|a, b| (a.day, &a.provider).cmp(&(b.day, &b.provider)));
    results
}

/// The terminal table of a judged replay: one line per day and provider.
pub fn table(results: &[DayResult]) -> String {
    let mut out = format!(
        "{:>4}  {:<10} {:>10} {:>10} {:>9} {:>7}  risk\n",
        "day", "provider", "planned", "delivered", "deferred", "defer%"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:>4}  {:<10} {:>10} {:>10} {:>9} {:>6.1}%  {}",
            r.day + 1,
            r.provider,
            r.planned,
            r.delivered,
            r.deferred,
            r.deferral_rate() * 100.0,
            r.risks.join("; ")
        );
    }
    out
}

/// `summary.json` of a judged replay.
pub fn summary_json(results: &[DayResult]) -> serde_json::Value {
    serde_json::json!({
        "deferral_bound": DEFERRAL_BOUND,
        "days": results.iter().map(|r| serde_json::json!({
            "day": r.day + 1,
            "provider": r.provider,
            "planned": r.planned,
            "delivered": r.delivered,
            "deferred": r.deferred,
            "bounced": r.bounced,
            "deferral_rate": r.deferral_rate(),
            "risks": r.risks,
        })).collect::<Vec<_>>(),
    })
}
