//! A queue's effective settings: which `<domain>` blocks apply to `DOMAIN/VMTA`, in what
//! order they merge, where `queue-to` leads, and what each unset directive defaults to.
//!
//! PowerMTA's rules, as this module implements them:
//! - a `<domain>` pattern matches by form: `example.com` the domain itself, `*.example.com`
//!   its subdomains only, `[*.]example.com` both, `*` everything;
//! - the most specific matching block wins, regardless of file order: exact, then `*.x`, then
//!   `[*.]x`, then `*`; within one form a longer suffix is more specific; a block that names
//!   the domain outright beats one that reached it through a `$macro`;
//! - settings merge from general to specific, so a specific block overrides only what it sets;
//! - a `<domain>` nested in the `<virtual-mta>` overrides the global block of the same pattern;
//! - `queue-to NAME` makes the domain's mail join queue `NAME/VMTA`, which takes `NAME`'s
//!   settings; chains are followed and loops are errors;
//! - a directive no block sets takes PowerMTA's documented default.
//!
//! Pure: no I/O, no clock.

use indexmap::IndexMap;
use thiserror::Error;

use super::diag::{Diagnostic, did_you_mean};
use super::directives::{DIRECTIVES, DefaultValue, DirectiveSpec, ValueKind};
use super::model::{Config, DomainBlock, DomainPattern, PatternAction, Value};
use super::source::Span;
use super::value;

/// Longest `queue-to` chain followed before calling it a loop.
const QUEUE_TO_HOPS_MAX: usize = 32;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue must be written DOMAIN/VMTA, found `{0}`")]
    Malformed(String),
    #[error("`{0}` is not a valid domain name")]
    BadDomain(String),
    #[error("virtual MTA `{name}` is not defined{}", suggestion_text(.suggestion))]
    UnknownVirtualMta {
        name: String,
        suggestion: Option<String>,
    },
    #[error("`{name}` is a pool; explain one of its virtual MTAs: {}", .members.join(", "))]
    IsPool { name: String, members: Vec<String> },
    #[error("queue-to loop: {}", .0.join(" -> "))]
    QueueToLoop(Vec<String>),
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// One effective setting: its value (`None` when unset with no default) and the line that
/// set it (`None` for a default).
#[derive(Clone, Debug)]
pub struct Effective {
    pub spec: &'static DirectiveSpec,
    pub value: Option<Value>,
    pub from: Option<Span>,
}

/// The effective settings of one queue.
#[derive(Clone, Debug)]
pub struct QueueView {
    pub domain: String,
    pub vmta: String,
    /// The queue's domain part after `queue-to`: equal to `domain` unless redirected.
    pub queue_domain: String,
    /// Every `<domain>` directive, in registry order.
    pub settings: IndexMap<&'static str, Effective>,
}

impl QueueView {
    pub fn queue_name(&self) -> String {
        format!("{}/{}", self.queue_domain, self.vmta)
    }
}

