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
    AuthRules, Greylist, IspReplies, IspSpec, Reporter, ScenarioError, SmtpPhase, Throttle,
    interval, reply,
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
    auth: Option<Spanned<RawAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    bulk_threshold_per_day: u64,
    require_spf_or_dkim: bool,
    bulk_requires_both: bool,
    bulk_requires_dmarc: bool,
    reply_unauthenticated: String,
    reply_no_dmarc: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    domains: Vec<String>,
    mx: Vec<String>,
    #[serde(default)]
    starttls: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(default)]
    max_per_ip: Option<u64>,
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
    per_mailbox_per_minute: Option<u64>,
    #[serde(default)]
    mailbox_rate_reply: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    phase: String,
    per_ip_per_hour: u64,
    #[serde(default)]
    per_netblock_per_hour: Option<u64>,
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
    capacity_max_per_hour: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGreylist {
    delay: String,
    retry_window: String,
    whitelist_after: u32,
    whitelist_spacing: String,
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
    let mut replies = IspReplies::default();
    let reply_at =
        |spanned_offset: usize, text: &str| reply(text).map_err(|e| r.at(spanned_offset, e));
    if let Some(c) = &raw.connection {
        let at = c.span().start;
        let c = c.get_ref();
        if [c.max_per_ip, c.max_messages, c.max_recipients].contains(&Some(0)) {
            return Err(r.at(
                at,
                "connection caps must be at least 1 (leave them out for no limit)",
            ));
        }
        spec.max_connections_per_ip = c.max_per_ip;
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
        spec.per_mailbox_per_minute = rc.per_mailbox_per_minute;
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
        let penalty_min_s = interval(&t.penalty_min).map_err(err)?;
        let penalty_max_s = interval(&t.penalty_max).map_err(err)?;
        if penalty_min_s > penalty_max_s {
            return Err(r.at(at, "penalty_min must not exceed penalty_max"));
        }
        spec.throttle = Some(Throttle {
            per_ip_per_hour: t.per_ip_per_hour,
            per_netblock_per_hour: t.per_netblock_per_hour,
            phase,
            reply_ip,
            reply_netblock,
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
            capacity_max_per_hour: t.capacity_max_per_hour.unwrap_or(500_000),
        });
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
        if grey.delay_s >= grey.retry_window_s {
            return Err(r.at(
                at,
                "the greylist delay must be shorter than its retry window",
            ));
        }
        spec.greylist = Some(grey);
    }
    if let Some(a) = &raw.auth {
        let at = a.span().start;
        let a = a.get_ref();
        spec.auth = Some(AuthRules {
            bulk_threshold_per_day: a.bulk_threshold_per_day,
            require_spf_or_dkim: a.require_spf_or_dkim,
            bulk_requires_both: a.bulk_requires_both,
            bulk_requires_dmarc: a.bulk_requires_dmarc,
            reply_unauthenticated: reply_at(at, &a.reply_unauthenticated)?,
            reply_no_dmarc: reply_at(at, &a.reply_no_dmarc)?,
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
