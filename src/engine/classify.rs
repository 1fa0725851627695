//! Reply classification: what an SMTP reply means for the recipients it answers.
//!
//! Owns three judgements: the disposition (2xx delivered, 4xx transient, 5xx permanent),
//! the bounce category from `<bounce-category-patterns>` (PowerMTA's stock list when the
//! configuration has none; the first matching rule wins, and a rule matches the reply's
//! enhanced status or its text), and the `<smtp-pattern-list>` rule that fires, if any.
//! Pure: it sees reply text, not connections or queues.

use std::path::Path;

use crate::config::model::{
    BounceRule, Config, PatternAction, QueueMode, ReplyRule, SmtpPatternList,
};
use crate::config::source::{SourceMap, Span};
use crate::config::{self, MemFs, Options};
use crate::smtp::Reply;

/// Where the stock list appears in `FILE:LINE` output.
pub const STOCK_FILE: &str = "<stock bounce-category-patterns>";

/// PowerMTA's stock `<bounce-category-patterns>` (from the example configuration Port25
/// shipped, as reproduced in public configuration generators): text rules first, then the
/// enhanced-status tail, then the catch-all.
pub const STOCK_BOUNCE_CATEGORIES: &str = r"<bounce-category-patterns>
    /spam/ spam-related
    /junk mail/ spam-related
    /blacklist/ spam-related
    /blocked/ spam-related
    /unsolicited/ spam-related
    /\b(open)?RBL\b/ spam-related
    /\bvirus\b/ virus-related
    /message +content/ content-related
    /content +rejected/ content-related
    /quota/ quota-issues
    /limit exceeded/ quota-issues
    /mailbox +(is +)?full/ quota-issues
    /\bstorage\b/ quota-issues
    /(user|mailbox|recipient|rcpt|local part|address|account|mail drop|ad(d?)ressee) (has|has been|is)? *(currently|temporarily +)?(disabled|expired|inactive|not activated)/ inactive-mailbox
    /(conta|usu.rio) inativ(a|o)/ inactive-mailbox
    /Too many (bad|invalid|unknown|illegal|unavailable) (user|mailbox|recipient|rcpt|local part|address|account|mail drop|ad(d?)ressee)/ other
    /(No such|bad|invalid|unknown|illegal|unavailable) (local +)?(user|mailbox|recipient|rcpt|local part|address|account|mail drop|ad(d?)ressee)/ bad-mailbox
    /(user|mailbox|recipient|rcpt|local part|address|account|mail drop|ad(d?)ressee) +(\S+@\S+ +)?(not (a +)?valid|not known|not here|not found|does not exist|bad|invalid|unknown|illegal|unavailable)/ bad-mailbox
    /\S+@\S+ +(is +)?(not (a +)?valid|not known|not here|not found|does not exist|bad|invalid|unknown|illegal|unavailable)/ bad-mailbox
    /no mailbox here by that name/ bad-mailbox
    /my badrcptto list/ bad-mailbox
    /not our customer/ bad-mailbox
    /no longer (valid|available)/ bad-mailbox
    /have a \S+ account/ bad-mailbox
    /\brelay(ing)?/ relaying-issues
    /domain (retired|bad|invalid|unknown|illegal|unavailable)/ bad-domain
    /domain no longer in use/ bad-domain
    /domain (\S+ +)?(is +)?obsolete/ bad-domain
    /denied/ policy-related
    /prohibit/ policy-related
    /rejected/ policy-related
    /refused/ policy-related
    /allowed/ policy-related
    /banned/ policy-related
    /policy/ policy-related
    /suspicious/ policy-related
    /bad sequence/ protocol-errors
    /syntax error/ protocol-errors
    /\broute\b/ routing-errors
    /\bunroutable\b/ routing-errors
    /\bunrouteable\b/ routing-errors
    /^2.\d.\d/ success
    /^[45]\.1\.1/ bad-mailbox
    /^[45]\.1\.2/ bad-domain
    /^[45]\.3\.5/ bad-configuration
    /^[45]\.4\.1/ no-answer-from-host
    /^[45]\.4\.2/ bad-connection
    /^[45]\.4\.4/ routing-errors
    /^[45]\.4\.6/ routing-errors
    /^[45]\.4\.7/ message-expired
    /^[45]\.7\.1/ policy-related
    // other # catch-all
</bounce-category-patterns>
";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Disposition {
    Delivered,
    Transient,
    Permanent,
}

impl Disposition {
    pub fn of(reply: &Reply) -> Disposition {
        match reply.class() {
            2 | 3 => Disposition::Delivered,
            4 => Disposition::Transient,
            _ => Disposition::Permanent,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Disposition::Delivered => "delivered",
            Disposition::Transient => "transient",
            Disposition::Permanent => "permanent",
        }
    }
}

/// Which list a matched rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleOrigin {
    Config,
    Stock,
}

/// A classified reply.
#[derive(Clone, Debug)]
pub struct Classification {
    pub disposition: Disposition,
    pub category: String,
    /// The bounce-category rule that gave the category.
    pub category_rule: Option<(RuleOrigin, Span)>,
}