/// Parses `DOMAIN/VMTA` and computes that queue's effective settings.
pub fn explain(config: &Config, queue: &str) -> Result<QueueView, QueueError> {
    let Some((domain, vmta)) = queue.rsplit_once('/') else {
        return Err(QueueError::Malformed(queue.to_string()));
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || vmta.is_empty() {
        return Err(QueueError::Malformed(queue.to_string()));
    }
    if !value::is_host_name(&domain) {
        return Err(QueueError::BadDomain(domain));
    }
    if let Some(pool) = config.pools.get(vmta) {
        return Err(QueueError::IsPool {
            name: vmta.to_string(),
            members: pool.members.iter().map(|m| m.value.clone()).collect(),
        });
    }
    if !config.virtual_mtas.contains_key(vmta) {
        return Err(QueueError::UnknownVirtualMta {
            name: vmta.to_string(),
            suggestion: did_you_mean(vmta, config.virtual_mtas.keys().map(String::as_str))
                .map(str::to_string),
        });
    }
    let queue_domain = follow_queue_to(config, &domain, vmta)?;
    let settings = effective_settings(config, &queue_domain, vmta);
    Ok(QueueView {
        domain,
        vmta: vmta.to_string(),
        queue_domain,
        settings,
    })
}

/// Follows `queue-to` from `domain` (for virtual MTA `vmta`, or globally when `None`).
fn follow_queue_to(config: &Config, domain: &str, vmta: &str) -> Result<String, QueueError> {
    let mut chain = vec![domain.to_string()];
    let mut current = domain.to_string();
    for _ in 0..QUEUE_TO_HOPS_MAX {
        let blocks = matching_blocks(config, &current, Some(vmta));
        let target = blocks
            .iter()
            .rev()
            .find_map(|b| b.settings.get("queue-to"))
            .and_then(|s| match &s.value {
                Value::Text(t) => Some(t.to_ascii_lowercase()),
                _ => None,
            });
        let Some(target) = target else {
            return Ok(current);
        };
        if target == current {
            return Ok(current);
        }
        if chain.contains(&target) {
            chain.push(target);
            return Err(QueueError::QueueToLoop(chain));
        }
        chain.push(target.clone());
        current = target;
    }
    Err(QueueError::QueueToLoop(chain))
}

/// Reports every `queue-to` loop reachable from a domain named outright in a `<domain>`
/// block, once per loop.
pub(super) fn check_queue_to_loops(config: &Config) -> Vec<Diagnostic> {
    let mut reported: Vec<Vec<String>> = Vec::new();
    let mut out = Vec::new();
    let blocks = config.domains.iter().map(|b| (b, None)).chain(
        config
            .virtual_mtas
            .values()
            .flat_map(|v| v.domains.iter().map(move |b| (b, Some(v.name.as_str())))),
    );
    for (block, vmta) in blocks {
        let (DomainPattern::Exact(domain), Some(setting)) =
            (&block.pattern, block.settings.get("queue-to"))
        else {
            continue;
        };
        let vmtas: Vec<&str> = match vmta {
            Some(v) => vec![v],
            None => config.virtual_mtas.keys().map(String::as_str).collect(),
        };
        for vmta in vmtas {
            if let Err(QueueError::QueueToLoop(chain)) = follow_queue_to(config, domain, vmta) {
                let mut key = chain.clone();
                key.sort();
                key.dedup();
                if reported.contains(&key) {
                    continue;
                }
                reported.push(key);
                out.push(Diagnostic::error(
                    setting.span,
                    format!("queue-to loop: {}", chain.join(" -> ")),
                ));
            }
        }
    }
    out
}

/// Warns where a queue's backoff limit is looser than its normal one, so backoff mode would
/// send faster or open more connections than normal mode. PowerMTA's `backoff-max-smtp-out`
/// defaults to 20 whatever `max-smtp-out` says (reference §2.2, §2.3), so `max-smtp-out 2`
/// alone lets a queue in backoff open 20 connections. Only queues that can enter backoff (a
/// pattern list with `mode=backoff`, or `backoff-upon-all-sources-disabled`) are checked; the
/// warning stands on the backoff line when it is written, else on the normal one.
pub(super) fn check_backoff_limits(config: &Config) -> Vec<Diagnostic> {
    const PAIRS: [(&str, &str); 3] = [
        ("max-smtp-out", "backoff-max-smtp-out"),
        ("max-msg-rate", "backoff-max-msg-rate"),
        ("max-connect-rate", "backoff-max-connect-rate"),
    ];
    // Top-level blocks are judged with no virtual MTA's nested blocks (a name no virtual MTA
    // has), nested ones with their own virtual MTA.
    let no_vmta = "";
    let blocks = config.domains.iter().map(|b| (b, no_vmta)).chain(
        config
            .virtual_mtas
            .values()
            .flat_map(|v| v.domains.iter().map(move |b| (b, v.name.as_str()))),
    );
    let mut warned: Vec<Span> = Vec::new();
    let mut out = Vec::new();
    for (block, vmta) in blocks {
        if !PAIRS
            .iter()
            .any(|(n, b)| block.settings.get(n).is_some() || block.settings.get(b).is_some())
        {
            continue;
        }
        let domain = match &block.pattern {
            DomainPattern::Exact(d) | DomainPattern::DomainAndSubdomains(d) => d.clone(),
            DomainPattern::Subdomains(d) => format!("sub.{d}"),
            DomainPattern::Any => "any.invalid".to_string(),
        };
        let settings = effective_settings(config, &domain, vmta);
        if !can_enter_backoff(config, &settings) {
            continue;
        }
        for (normal, backoff) in PAIRS {
            let (Some(n), Some(b)) = (settings.get(normal), settings.get(backoff)) else {
                continue;
            };
            let (Some(n_value), Some(b_value)) = (&n.value, &b.value) else {
                continue;
            };
            if !looser(b_value, n_value) {
                continue;
            }
            let Some(span) = b.from.or(n.from) else {
                continue;
            };
            if warned.contains(&span) {
                continue;
            }
            warned.push(span);
            let written = |e: &Effective, value: &Value| match e.from {
                Some(_) => format!("`{} {}`", e.spec.name, value.to_config_text()),
                None => format!(
                    "`{} {}` (PowerMTA's default)",
                    e.spec.name,
                    value.to_config_text()
                ),
            };
            let effect = if normal == "max-smtp-out" {
                "open more connections"
            } else {
                "send faster"
            };
            let mut diag = Diagnostic::warning(
                span,
                format!(
                    "{} is looser than {}: the queue would {effect} in backoff mode than in normal mode",
                    written(b, b_value),
                    written(n, n_value)
                ),
            )
            .with_help(format!(
                "write `{backoff} {}` or lower in this `<domain>`",
                n_value.to_config_text()
            ));
            if let (Some(_), Some(other)) = (b.from, n.from) {
                diag.notes.push((other, format!("`{normal}` is set here")));
            }
            out.push(diag);
        }
    }
    out
}

/// Whether a queue with these settings can ever be in backoff mode.
fn can_enter_backoff(config: &Config, settings: &IndexMap<&'static str, Effective>) -> bool {
    let all_disabled = matches!(
        settings
            .get("backoff-upon-all-sources-disabled")
            .and_then(|e| e.value.as_ref()),
        Some(Value::Bool(true))
    );
    let pattern = settings
        .get("smtp-pattern-list")
        .and_then(|e| match &e.value {
            Some(Value::Text(name)) => config.smtp_pattern_lists.get(name),
            _ => None,
        })
        .is_some_and(|list| {
            list.rules.iter().any(|r| {
                r.actions
                    .contains(&PatternAction::Mode(super::model::QueueMode::Backoff))
            })
        });
    all_disabled || pattern
}

/// Whether limit `a` allows more than limit `b` (counts, and rates per second).
fn looser(a: &Value, b: &Value) -> bool {
    let per_second = |r: &value::Rate| match r {
        value::Rate::Unlimited => f64::INFINITY,
        value::Rate::Limit { count, per_seconds } => *count as f64 / (*per_seconds).max(1) as f64,
    };
    match (a, b) {
        (Value::Count(a), Value::Count(b)) => a > b,
        (Value::Rate(a), Value::Rate(b)) => per_second(a) > per_second(b),
        _ => false,
    }
}

/// How specific a pattern is for `domain`, or `None` if it does not match. Higher wins.
fn specificity(pattern: &DomainPattern, domain: &str) -> Option<(u8, usize)> {
    let is_subdomain = |suffix: &str| {
        domain.len() > suffix.len()
            && domain.ends_with(suffix)
            && domain.as_bytes()[domain.len() - suffix.len() - 1] == b'.'
    };
    match pattern {
        DomainPattern::Exact(d) => (d == domain).then_some((3, d.len())),
        DomainPattern::Subdomains(s) => is_subdomain(s).then_some((2, s.len())),
        DomainPattern::DomainAndSubdomains(s) => {
            (s == domain || is_subdomain(s)).then_some((1, s.len()))
        }
        DomainPattern::Any => Some((0, 0)),
    }
}

/// Sort key of a matching block, ascending = general first: pattern form, suffix length,
/// literal beats macro, nested beats global, then file order.
type MergeKey = (u8, usize, bool, bool, usize);

/// The `<domain>` blocks that apply to `domain` for `vmta`, from most general to most
/// specific (the merge order).
fn matching_blocks<'c>(
    config: &'c Config,
    domain: &str,
    vmta: Option<&str>,
) -> Vec<&'c DomainBlock> {
    let nested = vmta
        .and_then(|v| config.virtual_mtas.get(v))
        .map(|v| v.domains.as_slice())
        .unwrap_or(&[]);
    let mut found: Vec<(MergeKey, &DomainBlock)> = Vec::new();
    let candidates = config
        .domains
        .iter()
        .map(|b| (false, b))
        .chain(nested.iter().map(|b| (true, b)));
    for (order, (is_nested, block)) in candidates.enumerate() {
        if let Some((form, suffix_len)) = specificity(&block.pattern, domain) {
            found.push((
                (form, suffix_len, !block.from_macro, is_nested, order),
                block,
            ));
        }
    }
    found.sort_by_key(|(key, _)| *key);
    found.into_iter().map(|(_, b)| b).collect()
}

