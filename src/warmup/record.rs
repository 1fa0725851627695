//! What a warmup check leaves behind besides its tables: the judged replay as it is kept in
//! `run.json` (so `pmta-sim report DIR` rebuilds the warmup section, `summary.json` and
//! `warmup.txt` from the file alone), and the replay scenario with `[[expect]]` tables that
//! pin the replay's facts per day and provider (the shipped examples in
//! `examples/warmup/published/` are written by it).
//!
//! Pure: the caller reads and writes the files and runs the replay. It must not judge (that
//! is `check`) or plan; a `Replayed` read back from a file is validated before anything is
//! rendered from it.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

#[cfg(test)]
use super::DayResult;
use super::{DAYS_MAX, DEFERRAL_BOUND, Judgement, ROWS_MAX, RiskKind, Schedule};

/// Most day × provider results, and standings, a `Replayed` read back may hold.
pub const RESULTS_MAX: usize = DAYS_MAX * crate::scenario::ISPS_MAX;
pub const STANDINGS_MAX: usize = DAYS_MAX * crate::scenario::ISPS_MAX * super::IPS_MAX;

/// A judged replay and the schedule it judged: the `warmup` object of a check's `run.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Replayed {
    pub judgement: Judgement,
    pub schedule: Schedule,
}

impl Replayed {
    /// Whether a `Replayed` read back from a file is one a check writes: days in range, the
    /// results in (day, provider) order (the charts count days from the first), lists within
    /// their limits. The reason when not.
    pub fn validate(&self) -> Result<(), String> {
        let j = &self.judgement;
        if j.days.len() > RESULTS_MAX || j.standings.len() > STANDINGS_MAX {
            return Err(format!(
                "warmup: {} day results and {} standings, over the limits of {RESULTS_MAX} and {STANDINGS_MAX}",
                j.days.len(),
                j.standings.len()
            ));
        }
        // A closed loop decides at most once per IP, provider and day.
        if j.decisions.len() > STANDINGS_MAX || j.carried.len() > RESULTS_MAX {
            return Err(format!(
                "warmup: {} closed-loop decisions and {} carried days, over the limits of {STANDINGS_MAX} and {RESULTS_MAX}",
                j.decisions.len(),
                j.carried.len()
            ));
        }
        if self.schedule.rows.len() > ROWS_MAX {
            return Err(format!(
                "warmup: {} schedule rows, over the limit of {ROWS_MAX}",
                self.schedule.rows.len()
            ));
        }
        let day_max = DAYS_MAX as u32;
        let days = j.days.iter().map(|d| d.day);
        let other = j.standings.iter().map(|s| s.day);
        let rows = self.schedule.rows.iter().map(|r| r.day);
        let warm = j
            .warm
            .iter()
            .flat_map(|w| w.reached.into_iter().chain(w.projected));
        if let Some(day) = days.chain(other).chain(rows).find(|d| *d >= day_max) {
            return Err(format!("warmup: day {} is past day {day_max}", day + 1));
        }
        if let Some(day) = warm.max().filter(|d| *d >= u32::MAX / 2) {
            return Err(format!("warmup: warm day {day} is not a day"));
        }
        if let Some(pair) = j
            .days
            .windows(2)
            .find(|p| (p[0].day, &p[0].provider) >= (p[1].day, &p[1].provider))
        {
            return Err(format!(
                "warmup: day {} at {} comes after day {} at {} (one result per day and provider, in order)",
                pair[1].day + 1,
                crate::printable::escape(&pair[1].provider),
                pair[0].day + 1,
                crate::printable::escape(&pair[0].provider)
            ));
        }
        Ok(())
    }
}

/// The replay scenario `replay` (from [`super::replay_scenario`]) of a checked schedule, with
/// `header` (comment lines saying how it was made) first and, after it, an `[[expect]]`
/// table per replayed day and provider pinning what the check found (see [`expectations`]).
pub fn scenario_with_expectations(header: &str, replay: &str, j: &Judgement) -> String {
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    out.push_str(replay);
    out.push_str(&expectations(j));
    out
}