/// Classifies replies with a configuration's bounce rules, or the stock list.
#[derive(Clone, Debug)]
pub struct Classifier {
    rules: Vec<BounceRule>,
    origin: RuleOrigin,
    /// The stock list's own source map, for `FILE:LINE` of its rules.
    stock_sources: Option<std::sync::Arc<SourceMap>>,
}

impl Classifier {
    pub fn new(config: &Config) -> Classifier {
        if !config.bounce_rules.is_empty() {
            return Classifier {
                rules: config.bounce_rules.clone(),
                origin: RuleOrigin::Config,
                stock_sources: None,
            };
        }
        let stock = stock_config();
        Classifier {
            rules: stock.bounce_rules,
            origin: RuleOrigin::Stock,
            stock_sources: Some(std::sync::Arc::new(stock.sources)),
        }
    }

    /// Classifies with `smtp-553-means-invalid-mailbox` on (PowerMTA's default).
    pub fn classify(&self, reply: &Reply) -> Classification {
        self.classify_for_queue(reply, true)
    }

    /// Classifies with the queue's `smtp-553-means-invalid-mailbox`.
    pub fn classify_for_queue(
        &self,
        reply: &Reply,
        smtp_553_means_invalid_mailbox: bool,
    ) -> Classification {
        let disposition = Disposition::of(reply);
        if reply.code == 553 && smtp_553_means_invalid_mailbox {
            return Classification {
                disposition,
                category: "bad-mailbox".to_string(),
                category_rule: None,
            };
        }
        let status = reply.status();
        let line = reply.one_line();
        let matched = self.rules.iter().find(|rule| {
            rule.pattern.regex.is_match(&status).unwrap_or(false)
                || rule.pattern.regex.is_match(&line).unwrap_or(false)
        });
        match matched {
            Some(rule) => Classification {
                disposition,
                category: rule.category.clone(),
                category_rule: Some((self.origin, rule.span)),
            },
            None => Classification {
                disposition,
                category: "other".to_string(),
                category_rule: None,
            },
        }
    }

    /// `FILE:LINE` of a rule this classifier matched.
    pub fn rule_position(&self, config: &Config, origin: RuleOrigin, span: Span) -> String {
        match (origin, &self.stock_sources) {
            (RuleOrigin::Stock, Some(sources)) => sources.position(span).file_line(),
            _ => config.sources.position(span).file_line(),
        }
    }
}

fn stock_config() -> Config {
    let fs = MemFs::new().with(STOCK_FILE, STOCK_BOUNCE_CATEGORIES);
    let checked = config::load(Path::new(STOCK_FILE), &fs, Options::default())
        .expect("the stock list is in memory");
    assert_eq!(checked.error_count(), 0, "the stock bounce list parses");
    checked.config
}

/// The first rule of `list` whose pattern matches the reply, as PowerMTA tests them.
pub fn matching_rule<'a>(list: &'a SmtpPatternList, reply: &Reply) -> Option<&'a ReplyRule> {
    let line = reply.one_line();
    list.rules
        .iter()
        .find(|rule| rule.pattern.regex.is_match(&line).unwrap_or(false))
}

/// An action as written in the config: `mode=backoff`, `reenable-after=4h`.
pub fn action_text(action: &PatternAction) -> String {
    let interval = |i: &Option<crate::config::value::Interval>| {
        i.map_or_else(|| "never".to_string(), |i| i.to_string())
    };
    match action {
        PatternAction::Mode(QueueMode::Backoff) => "mode=backoff".into(),
        PatternAction::Mode(QueueMode::Normal) => "mode=normal".into(),
        PatternAction::BackoffToNormalAfter(i) => {
            format!("backoff-to-normal-after={}", interval(i))
        }
        PatternAction::BounceQueue => "bounce-queue".into(),
        PatternAction::DisableSourceIp => "disable-source-ip".into(),
        PatternAction::ReenableAfter(i) => format!("reenable-after={}", interval(i)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_list_parses_and_classifies() {
        let classifier = Classifier::new(&Config::default());
        let cases = [
            ("250 2.0.0 OK", Disposition::Delivered, "success"),
            (
                "550 5.1.1 The email account that you tried to reach does not exist.",
                Disposition::Permanent,
                "bad-mailbox",
            ),
            (
                "452 4.2.2 The email account that you tried to reach is over quota.",
                Disposition::Transient,
                "quota-issues",
            ),
            (
                "421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
                Disposition::Transient,
                "spam-related",
            ),
        ];
        for (text, disposition, category) in cases {
            let (code, rest) = text.split_once(' ').unwrap();
            let (status, message) = rest.split_once(' ').unwrap();
            let esc: Vec<u16> = status.split('.').map(|p| p.parse().unwrap()).collect();
            let reply = Reply::new(
                code.parse().unwrap(),
                Some([esc[0], esc[1], esc[2]]),
                message,
            );
            let classified = classifier.classify(&reply);
            assert_eq!(classified.disposition, disposition, "{text}");
            assert_eq!(classified.category, category, "{text}");
        }
    }
}