/// Merges the matching blocks over the defaults.
fn effective_settings(
    config: &Config,
    domain: &str,
    vmta: &str,
) -> IndexMap<&'static str, Effective> {
    let mut set: IndexMap<&'static str, Effective> = IndexMap::new();
    // Per-source-IP values merge by network: a specific block replaces the value for the
    // networks it names and keeps the others.
    let mut per_ip: IndexMap<&'static str, IndexMap<String, (Value, Span)>> = IndexMap::new();
    for block in matching_blocks(config, domain, Some(vmta)) {
        for setting in block.settings.iter() {
            let name = setting.spec.name;
            match &setting.value {
                Value::Cleared => {
                    set.shift_remove(name);
                    per_ip.shift_remove(name);
                }
                Value::PerSourceIp { cidr, .. } => {
                    per_ip
                        .entry(name)
                        .or_default()
                        .insert(cidr.to_string(), (setting.value.clone(), setting.span));
                }
                value => {
                    set.insert(
                        name,
                        Effective {
                            spec: setting.spec,
                            value: Some(value.clone()),
                            from: Some(setting.span),
                        },
                    );
                }
            }
        }
    }
    let mut out = IndexMap::new();
    for spec in DIRECTIVES.iter().filter(|d| d.is_queue_setting()) {
        if spec.name == "domain-key" {
            continue; // keys are listed on their own, not per queue
        }
        let effective = if let Some(found) = set.get(spec.name) {
            found.clone()
        } else if let Some(networks) = per_ip.get(spec.name) {
            let mut merged = Vec::new();
            let mut last_span = None;
            for (value, span) in networks.values() {
                merged.push(value.clone());
                last_span = Some(*span);
            }
            Effective {
                spec,
                value: Some(Value::PerSourceIpList(merged)),
                from: last_span,
            }
        } else {
            Effective {
                spec,
                value: default_value(spec, &set),
                from: None,
            }
        };
        out.insert(spec.name, effective);
    }
    out
}