/// `[[expect]]` tables for each judged day and provider, each over that day (midnight to
/// midnight after the run's start, which is day 1's midnight) and with a comment of the
/// judged figures and risks:
///
/// - a day over the deferral bound: `deferred_ratio` (deferral records over all the day's
///   records at that provider) at least `r / (1 + r)` for the judged share `r` of recipients
///   deferred (each deferred recipient leaves at least one deferral and at most one final
///   record), rounded down to a hundredth, and its most frequent deferral reply, by code and
///   enhanced code, on at least half as many records as recipients were deferred (each was
///   deferred at least once, most of them with that reply);
/// - any other day with mail: `deferred_ratio` at most the bound, and `delivered` at least
///   90% of the recipients the check saw delivered.
pub fn expectations(j: &Judgement) -> String {
    let mut out = String::new();
    for r in &j.days {
        if r.planned == 0 {
            continue;
        }
        let window = format!("[\"{}h\", \"{}h\"]", r.day * 24, (r.day + 1) * 24);
        let provider = &r.provider;
        let _ = writeln!(
            out,
            "\n# day {}, {provider}: {} planned, {} delivered, {} deferred ({:.1}%), {} bounced",
            r.day + 1,
            r.planned,
            r.delivered,
            r.deferred,
            r.deferral_rate() * 100.0,
            r.bounced
        );
        for k in &r.risks {
            let _ = writeln!(out, "#   {}", one_line(&k.reason));
            if let Some(reply) = &k.reply {
                let _ = writeln!(out, "#   reply: {}", one_line(reply));
            }
        }
        let head = |metric: &str| {
            format!(
                "[[expect]]\nmetric = \"{metric}\"\nprovider = \"{provider}\"\nwindow = {window}\n"
            )
        };
        if r.risks.iter().any(|k| k.kind == RiskKind::Throttled) {
            let rate = r.deferral_rate();
            let _ = writeln!(
                out,
                "{}min = {}",
                head("deferred_ratio"),
                (rate / (1.0 + rate) * 100.0).floor() / 100.0
            );
            if let Some(pattern) = reply_pattern(&r.top_deferral) {
                let _ = writeln!(
                    out,
                    "{}pattern = '{pattern}'\nmin = {}",
                    head("replies_matching"),
                    (r.deferred / 2).max(1)
                );
            }
        } else {
            let _ = writeln!(out, "{}max = {DEFERRAL_BOUND}", head("deferred_ratio"));
            let _ = writeln!(out, "{}min = {}", head("delivered"), r.delivered * 9 / 10);
        }
    }
    out
}

/// A regex for a reply's code and enhanced code (`421 4\.7\.28`), from `smtp;421 4.7.28 …`;
/// `None` when the reply has no code (a local failure) or a character a literal TOML string
/// cannot hold.
fn reply_pattern(diag: &str) -> Option<String> {
    let reply = diag.strip_prefix("smtp;").unwrap_or(diag);
    let mut words = reply.split_whitespace();
    let code = words.next().filter(|c| {
        c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()) && matches!(&c[..1], "4" | "5")
    })?;
    let enhanced = words
        .next()
        .filter(|e| e.split('.').count() == 3 && e.split('.').all(|p| p.parse::<u16>().is_ok()));
    Some(match enhanced {
        Some(e) => format!("{code} {}", e.replace('.', "\\.")),
        None => code.to_string(),
    })
}

/// `text` on one comment line: control characters (a newline included) escaped.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    crate::printable::escape(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_becomes_a_pattern_of_its_codes() {
        assert_eq!(
            reply_pattern("smtp;421 4.7.28 [192.0.2.11] Our system has detected").as_deref(),
            Some("421 4\\.7\\.28")
        );
        assert_eq!(
            reply_pattern("smtp;421 RL000001 Throttled").as_deref(),
            Some("421")
        );
        assert_eq!(reply_pattern("connection refused"), None);
        assert_eq!(reply_pattern(""), None);
    }

    #[test]
    fn results_out_of_order_are_refused() {
        let day = |day: u32, provider: &str| DayResult {
            day,
            provider: provider.into(),
            planned: 1,
            ..DayResult::default()
        };
        let mut replayed = Replayed::default();
        replayed.judgement.days = vec![day(0, "gmail"), day(0, "yahoo"), day(1, "gmail")];
        assert_eq!(replayed.validate(), Ok(()));
        replayed.judgement.days = vec![day(1, "gmail"), day(0, "gmail")];
        assert!(replayed.validate().unwrap_err().contains("comes after"));
        replayed.judgement.days = vec![day(DAYS_MAX as u32, "gmail")];
        assert!(replayed.validate().unwrap_err().contains("past day"));
    }
}
