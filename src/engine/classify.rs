//! Reply classification: what an SMTP reply means for the recipients it answers.
//!
//! Owns three judgements: the disposition (2xx delivered, 4xx transient, 5xx permanent),
//! the bounce category from `<bounce-category-patterns>` (the default list — PowerMTA's stock
//! list with the providers' documented replies before it and RFC 3463 codes after it — when
//! the configuration has none; the first matching rule wins, and a rule matches the reply's
//! enhanced status or its text), and the `<smtp-pattern-list>` rule that fires, if any. A
//! pattern the regex engine cannot decide is a reported failure, never a quiet "no match".
//! Pure: it sees reply text, not connections or queues.

use std::path::Path;

use crate::config::model::{
    BounceRule, Config, Pattern, PatternAction, QueueMode, ReplyRule, SmtpPatternList,
};
use crate::config::source::{SourceMap, Span};
use crate::config::{self, MemFs, Options};
use crate::smtp::Reply;

/// Where the default list appears in `FILE:LINE` output.
pub const DEFAULT_FILE: &str = "<default bounce-category-patterns>";

/// The bounce categories used when a configuration has no `<bounce-category-patterns>`:
/// PowerMTA's stock list (from the example configuration Port25 shipped, as reproduced in
/// public configuration generators) between two pmta-sim additions. First, the mailbox
/// providers' documented replies that the stock words misfile (Gmail's authentication blocks
/// say "to protect our users from spam", its per-recipient receiving rate is a 4.2.1, Yahoo's
/// complaint deferrals name no stock word); the replies and their meaning are from the
/// research notes on provider behaviour, §5.1 and §5.3. Last, before the catch-all, the RFC
/// 3463 enhanced status code (class.subject.detail) decides when no text rule matched.
pub const DEFAULT_BOUNCE_CATEGORIES: &str = r"<bounce-category-patterns>
    # pmta-sim: the providers' documented replies.
    /receiving (e?mail )?(at a rate|too quickly)/ quota-issues
    /same Message-ID/ policy-related
    /\b(SPF|DKIM|DMARC)\b|unauthenticated|authenticat(e|ed|ion)\b|\bPTR\b|reverse DNS/ policy-related
    /\bTLS\b/ policy-related
    /RFC ?5322|RFC ?2822|From: header|Message-ID header/ content-related
    /\[(TSS?|PH|HCM|BL)\d+\]|AUP#CDRBL|user complaints|complaints concerning|\breputation\b|block ?list/ spam-related
    /greylist|throttl|frequency limited|excessive volume|try again later|too many (connections|sessions)|max(imum)? (number of )?messages? per connection/ other
    /Recipient address rejected: Access denied/ bad-mailbox
    /domain is not reachable/ bad-domain
    # PowerMTA's stock list: text rules, then the enhanced-status tail.
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
    # pmta-sim: RFC 3463 subjects when no text rule matched.
    /^[45]\.1\.[78]$/ invalid-sender
    /^[45]\.1\.\d+$/ bad-mailbox
    /^[45]\.2\.1$/ inactive-mailbox
    /^[45]\.2\.2$/ quota-issues
    /^[45]\.2\.3$/ content-related
    /^[45]\.3\.4$/ content-related
    /^[45]\.4\.3$/ routing-errors
    /^[45]\.5\.([0-24-9]|\d\d+)$/ protocol-errors
    /^[45]\.6\.\d+$/ content-related
    /^[45]\.7\.\d+$/ policy-related
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleOrigin {
    Config,
    /// [`DEFAULT_BOUNCE_CATEGORIES`].
    Default,
}

/// A pattern that could not be evaluated on a reply: fancy-regex stopped at its backtracking
/// limit. Whether it would have matched is unknown, so it is reported, never taken as "no
/// match" in silence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternFailure {
    /// The pattern as written, without slashes.
    pub pattern: String,
    pub origin: RuleOrigin,
    pub span: Span,
    pub error: String,
}

