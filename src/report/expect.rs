//! Evaluates a scenario's `[[expect]]` against a run: each expectation's measured value and
//! whether it holds.
//!
//! Owns the meaning of every metric (documented in docs/expectations.md). Each expectation
//! knows its filters when the scenario loads, so its [`Meter`] is built before the run and
//! fed by the [`super::aggregate::Aggregator`] as the run goes: no record is kept. What
//! only the end can say (queue ages, time in backoff, recipients still queued) is measured
//! at [`Meters::finish`] from the run's data. Pure, like the rest of the report room.

use std::collections::{BTreeMap, VecDeque};

use super::aggregate::{Concurrency, Latency};
use super::{Percentiles, RunData, backoff_spans};
use crate::engine::accounting::{AcctRecord, RecordType};
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

/// A queue as the filters see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueView<'a> {
    pub name: &'a str,
    pub domain: &'a str,
    pub vmta: &'a str,
    /// The provider answering the queue's domain.
    pub provider: &'a str,
}

/// An accounting record with what the filters need resolved.
pub(crate) struct RecordView<'a> {
    pub record: &'a AcctRecord,
    pub logged_s: u64,
    pub latency_s: u64,
    /// The recipient's domain (the queue's for a record without a recipient).
    pub domain: &'a str,
    pub queue: &'a str,
    /// The queue's virtual MTA.
    pub vmta: &'a str,
    /// The provider answering `domain`.
    pub provider: &'a str,
}

/// Whether a queue is within the filter's provider, domain, queue and vmta.
fn queue_matches(f: &Filter, q: &QueueView<'_>) -> bool {
    f.queue.as_ref().is_none_or(|x| x == q.name)
        && f.domain.as_ref().is_none_or(|d| d == q.domain)
        && f.vmta.as_ref().is_none_or(|v| v == q.vmta)
        && f.provider.as_ref().is_none_or(|p| p == q.provider)
}

/// Whether `at_s` is within the filter's window of a run that started at `start_s`.
fn in_window(f: &Filter, start_s: u64, at_s: u64) -> bool {
    let since = at_s.saturating_sub(start_s);
    f.window
        .is_none_or(|(from, to)| from <= since && since < to)
}

fn record_matches(f: &Filter, start_s: u64, r: &RecordView<'_>) -> bool {
    f.queue.as_ref().is_none_or(|q| q == r.queue)
        && f.domain.as_ref().is_none_or(|d| d == r.domain)
        && f.vmta.as_ref().is_none_or(|v| v == r.vmta)
        && f.provider.as_ref().is_none_or(|p| p == r.provider)
        && f.source_ip
            .as_ref()
            .is_none_or(|ip| *ip == r.record.dlv_source_ip)
        && f.category
            .as_ref()
            .is_none_or(|c| *c == r.record.bounce_category)
        && in_window(f, start_s, r.logged_s)
}

