//! Evaluates a scenario's `[[expect]]` against a finished run: each expectation's measured
//! value and whether it holds.
//!
//! Owns the meaning of every metric (documented in the README) over the accounting rows and
//! `RunData`. Pure, like the rest of the report room.

use std::collections::BTreeMap;

use super::{Percentiles, Row, RunData, backoff_spans, max_concurrent, provider_of};
use crate::scenario::{Expectation, Filter, Metric};

/// One expectation's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub line: usize,
    pub text: String,
    pub measured: f64,
    pub passed: bool,
    /// Why the value could not be measured (then the expectation fails).
    pub error: Option<String>,
}

/// Whether a queue (`domain/vmta`) is within the filter's provider, domain, queue and vmta.
fn queue_matches(data: &RunData, f: &Filter, queue: &str) -> bool {
    let (domain, vmta) = queue.split_once('/').unwrap_or((queue, ""));
    f.queue.as_ref().is_none_or(|q| q == queue)
        && f.domain.as_ref().is_none_or(|d| d == domain)
        && f.vmta.as_ref().is_none_or(|v| v == vmta)
        && f.provider
            .as_ref()
            .is_none_or(|p| *p == provider_of(data, domain))
}

fn in_window(data: &RunData, f: &Filter, at_s: u64) -> bool {
    let since = at_s.saturating_sub(data.start_s);
    f.window
        .is_none_or(|(from, to)| from <= since && since < to)
}

fn row_matches(data: &RunData, f: &Filter, row: &Row) -> bool {
    let domain = if row.rcpt_domain.is_empty() {
        row.queue.split('/').next().unwrap_or("")
    } else {
        row.rcpt_domain.as_str()
    };
    let (_, vmta) = row.queue.split_once('/').unwrap_or(("", ""));
    f.queue.as_ref().is_none_or(|q| *q == row.queue)
        && f.domain.as_ref().is_none_or(|d| d == domain)
        && f.vmta.as_ref().is_none_or(|v| v == vmta)
        && f.provider
            .as_ref()
            .is_none_or(|p| *p == provider_of(data, domain))
        && f.source_ip.as_ref().is_none_or(|ip| *ip == row.source_ip)
        && f.category.as_ref().is_none_or(|c| *c == row.category)
        && in_window(data, f, row.logged_s)
}

/// Measures every expectation.
pub fn evaluate(expectations: &[Expectation], data: &RunData, rows: &[Row]) -> Vec<Outcome> {
    expectations
        .iter()
        .map(|e| match measure(&e.metric, &e.filter, data, rows) {
            Ok(measured) => Outcome {
                line: e.line,
                text: e.text.clone(),
                measured,
                passed: e.holds(measured),
                error: None,
            },
            Err(error) => Outcome {
                line: e.line,
                text: e.text.clone(),
                measured: f64::NAN,
                passed: false,
                error: Some(error),
            },
        })
        .collect()
}