/// Whether `pattern` matches `text`; a failure to decide is recorded in `failures`.
pub fn pattern_matches(
    pattern: &Pattern,
    origin: RuleOrigin,
    span: Span,
    text: &str,
    failures: &mut Vec<PatternFailure>,
) -> bool {
    match pattern.regex.is_match(text) {
        Ok(matched) => matched,
        Err(err) => {
            failures.push(PatternFailure {
                pattern: pattern.source.clone(),
                origin,
                span,
                error: err.to_string(),
            });
            false
        }
    }
}

/// A classified reply.
#[derive(Clone, Debug)]
pub struct Classification {
    pub disposition: Disposition,
    pub category: String,
    /// The bounce-category rule that gave the category.
    pub category_rule: Option<(RuleOrigin, Span)>,
    /// Rules that could not be evaluated on this reply (the category is then from a later
    /// rule, which may not be the one PowerMTA would pick).
    pub failures: Vec<PatternFailure>,
}

/// Classifies replies with a configuration's bounce rules, or the default list.
#[derive(Clone, Debug)]
pub struct Classifier {
    rules: Vec<BounceRule>,
    origin: RuleOrigin,
    /// The default list's own source map, for `FILE:LINE` of its rules.
    default_sources: Option<std::sync::Arc<SourceMap>>,
}

impl Classifier {
    pub fn new(config: &Config) -> Classifier {
        if !config.bounce_rules.is_empty() {
            return Classifier {
                rules: config.bounce_rules.clone(),
                origin: RuleOrigin::Config,
                default_sources: None,
            };
        }
        let default = default_config();
        Classifier {
            rules: default.bounce_rules,
            origin: RuleOrigin::Default,
            default_sources: Some(std::sync::Arc::new(default.sources)),
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
                failures: Vec::new(),
            };
        }
        let status = reply.status();
        let line = reply.one_line();
        let mut failures = Vec::new();
        let matched = self.rules.iter().find(|rule| {
            pattern_matches(
                &rule.pattern,
                self.origin,
                rule.span,
                &status,
                &mut failures,
            ) || pattern_matches(&rule.pattern, self.origin, rule.span, &line, &mut failures)
        });
        match matched {
            Some(rule) => Classification {
                disposition,
                category: rule.category.clone(),
                category_rule: Some((self.origin, rule.span)),
                failures,
            },
            None => Classification {
                disposition,
                category: "other".to_string(),
                category_rule: None,
                failures,
            },
        }
    }

    /// `FILE:LINE` of a rule this classifier (or a configuration's pattern list) holds.
    pub fn rule_position(&self, config: &Config, origin: RuleOrigin, span: Span) -> String {
        match (origin, &self.default_sources) {
            (RuleOrigin::Default, Some(sources)) => sources.position(span).file_line(),
            _ => config.sources.position(span).file_line(),
        }
    }
}

fn default_config() -> Config {
    let fs = MemFs::new().with(DEFAULT_FILE, DEFAULT_BOUNCE_CATEGORIES);
    let checked = config::load(Path::new(DEFAULT_FILE), &fs, Options::default())
        .expect("the default list is in memory");
    assert_eq!(checked.error_count(), 0, "the default bounce list parses");
    checked.config
}

/// The first rule of `list` whose pattern matches the reply, as PowerMTA tests them; rules
/// that could not be evaluated are recorded in `failures`.
pub fn matching_rule<'a>(
    list: &'a SmtpPatternList,
    reply: &Reply,
    failures: &mut Vec<PatternFailure>,
) -> Option<&'a ReplyRule> {
    let line = reply.one_line();
    list.rules.iter().find(|rule| {
        pattern_matches(
            &rule.pattern,
            RuleOrigin::Config,
            rule.span,
            &line,
            failures,
        )
    })
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
    fn default_list_parses_and_classifies() {
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
