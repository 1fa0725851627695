//! Provider model files (`isp-models/*.toml`): a provider's domains, MX hosts, caps, throttle
//! and greylisting, with its own reply strings. A scenario names a model with
//! `[isps.X] model = "NAME"` and may override any of it.
//!
//! Owns the file format and its validation (unknown keys and bad values are errors with
//! `FILE:LINE:COL`). Pure: the caller reads the file.

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{
    AuthRule, AuthRules, Enforcement, Enrolment, Feedback, Greylist, IspReplies, IspSpec, Pause,
    Reporter, Reports, Reputation, Requirement, ScenarioError, SmtpPhase, Throttle, interval,
    reply,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    provider: RawProvider,
    #[serde(default)]
    connection: Option<Spanned<RawConnection>>,
    #[serde(default)]
    recipients: Option<Spanned<RawRecipients>>,
    #[serde(default)]
    throttle: Option<Spanned<RawThrottle>>,
    #[serde(default)]
    greylist: Option<Spanned<RawGreylist>>,
    #[serde(default)]
    pause: Option<Spanned<RawPause>>,
    #[serde(default)]
    auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    reputation: Option<Spanned<RawReputation>>,
    #[serde(default)]
    feedback: Option<Spanned<RawFeedback>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeedback {
    reports: String,
    #[serde(default)]
    enrolment: Option<String>,
    #[serde(default)]
    aggregate_spam_rate: Option<bool>,
    #[serde(default)]
    delay_min: Option<String>,
    #[serde(default)]
    delay_max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bulk_threshold_per_day: u64,
    enforcement: String,
    #[serde(default)]
    permanent_after: Option<String>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    require: String,
    scope: String,
    #[serde(default)]
    temporary: Option<String>,
    permanent: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReputation {
    start: f64,
    daily_step: f64,
    complaint_good: f64,
    complaint_bad: f64,
    mitigation_days: u32,
    unknown_bad: f64,
    weight_complaints: f64,
    weight_unknown: f64,
    weight_engagement: f64,
    block_below: f64,
    block_phase: String,
    block_reply: String,
    #[serde(default)]
    no_unsubscribe_complaint_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    domains: Vec<String>,
    mx: Vec<String>,
    #[serde(default)]
    starttls: Option<bool>,
    #[serde(default)]
    reply_wrap_chars: Option<usize>,
    #[serde(default)]
    reply_suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(default)]
    max_per_ip: Option<u64>,
    #[serde(default)]
    cold_max_per_ip: Option<u64>,
    #[serde(default)]
    require_tls: Option<bool>,
    #[serde(default)]
    tls_required_reply: Option<String>,
    #[serde(default)]
    over_cap_reply: Option<String>,
    #[serde(default)]
    max_messages: Option<u64>,
    #[serde(default)]
    max_messages_reply: Option<String>,
    #[serde(default)]
    close_silently_after_max_messages: Option<bool>,
    #[serde(default)]
    max_recipients: Option<u64>,
    #[serde(default)]
    too_many_recipients_reply: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipients {
    #[serde(default)]
    reject_unknown: Option<bool>,
    #[serde(default)]
    unknown_user_reply: Option<String>,
    #[serde(default)]
    full_mailbox_reply: Option<String>,
    #[serde(default)]
    disabled_reply: Option<String>,
    #[serde(default)]
    messages_per_mailbox_per_minute: Option<u64>,
    #[serde(default)]
    mailbox_rate_reply: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    phase: String,
    messages_per_ip_per_hour: u64,
    #[serde(default)]
    messages_per_netblock_per_hour: Option<u64>,
    reply_ip: String,
    #[serde(default)]
    reply_netblock: Option<String>,
    penalty_min: String,
    penalty_max: String,
    early_retry_extension: String,
    #[serde(default)]
    spike_factor: Option<f64>,
    #[serde(default)]
    growth_per_clean_day: Option<f64>,
    #[serde(default)]
    messages_max_per_hour: Option<u64>,
    #[serde(default)]
    messages_per_domain_per_hour: Option<u64>,
    #[serde(default)]
    reply_domain: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGreylist {
    delay: String,
    retry_window: String,
    whitelist_after: u32,
    whitelist_spacing: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPause {
    after_messages: u64,
    duration: String,
    reply: String,
}

/// Parses a model file into the provider's defaults.
pub fn parse_model(file: &Path, text: &str) -> Result<IspSpec, ScenarioError> {
    let r = Reporter { file, text };
    let raw: RawModel = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        r.at(offset, e.message().to_string())
    })?;
    let mut spec = IspSpec::generic(&raw.provider.name);
    spec.domains = raw
        .provider
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    spec.mx = raw.provider.mx;
    if spec.domains.is_empty() || spec.mx.is_empty() {
        return Err(r.at(0, "a model needs `domains` and `mx` in [provider]"));
    }
    spec.starttls = raw.provider.starttls.unwrap_or(true);
    spec.reply_wrap_chars = raw.provider.reply_wrap_chars.unwrap_or(0);
    if (1..40).contains(&spec.reply_wrap_chars) {
        return Err(r.at(0, "reply_wrap_chars is 0 (one line) or at least 40"));
    }
    spec.reply_suffix = raw.provider.reply_suffix.clone().unwrap_or_default();
    let mut replies = IspReplies::default();
    let reply_at =
        |spanned_offset: usize, text: &str| reply(text).map_err(|e| r.at(spanned_offset, e));
    if let Some(c) = &raw.connection {
        let at = c.span().start;
        let c = c.get_ref();
        if [
            c.max_per_ip,
            c.cold_max_per_ip,
            c.max_messages,
            c.max_recipients,
        ]
        .contains(&Some(0))
        {
            return Err(r.at(
                at,
                "connection caps must be at least 1 (leave them out for no limit)",
            ));
        }
        spec.max_connections_per_ip = c.max_per_ip;
        spec.max_connections_per_ip_cold = c.cold_max_per_ip;
        if c.cold_max_per_ip.is_some() && raw.throttle.is_none() {
            return Err(r.at(
                at,
                "cold_max_per_ip grows with the hourly capacity: it needs a [throttle]",
            ));
        }
        if c.require_tls == Some(true) {
            // RFC 3207 §4: "530 Must issue a STARTTLS command first".
            let text = c
                .tls_required_reply
                .as_deref()
                .unwrap_or("530 5.7.0 Must issue a STARTTLS command first");
            spec.require_tls = Some(reply_at(at, text)?);
        }
        spec.max_messages_per_connection = c.max_messages;
        spec.max_recipients_per_transaction = c.max_recipients;
        spec.close_silently_after_max_messages =
            c.close_silently_after_max_messages.unwrap_or(false);
        if let Some(text) = &c.over_cap_reply {
            replies.over_cap = reply_at(at, text)?;
        }
        if let Some(text) = &c.max_messages_reply {
            replies.max_messages = reply_at(at, text)?;
        }
        if let Some(text) = &c.too_many_recipients_reply {
            replies.too_many_recipients = reply_at(at, text)?;
        }
    }
    if let Some(rc) = &raw.recipients {
        let at = rc.span().start;
        let rc = rc.get_ref();
        spec.reject_unknown_users = rc.reject_unknown.unwrap_or(true);
        if let Some(text) = &rc.unknown_user_reply {
            replies.unknown_user = reply_at(at, text)?;
        }
        if let Some(text) = &rc.full_mailbox_reply {
            replies.full_mailbox = reply_at(at, text)?;
        }
        if let Some(text) = &rc.disabled_reply {
            replies.disabled = reply_at(at, text)?;
        }
        if let Some(text) = &rc.mailbox_rate_reply {
            replies.mailbox_rate = reply_at(at, text)?;
        }
        spec.messages_per_mailbox_per_minute = rc.messages_per_mailbox_per_minute;
    }
    spec.replies = replies;
    if let Some(t) = &raw.throttle {
        let at = t.span().start;
        let t = t.get_ref();
        let err = |m: String| r.at(at, m);
        let phase = SmtpPhase::parse(&t.phase).ok_or_else(|| {
            err("phase is one of greeting, ehlo, mail, rcpt, data, data_end".into())
        })?;
        let reply_ip = reply_at(at, &t.reply_ip)?;
        let reply_netblock = match &t.reply_netblock {
            Some(text) => reply_at(at, text)?,
            None => reply_ip.clone(),
        };
        let reply_domain = match &t.reply_domain {
            Some(text) => reply_at(at, text)?,
            None => reply_ip.clone(),
        };
        if t.messages_per_domain_per_hour.is_some() && phase != SmtpPhase::DataEnd {
            return Err(r.at(
                at,
                "messages_per_domain_per_hour needs phase = \"data_end\" (the DKIM domain is known only once the message is in)",
            ));
        }
        let capacities = [
            Some(t.messages_per_ip_per_hour),
            t.messages_per_netblock_per_hour,
            t.messages_per_domain_per_hour,
            t.messages_max_per_hour,
        ];
        if capacities.contains(&Some(0)) {
            return Err(r.at(
                at,
                "hourly capacities are at least 1 (0 would let nothing through); leave a key out for no limit",
            ));
        }
        let penalty_min_s = interval(&t.penalty_min).map_err(err)?;
        let penalty_max_s = interval(&t.penalty_max).map_err(err)?;
        if penalty_min_s > penalty_max_s {
            return Err(r.at(at, "penalty_min must not exceed penalty_max"));
        }
        spec.throttle = Some(Throttle {
            messages_per_ip_per_hour: t.messages_per_ip_per_hour,
            messages_per_netblock_per_hour: t.messages_per_netblock_per_hour,
            phase,
            reply_ip,
            reply_netblock,
            messages_per_domain_per_hour: t.messages_per_domain_per_hour,
            reply_domain,
            penalty_min_s,
            penalty_max_s,
            early_retry_extension_s: interval(&t.early_retry_extension).map_err(err)?,
            spike_percent: match t.spike_factor {
                Some(f) if !(1.0..=100.0).contains(&f) => {
                    return Err(r.at(at, "spike_factor is between 1 and 100"));
                }
                other => other.map(|f| (f * 100.0).round() as u64),
            },
            growth_percent_per_clean_day: match t.growth_per_clean_day {
                Some(g) if !(1.0..=10.0).contains(&g) => {
                    return Err(r.at(at, "growth_per_clean_day is between 1 and 10"));
                }
                other => other.map(|g| (g * 100.0).round() as u64),
            },
            messages_max_per_hour: t.messages_max_per_hour.unwrap_or(500_000),
        });
    }
    if let Some(f) = &raw.feedback {
        let at = f.span().start;
        let f = f.get_ref();
        let err = |m: String| r.at(at, m);
        let enrolment = match f.enrolment.as_deref().unwrap_or("sender") {
            "sender" => Enrolment::Sender,
            "dkim_domain" => Enrolment::DkimDomain,
            "source_ip" => Enrolment::SourceIp,
            other => {
                return Err(err(format!(
                    "enrolment is sender, dkim_domain or source_ip, not `{other}`"
                )));
            }
        };
        let reports = match f.reports.as_str() {
            "none" => Reports::None,
            "per_complaint" => Reports::PerComplaint(enrolment),
            other => {
                return Err(err(format!(
                    "reports is none or per_complaint, not `{other}`"
                )));
            }
        };
        let defaults = Feedback::default();
        let delay_min_s = match &f.delay_min {
            Some(text) => interval(text).map_err(err)?,
            None => defaults.delay_min_s,
        };
        let delay_max_s = match &f.delay_max {
            Some(text) => interval(text).map_err(err)?,
            None => defaults.delay_max_s,
        };
        if delay_min_s == 0 || delay_min_s > delay_max_s {
            return Err(r.at(at, "delay_min must be above 0 and not exceed delay_max"));
        }
        spec.feedback = Feedback {
            reports,
            aggregate_spam_rate: f.aggregate_spam_rate.unwrap_or(false),
            delay_min_s,
            delay_max_s,
            enrolled: true,
        };
    }
    if let Some(g) = &raw.greylist {
        let at = g.span().start;
        let g = g.get_ref();
        let err = |m: String| r.at(at, m);
        let grey = Greylist {
            delay_s: interval(&g.delay).map_err(err)?,
            retry_window_s: interval(&g.retry_window).map_err(err)?,
            whitelist_after: g.whitelist_after,
            whitelist_spacing_s: interval(&g.whitelist_spacing).map_err(err)?,
        };
        if grey.delay_s == 0 || grey.delay_s >= grey.retry_window_s {
            return Err(r.at(
                at,
                "the greylist delay must be above 0s and shorter than its retry window",
            ));
        }
        spec.greylist = Some(grey);
    }
    if let Some(pause) = &raw.pause {
        let at = pause.span().start;
        let pause = pause.get_ref();
        let err = |m: String| r.at(at, m);
        if pause.after_messages == 0 {
            return Err(r.at(at, "after_messages must be above 0"));
        }
        let reply = reply(&pause.reply).map_err(err)?;
        if reply.code / 100 != 4 {
            return Err(r.at(at, "a pause answers with a 4xx reply"));
        }
        spec.pause = Some(Pause {
            after_messages: pause.after_messages,
            duration_s: interval(&pause.duration).map_err(err)?,
            reply,
        });
    }
    if let Some(a) = &raw.auth {
        let at = a.span().start;
        let a = a.get_ref();
        let enforcement = match a.enforcement.as_str() {
            "temporary" => Enforcement::Temporary,
            "permanent" => Enforcement::Permanent,
            "temp_then_perm" => Enforcement::TempThenPerm {
                permanent_after_s: match &a.permanent_after {
                    Some(text) => interval(text).map_err(|e| r.at(at, e))?,
                    None => {
                        return Err(r.at(
                            at,
                            "enforcement = \"temp_then_perm\" needs `permanent_after`",
                        ));
                    }
                },
            },
            other => {
                return Err(r.at(
                    at,
                    format!("enforcement is temporary, permanent or temp_then_perm, not `{other}`"),
                ));
            }
        };
        let mut rules = Vec::new();
        for rule in &a.rule {
            let at = rule.span().start;
            let rule = rule.get_ref();
            let require = Requirement::parse(&rule.require).ok_or_else(|| {
                r.at(
                    at,
                    format!(
                        "`{}` is not a requirement; one of {}",
                        rule.require,
                        Requirement::NAMES.join(", ")
                    ),
                )
            })?;
            let bulk_only = match rule.scope.as_str() {
                "all" => false,
                "bulk" => true,
                other => return Err(r.at(at, format!("scope is all or bulk, not `{other}`"))),
            };
            let permanent = reply_at(at, &rule.permanent)?;
            let temporary = match &rule.temporary {
                Some(text) => reply_at(at, text)?,
                None => permanent.clone(),
            };
            rules.push(AuthRule {
                require,
                bulk_only,
                temporary,
                permanent,
            });
        }
        spec.auth = Some(AuthRules {
            bulk_threshold_per_day: a.bulk_threshold_per_day,
            enforcement,
            rules,
        });
    }
    if let Some(rep) = &raw.reputation {
        let at = rep.span().start;
        let rep = rep.get_ref();
        let unit = [
            rep.start,
            rep.daily_step,
            rep.complaint_good,
            rep.complaint_bad,
            rep.unknown_bad,
            rep.block_below,
        ];
        if unit.iter().any(|v| !(0.0..=1.0).contains(v)) || rep.start == 0.0 {
            return Err(r.at(
                at,
                "start, daily_step, complaint_good, complaint_bad, unknown_bad and block_below are between 0 and 1 (start above 0)",
            ));
        }
        let weights = [
            rep.weight_complaints,
            rep.weight_unknown,
            rep.weight_engagement,
            rep.no_unsubscribe_complaint_factor.unwrap_or(1.0),
        ];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(r.at(
                at,
                "weight_complaints, weight_unknown, weight_engagement and no_unsubscribe_complaint_factor are finite and not negative",
            ));
        }
        if rep.complaint_good >= rep.complaint_bad || rep.unknown_bad == 0.0 {
            return Err(r.at(
                at,
                "complaint_good must be under complaint_bad, and unknown_bad above 0",
            ));
        }
        spec.reputation = Some(Reputation {
            start: rep.start,
            daily_step: rep.daily_step,
            complaint_good: rep.complaint_good,
            complaint_bad: rep.complaint_bad,
            mitigation_days: rep.mitigation_days,
            unknown_bad: rep.unknown_bad,
            weight_complaints: rep.weight_complaints,
            weight_unknown: rep.weight_unknown,
            weight_engagement: rep.weight_engagement,
            block_below: rep.block_below,
            block_phase: SmtpPhase::parse(&rep.block_phase).ok_or_else(|| {
                r.at(
                    at,
                    "block_phase is one of greeting, ehlo, mail, rcpt, data, data_end",
                )
            })?,
            block_reply: reply_at(at, &rep.block_reply)?,
            no_unsubscribe_complaint_factor: rep.no_unsubscribe_complaint_factor.unwrap_or(1.0),
        });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_parses_and_bad_keys_name_their_line() {
        let text = "[provider]\nname = \"p\"\ndomains = [\"p.example\"]\nmx = [\"mx.p.example\"]\n[connection]\nmax_per_ip = 3\n";
        let spec = parse_model(Path::new("p.toml"), text).unwrap();
        assert_eq!(spec.max_connections_per_ip, Some(3));
        let bad = text.replace("max_per_ip = 3", "max_per_ip = 3\nmax_pre_ip = 4");
        let err = parse_model(Path::new("p.toml"), &bad).unwrap_err();
        assert_eq!((err.line, err.column), (7, 1), "{err}");
        assert!(err.message.contains("unknown field `max_pre_ip`"));
    }
}
