//! `[[expect]]`: what a scenario asserts about its own run, checked when the run ends.
//!
//! Owns the expectation grammar — a metric, filters, and `min`/`max`/`equals` — and its
//! validation when the scenario loads: an unknown metric or filter is an error with
//! `FILE:LINE:COL` and a suggestion. Pure: evaluating is the report room's job
//! (`report::expect`).

use serde::Deserialize;
use toml::Spanned;

use super::{Reporter, ScenarioError, interval};
use crate::config::diag::did_you_mean;

/// Most expectations in one scenario.
pub const EXPECTATIONS_MAX: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    metric: String,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    per: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    vmta: Option<String>,
    #[serde(default)]
    source_ip: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    window: Option<[String; 2]>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    #[serde(default)]
    equals: Option<f64>,
}

/// What an expectation measures.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    Delivered,
    Deferred,
    Bounced,
    Expired,
    Complaints,
    DeliveredRatio,
    DeferredRatio,
    BouncedRatio,
    /// Accounting records whose diagnostic matches the regex.
    RepliesMatching(String),
    BackoffEntries,
    BackoffTimeS,
    MaxConnections,
    /// Most deliveries in any window of this many seconds.
    PeakRate {
        per_s: u64,
    },
    DeliveryLatencyP50S,
    DeliveryLatencyP95S,
    DeliveryLatencyMaxS,
    QueueAgeP95S,
    QueueAgeMaxS,
    QueuedAtEnd,
}

impl Metric {
    pub const NAMES: [&'static str; 19] = [
        "delivered",
        "deferred",
        "bounced",
        "expired",
        "complaints",
        "delivered_ratio",
        "deferred_ratio",
        "bounced_ratio",
        "replies_matching",
        "backoff_entries",
        "backoff_time_s",
        "max_connections",
        "peak_rate",
        "delivery_latency_p50_s",
        "delivery_latency_p95_s",
        "delivery_latency_max_s",
        "queue_age_p95_s",
        "queue_age_max_s",
        "queued_at_end",
    ];
}

/// Which part of the run an expectation looks at; every filter given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub provider: Option<String>,
    pub domain: Option<String>,
    pub queue: Option<String>,
    pub vmta: Option<String>,
    pub source_ip: Option<String>,
    /// Bounce category (for `bounced`).
    pub category: Option<String>,
    /// Seconds since the start: `[from, to)`.
    pub window: Option<(u64, u64)>,
}

/// One `[[expect]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expectation {
    /// Line of the `[[expect]]` in the scenario file.
    pub line: usize,
    pub metric: Metric,
    pub filter: Filter,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub equals: Option<f64>,
    /// The expectation as the results table shows it: `delivered{provider=gmail} >= 100`.
    pub text: String,
}

impl Expectation {
    /// Whether `value` meets every comparison.
    pub fn holds(&self, value: f64) -> bool {
        self.min.is_none_or(|m| value >= m - 1e-9)
            && self.max.is_none_or(|m| value <= m + 1e-9)
            && self.equals.is_none_or(|e| (value - e).abs() <= 1e-9)
    }
}

