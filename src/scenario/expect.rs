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
    pub(super) metric: String,
    #[serde(default)]
    pub(super) pattern: Option<String>,
    #[serde(default)]
    pub(super) per: Option<String>,
    #[serde(default)]
    pub(super) provider: Option<String>,
    #[serde(default)]
    pub(super) domain: Option<String>,
    #[serde(default)]
    pub(super) queue: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) vmta: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) source_ip: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) category: Option<String>,
    #[serde(default)]
    pub(super) window: Option<[String; 2]>,
    #[serde(default)]
    pub(super) min: Option<f64>,
    #[serde(default)]
    pub(super) max: Option<f64>,
    #[serde(default)]
    pub(super) equals: Option<f64>,
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

/// What an expectation may name: the scenario's ISPs and domains, and the run's length.
pub(super) struct Known<'a> {
    pub isps: &'a [String],
    pub domains: &'a [String],
    pub duration_s: u64,
}

impl Metric {
    /// Metrics that are a share of something: between 0 and 1.
    fn is_ratio(&self) -> bool {
        matches!(
            self,
            Metric::DeliveredRatio | Metric::DeferredRatio | Metric::BouncedRatio
        )
    }
}

/// An error unless `name` is one of `known`, with the closest as a suggestion.
fn one_of(what: &str, name: &str, known: &[String]) -> Result<(), String> {
    if known.iter().any(|k| k == name) {
        return Ok(());
    }
    let hint = did_you_mean(name, known.iter().map(String::as_str))
        .map_or_else(String::new, |m| format!("; did you mean `{m}`?"));
    Err(format!("{what} `{name}` is not in this scenario{hint}"))
}

pub(super) fn parse(
    r: &Reporter<'_>,
    raw: &[Spanned<RawExpect>],
    known: &Known<'_>,
) -> Result<Vec<Expectation>, ScenarioError> {
    let isps = known.isps;
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
        // Comparisons that no run could satisfy are mistakes, not expectations.
        for (key, value) in [("min", e.min), ("max", e.max), ("equals", e.equals)] {
            if let Some(v) = value
                && !v.is_finite()
            {
                return Err(err(format!("`{key}` is {v}: give a finite number")));
            }
        }
        if let (Some(min), Some(max)) = (e.min, e.max)
            && min > max
        {
            return Err(err(format!(
                "min {min} is above max {max}: no value can hold"
            )));
        }
        if let Some(eq) = e.equals
            && (e.min.is_some_and(|m| eq < m) || e.max.is_some_and(|m| eq > m))
        {
            return Err(err(format!(
                "equals {eq} is outside min/max: no value can hold"
            )));
        }
        let (low, high) = if metric.is_ratio() {
            (0.0, 1.0)
        } else {
            (0.0, f64::INFINITY)
        };
        let below = e.max.or(e.equals).is_some_and(|v| v < low);
        let above = e.min.or(e.equals).is_some_and(|v| v > high);
        if below || above {
            return Err(err(format!(
                "`{}` is between {low} and {high}: this expectation can never hold",
                e.metric
            )));
        }
        if let Some(domain) = &e.domain {
            one_of("domain", &domain.to_ascii_lowercase(), known.domains).map_err(&err)?;
        }
        if let Some(queue) = e.queue.as_ref().map(Spanned::get_ref) {
            let Some((domain, _)) = queue
                .split_once('/')
                .filter(|(d, v)| !d.is_empty() && !v.is_empty())
            else {
                return Err(err(format!(
                    "queue `{queue}` is DOMAIN/VMTA, as in gmail.com/news-1"
                )));
            };
            one_of(
                "the domain of queue",
                &domain.to_ascii_lowercase(),
                known.domains,
            )
            .map_err(&err)?;
        }
        if let Some(ip) = e.source_ip.as_ref().map(Spanned::get_ref)
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(err(format!("source_ip `{ip}` is not an IP address")));
        }
        if let Some(category) = &e.category
            && !crate::config::model::BOUNCE_CATEGORIES.contains(&category.as_str())
        {
            let hint = did_you_mean(
                category,
                crate::config::model::BOUNCE_CATEGORIES.iter().copied(),
            )
            .map_or_else(String::new, |m| format!("; did you mean `{m}`?"));
            return Err(err(format!(
                "`{category}` is not a bounce category{hint} (categories: {})",
                crate::config::model::BOUNCE_CATEGORIES.join(", ")
            )));
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
                if to > known.duration_s {
                    return Err(err(format!(
                        "window [{from}s, {to}s) ends after the run ({}s)",
                        known.duration_s
                    )));
                }
                Some((from, to))
            }
            None => None,
        };
        let filter = Filter {
            provider: e.provider.clone(),
            domain: e.domain.as_ref().map(|d| d.to_ascii_lowercase()),
            queue: e.queue.as_ref().map(|q| q.get_ref().clone()),
            vmta: e.vmta.as_ref().map(|v| v.get_ref().clone()),
            source_ip: e.source_ip.as_ref().map(|ip| ip.get_ref().clone()),
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