/// What one expectation has measured so far.
enum State {
    /// Records of these types.
    Count(&'static [RecordType], u64),
    Expired(u64),
    /// Records of the first types over recipients injected (`None`) or records of the
    /// second types.
    Ratio {
        of: &'static [RecordType],
        over: Option<&'static [RecordType]>,
        count: u64,
        total: u64,
    },
    Replies {
        regex: fancy_regex::Regex,
        count: u64,
        failed: u64,
        first_error: Option<String>,
    },
    /// Deliveries in the last `per_s` seconds: (second, deliveries).
    Peak {
        per_s: u64,
        window: VecDeque<(u64, u64)>,
        sum: u64,
        most: u64,
    },
    Latency(Box<Latency>),
    Connections(Concurrency),
    /// Measured from the run's end state.
    AtEnd,
}

/// One expectation and what it has measured.
pub struct Meter {
    expectation: Expectation,
    state: State,
}

/// Every expectation of a scenario, measuring as the run goes.
pub struct Meters {
    start_s: u64,
    each: Vec<Meter>,
}

const DELIVERED: &[RecordType] = &[RecordType::Delivered];
const BOUNCED: &[RecordType] = &[RecordType::Bounced];
const DEFERRED: &[RecordType] = &[RecordType::Transient, RecordType::TransientQueue];
const FEEDBACK: &[RecordType] = &[RecordType::Feedback];
const OUTCOMES: &[RecordType] = &[
    RecordType::Delivered,
    RecordType::Bounced,
    RecordType::Transient,
    RecordType::TransientQueue,
];

impl Meters {
    /// A meter for each expectation of a run from `start_s` to `end_s`.
    pub fn new(expectations: &[Expectation], start_s: u64, end_s: u64) -> Meters {
        let each = expectations
            .iter()
            .map(|e| {
                let (from, to) = e.filter.window.map_or((start_s, end_s), |(a, b)| {
                    (start_s + a, (start_s + b).min(end_s))
                });
                let state = match &e.metric {
                    Metric::Delivered => State::Count(DELIVERED, 0),
                    Metric::Deferred => State::Count(DEFERRED, 0),
                    Metric::Bounced => State::Count(BOUNCED, 0),
                    Metric::Complaints => State::Count(FEEDBACK, 0),
                    Metric::Expired => State::Expired(0),
                    Metric::DeliveredRatio => State::Ratio {
                        of: DELIVERED,
                        over: None,
                        count: 0,
                        total: 0,
                    },
                    Metric::BouncedRatio => State::Ratio {
                        of: BOUNCED,
                        over: None,
                        count: 0,
                        total: 0,
                    },
                    Metric::DeferredRatio => State::Ratio {
                        of: DEFERRED,
                        over: Some(OUTCOMES),
                        count: 0,
                        total: 0,
                    },
                    Metric::RepliesMatching(pattern) => State::Replies {
                        regex: fancy_regex::Regex::new(pattern)
                            .expect("validated when the scenario loaded"),
                        count: 0,
                        failed: 0,
                        first_error: None,
                    },
                    Metric::PeakRate { per_s } => State::Peak {
                        per_s: *per_s,
                        window: VecDeque::new(),
                        sum: 0,
                        most: 0,
                    },
                    Metric::DeliveryLatencyP50S
                    | Metric::DeliveryLatencyP95S
                    | Metric::DeliveryLatencyMaxS => State::Latency(Box::new(Latency::new())),
                    Metric::MaxConnections => State::Connections(Concurrency::new(from, to)),
                    Metric::BackoffEntries
                    | Metric::BackoffTimeS
                    | Metric::QueueAgeP95S
                    | Metric::QueueAgeMaxS
                    | Metric::QueuedAtEnd => State::AtEnd,
                };
                Meter {
                    expectation: e.clone(),
                    state,
                }
            })
            .collect();
        Meters { start_s, each }
    }

    pub(crate) fn record(&mut self, r: &RecordView<'_>) {
        let kind = r.record.record_type;
        for meter in &mut self.each {
            let f = &meter.expectation.filter;
            match &mut meter.state {
                State::AtEnd | State::Connections(_) => continue,
                _ if !record_matches(f, self.start_s, r) => continue,
                State::Count(kinds, n) => *n += u64::from(kinds.contains(&kind)),
                State::Expired(n) => {
                    *n += u64::from(
                        kind == RecordType::Bounced
                            && r.record.bounce_category == "message-expired",
                    )
                }
                State::Ratio {
                    of,
                    over,
                    count,
                    total,
                } => {
                    *count += u64::from(of.contains(&kind));
                    if let Some(over) = over {
                        *total += u64::from(over.contains(&kind));
                    }
                }
                State::Replies {
                    regex,
                    count,
                    failed,
                    first_error,
                } => match regex.is_match(&r.record.dsn_diag) {
                    Ok(true) => *count += 1,
                    Ok(false) => {}
                    Err(err) => {
                        *failed += 1;
                        first_error.get_or_insert(err.to_string());
                    }
                },
                State::Peak {
                    per_s,
                    window,
                    sum,
                    most,
                } if kind == RecordType::Delivered => {
                    let t = r.logged_s;
                    match window.back_mut() {
                        Some((s, n)) if *s == t => *n += 1,
                        _ => window.push_back((t, 1)),
                    }
                    *sum += 1;
                    while let Some(&(s, n)) = window.front()
                        && t >= s + *per_s
                    {
                        *sum -= n;
                        window.pop_front();
                    }
                    *most = (*most).max(*sum);
                }
                State::Latency(latency) if kind == RecordType::Delivered => {
                    latency.record(r.latency_s)
                }
                State::Peak { .. } | State::Latency(_) => {}
            }
        }
    }

    /// Recipients entered `queue` at `at_s`.
    pub(crate) fn queued(&mut self, at_s: u64, queue: &QueueView<'_>, recipients: u64) {
        for meter in &mut self.each {
            let f = &meter.expectation.filter;
            if let State::Ratio {
                over: None, total, ..
            } = &mut meter.state
                && queue_matches(f, queue)
                && in_window(f, self.start_s, at_s)
            {
                *total += recipients;
            }
        }
    }

    pub(crate) fn connection_opened(&mut self, at_s: u64, queue: &QueueView<'_>, ip: &str) {
        for meter in &mut self.each {
            let f = &meter.expectation.filter;
            if let State::Connections(c) = &mut meter.state
                && queue_matches(f, queue)
                && f.source_ip.as_ref().is_none_or(|x| x == ip)
            {
                c.opened(at_s, |_, _| {});
            }
        }
    }