/// The metric's value; `Err` when it cannot be known (a pattern the regex engine could not
/// evaluate on some record).
fn measure(metric: &Metric, f: &Filter, data: &RunData, rows: &[Row]) -> Result<f64, String> {
    let end = data.start_s + data.duration_s;
    let matching: Vec<&Row> = rows.iter().filter(|r| row_matches(data, f, r)).collect();
    let count = |kinds: &[&str]| {
        matching
            .iter()
            .filter(|r| kinds.contains(&r.kind.as_str()))
            .count() as f64
    };
    let injected = || -> f64 {
        data.queued
            .iter()
            .filter(|q| queue_matches(data, f, &q.queue) && in_window(data, f, q.at_s))
            .map(|q| q.recipients)
            .sum::<u64>() as f64
    };
    let ratio = |n: f64, d: f64| if d > 0.0 { n / d } else { 0.0 };
    // The span of the run the window covers, as absolute seconds.
    let (from, to) = f.window.map_or((data.start_s, end), |(a, b)| {
        (data.start_s + a, (data.start_s + b).min(end))
    });
    let latency = || {
        Percentiles::of(
            matching
                .iter()
                .filter(|r| r.kind == "d")
                .map(|r| r.logged_s.saturating_sub(r.queued_s))
                .collect(),
        )
    };
    let queue_ages = || {
        let mut pending: BTreeMap<(String, u64), i64> = BTreeMap::new();
        for q in data
            .queued
            .iter()
            .filter(|q| queue_matches(data, f, &q.queue))
        {
            *pending.entry((q.queue.clone(), q.at_s)).or_default() += q.recipients as i64;
        }
        for r in rows
            .iter()
            .filter(|r| matches!(r.kind.as_str(), "d" | "b") && queue_matches(data, f, &r.queue))
        {
            *pending.entry((r.queue.clone(), r.queued_s)).or_default() -= 1;
        }
        let ages: Vec<(u64, u64)> = pending
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|((_, at), n)| (end.saturating_sub(*at), *n as u64))
            .collect();
        Percentiles::of_counts(ages)
    };
    Ok(match metric {
        Metric::Delivered => count(&["d"]),
        Metric::Deferred => count(&["t", "tq"]),
        Metric::Bounced => count(&["b"]),
        Metric::Expired => matching
            .iter()
            .filter(|r| r.kind == "b" && r.category == "message-expired")
            .count() as f64,
        Metric::Complaints => count(&["f"]),
        Metric::DeliveredRatio => ratio(count(&["d"]), injected()),
        Metric::BouncedRatio => ratio(count(&["b"]), injected()),
        Metric::DeferredRatio => ratio(count(&["t", "tq"]), count(&["d", "b", "t", "tq"])),
        Metric::RepliesMatching(pattern) => {
            let regex =
                fancy_regex::Regex::new(pattern).expect("validated when the scenario loaded");
            let (mut count, mut failed) = (0u64, 0u64);
            let mut first_error = None;
            for r in &matching {
                match regex.is_match(&r.diag) {
                    Ok(true) => count += 1,
                    Ok(false) => {}
                    Err(err) => {
                        failed += 1;
                        first_error.get_or_insert(err.to_string());
                    }
                }
            }
            if let Some(err) = first_error {
                return Err(format!(
                    "pattern /{pattern}/ could not be evaluated on {failed} records ({err})"
                ));
            }
            count as f64
        }
        Metric::BackoffEntries => data
            .mode_changes
            .iter()
            .filter(|c| c.backoff && queue_matches(data, f, &c.queue) && in_window(data, f, c.at_s))
            .count() as f64,
        Metric::BackoffTimeS => backoff_spans(data, |queue| queue_matches(data, f, queue))
            .into_iter()
            .map(|(_, a, b)| b.min(to).saturating_sub(a.max(from)))
            .sum::<u64>() as f64,
        Metric::MaxConnections => {
            let spans = data
                .connections
                .iter()
                .filter(|c| {
                    queue_matches(data, f, &c.queue)
                        && f.source_ip.as_ref().is_none_or(|ip| *ip == c.source_ip)
                })
                .filter_map(|c| {
                    let (open, close) = (c.opened_s.max(from), c.closed_s.unwrap_or(end).min(to));
                    let instant = c.opened_s == c.closed_s.unwrap_or(end);
                    (open < close || (open == close && instant)).then_some((open, close))
                });
            max_concurrent(spans) as f64
        }
        Metric::PeakRate { per_s } => {
            let times = super::sorted_times(matching.iter().copied(), |r| r.kind == "d");
            let mut most = 0;
            let mut lo = 0;
            for hi in 0..times.len() {
                while times[hi] >= times[lo] + per_s {
                    lo += 1;
                }
                most = most.max(hi + 1 - lo);
            }
            most as f64
        }
        Metric::DeliveryLatencyP50S => latency().p50 as f64,
        Metric::DeliveryLatencyP95S => latency().p95 as f64,
        Metric::DeliveryLatencyMaxS => latency().max as f64,
        Metric::QueueAgeP95S => queue_ages().p95 as f64,
        Metric::QueueAgeMaxS => queue_ages().max as f64,
        Metric::QueuedAtEnd => data
            .queues
            .iter()
            .filter(|q| queue_matches(data, f, &q.name))
            .map(|q| q.queued_at_end)
            .sum::<u64>() as f64,
    })
}

/// The results table: one line per expectation with its measured value.
pub fn table(scenario: &str, outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    out.push_str(&format!(
        "expectations of {scenario}: {} passed, {failed} failed\n",
        outcomes.len() - failed
    ));
    for o in outcomes {
        let measured = match &o.error {
            Some(error) => format!("error: {error}"),
            None => format!("measured {}", format_value(o.measured)),
        };
        out.push_str(&format!(
            "  {}  line {:<4} {:<60} {}\n",
            if o.passed { "pass" } else { "FAIL" },
            o.line,
            crate::printable::escape(&o.text),
            crate::printable::escape(&measured)
        ));
    }
    out
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

/// JUnit XML: one test suite per scenario, one test case per expectation.
pub fn junit(suites: &[(String, Vec<Outcome>)]) -> String {
    let escape = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let tests: usize = suites.iter().map(|(_, o)| o.len()).sum();
    let failures: usize = suites
        .iter()
        .map(|(_, o)| o.iter().filter(|x| !x.passed).count())
        .sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"pmta-sim\" tests=\"{tests}\" failures=\"{failures}\">\n"
    );
    for (scenario, outcomes) in suites {
        let failed = outcomes.iter().filter(|o| !o.passed).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\">\n",
            escape(scenario),
            outcomes.len()
        ));
        for o in outcomes {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"line {}: {}\"",
                escape(scenario),
                o.line,
                escape(&o.text)
            ));
            if o.passed {
                out.push_str("/>\n");
            } else {
                let measured = match &o.error {
                    Some(error) => format!("error: {error}"),
                    None => format!("measured {}", format_value(o.measured)),
                };
                out.push_str(&format!(
                    ">\n      <failure message=\"{}\">{} ({})</failure>\n    </testcase>\n",
                    escape(&measured),
                    escape(&o.text),
                    escape(&measured)
                ));
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