fn default_value(spec: &DirectiveSpec, set: &IndexMap<&'static str, Effective>) -> Option<Value> {
    match spec.default {
        DefaultValue::Unset => None,
        DefaultValue::SameAs(other) => match set.get(other) {
            Some(found) => found.value.clone(),
            None => super::directives::lookup(other).and_then(|o| default_value(o, set)),
        },
        DefaultValue::Text(text) => Some(parse_default(spec.kind, text)),
    }
}

/// Parses a registry default. The registry's own test proves each one parses, so a failure
/// here is a broken invariant, not bad input.
fn parse_default(kind: ValueKind, text: &str) -> Value {
    let broken = |e: value::ValueError| -> Value { panic!("registry default `{text}`: {e}") };
    match kind {
        ValueKind::Bool => value::parse_bool(text).map_or_else(broken, Value::Bool),
        ValueKind::Count | ValueKind::BoundedCount(_) => {
            value::parse_count(text).map_or_else(broken, Value::Count)
        }
        ValueKind::CountOrUnlimited if text == "unlimited" => Value::Unlimited,
        ValueKind::IntervalOrNever if text == "never" => Value::Never,
        ValueKind::Interval | ValueKind::IntervalOrNever => {
            value::parse_interval(text).map_or_else(broken, Value::Interval)
        }
        ValueKind::IntervalList => {
            value::parse_interval_list(text).map_or_else(broken, Value::IntervalList)
        }
        ValueKind::BoolOrInterval => value::parse_bool(text).map_or_else(broken, Value::Bool),
        ValueKind::Rate => value::parse_rate(text).map_or_else(broken, Value::Rate),
        ValueKind::RateList => {
            value::parse_rate(text).map_or_else(broken, |r| Value::RateList(vec![r]))
        }
        ValueKind::DataRate => value::parse_data_rate(text).map_or_else(broken, Value::DataRate),
        _ => Value::Text(text.to_string()),
    }
}