    pub(crate) fn connection_closed(
        &mut self,
        opened_s: u64,
        closed_s: u64,
        queue: &QueueView<'_>,
        ip: &str,
    ) {
        for meter in &mut self.each {
            let f = &meter.expectation.filter;
            if let State::Connections(c) = &mut meter.state
                && queue_matches(f, queue)
                && f.source_ip.as_ref().is_none_or(|x| x == ip)
            {
                c.closed(opened_s, closed_s, |_, _| {});
            }
        }
    }

    /// Every expectation's result, with what only the end says: `data`'s queues and mode
    /// changes, and each queue's recipients still pending by their queued second.
    pub(crate) fn finish(
        self,
        data: &RunData,
        end_s: u64,
        pending: &[(QueueView<'_>, &BTreeMap<u64, i64>)],
    ) -> Vec<Outcome> {
        self.each
            .into_iter()
            .map(|meter| {
                let e = meter.expectation;
                match measure(meter.state, &e, data, end_s, pending) {
                    Ok(measured) => Outcome {
                        line: e.line,
                        passed: e.holds(measured),
                        text: e.text,
                        measured,
                        error: None,
                    },
                    Err(error) => Outcome {
                        line: e.line,
                        text: e.text,
                        measured: f64::NAN,
                        passed: false,
                        error: Some(error),
                    },
                }
            })
            .collect()
    }
}

/// The metric's value; `Err` when it cannot be known (a pattern the regex engine could not
/// evaluate on some record).
fn measure(
    state: State,
    e: &Expectation,
    data: &RunData,
    end_s: u64,
    pending: &[(QueueView<'_>, &BTreeMap<u64, i64>)],
) -> Result<f64, String> {
    let f = &e.filter;
    let ratio = |n: u64, d: u64| if d > 0 { n as f64 / d as f64 } else { 0.0 };
    let queues = || {
        data.queues.iter().filter(|q| {
            let provider = super::provider_of(data, &q.domain);
            queue_matches(
                f,
                &QueueView {
                    name: &q.name,
                    domain: &q.domain,
                    vmta: &q.vmta,
                    provider: &provider,
                },
            )
        })
    };
    let queue_ages = || {
        let ages: Vec<(u64, u64)> = pending
            .iter()
            .filter(|(q, _)| queue_matches(f, q))
            .flat_map(|(_, by_time)| {
                by_time
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(at, n)| (end_s.saturating_sub(*at), *n as u64))
            })
            .collect();
        Percentiles::of_counts(ages)
    };
    // The span of the run the window covers, as absolute seconds.
    let (from, to) = f.window.map_or((data.start_s, end_s), |(a, b)| {
        (data.start_s + a, (data.start_s + b).min(end_s))
    });
    Ok(match state {
        State::Count(_, n) | State::Expired(n) => n as f64,
        State::Ratio { count, total, .. } => ratio(count, total),
        State::Replies {
            count,
            failed,
            first_error,
            ..
        } => {
            if let Some(err) = first_error {
                let pattern = match &e.metric {
                    Metric::RepliesMatching(p) => p.as_str(),
                    _ => "",
                };
                return Err(format!(
                    "pattern /{pattern}/ could not be evaluated on {failed} records ({err})"
                ));
            }
            count as f64
        }
        State::Peak { most, .. } => most as f64,
        State::Latency(latency) => {
            let p = latency.percentiles();
            match e.metric {
                Metric::DeliveryLatencyP50S => p.p50 as f64,
                Metric::DeliveryLatencyP95S => p.p95 as f64,
                _ => p.max as f64,
            }
        }
        State::Connections(c) => c.max() as f64,
        State::AtEnd => match e.metric {
            Metric::BackoffEntries => {
                let names: Vec<&str> = queues().map(|q| q.name.as_str()).collect();
                data.mode_changes
                    .iter()
                    .filter(|c| {
                        c.backoff
                            && names.contains(&c.queue.as_str())
                            && in_window(f, data.start_s, c.at_s)
                    })
                    .count() as f64
            }
            Metric::BackoffTimeS => {
                let names: Vec<&str> = queues().map(|q| q.name.as_str()).collect();
                backoff_spans(data, |queue| names.contains(&queue))
                    .into_iter()
                    .map(|(_, a, b)| b.min(to).saturating_sub(a.max(from)))
                    .sum::<u64>() as f64
            }
            Metric::QueueAgeP95S => queue_ages().p95 as f64,
            Metric::QueueAgeMaxS => queue_ages().max as f64,
            _ => queues().map(|q| q.queued_at_end).sum::<u64>() as f64,
        },
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