pub(super) fn parse(
    r: &Reporter<'_>,
    raw: &[Spanned<RawExpect>],
    isps: &[String],
) -> Result<Vec<Expectation>, ScenarioError> {
    if raw.len() > EXPECTATIONS_MAX {
        return Err(r.at(
            0,
            format!(
                "{} expectations, over the limit of {EXPECTATIONS_MAX}",
                raw.len()
            ),
        ));
    }
    let mut out = Vec::new();
    for spanned in raw {
        let e = spanned.get_ref();
        let err = |m: String| r.span(spanned, m);
        let line = r.at(spanned.span().start, "").line;
        let metric = match e.metric.as_str() {
            "delivered" => Metric::Delivered,
            "deferred" => Metric::Deferred,
            "bounced" => Metric::Bounced,
            "expired" => Metric::Expired,
            "complaints" => Metric::Complaints,
            "delivered_ratio" => Metric::DeliveredRatio,
            "deferred_ratio" => Metric::DeferredRatio,
            "bounced_ratio" => Metric::BouncedRatio,
            "replies_matching" => {
                let pattern = e.pattern.clone().ok_or_else(|| {
                    err("`replies_matching` needs `pattern`, a regular expression".into())
                })?;
                fancy_regex::Regex::new(&pattern)
                    .map_err(|x| err(format!("pattern `{pattern}`: {x}")))?;
                Metric::RepliesMatching(pattern)
            }
            "backoff_entries" => Metric::BackoffEntries,
            "backoff_time_s" => Metric::BackoffTimeS,
            "max_connections" => Metric::MaxConnections,
            "peak_rate" => {
                let per = e.per.as_ref().ok_or_else(|| {
                    err("`peak_rate` needs `per`, a window such as \"1h\"".into())
                })?;
                let per_s = interval(per).map_err(err)?;
                if per_s == 0 {
                    return Err(err("`per` must be longer than 0s".into()));
                }
                Metric::PeakRate { per_s }
            }
            "delivery_latency_p50_s" => Metric::DeliveryLatencyP50S,
            "delivery_latency_p95_s" => Metric::DeliveryLatencyP95S,
            "delivery_latency_max_s" => Metric::DeliveryLatencyMaxS,
            "queue_age_p95_s" => Metric::QueueAgeP95S,
            "queue_age_max_s" => Metric::QueueAgeMaxS,
            "queued_at_end" => Metric::QueuedAtEnd,
            other => {
                let hint = did_you_mean(other, Metric::NAMES)
                    .map_or_else(String::new, |m| format!("; did you mean `{m}`?"));
                return Err(err(format!(
                    "`{other}` is not a metric{hint} (metrics: {})",
                    Metric::NAMES.join(", ")
                )));
            }
        };
        if e.pattern.is_some() && !matches!(metric, Metric::RepliesMatching(_)) {
            return Err(err("`pattern` belongs to `replies_matching`".into()));
        }
        if e.per.is_some() && !matches!(metric, Metric::PeakRate { .. }) {
            return Err(err("`per` belongs to `peak_rate`".into()));
        }
        if e.min.is_none() && e.max.is_none() && e.equals.is_none() {
            return Err(err("an expectation needs `min`, `max` or `equals`".into()));
        }
        if let Some(provider) = &e.provider
            && !isps.contains(provider)
        {
            let hint = did_you_mean(provider, isps.iter().map(String::as_str))
                .map_or_else(String::new, |m| format!("; did you mean `{m}`?"));
            return Err(err(format!(
                "provider `{provider}` is not an ISP of this scenario{hint}"
            )));
        }
        let window = match &e.window {
            Some([from, to]) => {
                let (from, to) = (interval(from).map_err(err)?, interval(to).map_err(err)?);
                if from >= to {
                    return Err(err(format!("window [{from}s, {to}s) is empty")));
                }
                Some((from, to))
            }
            None => None,
        };
        let filter = Filter {
            provider: e.provider.clone(),
            domain: e.domain.as_ref().map(|d| d.to_ascii_lowercase()),
            queue: e.queue.clone(),
            vmta: e.vmta.clone(),
            source_ip: e.source_ip.clone(),
            category: e.category.clone(),
            window,
        };
        let mut filters: Vec<String> = [
            ("provider", &filter.provider),
            ("domain", &filter.domain),
            ("queue", &filter.queue),
            ("vmta", &filter.vmta),
            ("source_ip", &filter.source_ip),
            ("category", &filter.category),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .collect();
        if let Some([from, to]) = &e.window {
            filters.push(format!("window={from}..{to}"));
        }
        let mut name = e.metric.clone();
        if let Some(p) = &e.pattern {
            name = format!("{name}(/{p}/)");
        }
        if let Some(per) = &e.per {
            name = format!("{name}(per {per})");
        }
        if !filters.is_empty() {
            name = format!("{name}{{{}}}", filters.join(","));
        }
        let mut bounds = Vec::new();
        if let Some(v) = e.min {
            bounds.push(format!(">= {v}"));
        }
        if let Some(v) = e.max {
            bounds.push(format!("<= {v}"));
        }
        if let Some(v) = e.equals {
            bounds.push(format!("== {v}"));
        }
        out.push(Expectation {
            line,
            metric,
            filter,
            min: e.min,
            max: e.max,
            equals: e.equals,
            text: format!("{name} {}", bounds.join(" and ")),
        });
    }
    Ok(out)
}
